/*
 * test_store.c: the LMDB store: byte API, batches, snapshots, map growth,
 * foreign and damaged stores, record values, and a writer killed mid-run.
 */
#include "check.h"

#include <signal.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char tmp_root[256];

/* A fresh path under the test's temporary directory (not created). */
static const char *fresh_path(const char *name) {
    static char buf[8][512];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmp_root, name);
    return buf[k];
}

static void write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); exit(1); }
    fwrite(data, 1, n, f);
    fclose(f);
}

static int put_str(lt_store *st, const char *db, const char *k, const char *v) {
    return lt_store_put(st, db, k, strlen(k), v, strlen(v));
}

/* The value of k as a NUL-terminated string in buf ("" if absent); returns
 * lt_store_get's result. */
static int get_str(lt_store *st, const char *db, const char *k, char *buf, size_t cap) {
    void *v = NULL;
    size_t n = 0;
    int rc = lt_store_get(st, db, k, strlen(k), &v, &n);
    buf[0] = '\0';
    if (rc == LT_OK) {
        if (n >= cap) n = cap - 1;
        memcpy(buf, v, n);
        buf[n] = '\0';
        lt_free(v);
    }
    return rc;
}

/* All keys of db under prefix, joined with ',' into out. */
static int list_keys(lt_store_iter *it, char *out, size_t cap) {
    const void *k;
    size_t kl;
    int n = 0, rc;
    out[0] = '\0';
    while ((rc = lt_store_iter_next(it, &k, &kl, NULL, NULL)) == LT_STORE_ITEM) {
        size_t used = strlen(out);
        snprintf(out + used, cap - used, "%s%.*s", n ? "," : "", (int)kl, (const char *)k);
        n++;
    }
    return rc == LT_STORE_END ? n : -1;
}

static void test_basic(void) {
    lt_store *st = NULL;
    const char *path = fresh_path("basic/nested/lantern.lmdb");
    CHECK_OK(lt_store_open(path, 0, &st));
    if (!st) return;
    char buf[256];
    CHECK_OK(put_str(st, "explanations", "k1", "hello"));
    CHECK(get_str(st, "explanations", "k1", buf, sizeof buf) == LT_OK && !strcmp(buf, "hello"), "got '%s'", buf);
    CHECK(get_str(st, "scores", "k1", buf, sizeof buf) == LT_STORE_NOT_FOUND, "databases are separate");
    CHECK_OK(put_str(st, "explanations", "k1", "world"));
    CHECK(get_str(st, "explanations", "k1", buf, sizeof buf) == LT_OK && !strcmp(buf, "world"), "overwrite: '%s'", buf);
    CHECK(lt_store_get(st, "explanations", "k1", 2, NULL, NULL) == LT_OK, "presence test without a copy");
    CHECK_OK(lt_store_put(st, "runs", "empty", 5, "", 0));
    size_t n = 99;
    void *v = NULL;
    CHECK(lt_store_get(st, "runs", "empty", 5, &v, &n) == LT_OK && n == 0 && v, "empty value");
    lt_free(v);
    CHECK_OK(lt_store_del(st, "explanations", "k1", 2));
    CHECK(get_str(st, "explanations", "k1", buf, sizeof buf) == LT_STORE_NOT_FOUND, "deleted");
    CHECK_OK(lt_store_del(st, "explanations", "k1", 2));   /* absent: still fine */
    uint64_t count = 9;
    CHECK_OK(lt_store_count(st, "runs", &count));
    CHECK(count == 1, "count %llu", (unsigned long long)count);

    CHECK_FAILS(put_str(st, "nope", "k", "v"), "unknown database 'nope'");
    CHECK_FAILS(lt_store_put(st, "runs", "", 0, "v", 1), "key length 0");
    char big[600];
    memset(big, 'k', sizeof big);
    CHECK_FAILS(lt_store_put(st, "runs", big, sizeof big, "v", 1), "key length 600");
    CHECK(lt_store_get(st, "nope", "k", 1, NULL, NULL) == LT_ERR, "get from unknown db is an error");
    CHECK_FAILS(lt_store_commit(st), "commit without a batch");

    lt_store *twice = NULL;
    CHECK_FAILS(lt_store_open(path, 0, &twice), "already open in this process");
    CHECK_FAILS(lt_store_open(path, LT_STORE_READONLY, &twice), "already open in this process");
    lt_store_close(st);

    /* Read-only: reads work, writes are refused, nothing is created. */
    CHECK_OK(lt_store_open(path, LT_STORE_READONLY, &st));
    if (st) {
        CHECK(lt_store_get(st, "runs", "empty", 5, NULL, NULL) == LT_OK, "read-only get");
        CHECK_FAILS(put_str(st, "runs", "k", "v"), "read-only");
        CHECK_FAILS(lt_store_begin(st), "read-only");
        lt_store_close(st);
    }
    CHECK_FAILS(lt_store_open(fresh_path("missing"), LT_STORE_READONLY, &st), "no lantern store at");
    struct stat sb;
    CHECK(stat(fresh_path("missing"), &sb) != 0, "read-only open created nothing");
    lt_store_close(NULL);
}

