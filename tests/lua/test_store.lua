-- test_store.lua: lantern.store from Lua: records, nodes, explanations,
-- scores, JSON and errors, on a store in a temporary directory.
local check = require("check")
local store = require("lantern.store")
local json = store.json

local tmp = os.tmpname()          -- a file; the stores go in <tmp>.d/
os.remove(tmp)
local root = tmp .. ".d"

local function path(name) return root .. "/" .. name end

local function with_store(name, fn)
  local st = store.open(path(name))
  local ok, err = pcall(fn, st)
  st:close()
  if not ok then error(err, 0) end
end

local function sample_record(seed)
  local function rec(n, base, peak)
    local r = {tokens = {}, acts = {}, window = base}
    for i = 1, n do
      r.tokens[i] = base * 100 + i
      r.acts[i] = ((i * 7 + base) % 5) * 0.5 - 0.5
    end
    if peak then r.acts[peak] = peak * 1.25 end
    return r
  end
  return {
    mean = 0.25 + seed, variance = 1.5, skewness = -0.5, kurtosis = 3.75, count = 123456,
    top = {rec(8, 1, 2), rec(8, 2, 7), rec(8, 3, 5)},        -- maxima 2.5, 8.75, 6.25
    random = {rec(5, 4), rec(6, 5)},
    quantiles = {
      {q_lo = 0.5, q_hi = 0.9, lo = 0.0, hi = 0.5, records = {rec(4, 6)}},
      {q_lo = 0.9, q_hi = 0.99, lo = 0.5, hi = 1.0, records = {}},
    },
  }
end

