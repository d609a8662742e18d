-- lantern.tensor: float32 tensors whose memory is owned by C.
--
-- A Tensor is a contiguous row-major float array with a shape (a Lua array
-- of dimension sizes). Memory comes from lt_alloc and is freed by the
-- garbage collector (ffi.gc) when the last Tensor or view using it is gone:
-- a view keeps its parent's storage alive, so no view ever dangles.
-- Indices given to get/set/select are 0-based, like the model's own indices.
local ffi = require("ffi")
local F = require("lantern.ffi")
local C = F.C

local Tensor = {}
Tensor.__index = Tensor

local function numel_of(shape)
  local n = 1
  for i = 1, #shape do n = n * shape[i] end
  return n
end

local function strides_of(shape)
  local s, acc = {}, 1
  for i = #shape, 1, -1 do s[i] = acc; acc = acc * shape[i] end
  return s
end

local function copy_shape(shape)
  local s = {}
  for i = 1, #shape do
    local d = shape[i]
    assert(type(d) == "number" and d >= 0 and d == math.floor(d), "tensor: shape entries must be non-negative integers")
    s[i] = d
  end
  return s
end

-- Wraps ptr (float*) with a shape. storage is the cdata that owns the
-- memory (kept alive by the tensor); with own = true, ptr itself becomes the
-- owner and is freed by lt_free when collected.
function Tensor.wrap(ptr, shape, storage, own)
  if own then
    storage = ffi.gc(ffi.cast("float *", ptr), C.lt_free)
    ptr = storage
  end
  local t = setmetatable({}, Tensor)
  t.data = ffi.cast("float *", ptr)
  t.shape = copy_shape(shape)
  t.numel = numel_of(t.shape)
  t.strides = strides_of(t.shape)
  t._storage = storage
  return t
end

-- A new zeroed tensor of the given shape.
function Tensor.zeros(shape)
  local n = numel_of(shape)
  local p = C.lt_alloc(n)
  if p == nil then error("tensor: " .. F.last_error(), 2) end
  return Tensor.wrap(p, shape, nil, true)
end

local function infer_shape(tbl, shape, depth)
  shape[depth] = #tbl
  if type(tbl[1]) == "table" then infer_shape(tbl[1], shape, depth + 1) end
  return shape
end

-- A tensor from a nested Lua table of numbers (or a copy of a Tensor).
function Tensor.new(src)
  if getmetatable(src) == Tensor then return src:clone() end
  assert(type(src) == "table", "tensor: expected a nested table of numbers")
  local shape = infer_shape(src, {}, 1)
  local t = Tensor.zeros(shape)
  local k = 0
  local function fill(x, depth)
    if depth > #shape then
      if type(x) ~= "number" then error("tensor: non-number element", 3) end
      t.data[k] = x
      k = k + 1
      return
    end
    if type(x) ~= "table" or #x ~= shape[depth] then error("tensor: ragged nested table", 3) end
    for i = 1, #x do fill(x[i], depth + 1) end
  end
  fill(src, 1)
  return t
end

function Tensor.is(x) return getmetatable(x) == Tensor end

