-- Metrics: values from the logits, gradients against finite differences of
-- the value, and the backward pass through run_with_cache.
local lt = require("lantern")
local check = require("check")

local MODEL = "tests/fixtures/hf-gpt2-tiny2"
local TOK = "tests/fixtures/gpt2-tokenizer"
local IDS = {2215, 5335, 290, 1757, 1816, 284, 262, 3650, 11, 1757, 2921, 257, 4144, 284}

local T = {}

local function finite_difference_check(metric, logits)
  local g, value = metric:grad(logits)
  check.near(value, metric(logits), 1e-12, "grad returns the value")
  -- a few coordinates, including the targets
  local V = logits.shape[2]
  local coords = {{13, 5335}, {13, 1757}, {13, 0}, {12, 100}, {0, 42}}
  for _, c in ipairs(coords) do
    local t, v = c[1], c[2]
    local keep = logits:get(t, v)
    local h = 1e-2
    logits:set(keep + h, t, v)
    local up = metric(logits)
    logits:set(keep - h, t, v)
    local down = metric(logits)
    logits:set(keep, t, v)
    check.near(g:get(t, v), (up - down) / (2 * h), 1e-4 + 1e-3 * math.abs(g:get(t, v)),
      metric.kind .. " gradient at " .. t .. "," .. v)
  end
  return V
end

function T.values_and_gradients()
  local m = lt.load(MODEL)
  local logits = m:forward(IDS)
  local ld = lt.metrics.logit_diff{target = 5335, distractor = 1757}
  check.near(ld(logits), logits:get(-1, 5335) - logits:get(-1, 1757), 1e-12, "logit_diff")
  check.near(ld(logits), -8.316729545593262, 1e-4, "logit_diff matches Hugging Face")
  local multi = lt.metrics.logit_diff{target = {5335, 11}, distractor = {1757}}
  check.near(multi(logits), (logits:get(-1, 5335) + logits:get(-1, 11)) / 2 - logits:get(-1, 1757), 1e-9, "mean over targets")
  for _, metric in ipairs({ld, lt.metrics.logit{target = 5335}, lt.metrics.logprob{target = 5335},
                           lt.metrics.prob{target = 5335}, lt.metrics.logit{target = 5335, position = 12}}) do
    finite_difference_check(metric, logits)
  end
  local ce = lt.metrics.cross_entropy{}
  local _, cache = m:run_with_cache(IDS, {names = "blocks.0.hook_resid_pre", backward = ce})
  check.near(cache.metric, m:loss(IDS), 1e-9, "cross_entropy equals the loss")
end

function T.backward_through_cache_matches_run_with_grads()
  local m = lt.load(MODEL)
  local metric = lt.metrics.logit_diff{target = 5335, distractor = 1757}
  local _, cache = m:run_with_cache(IDS, {names = {"blocks.0.mlp.hook_post"}, backward = metric})
  local grad = cache["blocks.0.mlp.hook_post_grad"]
  check.eq(grad.shape[1], 14, "grad shape")
  local same = m:run_with_grads(IDS, {metric = metric}, function(s)
    return s:grad("blocks.0.mlp.hook_post"):max_abs_diff(grad)
  end)
  check.eq(same, 0, "same gradient both ways")
  -- a gradient is linear in the metric: the distractor-only metric's
  -- gradient is the difference of the two logit gradients
  local _, a = m:run_with_cache(IDS, {names = "blocks.0.mlp.hook_post", backward = lt.metrics.logit{target = 5335}})
  local _, b = m:run_with_cache(IDS, {names = "blocks.0.mlp.hook_post", backward = lt.metrics.logit{target = 1757}})
  local diff = a["blocks.0.mlp.hook_post_grad"] - b["blocks.0.mlp.hook_post_grad"]
  check.truthy(diff:max_abs_diff(grad) < 1e-6, "linearity of the backward pass")
end

function T.detached_scale_makes_the_metric_linear_in_the_final_residual()
  local m = lt.load(MODEL)
  local metric = lt.metrics.logit_diff{target = 5335, distractor = 1757, detach_ln_final_scale = true}
  m:run_with_grads(IDS, {metric = metric}, function(s)
    local g = s:grad("blocks.1.hook_resid_post")
    local x = s:act("blocks.1.hook_resid_post")
    local scale = s:act("ln_final.hook_scale")
    -- only the last position has a gradient
    for t = 0, 12 do
      for c = 0, 63 do check.eq(g:get(t, c), 0, "no gradient before the last position") end
    end
    -- D = g . x + constant; the constant is the ln_f bias term, which we
    -- recover and compare with its closed form
    local dot = 0
    for c = 0, 63 do dot = dot + g:get(13, c) * x:get(13, c) end
    local W = m:param("lm_head.weight")
    local b = m:param("ln_f.bias")
    local const = 0
    for c = 0, 63 do const = const + b:get(c) * (W:get(5335, c) - W:get(1757, c)) end
    check.near(dot + const, s.value, 1e-4, "decomposition of D with the scale detached")
    check.truthy(scale:get(13, 0) > 0, "scale cached")
  end)
end

function T.text_targets()
  local m = lt.load(MODEL, {tokenizer = TOK})
  local metric = lt.metrics.logit_diff{target = " Mary", distractor = " John"}
  local logits = m:forward("When Mary and John went to the store, John gave a drink to")
  metric:resolve(m)
  check.near(metric(logits), -8.316729545593262, 1e-4, "text targets resolve to ids")
  check.raises(function() lt.metrics.logit_diff{target = " Maryland and", distractor = " John"}:resolve(m) end,
    "expected exactly one", "multi-token target")
  check.raises(function() lt.metrics.logit{target = 60000}(logits) end, "out of range", "id out of range")
end

return T
