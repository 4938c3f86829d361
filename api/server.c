/*
 * server.c - the HTTP side: libmicrohttpd setup, the routing table, the
 * request lifecycle (body streaming or buffering), the JSON error
 * envelope, file responses, and one log line per request.
 *
 * libmicrohttpd calls the access handler several times per request:
 * first with no body (we route and decide how the body is taken), then
 * once per chunk of body, then once more with no data (we reply).  A
 * model or dataset upload streams each chunk into a blob writer that
 * writes it and has it hashed by a thread of its own, so memory does not
 * grow with the file (CONN_MEMORY sizes the chunks); a multipart body
 * streams each field the route keeps into a writer of its own (a
 * dataset's IDX images and labels); JSON bodies (job specs) are
 * buffered up to 64 KiB.  An error found mid-body (too large, disk full)
 * is remembered, the rest of the body is drained, and the error is sent
 * at the end; an upload or spec whose Content-Length is already too
 * large gets its 413 before a byte of it is read.
 *
 * Routes are a table of (method, pattern) -> handler; patterns have
 * {id} segments.  A path that matches with another method gets 405 and
 * an Allow header listing the methods it has.  Each route names the
 * token scope it needs; api/auth.c's gates run on the first call, before
 * a byte of the body is taken: the Host header before routing, the
 * token, its scope and the cross-site rules after, so an upload without
 * a valid token is refused before it is stored anywhere.  The request
 * text that slimd parses itself (Range, unescaping, route patterns,
 * names, query integers) is in http_parse.c, where the fuzz target
 * reaches it.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "api/api.h"
#include "api/http_parse.h"
#include "api/metrics.h"
#include "daemon/log.h"

/* The one JSON body, a job spec, is stored with its job and returned by
 * GET /v1/jobs/{id}: 64 KiB holds any real spec (hundreds of globs) and
 * keeps 1,000 queued jobs' specs under 64 MiB of database. */
#define JSON_BODY_MAX (64u << 10)
/* MHD's per-connection pool (default 32 KiB).  MHD reads into about half
 * of it, so a 1 MiB pool hands an upload's body over in ~512 KiB pieces
 * (one write() each) instead of 16 KiB ones: 2,000 write()s per GiB
 * instead of 67,000.  Not larger: MHD memsets the whole pool after every
 * request on a kept-alive connection (~0.1 ms at 1 MiB, ~0.8 ms at 4 MiB
 * measured here), which also makes every kept-alive connection hold
 * its whole pool (20 idle ones: +22 MiB; 256 of them could hold 256
 * MiB), and a 4 MiB pool gained no upload speed.  A connection that
 * closes after one small request touches little of it (mmap()ed).  The
 * increment keeps at least 64 KiB free for each recv() when part of the
 * buffer is still in use. */
#define CONN_MEMORY (1u << 20)
#define CONN_MEMORY_INCREMENT (64u << 10)

/* A connection that has not yet sent a whole request head (its line and
 * headers): on the watch list from the moment it is accepted, and again
 * after each response, until the head is in.  The list is the reaper's;
 * an entry leaves it (and is freed) when libmicrohttpd reports the
 * connection closed, which it does before it closes the socket, so the
 * reaper never shuts down a descriptor that was reused. */
struct conn_watch {
    struct conn_watch *prev, *next;
    int fd;
    int waiting;            /* 1 while the request head is incomplete */
    double deadline;        /* slim_now() by which it must be complete */
};

struct api_server {
    struct MHD_Daemon *mhd;
    struct api_ctx ctx;
    uint16_t port;
    unsigned head_timeout;  /* seconds; 0: none */
    pthread_mutex_t lock;   /* guards watch and stop */
    pthread_cond_t wake;
    struct conn_watch *watch;
    int stop;
    int reaper_started;
    pthread_t reaper;
};

enum body_mode { BODY_NONE, BODY_JSON, BODY_UPLOAD };

struct api_request {
    struct api_ctx *ctx;
    struct api_principal who;    /* set by api_gate */
    enum body_mode mode;
    char *body;
    size_t body_len;
    int body_too_big;
    struct api_upload up;
    int status;
    double started;
    int routed;
    const char *route;      /* the route's pattern, for /metrics (never the raw path) */
    const char *route_method;
    char method[8];
    char url[256];
};

struct route {
    const char *method;
    const char *pattern;   /* "/v1/models/{id}/file" */
    enum body_mode mode;
    int kind;
    const char *const *fields;   /* BODY_UPLOAD: the multipart fields kept, in part order */
    unsigned scope;              /* enum store_scope bits needed; 0: open */
    unsigned gate;               /* API_GATE_* */
};

enum route_kind {
    R_JOBS_COMPARE,
    R_HEALTH, R_MODELS_LIST, R_MODELS_UPLOAD, R_MODEL_GET, R_MODEL_DELETE, R_MODEL_FILE,
    R_DATASETS_LIST, R_DATASETS_UPLOAD, R_DATASET_GET, R_DATASET_DELETE, R_DATASET_FILE,
    R_JOBS_LIST, R_JOBS_SUBMIT, R_JOB_GET, R_JOB_CANCEL, R_JOB_REPORT, R_JOB_REPORT_HTML,
    R_JOB_ARTIFACT, R_METRICS, R_DASHBOARD, R_TOKENS_LIST, R_TOKENS_CREATE, R_TOKEN_REVOKE,
    R_JOB_DELETE, R_JOB_PIN, R_JOB_UNPIN,
    R_OPENAPI,
    R_JOB_EVENTS,
};

static const char *const model_fields[] = {"file", NULL};
/* a dataset is one safetensors file, or IDX images and labels */
static const char *const dataset_fields[] = {"file", "images", "labels", NULL};
/* a job whose body is multipart carries its model and spec (jobs.c);
 * a JSON route with fields takes multipart as an upload */
static const char *const job_fields[] = {"model", "spec", NULL};

