-- lantern.console: the interactive LuaJIT console (`./scripts/lantern`).
--
-- A Session turns lines into chunks and evaluates them in the global
-- environment, where `lt` is require("lantern"):
--   * a line is first compiled as `return LINE`, so that an expression shows
--     its value; otherwise as a statement;
--   * a chunk that fails to compile only because the input ended too soon
--     (the message ends in '<eof>') waits for more lines;
--   * results are printed (tables shallowly, Tensors and models through
--     tostring, strings quoted so that " Mary" shows its space), the first
--     one is kept in the global `_`;
--   * an error is printed and the session goes on.
-- On a terminal, lines come from readline (editing, history, completion);
-- otherwise from stdin without prompts, so that the console can be scripted:
--   echo 'print(1 + 1)' | ./scripts/lantern
local ffi = require("ffi")

local M = {}

M.prompt = "lt> "
M.continuation = ".. "
M.history_size = 1000

-- ------------------------------------------------------------ printing

local function quote(s)
  -- %q writes a newline as a backslash and a real newline: show "\n".
  return (string.format("%q", s):gsub("\\\n", "\\n"))
end

local function is_identifier(k)
  return type(k) == "string" and k:match("^[%a_][%w_]*$") ~= nil
end

local max_entries = 64   -- a longer table shows its first entries and a count

-- One value on one line, as shown inside a table.
local function short(v)
  local t = type(v)
  if t == "string" then return quote(v) end
  if t == "table" then
    local mt = getmetatable(v)
    if mt and mt.__tostring then
      local s = tostring(v)
      local first = s:match("^[^\n]*")
      return first == s and s or first .. " ..."
    end
    return next(v) == nil and "{}" or "{...}"
  end
  return tostring(v)
end

