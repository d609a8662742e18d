-- lantern.sae_train: training SAEs on a model's activations (lt.sae.train)
-- and the evaluation metrics (lt.sae.evaluate, sae:evaluate). The per-element
-- work (shuffling, batching, the steps, the metric sums) is in C
-- (core/src/sae_train.c); Lua streams token windows through the model and
-- copies the hook point's activations into a buffer. docs/sae.md has the
-- formulas.
--
--   local sae, report = lt.sae.train(m, {hook = "blocks.2.mlp.hook_post", d_sae = 2048,
--                                        architecture = "topk", k = 32, tokens = 1e6})
--   local r = sae:evaluate(m)          -- explained variance, L0, CE loss recovered, ...
--   print(lt.sae.format_report(r))
local ffi = require("ffi")
local F = require("lantern.ffi")
local Tensor = require("lantern.tensor")
local C = F.C

local M = {}

local function now() return require("lantern.cli.bench").now() end

-- ------------------------------------------------------------ token data

-- Token windows as one flat int32 array of n * T ids. opts.ids: a flat Lua
-- array of ids or a list of windows; opts.text: a string; default: the
-- lt.datasets mixture (split opts.split, "train" for training), tokenised
-- with the model's tokenizer, enough for `tokens` tokens.
function M.windows(m, T, tokens, opts)
  opts = opts or {}
  local ids = opts.ids
  if ids and type(ids[1]) == "table" then
    local flat = {}
    for _, w in ipairs(ids) do
      for i = 1, T do
        if w[i] == nil then error(string.format("sae data: a window has %d ids, expected T = %d", #w, T), 3) end
        flat[#flat + 1] = w[i]
      end
    end
    ids = flat
  end
  if not ids then
    if not m.tokenizer then
      error("sae data: the model has no tokenizer; pass ids = {...} (token windows) or load it with {tokenizer = DIR}", 3)
    end
    local text = opts.text
    if not text then
      -- 4 bytes per token is generous for a BPE tokenizer on this text
      text = require("lantern.datasets").mixture{bytes = tokens * 4 + 4096, seed = opts.data_seed or 1,
        split = opts.split or "train"}
    end
    ids = m.tokenizer:encode(text)
  end
  local n = math.floor(math.min(#ids, tokens) / T)
  if n < 1 then error(string.format("sae data: %d tokens, fewer than one window of %d", #ids, T), 3) end
  local buf = ffi.new("int32_t[?]", n * T)
  for i = 0, n * T - 1 do buf[i] = ids[i + 1] end
  return buf, n
end

-- Calls fn(acts [B*T, d_in] float*, rows, ids, B) for consecutive batches
-- of windows, with the activations at hook (the model runs with
-- run_with_cache, names = {hook}).
local function stream(m, hook, buf, n, T, B, want_logits, fn)
  for w0 = 0, n - 1, B do
    local b = math.min(B, n - w0)
    local batch = {}
    for r = 1, b do
      local row = {}
      local base = (w0 + r - 1) * T
      for t = 1, T do row[t] = buf[base + t - 1] end
      batch[r] = row
    end
    local logits, cache = m:run_with_cache(batch, {names = {hook}, no_logits = not want_logits})
    local acts = cache[hook]
    if fn(acts.data, acts.numel / acts.shape[#acts.shape], batch, logits) == false then return end
  end
end

-- ------------------------------------------------------------ training

local function default_T(m) return math.min(m.cfg.n_ctx, 128) end

local function stats_line(st, done, total, t0)
  local el = now() - t0
  local rate = el > 0 and done / el or 0
  local left = rate > 0 and (total - done) / rate or 0
  local width = 20
  local fill = math.floor(width * math.min(1, done / total) + 0.5)
  return string.format("\r[%s%s] %3d%% %s/%s tok  loss %.4g  L0 %.1f  EV %.3f  dead %.1f%%  %.0f tok/s  %ds left ",
    string.rep("#", fill), string.rep("-", width - fill), math.floor(100 * done / total + 0.5),
    M.human(done), M.human(total), st.loss, st.l0, st.explained_variance, 100 * st.dead_fraction, rate, math.floor(left))
end

function M.human(n)
  if n >= 1e6 then return string.format("%.2fM", n / 1e6) end
  if n >= 1e3 then return string.format("%.1fk", n / 1e3) end
  return tostring(math.floor(n))
end

-- Trains an SAE on m's activations at opts.hook. opts:
--   hook (required), d_sae (required), architecture ("topk" default |
--   "standard"), k (topk, 32), l1 (standard: lambda, 5), tokens (training
--   tokens, 1e6), T (window, min(n_ctx, 128)), batch (rows per step,
--   4096), lr, eps, beta1, beta2, lr_warmup_steps, l1_warmup_steps (default
--   5% of the steps), dead_tokens (a latent is dead after this many
--   tokens without firing; default min(1e7, tokens / 5)), k_aux,
--   aux_coeff, resample_every, normalize (true), seed (0),
--   buffer_tokens (activations shuffled together, 65536), windows_per_run
--   (16), data ({ids=} or {text=}, see M.windows), progress (true: a line
--   on stderr; a function(stats, done, total) is called instead),
--   evaluate (true: run M.evaluate after training; a table gives its opts),
--   max_seconds (stop streaming after this long; report.stopped_early).
-- Returns the SAE (lt.sae, hook_name and model_name set) and a report
-- {stats, seconds, tokens, eval}.
function M.train(m, opts)
  opts = opts or {}
  local hook, d_sae = opts.hook, opts.d_sae
  if type(hook) ~= "string" then error("sae.train: opts.hook (a hook point name) is required", 2) end
  if type(d_sae) ~= "number" then error("sae.train: opts.d_sae is required", 2) end
  local arch = opts.architecture or "topk"
  if arch == "relu" then arch = "standard" end
  if arch ~= "topk" and arch ~= "standard" then error("sae.train: architecture must be topk or standard", 2) end
  local point = m:hook_point(hook)
  local v = ffi.new("lt_view")
  F.check(C.lt_hook_shape(m.ptr, point, 1, 1, v), "sae.train")
  local d_in = tonumber(v.shape[v.ndim - 1])
  local saemod = require("lantern.sae")
  local sae = saemod.new{d_in = d_in, d_sae = d_sae, architecture = arch, k = opts.k or 32, hook_name = hook,
    model_name = m.name, seed = opts.seed or 0}

  local T = opts.T or default_T(m)
  local tokens = opts.tokens or 1e6
  local buffer_tokens = math.max(opts.buffer_tokens or 65536, T)
  local batch = opts.batch or 4096
  local o = ffi.new("lt_sae_train_opts")
  C.lt_sae_train_default_opts(arch == "topk" and C.LT_SAE_TOPK or C.LT_SAE_RELU, o)
  o.batch = batch
  local steps_total = math.floor(tokens / batch)
  o.total_steps = steps_total
  o.seed = opts.seed or 0
  if opts.lr then o.lr = opts.lr end
  if opts.eps then o.eps = opts.eps end
  if opts.beta1 then o.beta1 = opts.beta1 end
  if opts.beta2 then o.beta2 = opts.beta2 end
  if opts.lr_warmup_steps then o.lr_warmup_steps = opts.lr_warmup_steps end
  if opts.l1 then o.l1_coeff = opts.l1 end
  o.l1_warmup_steps = opts.l1_warmup_steps or math.floor(steps_total / 20)
  o.dead_rows = opts.dead_tokens or math.min(1e7, math.max(batch, math.floor(tokens / 5)))
  if opts.k_aux then o.k_aux = opts.k_aux end
  if opts.aux_coeff then o.aux_coeff = opts.aux_coeff end
  if opts.resample_every then o.resample_every = opts.resample_every
  elseif arch == "standard" then o.resample_every = math.max(1, math.floor(steps_total / 8)) end
  o.resample_until = opts.resample_until or math.floor(steps_total * 0.6)
  o.normalize = opts.normalize == false and 0 or 1
  local tp = ffi.new("lt_sae_trainer *[1]")
  F.check(C.lt_sae_trainer_new(sae.ptr, o, tp), "sae.train")
  local trainer = ffi.gc(tp[0], C.lt_sae_trainer_free)

  local t0 = now()
  local ids, n_windows = M.windows(m, T, tokens, opts.data)
  local rows_cap = math.floor(buffer_tokens / T) * T
  local xbuf = ffi.new("float[?]", rows_cap * d_in)
  local filled, done, initialised = 0, 0, false
  local report_stopped = false
  local st = ffi.new("lt_sae_train_stats")
  local total = n_windows * T
  local progress = opts.progress
  if progress == nil then progress = true end
  local function flush()
    if filled == 0 then return end
    if not initialised then
      F.check(C.lt_sae_trainer_init(trainer, xbuf, filled), "sae.train")
      initialised = true
    end
    F.check(C.lt_sae_trainer_train(trainer, xbuf, filled, st), "sae.train")
    done = done + filled
    filled = 0
    if type(progress) == "function" then progress(st, done, total)
    elseif progress then io.stderr:write(stats_line(st, done, total, t0)) io.stderr:flush() end
  end
  stream(m, hook, ids, n_windows, T, opts.windows_per_run or 16, false, function(acts, rows)
    local off = 0
    while off < rows do
      local take = math.min(rows - off, rows_cap - filled)
      ffi.copy(xbuf + filled * d_in, acts + off * d_in, take * d_in * 4)
      filled, off = filled + take, off + take
      if filled == rows_cap then flush() end
    end
    -- a time limit stops the stream (the learning rate schedule assumed all tokens)
    if opts.max_seconds and now() - t0 > opts.max_seconds then
      report_stopped = true
      return false
    end
  end)
  -- a last part-buffer still trains when it holds a batch
  if filled >= batch then flush() end
  if progress == true then io.stderr:write("\n") end
  if not initialised then error(string.format("sae.train: %d tokens are fewer than one batch of %d", total, batch), 2) end
  F.check(C.lt_sae_trainer_finish(trainer), "sae.train")
  local report = {seconds = now() - t0, tokens = tonumber(st.rows), steps = tonumber(st.steps),
    stats = {loss = st.loss, l0 = st.l0, explained_variance = st.explained_variance, dead_fraction = st.dead_fraction,
      aux_loss = st.aux_loss, mse = st.mse, resampled = tonumber(st.resampled)},
    scale = C.lt_sae_trainer_scale(trainer), stopped_early = report_stopped}
  trainer = nil
  if opts.evaluate ~= false then
    local eo = type(opts.evaluate) == "table" and opts.evaluate or {}
    if eo.T == nil then eo.T = T end
    report.eval = M.evaluate(sae, m, eo.data, eo)
  end
  return sae, report
end

-- ------------------------------------------------------------ metrics

local logsumexp = require("lantern.metrics").logsumexp

-- Sums over a batch of the next-token CE of logits (positions 0..T-2) and
-- of KL(clean || logits) (all positions); clean_lz[r] is the clean row's
-- logsumexp.
local function ce_kl(batch, logits, clean, clean_lz, V, T)
  local ce, kl = 0, 0
  for b = 0, #batch - 1 do
    for t = 0, T - 1 do
      local r = b * T + t
      local row, c = logits.data + r * V, clean.data + r * V
      local lz, cz = logsumexp(row, V), clean_lz[r]
      if t < T - 1 then ce = ce - (row[batch[b + 1][t + 2]] - lz) end
      local s = 0
      for i = 0, V - 1 do
        local lc = c[i] - cz
        s = s + math.exp(lc) * (lc - (row[i] - lz))
      end
      kl = kl + s
    end
  end
  return ce, kl
end

-- Histogram of log10 latent densities: bins of width 0.5 from the lowest
-- possible density (1 / tokens) up to 0; latents that never fired are
-- counted apart.
local function density_histogram(fires, L, rows)
  local lo = math.floor(2 * math.log10(1 / rows)) / 2
  local nb = math.floor(-lo / 0.5 + 0.5)
  local bins = {}
  for i = 1, nb do bins[i] = {lo = lo + (i - 1) * 0.5, hi = lo + i * 0.5, count = 0} end
  local never = 0
  for l = 0, L - 1 do
    local f = tonumber(fires[l])
    if f == 0 then never = never + 1
    else
      local x = math.log10(f / rows)
      local i = math.min(nb, math.max(1, math.floor((x - lo) / 0.5) + 1))
      bins[i].count = bins[i].count + 1
    end
  end
  return {bins = bins, never = never}
end

-- The metrics of sae on m's activations at sae.hook_name over evaluation
-- windows (data: {ids=} or {text=} as M.windows; default the mixture's
-- test split). opts: tokens (16384), T, windows_per_run (16), ce (true:
-- also CE loss recovered and the KL score, three forward passes per batch).
-- Returns a table; docs/sae.md defines every field.
function M.evaluate(sae, m, data, opts)
  opts = opts or {}
  local hook = sae.hook_name
  if not hook then error("sae:evaluate: the SAE has no hook_name", 2) end
  sae:check_model(m)
  local T = opts.T or default_T(m)
  local D, L = sae.d_in, sae.d_sae
  local d = data or {}
  if d.split == nil then d.split = "test" end
  local ids, n_windows = M.windows(m, T, opts.tokens or 16384, d)
  local acc = ffi.new("lt_sae_eval_acc")
  local sum_x = ffi.new("double[?]", D)
  local fires = ffi.new("int64_t[?]", L)
  acc.sum_x, acc.fires = sum_x, fires
  local want_ce = opts.ce ~= false
  local V = m.cfg.d_vocab
  local ce = {clean = 0, sae = 0, zero = 0, n = 0}
  local kl = {sae = 0, zero = 0, n = 0}
  -- other SAEs come off for the evaluation and back on after it
  local previous = m:saes()
  local restore = {}
  for i, a in ipairs(previous) do restore[i] = a end
  if #restore > 0 then m:detach_saes() end
  local ablate = require("lantern.ablate")
  local ok, err = pcall(function()
    -- a batch's logits are B x T x d_vocab floats: keep them near 4M
    local per_run = opts.windows_per_run or math.max(1, math.min(16, math.floor(4e6 / (T * V))))
    stream(m, hook, ids, n_windows, T, per_run, want_ce, function(acts, rows, batch, logits)
      F.check(C.lt_sae_eval_accumulate(sae.ptr, acts, rows, acc), "sae:evaluate")
      if not want_ce then return end
      local B = #batch
      local clean_lz = ffi.new("double[?]", B * T)
      for r = 0, B * T - 1 do clean_lz[r] = logsumexp(logits.data + r * V, V) end
      for b = 0, B - 1 do
        for t = 0, T - 2 do
          local r = b * T + t
          ce.clean = ce.clean - (logits.data[r * V + batch[b + 1][t + 2]] - clean_lz[r])
        end
      end
      ce.n = ce.n + B * (T - 1)
      kl.n = kl.n + B * T
      local zl = m:run_with_hooks(batch, {{hook, ablate.zero{}}})
      local c1, k1 = ce_kl(batch, zl, logits, clean_lz, V, T)
      m:attach_sae(sae, {use_error_term = false})
      local ok2, sl = pcall(function() return m:forward(batch) end)
      m:detach_saes()
      if not ok2 then error(sl, 0) end
      local c2, k2 = ce_kl(batch, sl, logits, clean_lz, V, T)
      ce.zero, kl.zero = ce.zero + c1, kl.zero + k1
      ce.sae, kl.sae = ce.sae + c2, kl.sae + k2
    end)
  end)
  for _, a in ipairs(restore) do m:attach_sae(a.sae, {hook = a.hook, use_error_term = a.use_error_term}) end
  if not ok then error(err, 0) end

  local n = tonumber(acc.rows)
  -- sum ||x - mean||^2 = sum ||x||^2 - n ||mean||^2, the mean over this set
  local mean_sq = 0
  for j = 0, D - 1 do mean_sq = mean_sq + (sum_x[j] / n) ^ 2 end
  local centred = acc.sq_x - n * mean_sq
  local r = {tokens = n, hook = hook, d_in = D, d_sae = L, architecture = sae.architecture, k = sae.k}
  r.mse = acc.sq_err / n                                   -- mean ||x - x_hat||^2 per token
  r.explained_variance = 1 - acc.sq_err / centred
  r.nmse = acc.sq_err / centred                            -- normaliser: the error of predicting the mean
  r.nmse_norm = acc.sq_err / acc.sq_x                      -- normaliser: ||x||^2
  r.l0 = acc.l0 / n
  r.l1 = acc.l1 / n
  local dead, dense = 0, 0
  for l = 0, L - 1 do
    local f = tonumber(fires[l])
    if f == 0 then dead = dead + 1 end
    if f > 0.1 * n then dense = dense + 1 end
  end
  r.dead, r.dead_fraction = dead, dead / L
  r.dense, r.dense_fraction = dense, dense / L
  r.density_histogram = density_histogram(fires, L, n)
  if want_ce then
    r.ce_clean, r.ce_sae, r.ce_zero = ce.clean / ce.n, ce.sae / ce.n, ce.zero / ce.n
    r.ce_loss_recovered = (r.ce_zero - r.ce_sae) / (r.ce_zero - r.ce_clean)
    r.kl_sae, r.kl_zero = kl.sae / kl.n, kl.zero / kl.n
    r.kl_div_score = (r.kl_zero - r.kl_sae) / r.kl_zero
  end
  return r
end

-- The density histogram as text lines.
function M.format_histogram(h, width)
  width = width or 40
  local mx = h.never
  for _, b in ipairs(h.bins) do mx = math.max(mx, b.count) end
  local lines = {"log10 feature density (fraction of tokens a latent fires on):"}
  local function bar(c) return string.rep("#", mx > 0 and math.floor(width * c / mx + 0.5) or 0) end
  lines[#lines + 1] = string.format("  %-13s %6d %s", "never", h.never, bar(h.never))
  for _, b in ipairs(h.bins) do
    lines[#lines + 1] = string.format("  [%5.1f,%5.1f) %6d %s", b.lo, b.hi, b.count, bar(b.count))
  end
  return table.concat(lines, "\n")
end

-- The report of M.evaluate as text.
function M.format_report(r)
  local lines = {
    string.format("SAE %s%s d_in %d d_sae %d at %s, %d evaluation tokens", r.architecture,
      r.k and ("(k=" .. r.k .. ")") or "", r.d_in, r.d_sae, r.hook, r.tokens),
    string.format("  explained variance  %.4f   (1 - sum|x - x_hat|^2 / sum|x - mean|^2, mean over these tokens)",
      r.explained_variance),
    string.format("  normalised MSE      %.4f   (by the error of predicting the mean; by |x|^2: %.4f)", r.nmse, r.nmse_norm),
    string.format("  MSE per token       %.5g", r.mse),
    string.format("  L0                  %.2f", r.l0),
    string.format("  L1                  %.4g", r.l1),
    string.format("  dead latents        %d (%.1f%%, never fired)", r.dead, 100 * r.dead_fraction),
    string.format("  dense latents       %d (%.1f%%, fire on > 10%% of tokens)", r.dense, 100 * r.dense_fraction),
  }
  if r.ce_loss_recovered then
    lines[#lines + 1] = string.format("  CE loss recovered   %.4f   (clean %.4f, with SAE %.4f, zero-ablated %.4f)",
      r.ce_loss_recovered, r.ce_clean, r.ce_sae, r.ce_zero)
    lines[#lines + 1] = string.format("  KL score            %.4f   (KL to clean: with SAE %.4f, zero-ablated %.4f)",
      r.kl_div_score, r.kl_sae, r.kl_zero)
  end
  lines[#lines + 1] = M.format_histogram(r.density_histogram)
  return table.concat(lines, "\n")
end

return M
