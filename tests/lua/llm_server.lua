-- tests/lua/llm_server.lua SCRIPT LOG: a scripted OpenAI-compatible HTTP
-- server for the Lua tests (LuaJIT FFI over libc sockets, one connection
-- at a time, every response "Connection: close").
--
-- It listens on 127.0.0.1 at an ephemeral port and prints the port as the
-- first line of stdout. SCRIPT is a Lua file returning a list of rules; a
-- request gets the first rule that matches and is not used up:
--   {path = "/v1/chat/completions",  -- exact request target (nil: any)
--    contains = "text",               -- plain substring of the body (nil: any)
--    times = N,                       -- serves N requests, then used up (nil: forever)
--    status = 200,                    -- default 200
--    body = "..." or function(body_text, decoded) -> body [, status]
--    action = nil | "truncate" (send cut bytes of the body, close) |
--             "stall" (answer nothing; hold until the client leaves) |
--             "close" (close without answering)
--    cut = N, headers = "Extra: x\r\n"}
-- No match: 404. Every request is appended to LOG as one JSON line
-- {"method", "path", "auth", "body"} before it is answered.
--
-- It exits on any request to /__quit, when its parent process is gone, or
-- after 120 s, whichever comes first.
local json = require("lantern.json")
local server = require("socket_server")

local script_path = assert(arg[1], "usage: llm_server.lua SCRIPT LOG")
local log_path = assert(arg[2], "usage: llm_server.lua SCRIPT LOG")
local rules = dofile(script_path)
local uses = {}

local listener = server.listen("llm_server")

local function respond(fd, status, body, headers, cut)
  server.respond(fd, status, body, {content_type = "application/json", headers = headers, cut = cut})
end

local function match(req)
  for i, r in ipairs(rules) do
    if (not r.times or (uses[i] or 0) < r.times)
       and (r.path == nil or r.path == req.path)
       and (r.contains == nil or req.body:find(r.contains, 1, true)) then
      uses[i] = (uses[i] or 0) + 1
      return r
    end
  end
end

-- Handles one connection; false when the server should quit.
local function serve(fd)
  local req = server.read_request(fd)
  if not req then return true end
  local f = io.open(log_path, "ab")
  if f then
    f:write(json.encode{method = req.method, path = req.path, auth = req.auth, body = req.body}, "\n")
    f:close()
  end
  if req.path == "/__quit" then
    respond(fd, 200, "{}")
    return false
  end
  local rule = match(req)
  if not rule then
    respond(fd, 404, '{"error":{"message":"no rule for this request"}}')
    return true
  end
  if rule.action == "close" then return true end
  if rule.action == "stall" then
    -- Hold until the client gives up (it closes: readable with 0 bytes).
    local stop = os.time() + 30
    while os.time() < stop do
      if server.readable(fd, 200) and not server.recv(fd) then break end
    end
    return true
  end
  local status, body = rule.status or 200, rule.body or ""
  if type(body) == "function" then
    local ok, decoded = pcall(json.decode, req.body)
    local b, s = body(req.body, ok and decoded or nil)
    body, status = b, s or status
  end
  respond(fd, status, body, rule.headers, rule.action == "truncate" and (rule.cut or 0) or nil)
  return true
end

server.serve("llm_server", listener, serve)
os.exit(0)
