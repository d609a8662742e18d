/*
 * test_safetensors.c: the safetensors reader and writer and the fp16/bf16
 * conversions: the GPT-2 fixture, a write/read round trip of every dtype,
 * known conversion values (plus exhaustive round trips), and malformed files
 * that must each fail with a clear message.
 */
#include "check.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[] = "/tmp/lantern-st-XXXXXX";

/* Path of name inside the test's temp dir (static buffers, 4 in turn). */
static const char *tmp_path(const char *name) {
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); exit(2); }
    if (n && fwrite(data, 1, n, f) != n) { perror(path); exit(2); }
    fclose(f);
}

/* Writes a safetensors file by hand: the header length field (header_len,
 * or the JSON's length when negative), the JSON, then data_len zero bytes. */
static const char *write_st(const char *name, const char *json, long long header_len, size_t data_len) {
    size_t jl = strlen(json);
    uint64_t n = header_len < 0 ? jl : (uint64_t)header_len;
    unsigned char *buf = calloc(1, 8 + jl + data_len);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(n >> (8 * i));
    memcpy(buf + 8, json, jl);
    const char *path = tmp_path(name);
    write_bytes(path, buf, 8 + jl + data_len);
    free(buf);
    return path;
}

static int file_exists(const char *path) { struct stat sb; return stat(path, &sb) == 0; }

static float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* ---------------------------------------------------------- fixture */

static void test_fixture(void) {
    lt_safetensors *st = NULL;
    const char *path = check_path("tests/fixtures/hf-gpt2-tiny2/model.safetensors");
    CHECK_OK(lt_st_open(path, &st));
    if (!st) return;
    CHECK(lt_st_count(st) == 28, "count %d", lt_st_count(st));

    lt_st_tensor t;
    CHECK_OK(lt_st_find(st, "transformer.wte.weight", &t));
    CHECK(t.dtype == LT_DTYPE_F32 && t.ndim == 2 && t.shape[0] == 50257 && t.shape[1] == 64,
          "wte dtype %d ndim %d shape [%lld, %lld]", t.dtype, t.ndim, (long long)t.shape[0], (long long)t.shape[1]);
    CHECK(t.nbytes == (size_t)50257 * 64 * 4, "wte nbytes %zu", t.nbytes);
    CHECK(strcmp(t.name, "transformer.wte.weight") == 0, "name %s", t.name);

    CHECK_OK(lt_st_find(st, "transformer.wpe.weight", &t));
    CHECK(t.ndim == 2 && t.shape[0] == 128 && t.shape[1] == 64, "wpe shape");
    CHECK_OK(lt_st_find(st, "transformer.h.1.attn.c_attn.weight", &t));
    CHECK(t.ndim == 2 && t.shape[0] == 64 && t.shape[1] == 192, "c_attn shape");
    CHECK_OK(lt_st_find(st, "transformer.h.0.ln_1.weight", &t));
    CHECK(t.ndim == 1 && t.shape[0] == 64, "ln_1 shape");
    float w[64];
    CHECK_OK(lt_st_to_f32(&t, w, 64));
    int finite = 1;
    for (int i = 0; i < 64; i++) finite &= isfinite(w[i]) != 0;
    CHECK(finite, "ln_1.weight has non-finite values");
    CHECK_FAILS(lt_st_to_f32(&t, w, 63), "64 elements");

    /* Header (JSON) order: the first entry after __metadata__. */
    CHECK_OK(lt_st_get(st, 0, &t));
    CHECK(strcmp(t.name, "transformer.h.0.attn.c_attn.bias") == 0, "first tensor %s", t.name);
    CHECK_FAILS(lt_st_get(st, 28, &t), "out of range");
    CHECK_FAILS(lt_st_get(st, -1, &t), "out of range");

    const char *fmt = lt_st_metadata(st, "format");
    CHECK(fmt && strcmp(fmt, "pt") == 0, "metadata format %s", fmt ? fmt : "(null)");
    CHECK(lt_st_metadata(st, "nope") == NULL, "metadata for a missing key");

    CHECK_FAILS(lt_st_find(st, "lm_head.weight", &t), "tensor 'lm_head.weight' not found in");
    CHECK(strstr(lt_last_error(), "model.safetensors") != NULL, "error lacks the file: %s", lt_last_error());
    lt_st_close(st);
    lt_st_close(NULL);
}

