/*
 * attribution.c: the dense loops behind the Transformer Debugger node table
 * (lua/lantern/tdb.lua). The Lua side loops over rows of small tables; every
 * loop over d_model (write vectors, their norms and their dot products with
 * a gradient) lives here, mostly as OpenBLAS calls.
 */
#include "internal.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>

/* out[M, N] = a[M, K] @ b ([K, N], or [N, K] transposed). */
int lt_attr_matmul(const float *a, const float *b, int M, int K, int N, int trans_b, float *out) {
    if (!a || !b || !out || M < 0 || K < 0 || N < 0) return lt_fail("lt_attr_matmul: bad arguments");
    if (M == 0 || N == 0) return LT_OK;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, M, N, K, 1.0f, a, K, b,
                trans_b ? K : N, 0.0f, out, N);
    return LT_OK;
}

/* out[i] = |w[i, :]|, accumulated in double: the norms are compared across
 * thousands of rows and should not depend on summation order. */
int lt_attr_row_norms(const float *w, int rows, int cols, float *out) {
    if (!w || !out || rows < 0 || cols < 0) return lt_fail("lt_attr_row_norms: bad arguments");
    for (int i = 0; i < rows; i++) {
        const float *r = w + (size_t)i * cols;
        double s = 0;
        for (int j = 0; j < cols; j++) s += (double)r[j] * r[j];
        out[i] = (float)sqrt(s);
    }
    return LT_OK;
}

/* LayerNorm without weights, row by row (as the forward pass computes it:
 * population variance, eps inside the square root). */
int lt_attr_ln_rows(const float *x, int rows, int cols, float eps, float *out) {
    if (!x || !out || rows < 0 || cols <= 0) return lt_fail("lt_attr_ln_rows: bad arguments");
    for (int i = 0; i < rows; i++) {
        const float *r = x + (size_t)i * cols;
        float *o = out + (size_t)i * cols;
        double mean = 0, var = 0;
        for (int j = 0; j < cols; j++) mean += r[j];
        mean /= cols;
        for (int j = 0; j < cols; j++) var += (r[j] - mean) * (r[j] - mean);
        var /= cols;
        double inv = 1.0 / sqrt(var + eps);
        for (int j = 0; j < cols; j++) o[j] = (float)((r[j] - mean) * inv);
    }
    return LT_OK;
}

/* For each head h: vo_h [T, C] = v[:, h, :] [T, Dh] @ W_O[h] [Dh, C] (one
 * sgemm with row stride H*Dh), its row norms, and dots_h [T(q), T(k)] =
 * g [T, C] @ vo_h^T. Cost O(H*T*Dh*C + H*T*T*C), all in BLAS. */
int lt_attr_head_writes(const float *v, const float *wo, const float *g, int T, int H, int Dh, int C,
                        float *norms, float *dots) {
    if (!v || !wo || !g || !norms || !dots || T <= 0 || H <= 0 || Dh <= 0 || C <= 0)
        return lt_fail("lt_attr_head_writes: bad arguments");
    float *vo = malloc(sizeof(float) * (size_t)T * C);
    if (!vo) return lt_fail("lt_attr_head_writes: out of memory");
    for (int h = 0; h < H; h++) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, C, Dh, 1.0f, v + (size_t)h * Dh, H * Dh,
                    wo + (size_t)h * Dh * C, C, 0.0f, vo, C);
        lt_attr_row_norms(vo, T, C, norms + (size_t)h * T);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, C, 1.0f, g, C, vo, C, 0.0f,
                    dots + (size_t)h * T * T, T);
    }
    free(vo);
    return LT_OK;
}
