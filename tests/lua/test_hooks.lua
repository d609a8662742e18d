-- test_hooks.lua: hook points, run_with_cache, run_with_hooks, scoped hooks,
-- the built-in interventions and weight processing, on the tiny GPT-2
-- fixture (tests/fixtures/hf-gpt2-tiny2: 2 layers, 4 heads, d_model 64).
local ffi = require("ffi")
local check = require("check")
local lt = require("lantern")
local F = require("lantern.ffi")
local Tensor = lt.Tensor
local C = F.C

local DIR = lt.root .. "/tests/fixtures/hf-gpt2-tiny2"

local model_cache
local function model()
  model_cache = model_cache or lt.load(DIR)
  return model_cache
end

-- Hugging Face reference tensors, read through the C safetensors API.
local refs_handle
local function ref(key)
  if not refs_handle then
    local out = ffi.new("lt_safetensors *[1]")
    F.check(C.lt_st_open(DIR .. "/refs.safetensors", out), "refs")
    refs_handle = ffi.gc(out[0], C.lt_st_close)
  end
  local t = ffi.new("lt_st_tensor")
  F.check(C.lt_st_find(refs_handle, key, t), "ref")
  local shape = {}
  for d = 0, t.ndim - 1 do shape[d + 1] = tonumber(t.shape[d]) end
  local out = Tensor.zeros(shape)
  F.check(C.lt_st_to_f32(t, out.data, out.numel), "ref")
  return out
end

-- Token ids of fixture prompt p (a Lua array).
local function prompt(p)
  local f = ref("p" .. p .. ".ids")
  local ids = {}
  for i = 0, f.numel - 1 do ids[i + 1] = f.data[i] end
  return ids
end

-- Prompt 0 with the two names swapped: a corrupted run of the same length.
local function corrupted()
  local ids = prompt(0)
  for i, v in ipairs(ids) do
    if v == 5335 then ids[i] = 1757 elseif v == 1757 then ids[i] = 5335 end
  end
  return ids
end

-- Every element of a and b has the same bits (so -inf, -0 and NaN count).
local function same_bits(a, b, what)
  check.eq(a.numel, b.numel, what .. " (size)")
  local x, y = ffi.cast("uint32_t *", a.data), ffi.cast("uint32_t *", b.data)
  for i = 0, a.numel - 1 do
    if x[i] ~= y[i] then
      error(string.format("%s: element %d differs: %.9g vs %.9g", what, i, a.data[i], b.data[i]), 2)
    end
  end
end

local function close(a, b, tol, what)
  check.eq(a.numel, b.numel, what .. " (size)")
  local d = a:reshape(b.shape):max_abs_diff(b)
  if not (d <= tol) then error(string.format("%s: max abs diff %g > %g", what, d, tol), 2) end
end

local function base_logits()
  return model():forward(prompt(0))
end

-- A plain forward pass still gives the base logits: nothing was left attached.
local function still_clean(what)
  same_bits(model():forward(prompt(0)), base_logits(), what .. ": later plain run")
end

