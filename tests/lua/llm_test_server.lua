-- llm_test_server.lua: runs tests/lua/llm_server.lua for the Lua tests.
--   local with_server = require("llm_test_server").new(scratch_dir)
--   with_server(rules_source, function(base_url, log) ... end)
-- rules_source is Lua source returning the server's rules (lantern.json is
-- in scope as `json`); log() returns the requests received so far. The
-- server is always stopped (and waited for) afterwards, also on error.
local F = require("lantern.ffi")
local json = require("lantern.json")
local files = require("lantern.files")

local M = {}

local luajit = arg and arg[-1] or "luajit"

local function read_log(path)
  local list = {}
  local f = io.open(path, "rb")
  if not f then return list end
  for line in f:lines() do list[#list + 1] = json.decode(line) end
  f:close()
  return list
end

function M.new(scratch)
  local n_servers = 0
  return function(rules, fn)
    n_servers = n_servers + 1
    local script = string.format("%s/rules%d.lua", scratch, n_servers)
    local log_path = string.format("%s/log%d.jsonl", scratch, n_servers)
    files.write(script, "local json = require('lantern.json')\n" .. rules)
    local proc = io.popen(string.format("exec '%s' '%s/tests/lua/llm_server.lua' '%s' '%s'",
                                        luajit, F.root, script, log_path), "r")
    local port = proc:read("*l")
    local ok, err = false, "test server did not start"
    if port and port:match("^%d+$") then
      local base = "http://127.0.0.1:" .. port
      ok, err = xpcall(fn, debug.traceback, base .. "/v1", function() return read_log(log_path) end)
      F.C.lt_http_download(base .. "/__quit", scratch .. "/quit", nil, 5, 0)
    end
    proc:close()
    if not ok then error(err, 0) end
  end
end

return M
