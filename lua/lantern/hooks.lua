-- lantern.hooks: attaching Lua hook functions and built-in interventions to
-- a run's hook points, running the forward pass and collecting captures.
--
-- Lua functions are called from C through one FFI callback shared by all
-- models (callback slots are a scarce resource in LuaJIT); the callback
-- looks up the function by the integer key passed as user data.
local ffi = require("ffi")
local jit = require("jit")
local F = require("lantern.ffi")
local Tensor = require("lantern.tensor")
local C = F.C

local M = {}

local registry = {}    -- key -> {fn, name, ctx}
local next_key = 1

local function dispatch(ud, point, view)
  local key = tonumber(ffi.cast("intptr_t", ud))
  local entry = registry[key]
  if not entry then return 1 end
  local ctx = entry.ctx
  local shape = {}
  local first = ctx.batched and 0 or 1    -- a single prompt drops the batch dimension
  for i = first, view.ndim - 1 do shape[#shape + 1] = tonumber(view.shape[i]) end
  local act = Tensor.wrap(view.data, shape, nil)
  local ok, res = pcall(entry.fn, act, entry.hook)
  local status = 0
  if not ok then
    ctx.error = string.format("hook %s: %s", entry.hook.name, tostring(res))
    status = 1
  elseif res ~= nil then
    if not Tensor.is(res) or res.numel ~= act.numel then
      ctx.error = string.format("hook %s: returned value must be a Tensor with %d elements", entry.hook.name, act.numel)
      status = 1
    elseif res.data ~= view.data then    -- returning act itself (or a view of it) needs no copy
      ffi.copy(view.data, res.data, act.numel * 4)
    end
  end
  act.data = nil                           -- the view is only valid inside the hook
  return status
end

local callback = ffi.cast("lt_hook_fn", dispatch)

-- A context for one forward pass of model m with batch shape (B, T).
function M.context(m, B, T, batched)
  return {model = m, B = B, T = T, batched = batched, keys = {}, keep = {}}
end

local function hook_info(m, point, name)
  return {name = name, point = point, layer = C.lt_hook_layer(m.ptr, point)}
end

-- Attaches a list of {name, fn} (or {name = , fn = }) to ctx's run.
function M.attach(ctx, list)
  local m = ctx.model
  for i, h in ipairs(list) do
    local name, fn = h[1] or h.name, h[2] or h.fn
    if type(name) ~= "string" then error(string.format("hook %d: expected {name, fn}", i), 0) end
    local point = C.lt_hook_find(m.ptr, name)
    if point < 0 then error(F.last_error(), 0) end
    local canonical = ffi.string(C.lt_hook_name(m.ptr, point))
    if type(fn) == "table" and fn.attach then
      fn:attach(ctx, point, canonical)
    elseif type(fn) == "function" then
      local key = next_key
      next_key = next_key + 1
      registry[key] = {fn = fn, hook = hook_info(m, point, canonical), ctx = ctx}
      ctx.keys[#ctx.keys + 1] = key
      F.check(C.lt_run_add_callback(m.run, point, callback, ffi.cast("void *", key)), "hook " .. canonical)
    else
      error(string.format("hook %s: expected a function or an intervention (lt.ablate.*)", canonical), 0)
    end
  end
end

-- Removes everything attached for ctx.
function M.detach(ctx)
  C.lt_run_clear_hooks(ctx.model.run)
  for _, key in ipairs(ctx.keys) do registry[key] = nil end
  ctx.keys, ctx.keep = {}, {}
end

-- The forward pass (not JIT-compiled: C calls back into Lua from inside it,
-- which LuaJIT allows only from interpreted code). Returns logits.
function M.forward(ctx, ids, B, T, opts)
  local m = ctx.model
  local out = ffi.new("float *[1]")
  local rc = C.lt_forward(m.run, ids, B, T, out)
  if rc ~= 0 then error(ctx.error or F.last_error(), 0) end
  if out[0] == nil then return nil end    -- stopped before the logits (stop_at_layer)
  local V = m.cfg.d_vocab
  local shape = ctx.batched and {B, T, V} or {T, V}
  if opts and opts.no_logits then return nil end
  local logits = Tensor.zeros(shape)
  ffi.copy(logits.data, out[0], B * T * V * 4)
  return logits
end
jit.off(M.forward)

-- Takes the captured activations: name -> Tensor (owned by Lua).
function M.take_captures(ctx, points)
  local m, out = ctx.model, {}
  local v = ffi.new("lt_view")
  for point in pairs(points) do
    local rc = C.lt_run_take_capture(m.run, point, v)
    -- points after a stop (stop_at_layer) were never computed: not in the cache
    if rc ~= 0 and ctx.stop_at_layer then goto next_point end
    F.check(rc, "capture")
    local shape = {}
    for i = ctx.batched and 0 or 1, v.ndim - 1 do shape[#shape + 1] = tonumber(v.shape[i]) end
    out[ffi.string(C.lt_hook_name(m.ptr, point))] = Tensor.wrap(v.data, shape, nil, true)
    ::next_point::
  end
  return out
end

-- The set of point ids selected by names: nil (every point but
-- attn.hook_result, which TransformerLens also computes only on request),
-- a name, a list of names, or a predicate function(name).
function M.select_points(m, names)
  local set = {}
  local n = C.lt_hook_count(m.ptr)
  if names == nil or type(names) == "function" then
    for p = 0, n - 1 do
      local name = ffi.string(C.lt_hook_name(m.ptr, p))
      local want
      if names == nil then want = not name:find("hook_result", 1, true) else want = names(name) end
      if want then set[p] = true end
    end
    return set
  end
  if type(names) == "string" then names = {names} end
  for _, name in ipairs(names) do
    local p = C.lt_hook_find(m.ptr, name)
    if p < 0 then error(F.last_error(), 3) end
    set[p] = true
  end
  return set
end

function M.new_cache(m, captured, batched)
  return require("lantern.cache").new(m, captured, batched)
end

return M
