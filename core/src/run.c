/*
 * run.c: a run's activation buffers (one allocation, carved into named
 * slices sized from (B, T)), and what is attached to its hook points:
 * captures, callbacks and built-in interventions.
 */
#include "model_internal.h"

#include <stdlib.h>
#include <string.h>

int lt_run_new(lt_model *m, lt_run **out) {
    *out = NULL;
    lt_run *r = calloc(1, sizeof *r);
    if (!r) return lt_fail("out of memory");
    r->m = m;
    r->stop_at = -1;
    size_t L = (size_t)m->cfg.n_layer;
    r->a.resid = calloc(L + 1, sizeof(float *));
    r->g.resid = calloc(L + 1, sizeof(float *));
    r->a.blocks = calloc(L, sizeof(lt_block_acts));
    r->g.blocks = calloc(L, sizeof(lt_block_acts));
    r->points = calloc((size_t)m->n_hooks, sizeof *r->points);
    r->n_points = m->n_hooks;
    /* SAEs attached before the run was made splice without any hook */
    r->any_hooks = m->n_saes > 0;
    if (!r->a.resid || !r->g.resid || !r->a.blocks || !r->g.blocks || !r->points) {
        lt_run_free(r);
        return lt_fail("out of memory");
    }
    *out = r;
    return LT_OK;
}

void lt_run_free(lt_run *r) {
    if (!r) return;
    lt_sae_bufs_free(r);
    if (r->points) {
        for (int p = 0; p < r->n_points; p++) {
            free(r->points[p].entries);
            lt_free(r->points[p].captured);
        }
        free(r->points);
    }
    lt_free(r->slab);
    lt_free(r->gslab);
    lt_free(r->param_grads);
    free(r->ids);
    free(r->a.resid);
    free(r->g.resid);
    free(r->a.blocks);
    free(r->g.blocks);
    free(r);
}

static int check_point(lt_run *r, int point);

/* ------------------------------------------------------------ buffers */

/* Hands out consecutive 64-byte aligned slices of a slab; with base NULL it
 * only counts, so the same code sizes and carves the slab. */
typedef struct carver { float *base; size_t used; } carver;

static float *carve(carver *c, size_t n) {
    float *p = c->base ? c->base + c->used : NULL;
    c->used += (n + 15) & ~(size_t)15;
    return p;
}

static void carve_block(carver *c, lt_block_acts *a, const lt_config *cfg, size_t N, size_t BHTT, int with_result) {
    size_t C = cfg->n_embd, M = cfg->d_mlp;
    a->ln1_mean = carve(c, N); a->ln1_scale = carve(c, N);
    a->ln1_norm = carve(c, N * C); a->ln1_out = carve(c, N * C);
    a->q = carve(c, N * C); a->k = carve(c, N * C); a->v = carve(c, N * C);
    a->scores = carve(c, BHTT); a->pattern = carve(c, BHTT);
    a->z = carve(c, N * C);
    a->result = with_result ? carve(c, N * cfg->n_head * C) : NULL;
    a->attn_out = carve(c, N * C); a->resid_mid = carve(c, N * C);
    a->ln2_mean = carve(c, N); a->ln2_scale = carve(c, N);
    a->ln2_norm = carve(c, N * C); a->ln2_out = carve(c, N * C);
    a->mlp_pre = carve(c, N * M); a->mlp_post = carve(c, N * M);
    a->mlp_out = carve(c, N * C);
}

static void carve_all(const lt_run *r, lt_acts *a, carver *c, int B, int T, int keep_all, int with_result) {
    const lt_config *cfg = &r->m->cfg;
    size_t N = (size_t)B * T, C = cfg->n_embd, L = cfg->n_layer;
    size_t BHTT = (size_t)B * cfg->n_head * T * T;
    a->embed = carve(c, N * C);
    a->pos_embed = carve(c, N * C);
    for (size_t l = 0; l <= L; l++) a->resid[l] = carve(c, N * C);
    for (size_t l = 0; l < L; l++) {
        if (l == 0 || keep_all) carve_block(c, &a->blocks[l], cfg, N, BHTT, with_result);
        else a->blocks[l] = a->blocks[0];
    }
    a->lnf_mean = carve(c, N); a->lnf_scale = carve(c, N);
    a->lnf_norm = carve(c, N * C); a->lnf_out = carve(c, N * C);
    a->logits = carve(c, N * (size_t)cfg->d_vocab);
}