-- The flat offset of a 0-based index tuple, negative entries counting from
-- the end of their dimension.
function Tensor:offset(...)
  local n = select("#", ...)
  if n ~= #self.shape then
    error(string.format("tensor: %d indices for a %d-dimensional tensor", n, #self.shape), 3)
  end
  local off = 0
  for d = 1, n do
    local i = select(d, ...)
    local size = self.shape[d]
    if i < 0 then i = i + size end
    if i < 0 or i >= size or i ~= math.floor(i) then
      error(string.format("tensor: index %s out of range for dimension %d of size %d", tostring(select(d, ...)), d - 1, size), 3)
    end
    off = off + i * self.strides[d]
  end
  return off
end

function Tensor:get(...) return self.data[self:offset(...)] end

function Tensor:set(v, ...)
  self.data[self:offset(...)] = v
  return self
end

function Tensor:dim() return #self.shape end

-- A view of entry i (0-based, negative from the end) along the first
-- dimension: shares memory with self.
function Tensor:select(i)
  local size = self.shape[1]
  if not size then error("tensor: select on a 0-dimensional tensor", 2) end
  if i < 0 then i = i + size end
  if i < 0 or i >= size then error(string.format("tensor: select %d out of range (size %d)", i, size), 2) end
  local shape = {}
  for d = 2, #self.shape do shape[d - 1] = self.shape[d] end
  return Tensor.wrap(self.data + i * self.strides[1], shape, self._storage or self)
end

-- A view with another shape and the same number of elements.
function Tensor:reshape(shape)
  shape = copy_shape(shape)
  if numel_of(shape) ~= self.numel then
    error(string.format("tensor: cannot reshape %d elements to [%s]", self.numel, table.concat(shape, ", ")), 2)
  end
  return Tensor.wrap(self.data, shape, self._storage or self)
end

function Tensor:clone()
  local t = Tensor.zeros(self.shape)
  ffi.copy(t.data, self.data, self.numel * 4)
  return t
end

-- Copies src (same number of elements) into self.
function Tensor:copy_(src)
  if src.numel ~= self.numel then
    error(string.format("tensor: copy of %d elements into %d", src.numel, self.numel), 2)
  end
  ffi.copy(self.data, src.data, self.numel * 4)
  return self
end

function Tensor:fill_(v)
  for i = 0, self.numel - 1 do self.data[i] = v end
  return self
end

function Tensor:totable()
  local shape, data = self.shape, self.data
  if #shape == 0 then return data[0] end
  local k = 0
  local function build(depth)
    local out = {}
    if depth == #shape then
      for i = 1, shape[depth] do out[i] = data[k]; k = k + 1 end
    else
      for i = 1, shape[depth] do out[i] = build(depth + 1) end
    end
    return out
  end
  return build(1)
end

-- Flat array (1-based) of all values.
function Tensor:tolist()
  local out = {}
  for i = 0, self.numel - 1 do out[i + 1] = self.data[i] end
  return out
end

local function same_shape(a, b, what)
  if a.numel ~= b.numel or #a.shape ~= #b.shape then
    error(string.format("tensor: %s of [%s] and [%s]", what, table.concat(a.shape, ", "), table.concat(b.shape, ", ")), 3)
  end
  for i = 1, #a.shape do
    if a.shape[i] ~= b.shape[i] then
      error(string.format("tensor: %s of [%s] and [%s]", what, table.concat(a.shape, ", "), table.concat(b.shape, ", ")), 3)
    end
  end
end

-- Elementwise operations returning a new tensor (float32 results, as in C).
local function elementwise(name, f)
  Tensor[name] = function(a, b)
    local out = Tensor.zeros(a.shape)
    local o, x = out.data, a.data
    if type(b) == "number" then
      for i = 0, a.numel - 1 do o[i] = f(x[i], b) end
    else
      same_shape(a, b, name)
      local y = b.data
      for i = 0, a.numel - 1 do o[i] = f(x[i], y[i]) end
    end
    return out
  end
end
elementwise("add", function(x, y) return x + y end)
elementwise("sub", function(x, y) return x - y end)
elementwise("mul", function(x, y) return x * y end)
elementwise("div", function(x, y) return x / y end)
Tensor.__add = Tensor.add
Tensor.__sub = Tensor.sub
Tensor.__mul = function(a, b) if type(a) == "number" then return b:mul(a) end return a:mul(b) end
Tensor.__div = Tensor.div
Tensor.__unm = function(a) return a:mul(-1) end
Tensor.__len = function(a) return a.shape[1] or 0 end

function Tensor:sum()
  local s = 0
  for i = 0, self.numel - 1 do s = s + self.data[i] end
  return s
end

function Tensor:mean() return self:sum() / self.numel end

function Tensor:norm()
  local s = 0
  for i = 0, self.numel - 1 do s = s + self.data[i] * self.data[i] end
  return math.sqrt(s)
end

function Tensor:dot(other)
  same_shape(self, other, "dot")
  local s = 0
  for i = 0, self.numel - 1 do s = s + self.data[i] * other.data[i] end
  return s
end

function Tensor:max()
  local m, at = -math.huge, 0
  for i = 0, self.numel - 1 do if self.data[i] > m then m, at = self.data[i], i end end
  return m, at
end

function Tensor:min()
  local m, at = math.huge, 0
  for i = 0, self.numel - 1 do if self.data[i] < m then m, at = self.data[i], i end end
  return m, at
end

-- Largest absolute difference from another tensor of the same shape.
function Tensor:max_abs_diff(other)
  same_shape(self, other, "max_abs_diff")
  local m = 0
  for i = 0, self.numel - 1 do
    local d = math.abs(self.data[i] - other.data[i])
    if d > m or d ~= d then m = d end
  end
  return m
end

-- Index of the largest value along the last dimension (lowest index on
-- ties): a number for a 1-D tensor, else a Lua array with one index per row.
function Tensor:argmax()
  local n = self.shape[#self.shape]
  local rows = self.numel / n
  local out = {}
  for r = 0, rows - 1 do
    local base, best = r * n, 0
    for i = 1, n - 1 do if self.data[base + i] > self.data[base + best] then best = i end end
    out[r + 1] = best
  end
  if #self.shape == 1 then return out[1] end
  return out
end

-- The k largest values of a 1-D tensor, in decreasing order: values and
-- 0-based indices as Lua arrays. With largest = false, the k smallest.
function Tensor:topk(k, largest)
  if #self.shape ~= 1 then error("tensor: topk needs a 1-D tensor (use select first)", 2) end
  k = math.min(k, self.numel)
  local sign = largest == false and -1 or 1
  -- a bounded min-heap would be faster for huge k; k is small in practice
  local idx, vals = {}, {}
  for i = 0, self.numel - 1 do
    local v = sign * self.data[i]
    if #idx < k or v > vals[#vals] then
      local pos = #idx + 1
      if #idx == k then pos = k end
      idx[pos], vals[pos] = i, v
      while pos > 1 and vals[pos] > vals[pos - 1] do
        idx[pos], idx[pos - 1] = idx[pos - 1], idx[pos]
        vals[pos], vals[pos - 1] = vals[pos - 1], vals[pos]
        pos = pos - 1
      end
    end
  end
  for i = 1, #vals do vals[i] = sign * vals[i] end
  return vals, idx
end

local function fmt(v)
  if v ~= v then return "nan" end
  if v == math.huge then return "inf" end
  if v == -math.huge then return "-inf" end
  return string.format("%.4g", v)
end

function Tensor:__tostring()
  local parts = {}
  local shape, data = self.shape, self.data
  local edge = 3
  local function render(depth, base, indent)
    local n = shape[depth]
    local items = {}
    local function item(i)
      if depth == #shape then return fmt(data[base + i]) end
      return render(depth + 1, base + i * self.strides[depth], indent .. " ")
    end
    if n <= 2 * edge then
      for i = 0, n - 1 do items[#items + 1] = item(i) end
    else
      for i = 0, edge - 1 do items[#items + 1] = item(i) end
      items[#items + 1] = "..."
      for i = n - edge, n - 1 do items[#items + 1] = item(i) end
    end
    local sep = depth == #shape and ", " or (",\n" .. indent .. " ")
    return "[" .. table.concat(items, sep) .. "]"
  end
  parts[1] = string.format("Tensor[%s] float32", table.concat(shape, ", "))
  if #shape == 0 then parts[2] = fmt(data[0])
  elseif self.numel > 0 then parts[2] = render(1, 0, "") end
  return table.concat(parts, "\n")
end

return Tensor
