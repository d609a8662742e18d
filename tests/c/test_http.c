/*
 * test_http.c: lt_http_download against the scripted local server of
 * test_server.h: whole files, HTTP errors, stalls, truncation, redirects,
 * the bearer token, refused connections and full disks, each checking that
 * no file is left behind on failure.
 */
#include "check.h"
#include "test_server.h"

#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>

static char dir[256];
static ts_server *srv;
static unsigned char *big;
enum { BIG = 1 << 20 };

static const char *tmp(const char *name) {
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* Neither path nor path.part is on disk. */
static int no_files(const char *path) {
    char part[600];
    snprintf(part, sizeof part, "%s.part", path);
    return !exists(path) && !exists(part);
}

/* 1 when the file at path holds exactly data[0..n). */
static int same_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    unsigned char *got = malloc(n + 1);
    size_t len = got ? fread(got, 1, n + 1, f) : 0;
    fclose(f);
    int same = got && len == n && memcmp(got, data, n) == 0;
    free(got);
    return same;
}

static void test_whole_file(void) {
    const char *path = tmp("big.bin");
    CHECK_OK(lt_http_download(ts_url(srv, "/big.bin"), path, NULL, 5, 0));
    CHECK(same_bytes(path, big, BIG), "1 MB download differs");
    CHECK(!exists(tmp("big.bin.part")), ".part left after success");
    unlink(path);
}

static void test_stale_part_replaced(void) {
    const char *path = tmp("stale.bin");
    FILE *f = fopen(tmp("stale.bin.part"), "wb");
    fputs("left over from a crash, longer than the real file ......................", f);
    fclose(f);
    CHECK_OK(lt_http_download(ts_url(srv, "/small.txt"), path, NULL, 5, 0));
    CHECK(same_bytes(path, "hello\n", 6), "stale .part content leaked into the download");
    unlink(path);
}

static void test_http_errors(void) {
    const char *path = tmp("err.bin");
    CHECK_FAILS(lt_http_download(ts_url(srv, "/missing"), path, NULL, 5, 0), "HTTP 404");
    CHECK(strstr(lt_last_error(), "/missing") != NULL, "404 error lacks the URL: %s", lt_last_error());
    CHECK(no_files(path), "404 left a file");
    CHECK_FAILS(lt_http_download(ts_url(srv, "/broken"), path, NULL, 5, 0), "HTTP 500");
    CHECK(no_files(path), "500 left a file");
    CHECK_FAILS(lt_http_download(ts_url(srv, "/busy"), path, NULL, 5, 0), "HTTP 429");
    CHECK(strstr(lt_last_error(), "retry after 7 s") != NULL, "429 error lacks Retry-After: %s", lt_last_error());
    CHECK(no_files(path), "429 left a file");
    CHECK_FAILS(lt_http_download(ts_url(srv, "/private"), path, NULL, 5, 0), "HF_TOKEN");
    CHECK(no_files(path), "401 left a file");
    CHECK_FAILS(lt_http_download(ts_url(srv, "/empty404"), path, NULL, 5, 0), "HTTP 404");
    CHECK(no_files(path), "empty 404 left a file");
}

static void test_timeouts(void) {
    const char *path = tmp("stall.bin");
    CHECK_FAILS(lt_http_download(ts_url(srv, "/stall"), path, NULL, 1, 0), "timed out");
    CHECK(no_files(path), "stall before headers left a file");
    CHECK_FAILS(lt_http_download(ts_url(srv, "/stall-body"), path, NULL, 1, 0), "timed out");
    CHECK(no_files(path), "stall mid-body left a file");
}

/* A body that keeps coming, only slowly, is not a timeout: 1.6 s in all
 * with timeout_s = 1, but never a second without data. */
static void test_slow_body(void) {
    const char *path = tmp("slow.bin");
    CHECK_OK(lt_http_download(ts_url(srv, "/slow"), path, NULL, 1, 0));
    CHECK(same_bytes(path, big, BIG), "slow download differs");
    unlink(path);
}

static void test_truncated(void) {
    const char *path = tmp("cut.bin");
    CHECK_FAILS(lt_http_download(ts_url(srv, "/cut"), path, NULL, 5, 0), "incomplete");
    CHECK(no_files(path), "truncated body left a file");
}

