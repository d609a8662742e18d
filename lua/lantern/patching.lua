-- lantern.patching: activation patching, as in TransformerLens's patching
-- module. Each function runs the corrupted prompt once per patch, with one
-- activation (a layer and position, or a head) replaced by its value from
-- the clean run, and returns a Tensor of metric values:
--
--   local _, clean_cache = m:run_with_cache(clean_ids)
--   local function logit_diff(logits) return logits:get(-1, mary) - logits:get(-1, john) end
--   local r = lt.patching.get_act_patch_resid_pre(m, corrupted_ids, clean_cache, logit_diff)
--   -- r: [n_layer, T]; r:get(l, p) is the metric with resid_pre of layer l
--   -- at position p taken from the clean run
--
-- The patches run batched: many patches form one forward pass, one batch
-- row each (the corrupted ids repeated, a built-in patch intervention
-- restricted to its row), in chunks that bound the memory. The metric is a
-- Lua function of one row's logits [T, d_vocab] returning a number; it is
-- called once per patch. The clean cache comes from a single prompt of the
-- same length as the corrupted one.
--
-- opts (last argument of every function, optional): batch_size (patches per
-- forward pass; default from max_bytes), max_bytes (memory budget of one
-- chunk, default 256 MiB).
local lt_ablate = require("lantern.ablate")
local names = require("lantern.names")
local Tensor = require("lantern.tensor")

local M = {}

-- Patches per forward pass: as many batch rows as fit in the budget. A row
-- costs its logits twice (the run's buffer and the Lua copy), the residual
-- stream of every layer, one block's activations (the run reuses them
-- across layers) and the attention maps.
local function chunk_rows(m, T, opts)
  if opts.batch_size then
    assert(opts.batch_size >= 1 and opts.batch_size == math.floor(opts.batch_size), "batch_size must be a positive integer")
    return opts.batch_size
  end
  local c = m.cfg
  local floats = T * (2 * c.d_vocab + (c.n_layer + 14) * c.n_embd + 2 * c.d_mlp) + 2 * c.n_head * T * T
  local budget = opts.max_bytes or 256 * 1024 * 1024
  return math.max(1, math.min(256, math.floor(budget / (4 * floats))))
end

local function metric_value(v, what)
  if type(v) == "number" then return v end
  if Tensor.is(v) and v.numel == 1 then return v.data[0] end
  error(string.format("patching: the metric must return a number (got %s for %s)", type(v), what), 0)
end

