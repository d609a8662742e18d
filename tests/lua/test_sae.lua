-- test_sae.lua: lantern.sae from Lua: new, param, encode, decode, forward,
-- save and load, errors, and check_model against the tiny GPT-2 fixture
-- (tests/fixtures/hf-gpt2-tiny2: d_model 64, d_mlp 256).
local check = require("check")
local lt = require("lantern")
local Tensor = lt.Tensor

local FIXTURE = lt.root .. "/tests/fixtures/hf-gpt2-tiny2"

local tmp = os.tmpname()   -- a file; SAE directories go in <tmp>.d/
os.remove(tmp)
local root = tmp .. ".d"
local function path(name) return root .. "/" .. name end

-- Fills a tensor with values from a fixed LCG in [-a, a).
local seed_state = 1
local function fill(t, a)
  for i = 0, t.numel - 1 do
    seed_state = (seed_state * 1103515245 + 12345) % 2147483648
    t.data[i] = a * (2 * seed_state / 2147483648 - 1)
  end
  return t
end

-- Direct implementation of encode and decode for one row, in Lua doubles.
local function ref_encode_row(sae, x, row)
  local D, L = sae.d_in, sae.d_sae
  local We, be, bd = sae:param("W_enc"), sae:param("b_enc"), sae:param("b_dec")
  local th = sae.architecture == "jumprelu" and sae:param("threshold") or nil
  local pre, z = {}, {}
  for l = 0, L - 1 do
    local acc = be.data[l]
    for d = 0, D - 1 do
      local xin = x.data[row * D + d] - (sae.apply_b_dec_to_input and bd.data[d] or 0)
      acc = acc + xin * We.data[d * L + l]
    end
    pre[l] = acc
    z[l] = 0
  end
  if sae.architecture == "topk" then
    local order = {}
    for l = 0, L - 1 do order[#order + 1] = l end
    table.sort(order, function(a, b) return pre[a] > pre[b] or (pre[a] == pre[b] and a < b) end)
    for j = 1, sae.k do z[order[j]] = math.max(pre[order[j]], 0) end
  else
    for l = 0, L - 1 do
      if pre[l] > 0 and (not th or pre[l] > th.data[l]) then z[l] = pre[l] end
    end
  end
  return pre, z
end

local function ref_decode_row(sae, z, row)
  local D, L = sae.d_in, sae.d_sae
  local Wd, bd = sae:param("W_dec"), sae:param("b_dec")
  local out = {}
  for d = 0, D - 1 do
    local acc = bd.data[d]
    for l = 0, L - 1 do acc = acc + z.data[row * L + l] * Wd.data[l * D + d] end
    out[d] = acc
  end
  return out
end

-- Random weights in every parameter (new leaves biases at zero).
local function randomize(sae)
  fill(sae:param("W_enc"), 0.5)
  fill(sae:param("W_dec"), 0.5)
  fill(sae:param("b_enc"), 0.3)
  fill(sae:param("b_dec"), 0.5)
  if sae.architecture == "jumprelu" then
    local th = fill(sae:param("threshold"), 0.5)
    for i = 0, th.numel - 1 do th.data[i] = th.data[i] + 0.5 end
  end
  return sae
end

local function same_tensor(a, b, what)
  check.eq(table.concat(a.shape, ","), table.concat(b.shape, ","), what .. " shape")
  check.eq(a:max_abs_diff(b), 0, what)
end

local function write_file(p, s)
  local f = assert(io.open(p, "wb"))
  f:write(s)
  f:close()
end

local T = {}

function T.new_and_fields()
  local sae = lt.sae.new{d_in = 8, d_sae = 20, architecture = "topk", k = 3, hook_name = "blocks.0.hook_resid_post",
                         model_name = "tiny", seed = 5}
  check.eq(sae.d_in, 8, "d_in")
  check.eq(sae.d_sae, 20, "d_sae")
  check.eq(sae.architecture, "topk", "architecture")
  check.eq(sae.k, 3, "k")
  check.eq(sae.hook_name, "blocks.0.hook_resid_post", "hook_name")
  check.eq(sae.model_name, "tiny", "model_name")
  check.eq(sae.apply_b_dec_to_input, true, "apply_b_dec_to_input")
  check.eq(sae.normalize_activations, "none", "normalize_activations")
  check.eq(sae.cfg.architecture, "topk", "cfg.architecture")
  check.eq(sae.cfg.k, 3, "cfg.k")
  check.eq(sae.cfg.metadata.hook_name, "blocks.0.hook_resid_post", "cfg.metadata.hook_name")
  check.truthy(tostring(sae):find("topk", 1, true), "tostring")

  -- The usual init: unit-norm decoder rows, W_enc = W_dec^T, zero biases.
  local Wd, We = sae:param("W_dec"), sae:param("W_enc")
  check.eq(table.concat(Wd.shape, ","), "20,8", "W_dec shape")
  check.eq(table.concat(We.shape, ","), "8,20", "W_enc shape")
  for l = 0, 19 do
    check.near(Wd:select(l):norm(), 1, 1e-5, "row norm")
    for d = 0, 7 do check.eq(We:get(d, l), Wd:get(l, d), "W_enc = W_dec^T") end
  end
  check.eq(sae:param("b_enc"):norm(), 0, "b_enc zero")
  check.eq(sae:param("b_dec"):norm(), 0, "b_dec zero")
  -- Same seed, same weights; another seed, others.
  local again = lt.sae.new{d_in = 8, d_sae = 20, architecture = "topk", k = 3, seed = 5}
  same_tensor(again:param("W_dec"), Wd, "seeded init")
  local other = lt.sae.new{d_in = 8, d_sae = 20, architecture = "topk", k = 3, seed = 6}
  check.truthy(other:param("W_dec"):max_abs_diff(Wd) > 0, "another seed")
  check.eq(lt.sae.new{d_in = 4, d_sae = 6}.architecture, "standard", "default architecture")
  check.eq(lt.sae.new{d_in = 4, d_sae = 6, architecture = "relu"}.architecture, "standard", "relu alias")
end

function T.encode_decode_against_reference()
  for _, arch in ipairs({"standard", "topk", "jumprelu"}) do
    for _, apply in ipairs({true, false}) do
      local sae = randomize(lt.sae.new{d_in = 6, d_sae = 15, architecture = arch, k = 4,
                                       apply_b_dec_to_input = apply})
      check.eq(sae.apply_b_dec_to_input, apply, "apply flag")
      local x = fill(Tensor.zeros({2, 3, 6}), 1)
      local z, pre = sae:encode(x, {pre = true})
      check.eq(table.concat(z.shape, ","), "2,3,15", "z shape")
      check.eq(table.concat(pre.shape, ","), "2,3,15", "pre shape")
      local x_hat = sae:decode(z)
      check.eq(table.concat(x_hat.shape, ","), "2,3,6", "x_hat shape")
      for row = 0, 5 do
        local rpre, rz = ref_encode_row(sae, x, row)
        local rx = ref_decode_row(sae, z, row)
        for l = 0, 14 do
          check.near(pre.data[row * 15 + l], rpre[l], 1e-5, arch .. " pre")
          check.near(z.data[row * 15 + l], rz[l], 1e-5, arch .. " z")
        end
        for d = 0, 5 do check.near(x_hat.data[row * 6 + d], rx[d], 1e-5, arch .. " x_hat") end
      end
      -- forward = encode then decode.
      local fx, fz = sae:forward(x)
      check.eq(fz:max_abs_diff(z), 0, "forward z")
      check.eq(fx:max_abs_diff(x_hat), 0, "forward x_hat")
    end
  end
  -- A plain Lua table is accepted as input; a 1-D tensor gives a 1-D result.
  local sae = lt.sae.new{d_in = 3, d_sae = 5, seed = 1}
  local z = sae:encode({1, 2, 3})
  check.eq(table.concat(z.shape, ","), "5", "1-D encode")
end

function T.topk_counts()
  local sae = randomize(lt.sae.new{d_in = 6, d_sae = 40, architecture = "topk", k = 5})
  local be = sae:param("b_enc")
  for l = 0, 39 do be.data[l] = 10 + l * 0.01 end   -- every pre-activation positive
  local z = sae:encode(fill(Tensor.zeros({7, 6}), 1))
  for row = 0, 6 do
    local nz = 0
    for l = 0, 39 do if z:get(row, l) ~= 0 then nz = nz + 1 end end
    check.eq(nz, 5, "exactly k non-zeros")
  end
end

function T.param_views_are_writable()
  local sae = lt.sae.new{d_in = 4, d_sae = 6, seed = 2}
  local x = Tensor.new({{0, 0, 0, 0}})
  local be = sae:param("b_enc")
  be:fill_(0.5)
  local z = sae:encode(x)
  for l = 0, 5 do check.near(z:get(0, l), 0.5, 1e-7, "b_enc written through the view") end
  check.raises(function() sae:param("threshold") end, "only for jumprelu")
  check.raises(function() sae:param("W_foo") end, "unknown SAE parameter")
  local j = lt.sae.new{d_in = 4, d_sae = 6, architecture = "jumprelu"}
  check.eq(table.concat(j:param("threshold").shape, ","), "6", "threshold view")
end

function T.save_and_load()
  for _, arch in ipairs({"standard", "topk", "jumprelu"}) do
    local sae = randomize(lt.sae.new{d_in = 5, d_sae = 12, architecture = arch, k = 2,
                                     hook_name = "blocks.1.mlp.hook_post", model_name = "tiny"})
    local dir = path("saved/" .. arch)
    sae:save(dir)
    local back = lt.sae.load(dir)
    check.eq(back.architecture, arch, "architecture")
    check.eq(back.k, sae.k, "k")
    check.eq(back.hook_name, "blocks.1.mlp.hook_post", "hook_name")
    check.eq(back.model_name, "tiny", "model_name")
    check.eq(back.dir, dir, "dir")
    local names = {"W_enc", "b_enc", "W_dec", "b_dec"}
    if arch == "jumprelu" then names[#names + 1] = "threshold" end
    for _, name in ipairs(names) do same_tensor(back:param(name), sae:param(name), arch .. " " .. name) end
    local x = fill(Tensor.zeros({4, 5}), 1)
    check.eq(back:encode(x):max_abs_diff(sae:encode(x)), 0, "same encoding")
  end
  -- set_hook_name updates C and the fields; the saved cfg follows.
  local sae = lt.sae.new{d_in = 3, d_sae = 4}
  check.eq(sae.hook_name, nil, "no hook yet")
  sae:set_hook_name("blocks.0.hook_resid_pre"):set_model_name("m"):set_apply_b_dec_to_input(false)
  check.eq(sae.cfg.hook_name, "blocks.0.hook_resid_pre", "cfg follows set_hook_name")
  check.eq(sae.apply_b_dec_to_input, false, "set_apply_b_dec_to_input")
  sae:save(path("renamed"))
  check.eq(lt.sae.load(path("renamed")).hook_name, "blocks.0.hook_resid_pre", "saved hook_name")
end

function T.saelens_cfg_from_lua()
  -- A hand-written SAELens 6 cfg.json beside weights written by save.
  local sae = randomize(lt.sae.new{d_in = 4, d_sae = 8, architecture = "topk", k = 2})
  local dir = path("handmade")
  sae:save(dir)
  write_file(dir .. "/cfg.json", [[
{"architecture": "topk", "d_in": 4, "d_sae": 8, "k": 2, "dtype": "float32",
 "apply_b_dec_to_input": true, "normalize_activations": "expected_average_only_in",
 "metadata": {"model_name": "gpt2-small", "hook_name": "blocks.0.hook_resid_post",
   "context_size": 128, "prepend_bos": true,
   "model_from_pretrained_kwargs": {"center_writing_weights": true, "fold_ln": false}}}]])
  local s = lt.sae.load(dir)
  check.eq(s.model_name, "gpt2-small", "model_name")
  check.eq(s.cfg.metadata.context_size, 128, "cfg.metadata.context_size")
  check.eq(s.cfg.metadata.prepend_bos, true, "cfg.metadata.prepend_bos")
  check.eq(s.normalize_activations, "expected_average_only_in", "normalize_activations")
  local opts = s:model_load_opts()
  check.eq(opts.center_writing_weights, true, "center_writing_weights from the metadata")
  check.eq(opts.fold_ln, false, "fold_ln from the metadata")
  check.eq(opts.center_unembed, nil, "unnamed flags stay off")
  -- A published norm scaling factor is folded at load: encode(x) of the
  -- folded SAE = encode(s * x) of the original.
  local folded = lt.sae.load(dir, {norm_scaling_factor = 0.5})
  check.eq(folded.normalize_activations, "none", "folded")
  local x = fill(Tensor.zeros({3, 4}), 1)
  check.truthy(folded:encode(x):max_abs_diff(s:encode(x * 0.5)) < 1e-5, "folded encode")
end

function T.errors()
  check.raises(function() lt.sae.load(path("nope")) end, "cfg.json")
  local dir = path("broken")
  lt.sae.new{d_in = 4, d_sae = 8}:save(dir)
  write_file(dir .. "/cfg.json", '{"architecture": "gated", "d_in": 4, "d_sae": 8}')
  check.raises(function() lt.sae.load(dir) end, "unknown architecture 'gated'")
  write_file(dir .. "/cfg.json", '{"architecture": "standard", "d_in": 4, "d_sae": 9}')
  check.raises(function() lt.sae.load(dir) end, "W_enc has shape [4, 8], expected [d_in, d_sae] = [4, 9]")
  write_file(dir .. "/cfg.json", '{"architecture": "topk", "d_in": 4, "d_sae": 8}')
  check.raises(function() lt.sae.load(dir) end, 'missing "k"')
  write_file(dir .. "/cfg.json", "{not json")
  check.raises(function() lt.sae.load(dir) end, "invalid JSON")

  local sae = lt.sae.new{d_in = 4, d_sae = 8}
  check.raises(function() sae:encode(Tensor.zeros({2, 5})) end, "expected a tensor [..., 4], got [2, 5]")
  check.raises(function() sae:decode(Tensor.zeros({2, 4})) end, "expected a tensor [..., 8], got [2, 4]")
  check.raises(function() lt.sae.new{d_in = 4, d_sae = 8, architecture = "gated"} end, "unknown architecture")
  check.raises(function() lt.sae.new{d_in = 4, d_sae = 8, architecture = "topk"} end, "needs k")
  check.raises(function() lt.sae.new{d_in = 4, d_sae = 8, architecture = "topk", k = 9} end, "k")
  check.raises(function() lt.sae.new{d_in = 0, d_sae = 8} end, "d_in")
  check.raises(function() lt.sae.new{d_in = 4, d_sae = 8, normalize_activations = "layer_norm"} end, "not supported")
end

function T.check_model_against_fixture()
  local m = lt.load(FIXTURE)
  local mlp = lt.sae.new{d_in = 256, d_sae = 512, architecture = "topk", k = 8, hook_name = "blocks.1.mlp.hook_post"}
  local p = mlp:check_model(m)
  check.eq(p, m:hook_point("blocks.1.mlp.hook_post"), "check_model returns the hook point")
  local resid = lt.sae.new{d_in = 64, d_sae = 128, hook_name = "blocks.0.hook_resid_post"}
  resid:check_model(m)

  local wrong = lt.sae.new{d_in = 64, d_sae = 128, hook_name = "blocks.1.mlp.hook_post"}
  check.raises(function() wrong:check_model(m) end, "d_in = 64 does not match the width 256 of blocks.1.mlp.hook_post")
  local wide = lt.sae.new{d_in = 256, d_sae = 128, hook_name = "blocks.0.hook_resid_pre"}
  check.raises(function() wide:check_model(m) end, "d_in = 256 does not match the width 64")
  local lost = lt.sae.new{d_in = 64, d_sae = 128, hook_name = "blocks.7.hook_resid_post"}
  check.raises(function() lost:check_model(m) end, "'blocks.7.hook_resid_post' is not in model")
  check.raises(function() lt.sae.new{d_in = 64, d_sae = 128}:check_model(m) end, "has no hook_name")

  -- Encode real activations from the hook point.
  local _, cache = m:run_with_cache({10, 20, 30, 40, 50})
  local act = cache["blocks.1.mlp.hook_post"]
  local z = mlp:encode(act)
  check.eq(z.shape[#z.shape], 512, "latents of real activations")
  check.eq(mlp:decode(z).numel, act.numel, "reconstruction of real activations")
end

-- Runs last (names sort): removes the temporary directories.
function T.zz_cleanup()
  assert(root:match("^/tmp/"), "unexpected temporary path " .. root)
  os.execute("rm -rf '" .. root .. "'")
end

return T