static void test_redirect(void) {
    const char *path = tmp("moved.bin");
    CHECK_OK(lt_http_download(ts_url(srv, "/moved"), path, NULL, 5, 0));
    CHECK(same_bytes(path, big, BIG), "redirected download differs");
    const ts_request *r = ts_last_request(srv);
    CHECK(r && strcmp(r->path, "/big.bin") == 0, "redirect not followed to /big.bin");
    unlink(path);
}

static void test_token(void) {
    const char *path = tmp("auth.txt");
    CHECK_OK(lt_http_download(ts_url(srv, "/small.txt"), path, "hf_secret123", 5, 0));
    const char *auth = ts_request_header(ts_last_request(srv), "Authorization");
    CHECK(auth && strcmp(auth, "Bearer hf_secret123") == 0, "Authorization was '%s'", auth ? auth : "(none)");
    unlink(path);
    CHECK_OK(lt_http_download(ts_url(srv, "/small.txt"), path, NULL, 5, 0));
    CHECK(ts_request_header(ts_last_request(srv), "Authorization") == NULL, "Authorization sent without a token");
    unlink(path);
}

static void test_refused(void) {
    const char *path = tmp("refused.bin");
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/x", ts_free_port());
    CHECK_FAILS(lt_http_download(url, path, NULL, 2, 0), "cannot connect");
    CHECK(strstr(lt_last_error(), url) != NULL, "refused error lacks the URL: %s", lt_last_error());
    CHECK(no_files(path), "refused connection left a file");
}

static void test_bad_directory(void) {
    const char *path = tmp("no/such/dir/f.bin");
    CHECK_FAILS(lt_http_download(ts_url(srv, "/small.txt"), path, NULL, 5, 0), "cannot create");
    CHECK(strstr(lt_last_error(), "no/such/dir/f.bin.part") != NULL, "error lacks the path: %s", lt_last_error());
}

/* Routes with .times answer in sequence: a 429 once, then the file. */
static void test_sequence(void) {
    const char *path = tmp("flaky.txt");
    CHECK_FAILS(lt_http_download(ts_url(srv, "/flaky"), path, NULL, 5, 0), "HTTP 429");
    CHECK_OK(lt_http_download(ts_url(srv, "/flaky"), path, NULL, 5, 0));
    CHECK(same_bytes(path, "hello\n", 6), "second answer of /flaky differs");
    unlink(path);
}

/* Sends a raw request to the test server and returns its whole answer
 * (caller frees), for the server features the downloader does not use. */
static char *raw_request(const char *request) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)srv->port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    char *out = calloc(1, 65536);
    size_t n = 0;
    if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        ts_send(fd, request, strlen(request)) == 0) {
        ssize_t k;
        while (n < 65535 && (k = recv(fd, out + n, 65535 - n, 0)) > 0) n += (size_t)k;
    }
    if (fd >= 0) close(fd);
    return out;
}

/* What the server offers beyond downloads (for API client tests later):
 * method matching, scripted replies in turn, recorded POST bodies. */
static void test_server_posts(void) {
    int before = ts_request_count(srv);
    char *r1 = raw_request("POST /v1/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           "Content-Length: 14\r\n\r\n{\"prompt\":\"a\"}");
    char *r2 = raw_request("POST /v1/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}");
    char *r3 = raw_request("GET /v1/chat HTTP/1.1\r\nHost: x\r\n\r\n");
    CHECK(strstr(r1, "200 OK") && strstr(r1, "\r\n\r\n{\"answer\":1}"), "first reply: %s", r1);
    CHECK(strstr(r2, "200 OK") && strstr(r2, "\r\n\r\n{\"answer\":2}"), "second reply: %s", r2);
    CHECK(strstr(r3, "404 Not Found") != NULL, "GET matched a POST route: %s", r3);
    CHECK(ts_request_count(srv) == before + 3, "requests recorded: %d", ts_request_count(srv) - before);
    const ts_request *q = ts_request_get(srv, before);
    CHECK(q && strcmp(q->method, "POST") == 0 && q->body_len == 14 && strcmp(q->body, "{\"prompt\":\"a\"}") == 0,
          "first POST body not recorded");
    const char *ct = ts_request_header(q, "content-type");
    CHECK(ct && strcmp(ct, "application/json") == 0, "header lookup gave %s", ct ? ct : "(none)");
    free(r1);
    free(r2);
    free(r3);
}

/* A file size limit makes write() fail with EFBIG, as a full disk fails
 * with ENOSPC. It is set in a forked child so the test program itself keeps
 * no limit; SIGXFSZ is ignored so the write fails instead of killing it.
 * The child reports through its exit status. */
static void test_file_size_limit(void) {
    const char *path = tmp("limited.bin");
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {.rlim_cur = 64 * 1024, .rlim_max = 64 * 1024};
        setrlimit(RLIMIT_FSIZE, &rl);
        int rc = lt_http_download(ts_url(srv, "/big.bin"), path, NULL, 5, 0);
        int ok = rc != LT_OK && strstr(lt_last_error(), "cannot write") &&
                 strstr(lt_last_error(), "limited.bin.part") && strstr(lt_last_error(), "disk full") &&
                 no_files(path);
        if (!ok) fprintf(stderr, "file size limit: rc %d, error '%s'\n", rc, lt_last_error());
        _exit(ok ? 0 : 1);
    }
    int status = 0;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "child under RLIMIT_FSIZE failed (status %d)", status);
    CHECK(no_files(path), "file size limit left a file");
}

