/*
 * api.h - slimd's REST API on libmicrohttpd.
 *
 * The server runs libmicrohttpd with a thread per connection (polled
 * with poll(), so descriptors past FD_SETSIZE work): an upload streams
 * to disk from its own thread without holding up other clients, and
 * handlers may block on SQLite and the file system.  Connections are
 * capped in total (--max-conns) so a flood cannot create unbounded
 * threads, and per client address (--max-conns-per-ip) so that one
 * client's idle or slow sockets cannot take every slot.  A connection
 * must send a whole request head within --conn-timeout seconds of
 * opening (or of its last response) and may stay silent no longer than
 * that: libmicrohttpd's timeout is an idle timeout, reset by every byte,
 * so a client trickling its headers (slowloris) is cut off by server.c's
 * reaper instead.  A body that keeps arriving, however slowly, and a
 * handler that takes long (an upload's final fsync) are never cut.
 *
 * The API knows nothing of the runner: it talks to it through the hooks
 * below (wake the runner after a job is queued; ask it to stop a running
 * job), both safe to call from any thread.
 *
 * Who may ask what is api/auth.c's: bearer tokens and their scopes, the
 * Host check, cross-site requests, CORS and the security headers every
 * response carries.  With TLS (tls_cert and tls_key set) the same server
 * speaks HTTPS through libmicrohttpd's GnuTLS.
 */
#ifndef SLIM_API_H
#define SLIM_API_H

#include <stdint.h>
#include "passes/slim.h"
#include "storage/store.h"

struct api_hooks {
    void (*wake)(void *ud);
    void (*cancel)(void *ud, const char *job_id);
    void *ud;
};

/* --auth: tokens required, or nobody asked (loopback only; daemon/cli.c
 * enforces that before the server starts). */
enum api_auth { API_AUTH_NONE = 0, API_AUTH_TOKEN = 1 };

struct api_config {
    const char *host;        /* numeric IPv4 or IPv6 address */
    uint16_t port;
    uint64_t max_upload;     /* bytes; larger uploads get 413 */
    uint64_t job_memory;     /* bytes all running jobs may reserve; 0: no limit */
    int64_t max_queued;      /* queued jobs before POST /v1/jobs is 429; 0: no limit */
    uint64_t min_free;       /* bytes the data dir keeps free; uploads and jobs need more */
    int auth;                /* enum api_auth */
    const char *const *allowed_hosts;   /* NULL-terminated, or NULL; borrowed */
    const char *const *cors_origins;    /* NULL-terminated, or NULL; borrowed */
    const char *tls_cert;    /* PEM text of the certificate (chain), or NULL: plain HTTP */
    const char *tls_key;     /* PEM text of its private key */
    unsigned max_conns;      /* connections at once; past it new ones wait in the backlog */
    unsigned max_conns_per_ip; /* connections at once from one address; 0: no limit */
    unsigned conn_timeout;   /* seconds a connection may stay silent, and may take to send
                              * a whole request head; 0: no limit */
    const char *node;        /* --node-id (borrowed), for /v1/health and /metrics */
    const char *role;        /* --role: "api", "worker" or "all"; NULL: all */
};

struct api_server;

/* 1 when host (numeric) is a loopback address: 127.0.0.0/8, ::1, or
 * ::ffff:127.x.y.z. */
int api_host_is_loopback(const char *host);

/* Starts serving.  Borrows st and hooks (they must outlive the server).
 * *out is a new server; release with api_server_stop. */
int api_server_start(struct store *st, const struct api_config *cfg,
                     const struct api_hooks *hooks, struct api_server **out,
                     struct slim_error *err);
/* Stops accepting connections and waits for the open ones to finish,
 * then frees the server. */
void api_server_stop(struct api_server *srv);
/* The port actually bound (useful with port 0). */
uint16_t api_server_port(const struct api_server *srv);

/* ---- internal to api/: shared by the resource files ---- */

#include <microhttpd.h>

struct api_request;   /* per-request state, api/server.c */

