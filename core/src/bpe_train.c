/*
 * bpe_train.c: trains a GPT-2 style byte-level BPE vocabulary (vocab.json +
 * merges.txt) from text, so that lantern's own models use the same
 * tokenizer code path as GPT-2 (core/src/tokenizer.c loads the result).
 *
 * The classic algorithm, made incremental:
 *   1. the text is cut at special tokens and into pre-tokens by GPT-2's
 *      pattern (the tokenizer's own pre-tokeniser, pretokenize.h); equal
 *      pre-tokens ("words") are counted once with their frequency;
 *   2. every word starts as its bytes; each adjacent pair of symbols is
 *      counted, weighted by the word's frequency, and each pair remembers
 *      the words it occurs in;
 *   3. the most frequent pair (a, b) becomes a new token c; only the words
 *      that contain (a, b) are rewritten, and only the pair counts around
 *      each rewritten spot change. A max-heap with lazy deletion finds the
 *      next best pair: counts of existing pairs only fall, so a heap entry
 *      is an upper bound, and a stale entry is refreshed when it surfaces.
 *
 * Everything is single-threaded and driven by counts and ids only, so the
 * output is a function of the input.
 */
#include "internal.h"
#include "pretokenize.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define EOT_TEXT "<|endoftext|>"
#define MAX_VOCAB 1000000

/* A distinct pre-token: its bytes (during counting) and then its symbols. */
struct word {
    int64_t count;      /* occurrences in the text */
    uint64_t hash;      /* of the bytes, for growing the word map */
    size_t off;         /* into the byte pool, and the same offset into the symbol pool */
    uint32_t nbytes;    /* length in bytes */
    uint32_t len;       /* current number of symbols */
};

/* An adjacent pair of symbols and the words it occurs in. occ may hold
 * words that no longer contain the pair (they are skipped) and repeats. */
struct pair {
    int32_t a, b;
    int64_t count;
    int64_t heap_top;   /* count of its newest heap entry (0: none needed) */
    int32_t *occ;
    uint32_t n_occ, cap_occ;
    int32_t last_word;  /* the word last appended to occ */
    int32_t stamp;      /* the merge that last raised its count */
};

struct heap_item { int64_t count; int32_t pid; };

struct trainer {
    /* Words. */
    struct word *words;
    size_t n_words, cap_words;
    unsigned char *wbytes;      /* word bytes, concatenated */
    size_t wbytes_used, wbytes_cap;
    int32_t *wslots;            /* word map: word index + 1, 0 = empty */
    size_t wmask;
    int32_t *sym;               /* symbols of every word, at word.off */

    /* Pairs. */
    struct pair *pairs;
    size_t n_pairs, cap_pairs;
    int32_t *pslots;            /* pair map: pair index, -1 = empty */
    size_t pmask;
    struct heap_item *heap;
    size_t n_heap, cap_heap;
    int32_t *touched;           /* pairs raised by the current merge */
    size_t n_touched, cap_touched;

    /* Tokens (ids 0..n_tokens-1) as byte strings. */
    unsigned char *tbytes;
    size_t tbytes_used, tbytes_cap;
    size_t *tok_off;
    uint32_t *tok_len;
    int32_t *tslots;            /* token map: id, -1 = empty */
    size_t tmask;
    int n_tokens;

    /* Merges in rank order. */
    int32_t *merge_a, *merge_b;
    int n_merges;

    /* Scratch for rewriting one word. */
    int32_t *scratch;
    unsigned char *covered, *fresh;
    size_t max_word_len;
};

/* ------------------------------------------------------------ helpers */

static uint64_t hash_bytes(const unsigned char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;   /* FNV-1a */
    for (size_t i = 0; i < n; i++) { h ^= s[i]; h *= 0x100000001b3ull; }
    return h;
}

static uint64_t hash_pair(int32_t a, int32_t b) {
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;   /* splitmix64 finaliser */
    k ^= k >> 30; k *= 0xbf58476d1ce4e5b9ull;
    k ^= k >> 27; k *= 0x94d049bb133111ebull;
    return k ^ (k >> 31);
}


