-- lantern.cache: the activations of a run, indexed by hook name, with the
-- helpers of TransformerLens's ActivationCache (accumulated_resid,
-- decompose_resid, stack_head_results, apply_ln_to_stack, logit_attrs).
--
-- cache["blocks.0.mlp.hook_post"] is a Tensor ([T, ...] for one prompt,
-- [B, T, ...] for a batch); cache:get("post", 0) uses short names.
local ffi = require("ffi")
local F = require("lantern.ffi")
local Tensor = require("lantern.tensor")
local names = require("lantern.names")
local C = F.C

local Cache = {}

local methods = {}

Cache.__index = function(self, k)
  local m = methods[k]
  if m then return m end
  if type(k) == "string" then return rawget(self, "_t")[k] or methods.get_tensor(self, k) end
  return nil
end

function Cache.new(model, tensors, batched)
  return setmetatable({_t = tensors or {}, model = model, batched = batched}, Cache)
end

-- The tensor at a hook name (negative layers allowed), or nil.
function methods.get_tensor(self, name)
  local t = rawget(self, "_t")
  if t[name] then return t[name] end
  local p = C.lt_hook_find(self.model.ptr, name)
  if p < 0 then
    local grad = name:match("^(.*)_grad$")
    if grad then
      p = C.lt_hook_find(self.model.ptr, grad)
      if p >= 0 then return t[ffi.string(C.lt_hook_name(self.model.ptr, p)) .. "_grad"] end
    end
    return nil
  end
  return t[ffi.string(C.lt_hook_name(self.model.ptr, p))]
end

-- cache:get("pattern", 0) or cache:get("blocks.0.attn.hook_pattern").
function methods.get(self, name, layer, sub)
  local full = names.act_name(name, layer, sub)
  local t = self:get_tensor(full)
  if not t then error(full .. " is not in the cache (request it with run_with_cache{names=...})", 2) end
  return t
end

