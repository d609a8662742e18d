/*
 * llm.c: the HTTP side of the LLM client: batches of JSON POSTs to an
 * OpenAI-compatible server over libcurl's multi interface, with a bound on
 * requests in flight, a per-attempt timeout and retries with exponential
 * backoff and jitter. Plus SHA-256, which keys the response cache.
 *
 * Everything about the content (request JSON, parsing, the cache) is in
 * lua/lantern/llm.lua; here a request is a path and a body, a result is a
 * status, a body and an error message.
 */
#include "internal.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum {
    DEFAULT_TIMEOUT_S = 60,
    DEFAULT_MAX_RETRIES = 5,
    DEFAULT_CONCURRENCY = 4,
    DEFAULT_BACKOFF_MS = 1000,
    DEFAULT_BACKOFF_MAX_MS = 10000,
    /* No API answer is this large; a bigger one is a misbehaving server and
     * must not exhaust memory. */
    MAX_RESPONSE_BYTES = 256 << 20,
    /* How much of an error body goes into the error message. */
    ERROR_BODY_CHARS = 300,
};

struct lt_llm {
    char *base_url;            /* without a trailing '/' */
    struct curl_slist *headers;
    lt_llm_opts o;
    uint64_t rng;              /* jitter */
};

/* curl_global_init must run once per process (http.c does the same). */
static pthread_once_t llm_curl_once = PTHREAD_ONCE_INIT;
static CURLcode llm_curl_status;
static void llm_curl_init(void) { llm_curl_status = curl_global_init(CURL_GLOBAL_DEFAULT); }

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* splitmix64: jitter only needs to differ between clients and retries. */
static uint64_t next_random(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* A malloc'd printf result, or NULL when out of memory. */
static char *format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *format(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) s = NULL;
    va_end(ap);
    return s;
}

int lt_llm_new(const char *base_url, const char *api_key, const lt_llm_opts *opts, lt_llm **out) {
    if (!out) return lt_fail("lt_llm_new: out is NULL");
    *out = NULL;
    if (!base_url || !base_url[0]) return lt_fail("lt_llm_new: a base URL is required");
    pthread_once(&llm_curl_once, llm_curl_init);
    if (llm_curl_status != CURLE_OK)
        return lt_fail("curl_global_init failed: %s", curl_easy_strerror(llm_curl_status));

    lt_llm *c = calloc(1, sizeof *c);
    if (!c) return lt_fail("out of memory");
    if (opts) c->o = *opts;
    if (c->o.timeout_s <= 0) c->o.timeout_s = DEFAULT_TIMEOUT_S;
    if (c->o.max_retries == 0) c->o.max_retries = DEFAULT_MAX_RETRIES;
    if (c->o.max_retries < 0) c->o.max_retries = 0;
    if (c->o.max_concurrency <= 0) c->o.max_concurrency = DEFAULT_CONCURRENCY;
    if (c->o.backoff_ms <= 0) c->o.backoff_ms = DEFAULT_BACKOFF_MS;
    if (c->o.backoff_max_ms <= 0) c->o.backoff_max_ms = DEFAULT_BACKOFF_MAX_MS;
    if (c->o.backoff_max_ms < c->o.backoff_ms) c->o.backoff_max_ms = c->o.backoff_ms;
    c->rng = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)c;

    size_t len = strlen(base_url);
    while (len > 0 && base_url[len - 1] == '/') len--;
    c->base_url = strndup(base_url, len);
    /* Header lines; a NULL from curl_slist_append leaves the list as it was. */
    int oom = !c->base_url;
    const char *lines[3] = {"Content-Type: application/json",
                            /* An empty Expect: curl would otherwise wait up to a
                             * second for "100 Continue" before a body over 1 KiB. */
                            "Expect:", NULL};
    char *auth = NULL;
    if (api_key && api_key[0]) {
        auth = format("Authorization: Bearer %s", api_key);
        if (!auth) oom = 1;
        lines[2] = auth;
    }
    for (int i = 0; i < 3 && !oom; i++) {
        if (!lines[i]) continue;
        struct curl_slist *h = curl_slist_append(c->headers, lines[i]);
        if (!h) oom = 1;
        else c->headers = h;
    }
    free(auth);
    if (oom) {
        lt_llm_free(c);
        return lt_fail("out of memory");
    }
    *out = c;
    return LT_OK;
}

