/*
 * events.c - what CI clients wait on: GET /v1/jobs/{id}?wait=SECONDS,
 * the Server-Sent Events stream GET /v1/jobs/{id}/events, and the check
 * of a spec's notify.url (the webhook itself is daemon/webhook.c's).
 *
 * Change notices: the store calls api_watch's listener whenever a jobs
 * row changes (SQLite's update hook, storage/store.c; on a PostgreSQL
 * database other daemons share, a poll every SHARED_POLL_SECONDS as
 * well, since their writes call no hook here); the listener
 * bumps a generation counter and broadcasts a condition variable.  A
 * waiter remembers the generation it saw, re-reads its job, and sleeps
 * until the generation moves, its time is up, or the server stops.  One
 * counter for all jobs, not one per job: a change wakes every waiter to
 * re-read one row (a few microseconds each), which at the runner's 4
 * progress writes a second is nothing, and it needs no registry of who
 * waits for what.
 *
 * Threads: the server runs libmicrohttpd with a thread per connection
 * (api.h says why), so a connection has its thread from accept to close,
 * whether it waits or not; a waiter blocks that thread on the condition
 * variable and costs nothing more (no thread of its own, no polling of
 * the database).  libmicrohttpd's suspend/resume would not free it: in
 * this mode a suspended connection keeps its thread.  What bounds
 * waiters is what bounds connections: --max-conns and
 * --max-conns-per-ip.  A waiter looks at its socket once a second
 * (recv with MSG_PEEK), so a client that hangs up frees its connection
 * within a second, and api_watch_stop wakes every waiter at shutdown
 * (the server's stop waits for its connections).
 *
 * The event stream is a response whose content reader (on the same
 * connection thread) blocks for the next change: an event per change of
 * state, stage or progress (progress at most every 250 ms), each with an
 * ETA from the progress rate since the job started, a comment after
 * 15 s without an event (or half of --conn-timeout, when that is
 * shorter: libmicrohttpd closes a connection silent for that long) to
 * keep it and proxies from closing it, and the job's final JSON in an
 * `end` event, after which the stream ends.  Nothing of a job's history
 * is kept, so a reconnecting client (Last-Event-ID) gets the current
 * state first, with ids that continue from the one it gave.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <curl/curl.h>
#include "api/api.h"

#define WAIT_MAX_SECONDS 300
#define SSE_KEEPALIVE_SECONDS 15.0
#define SSE_PROGRESS_EVERY 0.25

struct api_watch {
    pthread_mutex_t lock;
    pthread_cond_t cond;       /* CLOCK_MONOTONIC */
    uint64_t gen;              /* bumped on every jobs row change */
    int stop;
    int active;                /* waiters and event streams not yet done */
    int shared;                /* PostgreSQL: other daemons change rows too */
    struct store *st;
};

/* On a database other daemons share (store_is_shared), the update hook
 * sees only this daemon's writes: a job another node runs changes
 * unseen, so waiters re-read their row this often instead (one indexed
 * SELECT per waiter and period). */
#define SHARED_POLL_SECONDS 0.25

static double mono_now(void);

