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
-- natural text, fortunes), and that mixture tokenised and interleaved with
-- repeated random token-id sequences (the text alone cannot teach induction
-- on arbitrary ids). Each training row starts at a document boundary, with
-- no token before it, as the evaluation prompts are read.
local ffi = require("ffi")

local M = {}

M.name = "toy"
M.seed = 20240501           -- model init, data order and every dataset stream
M.threads = 2               -- OMP_NUM_THREADS = OPENBLAS_NUM_THREADS = this

-- GPT-2 architecture (tanh GELU, LayerNorm eps 1e-5, tied unembedding).
M.model = { n_layer = 4, n_head = 8, n_embd = 128, d_mlp = 512, n_ctx = 128 }
M.vocab_size = 2048

M.data = {
  -- shares of the bytes of the text mixture (lt.datasets.mixture)
  weights = { ioi = 0.45, induction = 0.10, ["repeat"] = 0.05, text = 0.40 },
  tokenizer_bytes = 4e6,     -- the first this many bytes of the mixture train the BPE
  bytes_per_token = 3.2,     -- used only to size how much text to generate
  -- repeated random id sequences: this share of the documents' tokens,
  -- random part seq_len[1]..seq_len[2] ids drawn from the whole vocabulary
  -- except <|endoftext|>, repeated once
  -- warm_steps: the first steps see only these sequences (a curriculum:
  -- in-context copying forms there within a few hundred steps, while in
  -- the mixture from the start it had not formed after 1,100 steps)
  induction_ids = { share = 0.25, seq_len = { 8, 30 }, warm_steps = 300 },
}

M.train = {
  batch = 8, seq_len = 128, steps = 2200,
  max_lr = 3e-3, min_lr = 3e-4, warmup = 150,
  weight_decay = 0.1, grad_clip = 1.0, beta1 = 0.9, beta2 = 0.95,
  log_every = 10, checkpoint_every = 100,
}

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

