/*
 * test_sae.c: sparse autoencoders: encode and decode against a direct
 * double-precision implementation written here, for the three
 * architectures with apply_b_dec_to_input off and on; TopK and JumpReLU
 * details; sparse decode; save and load; SAELens-format directories built
 * by hand (F32, F16, BF16, new and old config layouts); bad inputs.
 */
#include "check.h"

#include <ftw.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#define TOL 1e-5

/* ------------------------------------------------------------ helpers */

static uint64_t rng_state = 12345;

/* Uniform in [-a, a), from a fixed LCG so failures reproduce. */
static float urand(float a) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return a * (2.0f * (float)((rng_state >> 40) * 0x1.0p-24) - 1.0f);
}

static void fill(float *p, long n, float a) {
    for (long i = 0; i < n; i++) p[i] = urand(a);
}

static float *param(lt_sae *s, const char *name) {
    lt_view v;
    if (lt_sae_param(s, name, &v) != LT_OK) {
        fprintf(stderr, "param %s: %s\n", name, lt_last_error());
        exit(1);
    }
    return v.data;
}

/* Random weights with every parameter non-trivial (init_random leaves the
 * biases at zero, which would hide bias bugs). */
static lt_sae *make_sae(int D, int L, int arch, int k) {
    lt_sae *s;
    if (lt_sae_new(D, L, arch, k, &s) != LT_OK) {
        fprintf(stderr, "lt_sae_new: %s\n", lt_last_error());
        exit(1);
    }
    fill(param(s, "W_enc"), (long)D * L, 0.5f);
    fill(param(s, "W_dec"), (long)L * D, 0.5f);
    fill(param(s, "b_enc"), L, 0.3f);
    fill(param(s, "b_dec"), D, 0.5f);
    if (arch == LT_SAE_JUMPRELU) {
        float *th = param(s, "threshold");
        for (int l = 0; l < L; l++) th[l] = 0.5f * (urand(1.0f) + 1.0f);   /* [0, 1) */
    }
    return s;
}

static double dmax_abs(const double *a, const float *b, long n) {
    double m = 0;
    for (long i = 0; i < n; i++) {
        double d = fabs(a[i] - (double)b[i]);
        if (d > m || d != d) m = d;
    }
    return m;
}

static long count_nonzero(const float *p, long n) {
    long c = 0;
    for (long i = 0; i < n; i++) c += p[i] != 0.0f;
    return c;
}

/* ----------------------------------------------- the direct implementation */

/* TopK of one row by repeated selection of the best remaining entry (larger
 * value, then lower index), then ReLU: written differently from the heap in
 * sae.c on purpose. Works on doubles; chosen[] is scratch of L bytes. */
static void ref_topk(const double *pre, double *z, int L, int k, char *chosen) {
    memset(chosen, 0, (size_t)L);
    for (int l = 0; l < L; l++) z[l] = 0;
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int l = 0; l < L; l++)
            if (!chosen[l] && (best < 0 || pre[l] > pre[best])) best = l;
        chosen[best] = 1;
        z[best] = pre[best] > 0 ? pre[best] : 0;
    }
}

/* pre, z [n, L] from x [n, D] with the SAE's current parameters, in double. */
static void ref_encode(lt_sae *s, const float *x, int n, double *pre, double *z) {
    int D = (int)lt_sae_d_in(s), L = (int)lt_sae_d_sae(s), arch = lt_sae_architecture(s);
    const float *We = param(s, "W_enc"), *be = param(s, "b_enc"), *bd = param(s, "b_dec");
    const float *th = arch == LT_SAE_JUMPRELU ? param(s, "threshold") : NULL;
    int rescale = strcmp(lt_sae_normalize_activations(s), "constant_norm_rescale") == 0;
    double *in = malloc(sizeof(double) * D);
    char *chosen = malloc((size_t)L);
    for (int i = 0; i < n; i++) {
        double c = 1, ss = 0;
        for (int d = 0; d < D; d++) ss += (double)x[i * D + d] * x[i * D + d];
        if (rescale && ss > 0) c = sqrt((double)D) / sqrt(ss);
        for (int d = 0; d < D; d++) in[d] = x[i * D + d] * c - (lt_sae_apply_b_dec_to_input(s) ? bd[d] : 0.0);
        double *p = pre + (long)i * L, *o = z + (long)i * L;
        for (int l = 0; l < L; l++) {
            double acc = be[l];
            for (int d = 0; d < D; d++) acc += in[d] * We[(long)d * L + l];
            p[l] = acc;
        }
        if (arch == LT_SAE_TOPK) ref_topk(p, o, L, lt_sae_k(s), chosen);
        else if (arch == LT_SAE_JUMPRELU)
            for (int l = 0; l < L; l++) o[l] = (p[l] > th[l] && p[l] > 0) ? p[l] : 0;
        else
            for (int l = 0; l < L; l++) o[l] = p[l] > 0 ? p[l] : 0;
    }
    free(in);
    free(chosen);
}

/* x_hat [n, D] = z W_dec + b_dec in double, z given as floats. */
static void ref_decode(lt_sae *s, const float *z, int n, double *x_hat) {
    int D = (int)lt_sae_d_in(s), L = (int)lt_sae_d_sae(s);
    const float *Wd = param(s, "W_dec"), *bd = param(s, "b_dec");
    for (int i = 0; i < n; i++)
        for (int d = 0; d < D; d++) {
            double acc = bd[d];
            for (int l = 0; l < L; l++) acc += (double)z[(long)i * L + l] * Wd[(long)l * D + d];
            x_hat[(long)i * D + d] = acc;
        }
}

