/*
 * miner.c: the dataset miner (docs/mining.md). One forward pass per batch of
 * windows; afterwards every node (MLP neuron, attention head, latent of an
 * attached SAE) of the chosen layers updates, in C and without copying
 * activations out of the run:
 *   - its top windows by maximum activation (a min-heap of top_n slots),
 *   - its activations on a uniform random sample of windows (one reservoir
 *     of window slots shared by all nodes, Algorithm R),
 *   - a reservoir per quantile bin of the window maxima (bin boundaries
 *     estimated from the first quantile_windows windows),
 *   - running moments of all its token activations (Pebay's pairwise
 *     update, one window at a time).
 *
 * Determinism: every random choice is a hash of (seed, node, counter), not
 * a draw from a stream, so the result depends only on the windows and their
 * order: not on the batch size used for bookkeeping, the thread count of
 * the per-node loop, or a stop and resume in between. Moments merge one
 * window at a time for the same reason.
 *
 * Notation: B windows of T tokens per feed; a group is the nodes of one kind
 * in one layer (n nodes); vals[n, B*T] holds one group's activations with
 * the node as the slow index.
 */
#include "model_internal.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { NBINS = 4 };
static const double bin_q[NBINS + 1] = {0.0, 0.5, 0.9, 0.99, 0.999};

#define STATE_MAGIC "LTMS"
enum { STATE_VERSION = 1 };

/* Window records of one group: cap slots per node, each a whole window. */
typedef struct slots {
    int cap;
    int64_t *win;       /* [n, cap] window ids */
    float *max;         /* [n, cap] maximum activation of the window */
    int32_t *tok;       /* [n, cap, T] */
    float *act;         /* [n, cap, T] */
    int32_t *ext;       /* [n, cap, T] or NULL (groups without extra) */
    int *filled;        /* [n] slots in use */
} slots;

/* Running moments (sums of powers of deviations from the mean). */
typedef struct moments {
    uint64_t n;
    double mean, m2, m3, m4;
} moments;

typedef struct group {
    int kind;           /* LT_MINE_MLP, LT_MINE_ATTN or LT_MINE_SAE */
    int layer;
    int n;              /* nodes */
    int first;          /* global index of the group's first node */
    int point;          /* mlp: hook_post; attn: hook_pattern; sae: hook_sae_acts_post */
    int point_v;        /* attn: hook_v */
    float *gram;        /* attn: [H, D, D], W_O[h] W_O[h]^T */
    char hook[96];      /* sae: the attached point's name, for the state */
    uint64_t sae_hash;  /* sae: fingerprint of the SAE (sae_fingerprint) */
    moments *mom;       /* [n] */
    slots top;          /* heap order in heap */
    int *heap;          /* [n, top_n] slot indices, a min-heap */
    slots bins[NBINS];
    uint64_t *bin_seen; /* [n, NBINS] windows that fell in each bin */
    double *bounds;     /* [n, NBINS + 1] activation at the bin quantiles */
    float *rand_act;    /* [n, n_random, T] */
    int32_t *rand_ext;  /* [n, n_random, T] or NULL */
    float *warm;        /* [n, quantile_windows] window maxima, until fixed */
} group;

struct lt_miner {
    lt_model *m;
    lt_run *run;
    lt_miner_opts o;
    int T;
    group *groups;
    int n_groups, n_nodes, max_group;
    int max_extra;      /* nodes of the largest group with an extra array (heads) */
    int64_t consumed;   /* windows fed so far */
    int64_t *rand_win;  /* [n_random] shared reservoir: window ids */
    int32_t *rand_tok;  /* [n_random, T] */
    float *vals;        /* scratch [max_group, B*T] */
    int32_t *xvals;     /* scratch [max_group, B*T] (attn extra) */
    size_t vals_cap;
    int *slot_of;       /* scratch [B]: random slot taken by window b or -1 */
    float *nrm;         /* scratch [B, H, T] attn write norms */
    size_t nrm_cap;
};

/* ----------------------------------------------------------- helpers */

/* splitmix64's finaliser: a bijective 64-bit mix. */
static uint64_t mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

/* A uniform integer in [0, n) determined by (seed, stream, a, b). The modulo
 * bias is below 2^-40 for any reservoir this miner keeps. */
static uint64_t pick(uint64_t seed, uint64_t stream, uint64_t a, uint64_t b, uint64_t n) {
    uint64_t h = mix64(seed + 0x9e3779b97f4a7c15ULL * (stream + 1));
    h = mix64(h ^ a);
    h = mix64(h ^ (b * 0xd6e8feb86659fd93ULL));
    return h % n;
}

static const char *kind_name(int kind) {
    return kind == LT_MINE_ATTN ? "attn_head" : kind == LT_MINE_SAE ? "sae_latent" : "mlp_neuron";
}

static int slots_alloc(slots *s, int n, int cap, int T, int with_ext) {
    size_t ns = (size_t)n * (size_t)cap, nt = ns * (size_t)T;
    s->cap = cap;
    s->win = calloc(ns ? ns : 1, sizeof *s->win);
    s->max = calloc(ns ? ns : 1, sizeof *s->max);
    s->tok = calloc(nt ? nt : 1, sizeof *s->tok);
    s->act = calloc(nt ? nt : 1, sizeof *s->act);
    s->ext = with_ext ? calloc(nt ? nt : 1, sizeof *s->ext) : NULL;
    s->filled = calloc((size_t)n, sizeof *s->filled);
    if (!s->win || !s->max || !s->tok || !s->act || (with_ext && !s->ext) || !s->filled) return LT_ERR;
    return LT_OK;
}

static void slots_free(slots *s) {
    free(s->win);
    free(s->max);
    free(s->tok);
    free(s->act);
    free(s->ext);
    free(s->filled);
}

/* Copies one window into slot k of node i. */
static void slot_put(slots *s, int T, int i, int k, int64_t win, float mx, const int32_t *tok,
                     const float *act, const int32_t *ext) {
    size_t at = (size_t)i * s->cap + (size_t)k;
    s->win[at] = win;
    s->max[at] = mx;
    memcpy(s->tok + at * T, tok, (size_t)T * sizeof *tok);
    memcpy(s->act + at * T, act, (size_t)T * sizeof *act);
    if (s->ext) memcpy(s->ext + at * T, ext, (size_t)T * sizeof *ext);
}

/* The maximum of a window; NaN never wins, so an all-NaN window is -inf. */
static float window_max(const float *x, int T) {
    float m = -INFINITY;
    for (int t = 0; t < T; t++)
        if (x[t] > m) m = x[t];
    return m;
}

/* ------------------------------------------------------------ moments */

/* Merges the moments of one window's T values into *a (Pebay 2008, the
 * pairwise formulas for sums of central powers): stable for any count. */
