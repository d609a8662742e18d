-- lantern demo (interim): one end-to-end pass through the engine on the
-- test fixture model, until the trained default model lands. Everything
-- printed is computed here, on this run.
local usage = [[
usage: lantern demo

Loads the 2-layer test fixture GPT-2 (random weights) with the GPT-2
tokenizer, runs the indirect-object prompt through it with its activations
cached, and prints the tokens, the top next tokens, the " Mary" - " John"
logit difference, the loss, a greedy continuation and, per layer, the head
that attends most from the last token to " Mary".]]

local prompt = "When Mary and John went to the store, John gave a drink to"

local function quote(s) return (string.format("%q", s):gsub("\\\n", "\\n")) end

local function run(argv)
  if #argv > 0 then error("demo takes no arguments\n" .. usage, 0) end
  local lt = require("lantern")
  local model_dir = "tests/fixtures/hf-gpt2-tiny2"
  local tok_dir = "tests/fixtures/gpt2-tokenizer"
  local m = lt.load(lt.root .. "/" .. model_dir, {tokenizer = lt.root .. "/" .. tok_dir})
  local tok = m.tokenizer

  print("lantern demo: " .. tostring(m))
  print("Note: this is " .. model_dir .. ", a 2-layer GPT-2 with random weights used by the tests,")
  print("so its outputs are not meaningful language; they show the engine working end to end.")
  print("The trained default model comes with the training issue.")
  print()

  local ids = m:to_tokens(prompt)
  local T = #ids
  print(string.format("prompt  %s", quote(prompt)))
  local shown = {}
  for i, id in ipairs(ids) do shown[i] = string.format("%d:%s", id, quote(tok:token_text(id))) end
  print(string.format("tokens  %d: %s", T, table.concat(shown, " ")))
  print()

  -- Only the attention patterns are kept: that is all the last part needs.
  local logits, cache = m:run_with_cache(ids, {names = function(name) return name:match("attn%.hook_pattern$") ~= nil end})
  local last = logits:select(T - 1)          -- [d_vocab]: the next-token logits

  -- Softmax of the last row, computed stably (shift by the max).
  local max = last:max()
  local z = 0
  for i = 0, last.numel - 1 do z = z + math.exp(last.data[i] - max) end
  local values, top = last:topk(5)
  print("top 5 next tokens after the prompt:")
  for r = 1, #top do
    print(string.format("  %d. %-14s id %5d  logit %8.4f  p %.5f", r, quote(tok:token_text(top[r])), top[r],
                        values[r], math.exp(values[r] - max) / z))
  end

  local mary, john = m:to_single_token(" Mary"), m:to_single_token(" John")
  print(string.format("logit difference \" Mary\" - \" John\": %.4f", last:get(mary) - last:get(john)))
  print(string.format("loss (mean next-token cross-entropy): %.4f", m:loss(ids)))

  local new = m:generate(ids, 8, {temperature = 0})
  print(string.format("8 greedy tokens: {%s} = %s", table.concat(new, ", "), quote(m:to_string(new))))
  print()

  -- Attention from the last position to the first " Mary".
  local mary_pos
  for i, id in ipairs(ids) do
    if id == mary then mary_pos = i - 1 break end
  end
  print(string.format("attention from the last token (position %d) to \" Mary\" (position %d):", T - 1, mary_pos))
  for l = 0, m.cfg.n_layer - 1 do
    local pattern = cache:get("pattern", l)  -- [n_head, T, T]
    local best, best_h, per_head = -1, 0, {}
    for h = 0, m.cfg.n_head - 1 do
      local a = pattern:get(h, T - 1, mary_pos)
      per_head[#per_head + 1] = string.format("%.3f", a)
      if a > best then best, best_h = a, h end
    end
    print(string.format("  layer %d: head L%d/H%d attends most (%.3f); all heads: %s", l, l, best_h, best,
                        table.concat(per_head, " ")))
  end
  return 0
end

return { summary = "a short end-to-end run on the test fixture model (interim)", usage = usage, run = run }
