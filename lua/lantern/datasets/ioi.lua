-- lantern.datasets.ioi: indirect-object identification prompts.
--
--   "When Mary and John went to the store, John gave a drink to" -> " Mary"
--
-- Two people are introduced (A and B); one of them, the subject S, is named
-- again; the sentence ends where the other one, the indirect object IO, is
-- the natural next word. The target is IO and the distractor is S, both as
-- text with a leading space. Both name orders occur: ABBA (IO named first,
-- "When Mary and John ..., John ... to" -> Mary) and BABA (S named first,
-- "When John and Mary ..., John ... to" -> Mary).
--
-- Held-out test split: the templates and the unordered name pairs are each
-- cut into a train part and a test part once and for all (a fixed list of
-- test templates; pairs by a stable hash), independently of any seed. The
-- train split draws only train templates and train pairs, the test split
-- only test ones, so no test prompt shares a template or a name pair with
-- any train prompt. Single names, places and objects are shared.
local R = require("lantern.datasets.rng")

local M = {}

-- Common single-word first names (all single tokens with a leading space in
-- GPT-2's vocabulary, and frequent enough in the training mixture to be
-- single tokens in ours).
local NAMES = {
  "Mary", "John", "Tom", "James", "Paul", "Mark", "David", "Michael", "Sarah", "Lisa",
  "Kate", "Emma", "Alice", "Bob", "Jack", "Anna", "Laura", "Rachel", "Daniel", "Peter",
  "Steve", "Chris", "Ryan", "Adam", "Sam", "Ben", "Max", "Joe", "Jane", "Amy",
  "Rose", "Grace", "Linda", "Susan", "Helen", "Frank", "George", "Henry", "Eric", "Kevin",
  "Brian", "Jason", "Matt", "Dan", "Tim", "Andrew", "Robert", "William", "Richard", "Thomas",
}

local PLACES = {
  "store", "park", "station", "school", "garden", "hospital", "restaurant", "office",
  "library", "market", "beach", "museum", "cafe", "bakery", "lake", "farm", "zoo",
  "cinema", "house", "church", "river", "hotel",
}

-- Objects that read well after "a" (they start with a consonant sound).
local OBJECTS = {
  "drink", "book", "ring", "basket", "bottle", "letter", "snack", "ticket", "necklace",
  "computer", "ball", "card", "cake", "gift", "pen", "hat", "bag", "cup", "key", "flower",
  "camera", "box",
}

-- Templates: {A} and {B} are the first two mentions, {S} the subject named
-- again, {P} a place, {O} an object. Each ends where the indirect object
-- comes next. test = true marks the held-out ones.
local TEMPLATES = {
  { "When {A} and {B} went to the {P}, {S} gave a {O} to" },
  { "When {A} and {B} got to the {P}, {S} handed a {O} to" },
  { "After {A} and {B} went to the {P}, {S} gave a {O} to" },
  { "While {A} and {B} were working at the {P}, {S} gave a {O} to", test = true },
  { "Then, {A} and {B} had a long argument. Afterwards {S} said to" },
  { "Then, {A} and {B} went to the {P}. {S} gave a {O} to" },
  { "{A} and {B} found a {O} at the {P}. {S} gave it to" },
  { "{A} and {B} arrived at the {P} early, and {S} passed a {O} to", test = true },
  { "Yesterday {A} and {B} walked to the {P}, where {S} showed a {O} to" },
  { "At the {P}, {A} and {B} were bored, so {S} threw a {O} to" },
  { "As {A} and {B} left the {P}, {S} offered a {O} to" },
  { "On the way to the {P}, {A} and {B} stopped, and {S} sent a {O} to", test = true },
  { "{A} and {B} spent the morning at the {P}. Later, {S} brought a {O} to" },
  { "The day {A} and {B} visited the {P}, {S} sold a {O} to" },
  { "Once {A} and {B} reached the {P}, {S} lent a {O} to" },
  { "When {A} and {B} met at the {P}, {S} wrote a letter to", test = true },
  { "After lunch, {A} and {B} went to the {P}, and {S} gave a {O} to" },
  { "{A} and {B} were cleaning the {P} when {S} tossed a {O} to" },
  { "Since {A} and {B} were late to the {P}, {S} mailed a {O} to" },
  { "After the meeting, {A} and {B} went to the {P}. {S} gave a {O} to", test = true },
  { "When {A} and {B} came back from the {P}, {S} returned the {O} to" },
  { "Before {A} and {B} went to the {P}, {S} read a story to" },
  { "{A} and {B} had dinner at the {P}, and then {S} told a joke to" },
  { "During a walk to the {P}, {A} and {B} talked, and {S} waved to", test = true },
}

