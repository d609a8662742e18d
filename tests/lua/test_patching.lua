-- test_patching.lua: lt.patching (activation patching as in TransformerLens)
-- on the tiny GPT-2 fixture: the batched results against single runs with
-- one patch each, and the values that patching must give.
local check = require("check")
local lt = require("lantern")

local DIR = lt.root .. "/tests/fixtures/hf-gpt2-tiny2"
-- "When Mary and John went to the store, John gave a drink to"; the
-- corrupted prompt differs at position 1 only (Mary -> John).
local CLEAN = {2215, 5335, 290, 1757, 1816, 284, 262, 3650, 11, 1757, 2921, 257, 4144, 284}
local CORRUPT = {2215, 1757, 290, 1757, 1816, 284, 262, 3650, 11, 1757, 2921, 257, 4144, 284}
local MARY, JOHN = 5335, 1757
local T = #CLEAN

local model_cache
local function model()
  model_cache = model_cache or lt.load(DIR)
  return model_cache
end

local function div(a, b) return math.floor(a / b) end

local function logit_diff(logits) return logits:get(-1, MARY) - logits:get(-1, JOHN) end

local clean_cache_, clean_metric_, corrupt_metric_
local function setup()
  if not clean_cache_ then
    local m = model()
    local logits
    logits, clean_cache_ = m:run_with_cache(CLEAN)
    clean_metric_ = logit_diff(logits)
    corrupt_metric_ = logit_diff(m:forward(CORRUPT))
  end
  return clean_cache_, clean_metric_, corrupt_metric_
end

-- The metric of one unbatched run with one patch.
local function single(name, sel)
  local cache = setup()
  sel.from = cache
  return logit_diff(model():run_with_hooks(CORRUPT, {{name, lt.ablate.patch(sel)}}))
end

