-- SAE training from Lua (lt.sae.train), the metrics (sae:evaluate) against
-- direct computations, save-then-load after training, and sae_latent rows
-- of the node table against an independent recomputation. The recovery of
-- planted features and the backward against finite differences are in
-- tests/c/test_sae_train.c.
local lt = require("lantern")
local check = require("check")
local metrics = require("lantern.metrics")

local MODEL, TOK = "tests/fixtures/hf-gpt2-tiny2", "tests/fixtures/gpt2-tokenizer"
local HOOK = "blocks.1.mlp.hook_post"

local T = {}

local function model() return lt.load(MODEL, {tokenizer = TOK}) end

-- Deterministic token windows [n][len] in the fixture's vocabulary.
local function windows(n, len, seed)
  local s, out = seed or 7, {}
  for w = 1, n do
    local row = {}
    for t = 1, len do
      s = (s * 1103515245 + 12345) % 2147483648
      row[t] = s % 5000
    end
    out[w] = row
  end
  return out
end

local function params_equal(a, b)
  for _, name in ipairs({"W_enc", "b_enc", "W_dec", "b_dec"}) do
    if a:param(name):max_abs_diff(b:param(name)) ~= 0 then return false, name end
  end
  return true
end

function T.train_then_save_and_load_exactly()
  local m = model()
  local data = {ids = windows(24, 32)}
  local opts = {hook = HOOK, d_sae = 256, k = 8, tokens = 24 * 32, T = 32, batch = 128, buffer_tokens = 256,
    data = data, progress = false, evaluate = false, seed = 3}
  local sae, rep = lt.sae.train(m, opts)
  check.eq(sae.hook_name, HOOK, "hook name set")
  check.eq(rep.steps, 6, "one step per batch of 128 tokens")
  check.truthy(rep.stats.explained_variance == rep.stats.explained_variance, "stats are numbers")
  -- the same seed gives the same SAE
  local again = lt.sae.train(m, opts)
  check.truthy(params_equal(sae, again), "deterministic for a seed")
  local dir = os.tmpname()
  os.remove(dir)
  sae:save(dir)
  local back = lt.sae.load(dir)
  local same, which = params_equal(sae, back)
  check.truthy(same, "save then load is exact (" .. tostring(which) .. ")")
  check.eq(back.hook_name, HOOK, "hook name kept")
  check.eq(back.k, 8, "k kept")
  os.execute("rm -rf '" .. dir .. "'")
end

-- log softmax of row r of logits [.., V], as a function of the index
local function logprobs(logits, r, V)
  local mx = -math.huge
  for j = 0, V - 1 do mx = math.max(mx, logits.data[r * V + j]) end
  local s = 0
  for j = 0, V - 1 do s = s + math.exp(logits.data[r * V + j] - mx) end
  local lz = mx + math.log(s)
  return function(i) return logits.data[r * V + i] - lz end
end

function T.metrics_match_direct_computation()
  local m = model()
  local sae = lt.sae.new{d_in = 256, d_sae = 64, architecture = "topk", k = 4, hook_name = HOOK, seed = 5}
  local b = sae:param("b_enc")
  for i = 0, 63 do b.data[i] = i < 3 and -1e3 or 0.05 end   -- latents 0..2 never fire
  local len, n = 12, 3
  local wins = windows(n, len, 11)
  local r = sae:evaluate(m, {ids = wins}, {tokens = n * len, T = len})
  -- direct: activations, reconstruction, pooled centred variance
  local _, cache = m:run_with_cache(wins, {names = {HOOK}})
  local x = cache[HOOK]
  local x_hat, z = sae:forward(x)
  local N, D = n * len, 256
  local mean = {}
  for d = 0, D - 1 do
    local s = 0
    for i = 0, N - 1 do s = s + x.data[i * D + d] end
    mean[d] = s / N
  end
  local err, var, l0, l1 = 0, 0, 0, 0
  for i = 0, N - 1 do
    for d = 0, D - 1 do
      local xv = x.data[i * D + d]
      err = err + (xv - x_hat.data[i * D + d]) ^ 2
      var = var + (xv - mean[d]) ^ 2
    end
  end
  local fires = {}
  for i = 0, N - 1 do
    for l = 0, 63 do
      local v = z.data[i * 64 + l]
      if v ~= 0 then l0 = l0 + 1; l1 = l1 + math.abs(v); fires[l] = (fires[l] or 0) + 1 end
    end
  end
  local dead, dense = 0, 0
  for l = 0, 63 do
    if not fires[l] then dead = dead + 1 end
    if (fires[l] or 0) > 0.1 * N then dense = dense + 1 end
  end
  check.eq(r.tokens, N, "tokens")
  check.near(r.explained_variance, 1 - err / var, 1e-5, "explained variance (centred, pooled)")
  check.near(r.nmse, err / var, 1e-5, "nmse")
  check.near(r.l0, l0 / N, 1e-9, "L0")
  check.near(r.l1, l1 / N, 1e-4 * l1 / N, "L1")
  check.eq(r.dead, dead, "dead")
  check.truthy(r.dead >= 3, "the three silenced latents are dead")
  check.eq(r.dense, dense, "dense")
  local hist = 0
  for _, bin in ipairs(r.density_histogram.bins) do hist = hist + bin.count end
  check.eq(hist + r.density_histogram.never, 64, "histogram counts every latent")
  check.truthy(lt.sae.format_report(r):find("CE loss recovered", 1, true), "report text")

  -- CE: clean, zero-ablated, SAE spliced without error term, via m:loss
  local clean = m:loss(wins)
  local zero = m:hooks({{HOOK, lt.ablate.zero{}}}, function() return m:loss(wins) end)
  m:attach_sae(sae, {use_error_term = false})
  local spliced = m:loss(wins)
  m:detach_saes()
  check.near(r.ce_clean, clean, 1e-4, "CE clean")
  check.near(r.ce_zero, zero, 1e-4, "CE zero-ablated")
  check.near(r.ce_sae, spliced, 1e-4, "CE with SAE")
  check.near(r.ce_loss_recovered, (zero - spliced) / (zero - clean), 1e-3, "CE loss recovered")
  check.truthy(r.kl_sae > 0 and r.kl_zero > 0, "KL values are positive")