static void test_iteration(void) {
    lt_store *st = NULL;
    CHECK_OK(lt_store_open(fresh_path("iter"), 0, &st));
    if (!st) return;
    const char *keys[] = {"a/3", "b/1", "a/10", "a", "a/1", "a0", "a/2", "c"};
    CHECK_OK(lt_store_begin(st));
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) CHECK_OK(put_str(st, "records", keys[i], keys[i]));
    CHECK_OK(lt_store_commit(st));

    char out[512];
    lt_store_iter *it = NULL;
    CHECK_OK(lt_store_iter_new(st, "records", "a/", 2, &it));
    CHECK(list_keys(it, out, sizeof out) == 4 && !strcmp(out, "a/1,a/10,a/2,a/3"), "prefix a/: %s", out);
    CHECK(lt_store_iter_next(it, NULL, NULL, NULL, NULL) == LT_STORE_END, "stays at the end");
    lt_store_iter_free(it);

    CHECK_OK(lt_store_iter_new(st, "records", NULL, 0, &it));
    CHECK(list_keys(it, out, sizeof out) == 8 && !strcmp(out, "a,a/1,a/10,a/2,a/3,a0,b/1,c"), "all: %s", out);
    lt_store_iter_free(it);

    CHECK_OK(lt_store_iter_new(st, "records", "zz", 2, &it));
    CHECK(list_keys(it, out, sizeof out) == 0, "past the end: %s", out);
    lt_store_iter_free(it);
    CHECK_OK(lt_store_iter_new(st, "scores", "", 0, &it));
    CHECK(list_keys(it, out, sizeof out) == 0, "empty db: %s", out);
    lt_store_iter_free(it);

    /* Values come with keys. */
    CHECK_OK(lt_store_iter_new(st, "records", "b", 1, &it));
    const void *k, *v;
    size_t kl, vl;
    CHECK(lt_store_iter_next(it, &k, &kl, &v, &vl) == LT_STORE_ITEM && vl == 3 && !memcmp(v, "b/1", 3), "value");
    lt_store_iter_free(it);

    /* Closing the store ends iterators still open; freeing them stays safe. */
    CHECK_OK(lt_store_iter_new(st, "records", "a", 1, &it));
    CHECK(lt_store_iter_next(it, &k, &kl, NULL, NULL) == LT_STORE_ITEM, "first item");
    lt_store_close(st);
    CHECK_FAILS(lt_store_iter_next(it, &k, &kl, NULL, NULL), "after its store was closed");
    lt_store_iter_free(it);
    lt_store_iter_free(NULL);
}

