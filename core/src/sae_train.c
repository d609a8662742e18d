/*
 * sae_train.c: training sparse autoencoders (SAEs) with Adam on a buffer of
 * activations supplied by the caller, and the sums behind the evaluation
 * metrics. The formulas are in docs/sae.md ("Training", "Metrics"); the
 * contracts in lantern.h ("SAE training").
 *
 * Shapes: a batch of n rows, D = d_in, L = d_sae.
 *   W_enc [D, L]  b_enc [L]  W_dec [L, D]  b_dec [D]
 * Forward (apply_b_dec_to_input, no input normalisation inside the SAE):
 *   xin = x - b_dec;  pre = xin W_enc + b_enc;  z = act(pre);  x_hat = z W_dec + b_dec
 *
 * Two code paths compute the same gradients:
 *   - standard (ReLU): z is dense early in training, so every product is
 *     one sgemm;
 *   - TopK: at most k latents per row are non-zero, so the decoder and
 *     every gradient touch only those latents' rows (the encoder product
 *     stays one sgemm). Gradients are gathered per latent, each latent
 *     summed by one thread in row order, so the result does not depend on
 *     the thread count.
 */
#include "internal.h"
#include "topk.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Loops are split over threads only when work (about the number of
 * floats touched) is large enough to pay for waking them: small SAEs train
 * in many tiny steps, and idle-spinning threads would dominate. */
#define PAR_MIN_WORK 262144
#ifdef _OPENMP
#define LT_PRAGMA(x) _Pragma(#x)
#define OMP_PARALLEL_FOR(work) LT_PRAGMA(omp parallel for schedule(static) if((work) >= PAR_MIN_WORK))
#define OMP_PARALLEL_FOR_DYNAMIC(work) LT_PRAGMA(omp parallel for schedule(dynamic, 64) if((work) >= PAR_MIN_WORK))
#else
#define OMP_PARALLEL_FOR(work)
#define OMP_PARALLEL_FOR_DYNAMIC(work)
#endif

/* ------------------------------------------------------------ helpers */

/* splitmix64: the trainer's only source of randomness (shuffles and
 * resampling), so a seed fixes the whole run. */
static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [0, n), n > 0 (the modulo bias is below 2^-40 for our n). */
static uint64_t rng_below(uint64_t *s, uint64_t n) { return rng_next(s) % n; }

static double rng_unit(uint64_t *s) { return (rng_next(s) >> 11) * 0x1.0p-53; }

