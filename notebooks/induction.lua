-- notebooks/induction.lua: finding induction heads.
--
--   ./scripts/lantern run notebooks/induction.lua [MODEL_DIR]
--
-- An induction head completes "A B ... A" with "B": from the current token
-- it attends to the token that followed the previous occurrence of the
-- current token, and copies it (Olsson et al., 2022). It needs a
-- previous-token head in an earlier layer, which writes "the token before
-- me was A" into each position for the induction head's keys to match.
-- On random token sequences repeated once, nothing but this mechanism can
-- predict the second copy, which makes them the cleanest test.
local lt = require("lantern")
local ind = require("lantern.recipes.induction")

local dir = arg and arg[1] or (lt.root .. "/store/models/toy")
local m = lt.load(dir)
print(m)

-- 1. Can the model copy? ------------------------------------------------------
local set = ind.prepare(m, { n = 100, seq_len = 20, seed = 5 })
local acc = ind.accuracy(m, set)
print(string.format("\n1. %d sequences of 20 random token ids, repeated: top-1 accuracy on the second copy %.1f%%",
  #set.rows, 100 * acc))
-- The first copy is unpredictable: the loss there is near log(d_vocab).
local logits = m:forward(set.rows[1])
local function nll(pos) -- loss of predicting token pos+1 from position pos
  local row = logits:select(pos)
  local mx = row:max()
  local z = 0
  for i = 0, row.numel - 1 do z = z + math.exp(row.data[i] - mx) end
  return mx + math.log(z) - row.data[set.rows[1][pos + 2]]
end
local first, second = 0, 0
for p = 0, set.L - 2 do first = first + nll(p) end
for p = set.start, set.start + set.L - 2 do second = second + nll(p) end
print(string.format("   loss of sequence 1: first copy %.2f per token, second copy %.2f (log d_vocab = %.2f)",
  first / (set.L - 1), second / (set.L - 1), math.log(m.cfg.d_vocab)))

-- 2. Induction scores ---------------------------------------------------------
-- Mean attention from each token of the second copy to the token after its
-- previous occurrence (offset 1 - L).
local scores = ind.scores(m, set)
print("\n2. induction score of each head (highest first):")
for i = 1, 6 do print(string.format("   %-6s %.3f", scores[i].name, scores[i].score)) end

-- 3. Previous-token heads ------------------------------------------------------
-- The other half of the circuit: mean attention from each position to the
-- one just before it, in layers before the best induction head.
local best = scores[1]
local names = {}
for l = 0, m.cfg.n_layer - 1 do names[#names + 1] = string.format("blocks.%d.attn.hook_pattern", l) end
local _, cache = m:run_with_cache(set.rows, { names = names })
print(string.format("\n3. previous-token score (attention to position - 1) in layers before %s:", best.name))
local T, H = set.T, m.cfg.n_head
for l = 0, best.layer - 1 do
  local p = cache[names[l + 1]].data
  local line = {}
  for h = 0, H - 1 do
    local s, n = 0, 0
    for b = 0, #set.rows - 1 do
      for q = 1, T - 1 do s = s + p[((b * H + h) * T + q) * T + q - 1]; n = n + 1 end
    end
    line[#line + 1] = string.format("H%d %.2f", h, s / n)
  end
  print(string.format("   layer %d: %s", l, table.concat(line, "  ")))
end

-- 4. Are they necessary? --------------------------------------------------------
-- Mean-ablate the induction heads (their output replaced by its mean over
-- the sequences, position by position) and measure copying again; then the
-- same number of other heads for comparison.
local heads = ind.heads(scores, 0.4)
if #heads == 0 then heads = { scores[1] } end
local hn = {}
for i, h in ipairs(heads) do hn[i] = h.name end
print(string.format("\n4. mean-ablating %s: accuracy %.1f%% -> %.1f%%", table.concat(hn, ", "), 100 * acc,
  100 * ind.ablate(m, set, heads)))
local others = {}
for i = #scores, #scores - #heads + 1, -1 do others[#others + 1] = scores[i] end
local on = {}
for i, h in ipairs(others) do on[i] = h.name end
print(string.format("   mean-ablating the %d lowest-scoring heads instead (%s): accuracy %.1f%%", #others,
  table.concat(on, ", "), 100 * ind.ablate(m, set, others)))
