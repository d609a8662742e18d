-- lantern.datasets (lt.datasets): deterministic, seeded datasets with
-- train/test splits, and the BPE tokenizer trainer. docs/datasets.md
-- describes each in full.
--
--   local lt = require("lantern")
--   lt.datasets.ioi{n = 100, seed = 1, split = "test"}    -- IOI prompts
--   lt.datasets.induction{n = 50, vocab = 4096}            -- repeated random ids
--   lt.datasets.induction_text{n = 50}                     -- repeated random words
--   lt.datasets.text{split = "test", max_bytes = 1e5}      -- natural text
--   lt.datasets.mixture{bytes = 4e6, seed = 1}             -- a training corpus
--   lt.datasets.train_tokenizer{text = s, vocab_size = 4096, dir = "out"}
--
-- The same options give the same data on every machine: all randomness
-- comes from lantern.datasets.rng, never from math.random.
local ffi = require("ffi")
local R = require("lantern.datasets.rng")
local ioi = require("lantern.datasets.ioi")
local induction = require("lantern.datasets.induction")
local text = require("lantern.datasets.text")

local M = {}

M.rng = R.new
M.hash32 = R.hash32

-- IOI (lantern.datasets.ioi).
M.ioi = ioi.ioi
M.ioi_names = ioi.names
M.ioi_places = ioi.places
M.ioi_objects = ioi.objects
M.ioi_templates = ioi.templates
M.ioi_pairs = ioi.pairs
M.ioi_multi_token_names = ioi.multi_token_names

-- Induction (lantern.datasets.induction).
M.induction = induction.induction
M.induction_text = induction.induction_text
M.induction_words = induction.words

-- Natural text (lantern.datasets.text).
M.text = text.text
M.text_docs = text.docs
M.text_files = text.files
M.text_info = { package = text.package, packages = text.packages, license = text.license, dir = text.dir }

M.EOT = "<|endoftext|>"

-- ------------------------------------------------------------ mixture

local KINDS = { "ioi", "induction", "repeat", "text" }
local DEFAULT_WEIGHTS = { ioi = 0.25, induction = 0.15, ["repeat"] = 0.05, text = 0.55 }

-- The distinct lower-case words of the natural-text train split, sorted:
-- a wide pool for induction text, so that copying is learnt for many
-- tokens, not for a short list.
local corpus_words_cache
local function corpus_words()
  if corpus_words_cache then return corpus_words_cache end
  local seen, out = {}, {}
  for _, d in ipairs(text.docs("train")) do
    for w in d:gmatch("%a+") do
      w = w:lower()
      if #w >= 2 and not seen[w] then seen[w] = true; out[#out + 1] = w end
    end
  end
  table.sort(out)
  corpus_words_cache = out
  return out
end

-- Generators of documents, one per kind; each returns the next document.
local function make_sources(opts, seed, split)
  local sources = {}
  local ioi_gen = ioi.generator({ seed = seed, split = split })
  local r_ioi = R.new(seed, "mixture/ioi/" .. split)
  local per_doc = opts.ioi_per_doc or { 1, 4 }
  sources.ioi = function()
    -- A few complete IOI sentences: the prompt, its answer and a full stop.
    local parts = {}
    for i = 1, r_ioi:int(per_doc[1], per_doc[2]) do
      local ex = ioi_gen()
      parts[i] = ex.prompt .. ex.target .. "."
    end
    return table.concat(parts, " ")
  end
  local words = opts.induction_words
  if words == nil or words == "corpus" then words = corpus_words()
  elseif words == "builtin" then words = induction.words() end
  local ind_gen = induction.text_generator({
    seed = seed, split = split, words = words, seq_len = opts.induction_seq_len or { 5, 30 },
  })
  -- Kept with its leading space, so that the first word is the same
  -- tokens in both copies.
  sources.induction = function() return ind_gen().text end
  local docs = text.docs(split)
  -- A fresh shuffle of all documents on each pass over them.
  local next_doc = R.new(seed, "mixture/text/" .. split):cycle(docs)
  sources.text = next_doc
  local r_rep = R.new(seed, "mixture/repeat/" .. split)
  sources["repeat"] = function()
    -- A stretch of natural text written twice: induction on real words.
    local d = next_doc()
    local n = r_rep:int(40, 200)
    local start = n < #d and r_rep:int(1, #d - n + 1) or 1
    local piece = d:sub(start, start + n - 1):gsub("\n", " ")
    piece = piece:match("^%S*%s(.-)%s%S*$") or piece   -- whole words only
    return piece .. " " .. piece
  end
  return sources
end