static double dot(const float *a, const float *b, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* ------------------------------------------------------------ the model view */

/* The SAE's parameters and shapes, read once through the public API. */
typedef struct {
    lt_sae *sae;
    int64_t D, L;
    int topk, k;
    float *W_enc, *b_enc, *W_dec, *b_dec;
} sae_view;

static int view_of(lt_sae *sae, sae_view *v, const char *what) {
    lt_view p;
    memset(v, 0, sizeof *v);
    v->sae = sae;
    v->D = lt_sae_d_in(sae);
    v->L = lt_sae_d_sae(sae);
    int arch = lt_sae_architecture(sae);
    if (arch != LT_SAE_RELU && arch != LT_SAE_TOPK)
        return lt_fail("%s: only standard (ReLU) and topk SAEs can be trained", what);
    if (!lt_sae_apply_b_dec_to_input(sae))
        return lt_fail("%s: training needs apply_b_dec_to_input on", what);
    if (strcmp(lt_sae_normalize_activations(sae), "none") != 0)
        return lt_fail("%s: training needs normalize_activations \"none\" (use the trainer's normalize option)", what);
    v->topk = arch == LT_SAE_TOPK;
    v->k = lt_sae_k(sae);
    if (lt_sae_param(sae, "W_enc", &p)) return LT_ERR;
    v->W_enc = p.data;
    if (lt_sae_param(sae, "b_enc", &p)) return LT_ERR;
    v->b_enc = p.data;
    if (lt_sae_param(sae, "W_dec", &p)) return LT_ERR;
    v->W_dec = p.data;
    if (lt_sae_param(sae, "b_dec", &p)) return LT_ERR;
    v->b_dec = p.data;
    return LT_OK;
}

/* Gradients (or Adam moments) with the parameters' shapes. */
typedef struct { float *W_enc, *b_enc, *W_dec, *b_dec; } param_set;

static void param_set_free(param_set *p) {
    lt_free(p->W_enc); lt_free(p->b_enc); lt_free(p->W_dec); lt_free(p->b_dec);
    memset(p, 0, sizeof *p);
}

static int param_set_alloc(param_set *p, int64_t D, int64_t L) {
    p->W_enc = lt_alloc((size_t)(D * L));
    p->W_dec = lt_alloc((size_t)(D * L));
    p->b_enc = lt_alloc((size_t)L);
    p->b_dec = lt_alloc((size_t)D);
    if (!p->W_enc || !p->W_dec || !p->b_enc || !p->b_dec) { param_set_free(p); return LT_ERR; }
    return LT_OK;
}

/* ------------------------------------------------------------ workspace */

/* Keeps the m largest (value, lower index first) positive pre-activations
 * of row p among the listed candidates: a bounded min-heap, so most
 * candidates cost one comparison. Writes up to m (index, value) pairs,
 * unused slots index -1. */
static void select_top(const float *p, const int32_t *list, int64_t nlist, int m, topk_entry *heap,
                       int32_t *out_idx, float *out_val) {
    int n = 0;
    for (int64_t j = 0; j < nlist; j++) {
        int32_t l = list[j];
        float v = p[l];
        if (v > 0) topk_push(heap, &n, m, (topk_entry){v, l});   /* ReLU: only positive ones fire */
    }
    for (int j = 0; j < m; j++) {
        out_idx[j] = j < n ? heap[j].i : -1;
        out_val[j] = j < n ? heap[j].v : 0.0f;
    }
}

/* One entry of the per-latent gradient lists of the TopK path. */
typedef struct {
    int32_t row;
    int32_t aux;     /* 1: an AuxK latent (its decoder gradient reads de, not dx) */
    float val;       /* the latent's activation */
    float g;         /* d loss / d pre */
} lat_entry;

/* Scratch of one loss-and-gradient evaluation of up to cap rows. */
typedef struct {
    int64_t cap, D, L;
    int k, k_aux;
    float *xin, *pre, *z, *xhat, *dx;   /* [cap, D] / [cap, L] */
    float *e, *de;                      /* AuxK residual and its gradient [cap, D] */
    float *G;                           /* [L, D]: W_enc's gradient, transposed */
    int32_t *idx, *aux_idx;             /* [cap, k], [cap, k_aux]; -1 = unused */
    float *val, *g, *aux_val, *aux_g;
    int64_t *start;                     /* [L + 1] */
    lat_entry *entries;                 /* [cap * (k + k_aux)] */
    double *colsum;                     /* [L] */
    float *norms;                       /* [L] */
    int32_t *dead_list;                 /* [L] */
    int32_t *iota;                      /* [L]: 0, 1, ..., L - 1 (TopK's candidates) */
    topk_entry *heaps;                        /* TopK selection scratch, per thread */
} workspace;

static void work_free(workspace *w) {
    lt_free(w->xin); lt_free(w->pre); lt_free(w->z); lt_free(w->xhat); lt_free(w->dx);
    lt_free(w->e); lt_free(w->de); lt_free(w->G); lt_free(w->val); lt_free(w->g);
    lt_free(w->aux_val); lt_free(w->aux_g); lt_free(w->norms);
    free(w->idx); free(w->aux_idx); free(w->start); free(w->entries); free(w->colsum); free(w->dead_list); free(w->iota); free(w->heaps);
    memset(w, 0, sizeof *w);
}

static int work_alloc(workspace *w, const sae_view *v, int64_t cap, int k_aux) {
    memset(w, 0, sizeof *w);
    const int64_t D = v->D, L = v->L;
    w->cap = cap; w->D = D; w->L = L;
    w->k = v->topk ? v->k : 0;
    w->k_aux = v->topk ? k_aux : 0;
    int ok = (w->xin = lt_alloc((size_t)(cap * D))) && (w->pre = lt_alloc((size_t)(cap * L))) &&
             (v->topk || (w->z = lt_alloc((size_t)(cap * L)))) && (w->xhat = lt_alloc((size_t)(cap * D))) &&
             (w->dx = lt_alloc((size_t)(cap * D))) && (w->norms = lt_alloc((size_t)L)) &&
             (w->colsum = calloc((size_t)L, sizeof(double))) && (w->dead_list = calloc((size_t)L, sizeof(int32_t)));
    if (ok && v->topk) {
        size_t ne = (size_t)cap * (size_t)(w->k + w->k_aux);
        ok = (w->e = lt_alloc((size_t)(cap * D))) && (w->de = lt_alloc((size_t)(cap * D))) &&
             (w->G = lt_alloc((size_t)(L * D))) &&
             (w->idx = malloc((size_t)cap * (size_t)w->k * sizeof(int32_t))) &&
             (w->val = lt_alloc((size_t)cap * (size_t)w->k)) && (w->g = lt_alloc((size_t)cap * (size_t)w->k)) &&
             (w->start = calloc((size_t)L + 1, sizeof(int64_t))) &&
             (w->iota = malloc((size_t)L * sizeof(int32_t))) &&
             (w->heaps = malloc((size_t)topk_threads() * (size_t)(w->k > w->k_aux ? w->k : w->k_aux) * sizeof(topk_entry))) &&
             (w->entries = malloc((ne ? ne : 1) * sizeof(lat_entry)));
        if (ok && w->k_aux > 0)
            ok = (w->aux_idx = malloc((size_t)cap * (size_t)w->k_aux * sizeof(int32_t))) &&
                 (w->aux_val = lt_alloc((size_t)cap * (size_t)w->k_aux)) &&
                 (w->aux_g = lt_alloc((size_t)cap * (size_t)w->k_aux));
    }
    if (!ok) { work_free(w); return lt_fail("SAE training: out of memory for the workspace of %lld rows", (long long)cap); }
    if (w->iota)
        for (int64_t l = 0; l < L; l++) w->iota[l] = (int32_t)l;
    return LT_OK;
}

/* ------------------------------------------------------------ loss and gradients */

/* What one evaluation of the loss needs besides the SAE and the batch. */
typedef struct {
    double l1;          /* standard: lambda of the L1 term (after warm-up) */
    double variance;    /* TopK: normaliser of the MSE (mean ||x - mean||^2) */
    double aux_coeff;   /* TopK: weight of AuxK */
    const uint8_t *dead;   /* [L] or NULL: latents AuxK may use */
} loss_cfg;

/* The parts of the loss, summed over the batch. */
typedef struct {
    double loss, sq_err, aux, l0;
} loss_parts;

static void row_norms(const float *W, int64_t rows, int64_t cols, float *out) {
    OMP_PARALLEL_FOR(rows * cols)
    for (int64_t r = 0; r < rows; r++) out[r] = (float)sqrt(dot(W + r * cols, W + r * cols, cols));
}

/* dst[D, L] = src[L, D]^T, in tiles so both sides stay in cache. */
static void transpose(const float *src, int64_t L, int64_t D, float *dst) {
    const int64_t TB = 64;
    OMP_PARALLEL_FOR(L * D)
    for (int64_t d0 = 0; d0 < D; d0 += TB)
        for (int64_t l0 = 0; l0 < L; l0 += TB)
            for (int64_t d = d0; d < d0 + TB && d < D; d++)
                for (int64_t l = l0; l < l0 + TB && l < L; l++) dst[d * L + l] = src[l * D + d];
}

/* b_dec's gradient: sum over rows of dx, minus W_enc (sum of dpre) because
 * b_dec is subtracted from the input. */
static void b_dec_grad(const sae_view *v, const workspace *w, int64_t n, const float *gb_enc, float *gb_dec) {
    const int64_t D = v->D;
    for (int64_t d = 0; d < D; d++) gb_dec[d] = 0;
    for (int64_t i = 0; i < n; i++)
        for (int64_t d = 0; d < D; d++) gb_dec[d] += w->dx[i * D + d];
    cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)D, (int)v->L, -1.0f, v->W_enc, (int)v->L, gb_enc, 1, 1.0f,
                gb_dec, 1);
}

