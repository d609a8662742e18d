/*
 * safetensors.c: reading and writing the Hugging Face .safetensors format,
 * and the fp16/bf16 <-> fp32 conversions that go with it.
 *
 * A file is: 8 bytes little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
 *  "__metadata__": {"key": "value"}}, then the data section; offsets are
 * relative to the start of the data section.
 *
 * Reading maps the file read-only and keeps the mapping for the life of the
 * handle, so tensor data is never copied until lt_st_to_f32. Every field of
 * the header is validated before a handle is returned (see
 * docs/safetensors.md), so that callers can trust data/nbytes without
 * re-checking. Tensors are kept in the order their entries appear in the
 * header JSON (for files written by Hugging Face that is name order; for
 * files from lt_st_writer_save it is the order of lt_st_writer_add).
 *
 * Multi-byte values are little-endian in the file; F32/I32/I64 are copied
 * with memcpy, which assumes a little-endian host (x86-64, aarch64).
 */
#include "internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

/* The same limit as the reference implementation: a larger header is far
 * more likely a corrupt length than a real file. */
#define ST_MAX_HEADER 100000000ull
#define ST_MAX_DIMS 8
/* Largest integer a JSON number (a double in cJSON) holds exactly. */
#define ST_MAX_JSON_INT 9007199254740992.0

/* One __metadata__ entry. */
struct st_kv {
    char *key, *val;
};

struct st_entry {
    char *name;
    int dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t begin, end;   /* byte range within the data section */
};

struct lt_safetensors {
    char *path;
    const unsigned char *map;
    size_t map_len;
    const unsigned char *data;   /* start of the data section in the mapping */
    uint64_t data_len;
    struct st_entry *t;
    int n;
    struct st_entry **by_name;   /* sorted by name, for lt_st_find */
    struct st_kv *meta;
    int n_meta;
    int has_meta;                /* seen __metadata__ (it may be empty) */
};

/* ------------------------------------------------------------ dtypes */

static const char *const dtype_names[] = { "F32", "F16", "BF16", "I32", "I64" };
static const size_t dtype_sizes[] = { 4, 2, 2, 4, 8 };
enum { N_DTYPES = 5 };

/* Index of the dtype called s, or -1. */
static int dtype_from_name(const char *s) {
    for (int i = 0; i < N_DTYPES; i++)
        if (strcmp(s, dtype_names[i]) == 0) return i;
    return -1;
}

static int dtype_valid(int dtype) { return dtype >= 0 && dtype < N_DTYPES; }

/* Element count of a shape, or -1 when the product does not fit in 63 bits
 * (a crafted header could otherwise wrap it around to a small number). */
static int64_t shape_numel(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return -1;
        if (shape[i] != 0 && n > INT64_MAX / shape[i]) return -1;
        n *= shape[i];
    }
    return n;
}

/* Byte size of numel elements of dtype, or -1 on overflow. */
static int64_t bytes_for(int64_t numel, int dtype) {
    int64_t sz = (int64_t)dtype_sizes[dtype];
    if (numel < 0 || numel > INT64_MAX / sz) return -1;
    return numel * sz;
}

/* ------------------------------------------------------- conversions */

static float f32_from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t bits_from_f32(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* Exact: every fp16 value is representable in fp32. */
float lt_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    if (exp == 0) {
        /* Zero or subnormal: mant * 2^-24, which fp32 holds as a normal. */
        float v = ldexpf((float)mant, -24);
        return sign ? -v : v;
    }
    if (exp == 31)  /* inf (mant 0) or nan; the payload moves up unchanged */
        return f32_from_bits(sign | 0x7f800000u | (mant << 13));
    return f32_from_bits(sign | ((exp - 15 + 127) << 23) | (mant << 13));
}

/* Exact: bf16 is the top half of an fp32. */
float lt_bf16_to_f32(uint16_t h) { return f32_from_bits((uint32_t)h << 16); }

/* Rounds to nearest, ties to even. Values at or above 65520 become inf,
 * values below 2^-25 become (signed) zero, nan stays a (quiet) nan. */