-- Entries of a result against single runs: every step-th entry (default
-- every one) and the last; batched matmuls may round differently from
-- single ones, hence a tolerance.
local function against_single(r, fn, what, step)
  local worst = 0
  local idx = {}
  for i = 0, r.numel - 1, step or 1 do idx[#idx + 1] = i end
  if idx[#idx] ~= r.numel - 1 then idx[#idx + 1] = r.numel - 1 end
  for _, i in ipairs(idx) do worst = math.max(worst, math.abs(r.data[i] - fn(i))) end
  check.truthy(worst <= 1e-5, what .. ": batched vs single runs differ by " .. worst)
end

local tests = {}

function tests.resid_pre_by_layer_and_position()
  local m = model()
  local cache, clean, corrupt = setup()
  check.truthy(math.abs(clean - corrupt) > 1e-2, "the corruption moves the metric")
  local r = lt.patching.get_act_patch_resid_pre(m, CORRUPT, cache, logit_diff)
  check.eq(table.concat(r.shape, ","), m.cfg.n_layer .. "," .. T, "shape [n_layer, T]")
  -- at layer 0 only position 1 differs: patching it gives the clean run,
  -- patching any other position changes nothing
  for p = 0, T - 1 do
    check.near(r:get(0, p), p == 1 and clean or corrupt, 1e-5, "layer 0 position " .. p)
  end
  -- positions before the corrupted one see identical residuals at every layer
  check.near(r:get(1, 0), corrupt, 1e-5, "layer 1 position 0")
  against_single(r, function(i)
    return single(lt.act_name("resid_pre", div(i, T)), {positions = {i % T}})
  end, "resid_pre", 2)
end

function tests.attn_out_mlp_out_and_resid_mid()
  local m = model()
  local cache = setup()
  for _, kind in ipairs({"attn_out", "mlp_out", "resid_mid"}) do
    local r = lt.patching["get_act_patch_" .. kind](m, CORRUPT, cache, logit_diff)
    check.eq(table.concat(r.shape, ","), m.cfg.n_layer .. "," .. T, kind .. " shape")
    against_single(r, function(i) return single(lt.act_name(kind, div(i, T)), {positions = {i % T}}) end, kind, 3)
  end
end

function tests.head_outputs_all_positions_and_by_position()
  local m = model()
  local cache = setup()
  local H = m.cfg.n_head
  local all = lt.patching.get_act_patch_attn_head_out_all_pos(m, CORRUPT, cache, logit_diff)
  check.eq(table.concat(all.shape, ","), m.cfg.n_layer .. "," .. H, "all_pos shape [n_layer, n_head]")
  against_single(all, function(i) return single(lt.act_name("z", div(i, H)), {heads = {i % H}}) end, "head out all_pos")
  local by = lt.patching.get_act_patch_attn_head_out_by_pos(m, CORRUPT, cache, logit_diff)
  check.eq(table.concat(by.shape, ","), m.cfg.n_layer .. "," .. T .. "," .. H, "by_pos shape [n_layer, T, n_head]")
  against_single(by, function(i)
    local l, p, h = div(i, T * H), div(i, H) % T, i % H
    return single(lt.act_name("z", l), {heads = {h}, positions = {p}})
  end, "head out by_pos", 5)
  -- before position 1 nothing differs between the runs
  local _, _, corrupt = setup()
  for l = 0, m.cfg.n_layer - 1 do
    for h = 0, H - 1 do check.near(by:get(l, 0, h), corrupt, 1e-5, "position 0 is unchanged") end
  end
end

function tests.every_and_chunking()
  local m = model()
  local cache = setup()
  local every = lt.patching.get_act_patch_block_every(m, CORRUPT, cache, logit_diff)
  check.eq(table.concat(every.shape, ","), "3," .. m.cfg.n_layer .. "," .. T, "block_every shape")
  local resid = lt.patching.get_act_patch_resid_pre(m, CORRUPT, cache, logit_diff, {batch_size = 5})
  check.eq(every:select(0):max_abs_diff(resid), 0, "chunks of 5 give the same values")
  local heads = lt.patching.get_act_patch_attn_head_all_pos_every(m, CORRUPT, cache, logit_diff, {batch_size = 3})
  check.eq(table.concat(heads.shape, ","), "5," .. m.cfg.n_layer .. "," .. m.cfg.n_head, "all_pos_every shape")
  -- a budget too small for two rows: one patch per forward pass
  local one = lt.patching.get_act_patch_attn_head_out_all_pos(m, CORRUPT, cache, logit_diff, {max_bytes = 1})
  check.truthy(heads:select(0):max_abs_diff(one) <= 1e-5, "one patch per forward")
  against_single(heads:select(4), function(i)
    return single(lt.act_name("pattern", div(i, m.cfg.n_head)), {heads = {i % m.cfg.n_head}})
  end, "pattern all_pos")
  -- patching from the corrupted run's own cache changes nothing
  local _, own = m:run_with_cache(CORRUPT, {names = function(n) return n:find("hook_v") end})
  local same = lt.patching.get_act_patch_attn_head_v_all_pos(m, CORRUPT, own, logit_diff)
  local _, _, corrupt = setup()
  for i = 0, same.numel - 1 do check.near(same.data[i], corrupt, 1e-5, "self patch") end
end

function tests.errors()
  local m = model()
  local cache = setup()
  local _, partial = m:run_with_cache(CLEAN, {names = "blocks.0.hook_resid_pre"})
  check.raises(function() lt.patching.get_act_patch_resid_pre(m, CORRUPT, partial, logit_diff) end,
    "blocks.1.hook_resid_pre is not in the clean cache")
  local short = {unpack(CORRUPT, 1, 10)}
  check.raises(function() lt.patching.get_act_patch_mlp_out(m, short, cache, logit_diff) end,
    "the clean run has 14 positions, the corrupted prompt 10")
  check.raises(function() lt.patching.get_act_patch_mlp_out(m, CORRUPT, cache, function() return "x" end) end,
    "the metric must return a number")
  check.raises(function() lt.patching.get_act_patch_mlp_out(m, {CORRUPT, CORRUPT}, cache, logit_diff) end,
    "must be one prompt")
  local _, batched = m:run_with_cache({CLEAN, CLEAN}, {names = "blocks.0.hook_mlp_out"})
  check.raises(function() lt.patching.get_act_patch_mlp_out(m, CORRUPT, batched, logit_diff) end,
    "single prompt")
  -- nothing stays attached after a failed patching run
  local _, _, corrupt = setup()
  check.eq(logit_diff(m:forward(CORRUPT)), corrupt, "plain run unchanged")
end

return tests