/* A fresh open-addressing table of 2^k >= 2n slots, every byte set to fill
 * (0 or 0xff); *mask receives its size - 1. */
static void *new_table(size_t n, size_t elem, int fill, size_t *mask) {
    size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    void *t = malloc(cap * elem);
    if (t) memset(t, fill, cap * elem);
    *mask = cap - 1;
    return t;
}

/* GPT-2 numbers the 256 base tokens in code-point order of their
 * byte-level characters (lt_byte_level_map), which is what byte_of_id lists. */
static void byte_tables(uint32_t cp_of_byte[256], unsigned char byte_of_id[256]) {
    lt_byte_level_map(cp_of_byte);
    int n_kept = 0;
    for (int b = 0; b < 256; b++) n_kept += cp_of_byte[b] == (uint32_t)b;
    int k = 0, m = n_kept;
    for (int b = 0; b < 256; b++) {
        if (cp_of_byte[b] == (uint32_t)b) byte_of_id[k++] = (unsigned char)b;
        else byte_of_id[m++] = (unsigned char)b;
    }
}

/* ------------------------------------------------------------ counting words */

/* Counts one occurrence of the n-byte pre-token s. */
static int add_word(struct trainer *t, const unsigned char *s, size_t n) {
    if (n > UINT32_MAX / 2) return lt_fail("lt_bpe_train: a pre-token of %zu bytes is too long", n);
    uint64_t h = hash_bytes(s, n);
    size_t i = h & t->wmask;
    for (; t->wslots[i]; i = (i + 1) & t->wmask) {
        struct word *w = &t->words[t->wslots[i] - 1];
        if (w->hash == h && w->nbytes == n && memcmp(t->wbytes + w->off, s, n) == 0) {
            w->count++;
            return LT_OK;
        }
    }
    if (t->n_words >= INT32_MAX - 1) return lt_fail("lt_bpe_train: too many distinct pre-tokens");
    if (lt_grow((void **)&t->words, &t->cap_words, t->n_words + 1, sizeof *t->words) ||
        lt_grow((void **)&t->wbytes, &t->wbytes_cap, t->wbytes_used + n, 1))
        return lt_fail("lt_bpe_train: out of memory");
    t->words[t->n_words] = (struct word){1, h, t->wbytes_used, (uint32_t)n, (uint32_t)n};
    memcpy(t->wbytes + t->wbytes_used, s, n);
    t->wbytes_used += n;
    t->wslots[i] = (int32_t)++t->n_words;
    if (n > t->max_word_len) t->max_word_len = n;

    if (2 * t->n_words > t->wmask) {   /* keep the load at most one half */
        size_t mask;
        int32_t *slots = new_table(t->n_words, sizeof *slots, 0, &mask);
        if (!slots) return lt_fail("lt_bpe_train: out of memory");
        for (size_t w = 0; w < t->n_words; w++) {
            size_t j = t->words[w].hash & mask;
            while (slots[j]) j = (j + 1) & mask;
            slots[j] = (int32_t)(w + 1);
        }
        free(t->wslots);
        t->wslots = slots;
        t->wmask = mask;
    }
    return LT_OK;
}

/* Counts the pre-tokens of ordinary text (no special tokens in it). */
static int count_plain(struct trainer *t, const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        size_t e = lt_pretoken_end(s, n, i);
        if (add_word(t, s + i, e - i) != LT_OK) return LT_ERR;
        i = e;
    }
    return LT_OK;
}

/* Counts the pre-tokens of the whole text, cut first at every occurrence of
 * a special string (leftmost first; the longest when several start at the
 * same byte), which is how the tokenizer treats <|endoftext|>. */
