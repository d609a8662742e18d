-- lantern.names: TransformerLens's short activation names
-- (utils.get_act_name): lt.act_name("pattern", 0) ->
-- "blocks.0.attn.hook_pattern". A full name is returned unchanged.
local M = {}

local per_layer = {
  resid_pre = "hook_resid_pre", resid_mid = "hook_resid_mid", resid_post = "hook_resid_post",
  attn_out = "hook_attn_out", mlp_out = "hook_mlp_out",
  q = "attn.hook_q", k = "attn.hook_k", v = "attn.hook_v", z = "attn.hook_z", result = "attn.hook_result",
  attn_scores = "attn.hook_attn_scores", scores = "attn.hook_attn_scores", attn = "attn.hook_pattern",
  pattern = "attn.hook_pattern",
  pre = "mlp.hook_pre", mlp_pre = "mlp.hook_pre", post = "mlp.hook_post", mlp_post = "mlp.hook_post",
}

local global = {embed = "hook_embed", pos_embed = "hook_pos_embed"}

-- name: a short name or full name; layer: 0-based (negative from the end
-- is resolved by the model); sub: "ln1", "ln2" or "ln_final" for scale and
-- normalized.
function M.act_name(name, layer, sub)
  if name:find("hook_", 1, true) then return name end
  if global[name] then return global[name] end
  if name == "scale" or name == "normalized" then
    if layer == nil or sub == "ln_final" then return "ln_final.hook_" .. name end
    return string.format("blocks.%d.%s.hook_%s", layer, sub or "ln1", name)
  end
  local suffix = per_layer[name]
  if not suffix then error("unknown activation name '" .. name .. "'", 2) end
  if layer == nil then error("activation '" .. name .. "' needs a layer", 2) end
  return string.format("blocks.%d.%s", layer, suffix)
end

return M
