-- test_tdb.lua: the Transformer Debugger node table (lt.tdb) against an
-- independent recomputation from cached activations and gradients, the
-- exact decomposition of the detached metric into direct effects, measured
-- effects against separate ablation runs, tracing and errors. Tiny GPT-2
-- fixture.
local check = require("check")
local lt = require("lantern")

local DIR = lt.root .. "/tests/fixtures/hf-gpt2-tiny2"
local TOK = lt.root .. "/tests/fixtures/gpt2-tokenizer"
local PROMPT = "When Mary and John went to the store, John gave a drink to"
local MARY, JOHN = 5335, 1757

local model_
local function model()
  model_ = model_ or lt.load(DIR, {tokenizer = TOK})
  return model_
end

local full_
local function full_table()
  full_ = full_ or lt.tdb.node_table(model(), {prompt = PROMPT, target = " Mary", distractor = " John", all = true})
  return full_
end

-- Cached activations and gradients of D (ln_final scale detached).
local cache_
local function cache()
  if not cache_ then
    local metric = lt.metrics.logit_diff{target = MARY, distractor = JOHN, detach_ln_final_scale = true}
    local _, c = model():run_with_cache(PROMPT, {backward = metric})
    cache_ = c
  end
  return cache_
end

local function dot_rows(a, ai, b, bi, n)
  local s = 0
  for j = 0, n - 1 do s = s + a.data[ai + j] * b.data[bi + j] end
  return s
end

local function rel_near(a, b, what)
  check.near(a, b, 1e-4 * math.max(1, math.abs(b)), what)
end

local tests = {}

function tests.recomputation_matches_every_sampled_row()
  local m, c, t = model(), cache(), full_table()
  local cfg = m.cfg
  local T, Cm, H, Dh, Mn = #t.ids, cfg.d_model, cfg.n_head, cfg.d_head, cfg.d_mlp
  local g = c[string.format("blocks.%d.hook_resid_post_grad", cfg.n_layer - 1)]
  check.eq(#t.rows, cfg.n_layer * (T * Mn + H * T * (T + 1) / 2) + T, "all = true: every node")
  rel_near(t.logit_diff, c.metric, "logit_diff")
  local counts = {}
  for i, r in ipairs(t.rows) do
    -- every 37th row plus the first 50 (the largest), of every kind
    if i <= 50 or i % 37 == 0 then
      counts[r.kind] = (counts[r.kind] or 0) + 1
      local act, mag, direct, total
      if r.kind == "mlp_neuron" then
        local post = c[string.format("blocks.%d.mlp.hook_post", r.layer)]
        local pg = c[string.format("blocks.%d.mlp.hook_post_grad", r.layer)]
        local w = m:param(string.format("h.%d.mlp.c_proj.weight", r.layer))
        act = post:get(r.position, r.index)
        local nrm = math.sqrt(dot_rows(w, r.index * Cm, w, r.index * Cm, Cm))
        mag = act * nrm
        direct = act * dot_rows(w, r.index * Cm, g, r.position * Cm, Cm)
        total = act * pg:get(r.position, r.index)
        check.eq(r.name, string.format("L%d/N%d", r.layer, r.index), "name")
      elseif r.kind == "attn_head" then
        local pat = c[string.format("blocks.%d.attn.hook_pattern", r.layer)]
        local pg = c[string.format("blocks.%d.attn.hook_pattern_grad", r.layer)]
        local v = c[string.format("blocks.%d.attn.hook_v", r.layer)]
        local wo = m:param(string.format("h.%d.attn.c_proj.weight", r.layer))
        local q, k, h = r.position, r.key_position, r.index
        act = pat:get(h, q, k)
        local vo = {}
        for j = 0, Cm - 1 do
          local s = 0
          for e = 0, Dh - 1 do s = s + v:get(k, h, e) * wo:get(h * Dh + e, j) end
          vo[j] = s
        end
        local n2, d = 0, 0
        for j = 0, Cm - 1 do n2 = n2 + vo[j] * vo[j]; d = d + vo[j] * g:get(q, j) end
        mag, direct, total = act * math.sqrt(n2), act * d, act * pg:get(h, q, k)
        check.eq(r.name, string.format("L%d/H%d", r.layer, r.index), "name")
      else
        local e = c["blocks.0.hook_resid_pre"]
        local ge = c["blocks.0.hook_resid_pre_grad"]
        local t0 = r.position * Cm
        act, mag = 1, math.sqrt(dot_rows(e, t0, e, t0, Cm))
        direct, total = dot_rows(e, t0, g, t0, Cm), dot_rows(e, t0, ge, t0, Cm)
        -- the embedding is W_E[tok] + W_pos[t]
        local we, wp = m:param("wte.weight"), m:param("wpe.weight")
        check.near(e:get(r.position, 5), we:get(t.ids[r.position + 1], 5) + wp:get(r.position, 5), 1e-6, "emb = W_E + W_pos")
        check.eq(r.name, "emb", "name")
      end
      local what = string.format("%s pos %d key %s", r.name, r.position, tostring(r.key_position))
      check.near(r.activation, act, 1e-6, what .. " activation")
      check.near(r.write_magnitude, mag, 1e-4 * math.max(1, math.abs(mag)), what .. " write magnitude")
      check.near(r.direct_effect, direct, 1e-5, what .. " direct effect")
      check.near(r.total_effect, total, 1e-5, what .. " total effect")
    end
  end
  check.truthy(counts.mlp_neuron and counts.attn_head and counts.embedding, "every kind sampled")
  -- position totals are the sums of total effects per position
  local sums = {}
  for _, r in ipairs(t.rows) do
    sums[r.kind] = sums[r.kind] or {}
    sums[r.kind][r.position + 1] = (sums[r.kind][r.position + 1] or 0) + r.total_effect
  end
  for kind, list in pairs(t.position_totals) do
    for p = 1, T do check.near(list[p], sums[kind][p], 1e-5, kind .. " position total " .. p) end
  end
end

-- With the ln_final scale s detached, D = g . x + b_f . (W_U[t] - W_U[d])
-- exactly, where x = resid_final[T-1] and g = w_f * u / s centred (the
-- centring of LayerNorm is linear, and g . 1 = 0 so the mean of x drops
-- out). x is the sum of embeddings, every head's (q, k) write (v includes
-- b_V), every neuron's write, and the biases b_O and b_out of each layer.
function tests.direct_effects_decompose_the_logit_difference_exactly()
  local m, c, t = model(), cache(), full_table()
  local cfg = m.cfg
  local T, Cm = #t.ids, cfg.d_model
  local g = c[string.format("blocks.%d.hook_resid_post_grad", cfg.n_layer - 1)]
  local last = (T - 1) * Cm
  local sum = 0
  for _, r in ipairs(t.rows) do sum = sum + r.direct_effect end
  for L = 0, cfg.n_layer - 1 do
    sum = sum + dot_rows(m:param(string.format("h.%d.attn.c_proj.bias", L)), 0, g, last, Cm)
    sum = sum + dot_rows(m:param(string.format("h.%d.mlp.c_proj.bias", L)), 0, g, last, Cm)
  end
  local bf, wu = m:param("ln_f.bias"), m:param("lm_head.weight")
  local lnf_bias = 0
  for j = 0, Cm - 1 do lnf_bias = lnf_bias + bf.data[j] * (wu:get(MARY, j) - wu:get(JOHN, j)) end
  check.near(sum + lnf_bias, t.logit_diff, 1e-4, "sum of direct effects + biases = D")
  -- g is centred and zero before the last position
  local s0, s1 = 0, 0
  for j = 0, Cm - 1 do s0 = s0 + math.abs(g:get(0, j)); s1 = s1 + g:get(T - 1, j) end
  check.near(s0, 0, 0, "g zero at position 0")
  check.near(s1, 0, 1e-5, "g centred")