/* The activation applied to the library's own float pre-activations must
 * give exactly its z (same mask, same values). */
static int act_matches(lt_sae *s, const float *pre, const float *z, int n) {
    int L = (int)lt_sae_d_sae(s);
    double *p = malloc(sizeof(double) * L), *o = malloc(sizeof(double) * L);
    char *chosen = malloc((size_t)L);
    const float *th = lt_sae_architecture(s) == LT_SAE_JUMPRELU ? param(s, "threshold") : NULL;
    int ok = 1;
    for (int i = 0; ok && i < n; i++) {
        for (int l = 0; l < L; l++) p[l] = pre[(long)i * L + l];
        if (lt_sae_architecture(s) == LT_SAE_TOPK) ref_topk(p, o, L, lt_sae_k(s), chosen);
        else for (int l = 0; l < L; l++) o[l] = (p[l] > 0 && (!th || p[l] > th[l])) ? p[l] : 0;
        for (int l = 0; l < L; l++) ok &= (float)o[l] == z[(long)i * L + l];
    }
    free(p); free(o); free(chosen);
    return ok;
}

/* ------------------------------------------------------------ tests */

static const char *arch_name(int a) { return a == LT_SAE_TOPK ? "topk" : a == LT_SAE_JUMPRELU ? "jumprelu" : "relu"; }

/* Encode and decode of n rows against the direct implementation. */
static void check_against_reference(lt_sae *s, int n, const char *what) {
    int D = (int)lt_sae_d_in(s), L = (int)lt_sae_d_sae(s);
    float *x = malloc(sizeof(float) * n * D), *pre = malloc(sizeof(float) * n * L);
    float *z = malloc(sizeof(float) * n * L), *z2 = malloc(sizeof(float) * n * L);
    float *xh = malloc(sizeof(float) * n * D), *xh2 = malloc(sizeof(float) * n * D);
    double *rpre = malloc(sizeof(double) * n * L), *rz = malloc(sizeof(double) * n * L);
    double *rxh = malloc(sizeof(double) * n * D);
    fill(x, (long)n * D, 1.0f);

    CHECK_OK(lt_sae_encode(s, x, n, pre, z));
    ref_encode(s, x, n, rpre, rz);
    CHECK(dmax_abs(rpre, pre, (long)n * L) < TOL, "%s: pre-activations differ by %g", what, dmax_abs(rpre, pre, (long)n * L));
    CHECK(dmax_abs(rz, z, (long)n * L) < TOL, "%s: latents differ by %g", what, dmax_abs(rz, z, (long)n * L));
    CHECK(act_matches(s, pre, z, n), "%s: z is not act(z_pre) exactly", what);

    /* Without z_pre the activation runs in place: same result. */
    CHECK_OK(lt_sae_encode(s, x, n, NULL, z2));
    CHECK(memcmp(z, z2, sizeof(float) * n * L) == 0, "%s: encode with and without z_pre differ", what);

    CHECK_OK(lt_sae_decode(s, z, n, xh));
    ref_decode(s, z, n, rxh);
    CHECK(dmax_abs(rxh, xh, (long)n * D) < TOL, "%s: decode differs by %g", what, dmax_abs(rxh, xh, (long)n * D));

    /* lt_sae_forward = encode then decode (no normalisation here). */
    if (strcmp(lt_sae_normalize_activations(s), "constant_norm_rescale") != 0) {
        CHECK_OK(lt_sae_forward(s, x, n, z2, xh2));
        CHECK(memcmp(xh, xh2, sizeof(float) * n * D) == 0, "%s: forward differs from encode+decode", what);
    }
    free(x); free(pre); free(z); free(z2); free(xh); free(xh2); free(rpre); free(rz); free(rxh);
}

static void test_reference(void) {
    const int archs[3] = {LT_SAE_RELU, LT_SAE_TOPK, LT_SAE_JUMPRELU};
    for (int a = 0; a < 3; a++)
        for (int apply = 0; apply <= 1; apply++) {
            lt_sae *s = make_sae(24, 56, archs[a], 7);
            CHECK_OK(lt_sae_set_apply_b_dec_to_input(s, apply));
            CHECK(lt_sae_apply_b_dec_to_input(s) == apply, "apply_b_dec_to_input getter");
            char what[64];
            snprintf(what, sizeof what, "%s apply_b_dec=%d", arch_name(archs[a]), apply);
            check_against_reference(s, 37, what);
            lt_sae_free(s);
        }
    /* More rows than one internal chunk (1024), and odd sizes. */
    lt_sae *s = make_sae(5, 9, LT_SAE_TOPK, 3);
    check_against_reference(s, 2100, "topk 2100 rows");
    lt_sae_free(s);
    s = make_sae(5, 9, LT_SAE_RELU, 0);
    check_against_reference(s, 2100, "relu 2100 rows");
    lt_sae_free(s);
}

