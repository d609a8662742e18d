-- lantern bench hooks: the cost of the hook machinery on the GPT-2 small
-- shape (random weights): run_with_cache with nothing requested against a
-- plain forward pass, run_with_cache with everything requested (time and
-- memory), and a batched sweep of single-head ablations against one
-- forward pass. Every figure is printed next to the forward pass it is
-- compared with, measured in the same run.
local bench = require("lantern.cli.bench")
local args = require("lantern.cli.args")

local usage = [[
usage: lantern bench hooks [--T 256] [--reps N] [--sweep N] [--rows N]

  --T N      sequence length (default 256)
  --reps N   timed runs per figure, best taken (default 3)
  --sweep N  single-head ablations in the sweep (default 16; all heads of
             GPT-2 small are 144, which takes minutes at T=256)
  --rows N   batch rows per forward pass of the sweep (default 8)]]

local function pct(a, b) return 100 * (a - b) / b end

local function run(argv)
  local opts = args.parse(argv, {T = "number", reps = "number", sweep = "number", rows = "number"})
  local T, reps = opts.T or 256, opts.reps or 3
  local n_sweep, rows = opts.sweep or 16, opts.rows or 8
  local lt = require("lantern")

  bench.header("hooks")
  local m = bench.gpt2_small()
  local c = m.cfg
  local ids = bench.random_ids(T, c.d_vocab)
  print(string.format("model: GPT-2 small shape, random weights; one sequence of T = %d; best of %d runs after a warm-up", T, reps))

  -- the plain forward pass (the Lua path: includes copying the logits out)
  local fwd = bench.measure(function() m:forward(ids) end, {reps = reps})
  print(string.format("%-46s %9.1f ms", "forward (m:forward)", fwd.best * 1e3))

  -- run_with_cache with nothing requested: the hook machinery alone
  local none = bench.measure(function() m:run_with_cache(ids, {names = {}}) end, {reps = reps})
  print(string.format("%-46s %9.1f ms  %+5.1f%% vs forward", "run_with_cache, nothing requested", none.best * 1e3,
    pct(none.best, fwd.best)))

  -- run_with_cache with everything (the default: every point but
  -- attn.hook_result), then with hook_result as well. The peak resident
  -- size is reset first where the kernel allows it, so VmHWM is this run's.
  local function everything(label, names)
    local bytes, count = 0, 0
    collectgarbage()
    local reset = bench.reset_peak_rss()
    local rss0 = bench.proc_status_kb("VmRSS")
    local t = bench.measure(function()
      local _, cache = m:run_with_cache(ids, {names = names})
      bytes, count = 0, 0
      for _, name in ipairs(cache:names()) do
        bytes = bytes + 4 * cache[name].numel
        count = count + 1
      end
    end, {reps = reps})
    local hwm = bench.proc_status_kb("VmHWM")
    print(string.format("%-46s %9.1f ms  %+5.1f%% vs forward", label, t.best * 1e3, pct(t.best, fwd.best)))
    print(string.format("%-46s %d activations, %.1f MiB captured; peak RSS %.0f MiB%s (%.0f MiB before the runs)", "",
      count, bench.mib(bytes), hwm / 1024, reset and "" or " (process peak: could not reset)", rss0 / 1024))
    collectgarbage()
  end
  everything("run_with_cache, everything (default names)", nil)
  everything("run_with_cache, everything + attn.hook_result", function() return true end)

  -- a batched sweep of single-head ablations: row b zeroes one head through
  -- hook_z (lt.ablate.zero with batch_row = b), all in C
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
  local sw = bench.measure(sweep, {reps = math.max(1, reps - 1)})
  local per = sw.best / n_sweep
  print(string.format("%-46s %9.1f ms  per ablation, %.2fx one forward (%d ablations, %d per forward pass)",
    "batched single-head ablation sweep", per * 1e3, per / fwd.best, n_sweep, rows))
  -- the same ablation as one unbatched run, for comparison
  local one = bench.measure(function()
    m:run_with_hooks(ids, {{lt.act_name("z", 0), lt.ablate.zero{heads = {0}}}})
  end, {reps = reps})
  print(string.format("%-46s %9.1f ms  %+5.1f%% vs forward", "one ablation, unbatched run", one.best * 1e3,
    pct(one.best, fwd.best)))
  return 0
end

return {summary = "cost of run_with_cache and batched ablation sweeps vs a forward pass", usage = usage, run = run}