static int count_text(struct trainer *t, const unsigned char *s, size_t len,
                      const char *const *sp, int n_sp) {
    /* next[k]: where special k occurs next at or after pos (len: nowhere). */
    size_t *next = malloc((size_t)n_sp * sizeof *next);
    if (!next) return lt_fail("lt_bpe_train: out of memory");
    for (int k = 0; k < n_sp; k++) next[k] = 0;
    int rc = LT_OK;
    size_t pos = 0;
    int first = 1;
    while (pos < len && rc == LT_OK) {
        size_t best = len, best_len = 0;
        for (int k = 0; k < n_sp; k++) {
            size_t m = strlen(sp[k]);
            if (first || (next[k] < len && next[k] < pos)) {
                const unsigned char *hit = memmem(s + pos, len - pos, sp[k], m);
                next[k] = hit ? (size_t)(hit - s) : len;
            }
            if (next[k] < best || (next[k] == best && next[k] < len && m > best_len)) {
                best = next[k];
                best_len = m;
            }
        }
        first = 0;
        rc = count_plain(t, s + pos, best - pos);
        pos = best + best_len;
    }
    free(next);
    return rc;
}

/* ------------------------------------------------------------ tokens */

/* Id of the token with these bytes, or -1. */
static int32_t token_find(const struct trainer *t, const unsigned char *s, size_t n) {
    for (size_t i = hash_bytes(s, n) & t->tmask;; i = (i + 1) & t->tmask) {
        int32_t id = t->tslots[i];
        if (id < 0) return -1;
        if (t->tok_len[id] == n && memcmp(t->tbytes + t->tok_off[id], s, n) == 0) return id;
    }
}

/* Adds a token (the table was sized for every id up front). */
static int32_t token_add(struct trainer *t, const unsigned char *s, size_t n) {
    if (lt_grow((void **)&t->tbytes, &t->tbytes_cap, t->tbytes_used + n, 1)) return -1;
    int32_t id = t->n_tokens++;
    memcpy(t->tbytes + t->tbytes_used, s, n);
    t->tok_off[id] = t->tbytes_used;
    t->tok_len[id] = (uint32_t)n;
    t->tbytes_used += n;
    size_t i = hash_bytes(s, n) & t->tmask;
    while (t->tslots[i] >= 0) i = (i + 1) & t->tmask;
    t->tslots[i] = id;
    return id;
}

/* ------------------------------------------------------------ pairs and heap */

/* Heap order: higher count first, then smaller left id, then smaller right. */
static int heap_before(const struct trainer *t, struct heap_item x, struct heap_item y) {
    if (x.count != y.count) return x.count > y.count;
    const struct pair *p = &t->pairs[x.pid], *q = &t->pairs[y.pid];
    return p->a != q->a ? p->a < q->a : p->b < q->b;
}

static int heap_push(struct trainer *t, int32_t pid) {
    if (lt_grow((void **)&t->heap, &t->cap_heap, t->n_heap + 1, sizeof *t->heap)) return -1;
    struct heap_item it = {t->pairs[pid].count, pid};
    t->pairs[pid].heap_top = it.count;
    size_t i = t->n_heap++;
    while (i > 0 && heap_before(t, it, t->heap[(i - 1) / 2])) { t->heap[i] = t->heap[(i - 1) / 2]; i = (i - 1) / 2; }
    t->heap[i] = it;
    return 0;
}

static struct heap_item heap_pop(struct trainer *t) {
    struct heap_item top = t->heap[0], last = t->heap[--t->n_heap];
    size_t i = 0, n = t->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && heap_before(t, t->heap[c + 1], t->heap[c])) c++;
        if (!heap_before(t, t->heap[c], last)) break;
        t->heap[i] = t->heap[c];
        i = c;
    }
    if (n > 0) t->heap[i] = last;
    return top;
}

/* Index of pair (a, b), created with count 0 when absent; -1 when out of
 * memory. */
static int32_t pair_get(struct trainer *t, int32_t a, int32_t b) {
    size_t i = hash_pair(a, b) & t->pmask;
    for (; t->pslots[i] >= 0; i = (i + 1) & t->pmask) {
        const struct pair *p = &t->pairs[t->pslots[i]];
        if (p->a == a && p->b == b) return t->pslots[i];
    }
    if (t->n_pairs >= INT32_MAX - 1 ||
        lt_grow((void **)&t->pairs, &t->cap_pairs, t->n_pairs + 1, sizeof *t->pairs))
        return -1;
    int32_t pid = (int32_t)t->n_pairs++;
    t->pairs[pid] = (struct pair){.a = a, .b = b, .last_word = -1, .stamp = -1};
    t->pslots[i] = pid;
    if (2 * t->n_pairs > t->pmask) {
        size_t mask;
        int32_t *slots = new_table(t->n_pairs, sizeof *slots, 0xff, &mask);
        if (!slots) return -1;
        for (size_t k = 0; k < t->n_pairs; k++) {
            size_t j = hash_pair(t->pairs[k].a, t->pairs[k].b) & mask;
            while (slots[j] >= 0) j = (j + 1) & mask;
            slots[j] = (int32_t)k;
        }
        free(t->pslots);
        t->pslots = slots;
        t->pmask = mask;
    }
    return pid;
}

