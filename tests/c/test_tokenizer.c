/*
 * test_tokenizer.c: the GPT-2 BPE tokenizer against the fixture cases (ids
 * from Hugging Face's tokenizer), byte-exact round trips of arbitrary bytes,
 * the special token, merge order on toy vocabularies, and load/decode
 * errors.
 */
#include "check.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define FIXTURE "tests/fixtures/gpt2-tokenizer/"

static char tmpdir[] = "/tmp/lantern_tok_XXXXXX";

/* Writes content to tmpdir/name and returns the path (static storage, one of
 * 16 rotating buffers). */
static const char *write_tmp(const char *name, const char *content, size_t len) {
    static char paths[16][512];
    static int k;
    k = (k + 1) % 16;
    snprintf(paths[k], sizeof paths[k], "%s/%s", tmpdir, name);
    FILE *f = fopen(paths[k], "wb");
    if (f) { fwrite(content, 1, len, f); fclose(f); }
    return paths[k];
}

static const char *write_str(const char *name, const char *content) {
    return write_tmp(name, content, strlen(content));
}

/* Encodes then decodes text; checks the bytes come back exactly. */
static int roundtrips(lt_tokenizer *tok, const char *text, size_t len) {
    int32_t *ids = NULL;
    int n = 0;
    char *back = NULL;
    size_t blen = 0;
    int ok = lt_tokenizer_encode(tok, text, len, &ids, &n) == LT_OK &&
             lt_tokenizer_decode(tok, ids, n, &back, &blen) == LT_OK &&
             blen == len && memcmp(back, text, len) == 0 && back[blen] == '\0';
    lt_free(ids);
    lt_free(back);
    return ok;
}

/* roundtrips() on a string literal, which may contain NULs. */
#define ROUNDTRIPS(tok, lit) roundtrips(tok, lit, sizeof lit - 1)

/* Encodes text and compares with the expected ids. */
static int encodes_to(lt_tokenizer *tok, const char *text, const int32_t *want, int nwant) {
    int32_t *ids = NULL;
    int n = 0;
    if (lt_tokenizer_encode(tok, text, strlen(text), &ids, &n) != LT_OK) {
        fprintf(stderr, "encode failed: %s\n", lt_last_error());
        return 0;
    }
    int ok = n == nwant && memcmp(ids, want, (size_t)n * sizeof *ids) == 0;
    if (!ok) {
        fprintf(stderr, "text \"%s\": got", text);
        for (int i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, "\n");
    }
    lt_free(ids);
    return ok;
}

static void test_fixture_cases(lt_tokenizer *tok) {
    size_t len;
    char *json = check_read_file(check_path(FIXTURE "cases.json"), &len);
    CHECK(json != NULL, "cannot read cases.json");
    if (!json) return;
    cJSON *root = cJSON_Parse(json);
    cJSON *cases = cJSON_GetObjectItem(root, "cases");
    CHECK(cJSON_GetArraySize(cases) >= 10, "cases.json has %d cases", cJSON_GetArraySize(cases));
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        const char *decoded = cJSON_GetObjectItem(c, "decoded")->valuestring;
        const cJSON *want = cJSON_GetObjectItem(c, "ids");
        int32_t *ids = NULL;
        int n = -1;
        CHECK_OK(lt_tokenizer_encode(tok, text, strlen(text), &ids, &n));
        int same = n == cJSON_GetArraySize(want);
        for (int i = 0; same && i < n; i++) same = ids[i] == cJSON_GetArrayItem(want, i)->valueint;
        CHECK(same, "ids of \"%s\" differ (got %d ids, want %d)", text, n, cJSON_GetArraySize(want));
        char *back = NULL;
        size_t blen = 0;
        CHECK_OK(lt_tokenizer_decode(tok, ids, n, &back, &blen));
        CHECK(back && blen == strlen(text) && strcmp(back, text) == 0, "decode of \"%s\" gave \"%s\"", text, back);
        CHECK(back && strcmp(back, decoded) == 0, "decode of \"%s\" is not the case's decoded", text);
        lt_free(ids);
        lt_free(back);
    }
    cJSON_Delete(root);
    free(json);
}

/* Beyond the fixture: non-ASCII letters, numbers and spaces. Expected ids
 * from an independent Python implementation (the `regex` module's \p{L} and
 * \p{N}, GPT-2's original merge loop) over the same files. */
