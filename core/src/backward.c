/*
 * backward.c: the backward pass of a kept forward pass (lt_run_keep_activations),
 * walking the hook points in reverse. Gradients land in r->g, laid out like
 * the activations, so the gradient at every hook point can be read (the
 * "<name>_grad" of TransformerLens-style caches); parameter gradients are
 * accumulated on request (training).
 *
 * The seed is either a gradient of the logits (dlogits [N, V], from a
 * metric) or gradients placed at hook points (upstream tracing from a node's
 * pre-activation). Options detach LayerNorm scales and stop the gradient
 * through the query, key or pattern of one layer, as TDB's attribution
 * needs. Built-in interventions are respected: an element that a zero, set,
 * patch or mean intervention replaced passes no gradient upstream, and a
 * scaled one passes it scaled.
 */
#include "model_internal.h"
#include "ops.h"

#include <cblas.h>
#include <string.h>

typedef struct bw {
    lt_run *r;
    const lt_backward_opts *o;
    const lt_grad_seed *seeds;
    int n_seeds;
    float *pg;                     /* parameter gradients or NULL */
} bw;

/* Parameter gradient slice matching a parameter pointer. */
static float *pgrad(const bw *s, const float *param) {
    return s->pg ? s->pg + (param - s->r->m->params) : NULL;
}

/* Called where the gradient of a hook point is complete: adds the seeds
 * placed there and applies the point's interventions to the gradient; at a
 * point with an SAE spliced in, continues through the SAE to its input. */
static int at_point_id(void *ctx, int point, float *g) {
    bw *s = ctx;
    lt_run *r = s->r;
    lt_view v;
    if (lt_hook_shape(r->m, point, r->B, r->T, &v)) return LT_ERR;
    v.data = g;
    int64_t n = lt_view_numel(&v);
    for (int i = 0; i < s->n_seeds; i++)
        if (s->seeds[i].point == point) {
            const float *src = s->seeds[i].grad;
            for (int64_t j = 0; j < n; j++) g[j] += src[j];
        }
    lt_point_state *ps = &r->points[point];
    for (int i = 0; i < ps->n_entries; i++) {
        const lt_hook_entry *e = &ps->entries[i];
        if (e->is_callback || e->iv.op == LT_IV_ADD) continue;   /* additive or unknown: gradient passes */
        lt_intervention mask = e->iv;
        if (mask.op != LT_IV_SCALE) mask.op = LT_IV_ZERO;
        if (lt_intervention_apply(r->m, point, &mask, &v)) return LT_ERR;
    }
    int a = point < r->m->n_static_hooks ? lt_sae_at(r->m, point) : -1;
    if (a >= 0) return lt_sae_splice_backward(r, a, g, at_point_id, s);
    return LT_OK;
}

static int at_point(bw *s, int kind, int layer, float *g) {
    return at_point_id(s, lt_point(s->r->m, kind, layer), g);
}

#define AT(kind, layer, g) do { if (at_point(s, (kind), (layer), (g))) return LT_ERR; } while (0)

/* Backward of a hooked LayerNorm: dout [N, C] -> dx [N, C] (accumulated),
 * with the gradients at hook_normalized and hook_scale on the way. */
static int layernorm_backward(bw *s, int layer, int scale_kind, float *dx, const float *dout, const float *x,
                              const float *mean, const float *scale, const float *norm, const float *w, float *dw,
                              float *db, float *dnorm, float *dscale, int detach) {
    const lt_config *c = &s->r->m->cfg;
    int N = s->r->B * s->r->T, C = c->n_embd;
    /* out = norm * w + b */
    for (int n = 0; n < N; n++)
        for (int i = 0; i < C; i++) {
            float d = dout[(size_t)n * C + i];
            dnorm[(size_t)n * C + i] += d * w[i];
            if (dw) dw[i] += d * norm[(size_t)n * C + i];
            if (db) db[i] += d;
        }
    AT(scale_kind + 1, layer, dnorm);
    /* norm = (x - mean) / scale: d scale = -sum(dnorm * norm) / scale */
    for (int n = 0; n < N; n++) {
        double acc = 0;
        for (int i = 0; i < C; i++) acc += (double)dnorm[(size_t)n * C + i] * norm[(size_t)n * C + i];
        dscale[n] += (float)(-acc / scale[n]);
    }
    AT(scale_kind, layer, dscale);
    /* dx through the normalisation (x - mean) / scale; through the scale
     * itself unless it is detached: d scale / dx = (x - mean) / (C scale) */
    for (int n = 0; n < N; n++) {
        const float *dn = dnorm + (size_t)n * C;
        float *dxn = dx + (size_t)n * C;
        double mean_g = 0;
        for (int i = 0; i < C; i++) mean_g += dn[i];
        mean_g /= C;
        float r = 1.0f / scale[n];
        for (int i = 0; i < C; i++) dxn[i] += (dn[i] - (float)mean_g) * r;
        if (!detach) {
            float ds = dscale[n] / ((float)C * scale[n]);
            for (int i = 0; i < C; i++) dxn[i] += ds * (x[(size_t)n * C + i] - mean[n]);
        }
    }
    return LT_OK;
}

