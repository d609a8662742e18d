/*
 * forward.c: the GPT-2 forward pass, laid out along the TransformerLens hook
 * points so that each one can be captured or edited where it is computed;
 * plus the next-token loss and sampling.
 */
#include "model_internal.h"
#include "ops.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Runs the hooks of a point when anything is attached to the run. */
#define HOOK(r, kind, layer, data) \
    do { if ((r)->any_hooks && lt_run_hook((r), lt_point((r)->m, (kind), (layer)), (data))) return LT_ERR; } while (0)

/* LayerNorm with its two hook points: x[N, C] -> out[N, C]. */
static int layernorm_hooked(lt_run *r, int layer, int scale_kind, const float *x, float *mean, float *scale,
                            float *norm, float *out, const float *w, const float *b) {
    const lt_config *c = &r->m->cfg;
    int N = r->B * r->T;
    op_ln_stats(mean, scale, x, N, c->n_embd, c->ln_eps);
    HOOK(r, scale_kind, layer, scale);
    op_ln_normalize(norm, x, mean, scale, N, c->n_embd);
    HOOK(r, scale_kind + 1, layer, norm);
    op_ln_affine(out, norm, w, b, N, c->n_embd);
    return LT_OK;
}

/* One transformer block: resid[l] [N, C] -> resid[l + 1] [N, C]. */
static int block_forward(lt_run *r, int l) {
    const lt_config *c = &r->m->cfg;
    const lt_block_params *p = &r->m->blocks[l];
    lt_block_acts *a = &r->a.blocks[l];
    int B = r->B, T = r->T, N = B * T, C = c->n_embd, H = c->n_head, D = c->d_head, M = c->d_mlp;
    float *x = r->a.resid[l];

    HOOK(r, LT_HOOK_RESID_PRE, l, x);
    if (layernorm_hooked(r, l, LT_HOOK_LN1_SCALE, x, a->ln1_mean, a->ln1_scale, a->ln1_norm, a->ln1_out, p->ln1_w, p->ln1_b))
        return LT_ERR;

    /* q, k, v [N, C] = ln1_out @ column blocks of c_attn [C, 3C] */
    op_matmul_forward(a->q, a->ln1_out, p->attn_w, 3 * C, p->attn_b, N, C, C);
    op_matmul_forward(a->k, a->ln1_out, p->attn_w + C, 3 * C, p->attn_b + C, N, C, C);
    op_matmul_forward(a->v, a->ln1_out, p->attn_w + 2 * C, 3 * C, p->attn_b + 2 * C, N, C, C);
    HOOK(r, LT_HOOK_Q, l, a->q);
    HOOK(r, LT_HOOK_K, l, a->k);
    HOOK(r, LT_HOOK_V, l, a->v);

    op_attn_scores_forward(a->scores, a->q, a->k, B, T, H, D);
    HOOK(r, LT_HOOK_ATTN_SCORES, l, a->scores);
    op_softmax_forward(a->pattern, a->scores, (size_t)B * H * T, T);
    HOOK(r, LT_HOOK_PATTERN, l, a->pattern);
    op_attn_z_forward(a->z, a->pattern, a->v, B, T, H, D);
    HOOK(r, LT_HOOK_Z, l, a->z);

    /* Per-head results are computed only when hook_result is used. The
     * output is summed from them only when a hook may have edited them, so
     * that capturing alone leaves the logits bit-identical. */
    int result_point = lt_point(r->m, LT_HOOK_RESULT, l);
    if (r->any_hooks && lt_run_point_active(r, result_point)) {
        op_attn_result_forward(a->result, a->z, p->proj_w, N, H, D);
        if (lt_run_hook(r, result_point, a->result)) return LT_ERR;
    }
    if (r->any_hooks && lt_run_point_edited(r, result_point)) op_sum_heads(a->attn_out, a->result, p->proj_b, N, H, C);
    else op_matmul_forward(a->attn_out, a->z, p->proj_w, C, p->proj_b, N, C, C);
    HOOK(r, LT_HOOK_ATTN_OUT, l, a->attn_out);

    op_add(a->resid_mid, x, a->attn_out, (size_t)N * C);
    HOOK(r, LT_HOOK_RESID_MID, l, a->resid_mid);

    if (layernorm_hooked(r, l, LT_HOOK_LN2_SCALE, a->resid_mid, a->ln2_mean, a->ln2_scale, a->ln2_norm, a->ln2_out,
                         p->ln2_w, p->ln2_b))
        return LT_ERR;
    op_matmul_forward(a->mlp_pre, a->ln2_out, p->fc_w, M, p->fc_b, N, C, M);
    HOOK(r, LT_HOOK_MLP_PRE, l, a->mlp_pre);
    op_gelu_forward(a->mlp_post, a->mlp_pre, (size_t)N * M);
    HOOK(r, LT_HOOK_MLP_POST, l, a->mlp_post);
    op_matmul_forward(a->mlp_out, a->mlp_post, p->out_w, C, p->out_b, N, M, C);
    HOOK(r, LT_HOOK_MLP_OUT, l, a->mlp_out);

    op_add(r->a.resid[l + 1], a->resid_mid, a->mlp_out, (size_t)N * C);
    HOOK(r, LT_HOOK_RESID_POST, l, r->a.resid[l + 1]);
    return LT_OK;
}

