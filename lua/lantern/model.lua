-- lantern.model: a loaded GPT-2 model and its runs: forward, loss,
-- generation, run_with_cache and run_with_hooks (TransformerLens names).
local ffi = require("ffi")
local F = require("lantern.ffi")
local Tensor = require("lantern.tensor")
local hooks = require("lantern.hooks")
local C = F.C

local Model = {}
Model.__index = Model

local file_exists = require("lantern.files").exists

local function wrap(ptr, opts, dir)
  local m = setmetatable({}, Model)
  local run = ffi.new("lt_run *[1]")
  local rc = C.lt_run_new(ptr, run)
  if rc ~= 0 then C.lt_model_free(ptr) end
  F.check(rc, "run")
  -- One finalizer frees the run, then the model: lt_run_free reads its
  -- model, and separate finalizers run in no fixed order (at exit, LuaJIT
  -- calls them all in table order), which could free the model first.
  m.run = run[0]
  m.ptr = ffi.gc(ptr, function(p)
    C.lt_run_free(run[0])
    C.lt_model_free(p)
  end)
  local c = C.lt_model_config(ptr)
  m.cfg = {
    n_layer = c.n_layer, n_head = c.n_head, n_embd = c.n_embd, d_model = c.n_embd, d_head = c.d_head,
    d_mlp = c.d_mlp, n_ctx = c.n_ctx, d_vocab = c.d_vocab, ln_eps = c.ln_eps,
  }
  m.dir = dir
  m.name = dir and dir:gsub("/+$", ""):match("([^/]+)$") or "random"
  m._scoped = {}
  local tokdir = opts and opts.tokenizer or dir
  if tokdir and file_exists(tokdir .. "/vocab.json") and file_exists(tokdir .. "/merges.txt") then
    m.tokenizer = require("lantern.tokenizer").load(tokdir)
  end
  return m
end

-- Loads a Hugging Face GPT-2 directory. opts: fold_ln,
-- center_writing_weights, center_unembed, fold_value_biases (TransformerLens
-- weight processing, all off by default) and tokenizer (a directory holding
-- vocab.json and merges.txt, when the model directory has none).
function Model.load(dir, opts)
  opts = opts or {}
  local lo = ffi.new("lt_load_opts")
  lo.fold_ln = opts.fold_ln and 1 or 0
  lo.center_writing_weights = opts.center_writing_weights and 1 or 0
  lo.center_unembed = opts.center_unembed and 1 or 0
  lo.fold_value_biases = opts.fold_value_biases and 1 or 0
  local out = ffi.new("lt_model *[1]")
  F.check(C.lt_model_load(dir, lo, out), "load")
  return wrap(out[0], opts, dir)
end

-- A model with random weights for a config table (n_layer, n_head, n_embd,
-- n_ctx, d_vocab, optional d_mlp and ln_eps).
function Model.random(cfg, seed)
  local c = ffi.new("lt_config")
  c.n_layer, c.n_head, c.n_embd = cfg.n_layer, cfg.n_head, cfg.n_embd
  c.d_mlp = cfg.d_mlp or 4 * cfg.n_embd
  c.n_ctx, c.d_vocab = cfg.n_ctx, cfg.d_vocab
  c.ln_eps = cfg.ln_eps or 1e-5
  local out = ffi.new("lt_model *[1]")
  F.check(C.lt_model_random(c, seed or 0, out), "random model")
  return wrap(out[0], cfg, nil)
end

function Model:__tostring()
  local c = self.cfg
  return string.format("Model(%s: %d layers, %d heads, d_model %d, d_mlp %d, n_ctx %d, d_vocab %d)", self.name,
    c.n_layer, c.n_head, c.n_embd, c.d_mlp, c.n_ctx, c.d_vocab)
end

-- A parameter by its Hugging Face name ("h.0.attn.c_proj.weight") as a
-- writable Tensor view (edits change the model).
function Model:param(name)
  local v = ffi.new("lt_view")
  F.check(C.lt_model_param(self.ptr, name, v), "param")
  local shape = {}
  for i = 0, v.ndim - 1 do shape[i + 1] = tonumber(v.shape[i]) end
  return Tensor.wrap(v.data, shape, self.ptr)
end

