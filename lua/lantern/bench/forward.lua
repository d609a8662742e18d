-- lantern bench forward: the forward pass on the GPT-2 small shape (random
-- weights) at several sequence lengths: time, tokens/s and achieved
-- GFLOP/s, next to a plain sgemm of the MLP's shape measured in the same run.
--
-- FLOPs of one forward over T tokens (multiply-add = 2 FLOPs), counting the
-- matrix products only (LayerNorm, GELU, softmax and adds are O(T d)):
--   per layer: q, k, v and W_O   2 T d (4d)       = 8 T d^2
--              MLP in and out    2 T d d_mlp * 2   = 16 T d^2 (d_mlp = 4d)
--              scores and z      2 T T d * 2       = 4 T^2 d  (the full T x T
--                                 products are computed; the mask is applied after)
--   unembedding                  2 T d V
--   total = n_layer (24 T d^2 + 4 T^2 d) + 2 T d V   (general d_mlp: 8 T d^2 + 4 T d d_mlp)
local ffi = require("ffi")
local bench = require("lantern.cli.bench")
local args = require("lantern.cli.args")
local F = require("lantern.ffi")

local usage = [[
usage: lantern bench forward [--lengths 64,256,1024] [--reps N]

Times lt_forward (one sequence, the C engine without the Lua logits copy)
on a random model of GPT-2 small's shape, best of N runs (default 5; fewer
once 20 s are spent) after a warm-up, and a plain sgemm [T x d] @ [d x d_mlp]
measured in the same run.]]

local function flops(cfg, T)
  local d, L = cfg.n_embd, cfg.n_layer
  local d_mlp = cfg.d_mlp or 4 * d
  return L * (8 * T * d * d + 4 * T * d * d_mlp + 4 * T * T * d) + 2 * T * d * cfg.d_vocab
end

local function run(argv)
  local opts = args.parse(argv, {lengths = "string", reps = "number"})
  local lengths = {}
  for n in (opts.lengths or "64,256,1024"):gmatch("%d+") do lengths[#lengths + 1] = tonumber(n) end
  local reps = opts.reps or 5

  bench.header("forward")
  local t0 = bench.now()
  local m = bench.gpt2_small()
  local c = m.cfg
  print(string.format("model: GPT-2 small shape, random weights (%d layers, %d heads, d_model %d, d_mlp %d, vocab %d); built in %.1f s",
    c.n_layer, c.n_head, c.n_embd, c.d_mlp, c.d_vocab, bench.now() - t0))
  print("FLOPs per forward = n_layer (24 T d^2 + 4 T^2 d) + 2 T d V (matmuls and attention products)")
  print(string.format("%6s %10s %10s %9s %9s %22s %8s", "T", "best ms", "median ms", "tokens/s", "GFLOP/s",
    "sgemm GFLOP/s [T,d,4d]", "ratio"))
  local out = ffi.new("float *[1]")
  for _, T in ipairs(lengths) do
    if T > c.n_ctx then error("length " .. T .. " exceeds n_ctx " .. c.n_ctx, 0) end
    local ids = ffi.new("int32_t[?]", T)
    for i, v in ipairs(bench.random_ids(T, c.d_vocab)) do ids[i - 1] = v end
    -- forward and sgemm alternate, so that a busy spell of a shared
    -- machine slows both; each keeps its best
    local function forward() F.check(F.C.lt_forward(m.run, ids, 1, T, out), "forward") end
    local sg = 0
    local t = bench.interleave({{"forward", forward}, {"sgemm", function()
      sg = math.max(sg, bench.sgemm_gflops(T, c.d_mlp, c.n_embd, 3))
    end}}, {reps = reps, max_seconds = 20}).forward
    local gf = flops(c, T) / t.best / 1e9
    print(string.format("%6d %10.1f %10.1f %9.0f %9.1f %22.1f %8.2f", T, t.best * 1e3, t.median * 1e3, T / t.best, gf, sg,
      gf / sg))
  end
  print("ratio = forward GFLOP/s / sgemm GFLOP/s (how close the whole pass gets to the machine's matmul rate)")
  return 0
end

return {summary = "forward pass speed on the GPT-2 small shape vs a plain sgemm", usage = usage, run = run}
