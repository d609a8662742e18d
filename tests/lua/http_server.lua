-- tests/lua/http_server.lua ROOT [LOG]: a tiny static HTTP/1.1 server for
-- the Lua tests (the Lua tests cannot run the C test server's thread).
--
-- Serves the files under ROOT on 127.0.0.1 at an ephemeral port, which it
-- prints as the first line of stdout. GET /PATH answers ROOT/PATH with
-- Content-Length, 404 when there is no such file. Each request is appended
-- to LOG (when given) as "METHOD PATH AUTHORIZATION" ("-" when absent).
-- It exits on GET /__quit, when its parent process is gone, or after 120 s.
local server = require("socket_server")

local root = assert(arg[1], "usage: http_server.lua ROOT [LOG]")
local log_path = arg[2]

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local data = f:read("*a")
  f:close()
  return data  -- nil for a directory
end

local listener = server.listen("http_server")
server.serve("http_server", listener, function(fd)
  local req = server.read_request(fd)
  if not req then return true end
  if log_path then
    local f = io.open(log_path, "ab")
    if f then f:write(string.format("%s %s %s\n", req.method, req.path, req.auth)) f:close() end
  end
  if req.path == "/__quit" then
    server.respond(fd, 200, "bye\n")
    return false
  end
  local body = req.method == "GET" and not req.path:find("..", 1, true) and read_file(root .. req.path)
  if body then server.respond(fd, 200, body) else server.respond(fd, 404, "Entry not found") end
  return true
end)
os.exit(0)