/* One block in reverse: g.resid[l + 1] -> g.resid[l]. */
static int block_backward(bw *s, int l) {
    lt_run *r = s->r;
    const lt_config *c = &r->m->cfg;
    const lt_block_params *p = &r->m->blocks[l];
    const lt_block_acts *a = &r->a.blocks[l];
    lt_block_acts *g = &r->g.blocks[l];
    int B = r->B, T = r->T, N = B * T, C = c->n_embd, H = c->n_head, D = c->d_head, M = c->d_mlp;
    const lt_backward_opts *o = s->o;

    float *dpost = r->g.resid[l + 1];
    AT(LT_HOOK_RESID_POST, l, dpost);
    /* resid_post = resid_mid + mlp_out */
    op_add(g->mlp_out, g->mlp_out, dpost, (size_t)N * C);
    op_add(g->resid_mid, g->resid_mid, dpost, (size_t)N * C);
    AT(LT_HOOK_MLP_OUT, l, g->mlp_out);
    op_matmul_backward(g->mlp_post, pgrad(s, p->out_w), pgrad(s, p->out_b), g->mlp_out, a->mlp_post, p->out_w, C, N, M, C);
    AT(LT_HOOK_MLP_POST, l, g->mlp_post);
    op_gelu_backward(g->mlp_pre, a->mlp_pre, g->mlp_post, (size_t)N * M);
    AT(LT_HOOK_MLP_PRE, l, g->mlp_pre);
    op_matmul_backward(g->ln2_out, pgrad(s, p->fc_w), pgrad(s, p->fc_b), g->mlp_pre, a->ln2_out, p->fc_w, M, N, C, M);
    if (layernorm_backward(s, l, LT_HOOK_LN2_SCALE, g->resid_mid, g->ln2_out, a->resid_mid, a->ln2_mean, a->ln2_scale,
                           a->ln2_norm, p->ln2_w, pgrad(s, p->ln2_w), pgrad(s, p->ln2_b), g->ln2_norm, g->ln2_scale,
                           o->detach_ln2_layer == l))
        return LT_ERR;
    AT(LT_HOOK_RESID_MID, l, g->resid_mid);

    /* resid_mid = resid_pre + attn_out */
    op_add(g->attn_out, g->attn_out, g->resid_mid, (size_t)N * C);
    op_add(r->g.resid[l], r->g.resid[l], g->resid_mid, (size_t)N * C);
    AT(LT_HOOK_ATTN_OUT, l, g->attn_out);
    int result_point = lt_point(r->m, LT_HOOK_RESULT, l);
    if (a->result && g->result) {
        /* every head's result receives the output's gradient */
        for (int n = 0; n < N; n++)
            for (int h = 0; h < H; h++)
                memcpy(g->result + ((size_t)n * H + h) * C, g->attn_out + (size_t)n * C, (size_t)C * sizeof(float));
        AT(LT_HOOK_RESULT, l, g->result);
    }
    if (a->result && lt_run_point_edited(r, result_point)) {
        /* the output was summed from the (edited) results */
        float *db = pgrad(s, p->proj_b);
        if (db)
            for (int n = 0; n < N; n++)
                for (int i = 0; i < C; i++) db[i] += g->attn_out[(size_t)n * C + i];
        for (int h = 0; h < H; h++) {
            /* result_h [N, C] = z_h [N, D] @ W_O[h] [D, C] */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, D, C, 1.0f, g->result + (size_t)h * C, H * C,
                        p->proj_w + (size_t)h * D * C, C, 1.0f, g->z + h * D, C);
            float *dw = pgrad(s, p->proj_w);
            if (dw)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, D, C, N, 1.0f, a->z + h * D, C,
                            g->result + (size_t)h * C, H * C, 1.0f, dw + (size_t)h * D * C, C);
        }
    } else {
        op_matmul_backward(g->z, pgrad(s, p->proj_w), pgrad(s, p->proj_b), g->attn_out, a->z, p->proj_w, C, N, C, C);
    }
    AT(LT_HOOK_Z, l, g->z);
    /* z = pattern @ v; the pattern's gradient is overwritten, not accumulated */
    op_attn_z_backward(g->pattern, g->v, g->z, a->pattern, a->v, B, T, H, D);
    if (o->stop_pattern_layer == l) memset(g->pattern, 0, (size_t)B * H * T * T * sizeof(float));
    AT(LT_HOOK_PATTERN, l, g->pattern);
    op_softmax_backward(g->scores, a->pattern, g->pattern, (size_t)B * H * T, T);
    AT(LT_HOOK_ATTN_SCORES, l, g->scores);
    op_attn_scores_backward(o->stop_q_layer == l ? NULL : g->q, o->stop_k_layer == l ? NULL : g->k, g->scores, a->q, a->k,
                            B, T, H, D);
    AT(LT_HOOK_Q, l, g->q);
    AT(LT_HOOK_K, l, g->k);
    AT(LT_HOOK_V, l, g->v);
    /* q | k | v = ln1_out @ column blocks of c_attn */
    float *dw = pgrad(s, p->attn_w), *db = pgrad(s, p->attn_b);
    const float *dqkv[3] = {g->q, g->k, g->v};
    for (int j = 0; j < 3; j++)
        op_matmul_backward(g->ln1_out, dw ? dw + j * C : NULL, db ? db + j * C : NULL, dqkv[j], a->ln1_out,
                           p->attn_w + j * C, 3 * C, N, C, C);
    if (layernorm_backward(s, l, LT_HOOK_LN1_SCALE, r->g.resid[l], g->ln1_out, r->a.resid[l], a->ln1_mean, a->ln1_scale,
                           a->ln1_norm, p->ln1_w, pgrad(s, p->ln1_w), pgrad(s, p->ln1_b), g->ln1_norm, g->ln1_scale,
                           o->detach_ln1_layer == l))
        return LT_ERR;
    AT(LT_HOOK_RESID_PRE, l, r->g.resid[l]);
    return LT_OK;
}