/* Standard SAE: loss = sum_i ||x_i - x_hat_i||^2 / n + l1 * sum_i sum_l z_il ||W_dec[l]|| / n. */
static void grads_standard(const sae_view *v, workspace *w, const float *x, int64_t n, const loss_cfg *c,
                           param_set *g, loss_parts *out) {
    const int64_t D = v->D, L = v->L;
    float *z = w->z, *dpre = w->pre;    /* pre is not needed after encode: reuse it */
    row_norms(v->W_dec, L, D, w->norms);
    for (int64_t i = 0; i < n; i++) memcpy(w->xhat + i * D, v->b_dec, (size_t)D * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)D, (int)L, 1.0f, z, (int)L, v->W_dec,
                (int)D, 1.0f, w->xhat, (int)D);
    double sq = 0;
    for (int64_t i = 0; i < n * D; i++) {
        double r = (double)w->xhat[i] - x[i];
        sq += r * r;
        w->dx[i] = (float)(2.0 * r / (double)n);
    }
    /* dZ = dx W_dec^T, then masked by ReLU's derivative plus the L1 term. */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)L, (int)D, 1.0f, w->dx, (int)D, v->W_dec,
                (int)D, 0.0f, dpre, (int)L);
    const float l1n = (float)(c->l1 / (double)n);
    double l1sum = 0, l0 = 0;
    for (int64_t l = 0; l < L; l++) w->colsum[l] = 0;
    for (int64_t i = 0; i < n; i++) {
        const float *zr = z + i * L;
        float *dr = dpre + i * L;
        for (int64_t l = 0; l < L; l++) {
            if (zr[l] > 0) {
                dr[l] += l1n * w->norms[l];
                l1sum += (double)zr[l] * w->norms[l];
                w->colsum[l] += zr[l];
                l0 += 1;
            } else {
                dr[l] = 0;
            }
        }
    }
    /* gW_dec = z^T dx + l1/n * (sum_i z_il) * W_dec[l] / ||W_dec[l]|| */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)L, (int)D, (int)n, 1.0f, z, (int)L, w->dx, (int)D,
                0.0f, g->W_dec, (int)D);
    OMP_PARALLEL_FOR(L * D)
    for (int64_t l = 0; l < L; l++) {
        if (w->norms[l] > 0 && w->colsum[l] > 0) {
            float f = (float)(c->l1 / (double)n * w->colsum[l] / w->norms[l]);
            for (int64_t d = 0; d < D; d++) g->W_dec[l * D + d] += f * v->W_dec[l * D + d];
        }
    }
    /* gW_enc = xin^T dpre */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)D, (int)L, (int)n, 1.0f, w->xin, (int)D, dpre,
                (int)L, 0.0f, g->W_enc, (int)L);
    for (int64_t l = 0; l < L; l++) g->b_enc[l] = 0;
    for (int64_t i = 0; i < n; i++)
        for (int64_t l = 0; l < L; l++) g->b_enc[l] += dpre[i * L + l];
    b_dec_grad(v, w, n, g->b_enc, g->b_dec);
    out->sq_err = sq;
    out->aux = 0;
    out->l0 = l0;
    out->loss = sq / (double)n + c->l1 * l1sum / (double)n;
}

/* TopK SAE: loss = sum_i ||x_i - x_hat_i||^2 / (n variance) + aux_coeff * AuxK,
 * AuxK = sum_i ||e_hat_i - e_i||^2 / sum_i ||e_i||^2 with e = x - x_hat
 * detached and e_hat the decoding (no bias) of the top k_aux dead latents. */
