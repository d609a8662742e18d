-- lantern.sae: sparse autoencoders (core/src/sae.c) from Lua.
--
--   local lt = require("lantern")
--   local sae = lt.sae.load("path/to/saelens-dir")     -- cfg.json + sae_weights.safetensors
--   local m = lt.load("store/models/toy", sae:model_load_opts())
--   sae:check_model(m)                                  -- hook point exists, widths agree
--   local _, cache = m:run_with_cache(ids)
--   local z = sae:encode(cache[sae.hook_name])          -- [..., d_in] -> [..., d_sae]
--   local x_hat = sae:decode(z)
--
-- Shapes, activation functions and the file format: docs/sae.md. Every
-- failure is a Lua error carrying the C library's message.
local ffi = require("ffi")
local F = require("lantern.ffi")
local Tensor = require("lantern.tensor")
local C = F.C

local M = {}

local SAE = {}
SAE.__index = SAE
M.SAE = SAE

-- Architecture names as in SAELens's cfg.json; "relu" is accepted as an
-- alias of "standard".
local arch_names = {[C.LT_SAE_RELU] = "standard", [C.LT_SAE_TOPK] = "topk", [C.LT_SAE_JUMPRELU] = "jumprelu"}
local arch_ids = {standard = C.LT_SAE_RELU, relu = C.LT_SAE_RELU, topk = C.LT_SAE_TOPK, jumprelu = C.LT_SAE_JUMPRELU}

local function opt_string(p)
  if p == nil then return nil end
  return ffi.string(p)
end

-- Re-reads the plain fields from C (after load, new or a setter).
function SAE:_refresh()
  local p = self.ptr
  self.d_in = tonumber(C.lt_sae_d_in(p))
  self.d_sae = tonumber(C.lt_sae_d_sae(p))
  self.architecture = arch_names[C.lt_sae_architecture(p)]
  self.k = self.architecture == "topk" and C.lt_sae_k(p) or nil
  self.apply_b_dec_to_input = C.lt_sae_apply_b_dec_to_input(p) ~= 0
  self.normalize_activations = ffi.string(C.lt_sae_normalize_activations(p))
  self.hook_name = opt_string(C.lt_sae_hook_name(p))
  self.model_name = opt_string(C.lt_sae_model_name(p))
  local out = ffi.new("char *[1]")
  F.check(C.lt_sae_cfg_json(p, out), "sae")
  local text = ffi.string(out[0])
  C.lt_free(out[0])
  self.cfg = require("lantern.store").json.decode(text)
end

local function wrap(ptr)
  local s = setmetatable({}, SAE)
  s.ptr = ffi.gc(ptr, C.lt_sae_free)
  s:_refresh()
  return s
end

-- Loads a SAELens directory (cfg.json + sae_weights.safetensors). opts:
--   norm_scaling_factor  a number folded into the weights, for releases
--                        with normalize_activations "expected_average_only_in"
--                        whose factor is published outside the directory.
function M.load(dir, opts)
  assert(type(dir) == "string", "sae.load: expected a directory path")
  local out = ffi.new("lt_sae *[1]")
  F.check(C.lt_sae_load(dir, out), "sae.load")
  local s = wrap(out[0])
  s.dir = dir
  if opts and opts.norm_scaling_factor then
    F.check(C.lt_sae_fold_norm_scaling_factor(s.ptr, opts.norm_scaling_factor), "sae.load")
    s:_refresh()
  end
  return s
end