static void test_batches_and_snapshots(void) {
    lt_store *st = NULL;
    CHECK_OK(lt_store_open(fresh_path("batch"), 0, &st));
    if (!st) return;
    char buf[64], out[512];
    CHECK_OK(put_str(st, "runs", "keep", "1"));
    CHECK_OK(put_str(st, "runs", "gone", "1"));

    lt_store_iter *before = NULL, *after = NULL;
    CHECK_OK(lt_store_iter_new(st, "runs", NULL, 0, &before));

    CHECK_OK(lt_store_begin(st));
    CHECK_FAILS(lt_store_begin(st), "already open");
    CHECK_OK(put_str(st, "runs", "new", "2"));
    CHECK_OK(put_str(st, "runs", "new", "3"));
    CHECK_OK(lt_store_del(st, "runs", "gone", 4));
    CHECK(get_str(st, "runs", "new", buf, sizeof buf) == LT_OK && !strcmp(buf, "3"), "batch sees its newest put: %s", buf);
    CHECK(get_str(st, "runs", "gone", buf, sizeof buf) == LT_STORE_NOT_FOUND, "batch sees its del");
    /* An iterator started during the batch reads committed data only. */
    lt_store_iter *during = NULL;
    CHECK_OK(lt_store_iter_new(st, "runs", NULL, 0, &during));
    CHECK(list_keys(during, out, sizeof out) == 2 && !strcmp(out, "gone,keep"), "during: %s", out);
    lt_store_iter_free(during);
    lt_store_abort(st);
    CHECK(get_str(st, "runs", "new", buf, sizeof buf) == LT_STORE_NOT_FOUND, "aborted put not stored");
    CHECK(get_str(st, "runs", "gone", buf, sizeof buf) == LT_OK, "aborted del not applied");

    CHECK_OK(lt_store_begin(st));
    CHECK_OK(put_str(st, "runs", "new", "2"));
    CHECK_OK(lt_store_del(st, "runs", "gone", 4));
    CHECK_OK(lt_store_commit(st));
    CHECK(get_str(st, "runs", "new", buf, sizeof buf) == LT_OK && !strcmp(buf, "2"), "committed: %s", buf);
    CHECK_OK(lt_store_begin(st));
    CHECK_OK(lt_store_commit(st));   /* an empty batch */

    CHECK_OK(lt_store_iter_new(st, "runs", NULL, 0, &after));
    CHECK(list_keys(before, out, sizeof out) == 2 && !strcmp(out, "gone,keep"), "snapshot before: %s", out);
    CHECK(list_keys(after, out, sizeof out) == 2 && !strcmp(out, "keep,new"), "snapshot after: %s", out);
    lt_store_iter_free(before);
    lt_store_iter_free(after);

    /* Close with a batch open discards it. */
    CHECK_OK(lt_store_begin(st));
    CHECK_OK(put_str(st, "runs", "dropped", "1"));
    lt_store_close(st);
    CHECK_OK(lt_store_open(fresh_path("batch"), LT_STORE_READONLY, &st));
    if (st) {
        CHECK(get_str(st, "runs", "dropped", buf, sizeof buf) == LT_STORE_NOT_FOUND, "uncommitted batch dropped");
        CHECK(get_str(st, "runs", "new", buf, sizeof buf) == LT_OK, "committed data persists");
        lt_store_close(st);
    }
}

static void fill_value(unsigned char *v, size_t n, unsigned seed) {
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        v[i] = (unsigned char)(x >> 24);
    }
}

static void test_map_growth(void) {
    lt_store *st = NULL;
    const char *path = fresh_path("grow");
    CHECK_OK(lt_store_open(path, 0, &st));
    if (!st) return;
    size_t initial = lt_store_map_size(st);
    CHECK(initial <= ((size_t)64 << 20), "initial map %zu", initial);
    CHECK_OK(put_str(st, "runs", "a", "1"));
    CHECK_OK(put_str(st, "runs", "b", "2"));
    /* An iterator whose snapshot must survive the remaps below. */
    lt_store_iter *it = NULL;
    const void *k;
    size_t kl;
    CHECK_OK(lt_store_iter_new(st, "runs", NULL, 0, &it));
    CHECK(lt_store_iter_next(it, &k, &kl, NULL, NULL) == LT_STORE_ITEM && kl == 1 && *(const char *)k == 'a', "a");

    enum { VAL = 1 << 20, N = 100 };   /* 100 MiB in all; one batch alone > 64 MiB */
    unsigned char *val = malloc(VAL), *want = malloc(VAL);
    char key[32];
    CHECK_OK(lt_store_begin(st));
    for (int i = 0; i < 80; i++) {
        fill_value(val, VAL, (unsigned)i);
        snprintf(key, sizeof key, "big/%03d", i);
        CHECK_OK(lt_store_put(st, "llm_cache", key, strlen(key), val, VAL));
    }
    CHECK_OK(lt_store_commit(st));
    for (int i = 80; i < N; i++) {
        fill_value(val, VAL, (unsigned)i);
        snprintf(key, sizeof key, "big/%03d", i);
        CHECK_OK(lt_store_put(st, "llm_cache", key, strlen(key), val, VAL));
    }
    size_t grown = lt_store_map_size(st);
    CHECK(grown >= (size_t)N * VAL, "map grew to %zu", grown);
    CHECK(lt_store_iter_next(it, &k, &kl, NULL, NULL) == LT_STORE_ITEM && kl == 1 && *(const char *)k == 'b',
          "iterator continues after remaps");
    CHECK(lt_store_iter_next(it, &k, &kl, NULL, NULL) == LT_STORE_END, "and ends");
    lt_store_iter_free(it);
    lt_store_close(st);

    CHECK_OK(lt_store_open(path, LT_STORE_READONLY, &st));
    if (!st) { free(val); free(want); return; }
    int bad = 0;
    for (int i = 0; i < N; i++) {
        void *got = NULL;
        size_t n = 0;
        snprintf(key, sizeof key, "big/%03d", i);
        fill_value(want, VAL, (unsigned)i);
        if (lt_store_get(st, "llm_cache", key, strlen(key), &got, &n) != LT_OK || n != VAL || memcmp(got, want, VAL))
            bad++;
        lt_free(got);
    }
    CHECK(bad == 0, "%d of %d big values differ", bad, N);
    uint64_t count = 0;
    CHECK_OK(lt_store_count(st, "llm_cache", &count));
    CHECK(count == N, "count %llu", (unsigned long long)count);
    lt_store_close(st);
    free(val);
    free(want);
}

