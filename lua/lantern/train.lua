-- lantern.train: training a model with the C trainer (AdamW, clipping,
-- warmup + cosine learning rate).
--   local tr = lt.train.trainer(m, {weight_decay = 0.1, grad_clip = 1.0})
--   local loss, grad_norm = tr:step(batch, lr)    -- batch: list of equal-length id lists
--   lt.train.lr(step, {warmup = 100, total = 2000, max_lr = 1e-3, min_lr = 1e-4})
local ffi = require("ffi")
local F = require("lantern.ffi")
local C = F.C

local M = {}

local Trainer = {}
Trainer.__index = Trainer

function M.trainer(m, opts)
  opts = opts or {}
  local o = ffi.new("lt_adamw_opts")
  o.beta1 = opts.beta1 or 0.9
  o.beta2 = opts.beta2 or 0.95
  o.eps = opts.eps or 1e-8
  o.weight_decay = opts.weight_decay or 0.1
  o.grad_clip = opts.grad_clip or 1.0
  local out = ffi.new("lt_trainer *[1]")
  F.check(C.lt_trainer_new(m.ptr, o, out), "trainer")
  return setmetatable({ptr = ffi.gc(out[0], C.lt_trainer_free), model = m}, Trainer)
end

-- One optimisation step; returns the loss and the gradient norm before
-- clipping. mask (optional) has the batch's shape, one boolean per token:
-- true where the prediction made at that token counts in the loss (the
-- last token of a row never does), e.g. only the second copy of a repeated
-- sequence.
function Trainer:step(batch, lr, mask)
  local ids, B, T = self.model:input(batch)
  local counted = nil
  if mask ~= nil then
    local rows = type(mask[1]) == "table" and mask or {mask}
    if #rows ~= B then error(string.format("train step: the mask has %d rows, the batch %d", #rows, B), 2) end
    counted = ffi.new("uint8_t[?]", B * T)
    for b = 1, B do
      if #rows[b] ~= T then error(string.format("train step: mask row %d has %d entries, the batch rows %d tokens", b, #rows[b], T), 2) end
      for t = 1, T do counted[(b - 1) * T + t - 1] = rows[b][t] and 1 or 0 end
    end
  end
  local loss, norm = ffi.new("double[1]"), ffi.new("double[1]")
  F.check(C.lt_trainer_step_masked(self.ptr, ids, counted, B, T, lr, loss, norm), "train step")
  return loss[0], norm[0]
end

function Trainer:steps() return C.lt_trainer_steps(self.ptr) end
function Trainer:save_state(path) F.check(C.lt_trainer_save_state(self.ptr, path), "save optimizer state") end
function Trainer:load_state(path) F.check(C.lt_trainer_load_state(self.ptr, path), "load optimizer state") end

function M.lr(step, o)
  return C.lt_lr_schedule(step, o.warmup or 0, o.total, o.max_lr, o.min_lr or 0)
end

return M
