/*
 * ops.c: the numerical kernels of the transformer, each forward beside its
 * backward, with shapes in the comments (N rows, C model width, H heads,
 * D head width, M MLP width). Matrix products go through OpenBLAS; row-wise
 * loops are split over threads with OpenMP (each row is computed by one
 * thread in a fixed order, so results do not depend on the thread count).
 */
#include "ops.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

/* ------------------------------------------------------------ matmul */

/* out[N, O] = inp[N, K] @ w[K, O] (+ bias[O]); w rows are ldw apart so a
 * column block of a wider matrix (q, k or v of c_attn) can be used. */
void op_matmul_forward(float *out, const float *inp, const float *w, int ldw, const float *bias, int N, int K, int O) {
    if (bias) {
        for (int n = 0; n < N; n++) memcpy(out + (size_t)n * O, bias, (size_t)O * sizeof(float));
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, O, K, 1.0f, inp, K, w, ldw, bias ? 1.0f : 0.0f, out, O);
}

/* Given dout[N, O]: dinp[N, K] += dout @ w^T; dw[K, O] += inp^T @ dout;
 * dbias[O] += column sums of dout. Any of dinp, dw, dbias may be NULL. */
void op_matmul_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp, const float *w, int ldw,
                        int N, int K, int O) {
    if (dinp) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, K, O, 1.0f, dout, O, w, ldw, 1.0f, dinp, K);
    if (dw) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, O, N, 1.0f, inp, K, dout, O, 1.0f, dw, ldw);
    if (dbias) {
        for (int n = 0; n < N; n++) {
            const float *d = dout + (size_t)n * O;
            for (int o = 0; o < O; o++) dbias[o] += d[o];
        }
    }
}

/* --------------------------------------------------------- layernorm */

/* LayerNorm in three steps so that hook_scale and hook_normalized can be
 * seen and edited between them, as in TransformerLens.
 * stats: mean[N], scale[N] = sqrt(var + eps) of x[N, C] (biased variance). */
void op_ln_stats(float *mean, float *scale, const float *x, int N, int C, float eps) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *xn = x + (size_t)n * C;
        double s = 0;
        for (int i = 0; i < C; i++) s += xn[i];
        double mu = s / C, v = 0;
        for (int i = 0; i < C; i++) { double d = xn[i] - mu; v += d * d; }
        mean[n] = (float)mu;
        scale[n] = sqrtf((float)(v / C) + eps);
    }
}

/* norm[N, C] = (x - mean) / scale */
void op_ln_normalize(float *norm, const float *x, const float *mean, const float *scale, int N, int C) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *xn = x + (size_t)n * C;
        float *o = norm + (size_t)n * C;
        float mu = mean[n], r = 1.0f / scale[n];
        for (int i = 0; i < C; i++) o[i] = (xn[i] - mu) * r;
    }
}

/* out[N, C] = norm * w + b */
void op_ln_affine(float *out, const float *norm, const float *w, const float *b, int N, int C) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *xn = norm + (size_t)n * C;
        float *o = out + (size_t)n * C;
        for (int i = 0; i < C; i++) o[i] = xn[i] * w[i] + b[i];
    }
}

/* Backward of out = ((x - mean) / scale) * w + b given dout[N, C]:
 * dx[N, C] += ..., dw[C] += sum dout * norm, db[C] += sum dout (dw, db may
 * be NULL). With detach_scale the scale is treated as a constant (TDB's
 * choice for attribution), so dx = dout * w / scale - mean of that. */
void op_ln_backward(float *dx, float *dw, float *db, const float *dout, const float *norm, const float *scale,
                    const float *w, int N, int C, int detach_scale) {
    if (dw || db) {
        for (int n = 0; n < N; n++) {
            const float *d = dout + (size_t)n * C, *xn = norm + (size_t)n * C;
            for (int i = 0; i < C; i++) {
                if (dw) dw[i] += d[i] * xn[i];
                if (db) db[i] += d[i];
            }
        }
    }
    if (!dx) return;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *d = dout + (size_t)n * C, *xn = norm + (size_t)n * C;
        float *dxn = dx + (size_t)n * C;
        double mean_g = 0, mean_gx = 0;
        for (int i = 0; i < C; i++) {
            float g = d[i] * w[i];
            mean_g += g;
            mean_gx += (double)g * xn[i];
        }
        mean_g /= C;
        mean_gx /= C;
        float r = 1.0f / scale[n];
        for (int i = 0; i < C; i++) {
            float g = d[i] * w[i];
            float v = (float)(g - mean_g);
            if (!detach_scale) v -= (float)(xn[i] * mean_gx);
            dxn[i] += v * r;
        }
    }
}

/* -------------------------------------------------------------- gelu */

#define GELU_K 0.7978845608028654f /* sqrt(2 / pi) */

/* gelu_new(x) = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), is
 * computed as x s with s = sigmoid(2u) = (1 + tanh(u)) / 2: the same
 * function, with one expf instead of tanhf (which costs an expm1f and was a
 * fifth of a training step's time). expf overflowing to inf gives s = 0. */
static inline float gelu_s(float v) {
    float u = GELU_K * (v + 0.044715f * v * v * v);
    return 1.0f / (1.0f + expf(-2.0f * u));
}

/* out[n] = gelu_new(x[n]) */
void op_gelu_forward(float *out, const float *x, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = x[i] * gelu_s(x[i]);
}