/* Runs a shell command; returns its exit status (-1 if it could not run). */
static int shell(const char *cmd) {
    int rc = system(cmd);
    return (rc != -1 && WIFEXITED(rc)) ? WEXITSTATUS(rc) : -1;
}

static void test_foreign(void) {
    lt_store *st = NULL;
    char cmd[1024];

    /* A directory with other files and no data.mdb. */
    const char *other = fresh_path("other");
    mkdir(other, 0777);
    snprintf(cmd, sizeof cmd, "%s/notes.txt", other);
    write_file(cmd, "hi", 2);
    CHECK_FAILS(lt_store_open(other, 0, &st), "is not a lantern store");
    CHECK(st == NULL, "no handle on failure");

    /* A regular file. */
    CHECK_FAILS(lt_store_open(cmd, 0, &st), "not a directory");

    /* data.mdb full of garbage, read-write and read-only. */
    const char *garbage = fresh_path("garbage");
    mkdir(garbage, 0777);
    unsigned char junk[65536];
    fill_value(junk, sizeof junk, 7);
    snprintf(cmd, sizeof cmd, "%s/data.mdb", garbage);
    write_file(cmd, junk, sizeof junk);
    CHECK_FAILS(lt_store_open(garbage, 0, &st), "is not a lantern store");
    CHECK_FAILS(lt_store_open(garbage, LT_STORE_READONLY, &st), "is not a lantern store");
    /* A short garbage file too. */
    write_file(cmd, "garbage", 7);
    CHECK_FAILS(lt_store_open(garbage, 0, &st), "is not a lantern store");

    /* Our environment with its lantern metadata removed. */
    const char *nometa = fresh_path("nometa");
    CHECK_OK(lt_store_open(nometa, 0, &st));
    if (st) {
        CHECK_OK(lt_store_del(st, "meta", "lantern", 7));
        lt_store_close(st);
        CHECK_FAILS(lt_store_open(nometa, 0, &st), "without lantern metadata");
        CHECK_FAILS(lt_store_open(nometa, LT_STORE_READONLY, &st), "without lantern metadata");
    }

    /* A newer schema version. */
    const char *newer = fresh_path("newer");
    CHECK_OK(lt_store_open(newer, 0, &st));
    if (st) {
        CHECK_OK(put_str(st, "meta", "lantern", "{\"format\":\"lantern-store\",\"schema_version\":999}"));
        lt_store_close(st);
        CHECK_FAILS(lt_store_open(newer, 0, &st), "schema version 999 is newer than this lantern (1)");
        CHECK_FAILS(lt_store_open(newer, LT_STORE_READONLY, &st), "schema version 999 is newer");
    }

    /* Environments written by another program (lmdb-utils' mdb_load, which
     * scripts/setup installs). */
    CHECK(shell("command -v mdb_load >/dev/null 2>&1") == 0, "mdb_load (package lmdb-utils) is installed");
    {
        const char *foreign = fresh_path("foreign");
        snprintf(cmd, sizeof cmd,
                 "printf 'VERSION=3\\nformat=print\\ntype=btree\\nHEADER=END\\n foo\\n bar\\nDATA=END\\n' | mdb_load %s",
                 foreign);
        mkdir(foreign, 0777);
        CHECK(shell(cmd) == 0, "mdb_load");
        CHECK_FAILS(lt_store_open(foreign, 0, &st), "without lantern metadata");
        const char *plain_meta = fresh_path("plainmeta");
        mkdir(plain_meta, 0777);
        snprintf(cmd, sizeof cmd,
                 "printf 'VERSION=3\\nformat=print\\ntype=btree\\nHEADER=END\\n meta\\n x\\nDATA=END\\n' | mdb_load %s",
                 plain_meta);
        CHECK(shell(cmd) == 0, "mdb_load");
        CHECK_FAILS(lt_store_open(plain_meta, 0, &st), "without lantern metadata");
        /* Not modified by the failed opens. */
        snprintf(cmd, sizeof cmd, "mdb_stat -a %s 2>/dev/null | grep -q 'Status of meta'", foreign);
        CHECK(shell(cmd) != 0, "foreign environment left unchanged");
    }
}

