/*
 * store.c: lantern's persistent store over LMDB (docs/store.md).
 *
 * One environment directory with named databases. Writes go through an
 * in-memory batch log that is applied in one write transaction at commit:
 * the write lock is then held only while committing, and a commit that finds
 * the map full can grow the map and replay the log, so callers never see
 * MDB_MAP_FULL. Reads use LMDB read transactions (snapshots), so readers in
 * this or other processes never block the writer.
 */
#include "internal.h"

#include <cjson/cJSON.h>
#include <lmdb.h>

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* Binary values are written in host order and documented as little-endian. */
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "store.c writes little-endian values; a big-endian port needs byte swapping"
#endif

#define INITIAL_MAP_SIZE ((size_t)64 << 20)
#define META_KEY "lantern"
#define STORE_FORMAT "lantern-store"

static const char *const db_names[] = {
    "meta", "models", "records", "explanations", "scores", "llm_cache", "runs",
};
enum { N_DBS = sizeof db_names / sizeof db_names[0], DB_META = 0 };

/* One buffered write of a batch; key and value live in the batch arena. */
typedef struct batch_op {
    int db, del;
    size_t koff, klen, voff, vlen;
} batch_op;

struct lt_store {
    MDB_env *env;
    char *path;
    int readonly;
    MDB_dbi dbi[N_DBS];
    int has_db[N_DBS];        /* a read-only open of an older store may lack one */
    dev_t dev;                /* identity of the directory, for the */
    ino_t ino;                /* one-open-per-process rule */
    lt_store *next_open;
    MDB_txn *rtxn;            /* reset read txn reused by gets (keeps its reader slot) */
    unsigned map_gen;         /* bumped at each remap; iterators then re-seek */
    lt_store_iter *iters;     /* live iterators, ended at close */
    int in_batch;
    batch_op *ops;
    size_t n_ops, cap_ops;
    char *arena;
    size_t arena_len, arena_cap;
};

struct lt_store_iter {
    lt_store *st;             /* NULL once the store is closed */
    lt_store_iter *prev, *next;
    MDB_txn *txn;             /* the snapshot; NULL when done */
    MDB_cursor *cur;
    MDB_dbi dbi;
    unsigned gen;             /* st->map_gen when cur was positioned */
    char *prefix;
    size_t plen;
    int started, done;
    char *kbuf, *vbuf;
    size_t klen, kcap, vcap;
};

/* ------------------------------------------------------------ helpers */

/* lt_fail with LMDB's message for rc appended. */
static int mdb_fail(int rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int mdb_fail(int rc, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return lt_fail("%s: %s", msg, mdb_strerror(rc));
}

static int db_index(const lt_store *st, const char *db) {
    if (!db) return lt_fail("store %s: database name is NULL", st->path);
    for (int i = 0; i < N_DBS; i++)
        if (strcmp(db, db_names[i]) == 0) return i;
    return lt_fail("store %s: unknown database '%s' (meta, models, records, explanations, "
                   "scores, llm_cache, runs)", st->path, db);
}

/* Grows (size > 0) or adopts another process's larger size (size 0). Only
 * called with no write transaction open. Live read transactions of our
 * iterators survive it: LMDB's read transactions hold page numbers, not
 * pointers, except in their cursors, which the iterators re-seek when
 * map_gen changes. */
static int remap(lt_store *st, size_t size) {
    int rc = mdb_env_set_mapsize(st->env, size);
    if (rc == 0) st->map_gen++;
    return rc;
}

/* mdb_txn_begin, adopting a map grown by another process when LMDB asks. */
static int begin_txn(lt_store *st, unsigned flags, MDB_txn **txn) {
    int rc = mdb_txn_begin(st->env, NULL, flags, txn);
    if (rc == MDB_MAP_RESIZED) {
        rc = remap(st, 0);
        if (rc == 0) rc = mdb_txn_begin(st->env, NULL, flags, txn);
    }
    if (rc) *txn = NULL;
    return rc;
}

/* A read snapshot for one get: the cached transaction renewed. */
static int read_begin(lt_store *st, MDB_txn **txn) {
    if (st->rtxn) {
        int rc = mdb_txn_renew(st->rtxn);
        if (rc == 0) { *txn = st->rtxn; return 0; }
        mdb_txn_abort(st->rtxn);
        st->rtxn = NULL;
        if (rc != MDB_MAP_RESIZED) return rc;
    }
    int rc = begin_txn(st, MDB_RDONLY, &st->rtxn);
    *txn = st->rtxn;
    return rc;
}

static void read_end(lt_store *st) {
    if (st->rtxn) mdb_txn_reset(st->rtxn);
}

/* mkdir -p */
static int make_dirs(const char *path) {
    char buf[4096];
    size_t n = strlen(path);
    if (n >= sizeof buf) return lt_fail("store path too long: %s", path);
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0') continue;
        char c = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            return lt_fail("cannot create store directory %s: %s", buf, strerror(errno));
        buf[i] = c;
    }
    return LT_OK;
}

/* What a directory holds: 1 if it has data.mdb, 0 if it is empty (a stale
 * lock.mdb alone counts as empty), -1 (error set) if it holds other things. */
