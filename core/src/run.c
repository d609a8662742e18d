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
    r->resid = calloc((size_t)m->cfg.n_layer + 1, sizeof *r->resid);
    r->acts = calloc((size_t)m->cfg.n_layer, sizeof *r->acts);
    r->points = calloc((size_t)m->n_hooks, sizeof *r->points);
    if (!r->resid || !r->acts || !r->points) { lt_run_free(r); return lt_fail("out of memory"); }
    *out = r;
    return LT_OK;
}

void lt_run_free(lt_run *r) {
    if (!r) return;
    if (r->points) {
        for (int p = 0; p < r->m->n_hooks; p++) {
            free(r->points[p].entries);
            lt_free(r->points[p].captured);
        }
        free(r->points);
    }
    lt_free(r->slab);
    free(r->resid);
    free(r->acts);
    free(r);
}

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

static void carve_all(lt_run *r, carver *c, int B, int T, int keep_all, int with_result) {
    const lt_config *cfg = &r->m->cfg;
    size_t N = (size_t)B * T, C = cfg->n_embd, L = cfg->n_layer;
    size_t BHTT = (size_t)B * cfg->n_head * T * T;
    r->embed = carve(c, N * C);
    r->pos_embed = carve(c, N * C);
    for (size_t l = 0; l <= L; l++) r->resid[l] = carve(c, N * C);
    for (size_t l = 0; l < L; l++) {
        if (l == 0 || keep_all) carve_block(c, &r->acts[l], cfg, N, BHTT, with_result);
        else r->acts[l] = r->acts[0];
    }
    r->lnf_mean = carve(c, N); r->lnf_scale = carve(c, N);
    r->lnf_norm = carve(c, N * C); r->lnf_out = carve(c, N * C);
    r->logits = carve(c, N * (size_t)cfg->d_vocab);
}

/* Sizes the buffers for a (B, T) forward: reuses the slab when it is large
 * enough, grows it otherwise. keep_all gives every block its own
 * activations (needed by the backward pass). */
int lt_run_reserve(lt_run *r, int B, int T, int keep_all, int with_result) {
    carver count = {NULL, 0};
    carve_all(r, &count, B, T, keep_all, with_result);
    if (count.used > r->slab_floats) {
        lt_free(r->slab);
        r->slab = NULL;
        r->slab_floats = 0;
        r->slab = lt_alloc(count.used);
        if (!r->slab) return lt_fail_context("activation buffers for B=%d, T=%d", B, T);
        r->slab_floats = count.used;
    }
    carver c = {r->slab, 0};
    carve_all(r, &c, B, T, keep_all, with_result);
    r->B = B;
    r->T = T;
    r->keep_all = keep_all;
    r->has_result = with_result;
    return LT_OK;
}

/* -------------------------------------------------------------- hooks */

static int check_point(const lt_run *r, int point) {
    if (point < 0 || point >= r->m->n_hooks) return lt_fail("hook point %d out of range (0..%d)", point, r->m->n_hooks - 1);
    return LT_OK;
}

static void update_any(lt_run *r) {
    r->any_hooks = 0;
    for (int p = 0; p < r->m->n_hooks; p++)
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
    for (int p = 0; p < r->m->n_hooks; p++) r->points[p].n_entries = 0;
    update_any(r);
}

int lt_run_capture(lt_run *r, int point, int on) {
    if (check_point(r, point)) return LT_ERR;
    r->points[point].capture = on != 0;
    update_any(r);
    return LT_OK;
}

void lt_run_clear_captures(lt_run *r) {
    for (int p = 0; p < r->m->n_hooks; p++) {
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
    if (!ps->n_entries && !ps->capture) return LT_OK;
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
    return LT_OK;
}
