/*
 * test_sae_train.c: SAE training (core/src/sae_train.c). The hand-written
 * backward against finite differences, recovery of planted sparse
 * features by both architectures, determinism for a seed, folding the
 * input scale, and the evaluation sums against a direct computation.
 */
#include "check.h"

#include <stdint.h>

static uint64_t rng_state = 12345;

static double urand(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) * 0x1.0p-53;
}

static double nrand(void) {
    double u1 = urand() + 1e-12, u2 = urand();
    return sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2);
}

static float *param(lt_sae *s, const char *name, int64_t *n) {
    lt_view v;
    if (lt_sae_param(s, name, &v)) return NULL;
    *n = lt_view_numel(&v);
    return v.data;
}

/* Central finite differences of the loss at sampled coordinates of every
 * parameter; select(name, index) says which coordinates may be probed. */
static double fd_check(lt_sae *sae, const float *x, int64_t n, const lt_sae_train_opts *o, double variance,
                       const uint8_t *dead, int (*select)(const char *, int64_t, void *), void *ctx,
                       const char *label) {
    int64_t D = lt_sae_d_in(sae), L = lt_sae_d_sae(sae);
    lt_sae *grad = NULL;
    double loss = 0;
    CHECK_OK(lt_sae_new(D, L, lt_sae_architecture(sae), lt_sae_k(sae) ? lt_sae_k(sae) : 1, &grad));
    CHECK_OK(lt_sae_loss_grad(sae, x, n, o, variance, dead, &loss, grad));
    const char *names[4] = {"W_enc", "b_enc", "W_dec", "b_dec"};
    double worst = 0, gmax = 0;
    int probed = 0;
    for (int p = 0; p < 4; p++) {
        int64_t np = 0, ng = 0;
        float *w = param(sae, names[p], &np), *g = param(grad, names[p], &ng);
        for (int64_t j = 0; j < np; j++) gmax = fmax(gmax, fabs(g[j]));
        for (int t = 0; t < 60; t++) {
            int64_t j = (int64_t)(urand() * (double)np);
            if (select && !select(names[p], j, ctx)) continue;
            const float h = 2e-3f;
            float keep = w[j];
            double lp, lm;
            w[j] = keep + h;
            CHECK_OK(lt_sae_loss_grad(sae, x, n, o, variance, dead, &lp, grad));
            w[j] = keep - h;
            CHECK_OK(lt_sae_loss_grad(sae, x, n, o, variance, dead, &lm, grad));
            w[j] = keep;
            CHECK_OK(lt_sae_loss_grad(sae, x, n, o, variance, dead, &loss, grad));
            /* one-sided slopes that disagree: the step crossed a kink of
             * ReLU or a change of the TopK set, where no derivative exists */
            double fd = (lp - lm) / (2.0 * h), up = (lp - loss) / h, down = (loss - lm) / h;
            if (fabs(up - down) > 1e-2 * (fabs(fd) + 1e-2)) continue;
            worst = fmax(worst, fabs(fd - g[j]));
            probed++;
        }
    }
    printf("%s: %d coordinates, max |fd - grad| = %.3g (max |grad| %.3g)\n", label, probed, worst, gmax);
    CHECK(probed > 20, "%s: too few coordinates probed (%d)", label, probed);
    lt_sae_free(grad);
    return gmax > 0 ? worst / gmax : worst;
}

/* Coordinates of aux-only latents (dead and never in a row's top k) */
static int aux_only(const char *name, int64_t j, void *ctx) {
    const int64_t *dims = ctx;     /* D, L, then the dead mask as bytes */
    const uint8_t *dead = (const uint8_t *)(dims + 2);
    int64_t D = dims[0], L = dims[1];
    if (strcmp(name, "W_dec") == 0) return dead[j / D];
    if (strcmp(name, "W_enc") == 0) return dead[j % L];
    if (strcmp(name, "b_enc") == 0) return dead[j];
    return 0;
}

