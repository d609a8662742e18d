-- lantern.datasets.induction: repeated random sequences, where the second
-- copy can be predicted only by looking back at the first (what induction
-- heads do: attend to the token after the previous occurrence of the
-- current token and copy it).
--
-- Two forms:
--   ids   random token ids, seq_len of them, then the same seq_len again;
--         for evaluating a model on raw ids (no tokenizer involved);
--   text  random words, seq_len of them, then the same words again, each
--         word with a leading space: " apple river stone apple river stone";
--         for training a text model (and evaluating it on words).
-- Train and test splits come from separate random streams of the seed.
local R = require("lantern.datasets.rng")

local M = {}

-- Everyday words: short, common, distinct, lower case.
local WORDS = {
  "apple", "river", "stone", "cloud", "table", "window", "garden", "bread", "candle", "mirror",
  "forest", "island", "pencil", "rabbit", "castle", "engine", "silver", "winter", "summer", "autumn",
  "spring", "ocean", "desert", "valley", "bridge", "tower", "market", "village", "doctor", "farmer",
  "sailor", "teacher", "painter", "singer", "dancer", "driver", "hunter", "planet", "rocket", "comet",
  "thunder", "shadow", "feather", "ladder", "basket", "bottle", "button", "carpet", "chair", "clock",
  "coffee", "copper", "cotton", "crystal", "dragon", "eagle", "falcon", "finger", "flame", "glove",
  "hammer", "helmet", "honey", "horse", "jacket", "jungle", "kettle", "kitten", "lemon", "lizard",
  "magnet", "marble", "meadow", "monkey", "needle", "orange", "oyster", "palace", "parrot", "pepper",
  "pillow", "pirate", "pocket", "potato", "puzzle", "quarry", "rain", "ribbon", "saddle", "salmon",
  "sand", "school", "shell", "shirt", "snow", "spider", "square", "statue", "storm", "sugar",
  "tiger", "tomato", "tunnel", "turtle", "velvet", "wagon", "wallet", "whale", "wheel", "wolf",
  "yellow", "zebra", "anchor", "arrow", "badge", "banner", "barrel", "beard", "blanket", "boat",
  "bucket", "cabin", "canyon", "cherry", "circle", "collar", "cookie", "cradle", "dinner", "drum",
  "elbow", "fabric", "fence", "fiddle", "garlic", "giant", "ginger", "glass", "goat", "grape",
  "harbor", "hollow", "iron", "jelly", "kingdom", "knife", "lantern", "leaf", "lion", "maple",
  "melon", "mountain", "noodle", "olive", "onion", "paper", "pearl", "pickle", "pumpkin", "rope",
  "ruby", "salt", "scarf", "sheep", "signal", "slipper", "soap", "spoon", "star", "sunset",
  "thread", "timber", "tulip", "violin", "walnut", "wax", "willow", "wing", "wizard", "wool",
}

local function check_split(split, what)
  if split ~= "train" and split ~= "test" then
    error(string.format('%s: split must be "train" or "test", got %s', what, tostring(split)), 3)
  end
end

local function check_count(v, what, min)
  if type(v) ~= "number" or v ~= math.floor(v) or v < min then
    error(string.format("%s must be an integer >= %d, got %s", what, min, tostring(v)), 3)
  end
end

-- The built-in word list (a copy).
function M.words()
  local out = {}
  for i, w in ipairs(WORDS) do out[i] = w end
  return out
end

-- seq_len draws from array pool: distinct elements when distinct is set
-- and the pool is large enough (so that every token of the first copy has
-- one unambiguous successor), else independent draws.
local function draw(r, pool, seq_len, distinct)
  if distinct and #pool >= seq_len then return r:sample(pool, seq_len) end
  local out = {}
  for i = 1, seq_len do out[i] = r:pick(pool) end
  return out
end

