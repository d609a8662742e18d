-- test_tokenizer.lua: the Lua API of lantern.tokenizer on the GPT-2 fixture.
local check = require("check")
local T = require("lantern.tokenizer")
local F = require("lantern.ffi")
local ffi = require("ffi")

local dir = F.root .. "/tests/fixtures/gpt2-tokenizer"

local tok_cache
local function tok()
  tok_cache = tok_cache or T.load(dir)
  return tok_cache
end

local function same_ids(got, want, what)
  check.eq(#got, #want, what .. " (count)")
  for i = 1, #want do check.eq(got[i], want[i], what .. " id " .. i) end
end

local tests = {}

function tests.load_and_fields()
  local t = tok()
  check.eq(t.vocab_size, 50257, "vocab_size")
  check.eq(t.eot, 50256, "eot")
  check.eq(type(t.vocab_size), "number", "vocab_size is a Lua number")
  check.eq(tostring(t), "Tokenizer(vocab_size=50257, eot=50256)", "tostring")
  local t2 = T.from_files(dir .. "/vocab.json", dir .. "/merges.txt")
  same_ids(t2:encode("Hello world"), { 15496, 995 }, "from_files")
end

function tests.encode_decode()
  local t = tok()
  local ids = t:encode("Hello world")
  same_ids(ids, { 15496, 995 }, "Hello world")
  check.eq(type(ids[1]), "number", "ids are Lua numbers")
  check.eq(t:decode(ids), "Hello world", "decode")
  same_ids(t:encode("Text before<|endoftext|>text after"), { 8206, 878, 50256, 5239, 706 }, "eot")
  same_ids(t:encode(""), {}, "empty")
  check.eq(t:decode({}), "", "decode of no ids")
end

function tests.fixture_cases()
  -- cases.json read with a pattern: its texts use no JSON escapes other
  -- than \n, \r, \t, \" and \\, which is enough for this fixture.
  local f = assert(io.open(dir .. "/cases.json", "rb"))
  local json = f:read("*a")
  f:close()
  local escapes = { n = "\n", r = "\r", t = "\t", ['"'] = '"', ["\\"] = "\\" }
  local n = 0
  for body, ids_body in json:gmatch('"text": "(.-)",%s*"ids": %[(.-)%]') do
    local text = body:gsub("\\(.)", escapes)
    local want = {}
    for id in ids_body:gmatch("%d+") do want[#want + 1] = tonumber(id) end
    local ids = tok():encode(text)
    same_ids(ids, want, text)
    check.eq(tok():decode(ids), text, "round trip of " .. text)
    n = n + 1
  end
  check.eq(n, 15, "cases found")
end

function tests.bytes_round_trip()
  local t = tok()
  for _, s in ipairs({ "\xff\xfe abc \xc3", "a\0b\0", "caf\xc3\xa9 \xe2\x82\xac 1\xc2\xbd" }) do
    check.eq(t:decode(t:encode(s)), s, "round trip")
  end
end

function tests.token_str_and_text()
  local t = tok()
  check.eq(t:token_str(220), "\xc4\xa0", "token_str of the space")
  check.eq(t:token_text(220), " ", "token_text of the space")
  check.eq(t:token_str(262), "\xc4\xa0the", "token_str 262")
  check.eq(t:token_text(262), " the", "token_text 262")
  check.eq(t:token_text(50256), "<|endoftext|>", "eot text")
  check.raises(function() t:token_str(50257) end, "id 50257 is outside the vocabulary")
  check.raises(function() t:token_text(-1) end, "outside the vocabulary")
end

function tests.decode_cdata()
  local t = tok()
  local arr = ffi.new("int32_t[2]", { 15496, 995 })
  check.eq(t:decode(arr, 2), "Hello world", "cdata array")
  check.eq(t:decode(ffi.cast("const int32_t *", arr), 1), "Hello", "cdata pointer")
end

function tests.errors()
  local t = tok()
  check.raises(function() t:decode({ 15496, 50257 }) end, "id 50257")
  check.raises(function() t:decode({ -5 }) end, "id -5")
  check.raises(function() t:decode({ 1.5 }) end, "not an integer")
  check.raises(function() t:decode({ 2 ^ 40 }) end, "outside the vocabulary")
  check.raises(function() t:encode(42) end, "expected a string")
  check.raises(function() T.load("/nonexistent/dir") end, "/nonexistent/dir/vocab.json not found")
  check.raises(function() T.from_files("/nonexistent/v.json", dir .. "/merges.txt") end, "/nonexistent/v.json")
  -- A truncated vocabulary: the C message (naming the file) reaches Lua.
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write('{"a": 0, "b": 1, "ab"')
  f:close()
  check.raises(function() T.from_files(path, dir .. "/merges.txt") end, path .. ": invalid JSON")
  f = assert(io.open(path, "wb"))
  f:write('{"a": 0, "b": 1, "ab": 2}')
  f:close()
  local mpath = os.tmpname()
  f = assert(io.open(mpath, "wb"))
  f:write("a b\na b c\n")
  f:close()
  check.raises(function() T.from_files(path, mpath) end, mpath .. ":2: malformed merge line")
  os.remove(path)
  os.remove(mpath)
end

return tests