static void test_backward(void) {
    const int64_t D = 12, L = 24, n = 7;
    float x[7 * 12];
    for (int i = 0; i < n * D; i++) x[i] = (float)nrand();
    lt_sae_train_opts o;

    /* standard with the L1 term */
    lt_sae *s = NULL;
    CHECK_OK(lt_sae_new(D, L, LT_SAE_RELU, 0, &s));
    CHECK_OK(lt_sae_init_random(s, 5));
    int64_t nb;
    float *b_enc = param(s, "b_enc", &nb), *b_dec = param(s, "b_dec", &nb), *W_dec = param(s, "W_dec", &nb);
    for (int l = 0; l < L; l++) b_enc[l] = (float)(0.3 * nrand());
    for (int d = 0; d < D; d++) b_dec[d] = (float)(0.2 * nrand());
    for (int64_t j = 0; j < L * D; j++) W_dec[j] *= (float)(0.5 + urand());   /* norms != 1: the L1 term's gradient */
    lt_sae_train_default_opts(LT_SAE_RELU, &o);
    o.l1_coeff = 0.7f;
    double rel = fd_check(s, x, n, &o, 1.0, NULL, NULL, NULL, "standard");
    CHECK(rel < 5e-3, "standard backward: relative error %g", rel);
    lt_sae_free(s);

    /* TopK without AuxK, then AuxK on latents that only AuxK uses */
    CHECK_OK(lt_sae_new(D, L, LT_SAE_TOPK, 4, &s));
    CHECK_OK(lt_sae_init_random(s, 6));
    b_enc = param(s, "b_enc", &nb); b_dec = param(s, "b_dec", &nb);
    for (int l = 0; l < L; l++) b_enc[l] = (float)(0.3 * nrand());
    for (int d = 0; d < D; d++) b_dec[d] = (float)(0.2 * nrand());
    lt_sae_train_default_opts(LT_SAE_TOPK, &o);
    o.aux_coeff = 0;
    rel = fd_check(s, x, n, &o, 3.0, NULL, NULL, NULL, "topk");
    CHECK(rel < 5e-3, "topk backward: relative error %g", rel);

    /* dead = latents in no row's top k: their parameters reach the loss only
     * through AuxK, where the residual is a constant */
    float *z = calloc((size_t)(n * L), sizeof(float));
    CHECK_OK(lt_sae_encode(s, x, n, NULL, z));
    int64_t ctx[2 + 8] = {D, L};
    uint8_t *dead = (uint8_t *)(ctx + 2);
    int n_dead = 0;
    for (int l = 0; l < L; l++) {
        int fired = 0;
        for (int i = 0; i < n; i++) fired |= z[i * L + l] != 0;
        dead[l] = !fired;
        n_dead += dead[l];
    }
    free(z);
    CHECK(n_dead >= 4, "enough dead latents (%d)", n_dead);
    o.aux_coeff = 0.5f;
    o.k_aux = 3;
    rel = fd_check(s, x, n, &o, 3.0, dead, aux_only, ctx, "topk AuxK");
    CHECK(rel < 5e-3, "AuxK backward: relative error %g", rel);
    lt_sae_free(s);
}

/* Planted features: P unit directions in D dims; each row a non-negative
 * combination of 1 to 3 of them. */
enum { PD = 64, PP = 32 };

static void planted_rows(const float *dirs, float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float *r = x + i * PD;
        memset(r, 0, PD * sizeof(float));
        int c = 1 + (int)(urand() * 3);
        for (int j = 0; j < c; j++) {
            int f = (int)(urand() * PP);
            float a = (float)(0.5 + urand());
            for (int d = 0; d < PD; d++) r[d] += a * dirs[f * PD + d];
        }
    }
}

/* The worst over planted directions of the best cosine with a decoder row. */
static double worst_match(lt_sae *s, const float *dirs) {
    int64_t n, L = lt_sae_d_sae(s);
    float *W = param(s, "W_dec", &n);
    double worst = 1;
    for (int f = 0; f < PP; f++) {
        double best = -1;
        for (int64_t l = 0; l < L; l++) {
            double dd = 0, ww = 0;
            for (int d = 0; d < PD; d++) { dd += (double)dirs[f * PD + d] * W[l * PD + d]; ww += (double)W[l * PD + d] * W[l * PD + d]; }
            if (ww > 0) best = fmax(best, dd / sqrt(ww));
        }
        worst = fmin(worst, best);
    }
    return worst;
}

static lt_sae *train_planted(int arch, const float *dirs, uint64_t seed, lt_sae_train_stats *st) {
    lt_sae *s = NULL;
    CHECK_OK(lt_sae_new(PD, 128, arch, 4, &s));
    lt_sae_train_opts o;
    lt_sae_train_default_opts(arch, &o);
    o.batch = 256;
    o.lr = 2e-3f;
    o.seed = seed;
    o.dead_rows = 20000;
    o.l1_coeff = 0.5f;
    o.l1_warmup_steps = 300;
    o.resample_every = 500;
    o.resample_until = 2500;
    const int64_t n = 16384;
    const int buffers = 12;
    o.total_steps = buffers * (n / o.batch);
    lt_sae_trainer *t = NULL;
    CHECK_OK(lt_sae_trainer_new(s, &o, &t));
    float *x = malloc((size_t)n * PD * sizeof(float));
    planted_rows(dirs, x, n);
    CHECK_OK(lt_sae_trainer_init(t, x, n));
    for (int b = 0; b < buffers; b++) {
        planted_rows(dirs, x, n);
        CHECK_OK(lt_sae_trainer_train(t, x, n, st));
    }
    CHECK_OK(lt_sae_trainer_finish(t));
    lt_sae_trainer_free(t);
    free(x);
    return s;
}