static void test_topk(void) {
    /* With every pre-activation positive, exactly k latents fire per row. */
    lt_sae *s = make_sae(16, 64, LT_SAE_TOPK, 5);
    float *be = param(s, "b_enc");
    for (int l = 0; l < 64; l++) be[l] = 20.0f + urand(1.0f);
    float x[8 * 16], z[8 * 64];
    fill(x, 8 * 16, 1.0f);
    CHECK_OK(lt_sae_encode(s, x, 8, NULL, z));
    for (int i = 0; i < 8; i++)
        CHECK(count_nonzero(z + i * 64, 64) == 5, "row %d: %ld non-zeros, expected k = 5", i, count_nonzero(z + i * 64, 64));
    CHECK(lt_sae_k(s) == 5 && lt_sae_architecture(s) == LT_SAE_TOPK, "k and architecture getters");

    /* Fewer than k positive pre-activations: only those fire (ReLU after TopK). */
    for (int l = 0; l < 64; l++) be[l] = -20.0f;
    be[3] = 25.0f; be[40] = 30.0f;
    CHECK_OK(lt_sae_encode(s, x, 8, NULL, z));
    for (int i = 0; i < 8; i++)
        CHECK(count_nonzero(z + i * 64, 64) == 2 && z[i * 64 + 3] > 0 && z[i * 64 + 40] > 0,
              "row %d: expected latents 3 and 40 only", i);
    lt_sae_free(s);

    /* Ties go to the lower index, whatever their position. */
    CHECK_OK(lt_sae_new(4, 10, LT_SAE_TOPK, 3, &s));
    be = param(s, "b_enc");
    const float vals[10] = {1, 3, 2, 3, 0.5f, 3, 3, 2, 1, 3};
    memcpy(be, vals, sizeof vals);
    float xz[4] = {0}, zz[10];
    CHECK_OK(lt_sae_set_apply_b_dec_to_input(s, 0));
    CHECK_OK(lt_sae_encode(s, xz, 1, NULL, zz));
    CHECK(zz[1] == 3 && zz[3] == 3 && zz[5] == 3 && count_nonzero(zz, 10) == 3,
          "ties: expected latents 1, 3, 5, got %g %g %g %g %g", zz[1], zz[3], zz[5], zz[6], zz[9]);
    /* k = d_sae keeps everything positive. */
    lt_sae_free(s);
    CHECK_OK(lt_sae_new(4, 10, LT_SAE_TOPK, 10, &s));
    memcpy(param(s, "b_enc"), vals, sizeof vals);
    CHECK_OK(lt_sae_encode(s, xz, 1, NULL, zz));
    CHECK(count_nonzero(zz, 10) == 10, "k = d_sae keeps all positive latents");
    lt_sae_free(s);
}

static void test_jumprelu(void) {
    /* With W_enc = 0, pre = b_enc exactly, so the thresholds can be probed
     * at their edges: a latent fires only strictly above its threshold,
     * and a negative threshold acts like 0 (the ReLU stays, as in SAELens). */
    lt_sae *s;
    CHECK_OK(lt_sae_new(3, 6, LT_SAE_JUMPRELU, 0, &s));
    float *be = param(s, "b_enc"), *th = param(s, "threshold");
    const float b[6] = {0.5f, 0.5f, 0.49f, 2.0f, -0.2f, 0.1f};
    const float t[6] = {0.4f, 0.5f, 0.5f, 1.0f, -0.5f, -0.5f};
    memcpy(be, b, sizeof b);
    memcpy(th, t, sizeof t);
    float x[3] = {1, 2, 3}, z[6], pre[6];
    CHECK_OK(lt_sae_encode(s, x, 1, pre, z));
    const float want[6] = {0.5f, 0, 0, 2.0f, 0, 0.1f};
    CHECK(memcmp(z, want, sizeof want) == 0, "jumprelu: got %g %g %g %g %g %g", z[0], z[1], z[2], z[3], z[4], z[5]);
    CHECK(memcmp(pre, b, sizeof b) == 0, "jumprelu: pre-activations equal b_enc");
    lt_view v;
    CHECK_OK(lt_sae_param(s, "threshold", &v));
    CHECK(v.ndim == 1 && v.shape[0] == 6, "threshold view shape");
    lt_sae_free(s);
}

static void test_sparse_decode(void) {
    const int n = 11, D = 20, L = 300, k = 6;
    lt_sae *s = make_sae(D, L, LT_SAE_TOPK, k);
    float *x = malloc(sizeof(float) * n * D), *z = malloc(sizeof(float) * n * L);
    float *dense = malloc(sizeof(float) * n * D), *sparse = malloc(sizeof(float) * n * D);
    double *ref = malloc(sizeof(double) * n * D);
    int32_t *idx = malloc(sizeof(int32_t) * n * (k + 2));
    float *val = malloc(sizeof(float) * n * (k + 2));
    fill(x, (long)n * D, 1.0f);
    CHECK_OK(lt_sae_encode(s, x, n, NULL, z));

    /* The pairs of each row, with two unused slots (-1) at the front. */
    for (int i = 0; i < n; i++) {
        int j = 0;
        idx[i * (k + 2) + j] = -1; val[i * (k + 2) + j++] = 5.0f;
        idx[i * (k + 2) + j] = -1; val[i * (k + 2) + j++] = 0.0f;
        for (int l = 0; l < L; l++)
            if (z[i * L + l] != 0.0f) { idx[i * (k + 2) + j] = l; val[i * (k + 2) + j++] = z[i * L + l]; }
        for (; j < k + 2; j++) { idx[i * (k + 2) + j] = -1; val[i * (k + 2) + j] = 0; }
    }
    CHECK_OK(lt_sae_decode_sparse(s, idx, val, k + 2, n, sparse));
    CHECK_OK(lt_sae_decode(s, z, n, dense));   /* k/L = 2%: the skip-zeros path */
    ref_decode(s, z, n, ref);
    CHECK(dmax_abs(ref, sparse, (long)n * D) < TOL, "sparse decode vs reference: %g", dmax_abs(ref, sparse, (long)n * D));
    CHECK(check_max_abs_diff(dense, sparse, (long)n * D) < TOL, "sparse vs dense decode: %g", check_max_abs_diff(dense, sparse, (long)n * D));

    /* A bad index is an error that writes nothing. */
    memset(sparse, 0, sizeof(float) * n * D);
    idx[3] = L;
    CHECK_FAILS(lt_sae_decode_sparse(s, idx, val, k + 2, n, sparse), "out of range");
    CHECK(count_nonzero(sparse, (long)n * D) == 0, "failed sparse decode wrote output");

    /* A dense z (half the latents on) takes the sgemm path: same answer. */
    for (long j = 0; j < (long)n * L; j++) z[j] = (j % 2) ? urand(1.0f) : 0.0f;
    CHECK_OK(lt_sae_decode(s, z, n, dense));
    ref_decode(s, z, n, ref);
    CHECK(dmax_abs(ref, dense, (long)n * D) < TOL, "dense decode vs reference: %g", dmax_abs(ref, dense, (long)n * D));
    /* An all-zero z decodes to b_dec. */
    memset(z, 0, sizeof(float) * n * L);
    CHECK_OK(lt_sae_decode(s, z, n, dense));
    CHECK(memcmp(dense, param(s, "b_dec"), sizeof(float) * D) == 0, "zero latents decode to b_dec");

    free(x); free(z); free(dense); free(sparse); free(ref); free(idx); free(val);
    lt_sae_free(s);
}