void lt_llm_free(lt_llm *c) {
    if (!c) return;
    curl_slist_free_all(c->headers);
    free(c->base_url);
    free(c);
}

/* ------------------------------------------------------------- one request */

enum { JOB_WAITING, JOB_RUNNING, JOB_DONE };

typedef struct job {
    int index;
    int state;
    int attempts;              /* attempts started */
    double start_at;           /* WAITING: not before this time (now_s) */
    char *url;
    CURL *easy;
    char *body;                /* response bytes of the current attempt */
    size_t len, cap;
    int too_big;
    char errbuf[CURL_ERROR_SIZE];
} job;

static size_t on_body(char *data, size_t size, size_t nmemb, void *arg) {
    job *j = arg;
    size_t n = size * nmemb;
    if (j->len + n > MAX_RESPONSE_BYTES) { j->too_big = 1; return 0; }
    if (j->len + n + 1 > j->cap) {
        size_t cap = j->cap ? j->cap : 4096;
        while (cap < j->len + n + 1) cap *= 2;
        char *p = realloc(j->body, cap);
        if (!p) { j->too_big = 1; return 0; }
        j->body = p;
        j->cap = cap;
    }
    memcpy(j->body + j->len, data, n);
    j->len += n;
    j->body[j->len] = '\0';
    return n;
}

/* Starts an attempt: a fresh easy handle added to the multi handle. */
static int start_job(lt_llm *c, CURLM *multi, job *j, const char *body) {
    j->len = 0;
    j->too_big = 0;
    j->errbuf[0] = '\0';
    CURL *e = curl_easy_init();
    if (!e) return -1;
    curl_easy_setopt(e, CURLOPT_URL, j->url);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->headers);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "lantern/0.1");
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, j->errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    /* A total time, not a stall check: an LLM may think for a long time
     * before sending the first byte, and then sends a small body. */
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)c->o.timeout_s * 1000L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)c->o.timeout_s * 1000L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, j);
    curl_easy_setopt(e, CURLOPT_PRIVATE, j);
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
    if (curl_multi_add_handle(multi, e) != CURLM_OK) {
        curl_easy_cleanup(e);
        return -1;
    }
    j->easy = e;
    j->state = JOB_RUNNING;
    j->attempts++;
    return 0;
}

/* Transport failures worth another attempt: the server may be restarting,
 * overloaded or briefly unreachable. Malformed URLs, TLS certificate
 * problems and the like will fail the same way again. */
static int transient(CURLcode rc) {
    switch (rc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
        return 1;
    default:
        return 0;
    }
}

/* The delay before retry number k (1-based), in seconds. */
static double retry_delay(lt_llm *c, int k, curl_off_t retry_after_s) {
    double ms = c->o.backoff_ms;
    for (int i = 1; i < k && ms < c->o.backoff_max_ms; i++) ms *= 2;
    if (ms > c->o.backoff_max_ms) ms = c->o.backoff_max_ms;
    /* Jitter spreads out clients that failed together, so that they do not
     * all come back in the same instant. */
    double u = (double)(next_random(&c->rng) >> 11) / 9007199254740992.0;
    ms *= 0.5 + 0.5 * u;
    /* A server's Retry-After is honoured up to our own ceiling. */
    if (retry_after_s > 0) {
        double ra = (double)retry_after_s * 1000.0;
        if (ra > c->o.backoff_max_ms) ra = c->o.backoff_max_ms;
        if (ra > ms) ms = ra;
    }
    return ms / 1000.0;
}