local function same_list(a, b, what)
  check.eq(#a, #b, what .. " length")
  for i = 1, #a do check.eq(a[i], b[i], what .. "[" .. i .. "]") end
end

local tests = {}

function tests.record_round_trip()
  with_store("records", function(st)
    local node = {model = "toy", kind = "mlp_neuron", layer = 1, index = 42}
    check.eq(st:record(node), nil, "absent before")
    local rec = sample_record(0)
    rec.top[3].extra = {0, 0, 1, 2, 3, 3, 4, 5}
    st:put_record(node, rec)
    local got = st:record(node)
    check.truthy(got, "record present")
    check.eq(got.mean, 0.25, "mean")
    check.eq(got.variance, 1.5, "variance")
    check.eq(got.skewness, -0.5, "skewness")
    check.eq(got.kurtosis, 3.75, "kurtosis")
    check.eq(got.count, 123456, "count")
    check.eq(#got.top, 3, "top count")
    -- Decreasing maximum activation: given order 2, 7, 5 -> records 2, 3, 1.
    local order = {rec.top[2], rec.top[3], rec.top[1]}
    for i, want in ipairs(order) do
      same_list(got.top[i].tokens, want.tokens, "top " .. i .. " tokens")
      same_list(got.top[i].acts, want.acts, "top " .. i .. " acts")   -- values are exact in float32
      check.eq(got.top[i].window, want.window, "top " .. i .. " window")
    end
    same_list(got.top[2].extra, rec.top[3].extra, "extra")
    check.eq(got.top[1].extra, nil, "no extra")
    check.eq(#got.random, 2, "random count")
    same_list(got.random[2].tokens, rec.random[2].tokens, "random order kept")
    check.eq(#got.quantiles, 2, "bins")
    check.eq(got.quantiles[1].q_hi, 0.9, "q_hi")
    check.eq(got.quantiles[1].hi, 0.5, "hi")
    same_list(got.quantiles[1].records[1].acts, rec.quantiles[1].records[1].acts, "bin acts")
    check.eq(#got.quantiles[2].records, 0, "empty bin")
    -- Missing statistics are NaN; an unknown window is absent.
    st:put_record({model = "toy", kind = "mlp_neuron", layer = 1, index = 43},
                  {top = {{tokens = {1, 2}, acts = {0.5, 1.0}}}})
    local bare = st:record{model = "toy", kind = "mlp_neuron", layer = 1, index = 43}
    check.truthy(bare.mean ~= bare.mean, "NaN mean")
    check.eq(bare.top[1].window, nil, "no window")
    check.eq(#bare.random, 0, "no random records")
  end)
end

function tests.nodes_iteration()
  with_store("nodes", function(st)
    local rec = sample_record(0)
    st:batch(function()
      for _, n in ipairs{
        {"toy", "mlp_neuron", 0, 10}, {"toy", "mlp_neuron", 0, 9}, {"toy", "mlp_neuron", 10, 0},
        {"toy", "mlp_neuron", 2, 1}, {"toy", "attn_head", 1, 3}, {"toy2", "mlp_neuron", 0, 0},
      } do
        st:put_record({model = n[1], kind = n[2], layer = n[3], index = n[4]}, rec)
      end
    end)
    local seen = {}
    for node in st:nodes{model = "toy", kind = "mlp_neuron"} do
      seen[#seen + 1] = string.format("%d:%d", node.layer, node.index)
      check.eq(node.model, "toy", "model")
    end
    check.eq(table.concat(seen, ","), "0:9,0:10,2:1,10:0", "numeric order")
    local n = 0
    for node in st:nodes{model = "toy", kind = "mlp_neuron", layer = 0} do n = n + 1; check.eq(node.layer, 0, "layer") end
    check.eq(n, 2, "layer 0 nodes")
    n = 0
    for node in st:nodes{model = "toy", layer = 1} do n = n + 1; check.eq(node.kind, "attn_head", "kind") end
    check.eq(n, 1, "layer filter without kind")
    n = 0
    for _ in st:nodes() do n = n + 1 end
    check.eq(n, 6, "all nodes")
    n = 0
    for _ in st:nodes{model = "to"} do n = n + 1 end
    check.eq(n, 0, "model names are whole fields")
    check.eq(st:count("records"), 6, "count")
    -- Leaving a loop early is fine; the iterator is collected later.
    for _ in st:nodes() do break end
    collectgarbage()
  end)
end

function tests.explanations_and_scores()
  with_store("expl", function(st)
    local node = {model = "toy", kind = "sae_latent", layer = 3, index = 7}
    check.eq(#st:explanations(node), 0, "none yet")
    st:put_explanation{model = "toy", kind = "sae_latent", layer = 3, index = 7,
                       explainer = "openai/gpt-4o@v1", text = "the word \"the\"\nafter commas",
                       meta = {prompt = "explain-v1", tokens = {12, 40}}}
    st:put_explanation{model = "toy", kind = "sae_latent", layer = 3, index = 7,
                       explainer = "baseline:token_lookup", text = "tokens: cat, dog"}
    st:put_explanation{model = "toy", kind = "sae_latent", layer = 3, index = 70,
                       explainer = "x", text = "another node"}
    local ex = st:explanations(node)
    check.eq(#ex, 2, "two explanations")
    check.eq(ex[1].explainer, "baseline:token_lookup", "ordered by id")
    check.eq(ex[2].explainer, "openai/gpt-4o@v1", "id with '/' round trips")
    check.eq(ex[2].text, "the word \"the\"\nafter commas", "text")
    check.eq(ex[2].meta.prompt, "explain-v1", "meta")
    check.eq(ex[2].meta.tokens[2], 40, "meta array")

    st:put_score{model = "toy", kind = "sae_latent", layer = 3, index = 7,
                 explainer = "openai/gpt-4o@v1", simulator = "baseline",
                 scores = {ev_correlation_score = 0.625, rsquared = json.null, top_only = -0.125}}
    local sc = st:scores(node)
    check.eq(#sc, 1, "one score")
    check.eq(sc[1].explainer, "openai/gpt-4o@v1", "explainer")
    check.eq(sc[1].simulator, "baseline", "simulator")
    check.eq(sc[1].scores.ev_correlation_score, 0.625, "score")
    check.eq(sc[1].scores.rsquared, nil, "undefined score")
    check.raises(function()
      st:put_score{model = "toy", kind = "sae_latent", layer = 3, index = 7, explainer = "e",
                   simulator = "s", scores = {ev_correlation_score = 0 / 0}}
    end, "cannot encode NaN")
    check.eq(#st:scores(node), 1, "NaN score not written")
  end)
end

function tests.json_round_trip()
  local v = {
    s = "quote \" backslash \\ slash / tab \t nl \n cr \r bell \7 del \127 nul \0 end",
    u = "héllo ✓ 𝄞 日本",
    n = {0, -1, 1.5, -0.001, 1e300, 2^53, 123456789012, 0.1, 1 / 3},
    b = {true, false},
    nested = {a = {b = {c = {"deep"}}}},
    empty_obj = {},
    empty_arr = json.array(),
    arr_null = {1, json.null, 3},
  }
  local text = json.encode(v)
  local back = json.decode(text)
  check.eq(back.s, v.s, "escapes")
  check.eq(back.u, v.u, "unicode")
  for i, x in ipairs(v.n) do check.eq(back.n[i], x, "number " .. i) end
  check.eq(back.b[1], true, "true")
  check.eq(back.b[2], false, "false")
  check.eq(back.nested.a.b.c[1], "deep", "nested")
  check.eq(next(back.empty_obj), nil, "empty object")
  check.eq(json.encode(back.empty_arr), "[]", "empty array stays an array")
  check.eq(back.arr_null[2], json.null, "null in array")
  check.eq(back.arr_null[3], 3, "after null")
  check.eq(json.encode(back), text, "re-encoding is identical (sorted keys)")
  check.eq(json.encode{b = 1, a = {x = 2}}, '{"a":{"x":2},"b":1}', "sorted compact output")
  check.eq(json.encode("\1"), '"\\u0001"', "control characters escaped")
  -- Decoding escapes written by others.
  check.eq(json.decode('"\\u00e9\\ud834\\udd1e\\/\\b"'), "é𝄞/\b", "\\u escapes and surrogate pairs")
  check.eq(json.decode(' {"a" : [1, 2.5e-1, -0, true, null] } ').a[2], 0.25, "whitespace and exponents")
  check.eq(json.decode('"\\udc00"'), "\239\191\189", "lone surrogate becomes U+FFFD")
  -- Through the store.
  with_store("json", function(st)
    st:put_json("runs", "run/1", v)
    local got = st:get_json("runs", "run/1")
    check.eq(got.u, v.u, "stored unicode")
    check.eq(got.n[9], 1 / 3, "stored double exact")
    check.eq(st:get_json("runs", "run/2"), nil, "absent")
    st:put("runs", "bad", "{not json")
    check.raises(function() st:get_json("runs", "bad") end, "json: expected a string key")
  end)
end

function tests.json_errors()
  check.raises(function() json.encode{x = 0 / 0} end, "cannot encode NaN at $.x")
  check.raises(function() json.encode{1 / 0} end, "cannot encode infinity")
  check.raises(function() json.encode{[1] = 1, [3] = 3} end, "sparse array")
  check.raises(function() json.encode{1, x = 2} end, "mixes string and other keys")
  check.raises(function() json.encode(json.array{1, x = 2}) end, "non-index keys")
  check.raises(function() json.encode{f = print} end, "cannot encode a function")
  local t = {}
  t.self = t
  check.raises(function() json.encode(t) end, "cycle")
  for _, bad in ipairs{"", "{", "[1,]", '{"a" 1}', "tru", "01", "1.", '"abc', '"\1"', "[1] x", '"\\x"', "-"} do
    check.raises(function() json.decode(bad) end, "json:", "decode " .. bad)
  end
end

function tests.batch_and_generic()
  with_store("generic", function(st)
    st:put("llm_cache", "llm/abc", "\0binary\255")
    check.eq(st:get("llm_cache", "llm/abc"), "\0binary\255", "binary value")
    check.eq(st:get("llm_cache", "llm/zzz"), nil, "absent")
    check.raises(function()
      st:batch(function(s)
        s:put("runs", "a", "1")
        check.eq(s:get("runs", "a"), "1", "batch sees its put")
        error("boom")
      end)
    end, "boom")
    check.eq(st:get("runs", "a"), nil, "aborted batch not stored")
    check.eq(st:batch(function(s) s:put("runs", "a", "1"); return 7 end), 7, "batch result")
    check.eq(st:get("runs", "a"), "1", "committed")
    local keys = {}
    for k, v in st:iter("runs") do keys[#keys + 1] = k .. "=" .. v end
    check.eq(table.concat(keys, ","), "a=1", "iter")
    st:del("runs", "a")
    check.eq(st:get("runs", "a"), nil, "deleted")
  end)
end

function tests.errors()
  check.raises(function() store.open(path("missing"), {readonly = true}) end, "no lantern store at")
  local f = assert(io.open(path("plain.txt"), "w"))
  f:write("x")
  f:close()
  check.raises(function() store.open(path("plain.txt")) end, "not a directory")
  local st = store.open(path("err"))
  check.raises(function() store.open(path("err")) end, "already open in this process")
  check.raises(function() st:get("nope", "k") end, "unknown database 'nope'")
  check.raises(function() st:put("runs", "", "v") end, "key length 0")
  check.raises(function() st:record{model = "toy", kind = "mlp_neuron", layer = 0} end, "node.index must be an integer")
  check.raises(function() st:record{model = "a/b", kind = "mlp_neuron", layer = 0, index = 0} end, "contains '/'")
  check.raises(function() st:record{model = "toy", kind = "mlp_neuron", layer = -1, index = 0} end, "layer -1")
  check.raises(function()
    st:put_record({model = "toy", kind = "mlp_neuron", layer = 0, index = 0}, {top = {{tokens = {1}, acts = {}}}})
  end, "equal length")
  st:put("records", "rec/toy/mlp_neuron/0000/00000001", "garbage")
  check.raises(function() st:record{model = "toy", kind = "mlp_neuron", layer = 0, index = 1} end, "bad magic")
  st:put("meta", "lantern", '{"format":"lantern-store","schema_version":999}')
  local it = st:iter("runs")
  st:close()
  st:close()   -- idempotent
  check.raises(function() st:get("runs", "k") end, "is closed")
  check.raises(function() it() end, "after its store was closed")
  check.raises(function() store.open(path("err")) end, "schema version 999 is newer than this lantern (1)")
  -- Read-only stores refuse writes.
  st = store.open(path("ro"))
  st:put_record({model = "toy", kind = "mlp_neuron", layer = 1, index = 42}, sample_record(1))
  st:close()
  local ro = store.open(path("ro"), {readonly = true})
  check.raises(function() ro:put("runs", "k", "v") end, "read-only")
  check.eq(ro:record{model = "toy", kind = "mlp_neuron", layer = 1, index = 42}.mean, 1.25, "read-only read")
  ro:close()
end

function tests.zz_cleanup()
  os.execute("rm -rf '" .. root .. "'")
end

-- Before the tests: a fresh directory.
os.execute("rm -rf '" .. root .. "' && mkdir -p '" .. root .. "'")
return tests