int lt_backward(lt_run *r, const float *dlogits, const lt_grad_seed *seeds, int n_seeds, const lt_backward_opts *opts) {
    lt_model *m = r->m;
    const lt_config *c = &m->cfg;
    if (!r->B) return lt_fail("backward: no forward pass has run");
    if (!r->keep_all) return lt_fail("backward: the forward pass did not keep its activations (lt_run_keep_activations)");
    if (!r->has_logits)
        return lt_fail("backward: the forward pass stopped at layer %d (lt_run_stop_at_layer)", r->ran_layers);
    lt_backward_opts defaults = {0, -1, -1, -1, -1, -1, 0};
    const lt_backward_opts *o = opts ? opts : &defaults;
    for (int i = 0; i < n_seeds; i++)
        if (seeds[i].point < 0 || seeds[i].point >= m->n_hooks || !seeds[i].grad)
            return lt_fail("backward: seed %d is not a valid hook point with a gradient", i);
    if (o->param_grads) {
        if (m->unembed_w != m->wte) return lt_fail("backward: parameter gradients need the tied unembedding (load without weight processing)");
        if (!r->param_grads && !(r->param_grads = lt_alloc(m->n_params))) return LT_ERR;
    }
    if (lt_run_reserve_grads(r)) return LT_ERR;
    bw s = {r, o, seeds, n_seeds, o->param_grads ? r->param_grads : NULL};
    int N = r->B * r->T, C = c->n_embd, V = c->d_vocab;

    if (dlogits) {
        memcpy(r->g.logits, dlogits, (size_t)N * V * sizeof(float));
        /* logits = lnf_out @ unembed_w^T (+ b) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, V, 1.0f, dlogits, V, m->unembed_w, C, 0.0f,
                    r->g.lnf_out, C);
        if (s.pg)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, V, C, N, 1.0f, dlogits, V, r->a.lnf_out, C, 1.0f,
                        pgrad(&s, m->wte), C);
    }
    if (layernorm_backward(&s, -1, LT_HOOK_LNF_SCALE, r->g.resid[c->n_layer], r->g.lnf_out, r->a.resid[c->n_layer],
                           r->a.lnf_mean, r->a.lnf_scale, r->a.lnf_norm, m->lnf_w, pgrad(&s, m->lnf_w),
                           pgrad(&s, m->lnf_b), r->g.lnf_norm, r->g.lnf_scale, o->detach_lnf_scale))
        return LT_ERR;
    for (int l = c->n_layer - 1; l >= 0; l--)
        if (block_backward(&s, l)) return LT_ERR;

    /* resid[0] = embed + pos_embed */
    memcpy(r->g.embed, r->g.resid[0], (size_t)N * C * sizeof(float));
    memcpy(r->g.pos_embed, r->g.resid[0], (size_t)N * C * sizeof(float));
    if (at_point(&s, LT_HOOK_EMBED, -1, r->g.embed) || at_point(&s, LT_HOOK_POS_EMBED, -1, r->g.pos_embed)) return LT_ERR;
    if (s.pg) {
        float *dwte = pgrad(&s, m->wte), *dwpe = pgrad(&s, m->wpe);
        for (int n = 0; n < N; n++) {
            const float *ge = r->g.embed + (size_t)n * C, *gp = r->g.pos_embed + (size_t)n * C;
            float *we = dwte + (size_t)r->ids[n] * C, *wp = dwpe + (size_t)(n % r->T) * C;
            for (int i = 0; i < C; i++) { we[i] += ge[i]; wp[i] += gp[i]; }
        }
    }
    r->has_grads = 1;
    return LT_OK;
}

int lt_run_param_grads(lt_run *r, float **grads, size_t *n) {
    if (!r->param_grads) return lt_fail("no parameter gradients: run lt_backward with param_grads");
    *grads = r->param_grads;
    *n = r->m->n_params;
    return LT_OK;
}

void lt_run_zero_param_grads(lt_run *r) {
    if (r->param_grads) memset(r->param_grads, 0, r->m->n_params * sizeof(float));
}
