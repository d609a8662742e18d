/*
 * test_server.h: a tiny scripted HTTP/1.1 server for the C tests.
 *
 * It listens on 127.0.0.1 on an ephemeral port and runs in one pthread of
 * the test program, handling one connection at a time (every response says
 * "Connection: close"). The test scripts its behaviour per path with
 * routes, and reads back the requests it received (method, path, headers,
 * body) to check what a client sent:
 *
 *   ts_server *s = ts_start();
 *   ts_route_add(s, (ts_route){.path = "/a.bin", .body = buf, .body_len = n});
 *   ts_route_add(s, (ts_route){.path = "/gone", .status = 404});
 *   ts_route_add(s, (ts_route){.path = "/busy", .status = 429, .headers = "Retry-After: 7\r\n"});
 *   ts_route_add(s, (ts_route){.path = "/old", .status = 302, .location = "/a.bin"});
 *   ts_route_add(s, (ts_route){.path = "/hang", .action = TS_STALL});
 *   ... client calls with ts_url(s, "/a.bin") ...
 *   const ts_request *r = ts_last_request(s);
 *   ts_request_header(r, "Authorization");
 *   ts_stop(s);
 *
 * Scripted sequences (e.g. an API that answers 429 once, then 200, or
 * successive JSON replies to POSTs): a route with .times = N serves N
 * requests and is then used up; the first route in insertion order that
 * matches and is not used up answers. A request no route matches gets 404.
 *
 * Route data (body, headers...) is borrowed: it must outlive the server.
 * Request bodies are read by Content-Length ("Expect: 100-continue" is
 * honoured); chunked request bodies are not supported.
 *
 * Every wait in the server also watches a stop pipe, so ts_stop returns
 * promptly even while a connection is stalled or a body is being trickled.
 */
#ifndef LANTERN_TEST_SERVER_H
#define LANTERN_TEST_SERVER_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

typedef enum ts_action {
    TS_SERVE = 0,  /* status line, headers, the whole body (trickled if .chunk/.delay_ms) */
    TS_STALL,      /* reads the request, answers nothing, holds the connection */
    TS_STALL_BODY, /* sends headers and .cut_at body bytes, then holds the connection */
    TS_TRUNCATE,   /* sends headers (full Content-Length) and .cut_at body bytes, then closes */
} ts_action;

typedef struct ts_route {
    const char *method;        /* "GET", "POST"...; NULL matches any */
    const char *path;          /* exact match on the request target, query included */
    ts_action action;
    int status;                /* 0 means 200 */
    const char *content_type;  /* NULL: application/octet-stream */
    const char *headers;       /* extra header lines, each ending in "\r\n" */
    const char *location;      /* adds "Location: ..." (for 3xx) */
    const void *body;          /* NULL with body_len 0: empty body */
    size_t body_len;           /* 0 with a body: strlen(body) */
    size_t cut_at;             /* TS_STALL_BODY, TS_TRUNCATE: body bytes sent */
    size_t chunk;              /* TS_SERVE: send the body in pieces of this size ... */
    int delay_ms;              /* ... with this pause before each piece */
    int times;                 /* serve this many requests, then used up; 0: forever */
} ts_route;

enum { TS_MAX_ROUTES = 64, TS_MAX_REQUESTS = 256, TS_MAX_HEADERS = 64 };

typedef struct ts_request {
    char method[16];
    char path[1024];
    int n_headers;
    char *header_name[TS_MAX_HEADERS];   /* point into raw */
    char *header_value[TS_MAX_HEADERS];
    char *raw;                           /* the request head, split in place */
    char *body;                          /* NUL-terminated (not counted in body_len) */
    size_t body_len;
} ts_request;

typedef struct ts_server {
    int listen_fd, port;
    int stop_pipe[2];
    pthread_t thread;
    pthread_mutex_t lock;                /* guards routes, uses and requests */
    ts_route routes[TS_MAX_ROUTES];
    int uses[TS_MAX_ROUTES];
    int n_routes;
    ts_request *requests[TS_MAX_REQUESTS];
    int n_requests;                      /* requests received, recorded or not */
} ts_server;

/* Waits until fd is readable. 1: readable, 0: timeout_ms passed (-1 waits
 * forever), -1: the server is stopping. */
static inline int ts_wait(ts_server *s, int fd, int timeout_ms) {
    struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = s->stop_pipe[0], .events = POLLIN}};
    for (;;) {
        int k = poll(p, 2, timeout_ms);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0 || p[1].revents) return -1;
        return k == 0 ? 0 : 1;
    }
}