-- A deterministic stream of training rows (arrays of seq_len ids), each
-- starting at a document: documents (tokenised mixture documents and
-- repeated id sequences, each followed by <|endoftext|>) are packed into
-- the row; the one that overflows is cut and the next row starts at the
-- next document. n_rows: how many rows will be asked for (sizes the text).
-- Returns next_row().
function M.rows(tok, n_rows, opts)
  opts = opts or {}
  local lt = require("lantern")
  local D = lt.datasets
  local T = opts.seq_len or M.train.seq_len
  local eot = tok.eot
  local text_share = 1 - M.data.induction_ids.share
  -- mixture_docs is prefix-stable: asking for more bytes gives the same
  -- documents first, so running short only means generating more.
  local bytes = (n_rows * T * 1.3 + 4096) * text_share * M.data.bytes_per_token
  local docs = D.mixture_docs(mixture_opts(bytes))
  local r = D.rng(M.seed, "toy/induction_ids")
  local pool = {}
  for i = 1, tok.vocab_size - 1 do pool[i] = i - 1 end
  local lo, hi = M.data.induction_ids.seq_len[1], M.data.induction_ids.seq_len[2]
  local share = M.data.induction_ids.share
  local di, made_ids, made_all = 0, 0, 0
  local warm_rows, row_no = (M.data.induction_ids.warm_steps or 0) * M.train.batch, 0
  local function next_doc()
    -- an id sequence whenever they are below their share of tokens so far
    -- (and always during the first warm_rows rows)
    local ids
    local warm = row_no <= warm_rows
    if warm or made_all == 0 or made_ids / made_all < share then
      local seq = r:sample(pool, r:int(lo, hi))
      ids = {}
      for rep = 0, 1 do for i = 1, #seq do ids[rep * #seq + i] = seq[i] end end
      ids[#ids + 1] = eot
      if not warm then made_ids, made_all = made_ids + #ids, made_all + #ids end   -- shares count after the warm-up
      return ids
    else
      di = di + 1
      if di > #docs then
        bytes = bytes * 2
        docs = D.mixture_docs(mixture_opts(bytes))
      end
      ids = tok:encode(docs[di].text)
    end
    ids[#ids + 1] = eot
    made_all = made_all + #ids
    return ids
  end
  -- The document that overflows a row is cut there; its rest starts the
  -- next row when it is at least T/4 tokens long (long texts), else the
  -- next row starts at the next document.
  local carry
  return function()
    row_no = row_no + 1
    local row = {}
    while #row < T do
      local d = carry or next_doc()
      carry = nil
      local room = T - #row
      for i = 1, math.min(#d, room) do row[#row + 1] = d[i] end
      if #d - room >= T / 4 then
        carry = {}
        for i = room + 1, #d do carry[#carry + 1] = d[i] end
      end
    end
    return row
  end
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
    string.format("model GPT-2: n_layer %d, n_head %d, n_embd %d, d_mlp %d, n_ctx %d, d_vocab %d (BPE trained on %d bytes of the mixture)",
      m.n_layer, m.n_head, m.n_embd, m.d_mlp, m.n_ctx, M.vocab_size, d.tokenizer_bytes),
    string.format("data text mixture shares {%s}; repeated random id sequences %.2f of tokens (random part %d-%d ids), only them in the first %d steps",
      table.concat(w, ", "), d.induction_ids.share, d.induction_ids.seq_len[1], d.induction_ids.seq_len[2], d.induction_ids.warm_steps or 0),
    string.format("train %d steps x %d rows x %d tokens; AdamW lr %g warmup %d cosine to %g, betas %g %g, weight decay %g, grad clip %g",
      t.steps, t.batch, t.seq_len, t.max_lr, t.warmup, t.min_lr, t.beta1, t.beta2, t.weight_decay, t.grad_clip),
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

  local next_row = M.rows(tok, steps * tcfg.batch)
  for _ = 1, start * tcfg.batch do next_row() end   -- the data position of the resumed run
  local prep = now() - t0

  local log
  if opts.log ~= false then
    log = assert(io.open(out .. "/train_log.txt", state and "ab" or "wb"))
    if state then
      log:write(string.format("resumed at step %d from %s\n", start, resume_dir))
    else
      log:write(M.describe(), "\n")
      log:write(string.format("data and tokenizer ready in %.1f s\n", prep))
      log:write("step  loss  grad_norm  lr  tokens_per_s  elapsed_s\n")
    end
  end

  local function save_resume(step)
    os.execute("mkdir -p " .. sh_quote(resume_dir))
    m:save(resume_dir)
    tr:save_state(resume_dir .. "/optimizer.safetensors")
    write_file(resume_dir .. "/progress.txt", string.format("step %d\ndata_rows %d\n", step, step * tcfg.batch))
  end

  local tokens_per_step = tcfg.batch * tcfg.seq_len
  local t_train, last_loss = now(), nil
  local sched = { warmup = tcfg.warmup, total = tcfg.steps, max_lr = tcfg.max_lr, min_lr = tcfg.min_lr }
  for step = start, steps - 1 do
    local batch = {}
    for b = 1, tcfg.batch do batch[b] = next_row() end
    local lr = lt.train.lr(step, sched)
    local loss, norm = tr:step(batch, lr)
    last_loss = loss
    local done = step + 1
    local el = now() - t_train
    local rate = (done - start) * tokens_per_step / el
    if done % tcfg.log_every == 0 or done == steps then
      local left = (steps - done) * tokens_per_step / rate
      if log then
        log:write(string.format("%d  %.4f  %.3f  %.3g  %.0f  %.1f\n", done, loss, norm, lr, rate, prep + el))
        log:flush()
      end
      if not opts.quiet then
        io.stderr:write(string.format("\rstep %5d/%d  loss %.4f  %6.0f tok/s  elapsed %4.0fs  left %4.0fs ",
          done, steps, loss, rate, prep + el, left))
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
