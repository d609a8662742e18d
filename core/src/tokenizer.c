/*
 * tokenizer.c: GPT-2's byte-level BPE tokenizer (vocab.json + merges.txt).
 *
 * Encoding runs in three stages, as in GPT-2:
 *   1. the text is split on the special token <|endoftext|>;
 *   2. each piece is cut into pre-tokens by a hand-written matcher of GPT-2's
 *      pattern 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *   3. the bytes of each pre-token are merged by BPE, lowest merge rank
 *      first (leftmost first among equal ranks).
 *
 * Internally tokens are raw bytes: vocab.json's byte-level alphabet (GPT-2's
 * bytes_to_unicode) is undone once at load, so encode never maps characters
 * and decode only concatenates byte strings.
 *
 * Encode uses scratch buffers and a cache inside the tokenizer, so a
 * tokenizer must not encode on two threads at once; decode and the getters
 * only read it.
 */
#include "internal.h"
#include "pretokenize.h"
#include "unicode_classes.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define EOT_TEXT "<|endoftext|>"
#define EOT_LEN (sizeof EOT_TEXT - 1)
#define MAX_VOCAB_ID (1 << 24)     /* a larger id means a corrupt file, not a real vocabulary */
#define N_BYTE_CPS (256 + 68)      /* code points used by the byte-level alphabet */
#define CACHE_MAX_KEY 64           /* longer pre-tokens are rare: not worth caching */
#define CACHE_MAX_ENTRIES 16384    /* the cache is emptied when it holds this many */
#define CACHE_SLOTS (2 * CACHE_MAX_ENTRIES)
#define NO_OFFSET SIZE_MAX

/* One merge: the pair (a, b) becomes token result; a == -1 marks an empty slot. */
struct merge_slot { int32_t a, b, rank, result; };

/* One cached pre-token: its bytes and its ids live in the cache pools. */
struct cache_entry { uint64_t hash; uint32_t key_off, key_len, ids_off, ids_n; };

/* A candidate merge of the symbol at pos with the one after it. */
struct heap_item { int32_t rank, pos; };

struct lt_tokenizer {
    int vocab_size;            /* largest id + 1 */
    int eot;                   /* id of <|endoftext|>, or -1 */

    /* Per id; ids missing from vocab.json (holes) have str_off == NO_OFFSET. */
    size_t *str_off;           /* the vocab.json string (NUL-terminated) in strs */
    size_t *bytes_off;         /* the decoded bytes in bytes, bytes_len[id] long */
    uint32_t *bytes_len;
    char *strs;
    unsigned char *bytes;
    int32_t byte_id[256];      /* id of each single byte, -1 if the vocabulary lacks it */

    struct merge_slot *merges; /* open addressing on (a, b) */
    size_t merge_mask;

    /* Merge cache: pre-token bytes -> ids. Slots hold entry index + 1 (0 = empty). */
    uint32_t *cache_slots;
    struct cache_entry *cache_entries;
    uint32_t cache_n;
    unsigned char *cache_keys;
    size_t cache_keys_used, cache_keys_cap;
    int32_t *cache_ids;
    size_t cache_ids_used, cache_ids_cap;

    /* BPE scratch, grown to the longest pre-token seen. */
    int32_t *sym_id, *sym_prev, *sym_next;
    struct heap_item *heap;
    size_t scratch_cap;
};

/* ------------------------------------------------------------ helpers */

/* FNV-1a over n bytes: short keys, so a simple byte loop is fast enough. */
static uint64_t hash_bytes(const unsigned char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) { h ^= s[i]; h *= 0x100000001b3ull; }
    return h;
}

/* Mixes a pair of ids into a well-spread 64-bit hash (splitmix64 finaliser). */
static uint64_t hash_pair(int32_t a, int32_t b) {
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    k ^= k >> 30; k *= 0xbf58476d1ce4e5b9ull;
    k ^= k >> 27; k *= 0x94d049bb133111ebull;
    return k ^ (k >> 31);
}

/* Smallest power of two >= 2n (a load factor of at most one half). */
static size_t table_size(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    return cap;
}


