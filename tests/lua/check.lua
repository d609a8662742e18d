-- check.lua: assertions shared by the Lua tests.
local M = {}

function M.eq(a, b, what)
  if a ~= b then error(string.format("%s: expected %s, got %s", what or "eq", tostring(b), tostring(a)), 2) end
end

function M.near(a, b, tol, what)
  if not (math.abs(a - b) <= tol) then
    error(string.format("%s: expected %.9g, got %.9g (tolerance %g)", what or "near", b, a, tol), 2)
  end
end

function M.truthy(v, what)
  if not v then error((what or "expected a true value"), 2) end
end

-- Calls fn and checks it raises an error whose message contains pattern
-- (plain text).
function M.raises(fn, pattern, what)
  local ok, err = pcall(fn)
  if ok then error((what or "raises") .. ": expected an error containing '" .. pattern .. "'", 2) end
  if not tostring(err):find(pattern, 1, true) then
    error(string.format("%s: error '%s' lacks '%s'", what or "raises", tostring(err), pattern), 2)
  end
  return err
end

return M
