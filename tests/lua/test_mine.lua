-- test_mine.lua: the miner from Lua and the CLI on the tiny GPT-2 fixture
-- with random token windows: top windows and moments against run_with_cache
-- per window (MLP neurons, and the latents of two random SAEs), SIGKILL
-- mid-run then --resume giving the bytes of an uninterrupted run (also
-- with SAE latents), readers seeing whole commits while the miner writes,
-- `show`, text data, option errors.
local check = require("check")
local lt = require("lantern")
local store = require("lantern.store")
local mine = require("lantern.mine")

local root = os.getenv("LANTERN_ROOT") or "."
local MODEL = root .. "/tests/fixtures/hf-gpt2-tiny2"
local TOKDIR = root .. "/tests/fixtures/gpt2-tokenizer"
local CLI = root .. "/scripts/lantern"

local tmp = os.tmpname()   -- a file; the test's files go in <tmp>.d/
os.remove(tmp)
local dir = tmp .. ".d"
os.execute("mkdir -p " .. dir)
local function path(name) return dir .. "/" .. name end

local NW, T = 24, 8
local function random_ids(n, seed)
  local s, ids = seed, {}
  for i = 1, n do
    s = (s * 1103515245 + 12345) % 2147483648
    ids[i] = s % 50257
  end
  return ids
end

-- A .tokens file (little-endian int32) of the given ids.
local function write_tokens(file, ids)
  local f = assert(io.open(file, "wb"))
  for _, v in ipairs(ids) do
    f:write(string.char(v % 256, math.floor(v / 256) % 256, math.floor(v / 65536) % 256, 0))
  end
  f:close()
end

local IDS = random_ids(NW * T + 5, 7)   -- a trailing partial window is dropped
local DATA = path("data.tokens")
write_tokens(DATA, IDS)

local function sh(cmd)
  local ok = os.execute(cmd)
  return ok == 0 or ok == true
end

