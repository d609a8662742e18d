-- lantern eval sae: the quality goal of the SAE issue on the default model.
-- Trains a TopK SAE on a middle layer's mlp.hook_post of store/models/toy
-- (within a time limit), evaluates it on the test split and prints PASS or
-- FAIL for each goal; writes the SAE beside the model.
local usage = [[
usage: lantern eval sae [--model DIR] [--layer L] [--d-sae N] [--k K] [--tokens N]
                        [--max-seconds S] [--eval-tokens N] [--out DIR] [--no-save] [--quiet]

Trains a TopK SAE (default d_sae = 4 x d_mlp, k = 32) on
blocks.L.mlp.hook_post of the default model (store/models/toy; L defaults
to n_layer / 2) for --tokens tokens (default 1500000) or --max-seconds
(default 170), then reports on the test split of the data mixture:
  explained variance  >= 0.85
  L0                  <= 32
  dead latents        <= 10%
  CE loss recovered   >= 0.85
and writes the SAE to DIR (default <model>/sae-L{L}-mlp_post). Exit
status 0 when every goal passes, 1 otherwise, 2 when the model is missing.]]

local M = {summary = "train and judge an SAE on the default model (explained variance, L0, dead, CE recovered)",
  usage = usage}

M.GOALS = {explained_variance = 0.85, l0 = 32, dead_fraction = 0.10, ce_loss_recovered = 0.85}

local exists = require("lantern.files").exists

function M.run(argv)
  local args = require("lantern.cli.args")
  local opts = args.parse(argv, {model = "string", layer = "number", ["d-sae"] = "number", k = "number",
    tokens = "number", ["max-seconds"] = "number", ["eval-tokens"] = "number", out = "string",
    ["no-save"] = "boolean", quiet = "boolean", tokenizer = "string", T = "number", batch = "number", lr = "number"})
  local root = require("lantern.ffi").root
  local dir = opts.model or (root .. "/store/models/toy")
  if not exists(dir .. "/config.json") and not exists(dir .. "/model.safetensors") then
    io.stderr:write(string.format("eval sae: the model %s is missing (train it with ./scripts/lantern train toy, "
      .. "or pass --model DIR)\n", dir))
    return 2
  end
  local lt = require("lantern")
  local m = lt.load(dir, {tokenizer = opts.tokenizer})
  local L = opts.layer or math.floor(m.cfg.n_layer / 2)
  local hook = string.format("blocks.%d.mlp.hook_post", L)
  local d_sae = opts["d-sae"] or 4 * m.cfg.d_mlp
  local k = opts.k or 32
  print(string.format("model %s; SAE topk(k=%d), d_sae %d on %s", m.name, k, d_sae, hook))
  local sae, rep = lt.sae.train(m, {hook = hook, d_sae = d_sae, architecture = "topk", k = k,
    tokens = opts.tokens or 1.5e6, max_seconds = opts["max-seconds"] or 170, T = opts.T, batch = opts.batch or 1024,
    lr = opts.lr, progress = not opts.quiet, seed = 1, evaluate = {tokens = opts["eval-tokens"] or 32768}})
  local r = rep.eval
  print(string.format("trained on %s tokens in %.1f s (%d steps%s)", require("lantern.sae_train").human(rep.tokens),
    rep.seconds, rep.steps, rep.stopped_early and ", stopped at the time limit" or ""))
  print(lt.sae.format_report(r))
  local checks = {
    {"explained variance", r.explained_variance, ">=", M.GOALS.explained_variance},
    {"L0", r.l0, "<=", M.GOALS.l0},
    {"dead fraction", r.dead_fraction, "<=", M.GOALS.dead_fraction},
    {"CE loss recovered", r.ce_loss_recovered, ">=", M.GOALS.ce_loss_recovered},
    {"training time (s)", rep.seconds, "<=", 180},
  }
  local all = true
  print("")
  for _, c in ipairs(checks) do
    local pass = (c[3] == ">=" and c[2] >= c[4]) or (c[3] == "<=" and c[2] <= c[4])
    all = all and pass
    print(string.format("  %-20s %10.4f  goal %s %-6g %s", c[1], c[2], c[3], c[4], pass and "PASS" or "FAIL"))
  end
  if not opts["no-save"] then
    local out = opts.out or string.format("%s/sae-L%d-mlp_post", dir, L)
    sae:save(out)
    print("saved " .. out)
  end
  return all and 0 or 1
end

return M