uint16_t lt_f32_to_f16(float f) {
    uint32_t x = bits_from_f32(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t exp = (x >> 23) & 0xff;
    uint32_t mant = x & 0x7fffff;

    if (exp == 255)  /* inf, or nan kept quiet so a payload-less one stays nan */
        return mant ? (uint16_t)(sign | 0x7e00 | (mant >> 13)) : (uint16_t)(sign | 0x7c00);
    int e = (int)exp - 127;
    if (exp == 0 || e < -25)  /* below half the smallest fp16 subnormal */
        return sign;
    if (e > 15)
        return (uint16_t)(sign | 0x7c00);

    if (e >= -14) {
        /* Normal: keep 10 mantissa bits, round on the 13 dropped ones. A
         * carry out of the mantissa correctly bumps the exponent, up to
         * 0x7c00 (inf) for values that round past 65504. */
        uint32_t h = ((uint32_t)(e + 15) << 10) | (mant >> 13);
        uint32_t rest = mant & 0x1fff;
        if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
        return (uint16_t)(sign | h);
    }
    /* Subnormal result: the value is m * 2^(e-23) with the implicit bit in
     * m, and a subnormal fp16 is k * 2^-24, so k = m >> -(e+1), rounded.
     * A carry to k = 0x400 is exactly the smallest normal. */
    uint32_t m = mant | 0x800000;
    int shift = -(e + 1);   /* 14..24 */
    uint32_t k = m >> shift;
    uint32_t rest = m & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rest > half || (rest == half && (k & 1))) k++;
    return (uint16_t)(sign | k);
}

/* Rounds to nearest, ties to even; nan stays nan (forced quiet, since
 * truncating a payload held only in the low bits would give inf). */
uint16_t lt_f32_to_bf16(float f) {
    uint32_t x = bits_from_f32(f);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x0040);
    /* Adding 0x7fff plus the lowest kept bit rounds ties to even; a carry
     * into the exponent (up to inf) is the correct result. No overflow:
     * x <= 0xff800000 here. */
    x += 0x7fffu + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

/* ------------------------------------------------------------ reading */

void lt_st_close(lt_safetensors *st) {
    if (!st) return;
    if (st->map) munmap((void *)st->map, st->map_len);
    for (int i = 0; i < st->n; i++) free(st->t[i].name);
    free(st->t);
    free(st->by_name);
    for (int i = 0; i < st->n_meta; i++) { free(st->meta[i].key); free(st->meta[i].val); }
    free(st->meta);
    free(st->path);
    free(st);
}

/* Reads a JSON number that must be an integer in [0, 2^53] (beyond that a
 * double is no longer exact). Returns 0, or -1 for anything else. */
static int json_uint(const cJSON *item, uint64_t *out) {
    if (!cJSON_IsNumber(item)) return -1;
    double d = item->valuedouble;
    if (!(d >= 0 && d <= ST_MAX_JSON_INT) || d != floor(d)) return -1;
    *out = (uint64_t)d;
    return 0;
}

/* A short text of a JSON value for error messages (caller frees). */
static char *json_text(const cJSON *item) {
    char *s = item ? cJSON_PrintUnformatted(item) : NULL;
    return s ? s : strdup("(missing)");
}

/* Copies __metadata__ (an object of string values) into the handle. */
static int parse_metadata(lt_safetensors *st, const cJSON *meta) {
    if (!cJSON_IsObject(meta))
        return lt_fail("__metadata__ in %s is not a JSON object", st->path);
    st->has_meta = 1;
    st->meta = calloc((size_t)cJSON_GetArraySize(meta) + 1, sizeof *st->meta);
    if (!st->meta) return lt_fail("out of memory reading %s", st->path);
    const cJSON *kv;
    cJSON_ArrayForEach(kv, meta) {
        if (!cJSON_IsString(kv))
            return lt_fail("__metadata__ value for key '%s' in %s is not a string", kv->string, st->path);
        struct st_kv *m = &st->meta[st->n_meta];
        m->key = strdup(kv->string);
        m->val = strdup(kv->valuestring);
        st->n_meta++;   /* counted now so that close frees a partial pair */
        if (!m->key || !m->val) return lt_fail("out of memory reading %s", st->path);
    }
    return LT_OK;
}

