-- lantern fetch: downloads a model from the Hugging Face hub into the store.
local args = require("lantern.cli.args")

local usage = [[
usage: lantern fetch NAME [--dir DIR] [--endpoint URL] [--timeout S]

Downloads config.json, vocab.json, merges.txt and model.safetensors of NAME
from the Hugging Face hub; files already present are skipped.

  NAME            gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2, or a hub
                  repo id OWNER/NAME
  --dir DIR       target directory (default store/models/NAME, or
                  store/models/OWNER--NAME for a repo id)
  --endpoint URL  hub base URL (default $HF_ENDPOINT or https://huggingface.co)
  --timeout S     give up after S seconds without data (default 60)

A token in $HF_TOKEN is sent for private or gated repositories.]]

local function run(argv)
  local opts, positional = args.parse(argv, { dir = "string", endpoint = "string", timeout = "number" })
  if #positional ~= 1 then error("expected one model name\n" .. usage, 0) end
  if opts.timeout and opts.timeout <= 0 then error("--timeout must be positive", 0) end
  local hub = require("lantern.hub")
  local dir = hub.fetch(positional[1], {
    dir = opts.dir,
    endpoint = opts.endpoint,
    timeout = opts.timeout and math.ceil(opts.timeout),
    -- The bar redraws one line with \r: only useful on a terminal.
    progress = hub.stderr_is_tty(),
  })
  print(positional[1] .. " is in " .. dir)
  return 0
end

return { summary = "download a model from the Hugging Face hub", usage = usage, run = run }
