-- test_bpe_train.lua: the BPE trainer through the Lua API
-- (lt.datasets.train_tokenizer / bpe_train): its files load in
-- lantern.tokenizer and round-trip text, training is deterministic, and
-- the IOI names become single tokens when trained on the mixture.
local check = require("check")
local D = require("lantern.datasets")
local T = require("lantern.tokenizer")

local tests = {}

-- A fresh scratch directory path (not created).
local function scratch_dir()
  local p = os.tmpname()
  os.remove(p)
  return p .. "_bpe"
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local function cleanup(dir)
  os.remove(dir .. "/vocab.json")
  os.remove(dir .. "/merges.txt")
  os.remove(dir)
end

local corpus
local function mixture()
  corpus = corpus or D.mixture{ bytes = 600000, seed = 1 }
  return corpus
end

function tests.train_load_roundtrip()
  local dir = scratch_dir() .. "/nested/tok"
  local tok = D.train_tokenizer{ text = mixture(), vocab_size = 2048, dir = dir }
  check.eq(tok.vocab_size, 2048, "vocab size")
  check.eq(tok.eot, 2047, "<|endoftext|> is the last id")
  local again = T.load(dir)
  check.eq(again.vocab_size, 2048, "loads from the directory")
  local s = mixture():sub(1, 50000)
  check.eq(tok:decode(tok:encode(s)), s, "training text round-trips")
  local unseen = "Quartz \xce\xbb 1234 \0\1\255 tabs\there <|endoftext|> done"
  check.eq(tok:decode(tok:encode(unseen)), unseen, "unseen bytes round-trip")
  check.truthy(#tok:encode(s) < #s / 2.5, "compresses the training text")
  check.eq(#tok:encode(" the"), 1, "' the' is one token")
  check.eq(tok:token_str(0), "!", "GPT-2's byte order")
  cleanup(dir)
  os.remove(dir:match("^(.*)/tok$"))
  os.remove(dir:match("^(.*)/nested/tok$"))
end

function tests.ioi_names_single_tokens()
  local dir = scratch_dir()
  local tok = D.train_tokenizer{ text = mixture(), vocab_size = 4096, dir = dir }
  local bad = D.ioi_multi_token_names(tok)
  check.eq(#bad, 0, "IOI names that are not single tokens: " .. table.concat(bad, " "))
  for _, ex in ipairs(D.ioi{ n = 50, split = "test" }) do
    check.eq(#tok:encode(ex.target), 1, "target one token")
    check.eq(#tok:encode(ex.distractor), 1, "distractor one token")
  end
  cleanup(dir)
end

function tests.deterministic()
  local d1, d2 = scratch_dir(), scratch_dir()
  local s = mixture():sub(1, 200000)
  D.train_tokenizer{ text = s, vocab_size = 1000, dir = d1 }
  D.train_tokenizer{ text = s, vocab_size = 1000, dir = d2 }
  check.eq(read(d1 .. "/vocab.json"), read(d2 .. "/vocab.json"), "vocab.json identical")
  check.eq(read(d1 .. "/merges.txt"), read(d2 .. "/merges.txt"), "merges.txt identical")
  check.eq(read(d1 .. "/merges.txt"):sub(1, 14), "#version: 0.2\n", "merges header")
  cleanup(d1)
  cleanup(d2)
end

function tests.special_tokens_and_errors()
  local dir = scratch_dir()
  local tok = D.train_tokenizer{ text = "hello world<|pad|>hello", vocab_size = 266, dir = dir, special = { "<|pad|>" } }
  check.eq(tok:token_str(264), "<|pad|>", "extra special before <|endoftext|>")
  check.eq(tok.eot, 265, "eot last")
  check.raises(function() D.train_tokenizer{ text = "abc", vocab_size = 100, dir = dir } end, "vocab_size 100 out of range")
  check.raises(function() D.train_tokenizer{ text = "abc abc", vocab_size = 400, dir = dir } end, "use vocab_size <= 260")
  check.raises(function() D.train_tokenizer{ vocab_size = 400, dir = dir } end, "text must be a string")
  check.raises(function() D.train_tokenizer{ text = "x", vocab_size = 300 } end, "dir must be")
  check.raises(function() D.train_tokenizer{ text = "x", vocab_size = 300, dir = "/proc/no/such" } end, "cannot create")
  cleanup(dir)
end

return tests