/* ------------------------------------------------------------ records */

static lt_act_record make_record(int n, int seed, int with_extra, int32_t *tok, float *act, int32_t *extra) {
    for (int i = 0; i < n; i++) {
        tok[i] = seed * 1000 + i;
        act[i] = (float)((seed * 7 + i * 3) % 11) * 0.25f - 1.0f;
        if (extra) extra[i] = i / 2;
    }
    lt_act_record r = {n, seed * 10 + 1, tok, act, with_extra ? extra : NULL};
    return r;
}

static int same_record(const lt_act_record *a, const lt_act_record *b) {
    if (a->n != b->n || a->window != b->window || (!a->extra) != (!b->extra)) return 0;
    size_t n = (size_t)a->n * 4;
    if (memcmp(a->tokens, b->tokens, n) || memcmp(a->acts, b->acts, n)) return 0;
    return !a->extra || !memcmp(a->extra, b->extra, n);
}

static float max_act(const lt_act_record *r) {
    float m = -INFINITY;
    for (int i = 0; i < r->n; i++) if (r->acts[i] > m) m = r->acts[i];
    return m;
}

static void test_records(void) {
    enum { T = 16 };
    static int32_t tok[12][T], ext[12][T];
    static float act[12][T];
    lt_act_record top[4], rnd[3], b0[2], b1[1];
    /* Top records given in an order that is not by maximum; one with a
     * distinctly higher maximum goes last. */
    for (int i = 0; i < 4; i++) top[i] = make_record(T, i + 1, i == 2, tok[i], act[i], ext[i]);
    act[3][5] = 50.0f;
    for (int i = 0; i < 3; i++) rnd[i] = make_record(T - i, 10 + i, 0, tok[4 + i], act[4 + i], ext[4 + i]);
    for (int i = 0; i < 2; i++) b0[i] = make_record(5, 20 + i, 1, tok[7 + i], act[7 + i], ext[7 + i]);
    b1[0] = make_record(0, 30, 0, tok[9], act[9], ext[9]);
    lt_quantile_bin bins[2] = {
        {0.5, 0.9, -0.25, 0.75, 2, b0},
        {0.9, 0.99, 0.75, 1.5, 1, b1},
    };
    lt_record_set rs = {0.125, 2.5, -0.75, 3.25, 123456789012ULL, 4, top, 3, rnd, 2, bins};

    void *buf = NULL;
    size_t len = 0;
    CHECK_OK(lt_store_encode_record(&rs, &buf, &len));
    lt_record_set *d = NULL;
    CHECK_OK(lt_store_decode_record(buf, len, &d));
    if (d) {
        CHECK(d->mean == rs.mean && d->variance == rs.variance && d->skewness == rs.skewness &&
              d->kurtosis == rs.kurtosis && d->count == rs.count, "statistics exact");
        CHECK(d->n_top == 4 && d->n_random == 3 && d->n_bins == 2, "counts");
        int ok = d->n_top == 4;
        for (int i = 0; ok && i + 1 < 4; i++) ok = max_act(&d->top[i]) >= max_act(&d->top[i + 1]);
        CHECK(ok, "top ordered by decreasing maximum");
        CHECK(d->n_top == 4 && same_record(&d->top[0], &top[3]), "highest first");
        /* Every given top record is present exactly once. */
        int found = 0;
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < d->n_top; j++) found += same_record(&top[i], &d->top[j]);
        CHECK(found == 4, "top records preserved (%d)", found);
        ok = d->n_random == 3;
        for (int i = 0; ok && i < 3; i++) ok = same_record(&rnd[i], &d->random[i]);
        CHECK(ok, "random records exact and in order");
        CHECK(d->n_bins == 2 && d->bins[0].q_lo == 0.5 && d->bins[0].q_hi == 0.9 && d->bins[0].lo == -0.25 &&
              d->bins[0].hi == 0.75 && d->bins[1].q_hi == 0.99 && d->bins[1].n_records == 1, "bins");
        CHECK(d->n_bins == 2 && d->bins[0].n_records == 2 && same_record(&d->bins[0].records[0], &b0[0]) &&
              same_record(&d->bins[0].records[1], &b0[1]) && same_record(&d->bins[1].records[0], &b1[0]),
              "bin records exact");
        /* Re-encoding the decoded set gives the same bytes. */
        void *again = NULL;
        size_t alen = 0;
        CHECK_OK(lt_store_encode_record(d, &again, &alen));
        CHECK(alen == len && again && !memcmp(again, buf, len), "re-encoding is identical");
        lt_free(again);
        lt_free(d);
    }

    /* Every truncation is an error; damaged bytes never crash. */
    int truncated_ok = 1;
    for (size_t n = 0; n < len; n++) {
        lt_record_set *t = NULL;
        if (lt_store_decode_record(buf, n, &t) == LT_OK) { truncated_ok = 0; lt_free(t); }
    }
    CHECK(truncated_ok, "truncated values rejected");
    unsigned char *copy = malloc(len);
    uint32_t x = 12345;
    for (int trial = 0; trial < 2000; trial++) {
        memcpy(copy, buf, len);
        for (int f = 0; f < 3; f++) {
            x = x * 1664525u + 1013904223u;
            copy[(x >> 8) % len] ^= (unsigned char)(1u << (x % 8));
        }
        lt_record_set *t = NULL;
        if (lt_store_decode_record(copy, len, &t) == LT_OK) lt_free(t);
    }
    memcpy(copy, buf, len);
    copy[0] = 'X';
    CHECK_FAILS(lt_store_decode_record(copy, len, &d), "bad magic");
    memcpy(copy, buf, len);
    copy[4] = 2;
    CHECK_FAILS(lt_store_decode_record(copy, len, &d), "format version 2");
    CHECK_FAILS(lt_store_decode_record("LTRS\1\0\0\0", 8, &d), "truncated header");
    free(copy);
    lt_free(buf);

    lt_record_set empty = {0};
    CHECK_OK(lt_store_encode_record(&empty, &buf, &len));
    CHECK_OK(lt_store_decode_record(buf, len, &d));
    CHECK(d && d->n_top == 0 && d->top == NULL && d->n_bins == 0, "empty set");
    lt_free(d);
    lt_free(buf);
    lt_act_record badrec = {3, 0, NULL, NULL, NULL};
    lt_record_set bad = {0};
    bad.n_top = 1;
    bad.top = &badrec;
    CHECK_FAILS(lt_store_encode_record(&bad, &buf, &len), "lacks tokens");

    /* Through the store. */
    lt_store *st = NULL;
    CHECK_OK(lt_store_open(fresh_path("records"), 0, &st));
    if (!st) return;
    CHECK_OK(lt_store_put_record(st, "toy", "mlp_neuron", 1, 42, &rs));
    CHECK(lt_store_get_record(st, "toy", "mlp_neuron", 1, 43, &d) == LT_STORE_NOT_FOUND && d == NULL, "absent node");
    CHECK_OK(lt_store_get_record(st, "toy", "mlp_neuron", 1, 42, &d));
    CHECK(d && d->n_top == 4 && same_record(&d->top[0], &top[3]) && d->count == rs.count, "stored record set");
    lt_free(d);
    CHECK(lt_store_get(st, "records", "rec/toy/mlp_neuron/0001/00000042", 32, NULL, NULL) == LT_OK, "key schema");
    CHECK_FAILS(lt_store_put_record(st, "a/b", "mlp_neuron", 0, 0, &rs), "contains '/'");
    CHECK_OK(put_str(st, "records", "rec/toy/mlp_neuron/0001/00000044", "junk"));
    CHECK_FAILS(lt_store_get_record(st, "toy", "mlp_neuron", 1, 44, &d), "rec/toy/mlp_neuron/0001/00000044");
    lt_store_close(st);
}

