-- lantern.recipes.toy: the recipe of the default model, store/models/toy.
-- Every hyperparameter, the seed and the thread count are here; `lantern
-- train toy` runs it (lua/lantern/cli/train.lua) and docs/toy.md explains
-- the choices. Same recipe + same thread count = the same weights, bit for bit.
--
--   local toy = require("lantern.recipes.toy")
--   toy.run{out = "store/models/toy"}            -- the full recipe
--   toy.run{out = dir, steps = 20, quiet = true}  -- its first 20 steps
--
-- The data: a byte-level BPE vocabulary trained on the text mixture of
-- lt.datasets (IOI sentences, repeated random words, repeated stretches of
-- natural text, fortunes), then batches of one kind each (M.batches):
-- single IOI sentences, repeated random-id sequences (the text alone cannot
-- teach induction on arbitrary ids) and natural text. IOI sentences sit
-- alone in their rows, with no token before them, as the evaluation prompts
-- are read.
--
-- Two phases (docs/toy.md, "The recipe"): the first M.train.induction.steps
-- steps are id batches only, at a low learning rate, which is where the
-- induction circuit forms (a previous-token head in layer 0, induction
-- heads in layer 1); then the mixture, in which the circuit is kept and IOI
-- forms on top of it. Eight heads per layer rather than four: with four,
-- the circuit took every layer-1 head and IOI came out weaker and spread
-- over heads (docs/toy.md).
local ffi = require("ffi")

local M = {}

M.name = "toy"
M.seed = 5                  -- model init, data order and every dataset stream
M.threads = 2               -- OMP_NUM_THREADS = OPENBLAS_NUM_THREADS = this

-- GPT-2 architecture (tanh GELU, LayerNorm eps 1e-5, tied unembedding).
M.model = { n_layer = 3, n_head = 8, n_embd = 128, d_mlp = 512, n_ctx = 128 }
M.vocab_size = 1024

M.data = {
  -- The tokenizer: a byte-level BPE trained on the first tokenizer_bytes
  -- of this text mixture (shares of bytes, lt.datasets.mixture).
  weights = { ioi = 0.45, induction = 0.10, ["repeat"] = 0.05, text = 0.40 },
  tokenizer_bytes = 4e6,
  -- Training batches (M.batches): after the induction phase, each step's
  -- kind is drawn with these shares; rows per batch of each kind; the id
  -- rows: ids_copies copies of a random part of ids_len ids, with 0..ids_gap
  -- random ids before and between them.
  steps = { ioi = 0.51, ids = 0.30, text = 0.19 },
  batch = { ioi = 32, ids = 16, text = 8 },
  ids_len = { 8, 25 }, ids_copies = 3, ids_gap = 8,
}

M.train = {
  seq_len = 128, steps = 4800,
  -- Phase 1, induction: the first `steps` steps are id batches only, at a
  -- learning rate that warms up to max_lr and decays along a cosine meant
  -- for `schedule` steps (cut where the phase ends). Phase 2, the mixture:
  -- warmup again, to max_lr, cosine to min_lr at the last step.
  induction = { steps = 800, rows = 32, max_lr = 1e-3, min_lr = 1e-4, schedule = 2000 },
  max_lr = 2e-3, min_lr = 2e-4, warmup = 100,
  weight_decay = 0.1, grad_clip = 1.0, beta1 = 0.9, beta2 = 0.95,
  log_every = 20, checkpoint_every = 250,
}

-- The learning rate of a step (0-based), over the two phases.
function M.lr(step)
  local lt = require("lantern")
  local t, ind = M.train, M.train.induction
  if step < ind.steps then
    return lt.train.lr(step, { warmup = t.warmup, total = ind.schedule, max_lr = ind.max_lr, min_lr = ind.min_lr })
  end
  return lt.train.lr(step - ind.steps, { warmup = t.warmup, total = t.steps - ind.steps, max_lr = t.max_lr, min_lr = t.min_lr })