-- opts: bytes (target size of the corpus, default 1e6), seed (default 0),
-- split ("train" default, or "test"), weights ({ioi=, induction=,
-- ["repeat"]=, text=}, shares of the bytes; missing kinds get 0 when
-- weights is given; default 0.25/0.15/0.05/0.55), ioi_per_doc ({min, max}
-- sentences per IOI document, default {1, 4}), induction_seq_len ({min,
-- max} words, default {5, 30}), induction_words ("corpus" (default: the
-- words of the natural text), "builtin", or an array).
-- Returns an array of documents {kind = ..., text = ...}, in order. Each
-- next document is of the kind furthest below its share so far, so the
-- shares hold closely at any length.
function M.mixture_docs(opts)
  opts = opts or {}
  local target = opts.bytes or 1e6
  if type(target) ~= "number" or target < 0 then error("mixture: bytes must be a non-negative number", 2) end
  local split = opts.split or "train"
  if split ~= "train" and split ~= "test" then
    error('mixture: split must be "train" or "test", got ' .. tostring(split), 2)
  end
  local weights, total_w = {}, 0
  for _, k in ipairs(KINDS) do
    local w = (opts.weights or DEFAULT_WEIGHTS)[k] or 0
    if type(w) ~= "number" or w < 0 then error("mixture: weight of " .. k .. " must be a non-negative number", 2) end
    weights[k] = w
    total_w = total_w + w
  end
  for k in pairs(opts.weights or {}) do
    if weights[k] == nil then error("mixture: unknown kind '" .. tostring(k) .. "' in weights", 2) end
  end
  if total_w <= 0 then error("mixture: weights are all zero", 2) end

  local sources = make_sources(opts, opts.seed or 0, split)
  local made = { ioi = 0, induction = 0, ["repeat"] = 0, text = 0 }
  local out, total = {}, 0
  while total < target do
    local best, best_ratio
    for _, k in ipairs(KINDS) do
      if weights[k] > 0 then
        local ratio = made[k] / weights[k]
        if best == nil or ratio < best_ratio then best, best_ratio = k, ratio end
      end
    end
    local doc = sources[best]()
    out[#out + 1] = { kind = best, text = doc }
    made[best] = made[best] + #doc
    total = total + #doc + #M.EOT
  end
  return out
end

-- As mixture_docs, but one string: the documents each followed by
-- <|endoftext|>, the way GPT-2's training text separates documents.
function M.mixture(opts)
  local docs = M.mixture_docs(opts)
  local parts = {}
  for i, d in ipairs(docs) do parts[i] = d.text end
  if #parts == 0 then return "" end
  return table.concat(parts, M.EOT) .. M.EOT
end

-- ------------------------------------------------------------ tokenizer training

local C
local function lib()
  C = C or require("lantern.ffi").C
  return C
end

pcall(ffi.cdef, "int mkdir(const char *path, unsigned int mode);")

-- mkdir -p.
local function mkdirs(path)
  local prefix = path:sub(1, 1) == "/" and "" or "."
  for part in path:gmatch("[^/]+") do
    prefix = prefix .. "/" .. part
    ffi.C.mkdir(prefix, tonumber("755", 8))
  end
  local probe = io.open(path .. "/.lantern_probe", "wb")
  if not probe then error("train_tokenizer: cannot create or write directory " .. path, 3) end
  probe:close()
  os.remove(path .. "/.lantern_probe")
end

-- The C trainer, directly: writes vocab_path and merges_path (see
-- lt_bpe_train in lantern.h). special: optional array of extra special
-- token strings (<|endoftext|> is always the last id).
function M.bpe_train(s, vocab_size, vocab_path, merges_path, special)
  if type(s) ~= "string" then error("bpe_train: text must be a string", 2) end
  if type(vocab_size) ~= "number" then error("bpe_train: vocab_size must be a number", 2) end
  special = special or {}
  local n = #special
  local arr = ffi.new("const char *[?]", n + 1)
  for i = 1, n do arr[i - 1] = special[i] end
  local F = require("lantern.ffi")
  F.check(lib().lt_bpe_train(s, #s, vocab_size, arr, n, vocab_path, merges_path))
end

-- opts: text (the training text; <|endoftext|> separates documents),
-- vocab_size, dir (created if needed), special (optional extra special
-- tokens). Writes dir/vocab.json and dir/merges.txt and returns the loaded
-- tokenizer (lantern.tokenizer).
function M.train_tokenizer(opts)
  opts = opts or {}
  if type(opts.text) ~= "string" then error("train_tokenizer: text must be a string", 2) end
  if type(opts.vocab_size) ~= "number" then error("train_tokenizer: vocab_size must be a number", 2) end
  if type(opts.dir) ~= "string" or opts.dir == "" then error("train_tokenizer: dir must be a directory path", 2) end
  mkdirs(opts.dir)
  M.bpe_train(opts.text, opts.vocab_size, opts.dir .. "/vocab.json", opts.dir .. "/merges.txt", opts.special)
  return require("lantern.tokenizer").load(opts.dir)
end

return M
