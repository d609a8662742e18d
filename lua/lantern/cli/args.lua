-- lantern.cli.args: parses `--flag value`, `--flag=value` and `--switch`
-- options for the subcommands. spec maps option names to "string",
-- "number", "boolean" or "list" (a string option that may be repeated: a
-- list of its values in order); anything else is an error naming the
-- option.
local M = {}

function M.parse(argv, spec)
  local opts, positional = {}, {}
  local i = 1
  while i <= #argv do
    local a = argv[i]
    local name, value = a:match("^%-%-([%w%-_]+)=(.*)$")
    if not name then name = a:match("^%-%-([%w%-_]+)$") end
    if name then
      local kind = spec[name]
      if not kind then error("unknown option --" .. name, 0) end
      if kind == "boolean" then
        opts[name] = true
      else
        if value == nil then
          i = i + 1
          value = argv[i]
          if value == nil then error("option --" .. name .. " needs a value", 0) end
        end
        if kind == "number" then
          local n = tonumber(value)
          if not n then error("option --" .. name .. " expects a number, got '" .. value .. "'", 0) end
          value = n
        end
        if kind == "list" then
          opts[name] = opts[name] or {}
          table.insert(opts[name], value)
        else
          opts[name] = value
        end
      end
    else
      positional[#positional + 1] = a
    end
    i = i + 1
  end
  return opts, positional
end

return M
