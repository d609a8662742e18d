-- test_cache.lua: run_with_cache's name selection and the ActivationCache
-- helpers (accumulated_resid, decompose_resid, stack_head_results,
-- apply_ln_to_stack, logit_attrs) against direct computations, on the tiny
-- GPT-2 fixture.
local check = require("check")
local lt = require("lantern")
local Tensor = lt.Tensor

local DIR = lt.root .. "/tests/fixtures/hf-gpt2-tiny2"
-- prompt 0 of the fixture: "When Mary and John went to the store, John gave a drink to"
local IDS = {2215, 5335, 290, 1757, 1816, 284, 262, 3650, 11, 1757, 2921, 257, 4144, 284}
local MARY, JOHN = 5335, 1757
local OTHER = {464, 412, 733, 417, 8765, 318, 5140, 287, 262, 1748, 286, 11, 1757, 284}

local models = {}
local function model(opts)
  local key = opts and "folded" or "plain"
  models[key] = models[key] or lt.load(DIR, opts)
  return models[key]
end

local function close(a, b, tol, what)
  check.eq(a.numel, b.numel, what .. " (size)")
  local d = a:reshape(b.shape):max_abs_diff(b)
  if not (d <= tol) then error(string.format("%s: max abs diff %g > %g", what, d, tol), 2) end
end

-- Component k of a stack [n, ...] as a view.
local function component(s, k) return s:select(k) end

-- Sum over the first dimension of a stack [n, ...].
local function sum_stack(s)
  local out = Tensor.zeros(component(s, 0).shape)
  for k = 0, s.shape[1] - 1 do out = out:add(component(s, k)) end
  return out
end

local tests = {}