static void test_unicode(lt_tokenizer *tok) {
    static const int32_t a[] = {127, 250, 77, 26884, 66, 9101, 67, 2634, 25, 12466, 253, 21169, 18849, 38857, 16843,
                                20375, 11, 220, 10310, 244, 45911, 234, 0, 27332, 120, 240, 171, 120, 241, 18923,
                                96, 149, 97, 25208, 2343, 227, 104};
    CHECK(encodes_to(tok, "\xc3\x9cn\xc3\xaf" "c\xc3\xb6" "d\xc3\xa9: \xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82, "
                          "\xe4\xb8\x96\xe7\x95\x8c! \xef\xbc\x92\xef\xbc\x93 \xd9\xa3\xd9\xa4 \xc2\xbd \xe2\x85\xab",
                     a, (int)(sizeof a / sizeof a[0])), "letters and numbers of other scripts");
    static const int32_t b[] = {66, 8635, 136, 223, 41492};   /* a combining accent is not a letter */
    CHECK(encodes_to(tok, "cafe\xcc\x81 na\xc3\xafve", b, 5), "combining mark");
    static const int32_t c[] = {64, 1849, 65, 5099, 222, 66, 220, 447, 101, 67, 216, 68, 219, 277, 220, 220, 216};
    CHECK(encodes_to(tok, "a\xc2\xa0" "b\xe3\x80\x80" "c \xe2\x80\xa8" "d\x1c" "e\x1f f  \x1c", c, 17), "Unicode spaces");
    static const int32_t d[] = {6, 50, 705, 82, 87, 10148, 82, 340, 1183};   /* contractions are case-sensitive */
    CHECK(encodes_to(tok, "'S 'sx ''s it'll", d, 9), "contractions");
    static const int32_t e[] = {47249, 222, 41840, 235, 12876, 220, 220, 197, 220};
    CHECK(encodes_to(tok, "\xf0\x9f\x98\x80\xf0\x9f\x91\x8d ok  \t ", e, 9), "emoji and trailing spaces");
}

static void test_special_and_edges(lt_tokenizer *tok) {
    CHECK(lt_tokenizer_vocab_size(tok) == 50257, "vocab size %d", lt_tokenizer_vocab_size(tok));
    CHECK(lt_tokenizer_eot(tok) == 50256, "eot %d", lt_tokenizer_eot(tok));
    CHECK(lt_tokenizer_token_str(tok, 50256) && strcmp(lt_tokenizer_token_str(tok, 50256), "<|endoftext|>") == 0, "eot string");
    CHECK(lt_tokenizer_token_str(tok, 220) && strcmp(lt_tokenizer_token_str(tok, 220), "\xc4\xa0") == 0, "220 is the space 'G-dot'");
    CHECK(lt_tokenizer_token_str(tok, -1) == NULL && lt_tokenizer_token_str(tok, 50257) == NULL, "out-of-range token_str is NULL");

    /* Empty text: zero ids (and a pointer that lt_free accepts). */
    int32_t *ids = NULL;
    int n = -1;
    CHECK_OK(lt_tokenizer_encode(tok, "", 0, &ids, &n));
    CHECK(n == 0, "empty text gave %d ids", n);
    lt_free(ids);
    CHECK_OK(lt_tokenizer_encode(tok, NULL, 0, &ids, &n));
    CHECK(n == 0, "NULL text of length 0 gave %d ids", n);
    lt_free(ids);

    /* The special token anywhere, repeated, and an unfinished one as text. */
    static const int32_t s[] = {87, 220, 50256, 50256, 1279, 91, 437, 1659, 5239, 331};
    CHECK(encodes_to(tok, "x <|endoftext|><|endoftext|> <|endoftext y", s, 10), "special tokens");
    static const int32_t s2[] = {50256, 64, 50256};
    CHECK(encodes_to(tok, "<|endoftext|>a<|endoftext|>", s2, 3), "special tokens at both ends");
    CHECK(ROUNDTRIPS(tok, "one<|endoftext|>two"), "special token round trip");

    /* Bytes, not C strings: NULs inside the text, and invalid UTF-8. */
    CHECK(ROUNDTRIPS(tok, "a\0b\0\0 c"), "NUL bytes");
    CHECK(ROUNDTRIPS(tok, "\xff\xfe abc \xc3"), "invalid UTF-8");
    CHECK(ROUNDTRIPS(tok, "\xed\xa0\x80 \xc0\xaf \xf4\x90\x80\x80 \xe2\x82"), "surrogate, overlong, past U+10FFFF, truncated");
    CHECK_OK(lt_tokenizer_encode(tok, "a\0b", 3, &ids, &n));
    CHECK(n == 3 && ids[1] == 188, "NUL is its own token (byte 0 -> id 188), got n=%d", n);
    lt_free(ids);

    /* Random byte strings, biased toward the characters the pattern cares
     * about, must all come back byte for byte. */
    static const unsigned char alphabet[] = {'a', 'Z', '7', ' ', ' ', '\'', 's', 'l', '\n', '\t', '!', 0xC3, 0xA9,
                                             0xE2, 0x80, 0xA8, 0xF0, 0x9F, 0x98, 0x80, 0xFF, 0x00, 0x1C, 0xC2, 0xA0};
    uint64_t rng = 12345;
    int all_ok = 1;
    for (int it = 0; it < 20000 && all_ok; it++) {
        unsigned char buf[64];
        size_t len = (size_t)(it % 64);
        for (size_t i = 0; i < len; i++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            unsigned r = (unsigned)(rng >> 33);
            buf[i] = (r & 0x100) ? (unsigned char)r : alphabet[r % sizeof alphabet];
        }
        all_ok = roundtrips(tok, (const char *)buf, len);
    }
    CHECK(all_ok, "random byte strings round-trip");

    /* Huge pre-tokens (one letter run, one space run, one symbol run). */
    size_t big = 200000;
    char *t = malloc(big);
    for (size_t i = 0; i < big; i++) t[i] = "ab"[i % 2 ? 1 : (i / 7) % 2];
    CHECK(roundtrips(tok, t, big), "200 kB word");
    memset(t, ' ', big);
    CHECK(roundtrips(tok, t, big), "200 kB of spaces");
    memset(t, '-', big);
    CHECK(roundtrips(tok, t, big), "200 kB of dashes");
    free(t);
}