/* -------------------------------------------------------- round trip */

static void test_round_trip(void) {
    /* F16 first with 3 elements (6 bytes), so the F32 after it sits at a
     * 2-byte-aligned address in the mapping: reads must not assume more. */
    const uint16_t f16[3] = { 0x3c00, 0xc100, 0x7bff };           /* 1, -2.5, 65504 */
    const float f32[6] = { 0.5f, -1.25f, 3.0f, 1e-20f, -7.0f, 100.0f };
    const uint16_t bf16[4] = { 0x3f80, 0xc020, 0x4049, 0x0000 };  /* 1, -2.5, 3.140625, 0 */
    const int32_t i32[3] = { -5, 0, 16777216 };
    const int64_t i64[2] = { -3, 1000000 };
    const float scalar = 42.0f;
    const int64_t s_f16[] = { 3 }, s_f32[] = { 2, 3 }, s_bf16[] = { 2, 2 }, s_i32[] = { 3 },
                  s_i64[] = { 1, 1, 2 }, s_empty[] = { 0, 5 };

    lt_st_writer *w = NULL;
    CHECK_OK(lt_st_writer_new(&w));
    CHECK_OK(lt_st_writer_add(w, "f16", LT_DTYPE_F16, 1, s_f16, f16));
    CHECK_OK(lt_st_writer_add(w, "f32", LT_DTYPE_F32, 2, s_f32, f32));
    CHECK_OK(lt_st_writer_add(w, "bf16", LT_DTYPE_BF16, 2, s_bf16, bf16));
    CHECK_OK(lt_st_writer_add(w, "i32", LT_DTYPE_I32, 1, s_i32, i32));
    CHECK_OK(lt_st_writer_add(w, "i64", LT_DTYPE_I64, 3, s_i64, i64));
    CHECK_OK(lt_st_writer_add(w, "scalar", LT_DTYPE_F32, 0, NULL, &scalar));
    CHECK_OK(lt_st_writer_add(w, "empty", LT_DTYPE_F32, 2, s_empty, NULL));
    CHECK_OK(lt_st_writer_add(w, "name with \"quotes\" \\ and\ttab", LT_DTYPE_I32, 1, s_i32, i32));
    CHECK_FAILS(lt_st_writer_add(w, "f32", LT_DTYPE_F32, 2, s_f32, f32), "duplicate tensor name f32");
    CHECK_FAILS(lt_st_writer_add(w, "x", 9, 2, s_f32, f32), "unknown dtype");
    CHECK_FAILS(lt_st_writer_add(w, "__metadata__", LT_DTYPE_F32, 2, s_f32, f32), "reserved");
    const int64_t neg[] = { 2, -1 };
    CHECK_FAILS(lt_st_writer_add(w, "neg", LT_DTYPE_F32, 2, neg, f32), "negative");
    CHECK_OK(lt_st_writer_metadata(w, "format", "pt"));
    CHECK_OK(lt_st_writer_metadata(w, "note", "first"));
    CHECK_OK(lt_st_writer_metadata(w, "note", "second, with \"quotes\""));

    const char *path = tmp_path("round.safetensors");
    CHECK_OK(lt_st_writer_save(w, path));
    lt_st_writer_free(w);
    lt_st_writer_free(NULL);
    CHECK(!file_exists(tmp_path("round.safetensors.tmp")), "temp file left behind");

    /* Header length a multiple of 8, so the data section is 8-aligned. */
    FILE *f = fopen(path, "rb");
    unsigned char len8[8] = { 0 };
    CHECK(f && fread(len8, 1, 8, f) == 8, "cannot read back %s", path);
    if (f) fclose(f);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | len8[i];
    CHECK(hl > 0 && hl % 8 == 0, "header length %llu", (unsigned long long)hl);

    lt_safetensors *st = NULL;
    CHECK_OK(lt_st_open(path, &st));
    if (!st) return;
    CHECK(lt_st_count(st) == 8, "count %d", lt_st_count(st));
    const char *order[] = { "f16", "f32", "bf16", "i32", "i64", "scalar", "empty" };
    int in_order = 1;
    lt_st_tensor t;
    for (int i = 0; i < 7; i++) in_order &= lt_st_get(st, i, &t) == LT_OK && strcmp(t.name, order[i]) == 0;
    CHECK(in_order, "tensors not in add order");
    CHECK(strcmp(lt_st_metadata(st, "format"), "pt") == 0, "metadata format");
    CHECK(strcmp(lt_st_metadata(st, "note"), "second, with \"quotes\"") == 0, "metadata note");

    float out[8];
    CHECK_OK(lt_st_find(st, "f16", &t));
    CHECK(t.dtype == LT_DTYPE_F16 && t.ndim == 1 && t.shape[0] == 3 && t.nbytes == 6 && memcmp(t.data, f16, 6) == 0, "f16 bytes");
    CHECK_OK(lt_st_to_f32(&t, out, 3));
    CHECK(out[0] == 1.0f && out[1] == -2.5f && out[2] == 65504.0f, "f16 values %g %g %g", out[0], out[1], out[2]);

    CHECK_OK(lt_st_find(st, "f32", &t));
    CHECK(t.dtype == LT_DTYPE_F32 && t.ndim == 2 && t.shape[0] == 2 && t.shape[1] == 3 && memcmp(t.data, f32, 24) == 0, "f32 bytes");
    CHECK(((uintptr_t)t.data & 3) != 0, "the f32 tensor was meant to be unaligned");
    CHECK_OK(lt_st_to_f32(&t, out, 6));
    CHECK(memcmp(out, f32, sizeof f32) == 0, "f32 values");

    CHECK_OK(lt_st_find(st, "bf16", &t));
    CHECK(t.dtype == LT_DTYPE_BF16 && t.ndim == 2 && memcmp(t.data, bf16, 8) == 0, "bf16 bytes");
    CHECK_OK(lt_st_to_f32(&t, out, 4));
    CHECK(out[0] == 1.0f && out[1] == -2.5f && out[2] == 3.140625f && out[3] == 0.0f, "bf16 values");

    CHECK_OK(lt_st_find(st, "i32", &t));
    CHECK(t.dtype == LT_DTYPE_I32 && memcmp(t.data, i32, 12) == 0, "i32 bytes");
    CHECK_OK(lt_st_to_f32(&t, out, 3));
    CHECK(out[0] == -5.0f && out[1] == 0.0f && out[2] == 16777216.0f, "i32 values");

    CHECK_OK(lt_st_find(st, "i64", &t));
    CHECK(t.dtype == LT_DTYPE_I64 && t.ndim == 3 && t.shape[2] == 2 && memcmp(t.data, i64, 16) == 0, "i64 bytes");
    CHECK_OK(lt_st_to_f32(&t, out, 2));
    CHECK(out[0] == -3.0f && out[1] == 1e6f, "i64 values");

    CHECK_OK(lt_st_find(st, "scalar", &t));
    CHECK(t.ndim == 0 && t.nbytes == 4, "scalar ndim %d nbytes %zu", t.ndim, t.nbytes);
    CHECK_OK(lt_st_to_f32(&t, out, 1));
    CHECK(out[0] == 42.0f, "scalar value %g", out[0]);

    CHECK_OK(lt_st_find(st, "empty", &t));
    CHECK(t.ndim == 2 && t.shape[0] == 0 && t.shape[1] == 5 && t.nbytes == 0, "empty tensor");
    CHECK_OK(lt_st_to_f32(&t, NULL, 0));

    CHECK_OK(lt_st_find(st, "name with \"quotes\" \\ and\ttab", &t));
    lt_st_close(st);

    /* A writer with no tensors and no metadata still makes a valid file. */
    CHECK_OK(lt_st_writer_new(&w));
    CHECK_OK(lt_st_writer_save(w, tmp_path("none.safetensors")));
    lt_st_writer_free(w);
    CHECK_OK(lt_st_open(tmp_path("none.safetensors"), &st));
    CHECK(lt_st_count(st) == 0, "empty file count");
    CHECK_FAILS(lt_st_find(st, "x", &t), "tensor 'x' not found");
    lt_st_close(st);
}

