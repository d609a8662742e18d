-- lantern train RECIPE: trains a model from a recipe in lua/lantern/recipes/
-- (today: toy, the default model). The recipe fixes every hyperparameter,
-- the seed and the thread count; this command only runs it.
local usage = [[
usage: lantern train toy [--out DIR] [--steps N] [--resume] [--quiet]

Trains the default model from its recipe (lua/lantern/recipes/toy.lua):
a byte-level BPE vocabulary trained on the data mixture, then a GPT-2 of
the recipe's size trained with AdamW. Prints a progress line (step, loss,
tokens/s, time left) on stderr and writes DIR/train_log.txt.

  --out DIR    where the checkpoint goes (default store/models/toy)
  --steps N    stop after N steps (the schedule stays the recipe's)
  --resume     continue from DIR.resume (written every 250 steps):
               weights, optimizer state, step and data position
  --quiet      no progress line

Same recipe and thread count (the recipe sets OMP_NUM_THREADS and
OPENBLAS_NUM_THREADS itself) give the same weights, bit for bit.]]

local function run(argv)
  local opts, pos = require("lantern.cli.args").parse(argv, {
    out = "string", steps = "number", resume = "boolean", quiet = "boolean",
  })
  local name = pos[1]
  if name == nil then error("which recipe? (known: toy)\n" .. usage, 0) end
  if name ~= "toy" or #pos > 1 then error("unknown recipe '" .. table.concat(pos, " ") .. "' (known: toy)", 0) end
  local recipe = require("lantern.recipes.toy")
  -- before lantern (and so OpenMP and OpenBLAS) loads
  if not recipe.set_threads(recipe.threads) then
    error("OMP_NUM_THREADS / OPENBLAS_NUM_THREADS were fixed before the recipe could set them", 0)
  end
  local root = require("lantern").root
  local out = opts.out or (root .. "/store/models/toy")
  io.stderr:write(recipe.describe(), "\n")
  local _, res = recipe.run{ out = out, steps = opts.steps, resume = opts.resume, quiet = opts.quiet }
  io.stderr:write(string.format("trained %d steps in %.1f s (%.1f s data and tokenizer); final loss %.4f\nsaved %s\n",
    res.steps, res.seconds, res.prep_seconds, res.loss or 0 / 0, out))
  return 0
end

return { summary = "train a model from a recipe: train toy [--resume]", usage = usage, run = run }