/* Validates one tensor entry of the header into *t (name already set). */
static int parse_tensor(const lt_safetensors *st, const cJSON *entry, struct st_entry *t) {
    const char *name = t->name, *path = st->path;
    if (!cJSON_IsObject(entry))
        return lt_fail("entry for tensor %s in %s is not a JSON object", name, path);

    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(entry, "dtype");
    if (!cJSON_IsString(dt))
        return lt_fail("missing or non-string dtype for tensor %s in %s", name, path);
    t->dtype = dtype_from_name(dt->valuestring);
    if (t->dtype < 0)
        return lt_fail("unknown dtype %s for tensor %s in %s", dt->valuestring, name, path);

    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(entry, "shape");
    if (!cJSON_IsArray(shape))
        return lt_fail("missing or non-array shape for tensor %s in %s", name, path);
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > ST_MAX_DIMS)
        return lt_fail("shape of tensor %s in %s has %d dimensions (at most %d supported)",
                       name, path, ndim, ST_MAX_DIMS);
    t->ndim = ndim;
    const cJSON *d;
    int i = 0;
    cJSON_ArrayForEach(d, shape) {
        uint64_t v;
        if (json_uint(d, &v) < 0) {
            char *s = json_text(d);
            lt_fail("shape of tensor %s in %s: dimension %d must be a non-negative integer, got %s",
                    name, path, i, s);
            free(s);
            return LT_ERR;
        }
        t->shape[i++] = (int64_t)v;
    }
    int64_t numel = shape_numel(ndim, t->shape);
    int64_t want = numel < 0 ? -1 : bytes_for(numel, t->dtype);
    if (want < 0)
        return lt_fail("shape of tensor %s in %s is too large (element count overflows)", name, path);

    const cJSON *off = cJSON_GetObjectItemCaseSensitive(entry, "data_offsets");
    if (!off)
        return lt_fail("missing data_offsets for tensor %s in %s", name, path);
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 ||
        json_uint(cJSON_GetArrayItem(off, 0), &t->begin) < 0 ||
        json_uint(cJSON_GetArrayItem(off, 1), &t->end) < 0) {
        char *s = json_text(off);
        lt_fail("data_offsets of tensor %s in %s must be [begin, end] of non-negative integers, got %s",
                name, path, s);
        free(s);
        return LT_ERR;
    }
    if (t->begin > t->end)
        return lt_fail("data_offsets [%llu, %llu] of tensor %s in %s: begin is after end",
                       (unsigned long long)t->begin, (unsigned long long)t->end, name, path);
    if (t->end > st->data_len)
        return lt_fail("data_offsets [%llu, %llu] of tensor %s in %s lie outside the data section (%llu bytes)",
                       (unsigned long long)t->begin, (unsigned long long)t->end, name, path,
                       (unsigned long long)st->data_len);
    if (t->end - t->begin != (uint64_t)want) {
        char *s = json_text(shape);
        lt_fail("tensor %s in %s: data_offsets span %llu bytes but shape %s of %s needs %lld bytes",
                name, path, (unsigned long long)(t->end - t->begin), s, dtype_names[t->dtype],
                (long long)want);
        free(s);
        return LT_ERR;
    }
    return LT_OK;
}

