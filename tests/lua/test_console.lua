-- test_console.lua: the console's evaluation (in process, on lists of
-- lines) and the command line (`lantern` with piped stdin, `run`, `help`,
-- `demo`, an unknown command, the notebooks) as subprocesses. Nothing needs
-- a terminal.
local check = require("check")
local console = require("lantern.console")
local lt = require("lantern")

local root = lt.root

-- Runs lines through a console session with its own globals (lt, and
-- reads fall through to _G); returns stdout text, stderr text, session.
local function repl(lines)
  local out, err = {}, {}
  local env = setmetatable({lt = lt}, {__index = _G})
  local s = console.run_lines(lines, {
    env = env,
    out = function(t) out[#out + 1] = t end,
    err = function(t) err[#err + 1] = t end,
  })
  return table.concat(out), table.concat(err), s
end

local function has(text, piece, what)
  if not text:find(piece, 1, true) then
    error(string.format("%s: %q not in output:\n%s", what or "output", piece, text), 2)
  end
end

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- Runs a shell command line, stdin from the given text; returns the combined
-- stdout and stderr, and the exit status.
local function sh(cmd, stdin)
  local input = os.tmpname()
  local f = assert(io.open(input, "wb"))
  f:write(stdin or "")
  f:close()
  local p = assert(io.popen(cmd .. " < " .. input .. " 2>&1; echo \"exit=$?\""))
  local text = p:read("*a")
  p:close()
  os.remove(input)
  local body, status = text:match("^(.*)exit=(%d+)\n$")
  return body, tonumber(status)
end

-- `lantern ARGS...` through the CLI entry point (what scripts/lantern runs
-- once the library is built), with the library the tests use, from the
-- directory dir when given.
local function lantern(args, stdin, dir)
  local env = string.format("LANTERN_ROOT=%s LUA_PATH=%s", shell_quote(root),
                            shell_quote(root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;;"))
  local lib = os.getenv("LANTERN_LIB")
  if lib then env = env .. " LANTERN_LIB=" .. shell_quote(lib) end
  local quoted = {}
  for i, a in ipairs(args) do quoted[i] = shell_quote(a) end
  local cd = dir and ("cd " .. shell_quote(dir) .. " && ") or ""
  return sh(cd .. env .. " luajit " .. shell_quote(root .. "/lua/lantern/cli/main.lua") .. " " ..
            table.concat(quoted, " "), stdin)
end

-- A fresh directory holding one file; returns the directory and a function
-- removing both.
local function temp_script(name, text)
  local dir = os.tmpname()
  os.remove(dir)
  os.execute("mkdir " .. shell_quote(dir))
  local f = assert(io.open(dir .. "/" .. name, "wb"))
  f:write(text)
  f:close()
  return dir, function() os.remove(dir .. "/" .. name) os.remove(dir) end
end

local tests = {}

function tests.expression_prints_its_value()
  local out, err = repl({"1 + 1", "'a' .. 'b'", "{1, 2, x = 3, t = {}}", "math.max(1, 5), 'x'", "=10"})
  check.eq(err, "", "no errors")
  check.eq(out, '2\n"ab"\n{1, 2, t = {}, x = 3}\n5\t"x"\n10\n', "values")
end

function tests.statements_print_nothing_and_underscore_keeps_the_value()
  local out, err = repl({"y = 6 * 7", "y", "_ + 1", "(function() end)()"})
  check.eq(err, "", "no errors")
  check.eq(out, "42\n43\n", "values")
end

function tests.multi_line_function_definition()
  local out, err, s = repl({"function twice(x)", "  local y = 2 * x", "  return y", "end", "twice(21)"})
  check.eq(err, "", "no errors")
  check.eq(out, "42\n", "result of the function")
  check.eq(s.pending, nil, "nothing left pending")
  local out2 = repl({"t = {", "  a = 1,", "}", "t.a"})
  check.eq(out2, "1\n", "table constructor over lines")
end

function tests.continuation_prompt()
  local s = console.session({out = function() end, err = function() end, env = setmetatable({}, {__index = _G})})
  check.eq(s:current_prompt(), console.prompt, "main prompt")
  check.eq(s:feed("for i = 1, 2 do"), true, "unfinished chunk waits")
  check.eq(s:current_prompt(), console.continuation, "continuation prompt")
  check.eq(s:feed("end"), false, "finished")
  check.eq(s:current_prompt(), console.prompt, "main prompt again")
end

function tests.error_is_printed_and_session_continues()
  local out, err, s = repl({"error('boom', 0)", "nil + 1", "x = = 1", "after = 5", "after"})
  has(err, "boom", "runtime error")
  has(err, "attempt to perform arithmetic", "arithmetic error")
  has(err, "unexpected symbol", "syntax error")
  check.eq(out, "5\n", "later lines still run")
  check.eq(s.errors, 3, "errors counted")
end

function tests.unfinished_input_at_the_end_is_an_error()
  local out, err, s = repl({"if true then"})
  check.eq(out, "", "no output")
  has(err, "'<eof>'", "syntax error at the end")
  check.eq(s.errors, 1, "counted")
end

function tests.lt_is_available()
  local out, err = repl({"lt.version", "x = lt.tensor({{1, 2}, {3, 4}})", "x:get(1, 0)", "x"})
  check.eq(err, "", "no errors")
  has(out, '"' .. lt.version .. '"', "version")
  has(out, "3\n", "tensor value")
  has(out, "Tensor[2, 2] float32", "tensor via tostring")
end

function tests.format()
  check.eq(console.format("a\nb"), '"a\\nb"', "string quoted, newline escaped")
  check.eq(console.format({}), "{}", "empty table")
  check.eq(console.format({{1}, "s"}), '{{...}, "s"}', "shallow")
  check.eq(console.format({[true] = 1, ["a b"] = 2}), '{["a b"] = 2, [true] = 1}', "keys that are not names")
  local long = {}
  for i = 1, 100 do long[i] = i end
  has(console.format(long), "... (36 more)}", "long table cut")
  check.eq(console.format(lt.tensor({1, 2})), "Tensor[2] float32\n[1, 2]", "Tensor")
  check.eq(console.format({lt.tensor({1, 2})}), "{Tensor[2] float32 ...}", "Tensor inside a table: first line")
end

function tests.completion()
  local env = {lt = lt, obj = setmetatable({field = 1}, {__index = {method = function() end, value = 2}})}
  local c = console.complete("lt.lo", env)
  check.eq(#c, 1, "one match")
  check.eq(c[1], "lt.load", "lt.load")
  c = console.complete("obj:", env)
  check.eq(table.concat(c, " "), "obj:method", "methods through __index")
  c = console.complete("obj.", env)
  check.eq(table.concat(c, " "), "obj.field obj.method obj.value", "fields")
  c = console.complete("ob", env)
  check.eq(table.concat(c, " "), "obj", "globals")
  check.eq(#console.complete("nothing.here", env), 0, "unknown path")
end

function tests.piped_console()
  local text, status = lantern({}, "lt.version\nfunction f(a)\n  return a + 1\nend\nf(1)\nprint('printed')\n")
  check.eq(status, 0, "exit status\n" .. text)
  check.eq(text, '"' .. lt.version .. '"\n2\nprinted\n', "output without prompts")
  text, status = lantern({"console"}, "error('oops', 0)\nprint('after')\n")
  check.eq(status, 1, "a failed chunk makes the exit status 1")
  has(text, "oops", "error")
  has(text, "after", "continued")
end

function tests.run_passes_arguments()
  local dir, clean = temp_script("script.lua", [[
local lt = require("lantern")
print(arg[0], arg[1], arg[2], #arg, select("#", ...), lt.version)
]])
  -- A relative file name is relative to the caller's directory.
  local text, status = lantern({"run", "script.lua", "one", "two words"}, nil, dir)
  clean()
  check.eq(status, 0, "exit status\n" .. text)
  check.eq(text, "script.lua\tone\ttwo words\t2\t2\t" .. lt.version .. "\n", "arg and ...")
end

function tests.run_through_scripts_lantern_from_another_directory()
  -- LANTERN_LIB (set by ctest) tells scripts/lantern which library to use,
  -- so the test never starts a build.
  assert(os.getenv("LANTERN_LIB"), "LANTERN_LIB must name the library under test")
  local dir, clean = temp_script("s.lua", 'print(arg[1], require("lantern").version)\n')
  local text, status = sh("cd " .. shell_quote(dir) .. " && " .. shell_quote(root .. "/scripts/lantern") .. " run s.lua x")
  clean()
  check.eq(status, 0, "exit status\n" .. text)
  has(text, "x\t" .. lt.version .. "\n", "ran with lantern on the path")
end

function tests.run_errors()
  local text, status = lantern({"run", "/nonexistent/script.lua"})
  check.eq(status, 1, "missing file fails")
  has(text, "cannot open /nonexistent/script.lua", "names the file")
  text, status = lantern({"run"})
  check.truthy(status ~= 0, "no file fails")
  has(text, "expected a script file", "says why")
  local bad = os.tmpname()
  local f = assert(io.open(bad, "wb"))
  f:write("local t = nil\nreturn t.x\n")
  f:close()
  text, status = lantern({"run", bad})
  os.remove(bad)
  check.eq(status, 1, "a failing script fails")
  has(text, "attempt to index local 't'", "the script's error")
end

function tests.help_lists_commands()
  local text, status = lantern({"help"})
  check.eq(status, 0, "exit status")
  for _, name in ipairs({"console", "run", "demo"}) do
    check.truthy(text:find("\n  " .. name .. " ", 1, true), "help lists " .. name .. ":\n" .. text)
  end
  text, status = lantern({"run", "--help"})
  check.eq(status, 0, "run --help")
  has(text, "usage: lantern run FILE.lua", "run usage")
end

function tests.unknown_command_fails()
  local text, status = lantern({"no-such-command"})
  check.truthy(status ~= 0, "non-zero exit")
  has(text, "unknown command 'no-such-command'", "message")
end

function tests.demo_runs()
  local text, status = lantern({"demo", "--n", "40"})
  check.eq(status, 0, "exit status\n" .. text)
  local layers = require("lantern.recipes.toy").model.n_layer
  has(text, "Model(toy: " .. layers .. " layers", "says what the model is")
  has(text, "logit difference D = ", "logit difference")
  has(text, "Node table", "node table")
  has(text, "measured", "measured ablation effects")
  has(text, "mean-ablating the top 3", "top heads against random heads")
  has(text, "Induction scores", "induction scores")
  local text2, status2 = lantern({"demo", "--model", "/nonexistent-model-dir"})
  check.truthy(status2 ~= 0, "a missing model is an error")
  has(text2, "holds no model.safetensors", "names what is missing")
end

-- Every notebook runs as its header says and prints its sections; the
-- training notebook on a tiny model for a few steps.
function tests.notebooks_run()
  local out = os.tmpname()
  local runs = {
    {args = {"notebooks/ioi.lua"}, expect = {"1. 300 test prompts: IO above S on", "5. mean-ablating"}},
    {args = {"notebooks/induction.lua"}, expect = {"1. 100 sequences of 20 random token ids", "3. previous-token score", "4. mean-ablating", "heads outside the circuit"}},
    {args = {"notebooks/corpus.lua", out, "test"}, expect = {"test documents", out}},
    {args = {"notebooks/induction_formation.lua", "--vocab", "64", "--d_model", "16", "--layers", "1", "--rows", "2",
      "--steps", "2", "--every", "1"}, expect = {"d_vocab 64", "step     2  loss ", "(after 16 ids ", "previous token L0/H"}},
    {args = {"notebooks/induction_formation.lua", "--vocab", "64", "--d_model", "16", "--layers", "1", "--rows", "2",
      "--steps", "1", "--mask", "1", "--lnf", "4"}, expect = {"ln_final gain 4", "loss on repeated ids only", "step     1  loss "}},
  }
  for _, run in ipairs(runs) do
    local file = run.args[1]
    local args = {"run", root .. "/" .. file}
    for i = 2, #run.args do args[#args + 1] = run.args[i] end
    local text, status = lantern(args)
    check.eq(status, 0, file .. " exit status\n" .. text)
    for _, piece in ipairs(run.expect) do has(text, piece, file) end
  end
  local f = assert(io.open(out, "rb"))
  local corpus = f:read("*a")
  f:close()
  os.remove(out)
  check.truthy(#corpus > 1000 and corpus:find(lt.datasets.EOT, 1, true), "corpus.lua wrote documents joined by <|endoftext|>")
  local text, status = lantern({"run", root .. "/notebooks/induction_formation.lua", "--layer", "2"})
  check.truthy(status ~= 0, "an unknown option fails")
  has(text, "unknown option --layer", "names the bad option")
  text, status = lantern({"run", root .. "/notebooks/induction_formation.lua", "layers=2"})
  check.truthy(status ~= 0, "a stray argument fails")
  has(text, "unexpected argument 'layers=2'", "names the stray argument")
end

return tests
