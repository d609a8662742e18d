-- lantern bench NAME [ARGS...]: runs the benchmark lua/lantern/bench/NAME.lua.
--
-- A benchmark module returns {summary = "...", usage = "..." (optional),
-- run = function(argv) ... end}. Adding a file under lua/lantern/bench/ is
-- all it takes to add a benchmark. This module also holds the helpers the
-- benchmarks share (wall-clock timing, sgemm reference rate, memory figures,
-- the GPT-2-small-shaped random model), as fields of the table it returns:
--   local bench = require("lantern.cli.bench")
--   local t = bench.measure(function() m:forward(ids) end)   -- t.best, t.median
-- Every benchmark prints the figure it is compared with, measured in the
-- same run (see ARCHITECTURE.md: absolute times on shared machines drift).
local ffi = require("ffi")

local M = {}

-- ------------------------------------------------------------ helpers

-- Wall time from CLOCK_MONOTONIC (os.clock is CPU time summed over threads,
-- which overstates a multi-threaded run). Declared under a private name so
-- another module's declaration of struct timespec cannot clash.
pcall(ffi.cdef, "typedef struct { long tv_sec; long tv_nsec; } lt_bench_timespec;")
pcall(ffi.cdef, "int clock_gettime(int clk_id, void *tp);")   -- fails harmlessly if declared elsewhere
local CLOCK_MONOTONIC = 1   -- Linux
local ts = ffi.new("lt_bench_timespec")

function M.now()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ffi.cast("void *", ts))
  return tonumber(ts.tv_sec) + 1e-9 * tonumber(ts.tv_nsec)
end