#define READ STORE_SCOPE_READ
#define SUBMIT STORE_SCOPE_SUBMIT
#define ADMIN STORE_SCOPE_ADMIN
/* /v1/health is open (liveness probes carry no token), and so is the
 * dashboard page: it is static and holds no data (its script asks the
 * API for the data, with the token the user gives it).  /metrics needs
 * read: job counts are the service's business, and Prometheus sends a
 * bearer token (authorization: credentials_file).  /v1/openapi.yaml is
 * open: it describes the API that the binary serves to anyone who may
 * reach it, holds no data, and code generators fetch it without one. */
static const struct route routes[] = {
    {"GET", "/v1/health", BODY_NONE, R_HEALTH, NULL, 0, 0},
    /* before /v1/jobs/{id}, which it also matches: the first match wins */
    {"GET", "/v1/jobs/compare", BODY_NONE, R_JOBS_COMPARE, NULL, READ, 0},
    {"GET", "/v1/models", BODY_NONE, R_MODELS_LIST, NULL, READ, 0},
    {"POST", "/v1/models", BODY_UPLOAD, R_MODELS_UPLOAD, model_fields, SUBMIT, API_GATE_FORM},
    {"GET", "/v1/models/{id}", BODY_NONE, R_MODEL_GET, NULL, READ, 0},
    {"DELETE", "/v1/models/{id}", BODY_NONE, R_MODEL_DELETE, NULL, SUBMIT, 0},
    {"GET", "/v1/models/{id}/file", BODY_NONE, R_MODEL_FILE, NULL, READ, 0},
    {"GET", "/v1/datasets", BODY_NONE, R_DATASETS_LIST, NULL, READ, 0},
    {"POST", "/v1/datasets", BODY_UPLOAD, R_DATASETS_UPLOAD, dataset_fields, SUBMIT,
     API_GATE_FORM},
    {"GET", "/v1/datasets/{id}", BODY_NONE, R_DATASET_GET, NULL, READ, 0},
    {"DELETE", "/v1/datasets/{id}", BODY_NONE, R_DATASET_DELETE, NULL, SUBMIT, 0},
    {"GET", "/v1/datasets/{id}/file", BODY_NONE, R_DATASET_FILE, NULL, READ, 0},
    {"GET", "/v1/jobs", BODY_NONE, R_JOBS_LIST, NULL, READ, 0},
    {"POST", "/v1/jobs", BODY_JSON, R_JOBS_SUBMIT, job_fields, SUBMIT, API_GATE_JSON},
    {"GET", "/v1/jobs/{id}", BODY_NONE, R_JOB_GET, NULL, READ, 0},
    {"POST", "/v1/jobs/{id}/cancel", BODY_NONE, R_JOB_CANCEL, NULL, SUBMIT, API_GATE_FORM},
    {"DELETE", "/v1/jobs/{id}", BODY_NONE, R_JOB_DELETE, NULL, SUBMIT, 0},
    {"POST", "/v1/jobs/{id}/pin", BODY_NONE, R_JOB_PIN, NULL, SUBMIT, API_GATE_FORM},
    {"POST", "/v1/jobs/{id}/unpin", BODY_NONE, R_JOB_UNPIN, NULL, SUBMIT, API_GATE_FORM},
    {"GET", "/v1/jobs/{id}/report", BODY_NONE, R_JOB_REPORT, NULL, READ, 0},
    {"GET", "/v1/jobs/{id}/report.html", BODY_NONE, R_JOB_REPORT_HTML, NULL, READ, 0},
    {"GET", "/v1/jobs/{id}/artifact", BODY_NONE, R_JOB_ARTIFACT, NULL, READ, 0},
    {"GET", "/v1/jobs/{id}/events", BODY_NONE, R_JOB_EVENTS, NULL, READ, 0},
    {"GET", "/v1/tokens", BODY_NONE, R_TOKENS_LIST, NULL, ADMIN, 0},
    {"POST", "/v1/tokens", BODY_JSON, R_TOKENS_CREATE, NULL, ADMIN, API_GATE_JSON},
    {"DELETE", "/v1/tokens/{id}", BODY_NONE, R_TOKEN_REVOKE, NULL, ADMIN, 0},
    {"GET", "/metrics", BODY_NONE, R_METRICS, NULL, READ, 0},
    {"GET", "/", BODY_NONE, R_DASHBOARD, NULL, 0, 0},
    {"GET", "/v1/openapi.yaml", BODY_NONE, R_OPENAPI, NULL, 0, 0},
};
#undef READ
#undef SUBMIT
#undef ADMIN
#define N_ROUTES (sizeof routes / sizeof routes[0])

void api_request_set_status(struct api_request *req, int status)
{
    if (req)
        req->status = status;
}

const char *api_request_body(const struct api_request *req, size_t *len)
{
    *len = req->body_len;
    return req->body ? req->body : "";
}

struct api_upload *api_request_upload(struct api_request *req)
{
    return &req->up;
}

struct api_principal *api_request_principal(struct api_request *req)
{
    return &req->who;
}

struct api_ctx *api_request_ctx(struct api_request *req)
{
    return req ? req->ctx : NULL;
}

uint64_t api_upload_bytes(const struct api_upload *up)
{
    uint64_t n = 0;
    for (int i = 0; i < API_UPLOAD_PARTS; i++)
        n += up->part[i] ? store_blob_bytes(up->part[i]) : 0;
    return n;
}

void api_upload_discard(struct api_upload *up)
{
    for (int i = 0; i < API_UPLOAD_PARTS; i++) {
        store_blob_abort(up->part[i]);
        up->part[i] = NULL;
    }
}

/* ?name= with an empty value reaches us as a NULL value, which
 * MHD_lookup_connection_value cannot tell from no ?name at all. */
static enum MHD_Result find_name(void *cls, enum MHD_ValueKind kind, const char *key,
                                 const char *value)
{
    const char **out = cls;
    (void)kind;
    if (strcmp(key, "name"))
        return MHD_YES;
    *out = value ? value : "";
    return MHD_NO;
}