-- opts: n (default 100), seq_len (length of the random part, default 20),
-- vocab (required: a number V to draw ids from [0, V), or an array of the
-- allowed ids; tok.vocab_size - 1 leaves out a final <|endoftext|>), seed
-- (default 0), split ("train" or "test"), distinct (default true: no id
-- repeats inside the random part), prefix (optional array of ids put
-- before each sequence, e.g. {eot}), random_prefix (optional count of
-- random ids from the pool put before each sequence, after prefix; drawn
-- from a stream of their own, so the sequences are those drawn without
-- them. Copying that works by absolute position rather than by content
-- fails on such sequences; an induction head does not).
-- Returns an array of n examples {ids = {...}, seq_len = L, start = s}:
-- ids holds the prefix, L random ids, then the same L ids; start is the
-- 0-based position of the first id of the second copy. Ids are 0-based
-- token ids. Positions start+1 .. start+L-1 are the ones an induction
-- mechanism can predict (from the position before each).
function M.induction(opts)
  opts = opts or {}
  local n, seq_len = opts.n or 100, opts.seq_len or 20
  check_count(n, "induction: n", 0)
  check_count(seq_len, "induction: seq_len", 1)
  local split = opts.split or "train"
  check_split(split, "induction")
  local pool = opts.vocab
  if type(pool) == "number" then
    check_count(pool, "induction: vocab", 2)
    local V = pool
    pool = {}
    for i = 1, V do pool[i] = i - 1 end
  elseif type(pool) ~= "table" or #pool < 2 then
    error("induction: vocab must be a vocabulary size or an array of at least 2 ids", 2)
  end
  local prefix = opts.prefix or {}
  local n_random = opts.random_prefix or 0
  check_count(n_random, "induction: random_prefix", 0)
  local distinct = opts.distinct ~= false
  local r = R.new(opts.seed or 0, "induction/ids/" .. split)
  local r_prefix = R.new(opts.seed or 0, "induction/prefix/" .. split)
  local out = {}
  for k = 1, n do
    local seq = draw(r, pool, seq_len, distinct)
    local ids = {}
    for i = 1, #prefix do ids[#ids + 1] = prefix[i] end
    for _ = 1, n_random do ids[#ids + 1] = r_prefix:pick(pool) end
    local start = #ids + seq_len
    for rep = 1, 2 do
      for i = 1, seq_len do ids[#ids + 1] = seq[i] end
    end
    out[k] = { ids = ids, seq_len = seq_len, start = start }
  end
  return out
end

-- A generator of text-form examples {text = ..., words = {...}}. Options as
-- for M.induction_text, except n; seq_len may be a number or {min, max}.
function M.text_generator(opts)
  opts = opts or {}
  local split = opts.split or "train"
  check_split(split, "induction_text")
  local words = opts.words or WORDS
  if type(words) ~= "table" or #words < 2 then error("induction_text: words must be an array of at least 2 words", 3) end
  local lo, hi = opts.seq_len or 20, opts.seq_len or 20
  if type(opts.seq_len) == "table" then lo, hi = opts.seq_len[1], opts.seq_len[2] end
  check_count(lo, "induction_text: seq_len", 1)
  check_count(hi, "induction_text: seq_len", lo)
  local distinct = opts.distinct ~= false
  local r = R.new(opts.seed or 0, "induction/text/" .. split)
  return function()
    local seq = draw(r, words, r:int(lo, hi), distinct)
    local half = " " .. table.concat(seq, " ")
    return { text = half .. half, words = seq }
  end
end

-- opts: n (default 100), seq_len (default 20, or {min, max} for a length
-- drawn per example), seed, split, words (default: the built-in list of
-- everyday words), distinct (default true).
-- Returns an array of n examples {text = " w1 ... wL w1 ... wL", words =
-- {w1, ..., wL}}: every word carries a leading space, so that each word
-- is the same tokens in both copies.
function M.induction_text(opts)
  opts = opts or {}
  local n = opts.n or 100
  check_count(n, "induction_text: n", 0)
  local gen = M.text_generator(opts)
  local out = {}
  for i = 1, n do out[i] = gen() end
  return out
end

return M