-- Variation for training data (opts.vary): words and sentences that move
-- the names to other positions within a template, so that a model cannot
-- answer by remembering where the answer sits in each training template.
local PLACE_ADJECTIVES = { "old", "new", "big", "small", "quiet", "busy", "local", "nearby", "crowded", "empty" }
local OBJECT_ADJECTIVES = { "small", "big", "red", "blue", "nice", "new", "cheap", "heavy", "pretty", "green" }
local PREFIXES = {
  "It was a long day.", "The weather was nice.", "Everyone was busy that week.", "It was late.",
  "The sun was out.", "Nobody expected what happened next.", "It was a cold morning in the town.",
  "This happened last year.", "The day started slowly.", "It had rained all night.",
}

-- Composed train templates (opts.vary): an opening that introduces {A}
-- and {B}, then a clause where {S} acts towards the indirect object. Their
-- products give about a thousand templates; any that equals a test template
-- is drawn again.
local OPENINGS = {
  "When {A} and {B} {V} to the {P},", "After {A} and {B} {V} to the {P},", "{A} and {B} {V} to the {P}, and",
  "While {A} and {B} were at the {P},", "Once {A} and {B} got to the {P},", "{A} and {B} met at the {P}. Then",
  "As {A} and {B} {V} to the {P},", "{A} and {B} visited the {P}, where", "Because {A} and {B} were at the {P},",
  "{A} and {B} stayed at the {P} all day, and",
  "Last week, {A} and {B} {V} to the {P}, and", "In the morning, {A} and {B} {V} to the {P}. Then",
  "{A} and {B} were sitting in the {P} when", "After a long day at the {P}, {A} and {B} sat down, and",
  "{A} and {B} {V} to the {P} together. There,", "Both {A} and {B} were at the {P}, so",
}
local MOTION_VERBS = { "went", "walked", "drove", "ran", "came", "moved" }
local CLAUSES = {
  "{S} gave a {O} to", "{S} handed a {O} to", "{S} threw a {O} to", "{S} showed a {O} to", "{S} sold a {O} to",
  "{S} passed a {O} to", "{S} offered a {O} to", "{S} brought a {O} to", "{S} said hello to", "{S} talked to",
  "{S} gave the {O} back to", "later {S} gave a {O} to", "{S} quietly handed a {O} to", "{S} wrote a note to",
  "{S} lent a {O} to", "{S} tossed a {O} to", "{S} returned the {O} to", "{S} read a story to",
  "{S} told a joke to", "{S} kindly gave a {O} to", "{S} decided to give a {O} to", "{S} finally handed the {O} to",
}

local function compose(r, is_test)
  while true do
    local t = r:pick(OPENINGS):gsub("{V}", r:pick(MOTION_VERBS)) .. " " .. r:pick(CLAUSES)
    if not is_test[t] then return t end
  end
end

-- One in TEST_PAIR_MOD unordered name pairs is held out for the test split.
local TEST_PAIR_MOD = 5

local function copy(t)
  local out = {}
  for i, v in ipairs(t) do out[i] = v end
  return out
end

-- Whether the unordered pair {a, b} belongs to the test split. The hash of
-- the sorted pair decides, so the split never depends on a seed or on the
-- order in which names are listed.
local function pair_is_test(a, b)
  if b < a then a, b = b, a end
  return R.hash32("ioi-pair:" .. a .. "|" .. b) % TEST_PAIR_MOD == 0
end
M.pair_is_test = pair_is_test

local function check_split(split, what)
  if split ~= "train" and split ~= "test" then
    error(string.format('%s: split must be "train" or "test", got %s', what, tostring(split)), 3)
  end
end

-- The name list (a copy).
function M.names() return copy(NAMES) end
function M.places() return copy(PLACES) end
function M.objects() return copy(OBJECTS) end