-- Keys in a stable order: the array part 1..n first, then numbers, then
-- strings, then anything else. Raw access throughout: an __index function
-- could answer for every key.
local function ordered_keys(t)
  local n = 0
  while rawget(t, n + 1) ~= nil do n = n + 1 end
  local rest = {}
  for k in pairs(t) do
    if not (type(k) == "number" and k >= 1 and k <= n and k == math.floor(k)) then rest[#rest + 1] = k end
  end
  local rank = {number = 1, string = 2}
  table.sort(rest, function(a, b)
    local ra, rb = rank[type(a)] or 3, rank[type(b)] or 3
    if ra ~= rb then return ra < rb end
    if ra == 3 then return tostring(a) < tostring(b) end
    return a < b
  end)
  return n, rest
end

-- A value as the console shows it: tables one level deep, anything with a
-- __tostring (Tensor, Model, Tokenizer) through tostring.
function M.format(v)
  if type(v) ~= "table" then return short(v) end
  local mt = getmetatable(v)
  if mt and mt.__tostring then return tostring(v) end
  local n, rest = ordered_keys(v)
  local parts, shown = {}, 0
  local total = n + #rest
  for i = 1, n do
    if shown == max_entries then break end
    parts[#parts + 1] = short(rawget(v, i))
    shown = shown + 1
  end
  for _, k in ipairs(rest) do
    if shown == max_entries then break end
    local key = is_identifier(k) and k or "[" .. short(k) .. "]"
    parts[#parts + 1] = key .. " = " .. short(rawget(v, k))
    shown = shown + 1
  end
  if total > shown then parts[#parts + 1] = string.format("... (%d more)", total - shown) end
  return "{" .. table.concat(parts, ", ") .. "}"
end

-- ------------------------------------------------------------- session

local Session = {}
Session.__index = Session

-- opts: out(s) and err(s) write text (default stdout and stderr); env, the
-- globals the chunks see (default _G).
function M.session(opts)
  opts = opts or {}
  local s = setmetatable({}, Session)
  s.out = opts.out or function(text) io.stdout:write(text) io.stdout:flush() end
  s.err = opts.err or function(text) io.stdout:flush() io.stderr:write(text) io.stderr:flush() end
  s.env = opts.env or _G
  s.pending = nil     -- the lines of an unfinished chunk
  s.errors = 0        -- chunks that failed to compile or raised an error
  return s
end

local function incomplete(err)
  return err:sub(-7) == "'<eof>'"
end

local function compile(code, env)
  -- As an expression first, so that `1 + 1` shows 2; `x = 1` is not one.
  local fn = loadstring("return " .. code, "=console")
  local err
  if not fn then fn, err = loadstring(code, "=console") end
  if fn then setfenv(fn, env) end
  return fn, err
end

local function error_text(e)
  if type(e) == "string" then return e end
  local mt = type(e) == "table" and getmetatable(e)
  if mt and mt.__tostring then return tostring(e) end
  return "(error object is a " .. type(e) .. " value: " .. tostring(e) .. ")"
end

local function traceback_handler(e)
  -- The library's errors carry their own message; the traceback mostly
  -- shows the console's machinery, so it is shown only on request.
  if os.getenv("LANTERN_TRACEBACK") then return debug.traceback(error_text(e), 2) end
  return error_text(e)
end

local function pack(...) return {n = select("#", ...), ...} end

-- Runs a compiled chunk and prints its results or its error.
function Session:execute(fn)
  local r = pack(xpcall(fn, traceback_handler))
  if not r[1] then
    self.errors = self.errors + 1
    self.err(r[2] .. "\n")
    return false
  end
  if r.n > 1 then
    local shown = {}
    for i = 2, r.n do shown[#shown + 1] = M.format(r[i]) end
    self.env._ = r[2]
    self.out(table.concat(shown, "\t") .. "\n")
  end
  return true
end

-- Feeds one line. Returns true when the chunk is unfinished and the next
-- line continues it.
function Session:feed(line)
  if not self.pending then
    if line:match("^%s*$") then return false end
    line = line:gsub("^=", "return ", 1)   -- Lua 5.1's `=expr` shorthand
  end
  local code = self.pending and (self.pending .. "\n" .. line) or line
  local fn, err = compile(code, self.env)
  if not fn and incomplete(err) then
    self.pending = code
    return true
  end
  self.pending = nil
  if not fn then
    self.errors = self.errors + 1
    self.err(err .. "\n")
    return false
  end
  self:execute(fn)
  return false
end

-- Input ended (or was abandoned with Ctrl-D) in the middle of a chunk:
-- report the syntax error that chunk has.
function Session:finish()
  if not self.pending then return end
  local _, err = loadstring(self.pending, "=console")
  self.pending = nil
  self.errors = self.errors + 1
  self.err((err or "unfinished input") .. "\n")
end

function Session:current_prompt()
  return self.pending and M.continuation or M.prompt
end

-- Evaluates a list of lines as if typed; returns the session (for tests).
function M.run_lines(lines, opts)
  local s = M.session(opts)
  for _, line in ipairs(lines) do s:feed(line) end
  s:finish()
  return s
end

-- ---------------------------------------------------------- completion

local keywords = {"and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if",
                  "in", "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while"}

-- Candidates for text such as "pri", "lt.lo" or "m:for": the keys of the
-- table the path names, including those reached through __index tables
-- (methods), that start with the last part.
function M.complete(text, env)
  env = env or _G
  local path, sep, prefix = text:match("^(.-)([%.:]?)([%w_]*)$")
  if not path then return {} end
  local found, seen = {}, {}
  local function add(name)
    if type(name) == "string" and name:sub(1, #prefix) == prefix and is_identifier(name) and not seen[name] then
      seen[name] = true
      found[#found + 1] = path .. sep .. name
    end
  end
  local function add_keys(v, depth)
    if type(v) == "table" then
      for k, x in pairs(v) do
        if sep ~= ":" or type(x) == "function" then add(k) end
      end
    end
    local mt = (type(v) == "table" or type(v) == "string") and getmetatable(v)
    if mt and type(mt.__index) == "table" and depth < 4 then add_keys(mt.__index, depth + 1) end
  end
  if sep == "" then
    add_keys(env, 0)
    for _, k in ipairs(keywords) do add(k) end
  else
    local v = env
    for part in path:gmatch("[^%.]+") do
      if not is_identifier(part) or type(v) ~= "table" then return {} end
      v = v[part]
    end
    add_keys(v, 0)
  end
  table.sort(found)
  return found
end

-- ---------------------------------------------------------- the console

-- Where history is kept: $LANTERN_HISTORY (empty: no file), else
-- ~/.lantern_history, shared by every checkout like a shell's history.
function M.history_path()
  local p = os.getenv("LANTERN_HISTORY")
  if p then return p ~= "" and p or nil end
  local home = os.getenv("HOME")
  if home and home ~= "" then return home .. "/.lantern_history" end
  return nil
end

pcall(ffi.cdef, "int isatty(int fd);")
pcall(ffi.cdef, "typedef void (*lt_sighandler_t)(int);")
pcall(ffi.cdef, "lt_sighandler_t signal(int sig, lt_sighandler_t handler);")

function M.stdin_is_tty() return ffi.C.isatty(0) == 1 end

-- Ctrl-C. luajit runs a script with a SIGINT handler that arms a hook
-- making the running Lua code raise "interrupted!", and then resets SIGINT
-- to the default (which kills the process, the way out of a compiled loop
-- that never sees the hook). The console saves that handler and puts it
-- back before every prompt and every command: Ctrl-C at the prompt drops
-- the line, during a command it stops the command.
local SIGINT = 2
local SIG_DFL = ffi.cast("lt_sighandler_t", 0)
local saved   -- {handler}, boxed: a NULL handler (SIG_DFL) would compare equal to nil

local function arm_interrupts()
  if not saved then saved = {ffi.C.signal(SIGINT, SIG_DFL)} end   -- reads the current one
  ffi.C.signal(SIGINT, saved[1])
end

local function is_interrupt(e)
  return type(e) == "string" and e:find("interrupted!", 1, true) ~= nil
end

-- Reads stdin to its end without prompts; returns the number of chunks
-- that failed.
local function run_piped(session)
  for line in io.stdin:lines() do session:feed(line) end
  session:finish()
  return session.errors
end

local function run_interactive(session)
  local rl, why = require("lantern.readline").open()
  local history = M.history_path()
  if rl then
    if history then rl.load_history(history, M.history_size) end
    rl.set_completer(function(text) return M.complete(text, session.env) end)
  else
    io.stderr:write("lantern: no line editing (", why:match("^[^\n]*"),
                    "; install the Debian package libreadline8)\n")
  end
  local function read(prompt)
    if rl then return rl.readline(prompt) end
    io.stdout:write(prompt)
    io.stdout:flush()
    return io.read("*l")
  end
  io.stdout:write(string.format("lantern %s console on %s. `lt` is require(\"lantern\"); Ctrl-D leaves.\n",
                                session.env.lt and session.env.lt.version or "?", jit.version))
  local finished = false
  local function step()
    arm_interrupts()
    local line, at_new_line = read(session:current_prompt())
    if line == nil then
      -- Ctrl-D: leaves at the main prompt, abandons an unfinished chunk.
      if not at_new_line then io.stdout:write("\n") end
      if not session.pending then finished = true return end
      session:finish()
      return
    end
    if rl and line:match("%S") then rl.add_history(line, history) end
    arm_interrupts()
    -- A paste (bracketed-paste mode) can hold several lines: take them one
    -- at a time, as if typed.
    for piece in (line .. "\n"):gmatch("(.-)\n") do session:feed(piece) end
  end
  while not finished do
    -- Commands run protected inside feed; this catches an interrupt while
    -- reading (or between the two): drop the partial input, new prompt.
    local ok, e = pcall(step)
    if not ok then
      if not is_interrupt(e) then error(e, 0) end
      if rl then rl.cancel() end
      session.pending = nil
      io.stdout:write("\n")
    end
  end
  return 0
end

-- The console: lt loaded as a global, then interactive on a terminal, else
-- piped. Returns the exit status: piped input exits 1 if any chunk failed,
-- so that a scripted session can be checked.
function M.main()
  _G.lt = require("lantern")
  local session = M.session()
  if M.stdin_is_tty() then return run_interactive(session) end
  return run_piped(session) == 0 and 0 or 1
end

return M