static void moments_add(moments *a, const float *x, int T) {
    double mb = 0;
    for (int t = 0; t < T; t++) mb += x[t];
    mb /= T;
    double m2 = 0, m3 = 0, m4 = 0;
    for (int t = 0; t < T; t++) {
        double d = x[t] - mb, d2 = d * d;
        m2 += d2;
        m3 += d2 * d;
        m4 += d2 * d2;
    }
    if (a->n == 0) {
        *a = (moments){(uint64_t)T, mb, m2, m3, m4};
        return;
    }
    double na = (double)a->n, nb = T, n = na + nb;
    double d = mb - a->mean, d2 = d * d;
    double m4n = a->m4 + m4 + d2 * d2 * na * nb * (na * na - na * nb + nb * nb) / (n * n * n)
                 + 6 * d2 * (na * na * m2 + nb * nb * a->m2) / (n * n) + 4 * d * (na * m3 - nb * a->m3) / n;
    double m3n = a->m3 + m3 + d2 * d * na * nb * (na - nb) / (n * n) + 3 * d * (na * m2 - nb * a->m2) / n;
    double m2n = a->m2 + m2 + d2 * na * nb / n;
    a->mean += d * nb / n;
    a->m2 = m2n;
    a->m3 = m3n;
    a->m4 = m4n;
    a->n += (uint64_t)T;
}

/* Population variance, skewness and excess kurtosis; NaN where undefined. */
static void moments_stats(const moments *a, lt_record_set *rs) {
    double n = (double)a->n;
    rs->count = a->n;
    rs->mean = a->n ? a->mean : NAN;
    rs->variance = a->n ? a->m2 / n : NAN;
    int spread = a->n && a->m2 > 0;
    rs->skewness = spread ? sqrt(n) * a->m3 / pow(a->m2, 1.5) : NAN;
    rs->kurtosis = spread ? n * a->m4 / (a->m2 * a->m2) - 3.0 : NAN;
}

/* --------------------------------------------------------------- top heap */

/* The order that ranks windows: a larger maximum first, then the earlier
 * window. It is total (window ids are distinct), so the top_n set does not
 * depend on how the heap happens to be laid out. */
static int worse(const slots *s, int i, int a, int b) {
    float ma = s->max[(size_t)i * s->cap + a], mb = s->max[(size_t)i * s->cap + b];
    if (ma != mb) return ma < mb;
    return s->win[(size_t)i * s->cap + a] > s->win[(size_t)i * s->cap + b];
}

static void heap_down(const slots *s, int *h, int n, int i, int k) {
    for (;;) {
        int l = 2 * k + 1, r = l + 1, m = k;
        if (l < n && worse(s, i, h[l], h[m])) m = l;
        if (r < n && worse(s, i, h[r], h[m])) m = r;
        if (m == k) return;
        int t = h[k]; h[k] = h[m]; h[m] = t;
        k = m;
    }
}

static void heap_up(const slots *s, int *h, int i, int k) {
    while (k > 0) {
        int p = (k - 1) / 2;
        if (!worse(s, i, h[k], h[p])) return;
        int t = h[k]; h[k] = h[p]; h[p] = t;
        k = p;
    }
}

static void top_offer(group *g, int T, int i, int64_t win, float mx, const int32_t *tok, const float *x,
                      const int32_t *e) {
    slots *s = &g->top;
    int *h = g->heap + (size_t)i * s->cap;
    int n = s->filled[i];
    if (n < s->cap) {
        slot_put(s, T, i, n, win, mx, tok, x, e);
        h[n] = n;
        s->filled[i] = n + 1;
        heap_up(s, h, i, n);
        return;
    }
    size_t root = (size_t)i * s->cap + h[0];
    if (mx < s->max[root] || (mx == s->max[root] && win >= s->win[root])) return;
    slot_put(s, T, i, h[0], win, mx, tok, x, e);
    heap_down(s, h, n, i, 0);
}