/* Adds f occurrences of (a, b) in word w. Pairs raised by merge number
 * stamp are listed in touched so that the heap learns of them. */
static int pair_raise(struct trainer *t, int32_t a, int32_t b, int64_t f, int32_t w, int32_t stamp) {
    int32_t pid = pair_get(t, a, b);
    if (pid < 0) return -1;
    struct pair *p = &t->pairs[pid];
    p->count += f;
    if (p->last_word != w) {
        if (p->n_occ == p->cap_occ) {
            uint32_t cap = p->cap_occ ? 2 * p->cap_occ : 4;
            int32_t *q = realloc(p->occ, cap * sizeof *q);
            if (!q) return -1;
            p->occ = q;
            p->cap_occ = cap;
        }
        p->occ[p->n_occ++] = w;
        p->last_word = w;
    }
    if (p->stamp != stamp) {
        p->stamp = stamp;
        if (lt_grow((void **)&t->touched, &t->cap_touched, t->n_touched + 1, sizeof *t->touched)) return -1;
        t->touched[t->n_touched++] = pid;
    }
    return 0;
}

/* Removes f occurrences of (a, b), which must exist. */
static void pair_lower(struct trainer *t, int32_t a, int32_t b, int64_t f) {
    for (size_t i = hash_pair(a, b) & t->pmask; t->pslots[i] >= 0; i = (i + 1) & t->pmask) {
        struct pair *p = &t->pairs[t->pslots[i]];
        if (p->a == a && p->b == b) { p->count -= f; return; }
    }
}

/* ------------------------------------------------------------ merging */

/* Rewrites word w with every (a, b) replaced by c, left to right, and moves
 * the pair counts that change: old pairs touching a replaced spot go, new
 * pairs touching a c come. Pairs away from the replaced spots keep their
 * counts untouched, so a merge costs time only where it acts. */
static int merge_word(struct trainer *t, int32_t w, int32_t a, int32_t b, int32_t c, int32_t stamp) {
    struct word *wd = &t->words[w];
    int32_t *s = t->sym + wd->off;
    size_t n = wd->len, j = 0;
    int found = 0;
    for (size_t i = 0; i + 1 < n && !found; i++) found = s[i] == a && s[i + 1] == b;
    if (!found) return 0;   /* a stale entry of the occurrence list */

    for (size_t i = 0; i < n;) {
        if (i + 1 < n && s[i] == a && s[i + 1] == b) {
            t->covered[i] = t->covered[i + 1] = 1;
            t->fresh[j] = 1;
            t->scratch[j++] = c;
            i += 2;
        } else {
            t->covered[i] = 0;
            t->fresh[j] = 0;
            t->scratch[j++] = s[i++];
        }
    }
    int64_t f = wd->count;
    for (size_t i = 0; i + 1 < n; i++)
        if (t->covered[i] || t->covered[i + 1]) pair_lower(t, s[i], s[i + 1], f);
    for (size_t k = 0; k + 1 < j; k++)
        if (t->fresh[k] || t->fresh[k + 1])
            if (pair_raise(t, t->scratch[k], t->scratch[k + 1], f, w, stamp)) return -1;
    memcpy(s, t->scratch, j * sizeof *s);
    wd->len = (uint32_t)j;
    return 0;
}

/* The best pair with a positive count (its index), or -1 when none is left.
 * Entries whose count went stale are refreshed and pushed back. */
