-- lantern demo: the debugger on the default model, store/models/toy (a
-- 4-layer GPT-2 that lantern trains itself; `lantern train toy`). Finds the
-- heads behind indirect-object identification and the induction heads.
-- Every number printed is computed in this run.
local usage = [[
usage: lantern demo [--model DIR] [--n N] [--train]

Loads the default model (store/models/toy), then on held-out data:
  1. an IOI test prompt: the prediction, its probability, the logit
     difference IO - S;
  2. the node table of that prompt (TDB's attribution, top rows), with
     the measured effect of zeroing each of the top rows;
  3. the heads with the largest summed |estimated total effect| over N
     (default 200) IOI test prompts, and the measured effect of
     mean-ablating them against as many random other heads;
  4. the induction heads: induction score of every head on repeated random
     token sequences, and what ablating them does to copying.
The model is committed; if store/models/toy is missing, --train trains it
first (about 10 minutes, `lantern train toy`).]]

local exists = require("lantern.files").exists

-- A token shown on one line.
local function show(s) return (s:gsub("\n", "\\n")) end

local function run(argv)
  local opts, pos = require("lantern.cli.args").parse(argv, { model = "string", n = "number", train = "boolean" })
  if #pos > 0 then error("demo takes no positional arguments\n" .. usage, 0) end
  local recipe = require("lantern.recipes.toy")
  -- not require("lantern") yet: training must set the thread counts first
  local root = os.getenv("LANTERN_ROOT") or "."
  local dir = opts.model or (root .. "/store/models/toy")
  if not exists(dir .. "/model.safetensors") then
    if opts.model then error(dir .. " holds no model.safetensors", 0) end
    if not opts.train then
      error("no trained model at " .. dir .. ": `./scripts/lantern train toy` trains it (about 10 minutes), "
        .. "or `./scripts/lantern demo --train` trains it and then runs the demo", 0)
    end
    io.write("No trained model at " .. dir .. ": training it now with `lantern train toy` (about 10 minutes).\n")
    if not recipe.set_threads(recipe.threads) then
      error("cannot set the recipe's thread counts: run `./scripts/lantern train toy` first", 0)
    end
    recipe.run{ out = dir }
  end
  local lt = require("lantern")
  local ioi = require("lantern.recipes.ioi")
  local ind = require("lantern.recipes.induction")
  local t0 = recipe.now()
  local m = lt.load(dir)
  local tok = m.tokenizer
  io.write(string.format("lantern demo: %s\n", tostring(m)))
  io.write(string.format("trained by lantern itself (%s); all numbers below are computed now.\n\n",
    dir:gsub("^" .. root:gsub("%p", "%%%0") .. "/", "")))

  -- 1. one held-out IOI prompt
  local examples = lt.datasets.ioi{ n = opts.n or 200, seed = 7, split = "test" }
  local ex = examples[1]
  local t = lt.tdb.node_table(m, { prompt = ex.prompt, target = ex.target, distractor = ex.distractor, k = 4,
    kinds = { "attn_head", "mlp_neuron" } })
  io.write("1. Indirect-object identification, a held-out prompt (test template and name pair):\n")
  io.write(string.format("   %q  ->  IO %q, S %q\n", ex.prompt, ex.target, ex.distractor))
  io.write("   model's next token:")
  for i = 1, 3 do
    local p = t.prediction[i]
    io.write(string.format("  %q p=%.3f", p.text, p.prob))
  end
  io.write("\n")
  io.write(string.format("   logit difference D = logit(%q) - logit(%q) = %.3f\n\n", ex.target, ex.distractor, t.logit_diff))

  -- 2. the node table, with measured ablations of its top rows
  lt.tdb.measure(m, t, { n = 8 })
  io.write("2. Node table (lt.tdb.node_table): components ranked by |total effect| on D;\n")
  io.write("   est = first-order estimate of D's change when the node is zeroed, measured = the real change.\n")
  io.write(string.format("   %-8s %-10s %-18s %9s %9s %9s %9s\n", "node", "kind", "position (key)", "act", "direct", "est", "measured"))
  for i = 1, math.min(8, #t.rows) do
    local r = t.rows[i]
    local where = string.format("%d %s", r.position, show(t.tokens[r.position + 1]))
    if r.key_position then where = where .. string.format(" (%d %s)", r.key_position, show(t.tokens[r.key_position + 1])) end
    io.write(string.format("   %-8s %-10s %-18s %9.3f %9.3f %9.3f %9.3f\n", r.name, r.kind, where, r.activation,
      r.direct_effect, r.estimated_change, r.measured_change))
  end
  io.write("\n")

  -- 3. the IOI heads over many prompts, and the ablation test
  local set = ioi.prepare(m, examples)
  local clean = ioi.evaluate(m, set)
  local a = ioi.ablation_test(m, set, { top = 3, draws = 10, seed = 0, clean = clean.mean_logit_diff })
  io.write(string.format("3. Over %d held-out IOI prompts: accuracy %.1f%%, mean D %.3f.\n", set.n, 100 * clean.accuracy,
    clean.mean_logit_diff))
  io.write("   Heads by summed |estimated total effect| (z . dD/dz, summed over prompts):\n   ")
  for i = 1, 6 do
    local h = a.heads[i]
    io.write(string.format(" %s %.1f (mean %+.2f)%s", h.name, h.sum_abs, h.mean, i < 6 and "," or "\n"))
  end
  io.write(string.format("   mean-ablating the top 3 (%s): mean D %.3f -> %.3f (%.0f%% lost)\n", ioi.head_names(a.top_heads),
    a.clean, a.top_ld, 100 * a.top_drop))
  local lo, hi = math.huge, -math.huge
  for _, d in ipairs(a.random) do lo, hi = math.min(lo, d.drop), math.max(hi, d.drop) end
  io.write(string.format("   mean-ablating 3 random other heads (%d draws): %.0f%% lost on average (from %.0f%% to %.0f%%)\n\n",
    #a.random, 100 * a.random_mean_drop, 100 * lo, 100 * hi))

  -- 4. induction heads
  local iset = ind.prepare(m, { n = 100, seq_len = 20, seed = 7 })
  local acc = ind.accuracy(m, iset)
  local scores = ind.scores(m, iset)
  local heads, which = ind.heads(scores, 0.4), "score >= 0.4"
  if #heads == 0 then heads, which = { scores[1] }, "none scores 0.4; the best" end
  io.write(string.format("4. Induction: %d random sequences of 20 token ids, each repeated; top-1 accuracy on the\n", #iset.rows))
  io.write(string.format("   second copy %.1f%%. Induction scores (attention to the token after the previous occurrence):\n   ", 100 * acc))
  for i = 1, 5 do io.write(string.format(" %s %.3f%s", scores[i].name, scores[i].score, i < 5 and "," or "\n")) end
  local names = {}
  for i, h in ipairs(heads) do names[i] = h.name end
  local after = ind.ablate(m, iset, heads)
  io.write(string.format("   mean-ablating the induction heads (%s: %s): accuracy %.1f%% -> %.1f%%\n",
    which, table.concat(names, ", "), 100 * acc, 100 * after))
  io.write(string.format("\n(%.1f s; `./scripts/lantern eval toy` runs the full evaluation, notebooks/ioi.lua and\n", recipe.now() - t0))
  io.write("notebooks/induction.lua walk through the investigations.)\n")
  return 0
end

return { summary = "the debugger on the default model: IOI heads and induction heads, live", usage = usage, run = run }