/* The message for a final failure. body may be NULL. */
static char *failure_message(const lt_llm *c, const job *j, CURLcode rc, long code) {
    char tries[48] = "";
    if (j->attempts > 1) snprintf(tries, sizeof tries, " (after %d attempts)", j->attempts);
    if (j->too_big)
        return format("response from %s larger than %d MiB%s", j->url, MAX_RESPONSE_BYTES >> 20, tries);
    if (rc == CURLE_OK) {
        /* Show the start of the server's explanation, on one line. */
        char snippet[ERROR_BODY_CHARS + 1];
        size_t n = 0;
        for (size_t i = 0; j->body && i < j->len && n < ERROR_BODY_CHARS; i++)
            snippet[n++] = (j->body[i] == '\n' || j->body[i] == '\r') ? ' ' : j->body[i];
        snippet[n] = '\0';
        return format("HTTP %ld from %s%s%s%s", code, j->url, tries, n ? ": " : "", snippet);
    }
    const char *detail = j->errbuf[0] ? j->errbuf : curl_easy_strerror(rc);
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
        return format("timed out after %d s waiting for %s%s (%s)", c->o.timeout_s, j->url, tries, detail);
    case CURLE_COULDNT_CONNECT:
        return format("cannot connect to %s%s: %s", j->url, tries, detail);
    case CURLE_PARTIAL_FILE:
        return format("truncated response from %s%s: %s", j->url, tries, detail);
    default:
        return format("request to %s failed%s: %s", j->url, tries, detail);
    }
}

/* Handles a finished attempt: schedules a retry or settles the job. */
static void finish_attempt(lt_llm *c, CURLM *multi, job *j, CURLcode rc, char **responses,
                           int *status, char **errors) {
    long code = 0;
    curl_off_t retry_after = 0;
    curl_easy_getinfo(j->easy, CURLINFO_RESPONSE_CODE, &code);
    if (rc == CURLE_OK) curl_easy_getinfo(j->easy, CURLINFO_RETRY_AFTER, &retry_after);
    int ok = rc == CURLE_OK && code >= 200 && code < 300;
    int retry = !ok && !j->too_big &&
                (rc == CURLE_OK ? (code == 429 || code >= 500) : transient(rc)) &&
                j->attempts <= c->o.max_retries;

    char *err = ok || retry ? NULL : failure_message(c, j, rc, code);
    curl_multi_remove_handle(multi, j->easy);
    curl_easy_cleanup(j->easy);
    j->easy = NULL;

    if (retry) {
        j->state = JOB_WAITING;
        j->start_at = now_s() + retry_delay(c, j->attempts, retry_after);
        return;
    }
    int i = j->index;
    status[i] = rc == CURLE_OK ? (int)code : 0;
    /* The body of an error status is kept too: it usually says why. */
    if (rc == CURLE_OK && !j->too_big) {
        responses[i] = j->body ? j->body : strdup("");
        j->body = NULL;
        j->cap = j->len = 0;
    }
    errors[i] = ok ? NULL : (err ? err : strdup("request failed (and out of memory for the message)"));
    j->state = JOB_DONE;
}