static int grads_topk(const sae_view *v, workspace *w, const float *x, int64_t n, const loss_cfg *c,
                      param_set *g, loss_parts *out) {
    const int64_t D = v->D, L = v->L;
    const int k = w->k;
    /* each row's top k positive pre-activations: the non-zero latents */
    double l0 = 0;
    OMP_PARALLEL_FOR(n * L)
    for (int64_t i = 0; i < n; i++)
        select_top(w->pre + i * L, w->iota, L, k, w->heaps + (size_t)topk_thread() * (size_t)k, w->idx + i * k,
                   w->val + i * k);
    for (int64_t i = 0; i < n * k; i++) l0 += w->idx[i] >= 0;
    /* x_hat, the residual and dx = 2 (x_hat - x) / (n variance) */
    const double scale = 2.0 / ((double)n * c->variance);
    double sq = 0;
    OMP_PARALLEL_FOR(n * D * k)
    for (int64_t i = 0; i < n; i++) {
        float *o = w->xhat + i * D;
        memcpy(o, v->b_dec, (size_t)D * sizeof(float));
        for (int j = 0; j < k; j++) {
            int32_t l = w->idx[i * k + j];
            if (l < 0) continue;
            cblas_saxpy((int)D, w->val[i * k + j], v->W_dec + (int64_t)l * D, 1, o, 1);
        }
    }
    for (int64_t i = 0; i < n * D; i++) {
        double r = (double)w->xhat[i] - x[i];
        sq += r * r;
        w->dx[i] = (float)(scale * r);
    }
    /* d loss / d pre of the active latents: dx_i . W_dec[l] */
    OMP_PARALLEL_FOR(n * D * k)
    for (int64_t i = 0; i < n; i++)
        for (int j = 0; j < k; j++) {
            int32_t l = w->idx[i * k + j];
            w->g[i * k + j] = l < 0 ? 0.0f : cblas_sdot((int)D, w->dx + i * D, 1, v->W_dec + (int64_t)l * D, 1);
        }

    /* AuxK over the dead latents */
    int64_t n_dead = 0;
    if (c->dead && c->aux_coeff > 0 && w->k_aux > 0)
        for (int64_t l = 0; l < L; l++)
            if (c->dead[l]) w->dead_list[n_dead++] = (int32_t)l;
    const int ka = n_dead > 0 ? (n_dead < w->k_aux ? (int)n_dead : w->k_aux) : 0;
    double aux = 0;
    if (ka > 0) {
        double se = 0, sa = 0;
        OMP_PARALLEL_FOR(n * D * (int64_t)ka)
        for (int64_t i = 0; i < n; i++) {
            int32_t *ir = w->aux_idx + i * w->k_aux;
            float *vr = w->aux_val + i * w->k_aux;
            select_top(w->pre + i * L, w->dead_list, n_dead, ka, w->heaps + (size_t)topk_thread() * (size_t)ka, ir, vr);
            for (int j = ka; j < w->k_aux; j++) { ir[j] = -1; vr[j] = 0; }
            float *e = w->e + i * D, *eh = w->de + i * D;
            for (int64_t d = 0; d < D; d++) { e[d] = x[i * D + d] - w->xhat[i * D + d]; eh[d] = 0; }
            for (int j = 0; j < ka; j++) {
                if (ir[j] >= 0) cblas_saxpy((int)D, vr[j], v->W_dec + (int64_t)ir[j] * D, 1, eh, 1);
            }
        }
        for (int64_t i = 0; i < n * D; i++) {
            double r = (double)w->de[i] - w->e[i];
            sa += r * r;
            se += (double)w->e[i] * w->e[i];
        }
        if (se > 0) {
            aux = sa / se;
            const double f = c->aux_coeff * 2.0 / se;
            for (int64_t i = 0; i < n * D; i++) w->de[i] = (float)(f * ((double)w->de[i] - w->e[i]));
            OMP_PARALLEL_FOR(n * D * w->k_aux)
            for (int64_t i = 0; i < n; i++)
                for (int j = 0; j < w->k_aux; j++) {
                    int32_t l = w->aux_idx[i * w->k_aux + j];
                    w->aux_g[i * w->k_aux + j] =
                        l < 0 ? 0.0f : cblas_sdot((int)D, w->de + i * D, 1, v->W_dec + (int64_t)l * D, 1);
                }
        } else {
            for (int64_t i = 0; i < n * w->k_aux; i++) w->aux_idx[i] = -1;
        }
    }
    const int kaux_used = ka > 0 ? w->k_aux : 0;

    /* Gather the entries by latent (counting sort, in row order). */
    int64_t *start = w->start;
    memset(start, 0, (size_t)(L + 1) * sizeof(int64_t));
    for (int64_t i = 0; i < n; i++) {
        for (int j = 0; j < k; j++) if (w->idx[i * k + j] >= 0) start[w->idx[i * k + j] + 1]++;
        for (int j = 0; j < kaux_used; j++) if (w->aux_idx[i * w->k_aux + j] >= 0) start[w->aux_idx[i * w->k_aux + j] + 1]++;
    }
    for (int64_t l = 0; l < L; l++) start[l + 1] += start[l];
    {
        /* start[l] doubles as the fill cursor, then is restored */
        for (int64_t i = 0; i < n; i++) {
            for (int j = 0; j < k; j++) {
                int32_t l = w->idx[i * k + j];
                if (l < 0) continue;
                lat_entry e = {(int32_t)i, 0, w->val[i * k + j], w->g[i * k + j]};
                w->entries[start[l]++] = e;
            }
            for (int j = 0; j < kaux_used; j++) {
                int32_t l = w->aux_idx[i * w->k_aux + j];
                if (l < 0) continue;
                lat_entry e = {(int32_t)i, 1, w->aux_val[i * w->k_aux + j], w->aux_g[i * w->k_aux + j]};
                w->entries[start[l]++] = e;
            }
        }
        for (int64_t l = L; l > 0; l--) start[l] = start[l - 1];
        start[0] = 0;
    }
    /* Per latent: W_dec's gradient row, W_enc's gradient column (into G,
     * transposed), b_enc's gradient. */
    OMP_PARALLEL_FOR_DYNAMIC(n * D * (k + kaux_used))
    for (int64_t l = 0; l < L; l++) {
        float *gd = g->W_dec + l * D, *ge = w->G + l * D;
        memset(gd, 0, (size_t)D * sizeof(float));
        memset(ge, 0, (size_t)D * sizeof(float));
        double gb = 0;
        for (int64_t q = start[l]; q < start[l + 1]; q++) {
            const lat_entry *e = &w->entries[q];
            const float *src = (e->aux ? w->de : w->dx) + (int64_t)e->row * D;
            const float *xr = w->xin + (int64_t)e->row * D;
            cblas_saxpy((int)D, e->val, src, 1, gd, 1);
            cblas_saxpy((int)D, e->g, xr, 1, ge, 1);
            gb += e->g;
        }
        g->b_enc[l] = (float)gb;
    }
    transpose(w->G, L, D, g->W_enc);
    b_dec_grad(v, w, n, g->b_enc, g->b_dec);
    out->sq_err = sq;
    out->aux = aux;
    out->l0 = l0;
    out->loss = sq / ((double)n * c->variance) + c->aux_coeff * aux;
    return LT_OK;
}

/* The loss and its gradient on n <= w->cap rows of x (already scaled). */
static int loss_and_grads(const sae_view *v, workspace *w, const float *x, int64_t n, const loss_cfg *c,
                          param_set *g, loss_parts *out) {
    const int64_t D = v->D;
    OMP_PARALLEL_FOR(n * D)
    for (int64_t i = 0; i < n; i++)
        for (int64_t d = 0; d < D; d++) w->xin[i * D + d] = x[i * D + d] - v->b_dec[d];
    /* pre = xin W_enc + b_enc; the activation is applied by each path (the
     * same as lt_sae_encode, written out so that the steps of a small SAE
     * stay single-threaded: see PAR_MIN_WORK) */
    const int64_t L = v->L;
    for (int64_t i = 0; i < n; i++) memcpy(w->pre + i * L, v->b_enc, (size_t)L * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)L, (int)D, 1.0f, w->xin, (int)D, v->W_enc,
                (int)L, 1.0f, w->pre, (int)L);
    if (v->topk) return grads_topk(v, w, x, n, c, g, out);
    OMP_PARALLEL_FOR(n * L)
    for (int64_t i = 0; i < n * L; i++) w->z[i] = w->pre[i] > 0 ? w->pre[i] : 0.0f;
    grads_standard(v, w, x, n, c, g, out);
    return LT_OK;
}