/* Carves a for (B, T) out of *slab, growing it to fit. */
static int carve_slab(lt_run *r, lt_acts *a, float **slab, size_t *cap, int B, int T, int keep_all, int with_result) {
    carver count = {NULL, 0};
    carve_all(r, a, &count, B, T, keep_all, with_result);
    if (count.used > *cap) {
        lt_free(*slab);
        *cap = 0;
        if (!(*slab = lt_alloc(count.used))) return lt_fail_context("buffers for B=%d, T=%d", B, T);
        *cap = count.used;
    }
    carver c = {*slab, 0};
    carve_all(r, a, &c, B, T, keep_all, with_result);
    return LT_OK;
}

/* Sizes the buffers for a (B, T) forward: reuses the slab when it is large
 * enough, grows it otherwise. keep_all gives every block its own
 * activations (needed by the backward pass). */
int lt_run_reserve(lt_run *r, int B, int T, int keep_all, int with_result) {
    if (carve_slab(r, &r->a, &r->slab, &r->slab_floats, B, T, keep_all, with_result)) return LT_ERR;
    r->B = B;
    r->T = T;
    r->keep_all = keep_all;
    r->has_result = with_result;
    r->has_grads = 0;
    return LT_OK;
}

int lt_run_reserve_grads(lt_run *r) {
    if (carve_slab(r, &r->g, &r->gslab, &r->gslab_floats, r->B, r->T, 1, r->has_result)) return LT_ERR;
    carver count = {NULL, 0};
    carve_all(r, &r->g, &count, r->B, r->T, 1, r->has_result);
    memset(r->gslab, 0, count.used * sizeof(float));
    carver c = {r->gslab, 0};
    carve_all(r, &r->g, &c, r->B, r->T, 1, r->has_result);
    return LT_OK;
}

float *lt_acts_point(const lt_run *r, const lt_acts *a, int point) {
    int kind = lt_hook_kind(r->m, point), l = lt_hook_layer(r->m, point);
    const lt_block_acts *b = l >= 0 ? &a->blocks[l] : NULL;
    switch (kind) {
    case LT_HOOK_EMBED: return a->embed;
    case LT_HOOK_POS_EMBED: return a->pos_embed;
    case LT_HOOK_RESID_PRE: return a->resid[l];
    case LT_HOOK_LN1_SCALE: return b->ln1_scale;
    case LT_HOOK_LN1_NORMALIZED: return b->ln1_norm;
    case LT_HOOK_Q: return b->q;
    case LT_HOOK_K: return b->k;
    case LT_HOOK_V: return b->v;
    case LT_HOOK_ATTN_SCORES: return b->scores;
    case LT_HOOK_PATTERN: return b->pattern;
    case LT_HOOK_Z: return b->z;
    case LT_HOOK_RESULT: return b->result;
    case LT_HOOK_ATTN_OUT: return b->attn_out;
    case LT_HOOK_RESID_MID: return b->resid_mid;
    case LT_HOOK_LN2_SCALE: return b->ln2_scale;
    case LT_HOOK_LN2_NORMALIZED: return b->ln2_norm;
    case LT_HOOK_MLP_PRE: return b->mlp_pre;
    case LT_HOOK_MLP_POST: return b->mlp_post;
    case LT_HOOK_MLP_OUT: return b->mlp_out;
    case LT_HOOK_RESID_POST: return a->resid[l + 1];
    case LT_HOOK_LNF_SCALE: return a->lnf_scale;
    case LT_HOOK_LNF_NORMALIZED: return a->lnf_norm;
    case LT_HOOK_SAE_ACTS_PRE: case LT_HOOK_SAE_ACTS_POST: case LT_HOOK_SAE_RECONS: case LT_HOOK_SAE_ERROR:
        return lt_sae_point_data(r, point, a == &r->g);
    default: return NULL;
    }
}

