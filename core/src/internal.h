/*
 * internal.h: helpers shared by the core's source files (not public).
 */
#ifndef LANTERN_INTERNAL_H
#define LANTERN_INTERNAL_H

#include "lantern.h"

#include <stdio.h>

/* Records a printf-style message as this thread's last error and returns
 * LT_ERR, so that failures read `return lt_fail("...", ...);`. */
int lt_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Prepends "prefix: " to the current error message (for context such as a
 * file name) and returns LT_ERR. */
int lt_fail_context(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Reads a whole file into a NUL-terminated buffer (caller frees with free). */
int lt_read_file(const char *path, char **data, size_t *len);

/* Makes *p hold at least need elements of size elem, growing by doubling
 * (from 64). 0 on success; on failure *p is unchanged and -1 is returned
 * (no error message is set: callers add their own). */
int lt_grow(void **p, size_t *cap, size_t need, size_t elem);

/* Joins dir and name into buf (an error if it does not fit). */
int lt_path_join(char *buf, size_t n, const char *dir, const char *name);

#endif