int lt_sae_loss_grad(lt_sae *sae, const float *x, int64_t n, const lt_sae_train_opts *opts, double variance,
                     const uint8_t *dead, double *loss, lt_sae *grad) {
    if (!sae || !x || !opts || !loss || !grad) return lt_fail("lt_sae_loss_grad: NULL argument");
    if (n < 1) return lt_fail("lt_sae_loss_grad: need at least one row");
    sae_view v, gv;
    if (view_of(sae, &v, "lt_sae_loss_grad")) return LT_ERR;
    if (view_of(grad, &gv, "lt_sae_loss_grad (grad)")) return LT_ERR;
    if (gv.D != v.D || gv.L != v.L) return lt_fail("lt_sae_loss_grad: grad has another shape than the SAE");
    if (v.topk && !(variance > 0)) return lt_fail("lt_sae_loss_grad: a TopK loss needs variance > 0");
    int k_aux = opts->k_aux > 0 ? opts->k_aux : (v.D / 2 < 256 ? (int)(v.D / 2 > 0 ? v.D / 2 : 1) : 256);
    if (k_aux > v.L) k_aux = (int)v.L;
    workspace w;
    if (work_alloc(&w, &v, n, k_aux)) return LT_ERR;
    loss_cfg c = {opts->l1_coeff, variance, opts->aux_coeff, dead};
    param_set g = {gv.W_enc, gv.b_enc, gv.W_dec, gv.b_dec};
    loss_parts parts;
    int rc = loss_and_grads(&v, &w, x, n, &c, &g, &parts);
    work_free(&w);
    if (rc == LT_OK) *loss = parts.loss;
    return rc;
}

/* ------------------------------------------------------------ the trainer */

struct lt_sae_trainer {
    sae_view v;
    lt_sae_train_opts o;
    workspace w;
    param_set grad, m1, m2;       /* gradient, Adam's first and second moments */
    float *batch;                 /* [batch, D]: the scaled rows of one step */
    int64_t *since_fired;         /* [L]: training rows since the latent last fired */
    uint8_t *dead;                /* [L] */
    double scale;                 /* input scaling (1 without normalisation) */
    double variance;              /* mean ||x - mean||^2 of the scaled init sample */
    int64_t steps, rows, resampled;
    uint64_t rng;
    int initialised, finished;
};

void lt_sae_train_default_opts(int arch, lt_sae_train_opts *o) {
    memset(o, 0, sizeof *o);
    o->batch = 4096;
    o->lr = arch == LT_SAE_TOPK ? 4e-4f : 2e-4f;
    o->beta1 = 0.9f;
    o->beta2 = 0.999f;
    o->eps = arch == LT_SAE_TOPK ? 6.25e-10f : 1e-8f;
    o->lr_warmup_steps = 0;
    o->lr_decay_frac = 0.2f;
    o->l1_coeff = 5.0f;
    o->l1_warmup_steps = 0;
    o->dead_rows = 10000000;
    o->k_aux = 0;
    o->aux_coeff = 1.0f / 32.0f;
    o->resample_every = arch == LT_SAE_TOPK ? 0 : 2500;
    o->resample_until = 0;
    o->normalize = 1;
    o->median_rows = 4096;
    o->seed = 0;
}

void lt_sae_trainer_free(lt_sae_trainer *t) {
    if (!t) return;
    work_free(&t->w);
    param_set_free(&t->grad);
    param_set_free(&t->m1);
    param_set_free(&t->m2);
    lt_free(t->batch);
    free(t->since_fired);
    free(t->dead);
    free(t);
}

int lt_sae_trainer_new(lt_sae *sae, const lt_sae_train_opts *opts, lt_sae_trainer **out) {
    if (!sae || !out) return lt_fail("lt_sae_trainer_new: NULL argument");
    *out = NULL;
    lt_sae_trainer *t = calloc(1, sizeof *t);
    if (!t) return lt_fail("lt_sae_trainer_new: out of memory");
    if (view_of(sae, &t->v, "lt_sae_trainer_new")) { free(t); return LT_ERR; }
    if (opts) t->o = *opts;
    else lt_sae_train_default_opts(lt_sae_architecture(sae), &t->o);
    lt_sae_train_opts *o = &t->o;
    if (o->batch < 1) {
        int b = o->batch;
        free(t);
        return lt_fail("lt_sae_trainer_new: batch must be >= 1, got %d", b);
    }
    if (!(o->lr > 0) || !(o->eps > 0) || o->beta1 < 0 || o->beta1 >= 1 || o->beta2 < 0 || o->beta2 >= 1) {
        free(t);
        return lt_fail("lt_sae_trainer_new: need lr > 0, eps > 0 and 0 <= beta1, beta2 < 1");
    }
    if (o->dead_rows < 1) o->dead_rows = 1;
    if (o->k_aux <= 0) o->k_aux = t->v.D / 2 < 256 ? (int)(t->v.D / 2 > 0 ? t->v.D / 2 : 1) : 256;
    if (o->k_aux > t->v.L) o->k_aux = (int)t->v.L;
    const int64_t D = t->v.D, L = t->v.L;
    if (work_alloc(&t->w, &t->v, o->batch, o->k_aux) || param_set_alloc(&t->grad, D, L) ||
        param_set_alloc(&t->m1, D, L) || param_set_alloc(&t->m2, D, L) ||
        !(t->batch = lt_alloc((size_t)o->batch * (size_t)D)) ||
        !(t->since_fired = calloc((size_t)L, sizeof(int64_t))) || !(t->dead = calloc((size_t)L, 1))) {
        lt_sae_trainer_free(t);
        return lt_fail("lt_sae_trainer_new: out of memory (d_in %lld, d_sae %lld, batch %d)", (long long)D,
                       (long long)L, o->batch);
    }
    t->scale = 1;
    t->rng = o->seed ^ 0x5AE7A1F00DULL;
    *out = t;
    return LT_OK;
}

