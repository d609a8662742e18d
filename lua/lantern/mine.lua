-- lantern.mine: the dataset miner from Lua (core/src/miner.c does the work;
-- docs/mining.md). One streaming pass over a text or token file cut into
-- windows; the records go to the store.
--
--   local lt = require("lantern")
--   local m = lt.load("tests/fixtures/hf-gpt2-tiny2", {tokenizer = "tests/fixtures/gpt2-tokenizer"})
--   lt.mine.run{model = m, data = "corpus.txt", window = 64, top = 20, kinds = "mlp,attn",
--               layers = "0-1", store = "store/lantern.lmdb"}
--   local st = lt.store.open("store/lantern.lmdb", {readonly = true})
--   local rec = st:record{model = "hf-gpt2-tiny2", kind = "mlp_neuron", layer = 0, index = 5}
--   -- SAE latents: kinds "sae" and SAEs attached (saes = {DIR, ...} or m:attach_sae)
--   lt.mine.run{model = m, data = "corpus.txt", kinds = "mlp,sae", saes = {"saes/L1"}, layers = "0-1"}
--   st:record{model = "hf-gpt2-tiny2", kind = "sae_latent", layer = 1, index = 12}
local ffi = require("ffi")
local bit = require("bit")
local F = require("lantern.ffi")
local store_mod = require("lantern.store")
local C = F.C
local json = store_mod.json

local M = {}

pcall(ffi.cdef, "unsigned int sleep(unsigned int seconds);")
pcall(ffi.cdef, "void *memmove(void *dest, const void *src, size_t n);")

---------------------------------------------------------------- data files

-- Text is read in chunks of about CHUNK bytes, each cut after its last
-- newline and tokenised on its own (so a corpus of any size streams; the
-- tokens at a chunk boundary may differ from tokenising the whole file at
-- once, deterministically).
local CHUNK = 1024 * 1024

local function file_size(path)
  local f, err = io.open(path, "rb")
  if not f then error("mine: cannot open data file: " .. tostring(err), 0) end
  local n = f:seek("end")
  f:close()
  return n
end

