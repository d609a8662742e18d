-- test_datasets.lua: the dataset generators of lantern.datasets are
-- deterministic, their train and test splits are disjoint where they must
-- be (IOI templates and name pairs, natural-text documents), and their
-- examples have the promised shape.
local check = require("check")
local D = require("lantern.datasets")
local R = require("lantern.datasets.rng")

local tests = {}

-- A string that identifies a whole list of IOI examples.
local function ioi_key(list)
  local parts = {}
  for i, ex in ipairs(list) do parts[i] = ex.prompt .. "|" .. ex.target .. "|" .. ex.distractor end
  return table.concat(parts, "\n")
end

local function count_word(s, w)
  local n = 0
  for x in s:gmatch("%a+") do if x == w then n = n + 1 end end
  return n
end

local function pair_key(a, b)
  if b < a then a, b = b, a end
  return a .. "|" .. b
end

function tests.rng_deterministic()
  local a, b, c = R.new(7), R.new(7), R.new(8)
  local same, differ = true, false
  for _ = 1, 100 do
    local x, y, z = a:u32(), b:u32(), c:u32()
    same = same and x == y
    differ = differ or x ~= z
    check.truthy(x >= 0 and x < 2 ^ 32 and x == math.floor(x), "u32 range")
  end
  check.truthy(same, "same seed, same numbers")
  check.truthy(differ, "different seed, different numbers")
  -- Fixed values: the generator must not change between versions, or every
  -- dataset (and the default model's training data) would change.
  local r = R.new(1)
  check.eq(r:u32(), 3937369338, "first number of seed 1")
  check.eq(r:u32(), 2212643213, "second number of seed 1")
  check.eq(R.hash32("a"), 3826002220, "FNV-1a of 'a'")
  check.truthy(R.new(1, "x"):u32() ~= R.new(1, "y"):u32(), "streams differ")
  local counts = { 0, 0, 0, 0 }
  local u = R.new(3)
  for _ = 1, 4000 do local k = u:int(1, 4); counts[k] = counts[k] + 1 end
  for k = 1, 4 do check.truthy(counts[k] > 900 and counts[k] < 1100, "int(1, 4) roughly uniform") end
  check.raises(function() R.new(-1) end, "non-negative integer")
end

function tests.ioi_deterministic()
  local a = D.ioi{ n = 200, seed = 5 }
  local b = D.ioi{ n = 200, seed = 5 }
  local c = D.ioi{ n = 200, seed = 6 }
  check.eq(#a, 200, "n examples")
  check.eq(ioi_key(a), ioi_key(b), "same seed, same prompts")
  check.truthy(ioi_key(a) ~= ioi_key(c), "different seed, different prompts")
  check.eq(ioi_key(D.ioi{ n = 50, seed = 5, split = "test" }), ioi_key(D.ioi{ n = 50, seed = 5, split = "test" }),
           "test split deterministic")
  -- The first examples do not depend on n.
  check.eq(ioi_key(D.ioi{ n = 10, seed = 5 }), ioi_key({ unpack(a, 1, 10) }), "prefix stable in n")
end

function tests.ioi_examples_well_formed()
  local orders = {}
  for _, split in ipairs({ "train", "test", "vary" }) do
    local opts = { n = 500, seed = 1, split = split }
    if split == "vary" then opts.split, opts.vary = "train", true end
    for _, ex in ipairs(D.ioi(opts)) do
      local io, s = ex.io, ex.s
      check.truthy(io ~= s, "two different names")
      check.eq(ex.target, " " .. io, "target is IO with a leading space")
      check.eq(ex.distractor, " " .. s, "distractor is S with a leading space")
      check.eq(count_word(ex.prompt, io), 1, "IO named once in: " .. ex.prompt)
      check.eq(count_word(ex.prompt, s), 2, "S named twice in: " .. ex.prompt)
      check.truthy(ex.prompt:sub(-1) ~= " ", "prompt ends without a space")
      check.truthy(not ex.prompt:find("{", 1, true), "every slot filled")
      local a, b = ex.names[1], ex.names[2]
      check.truthy(ex.prompt:find(a, 1, true) < ex.prompt:find(b, 1, true), "names in order of mention")
      if ex.order == "ABBA" then check.eq(a, io, "ABBA names IO first") else check.eq(a, s, "BABA names S first") end
      orders[ex.order] = (orders[ex.order] or 0) + 1
      -- The corrupted prompt swaps S's second mention for a third name.
      local c = ex.corrupt_name
      check.truthy(c ~= io and c ~= s, "a third name")
      check.eq(count_word(ex.corrupt, s), 1, "corrupt names S once")
      check.eq(count_word(ex.corrupt, c), 1, "corrupt names C once")
      check.eq(#ex.corrupt - #c, #ex.prompt - #s, "corrupt differs only in that name")
    end
  end
  check.truthy(orders.ABBA > 450 and orders.BABA > 450, "both orders, about evenly")
  local only = D.ioi{ n = 20, order = "ABBA" }
  for _, ex in ipairs(only) do check.eq(ex.order, "ABBA", "order option") end
  check.truthy(#D.ioi_names() >= 40, "at least 40 names")
  check.truthy(#D.ioi_templates() >= 15, "at least 15 templates")
  check.raises(function() D.ioi{ split = "dev" } end, 'split must be "train" or "test"')
  check.raises(function() D.ioi{ n = -1 } end, "non-negative integer")
end

-- vary draws half the templates from composed ones (never a test
-- template) and moves the names within templates (an adjective before the
-- place or object, a sentence before the prompt); answers stay as they are
-- (ioi_examples_well_formed checks varied examples too).
function tests.ioi_vary()
  local varied = D.ioi{ n = 300, seed = 4, vary = true }
  check.eq(ioi_key(varied), ioi_key(D.ioi{ n = 300, seed = 4, vary = true }), "deterministic")
  local train, test = {}, {}
  for _, t in ipairs(D.ioi_templates("train")) do train[t] = true end
  for _, t in ipairs(D.ioi_templates("test")) do test[t] = true end
  local adjectives, prefixed, composed, kinds = 0, 0, 0, {}
  for _, ex in ipairs(varied) do
    local base = ex.template:gsub("^[^{]-%. ", ""):gsub("the %a+ {P}", "the {P}"):gsub("a %a+ {O}", "a {O}")
    check.truthy(not test[base], "never a test template: " .. ex.template)
    if not train[base] then composed = composed + 1 end
    kinds[base] = true
    if ex.template:find("the %a+ {P}") or ex.template:find("a %a+ {O}") then adjectives = adjectives + 1 end
    if ex.template:match("^(.-){A}"):find(". ", 1, true) then prefixed = prefixed + 1 end
  end
  local n_kinds = 0
  for _ in pairs(kinds) do n_kinds = n_kinds + 1 end
  check.truthy(composed > 100 and composed < 200, string.format("about half composed templates (%d of 300)", composed))
  check.truthy(n_kinds > 100, string.format("many distinct templates (%d in 300 prompts)", n_kinds))
  check.truthy(adjectives > 100, string.format("adjectives in many prompts (%d of 300)", adjectives))
  check.truthy(prefixed > 100, string.format("about half have a sentence before them (%d of 300)", prefixed))
  for _, ex in ipairs(D.ioi{ n = 100, seed = 4 }) do
    check.truthy(train[ex.template], "without vary, only the train templates: " .. ex.template)
  end
end

function tests.ioi_split_disjoint()
  local train_t, test_t = {}, {}
  for _, t in ipairs(D.ioi_templates("train")) do train_t[t] = true end
  for _, t in ipairs(D.ioi_templates("test")) do
    test_t[t] = true
    check.truthy(not train_t[t], "a template in both splits")
  end
  local train_p = {}
  for _, p in ipairs(D.ioi_pairs("train")) do train_p[pair_key(p[1], p[2])] = true end
  for _, p in ipairs(D.ioi_pairs("test")) do check.truthy(not train_p[pair_key(p[1], p[2])], "a pair in both splits") end

  -- And in generated data, whatever the seeds.
  local seen_t, seen_p = {}, {}
  for _, ex in ipairs(D.ioi{ n = 3000, seed = 11, split = "train" }) do
    check.truthy(train_t[ex.template], "train example with a non-train template")
    check.truthy(train_p[pair_key(ex.io, ex.s)], "train example with a non-train pair")
  end
  local test_templates_used, test_pairs_used = 0, 0
  for _, ex in ipairs(D.ioi{ n = 3000, seed = 12, split = "test" }) do
    check.truthy(test_t[ex.template], "test example with a train template: " .. ex.template)
    check.truthy(not train_p[pair_key(ex.io, ex.s)], "test example with a train pair: " .. ex.io .. "/" .. ex.s)
    if not seen_t[ex.template] then seen_t[ex.template] = true; test_templates_used = test_templates_used + 1 end
    local k = pair_key(ex.io, ex.s)
    if not seen_p[k] then seen_p[k] = true; test_pairs_used = test_pairs_used + 1 end
  end
  check.eq(test_templates_used, #D.ioi_templates("test"), "every test template used")
  check.truthy(test_pairs_used > 100, "many test pairs used")
end

function tests.induction_ids()
  local a = D.induction{ n = 50, seq_len = 20, vocab = 1000, seed = 3 }
  check.eq(#a, 50, "n")
  for _, ex in ipairs(a) do
    check.eq(#ex.ids, 40, "two copies of 20")
    check.eq(ex.start, 20, "start of the second copy")
    local seen = {}
    for i = 1, 20 do
      check.eq(ex.ids[20 + i], ex.ids[i], "second half equals the first")
      check.truthy(ex.ids[i] >= 0 and ex.ids[i] < 1000, "id in range")
      check.truthy(not seen[ex.ids[i]], "distinct ids in the random part")
      seen[ex.ids[i]] = true
    end
  end
  local function key(list)
    local t = {}
    for i, ex in ipairs(list) do t[i] = table.concat(ex.ids, ",") end
    return table.concat(t, ";")
  end
  check.eq(key(a), key(D.induction{ n = 50, seq_len = 20, vocab = 1000, seed = 3 }), "same seed, same data")
  check.truthy(key(a) ~= key(D.induction{ n = 50, seq_len = 20, vocab = 1000, seed = 4 }), "different seed")
  check.truthy(key(a) ~= key(D.induction{ n = 50, seq_len = 20, vocab = 1000, seed = 3, split = "test" }),
               "test split differs from train")
  local p = D.induction{ n = 5, seq_len = 4, vocab = { 7, 8, 9, 10, 11 }, prefix = { 99 } }
  for _, ex in ipairs(p) do
    check.eq(#ex.ids, 9, "prefix + 2 * 4")
    check.eq(ex.ids[1], 99, "prefix first")
    check.eq(ex.start, 5, "start counts the prefix")
    for i = 2, 5 do
      check.truthy(ex.ids[i] >= 7 and ex.ids[i] <= 11, "ids from the given array")
      check.eq(ex.ids[i + 4], ex.ids[i], "copy")
    end
  end
  -- random ids before the sequences: from their own stream, so the
  -- sequences themselves are unchanged
  local q = D.induction{ n = 50, seq_len = 20, vocab = 1000, seed = 3, random_prefix = 7 }
  local prefixes = {}
  for k, ex in ipairs(q) do
    check.eq(#ex.ids, 47, "7 random ids + 2 * 20")
    check.eq(ex.start, 27, "start counts the random ids")
    for i = 1, 40 do check.eq(ex.ids[7 + i], a[k].ids[i], "same sequence as without the random ids") end
    for i = 1, 7 do check.truthy(ex.ids[i] >= 0 and ex.ids[i] < 1000, "random id in range") end
    prefixes[table.concat({ unpack(ex.ids, 1, 7) }, ",")] = true
  end
  local distinct = 0
  for _ in pairs(prefixes) do distinct = distinct + 1 end
  check.truthy(distinct > 45, "the random ids differ between sequences")
  check.raises(function() D.induction{ n = 1, vocab = 10, random_prefix = -1 } end, "random_prefix must be")
  check.raises(function() D.induction{ n = 1 } end, "vocab must be")
end

function tests.induction_text()
  local a = D.induction_text{ n = 30, seq_len = 6, seed = 1 }
  for _, ex in ipairs(a) do
    check.eq(#ex.words, 6, "words")
    local half = " " .. table.concat(ex.words, " ")
    check.eq(ex.text, half .. half, "text is the words twice, each with a leading space")
  end
  check.eq(D.induction_text{ n = 30, seq_len = 6, seed = 1 }[30].text, a[30].text, "deterministic")
  check.truthy(D.induction_text{ n = 30, seq_len = 6, seed = 2 }[30].text ~= a[30].text, "seed matters")
  local v = D.induction_text{ n = 20, seq_len = { 3, 5 }, words = { "x", "y", "z", "w", "v" } }
  for _, ex in ipairs(v) do check.truthy(#ex.words >= 3 and #ex.words <= 5, "length range") end
end

function tests.text_splits()
  local files = D.text_files()
  check.truthy(#files >= 10, "cookie files found")
  for _, f in ipairs(files) do check.truthy(io.open(f, "rb") ~= nil, "file exists: " .. f) end
  local train, test = D.text_docs("train"), D.text_docs("test")
  check.truthy(#train > 1000 and #test > 100, "both splits non-empty")
  local in_train, bytes_train, bytes_test = {}, 0, 0
  for _, d in ipairs(train) do in_train[d] = true; bytes_train = bytes_train + #d end
  for _, d in ipairs(test) do
    check.truthy(not in_train[d], "a document in both splits")
    bytes_test = bytes_test + #d
  end
  check.truthy(bytes_train > 1e6, "over a megabyte of training text")
  local share = bytes_test / (bytes_train + bytes_test)
  check.truthy(share > 0.05 and share < 0.2, "test share " .. share)
  for _, d in ipairs(train) do
    check.truthy(not d:find("[%z\1-\8\11-\31\127]"), "control characters removed")
  end

  local t = D.text{ split = "test", max_bytes = 5000 }
  check.truthy(#t > 4000 and #t <= 5000, "max_bytes respected: " .. #t)
  check.eq(t, D.text{ split = "test", max_bytes = 5000 }, "deterministic")
  check.truthy(t:sub(1, #test[1]) == test[1], "corpus order by default")
  local s1 = D.text{ split = "train", max_bytes = 5000, seed = 1 }
  check.truthy(s1 ~= D.text{ split = "train", max_bytes = 5000, seed = 2 }, "seed shuffles")
  check.eq(#D.text{ split = "train", max_bytes = 10 }, 10, "a first document cut to max_bytes")
  check.raises(function() D.text{ split = "valid" } end, 'split must be "train" or "test"')
end

function tests.text_missing_package_error()
  -- A fresh copy of the module pointed at a directory that does not exist.
  local saved = package.loaded["lantern.datasets.text"]
  package.loaded["lantern.datasets.text"] = nil
  local T = require("lantern.datasets.text")
  package.loaded["lantern.datasets.text"] = saved
  T.dir = "/nonexistent/fortunes"
  T.packages = { "lantern-no-such-package" }
  local err = check.raises(function() T.docs("train") end, "apt-get install -y lantern-no-such-package")
  check.truthy(err:find("'fortunes'", 1, true), "names the package")
end

function tests.mixture()
  local a = D.mixture{ bytes = 200000, seed = 4 }
  check.eq(a, D.mixture{ bytes = 200000, seed = 4 }, "same seed, same corpus")
  check.truthy(a ~= D.mixture{ bytes = 200000, seed = 5 }, "different seed")
  check.truthy(#a >= 200000 and #a < 210000, "about the asked size: " .. #a)
  check.eq(a:sub(-13), "<|endoftext|>", "documents end with <|endoftext|>")

  local docs = D.mixture_docs{ bytes = 300000, seed = 4, weights = { ioi = 0.5, text = 0.3, induction = 0.2 } }
  local by, total = {}, 0
  for _, d in ipairs(docs) do
    by[d.kind] = (by[d.kind] or 0) + #d.text
    total = total + #d.text
    check.truthy(not d.text:find("<|endoftext|>", 1, true), "no separator inside a document")
  end
  check.near(by.ioi / total, 0.5, 0.02, "IOI share")
  check.near(by.text / total, 0.3, 0.02, "text share")
  check.near(by.induction / total, 0.2, 0.02, "induction share")
  check.eq(by["repeat"], nil, "a kind without weight is absent")

  -- The training mixture holds only train templates: no document matches
  -- a test template with its slots as words.
  local patterns = {}
  for _, t in ipairs(D.ioi_templates("test")) do
    patterns[#patterns + 1] = (t:gsub("%p", "%%%0"):gsub("%%{%u%%}", "%%a+"))
  end
  local n_ioi = 0
  for _, d in ipairs(docs) do
    if d.kind == "ioi" then
      n_ioi = n_ioi + 1
      for _, pat in ipairs(patterns) do
        check.truthy(not d.text:find(pat), "a test template in the training mixture: " .. d.text)
      end
    end
  end
  check.truthy(n_ioi > 100, "IOI documents present")
  -- The check itself works: the test split's mixture does match.
  local hits = 0
  for _, d in ipairs(D.mixture_docs{ bytes = 20000, split = "test", weights = { ioi = 1 } }) do
    for _, pat in ipairs(patterns) do if d.text:find(pat) then hits = hits + 1 end end
  end
  check.truthy(hits > 10, "test templates found in the test mixture")
  check.raises(function() D.mixture{ weights = { bogus = 1 } } end, "unknown kind")
  check.raises(function() D.mixture{ split = "dev" } end, 'split must be "train" or "test"')
end

return tests
