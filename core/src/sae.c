/*
 * sae.c: sparse autoencoders in the SAELens parameterisation: batched encode
 * and decode for the ReLU ("standard"), TopK and JumpReLU architectures,
 * random initialisation, and the SAELens directory format (cfg.json beside
 * sae_weights.safetensors). Shapes: n rows, D = d_in, L = d_sae.
 *   W_enc [D, L]  b_enc [L]  W_dec [L, D]  b_dec [D]  threshold [L]
 */
#include "internal.h"
#include "topk.h"

#include <cblas.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Row loops are split over threads when built with OpenMP; each row is
 * computed by one thread in a fixed order, so results do not depend on the
 * thread count. Spelled with _Pragma so a build without -fopenmp stays
 * free of unknown-pragma warnings. */
#ifdef _OPENMP
#define OMP_PARALLEL_FOR _Pragma("omp parallel for schedule(static)")
#else
#define OMP_PARALLEL_FOR
#endif

/* Rows per encode/decode step: bounds the scratch of one call whatever n
 * is, and keeps row counts within BLAS's int. */
#define SAE_CHUNK 1024
/* Largest d_in or d_sae: BLAS dimensions and leading strides are int. */
#define SAE_MAX_DIM INT_MAX
/* Decode reads only the non-zero latents' rows of W_dec when at most this
 * fraction of a chunk's latents are non-zero; above it one sgemm is faster.
 * Measured on the development machine (docs/sae.md). */
#define SAE_SPARSE_DENSITY 0.03

enum { NORM_NONE = 0, NORM_EXPECTED_AVERAGE, NORM_CONSTANT_RESCALE, NORM_COUNT };
static const char *const norm_names[NORM_COUNT] = {"none", "expected_average_only_in", "constant_norm_rescale"};
static const char *const arch_names[] = {"standard", "topk", "jumprelu"};

struct lt_sae {
    int64_t d_in, d_sae;
    int arch;                  /* LT_SAE_* */
    int k;                     /* TopK only, else 0 */
    int apply_b_dec_to_input;
    int norm;                  /* NORM_* */
    float *W_enc, *b_enc, *W_dec, *b_dec;
    float *threshold;          /* JumpReLU only, else NULL */
    char *hook_name, *model_name;   /* NULL when unknown */
    cJSON *cfg;                /* the loaded cfg.json object (fields lantern does
                                  not use pass through save), or NULL */
};

/* ------------------------------------------------------------ lifetime */

int lt_sae_new(int64_t d_in, int64_t d_sae, int arch, int k, lt_sae **out) {
    if (!out) return lt_fail("lt_sae_new: NULL argument");
    *out = NULL;
    if (d_in < 1 || d_in > SAE_MAX_DIM || d_sae < 1 || d_sae > SAE_MAX_DIM)
        return lt_fail("lt_sae_new: d_in = %lld and d_sae = %lld must be in 1..%d",
                       (long long)d_in, (long long)d_sae, SAE_MAX_DIM);
    if ((uint64_t)d_in * (uint64_t)d_sae > SIZE_MAX / sizeof(float) / 2)
        return lt_fail("lt_sae_new: d_in * d_sae = %lld * %lld is too large", (long long)d_in, (long long)d_sae);
    if (arch != LT_SAE_RELU && arch != LT_SAE_TOPK && arch != LT_SAE_JUMPRELU)
        return lt_fail("lt_sae_new: unknown architecture %d", arch);
    if (arch == LT_SAE_TOPK && (k < 1 || k > d_sae))
        return lt_fail("lt_sae_new: TopK needs 1 <= k <= d_sae = %lld, got k = %d", (long long)d_sae, k);

    lt_sae *s = calloc(1, sizeof *s);
    if (!s) return lt_fail("lt_sae_new: out of memory");
    s->d_in = d_in;
    s->d_sae = d_sae;
    s->arch = arch;
    s->k = arch == LT_SAE_TOPK ? k : 0;
    s->apply_b_dec_to_input = 1;
    s->norm = NORM_NONE;
    size_t w = (size_t)d_in * (size_t)d_sae;
    s->W_enc = lt_alloc(w);
    s->W_dec = s->W_enc ? lt_alloc(w) : NULL;
    s->b_enc = s->W_dec ? lt_alloc((size_t)d_sae) : NULL;
    s->b_dec = s->b_enc ? lt_alloc((size_t)d_in) : NULL;
    if (s->b_dec && arch == LT_SAE_JUMPRELU) s->threshold = lt_alloc((size_t)d_sae);
    if (!s->b_dec || (arch == LT_SAE_JUMPRELU && !s->threshold)) {
        lt_sae_free(s);
        return lt_fail_context("lt_sae_new(%lld, %lld)", (long long)d_in, (long long)d_sae);
    }
    *out = s;
    return LT_OK;
}

void lt_sae_free(lt_sae *sae) {
    if (!sae) return;
    lt_free(sae->W_enc);
    lt_free(sae->W_dec);
    lt_free(sae->b_enc);
    lt_free(sae->b_dec);
    lt_free(sae->threshold);
    free(sae->hook_name);
    free(sae->model_name);
    cJSON_Delete(sae->cfg);
    free(sae);
}

