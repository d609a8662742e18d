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
local head_names = require("lantern.recipes.ioi").head_names   -- "L1/H3, L1/H5, ..."

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
-- one just before it. It must sit in a layer before the induction heads,
-- whose keys read what it writes.
local best = scores[1]
local prev = ind.previous_token_scores(m, set)
local before = {}
for _, s in ipairs(prev) do if s.layer < best.layer then before[#before + 1] = s end end
print(string.format("\n3. previous-token score (attention to position - 1), heads in layers before %s, highest first:", best.name))
for i = 1, math.min(4, #before) do print(string.format("   %-6s %.3f", before[i].name, before[i].score)) end

-- 4. Are they necessary? --------------------------------------------------------
-- Mean-ablate the induction heads (their output replaced by its mean over
-- the sequences, position by position) and measure copying again; then the
-- previous-token heads alone (the circuit's first half: without them the
-- induction heads' keys have nothing to match); then, for comparison, as
-- many heads as there are induction heads, the lowest-scoring ones outside
-- both halves of the circuit.
local heads = ind.heads(scores, 0.4)
if #heads == 0 then heads = { scores[1] } end
local prev_heads = ind.heads(before, 0.4)
local in_circuit = {}
for _, h in ipairs(heads) do in_circuit[h.name] = true end
for _, h in ipairs(prev_heads) do in_circuit[h.name] = true end
print(string.format("\n4. mean-ablating %s: accuracy %.1f%% -> %.1f%%", head_names(heads), 100 * acc,
  100 * ind.ablate(m, set, heads)))
if #prev_heads > 0 then
  print(string.format("   mean-ablating the previous-token heads (%s) alone: accuracy %.1f%%", head_names(prev_heads),
    100 * ind.ablate(m, set, prev_heads)))
end
local others = {}
for i = #scores, 1, -1 do
  if #others == #heads then break end
  if not in_circuit[scores[i].name] then others[#others + 1] = scores[i] end
end
print(string.format("   mean-ablating %d heads outside the circuit instead (%s): accuracy %.1f%%", #others,
  head_names(others), 100 * ind.ablate(m, set, others)))
