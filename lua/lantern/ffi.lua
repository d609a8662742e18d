-- lantern.ffi: the FFI binding to liblantern. The C declarations are read
-- from the public header itself (the region between its ffi markers), so the
-- header is the single source of truth for both C and Lua callers.
local ffi = require("ffi")

local M = {}

-- The project root: two levels above this file (lua/lantern/ffi.lua).
local function project_root()
  local env = os.getenv("LANTERN_ROOT")
  if env and env ~= "" then return env end
  local src = debug.getinfo(1, "S").source:sub(2)
  local dir = src:match("^(.*)/lua/lantern/ffi%.lua$")
  if dir == nil or dir == "" then
    dir = src:match("^(.*)/lantern/ffi%.lua$") and (src:match("^(.*)/lantern/ffi%.lua$") .. "/..") or "."
  end
  return dir
end

M.root = project_root()

local function read_declarations(path)
  local f = assert(io.open(path, "rb"), "lantern: cannot open header " .. path)
  local text = f:read("*a")
  f:close()
  local body = text:match("/%* ffi%-begin %*/(.-)/%* ffi%-end %*/")
  assert(body, "lantern: no ffi region in " .. path)
  return body
end

ffi.cdef(read_declarations(M.root .. "/core/include/lantern.h"))
ffi.cdef[[
  void *malloc(size_t);
  void free(void *);
]]

-- OpenMP workers spin by default after each parallel loop and then compete
-- with OpenBLAS's threads for the cores; passive waiting keeps them out of
-- the way (measured: forward passes 2-8x slower on a loaded 2-core machine
-- without it). A user's own setting wins. Must happen before the library
-- (and so libgomp) is loaded.
ffi.cdef[[ int setenv(const char *name, const char *value, int overwrite); ]]
ffi.C.setenv("OMP_WAIT_POLICY", "passive", 0)

local libpath = os.getenv("LANTERN_LIB")
if not libpath or libpath == "" then libpath = M.root .. "/build/liblantern.so" end
M.C = ffi.load(libpath)

-- Raises the library's last error as a Lua error when status is non-zero.
function M.check(status, what)
  if status ~= 0 then
    local msg = ffi.string(M.C.lt_last_error())
    error((what and (what .. ": ") or "") .. msg, 3)
  end
  return status
end

function M.last_error()
  return ffi.string(M.C.lt_last_error())
end

return M