static int cmp_by_begin(const void *a, const void *b) {
    const struct st_entry *x = *(struct st_entry *const *)a, *y = *(struct st_entry *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static int cmp_by_name(const void *a, const void *b) {
    return strcmp((*(struct st_entry *const *)a)->name, (*(struct st_entry *const *)b)->name);
}

/* Rejects overlapping byte ranges (they would let two tensors alias) and
 * duplicate names (JSON allows them; lookups would be ambiguous). Leaves
 * st->by_name sorted by name. */
static int check_ranges_and_names(lt_safetensors *st) {
    if (st->n == 0) return LT_OK;
    struct st_entry **order = malloc((size_t)st->n * sizeof *order);
    st->by_name = malloc((size_t)st->n * sizeof *st->by_name);
    if (!order || !st->by_name) { free(order); return lt_fail("out of memory reading %s", st->path); }
    for (int i = 0; i < st->n; i++) order[i] = st->by_name[i] = &st->t[i];

    /* In begin order, a non-empty range overlaps an earlier one exactly when
     * it starts before the furthest end seen so far. Empty ranges hold no
     * bytes, so they overlap nothing. */
    qsort(order, (size_t)st->n, sizeof *order, cmp_by_begin);
    const struct st_entry *furthest = NULL;
    for (int i = 0; i < st->n; i++) {
        const struct st_entry *t = order[i];
        if (t->begin == t->end) continue;
        if (furthest && t->begin < furthest->end) {
            lt_fail("tensors %s [%llu, %llu] and %s [%llu, %llu] in %s overlap",
                    furthest->name, (unsigned long long)furthest->begin, (unsigned long long)furthest->end,
                    t->name, (unsigned long long)t->begin, (unsigned long long)t->end, st->path);
            free(order);
            return LT_ERR;
        }
        if (!furthest || t->end > furthest->end) furthest = t;
    }
    free(order);

    qsort(st->by_name, (size_t)st->n, sizeof *st->by_name, cmp_by_name);
    for (int i = 1; i < st->n; i++)
        if (strcmp(st->by_name[i - 1]->name, st->by_name[i]->name) == 0)
            return lt_fail("duplicate tensor %s in %s", st->by_name[i]->name, st->path);
    return LT_OK;
}

/* Parses and validates the header JSON of st (mapping already set up). */
static int parse_header(lt_safetensors *st, const char *json, size_t len) {
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root) {
        size_t at = end && end >= json ? (size_t)(end - json) : 0;
        return lt_fail("header of %s is not valid JSON (error near byte %zu of %zu)", st->path, at, len);
    }
    /* Only whitespace (the format's padding) may follow the JSON value. */
    for (const char *p = end; p < json + len; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            cJSON_Delete(root);
            return lt_fail("header of %s has trailing bytes after the JSON (at byte %zu)",
                           st->path, (size_t)(p - json));
        }
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return lt_fail("header of %s is not a JSON object", st->path);
    }

    int rc = LT_OK;
    int cap = cJSON_GetArraySize(root);
    st->t = calloc((size_t)cap + 1, sizeof *st->t);
    if (!st->t) { cJSON_Delete(root); return lt_fail("out of memory reading %s", st->path); }
    const cJSON *item;
    cJSON_ArrayForEach(item, root) {
        if (strcmp(item->string, "__metadata__") == 0) {
            if (st->has_meta) { rc = lt_fail("duplicate __metadata__ in %s", st->path); break; }
            if ((rc = parse_metadata(st, item)) != LT_OK) break;
            continue;
        }
        struct st_entry *t = &st->t[st->n];
        if (!(t->name = strdup(item->string))) { rc = lt_fail("out of memory reading %s", st->path); break; }
        st->n++;   /* counted now so that close frees the name on failure */
        if ((rc = parse_tensor(st, item, t)) != LT_OK) break;
    }
    cJSON_Delete(root);
    if (rc != LT_OK) return rc;
    return check_ranges_and_names(st);
}

int lt_st_open(const char *path, lt_safetensors **out) {
    if (!out) return lt_fail("lt_st_open: out is NULL");
    *out = NULL;
    if (!path) return lt_fail("lt_st_open: path is NULL");

    lt_safetensors *st = calloc(1, sizeof *st);
    if (!st || !(st->path = strdup(path))) { free(st); return lt_fail("out of memory opening %s", path); }

    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) { lt_fail("cannot open %s: %s", path, strerror(errno)); goto fail; }
    struct stat sb;
    if (fstat(fd, &sb) != 0) { lt_fail("cannot stat %s: %s", path, strerror(errno)); close(fd); goto fail; }
    if (!S_ISREG(sb.st_mode)) { lt_fail("%s is not a regular file", path); close(fd); goto fail; }
    size_t size = (size_t)sb.st_size;
    /* Checked before mmap, which cannot map an empty file. */
    if (size < 8) {
        lt_fail("%s is too small to be a safetensors file (%zu bytes, need at least 8)", path, size);
        close(fd);
        goto fail;
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd);   /* the mapping keeps the file alive by itself */
    if (map == MAP_FAILED) { lt_fail("cannot map %s: %s", path, strerror(map_errno)); goto fail; }
    st->map = map;
    st->map_len = size;

    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | st->map[i];
    if (n == 0) { lt_fail("%s: header length is 0", path); goto fail; }
    if (n > ST_MAX_HEADER) {
        lt_fail("%s: header length %llu is over the %llu-byte limit (corrupt file?)",
                path, (unsigned long long)n, ST_MAX_HEADER);
        goto fail;
    }
    if (n > size - 8) {
        lt_fail("%s: header length %llu exceeds the file size (%zu bytes; truncated file?)",
                path, (unsigned long long)n, size);
        goto fail;
    }
    st->data = st->map + 8 + n;
    st->data_len = size - 8 - n;
    if (parse_header(st, (const char *)st->map + 8, (size_t)n) != LT_OK) goto fail;
    *out = st;
    return LT_OK;