static void test_decode_errors(lt_tokenizer *tok) {
    int32_t bad[] = {464, 50257};
    char *text = NULL;
    size_t len = 0;
    CHECK_FAILS(lt_tokenizer_decode(tok, bad, 2, &text, &len), "id 50257");
    CHECK(text == NULL, "no text on error");
    int32_t neg[] = {-3};
    CHECK_FAILS(lt_tokenizer_decode(tok, neg, 1, &text, &len), "id -3");
    CHECK_FAILS(lt_tokenizer_decode(tok, neg, -1, &text, &len), "negative count");
    CHECK_OK(lt_tokenizer_decode(tok, NULL, 0, &text, &len));
    CHECK(text && text[0] == '\0' && len == 0, "decode of no ids is \"\"");
    lt_free(text);
}

/* ---- toy vocabularies */

/* GPT-2's byte-level character of byte b, as UTF-8 into out (NUL-ended). */
static void byte_char(int b, char out[4]) {
    int cp = b;
    if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174)) {
        cp = 256;
        for (int x = 0; x < b; x++)
            if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || x >= 174)) cp++;
    }
    if (cp < 0x80) { out[0] = (char)cp; out[1] = 0; }
    else { out[0] = (char)(0xC0 | (cp >> 6)); out[1] = (char)(0x80 | (cp & 0x3F)); out[2] = 0; }
}

/* A vocabulary of the 256 bytes plus `extra` (JSON object members, may be
 * ""), and the merges text; loads it. */
static lt_tokenizer *toy(const char *extra, const char *merges) {
    char *json = malloc(16384);
    size_t k = (size_t)sprintf(json, "{");
    for (int b = 0; b < 256; b++) {
        char c[4];
        byte_char(b, c);
        const char *esc = (b == '"' || b == '\\') ? "\\" : "";
        k += (size_t)sprintf(json + k, "%s\"%s%s\": %d", b ? ", " : "", esc, c, b);
    }
    k += (size_t)sprintf(json + k, "%s%s}", *extra ? ", " : "", extra);
    const char *vp = write_tmp("toy_vocab.json", json, k);
    const char *mp = write_tmp("toy_merges.txt", merges, strlen(merges));
    free(json);
    lt_tokenizer *tok = NULL;
    if (lt_tokenizer_load(vp, mp, &tok) != LT_OK) fprintf(stderr, "toy load: %s\n", lt_last_error());
    return tok;
}