static void test_normalisation(void) {
    /* constant_norm_rescale: encode sees x scaled to norm sqrt(d_in);
     * forward gives the reconstruction back at the input's scale. */
    const int n = 5, D = 12, L = 30;
    lt_sae *s = make_sae(D, L, LT_SAE_RELU, 0);
    CHECK_OK(lt_sae_set_normalize_activations(s, "constant_norm_rescale"));
    CHECK(strcmp(lt_sae_normalize_activations(s), "constant_norm_rescale") == 0, "normalize getter");
    check_against_reference(s, n, "constant_norm_rescale");
    float x[5 * 12], z[5 * 30], xh[5 * 12];
    double rpre[5 * 30], rz[5 * 30], rxh[5 * 12];
    fill(x, n * D, 3.0f);
    CHECK_OK(lt_sae_forward(s, x, n, z, xh));
    ref_encode(s, x, n, rpre, rz);
    CHECK(dmax_abs(rz, z, n * L) < TOL, "forward latents");
    ref_decode(s, z, n, rxh);
    for (int i = 0; i < n; i++) {
        double ss = 0;
        for (int d = 0; d < D; d++) ss += (double)x[i * D + d] * x[i * D + d];
        for (int d = 0; d < D; d++) rxh[i * D + d] /= sqrt((double)D) / sqrt(ss);
    }
    CHECK(dmax_abs(rxh, xh, n * D) < TOL, "forward undoes the rescale: %g", dmax_abs(rxh, xh, n * D));
    CHECK_FAILS(lt_sae_set_normalize_activations(s, "layer_norm"), "not supported");
    CHECK_FAILS(lt_sae_fold_norm_scaling_factor(s, 2.0f), "constant_norm_rescale");

    /* Folding a scaling factor s: encode(x) afterwards = encode(s x) before,
     * and the reconstruction comes out divided by s. */
    CHECK_OK(lt_sae_set_normalize_activations(s, "expected_average_only_in"));
    float sx[5 * 12], z1[5 * 30], z2[5 * 30], xh1[5 * 12], xh2[5 * 12];
    for (int j = 0; j < n * D; j++) sx[j] = 0.5f * x[j];
    CHECK_OK(lt_sae_forward(s, sx, n, z1, xh1));
    CHECK_OK(lt_sae_fold_norm_scaling_factor(s, 0.5f));
    CHECK(strcmp(lt_sae_normalize_activations(s), "none") == 0, "folding sets normalize_activations none");
    CHECK_OK(lt_sae_forward(s, x, n, z2, xh2));
    CHECK(check_max_abs_diff(z1, z2, n * L) < TOL, "folded encode");
    for (int j = 0; j < n * D; j++) xh1[j] /= 0.5f;
    CHECK(check_max_abs_diff(xh1, xh2, n * D) < TOL, "folded decode");
    CHECK_FAILS(lt_sae_fold_norm_scaling_factor(s, 0.0f), "positive");
    lt_sae_free(s);
}

/* ------------------------------------------------------------ files */

static char tmpdir[256];

static const char *tmp_path(const char *name) {
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); exit(1); }
    fputs(text, f);
    fclose(f);
}

/* dir/cfg.json from text and dir/sae_weights.safetensors from the SAE's
 * parameters in dtype (F32, F16 or BF16); skip names a tensor to leave
 * out, extra adds a tensor "scaling_factor" [d_sae] when not NULL. */