const char *api_upload_name(struct MHD_Connection *conn)
{
    const char *name = NULL;
    MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, find_name, &name);
    return name;
}

int api_read_head(const char *path, unsigned char *buf, size_t len, size_t *got)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n;
    if (fd < 0)
        return -1;
    n = read(fd, buf, len);
    close(fd);
    if (n < 0)
        return -1;
    *got = (size_t)n;
    return 0;
}

static enum MHD_Result queue(struct MHD_Connection *conn, struct api_request *req, int status,
                             struct MHD_Response *resp)
{
    enum MHD_Result r;
    if (!resp)
        return MHD_NO;
    api_request_set_status(req, status);
    MHD_add_response_header(resp, "Cache-Control", "no-store");
    api_secure_response(conn, req, resp);
    r = MHD_queue_response(conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return r;
}

enum MHD_Result api_reply_response(struct MHD_Connection *conn, struct api_request *req,
                                   int status, struct MHD_Response *resp)
{
    return queue(conn, req, status, resp);
}

enum MHD_Result api_reply_json(struct MHD_Connection *conn, struct api_request *req, int status,
                               json_t *body, const char *location)
{
    char *text = json_dumps(body, JSON_INDENT(2) | JSON_REAL_PRECISION(9));
    struct MHD_Response *resp;
    json_decref(body);
    if (!text)
        return MHD_NO;
    size_t len = strlen(text);
    text[len] = '\n'; /* json_dumps leaves room for the NUL; a newline is friendlier to curl */
    resp = MHD_create_response_from_buffer(len + 1, text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "application/json");
    if (location)
        MHD_add_response_header(resp, "Location", location);
    return queue(conn, req, status, resp);
}

/* Queues {"error": {code, message}} with status, and one extra header
 * (hname may be NULL). */
static enum MHD_Result reply_error_status(struct MHD_Connection *conn, struct api_request *req,
                                          int status, const char *code, const char *msg,
                                          const char *hname, const char *hval)
{
    json_t *body = json_pack("{s:{s:s, s:s}}", "error", "code", code, "message", msg);
    char *text = body ? json_dumps(body, JSON_INDENT(2)) : NULL;
    struct MHD_Response *resp;
    json_decref(body);
    if (!text)
        return MHD_NO;
    size_t len = strlen(text);
    text[len] = '\n';
    resp = MHD_create_response_from_buffer(len + 1, text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "application/json");
    if (hname)
        MHD_add_response_header(resp, hname, hval);
    return queue(conn, req, status, resp);
}

enum MHD_Result api_reply_error_header(struct MHD_Connection *conn, struct api_request *req,
                                       int code, const char *hname, const char *hval,
                                       const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return reply_error_status(conn, req, slim_http_status(code), slim_errcode(code), msg, hname,
                              hval);
}

enum MHD_Result api_reply_error(struct MHD_Connection *conn, struct api_request *req, int code,
                                const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return reply_error_status(conn, req, slim_http_status(code), slim_errcode(code), msg, NULL,
                              NULL);
}

enum MHD_Result api_reply_slim_error(struct MHD_Connection *conn, struct api_request *req,
                                     const struct slim_error *err)
{
    /* a full queue says when to come back */
    if (err->code == SLIM_EBUSY)
        return reply_error_status(conn, req, 429, slim_errcode(SLIM_EBUSY), err->msg,
                                  "Retry-After", "10");
    return api_reply_error(conn, req, err->code, "%s", err->msg);
}

enum MHD_Result api_reply_text(struct MHD_Connection *conn, struct api_request *req, int status,
                               char *text, size_t len, const char *type)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", type);
    return queue(conn, req, status, resp);
}

enum MHD_Result api_reply_html(struct MHD_Connection *conn, struct api_request *req, char *html,
                               size_t len, const char *csp)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, html, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(html);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "text/html; charset=utf-8");
    MHD_add_response_header(resp, "Content-Security-Policy", csp);
    return queue(conn, req, 200, resp);
}

enum MHD_Result api_reply_empty(struct MHD_Connection *conn, struct api_request *req, int status)
{
    return queue(conn, req, status,
                 MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT));
}

int api_blob_local(struct api_ctx *ctx, struct MHD_Connection *conn, const char *sha,
                   char *path, size_t len, struct slim_error *err)
{
    const char *inm = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "If-None-Match");
    char etag[80];
    store_blob_path(ctx->st, sha, path, len);
    snprintf(etag, sizeof etag, "\"%s\"", sha ? sha : "");
    if (inm && (strstr(inm, etag) || !strcmp(inm, "*")))
        return 0;
    return store_blob_fetch(ctx->st, path, err);
}