static void on_jobs_changed(void *ud)
{
    struct api_watch *w = ud;
    pthread_mutex_lock(&w->lock);
    w->gen++;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

int api_watch_new(struct store *st, struct api_watch **out, struct slim_error *err)
{
    struct api_watch *w = slim_calloc(1, sizeof *w);
    pthread_condattr_t ca;
    if (!w)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    pthread_mutex_init(&w->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cond, &ca);
    pthread_condattr_destroy(&ca);
    w->st = st;
    w->shared = store_is_shared(st);
    if (store_job_listen(st, on_jobs_changed, w, 1)) {
        api_watch_free(w);
        return slim_error_set(err, SLIM_ENOMEM, "too many job listeners");
    }
    *out = w;
    return 0;
}

int api_watch_stop(struct api_watch *w)
{
    struct timespec ts;
    double until = mono_now() + 2.0;
    int had;
    if (!w)
        return 0;
    pthread_mutex_lock(&w->lock);
    w->stop = 1;
    had = w->active;
    pthread_cond_broadcast(&w->cond);
    /* their answers go out before libmicrohttpd closes the connections:
     * a waiter gets the job as it is, a stream its last chunk */
    while (w->active > 0 && mono_now() < until) {
        double t = mono_now() + 0.05;
        ts.tv_sec = (time_t)t;
        ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
        pthread_cond_timedwait(&w->cond, &w->lock, &ts);
    }
    pthread_mutex_unlock(&w->lock);
    return had;
}

/* A waiter or stream begins (+1) or is done (-1). */
static void active_add(struct api_watch *w, int d)
{
    pthread_mutex_lock(&w->lock);
    w->active += d;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

void api_watch_free(struct api_watch *w)
{
    if (!w)
        return;
    store_job_listen(w->st, on_jobs_changed, w, 0);
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->lock);
    slim_free(w);
}

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t watch_gen(struct api_watch *w)
{
    uint64_t g;
    pthread_mutex_lock(&w->lock);
    g = w->gen;
    pthread_mutex_unlock(&w->lock);
    return g;
}

/* 1 when the client closed its end of fd (a read would return 0). */
static int client_gone(int fd)
{
    char c;
    ssize_t n;
    if (fd < 0)
        return 0;
    n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

enum { WAIT_CHANGED, WAIT_TIMEOUT, WAIT_GONE };

/* Sleeps until the generation differs from *seen (WAIT_CHANGED, *seen
 * updated), the monotonic deadline passes (WAIT_TIMEOUT), or the server
 * stops or the client hangs up (WAIT_GONE). */
static int wait_change(struct api_watch *w, uint64_t *seen, double deadline, int fd)
{
    int r = WAIT_TIMEOUT;
    for (;;) {
        double now = mono_now(), until;
        struct timespec ts;
        pthread_mutex_lock(&w->lock);
        if (w->stop) {
            pthread_mutex_unlock(&w->lock);
            return WAIT_GONE;
        }
        if (w->gen != *seen) {
            *seen = w->gen;
            pthread_mutex_unlock(&w->lock);
            return WAIT_CHANGED;
        }
        if (now >= deadline) {
            pthread_mutex_unlock(&w->lock);
            return r;
        }
        until = deadline < now + 1.0 ? deadline : now + 1.0;
        if (w->shared && until > now + SHARED_POLL_SECONDS)
            until = now + SHARED_POLL_SECONDS;
        ts.tv_sec = (time_t)until;
        ts.tv_nsec = (long)((until - (double)ts.tv_sec) * 1e9);
        pthread_cond_timedwait(&w->cond, &w->lock, &ts);
        pthread_mutex_unlock(&w->lock);
        if (client_gone(fd))
            return WAIT_GONE;
        /* shared: another node may have changed the row (re-read it) */
        if (w->shared && mono_now() < deadline)
            return WAIT_CHANGED;
    }
}

static int conn_fd(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? ci->connect_fd : -1;
}

static int finished(json_t *row)
{
    const char *s = json_string_value(json_object_get(row, "state"));
    return s && (!strcmp(s, "succeeded") || !strcmp(s, "failed") || !strcmp(s, "canceled"));
}

/* A job with a webhook shows where its delivery stands (row borrowed);
 * returns 1. */
static int with_notify(struct api_ctx *ctx, const char *id, json_t *row)
{
    struct slim_error err;
    json_t *wh;
    if (json_object_get(json_object_get(row, "spec"), "notify") &&
        !store_webhook_get(ctx->st, id, &wh, &err))
        json_object_set_new(row, "notify", wh);
    return 1;
}

int api_jobs_wait(struct api_ctx *ctx, struct MHD_Connection *conn, struct api_request *req,
                  const char *id, json_t **row, enum MHD_Result *ret)
{
    const char *v = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "wait");
    struct api_watch *w = ctx->watch;
    struct slim_error err;
    double secs, deadline;
    uint64_t seen;
    char *end = NULL;
    int fd;

    if (!v)
        return with_notify(ctx, id, *row);
    errno = 0;
    secs = strtod(v, &end);
    if (!*v || *end || errno || !(secs >= 0 && secs <= WAIT_MAX_SECONDS)) {
        *ret = api_reply_error(conn, req, SLIM_EINVAL, "wait: expected a number of seconds "
                               "from 0 to %d, got '%.40s'", WAIT_MAX_SECONDS, v);
        return 0;
    }
    if (!w)
        return with_notify(ctx, id, *row);
    fd = conn_fd(conn);
    deadline = mono_now() + secs;
    active_add(w, 1);
    /* the generation is read before the row: a change between the two
     * is then seen as a change, never lost.  The caller's row was read
     * before this generation, so it is read again once: a job that ended
     * in between would otherwise wait, unseen, until the deadline (and
     * answer its stale running row then: test_ci saw one after 120 s). */
    seen = watch_gen(w);
    for (int first = 1; !finished(*row); first = 0) {
        json_t *fresh;
        if (!first && wait_change(w, &seen, deadline, fd) != WAIT_CHANGED)
            break;
        if (store_job_get(ctx->st, id, &fresh, &err)) {
            /* gone meanwhile (deleted): say so, as GET would now */
            *ret = api_reply_slim_error(conn, req, &err);
            active_add(w, -1);
            return 0;
        }
        json_decref(*row);
        *row = fresh;
    }
    /* counted until its answer is queued; the stop's grace covers the send */
    active_add(w, -1);
    return with_notify(ctx, id, *row);
}

/* ---- the event stream ---- */

struct sse {
    struct api_ctx *ctx;
    char id[128];
    int fd;
    uint64_t seen;
    long long next_id;
    char *buf;                 /* pending text, [off, len) unsent */
    size_t len, off, cap;
    int started, ended;
    char state[16], stage[48];
    double progress;           /* last sent */
    double progress_at;        /* mono time of the last progress event */
    int progress_due;          /* a progress change waits for its 250 ms */
    double keepalive;          /* seconds between keep-alive comments */
    double keepalive_at;
};

static void sse_free(void *cls)
{
    struct sse *s = cls;
    active_add(s->ctx->watch, -1);
    slim_free(s->buf);
    slim_free(s);
}

static int sse_append(struct sse *s, const char *text, size_t n)
{
    if (s->len + n > s->cap) {
        size_t cap = s->cap ? s->cap : 1024;
        char *b;
        while (cap < s->len + n)
            cap *= 2;
        if (!(b = slim_realloc(s->buf, cap)))
            return -1;
        s->buf = b;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, text, n);
    s->len += n;
    return 0;
}

/* One event: "id: N\nevent: NAME\ndata: JSON\n\n" (data stolen; compact
 * JSON has no newline, so one data line). */
static int sse_event(struct sse *s, const char *name, json_t *data)
{
    char head[96], *text = data ? json_dumps(data, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
    int rc;
    json_decref(data);
    if (!text)
        return -1;
    snprintf(head, sizeof head, "id: %lld\nevent: %s\ndata: ", s->next_id++, name);
    rc = sse_append(s, head, strlen(head)) || sse_append(s, text, strlen(text)) ||
         sse_append(s, "\n\n", 2) ? -1 : 0;
    free(text);
    return rc;
}

/* Seconds since an RFC 3339 UTC time ("2026-11-29T03:39:30Z"), or -1. */
static double seconds_since(const char *t)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    if (!t || !strptime(t, "%Y-%m-%dT%H:%M:%SZ", &tm))
        return -1;
    return difftime(time(NULL), timegm(&tm));
}

/* The compact view an event carries: state, stage, progress, elapsed
 * seconds and an ETA (null until the job has run a second and made 1 %
 * of progress: a rate from less says nothing). */
static json_t *snapshot(json_t *row)
{
    double p = json_number_value(json_object_get(row, "progress"));
    double el = seconds_since(json_string_value(json_object_get(row, "started_at")));
    const char *state = json_string_value(json_object_get(row, "state"));
    json_t *eta = json_null();
    if (state && !strcmp(state, "running") && el >= 1 && p >= 0.01 && p < 1)
        eta = json_real(el * (1 - p) / p);
    else if (finished(row))
        eta = json_real(0);
    return json_pack("{s:O, s:O, s:O, s:O, s:o, s:o, s:O}", "id", json_object_get(row, "id"),
                     "state", json_object_get(row, "state"), "stage",
                     json_object_get(row, "stage") ? json_object_get(row, "stage") : json_null(),
                     "progress", json_object_get(row, "progress"), "elapsed_seconds",
                     el >= 0 ? json_real(el) : json_null(), "eta_seconds", eta, "error",
                     json_object_get(row, "error") ? json_object_get(row, "error")
                                                   : json_null());
}

/* Reads the job and queues the events its change calls for. */
static void sse_poll(struct sse *s)
{
    struct slim_error err;
    json_t *row;
    const char *state, *stage;
    double p, now = mono_now();
    if (store_job_get(s->ctx->st, s->id, &row, &err)) {
        sse_event(s, "error", json_pack("{s:{s:s, s:s}}", "error", "code", slim_errcode(err.code),
                                        "message", err.msg));
        s->ended = 1;
        return;
    }
    state = json_string_value(json_object_get(row, "state"));
    stage = json_string_value(json_object_get(row, "stage"));
    p = json_number_value(json_object_get(row, "progress"));
    if (!s->started || strcmp(state ? state : "", s->state)) {
        sse_event(s, "state", snapshot(row));
        s->progress = p;
        s->progress_at = now;
        s->progress_due = 0;
    } else if (strcmp(stage ? stage : "", s->stage)) {
        sse_event(s, "stage", snapshot(row));
        s->progress = p;
        s->progress_at = now;
        s->progress_due = 0;
    } else if (p != s->progress) {
        if (now - s->progress_at >= SSE_PROGRESS_EVERY) {
            sse_event(s, "progress", snapshot(row));
            s->progress = p;
            s->progress_at = now;
            s->progress_due = 0;
        } else {
            s->progress_due = 1;
        }
    }
    s->started = 1;
    snprintf(s->state, sizeof s->state, "%s", state ? state : "");
    snprintf(s->stage, sizeof s->stage, "%s", stage ? stage : "");
    if (finished(row)) {
        sse_event(s, "end", row);   /* the job's final JSON, as GET shows it */
        s->ended = 1;
        return;
    }
    json_decref(row);
}

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct sse *s = cls;
    (void)pos;
    for (;;) {
        double deadline;
        int r;
        if (s->off < s->len) {
            size_t n = s->len - s->off < max ? s->len - s->off : max;
            memcpy(buf, s->buf + s->off, n);
            s->off += n;
            if (s->off == s->len)
                s->off = s->len = 0;
            s->keepalive_at = mono_now() + s->keepalive;
            return (ssize_t)n;
        }
        if (s->ended)
            return MHD_CONTENT_READER_END_OF_STREAM;
        if (!s->started) {
            s->seen = watch_gen(s->ctx->watch);
            sse_poll(s);
            continue;
        }
        deadline = s->keepalive_at;
        if (s->progress_due && s->progress_at + SSE_PROGRESS_EVERY < deadline)
            deadline = s->progress_at + SSE_PROGRESS_EVERY;
        r = wait_change(s->ctx->watch, &s->seen, deadline, s->fd);
        if (r == WAIT_GONE)
            return MHD_CONTENT_READER_END_OF_STREAM;
        if (r == WAIT_CHANGED || s->progress_due)
            sse_poll(s);
        if (s->off == s->len && mono_now() >= s->keepalive_at)
            sse_append(s, ": keep-alive\n\n", sizeof ": keep-alive\n\n" - 1);
    }
}