static int inspect_dir(const char *path) {
    DIR *d = opendir(path);
    if (!d) return lt_fail("cannot open store directory %s: %s", path, strerror(errno));
    int has_data = 0, other = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *n = e->d_name;
        if (!strcmp(n, ".") || !strcmp(n, "..") || !strcmp(n, "lock.mdb")) continue;
        if (!strcmp(n, "data.mdb")) has_data = 1;
        else other = 1;
    }
    closedir(d);
    if (has_data) return 1;
    if (other) return lt_fail("%s is not a lantern store (a directory with other files and no data.mdb)", path);
    return 0;
}

/* --------------------------------------------- one open per process */

/* LMDB forbids opening one environment twice in a process: its file locks
 * are per process, so a second open would reset the first one's lock table. */
static pthread_mutex_t open_lock = PTHREAD_MUTEX_INITIALIZER;
static lt_store *open_stores;

static int register_open(lt_store *st) {
    pthread_mutex_lock(&open_lock);
    for (lt_store *o = open_stores; o; o = o->next_open) {
        if (o->dev == st->dev && o->ino == st->ino) {
            pthread_mutex_unlock(&open_lock);
            return lt_fail("store %s is already open in this process (as %s); share that handle",
                           st->path, o->path);
        }
    }
    st->next_open = open_stores;
    open_stores = st;
    pthread_mutex_unlock(&open_lock);
    return LT_OK;
}

static void unregister_open(lt_store *st) {
    pthread_mutex_lock(&open_lock);
    for (lt_store **p = &open_stores; *p; p = &(*p)->next_open) {
        if (*p == st) { *p = st->next_open; break; }
    }
    pthread_mutex_unlock(&open_lock);
}

/* ------------------------------------------------------- metadata */

static int write_meta(lt_store *st, MDB_txn *txn) {
    char when[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    cJSON *o = cJSON_CreateObject();
    if (!o) return lt_fail("out of memory");
    cJSON_AddStringToObject(o, "format", STORE_FORMAT);
    cJSON_AddNumberToObject(o, "schema_version", LT_STORE_SCHEMA_VERSION);
    cJSON_AddNumberToObject(o, "record_format", LT_RECORD_FORMAT_VERSION);
    cJSON_AddStringToObject(o, "created_utc", when);
    cJSON_AddStringToObject(o, "created_by", "lantern");
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!text) return lt_fail("out of memory");
    MDB_val k = {strlen(META_KEY), (void *)META_KEY}, v = {strlen(text), text};
    int rc = mdb_put(txn, st->dbi[DB_META], &k, &v, 0);
    cJSON_free(text);
    return rc ? mdb_fail(rc, "store %s: cannot write metadata", st->path) : LT_OK;
}

static int check_meta(lt_store *st, MDB_txn *txn) {
    MDB_val k = {strlen(META_KEY), (void *)META_KEY}, v;
    int rc = mdb_get(txn, st->dbi[DB_META], &k, &v);
    if (rc == MDB_NOTFOUND)
        return lt_fail("%s is not a lantern store (an LMDB environment without lantern metadata)", st->path);
    if (rc) return mdb_fail(rc, "store %s: cannot read metadata", st->path);
    cJSON *o = cJSON_ParseWithLength(v.mv_data, v.mv_size);
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(o, "format");
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(o, "schema_version");
    int ok = cJSON_IsString(fmt) && !strcmp(fmt->valuestring, STORE_FORMAT) && cJSON_IsNumber(ver)
             && ver->valuedouble >= 1 && ver->valuedouble <= 1e6;
    int version = ok ? (int)ver->valuedouble : 0;
    cJSON_Delete(o);
    if (!ok) return lt_fail("%s is not a lantern store (unreadable lantern metadata)", st->path);
    if (version > LT_STORE_SCHEMA_VERSION)
        return lt_fail("store %s: schema version %d is newer than this lantern (%d); update lantern",
                       st->path, version, LT_STORE_SCHEMA_VERSION);
    return LT_OK;
}

/* Opens (creating when writable) the named databases and checks or writes
 * the metadata, in one transaction, so a foreign environment is never
 * modified: nothing is created unless the environment is empty or ours. */
static int open_dbs(lt_store *st) {
    MDB_txn *txn;
    int rc = begin_txn(st, st->readonly ? MDB_RDONLY : 0, &txn);
    if (rc) return mdb_fail(rc, "store %s: cannot begin a transaction", st->path);
    MDB_dbi main_dbi;
    MDB_stat ms;
    rc = mdb_dbi_open(txn, NULL, 0, &main_dbi);
    if (!rc) rc = mdb_stat(txn, main_dbi, &ms);
    if (rc) { mdb_txn_abort(txn); return mdb_fail(rc, "%s is not a lantern store", st->path); }
    int fresh = ms.ms_entries == 0;
    if (fresh && st->readonly) {
        mdb_txn_abort(txn);
        return lt_fail("%s is not a lantern store (an empty LMDB environment)", st->path);
    }
    if (!fresh) {
        rc = mdb_dbi_open(txn, db_names[DB_META], 0, &st->dbi[DB_META]);
        if (rc == MDB_NOTFOUND || rc == MDB_INCOMPATIBLE) {
            mdb_txn_abort(txn);
            return lt_fail("%s is not a lantern store (an LMDB environment without lantern metadata)", st->path);
        }
        if (rc) { mdb_txn_abort(txn); return mdb_fail(rc, "store %s: cannot open 'meta'", st->path); }
        st->has_db[DB_META] = 1;
        if (check_meta(st, txn)) { mdb_txn_abort(txn); return LT_ERR; }
    }
    for (int i = 0; i < N_DBS; i++) {
        if (st->has_db[i]) continue;
        rc = mdb_dbi_open(txn, db_names[i], st->readonly ? 0 : MDB_CREATE, &st->dbi[i]);
        if (rc == MDB_NOTFOUND && st->readonly) continue;   /* read as empty */
        if (rc) {
            mdb_txn_abort(txn);
            return mdb_fail(rc, "store %s: cannot open database '%s'", st->path, db_names[i]);
        }
        st->has_db[i] = 1;
    }
    if (fresh && write_meta(st, txn)) { mdb_txn_abort(txn); return LT_ERR; }
    /* Committing (read-only too) keeps the database handles for the env. */
    rc = mdb_txn_commit(txn);
    if (rc) return mdb_fail(rc, "store %s: cannot initialise", st->path);
    return LT_OK;
}

