-- lantern.ablate: built-in interventions, usable wherever a hook function
-- is (run_with_hooks, m:hooks, run_with_cache{hooks=}). They run in C, so a
-- sweep of many ablations never calls back into Lua per element.
--
--   lt.ablate.zero{heads = {2}, positions = {-1}}
--   lt.ablate.set{value = 1.5, neurons = {17}}
--   lt.ablate.scale{factor = 0.5}
--   lt.ablate.add{vector = v}                 (steering; or value = x)
--   lt.ablate.patch{from = clean_cache, neurons = {17, 40}}
--   lt.ablate.resample{from = other_cache}    (patch from another prompt)
--   lt.ablate.mean{from = cache, over_positions = false}
--
-- Selections (all optional; 0-based; every element when absent):
--   positions  positions (negative from the end); for attn_scores and
--              pattern, query positions
--   heads      heads (only at points with a head dimension)
--   neurons / indices   entries of the last dimension (neurons, d_model,
--              d_head, or key positions of a pattern)
--   batch_row  only this row of a batched run (0-based), for sweeps
local ffi = require("ffi")
local F = require("lantern.ffi")
local Tensor = require("lantern.tensor")
local C = F.C

local M = {}

local Intervention = {}
Intervention.__index = Intervention

local function int_array(ctx, list, what)
  if list == nil then return nil, 0 end
  if type(list) == "number" then list = {list} end
  if type(list) ~= "table" then error(what .. " must be a list of integers", 0) end
  local arr = ffi.new("int32_t[?]", math.max(#list, 1))
  for i, v in ipairs(list) do
    if type(v) ~= "number" or v ~= math.floor(v) then error(what .. " must be a list of integers", 0) end
    arr[i - 1] = v
  end
  ctx.keep[#ctx.keep + 1] = arr
  return arr, #list
end

-- Shape of one batch row of a point's activation (Lua array).
local function row_shape(ctx, point)
  local v = ffi.new("lt_view")
  F.check(C.lt_hook_shape(ctx.model.ptr, point, ctx.B, ctx.T, v), "shape")
  local s = {}
  for i = 1, v.ndim - 1 do s[i] = tonumber(v.shape[i]) end
  return s
end

local function numel(shape)
  local n = 1
  for i = 1, #shape do n = n * shape[i] end
  return n
end

-- The tensor a source option names for this hook point: a Tensor, or a
-- cache holding the point.
local function source_tensor(from, name)
  if Tensor.is(from) then return from, nil end
  if type(from) == "table" and from.get_tensor then
    local t = from:get_tensor(name)
    if not t then error(string.format("%s is not in the source cache", name), 0) end
    return t, from.batched
  end
  error("'from' must be a cache or a Tensor", 0)
end

local function is_attention_map(name)
  return name:find("hook_pattern", 1, true) or name:find("hook_attn_scores", 1, true)
end

-- Mean over the batch rows of src (one row when src is unbatched): a row
-- shaped tensor, then over positions too when asked.
local function mean_source(src, rows, rshape, name, over_positions)
  local rn = numel(rshape)
  if src.numel ~= rows * rn then
    error(string.format("%s: mean source has %d elements, expected a multiple of %d", name, src.numel, rn), 0)
  end
  local mean = Tensor.zeros(rshape)
  for r = 0, rows - 1 do
    for i = 0, rn - 1 do mean.data[i] = mean.data[i] + src.data[r * rn + i] end
  end
  for i = 0, rn - 1 do mean.data[i] = mean.data[i] / rows end
  if not over_positions then return mean, 1 end
  -- average over the position dimension: dim 2 of [H, Tq, Tk], else dim 1
  local outer, P, inner
  if is_attention_map(name) then outer, P, inner = rshape[1], rshape[2], rshape[3]
  else outer, P, inner = 1, rshape[1], rn / rshape[1] end
  local out = Tensor.zeros({outer * inner})
  for o = 0, outer - 1 do
    for p = 0, P - 1 do
      for i = 0, inner - 1 do
        out.data[o * inner + i] = out.data[o * inner + i] + mean.data[(o * P + p) * inner + i]
      end
    end
  end
  for i = 0, outer * inner - 1 do out.data[i] = out.data[i] / P end
  return out, 0
end

function Intervention:attach(ctx, point, name)
  local o = self.opts
  local iv = ffi.new("lt_intervention")
  iv.op = self.op
  iv.batch_row = o.batch_row or -1
  iv.positions, iv.n_positions = int_array(ctx, o.positions or o.position, "positions")
  iv.heads, iv.n_heads = int_array(ctx, o.heads or o.head, "heads")
  iv.indices, iv.n_indices = int_array(ctx, o.neurons or o.indices or o.neuron, "neurons")
  iv.value = o.value or o.factor or 0
  local rshape = row_shape(ctx, point)
  if self.op == C.LT_IV_PATCH then
    local src = source_tensor(o.from, name)
    local rn = numel(rshape)
    if src.numel ~= rn and src.numel ~= rn * ctx.B then
      error(string.format("%s: patch source has %d elements; one row has %d and the run has %d rows",
        name, src.numel, rn, ctx.B), 0)
    end
    iv.src, iv.src_rows = src.data, src.numel / rn
    ctx.keep[#ctx.keep + 1] = src
  elseif self.op == C.LT_IV_MEAN then
    local src, batched = source_tensor(o.from, name)
    local rn = numel(rshape)
    local rows = batched == false and 1 or src.numel / rn
    if rows ~= math.floor(rows) then
      error(string.format("%s: mean source has %d elements, not a multiple of one row (%d)", name, src.numel, rn), 0)
    end
    local mean, per_position = mean_source(src, rows, rshape, name, o.over_positions)
    iv.src, iv.src_per_position = mean.data, per_position
    ctx.keep[#ctx.keep + 1] = mean
  elseif self.op == C.LT_IV_ADD and o.vector then
    local v = Tensor.is(o.vector) and o.vector or Tensor.new(o.vector)
    iv.vec, iv.vec_len = v.data, v.numel
    ctx.keep[#ctx.keep + 1] = v
  end
  F.check(C.lt_run_add_intervention(ctx.model.run, point, iv), "intervention at " .. name)
end

local function make(op, check)
  return function(opts)
    opts = opts or {}
    if check then check(opts) end
    return setmetatable({op = op, opts = opts}, Intervention)
  end
end

M.zero = make(C.LT_IV_ZERO)
M.set = make(C.LT_IV_SET, function(o) assert(type(o.value) == "number", "lt.ablate.set needs value") end)
M.scale = make(C.LT_IV_SCALE, function(o) assert(type(o.factor or o.value) == "number", "lt.ablate.scale needs factor") end)
M.add = make(C.LT_IV_ADD, function(o)
  assert(o.vector or type(o.value) == "number", "lt.ablate.add needs vector or value")
end)
M.patch = make(C.LT_IV_PATCH, function(o) assert(o.from, "lt.ablate.patch needs from (a cache or Tensor)") end)
M.resample = make(C.LT_IV_PATCH, function(o) assert(o.from, "lt.ablate.resample needs from (another prompt's cache)") end)
M.mean = make(C.LT_IV_MEAN, function(o) assert(o.from, "lt.ablate.mean needs from (a cache or Tensor)") end)

function M.is(x) return getmetatable(x) == Intervention end

return M
