-- lantern.interp (lt.interp): automated interpretability after Bills et al.
-- (2023): explain a node from its top records, simulate its activations
-- from the explanation alone, score the simulation against the truth.
-- docs/interp.md describes the formats, prompts, splits and scores.
--
--   local rs = st:record{model = "toy", kind = "mlp_neuron", layer = 1, index = 3}
--   local e = lt.interp.explain(rs)                               -- token-lookup baseline
--   local sp = lt.interp.split(rs)
--   local recs, groups = lt.interp.scoring_records(sp)
--   local sim = lt.interp.simulate(e, recs)
--   local s = lt.interp.score(lt.interp.acts_of(recs), sim.expected, {groups = groups})
--   print(e.text, s.ev_correlation_score)
--
-- With a model: opts.explainer / opts.simulator = "MODEL" and opts.client =
-- require("lantern.llm").client{...} (lua/lantern/llm.lua).
local json = require("lantern.json")
local render = require("lantern.interp.render")
local prompts = require("lantern.interp.prompts")
local baselines = require("lantern.interp.baselines")
local simulator = require("lantern.interp.simulate")
local scoring = require("lantern.interp.score")

local M = {}

M.render, M.prompts, M.baselines, M.simulator, M.scoring = render, prompts, baselines, simulator, scoring
M.undefined = scoring.undefined

------------------------------------------------------------------ splits

-- Splits a record set as the paper does: top records (in decreasing order
-- of their maximum) interleaved over train, calibration, valid and test
-- (record i goes to split i mod 4, 0-based), random records over
-- calibration, valid and test (i mod 3). Returns {top = {train=,
-- calibration=, valid=, test=}, random = {calibration=, valid=, test=},
-- top_index = {...}, random_index = {...}}; the *_index tables give, per
-- split, each record's 0-based position in the record set.
function M.split(rs)
  local top_names = {"train", "calibration", "valid", "test"}
  local random_names = {"calibration", "valid", "test"}
  local s = {top = {}, random = {}, top_index = {}, random_index = {}}
  for _, n in ipairs(top_names) do s.top[n], s.top_index[n] = {}, {} end
  for _, n in ipairs(random_names) do s.random[n], s.random_index[n] = {}, {} end
  for i, r in ipairs(rs.top or {}) do
    local n = top_names[(i - 1) % 4 + 1]
    table.insert(s.top[n], r)
    table.insert(s.top_index[n], i - 1)
  end
  for i, r in ipairs(rs.random or {}) do
    local n = random_names[(i - 1) % 3 + 1]
    table.insert(s.random[n], r)
    table.insert(s.random_index[n], i - 1)
  end
  return s
end

