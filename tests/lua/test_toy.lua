-- The default model, store/models/toy: the committed checkpoint loads with
-- the recipe's config, answers held-out IOI prompts, copies repeated
-- random ids and is a trained language model (held-out text far better
-- than chance); the recipe's first 20 steps are bit-reproducible (on a
-- small slice of its data) and resuming from saved optimizer state
-- continues identically. The heavy evaluation is
-- `./scripts/lantern eval toy`, not a test.
local recipe = require("lantern.recipes.toy")
-- One thread: the trainer is deterministic for any fixed thread count, and
-- many small steps run fastest without OpenMP barriers (this only takes
-- effect when the library is not loaded yet, as under tests/lua/runner.lua).
recipe.set_threads(1)
local lt = require("lantern")
local check = require("check")

local T = {}

local dir = os.getenv("TOY_DIR") or (lt.root .. "/store/models/toy")

function T.checkpoint_loads_with_recipe_config()
  local m = lt.load(dir)
  for _, k in ipairs({ "n_layer", "n_head", "n_embd", "d_mlp", "n_ctx" }) do
    check.eq(m.cfg[k], recipe.model[k], "config " .. k)
  end
  check.eq(m.cfg.d_vocab, recipe.vocab_size, "d_vocab")
  check.truthy(m.tokenizer, "the checkpoint has its tokenizer")
  check.eq(m.tokenizer.vocab_size, recipe.vocab_size, "tokenizer size")
  check.eq(#lt.datasets.ioi_multi_token_names(m.tokenizer), 0, "every IOI name is one token")
  local f = assert(io.open(dir .. "/train_log.txt", "rb"))
  local log = f:read("*a")
  f:close()
  check.truthy(log:find("seed " .. recipe.seed, 1, true), "train_log.txt records the seed")
  check.truthy(log:find("OMP_NUM_THREADS=" .. recipe.threads, 1, true), "train_log.txt records the thread count")
end

-- IOI on held-out templates and name pairs (chance is 50%; `eval toy`
-- measures 1,000 prompts against the issue's thresholds).
function T.answers_ioi_test_prompts()
  local m = lt.load(dir)
  local ioi = require("lantern.recipes.ioi")
  local r = ioi.evaluate(m, ioi.prepare(m, lt.datasets.ioi{ n = 60, seed = 3, split = "test" }))
  check.truthy(r.accuracy >= 0.75, string.format("IOI accuracy on 60 held-out prompts: %.2f", r.accuracy))
  check.truthy(r.mean_logit_diff >= 2, string.format("mean logit difference %.2f", r.mean_logit_diff))
end

-- Next-token loss on held-out fortunes far below a uniform guess over the
-- vocabulary (perplexity d_vocab; the freshly initialised model scores
-- about that).
function T.is_trained_on_held_out_text()
  local m = lt.load(dir)
  local eval = require("lantern.eval.toy")
  local r = eval.perplexity(m, { max_bytes = 20000 })
  check.truthy(r.tokens > 1000, "scored some held-out tokens")
  check.truthy(r.perplexity < 400, string.format("held-out perplexity %.1f (uniform: %d)", r.perplexity, m.cfg.d_vocab))
  local fresh = recipe.init_model(m.tokenizer)
  fresh.tokenizer = m.tokenizer
  local r0 = eval.perplexity(fresh, { max_bytes = 20000 })
  check.truthy(r0.perplexity > 0.75 * m.cfg.d_vocab, string.format("the untrained model: perplexity %.1f", r0.perplexity))
end

-- 20 steps of the recipe (its init, optimizer settings, schedule and batch
-- stream with its loss masks) on a small slice: the first 2 rows of each of
-- its first 20 batches.
local batches
local function run_steps(tok, from, to, m, state_in, state_out)
  local t = recipe.train
  if not batches then
    local next_batch = recipe.batches(tok)
    batches = {}
    for i = 1, 20 do
      local b, _, mask = next_batch()
      batches[i] = { rows = { b[1], b[2] }, mask = mask and { mask[1], mask[2] } }
    end
  end
  m = m or recipe.init_model(tok)
  local tr = lt.train.trainer(m, { weight_decay = t.weight_decay, grad_clip = t.grad_clip, beta1 = t.beta1, beta2 = t.beta2 })
  if state_in then tr:load_state(state_in) end
  for step = from, to - 1 do
    tr:step(batches[step + 1].rows, recipe.lr(step), batches[step + 1].mask)
  end
  if state_out then tr:save_state(state_out) end
  return m
end

-- Induction: the second copy of repeated random ids is predicted (chance
-- is 1/d_vocab), also when random ids come first, so the copying is by
-- content, not by position; `eval toy` has the full test.
function T.copies_repeated_random_ids()
  local m = lt.load(dir)
  local ind = require("lantern.recipes.induction")
  for _, n_random in ipairs({ 0, 16 }) do
    local set = ind.prepare(m, { n = 30, seq_len = 20, seed = 4, random_prefix = n_random })
    local acc = ind.accuracy(m, set)
    check.truthy(acc >= 0.6, string.format("induction accuracy after %d random ids: %.2f", n_random, acc))
  end
end

local function same_weights(a, b)
  for _, name in ipairs(a:param_names()) do
    local x, y = a:param(name), b:param(name)
    if x:max_abs_diff(y) ~= 0 then return false, name end
  end
  return true
end

function T.first_20_steps_bit_reproducible_and_resumable()
  local tok = lt.tokenizer(dir)
  local a = run_steps(tok, 0, 20)
  local b = run_steps(tok, 0, 20)
  local ok, where = same_weights(a, b)
  check.truthy(ok, "two runs give identical weights" .. (where and (" (differ at " .. where .. ")") or ""))
  check.truthy(not same_weights(a, recipe.init_model(tok)), "the weights moved")
  -- 10 steps, save weights and optimizer state, reload, 10 more
  local tmp = os.tmpname()
  os.remove(tmp)
  local half = run_steps(tok, 0, 10, nil, nil, tmp .. ".opt")
  half:save(tmp)
  local resumed = run_steps(tok, 10, 20, lt.load(tmp), tmp .. ".opt")
  ok, where = same_weights(a, resumed)
  check.truthy(ok, "resumed run equals the straight run" .. (where and (" (differ at " .. where .. ")") or ""))
  os.execute("rm -rf '" .. tmp .. "' '" .. tmp .. ".opt'")
end

return T
