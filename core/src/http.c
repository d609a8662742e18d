/*
 * http.c: downloads over HTTP(S) with libcurl, for fetching model files from
 * the Hugging Face hub.
 *
 * A download goes to PATH.part and is renamed to PATH only once it is
 * complete and flushed, so an interrupted or failed download never leaves a
 * file under the final name that later code would take for a whole model.
 */
#include "internal.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* No-progress timeout used when the caller passes timeout_s <= 0. */
enum { DEFAULT_TIMEOUT_S = 60 };

/* curl_global_init is not thread-safe and must run once per process. */
static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_status;

static void curl_init(void) { curl_init_status = curl_global_init(CURL_GLOBAL_DEFAULT); }

/* The state of one download, shared with curl's callbacks. */
typedef struct download {
    CURL *curl;
    const char *path;       /* final name, for messages */
    const char *part;       /* the file being written */
    int fd;
    curl_off_t written;
    int write_errno;        /* errno of a failed write, 0 otherwise */
    long http_status;       /* >= 400 when an error status stopped the transfer */
    /* stall detection */
    int timeout_s;
    curl_off_t seen;        /* bytes received at the last check */
    double last_change;     /* when seen last grew */
    int stalled;
    /* progress bar */
    int progress;
    const char *label;
    double start, last_draw;
    int drawn;
} download;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* curl's write callback: appends to the .part file. Returning less than
 * asked makes curl stop with CURLE_WRITE_ERROR; we note why first. */
static size_t on_data(char *data, size_t size, size_t nmemb, void *arg) {
    download *d = arg;
    size_t n = size * nmemb;
    /* An error status (404...) has a body we do not want in the file: stop
     * at once and report the status instead of a write error. */
    long status = 0;
    curl_easy_getinfo(d->curl, CURLINFO_RESPONSE_CODE, &status);
    if (status >= 400) { d->http_status = status; return 0; }
    size_t done = 0;
    while (done < n) {
        ssize_t k = write(d->fd, data + done, n - done);
        if (k < 0) {
            if (errno == EINTR) continue;
            d->write_errno = errno;
            return 0;
        }
        done += (size_t)k;
    }
    d->written += (curl_off_t)n;
    return n;
}

static void draw_bar(download *d, curl_off_t now, curl_off_t total, int final) {
    double t = now_s();
    if (!final && d->drawn && t - d->last_draw < 0.1) return;
    d->last_draw = t;
    d->drawn = 1;
    double elapsed = t - d->start;
    double mb = (double)now / 1e6;
    double rate = elapsed > 0 ? mb / elapsed : 0;
    if (total > 0) {
        fprintf(stderr, "\r%-24.24s %9.1f / %.1f MB %3d%% %7.1f MB/s", d->label, mb,
                (double)total / 1e6, (int)(100.0 * (double)now / (double)total), rate);
    } else {
        fprintf(stderr, "\r%-24.24s %9.1f MB %7.1f MB/s", d->label, mb, rate);
    }
    if (final) fputc('\n', stderr);
    fflush(stderr);
}

/* curl's progress callback, called at least once a second even when no
 * data flows. It aborts a transfer that received nothing for timeout_s
 * seconds: curl's own low-speed check averages the speed over several
 * seconds, so after a burst it notices a stall only seconds late. */
static int on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow) {
    (void)ultotal; (void)ulnow;
    download *d = arg;
    double t = now_s();
    if (dlnow != d->seen) {
        d->seen = dlnow;
        d->last_change = t;
    } else if (t - d->last_change >= d->timeout_s) {
        d->stalled = 1;
        return 1;
    }
    if (d->progress && dlnow > 0) draw_bar(d, dlnow, dltotal, 0);
    return 0;
}

/* Sets this thread's error from a finished transfer's outcome. */
static int fail_transfer(download *d, const char *url, CURLcode rc, const char *errbuf,
                         int timeout_s) {
    if (d->http_status >= 400 || rc == CURLE_OK) {
        long status = d->http_status;
        if (status < 400) curl_easy_getinfo(d->curl, CURLINFO_RESPONSE_CODE, &status);
        if (status == 401 || status == 403)
            return lt_fail("HTTP %ld for %s (private or gated repository? set HF_TOKEN)", status, url);
        if (status == 429) {
            curl_off_t wait = -1;
            if (curl_easy_getinfo(d->curl, CURLINFO_RETRY_AFTER, &wait) == CURLE_OK && wait > 0)
                return lt_fail("HTTP 429 (rate limited, retry after %ld s) for %s", (long)wait, url);
            return lt_fail("HTTP 429 (rate limited) for %s", url);
        }
        return lt_fail("HTTP %ld for %s", status, url);
    }
    if (d->write_errno)
        return lt_fail("cannot write %s: %s%s (downloading %s)", d->part, strerror(d->write_errno),
                       d->write_errno == ENOSPC || d->write_errno == EFBIG || d->write_errno == EDQUOT
                           ? " (disk full?)" : "",
                       url);
    if (d->stalled) return lt_fail("timed out: no data for %d s from %s", timeout_s, url);
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
        return lt_fail("timed out: no data for %d s from %s (%s)", timeout_s, url, errbuf);
    case CURLE_PARTIAL_FILE:
        return lt_fail("incomplete download of %s: connection closed after %ld bytes (%s)", url,
                       (long)d->written, errbuf);
    case CURLE_COULDNT_CONNECT:
        return lt_fail("cannot connect to %s: %s", url, errbuf);
    case CURLE_COULDNT_RESOLVE_HOST:
        return lt_fail("cannot resolve host of %s: %s", url, errbuf);
    default:
        return lt_fail("download of %s failed: %s", url, errbuf[0] ? errbuf : curl_easy_strerror(rc));
    }
}

