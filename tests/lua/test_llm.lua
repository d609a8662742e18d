-- test_llm.lua: lantern.llm (the LLM client) against a scripted local
-- OpenAI-compatible server (tests/lua/llm_server.lua): answers, errors per
-- request, retries, the response cache in the store and offline mode.
local ffi = require("ffi")
local F = require("lantern.ffi")
local llm = require("lantern.llm")
local json = require("lantern.json")
local store = require("lantern.store")
local check = require("check")

pcall(ffi.cdef, "int setenv(const char *name, const char *value, int overwrite);")
pcall(ffi.cdef, "int unsetenv(const char *name);")

local tmp = os.tmpname()
os.remove(tmp)
local scratch = tmp .. ".llm"
os.execute("mkdir -p '" .. scratch .. "'")
local with_server = require("llm_test_server").new(scratch)

local function chat_reply(content)
  return json.encode{id = "x", object = "chat.completion",
                     choices = {{index = 0, message = {role = "assistant", content = content}, finish_reason = "stop"}}}
end

local function fast(opts)
  opts.backoff_ms, opts.backoff_max_ms = opts.backoff_ms or 5, opts.backoff_max_ms or 20
  opts.api_key = opts.api_key or "sk-local"
  return llm.client(opts)
end

local function req(text)
  return {model = "m", messages = {{role = "user", content = text}}, temperature = 0}
end

local tests = {}

