-- lantern.tokenizer: GPT-2's byte-level BPE tokenizer (vocab.json +
-- merges.txt), a thin layer over the C core (core/src/tokenizer.c).
--
--   local T = require("lantern.tokenizer")
--   local tok = T.load("store/models/gpt2")      -- dir/vocab.json, dir/merges.txt
--   local ids = tok:encode("Hello world")       -- {15496, 995}
--   print(tok:decode(ids), tok.vocab_size, tok.eot)
--
-- Ids are 0-based token ids (as everywhere in lantern) in ordinary 1-based
-- Lua arrays. Errors are Lua errors carrying the C library's message.
local ffi = require("ffi")
local F = require("lantern.ffi")
local C = F.C

local M = {}

local Tokenizer = {}
Tokenizer.__index = Tokenizer

-- Loads a tokenizer from the two files; errors name the offending file.
function M.from_files(vocab_path, merges_path)
  if type(vocab_path) ~= "string" or type(merges_path) ~= "string" then
    error("tokenizer.from_files: expected two file paths", 2)
  end
  local out = ffi.new("lt_tokenizer *[1]")
  F.check(C.lt_tokenizer_load(vocab_path, merges_path, out))
  local handle = ffi.gc(out[0], C.lt_tokenizer_free)
  local eot = C.lt_tokenizer_eot(handle)
  return setmetatable({
    handle = handle,
    vocab_size = C.lt_tokenizer_vocab_size(handle),
    eot = eot >= 0 and eot or nil,
    vocab_path = vocab_path,
    merges_path = merges_path,
  }, Tokenizer)
end

-- Loads dir/vocab.json and dir/merges.txt (a Hugging Face GPT-2 directory).
function M.load(dir)
  if type(dir) ~= "string" then error("tokenizer.load: expected a directory path", 2) end
  for _, name in ipairs({ "vocab.json", "merges.txt" }) do
    local f = io.open(dir .. "/" .. name, "rb")
    if not f then error("tokenizer.load: " .. dir .. "/" .. name .. " not found", 2) end
    f:close()
  end
  return M.from_files(dir .. "/vocab.json", dir .. "/merges.txt")
end

-- text (any bytes) -> Lua array of ids; <|endoftext|> is the special token.
function Tokenizer:encode(text)
  if type(text) ~= "string" then error("encode: expected a string, got " .. type(text), 2) end
  local pids = ffi.new("int32_t *[1]")
  local pn = ffi.new("int[1]")
  F.check(C.lt_tokenizer_encode(self.handle, text, #text, pids, pn))
  local p, n = pids[0], pn[0]
  local ids = {}
  for i = 0, n - 1 do ids[i + 1] = p[i] end
  C.lt_free(p)
  return ids
end

-- ids -> string. ids is a Lua array, or an int32_t pointer/array with its
-- count n. An id outside the vocabulary is an error naming it.
function Tokenizer:decode(ids, n)
  local buf, count
  if type(ids) == "table" then
    count = #ids
    buf = ffi.new("int32_t[?]", count)
    for i = 1, count do
      local v = ids[i]
      if type(v) ~= "number" or v ~= math.floor(v) then
        error(string.format("decode: ids[%d] is %s, not an integer id", i, tostring(v)), 2)
      end
      -- The C library checks ids, but cannot see one that does not fit in
      -- an int32: report that here, in the same words.
      if v < -2147483648 or v > 2147483647 then
        error(string.format("decode: id %d (position %d) is outside the vocabulary (size %d)",
                            v, i - 1, self.vocab_size), 2)
      end
      buf[i - 1] = v
    end
  elseif type(ids) == "cdata" then
    if type(n) ~= "number" then error("decode: a cdata id array needs its count n", 2) end
    buf, count = ids, n
  else
    error("decode: expected an array of ids, got " .. type(ids), 2)
  end
  local ptext = ffi.new("char *[1]")
  local plen = ffi.new("size_t[1]")
  F.check(C.lt_tokenizer_decode(self.handle, buf, count, ptext, plen))
  local s = ffi.string(ptext[0], plen[0])
  C.lt_free(ptext[0])
  return s
end

local function check_id(self, id, what)
  if type(id) ~= "number" or id ~= math.floor(id) or id < 0 or id >= self.vocab_size then
    error(string.format("%s: id %s is outside the vocabulary (size %d)", what, tostring(id), self.vocab_size), 3)
  end
end

-- The vocabulary string of id, in vocab.json's byte-level alphabet
-- ("Ġthe" for " the").
function Tokenizer:token_str(id)
  check_id(self, id, "token_str")
  local s = C.lt_tokenizer_token_str(self.handle, id)
  if s == nil then
    error(string.format("token_str: id %d has no token (a hole in the vocabulary)", id), 2)
  end
  return ffi.string(s)
end

-- The bytes that id stands for (" the"); may be part of a UTF-8 character.
function Tokenizer:token_text(id)
  check_id(self, id, "token_text")
  return self:decode({ id })
end

function Tokenizer:__tostring()
  return string.format("Tokenizer(vocab_size=%d, eot=%s)", self.vocab_size, tostring(self.eot))
end

M.Tokenizer = Tokenizer

return M
