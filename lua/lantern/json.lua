-- lantern.json: the JSON codec of lantern (store values, LLM requests and
-- responses, the request cache keys). Also reachable as
-- require("lantern.store").json.
--
-- A small JSON codec for metadata values. Objects are written with sorted
-- keys, so equal tables give equal bytes. Integers up to 2^53 are written
-- without a fraction, other numbers with the fewest digits that read back
-- exactly; NaN and infinities are errors (JSON has no such values, and a
-- score must be null, never NaN). Strings are written byte for byte with
-- the required escapes. Decoding: arrays come back with json.array's
-- metatable (so [] stays []), null is json.null inside arrays and an absent
-- member inside objects.
local json = {}

json.null = setmetatable({}, {__tostring = function() return "json.null" end})
local array_mt = {__name = "json.array"}

-- Marks t (default {}) as a JSON array, for empty arrays.
function json.array(t)
  return setmetatable(t or {}, array_mt)
end

local escapes = {['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f',
                 ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t'}

local function encode_string(s)
  return '"' .. s:gsub('[%z\1-\31"\\]', function(c)
    return escapes[c] or string.format("\\u%04x", c:byte())
  end) .. '"'
end

local function encode_number(x, path)
  if x ~= x or x == math.huge or x == -math.huge then
    local what = x ~= x and "NaN" or (x > 0 and "infinity" or "-infinity")
    error(string.format("json: cannot encode %s at %s (use json.null for an undefined value)",
                        what, path), 0)
  end
  if x == math.floor(x) and math.abs(x) <= 2^53 then return string.format("%.0f", x) end
  for _, fmt in ipairs{"%.15g", "%.16g"} do
    local s = string.format(fmt, x)
    if tonumber(s) == x then return s end
  end
  return string.format("%.17g", x)
end

local encode_value

local function encode_table(t, path, seen, out)
  if seen[t] then error("json: cycle at " .. path, 0) end
  seen[t] = true
  local n, count, strings = #t, 0, 0
  for k in pairs(t) do
    count = count + 1
    if type(k) == "string" then strings = strings + 1 end
  end
  if getmetatable(t) == array_mt or (count > 0 and count == n) then
    if strings > 0 or count ~= n then error("json: array at " .. path .. " has non-index keys", 0) end
    out[#out + 1] = "["
    for i = 1, n do
      if i > 1 then out[#out + 1] = "," end
      encode_value(t[i], path .. "[" .. i .. "]", seen, out)
    end
    out[#out + 1] = "]"
  else
    if strings ~= count then
      error("json: table at " .. path .. " mixes string and other keys (or is a sparse array)", 0)
    end
    local keys = {}
    for k in pairs(t) do keys[#keys + 1] = k end
    table.sort(keys)
    out[#out + 1] = "{"
    for i, k in ipairs(keys) do
      if i > 1 then out[#out + 1] = "," end
      out[#out + 1] = encode_string(k)
      out[#out + 1] = ":"
      encode_value(t[k], path .. "." .. k, seen, out)
    end
    out[#out + 1] = "}"
  end
  seen[t] = nil
end

function encode_value(v, path, seen, out)
  local tv = type(v)
  if v == json.null then out[#out + 1] = "null"
  elseif tv == "string" then out[#out + 1] = encode_string(v)
  elseif tv == "number" then out[#out + 1] = encode_number(v, path)
  elseif tv == "boolean" then out[#out + 1] = tostring(v)
  elseif tv == "table" then encode_table(v, path, seen, out)
  elseif tv == "cdata" and tonumber(v) then out[#out + 1] = encode_number(tonumber(v), path)
  else error("json: cannot encode a " .. tv .. " at " .. path, 0) end
end

-- The JSON text of v (a table, string, number, boolean or json.null).
function json.encode(v)
  local out = {}
  encode_value(v, "$", {}, out)
  return table.concat(out)
end

local unescapes = {['"'] = '"', ['\\'] = '\\', ['/'] = '/', b = '\b', f = '\f', n = '\n', r = '\r', t = '\t'}

local function utf8_char(cp)
  if cp < 0x80 then return string.char(cp) end
  if cp < 0x800 then return string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64) end
  if cp < 0x10000 then
    return string.char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
  end
  return string.char(0xF0 + math.floor(cp / 262144), 0x80 + math.floor(cp / 4096) % 64,
                     0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
end

-- The value of JSON text s; an error names the byte offset of a fault.
function json.decode(s)
  if type(s) ~= "string" then error("json: decode expects a string, got " .. type(s), 2) end
  local pos = 1
  local function fault(msg) error(string.format("json: %s at byte %d", msg, pos), 0) end
  local function skip() pos = s:find("[^ \t\r\n]", pos) or #s + 1 end
  local value

  local function str()
    local parts, i = {}, pos + 1
    while true do
      local j = s:find('[%z\1-\31"\\]', i)
      if not j then pos = i; fault("unterminated string") end
      parts[#parts + 1] = s:sub(i, j - 1)
      local c = s:sub(j, j)
      if c == '"' then pos = j + 1; return table.concat(parts) end
      pos = j
      if c ~= "\\" then fault("control character in a string") end
      local e = s:sub(j + 1, j + 1)
      if unescapes[e] then
        parts[#parts + 1] = unescapes[e]
        i = j + 2
      elseif e == "u" then
        local hex = s:match("^%x%x%x%x", j + 2)
        if not hex then fault("bad \\u escape") end
        local cp = tonumber(hex, 16)
        i = j + 6
        if cp >= 0xD800 and cp <= 0xDBFF then
          local lo = s:match("^\\u(%x%x%x%x)", i)
          local l = lo and tonumber(lo, 16)
          if l and l >= 0xDC00 and l <= 0xDFFF then
            cp = 0x10000 + (cp - 0xD800) * 0x400 + (l - 0xDC00)
            i = i + 6
          else
            cp = 0xFFFD   -- a lone surrogate has no UTF-8 form
          end
        elseif cp >= 0xDC00 and cp <= 0xDFFF then
          cp = 0xFFFD
        end
        parts[#parts + 1] = utf8_char(cp)
      else
        fault("bad escape")
      end
    end
  end

  local function num()
    local m = s:match("^-?%d+%.?%d*[eE][-+]?%d+", pos) or s:match("^-?%d+%.?%d*", pos)
    if not m or m:match("^-?0%d") or m:match("%.$") or m:match("%.[eE]") then fault("bad number") end
    pos = pos + #m
    return tonumber(m)
  end

  local depth = 0
  function value()
    skip()
    local c = s:sub(pos, pos)
    if c == "{" then
      depth = depth + 1
      if depth > 500 then fault("nesting too deep") end
      pos = pos + 1
      local t = {}
      skip()
      if s:sub(pos, pos) == "}" then pos = pos + 1; depth = depth - 1; return t end
      while true do
        skip()
        if s:sub(pos, pos) ~= '"' then fault("expected a string key") end
        local k = str()
        skip()
        if s:sub(pos, pos) ~= ":" then fault("expected ':'") end
        pos = pos + 1
        local v = value()
        if v ~= json.null then t[k] = v end
        skip()
        c = s:sub(pos, pos)
        pos = pos + 1
        if c == "}" then break end
        if c ~= "," then pos = pos - 1; fault("expected ',' or '}'") end
      end
      depth = depth - 1
      return t
    elseif c == "[" then
      depth = depth + 1
      if depth > 500 then fault("nesting too deep") end
      pos = pos + 1
      local t = json.array()
      skip()
      if s:sub(pos, pos) == "]" then pos = pos + 1; depth = depth - 1; return t end
      while true do
        t[#t + 1] = value()
        skip()
        c = s:sub(pos, pos)
        pos = pos + 1
        if c == "]" then break end
        if c ~= "," then pos = pos - 1; fault("expected ',' or ']'") end
      end
      depth = depth - 1
      return t
    elseif c == '"' then return str()
    elseif c == "-" or c:match("%d") then return num()
    elseif s:sub(pos, pos + 3) == "true" then pos = pos + 4; return true
    elseif s:sub(pos, pos + 4) == "false" then pos = pos + 5; return false
    elseif s:sub(pos, pos + 3) == "null" then pos = pos + 4; return json.null
    end
    fault(c == "" and "unexpected end" or "unexpected '" .. c .. "'")
  end

  local v = value()
  skip()
  if pos <= #s then fault("trailing characters") end
  return v
end

return json
