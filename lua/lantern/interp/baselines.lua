-- lantern.interp.baselines: explainers and simulators that need no model.
--
-- Token lookup (n = 1): the mean activation of every token over the
-- training records; the explanation names the tokens with the highest
-- means, and the simulator predicts each token's mean (0 for a token never
-- seen in training: most tokens do not make a neuron fire).
-- N-gram (n >= 2): the same with the last n tokens as the key; the
-- simulator backs off to shorter contexts (down to the single token) when
-- a context was not seen.
--
-- Tokens are keyed by id (or by string when records carry strings);
-- predictions are raw activations, not the 0..10 scale.
local M = {}

M.VERSION = 1

local function key(tokens, i, k)
  if k == 1 then return tokens[i] end
  local parts = {}
  for j = i - k + 1, i do parts[#parts + 1] = tostring(tokens[j]) end
  return table.concat(parts, "\1")
end

-- The lookup table of records: {n=, means = {[k] = {[key] = mean}}, counts
-- = {[k] = {[key] = count}}} for context lengths k = 1..n.
function M.table(records, n)
  n = n or 1
  local sums, counts, means = {}, {}, {}
  for k = 1, n do sums[k], counts[k], means[k] = {}, {}, {} end
  for _, r in ipairs(records) do
    local toks, acts = r.tokens, r.acts
    for i = 1, #toks do
      for k = 1, math.min(n, i) do
        local key_ = key(toks, i, k)
        sums[k][key_] = (sums[k][key_] or 0) + acts[i]
        counts[k][key_] = (counts[k][key_] or 0) + 1
      end
    end
  end
  for k = 1, n do
    for key_, s in pairs(sums[k]) do means[k][key_] = s / counts[k][key_] end
  end
  return {n = n, means = means, counts = counts}
end

-- Predicted activation of every token of a record.
function M.predict(tab, record)
  local toks, out = record.tokens, {}
  for i = 1, #toks do
    local v = 0
    for k = math.min(tab.n, i), 1, -1 do
      local m = tab.means[k][key(toks, i, k)]
      if m then v = m; break end
    end
    out[i] = v
  end
  return out
end

-- The id of a baseline: "baseline/token-lookup@v1", "baseline/ngram2@v1".
function M.id(n)
  return (n or 1) == 1 and ("baseline/token-lookup@v" .. M.VERSION)
         or string.format("baseline/ngram%d@v%d", n, M.VERSION)
end

local function quote(s)
  -- JSON-style quotes keep leading spaces and odd bytes visible.
  return require("lantern.json").encode(require("lantern.interp.render").valid_utf8(s))
end

-- An explanation from training records: {text=, explainer=, lookup=,
-- meta={method=, n=, top={{token=, mean=, count=}, ...}}}. opts.n (1),
-- opts.top (5: tokens named), opts.token_str (id -> string).
function M.explain(records, opts)
  opts = opts or {}
  local n = opts.n or 1
  if #records == 0 then error("baseline explainer: no training records", 0) end
  local tab = M.table(records, n)
  -- Name the strongest keys of the longest context.
  local means, counts = tab.means[n], tab.counts[n]
  local keys = {}
  for k in pairs(means) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b)
    if means[a] ~= means[b] then return means[a] > means[b] end
    return tostring(a) < tostring(b)   -- a fixed order for ties
  end)
  -- Strings of a key: its tokens, each through token_str.
  local render = require("lantern.interp.render")
  local function key_text(k)
    if n == 1 then return render.token_strings({tokens = {k}}, opts)[1] end
    local toks = {}
    for part in (k .. "\1"):gmatch("(.-)\1") do toks[#toks + 1] = tonumber(part) or part end
    return table.concat(render.token_strings({tokens = toks}, opts))
  end
  local top, names = {}, {}
  for i = 1, math.min(opts.top or 5, #keys) do
    local k = keys[i]
    if means[k] <= 0 then break end
    local text = key_text(k)
    top[#top + 1] = {token = text, mean = means[k], count = counts[k]}
    names[#names + 1] = quote(text)
  end
  local what = n == 1 and "the tokens " or "the token sequences "
  local text = #names > 0 and (what .. table.concat(names, ", ")) or "nothing (no positive activations)"
  return {text = text, explainer = M.id(n), lookup = tab,
          meta = {method = n == 1 and "token-lookup" or "ngram", n = n, version = M.VERSION, top = top}}
end

-- Predictions for records from a lookup table: a list of per-record lists.
function M.simulate(tab, records)
  local out = {}
  for i, r in ipairs(records) do out[i] = M.predict(tab, r) end
  return out
end

return M
