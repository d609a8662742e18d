/*
 * memory.c: the allocator behind every buffer the core hands out, so that
 * Lua frees all of them with one function (lt_free).
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

float *lt_alloc(size_t n) {
    size_t bytes = n * sizeof(float);
    if (n && bytes / sizeof(float) != n) { lt_fail("allocation of %zu floats overflows", n); return NULL; }
    size_t rounded = (bytes + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (!p) { lt_fail("out of memory allocating %zu floats", n); return NULL; }
    memset(p, 0, rounded ? rounded : 64);
    return p;
}

void lt_free(void *p) { free(p); }

int64_t lt_view_numel(const lt_view *v) {
    int64_t n = 1;
    for (int i = 0; i < v->ndim; i++) n *= v->shape[i];
    return n;
}

int lt_grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}
