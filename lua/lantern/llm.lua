-- lantern.llm: a client for OpenAI-compatible APIs (OpenAI, vLLM,
-- llama.cpp's server, Ollama) with a persistent response cache in the
-- store. HTTP is done in C (core/src/llm.c: concurrency, timeouts, retries);
-- JSON and the cache here. docs/interp.md has the details.
--
--   local llm = require("lantern.llm")
--   local c = llm.client{store = st}            -- OPENAI_BASE_URL, OPENAI_API_KEY
--   local res = c:chat{{model = "gpt-4o-mini", messages = {{role = "user", content = "hi"}}}}
--   print(res[1].content or res[1].error)
--
-- Results never raise for a failed request: each result has either .data
-- (the decoded response) or .error (a message), so a batch goes on.
local ffi = require("ffi")
local F = require("lantern.ffi")
local json = require("lantern.json")
local C = F.C

local M = {}

local CACHE_DB = "llm_cache"
local CACHE_VERSION = 1

-- SHA-256 (hex) of a string, from the C core.
function M.sha256(s)
  local hex = ffi.new("char[65]")
  C.lt_sha256_hex(s, #s, hex)
  return ffi.string(hex, 64)
end

-- The canonical text of a request: the path, a newline, and the body as
-- JSON with sorted keys (lantern.json). Equal requests give equal text
-- whatever the order in which their tables were built.
function M.canonical(path, body)
  return path .. "\n" .. json.encode(body)
end

-- The cache key of a request: "llm/" .. sha256(canonical text). The base
-- URL and the API key are not part of it: the model name in the body
-- identifies the model, so answers cached from one server serve offline
-- runs without naming it again.
function M.cache_key(path, body)
  return "llm/" .. M.sha256(M.canonical(path, body))
end

local function env(name)
  local v = os.getenv(name)
  if v == nil or v == "" then return nil end
  return v
end

local Client = {}
Client.__index = Client

-- A client. opts (all optional):
--   base_url     API root (default $OPENAI_BASE_URL or https://api.openai.com/v1)
--   api_key      default $OPENAI_API_KEY (none: no Authorization header)
--   store        a lantern.store handle: responses are cached in its
--                llm_cache database and answered from it
--   offline      answer only from the cache; a miss is an error for that
--                request; no connection is ever opened
--   refresh      do not read the cache (still write it)
--   concurrency  requests in flight (4); timeout: seconds per attempt (60)
--   max_retries  (5); backoff_ms: first retry delay (1000), doubling up
--                to backoff_max_ms (10000)
function M.client(opts)
  opts = opts or {}
  local c = setmetatable({
    base_url = opts.base_url or env("OPENAI_BASE_URL") or "https://api.openai.com/v1",
    api_key = opts.api_key or env("OPENAI_API_KEY"),
    store = opts.store,
    offline = opts.offline and true or false,
    refresh = opts.refresh and true or false,
    concurrency = opts.concurrency or 4,
    timeout = opts.timeout or 60,
    max_retries = opts.max_retries or 5,
    backoff_ms = opts.backoff_ms or 1000,
    backoff_max_ms = opts.backoff_max_ms or 10000,
    -- requests: asked of the client; network: sent over HTTP (retries not
    -- counted); cache_hits; errors: results with .error
    stats = {requests = 0, network = 0, cache_hits = 0, errors = 0},
  }, Client)
  return c
end

-- The C handle, made on first use (never in offline mode).
local function handle(self)
  if self._h then return self._h end
  local o = ffi.new("lt_llm_opts")
  o.timeout_s = math.max(1, math.ceil(self.timeout))
  o.max_retries = self.max_retries > 0 and self.max_retries or -1
  o.max_concurrency = self.concurrency
  o.backoff_ms = self.backoff_ms
  o.backoff_max_ms = self.backoff_max_ms
  local out = ffi.new("lt_llm *[1]")
  F.check(C.lt_llm_new(self.base_url, self.api_key, o, out), "llm client")
  self._h = ffi.gc(out[0], C.lt_llm_free)
  return self._h
end

-- Sends bodies (strings) to path; returns per request {text=, status=} or
-- {error=, status=, text=}.
local function send(self, path, bodies)
  local n = #bodies
  local paths = ffi.new("const char *[?]", n)
  local cbodies = ffi.new("const char *[?]", n)
  for i = 1, n do
    paths[i - 1] = path
    cbodies[i - 1] = bodies[i]
  end
  local resp = ffi.new("char *[?]", n)
  local status = ffi.new("int[?]", n)
  local errs = ffi.new("char *[?]", n)
  F.check(C.lt_llm_request_batch(handle(self), n, paths, cbodies, resp, status, errs), "llm request")
  local out = {}
  for i = 0, n - 1 do
    local r = {status = status[i]}
    if resp[i] ~= nil then r.text = ffi.string(resp[i]); C.lt_free(resp[i]) end
    if errs[i] ~= nil then r.error = ffi.string(errs[i]); C.lt_free(errs[i]) end
    out[i + 1] = r
  end
  return out
end

-- Decodes a 2xx body and checks it has the shape check() wants; returns
-- the data or nil and a message.
local function decode(text, url, check)
  local ok, data = pcall(json.decode, text)
  if not ok then
    return nil, string.format("malformed JSON in the response from %s: %s", url, tostring(data))
  end
  if type(data) ~= "table" then return nil, "the response from " .. url .. " is not a JSON object" end
  if data.error then
    local e = data.error
    local msg = type(e) == "table" and (e.message or json.encode(e)) or tostring(e)
    return nil, "the server at " .. url .. " answered with an error: " .. msg
  end
  if check then
    local why = check(data)
    if why then return nil, "unexpected response from " .. url .. ": " .. why end
  end
  return data
end

local function utc_now()
  return os.date("!%Y-%m-%dT%H:%M:%SZ")
end

-- Writes the new cache entries, in one store batch when none is open.
local function write_cache(self, entries)
  local st = self.store
  if not st or st.readonly or #entries == 0 then return end
  local began = pcall(st.begin, st)
  local ok, err = pcall(function()
    for _, e in ipairs(entries) do st:put(CACHE_DB, e.key, e.value) end
  end)
  if began then
    if ok then st:commit() else st:abort() end
  end
  if not ok then error(err, 0) end
end

-- Runs a batch of requests (Lua tables, JSON bodies) against path and
-- returns one result per request, in order:
--   {data = decoded response, text = its JSON text, cached = bool, key = cache key}
--   {error = message, status = HTTP status or 0, key = cache key}
-- check(data) may return a message for a well-formed but unusable answer.
-- Identical requests in one batch are sent once.
function Client:request(path, requests, check)
  if type(requests) ~= "table" then error("llm: expected a list of requests", 2) end
  local url = self.base_url:gsub("/+$", "") .. path
  local results, misses, bodies, by_key = {}, {}, {}, {}
  for i, req in ipairs(requests) do
    local ok, canon = pcall(M.canonical, path, req)
    if not ok then error("llm: request " .. i .. ": " .. tostring(canon), 2) end
    local key = "llm/" .. M.sha256(canon)
    self.stats.requests = self.stats.requests + 1
    local hit = nil
    if self.store and not self.refresh then
      local v = self.store:get(CACHE_DB, key)
      if v then
        local okv, entry = pcall(json.decode, v)
        if okv and type(entry) == "table" and type(entry.response) == "string" then
          local data = decode(entry.response, url, check)
          if data then hit = {data = data, text = entry.response, cached = true, key = key} end
        end
      end
    end
    if hit then
      self.stats.cache_hits = self.stats.cache_hits + 1
      results[i] = hit
    elseif self.offline then
      results[i] = {error = "offline: no cached response for this request (" .. key .. ")", status = 0, key = key}
    elseif by_key[key] then
      table.insert(by_key[key], i)
    else
      by_key[key] = {i}
      misses[#misses + 1] = {key = key, canon = canon}
      bodies[#bodies + 1] = json.encode(req)
    end
  end

  if #bodies > 0 then
    self.stats.network = self.stats.network + #bodies
    local answers = send(self, path, bodies)
    local entries = {}
    for k, a in ipairs(answers) do
      local m = misses[k]
      local r
      if a.error then
        r = {error = a.error, status = a.status, key = m.key}
      else
        local data, why = decode(a.text, url, check)
        if data then
          r = {data = data, text = a.text, cached = false, key = m.key}
          entries[#entries + 1] = {key = m.key, value = json.encode{
            v = CACHE_VERSION, request = m.canon, response = a.text, status = a.status,
            base_url = self.base_url, created_utc = utc_now()}}
        else
          r = {error = why, status = a.status, key = m.key}
        end
      end
      for _, i in ipairs(by_key[m.key]) do results[i] = r end
    end
    write_cache(self, entries)
  end
  for _, r in ipairs(results) do
    if r.error then self.stats.errors = self.stats.errors + 1 end
  end
  return results
end

local function first_choice(data)
  if type(data.choices) ~= "table" or type(data.choices[1]) ~= "table" then return nil end
  return data.choices[1]
end

local function check_chat(data)
  local ch = first_choice(data)
  if not ch or type(ch.message) ~= "table" then return "no choices[1].message" end
end

local function check_completion(data)
  if not first_choice(data) then return "no choices[1]" end
end

-- A single request (a table with a model field) instead of a list: returns
-- one result instead of a list.
local function one_or_many(requests)
  if type(requests) == "table" and (requests.model or requests.messages or requests.prompt) then
    return {requests}, true
  end
  return requests, false
end

-- Chat completions (POST /chat/completions). Each successful result also
-- has .content, the first choice's message text ("" when none).
function Client:chat(requests)
  local list, single = one_or_many(requests)
  local results = self:request("/chat/completions", list, check_chat)
  for _, r in ipairs(results) do
    if r.data then
      local content = first_choice(r.data).message.content
      r.content = type(content) == "string" and content or ""
    end
  end
  return single and results[1] or results
end

-- Completions (POST /completions). Each successful result also has
-- .completion, the first choice's text.
function Client:complete(requests)
  local list, single = one_or_many(requests)
  local results = self:request("/completions", list, check_completion)
  for _, r in ipairs(results) do
    if r.data then
      local text = first_choice(r.data).text
      r.completion = type(text) == "string" and text or ""
    end
  end
  return single and results[1] or results
end

M.Client = Client
return M
