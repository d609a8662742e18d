-- tests/lua/runner.lua FILE: runs one Lua test file. A test file returns a
-- table of named test functions; each runs in order, failures are counted
-- and printed, and the process exits non-zero if any failed.
local file = assert(arg[1], "usage: runner.lua TEST_FILE")
local tests = dofile(file)
local names = {}
for name in pairs(tests) do names[#names + 1] = name end
table.sort(names)
local passed, failed = 0, 0
for _, name in ipairs(names) do
  local ok, err = xpcall(tests[name], debug.traceback)
  if ok then
    passed = passed + 1
    print("ok   " .. name)
  else
    failed = failed + 1
    print("FAIL " .. name .. "\n" .. tostring(err))
  end
end
print(string.format("%d passed, %d failed", passed, failed))
os.exit(failed == 0 and 0 or 1)