static void write_saelens(const char *dir, const char *cfg, lt_sae *s, int dtype, const char *skip,
                          const float *scaling) {
    mkdir(dir, 0777);
    char path[600];
    snprintf(path, sizeof path, "%s/cfg.json", dir);
    write_text(path, cfg);
    const char *names[6] = {"W_enc", "b_enc", "W_dec", "b_dec", "threshold", "scaling_factor"};
    void *bufs[6] = {0};
    lt_st_writer *w;
    CHECK_OK(lt_st_writer_new(&w));
    for (int t = 0; t < 6; t++) {
        lt_view v;
        if (skip && strcmp(skip, names[t]) == 0) continue;
        if (t == 5) {
            if (!scaling) continue;
            v.data = (float *)scaling; v.ndim = 1; v.shape[0] = lt_sae_d_sae(s);
        } else if (lt_sae_param(s, names[t], &v) != LT_OK) {
            continue;   /* threshold of a non-JumpReLU SAE */
        }
        long n = (long)lt_view_numel(&v);
        const void *data = v.data;
        if (dtype != LT_DTYPE_F32) {
            uint16_t *h = malloc(sizeof(uint16_t) * n);
            for (long i = 0; i < n; i++) h[i] = dtype == LT_DTYPE_F16 ? lt_f32_to_f16(v.data[i]) : lt_f32_to_bf16(v.data[i]);
            data = bufs[t] = h;
        }
        CHECK_OK(lt_st_writer_add(w, names[t], dtype, v.ndim, v.shape, data));
    }
    snprintf(path, sizeof path, "%s/sae_weights.safetensors", dir);
    CHECK_OK(lt_st_writer_save(w, path));
    lt_st_writer_free(w);
    for (int t = 0; t < 6; t++) free(bufs[t]);
}

/* Rounds the SAE's weights through a 16-bit dtype in place, so that it
 * matches what a file in that dtype holds. */