/* ------------------------------------------------------ write failures */

static void test_write_failures(void) {
    const float data[4096] = { 0 };
    const int64_t shape[] = { 4096 };
    lt_st_writer *w = NULL;
    CHECK_OK(lt_st_writer_new(&w));
    CHECK_OK(lt_st_writer_add(w, "x", LT_DTYPE_F32, 1, shape, data));

    const char *missing = tmp_path("no/such/dir/out.safetensors");
    CHECK_FAILS(lt_st_writer_save(w, missing), "No such file or directory");
    CHECK(strstr(lt_last_error(), missing) != NULL, "error lacks the path: %s", lt_last_error());

    /* A write that fails half-way (as on a full disk): a file size limit
     * makes write() fail with EFBIG once 4 KB are written. The temp file
     * must be removed and nothing left under the final name. */
    struct rlimit old;
    if (getrlimit(RLIMIT_FSIZE, &old) == 0) {
        struct rlimit lim = old;
        lim.rlim_cur = 4096;
        signal(SIGXFSZ, SIG_IGN);
        if (setrlimit(RLIMIT_FSIZE, &lim) == 0) {
            const char *path = tmp_path("big.safetensors");
            int rc = lt_st_writer_save(w, path);
            setrlimit(RLIMIT_FSIZE, &old);
            CHECK(rc == LT_ERR, "save past the file size limit succeeded");
            CHECK(strstr(lt_last_error(), "File too large") && strstr(lt_last_error(), path),
                  "error: %s", lt_last_error());
            CHECK(!file_exists(path) && !file_exists(tmp_path("big.safetensors.tmp")), "file left behind");
        }
        signal(SIGXFSZ, SIG_DFL);
    }
    lt_st_writer_free(w);
}