int lt_forward_ex(lt_run *r, const int32_t *ids, int B, int T, int keep_all, float **logits) {
    lt_model *m = r->m;
    const lt_config *c = &m->cfg;
    if (B < 1 || T < 1) return lt_fail("empty input: need at least one sequence of at least one token");
    if (T > c->n_ctx) return lt_fail("sequence length %d is longer than the model's context (n_ctx = %d)", T, c->n_ctx);
    for (int64_t i = 0; i < (int64_t)B * T; i++)
        if (ids[i] < 0 || ids[i] >= c->d_vocab)
            return lt_fail("token id %d at position %lld is out of range (d_vocab = %d)", ids[i], (long long)(i % T), c->d_vocab);

    if (lt_run_sync_points(r)) return LT_ERR;
    int with_result = 0;
    for (int l = 0; l < c->n_layer && r->any_hooks; l++)
        if (lt_run_point_active(r, lt_point(m, LT_HOOK_RESULT, l))) with_result = 1;
    if (lt_run_reserve(r, B, T, keep_all || r->want_keep, with_result)) return LT_ERR;
    r->has_grads = 0;

    int N = B * T, C = c->n_embd;
    if ((size_t)N > r->ids_cap) {
        int32_t *nid = realloc(r->ids, (size_t)N * sizeof *nid);
        if (!nid) return lt_fail("out of memory");
        r->ids = nid;
        r->ids_cap = (size_t)N;
    }
    memcpy(r->ids, ids, (size_t)N * sizeof *ids);
    for (int n = 0; n < N; n++) memcpy(r->a.embed + (size_t)n * C, m->wte + (size_t)ids[n] * C, (size_t)C * sizeof(float));
    HOOK(r, LT_HOOK_EMBED, -1, r->a.embed);
    for (int n = 0; n < N; n++) memcpy(r->a.pos_embed + (size_t)n * C, m->wpe + (size_t)(n % T) * C, (size_t)C * sizeof(float));
    HOOK(r, LT_HOOK_POS_EMBED, -1, r->a.pos_embed);
    op_add(r->a.resid[0], r->a.embed, r->a.pos_embed, (size_t)N * C);

    int L = r->stop_at >= 0 ? r->stop_at : c->n_layer;
    r->ran_layers = 0;
    r->has_logits = 0;
    for (int l = 0; l < L; l++) {
        if (block_forward(r, l)) return LT_ERR;
        r->ran_layers = l + 1;
    }
    if (r->stop_at >= 0) {
        /* the stop's last point: blocks.{L}.hook_resid_pre (a hook may edit it) */
        if (L < c->n_layer) HOOK(r, LT_HOOK_RESID_PRE, L, r->a.resid[L]);
        if (logits) *logits = NULL;
        return LT_OK;
    }

    if (layernorm_hooked(r, -1, LT_HOOK_LNF_SCALE, r->a.resid[c->n_layer], r->a.lnf_mean, r->a.lnf_scale, r->a.lnf_norm,
                         r->a.lnf_out, m->lnf_w, m->lnf_b))
        return LT_ERR;
    /* logits [N, V] = lnf_out [N, C] @ unembed_w^T (+ unembed_b) */
    if (m->unembed_b)
        for (int n = 0; n < N; n++) memcpy(r->a.logits + (size_t)n * c->d_vocab, m->unembed_b, (size_t)c->d_vocab * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, c->d_vocab, C, 1.0f, r->a.lnf_out, C, m->unembed_w, C,
                m->unembed_b ? 1.0f : 0.0f, r->a.logits, c->d_vocab);
    r->has_logits = 1;
    if (logits) *logits = r->a.logits;
    return LT_OK;
}