/* Decodes the UTF-8 character at s[i] (i < n) into *cp and returns its
 * length. Overlong forms, surrogates, code points past U+10FFFF and
 * truncated sequences are invalid: then only the first byte is consumed
 * and *cp is UINT32_MAX, so that every byte string still splits into
 * "characters" whose bytes concatenate back to the input. */
static size_t utf8_char(const unsigned char *s, size_t n, size_t i, uint32_t *cp) {
    unsigned b0 = s[i];
    if (b0 < 0x80) { *cp = b0; return 1; }
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;   /* allowed range of the second byte */
    uint32_t c;
    if (b0 >= 0xC2 && b0 <= 0xDF) { len = 2; c = b0 & 0x1F; }
    else if (b0 >= 0xE0 && b0 <= 0xEF) {
        len = 3; c = b0 & 0x0F;
        if (b0 == 0xE0) lo = 0xA0;        /* overlong */
        if (b0 == 0xED) hi = 0x9F;        /* surrogates */
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        len = 4; c = b0 & 0x07;
        if (b0 == 0xF0) lo = 0x90;        /* overlong */
        if (b0 == 0xF4) hi = 0x8F;        /* past U+10FFFF */
    } else { *cp = UINT32_MAX; return 1; }
    if (n - i < len || s[i + 1] < lo || s[i + 1] > hi) { *cp = UINT32_MAX; return 1; }
    for (size_t k = 1; k < len; k++) {
        if ((s[i + k] & 0xC0) != 0x80) { *cp = UINT32_MAX; return 1; }
        c = (c << 6) | (s[i + k] & 0x3F);
    }
    *cp = c;
    return len;
}

/* Class (LT_UC_*) of the character at s[i], i < n; its length in *len.
 * An invalid byte is a character of class "other". */
static int char_class(const unsigned char *s, size_t n, size_t i, size_t *len) {
    uint32_t cp;
    *len = utf8_char(s, n, i, &cp);
    return cp == UINT32_MAX ? LT_UC_OTHER : lt_unicode_class(cp);
}

void lt_byte_level_map(uint32_t cp_of_byte[256]) {
    uint32_t next = 256;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
        cp_of_byte[b] = keep ? (uint32_t)b : next++;
    }
}

/* The byte-level alphabet in both directions (byte_of_cp: -1 for code
 * points outside it). */
static void byte_level_tables(uint32_t cp_of_byte[256], int16_t byte_of_cp[N_BYTE_CPS]) {
    lt_byte_level_map(cp_of_byte);
    for (int i = 0; i < N_BYTE_CPS; i++) byte_of_cp[i] = -1;
    for (int b = 0; b < 256; b++) byte_of_cp[cp_of_byte[b]] = (int16_t)b;
}

/* Writes cp as UTF-8 into out (room for 4) and returns the length. */
static size_t utf8_put(uint32_t cp, char *out) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | (cp >> 6)); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    out[0] = (char)(0xE0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    return 3;   /* the byte-level alphabet stays below U+0800 */
}

/* ------------------------------------------------------------ vocabulary map (load time) */

/* Open-addressing map from vocab string to id; slots hold ids (-1 = empty)
 * and the strings themselves are read from tok->strs. */
struct vocab_map { int32_t *slots; size_t mask; };

/* Id of the n-byte string s, or -1. */
static int32_t vocab_find(const lt_tokenizer *tok, const struct vocab_map *m, const char *s, size_t n) {
    for (size_t i = hash_bytes((const unsigned char *)s, n) & m->mask;; i = (i + 1) & m->mask) {
        int32_t id = m->slots[i];
        if (id < 0) return -1;
        /* strnlen first: t may be shorter than n and end the pool. */
        const char *t = tok->strs + tok->str_off[id];
        if (strnlen(t, n + 1) == n && memcmp(t, s, n) == 0) return id;
    }
}

/* Adds id under its string (already in tok->strs). Returns the id already
 * stored under that string, or -1 when the string was new. */
