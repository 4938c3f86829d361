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
 * dataset's IDX images and labels); JSON bodies are
 * buffered up to 1 MiB.  An error found mid-body (too large, disk full)
 * is remembered, the rest of the body is drained, and the error is sent
 * at the end; an upload whose Content-Length is already too large gets
 * its 413 before a byte of it is read.
 *
 * Routes are a table of (method, pattern) -> handler; patterns have
 * {id} segments.  A path that matches with another method gets 405 and
 * an Allow header listing the methods it has.  The request text that
 * slimd parses itself (Range, unescaping, route patterns, names, query
 * integers) is in http_parse.c, where the fuzz target reaches it.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "api/api.h"
#include "api/http_parse.h"
#include "daemon/log.h"

#define JSON_BODY_MAX (1u << 20)
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

struct api_server {
    struct MHD_Daemon *mhd;
    struct api_ctx ctx;
    uint16_t port;
};

enum body_mode { BODY_NONE, BODY_JSON, BODY_UPLOAD };

struct api_request {
    enum body_mode mode;
    char *body;
    size_t body_len;
    int body_too_big;
    struct api_upload up;
    int status;
    double started;
    int routed;
    char method[8];
    char url[256];
};

struct route {
    const char *method;
    const char *pattern;   /* "/v1/models/{id}/file" */
    enum body_mode mode;
    int kind;
    const char *const *fields;   /* BODY_UPLOAD: the multipart fields kept, in part order */
};

enum route_kind {
    R_HEALTH, R_MODELS_LIST, R_MODELS_UPLOAD, R_MODEL_GET, R_MODEL_DELETE, R_MODEL_FILE,
    R_DATASETS_LIST, R_DATASETS_UPLOAD, R_DATASET_GET, R_DATASET_DELETE, R_DATASET_FILE,
    R_JOBS_LIST, R_JOBS_SUBMIT, R_JOB_GET, R_JOB_CANCEL, R_JOB_REPORT, R_JOB_REPORT_HTML,
    R_JOB_ARTIFACT, R_METRICS, R_DASHBOARD,
};

static const char *const model_fields[] = {"file", NULL};
/* a dataset is one safetensors file, or IDX images and labels */
static const char *const dataset_fields[] = {"file", "images", "labels", NULL};