/* A borrowed view of a point's buffer in a, with its shape. */
static int point_view(lt_run *r, const lt_acts *a, int point, const char *what, lt_view *out) {
    if (check_point(r, point)) return LT_ERR;
    if (!r->B) return lt_fail("no forward pass has run yet");
    int layer = lt_hook_layer(r->m, point);
    /* after a stop at layer k, blocks.k.hook_resid_pre is the last point computed */
    int resid_pre = lt_hook_kind(r->m, point) == LT_HOOK_RESID_PRE;
    int after_stop = !r->has_logits && (layer > r->ran_layers || (layer == r->ran_layers && !resid_pre) ||
                                        (layer < 0 && point >= 2));
    if (after_stop)
        return lt_fail("%s is after the stop (stop_at_layer %d) of the last forward pass", lt_hook_name(r->m, point),
                       r->ran_layers);
    float *data = lt_acts_point(r, a, point);
    if (!data) return lt_fail("%s at %s was not computed in the last pass", what, lt_hook_name(r->m, point));
    if (lt_hook_shape(r->m, point, r->B, r->T, out)) return LT_ERR;
    out->data = data;
    return LT_OK;
}

int lt_run_activation(lt_run *r, int point, lt_view *out) {
    if (!r->keep_all) return lt_fail("activations are kept only after a forward with lt_run_keep_activations on");
    return point_view(r, &r->a, point, "the activation", out);
}

int lt_run_grad(lt_run *r, int point, lt_view *out) {
    if (!r->has_grads) return lt_fail("no gradients: run lt_backward after the forward pass");
    return point_view(r, &r->g, point, "the gradient", out);
}

void lt_run_keep_activations(lt_run *r, int on) { r->want_keep = on != 0; }

int lt_run_stop_at_layer(lt_run *r, int layer) {
    int L = r->m->cfg.n_layer;
    if (layer < -1 || layer > L) return lt_fail("stop_at_layer %d is out of range (-1 for none, 0 .. %d)", layer, L);
    r->stop_at = layer;
    return LT_OK;
}

/* -------------------------------------------------------------- hooks */

static void update_any(lt_run *r);

int lt_run_sync_points(lt_run *r) {
    int n = r->m->n_hooks;
    if (n == r->n_points) return LT_OK;
    /* SAE points come and go at the end of the numbering */
    for (int p = n; p < r->n_points; p++) {
        free(r->points[p].entries);
        lt_free(r->points[p].captured);
    }
    lt_point_state *np = realloc(r->points, (size_t)n * sizeof *np);
    if (!np) return lt_fail("out of memory");
    if (n > r->n_points) memset(np + r->n_points, 0, (size_t)(n - r->n_points) * sizeof *np);
    r->points = np;
    r->n_points = n;
    if (r->m->n_saes < r->n_sae_bufs) lt_sae_bufs_free(r);
    update_any(r);
    return LT_OK;
}

static int check_point(lt_run *r, int point) {
    if (lt_run_sync_points(r)) return LT_ERR;
    if (point < 0 || point >= r->m->n_hooks) return lt_fail("hook point %d out of range (0..%d)", point, r->m->n_hooks - 1);
    return LT_OK;
}

static void update_any(lt_run *r) {
    r->any_hooks = r->m->n_saes > 0;
    for (int p = 0; p < r->n_points; p++)
        if (r->points[p].n_entries || r->points[p].capture) r->any_hooks = 1;
}

static int add_entry(lt_run *r, int point, const lt_hook_entry *e) {
    if (check_point(r, point)) return LT_ERR;
    lt_point_state *ps = &r->points[point];
    if (ps->n_entries == ps->cap_entries) {
        int cap = ps->cap_entries ? 2 * ps->cap_entries : 4;
        lt_hook_entry *ne = realloc(ps->entries, (size_t)cap * sizeof *ne);
        if (!ne) return lt_fail("out of memory");
        ps->entries = ne;
        ps->cap_entries = cap;
    }
    ps->entries[ps->n_entries++] = *e;
    r->any_hooks = 1;
    return LT_OK;
}

int lt_run_add_callback(lt_run *r, int point, lt_hook_fn fn, void *ud) {
    if (!fn) return lt_fail("hook callback is NULL");
    lt_hook_entry e = {.is_callback = 1, .fn = fn, .ud = ud};
    return add_entry(r, point, &e);
}