-- A new SAE with random weights: W_dec rows are Gaussian directions of unit
-- norm, W_enc = W_dec^T, zero biases (and thresholds). spec: d_in, d_sae
-- (required), architecture ("standard", "topk" or "jumprelu"; default
-- "standard"), k (TopK), hook_name, model_name, seed (default 0),
-- apply_b_dec_to_input (default true), normalize_activations (default
-- "none").
function M.new(spec)
  assert(type(spec) == "table", "sae.new: expected a table {d_in = ..., d_sae = ...}")
  local arch = arch_ids[spec.architecture or "standard"]
  if not arch then
    error(string.format("sae.new: unknown architecture '%s' (standard, topk, jumprelu)", tostring(spec.architecture)), 2)
  end
  if type(spec.d_in) ~= "number" or type(spec.d_sae) ~= "number" then
    error("sae.new: d_in and d_sae must be numbers", 2)
  end
  if arch == C.LT_SAE_TOPK and type(spec.k) ~= "number" then error("sae.new: a topk SAE needs k", 2) end
  local out = ffi.new("lt_sae *[1]")
  F.check(C.lt_sae_new(spec.d_in, spec.d_sae, arch, spec.k or 0, out), "sae.new")
  local p = ffi.gc(out[0], C.lt_sae_free)
  F.check(C.lt_sae_init_random(p, spec.seed or 0), "sae.new")
  if spec.hook_name then F.check(C.lt_sae_set_hook_name(p, spec.hook_name), "sae.new") end
  if spec.model_name then F.check(C.lt_sae_set_model_name(p, spec.model_name), "sae.new") end
  if spec.apply_b_dec_to_input == false then F.check(C.lt_sae_set_apply_b_dec_to_input(p, 0), "sae.new") end
  if spec.normalize_activations then
    F.check(C.lt_sae_set_normalize_activations(p, spec.normalize_activations), "sae.new")
  end
  local s = setmetatable({ptr = p}, SAE)
  s:_refresh()
  return s
end

function SAE:__tostring()
  return string.format("SAE(%s, d_in=%d, d_sae=%d%s, hook=%s)", self.architecture, self.d_in, self.d_sae,
                       self.k and (", k=" .. self.k) or "", self.hook_name or "?")
end

-- Setters that keep C and the Lua fields in step.
function SAE:set_hook_name(name)
  F.check(C.lt_sae_set_hook_name(self.ptr, name), "sae")
  self:_refresh()
  return self
end

function SAE:set_model_name(name)
  F.check(C.lt_sae_set_model_name(self.ptr, name), "sae")
  self:_refresh()
  return self
end

function SAE:set_apply_b_dec_to_input(on)
  F.check(C.lt_sae_set_apply_b_dec_to_input(self.ptr, on and 1 or 0), "sae")
  self:_refresh()
  return self
end

-- A writable view of "W_enc" [d_in, d_sae], "b_enc" [d_sae], "W_dec"
-- [d_sae, d_in], "b_dec" [d_in] or "threshold" [d_sae] (JumpReLU). The view
-- keeps the SAE alive.
function SAE:param(name)
  local v = ffi.new("lt_view")
  F.check(C.lt_sae_param(self.ptr, name, v), "sae:param")
  local shape = {}
  for i = 0, v.ndim - 1 do shape[i + 1] = tonumber(v.shape[i]) end
  return Tensor.wrap(v.data, shape, self.ptr)
end

-- The rows of x ([..., width]) and a shape for the output with the last
-- dimension replaced.
local function rows_of(x, width, out_width, what)
  if not Tensor.is(x) then x = Tensor.new(x) end
  local nd = #x.shape
  if nd == 0 or x.shape[nd] ~= width then
    error(string.format("sae:%s: expected a tensor [..., %d], got [%s]", what, width, table.concat(x.shape, ", ")), 3)
  end
  local shape = {}
  for i = 1, nd - 1 do shape[i] = x.shape[i] end
  shape[nd] = out_width
  return x, x.numel / width, shape
end

-- Latents z [..., d_sae] of x [..., d_in]. With opts.pre = true, also the
-- pre-activations (second result).
function SAE:encode(x, opts)
  local n, shape
  x, n, shape = rows_of(x, self.d_in, self.d_sae, "encode")
  local z = Tensor.zeros(shape)
  local pre = opts and opts.pre and Tensor.zeros(shape) or nil
  F.check(C.lt_sae_encode(self.ptr, x.data, n, pre and pre.data or nil, z.data), "sae:encode")
  return z, pre