/* splitmix64: a small, well-mixed generator, so a seed gives the same
 * weights on every machine. */
static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* A standard normal by Box-Muller (one of the pair; simplicity over speed). */
static double rng_normal(uint64_t *s) {
    double u1 = ((rng_next(s) >> 11) + 1.0) * 0x1.0p-53;   /* (0, 1] */
    double u2 = (rng_next(s) >> 11) * 0x1.0p-53;           /* [0, 1) */
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

int lt_sae_init_random(lt_sae *sae, uint64_t seed) {
    if (!sae) return lt_fail("lt_sae_init_random: NULL argument");
    const int64_t D = sae->d_in, L = sae->d_sae;
    uint64_t st = seed;
    for (int64_t l = 0; l < L; l++) {
        float *row = sae->W_dec + l * D;
        double ss = 0;
        for (int64_t d = 0; d < D; d++) {
            double v = rng_normal(&st);
            row[d] = (float)v;
            ss += v * v;
        }
        /* A zero row has probability 0, but must not divide by zero. */
        float inv = ss > 0 ? (float)(1.0 / sqrt(ss)) : 0.0f;
        for (int64_t d = 0; d < D; d++) row[d] *= inv;
        for (int64_t d = 0; d < D; d++) sae->W_enc[d * L + l] = row[d];
    }
    memset(sae->b_enc, 0, (size_t)L * sizeof(float));
    memset(sae->b_dec, 0, (size_t)D * sizeof(float));
    if (sae->threshold) memset(sae->threshold, 0, (size_t)L * sizeof(float));
    return LT_OK;
}

/* ------------------------------------------------------------ accessors */

int64_t lt_sae_d_in(const lt_sae *sae) { return sae ? sae->d_in : 0; }
int64_t lt_sae_d_sae(const lt_sae *sae) { return sae ? sae->d_sae : 0; }
int lt_sae_architecture(const lt_sae *sae) { return sae ? sae->arch : -1; }
int lt_sae_k(const lt_sae *sae) { return sae ? sae->k : 0; }
int lt_sae_apply_b_dec_to_input(const lt_sae *sae) { return sae ? sae->apply_b_dec_to_input : 0; }
const char *lt_sae_normalize_activations(const lt_sae *sae) { return sae ? norm_names[sae->norm] : NULL; }
const char *lt_sae_hook_name(const lt_sae *sae) { return sae ? sae->hook_name : NULL; }
const char *lt_sae_model_name(const lt_sae *sae) { return sae ? sae->model_name : NULL; }

/* Replaces *slot with a copy of value (NULL clears it). */
static int set_string(char **slot, const char *value, const char *what) {
    char *copy = NULL;
    if (value && !(copy = strdup(value))) return lt_fail("%s: out of memory", what);
    free(*slot);
    *slot = copy;
    return LT_OK;
}

int lt_sae_set_hook_name(lt_sae *sae, const char *name) {
    if (!sae) return lt_fail("lt_sae_set_hook_name: NULL SAE");
    return set_string(&sae->hook_name, name, "lt_sae_set_hook_name");
}

int lt_sae_set_model_name(lt_sae *sae, const char *name) {
    if (!sae) return lt_fail("lt_sae_set_model_name: NULL SAE");
    return set_string(&sae->model_name, name, "lt_sae_set_model_name");
}

int lt_sae_set_apply_b_dec_to_input(lt_sae *sae, int on) {
    if (!sae) return lt_fail("lt_sae_set_apply_b_dec_to_input: NULL SAE");
    sae->apply_b_dec_to_input = on != 0;
    return LT_OK;
}

static int norm_from_name(const char *mode) {
    for (int i = 0; i < NORM_COUNT; i++)
        if (strcmp(mode, norm_names[i]) == 0) return i;
    return -1;
}

int lt_sae_set_normalize_activations(lt_sae *sae, const char *mode) {
    if (!sae || !mode) return lt_fail("lt_sae_set_normalize_activations: NULL argument");
    int m = norm_from_name(mode);
    if (m < 0)
        return lt_fail("normalize_activations '%s' is not supported (supported: none, "
                       "expected_average_only_in, constant_norm_rescale)", mode);
    sae->norm = m;
    return LT_OK;
}

int lt_sae_param(lt_sae *sae, const char *name, lt_view *out) {
    if (!sae || !name || !out) return lt_fail("lt_sae_param: NULL argument");
    memset(out, 0, sizeof *out);
    const int64_t D = sae->d_in, L = sae->d_sae;
    if (strcmp(name, "W_enc") == 0) { out->data = sae->W_enc; out->ndim = 2; out->shape[0] = D; out->shape[1] = L; }
    else if (strcmp(name, "W_dec") == 0) { out->data = sae->W_dec; out->ndim = 2; out->shape[0] = L; out->shape[1] = D; }
    else if (strcmp(name, "b_enc") == 0) { out->data = sae->b_enc; out->ndim = 1; out->shape[0] = L; }
    else if (strcmp(name, "b_dec") == 0) { out->data = sae->b_dec; out->ndim = 1; out->shape[0] = D; }
    else if (strcmp(name, "threshold") == 0) {
        if (!sae->threshold) return lt_fail("SAE parameter 'threshold' exists only for jumprelu SAEs");
        out->data = sae->threshold; out->ndim = 1; out->shape[0] = L;
    } else {
        return lt_fail("unknown SAE parameter '%s' (W_enc, b_enc, W_dec, b_dec, threshold)", name);
    }
    return LT_OK;
}

/* ------------------------------------------------------------ encode */

/* The factor that rescales row x [D] to norm sqrt(D) (constant_norm_rescale);
 * 1 for a zero row, which has no direction to rescale. */
static float rescale_coef(const float *x, int64_t D) {
    double ss = 0;
    for (int64_t d = 0; d < D; d++) ss += (double)x[d] * x[d];
    return ss > 0 ? (float)(sqrt((double)D) / sqrt(ss)) : 1.0f;
}

/* in [m, D] = x [m, D], normalised when the SAE asks for it, minus b_dec
 * when apply_b_dec_to_input: the SAE's input (SAELens's process_sae_in). */
static void prepare_input(const lt_sae *sae, const float *x, int64_t m, float *in) {
    const int64_t D = sae->d_in;
    OMP_PARALLEL_FOR
    for (int64_t i = 0; i < m; i++) {
        const float *xr = x + i * D;
        float *r = in + i * D;
        float c = sae->norm == NORM_CONSTANT_RESCALE ? rescale_coef(xr, D) : 1.0f;
        for (int64_t d = 0; d < D; d++) r[d] = xr[d] * c;
        if (sae->apply_b_dec_to_input)
            for (int64_t d = 0; d < D; d++) r[d] -= sae->b_dec[d];
    }
}

/* z [L] = TopK(pre [L]) then ReLU, with heap [k] as scratch. pre and z may
 * be the same row: the kept values live in the heap while z is cleared.
 * A bounded heap costs O(L) comparisons for small k, since most candidates
 * lose to the root at once. NaN ranks as -inf (and never survives ReLU). */
static void topk_row(const float *pre, float *z, int64_t L, int k, topk_entry *heap) {
    int n = 0;
    for (int64_t l = 0; l < L; l++) {
        float v = pre[l];
        topk_push(heap, &n, k, (topk_entry){v != v ? -INFINITY : v, (int32_t)l});
    }
    memset(z, 0, (size_t)L * sizeof(float));
    for (int j = 0; j < n; j++) z[heap[j].i] = heap[j].v > 0 ? heap[j].v : 0.0f;
}

/* z [m, L] = act(pre [m, L]); pre == z allowed. heaps: TopK scratch, k
 * entries per thread. */
static void activate(const lt_sae *sae, const float *pre, float *z, int64_t m, topk_entry *heaps) {
    const int64_t L = sae->d_sae;
    if (sae->arch == LT_SAE_TOPK) {
        OMP_PARALLEL_FOR
        for (int64_t i = 0; i < m; i++) {
            topk_entry *heap = heaps + (size_t)topk_thread() * (size_t)sae->k;
            topk_row(pre + i * L, z + i * L, L, sae->k, heap);
        }
    } else if (sae->arch == LT_SAE_JUMPRELU) {
        const float *th = sae->threshold;
        OMP_PARALLEL_FOR
        for (int64_t i = 0; i < m; i++) {
            const float *p = pre + i * L;
            float *o = z + i * L;
            for (int64_t l = 0; l < L; l++) o[l] = (p[l] > th[l] && p[l] > 0) ? p[l] : 0.0f;
        }
    } else {
        OMP_PARALLEL_FOR
        for (int64_t i = 0; i < m; i++) {
            const float *p = pre + i * L;
            float *o = z + i * L;
            for (int64_t l = 0; l < L; l++) o[l] = p[l] > 0 ? p[l] : 0.0f;
        }
    }
}

int lt_sae_encode(const lt_sae *sae, const float *x, int64_t n, float *z_pre, float *z) {
    if (!sae) return lt_fail("lt_sae_encode: NULL SAE");
    if (n < 0) return lt_fail("lt_sae_encode: negative row count %lld", (long long)n);
    if (n == 0) return LT_OK;
    if (!x || !z) return lt_fail("lt_sae_encode: NULL x or z");
    if (z_pre == z) return lt_fail("lt_sae_encode: z_pre and z must be different buffers");
    const int64_t D = sae->d_in, L = sae->d_sae;
    const int64_t chunk = n < SAE_CHUNK ? n : SAE_CHUNK;

    /* The input is copied only when it must be changed first. */
    int copy_input = sae->apply_b_dec_to_input || sae->norm == NORM_CONSTANT_RESCALE;
    float *in_buf = NULL;
    topk_entry *heaps = NULL;
    if (copy_input && !(in_buf = lt_alloc((size_t)(chunk * D)))) return lt_fail_context("lt_sae_encode");
    if (sae->arch == LT_SAE_TOPK) {
        heaps = malloc((size_t)topk_threads() * (size_t)sae->k * sizeof *heaps);
        if (!heaps) { lt_free(in_buf); return lt_fail("lt_sae_encode: out of memory for TopK scratch"); }
    }

    for (int64_t r0 = 0; r0 < n; r0 += chunk) {
        int64_t m = n - r0 < chunk ? n - r0 : chunk;
        const float *in = x + r0 * D;
        if (copy_input) { prepare_input(sae, in, m, in_buf); in = in_buf; }
        /* pre [m, L] = in [m, D] @ W_enc [D, L] + b_enc, written into z_pre
         * when wanted, else straight into z and activated in place. */
        float *pre = (z_pre ? z_pre : z) + r0 * L;
        for (int64_t i = 0; i < m; i++) memcpy(pre + i * L, sae->b_enc, (size_t)L * sizeof(float));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)L, (int)D, 1.0f,
                    in, (int)D, sae->W_enc, (int)L, 1.0f, pre, (int)L);
        activate(sae, pre, z + r0 * L, m, heaps);
    }
    free(heaps);
    lt_free(in_buf);
    return LT_OK;
}