static int32_t vocab_add(const lt_tokenizer *tok, struct vocab_map *m, int32_t id) {
    const char *s = tok->strs + tok->str_off[id];
    size_t n = strlen(s);
    size_t i = hash_bytes((const unsigned char *)s, n) & m->mask;
    for (; m->slots[i] >= 0; i = (i + 1) & m->mask)
        if (strcmp(tok->strs + tok->str_off[m->slots[i]], s) == 0) return m->slots[i];
    m->slots[i] = id;
    return -1;
}

/* ------------------------------------------------------------ loading */

/* Fills the per-id tables from vocab.json. On failure the error names path. */
static int load_vocab(lt_tokenizer *tok, const char *path, struct vocab_map *map) {
    char *data;
    size_t len;
    if (lt_read_file(path, &data, &len) != LT_OK) return LT_ERR;
    cJSON *root = cJSON_ParseWithLength(data, len);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        size_t off = (at && at >= data && at <= data + len) ? (size_t)(at - data) : len;
        free(data);
        return lt_fail("%s: invalid JSON near byte %zu (truncated or corrupt vocabulary)", path, off);
    }
    free(data);
    int rc = LT_ERR;
    if (!cJSON_IsObject(root)) { lt_fail("%s: expected a JSON object mapping token strings to ids", path); goto done; }

    /* First pass: validate the ids and size the tables. */
    int max_id = -1, count = 0;
    size_t str_total = 0;
    for (const cJSON *it = root->child; it; it = it->next) {
        double v = it->valuedouble;
        /* The range test comes first: casting an out-of-range double is undefined. */
        if (!cJSON_IsNumber(it) || !(v >= 0 && v < MAX_VOCAB_ID) || v != (double)(int)v) {
            lt_fail("%s: token \"%.60s\" has no valid id (expected an integer in [0, %d))", path, it->string, MAX_VOCAB_ID);
            goto done;
        }
        if ((int)v > max_id) max_id = (int)v;
        str_total += strlen(it->string) + 1;
        count++;
    }
    if (count == 0) { lt_fail("%s: the vocabulary is empty", path); goto done; }

    tok->vocab_size = max_id + 1;
    size_t nv = (size_t)tok->vocab_size;
    tok->str_off = malloc(nv * sizeof *tok->str_off);
    tok->bytes_off = malloc(nv * sizeof *tok->bytes_off);
    tok->bytes_len = calloc(nv, sizeof *tok->bytes_len);
    tok->strs = malloc(str_total);
    tok->bytes = malloc(str_total);   /* decoding never lengthens a string */
    map->mask = table_size((size_t)count) - 1;
    map->slots = malloc((map->mask + 1) * sizeof *map->slots);
    if (!tok->str_off || !tok->bytes_off || !tok->bytes_len || !tok->strs || !tok->bytes || !map->slots) {
        lt_fail("%s: out of memory", path);
        goto done;
    }
    for (size_t i = 0; i < nv; i++) tok->str_off[i] = tok->bytes_off[i] = NO_OFFSET;
    memset(map->slots, 0xff, (map->mask + 1) * sizeof *map->slots);

    uint32_t cp_of_byte[256];
    int16_t byte_of_cp[N_BYTE_CPS];
    byte_level_tables(cp_of_byte, byte_of_cp);

    /* Second pass: store each string and its decoded bytes. */
    size_t s_used = 0, b_used = 0;
    for (const cJSON *it = root->child; it; it = it->next) {
        int id = (int)it->valuedouble;
        const char *s = it->string;
        size_t n = strlen(s);
        if (tok->str_off[id] != NO_OFFSET) {
            lt_fail("%s: id %d is given to both \"%.60s\" and \"%.60s\"", path, id, tok->strs + tok->str_off[id], s);
            goto done;
        }
        memcpy(tok->strs + s_used, s, n + 1);
        tok->str_off[id] = s_used;
        s_used += n + 1;
        if (vocab_add(tok, map, id) >= 0) { lt_fail("%s: token \"%.60s\" appears twice", path, s); goto done; }

        /* Map each character back to its byte. A token with a character
         * outside the byte-level alphabet decodes to its own UTF-8, as the
         * Hugging Face decoder does. */
        size_t k = 0, nb = 0;
        int in_alphabet = 1;
        while (k < n && in_alphabet) {
            uint32_t cp;
            k += utf8_char((const unsigned char *)s, n, k, &cp);
            in_alphabet = cp < N_BYTE_CPS && byte_of_cp[cp] >= 0;
            if (in_alphabet) tok->bytes[b_used + nb++] = (unsigned char)byte_of_cp[cp];
        }
        if (!in_alphabet) { memcpy(tok->bytes + b_used, s, n); nb = n; }
        tok->bytes_off[id] = b_used;
        tok->bytes_len[id] = (uint32_t)nb;
        b_used += nb;
    }

    /* Single-byte tokens seed BPE; a vocabulary may lack some (then encode
     * fails only on text containing those bytes). */
    for (int b = 0; b < 256; b++) {
        char u[4];
        tok->byte_id[b] = vocab_find(tok, map, u, utf8_put(cp_of_byte[b], u));
    }
    tok->eot = vocab_find(tok, map, EOT_TEXT, EOT_LEN);
    rc = LT_OK;