enum MHD_Result api_jobs_events(struct api_ctx *ctx, struct MHD_Connection *conn,
                                struct api_request *req, const char *id)
{
    const char *last = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Last-Event-ID");
    struct MHD_Response *resp;
    struct slim_error err;
    struct sse *s;
    json_t *row;
    long v = 0;
    static const char *const no_query[] = {NULL};
    enum MHD_Result ret;

    if (!api_query_check(conn, req, no_query, &ret))   /* a stream takes no parameters */
        return ret;
    if (store_job_get(ctx->st, id, &row, &err))
        return api_reply_slim_error(conn, req, &err);
    if (!api_request_sees(req, row)) {
        json_decref(row);
        return api_reply_error(conn, req, SLIM_ENOTFOUND, "job %.64s does not exist", id);
    }
    json_decref(row);
    if (!ctx->watch)
        return api_reply_error(conn, req, SLIM_EINTERNAL, "job events are not available");
    if (last && api_parse_long(last, 0, 1000000000, &v))
        return api_reply_error(conn, req, SLIM_EINVAL, "Last-Event-ID: expected an event id "
                               "this stream sent (a non-negative integer), got '%.40s'", last);
    if (!(s = slim_calloc(1, sizeof *s)))
        return api_reply_error(conn, req, SLIM_ENOMEM, "out of memory");
    s->ctx = ctx;
    snprintf(s->id, sizeof s->id, "%s", id);
    s->fd = conn_fd(conn);
    s->next_id = last ? v + 1 : 1;
    s->keepalive = SSE_KEEPALIVE_SECONDS;
    if (ctx->conn_timeout && ctx->conn_timeout / 2.0 < s->keepalive)
        s->keepalive = ctx->conn_timeout / 2.0;
    s->keepalive_at = mono_now() + s->keepalive;
    active_add(ctx->watch, 1);
    resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, sse_read, s, sse_free);
    if (!resp) {
        sse_free(s);
        return api_reply_error(conn, req, SLIM_ENOMEM, "out of memory");
    }
    MHD_add_response_header(resp, "Content-Type", "text/event-stream; charset=utf-8");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    return api_reply_response(conn, req, 200, resp);
}