/* ------------------------------------------------------ open / close */

int lt_store_open(const char *path, int flags, lt_store **out) {
    if (!out) return lt_fail("lt_store_open: out is NULL");
    *out = NULL;
    if (!path || !*path) return lt_fail("lt_store_open: empty path");
    if (flags & ~LT_STORE_READONLY) return lt_fail("lt_store_open: unknown flags 0x%x", (unsigned)flags);
    int ro = (flags & LT_STORE_READONLY) != 0;

    struct stat sb;
    if (stat(path, &sb) != 0) {
        if (errno != ENOENT) return lt_fail("cannot open store %s: %s", path, strerror(errno));
        if (ro) return lt_fail("no lantern store at %s (a read-only open does not create one)", path);
        if (make_dirs(path)) return LT_ERR;
        if (stat(path, &sb) != 0) return lt_fail("cannot create store directory %s: %s", path, strerror(errno));
    }
    if (!S_ISDIR(sb.st_mode)) return lt_fail("%s is not a lantern store (not a directory)", path);
    int has_data = inspect_dir(path);
    if (has_data < 0) return LT_ERR;
    if (!has_data && ro) return lt_fail("no lantern store at %s (no data.mdb)", path);

    lt_store *st = calloc(1, sizeof *st);
    if (!st || !(st->path = strdup(path))) { free(st); return lt_fail("out of memory"); }
    st->readonly = ro;
    st->dev = sb.st_dev;
    st->ino = sb.st_ino;
    if (register_open(st)) { free(st->path); free(st); return LT_ERR; }

    int rc = mdb_env_create(&st->env);
    if (!rc) rc = mdb_env_set_maxdbs(st->env, 16);
    /* Each live iterator holds a reader slot until it ends or is freed (in
     * Lua: collected), so allow more than LMDB's default 126. */
    if (!rc) rc = mdb_env_set_maxreaders(st->env, 1024);
    /* An existing environment keeps the map size recorded in its file. */
    if (!rc && !has_data) rc = mdb_env_set_mapsize(st->env, INITIAL_MAP_SIZE);
    if (rc) { mdb_fail(rc, "store %s: cannot create the environment", path); goto fail; }
    /* MDB_NOTLS: read transactions belong to our handles, not to threads,
     * so a Lua iterator may outlive the call that made it. */
    rc = mdb_env_open(st->env, path, MDB_NOTLS | (ro ? MDB_RDONLY : 0), 0664);
    if (rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH) {
        mdb_fail(rc, "%s is not a lantern store (data.mdb is not a readable LMDB file)", path);
        goto fail;
    }
    if (rc) { mdb_fail(rc, "cannot open store %s", path); goto fail; }
    /* Clear reader slots left by killed processes, so they pin no pages. */
    int dead;
    mdb_reader_check(st->env, &dead);
    if (open_dbs(st)) goto fail;
    *out = st;
    return LT_OK;
fail:
    if (st->env) mdb_env_close(st->env);
    unregister_open(st);
    free(st->path);
    free(st);
    return LT_ERR;
}

static void iter_release(lt_store_iter *it) {
    if (it->cur) mdb_cursor_close(it->cur);
    if (it->txn) mdb_txn_abort(it->txn);
    it->cur = NULL;
    it->txn = NULL;
}

static void batch_clear(lt_store *st) {
    st->n_ops = 0;
    st->arena_len = 0;
    st->in_batch = 0;
    /* Do not keep a huge batch's memory for the rest of the session. */
    if (st->arena_cap > ((size_t)64 << 20)) {
        free(st->arena);
        st->arena = NULL;
        st->arena_cap = 0;
    }
}

void lt_store_close(lt_store *st) {
    if (!st) return;
    for (lt_store_iter *it = st->iters, *next; it; it = next) {
        next = it->next;
        iter_release(it);
        it->st = NULL;
        it->prev = it->next = NULL;
    }
    if (st->rtxn) mdb_txn_abort(st->rtxn);
    mdb_env_close(st->env);
    unregister_open(st);
    free(st->ops);
    free(st->arena);
    free(st->path);
    free(st);
}

/* ------------------------------------------------------------ writes */

static int check_key(const lt_store *st, const void *key, size_t klen) {
    size_t max = (size_t)mdb_env_get_maxkeysize(st->env);
    if (!key || klen == 0 || klen > max)
        return lt_fail("store %s: key length %zu outside 1..%zu", st->path, klen, max);
    return LT_OK;
}

