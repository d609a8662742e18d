/*
 * test_bpe_train.c: the byte-level BPE trainer. Its files load in the
 * tokenizer, every byte stays encodable, the vocabulary has the exact size
 * and layout asked for, frequent words become single tokens, training is
 * deterministic, the incremental pair counts give the same merges as a
 * plain recount after every merge, and bad arguments are errors.
 */
#include "check.h"
#include "pretokenize.h"

#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[] = "/tmp/lantern_bpe_XXXXXX";

/* tmpdir/name (one of 16 rotating static buffers). */
static const char *tmp_path(const char *name) {
    static char paths[16][512];
    static int k;
    k = (k + 1) % 16;
    snprintf(paths[k], sizeof paths[k], "%s/%s", tmpdir, name);
    return paths[k];
}

/* A few kilobytes of English: one paragraph, varied a little per round so
 * that counts are not all multiples of one number. Caller frees. */
static char *training_text(size_t *len) {
    static const char *para =
        "The keeper of the old lantern climbed the stairs every evening. "
        "She cleaned the glass, trimmed the wick and watched the ships. "
        "When the fog came in from the sea, the lantern was the only light "
        "that the sailors could see, and they were grateful to the keeper. ";
    static const char *extra[] = {"Nobody thanked her in winter.", "The gulls were loud today.",
                                  "It's 7 o'clock; the tide is high!", "\"Light it,\" they said."};
    size_t cap = 64 * 1024, n = 0;
    char *s = malloc(cap);
    for (int r = 0; r < 24; r++)
        n += (size_t)snprintf(s + n, cap - n, "%s%s Round %d.\n\n", para, extra[r % 4], r);
    *len = n;
    return s;
}

/* Encodes then decodes; checks the bytes come back exactly. */
static int roundtrips(lt_tokenizer *tok, const char *text, size_t len) {
    int32_t *ids = NULL;
    int n = 0;
    char *back = NULL;
    size_t blen = 0;
    int ok = lt_tokenizer_encode(tok, text, len, &ids, &n) == LT_OK &&
             lt_tokenizer_decode(tok, ids, n, &back, &blen) == LT_OK &&
             blen == len && memcmp(back, text, len) == 0;
    if (!ok) fprintf(stderr, "round trip failed: %s\n", lt_last_error());
    lt_free(ids);
    lt_free(back);
    return ok;
}

/* Number of tokens text encodes to (-1 on error). */
static int n_tokens(lt_tokenizer *tok, const char *text) {
    int32_t *ids = NULL;
    int n = -1;
    if (lt_tokenizer_encode(tok, text, strlen(text), &ids, &n) != LT_OK) n = -1;
    lt_free(ids);
    return n;
}

static int train(const char *text, size_t len, int vocab, const char *tag) {
    char v[64], m[64];
    snprintf(v, sizeof v, "vocab_%s.json", tag);
    snprintf(m, sizeof m, "merges_%s.txt", tag);
    return lt_bpe_train(text, len, vocab, NULL, 0, tmp_path(v), tmp_path(m));
}

static lt_tokenizer *load(const char *tag) {
    char v[64], m[64];
    snprintf(v, sizeof v, "vocab_%s.json", tag);
    snprintf(m, sizeof m, "merges_%s.txt", tag);
    lt_tokenizer *tok = NULL;
    CHECK_OK(lt_tokenizer_load(tmp_path(v), tmp_path(m), &tok));
    return tok;
}

