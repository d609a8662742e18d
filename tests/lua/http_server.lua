-- tests/lua/http_server.lua ROOT [LOG]: a tiny static HTTP/1.1 server for
-- the Lua tests, written with LuaJIT's FFI over libc sockets (the Lua tests
-- cannot run the C test server's thread).
--
-- Serves the files under ROOT on 127.0.0.1 at an ephemeral port, which it
-- prints as the first line of stdout. GET /PATH answers ROOT/PATH with
-- Content-Length, 404 when there is no such file. Each request is appended
-- to LOG (when given) as "METHOD PATH AUTHORIZATION" ("-" when absent).
--
-- It never outlives the test that started it: it exits on GET /__quit, when
-- its parent process is gone, or after 120 s, whichever comes first.
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
  int setsockopt(int fd, int level, int name, const void *value, uint32_t len);
  long recv(int fd, void *buf, size_t n, int flags);
  long send(int fd, const void *buf, size_t n, int flags);
  int shutdown(int fd, int how);
  int close(int fd);
  int poll(struct lt_ts_pollfd *fds, unsigned long n, int timeout);
  int getppid(void);
]]
local C = ffi.C

local AF_INET, SOCK_STREAM, POLLIN, MSG_NOSIGNAL, SHUT_WR = 2, 1, 1, 0x4000, 1
local SOL_SOCKET, SO_RCVTIMEO = 1, 20
local MAX_LIFETIME_S = 120

local root = assert(arg[1], "usage: http_server.lua ROOT [LOG]")
local log_path = arg[2]
local parent = C.getppid()
local deadline = os.time() + MAX_LIFETIME_S

local function htons(n) return bit.bor(bit.lshift(bit.band(n, 0xff), 8), bit.rshift(n, 8)) end

local function die(what)
  io.stderr:write("http_server: ", what, " failed (errno ", ffi.errno(), ")\n")
  os.exit(1)
end

local listener = C.socket(AF_INET, SOCK_STREAM, 0)
if listener < 0 then die("socket") end
local addr = ffi.new("struct lt_ts_sockaddr_in")
addr.family = AF_INET
addr.addr = 0x0100007f  -- 127.0.0.1 in network byte order on little-endian
assert(ffi.abi("le"), "http_server: assumes a little-endian machine")
if C.bind(listener, addr, ffi.sizeof(addr)) ~= 0 then die("bind") end
if C.listen(listener, 16) ~= 0 then die("listen") end
local len = ffi.new("uint32_t[1]", ffi.sizeof(addr))
if C.getsockname(listener, addr, len) ~= 0 then die("getsockname") end
io.stdout:write(htons(addr.port), "\n")
io.stdout:flush()

local function send_all(fd, data)
  local off = 0
  while off < #data do
    local k = C.send(fd, ffi.cast("const char *", data) + off, #data - off, MSG_NOSIGNAL)
    if k <= 0 then return false end
    off = off + tonumber(k)
  end
  return true
end

-- Reads the request head; nil when the client is silent for 5 s or leaves.
local function read_head(fd)
  local tv = ffi.new("long[2]", 5, 0)  -- struct timeval {5 s, 0 us}
  C.setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, tv, ffi.sizeof(tv))
  local buf = ffi.new("char[8192]")
  local head = ""
  while not head:find("\r\n\r\n", 1, true) do
    if #head > 65536 then return nil end
    local k = C.recv(fd, buf, 8192, 0)
    if k <= 0 then return nil end
    head = head .. ffi.string(buf, tonumber(k))
  end
  return head
end

local function respond(fd, status, reason, body)
  local head = string.format("HTTP/1.1 %d %s\r\nContent-Length: %d\r\n" ..
                             "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                             status, reason, #body)
  if send_all(fd, head) then send_all(fd, body) end
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local data = f:read("*a")
  f:close()
  return data  -- nil for a directory
end

-- Handles one connection; false when the server should quit.
local function serve(fd)
  local head = read_head(fd)
  if not head then return true end
  local method, target = head:match("^(%u+) (%S+) HTTP/1%.%d\r\n")
  local auth = head:match("\r\n[Aa]uthorization: *([^\r\n]*)") or "-"
  if log_path then
    local f = io.open(log_path, "ab")
    if f then f:write(string.format("%s %s %s\n", method or "?", target or "?", auth)) f:close() end
  end
  if target == "/__quit" then
    respond(fd, 200, "OK", "bye\n")
    return false
  end
  local body = method == "GET" and target and not target:find("..", 1, true)
               and read_file(root .. target)
  if body then respond(fd, 200, "OK", body) else respond(fd, 404, "Not Found", "Entry not found") end
  return true
end

local pfd = ffi.new("struct lt_ts_pollfd[1]")
pfd[0].fd = listener
pfd[0].events = POLLIN
local running = true
while running and os.time() < deadline and C.getppid() == parent do
  if C.poll(pfd, 1, 200) > 0 then
    local fd = C.accept(listener, nil, nil)
    if fd >= 0 then
      running = serve(fd)
      C.shutdown(fd, SHUT_WR)
      C.close(fd)
    end
  end
end
C.close(listener)
os.exit(0)
