-- lantern.interp.simulate: predicting a node's activations on records from
-- an explanation alone (docs/interp.md, "Simulators"). Modes:
--   "all"   completions with echo and logprobs: one prompt per record with
--           every value "unknown"; the expected value at each unknown is
--           read from the prompt's own top logprobs (self-hosted servers)
--   "chat"  chat with top_logprobs: the model copies the record with its
--           digits; expected values from the top logprobs at each digit
--   "json"  chat without logprobs: the model returns a JSON array with one
--           integer per token
-- plus the offline baselines (lantern.interp.baselines). A record whose
-- answer does not line up with its tokens is predicted as all zeros and
-- counted (meta.misaligned).
local json = require("lantern.json")
local prompts = require("lantern.interp.prompts")
local baselines = require("lantern.interp.baselines")

local M = {}

M.MODES = {all = true, chat = true, json = true}

local function trim(s) return (s:match("^%s*(.-)%s*$")) end

-- The value 0..10 a token stands for, or nil.
local function digit_value(tok)
  local t = trim(tok)
  if t:match("^%d%d?$") then
    local v = tonumber(t)
    if v <= 10 then return v end
  end
  return nil
end

-- Expected value over 0..10 from top logprobs: alternatives is a map
-- {token = logprob} (completions) or a list {{token=, logprob=}, ...}
-- (chat). Tokens are compared without surrounding whitespace, so "3" and
-- " 3" both count for 3; probabilities are renormalised over the digit
-- tokens present. Returns the expected value (0 when no digit is present)
-- and {mass = probability of all alternatives, digits = probability of
-- the digits, k = number of alternatives}.
function M.expected_value(alternatives)
  local p = {}
  local mass, k = 0, 0
  local function add(tok, lp)
    if type(tok) ~= "string" or type(lp) ~= "number" then return end
    local prob = math.exp(lp)
    mass, k = mass + prob, k + 1
    local v = digit_value(tok)
    if v then p[v] = (p[v] or 0) + prob end
  end
  if alternatives[1] ~= nil or next(alternatives) == nil then
    for _, a in ipairs(alternatives) do add(a.token, a.logprob) end
  else
    for tok, lp in pairs(alternatives) do add(tok, lp) end
  end
  local total, ev = 0, 0
  for v, prob in pairs(p) do
    total = total + prob
    ev = ev + v * prob
  end
  if total <= 0 then return 0, {mass = mass, digits = 0, k = k} end
  return ev / total, {mass = mass, digits = total, k = k}
end

local function zeros(n)
  local z = {}
  for i = 1, n do z[i] = 0 end
  return z
end