end

-- ---------------------------------------------------------------- threads

pcall(ffi.cdef, [[
int setenv(const char *name, const char *value, int overwrite);
int clock_gettime(int clk, void *ts);
]])

-- Sets the thread counts before the library (and so OpenMP and OpenBLAS)
-- is loaded. Returns false when the library was already loaded with other
-- counts (then the caller must restart the process).
function M.set_threads(n)
  n = n or M.threads
  local want = tostring(n)
  local loaded = package.loaded["lantern.ffi"] ~= nil
  if loaded then
    return os.getenv("OMP_NUM_THREADS") == want and os.getenv("OPENBLAS_NUM_THREADS") == want
  end
  ffi.C.setenv("OMP_NUM_THREADS", want, 1)
  ffi.C.setenv("OPENBLAS_NUM_THREADS", want, 1)
  return true
end

local ts = ffi.new("long[2]")
local function now()
  ffi.C.clock_gettime(1, ts)    -- CLOCK_MONOTONIC
  return tonumber(ts[0]) + tonumber(ts[1]) * 1e-9
end
M.now = now

-- ---------------------------------------------------------------- data

local function mixture_opts(bytes)
  return { bytes = bytes, seed = M.seed, split = "train", weights = M.data.weights }
end

-- Trains the tokenizer into dir (vocab.json, merges.txt) and returns it.
function M.tokenizer(dir)
  local D = require("lantern").datasets
  local text = D.mixture(mixture_opts(M.data.tokenizer_bytes))
  return D.train_tokenizer{ text = text, vocab_size = M.vocab_size, dir = dir }
end