static int arena_add(lt_store *st, const void *p, size_t n, size_t *off) {
    if (st->arena_len + n > st->arena_cap) {
        size_t cap = st->arena_cap ? st->arena_cap : 65536;
        while (cap < st->arena_len + n) {
            if (cap > SIZE_MAX / 2) return lt_fail("store %s: batch too large", st->path);
            cap *= 2;
        }
        char *a = realloc(st->arena, cap);
        if (!a) return lt_fail("store %s: out of memory buffering a batch of %zu bytes", st->path, cap);
        st->arena = a;
        st->arena_cap = cap;
    }
    if (n) memcpy(st->arena + st->arena_len, p, n);
    *off = st->arena_len;
    st->arena_len += n;
    return LT_OK;
}

static int log_op(lt_store *st, int db, int del, const void *key, size_t klen,
                  const void *val, size_t vlen) {
    if (st->n_ops == st->cap_ops) {
        size_t cap = st->cap_ops ? st->cap_ops * 2 : 256;
        batch_op *ops = realloc(st->ops, cap * sizeof *ops);
        if (!ops) return lt_fail("store %s: out of memory buffering a batch", st->path);
        st->ops = ops;
        st->cap_ops = cap;
    }
    batch_op *op = &st->ops[st->n_ops];
    op->db = db;
    op->del = del;
    op->klen = klen;
    op->vlen = vlen;
    if (arena_add(st, key, klen, &op->koff) || arena_add(st, val, vlen, &op->voff)) return LT_ERR;
    st->n_ops++;
    return LT_OK;
}

/* Applies the batch log in one write transaction; on a full map, grows the
 * map (doubling) and replays it. The log is cleared whatever the outcome. */
static int apply_log(lt_store *st) {
    int rc;
    for (;;) {
        MDB_txn *txn;
        rc = begin_txn(st, 0, &txn);
        if (rc) break;
        for (size_t i = 0; i < st->n_ops && !rc; i++) {
            const batch_op *op = &st->ops[i];
            MDB_val k = {op->klen, st->arena + op->koff};
            if (op->del) {
                rc = mdb_del(txn, st->dbi[op->db], &k, NULL);
                if (rc == MDB_NOTFOUND) rc = 0;
            } else {
                MDB_val v = {op->vlen, st->arena + op->voff};
                rc = mdb_put(txn, st->dbi[op->db], &k, &v, 0);
            }
        }
        if (rc) mdb_txn_abort(txn);
        else rc = mdb_txn_commit(txn);   /* frees txn even when it fails */
        if (rc != MDB_MAP_FULL) break;
        /* Double, or more when the batch alone is large, so that a big
         * batch is replayed once or twice, not many times. */
        MDB_envinfo info;
        mdb_env_info(st->env, &info);
        size_t cur = info.me_mapsize;
        if (cur > SIZE_MAX / 4 || st->arena_len > SIZE_MAX / 4) break;
        size_t next = cur * 2 > cur + 2 * st->arena_len ? cur * 2 : cur + 2 * st->arena_len;
        int grc = remap(st, next);
        if (grc) {
            batch_clear(st);
            return mdb_fail(grc, "store %s: cannot grow the map to %zu bytes", st->path, next);
        }
    }
    size_t n = st->n_ops;
    batch_clear(st);
    if (rc) return mdb_fail(rc, "store %s: commit of %zu writes failed", st->path, n);
    return LT_OK;
}

static int write_op(lt_store *st, const char *db, int del, const void *key, size_t klen,
                    const void *val, size_t vlen) {
    if (!st) return lt_fail("store is NULL");
    if (st->readonly) return lt_fail("store %s is open read-only", st->path);
    int i = db_index(st, db);
    if (i < 0 || check_key(st, key, klen)) return LT_ERR;
    if (!del && !val && vlen) return lt_fail("store %s: value is NULL", st->path);
    if (log_op(st, i, del, key, klen, val, vlen)) {
        if (!st->in_batch) batch_clear(st);
        return LT_ERR;
    }
    return st->in_batch ? LT_OK : apply_log(st);
}

int lt_store_put(lt_store *st, const char *db, const void *key, size_t klen,
                 const void *val, size_t vlen) {
    return write_op(st, db, 0, key, klen, val, vlen);
}

int lt_store_del(lt_store *st, const char *db, const void *key, size_t klen) {
    return write_op(st, db, 1, key, klen, NULL, 0);
}

int lt_store_begin(lt_store *st) {
    if (!st) return lt_fail("store is NULL");
    if (st->readonly) return lt_fail("store %s is open read-only", st->path);
    if (st->in_batch) return lt_fail("store %s: a batch is already open", st->path);
    st->in_batch = 1;
    return LT_OK;
}

int lt_store_commit(lt_store *st) {
    if (!st) return lt_fail("store is NULL");
    if (!st->in_batch) return lt_fail("store %s: commit without a batch", st->path);
    if (st->n_ops == 0) { batch_clear(st); return LT_OK; }
    return apply_log(st);
}

void lt_store_abort(lt_store *st) {
    if (st) batch_clear(st);
}

/* ------------------------------------------------------------- reads */

static int copy_out(const void *p, size_t n, void **val, size_t *vlen) {
    if (val) {
        void *c = malloc(n ? n : 1);
        if (!c) return lt_fail("out of memory copying a %zu-byte value", n);
        if (n) memcpy(c, p, n);
        *val = c;
    }
    if (vlen) *vlen = n;
    return LT_OK;
}