/* ------------------------------------------------------------ decode */

/* x_hat [m, D] = z [m, L] @ W_dec [L, D] + b_dec, one sgemm. */
static void decode_dense(const lt_sae *sae, const float *z, int64_t m, float *x_hat) {
    const int64_t D = sae->d_in, L = sae->d_sae;
    for (int64_t i = 0; i < m; i++) memcpy(x_hat + i * D, sae->b_dec, (size_t)D * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)D, (int)L, 1.0f,
                z, (int)L, sae->W_dec, (int)D, 1.0f, x_hat, (int)D);
}

/* row [D] += v * W_dec[l]. */
static void add_latent(const lt_sae *sae, int64_t l, float v, float *row) {
    const float *w = sae->W_dec + l * sae->d_in;
    for (int64_t d = 0; d < sae->d_in; d++) row[d] += v * w[d];
}

/* The same product reading only the W_dec rows of non-zero latents. */
static void decode_skip_zeros(const lt_sae *sae, const float *z, int64_t m, float *x_hat) {
    const int64_t D = sae->d_in, L = sae->d_sae;
    OMP_PARALLEL_FOR
    for (int64_t i = 0; i < m; i++) {
        const float *zr = z + i * L;
        float *o = x_hat + i * D;
        memcpy(o, sae->b_dec, (size_t)D * sizeof(float));
        for (int64_t l = 0; l < L; l++)
            if (zr[l] != 0.0f) add_latent(sae, l, zr[l], o);
    }
}

