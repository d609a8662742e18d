-- lantern bench hooks: the cost of the hook machinery on the GPT-2 small
-- shape (random weights): run_with_cache with nothing requested against a
-- plain forward pass, run_with_cache with everything requested (time and
-- memory), and a batched sweep of single-head ablations against one
-- forward pass. Every figure is printed next to the forward pass it is
-- compared with, measured in the same run: the variants run round-robin so
-- that a busy spell of a shared machine slows them alike.
local bench = require("lantern.cli.bench")
local args = require("lantern.cli.args")

local usage = [[
usage: lantern bench hooks [--T 256] [--reps N] [--sweep N] [--rows N]

  --T N      sequence length (default 256)
  --reps N   timed rounds, best taken (default 5)
  --sweep N  single-head ablations in the sweep (default 16; all 144 heads
             of GPT-2 small take minutes at T=256)
  --rows N   batch rows per forward pass of the sweep (default 8)]]

local function pct(a, b) return 100 * (a - b) / b end

local function run(argv)
  local opts = args.parse(argv, {T = "number", reps = "number", sweep = "number", rows = "number"})
  local T, reps = opts.T or 256, opts.reps or 5
  local n_sweep, rows = opts.sweep or 16, opts.rows or 8
  local lt = require("lantern")

  bench.header("hooks")
  local m = bench.gpt2_small()
  local c = m.cfg
  local ids = bench.random_ids(T, c.d_vocab)
  print(string.format("model: GPT-2 small shape, random weights; one sequence of T = %d; best of %d rounds", T, reps))

  local everything = function() return true end

  -- memory first, while the heap holds nothing freed that a later run could
  -- reuse unseen: the peak resident size (VmHWM, reset first where the
  -- kernel allows it) of one run_with_cache of everything, against the
  -- resident size after a plain forward pass (model + run buffers)
  m:forward(ids)
  collectgarbage()
  local reset = bench.reset_peak_rss()
  local rss0 = bench.proc_status_kb("VmRSS")
  local _, cache = m:run_with_cache(ids)
  local hwm = bench.proc_status_kb("VmHWM")
  local function captured(cc)
    local bytes, count = 0, 0
    for _, name in ipairs(cc:names()) do
      bytes = bytes + 4 * cc[name].numel
      count = count + 1
    end
    return bytes, count
  end
  local bytes, count = captured(cache)
  cache = nil
  collectgarbage()
  local _, with_result = m:run_with_cache(ids, {names = everything})
  local bytes_r, count_r = captured(with_result)
  with_result = nil
  collectgarbage()

  local variants = {
    {"forward", function() m:forward(ids) end},
    {"none", function() m:run_with_cache(ids, {names = {}}) end},
    {"all", function() m:run_with_cache(ids) end},
    {"all+result", function() m:run_with_cache(ids, {names = everything}) end},
    {"ablate", function() m:run_with_hooks(ids, {{lt.act_name("z", 0), lt.ablate.zero{heads = {0}}}}) end},
  }
  local t = bench.interleave(variants, {reps = reps})
  local fwd = t.forward.best
  local function line(label, key)
    print(string.format("%-48s %8.1f ms  %+6.1f%% vs forward", label, t[key].best * 1e3, pct(t[key].best, fwd)))
  end
  print(string.format("%-48s %8.1f ms  (median %.1f ms)", "forward (m:forward, logits copied to Lua)", fwd * 1e3,
    t.forward.median * 1e3))
  line("run_with_cache, nothing requested", "none")
  line("run_with_cache, everything (default names)", "all")
  line("run_with_cache, everything + attn.hook_result", "all+result")
  line("one head ablated (lt.ablate.zero), unbatched", "ablate")
  print(string.format("%-48s %d activations, %.1f MiB captured; peak RSS %.0f MiB vs %.0f MiB after a forward%s",
    "memory, everything (default names)", count, bench.mib(bytes), hwm / 1024, rss0 / 1024,
    reset and "" or " (process peak: could not reset)"))
  print(string.format("%-48s %d activations, %.1f MiB captured", "memory, everything + attn.hook_result", count_r,
    bench.mib(bytes_r)))

  -- a batched sweep of single-head ablations: row b zeroes one head through
  -- hook_z (lt.ablate.zero with batch_row = b), all in C; against forward
  -- passes timed round-robin with it
  local heads = {}
  for l = 0, c.n_layer - 1 do
    for h = 0, c.n_head - 1 do heads[#heads + 1] = {l, h} end
  end
  n_sweep = math.min(n_sweep, #heads)
  local function sweep()
    for first = 1, n_sweep, rows do
      local last = math.min(n_sweep, first + rows - 1)
      local batch, hooks = {}, {}
      for i = first, last do
        batch[#batch + 1] = ids
        local lh = heads[i]
        hooks[#hooks + 1] = {lt.act_name("z", lh[1]), lt.ablate.zero{heads = {lh[2]}, batch_row = i - first}}
      end
      m:run_with_hooks(batch, hooks)
    end
  end
  local s = bench.interleave({{"forward", variants[1][2]}, {"sweep", sweep}}, {reps = math.max(1, reps - 2)})
  local per = s.sweep.best / n_sweep
  print(string.format("%-48s %8.1f ms  per ablation = %.2f x forward (%.1f ms here); %d ablations, %d rows per pass",
    "batched single-head ablation sweep", per * 1e3, per / s.forward.best, s.forward.best * 1e3, n_sweep, rows))
  return 0
end

return {summary = "cost of run_with_cache and batched ablation sweeps vs a forward pass", usage = usage, run = run}