static void test_train_and_load(void) {
    size_t len;
    char *text = training_text(&len);
    CHECK_OK(train(text, len, 400, "a"));
    lt_tokenizer *tok = load("a");
    if (!tok) { free(text); return; }

    CHECK(lt_tokenizer_vocab_size(tok) == 400, "vocab size %d", lt_tokenizer_vocab_size(tok));
    CHECK(lt_tokenizer_eot(tok) == 399, "eot id %d", lt_tokenizer_eot(tok));
    /* GPT-2's layout of the base tokens. */
    CHECK(strcmp(lt_tokenizer_token_str(tok, 0), "!") == 0, "id 0 is '%s'", lt_tokenizer_token_str(tok, 0));
    CHECK(strcmp(lt_tokenizer_token_str(tok, 188), "\xc4\x80") == 0, "id 188 is byte 0 (U+0100)");
    CHECK(strcmp(lt_tokenizer_token_str(tok, 220), "\xc4\xa0") == 0, "id 220 is the space (U+0120)");
    CHECK(strcmp(lt_tokenizer_token_str(tok, 255), "\xc5\x83") == 0, "id 255 is byte 0xAD (U+0143)");

    CHECK(roundtrips(tok, text, len), "training text");
    static const char unseen[] = "Zebras quickly jumped over 42 fences, didn't they? \xce\xbb=\xe2\x88\x91 \xf0\x9f\x98\x80\t\r\n";
    CHECK(roundtrips(tok, unseen, sizeof unseen - 1), "unseen text");
    unsigned char all[512];
    for (int i = 0; i < 512; i++) all[i] = (unsigned char)(i * 7 + (i >> 8));
    CHECK(roundtrips(tok, (const char *)all, sizeof all), "every byte value, invalid UTF-8 included");
    CHECK(roundtrips(tok, "a<|endoftext|>b", 15), "with the special token");
    CHECK(n_tokens(tok, "a<|endoftext|>b") == 3, "<|endoftext|> is one token");

    /* Frequent words are single tokens, with their leading space. */
    CHECK(n_tokens(tok, " lantern") == 1, " lantern is %d tokens", n_tokens(tok, " lantern"));
    CHECK(n_tokens(tok, " the") == 1, " the is %d tokens", n_tokens(tok, " the"));
    CHECK(n_tokens(tok, " keeper") == 1, " keeper is %d tokens", n_tokens(tok, " keeper"));
    CHECK(n_tokens(tok, "The keeper of the old lantern") == 6, "a frequent phrase");
    /* Nothing learned crosses a pre-token boundary or the special token. */
    int crosses = 0;
    for (int id = 256; id < 399; id++) {
        const char *s = lt_tokenizer_token_str(tok, id);
        crosses += s && (strstr(s, "|>") || strstr(s, "\xc4\xa0\xc4\xa0t"));
    }
    CHECK(crosses == 0, "%d tokens cross a boundary", crosses);
    lt_tokenizer_free(tok);
    free(text);
}

static void test_deterministic(void) {
    size_t len;
    char *text = training_text(&len);
    CHECK_OK(train(text, len, 350, "d1"));
    CHECK_OK(train(text, len, 350, "d2"));
    size_t n1, n2, m1, m2;
    char *v1 = check_read_file(tmp_path("vocab_d1.json"), &n1), *v2 = check_read_file(tmp_path("vocab_d2.json"), &n2);
    char *g1 = check_read_file(tmp_path("merges_d1.txt"), &m1), *g2 = check_read_file(tmp_path("merges_d2.txt"), &m2);
    CHECK(v1 && v2 && n1 == n2 && memcmp(v1, v2, n1) == 0, "vocab.json differs between two trainings");
    CHECK(g1 && g2 && m1 == m2 && memcmp(g1, g2, m1) == 0, "merges.txt differs between two trainings");
    CHECK(g1 && strncmp(g1, "#version: 0.2\n", 14) == 0, "merges.txt header");
    int lines = 0;
    for (size_t i = 0; g1 && i < m1; i++) lines += g1[i] == '\n';
    CHECK(lines == 1 + 350 - 257, "merges.txt has %d lines", lines);
    /* A smaller vocabulary is a prefix of a larger one: the merge order
     * does not depend on when training stops. */
    CHECK_OK(train(text, len, 300, "d3"));
    size_t m3;
    char *g3 = check_read_file(tmp_path("merges_d3.txt"), &m3);
    CHECK(g3 && g1 && m3 < m1 && memcmp(g1, g3, m3) == 0, "merges of 300 are a prefix of those of 350");
    free(v1); free(v2); free(g1); free(g2); free(g3);
    free(text);
}

/* ------------------------------------------------------------ plain reference */

/* The trainer's rule done the slow way: recount every pair after every
 * merge. Writes the merges as "left right" byte-level lines into out. */
#define REF_V 400
static int64_t ref_counts[REF_V][REF_V];

static void byte_level(const unsigned char *b, size_t n, char *out) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned c = b[i], shift = 0;
        int keep = (c >= 33 && c <= 126) || (c >= 161 && c <= 172) || c >= 174;
        if (!keep) {   /* its rank among the moved bytes, from U+0100 */
            for (unsigned x = 0; x < c; x++) shift += !((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || x >= 174);
            c = 256 + shift;
        }
        if (c < 0x80) out[k++] = (char)c;
        else { out[k++] = (char)(0xC0 | (c >> 6)); out[k++] = (char)(0x80 | (c & 0x3F)); }
    }
    out[k] = '\0';
}

/* Whether the symbols of a word still equal the bytes b (before merging). */
static int same_word(const int32_t *sym, int n, const unsigned char *b, size_t nb, const int id_of_byte[256]) {
    if ((size_t)n != nb) return 0;
    for (int k = 0; k < n; k++)
        if (sym[k] != id_of_byte[b[k]]) return 0;
    return 1;
}