static const struct route routes[] = {
    {"GET", "/v1/health", BODY_NONE, R_HEALTH, NULL},
    {"GET", "/v1/models", BODY_NONE, R_MODELS_LIST, NULL},
    {"POST", "/v1/models", BODY_UPLOAD, R_MODELS_UPLOAD, model_fields},
    {"GET", "/v1/models/{id}", BODY_NONE, R_MODEL_GET, NULL},
    {"DELETE", "/v1/models/{id}", BODY_NONE, R_MODEL_DELETE, NULL},
    {"GET", "/v1/models/{id}/file", BODY_NONE, R_MODEL_FILE, NULL},
    {"GET", "/v1/datasets", BODY_NONE, R_DATASETS_LIST, NULL},
    {"POST", "/v1/datasets", BODY_UPLOAD, R_DATASETS_UPLOAD, dataset_fields},
    {"GET", "/v1/datasets/{id}", BODY_NONE, R_DATASET_GET, NULL},
    {"DELETE", "/v1/datasets/{id}", BODY_NONE, R_DATASET_DELETE, NULL},
    {"GET", "/v1/datasets/{id}/file", BODY_NONE, R_DATASET_FILE, NULL},
    {"GET", "/v1/jobs", BODY_NONE, R_JOBS_LIST, NULL},
    {"POST", "/v1/jobs", BODY_JSON, R_JOBS_SUBMIT, NULL},
    {"GET", "/v1/jobs/{id}", BODY_NONE, R_JOB_GET, NULL},
    {"POST", "/v1/jobs/{id}/cancel", BODY_NONE, R_JOB_CANCEL, NULL},
    {"GET", "/v1/jobs/{id}/report", BODY_NONE, R_JOB_REPORT, NULL},
    {"GET", "/v1/jobs/{id}/report.html", BODY_NONE, R_JOB_REPORT_HTML, NULL},
    {"GET", "/v1/jobs/{id}/artifact", BODY_NONE, R_JOB_ARTIFACT, NULL},
    {"GET", "/metrics", BODY_NONE, R_METRICS, NULL},
    {"GET", "/", BODY_NONE, R_DASHBOARD, NULL},
};
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
    r = MHD_queue_response(conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return r;
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

enum MHD_Result api_reply_empty(struct MHD_Connection *conn, struct api_request *req, int status)
{
    return queue(conn, req, status,
                 MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT));
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
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) != 0) {
        if (fd >= 0)
            close(fd);
        return api_reply_error(conn, req, SLIM_EIO, "stored file %s is missing: %s", sha,
                               strerror(errno));
    }
    len = (uint64_t)st.st_size;
    if (inm && (strstr(inm, etag) || !strcmp(inm, "*"))) {
        close(fd);
        resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
        if (resp)
            MHD_add_response_header(resp, "ETag", etag);
        return queue(conn, req, 304, resp);
    }
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
    case R_JOB_REPORT_HTML: return api_jobs_get(ctx, conn, req, id, "report.html");
    case R_JOB_ARTIFACT: return api_jobs_get(ctx, conn, req, id, "artifact");
    case R_METRICS: return api_metrics(ctx, conn, req);
    case R_DASHBOARD: return api_dashboard(ctx, conn, req);
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
    char id[128], allow[64];
    int path_known = 0;

    allow[0] = 0;
    for (size_t i = 0; i < N_ROUTES; i++) {
        if (!api_route_match(routes[i].pattern, url, id, sizeof id))
            continue;
        path_known = 1;
        if (!strcmp(routes[i].method, method) ||
            (!strcmp(method, "HEAD") && !strcmp(routes[i].method, "GET")))
            r = &routes[i];
        else if (!strstr(allow, routes[i].method))
            snprintf(allow + strlen(allow), sizeof allow - strlen(allow), "%s%s",
                     allow[0] ? ", " : "", routes[i].method);
    }

    if (!req) {
        req = slim_calloc(1, sizeof *req);
        if (!req)
            return MHD_NO;
        req->started = slim_now();
        snprintf(req->method, sizeof req->method, "%s", method);
        snprintf(req->url, sizeof req->url, "%s", url);
        *con_cls = req;
        if (!r) {
            if (path_known)
                return reply_error_status(conn, req, 405, "METHOD_NOT_ALLOWED",
                                          "method not allowed for this path", "Allow", allow);
            return api_reply_error(conn, req, SLIM_ENOTFOUND, "no such endpoint: %s %.200s",
                                   method, url);
        }
        req->mode = r->mode;
        if (r->mode == BODY_UPLOAD) {
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
        return api_reply_error(conn, req, SLIM_ETOOBIG, "request body exceeds %u bytes",
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
    (void)cls;
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
    api_metrics_count(req->status);
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

int api_server_start(struct store *st, const struct api_config *cfg,
                     const struct api_hooks *hooks, struct api_server **out,
                     struct slim_error *err)
{
    struct api_server *srv = slim_calloc(1, sizeof *srv);
    struct sockaddr_in6 a6;
    struct sockaddr_in a4;
    struct sockaddr *sa;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                     MHD_USE_ERROR_LOG;
    const union MHD_DaemonInfo *di;

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
    srv->mhd = MHD_start_daemon(flags, cfg->port, NULL, NULL, on_request, &srv->ctx,
                                MHD_OPTION_SOCK_ADDR, sa,
                                MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
                                MHD_OPTION_CONNECTION_LIMIT, (unsigned)256,
                                MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)300,
                                MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned)1,
                                MHD_OPTION_UNESCAPE_CALLBACK, unescape, NULL,
                                MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONN_MEMORY,
                                MHD_OPTION_CONNECTION_MEMORY_INCREMENT, (size_t)CONN_MEMORY_INCREMENT,
                                MHD_OPTION_END);
    if (!srv->mhd) {
        slim_free(srv);
        return slim_error_set(err, SLIM_EIO, "cannot listen on %s:%u (address in use?)",
                              cfg->host, cfg->port);
    }
    di = MHD_get_daemon_info(srv->mhd, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = di ? di->port : cfg->port;
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
    MHD_stop_daemon(srv->mhd);
    slim_free(srv);
}
