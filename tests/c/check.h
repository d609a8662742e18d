/*
 * check.h: the assertions of the C tests. Each test program counts its
 * checks and exits non-zero if any failed, printing "N passed, N failed".
 */
#ifndef LANTERN_CHECK_H
#define LANTERN_CHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lantern.h"
#include "internal.h"

static int check_passed, check_failed;

#define CHECK(cond, ...) do { \
    if (cond) check_passed++; \
    else { check_failed++; fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
           fprintf(stderr, __VA_ARGS__); fprintf(stderr, "\n"); } } while (0)

/* A call that must succeed; prints lt_last_error() otherwise. */
#define CHECK_OK(call) do { \
    if ((call) == LT_OK) check_passed++; \
    else { check_failed++; fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call, lt_last_error()); } } while (0)

/* A call that must fail with a message containing `needle`. */
#define CHECK_FAILS(call, needle) do { \
    if ((call) == LT_OK) { check_failed++; fprintf(stderr, "%s:%d: %s succeeded, expected an error with '%s'\n", __FILE__, __LINE__, #call, needle); } \
    else if (!strstr(lt_last_error(), needle)) { check_failed++; fprintf(stderr, "%s:%d: %s: error '%s' lacks '%s'\n", __FILE__, __LINE__, #call, lt_last_error(), needle); } \
    else check_passed++; } while (0)

static inline double check_max_abs_diff(const float *a, const float *b, long n) {
    double m = 0;
    for (long i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m || d != d) m = d;
    }
    return m;
}

static inline int check_summary(void) {
    printf("%d passed, %d failed\n", check_passed, check_failed);
    return check_failed ? 1 : 0;
}

/* Path of a file under the project root (LANTERN_ROOT, default "."). */
static inline const char *check_path(const char *rel) {
    static char buf[4][1024];
    static int k;
    const char *root = getenv("LANTERN_ROOT");
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", root ? root : ".", rel);
    return buf[k];
}

/* A whole file, NUL-terminated (caller frees with free), or NULL. */
static inline char *check_read_file(const char *path, size_t *len) {
    char *data;
    return lt_read_file(path, &data, len) == LT_OK ? data : NULL;
}

#endif
