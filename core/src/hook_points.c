/*
 * hook_points.c: the TransformerLens names of the hook points, their
 * numbering and their shapes. This is the one place where a hook point's
 * name, kind, layer and shape are defined.
 */
#include "model_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Name suffix of each per-layer kind, after "blocks.L.". */
static const char *layer_suffix[LT_KINDS_PER_LAYER] = {
    "hook_resid_pre",  "ln1.hook_scale",         "ln1.hook_normalized", "attn.hook_q",
    "attn.hook_k",     "attn.hook_v",            "attn.hook_attn_scores", "attn.hook_pattern",
    "attn.hook_z",     "attn.hook_result",       "hook_attn_out",       "hook_resid_mid",
    "ln2.hook_scale",  "ln2.hook_normalized",    "mlp.hook_pre",        "mlp.hook_post",
    "hook_mlp_out",    "hook_resid_post",
};

int lt_hook_names_build(lt_model *m) {
    int L = m->cfg.n_layer;
    m->n_hooks = m->n_static_hooks = 2 + L * LT_KINDS_PER_LAYER + 2;
    m->hook_names = calloc((size_t)m->n_hooks, sizeof(char *));
    if (!m->hook_names) return lt_fail("out of memory");
    char buf[96];
    for (int p = 0; p < m->n_hooks; p++) {
        int kind = lt_hook_kind(m, p), layer = lt_hook_layer(m, p);
        switch (kind) {
        case LT_HOOK_EMBED: snprintf(buf, sizeof buf, "hook_embed"); break;
        case LT_HOOK_POS_EMBED: snprintf(buf, sizeof buf, "hook_pos_embed"); break;
        case LT_HOOK_LNF_SCALE: snprintf(buf, sizeof buf, "ln_final.hook_scale"); break;
        case LT_HOOK_LNF_NORMALIZED: snprintf(buf, sizeof buf, "ln_final.hook_normalized"); break;
        default: snprintf(buf, sizeof buf, "blocks.%d.%s", layer, layer_suffix[kind - LT_HOOK_RESID_PRE]);
        }
        m->hook_names[p] = strdup(buf);
        if (!m->hook_names[p]) return lt_fail("out of memory");
    }
    return LT_OK;
}

void lt_hook_names_free(lt_model *m) {
    if (!m->hook_names) return;
    for (int p = 0; p < m->n_hooks; p++) free(m->hook_names[p]);
    free(m->hook_names);
    m->hook_names = NULL;
}

int lt_hook_count(const lt_model *m) { return m->n_hooks; }

const char *lt_hook_name(const lt_model *m, int point) {
    return point >= 0 && point < m->n_hooks ? m->hook_names[point] : NULL;
}

int lt_hook_kind(const lt_model *m, int point) {
    int L = m->cfg.n_layer;
    if (point < 0 || point >= m->n_hooks) return -1;
    if (point >= m->n_static_hooks) return LT_HOOK_SAE_ACTS_PRE + (point - m->n_static_hooks) % 4;
    if (point < 2) return point == 0 ? LT_HOOK_EMBED : LT_HOOK_POS_EMBED;
    if (point >= 2 + L * LT_KINDS_PER_LAYER) return LT_HOOK_LNF_SCALE + (point - 2 - L * LT_KINDS_PER_LAYER);
    return LT_HOOK_RESID_PRE + (point - 2) % LT_KINDS_PER_LAYER;
}

int lt_hook_layer(const lt_model *m, int point) {
    int L = m->cfg.n_layer;
    if (point >= m->n_static_hooks && point < m->n_hooks)
        return lt_hook_layer(m, m->saes[(point - m->n_static_hooks) / 4].point);
    if (point < 2 || point >= 2 + L * LT_KINDS_PER_LAYER) return -1;
    return (point - 2) / LT_KINDS_PER_LAYER;
}

int lt_hook_find(const lt_model *m, const char *name) {
    static const char *global[4] = {"hook_embed", "hook_pos_embed", "ln_final.hook_scale", "ln_final.hook_normalized"};
    static const int global_kind[4] = {LT_HOOK_EMBED, LT_HOOK_POS_EMBED, LT_HOOK_LNF_SCALE, LT_HOOK_LNF_NORMALIZED};
    for (int i = 0; i < 4; i++)
        if (!strcmp(name, global[i])) return lt_point(m, global_kind[i], -1);
    if (!strncmp(name, "blocks.", 7)) {
        char *end;
        errno = 0;
        long layer = strtol(name + 7, &end, 10);
        if (end != name + 7 && *end == '.' && !errno) {
            int L = m->cfg.n_layer;
            if (layer < -L || layer >= L) {
                lt_fail("hook point '%s': layer %ld out of range for a %d-layer model", name, layer, L);
                return -1;
            }
            if (layer < 0) layer += L;
            for (int k = 0; k < LT_KINDS_PER_LAYER; k++)
                if (!strcmp(end + 1, layer_suffix[k])) return lt_point(m, LT_HOOK_RESID_PRE + k, (int)layer);
        }
    }
    /* "<point>.hook_sae_acts_post" and friends of an attached SAE */
    const char *sae = strstr(name, ".hook_sae_");
    if (sae && m->n_saes) {
        char prefix[160];
        size_t n = (size_t)(sae - name);
        if (n < sizeof prefix) {
            memcpy(prefix, name, n);
            prefix[n] = '\0';
            int base = lt_hook_find(m, prefix);
            int a = base >= 0 ? lt_sae_at(m, base) : -1;
            static const char *suffix[4] = {"acts_pre", "acts_post", "recons", "error"};
            for (int k = 0; a >= 0 && k < 4; k++)
                if (!strcmp(sae + 10, suffix[k])) return m->n_static_hooks + 4 * a + k;
        }
    }
    lt_fail("unknown hook point '%s'", name);
    return -1;
}

int lt_hook_shape(const lt_model *m, int point, int B, int T, lt_view *out) {
    const lt_config *c = &m->cfg;
    int kind = lt_hook_kind(m, point);
    if (kind < 0) return lt_fail("hook point %d out of range", point);
    memset(out, 0, sizeof *out);
    int64_t s[5] = {B, T, 0, 0, 0};
    int nd = 3;
    switch (kind) {
    case LT_HOOK_LN1_SCALE: case LT_HOOK_LN2_SCALE: case LT_HOOK_LNF_SCALE: s[2] = 1; break;
    case LT_HOOK_Q: case LT_HOOK_K: case LT_HOOK_V: case LT_HOOK_Z:
        s[2] = c->n_head; s[3] = c->d_head; nd = 4; break;
    case LT_HOOK_RESULT: s[2] = c->n_head; s[3] = c->n_embd; nd = 4; break;
    case LT_HOOK_ATTN_SCORES: case LT_HOOK_PATTERN:
        s[1] = c->n_head; s[2] = T; s[3] = T; nd = 4; break;
    case LT_HOOK_MLP_PRE: case LT_HOOK_MLP_POST: s[2] = c->d_mlp; break;
    case LT_HOOK_SAE_ACTS_PRE: case LT_HOOK_SAE_ACTS_POST:
        s[2] = m->saes[(point - m->n_static_hooks) / 4].d_sae; break;
    case LT_HOOK_SAE_RECONS: case LT_HOOK_SAE_ERROR:
        s[2] = m->saes[(point - m->n_static_hooks) / 4].d_in; break;
    default: s[2] = c->n_embd;
    }
    out->ndim = nd;
    for (int i = 0; i < nd; i++) out->shape[i] = s[i];
    return LT_OK;
}