static void test_toy_merges(void) {
    /* Ranks follow line order: the same two merges in both orders. */
    lt_tokenizer *t = toy("\"ab\": 256, \"bc\": 257", "#version: 0.2\nb c\na b\n");
    CHECK(t != NULL, "toy 1 loads");
    if (t) {
        CHECK(lt_tokenizer_eot(t) == -1, "no eot in the toy vocabulary");
        CHECK(encodes_to(t, "abc", (const int32_t[]){'a', 257}, 2), "b c first");
        CHECK(encodes_to(t, "<|endoftext|>", (const int32_t[]){'<', '|', 'e', 'n', 'd', 'o', 'f', 't', 'e', 'x', 't', '|', '>'}, 13),
              "without eot in the vocabulary the marker is text");
    }
    lt_tokenizer_free(t);
    t = toy("\"ab\": 256, \"bc\": 257", "a b\r\nb c\r\n");
    CHECK(t != NULL, "toy 2 loads (no #version line, CRLF)");
    if (t) CHECK(encodes_to(t, "abc", (const int32_t[]){256, 'c'}, 2), "a b first");
    lt_tokenizer_free(t);

    /* Equal ranks merge leftmost first; merged tokens merge again. */
    t = toy("\"aa\": 256, \"aaaa\": 257", "a a\naa aa\n");
    if (t) {
        CHECK(encodes_to(t, "aaa", (const int32_t[]){256, 'a'}, 2), "aaa");
        CHECK(encodes_to(t, "aaaaa", (const int32_t[]){257, 'a'}, 2), "aaaaa");
    }
    lt_tokenizer_free(t);

    /* U+001C is not White_Space (unlike Python's isspace), so "\x1c!" is
     * one run of "other" characters and their merge applies. A space run
     * before a word leaves its last space to the word ("a   b" -> "a",
     * "  ", " b"); at the end of the text the run stays whole. */
    t = toy("\"\\u011c!\": 256, \"\\u0120\\u0120\": 257, \"\\u0120b\": 258", "\xc4\x9c !\n\xc4\xa0 \xc4\xa0\n\xc4\xa0 b\n");
    CHECK(t != NULL, "toy 4 loads");
    if (t) {
        CHECK(encodes_to(t, "\x1c!", (const int32_t[]){256}, 1), "U+001C is not a space");
        CHECK(encodes_to(t, "a   b", (const int32_t[]){'a', 257, 258}, 3), "space runs before a word");
        CHECK(encodes_to(t, "a   ", (const int32_t[]){'a', 257, 32}, 3), "space run at the end is one pre-token");
    }
    lt_tokenizer_free(t);
}

static void test_partial_vocab(void) {
    /* A vocabulary without all bytes loads; only text using a missing byte
     * fails. A token outside the byte alphabet decodes to its own UTF-8. */
    const char *vp = write_str("small_vocab.json", "{\"a\": 0, \"b\": 1, \"ab\": 2, \"\xe2\x82\xac\": 4}");
    const char *mp = write_str("small_merges.txt", "a b\n");
    lt_tokenizer *t = NULL;
    CHECK_OK(lt_tokenizer_load(vp, mp, &t));
    if (!t) return;
    CHECK(lt_tokenizer_vocab_size(t) == 5, "size is max id + 1");
    CHECK(encodes_to(t, "abab", (const int32_t[]){2, 2}, 2), "abab");
    int32_t *ids = NULL;
    int n = 0;
    CHECK_FAILS(lt_tokenizer_encode(t, "abz", 3, &ids, &n), "byte 0x7a");
    CHECK(ids == NULL, "no ids on error");
    char *text = NULL;
    size_t len;
    CHECK_OK(lt_tokenizer_decode(t, (const int32_t[]){4, 0}, 2, &text, &len));
    CHECK(text && strcmp(text, "\xe2\x82\xac" "a") == 0, "non-alphabet token decodes to its UTF-8");
    lt_free(text);
    CHECK_FAILS(lt_tokenizer_decode(t, (const int32_t[]){3}, 1, &text, &len), "id 3");
    CHECK(lt_tokenizer_token_str(t, 3) == NULL, "hole has no string");
    lt_tokenizer_free(t);
}

