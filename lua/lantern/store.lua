-- lantern.store: the LMDB store (core/src/store.c) from Lua: node records,
-- explanations, scores and JSON metadata. Key schema and value formats are
-- in docs/store.md.
--
--   local store = require("lantern.store")
--   local st = store.open()                      -- <root>/store/lantern.lmdb
--   local rec = st:record{model = "toy", kind = "mlp_neuron", layer = 0, index = 3}
--   for node in st:nodes{model = "toy", kind = "mlp_neuron"} do ... end
--   st:close()
--
-- Every failure is a Lua error carrying the C library's message.
local ffi = require("ffi")
local lt = require("lantern.ffi")
local C = lt.C

local M = {}

local function fail(level)
  error(lt.last_error(), level + 1)
end

local function check(status, level)
  if status ~= 0 then fail((level or 2) + 1) end
end

-- The JSON codec (sorted keys, no NaN) lives in lantern.json; store.json
-- is kept as a name for it.
local json = require("lantern.json")
M.json = json

---------------------------------------------------------------- node keys

local KINDS_HINT = '"mlp_neuron", "attn_head" or "sae_latent"'

local function check_node(node, level)
  level = (level or 2) + 1
  if type(node) ~= "table" then error("store: expected a node table {model=, kind=, layer=, index=}", level) end
  if type(node.model) ~= "string" then error("store: node.model must be a string", level) end
  if type(node.kind) ~= "string" then error("store: node.kind must be a string (" .. KINDS_HINT .. ")", level) end
  for _, f in ipairs{"layer", "index"} do
    local v = node[f]
    if type(v) ~= "number" or v ~= math.floor(v) then
      error("store: node." .. f .. " must be an integer", level)
    end
  end
end

local keybuf = ffi.new("char[512]")

-- "<prefix>/<model>/<kind>/<layer:4>/<index:8>", as the C library writes it.
function M.node_key(prefix, node)
  check_node(node, 2)
  check(C.lt_store_node_key(prefix, node.model, node.kind, node.layer, node.index, keybuf, 512), 2)
  return ffi.string(keybuf)
end

-- Explainer and simulator ids become the last key fields; '%' and '/' in
-- them are percent-encoded so the fields stay separable.
local function escape_id(s)
  return (s:gsub("[%%/]", function(c) return string.format("%%%02X", c:byte()) end))
end

function M.default_path()
  return lt.root .. "/store/lantern.lmdb"
end

------------------------------------------------------------------- store

local Store = {}
Store.__index = Store

-- Opens the store at path (default <root>/store/lantern.lmdb); opts.readonly
-- opens it read-only (and never creates it).
function M.open(path, opts)
  opts = opts or {}
  path = path or M.default_path()
  local out = ffi.new("lt_store *[1]")
  check(C.lt_store_open(path, opts.readonly and C.LT_STORE_READONLY or 0, out))
  local h = ffi.gc(out[0], C.lt_store_close)
  return setmetatable({_h = h, path = path, readonly = opts.readonly and true or false}, Store)
end

local function handle(self)
  local h = rawget(self, "_h")
  if h == nil then error("store " .. tostring(self.path) .. " is closed", 3) end
  return h
end

-- Closes the store (a batch not committed is discarded). Idempotent.
function Store:close()
  local h = rawget(self, "_h")
  if h ~= nil then
    ffi.gc(h, nil)
    self._h = nil
    C.lt_store_close(h)
  end
end

local vptr = ffi.new("void *[1]")
local vlen = ffi.new("size_t[1]")