function tests.sha256_and_keys()
  check.eq(llm.sha256("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "sha256")
  -- Key order in the request table does not matter; content does.
  local a = llm.cache_key("/chat/completions", {model = "m", temperature = 0, messages = {{role = "user", content = "x"}}})
  local b = llm.cache_key("/chat/completions", {messages = {{content = "x", role = "user"}}, temperature = 0, model = "m"})
  check.eq(a, b, "same request, same key")
  check.truthy(a:match("^llm/%x+$") and #a == 68, "key shape " .. a)
  check.truthy(a ~= llm.cache_key("/completions", {model = "m", temperature = 0, messages = {{role = "user", content = "x"}}}),
               "the path is part of the key")
  check.truthy(a ~= llm.cache_key("/chat/completions", {model = "m", temperature = 0, messages = {{role = "user", content = "y"}}}),
               "the content is part of the key")
end

function tests.defaults_from_environment()
  ffi.C.setenv("OPENAI_BASE_URL", "http://example.invalid/v9", 1)
  ffi.C.setenv("OPENAI_API_KEY", "sk-env", 1)
  local c = llm.client{}
  check.eq(c.base_url, "http://example.invalid/v9", "base url from env")
  check.eq(c.api_key, "sk-env", "key from env")
  ffi.C.unsetenv("OPENAI_BASE_URL")
  ffi.C.unsetenv("OPENAI_API_KEY")
  c = llm.client{}
  check.eq(c.base_url, "https://api.openai.com/v1", "default base url")
  check.eq(c.api_key, nil, "no key")
end

function tests.chat_answers_and_headers()
  with_server([[return {{path = "/v1/chat/completions", body = function(text, d)
      return ]] .. "json.encode{choices = {{message = {role = 'assistant', content = 'echo: ' .. d.messages[1].content}}}}" .. [[
    end}}]], function(base, log)
    local c = fast{base_url = base}
    local res = c:chat{req("one"), req("two")}
    check.eq(res[1].content, "echo: one", "first answer")
    check.eq(res[2].content, "echo: two", "second answer")
    check.eq(res[1].cached, false, "not from a cache")
    local single = c:chat(req("three"))
    check.eq(single.content, "echo: three", "a single request gives a single result")
    local got = log()
    check.eq(#got, 3, "requests")
    check.eq(got[1].auth, "Bearer sk-local", "authorization")
    check.eq(got[1].path, "/v1/chat/completions", "path")
    check.eq(json.decode(got[1].body).messages[1].content, "one", "body")
  end)
end

function tests.errors_are_per_request_and_the_batch_goes_on()
  with_server([[return {
    {contains = "malformed", body = '{"choices": [ oops'},
    {contains = "truncated", action = "truncate", cut = 12, body = ]] .. string.format("%q", chat_reply("never whole")) .. [[},
    {contains = "bad", status = 400, body = '{"error":{"message":"model not found"}}'},
    {contains = "shape", body = '{"object":"list"}'},
    {contains = "hang", action = "stall"},
    {contains = "apierror", body = '{"error":{"message":"quota exceeded"}}'},
    {body = ]] .. string.format("%q", chat_reply("fine")) .. [[},
  }]], function(base, log)
    -- One at a time: the server is sequential, so a request waiting behind
    -- the stalled one would time out as well.
    local c = fast{base_url = base, timeout = 1, max_retries = 0, concurrency = 1}
    local res = c:chat{req("malformed"), req("ok 1"), req("truncated"), req("bad"), req("shape"),
                       req("hang"), req("apierror"), req("ok 2")}
    check.truthy(res[1].error and res[1].error:find("malformed JSON", 1, true), "malformed: " .. tostring(res[1].error))
    check.eq(res[2].content, "fine", "ok 1")
    check.truthy(res[3].error and res[3].error:find("truncated", 1, true), "truncated: " .. tostring(res[3].error))
    check.truthy(res[4].error and res[4].error:find("HTTP 400", 1, true) and res[4].error:find("model not found", 1, true),
                 "400: " .. tostring(res[4].error))
    check.eq(res[4].status, 400, "400 status")
    check.truthy(res[5].error and res[5].error:find("choices", 1, true), "shape: " .. tostring(res[5].error))
    check.truthy(res[6].error and res[6].error:find("timed out", 1, true), "timeout: " .. tostring(res[6].error))
    check.truthy(res[7].error and res[7].error:find("quota exceeded", 1, true), "api error: " .. tostring(res[7].error))
    check.eq(res[8].content, "fine", "ok 2")
    check.eq(#log(), 8, "each request sent once (no retries asked for)")
    check.eq(c.stats.errors, 6, "errors counted")
  end)
end

function tests.retries_on_429_and_500_not_on_400()
  with_server([[return {
    {contains = "flaky", status = 429, times = 1, headers = "Retry-After: 0\r\n", body = "{}"},
    {contains = "flaky", status = 500, times = 1, body = "{}"},
    {contains = "flaky", body = ]] .. string.format("%q", chat_reply("third time")) .. [[},
    {contains = "refused", status = 400, body = '{"error":{"message":"no"}}'},
  }]], function(base, log)
    local c = fast{base_url = base, max_retries = 3}
    local t0 = os.clock()
    local r = c:chat(req("flaky"))
    check.eq(r.content, "third time", "success after 429 and 500")
    check.eq(#log(), 3, "two retries")
    r = c:chat(req("refused"))
    check.truthy(r.error and r.error:find("HTTP 400", 1, true), "400 error")
    check.eq(#log(), 4, "400 not retried")
    check.truthy(os.clock() - t0 < 5, "fast backoff")
  end)
end

function tests.connection_refused_is_an_error()
  -- A port nobody listens on: bind a server, stop it, reuse its port.
  local dead
  with_server("return {}", function(base) dead = base end)
  local c = fast{base_url = dead, max_retries = 1, timeout = 2}
  local res = c:chat{req("a"), req("b")}
  for i = 1, 2 do
    check.truthy(res[i].error and res[i].error:find("cannot connect", 1, true), "refused: " .. tostring(res[i].error))
    check.eq(res[i].status, 0, "no status")
  end
end

function tests.cache_answers_repeats_and_offline_never_connects()
  local st = store.open(scratch .. "/cache-store")
  local ok, err = pcall(function()
    with_server([[return {{body = function(text, d)
        return json.encode{choices = {{message = {role = 'assistant', content = 'n=' .. d.messages[1].content}}}}
      end}}]], function(base, log)
      local c = fast{base_url = base, store = st}
      local first = c:chat{req("x"), req("y"), req("x")}
      check.eq(first[1].content, "n=x", "answer")
      check.eq(first[3].content, "n=x", "duplicate in a batch")
      check.eq(#log(), 2, "identical requests in one batch are sent once")
      check.eq(st:count("llm_cache"), 2, "two cache entries")
      -- A new client on the same store: answered from the cache.
      local c2 = fast{base_url = base, store = st}
      local again = c2:chat{req("y"), req("x")}
      check.eq(again[1].content, "n=y", "cached answer")
      check.eq(again[1].cached, true, "marked cached")
      check.eq(#log(), 2, "no new request for cached answers")
      check.eq(c2.stats.cache_hits, 2, "hits")
      -- The entry keeps the canonical request and the raw response.
      local entry = json.decode(st:get("llm_cache", again[1].key))
      check.eq(entry.v, 1, "entry version")
      check.eq(entry.request, llm.canonical("/chat/completions", req("y")), "canonical request")
      check.eq(json.decode(entry.response).choices[1].message.content, "n=y", "raw response")
      -- refresh ignores the cache.
      local c3 = fast{base_url = base, store = st, refresh = true}
      check.eq(c3:chat(req("x")).cached, false, "refresh asks the server")
      check.eq(#log(), 3, "refresh sent a request")

      -- Offline: the same server is up, yet it must see nothing.
      local off = fast{base_url = base, store = st, offline = true}
      local res = off:chat{req("x"), req("never asked")}
      check.eq(res[1].content, "n=x", "offline hit")
      check.truthy(res[2].error and res[2].error:find("offline", 1, true), "offline miss is an error")
      check.eq(#log(), 3, "offline mode sent nothing")
      check.eq(off._h, nil, "offline mode never made an HTTP client")
    end)
  end)
  st:close()
  if not ok then error(err, 0) end
end

function tests.errors_are_not_cached()
  local st = store.open(scratch .. "/nocache-store")
  local ok, err = pcall(function()
    with_server([[return {
      {contains = "once", times = 1, body = 'not json'},
      {body = ]] .. string.format("%q", chat_reply("good")) .. [[},
    }]], function(base, log)
      local c = fast{base_url = base, store = st, max_retries = 0}
      check.truthy(c:chat(req("once")).error, "first answer malformed")
      check.eq(st:count("llm_cache"), 0, "nothing cached")
      check.eq(c:chat(req("once")).content, "good", "asked again")
      check.eq(#log(), 2, "two requests")
    end)
  end)
  st:close()
  if not ok then error(err, 0) end
end

function tests.zz_cleanup()
  os.execute("rm -rf '" .. scratch .. "'")
end

return tests
