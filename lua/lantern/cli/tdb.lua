-- lantern tdb: the Transformer Debugger node table of one prompt (docs/tdb.md).
local args = require("lantern.cli.args")

local usage = [[
usage: lantern tdb --model DIR --prompt TEXT --target TOK --distractor TOK
                   [--tokenizer DIR] [--k 10] [--measure N] [--ablate SPECS]
                   [--trace SPEC] [--side query|key|both|value] [--json FILE]
                   [--prepend-bos]

Prints the top 5 next tokens, the logit difference D = logit(target) -
logit(distractor) at the last position and the node table (ln_final scale
detached). The measured change of the top N rows (default 10) comes from a
real zero ablation, all in one batched forward pass.
  --ablate L1/H2,L0/N17@5   ablate these nodes together and print the new D
                            (a head without @Q:K is zeroed at hook_z;
                            without @P at every position)
  --trace L0/N17@5          trace a node upstream (@Q:K for a head; default
                            last position, key = the most attended)
  --json FILE               write everything as JSON]]

local spec = {
  model = "string", prompt = "string", target = "string", distractor = "string", tokenizer = "string",
  k = "number", measure = "number", ablate = "string", trace = "string", side = "string", json = "string",
  ["prepend-bos"] = "boolean",
}

-- ------------------------------------------------------------- JSON

local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    local map = {['"'] = '\\"', ['\\'] = '\\\\', ['\n'] = '\\n', ['\t'] = '\\t', ['\r'] = '\\r'}
    return map[c] or string.format("\\u%04x", c:byte())
  end) .. '"'
end