static void test_node_key(void) {
    char buf[128];
    CHECK_OK(lt_store_node_key("expl", "gpt2-small", "attn_head", 11, 7, buf, sizeof buf));
    CHECK(!strcmp(buf, "expl/gpt2-small/attn_head/0011/00000007"), "%s", buf);
    CHECK_OK(lt_store_node_key("rec", "m", "sae_latent", 9999, 99999999, buf, sizeof buf));
    CHECK(!strcmp(buf, "rec/m/sae_latent/9999/99999999"), "%s", buf);
    CHECK_FAILS(lt_store_node_key("rec", "", "k", 0, 0, buf, sizeof buf), "model name is empty");
    CHECK_FAILS(lt_store_node_key("rec", "m", "k\n", 0, 0, buf, sizeof buf), "control character");
    CHECK_FAILS(lt_store_node_key("rec", "m", "k", -1, 0, buf, sizeof buf), "layer -1");
    CHECK_FAILS(lt_store_node_key("rec", "m", "k", 0, 100000000, buf, sizeof buf), "index 100000000");
    CHECK_FAILS(lt_store_node_key("rec", "m", "k", 0, 0, buf, 8), "too small");
}


/* A reader in one process while another commits (and grows the map): every
 * snapshot shows one whole batch, and the reader is never blocked. */