int lt_run_add_intervention(lt_run *r, int point, const lt_intervention *iv) {
    if (check_point(r, point)) return LT_ERR;
    const char *name = lt_hook_name(r->m, point);
    if (iv->op < LT_IV_ZERO || iv->op > LT_IV_MEAN) return lt_fail("%s: unknown intervention op %d", name, iv->op);
    if ((iv->op == LT_IV_PATCH || iv->op == LT_IV_MEAN) && !iv->src)
        return lt_fail("%s: this intervention needs a source activation", name);
    if (iv->op == LT_IV_PATCH && iv->src_rows < 1) return lt_fail("%s: patch source has no rows", name);
    int kind = lt_hook_kind(r->m, point);
    int has_heads = kind == LT_HOOK_Q || kind == LT_HOOK_K || kind == LT_HOOK_V || kind == LT_HOOK_Z ||
                    kind == LT_HOOK_RESULT || kind == LT_HOOK_ATTN_SCORES || kind == LT_HOOK_PATTERN;
    if (iv->heads && !has_heads) return lt_fail("%s has no head dimension: heads cannot be selected there", name);
    for (int i = 0; i < iv->n_heads; i++)
        if (iv->heads[i] < 0 || iv->heads[i] >= r->m->cfg.n_head)
            return lt_fail("%s: head %d out of range (model has %d heads)", name, iv->heads[i], r->m->cfg.n_head);
    lt_hook_entry e = {.is_callback = 0, .iv = *iv};
    return add_entry(r, point, &e);
}

void lt_run_clear_hooks(lt_run *r) {
    for (int p = 0; p < r->n_points; p++) r->points[p].n_entries = 0;
    update_any(r);
}

int lt_run_capture(lt_run *r, int point, int on) {
    if (check_point(r, point)) return LT_ERR;
    r->points[point].capture = on != 0;
    update_any(r);
    return LT_OK;
}

void lt_run_clear_captures(lt_run *r) {
    for (int p = 0; p < r->n_points; p++) {
        r->points[p].capture = 0;
        lt_free(r->points[p].captured);
        r->points[p].captured = NULL;
    }
    update_any(r);
}

int lt_run_take_capture(lt_run *r, int point, lt_view *out) {
    if (check_point(r, point)) return LT_ERR;
    lt_point_state *ps = &r->points[point];
    if (!ps->captured) return lt_fail("nothing captured at %s in the last forward pass", lt_hook_name(r->m, point));
    *out = ps->captured_view;
    ps->captured = NULL;
    return LT_OK;
}

int lt_run_point_edited(const lt_run *r, int point) { return r->points[point].n_entries > 0; }

int lt_run_point_active(const lt_run *r, int point) {
    return r->points[point].n_entries > 0 || r->points[point].capture;
}

int lt_run_hook(lt_run *r, int point, float *data) {
    lt_point_state *ps = &r->points[point];
    int sae = point < r->m->n_static_hooks && r->m->n_saes ? lt_sae_at(r->m, point) : -1;
    if (!ps->n_entries && !ps->capture) return sae >= 0 ? lt_sae_splice_forward(r, sae, data) : LT_OK;
    lt_view v;
    if (lt_hook_shape(r->m, point, r->B, r->T, &v)) return LT_ERR;
    v.data = data;
    for (int i = 0; i < ps->n_entries; i++) {
        lt_hook_entry *e = &ps->entries[i];
        if (e->is_callback) {
            lt_view copy = v;
            if (e->fn(e->ud, point, &copy)) return lt_fail("hook at %s failed", lt_hook_name(r->m, point));
        } else if (lt_intervention_apply(r->m, point, &e->iv, &v)) {
            return LT_ERR;
        }
    }
    if (ps->capture) {
        size_t n = (size_t)lt_view_numel(&v);
        if (ps->captured && lt_view_numel(&ps->captured_view) != (int64_t)n) {
            lt_free(ps->captured);
            ps->captured = NULL;
        }
        if (!ps->captured && !(ps->captured = lt_alloc(n))) return LT_ERR;
        memcpy(ps->captured, data, n * sizeof(float));
        ps->captured_view = v;
        ps->captured_view.data = ps->captured;
    }
    return sae >= 0 ? lt_sae_splice_forward(r, sae, data) : LT_OK;
}