/* ------------------------------------------------------ conversions */

static void test_conversions(void) {
    /* fp16 known values. */
    CHECK(lt_f32_to_f16(1.0f) == 0x3c00 && lt_f16_to_f32(0x3c00) == 1.0f, "f16 1.0");
    CHECK(lt_f32_to_f16(-2.5f) == 0xc100 && lt_f16_to_f32(0xc100) == -2.5f, "f16 -2.5");
    CHECK(lt_f32_to_f16(65504.0f) == 0x7bff && lt_f16_to_f32(0x7bff) == 65504.0f, "f16 max");
    CHECK(lt_f32_to_f16(0.0f) == 0x0000 && lt_f32_to_f16(-0.0f) == 0x8000, "f16 zeros");
    CHECK(lt_f16_to_f32(0x8000) == 0.0f && signbit(lt_f16_to_f32(0x8000)), "f16 -0");
    /* Subnormals: smallest 2^-24, largest 1023 * 2^-24. */
    CHECK(lt_f16_to_f32(0x0001) == ldexpf(1, -24), "f16 smallest subnormal");
    CHECK(lt_f16_to_f32(0x83ff) == -ldexpf(1023, -24), "f16 largest subnormal");
    CHECK(lt_f32_to_f16(ldexpf(1, -24)) == 0x0001, "f16 2^-24");
    CHECK(lt_f32_to_f16(1e-5f) == 0x00a8, "f16 1e-5 -> %#x", lt_f32_to_f16(1e-5f));   /* 167.77 units */
    CHECK(lt_f32_to_f16(3e-8f) == 0x0001, "f16 3e-8 -> %#x", lt_f32_to_f16(3e-8f));   /* 0.503 units */
    CHECK(lt_f32_to_f16(1e-8f) == 0x0000, "f16 1e-8 underflows to 0");               /* 0.168 units */
    CHECK(lt_f32_to_f16(-1e-8f) == 0x8000, "f16 -1e-8 underflows to -0");
    CHECK(lt_f32_to_f16(ldexpf(1, -14) - ldexpf(1, -25)) == 0x0400, "f16 rounds up to the smallest normal");
    /* Overflow and specials. */
    CHECK(lt_f32_to_f16(65519.0f) == 0x7bff, "f16 65519 stays finite");
    CHECK(lt_f32_to_f16(65520.0f) == 0x7c00, "f16 65520 (tie) -> inf");
    CHECK(lt_f32_to_f16(1e6f) == 0x7c00 && lt_f32_to_f16(-1e6f) == 0xfc00, "f16 overflow");
    CHECK(lt_f32_to_f16(INFINITY) == 0x7c00 && lt_f32_to_f16(-INFINITY) == 0xfc00, "f16 inf");
    CHECK(isinf(lt_f16_to_f32(0x7c00)) && lt_f16_to_f32(0xfc00) < 0, "f16 inf back");
    uint16_t hn = lt_f32_to_f16(NAN);
    CHECK((hn & 0x7c00) == 0x7c00 && (hn & 0x3ff) != 0, "f16 nan %#x", hn);
    hn = lt_f32_to_f16(bits_f32(0x7f800001));   /* payload only in bits fp16 drops */
    CHECK((hn & 0x7c00) == 0x7c00 && (hn & 0x3ff) != 0, "f16 low-payload nan %#x", hn);
    CHECK(isnan(lt_f16_to_f32(0x7e00)) && isnan(lt_f16_to_f32(0xfc01)), "f16 nan back");
    /* Ties to even: 1 + 2^-11 is half-way between 0x3c00 and 0x3c01. */
    CHECK(lt_f32_to_f16(1.0f + ldexpf(1, -11)) == 0x3c00, "f16 tie down to even");
    CHECK(lt_f32_to_f16(1.0f + 3 * ldexpf(1, -11)) == 0x3c02, "f16 tie up to even");
    CHECK(lt_f32_to_f16(1.0f + ldexpf(1, -11) + ldexpf(1, -20)) == 0x3c01, "f16 above the tie");
    CHECK(lt_f32_to_f16(ldexpf(1, -25)) == 0x0000, "f16 subnormal tie to 0");
    CHECK(lt_f32_to_f16(3 * ldexpf(1, -25)) == 0x0002, "f16 subnormal tie to 2");

    /* bf16 known values. */
    CHECK(lt_f32_to_bf16(1.0f) == 0x3f80 && lt_bf16_to_f32(0x3f80) == 1.0f, "bf16 1.0");
    CHECK(lt_f32_to_bf16(-2.5f) == 0xc020 && lt_bf16_to_f32(0xc020) == -2.5f, "bf16 -2.5");
    CHECK(lt_f32_to_bf16(65504.0f) == 0x4780, "bf16 65504 -> %#x", lt_f32_to_bf16(65504.0f)); /* 65536 */
    float b = lt_bf16_to_f32(lt_f32_to_bf16(1e-8f));
    CHECK(fabsf(b - 1e-8f) <= 1e-8f / 128, "bf16 1e-8 -> %g", b);
    CHECK(lt_bf16_to_f32(0x0001) == bits_f32(0x00010000), "bf16 subnormal");
    CHECK(lt_f32_to_bf16(bits_f32(0x000116c2)) == 0x0001, "bf16 from an f32 subnormal");
    CHECK(lt_f32_to_bf16(1.0f + ldexpf(1, -8)) == 0x3f80, "bf16 tie down to even");
    CHECK(lt_f32_to_bf16(1.0f + 3 * ldexpf(1, -8)) == 0x3f82, "bf16 tie up to even");
    CHECK(lt_f32_to_bf16(bits_f32(0x7f7fffff)) == 0x7f80, "bf16 FLT_MAX rounds to inf");
    CHECK(lt_f32_to_bf16(INFINITY) == 0x7f80 && lt_f32_to_bf16(-INFINITY) == 0xff80, "bf16 inf");
    CHECK(isnan(lt_bf16_to_f32(lt_f32_to_bf16(NAN))), "bf16 nan");
    CHECK(isnan(lt_bf16_to_f32(lt_f32_to_bf16(bits_f32(0x7f800001)))), "bf16 low-payload nan");
    CHECK(isnan(lt_bf16_to_f32(lt_f32_to_bf16(bits_f32(0xff800001)))), "bf16 negative nan");

    /* Exhaustive: every 16-bit pattern survives to f32 and back (nans as nans). */
    int f16_bad = 0, bf16_bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float x = lt_f16_to_f32((uint16_t)h), y = lt_bf16_to_f32((uint16_t)h);
        if (isnan(x) ? !isnan(lt_f16_to_f32(lt_f32_to_f16(x))) : lt_f32_to_f16(x) != h) f16_bad++;
        if (isnan(y) ? !isnan(lt_bf16_to_f32(lt_f32_to_bf16(y))) : lt_f32_to_bf16(y) != h) bf16_bad++;
    }
    CHECK(f16_bad == 0, "%d fp16 values do not round-trip", f16_bad);
    CHECK(bf16_bad == 0, "%d bf16 values do not round-trip", bf16_bad);