int lt_sae_decode(const lt_sae *sae, const float *z, int64_t n, float *x_hat) {
    if (!sae) return lt_fail("lt_sae_decode: NULL SAE");
    if (n < 0) return lt_fail("lt_sae_decode: negative row count %lld", (long long)n);
    if (n == 0) return LT_OK;
    if (!z || !x_hat) return lt_fail("lt_sae_decode: NULL z or x_hat");
    const int64_t L = sae->d_sae, D = sae->d_in;
    for (int64_t r0 = 0; r0 < n; r0 += SAE_CHUNK) {
        int64_t m = n - r0 < SAE_CHUNK ? n - r0 : SAE_CHUNK;
        const float *zc = z + r0 * L;
        /* Counting non-zeros costs one pass over z, far less than the
         * product, and picks the faster of the two ways per chunk. */
        int64_t nnz = 0;
        for (int64_t j = 0; j < m * L; j++) nnz += zc[j] != 0.0f;
        if ((double)nnz <= SAE_SPARSE_DENSITY * (double)(m * L)) decode_skip_zeros(sae, zc, m, x_hat + r0 * D);
        else decode_dense(sae, zc, m, x_hat + r0 * D);
    }
    return LT_OK;
}

int lt_sae_decode_sparse(const lt_sae *sae, const int32_t *idx, const float *val, int k,
                         int64_t n, float *x_hat) {
    if (!sae) return lt_fail("lt_sae_decode_sparse: NULL SAE");
    if (n < 0 || k < 0) return lt_fail("lt_sae_decode_sparse: negative n (%lld) or k (%d)", (long long)n, k);
    if (n == 0) return LT_OK;
    if (!x_hat || (k > 0 && (!idx || !val))) return lt_fail("lt_sae_decode_sparse: NULL argument");
    const int64_t D = sae->d_in;
    /* Validate everything first, so a bad index leaves x_hat untouched. */
    for (int64_t j = 0; j < n * k; j++)
        if (idx[j] >= sae->d_sae)
            return lt_fail("lt_sae_decode_sparse: latent index %d (row %lld) is out of range for d_sae = %lld",
                           (int)idx[j], (long long)(j / k), (long long)sae->d_sae);
    OMP_PARALLEL_FOR
    for (int64_t i = 0; i < n; i++) {
        float *o = x_hat + i * D;
        memcpy(o, sae->b_dec, (size_t)D * sizeof(float));
        for (int j = 0; j < k; j++) {
            int32_t l = idx[i * k + j];
            if (l >= 0 && val[i * k + j] != 0.0f) add_latent(sae, l, val[i * k + j], o);
        }
    }
    return LT_OK;
}

