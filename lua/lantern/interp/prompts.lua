-- lantern.interp.prompts: explainer and simulator prompts from the template
-- files in lua/lantern/interp/templates/ (format in docs/interp.md), and
-- trimming to a token budget.
--
-- A template file starts with header lines "# key: value" (id, version,
-- api = chat | completions, optional sparse_note; other "#" lines are
-- comments), then sections, each opened by a line "=== ROLE" (system, user,
-- assistant, or prompt for a completions template). A section's text runs
-- to the next "===" line, without its last newline (so a section that
-- should end with a newline is followed by an empty line; the file's own
-- final newline does not count). {{name}} placeholders
-- are filled from a table; an unknown name is an error.
local render = require("lantern.interp.render")

local M = {}

local function templates_dir()
  local src = debug.getinfo(1, "S").source:sub(2)
  return (src:match("^(.*)/[^/]*$") or ".") .. "/templates"
end

M.dir = templates_dir()

local function parse(text, name)
  local t = {name = name, fields = {}, sections = {}}
  local cur
  if text:sub(-1) ~= "\n" then text = text .. "\n" end
  for line in text:gmatch("(.-)\n") do
    local role = line:match("^=== (%a+)%s*$")
    if role then
      cur = {role = role, lines = {}}
      t.sections[#t.sections + 1] = cur
    elseif cur then
      cur.lines[#cur.lines + 1] = line
    else
      local k, v = line:match("^# ([%w_]+): (.*)$")
      if k then t.fields[k] = v
      elseif line ~= "" and not line:match("^#") then
        error(string.format("template %s: text before the first section: %q", name, line), 0)
      end
    end
  end
  for _, s in ipairs(t.sections) do
    -- Joining the lines with "\n" gives the section's bytes without the
    -- newline of its last line.
    s.text = table.concat(s.lines, "\n")
    s.lines = nil
  end
  t.id = t.fields.id
  t.version = tonumber(t.fields.version)
  t.api = t.fields.api
  if not t.id or not t.version or (t.api ~= "chat" and t.api ~= "completions") then
    error("template " .. name .. ": header needs id, version and api (chat or completions)", 0)
  end
  if #t.sections == 0 then error("template " .. name .. ": no sections", 0) end
  return t
end

local cache = {}

-- The template NAME (file NAME.txt in opts.dir or the templates directory),
-- parsed: {id=, version=, api=, fields=, sections={{role=, text=}, ...}}.
function M.template(name, dir)
  dir = dir or M.dir
  local path = dir .. "/" .. name .. ".txt"
  if cache[path] then return cache[path] end
  local f = io.open(path, "rb")
  if not f then error("no prompt template " .. path, 0) end
  local text = f:read("*a")
  f:close()
  local t = parse(text, name)
  cache[path] = t
  return t
end

-- text with every {{name}} replaced by vars[name] (inserted text is not
-- scanned again).
function M.fill(text, vars, what)
  return (text:gsub("{{([%w_]+)}}", function(k)
    local v = vars[k]
    if v == nil then error(string.format("template %s: no value for {{%s}}", what or "?", k), 0) end
    return tostring(v)
  end))
end

-- A chat template -> messages {{role=, content=}, ...}; a completions
-- template -> the prompt string.
function M.build(t, vars)
  if t.api == "completions" then
    local parts = {}
    for _, s in ipairs(t.sections) do parts[#parts + 1] = M.fill(s.text, vars, t.name) end
    return table.concat(parts, "\n")
  end
  local msgs = {}
  for _, s in ipairs(t.sections) do
    msgs[#msgs + 1] = {role = s.role, content = M.fill(s.text, vars, t.name)}
  end
  return msgs
end

-- Approximate token count of a text: opts.count_tokens(text) when given
-- (for example function(s) return #tok:encode(s) end), otherwise
-- ceil(bytes / 4), about right for English with GPT-style tokenizers.
function M.count_tokens(text, opts)
  if opts and opts.count_tokens then return opts.count_tokens(text) end
  return math.ceil(#text / 4)
end

-- Tokens of a prompt string or of chat messages (4 per message for the
-- role and separators, as chat formats roughly add).
function M.size(p, opts)
  if type(p) == "string" then return M.count_tokens(p, opts) end
  local n = 2
  for _, m in ipairs(p) do n = n + 4 + M.count_tokens(m.content, opts) end
  return n
end

-- A window of a record around its strongest token, n tokens long.
local function around_peak(r, n)
  local best, at = -math.huge, 1
  for i, a in ipairs(r.acts) do
    if a > best then best, at = a, i end
  end
  local first = math.max(1, math.min(at - math.floor(n / 2), #r.acts - n + 1))
  local out = {acts = {}, tokens = r.tokens and {} or nil, strs = r.strs and {} or nil}
  for i = first, first + n - 1 do
    out.acts[#out.acts + 1] = r.acts[i]
    if r.tokens then out.tokens[#out.tokens + 1] = r.tokens[i] end
    if r.strs then out.strs[#out.strs + 1] = r.strs[i] end
  end
  return out
end

M.DEFAULT_BUDGET = 6000

-- The explainer prompt for records (the top records of the train split, in
-- order), trimmed to opts.budget tokens (default 6000): records are dropped
-- from the end (the weakest) until the prompt fits; a single record still
-- too long is cut to a window around its strongest token. The scale
-- (max_activation) is that of the records shown. Returns the messages and
-- {template=, template_version=, n_records=, trimmed=, prompt_tokens=,
-- max_activation=, repeated=}.
function M.explain(records, opts)
  opts = opts or {}
  if #records == 0 then error("explain: no records to explain from", 0) end
  local t = M.template(opts.template or "explain", opts.template_dir)
  local budget = opts.budget or M.DEFAULT_BUDGET
  local shown = {}
  for i = 1, math.min(#records, opts.max_records or #records) do shown[i] = records[i] end
  local trimmed = #shown < #records
  while true do
    local text, info = render.records(shown, {token_str = opts.token_str, sparse_note = t.fields.sparse_note})
    local msgs = M.build(t, {records = text})
    local size = M.size(msgs, opts)
    if size <= budget then
      return msgs, {template = t.id, template_version = t.version, n_records = #shown, trimmed = trimmed,
                    prompt_tokens = size, max_activation = info.max_activation, repeated = info.repeated}
    end
    trimmed = true
    if #shown > 1 then
      shown[#shown] = nil
    elseif #shown[1].acts > 1 then
      shown[1] = around_peak(shown[1], math.floor(#shown[1].acts / 2))
    else
      error(string.format("explain: the prompt needs %d tokens even with one token of one record, " ..
                          "over the budget of %d", size, budget), 0)
    end
  end
end

-- The simulator prompt for one record of n tokens: messages (chat
-- templates) or a prompt string (completions). mode: "all" | "chat" |
-- "json". Returns the prompt and {template=, template_version=,
-- prompt_tokens=}; an error when over opts.budget.
function M.simulate(mode, explanation, record, opts)
  opts = opts or {}
  local name = opts.template or ("simulate-" .. mode)
  local t = M.template(name, opts.template_dir)
  local text = render.records({record}, {hide = true, token_str = opts.token_str})
  local p = M.build(t, {explanation = explanation, record = text, n_tokens = #(record.strs or record.tokens)})
  local size = M.size(p, opts)
  local budget = opts.budget or M.DEFAULT_BUDGET
  if size > budget then
    error(string.format("simulate: the prompt needs about %d tokens, over the budget of %d", size, budget), 0)
  end
  return p, {template = t.id, template_version = t.version, prompt_tokens = size}
end

return M
