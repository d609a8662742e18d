-- lantern show KIND L:I: a node's statistics, explanations, scores and top
-- records from the store, with the activating tokens highlighted.
local args = require("lantern.cli.args")
local ffi = require("ffi")

local usage = [[
usage: lantern show mlp L:N | attn L:H | sae L:I [options]

  --store PATH      store directory (default store/lantern.lmdb)
  --model NAME      model name in the store (default: the only one that has
                    this node)
  --top K           top records shown (default 10)
  --random K        random records shown (default 3)
  --tokenizer DIR   vocab.json + merges.txt to print tokens with (default:
                    the one recorded when the model was mined)

On a terminal, tokens get a background colour by activation strength
(activation / the largest activation shown; 256-colour ANSI). Otherwise each
token with at least 30% of that strength is written «token|activation»
(attention heads: «token|value@k», k the attended-to position).]]

pcall(ffi.cdef, "int isatty(int fd);")

local KINDS = {mlp = "mlp_neuron", attn = "attn_head", sae = "sae_latent"}
local LETTER = {mlp_neuron = "N", attn_head = "H", sae_latent = "F"}
-- Background colours from weak to strong (256-colour palette).
local RAMP = {230, 229, 228, 222, 215, 209, 203, 197}

local M = {}

-- Printable form of a token's text: control characters escaped.
local function printable(s)
  return (s:gsub("[%z\1-\31\127]", function(c)
    if c == "\n" then return "\\n" end
    if c == "\t" then return "\\t" end
    return string.format("\\x%02x", c:byte())
  end))
end

-- A function id -> token text for model `name` in st (nil: show ids).
function M.token_namer(st, name, tokdir)
  local strings = st:get_json("models", "model/" .. name .. "/tokens")
  if strings then
    return function(id) return strings[id + 1] or ("#" .. id) end
  end
  if not tokdir then
    local desc = st:get_json("models", "model/" .. name)
    tokdir = desc and desc.tokenizer
  end
  if tokdir then
    local ok, tok = pcall(require("lantern.tokenizer").load, tokdir)
    if ok then
      local cache = {}
      return function(id)
        local s = cache[id]
        if not s then
          local okd, text = pcall(tok.token_text, tok, id)
          s = okd and text or ("#" .. id)
          cache[id] = s
        end
        return s
      end
    end
  end
  return function(id) return "#" .. id end
end

