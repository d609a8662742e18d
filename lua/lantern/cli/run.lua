-- lantern run FILE.lua [ARGS...]: runs a Lua script the way `luajit FILE`
-- would, with lantern's modules on the path.
local usage = [[
usage: lantern run FILE.lua [ARGS...]

Runs the script with the global `arg` set as luajit sets it (arg[0] is FILE,
arg[1..] the ARGS; the chunk also receives ARGS as `...`). Inside, use
  local lt = require("lantern")
A relative FILE is relative to the current directory.]]

local function run(argv)
  local file = argv[1]
  if not file then error("expected a script file\n" .. usage, 0) end
  -- Check readability first: loadfile's message for a missing file is
  -- terse, and an unreadable path should not look like a syntax error.
  local f, why = io.open(file, "rb")
  if not f then error("cannot open " .. why, 0) end   -- why: "FILE: No such file or directory"
  f:close()
  local chunk, err = loadfile(file)
  if not chunk then error(err, 0) end

  local script_arg = {[0] = file}
  for i = 2, #argv do script_arg[i - 1] = argv[i] end
  _G.arg = script_arg

  local ok, e = xpcall(chunk, function(e)
    -- The traceback stops at the script: the frames below are the CLI's.
    local tb = debug.traceback(type(e) == "string" and e or tostring(e), 2)
    return (tb:gsub("\n%s*%[C%]: in function 'xpcall'.*$", ""))
  end, unpack(script_arg, 1, #argv - 1))
  if not ok then
    io.stdout:flush()
    io.stderr:write(e, "\n")
    return 1
  end
  return 0
end

return { summary = "run a Lua script with lantern available: run FILE.lua [ARGS...]", usage = usage, run = run }
