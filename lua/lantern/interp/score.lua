-- lantern.interp.score: how well simulated activations match the true ones
-- (Bills et al. 2023; formulas in docs/interp.md):
--   ev_correlation_score         Pearson correlation pooled over every token
--                                of every scored record (not averaged per record)
--   rsquared_score               1 - mean((t - p)^2) / mean(t^2) (not centred)
--   absolute_dev_explained_score 1 - mean|t - p| / mean|t|
--   top_only_score, random_only_score: the correlation over the top or the
--                                random records alone
-- An undefined value (a constant input, a zero denominator) is M.undefined
-- (json.null, stored as null), never NaN.
local json = require("lantern.json")

local M = {}

M.undefined = json.null

-- Pearson correlation of two equal-length lists; undefined when either is
-- constant (including empty or single-element lists).
function M.correlation(x, y)
  local n = #x
  if n ~= #y then error(string.format("correlation: %d values against %d", n, #y), 2) end
  if n < 2 then return M.undefined end
  local xmin, xmax, ymin, ymax = math.huge, -math.huge, math.huge, -math.huge
  local sx, sy = 0, 0
  for i = 1, n do
    local a, b = x[i], y[i]
    if a ~= a or b ~= b then error("correlation: NaN at position " .. i, 2) end
    sx, sy = sx + a, sy + b
    if a < xmin then xmin = a end
    if a > xmax then xmax = a end
    if b < ymin then ymin = b end
    if b > ymax then ymax = b end
  end
  -- Exact constancy, tested on the values rather than on a variance that
  -- rounding can leave slightly above zero.
  if xmin == xmax or ymin == ymax then return M.undefined end
  local mx, my = sx / n, sy / n
  local sxy, sxx, syy = 0, 0, 0
  for i = 1, n do
    local dx, dy = x[i] - mx, y[i] - my
    sxy = sxy + dx * dy
    sxx = sxx + dx * dx
    syy = syy + dy * dy
  end
  if sxx <= 0 or syy <= 0 then return M.undefined end
  local r = sxy / math.sqrt(sxx * syy)
  -- Rounding can push |r| a hair past 1.
  return math.max(-1, math.min(1, r))
end

-- 1 - mean((t - p)^2) / mean(t^2); undefined when every t is 0.
function M.rsquared(t, p)
  local num, den = 0, 0
  for i = 1, #t do
    num = num + (t[i] - p[i]) ^ 2
    den = den + t[i] ^ 2
  end
  if den == 0 then return M.undefined end
  return 1 - num / den
end

-- 1 - mean|t - p| / mean|t|; undefined when every t is 0.
function M.absolute_dev_explained(t, p)
  local num, den = 0, 0
  for i = 1, #t do
    num = num + math.abs(t[i] - p[i])
    den = den + math.abs(t[i])
  end
  if den == 0 then return M.undefined end
  return 1 - num / den
end

local function flatten(lists, groups, want, what)
  local out = {}
  for r, list in ipairs(lists) do
    if want == nil or groups[r] == want then
      for _, v in ipairs(list) do out[#out + 1] = v end
    end
  end
  return out
end

-- Scores of simulated against true activations. true_acts and simulated
-- are lists of per-record lists (the same lengths); opts.groups, optional,
-- names each record's group ("top" or "random") for the top-only and
-- random-only scores. Returns {ev_correlation_score=, rsquared_score=,
-- absolute_dev_explained_score=, top_only_score=, random_only_score=,
-- n_records=, n_tokens=}.
function M.score(true_acts, simulated, opts)
  opts = opts or {}
  if #true_acts ~= #simulated then
    error(string.format("score: %d true records against %d simulated", #true_acts, #simulated), 2)
  end
  for r = 1, #true_acts do
    if #true_acts[r] ~= #simulated[r] then
      error(string.format("score: record %d has %d true values and %d simulated", r,
                          #true_acts[r], #simulated[r]), 2)
    end
  end
  local t, p = flatten(true_acts), flatten(simulated)
  local s = {
    ev_correlation_score = M.correlation(t, p),
    rsquared_score = M.rsquared(t, p),
    absolute_dev_explained_score = M.absolute_dev_explained(t, p),
    n_records = #true_acts,
    n_tokens = #t,
  }
  local groups = opts.groups
  if groups then
    for _, g in ipairs{"top", "random"} do
      local tg, pg = flatten(true_acts, groups, g), flatten(simulated, groups, g)
      s[g .. "_only_score"] = M.correlation(tg, pg)
    end
  else
    s.top_only_score, s.random_only_score = M.undefined, M.undefined
  end
  return s
end

-- True when x is a number (not undefined).
function M.defined(x)
  return type(x) == "number"
end

-- "0.612" or "undefined", for reports.
function M.format(x, fmt)
  if type(x) ~= "number" then return "undefined" end
  return string.format(fmt or "%.3f", x)
end

return M