static void test_load_errors(void) {
    lt_tokenizer *t = (lt_tokenizer *)1;
    const char *merges = check_path(FIXTURE "merges.txt");
    const char *vocab = check_path(FIXTURE "vocab.json");
    CHECK_FAILS(lt_tokenizer_load("/nonexistent/vocab.json", merges, &t), "/nonexistent/vocab.json");
    CHECK(t == NULL, "*out is NULL after a failure");
    CHECK_FAILS(lt_tokenizer_load(vocab, "/nonexistent/merges.txt", &t), "/nonexistent/merges.txt");

    /* The real vocabulary cut short. */
    size_t len;
    char *real = check_read_file(vocab, &len);
    const char *cut = write_tmp("cut.json", real ? real : "", real ? len / 2 : 0);
    CHECK_FAILS(lt_tokenizer_load(cut, merges, &t), "invalid JSON");
    CHECK_FAILS(lt_tokenizer_load(cut, merges, &t), "cut.json");
    free(real);

    const char *p = write_str("list.json", "[1, 2]");
    CHECK_FAILS(lt_tokenizer_load(p, merges, &t), "expected a JSON object");
    p = write_str("empty.json", "{}");
    CHECK_FAILS(lt_tokenizer_load(p, merges, &t), "empty");
    p = write_str("str.json", "{\"a\": \"x\"}");
    CHECK_FAILS(lt_tokenizer_load(p, merges, &t), "\"a\" has no valid id");
    p = write_str("frac.json", "{\"a\": 1.5}");
    CHECK_FAILS(lt_tokenizer_load(p, merges, &t), "no valid id");
    p = write_str("huge.json", "{\"a\": 1e300}");
    CHECK_FAILS(lt_tokenizer_load(p, merges, &t), "no valid id");
    p = write_str("dup.json", "{\"a\": 0, \"b\": 0}");
    CHECK_FAILS(lt_tokenizer_load(p, merges, &t), "id 0 is given to both");

    const char *small = write_str("v.json", "{\"a\": 0, \"b\": 1, \"ab\": 2}");
    p = write_str("m1.txt", "#version: 0.2\na b c\n");
    CHECK_FAILS(lt_tokenizer_load(small, p, &t), "m1.txt:2: malformed merge line");
    p = write_str("m2.txt", "ab\n");
    CHECK_FAILS(lt_tokenizer_load(small, p, &t), "malformed merge line");
    p = write_str("m3.txt", "a  b\n");
    CHECK_FAILS(lt_tokenizer_load(small, p, &t), "malformed merge line");
    p = write_str("m4.txt", "a b\na x\n");
    CHECK_FAILS(lt_tokenizer_load(small, p, &t), "m4.txt:2: merge token \"x\" is not in the vocabulary");
    p = write_str("m5.txt", "b a\n");
    CHECK_FAILS(lt_tokenizer_load(small, p, &t), "merged token \"ba\" is not in the vocabulary");
    CHECK(t == NULL, "*out stays NULL");
    lt_tokenizer_free(NULL);
}

/* Not a check: prints encode speed on generated text with varied words, so
 * that the merge cache does not answer everything. */
static void measure_speed(lt_tokenizer *tok) {
    size_t len = 4u << 20;
    char *text = malloc(len);
    uint64_t rng = 7;
    static const char *syll[] = {"th", "e", "an", "re", "in", "on", "st", "er", "ing", "al", "ou", "x", "qu", "ed"};
    static const char *sep[] = {" ", " ", " ", " ", ", ", ". ", "\n", " 42 ", "'s ", " (", ") "};
    size_t k = 0;
    while (k + 64 < len) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        int ns = 1 + (int)((rng >> 40) % 4);
        for (int i = 0; i < ns; i++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            const char *s = syll[(rng >> 33) % 14];
            memcpy(text + k, s, strlen(s));
            k += strlen(s);
        }
        const char *s = sep[(rng >> 20) % 11];
        memcpy(text + k, s, strlen(s));
        k += strlen(s);
    }
    struct timespec a, b;
    int32_t *ids = NULL;
    int n = 0;
    clock_gettime(CLOCK_MONOTONIC, &a);
    CHECK_OK(lt_tokenizer_encode(tok, text, k, &ids, &n));
    clock_gettime(CLOCK_MONOTONIC, &b);
    double s = (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
    printf("encode speed: %.1f MB/s (%zu bytes -> %d tokens in %.3f s)\n", (double)k / s / 1e6, k, n, s);
    CHECK(roundtrips(tok, text, k), "speed text round-trips");
    lt_free(ids);
    free(text);
}

int main(void) {
    if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 1; }
    lt_tokenizer *tok = NULL;
    CHECK_OK(lt_tokenizer_load(check_path(FIXTURE "vocab.json"), check_path(FIXTURE "merges.txt"), &tok));
    if (tok) {
        test_fixture_cases(tok);
        test_unicode(tok);
        test_special_and_edges(tok);
        test_decode_errors(tok);
        measure_speed(tok);
    }
    lt_tokenizer_free(tok);
    test_toy_merges();
    test_partial_vocab();
    test_load_errors();

    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return check_summary();
}