fail:
    lt_st_close(st);
    return LT_ERR;
}

int lt_st_count(const lt_safetensors *st) { return st ? st->n : 0; }

/* Fills the public description of entry t. */
static void describe(const lt_safetensors *st, const struct st_entry *t, lt_st_tensor *out) {
    memset(out, 0, sizeof *out);
    out->name = t->name;
    out->dtype = t->dtype;
    out->ndim = t->ndim;
    memcpy(out->shape, t->shape, sizeof t->shape);
    out->data = st->data + t->begin;
    out->nbytes = (size_t)(t->end - t->begin);
}

int lt_st_get(const lt_safetensors *st, int i, lt_st_tensor *out) {
    if (!st || !out) return lt_fail("lt_st_get: NULL argument");
    if (i < 0 || i >= st->n)
        return lt_fail("tensor index %d out of range: %s has %d tensors", i, st->path, st->n);
    describe(st, &st->t[i], out);
    return LT_OK;
}

int lt_st_find(const lt_safetensors *st, const char *name, lt_st_tensor *out) {
    if (!st || !name || !out) return lt_fail("lt_st_find: NULL argument");
    int lo = 0, hi = st->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(name, st->by_name[mid]->name);
        if (c == 0) { describe(st, st->by_name[mid], out); return LT_OK; }
        if (c < 0) hi = mid - 1; else lo = mid + 1;
    }
    return lt_fail("tensor '%s' not found in %s", name, st->path);
}

const char *lt_st_metadata(const lt_safetensors *st, const char *key) {
    if (!st || !key) return NULL;
    for (int i = 0; i < st->n_meta; i++)
        if (strcmp(st->meta[i].key, key) == 0) return st->meta[i].val;
    return NULL;
}

int lt_st_to_f32(const lt_st_tensor *t, float *dst, int64_t n) {
    if (!t) return lt_fail("lt_st_to_f32: tensor is NULL");
    const char *name = t->name ? t->name : "(unnamed)";
    if (!dtype_valid(t->dtype) || t->ndim < 0 || t->ndim > ST_MAX_DIMS)
        return lt_fail("lt_st_to_f32: tensor %s has an invalid dtype or ndim", name);
    int64_t numel = shape_numel(t->ndim, t->shape);
    /* The struct is public, so a hand-filled one must not make us read
     * past its data. */
    if (numel < 0 || bytes_for(numel, t->dtype) != (int64_t)t->nbytes)
        return lt_fail("lt_st_to_f32: tensor %s: nbytes %zu does not match its shape", name, t->nbytes);
    if (n != numel)
        return lt_fail("lt_st_to_f32: tensor %s has %lld elements, destination has %lld",
                       name, (long long)numel, (long long)n);
    if (numel > 0 && (!dst || !t->data)) return lt_fail("lt_st_to_f32: NULL data for tensor %s", name);

    /* The data may sit at any offset in the mapping, so every element is
     * read with memcpy (or byte by byte), never through a typed pointer. */
    const unsigned char *p = t->data;
    switch (t->dtype) {
    case LT_DTYPE_F32:
        if (numel > 0) memcpy(dst, p, t->nbytes);
        break;
    case LT_DTYPE_F16:
        for (int64_t i = 0; i < numel; i++)
            dst[i] = lt_f16_to_f32((uint16_t)(p[2 * i] | (p[2 * i + 1] << 8)));
        break;
    case LT_DTYPE_BF16:
        for (int64_t i = 0; i < numel; i++)
            dst[i] = lt_bf16_to_f32((uint16_t)(p[2 * i] | (p[2 * i + 1] << 8)));
        break;
    case LT_DTYPE_I32:
        for (int64_t i = 0; i < numel; i++) { int32_t v; memcpy(&v, p + 4 * i, 4); dst[i] = (float)v; }
        break;
    case LT_DTYPE_I64:
        for (int64_t i = 0; i < numel; i++) { int64_t v; memcpy(&v, p + 8 * i, 8); dst[i] = (float)v; }
        break;
    }
    return LT_OK;
}

/* ------------------------------------------------------------ writing */

struct st_wentry {
    char *name;
    int dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;   /* borrowed */
    size_t nbytes;
};

