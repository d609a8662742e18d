-- SAEs spliced into the forward pass: with the error term the run is
-- unchanged; zeroing a latent moves the hook output by exactly its decoder
-- contribution; without the error term the output is the reconstruction;
-- the backward pass gives the latents g W_dec^T.
local lt = require("lantern")
local check = require("check")

local MODEL = "tests/fixtures/hf-gpt2-tiny2"
local IDS = {2215, 5335, 290, 1757, 1816, 284, 262, 3650, 11, 1757, 2921, 257, 4144, 284}
local HOOK = "blocks.0.mlp.hook_post"

local T = {}

local function setup(arch, use_error)
  local m = lt.load(MODEL)
  local sae = lt.sae.new{d_in = 256, d_sae = 512, architecture = arch or "standard", k = 8, hook_name = HOOK, seed = 3}
  -- a non-zero encoder bias so that latents fire
  local b = sae:param("b_enc")
  for i = 0, b.numel - 1 do b.data[i] = 0.05 end
  m:attach_sae(sae, {use_error_term = use_error})
  return m, sae
end

function T.error_term_leaves_the_run_unchanged()
  local plain = lt.load(MODEL):forward(IDS)
  for _, arch in ipairs({"standard", "topk"}) do
    local m = setup(arch, true)
    local logits, cache = m:run_with_cache(IDS, {names = {HOOK .. ".hook_sae_acts_post", HOOK .. ".hook_sae_error"}})
    check.truthy(logits:max_abs_diff(plain) < 1e-5, arch .. ": logits unchanged: " .. logits:max_abs_diff(plain))
    local z = cache[HOOK .. ".hook_sae_acts_post"]
    check.eq(z.shape[2], 512, "latents shape")
    check.truthy(z:max() > 0, "some latents fire")
    m:detach_saes()
    check.eq(m:forward(IDS):max_abs_diff(plain), 0, "detached: plain model again")
  end
end

function T.zeroing_a_latent_moves_the_output_by_its_decoder_column()
  local m, sae = setup("standard", true)
  local pos = 13
  -- the strongest latent at the last position
  local _, c = m:run_with_cache(IDS, {names = {HOOK .. ".hook_sae_acts_post"}})
  local z = c[HOOK .. ".hook_sae_acts_post"]:select(pos)
  local zl, l = z:max()
  check.truthy(zl > 0, "a latent fires at the last position")
  local out = {}
  m:hooks({{HOOK, function(act) out.clean = act:select(pos):clone() end}}, function() m:forward(IDS) end)
  -- the hook at HOOK runs before the splice: capture the spliced output at
  -- the next point that reads it, mlp.hook_out's input, through a second run
  local function spliced_output(hooks)
    local got
    local list = {{HOOK .. ".hook_sae_recons", function(act) got = act:select(pos):clone() end},
                  {HOOK .. ".hook_sae_error", function(act) out.err = act:select(pos):clone() end}}
    for _, h in ipairs(hooks) do table.insert(list, 1, h) end
    m:run_with_hooks(IDS, list)
    return got + out.err
  end
  local before = spliced_output({})
  local after = spliced_output({{HOOK .. ".hook_sae_acts_post", lt.ablate.zero{positions = {pos}, neurons = {l}}}})
  local W = sae:param("W_dec")
  local maxdiff = 0
  for i = 0, 255 do
    local want = -zl * W:get(l, i)
    maxdiff = math.max(maxdiff, math.abs((after:get(i) - before:get(i)) - want))
  end
  check.truthy(maxdiff < 1e-5, "change equals -z_l W_dec[l]: " .. maxdiff)
  check.truthy(before:max_abs_diff(out.clean) < 1e-5, "unedited splice output equals the input")
end

function T.without_error_term_the_output_is_the_reconstruction()
  local m, sae = setup("standard", false)
  local _, c = m:run_with_cache(IDS, {names = {HOOK, HOOK .. ".hook_sae_recons", "blocks.0.hook_mlp_out"}})
  local x, recons = c[HOOK], c[HOOK .. ".hook_sae_recons"]
  local direct = sae:forward(x)
  check.truthy(direct:max_abs_diff(recons) < 1e-5, "recons = decode(encode(x))")
  -- mlp_out = recons @ W_out + b_out
  local W, b = m:param("h.0.mlp.c_proj.weight"), m:param("h.0.mlp.c_proj.bias")
  local out = c["blocks.0.hook_mlp_out"]
  local t = 5
  for j = 0, 63, 9 do
    local acc = b:get(j)
    for i = 0, 255 do acc = acc + recons:get(t, i) * W:get(i, j) end
    check.near(out:get(t, j), acc, 1e-4, "mlp_out reads the reconstruction")
  end
end

function T.backward_gives_latent_gradients()
  local m, sae = setup("standard", true)
  local metric = lt.metrics.logit_diff{target = 5335, distractor = 1757}
  local _, c = m:run_with_cache(IDS, {names = {HOOK, HOOK .. ".hook_sae_acts_post", "blocks.0.hook_mlp_out"},
                                      backward = metric})
  local plain_m = lt.load(MODEL)
  local _, pc = plain_m:run_with_cache(IDS, {names = {HOOK}, backward = metric})
  local g_out = c[HOOK .. "_grad"]
  check.truthy(g_out:max_abs_diff(pc[HOOK .. "_grad"]) < 1e-5, "the error term keeps the model's gradient")
  local gz = c[HOOK .. ".hook_sae_acts_post_grad"]
  local W = sae:param("W_dec")
  for _, tl in ipairs({{13, 0}, {13, 77}, {4, 300}}) do
    local t, l = tl[1], tl[2]
    local acc = 0
    for i = 0, 255 do acc = acc + g_out:get(t, i) * W:get(l, i) end
    check.near(gz:get(t, l), acc, 1e-5, "g_z = g W_dec^T")
  end
end

-- Detaching and attaching another SAE under the same attachment index: the
-- run's SAE buffers follow the new widths (they were reused at the old
-- ones, which overflowed for a wider SAE; ASan saw it).
function T.a_wider_sae_after_detach()
  local m = lt.load(MODEL)
  local small = lt.sae.new{d_in = 64, d_sae = 16, hook_name = "blocks.1.hook_resid_pre", seed = 4}
  m:attach_sae(small)
  m:forward(IDS)
  m:detach_saes()
  local wide = lt.sae.new{d_in = 256, d_sae = 600, hook_name = HOOK, seed = 5}
  m:attach_sae(wide)
  local _, c = m:run_with_cache(IDS, {names = {HOOK, HOOK .. ".hook_sae_acts_post"}})
  local z = c[HOOK .. ".hook_sae_acts_post"]
  check.eq(z.shape[2], 600, "latents shape")
  check.truthy(z:max_abs_diff(wide:encode(c[HOOK])) < 1e-5, "latents of the new SAE")
end

function T.errors()
  local m = lt.load(MODEL)
  local sae = lt.sae.new{d_in = 64, d_sae = 32, hook_name = HOOK, seed = 1}
  check.raises(function() m:attach_sae(sae) end, "d_in", "width mismatch")
  local ok = lt.sae.new{d_in = 256, d_sae = 32, hook_name = HOOK, seed = 1}
  m:attach_sae(ok)
  check.raises(function() m:attach_sae(ok) end, "already has an SAE", "one SAE per point")
  check.raises(function() m:run_with_cache(IDS, {names = {"blocks.1.mlp.hook_post.hook_sae_acts_post"}}) end,
    "unknown hook point", "no SAE there")
end

return T
