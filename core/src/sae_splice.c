/*
 * sae_splice.c: sparse autoencoders spliced into the forward pass at a hook
 * point, with their latents as hook points of their own (see
 * lt_model_attach_sae in lantern.h for the contract).
 *
 * At an attached point with input x [N, d_in]:
 *   pre, z  = encode(x)                       -> hook_sae_acts_pre (read-only)
 *   x_hat   = decode(z); error = x - x_hat    -> hook_sae_error
 *   z'      = hooks(z)                        -> hook_sae_acts_post
 *   recons  = decode(z') (x_hat when no hook can edit z)  -> hook_sae_recons
 *   output  = recons + error  (recons alone without the error term)
 */
#include "model_internal.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

/* A run's buffers for one attachment, sized for N rows of the SAE's widths. */
typedef struct lt_sae_bufs {
    int64_t rows, d_sae, d_in;
    float *pre, *z, *recons, *error;   /* activations */
    float *g_pre, *g_z, *g_recons, *g_error;   /* gradients */
} lt_sae_bufs;

static void bufs_release(lt_sae_bufs *b) {
    float **all[8] = {&b->pre, &b->z, &b->recons, &b->error, &b->g_pre, &b->g_z, &b->g_recons, &b->g_error};
    for (int i = 0; i < 8; i++) { lt_free(*all[i]); *all[i] = NULL; }
    b->rows = 0;
}

void lt_sae_bufs_free(lt_run *r) {
    for (int i = 0; i < r->n_sae_bufs; i++) bufs_release(&r->sae_bufs[i]);
    free(r->sae_bufs);
    r->sae_bufs = NULL;
    r->n_sae_bufs = 0;
}

static int bufs_reserve(lt_run *r, int a, int64_t N) {
    if (r->n_sae_bufs < r->m->n_saes) {
        lt_sae_bufs *nb = realloc(r->sae_bufs, (size_t)r->m->n_saes * sizeof *nb);
        if (!nb) return lt_fail("out of memory");
        memset(nb + r->n_sae_bufs, 0, (size_t)(r->m->n_saes - r->n_sae_bufs) * sizeof *nb);
        r->sae_bufs = nb;
        r->n_sae_bufs = r->m->n_saes;
    }
    lt_sae_bufs *b = &r->sae_bufs[a];
    int64_t S = r->m->saes[a].d_sae, D = r->m->saes[a].d_in;
    /* The widths too: after lt_model_detach_saes another SAE may be
     * attached under the same index while this run lives on. */
    if (b->rows == N && b->d_sae == S && b->d_in == D) return LT_OK;
    bufs_release(b);
    b->pre = lt_alloc((size_t)(N * S)); b->z = lt_alloc((size_t)(N * S));
    b->recons = lt_alloc((size_t)(N * D)); b->error = lt_alloc((size_t)(N * D));
    b->g_pre = lt_alloc((size_t)(N * S)); b->g_z = lt_alloc((size_t)(N * S));
    b->g_recons = lt_alloc((size_t)(N * D)); b->g_error = lt_alloc((size_t)(N * D));
    if (!b->pre || !b->z || !b->recons || !b->error || !b->g_pre || !b->g_z || !b->g_recons || !b->g_error) {
        bufs_release(b);
        return LT_ERR;
    }
    b->rows = N;
    b->d_sae = S;
    b->d_in = D;
    return LT_OK;
}

float *lt_sae_point_data(const lt_run *r, int point, int grad) {
    int a = (point - r->m->n_static_hooks) / 4, kind = lt_hook_kind(r->m, point);
    if (a < 0 || a >= r->n_sae_bufs || a >= r->m->n_saes || !r->sae_bufs[a].rows) return NULL;
    const lt_sae_bufs *b = &r->sae_bufs[a];
    /* buffers of an SAE since detached: not this pass's */
    if (b->d_sae != r->m->saes[a].d_sae || b->d_in != r->m->saes[a].d_in) return NULL;
    switch (kind) {
    case LT_HOOK_SAE_ACTS_PRE: return grad ? b->g_pre : b->pre;
    case LT_HOOK_SAE_ACTS_POST: return grad ? b->g_z : b->z;
    case LT_HOOK_SAE_RECONS: return grad ? b->g_recons : b->recons;
    case LT_HOOK_SAE_ERROR: return grad ? b->g_error : b->error;
    default: return NULL;
    }
}

/* ---------------------------------------------------------- attaching */