enum MHD_Result api_reply_file(struct MHD_Connection *conn, struct api_request *req,
                               const char *path, const char *sha, const char *content_type,
                               const char *filename)
{
    char etag[80], hdr[512], msg[160];
    const char *inm = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "If-None-Match");
    const char *range = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Range");
    struct MHD_Response *resp;
    struct stat st;
    uint64_t start = 0, len;
    int status = 200, fd, r;

    snprintf(etag, sizeof etag, "\"%s\"", sha);
    /* before the file: the ETag is the sha256, and with --blobs s3 there
     * may be no local copy (api_blob_local fetched none for this) */
    if (inm && (strstr(inm, etag) || !strcmp(inm, "*"))) {
        resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
        if (resp)
            MHD_add_response_header(resp, "ETag", etag);
        return queue(conn, req, 304, resp);
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) != 0) {
        if (fd >= 0)
            close(fd);
        return api_reply_error(conn, req, SLIM_EIO, "stored file %s is missing: %s", sha,
                               strerror(errno));
    }
    len = (uint64_t)st.st_size;
    r = api_parse_range(range, (uint64_t)st.st_size, &start, &len);
    if (r < 0) {
        close(fd);
        snprintf(hdr, sizeof hdr, "bytes */%lld", (long long)st.st_size);
        snprintf(msg, sizeof msg, "Range '%.60s' lies outside the file's %lld bytes", range,
                 (long long)st.st_size);
        return reply_error_status(conn, req, 416, slim_errcode(SLIM_ERANGE), msg,
                                  "Content-Range", hdr);
    }
    if (r > 0)
        status = 206;
    resp = MHD_create_response_from_fd_at_offset64(len, fd, start);
    if (resp && strcmp(req->method, "HEAD"))
        api_metrics_download_bytes(strstr(req->route, "/models/") ? "model"
                                   : strstr(req->route, "/datasets/") ? "dataset"
                                   : strstr(req->route, "/artifact") ? "artifact" : "other",
                                   len);
    if (!resp) {
        close(fd);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", content_type);
    MHD_add_response_header(resp, "ETag", etag);
    MHD_add_response_header(resp, "Accept-Ranges", "bytes");
    if (status == 206) {
        snprintf(hdr, sizeof hdr, "bytes %" PRIu64 "-%" PRIu64 "/%lld", start, start + len - 1,
                 (long long)st.st_size);
        MHD_add_response_header(resp, "Content-Range", hdr);
    }
    if (filename) {
        snprintf(hdr, sizeof hdr, "attachment; filename=\"%s\"", filename);
        MHD_add_response_header(resp, "Content-Disposition", hdr);
    }
    return queue(conn, req, status, resp);
}

/* MHD's unescape callback: api_unescape (%00 is kept as text). */
static size_t unescape(void *cls, struct MHD_Connection *conn, char *s)
{
    (void)cls;
    (void)conn;
    return api_unescape(s);
}

struct query_check {
    const char *const *allowed;
    const char *unknown;
};

static enum MHD_Result query_key(void *cls, enum MHD_ValueKind kind, const char *key,
                                 const char *value)
{
    struct query_check *q = cls;
    (void)kind;
    (void)value;
    for (const char *const *a = q->allowed; *a; a++)
        if (!strcmp(*a, key))
            return MHD_YES;
    q->unknown = key;
    return MHD_NO;
}

int api_query_check(struct MHD_Connection *conn, struct api_request *req,
                    const char *const *allowed, enum MHD_Result *ret)
{
    struct query_check q = {allowed, NULL};
    char list[256] = "";
    MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, query_key, &q);
    if (!q.unknown)
        return 1;
    for (const char *const *a = allowed; *a; a++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", a == allowed ? "" : ", ",
                 *a);
    *ret = api_reply_error(conn, req, SLIM_EINVAL, "unknown query parameter '%.60s': this "
                           "endpoint takes %s", q.unknown, list[0] ? list : "none");
    return 0;
}

int api_paging(struct MHD_Connection *conn, struct api_request *req, int *limit, int *offset,
               enum MHD_Result *ret)
{
    const char *l = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "limit");
    const char *o = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "offset");
    long v;
    *limit = 50;
    *offset = 0;
    if (l) {
        if (api_parse_long(l, 1, 1000, &v)) {
            *ret = api_reply_error(conn, req, SLIM_EINVAL,
                                   "limit: expected an integer from 1 to 1000, got '%.40s'", l);
            return 0;
        }
        *limit = (int)v;
    }
    if (o) {
        if (api_parse_long(o, 0, 1000000000, &v)) {
            *ret = api_reply_error(conn, req, SLIM_EINVAL,
                                   "offset: expected a non-negative integer, got '%.40s'", o);
            return 0;
        }
        *offset = (int)v;
    }
    return 1;
}

/* Multipart: the fields the route keeps each go to their part; other
 * fields are ignored.  MHD hands a field over in pieces at growing
 * offsets: offset 0 again, with bytes already in the part, is the same
 * field sent a second time. */
static enum MHD_Result post_iter(void *cls, enum MHD_ValueKind kind, const char *key,
                                 const char *filename, const char *content_type,
                                 const char *transfer_encoding, const char *data, uint64_t off,
                                 size_t size)
{
    struct api_upload *up = &((struct api_request *)cls)->up;
    struct slim_error err;
    int i = 0;
    (void)kind;
    (void)content_type;
    (void)transfer_encoding;
    if (!key || up->failed || !up->fields)
        return MHD_YES;
    while (up->fields[i] && strcmp(up->fields[i], key))
        i++;
    if (!up->fields[i] || i >= API_UPLOAD_PARTS)
        return MHD_YES;
    if (!up->seen[i]) {
        up->seen[i] = 1;
        if (filename)
            up->filename[i] = slim_strdup(filename);
        if (store_blob_begin(up->st, &up->part[i], &err))
            goto fail;
    } else if (off == 0 && size && up->part[i] && store_blob_bytes(up->part[i])) {
        slim_error_set(&err, SLIM_EINVAL, "multipart field '%s' appears twice", up->fields[i]);
        goto fail;
    }
    if (size && up->part[i] && store_blob_write(up->part[i], data, size, &err))
        goto fail;
    return MHD_YES;
fail:
    up->failed = err.code;
    snprintf(up->msg, sizeof up->msg, "%s", err.msg);
    return MHD_YES;
}

static void upload_chunk(struct api_ctx *ctx, struct api_request *req, const char *data,
                         size_t size)
{
    struct slim_error err;
    if (req->up.failed)
        return;
    api_metrics_upload_bytes(size);
    if (req->up.pp) {
        if (MHD_post_process(req->up.pp, data, size) != MHD_YES && !req->up.failed) {
            req->up.failed = SLIM_EINVAL;
            snprintf(req->up.msg, sizeof req->up.msg, "malformed multipart/form-data body");
        }
    } else if (store_blob_write(req->up.part[0], data, size, &err)) {
        req->up.failed = err.code;
        snprintf(req->up.msg, sizeof req->up.msg, "%s", err.msg);
    }
    if (!req->up.failed && api_upload_bytes(&req->up) > ctx->max_upload) {
        req->up.failed = SLIM_ETOOBIG;
        snprintf(req->up.msg, sizeof req->up.msg, "upload exceeds the limit of %" PRIu64
                 " bytes (--max-upload-bytes)", ctx->max_upload);
    }
    if (req->up.failed) /* the rest of the body is drained unread: drop the files now */
        api_upload_discard(&req->up);
}

