-- test_fetch.lua: lantern.hub and `lantern fetch` against a local server
-- (tests/lua/http_server.lua) that plays the hub with the test fixtures.
local ffi = require("ffi")
local F = require("lantern.ffi")
local hub = require("lantern.hub")
local check = require("check")

pcall(ffi.cdef, "int setenv(const char *name, const char *value, int overwrite);")
pcall(ffi.cdef, "int unsetenv(const char *name);")

-- The tests decide the endpoint and token themselves.
ffi.C.unsetenv("HF_ENDPOINT")
ffi.C.unsetenv("HF_TOKEN")

local root = F.root
local luajit = arg and arg[-1] or "luajit"
local fixture = {
  ["config.json"] = root .. "/tests/fixtures/hf-gpt2-tiny2/config.json",
  ["model.safetensors"] = root .. "/tests/fixtures/hf-gpt2-tiny2/model.safetensors",
  ["vocab.json"] = root .. "/tests/fixtures/gpt2-tokenizer/vocab.json",
  ["merges.txt"] = root .. "/tests/fixtures/gpt2-tokenizer/merges.txt",
}

local function sh(cmd)
  local status = os.execute(cmd)
  return status == 0 or status == true
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function exists(path) return read(path) ~= nil end

-- A scratch directory with a fake hub under www/: repo fake/tiny has the
-- four files, fake/broken lacks merges.txt.
local function make_scratch()
  local base = os.tmpname()
  os.remove(base)
  base = base .. ".fetch"
  for _, repo in ipairs({ "tiny", "broken" }) do
    local d = base .. "/www/fake/" .. repo .. "/resolve/main"
    assert(sh("mkdir -p '" .. d .. "'"))
    for file, src in pairs(fixture) do
      if not (repo == "broken" and file == "merges.txt") then
        assert(sh(string.format("ln -s '%s' '%s/%s'", src, d, file)))
      end
    end
  end
  return base
end

-- Runs fn(url, scratch, log_path) with a server on the scratch hub, then
-- always stops the server (and waits for its exit) and removes the scratch
-- directory, whether fn failed or not.
local function with_server(fn)
  local scratch = make_scratch()
  local log_path = scratch .. "/requests.log"
  local proc = io.popen(string.format("exec '%s' '%s/tests/lua/http_server.lua' '%s/www' '%s'",
                                      luajit, root, scratch, log_path), "r")
  local port = proc:read("*l")
  local ok, err = false, "test server did not start"
  local url
  if port and port:match("^%d+$") then
    url = "http://127.0.0.1:" .. port
    ok, err = xpcall(fn, debug.traceback, url, scratch, log_path)
    -- Stop: the server exits after answering /__quit; close waits for it.
    F.C.lt_http_download(url .. "/__quit", scratch .. "/quit", nil, 5, 0)
  end
  proc:close()
  sh("rm -rf '" .. scratch .. "'")
  if not ok then error(err, 0) end
end

local function same_as_fixture(dir)
  for file, src in pairs(fixture) do
    check.truthy(read(dir .. "/" .. file) == read(src), file .. " differs from the fixture")
  end
end

local T = {}

function T.names_and_dirs()
  check.eq(hub.repo_id("gpt2"), "openai-community/gpt2")
  check.eq(hub.repo_id("gpt2-xl"), "openai-community/gpt2-xl")
  check.eq(hub.repo_id("distilgpt2"), "distilbert/distilgpt2")
  check.eq(hub.repo_id("someone/tiny-gpt2"), "someone/tiny-gpt2")
  check.eq(hub.model_dir("gpt2"), root .. "/store/models/gpt2")
  check.eq(hub.model_dir("openai-community/gpt2-medium"), root .. "/store/models/gpt2-medium")
  check.eq(hub.model_dir("someone/tiny-gpt2"), root .. "/store/models/someone--tiny-gpt2")
  check.eq(hub.url("https://hf.example/", "a/b", "config.json"), "https://hf.example/a/b/resolve/main/config.json")
  check.raises(function() hub.repo_id("gpt3") end, "unknown model name 'gpt3'")
  check.raises(function() hub.repo_id("../etc") end, "unknown model name")
  check.raises(function() hub.repo_id("a/..") end, "unknown model name")