struct api_ctx {
    struct store *st;
    const struct api_hooks *hooks;
    uint64_t max_upload;
    uint64_t job_memory;
    int64_t max_queued;
    uint64_t min_free;
    int auth;                            /* enum api_auth */
    char listen_host[64];                /* numeric, as given (no brackets) */
    int listen_any;                      /* 0.0.0.0 or :: */
    const char *const *allowed_hosts;    /* borrowed from the config */
    const char *const *cors_origins;
    struct api_watch *watch;             /* job change notices (events.c); NULL: none */
    unsigned conn_timeout;               /* --conn-timeout: event streams speak more often */
    const char *node;                    /* --node-id; NULL outside a daemon */
    const char *role;                    /* --role */
    int worker_only;                     /* --role worker: no uploads, no submissions */
};

/* ---- auth.c: the gate every request passes ---- */

/* Scopes a route needs (store.h's bits; 0: open to all) and what else
 * the gate checks for it. */
#define API_GATE_JSON 1u     /* a JSON body: form Content-Types are 415 */
#define API_GATE_FORM 2u     /* an upload or cancel that a web form could send */

/* Before routing: the Host header (DNS rebinding) and, with
 * --cors-origin, a CORS preflight (OPTIONS), which it answers itself.
 * Returns 1 to go on; 0 when it queued a reply into *ret. */
int api_gate_host(struct api_ctx *ctx, struct MHD_Connection *conn, struct api_request *req,
                  const char *method, int path_known, enum MHD_Result *ret);
/* After routing: cross-site requests, the bearer token (401) and its
 * scope (403), and the Content-Type rules of flags.  On success the
 * request's principal is set.  Returns 1 to go on; 0 when it queued a
 * reply into *ret. */
int api_gate(struct api_ctx *ctx, struct MHD_Connection *conn, struct api_request *req,
             const char *method, unsigned scope, unsigned flags, enum MHD_Result *ret);
/* Headers for every response: nosniff, a CSP unless the response set
 * its own, and CORS for an allowed Origin.  req may be NULL. */
void api_secure_response(struct MHD_Connection *conn, struct api_request *req,
                         struct MHD_Response *resp);
/* "'sha256-<base64>'" of text, for a CSP that allows exactly that inline
 * script or style; out >= 64 bytes.  0, or -1 when hashing fails. */
int api_csp_hash(const char *text, char *out, size_t len);

/* Who is asking (set by api_gate). */
struct api_principal {
    int authenticated;           /* a live token was presented */
    struct store_token token;
};
struct api_principal *api_request_principal(struct api_request *req);
struct api_ctx *api_request_ctx(struct api_request *req);
/* The owner filter for lists and gets: NULL when the caller sees every
 * row (--auth none, or an admin token), else the token's id. */
const char *api_request_owner(struct api_request *req);
/* The owner to record on a new row: the token's id, or NULL (--auth none). */
const char *api_request_creator(struct api_request *req);
/* 1 when the caller may see row (its "owner" against api_request_owner):
 * a row it may not see is answered 404, as if it did not exist, so ids
 * of other tokens' rows leak nothing. */
int api_request_sees(struct api_request *req, json_t *row);

/* Replies: each queues a response on conn and returns MHD's result.
 * body/json are stolen (freed even on failure). */
enum MHD_Result api_reply_json(struct MHD_Connection *conn, struct api_request *req, int status,
                               json_t *body, const char *location);