/* ---- notify.url ---- */

int api_notify_url(json_t *spec, const char **url, struct slim_error *err)
{
    json_t *notify = json_object_get(spec, "notify"), *u;
    const char *key, *text;
    char *scheme = NULL, *host = NULL;
    CURLU *h;
    int rc = 0;

    *url = NULL;
    if (!notify)
        return 0;
    if (!json_is_object(notify))
        return slim_error_set(err, SLIM_ESPEC, "notify: expected an object such as "
                              "{\"url\": \"https://ci.example/hook\"}");
    json_object_foreach(notify, key, u)
        if (strcmp(key, "url"))
            return slim_error_set(err, SLIM_ESPEC, "notify: unknown key '%.40s' (expected url)",
                                  key);
    u = json_object_get(notify, "url");
    text = json_string_value(u);
    if (!text)
        return slim_error_set(err, SLIM_ESPEC, "notify.url: required, an http:// or https:// "
                              "URL");
    if (strlen(text) > 2048)
        return slim_error_set(err, SLIM_ESPEC, "notify.url: longer than 2048 characters");
    for (const char *c = text; *c; c++)
        if ((unsigned char)*c <= ' ' || *c == 0x7f)
            return slim_error_set(err, SLIM_ESPEC, "notify.url: contains a space or control "
                                  "character");
    if (!(h = curl_url()))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    if (curl_url_set(h, CURLUPART_URL, text, 0) != CURLUE_OK ||
        curl_url_get(h, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(h, CURLUPART_HOST, &host, 0) != CURLUE_OK || !host[0])
        rc = slim_error_set(err, SLIM_ESPEC, "notify.url: '%.100s' is not a URL "
                            "(expected http://HOST[:PORT]/PATH or https://...)", text);
    else if (strcasecmp(scheme, "http") && strcasecmp(scheme, "https"))
        rc = slim_error_set(err, SLIM_ESPEC, "notify.url: scheme '%.20s' is not allowed "
                            "(http or https only)", scheme);
    curl_free(scheme);
    curl_free(host);
    curl_url_cleanup(h);
    if (!rc)
        *url = text;
    return rc;
}