end

function T.kl_matches_direct_on_one_window()
  local m = model()
  local sae = lt.sae.new{d_in = 256, d_sae = 64, architecture = "standard", hook_name = HOOK, seed = 2}
  local wins = windows(1, 6, 3)
  local r = sae:evaluate(m, {ids = wins}, {tokens = 6, T = 6})
  local clean = m:forward(wins)
  local zl = m:run_with_hooks(wins, {{HOOK, lt.ablate.zero{}}})
  local V = m.cfg.d_vocab
  local kl = 0
  for row = 0, 5 do
    local pc, pz = logprobs(clean, row, V), logprobs(zl, row, V)
    for i = 0, V - 1 do kl = kl + math.exp(pc(i)) * (pc(i) - pz(i)) end
  end
  check.near(r.kl_zero, kl / 6, 1e-5, "KL of the zero-ablated run, mean over positions")
end

function T.sae_latent_rows_match_recomputation()
  local m = model()
  local sae = lt.sae.new{d_in = 256, d_sae = 128, architecture = "standard", hook_name = HOOK, seed = 9}
  local b = sae:param("b_enc")
  for i = 0, 127 do b.data[i] = 0.05 end
  m:attach_sae(sae)
  local prompt = windows(1, 10, 5)[1]
  local target, distractor = 262, 257
  local tab = lt.tdb.node_table(m, {prompt = prompt, target = target, distractor = distractor, all = true,
    kinds = {"sae_latent"}})
  check.truthy(#tab.rows > 0, "sae_latent rows present")
  -- independent: z and dD/dz from run_with_cache with the backward pass
  local metric = metrics.logit_diff{target = target, distractor = distractor, detach_ln_final_scale = true}
  local zname = HOOK .. ".hook_sae_acts_post"
  local _, cache = m:run_with_cache(prompt, {names = {zname}, backward = metric})
  local z, zg = cache[zname], cache[zname .. "_grad"]
  local W_dec, W_out = sae:param("W_dec"), m:param("h.1.mlp.c_proj.weight")
  local Cm = m.cfg.d_model
  local g = tab.grad_final
  local checked = 0
  for i = 1, #tab.rows, math.max(1, math.floor(#tab.rows / 12)) do
    local row = tab.rows[i]
    check.eq(row.kind, "sae_latent", "kind")
    check.eq(row.name, string.format("L1/F%d", row.index), "name")
    local t, l = row.position, row.index
    local a = z:get(t, l)
    -- write = a * W_dec[l] @ W_out
    local direct, nrm = 0, 0
    for j = 0, Cm - 1 do
      local w = 0
      for d = 0, 255 do w = w + W_dec:get(l, d) * W_out:get(d, j) end
      direct = direct + a * w * g[t * Cm + j]
      nrm = nrm + w * w
    end
    check.near(row.activation, a, 1e-6, "activation")
    check.near(row.write_magnitude, a * math.sqrt(nrm), 1e-4 * (1 + math.abs(row.write_magnitude)), "write magnitude")
    check.near(row.direct_effect, direct, 1e-4 * (1 + math.abs(direct)), "direct effect")
    check.near(row.total_effect, a * zg:get(t, l), 1e-4 * (1 + math.abs(row.total_effect)), "total effect")
    checked = checked + 1
  end
  check.truthy(checked >= 5, "rows checked")
  -- measuring an sae_latent row ablates it at hook_sae_acts_post
  local top = lt.tdb.node_table(m, {prompt = prompt, target = target, distractor = distractor, k = 3})
  lt.tdb.measure(m, top, {n = #top.rows})
  for _, row in ipairs(top.rows) do check.truthy(row.measured_change ~= nil, "measured " .. row.name) end
  m:detach_saes()
  check.raises(function()
    lt.tdb.node_table(m, {prompt = prompt, target = target, distractor = distractor, kinds = {"sae_latent"}})
  end, "attached SAE")
end

return T
