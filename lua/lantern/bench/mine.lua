-- lantern bench mine: the dataset miner's speed against the forward pass it
-- runs on, on the same model and data in the same run, and the store's size
-- per node.
--   forward only   lt_forward over the windows, B at a time (no activations
--                  kept, the whole model to the logits): the figure the
--                  miner is compared with
--   forward to the last mined layer
--                  the same, stopped after the last mined layer
--                  (lt_run_stop_at_layer), as the miner's forward is: the
--                  like-for-like base of the miner's own overhead
--   miner feed     lt_miner_feed over the same windows (forward to the last
--                  mined layer with every activation kept, then every
--                  node's update), no store
--   mine.run       the whole miner: reading the token file, feeding,
--                  committing records and state to a fresh store
local ffi = require("ffi")
local bench = require("lantern.cli.bench")
local args = require("lantern.cli.args")
local F = require("lantern.ffi")

local usage = [[
usage: lantern bench mine [--model DIR] [--windows N] [--window T] [--batch B]
                          [--layers A-B] [--kinds mlp,attn] [--top N]

  --model DIR    a GPT-2 directory (default: GPT-2 small's shape with random
                 weights)
  --windows N    windows mined (default 64)
  --window T     tokens per window (default 64)
  --batch B      windows per forward pass (default 8)
  --layers A-B   layers mined (default all)
  --kinds LIST   default mlp,attn
  --top N        top windows per node (default 20)]]

local function dir_bytes(path)
  local p = io.popen('du -sb "' .. path .. '" 2>/dev/null')
  local out = p and p:read("*a") or ""
  if p then p:close() end
  return tonumber(out:match("^(%d+)")) or 0
end

local function run(argv)
  local o = args.parse(argv, {model = "string", windows = "number", window = "number", batch = "number",
                              layers = "string", kinds = "string", top = "number"})
  local NW, T, B = o.windows or 64, o.window or 64, o.batch or 8
  local lt = require("lantern")
  local mine = require("lantern.mine")
  bench.header("mine")
  local m = o.model and lt.load(o.model) or bench.gpt2_small()
  local c = m.cfg
  print(string.format("model: %s (%d layers, %d heads, d_model %d, d_mlp %d); %d windows of %d tokens, %d per forward pass",
    o.model or "GPT-2 small shape, random weights", c.n_layer, c.n_head, c.n_embd, c.d_mlp, NW, T, B))

  local tmp = os.tmpname()
  os.remove(tmp)
  local data, store_path = tmp .. ".tokens", tmp .. ".store"
  local ids_list = bench.random_ids(NW * T, c.d_vocab, 4242)
  local f = assert(io.open(data, "wb"))
  local ids = ffi.new("int32_t[?]", NW * T)
  for i, v in ipairs(ids_list) do ids[i - 1] = v end
  f:write(ffi.string(ids, NW * T * 4))
  f:close()

  local function over_windows(fn)
    for w = 0, NW - 1, B do fn(ids + w * T, math.min(B, NW - w), w) end
  end
  local logits = ffi.new("float *[1]")
  -- forward only: the model's own run, no activations kept
  F.check(F.C.lt_forward(m.run, ids, math.min(B, NW), T, logits), "forward")   -- sizes the buffers
  local fwd = bench.measure(function()
    over_windows(function(p, n) F.check(F.C.lt_forward(m.run, p, n, T, logits), "forward") end)
  end, {reps = 2, warmup = 0})

  -- forward stopped after the last mined layer, on a run of its own
  local mask, kinds = mine.parse_kinds(o.kinds or "mlp,attn")
  local lo, hi = mine.parse_layers(o.layers, c.n_layer)
  local rp = ffi.new("lt_run *[1]")
  F.check(F.C.lt_run_new(m.ptr, rp), "run")
  local stopped_run = ffi.gc(rp[0], F.C.lt_run_free)
  F.check(F.C.lt_run_stop_at_layer(stopped_run, hi + 1), "stop_at_layer")
  F.check(F.C.lt_forward(stopped_run, ids, math.min(B, NW), T, nil), "forward")
  local fwd_stop = bench.measure(function()
    over_windows(function(p, n) F.check(F.C.lt_forward(stopped_run, p, n, T, nil), "forward") end)
  end, {reps = 2, warmup = 0})

  -- miner feed: a fresh miner each time (the first windows cost the same
  -- as later ones: the heaps fill either way)
  local nodes = 0
  local feed = bench.measure(function()
    local copts = ffi.new("lt_miner_opts")
    F.C.lt_miner_default_opts(copts)
    copts.window, copts.top_n, copts.kinds, copts.layer_lo, copts.layer_hi = T, o.top or 20, mask, lo, hi
    copts.quantile_windows = math.max(1, math.floor(NW / 4))
    local out = ffi.new("lt_miner *[1]")
    F.check(F.C.lt_miner_new(m.ptr, copts, out), "miner")
    nodes = F.C.lt_miner_node_count(out[0])
    local ok, err = pcall(over_windows, function(p, n, w) F.check(F.C.lt_miner_feed(out[0], p, n, T, w), "feed") end)
    F.C.lt_miner_free(out[0])
    if not ok then error(err, 0) end
  end, {reps = 2, warmup = 0})

  -- the whole miner into a fresh store
  os.execute('rm -rf "' .. store_path .. '"')
  local t0 = bench.now()
  local res = mine.run{model = m, data = data, window = T, batch = B, top = o.top or 20, kinds = kinds,
                       layers = lo .. "-" .. hi, store = store_path}
  local whole = bench.now() - t0
  local st = require("lantern.store").open(store_path, {readonly = true})
  local vbytes, nrec = 0, 0
  for _, v in st:iter("records", "rec/") do vbytes, nrec = vbytes + #v, nrec + 1 end
  st:close()
  local disk = dir_bytes(store_path)
  os.execute('rm -rf "' .. store_path .. '" "' .. data .. '"')

  local tokens = NW * T
  local ftps = tokens / fwd.best
  print(string.format("%-34s %10s %10s", "", "tokens/s", "vs forward"))
  print(string.format("%-34s %10.0f %9.0f%%", "forward only (lt_forward)", ftps, 100))
  print(string.format("%-34s %10.0f %9.0f%%", "forward to layer " .. hi .. " (stop_at_layer " .. (hi + 1) .. ")",
    tokens / fwd_stop.best, 100 * fwd.best / fwd_stop.best))
  print(string.format("%-34s %10.0f %9.0f%%", "miner feed (" .. kinds .. ", " .. nodes .. " nodes)", tokens / feed.best,
    100 * fwd.best / feed.best))
  print(string.format("%-34s %10s %9.0f%%", "  miner feed vs forward to layer " .. hi, "", 100 * fwd_stop.best / feed.best))
  print(string.format("%-34s %10.0f %9.0f%%  (%d commits, %.1f s of %.1f s)", "mine.run (file, feed, commits)",
    tokens / whole, 100 * fwd.best / whole, res.commits, res.commit_seconds, whole))
  local loop = res.seconds - res.commit_seconds
  print(string.format("%-34s %10.0f %9.0f%%  (setup %.1f s: miner, store)", "mine.run loop without commits",
    tokens / loop, 100 * fwd.best / loop, whole - res.seconds))
  print(string.format("store: %d records, %.1f KiB per node (record values), %.1f KiB per node on disk (data.mdb: %.1f MiB)",
    nrec, vbytes / math.max(nrec, 1) / 1024, disk / math.max(nrec, 1) / 1024, bench.mib(disk)))
  print("goal: the miner keeps at least 85% of the forward-only rate. The miner runs the model only up to the last")
  print("layer it mines (no ln_final, no unembedding): with every layer mined that is what it saves over a forward.")
  print("A commit writes every node's record;")
  print("without --commit-every, mine waits 9x a commit's duration before the next (commits <= ~10% of a long run).")
  return 0
end

return {summary = "miner tokens/s vs forward-only tokens/s, and store size per node", usage = usage, run = run}