/* ------------------------------------------------------- quantile bins */

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* The q-quantile of n sorted values, interpolating linearly between order
 * statistics at position q (n - 1) (numpy's default). */
static double quantile(const float *v, int n, double q) {
    if (n <= 0) return NAN;
    double p = q * (n - 1);
    int lo = (int)floor(p);
    if (lo >= n - 1) return v[n - 1];
    return v[lo] + (p - lo) * ((double)v[lo + 1] - v[lo]);
}

/* Bin boundaries of node i from its first n window maxima. */
static int estimate_bounds(const float *warm, int n, double *bounds) {
    float *v = malloc((size_t)(n > 0 ? n : 1) * sizeof *v);
    if (!v) return LT_ERR;
    if (n > 0) memcpy(v, warm, (size_t)n * sizeof *v);
    qsort(v, (size_t)n, sizeof *v, cmp_float);
    for (int b = 0; b <= NBINS; b++) bounds[b] = quantile(v, n, bin_q[b]);
    free(v);
    return LT_OK;
}

/* The bin of a window maximum: [-inf, q.5), [q.5, q.9), [q.9, q.99),
 * [q.99, q.999]; -1 above q.999 (those windows are the top records'). */
static int find_bin(const double *bounds, float mx) {
    for (int b = 0; b < NBINS - 1; b++)
        if (mx < bounds[b + 1]) return b;
    return mx <= bounds[NBINS] ? NBINS - 1 : -1;
}

/* ------------------------------------------------------------ lifecycle */

void lt_miner_default_opts(lt_miner_opts *o) {
    memset(o, 0, sizeof *o);
    o->window = 64;
    o->top_n = 20;
    o->n_random = 20;
    o->n_per_bin = 5;
    o->quantile_windows = 1024;
    o->kinds = LT_MINE_MLP;
    o->layer_lo = 0;
    o->layer_hi = -1;
    o->seed = 0;
}

static void group_free(group *g) {
    free(g->gram);
    free(g->mom);
    slots_free(&g->top);
    free(g->heap);
    for (int b = 0; b < NBINS; b++) slots_free(&g->bins[b]);
    free(g->bin_seen);
    free(g->bounds);
    free(g->rand_act);
    free(g->rand_ext);
    free(g->warm);
}

void lt_miner_free(lt_miner *mn) {
    if (!mn) return;
    for (int i = 0; i < mn->n_groups; i++) group_free(&mn->groups[i]);
    free(mn->groups);
    lt_run_free(mn->run);
    free(mn->rand_win);
    free(mn->rand_tok);
    free(mn->vals);
    free(mn->xvals);
    free(mn->slot_of);
    free(mn->nrm);
    free(mn);
}

/* W_O[h] W_O[h]^T for each head of a layer, so that the norm of a value
 * vector's write, |v W_O[h]|, is sqrt(v^T G_h v): D^2 work instead of D*C. */
static int build_gram(lt_miner *mn, group *g) {
    const lt_config *c = lt_model_config(mn->m);
    int H = c->n_head, D = c->d_head, C = c->n_embd;
    char name[64];
    snprintf(name, sizeof name, "h.%d.attn.c_proj.weight", g->layer);
    lt_view wo;
    if (lt_model_param(mn->m, name, &wo)) return LT_ERR;
    g->gram = malloc(sizeof(float) * (size_t)H * D * D);
    if (!g->gram) return lt_fail("out of memory");
    for (int h = 0; h < H; h++)
        for (int i = 0; i < D; i++)
            for (int j = 0; j < D; j++) {
                const float *a = wo.data + (size_t)(h * D + i) * C, *b = wo.data + (size_t)(h * D + j) * C;
                double s = 0;
                for (int k = 0; k < C; k++) s += (double)a[k] * b[k];
                g->gram[((size_t)h * D + i) * D + j] = (float)s;
            }
    return LT_OK;
}

static int group_init(lt_miner *mn, group *g) {
    const lt_miner_opts *o = &mn->o;
    int n = g->n, T = mn->T, ext = g->kind == LT_MINE_ATTN;
    char name[96];
    if (g->kind != LT_MINE_SAE) {   /* an SAE group's point is set by its maker */
        if (g->kind == LT_MINE_MLP) snprintf(name, sizeof name, "blocks.%d.mlp.hook_post", g->layer);
        else snprintf(name, sizeof name, "blocks.%d.attn.hook_pattern", g->layer);
        if ((g->point = lt_hook_find(mn->m, name)) < 0) return LT_ERR;
    }
    if (ext) {
        snprintf(name, sizeof name, "blocks.%d.attn.hook_v", g->layer);
        if ((g->point_v = lt_hook_find(mn->m, name)) < 0) return LT_ERR;
        if (build_gram(mn, g)) return LT_ERR;
    }
    size_t nrt = (size_t)n * o->n_random * T;
    g->mom = calloc((size_t)n, sizeof *g->mom);
    g->heap = calloc((size_t)n * o->top_n + 1, sizeof *g->heap);
    g->bin_seen = calloc((size_t)n * NBINS, sizeof *g->bin_seen);
    g->bounds = malloc((size_t)n * (NBINS + 1) * sizeof *g->bounds);
    g->rand_act = calloc(nrt + 1, sizeof *g->rand_act);
    g->rand_ext = ext ? calloc(nrt + 1, sizeof *g->rand_ext) : NULL;
    g->warm = calloc((size_t)n * o->quantile_windows, sizeof *g->warm);
    if (!g->mom || !g->heap || !g->bin_seen || !g->bounds || !g->rand_act || (ext && !g->rand_ext) || !g->warm ||
        slots_alloc(&g->top, n, o->top_n, T, ext))
        return lt_fail("out of memory for the miner's records (%d nodes)", n);
    for (int b = 0; b < NBINS; b++)
        if (slots_alloc(&g->bins[b], n, o->n_per_bin, T, ext))
            return lt_fail("out of memory for the miner's records (%d nodes)", n);
    for (size_t i = 0; i < (size_t)n * (NBINS + 1); i++) g->bounds[i] = NAN;
    return LT_OK;
}

/* The SAE latents to mine: for each layer of the range, the attached SAE
 * whose hook point is in it, or -1. SAEs attached outside the range are not
 * mined; two in one layer are refused, since their latents would share the
 * store keys (sae_latent, layer, index). */
static int find_saes(const lt_model *m, const lt_miner_opts *o, int *sae_of, int *n_sae) {
    int nl = o->layer_hi - o->layer_lo + 1;
    for (int l = 0; l < nl; l++) sae_of[l] = -1;
    *n_sae = 0;
    if (!(o->kinds & LT_MINE_SAE)) return LT_OK;
    for (int a = 0; a < m->n_saes; a++) {
        int l = lt_hook_layer(m, m->saes[a].point);
        if (l < o->layer_lo || l > o->layer_hi) continue;
        int *at = &sae_of[l - o->layer_lo];
        if (*at >= 0)
            return lt_fail("miner: two attached SAEs are in layer %d (at %s and %s), and their latents would share "
                           "the keys sae_latent/%d/INDEX; mine them in separate runs under different model names",
                           l, lt_hook_name(m, m->saes[*at].point), lt_hook_name(m, m->saes[a].point), l);
        *at = a;
        ++*n_sae;
    }
    if (!m->n_saes)
        return lt_fail("miner: SAE latents asked for (LT_MINE_SAE), but no SAE is attached to the model "
                       "(lt_model_attach_sae)");
    if (!*n_sae)
        return lt_fail("miner: SAE latents asked for (LT_MINE_SAE), but none of the %d SAEs attached to the model "
                       "has its hook point in layers %d..%d", m->n_saes, o->layer_lo, o->layer_hi);
    return LT_OK;
}

/* Folds n bytes into the hash h, eight at a time. */
static uint64_t hash_bytes(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, b + i, 8);
        h = mix64(h ^ w);
    }
    uint64_t w = 0;
    memcpy(&w, b + i, n - i);
    return mix64(h ^ w ^ ((uint64_t)n << 56));
}

/* A fingerprint of an attached SAE: its configuration, whether it keeps its
 * error term (that changes every later activation) and the bits of its
 * weights. The miner state records it, so that a resume never continues the
 * records of one SAE with the latents of another of the same shape. */