double lt_sae_trainer_scale(const lt_sae_trainer *t) { return t ? t->scale : 0; }

/* b_dec = the geometric median of the rows (Weiszfeld's iterations from
 * the mean): a centre that outlying activations cannot drag far. */
static void geometric_median(const float *x, int64_t n, int64_t D, double scale, float *out) {
    double *y = calloc((size_t)D, sizeof(double)), *num = calloc((size_t)D, sizeof(double));
    if (!y || !num) { free(y); free(num); return; }   /* b_dec simply stays as it is */
    for (int64_t i = 0; i < n; i++)
        for (int64_t d = 0; d < D; d++) y[d] += scale * x[i * D + d] / (double)n;
    for (int it = 0; it < 100; it++) {
        double den = 0, move = 0, size = 0;
        memset(num, 0, (size_t)D * sizeof(double));
        for (int64_t i = 0; i < n; i++) {
            double ss = 0;
            for (int64_t d = 0; d < D; d++) { double r = scale * x[i * D + d] - y[d]; ss += r * r; }
            double wgt = 1.0 / fmax(sqrt(ss), 1e-8);   /* a row at the centre must not divide by zero */
            den += wgt;
            for (int64_t d = 0; d < D; d++) num[d] += wgt * scale * x[i * D + d];
        }
        for (int64_t d = 0; d < D; d++) {
            double ny = num[d] / den;
            move += (ny - y[d]) * (ny - y[d]);
            size += ny * ny;
            y[d] = ny;
        }
        if (move <= 1e-12 * (size + 1e-30)) break;
    }
    for (int64_t d = 0; d < D; d++) out[d] = (float)y[d];
    free(y);
    free(num);
}

int lt_sae_trainer_init(lt_sae_trainer *t, const float *x, int64_t n) {
    if (!t || !x) return lt_fail("lt_sae_trainer_init: NULL argument");
    if (n < 2) return lt_fail("lt_sae_trainer_init: need at least 2 sample rows, got %lld", (long long)n);
    if (t->finished) return lt_fail("lt_sae_trainer_init: the trainer has finished");
    const int64_t D = t->v.D;
    /* the sample: at most median_rows rows, evenly spaced */
    int64_t m = t->o.median_rows > 0 && t->o.median_rows < n ? t->o.median_rows : n;
    float *s = lt_alloc((size_t)(m * D));
    if (!s) return lt_fail_context("lt_sae_trainer_init");
    for (int64_t i = 0; i < m; i++) memcpy(s + i * D, x + (i * n / m) * D, (size_t)D * sizeof(float));
    double mean_norm = 0;
    for (int64_t i = 0; i < m; i++) mean_norm += sqrt(dot(s + i * D, s + i * D, D)) / (double)m;
    t->scale = t->o.normalize && mean_norm > 0 ? sqrt((double)D) / mean_norm : 1.0;
    /* the TopK loss's normaliser: mean squared distance to the mean */
    double *mu = calloc((size_t)D, sizeof(double));
    if (!mu) { lt_free(s); return lt_fail("lt_sae_trainer_init: out of memory"); }
    for (int64_t i = 0; i < m; i++)
        for (int64_t d = 0; d < D; d++) mu[d] += t->scale * s[i * D + d] / (double)m;
    double var = 0;
    for (int64_t i = 0; i < m; i++)
        for (int64_t d = 0; d < D; d++) { double r = t->scale * s[i * D + d] - mu[d]; var += r * r / (double)m; }
    free(mu);
    t->variance = var > 0 ? var : 1.0;
    if (lt_sae_init_random(t->v.sae, t->o.seed)) { lt_free(s); return LT_ERR; }
    geometric_median(s, m, D, t->scale, t->v.b_dec);
    lt_free(s);
    t->initialised = 1;
    return LT_OK;
}

/* The learning rate at the current step: linear warm-up, then constant,
 * then a linear decay to 0 over the last lr_decay_frac of total_steps. */
static double current_lr(const lt_sae_trainer *t) {
    const lt_sae_train_opts *o = &t->o;
    double lr = o->lr;
    if (o->lr_warmup_steps > 0 && t->steps < o->lr_warmup_steps)
        lr *= (double)(t->steps + 1) / (double)o->lr_warmup_steps;
    if (o->total_steps > 0 && o->lr_decay_frac > 0) {
        double decay_start = o->total_steps * (1.0 - o->lr_decay_frac);
        if (t->steps >= decay_start)
            lr *= fmax(0.0, (o->total_steps - (double)t->steps) / (o->total_steps - decay_start));
    }
    return lr;
}

static double current_l1(const lt_sae_trainer *t) {
    const lt_sae_train_opts *o = &t->o;
    if (o->l1_warmup_steps > 0 && t->steps < o->l1_warmup_steps)
        return o->l1_coeff * (double)(t->steps + 1) / (double)o->l1_warmup_steps;
    return o->l1_coeff;
}

/* One Adam update of n parameters (bias-corrected). */
static void adam(float *p, const float *g, float *m1, float *m2, int64_t n, const lt_sae_train_opts *o, double lr,
                 int64_t step) {
    const float b1 = o->beta1, b2 = o->beta2, eps = o->eps;
    const double c1 = 1.0 - pow(b1, (double)step), c2 = 1.0 - pow(b2, (double)step);
    const float a = (float)(lr / c1), inv_c2 = (float)(1.0 / c2);
    OMP_PARALLEL_FOR(n)
    for (int64_t i = 0; i < n; i++) {
        float gi = g[i];
        float m = m1[i] = b1 * m1[i] + (1 - b1) * gi;
        float v = m2[i] = b2 * m2[i] + (1 - b2) * gi * gi;
        p[i] -= a * m / (sqrtf(v * inv_c2) + eps);
    }
}

