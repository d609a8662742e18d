-- lantern.exchange: import and export of the automated-interpretability
-- release's files (Bills et al. 2023; docs/mining.md, "Exchange"):
--   - NeuronRecord JSON: one neuron's top, random and quantile-bin
--     activation records and statistics;
--   - explanation .jsonl: one NeuronSimulationResults object per line, with
--     scored_explanations [{explanation, scored_simulation {..._score}}].
--
--   local ex = require("lantern.exchange")
--   local st = require("lantern.store").open()
--   ex.import_records(st, {"0/42.json", ...}, {model = "gpt2-xl"})
--   ex.import_explanations(st, "explanations.jsonl", {model = "gpt2-xl"})
--   io.open("out.json", "w"):write(ex.export_record(st, {model = "toy", kind = "mlp_neuron", layer = 0, index = 3}))
--
-- Tokens. The release stores tokens as strings; the store keeps token ids.
-- An imported model gets a string table in the "models" database,
-- model/<model>/tokens (a JSON array; id i is element i + 1), extended as
-- new strings appear, so strings round-trip exactly and no tokenizer is
-- needed. Export writes strings from that table, or, for mined models, from
-- the tokenizer recorded with the model (or opts.tokenizer).
local store_mod = require("lantern.store")
local json = store_mod.json

local M = {}

local NaN = 0 / 0
local BIN_Q = {0, 0.5, 0.9, 0.99, 0.999}