enum { CW_KEYS = 10, CW_BATCHES = 120, CW_VAL = 100000 };

static void concurrent_writer(const char *path) {
    lt_store *st;
    if (lt_store_open(path, 0, &st)) _exit(2);
    unsigned char *val = calloc(1, CW_VAL);
    char key[32];
    for (int32_t b = 1; b <= CW_BATCHES; b++) {
        memcpy(val, &b, 4);
        if (lt_store_begin(st)) _exit(3);
        for (int i = 0; i < CW_KEYS; i++) {
            snprintf(key, sizeof key, "x/%02d", i);
            if (lt_store_put(st, "runs", key, strlen(key), val, CW_VAL)) _exit(4);
            /* Grow the file: old versions stay pinned by the reader. */
            snprintf(key, sizeof key, "pad/%04d/%02d", b, i);
            if (lt_store_put(st, "llm_cache", key, strlen(key), val, CW_VAL)) _exit(4);
        }
        if (lt_store_commit(st)) _exit(5);
    }
    free(val);
    lt_store_close(st);
    _exit(0);
}

static void test_concurrent_reader(void) {
    const char *path = fresh_path("concurrent");
    lt_store *st = NULL;
    CHECK_OK(lt_store_open(path, 0, &st));
    if (!st) return;
    int32_t zero = 0;
    char key[32];
    CHECK_OK(lt_store_begin(st));
    for (int i = 0; i < CW_KEYS; i++) {
        snprintf(key, sizeof key, "x/%02d", i);
        CHECK_OK(lt_store_put(st, "runs", key, strlen(key), &zero, 4));
    }
    CHECK_OK(lt_store_commit(st));
    lt_store_close(st);

    pid_t pid = fork();
    if (pid == 0) concurrent_writer(path);
    CHECK_OK(lt_store_open(path, LT_STORE_READONLY, &st));
    if (!st) { kill(pid, SIGKILL); waitpid(pid, NULL, 0); return; }
    int snapshots = 0, torn = 0, distinct = 0, status = 0;
    int32_t last_seen = -1;
    for (;;) {
        int done = waitpid(pid, &status, WNOHANG) == pid;
        lt_store_iter *it;
        if (lt_store_iter_new(st, "runs", "x/", 2, &it)) { torn++; break; }
        const void *k, *v;
        size_t kl, vl;
        int32_t first = -1, n = 0;
        while (lt_store_iter_next(it, &k, &kl, &v, &vl) == LT_STORE_ITEM) {
            int32_t b;
            memcpy(&b, v, 4);
            if (n++ == 0) first = b;
            else if (b != first) torn++;
        }
        lt_store_iter_free(it);
        if (n != CW_KEYS) torn++;
        if (first != last_seen) distinct++;
        last_seen = first;
        snapshots++;
        if (done) break;
    }
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "writer status %d", status);
    CHECK(torn == 0, "%d torn snapshots of %d", torn, snapshots);
    CHECK(last_seen == CW_BATCHES, "last snapshot shows batch %d", last_seen);
    CHECK(distinct > 2, "reader saw %d distinct batches while the writer ran", distinct);
    lt_store_close(st);
}

/* ------------------------------------------------------ crash safety */

enum { KEYS_PER_BATCH = 40, VAL_BYTES = 2000 };

/* The child: resumes after the last committed batch and commits batches
 * forever, signalling each commit on fd. */