/* Keeps W_dec's rows at unit norm: the gradient's component along each
 * row is removed before the step (it would only change the norm), and the
 * rows are rescaled after it. */
static void remove_parallel_grad(const sae_view *v, float *gW_dec) {
    const int64_t D = v->D;
    OMP_PARALLEL_FOR(v->L * D)
    for (int64_t l = 0; l < v->L; l++) {
        const float *w = v->W_dec + l * D;
        float *g = gW_dec + l * D;
        double ww = dot(w, w, D);
        if (ww <= 0) continue;
        float f = (float)(dot(w, g, D) / ww);
        for (int64_t d = 0; d < D; d++) g[d] -= f * w[d];
    }
}

static void normalise_rows(const sae_view *v) {
    const int64_t D = v->D;
    OMP_PARALLEL_FOR(v->L * D)
    for (int64_t l = 0; l < v->L; l++) {
        float *w = v->W_dec + l * D;
        double nn = sqrt(dot(w, w, D));
        if (nn > 0) for (int64_t d = 0; d < D; d++) w[d] = (float)(w[d] / nn);
    }
}

/* Resamples the dead latents of a standard SAE from inputs the SAE
 * reconstructs badly: each gets the direction of the residual of a batch
 * row drawn with probability proportional to its squared error, as its
 * decoder row and (scaled to 0.2 x the mean norm of the live encoder
 * columns) as its encoder column; b_enc and the Adam moments restart at 0. */
static void resample_dead(lt_sae_trainer *t, const float *x, int64_t n) {
    const sae_view *v = &t->v;
    const int64_t D = v->D, L = v->L;
    int64_t n_dead = 0;
    for (int64_t l = 0; l < L; l++) n_dead += t->dead[l];
    if (n_dead == 0) return;
    double *cum = malloc((size_t)n * sizeof(double));
    if (!cum) return;   /* resampling is an improvement, not a requirement */
    double total = 0;
    for (int64_t i = 0; i < n; i++) {
        double ss = 0;
        for (int64_t d = 0; d < D; d++) { double r = (double)x[i * D + d] - t->w.xhat[i * D + d]; ss += r * r; }
        total += ss;
        cum[i] = total;
    }
    double enc_norm = 0;
    int64_t alive = 0;
    for (int64_t l = 0; l < L; l++) {
        if (t->dead[l]) continue;
        double ss = 0;
        for (int64_t d = 0; d < D; d++) ss += (double)v->W_enc[d * L + l] * v->W_enc[d * L + l];
        enc_norm += sqrt(ss);
        alive++;
    }
    enc_norm = alive ? enc_norm / (double)alive : 1.0;
    if (total > 0) {
        for (int64_t l = 0; l < L; l++) {
            if (!t->dead[l]) continue;
            double u = rng_unit(&t->rng) * total;
            int64_t lo = 0, hi = n - 1;
            while (lo < hi) { int64_t mid = (lo + hi) / 2; if (cum[mid] > u) hi = mid; else lo = mid + 1; }
            double ss = 0;
            for (int64_t d = 0; d < D; d++) { double r = (double)x[lo * D + d] - t->w.xhat[lo * D + d]; ss += r * r; }
            double inv = ss > 0 ? 1.0 / sqrt(ss) : 0;
            for (int64_t d = 0; d < D; d++) {
                float dir = (float)(((double)x[lo * D + d] - t->w.xhat[lo * D + d]) * inv);
                v->W_dec[l * D + d] = dir;
                v->W_enc[d * L + l] = (float)(0.2 * enc_norm) * dir;
                t->m1.W_dec[l * D + d] = t->m2.W_dec[l * D + d] = 0;
                t->m1.W_enc[d * L + l] = t->m2.W_enc[d * L + l] = 0;
            }
            v->b_enc[l] = 0;
            t->m1.b_enc[l] = t->m2.b_enc[l] = 0;
            t->since_fired[l] = 0;
            t->dead[l] = 0;
            t->resampled++;
        }
    }
    free(cum);
}

/* One Adam step on the n rows in t->batch; adds to the call's sums. */
static int train_step(lt_sae_trainer *t, int64_t n, double sums[6]) {
    const sae_view *v = &t->v;
    const int64_t D = v->D, L = v->L;
    loss_cfg c = {current_l1(t), t->variance, t->o.aux_coeff, v->topk ? t->dead : NULL};
    loss_parts parts;
    if (loss_and_grads(v, &t->w, t->batch, n, &c, &t->grad, &parts)) return LT_ERR;
    /* firing: a latent that fired anywhere in the batch is alive again */
    for (int64_t l = 0; l < L; l++) t->since_fired[l] += n;
    if (v->topk) {
        const int k = t->w.k;
        for (int64_t i = 0; i < n * k; i++)
            if (t->w.idx[i] >= 0) t->since_fired[t->w.idx[i]] = 0;
    } else {
        const float *z = t->w.z;
        OMP_PARALLEL_FOR(n * L)
        for (int64_t l0 = 0; l0 < L; l0 += 256) {
            int64_t l1 = l0 + 256 < L ? l0 + 256 : L;
            for (int64_t i = 0; i < n; i++)
                for (int64_t l = l0; l < l1; l++)
                    if (z[i * L + l] > 0) t->since_fired[l] = 0;
        }
    }
    /* the batch's variance around its own mean, for explained variance */
    double var = 0;
    for (int64_t d = 0; d < D; d++) {
        double s = 0, ss = 0;
        for (int64_t i = 0; i < n; i++) { double xv = t->batch[i * D + d]; s += xv; ss += xv * xv; }
        var += ss - s * s / (double)n;
    }
    remove_parallel_grad(v, t->grad.W_dec);
    t->steps++;
    double lr = current_lr(t);
    adam(v->W_enc, t->grad.W_enc, t->m1.W_enc, t->m2.W_enc, D * L, &t->o, lr, t->steps);
    adam(v->W_dec, t->grad.W_dec, t->m1.W_dec, t->m2.W_dec, D * L, &t->o, lr, t->steps);
    adam(v->b_enc, t->grad.b_enc, t->m1.b_enc, t->m2.b_enc, L, &t->o, lr, t->steps);
    adam(v->b_dec, t->grad.b_dec, t->m1.b_dec, t->m2.b_dec, D, &t->o, lr, t->steps);
    normalise_rows(v);
    t->rows += n;
    for (int64_t l = 0; l < L; l++) t->dead[l] = t->since_fired[l] >= t->o.dead_rows;
    if (!v->topk && t->o.resample_every > 0 && t->steps % t->o.resample_every == 0 &&
        (t->o.resample_until <= 0 || t->steps <= t->o.resample_until))
        resample_dead(t, t->batch, n);
    sums[0] += parts.loss;
    sums[1] += parts.sq_err;
    sums[2] += var;
    sums[3] += parts.l0;
    sums[4] += parts.aux;
    sums[5] += (double)n;
    return LT_OK;
}

