/*
 * model.c: a GPT-2 model's configuration and parameters: built from a
 * Hugging Face directory (config.json + model.safetensors), from random
 * weights, or saved back in the same layout.
 *
 * One parameter table (lt_model_alloc) serves loading, saving, random init
 * and lt_model_param, so every path agrees on names and shapes.
 */
#include "model_internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ------------------------------------------------------------ config */

static int json_int(const cJSON *root, const char *key, int *out, int required, const char *path) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) {
        if (required) return lt_fail("%s: missing \"%s\"", path, key);
        return LT_OK;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < 0 || v->valuedouble > 1e9)
        return lt_fail("%s: \"%s\" must be a non-negative integer", path, key);
    *out = (int)v->valuedouble;
    return LT_OK;
}

/* Reads the GPT-2 fields of a Hugging Face config.json into cfg. */
static int config_read(const char *path, lt_config *cfg) {
    char *text;
    if (lt_read_file(path, &text, NULL)) return LT_ERR;
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!root || !cJSON_IsObject(root)) { cJSON_Delete(root); return lt_fail("%s: not a JSON object", path); }

    memset(cfg, 0, sizeof *cfg);
    int n_inner = 0, n_ctx = 0;
    int rc = LT_OK;
    if (json_int(root, "n_layer", &cfg->n_layer, 1, path) || json_int(root, "n_head", &cfg->n_head, 1, path) ||
        json_int(root, "n_embd", &cfg->n_embd, 1, path) || json_int(root, "vocab_size", &cfg->d_vocab, 1, path) ||
        json_int(root, "n_inner", &n_inner, 0, path) || json_int(root, "n_positions", &n_ctx, 0, path)) {
        rc = LT_ERR;
        goto done;
    }
    if (!n_ctx && json_int(root, "n_ctx", &n_ctx, 1, path)) { rc = LT_ERR; goto done; }
    cfg->n_ctx = n_ctx;
    cfg->d_mlp = n_inner ? n_inner : 4 * cfg->n_embd;
    cfg->ln_eps = 1e-5f;
    const cJSON *eps = cJSON_GetObjectItemCaseSensitive(root, "layer_norm_epsilon");
    if (eps) {
        if (!cJSON_IsNumber(eps) || !(eps->valuedouble > 0)) { rc = lt_fail("%s: \"layer_norm_epsilon\" must be a positive number", path); goto done; }
        cfg->ln_eps = (float)eps->valuedouble;
    }
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "activation_function");
    if (act && cJSON_IsString(act) && strcmp(act->valuestring, "gelu_new") && strcmp(act->valuestring, "gelu_pytorch_tanh")) {
        rc = lt_fail("%s: activation_function \"%s\" is not supported (gelu_new only)", path, act->valuestring);
        goto done;
    }
    const cJSON *inv = cJSON_GetObjectItemCaseSensitive(root, "scale_attn_by_inverse_layer_idx");
    if (cJSON_IsTrue(inv)) { rc = lt_fail("%s: scale_attn_by_inverse_layer_idx is not supported", path); goto done; }
    const cJSON *scale = cJSON_GetObjectItemCaseSensitive(root, "scale_attn_weights");
    if (cJSON_IsFalse(scale)) { rc = lt_fail("%s: scale_attn_weights=false is not supported", path); goto done; }
done:
    cJSON_Delete(root);
    return rc;
}

static int config_check(lt_config *cfg) {
    if (cfg->n_layer < 1 || cfg->n_head < 1 || cfg->n_embd < 1 || cfg->d_vocab < 1 || cfg->n_ctx < 1 || cfg->d_mlp < 1)
        return lt_fail("config: n_layer, n_head, n_embd, d_mlp, n_ctx and vocab_size must be positive");
    if (cfg->n_embd % cfg->n_head)
        return lt_fail("config: n_embd (%d) is not divisible by n_head (%d)", cfg->n_embd, cfg->n_head);
    cfg->d_head = cfg->n_embd / cfg->n_head;
    if (!(cfg->ln_eps > 0)) return lt_fail("config: layer_norm_epsilon must be positive");
    return LT_OK;
}

/* ---------------------------------------------------- parameter table */