-- A small encoder: tables with a [1] are arrays, other tables objects with
-- sorted keys; NaN and infinities become null (JSON has no such numbers);
-- cdata and functions are skipped.
local function encode(v, out)
  local t = type(v)
  if t == "nil" then out[#out + 1] = "null"
  elseif t == "boolean" then out[#out + 1] = tostring(v)
  elseif t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then out[#out + 1] = "null"
    elseif v == math.floor(v) and math.abs(v) < 2^53 then out[#out + 1] = string.format("%d", v)
    else out[#out + 1] = string.format("%.9g", v) end
  elseif t == "string" then out[#out + 1] = json_string(v)
  elseif t == "table" then
    if v[1] ~= nil or next(v) == nil then
      out[#out + 1] = "["
      for i = 1, #v do
        if i > 1 then out[#out + 1] = "," end
        encode(v[i], out)
      end
      out[#out + 1] = "]"
    else
      local keys = {}
      for k, x in pairs(v) do
        local tx = type(x)
        if type(k) == "string" and tx ~= "cdata" and tx ~= "function" and tx ~= "userdata" then keys[#keys + 1] = k end
      end
      table.sort(keys)
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = "," end
        out[#out + 1] = json_string(k) .. ":"
        encode(v[k], out)
      end
      out[#out + 1] = "}"
    end
  else out[#out + 1] = "null" end
end

local function to_json(v)
  local out = {}
  encode(v, out)
  return table.concat(out)
end

-- ----------------------------------------------------------- printing

local function show_token(s)
  return (s:gsub("\n", "\\n"):gsub("\t", "\\t"))
end

local function fmt(v)
  if v == nil then return "" end
  return string.format("%.4f", v)
end

local function print_table(t, rows)
  local head = {"name", "kind", "pos", "token", "key", "activation", "write_mag", "direct", "total", "est_change", "measured_change"}
  local lines = {head}
  for _, r in ipairs(rows) do
    lines[#lines + 1] = {
      r.name, r.kind, tostring(r.position), "'" .. show_token(t.tokens[r.position + 1] or "") .. "'",
      r.key_position and (r.key_position .. " '" .. show_token(t.tokens[r.key_position + 1] or "") .. "'") or "",
      fmt(r.activation), fmt(r.write_magnitude), fmt(r.direct_effect), fmt(r.total_effect),
      fmt(r.estimated_change), fmt(r.measured_change),
    }
  end
  local width = {}
  for _, l in ipairs(lines) do
    for i, c in ipairs(l) do width[i] = math.max(width[i] or 0, #c) end
  end
  for _, l in ipairs(lines) do
    local cells = {}
    for i, c in ipairs(l) do
      -- text columns left-aligned, numbers right-aligned
      cells[i] = i <= 5 and c .. string.rep(" ", width[i] - #c) or string.rep(" ", width[i] - #c) .. c
    end
    io.write(table.concat(cells, "  "), "\n")
  end
end

local function print_prediction(t)
  io.write("top next tokens:")
  for _, p in ipairs(t.prediction) do io.write(string.format("  '%s' %.3f", show_token(p.text), p.prob)) end
  io.write("\n")
end

-- ---------------------------------------------------------------- run

local function run(argv)
  local o = args.parse(argv, spec)
  for _, need in ipairs({"model", "prompt", "target", "distractor"}) do
    if not o[need] then error("--" .. need .. " is required\n" .. usage, 0) end
  end
  local lt = require("lantern")
  local m = lt.load(o.model, {tokenizer = o.tokenizer})
  local k = o.k or 10
  local base = {prompt = o.prompt, target = o.target, distractor = o.distractor, k = k, prepend_bos = o["prepend-bos"]}
  local t = lt.tdb.node_table(m, base)
  lt.tdb.measure(m, t, {n = o.measure or 10})
  local report = {model = m.name, prompt = o.prompt, target = o.target, distractor = o.distractor, tokens = t.tokens,
    ids = t.ids, logit_diff = t.logit_diff, prediction = t.prediction, top_logits = t.top_logits, rows = t.rows,
    position_totals = t.position_totals}
  io.write(string.format("model %s, %d tokens\n", m.name, #t.ids))
  print_prediction(t)
  io.write(string.format("logit diff D = logit('%s') - logit('%s') at the last position: %.4f\n",
    o.target, o.distractor, t.logit_diff))
  io.write("est_change = -total (first-order estimate of a zero ablation); measured_change = D(ablated) - D(clean)\n\n")
  print_table(t, t.rows)
  -- what the top row writes towards
  if t.rows[1] then
    local r = t.rows[1]
    local toks = lt.tdb.top_output_tokens(m, lt.tdb.write_vector(m, t.ids, r), 10)
    report.top_row_output_tokens = toks
    io.write(string.format("\n%s at %d%s writes towards:", r.name, r.position, r.key_position and (":" .. r.key_position) or ""))
    for _, x in ipairs(toks) do io.write(" '", show_token(x.text), "'") end
    io.write("\n")
  end

  if o.ablate then
    local nodes = {}
    for s in o.ablate:gmatch("[^,]+") do nodes[#nodes + 1] = s end
    local clean, ablated = lt.tdb.ablate(m, {prompt = o.prompt, target = o.target, distractor = o.distractor,
      nodes = nodes, prepend_bos = o["prepend-bos"]})
    io.write(string.format("\nablated %s: D = %.4f (clean %.4f, change %+.4f)\n", o.ablate, ablated, clean, ablated - clean))
    report.ablation = {nodes = nodes, clean = clean, ablated = ablated}
  end

  if o.trace then
    local node = lt.tdb.parse_node(o.trace)
    if node.kind == "attn_head" and node.key_position == nil then
      -- default key: the position the head attends to most from the query
      local T = #t.ids
      local q = node.position or -1
      if q < 0 then q = q + T end
      local _, c = m:run_with_cache(t.ids, {names = string.format("blocks.%d.attn.hook_pattern", node.layer)})
      local pat, best = c[string.format("blocks.%d.attn.hook_pattern", node.layer)], 0
      for key = 0, q do if pat:get(node.index, q, key) > pat:get(node.index, q, best) then best = key end end
      node.position, node.key_position = q, best
    end
    node.side = o.side or "both"
    local tr = lt.tdb.trace(m, {prompt = t.ids, target = o.target, distractor = o.distractor, node = node, k = k})
    local n = tr.node
    io.write(string.format("\ntrace %s at %d%s%s: metric = %.4f\n", n.name, n.position,
      n.key_position and (":" .. n.key_position) or "", n.side and (" (" .. n.side .. ")") or "", tr.value))
    print_table(t, tr.rows)
    report.trace = {node = n, value = tr.value, rows = tr.rows, position_totals = tr.position_totals}
  end

  if o.json then
    local f = assert(io.open(o.json, "wb"))
    f:write(to_json(report), "\n")
    f:close()
    io.write("\nwrote ", o.json, "\n")
  end
  return 0
end

return {summary = "Transformer Debugger node table: tdb --model DIR --prompt TEXT --target T --distractor D",
  usage = usage, run = run, to_json = to_json}