static void crash_writer(const char *path, int fd) {
    lt_store *st;
    if (lt_store_open(path, 0, &st)) _exit(2);
    int32_t last = -1;
    void *v = NULL;
    size_t n = 0;
    if (lt_store_get(st, "runs", "last", 4, &v, &n) == LT_OK && n == 4) memcpy(&last, v, 4);
    lt_free(v);
    unsigned char val[VAL_BYTES];
    char key[32];
    for (int32_t b = last + 1;; b++) {
        if (lt_store_begin(st)) _exit(3);
        for (int i = 0; i < KEYS_PER_BATCH; i++) {
            snprintf(key, sizeof key, "b%06d/%03d", b, i);
            fill_value(val, sizeof val, (unsigned)(b * KEYS_PER_BATCH + i));
            if (lt_store_put(st, "runs", key, strlen(key), val, sizeof val)) _exit(4);
        }
        if (lt_store_put(st, "runs", "last", 4, &b, 4) || lt_store_commit(st)) _exit(5);
        if (write(fd, "x", 1) != 1) _exit(6);
    }
}

/* Checks that the store holds exactly batches 0..last, each whole. */
static int check_prefix_of_batches(const char *path, int32_t *last_out) {
    lt_store *st;
    if (lt_store_open(path, LT_STORE_READONLY, &st)) {
        fprintf(stderr, "reopen after kill: %s\n", lt_last_error());
        return 0;
    }
    int32_t last = -1;
    void *v = NULL;
    size_t n = 0;
    if (lt_store_get(st, "runs", "last", 4, &v, &n) == LT_OK && n == 4) memcpy(&last, v, 4);
    lt_free(v);
    lt_store_iter *it;
    int ok = lt_store_iter_new(st, "runs", "b", 1, &it) == LT_OK;
    const void *k, *val;
    size_t kl, vl;
    long seen = 0;
    unsigned char want[VAL_BYTES];
    while (ok && lt_store_iter_next(it, &k, &kl, &val, &vl) == LT_STORE_ITEM) {
        int b = -1, i = -1;
        char key[32];
        snprintf(key, sizeof key, "%.*s", (int)kl, (const char *)k);
        if (sscanf(key, "b%d/%d", &b, &i) != 2) { ok = 0; break; }
        fill_value(want, sizeof want, (unsigned)(b * KEYS_PER_BATCH + i));
        /* Keys arrive in order, so entry `seen` must be (seen / K, seen % K). */
        if (b != seen / KEYS_PER_BATCH || i != seen % KEYS_PER_BATCH || vl != VAL_BYTES || memcmp(val, want, vl)) {
            fprintf(stderr, "unexpected entry %s at position %ld\n", key, seen);
            ok = 0;
        }
        seen++;
    }
    lt_store_iter_free(it);
    lt_store_close(st);
    if (seen != (long)(last + 1) * KEYS_PER_BATCH) {
        fprintf(stderr, "%ld entries for %d committed batches\n", seen, last + 1);
        ok = 0;
    }
    *last_out = last;
    return ok;
}

static void test_crash_safety(void) {
    const char *path = fresh_path("crash");
    int32_t last = -1, prev = -1;
    for (int round = 0; round < 4; round++) {
        int fds[2];
        if (pipe(fds)) { perror("pipe"); return; }
        pid_t pid = fork();
        if (pid == 0) {
            close(fds[0]);
            crash_writer(path, fds[1]);
        }
        close(fds[1]);
        char c;
        int commits = 0;
        while (commits < 5 && read(fds[0], &c, 1) == 1) commits++;
        usleep((useconds_t)(round * 1700));   /* kill at varying points of a commit */
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        close(fds[0]);
        CHECK(commits == 5, "round %d: writer committed %d batches before the kill", round, commits);
        CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "round %d: writer was killed (status %d)", round, status);
        CHECK(check_prefix_of_batches(path, &last), "round %d: a whole prefix of batches", round);
        CHECK(last >= prev + 5, "round %d: resumed and kept %d batches (had %d)", round, last + 1, prev + 1);
        prev = last;
    }
}

int main(void) {
    snprintf(tmp_root, sizeof tmp_root, "/tmp/lantern_test_store_XXXXXX");
    if (!mkdtemp(tmp_root)) { perror("mkdtemp"); return 1; }
    test_basic();
    test_iteration();
    test_batches_and_snapshots();
    test_map_growth();
    test_foreign();
    test_records();
    test_node_key();
    test_concurrent_reader();
    test_crash_safety();
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_root);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmp_root);
    return check_summary();
}