static void test_planted(void) {
    float dirs[PP * PD];
    for (int f = 0; f < PP; f++) {
        double ss = 0;
        for (int d = 0; d < PD; d++) { dirs[f * PD + d] = (float)nrand(); ss += (double)dirs[f * PD + d] * dirs[f * PD + d]; }
        for (int d = 0; d < PD; d++) dirs[f * PD + d] /= (float)sqrt(ss);
    }
    const int archs[2] = {LT_SAE_TOPK, LT_SAE_RELU};
    const char *names[2] = {"topk", "standard"};
    for (int a = 0; a < 2; a++) {
        lt_sae_train_stats st;
        uint64_t keep = rng_state;
        lt_sae *s = train_planted(archs[a], dirs, 7, &st);
        double w = worst_match(s, dirs);
        printf("planted %s: worst best-cosine %.4f; last buffer: EV %.4f, L0 %.2f, dead %.3f, loss %.4g, resampled %lld\n",
               names[a], w, st.explained_variance, st.l0, st.dead_fraction, st.loss, (long long)st.resampled);
        CHECK(w > 0.9, "%s: every planted direction matched by a decoder row with cosine > 0.9 (worst %.4f)", names[a], w);
        CHECK(st.explained_variance > 0.9, "%s: explained variance %.4f", names[a], st.explained_variance);
        if (a == 0) {
            /* the same seed and data give the same weights, bit for bit */
            rng_state = keep;
            lt_sae_train_stats st2;
            lt_sae *s2 = train_planted(archs[a], dirs, 7, &st2);
            int64_t n1, n2;
            const char *pn[4] = {"W_enc", "b_enc", "W_dec", "b_dec"};
            double diff = 0;
            for (int p = 0; p < 4; p++) {
                float *p1 = param(s, pn[p], &n1), *p2 = param(s2, pn[p], &n2);
                diff = fmax(diff, check_max_abs_diff(p1, p2, n1));
            }
            CHECK(diff == 0, "same seed, same weights (max diff %g)", diff);
            lt_sae_free(s2);
        }
        lt_sae_free(s);
    }
}

/* finish folds the input scale: the folded SAE on raw x gives the latents
 * of the unfolded one on scaled x, and x_hat at the raw scale. */
static void test_fold(void) {
    const int64_t D = 16, L = 32, n = 64;
    float *x = malloc(n * D * sizeof(float)), *xs = malloc(n * D * sizeof(float));
    for (int i = 0; i < n * D; i++) x[i] = (float)(3.0 * nrand() + 1.0);
    lt_sae *s = NULL;
    CHECK_OK(lt_sae_new(D, L, LT_SAE_TOPK, 4, &s));
    lt_sae_train_opts o;
    lt_sae_train_default_opts(LT_SAE_TOPK, &o);
    o.batch = 16;
    lt_sae_trainer *t = NULL;
    CHECK_OK(lt_sae_trainer_new(s, &o, &t));
    CHECK_OK(lt_sae_trainer_init(t, x, n));
    CHECK_OK(lt_sae_trainer_train(t, x, n, NULL));
    double sc = lt_sae_trainer_scale(t);
    double mean_norm = 0;
    for (int i = 0; i < n; i++) {
        double ss = 0;
        for (int d = 0; d < D; d++) ss += (double)x[i * D + d] * x[i * D + d];
        mean_norm += sqrt(ss) / n;
    }
    CHECK(fabs(sc * mean_norm - 4.0) < 1e-4, "scale makes the mean norm sqrt(d_in): %g", sc * mean_norm);
    for (int i = 0; i < n * D; i++) xs[i] = (float)(sc * x[i]);
    float *z1 = calloc(n * L, sizeof(float)), *z2 = calloc(n * L, sizeof(float));
    float *h1 = calloc(n * D, sizeof(float)), *h2 = calloc(n * D, sizeof(float));
    CHECK_OK(lt_sae_forward(s, xs, n, z1, h1));
    CHECK_OK(lt_sae_trainer_finish(t));
    CHECK_OK(lt_sae_forward(s, x, n, z2, h2));
    CHECK(check_max_abs_diff(z1, z2, n * L) < 1e-3, "latents unchanged by folding: %g", check_max_abs_diff(z1, z2, n * L));
    for (int i = 0; i < n * D; i++) h1[i] = (float)(h1[i] / sc);
    CHECK(check_max_abs_diff(h1, h2, n * D) < 1e-3, "x_hat at the raw scale: %g", check_max_abs_diff(h1, h2, n * D));
    CHECK_FAILS(lt_sae_trainer_train(t, x, n, NULL), "finished");
    lt_sae_trainer_free(t);
    lt_sae_free(s);
    free(x); free(xs); free(z1); free(z2); free(h1); free(h2);
}

