-- lantern bench backward: forward + backward against forward alone on the
-- GPT-2 small shape (random weights) at T = 64 and 256, and the time to
-- build a full node table. The variants run round-robin in the same run
-- (lantern.cli.bench.interleave) so that a busy spell hits them alike.
local bench = require("lantern.cli.bench")
local args = require("lantern.cli.args")

local usage = [[
usage: lantern bench backward [--reps N] [--T 64,256]

  --reps N   timed rounds, best taken (default 3)
  --T LIST   sequence lengths (default 64,256)]]

local function run(argv)
  local opts = args.parse(argv, {reps = "number", T = "string"})
  local reps = opts.reps or 3
  local lengths = {}
  for t in (opts.T or "64,256"):gmatch("%d+") do lengths[#lengths + 1] = tonumber(t) end
  local lt = require("lantern")

  bench.header("backward")
  local m = bench.gpt2_small()
  print(string.format("model: GPT-2 small shape, random weights; best of %d rounds", reps))
  print("metric: logit difference of two tokens at the last position (TDB's D); forward+backward keeps every")
  print("layer's activations and computes the gradient at every hook point")
  print(string.format("%6s %12s %18s %8s %16s", "T", "forward ms", "fwd+backward ms", "ratio", "node table ms"))
  for _, T in ipairs(lengths) do
    local ids = bench.random_ids(T, m.cfg.d_vocab)
    local metric = lt.metrics.logit_diff{target = 11, distractor = 12, detach_ln_final_scale = true}
    local t = bench.interleave({
      {"forward", function() m:forward(ids) end},
      {"backward", function() m:run_with_grads(ids, {metric = metric}, function() end) end},
    }, {reps = reps})
    -- the node table: every neuron, head (query, key) and embedding row,
    -- ranked, with the measured effects of its top rows (one batched pass)
    local nt = bench.measure(function()
      lt.tdb.node_table(m, {prompt = ids, target = 11, distractor = 12, k = 10})
    end, {reps = 1, warmup = 0})
    print(string.format("%6d %12.1f %18.1f %7.2fx %16.1f", T, t.forward.best * 1e3, t.backward.best * 1e3,
      t.backward.best / t.forward.best, nt.best * 1e3))
  end
  print("ratio = (forward + backward) / forward, measured in the same run (goal: at most 3x)")
end

return {summary = "forward+backward against forward, and the node table", usage = usage, run = run}