function tests.names_select_what_is_stored()
  local m = model()
  local all = #m:hook_names()
  local _, c1 = m:run_with_cache(IDS, {names = "blocks.0.mlp.hook_post"})
  check.eq(table.concat(c1:names(), ","), "blocks.0.mlp.hook_post", "one name")
  local _, c2 = m:run_with_cache(IDS, {names = {"hook_embed", lt.act_name("pattern", 1), "ln_final.hook_scale"}})
  check.eq(table.concat(c2:names(), ","), "blocks.1.attn.hook_pattern,hook_embed,ln_final.hook_scale", "a list (sorted)")
  local _, c3 = m:run_with_cache(IDS, {names = function(n) return n:match("^blocks%.1%.") ~= nil end})
  check.eq(#c3:names(), (all - 4) / 2, "a predicate: every point of layer 1")
  local _, c4 = m:run_with_cache(IDS)
  check.eq(#c4:names(), all - m.cfg.n_layer, "the default is everything but attn.hook_result")
  check.eq(c4["blocks.0.attn.hook_result"], nil, "hook_result only on request")
  local _, c5 = m:run_with_cache(IDS, {names = {}})
  check.eq(#c5:names(), 0, "an empty list stores nothing")
  -- short names
  check.truthy(c4:get("post", 0) == c4["blocks.0.mlp.hook_post"], "cache:get short name")
  check.truthy(c4:get("scale", 1, "ln2") == c4["blocks.1.ln2.hook_scale"], "cache:get scale")
  check.truthy(c4:get("blocks.0.hook_resid_pre") == c4["blocks.0.hook_resid_pre"], "cache:get full name")
  check.eq(c1["blocks.0.mlp.hook_pre"], nil, "an activation not requested is absent")
  check.raises(function() c1:get("pre", 0) end, "blocks.0.mlp.hook_pre is not in the cache")
  -- cached tensors are copies owned by Lua: a later run does not change them
  local before = c1["blocks.0.mlp.hook_post"]:clone()
  m:run_with_hooks(OTHER, {{"blocks.0.mlp.hook_post", lt.ablate.zero{}}})
  check.eq(c1["blocks.0.mlp.hook_post"]:max_abs_diff(before), 0, "cache unchanged by later runs")
end

function tests.accumulated_resid()
  local m = model()
  local L = m.cfg.n_layer
  local _, cache = m:run_with_cache(IDS)
  local s, labels = cache:accumulated_resid()
  check.eq(table.concat(labels, ","), "0_pre,1_pre,final_post", "labels")
  check.eq(table.concat(s.shape, ","), "3,14,64", "shape")
  for l = 0, L - 1 do check.eq(component(s, l):max_abs_diff(cache:get("resid_pre", l)), 0, "component " .. l) end
  check.eq(component(s, L):max_abs_diff(cache:get("resid_post", L - 1)), 0, "final component")
  local sm, lm = cache:accumulated_resid({incl_mid = true})
  check.eq(table.concat(lm, ","), "0_pre,0_mid,1_pre,1_mid,final_post", "labels with mid")
  check.eq(component(sm, 1):max_abs_diff(cache:get("resid_mid", 0)), 0, "mid component")
  local s1, l1 = cache:accumulated_resid({layer = 1})
  check.eq(table.concat(l1, ","), "0_pre,1_pre", "up to layer 1")
  check.eq(s1.shape[1], 2, "two components")
  -- with apply_ln the final component is ln_final's normalized output
  local sl = cache:accumulated_resid({apply_ln = true})
  close(component(sl, L), cache:get("normalized"), 1e-5, "apply_ln on the final residual")
end

function tests.logit_lens_attrs_equal_the_logit_difference()
  -- fold_ln makes ln_final's affine part the identity, so the logits are
  -- normalized @ W_U^T + b_U exactly as logit_attrs sees them (b_U aside)
  local m = model({fold_ln = true})
  local logits, cache = m:run_with_cache(IDS)
  local s = cache:accumulated_resid({apply_ln = true})
  local attrs = cache:logit_attrs(s, MARY, JOHN)
  check.eq(table.concat(attrs.shape, ","), tostring(s.shape[1]), "one attribution per component")
  local b = m:param("lm_head.bias")
  local diff = logits:get(-1, MARY) - logits:get(-1, JOHN)
  check.near(attrs.data[s.shape[1] - 1] + b.data[MARY] - b.data[JOHN], diff, 1e-4, "final component: the logit diff")
  -- direct logit attribution: the ln-applied parts of the residual stream add up
  local parts = cache:decompose_resid({apply_ln = true})
  local dla = cache:logit_attrs(parts, MARY, JOHN)
  check.near(dla:sum() + b.data[MARY] - b.data[JOHN], diff, 1e-4, "decomposed attributions add up")
  -- one token direction, another position
  local a3 = cache:logit_attrs(s, MARY, nil, {position = 3})
  local row = component(s, s.shape[1] - 1):select(3)
  local w = m:param("lm_head.weight"):select(MARY)
  check.near(a3.data[s.shape[1] - 1], row:dot(w), 1e-5, "position 3, no incorrect token")
  check.near(a3.data[s.shape[1] - 1] + b.data[MARY], logits:get(3, MARY), 1e-4, "position 3 logit")
end

function tests.logit_attrs_batched()
  local m = model({fold_ln = true})
  local logits, cache = m:run_with_cache({IDS, OTHER}, {names = function(n) return n:find("resid") or n:find("ln_final") end})
  local s = cache:accumulated_resid({apply_ln = true})
  check.eq(table.concat(s.shape, ","), "3,2,14,64", "batched stack")
  local attrs = cache:logit_attrs(s, {MARY, JOHN}, {JOHN, MARY})
  check.eq(table.concat(attrs.shape, ","), "3,2", "[components, batch]")
  local b = m:param("lm_head.bias")
  check.near(attrs:get(2, 0) + b.data[MARY] - b.data[JOHN], logits:get(0, -1, MARY) - logits:get(0, -1, JOHN), 1e-4, "row 0")
  check.near(attrs:get(2, 1) + b.data[JOHN] - b.data[MARY], logits:get(1, -1, JOHN) - logits:get(1, -1, MARY), 1e-4, "row 1")
end

function tests.decompose_resid_sums_to_the_final_residual()
  local m = model()
  local L = m.cfg.n_layer
  local _, cache = m:run_with_cache(IDS)
  local s, labels = cache:decompose_resid()
  check.eq(table.concat(labels, ","), "embed,pos_embed,0_attn_out,0_mlp_out,1_attn_out,1_mlp_out", "labels")
  close(sum_stack(s), cache:get("resid_post", L - 1), 1e-5, "components sum to resid_final")
  local sa, la = cache:decompose_resid({mode = "attn"})
  check.eq(table.concat(la, ","), "embed,pos_embed,0_attn_out,1_attn_out", "attn only")
  check.eq(component(sa, 3):max_abs_diff(cache:get("attn_out", 1)), 0, "attn component")
  local _, lmlp = cache:decompose_resid({mode = "mlp", layer = 1})
  check.eq(table.concat(lmlp, ","), "embed,pos_embed,0_mlp_out", "mlp only, first layer")
  -- apply_ln is linear given the cached scale: the parts add up to ln_final's output
  close(sum_stack(cache:decompose_resid({apply_ln = true})), cache:get("normalized"), 1e-5, "ln-applied parts")
end

function tests.stack_head_results()
  local m = model()
  local H = m.cfg.n_head
  local _, cache = m:run_with_cache(IDS)                      -- no hook_result: computed from z
  local _, with_result = m:run_with_cache(IDS, {names = function(n) return n:find("result") or n:find("attn_out") end})
  local s, labels = cache:stack_head_results()
  check.eq(#labels, m.cfg.n_layer * H, "one per head")
  check.eq(labels[1] .. "," .. labels[H + 2], "L0H0,L1H1", "labels")
  check.eq(table.concat(s.shape, ","), m.cfg.n_layer * H .. ",14,64", "shape")
  local s2 = with_result:stack_head_results()
  close(s, s2, 1e-5, "from z == from hook_result")
  for l = 0, m.cfg.n_layer - 1 do
    local b = m:param("h." .. l .. ".attn.c_proj.bias")
    local sum = Tensor.zeros({14, 64})
    for h = 0, H - 1 do sum = sum:add(component(s, l * H + h)) end
    for t = 0, 13 do for c = 0, 63 do sum:set(sum:get(t, c) + b.data[c], t, c) end end
    close(sum, cache:get("attn_out", l), 1e-5, "heads + b_O == attn_out, layer " .. l)
  end
  local one, l1 = cache:stack_head_results({layer = 1})
  check.eq(l1[1], "L1H0", "one layer")
  local _, lneg = cache:stack_head_results({layer = -1})
  check.eq(lneg[1], "L1H0", "a negative layer counts from the end")
  check.eq(component(one, 2):max_abs_diff(component(s, H + 2)), 0, "the same values")
  -- head h's result is its z through rows h*D..h*D+D-1 of W_O
  local z, W = cache:get("z", 0), m:param("h.0.attn.c_proj.weight")
  local want = 0
  for d = 0, 15 do want = want + z:get(5, 2, d) * W:get(2 * 16 + d, 7) end
  check.near(s:get(2, 5, 7), want, 1e-5, "L0H2 at position 5, coordinate 7")
end

function tests.apply_ln_to_stack_with_a_block_layernorm()
  local m = model()
  local _, cache = m:run_with_cache(IDS)
  for l = 0, m.cfg.n_layer - 1 do
    local s = Tensor.zeros({1, 14, 64})
    s:select(0):copy_(cache:get("resid_pre", l))
    close(cache:apply_ln_to_stack(s, l):select(0), cache:get("normalized", l, "ln1"), 1e-5, "ln1 of layer " .. l)
  end
end

return tests
