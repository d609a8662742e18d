-- lantern eval toy: the quality and the mechanisms of the default model
-- (issue 5, items 5 and 6), computed live and compared with the thresholds.
--
--   ./scripts/lantern eval toy [--model DIR] [--n 1000] [--json FILE]
--
-- Everything printed is computed in this run. Exit status 0 when every
-- threshold passes, 1 otherwise.
local usage = [[
usage: lantern eval toy [--model DIR] [--n N] [--induction-n N] [--quiet]

Evaluates the default model (store/models/toy, or DIR) on:
  IOI          accuracy (logit of IO above S) and mean logit difference on
               N (default 1000) test prompts: held-out templates and name pairs
  induction    top-1 accuracy on the second copy of random 20-token sequences
               (and, without a threshold, on the same after 16 random ids)
  text         perplexity on the held-out split of the fortunes corpus
  mechanisms   mean-ablating the 3 heads with the largest summed |estimated
               total effect| on IOI vs 3 random other heads (20 draws);
               induction scores, and ablating the induction heads
and prints PASS or FAIL for each threshold of the issue.]]

local M = {}

M.THRESHOLDS = {
  ioi_accuracy = 0.95, ioi_logit_diff = 3.0, induction_accuracy = 0.90,
  top_drop = 0.50, random_drop = 0.20, induction_score = 0.5, induction_ablation = 0.5,
}

local IOI_SEED, INDUCTION_SEED = 1, 1
local PREFIXED_IDS = 16     -- random ids before the sequences of the second induction test

