/*
 * ops.h: the transformer's numerical kernels (ops.c), forward and backward.
 */
#ifndef LANTERN_OPS_H
#define LANTERN_OPS_H

#include <stddef.h>

void op_matmul_forward(float *out, const float *inp, const float *w, int ldw, const float *bias, int N, int K, int O);
void op_matmul_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp, const float *w, int ldw,
                        int N, int K, int O);

void op_ln_stats(float *mean, float *scale, const float *x, int N, int C, float eps);
void op_ln_normalize(float *norm, const float *x, const float *mean, const float *scale, int N, int C);
void op_ln_affine(float *out, const float *norm, const float *w, const float *b, int N, int C);
void op_ln_backward(float *dx, float *dw, float *db, const float *dout, const float *norm, const float *scale,
                    const float *w, int N, int C, int detach_scale);

void op_gelu_forward(float *out, const float *x, size_t n);
void op_gelu_backward(float *dx, const float *x, const float *dout, size_t n);

void op_attn_scores_forward(float *scores, const float *q, const float *k, int B, int T, int H, int D);
void op_attn_scores_backward(float *dq, float *dk, const float *dscores, const float *q, const float *k, int B, int T,
                             int H, int D);
void op_softmax_forward(float *pattern, const float *scores, size_t rows, int T);
void op_softmax_backward(float *dscores, const float *pattern, const float *dpattern, size_t rows, int T);
void op_attn_z_forward(float *z, const float *pattern, const float *v, int B, int T, int H, int D);
void op_attn_z_backward(float *dpattern, float *dv, const float *dz, const float *pattern, const float *v, int B, int T,
                        int H, int D);
void op_attn_result_forward(float *result, const float *z, const float *w_o, int N, int H, int D);
void op_sum_heads(float *out, const float *result, const float *bias, int N, int H, int C);

void op_add(float *out, const float *a, const float *b, size_t n);

#endif
