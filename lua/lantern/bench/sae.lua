-- lantern bench sae: SAE training and encoding speed at GPT-2 small's MLP
-- width (d_in 3072), d_sae 16384 and 32768, ReLU (standard, L1) and
-- TopK(32) with AuxK, beside the same training step written with PyTorch on
-- the CPU (Debian's python3-torch) in the same run. Without PyTorch the
-- figures are compared with a plain sgemm rate measured here instead.
-- Random Gaussian activations: speed does not depend on the values.
local ffi = require("ffi")
local bench = require("lantern.cli.bench")
local args = require("lantern.cli.args")

local usage = [[
usage: lantern bench sae [--batch 256] [--reps 2] [--d-in 3072] [--d-sae 16384,32768]
                         [--with-torch] [--no-torch]

  --batch N     rows per training step (default 256)
  --reps N      timed steps per figure, best taken (default 2, after one warm-up)
  --with-torch  install Debian's python3-torch first when it is missing
                (runs apt-get install -y python3-torch)
  --no-torch    skip the PyTorch comparison

Training tokens/s = batch / (time of one Adam step: forward, backward,
decoder-norm projection, Adam, renormalisation; TopK includes AuxK over the
latents that did not fire in the previous step). Encode throughput =
rows/s of the encoder alone (x -> z) on 1024 rows.]]

-- The same step in PyTorch: prints one JSON line per configuration.
local TORCH_SCRIPT = [=[
import json, sys, time
import torch
D, B, reps, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
configs = json.loads(sys.argv[5])
torch.set_num_threads(threads)
for cfg in configs:
    L, arch, k = cfg["d_sae"], cfg["arch"], cfg.get("k", 0)
    torch.manual_seed(0)
    W_dec = torch.randn(L, D)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    W_enc = W_dec.t().contiguous().requires_grad_()
    W_dec.requires_grad_()
    b_enc = torch.zeros(L, requires_grad=True)
    b_dec = torch.zeros(D, requires_grad=True)
    topk = arch == "topk"
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=4e-4, eps=6.25e-10 if topk else 1e-8)
    x = torch.randn(B, D)
    variance = ((x - x.mean(0)) ** 2).sum(1).mean()
    k_aux = min(256, D // 2)
    state = {"dead": torch.zeros(L, dtype=torch.bool)}
    def step():
        pre = (x - b_dec) @ W_enc + b_enc
        if topk:
            vals, idx = pre.topk(k, dim=1)
            z = torch.zeros_like(pre).scatter(1, idx, vals.relu())
        else:
            z = pre.relu()
        x_hat = z @ W_dec + b_dec
        if topk:
            loss = ((x_hat - x) ** 2).sum() / (B * variance)
            dead = state["dead"]
            if dead.any():
                e = (x - x_hat).detach()
                masked = pre.masked_fill(~dead, float("-inf"))
                av, ai = masked.topk(min(k_aux, int(dead.sum())), dim=1)
                za = torch.zeros_like(pre).scatter(1, ai, av.relu())
                e_hat = za @ W_dec
                loss = loss + ((e_hat - e) ** 2).sum() / (e ** 2).sum() / 32
        else:
            loss = ((x_hat - x) ** 2).sum(1).mean() + 5.0 * (z * W_dec.norm(dim=1)).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            W_dec.grad -= (W_dec.grad * W_dec).sum(1, keepdim=True) * W_dec
        opt.step()
        with torch.no_grad():
            W_dec.div_(W_dec.norm(dim=1, keepdim=True))
            state["dead"] = ~((z > 0).any(0))
    def best(fn, n):
        fn()
        t = []
        for _ in range(n):
            t0 = time.perf_counter(); fn(); t.append(time.perf_counter() - t0)
        return min(t)
    step_s = best(step, reps)
    xe = torch.randn(1024, D)
    def enc():
        with torch.no_grad():
            pre = (xe - b_dec) @ W_enc + b_enc
            if topk:
                vals, idx = pre.topk(k, dim=1)
                torch.zeros_like(pre).scatter(1, idx, vals.relu())
            else:
                pre.relu()
    enc_s = best(enc, reps)
    print(json.dumps({"d_sae": L, "arch": arch, "step_s": step_s, "encode_s": enc_s}), flush=True)
]=]

-- Debian's interpreter, which sees python3-torch (a python3 earlier on PATH,
-- pyenv's for example, may not).
local function python()
  local f = io.open("/usr/bin/python3", "rb")
  if f then f:close() return "/usr/bin/python3" end
  return "python3"
end

local function have_torch()
  return os.execute(python() .. " -c 'import torch' >/dev/null 2>&1") == 0
end

local function cpu_count()
  local p = io.popen("nproc 2>/dev/null")
  local n = p and tonumber(p:read("*l")) or 1
  if p then p:close() end
  return n or 1
end

local function run(argv)
  local opts = args.parse(argv, {batch = "number", reps = "number", ["d-in"] = "number", ["d-sae"] = "string",
    ["with-torch"] = "boolean", ["no-torch"] = "boolean"})
  local B, reps, D = opts.batch or 256, opts.reps or 2, opts["d-in"] or 3072
  local sizes = {}
  for s in (opts["d-sae"] or "16384,32768"):gmatch("%d+") do sizes[#sizes + 1] = tonumber(s) end
  local F = require("lantern.ffi")
  local C = F.C
  local lt = require("lantern")

  bench.header("sae")
  local threads = cpu_count()
  print(string.format("d_in %d, batch %d rows per step, best of %d timed steps after a warm-up; %d threads", D, B, reps,
    threads))
  local configs = {}
  for _, L in ipairs(sizes) do
    configs[#configs + 1] = {d_sae = L, arch = "standard"}
    configs[#configs + 1] = {d_sae = L, arch = "topk", k = 32}
  end

  -- PyTorch, first (so that its figures are there even if ours fail)
  local torch_rows, torch_note = {}, nil
  if opts["no-torch"] then
    torch_note = "PyTorch comparison skipped (--no-torch)"
  else
    if not have_torch() and opts["with-torch"] then
      print("installing python3-torch (apt-get install -y python3-torch) ...")
      os.execute("apt-get install -y python3-torch >/dev/null 2>&1 || sudo apt-get install -y python3-torch >/dev/null 2>&1")
    end
    if have_torch() then
      local path = os.tmpname()
      local f = assert(io.open(path, "w"))
      f:write(TORCH_SCRIPT)
      f:close()
      local cj = {}
      for _, c in ipairs(configs) do
        cj[#cj + 1] = string.format('{"d_sae": %d, "arch": "%s", "k": %d}', c.d_sae, c.arch, c.k or 0)
      end
      local cmd = string.format("%s %s %d %d %d %d '[%s]' 2>&1", python(), path, D, B, reps, threads, table.concat(cj, ", "))
      local p = io.popen(cmd)
      local out = p:read("*a")
      p:close()
      os.remove(path)
      for line in out:gmatch("[^\n]+") do
        local L, arch, st, es = line:match('"d_sae": (%d+), "arch": "(%a+)", "step_s": ([%d%.e%-]+), "encode_s": ([%d%.e%-]+)')
        if L then torch_rows[L .. arch] = {step = tonumber(st), encode = tonumber(es)} end
      end
      local vp = io.popen(python() .. " -c 'import torch; print(torch.__version__)' 2>/dev/null")
      torch_note = "PyTorch " .. ((vp and vp:read("*l")) or "?") .. " (Debian python3-torch), CPU, same step"
      if vp then vp:close() end
      if next(torch_rows) == nil then torch_note = "PyTorch run failed: " .. out:sub(1, 400) end
    else
      torch_note = "PyTorch is not installed: run `apt-get install -y python3-torch` (or `lantern bench sae " ..
        "--with-torch`) for the comparison; compared with this machine's sgemm rate instead"
    end
  end
  local gf = bench.sgemm_gflops(B, 16384, D, 3)
  print(torch_note)
  print(string.format("plain sgemm [%d x %d] @ [%d x 16384]: %.1f GFLOP/s", B, D, D, gf))
  print("")
  print(string.format("%-8s %-13s %13s %13s %8s   %13s %13s %8s", "d_sae", "arch", "train tok/s", "torch tok/s",
    "speedup", "encode tok/s", "torch enc/s", "speedup"))

  for _, c in ipairs(configs) do
    local L = c.d_sae
    local arch = c.arch == "topk" and C.LT_SAE_TOPK or C.LT_SAE_RELU
    local sp = ffi.new("lt_sae *[1]")
    F.check(C.lt_sae_new(D, L, arch, c.k or 0, sp), "bench")
    local sae = ffi.gc(sp[0], C.lt_sae_free)
    local o = ffi.new("lt_sae_train_opts")
    C.lt_sae_train_default_opts(arch, o)
    o.batch = B
    o.dead_rows = 1            -- AuxK over the latents that did not fire in the last step, as the PyTorch step
    o.resample_every = 0
    o.normalize = 0
    o.median_rows = 256
    local tp = ffi.new("lt_sae_trainer *[1]")
    F.check(C.lt_sae_trainer_new(sae, o, tp), "bench")
    local tr = ffi.gc(tp[0], C.lt_sae_trainer_free)
    local x = lt.zeros({B, D})
    local s = 1
    for i = 0, B * D - 1 do   -- Gaussian-ish values from a fixed LCG
      local a = 0
      for _ = 1, 4 do s = (s * 1103515245 + 12345) % 2147483648; a = a + s / 2147483648 end
      x.data[i] = (a - 2) * 1.7
    end
    F.check(C.lt_sae_trainer_init(tr, x.data, B), "bench")
    local step = bench.measure(function() F.check(C.lt_sae_trainer_train(tr, x.data, B, nil), "bench") end,
      {reps = reps})
    local N = 1024
    local xe = lt.zeros({N, D})
    for i = 0, N * D - 1 do xe.data[i] = x.data[i % (B * D)] end
    local z = ffi.new("float[?]", N * L)
    local enc = bench.measure(function() F.check(C.lt_sae_encode(sae, xe.data, N, nil, z), "bench") end, {reps = reps})
    local tok, etok = B / step.best, N / enc.best
    local t = torch_rows[L .. c.arch]
    local name = c.arch == "topk" and "TopK(32)" or "ReLU (L1)"
    if t then
      print(string.format("%-8d %-13s %13.0f %13.0f %7.2fx   %13.0f %13.0f %7.2fx", L, name, tok, B / t.step,
        t.step / step.best, etok, N / t.encode, t.encode / enc.best))
    else
      -- the step's dense products at the sgemm rate: 5 for ReLU, 1 + (sparse) for TopK
      local flops = (c.arch == "topk" and 1 or 5) * 2 * B * D * L
      print(string.format("%-8d %-13s %13.0f %13s %8s   %13.0f %13s %8s   (sgemm-bound: %.0f tok/s)", L, name, tok, "-",
        "-", etok, "-", "-", B / (flops / (gf * 1e9))))
    end
    tr, sae, z = nil, nil, nil
    collectgarbage()
  end
  return 0
end

return {summary = "SAE training tokens/s and encode throughput vs PyTorch on the CPU", usage = usage, run = run}