static struct api_server *server_of(struct api_ctx *ctx)
{
    return (struct api_server *)((char *)ctx - offsetof(struct api_server, ctx));
}

/* The request head of conn is complete (1) or awaited again after a
 * response (0): takes it off or puts it back on the reaper's clock. */
static void head_watch(struct api_server *srv, struct MHD_Connection *conn, int complete)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    struct conn_watch *w = ci ? ci->socket_context : NULL;
    if (!w)
        return;
    pthread_mutex_lock(&srv->lock);
    w->waiting = !complete;
    w->deadline = slim_now() + srv->head_timeout;
    pthread_mutex_unlock(&srv->lock);
}

/* libmicrohttpd: a connection was accepted (its watch entry is made) or
 * is about to be closed (its entry goes, before the socket does). */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    struct api_server *srv = cls;
    struct conn_watch *w = *socket_context;
    const union MHD_ConnectionInfo *ci;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (!srv->head_timeout || !ci || !(w = slim_calloc(1, sizeof *w)))
            return;   /* unwatched: the idle timeout still applies */
        w->fd = ci->connect_fd;
        w->waiting = 1;
        w->deadline = slim_now() + srv->head_timeout;
        pthread_mutex_lock(&srv->lock);
        w->next = srv->watch;
        if (srv->watch)
            srv->watch->prev = w;
        srv->watch = w;
        pthread_mutex_unlock(&srv->lock);
        *socket_context = w;
        return;
    }
    if (!w)
        return;
    pthread_mutex_lock(&srv->lock);
    if (w->prev)
        w->prev->next = w->next;
    else
        srv->watch = w->next;
    if (w->next)
        w->next->prev = w->prev;
    pthread_mutex_unlock(&srv->lock);
    slim_free(w);
    *socket_context = NULL;
}

/* The reaper: four times a second, shuts down the sockets of connections
 * whose request head is overdue.  Their own thread then reads end of file
 * and libmicrohttpd closes them as if the client had. */
static void *reaper_main(void *arg)
{
    struct api_server *srv = arg;
    pthread_mutex_lock(&srv->lock);
    while (!srv->stop) {
        struct timespec ts;
        double now = slim_now();
        int cut = 0;
        for (struct conn_watch *w = srv->watch; w; w = w->next)
            if (w->waiting && w->deadline <= now) {
                shutdown(w->fd, SHUT_RDWR);
                w->waiting = 0;   /* once is enough */
                cut++;
            }
        if (cut)
            log_info("http: closed %d connection(s) that sent no complete request within "
                     "%u s (--conn-timeout)", cut, srv->head_timeout);
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 250 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&srv->wake, &srv->lock, &ts);
    }
    pthread_mutex_unlock(&srv->lock);
    return NULL;
}

/* libmicrohttpd's own messages, through our log.  A flood (one "reached
 * connection limit" per refused socket) would bury everything else, so
 * each message's format is logged at most once per 10 s, with a count of
 * the ones held back. */
static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    static const char *last_fmt;
    static double last_at;
    static unsigned held;
    char msg[512];
    double now = slim_now();
    unsigned before = 0;
    size_t n;
    (void)cls;
    pthread_mutex_lock(&lock);
    if (fmt == last_fmt && now - last_at < 10.0) {
        held++;
        pthread_mutex_unlock(&lock);
        return;
    }
    if (fmt == last_fmt)
        before = held;
    last_fmt = fmt;
    last_at = now;
    held = 0;
    pthread_mutex_unlock(&lock);
    vsnprintf(msg, sizeof msg, fmt, ap);
    n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        msg[--n] = 0;
    if (before)
        log_warn("http: %s (%u more like it in the last 10 s)", msg, before);
    else
        log_warn("http: %s", msg);
}

/* The labels of a request in /metrics: its route's pattern (a path no
 * route matches is "unmatched"; one that matches with another method,
 * a 405, is its pattern), and its method when it is a standard one. */
static const char *route_label(const char *url, const struct route *r)
{
    char id[128];
    if (r)
        return r->pattern;
    for (size_t i = 0; i < N_ROUTES; i++)
        if (api_route_match(routes[i].pattern, url, id, sizeof id))
            return routes[i].pattern;
    return "unmatched";
}

static const char *method_label(const char *method)
{
    static const char *const known[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH",
                                        "OPTIONS"};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (!strcmp(method, known[i]))
            return known[i];
    return "other";
}

