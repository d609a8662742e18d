-- test_exchange.lua: import and export of automated-interpretability
-- NeuronRecord JSON and explanation .jsonl files, written by the test in
-- the release's shape (Python's NaN included).
local check = require("check")
local store = require("lantern.store")
local ex = require("lantern.exchange")
local json = store.json

local root = os.getenv("LANTERN_ROOT") or "."
local tmp = os.tmpname()
os.remove(tmp)
local dir = tmp .. ".d"
os.execute("mkdir -p " .. dir)
local function path(name) return dir .. "/" .. name end

local function write(file, text)
  local f = assert(io.open(file, "wb"))
  f:write(text)
  f:close()
end

local function act_record(tokens, acts)
  return {dataclass_name = "ActivationRecord", tokens = json.array(tokens), activations = json.array(acts)}
end

-- A NeuronRecord as the release writes it (kurtosis NaN, as Python prints).
local function neuron_record_text(layer, index)
  local t = {
    dataclass_name = "NeuronRecord",
    neuron_id = {dataclass_name = "NeuronId", layer_index = layer, neuron_index = index},
    most_positive_activation_records = {
      act_record({" the", " cat", " sat"}, {0.5, 2.25, -0.125}),
      act_record({"\n", "é", " \"quoted\"", "NaN"}, {3.5, 0, 1, 0.25}),
    },
    random_sample = {act_record({" a", " cat"}, {0, 0.75})},
    random_sample_by_quantile = {
      {act_record({" x"}, {0.1})}, json.array(), {act_record({" y", " z"}, {0.2, 0.3})}, json.array(),
    },
    quantile_boundaries = {-0.5, 0.1, 0.2, 0.4, 0.9},
    mean = 0.125, variance = 0.5, skewness = 1.5, kurtosis = 12345,
  }
  local text = json.encode(t)
  return (text:gsub("12345", "NaN"))
end

local tests = {}

function tests.sanitize_python_nan()
  check.eq(ex.sanitize('{"a":NaN,"b":[Infinity,-Infinity],"c":"NaN -Infinity \\"NaN"}'),
           '{"a":null,"b":[null,null],"c":"NaN -Infinity \\"NaN"}', "sanitize")
end