done:
    cJSON_Delete(root);
    return rc;
}

/* The merge of (a, b), or NULL when there is none. */
static const struct merge_slot *merge_find(const lt_tokenizer *tok, int32_t a, int32_t b) {
    for (size_t i = hash_pair(a, b) & tok->merge_mask;; i = (i + 1) & tok->merge_mask) {
        const struct merge_slot *m = &tok->merges[i];
        if (m->a < 0) return NULL;
        if (m->a == a && m->b == b) return m;
    }
}

/* Reads merges.txt: one "left right" pair per line, rank = line order. The
 * "#version" first line and blank lines are skipped; a repeated pair keeps
 * its first (best) rank. Errors name path and the line number. */
static int load_merges(lt_tokenizer *tok, const char *path, const struct vocab_map *map) {
    char *data;
    size_t len;
    if (lt_read_file(path, &data, &len) != LT_OK) return LT_ERR;

    size_t n_lines = 1;
    for (size_t i = 0; i < len; i++) n_lines += data[i] == '\n';
    tok->merge_mask = table_size(n_lines) - 1;
    tok->merges = malloc((tok->merge_mask + 1) * sizeof *tok->merges);
    char *joined = malloc(len + 1);   /* left + right of one line */
    if (!tok->merges || !joined) { free(data); free(joined); return lt_fail("%s: out of memory", path); }
    memset(tok->merges, 0xff, (tok->merge_mask + 1) * sizeof *tok->merges);

    int rc = LT_ERR, rank = 0, line_no = 0;
    for (size_t pos = 0; pos < len;) {
        char *line = data + pos;
        char *nl = memchr(line, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - line) : len - pos;
        pos += n + 1;
        line_no++;
        if (n > 0 && line[n - 1] == '\r') n--;
        if (n == 0) continue;
        if (line_no == 1 && n >= 8 && memcmp(line, "#version", 8) == 0) continue;

        char *sp = memchr(line, ' ', n);
        size_t nl_left = sp ? (size_t)(sp - line) : 0;
        size_t nl_right = sp ? n - nl_left - 1 : 0;
        if (!sp || nl_left == 0 || nl_right == 0 || memchr(sp + 1, ' ', nl_right) || memchr(line, '\0', n)) {
            lt_fail("%s:%d: malformed merge line \"%.*s\" (expected two tokens separated by one space)",
                    path, line_no, (int)(n < 80 ? n : 80), line);
            goto done;
        }
        int32_t a = vocab_find(tok, map, line, nl_left);
        int32_t b = vocab_find(tok, map, sp + 1, nl_right);
        if (a < 0 || b < 0) {
            lt_fail("%s:%d: merge token \"%.*s\" is not in the vocabulary", path, line_no,
                    a < 0 ? (int)nl_left : (int)nl_right, a < 0 ? line : sp + 1);
            goto done;
        }
        memcpy(joined, line, nl_left);
        memcpy(joined + nl_left, sp + 1, nl_right);
        int32_t r = vocab_find(tok, map, joined, nl_left + nl_right);
        if (r < 0) {
            lt_fail("%s:%d: merged token \"%.*s\" is not in the vocabulary", path, line_no,
                    (int)(nl_left + nl_right), joined);
            goto done;
        }
        size_t i = hash_pair(a, b) & tok->merge_mask;
        while (tok->merges[i].a >= 0 && !(tok->merges[i].a == a && tok->merges[i].b == b))
            i = (i + 1) & tok->merge_mask;
        if (tok->merges[i].a < 0) tok->merges[i] = (struct merge_slot){a, b, rank, r};
        rank++;
    }
    rc = LT_OK;
done:
    free(joined);
    free(data);
    return rc;
}