static int32_t best_pair(struct trainer *t) {
    while (t->n_heap > 0) {
        struct heap_item it = heap_pop(t);
        struct pair *p = &t->pairs[it.pid];
        if (p->count == it.count && it.count > 0) return it.pid;
        if (p->count > 0 && it.count == p->heap_top) {
            if (heap_push(t, it.pid)) return -2;
        }
    }
    return -1;
}

/* Learns merges until there are n_learn tokens. */
static int learn(struct trainer *t, int n_learn, int n_extra) {
    /* Initial pair counts. */
    for (size_t w = 0; w < t->n_words; w++) {
        const struct word *wd = &t->words[w];
        const int32_t *s = t->sym + wd->off;
        for (size_t i = 0; i + 1 < wd->len; i++)
            if (pair_raise(t, s[i], s[i + 1], wd->count, (int32_t)w, -2)) return lt_fail("lt_bpe_train: out of memory");
    }
    for (size_t k = 0; k < t->n_touched; k++)
        if (heap_push(t, t->touched[k])) return lt_fail("lt_bpe_train: out of memory");
    t->n_touched = 0;

    unsigned char *buf = NULL;
    size_t buf_cap = 0;
    while (t->n_tokens < n_learn) {
        int32_t pid = best_pair(t);
        if (pid == -2) { free(buf); return lt_fail("lt_bpe_train: out of memory"); }
        if (pid < 0) {
            free(buf);
            return lt_fail("lt_bpe_train: the text allows only %d learned tokens; use vocab_size <= %d or more text",
                           t->n_tokens - 256, t->n_tokens + n_extra + 1);
        }
        int32_t a = t->pairs[pid].a, b = t->pairs[pid].b;
        size_t la = t->tok_len[a], lb = t->tok_len[b];
        if (lt_grow((void **)&buf, &buf_cap, la + lb, 1)) { free(buf); return lt_fail("lt_bpe_train: out of memory"); }
        memcpy(buf, t->tbytes + t->tok_off[a], la);
        memcpy(buf + la, t->tbytes + t->tok_off[b], lb);
        /* Two merges can spell the same bytes ("ab"+"c", "a"+"bc"); the
         * second then reuses the id, as the tokenizer expects. */
        int32_t c = token_find(t, buf, la + lb);
        if (c < 0) c = token_add(t, buf, la + lb);
        if (c < 0) { free(buf); return lt_fail("lt_bpe_train: out of memory"); }
        int32_t stamp = t->n_merges;
        t->merge_a[t->n_merges] = a;
        t->merge_b[t->n_merges] = b;
        t->n_merges++;

        /* Take the occurrence list out: merging never adds to it, since
         * every new pair holds c. */
        int32_t *occ = t->pairs[pid].occ;
        uint32_t n_occ = t->pairs[pid].n_occ;
        t->pairs[pid].occ = NULL;
        t->pairs[pid].n_occ = t->pairs[pid].cap_occ = 0;
        int bad = 0;
        for (uint32_t k = 0; k < n_occ && !bad; k++) bad = merge_word(t, occ[k], a, b, c, stamp);
        free(occ);
        for (size_t k = 0; k < t->n_touched && !bad; k++) {
            struct pair *p = &t->pairs[t->touched[k]];
            if (p->count > p->heap_top) bad = heap_push(t, t->touched[k]);
        }
        t->n_touched = 0;
        if (bad) { free(buf); return lt_fail("lt_bpe_train: out of memory"); }
    }
    free(buf);
    return LT_OK;
}

/* ------------------------------------------------------------ output */

/* Writes cp (below U+0800, as the byte-level alphabet is) as UTF-8. */
static size_t utf8_put(uint32_t cp, char *out) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

/* Writes len bytes to path + ".tmp" and renames it to path. */
static int write_file(const char *path, const char *data, size_t len) {
    size_t n = strlen(path);
    char *tmp = malloc(n + 5);
    if (!tmp) return lt_fail("lt_bpe_train: out of memory");
    memcpy(tmp, path, n);
    memcpy(tmp + n, ".tmp", 5);
    FILE *f = fopen(tmp, "wb");
    if (!f) { lt_fail("%s: cannot write (%s)", tmp, strerror(errno)); free(tmp); return LT_ERR; }
    int bad = fwrite(data, 1, len, f) != len;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        lt_fail("%s: write failed (%s)", path, strerror(errno));
        remove(tmp);
        free(tmp);
        return LT_ERR;
    }
    free(tmp);
    return LT_OK;
}