end

function T.fetch_then_skip()
  with_server(function(url, scratch, log_path)
    local dir = scratch .. "/out/tiny"
    local lines = {}
    local got, report = hub.fetch("fake/tiny", { dir = dir, endpoint = url, token = "hf_tok", timeout = 5,
                                                 log = function(l) lines[#lines + 1] = l end })
    check.eq(got, dir)
    check.eq(#report, 4)
    for _, r in ipairs(report) do check.eq(r.status, "downloaded", r.file) end
    same_as_fixture(dir)
    -- every file was asked for with the token
    local log = read(log_path)
    for file in pairs(fixture) do
      check.truthy(log:find("GET /fake/tiny/resolve/main/" .. file .. " Bearer hf_tok", 1, true),
                   "no authorized request for " .. file .. " in:\n" .. log)
    end

    lines = {}
    local _, again = hub.fetch("fake/tiny", { dir = dir, endpoint = url, log = function(l) lines[#lines + 1] = l end })
    for _, r in ipairs(again) do check.eq(r.status, "present", r.file) end
    check.eq(#lines, 4)
    check.truthy(lines[1]:find("already present, skipped", 1, true), lines[1])
    check.eq(read(log_path), log, "a second fetch sent requests")
  end)
end

function T.fetch_uses_environment()
  with_server(function(url, scratch, log_path)
    ffi.C.setenv("HF_ENDPOINT", url, 1)
    ffi.C.setenv("HF_TOKEN", "hf_env", 1)
    local ok, err = pcall(hub.fetch, "fake/tiny", { dir = scratch .. "/env", log = function() end })
    ffi.C.unsetenv("HF_ENDPOINT")
    ffi.C.unsetenv("HF_TOKEN")
    if not ok then error(err, 0) end
    same_as_fixture(scratch .. "/env")
    check.truthy(read(log_path):find("model.safetensors Bearer hf_env", 1, true), "HF_TOKEN not sent")
  end)
end

function T.missing_file_is_an_error()
  with_server(function(url, scratch)
    local dir = scratch .. "/out/broken"
    local err = check.raises(function()
      hub.fetch("fake/broken", { dir = dir, endpoint = url, log = function() end })
    end, "merges.txt")
    check.truthy(err:find("404", 1, true), "no 404 in: " .. err)
    check.truthy(err:find(url .. "/fake/broken/resolve/main/merges.txt", 1, true), "no URL in: " .. err)
    check.truthy(not exists(dir .. "/merges.txt") and not exists(dir .. "/merges.txt.part"), "merges.txt left")
    -- files before it completed; the weights after it were not started
    check.truthy(exists(dir .. "/config.json"), "config.json missing")
    check.truthy(not exists(dir .. "/model.safetensors") and not exists(dir .. "/model.safetensors.part"),
                 "model.safetensors started after a failure")
  end)
end

function T.cli()
  with_server(function(url, scratch)
    local out = scratch .. "/cli.out"
    local function lantern(args)
      return sh(string.format("'%s/scripts/lantern' fetch %s >'%s' 2>&1", root, args, out)), read(out) or ""
    end
    local dir = scratch .. "/cli/tiny"
    local ok, text = lantern(string.format("fake/tiny --dir '%s' --endpoint %s --timeout 5", dir, url))
    check.truthy(ok, "lantern fetch failed:\n" .. text)
    check.truthy(text:find("fake/tiny is in " .. dir, 1, true), text)
    same_as_fixture(dir)

    ok, text = lantern(string.format("fake/tiny --dir '%s' --endpoint=%s", dir, url))
    check.truthy(ok and text:find("already present", 1, true), "second fetch:\n" .. text)

    ok, text = lantern(string.format("fake/broken --dir '%s/cli/broken' --endpoint %s", scratch, url))
    check.truthy(not ok, "fetch of a repo without merges.txt succeeded")
    check.truthy(text:find("merges.txt", 1, true) and text:find("404", 1, true), text)

    ok, text = lantern("gpt3")
    check.truthy(not ok and text:find("unknown model name", 1, true), text)
  end)
end

return T
