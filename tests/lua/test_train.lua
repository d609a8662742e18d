-- The trainer from Lua: loss falls, a checkpoint reloads to identical
-- logits, optimizer state round-trips.
local lt = require("lantern")
local check = require("check")

local T = {}

function T.train_save_reload()
  local m = lt.random_model({n_layer = 2, n_head = 2, n_embd = 16, n_ctx = 16, d_vocab = 31}, 5)
  local tr = lt.train.trainer(m, {weight_decay = 0.01})
  local batch = {}
  for b = 1, 4 do
    local row = {}
    for t = 1, 10 do row[t] = (b * 5 + t * 3) % 31 end
    batch[b] = row
  end
  local first, last
  for s = 0, 59 do
    local loss = tr:step(batch, lt.train.lr(s, {warmup = 5, total = 60, max_lr = 1e-2, min_lr = 1e-3}))
    first = first or loss
    last = loss
  end
  check.truthy(last < first * 0.5, string.format("loss falls: %.3f -> %.3f", first, last))
  check.eq(tr:steps(), 60, "step count")
  local dir = os.tmpname()
  os.remove(dir)
  m:save(dir)
  local again = lt.load(dir)
  check.eq(again:forward(batch[1]):max_abs_diff(m:forward(batch[1])), 0, "checkpoint reloads to identical logits")
  tr:save_state(dir .. "/optimizer.safetensors")
  local tr2 = lt.train.trainer(again, {weight_decay = 0.01})
  tr2:load_state(dir .. "/optimizer.safetensors")
  check.eq(tr2:steps(), 60, "optimizer state restored")
  -- one more step from both gives the same weights
  tr:step(batch, 1e-3)
  tr2:step(batch, 1e-3)
  check.eq(again:forward(batch[2]):max_abs_diff(m:forward(batch[2])), 0, "resumed training continues identically")
  os.execute("rm -rf '" .. dir .. "'")
end

-- A masked step's loss is that of the counted positions only: a row whose
-- mask keeps just its first prediction reports that prediction's loss.
function T.loss_mask()
  local cfg = {n_layer = 1, n_head = 2, n_embd = 16, n_ctx = 16, d_vocab = 29}
  local m = lt.random_model(cfg, 7)
  local row = {3, 14, 27, 5, 9}
  local logits = m:forward(row)                 -- [T, V], before the step
  local mx, sum = -math.huge, 0
  for v = 0, cfg.d_vocab - 1 do mx = math.max(mx, logits:get(0, v)) end
  for v = 0, cfg.d_vocab - 1 do sum = sum + math.exp(logits:get(0, v) - mx) end
  local want = mx + math.log(sum) - logits:get(0, 14)
  local tr = lt.train.trainer(m)
  local loss = tr:step({row}, 1e-3, {{true, false, false, false, false}})
  check.near(loss, want, 1e-5, "masked loss = -log p(second token | first)")
  check.raises(function() tr:step({row}, 1e-3, {{false, false, false, false, true}}) end, "selects no position",
    "an empty mask (the last position never counts)")
  check.raises(function() tr:step({row}, 1e-3, {{true, true}}) end, "mask row 1 has 2 entries", "mask row length")
  check.raises(function() tr:step({row, row}, 1e-3, {{true, true, true, true, true}}) end, "the mask has 1 rows",
    "mask row count")
  check.eq(tr:steps(), 1, "failed steps do not count")
end

function T.errors()
  local m = lt.random_model({n_layer = 1, n_head = 1, n_embd = 8, n_ctx = 8, d_vocab = 5}, 1)
  local tr = lt.train.trainer(m)
  check.raises(function() tr:step({{1}}, 1e-3) end, "at least two tokens", "short sequence")
  check.raises(function() tr:step({{1, 9}}, 1e-3) end, "out of range", "bad id")
end

return T