static char *reference_merges(const char *text, size_t len, int vocab) {
    /* Distinct pre-tokens (text without special tokens here). */
    enum { MAXW = 2048, MAXL = 64 };
    static int32_t sym[MAXW][MAXL];
    static int wlen[MAXW], wcount[MAXW];
    static unsigned char tb[REF_V][MAXL];
    static int tl[REF_V];
    int nw = 0;
    const unsigned char *s = (const unsigned char *)text;
    int id_of_byte[256], nt = 0;
    for (int pass = 0; pass < 2; pass++)   /* printable bytes first, as GPT-2 numbers them */
        for (int b = 0; b < 256; b++) {
            int keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
            if (keep == (pass == 0)) { id_of_byte[b] = nt; tb[nt][0] = (unsigned char)b; tl[nt++] = 1; }
        }
    for (size_t i = 0; i < len;) {
        size_t e = lt_pretoken_end(s, len, i);
        int w = 0;
        while (w < nw && !same_word(sym[w], wlen[w], s + i, e - i, id_of_byte)) w++;
        if (w == nw) {
            if (nw == MAXW || e - i > MAXL) return NULL;
            wlen[nw] = (int)(e - i);
            for (int k = 0; k < wlen[nw]; k++) sym[nw][k] = id_of_byte[s[i + k]];
            wcount[nw++] = 0;
        }
        wcount[w]++;
        i = e;
    }
    char *out = calloc(1, 64 * 1024);
    size_t used = (size_t)sprintf(out, "#version: 0.2\n");
    while (nt < vocab - 1) {
        memset(ref_counts, 0, sizeof ref_counts);
        for (int w = 0; w < nw; w++)
            for (int k = 0; k + 1 < wlen[w]; k++) ref_counts[sym[w][k]][sym[w][k + 1]] += wcount[w];
        int ba = -1, bb = -1;
        for (int a = 0; a < nt; a++)
            for (int b = 0; b < nt; b++)
                if (ref_counts[a][b] > 0 && (ba < 0 || ref_counts[a][b] > ref_counts[ba][bb])) { ba = a; bb = b; }
        if (ba < 0) break;
        unsigned char joined[MAXL];
        memcpy(joined, tb[ba], (size_t)tl[ba]);
        memcpy(joined + tl[ba], tb[bb], (size_t)tl[bb]);
        int c = 0, jl = tl[ba] + tl[bb];
        while (c < nt && !(tl[c] == jl && memcmp(tb[c], joined, (size_t)jl) == 0)) c++;
        if (c == nt) { memcpy(tb[nt], joined, (size_t)jl); tl[nt++] = jl; }
        char sa[256], sb[256];
        byte_level(tb[ba], (size_t)tl[ba], sa);
        byte_level(tb[bb], (size_t)tl[bb], sb);
        used += (size_t)sprintf(out + used, "%s %s\n", sa, sb);
        for (int w = 0; w < nw; w++) {
            int j = 0;
            for (int k = 0; k < wlen[w];) {
                if (k + 1 < wlen[w] && sym[w][k] == ba && sym[w][k + 1] == bb) { sym[w][j++] = c; k += 2; }
                else sym[w][j++] = sym[w][k++];
            }
            wlen[w] = j;
        }
    }
    return out;
}

static void test_matches_recount(void) {
    /* Runs of one letter exercise overlapping pairs ("aaaa" -> "aa aa"),
     * and repeated digits and punctuation give many equal counts (ties). */
    size_t len;
    char *text = training_text(&len);
    char *more = malloc(len + 512);
    memcpy(more, text, len);
    size_t n = len + (size_t)sprintf(more + len, " aaaa aaaaa aaa aaaaaaa bbb bb 1111 2222 1212 ... !!! ?? %s",
                                      "mississippi missus");
    char *want = reference_merges(more, n, 380);
    CHECK(want != NULL, "reference trainer limits");
    CHECK_OK(lt_bpe_train(more, n, 380, NULL, 0, tmp_path("vocab_r.json"), tmp_path("merges_r.txt")));
    size_t glen;
    char *got = check_read_file(tmp_path("merges_r.txt"), &glen);
    CHECK(want && got && strcmp(want, got) == 0, "merges differ from a full recount after every merge");
    free(want); free(got); free(more); free(text);
}

/* ------------------------------------------------------------ special tokens and errors */