int lt_model_attach_sae(lt_model *m, int point, lt_sae *sae, int use_error_term) {
    if (point < 0 || point >= m->n_static_hooks) return lt_fail("attach_sae: hook point %d is not a model hook point", point);
    const char *name = m->hook_names[point];
    if (lt_sae_at(m, point) >= 0) return lt_fail("attach_sae: %s already has an SAE", name);
    lt_view shape;
    if (lt_hook_shape(m, point, 1, 1, &shape)) return LT_ERR;
    int kind = lt_hook_kind(m, point);
    if (kind == LT_HOOK_ATTN_SCORES || kind == LT_HOOK_PATTERN || shape.ndim != 3)
        return lt_fail("attach_sae: %s is not a [batch, position, features] activation", name);
    if (lt_sae_d_in(sae) != shape.shape[2])
        return lt_fail("attach_sae: the SAE reads %lld features but %s has %lld", (long long)lt_sae_d_in(sae), name,
                       (long long)shape.shape[2]);
    lt_sae_attachment *na = realloc(m->saes, (size_t)(m->n_saes + 1) * sizeof *na);
    if (!na) return lt_fail("out of memory");
    m->saes = na;
    char **nn = realloc(m->hook_names, (size_t)(m->n_hooks + 4) * sizeof *nn);
    if (!nn) return lt_fail("out of memory");
    m->hook_names = nn;
    static const char *suffix[4] = {"hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons", "hook_sae_error"};
    char buf[200];
    for (int k = 0; k < 4; k++) {
        snprintf(buf, sizeof buf, "%s.%s", name, suffix[k]);
        if (!(m->hook_names[m->n_hooks + k] = strdup(buf))) {
            for (int j = 0; j < k; j++) free(m->hook_names[m->n_hooks + j]);
            return lt_fail("out of memory");
        }
    }
    m->saes[m->n_saes] = (lt_sae_attachment){point, sae, use_error_term != 0, lt_sae_d_in(sae), lt_sae_d_sae(sae)};
    m->n_saes++;
    m->n_hooks += 4;
    return LT_OK;
}

void lt_model_detach_saes(lt_model *m) {
    for (int p = m->n_static_hooks; p < m->n_hooks; p++) free(m->hook_names[p]);
    m->n_hooks = m->n_static_hooks;
    free(m->saes);
    m->saes = NULL;
    m->n_saes = 0;
}

int lt_model_sae_count(const lt_model *m) { return m->n_saes; }

/* ------------------------------------------------------------ forward */

int lt_sae_splice_forward(lt_run *r, int a, float *x) {
    const lt_sae_attachment *at = &r->m->saes[a];
    int64_t N = (int64_t)r->B * r->T, D = at->d_in;
    if (bufs_reserve(r, a, N)) return LT_ERR;
    lt_sae_bufs *b = &r->sae_bufs[a];
    int base = r->m->n_static_hooks + 4 * a;
    if (lt_sae_encode(at->sae, x, N, b->pre, b->z)) return LT_ERR;
    if (lt_run_hook(r, base + 0, b->pre)) return LT_ERR;
    /* x_hat = decode(z), error = x - x_hat */
    if (lt_sae_decode(at->sae, b->z, N, b->recons)) return LT_ERR;
    for (int64_t i = 0; i < N * D; i++) b->error[i] = x[i] - b->recons[i];
    if (lt_run_hook(r, base + 3, b->error)) return LT_ERR;
    if (lt_run_hook(r, base + 1, b->z)) return LT_ERR;
    if (lt_run_point_edited(r, base + 1) && lt_sae_decode(at->sae, b->z, N, b->recons)) return LT_ERR;
    if (lt_run_hook(r, base + 2, b->recons)) return LT_ERR;
    for (int64_t i = 0; i < N * D; i++) x[i] = at->use_error ? b->recons[i] + b->error[i] : b->recons[i];
    return LT_OK;
}

/* ----------------------------------------------------------- backward */

int lt_sae_splice_backward(lt_run *r, int a, float *g, lt_point_grad_fn at_point, void *ctx) {
    const lt_sae_attachment *at = &r->m->saes[a];
    int64_t N = (int64_t)r->B * r->T, D = at->d_in, S = at->d_sae;
    lt_sae_bufs *b = &r->sae_bufs[a];
    int base = r->m->n_static_hooks + 4 * a;
    if (!b->rows) return lt_fail("backward: the SAE at %s did not run in the forward pass", r->m->hook_names[at->point]);
    lt_view W_dec, W_enc;
    if (lt_sae_param(at->sae, "W_dec", &W_dec) || lt_sae_param(at->sae, "W_enc", &W_enc)) return LT_ERR;
    /* output = recons + error: both receive g */
    memcpy(b->g_recons, g, (size_t)(N * D) * sizeof(float));
    if (at_point(ctx, base + 2, b->g_recons)) return LT_ERR;
    memcpy(b->g_error, g, (size_t)(N * D) * sizeof(float));
    if (at_point(ctx, base + 3, b->g_error)) return LT_ERR;
    /* g_z [N, S] = g_recons [N, D] @ W_dec^T (W_dec [S, D]) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)S, (int)D, 1.0f, b->g_recons, (int)D, W_dec.data,
                (int)D, 0.0f, b->g_z, (int)S);
    if (at_point(ctx, base + 1, b->g_z)) return LT_ERR;
    /* g_pre: through the activation (1 where the latent fired) only when
     * the reconstruction really depends on x, i.e. without the error term;
     * with it the error term is a constant and the output is x itself, so
     * the input receives g unchanged. Seeds at acts_pre (tracing from a
     * latent's pre-activation) flow through the encoder either way. */
    memset(b->g_pre, 0, (size_t)(N * S) * sizeof(float));
    if (!at->use_error)
        for (int64_t i = 0; i < N * S; i++) b->g_pre[i] = b->z[i] != 0.0f ? b->g_z[i] : 0.0f;
    if (at_point(ctx, base + 0, b->g_pre)) return LT_ERR;
    if (!at->use_error) memcpy(g, b->g_error, (size_t)(N * D) * sizeof(float));
    /* g_x += g_pre [N, S] @ W_enc^T (W_enc [D, S]) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)D, (int)S, 1.0f, b->g_pre, (int)S, W_enc.data, (int)S,
                1.0f, g, (int)D);
    return LT_OK;
}