static int sae_fingerprint(const lt_sae_attachment *at, uint64_t *out) {
    lt_sae *sae = at->sae;
    int64_t cfg[6] = {at->d_in, at->d_sae, lt_sae_architecture(sae), lt_sae_k(sae),
                      lt_sae_apply_b_dec_to_input(sae), at->use_error};
    const char *norm = lt_sae_normalize_activations(sae);
    uint64_t h = hash_bytes(0x6c616e7465726e31ULL, cfg, sizeof cfg);
    h = hash_bytes(h, norm, strlen(norm));
    static const char *params[5] = {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"};
    int n_params = lt_sae_architecture(sae) == LT_SAE_JUMPRELU ? 5 : 4;
    for (int i = 0; i < n_params; i++) {
        lt_view v;
        if (lt_sae_param(sae, params[i], &v)) return LT_ERR;
        h = hash_bytes(h, v.data, (size_t)lt_view_numel(&v) * sizeof(float));
    }
    *out = h;
    return LT_OK;
}

/* lt_miner_new after the options are checked: the groups, layer by layer. */
static int miner_build(lt_model *m, const lt_miner_opts *opts, const int *sae_of, int n_sae, lt_miner **out) {
    const lt_miner_opts o = *opts;
    const lt_config *c = lt_model_config(m);
    int nl = o.layer_hi - o.layer_lo + 1;
    lt_miner *mn = calloc(1, sizeof *mn);
    if (!mn) return lt_fail("out of memory");
    mn->m = m;
    mn->o = o;
    mn->T = o.window;
    if (lt_run_new(m, &mn->run)) { free(mn); return LT_ERR; }
    /* nothing after the last mined layer is read: no later blocks, no logits */
    lt_run_stop_at_layer(mn->run, o.layer_hi + 1);
    int n_groups = ((o.kinds & LT_MINE_MLP) ? nl : 0) + ((o.kinds & LT_MINE_ATTN) ? nl : 0) + n_sae;
    mn->groups = calloc((size_t)n_groups, sizeof *mn->groups);
    mn->rand_win = calloc((size_t)o.n_random + 1, sizeof *mn->rand_win);
    mn->rand_tok = calloc((size_t)o.n_random * o.window + 1, sizeof *mn->rand_tok);
    if (!mn->groups || !mn->rand_win || !mn->rand_tok) { lt_miner_free(mn); return lt_fail("out of memory"); }
    /* Node order: layer by layer, in each the MLP neurons, then the heads,
     * then the SAE latents; it fixes the global node numbers that seed the
     * per-node random choices. */
    static const int kind_order[3] = {LT_MINE_MLP, LT_MINE_ATTN, LT_MINE_SAE};
    for (int l = o.layer_lo; l <= o.layer_hi; l++) {
        for (int k = 0; k < 3; k++) {
            int kind = kind_order[k], a = kind == LT_MINE_SAE ? sae_of[l - o.layer_lo] : -1;
            if (!(o.kinds & (unsigned)kind) || (kind == LT_MINE_SAE && a < 0)) continue;
            group *g = &mn->groups[mn->n_groups++];
            g->kind = kind;
            g->layer = l;
            g->n = kind == LT_MINE_MLP ? c->d_mlp : kind == LT_MINE_ATTN ? c->n_head : (int)m->saes[a].d_sae;
            if (kind == LT_MINE_SAE) {
                g->point = m->n_static_hooks + 4 * a + (LT_HOOK_SAE_ACTS_POST - LT_HOOK_SAE_ACTS_PRE);
                snprintf(g->hook, sizeof g->hook, "%s", lt_hook_name(m, m->saes[a].point));
                if (sae_fingerprint(&m->saes[a], &g->sae_hash)) { lt_miner_free(mn); return LT_ERR; }
            }
            if (kind == LT_MINE_ATTN) mn->max_extra = g->n;
            g->first = mn->n_nodes;
            mn->n_nodes += g->n;
            if (g->n > mn->max_group) mn->max_group = g->n;
            if (group_init(mn, g)) { lt_miner_free(mn); return LT_ERR; }
        }
    }
    *out = mn;
    return LT_OK;
}

int lt_miner_new(lt_model *m, const lt_miner_opts *opts, lt_miner **out) {
    if (!out) return lt_fail("lt_miner_new: out is NULL");
    *out = NULL;
    if (!m) return lt_fail("lt_miner_new: model is NULL");
    lt_miner_opts o;
    if (opts) o = *opts;
    else lt_miner_default_opts(&o);
    const lt_config *c = lt_model_config(m);
    if (o.window < 1 || o.window > c->n_ctx)
        return lt_fail("miner: window %d outside 1..%d (the model's context)", o.window, c->n_ctx);
    if (o.top_n < 1 || o.top_n > 100000) return lt_fail("miner: top_n %d outside 1..100000", o.top_n);
    if (o.n_random < 0 || o.n_random > 100000) return lt_fail("miner: n_random %d outside 0..100000", o.n_random);
    if (o.n_per_bin < 0 || o.n_per_bin > 100000) return lt_fail("miner: n_per_bin %d outside 0..100000", o.n_per_bin);
    if (o.quantile_windows < 1) return lt_fail("miner: quantile_windows must be at least 1");
    if (!o.kinds || (o.kinds & ~(unsigned)(LT_MINE_MLP | LT_MINE_ATTN | LT_MINE_SAE)))
        return lt_fail("miner: kinds 0x%x: choose from LT_MINE_MLP, LT_MINE_ATTN and LT_MINE_SAE", o.kinds);
    if (o.layer_hi < 0) o.layer_hi = c->n_layer - 1;
    if (o.layer_lo < 0 || o.layer_lo > o.layer_hi || o.layer_hi >= c->n_layer)
        return lt_fail("miner: layers %d..%d outside the model's 0..%d", o.layer_lo, o.layer_hi, c->n_layer - 1);
    int nl = o.layer_hi - o.layer_lo + 1, n_sae = 0;
    int *sae_of = malloc((size_t)nl * sizeof *sae_of);   /* the attachment mined in each layer, or -1 */
    if (!sae_of) return lt_fail("out of memory");
    if (find_saes(m, &o, sae_of, &n_sae)) { free(sae_of); return LT_ERR; }
    int rc = miner_build(m, &o, sae_of, n_sae, out);
    free(sae_of);
    return rc;
}

/* The window maxima that estimate the bin boundaries are not needed once
 * the boundaries are fixed (nodes x quantile_windows floats). */
static void drop_warm(lt_miner *mn) {
    if (mn->consumed < mn->o.quantile_windows) return;
    for (int gi = 0; gi < mn->n_groups; gi++) {
        free(mn->groups[gi].warm);
        mn->groups[gi].warm = NULL;
    }
}

int64_t lt_miner_windows(const lt_miner *mn) { return mn ? mn->consumed : 0; }
int lt_miner_node_count(const lt_miner *mn) { return mn ? mn->n_nodes : 0; }

/* ------------------------------------------------------------------ feed */

/* mlp and sae: vals[n, B*T] = the point's activation [B*T, n] (hook_post,
 * hook_sae_acts_post) transposed, in tiles so that both sides stay in
 * cache. */
static int extract_rows(lt_miner *mn, group *g, int B) {
    lt_view v;
    if (lt_run_activation(mn->run, g->point, &v)) return LT_ERR;
    /* An SAE detached or replaced since the miner was made would change the
     * width under the same point. */
    if (v.shape[v.ndim - 1] != g->n)
        return lt_fail("%s has %lld features, the miner was made for %d (was an SAE detached or replaced?)",
                       lt_hook_name(mn->m, g->point), (long long)v.shape[v.ndim - 1], g->n);
    size_t rows = (size_t)B * mn->T, M = (size_t)g->n;
    enum { TILE = 32 };
    /* threads take column tiles: each writes its own rows of vals */
    #pragma omp parallel for schedule(static)
    for (size_t c0 = 0; c0 < M; c0 += TILE)
        for (size_t r0 = 0; r0 < rows; r0 += TILE) {
            size_t r1 = r0 + TILE < rows ? r0 + TILE : rows, c1 = c0 + TILE < M ? c0 + TILE : M;
            for (size_t r = r0; r < r1; r++)
                for (size_t c = c0; c < c1; c++) mn->vals[c * rows + r] = v.data[r * M + c];
        }
    return LT_OK;
}

/* attn: for head h and query q of window b, vals[h, b*T + q] = sum over keys
 * k of pattern[b, h, q, k] * |v[b, k, h] W_O[h]| (the attention-weighted
 * write norm) and xvals the key with the largest term (the first on ties). */
static int extract_attn(lt_miner *mn, group *g, int B) {
    const lt_config *c = lt_model_config(mn->m);
    int T = mn->T, H = c->n_head, D = c->d_head;
    lt_view pat, val;
    if (lt_run_activation(mn->run, g->point, &pat) || lt_run_activation(mn->run, g->point_v, &val)) return LT_ERR;
    size_t BT = (size_t)B * T, need = BT * H + BT * D;
    if (need > mn->nrm_cap) {
        free(mn->nrm);
        if (!(mn->nrm = malloc(need * sizeof *mn->nrm))) { mn->nrm_cap = 0; return lt_fail("out of memory"); }
        mn->nrm_cap = need;
    }
    /* nrm[b, h, k] = sqrt(v^T G_h v) with v = hook_v[b, k, h, :]: per head
     * one sgemm Y [BT, D] = V_h [BT, D] (row stride H*D) @ G_h, then the
     * row dots of Y with V_h. */
    float *Y = mn->nrm + BT * H;
    for (int h = 0; h < H; h++) {
        const float *vh = val.data + (size_t)h * D;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)BT, D, D, 1.0f, vh, H * D,
                    g->gram + (size_t)h * D * D, D, 0.0f, Y, D);
        #pragma omp parallel for schedule(static)
        for (int bk = 0; bk < (int)BT; bk++) {
            const float *x = vh + (size_t)bk * H * D, *y = Y + (size_t)bk * D;
            float s = 0;
            for (int i = 0; i < D; i++) s += x[i] * y[i];
            int b = bk / T, k = bk % T;
            mn->nrm[((size_t)b * H + h) * T + k] = sqrtf(s > 0 ? s : 0);
        }
    }
    size_t rows = BT;
    #pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * H; bh++) {
        int b = bh / H, h = bh % H;
        const float *nr = mn->nrm + ((size_t)b * H + h) * T;
        for (int q = 0; q < T; q++) {
            const float *p = pat.data + (((size_t)b * H + h) * T + q) * T;
            double s = 0;
            float best = -INFINITY;
            int arg = 0;
            for (int k = 0; k <= q; k++) {
                float term = p[k] * nr[k];
                s += term;
                if (term > best) { best = term; arg = k; }
            }
            mn->vals[(size_t)h * rows + (size_t)b * T + q] = (float)s;
            mn->xvals[(size_t)h * rows + (size_t)b * T + q] = arg;
        }
    }
    return LT_OK;
}

