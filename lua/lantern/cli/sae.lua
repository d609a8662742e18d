-- lantern sae train|eval: trains a sparse autoencoder on a model's
-- activations at a hook point, or evaluates one (docs/sae.md).
local usage = [[
usage: lantern sae train --model DIR --hook NAME --d-sae N [--arch topk --k 32 | --arch standard --l1 C]
                         [--tokens N] --out DIR [--tokenizer DIR] [--batch N] [--lr X] [--seed N]
                         [--T N] [--eval-tokens N] [--max-seconds S] [--quiet]
       lantern sae eval --model DIR --sae DIR [--tokenizer DIR] [--tokens N] [--T N] [--json FILE]

train   streams --tokens tokens (default 1000000) of the lt.datasets mixture
        (train split) through the model, trains the SAE with Adam on the
        activations at --hook (TopK with AuxK, or ReLU with an L1 penalty),
        prints a progress line, then the metrics on the test split, and
        writes the SAELens directory --out (cfg.json, sae_weights.safetensors).
eval    the metrics of a saved SAE on its hook point: explained variance,
        normalised MSE, L0, L1, dead and dense latents, the log10 density
        histogram, CE loss recovered and the KL score.]]

local args = require("lantern.cli.args")

local function load_model(opts)
  if not opts.model then error("--model DIR is required", 0) end
  return require("lantern").load(opts.model, {tokenizer = opts.tokenizer})
end

local function write_json(path, value)
  local f = assert(io.open(path, "w"))
  f:write(require("lantern.json").encode(value), "\n")
  f:close()
end

local function train(argv)
  local opts = args.parse(argv, {model = "string", hook = "string", ["d-sae"] = "number", arch = "string",
    k = "number", l1 = "number", tokens = "number", out = "string", tokenizer = "string", batch = "number",
    lr = "number", seed = "number", T = "number", ["eval-tokens"] = "number", quiet = "boolean",
    ["max-seconds"] = "number"})
  if not opts.hook then error("--hook NAME is required (e.g. blocks.2.mlp.hook_post)", 0) end
  if not opts["d-sae"] then error("--d-sae N is required", 0) end
  if not opts.out then error("--out DIR is required", 0) end
  local lt = require("lantern")
  local m = load_model(opts)
  local sae, rep = lt.sae.train(m, {hook = opts.hook, d_sae = opts["d-sae"], architecture = opts.arch or "topk",
    k = opts.k, l1 = opts.l1, tokens = opts.tokens, batch = opts.batch, lr = opts.lr, seed = opts.seed,
    T = opts.T, progress = not opts.quiet, max_seconds = opts["max-seconds"],
    evaluate = {tokens = opts["eval-tokens"]}})
  print(string.format("trained %s on %s tokens in %.1f s (%d steps%s)", tostring(sae), require("lantern.sae_train").human(rep.tokens),
    rep.seconds, rep.steps, rep.stopped_early and ", stopped at the time limit" or ""))
  print(lt.sae.format_report(rep.eval))
  sae:save(opts.out)
  print("saved " .. opts.out)
  return 0
end

local function eval(argv)
  local opts = args.parse(argv, {model = "string", sae = "string", tokenizer = "string", tokens = "number",
    T = "number", json = "string"})
  if not opts.sae then error("--sae DIR is required", 0) end
  local lt = require("lantern")
  local m = load_model(opts)
  local sae = lt.sae.load(opts.sae)
  local r = sae:evaluate(m, nil, {tokens = opts.tokens, T = opts.T})
  print(lt.sae.format_report(r))
  if opts.json then write_json(opts.json, r) end
  return 0
end

local function run(argv)
  local sub = argv[1]
  local rest = {}
  for i = 2, #argv do rest[#rest + 1] = argv[i] end
  if sub == "train" then return train(rest) end
  if sub == "eval" then return eval(rest) end
  error("expected `sae train` or `sae eval`\n" .. usage, 0)
end

return {summary = "train or evaluate a sparse autoencoder: sae train|eval", usage = usage, run = run}