int lt_llm_request_batch(lt_llm *c, int n, const char *const *paths, const char *const *bodies,
                         char **responses, int *status, char **errors) {
    if (!c) return lt_fail("lt_llm_request_batch: client is NULL");
    if (n < 0) return lt_fail("lt_llm_request_batch: n = %d", n);
    if (n == 0) return LT_OK;
    if (!paths || !bodies || !responses || !status || !errors)
        return lt_fail("lt_llm_request_batch: NULL array");
    for (int i = 0; i < n; i++)
        if (!paths[i] || !bodies[i]) return lt_fail("lt_llm_request_batch: request %d has no path or body", i);

    job *jobs = calloc((size_t)n, sizeof *jobs);
    CURLM *multi = curl_multi_init();
    if (!jobs || !multi) {
        free(jobs);
        if (multi) curl_multi_cleanup(multi);
        return lt_fail("lt_llm_request_batch: out of memory");
    }
    for (int i = 0; i < n; i++) {
        responses[i] = NULL;
        errors[i] = NULL;
        status[i] = 0;
        jobs[i].index = i;
        jobs[i].url = format("%s%s%s", c->base_url, paths[i][0] == '/' ? "" : "/", paths[i]);
        if (!jobs[i].url) {
            for (int k = 0; k < i; k++) free(jobs[k].url);
            free(jobs);
            curl_multi_cleanup(multi);
            return lt_fail("lt_llm_request_batch: out of memory");
        }
    }

    int done = 0, running = 0;
    while (done < n) {
        double t = now_s();
        /* Start what may start, lowest index first. */
        double next_start = -1;
        for (int i = 0; i < n && running < c->o.max_concurrency; i++) {
            job *j = &jobs[i];
            if (j->state != JOB_WAITING) continue;
            if (j->start_at > t) {
                if (next_start < 0 || j->start_at < next_start) next_start = j->start_at;
                continue;
            }
            if (start_job(c, multi, j, bodies[i]) != 0) {
                errors[i] = format("cannot set up the request to %s", j->url);
                j->state = JOB_DONE;
                done++;
                continue;
            }
            running++;
        }
        if (running > 0) {
            int still = 0;
            curl_multi_perform(multi, &still);
            CURLMsg *msg;
            int left;
            while ((msg = curl_multi_info_read(multi, &left))) {
                if (msg->msg != CURLMSG_DONE) continue;
                job *j = NULL;
                curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&j);
                CURLcode rc = msg->data.result;
                finish_attempt(c, multi, j, rc, responses, status, errors);
                running--;
                if (j->state == JOB_DONE) done++;
            }
        }
        if (done == n) break;
        /* Sleep until a transfer has news or a retry is due. */
        int wait_ms = 100;
        if (next_start >= 0) {
            double dt = (next_start - now_s()) * 1000.0;
            if (dt < wait_ms) wait_ms = dt > 0 ? (int)dt + 1 : 0;
        }
        if (running > 0) {
            curl_multi_poll(multi, NULL, 0, wait_ms, NULL);
        } else if (wait_ms > 0) {
            struct timespec ts = {wait_ms / 1000, (long)(wait_ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
    }

    for (int i = 0; i < n; i++) {
        free(jobs[i].url);
        free(jobs[i].body);
    }
    free(jobs);
    curl_multi_cleanup(multi);
    return LT_OK;
}

/* ------------------------------------------------------------------ SHA-256 */
/* FIPS 180-4, written out plainly; speed does not matter for cache keys. */

static const uint32_t sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha_block(uint32_t h[8], const unsigned char *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 |
               (uint32_t)p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + sha_k[i] + w[i];
        uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        hh = g; g = f; f = e; e = d + t1;
        d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d;
    h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
}

void lt_sha256_hex(const void *data, size_t len, char *hex) {
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    const unsigned char *p = data;
    size_t full = len / 64;
    for (size_t i = 0; i < full; i++) sha_block(h, p + 64 * i);
    /* The tail, the 0x80 marker and the bit length fill one or two blocks. */
    unsigned char tail[128] = {0};
    size_t rest = len % 64;
    if (rest) memcpy(tail, p + 64 * full, rest);
    tail[rest] = 0x80;
    size_t tail_len = rest + 1 + 8 <= 64 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++) tail[tail_len - 1 - i] = (unsigned char)(bits >> (8 * i));
    for (size_t off = 0; off < tail_len; off += 64) sha_block(h, tail + off);
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 8; i++)
        for (int k = 0; k < 8; k++) hex[8 * i + k] = digits[(h[i] >> (28 - 4 * k)) & 0xf];
    hex[64] = '\0';
}