function methods.names(self)
  local out = {}
  for k in pairs(rawget(self, "_t")) do out[#out + 1] = k end
  table.sort(out)
  return out
end

function methods.set(self, name, tensor) rawget(self, "_t")[name] = tensor end

-- Stacks tensors of equal shape into [n, ...].
local function stack(list)
  local shape = {#list}
  for i = 1, #list[1].shape do shape[i + 1] = list[1].shape[i] end
  local out = Tensor.zeros(shape)
  local n = list[1].numel
  for i, t in ipairs(list) do
    if t.numel ~= n then error("stack: tensors of different sizes", 3) end
    ffi.copy(out.data + (i - 1) * n, t.data, n * 4)
  end
  return out
end

-- Residual stream before each layer (and in the middle of each layer with
-- incl_mid), then the final residual stream: [components, (B,) T, d_model]
-- and labels "0_pre", "0_mid", ..., "final_post". With apply_ln, each
-- component goes through ln_final using the cached scale (logit lens).
function methods.accumulated_resid(self, opts)
  opts = opts or {}
  local L = opts.layer or self.model.cfg.n_layer
  local list, labels = {}, {}
  for l = 0, L - 1 do
    list[#list + 1] = self:get("resid_pre", l)
    labels[#labels + 1] = l .. "_pre"
    if opts.incl_mid then
      list[#list + 1] = self:get("resid_mid", l)
      labels[#labels + 1] = l .. "_mid"
    end
  end
  if L == self.model.cfg.n_layer then
    list[#list + 1] = self:get("resid_post", L - 1)
    labels[#labels + 1] = "final_post"
  else
    list[#list + 1] = self:get("resid_pre", L)
    labels[#labels + 1] = L .. "_pre"
  end
  local s = stack(list)
  if opts.apply_ln then s = self:apply_ln_to_stack(s) end
  return s, labels
end

-- The residual stream's additive parts: embed, pos_embed, then each layer's
-- attn_out and mlp_out (mode "attn" or "mlp" keeps one kind):
-- [components, (B,) T, d_model] and labels.
function methods.decompose_resid(self, opts)
  opts = opts or {}
  local mode = opts.mode or "all"
  local L = opts.layer or self.model.cfg.n_layer
  local list, labels = {self:get("embed"), self:get("pos_embed")}, {"embed", "pos_embed"}
  for l = 0, L - 1 do
    if mode ~= "mlp" then list[#list + 1] = self:get("attn_out", l); labels[#labels + 1] = l .. "_attn_out" end
    if mode ~= "attn" then list[#list + 1] = self:get("mlp_out", l); labels[#labels + 1] = l .. "_mlp_out" end
  end
  local s = stack(list)
  if opts.apply_ln then s = self:apply_ln_to_stack(s) end
  return s, labels
end

-- Each head's output z_h W_O[h] (without b_O): [layers*heads, (B,) T,
-- d_model] and labels "L0H0", ... Uses attn.hook_result when cached, else
-- computes it from attn.hook_z and W_O.
function methods.stack_head_results(self, opts)
  opts = opts or {}
  local cfg = self.model.cfg
  local H, D, Cm = cfg.n_head, cfg.d_head, cfg.n_embd
  local one = opts.layer
  if one and one < 0 then one = one + cfg.n_layer end   -- negative layers count from the end
  local layers = one and {one} or nil
  if not layers then layers = {} for l = 0, cfg.n_layer - 1 do layers[#layers + 1] = l end end
  local list, labels = {}, {}
  for _, l in ipairs(layers) do
    local res = self:get_tensor(names.act_name("result", l))
    local z = res == nil and self:get("z", l) or nil
    local w = self.model:param(string.format("h.%d.attn.c_proj.weight", l))
    local rows = (res or z).numel / ((res and H * Cm) or (H * D))   -- (B*)T
    local outer = {}
    for i = 1, #(res or z).shape - 2 do outer[i] = (res or z).shape[i] end
    for h = 0, H - 1 do
      local shape = {unpack(outer)}
      shape[#shape + 1] = Cm
      local out = Tensor.zeros(shape)
      for r = 0, rows - 1 do
        local o = out.data + r * Cm
        if res then
          ffi.copy(o, res.data + (r * H + h) * Cm, Cm * 4)
        else
          local zr = z.data + r * H * D + h * D
          for d = 0, D - 1 do
            local zv, wr = zr[d], w.data + (h * D + d) * Cm
            for c = 0, Cm - 1 do o[c] = o[c] + zv * wr[c] end
          end
        end
      end
      list[#list + 1] = out
      labels[#labels + 1] = string.format("L%dH%d", l, h)
    end
  end
  local s = stack(list)
  if opts.apply_ln then s = self:apply_ln_to_stack(s) end
  return s, labels
end

-- Applies a LayerNorm to a stack of residual components [n, (B,) T, C]
-- using the cached scale (ln_final by default, or blocks.layer.ln1):
-- centre each vector over d_model, divide by the cached scale.
function methods.apply_ln_to_stack(self, s, layer)
  local scale = layer and self:get("scale", layer, "ln1") or self:get("ln_final.hook_scale")
  local Cm = self.model.cfg.n_embd
  local rows = scale.numel
  local n = s.shape[1]
  local out = Tensor.zeros(s.shape)
  for k = 0, n - 1 do
    for r = 0, rows - 1 do
      local x, o = s.data + (k * rows + r) * Cm, out.data + (k * rows + r) * Cm
      local mean = 0
      for c = 0, Cm - 1 do mean = mean + x[c] end
      mean = mean / Cm
      local inv = 1 / scale.data[r]
      for c = 0, Cm - 1 do o[c] = (x[c] - mean) * inv end
    end
  end
  return out
end

-- Dot products of a stack [n, (B,) T, C] at one position (default the last)
-- with unembedding directions: W_U[:, token] (minus W_U[:, incorrect] when
-- given). tokens: an id or a list with one id per batch row. Returns
-- [n] (one prompt) or [n, B].
function methods.logit_attrs(self, s, tokens, incorrect, opts)
  opts = opts or {}
  local Cm = self.model.cfg.n_embd
  local T = s.shape[#s.shape - 1]
  local pos = opts.position or -1
  if pos < 0 then pos = pos + T end
  local n = s.shape[1]
  local B = (#s.shape == 4) and s.shape[2] or 1
  local function list(x) return type(x) == "table" and x or {x} end
  tokens = list(tokens)
  incorrect = incorrect and list(incorrect)
  local W = self.model:param("lm_head.weight")
  local out = Tensor.zeros(B > 1 and {n, B} or {n})
  for k = 0, n - 1 do
    for b = 0, B - 1 do
      local x = s.data + ((k * B + b) * T + pos) * Cm
      local t = tokens[math.min(b + 1, #tokens)]
      local u = W.data + t * Cm
      local acc = 0
      for c = 0, Cm - 1 do acc = acc + x[c] * u[c] end
      if incorrect then
        local ui = W.data + incorrect[math.min(b + 1, #incorrect)] * Cm
        for c = 0, Cm - 1 do acc = acc - x[c] * ui[c] end
      end
      out.data[k * B + b] = acc
    end
  end
  return out
end

return Cache