-- Python's json module writes NaN, Infinity and -Infinity, which JSON does
-- not have; they become null (outside strings only).
function M.sanitize(text)
  local out, pos = {}, 1
  while true do
    local i = text:find('["NI]', pos)
    if not i then break end
    local c = text:sub(i, i)
    if c == '"' then
      local j = i + 1
      while true do   -- the string's end: a quote not escaped
        local k = text:find('["\\]', j)
        if not k then j = #text break end
        if text:sub(k, k) == "\\" then j = k + 2 else j = k break end
      end
      out[#out + 1] = text:sub(pos, j)
      pos = j + 1
    else
      local word = text:match("^NaN", i) or text:match("^Infinity", i)
      local start = i
      if word and text:sub(i - 1, i - 1) == "-" then start = i - 1 end
      if word and not text:sub(i + #word, i + #word):match("[%w_]") then
        out[#out + 1] = text:sub(pos, start - 1)
        out[#out + 1] = "null"
      else
        out[#out + 1] = text:sub(pos, i + (word and #word - 1 or 0))
      end
      pos = i + (word and #word or 1)
    end
  end
  out[#out + 1] = text:sub(pos)
  return table.concat(out)
end

local function read_file(path)
  local s, err = require("lantern.files").read(path)
  if not s then error("exchange: " .. tostring(err), 0) end
  return s
end

local function decode(text, where)
  local ok, v = pcall(json.decode, M.sanitize(text))
  if not ok then error("exchange: " .. where .. ": " .. tostring(v), 0) end
  return v
end

local function num(x)
  if type(x) == "number" then return x end
  return NaN
end

-- Reduces a double to the float the store keeps, written with the fewest
-- digits that read back as that float.
local function as_float(x)
  if x ~= x then return json.null end
  return tonumber(string.format("%.9g", x))
end

------------------------------------------------------------- token tables

local TABLE_BATCH = 256

-- The string table of an imported model: {strings = {...}, ids = {s -> id}}.
local function load_table(st, model)
  local desc = st:get_json("models", "model/" .. model)
  local strings = st:get_json("models", "model/" .. model .. "/tokens")
  if desc and desc.tokenizer and not strings then
    error("exchange: model '" .. model .. "' holds mined records with token ids; import under another model name", 0)
  end
  strings = strings or json.array()
  local ids = {}
  for i, s in ipairs(strings) do ids[s] = i - 1 end
  return {strings = strings, ids = ids, desc = desc, model = model}
end

local function save_table(st, tab)
  if not tab.desc then
    tab.desc = {v = 1, source = "automated-interpretability import", token_strings = true}
    st:put_json("models", "model/" .. tab.model, tab.desc)
  end
  st:put_json("models", "model/" .. tab.model .. "/tokens", tab.strings)
end

local function token_id(tab, s)
  if type(s) ~= "string" then error("exchange: a token is not a string", 0) end
  local id = tab.ids[s]
  if not id then
    id = #tab.strings
    tab.strings[id + 1] = s
    tab.ids[s] = id
  end
  return id
end

---------------------------------------------------------------- records

local function import_act_records(list, tab, what)
  local out = {}
  if list == nil then return out end
  if type(list) ~= "table" then error("exchange: " .. what .. " is not a list", 0) end
  for i, r in ipairs(list) do
    if type(r) ~= "table" or type(r.tokens) ~= "table" or type(r.activations) ~= "table" or #r.tokens ~= #r.activations then
      error(string.format("exchange: %s[%d] needs tokens and activations of equal length", what, i), 0)
    end
    local tokens, acts = {}, {}
    for j, s in ipairs(r.tokens) do
      tokens[j] = token_id(tab, s)
      acts[j] = num(r.activations[j])
    end
    out[i] = {tokens = tokens, acts = acts}
  end
  return out
end

-- The record set (Store:put_record's shape) of a decoded NeuronRecord.
local function record_from_json(t, tab, where)
  local rec = {
    mean = num(t.mean), variance = num(t.variance), skewness = num(t.skewness), kurtosis = num(t.kurtosis),
    top = import_act_records(t.most_positive_activation_records, tab, where .. ": most_positive_activation_records"),
    random = import_act_records(t.random_sample, tab, where .. ": random_sample"),
    quantiles = {},
  }
  local bins = t.random_sample_by_quantile or {}
  local qb = t.quantile_boundaries or {}
  local nb = #bins
  for b, list in ipairs(bins) do
    local lo, hi = NaN, NaN
    if #qb == nb + 1 then lo, hi = num(qb[b]), num(qb[b + 1])
    elseif #qb == nb - 1 then lo, hi = num(qb[b - 1]), num(qb[b]) end   -- interior boundaries only
    rec.quantiles[b] = {
      q_lo = nb == 4 and BIN_Q[b] or NaN, q_hi = nb == 4 and BIN_Q[b + 1] or NaN, lo = lo, hi = hi,
      records = import_act_records(list, tab, where .. ": random_sample_by_quantile[" .. b .. "]"),
    }
  end
  return rec
end

local function neuron_id(t, where)
  local id = type(t) == "table" and t.neuron_id
  if type(id) ~= "table" or type(id.layer_index) ~= "number" or type(id.neuron_index) ~= "number" then
    error("exchange: " .. where .. ": no neuron_id {layer_index, neuron_index}", 0)
  end
  return id.layer_index, id.neuron_index
end

-- Imports NeuronRecord JSON files (a path or a list of paths) as records of
-- opts.model (required) and opts.kind (default "mlp_neuron"), committing
-- every 256 files. Returns the nodes imported.
function M.import_records(st, paths, opts)
  opts = opts or {}
  if type(opts.model) ~= "string" then error("exchange.import_records: opts.model (a name) is required", 2) end
  if type(paths) == "string" then paths = {paths} end
  local kind = opts.kind or "mlp_neuron"
  local tab = load_table(st, opts.model)
  local nodes = {}
  local i = 1
  while i <= #paths do
    local last = math.min(#paths, i + TABLE_BATCH - 1)
    st:batch(function()
      for j = i, last do
        local t = decode(read_file(paths[j]), paths[j])
        local layer, index = neuron_id(t, paths[j])
        local node = {model = opts.model, kind = kind, layer = layer, index = index}
        st:put_record(node, record_from_json(t, tab, paths[j]))
        nodes[#nodes + 1] = node
      end
      save_table(st, tab)
    end)
    i = last + 1
  end
  return nodes
end

-- A function id -> token string for a model (string table, else tokenizer).
local function token_strings(st, model, tokdir)
  local strings = st:get_json("models", "model/" .. model .. "/tokens")
  if strings then
    return function(id)
      local s = strings[id + 1]
      if not s then error("exchange: token id " .. id .. " is not in the string table of " .. model, 0) end
      return s
    end
  end
  local desc = st:get_json("models", "model/" .. model)
  tokdir = tokdir or (desc and desc.tokenizer)
  if not tokdir then
    error("exchange: model '" .. model .. "' has no tokenizer recorded; give opts.tokenizer", 0)
  end
  local tok = require("lantern.tokenizer").load(tokdir)
  local cache = {}
  return function(id)
    local s = cache[id]
    if not s then
      s = tok:token_text(id)
      cache[id] = s
    end
    return s
  end
end

local function export_act_records(list, name)
  local out = json.array()
  for i, r in ipairs(list) do
    local tokens, acts = json.array(), json.array()
    for j, id in ipairs(r.tokens) do
      tokens[j] = name(id)
      acts[j] = as_float(r.acts[j])
    end
    out[i] = {dataclass_name = "ActivationRecord", tokens = tokens, activations = acts}
  end
  return out
end

local function stat(x)
  if x == nil or x ~= x then return json.null end
  return x
end

-- The NeuronRecord (as a Lua table) of a node in the store. Undefined
-- statistics and boundaries are null. quantile_boundaries has one value
-- more than there are bins: the activation at each bin quantile.
function M.neuron_record(st, node, opts)
  opts = opts or {}
  local rec = st:record(node)
  if not rec then
    error(string.format("exchange: no record of %s %d/%d for model '%s'", node.kind, node.layer, node.index,
                        node.model), 0)
  end
  local name = token_strings(st, node.model, opts.tokenizer)
  local bins, bounds = json.array(), json.array()
  for b, q in ipairs(rec.quantiles) do
    bins[b] = export_act_records(q.records, name)
    bounds[b] = stat(q.lo)
    if b == #rec.quantiles then bounds[b + 1] = stat(q.hi) end
  end
  return {
    dataclass_name = "NeuronRecord",
    neuron_id = {dataclass_name = "NeuronId", layer_index = node.layer, neuron_index = node.index},
    most_positive_activation_records = export_act_records(rec.top, name),
    random_sample = export_act_records(rec.random, name),
    random_sample_by_quantile = bins,
    quantile_boundaries = bounds,
    mean = stat(rec.mean), variance = stat(rec.variance), skewness = stat(rec.skewness), kurtosis = stat(rec.kurtosis),
  }
end

-- The NeuronRecord JSON text of a node.
function M.export_record(st, node, opts)
  return json.encode(M.neuron_record(st, node, opts))
end

------------------------------------------------------------ explanations

local SCORE_FIELDS = {"ev_correlation_score", "rsquared_score", "absolute_dev_explained_score"}

-- Imports an explanation .jsonl file: each line's scored explanations become
-- explanations of the neuron (explainer opts.explainer, default
-- "openai-import", with "#k" appended for the k-th when a line has several)
-- and their *_score fields scores by opts.simulator (default
-- "openai-import"). Returns the number of explanations imported.
function M.import_explanations(st, path, opts)
  opts = opts or {}
  if type(opts.model) ~= "string" then error("exchange.import_explanations: opts.model is required", 2) end
  local kind = opts.kind or "mlp_neuron"
  local explainer, simulator = opts.explainer or "openai-import", opts.simulator or "openai-import"
  local text = read_file(path)
  local n = 0
  local source = path:match("([^/]+)$")
  st:batch(function()
    local lineno = 0
    for line in text:gmatch("[^\n]+") do
      lineno = lineno + 1
      if line:match("%S") then
        local where = path .. ":" .. lineno
        local t = decode(line, where)
        local layer, index = neuron_id(t, where)
        local list = t.scored_explanations or {}
        local count = #list
        for k, se in ipairs(list) do
          if type(se) == "table" and type(se.explanation) == "string" then
            local node = {model = opts.model, kind = kind, layer = layer, index = index}
            local id = count > 1 and (explainer .. "#" .. k) or explainer
            st:put_explanation{model = node.model, kind = kind, layer = layer, index = index, explainer = id,
                               text = se.explanation, meta = {source = source, rank = k}}
            local sim = type(se.scored_simulation) == "table" and se.scored_simulation or {}
            local scores = {}
            for key, v in pairs(sim) do
              if key:match("_score$") and type(v) == "number" then scores[key] = v end
            end
            if next(scores) then
              st:put_score{model = node.model, kind = kind, layer = layer, index = index, explainer = id,
                           simulator = simulator, scores = scores, meta = {source = source}}
            end
            n = n + 1
          end
        end
      end
    end
  end)
  return n
end

-- The explanation line (NeuronSimulationResults JSON text, no newline) of
-- a node: its explanations in explainer order, each with the scores of its
-- first simulator (null where absent).
function M.export_explanations(st, node)
  local scores = st:scores(node)
  local list = json.array()
  for _, e in ipairs(st:explanations(node)) do
    local sim = {dataclass_name = "ScoredSimulation", simulation_results = json.array()}
    for _, f in ipairs(SCORE_FIELDS) do sim[f] = json.null end
    for _, s in ipairs(scores) do
      if s.explainer == e.explainer then
        for k, v in pairs(s.scores) do sim[k] = v end
        break
      end
    end
    list[#list + 1] = {dataclass_name = "ScoredExplanation", explanation = e.text, scored_simulation = sim}
  end
  return json.encode{
    dataclass_name = "NeuronSimulationResults",
    neuron_id = {dataclass_name = "NeuronId", layer_index = node.layer, neuron_index = node.index},
    scored_explanations = list,
  }
end

return M