function Model:param_names()
  local out = {}
  for i = 0, C.lt_model_param_count(self.ptr) - 1 do out[#out + 1] = ffi.string(C.lt_model_param_name(self.ptr, i)) end
  return out
end

function Model:save(dir)
  F.check(C.lt_model_save(self.ptr, dir), "save")
end

-- ------------------------------------------------------------- tokens

-- Text -> ids with this model's tokenizer. opts.prepend_bos puts
-- <|endoftext|> first (default false: text is read exactly as written).
function Model:to_tokens(text, opts)
  if not self.tokenizer then error("this model has no tokenizer (load it with {tokenizer=DIR})", 2) end
  local ids = self.tokenizer:encode(text)
  if opts and opts.prepend_bos then
    local eot = self.tokenizer.eot
    if not eot then error("the tokenizer has no <|endoftext|> token", 2) end
    table.insert(ids, 1, eot)
  end
  return ids
end

function Model:to_string(ids)
  if not self.tokenizer then error("this model has no tokenizer", 2) end
  return self.tokenizer:decode(ids)
end

-- One token id for a string that must be exactly one token (or a number).
function Model:to_single_token(s)
  if type(s) == "number" then return s end
  local ids = self:to_tokens(s)
  if #ids ~= 1 then
    error(string.format("'%s' is %d tokens, expected exactly one", s, #ids), 2)
  end
  return ids[1]
end

-- Normalises model input: text, a Lua array of ids, or an array of
-- equal-length arrays. Returns int32 ids [B*T], B, T and whether batched.
function Model:input(x, opts)
  if type(x) == "string" then x = self:to_tokens(x, opts) end
  if type(x) ~= "table" then error("input: expected text, a list of token ids or a list of lists", 3) end
  local batched = type(x[1]) == "table" or type(x[1]) == "string"
  local rows = batched and x or {x}
  local B = #rows
  if B == 0 then error("empty input: no sequences", 3) end
  for b = 1, B do if type(rows[b]) == "string" then rows[b] = self:to_tokens(rows[b], opts) end end
  local T = #rows[1]
  local ids = ffi.new("int32_t[?]", math.max(B * T, 1))
  for b = 1, B do
    local r = rows[b]
    if #r ~= T then error(string.format("input: sequence %d has %d tokens, sequence 1 has %d (batches need equal lengths)", b, #r, T), 3) end
    for t = 1, T do
      local v = r[t]
      if type(v) ~= "number" or v ~= math.floor(v) then error(string.format("input: token %d of sequence %d is not an integer id", t, b), 3) end
      ids[(b - 1) * T + t - 1] = v
    end
  end
  return ids, B, T, batched
end

-- ------------------------------------------------------------ running

-- Runs the forward pass with hooks attached (scoped hooks first, then
-- extra), captures the points in capture (set of point ids) and returns
-- logits as a Tensor ([T, V] or [B, T, V]) and the captured tensors. When
-- after is given it runs inside the protected region, hooks still attached,
-- as after(ctx, logits, ids, B, T) (the backward pass uses this). Hooks and
-- captures are always detached afterwards, also on error.
function Model:_run(x, extra, capture, opts, after)
  local ids, B, T, batched = self:input(x, opts)
  local ctx = hooks.context(self, B, T, batched)
  local extra_result
  local ok, err = pcall(function()
    for _, list in ipairs(self._scoped) do hooks.attach(ctx, list) end
    if extra then hooks.attach(ctx, extra) end
    if capture then
      for point in pairs(capture) do F.check(C.lt_run_capture(self.run, point, 1), "capture") end
    end
    C.lt_run_keep_activations(self.run, after and 1 or 0)
    if opts and opts.stop_at_layer then
      local k = opts.stop_at_layer
      if type(k) ~= "number" or k ~= math.floor(k) or k < -self.cfg.n_layer or k > self.cfg.n_layer then
        error(string.format("stop_at_layer must be an integer in -%d .. %d, got %s", self.cfg.n_layer, self.cfg.n_layer,
          tostring(k)), 0)
      end
      ctx.stop_at_layer = k < 0 and self.cfg.n_layer + k or k
      F.check(C.lt_run_stop_at_layer(self.run, ctx.stop_at_layer), "stop_at_layer")
    end
    local logits = hooks.forward(ctx, ids, B, T, opts)
    if after then extra_result = after(ctx, logits, ids, B, T) end
    return logits
  end)
  local result = ok and err or nil
  local captured
  if ok and capture then captured = hooks.take_captures(ctx, capture) end
  hooks.detach(ctx)
  C.lt_run_clear_captures(self.run)
  C.lt_run_keep_activations(self.run, 0)
  C.lt_run_stop_at_layer(self.run, -1)
  if not ok then error(err, 0) end
  return result, captured, ids, B, T, batched, extra_result
end

-- Backward options for lt_backward from a Lua table: detach_ln_final_scale,
-- detach_ln1 / detach_ln2 (a layer), stop_q / stop_k / stop_pattern (a
-- layer), param_grads.
local function backward_opts(o)
  local b = ffi.new("lt_backward_opts")
  b.detach_lnf_scale = o.detach_ln_final_scale and 1 or 0
  b.detach_ln1_layer = o.detach_ln1 or -1
  b.detach_ln2_layer = o.detach_ln2 or -1
  b.stop_q_layer = o.stop_q or -1
  b.stop_k_layer = o.stop_k or -1
  b.stop_pattern_layer = o.stop_pattern or -1
  b.param_grads = o.param_grads and 1 or 0
  return b
end

-- The backward pass of the forward just run in ctx: from a metric of the
-- logits and/or seeds ({{name, Tensor}, ...} gradients placed at hook
-- points). Returns the metric's value (or nil).
local function run_backward(m, ctx, logits, ids, B, T, metric, seeds, o)
  local dlogits, value
  if metric then
    if not logits then error("backward: the forward pass stopped before the logits (stop_at_layer)", 0) end
    metric:resolve(m)
    if metric.kind == "cross_entropy" then
      metric.ids_rows = {}
      for b = 0, B - 1 do
        local row = {}
        for t = 0, T - 1 do row[t + 1] = ids[b * T + t] end
        metric.ids_rows[b + 1] = row
      end
    end
    dlogits, value = metric:grad(logits)
  end
  local n = seeds and #seeds or 0
  local cseeds = ffi.new("lt_grad_seed[?]", math.max(n, 1))
  for i = 1, n do
    local name, g = seeds[i][1], seeds[i][2]
    cseeds[i - 1].point = m:hook_point(name)
    cseeds[i - 1].grad = g.data
  end
  local bo = backward_opts(o)
  if metric and metric.detach_ln_final_scale then bo.detach_lnf_scale = 1 end
  F.check(C.lt_backward(m.run, dlogits and dlogits.data or nil, cseeds, n, bo), "backward")
  return value
end

-- Borrowed views of the kept activations and gradients of the last
-- forward/backward pass, for code running inside Model:run_with_grads.
local State = {}
State.__index = State

local function borrowed(m, ctx, fn, name)
  local v = ffi.new("lt_view")
  F.check(fn(m.run, m:hook_point(name), v), name)
  local shape = {}
  for i = ctx.batched and 0 or 1, v.ndim - 1 do shape[#shape + 1] = tonumber(v.shape[i]) end
  return Tensor.wrap(v.data, shape, m.run)
end

function State:act(name) return borrowed(self.model, self.ctx, C.lt_run_activation, name) end
function State:grad(name) return borrowed(self.model, self.ctx, C.lt_run_grad, name) end

-- Forward and backward in one go, then fn(state) with state.logits,
-- state.value (the metric's), state:act(name) and state:grad(name)
-- (borrowed views, valid only inside fn). opts: metric, seeds (see
-- run_backward), hooks, and the backward options. Returns fn's result.
function Model:run_with_grads(x, opts, fn)
  opts = opts or {}
  local _, _, _, _, _, _, res = self:_run(x, opts.hooks, nil, opts, function(ctx, logits, ids, B, T)
    local value = run_backward(self, ctx, logits, ids, B, T, opts.metric, opts.seeds, opts)
    local state = setmetatable({model = self, ctx = ctx, logits = logits, value = value, ids = ids, B = B, T = T}, State)
    return fn(state)
  end)
  return res
end

-- Logits for ids (see Model:input): a Tensor [T, d_vocab], or [B, T, d_vocab]
-- for a list of sequences.
function Model:forward(x, opts)
  return (self:_run(x, nil, nil, opts))
end

-- Mean next-token cross-entropy over the sequence(s).
function Model:loss(x, opts)
  local _, _, ids, B, T = self:_run(x, nil, nil, opts)
  local out = ffi.new("double[1]")
  F.check(C.lt_run_loss(self.run, ids, B, T, out), "loss")
  return out[0]
end

-- Generates n new tokens after ids. opts: temperature (default 1; 0 is
-- greedy), top_k, seed (default 0), stop_at_eot. Returns the new ids.
function Model:generate(x, n, opts)
  opts = opts or {}
  local ids = type(x) == "string" and self:to_tokens(x, opts) or {unpack(x)}
  local temperature = opts.temperature == nil and 1.0 or opts.temperature
  local state = ffi.new("uint64_t[1]", opts.seed or 0)
  local V = self.cfg.d_vocab
  local out = {}
  for _ = 1, n do
    if #ids >= self.cfg.n_ctx then break end
    local logits = self:forward(ids)
    local row = logits.data + (#ids - 1) * V
    local next_id = C.lt_sample(row, V, temperature, opts.top_k or 0, state)
    if next_id < 0 then error("generate: " .. F.last_error(), 2) end
    ids[#ids + 1] = next_id
    out[#out + 1] = next_id
    if opts.stop_at_eot and self.tokenizer and next_id == self.tokenizer.eot then break end
  end
  return out
end

-- logits, cache = m:run_with_cache(ids, {names = ..., hooks = ...,
-- backward = metric}). names: a hook name, a list of names, or a predicate
-- function(name); default every hook point except attn.hook_result. Only the
-- requested activations are stored. With backward (an lt.metrics metric),
-- the gradient of the metric at each requested point is stored too, as
-- "<name>_grad", and cache.metric holds the metric's value. stop_at_layer
-- = k (as in TransformerLens; negative counts from the end) runs blocks
-- 0 .. k-1 only: logits are nil and points after blocks.k.hook_resid_pre
-- are not in the cache (m:forward takes it too).
function Model:run_with_cache(x, opts)
  opts = opts or {}
  local points = hooks.select_points(self, opts.names)
  local after
  if opts.backward then
    after = function(ctx, logits, ids, B, T)
      local value = run_backward(self, ctx, logits, ids, B, T, opts.backward, opts.seeds, opts)
      local grads = {}
      for point in pairs(points) do
        local name = ffi.string(C.lt_hook_name(self.ptr, point))
        local view = borrowed(self, ctx, C.lt_run_grad, name)
        grads[name .. "_grad"] = view:clone()
      end
      return {value = value, grads = grads}
    end
  end
  local logits, captured, _, _, _, batched, extra = self:_run(x, opts.hooks, points, opts, after)
  local cache = hooks.new_cache(self, captured, batched)
  if extra then
    for k, v in pairs(extra.grads) do cache:set(k, v) end
    rawset(cache, "metric", extra.value)
  end
  return logits, cache
end

-- Runs with hooks: a list of {name, fn} where fn(act, hook) edits act in
-- place or returns a replacement, or fn is a built-in intervention
-- (lt.ablate.*). The hooks are removed after the run.
function Model:run_with_hooks(x, list, opts)
  return (self:_run(x, list, nil, opts))
end

-- Keeps hooks attached for every run inside fn (also nested), then removes
-- them, also when fn raises an error. Returns fn's results.
function Model:hooks(list, fn)
  table.insert(self._scoped, list)
  local depth = #self._scoped
  local res = {pcall(fn)}
  for i = #self._scoped, depth, -1 do self._scoped[i] = nil end
  if not res[1] then error(res[2], 0) end
  return unpack(res, 2)
end

-- Splices an SAE (lt.sae) into the model at its hook point (sae.hook_name,
-- or opts.hook): every later run passes that activation through the SAE,
-- and the latents appear as hook points "<hook>.hook_sae_acts_post" (and
-- _acts_pre, _recons, _error). opts.use_error_term (default true) keeps the
-- SAE's error so that an unedited run is unchanged. Returns the hook name.
function Model:attach_sae(sae, opts)
  opts = opts or {}
  if opts.hook then sae:set_hook_name(opts.hook) end
  local point = sae:check_model(self)
  local use_error = opts.use_error_term ~= false
  F.check(C.lt_model_attach_sae(self.ptr, point, sae.ptr, use_error and 1 or 0), "attach_sae")
  self._saes = self._saes or {}
  table.insert(self._saes, {sae = sae, hook = ffi.string(C.lt_hook_name(self.ptr, point)), use_error_term = use_error})
  return self._saes[#self._saes].hook
end

-- Detaches every SAE.
function Model:detach_saes()
  C.lt_model_detach_saes(self.ptr)
  self._saes = {}
end

-- The attached SAEs: a list of {sae, hook, use_error_term}.
function Model:saes() return self._saes or {} end

-- The id of a hook point name (negative layers allowed); error if unknown.
function Model:hook_point(name)
  local p = C.lt_hook_find(self.ptr, name)
  if p < 0 then error(F.last_error(), 2) end
  return p
end

function Model:hook_names()
  local out = {}
  for p = 0, C.lt_hook_count(self.ptr) - 1 do out[#out + 1] = ffi.string(C.lt_hook_name(self.ptr, p)) end
  return out
end

return Model