/* The public functions below are documented in lantern.h. */

int lt_tokenizer_load(const char *vocab_json, const char *merges_txt, lt_tokenizer **out) {
    if (!vocab_json || !merges_txt || !out) return lt_fail("lt_tokenizer_load: NULL argument");
    *out = NULL;
    lt_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) return lt_fail("lt_tokenizer_load: out of memory");
    struct vocab_map map = {0};
    int rc = load_vocab(tok, vocab_json, &map);
    if (rc == LT_OK) rc = load_merges(tok, merges_txt, &map);
    free(map.slots);   /* only merges.txt needs string lookups */
    if (rc != LT_OK) { lt_tokenizer_free(tok); return LT_ERR; }
    *out = tok;
    return LT_OK;
}

void lt_tokenizer_free(lt_tokenizer *tok) {
    if (!tok) return;
    free(tok->str_off);
    free(tok->bytes_off);
    free(tok->bytes_len);
    free(tok->strs);
    free(tok->bytes);
    free(tok->merges);
    free(tok->cache_slots);
    free(tok->cache_entries);
    free(tok->cache_keys);
    free(tok->cache_ids);
    free(tok->sym_id);
    free(tok->sym_prev);
    free(tok->sym_next);
    free(tok->heap);
    free(tok);
}

int lt_tokenizer_vocab_size(const lt_tokenizer *tok) { return tok ? tok->vocab_size : 0; }

int lt_tokenizer_eot(const lt_tokenizer *tok) { return tok ? tok->eot : -1; }

const char *lt_tokenizer_token_str(const lt_tokenizer *tok, int id) {
    if (!tok || id < 0 || id >= tok->vocab_size || tok->str_off[id] == NO_OFFSET) return NULL;
    return tok->strs + tok->str_off[id];
}

/* ------------------------------------------------------------ pre-tokenisation */

/* End (exclusive) of the pre-token that starts at s[i], i < n: the match of
 * GPT-2's pattern there, alternatives tried in order as a regex engine
 * does. */
static size_t pretoken_end(const unsigned char *s, size_t n, size_t i) {
    /* 's 't 're 've 'm 'll 'd (case-sensitive, as in GPT-2). */
    if (s[i] == '\'' && i + 1 < n) {
        unsigned char a = s[i + 1];
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
        if (i + 2 < n && ((a == 'r' && s[i + 2] == 'e') || (a == 'v' && s[i + 2] == 'e') ||
                          (a == 'l' && s[i + 2] == 'l')))
            return i + 3;
    }
    size_t len;
    int cls = char_class(s, n, i, &len);
    size_t start = i;
    /*  ?\p{L}+ | ?\p{N}+ | ?[^\s\p{L}\p{N}]+ : an ASCII space joins the
     * run of letters, numbers or other characters that follows it. */
    if (s[i] == ' ' && i + 1 < n) {
        size_t l1;
        int c1 = char_class(s, n, i + 1, &l1);
        if (c1 != LT_UC_SPACE) { cls = c1; start = i + 1; len = l1; }
    }
    if (cls != LT_UC_SPACE) {
        size_t k = start + len;
        while (k < n && char_class(s, n, k, &len) == cls) k += len;
        return k;
    }
    /* \s+(?!\S) | \s+ : a whitespace run, but when a non-space follows, its
     * last character is left to start the next pre-token (so that " word"
     * keeps its space), unless the run is a single character. */
    size_t k = i, last = i;
    while (k < n && char_class(s, n, k, &len) == LT_UC_SPACE) { last = k; k += len; }
    if (k < n && last > i) return last;
    return k;
}

