-- lantern.interp.render: activation records as prompt text, in the format
-- of Bills et al. (2023) (docs/interp.md, "Record format"):
--
--   <start>
--   token<TAB>value        one line per token; value an integer 0..10,
--   ...                    or "unknown" when hidden
--   <end>
--
-- A record is {tokens = {...}, acts = {...}} with tokens as ids (rendered
-- through opts.token_str) or as strings; record.strs, when present, gives
-- the strings directly.
local M = {}

-- The note before the repeat of sparse records, unless a template gives its
-- own (header field sparse_note).
M.DEFAULT_SPARSE_NOTE = "The same records again, without the lines whose value is 0:"

-- Records where fewer than this share of the shown values is non-zero are
-- repeated with the zero lines left out, so that the few active tokens are
-- not lost among the silent ones.
M.SPARSE_SHARE = 0.2

-- max over the records of max(a, 0): the activation that maps to 10.
function M.max_activation(records)
  local m = 0
  for _, r in ipairs(records) do
    for _, a in ipairs(r.acts) do
      if a > m then m = a end
    end
  end
  return m
end

-- min(10, floor(10 * max(a, 0) / max_activation)) per value; all zeros when
-- max_activation <= 0.
function M.discretize(acts, max_activation)
  local out = {}
  for i, a in ipairs(acts) do
    if max_activation <= 0 or a <= 0 then
      out[i] = 0
    else
      out[i] = math.min(10, math.floor(10 * a / max_activation))
    end
  end
  return out
end

-- Replaces bytes that are not valid UTF-8 with U+FFFD: a single token can
-- be part of a character, and JSON requests must be valid UTF-8.
function M.valid_utf8(s)
  if not s:find("[\128-\255]") then return s end
  local out, i, n = {}, 1, #s
  while i <= n do
    local c = s:byte(i)
    local len = c < 0x80 and 1 or (c >= 0xC2 and c <= 0xDF) and 2 or (c >= 0xE0 and c <= 0xEF) and 3
                or (c >= 0xF0 and c <= 0xF4) and 4 or 0
    local ok = len > 0 and i + len - 1 <= n
    for k = 1, len - 1 do
      local b = ok and s:byte(i + k)
      if not b or b < 0x80 or b > 0xBF then ok = false end
    end
    -- Overlong three-byte forms, surrogates and code points past U+10FFFF.
    if ok and len == 3 then
      local b = s:byte(i + 1)
      if (c == 0xE0 and b < 0xA0) or (c == 0xED and b > 0x9F) then ok = false end
    elseif ok and len == 4 then
      local b = s:byte(i + 1)
      if (c == 0xF0 and b < 0x90) or (c == 0xF4 and b > 0x8F) then ok = false end
    end
    if ok then
      out[#out + 1] = s:sub(i, i + len - 1)
      i = i + len
    else
      out[#out + 1] = "\239\191\189"
      i = i + 1
    end
  end
  return table.concat(out)
end

local escapes = {["\n"] = "\\n", ["\t"] = "\\t", ["\r"] = "\\r"}

-- A token as it appears on its line: newline, tab and carriage return are
-- written \n, \t, \r (they would break the line format), invalid UTF-8
-- becomes U+FFFD; everything else, leading spaces included, is kept.
function M.token_text(s)
  return M.valid_utf8((s:gsub("[\n\t\r]", escapes)))
end

-- The display strings of a record's tokens.
function M.token_strings(record, opts)
  if record.strs then return record.strs end
  local token_str = opts and opts.token_str
  local out = {}
  for i, t in ipairs(record.tokens) do
    if type(t) == "string" then
      out[i] = t
    elseif token_str then
      out[i] = token_str(t)
    else
      -- No tokenizer: the id in brackets, still one token per line.
      out[i] = "[" .. tostring(t) .. "]"
    end
  end
  return out
end

-- The lines of one record (without <start>/<end>). values: integers, or
-- nil for "unknown" everywhere; omit_zeros drops the lines whose value is 0.
local function record_lines(strs, values, omit_zeros, out)
  for i, s in ipairs(strs) do
    local v = values and values[i]
    if not (omit_zeros and v == 0) then
      out[#out + 1] = M.token_text(s) .. "\t" .. (values and tostring(v) or "unknown")
    end
  end
end

local function block(strs, values, omit_zeros)
  local lines = {"<start>"}
  record_lines(strs, values, omit_zeros, lines)
  lines[#lines + 1] = "<end>"
  return table.concat(lines, "\n") .. "\n"
end

-- The text of records: each "<start>\n" lines "<end>\n", concatenated.
-- opts:
--   max_activation  scale (default: M.max_activation(records))
--   hide            write "unknown" for every value (simulator prompts)
--   token_str       id -> string
--   sparse_note     the line before the zero-free repeat
-- Returns the text and {max_activation=, nonzero_share=, repeated=}.
function M.records(records, opts)
  opts = opts or {}
  local max_act = opts.max_activation or M.max_activation(records)
  local parts, all_values, strs = {}, {}, {}
  local total, nonzero = 0, 0
  for i, r in ipairs(records) do
    strs[i] = M.token_strings(r, opts)
    if #strs[i] ~= #r.acts and not opts.hide then
      error(string.format("render: record %d has %d tokens but %d activations", i, #strs[i], #r.acts), 2)
    end
    local values = not opts.hide and M.discretize(r.acts, max_act) or nil
    all_values[i] = values
    if values then
      for _, v in ipairs(values) do
        total = total + 1
        if v ~= 0 then nonzero = nonzero + 1 end
      end
    end
    parts[#parts + 1] = block(strs[i], values, false)
  end
  local share = total > 0 and nonzero / total or 0
  local repeated = not opts.hide and total > 0 and share < M.SPARSE_SHARE
  if repeated then
    parts[#parts + 1] = "\n" .. (opts.sparse_note or M.DEFAULT_SPARSE_NOTE) .. "\n"
    for i = 1, #records do parts[#parts + 1] = block(strs[i], all_values[i], true) end
  end
  return table.concat(parts), {max_activation = max_act, nonzero_share = share, repeated = repeated}
end

return M