static lt_param *table_add(lt_model *m, const char *name, int64_t d0, int64_t d1, size_t *offset) {
    lt_param *p = &m->table[m->n_table++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = d1 ? 2 : 1;
    p->shape[0] = d0;
    p->shape[1] = d1;
    p->data = (float *)(uintptr_t)*offset;   /* an offset until params exists */
    *offset += (size_t)d0 * (size_t)(d1 ? d1 : 1);
    return p;
}

int lt_model_alloc(lt_model *m) {
    const lt_config *c = &m->cfg;
    int64_t C = c->n_embd, M = c->d_mlp;
    m->table = calloc((size_t)(4 + 12 * c->n_layer + 2), sizeof *m->table);
    m->blocks = calloc((size_t)c->n_layer, sizeof *m->blocks);
    if (!m->table || !m->blocks) return lt_fail("out of memory");
    size_t off = 0;
    char name[64];
    table_add(m, "wte.weight", c->d_vocab, C, &off);
    table_add(m, "wpe.weight", c->n_ctx, C, &off);
    for (int l = 0; l < c->n_layer; l++) {
        static const char *suffix[12] = {"ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
                                         "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
                                         "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"};
        const int64_t shape[12][2] = {{C, 0}, {C, 0}, {C, 3 * C}, {3 * C, 0}, {C, C}, {C, 0},
                                      {C, 0}, {C, 0}, {C, M},     {M, 0},     {M, C}, {C, 0}};
        for (int i = 0; i < 12; i++) {
            snprintf(name, sizeof name, "h.%d.%s", l, suffix[i]);
            table_add(m, name, shape[i][0], shape[i][1], &off);
        }
    }
    table_add(m, "ln_f.weight", C, 0, &off);
    table_add(m, "ln_f.bias", C, 0, &off);

    m->n_params = off;
    m->params = lt_alloc(off);
    if (!m->params) return LT_ERR;
    for (int i = 0; i < m->n_table; i++) m->table[i].data = m->params + (size_t)(uintptr_t)m->table[i].data;

    lt_param *t = m->table;
    m->wte = t[0].data;
    m->wpe = t[1].data;
    for (int l = 0; l < c->n_layer; l++) {
        lt_param *b = &t[2 + 12 * l];
        lt_block_params *p = &m->blocks[l];
        p->ln1_w = b[0].data; p->ln1_b = b[1].data;
        p->attn_w = b[2].data; p->attn_b = b[3].data;
        p->proj_w = b[4].data; p->proj_b = b[5].data;
        p->ln2_w = b[6].data; p->ln2_b = b[7].data;
        p->fc_w = b[8].data; p->fc_b = b[9].data;
        p->out_w = b[10].data; p->out_b = b[11].data;
    }
    m->lnf_w = t[2 + 12 * c->n_layer].data;
    m->lnf_b = t[3 + 12 * c->n_layer].data;
    m->unembed_w = m->wte;
    m->unembed_b = NULL;
    return LT_OK;
}

static lt_param *table_find(const lt_model *m, const char *name) {
    for (int i = 0; i < m->n_table; i++)
        if (!strcmp(m->table[i].name, name)) return &m->table[i];
    return NULL;
}

static int model_new(const lt_config *cfg, lt_model **out) {
    lt_model *m = calloc(1, sizeof *m);
    if (!m) return lt_fail("out of memory");
    m->cfg = *cfg;
    if (config_check(&m->cfg) || lt_model_alloc(m) || lt_hook_names_build(m)) {
        lt_model_free(m);
        return LT_ERR;
    }
    *out = m;
    return LT_OK;
}

void lt_model_free(lt_model *m) {
    if (!m) return;
    if (m->unembed_w && m->unembed_w != m->wte) lt_free(m->unembed_w);
    lt_free(m->unembed_b);
    lt_free(m->params);
    free(m->table);
    free(m->blocks);
    lt_hook_names_free(m);
    free(m->saes);
    free(m);
}

const lt_config *lt_model_config(const lt_model *m) { return &m->cfg; }

/* --------------------------------------------------------------- load */

/* Hub checkpoints carry causal-mask buffers that are not parameters. */
static int is_mask_buffer(const char *name) {
    const char *p = strrchr(name, '.');
    return !strncmp(name, "h.", 2) && p && (!strcmp(p, ".bias") || !strcmp(p, ".masked_bias")) &&
           (strstr(name, ".attn.bias") == p - 5 || strstr(name, ".attn.masked_bias") == p - 5);
}

int lt_model_load(const char *dir, const lt_load_opts *opts, lt_model **out) {
    char path[4096];
    lt_config cfg;
    *out = NULL;
    if (lt_path_join(path, sizeof path, dir, "config.json") || config_read(path, &cfg)) return LT_ERR;
    lt_model *m;
    if (model_new(&cfg, &m)) return lt_fail_context("%s", path);

    if (lt_path_join(path, sizeof path, dir, "model.safetensors")) { lt_model_free(m); return LT_ERR; }
    lt_safetensors *st;
    if (lt_st_open(path, &st)) { lt_model_free(m); return LT_ERR; }

    char *seen = calloc((size_t)m->n_table, 1);
    int rc = seen ? LT_OK : lt_fail("out of memory");
    int n = lt_st_count(st);
    for (int i = 0; rc == LT_OK && i < n; i++) {
        lt_st_tensor t;
        if ((rc = lt_st_get(st, i, &t))) break;
        const char *name = t.name;
        if (!strncmp(name, "transformer.", 12)) name += 12;
        if (is_mask_buffer(name)) continue;
        if (!strcmp(name, "lm_head.weight")) continue;   /* tied to wte, as in GPT2LMHeadModel */
        lt_param *p = table_find(m, name);
        if (!p) { rc = lt_fail("%s: unknown tensor '%s' for a GPT-2 model", path, t.name); break; }
        int ok_shape = t.ndim == p->ndim && t.shape[0] == p->shape[0] && (p->ndim == 1 || t.shape[1] == p->shape[1]);
        if (!ok_shape) {
            char got[96] = "";
            for (int d = 0; d < t.ndim && d < 4; d++)
                snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? ", " : "", (long long)t.shape[d]);
            rc = p->ndim == 1 ? lt_fail("%s: tensor '%s' has shape [%s], expected [%lld]", path, t.name, got, (long long)p->shape[0])
                              : lt_fail("%s: tensor '%s' has shape [%s], expected [%lld, %lld]", path, t.name, got,
                                        (long long)p->shape[0], (long long)p->shape[1]);
            break;
        }
        int64_t numel = p->shape[0] * (p->ndim == 2 ? p->shape[1] : 1);
        if ((rc = lt_st_to_f32(&t, p->data, numel))) { lt_fail_context("%s", path); break; }
        seen[p - m->table] = 1;
    }
    for (int i = 0; rc == LT_OK && i < m->n_table; i++)
        if (!seen[i]) rc = lt_fail("%s: missing tensor '%s'", path, m->table[i].name);
    free(seen);
    lt_st_close(st);
    if (rc == LT_OK && opts) rc = lt_weights_process(m, opts);
    if (rc) { lt_model_free(m); return LT_ERR; }
    *out = m;
    return LT_OK;
}

