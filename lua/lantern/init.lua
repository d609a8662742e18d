-- lantern: the Lua library of the lantern transformer debugger.
--   local lt = require("lantern")
--   local m = lt.load("store/models/toy")
--   local logits, cache = m:run_with_cache(m:to_tokens("Hello world"))
local M = {}

local Model = require("lantern.model")
local Tensor = require("lantern.tensor")

M.version = "0.1.0"
M.root = require("lantern.ffi").root

M.load = Model.load
M.random_model = Model.random
M.Model = Model
M.Tensor = Tensor
M.tensor = Tensor.new
M.zeros = Tensor.zeros
M.ablate = require("lantern.ablate")
M.act_name = require("lantern.names").act_name

-- A tokenizer from a directory holding vocab.json and merges.txt.
function M.tokenizer(dir) return require("lantern.tokenizer").load(dir) end

-- Modules loaded on first use, so that `require("lantern")` stays cheap.
local lazy = {
  metrics = "lantern.metrics", tdb = "lantern.tdb", patching = "lantern.patching", sae = "lantern.sae",
  store = "lantern.store", interp = "lantern.interp", datasets = "lantern.datasets", hub = "lantern.hub",
  train = "lantern.train", llm = "lantern.llm", mine = "lantern.mine", exchange = "lantern.exchange",
}
setmetatable(M, {__index = function(t, k)
  local mod = lazy[k]
  if mod then
    local v = require(mod)
    rawset(t, k, v)
    return v
  end
end})

return M