struct lt_st_writer {
    struct st_wentry *t;
    int n, cap;
    struct st_kv *meta;
    int n_meta, meta_cap;
};

int lt_st_writer_new(lt_st_writer **out) {
    if (!out) return lt_fail("lt_st_writer_new: out is NULL");
    *out = calloc(1, sizeof **out);
    return *out ? LT_OK : lt_fail("out of memory creating a safetensors writer");
}

void lt_st_writer_free(lt_st_writer *w) {
    if (!w) return;
    for (int i = 0; i < w->n; i++) free(w->t[i].name);
    free(w->t);
    for (int i = 0; i < w->n_meta; i++) { free(w->meta[i].key); free(w->meta[i].val); }
    free(w->meta);
    free(w);
}

/* Returns arr (of n elem-sized items, room for *cap) grown so that one
 * more item fits, or NULL (arr left intact) when out of memory. */
static void *grow(void *arr, int *cap, int n, size_t elem) {
    if (n < *cap) return arr;
    int nc = *cap ? *cap * 2 : 16;
    void *p = realloc(arr, (size_t)nc * elem);
    if (p) *cap = nc;
    return p;
}

int lt_st_writer_add(lt_st_writer *w, const char *name, int dtype, int ndim,
                     const int64_t *shape, const void *data) {
    if (!w || !name) return lt_fail("lt_st_writer_add: NULL argument");
    if (strcmp(name, "__metadata__") == 0)
        return lt_fail("lt_st_writer_add: '__metadata__' is reserved and cannot name a tensor");
    if (!dtype_valid(dtype)) return lt_fail("lt_st_writer_add: unknown dtype %d for tensor %s", dtype, name);
    if (ndim < 0 || ndim > ST_MAX_DIMS)
        return lt_fail("lt_st_writer_add: tensor %s has %d dimensions (0..%d supported)", name, ndim, ST_MAX_DIMS);
    if (ndim > 0 && !shape) return lt_fail("lt_st_writer_add: NULL shape for tensor %s", name);
    int64_t numel = shape_numel(ndim, shape);
    int64_t nbytes = numel < 0 ? -1 : bytes_for(numel, dtype);
    if (nbytes < 0) return lt_fail("lt_st_writer_add: shape of tensor %s is negative or too large", name);
    if (nbytes > 0 && !data) return lt_fail("lt_st_writer_add: NULL data for tensor %s", name);
    for (int i = 0; i < w->n; i++)
        if (strcmp(w->t[i].name, name) == 0) return lt_fail("lt_st_writer_add: duplicate tensor name %s", name);

    struct st_wentry *arr = grow(w->t, &w->cap, w->n, sizeof *w->t);
    if (!arr) return lt_fail("out of memory adding tensor %s", name);
    w->t = arr;
    struct st_wentry *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return lt_fail("out of memory adding tensor %s", name);
    t->dtype = dtype;
    t->ndim = ndim;
    if (ndim > 0) memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    t->data = data;
    t->nbytes = (size_t)nbytes;
    w->n++;
    return LT_OK;
}

/* Sets key to value (a later call for the same key replaces the value). */
int lt_st_writer_metadata(lt_st_writer *w, const char *key, const char *value) {
    if (!w || !key || !value) return lt_fail("lt_st_writer_metadata: NULL argument");
    char *v = strdup(value);
    if (!v) return lt_fail("out of memory setting metadata %s", key);
    for (int i = 0; i < w->n_meta; i++) {
        if (strcmp(w->meta[i].key, key) == 0) { free(w->meta[i].val); w->meta[i].val = v; return LT_OK; }
    }
    char *k = strdup(key);
    struct st_kv *arr = k ? grow(w->meta, &w->meta_cap, w->n_meta, sizeof *w->meta) : NULL;
    if (!arr) {
        free(k); free(v);
        return lt_fail("out of memory setting metadata %s", key);
    }
    w->meta = arr;
    w->meta[w->n_meta].key = k;
    w->meta[w->n_meta].val = v;
    w->n_meta++;
    return LT_OK;
}

/* A raw JSON array of integers, e.g. "[2,3]", for cJSON_CreateRaw: numbers
 * go in as text so that 64-bit values are written exactly (cJSON holds
 * numbers as doubles and would print large ones in exponent form). */
