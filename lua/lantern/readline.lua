-- lantern.readline: a small FFI binding to GNU readline (libreadline.so.8,
-- Debian package libreadline8) for the console: line editing, history kept
-- in a file, and tab completion driven by a Lua function.
--
--   local rl, err = require("lantern.readline").open()
--   if rl then
--     rl.load_history(path, 1000)
--     local line = rl.readline("lt> ")      -- nil at end of input (Ctrl-D)
--     rl.add_history(line, path)
--   end
--
-- Lines are read with readline's callback interface (poll stdin, feed it
-- one character at a time) rather than the blocking readline() call: the
-- waiting then happens in Lua, where the SIGINT handler luajit installs can
-- raise "interrupted!". So Ctrl-C at the prompt raises that error out of
-- M.readline; the caller calls M.cancel() and starts a fresh line.
local ffi = require("ffi")

local M = {}

-- Each declaration on its own, under pcall: another module may have declared
-- the same libc names (malloc, free, poll) already.
local declarations = {
  "void *malloc(size_t size);",
  "void free(void *ptr);",
  "struct pollfd { int fd; short events; short revents; };",
  "int poll(struct pollfd *fds, unsigned long nfds, int timeout);",
  "typedef void rl_vcpfunc_t(char *line);",
  "typedef char *rl_compentry_func_t(const char *text, int state);",
  "typedef char **rl_completion_func_t(const char *text, int start, int end);",
  "void rl_callback_handler_install(const char *prompt, rl_vcpfunc_t *handler);",
  "void rl_callback_read_char(void);",
  "void rl_callback_handler_remove(void);",
  "void rl_callback_sigcleanup(void);",
  "void rl_free_line_state(void);",
  "char **rl_completion_matches(const char *text, rl_compentry_func_t *entry);",
  "extern const char *rl_readline_name;",
  "extern rl_completion_func_t *rl_attempted_completion_function;",
  "extern const char *rl_basic_word_break_characters;",
  "extern int rl_attempted_completion_over;",
  "extern int rl_completion_append_character;",
  "extern int rl_eof_found;",
  "char *rl_variable_value(const char *name);",
  "void using_history(void);",
  "void add_history(const char *line);",
  "void stifle_history(int max);",
  "int read_history(const char *file);",
  "int append_history(int n, const char *file);",
  "int history_truncate_file(const char *file, int lines);",
}
for _, d in ipairs(declarations) do pcall(ffi.cdef, d) end

local POLLIN = 1
local lib            -- the loaded library, once open() succeeded
local keep = {}      -- C strings and callbacks readline holds on to: never collected
local history_max = 1000
local line, done     -- what the line handler received for the current read
local eof_newline    -- readline itself ended the line at Ctrl-D

-- Loads libreadline.so.8. Returns the module, or nil and a message.
function M.open()
  if lib then return M end
  local ok, l = pcall(ffi.load, "libreadline.so.8")
  if not ok then return nil, tostring(l) end
  lib = l
  keep.name = ffi.new("char[?]", 8, "lantern")
  lib.rl_readline_name = keep.name     -- lets ~/.inputrc say `$if lantern`
  lib.using_history()
  -- Called by readline with a finished line (malloc'd), or NULL at Ctrl-D.
  keep.handler = ffi.cast("rl_vcpfunc_t *", function(p)
    if p ~= nil then
      line = ffi.string(p)
      ffi.C.free(p)
    else
      -- At Ctrl-D, readline 8.2 in bracketed-paste mode (the default on a
      -- capable terminal) has printed a newline while restoring the
      -- terminal, and would print another at the next line while this flag
      -- stays set. Clear it (pcall: older versions lack it) and tell the
      -- caller whether the line was ended already.
      local v = lib.rl_variable_value("enable-bracketed-paste")
      eof_newline = v ~= nil and ffi.string(v) == "on"
      pcall(function() lib.rl_eof_found = 0 end)
    end
    done = true
    lib.rl_callback_handler_remove()   -- also puts the terminal back
  end)
  keep.pollfd = ffi.new("struct pollfd[1]")
  return M
end

-- Reads one line with editing, showing prompt. Returns the line (without
-- its newline), or nil at end of input and whether readline has moved to a
-- new line then.
function M.readline(prompt)
  line, done, eof_newline = nil, false, false
  lib.rl_callback_handler_install(prompt, keep.handler)
  local pfd = keep.pollfd
  pfd[0].fd, pfd[0].events = 0, POLLIN
  while not done do
    -- poll fails with EINTR when a signal arrives; luajit's SIGINT handler
    -- has then armed a hook that raises "interrupted!" right here.
    if ffi.C.poll(pfd, 1, -1) > 0 then lib.rl_callback_read_char() end
  end
  if line == nil then return nil, eof_newline end
  return line
end
-- readline calls back into Lua (line handler, completion); LuaJIT forbids
-- callbacks out of a C call made by compiled code, and compiled code would
-- not notice the interrupt hook. So this loop stays interpreted.
jit.off(M.readline)

-- After M.readline was interrupted: drops the partial line and restores
-- the terminal, so that the next M.readline starts clean.
function M.cancel()
  lib.rl_callback_sigcleanup()
  lib.rl_free_line_state()
  lib.rl_callback_handler_remove()
end

-- Keeps at most max entries, reading earlier ones from path (created when
-- missing, so that append_history can add to it).
function M.load_history(path, max)
  history_max = max or history_max
  lib.stifle_history(history_max)
  local f = io.open(path, "a")
  if not f then return false end
  f:close()
  lib.history_truncate_file(path, history_max)
  lib.read_history(path)
  return true
end

-- Adds line to the in-memory history and, with a path, to the file at
-- once (so that a session that is killed still keeps what was typed).
function M.add_history(text, path)
  lib.add_history(text)
  if path then lib.append_history(1, path) end
end

-- Tab completion: complete(text) returns a list of full replacements for
-- text, the word before the cursor. Words break at spaces and operators but
-- not at '.' or ':', so that text is a whole path such as "lt.lo" or "m:for".
function M.set_completer(complete)
  local matches, index = {}, 0
  -- readline calls the generator with state 0 first, then again until it
  -- returns NULL; every string returned is freed by readline.
  keep.generator = ffi.cast("rl_compentry_func_t *", function(_, state)
    if state == 0 then index = 0 end
    index = index + 1
    local s = matches[index]
    if not s then return nil end
    local p = ffi.C.malloc(#s + 1)
    ffi.copy(p, s)
    return ffi.cast("char *", p)
  end)
  local function attempt(text, _, _)
    lib.rl_attempted_completion_over = 1      -- no fallback to file names
    lib.rl_completion_append_character = 0    -- "lt.load" then "(": no space
    -- An error must not cross readline's C frames: contain it here.
    local ok, list = pcall(complete, ffi.string(text))
    matches = (ok and type(list) == "table") and list or {}
    if #matches == 0 then return nil end
    return lib.rl_completion_matches(text, keep.generator)
  end
  jit.off(attempt)    -- it calls C that calls back into Lua (see M.readline)
  keep.attempt = ffi.cast("rl_completion_func_t *", attempt)
  local breaks = " \t\n\"'<>=;+-*/%^~#,(){}[]"
  keep.breaks = ffi.new("char[?]", #breaks + 1, breaks)
  lib.rl_basic_word_break_characters = keep.breaks
  lib.rl_attempted_completion_function = keep.attempt
end

return M