-- The template strings of a split ("train" or "test"; nil: all).
function M.templates(split)
  if split ~= nil then check_split(split, "ioi_templates") end
  local out = {}
  for _, t in ipairs(TEMPLATES) do
    if split == nil or (t.test and "test" or "train") == split then out[#out + 1] = t[1] end
  end
  return out
end

-- The unordered name pairs {a, b} (a before b in list order) of a split.
function M.pairs(split)
  check_split(split, "ioi_pairs")
  local out = {}
  for i = 1, #NAMES do
    for j = i + 1, #NAMES do
      local a, b = NAMES[i], NAMES[j]
      if pair_is_test(a, b) == (split == "test") then out[#out + 1] = { a, b } end
    end
  end
  return out
end

-- Fills a template's slots from the table v.
local function fill(template, v)
  return (template:gsub("{(%u)}", function(k)
    local s = v[k]
    if s == nil then error("ioi: template slot {" .. k .. "} has no value", 0) end
    return s
  end))
end

-- A generator of examples: each call returns the next one. Options as for
-- M.ioi (except n).
function M.generator(opts)
  opts = opts or {}
  local split = opts.split or "train"
  check_split(split, "ioi")
  local seed = opts.seed or 0
  local order = opts.order
  if order ~= nil and order ~= "ABBA" and order ~= "BABA" then
    error('ioi: order must be "ABBA", "BABA" or nil (both), got ' .. tostring(order), 2)
  end
  local templates, pairs = M.templates(split), M.pairs(split)
  local r = R.new(seed, "ioi/" .. split)
  local vary = opts.vary
  local is_test = {}
  for _, t in ipairs(M.templates("test")) do is_test[t] = true end
  return function()
    local template = r:pick(templates)
    if vary then
      if r:int(0, 1) == 1 then template = compose(r, is_test) end
      if r:int(0, 1) == 1 then template = template:gsub("the {P}", "the " .. r:pick(PLACE_ADJECTIVES) .. " {P}") end
      if r:int(0, 1) == 1 then template = template:gsub("a {O}", "a " .. r:pick(OBJECT_ADJECTIVES) .. " {O}") end
      if r:int(0, 1) == 1 then template = r:pick(PREFIXES) .. " " .. template end
    end
    local pair = r:pick(pairs)
    local io, s = pair[1], pair[2]
    if r:int(0, 1) == 1 then io, s = s, io end
    local o = order or (r:int(0, 1) == 0 and "ABBA" or "BABA")
    local a, b = io, s
    if o == "BABA" then a, b = s, io end
    local place, object = r:pick(PLACES), r:pick(OBJECTS)
    -- A third name for the corrupted prompt: the subject's second mention
    -- replaced, so that nothing tells which of A and B is the answer.
    local c
    repeat c = r:pick(NAMES) until c ~= io and c ~= s
    local slots = { A = a, B = b, S = s, P = place, O = object }
    local prompt = fill(template, slots)
    slots.S = c
    return {
      prompt = prompt,
      target = " " .. io,
      distractor = " " .. s,
      template = template,
      names = { a, b },
      io = io, s = s,
      order = o,
      place = place, object = object,
      corrupt = fill(template, slots),
      corrupt_name = c,
    }
  end
end

-- opts: n (default 100), seed (default 0), split ("train" default, or
-- "test"), order ("ABBA", "BABA" or nil for both, drawn at random), vary
-- (default false: for training data, half the prompts from composed
-- templates (an opening with A and B, a clause with S), and adjectives
-- before some places and objects and a sentence before some prompts, so
-- that the names move within and across templates; template then holds
-- the varied template; never a test template).
-- Returns an array of n examples:
--   prompt      the text to read exactly as written (no token prepended)
--   target      " " .. IO, the correct next word
--   distractor  " " .. S, the subject's name
--   template    the template string with its {A} {B} {S} {P} {O} slots
--   names       {A, B}: the names in order of first mention
--   io, s       the two names without the space; order "ABBA" or "BABA"
--   place, object
--   corrupt     the prompt with S's second mention replaced by a third
--               name (corrupt_name): the usual baseline for patching
function M.ioi(opts)
  opts = opts or {}
  local n = opts.n or 100
  if type(n) ~= "number" or n < 0 or n ~= math.floor(n) then
    error("ioi: n must be a non-negative integer, got " .. tostring(n), 2)
  end
  local gen = M.generator(opts)
  local out = {}
  for i = 1, n do out[i] = gen() end
  return out
end

-- The names whose target form (" Name") is not a single token of tok, a
-- tokenizer from lantern.tokenizer. An empty array means every IOI target
-- and distractor is one token.
function M.multi_token_names(tok)
  local bad = {}
  for _, name in ipairs(NAMES) do
    if #tok:encode(" " .. name) ~= 1 then bad[#bad + 1] = name end
  end
  return bad
end

return M