end

-- Reconstruction x_hat [..., d_in] = z W_dec + b_dec of z [..., d_sae].
function SAE:decode(z)
  local n, shape
  z, n, shape = rows_of(z, self.d_sae, self.d_in, "decode")
  local x_hat = Tensor.zeros(shape)
  F.check(C.lt_sae_decode(self.ptr, z.data, n, x_hat.data), "sae:decode")
  return x_hat
end

-- Encode then decode: x_hat [..., d_in] and z [..., d_sae], with the
-- constant_norm_rescale normalisation undone on x_hat.
function SAE:forward(x)
  local n, shape
  x, n, shape = rows_of(x, self.d_in, self.d_sae, "forward")
  local z, x_hat = Tensor.zeros(shape), Tensor.zeros(x.shape)
  F.check(C.lt_sae_forward(self.ptr, x.data, n, z.data, x_hat.data), "sae:forward")
  return x_hat, z
end

-- Writes the SAELens directory (created with its parents if needed).
function SAE:save(dir)
  F.check(C.lt_sae_save(self.ptr, dir), "sae:save")
  return self
end

-- Options for lt.load that reproduce the weight processing the SAE was
-- trained with: SAELens loads its model without processing plus the
-- metadata's model_from_pretrained_kwargs, so only the flags named there are
-- turned on (TransformerLens names: fold_ln, center_writing_weights,
-- center_unembed, fold_value_biases). extra (optional) is merged in.
function SAE:model_load_opts(extra)
  local cfg = self.cfg or {}
  local meta = type(cfg.metadata) == "table" and cfg.metadata or {}
  local kw = meta.model_from_pretrained_kwargs
  if type(kw) ~= "table" then kw = cfg.model_from_pretrained_kwargs end
  local opts = {}
  if type(kw) == "table" then
    for _, name in ipairs({"fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases"}) do
      if kw[name] ~= nil then opts[name] = kw[name] == true end
    end
  end
  for k, v in pairs(extra or {}) do opts[k] = v end
  return opts
end

-- Checks that the SAE fits model m: its hook_name is a hook point of m and
-- the activation's width there (last dimension; heads times d_head for
-- SAELens "hook_z" SAEs) equals d_in. Returns the hook point id; raises a
-- clear error otherwise.
function SAE:check_model(m)
  if not self.hook_name then
    error("sae:check_model: the SAE has no hook_name (set one with sae:set_hook_name)", 2)
  end
  local point = C.lt_hook_find(m.ptr, self.hook_name)
  if point < 0 then
    error(string.format("sae:check_model: the SAE's hook point '%s' is not in model %s: %s",
                        self.hook_name, tostring(m.name), F.last_error()), 2)
  end
  local v = ffi.new("lt_view")
  F.check(C.lt_hook_shape(m.ptr, point, 1, 1, v), "sae:check_model")
  local width = tonumber(v.shape[v.ndim - 1])
  local dims = "width"
  if self.cfg and self.cfg.reshape_activations == "hook_z" and v.ndim >= 3 then
    width = width * tonumber(v.shape[v.ndim - 2])
    dims = "n_head * d_head"
  end
  if width ~= self.d_in then
    error(string.format("sae:check_model: the SAE's d_in = %d does not match the %s %d of %s in model %s",
                        self.d_in, dims, width, self.hook_name, tostring(m.name)), 2)
  end
  return point
end

-- Training and metrics (lua/lantern/sae_train.lua, docs/sae.md).
M.train = function(...) return require("lantern.sae_train").train(...) end
M.evaluate = function(...) return require("lantern.sae_train").evaluate(...) end
M.format_report = function(...) return require("lantern.sae_train").format_report(...) end
function SAE:evaluate(m, data, opts) return require("lantern.sae_train").evaluate(self, m, data, opts) end

return M