/* Writes vocab.json and merges.txt. strs[id] is each learned token in the
 * byte-level alphabet. */
static int write_outputs(const struct trainer *t, char **strs, const char *const *sp, int n_sp,
                         const char *vocab_out, const char *merges_out) {
    int rc = LT_ERR;
    char *json = NULL, *merges = NULL;
    cJSON *root = cJSON_CreateObject();
    if (!root) return lt_fail("lt_bpe_train: out of memory");
    int id = 0;
    for (; id < t->n_tokens; id++)
        if (!cJSON_AddNumberToObject(root, strs[id], id)) goto oom;
    for (int k = 0; k < n_sp; k++, id++)
        if (!cJSON_AddNumberToObject(root, sp[k], id)) goto oom;
    if (!cJSON_AddNumberToObject(root, EOT_TEXT, id)) goto oom;
    json = cJSON_PrintUnformatted(root);
    if (!json) goto oom;

    size_t total = 32;
    for (int m = 0; m < t->n_merges; m++)
        total += strlen(strs[t->merge_a[m]]) + strlen(strs[t->merge_b[m]]) + 2;
    merges = malloc(total);
    if (!merges) goto oom;
    size_t k = (size_t)sprintf(merges, "#version: 0.2\n");
    for (int m = 0; m < t->n_merges; m++)
        k += (size_t)sprintf(merges + k, "%s %s\n", strs[t->merge_a[m]], strs[t->merge_b[m]]);

    if (write_file(vocab_out, json, strlen(json)) == LT_OK && write_file(merges_out, merges, k) == LT_OK)
        rc = LT_OK;
    goto done;
oom:
    lt_fail("lt_bpe_train: out of memory");
done:
    cJSON_Delete(root);
    free(json);
    free(merges);
    return rc;
}

/* ------------------------------------------------------------ entry point */

static void trainer_free(struct trainer *t) {
    for (size_t p = 0; p < t->n_pairs; p++) free(t->pairs[p].occ);
    free(t->words); free(t->wbytes); free(t->wslots); free(t->sym);
    free(t->pairs); free(t->pslots); free(t->heap); free(t->touched);
    free(t->tbytes); free(t->tok_off); free(t->tok_len); free(t->tslots);
    free(t->merge_a); free(t->merge_b);
    free(t->scratch); free(t->covered); free(t->fresh);
}

/* Checks the arguments; the special list must be usable as vocab keys. */
static int check_args(const char *text, size_t len, int vocab_size, const char *const *special,
                      int n_special, const char *vocab_out, const char *merges_out) {
    if ((!text && len > 0) || !vocab_out || !merges_out)
        return lt_fail("lt_bpe_train: NULL argument");
    if (n_special < 0 || (n_special > 0 && !special))
        return lt_fail("lt_bpe_train: bad special token list (n_special %d)", n_special);
    if (vocab_size < 257 + n_special || vocab_size > MAX_VOCAB)
        return lt_fail("lt_bpe_train: vocab_size %d out of range [%d, %d] (256 bytes, %d special tokens and <|endoftext|>)",
                       vocab_size, 257 + n_special, MAX_VOCAB, n_special);
    for (int k = 0; k < n_special; k++) {
        if (!special[k] || !special[k][0]) return lt_fail("lt_bpe_train: special token %d is empty", k);
        if (strcmp(special[k], EOT_TEXT) == 0)
            return lt_fail("lt_bpe_train: %s is always added; do not list it as a special token", EOT_TEXT);
        for (int j = 0; j < k; j++)
            if (strcmp(special[j], special[k]) == 0)
                return lt_fail("lt_bpe_train: special token \"%.60s\" is listed twice", special[k]);
    }
    return LT_OK;
}