/* Sends all of data; -1 when the client has gone (no SIGPIPE). */
static inline int ts_send(int fd, const void *data, size_t n) {
    const char *p = data;
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Holds a connection open until the client closes it or the server stops
 * (whatever the client sends meanwhile is discarded). */
static inline void ts_hold(ts_server *s, int fd) {
    char junk[4096];
    while (ts_wait(s, fd, -1) == 1) {
        ssize_t k = recv(fd, junk, sizeof junk, 0);
        if (k <= 0 && !(k < 0 && errno == EINTR)) return;
    }
}

/* Case-insensitive header lookup; NULL when absent. */
static inline const char *ts_request_header(const ts_request *r, const char *name) {
    if (!r) return NULL;
    for (int i = 0; i < r->n_headers; i++)
        if (strcasecmp(r->header_name[i], name) == 0) return r->header_value[i];
    return NULL;
}

static inline void ts_request_free(ts_request *r) {
    if (!r) return;
    free(r->raw);
    free(r->body);
    free(r);
}

/* Reads one request (head and Content-Length body). NULL when the client
 * closed, sent garbage, took over 10 s, or the server is stopping. */
static inline ts_request *ts_read_request(ts_server *s, int fd) {
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap + 1);
    ts_request *r = calloc(1, sizeof *r);
    if (!buf || !r) goto fail;
    char *end = NULL;
    while (!end) {
        if (n == cap || ts_wait(s, fd, 10000) != 1) goto fail;
        ssize_t k = recv(fd, buf + n, cap - n, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) goto fail;
        n += (size_t)k;
        buf[n] = '\0';
        end = strstr(buf, "\r\n\r\n");
    }
    size_t head_len = (size_t)(end - buf) + 4;
    size_t extra = n - head_len;  /* body bytes that came with the head */
    end[2] = '\0';                /* the head ends with its last "\r\n" */

    /* Request line: METHOD SP TARGET SP VERSION */
    char *line_end = strstr(buf, "\r\n");
    *line_end = '\0';
    if (sscanf(buf, "%15s %1023s", r->method, r->path) != 2) goto fail;
    for (char *line = line_end + 2; *line; ) {
        char *eol = strstr(line, "\r\n");
        if (!eol) break;
        *eol = '\0';
        char *colon = strchr(line, ':');
        if (colon && r->n_headers < TS_MAX_HEADERS) {
            *colon = '\0';
            char *v = colon + 1;
            while (*v == ' ' || *v == '\t') v++;
            r->header_name[r->n_headers] = line;
            r->header_value[r->n_headers] = v;
            r->n_headers++;
        }
        line = eol + 2;
    }

    const char *cl = ts_request_header(r, "Content-Length");
    size_t body_len = cl ? strtoull(cl, NULL, 10) : 0;
    if (body_len > ((size_t)64 << 20)) goto fail;  /* a test never posts that much */
    r->body = malloc(body_len + 1);
    if (!r->body) goto fail;
    size_t have = extra < body_len ? extra : body_len;
    memcpy(r->body, buf + head_len, have);
    const char *expect = ts_request_header(r, "Expect");
    if (have < body_len && expect && strcasecmp(expect, "100-continue") == 0) {
        const char *go = "HTTP/1.1 100 Continue\r\n\r\n";
        if (ts_send(fd, go, strlen(go)) != 0) goto fail;
    }
    while (have < body_len) {
        if (ts_wait(s, fd, 10000) != 1) goto fail;
        ssize_t k = recv(fd, r->body + have, body_len - have, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) goto fail;
        have += (size_t)k;
    }
    r->body[body_len] = '\0';
    r->body_len = body_len;
    r->raw = buf;
    return r;
fail:
    free(buf);
    if (r) { r->raw = NULL; ts_request_free(r); }
    return NULL;
}

static inline const char *ts_reason(int status) {
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 307: return "Temporary Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Status";
    }
}

/* Picks the route for a request and counts its use; the route is copied
 * so that the response is sent without holding the lock. */
static inline ts_route ts_match(ts_server *s, const ts_request *r) {
    ts_route none = {.status = 404, .content_type = "text/plain", .body = "no route\n"};
    pthread_mutex_lock(&s->lock);
    for (int i = 0; i < s->n_routes; i++) {
        ts_route *rt = &s->routes[i];
        if (rt->times > 0 && s->uses[i] >= rt->times) continue;
        if (rt->method && strcmp(rt->method, r->method) != 0) continue;
        if (strcmp(rt->path, r->path) != 0) continue;
        s->uses[i]++;
        none = *rt;
        break;
    }
    pthread_mutex_unlock(&s->lock);
    return none;
}

static inline void ts_respond(ts_server *s, int fd, ts_route rt) {
    if (rt.action == TS_STALL) { ts_hold(s, fd); return; }
    const char *body = rt.body ? rt.body : "";
    size_t len = rt.body_len ? rt.body_len : strlen(body);
    int status = rt.status ? rt.status : 200;
    char head[4096];
    int k = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s%s%s%s"
                     "Connection: close\r\n\r\n",
                     status, ts_reason(status),
                     rt.content_type ? rt.content_type : "application/octet-stream", len,
                     rt.location ? "Location: " : "", rt.location ? rt.location : "",
                     rt.location ? "\r\n" : "", rt.headers ? rt.headers : "");
    if (k < 0 || (size_t)k >= sizeof head) return;
    if (ts_send(fd, head, (size_t)k) != 0) return;
    if (rt.action == TS_STALL_BODY || rt.action == TS_TRUNCATE) {
        size_t cut = rt.cut_at < len ? rt.cut_at : len;
        if (ts_send(fd, body, cut) != 0) return;
        if (rt.action == TS_STALL_BODY) ts_hold(s, fd);
        return;
    }
    size_t chunk = rt.chunk ? rt.chunk : len;
    for (size_t off = 0; off < len; off += chunk) {
        /* The pause doubles as a stop check: ts_wait on the stop pipe only. */
        if (rt.delay_ms > 0 && ts_wait(s, s->stop_pipe[0], rt.delay_ms) != 0) return;
        size_t n = len - off < chunk ? len - off : chunk;
        if (ts_send(fd, body + off, n) != 0) return;
    }
}