static cJSON *int_array(int n, const uint64_t *v) {
    char buf[ST_MAX_DIMS * 24 + 4];
    size_t k = 0;
    buf[k++] = '[';
    for (int i = 0; i < n; i++)
        k += (size_t)snprintf(buf + k, sizeof buf - k, "%s%llu", i ? "," : "", (unsigned long long)v[i]);
    buf[k++] = ']';
    buf[k] = '\0';
    return cJSON_CreateRaw(buf);
}

/* The header JSON of w (caller frees with cJSON_free), or NULL when out of
 * memory. Entries follow add order; offsets are cumulative in that order. */
static char *build_header(const lt_st_writer *w) {
    cJSON *root = cJSON_CreateObject();
    int ok = root != NULL;
    if (ok && w->n_meta > 0) {
        cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
        ok = meta != NULL;
        for (int i = 0; ok && i < w->n_meta; i++)
            ok = cJSON_AddStringToObject(meta, w->meta[i].key, w->meta[i].val) != NULL;
    }
    uint64_t offset = 0;
    for (int i = 0; ok && i < w->n; i++) {
        const struct st_wentry *t = &w->t[i];
        uint64_t dims[ST_MAX_DIMS], range[2] = { offset, offset + t->nbytes };
        for (int d = 0; d < t->ndim; d++) dims[d] = (uint64_t)t->shape[d];
        offset += t->nbytes;
        cJSON *e = cJSON_AddObjectToObject(root, t->name);
        cJSON *shape = int_array(t->ndim, dims), *offs = int_array(2, range);
        ok = e && shape && offs && cJSON_AddStringToObject(e, "dtype", dtype_names[t->dtype]) &&
             cJSON_AddItemToObject(e, "shape", shape);
        if (ok) shape = NULL;   /* now owned by e */
        ok = ok && cJSON_AddItemToObject(e, "data_offsets", offs);
        if (ok) offs = NULL;
        cJSON_Delete(shape);
        cJSON_Delete(offs);
    }
    char *json = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    return json;
}

/* Writes all n bytes, retrying short writes and EINTR. 0 or -1 (errno). */
static int write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

int lt_st_writer_save(lt_st_writer *w, const char *path) {
    if (!w || !path) return lt_fail("lt_st_writer_save: NULL argument");
    uint64_t total = 0;
    for (int i = 0; i < w->n; i++) {
        if (w->t[i].nbytes > UINT64_MAX - total) return lt_fail("cannot write %s: data too large", path);
        total += w->t[i].nbytes;
    }

    char *json = build_header(w);
    if (!json) return lt_fail("cannot write %s: out of memory building the header", path);
    /* Pad with spaces so the data section starts 8-byte aligned in the file
     * (and so in any mapping of it), as the format recommends. */
    size_t len = strlen(json), padded = (len + 7) & ~(size_t)7;
    unsigned char *head = malloc(8 + padded);
    if (!head) { cJSON_free(json); return lt_fail("cannot write %s: out of memory", path); }
    for (int i = 0; i < 8; i++) head[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    memcpy(head + 8, json, len);
    memset(head + 8 + len, ' ', padded - len);
    cJSON_free(json);

    size_t tlen = strlen(path) + 5;
    char *tmp = malloc(tlen);
    if (!tmp) { free(head); return lt_fail("cannot write %s: out of memory", path); }
    snprintf(tmp, tlen, "%s.tmp", path);

    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        lt_fail("cannot create %s: %s", tmp, strerror(errno));
        free(head); free(tmp);
        return LT_ERR;
    }
    const char *step = "write";
    int bad = write_all(fd, head, 8 + padded);
    for (int i = 0; !bad && i < w->n; i++)
        if (w->t[i].nbytes > 0) bad = write_all(fd, w->t[i].data, w->t[i].nbytes);
    /* fsync before rename: otherwise a crash soon after could leave the
     * final name pointing at a file whose data never reached the disk. */
    if (!bad && fsync(fd) != 0) { bad = 1; step = "sync"; }
    int err = errno;
    if (close(fd) != 0 && !bad) { bad = 1; step = "close"; err = errno; }
    if (!bad && rename(tmp, path) != 0) { bad = 1; step = "rename"; err = errno; }
    if (bad) {
        unlink(tmp);
        lt_fail("cannot write %s (%s of %s failed): %s", path, step, tmp, strerror(err));
    }
    free(head);
    free(tmp);
    return bad ? LT_ERR : LT_OK;
}