static enum MHD_Result dispatch(struct api_ctx *ctx, struct MHD_Connection *conn,
                                struct api_request *req, const struct route *r, const char *id)
{
    switch (r->kind) {
    case R_HEALTH: return api_health(ctx, conn, req);
    case R_MODELS_LIST: return api_models_list(ctx, conn, req);
    case R_MODELS_UPLOAD: return api_models_upload(ctx, conn, req);
    case R_MODEL_GET: return api_models_get(ctx, conn, req, id, NULL);
    case R_MODEL_FILE: return api_models_get(ctx, conn, req, id, "file");
    case R_MODEL_DELETE: return api_models_delete(ctx, conn, req, id);
    case R_DATASETS_LIST: return api_datasets_list(ctx, conn, req);
    case R_DATASETS_UPLOAD: return api_datasets_upload(ctx, conn, req);
    case R_DATASET_GET: return api_datasets_get(ctx, conn, req, id, NULL);
    case R_DATASET_FILE: return api_datasets_get(ctx, conn, req, id, "file");
    case R_DATASET_DELETE: return api_datasets_delete(ctx, conn, req, id);
    case R_JOBS_LIST: return api_jobs_list(ctx, conn, req);
    case R_JOBS_SUBMIT: return api_jobs_submit(ctx, conn, req);
    case R_JOB_GET: return api_jobs_get(ctx, conn, req, id, NULL);
    case R_JOB_CANCEL: return api_jobs_cancel(ctx, conn, req, id);
    case R_JOB_REPORT: return api_jobs_get(ctx, conn, req, id, "report");
    case R_JOB_REPORT_HTML: return api_pages_job(ctx, conn, req, id);
    case R_JOBS_COMPARE: return api_pages_compare(ctx, conn, req);
    case R_JOB_ARTIFACT: return api_jobs_get(ctx, conn, req, id, "artifact");
    case R_METRICS: return api_metrics(ctx, conn, req);
    case R_DASHBOARD: return api_dashboard(ctx, conn, req);
    case R_TOKENS_LIST: return api_tokens_list(ctx, conn, req);
    case R_TOKENS_CREATE: return api_tokens_create(ctx, conn, req);
    case R_TOKEN_REVOKE: return api_tokens_revoke(ctx, conn, req, id);
    case R_JOB_DELETE: return api_jobs_delete(ctx, conn, req, id);
    case R_JOB_PIN: return api_jobs_pin(ctx, conn, req, id, 1);
    case R_JOB_UNPIN: return api_jobs_pin(ctx, conn, req, id, 0);
    case R_OPENAPI: return api_openapi(ctx, conn, req);
    case R_JOB_EVENTS: return api_jobs_events(ctx, conn, req, id);
    }
    return api_reply_error(conn, req, SLIM_EINTERNAL, "no handler");
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    struct api_ctx *ctx = cls;
    struct api_request *req = *con_cls;
    const struct route *r = NULL;
    char id[128], seg[128], allow[64];
    int path_known = 0;
    enum MHD_Result gated;

    allow[0] = 0;
    id[0] = 0;
    /* the first route that matches wins (/v1/jobs/compare before
     * /v1/jobs/{id}); the others only add to Allow */
    for (size_t i = 0; i < N_ROUTES; i++) {
        seg[0] = 0;
        if (!api_route_match(routes[i].pattern, url, seg, sizeof seg))
            continue;
        path_known = 1;
        if (!strcmp(routes[i].method, method) ||
            (!strcmp(method, "HEAD") && !strcmp(routes[i].method, "GET"))) {
            if (!r) {
                r = &routes[i];
                snprintf(id, sizeof id, "%s", seg);
            }
        } else if (!strstr(allow, routes[i].method))
            snprintf(allow + strlen(allow), sizeof allow - strlen(allow), "%s%s",
                     allow[0] ? ", " : "", routes[i].method);
    }

