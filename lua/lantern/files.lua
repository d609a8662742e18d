-- lantern.files: the few file helpers the Lua library shares.
local M = {}

-- Whether path can be opened for reading.
function M.exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

-- The whole file, or nil and the error message.
function M.read(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("*a")
  f:close()
  return s
end

-- Writes s to path; raises an error naming the path on failure.
function M.write(path, s)
  local f, err = io.open(path, "wb")
  if not f then error(tostring(err), 2) end
  local ok, werr = f:write(s)
  f:close()
  if not ok then error(path .. ": " .. tostring(werr), 2) end
end

return M
