-- lantern.recipes.induction: finding induction heads in any loaded model.
--
--   local ind = require("lantern.recipes.induction")
--   local set = ind.prepare(m, {n = 200, seq_len = 20, seed = 1})
--   ind.accuracy(m, set)           -- top-1 accuracy on the second copy
--   ind.scores(m, set)             -- induction score of every head, best first
--   ind.previous_token_scores(m, set) -- attention to the previous token, best first
--   ind.ablate(m, set, heads)      -- accuracy with those heads mean-ablated
--
-- Data: lt.datasets.induction, random token ids (no id repeats inside the
-- random part), the same ids again. Positions start+1 .. start+L-1 of the
-- second copy can be predicted only by looking back: accuracy is the share
-- of them whose top-1 prediction (from the position before) is right.
-- Induction score of a head: its mean attention from each token of the
-- second copy to the token after that token's previous occurrence (the
-- diagonal at offset 1 - L of the pattern), as in TransformerLens.
local lt = require("lantern")
local ablate = require("lantern.ablate")

local M = {}

-- opts: n (200), seq_len (20), seed (0), split ("test"), vocab (ids to draw
-- from; default every id but the last, <|endoftext|> in GPT-2 vocabularies),
-- prefix (optional ids before each sequence), random_prefix (optional
-- count of random ids before each sequence; the same sequences otherwise).
function M.prepare(m, opts)
  opts = opts or {}
  local ex = lt.datasets.induction{ n = opts.n or 200, seq_len = opts.seq_len or 20, seed = opts.seed or 0,
    split = opts.split or "test", vocab = opts.vocab or (m.cfg.d_vocab - 1), prefix = opts.prefix,
    random_prefix = opts.random_prefix }
  local rows = {}
  for i, e in ipairs(ex) do rows[i] = e.ids end
  return { rows = rows, L = ex[1].seq_len, start = ex[1].start, T = #rows[1] }
end

-- Top-1 accuracy on positions start+1 .. start+L-1 from batched logits.
local function accuracy_of(m, set, logits)
  local V, T = m.cfg.d_vocab, set.T
  local right, total = 0, 0
  for b = 0, #set.rows - 1 do
    local ids = set.rows[b + 1]
    for q = set.start + 1, set.start + set.L - 1 do
      local row = logits.data + (b * T + q - 1) * V     -- prediction of position q
      local best = 0
      for v = 1, V - 1 do if row[v] > row[best] then best = v end end
      if best == ids[q + 1] then right = right + 1 end
      total = total + 1
    end
  end
  return right / total
end

function M.accuracy(m, set, hooks)
  local logits = hooks and m:run_with_hooks(set.rows, hooks) or m:forward(set.rows)
  return accuracy_of(m, set, logits)
end

-- Every head's mean attention from query q to key q + offset, over the
-- queries first .. last (0-based) of every row: array of {layer, head,
-- name, score}, highest first.
local function diagonal_scores(m, set, offset, first, last)
  local NL, H, T = m.cfg.n_layer, m.cfg.n_head, set.T
  local names = {}
  for l = 0, NL - 1 do names[#names + 1] = string.format("blocks.%d.attn.hook_pattern", l) end
  local _, cache = m:run_with_cache(set.rows, { names = names })
  local out = {}
  for l = 0, NL - 1 do
    local p = cache:get(names[l + 1]).data          -- [B, H, T, T]
    for h = 0, H - 1 do
      local s, n = 0, 0
      for b = 0, #set.rows - 1 do
        for q = first, last do
          s = s + p[((b * H + h) * T + q) * T + q + offset]
          n = n + 1
        end
      end
      out[#out + 1] = { layer = l, head = h, name = string.format("L%d/H%d", l, h), score = s / n }
    end
  end
  table.sort(out, function(a, b)
    if a.score ~= b.score then return a.score > b.score end
    return a.layer * 1000 + a.head < b.layer * 1000 + b.head
  end)
  return out
end

-- Induction score of every head: array of {layer, head, name, score},
-- highest first.
function M.scores(m, set)
  return diagonal_scores(m, set, 1 - set.L, set.start, set.start + set.L - 1)
end

-- Previous-token score of every head (mean attention from each position
-- to the one before, over the whole row), highest first: the first half of
-- the two-layer induction circuit.
function M.previous_token_scores(m, set)
  return diagonal_scores(m, set, -1, 1, set.T - 1)
end

-- Accuracy with heads ({{layer, head}} or score rows) mean-ablated: each
-- head's z replaced, position by position, by its mean over the set.
function M.ablate(m, set, heads)
  local names = {}
  for l = 0, m.cfg.n_layer - 1 do names[#names + 1] = string.format("blocks.%d.attn.hook_z", l) end
  local _, cache = m:run_with_cache(set.rows, { names = names })
  local by_layer = {}
  for _, hd in ipairs(heads) do
    local l, h = hd.layer or hd[1], hd.head or hd[2]
    by_layer[l] = by_layer[l] or {}
    table.insert(by_layer[l], h)
  end
  local hooks = {}
  for l, hs in pairs(by_layer) do
    hooks[#hooks + 1] = { names[l + 1], ablate.mean{ from = cache, heads = hs } }
  end
  return M.accuracy(m, set, hooks)
end

-- The induction heads: those scoring at least threshold (default 0.4).
function M.heads(scores, threshold)
  local out = {}
  for _, s in ipairs(scores) do if s.score >= (threshold or 0.4) then out[#out + 1] = s end end
  return out
end

return M
