/*
 * bench.c: timing helpers for `lantern bench`: the rate of a plain sgemm,
 * measured in the same process as the benchmark it is printed next to, so
 * that a figure is always read against what the machine can do right now.
 */
#include "internal.h"

#include <cblas.h>
#include <time.h>

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int lt_bench_sgemm(int M, int N, int K, int reps, double *gflops) {
    if (M < 1 || N < 1 || K < 1 || reps < 1) return lt_fail("bench sgemm: sizes and reps must be positive");
    float *a = lt_alloc((size_t)M * K), *b = lt_alloc((size_t)K * N), *c = lt_alloc((size_t)M * N);
    if (!a || !b || !c) {
        lt_free(a); lt_free(b); lt_free(c);
        return LT_ERR;
    }
    /* small non-zero values: denormals or zeros could take other paths */
    for (size_t i = 0; i < (size_t)M * K; i++) a[i] = (float)((i % 13) + 1) * 0.01f;
    for (size_t i = 0; i < (size_t)K * N; i++) b[i] = (float)((i % 7) + 1) * 0.01f;
    /* one untimed call warms the caches and OpenBLAS's thread pool */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, a, K, b, N, 0.0f, c, N);
    double best = 0;
    for (int r = 0; r < reps; r++) {
        double t0 = now_seconds();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, a, K, b, N, 0.0f, c, N);
        double dt = now_seconds() - t0;
        if (r == 0 || dt < best) best = dt;
    }
    *gflops = 2.0 * M * N * K / best / 1e9;   /* best of reps: the least disturbed run */
    lt_free(a); lt_free(b); lt_free(c);
    return LT_OK;
}