enum MHD_Result api_reply_error(struct MHD_Connection *conn, struct api_request *req, int code,
                                const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* Replies with err's code and message. */
enum MHD_Result api_reply_slim_error(struct MHD_Connection *conn, struct api_request *req,
                                     const struct slim_error *err);
/* Replies with text (stolen: freed with free(), even on failure) of the
 * given Content-Type. */
enum MHD_Result api_reply_text(struct MHD_Connection *conn, struct api_request *req, int status,
                               char *text, size_t len, const char *type);
enum MHD_Result api_reply_empty(struct MHD_Connection *conn, struct api_request *req, int status);
/* An HTML page (stolen, like api_reply_text) with its own
 * Content-Security-Policy. */
enum MHD_Result api_reply_html(struct MHD_Connection *conn, struct api_request *req, char *html,
                               size_t len, const char *csp);
/* An error envelope with one extra header (hname may be NULL), for
 * statuses whose header says what to do (401's WWW-Authenticate). */
enum MHD_Result api_reply_error_header(struct MHD_Connection *conn, struct api_request *req,
                                       int code, const char *hname, const char *hval,
                                       const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* Serves a file: ETag, Range (one range), If-None-Match, optional
 * Content-Disposition filename. */
enum MHD_Result api_reply_file(struct MHD_Connection *conn, struct api_request *req,
                               const char *path, const char *sha, const char *content_type,
                               const char *filename);
/* The local file of blob sha into path (>= 4096 bytes), for
 * api_reply_file: with --blobs s3 it is fetched first, unless the
 * request's If-None-Match already names it (api_reply_file then answers
 * 304 without the file).  0, or an error in err (SLIM_EIO naming s3 and
 * the endpoint). */
int api_blob_local(struct api_ctx *ctx, struct MHD_Connection *conn, const char *sha,
                   char *path, size_t len, struct slim_error *err);
void api_request_set_status(struct api_request *req, int status);

/* The request body, when the route buffers it (JSON bodies, <= 1 MiB). */
const char *api_request_body(const struct api_request *req, size_t *len);

/* Resource handlers. */
enum MHD_Result api_models_upload(struct api_ctx *ctx, struct MHD_Connection *conn,
                                  struct api_request *req);
enum MHD_Result api_models_get(struct api_ctx *ctx, struct MHD_Connection *conn,
                               struct api_request *req, const char *id, const char *sub);
enum MHD_Result api_models_list(struct api_ctx *ctx, struct MHD_Connection *conn,
                                struct api_request *req);
enum MHD_Result api_models_delete(struct api_ctx *ctx, struct MHD_Connection *conn,
                                  struct api_request *req, const char *id);
enum MHD_Result api_datasets_upload(struct api_ctx *ctx, struct MHD_Connection *conn,
                                    struct api_request *req);
enum MHD_Result api_datasets_get(struct api_ctx *ctx, struct MHD_Connection *conn,
                                 struct api_request *req, const char *id, const char *sub);
enum MHD_Result api_datasets_list(struct api_ctx *ctx, struct MHD_Connection *conn,
                                  struct api_request *req);
enum MHD_Result api_datasets_delete(struct api_ctx *ctx, struct MHD_Connection *conn,
                                    struct api_request *req, const char *id);
enum MHD_Result api_jobs_submit(struct api_ctx *ctx, struct MHD_Connection *conn,
                                struct api_request *req);
enum MHD_Result api_jobs_list(struct api_ctx *ctx, struct MHD_Connection *conn,
                              struct api_request *req);
enum MHD_Result api_jobs_get(struct api_ctx *ctx, struct MHD_Connection *conn,
                             struct api_request *req, const char *id, const char *sub);
enum MHD_Result api_jobs_cancel(struct api_ctx *ctx, struct MHD_Connection *conn,
                                struct api_request *req, const char *id);
enum MHD_Result api_metrics(struct api_ctx *ctx, struct MHD_Connection *conn,
                            struct api_request *req);
enum MHD_Result api_health(struct api_ctx *ctx, struct MHD_Connection *conn,
                           struct api_request *req);
enum MHD_Result api_dashboard(struct api_ctx *ctx, struct MHD_Connection *conn,
                              struct api_request *req);
/* pages.c: a job's page (report.html; any state) and two jobs compared
 * (?a=&b=, succeeded jobs on the same model). */
enum MHD_Result api_pages_job(struct api_ctx *ctx, struct MHD_Connection *conn,
                              struct api_request *req, const char *id);
enum MHD_Result api_pages_compare(struct api_ctx *ctx, struct MHD_Connection *conn,
                                  struct api_request *req);
/* tokens.c: /v1/tokens (admin) */
enum MHD_Result api_tokens_create(struct api_ctx *ctx, struct MHD_Connection *conn,
                                  struct api_request *req);
enum MHD_Result api_tokens_list(struct api_ctx *ctx, struct MHD_Connection *conn,
                                struct api_request *req);
enum MHD_Result api_tokens_revoke(struct api_ctx *ctx, struct MHD_Connection *conn,
                                  struct api_request *req, const char *id);

/* Upload state kept by server.c for POST /v1/models and /v1/datasets:
 * the files being written and the multipart parser when the body is
 * multipart.  A raw body is part 0.  A multipart body keeps the fields
 * its route names (`fields`, e.g. {"file", "images", "labels"}), field
 * i in part i, each streamed to its own temp file as it arrives (begun
 * when the field first appears); other fields are ignored, and a field
 * sent twice is an error.  --max-upload-bytes counts every part. */
#define API_UPLOAD_PARTS 3
struct api_upload {
    struct blob_writer *part[API_UPLOAD_PARTS];
    const char *const *fields;            /* NULL-terminated; the route's */
    struct store *st;
    struct MHD_PostProcessor *pp;
    char *filename[API_UPLOAD_PARTS];     /* multipart filename of each part, if any */
    int seen[API_UPLOAD_PARTS];           /* multipart: field i appeared */
    int failed;          /* enum slim_errno of the first failure, 0 if none */
    char msg[160];
};
struct api_upload *api_request_upload(struct api_request *req);
/* Bytes received so far, all parts together. */
uint64_t api_upload_bytes(const struct api_upload *up);
/* Aborts every part still open (their temp files go); parts already
 * handed on (set to NULL by the caller) are left alone. */
void api_upload_discard(struct api_upload *up);
/* The ?name= of the request: NULL without one, "" when empty. */
const char *api_upload_name(struct MHD_Connection *conn);
/* api_valid_name and the other parsers of request text: */
#include "api/http_parse.h"
/* Reads up to len bytes from the start of path; 0 or -1. */
int api_read_head(const char *path, unsigned char *buf, size_t len, size_t *got);

/* Parses ?limit=&offset= (defaults 50 and 0; limit 1..1000).  On a bad
 * value replies 400 and returns 0; else returns 1. */
int api_paging(struct MHD_Connection *conn, struct api_request *req, int *limit, int *offset,
               enum MHD_Result *ret);

/* Unknown query parameters are an error on list endpoints: replies 400
 * naming the first one that is not in allowed (NULL-terminated) and
 * returns 0; else returns 1. */
int api_query_check(struct MHD_Connection *conn, struct api_request *req,
                    const char *const *allowed, enum MHD_Result *ret);

/* ---- idem.c: Idempotency-Key ---- */
struct api_idem {
    int active;              /* a key was claimed: reply or release it */
    char route[32];
    char key[256];
    char owner[32];
};
/* Reads the request's Idempotency-Key (none: go on, idem inactive) and
 * claims it for this route and request (request_sha: the request's
 * SHA-256).  Returns 1 to go on; 0 when it queued a reply into *ret:
 * the first result replayed, 422 for the key used with another request,
 * 409 while that is still in progress, 400 for a malformed key. */
int api_idem_begin(struct api_ctx *ctx, struct MHD_Connection *conn, struct api_request *req,
                   const char *route, const char *request_sha, struct api_idem *idem,
                   enum MHD_Result *ret);
/* The header's shape alone, for a handler that checks it before doing
 * work (an upload): 1 when absent or well-formed; else replies 400 into
 * *ret and returns 0. */
int api_idem_check(struct MHD_Connection *conn, struct api_request *req, enum MHD_Result *ret);
/* Records a success for the claimed key (if any) and replies with it;
 * body is stolen like api_reply_json's. */
enum MHD_Result api_idem_reply(struct api_ctx *ctx, struct MHD_Connection *conn,
                               struct api_request *req, struct api_idem *idem, int status,
                               json_t *body, const char *location);
/* The request failed: the key is forgotten, so a retry runs again. */
void api_idem_release(struct api_ctx *ctx, struct api_idem *idem);
/* Hex SHA-256 of a buffer. */
int api_sha256_hex(const void *buf, size_t len, char out[65], struct slim_error *err);

/* store_model_insert and store_dataset_insert. */
typedef int (*api_insert_fn)(struct store *st, const char *owner, const char *name,
                             const char *sha, uint64_t bytes, json_t *info, json_t **row,
                             struct slim_error *err);
/* models.c: the end of every upload.  The file goes into the blob store
 * (the writer bw committed; with bw NULL the file at path, e.g. a
 * converted dataset under tmp/, adopted) and its row is inserted with
 * insert; a row that cannot be inserted takes its blob with it unless
 * another row shares it.  bw is consumed, and path removed on failure.
 * *bytes: the file's size; *row: new. */
int api_upload_keep(struct api_ctx *ctx, struct api_request *req, struct blob_writer *bw,
                    const char *path, const char *name, json_t *info, api_insert_fn insert,
                    json_t **row, uint64_t *bytes, struct slim_error *err);
/* models.c: validates the upload's part (its file: format, every bound),
 * commits it into the blob store and inserts the model row (*row, new).
 * field names the multipart field in messages (NULL: the body).  On any
 * failure every part is discarded and nothing is left behind. */
int api_model_store(struct api_ctx *ctx, struct api_request *req, int part, const char *field,
                    const char *name, json_t **row, struct slim_error *err);
/* The list handler of models and datasets: paging, ?name= and ?sha256=
 * filters, unknown parameters refused; key is the array's name. */
enum MHD_Result api_uploads_list(struct api_ctx *ctx, struct MHD_Connection *conn,
                                 struct api_request *req, const char *key,
                                 int (*find)(struct store *, const char *, const char *,
                                             const char *, int, int, json_t **, int *,
                                             struct slim_error *));
enum MHD_Result api_jobs_delete(struct api_ctx *ctx, struct MHD_Connection *conn,
                                struct api_request *req, const char *id);
enum MHD_Result api_jobs_pin(struct api_ctx *ctx, struct MHD_Connection *conn,
                             struct api_request *req, const char *id, int pin);
/* The top-level keys of a job spec that are the API's, not the
 * pipeline's (slim_spec_parse's allow list); the runner parses with it
 * too. */
extern const char *const api_spec_top_keys[];

/* misc.c: the OpenAPI document (api/openapi.yaml, compiled in). */
enum MHD_Result api_openapi(struct api_ctx *ctx, struct MHD_Connection *conn,
                            struct api_request *req);

/* ---- events.c: ?wait, the event stream, notify.url ---- */

struct api_watch;
/* Listens to st's job changes; *out is new (api_watch_free). */
int api_watch_new(struct store *st, struct api_watch **out, struct slim_error *err);
/* Wakes every waiter and event stream for good: they answer at once
 * (a wait with the job as it is, a stream by ending); waits up to 2 s
 * for them to be done.  Returns how many there were.  Any thread. */
int api_watch_stop(struct api_watch *w);
/* Stops listening and frees w; no waiter may be left (after the server
 * stopped). */
void api_watch_free(struct api_watch *w);
/* GET /v1/jobs/{id}?wait=SECONDS: with a valid wait, blocks (this
 * connection's thread) until *row's job has ended or the time passed,
 * replacing *row (owned by the caller) with the job as it is then.
 * Returns 1 to go on and reply *row; 0 when it queued a reply into
 * *ret (a bad wait: 400 naming it; the job deleted meanwhile: 404). */
int api_jobs_wait(struct api_ctx *ctx, struct MHD_Connection *conn, struct api_request *req,
                  const char *id, json_t **row, enum MHD_Result *ret);
/* GET /v1/jobs/{id}/events: text/event-stream until the job ends. */
enum MHD_Result api_jobs_events(struct api_ctx *ctx, struct MHD_Connection *conn,
                                struct api_request *req, const char *id);
/* A spec's "notify": {"url"}: *url (borrowed from spec) is NULL without
 * one; SLIM_ESPEC naming notify.url unless it is an http(s) URL. */
int api_notify_url(json_t *spec, const char **url, struct slim_error *err);
/* Queues resp (its reference is released) with status and the headers
 * every response gets; for handlers that build their own response. */
enum MHD_Result api_reply_response(struct MHD_Connection *conn, struct api_request *req,
                                   int status, struct MHD_Response *resp);

#endif
