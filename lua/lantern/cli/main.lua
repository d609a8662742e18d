-- lantern.cli.main: dispatches `./scripts/lantern COMMAND ...`. Each command
-- lives in its own module lua/lantern/cli/COMMAND.lua, which returns a table
-- {summary = "...", usage = "...", run = function(args) ... end}.
local commands = {
  "console", "run", "demo", "fetch", "tdb", "train", "eval", "sae", "mine",
  "explain", "show", "bench", "help",
}

local function load_command(name)
  local ok, mod = pcall(require, "lantern.cli." .. name)
  if not ok then
    if tostring(mod):find("module 'lantern.cli." .. name .. "' not found", 1, true) then return nil end
    error(mod, 0)
  end
  return mod
end

local function help()
  io.write("usage: lantern [COMMAND] [ARGS...]\n\n",
           "With no command, opens the interactive console with `lt` loaded.\n\ncommands:\n")
  for _, name in ipairs(commands) do
    local mod = load_command(name)
    if mod then io.write(string.format("  %-9s %s\n", name, mod.summary or "")) end
  end
  io.write("\n`lantern COMMAND --help` shows a command's options.\n")
end

local argv = {}
for i = 1, #arg do argv[i] = arg[i] end
local name = table.remove(argv, 1) or "console"
if name == "help" or name == "--help" or name == "-h" then help() os.exit(0) end

local mod = load_command(name)
if not mod then
  io.stderr:write("lantern: unknown command '" .. name .. "'\n\n")
  help()
  os.exit(2)
end
if argv[1] == "--help" or argv[1] == "-h" then
  io.write(mod.usage or mod.summary or "", "\n")
  os.exit(0)
end

local ok, err = xpcall(mod.run, function(e)
  if os.getenv("LANTERN_TRACEBACK") then return debug.traceback(e, 2) end
  return e
end, argv)
if not ok then
  io.stderr:write("lantern " .. name .. ": " .. tostring(err) .. "\n")
  os.exit(1)
end
if type(err) == "number" then os.exit(err) end