-- Times fn: warmup calls first (caches, thread pools, buffer growth), then
-- up to reps timed calls, stopping early once max_seconds have been spent.
-- Returns {best, median, n} in seconds.
function M.measure(fn, opts)
  opts = opts or {}
  for _ = 1, opts.warmup or 1 do fn() end
  local times, spent = {}, 0
  for _ = 1, opts.reps or 3 do
    local t0 = M.now()
    fn()
    local dt = M.now() - t0
    times[#times + 1] = dt
    spent = spent + dt
    if opts.max_seconds and spent > opts.max_seconds then break end
  end
  table.sort(times)
  local n = #times
  local median = n % 2 == 1 and times[(n + 1) / 2] or 0.5 * (times[n / 2] + times[n / 2 + 1])
  return {best = times[1], median = median, n = n}
end

-- Times several functions round-robin (a, b, c, a, b, c, ...) after one
-- warm-up call each, so that a slow spell of a shared machine hits them
-- alike; fns is a list of {label, fn}. Up to reps rounds, fewer once
-- max_seconds have been spent. Returns label -> {best, median, n}.
function M.interleave(fns, opts)
  opts = opts or {}
  for _, f in ipairs(fns) do f[2]() end
  local times, start = {}, M.now()
  for _, f in ipairs(fns) do times[f[1]] = {} end
  for _ = 1, opts.reps or 3 do
    for _, f in ipairs(fns) do
      local t0 = M.now()
      f[2]()
      local list = times[f[1]]
      list[#list + 1] = M.now() - t0
    end
    if opts.max_seconds and M.now() - start > opts.max_seconds then break end
  end
  local out = {}
  for label, list in pairs(times) do
    table.sort(list)
    local n = #list
    out[label] = {best = list[1], median = n % 2 == 1 and list[(n + 1) / 2] or 0.5 * (list[n / 2] + list[n / 2 + 1]), n = n}
  end
  return out
end

-- GFLOP/s of a plain sgemm [m x k] @ [k x n] (best of reps), in this run.
function M.sgemm_gflops(m, n, k, reps)
  local F = require("lantern.ffi")
  local out = ffi.new("double[1]")
  F.check(F.C.lt_bench_sgemm(m, n, k, reps or 5, out), "sgemm")
  return out[0]
end

-- A field of /proc/self/status in kB (VmRSS, VmHWM, ...), or nil.
function M.proc_status_kb(field)
  local f = io.open("/proc/self/status", "r")
  if not f then return nil end
  local text = f:read("*a")
  f:close()
  local v = text:match(field .. ":%s*(%d+)")
  return v and tonumber(v)
end

-- Resets the peak resident size (VmHWM) to the current one, so that a
-- later VmHWM is the peak of what ran since. Returns false where the
-- kernel does not allow it.
function M.reset_peak_rss()
  local f = io.open("/proc/self/clear_refs", "w")
  if not f then return false end
  local ok = f:write("5")
  local closed = f:close()
  return ok ~= nil and closed ~= nil
end

-- "AMD EPYC, 2 CPUs" from /proc/cpuinfo.
function M.machine()
  local f = io.open("/proc/cpuinfo", "r")
  if not f then return "unknown machine" end
  local text = f:read("*a")
  f:close()
  local name = text:match("model name%s*:%s*([^\n]+)") or "unknown CPU"
  local n = 0
  for _ in text:gmatch("\nprocessor%s*:") do n = n + 1 end
  if text:match("^processor%s*:") then n = n + 1 end
  return string.format("%s, %d CPU%s", name, n, n == 1 and "" or "s")
end

-- The heading every benchmark starts with: what, when, where.
function M.header(title)
  print(string.format("lantern bench %s  (%s; %s)", title, os.date("%Y-%m-%d %H:%M"), M.machine()))
end

-- GPT-2 small's shape with random weights (no download needed).
M.GPT2_SMALL = {n_layer = 12, n_head = 12, n_embd = 768, n_ctx = 1024, d_vocab = 50257}

function M.gpt2_small(seed)
  return require("lantern").random_model(M.GPT2_SMALL, seed or 1)
end

-- T token ids drawn deterministically from [0, V).
function M.random_ids(T, V, seed)
  local s, ids = seed or 12345, {}
  for i = 1, T do
    s = (s * 1103515245 + 12345) % 2147483648
    ids[i] = s % V
  end
  return ids
end

function M.mib(bytes) return bytes / (1024 * 1024) end

-- ------------------------------------------------------------ dispatch

local function bench_dir()
  local src = debug.getinfo(1, "S").source:sub(2)
  local dir = src:match("^(.*)/cli/bench%.lua$")
  return (dir or ((os.getenv("LANTERN_ROOT") or ".") .. "/lua/lantern")) .. "/bench"
end

-- Names of the benchmark modules present, sorted.
function M.available()
  local out = {}
  local p = io.popen('ls "' .. bench_dir() .. '" 2>/dev/null')
  if p then
    for line in p:lines() do
      local name = line:match("^([%w_]+)%.lua$")
      if name then out[#out + 1] = name end
    end
    p:close()
  end
  table.sort(out)
  return out
end

local function load_bench(name)
  local ok, mod = pcall(require, "lantern.bench." .. name)
  if ok then return mod end
  if tostring(mod):find("module 'lantern.bench." .. name .. "' not found", 1, true) then return nil end
  error(mod, 0)
end

local function usage()
  local lines = {"usage: lantern bench NAME [ARGS...]", "", "benchmarks:"}
  for _, name in ipairs(M.available()) do
    local ok, mod = pcall(load_bench, name)
    local summary = ok and mod and mod.summary or ""
    lines[#lines + 1] = string.format("  %-10s %s", name, summary)
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "`lantern bench NAME --help` shows a benchmark's options."
  return table.concat(lines, "\n")
end

M.summary = "speed benchmarks (forward, hooks, ...)"
setmetatable(M, {__index = function(_, k) if k == "usage" then return usage() end end})

function M.run(argv)
  local name = argv[1]
  if not name then
    print(usage())
    return 2
  end
  local mod = load_bench(name)
  if not mod then
    error("unknown benchmark '" .. name .. "'; available: " .. table.concat(M.available(), ", "), 0)
  end
  local rest = {}
  for i = 2, #argv do rest[#rest + 1] = argv[i] end
  if rest[1] == "--help" or rest[1] == "-h" then
    print(mod.usage or mod.summary or "")
    return 0
  end
  return mod.run(rest)
end

return M