#ifdef __FLT16_MAX__
    /* Against the compiler's own fp32 -> fp16 conversion (round to nearest
     * even) over ~1M float bit patterns spread across the whole range. */
    int ref_bad = 0;
    for (uint64_t u = 0; u < 0x100000000ull; u += 4099) {
        float x = bits_f32((uint32_t)u);
        _Float16 r = (_Float16)x;
        uint16_t want;
        memcpy(&want, &r, 2);
        uint16_t got = lt_f32_to_f16(x);
        if (isnan(x) ? (got & 0x7fff) <= 0x7c00 : got != want) ref_bad++;
    }
    CHECK(ref_bad == 0, "%d fp16 conversions differ from _Float16", ref_bad);
#endif
}

/* ------------------------------------------------------- bad files */

static void test_bad_files(void) {
    lt_safetensors *st = (lt_safetensors *)&st;   /* must be reset to NULL on failure */
    const char *p;

    p = tmp_path("empty.safetensors");
    write_bytes(p, "", 0);
    CHECK_FAILS(lt_st_open(p, &st), "too small");
    CHECK(st == NULL, "handle not cleared on failure");
    CHECK(strstr(lt_last_error(), p) != NULL, "error lacks the file: %s", lt_last_error());

    /* The first 100 bytes of a valid file. */
    {
        FILE *f = fopen(check_path("tests/fixtures/hf-gpt2-tiny2/model.safetensors"), "rb");
        unsigned char head[100];
        size_t got = f ? fread(head, 1, sizeof head, f) : 0;
        if (f) fclose(f);
        CHECK(got == 100, "cannot read the fixture");
        p = tmp_path("truncated.safetensors");
        write_bytes(p, head, got);
        CHECK_FAILS(lt_st_open(p, &st), "exceeds the file size");
    }

    CHECK_FAILS(lt_st_open(tmp_path("does-not-exist.safetensors"), &st), "No such file or directory");
    CHECK_FAILS(lt_st_open(tmpdir, &st), "not a regular file");

    /* Header length field wrong. */
    CHECK_FAILS(lt_st_open(write_st("hlen.safetensors", "{}", 1000, 0), &st), "header length 1000 exceeds the file size");
    CHECK_FAILS(lt_st_open(write_st("hzero.safetensors", "{}", 0, 0), &st), "header length is 0");
    CHECK_FAILS(lt_st_open(write_st("hhuge.safetensors", "{}", 1ll << 40, 0), &st), "limit");
    /* Sanity: the same "{}" header with its right length is a valid file. */
    CHECK_OK(lt_st_open(write_st("brace.safetensors", "{}", -1, 0), &st));
    lt_st_close(st);
    {
        /* Length 0xffffffffffffffff: must not wrap around in 8 + N. */
        unsigned char b[16];
        memset(b, 0xff, 8);
        memcpy(b + 8, "{}      ", 8);
        p = tmp_path("hwrap.safetensors");
        write_bytes(p, b, 16);
        CHECK_FAILS(lt_st_open(p, &st), "limit");
    }

    /* Header content wrong. */
    CHECK_FAILS(lt_st_open(write_st("notjson.safetensors", "{\"a\": not json", -1, 0), &st), "not valid JSON");
    CHECK_FAILS(lt_st_open(write_st("array.safetensors", "[1, 2, 3]", -1, 0), &st), "not a JSON object");
    CHECK_FAILS(lt_st_open(write_st("trailing.safetensors", "{} x", -1, 0), &st), "trailing bytes");
    CHECK_FAILS(lt_st_open(write_st("dtype.safetensors",
        "{\"w\": {\"dtype\": \"F64\", \"shape\": [2], \"data_offsets\": [0, 16]}}", -1, 16), &st),
        "unknown dtype F64 for tensor w in");
    CHECK_FAILS(lt_st_open(write_st("nodtype.safetensors",
        "{\"w\": {\"shape\": [2], \"data_offsets\": [0, 8]}}", -1, 8), &st), "dtype for tensor w");
    CHECK_FAILS(lt_st_open(write_st("mismatch.safetensors",
        "{\"w\": {\"dtype\": \"F32\", \"shape\": [2, 3], \"data_offsets\": [0, 20]}}", -1, 32), &st),
        "data_offsets span 20 bytes but shape [2,3] of F32 needs 24 bytes");
    CHECK(strstr(lt_last_error(), "tensor w in") && strstr(lt_last_error(), "mismatch.safetensors"),
          "error lacks the tensor or file: %s", lt_last_error());
    CHECK_FAILS(lt_st_open(write_st("range.safetensors",
        "{\"w\": {\"dtype\": \"F32\", \"shape\": [16], \"data_offsets\": [0, 64]}}", -1, 32), &st),
        "outside the data section");
    CHECK_FAILS(lt_st_open(write_st("backwards.safetensors",
        "{\"w\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [8, 4]}}", -1, 32), &st),
        "begin is after end");
    CHECK_FAILS(lt_st_open(write_st("overlap.safetensors",
        "{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]},"
        " \"b\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [8, 24]}}", -1, 32), &st),
        "tensors a [0, 16] and b [8, 24] in");
    CHECK_FAILS(lt_st_open(write_st("same.safetensors",
        "{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]},"
        " \"b\": {\"dtype\": \"I32\", \"shape\": [4], \"data_offsets\": [0, 16]}}", -1, 32), &st),
        "overlap");
    CHECK_FAILS(lt_st_open(write_st("negative.safetensors",
        "{\"w\": {\"dtype\": \"F32\", \"shape\": [-2, 3], \"data_offsets\": [0, 24]}}", -1, 32), &st),
        "dimension 0 must be a non-negative integer, got -2");
    CHECK_FAILS(lt_st_open(write_st("fraction.safetensors",
        "{\"w\": {\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 4]}}", -1, 32), &st),
        "non-negative integer");
    CHECK_FAILS(lt_st_open(write_st("nooffsets.safetensors",
        "{\"w\": {\"dtype\": \"F32\", \"shape\": [2]}}", -1, 8), &st), "missing data_offsets for tensor w in");
    CHECK_FAILS(lt_st_open(write_st("badoffsets.safetensors",
        "{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0]}}", -1, 8), &st), "[begin, end]");
    CHECK_FAILS(lt_st_open(write_st("dims.safetensors",
        "{\"w\": {\"dtype\": \"F32\", \"shape\": [1,1,1,1,1,1,1,1,1], \"data_offsets\": [0, 4]}}", -1, 8), &st),
        "9 dimensions");
    /* 2^32 * 2^32 * 2^32 wraps to 0 in 64 bits; with offsets [0, 0] a naive
     * product would pass the length check. */
    CHECK_FAILS(lt_st_open(write_st("overflow.safetensors",
        "{\"w\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296, 4294967296], \"data_offsets\": [0, 0]}}", -1, 8), &st),
        "overflows");
    CHECK_FAILS(lt_st_open(write_st("dup.safetensors",
        "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
        " \"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}", -1, 8), &st),
        "duplicate tensor w");
    CHECK_FAILS(lt_st_open(write_st("meta.safetensors",
        "{\"__metadata__\": {\"format\": 1}}", -1, 0), &st), "__metadata__ value for key 'format'");
    CHECK_FAILS(lt_st_open(write_st("notobj.safetensors", "{\"w\": [1, 2]}", -1, 0), &st), "tensor w in");
    CHECK(st == NULL, "handle not cleared on failure");

    /* Empty tensors may share an offset with anything: no bytes overlap. */
    CHECK_OK(lt_st_open(write_st("emptyshare.safetensors",
        "{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]},"
        " \"b\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [8, 8]}}   ", -1, 16), &st));
    lt_st_close(st);
}

static void remove_tmpdir(void) {
    DIR *d = opendir(tmpdir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) unlink(tmp_path(e->d_name));
    closedir(d);
    rmdir(tmpdir);
}

int main(void) {
    if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 2; }
    test_fixture();
    test_conversions();
    test_round_trip();
    test_write_failures();
    test_bad_files();
    remove_tmpdir();
    return check_summary();
}