-- One record as a line of text; scale is the activation of full strength.
function M.render(rec, namer, scale, color)
  local parts = {}
  for i, id in ipairs(rec.tokens) do
    local text = printable(namer(id))
    local a = rec.acts[i]
    local s = scale > 0 and math.max(a, 0) / scale or 0
    if color then
      if s >= 0.1 then
        local c = RAMP[math.min(#RAMP, math.max(1, math.floor(s * #RAMP + 0.5)))]
        text = string.format("\27[30;48;5;%dm%s\27[0m", c, text)
      end
    elseif s >= 0.3 then
      local extra = rec.extra and ("@" .. rec.extra[i]) or ""
      text = string.format("«%s|%.3g%s»", text, a, extra)
    end
    parts[#parts + 1] = text
  end
  return table.concat(parts)
end

local function record_max(rec)
  local mx = -math.huge
  for _, a in ipairs(rec.acts) do if a > mx then mx = a end end
  return mx
end

local function fmt(x)
  if x == nil or x ~= x then return "n/a" end
  return string.format("%.4g", x)
end

-- The model names in the store that hold a record of the node.
local function models_with(st, kind, layer, index)
  local names = {}
  for k in st:iter("models", "model/", true) do
    local name = k:match("^model/([^/]+)$")
    if name and st:record{model = name, kind = kind, layer = layer, index = index} then names[#names + 1] = name end
  end
  return names
end

-- Prints a node to out (a file; default io.stdout). o: store (an open
-- Store), model, kind, layer, index, top, random, tokenizer, color.
function M.show(o)
  local out = o.out or io.stdout
  local st = o.store
  local node = {model = o.model, kind = o.kind, layer = o.layer, index = o.index}
  if not node.model then
    local names = models_with(st, node.kind, node.layer, node.index)
    if #names == 0 then
      error(string.format("no model in %s has a record of %s L%d/%s%d", st.path, node.kind, node.layer,
                          LETTER[node.kind] or "#", node.index), 0)
    end
    if #names > 1 then error("several models have this node (" .. table.concat(names, ", ") .. "); choose with --model", 0) end
    node.model = names[1]
  end
  local rec = st:record(node)
  if not rec then
    error(string.format("no record of %s L%d/%s%d for model '%s' in %s", node.kind, node.layer,
                        LETTER[node.kind] or "#", node.index, node.model, st.path), 0)
  end
  local namer = M.token_namer(st, node.model, o.tokenizer)
  local w = function(...) out:write(string.format(...)) end
  w("%s L%d/%s%d (%s)\n", node.model, node.layer, LETTER[node.kind] or "#", node.index, node.kind)
  w("  mean %s  variance %s  skewness %s  kurtosis %s  over %d activations\n", fmt(rec.mean), fmt(rec.variance),
    fmt(rec.skewness), fmt(rec.kurtosis), rec.count or 0)
  if #rec.quantiles > 0 then
    local bins = {}
    for _, q in ipairs(rec.quantiles) do
      bins[#bins + 1] = string.format("[%g,%g] %s..%s (%d)", q.q_lo, q.q_hi, fmt(q.lo), fmt(q.hi), #q.records)
    end
    w("  quantile bins of window maxima: %s\n", table.concat(bins, "  "))
  end
  local scores = st:scores(node)
  for _, e in ipairs(st:explanations(node)) do
    w("  explanation (%s): %s\n", e.explainer, e.text)
    for _, s in ipairs(scores) do
      if s.explainer == e.explainer then
        local names = {}
        for k in pairs(s.scores) do names[#names + 1] = k end
        table.sort(names)
        local parts = {}
        for _, k in ipairs(names) do parts[#parts + 1] = k .. " " .. fmt(tonumber(s.scores[k])) end
        w("    scores (%s): %s\n", s.simulator, table.concat(parts, ", "))
      end
    end
  end
  local scale = 0
  for _, r in ipairs(rec.top) do scale = math.max(scale, record_max(r)) end
  local ntop = math.min(#rec.top, o.top or 10)
  w("top records (%d of %d):\n", ntop, #rec.top)
  for i = 1, ntop do
    local r = rec.top[i]
    w("  %2d. max %s%s  %s\n", i, fmt(record_max(r)), r.window and (" (window " .. r.window .. ")") or "",
      M.render(r, namer, scale, o.color))
  end
  local nrand = math.min(#rec.random, o.random or 3)
  if nrand > 0 then
    w("random records (%d of %d):\n", nrand, #rec.random)
    for i = 1, nrand do
      local r = rec.random[i]
      w("  %2d. max %s  %s\n", i, fmt(record_max(r)), M.render(r, namer, scale, o.color))
    end
  end
  return rec
end

local function run(argv)
  local o, pos = args.parse(argv, {store = "string", model = "string", top = "number", random = "number",
                                   tokenizer = "string"})
  local kind_arg, where = pos[1], pos[2]
  local kind = KINDS[kind_arg or ""]
  local layer, index = tostring(where or ""):match("^(%d+):(%d+)$")
  if not kind or not layer then error("expected KIND L:I (mlp 0:5, attn 1:3, sae 0:12)\n" .. usage, 0) end
  local store = require("lantern.store")
  local st = store.open(o.store or store.default_path(), {readonly = true})
  local ok, err = pcall(M.show, {store = st, model = o.model, kind = kind, layer = tonumber(layer),
                                 index = tonumber(index), top = o.top, random = o.random, tokenizer = o.tokenizer,
                                 color = ffi.C.isatty(1) == 1})
  st:close()
  if not ok then error(err, 0) end
  return 0
end

M.summary = "show a node's statistics, explanations and top records from the store: show mlp L:N"
M.usage = usage
M.run = run
return M
