-- lantern.metrics: scalar functions of the logits whose gradients the
-- backward pass follows (TDB's "loss" of the node table).
--
--   lt.metrics.logit_diff{target = " Mary", distractor = " John", position = -1}
--       mean over target tokens of logit[position, t] minus the mean over
--       distractor tokens (TDB's metric D)
--   lt.metrics.logit{target = ..., position = -1}
--   lt.metrics.logprob{target = ..., position = -1}
--   lt.metrics.prob{target = ..., position = -1}
--   lt.metrics.cross_entropy{}   mean next-token loss over the sequence
--
-- Targets are ids, lists of ids, or strings that must be exactly one token
-- of the model's tokenizer. Option detach_ln_final_scale = true treats
-- ln_final's scale as a constant in the backward pass (TDB's choice for the
-- node table: the metric is then linear in the final residual stream).
-- A metric is callable: metric(logits) returns its value (one number for a
-- single prompt, a Lua array with one value per row for a batch).
local Tensor = require("lantern.tensor")

local M = {}

local Metric = {}
Metric.__index = Metric

local function id_list(m, x, what)
  if x == nil then error("metric: " .. what .. " is required", 3) end
  if type(x) ~= "table" then x = {x} end
  local out = {}
  for i, v in ipairs(x) do
    if type(v) == "string" then
      if not m then error("metric: " .. what .. " given as text needs a model with a tokenizer", 3) end
      local ids = m:to_tokens(v)
      if #ids ~= 1 then error(string.format("metric: %s '%s' is %d tokens, expected exactly one", what, v, #ids), 3) end
      out[i] = ids[1]
    elseif type(v) == "number" then
      out[i] = v
    else
      error("metric: " .. what .. " must be token ids or strings", 3)
    end
  end
  if #out == 0 then error("metric: " .. what .. " is empty", 3) end
  return out
end

-- Resolves string targets with m's tokenizer (once) and returns self.
function Metric:resolve(m)
  if not self.targets then
    self.model = m or self.model
    if self.kind ~= "cross_entropy" then self.targets = id_list(self.model, self.target, "target") end
    if self.kind == "logit_diff" then self.distractors = id_list(self.model, self.distractor, "distractor") end
  end
  return self
end

local function rows_of(logits)
  if #logits.shape == 2 then return 1, logits.shape[1], logits.shape[2], false end
  return logits.shape[1], logits.shape[2], logits.shape[3], true
end

local function check_ids(ids, V)
  for _, t in ipairs(ids) do
    if t < 0 or t >= V then error(string.format("metric: token id %d out of range (d_vocab = %d)", t, V), 4) end
  end
end

-- Stable log-sum-exp of a row of n floats at ptr (shared with the SAE
-- metrics).
local function logsumexp(row, n)
  local mx = -math.huge
  for i = 0, n - 1 do if row[i] > mx then mx = row[i] end end
  local s = 0
  for i = 0, n - 1 do s = s + math.exp(row[i] - mx) end
  return mx + math.log(s)
end
M.logsumexp = logsumexp

-- Value of the metric for row b (0-based) and, when grad (a float* to the
-- row's [T, V] gradient) is given, its gradient.
function Metric:_row(logits, b, grad)
  local _, T, V = rows_of(logits)
  local base = logits.data + b * T * V
  local kind = self.kind
  if kind == "cross_entropy" then
    local ids = self.ids_rows and self.ids_rows[b + 1]
    if not ids then error("metric: cross_entropy needs the input ids (use m:run_with_cache)", 3) end
    local total, count = 0, T - 1
    if count < 1 then error("metric: cross_entropy needs at least two tokens", 3) end
    for t = 0, T - 2 do
      local row = base + t * V
      local lse = logsumexp(row, V)
      local target = ids[t + 2]
      total = total + lse - row[target]
      if grad then
        local g = grad + t * V
        for i = 0, V - 1 do g[i] = g[i] + math.exp(row[i] - lse) / count end
        g[target] = g[target] - 1 / count
      end
    end
    return total / count
  end
  local pos = self.position or -1
  if pos < 0 then pos = pos + T end
  if pos < 0 or pos >= T then error(string.format("metric: position %d out of range (T = %d)", self.position, T), 3) end
  local row = base + pos * V
  local g = grad and grad + pos * V
  check_ids(self.targets, V)
  if kind == "logit_diff" then
    check_ids(self.distractors, V)
    local a, d = 0, 0
    for _, t in ipairs(self.targets) do
      a = a + row[t]
      if g then g[t] = g[t] + 1 / #self.targets end
    end
    for _, t in ipairs(self.distractors) do
      d = d + row[t]
      if g then g[t] = g[t] - 1 / #self.distractors end
    end
    return a / #self.targets - d / #self.distractors
  end
  if kind == "logit" then
    local s = 0
    for _, t in ipairs(self.targets) do
      s = s + row[t]
      if g then g[t] = g[t] + 1 / #self.targets end
    end
    return s / #self.targets
  end
  local lse = logsumexp(row, V)
  local n = #self.targets
  local value = 0
  for _, t in ipairs(self.targets) do
    local lp = row[t] - lse
    if kind == "logprob" then
      value = value + lp / n
      if g then
        g[t] = g[t] + 1 / n
        for i = 0, V - 1 do g[i] = g[i] - math.exp(row[i] - lse) / n end
      end
    else -- prob
      local p = math.exp(lp)
      value = value + p / n
      if g then
        for i = 0, V - 1 do g[i] = g[i] - p * math.exp(row[i] - lse) / n end
        g[t] = g[t] + p / n
      end
    end
  end
  return value
end

-- The metric's value: a number for [T, V] logits, a Lua array for [B, T, V].
function Metric:value(logits)
  self:resolve()
  local B, _, _, batched = rows_of(logits)
  if not batched then return self:_row(logits, 0, nil) end
  local out = {}
  for b = 0, B - 1 do out[b + 1] = self:_row(logits, b, nil) end
  return out
end

-- The metric's gradient with respect to the logits (a Tensor shaped like
-- logits; for a batch, each row's own metric) and its value.
function Metric:grad(logits)
  self:resolve()
  local B, T, V, batched = rows_of(logits)
  local g = Tensor.zeros(logits.shape)
  local values = {}
  for b = 0, B - 1 do values[b + 1] = self:_row(logits, b, g.data + b * T * V) end
  return g, batched and values or values[1]
end

Metric.__call = function(self, logits) return self:value(logits) end

local function make(kind)
  return function(opts)
    opts = opts or {}
    local m = setmetatable({}, Metric)
    for k, v in pairs(opts) do m[k] = v end
    m.kind = kind
    return m
  end
end

M.logit_diff = make("logit_diff")
M.logit = make("logit")
M.logprob = make("logprob")
M.prob = make("prob")
M.cross_entropy = make("cross_entropy")

function M.is(x) return getmetatable(x) == Metric end

return M
