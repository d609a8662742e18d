-- lantern eval NAME: runs an evaluation, the module lantern.eval.NAME
-- (lua/lantern/eval/NAME.lua), which returns {summary=, usage=,
-- run = function(argv) -> exit status}.
local ffi_root = require("lantern.ffi").root

-- The evaluations present: the .lua files of lua/lantern/eval/.
local function available()
  local names = {}
  local p = io.popen("ls '" .. ffi_root .. "/lua/lantern/eval' 2>/dev/null")
  if p then
    for f in p:lines() do
      local n = f:match("^([%w_]+)%.lua$")
      if n then names[#names + 1] = n end
    end
    p:close()
  end
  table.sort(names)
  return names
end

local function load(name)
  local ok, mod = pcall(require, "lantern.eval." .. name)
  if not ok then
    if tostring(mod):find("module 'lantern.eval." .. name .. "' not found", 1, true) then return nil end
    error(mod, 0)
  end
  return mod
end

local function usage_text()
  local lines = {"usage: lantern eval NAME [ARGS...]", "", "evaluations:"}
  for _, n in ipairs(available()) do
    local mod = load(n)
    lines[#lines + 1] = string.format("  %-9s %s", n, mod and mod.summary or "")
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "`lantern eval NAME --help` shows one evaluation's options."
  return table.concat(lines, "\n")
end

local M = {summary = "run an evaluation (lantern eval NAME; see lantern eval --help)"}

setmetatable(M, {__index = function(_, k) if k == "usage" then return usage_text() end end})

function M.run(argv)
  local name = argv[1]
  if not name then error("expected an evaluation name\n" .. usage_text(), 0) end
  local mod = load(name)
  if not mod then error("unknown evaluation '" .. name .. "'\n" .. usage_text(), 0) end
  local rest = {}
  for i = 2, #argv do rest[#rest + 1] = argv[i] end
  if rest[1] == "--help" or rest[1] == "-h" then
    io.write(mod.usage or mod.summary or "", "\n")
    return 0
  end
  return mod.run(rest)
end

return M
