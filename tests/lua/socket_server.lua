-- tests/lua/socket_server.lua: the plumbing of the Lua tests' HTTP servers
-- (http_server.lua, llm_server.lua), written with LuaJIT's FFI over libc
-- sockets: a listener on 127.0.0.1 at an ephemeral port, reading one
-- request, answering it, and a serving loop that never outlives the test
-- that started it (it stops on /__quit, when the parent process is gone,
-- or after 120 s).
local ffi = require("ffi")
local bit = require("bit")

ffi.cdef[[
  struct lt_ts_sockaddr_in { uint16_t family; uint16_t port; uint32_t addr; uint8_t zero[8]; };
  struct lt_ts_pollfd { int fd; short events; short revents; };
  int socket(int domain, int type, int protocol);
  int bind(int fd, const void *addr, uint32_t len);
  int listen(int fd, int backlog);
  int accept(int fd, void *addr, void *len);
  int getsockname(int fd, void *addr, uint32_t *len);
  long recv(int fd, void *buf, size_t n, int flags);
  long send(int fd, const void *buf, size_t n, int flags);
  int shutdown(int fd, int how);
  int close(int fd);
  int poll(struct lt_ts_pollfd *fds, unsigned long n, int timeout);
  int getppid(void);
]]
local C = ffi.C

local M = {}

local AF_INET, SOCK_STREAM, POLLIN, MSG_NOSIGNAL, SHUT_WR = 2, 1, 1, 0x4000, 1
local MAX_LIFETIME_S = 120

local function htons(n) return bit.bor(bit.lshift(bit.band(n, 0xff), 8), bit.rshift(n, 8)) end

local function die(name, what)
  io.stderr:write(name, ": ", what, " failed (errno ", ffi.errno(), ")\n")
  os.exit(1)
end

-- Listens on 127.0.0.1 at an ephemeral port and prints the port as the
-- first line of stdout (the tests read it from there).
function M.listen(name)
  assert(ffi.abi("le"), name .. ": assumes a little-endian machine")
  local fd = C.socket(AF_INET, SOCK_STREAM, 0)
  if fd < 0 then die(name, "socket") end
  local addr = ffi.new("struct lt_ts_sockaddr_in")
  addr.family = AF_INET
  addr.addr = 0x0100007f  -- 127.0.0.1 in network byte order
  if C.bind(fd, addr, ffi.sizeof(addr)) ~= 0 then die(name, "bind") end
  if C.listen(fd, 64) ~= 0 then die(name, "listen") end
  local len = ffi.new("uint32_t[1]", ffi.sizeof(addr))
  if C.getsockname(fd, addr, len) ~= 0 then die(name, "getsockname") end
  io.stdout:write(htons(addr.port), "\n")
  io.stdout:flush()
  return fd
end

local pfd1 = ffi.new("struct lt_ts_pollfd[1]")

-- Whether fd becomes readable within ms milliseconds.
function M.readable(fd, ms)
  pfd1[0].fd, pfd1[0].events, pfd1[0].revents = fd, POLLIN, 0
  return C.poll(pfd1, 1, ms) > 0
end

local buf = ffi.new("char[65536]")

-- Receives what is there (after readable); nil when the peer left.
function M.recv(fd)
  local k = C.recv(fd, buf, 65536, 0)
  if k <= 0 then return nil end
  return ffi.string(buf, tonumber(k))
end

-- Reads one request (head and Content-Length body): {method, path, body,
-- auth, head}; nil when the client is silent for 5 s or leaves.
function M.read_request(fd)
  local data, head_end = ""
  while true do
    head_end = data:find("\r\n\r\n", 1, true)
    if head_end then break end
    if #data > 65536 or not M.readable(fd, 5000) then return nil end
    local more = M.recv(fd)
    if not more then return nil end
    data = data .. more
  end
  local head = data:sub(1, head_end + 1)
  local body = data:sub(head_end + 4)
  local len = tonumber(head:match("\r\n[Cc]ontent%-[Ll]ength: *(%d+)")) or 0
  while #body < len do
    if not M.readable(fd, 5000) then return nil end
    local more = M.recv(fd)
    if not more then return nil end
    body = body .. more
  end
  local method, target = head:match("^(%u+) (%S+) HTTP/1%.%d\r\n")
  return {method = method or "?", path = target or "?", body = body, head = head,
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

-- Answers with status and body; opts: content_type, headers (extra header
-- lines, each ending in \r\n), cut (send only the first cut bytes of the
-- body, for truncated-body tests).
function M.respond(fd, status, body, opts)
  opts = opts or {}
  local head = string.format("HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%sConnection: close\r\n\r\n",
    status, reasons[status] or "Status", opts.content_type or "application/octet-stream", #body, opts.headers or "")
  if send_all(fd, head) then send_all(fd, opts.cut and body:sub(1, opts.cut) or body) end
end

-- Accepts connections one at a time and calls handle(fd) for each, until
-- handle returns false, the parent process is gone or 120 s have passed.
-- An error inside handle is reported on stderr and ends the loop.
function M.serve(name, listener, handle)
  local parent, deadline = C.getppid(), os.time() + MAX_LIFETIME_S
  local running = true
  while running and os.time() < deadline and C.getppid() == parent do
    if M.readable(listener, 200) then
      local fd = C.accept(listener, nil, nil)
      if fd >= 0 then
        local ok, res = pcall(handle, fd)
        if not ok then io.stderr:write(name, ": ", tostring(res), "\n") end
        running = ok and res ~= false
        C.shutdown(fd, SHUT_WR)
        C.close(fd)
      end
    end
  end
  C.close(listener)
end

return M
