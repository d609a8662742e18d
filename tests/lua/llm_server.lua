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
local ffi = require("ffi")
local bit = require("bit")
local json = require("lantern.json")

ffi.cdef[[
  struct lt_ls_sockaddr_in { uint16_t family; uint16_t port; uint32_t addr; uint8_t zero[8]; };
  struct lt_ls_pollfd { int fd; short events; short revents; };
  int socket(int domain, int type, int protocol);
  int bind(int fd, const void *addr, uint32_t len);
  int listen(int fd, int backlog);
  int accept(int fd, void *addr, void *len);
  int getsockname(int fd, void *addr, uint32_t *len);
  long recv(int fd, void *buf, size_t n, int flags);
  long send(int fd, const void *buf, size_t n, int flags);
  int shutdown(int fd, int how);
  int close(int fd);
  int poll(struct lt_ls_pollfd *fds, unsigned long n, int timeout);
  int getppid(void);
]]
local C = ffi.C

local AF_INET, SOCK_STREAM, POLLIN, MSG_NOSIGNAL, SHUT_WR = 2, 1, 1, 0x4000, 1
local MAX_LIFETIME_S = 120

local script_path = assert(arg[1], "usage: llm_server.lua SCRIPT LOG")
local log_path = assert(arg[2], "usage: llm_server.lua SCRIPT LOG")
local rules = dofile(script_path)
local uses = {}
local parent = C.getppid()
local deadline = os.time() + MAX_LIFETIME_S

assert(ffi.abi("le"), "llm_server: assumes a little-endian machine")
local function htons(n) return bit.bor(bit.lshift(bit.band(n, 0xff), 8), bit.rshift(n, 8)) end

local function die(what)
  io.stderr:write("llm_server: ", what, " failed (errno ", ffi.errno(), ")\n")
  os.exit(1)
end

local listener = C.socket(AF_INET, SOCK_STREAM, 0)
if listener < 0 then die("socket") end
local addr = ffi.new("struct lt_ls_sockaddr_in")
addr.family = AF_INET
addr.addr = 0x0100007f  -- 127.0.0.1, network byte order
if C.bind(listener, addr, ffi.sizeof(addr)) ~= 0 then die("bind") end
if C.listen(listener, 64) ~= 0 then die("listen") end
local alen = ffi.new("uint32_t[1]", ffi.sizeof(addr))
if C.getsockname(listener, addr, alen) ~= 0 then die("getsockname") end
io.stdout:write(htons(addr.port), "\n")
io.stdout:flush()

-- Waits up to ms for fd to be readable.
local pfd1 = ffi.new("struct lt_ls_pollfd[1]")
local function readable(fd, ms)
  pfd1[0].fd, pfd1[0].events, pfd1[0].revents = fd, POLLIN, 0
  return C.poll(pfd1, 1, ms) > 0
end

local buf = ffi.new("char[65536]")

-- Reads a request (head and Content-Length body); nil when the client is
-- silent for 5 s or leaves.
local function read_request(fd)
  local data = ""
  local head_end
  while true do
    head_end = data:find("\r\n\r\n", 1, true)
    if head_end then break end
    if not readable(fd, 5000) then return nil end
    local k = C.recv(fd, buf, 65536, 0)
    if k <= 0 then return nil end
    data = data .. ffi.string(buf, tonumber(k))
  end
  local head = data:sub(1, head_end + 1)
  local body = data:sub(head_end + 4)
  local len = tonumber(head:match("\r\n[Cc]ontent%-[Ll]ength: *(%d+)")) or 0
  while #body < len do
    if not readable(fd, 5000) then return nil end
    local k = C.recv(fd, buf, 65536, 0)
    if k <= 0 then return nil end
    body = body .. ffi.string(buf, tonumber(k))
  end
  local method, target = head:match("^(%u+) (%S+) HTTP/1%.%d\r\n")
  return {method = method or "?", path = target or "?", body = body,
          auth = head:match("\r\n[Aa]uthorization: *([^\r\n]*)") or "-"}
end

local function send_all(fd, data)
  local off = 0
  while off < #data do
    local k = C.send(fd, ffi.cast("const char *", data) + off, #data - off, MSG_NOSIGNAL)
    if k <= 0 then return false end
    off = off + tonumber(k)
  end
  return true
end

local reasons = {[200] = "OK", [400] = "Bad Request", [404] = "Not Found", [429] = "Too Many Requests",
                 [500] = "Internal Server Error", [503] = "Service Unavailable"}

local function respond(fd, status, body, headers, cut)
  local head = string.format("HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s" ..
                             "Connection: close\r\n\r\n", status, reasons[status] or "Status", #body, headers or "")
  if send_all(fd, head) then send_all(fd, cut and body:sub(1, cut) or body) end
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
  local req = read_request(fd)
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
      if readable(fd, 200) and C.recv(fd, buf, 65536, 0) <= 0 then break end
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

local lfd = ffi.new("struct lt_ls_pollfd[1]")
lfd[0].fd, lfd[0].events = listener, POLLIN
local running = true
while running and os.time() < deadline and C.getppid() == parent do
  if C.poll(lfd, 1, 200) > 0 then
    local fd = C.accept(listener, nil, nil)
    if fd >= 0 then
      local ok, res = pcall(serve, fd)
      if not ok then io.stderr:write("llm_server: ", tostring(res), "\n") end
      running = not ok or res
      C.shutdown(fd, SHUT_WR)
      C.close(fd)
    end
  end
end
C.close(listener)
os.exit(0)