/* dx[n] += dout[n] * gelu_new'(x[n]); gelu_new' = s + 2 x s (1 - s) u'
 * (with 1 - tanh^2 = 4 s (1 - s)). */
void op_gelu_backward(float *dx, const float *x, const float *dout, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        float v = x[i], s = gelu_s(v);
        float du = GELU_K * (1.0f + 3.0f * 0.044715f * v * v);
        dx[i] += dout[i] * (s + 2.0f * v * s * (1.0f - s) * du);
    }
}

/* --------------------------------------------------------- attention */

/* scores[B, H, T, T] = q_h k_h^T / sqrt(D), -inf above the diagonal, from
 * q, k [B, T, H, D] (rows of width C = H * D). */
void op_attn_scores_forward(float *scores, const float *q, const float *k, int B, int T, int H, int D) {
    int C = H * D;
    float alpha = 1.0f / sqrtf((float)D);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            float *s = scores + ((size_t)b * H + h) * T * T;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, D, alpha, q + (size_t)b * T * C + h * D, C,
                        k + (size_t)b * T * C + h * D, C, 0.0f, s, T);
            for (int i = 0; i < T; i++)
                for (int j = i + 1; j < T; j++) s[(size_t)i * T + j] = -INFINITY;
        }
}

/* dq, dk [B, T, H, D] += from dscores[B, H, T, T] (masked entries carry no
 * gradient since their scores are constants). */
void op_attn_scores_backward(float *dq, float *dk, const float *dscores, const float *q, const float *k, int B, int T,
                             int H, int D) {
    int C = H * D;
    float alpha = 1.0f / sqrtf((float)D);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const float *ds = dscores + ((size_t)b * H + h) * T * T;
            size_t off = (size_t)b * T * C + h * D;
            if (dq) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, D, T, alpha, ds, T, k + off, C, 1.0f, dq + off, C);
            if (dk) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, D, T, alpha, ds, T, q + off, C, 1.0f, dk + off, C);
        }
}

/* pattern[rows, T] = softmax over each row of scores (exp(-inf) = 0, so
 * masked entries are exact zeros). */
void op_softmax_forward(float *pattern, const float *scores, size_t rows, int T) {
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const float *s = scores + r * T;
        float *p = pattern + r * T;
        float mx = -INFINITY;
        for (int j = 0; j < T; j++) if (s[j] > mx) mx = s[j];
        double sum = 0;
        for (int j = 0; j < T; j++) {
            float e = s[j] == -INFINITY ? 0.0f : expf(s[j] - mx);
            p[j] = e;
            sum += e;
        }
        float inv = (float)(1.0 / sum);
        for (int j = 0; j < T; j++) p[j] *= inv;
    }
}

/* dscores[rows, T] = p * (dp - sum(p * dp)) (overwrites dscores). */
void op_softmax_backward(float *dscores, const float *pattern, const float *dpattern, size_t rows, int T) {
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const float *p = pattern + r * T, *dp = dpattern + r * T;
        float *ds = dscores + r * T;
        double dot = 0;
        for (int j = 0; j < T; j++) dot += (double)p[j] * dp[j];
        for (int j = 0; j < T; j++) ds[j] = p[j] * (dp[j] - (float)dot);
    }
}

/* z[B, T, H, D] = pattern_h [T, T] @ v_h [T, D] for every (b, h). */
void op_attn_z_forward(float *z, const float *pattern, const float *v, int B, int T, int H, int D) {
    int C = H * D;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const float *p = pattern + ((size_t)b * H + h) * T * T;
            size_t off = (size_t)b * T * C + h * D;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, D, T, 1.0f, p, T, v + off, C, 0.0f, z + off, C);
        }
}

/* dpattern[B, H, T, T] = dz_h @ v_h^T (overwrites); dv[B, T, H, D] += pattern_h^T @ dz_h. */
void op_attn_z_backward(float *dpattern, float *dv, const float *dz, const float *pattern, const float *v, int B, int T,
                        int H, int D) {
    int C = H * D;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const float *p = pattern + ((size_t)b * H + h) * T * T;
            size_t off = (size_t)b * T * C + h * D;
            if (dpattern)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, D, 1.0f, dz + off, C, v + off, C, 0.0f,
                            dpattern + ((size_t)b * H + h) * T * T, T);
            if (dv) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, D, T, 1.0f, p, T, dz + off, C, 1.0f, dv + off, C);
        }
}

/* result[N, H, C] = z_h [N, D] @ W_O[h] [D, C] for every head: each head's
 * write into the residual stream, without b_O. */
void op_attn_result_forward(float *result, const float *z, const float *w_o, int N, int H, int D) {
    int C = H * D;
    for (int h = 0; h < H; h++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, D, 1.0f, z + h * D, C, w_o + (size_t)h * D * C, C,
                    0.0f, result + (size_t)h * C, H * C);
}

/* out[N, C] = sum over heads of result[N, H, C] + bias */
void op_sum_heads(float *out, const float *result, const float *bias, int N, int H, int C) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float *o = out + (size_t)n * C;
        for (int i = 0; i < C; i++) o[i] = bias[i];
        for (int h = 0; h < H; h++) {
            const float *r = result + ((size_t)n * H + h) * C;
            for (int i = 0; i < C; i++) o[i] += r[i];
        }
    }
}

/* ----------------------------------------------------------- helpers */

/* out[n] = a[n] + b[n] (out may alias a or b) */
void op_add(float *out, const float *a, const float *b, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}
