-- lantern.recipes.ioi: the indirect-object-identification investigation,
-- for any loaded model with a tokenizer (the toy model, GPT-2, ...).
--
--   local ioi = require("lantern.recipes.ioi")
--   local ex = lt.datasets.ioi{n = 1000, seed = 1, split = "test"}
--   local set = ioi.prepare(m, ex)         -- tokenised, grouped by length
--   ioi.evaluate(m, set)                    -- accuracy, mean logit difference
--   ioi.head_effects(m, set)                -- heads ranked by estimated total effect
--   ioi.mean_ablate(m, set, {{1, 3}, ...})  -- mean logit diff with heads mean-ablated
--   ioi.ablation_test(m, set, {top = 3, draws = 20})
--
-- The metric is TDB's D = logit(IO) - logit(S) at the last position, per
-- prompt. Prompts are read exactly as written (no token prepended).
-- Prompts of equal token length run together as one batch; mean ablation
-- uses the mean over the prompts of the same length, position by position.
local lt = require("lantern")
local ablate = require("lantern.ablate")
local Tensor = require("lantern.tensor")

local M = {}

local MAX_ROWS = 128     -- rows per forward pass

-- Tokenises examples ({prompt, target, distractor}) and groups them by
-- length. Returns {n = #examples, examples = ..., groups = {{T, rows =
-- {ids...}, targets = {...}, distractors = {...}, index = {...}}}}.
function M.prepare(m, examples)
  local by_len, lens = {}, {}
  for i, ex in ipairs(examples) do
    local ids = m:to_tokens(ex.prompt)
    local T = #ids
    local g = by_len[T]
    if not g then
      g = { T = T, rows = {}, targets = {}, distractors = {}, index = {} }
      by_len[T] = g
      lens[#lens + 1] = T
    end
    local n = #g.rows + 1
    g.rows[n], g.index[n] = ids, i
    g.targets[n] = m:to_single_token(ex.target)
    g.distractors[n] = m:to_single_token(ex.distractor)
  end
  table.sort(lens)
  local groups = {}
  for _, T in ipairs(lens) do
    -- split big groups so one forward pass stays small
    local g = by_len[T]
    for s = 1, #g.rows, MAX_ROWS do
      local part = { T = T, rows = {}, targets = {}, distractors = {}, index = {} }
      for i = s, math.min(s + MAX_ROWS - 1, #g.rows) do
        local k = #part.rows + 1
        part.rows[k], part.targets[k], part.distractors[k], part.index[k] = g.rows[i], g.targets[i], g.distractors[i], g.index[i]
      end
      groups[#groups + 1] = part
    end
  end
  return { n = #examples, examples = examples, groups = groups }
end

-- D for each row of a group from batched logits [B, T, V]; also whether
-- the target is the top-1 token. Returns arrays.
local function group_diffs(m, g, logits)
  local V, T = m.cfg.d_vocab, g.T
  local d, top = {}, {}
  for b = 1, #g.rows do
    local row = logits.data + ((b - 1) * T + T - 1) * V
    d[b] = row[g.targets[b]] - row[g.distractors[b]]
    local best = 0
    for v = 1, V - 1 do if row[v] > row[best] then best = v end end
    top[b] = best == g.targets[b]
  end
  return d, top
end

-- Per-prompt D (in the order of the examples), with hooks_for(group) giving
-- the hooks of each group's run (or nil). Returns diffs, top1 flags.
function M.logit_diffs(m, set, hooks_for)
  local diffs, top = {}, {}
  for _, g in ipairs(set.groups) do
    local hooks = hooks_for and hooks_for(g)
    local logits = hooks and m:run_with_hooks(g.rows, hooks) or m:forward(g.rows)
    local d, t = group_diffs(m, g, logits)
    for b = 1, #g.rows do diffs[g.index[b]], top[g.index[b]] = d[b], t[b] end
  end
  return diffs, top
end

local function mean(a)
  local s = 0
  for _, v in ipairs(a) do s = s + v end
  return s / math.max(#a, 1)
end
M.mean = mean

-- Accuracy (D > 0), mean D, and the share of prompts whose top-1 token is IO.
function M.evaluate(m, set)
  local diffs, top = M.logit_diffs(m, set)
  local right, top1 = 0, 0
  for i = 1, #diffs do
    if diffs[i] > 0 then right = right + 1 end
    if top[i] then top1 = top1 + 1 end
  end
  return { n = #diffs, accuracy = right / #diffs, mean_logit_diff = mean(diffs), top1 = top1 / #diffs, diffs = diffs }
end

-- A metric object for run_with_grads with a different target and
-- distractor per batch row (lt.metrics.logit_diff has one for all rows).
-- ln_final's scale is detached, as in TDB's node table.
local function rowwise_logit_diff(g)
  local metric = { kind = "logit_diff_rows", detach_ln_final_scale = true }
  function metric.resolve(self) return self end
  function metric.grad(_, logits)
    local B, T, V = logits.shape[1], logits.shape[2], logits.shape[3]
    local grad = Tensor.zeros(logits.shape)
    local values = {}
    for b = 0, B - 1 do
      local off = (b * T + T - 1) * V
      values[b + 1] = logits.data[off + g.targets[b + 1]] - logits.data[off + g.distractors[b + 1]]
      grad.data[off + g.targets[b + 1]] = 1
      grad.data[off + g.distractors[b + 1]] = -1
    end
    return grad, values
  end
  return metric
end

-- The estimated total effect of every head on each prompt: sum over
-- positions of hook_z . dD/d hook_z, the first-order estimate of D(clean) -
-- D(head zeroed). It equals the sum of the head's rows (A dD/dA over query
-- and key) of TDB's node table (lt.tdb.node_table, all = true).
-- Returns heads: array of {layer, head, name, sum_abs (summed |effect| over
-- prompts), mean (mean signed effect)}, sorted by sum_abs, largest first.
function M.head_effects(m, set)
  local NL, H, Dh = m.cfg.n_layer, m.cfg.n_head, m.cfg.d_head
  local sum_abs, sum = {}, {}
  for k = 1, NL * H do sum_abs[k], sum[k] = 0, 0 end
  for _, g in ipairs(set.groups) do
    m:run_with_grads(g.rows, { metric = rowwise_logit_diff(g) }, function(st)
      local B, T = #g.rows, g.T
      for L = 0, NL - 1 do
        local z = st:act(string.format("blocks.%d.attn.hook_z", L)).data      -- [B, T, H, Dh]
        local dz = st:grad(string.format("blocks.%d.attn.hook_z", L)).data
        for b = 0, B - 1 do
          for h = 0, H - 1 do
            local e = 0
            for t = 0, T - 1 do
              local base = ((b * T + t) * H + h) * Dh
              for j = 0, Dh - 1 do e = e + z[base + j] * dz[base + j] end
            end
            local k = L * H + h + 1
            sum_abs[k] = sum_abs[k] + math.abs(e)
            sum[k] = sum[k] + e
          end
        end
      end
    end)
  end
  local heads = {}
  for L = 0, NL - 1 do
    for h = 0, H - 1 do
      local k = L * H + h + 1
      heads[#heads + 1] = { layer = L, head = h, name = string.format("L%d/H%d", L, h),
        sum_abs = sum_abs[k], mean = sum[k] / set.n }
    end
  end
  table.sort(heads, function(a, b)
    if a.sum_abs ~= b.sum_abs then return a.sum_abs > b.sum_abs end
    return a.layer * 1000 + a.head < b.layer * 1000 + b.head
  end)
  return heads
end

-- The hook_z of every layer for each group, to take means from.
local function z_caches(m, set)
  local names = {}
  for L = 0, m.cfg.n_layer - 1 do names[#names + 1] = string.format("blocks.%d.attn.hook_z", L) end
  local caches = {}
  for i, g in ipairs(set.groups) do
    local _, cache = m:run_with_cache(g.rows, { names = names })
    caches[i] = cache
  end
  return caches
end

-- Mean-ablation hooks for heads ({{layer, head} or {layer = , head = }}):
-- each head's z replaced, position by position, by its mean over the
-- reference cache (the prompts of the same length).
function M.mean_ablation_hooks(heads, cache)
  local by_layer = {}
  for _, hd in ipairs(heads) do
    local L, h = hd.layer or hd[1], hd.head or hd[2]
    by_layer[L] = by_layer[L] or {}
    table.insert(by_layer[L], h)
  end
  local hooks = {}
  for L, hs in pairs(by_layer) do
    hooks[#hooks + 1] = { string.format("blocks.%d.attn.hook_z", L), ablate.mean{ from = cache, heads = hs } }
  end
  return hooks
end

-- Mean D with the heads mean-ablated (means over each length group).
-- caches: from a previous call (optional; returned for reuse).
function M.mean_ablate(m, set, heads, caches)
  caches = caches or z_caches(m, set)
  local gi = {}
  for i, g in ipairs(set.groups) do gi[g] = i end
  local diffs = M.logit_diffs(m, set, function(g) return M.mean_ablation_hooks(heads, caches[gi[g]]) end)
  return mean(diffs), caches, diffs
end

-- The ablation test of the issue: mean-ablate the top heads by summed
-- |estimated total effect|, then `draws` sets of as many heads drawn at
-- random from the other heads. opts: top (3), draws (20), seed (0), heads
-- (a head_effects result, to reuse). Returns {clean, top_heads, top_ld,
-- top_drop (fraction of the clean mean D lost), random = {{heads, ld,
-- drop}}, random_mean_drop}.
function M.ablation_test(m, set, opts)
  opts = opts or {}
  local k, draws = opts.top or 3, opts.draws or 20
  local heads = opts.heads or M.head_effects(m, set)
  local clean = opts.clean or mean((M.logit_diffs(m, set)))
  local top = {}
  for i = 1, k do top[i] = heads[i] end
  local top_ld, caches = M.mean_ablate(m, set, top)
  local others = {}
  for i = k + 1, #heads do others[#others + 1] = heads[i] end
  local r = lt.datasets.rng(opts.seed or 0, "recipes/ioi/random_heads")
  local random, drops = {}, {}
  for d = 1, draws do
    local pick = r:sample(others, k)
    local ld = M.mean_ablate(m, set, pick, caches)
    random[d] = { heads = pick, ld = ld, drop = (clean - ld) / clean }
    drops[d] = random[d].drop
  end
  return { clean = clean, top_heads = top, top_ld = top_ld, top_drop = (clean - top_ld) / clean,
    random = random, random_mean_drop = mean(drops), heads = heads }
end

function M.head_names(list)
  local out = {}
  for i, h in ipairs(list) do out[i] = h.name or string.format("L%d/H%d", h.layer or h[1], h.head or h[2]) end
  return table.concat(out, ", ")
end

return M