/* Updates node i of group g with the B windows now in vals. */
static void update_node(lt_miner *mn, group *g, int i, const int32_t *ids, int B, int64_t first_window) {
    const lt_miner_opts *o = &mn->o;
    int T = mn->T, K = o->quantile_windows;
    size_t rows = (size_t)B * T;
    uint64_t node = (uint64_t)(g->first + i);
    for (int b = 0; b < B; b++) {
        const float *x = mn->vals + (size_t)i * rows + (size_t)b * T;
        const int32_t *e = g->kind == LT_MINE_ATTN ? mn->xvals + (size_t)i * rows + (size_t)b * T : NULL;
        const int32_t *tok = ids + (size_t)b * T;
        int64_t w = mn->consumed + b, win = first_window + b;
        float mx = window_max(x, T);
        moments_add(&g->mom[i], x, T);
        top_offer(g, T, i, win, mx, tok, x, e);
        double *bounds = g->bounds + (size_t)i * (NBINS + 1);
        if (w < K) {
            float *warm = g->warm + (size_t)i * K;
            warm[w] = mx;
            if (w == K - 1) estimate_bounds(warm, K, bounds);
        } else if (o->n_per_bin > 0) {
            int bin = find_bin(bounds, mx);
            if (bin >= 0) {
                slots *s = &g->bins[bin];
                uint64_t seen = g->bin_seen[(size_t)i * NBINS + bin]++;
                int k = -1;
                if (seen < (uint64_t)s->cap) k = (int)seen;
                else {
                    uint64_t j = pick(o->seed, 1 + (uint64_t)bin, node, seen, seen + 1);
                    if (j < (uint64_t)s->cap) k = (int)j;
                }
                if (k >= 0) {
                    slot_put(s, T, i, k, win, mx, tok, x, e);
                    if (s->filled[i] < k + 1) s->filled[i] = k + 1;
                }
            }
        }
        int k = mn->slot_of[b];
        if (k >= 0) {
            size_t at = ((size_t)i * o->n_random + k) * T;
            memcpy(g->rand_act + at, x, (size_t)T * sizeof *x);
            if (e) memcpy(g->rand_ext + at, e, (size_t)T * sizeof *e);
        }
    }
}

int lt_miner_feed(lt_miner *mn, const int32_t *ids, int B, int T, int64_t first_window) {
    if (!mn || !ids) return lt_fail("lt_miner_feed: NULL argument");
    if (B < 1) return lt_fail("lt_miner_feed: B = %d windows", B);
    if (T != mn->T) return lt_fail("lt_miner_feed: windows of %d tokens, the miner was made for %d", T, mn->T);
    if (first_window < 0) return lt_fail("lt_miner_feed: negative window index");
    size_t need = (size_t)mn->max_group * B * T;
    if (need > mn->vals_cap) {
        free(mn->vals);
        free(mn->xvals);
        free(mn->slot_of);
        mn->vals = malloc(need * sizeof *mn->vals);
        /* extra values only for heads (an SAE group can be far wider) */
        mn->xvals = malloc(((size_t)mn->max_extra * B * T + 1) * sizeof *mn->xvals);
        mn->slot_of = malloc((size_t)B * sizeof *mn->slot_of);
        mn->vals_cap = mn->vals && mn->xvals && mn->slot_of ? need : 0;
        if (!mn->vals_cap) return lt_fail("out of memory for a batch of %d windows", B);
    }
    lt_run_keep_activations(mn->run, 1);
    if (lt_forward(mn->run, ids, B, T, NULL)) return lt_fail_context("miner forward pass");

    /* The shared random sample (Algorithm R over windows): window w goes to
     * slot w while the reservoir fills, then to a slot j drawn from [0, w]
     * when j < n_random. Later windows of the batch overwrite earlier ones. */
    int R = mn->o.n_random;
    for (int b = 0; b < B; b++) {
        uint64_t w = (uint64_t)(mn->consumed + b);
        int k = -1;
        if (w < (uint64_t)R) k = (int)w;
        else if (R > 0) {
            uint64_t j = pick(mn->o.seed, 0, 0, w, w + 1);
            if (j < (uint64_t)R) k = (int)j;
        }
        mn->slot_of[b] = k;
        if (k >= 0) {
            mn->rand_win[k] = first_window + b;
            memcpy(mn->rand_tok + (size_t)k * T, ids + (size_t)b * T, (size_t)T * sizeof *ids);
        }
    }
    for (int gi = 0; gi < mn->n_groups; gi++) {
        group *g = &mn->groups[gi];
        if ((g->kind == LT_MINE_ATTN ? extract_attn(mn, g, B) : extract_rows(mn, g, B)))
            return lt_fail_context("miner, layer %d", g->layer);
        #pragma omp parallel for schedule(dynamic, 64)
        for (int i = 0; i < g->n; i++) update_node(mn, g, i, ids, B, first_window);
    }
    mn->consumed += B;
    drop_warm(mn);
    return LT_OK;
}

/* -------------------------------------------------------------- records */