int lt_store_get(lt_store *st, const char *db, const void *key, size_t klen,
                 void **val, size_t *vlen) {
    if (val) *val = NULL;
    if (vlen) *vlen = 0;
    if (!st) return lt_fail("store is NULL");
    int i = db_index(st, db);
    if (i < 0 || check_key(st, key, klen)) return LT_ERR;
    /* The batch's newest write of this key wins over committed data. */
    for (size_t j = st->n_ops; j-- > 0;) {
        const batch_op *op = &st->ops[j];
        if (op->db != i || op->klen != klen || memcmp(st->arena + op->koff, key, klen)) continue;
        if (op->del) return LT_STORE_NOT_FOUND;
        return copy_out(st->arena + op->voff, op->vlen, val, vlen);
    }
    if (!st->has_db[i]) return LT_STORE_NOT_FOUND;
    MDB_txn *txn;
    int rc = read_begin(st, &txn);
    if (rc) return mdb_fail(rc, "store %s: cannot begin a read", st->path);
    MDB_val k = {klen, (void *)key}, v;
    rc = mdb_get(txn, st->dbi[i], &k, &v);
    int ret;
    if (rc == MDB_NOTFOUND) ret = LT_STORE_NOT_FOUND;
    else if (rc) ret = mdb_fail(rc, "store %s: read from '%s' failed", st->path, db);
    else ret = copy_out(v.mv_data, v.mv_size, val, vlen);
    read_end(st);
    return ret;
}

int lt_store_count(lt_store *st, const char *db, uint64_t *n) {
    if (!st || !n) return lt_fail("lt_store_count: NULL argument");
    *n = 0;
    int i = db_index(st, db);
    if (i < 0) return LT_ERR;
    if (!st->has_db[i]) return LT_OK;
    MDB_txn *txn;
    int rc = read_begin(st, &txn);
    if (rc) return mdb_fail(rc, "store %s: cannot begin a read", st->path);
    MDB_stat ms;
    rc = mdb_stat(txn, st->dbi[i], &ms);
    read_end(st);
    if (rc) return mdb_fail(rc, "store %s: cannot count '%s'", st->path, db);
    *n = ms.ms_entries;
    return LT_OK;
}

size_t lt_store_map_size(const lt_store *st) {
    if (!st) return 0;
    MDB_envinfo info;
    mdb_env_info(st->env, &info);
    return info.me_mapsize;
}

/* --------------------------------------------------------- iterators */

int lt_store_iter_new(lt_store *st, const char *db, const void *prefix, size_t plen,
                      lt_store_iter **out) {
    if (!out) return lt_fail("lt_store_iter_new: out is NULL");
    *out = NULL;
    if (!st) return lt_fail("store is NULL");
    int i = db_index(st, db);
    if (i < 0) return LT_ERR;
    if (plen && !prefix) return lt_fail("store %s: prefix is NULL", st->path);
    lt_store_iter *it = calloc(1, sizeof *it);
    if (!it || !(it->prefix = malloc(plen ? plen : 1))) { free(it); return lt_fail("out of memory"); }
    if (plen) memcpy(it->prefix, prefix, plen);
    it->plen = plen;
    if (!st->has_db[i]) {
        it->done = 1;
    } else {
        int rc = begin_txn(st, MDB_RDONLY, &it->txn);
        it->dbi = st->dbi[i];
        if (!rc) rc = mdb_cursor_open(it->txn, it->dbi, &it->cur);
        if (rc) {
            iter_release(it);
            free(it->prefix);
            free(it);
            return mdb_fail(rc, "store %s: cannot start iterating '%s'", st->path, db);
        }
        it->gen = st->map_gen;
    }
    it->st = st;
    it->next = st->iters;
    if (st->iters) st->iters->prev = it;
    st->iters = it;
    *out = it;
    return LT_OK;
}

static int grow_copy(char **buf, size_t *cap, const void *p, size_t n) {
    if (n > *cap || !*buf) {
        size_t c = n > 256 ? n : 256;
        char *b = realloc(*buf, c);
        if (!b) return lt_fail("out of memory copying a %zu-byte item", n);
        *buf = b;
        *cap = c;
    }
    if (n) memcpy(*buf, p, n);
    return LT_OK;
}

/* Ends the iteration and releases the snapshot early, so a finished but
 * not yet freed iterator does not keep old pages alive. */
static int iter_finish(lt_store_iter *it) {
    it->done = 1;
    iter_release(it);
    return LT_STORE_END;
}

int lt_store_iter_next(lt_store_iter *it, const void **key, size_t *klen,
                       const void **val, size_t *vlen) {
    if (!it) return lt_fail("iterator is NULL");
    if (!it->st) return lt_fail("store iterator used after its store was closed");
    if (it->done) return LT_STORE_END;
    MDB_val k, v;
    int rc;
    if (!it->started) {
        if (it->plen) {
            k.mv_size = it->plen;
            k.mv_data = it->prefix;
            rc = mdb_cursor_get(it->cur, &k, &v, MDB_SET_RANGE);
        } else {
            rc = mdb_cursor_get(it->cur, &k, &v, MDB_FIRST);
        }
        it->started = 1;
    } else if (it->gen != it->st->map_gen) {
        /* The map moved since the cursor was positioned, so its page
         * pointers are stale. Re-seek to the last key (the snapshot still
         * holds it) with a fresh cursor, then step past it. */
        mdb_cursor_close(it->cur);
        it->cur = NULL;
        rc = mdb_cursor_open(it->txn, it->dbi, &it->cur);
        if (!rc) {
            k.mv_size = it->klen;
            k.mv_data = it->kbuf;
            rc = mdb_cursor_get(it->cur, &k, &v, MDB_SET_RANGE);
        }
        if (!rc && k.mv_size == it->klen && memcmp(k.mv_data, it->kbuf, it->klen) == 0)
            rc = mdb_cursor_get(it->cur, &k, &v, MDB_NEXT);
        it->gen = it->st->map_gen;
    } else {
        rc = mdb_cursor_get(it->cur, &k, &v, MDB_NEXT);
    }
    if (rc == MDB_NOTFOUND) return iter_finish(it);
    if (rc) {
        iter_finish(it);
        return mdb_fail(rc, "store %s: iteration failed", it->st->path);
    }
    if (k.mv_size < it->plen || memcmp(k.mv_data, it->prefix, it->plen) != 0) return iter_finish(it);
    if (grow_copy(&it->kbuf, &it->kcap, k.mv_data, k.mv_size)) return LT_ERR;
    it->klen = k.mv_size;
    if (val && grow_copy(&it->vbuf, &it->vcap, v.mv_data, v.mv_size)) return LT_ERR;
    if (key) *key = it->kbuf;
    if (klen) *klen = k.mv_size;
    if (val) *val = it->vbuf;
    if (vlen) *vlen = v.mv_size;
    return LT_STORE_ITEM;
}