int lt_sae_forward(const lt_sae *sae, const float *x, int64_t n, float *z, float *x_hat) {
    if (!x_hat && n > 0) return lt_fail("lt_sae_forward: NULL x_hat");
    if (lt_sae_encode(sae, x, n, NULL, z) || lt_sae_decode(sae, z, n, x_hat)) return LT_ERR;
    if (sae->norm == NORM_CONSTANT_RESCALE) {
        const int64_t D = sae->d_in;
        OMP_PARALLEL_FOR
        for (int64_t i = 0; i < n; i++) {
            float c = rescale_coef(x + i * D, D);
            for (int64_t d = 0; d < D; d++) x_hat[i * D + d] /= c;
        }
    }
    return LT_OK;
}

int lt_sae_fold_norm_scaling_factor(lt_sae *sae, float s) {
    if (!sae) return lt_fail("lt_sae_fold_norm_scaling_factor: NULL SAE");
    if (!(s > 0) || isinf(s)) return lt_fail("lt_sae_fold_norm_scaling_factor: factor %g must be positive and finite", (double)s);
    if (sae->norm == NORM_CONSTANT_RESCALE)
        return lt_fail("lt_sae_fold_norm_scaling_factor: not meaningful with constant_norm_rescale");
    size_t w = (size_t)sae->d_in * (size_t)sae->d_sae;
    for (size_t j = 0; j < w; j++) { sae->W_enc[j] *= s; sae->W_dec[j] /= s; }
    for (int64_t d = 0; d < sae->d_in; d++) sae->b_dec[d] /= s;
    sae->norm = NORM_NONE;
    return LT_OK;
}

/* ------------------------------------------------------------ cfg.json */

static const cJSON *get(const cJSON *obj, const char *key) {
    return cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
}

/* A positive integer field (JSON numbers are doubles: integral and exact). */
static int get_dim(const cJSON *root, const char *key, const char *path, int64_t *out) {
    const cJSON *it = get(root, key);
    if (!it) return lt_fail("%s: missing \"%s\"", path, key);
    double v = cJSON_IsNumber(it) ? it->valuedouble : -1;
    if (!(v >= 1 && v <= SAE_MAX_DIM) || v != floor(v))
        return lt_fail("%s: \"%s\" must be an integer in 1..%d", path, key, SAE_MAX_DIM);
    *out = (int64_t)v;
    return LT_OK;
}

/* A boolean field with a default; SAELens writes real booleans. */
static int get_bool(const cJSON *root, const char *key, int def, const char *path, int *out) {
    const cJSON *it = get(root, key);
    if (!it || cJSON_IsNull(it)) { *out = def; return LT_OK; }
    if (!cJSON_IsBool(it)) return lt_fail("%s: \"%s\" must be true or false", path, key);
    *out = cJSON_IsTrue(it);
    return LT_OK;
}

/* A string field from the first object that has it, or NULL. */
static const char *get_string2(const cJSON *a, const cJSON *b, const char *key) {
    const cJSON *it = get(a, key);
    if (!cJSON_IsString(it)) it = get(b, key);
    return cJSON_IsString(it) ? it->valuestring : NULL;
}

/* The metadata object: "metadata" (SAELens 6) or "meta"; NULL if none. */
static const cJSON *metadata_of(const cJSON *root) {
    const cJSON *m = get(root, "metadata");
    if (!cJSON_IsObject(m)) m = get(root, "meta");
    return cJSON_IsObject(m) ? m : NULL;
}

/* What cfg.json says, as far as lantern uses it. */
typedef struct {
    int64_t d_in, d_sae;
    int arch, k;
    int apply_b_dec_to_input, norm, finetuning_scaling_factor;
    const char *hook_name, *model_name;   /* borrowed from the cJSON tree */
} sae_cfg;

