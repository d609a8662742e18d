-- lantern mine: mines a dataset for the top, random and quantile-bin
-- records and the statistics of every MLP neuron, attention head and SAE
-- latent of a model, into the store (lua/lantern/mine.lua, docs/mining.md).
local args = require("lantern.cli.args")
local ffi = require("ffi")

local usage = [[
usage: lantern mine --model DIR --data FILE [options]

  --model DIR           Hugging Face GPT-2 directory
  --data FILE           text (tokenised with the model's tokenizer), or token
                        ids: FILE.bin little-endian uint16, FILE.tokens int32
  --window N            tokens per window (default 64)
  --top N               top windows kept per node (default 20)
  --random N            random windows kept (default 20)
  --per-bin N           random windows kept per quantile bin (default 5)
  --quantile-windows N  windows whose maxima set the bin boundaries
                        (default min(1024, windows / 4))
  --kinds LIST          any of mlp,attn,sae (default mlp); sae needs --sae
  --layers A-B          layer range, or one layer (default all)
  --sae DIR             an SAELens SAE directory (cfg.json +
                        sae_weights.safetensors) to attach and mine; repeat
                        the option or separate directories with commas. An
                        SAE's latents are stored under the layer of its hook
                        point; SAEs are mined only within --layers (one
                        outside is an error), at most one per layer. The
                        model gets the weight processing the SAEs' cfg.json
                        asks for
  --store PATH          store directory (default store/lantern.lmdb)
  --name NAME           model name in the store (default: the model
                        directory's base name)
  --resume              continue the interrupted run of NAME (with the same
                        SAEs; without --sae, those it loaded)
  --max-windows N       stop after N windows
  --batch B             windows per forward pass (default 8)
  --commit-every N      commit every N windows (default 64, later when
                        commits are slow)
  --seed N              seed of the random samples (default 0)
  --tokenizer DIR       vocab.json + merges.txt when the model has none

Progress (tokens/s, time left) is drawn on stderr when it is a terminal;
otherwise one summary line is printed at the end.]]

pcall(ffi.cdef, "int isatty(int fd);")

local function clock(s)
  s = math.max(0, math.floor(s + 0.5))
  if s >= 3600 then return string.format("%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60) end
  return string.format("%d:%02d", s / 60, s % 60)
end

local function rate(x)
  if x >= 1e6 then return string.format("%.1fM", x / 1e6) end
  if x >= 1e4 then return string.format("%.0fk", x / 1e3) end
  return string.format("%.0f", x)
end

local function run(argv)
  local o = args.parse(argv, {
    model = "string", data = "string", window = "number", top = "number", random = "number",
    ["per-bin"] = "number", ["quantile-windows"] = "number", kinds = "string", layers = "string",
    store = "string", name = "string", resume = "boolean", ["max-windows"] = "number", batch = "number",
    ["commit-every"] = "number", seed = "number", tokenizer = "string", sae = "list",
  })
  if not o.model then error("--model DIR is required\n" .. usage, 0) end
  if not o.data then error("--data FILE is required\n" .. usage, 0) end
  local mine = require("lantern.mine")
  local tty = ffi.C.isatty(2) == 1
  local progress
  if tty then
    local last = 0
    progress = function(done, total, secs, from, window)
      local now = secs
      if now - last < 0.2 and done < total then return end
      last = now
      local tps = (done - from) * window / math.max(secs, 1e-9)
      local frac = total > 0 and math.min(1, done / total) or 0
      local width = 30
      local fill = math.floor(frac * width + 0.5)
      local left = done > from and (total - done) * secs / (done - from) or 0
      io.stderr:write(string.format("\r[%s%s] %3d%% %d/%d windows  %s tok/s  %s left ", string.rep("#", fill),
        string.rep("-", width - fill), math.floor(frac * 100), done, total, rate(tps), clock(left)))
      io.stderr:flush()
    end
  end
  local res = mine.run{
    model = o.model, tokenizer = o.tokenizer, saes = o.sae, data = o.data, window = o.window, top = o.top, random = o.random, per_bin = o["per-bin"],
    quantile_windows = o["quantile-windows"], kinds = o.kinds, layers = o.layers, store = o.store, name = o.name,
    resume = o.resume, max_windows = o["max-windows"], batch = o.batch, commit_every = o["commit-every"],
    seed = o.seed, progress = progress,
  }
  if tty then io.stderr:write("\n") end
  local new = res.windows - res.resumed_from
  local latents = {}
  for _, s in ipairs(res.saes or {}) do latents[#latents + 1] = string.format("%d of %s", s.d_sae, s.hook) end
  io.stderr:write(string.format("lantern mine: %s: %d windows (%d new) of %s, %d nodes%s, %s tok/s, %.1f s, store %s\n",
    res.model, res.windows, new, o.data, res.nodes,
    #latents > 0 and (" (SAE latents: " .. table.concat(latents, ", ") .. ")") or "",
    rate(new * res.window / math.max(res.seconds, 1e-9)), res.seconds, res.store or o.store or "store/lantern.lmdb"))
  return 0
end

return {summary = "mine top/random/quantile records and statistics of every neuron and head into the store",
        usage = usage, run = run}