void lt_store_iter_free(lt_store_iter *it) {
    if (!it) return;
    if (it->st) {
        iter_release(it);
        if (it->prev) it->prev->next = it->next;
        else it->st->iters = it->next;
        if (it->next) it->next->prev = it->prev;
    }
    free(it->prefix);
    free(it->kbuf);
    free(it->vbuf);
    free(it);
}

/* --------------------------------------------------------- node keys */

static int check_name(const char *what, const char *s) {
    if (!s || !*s) return lt_fail("store key: %s is empty", what);
    size_t n = strlen(s);
    if (n > 200) return lt_fail("store key: %s '%.40s...' is longer than 200 bytes", what, s);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '/' || c < 0x20 || c == 0x7f)
            return lt_fail("store key: %s '%s' contains '/' or a control character", what, s);
    }
    return LT_OK;
}

int lt_store_node_key(const char *prefix, const char *model, const char *kind,
                      int layer, int index, char *buf, size_t cap) {
    if (check_name("prefix", prefix) || check_name("model name", model) || check_name("node kind", kind))
        return LT_ERR;
    if (layer < 0 || layer > 9999) return lt_fail("store key: layer %d outside 0..9999", layer);
    if (index < 0 || index > 99999999) return lt_fail("store key: index %d outside 0..99999999", index);
    int n = snprintf(buf, cap, "%s/%s/%s/%04d/%08d", prefix, model, kind, layer, index);
    if (n < 0 || (size_t)n >= cap) return lt_fail("store key: buffer of %zu bytes too small", cap);
    return LT_OK;
}

/* ----------------------------------------------------- record values */

/* Layout (little-endian), docs/store.md:
 *   header 64 bytes: "LTRS", u32 version, u32 n_top, u32 n_random,
 *     u32 n_bins, u32 flags (0), f64 mean, variance, skewness, kurtosis,
 *     u64 count
 *   n_bins x 40 bytes: f64 q_lo, q_hi, lo, hi, u32 n_records, u32 0
 *   records (top, random, then each bin's in bin order), each:
 *     u32 n, u32 flags (bit 0: extra present), i64 window,
 *     i32 tokens[n], f32 acts[n], i32 extra[n] if flagged */
#define REC_MAGIC "LTRS"
enum { REC_HEADER = 64, REC_BIN = 40, REC_RECORD = 16, REC_HAS_EXTRA = 1 };
/* Far above any real window or sample, far below overflow of the sums. */
enum { REC_MAX_N = 1 << 24 };

static size_t record_bytes(const lt_act_record *r) {
    return REC_RECORD + (size_t)r->n * (r->extra ? 12 : 8);
}

static int check_records(const char *what, const lt_act_record *rs, int n, size_t *bytes) {
    if (n < 0 || n > REC_MAX_N) return lt_fail("record set: %d %s records", n, what);
    if (n && !rs) return lt_fail("record set: %s records are NULL", what);
    for (int i = 0; i < n; i++) {
        const lt_act_record *r = &rs[i];
        if (r->n < 0 || r->n > REC_MAX_N)
            return lt_fail("record set: %s record %d has %d tokens", what, i, r->n);
        if (r->n && (!r->tokens || !r->acts))
            return lt_fail("record set: %s record %d lacks tokens or activations", what, i);
        *bytes += record_bytes(r);
    }
    return LT_OK;
}

static double record_max(const lt_act_record *r) {
    double m = -HUGE_VAL;
    for (int i = 0; i < r->n; i++)
        if (r->acts[i] > m) m = r->acts[i];   /* NaN never compares greater */
    return m;
}

typedef struct { double max; int i; } rank_item;

static int by_decreasing_max(const void *a, const void *b) {
    const rank_item *x = a, *y = b;
    if (x->max != y->max) return x->max > y->max ? -1 : 1;
    return (x->i > y->i) - (x->i < y->i);   /* keeps the given order on ties */
}

static char *put_bytes(char *p, const void *src, size_t n) {
    if (n) memcpy(p, src, n);
    return p + n;
}

static char *put_u32(char *p, uint32_t x) { return put_bytes(p, &x, 4); }
static char *put_f64(char *p, double x) { return put_bytes(p, &x, 8); }