static int parse_cfg(const cJSON *root, const char *path, sae_cfg *c) {
    memset(c, 0, sizeof *c);
    if (!cJSON_IsObject(root)) return lt_fail("%s: expected a JSON object", path);
    if (get_dim(root, "d_in", path, &c->d_in) || get_dim(root, "d_sae", path, &c->d_sae)) return LT_ERR;

    /* Architecture: SAELens's default is "standard"; releases before
     * SAELens 6 mark TopK SAEs with activation_fn(_str) "topk" instead. */
    const cJSON *a = get(root, "architecture");
    const char *arch = "standard";
    if (a && !cJSON_IsNull(a)) {
        if (!cJSON_IsString(a)) return lt_fail("%s: \"architecture\" must be a string", path);
        arch = a->valuestring;
    }
    const char *fn = get_string2(root, NULL, "activation_fn_str");
    if (!fn) fn = get_string2(root, NULL, "activation_fn");
    if (strcmp(arch, "standard") == 0) {
        if (fn && strcmp(fn, "topk") == 0) c->arch = LT_SAE_TOPK;
        else if (!fn || strcmp(fn, "relu") == 0) c->arch = LT_SAE_RELU;
        else return lt_fail("%s: activation function '%s' is not supported (supported: relu, topk)", path, fn);
    } else if (strcmp(arch, "topk") == 0) {
        c->arch = LT_SAE_TOPK;
    } else if (strcmp(arch, "jumprelu") == 0) {
        c->arch = LT_SAE_JUMPRELU;
    } else {
        return lt_fail("%s: unknown architecture '%s' (supported: standard, topk, jumprelu)", path, arch);
    }

    if (c->arch == LT_SAE_TOPK) {
        const cJSON *k = get(root, "k");
        if (!k || cJSON_IsNull(k)) k = get(get(root, "activation_fn_kwargs"), "k");
        if (!k) return lt_fail("%s: missing \"k\" for a topk SAE (top level or in activation_fn_kwargs)", path);
        double v = cJSON_IsNumber(k) ? k->valuedouble : -1;
        if (!(v >= 1 && v <= (double)c->d_sae) || v != floor(v))
            return lt_fail("%s: \"k\" must be an integer in 1..d_sae = %lld", path, (long long)c->d_sae);
        c->k = (int)v;
        int rescale;
        if (get_bool(root, "rescale_acts_by_decoder_norm", 0, path, &rescale)) return LT_ERR;
        if (rescale) return lt_fail("%s: rescale_acts_by_decoder_norm is not supported yet", path);
    }

    if (get_bool(root, "apply_b_dec_to_input", 1, path, &c->apply_b_dec_to_input) ||
        get_bool(root, "finetuning_scaling_factor", 0, path, &c->finetuning_scaling_factor))
        return LT_ERR;

    /* normalize_activations: a string, or (old configs) a boolean or null. */
    const cJSON *na = get(root, "normalize_activations");
    c->norm = NORM_NONE;
    if (cJSON_IsBool(na)) {
        c->norm = cJSON_IsTrue(na) ? NORM_EXPECTED_AVERAGE : NORM_NONE;
    } else if (cJSON_IsString(na)) {
        c->norm = norm_from_name(na->valuestring);
        if (c->norm < 0)
            return lt_fail("%s: normalize_activations '%s' is not supported (supported: none, "
                           "expected_average_only_in, constant_norm_rescale)", path, na->valuestring);
    } else if (na && !cJSON_IsNull(na)) {
        return lt_fail("%s: \"normalize_activations\" must be a string", path);
    }

    const cJSON *meta = metadata_of(root);
    c->hook_name = get_string2(meta, root, "hook_name");
    if (!c->hook_name) c->hook_name = get_string2(root, NULL, "hook_point");   /* oldest configs */
    c->model_name = get_string2(meta, root, "model_name");
    return LT_OK;
}

/* Replaces (or adds) obj[key] with item; frees item on failure. */
static int put(cJSON *obj, const char *key, cJSON *item) {
    if (!item) return LT_ERR;
    cJSON_DeleteItemFromObjectCaseSensitive(obj, key);
    if (!cJSON_AddItemToObject(obj, key, item)) { cJSON_Delete(item); return LT_ERR; }
    return LT_OK;
}

/* Sets or (value NULL) removes a string field. */
static int put_string(cJSON *obj, const char *key, const char *value) {
    if (!value) { cJSON_DeleteItemFromObjectCaseSensitive(obj, key); return LT_OK; }
    return put(obj, key, cJSON_CreateString(value));
}

/* The cfg.json object describing sae: the loaded one (if any) with every
 * field lantern knows rewritten from the SAE's state. hook_name and
 * model_name go both in "metadata" (SAELens 6) and at the top level (older
 * readers). */
static cJSON *build_cfg(const lt_sae *sae) {
    cJSON *root = sae->cfg ? cJSON_Duplicate(sae->cfg, 1) : cJSON_CreateObject();
    if (!root) return NULL;
    int bad = 0;
    bad |= put(root, "architecture", cJSON_CreateString(arch_names[sae->arch]));
    bad |= put(root, "d_in", cJSON_CreateNumber((double)sae->d_in));
    bad |= put(root, "d_sae", cJSON_CreateNumber((double)sae->d_sae));
    bad |= put(root, "dtype", cJSON_CreateString("float32"));
    bad |= put(root, "apply_b_dec_to_input", cJSON_CreateBool(sae->apply_b_dec_to_input));
    bad |= put(root, "normalize_activations", cJSON_CreateString(norm_names[sae->norm]));
    /* A scaling factor was folded into W_dec at load. */
    bad |= put(root, "finetuning_scaling_factor", cJSON_CreateBool(0));
    if (sae->arch == LT_SAE_TOPK) bad |= put(root, "k", cJSON_CreateNumber(sae->k));
    else cJSON_DeleteItemFromObjectCaseSensitive(root, "k");
    /* Superseded by architecture and k above. */
    cJSON_DeleteItemFromObjectCaseSensitive(root, "activation_fn_kwargs");
    cJSON_DeleteItemFromObjectCaseSensitive(root, "activation_fn_str");
    cJSON_DeleteItemFromObjectCaseSensitive(root, "activation_fn");
    cJSON_DeleteItemFromObjectCaseSensitive(root, "hook_point");

    cJSON *meta = cJSON_GetObjectItemCaseSensitive(root, "metadata");
    if (!cJSON_IsObject(meta)) {
        const cJSON *old = cJSON_GetObjectItemCaseSensitive(root, "meta");
        meta = cJSON_IsObject(old) ? cJSON_Duplicate(old, 1) : cJSON_CreateObject();
        bad |= put(root, "metadata", meta);
        cJSON_DeleteItemFromObjectCaseSensitive(root, "meta");
        meta = cJSON_GetObjectItemCaseSensitive(root, "metadata");
    }
    if (meta) {
        bad |= put_string(meta, "hook_name", sae->hook_name);
        bad |= put_string(meta, "model_name", sae->model_name);
    }
    bad |= put_string(root, "hook_name", sae->hook_name);
    bad |= put_string(root, "model_name", sae->model_name);
    if (bad || !meta) { cJSON_Delete(root); return NULL; }
    return root;
}