/* ------------------------------------------------------- random init */

/* splitmix64: a small, well-mixed generator for reproducible init. */
static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static double uniform01(uint64_t *s) { return ((splitmix64(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0); }

static float gaussian(uint64_t *s) {
    double u1 = uniform01(s), u2 = uniform01(s);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

int lt_model_random(const lt_config *cfg, uint64_t seed, lt_model **out) {
    lt_model *m;
    *out = NULL;
    if (model_new(cfg, &m)) return LT_ERR;
    uint64_t s = seed;
    for (int i = 0; i < m->n_table; i++) {
        lt_param *p = &m->table[i];
        int64_t n = p->shape[0] * (p->ndim == 2 ? p->shape[1] : 1);
        const char *dot = strrchr(p->name, '.');
        int is_ln = strstr(p->name, "ln_") != NULL;
        if (is_ln && !strcmp(dot, ".weight")) for (int64_t j = 0; j < n; j++) p->data[j] = 1.0f;
        else if (p->ndim == 2) for (int64_t j = 0; j < n; j++) p->data[j] = 0.02f * gaussian(&s);
        /* biases and LayerNorm biases stay zero */
    }
    *out = m;
    return LT_OK;
}

/* -------------------------------------------------------- parameters */

int lt_model_param(lt_model *m, const char *name, lt_view *out) {
    if (!strncmp(name, "transformer.", 12)) name += 12;
    memset(out, 0, sizeof *out);
    /* the unembedding: wte itself while tied, its own copy once processed */
    if (!strcmp(name, "lm_head.weight") || (!strcmp(name, "lm_head.bias") && m->unembed_b)) {
        int w = name[8] == 'w';
        out->data = w ? m->unembed_w : m->unembed_b;
        out->ndim = w ? 2 : 1;
        out->shape[0] = m->cfg.d_vocab;
        out->shape[1] = w ? m->cfg.n_embd : 0;
        return LT_OK;
    }
    lt_param *p = table_find(m, name);
    if (!p) return lt_fail("no parameter named '%s'", name);
    memset(out, 0, sizeof *out);
    out->data = p->data;
    out->ndim = p->ndim;
    out->shape[0] = p->shape[0];
    out->shape[1] = p->shape[1];
    return LT_OK;
}

int lt_model_param_count(const lt_model *m) { return m->n_table; }

const char *lt_model_param_name(const lt_model *m, int i) {
    return i >= 0 && i < m->n_table ? m->table[i].name : NULL;
}

/* --------------------------------------------------------------- save */

static int config_write(const lt_model *m, const char *path) {
    const lt_config *c = &m->cfg;
    cJSON *root = cJSON_CreateObject();
    cJSON *arch = cJSON_AddArrayToObject(root, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString("GPT2LMHeadModel"));
    cJSON_AddStringToObject(root, "model_type", "gpt2");
    cJSON_AddStringToObject(root, "activation_function", "gelu_new");
    cJSON_AddNumberToObject(root, "n_layer", c->n_layer);
    cJSON_AddNumberToObject(root, "n_head", c->n_head);
    cJSON_AddNumberToObject(root, "n_embd", c->n_embd);
    cJSON_AddNumberToObject(root, "n_positions", c->n_ctx);
    cJSON_AddNumberToObject(root, "n_ctx", c->n_ctx);
    if (c->d_mlp != 4 * c->n_embd) cJSON_AddNumberToObject(root, "n_inner", c->d_mlp);
    else cJSON_AddNullToObject(root, "n_inner");
    cJSON_AddNumberToObject(root, "vocab_size", c->d_vocab);
    cJSON_AddNumberToObject(root, "layer_norm_epsilon", c->ln_eps);
    cJSON_AddNumberToObject(root, "bos_token_id", c->d_vocab - 1);
    cJSON_AddNumberToObject(root, "eos_token_id", c->d_vocab - 1);
    cJSON_AddNumberToObject(root, "attn_pdrop", 0.0);
    cJSON_AddNumberToObject(root, "embd_pdrop", 0.0);
    cJSON_AddNumberToObject(root, "resid_pdrop", 0.0);
    cJSON_AddNumberToObject(root, "initializer_range", 0.02);
    cJSON_AddBoolToObject(root, "scale_attn_weights", 1);
    cJSON_AddBoolToObject(root, "tie_word_embeddings", m->unembed_w == m->wte);
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) return lt_fail("out of memory");
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    int rc = LT_OK;
    if (!f) rc = lt_fail("%s: %s", tmp, strerror(errno));
    else {
        size_t len = strlen(text);
        if (fwrite(text, 1, len, f) != len || fputc('\n', f) == EOF) rc = lt_fail("%s: write failed: %s", tmp, strerror(errno));
        if (fclose(f) && !rc) rc = lt_fail("%s: write failed: %s", tmp, strerror(errno));
        if (!rc && rename(tmp, path)) rc = lt_fail("%s: %s", path, strerror(errno));
        if (rc) remove(tmp);
    }
    free(text);
    return rc;
}

int lt_model_save(const lt_model *m, const char *dir) {
    char path[4096];
    if (mkdir(dir, 0777) && errno != EEXIST) return lt_fail("%s: %s", dir, strerror(errno));
    if (lt_path_join(path, sizeof path, dir, "config.json") || config_write(m, path)) return LT_ERR;
    lt_st_writer *w;
    if (lt_st_writer_new(&w)) return LT_ERR;
    int rc = LT_OK;
    char name[128];
    for (int i = 0; rc == LT_OK && i < m->n_table; i++) {
        const lt_param *p = &m->table[i];
        snprintf(name, sizeof name, "transformer.%s", p->name);
        rc = lt_st_writer_add(w, name, LT_DTYPE_F32, p->ndim, p->shape, p->data);
    }
    int64_t vshape[2] = {m->cfg.d_vocab, m->cfg.n_embd};
    if (rc == LT_OK && m->unembed_w != m->wte) rc = lt_st_writer_add(w, "lm_head.weight", LT_DTYPE_F32, 2, vshape, m->unembed_w);
    if (rc == LT_OK) rc = lt_st_writer_metadata(w, "format", "pt");
    if (rc == LT_OK && lt_path_join(path, sizeof path, dir, "model.safetensors")) rc = LT_ERR;
    if (rc == LT_OK) rc = lt_st_writer_save(w, path);
    lt_st_writer_free(w);
    return rc;
}