end

function tests.default_table_is_the_union_of_top_and_bottom_k()
  local t = lt.tdb.node_table(model(), {prompt = PROMPT, target = " Mary", distractor = " John", k = 3})
  local all = full_table().rows
  check.truthy(#t.rows >= 3 and #t.rows <= 18, "at most 6k rows")
  check.eq(#t.prediction, 5, "top 5 prediction")
  check.eq(t.tokens[2], " Mary", "token texts")
  -- the row with the largest |total| is first in both
  check.eq(t.rows[1].name .. t.rows[1].position, all[1].name .. all[1].position, "largest row")
  local best_direct = -math.huge
  for _, r in ipairs(all) do best_direct = math.max(best_direct, r.direct_effect) end
  local found = false
  for _, r in ipairs(t.rows) do if r.direct_effect == best_direct then found = true end end
  check.truthy(found, "top direct effect included")
  local only = lt.tdb.node_table(model(), {prompt = PROMPT, target = " Mary", distractor = " John", k = 2,
    kinds = {"embedding"}})
  for _, r in ipairs(only.rows) do check.eq(r.kind, "embedding", "kinds filter") end
end

-- The batched measured effects equal separate single ablation runs.
function tests.measured_effects_equal_separate_ablations()
  local m = model()
  local t = lt.tdb.node_table(m, {prompt = PROMPT, target = " Mary", distractor = " John", k = 4})
  lt.tdb.measure(m, t, {n = 8})
  local metric = lt.metrics.logit_diff{target = MARY, distractor = JOHN}
  local clean = metric(m:forward(PROMPT))
  local kinds = {}
  for i = 1, 8 do
    local r = t.rows[i]
    kinds[r.kind] = true
    local list
    if r.kind == "mlp_neuron" then
      list = {{string.format("blocks.%d.mlp.hook_post", r.layer), lt.ablate.zero{positions = {r.position}, neurons = {r.index}}}}
    elseif r.kind == "attn_head" then
      list = {{string.format("blocks.%d.attn.hook_pattern", r.layer),
        lt.ablate.zero{heads = {r.index}, positions = {r.position}, indices = {r.key_position}}}}
    else
      list = {{"hook_embed", lt.ablate.zero{positions = {r.position}}}, {"hook_pos_embed", lt.ablate.zero{positions = {r.position}}}}
    end
    local d = metric(m:run_with_hooks(PROMPT, list)) - clean
    check.near(r.measured_change, d, 1e-4, r.name .. " measured change")
    check.eq(r.estimated_change, -r.total_effect, "estimated change sign convention")
  end
  check.truthy(kinds.attn_head, "heads measured")
end

function tests.trace_mlp_neuron_metric_is_its_preactivation()
  local m = model()
  local tr = lt.tdb.trace(m, {prompt = PROMPT, node = "L1/N17@-1", k = 3})
  local _, c = m:run_with_cache(PROMPT, {names = "blocks.1.mlp.hook_pre"})
  check.near(tr.value, c["blocks.1.mlp.hook_pre"]:get(13, 17), 1e-5, "pre-activation")
  for _, r in ipairs(tr.rows) do
    check.truthy(r.kind ~= "mlp_neuron" or r.layer < 1, "only upstream neurons")
    check.truthy(r.position <= 13, "positions")
  end
  -- an attention score trace: metric = the score; value trace = direct effect
  local at = lt.tdb.trace(m, {prompt = PROMPT, node = "L1/H2@13:4", side = "query", k = 2})
  local _, c2 = m:run_with_cache(PROMPT, {names = "blocks.1.attn.hook_attn_scores"})
  check.near(at.value, c2["blocks.1.attn.hook_attn_scores"]:get(2, 13, 4), 1e-5, "score")
  for _, r in ipairs(at.rows) do check.truthy(r.kind == "embedding" or r.layer < 1, "upstream of layer 1 attention") end
  local vt = lt.tdb.trace(m, {prompt = PROMPT, node = "L1/H2@13:4", side = "value", target = " Mary", distractor = " John", k = 2})
  local row
  for _, r in ipairs(full_table().rows) do
    if r.name == "L1/H2" and r.position == 13 and r.key_position == 4 then row = r end
  end
  check.near(vt.value, row.direct_effect, 1e-5, "value path metric = the head's direct effect")
end

function tests.errors_are_clear()
  local m = model()
  check.raises(function()
    lt.tdb.node_table(m, {prompt = PROMPT, target = " Maryland and", distractor = " John"})
  end, "expected exactly one")
  check.raises(function() lt.tdb.parse_node("L1/X2") end, "unknown node spec")
  check.raises(function() lt.tdb.parse_node("L1/N2@x") end, "unknown node spec")
  check.raises(function() lt.tdb.trace(m, {prompt = PROMPT, node = "L9/N2"}) end, "out of range")
  local n = lt.tdb.parse_node("L1/H2@13:4")
  check.eq(n.kind .. n.layer .. n.index .. n.position .. n.key_position, "attn_head12134", "parse")
end

function tests.attribution_patching_measured_equals_a_separate_patch()
  local m = model()
  local clean = {2215, 5335, 290, 1757, 1816, 284, 262, 3650, 11, 1757, 2921, 257, 4144, 284}
  local corrupted = {464, 412, 733, 417, 8765, 318, 5140, 287, 262, 1748, 286, 11, 1757, 284}
  local r = lt.tdb.attribution_patching(m, {clean = clean, corrupted = corrupted, target = MARY, distractor = JOHN, n = 4})
  local metric = lt.metrics.logit_diff{target = MARY, distractor = JOHN}
  check.near(r.corrupted_logit_diff, metric(m:forward(corrupted)), 1e-5, "corrupted D")
  local _, cc = m:run_with_cache(clean)
  local base = metric(m:forward(corrupted))
  for i = 1, 4 do
    local x = r.rows[i]
    local list
    if x.kind == "attn_head" then
      list = {{string.format("blocks.%d.attn.hook_z", x.layer), lt.ablate.patch{from = cc, heads = {x.index}}}}
    elseif x.kind == "embedding" then
      list = {{"hook_embed", lt.ablate.patch{from = cc, positions = {x.position}}},
        {"hook_pos_embed", lt.ablate.patch{from = cc, positions = {x.position}}}}
    elseif x.kind == "mlp_neuron" then
      list = {{string.format("blocks.%d.mlp.hook_post", x.layer), lt.ablate.patch{from = cc, neurons = {x.index}}}}
    else
      list = {{string.format("blocks.%d.mlp.hook_post", x.layer), lt.ablate.patch{from = cc}}}
    end
    check.near(x.measured, metric(m:run_with_hooks(corrupted, list)) - base, 1e-4, x.name .. " patched")
  end
end

return tests