-- A deterministic stream of training batches; next_batch() returns a list
-- of equal-length id rows, the batch's kind and, for the ids kind, the loss
-- mask (Trainer:step's). The first M.train.induction.steps batches are ids
-- batches of M.train.induction.rows rows; after them each batch holds one
-- kind of data (M.data.steps gives each kind's share of the steps, drawn
-- per step from the seed):
--   ioi   B.ioi single IOI sentences (prompt, answer, full stop) of the
--         same token length, one per row, nothing before or after them;
--         varied (lt.datasets.ioi's vary: composed templates, adjectives,
--         a sentence before some) so that the names do not sit at fixed
--         positions of each template;
--   ids   B.ids rows, each 0..ids_gap random ids, then ids_copies copies
--         of a random part of L ids (L drawn per row from ids_len, no id
--         twice in a part) with 0..ids_gap random ids between them, padded
--         with <|endoftext|> to the longest row of the batch. The loss mask
--         keeps only the predictions of ids in a later copy: the rest are
--         unpredictable by construction, and their gradient (noise) kept
--         induction from forming (docs/toy.md);
--   text  B.text rows of seq_len tokens cut from the natural-text corpus
--         (documents joined by <|endoftext|>).
-- One document per row for the ioi and ids kinds because attention over
-- packed unrelated documents drowns the in-context signal: with IOI
-- sentences packed 3 to a row, name copying had not formed after 1,500
-- steps; one sentence per row, it forms within ~1,000 (docs/toy.md).
-- opts.phase = 2 starts the stream at the mixture: the same kinds of batch
-- but not the run's data (for estimates such as M.tokens_per_step).
function M.batches(tok, opts)
  local lt = require("lantern")
  local D = lt.datasets
  local ioi_gen = require("lantern.datasets.ioi").generator({ seed = M.seed, split = "train", vary = true })
  local r = D.rng(M.seed, "toy/batches")
  local r_ids = D.rng(M.seed, "toy/induction_ids")
  local B, T = M.data.batch, M.train.seq_len
  local eot = tok.eot

  -- ioi: sentences bucketed by token length until a bucket holds B.ioi
  local buckets = {}
  local function ioi_batch()
    while true do
      local ex = ioi_gen()
      local ids = tok:encode(ex.prompt .. ex.target .. ".")
      local bk = buckets[#ids] or {}
      buckets[#ids] = bk
      bk[#bk + 1] = ids
      if #bk == B.ioi then
        buckets[#ids] = nil
        return bk
      end
    end
  end

  -- ids: n rows as described above; ids from every id but <|endoftext|>,
  -- no repeats inside a part (each position of a later copy has one answer)
  local pool = {}
  for i = 1, tok.vocab_size do if i - 1 ~= eot then pool[#pool + 1] = i - 1 end end
  local function ids_batch(n)
    local gap, copies = M.data.ids_gap, M.data.ids_copies
    local rows, repeated, Tb = {}, {}, 0
    for b = 1, n do
      local L = r_ids:int(M.data.ids_len[1], M.data.ids_len[2])
      local seq = r_ids:sample(pool, L)
      local row, rep = {}, {}
      local function filler() for _ = 1, r_ids:int(0, gap) do row[#row + 1] = r_ids:pick(pool); rep[#row] = false end end
      filler()
      for c = 1, copies do
        for i = 1, L do row[#row + 1] = seq[i]; rep[#row] = c > 1 end
        if c < copies then filler() end
      end
      for i = #row, T + 1, -1 do row[i], rep[i] = nil, nil end
      rows[b], repeated[b] = row, rep
      Tb = math.max(Tb, #row)
    end
    -- pad to the longest row; position t counts when it predicts a repeated id
    local mask = {}
    for b = 1, n do
      local row, rep, counted = rows[b], repeated[b], {}
      for t = #row + 1, Tb do row[t] = eot end
      for t = 1, Tb do counted[t] = rep[t + 1] or false end
      mask[b] = counted
    end
    return rows, mask
  end

  -- text: the train documents in a fresh shuffled order on every pass
  local docs = D.text_docs("train")
  local next_doc = D.rng(M.seed, "toy/text"):cycle(docs)
  local stream = {}
  local function fill(n)
    while #stream < n do
      for _, id in ipairs(tok:encode(next_doc())) do stream[#stream + 1] = id end
      stream[#stream + 1] = eot
    end
  end
  local function text_batch()
    fill(B.text * T)
    local rows, rest = {}, {}
    for b = 1, B.text do
      local row = {}
      for i = 1, T do row[i] = stream[(b - 1) * T + i] end
      rows[b] = row
    end
    for i = B.text * T + 1, #stream do rest[#rest + 1] = stream[i] end
    stream = rest
    return rows
  end

  local share = M.data.steps
  local calls = (opts and opts.phase == 2) and M.train.induction.steps or 0
  return function()
    calls = calls + 1
    if calls <= M.train.induction.steps then
      local rows, mask = ids_batch(M.train.induction.rows)
      return rows, "ids", mask
    end
    local u = r:random()
    if u < share.ioi then return ioi_batch(), "ioi" end
    if u < share.ioi + share.ids then
      local rows, mask = ids_batch(B.ids)
      return rows, "ids", mask
    end
    return text_batch(), "text"
  end
end

-- Mean tokens per step of a phase (1 or 2) over n batches (default 50) of
-- a stream of its own. A step's time is close to proportional to its
-- tokens, so M.run's time-left estimate weighs the steps left by these:
-- a phase-1 step holds about three times the tokens of a mixture step.
function M.tokens_per_step(tok, phase, n)
  n = n or 50
  local next_batch, sum = M.batches(tok, { phase = phase }), 0
  for _ = 1, n do
    local rows = next_batch()
    sum = sum + #rows * #rows[1]
  end
  return sum / n
end

-- The model at initialisation: GPT-2 init (lt_model_random) from the seed.
function M.init_model(tok)
  local lt = require("lantern")
  local c = {}
  for k, v in pairs(M.model) do c[k] = v end
  c.d_vocab = tok.vocab_size
  return lt.random_model(c, M.seed)
end

-- ---------------------------------------------------------------- files

local files = require("lantern.files")
local exists, read_file, write_file = files.exists, files.read, files.write

local function sh_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function copy_file(src, dst)
  write_file(dst, assert(read_file(src)))
end

-- The recipe as a compact, readable summary (written into train_log.txt).
function M.describe()
  local m, t, d = M.model, M.train, M.data
  local w = {}
  for _, k in ipairs({ "ioi", "induction", "repeat", "text" }) do w[#w + 1] = string.format("%s %.2f", k, d.weights[k]) end
  return table.concat({
    string.format("recipe lantern.recipes.toy (lua/lantern/recipes/toy.lua), seed %d", M.seed),
    string.format("threads OMP_NUM_THREADS=%d OPENBLAS_NUM_THREADS=%d", M.threads, M.threads),
    string.format("model GPT-2: n_layer %d, n_head %d, n_embd %d, d_mlp %d, n_ctx %d, d_vocab %d (BPE trained on %d bytes of the mixture {%s})",
      m.n_layer, m.n_head, m.n_embd, m.d_mlp, m.n_ctx, M.vocab_size, d.tokenizer_bytes, table.concat(w, ", ")),
    string.format("phase 1, induction: %d steps of id batches only (%d rows: %d copies of %d-%d random ids, 0-%d random ids before and between, loss on the later copies), lr warmup %d to %g, cosine toward %g over %d steps",
      t.induction.steps, t.induction.rows, d.ids_copies, d.ids_len[1], d.ids_len[2], d.ids_gap, t.warmup, t.induction.max_lr, t.induction.min_lr, t.induction.schedule),
    string.format("phase 2, mixture: ioi %.2f of steps (%d single sentences), ids %.2f (%d rows), text %.2f (%d x %d tokens); lr warmup %d to %g, cosine to %g at step %d",
      d.steps.ioi, d.batch.ioi, d.steps.ids, d.batch.ids, d.steps.text, d.batch.text, t.seq_len, t.warmup, t.max_lr, t.min_lr, t.steps),
    string.format("AdamW betas %g %g, weight decay %g, grad clip %g", t.beta1, t.beta2, t.weight_decay, t.grad_clip),
  }, "\n")
end

-- ---------------------------------------------------------------- training

-- opts: out (directory of the finished checkpoint), steps (default
-- M.train.steps: stop after this many; the learning-rate schedule is always
-- the recipe's), resume (continue from OUT.resume when present), quiet (no
-- progress line), log (write out/train_log.txt; default true).
-- Writes config.json, model.safetensors, vocab.json, merges.txt,
-- train_log.txt and recipe.lua into out. Returns the model and a summary.
function M.run(opts)
  opts = opts or {}
  local out = assert(opts.out, "toy.run: out is required")
  if not M.set_threads(M.threads) then
    error(string.format("the recipe needs OMP_NUM_THREADS=%d and OPENBLAS_NUM_THREADS=%d set before lantern loads", M.threads, M.threads), 0)
  end
  local lt = require("lantern")
  local t0 = now()
  local tcfg = M.train
  local steps = opts.steps or tcfg.steps
  -- beside the checkpoint, not in it (store/models/toy.resume is ignored by git)
  local resume_dir = out:gsub("/+$", "") .. ".resume"
  os.execute("mkdir -p " .. sh_quote(out))

  local tok = M.tokenizer(out)
  local bad = lt.datasets.ioi_multi_token_names(tok)
  if #bad > 0 then error("toy recipe: names that are not one token: " .. table.concat(bad, ", "), 0) end

  local m, start = nil, 0
  local state = opts.resume and read_file(resume_dir .. "/progress.txt")
  if state then
    start = tonumber(state:match("step (%d+)"))
    m = lt.load(resume_dir)
  else
    m = M.init_model(tok)
  end
  local tr = lt.train.trainer(m, { weight_decay = tcfg.weight_decay, grad_clip = tcfg.grad_clip,
    beta1 = tcfg.beta1, beta2 = tcfg.beta2 })
  if state then tr:load_state(resume_dir .. "/optimizer.safetensors") end

  local next_batch = M.batches(tok)
  for _ = 1, start do next_batch() end   -- the data position of the resumed run
  -- for the time left: the tokens still to train on, at the rate so far
  local per_step = { M.tokens_per_step(tok, 1, 20), M.tokens_per_step(tok, 2) }
  local function tokens_left(done)
    local p1 = math.min(tcfg.induction.steps, steps)
    return math.max(0, p1 - done) * per_step[1] + math.max(0, steps - math.max(done, p1)) * per_step[2]
  end
  local prep = now() - t0

  local log
  if opts.log ~= false then
    log = assert(io.open(out .. "/train_log.txt", state and "ab" or "wb"))
    if state then
      log:write(string.format("resumed at step %d from %s\n", start, resume_dir))
    else
      log:write(M.describe(), "\n")
      log:write(string.format("data and tokenizer ready in %.1f s\n", prep))
      log:write("step  loss_ioi  loss_ids  loss_text  grad_norm  lr  tokens_per_s  elapsed_s\n")
    end
  end

  local function save_resume(step)
    os.execute("mkdir -p " .. sh_quote(resume_dir))
    m:save(resume_dir)
    tr:save_state(resume_dir .. "/optimizer.safetensors")
    write_file(resume_dir .. "/progress.txt", string.format("step %d\n", step))
  end

  -- The loss printed is the mean over the last log_every steps of each
  -- kind (a single batch's loss jumps with its kind).
  local t_train, last_loss, tokens = now(), nil, 0
  local sum, cnt = { ioi = 0, ids = 0, text = 0 }, { ioi = 0, ids = 0, text = 0 }
  for step = start, steps - 1 do
    local batch, kind, mask = next_batch()
    local lr = M.lr(step)
    local loss, norm = tr:step(batch, lr, mask)
    last_loss = loss
    tokens = tokens + #batch * #batch[1]
    sum[kind], cnt[kind] = sum[kind] + loss, cnt[kind] + 1
    local done = step + 1
    local el = now() - t_train
    if done % tcfg.log_every == 0 or done == steps then
      local rate = tokens / el
      local left = tokens_left(done) / rate
      local by = {}
      for _, k in ipairs({ "ioi", "ids", "text" }) do
        by[#by + 1] = cnt[k] > 0 and string.format("%.3f", sum[k] / cnt[k]) or "-"
        sum[k], cnt[k] = 0, 0
      end
      if log then
        log:write(string.format("%d  %s  %.3f  %.3g  %.0f  %.1f\n", done, table.concat(by, "  "), norm, lr, rate, prep + el))
        log:flush()
      end
      if not opts.quiet then
        io.stderr:write(string.format("\rstep %5d/%d  loss ioi %s ids %s text %s  %6.0f tok/s  elapsed %4.0fs  left %4.0fs ",
          done, steps, by[1], by[2], by[3], rate, prep + el, left))
      end
    end
    if tcfg.checkpoint_every and done % tcfg.checkpoint_every == 0 and done < steps and opts.log ~= false then
      save_resume(done)
    end
  end
  if not opts.quiet then io.stderr:write("\n") end
  local total = now() - t0
  m:save(out)
  if log then
    log:write(string.format("done: %d steps, final loss %.4f, %.1f s in all (%.1f s data and tokenizer)\n",
      steps, last_loss or 0 / 0, total, prep))
    log:close()
  end
  -- a copy of the recipe beside the weights
  local src = (require("lantern").root or ".") .. "/lua/lantern/recipes/toy.lua"
  if exists(src) then copy_file(src, out .. "/recipe.lua") end
  if exists(resume_dir) and steps >= tcfg.steps then os.execute("rm -rf " .. sh_quote(resume_dir)) end
  return m, { steps = steps, loss = last_loss, seconds = total, prep_seconds = prep, tokenizer = tok }
end

return M