static inline void *ts_main(void *arg) {
    ts_server *s = arg;
    while (ts_wait(s, s->listen_fd, -1) == 1) {
        int fd = accept(s->listen_fd, NULL, NULL);
        if (fd < 0) continue;
        ts_request *r = ts_read_request(s, fd);
        if (r) {
            ts_route rt = ts_match(s, r);
            pthread_mutex_lock(&s->lock);
            if (s->n_requests < TS_MAX_REQUESTS) s->requests[s->n_requests] = r;
            else ts_request_free(r);
            s->n_requests++;
            pthread_mutex_unlock(&s->lock);
            ts_respond(s, fd, rt);
        }
        /* Half-close first so the client reads everything we sent before
         * it sees the end of the stream. */
        shutdown(fd, SHUT_WR);
        close(fd);
    }
    return NULL;
}

/* Starts a server on 127.0.0.1 with an ephemeral port; NULL (with a message
 * on stderr) when a socket call fails. */
static inline ts_server *ts_start(void) {
    ts_server *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->listen_fd = -1;
    s->stop_pipe[0] = s->stop_pipe[1] = -1;
    pthread_mutex_init(&s->lock, NULL);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    if (pipe(s->stop_pipe) != 0 ||
        (s->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
        bind(s->listen_fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        listen(s->listen_fd, 16) != 0 ||
        getsockname(s->listen_fd, (struct sockaddr *)&a, &alen) != 0) {
        perror("test server");
        goto fail;
    }
    s->port = ntohs(a.sin_port);
    if (pthread_create(&s->thread, NULL, ts_main, s) != 0) {
        fprintf(stderr, "test server: pthread_create failed\n");
        goto fail;
    }
    return s;
fail:
    if (s->listen_fd >= 0) close(s->listen_fd);
    if (s->stop_pipe[0] >= 0) { close(s->stop_pipe[0]); close(s->stop_pipe[1]); }
    pthread_mutex_destroy(&s->lock);
    free(s);
    return NULL;
}

/* Stops the thread (even mid-stall), closes the sockets, frees everything,
 * including the recorded requests. Accepts NULL. */
static inline void ts_stop(ts_server *s) {
    if (!s) return;
    if (write(s->stop_pipe[1], "x", 1) != 1) perror("test server stop");
    pthread_join(s->thread, NULL);
    close(s->listen_fd);
    close(s->stop_pipe[0]);
    close(s->stop_pipe[1]);
    int n = s->n_requests < TS_MAX_REQUESTS ? s->n_requests : TS_MAX_REQUESTS;
    for (int i = 0; i < n; i++) ts_request_free(s->requests[i]);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* Adds a route (copied; the data it points to is borrowed). 0, or -1 when
 * the table is full. */
static inline int ts_route_add(ts_server *s, ts_route r) {
    pthread_mutex_lock(&s->lock);
    int ok = s->n_routes < TS_MAX_ROUTES;
    if (ok) { s->uses[s->n_routes] = 0; s->routes[s->n_routes++] = r; }
    pthread_mutex_unlock(&s->lock);
    if (!ok) fprintf(stderr, "test server: too many routes\n");
    return ok ? 0 : -1;
}

/* "http://127.0.0.1:PORT" + path, in one of 8 rotating static buffers. */
static inline const char *ts_url(const ts_server *s, const char *path) {
    static char buf[8][1200];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "http://127.0.0.1:%d%s", s->port, path);
    return buf[k];
}

/* Requests received so far (including any beyond TS_MAX_REQUESTS, which
 * are counted but not kept). */
static inline int ts_request_count(ts_server *s) {
    pthread_mutex_lock(&s->lock);
    int n = s->n_requests;
    pthread_mutex_unlock(&s->lock);
    return n;
}

/* Request i (0 = first), NULL when out of range or not kept. Recorded
 * requests are never modified, so the pointer stays valid until ts_stop. */
static inline const ts_request *ts_request_get(ts_server *s, int i) {
    pthread_mutex_lock(&s->lock);
    const ts_request *r = i >= 0 && i < s->n_requests && i < TS_MAX_REQUESTS ? s->requests[i] : NULL;
    pthread_mutex_unlock(&s->lock);
    return r;
}

static inline const ts_request *ts_last_request(ts_server *s) {
    return ts_request_get(s, ts_request_count(s) - 1);
}

/* A port on 127.0.0.1 with nothing listening (bound, then released), for
 * connection-refused tests; 0 on failure. */
static inline int ts_free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return 0;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    int port = 0;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &alen) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

#endif