-- log-softmax over the last dimension, as a new tensor.
local function log_softmax(x)
  local V = x.shape[#x.shape]
  local out = Tensor.zeros(x.shape)
  for r = 0, x.numel / V - 1 do
    local row, o = x.data + r * V, out.data + r * V
    local mx = -math.huge
    for i = 0, V - 1 do if row[i] > mx then mx = row[i] end end
    local s = 0
    for i = 0, V - 1 do s = s + math.exp(row[i] - mx) end
    local lse = mx + math.log(s)
    for i = 0, V - 1 do o[i] = row[i] - lse end
  end
  return out
end

local tests = {}

-- ------------------------------------------------------ captures vs HF

function tests.captures_match_hugging_face()
  local m = model()
  local L = m.cfg.n_layer
  local pairs_ = {
    {"hook_resid_pre", "resid_pre"}, {"attn.hook_pattern", "attn_pattern"}, {"attn.hook_z", "attn_z"},
    {"hook_attn_out", "attn_out"}, {"mlp.hook_pre", "mlp_pre"}, {"mlp.hook_post", "mlp_post"},
  }
  for p = 0, 2 do
    local names = {"blocks.-1.hook_resid_post"}
    for l = 0, L - 1 do
      for _, pr in ipairs(pairs_) do names[#names + 1] = "blocks." .. l .. "." .. pr[1] end
    end
    local logits, cache = m:run_with_cache(prompt(p), {names = names})
    check.eq(#cache:names(), #names, "only the requested activations")
    close(logits:select(-1), ref("p" .. p .. ".logits_last"), 1e-4, "last logits")
    for l = 0, L - 1 do
      for _, pr in ipairs(pairs_) do
        close(cache["blocks." .. l .. "." .. pr[1]], ref(string.format("p%d.%s.%d", p, pr[2], l)), 1e-4,
          string.format("prompt %d %s %d", p, pr[1], l))
      end
    end
    close(cache["blocks.1.hook_resid_post"], ref("p" .. p .. ".resid_final"), 1e-4, "resid_final")
  end
end

function tests.shapes_single_and_batched()
  local m = model()
  local c = m.cfg
  local T = #prompt(0)
  local _, cache = m:run_with_cache(prompt(0), {names = function(n) return true end})
  local want = {
    ["hook_embed"] = {T, c.d_model}, ["blocks.0.ln1.hook_scale"] = {T, 1},
    ["blocks.0.attn.hook_q"] = {T, c.n_head, c.d_head}, ["blocks.1.attn.hook_attn_scores"] = {c.n_head, T, T},
    ["blocks.1.attn.hook_result"] = {T, c.n_head, c.d_model}, ["blocks.0.mlp.hook_post"] = {T, c.d_mlp},
    ["ln_final.hook_normalized"] = {T, c.d_model},
  }
  check.eq(#cache:names(), #m:hook_names(), "a predicate selecting everything caches every point")
  for name, shape in pairs(want) do
    check.eq(table.concat(cache[name].shape, ","), table.concat(shape, ","), name)
  end
  local ids = {prompt(0), corrupted()}
  local logits, bc = m:run_with_cache(ids, {names = {"blocks.0.attn.hook_pattern", "blocks.0.hook_resid_pre"}})
  check.eq(table.concat(logits.shape, ","), "2," .. T .. "," .. c.d_vocab, "batched logits")
  check.eq(table.concat(bc["blocks.0.attn.hook_pattern"].shape, ","), "2," .. c.n_head .. "," .. T .. "," .. T,
    "batched pattern")
  -- row 0 of the batch is the single run (up to the batched matmul's rounding)
  close(bc["blocks.0.hook_resid_pre"]:select(0), cache["blocks.0.hook_resid_pre"], 0, "batch row 0")
  close(logits:select(0), base_logits(), 1e-5, "batch row 0 logits")
end

-- ------------------------------------------------------------ identities

function tests.residual_identities_are_exact()
  local m = model()
  local _, cache = m:run_with_cache(prompt(1))
  for l = 0, m.cfg.n_layer - 1 do
    local pre, mid, post = cache:get("resid_pre", l), cache:get("resid_mid", l), cache:get("resid_post", l)
    same_bits(pre:add(cache:get("attn_out", l)), mid, "resid_pre + attn_out == resid_mid, layer " .. l)
    same_bits(mid:add(cache:get("mlp_out", l)), post, "resid_mid + mlp_out == resid_post, layer " .. l)
    if l + 1 < m.cfg.n_layer then same_bits(post, cache:get("resid_pre", l + 1), "resid_post == next resid_pre") end
  end
  same_bits(cache:get("embed"):add(cache:get("pos_embed")), cache:get("resid_pre", 0), "embed + pos_embed")
end

-- stop_at_layer (TransformerLens): no logits, the points up to the stop
-- equal a whole pass's bit for bit, later points are absent, negative
-- layers count from the end, and the next run is whole again.
function tests.stop_at_layer()
  local m = model()
  local full_logits, full = m:run_with_cache(prompt(1))
  local logits, cache = m:run_with_cache(prompt(1), {stop_at_layer = 1})
  check.eq(logits, nil, "no logits after a stop")
  same_bits(cache["blocks.0.hook_resid_post"], full["blocks.0.hook_resid_post"], "resid_post 0")
  same_bits(cache["blocks.1.hook_resid_pre"], full["blocks.1.hook_resid_pre"], "resid_pre 1 (the last point)")
  check.eq(rawget(cache, "blocks.1.mlp.hook_post"), nil, "mlp_post 1 is after the stop")
  check.eq(rawget(cache, "ln_final.hook_normalized"), nil, "ln_final is after the stop")
  local _, neg = m:run_with_cache(prompt(1), {stop_at_layer = -1, names = "blocks.0.mlp.hook_post"})
  same_bits(neg["blocks.0.mlp.hook_post"], full["blocks.0.mlp.hook_post"], "stop_at_layer -1 = n_layer - 1")
  check.raises(function() m:run_with_cache(prompt(1), {stop_at_layer = 3}) end, "stop_at_layer must be")
  check.raises(function() m:run_with_cache(prompt(1), {stop_at_layer = 1, backward = lt.metrics.logit_diff{target = 5335, distractor = 1757}}) end,
    "stopped")
  same_bits(m:forward(prompt(1)), full_logits, "the next forward runs the whole model")
end

function tests.head_results_sum_to_attn_out()
  local m = model()
  local H, Cm = m.cfg.n_head, m.cfg.d_model
  local _, cache = m:run_with_cache(prompt(0), {names = function(n) return n:find("hook_result") or n:find("attn_out") end})
  for l = 0, m.cfg.n_layer - 1 do
    local res, out = cache:get("result", l), cache:get("attn_out", l)
    local b = m:param("h." .. l .. ".attn.c_proj.bias")
    local sum = Tensor.zeros(out.shape)
    for t = 0, res.shape[1] - 1 do
      for c = 0, Cm - 1 do
        local s = b.data[c]
        for h = 0, H - 1 do s = s + res:get(t, h, c) end
        sum:set(s, t, c)
      end
    end
    close(sum, out, 1e-5, "sum of hook_result + b_O, layer " .. l)
  end
end

function tests.pattern_rows_and_mask()
  local m = model()
  local _, cache = m:run_with_cache(prompt(2), {names = function(n) return n:find("attn") ~= nil end})
  for l = 0, m.cfg.n_layer - 1 do
    local pat, sc = cache:get("pattern", l), cache:get("attn_scores", l)
    local H, T = pat.shape[1], pat.shape[2]
    for h = 0, H - 1 do
      for q = 0, T - 1 do
        local s = 0
        for k = 0, T - 1 do
          local v = pat:get(h, q, k)
          if k > q then
            check.truthy(v == 0 and ffi.cast("uint32_t *", pat.data)[pat:offset(h, q, k)] == 0,
              "exact +0 above the diagonal")
            check.eq(sc:get(h, q, k), -math.huge, "scores are -inf above the diagonal")
          else
            check.truthy(v > 0, "pattern positive on and below the diagonal")
          end
          s = s + v
        end
        check.near(s, 1, 1e-6, string.format("pattern row sum, layer %d head %d query %d", l, h, q))
      end
    end
  end
end

function tests.layernorm_normalized_times_scale_plus_mean()
  local m = model()
  local L = m.cfg.n_layer
  local _, cache = m:run_with_cache(prompt(0))
  local function check_ln(input, scale, norm, what)
    local Cm = input.shape[2]
    for t = 0, input.shape[1] - 1 do
      local mean = 0
      for c = 0, Cm - 1 do mean = mean + input:get(t, c) end
      mean = mean / Cm
      local var = 0
      for c = 0, Cm - 1 do var = var + (input:get(t, c) - mean) ^ 2 end
      check.near(scale:get(t, 0), math.sqrt(var / Cm + m.cfg.ln_eps), 1e-5, what .. " scale = sqrt(var + eps)")
      for c = 0, Cm - 1 do
        check.near(norm:get(t, c) * scale:get(t, 0) + mean, input:get(t, c), 1e-5, what .. " normalized * scale + mean")
      end
    end
  end
  for l = 0, L - 1 do
    check_ln(cache:get("resid_pre", l), cache:get("scale", l, "ln1"), cache:get("normalized", l, "ln1"), "ln1." .. l)
    check_ln(cache:get("resid_mid", l), cache:get("scale", l, "ln2"), cache:get("normalized", l, "ln2"), "ln2." .. l)
  end
  check_ln(cache:get("resid_post", L - 1), cache:get("scale"), cache:get("normalized"), "ln_final")
end

-- ------------------------------------------------------ hooks and edits

function tests.identity_hooks_and_full_cache_keep_logits_bit_identical()
  local m = model()
  local base = base_logits()
  local list, returning, seen = {}, {}, {}
  for _, name in ipairs(m:hook_names()) do
    if not name:find("hook_result", 1, true) then
      list[#list + 1] = {name, function(act, hook) seen[hook.name] = true end}
      returning[#returning + 1] = {name, function(act) return act:clone() end}
    end
  end
  same_bits(m:run_with_hooks(prompt(0), list), base, "identity hooks at every point")
  check.eq(#(function() local n = {} for k in pairs(seen) do n[#n + 1] = k end return n end)(), #list,
    "every hook ran")
  same_bits(m:run_with_hooks(prompt(0), returning), base, "hooks returning a copy")
  local everything = function() return true end
  same_bits((m:run_with_cache(prompt(0), {names = everything})), base, "caching everything, hook_result included")
  same_bits((m:run_with_cache(prompt(0))), base, "default cache")
  -- a hook on hook_result makes the output the sum of the per-head results,
  -- another summation order than the single matmul: equal to rounding.
  local with_result = m:run_with_hooks(prompt(0), {{"blocks.0.attn.hook_result", function() end},
    {"blocks.1.attn.hook_result", function() end}})
  close(with_result, base, 1e-5, "identity hook at hook_result")
end

function tests.edits_in_place_and_replacements_propagate()
  local m = model()
  local T = #prompt(0)
  -- zero resid_post of the last layer at one position: the logits there
  -- are then the unembedding of ln_final(0) = ln_f bias.
  local name = "blocks.-1.hook_resid_post"
  local a = m:run_with_hooks(prompt(0), {{name, function(act) for c = 0, 63 do act:set(0, T - 1, c) end end}})
  local b = m:run_with_hooks(prompt(0), {{name, function(act)
    local r = act:clone()
    for c = 0, 63 do r:set(0, T - 1, c) end
    return r
  end}})
  same_bits(a, b, "in-place edit == returned replacement")
  -- returning the activation itself, or a view of it, is an in-place edit
  local c = m:run_with_hooks(prompt(0), {{name, function(act)
    for c = 0, 63 do act:set(0, T - 1, c) end
    return act
  end}})
  same_bits(c, a, "returning act itself")
  local d = m:run_with_hooks(prompt(0), {{name, function(act)
    local flat = act:reshape({act.numel})
    for c = 0, 63 do flat:set(0, (T - 1) * 64 + c) end
    return flat
  end}})
  same_bits(d, a, "returning a reshaped view of act")
  same_bits(a:select(0), base_logits():select(0), "positions before the edit unchanged")
  check.truthy(a:select(-1):max_abs_diff(base_logits():select(-1)) > 1e-3, "the edit changed the last position")
  -- an edit upstream is seen by a later hook in the same run
  local got
  m:run_with_hooks(prompt(0), {
    {"blocks.0.hook_resid_pre", function(act) act:fill_(0) end},
    {"blocks.0.ln1.hook_normalized", function(act) got = act:clone() end},
  })
  check.eq(got:norm(), 0, "normalized of a zero residual is zero")
end

function tests.zero_head_through_hook_z_equals_zeroed_W_O_rows()
  local m = model()
  local D = m.cfg.d_head
  for _, lh in ipairs({{0, 1}, {1, 3}}) do
    local l, h = lh[1], lh[2]
    local by_lua = m:run_with_hooks(prompt(0), {{lt.act_name("z", l), function(act)
      for t = 0, act.shape[1] - 1 do for d = 0, D - 1 do act:set(0, t, h, d) end end
    end}})
    local by_c = m:run_with_hooks(prompt(0), {{lt.act_name("z", l), lt.ablate.zero{heads = {h}}}})
    same_bits(by_c, by_lua, "lt.ablate.zero == Lua zeroing")
    -- the same head removed from hook_result (the output is then the sum
    -- of the head results, another summation order)
    local by_result = m:run_with_hooks(prompt(0), {{lt.act_name("result", l), lt.ablate.zero{heads = {h}}}})
    close(by_result, by_c, 1e-5, "zeroing the head in hook_result")
    local W = m:param(string.format("h.%d.attn.c_proj.weight", l))
    local saved = W:clone()
    local ok, err = pcall(function()
      for r = h * D, (h + 1) * D - 1 do for c = 0, W.shape[2] - 1 do W:set(0, r, c) end end
      close(by_c, m:forward(prompt(0)), 1e-5, string.format("layer %d head %d vs W_O rows zeroed", l, h))
    end)
    W:copy_(saved)
    if not ok then error(err, 0) end
  end
  still_clean("after restoring W_O")
end

function tests.patching_every_clean_resid_pre_gives_clean_logits()
  local m = model()
  local clean, cache = m:run_with_cache(prompt(0), {names = function(n) return n:find("resid_pre") end})
  local corrupt = m:forward(corrupted())
  check.truthy(corrupt:max_abs_diff(clean) > 1e-2, "corruption changes the logits")
  local list = {}
  for l = 0, m.cfg.n_layer - 1 do list[#list + 1] = {lt.act_name("resid_pre", l), lt.ablate.patch{from = cache}} end
  same_bits(m:run_with_hooks(corrupted(), list), clean, "all resid_pre patched")
  -- and by a Lua function copying the clean activation
  local lua = {}
  for l = 0, m.cfg.n_layer - 1 do
    lua[#lua + 1] = {lt.act_name("resid_pre", l), function() return cache:get("resid_pre", l) end}
  end
  same_bits(m:run_with_hooks(corrupted(), lua), clean, "all resid_pre replaced from Lua")
end

function tests.hooks_are_removed_after_an_error()
  local m = model()
  local calls = 0
  local counting = {"blocks.0.hook_resid_pre", function() calls = calls + 1 end}
  local err = check.raises(function()
    m:run_with_hooks(prompt(0), {counting, {"blocks.1.mlp.hook_post", function() error("boom") end}})
  end, "boom")
  check.truthy(err:find("blocks.1.mlp.hook_post", 1, true), "the error names the hook point")
  check.eq(calls, 1, "the first hook ran once")
  still_clean("after a hook error")
  check.eq(calls, 1, "the hook is gone after the failed run")
  -- also when the error comes from a built-in intervention at forward time
  check.raises(function()
    m:run_with_hooks(prompt(0), {counting, {"blocks.0.hook_mlp_out", lt.ablate.zero{positions = {99}}}})
  end, "position 99 out of range")
  still_clean("after an intervention error")
  check.eq(calls, 2, "the hook ran only in the failed run")
  -- and when attaching a later hook fails
  check.raises(function() m:run_with_hooks(prompt(0), {counting, {"blocks.0.hook_bogus", function() end}}) end,
    "unknown hook point 'blocks.0.hook_bogus'")
  still_clean("after an attach error")
  check.eq(calls, 2, "nothing ran when attaching failed")
  -- captures requested by run_with_cache are dropped as well
  check.raises(function()
    m:run_with_cache(prompt(0), {hooks = {{"ln_final.hook_scale", function() error("late") end}}})
  end, "late")
  local _, cache = m:run_with_cache(prompt(0), {names = "hook_embed"})
  check.eq(table.concat(cache:names(), ","), "hook_embed", "no captures left from the failed run")
end

function tests.scoped_hooks_end_with_their_scope()
  local m = model()
  local base = base_logits()
  local calls = 0
  local scoped = {{"blocks.0.hook_mlp_out", lt.ablate.zero{}}, {"blocks.0.hook_resid_pre", function() calls = calls + 1 end}}
  local ablated = m:run_with_hooks(prompt(0), scoped)
  check.eq(calls, 1, "a run_with_hooks run")
  local r1, r2 = m:hooks(scoped, function()
    local a = m:forward(prompt(0))
    -- nested scope and per-run hooks stack on top of the outer scope
    local b = m:hooks({{"blocks.1.hook_mlp_out", lt.ablate.zero{}}}, function()
      return m:run_with_hooks(prompt(0), {{"blocks.1.hook_attn_out", lt.ablate.scale{factor = 1}}})
    end)
    local both = m:run_with_hooks(prompt(0), {{"blocks.0.hook_mlp_out", lt.ablate.zero{}},
      {"blocks.1.hook_mlp_out", lt.ablate.zero{}}})
    same_bits(b, both, "nested scope adds to the outer one")
    same_bits(m:forward(prompt(0)), a, "the inner scope ended with its function")
    return a, "second"
  end)
  same_bits(r1, ablated, "scoped hooks apply to runs inside the scope")
  check.eq(r2, "second", "the scope returns the function's results")
  check.eq(calls, 1 + 4, "the counting hook ran in every run of the scope")
  same_bits(m:forward(prompt(0)), base, "hooks gone after the scope")
  -- an error inside the scope ends it as well, and propagates
  check.raises(function()
    m:hooks(scoped, function()
      m:forward(prompt(0))
      error("inside the scope")
    end)
  end, "inside the scope")
  same_bits(m:forward(prompt(0)), base, "hooks gone after a scope that raised")
  check.eq(calls, 6, "no run after the failed scope saw its hooks")
end

-- ------------------------------------------- built-in vs Lua interventions

-- Runs the same edit as a built-in intervention and as a Lua function; the
-- logits and the edited activation must agree bit for bit.
local function same_edit(ids, name, iv, fn, what)
  local m = model()
  local a, ca = m:run_with_cache(ids, {names = name, hooks = {{name, iv}}})
  local b, cb = m:run_with_cache(ids, {names = name, hooks = {{name, fn}}})
  same_bits(ca[name], cb[name], what .. ": edited activation")
  same_bits(a, b, what .. ": logits")
  check.truthy(ca[name]:max_abs_diff(select(2, m:run_with_cache(ids, {names = name}))[name]) > 0,
    what .. ": the edit changed something")
end

function tests.builtin_interventions_equal_lua_hooks()
  local m = model()
  local ids = prompt(0)
  local T = #ids
  local _, clean = m:run_with_cache(ids)
  local _, other = m:run_with_cache(corrupted())

  same_edit(ids, "blocks.1.attn.hook_z", lt.ablate.zero{heads = {1, 3}, positions = {-1}}, function(act)
    for _, h in ipairs({1, 3}) do for d = 0, 15 do act:set(0, T - 1, h, d) end end
  end, "zero heads at the last position")

  same_edit(ids, "blocks.0.mlp.hook_post", lt.ablate.set{value = 1.5, neurons = {17, 40}}, function(act)
    for t = 0, T - 1 do act:set(1.5, t, 17); act:set(1.5, t, 40) end
  end, "set neurons")

  same_edit(ids, "blocks.0.hook_resid_mid", lt.ablate.scale{factor = 0.5, positions = {0, 2}}, function(act)
    for _, t in ipairs({0, 2}) do for c = 0, 63 do act:set(act:get(t, c) * 0.5, t, c) end end
  end, "scale positions")

  local v = Tensor.zeros({64})
  for c = 0, 63 do v.data[c] = math.sin(c) end
  same_edit(ids, "blocks.1.hook_resid_pre", lt.ablate.add{vector = v, positions = {-2}}, function(act)
    for c = 0, 63 do act:set(act:get(T - 2, c) + v.data[c], T - 2, c) end
  end, "add a steering vector")

  same_edit(ids, "blocks.0.attn.hook_v", lt.ablate.add{value = 0.25, heads = {2}, indices = {0, 5}}, function(act)
    for t = 0, T - 1 do for _, d in ipairs({0, 5}) do act:set(act:get(t, 2, d) + 0.25, t, 2, d) end end
  end, "add a value to entries of a head")

  same_edit(ids, "blocks.0.attn.hook_pattern", lt.ablate.zero{heads = {1}, positions = {5}, indices = {0, 3}},
    function(act) act:set(0, 1, 5, 0); act:set(0, 1, 5, 3) end, "zero pattern entries (query 5, keys 0 and 3)")

  same_edit(ids, "blocks.1.ln2.hook_scale", lt.ablate.scale{factor = 2, positions = {4}}, function(act)
    act:set(act:get(4, 0) * 2, 4, 0)
  end, "scale a LayerNorm scale")

  -- patch from a clean cache into the corrupted run
  local post = clean["blocks.0.mlp.hook_post"]
  same_edit(corrupted(), "blocks.0.mlp.hook_post", lt.ablate.patch{from = clean, neurons = {17, 40}}, function(act)
    for t = 0, T - 1 do act:set(post:get(t, 17), t, 17); act:set(post:get(t, 40), t, 40) end
  end, "patch neurons from a cache")

  -- resample a head from another prompt's cache
  local oz = other["blocks.0.attn.hook_z"]
  same_edit(ids, "blocks.0.attn.hook_z", lt.ablate.resample{from = other, heads = {0}, positions = {1, -3}},
    function(act)
      for _, t in ipairs({1, T - 3}) do for d = 0, 15 do act:set(oz:get(t, 0, d), t, 0, d) end end
    end, "resample a head")

  -- patch from a Tensor
  local src = Tensor.zeros({T, 64}):fill_(0.75)
  same_edit(ids, "blocks.1.hook_attn_out", lt.ablate.patch{from = src, positions = {3}}, function(act)
    for c = 0, 63 do act:set(0.75, 3, c) end
  end, "patch from a Tensor")

  -- mean over the rows of a batched cache (per position), and over
  -- positions too; the Lua reference averages in float32 in the same order
  local _, batch = m:run_with_cache({prompt(0), corrupted()}, {names = {"blocks.1.hook_mlp_out", "blocks.1.attn.hook_z"}})
  local bm = batch["blocks.1.hook_mlp_out"]
  same_edit(ids, "blocks.1.hook_mlp_out", lt.ablate.mean{from = batch, positions = {3}}, function(act)
    for c = 0, 63 do act:set((bm:get(0, 3, c) + bm:get(1, 3, c)) / 2, 3, c) end
  end, "mean over a batch, per position")
  local bz = batch["blocks.1.attn.hook_z"]
  local acc = ffi.new("float[1]")
  same_edit(ids, "blocks.1.attn.hook_z", lt.ablate.mean{from = batch, heads = {2}, over_positions = true}, function(act)
    for d = 0, 15 do
      acc[0] = 0
      for t = 0, T - 1 do
        local row_mean = ffi.new("float[1]", (bz:get(0, t, 2, d) + bz:get(1, t, 2, d)) / 2)
        acc[0] = acc[0] + row_mean[0]
      end
      local mean = acc[0] / T
      for t = 0, T - 1 do act:set(mean, t, 2, d) end
    end
  end, "mean over a batch and positions")

  -- mean from a single prompt's cache is that prompt's activation
  same_edit(ids, "blocks.0.hook_resid_post", lt.ablate.mean{from = other}, function()
    return other["blocks.0.hook_resid_post"]
  end, "mean from one prompt")
end

function tests.interventions_in_a_batch_and_in_order()
  local m = model()
  local ids = {prompt(0), corrupted()}
  -- batch_row selects one row; the other row is untouched
  local base = m:forward(ids)
  local out = m:run_with_hooks(ids, {{"blocks.0.hook_mlp_out", lt.ablate.zero{batch_row = 1}}})
  same_bits(out:select(0), base:select(0), "row 0 untouched")
  close(out:select(1), m:run_with_hooks(corrupted(), {{"blocks.0.hook_mlp_out", lt.ablate.zero{}}}), 1e-5,
    "row 1 == the single ablated run")
  -- several interventions at one point apply in order: set then scale
  local _, c = m:run_with_cache(prompt(0), {names = "blocks.0.hook_resid_mid", hooks = {
    {"blocks.0.hook_resid_mid", lt.ablate.set{value = 3, positions = {1}}},
    {"blocks.0.hook_resid_mid", lt.ablate.scale{factor = 0.5, positions = {1}}},
  }})
  check.eq(c["blocks.0.hook_resid_mid"]:get(1, 7), 1.5, "set 3 then scale 0.5")
  -- patch with a source of one row per batch row
  local _, src = m:run_with_cache({corrupted(), prompt(0)}, {names = "blocks.1.hook_resid_pre"})
  local swapped = m:run_with_hooks(ids, {{"blocks.1.hook_resid_pre", lt.ablate.patch{from = src}}})
  same_bits(swapped:select(0), base:select(1), "row 0 gets row 1's residual")
  same_bits(swapped:select(1), base:select(0), "row 1 gets row 0's residual")
end

function tests.batched_head_sweep_equals_single_runs()
  local m = model()
  local L, H = m.cfg.n_layer, m.cfg.n_head
  local rows, list = {}, {}
  for l = 0, L - 1 do
    for h = 0, H - 1 do
      local b = #rows
      rows[b + 1] = prompt(0)
      list[#list + 1] = {lt.act_name("z", l), lt.ablate.zero{heads = {h}, batch_row = b}}
    end
  end
  local batched = m:run_with_hooks(rows, list)
  check.eq(batched.shape[1], L * H, "one row per head")
  local worst = 0
  for l = 0, L - 1 do
    for h = 0, H - 1 do
      local single = m:run_with_hooks(prompt(0), {{lt.act_name("z", l), lt.ablate.zero{heads = {h}}}})
      worst = math.max(worst, batched:select(l * H + h):max_abs_diff(single))
    end
  end
  -- the batched matmuls may group rows differently from a single run's
  check.truthy(worst <= 1e-5, "batched sweep vs single runs: max abs diff " .. worst)
end

-- ------------------------------------------------------------ names

function tests.negative_layers_and_short_names()
  local m = model()
  check.eq(lt.act_name("pattern", 0), "blocks.0.attn.hook_pattern", "act_name")
  check.eq(lt.act_name("resid_pre", -1), "blocks.-1.hook_resid_pre", "act_name keeps a negative layer")
  check.eq(lt.act_name("scale", 1, "ln2"), "blocks.1.ln2.hook_scale", "act_name scale")
  check.eq(lt.act_name("normalized"), "ln_final.hook_normalized", "act_name ln_final")
  check.eq(m:hook_point("blocks.-1.mlp.hook_post"), m:hook_point("blocks.1.mlp.hook_post"), "hook_point")
  check.eq(m:hook_point("blocks.-2.hook_resid_pre"), m:hook_point("blocks.0.hook_resid_pre"), "-2 is layer 0")
  local _, cache = m:run_with_cache(prompt(0), {names = {"blocks.-1.hook_resid_post", lt.act_name("z", -2)}})
  check.eq(table.concat(cache:names(), ","), "blocks.0.attn.hook_z,blocks.1.hook_resid_post", "canonical names")
  check.truthy(cache["blocks.-1.hook_resid_post"] == cache["blocks.1.hook_resid_post"], "lookup by negative name")
  check.truthy(cache:get("resid_post", -1) == cache["blocks.1.hook_resid_post"], "cache:get with a negative layer")
  local got
  local a = m:run_with_hooks(prompt(0), {{"blocks.-1.hook_mlp_out", function(act, hook)
    got = hook
    act:fill_(0)
  end}})
  check.eq(got.name, "blocks.1.hook_mlp_out", "hook.name is canonical")
  check.eq(got.layer, 1, "hook.layer")
  same_bits(a, m:run_with_hooks(prompt(0), {{"blocks.1.hook_mlp_out", lt.ablate.zero{}}}), "negative name edits layer 1")
end

-- ------------------------------------------------------------ bad input

function tests.bad_input_errors()
  local m = model()
  local ids = prompt(0)
  local _, cache = m:run_with_cache(ids, {names = "blocks.0.hook_resid_pre"})
  local cases = {
    {function() m:run_with_hooks(ids, {{"blocks.0.hook_nope", function() end}}) end, "unknown hook point 'blocks.0.hook_nope'"},
    {function() m:run_with_cache(ids, {names = {"blocks.5.hook_resid_pre"}}) end, "layer 5 out of range for a 2-layer model"},
    {function() m:run_with_cache(ids, {names = "nonsense"}) end, "unknown hook point 'nonsense'"},
    {function() m:run_with_hooks(ids, {{"blocks.0.attn.hook_z", lt.ablate.zero{heads = {4}}}}) end, "head 4 out of range (model has 4 heads)"},
    {function() m:run_with_hooks(ids, {{"blocks.0.attn.hook_z", lt.ablate.zero{heads = {-1}}}}) end, "head -1 out of range"},
    {function() m:run_with_hooks(ids, {{"blocks.0.hook_resid_pre", lt.ablate.zero{heads = {0}}}}) end, "blocks.0.hook_resid_pre has no head dimension"},
    {function() m:run_with_hooks(ids, {{"blocks.0.mlp.hook_post", lt.ablate.zero{heads = {0}}}}) end, "has no head dimension"},
    {function() m:run_with_hooks(ids, {{"blocks.0.hook_resid_pre", lt.ablate.patch{from = Tensor.zeros({3, 64})}}}) end,
      "patch source has 192 elements; one row has 896"},
    {function() m:run_with_hooks(ids, {{"blocks.0.mlp.hook_post", lt.ablate.patch{from = cache}}}) end,
      "blocks.0.mlp.hook_post is not in the source cache"},
    {function() m:run_with_hooks({1, 2, 3}, {{"blocks.0.hook_resid_pre", lt.ablate.patch{from = cache}}}) end,
      "patch source has 896 elements; one row has 192"},
    {function() m:run_with_hooks(ids, {{"blocks.0.mlp.hook_post", lt.ablate.zero{neurons = {256}}}}) end, "index 256 out of range (size 256)"},
    {function() m:run_with_hooks(ids, {{"blocks.0.mlp.hook_post", lt.ablate.zero{positions = {-15}}}}) end, "position -15 out of range (size 14)"},
    {function() m:run_with_hooks(ids, {{"blocks.0.mlp.hook_post", lt.ablate.zero{batch_row = 1}}}) end, "batch row 1 out of range (batch of 1)"},
    {function() m:run_with_hooks(ids, {{"blocks.0.mlp.hook_post", lt.ablate.zero{batch_row = -2}}}) end, "batch row -2 is negative"},
    {function() m:run_with_hooks(ids, {{"blocks.0.hook_resid_pre", lt.ablate.add{vector = Tensor.zeros({63})}}}) end,
      "vector of length 63 does not match the last dimension (64)"},
    {function() m:run_with_hooks(ids, {{"blocks.0.hook_resid_pre", 42}}) end, "expected a function or an intervention"},
    {function() m:run_with_hooks(ids, {{"blocks.0.hook_resid_pre", function() return Tensor.zeros({2}) end}}) end,
      "returned value must be a Tensor with 896 elements"},
    {function() m:run_with_hooks(ids, {{"blocks.0.hook_resid_pre", lt.ablate.zero{positions = {1.5}}}}) end, "positions must be a list of integers"},
    {function() lt.ablate.set{} end, "lt.ablate.set needs value"},
    {function() lt.ablate.patch{} end, "needs from"},
  }
  for i, c in ipairs(cases) do
    check.raises(c[1], c[2], "bad input case " .. i)
    still_clean("bad input case " .. i)
  end
end

-- ------------------------------------------------------ weight processing

function tests.weight_processing_keeps_log_probs()
  local ids = prompt(0)
  local base = model():forward(ids)
  local base_lp = log_softmax(base)
  local flags = {"fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases"}
  local all = {}
  for _, f in ipairs(flags) do all[f] = true end
  local variants = {all}
  for _, f in ipairs(flags) do variants[#variants + 1] = {[f] = true} end
  for _, opts in ipairs(variants) do
    local label = {}
    for k in pairs(opts) do label[#label + 1] = k end
    table.sort(label)
    local what = table.concat(label, "+")
    local pm = lt.load(DIR, opts)
    local logits, cache = pm:run_with_cache(ids, {names = function(n) return n:find("resid") ~= nil end})
    -- 1e-5, relative beyond magnitude 1: float32 carries about 7 digits,
    -- so a log-probability of -17 is only known to 2e-6 (one ulp), and the
    -- reordered float sums of the processed weights move it by a few ulps
    local lp, worst = log_softmax(logits), 0
    for i = 0, lp.numel - 1 do
      worst = math.max(worst, math.abs(lp.data[i] - base_lp.data[i]) / math.max(1, math.abs(base_lp.data[i])))
    end
    check.truthy(worst <= 1e-5, string.format("%s: log-softmax differs by %g (relative beyond 1)", what, worst))
    if opts.fold_ln then
      local w, b = pm:param("h.0.ln_1.weight"), pm:param("ln_f.bias")
      check.truthy(w:min() == 1 and w:max() == 1 and b:norm() == 0, what .. ": LayerNorm weights folded away")
    end
    if opts.center_writing_weights then
      -- every residual vector then has (nearly) zero mean over d_model
      local r = cache:get("resid_post", -1)
      for t = 0, r.shape[1] - 1 do
        local s = 0
        for c = 0, r.shape[2] - 1 do s = s + r:get(t, c) end
        check.near(s / r.shape[2], 0, 1e-5, what .. ": centred residual")
      end
    end
    if opts.fold_value_biases then
      local b = pm:param("h.1.attn.c_attn.bias")
      for i = 128, 191 do check.eq(b.data[i], 0, what .. ": b_V folded") end
    end
    if opts.center_unembed and not opts.fold_ln then
      -- logits move by one constant per position
      local V = logits.shape[2]
      for t = 0, logits.shape[1] - 1 do
        local shift = logits:get(t, 0) - base:get(t, 0)
        local worst = 0
        for v = 0, V - 1 do worst = math.max(worst, math.abs(logits:get(t, v) - base:get(t, v) - shift)) end
        check.truthy(worst <= 1e-4, string.format("%s: position %d shift not constant (%g)", what, t, worst))
        check.truthy(math.abs(shift) > 1e-6, what .. ": logits did move")
      end
    end
  end
end

return tests