/* Fills recs from node i's slots: n records pointing into the slots. */
static void slot_records(const slots *s, int i, int T, lt_act_record *recs, const int *order, int n) {
    for (int r = 0; r < n; r++) {
        size_t at = (size_t)i * s->cap + (size_t)(order ? order[r] : r);
        recs[r].n = T;
        recs[r].window = s->win[at];
        recs[r].tokens = s->tok + at * T;
        recs[r].acts = s->act + at * T;
        recs[r].extra = s->ext ? s->ext + at * T : NULL;
    }
}

typedef struct { const slots *s; int i; } top_ctx;

/* Best first: the reverse of `worse`. */
static int by_rank(const void *a, const void *b, void *ctx) {
    const top_ctx *c = ctx;
    int x = *(const int *)a, y = *(const int *)b;
    if (worse(c->s, c->i, y, x)) return -1;
    if (worse(c->s, c->i, x, y)) return 1;
    return 0;
}

/* Builds node i's record set into *rs with arrays from scratch (sized by
 * record_scratch). The record points into the miner's memory. */
typedef struct rec_scratch {
    lt_act_record *recs;
    int *order;
    lt_quantile_bin bins[NBINS];
} rec_scratch;

static int scratch_new(const lt_miner *mn, rec_scratch *sc) {
    const lt_miner_opts *o = &mn->o;
    size_t n = (size_t)o->top_n + o->n_random + (size_t)NBINS * o->n_per_bin + 1;
    sc->recs = calloc(n, sizeof *sc->recs);
    sc->order = calloc((size_t)o->top_n + 1, sizeof *sc->order);
    if (!sc->recs || !sc->order) { free(sc->recs); free(sc->order); return lt_fail("out of memory"); }
    return LT_OK;
}

static void scratch_free(rec_scratch *sc) {
    free(sc->recs);
    free(sc->order);
}

static void build_record(const lt_miner *mn, const group *g, int i, rec_scratch *sc, lt_record_set *rs) {
    const lt_miner_opts *o = &mn->o;
    int T = mn->T, K = o->quantile_windows;
    memset(rs, 0, sizeof *rs);
    moments_stats(&g->mom[i], rs);
    lt_act_record *next = sc->recs;

    int nt = g->top.filled[i];
    for (int r = 0; r < nt; r++) sc->order[r] = r;
    top_ctx ctx = {&g->top, i};
    qsort_r(sc->order, (size_t)nt, sizeof *sc->order, by_rank, &ctx);
    slot_records(&g->top, i, T, next, sc->order, nt);
    rs->top = next;
    rs->n_top = nt;
    next += nt;

    int nr = mn->consumed < o->n_random ? (int)mn->consumed : o->n_random;
    for (int r = 0; r < nr; r++) {
        size_t at = ((size_t)i * o->n_random + r) * T;
        next[r].n = T;
        next[r].window = mn->rand_win[r];
        next[r].tokens = mn->rand_tok + (size_t)r * T;
        next[r].acts = g->rand_act + at;
        next[r].extra = g->rand_ext ? g->rand_ext + at : NULL;
    }
    rs->random = next;
    rs->n_random = nr;
    next += nr;

    /* Before the boundaries are fixed, report the estimate so far. */
    double provisional[NBINS + 1];
    const double *bounds = g->bounds + (size_t)i * (NBINS + 1);
    if (mn->consumed < K) {
        int n = (int)mn->consumed;
        if (estimate_bounds(g->warm + (size_t)i * K, n, provisional) == LT_OK) bounds = provisional;
    }
    for (int b = 0; b < NBINS; b++) {
        lt_quantile_bin *bin = &sc->bins[b];
        bin->q_lo = bin_q[b];
        bin->q_hi = bin_q[b + 1];
        bin->lo = bounds[b];
        bin->hi = bounds[b + 1];
        bin->n_records = g->bins[b].filled[i];
        slot_records(&g->bins[b], i, T, next, NULL, bin->n_records);
        bin->records = next;
        next += bin->n_records;
    }
    rs->bins = sc->bins;
    rs->n_bins = NBINS;
}

static group *find_group(lt_miner *mn, int kind, int layer) {
    for (int gi = 0; gi < mn->n_groups; gi++)
        if (mn->groups[gi].kind == kind && mn->groups[gi].layer == layer) return &mn->groups[gi];
    return NULL;
}

int lt_miner_record(lt_miner *mn, int kind, int layer, int index, lt_record_set **out) {
    if (!mn || !out) return lt_fail("lt_miner_record: NULL argument");
    *out = NULL;
    group *g = find_group(mn, kind, layer);
    if (!g) return lt_fail("miner: no %s nodes mined in layer %d", kind_name(kind), layer);
    if (index < 0 || index >= g->n) return lt_fail("miner: %s index %d outside 0..%d", kind_name(kind), index, g->n - 1);
    rec_scratch sc;
    if (scratch_new(mn, &sc)) return LT_ERR;
    lt_record_set rs;
    build_record(mn, g, index, &sc, &rs);
    /* Encoding then decoding gives the caller one allocation, in the order
     * the store keeps (top records by decreasing maximum). */
    void *buf;
    size_t len;
    int rc = lt_store_encode_record(&rs, &buf, &len);
    scratch_free(&sc);
    if (rc) return LT_ERR;
    rc = lt_store_decode_record(buf, len, out);
    free(buf);
    return rc;
}

/* ---------------------------------------------------------------- state */

/* Byte buffer for the state value. */
typedef struct wbuf { char *p; size_t n, cap; int oom; } wbuf;

static void wput(wbuf *w, const void *src, size_t n) {
    if (w->oom) return;
    if (w->n + n > w->cap) {
        size_t cap = w->cap ? w->cap : 4096;
        while (cap < w->n + n) cap *= 2;
        char *p = realloc(w->p, cap);
        if (!p) { w->oom = 1; return; }
        w->p = p;
        w->cap = cap;
    }
    memcpy(w->p + w->n, src, n);
    w->n += n;
}

static void wu32(wbuf *w, uint32_t x) { wput(w, &x, 4); }
static void wi64(wbuf *w, int64_t x) { wput(w, &x, 8); }

/* The options that must match for a resume, in state order. */
static void put_opts(wbuf *w, const lt_miner *mn) {
    const lt_miner_opts *o = &mn->o;
    wu32(w, (uint32_t)o->window);
    wu32(w, (uint32_t)o->top_n);
    wu32(w, (uint32_t)o->n_random);
    wu32(w, (uint32_t)o->n_per_bin);
    wu32(w, (uint32_t)o->quantile_windows);
    wu32(w, o->kinds);
    wu32(w, (uint32_t)o->layer_lo);
    wu32(w, (uint32_t)o->layer_hi);
    wput(w, &o->seed, 8);
    wu32(w, (uint32_t)mn->n_nodes);
}

enum { OPTS_BYTES = 9 * 4 + 8, OPTS_KINDS_AT = 5 * 4 };

/* With SAE latents, the SAEs they come from (they must match too), in group
 * order: u32 count, then per SAE u32 layer, u32 latents, u64 fingerprint,
 * u32 name length and the attached hook point's name. */
