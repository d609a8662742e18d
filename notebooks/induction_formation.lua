-- notebooks/induction_formation.lua: how fast do induction heads form?
--
--   ./scripts/lantern run notebooks/induction_formation.lua [--option value ...]
--   ./scripts/lantern run notebooks/induction_formation.lua --vocab 64 --steps 900
--
-- Trains a fresh GPT-2-architecture model on repeated random token ids only
-- and, every `every` steps, prints the training loss, the top-1 accuracy
-- on the second copy of 100 random 20-id sequences repeated once (the
-- `eval toy` test) and on the same sequences after 16 random ids, the best
-- induction score of any head and the best previous-token score. Copying
-- by absolute position (docs/toy.md) does well on the first test only and
-- needs no previous-token head; an induction circuit does well on both.
-- This is the harness behind the induction probes in docs/toy.md: why the
-- default model has no induction heads, and what would change that.
--
-- Options (defaults: the default model's shape, 3 data copies with gaps):
--   vocab 2048   d_vocab of the model; ids are drawn from all but the last
--   layers 3, heads 4, d_model 128 (d_mlp = 4 d_model), n_ctx 128
--   rows 32      sequences per step
--   len 8-25     length of the random part, drawn per step
--   copies 3     copies of the random part in a row
--   gap 8        random ids before the first copy and between copies, 0..gap
--                of them (--gap -1: copies back to back from position 0, which
--                admits a positional shortcut; see docs/toy.md)
--   lr 1e-3      peak learning rate (warmup 100 steps, cosine to lr/10)
--   mask 0       1: the loss counts only the predictions of repeated ids
--                (copies after the first), not the unpredictable ones
--   lnf 1        initial ln_final gain: with tied embeddings at GPT-2's
--                init the logits span only ~|wte row| sqrt(d_model) x gain
--                (docs/toy.md: why copying is slow at 2,048 ids)
--   steps 1000, every 100, seed 1
--   save DIR     write the trained model there (a Hugging Face directory)
local lt = require("lantern")
local ind = require("lantern.recipes.induction")

local o = { vocab = 2048, layers = 3, heads = 4, d_model = 128, n_ctx = 128, rows = 32, len = "8-25",
  copies = 3, gap = 8, lr = 1e-3, steps = 1000, every = 100, seed = 1, mask = 0, lnf = 1, save = "" }
local spec = {}
for k, v in pairs(o) do spec[k] = type(v) end
local given, rest = require("lantern.cli.args").parse(arg or {}, spec)
if #rest > 0 then error("unexpected argument '" .. rest[1] .. "' (options are --name value)", 0) end
for k, v in pairs(given) do o[k] = v end
local lo, hi = o.len:match("^(%d+)-(%d+)$")
lo, hi = tonumber(lo or o.len), tonumber(hi or o.len)
assert(lo and hi and lo >= 1 and hi >= lo, "--len must be N or LO-HI")

local m = lt.random_model({ n_layer = o.layers, n_head = o.heads, n_embd = o.d_model, d_mlp = 4 * o.d_model,
  n_ctx = o.n_ctx, d_vocab = o.vocab }, o.seed)
m:param("ln_f.weight"):fill_(o.lnf)
local tr = lt.train.trainer(m, { weight_decay = 0.1, grad_clip = 1.0, beta1 = 0.9, beta2 = 0.95 })
local r = lt.datasets.rng(o.seed, "notebooks/induction_formation")
local pool = {}
for i = 1, o.vocab - 1 do pool[i] = i - 1 end
local test = ind.prepare(m, { n = 100, seq_len = 20, seed = 7 })
local shifted = ind.prepare(m, { n = 100, seq_len = 20, seed = 7, random_prefix = 16 })

-- One step's rows, all of the same length so that they form a batch, and
-- for each row which predictions are of a repeated id (a copy after the first).
local function batch()
  local L = math.min(r:int(lo, hi), #pool)
  local gap = math.max(o.gap, 0)
  local T = math.min(o.n_ctx, o.copies * L + math.floor(gap * (o.copies + 1) / 2))
  local rows, repeated = {}, {}
  for b = 1, o.rows do
    local part, row, rep = r:sample(pool, L), {}, {}
    local function filler() if o.gap >= 0 then for _ = 1, r:int(0, gap) do row[#row + 1] = r:pick(pool); rep[#row] = false end end end
    filler()
    local copy = 0
    while #row < T do
      copy = copy + 1
      for i = 1, L do row[#row + 1] = part[i]; rep[#row] = copy > 1 end
      filler()
    end
    for i = #row, T + 1, -1 do row[i], rep[i] = nil, nil end
    -- position t predicts token t + 1
    local counted = {}
    for t = 1, T do counted[t] = rep[t + 1] or false end
    rows[b], repeated[b] = row, counted
  end
  return rows, repeated
end

print(string.format("model: %d layers, %d heads, d_model %d, d_vocab %d, ln_final gain %g; rows of %d copies of %d-%d random ids, gap %d, %d per step, lr %g, loss on %s",
  o.layers, o.heads, o.d_model, o.vocab, o.lnf, o.copies, lo, hi, o.gap, o.rows, o.lr, o.mask ~= 0 and "repeated ids only" or "every id"))
local sched = { warmup = 100, total = o.steps, max_lr = o.lr, min_lr = o.lr / 10 }
local sum, n = 0, 0
for step = 0, o.steps - 1 do
  local rows, repeated = batch()
  local loss = tr:step(rows, lt.train.lr(step, sched), o.mask ~= 0 and repeated or nil)
  sum, n = sum + loss, n + 1
  if (step + 1) % o.every == 0 or step + 1 == o.steps then
    local best, prev = ind.scores(m, test)[1], ind.previous_token_scores(m, test)[1]
    print(string.format("step %5d  loss %.3f  induction accuracy %5.1f%% (after 16 ids %5.1f%%)  best head %s %.3f  previous token %s %.2f",
      step + 1, sum / n, 100 * ind.accuracy(m, test), 100 * ind.accuracy(m, shifted), best.name, best.score, prev.name, prev.score))
    io.stdout:flush()
    sum, n = 0, 0
  end
end
if o.save ~= "" then
  m:save(o.save)
  print("saved " .. o.save)
end
