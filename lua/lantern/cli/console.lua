-- lantern console: the interactive console (also what `lantern` alone runs).
-- The REPL itself is lua/lantern/console.lua.
local usage = [[
usage: lantern [console]

An interactive LuaJIT console with `lt` = require("lantern") loaded.
Expressions show their value (tables shallowly, Tensors via tostring) and
`_` holds the last one; a chunk that is not finished continues on the next
line (prompt ".. "); errors are printed and the console goes on. Ctrl-D
leaves (at the ".. " prompt it drops the unfinished chunk); Ctrl-C drops the
line being typed or stops a running command. Tab completes global names,
fields and methods.

On a terminal, lines are edited with readline (libreadline.so.8) and kept in
~/.lantern_history ($LANTERN_HISTORY names another file; empty: none).
Without a terminal, lines are read from stdin with no prompts, and the exit
status is 1 if any chunk failed:
  echo 'print(lt.version)' | ./scripts/lantern]]

local function run(argv)
  if #argv > 0 then error("console takes no arguments (to run a script: lantern run FILE.lua)\n" .. usage, 0) end
  return require("lantern.console").main()
end

return { summary = "interactive LuaJIT console with lt loaded (the default)", usage = usage, run = run }