-- The corrupted prompt as a Lua array of ids (text goes through the
-- model's tokenizer).
local function prompt_ids(m, x)
  if type(x) == "string" then x = m:to_tokens(x) end
  if type(x) ~= "table" or type(x[1]) ~= "number" then
    error("patching: the corrupted input must be one prompt (text or a list of token ids)", 0)
  end
  return x
end

-- Runs jobs (each {name, heads, positions}) as patches from clean_cache
-- into the corrupted prompt; returns a Lua array of metric values.
local function run_jobs(m, ids, clean_cache, metric, jobs, opts)
  if clean_cache.batched then error("patching: the clean cache must come from a single prompt", 0) end
  local T = #ids
  local sources = {}
  for _, job in ipairs(jobs) do
    if not sources[job.name] then
      local src = clean_cache:get_tensor(job.name)
      if not src then error("patching: " .. job.name .. " is not in the clean cache", 0) end
      local src_T = job.name:find("hook_pattern", 1, true) and src.shape[2] or src.shape[1]
      if src_T ~= T then
        error(string.format("patching: the clean run has %d positions, the corrupted prompt %d", src_T, T), 0)
      end
      sources[job.name] = src
    end
  end
  local rows = chunk_rows(m, T, opts)
  local values = {}
  for first = 1, #jobs, rows do
    local last = math.min(#jobs, first + rows - 1)
    local batch, hooks = {}, {}
    for j = first, last do
      local job = jobs[j]
      batch[#batch + 1] = ids
      hooks[#hooks + 1] = {job.name, lt_ablate.patch{from = sources[job.name], batch_row = j - first,
        positions = job.positions, heads = job.heads}}
    end
    local logits = m:run_with_hooks(batch, hooks)
    for j = first, last do
      values[j] = metric_value(metric(logits:select(j - first)), jobs[j].name)
    end
  end
  return values
end

-- The patch grid of one activation kind. short: an lt.act_name short name
-- ("resid_pre", "attn_out", "z", "q", "pattern", ...); by: "pos" (one patch
-- per layer and position: [n_layer, T]), "head" (per layer and head, all
-- positions: [n_layer, n_head]) or "pos_head" (per layer, position and
-- head: [n_layer, T, n_head]).
function M.generic(m, corrupted, clean_cache, metric, short, by, opts)
  opts = opts or {}
  local ids = prompt_ids(m, corrupted)
  local L, H, T = m.cfg.n_layer, m.cfg.n_head, #ids
  local jobs, shape = {}, nil
  for l = 0, L - 1 do
    local name = names.act_name(short, l)
    if by == "pos" then
      for p = 0, T - 1 do jobs[#jobs + 1] = {name = name, positions = {p}} end
    elseif by == "head" then
      for h = 0, H - 1 do jobs[#jobs + 1] = {name = name, heads = {h}} end
    elseif by == "pos_head" then
      for p = 0, T - 1 do
        for h = 0, H - 1 do jobs[#jobs + 1] = {name = name, positions = {p}, heads = {h}} end
      end
    else
      error("patching: 'by' must be \"pos\", \"head\" or \"pos_head\"", 2)
    end
  end
  if by == "pos" then shape = {L, T} elseif by == "head" then shape = {L, H} else shape = {L, T, H} end
  local values = run_jobs(m, ids, clean_cache, metric, jobs, opts)
  local out = Tensor.zeros(shape)
  for i, v in ipairs(values) do out.data[i - 1] = v end
  return out
end

-- Residual stream and block outputs by layer and position: [n_layer, T].
function M.get_act_patch_resid_pre(m, corrupted, clean_cache, metric, opts)
  return M.generic(m, corrupted, clean_cache, metric, "resid_pre", "pos", opts)
end

function M.get_act_patch_resid_mid(m, corrupted, clean_cache, metric, opts)
  return M.generic(m, corrupted, clean_cache, metric, "resid_mid", "pos", opts)
end

function M.get_act_patch_attn_out(m, corrupted, clean_cache, metric, opts)
  return M.generic(m, corrupted, clean_cache, metric, "attn_out", "pos", opts)
end

function M.get_act_patch_mlp_out(m, corrupted, clean_cache, metric, opts)
  return M.generic(m, corrupted, clean_cache, metric, "mlp_out", "pos", opts)
end

-- Head outputs (hook_z, which is what each head writes through W_O) and the
-- head inputs q, k, v: over all positions [n_layer, n_head], or by position
-- [n_layer, T, n_head]. The pattern of a head over all positions.
local head_kinds = {out = "z", q = "q", k = "k", v = "v", pattern = "pattern"}
for kind, short in pairs(head_kinds) do
  M["get_act_patch_attn_head_" .. kind .. "_all_pos"] = function(m, corrupted, clean_cache, metric, opts)
    return M.generic(m, corrupted, clean_cache, metric, short, "head", opts)
  end
  if kind ~= "pattern" then
    M["get_act_patch_attn_head_" .. kind .. "_by_pos"] = function(m, corrupted, clean_cache, metric, opts)
      return M.generic(m, corrupted, clean_cache, metric, short, "pos_head", opts)
    end
  end
end

-- Stacks of tensors of one shape into [n, ...].
local function stack(list)
  local shape = {#list}
  for i, d in ipairs(list[1].shape) do shape[i + 1] = d end
  local out = Tensor.zeros(shape)
  for k, t in ipairs(list) do out:select(k - 1):copy_(t) end
  return out
end

-- resid_pre, attn_out and mlp_out together: [3, n_layer, T].
function M.get_act_patch_block_every(m, corrupted, clean_cache, metric, opts)
  return stack({
    M.get_act_patch_resid_pre(m, corrupted, clean_cache, metric, opts),
    M.get_act_patch_attn_out(m, corrupted, clean_cache, metric, opts),
    M.get_act_patch_mlp_out(m, corrupted, clean_cache, metric, opts),
  })
end

-- Head output, q, k, v and pattern over all positions: [5, n_layer, n_head].
function M.get_act_patch_attn_head_all_pos_every(m, corrupted, clean_cache, metric, opts)
  local list = {}
  for _, kind in ipairs({"out", "q", "k", "v", "pattern"}) do
    list[#list + 1] = M["get_act_patch_attn_head_" .. kind .. "_all_pos"](m, corrupted, clean_cache, metric, opts)
  end
  return stack(list)
end

return M