static char *put_record(char *p, const lt_act_record *r) {
    int64_t window = r->window;
    p = put_u32(p, (uint32_t)r->n);
    p = put_u32(p, r->extra ? REC_HAS_EXTRA : 0);
    p = put_bytes(p, &window, 8);
    p = put_bytes(p, r->tokens, (size_t)r->n * 4);
    p = put_bytes(p, r->acts, (size_t)r->n * 4);
    if (r->extra) p = put_bytes(p, r->extra, (size_t)r->n * 4);
    return p;
}

int lt_store_encode_record(const lt_record_set *rs, void **buf, size_t *len) {
    if (!rs || !buf || !len) return lt_fail("lt_store_encode_record: NULL argument");
    *buf = NULL;
    *len = 0;
    size_t bytes = REC_HEADER;
    if (check_records("top", rs->top, rs->n_top, &bytes) ||
        check_records("random", rs->random, rs->n_random, &bytes)) return LT_ERR;
    if (rs->n_bins < 0 || rs->n_bins > 1024) return lt_fail("record set: %d quantile bins", rs->n_bins);
    if (rs->n_bins && !rs->bins) return lt_fail("record set: bins are NULL");
    for (int b = 0; b < rs->n_bins; b++) {
        bytes += REC_BIN;
        if (check_records("quantile bin", rs->bins[b].records, rs->bins[b].n_records, &bytes)) return LT_ERR;
    }
    char *out = malloc(bytes);
    rank_item *rank = malloc(((size_t)rs->n_top + 1) * sizeof *rank);
    if (!out || !rank) { free(out); free(rank); return lt_fail("out of memory encoding a record set"); }

    char *p = put_bytes(out, REC_MAGIC, 4);
    p = put_u32(p, LT_RECORD_FORMAT_VERSION);
    p = put_u32(p, (uint32_t)rs->n_top);
    p = put_u32(p, (uint32_t)rs->n_random);
    p = put_u32(p, (uint32_t)rs->n_bins);
    p = put_u32(p, 0);
    p = put_f64(p, rs->mean);
    p = put_f64(p, rs->variance);
    p = put_f64(p, rs->skewness);
    p = put_f64(p, rs->kurtosis);
    p = put_bytes(p, &rs->count, 8);
    for (int b = 0; b < rs->n_bins; b++) {
        const lt_quantile_bin *bin = &rs->bins[b];
        p = put_f64(p, bin->q_lo);
        p = put_f64(p, bin->q_hi);
        p = put_f64(p, bin->lo);
        p = put_f64(p, bin->hi);
        p = put_u32(p, (uint32_t)bin->n_records);
        p = put_u32(p, 0);
    }
    for (int i = 0; i < rs->n_top; i++) {
        rank[i].max = record_max(&rs->top[i]);
        rank[i].i = i;
    }
    qsort(rank, (size_t)rs->n_top, sizeof *rank, by_decreasing_max);
    for (int i = 0; i < rs->n_top; i++) p = put_record(p, &rs->top[rank[i].i]);
    for (int i = 0; i < rs->n_random; i++) p = put_record(p, &rs->random[i]);
    for (int b = 0; b < rs->n_bins; b++)
        for (int i = 0; i < rs->bins[b].n_records; i++) p = put_record(p, &rs->bins[b].records[i]);
    free(rank);
    *buf = out;
    *len = (size_t)(p - out);
    return LT_OK;
}

/* A bounds-checked reader over a value. */
typedef struct { const unsigned char *p; size_t left; } reader;

static int take(reader *r, void *dst, size_t n) {
    if (n > r->left) return LT_ERR;
    if (dst && n) memcpy(dst, r->p, n);
    r->p += n;
    r->left -= n;
    return LT_OK;
}

/* Pass 1: validates one record's framing and counts what it needs. */
static int scan_record(reader *r, size_t *tokens, size_t *extras) {
    uint32_t n = 0, flags = 0;
    if (take(r, &n, 4) || take(r, &flags, 4) || take(r, NULL, 8)) return LT_ERR;
    if (n > REC_MAX_N || (flags & ~(uint32_t)REC_HAS_EXTRA)) return LT_ERR;
    size_t per = (flags & REC_HAS_EXTRA) ? 12 : 8;
    if (take(r, NULL, (size_t)n * per)) return LT_ERR;
    *tokens += n;
    if (flags & REC_HAS_EXTRA) *extras += n;
    return LT_OK;
}

/* Pass 2: fills one record, its arrays carved from *ints and *floats. */
static void read_record(reader *r, lt_act_record *rec, int32_t **ints, float **floats) {
    uint32_t n = 0, flags = 0;
    take(r, &n, 4);
    take(r, &flags, 4);
    take(r, &rec->window, 8);
    rec->n = (int)n;
    rec->tokens = *ints;
    *ints += n;
    rec->acts = *floats;
    *floats += n;
    take(r, rec->tokens, (size_t)n * 4);
    take(r, rec->acts, (size_t)n * 4);
    rec->extra = NULL;
    if (flags & REC_HAS_EXTRA) {
        rec->extra = *ints;
        *ints += n;
        take(r, rec->extra, (size_t)n * 4);
    }
}

