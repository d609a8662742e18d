-- test_interp.lua: lantern.interp (rendering, prompts against golden files,
-- simulators, scores, splits, baselines) and the `explain` and `eval
-- interp` commands, with a scripted OpenAI-compatible server on 127.0.0.1
-- (tests/lua/llm_server.lua) standing in for the model.
--
-- LANTERN_UPDATE_GOLDEN=1 rewrites tests/lua/golden/*.txt from the current
-- prompts (then read the diff: the golden files are the reviewed prompts).
local F = require("lantern.ffi")
local json = require("lantern.json")
local store = require("lantern.store")
local interp = require("lantern.interp")
local render = require("lantern.interp.render")
local prompts = require("lantern.interp.prompts")
local simulate = require("lantern.interp.simulate")
local scoring = require("lantern.interp.score")
local check = require("check")

local root = F.root
local tmp = os.tmpname()
os.remove(tmp)
local scratch = tmp .. ".interp"
os.execute("mkdir -p '" .. scratch .. "'")
local tokdir = root .. "/tests/fixtures/gpt2-tokenizer"
local tok = require("lantern.tokenizer").load(tokdir)

local function id_of(word)
  local ids = tok:encode(word)
  assert(#ids == 1, word .. " is not one token")
  return ids[1]
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

------------------------------------------------------------ test server

local with_server = require("llm_test_server").new(scratch)

-- Runs `lantern ARGS`; returns stdout+stderr and the exit status.
local function lantern(argstr)
  local p = io.popen(string.format("'%s/scripts/lantern' %s 2>&1; echo \"exit=$?\"", root, argstr))
  local out = p:read("*a")
  p:close()
  local code = tonumber(out:match("exit=(%d+)%s*$"))
  return out:gsub("exit=%d+%s*$", ""), code
end

--------------------------------------------------------------- fixtures

-- A fixed pair of records with strings: sparse (3 of 18 values non-zero
-- after discretisation), with a newline, a tab, a two-byte character and
-- an invalid byte among the tokens.
local function fixed_records()
  return {
    {strs = {"The", " cat", " sat", " on", " the", " mat", ".", " It", " slept", "."},
     acts = {0, 3.2, 0.1, 0, -0.5, 0, 0, 0, 0, 0}},
    {strs = {"A", " cat", "\n", "and", " dog", "\t", "\195\169", " ran", "\255"},
     acts = {0, 2.4, 0, 0, 0.32, 0, 0, 0, 0}},
  }
end

local function messages_text(p)
  if type(p) == "string" then return p end
  local parts = {}
  for _, m in ipairs(p) do parts[#parts + 1] = "=== " .. m.role .. "\n" .. m.content .. "\n" end
  return table.concat(parts)
end

local function same_as_golden(name, text)
  local path = root .. "/tests/lua/golden/" .. name .. ".txt"
  if os.getenv("LANTERN_UPDATE_GOLDEN") == "1" then write(path, text) end
  local want = read(path)
  check.truthy(want, "golden file " .. path .. " missing (LANTERN_UPDATE_GOLDEN=1 writes it)")
  if want ~= text then
    local i = 1
    while want:sub(i, i) == text:sub(i, i) do i = i + 1 end
    error(string.format("%s differs from the golden file at byte %d:\n  golden: %q\n  now:    %q",
                        name, i, want:sub(math.max(1, i - 30), i + 30), text:sub(math.max(1, i - 30), i + 30)), 2)
  end
end

local tests = {}

--------------------------------------------------------------- rendering

function tests.discretisation_follows_the_reference()
  -- floor(10 * max(a, 0) / max_activation), capped at 10.
  local v = render.discretize({-1, 0, 0.05, 0.099, 0.1, 0.55, 0.999, 1, 1.5}, 1)
  local want = {0, 0, 0, 0, 1, 5, 9, 10, 10}
  for i = 1, #want do check.eq(v[i], want[i], "value " .. i) end
  check.eq(render.discretize({1, 2}, 0)[2], 0, "max <= 0: zeros")
  check.eq(render.discretize({3}, -1)[1], 0, "negative max: zeros")
  check.eq(render.max_activation{{acts = {-3, -1}}, {acts = {0.5, 2}}}, 2, "max over records")
  check.eq(render.max_activation{{acts = {-3, -1}}}, 0, "max of negatives is 0")
end

function tests.record_format()
  local recs = {{strs = {"a", " b", "c", "d", "e"}, acts = {0, 1, 2, 3, 4}}}
  local text, info = render.records(recs)
  check.eq(text, "<start>\na\t0\n b\t2\nc\t5\nd\t7\ne\t10\n<end>\n", "dense record")
  check.eq(info.repeated, false, "dense: no repeat")
  check.eq(render.records(recs, {hide = true}), "<start>\na\tunknown\n b\tunknown\nc\tunknown\nd\tunknown\ne\tunknown\n<end>\n",
           "hidden values")
  -- Exactly 20% non-zero is not "fewer than 20%": no repeat; below it, a repeat.
  local five = {{strs = {"a", "b", "c", "d", "e"}, acts = {0, 0, 0, 0, 1}}}
  check.eq(select(2, render.records(five)).repeated, false, "20%: no repeat")
  local six = {{strs = {"a", "b", "c", "d", "e", "f"}, acts = {0, 0, 0, 0, 1, 0}}}
  check.eq(render.records(six, {sparse_note = "NOTE"}),
           "<start>\na\t0\nb\t0\nc\t0\nd\t0\ne\t10\nf\t0\n<end>\n\nNOTE\n<start>\ne\t10\n<end>\n", "sparse repeat")
  -- Token ids through token_str, and escapes.
  local ids = {{tokens = {7, 8}, acts = {1, 0}}}
  check.eq(render.records(ids, {token_str = function(i) return i == 7 and "x\ty" or "\n" end}),
           "<start>\nx\\ty\t10\n\\n\t0\n<end>\n", "ids and escapes")
  -- Without a template's note, the default one.
  check.truthy(render.records({{strs = {"a", "b", "c", "d", "e", "f"}, acts = {1, 0, 0, 0, 0, 0}}})
               :find("\n" .. render.DEFAULT_SPARSE_NOTE .. "\n<start>\na\t10\n<end>\n$"), "default note")
  check.eq(render.records({{tokens = {5}, acts = {1}}}), "<start>\n[5]\t10\n<end>\n", "no tokenizer: [id]")
  check.eq(render.valid_utf8("a\255b\195\169\237\160\128"), "a\239\191\189b\195\169\239\191\189\239\191\189\239\191\189",
           "invalid UTF-8 replaced")
end

------------------------------------------------------------------ prompts

function tests.golden_prompts()
  local recs = fixed_records()
  local msgs, info = prompts.explain(recs)
  check.eq(info.template, "explain", "template id")
  check.eq(info.template_version, 1, "template version")
  check.eq(info.n_records, 2, "records shown")
  check.eq(info.repeated, true, "sparse records repeated")
  check.eq(msgs[1].role, "system", "first message")
  same_as_golden("explain-v1", messages_text(msgs))
  for _, mode in ipairs{"json", "chat", "all"} do
    local p, pinfo = prompts.simulate(mode, "the word cat", recs[1])
    check.eq(pinfo.template, "simulate-" .. mode, "simulator template")
    same_as_golden("simulate-" .. mode .. "-v1", messages_text(p))
  end
end

function tests.prompts_are_trimmed_to_the_budget()
  local recs = {}
  for i = 1, 8 do
    local r = {strs = {}, acts = {}}
    for j = 1, 40 do r.strs[j] = " word" .. j; r.acts[j] = (j == i) and 9 - i or 0 end
    recs[i] = r
  end
  local full = prompts.size(prompts.explain(recs, {budget = 1e9}))
  local _, info = prompts.explain(recs, {budget = full - 1})
  check.eq(info.n_records, 7, "the weakest record is dropped first")
  check.truthy(info.trimmed, "marked trimmed")
  check.truthy(info.prompt_tokens <= full - 1, "fits")
  -- A token counter of our own: one token per line.
  local per_line = function(s) return select(2, s:gsub("\n", "")) + 1 end
  local msgs, info2 = prompts.explain(recs, {budget = 180, count_tokens = per_line})
  check.truthy(info2.prompt_tokens <= 180 and prompts.size(msgs, {count_tokens = per_line}) == info2.prompt_tokens,
               "custom counter used")
  -- One record longer than the budget: cut around its peak.
  local one = prompts.size(prompts.explain({recs[3]}, {budget = 1e9, count_tokens = per_line}), {count_tokens = per_line})
  local m3, info3 = prompts.explain({recs[3]}, {budget = one - 5, count_tokens = per_line})
  check.eq(info3.n_records, 1, "one record")
  check.truthy(info3.trimmed, "cut")
  check.truthy(m3[#m3].content:find(" word3\t10", 1, true), "the peak survives the cut")
  check.truthy(not m3[#m3].content:find(" word40\t", 1, true), "the far end is cut")
  check.raises(function() prompts.explain(recs, {budget = 10}) end, "over the budget", "hopeless budget")
  check.raises(function() prompts.simulate("json", "x", recs[1], {budget = 10}) end, "over the budget", "simulator budget")
end

function tests.template_parsing()
  local dir = scratch .. "/templates"
  os.execute("mkdir -p '" .. dir .. "'")
  write(dir .. "/t.txt", "# a comment\n# id: t\n# version: 3\n# api: chat\n=== system\nS {{x}}\n\n=== user\nU\n")
  local t = prompts.template("t", dir)
  check.eq(t.version, 3, "version")
  local m = prompts.build(t, {x = "X"})
  check.eq(m[1].content, "S X\n", "a blank line keeps a final newline")
  check.eq(m[2].content, "U", "the file's final newline does not count")
  check.raises(function() prompts.build(t, {}) end, "no value for {{x}}", "missing placeholder")
  write(dir .. "/bad.txt", "# id: bad\n=== user\nU\n")
  check.raises(function() prompts.template("bad", dir) end, "header needs", "incomplete header")
end

--------------------------------------------------------------- simulators

local function lp(p) return math.log(p) end

function tests.expected_value_from_logprobs()
  local ev, info = simulate.expected_value({["0"] = lp(0.5), ["1"] = lp(0.25), [" 2"] = lp(0.125), x = lp(0.125)})
  check.near(ev, 0.5 / 0.875, 1e-12, "renormalised over digits")
  check.near(info.mass, 1, 1e-12, "mass")
  check.near(info.digits, 0.875, 1e-12, "digit mass")
  check.near(simulate.expected_value({["10"] = lp(0.6), ["9"] = lp(0.2), hello = lp(0.2)}), 9.75, 1e-12, "10 is a value")
  check.near(simulate.expected_value({{token = "3", logprob = lp(0.5)}, {token = " 3", logprob = lp(0.25)},
                                      {token = "5", logprob = lp(0.25)}}), 3.5, 1e-12, "list form, spaces merged")
  check.eq(simulate.expected_value({a = lp(1)}), 0, "no digits: 0")
  check.eq(simulate.expected_value({["11"] = lp(1)}), 0, "11 is not a value")
end

function tests.json_answers_and_misalignment()
  local v = simulate.parse_json("Sure: [0, 3, 10]", 3)
  check.eq(v[2], 3, "parsed")
  check.eq(simulate.parse_json("[0, 3]", 3), nil, "too short")
  check.eq(simulate.parse_json("[0, 3.5, 1]", 3), nil, "not an integer")
  check.eq(simulate.parse_json("[0, 11, 1]", 3), nil, "out of range")
  check.eq(simulate.parse_json("no array", 3), nil, "no array")
end

-- Splits a prompt into tokens the way a server might: tabs and newlines
-- alone, other text in runs.
local function split_tokens(p)
  local toks, i = {}, 1
  while i <= #p do
    local c = p:sub(i, i)
    if c == "\t" or c == "\n" then
      toks[#toks + 1] = c
      i = i + 1
    else
      local j = p:find("[\t\n]", i) or #p + 1
      toks[#toks + 1] = p:sub(i, j - 1)
      i = j
    end
  end
  return toks
end

function tests.all_at_once_parsing()
  local prompt = "<start>\nx\t3\n<end>\n<start>\n cat\tunknown\n dog\tunknown\n<end>\n"
  local toks = split_tokens(prompt)
  local top = {json.null}
  for k = 2, #toks do
    if toks[k] == "unknown" then
      top[k] = toks[k - 2] == " cat" and {["10"] = lp(0.5), ["0"] = lp(0.5)} or {["0"] = lp(0.9), ["1"] = lp(0.1)}
    else
      top[k] = {["\n"] = lp(0.9)}
    end
  end
  local data = {choices = {{logprobs = {tokens = toks, top_logprobs = top}}}}
  local v = simulate.parse_all(data, 2)
  check.near(v[1], 5, 1e-12, "cat")
  check.near(v[2], 0.1, 1e-12, "dog")
  check.eq(simulate.parse_all(data, 3), nil, "count mismatch")
  -- "\tunknown" as one token also counts.
  local merged = {"<start>", "\n", "a", "\tunknown", "\n", "<end>"}
  local v2 = simulate.parse_all({choices = {{logprobs = {tokens = merged,
    top_logprobs = {json.null, {}, {}, {["\t7"] = lp(1)}, {}, {}}}}}}, 1)
  check.near(v2[1], 7, 1e-12, "merged tab and unknown")
  check.eq(simulate.parse_all({choices = {{text = "x"}}}, 1), nil, "no logprobs")
end

-- A record set whose top records are in decreasing order of maximum.
local function tagged_set(n_top, n_random)
  local rs = {top = {}, random = {}}
  for i = 1, n_top do rs.top[i] = {tokens = {i}, acts = {100 - i}, tag = "t" .. (i - 1)} end
  for i = 1, n_random do rs.random[i] = {tokens = {i}, acts = {0}, tag = "r" .. (i - 1)} end
  return rs
end

local function tags(list)
  local t = {}
  for i, r in ipairs(list) do t[i] = r.tag end
  return table.concat(t, ",")
end

function tests.splits_follow_the_reference()
  local sp = interp.split(tagged_set(10, 7))
  check.eq(tags(sp.top.train), "t0,t4,t8", "train")
  check.eq(tags(sp.top.calibration), "t1,t5,t9", "calibration")
  check.eq(tags(sp.top.valid), "t2,t6", "valid")
  check.eq(tags(sp.top.test), "t3,t7", "test")
  check.eq(tags(sp.random.calibration), "r0,r3,r6", "random calibration")
  check.eq(tags(sp.random.valid), "r1,r4", "random valid")
  check.eq(tags(sp.random.test), "r2,r5", "random test")
  local recs, groups, index = interp.scoring_records(sp)
  check.eq(tags(recs), "t2,t6,r1,r4", "valid top and random in equal numbers")
  check.eq(table.concat(groups, ","), "top,top,random,random", "groups")
  check.eq(table.concat(index, ","), "2,6,1,4", "indices")
  local recs2 = interp.scoring_records(interp.split(tagged_set(40, 4)), 5)
  check.eq(tags(recs2), "t2,r1", "equal numbers: limited by the one valid random record")
  check.eq(#interp.scoring_records(interp.split(tagged_set(40, 30)), 5), 10, "5 + 5")
end

------------------------------------------------------------------- scores

function tests.scores_against_hand_computed_values()
  -- t = 0 1 | 2 3, p = 0 2 | 2 2 (two records, top then random)
  local s = interp.score({{0, 1}, {2, 3}}, {{0, 2}, {2, 2}}, {groups = {"top", "random"}})
  -- means 1.5 and 1.5; sxy = 3, sxx = 5, syy = 3
  check.near(s.ev_correlation_score, 3 / math.sqrt(15), 1e-12, "pooled correlation")
  check.near(s.rsquared_score, 1 - 2 / 14, 1e-12, "r-squared, not centred")
  check.near(s.absolute_dev_explained_score, 1 - 2 / 6, 1e-12, "absolute deviation explained")
  check.near(s.top_only_score, 1, 1e-12, "top only")
  check.eq(s.random_only_score, interp.undefined, "constant prediction: undefined")
  check.eq(s.n_tokens, 4, "tokens")
  -- Pooled, not averaged per record: per-record correlations here are 1 and -1.
  local pooled = interp.score({{0, 1}, {0, 1}}, {{0, 1}, {1, 0}})
  check.near(pooled.ev_correlation_score, 0, 1e-12, "pooled over records")
  local const = interp.score({{0, 0, 0}}, {{1, 2, 3}})
  check.eq(const.ev_correlation_score, interp.undefined, "constant truth")
  check.eq(const.rsquared_score, interp.undefined, "zero denominator")
  check.eq(const.absolute_dev_explained_score, interp.undefined, "zero denominator")
  check.eq(scoring.correlation({0.1, 0.1, 0.1}, {1, 2, 3}), interp.undefined, "constant 0.1s")
  check.near(scoring.correlation({1, 2, 3}, {-2, -4, -6}), -1, 1e-12, "anticorrelated")
  check.raises(function() interp.score({{1, 2}}, {{1}}) end, "record 1", "length mismatch")
  -- Undefined scores go into the store as null, never NaN.
  local st = store.open(scratch .. "/scores")
  st:put_score{model = "m", kind = "mlp_neuron", layer = 0, index = 0, explainer = "e", simulator = "s", scores = const}
  local back = st:scores{model = "m", kind = "mlp_neuron", layer = 0, index = 0}[1].scores
  check.eq(back.ev_correlation_score, nil, "null read back as absent")
  check.eq(back.n_tokens, 3, "other fields kept")
  st:close()
end

---------------------------------------------------------------- baselines

function tests.baseline_lookup_and_ngram()
  local train = {{tokens = {1, 2, 3, 2}, acts = {0, 4, 0, 2}}, {tokens = {2, 1}, acts = {3, 1}}}
  local e = interp.explain(train, {token_str = function(i) return ({" a", " b", " c"})[i] end})
  check.eq(e.explainer, "baseline/token-lookup@v1", "id")
  check.eq(e.text, 'the tokens " b", " a"', "tokens by mean activation")   -- b: 3, a: 0.5, c: 0
  local sim = interp.simulate(e, {{tokens = {2, 3, 9, 1}, acts = {0, 0, 0, 0}}})
  check.eq(table.concat(sim.expected[1], ","), "3,0,0,0.5", "means; unseen tokens 0")
  check.eq(sim.simulator, "baseline/token-lookup@v1", "simulator id")
  local g = interp.explain(train, {explainer = "ngram"})
  check.eq(g.explainer, "baseline/ngram2@v1", "ngram id")
  local gs = interp.simulate(g, {{tokens = {1, 2, 2, 1, 3}, acts = {0, 0, 0, 0, 0}}}, {simulator = "ngram"})
  -- (1,2) -> 4; (2,2) unseen -> token 2 mean 3; (2,1) -> 1; (1,3) unseen -> token 3 mean 0
  check.eq(table.concat(gs.expected[1], ","), "0.5,4,3,1,0", "bigrams with backoff")
end

----------------------------------------------- stores for the CLI tests

local WORDS = {" cat", " dog", " bird", " fish"}
local FILL = {" the", " a", " very", " small"}

-- Node k of layer 0 fires (5.0) on WORDS[k] only. Top records hold the
-- word; random records hold it in every other record.
local function detector_set(word)
  local w, fill = id_of(word), {}
  for i, f in ipairs(FILL) do fill[i] = id_of(f) end
  local rs = {top = {}, random = {}}
  for i = 1, 20 do
    local r = {tokens = {}, acts = {}}
    for j = 1, 8 do
      local hit = (j + i) % 4 == 0
      r.tokens[j] = hit and w or fill[(i + j) % #fill + 1]
      r.acts[j] = hit and 5 or 0
    end
    rs.top[i] = r
  end
  for i = 1, 9 do
    local r = {tokens = {}, acts = {}}
    for j = 1, 8 do
      local hit = i % 2 == 0 and j == 3
      r.tokens[j] = hit and w or fill[(i * j) % #fill + 1]
      r.acts[j] = hit and 5 or 0
    end
    rs.random[i] = r
  end
  return rs
end

local function make_store(path)
  local st = store.open(path)
  st:batch(function()
    for k, word in ipairs(WORDS) do
      st:put_record({model = "tiny", kind = "mlp_neuron", layer = 0, index = k - 1}, detector_set(word))
    end
  end)
  st:close()
end

function tests.cli_baseline_end_to_end()
  local path = scratch .. "/baseline-store"
  make_store(path)
  local out, code = lantern(string.format("explain --store '%s' --model tiny --nodes mlp:0:0-1 --tokenizer '%s'",
                                          path, tokdir))
  check.eq(code, 0, "exit status\n" .. out)
  check.truthy(out:find("2 of 2 nodes scored", 1, true), out)
  local st = store.open(path)
  local ok, err = pcall(function()
    local node = {model = "tiny", kind = "mlp_neuron", layer = 0, index = 0}
    local ex = st:explanations(node)
    check.eq(#ex, 1, "one explanation")
    check.eq(ex[1].explainer, "baseline/token-lookup@v1", "explainer id")
    check.eq(ex[1].text, 'the tokens " cat"', "the detector's token")
    local sc = st:scores(node)
    check.eq(#sc, 1, "one score")
    check.near(sc[1].scores.ev_correlation_score, 1, 1e-9, "a clean detector scores 1")
    check.near(sc[1].scores.rsquared_score, 1, 1e-9, "r-squared")
    check.near(sc[1].scores.top_only_score, 1, 1e-9, "top only")
    check.near(sc[1].scores.random_only_score, 1, 1e-9, "random only")
    check.eq(#sc[1].meta.records, 6, "3 valid top + 3 valid random simulated")
    check.eq(sc[1].meta.records[1].group, "top", "record group")
    check.eq(#sc[1].meta.records[1].expected, 8, "expected values stored")
  end)
  st:close()
  if not ok then error(err, 0) end
end

-- The simulator of the scripted server (JSON mode): 10 on " cat" lines of
-- the last message, 0 elsewhere; a record with " very" first gets one value
-- too many (misaligned).
local SIM_JSON = [[
function(text, d)
  local last = d.messages[#d.messages].content
  local vals, first = {}, nil
  for line in last:gmatch("[^\n]+") do
    local tokn = line:match("^(.*)\tunknown$")
    if tokn then
      first = first or tokn
      vals[#vals + 1] = tokn == " cat" and 10 or 0
    end
  end
  if first == " very" then vals[#vals + 1] = 0 end
  local content = json.encode(vals)
  return json.encode{choices = {{message = {role = "assistant", content = content}}}}
end]]

local function chat_reply(content)
  return string.format("%q", json.encode{choices = {{message = {role = "assistant", content = content}}}})
end

function tests.cli_with_a_model_errors_per_node_cache_and_offline()
  local path = scratch .. "/llm-store"
  make_store(path)
  -- --concurrency 1: the server answers one connection at a time, so a
  -- request queued behind the stalled one would time out too.
  with_server([[return {
    {contains = [=[ dog\t]=], body = "{ not json"},
    {contains = [=[ bird\t]=], action = "truncate", cut = 20, body = ]] .. chat_reply("never whole") .. [[},
    {contains = [=[ fish\t]=], action = "stall"},
    {contains = "Answer with the phrase alone", body = ]] .. chat_reply('"the word cat."') .. [[},
    {contains = "Reply with a JSON array", body = ]] .. SIM_JSON .. [[},
  }]], function(base, log)
    local cmd = string.format("explain --store '%s' --model tiny --nodes mlp:0:0-3 --explainer test-model " ..
                              "--base-url %s --tokenizer '%s' --timeout 1 --retries 0 --concurrency 1", path, base, tokdir)
    local out, code = lantern(cmd)
    check.eq(code, 1, "some nodes failed\n" .. out)
    check.truthy(out:find("1 of 4 nodes scored, 3 failed", 1, true), out)
    check.truthy(out:find("malformed JSON", 1, true), "malformed reported\n" .. out)
    check.truthy(out:find("truncated", 1, true), "truncated reported\n" .. out)
    check.truthy(out:find("timed out", 1, true), "timeout reported\n" .. out)
    local sent = #log()

    local st = store.open(path)
    local ok, err = pcall(function()
      local node = {model = "tiny", kind = "mlp_neuron", layer = 0, index = 0}
      local ex = st:explanations(node)
      check.eq(#ex, 1, "explanation stored")
      check.eq(ex[1].explainer, "test-model@explain-v1", "explainer id")
      check.eq(ex[1].text, "the word cat", "quotes and period removed")
      check.eq(ex[1].meta.template, "explain", "template recorded")
      check.eq(ex[1].meta.template_version, 1, "template version recorded")
      local sc = st:scores(node)
      check.eq(sc[1].simulator, "test-model@simulate-json-v1", "simulator id")
      check.eq(sc[1].meta.simulation.template, "simulate-json", "simulator template recorded")
      -- Of the records scored (valid top 2, 6, 10; valid random 1, 4, 7),
      -- random record 1 alone starts with " very": it comes back
      -- misaligned, is predicted as all zeros and counted.
      check.eq(sc[1].meta.simulation.misaligned, 1, "misaligned records counted")
      check.truthy(type(sc[1].scores.ev_correlation_score) == "number", "a score")
      for k = 1, 3 do
        check.eq(#st:scores{model = "tiny", kind = "mlp_neuron", layer = 0, index = k}, 0, "no score for failed node " .. k)
      end
      local runs = {}
      for key, v in st:iter("runs", "run/explain-") do runs[#runs + 1] = json.decode(v) end
      check.eq(#runs, 1, "one run entry")
      check.eq(#runs[1].errors, 3, "three node errors recorded")
      check.eq(runs[1].errors[1].node, "mlp_neuron/0/1", "error node")
      check.eq(runs[1].errors[1].stage, "explain", "error stage")
    end)
    st:close()
    if not ok then error(err, 0) end

    -- Offline: node 0 comes from the cache, the others fail, nothing is sent.
    local out2, code2 = lantern(cmd .. " --offline")
    check.eq(code2, 1, "offline run status\n" .. out2)
    check.truthy(out2:find("1 of 4 nodes scored", 1, true), out2)
    check.truthy(out2:find("no cached response", 1, true), out2)
    check.eq(#log(), sent, "offline mode sent nothing")

    -- A repeat online: node 0 again without network; the others are asked.
    local out3 = lantern(cmd)
    check.truthy(out3:find("1 of 4 nodes scored", 1, true), out3)
    local again = 0
    for i = sent + 1, #log() do
      if log()[i].body:find("cat\\t", 1, true) then again = again + 1 end
    end
    check.eq(again, 0, "cached requests not sent again")
  end)

  -- Nobody listening: every uncached node fails, the run still ends.
  local dead
  with_server("return {}", function(base) dead = base end)
  local out4, code4 = lantern(string.format("explain --store '%s' --model tiny --nodes mlp:0:0-3 --explainer test-model " ..
                                            "--base-url %s --tokenizer '%s' --timeout 1 --retries 0", path, dead, tokdir))
  check.eq(code4, 1, "refused run status")
  check.truthy(out4:find("cannot connect", 1, true), out4)
  check.truthy(out4:find("1 of 4 nodes scored", 1, true), "the cached node still scores\n" .. out4)
end

-- Completions with echo and logprobs: 5 on " cat" (half 10, half 0), 0.1 elsewhere.
local SIM_ALL = [[
function(text, d)
  local p = d.prompt
  local toks, i = {}, 1
  while i <= #p do
    local c = p:sub(i, i)
    if c == "\t" or c == "\n" then toks[#toks + 1] = c; i = i + 1
    else local j = p:find("[\t\n]", i) or #p + 1; toks[#toks + 1] = p:sub(i, j - 1); i = j end
  end
  local top = {json.null}
  for k = 2, #toks do
    if toks[k] == "unknown" then
      top[k] = toks[k - 2] == " cat" and {["10"] = math.log(0.5), ["0"] = math.log(0.5)}
               or {["0"] = math.log(0.9), ["1"] = math.log(0.1)}
    else
      top[k] = {x = -1}
    end
  end
  return json.encode{choices = {{text = p, logprobs = {tokens = toks, top_logprobs = top}}}}
end]]

-- Chat with top logprobs: copies the lines with a digit; 5 alternatives
-- at most (the cap), 3 for non-cat tokens, holding 90%.
local SIM_CHAT = [[
function(text, d)
  local last = d.messages[#d.messages].content
  local content, out = {}, ""
  local function add(t, alts) content[#content + 1] = {token = t, logprob = 0, top_logprobs = alts or {}}; out = out .. t end
  for line in last:gmatch("[^\n]+") do
    local tokn = line:match("^(.*)\tunknown$")
    if tokn then
      add(tokn); add("\t")
      if tokn == " cat" then
        add("8", {{token = "8", logprob = math.log(0.5)}, {token = "9", logprob = math.log(0.3)},
                  {token = "7", logprob = math.log(0.1)}, {token = "x", logprob = math.log(0.05)},
                  {token = "y", logprob = math.log(0.05)}})
      else
        add("0", {{token = "0", logprob = math.log(0.6)}, {token = "1", logprob = math.log(0.2)},
                  {token = "2", logprob = math.log(0.1)}})
      end
      add("\n")
    end
  end
  return json.encode{choices = {{message = {role = "assistant", content = out}, logprobs = {content = content}}}}
end]]

function tests.model_simulators_through_the_client()
  with_server([[return {
    {path = "/v1/completions", body = ]] .. SIM_ALL .. [[},
    {path = "/v1/chat/completions", body = ]] .. SIM_CHAT .. [[},
  }]], function(base, log)
    local client = require("lantern.llm").client{base_url = base, backoff_ms = 5}
    local e = {text = "the word cat"}
    local recs = {{strs = {" cat", " sat", " cat"}, acts = {1, 0, 1}}, {strs = {" dog"}, acts = {0}}}
    local all = interp.simulate(e, recs, {simulator = "m", mode = "all", client = client})
    check.eq(all.simulator, "m@simulate-all-v1", "id")
    check.near(all.expected[1][1], 5, 1e-9, "all: cat")
    check.near(all.expected[1][2], 0.1, 1e-9, "all: sat")
    check.near(all.expected[2][1], 0.1, 1e-9, "all: dog")
    local req = json.decode(log()[1].body)
    check.eq(req.echo, true, "echo asked")
    check.eq(req.logprobs, 15, "top logprobs asked")
    check.eq(req.prompt, prompts.simulate("all", "the word cat", recs[1]), "prompt sent")

    local warnings = {}
    local chat = interp.simulate(e, recs, {simulator = "m", mode = "chat", client = client,
                                          warn = function(m) warnings[#warnings + 1] = m end})
    check.near(chat.expected[1][1], (8 * 0.5 + 9 * 0.3 + 7 * 0.1) / 0.9, 1e-9, "chat: cat")
    check.near(chat.expected[1][2], (0.2 + 0.2) / 0.9, 1e-9, "chat: sat")
    check.eq(chat.meta.truncated, 2, "two truncated distributions")
    check.eq(#warnings, 1, "one warning")
    check.truthy(warnings[1]:find("fewer than 11 top logprobs", 1, true), warnings[1])
    local creq = json.decode(log()[#log()].body)
    check.eq(creq.logprobs, true, "logprobs asked")
    check.eq(creq.top_logprobs, 20, "top_logprobs asked")
    -- Asking for fewer than 11 warns up front.
    interp.simulate(e, recs, {simulator = "m", mode = "chat", client = client, top_logprobs = 5,
                              warn = function(m) warnings[#warnings + 1] = m end})
    check.truthy(warnings[2]:find("cannot hold the 11 values", 1, true), tostring(warnings[2]))
  end)
end

function tests.eval_interp_on_a_small_store()
  local path = scratch .. "/eval-store"
  local st = store.open(path)
  st:batch(function()
    for k, word in ipairs(WORDS) do
      -- Latents: clean detectors. Neurons: the same words plus noise.
      st:put_record({model = "tiny", kind = "sae_latent", layer = 0, index = k - 1}, detector_set(word))
      local noisy = detector_set(word)
      for _, list in ipairs{noisy.top, noisy.random} do
        for i, r in ipairs(list) do
          for j = 1, #r.acts do r.acts[j] = r.acts[j] + ((i * 7 + j * 3 + k) % 5) * 0.8 end
        end
      end
      st:put_record({model = "tiny", kind = "mlp_neuron", layer = 0, index = k - 1}, noisy)
    end
  end)
  st:close()
  local out, code = lantern(string.format("eval interp --store '%s' --show 1", path))
  check.eq(code, 0, "exit status\n" .. out)
  check.truthy(out:match("sae_latent%s+4%s+4%s+0%s+0%s+1%.000"), "latents score 1\n" .. out)
  check.truthy(out:match("mlp_neuron%s+4%s+4%s+0%s+0%s+0%.%d+"), "neurons scored\n" .. out)
  check.truthy(out:find("SAE latents score higher than MLP neurons: PASS", 1, true), out)
  check.truthy(out:find("mean SAE latent score >= 0.5: PASS", 1, true), out)
  local _, code2 = lantern(string.format("eval interp --store '%s' --model nobody", path))
  check.eq(code2, 1, "unknown model is an error")
end

function tests.zz_cleanup()
  os.execute("rm -rf '" .. scratch .. "'")
end

return tests
