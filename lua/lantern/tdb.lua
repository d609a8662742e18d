-- lantern.tdb: the Transformer Debugger node table (docs/tdb.md).
--
--   lt.tdb.node_table(m, {prompt=, target=, distractor=, k=10, kinds=})
--   lt.tdb.trace(m, {prompt=, target=, distractor=, node={...}, k=})
--   lt.tdb.measure(m, table, {n=10, mode="zero"|"mean", reference=})
--   lt.tdb.ablate(m, {prompt=, target=, distractor=, nodes={...}})
--   lt.tdb.top_output_tokens(m, vector, k), lt.tdb.top_input_tokens(m, layer, neuron, k)
--   lt.tdb.write_vector(m, prompt, node)
--   lt.tdb.parse_node("L1/H2@13:4") / lt.tdb.node_name(row)
--
-- Definitions are those of /work/shared/REFERENCE.md ("Transformer
-- Debugger's node table"). Every loop over d_model runs in C
-- (core/src/attribution.c); Lua loops only over neurons, heads and positions.
local ffi = require("ffi")
local F = require("lantern.ffi")
local Tensor = require("lantern.tensor")
local metrics = require("lantern.metrics")
local ablate = require("lantern.ablate")
local C = F.C

local M = {}

-- Kinds in table order. "sae_latent" rows come from the SAEs attached to
-- the model (m:attach_sae); without one there are none.
M.KINDS = {"mlp_neuron", "attn_head", "embedding", "sae_latent"}

local function check(rc, what) return F.check(rc, what) end

-- ----------------------------------------------------------- names

-- "L3/N417", "L2/H1", "emb".
function M.node_name(row)
  if row.kind == "mlp_neuron" then return string.format("L%d/N%d", row.layer, row.index) end
  if row.kind == "attn_head" then return string.format("L%d/H%d", row.layer, row.index) end
  if row.kind == "sae_latent" then return string.format("L%d/F%d", row.layer, row.index) end
  return "emb"
end

-- Parses a node spec: "L0/N17", "L0/N17@5" (at position 5), "L1/H2",
-- "L1/H2@13" (query 13), "L1/H2@13:4" (query 13, key 4), "emb@3".
-- Positions may be negative (from the end). Returns {kind, layer, index,
-- position, key_position} or raises a clear error.
function M.parse_node(spec)
  if type(spec) ~= "string" then error("node spec must be a string", 2) end
  local body, at = spec:match("^([^@]+)@?(.*)$")
  local pos, key
  if at and at ~= "" then
    local a, b = at:match("^(%-?%d+):(%-?%d+)$")
    if a then pos, key = tonumber(a), tonumber(b)
    elseif at:match("^%-?%d+$") then pos = tonumber(at)
    else error(string.format("unknown node spec '%s' (position must be @P or @Q:K)", spec), 2) end
  end
  local L, letter, n = (body or ""):match("^L(%d+)/([NHF])(%d+)$")
  if L then
    local kind = ({N = "mlp_neuron", H = "attn_head", F = "sae_latent"})[letter]
    if key and kind ~= "attn_head" then error(string.format("unknown node spec '%s' (only heads have a key position)", spec), 2) end
    return {kind = kind, layer = tonumber(L), index = tonumber(n), position = pos, key_position = key}
  end
  if body == "emb" then return {kind = "embedding", layer = 0, index = 0, position = pos} end
  error(string.format("unknown node spec '%s' (expected L3/N417, L2/H1, emb, optionally @P or @Q:K)", spec), 2)
end

-- ----------------------------------------------------------- helpers

local function prompt_ids(m, o)
  local p = o.prompt
  if p == nil then error("tdb: prompt is required", 3) end
  if type(p) == "string" then return m:to_tokens(p, {prepend_bos = o.prepend_bos}) end
  local ids = {}
  for i, v in ipairs(p) do ids[i] = v end
  if o.prepend_bos and m.tokenizer then table.insert(ids, 1, m.tokenizer.eot) end
  return ids
end

-- The metric D; string targets must be exactly one token (clear error).
local function make_metric(m, o, detach)
  if o.target == nil or o.distractor == nil then error("tdb: target and distractor are required", 3) end
  local function one(x, what)
    if type(x) == "string" then
      local ids = m:to_tokens(x)
      if #ids ~= 1 then error(string.format("tdb: %s '%s' is %d tokens, expected exactly one", what, x, #ids), 4) end
      return ids[1]
    end
    return x
  end
  return metrics.logit_diff{target = one(o.target, "target"), distractor = one(o.distractor, "distractor"),
    detach_ln_final_scale = detach}
end

local function floats(n) return ffi.new("float[?]", math.max(n, 1)) end

local function resolve_pos(p, T, what)
  if p == nil then return nil end
  local q = p < 0 and p + T or p
  if q < 0 or q >= T then error(string.format("tdb: %s %d out of range (T = %d)", what, p, T), 3) end
  return q
end

-- Top k next tokens at the last position: {token, text, logit, prob}.
local function prediction(m, logits, T, k)
  local V = m.cfg.d_vocab
  local row = logits.data + (T - 1) * V
  local mx = -math.huge
  for i = 0, V - 1 do if row[i] > mx then mx = row[i] end end
  local z = 0
  for i = 0, V - 1 do z = z + math.exp(row[i] - mx) end
  local vals, idx = Tensor.wrap(row, {V}, logits):topk(k)
  local out = {}
  for i = 1, #idx do
    out[i] = {token = idx[i], text = m.tokenizer and m:to_string({idx[i]}) or tostring(idx[i]),
      logit = vals[i], prob = math.exp(vals[i] - mx) / z}
  end
  return out
end

-- ------------------------------------------------------ row selection

-- Keeps the k rows with the largest sign * row[col]. The threshold test is
-- the only work per candidate once the list is full.
local function selector(col, sign, k)
  return {col = col, sign = sign, k = k, vals = {}, rows = {}, n = 0}
end

local function offer(s, v, make)
  v = s.sign * v
  if s.k <= 0 or (s.n == s.k and v <= s.vals[s.n]) then return end
  local pos = s.n < s.k and s.n + 1 or s.k
  if s.n < s.k then s.n = s.n + 1 end
  s.vals[pos], s.rows[pos] = v, make()
  while pos > 1 and s.vals[pos] > s.vals[pos - 1] do
    s.vals[pos], s.vals[pos - 1] = s.vals[pos - 1], s.vals[pos]
    s.rows[pos], s.rows[pos - 1] = s.rows[pos - 1], s.rows[pos]
    pos = pos - 1
  end
end

-- Collects rows from candidates: the union of top k / bottom k of direct
-- and total effect and top k of activation and write magnitude, or every
-- candidate when all is set.
local function collector(k, all)
  local sels = {
    selector("direct_effect", 1, k), selector("direct_effect", -1, k),
    selector("total_effect", 1, k), selector("total_effect", -1, k),
    selector("activation", 1, k), selector("write_magnitude", 1, k),
  }
  local c = {all = all and {} or nil, sels = sels}
  -- kind, layer, index, position, key (or nil) and the four numbers
  function c.add(kind, layer, index, pos, key, act, mag, direct, total)
    local row
    local function make()
      if not row then
        row = {kind = kind, layer = layer, index = index, position = pos, key_position = key,
          activation = act, write_magnitude = mag, direct_effect = direct, total_effect = total}
      end
      return row
    end
    if c.all then c.all[#c.all + 1] = make() return end
    offer(sels[1], direct, make) offer(sels[2], direct, make)
    offer(sels[3], total, make) offer(sels[4], total, make)
    offer(sels[5], act, make) offer(sels[6], mag, make)
  end
  function c.rows()
    local out, seen = {}, {}
    if c.all then out = c.all
    else
      for _, s in ipairs(sels) do
        for i = 1, s.n do
          local r = s.rows[i]
          if not seen[r] then seen[r] = true out[#out + 1] = r end
        end
      end
    end
    -- largest |total effect| first; ties broken by name for stable output
    table.sort(out, function(a, b)
      local x, y = math.abs(a.total_effect), math.abs(b.total_effect)
      if x ~= y then return x > y end
      if a.kind ~= b.kind then return a.kind < b.kind end
      if a.layer ~= b.layer then return a.layer < b.layer end
      if a.index ~= b.index then return a.index < b.index end
      if a.position ~= b.position then return a.position < b.position end
      return (a.key_position or -1) < (b.key_position or -1)
    end)
    for _, r in ipairs(out) do r.name = M.node_name(r) end
    return out
  end
  return c
end

-- ------------------------------------------------------- enumerators

-- Every enumerator reads the kept activations and gradients of state st
-- (inside run_with_grads) and feeds candidates to add. g is the gradient
-- [T, C] used for direct effects (the metric's gradient at the residual
-- stream the metric reads); layers caps the layers enumerated (upstream
-- nodes only when tracing); totals[pos] accumulates total effects.
local ENUMERATE = {}

ENUMERATE.mlp_neuron = function(m, st, g, max_layer, add, totals)
  local T, Cm, Mn = st.T, m.cfg.d_model, m.cfg.d_mlp
  local norms, gw = floats(Mn), floats(T * Mn)
  for L = 0, max_layer do
    local post = st:act(string.format("blocks.%d.mlp.hook_post", L)).data
    local pg = st:grad(string.format("blocks.%d.mlp.hook_post", L)).data
    local wout = m:param(string.format("h.%d.mlp.c_proj.weight", L)).data    -- [d_mlp, C]
    check(C.lt_attr_row_norms(wout, Mn, Cm, norms), "row norms")
    check(C.lt_attr_matmul(g, wout, T, Cm, Mn, 1, gw), "W_out . g")           -- gw[t, n] = g[t] . W_out[n]
    for t = 0, T - 1 do
      for n = 0, Mn - 1 do
        local i = t * Mn + n
        local a = post[i]
        local total = a * pg[i]
        totals[t + 1] = totals[t + 1] + total
        add("mlp_neuron", L, n, t, nil, a, a * norms[n], a * gw[i], total)
      end
    end
  end
end

ENUMERATE.attn_head = function(m, st, g, max_layer, add, totals)
  local T, Cm, H, Dh = st.T, m.cfg.d_model, m.cfg.n_head, m.cfg.d_head
  local norms, dots = floats(H * T), floats(H * T * T)
  for L = 0, max_layer do
    local v = st:act(string.format("blocks.%d.attn.hook_v", L)).data
    local pat = st:act(string.format("blocks.%d.attn.hook_pattern", L)).data
    local pg = st:grad(string.format("blocks.%d.attn.hook_pattern", L)).data
    local wo = m:param(string.format("h.%d.attn.c_proj.weight", L)).data      -- [H*Dh, C]
    check(C.lt_attr_head_writes(v, wo, g, T, H, Dh, Cm, norms, dots), "head writes")
    for h = 0, H - 1 do
      for q = 0, T - 1 do
        for k = 0, q do
          local i = (h * T + q) * T + k
          local A = pat[i]
          local total = A * pg[i]
          totals[q + 1] = totals[q + 1] + total
          add("attn_head", L, h, q, k, A, A * norms[h * T + k], A * dots[i], total)
        end
      end
    end
  end
end

ENUMERATE.embedding = function(m, st, g, _, add, totals)
  local T, Cm = st.T, m.cfg.d_model
  local e = st:act("blocks.0.hook_resid_pre").data     -- W_E[tok] + W_pos[t]
  local ge = st:grad("blocks.0.hook_resid_pre").data
  local norms = floats(T)
  check(C.lt_attr_row_norms(e, T, Cm, norms), "embedding norms")
  for t = 0, T - 1 do
    local direct, total = 0, 0
    for j = t * Cm, t * Cm + Cm - 1 do
      direct = direct + e[j] * g[j]
      total = total + e[j] * ge[j]
    end
    totals[t + 1] = totals[t + 1] + total
    add("embedding", 0, 0, t, nil, 1, norms[t], direct, total)
  end
end

-- SAE latents (one enumerator per attached SAE, layer = its hook's block):
-- activation z[t, l] (hook_sae_acts_post), write direction = W_dec[l] pushed
-- through the layer's output matrix when the SAE reads mlp.hook_post or
-- attn.hook_z, else W_dec[l] itself (a residual-stream SAE); total effect
-- z * dD/dz at hook_sae_acts_post.
local function sae_write_dirs(m, a)
  local hook, sae = a.hook, a.sae
  local L = tonumber(hook:match("^blocks%.(%d+)%."))
  local Cm, S, Din = m.cfg.d_model, sae.d_sae, sae.d_in
  local wdec = sae:param("W_dec").data
  local out_w
  if hook:match("%.mlp%.hook_post$") then out_w = string.format("h.%d.mlp.c_proj.weight", L)
  elseif hook:match("%.attn%.hook_z$") then out_w = string.format("h.%d.attn.c_proj.weight", L)
  elseif Din ~= Cm or not (hook:match("hook_resid_") or hook:match("hook_mlp_out$") or hook:match("hook_attn_out$")) then
    error("tdb: sae_latent rows need an SAE on mlp.hook_post, attn.hook_z or the residual stream, not " .. hook, 4)
  end
  local dirs = floats(S * Cm)
  if out_w then check(C.lt_attr_matmul(wdec, m:param(out_w).data, S, Din, Cm, 0, dirs), "W_dec W_out")
  else ffi.copy(dirs, wdec, S * Cm * 4) end
  return L or 0, dirs
end

ENUMERATE.sae_latent = function(m, st, g, max_layer, add, totals)
  local T, Cm = st.T, m.cfg.d_model
  for _, a in ipairs(m:saes()) do
    local L, dirs = sae_write_dirs(m, a)
    if L <= max_layer then
      local S = a.sae.d_sae
      local z = st:act(a.hook .. ".hook_sae_acts_post").data
      local zg = st:grad(a.hook .. ".hook_sae_acts_post").data
      local norms, gw = floats(S), floats(T * S)
      check(C.lt_attr_row_norms(dirs, S, Cm, norms), "row norms")
      check(C.lt_attr_matmul(g, dirs, T, Cm, S, 1, gw), "dirs . g")
      for t = 0, T - 1 do
        for l = 0, S - 1 do
          local i = t * S + l
          local v = z[i]
          if v ~= 0 then   -- a latent that does not fire has no effect of any kind
            local total = v * zg[i]
            totals[t + 1] = totals[t + 1] + total
            add("sae_latent", L, l, t, nil, v, v * norms[l], v * gw[i], total)
          end
        end
      end
    end
  end
end

local function kind_set(m, o)
  local set, list = {}, o.kinds or M.KINDS
  for _, k in ipairs(list) do
    if not ENUMERATE[k] then
      error("tdb: unknown kind '" .. tostring(k) .. "'", 3)
    end
    -- without an attached SAE there are no latents (and no position totals for them)
    if k ~= "sae_latent" or #m:saes() > 0 then set[k] = true end
  end
  if o.kinds and not set.sae_latent then
    for _, k in ipairs(o.kinds) do
      if k == "sae_latent" then error("tdb: sae_latent rows need an attached SAE (m:attach_sae)", 3) end
    end
  end
  return set
end

-- Builds the table from a state: layers = {mlp_neuron = last layer,
-- attn_head = last layer} (inclusive; -1 for none).
local function build(m, st, g, o, layers)
  local kinds = kind_set(m, o)
  local col = collector(o.k or 10, o.all)
  local totals = {}
  for _, kind in ipairs(M.KINDS) do
    if kinds[kind] then
      local t = {}
      for p = 1, st.T do t[p] = 0 end
      totals[kind] = t
      -- SAE latents sit where the neurons of their layer do
      local cap = layers[kind] or (kind == "sae_latent" and layers.mlp_neuron) or 0
      ENUMERATE[kind](m, st, g, cap, col.add, t)
    end
  end
  return col.rows(), totals
end

local function token_texts(m, ids)
  local out = {}
  for i, id in ipairs(ids) do out[i] = m.tokenizer and m:to_string({id}) or tostring(id) end
  return out
end

-- Copies a [T, C] gradient view into a fresh float buffer (views die with
-- the state).
local function copy_floats(t)
  local buf = floats(t.numel)
  ffi.copy(buf, t.data, t.numel * 4)
  return buf
end

-- ---------------------------------------------------------- node table

-- The node table of a prompt for D = logit[target] - logit[distractor] at
-- the last position, ln_final scale detached. See docs/tdb.md.
function M.node_table(m, o)
  o = o or {}
  local ids = prompt_ids(m, o)
  local metric = make_metric(m, o, true)
  local NL = m.cfg.n_layer
  local res = m:run_with_grads(ids, {metric = metric}, function(st)
    local final = string.format("blocks.%d.hook_resid_post", NL - 1)
    local g = copy_floats(st:grad(final))    -- dD/d resid_final: non-zero only at the last position
    local rows, totals = build(m, st, g, o, {mlp_neuron = NL - 1, attn_head = NL - 1})
    return {logit_diff = st.value, rows = rows, position_totals = totals, grad_final = g,
      prediction = prediction(m, st.logits, st.T, 5), top_logits = prediction(m, st.logits, st.T, 10)}
  end)
  res.tokens, res.ids = token_texts(m, ids), ids
  res.target, res.distractor = metric.target, metric.distractor
  res.metric = "logit_diff"
  return res
end

-- ---------------------------------------------------------------- trace

-- Recomputes the table with a node's pre-activation as the metric (TDB's
-- upstream tracing). node: {kind, layer, index, position, key_position,
-- side = "query" | "key" | "both" | "value"} or a spec string. The value
-- path needs the original metric (target, distractor): its gradient g[q] at
-- the final residual stream is held fixed.
function M.trace(m, o)
  o = o or {}
  local ids = prompt_ids(m, o)
  local T = #ids
  local node = type(o.node) == "string" and M.parse_node(o.node) or o.node
  if type(node) ~= "table" then error("tdb.trace: node is required", 2) end
  local L, cfg = node.layer, m.cfg
  if L < 0 or L >= cfg.n_layer then error(string.format("tdb.trace: layer %d out of range", L), 2) end
  local side = node.side or o.side or "both"
  local seeds, bopts, gname, layers, seed_t = {}, {}, nil, nil, nil
  local pos = resolve_pos(node.position or -1, T, "position")
  if node.kind == "mlp_neuron" then
    if node.index < 0 or node.index >= cfg.d_mlp then error("tdb.trace: neuron index out of range", 2) end
    seed_t = Tensor.zeros({T, cfg.d_mlp})
    seed_t.data[pos * cfg.d_mlp + node.index] = 1
    seeds[1] = {string.format("blocks.%d.mlp.hook_pre", L), seed_t}
    bopts.detach_ln2 = L
    gname = string.format("blocks.%d.hook_resid_mid", L)
    layers = {mlp_neuron = L - 1, attn_head = L}
  elseif node.kind == "attn_head" then
    local H = cfg.n_head
    if node.index < 0 or node.index >= H then error("tdb.trace: head index out of range", 2) end
    local key = resolve_pos(node.key_position or 0, T, "key position")
    if key > pos then error("tdb.trace: key position after the query (masked)", 2) end
    bopts.detach_ln1 = L
    gname = string.format("blocks.%d.hook_resid_pre", L)
    layers = {mlp_neuron = L - 1, attn_head = L - 1}
    if side == "value" then
      -- seed at hook_v[k, h, :] with A * (W_O[h] g[q]), g from the original metric
      local orig = M.node_table(m, {prompt = ids, target = o.target, distractor = o.distractor, k = 0,
        kinds = {"embedding"}})
      local A
      m:run_with_grads(ids, {}, function(st)
        A = st:act(string.format("blocks.%d.attn.hook_pattern", L)).data[(node.index * T + pos) * T + key]
      end)
      local Dh, Cm = cfg.d_head, cfg.d_model
      local wo = m:param(string.format("h.%d.attn.c_proj.weight", L)).data + node.index * Dh * Cm
      local u = floats(Dh)
      check(C.lt_attr_matmul(wo, orig.grad_final + pos * Cm, Dh, Cm, 1, 0, u), "W_O g")
      seed_t = Tensor.zeros({T, H, Dh})
      for j = 0, Dh - 1 do seed_t.data[(key * H + node.index) * Dh + j] = A * u[j] end
      seeds[1] = {string.format("blocks.%d.attn.hook_v", L), seed_t}
      bopts.stop_pattern = L
    else
      seed_t = Tensor.zeros({H, T, T})
      seed_t.data[(node.index * T + pos) * T + key] = 1
      seeds[1] = {string.format("blocks.%d.attn.hook_attn_scores", L), seed_t}
      if side == "query" then bopts.stop_k = L
      elseif side == "key" then bopts.stop_q = L
      elseif side ~= "both" then error("tdb.trace: side must be query, key, both or value", 2) end
    end
    node.key_position = key
  else
    error("tdb.trace: cannot trace a node of kind " .. tostring(node.kind), 2)
  end
  node.position, node.side = pos, node.kind == "attn_head" and side or nil
  bopts.seeds = seeds
  local res = m:run_with_grads(ids, bopts, function(st)
    -- the metric: the seed's dot product with the seeded activation (the
    -- pre-activation, the score, or the value path's direct effect)
    local act = st:act(seeds[1][1]).data
    local value = 0
    for i = 0, seed_t.numel - 1 do
      if seed_t.data[i] ~= 0 then value = value + seed_t.data[i] * act[i] end
    end
    local g = copy_floats(st:grad(gname))
    local rows, totals = build(m, st, g, o, layers)
    return {value = value, rows = rows, position_totals = totals}
  end)
  res.node, res.tokens, res.ids = node, token_texts(m, ids), ids
  res.node.name = M.node_name(node)
  return res
end

-- ------------------------------------------------------------ ablations

-- Interventions that zero (or mean-ablate) one node in batch row b.
-- An attention row (q, k) zeroes pattern[h, q, k] only: the row no longer
-- sums to 1 (TDB's edge ablation; no renormalisation).
local function node_interventions(m, node, b, mode, ref)
  local L = node.layer
  local function iv(opts)
    opts.batch_row = b
    if mode == "mean" then opts.from = ref return ablate.mean(opts) end
    return ablate.zero(opts)
  end
  local pos = node.position and {node.position} or nil
  if node.kind == "mlp_neuron" then
    return {{string.format("blocks.%d.mlp.hook_post", L), iv{positions = pos, neurons = {node.index}}}}
  elseif node.kind == "attn_head" then
    if node.key_position then
      return {{string.format("blocks.%d.attn.hook_pattern", L),
        iv{heads = {node.index}, positions = pos, indices = {node.key_position}}}}
    end
    -- a whole head (all keys): zero its z
    return {{string.format("blocks.%d.attn.hook_z", L), iv{heads = {node.index}, positions = pos}}}
  elseif node.kind == "embedding" then
    return {{"hook_embed", iv{positions = pos}}, {"hook_pos_embed", iv{positions = pos}}}
  elseif node.kind == "sae_latent" then
    for _, a in ipairs(m:saes()) do
      if a.hook:match("^blocks%.(%d+)%.") == tostring(L) then
        return {{a.hook .. ".hook_sae_acts_post", iv{positions = pos, neurons = {node.index}}}}
      end
    end
    error(string.format("tdb: no SAE attached at layer %d for %s", L, M.node_name(node)), 3)
  end
  error("tdb: cannot ablate a node of kind " .. tostring(node.kind), 3)
end

local ABLATION_POINTS = {"hook_embed", "hook_pos_embed"}

-- Runs clean plus one ablated copy per node in one batched forward pass
-- and returns the clean D and the list of ablated D (ln_final scale not
-- detached: the real model). mode "mean" needs reference (a prompt or list
-- of prompts of the same length, whose per-position mean replaces the node).
local function batched_ablation(m, ids, metric, nodes, mode, reference)
  local ref
  if mode == "mean" then
    if not reference then error("tdb: mean ablation needs a reference prompt", 3) end
    local names = {}
    for _, n in ipairs(ABLATION_POINTS) do names[#names + 1] = n end
    for L = 0, m.cfg.n_layer - 1 do
      names[#names + 1] = string.format("blocks.%d.mlp.hook_post", L)
      names[#names + 1] = string.format("blocks.%d.attn.hook_pattern", L)
      names[#names + 1] = string.format("blocks.%d.attn.hook_z", L)
    end
    local r = type(reference) == "string" and m:to_tokens(reference) or reference
    _, ref = m:run_with_cache(r, {names = names})
  elseif mode ~= "zero" then
    error("tdb: ablation mode must be zero or mean", 3)
  end
  local batch, list = {}, {}
  for b = 0, #nodes do batch[b + 1] = ids end
  for i, node in ipairs(nodes) do
    for _, h in ipairs(node_interventions(m, node, i, mode, ref)) do list[#list + 1] = h end
  end
  local logits = m:run_with_hooks(batch, list)
  local values = metric(logits)
  return values[1], {unpack(values, 2)}
end

-- Measured effects of the top n rows (default 10) of a table t from
-- node_table (opts as given to it): row.measured_change = D(ablated) -
-- D(clean), row.estimated_change = -total_effect (a zero ablation's
-- first-order estimate).
function M.measure(m, t, o)
  o = o or {}
  local n = math.min(o.n or 10, #t.rows)
  if n == 0 then return t end
  local nodes = {}
  for i = 1, n do nodes[i] = t.rows[i] end
  local metric = make_metric(m, {target = t.target, distractor = t.distractor}, false)
  local clean, ablated = batched_ablation(m, t.ids, metric, nodes, o.mode or "zero", o.reference)
  t.clean_logit_diff = clean
  for i = 1, n do
    local r = t.rows[i]
    r.measured_change = ablated[i] - clean
    r.estimated_change = -r.total_effect
  end
  return t
end

-- Ablates all nodes together (list of specs or node tables); returns the
-- clean and the ablated logit difference (real model).
function M.ablate(m, o)
  local ids = prompt_ids(m, o)
  local metric = make_metric(m, o, false)
  local list = {}
  for _, spec in ipairs(o.nodes or {}) do
    local node = type(spec) == "string" and M.parse_node(spec) or spec
    if node.position then node.position = resolve_pos(node.position, #ids, "position") end
    if node.key_position then node.key_position = resolve_pos(node.key_position, #ids, "key position") end
    for _, h in ipairs(node_interventions(m, node, nil, o.mode or "zero", nil)) do list[#list + 1] = h end
  end
  local clean = metric(m:forward(ids))
  local ablated = metric(m:run_with_hooks(ids, list))
  return clean, ablated
end

-- ------------------------------------------------------- token readouts

-- Top k tokens a residual-stream vector writes towards: vec * ln_f weight
-- through W_U, minus the mean over the vocabulary. vec: Tensor or float*.
-- Returns {token, text, value} (value: centred logit contribution).
function M.top_output_tokens(m, vec, k)
  local Cm, V = m.cfg.d_model, m.cfg.d_vocab
  local src = Tensor.is(vec) and vec.data or vec
  local w = m:param("ln_f.weight").data
  local scaled = floats(Cm)
  for j = 0, Cm - 1 do scaled[j] = src[j] * w[j] end
  local out = Tensor.zeros({V})
  check(C.lt_attr_matmul(scaled, m:param("lm_head.weight").data, 1, Cm, V, 1, out.data), "unembed")
  local mean = out:mean()
  local vals, idx = out:topk(k or 10)
  local res = {}
  for i = 1, #idx do
    res[i] = {token = idx[i], text = m.tokenizer and m:to_string({idx[i]}) or tostring(idx[i]), value = vals[i] - mean}
  end
  return res
end

-- Top k input tokens of MLP neuron n of layer L, direct path only:
-- score(tok) = LN(W_E[tok] + mean_t W_pos[t]) . (ln_2 weight * W_in[:, n]),
-- LN without its affine weights, the LayerNorm bias and the attention
-- layers ignored. Cost O(V * C), in C.
function M.top_input_tokens(m, L, n, k)
  local Cm, V, Mn = m.cfg.d_model, m.cfg.d_vocab, m.cfg.d_mlp
  local wpe, P = m:param("wpe.weight"), m.cfg.n_ctx
  local meanpos = floats(Cm)
  for p = 0, P - 1 do for j = 0, Cm - 1 do meanpos[j] = meanpos[j] + wpe.data[p * Cm + j] / P end end
  local x = floats(V * Cm)
  local we = m:param("wte.weight").data
  ffi.copy(x, we, V * Cm * 4)
  for t = 0, V - 1 do for j = 0, Cm - 1 do x[t * Cm + j] = x[t * Cm + j] + meanpos[j] end end
  check(C.lt_attr_ln_rows(x, V, Cm, m.cfg.ln_eps, x), "ln rows")
  local win = m:param(string.format("h.%d.mlp.c_fc.weight", L)).data      -- [C, d_mlp]
  local lw = m:param(string.format("h.%d.ln_2.weight", L)).data
  local dir = floats(Cm)
  for j = 0, Cm - 1 do dir[j] = lw[j] * win[j * Mn + n] end
  local out = Tensor.zeros({V})
  check(C.lt_attr_matmul(x, dir, V, Cm, 1, 0, out.data), "input tokens")
  local vals, idx = out:topk(k or 10)
  local res = {}
  for i = 1, #idx do
    res[i] = {token = idx[i], text = m.tokenizer and m:to_string({idx[i]}) or tostring(idx[i]), value = vals[i]}
  end
  return res
end

-- The write vector [C] of a row (node with position, and key for heads) on
-- a prompt, as defined in the node table.
function M.write_vector(m, prompt, node)
  local ids = prompt_ids(m, {prompt = prompt})
  local T, Cm = #ids, m.cfg.d_model
  local out = Tensor.zeros({Cm})
  m:run_with_grads(ids, {}, function(st)
    local L, t = node.layer, node.position
    if node.kind == "mlp_neuron" then
      local a = st:act(string.format("blocks.%d.mlp.hook_post", L)).data[t * m.cfg.d_mlp + node.index]
      local w = m:param(string.format("h.%d.mlp.c_proj.weight", L)).data + node.index * Cm
      for j = 0, Cm - 1 do out.data[j] = a * w[j] end
    elseif node.kind == "attn_head" then
      local H, Dh, k = m.cfg.n_head, m.cfg.d_head, node.key_position
      local A = st:act(string.format("blocks.%d.attn.hook_pattern", L)).data[(node.index * T + t) * T + k]
      local v = st:act(string.format("blocks.%d.attn.hook_v", L)).data + (k * H + node.index) * Dh
      local wo = m:param(string.format("h.%d.attn.c_proj.weight", L)).data + node.index * Dh * Cm
      check(C.lt_attr_matmul(v, wo, 1, Dh, Cm, 0, out.data), "v W_O")
      for j = 0, Cm - 1 do out.data[j] = A * out.data[j] end
    else
      ffi.copy(out.data, st:act("blocks.0.hook_resid_pre").data + t * Cm, Cm * 4)
    end
  end)
  return out
end

-- ------------------------------------------------ attribution patching

-- Two prompts of equal length: the attribution patching estimate of
-- patching each component's clean activation into the corrupted run,
-- sum over its elements of (clean - corrupted) * dD/d act at the corrupted
-- run (D not detached), beside real activation patching (one batched
-- corrupted run, one row per patched component) for the top n rows.
-- Components: MLP neurons (summed over positions), MLP layers, heads (via
-- hook_z, summed over positions) and embeddings per position.
-- Returns {clean_logit_diff, corrupted_logit_diff, rows = {...}} sorted by
-- |estimate|; patched rows carry measured = D(patched) - D(corrupted).
function M.attribution_patching(m, o)
  o = o or {}
  local clean_ids = prompt_ids(m, {prompt = o.clean, prepend_bos = o.prepend_bos})
  local corr_ids = prompt_ids(m, {prompt = o.corrupted, prepend_bos = o.prepend_bos})
  if #clean_ids ~= #corr_ids then
    error(string.format("tdb.attribution_patching: clean has %d tokens, corrupted %d (must be equal)", #clean_ids, #corr_ids), 2)
  end
  local metric = make_metric(m, o, false)
  local cfg, T = m.cfg, #clean_ids
  local names = {"hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre"}
  for L = 0, cfg.n_layer - 1 do
    names[#names + 1] = string.format("blocks.%d.mlp.hook_post", L)
    names[#names + 1] = string.format("blocks.%d.attn.hook_z", L)
  end
  local clean_logits, clean = m:run_with_cache(clean_ids, {names = names})
  local _, corr = m:run_with_cache(corr_ids, {names = names, backward = metric})
  local rows = {}
  local function row(kind, layer, index, position, est, patch)
    local r = {kind = kind, layer = layer, index = index, position = position, estimate = est, patch = patch}
    r.name = kind == "mlp_layer" and string.format("L%d/MLP", layer) or M.node_name(r)
    rows[#rows + 1] = r
  end
  for L = 0, cfg.n_layer - 1 do
    local pname = string.format("blocks.%d.mlp.hook_post", L)
    local a, b, g, Mn = clean[pname].data, corr[pname].data, corr[pname .. "_grad"].data, cfg.d_mlp
    local layer_sum = 0
    for n = 0, Mn - 1 do
      local s = 0
      for t = 0, T - 1 do local i = t * Mn + n s = s + (a[i] - b[i]) * g[i] end
      layer_sum = layer_sum + s
      row("mlp_neuron", L, n, nil, s, {{pname, ablate.patch{from = clean, neurons = {n}}}})
    end
    row("mlp_layer", L, 0, nil, layer_sum, {{pname, ablate.patch{from = clean}}})
    local zname = string.format("blocks.%d.attn.hook_z", L)
    local za, zb, zg, H, Dh = clean[zname].data, corr[zname].data, corr[zname .. "_grad"].data, cfg.n_head, cfg.d_head
    for h = 0, H - 1 do
      local s = 0
      for t = 0, T - 1 do
        for e = (t * H + h) * Dh, (t * H + h) * Dh + Dh - 1 do s = s + (za[e] - zb[e]) * zg[e] end
      end
      row("attn_head", L, h, nil, s, {{zname, ablate.patch{from = clean, heads = {h}}}})
    end
  end
  local ea, eb, eg, Cm = clean["blocks.0.hook_resid_pre"].data, corr["blocks.0.hook_resid_pre"].data,
    corr["blocks.0.hook_resid_pre_grad"].data, cfg.d_model
  for t = 0, T - 1 do
    local s = 0
    for j = t * Cm, t * Cm + Cm - 1 do s = s + (ea[j] - eb[j]) * eg[j] end
    row("embedding", 0, 0, t, s, {{"hook_embed", ablate.patch{from = clean, positions = {t}}},
      {"hook_pos_embed", ablate.patch{from = clean, positions = {t}}}})
  end
  table.sort(rows, function(x, y) return math.abs(x.estimate) > math.abs(y.estimate) end)
  -- real patching of the top n rows: row 0 is the unpatched corrupted run
  local n = math.min(o.n or 10, #rows)
  local batch, list = {corr_ids}, {}
  for i = 1, n do
    batch[i + 1] = corr_ids
    for _, h in ipairs(rows[i].patch) do
      h[2].opts.batch_row = i
      list[#list + 1] = h
    end
  end
  local values = metric(m:run_with_hooks(batch, list))
  for i, r in ipairs(rows) do
    if i <= n then r.measured = values[i + 1] - values[1] end
    r.patch = nil
  end
  return {clean_logit_diff = metric(clean_logits), corrupted_logit_diff = corr.metric, rows = rows}
end

return M
