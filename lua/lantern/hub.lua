-- lantern.hub: fetches GPT-2 style models from the Hugging Face hub into
-- the local store, through the C downloader (lt_http_download).
--
--   hub.fetch("gpt2")                  -> store/models/gpt2
--   hub.fetch("someone/tiny-gpt2")     -> store/models/someone--tiny-gpt2
--
-- Files come from ENDPOINT/REPO/resolve/main/FILE, where ENDPOINT is
-- opts.endpoint, else $HF_ENDPOINT, else https://huggingface.co; a token
-- (opts.token, else $HF_TOKEN) is sent as a bearer token for private or
-- gated repositories.
local ffi = require("ffi")
local F = require("lantern.ffi")

local M = {}

M.default_endpoint = "https://huggingface.co"

-- What a model directory needs. The small files come first so that a repo
-- lacking a tokenizer fails in seconds, not after the weights downloaded.
M.files = { "config.json", "vocab.json", "merges.txt", "model.safetensors" }

-- Short names and their canonical repos: the hub redirects "gpt2" to
-- "openai-community/gpt2", but asking for the canonical id saves a round
-- trip and does not depend on the redirect staying in place.
M.aliases = {
  ["gpt2"] = "openai-community/gpt2",
  ["gpt2-medium"] = "openai-community/gpt2-medium",
  ["gpt2-large"] = "openai-community/gpt2-large",
  ["gpt2-xl"] = "openai-community/gpt2-xl",
  ["distilgpt2"] = "distilbert/distilgpt2",
}

-- mkdir and isatty from libc; pcall because another module may have
-- declared them already (a redefinition is an error in LuaJIT).
pcall(ffi.cdef, "int mkdir(const char *path, unsigned int mode);")
pcall(ffi.cdef, "int isatty(int fd);")

local function alias_of(repo)
  for short, id in pairs(M.aliases) do
    if id == repo then return short end
  end
end

-- The hub repo id of a model name: an alias, or "owner/name" as given.
-- Names are checked so that they cannot escape the store directory.
function M.repo_id(name)
  if type(name) ~= "string" then error("model name must be a string", 2) end
  if M.aliases[name] then return M.aliases[name] end
  local owner, repo = name:match("^([%w][%w%-_.]*)/([%w][%w%-_.]*)$")
  if not owner or owner:find("..", 1, true) or repo:find("..", 1, true) then
    local shorts = {}
    for short in pairs(M.aliases) do shorts[#shorts + 1] = short end
    table.sort(shorts)
    error(string.format("unknown model name '%s': use %s or a hub repo id 'owner/name'",
                        name, table.concat(shorts, ", ")), 2)
  end
  return name
end

-- Where a model is stored by default: store/models/SHORT for the aliases
-- (also when asked by their repo id), store/models/OWNER--NAME otherwise.
-- "--" because "/" would nest directories and a bare NAME could collide
-- between owners; the hub's own cache uses the same separator.
function M.model_dir(name)
  local repo = M.repo_id(name)
  local short = alias_of(repo) or repo:gsub("/", "--")
  return F.root .. "/store/models/" .. short
end

function M.url(endpoint, repo, file)
  return endpoint:gsub("/+$", "") .. "/" .. repo .. "/resolve/main/" .. file
end

local exists = require("lantern.files").exists

-- mkdir -p: creates each missing directory along path.
local function make_dirs(path)
  local prefix = path:sub(1, 1) == "/" and "/" or ""
  for part in path:gmatch("[^/]+") do
    prefix = prefix .. part
    if ffi.C.mkdir(prefix, tonumber("755", 8)) ~= 0 and not exists(prefix) then
      error(string.format("cannot create directory %s (errno %d)", prefix, ffi.errno()), 0)
    end
    prefix = prefix .. "/"
  end
end

local function nonempty(s)
  if s and s ~= "" then return s end
end

-- Downloads the files of model `name` (see M.repo_id) that are not already
-- in its directory. opts (all optional):
--   dir       target directory (default M.model_dir(name))
--   endpoint  hub base URL (default $HF_ENDPOINT or huggingface.co)
--   token     bearer token (default $HF_TOKEN)
--   timeout   seconds without data before giving up (default 60)
--   progress  true: a progress bar on stderr
--   log       function(line) for "downloading"/"already present" lines
--             (default: stderr)
-- Returns the directory and a list of {file=, path=, status=} with status
-- "downloaded" or "present". Raises an error naming the file and the URL;
-- the failed file leaves nothing behind, files completed before it stay
-- (a later fetch skips them).
function M.fetch(name, opts)
  opts = opts or {}
  local repo = M.repo_id(name)
  local dir = opts.dir or M.model_dir(name)
  local endpoint = nonempty(opts.endpoint) or nonempty(os.getenv("HF_ENDPOINT")) or M.default_endpoint
  local token = nonempty(opts.token) or nonempty(os.getenv("HF_TOKEN"))
  local log = opts.log or function(line) io.stderr:write(line, "\n") end
  make_dirs(dir)
  local report = {}
  for _, file in ipairs(M.files) do
    local path = dir .. "/" .. file
    local status
    if exists(path) then
      log(string.format("%s: %s already present, skipped", name, path))
      status = "present"
    else
      local url = M.url(endpoint, repo, file)
      log(string.format("%s: downloading %s", name, url))
      if F.C.lt_http_download(url, path, token, opts.timeout or 0, opts.progress and 1 or 0) ~= 0 then
        local msg = F.last_error()
        if not msg:find(url, 1, true) then msg = msg .. " (" .. url .. ")" end
        error(string.format("cannot fetch %s of %s: %s", file, name, msg), 0)
      end
      status = "downloaded"
    end
    report[#report + 1] = { file = file, path = path, status = status }
  end
  return dir, report
end

-- True when stderr is a terminal (where a progress bar makes sense).
function M.stderr_is_tty()
  return ffi.C.isatty(2) == 1
end

return M