size_t lt_pretoken_end(const unsigned char *s, size_t n, size_t i) { return pretoken_end(s, n, i); }

/* ------------------------------------------------------------ output and cache */

/* The growing id array that encode hands to its caller. */
struct idbuf { int32_t *v; size_t n, cap; };

/* Appends m ids to b; an error past INT_MAX ids (the count is an int). */
static int idbuf_push(struct idbuf *b, const int32_t *ids, size_t m) {
    if (b->n + m > (size_t)INT_MAX) return lt_fail("lt_tokenizer_encode: more than %d tokens", INT_MAX);
    if (lt_grow((void **)&b->v, &b->cap, b->n + m, sizeof *b->v)) return lt_fail("lt_tokenizer_encode: out of memory");
    memcpy(b->v + b->n, ids, m * sizeof *ids);
    b->n += m;
    return LT_OK;
}

/* The cached entry of the n-byte pre-token s (hash h), or NULL. */
static const struct cache_entry *cache_find(const lt_tokenizer *tok, const unsigned char *s, size_t n, uint64_t h) {
    if (!tok->cache_slots) return NULL;
    for (size_t i = h & (CACHE_SLOTS - 1);; i = (i + 1) & (CACHE_SLOTS - 1)) {
        uint32_t e = tok->cache_slots[i];
        if (e == 0) return NULL;
        const struct cache_entry *c = &tok->cache_entries[e - 1];
        if (c->hash == h && c->key_len == n && memcmp(tok->cache_keys + c->key_off, s, n) == 0) return c;
    }
}

/* Remembers that pre-token s (n bytes, hash h) encodes to ids[0..m). The
 * cache is emptied when full, which bounds its memory without bookkeeping
 * for eviction; a failed allocation only skips caching. */
static void cache_add(lt_tokenizer *tok, const unsigned char *s, size_t n, uint64_t h, const int32_t *ids, size_t m) {
    if (!tok->cache_slots) {
        tok->cache_slots = calloc(CACHE_SLOTS, sizeof *tok->cache_slots);
        tok->cache_entries = malloc(CACHE_MAX_ENTRIES * sizeof *tok->cache_entries);
        if (!tok->cache_slots || !tok->cache_entries) {
            free(tok->cache_slots); free(tok->cache_entries);
            tok->cache_slots = NULL; tok->cache_entries = NULL;
            return;
        }
    }
    if (tok->cache_n == CACHE_MAX_ENTRIES) {
        memset(tok->cache_slots, 0, CACHE_SLOTS * sizeof *tok->cache_slots);
        tok->cache_n = 0;
        tok->cache_keys_used = tok->cache_ids_used = 0;
    }
    if (lt_grow((void **)&tok->cache_keys, &tok->cache_keys_cap, tok->cache_keys_used + n, 1) ||
        lt_grow((void **)&tok->cache_ids, &tok->cache_ids_cap, tok->cache_ids_used + m, sizeof *tok->cache_ids))
        return;
    struct cache_entry *c = &tok->cache_entries[tok->cache_n];
    *c = (struct cache_entry){h, (uint32_t)tok->cache_keys_used, (uint32_t)n, (uint32_t)tok->cache_ids_used, (uint32_t)m};
    memcpy(tok->cache_keys + tok->cache_keys_used, s, n);
    memcpy(tok->cache_ids + tok->cache_ids_used, ids, m * sizeof *ids);
    tok->cache_keys_used += n;
    tok->cache_ids_used += m;
    size_t i = h & (CACHE_SLOTS - 1);
    while (tok->cache_slots[i]) i = (i + 1) & (CACHE_SLOTS - 1);
    tok->cache_slots[i] = ++tok->cache_n;
}

