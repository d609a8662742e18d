/*
 * topk.h: a bounded min-heap that keeps the k best (value, index) pairs,
 * shared by TopK encoding (sae.c) and TopK/AuxK training (sae_train.c).
 * Most candidates cost one comparison with the root.
 */
#ifndef LANTERN_TOPK_H
#define LANTERN_TOPK_H

#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct topk_entry { float v; int32_t i; } topk_entry;

/* Callers keep one heap per OpenMP thread: how many threads a parallel
 * region may have, and which one is running. */
static inline int topk_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static inline int topk_thread(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* The strict order of TopK: a larger value ranks higher, and of equal
 * values the lower index; so the selected set never depends on the order
 * in which candidates are seen. */
static inline int topk_below(topk_entry a, topk_entry b) {
    return a.v < b.v || (a.v == b.v && a.i > b.i);
}

/* Offers c to the heap h of *n entries (at most k; lowest-ranked at the
 * root). */
static inline void topk_push(topk_entry *h, int *n, int k, topk_entry c) {
    int p;
    if (*n < k) {
        p = (*n)++;
        h[p] = c;
        while (p > 0 && topk_below(h[p], h[(p - 1) / 2])) {
            topk_entry t = h[p]; h[p] = h[(p - 1) / 2]; h[(p - 1) / 2] = t;
            p = (p - 1) / 2;
        }
        return;
    }
    if (!topk_below(h[0], c)) return;
    h[0] = c;
    for (p = 0;;) {
        int ch = 2 * p + 1;
        if (ch >= *n) return;
        if (ch + 1 < *n && topk_below(h[ch + 1], h[ch])) ch++;
        if (!topk_below(h[ch], h[p])) return;
        topk_entry t = h[p]; h[p] = h[ch]; h[ch] = t;
        p = ch;
    }
}

#endif