static void round_weights(lt_sae *s, int dtype) {
    const char *names[5] = {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"};
    for (int t = 0; t < 5; t++) {
        lt_view v;
        if (lt_sae_param(s, names[t], &v) != LT_OK) continue;
        for (long i = 0; i < (long)lt_view_numel(&v); i++)
            v.data[i] = dtype == LT_DTYPE_F16 ? lt_f16_to_f32(lt_f32_to_f16(v.data[i]))
                                              : lt_bf16_to_f32(lt_f32_to_bf16(v.data[i]));
    }
}

static int same_params(lt_sae *a, lt_sae *b) {
    const char *names[5] = {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"};
    for (int t = 0; t < 5; t++) {
        lt_view va, vb;
        int ra = lt_sae_param(a, names[t], &va), rb = lt_sae_param(b, names[t], &vb);
        if (ra != rb) return 0;
        if (ra != LT_OK) continue;
        if (va.ndim != vb.ndim || lt_view_numel(&va) != lt_view_numel(&vb)) return 0;
        if (memcmp(va.data, vb.data, sizeof(float) * (size_t)lt_view_numel(&va)) != 0) return 0;
    }
    return 1;
}

/* Encodes the same rows with both SAEs; 1 if the latents agree to TOL. */
static int same_encoding(lt_sae *a, lt_sae *b) {
    int D = (int)lt_sae_d_in(a), L = (int)lt_sae_d_sae(a), n = 9;
    float *x = malloc(sizeof(float) * n * D), *za = malloc(sizeof(float) * n * L), *zb = malloc(sizeof(float) * n * L);
    fill(x, (long)n * D, 1.0f);
    int ok = lt_sae_encode(a, x, n, NULL, za) == LT_OK && lt_sae_encode(b, x, n, NULL, zb) == LT_OK &&
             check_max_abs_diff(za, zb, (long)n * L) < TOL;
    free(x); free(za); free(zb);
    return ok;
}

static void test_save_load(void) {
    const int archs[3] = {LT_SAE_RELU, LT_SAE_TOPK, LT_SAE_JUMPRELU};
    for (int a = 0; a < 3; a++) {
        lt_sae *s = make_sae(10, 33, archs[a], 4), *t = NULL;
        CHECK_OK(lt_sae_set_hook_name(s, "blocks.1.mlp.hook_post"));
        CHECK_OK(lt_sae_set_model_name(s, "gpt2-tiny"));
        CHECK_OK(lt_sae_set_apply_b_dec_to_input(s, a == 1 ? 0 : 1));
        const char *dir = tmp_path(arch_name(archs[a]));
        CHECK_OK(lt_sae_save(s, dir));
        CHECK_OK(lt_sae_load(dir, &t));
        if (!t) { lt_sae_free(s); continue; }
        CHECK(same_params(s, t), "%s: parameters differ after save and load", arch_name(archs[a]));
        CHECK(lt_sae_architecture(t) == archs[a] && lt_sae_k(t) == lt_sae_k(s) &&
              lt_sae_d_in(t) == 10 && lt_sae_d_sae(t) == 33 &&
              lt_sae_apply_b_dec_to_input(t) == lt_sae_apply_b_dec_to_input(s),
              "%s: configuration differs after save and load", arch_name(archs[a]));
        CHECK(lt_sae_hook_name(t) && strcmp(lt_sae_hook_name(t), "blocks.1.mlp.hook_post") == 0, "hook_name round trip");
        CHECK(lt_sae_model_name(t) && strcmp(lt_sae_model_name(t), "gpt2-tiny") == 0, "model_name round trip");
        CHECK(same_encoding(s, t), "%s: encoding differs after save and load", arch_name(archs[a]));
        /* Saving into an existing directory replaces the files. */
        CHECK_OK(lt_sae_save(t, dir));
        lt_sae_free(s);
        lt_sae_free(t);
    }
    /* Nested directories are created. */
    lt_sae *s = make_sae(3, 4, LT_SAE_RELU, 0), *t = NULL;
    CHECK_OK(lt_sae_save(s, tmp_path("nested/a/b")));
    CHECK_OK(lt_sae_load(tmp_path("nested/a/b"), &t));
    CHECK(t && same_params(s, t), "nested save");
    CHECK(lt_sae_hook_name(t) == NULL && lt_sae_model_name(t) == NULL, "unknown hook and model stay NULL");
    lt_sae_free(t);
    /* A path below a regular file cannot be created. */
    CHECK_FAILS(lt_sae_save(s, tmp_path("relu/cfg.json/x")), "cfg.json");
    lt_sae_free(s);
}

static void test_saelens_files(void) {
    /* SAELens 6 layout, JumpReLU, F32, apply_b_dec_to_input false, metadata. */
    lt_sae *ref = make_sae(16, 40, LT_SAE_JUMPRELU, 0), *s = NULL;
    CHECK_OK(lt_sae_set_apply_b_dec_to_input(ref, 0));
    const char *dir = tmp_path("saelens_jumprelu");
    write_saelens(dir,
        "{\"architecture\": \"jumprelu\", \"d_in\": 16, \"d_sae\": 40, \"dtype\": \"float32\",\n"
        " \"device\": \"cpu\", \"apply_b_dec_to_input\": false, \"normalize_activations\": \"none\",\n"
        " \"reshape_activations\": \"none\",\n"
        " \"metadata\": {\"model_name\": \"gpt2-small\", \"hook_name\": \"blocks.1.hook_resid_post\",\n"
        "   \"hook_head_index\": null, \"context_size\": 128, \"prepend_bos\": true,\n"
        "   \"dataset_path\": \"Skylion007/openwebtext\", \"sae_lens_version\": \"6.5.1\"}}\n",
        ref, LT_DTYPE_F32, NULL, NULL);
    CHECK_OK(lt_sae_load(dir, &s));
    if (s) {
        CHECK(lt_sae_architecture(s) == LT_SAE_JUMPRELU && !lt_sae_apply_b_dec_to_input(s), "jumprelu cfg");
        CHECK(lt_sae_hook_name(s) && strcmp(lt_sae_hook_name(s), "blocks.1.hook_resid_post") == 0, "metadata.hook_name");
        CHECK(lt_sae_model_name(s) && strcmp(lt_sae_model_name(s), "gpt2-small") == 0, "metadata.model_name");
        CHECK(same_params(ref, s), "jumprelu weights");
        check_against_reference(s, 13, "loaded jumprelu");
        /* Fields lantern does not use survive a save. */
        char *json = NULL;
        CHECK_OK(lt_sae_cfg_json(s, &json));
        CHECK(json && strstr(json, "Skylion007/openwebtext") && strstr(json, "\"context_size\""),
              "cfg passthrough: %s", json ? json : "(null)");
        lt_free(json);
        lt_sae_free(s);
    }
    lt_sae_free(ref);

    /* TopK with k nested in activation_fn_kwargs, F16 weights, the older
     * top-level hook_name and model_name. */
    ref = make_sae(16, 48, LT_SAE_TOPK, 6);
    round_weights(ref, LT_DTYPE_F16);
    dir = tmp_path("saelens_topk_f16");
    write_saelens(dir,
        "{\"architecture\": \"topk\", \"d_in\": 16, \"d_sae\": 48, \"dtype\": \"float16\",\n"
        " \"activation_fn_kwargs\": {\"k\": 6}, \"apply_b_dec_to_input\": true,\n"
        " \"normalize_activations\": \"none\", \"model_name\": \"gpt2-small\",\n"
        " \"hook_name\": \"blocks.0.mlp.hook_post\", \"hook_layer\": 0, \"context_size\": 64}\n",
        ref, LT_DTYPE_F16, NULL, NULL);
    CHECK_OK(lt_sae_load(dir, &s));
    if (s) {
        CHECK(lt_sae_architecture(s) == LT_SAE_TOPK && lt_sae_k(s) == 6, "nested k");
        CHECK(lt_sae_hook_name(s) && strcmp(lt_sae_hook_name(s), "blocks.0.mlp.hook_post") == 0, "top-level hook_name");
        CHECK(same_params(ref, s), "F16 weights load as their F32 values");
        CHECK(same_encoding(ref, s), "F16 topk encodes as expected");
        check_against_reference(s, 13, "loaded topk f16");
        lt_sae_free(s);
    }
    lt_sae_free(ref);

    /* The oldest layout: no architecture, activation_fn_str "topk",
     * hook_point, normalize_activations false, BF16. */
    ref = make_sae(8, 20, LT_SAE_TOPK, 3);
    round_weights(ref, LT_DTYPE_BF16);
    dir = tmp_path("saelens_old_bf16");
    write_saelens(dir,
        "{\"d_in\": 8, \"d_sae\": 20, \"dtype\": \"torch.bfloat16\", \"activation_fn_str\": \"topk\",\n"
        " \"activation_fn_kwargs\": {\"k\": 3}, \"hook_point\": \"blocks.0.hook_resid_pre\",\n"
        " \"model_name\": \"gpt2-small\", \"normalize_activations\": false}\n",
        ref, LT_DTYPE_BF16, NULL, NULL);
    CHECK_OK(lt_sae_load(dir, &s));
    if (s) {
        CHECK(lt_sae_architecture(s) == LT_SAE_TOPK && lt_sae_k(s) == 3 && lt_sae_apply_b_dec_to_input(s), "old topk cfg");
        CHECK(lt_sae_hook_name(s) && strcmp(lt_sae_hook_name(s), "blocks.0.hook_resid_pre") == 0, "hook_point");
        CHECK(strcmp(lt_sae_normalize_activations(s), "none") == 0, "normalize_activations false is none");
        CHECK(same_encoding(ref, s), "BF16 topk encodes as expected");
        lt_sae_free(s);
    }
    lt_sae_free(ref);

    /* A finetuning scaling factor multiplies z before decoding: folded into
     * W_dec, so decode(z) equals (z * s) W_dec + b_dec. */
    ref = make_sae(6, 10, LT_SAE_RELU, 0);
    float scaling[10];
    for (int l = 0; l < 10; l++) scaling[l] = 0.5f + 0.25f * (float)l;
    dir = tmp_path("saelens_scaling");
    write_saelens(dir,
        "{\"architecture\": \"standard\", \"d_in\": 6, \"d_sae\": 10, \"finetuning_scaling_factor\": true}",
        ref, LT_DTYPE_F32, NULL, scaling);
    CHECK_OK(lt_sae_load(dir, &s));
    if (s) {
        float z[10], xh[6];
        double r[6];
        for (int l = 0; l < 10; l++) z[l] = (float)(l % 3);
        CHECK_OK(lt_sae_decode(s, z, 1, xh));
        const float *Wd = param(ref, "W_dec"), *bd = param(ref, "b_dec");
        for (int d = 0; d < 6; d++) {
            r[d] = bd[d];
            for (int l = 0; l < 10; l++) r[d] += (double)z[l] * scaling[l] * Wd[l * 6 + d];
        }
        CHECK(dmax_abs(r, xh, 6) < TOL, "scaling factor folded: %g", dmax_abs(r, xh, 6));
        CHECK(same_encoding(ref, s), "scaling factor leaves encode alone");
        lt_sae_free(s);
    }
    /* All-ones scaling_factor is ignored even without the flag (SAELens). */
    float ones[10];
    for (int l = 0; l < 10; l++) ones[l] = 1.0f;
    dir = tmp_path("saelens_ones");
    write_saelens(dir, "{\"d_in\": 6, \"d_sae\": 10}", ref, LT_DTYPE_F32, NULL, ones);
    CHECK_OK(lt_sae_load(dir, &s));
    CHECK(s && same_params(ref, s), "all-ones scaling factor ignored");
    lt_sae_free(s);
    lt_sae_free(ref);
}

/* A directory with a given cfg.json and weights of ref (minus skip) must
 * fail to load with an error containing needle. */
static void expect_load_error(const char *name, const char *cfg, lt_sae *ref, const char *skip,
                              const float *scaling, const char *needle) {
    const char *dir = tmp_path(name);
    write_saelens(dir, cfg, ref, LT_DTYPE_F32, skip, scaling);
    lt_sae *s = NULL;
    CHECK_FAILS(lt_sae_load(dir, &s), needle);
    CHECK(s == NULL, "%s: out set on failure", name);
}

static void test_bad_inputs(void) {
    lt_sae *s = NULL;
    /* Missing files and bad configs. */
    CHECK_FAILS(lt_sae_load(tmp_path("does-not-exist"), &s), "cfg.json");
    lt_sae *ref = make_sae(16, 40, LT_SAE_RELU, 0);
    lt_sae *small = make_sae(16, 32, LT_SAE_RELU, 0);
    const char *ok_cfg = "{\"architecture\": \"standard\", \"d_in\": 16, \"d_sae\": 40}";
    expect_load_error("bad_json", "{\"d_in\": 16, \"d_sae\": 40,", ref, NULL, NULL, "invalid JSON");
    expect_load_error("not_object", "[1, 2]", ref, NULL, NULL, "expected a JSON object");
    expect_load_error("gated", "{\"architecture\": \"gated\", \"d_in\": 16, \"d_sae\": 40}", ref, NULL, NULL,
                      "unknown architecture 'gated'");
    expect_load_error("no_d_in", "{\"d_sae\": 40}", ref, NULL, NULL, "missing \"d_in\"");
    expect_load_error("bad_d_sae", "{\"d_in\": 16, \"d_sae\": 40.5}", ref, NULL, NULL, "\"d_sae\" must be an integer");
    expect_load_error("no_k", "{\"architecture\": \"topk\", \"d_in\": 16, \"d_sae\": 40}", ref, NULL, NULL,
                      "missing \"k\"");
    expect_load_error("big_k", "{\"architecture\": \"topk\", \"k\": 41, \"d_in\": 16, \"d_sae\": 40}", ref, NULL, NULL,
                      "\"k\" must be an integer in 1..d_sae = 40");
    expect_load_error("layer_norm", "{\"d_in\": 16, \"d_sae\": 40, \"normalize_activations\": \"layer_norm\"}", ref, NULL,
                      NULL, "normalize_activations 'layer_norm' is not supported");
    expect_load_error("bad_bool", "{\"d_in\": 16, \"d_sae\": 40, \"apply_b_dec_to_input\": 1}", ref, NULL, NULL,
                      "\"apply_b_dec_to_input\" must be true or false");
    expect_load_error("tanh", "{\"d_in\": 16, \"d_sae\": 40, \"activation_fn\": \"tanh-relu\"}", ref, NULL, NULL,
                      "activation function 'tanh-relu'");
    expect_load_error("rescale", "{\"architecture\": \"topk\", \"k\": 4, \"d_in\": 16, \"d_sae\": 40, "
                      "\"rescale_acts_by_decoder_norm\": true}", ref, NULL, NULL, "rescale_acts_by_decoder_norm");
    /* Weights: missing tensor, wrong shape, missing threshold, stray scale. */
    expect_load_error("no_b_dec", ok_cfg, ref, "b_dec", NULL, "tensor 'b_dec' not found");
    expect_load_error("shape", ok_cfg, small, NULL, NULL, "W_enc has shape [16, 32], expected [d_in, d_sae] = [16, 40]");
    expect_load_error("no_threshold", "{\"architecture\": \"jumprelu\", \"d_in\": 16, \"d_sae\": 40}", ref, NULL, NULL,
                      "tensor 'threshold' not found");
    float sc[40];
    for (int l = 0; l < 40; l++) sc[l] = 2.0f;
    expect_load_error("stray_scaling", ok_cfg, ref, NULL, sc, "finetuning_scaling_factor false");
    /* The error names the weights file. */
    expect_load_error("names_file", ok_cfg, ref, "W_dec", NULL, "sae_weights.safetensors");
    /* cfg.json without weights. */
    mkdir(tmp_path("no_weights"), 0777);
    write_text(tmp_path("no_weights/cfg.json"), ok_cfg);
    CHECK_FAILS(lt_sae_load(tmp_path("no_weights"), &s), "sae_weights.safetensors");
    /* A truncated weights file. */
    write_saelens(tmp_path("truncated"), ok_cfg, ref, LT_DTYPE_F32, NULL, NULL);
    CHECK(truncate(tmp_path("truncated/sae_weights.safetensors"), 100) == 0, "truncate");
    CHECK_FAILS(lt_sae_load(tmp_path("truncated"), &s), "sae_weights.safetensors");

    /* Constructor and call arguments. */
    CHECK_FAILS(lt_sae_new(0, 4, LT_SAE_RELU, 0, &s), "d_in");
    CHECK_FAILS(lt_sae_new(4, 4, 7, 0, &s), "unknown architecture");
    CHECK_FAILS(lt_sae_new(4, 4, LT_SAE_TOPK, 0, &s), "k");
    CHECK_FAILS(lt_sae_new(4, 4, LT_SAE_TOPK, 5, &s), "k");
    CHECK_FAILS(lt_sae_new(4, 4, LT_SAE_RELU, 0, NULL), "NULL");
    lt_view v;
    CHECK_FAILS(lt_sae_param(ref, "W_foo", &v), "unknown SAE parameter 'W_foo'");
    CHECK_FAILS(lt_sae_param(ref, "threshold", &v), "only for jumprelu");
    float x[16] = {0}, z[40];
    CHECK_FAILS(lt_sae_encode(ref, x, -1, NULL, z), "negative");
    CHECK_FAILS(lt_sae_encode(ref, NULL, 1, NULL, z), "NULL");
    CHECK_FAILS(lt_sae_encode(ref, x, 1, z, z), "different buffers");
    CHECK_FAILS(lt_sae_encode(NULL, x, 1, NULL, z), "NULL");
    CHECK_FAILS(lt_sae_decode(ref, NULL, 1, x), "NULL");
    CHECK_FAILS(lt_sae_decode_sparse(ref, NULL, NULL, 2, 1, x), "NULL");
    CHECK_OK(lt_sae_encode(ref, NULL, 0, NULL, NULL));   /* no rows: nothing to do */
    CHECK_FAILS(lt_sae_load(NULL, &s), "NULL");
    CHECK_FAILS(lt_sae_save(NULL, tmpdir), "NULL");
    CHECK_FAILS(lt_sae_set_normalize_activations(ref, "bogus"), "'bogus' is not supported");
    CHECK(lt_sae_d_in(NULL) == 0 && lt_sae_hook_name(NULL) == NULL, "getters accept NULL");
    lt_sae_free(NULL);
    lt_sae_free(ref);
    lt_sae_free(small);
}

static void test_random_init(void) {
    lt_sae *a, *b;
    CHECK_OK(lt_sae_new(32, 50, LT_SAE_RELU, 0, &a));
    CHECK_OK(lt_sae_new(32, 50, LT_SAE_RELU, 0, &b));
    CHECK_OK(lt_sae_init_random(a, 7));
    CHECK_OK(lt_sae_init_random(b, 7));
    CHECK(same_params(a, b), "same seed, same weights");
    const float *Wd = param(a, "W_dec"), *We = param(a, "W_enc");
    double worst = 0;
    int transposed = 1;
    for (int l = 0; l < 50; l++) {
        double ss = 0;
        for (int d = 0; d < 32; d++) {
            ss += (double)Wd[l * 32 + d] * Wd[l * 32 + d];
            transposed &= We[d * 50 + l] == Wd[l * 32 + d];
        }
        if (fabs(sqrt(ss) - 1) > worst) worst = fabs(sqrt(ss) - 1);
    }
    CHECK(worst < 1e-5, "W_dec rows unit norm (off by %g)", worst);
    CHECK(transposed, "W_enc = W_dec^T");
    CHECK(count_nonzero(param(a, "b_enc"), 50) == 0 && count_nonzero(param(a, "b_dec"), 32) == 0, "zero biases");
    CHECK_OK(lt_sae_init_random(b, 8));
    CHECK(!same_params(a, b), "another seed, other weights");
    lt_sae_free(a);
    lt_sae_free(b);
}

/* Removes the test's temporary tree, children first. */
static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb; (void)flag; (void)ftw;
    return remove(path);
}

static void remove_tree(const char *path) {
    if (nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0) fprintf(stderr, "could not remove %s\n", path);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/lantern-test-sae-XXXXXX");
    if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 1; }
    test_reference();
    test_topk();
    test_jumprelu();
    test_sparse_decode();
    test_normalisation();
    test_random_init();
    test_save_load();
    test_saelens_files();
    test_bad_inputs();
    remove_tree(tmpdir);
    return check_summary();
}
