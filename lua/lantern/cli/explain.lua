-- lantern explain: the automated-interpretability loop over nodes whose
-- records are in the store: explain, simulate, score, store the results.
local args = require("lantern.cli.args")

local usage = [[
usage: lantern explain --model NAME --nodes SPEC [options]

Explains each node from its top records (the train split), simulates it on
held-out records (valid top and valid random, in equal numbers) from the
explanation alone, scores the simulation, and stores the explanation and the
scores (with the simulated values) in the store. A node that fails is
reported and recorded in the run entry; the others go on.

  --store PATH        the store (default store/lantern.lmdb)
  --model NAME        the model's name in the store
  --nodes SPEC        KIND:LAYER:INDICES, for example mlp:1:0-127,
                      sae:0:3,9,12-15 or attn:2:all; KIND is mlp, attn, sae or a
                      full kind name (mlp_neuron, attn_head, sae_latent)
  --explainer E       baseline (token lookup; the default), ngram, or a model
  --simulator S       baseline, ngram, or a model (default: the explainer's
                      model, or baseline)
  --mode M            model simulator: json (default; no logprobs needed),
                      chat (top logprobs) or all (completions with echo and
                      logprobs: vLLM, llama.cpp)
  --base-url URL      API root (default $OPENAI_BASE_URL, else
                      https://api.openai.com/v1); the key is $OPENAI_API_KEY
  --offline           answer only from the response cache in the store; never
                      connect
  --refresh           ask the server again even when an answer is cached
  --concurrency N     requests in flight (4)
  --timeout S         seconds per request attempt (60)
  --retries N         retries after 429, 5xx and connection errors (5)
  --n-score N         valid top and valid random records scored, each (5)
  --budget T          prompt budget in approximate tokens (6000)
  --top-logprobs K    top logprobs asked for in chat / all modes (20 / 15)
  --tokenizer DIR     vocab.json + merges.txt giving the token strings
                      (default: the model's directory, when known)
  --batch N           nodes per batch of requests (16)

Details: docs/interp.md.]]

local M = {summary = "explain, simulate and score nodes (automated interpretability)", usage = usage}

local KINDS = {mlp = "mlp_neuron", attn = "attn_head", sae = "sae_latent"}

-- Parses "KIND:LAYER:INDICES" into {kind=, layer=, indices = {...} | "all"}.
function M.parse_nodes(spec)
  local kind, layer, list = (spec or ""):match("^([%w_]+):(%d+):(.+)$")
  if not kind then
    error("--nodes expects KIND:LAYER:INDICES (for example mlp:1:0-127), got '" .. tostring(spec) .. "'", 0)
  end
  kind = KINDS[kind] or kind
  local sel = {kind = kind, layer = tonumber(layer)}
  if list == "all" or list == "*" then
    sel.indices = "all"
    return sel
  end
  sel.indices = {}
  for part in list:gmatch("[^,]+") do
    local a, b = part:match("^(%d+)%-(%d+)$")
    if a then
      a, b = tonumber(a), tonumber(b)
      if b < a then error("--nodes: empty range " .. part, 0) end
      for i = a, b do sel.indices[#sel.indices + 1] = i end
    elseif part:match("^%d+$") then
      sel.indices[#sel.indices + 1] = tonumber(part)
    else
      error("--nodes: bad index '" .. part .. "' (expected N, A-B or all)", 0)
    end
  end
  return sel
end

local exists = require("lantern.files").exists

-- A tokenizer for a model's token strings: dir when given, else the
-- directory the store's model entry names, else store/models/NAME; nil
-- when none is found.
function M.find_tokenizer(st, model, dir)
  local T = require("lantern.tokenizer")
  if dir then return T.load(dir) end
  local candidates = {}
  local ok, entry = pcall(st.get_json, st, "models", "model/" .. model)
  if ok and type(entry) == "table" then
    for _, f in ipairs{"tokenizer", "dir", "path"} do
      if type(entry[f]) == "string" then candidates[#candidates + 1] = entry[f] end
    end
  end
  candidates[#candidates + 1] = require("lantern.ffi").root .. "/store/models/" .. model
  for _, d in ipairs(candidates) do
    if exists(d .. "/vocab.json") and exists(d .. "/merges.txt") then return T.load(d) end
  end
  return nil
end

-- id -> token text, memoised.
function M.token_str_of(tok)
  if not tok then return nil end
  local memo = {}
  return function(id)
    local s = memo[id]
    if not s then
      local ok, text = pcall(tok.token_text, tok, id)
      s = ok and text or ("[" .. tostring(id) .. "]")
      memo[id] = s
    end
    return s
  end
end

-- A one-line progress bar on stderr (only on a terminal).
function M.progress(label, total)
  local ffi = require("ffi")
  pcall(ffi.cdef, "int isatty(int fd);")
  local tty = ffi.C.isatty(2) == 1
  local t0 = os.time()
  return function(done, errors, final)
    if not tty then return end
    local width = 30
    local fill = total > 0 and math.floor(width * done / total) or width
    io.stderr:write(string.format("\r%s [%s%s] %d/%d nodes, %d error%s, %d s", label, string.rep("=", fill),
                                  string.rep(" ", width - fill), done, total, errors, errors == 1 and "" or "s",
                                  os.time() - t0))
    if final then io.stderr:write("\n") end
    io.stderr:flush()
  end
end

local function node_name(n)
  return string.format("%s %d:%d", n.kind, n.layer, n.index)
end

function M.run(argv)
  local opts = args.parse(argv, {
    store = "string", model = "string", nodes = "string", explainer = "string", simulator = "string",
    mode = "string", ["base-url"] = "string", offline = "boolean", refresh = "boolean",
    concurrency = "number", timeout = "number", retries = "number", ["n-score"] = "number",
    budget = "number", ["top-logprobs"] = "number", tokenizer = "string", batch = "number",
  })
  if not opts.model then error("--model is required\n" .. usage, 0) end
  if not opts.nodes then error("--nodes is required\n" .. usage, 0) end
  local sel = M.parse_nodes(opts.nodes)
  local explainer = opts.explainer or "baseline"
  local is_baseline = function(x) return x == "baseline" or x == "ngram" end
  local simulator = opts.simulator or (is_baseline(explainer) and "baseline" or explainer)
  local mode = opts.mode or "json"
  if not require("lantern.interp.simulate").MODES[mode] then
    error("--mode must be json, chat or all", 0)
  end

  local lt_store = require("lantern.store")
  local interp = require("lantern.interp")
  local json = require("lantern.json")
  local st = lt_store.open(opts.store)

  local nodes = {}
  if sel.indices == "all" then
    for n in st:nodes{model = opts.model, kind = sel.kind, layer = sel.layer} do nodes[#nodes + 1] = n end
    if #nodes == 0 then
      error(string.format("no %s records of layer %d of model %s in %s", sel.kind, sel.layer, opts.model, st.path), 0)
    end
  else
    for _, i in ipairs(sel.indices) do
      nodes[#nodes + 1] = {model = opts.model, kind = sel.kind, layer = sel.layer, index = i}
    end
  end

  local uses_model = not is_baseline(explainer) or not is_baseline(simulator)
  local tok = M.find_tokenizer(st, opts.model, opts.tokenizer)
  if uses_model and not tok then
    error("a model explainer or simulator needs the token strings: pass --tokenizer DIR " ..
          "(a directory with vocab.json and merges.txt)", 0)
  end
  local client
  if uses_model then
    client = require("lantern.llm").client{
      base_url = opts["base-url"], store = st, offline = opts.offline, refresh = opts.refresh,
      concurrency = opts.concurrency, timeout = opts.timeout, max_retries = opts.retries,
    }
  end

  local iopts = {
    explainer = explainer, simulator = simulator, mode = mode, client = client,
    token_str = M.token_str_of(tok), budget = opts.budget, n_score = opts["n-score"],
    top_logprobs = opts["top-logprobs"],
  }
  local explainer_id = interp.explainer_id(iopts)
  local simulator_id = interp.simulator_id(iopts)

  local ffi = require("ffi")
  pcall(ffi.cdef, "int getpid(void);")
  local run_id = string.format("explain-%s-%d", os.date("!%Y%m%dT%H%M%SZ"), ffi.C.getpid())
  local started = os.date("!%Y-%m-%dT%H:%M:%SZ")
  local errors, n_ok, sum, n_defined = {}, 0, 0, 0
  local bar = M.progress("explain", #nodes)
  bar(0, 0)

  local batch = math.max(1, opts.batch or 16)
  for first = 1, #nodes, batch do
    local chunk, sets = {}, {}
    for k = first, math.min(#nodes, first + batch - 1) do
      local n = nodes[k]
      local ok, rs = pcall(st.record, st, n)
      if not ok then
        errors[#errors + 1] = {node = n, stage = "records", error = tostring(rs)}
      elseif not rs then
        errors[#errors + 1] = {node = n, stage = "records", error = "no records in the store"}
      else
        chunk[#chunk + 1] = n
        sets[#sets + 1] = rs
      end
    end
    local results = interp.evaluate_many(sets, iopts)
    st:batch(function()
      for k, res in ipairs(results) do
        local n = chunk[k]
        local e = res.explanation
        if e then
          local meta = {}
          for key, v in pairs(e.meta or {}) do meta[key] = v end
          meta.run = run_id
          st:put_explanation{model = n.model, kind = n.kind, layer = n.layer, index = n.index,
                             explainer = e.explainer, text = e.text, meta = meta}
        end
        if res.error then
          errors[#errors + 1] = {node = n, stage = res.stage, error = res.error}
        else
          local sim = res.simulation
          st:put_score{model = n.model, kind = n.kind, layer = n.layer, index = n.index,
                       explainer = e.explainer, simulator = sim.simulator, scores = res.scores,
                       meta = {run = run_id, simulation = sim.meta, records = res.scored}}
          n_ok = n_ok + 1
          local ev = res.scores.ev_correlation_score
          if type(ev) == "number" then sum, n_defined = sum + ev, n_defined + 1 end
        end
      end
    end)
    bar(math.min(#nodes, first + batch - 1), #errors)
  end
  bar(#nodes, #errors, true)

  local err_list = json.array()
  for _, e in ipairs(errors) do
    err_list[#err_list + 1] = {node = string.format("%s/%d/%d", e.node.kind, e.node.layer, e.node.index),
                               stage = e.stage, error = e.error}
  end
  st:put_json("runs", "run/" .. run_id, {
    v = 1, command = "explain", started_utc = started, finished_utc = os.date("!%Y-%m-%dT%H:%M:%SZ"),
    model = opts.model, nodes = opts.nodes, explainer = explainer_id, simulator = simulator_id,
    n_nodes = #nodes, n_scored = n_ok, errors = err_list,
    llm = client and {requests = client.stats.requests, network = client.stats.network,
                      cache_hits = client.stats.cache_hits, errors = client.stats.errors} or nil,
  })
  st:close()

  for _, e in ipairs(errors) do
    io.stderr:write(string.format("%s: %s: %s\n", node_name(e.node), e.stage, e.error))
  end
  print(string.format("explainer %s, simulator %s", explainer_id, simulator_id))
  print(string.format("%d of %d nodes scored, %d failed; mean ev_correlation_score %s over %d nodes " ..
                      "with a defined score", n_ok, #nodes, #errors,
                      n_defined > 0 and string.format("%.3f", sum / n_defined) or "undefined", n_defined))
  if client then
    print(string.format("LLM requests: %d (%d sent, %d from the cache, %d failed)", client.stats.requests,
                        client.stats.network, client.stats.cache_hits, client.stats.errors))
  end
  print("run recorded as run/" .. run_id)
  return #errors > 0 and 1 or 0
end

return M
