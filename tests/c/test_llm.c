/*
 * test_llm.c: the LLM client's HTTP side (lt_llm_request_batch) against the
 * scripted local server of test_server.h: success, retries on 429 and 5xx,
 * no retry on 400/404, truncated bodies, timeouts, refused connections,
 * per-request errors inside a batch and the bound on requests in flight.
 * Plus SHA-256 against the FIPS test vectors.
 */
#include "check.h"
#include "test_server.h"

#include <poll.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Fast retries so that the tests take milliseconds, not seconds. */
static lt_llm *client(const char *base, int timeout_s, int max_retries, int concurrency) {
    lt_llm_opts o = {.timeout_s = timeout_s, .max_retries = max_retries,
                     .max_concurrency = concurrency, .backoff_ms = 5, .backoff_max_ms = 20};
    lt_llm *c = NULL;
    CHECK_OK(lt_llm_new(base, "sk-test", &o, &c));
    return c;
}

/* One request; the outputs are freed by the caller (lt_free). */
static void one(lt_llm *c, const char *path, const char *body, char **resp, int *status, char **err) {
    const char *paths[1] = {path}, *bodies[1] = {body};
    CHECK_OK(lt_llm_request_batch(c, 1, paths, bodies, resp, status, err));
}

static void test_sha256(void) {
    static const struct { size_t n; char fill; const char *text; const char *hex; } cases[] = {
        {0, 0, "", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {0, 0, "abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {0, 0, "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
        /* lengths around the padding boundary: one or two final blocks */
        {55, 'a', NULL, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"},
        {56, 'a', NULL, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"},
        {63, 'a', NULL, "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34"},
        {64, 'a', NULL, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"},
        {1000000, 'a', NULL, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *buf = NULL;
        const char *data = cases[i].text;
        size_t n = data ? strlen(data) : cases[i].n;
        if (!data) {
            buf = malloc(n);
            memset(buf, cases[i].fill, n);
            data = buf;
        }
        char hex[65];
        lt_sha256_hex(data, n, hex);
        CHECK(strcmp(hex, cases[i].hex) == 0, "sha256 of %zu bytes: %s", n, hex);
        free(buf);
    }
}

static const char *OK_BODY = "{\"choices\":[{\"message\":{\"role\":\"assistant\",\"content\":\"hi\"}}]}";

static void test_success_and_headers(void) {
    ts_server *s = ts_start();
    ts_route_add(s, (ts_route){.method = "POST", .path = "/v1/chat/completions", .body = OK_BODY,
                               .content_type = "application/json"});
    lt_llm *c = client(ts_url(s, "/v1/"), 5, 0, 4);  /* trailing '/' is ignored */
    char *resp, *err;
    int status;
    /* Over 1 KiB, so that curl would use Expect: 100-continue by default. */
    char body[3000];
    snprintf(body, sizeof body, "{\"model\":\"m\",\"pad\":\"%02000d\"}", 0);
    one(c, "/chat/completions", body, &resp, &status, &err);
    CHECK(status == 200, "status %d", status);
    CHECK(err == NULL, "error %s", err ? err : "");
    CHECK(resp && strcmp(resp, OK_BODY) == 0, "body %s", resp ? resp : "(null)");
    const ts_request *r = ts_last_request(s);
    CHECK(r && strcmp(r->path, "/v1/chat/completions") == 0, "path %s", r ? r->path : "");
    CHECK(r && strcmp(r->body, body) == 0, "request body differs");
    const char *auth = ts_request_header(r, "Authorization");
    CHECK(auth && strcmp(auth, "Bearer sk-test") == 0, "auth %s", auth ? auth : "(none)");
    const char *ct = ts_request_header(r, "Content-Type");
    CHECK(ct && strcmp(ct, "application/json") == 0, "content type %s", ct ? ct : "(none)");
    CHECK(ts_request_header(r, "Expect") == NULL, "client sent Expect");
    lt_free(resp);
    lt_llm_free(c);

    /* No key: no Authorization header at all. */
    lt_llm *anon = NULL;
    CHECK_OK(lt_llm_new(ts_url(s, "/v1"), NULL, NULL, &anon));
    one(anon, "/chat/completions", "{}", &resp, &status, &err);
    CHECK(status == 200 && !err, "anonymous request failed: %s", err ? err : "");
    CHECK(ts_request_header(ts_last_request(s), "Authorization") == NULL, "sent an Authorization header");
    lt_free(resp);
    lt_llm_free(anon);
    ts_stop(s);
}

static void test_retries_then_success(void) {
    ts_server *s = ts_start();
    ts_route_add(s, (ts_route){.path = "/v1/completions", .status = 429, .times = 1, .body = "slow down"});
    ts_route_add(s, (ts_route){.path = "/v1/completions", .status = 500, .times = 1, .body = "oops"});
    ts_route_add(s, (ts_route){.path = "/v1/completions", .status = 503, .times = 1});
    ts_route_add(s, (ts_route){.path = "/v1/completions", .body = "{\"choices\":[]}"});
    lt_llm *c = client(ts_url(s, "/v1"), 5, 5, 1);
    char *resp, *err;
    int status;
    one(c, "/completions", "{\"prompt\":\"x\"}", &resp, &status, &err);
    CHECK(status == 200 && err == NULL, "status %d error %s", status, err ? err : "");
    CHECK(ts_request_count(s) == 4, "%d requests, expected 4 (429, 500, 503, 200)", ts_request_count(s));
    for (int i = 0; i < ts_request_count(s); i++)
        CHECK(strcmp(ts_request_get(s, i)->body, "{\"prompt\":\"x\"}") == 0, "retry %d changed the body", i);
    lt_free(resp);
    lt_llm_free(c);
    ts_stop(s);
}

static void test_retries_exhausted(void) {
    ts_server *s = ts_start();
    ts_route_add(s, (ts_route){.path = "/v1/completions", .status = 500, .body = "down"});
    lt_llm *c = client(ts_url(s, "/v1"), 5, 2, 1);
    char *resp, *err;
    int status;
    one(c, "/completions", "{}", &resp, &status, &err);
    CHECK(status == 500, "status %d", status);
    CHECK(err && strstr(err, "HTTP 500") && strstr(err, "after 3 attempts") && strstr(err, "down"),
          "error %s", err ? err : "(none)");
    CHECK(ts_request_count(s) == 3, "%d requests, expected 1 + 2 retries", ts_request_count(s));
    lt_free(resp);
    lt_free(err);
    lt_llm_free(c);
    ts_stop(s);
}

static void test_no_retry_on_4xx(void) {
    ts_server *s = ts_start();
    const char *why = "{\"error\":{\"message\":\"bad\nrequest\"}}";
    ts_route_add(s, (ts_route){.path = "/v1/a", .status = 400, .body = why});
    ts_route_add(s, (ts_route){.path = "/v1/b", .status = 404});
    lt_llm *c = client(ts_url(s, "/v1"), 5, 5, 1);
    char *resp, *err;
    int status;
    one(c, "/a", "{}", &resp, &status, &err);
    CHECK(status == 400, "status %d", status);
    CHECK(err && strstr(err, "HTTP 400") && strstr(err, "/v1/a") && strstr(err, "bad request"),
          "error %s", err ? err : "(none)");
    CHECK(resp && strcmp(resp, why) == 0, "error body not handed over");
    CHECK(ts_request_count(s) == 1, "400 was retried (%d requests)", ts_request_count(s));
    lt_free(resp);
    lt_free(err);
    one(c, "/b", "{}", &resp, &status, &err);
    CHECK(status == 404 && err && strstr(err, "HTTP 404"), "404: status %d", status);
    CHECK(ts_request_count(s) == 2, "404 was retried (%d requests)", ts_request_count(s));
    lt_free(resp);
    lt_free(err);
    lt_llm_free(c);
    ts_stop(s);
}

static void test_transport_errors(void) {
    ts_server *s = ts_start();
    ts_route_add(s, (ts_route){.path = "/v1/cut", .action = TS_TRUNCATE, .cut_at = 10, .body = OK_BODY});
    ts_route_add(s, (ts_route){.path = "/v1/hang", .action = TS_STALL});
    lt_llm *c = client(ts_url(s, "/v1"), 1, -1, 2);
    char *resp, *err;
    int status;
    one(c, "/cut", "{}", &resp, &status, &err);
    CHECK(status == 0 && resp == NULL, "truncated: status %d", status);
    CHECK(err && strstr(err, "truncated"), "truncated: error %s", err ? err : "(none)");
    lt_free(err);

    double t0 = now_s();
    one(c, "/hang", "{}", &resp, &status, &err);
    double dt = now_s() - t0;
    CHECK(err && strstr(err, "timed out after 1 s"), "stall: error %s", err ? err : "(none)");
    CHECK(dt > 0.9 && dt < 4, "timeout took %.2f s", dt);
    lt_free(err);
    lt_llm_free(c);

    /* Retries of a truncated body, then the final error says how many. */
    c = client(ts_url(s, "/v1"), 2, 1, 1);
    int before = ts_request_count(s);
    one(c, "/cut", "{}", &resp, &status, &err);
    CHECK(err && strstr(err, "after 2 attempts"), "error %s", err ? err : "(none)");
    CHECK(ts_request_count(s) - before == 2, "truncated body not retried once");
    lt_free(err);
    lt_llm_free(c);
    ts_stop(s);

    char base[64];
    snprintf(base, sizeof base, "http://127.0.0.1:%d/v1", ts_free_port());
    c = client(base, 2, 2, 1);
    one(c, "/completions", "{}", &resp, &status, &err);
    CHECK(status == 0 && err && strstr(err, "cannot connect") && strstr(err, "after 3 attempts"),
          "refused: error %s", err ? err : "(none)");
    lt_free(err);
    lt_llm_free(c);
}

/* A batch whose requests fail differently: each gets its own outcome. */
static void test_batch_errors_are_per_request(void) {
    ts_server *s = ts_start();
    ts_route_add(s, (ts_route){.path = "/v1/ok", .body = OK_BODY});
    ts_route_add(s, (ts_route){.path = "/v1/bad", .status = 400, .body = "no"});
    ts_route_add(s, (ts_route){.path = "/v1/cut", .action = TS_TRUNCATE, .cut_at = 3, .body = OK_BODY});
    lt_llm *c = client(ts_url(s, "/v1"), 5, -1, 3);
    const char *paths[5] = {"/ok", "/bad", "/cut", "/ok", "/ok"};
    const char *bodies[5] = {"{\"i\":0}", "{\"i\":1}", "{\"i\":2}", "{\"i\":3}", "{\"i\":4}"};
    char *resp[5], *err[5];
    int status[5];
    CHECK_OK(lt_llm_request_batch(c, 5, paths, bodies, resp, status, err));
    int expect[5] = {200, 400, 0, 200, 200};
    for (int i = 0; i < 5; i++) {
        CHECK(status[i] == expect[i], "request %d: status %d", i, status[i]);
        CHECK((err[i] == NULL) == (expect[i] == 200), "request %d: error %s", i, err[i] ? err[i] : "(none)");
        if (expect[i] == 200) CHECK(resp[i] && strcmp(resp[i], OK_BODY) == 0, "request %d: body", i);
        lt_free(resp[i]);
        lt_free(err[i]);
    }
    CHECK(ts_request_count(s) == 5, "%d requests", ts_request_count(s));
    lt_llm_free(c);
    ts_stop(s);
}

/* A server that answers every connection 150 ms after its request arrived,
 * serving all connections at once, and notes the most open at a time. */
typedef struct slow_server {
    int fd, port, stop[2], max_open, served;
    pthread_t thread;
} slow_server;

static void *slow_main(void *arg) {
    slow_server *s = arg;
    enum { MAXC = 32 };
    int fds[MAXC];
    double due[MAXC];
    int n = 0;
    for (;;) {
        struct pollfd p[MAXC + 2];
        p[0] = (struct pollfd){.fd = s->fd, .events = POLLIN};
        p[1] = (struct pollfd){.fd = s->stop[0], .events = POLLIN};
        for (int i = 0; i < n; i++) p[i + 2] = (struct pollfd){.fd = fds[i], .events = due[i] < 0 ? POLLIN : 0};
        if (poll(p, (nfds_t)n + 2, 10) < 0) continue;
        if (p[1].revents) break;
        if ((p[0].revents & POLLIN) && n < MAXC) {
            int fd = accept(s->fd, NULL, NULL);
            if (fd >= 0) {
                fds[n] = fd;
                due[n++] = -1;
                if (n > s->max_open) s->max_open = n;
            }
        }
        double t = now_s();
        for (int i = 0; i < n; i++) {
            if (due[i] < 0 && (p[i + 2].revents & (POLLIN | POLLHUP))) {
                char buf[8192];
                if (recv(fds[i], buf, sizeof buf, 0) > 0) due[i] = t + 0.15;  /* requests are small */
            } else if (due[i] >= 0 && t >= due[i]) {
                const char *r = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
                ts_send(fds[i], r, strlen(r));
                shutdown(fds[i], SHUT_WR);
                close(fds[i]);
                s->served++;
                fds[i] = fds[n - 1];
                due[i] = due[n - 1];
                n--;
                i--;
            }
        }
    }
    for (int i = 0; i < n; i++) close(fds[i]);
    return NULL;
}

static void test_concurrency_bound(void) {
    slow_server s = {0};
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    s.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s.fd < 0 || bind(s.fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(s.fd, 64) != 0 ||
        getsockname(s.fd, (struct sockaddr *)&a, &alen) != 0 || pipe(s.stop) != 0) {
        CHECK(0, "cannot start the slow server");
        return;
    }
    s.port = ntohs(a.sin_port);
    pthread_create(&s.thread, NULL, slow_main, &s);
    char base[64];
    snprintf(base, sizeof base, "http://127.0.0.1:%d", s.port);
    lt_llm *c = client(base, 5, -1, 3);
    enum { N = 9 };
    const char *paths[N], *bodies[N];
    char *resp[N], *err[N];
    int status[N];
    for (int i = 0; i < N; i++) { paths[i] = "/completions"; bodies[i] = "{}"; }
    double t0 = now_s();
    CHECK_OK(lt_llm_request_batch(c, N, paths, bodies, resp, status, err));
    double dt = now_s() - t0;
    for (int i = 0; i < N; i++) {
        CHECK(status[i] == 200 && !err[i], "request %d: %d %s", i, status[i], err[i] ? err[i] : "");
        lt_free(resp[i]);
        lt_free(err[i]);
    }
    if (write(s.stop[1], "x", 1) != 1) perror("stop");
    pthread_join(s.thread, NULL);
    close(s.fd);
    close(s.stop[0]);
    close(s.stop[1]);
    CHECK(s.max_open == 3, "at most %d connections open, expected exactly 3", s.max_open);
    CHECK(s.served == N, "served %d", s.served);
    /* 9 requests of 150 ms, 3 at a time: about 0.45 s, not 1.35 s. */
    CHECK(dt < 1.0, "batch took %.2f s", dt);
    lt_llm_free(c);
}

static void test_bad_arguments(void) {
    lt_llm *c = NULL;
    CHECK_FAILS(lt_llm_new("", NULL, NULL, &c), "base URL");
    CHECK_OK(lt_llm_new("http://127.0.0.1:1", NULL, NULL, &c));
    const char *paths[1] = {NULL}, *bodies[1] = {"{}"};
    char *resp[1], *err[1];
    int status[1];
    CHECK_FAILS(lt_llm_request_batch(c, 1, paths, bodies, resp, status, err), "no path");
    CHECK_OK(lt_llm_request_batch(c, 0, paths, bodies, resp, status, err));
    lt_llm_free(c);
    lt_llm_free(NULL);
}

int main(void) {
    test_sha256();
    test_success_and_headers();
    test_retries_then_success();
    test_retries_exhausted();
    test_no_retry_on_4xx();
    test_transport_errors();
    test_batch_errors_are_per_request();
    test_concurrency_bound();
    test_bad_arguments();
    return check_summary();
}