    if (!req) {
        head_watch(server_of(ctx), conn, 1);
        req = slim_calloc(1, sizeof *req);
        if (!req)
            return MHD_NO;
        req->ctx = ctx;
        req->started = slim_now();
        snprintf(req->method, sizeof req->method, "%s", method);
        snprintf(req->url, sizeof req->url, "%s", url);
        req->route = route_label(url, r);
        req->route_method = method_label(method);
        *con_cls = req;
        if (!api_gate_host(ctx, conn, req, method, path_known, &gated))
            return gated;
        if (!r) {
            if (path_known)
                return reply_error_status(conn, req, 405, "METHOD_NOT_ALLOWED",
                                          "method not allowed for this path", "Allow", allow);
            return api_reply_error(conn, req, SLIM_ENOTFOUND, "no such endpoint: %s %.200s",
                                   method, url);
        }
        unsigned gate = r->gate;
        enum body_mode mode = r->mode;
        const char *type = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                       MHD_HTTP_HEADER_CONTENT_TYPE);
        /* a JSON route with fields (POST /v1/jobs) also takes multipart:
         * an upload then, gated like one */
        if (mode == BODY_JSON && r->fields && type &&
            !strncasecmp(type, "multipart/form-data", 19)) {
            mode = BODY_UPLOAD;
            gate = API_GATE_FORM;
        }
        if (!api_gate(ctx, conn, req, method, r->scope, gate, &gated))
            return gated;
        /* --role worker: uploads (the heavy requests) go to an api node;
         * the body is not read */
        if (ctx->worker_only && mode == BODY_UPLOAD)
            return api_reply_error(conn, req, SLIM_EFORBIDDEN, "this node is a worker (--role "
                                   "worker, node %s): uploads go to a node of role api or all",
                                   ctx->node ? ctx->node : "?");
        req->mode = mode;
        if (mode == BODY_JSON) {
            const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                         MHD_HTTP_HEADER_CONTENT_LENGTH);
            if (cl && strtoull(cl, NULL, 10) > JSON_BODY_MAX)
                return api_reply_error(conn, req, SLIM_ETOOBIG,
                                       "job spec of %.20s bytes exceeds the limit of %u bytes",
                                       cl, JSON_BODY_MAX);
        }
        if (mode == BODY_UPLOAD) {
            const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                         MHD_HTTP_HEADER_CONTENT_LENGTH);
            const char *ct = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                         MHD_HTTP_HEADER_CONTENT_TYPE);
            struct slim_error err;
            if (cl && strtoull(cl, NULL, 10) > ctx->max_upload + (ct && !strncasecmp(ct, "multipart/", 10) ? 65536 : 0))
                return api_reply_error(conn, req, SLIM_ETOOBIG,
                                       "upload of %s bytes exceeds the limit of %" PRIu64
                                       " bytes (--max-upload-bytes)", cl, ctx->max_upload);
            int multipart = ct && !strncasecmp(ct, "multipart/form-data", 19);
            /* a full disk is refused before a byte is taken: the free
             * space must cover the body and still leave --min-free-bytes */
            if (store_check_free(ctx->st, ctx->min_free + (cl ? strtoull(cl, NULL, 10) : 0),
                                 &err) ||
                (!multipart && store_blob_begin(ctx->st, &req->up.part[0], &err)))
                return api_reply_slim_error(conn, req, &err);
            req->up.st = ctx->st;
            req->up.fields = r->fields;
            if (multipart) {   /* its parts begin as their fields arrive */
                req->up.pp = MHD_create_post_processor(conn, 64 * 1024, post_iter, req);
                if (!req->up.pp)
                    return api_reply_error(conn, req, SLIM_EINVAL,
                                           "malformed multipart/form-data header (no boundary?)");
            }
        }
        return MHD_YES;
    }

    if (*upload_data_size) {
        if (req->status) {          /* already answered (e.g. 413): drain */
            *upload_data_size = 0;
            return MHD_YES;
        }
        if (req->mode == BODY_UPLOAD) {
            upload_chunk(ctx, req, upload_data, *upload_data_size);
        } else if (req->mode == BODY_JSON) {
            if (req->body_len + *upload_data_size > JSON_BODY_MAX) {
                req->body_too_big = 1;
            } else {
                char *b = slim_realloc(req->body, req->body_len + *upload_data_size + 1);
                if (!b)
                    return MHD_NO;
                memcpy(b + req->body_len, upload_data, *upload_data_size);
                req->body = b;
                req->body_len += *upload_data_size;
                req->body[req->body_len] = 0;
            }
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (req->status || req->routed)
        return MHD_YES;
    req->routed = 1;
    if (req->body_too_big)
        return api_reply_error(conn, req, SLIM_ETOOBIG, "job spec exceeds the limit of %u bytes",
                               JSON_BODY_MAX);
    (void)version;
    return dispatch(ctx, conn, req, r, id);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct api_request *req = *con_cls;
    const union MHD_ConnectionInfo *ci;
    char addr[INET6_ADDRSTRLEN] = "-";
    /* a kept-alive connection has as long for its next request head */
    head_watch(cls, conn, 0);
    if (!req)
        return;
    ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (ci && ci->client_addr) {
        const struct sockaddr *sa = ci->client_addr;
        if (sa->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, addr, sizeof addr);
        else if (sa->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, addr, sizeof addr);
    }
    if (req->status)
        api_metrics_http(req->route, req->route_method, req->status,
                         slim_now() - req->started);
    log_info("http %s %s %s %d %.1fms%s", addr, req->method, req->url, req->status, (slim_now() - req->started) * 1000.0,
             toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (connection closed early)");
    if (req->up.pp)
        MHD_destroy_post_processor(req->up.pp);
    api_upload_discard(&req->up);
    for (int i = 0; i < API_UPLOAD_PARTS; i++)
        slim_free(req->up.filename[i]);
    slim_free(req->body);
    slim_free(req);
    *con_cls = NULL;
}

/* Stops the reaper thread once libmicrohttpd is gone (every watch entry
 * went with its connection) or never started. */
static void stop_reaper(struct api_server *srv)
{
    pthread_mutex_lock(&srv->lock);
    srv->stop = 1;
    pthread_cond_signal(&srv->wake);
    pthread_mutex_unlock(&srv->lock);
    if (srv->reaper_started)
        pthread_join(srv->reaper, NULL);
    pthread_cond_destroy(&srv->wake);
    pthread_mutex_destroy(&srv->lock);
}

/* The listening socket, made here rather than by libmicrohttpd so that a
 * taken address is an error that says so.  libmicrohttpd's
 * MHD_OPTION_LISTENING_ADDRESS_REUSE set SO_REUSEPORT, under which a
 * second slimd on the same port started without a word and the kernel
 * shared the connections between the two daemons (issue 10).  Only
 * SO_REUSEADDR is set: a restart may bind while the last run's
 * connections sit in TIME_WAIT, but never beside a live listener.  IPv6
 * sockets are v6-only, as libmicrohttpd made them.  Returns the
 * descriptor, or -1 with err naming the address and the reason. */
static int listen_socket(const struct sockaddr *sa, const char *host, unsigned port,
                         struct slim_error *err)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0), on = 1, e;
    const char *v6 = sa->sa_family == AF_INET6 ? "[" : "";
    if (fd < 0) {
        slim_error_set(err, SLIM_EIO, "cannot make a socket: %s", strerror(errno));
        return -1;
    }
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) ||
        (sa->sa_family == AF_INET6 &&
         setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof on)) ||
        bind(fd, sa, sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                               : sizeof(struct sockaddr_in)) ||
        listen(fd, SOMAXCONN)) {
        e = errno;
        close(fd);
        if (e == EADDRINUSE)
            slim_error_set(err, SLIM_EIO, "cannot listen on %s%s%s:%u: the address is already "
                           "in use (another slimd, or another program, listens there): stop "
                           "it or choose another --listen", v6, host, *v6 ? "]" : "", port);
        else
            slim_error_set(err, SLIM_EIO, "cannot listen on %s%s%s:%u: %s", v6, host,
                           *v6 ? "]" : "", port, strerror(e));
        return -1;
    }
    return fd;
}

/* The port fd is bound to (port 0 asks the kernel for one). */
static uint16_t bound_port(int fd, uint16_t dflt)
{
    struct sockaddr_storage ss;
    socklen_t n = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &n))
        return dflt;
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

int api_server_start(struct store *st, const struct api_config *cfg,
                     const struct api_hooks *hooks, struct api_server **out,
                     struct slim_error *err)
{
    struct api_server *srv = slim_calloc(1, sizeof *srv);
    struct sockaddr_in6 a6;
    struct sockaddr_in a4;
    struct sockaddr *sa;
    /* poll(), not select(): select() cannot watch a descriptor past
     * FD_SETSIZE (1024), and libmicrohttpd refuses such connections */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                     MHD_USE_POLL | MHD_USE_ERROR_LOG;
    const union MHD_DaemonInfo *di;
    int listen_fd;
    /* libmicrohttpd copies neither: the PEM text must outlive the daemon
     * (cli.c keeps it until the server has stopped) */
    struct MHD_OptionItem tls_opts[] = {
        {MHD_OPTION_HTTPS_MEM_CERT, 0, (void *)cfg->tls_cert},
        {MHD_OPTION_HTTPS_MEM_KEY, 0, (void *)cfg->tls_key},
        {MHD_OPTION_END, 0, NULL},
    };
    struct MHD_OptionItem no_opts[] = {{MHD_OPTION_END, 0, NULL}};