static void test_specials(void) {
    const char *text = "<|pad|>hello<|pad|> world<|endoftext|>hello world <|pad|>hello";
    const char *sp[] = {"<|pad|>", "<|sep|>"};
    CHECK_OK(lt_bpe_train(text, strlen(text), 268, sp, 2, tmp_path("vocab_s.json"), tmp_path("merges_s.txt")));
    lt_tokenizer *tok = NULL;
    CHECK_OK(lt_tokenizer_load(tmp_path("vocab_s.json"), tmp_path("merges_s.txt"), &tok));
    if (!tok) return;
    /* Nine merges are all this text allows (hello, Ġworld), which also
     * shows that no pair spans a special token. */
    CHECK(lt_tokenizer_vocab_size(tok) == 268, "vocab size %d", lt_tokenizer_vocab_size(tok));
    CHECK(strcmp(lt_tokenizer_token_str(tok, 265), "<|pad|>") == 0, "first special at 265");
    CHECK(strcmp(lt_tokenizer_token_str(tok, 266), "<|sep|>") == 0, "second special at 266");
    CHECK(lt_tokenizer_eot(tok) == 267, "eot last");
    CHECK(n_tokens(tok, " world") == 1 && n_tokens(tok, "hello") == 1, "hello and Ġworld learned");
    for (int id = 256; id < 265; id++) {
        const char *s = lt_tokenizer_token_str(tok, id);
        CHECK(!strchr(s, '|') && !strchr(s, '<'), "learned token %d '%s' crosses a special token", id, s);
    }
    CHECK(roundtrips(tok, text, strlen(text)), "round trip with specials");
    lt_tokenizer_free(tok);

    /* No text: only the bytes and <|endoftext|>. */
    CHECK_OK(lt_bpe_train(NULL, 0, 257, NULL, 0, tmp_path("vocab_e.json"), tmp_path("merges_e.txt")));
    CHECK_OK(lt_tokenizer_load(tmp_path("vocab_e.json"), tmp_path("merges_e.txt"), &tok));
    CHECK(tok && lt_tokenizer_vocab_size(tok) == 257 && lt_tokenizer_eot(tok) == 256, "bytes-only vocabulary");
    CHECK(tok && roundtrips(tok, "bytes only", 10), "bytes-only round trip");
    lt_tokenizer_free(tok);
}

static void test_errors(void) {
    const char *v = tmp_path("vocab_x.json"), *m = tmp_path("merges_x.txt");
    const char *eot[] = {"<|endoftext|>"}, *dup[] = {"<|a|>", "<|a|>"}, *empty[] = {""}, *clash[] = {"a"};
    CHECK_FAILS(lt_bpe_train("abc", 3, 300, NULL, 0, NULL, m), "NULL argument");
    CHECK_FAILS(lt_bpe_train(NULL, 3, 300, NULL, 0, v, m), "NULL argument");
    CHECK_FAILS(lt_bpe_train("abc", 3, 256, NULL, 0, v, m), "vocab_size 256 out of range");
    CHECK_FAILS(lt_bpe_train("abc", 3, 2000000, NULL, 0, v, m), "out of range");
    CHECK_FAILS(lt_bpe_train("abc", 3, 258, NULL, 1, v, m), "bad special token list");
    CHECK_FAILS(lt_bpe_train("abc", 3, 258, NULL, -1, v, m), "bad special token list");
    CHECK_FAILS(lt_bpe_train("abc", 3, 258, eot, 1, v, m), "always added");
    CHECK_FAILS(lt_bpe_train("abc", 3, 300, dup, 2, v, m), "listed twice");
    CHECK_FAILS(lt_bpe_train("abc", 3, 300, empty, 1, v, m), "is empty");
    CHECK_FAILS(lt_bpe_train("xyz", 3, 258, clash, 1, v, m), "spelled like token");
    /* "abc abc" allows three merges (ab, abc, Ġabc): 256 + 3 + 1 ids at most. */
    CHECK_FAILS(lt_bpe_train("abc abc", 7, 400, NULL, 0, v, m), "use vocab_size <= 260");
    CHECK_FAILS(lt_bpe_train("abc", 3, 258, NULL, 0, "/nonexistent-dir/vocab.json", m), "/nonexistent-dir/vocab.json");
    struct stat st;
    CHECK(stat(v, &st) != 0, "no output after a failure");
}

int main(void) {
    if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 1; }
    test_train_and_load();
    test_deterministic();
    test_matches_recount();
    test_specials();
    test_errors();
    /* Clean up the scratch directory. */
    static const char *names[] = {"a", "d1", "d2", "d3", "r", "s", "e", "x"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        char f[64];
        snprintf(f, sizeof f, "vocab_%s.json", names[i]);
        unlink(tmp_path(f));
        snprintf(f, sizeof f, "merges_%s.txt", names[i]);
        unlink(tmp_path(f));
    }
    rmdir(tmpdir);
    return check_summary();
}
