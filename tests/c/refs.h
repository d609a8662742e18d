/*
 * refs.h: reading the Hugging Face reference tensors of the tiny GPT-2
 * fixture (tests/fixtures/hf-gpt2-tiny2/refs.safetensors) in C tests.
 */
#ifndef LANTERN_REFS_H
#define LANTERN_REFS_H

#include "check.h"

static lt_safetensors *refs;

static void refs_open(void) {
    if (lt_st_open(check_path("tests/fixtures/hf-gpt2-tiny2/refs.safetensors"), &refs)) {
        fprintf(stderr, "%s\n", lt_last_error());
        exit(1);
    }
}

/* A reference tensor as floats (caller frees with lt_free), with its
 * element count in *n when n is not NULL. */
static float *ref(const char *key, int64_t *n) {
    lt_st_tensor t;
    if (lt_st_find(refs, key, &t)) { fprintf(stderr, "%s\n", lt_last_error()); exit(1); }
    int64_t k = 1;
    for (int d = 0; d < t.ndim; d++) k *= t.shape[d];
    float *x = lt_alloc((size_t)k);
    if (!x || lt_st_to_f32(&t, x, k)) { fprintf(stderr, "%s\n", lt_last_error()); exit(1); }
    if (n) *n = k;
    return x;
}

/* The token ids of prompt p (caller frees with free), length in *T. */
static int32_t *ref_ids(int p, int *T) {
    char key[64];
    snprintf(key, sizeof key, "p%d.ids", p);
    int64_t n;
    float *f = ref(key, &n);
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    for (int64_t i = 0; i < n; i++) ids[i] = (int32_t)f[i];
    lt_free(f);
    *T = (int)n;
    return ids;
}

#endif