static void put_saes(wbuf *w, const lt_miner *mn) {
    if (!(mn->o.kinds & LT_MINE_SAE)) return;
    uint32_t n = 0;
    for (int gi = 0; gi < mn->n_groups; gi++) n += mn->groups[gi].kind == LT_MINE_SAE;
    wu32(w, n);
    for (int gi = 0; gi < mn->n_groups; gi++) {
        const group *g = &mn->groups[gi];
        if (g->kind != LT_MINE_SAE) continue;
        wu32(w, (uint32_t)g->layer);
        wu32(w, (uint32_t)g->n);
        wput(w, &g->sae_hash, 8);
        wu32(w, (uint32_t)strlen(g->hook));
        wput(w, g->hook, strlen(g->hook));
    }
}

static int state_key(const char *model, const char *what, char *buf, size_t cap) {
    if (lt_store_node_key("run", "mine", model, 0, 0, buf, cap)) return LT_ERR;
    /* "run/mine/<model>/0000/00000000" -> "run/mine/<model>/<what>" */
    char *cut = strrchr(buf, '/');
    *cut = '\0';
    cut = strrchr(buf, '/');
    int n = snprintf(cut + 1, cap - (size_t)(cut + 1 - buf), "%s", what);
    if (n < 0 || (size_t)n >= cap - (size_t)(cut + 1 - buf)) return lt_fail("store key too long");
    return LT_OK;
}

/* State layout (little-endian): "LTMS", u32 version, the options (see
 * put_opts), the SAEs when SAE latents are mined (put_saes), i64 windows
 * consumed; then per group in node order: per node
 * u64 count, f64 mean, m2, m3, m4, u64 bin_seen[4], f64 bounds[5]; then,
 * while the bin boundaries are not fixed, f32 window maxima
 * [nodes][windows consumed]. The window records themselves are read back
 * from the node records written in the same transaction. */
static int encode_state(const lt_miner *mn, wbuf *w) {
    wput(w, STATE_MAGIC, 4);
    wu32(w, STATE_VERSION);
    put_opts(w, mn);
    put_saes(w, mn);
    wi64(w, mn->consumed);
    for (int gi = 0; gi < mn->n_groups; gi++) {
        const group *g = &mn->groups[gi];
        for (int i = 0; i < g->n; i++) {
            const moments *a = &g->mom[i];
            wput(w, &a->n, 8);
            wput(w, &a->mean, 8);
            wput(w, &a->m2, 8);
            wput(w, &a->m3, 8);
            wput(w, &a->m4, 8);
            wput(w, g->bin_seen + (size_t)i * NBINS, 8 * NBINS);
            wput(w, g->bounds + (size_t)i * (NBINS + 1), 8 * (NBINS + 1));
        }
    }
    int K = mn->o.quantile_windows;
    if (mn->consumed < K)
        for (int gi = 0; gi < mn->n_groups; gi++) {
            const group *g = &mn->groups[gi];
            for (int i = 0; i < g->n; i++) wput(w, g->warm + (size_t)i * K, (size_t)mn->consumed * 4);
        }
    return w->oom ? lt_fail("out of memory encoding the miner state") : LT_OK;
}

int lt_miner_write(lt_miner *mn, lt_store *st, const char *model, const char *info) {
    if (!mn || !st || !model) return lt_fail("lt_miner_write: NULL argument");
    char key[512];
    rec_scratch sc;
    wbuf w = {0};
    if (scratch_new(mn, &sc)) return LT_ERR;
    if (lt_store_begin(st)) { scratch_free(&sc); return LT_ERR; }
    int rc = LT_OK;
    for (int gi = 0; gi < mn->n_groups && rc == LT_OK; gi++) {
        group *g = &mn->groups[gi];
        for (int i = 0; i < g->n && rc == LT_OK; i++) {
            lt_record_set rs;
            build_record(mn, g, i, &sc, &rs);
            rc = lt_store_put_record(st, model, kind_name(g->kind), g->layer, i, &rs);
        }
    }
    if (rc == LT_OK) rc = encode_state(mn, &w);
    if (rc == LT_OK) rc = state_key(model, "state", key, sizeof key);
    if (rc == LT_OK) rc = lt_store_put(st, "runs", key, strlen(key), w.p, w.n);
    if (rc == LT_OK && info) {
        rc = state_key(model, "info", key, sizeof key);
        if (rc == LT_OK) rc = lt_store_put(st, "runs", key, strlen(key), info, strlen(info));
    }
    free(w.p);
    scratch_free(&sc);
    if (rc) {
        lt_store_abort(st);
        return LT_ERR;
    }
    return lt_store_commit(st);
}

/* A bounds-checked reader over the state value. */
typedef struct rbuf { const char *p; size_t left; } rbuf;

static int rget(rbuf *r, void *dst, size_t n) {
    if (n > r->left) return LT_ERR;
    memcpy(dst, r->p, n);
    r->p += n;
    r->left -= n;
    return LT_OK;
}

/* Appends "<hook> (layer L, N latents, weights <fingerprint>)" to desc. */
static void describe_sae(char *desc, size_t cap, const char *hook, int hook_len, uint32_t layer, uint32_t n,
                         uint64_t hash) {
    size_t at = strlen(desc);
    if (at + 1 >= cap) return;
    snprintf(desc + at, cap - at, "%s%.*s (layer %u, %u latents, weights %016llx)", at ? ", " : "", hook_len, hook,
             layer, n, (unsigned long long)hash);
}

/* Reads the SAE section of a state (put_saes) and describes it into desc. */
static int read_saes(rbuf *r, char *desc, size_t cap) {
    uint32_t n;
    if (rget(r, &n, 4)) return LT_ERR;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t layer, width, name_len;
        uint64_t hash;
        if (rget(r, &layer, 4) || rget(r, &width, 4) || rget(r, &hash, 8) || rget(r, &name_len, 4) ||
            name_len > r->left || name_len > 1000)
            return LT_ERR;
        describe_sae(desc, cap, r->p, (int)name_len, layer, width, hash);
        r->p += name_len;
        r->left -= name_len;
    }
    return LT_OK;
}

/* Copies records into slots 0..n-1 of node i (slot order = record order). */
static int load_slots(slots *s, int i, int T, const lt_act_record *recs, int n, int want_ext) {
    if (n > s->cap) return LT_ERR;
    for (int r = 0; r < n; r++) {
        const lt_act_record *a = &recs[r];
        if (a->n != T || (want_ext && !a->extra)) return LT_ERR;
        slot_put(s, T, i, r, a->window, window_max(a->acts, T), a->tokens, a->acts, a->extra);
    }
    s->filled[i] = n;
    return LT_OK;
}