-- Perplexity on the test split of the natural text: documents joined by
-- <|endoftext|>, cut into rows of n_ctx tokens. Returns perplexity per
-- token, bits per byte, token count.
function M.perplexity(m, opts)
  opts = opts or {}
  local lt = require("lantern")
  local docs = lt.datasets.text_docs("test")
  local T = opts.seq_len or m.cfg.n_ctx
  local eot = m.tokenizer.eot
  local stream, bytes = {}, 0
  for _, d in ipairs(docs) do
    for _, id in ipairs(m:to_tokens(d)) do stream[#stream + 1] = id end
    stream[#stream + 1] = eot
    bytes = bytes + #d
    if opts.max_bytes and bytes >= opts.max_bytes then break end
  end
  local rows = {}
  for s = 1, #stream - T + 1, T do
    local r = {}
    for i = 0, T - 1 do r[i + 1] = stream[s + i] end
    rows[#rows + 1] = r
  end
  local total, n = 0, 0
  local B = 32
  for s = 1, #rows, B do
    local batch = {}
    for i = s, math.min(s + B - 1, #rows) do batch[#batch + 1] = rows[i] end
    local loss = m:loss(batch)
    total = total + loss * #batch * (T - 1)
    n = n + #batch * (T - 1)
  end
  local nll = total / n
  local used_bytes = bytes * (#rows * T) / #stream     -- bytes of the text actually scored, approximately
  return { perplexity = math.exp(nll), loss = nll, tokens = n,
    bits_per_byte = nll * n / math.log(2) / used_bytes }
end

-- All figures, as a table. opts: n (IOI prompts, 1000), induction_n (200),
-- draws (20), log (function(string) for progress, optional).
function M.evaluate(m, opts)
  opts = opts or {}
  local lt = require("lantern")
  local ioi = require("lantern.recipes.ioi")
  local ind = require("lantern.recipes.induction")
  local say = opts.log or function() end
  local r = { model = tostring(m) }

  say("IOI")
  local set = ioi.prepare(m, lt.datasets.ioi{ n = opts.n or 1000, seed = IOI_SEED, split = "test" })
  r.ioi = ioi.evaluate(m, set)
  say("IOI head effects and ablations")
  r.ablation = ioi.ablation_test(m, set, { top = 3, draws = opts.draws or 20, seed = 0, clean = r.ioi.mean_logit_diff })

  say("induction")
  local n_ind = opts.induction_n or 200
  local iset = ind.prepare(m, { n = n_ind, seq_len = 20, seed = INDUCTION_SEED })
  r.induction = { accuracy = ind.accuracy(m, iset) }
  -- the same sequences after random ids: copying by absolute position
  -- (docs/toy.md, "a shortcut to beware of") does well only from position 0
  r.induction.prefix = PREFIXED_IDS
  r.induction.prefixed_accuracy = ind.accuracy(m, ind.prepare(m, { n = n_ind, seq_len = 20,
    seed = INDUCTION_SEED, random_prefix = PREFIXED_IDS }))
  r.induction.scores = ind.scores(m, iset)
  r.induction.heads, r.induction.which = ind.heads(r.induction.scores, 0.4), "score >= 0.4"
  if #r.induction.heads == 0 then
    r.induction.heads, r.induction.which = { r.induction.scores[1] }, "none scores 0.4; the best"
  end
  r.induction.ablated_accuracy = ind.ablate(m, iset, r.induction.heads)

  say("perplexity")
  r.text = M.perplexity(m)
  return r
end

local function verdict(ok) return ok and "PASS" or "FAIL" end

-- Prints the report; returns true when every threshold passes.
function M.report(r, out)
  out = out or io.stdout
  local th = M.THRESHOLDS
  local all = true
  local function line(ok, fmt, ...)
    local s = string.format(fmt, ...)
    if ok == nil then out:write("       ", s, "\n") return end
    all = all and ok
    out:write(string.format("%s   %s\n", verdict(ok), s))
  end
  out:write(r.model, "\n\n")
  out:write("quality\n")
  line(r.ioi.accuracy >= th.ioi_accuracy, "IOI accuracy (logit IO > logit S) on %d test prompts: %.1f%% (>= %.0f%%)",
    r.ioi.n, 100 * r.ioi.accuracy, 100 * th.ioi_accuracy)
  line(r.ioi.mean_logit_diff >= th.ioi_logit_diff, "IOI mean logit difference: %.3f (>= %.1f)", r.ioi.mean_logit_diff, th.ioi_logit_diff)
  line(nil, "IOI: IO is the top-1 next token on %.1f%% of the prompts", 100 * r.ioi.top1)
  line(r.induction.accuracy >= th.induction_accuracy,
    "induction top-1 accuracy, second copy of random 20-token sequences: %.1f%% (>= %.0f%%)",
    100 * r.induction.accuracy, 100 * th.induction_accuracy)
  line(nil, "the same sequences after %d random ids: %.1f%% (no threshold; copying by position, not content, falls here)",
    r.induction.prefix, 100 * r.induction.prefixed_accuracy)
  line(nil, "perplexity on held-out fortunes text: %.2f per token (%d tokens; %.3f bits per byte)",
    r.text.perplexity, r.text.tokens, r.text.bits_per_byte)

  out:write("\nmechanisms\n")
  local a = r.ablation
  local top = {}
  for i, h in ipairs(a.top_heads) do top[i] = string.format("%s (%.1f)", h.name, h.sum_abs) end
  line(nil, "top heads by summed |estimated total effect| on IOI: %s", table.concat(top, ", "))
  -- the ablation figures mean something only when the model does the task (clean D >= 1)
  line(a.clean >= 1 and a.top_drop >= th.top_drop, "mean-ablating them: mean logit diff %.3f -> %.3f, drop %.1f%% (>= %.0f%%)",
    a.clean, a.top_ld, 100 * a.top_drop, 100 * th.top_drop)
  local mx = -math.huge
  for _, d in ipairs(a.random) do mx = math.max(mx, d.drop) end
  line(a.clean >= 1 and a.random_mean_drop <= th.random_drop, "3 random other heads, %d draws: mean drop %.1f%% (<= %.0f%%; largest %.1f%%)",
    #a.random, 100 * a.random_mean_drop, 100 * th.random_drop, 100 * mx)
  local ind = r.induction
  local best = ind.scores[1]
  line(best.score >= th.induction_score, "best induction score: %s %.3f (>= %.1f)", best.name, best.score, th.induction_score)
  local hs = {}
  for i, h in ipairs(ind.heads) do hs[i] = string.format("%s %.2f", h.name, h.score) end
  local drop = (ind.accuracy - ind.ablated_accuracy) / ind.accuracy
  -- a drop means nothing when there was no copying to lose
  line(drop >= th.induction_ablation and ind.accuracy >= 0.2,
    "mean-ablating the induction heads (%s: %s): accuracy %.1f%% -> %.1f%%, drop %.1f%% (>= %.0f%%)",
    ind.which, table.concat(hs, ", "), 100 * ind.accuracy, 100 * ind.ablated_accuracy, 100 * drop, 100 * th.induction_ablation)
  out:write(string.format("\n%s\n", all and "all thresholds PASS" or "some thresholds FAIL"))
  return all
end

function M.run(argv)
  local opts = require("lantern.cli.args").parse(argv or {}, {
    model = "string", n = "number", ["induction-n"] = "number", quiet = "boolean", help = "boolean",
  })
  if opts.help then io.write(usage, "\n") return 0 end
  local lt = require("lantern")
  local dir = opts.model or (lt.root .. "/store/models/toy")
  local m = lt.load(dir)
  if not m.tokenizer then error(dir .. " has no tokenizer (vocab.json, merges.txt)", 0) end
  local now = require("lantern.recipes.toy").now
  local t0 = now()
  local r = M.evaluate(m, { n = opts.n, induction_n = opts["induction-n"], log = not opts.quiet and function(s)
    io.stderr:write(string.format("[%5.1fs] %s\n", now() - t0, s))
  end or nil })
  local ok = M.report(r)
  io.stdout:write(string.format("(evaluated in %.1f s)\n", now() - t0))
  return ok and 0 or 1
end

M.usage = usage
M.summary = "evaluate the default model against the thresholds of issue 5"

return M