/* ------------------------------------------------------------ BPE */

/* Min-heap order: lower rank first, then the leftmost position, which is
 * the order in which GPT-2 applies merges. */
static int heap_less(struct heap_item x, struct heap_item y) {
    return x.rank < y.rank || (x.rank == y.rank && x.pos < y.pos);
}

/* Adds it to the heap h of *n items (room is the caller's business). */
static void heap_push(struct heap_item *h, size_t *n, struct heap_item it) {
    size_t i = (*n)++;
    while (i > 0 && heap_less(it, h[(i - 1) / 2])) { h[i] = h[(i - 1) / 2]; i = (i - 1) / 2; }
    h[i] = it;
}

/* Removes and returns the least item of the non-empty heap h. */
static struct heap_item heap_pop(struct heap_item *h, size_t *n) {
    struct heap_item top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && heap_less(h[c + 1], h[c])) c++;
        if (!heap_less(h[c], last)) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = last;
    return top;
}

/* Pushes the merge of symbol pos with its right neighbour, if one exists. */
static void push_pair(lt_tokenizer *tok, size_t *hn, int32_t pos) {
    if (pos < 0) return;
    int32_t nx = tok->sym_next[pos];
    if (nx < 0) return;
    const struct merge_slot *m = merge_find(tok, tok->sym_id[pos], tok->sym_id[nx]);
    if (m) heap_push(tok->heap, hn, (struct heap_item){m->rank, pos});
}

/* Appends the ids of one pre-token (n >= 1 bytes) to out. The symbols form
 * a linked list over the scratch arrays; a heap of candidate merges keyed
 * by (rank, position) gives each step's merge in O(log n), with entries that
 * went stale (a neighbour already merged) skipped when popped. */
static int encode_word(lt_tokenizer *tok, const unsigned char *s, size_t n, struct idbuf *out) {
    for (size_t i = 0; i < n; i++)
        if (tok->byte_id[s[i]] < 0)
            return lt_fail("lt_tokenizer_encode: byte 0x%02x has no token in the vocabulary", s[i]);
    if (n == 1) return idbuf_push(out, &tok->byte_id[s[0]], 1);

    uint64_t h = 0;
    if (n <= CACHE_MAX_KEY) {
        h = hash_bytes(s, n);
        const struct cache_entry *c = cache_find(tok, s, n, h);
        if (c) return idbuf_push(out, tok->cache_ids + c->ids_off, c->ids_n);
    }

    if (n > (size_t)INT32_MAX / 3) return lt_fail("lt_tokenizer_encode: a pre-token of %zu bytes is too long", n);
    if (n > tok->scratch_cap) {
        size_t cap = n < 256 ? 256 : n;
        int32_t *a = realloc(tok->sym_id, cap * sizeof *a);
        if (a) tok->sym_id = a;
        int32_t *b = realloc(tok->sym_prev, cap * sizeof *b);
        if (b) tok->sym_prev = b;
        int32_t *c = realloc(tok->sym_next, cap * sizeof *c);
        if (c) tok->sym_next = c;
        struct heap_item *d = realloc(tok->heap, 3 * cap * sizeof *d);
        if (d) tok->heap = d;
        if (!a || !b || !c || !d) return lt_fail("lt_tokenizer_encode: out of memory");
        tok->scratch_cap = cap;
    }

    int32_t *id = tok->sym_id, *prev = tok->sym_prev, *next = tok->sym_next;
    int32_t len = (int32_t)n;
    for (int32_t i = 0; i < len; i++) {
        id[i] = tok->byte_id[s[i]];
        prev[i] = i - 1;
        next[i] = i + 1 < len ? i + 1 : -1;
    }
    /* At most n - 1 initial pairs plus two per merge: the heap fits in 3n. */
    size_t hn = 0;
    for (int32_t i = 0; i + 1 < len; i++) push_pair(tok, &hn, i);

    while (hn > 0) {
        struct heap_item it = heap_pop(tok->heap, &hn);
        int32_t pos = it.pos, nx = next[pos];
        if (id[pos] < 0 || nx < 0) continue;   /* merged away, or now last */
        const struct merge_slot *m = merge_find(tok, id[pos], id[nx]);
        if (!m || m->rank != it.rank) continue; /* the pair changed since the push */
        id[pos] = m->result;
        next[pos] = next[nx];
        if (next[nx] >= 0) prev[next[nx]] = pos;
        id[nx] = -1;
        push_pair(tok, &hn, prev[pos]);
        push_pair(tok, &hn, pos);
    }

    /* Compact the surviving symbols to the front of id[] (they are in order). */
    size_t m = 0;
    for (int32_t i = 0; i >= 0; i = next[i]) id[m++] = id[i];
    if (n <= CACHE_MAX_KEY) cache_add(tok, s, n, h, id, m);
    return idbuf_push(out, id, m);
}