static const char *base_name(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* Runs the transfer into d->fd; LT_OK when the whole body arrived. */
static int transfer(download *d, const char *url, const char *token, int timeout_s) {
    char errbuf[CURL_ERROR_SIZE] = "";
    char auth[1024];
    struct curl_slist *headers = NULL;
    CURL *c = curl_easy_init();
    if (!c) return lt_fail("curl_easy_init failed for %s", url);
    d->curl = c;

    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "lantern/0.1");
    /* NOSIGNAL: no SIGALRM-based timeouts, which are unsafe with threads. */
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    /* The hub answers with redirects (renamed repos, LFS storage). curl
     * drops our Authorization header when a redirect leaves the host, so
     * the token is not sent to the storage servers. */
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, (long)timeout_s);
    /* A stall rather than a total time: a 6 GB file may legitimately take
     * an hour, but no byte for timeout_s seconds means a dead transfer.
     * on_progress enforces this precisely; curl's check is a backstop. */
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, (long)timeout_s);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, d);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, d);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    if (token && token[0]) {
        int k = snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
        if (k < 0 || (size_t)k >= sizeof auth) {
            curl_easy_cleanup(c);
            return lt_fail("token too long (%zu bytes) for %s", strlen(token), url);
        }
        headers = curl_slist_append(NULL, auth);
        if (!headers) {
            curl_easy_cleanup(c);
            return lt_fail("out of memory downloading %s", url);
        }
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    }

    CURLcode rc = curl_easy_perform(c);
    int status = LT_OK;
    if (rc != CURLE_OK || d->http_status >= 400) {
        status = fail_transfer(d, url, rc, errbuf, timeout_s);
    } else {
        long code = 0;
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
        /* An empty error body never reaches on_data, so check again. */
        if (code >= 400) status = fail_transfer(d, url, rc, errbuf, timeout_s);
    }
    if (d->progress && d->drawn) draw_bar(d, d->written, d->written, 1);

    curl_slist_free_all(headers);
    curl_easy_cleanup(c);
    d->curl = NULL;
    return status;
}

/* The contract is in lantern.h. Also: timeout_s <= 0 means 60 s, an empty
 * token is no token, and a stale PATH.part from an earlier run is replaced. */
int lt_http_download(const char *url, const char *path, const char *token, int timeout_s,
                     int progress) {
    if (!url || !path) return lt_fail("lt_http_download: url and path are required");
    if (timeout_s <= 0) timeout_s = DEFAULT_TIMEOUT_S;
    pthread_once(&curl_once, curl_init);
    if (curl_init_status != CURLE_OK)
        return lt_fail("curl_global_init failed: %s", curl_easy_strerror(curl_init_status));

    char part[4096];
    int k = snprintf(part, sizeof part, "%s.part", path);
    if (k < 0 || (size_t)k >= sizeof part) return lt_fail("path too long: %s", path);

    download d = {.path = path, .part = part, .progress = progress, .label = base_name(path),
                  .start = now_s(), .timeout_s = timeout_s};
    d.last_change = d.start;
    /* O_TRUNC: a .part left by an earlier crash is stale, never resumed. */
    d.fd = open(part, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (d.fd < 0) return lt_fail("cannot create %s: %s", part, strerror(errno));

    int status = transfer(&d, url, token, timeout_s);
    /* fsync before rename: after a power loss the final name must not point
     * at a file whose data never reached the disk. */
    if (status == LT_OK && fsync(d.fd) != 0)
        status = lt_fail("cannot write %s: %s (downloading %s)", part, strerror(errno), url);
    if (close(d.fd) != 0 && status == LT_OK)
        status = lt_fail("cannot write %s: %s (downloading %s)", part, strerror(errno), url);
    if (status == LT_OK && rename(part, path) != 0)
        status = lt_fail("cannot rename %s to %s: %s", part, path, strerror(errno));
    if (status != LT_OK) unlink(part);
    return status;
}