-- The kind of a data file from its name: ".bin" little-endian uint16 token
-- ids (nanoGPT's format), ".tokens" little-endian int32 token ids, anything
-- else UTF-8 text.
function M.data_format(path)
  if path:match("%.bin$") then return "uint16" end
  if path:match("%.tokens$") then return "int32" end
  return "text"
end

-- A reader of consecutive windows of T tokens: reader:next(B, buf) fills
-- buf (int32 [B*T]) with up to B windows and returns how many;
-- reader.total is the number of windows (exact for token files, estimated
-- from the first chunk for text); reader:skip(n) drops n windows.
function M.open_data(path, T, tokenizer)
  local fmt = M.data_format(path)
  local size = file_size(path)
  local f = assert(io.open(path, "rb"))
  local r = {format = fmt, path = path, size = size, T = T}
  if fmt ~= "text" then
    local width = fmt == "uint16" and 2 or 4
    if size % width ~= 0 then
      f:close()
      error(string.format("mine: %s is %d bytes, not a whole number of %s token ids", path, size, fmt), 0)
    end
    r.total, r.exact = math.floor(size / width / T), true
    local raw, raw_cap = nil, 0
    function r:next(B, buf)
      local want = B * T * width
      local s = f:read(want)
      if not s then return 0 end
      local n = math.floor(#s / (T * width))
      if width == 4 then
        ffi.copy(buf, s, n * T * 4)
      else
        if raw_cap < #s then raw, raw_cap = ffi.new("uint8_t[?]", #s), #s end
        ffi.copy(raw, s, #s)
        local u = ffi.cast("const uint16_t *", raw)
        for i = 0, n * T - 1 do buf[i] = u[i] end
      end
      return n
    end
    function r:skip(n) f:seek("set", n * T * width) end
    function r:close() f:close() end
    return r
  end

  if not tokenizer then error("mine: a text data file needs a tokenizer (--tokenizer DIR)", 0) end
  local pending = ffi.new("int32_t[?]", T)   -- tokens not yet in a window
  local npend, cap = 0, T
  local eof, bytes_read, tokens_read = false, 0, 0
  local function refill()
    local s = f:read(CHUNK)
    if not s then eof = true; return end
    if #s == CHUNK then
      local cut = s:match(".*()\n")
      if cut and cut < #s then
        f:seek("cur", cut - #s)   -- read the rest of the line with the next chunk
        s = s:sub(1, cut)
      end
    end
    bytes_read = bytes_read + #s
    local ids = tokenizer:encode(s)
    tokens_read = tokens_read + #ids
    if npend + #ids > cap then
      local ncap = math.max(2 * cap, npend + #ids)
      local p = ffi.new("int32_t[?]", ncap)
      ffi.copy(p, pending, npend * 4)
      pending, cap = p, ncap
    end
    for i = 1, #ids do pending[npend + i - 1] = ids[i] end
    npend = npend + #ids
  end
  refill()
  -- The window count of a text file is known only at its end: estimate it
  -- from the tokens per byte of the first chunk.
  r.total = bytes_read > 0 and math.floor(size * (tokens_read / bytes_read) / T) or 0
  r.exact = eof or bytes_read >= size
  function r:next(B, buf)
    local n = 0
    while n < B do
      while npend < T and not eof do refill() end
      if npend < T then break end
      ffi.copy(buf + n * T, pending, T * 4)
      ffi.C.memmove(pending, pending + T, (npend - T) * 4)
      npend = npend - T
      n = n + 1
    end
    return n
  end
  local scratch
  function r:skip(n)
    scratch = scratch or ffi.new("int32_t[?]", 64 * T)
    while n > 0 do
      local got = self:next(math.min(n, 64), scratch)
      if got == 0 then break end
      n = n - got
    end
  end
  function r:close() f:close() end
  return r
end


------------------------------------------------------------------ options

local function abspath(p)
  if not p or p:sub(1, 1) == "/" then return p end
  local pwd = os.getenv("PWD")
  return pwd and (pwd .. "/" .. p) or p
end

local KIND_BITS = {mlp = 1, attn = 2, sae = 4}

-- "mlp,attn" (or a list) -> mask and the canonical "mlp,attn".
function M.parse_kinds(kinds)
  if kinds == nil then kinds = "mlp" end
  local list = type(kinds) == "table" and kinds or {}
  if type(kinds) == "string" then for k in kinds:gmatch("[^,%s]+") do list[#list + 1] = k end end
  local mask = 0
  for _, k in ipairs(list) do
    local b = KIND_BITS[k]
    if not b then error("mine: unknown kind '" .. tostring(k) .. "' (mlp, attn, sae)", 0) end
    if bit.band(mask, b) == 0 then mask = mask + b end
  end
  if mask == 0 then error("mine: no kinds to mine", 0) end
  local names = {}
  if bit.band(mask, 1) ~= 0 then names[#names + 1] = "mlp" end
  if bit.band(mask, 2) ~= 0 then names[#names + 1] = "attn" end
  if bit.band(mask, 4) ~= 0 then names[#names + 1] = "sae" end
  return mask, table.concat(names, ",")
end

-- "a,b", {"a", sae_object, ...} or nil -> a list of SAELens directories and
-- lt.sae objects.
local function sae_specs(saes)
  if saes == nil then return {} end
  local list = {}
  for _, v in ipairs(type(saes) == "table" and not saes.ptr and saes or {saes}) do
    if type(v) == "string" then
      for d in v:gmatch("[^,]+") do list[#list + 1] = d end
    else
      list[#list + 1] = v
    end
  end
  return list
end

-- The weight processing that every SAE asks of the model (SAE:model_load_opts);
-- an error when two disagree.
local function sae_load_opts(saes, base)
  local opts, from = {}, {}
  for k, v in pairs(base or {}) do opts[k] = v end
  for _, sae in ipairs(saes) do
    for k, v in pairs(sae:model_load_opts()) do
      if from[k] ~= nil and opts[k] ~= v then
        error(string.format("mine: the SAEs %s and %s ask for different weight processing (%s)", from[k],
                            sae.dir or tostring(sae), k), 0)
      end
      opts[k], from[k] = v, sae.dir or tostring(sae)
    end
  end
  return opts
end

-- The layer of an attached SAE (of its hook point).
local function sae_layer(m, hook)
  return C.lt_hook_layer(m.ptr, m:hook_point(hook))
end

-- The attached SAEs whose latents a run over layers lo..hi mines, in layer
-- order: {hook=, layer=, d_sae=, dir=}.
local function mined_saes(m, lo, hi)
  local out = {}
  for _, a in ipairs(m:saes()) do
    local l = sae_layer(m, a.hook)
    if l >= lo and l <= hi then
      out[#out + 1] = {hook = a.hook, layer = l, d_sae = a.sae.d_sae, dir = a.sae.dir and abspath(a.sae.dir)}
    end
  end
  table.sort(out, function(a, b) return a.layer < b.layer end)
  return out
end

local function describe_saes(list)
  local parts = {}
  for _, s in ipairs(list) do
    parts[#parts + 1] = string.format("%s (%d latents%s)", s.hook, s.d_sae, s.dir and (", " .. s.dir) or "")
  end
  return #parts > 0 and table.concat(parts, "; ") or "none"
end


-- "0-3", "2", {0, 3} or nil (all) -> lo, hi for a model of n_layer layers.
function M.parse_layers(layers, n_layer)
  local lo, hi
  if layers == nil or layers == "all" then
    lo, hi = 0, n_layer - 1
  elseif type(layers) == "table" then
    lo, hi = layers[1], layers[2] or layers[1]
  elseif type(layers) == "number" then
    lo, hi = layers, layers
  else
    local a, b = tostring(layers):match("^%s*(%d+)%s*%-%s*(%d+)%s*$")
    if a then lo, hi = tonumber(a), tonumber(b)
    else
      lo = tonumber(layers)
      hi = lo
    end
  end
  if not lo or not hi or lo < 0 or hi < lo or hi >= n_layer then
    error(string.format("mine: layers '%s' outside the model's 0-%d", tostring(layers), n_layer - 1), 0)
  end
  return lo, hi
end

-- The saved description of a run (run/mine/<model>/info), or nil.
function M.run_info(st, name)
  return st:get_json("runs", "run/mine/" .. name .. "/info")
end

------------------------------------------------------------------------ run

-- Options in info that a resume must keep; missing ones are taken from it.
local KEPT = {"window", "top", "random", "per_bin", "quantile_windows", "kinds", "layers", "seed", "max_windows"}

-- lt.mine.run{model=, data=, window=64, top=20, random=20, per_bin=5,
-- quantile_windows=, kinds="mlp", layers=, seed=0, batch=8, store=, name=,
-- resume=false, max_windows=, commit_every=64, tokenizer=, saes=, progress=fn}:
-- mines data into the store. model: a Model or a model directory; store:
-- a path (default store.default_path()) or an open Store. progress(done,
-- total, seconds, resumed_from, window) is called after every batch.
-- saes: SAELens directories ({DIR, ...} or "DIR,DIR") or lt.sae objects,
-- attached to the model before mining (they stay attached; a model given
-- as a directory is loaded with the weight processing they ask for); each
-- must be in `layers`. With kind "sae" the latents of every attached SAE
-- in `layers` are mined (SAEs attached to the Model beforehand and outside
-- `layers` are not). A resume without saes loads those of the interrupted
-- run. Returns a summary table {model=, windows=, tokens=, seconds=, nodes=,
-- commits=, resumed_from=, saes=}.
function M.run(o)
  if type(o) ~= "table" then error("mine.run expects an options table", 2) end
  if type(o.data) ~= "string" then error("mine.run: data must be a file path", 2) end
  local m = o.model
  if type(m) ~= "string" and (type(m) ~= "table" or not m.ptr) then
    error("mine.run: model must be a Model or a model directory", 2)
  end
  -- A directory is loaded once the SAEs are known (their weight processing).
  local name = o.name or (type(m) == "string" and m:gsub("/+$", ""):match("([^/]+)$") or m.name)
  local st, own_store = o.store, false
  if type(st) ~= "table" then
    st = store_mod.open(st or store_mod.default_path())
    own_store = true
  end
  local ok, res = pcall(M._run, o, m, name, st)
  if own_store then st:close() end
  if not ok then error(res, 0) end
  return res
end

function M._run(o, m, name, st)
  o = setmetatable({}, {__index = o})   -- resumed options fill in, the caller's table stays
  local lt = require("lantern")
  local data_path = abspath(o.data)
  local info_before = M.run_info(st, name)
  if o.resume and not info_before then error("mine: nothing to resume for model '" .. name .. "' in " .. st.path, 0) end

  -- The SAEs: given, or on a resume those the interrupted run loaded from
  -- directories (unless the Model has SAEs attached already).
  local specs = sae_specs(o.saes)
  if o.resume and o.saes == nil and info_before.saes and (type(m) == "string" or #m:saes() == 0) then
    for _, s in ipairs(info_before.saes) do
      if not s.dir then
        error(string.format("mine --resume: the run mined the SAE at %s, which was not loaded from a directory; "
                            .. "attach it again (m:attach_sae) to resume", s.hook), 0)
      end
      specs[#specs + 1] = s.dir
    end
  end
  local saes = {}
  for i, v in ipairs(specs) do
    if type(v) == "string" then
      local ok, sae = pcall(lt.sae.load, v)
      if not ok then error("mine: --sae " .. v .. ": " .. tostring(sae):gsub("^[^:\n]*:%d+: ", ""), 0) end
      v = sae
    end
    saes[i] = v
  end
  if type(m) == "string" then m = lt.load(m, sae_load_opts(saes, {tokenizer = o.tokenizer})) end

  if o.resume then
    for _, k in ipairs(KEPT) do
      local saved = info_before[k]
      if type(saved) == "table" then saved = saved[1] .. "-" .. saved[2] end
      local given = o[k]
      if k == "kinds" and given ~= nil then given = select(2, M.parse_kinds(given)) end
      if k == "layers" and given ~= nil then
        given = table.concat({M.parse_layers(given, m.cfg.n_layer)}, "-")
      end
      if given ~= nil and saved ~= nil and tostring(given) ~= tostring(saved) then
        error(string.format("mine --resume: %s is %s in the run being resumed, not %s", k, tostring(saved),
                            tostring(given)), 0)
      end
      if given == nil then o[k] = saved end
    end
    if info_before.data ~= data_path or info_before.data_size ~= file_size(o.data) then
      error(string.format("mine --resume: the run mined %s (%s bytes), not %s", tostring(info_before.data),
                          tostring(info_before.data_size), data_path), 0)
    end
    if o.batch == nil then o.batch = info_before.batch end
  end

  local T = o.window or 64
  local B = o.batch or 8
  local mask, kinds = M.parse_kinds(o.kinds)
  local lo, hi = M.parse_layers(o.layers, m.cfg.n_layer)
  local mined = M._attach_saes(m, saes, mask, kinds, lo, hi)
  if o.resume and bit.band(mask, 4) ~= 0 then
    -- Hook points and widths here; the weights are compared by the C
    -- state check (lt_miner_resume).
    local was = info_before.saes or {}
    local same = #was == #mined
    for i = 1, #mined do
      same = same and was[i].hook == mined[i].hook and was[i].d_sae == mined[i].d_sae
    end
    if not same then
      error(string.format("mine --resume: the run being resumed mined the SAEs %s, not %s", describe_saes(was),
                          describe_saes(mined)), 0)
    end
  end
  local data = M.open_data(o.data, T, m.tokenizer)
  local total = data.total
  if o.max_windows then total = math.min(total, o.max_windows) end
  -- Boundaries of the quantile bins come from the first K windows: 1024,
  -- or a quarter of a smaller dataset so that bins still fill.
  local K = o.quantile_windows or math.max(1, math.min(1024, math.floor(total / 4)))

  local copts = ffi.new("lt_miner_opts")
  C.lt_miner_default_opts(copts)
  copts.window, copts.top_n = T, o.top or 20
  copts.n_random, copts.n_per_bin = o.random or 20, o.per_bin or 5
  copts.quantile_windows, copts.kinds = K, mask
  copts.layer_lo, copts.layer_hi = lo, hi
  copts.seed = o.seed or 0
  local out = ffi.new("lt_miner *[1]")
  F.check(C.lt_miner_new(m.ptr, copts, out), "mine")
  local miner = ffi.gc(out[0], C.lt_miner_free)

  local info = {
    v = 1, model = name, model_dir = abspath(m.dir), tokenizer = m.tokenizer and abspath(m.tokenizer.vocab_path:match("^(.*)/[^/]*$")) or nil,
    data = data_path, data_format = data.format, data_size = data.size,
    window = T, top = copts.top_n, random = copts.n_random, per_bin = copts.n_per_bin,
    quantile_windows = K, kinds = kinds, layers = {lo, hi}, seed = tonumber(copts.seed), batch = B,
    max_windows = o.max_windows, windows = 0, complete = false,
    saes = bit.band(mask, 4) ~= 0 and mined or nil,
  }
  local resumed_from = 0
  if o.resume then
    local rc = C.lt_miner_resume(miner, st._h, name)
    if rc == C.LT_STORE_NOT_FOUND then error("mine: no miner state for '" .. name .. "' in " .. st.path, 0) end
    F.check(rc, "mine --resume")
    resumed_from = tonumber(C.lt_miner_windows(miner))
    data:skip(resumed_from)
  else
    -- The model's description, for `show` and the exchange (tokenizer).
    st:put_json("models", "model/" .. name, {
      v = 1, dir = info.model_dir, tokenizer = info.tokenizer, n_layer = m.cfg.n_layer, n_head = m.cfg.n_head,
      d_mlp = m.cfg.d_mlp, d_model = m.cfg.d_model, d_vocab = m.cfg.d_vocab})
  end

  local bench = require("lantern.cli.bench")
  local buf = ffi.new("int32_t[?]", B * T)
  local done = resumed_from
  local limit = o.max_windows or math.huge
  local commit_every = o.commit_every or 64
  local adaptive = o.commit_every == nil
  local pause_after = tonumber(os.getenv("LANTERN_MINE_PAUSE_AFTER") or "")
  local t0 = bench.now()
  local last_commit, last_cost, since, commits, commit_time = t0, 0, 0, 0, 0

  local function commit(complete)
    info.windows, info.complete = done, complete
    local c0 = bench.now()
    F.check(C.lt_miner_write(miner, st._h, name, json.encode(info)), "mine: commit")
    commits = commits + 1
    last_commit = bench.now()
    last_cost, since = last_commit - c0, 0
    commit_time = commit_time + last_cost
    if pause_after and commits == pause_after and not complete then
      -- A test hook: stop here (committed, not finished) so that a test can
      -- kill the process mid-run at a known point.
      io.stderr:write(string.format("lantern mine: paused after %d commits (LANTERN_MINE_PAUSE_AFTER)\n", commits))
      io.stderr:flush()
      while true do ffi.C.sleep(60) end
    end
  end

  if info_before and info_before.complete and o.resume then
    data:close()
    return {model = name, windows = done, tokens = done * T, seconds = 0, nodes = C.lt_miner_node_count(miner),
            commits = 0, resumed_from = resumed_from, complete = true, store = st.path, window = T, saes = info.saes}
  end
  while done < limit do
    local want = math.min(B, limit - done)
    local n = data:next(want, buf)
    if n == 0 then break end
    F.check(C.lt_miner_feed(miner, buf, n, T, done), "mine")
    done = done + n
    since = since + n
    if o.progress then o.progress(done, math.max(total, done), bench.now() - t0, resumed_from, T) end
    -- Commit every commit_every windows; unless that was given, wait longer
    -- when commits are slow, so that they take at most ~10% of the time.
    if since >= commit_every and (not adaptive or bench.now() - last_commit >= 9 * last_cost) then
      commit(false)
    end
  end
  data:close()
  commit(true)
  return {model = name, windows = done, tokens = done * T, seconds = bench.now() - t0,
          nodes = C.lt_miner_node_count(miner), commits = commits, resumed_from = resumed_from, complete = true,
          store = st.path, window = T, commit_seconds = commit_time, saes = info.saes}
end

-- Attaches saes (lt.sae objects) to m after checking them against the kinds
-- and layers lo..hi; returns the SAEs whose latents the run mines
-- (mined_saes).
function M._attach_saes(m, saes, mask, kinds, lo, hi)
  local want = bit.band(mask, 4) ~= 0
  if #saes > 0 and not want then
    error("mine: SAEs given (--sae) but the kinds " .. kinds .. " have no sae; add sae to --kinds", 0)
  end
  for _, sae in ipairs(saes) do
    local l = C.lt_hook_layer(m.ptr, sae:check_model(m))
    if l < lo or l > hi then
      error(string.format("mine: the SAE %s reads %s (layer %d), outside layers %d-%d; SAEs are mined only "
                          .. "within --layers: widen --layers or leave that SAE out", sae.dir or tostring(sae),
                          sae.hook_name, l, lo, hi), 0)
    end
  end
  for _, sae in ipairs(saes) do m:attach_sae(sae) end
  if not want then return {} end
  if #m:saes() == 0 then
    error("mine: SAE latents asked for (kinds " .. kinds .. "), but no SAE is given: --sae DIR "
          .. "(lt.mine.run{saes = {DIR}}, or m:attach_sae(sae) before)", 0)
  end
  local mined = mined_saes(m, lo, hi)
  if #mined == 0 then
    local all = {}
    for _, a in ipairs(m:saes()) do all[#all + 1] = string.format("%s (layer %d)", a.hook, sae_layer(m, a.hook)) end
    error(string.format("mine: SAE latents asked for, but none of the attached SAEs is in layers %d-%d: %s",
                        lo, hi, table.concat(all, ", ")), 0)
  end
  return mined
end

return M
