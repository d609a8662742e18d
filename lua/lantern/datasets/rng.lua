-- lantern.datasets.rng: a small seeded random number generator in pure
-- Lua, so that every dataset is the same on every machine and LuaJIT
-- version (math.random's algorithm is not part of any contract).
--
--   local R = require("lantern.datasets.rng")
--   local r = R.new(42, "ioi/train")   -- seed, optional stream name
--   r:int(1, 6); r:random(); r:pick(list); r:shuffle(list)
--
-- The generator is a Weyl sequence (a counter stepped by an odd constant,
-- period 2^32) passed through a 32-bit avalanche mixer. All arithmetic is on
-- 32-bit integers through LuaJIT's bit library; products are split so that
-- every intermediate stays exact in a double. Streams with different names
-- are independent for practical purposes, which is how train and test
-- splits, or the parts of a mixture, get their own sequences from one seed.
local bit = require("bit")
local band, bxor, rshift, lshift, tobit = bit.band, bit.bxor, bit.rshift, bit.lshift, bit.tobit
local floor = math.floor

local M = {}

-- The low 32 bits of a * b (a, b 32-bit integers). Splitting b into 16-bit
-- halves keeps each product below 2^48, exact in a double.
local function mul32(a, b)
  return tobit(a * band(b, 0xffff) + lshift(tobit(a * rshift(b, 16)), 16))
end

-- A 32-bit mixer (the finaliser of MurmurHash3): every input bit affects
-- every output bit, and it is a bijection.
local function mix32(h)
  h = mul32(bxor(h, rshift(h, 16)), 0x85ebca6b)
  h = mul32(bxor(h, rshift(h, 13)), 0xc2b2ae35)
  return bxor(h, rshift(h, 16))
end

-- As an unsigned number in [0, 2^32).
local function u32(x)
  return x < 0 and x + 4294967296 or x
end

-- FNV-1a over the bytes of s: a stable 32-bit hash, unsigned. Used to put
-- documents and name pairs into splits independently of any seed.
function M.hash32(s)
  local h = tobit(0x811c9dc5)
  for i = 1, #s do h = mul32(bxor(h, s:byte(i)), 16777619) end
  return u32(h)
end

-- A 32-bit state from a seed (integer number or string) and a stream name.
local function seed_state(seed, stream)
  local h
  if type(seed) == "string" then
    h = M.hash32(seed)
  elseif type(seed) == "number" and seed == floor(seed) and seed >= 0 and seed < 2 ^ 53 then
    local lo, hi = seed % 4294967296, floor(seed / 4294967296)
    h = mix32(bxor(mix32(tobit(lo) + 0x68e31da4), tobit(hi)))
  else
    error("rng: the seed must be a non-negative integer or a string, got " .. tostring(seed), 3)
  end
  if stream ~= nil then h = bxor(mix32(tobit(h)), M.hash32(tostring(stream))) end
  return mix32(tobit(h))
end

local Rng = {}
Rng.__index = Rng

-- A generator for seed (non-negative integer below 2^53, or a string) and
-- an optional stream name.
function M.new(seed, stream)
  return setmetatable({ state = seed_state(seed, stream) }, Rng)
end

-- The next 32 random bits, as an unsigned number in [0, 2^32).
function Rng:u32()
  local s = tobit(self.state + 0x9e3779b9)
  self.state = s
  return u32(mix32(s))
end

-- A number in [0, 1) (32 bits of resolution).
function Rng:random()
  return self:u32() / 4294967296
end

-- An integer in [lo, hi], both included (hi - lo below 2^32). The bias of
-- scaling 32 random bits is below 2^-20 for ranges under 4096: far beneath
-- anything a dataset could show.
function Rng:int(lo, hi)
  if hi < lo then error(string.format("rng:int: empty range [%d, %d]", lo, hi), 2) end
  return lo + floor(self:random() * (hi - lo + 1))
end

-- A uniformly chosen element of the non-empty array t.
function Rng:pick(t)
  local n = #t
  if n == 0 then error("rng:pick: empty array", 2) end
  return t[self:int(1, n)]
end

-- Shuffles array t in place (Fisher-Yates) and returns it.
function Rng:shuffle(t)
  for i = #t, 2, -1 do
    local j = self:int(1, i)
    t[i], t[j] = t[j], t[i]
  end
  return t
end

-- k distinct elements of array t, in random order (k <= #t).
function Rng:sample(t, k)
  local n = #t
  if k > n then error(string.format("rng:sample: %d from %d elements", k, n), 2) end
  local idx = {}
  for i = 1, n do idx[i] = i end
  local out = {}
  for i = 1, k do
    local j = self:int(i, n)
    idx[i], idx[j] = idx[j], idx[i]
    out[i] = t[idx[i]]
  end
  return out
end

-- A function returning the elements of array t one at a time, in a fresh
-- shuffled order on every pass over them (endlessly).
function Rng:cycle(t)
  local order, pos = {}, 0
  return function()
    if pos >= #order then
      order = {}
      for i = 1, #t do order[i] = i end
      self:shuffle(order)
      pos = 0
    end
    pos = pos + 1
    return t[order[pos]]
  end
end

-- A new generator derived from this one's next output and a name, so that
-- a consumer can draw without shifting the parent's later draws.
function Rng:fork(name)
  return M.new(self:u32(), name)
end

M.Rng = Rng
return M