    if (!srv)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    memset(&a4, 0, sizeof a4);
    memset(&a6, 0, sizeof a6);
    if (inet_pton(AF_INET, cfg->host, &a4.sin_addr) == 1) {
        a4.sin_family = AF_INET;
        a4.sin_port = htons(cfg->port);
        sa = (struct sockaddr *)&a4;
    } else if (inet_pton(AF_INET6, cfg->host, &a6.sin6_addr) == 1) {
        a6.sin6_family = AF_INET6;
        a6.sin6_port = htons(cfg->port);
        sa = (struct sockaddr *)&a6;
        flags |= MHD_USE_IPv6;
    } else {
        slim_free(srv);
        return slim_error_set(err, SLIM_EINVAL,
                              "listen address '%s' is not a numeric IPv4 or IPv6 address",
                              cfg->host);
    }
    srv->ctx.st = st;
    srv->ctx.hooks = hooks;
    srv->ctx.max_upload = cfg->max_upload;
    srv->ctx.job_memory = cfg->job_memory;
    srv->ctx.max_queued = cfg->max_queued;
    srv->ctx.min_free = cfg->min_free;
    srv->ctx.auth = cfg->auth;
    snprintf(srv->ctx.listen_host, sizeof srv->ctx.listen_host, "%s", cfg->host);
    srv->ctx.listen_any = sa->sa_family == AF_INET
                              ? a4.sin_addr.s_addr == htonl(INADDR_ANY)
                              : !memcmp(&a6.sin6_addr, &in6addr_any, sizeof in6addr_any);
    srv->ctx.allowed_hosts = cfg->allowed_hosts;
    srv->ctx.cors_origins = cfg->cors_origins;
    if (cfg->tls_cert || cfg->tls_key) {
        /* Debian builds libmicrohttpd with GnuTLS; a build without it
         * would otherwise fail later with a less helpful message */
        if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
            slim_free(srv);
            return slim_error_set(err, SLIM_EINVAL, "this libmicrohttpd was built without TLS "
                                  "support: --tls-cert/--tls-key cannot be used");
        }
        if (!cfg->tls_cert || !cfg->tls_key) {
            slim_free(srv);
            return slim_error_set(err, SLIM_EINVAL, "TLS needs both --tls-cert and --tls-key");
        }
        flags |= MHD_USE_TLS;
    }
    srv->head_timeout = cfg->conn_timeout;
    srv->ctx.conn_timeout = cfg->conn_timeout;
    srv->ctx.node = cfg->node;
    srv->ctx.role = cfg->role ? cfg->role : "all";
    srv->ctx.worker_only = cfg->role && !strcmp(cfg->role, "worker");
    if (api_watch_new(st, &srv->ctx.watch, err)) {
        slim_free(srv);
        return err->code;
    }
    pthread_mutex_init(&srv->lock, NULL);
    pthread_cond_init(&srv->wake, NULL);
    if (srv->head_timeout && pthread_create(&srv->reaper, NULL, reaper_main, srv) == 0)
        srv->reaper_started = 1;
    if ((listen_fd = listen_socket(sa, cfg->host, cfg->port, err)) < 0) {
        stop_reaper(srv);
        api_watch_free(srv->ctx.watch);
        slim_free(srv);
        return err->code;
    }
    srv->mhd = MHD_start_daemon(flags, cfg->port, NULL, NULL, on_request, &srv->ctx,
                                MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL,
                                MHD_OPTION_LISTEN_SOCKET, listen_fd,
                                MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
                                MHD_OPTION_NOTIFY_CONNECTION, on_connection, srv,
                                MHD_OPTION_CONNECTION_LIMIT, cfg->max_conns,
                                MHD_OPTION_PER_IP_CONNECTION_LIMIT, cfg->max_conns_per_ip,
                                MHD_OPTION_CONNECTION_TIMEOUT, cfg->conn_timeout,
                                MHD_OPTION_UNESCAPE_CALLBACK, unescape, NULL,
                                MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONN_MEMORY,
                                MHD_OPTION_CONNECTION_MEMORY_INCREMENT, (size_t)CONN_MEMORY_INCREMENT,
                                MHD_OPTION_ARRAY, (flags & MHD_USE_TLS) ? tls_opts : no_opts,
                                MHD_OPTION_END);
    if (!srv->mhd) {
        close(listen_fd);
        stop_reaper(srv);
        api_watch_free(srv->ctx.watch);
        slim_free(srv);
        if (flags & MHD_USE_TLS)
            return slim_error_set(err, SLIM_EIO, "cannot serve on %s:%u with TLS (a "
                                  "certificate and key that do not load or do not match? "
                                  "libmicrohttpd's message is above)", cfg->host, cfg->port);
        return slim_error_set(err, SLIM_EIO, "cannot serve on %s:%u (libmicrohttpd's message "
                              "is above)", cfg->host, cfg->port);
    }
    di = MHD_get_daemon_info(srv->mhd, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = di && di->port ? di->port : bound_port(listen_fd, cfg->port);
    *out = srv;
    return 0;
}

uint16_t api_server_port(const struct api_server *srv)
{
    return srv->port;
}

void api_server_stop(struct api_server *srv)
{
    if (!srv)
        return;
    MHD_socket s = MHD_quiesce_daemon(srv->mhd);
    if (s != MHD_INVALID_SOCKET)
        close(s);
    /* waiters answer, event streams end; then a moment for the last of
     * those answers to be sent before the connections close */
    if (api_watch_stop(srv->ctx.watch) > 0)
        usleep(100 * 1000);
    MHD_stop_daemon(srv->mhd);
    stop_reaper(srv);
    api_watch_free(srv->ctx.watch);
    slim_free(srv);
}