int lt_store_decode_record(const void *buf, size_t len, lt_record_set **out) {
    if (!out) return lt_fail("lt_store_decode_record: out is NULL");
    *out = NULL;
    if (!buf) return lt_fail("record value is NULL");
    reader r = {buf, len};
    char magic[4];
    uint32_t version = 0, n_top = 0, n_random = 0, n_bins = 0, flags = 0;
    if (take(&r, magic, 4) || memcmp(magic, REC_MAGIC, 4) || take(&r, &version, 4))
        return lt_fail("record value: not a lantern record set (bad magic)");
    if (version != LT_RECORD_FORMAT_VERSION)
        return lt_fail("record value: format version %u, this lantern reads %d", version,
                       LT_RECORD_FORMAT_VERSION);
    lt_record_set hdr;
    memset(&hdr, 0, sizeof hdr);
    if (take(&r, &n_top, 4) || take(&r, &n_random, 4) || take(&r, &n_bins, 4) || take(&r, &flags, 4) ||
        take(&r, &hdr.mean, 8) || take(&r, &hdr.variance, 8) || take(&r, &hdr.skewness, 8) ||
        take(&r, &hdr.kurtosis, 8) || take(&r, &hdr.count, 8))
        return lt_fail("record value: truncated header (%zu bytes)", len);
    /* Every record takes at least REC_RECORD bytes and every bin REC_BIN,
     * so counts beyond len / those sizes are corrupt: this bounds the
     * allocation below by the value's size. */
    if (flags || n_bins > 1024 || (size_t)n_bins * REC_BIN > r.left ||
        n_top > len / REC_RECORD || n_random > len / REC_RECORD)
        return lt_fail("record value: corrupt header");

    reader bins_at = r;
    size_t n_records = (size_t)n_top + n_random, tokens = 0, extras = 0;
    for (uint32_t b = 0; b < n_bins; b++) {
        uint32_t nb = 0;
        take(&r, NULL, 32);
        take(&r, &nb, 4);
        take(&r, NULL, 4);
        if (nb > len / REC_RECORD) return lt_fail("record value: corrupt quantile bin %u", b);
        n_records += nb;
    }
    if (n_records > len / REC_RECORD) return lt_fail("record value: corrupt record counts");
    reader records_at = r;
    for (size_t i = 0; i < n_records; i++)
        if (scan_record(&r, &tokens, &extras))
            return lt_fail("record value: record %zu of %zu is truncated or corrupt", i, n_records);
    if (r.left) return lt_fail("record value: %zu trailing bytes", r.left);

    /* One allocation: the set, bins, records, then int32 (tokens, extras)
     * and float arrays; every part is a multiple of 8 bytes or last. */
    size_t off_bins = sizeof(lt_record_set);
    size_t off_recs = off_bins + n_bins * sizeof(lt_quantile_bin);
    size_t off_ints = off_recs + n_records * sizeof(lt_act_record);
    size_t off_floats = off_ints + (tokens + extras) * 4;
    size_t total = off_floats + tokens * 4;
    char *mem = malloc(total ? total : 1);
    if (!mem) return lt_fail("out of memory decoding a record set (%zu bytes)", total);
    lt_record_set *rs = (lt_record_set *)mem;
    *rs = hdr;
    rs->n_top = (int)n_top;
    rs->n_random = (int)n_random;
    rs->n_bins = (int)n_bins;
    rs->bins = n_bins ? (lt_quantile_bin *)(mem + off_bins) : NULL;
    lt_act_record *recs = (lt_act_record *)(mem + off_recs);
    int32_t *ints = (int32_t *)(mem + off_ints);
    float *floats = (float *)(mem + off_floats);

    r = bins_at;
    for (uint32_t b = 0; b < n_bins; b++) {
        lt_quantile_bin *bin = &rs->bins[b];
        uint32_t nb = 0;
        take(&r, &bin->q_lo, 8);
        take(&r, &bin->q_hi, 8);
        take(&r, &bin->lo, 8);
        take(&r, &bin->hi, 8);
        take(&r, &nb, 4);
        take(&r, NULL, 4);
        bin->n_records = (int)nb;
    }
    r = records_at;
    lt_act_record *next = recs;
    rs->top = n_top ? next : NULL;
    next += n_top;
    rs->random = n_random ? next : NULL;
    next += n_random;
    for (uint32_t b = 0; b < n_bins; b++) {
        rs->bins[b].records = rs->bins[b].n_records ? next : NULL;
        next += rs->bins[b].n_records;
    }
    for (size_t i = 0; i < n_records; i++) read_record(&r, &recs[i], &ints, &floats);
    *out = rs;
    return LT_OK;
}

int lt_store_put_record(lt_store *st, const char *model, const char *kind, int layer,
                        int index, const lt_record_set *rs) {
    char key[512];
    if (lt_store_node_key("rec", model, kind, layer, index, key, sizeof key)) return LT_ERR;
    void *val;
    size_t len;
    if (lt_store_encode_record(rs, &val, &len)) return lt_fail_context("%s", key);
    int rc = lt_store_put(st, "records", key, strlen(key), val, len);
    free(val);
    return rc;
}

int lt_store_get_record(lt_store *st, const char *model, const char *kind, int layer,
                        int index, lt_record_set **out) {
    if (!out) return lt_fail("lt_store_get_record: out is NULL");
    *out = NULL;
    char key[512];
    if (lt_store_node_key("rec", model, kind, layer, index, key, sizeof key)) return LT_ERR;
    void *val;
    size_t len;
    int rc = lt_store_get(st, "records", key, strlen(key), &val, &len);
    if (rc != LT_OK) return rc;
    rc = lt_store_decode_record(val, len, out);
    free(val);
    if (rc) return lt_fail_context("store %s: %s", st->path, key);
    return LT_OK;
}