-- The records to score on: the first n valid top records and the first n
-- valid random records, n = min(#valid top, #valid random, n_each or 5)
-- ("equal numbers"). When a record set has no random records (or no top
-- ones) the other group is used alone, up to n_each. Returns the records,
-- their groups ("top" / "random") and their 0-based indices in the set.
function M.scoring_records(sp, n_each)
  n_each = n_each or 5
  local vt, vr = sp.top.valid, sp.random.valid
  local nt, nr
  if #vt > 0 and #vr > 0 then
    nt = math.min(#vt, #vr, n_each)
    nr = nt
  else
    nt, nr = math.min(#vt, n_each), math.min(#vr, n_each)
  end
  local recs, groups, index = {}, {}, {}
  for i = 1, nt do
    recs[#recs + 1], groups[#groups + 1], index[#index + 1] = vt[i], "top", sp.top_index.valid[i]
  end
  for i = 1, nr do
    recs[#recs + 1], groups[#groups + 1], index[#index + 1] = vr[i], "random", sp.random_index.valid[i]
  end
  return recs, groups, index
end

-- The true activations of records, as a list of lists.
function M.acts_of(records)
  local out = {}
  for i, r in ipairs(records) do out[i] = r.acts end
  return out
end

------------------------------------------------------------- explaining

-- The id of an explainer: "baseline/token-lookup@v1",
-- "baseline/ngram2@v1", or "MODEL@explain-v1".
function M.explainer_id(opts)
  local e = opts.explainer or "baseline"
  if e == "baseline" then return baselines.id(1) end
  if e == "ngram" then return baselines.id(opts.ngram or 2) end
  local t = prompts.template(opts.explain_template or "explain", opts.template_dir)
  return string.format("%s@%s-v%d", e, t.id, t.version)
end

-- The explanation phrase in a model's answer: its first non-empty line,
-- without quotes, a final period or a repeat of the sentence it completes.
function M.clean_explanation(text)
  local line = (text or ""):match("^%s*([^\n]*)") or ""
  line = line:gsub("^[Tt]his neuron mainly picks out%s*:?%s*", "")
  line = line:gsub("^%s+", ""):gsub("%s+$", "")
  line = line:gsub('^"(.*)"$', "%1"):gsub("^'(.*)'$", "%1")
  line = line:gsub("%.$", "")
  return line
end

-- The records an explanation is made from: a record set's top-train split,
-- or a plain list of records as given.
local function training_records(x)
  if x.top then return M.split(x).top.train end
  return x
end

-- Explains many record sets (or lists of training records) at once; with a
-- model, the requests go out as one batch. opts:
--   explainer   "baseline" (token lookup, default), "ngram", or a model name
--   client      a lantern.llm client (model explainers)
--   token_str   id -> string; budget, count_tokens (prompt trimming);
--   max_records (20), temperature (0), max_tokens (60), ngram (2), top (5)
-- Returns per item {text=, explainer=, meta=, train_records=, lookup=?} or
-- {error=}.
function M.explain_many(items, opts)
  opts = opts or {}
  local e = opts.explainer or "baseline"
  local out = {}
  local trains = {}
  for i, x in ipairs(items) do trains[i] = training_records(x) end
  if e == "baseline" or e == "ngram" then
    for i, train in ipairs(trains) do
      local ok, res = pcall(baselines.explain, train, {n = e == "ngram" and (opts.ngram or 2) or 1,
                                                      top = opts.top, token_str = opts.token_str})
      if ok then res.train_records = train end
      out[i] = ok and res or {error = tostring(res)}
    end
    return out
  end

  if not opts.client then error("explain: a model explainer needs opts.client", 2) end
  local id = M.explainer_id(opts)
  local reqs, owner, infos = {}, {}, {}
  for i, train in ipairs(trains) do
    local ok, msgs, info = pcall(prompts.explain, train, {
      token_str = opts.token_str, budget = opts.budget, count_tokens = opts.count_tokens,
      max_records = opts.max_records or 20, template = opts.explain_template, template_dir = opts.template_dir})
    if ok then
      reqs[#reqs + 1] = {model = e, messages = msgs, temperature = opts.temperature or 0,
                         max_tokens = opts.max_tokens or 60}
      owner[#reqs], infos[i] = i, info
    else
      out[i] = {error = tostring(msgs)}
    end
  end
  local results = #reqs > 0 and opts.client:chat(reqs) or {}
  for k, res in ipairs(results) do
    local i = owner[k]
    if res.error then
      out[i] = {error = "explaining: " .. res.error}
    else
      local text = M.clean_explanation(res.content)
      if text == "" then
        out[i] = {error = "explaining: the model gave an empty explanation"}
      else
        local info = infos[i]
        out[i] = {text = text, explainer = id, train_records = trains[i],
                  meta = {model = e, template = info.template, template_version = info.template_version,
                          n_records = info.n_records, trimmed = info.trimmed, prompt_tokens = info.prompt_tokens,
                          max_activation = info.max_activation, cached = res.cached}}
      end
    end
  end
  return out
end

-- Explains one record set (or list of training records); raises on error.
function M.explain(record_set, opts)
  local r = M.explain_many({record_set}, opts)[1]
  if r.error then error(r.error, 0) end
  return r
end

------------------------------------------------------ simulating, scoring

M.simulate_many = simulator.simulate_many
M.simulate = simulator.simulate
M.simulator_id = simulator.id

-- score(true_acts, simulated, opts): see lantern.interp.score.
M.score = scoring.score

------------------------------------------------------------ the loop

local function round4(x) return math.floor(x * 1e4 + 0.5) / 1e4 end

-- The whole loop over many record sets: split, explain on top-train,
-- simulate valid top + valid random (opts.n_score each, default 5), score.
-- opts are those of explain_many and simulate_many (explainer, simulator,
-- mode, client, ...). Returns per record set either {explanation=,
-- simulation=, scores=, scored = {{group=, index=, expected=}, ...}} or
-- {error=, stage = "explain" | "simulate" | "score"}.
function M.evaluate_many(record_sets, opts)
  opts = opts or {}
  local out, todo = {}, {}
  local prepared = {}
  for i, rs in ipairs(record_sets) do
    local sp = M.split(rs)
    local recs, groups, index = M.scoring_records(sp, opts.n_score)
    if #sp.top.train == 0 then
      out[i] = {error = "no top records to explain from", stage = "explain"}
    elseif #recs == 0 then
      out[i] = {error = "no held-out (valid) records to score on", stage = "score"}
    else
      prepared[i] = {train = sp.top.train, recs = recs, groups = groups, index = index}
      todo[#todo + 1] = i
    end
  end
  local trains = {}
  for k, i in ipairs(todo) do trains[k] = prepared[i].train end
  local expl = M.explain_many(trains, opts)
  local items, owners = {}, {}
  for k, i in ipairs(todo) do
    if expl[k].error then
      out[i] = {error = expl[k].error, stage = "explain"}
    else
      items[#items + 1] = {explanation = expl[k], records = prepared[i].recs}
      owners[#items] = i
    end
  end
  local sims = simulator.simulate_many(items, opts)
  for k, sim in ipairs(sims) do
    local i = owners[k]
    local p = prepared[i]
    if sim.error then
      out[i] = {error = sim.error, stage = "simulate", explanation = items[k].explanation}
    else
      local ok, s = pcall(scoring.score, M.acts_of(p.recs), sim.expected, {groups = p.groups})
      if not ok then
        out[i] = {error = tostring(s), stage = "score", explanation = items[k].explanation}
      else
        local scored = {}
        for j, vals in ipairs(sim.expected) do
          local r = {}
          for t, v in ipairs(vals) do r[t] = round4(v) end
          scored[j] = {group = p.groups[j], index = p.index[j], expected = json.array(r)}
        end
        out[i] = {explanation = items[k].explanation, simulation = sim, scores = s, scored = scored}
      end
    end
  end
  return out
end

-- One record set through the loop; raises on error.
function M.evaluate(record_set, opts)
  local r = M.evaluate_many({record_set}, opts)[1]
  if r.error then error(r.stage .. ": " .. r.error, 0) end
  return r
end

return M