int lt_sae_cfg_json(const lt_sae *sae, char **out) {
    if (!sae || !out) return lt_fail("lt_sae_cfg_json: NULL argument");
    *out = NULL;
    cJSON *root = build_cfg(sae);
    char *text = root ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    /* Copied so that the caller frees with lt_free whatever allocator cJSON
     * was built with. */
    char *copy = text ? strdup(text) : NULL;
    if (text) cJSON_free(text);
    if (!copy) return lt_fail("lt_sae_cfg_json: out of memory");
    *out = copy;
    return LT_OK;
}

/* ------------------------------------------------------------ files */

/* Reads tensor name into dst, checking its shape against the expected
 * [d0] or [d0, d1] (the names say what each dimension is). */
static int read_tensor(const lt_safetensors *st, const char *file, const char *name, int ndim,
                       const int64_t *shape, const char *dims, float *dst) {
    lt_st_tensor t;
    if (lt_st_find(st, name, &t)) return LT_ERR;
    int ok = t.ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t.shape[i] == shape[i];
    if (!ok) {
        char got[160] = "", want[64];
        size_t len = 0;
        for (int i = 0; i < t.ndim && len < sizeof got - 24; i++)
            len += (size_t)snprintf(got + len, sizeof got - len, "%s%lld", i ? ", " : "", (long long)t.shape[i]);
        if (ndim == 1) snprintf(want, sizeof want, "%lld", (long long)shape[0]);
        else snprintf(want, sizeof want, "%lld, %lld", (long long)shape[0], (long long)shape[1]);
        return lt_fail("%s: %s has shape [%s], expected [%s] = [%s]", file, name, got, dims, want);
    }
    if (t.dtype != LT_DTYPE_F32 && t.dtype != LT_DTYPE_F16 && t.dtype != LT_DTYPE_BF16)
        return lt_fail("%s: %s must be F32, F16 or BF16", file, name);
    int64_t numel = ndim == 1 ? shape[0] : shape[0] * shape[1];
    if (lt_st_to_f32(&t, dst, numel)) return lt_fail_context("%s", file);
    return LT_OK;
}

/* An optional "scaling_factor" [L] (SAELens's finetuning_scaling_factor,
 * which multiplies z before decoding) is folded into the rows of W_dec;
 * all ones means none, as SAELens treats it. */
static int fold_scaling_factor(lt_sae *sae, const lt_safetensors *st, const char *file, int allowed) {
    lt_st_tensor t;
    int present = 0;
    for (int i = 0; i < lt_st_count(st); i++)
        if (lt_st_get(st, i, &t) == LT_OK && strcmp(t.name, "scaling_factor") == 0) present = 1;
    if (!present) return LT_OK;
    const int64_t L = sae->d_sae;
    float *s = lt_alloc((size_t)L);
    if (!s) return lt_fail_context("%s", file);
    int rc = read_tensor(st, file, "scaling_factor", 1, &L, "d_sae", s);
    int all_ones = 1;
    for (int64_t l = 0; rc == LT_OK && l < L; l++) all_ones &= s[l] == 1.0f;
    if (rc == LT_OK && !all_ones && !allowed)
        rc = lt_fail("%s: scaling_factor is present but cfg.json has finetuning_scaling_factor false", file);
    if (rc == LT_OK && !all_ones)
        for (int64_t l = 0; l < L; l++)
            for (int64_t d = 0; d < sae->d_in; d++) sae->W_dec[l * sae->d_in + d] *= s[l];
    lt_free(s);
    return rc;
}