/* The evaluation sums against a direct computation. */
static void test_eval_sums(void) {
    const int64_t D = 8, L = 20, n = 1100;   /* more than one internal chunk */
    float *x = malloc(n * D * sizeof(float));
    for (int i = 0; i < n * D; i++) x[i] = (float)nrand();
    lt_sae *s = NULL;
    CHECK_OK(lt_sae_new(D, L, LT_SAE_RELU, 0, &s));
    CHECK_OK(lt_sae_init_random(s, 3));
    int64_t nb;
    float *b_enc = param(s, "b_enc", &nb);
    for (int l = 0; l < L; l++) b_enc[l] = l < 3 ? -10.0f : 0.1f;   /* three latents never fire */
    double sum_x[8] = {0};
    int64_t fires[20] = {0};
    lt_sae_eval_acc acc;
    memset(&acc, 0, sizeof acc);
    acc.sum_x = sum_x;
    acc.fires = fires;
    CHECK_OK(lt_sae_eval_accumulate(s, x, 600, &acc));
    CHECK_OK(lt_sae_eval_accumulate(s, x + 600 * D, n - 600, &acc));
    float *z = calloc(n * L, sizeof(float)), *h = calloc(n * D, sizeof(float));
    CHECK_OK(lt_sae_forward(s, x, n, z, h));
    double sq = 0, sx = 0, l0 = 0, l1 = 0, sum0 = 0;
    for (int i = 0; i < n * D; i++) { sq += ((double)x[i] - h[i]) * ((double)x[i] - h[i]); sx += (double)x[i] * x[i]; }
    for (int i = 0; i < n; i++) sum0 += x[i * D];
    int64_t f5 = 0, f0 = 0;
    for (int i = 0; i < n * L; i++) if (z[i] != 0) { l0++; l1 += fabs(z[i]); }
    for (int i = 0; i < n; i++) { f5 += z[i * L + 5] != 0; f0 += z[i * L] != 0; }
    CHECK(acc.rows == n, "rows %lld", (long long)acc.rows);
    CHECK(fabs(acc.sq_err - sq) < 1e-6 * sq, "sq_err %g vs %g", acc.sq_err, sq);
    CHECK(fabs(acc.sq_x - sx) < 1e-6 * sx, "sq_x");
    CHECK(fabs(acc.l0 - l0) < 0.5 && fabs(acc.l1 - l1) < 1e-6 * l1, "l0 %g/%g l1 %g/%g", acc.l0, l0, acc.l1, l1);
    CHECK(fabs(sum_x[0] - sum0) < 1e-6 * (fabs(sum0) + 1), "sum_x");
    CHECK(fires[5] == f5 && fires[0] == 0 && f0 == 0, "fires: %lld vs %lld", (long long)fires[5], (long long)f5);
    lt_sae_free(s);
    free(x); free(z); free(h);
}

static void test_errors(void) {
    lt_sae *s = NULL;
    lt_sae_trainer *t = NULL;
    CHECK_OK(lt_sae_new(4, 8, LT_SAE_JUMPRELU, 0, &s));
    CHECK_FAILS(lt_sae_trainer_new(s, NULL, &t), "only standard");
    lt_sae_free(s);
    CHECK_OK(lt_sae_new(4, 8, LT_SAE_RELU, 0, &s));
    CHECK_OK(lt_sae_trainer_new(s, NULL, &t));
    float x[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    CHECK_FAILS(lt_sae_trainer_train(t, x, 2, NULL), "lt_sae_trainer_init first");
    lt_sae_trainer_free(t);
    lt_sae_free(s);
}

int main(void) {
    test_backward();
    test_fold();
    test_eval_sums();
    test_errors();
    test_planted();
    return check_summary();
}