int lt_sae_trainer_train(lt_sae_trainer *t, const float *x, int64_t n, lt_sae_train_stats *stats) {
    if (!t || (!x && n > 0)) return lt_fail("lt_sae_trainer_train: NULL argument");
    if (!t->initialised) return lt_fail("lt_sae_trainer_train: call lt_sae_trainer_init first");
    if (t->finished) return lt_fail("lt_sae_trainer_train: the trainer has finished");
    if (n < 0) return lt_fail("lt_sae_trainer_train: negative row count");
    const int64_t D = t->v.D, B = t->o.batch;
    /* Shuffle by a permutation (Fisher-Yates), so x stays unchanged. */
    int64_t *perm = malloc((size_t)(n > 0 ? n : 1) * sizeof(int64_t));
    if (!perm) return lt_fail("lt_sae_trainer_train: out of memory");
    for (int64_t i = 0; i < n; i++) perm[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)rng_below(&t->rng, (uint64_t)(i + 1));
        int64_t tmp = perm[i]; perm[i] = perm[j]; perm[j] = tmp;
    }
    double sums[6] = {0, 0, 0, 0, 0, 0};
    int64_t steps = 0;
    int rc = LT_OK;
    const float s = (float)t->scale;
    for (int64_t r0 = 0; r0 + B <= n && rc == LT_OK; r0 += B) {
        OMP_PARALLEL_FOR(B * D)
        for (int64_t i = 0; i < B; i++) {
            const float *src = x + perm[r0 + i] * D;
            float *dst = t->batch + i * D;
            for (int64_t d = 0; d < D; d++) dst[d] = s * src[d];
        }
        rc = train_step(t, B, sums);
        steps++;
    }
    free(perm);
    if (rc) return rc;
    if (stats) {
        memset(stats, 0, sizeof *stats);
        stats->steps = t->steps;
        stats->rows = t->rows;
        stats->batch_steps = steps;
        if (steps > 0) {
            stats->loss = sums[0] / (double)steps;
            stats->aux_loss = sums[4] / (double)steps;
            stats->mse = sums[1] / sums[5];
            stats->explained_variance = sums[2] > 0 ? 1.0 - sums[1] / sums[2] : 0;
            stats->l0 = sums[3] / sums[5];
        }
        int64_t dead = 0;
        for (int64_t l = 0; l < t->v.L; l++) dead += t->dead[l];
        stats->dead_fraction = (double)dead / (double)t->v.L;
        stats->lr = current_lr(t);
        stats->l1_coeff = current_l1(t);
        stats->resampled = t->resampled;
    }
    return LT_OK;
}

int lt_sae_trainer_finish(lt_sae_trainer *t) {
    if (!t) return lt_fail("lt_sae_trainer_finish: NULL trainer");
    if (t->finished) return LT_OK;
    t->finished = 1;
    if (t->scale != 1.0) return lt_sae_fold_norm_scaling_factor(t->v.sae, (float)t->scale);
    return LT_OK;
}

/* ------------------------------------------------------------ evaluation sums */

int lt_sae_eval_accumulate(const lt_sae *sae, const float *x, int64_t n, lt_sae_eval_acc *acc) {
    if (!sae || !acc || (!x && n > 0)) return lt_fail("lt_sae_eval_accumulate: NULL argument");
    if (!acc->sum_x || !acc->fires) return lt_fail("lt_sae_eval_accumulate: sum_x and fires must be allocated");
    const int64_t D = lt_sae_d_in(sae), L = lt_sae_d_sae(sae);
    const int64_t chunk = 512;
    float *z = lt_alloc((size_t)(chunk * L)), *xh = lt_alloc((size_t)(chunk * D));
    if (!z || !xh) { lt_free(z); lt_free(xh); return lt_fail_context("lt_sae_eval_accumulate"); }
    int rc = LT_OK;
    for (int64_t r0 = 0; r0 < n && rc == LT_OK; r0 += chunk) {
        int64_t m = n - r0 < chunk ? n - r0 : chunk;
        const float *xr = x + r0 * D;
        if ((rc = lt_sae_forward(sae, xr, m, z, xh))) break;
        for (int64_t i = 0; i < m * D; i++) {
            double r = (double)xr[i] - xh[i];
            acc->sq_err += r * r;
            acc->sq_x += (double)xr[i] * xr[i];
        }
        for (int64_t i = 0; i < m; i++)
            for (int64_t d = 0; d < D; d++) acc->sum_x[d] += xr[i * D + d];
        for (int64_t i = 0; i < m; i++) {
            const float *zr = z + i * L;
            for (int64_t l = 0; l < L; l++)
                if (zr[l] != 0) { acc->l0 += 1; acc->l1 += fabs(zr[l]); acc->fires[l]++; }
        }
        acc->rows += m;
    }
    lt_free(z);
    lt_free(xh);
    return rc;
}