int lt_bpe_train(const char *text, size_t len, int vocab_size,
                 const char *const *special, int n_special,
                 const char *vocab_out, const char *merges_out) {
    if (check_args(text, len, vocab_size, special, n_special, vocab_out, merges_out) != LT_OK) return LT_ERR;
    int n_learn = vocab_size - n_special - 1;   /* bytes + merges */
    struct trainer t = {0};
    char **strs = NULL;
    char *str_pool = NULL;
    int rc = LT_ERR;

    /* The split list: <|endoftext|> and the caller's specials. */
    const char **sp = malloc(((size_t)n_special + 1) * sizeof *sp);
    if (!sp) return lt_fail("lt_bpe_train: out of memory");
    sp[0] = EOT_TEXT;
    for (int k = 0; k < n_special; k++) sp[k + 1] = special[k];

    t.wslots = new_table(1024, sizeof *t.wslots, 0, &t.wmask);
    t.pslots = new_table(4096, sizeof *t.pslots, 0xff, &t.pmask);
    t.tslots = new_table((size_t)n_learn, sizeof *t.tslots, 0xff, &t.tmask);
    t.tok_off = malloc((size_t)n_learn * sizeof *t.tok_off);
    t.tok_len = malloc((size_t)n_learn * sizeof *t.tok_len);
    t.merge_a = malloc((size_t)n_learn * sizeof *t.merge_a);
    t.merge_b = malloc((size_t)n_learn * sizeof *t.merge_b);
    if (!t.wslots || !t.pslots || !t.tslots || !t.tok_off || !t.tok_len || !t.merge_a || !t.merge_b) {
        lt_fail("lt_bpe_train: out of memory");
        goto done;
    }

    uint32_t cp_of_byte[256];
    unsigned char byte_of_id[256], id_of_byte[256];
    byte_tables(cp_of_byte, byte_of_id);
    for (int id = 0; id < 256; id++) {
        id_of_byte[byte_of_id[id]] = (unsigned char)id;
        if (token_add(&t, &byte_of_id[id], 1) < 0) { lt_fail("lt_bpe_train: out of memory"); goto done; }
    }

    if (count_text(&t, (const unsigned char *)text, len, sp, n_special + 1) != LT_OK) goto done;

    /* Words become symbol strings; one-symbol words have no pairs but keep
     * their place (their count is harmless). */
    t.sym = malloc((t.wbytes_used ? t.wbytes_used : 1) * sizeof *t.sym);
    size_t wl = t.max_word_len ? t.max_word_len : 1;
    t.scratch = malloc(wl * sizeof *t.scratch);
    t.covered = malloc(wl);
    t.fresh = malloc(wl);
    if (!t.sym || !t.scratch || !t.covered || !t.fresh) { lt_fail("lt_bpe_train: out of memory"); goto done; }
    for (size_t i = 0; i < t.wbytes_used; i++) t.sym[i] = id_of_byte[t.wbytes[i]];

    if (learn(&t, n_learn, n_special) != LT_OK) goto done;

    /* Token strings in the byte-level alphabet (at most 2 bytes a byte). */
    strs = malloc((size_t)t.n_tokens * sizeof *strs);
    str_pool = malloc(2 * t.tbytes_used + (size_t)t.n_tokens);
    if (!strs || !str_pool) { lt_fail("lt_bpe_train: out of memory"); goto done; }
    size_t used = 0;
    for (int id = 0; id < t.n_tokens; id++) {
        strs[id] = str_pool + used;
        for (uint32_t k = 0; k < t.tok_len[id]; k++)
            used += utf8_put(cp_of_byte[t.tbytes[t.tok_off[id] + k]], str_pool + used);
        str_pool[used++] = '\0';
    }
    /* A special token spelled like a learned token would make vocab.json
     * ambiguous. */
    for (int k = 0; k < n_special + 1; k++)
        for (int id = 0; id < t.n_tokens; id++)
            if (strcmp(strs[id], sp[k]) == 0) {
                lt_fail("lt_bpe_train: special token \"%.60s\" is spelled like token %d", sp[k], id);
                goto done;
            }

    rc = write_outputs(&t, strs, special, n_special, vocab_out, merges_out);
done:
    free(sp);
    free(strs);
    free(str_pool);
    trainer_free(&t);
    return rc;
}