local function read(file)
  local f = io.open(file, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

-- Every (key, value) of db as one string, for byte comparisons.
local function dump(store_path, db, prefix)
  local st = store.open(store_path, {readonly = true})
  local parts = {}
  for k, v in st:iter(db, prefix or "") do parts[#parts + 1] = k .. "\0" .. v end
  st:close()
  return table.concat(parts, "\1"), #parts
end

-- Checks a node's stored record against a brute-force computation over
-- per[w] (the node's activations in window w, for every window): the top 5
-- windows by maximum (ties to the earlier window) with their activations
-- and tokens, the count and the moments. act_tol(a) is the tolerance of a
-- stored activation a. A node that never varies (only allowed when
-- may_be_constant) must report NaN skewness and kurtosis. Returns whether
-- the node varied.
local function check_record(rec, per, where, act_tol, may_be_constant)
  local ranked, sum, count = {}, 0, 0
  for w = 0, NW - 1 do
    local mx = -math.huge
    for _, a in ipairs(per[w]) do
      if a > mx then mx = a end
      sum = sum + a
      count = count + 1
    end
    ranked[#ranked + 1] = {w = w, max = mx}
  end
  table.sort(ranked, function(a, b) if a.max ~= b.max then return a.max > b.max end return a.w < b.w end)
  local mean = sum / count
  local m2, m3, m4 = 0, 0, 0
  for w = 0, NW - 1 do
    for _, a in ipairs(per[w]) do
      local d = a - mean
      m2, m3, m4 = m2 + d * d, m3 + d ^ 3, m4 + d ^ 4
    end
  end
  check.truthy(rec, where .. " stored")
  check.eq(#rec.top, 5, where .. " top count")
  for k = 1, 5 do
    check.eq(rec.top[k].window, ranked[k].w, where .. " top " .. k .. " window")
    check.eq(rec.top[k].extra, nil, where .. " no extra array")
    for t = 1, T do
      local a = per[ranked[k].w][t]
      check.near(rec.top[k].acts[t], a, act_tol(a), where .. " act")
      check.eq(rec.top[k].tokens[t], IDS[ranked[k].w * T + t], where .. " token")
    end
  end
  check.eq(rec.count, count, where .. " count")
  local var = m2 / count
  check.near(rec.mean, mean, 1e-5 * (math.abs(mean) + math.sqrt(var)), where .. " mean")
  check.near(rec.variance, var, 1e-5 * var, where .. " variance")
  check.eq(#rec.random, 4, where .. " random")
  check.eq(#rec.quantiles, 4, where .. " bins")
  if m2 == 0 and may_be_constant then   -- never varied: no shape
    check.truthy(rec.skewness ~= rec.skewness and rec.kurtosis ~= rec.kurtosis, where .. " NaN shape")
    return false
  end
  local skew, kurt = math.sqrt(count) * m3 / m2 ^ 1.5, count * m4 / (m2 * m2) - 3
  check.near(rec.skewness, skew, 1e-5 * (1 + math.abs(skew)), where .. " skewness")
  check.near(rec.kurtosis, kurt, 1e-5 * (1 + math.abs(kurt)), where .. " kurtosis")
  return true
end

local tests = {}

function tests.brute_force_top_and_moments()
  local m = lt.load(MODEL)
  local sp = path("brute")
  local res = mine.run{model = m, data = DATA, window = T, top = 5, random = 4, per_bin = 2, kinds = "mlp,attn",
                       store = sp, batch = 3}
  check.eq(res.windows, NW, "windows mined")
  check.eq(res.nodes, 2 * (256 + 4), "nodes")
  -- brute force: every window on its own
  local L, Mn = m.cfg.n_layer, m.cfg.d_mlp
  local acts = {}   -- acts[l][n] = {window -> {T values}}
  for l = 0, L - 1 do
    acts[l] = {}
    for n = 0, Mn - 1 do acts[l][n] = {} end
  end
  local names = {}
  for l = 0, L - 1 do names[#names + 1] = "blocks." .. l .. ".mlp.hook_post" end
  for w = 0, NW - 1 do
    local ids = {}
    for t = 1, T do ids[t] = IDS[w * T + t] end
    local _, cache = m:run_with_cache(ids, {names = names})
    for l = 0, L - 1 do
      local post = cache["blocks." .. l .. ".mlp.hook_post"]
      for n = 0, Mn - 1 do
        local v = {}
        for t = 0, T - 1 do v[t + 1] = post.data[t * Mn + n] end
        acts[l][n][w] = v
      end
    end
  end
  local st = store.open(sp, {readonly = true})
  for l = 0, L - 1 do
    for n = 0, Mn - 1 do
      local rec = st:record{model = "hf-gpt2-tiny2", kind = "mlp_neuron", layer = l, index = n}
      check_record(rec, acts[l][n], string.format("L%d/N%d", l, n), function() return 1e-4 end)
    end
  end
  -- attention heads carry the attended-to position of each query
  local head = st:record{model = "hf-gpt2-tiny2", kind = "attn_head", layer = 1, index = 2}
  check.eq(#head.top, 5, "head top")
  for q = 1, T do check.truthy(head.top[1].extra[q] >= 0 and head.top[1].extra[q] < q, "attended key <= query") end
  local info = mine.run_info(st, "hf-gpt2-tiny2")
  check.eq(info.complete, true, "info complete")
  check.eq(info.windows, NW, "info windows")
  st:close()
end

-- Two random SAELens directories: a TopK SAE on layer 0's MLP output and a
-- ReLU SAE on layer 1's residual stream (seed varies the weights).
local SAE_SPECS = {
  {dir = "sae0", hook = "blocks.0.mlp.hook_post", d_in = 256, d_sae = 48, architecture = "topk", k = 8, layer = 0},
  {dir = "sae1", hook = "blocks.1.hook_resid_pre", d_in = 64, d_sae = 32, architecture = "standard", layer = 1},
}
local function make_saes(seed, suffix)
  local dirs = {}
  for i, sp in ipairs(SAE_SPECS) do
    local sae = lt.sae.new{d_in = sp.d_in, d_sae = sp.d_sae, architecture = sp.architecture, k = sp.k,
                           hook_name = sp.hook, seed = seed + i}
    local b = sae:param("b_enc")
    for j = 0, b.numel - 1 do b.data[j] = 0.01 * (j % 3) end   -- so that the ReLU latents fire often
    dirs[i] = path(sp.dir .. (suffix or ""))
    sae:save(dirs[i])
  end
  return dirs
end

function tests.sae_latents_brute_force()
  local dirs = make_saes(20)
  local sp = path("sae_brute")
  local res = mine.run{model = MODEL, data = DATA, window = T, top = 5, random = 4, per_bin = 2, kinds = "mlp,sae",
                       saes = dirs, store = sp, batch = 3}
  check.eq(res.nodes, 2 * 256 + 48 + 32, "nodes: neurons and latents")
  check.eq(#res.saes, 2, "SAEs mined")
  check.eq(res.saes[2].hook, "blocks.1.hook_resid_pre", "second SAE")
  -- brute force: the latents of each window on its own, from the spliced
  -- run's hook_sae_acts_post (SAEs loaded again from their directories)
  local m = lt.load(MODEL)
  local names = {}
  for i, spec in ipairs(SAE_SPECS) do
    m:attach_sae(lt.sae.load(dirs[i]))
    names[i] = spec.hook .. ".hook_sae_acts_post"
  end
  local acts = {}   -- acts[i][latent][window] = {T values}
  for i, spec in ipairs(SAE_SPECS) do
    acts[i] = {}
    for l = 0, spec.d_sae - 1 do acts[i][l] = {} end
  end
  for w = 0, NW - 1 do
    local ids = {}
    for t = 1, T do ids[t] = IDS[w * T + t] end
    local _, cache = m:run_with_cache(ids, {names = names})
    for i, spec in ipairs(SAE_SPECS) do
      local z = cache[names[i]]
      for l = 0, spec.d_sae - 1 do
        local v = {}
        for t = 0, T - 1 do v[t + 1] = z.data[t * spec.d_sae + l] end
        acts[i][l][w] = v
      end
    end
  end
  local st = store.open(sp, {readonly = true})
  local fired, latents = 0, 0
  for i, spec in ipairs(SAE_SPECS) do
    for l = 0, spec.d_sae - 1 do
      local rec = st:record{model = "hf-gpt2-tiny2", kind = "sae_latent", layer = spec.layer, index = l}
      local varied = check_record(rec, acts[i][l], string.format("L%d/F%d", spec.layer, l),
                                  function(a) return 1e-4 * (1 + math.abs(a)) end, true)
      if varied then fired = fired + 1 end
      latents = latents + 1
    end
  end
  check.truthy(fired >= latents * 3 / 4, string.format("only %d of %d latents fired", fired, latents))
  check.eq(st:record{model = "hf-gpt2-tiny2", kind = "sae_latent", layer = 1, index = 32}, nil, "no latent 32")
  local info = mine.run_info(st, "hf-gpt2-tiny2")
  check.eq(info.kinds, "mlp,sae", "info kinds")
  check.eq(#info.saes, 2, "info SAEs")
  check.eq(info.saes[1].dir, dirs[1], "info SAE directory")
  st:close()
end

local function cli(args, env)
  return string.format("%s LANTERN_LIB=%s %s %s", env or "", os.getenv("LANTERN_LIB") or "", CLI, args)
end

local MINE_ARGS = string.format("mine --model %s --data %s --window %d --top 4 --kinds mlp,attn --batch 2 --commit-every 4",
                                MODEL, DATA, T)

function tests.sigkill_then_resume_matches_uninterrupted()
  local full, killed = path("full"), path("killed")
  check.truthy(sh(cli(MINE_ARGS .. " --store " .. full .. " 2>" .. path("full.log"))), "uninterrupted run")
  -- the second run pauses after 3 commits (12 windows) and is killed there
  local log, pidfile = path("killed.log"), path("killed.pid")
  check.truthy(sh(cli(MINE_ARGS .. " --store " .. killed .. " 2>" .. log .. " & echo $! > " .. pidfile,
                      "LANTERN_MINE_PAUSE_AFTER=3")), "background run")
  local paused = false
  for _ = 1, 400 do
    if (read(log) or ""):find("paused after 3 commits", 1, true) then paused = true break end
    sh("sleep 0.05")
  end
  local pid = (read(pidfile) or ""):match("%d+")
  check.truthy(paused and pid, "the run paused: " .. tostring(read(log)))
  sh("kill -9 " .. pid)
  sh("sleep 0.2")
  local st = store.open(killed, {readonly = true})
  local info = mine.run_info(st, "hf-gpt2-tiny2")
  check.eq(info.windows, 12, "windows committed before the kill")
  check.eq(info.complete, false, "not complete")
  check.eq(st:record{model = "hf-gpt2-tiny2", kind = "mlp_neuron", layer = 0, index = 0}.count, 12 * T, "record count")
  st:close()
  check.truthy(sh(cli(MINE_ARGS .. " --store " .. killed .. " --resume 2>" .. log)), "resume: " .. tostring(read(log)))
  check.truthy((read(log) or ""):find("24 windows (12 new)", 1, true), "summary: " .. tostring(read(log)))
  local a, na = dump(full, "records")
  local b, nb = dump(killed, "records")
  check.eq(nb, na, "record count")
  check.truthy(a == b, "records byte for byte")
  check.eq(na, 2 * (256 + 4), "every node stored")
  -- the miner state too (info differs only in nothing: same options)
  check.truthy(dump(full, "runs") == dump(killed, "runs"), "miner state byte for byte")
  -- resuming a complete run does nothing; other options are refused
  check.truthy(sh(cli(MINE_ARGS .. " --store " .. killed .. " --resume 2>" .. log)), "resume complete")
  check.truthy(not sh(cli(MINE_ARGS .. " --top 5 --store " .. killed .. " --resume 2>" .. log)), "other options")
  check.truthy((read(log) or ""):find("top is 4 in the run being resumed", 1, true), tostring(read(log)))
  check.truthy(not sh(cli(MINE_ARGS .. " --store " .. path("none") .. " --resume 2>" .. log)), "nothing to resume")
  check.truthy((read(log) or ""):find("nothing to resume", 1, true), tostring(read(log)))
end

function tests.sae_sigkill_then_resume_matches_uninterrupted()
  local dirs = make_saes(40, "_cli")
  local args = string.format("mine --model %s --data %s --window %d --top 4 --kinds mlp,attn,sae --batch 2 "
                             .. "--commit-every 4", MODEL, DATA, T)
  local with_saes = args .. " --sae " .. dirs[1] .. " --sae " .. dirs[2]
  local full, killed = path("sae_full"), path("sae_killed")
  local log, pidfile = path("sae_killed.log"), path("sae_killed.pid")
  check.truthy(sh(cli(args .. " --sae " .. dirs[1] .. "," .. dirs[2] .. " --store " .. full .. " 2>" .. log)),
               "uninterrupted run: " .. tostring(read(log)))
  check.truthy((read(log) or ""):find("SAE latents: 48 of blocks.0.mlp.hook_post, 32 of blocks.1.hook_resid_pre", 1, true),
               "summary names the SAEs: " .. tostring(read(log)))
  check.truthy(sh(cli(with_saes .. " --store " .. killed .. " 2>" .. log .. " & echo $! > " .. pidfile,
                      "LANTERN_MINE_PAUSE_AFTER=3")), "background run")
  local paused = false
  for _ = 1, 400 do
    if (read(log) or ""):find("paused after 3 commits", 1, true) then paused = true break end
    sh("sleep 0.05")
  end
  local pid = (read(pidfile) or ""):match("%d+")
  check.truthy(paused and pid, "the run paused: " .. tostring(read(log)))
  sh("kill -9 " .. pid)
  sh("sleep 0.2")
  local st = store.open(killed, {readonly = true})
  check.eq(st:record{model = "hf-gpt2-tiny2", kind = "sae_latent", layer = 1, index = 3}.count, 12 * T, "latent count")
  st:close()
  -- another SAE at the same hook point with the same width: refused by the
  -- state's fingerprint of the weights
  local other = make_saes(77, "_other")
  check.truthy(not sh(cli(args .. " --sae " .. dirs[1] .. "," .. other[2] .. " --store " .. killed .. " --resume 2>" .. log)),
               "other SAE weights")
  check.truthy((read(log) or ""):find("was made with other SAEs", 1, true), tostring(read(log)))
  -- an SAE missing: refused before the miner starts
  check.truthy(not sh(cli(args .. " --sae " .. dirs[1] .. " --store " .. killed .. " --resume 2>" .. log)),
               "a missing SAE")
  check.truthy((read(log) or ""):find("the run being resumed mined the SAEs", 1, true), tostring(read(log)))
  -- without --sae the resume loads the run's SAEs
  check.truthy(sh(cli(args .. " --store " .. killed .. " --resume 2>" .. log)), "resume: " .. tostring(read(log)))
  check.truthy((read(log) or ""):find("24 windows (12 new)", 1, true), "summary: " .. tostring(read(log)))
  local a, na = dump(full, "records")
  local b, nb = dump(killed, "records")
  check.eq(na, 2 * (256 + 4) + 48 + 32, "every node stored")
  check.eq(nb, na, "record count")
  check.truthy(a == b, "records byte for byte")
  check.truthy(dump(full, "runs") == dump(killed, "runs"), "miner state byte for byte")
  -- show finds a latent
  local out = path("show_sae.txt")
  check.truthy(sh(cli("show sae 1:3 --top 2 --store " .. full .. " >" .. out .. " 2>&1")), "show: " .. tostring(read(out)))
  check.truthy((read(out) or ""):find("hf-gpt2-tiny2 L1/F3 (sae_latent)", 1, true), tostring(read(out)))
  check.truthy((read(out) or ""):find("top records (2 of 4)", 1, true), tostring(read(out)))
end

function tests.reader_sees_whole_commits()
  local sp = path("live")
  local big = path("big.tokens")
  write_tokens(big, random_ids(48 * T, 11))
  local done = path("live.done")
  check.truthy(sh("(" .. cli(string.format("mine --model %s --data %s --window %d --top 4 --layers 1 --batch 1 --commit-every 1 --store %s",
                                          MODEL, big, T, sp)) .. " 2>/dev/null; touch " .. done .. ") &"), "start")
  local snapshots, mid = 0, 0
  for _ = 1, 2000 do
    local finished = read(done) ~= nil
    local ok, st = pcall(store.open, sp, {readonly = true})
    if ok then
      -- one iterator is one snapshot: every record must come from one commit
      local counts, n = {}, 0
      for _, v in st:iter("records", "rec/") do
        -- count: the u64 at offset 56 of the value (docs/store.md)
        local count = 0
        for i = 4, 1, -1 do count = count * 256 + v:byte(56 + i) end
        counts[count] = true
        n = n + 1
      end
      st:close()
      local distinct = 0
      for c in pairs(counts) do
        distinct = distinct + 1
        if c > 0 and c < 48 * T then mid = mid + 1 end
      end
      check.truthy(distinct <= 1, "a snapshot mixes records of different commits")
      if n > 0 then snapshots = snapshots + 1 end
    end
    if finished then break end
    sh("sleep 0.01")
  end
  check.truthy(read(done) ~= nil, "the miner finished")
  check.truthy(snapshots >= 2 and mid >= 1, string.format("snapshots %d, mid-run %d", snapshots, mid))
end

function tests.show_prints_the_record()
  local sp = path("brute")   -- from the brute-force test
  local out = path("show.txt")
  check.truthy(sh(cli("show mlp 1:7 --top 2 --store " .. sp .. " --tokenizer " .. TOKDIR .. " >" .. out .. " 2>&1")),
               "show: " .. tostring(read(out)))
  local text = read(out)
  check.truthy(text:find("hf-gpt2-tiny2 L1/N7 (mlp_neuron)", 1, true), text)
  check.truthy(text:find("top records (2 of 5)", 1, true), text)
  check.truthy(text:find("mean ", 1, true) and text:find("kurtosis", 1, true), text)
  -- the top token of the top record is bracketed with its activation
  local st = store.open(sp, {readonly = true})
  local rec = st:record{model = "hf-gpt2-tiny2", kind = "mlp_neuron", layer = 1, index = 7}
  local best, at = -math.huge, 1
  for t, a in ipairs(rec.top[1].acts) do if a > best then best, at = a, t end end
  local tok = lt.tokenizer(TOKDIR):token_text(rec.top[1].tokens[at])
  -- explanations and scores are shown when present
  st:close()
  local w = store.open(sp)
  w:put_explanation{model = "hf-gpt2-tiny2", kind = "mlp_neuron", layer = 1, index = 7, explainer = "test",
                    text = "random tokens"}
  w:put_score{model = "hf-gpt2-tiny2", kind = "mlp_neuron", layer = 1, index = 7, explainer = "test",
              simulator = "sim", scores = {ev_correlation_score = 0.25}}
  w:close()
  check.truthy(sh(cli("show mlp 1:7 --store " .. sp .. " --tokenizer " .. TOKDIR .. " >" .. out .. " 2>&1")), "show")
  text = read(out)
  check.truthy(text:find("«" .. tok .. "|" .. string.format("%.3g", best), 1, true), "highlighted token: " .. text)
  check.truthy(text:find("explanation (test): random tokens", 1, true), text)
  check.truthy(text:find("ev_correlation_score 0.25", 1, true), text)
  check.truthy(not sh(cli("show mlp 1:9999 --store " .. sp .. " >" .. out .. " 2>&1")), "absent node")
  check.truthy(read(out):find("no model", 1, true), read(out))
end

function tests.text_data_and_uint16_tokens()
  local tok = lt.tokenizer(TOKDIR)
  local text = string.rep("The quick brown fox jumps over the lazy dog. ", 30)
  local f = assert(io.open(path("corpus.txt"), "wb"))
  f:write(text)
  f:close()
  local m = lt.load(MODEL, {tokenizer = TOKDIR})
  local res = mine.run{model = m, data = path("corpus.txt"), window = 16, top = 3, store = path("text"), layers = "1"}
  check.eq(res.windows, math.floor(#tok:encode(text) / 16), "windows of the text")
  local st = store.open(path("text"), {readonly = true})
  local rec = st:record{model = "hf-gpt2-tiny2", kind = "mlp_neuron", layer = 1, index = 0}
  check.truthy(rec and #rec.top == 3, "text records")
  check.eq(st:record{model = "hf-gpt2-tiny2", kind = "mlp_neuron", layer = 0, index = 0}, nil, "layer 0 not mined")
  check.eq(st:get_json("models", "model/hf-gpt2-tiny2").tokenizer, TOKDIR, "tokenizer recorded")
  st:close()
  -- the same ids as uint16 (.bin) and as int32 (.tokens) give the same records
  local ids = random_ids(12 * T, 3)
  write_tokens(path("w.tokens"), ids)
  f = assert(io.open(path("w.bin"), "wb"))
  for _, v in ipairs(ids) do f:write(string.char(v % 256, math.floor(v / 256))) end
  f:close()
  mine.run{model = m, data = path("w.tokens"), window = T, top = 2, store = path("w32"), name = "w"}
  mine.run{model = m, data = path("w.bin"), window = T, top = 2, store = path("w16"), name = "w"}
  check.truthy(dump(path("w32"), "records") == dump(path("w16"), "records"), "uint16 and int32 files agree")
end

function tests.option_errors()
  local m = lt.load(MODEL)
  local f = assert(io.open(path("plain.txt"), "wb"))
  f:write("some text\n")
  f:close()
  check.raises(function() mine.run{model = m, data = DATA, kinds = "sae", store = path("e")} end, "SAE latents")
  local dirs = make_saes(60, "_err")
  check.raises(function() mine.run{model = MODEL, data = DATA, saes = dirs, store = path("e")} end,
               "the kinds mlp have no sae")
  check.raises(function() mine.run{model = MODEL, data = DATA, kinds = "sae", saes = dirs, layers = "0", store = path("e")} end,
               "reads blocks.1.hook_resid_pre (layer 1), outside layers 0-0")
  -- two SAEs in one layer would share the keys sae_latent/1/I
  local twin = lt.sae.new{d_in = 64, d_sae = 8, hook_name = "blocks.1.hook_resid_post", seed = 1}
  check.raises(function() mine.run{model = MODEL, data = DATA, kinds = "sae", saes = {dirs[2], twin}, store = path("e")} end,
               "two attached SAEs are in layer 1")
  -- an SAE attached to the Model outside the layers is not mined; none in range is an error
  local m2 = lt.load(MODEL)
  m2:attach_sae(lt.sae.load(dirs[2]))
  check.raises(function() mine.run{model = m2, data = DATA, kinds = "sae", layers = "0", store = path("e")} end,
               "none of the attached SAEs is in layers 0-0")
  check.raises(function() mine.run{model = m, data = DATA, kinds = "mlp,foo", store = path("e")} end, "unknown kind")
  check.raises(function() mine.run{model = m, data = DATA, layers = "0-5", store = path("e")} end, "outside the model")
  check.raises(function() mine.run{model = m, data = path("missing.txt"), store = path("e")} end, "cannot open")
  check.raises(function() mine.run{model = m, data = path("plain.txt"), store = path("e")} end, "needs a tokenizer")
end

function tests.zz_cleanup()
  assert(dir:match("^/tmp/"), "unexpected temporary path " .. dir)
  os.execute("rm -rf " .. dir)
end

return tests
