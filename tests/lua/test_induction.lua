-- test_induction.lua: lantern.recipes.induction measures what it says.
-- With the query and key weights zeroed, every head attends uniformly to
-- the positions so far (1/(q+1) each), so the induction and previous-token
-- scores have exact values to compare against.
local lt = require("lantern")
local ind = require("lantern.recipes.induction")
local check = require("check")

local T = {}

local function uniform_attention_model()
  local m = lt.random_model({ n_layer = 2, n_head = 2, n_embd = 16, d_mlp = 64, n_ctx = 64, d_vocab = 50 }, 3)
  local C = m.cfg.n_embd
  for l = 0, m.cfg.n_layer - 1 do
    local w = m:param(("h.%d.attn.c_attn.weight"):format(l))   -- [C, 3C]: q | k | v columns
    local b = m:param(("h.%d.attn.c_attn.bias"):format(l))
    for r = 0, C - 1 do for j = 0, 2 * C - 1 do w.data[r * 3 * C + j] = 0 end end
    for j = 0, 2 * C - 1 do b.data[j] = 0 end
  end
  return m
end

local function near(a, b, what) check.truthy(math.abs(a - b) < 1e-5, string.format("%s: %.7f vs %.7f", what, a, b)) end

function T.scores_of_uniform_attention()
  local m = uniform_attention_model()
  local set = ind.prepare(m, { n = 6, seq_len = 10, seed = 1, random_prefix = 4 })
  check.eq(set.start, 14, "second copy after 4 random ids and 10 ids")
  check.eq(set.T, 24, "row length")
  local want_ind, want_prev = 0, 0
  for q = set.start, set.start + set.L - 1 do want_ind = want_ind + 1 / (q + 1) end
  for q = 1, set.T - 1 do want_prev = want_prev + 1 / (q + 1) end
  want_ind, want_prev = want_ind / set.L, want_prev / (set.T - 1)
  local ind_scores, prev_scores = ind.scores(m, set), ind.previous_token_scores(m, set)
  check.eq(#ind_scores, 4, "one score per head")
  check.eq(#prev_scores, 4, "one score per head")
  for i = 1, 4 do
    near(ind_scores[i].score, want_ind, "induction score of " .. ind_scores[i].name)
    near(prev_scores[i].score, want_prev, "previous-token score of " .. prev_scores[i].name)
  end
  -- ties are ordered by layer, then head
  check.eq(ind_scores[1].name, "L0/H0", "first of equal scores")
  check.eq(prev_scores[4].name, "L1/H1", "last of equal scores")
end

function T.random_prefix_keeps_the_sequences()
  local m = uniform_attention_model()
  local plain = ind.prepare(m, { n = 5, seq_len = 8, seed = 2 })
  local shifted = ind.prepare(m, { n = 5, seq_len = 8, seed = 2, random_prefix = 3 })
  check.eq(shifted.start, plain.start + 3, "start moves by the random ids")
  for b = 1, 5 do
    for i = 1, 16 do check.eq(shifted.rows[b][3 + i], plain.rows[b][i], "same sequence") end
  end
end

return T