/* A real ENOSPC: the .part name is a symlink to /dev/full, whose writes
 * always fail with "No space left on device". */
static void test_disk_full(void) {
    const char *path = tmp("full.bin");
    if (symlink("/dev/full", tmp("full.bin.part")) != 0) {
        CHECK(0, "cannot make the /dev/full symlink");
        return;
    }
    CHECK_FAILS(lt_http_download(ts_url(srv, "/big.bin"), path, NULL, 5, 0), "No space left on device");
    CHECK(strstr(lt_last_error(), "full.bin.part") != NULL, "error lacks the path: %s", lt_last_error());
    CHECK(no_files(path), "disk full left a file (or the symlink)");
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/lantern_http_XXXXXX");
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
    big = malloc(BIG);
    uint32_t x = 12345;
    for (int i = 0; i < BIG; i++) { x = x * 1664525u + 1013904223u; big[i] = (unsigned char)(x >> 24); }

    srv = ts_start();
    if (!srv) return 1;
    ts_route_add(srv, (ts_route){.path = "/big.bin", .body = big, .body_len = BIG});
    ts_route_add(srv, (ts_route){.path = "/small.txt", .body = "hello\n", .content_type = "text/plain"});
    ts_route_add(srv, (ts_route){.path = "/missing", .status = 404, .body = "Entry not found"});
    ts_route_add(srv, (ts_route){.path = "/empty404", .status = 404});
    ts_route_add(srv, (ts_route){.path = "/broken", .status = 500, .body = "oops"});
    ts_route_add(srv, (ts_route){.path = "/busy", .status = 429, .headers = "Retry-After: 7\r\n"});
    ts_route_add(srv, (ts_route){.path = "/private", .status = 401, .body = "Invalid credentials"});
    ts_route_add(srv, (ts_route){.path = "/stall", .action = TS_STALL});
    ts_route_add(srv, (ts_route){.path = "/stall-body", .action = TS_STALL_BODY, .body = big,
                                 .body_len = BIG, .cut_at = 1000});
    ts_route_add(srv, (ts_route){.path = "/cut", .action = TS_TRUNCATE, .body = big,
                                 .body_len = BIG, .cut_at = BIG / 2});
    ts_route_add(srv, (ts_route){.path = "/slow", .body = big, .body_len = BIG,
                                 .chunk = BIG / 16, .delay_ms = 100});
    ts_route_add(srv, (ts_route){.path = "/moved", .status = 302, .location = "/big.bin"});
    ts_route_add(srv, (ts_route){.path = "/flaky", .status = 429, .times = 1});
    ts_route_add(srv, (ts_route){.path = "/flaky", .body = "hello\n"});
    ts_route_add(srv, (ts_route){.method = "POST", .path = "/v1/chat", .times = 1,
                                 .content_type = "application/json", .body = "{\"answer\":1}"});
    ts_route_add(srv, (ts_route){.method = "POST", .path = "/v1/chat", .times = 1,
                                 .content_type = "application/json", .body = "{\"answer\":2}"});

    test_whole_file();
    test_stale_part_replaced();
    test_http_errors();
    test_timeouts();
    test_slow_body();
    test_truncated();
    test_redirect();
    test_token();
    test_refused();
    test_sequence();
    test_server_posts();
    test_bad_directory();
    test_file_size_limit();
    test_disk_full();

    ts_stop(srv);
    free(big);
    rmdir(dir);
    CHECK(!exists(dir), "files left in %s", dir);
    return check_summary();
}
