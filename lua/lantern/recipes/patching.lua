-- lantern.recipes.patching: activation-patching sweeps over a set of
-- prompt pairs, for any loaded model (built on lt.patching).
--
--   local P = require("lantern.recipes.patching")
--   local pairs_ = P.ioi_pairs(m, lt.datasets.ioi{n = 20, seed = 3, split = "test"})
--   local r = P.sweep(m, pairs_, "resid_pre")     -- [n_layer, T] when T agrees, else by layer
--   local h = P.sweep(m, pairs_, "heads")         -- [n_layer, n_head]
--   P.print_grid(h, "layer", "head")
--
-- Each pair is {clean = ids, corrupted = ids, target = id, distractor = id}
-- of equal length. For each patch the corrupted run takes one activation
-- from the clean run; the score is the normalised logit difference
--   (D(patched) - D(corrupted)) / (D(clean) - D(corrupted)),
-- 1 = the patch restores the clean behaviour, 0 = no effect, averaged over
-- the pairs. For IOI the corruption is the usual "ABC" prompt: S's second
-- mention replaced by a third name (the dataset's `corrupt` field).
local lt = require("lantern")
local Tensor = require("lantern.tensor")

local M = {}

-- IOI examples -> patching pairs (skips an example whose corrupted prompt
-- tokenises to another length).
function M.ioi_pairs(m, examples)
  local out = {}
  for _, ex in ipairs(examples) do
    local clean, corrupted = m:to_tokens(ex.prompt), m:to_tokens(ex.corrupt)
    if #clean == #corrupted then
      out[#out + 1] = { clean = clean, corrupted = corrupted, target = m:to_single_token(ex.target),
        distractor = m:to_single_token(ex.distractor) }
    end
  end
  return out
end

local function logit_diff_fn(p)
  return function(logits)   -- one row's logits [T, V]
    local T = logits.shape[1]
    return logits:get(T - 1, p.target) - logits:get(T - 1, p.distractor)
  end
end

-- what: "resid_pre" (by layer and position, [n_layer, T]), "attn_out",
-- "mlp_out" (same), "heads" (head outputs over all positions, [n_layer,
-- n_head]) or "heads_by_pos" ([n_layer, T, n_head]). Position grids need
-- pairs of one length (the first pair's length is kept, others skipped).
-- Returns the mean normalised score Tensor and the pairs used.
function M.sweep(m, pairs_, what, opts)
  local P = lt.patching
  local fn = ({
    resid_pre = P.get_act_patch_resid_pre, attn_out = P.get_act_patch_attn_out, mlp_out = P.get_act_patch_mlp_out,
    heads = P.get_act_patch_attn_head_out_all_pos, heads_by_pos = P.get_act_patch_attn_head_out_by_pos,
  })[what]
  if not fn then error("patching sweep: unknown kind " .. tostring(what), 2) end
  local by_pos = what ~= "heads"
  local sum, used = nil, {}
  for _, p in ipairs(pairs_) do
    if not by_pos or #used == 0 or #p.clean == #used[1].clean then
      local metric = logit_diff_fn(p)
      local clean_logits, cache = m:run_with_cache(p.clean)
      local d_clean, d_corr = metric(clean_logits), metric(m:forward(p.corrupted))
      local denom = d_clean - d_corr
      if math.abs(denom) > 1e-6 then
        local r = fn(m, p.corrupted, cache, metric, opts)
        for i = 0, r.numel - 1 do r.data[i] = (r.data[i] - d_corr) / denom end
        if not sum then sum = r else for i = 0, r.numel - 1 do sum.data[i] = sum.data[i] + r.data[i] end end
        used[#used + 1] = p
      end
    end
  end
  if not sum then error("patching sweep: no usable pair (clean and corrupted D equal?)", 2) end
  for i = 0, sum.numel - 1 do sum.data[i] = sum.data[i] / #used end
  return sum, used
end

-- Prints a 2-D grid with row and column labels.
function M.print_grid(t, row_label, col_label, out)
  out = out or io.stdout
  local R, Cn = t.shape[1], t.shape[2]
  out:write(string.format("%8s", row_label .. "\\" .. col_label))
  for c = 0, Cn - 1 do out:write(string.format("%7d", c)) end
  out:write("\n")
  for r = 0, R - 1 do
    out:write(string.format("%8d", r))
    for c = 0, Cn - 1 do out:write(string.format("%7.2f", t:get(r, c))) end
    out:write("\n")
  end
end

-- The largest entries of a grid: array of {value, index...}.
function M.top(t, k)
  local vals = {}
  for i = 0, t.numel - 1 do vals[#vals + 1] = { t.data[i], i } end
  table.sort(vals, function(a, b) return a[1] > b[1] end)
  local out = {}
  for i = 1, math.min(k, #vals) do
    local flat, idx = vals[i][2], {}
    for d = #t.shape, 1, -1 do
      idx[d] = flat % t.shape[d]
      flat = math.floor(flat / t.shape[d])
    end
    out[i] = { value = vals[i][1], index = idx }
  end
  return out
end

return M