function tests.neuron_record_round_trip()
  local st = store.open(path("s1"))
  local files = {path("0_7.json"), path("1_3.json")}
  write(files[1], neuron_record_text(0, 7))
  write(files[2], neuron_record_text(1, 3))
  local nodes = ex.import_records(st, files, {model = "gpt2-xl"})
  check.eq(#nodes, 2, "nodes imported")
  local rec = st:record{model = "gpt2-xl", kind = "mlp_neuron", layer = 0, index = 7}
  check.eq(#rec.top, 2, "top records")
  check.eq(rec.top[1].acts[1], 3.5, "top ordered by maximum")
  check.eq(rec.mean, 0.125, "mean")
  check.truthy(rec.kurtosis ~= rec.kurtosis, "NaN kurtosis kept as NaN")
  check.eq(#rec.quantiles, 4, "bins")
  check.eq(rec.quantiles[3].q_lo, 0.9, "bin quantile")
  check.eq(rec.quantiles[3].lo, 0.2, "bin boundary")
  check.eq(#rec.quantiles[3].records, 1, "bin records")
  -- token strings live in the model's string table
  local strings = st:get_json("models", "model/gpt2-xl/tokens")
  check.eq(strings[rec.top[2].tokens[2] + 1], " cat", "string table")

  -- export gives the same JSON back (the top records sorted by maximum)
  local out = json.decode(ex.export_record(st, {model = "gpt2-xl", kind = "mlp_neuron", layer = 0, index = 7}))
  local orig = json.decode(ex.sanitize(neuron_record_text(0, 7)))
  check.eq(out.neuron_id.layer_index, 0, "layer")
  check.eq(out.neuron_id.neuron_index, 7, "neuron")
  check.eq(out.dataclass_name, "NeuronRecord", "dataclass")
  check.eq(out.kurtosis, nil, "NaN exported as null")
  check.eq(out.skewness, 1.5, "skewness")
  local want = {orig.most_positive_activation_records[2], orig.most_positive_activation_records[1]}
  for i, r in ipairs(want) do
    local got = out.most_positive_activation_records[i]
    check.eq(#got.tokens, #r.tokens, "tokens length")
    for j = 1, #r.tokens do
      check.eq(got.tokens[j], r.tokens[j], "token string")
      check.near(got.activations[j], r.activations[j], 1e-7, "activation")
    end
  end
  check.eq(out.random_sample[1].tokens[2], " cat", "random sample")
  check.eq(#out.random_sample_by_quantile, 4, "bins exported")
  check.eq(out.random_sample_by_quantile[3][1].tokens[2], " z", "bin record")
  check.eq(#out.quantile_boundaries, 5, "boundaries")
  for i, v in ipairs(orig.quantile_boundaries) do check.near(out.quantile_boundaries[i], v, 0, "boundary " .. i) end

  -- a second import reuses and extends the string table
  write(path("2_0.json"), (neuron_record_text(2, 0):gsub('" sat"', '" stood"')))
  ex.import_records(st, path("2_0.json"), {model = "gpt2-xl"})
  local strings2 = st:get_json("models", "model/gpt2-xl/tokens")
  check.eq(#strings2, #strings + 1, "one new string")
  st:close()
end

function tests.explanations_round_trip()
  local st = store.open(path("s2"))
  local lines = {
    json.encode{dataclass_name = "NeuronSimulationResults",
                neuron_id = {dataclass_name = "NeuronId", layer_index = 0, neuron_index = 7},
                scored_explanations = {
                  {dataclass_name = "ScoredExplanation", explanation = "cats sitting",
                   scored_simulation = {dataclass_name = "ScoredSimulation", simulation_results = json.array(),
                                        ev_correlation_score = 0.61, rsquared_score = -0.25}},
                  {dataclass_name = "ScoredExplanation", explanation = "animals",
                   scored_simulation = {dataclass_name = "ScoredSimulation", simulation_results = json.array(),
                                        ev_correlation_score = 0.125}},
                }},
    ((json.encode{dataclass_name = "NeuronSimulationResults",
                neuron_id = {dataclass_name = "NeuronId", layer_index = 1, neuron_index = 3},
                scored_explanations = {{dataclass_name = "ScoredExplanation", explanation = "quotes",
                                        scored_simulation = {ev_correlation_score = 999}}}}):gsub("999", "NaN")),
  }
  write(path("expl.jsonl"), table.concat(lines, "\n") .. "\n")
  local n = ex.import_explanations(st, path("expl.jsonl"), {model = "gpt2-xl"})
  check.eq(n, 3, "explanations imported")
  local node = {model = "gpt2-xl", kind = "mlp_neuron", layer = 0, index = 7}
  local expl = st:explanations(node)
  check.eq(#expl, 2, "two explanations")
  check.eq(expl[1].explainer, "openai-import#1", "explainer id")
  check.eq(expl[1].text, "cats sitting", "text")
  local scores = st:scores(node)
  check.eq(scores[1].scores.ev_correlation_score, 0.61, "score")
  check.eq(scores[1].scores.rsquared_score, -0.25, "rsquared")
  check.eq(#st:scores{model = "gpt2-xl", kind = "mlp_neuron", layer = 1, index = 3}, 0, "NaN score not stored")

  local line = json.decode(ex.export_explanations(st, node))
  check.eq(line.dataclass_name, "NeuronSimulationResults", "dataclass")
  check.eq(line.neuron_id.neuron_index, 7, "neuron id")
  check.eq(#line.scored_explanations, 2, "exported explanations")
  check.eq(line.scored_explanations[1].explanation, "cats sitting", "explanation")
  check.eq(line.scored_explanations[1].scored_simulation.ev_correlation_score, 0.61, "exported score")
  check.eq(line.scored_explanations[2].scored_simulation.ev_correlation_score, 0.125, "second score")
  st:close()
end

function tests.export_mined_records_through_the_tokenizer()
  local lt = require("lantern")
  local tokdir = root .. "/tests/fixtures/gpt2-tokenizer"
  local m = lt.load(root .. "/tests/fixtures/hf-gpt2-tiny2", {tokenizer = tokdir})
  write(path("text.txt"), string.rep("Neurons fire on some tokens and not on others. ", 20))
  local st = store.open(path("s3"))
  require("lantern.mine").run{model = m, data = path("text.txt"), window = 8, top = 3, layers = "0", store = st, name = "tiny"}
  local node = {model = "tiny", kind = "mlp_neuron", layer = 0, index = 1}
  local out = json.decode(ex.export_record(st, node))
  local rec = st:record(node)
  local tok = lt.tokenizer(tokdir)
  check.eq(#out.most_positive_activation_records, 3, "top exported")
  for j, id in ipairs(rec.top[1].tokens) do
    check.eq(out.most_positive_activation_records[1].tokens[j], tok:token_text(id), "token text")
  end
  check.raises(function() ex.import_records(st, path("0_7.json"), {model = "tiny"}) end, "another model name")
  st:close()
end

function tests.zz_cleanup()
  assert(dir:match("^/tmp/"), "unexpected temporary path " .. dir)
  os.execute("rm -rf " .. dir)
end

return tests