/* Restores node i's window records from its record set. */
static int load_node(lt_miner *mn, group *g, int i, const lt_record_set *rs) {
    const lt_miner_opts *o = &mn->o;
    int T = mn->T, ext = g->kind == LT_MINE_ATTN;
    int64_t want_top = mn->consumed < o->top_n ? mn->consumed : o->top_n;
    int64_t want_rand = mn->consumed < o->n_random ? mn->consumed : o->n_random;
    if (rs->n_top != want_top || rs->n_random != want_rand || rs->n_bins != NBINS) return LT_ERR;
    /* Stored best first; the reversed order is ascending in `worse`,
     * which is a valid min-heap. */
    if (load_slots(&g->top, i, T, rs->top, rs->n_top, ext)) return LT_ERR;
    int *h = g->heap + (size_t)i * o->top_n;
    for (int r = 0; r < rs->n_top; r++) h[r] = rs->n_top - 1 - r;
    for (int b = 0; b < NBINS; b++)
        if (load_slots(&g->bins[b], i, T, rs->bins[b].records, rs->bins[b].n_records, ext)) return LT_ERR;
    for (int r = 0; r < rs->n_random; r++) {
        const lt_act_record *a = &rs->random[r];
        if (a->n != T || (ext && !a->extra)) return LT_ERR;
        size_t at = ((size_t)i * o->n_random + r) * T;
        memcpy(g->rand_act + at, a->acts, (size_t)T * 4);
        if (ext) memcpy(g->rand_ext + at, a->extra, (size_t)T * 4);
        if (g->first + i == 0) {
            mn->rand_win[r] = a->window;
            memcpy(mn->rand_tok + (size_t)r * T, a->tokens, (size_t)T * 4);
        }
    }
    return LT_OK;
}

int lt_miner_resume(lt_miner *mn, lt_store *st, const char *model) {
    if (!mn || !st || !model) return lt_fail("lt_miner_resume: NULL argument");
    if (mn->consumed) return lt_fail("lt_miner_resume: the miner has already been fed");
    char key[512];
    if (state_key(model, "state", key, sizeof key)) return LT_ERR;
    void *val;
    size_t len;
    int rc = lt_store_get(st, "runs", key, strlen(key), &val, &len);
    if (rc != LT_OK) return rc;
    rbuf r = {val, len};
    char magic[4];
    uint32_t version = 0;
    char opts[OPTS_BYTES];
    wbuf mine = {0}, mine_saes = {0};
    put_opts(&mine, mn);
    put_saes(&mine_saes, mn);
    int64_t consumed = 0;
    uint32_t state_kinds;
    char theirs[1024] = "", ours[1024] = "";
    rc = LT_ERR;
    if (rget(&r, magic, 4) || memcmp(magic, STATE_MAGIC, 4) || rget(&r, &version, 4) || version != STATE_VERSION) {
        lt_fail("miner state %s: not a miner state of this version", key);
        goto done;
    }
    if (rget(&r, opts, OPTS_BYTES)) {
        lt_fail("miner state %s: truncated", key);
        goto done;
    }
    memcpy(&state_kinds, opts + OPTS_KINDS_AT, 4);
    const char *saes_at = r.p;
    if (((state_kinds & LT_MINE_SAE) && read_saes(&r, theirs, sizeof theirs)) || rget(&r, &consumed, 8) ||
        consumed < 0) {
        lt_fail("miner state %s: truncated", key);
        goto done;
    }
    /* The SAEs first: with other SAEs the node count differs too, and
     * "other SAEs" says why. */
    size_t saes_len = (size_t)(r.p - saes_at) - 8;
    if ((state_kinds & mn->o.kinds & LT_MINE_SAE) &&
        (mine_saes.oom || mine_saes.n != saes_len || memcmp(saes_at, mine_saes.p, saes_len))) {
        for (int gi = 0; gi < mn->n_groups; gi++) {
            const group *g = &mn->groups[gi];
            if (g->kind == LT_MINE_SAE)
                describe_sae(ours, sizeof ours, g->hook, (int)strlen(g->hook), (uint32_t)g->layer, (uint32_t)g->n,
                             g->sae_hash);
        }
        lt_fail("miner state %s was made with other SAEs: %s, not %s; resume with the SAEs of that run (the same "
                "hook points and weights)", key, theirs, ours);
        goto done;
    }
    if (mine.oom || mine.n != OPTS_BYTES || memcmp(opts, mine.p, OPTS_BYTES)) {
        lt_fail("miner state %s was made with other options (window, top, random, bins, quantile "
                "windows, kinds, layers, seed); resume with the options of that run", key);
        goto done;
    }
    mn->consumed = consumed;
    int K = mn->o.quantile_windows;
    for (int gi = 0; gi < mn->n_groups; gi++) {
        group *g = &mn->groups[gi];
        for (int i = 0; i < g->n; i++) {
            moments *a = &g->mom[i];
            if (rget(&r, &a->n, 8) || rget(&r, &a->mean, 8) || rget(&r, &a->m2, 8) || rget(&r, &a->m3, 8) ||
                rget(&r, &a->m4, 8) || rget(&r, g->bin_seen + (size_t)i * NBINS, 8 * NBINS) ||
                rget(&r, g->bounds + (size_t)i * (NBINS + 1), 8 * (NBINS + 1))) {
                lt_fail("miner state %s: truncated", key);
                goto done;
            }
        }
    }
    if (consumed < K)
        for (int gi = 0; gi < mn->n_groups; gi++) {
            group *g = &mn->groups[gi];
            for (int i = 0; i < g->n; i++)
                if (rget(&r, g->warm + (size_t)i * K, (size_t)consumed * 4)) {
                    lt_fail("miner state %s: truncated", key);
                    goto done;
                }
        }
    if (r.left) { lt_fail("miner state %s: %zu trailing bytes", key, r.left); goto done; }
    for (int gi = 0; gi < mn->n_groups; gi++) {
        group *g = &mn->groups[gi];
        for (int i = 0; i < g->n; i++) {
            lt_record_set *rs;
            int got = lt_store_get_record(st, model, kind_name(g->kind), g->layer, i, &rs);
            if (got == LT_STORE_NOT_FOUND) {
                lt_fail("store: the record of %s %d/%d is missing, so the run cannot resume", kind_name(g->kind),
                        g->layer, i);
                goto done;
            }
            if (got) goto done;
            int bad = load_node(mn, g, i, rs);
            lt_free(rs);
            if (bad) {
                lt_fail("store: the record of %s %d/%d does not match the miner state (written by another "
                        "run?)", kind_name(g->kind), g->layer, i);
                goto done;
            }
        }
    }
    drop_warm(mn);
    rc = LT_OK;
done:
    if (rc) {
        /* Leave a clean miner behind, as if never resumed. */
        mn->consumed = 0;
        for (int gi = 0; gi < mn->n_groups; gi++) {
            group *g = &mn->groups[gi];
            memset(g->mom, 0, (size_t)g->n * sizeof *g->mom);
            memset(g->bin_seen, 0, (size_t)g->n * NBINS * sizeof *g->bin_seen);
            for (size_t j = 0; j < (size_t)g->n * (NBINS + 1); j++) g->bounds[j] = NAN;
            memset(g->top.filled, 0, (size_t)g->n * sizeof(int));
            for (int b = 0; b < NBINS; b++) memset(g->bins[b].filled, 0, (size_t)g->n * sizeof(int));
        }
    }
    free(mine.p);
    free(mine_saes.p);
    free(val);
    return rc;
}