int lt_forward(lt_run *r, const int32_t *ids, int B, int T, float **logits) {
    return lt_forward_ex(r, ids, B, T, 0, logits);
}

/* log(sum(exp(row))) computed stably. */
static double logsumexp(const float *row, int n) {
    float mx = row[0];
    for (int i = 1; i < n; i++) if (row[i] > mx) mx = row[i];
    double s = 0;
    for (int i = 0; i < n; i++) s += exp((double)row[i] - mx);
    return mx + log(s);
}

int lt_run_loss(lt_run *r, const int32_t *ids, int B, int T, double *loss) {
    if (B != r->B || T != r->T) return lt_fail("loss: ids are [%d, %d] but the last forward was [%d, %d]", B, T, r->B, r->T);
    if (T < 2) return lt_fail("loss needs at least two tokens per sequence");
    if (!r->has_logits) return lt_fail("loss: the last forward pass stopped before the logits (stop_at_layer)");
    int V = r->m->cfg.d_vocab;
    double total = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t + 1 < T; t++) {
            const float *row = r->a.logits + ((size_t)b * T + t) * V;
            total += logsumexp(row, V) - row[ids[(size_t)b * T + t + 1]];
        }
    *loss = total / ((double)B * (T - 1));
    return LT_OK;
}

/* xorshift64*: the sampler's generator; the state is the caller's. */
static double next_uniform(uint64_t *s) {
    uint64_t x = *s ? *s : 0x853c49e6748fea9bULL;
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    *s = x;
    return ((x * 0x2545F4914F6CDD1DULL) >> 11) * (1.0 / 9007199254740992.0);
}

int lt_sample(const float *logits, int n, float temperature, int top_k, uint64_t *state) {
    if (n < 1) return lt_fail("sample: empty logits");
    if (!(temperature >= 0)) return lt_fail("sample: temperature must be >= 0");
    int best = 0;
    for (int i = 1; i < n; i++) if (logits[i] > logits[best]) best = i;
    if (temperature == 0) return best;
    /* threshold for top-k: the k-th largest logit (ties kept) */
    float cut = -INFINITY;
    if (top_k > 0 && top_k < n) {
        float *tmp = lt_alloc((size_t)n);
        if (!tmp) return LT_ERR;
        memcpy(tmp, logits, (size_t)n * sizeof(float));
        for (int k = 0; k < top_k; k++) {      /* partial selection: k is small */
            int j = k;
            for (int i = k + 1; i < n; i++) if (tmp[i] > tmp[j]) j = i;
            float t = tmp[k]; tmp[k] = tmp[j]; tmp[j] = t;
        }
        cut = tmp[top_k - 1];
        lt_free(tmp);
    }
    double total = 0, mx = logits[best];
    for (int i = 0; i < n; i++)
        if (logits[i] >= cut) total += exp((logits[i] - mx) / temperature);
    double u = next_uniform(state) * total, acc = 0;
    for (int i = 0; i < n; i++) {
        if (logits[i] < cut) continue;
        acc += exp((logits[i] - mx) / temperature);
        if (acc >= u) return i;
    }
    return best;
}
