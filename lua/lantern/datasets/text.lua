-- lantern.datasets.text: natural English text from a Debian package.
--
-- The corpus is the fortune cookie collection of the Debian packages
-- `fortunes` and `fortunes-min` (BSD licensed; see docs/datasets.md): about
-- 2.5 MB of quotations, jokes, short stories, poems and definitions, one
-- document per cookie. scripts/setup installs it.
--
-- Documents are cleaned for a small language model: terminal overstrikes
-- (x BACKSPACE y) resolved, other control characters dropped, each line's
-- runs of blanks and tabs squeezed to one space and trimmed, blank lines
-- squeezed. Documents that are mostly not letters (ASCII art, line noise)
-- are left out, and so are exact repeats.
--
-- The split is by document: a stable hash of the cleaned text puts about
-- one document in TEST_MOD into "test", the rest into "train", the same on
-- every machine with the same package version.
local R = require("lantern.datasets.rng")

local M = {}

M.package = "fortunes"
M.packages = { "fortunes", "fortunes-min" }
M.license = "BSD (fortune-mod; /usr/share/doc/fortunes/copyright)"
M.dir = "/usr/share/games/fortunes"

local TEST_MOD = 10
-- Files of the package that are not prose: pictures, and Latin phrases.
local SKIP = { ["ascii-art"] = true, ["translate-me"] = true }
local MIN_LETTER_FRACTION = 0.6

local function missing_error(detail)
  error(string.format(
    "lt.datasets.text: the natural-text corpus (Debian package '%s') is not installed (%s); " ..
    "install it with: sudo apt-get install -y %s   (scripts/setup installs it)",
    M.package, detail, table.concat(M.packages, " ")), 0)
end

local exists = require("lantern.files").exists

-- The cookie files (full paths, sorted): from dpkg's file lists of the
-- packages, which name exactly what they installed; a plain directory
-- listing when those lists are absent.
local files_cache
function M.files()
  if files_cache then return files_cache end
  local seen, out = {}, {}
  local function consider(path)
    local name = path:match("^" .. M.dir:gsub("%p", "%%%0") .. "/([^/]+)$")
    if name and not name:find(".", 1, true) and not SKIP[name] and not seen[path] and exists(path) then
      seen[path] = true
      out[#out + 1] = path
    end
  end
  for _, pkg in ipairs(M.packages) do
    local f = io.open("/var/lib/dpkg/info/" .. pkg .. ".list", "rb")
    if f then
      for line in f:lines() do consider(line) end
      f:close()
    end
  end
  if #out == 0 then
    local p = io.popen("ls -1 '" .. M.dir .. "' 2>/dev/null")
    if p then
      for name in p:lines() do consider(M.dir .. "/" .. name) end
      p:close()
    end
  end
  if #out == 0 then missing_error(M.dir .. " has no cookie files") end
  table.sort(out)
  files_cache = out
  return out
end

-- Resolves overstrikes and drops control characters other than newline
-- and tab: "_\bx" is how old terminals underlined x.
local function strip_controls(s)
  if not s:find("[\1-\8\11-\31\127]") then return s end
  local out = {}
  for i = 1, #s do
    local c = s:byte(i)
    if c == 8 then
      if #out > 0 and out[#out] ~= "\n" then out[#out] = nil end
    elseif c == 10 or c == 9 or (c >= 32 and c ~= 127) then
      out[#out + 1] = string.char(c)
    end
  end
  return table.concat(out)
end

-- The cleaned document, or nil when nothing like prose is left.
local function clean(doc)
  doc = strip_controls(doc)
  local lines, blank = {}, false
  for line in (doc .. "\n"):gmatch("([^\n]*)\n") do
    line = line:gsub("[ \t]+", " "):gsub("^ ", ""):gsub(" $", "")
    if line == "" then
      blank = #lines > 0
    else
      if blank then lines[#lines + 1] = "" end
      lines[#lines + 1] = line
      blank = false
    end
  end
  local text = table.concat(lines, "\n")
  local letters = select(2, text:gsub("%a", ""))
  local visible = select(2, text:gsub("%S", ""))
  if visible == 0 or letters < MIN_LETTER_FRACTION * visible then return nil end
  return text
end

-- Every cleaned document of the corpus in file order, each once:
-- { {text=..., test=bool}, ... }.
local docs_cache
local function all_docs()
  if docs_cache then return docs_cache end
  local out, seen = {}, {}
  for _, path in ipairs(M.files()) do
    local f = io.open(path, "rb")
    if not f then missing_error("cannot read " .. path) end
    local data = f:read("*a")
    f:close()
    -- Cookies are separated by lines holding a single "%".
    for raw in (data .. "\n%\n"):gmatch("(.-)\n%%\n") do
      local text = clean(raw)
      if text and not seen[text] then
        seen[text] = true
        out[#out + 1] = { text = text, test = R.hash32(text) % TEST_MOD == 0 }
      end
    end
  end
  docs_cache = out
  return out
end

local function check_split(split, what)
  if split ~= "train" and split ~= "test" then
    error(string.format('%s: split must be "train" or "test", got %s', what, tostring(split)), 3)
  end
end

-- The documents of a split, in corpus order (an array of strings, shared:
-- copy before changing it).
local split_cache = {}
function M.docs(split)
  split = split or "train"
  check_split(split, "text_docs")
  if split_cache[split] then return split_cache[split] end
  local out = {}
  for _, d in ipairs(all_docs()) do
    if d.test == (split == "test") then out[#out + 1] = d.text end
  end
  split_cache[split] = out
  return out
end

-- opts: split ("train" default, or "test"), max_bytes (default: all),
-- sep (between documents, default "\n\n"), seed (when given, the documents
-- are shuffled by it first; default: corpus order).
-- Returns the documents of the split joined by sep, whole documents only,
-- as many as fit in max_bytes (at least one, cut to max_bytes if the first
-- alone is longer).
function M.text(opts)
  opts = opts or {}
  local docs = M.docs(opts.split or "train")
  local max_bytes, sep = opts.max_bytes or math.huge, opts.sep or "\n\n"
  if type(max_bytes) ~= "number" or max_bytes < 1 then
    error("text: max_bytes must be a positive number, got " .. tostring(opts.max_bytes), 2)
  end
  if opts.seed ~= nil then
    local shuffled = {}
    for i, d in ipairs(docs) do shuffled[i] = d end
    docs = R.new(opts.seed, "text/order"):shuffle(shuffled)
  end
  local parts, total = {}, 0
  for _, d in ipairs(docs) do
    local add = #d + (#parts > 0 and #sep or 0)
    if total + add > max_bytes then
      if #parts == 0 then parts[1] = d:sub(1, max_bytes) end
      break
    end
    parts[#parts + 1] = d
    total = total + add
  end
  return table.concat(parts, sep)
end

return M