-- The bytes stored under key in db, or nil.
function Store:get(db, key)
  local h = handle(self)
  local rc = C.lt_store_get(h, db, key, #key, vptr, vlen)
  if rc == C.LT_STORE_NOT_FOUND then return nil end
  if rc ~= 0 then fail(2) end
  local s = ffi.string(vptr[0], vlen[0])
  C.lt_free(vptr[0])
  return s
end

function Store:put(db, key, val)
  if type(val) ~= "string" then error("store: put expects a string value, got " .. type(val), 2) end
  check(C.lt_store_put(handle(self), db, key, #key, val, #val))
end

function Store:del(db, key)
  check(C.lt_store_del(handle(self), db, key, #key))
end

function Store:begin() check(C.lt_store_begin(handle(self))) end
function Store:commit() check(C.lt_store_commit(handle(self))) end
function Store:abort() C.lt_store_abort(handle(self)) end

-- Runs fn(self) inside a batch: committed if fn returns, aborted (and the
-- error re-raised) if it raises. Returns fn's results.
function Store:batch(fn)
  self:begin()
  local res = {pcall(fn, self)}
  if not res[1] then
    self:abort()
    error(res[2], 0)
  end
  self:commit()
  return unpack(res, 2, table.maxn(res))
end

-- Number of entries in db.
function Store:count(db)
  local n = ffi.new("uint64_t[1]")
  check(C.lt_store_count(handle(self), db, n))
  return tonumber(n[0])
end

-- Iterates (key, value) over the entries of db whose key starts with prefix,
-- in key order, in a snapshot taken now. keys_only skips copying values.
function Store:iter(db, prefix, keys_only)
  local h = handle(self)
  prefix = prefix or ""
  local out = ffi.new("lt_store_iter *[1]")
  check(C.lt_store_iter_new(h, db, prefix, #prefix, out))
  local it = ffi.gc(out[0], C.lt_store_iter_free)
  local kp, kl = ffi.new("const void *[1]"), ffi.new("size_t[1]")
  local vp, vl = ffi.new("const void *[1]"), ffi.new("size_t[1]")
  local store = self   -- the iterator keeps its store alive
  return function()
    if it == nil then return nil end
    local rc = C.lt_store_iter_next(it, kp, kl, (not keys_only) and vp or nil, vl)
    if rc == C.LT_STORE_ITEM then
      return ffi.string(kp[0], kl[0]), (not keys_only) and ffi.string(vp[0], vl[0]) or nil
    end
    local msg = rc ~= 0 and lt.last_error()
    ffi.gc(it, nil)
    C.lt_store_iter_free(it)
    it = nil
    if msg then error(msg .. " (" .. store.path .. ")", 2) end
    return nil
  end
end

function Store:put_json(db, key, value)
  self:put(db, key, json.encode(value))
end

-- The decoded JSON value under key, or nil.
function Store:get_json(db, key)
  local s = self:get(db, key)
  if s == nil then return nil end
  local ok, v = pcall(json.decode, s)
  if not ok then error("store " .. self.path .. ": " .. db .. "/" .. key .. ": " .. v, 2) end
  return v
end

----------------------------------------------------------------- records

local function records_to_lua(recs, n)
  local list = {}
  for i = 0, n - 1 do
    local r = recs[i]
    local tokens, acts = {}, {}
    for j = 0, r.n - 1 do
      tokens[j + 1] = r.tokens[j]
      acts[j + 1] = r.acts[j]
    end
    local rec = {tokens = tokens, acts = acts}
    if r.extra ~= nil then
      local extra = {}
      for j = 0, r.n - 1 do extra[j + 1] = r.extra[j] end
      rec.extra = extra
    end
    local w = tonumber(r.window)
    if w >= 0 then rec.window = w end
    list[i + 1] = rec
  end
  return list
end

local function record_set_to_lua(rs)
  local t = {
    mean = rs.mean, variance = rs.variance, skewness = rs.skewness, kurtosis = rs.kurtosis,
    count = tonumber(rs.count),
    top = records_to_lua(rs.top, rs.n_top),
    random = records_to_lua(rs.random, rs.n_random),
    quantiles = {},
  }
  for b = 0, rs.n_bins - 1 do
    local bin = rs.bins[b]
    t.quantiles[b + 1] = {q_lo = bin.q_lo, q_hi = bin.q_hi, lo = bin.lo, hi = bin.hi,
                          records = records_to_lua(bin.records, bin.n_records)}
  end
  return t
end

-- The node's record set, or nil when the store has none:
-- {top = {{tokens=, acts=, extra=?, window=?}, ...} (by decreasing maximum
-- activation), random = {...}, quantiles = {{q_lo=, q_hi=, lo=, hi=,
-- records=}, ...}, mean=, variance=, skewness=, kurtosis=, count=}.
function Store:record(node)
  local h = handle(self)
  check_node(node)
  local out = ffi.new("lt_record_set *[1]")
  local rc = C.lt_store_get_record(h, node.model, node.kind, node.layer, node.index, out)
  if rc == C.LT_STORE_NOT_FOUND then return nil end
  if rc ~= 0 then fail(2) end
  local ok, t = pcall(record_set_to_lua, out[0])
  C.lt_free(out[0])
  if not ok then error(t, 2) end
  return t
end

-- Fills n C records from a Lua list; anchors keeps the arrays alive.
local function records_to_c(list, what, anchors)
  list = list or {}
  if type(list) ~= "table" then error("store: " .. what .. " must be a list of records", 4) end
  local n = #list
  local arr = ffi.new("lt_act_record[?]", math.max(n, 1))
  anchors[#anchors + 1] = arr
  for i = 1, n do
    local r = list[i]
    local tokens, acts = r.tokens, r.acts
    if type(tokens) ~= "table" or type(acts) ~= "table" or #tokens ~= #acts then
      error(string.format("store: %s record %d needs tokens and acts of equal length", what, i), 4)
    end
    local m = #tokens
    local tk = ffi.new("int32_t[?]", math.max(m, 1))
    local ac = ffi.new("float[?]", math.max(m, 1))
    for j = 1, m do
      tk[j - 1] = tokens[j]
      ac[j - 1] = acts[j]
    end
    anchors[#anchors + 1] = tk
    anchors[#anchors + 1] = ac
    local c = arr[i - 1]
    c.n, c.window, c.tokens, c.acts = m, r.window or -1, tk, ac
    if r.extra then
      if #r.extra ~= m then error(string.format("store: %s record %d: extra has the wrong length", what, i), 4) end
      local ex = ffi.new("int32_t[?]", math.max(m, 1))
      for j = 1, m do ex[j - 1] = r.extra[j] end
      anchors[#anchors + 1] = ex
      c.extra = ex
    end
  end
  return arr, n
end

local NaN = 0 / 0

-- Writes a record set in the shape Store:record returns (top need not be
-- sorted; statistics and bin bounds not given are stored as NaN, count 0).
function Store:put_record(node, rec)
  local h = handle(self)
  check_node(node)
  if type(rec) ~= "table" then error("store: put_record expects a record table", 2) end
  local anchors = {}
  local rs = ffi.new("lt_record_set")
  rs.mean, rs.variance = rec.mean or NaN, rec.variance or NaN
  rs.skewness, rs.kurtosis = rec.skewness or NaN, rec.kurtosis or NaN
  rs.count = rec.count or 0
  rs.top, rs.n_top = records_to_c(rec.top, "top", anchors)
  rs.random, rs.n_random = records_to_c(rec.random, "random", anchors)
  local qs = rec.quantiles or {}
  local bins = ffi.new("lt_quantile_bin[?]", math.max(#qs, 1))
  for b, q in ipairs(qs) do
    local c = bins[b - 1]
    c.q_lo, c.q_hi, c.lo, c.hi = q.q_lo or NaN, q.q_hi or NaN, q.lo or NaN, q.hi or NaN
    c.records, c.n_records = records_to_c(q.records, "quantile bin " .. b, anchors)
  end
  rs.bins, rs.n_bins = bins, #qs
  check(C.lt_store_put_record(h, node.model, node.kind, node.layer, node.index, rs))
end

-- Iterates the nodes with records, in key order (model, kind, layer,
-- index), yielding {model=, kind=, layer=, index=}; q may restrict model,
-- kind and layer.
function Store:nodes(q)
  q = q or {}
  for _, f in ipairs{"model", "kind"} do
    if q[f] ~= nil and (type(q[f]) ~= "string" or q[f]:find("/", 1, true)) then
      error("store: nodes{" .. f .. "=} must be a name without '/'", 2)
    end
  end
  local prefix = "rec/"
  if q.model then
    prefix = prefix .. q.model .. "/"
    if q.kind then
      prefix = prefix .. q.kind .. "/"
      if q.layer then prefix = prefix .. string.format("%04d/", q.layer) end
    end
  end
  local next_key = self:iter("records", prefix, true)
  return function()
    while true do
      local k = next_key()
      if k == nil then return nil end
      local model, kind, layer, index = k:match("^rec/([^/]+)/([^/]+)/(%d+)/(%d+)$")
      if model and (q.kind == nil or kind == q.kind) and (q.layer == nil or tonumber(layer) == q.layer) then
        return {model = model, kind = kind, layer = tonumber(layer), index = tonumber(index)}
      end
    end
  end
end

------------------------------------------------ explanations and scores

local VALUE_VERSION = 1

local function check_id(v, what)
  if type(v) ~= "string" or v == "" then error("store: " .. what .. " must be a non-empty string", 3) end
end

local function decode_versioned(self, key, v)
  local ok, t = pcall(json.decode, v)
  if not ok then error("store " .. self.path .. ": " .. key .. ": " .. t, 3) end
  if type(t) ~= "table" or type(t.v) ~= "number" then
    error("store " .. self.path .. ": " .. key .. ": not a lantern value", 3)
  end
  if t.v > VALUE_VERSION then
    error(string.format("store %s: %s: value format %d is newer than this lantern (%d)",
                        self.path, key, t.v, VALUE_VERSION), 3)
  end
  return t
end

-- Stores an explanation of a node: e = {model=, kind=, layer=, index=,
-- explainer= (id of the explainer: model and prompt version), text=,
-- meta= (optional table)}. One explanation per node and explainer.
function Store:put_explanation(e)
  check_node(e)
  check_id(e.explainer, "explainer")
  if type(e.text) ~= "string" then error("store: explanation text must be a string", 2) end
  local key = M.node_key("expl", e) .. "/" .. escape_id(e.explainer)
  self:put("explanations", key,
           json.encode{v = VALUE_VERSION, explainer = e.explainer, text = e.text, meta = e.meta})
end

-- The node's explanations, ordered by explainer id: {{explainer=, text=,
-- meta=}, ...} (empty when none).
function Store:explanations(node)
  local prefix = M.node_key("expl", node) .. "/"
  local list = {}
  for k, v in self:iter("explanations", prefix) do
    local t = decode_versioned(self, k, v)
    list[#list + 1] = {explainer = t.explainer, text = t.text, meta = t.meta}
  end
  return list
end

-- Stores the scores of an explanation by a simulator: s = {model=, kind=,
-- layer=, index=, explainer=, simulator=, scores = {ev_correlation_score=,
-- ...}, meta=}. An undefined score is json.null (or absent), never NaN.
function Store:put_score(s)
  check_node(s)
  check_id(s.explainer, "explainer")
  check_id(s.simulator, "simulator")
  if type(s.scores) ~= "table" then error("store: put_score needs a scores table", 2) end
  local key = M.node_key("score", s) .. "/" .. escape_id(s.explainer) .. "/" .. escape_id(s.simulator)
  local ok, text = pcall(json.encode, {v = VALUE_VERSION, explainer = s.explainer, simulator = s.simulator,
                                       scores = s.scores, meta = s.meta})
  if not ok then error("store: " .. key .. ": " .. text, 2) end
  self:put("scores", key, text)
end

-- The node's scores, ordered by explainer then simulator id: {{explainer=,
-- simulator=, scores=, meta=}, ...}.
function Store:scores(node)
  local prefix = M.node_key("score", node) .. "/"
  local list = {}
  for k, v in self:iter("scores", prefix) do
    local t = decode_versioned(self, k, v)
    list[#list + 1] = {explainer = t.explainer, simulator = t.simulator, scores = t.scores, meta = t.meta}
  end
  return list
end

return M
