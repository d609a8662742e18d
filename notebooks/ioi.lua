-- notebooks/ioi.lua: finding the indirect-object-identification circuit.
--
--   ./scripts/lantern run notebooks/ioi.lua [MODEL_DIR]
--
-- "When Mary and John went to the store, John gave a drink to" -> " Mary".
-- The model must name the person mentioned once (the indirect object, IO),
-- not the one mentioned twice (the subject, S). Wang et al. (2022) found the
-- circuit in GPT-2 small: duplicate-token heads notice that S appears twice,
-- S-inhibition heads pass that on, name-mover heads copy the remaining name.
-- Here we ask the same questions of lantern's own toy model (or any GPT-2
-- directory given as the argument) with the debugger's tools. Every number
-- is computed when the notebook runs.
local lt = require("lantern")
local ioi = require("lantern.recipes.ioi")
local patching = require("lantern.recipes.patching")

local dir = arg and arg[1] or (lt.root .. "/store/models/toy")
local m = lt.load(dir)
print(m)

-- 1. Does the model do the task? -------------------------------------------
-- Held-out prompts: templates and name pairs the toy model never saw in
-- training. D = logit(IO) - logit(S) at the last position.
local examples = lt.datasets.ioi{ n = 300, seed = 11, split = "test" }
local set = ioi.prepare(m, examples)       -- tokenised and grouped by length
local quality = ioi.evaluate(m, set)
print(string.format("\n1. %d test prompts: IO above S on %.1f%%, mean D %.2f, IO is the top token on %.1f%%",
  quality.n, 100 * quality.accuracy, quality.mean_logit_diff, 100 * quality.top1))

-- 2. One prompt under the debugger ------------------------------------------
-- The node table ranks every head (per query/key pair), neuron and
-- embedding by its estimated total effect on D (gradient times activation);
-- measure() then zeroes the top rows one at a time in a real forward pass.
local ex = examples[1]
print(string.format("\n2. %q -> %q (S = %q)", ex.prompt, ex.target, ex.distractor))
local t = lt.tdb.node_table(m, { prompt = ex.prompt, target = ex.target, distractor = ex.distractor, k = 5 })
lt.tdb.measure(m, t, { n = 6 })
print(string.format("   D = %.3f; top rows (est = estimated change of D when zeroed, measured = real change):", t.logit_diff))
for i = 1, math.min(6, #t.rows) do
  local r = t.rows[i]
  local key = r.key_position and string.format(" -> %d %q", r.key_position, t.tokens[r.key_position + 1]) or ""
  print(string.format("   %-8s at %d %q%s: est %+.3f, measured %+.3f", r.name, r.position, t.tokens[r.position + 1], key,
    r.estimated_change, r.measured_change))
end

-- 3. Which heads matter across prompts? --------------------------------------
-- Summing |z . dD/dz| over prompts (each head's estimated total effect, the
-- sum of its rows in the node table) ranks heads for the whole task.
local heads = ioi.head_effects(m, set)
print("\n3. heads by summed |estimated total effect| (mean signed effect in brackets):")
for i = 1, 8 do print(string.format("   %-6s %8.1f  (%+.3f per prompt)", heads[i].name, heads[i].sum_abs, heads[i].mean)) end

-- 4. Where do they look? ------------------------------------------------------
-- Attention from the last token to IO, to S's first and to S's second
-- mention, averaged over prompts. A name mover attends to IO; a head that
-- attends to S (and writes against it) suppresses the wrong name.
print("\n4. attention from the last token to IO, to S (first mention) and to S (second), mean over prompts:")
print("   head       IO     S1     S2")
local function positions(ids, io_id, s_id)
  local io_p, s = nil, {}
  for p, id in ipairs(ids) do
    if id == io_id then io_p = p - 1 end
    if id == s_id then s[#s + 1] = p - 1 end
  end
  return io_p, s[1], s[2]
end
for i = 1, 4 do
  local h = heads[i]
  local sums, n = { 0, 0, 0 }, 0
  for _, g in ipairs(set.groups) do
    local name = string.format("blocks.%d.attn.hook_pattern", h.layer)
    local _, cache = m:run_with_cache(g.rows, { names = name })
    local pat, T, H = cache[name], g.T, m.cfg.n_head
    for b = 1, #g.rows do
      local io_p, s1, s2 = positions(g.rows[b], g.targets[b], g.distractors[b])
      if io_p and s1 and s2 then
        local base = (((b - 1) * H + h.head) * T + T - 1) * T
        sums[1] = sums[1] + pat.data[base + io_p]
        sums[2] = sums[2] + pat.data[base + s1]
        sums[3] = sums[3] + pat.data[base + s2]
        n = n + 1
      end
    end
  end
  print(string.format("   %-6s  %.3f  %.3f  %.3f", h.name, sums[1] / n, sums[2] / n, sums[3] / n))
end

-- 5. Are they necessary? --------------------------------------------------------
-- Mean ablation: replace a head's output by its average over prompts of the
-- same length (position by position), so the head still says "something
-- typical" but nothing about this prompt. Compare with random heads.
local a = ioi.ablation_test(m, set, { top = 3, draws = 20, heads = heads, clean = quality.mean_logit_diff })
print(string.format("\n5. mean-ablating %s: mean D %.2f -> %.2f (%.0f%% lost)", ioi.head_names(a.top_heads), a.clean,
  a.top_ld, 100 * a.top_drop))
print(string.format("   3 random other heads, 20 draws: %.0f%% lost on average", 100 * a.random_mean_drop))

-- 6. Activation patching -----------------------------------------------------------
-- Corrupt S's second mention into a third name ("ABC"): the model no longer
-- knows whom to avoid. Patch one head's output from the clean run into the
-- corrupted run; 1.0 = that head alone restores the clean D.
local pairs_ = patching.ioi_pairs(m, lt.datasets.ioi{ n = 20, seed = 12, split = "test" })
local grid = patching.sweep(m, pairs_, "heads")
print(string.format("\n6. patching head outputs clean -> ABC-corrupted, mean over %d pairs (normalised D):", #pairs_))
patching.print_grid(grid, "layer", "head")