/* Appends the ids of ordinary text (no special tokens) to out. */
static int encode_plain(lt_tokenizer *tok, const unsigned char *s, size_t n, struct idbuf *out) {
    for (size_t i = 0; i < n;) {
        size_t e = pretoken_end(s, n, i);
        if (encode_word(tok, s + i, e - i, out) != LT_OK) return LT_ERR;
        i = e;
    }
    return LT_OK;
}

int lt_tokenizer_encode(lt_tokenizer *tok, const char *text, size_t len, int32_t **ids, int *n) {
    if (!tok || !ids || !n || (!text && len > 0)) return lt_fail("lt_tokenizer_encode: NULL argument");
    *ids = NULL;
    *n = 0;
    struct idbuf out = {0};
    /* Room for a typical ratio of ~4 bytes per token, and never a NULL result. */
    if (lt_grow((void **)&out.v, &out.cap, len / 4 + 16, sizeof *out.v)) return lt_fail("lt_tokenizer_encode: out of memory");

    const unsigned char *s = (const unsigned char *)text;
    size_t pos = 0;
    while (pos < len) {
        /* The special token is cut out first, so that it is never split by
         * the pattern; without it in the vocabulary it is plain text. */
        const unsigned char *eot = tok->eot >= 0 ? memmem(s + pos, len - pos, EOT_TEXT, EOT_LEN) : NULL;
        size_t end = eot ? (size_t)(eot - s) : len;
        if (encode_plain(tok, s + pos, end - pos, &out) != LT_OK) goto fail;
        pos = end;
        if (eot) {
            int32_t e = tok->eot;
            if (idbuf_push(&out, &e, 1) != LT_OK) goto fail;
            pos += EOT_LEN;
        }
    }
    *ids = out.v;
    *n = (int)out.n;
    return LT_OK;
fail:
    free(out.v);
    return LT_ERR;
}

/* ------------------------------------------------------------ decoding */

int lt_tokenizer_decode(const lt_tokenizer *tok, const int32_t *ids, int n, char **text, size_t *len) {
    if (!tok || !text || (!ids && n > 0)) return lt_fail("lt_tokenizer_decode: NULL argument");
    if (n < 0) return lt_fail("lt_tokenizer_decode: negative count %d", n);
    *text = NULL;
    if (len) *len = 0;
    /* Validate and measure first, so that the output is allocated once. */
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= tok->vocab_size || tok->str_off[id] == NO_OFFSET)
            return lt_fail("lt_tokenizer_decode: id %d (position %d) is outside the vocabulary (size %d)",
                           (int)id, i, tok->vocab_size);
        total += tok->bytes_len[id];
    }
    char *buf = malloc(total + 1);
    if (!buf) return lt_fail("lt_tokenizer_decode: out of memory");
    size_t k = 0;
    for (int i = 0; i < n; i++) {
        memcpy(buf + k, tok->bytes + tok->bytes_off[ids[i]], tok->bytes_len[ids[i]]);
        k += tok->bytes_len[ids[i]];
    }
    buf[k] = '\0';
    *text = buf;
    if (len) *len = k;
    return LT_OK;
}