-- Expected values from an echoed completions response ("all" mode): the
-- value slots are the tokens that start an "unknown" right after a tab,
-- after the last "<start>" of the echoed prompt. nil and a reason when
-- their number is not n.
function M.parse_all(data, n)
  local ch = data.choices and data.choices[1]
  local lp = ch and ch.logprobs
  if type(lp) ~= "table" or type(lp.tokens) ~= "table" or type(lp.top_logprobs) ~= "table" then
    return nil, "no logprobs in the response (does the server support echo with logprobs?)"
  end
  local tokens, top = lp.tokens, lp.top_logprobs
  local pos, at = {}, 1
  for i, t in ipairs(tokens) do
    if type(t) ~= "string" then return nil, "a token that is not a string" end
    pos[i] = at
    at = at + #t
  end
  local text = table.concat(tokens)
  local start, from = nil, 1
  while true do
    local s = text:find("<start>", from, true)
    if not s then break end
    start, from = s, s + 1
  end
  if not start then return nil, "no <start> in the echoed prompt" end
  local out = {}
  for i, t in ipairs(tokens) do
    if pos[i] + #t > start then
      local q = pos[i] + #t:match("^%s*")
      if q > 1 and text:sub(q, q + 6) == "unknown" and text:sub(q - 1, q - 1) == "\t" and q < pos[i] + #t then
        local alts = top[i]
        if type(alts) ~= "table" then return nil, "no top logprobs at a value" end
        out[#out + 1] = (M.expected_value(alts))
      end
    end
  end
  if #out ~= n then return nil, string.format("%d values for %d tokens", #out, n) end
  return out
end

-- Expected values from a chat response with logprobs ("chat" mode): a slot
-- is a generated token that holds a digit right after a tab. Also returns
-- the number of slots whose top logprobs were cut short (fewer than 11
-- alternatives holding under 99% of the probability).
function M.parse_chat(data, n)
  local ch = data.choices and data.choices[1]
  local content = ch and type(ch.logprobs) == "table" and ch.logprobs.content
  if type(content) ~= "table" then return nil, "no logprobs in the response" end
  local out, truncated, last = {}, 0, ""
  for _, e in ipairs(content) do
    local t = type(e) == "table" and e.token
    if type(t) ~= "string" then return nil, "a logprob entry without a token" end
    local after_tab = last == "\t" and t:match("^%d")
    local with_tab = t:match("^\t+%d")
    if after_tab or with_tab then
      local alts = type(e.top_logprobs) == "table" and e.top_logprobs or {}
      local ev, info = M.expected_value(alts)
      if info.digits == 0 and digit_value(t) then ev = digit_value(t) end
      out[#out + 1] = ev
      if info.k < 11 and info.mass < 0.99 then truncated = truncated + 1 end
    end
    if #t > 0 then last = t:sub(-1) end
  end
  if #out ~= n then return nil, string.format("%d values for %d tokens", #out, n), truncated end
  return out, nil, truncated
end

-- Values from a JSON-array answer ("json" mode): the first [...] in the
-- text must hold exactly n integers from 0 to 10.
function M.parse_json(text, n)
  local arr = type(text) == "string" and text:match("%b[]")
  if not arr then return nil, "no JSON array in the answer" end
  local ok, v = pcall(json.decode, arr)
  if not ok or type(v) ~= "table" then return nil, "the array is not valid JSON" end
  if #v ~= n then return nil, string.format("%d values for %d tokens", #v, n) end
  local out = {}
  for i = 1, n do
    local x = v[i]
    if type(x) ~= "number" or x ~= math.floor(x) or x < 0 or x > 10 then
      return nil, "value " .. i .. " is not an integer from 0 to 10"
    end
    out[i] = x
  end
  return out
end

-- The id of a simulator: baselines as in baselines.id, models as
-- "MODEL@TEMPLATE-vVERSION" ("gpt-4o-mini@simulate-json-v1").
function M.id(opts)
  local sim = opts.simulator or "baseline"
  if sim == "baseline" then return baselines.id(1) end
  if sim == "ngram" then return baselines.id(opts.ngram or 2) end
  local t = prompts.template(opts.template or ("simulate-" .. (opts.mode or "json")), opts.template_dir)
  return string.format("%s@%s-v%d", sim, t.id, t.version)
end

-- The lookup table a baseline simulator uses for an explanation: its own
-- (baseline explanations) or one built from the training records it came
-- from.
local function lookup_for(explanation, opts)
  local n = opts.simulator == "ngram" and (opts.ngram or 2) or 1
  if explanation.lookup and explanation.lookup.n == n then return explanation.lookup end
  local train = explanation.train_records
  if not train then
    error("the baseline simulator needs the training records (explanation.train_records)", 0)
  end
  return baselines.table(train, n)
end

-- One request per record for a model simulator.
local function build_requests(mode, explanation, records, opts)
  local reqs = {}
  for i, r in ipairs(records) do
    local p = prompts.simulate(mode, explanation.text, r, opts)
    if mode == "all" then
      reqs[i] = {model = opts.simulator, prompt = p, max_tokens = 1, temperature = 0, echo = true,
                 logprobs = opts.top_logprobs or 15}
    else
      local n = #(r.strs or r.tokens)
      reqs[i] = {model = opts.simulator, messages = p, temperature = 0,
                 -- a line per token of a few tokens each, with room to spare
                 max_tokens = (mode == "chat" and 12 or 4) * n + 50}
      if mode == "chat" then
        reqs[i].logprobs = true
        reqs[i].top_logprobs = opts.top_logprobs or 20
      end
    end
  end
  return reqs
end

-- Simulates many (explanation, records) pairs in one batch of requests.
-- items: {{explanation = {text=, ...}, records = {...}}, ...}. opts:
--   simulator  "baseline" (token lookup), "ngram", or a model name
--   mode       "json" (default), "chat" or "all" for a model
--   client     a lantern.llm client (model simulators)
--   token_str, budget, count_tokens, top_logprobs, template, ngram
--   warn       function(message) for warnings (default: stderr)
-- Returns a list, per item: {expected = {{...}, ...} (per record), simulator =
-- id, meta = {mode=, template=, template_version=, misaligned=,
-- misaligned_reasons=, truncated=}} or {error = message}.
function M.simulate_many(items, opts)
  opts = opts or {}
  local sim = opts.simulator or "baseline"
  local id = M.id(opts)
  local out = {}
  if sim == "baseline" or sim == "ngram" then
    for i, it in ipairs(items) do
      local ok, res = pcall(function()
        local tab = lookup_for(it.explanation, opts)
        return {expected = baselines.simulate(tab, it.records), simulator = id,
                meta = {mode = "baseline", n = tab.n, misaligned = 0}}
      end)
      out[i] = ok and res or {error = tostring(res)}
    end
    return out
  end

  local mode = opts.mode or "json"
  if not M.MODES[mode] then error("simulate: unknown mode '" .. tostring(mode) .. "' (all, chat or json)", 2) end
  if not opts.client then error("simulate: a model simulator needs opts.client", 2) end
  if mode == "chat" and (opts.top_logprobs or 20) < 11 then
    local warn = opts.warn or function(m) io.stderr:write("warning: ", m, "\n") end
    warn(string.format("top_logprobs = %d cannot hold the 11 values 0-10; expected values are " ..
                       "renormalised over the digits that are present", opts.top_logprobs))
  end
  local t = prompts.template(opts.template or ("simulate-" .. mode), opts.template_dir)
  -- Gather every record's request, remembering whose it is.
  local reqs, owner = {}, {}
  for i, it in ipairs(items) do
    local ok, r = pcall(build_requests, mode, it.explanation, it.records, opts)
    if ok then
      for j, q in ipairs(r) do
        reqs[#reqs + 1] = q
        owner[#reqs] = {i, j}
      end
      out[i] = {expected = {}, simulator = id,
                meta = {mode = mode, template = t.id, template_version = t.version,
                        misaligned = 0, misaligned_reasons = json.array(), truncated = 0}}
    else
      out[i] = {error = tostring(r)}
    end
  end
  local results = #reqs > 0 and (mode == "all" and opts.client:complete(reqs) or opts.client:chat(reqs)) or {}
  local truncated_total = 0
  for k, res in ipairs(results) do
    local i, j = owner[k][1], owner[k][2]
    local o = out[i]
    if not o.error then
      local rec = items[i].records[j]
      local n = #(rec.strs or rec.tokens)
      if res.error then
        o.error = string.format("simulating record %d: %s", j, res.error)
      else
        local vals, why, trunc
        if mode == "all" then vals, why = M.parse_all(res.data, n)
        elseif mode == "chat" then vals, why, trunc = M.parse_chat(res.data, n)
        else vals, why = M.parse_json(res.content, n) end
        if trunc and trunc > 0 then
          o.meta.truncated = o.meta.truncated + trunc
          truncated_total = truncated_total + trunc
        end
        if not vals then
          vals = zeros(n)
          o.meta.misaligned = o.meta.misaligned + 1
          o.meta.misaligned_reasons[#o.meta.misaligned_reasons + 1] = why
        end
        o.expected[j] = vals
      end
    end
  end
  if truncated_total > 0 then
    local warn = opts.warn or function(m) io.stderr:write("warning: ", m, "\n") end
    warn(string.format("the server returned fewer than 11 top logprobs at %d predicted values, leaving " ..
                       "part of the 0-10 distribution out; expected values are renormalised over the digits present",
                       truncated_total))
  end
  for _, o in ipairs(out) do
    if o.error then o.expected, o.simulator, o.meta = nil, nil, nil end
  end
  return out
end

-- Simulates one explanation on records; raises on a failed request.
function M.simulate(explanation, records, opts)
  local r = M.simulate_many({{explanation = explanation, records = records}}, opts)[1]
  if r.error then error(r.error, 0) end
  return r
end

return M