int lt_sae_load(const char *dir, lt_sae **out) {
    if (!dir || !out) return lt_fail("lt_sae_load: NULL argument");
    *out = NULL;
    char cfg_path[4096], w_path[4096];
    if (lt_path_join(cfg_path, sizeof cfg_path, dir, "cfg.json") ||
        lt_path_join(w_path, sizeof w_path, dir, "sae_weights.safetensors"))
        return LT_ERR;

    char *text;
    if (lt_read_file(cfg_path, &text, NULL)) return lt_fail_context("cannot load SAE config");
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(text, &end, 0);
    if (!root) {
        long at = end ? (long)(end - text) : -1;
        free(text);
        return lt_fail("%s: invalid JSON near byte %ld", cfg_path, at);
    }
    free(text);

    sae_cfg c;
    lt_sae *sae = NULL;
    lt_safetensors *st = NULL;
    int rc = parse_cfg(root, cfg_path, &c);
    if (rc == LT_OK) rc = lt_sae_new(c.d_in, c.d_sae, c.arch, c.k, &sae);
    if (rc == LT_OK) {
        sae->apply_b_dec_to_input = c.apply_b_dec_to_input;
        sae->norm = c.norm;
        rc = lt_sae_set_hook_name(sae, c.hook_name);
        if (rc == LT_OK) rc = lt_sae_set_model_name(sae, c.model_name);
    }
    if (rc == LT_OK) rc = lt_st_open(w_path, &st);
    if (rc == LT_OK) {
        const int64_t enc[2] = {c.d_in, c.d_sae}, dec[2] = {c.d_sae, c.d_in};
        rc = read_tensor(st, w_path, "W_enc", 2, enc, "d_in, d_sae", sae->W_enc);
        if (rc == LT_OK) rc = read_tensor(st, w_path, "b_enc", 1, &c.d_sae, "d_sae", sae->b_enc);
        if (rc == LT_OK) rc = read_tensor(st, w_path, "W_dec", 2, dec, "d_sae, d_in", sae->W_dec);
        if (rc == LT_OK) rc = read_tensor(st, w_path, "b_dec", 1, &c.d_in, "d_in", sae->b_dec);
        if (rc == LT_OK && c.arch == LT_SAE_JUMPRELU)
            rc = read_tensor(st, w_path, "threshold", 1, &c.d_sae, "d_sae", sae->threshold);
        if (rc == LT_OK) rc = fold_scaling_factor(sae, st, w_path, c.finetuning_scaling_factor);
    }
    lt_st_close(st);
    if (rc != LT_OK) {
        lt_sae_free(sae);
        cJSON_Delete(root);
        return LT_ERR;
    }
    sae->cfg = root;
    *out = sae;
    return LT_OK;
}

/* mkdir -p: creates dir and its missing parents. */
static int make_dirs(const char *dir) {
    char buf[4096];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof buf) return lt_fail("cannot create directory '%s': bad path", dir);
    memcpy(buf, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0') continue;
        char c = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0777) != 0 && errno != EEXIST) return lt_fail("cannot create directory %s: %s", buf, strerror(errno));
        buf[i] = c;
    }
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) return lt_fail("%s is not a directory", dir);
    return LT_OK;
}

/* Writes text to path through path.tmp and a rename, so a crash never
 * leaves a half-written cfg.json. */
static int write_text(const char *path, const char *text) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return lt_fail("cannot create %s: %s", tmp, strerror(errno));
    size_t len = strlen(text);
    int rc = LT_OK;
    if (fwrite(text, 1, len, f) != len || fputc('\n', f) == EOF) rc = lt_fail("%s: write failed: %s", tmp, strerror(errno));
    if (fclose(f) != 0 && rc == LT_OK) rc = lt_fail("%s: write failed: %s", tmp, strerror(errno));
    if (rc == LT_OK && rename(tmp, path) != 0) rc = lt_fail("cannot rename %s to %s: %s", tmp, path, strerror(errno));
    if (rc != LT_OK) remove(tmp);
    return rc;
}

int lt_sae_save(const lt_sae *sae, const char *dir) {
    if (!sae || !dir) return lt_fail("lt_sae_save: NULL argument");
    char cfg_path[4096], w_path[4096];
    if (lt_path_join(cfg_path, sizeof cfg_path, dir, "cfg.json") ||
        lt_path_join(w_path, sizeof w_path, dir, "sae_weights.safetensors") || make_dirs(dir))
        return LT_ERR;

    const int64_t D = sae->d_in, L = sae->d_sae;
    const int64_t enc[2] = {D, L}, dec[2] = {L, D};
    lt_st_writer *w;
    if (lt_st_writer_new(&w)) return LT_ERR;
    int rc = lt_st_writer_add(w, "W_enc", LT_DTYPE_F32, 2, enc, sae->W_enc);
    if (rc == LT_OK) rc = lt_st_writer_add(w, "b_enc", LT_DTYPE_F32, 1, &L, sae->b_enc);
    if (rc == LT_OK) rc = lt_st_writer_add(w, "W_dec", LT_DTYPE_F32, 2, dec, sae->W_dec);
    if (rc == LT_OK) rc = lt_st_writer_add(w, "b_dec", LT_DTYPE_F32, 1, &D, sae->b_dec);
    if (rc == LT_OK && sae->threshold) rc = lt_st_writer_add(w, "threshold", LT_DTYPE_F32, 1, &L, sae->threshold);
    if (rc == LT_OK) rc = lt_st_writer_metadata(w, "format", "pt");
    if (rc == LT_OK) rc = lt_st_writer_save(w, w_path);
    lt_st_writer_free(w);
    if (rc != LT_OK) return LT_ERR;

    char *text;
    if (lt_sae_cfg_json(sae, &text)) return LT_ERR;
    rc = write_text(cfg_path, text);
    free(text);
    return rc;
}
