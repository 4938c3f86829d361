/*
 * cli_submit.c - `slimd submit`: the client that CI scripts and systemd
 * timers call.  It talks to a daemon over HTTP(S) through libcurl and
 * nothing else (no store access), so it works against any slimd a URL
 * reaches:
 *
 *   1. The model.  A file is hashed (SHA-256, streamed) and looked up
 *      with GET /v1/models?sha256=HEX; a model with those bytes is
 *      reused, else the file is streamed as the body of POST /v1/models
 *      (never read whole into memory: models are gigabytes).  A server
 *      that refuses the filter (400) or finds nothing gets the upload;
 *      rows are checked for the hash here too, since an older server
 *      ignores the parameter and lists every model.  An id (mdl_...)
 *      goes into the spec as it is; --model-name NAME puts {"name":
 *      NAME} there and the server picks the newest model of that name.
 *   2. The job: POST /v1/jobs with the spec (a file, stdin or inline
 *      JSON) and --name, --label, under an Idempotency-Key of 128 random
 *      bits, so a POST retried after a lost answer is not a second job
 *      (on a server that keeps the keys; one that ignores the header
 *      may, rarely, get a second job: when the answer to a stored job
 *      is lost).
 *      The job id is printed alone on stdout (JOB=$(slimd submit ...)).
 *   3. With --wait: GET /v1/jobs/{id}?wait=N until the job ends.  A
 *      server that ignores ?wait (it answers at once, with nothing
 *      changed) is polled with a backoff instead.  Progress goes to
 *      stderr: one line rewritten in place on a terminal, a line per
 *      change otherwise (CI logs).
 *   4. The artifact and the report are streamed into temp files beside
 *      their destinations; the artifact's SHA-256 is checked against
 *      the job's, and both are fsynced and renamed into place.  A
 *      download that drops resumes with a Range request.
 *
 * The exit status is what a script branches on (cli.h, SLIMD_EXIT_*):
 * 0 ok, 2 the command line, the spec or the model cannot be used, 3 the
 * job failed or was canceled, 4 it failed a quality gate, 5 the server
 * could not be reached, 1 anything else.
 *
 * Transient failures: a server that has never answered fails at once
 * with 5 (a typo in --server should not hang a pipeline for a minute);
 * once it has answered, lost connections, timeouts and 502/503/504 are
 * retried with a backoff for up to RETRY_WINDOW seconds (a daemon
 * restart re-queues its jobs and comes back), and a 429 after its
 * Retry-After.
 *
 * Rejected: the /events stream for progress (?wait is one plain request
 * per step, needs no stream parser, and passes proxies that buffer);
 * one multipart request for upload and submit (two requests let a model
 * be reused by its hash without being sent again).
 */
#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <libgen.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "daemon/cli.h"
#include "passes/slim.h"

#define DEFAULT_SERVER "http://127.0.0.1:8420"   /* slimd serve's default --listen */
#define BODY_MAX (16u << 20)   /* a JSON answer held in memory (a page of models) */
#define RETRY_WINDOW 60.0      /* seconds a server that answered once may be away */
#define WAIT_TTY 2             /* ?wait= on a terminal: the progress line moves */
#define WAIT_LOG 30            /* ?wait= otherwise: a line at most every 30 s */
#define CANCEL_GRACE 120       /* seconds a job canceled by --timeout has to end */

struct client {
    CURL *h;
    char server[1024];       /* scheme://host[:port], no trailing slash */
    char auth[600];          /* "Authorization: Bearer ..." or "" */
    const char *cacert;
    int tty;                 /* stderr is a terminal */
    int contacted;           /* the server has answered at least once */
    int line;                /* a progress line is on the terminal */
    double last_draw;
    const char *what;        /* what a transfer's progress line says */
};

/* A file that a response body streams into, hashed on the way. */
struct sink {
    FILE *f;
    EVP_MD_CTX *md;
    uint64_t off;            /* bytes written (and hashed) so far */
    int err;                 /* errno of a failed write */
};

struct request {
    const char *method;      /* GET, POST */
    const char *path;        /* "/v1/jobs?..." */
    const char *ctype;       /* Content-Type of the body, or NULL */
    const char *data;        /* a small body, or NULL */
    size_t data_len;
    FILE *upload;            /* or a file streamed as the body */
    uint64_t upload_len;
    const char *idem;        /* Idempotency-Key, or NULL */
    long timeout;            /* seconds for the whole request; 0: none */
    struct sink *sink;       /* a 2xx body goes there instead of memory */
};

struct reply {
    long status;             /* 0: no HTTP answer (see cc) */
    CURLcode cc;
    json_t *json;            /* the body, when it is JSON */
    char code[64];           /* error.code of an error body */
    char msg[512];           /* error.message, curl's error, or the body's start */
    char filename[256];      /* Content-Disposition's filename */
    double retry_after;      /* Retry-After in seconds, or -1 */
    int local;               /* the failure was here: a file read or write */
};

struct xfer {                /* one attempt's state, for the callbacks */
    struct client *c;
    const struct request *rq;
    struct reply *r;
    char *body;
    size_t len;
    FILE *in;
    int read_err;
    int sinking;             /* the sink has had this attempt's first bytes */
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void nap(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) && errno == EINTR)
        ;
}

/* ---- messages: one rewritable line on a terminal, plain lines else ---- */

static void clear_line(struct client *c)
{
    if (c->line) {
        fputs("\r\033[K", stderr);
        c->line = 0;
    }
}

static void say(struct client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(struct client *c, const char *fmt, ...)
{
    va_list ap;
    clear_line(c);
    fputs("slimd submit: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* A progress line: rewritten in place on a terminal; elsewhere printed
 * only when the caller says it is worth a line (log != 0). */
static void progress(struct client *c, int log, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void progress(struct client *c, int log, const char *fmt, ...)
{
    va_list ap;
    if (!c->tty && !log)
        return;
    if (c->tty)
        fputs("\r\033[K", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (c->tty) {
        c->line = 1;
        fflush(stderr);
    } else {
        fputc('\n', stderr);
    }
}

static void human_bytes(double b, char *buf, size_t len)
{
    static const char *const unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (b >= 1024 && u < 4) {
        b /= 1024;
        u++;
    }
    snprintf(buf, len, u ? "%.1f %s" : "%.0f %s", b, unit[u]);
}

/* ---- one HTTP request ---- */

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    struct xfer *x = ud;
    size_t len = size * n;
    char line[512];
    const char *v;
    snprintf(line, sizeof line, "%.*s", (int)(len < sizeof line ? len : sizeof line - 1), p);
    line[strcspn(line, "\r\n")] = 0;
    if (!strncmp(line, "HTTP/", 5) && (v = strchr(line, ' '))) {
        /* a new response (after a 100 Continue, say): forget the last */
        x->r->status = strtol(v + 1, NULL, 10);
        x->r->retry_after = -1;
        x->r->filename[0] = 0;
    } else if (!strncasecmp(line, "Retry-After:", 12)) {
        x->r->retry_after = strtod(line + 12, NULL);
    } else if (!strncasecmp(line, "Content-Disposition:", 20) &&
               (v = strstr(line, "filename=\""))) {
        v += 10;
        snprintf(x->r->filename, sizeof x->r->filename, "%.*s", (int)strcspn(v, "\""), v);
    }
    return len;
}

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    struct xfer *x = ud;
    size_t len = size * n;
    struct sink *s = x->rq->sink;
    char *nb;
    if (s && x->r->status >= 200 && x->r->status < 300) {
        if (!x->sinking++ && x->r->status == 200 && s->off > 0) {
            /* asked to resume and given the whole file: start again */
            if (fflush(s->f) || ftruncate(fileno(s->f), 0) || fseeko(s->f, 0, SEEK_SET) ||
                !EVP_DigestInit_ex(s->md, EVP_sha256(), NULL)) {
                s->err = errno ? errno : EIO;
                return 0;
            }
            s->off = 0;
        }
        if (fwrite(p, 1, len, s->f) != len) {
            s->err = errno ? errno : EIO;
            return 0;
        }
        EVP_DigestUpdate(s->md, p, len);
        s->off += len;
        return len;
    }
    if (x->len + len > BODY_MAX)
        return 0;
    if (!(nb = slim_realloc(x->body, x->len + len + 1)))
        return 0;
    x->body = nb;
    memcpy(x->body + x->len, p, len);
    x->len += len;
    x->body[x->len] = 0;
    return len;
}

static size_t on_read(char *p, size_t size, size_t n, void *ud)
{
    struct xfer *x = ud;
    size_t got = fread(p, 1, size * n, x->in);
    if (got == 0 && ferror(x->in)) {
        x->read_err = errno ? errno : EIO;
        return CURL_READFUNC_ABORT;
    }
    return got;
}

static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    struct xfer *x = ud;
    struct client *c = x->c;
    double t = now(), done, total;
    char a[32], b[32];
    if (!c->tty || !c->what || t - c->last_draw < 0.2)
        return 0;
    c->last_draw = t;
    done = (double)(ultotal ? ulnow : dlnow);
    total = (double)(ultotal ? ultotal : dltotal);
    if (x->rq->sink)
        done += (double)x->rq->sink->off;   /* a resumed download counts what it had */
    human_bytes(done, a, sizeof a);
    if (total > 0) {
        human_bytes(x->rq->sink ? total + (double)x->rq->sink->off : total, b, sizeof b);
        progress(c, 0, "%s %3.0f%% (%s of %s)", c->what,
                 100.0 * done / (x->rq->sink ? total + (double)x->rq->sink->off : total), a, b);
    } else {
        progress(c, 0, "%s (%s)", c->what, a);
    }
    return 0;
}

/* The answer's JSON error envelope (or its first bytes) into r->code
 * and r->msg. */
static void read_error(struct reply *r, const char *body, size_t len)
{
    json_t *e = json_object_get(r->json, "error");
    if (json_is_object(e)) {
        snprintf(r->code, sizeof r->code, "%s",
                 json_string_value(json_object_get(e, "code")) ?: "");
        snprintf(r->msg, sizeof r->msg, "%s",
                 json_string_value(json_object_get(e, "message")) ?: "");
        return;
    }
    snprintf(r->msg, sizeof r->msg, "%.*s", (int)(len > 200 ? 200 : len), body ? body : "");
    for (char *q = r->msg; *q; q++)
        if ((unsigned char)*q < 0x20)
            *q = ' ';
    if (!r->msg[0])
        snprintf(r->msg, sizeof r->msg, "HTTP %ld with an empty body", r->status);
}

static void reply_release(struct reply *r)
{
    json_decref(r->json);
    memset(r, 0, sizeof *r);
}

static void attempt(struct client *c, const struct request *rq, struct reply *r)
{
    char url[4096], hdr[200], errbuf[CURL_ERROR_SIZE] = "";
    struct curl_slist *hl = NULL;
    struct xfer x = {.c = c, .rq = rq, .r = r, .in = rq->upload};

    reply_release(r);
    r->retry_after = -1;
    snprintf(url, sizeof url, "%s%s", c->server, rq->path);
    curl_easy_reset(c->h);
    curl_easy_setopt(c->h, CURLOPT_URL, url);
    curl_easy_setopt(c->h, CURLOPT_USERAGENT, "slimd-submit/" SLIMD_VERSION);
    curl_easy_setopt(c->h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c->h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c->h, CURLOPT_CONNECTTIMEOUT, 15L);
    /* a connection that moves no byte for two minutes is dead; ?wait
     * answers within WAIT_LOG seconds */
    curl_easy_setopt(c->h, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c->h, CURLOPT_LOW_SPEED_TIME, 120L);
    if (rq->timeout)
        curl_easy_setopt(c->h, CURLOPT_TIMEOUT, rq->timeout);
    curl_easy_setopt(c->h, CURLOPT_PROTOCOLS_STR, "http,https");
    if (c->cacert)
        curl_easy_setopt(c->h, CURLOPT_CAINFO, c->cacert);
    curl_easy_setopt(c->h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c->h, CURLOPT_HEADERDATA, &x);
    curl_easy_setopt(c->h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c->h, CURLOPT_WRITEDATA, &x);
    curl_easy_setopt(c->h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c->h, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c->h, CURLOPT_XFERINFODATA, &x);
    if (c->auth[0])
        hl = curl_slist_append(hl, c->auth);
    hl = curl_slist_append(hl, "Accept: application/json");
    if (rq->idem) {
        snprintf(hdr, sizeof hdr, "Idempotency-Key: %s", rq->idem);
        hl = curl_slist_append(hl, hdr);
    }
    if (!strcmp(rq->method, "POST")) {
        snprintf(hdr, sizeof hdr, "Content-Type:%s%s", rq->ctype ? " " : "",
                 rq->ctype ? rq->ctype : "");
        hl = curl_slist_append(hl, hdr);
        curl_easy_setopt(c->h, CURLOPT_POST, 1L);
        if (rq->upload) {
            rewind(rq->upload);
            curl_easy_setopt(c->h, CURLOPT_READFUNCTION, on_read);
            curl_easy_setopt(c->h, CURLOPT_READDATA, &x);
            curl_easy_setopt(c->h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)rq->upload_len);
        } else {
            curl_easy_setopt(c->h, CURLOPT_POSTFIELDS, rq->data ? rq->data : "");
            curl_easy_setopt(c->h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)rq->data_len);
        }
    } else {
        curl_easy_setopt(c->h, CURLOPT_HTTPGET, 1L);
        if (rq->sink && rq->sink->off)
            curl_easy_setopt(c->h, CURLOPT_RESUME_FROM_LARGE, (curl_off_t)rq->sink->off);
    }
    curl_easy_setopt(c->h, CURLOPT_HTTPHEADER, hl);

    r->cc = curl_easy_perform(c->h);
    curl_slist_free_all(hl);
    if (r->cc == CURLE_OK) {
        curl_easy_getinfo(c->h, CURLINFO_RESPONSE_CODE, &r->status);
        c->contacted = 1;
        if (x.body)
            r->json = json_loadb(x.body, x.len, 0, NULL);
        if (r->status >= 300)
            read_error(r, x.body, x.len);
    } else {
        r->status = 0;
        if (x.read_err) {
            r->local = 1;
            snprintf(r->msg, sizeof r->msg, "cannot read the model file: %s",
                     strerror(x.read_err));
        } else if (rq->sink && rq->sink->err) {
            r->local = 1;
            snprintf(r->msg, sizeof r->msg, "cannot write the download: %s",
                     strerror(rq->sink->err));
        } else {
            snprintf(r->msg, sizeof r->msg, "%s", errbuf[0] ? errbuf : curl_easy_strerror(r->cc));
            if (r->cc == CURLE_PEER_FAILED_VERIFICATION || r->cc == CURLE_SSL_CACERT_BADFILE)
                snprintf(r->msg + strlen(r->msg), sizeof r->msg - strlen(r->msg),
                         " (a self-signed server certificate needs --cacert FILE)");
        }
    }
    slim_free(x.body);
}

/* Failures of the network (and of proxies in front of the server) that
 * say nothing about the request itself. */
static int network_failure(const struct reply *r)
{
    if (r->local)
        return 0;
    switch (r->cc) {
    case CURLE_OK:
        return r->status == 502 || r->status == 503 || r->status == 504;
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
        return 1;
    default:
        return 0;
    }
}

/* One request, retried while the failure is transient: connection
 * failures once the server has answered (within RETRY_WINDOW), 429 and
 * 503 after their Retry-After (a full queue drains).  TLS verification
 * never is.  An upload is sent again from its start; a download resumes
 * where it stopped. */
static void call(struct client *c, const struct request *rq, struct reply *r)
{
    double start = now(), delay = 0.5, wait;
    int busy = 0;
    for (;;) {
        attempt(c, rq, r);
        if (r->cc == CURLE_OK && r->status == 429 && busy < 20) {
            wait = r->retry_after > 0 ? r->retry_after : 5;
            busy++;
        } else if (network_failure(r) && c->contacted && r->cc != CURLE_PEER_FAILED_VERIFICATION &&
                   now() - start + delay <= RETRY_WINDOW) {
            wait = r->status == 503 && r->retry_after > 0 ? r->retry_after : delay;
            delay = delay * 2 > 8 ? 8 : delay * 2;
        } else {
            return;
        }
        if (wait > 60)
            wait = 60;
        if (r->status)
            say(c, "%s %s: HTTP %ld%s%s: %s; again in %.1f s", rq->method, rq->path, r->status,
                r->code[0] ? " " : "", r->code, r->msg, wait);
        else
            say(c, "%s %s: %s; again in %.1f s", rq->method, rq->path, r->msg, wait);
        nap(wait);
    }
}

/* The exit status for a failed request: the network (5), a request the
 * server refused as bad input (2, when bad_input says those statuses
 * mean that here), else 1. */
static int failure_exit(const struct reply *r, int bad_input)
{
    if (r->local)
        return SLIMD_EXIT_FAILURE;
    if (network_failure(r))
        return SLIMD_EXIT_UNREACHABLE;
    if (bad_input && (r->status == 400 || r->status == 404 || r->status == 413 ||
                      r->status == 415 || r->status == 422))
        return SLIMD_EXIT_BAD_INPUT;
    return SLIMD_EXIT_FAILURE;
}

static int report_failure(struct client *c, const char *what, const struct reply *r,
                          int bad_input)
{
    if (!r->status)
        say(c, "%s: %s: %s", what, c->server, r->msg);
    else if (r->status == 401)
        say(c, "%s: HTTP 401 %s: %s (give a token with --token-file FILE or SLIMD_TOKEN)", what,
            r->code, r->msg);
    else
        say(c, "%s: HTTP %ld%s%s: %s", what, r->status, r->code[0] ? " " : "", r->code, r->msg);
    return failure_exit(r, bad_input);
}

/* ---- inputs ---- */

/* The spec: "-" is stdin, text starting with '{' (or '[', to be told it
 * is no object) is the JSON itself, anything else a file.  Returns a new reference, or NULL after saying
 * why. */
static json_t *load_spec(const char *arg)
{
    json_error_t e;
    json_t *j;
    const char *p = arg;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    if (!strcmp(arg, "-"))
        j = json_loadf(stdin, JSON_REJECT_DUPLICATES, &e);
    else if (*p == '{' || *p == '[')
        j = json_loads(arg, JSON_REJECT_DUPLICATES, &e);
    else
        j = json_load_file(arg, JSON_REJECT_DUPLICATES, &e);
    if (!j) {
        if (e.line < 0)   /* jansson could not read the file */
            fprintf(stderr, "slimd submit: --spec %s: %s\n", arg, e.text);
        else
            fprintf(stderr, "slimd submit: --spec %s: not valid JSON: %s (line %d, column %d)\n",
                    *p == '{' || *p == '[' ? "(inline)" : arg, e.text, e.line, e.column);
        return NULL;
    }
    if (!json_is_object(j)) {
        fprintf(stderr, "slimd submit: --spec %s: expected a JSON object {\"passes\": [...]}\n",
                *p == '{' || *p == '[' ? "(inline)" : arg);
        json_decref(j);
        return NULL;
    }
    return j;
}

/* The bearer token: --token-file's first line, else $SLIMD_TOKEN. */
static int load_token(const char *file, char *auth, size_t len)
{
    char tok[512] = "";
    const char *env = getenv("SLIMD_TOKEN");
    if (file) {
        FILE *f = fopen(file, "r");
        if (!f || !fgets(tok, sizeof tok, f)) {
            fprintf(stderr, "slimd submit: --token-file %s: %s\n", file,
                    f ? "empty" : strerror(errno));
            if (f)
                fclose(f);
            return -1;
        }
        fclose(f);
    } else if (env) {
        snprintf(tok, sizeof tok, "%s", env);
    }
    tok[strcspn(tok, " \t\r\n")] = 0;
    if (file && !tok[0]) {
        fprintf(stderr, "slimd submit: --token-file %s: no token on its first line\n", file);
        return -1;
    }
    if (tok[0])
        snprintf(auth, len, "Authorization: Bearer %s", tok);
    return 0;
}

static int file_sha256(FILE *f, char hex[65])
{
    unsigned char buf[1 << 16], md[32];
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned mdlen = 0;
    size_t n;
    int rc = -1;
    if (!ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL))
        goto out;
    rewind(f);
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        EVP_DigestUpdate(ctx, buf, n);
    if (ferror(f) || !EVP_DigestFinal_ex(ctx, md, &mdlen))
        goto out;
    for (unsigned i = 0; i < 32; i++)
        sprintf(hex + 2 * i, "%02x", md[i]);
    rc = 0;
out:
    EVP_MD_CTX_free(ctx);
    return rc;
}

static void random_key(char out[33])
{
    unsigned char b[16];
    if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) {
        /* no entropy source: time and pid still differ between runs */
        uint64_t t = (uint64_t)(now() * 1e9) ^ ((uint64_t)getpid() << 32);
        memcpy(b, &t, 8);
        memcpy(b + 8, &t, 8);
    }
    for (int i = 0; i < 16; i++)
        sprintf(out + 2 * i, "%02x", b[i]);
}

/* A file name's stem for the default output name: the base name without
 * a model extension, limited to [A-Za-z0-9._-]. */
static void make_stem(const char *name, char *out, size_t len)
{
    static const char *const exts[] = {".safetensors", ".onnx", ".tar", ".json", NULL};
    char copy[1024];
    size_t n;
    snprintf(copy, sizeof copy, "%s", name && *name ? name : "model");
    snprintf(out, len, "%s", basename(copy));
    n = strlen(out);
    for (int i = 0; exts[i]; i++) {
        size_t e = strlen(exts[i]);
        if (n > e && !strcmp(out + n - e, exts[i])) {
            out[n - e] = 0;
            break;
        }
    }
    for (char *p = out; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '.' || *p == '-' || *p == '_'))
            *p = '_';
    if (!out[0] || out[0] == '.')
        snprintf(out, len, "model");
}

/* An id or extension that the server sent, safe in a file name and a
 * URL path: letters, digits, '_' and '-' only. */
static int plain_id(const char *s)
{
    if (!s || !*s)
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '-'))
            return 0;
    return 1;
}

/* mkdir -p of path's directories: "a/b/c" makes a and a/b, "a/b/" also
 * a/b.  Returns 0, or -1 with errno set. */
static int mkdir_parents(const char *path)
{
    char p[4096];
    snprintf(p, sizeof p, "%s", path);
    for (char *q = p + 1; *q; q++) {
        if (*q != '/')
            continue;
        *q = 0;
        if (mkdir(p, 0755) && errno != EEXIST)
            return -1;
        *q = '/';
    }
    return 0;
}

/* ---- the model ---- */

/* A model already on the server with these bytes: GET
 * /v1/models?sha256=HEX.  Returns 1 and its id, 0 when there is none (or
 * the server cannot say), or -1 with *ex set when the server cannot be
 * reached. */
static int find_by_sha(struct client *c, const char *hex, char *id, size_t len, int *ex)
{
    struct request rq = {.method = "GET", .timeout = 60};
    struct reply r = {0};
    char path[128];
    json_t *m;
    size_t i;
    int found = 0;
    snprintf(path, sizeof path, "/v1/models?sha256=%s", hex);
    rq.path = path;
    call(c, &rq, &r);
    if (r.status == 0) {
        *ex = report_failure(c, "looking the model up", &r, 0);
        reply_release(&r);
        return -1;
    }
    /* 400: a server without the filter; 401/403: a token that may not
     * read; either way the upload decides */
    json_array_foreach(json_object_get(r.json, "models"), i, m) {
        const char *s = json_string_value(json_object_get(m, "sha256"));
        const char *mid = json_string_value(json_object_get(m, "id"));
        if (r.status == 200 && s && plain_id(mid) && !strcmp(s, hex)) {
            snprintf(id, len, "%s", mid);
            found = 1;
            break;
        }
    }
    reply_release(&r);
    return found;
}

static int upload_model(struct client *c, const char *path, FILE *f, uint64_t size, char *id,
                        size_t len)
{
    struct request rq = {.method = "POST", .ctype = "application/octet-stream", .upload = f,
                         .upload_len = size};
    struct reply r = {0};
    char copy[1024], *esc, url[1400], key[33], what[300], hb[32];
    int ex = 0;
    snprintf(copy, sizeof copy, "%s", path);
    esc = curl_easy_escape(c->h, basename(copy), 0);
    snprintf(url, sizeof url, "/v1/models?name=%s", esc ? esc : "model");
    curl_free(esc);
    random_key(key);
    rq.path = url;
    rq.idem = key;
    human_bytes((double)size, hb, sizeof hb);
    snprintf(what, sizeof what, "uploading %s", path);
    if (!c->tty)
        say(c, "uploading %s (%s)", path, hb);
    c->what = what;
    call(c, &rq, &r);
    c->what = NULL;
    clear_line(c);
    if (r.status == 200 || r.status == 201) {
        const char *mid = json_string_value(json_object_get(r.json, "id"));
        if (plain_id(mid)) {
            snprintf(id, len, "%s", mid);
            say(c, "model %s uploaded (%s)", id, hb);
        } else {
            say(c, "uploading %s: the answer has no model id", path);
            ex = SLIMD_EXIT_FAILURE;
        }
    } else {
        ex = report_failure(c, r.local ? path : "uploading the model", &r, 1);
        if (r.local)
            ex = SLIMD_EXIT_BAD_INPUT;   /* the model file could not be read */
    }
    reply_release(&r);
    return ex;
}

/* ---- downloads ---- */

/* Streams GET path into a temp file in dir, then renames it to the
 * final name: `fixed` when given, else dir/stem + the extension of the
 * server's file name (artifact) or ".report.json".  want_sha: the
 * SHA-256 the bytes must have (NULL: not checked).  final gets the path
 * written.  Returns an exit status; quiet_409 makes a 409 (nothing to
 * download yet) return -1 without a word. */
static int download(struct client *c, const char *path, const char *what, const char *fixed,
                    const char *dir, const char *stem, const char *want_sha,
                    char *final, size_t flen, int quiet_409)
{
    struct sink s = {0};
    struct request rq = {.method = "GET", .path = path, .sink = &s};
    struct reply r = {0};
    char tmp[4096], hex[65], label[300];
    unsigned char md[32];
    unsigned mdlen = 0;
    int fd, ex = SLIMD_EXIT_FAILURE;
    mode_t um;

    snprintf(tmp, sizeof tmp, "%s/.slimd-download-XXXXXX", dir);
    um = umask(0);   /* mkstemp makes 0600; the file gets what the umask allows */
    umask(um);
    if ((fd = mkstemp(tmp)) < 0 || fchmod(fd, 0666 & ~um) || !(s.f = fdopen(fd, "w+b"))) {
        say(c, "cannot create a file in %s: %s", dir, strerror(errno));
        if (fd >= 0) {
            close(fd);
            unlink(tmp);
        }
        return SLIMD_EXIT_FAILURE;
    }
    s.md = EVP_MD_CTX_new();
    if (!s.md || !EVP_DigestInit_ex(s.md, EVP_sha256(), NULL))
        goto out;
    snprintf(label, sizeof label, "downloading %s", what);
    c->what = label;
    call(c, &rq, &r);
    c->what = NULL;
    clear_line(c);
    if (r.status == 409 && quiet_409) {
        ex = -1;
        goto out;
    }
    if (r.status != 200 && r.status != 206) {
        ex = report_failure(c, label, &r, 0);
        goto out;
    }
    if (fflush(s.f) || fsync(fileno(s.f))) {
        say(c, "writing %s: %s", tmp, strerror(errno));
        goto out;
    }
    EVP_DigestFinal_ex(s.md, md, &mdlen);
    for (unsigned i = 0; i < 32; i++)
        sprintf(hex + 2 * i, "%02x", md[i]);
    if (want_sha && strcmp(hex, want_sha)) {
        say(c, "%s: the download's sha256 is %s, the server's %s: not kept", what, hex,
            want_sha);
        goto out;
    }
    if (fixed) {
        snprintf(final, flen, "%s", fixed);
    } else {
        /* the server's file name "job_x.tar" gives ".tar" (letters and
         * digits only: a name from the network never makes a path) */
        const char *ext = strrchr(r.filename, '.');
        if (!ext || !ext[1] || strlen(ext) > 16 || !plain_id(ext + 1))
            ext = ".safetensors";
        snprintf(final, flen, "%s%s%s%s", strcmp(dir, ".") ? dir : "", strcmp(dir, ".") ? "/" : "",
                 stem, ext);
    }
    if (rename(tmp, final)) {
        say(c, "cannot rename %s to %s: %s", tmp, final, strerror(errno));
        goto out;
    }
    tmp[0] = 0;
    ex = 0;
out:
    c->what = NULL;
    if (s.f)
        fclose(s.f);
    if (tmp[0])
        unlink(tmp);
    EVP_MD_CTX_free(s.md);
    reply_release(&r);
    return ex;
}

/* ---- the job ---- */

/* error.code and error.message of a finished job: the object {"code",
 * "message"}, or the older pair of "error" text and "error_code". */
static void job_error(json_t *job, const char **code, const char **msg)
{
    json_t *e = json_object_get(job, "error");
    if (json_is_object(e)) {
        *code = json_string_value(json_object_get(e, "code"));
        *msg = json_string_value(json_object_get(e, "message"));
    } else {
        *code = json_string_value(json_object_get(job, "error_code"));
        *msg = json_string_value(e);
    }
    if (!*code)
        *code = "";
    if (!*msg)
        *msg = "";
}

static int finished(const char *state)
{
    return state && (!strcmp(state, "succeeded") || !strcmp(state, "failed") ||
                     !strcmp(state, "canceled"));
}

static int cancel_job(struct client *c, const char *id)
{
    struct request rq = {.method = "POST", .timeout = 60};
    struct reply r = {0};
    char path[200];
    int ok;
    snprintf(path, sizeof path, "/v1/jobs/%s/cancel", id);
    rq.path = path;
    call(c, &rq, &r);
    ok = r.status == 200;
    if (!ok)
        report_failure(c, "canceling the job", &r, 0);
    reply_release(&r);
    return ok ? 0 : -1;
}

/* Waits for the job to end; *job gets its last JSON (a new reference).
 * timeout: seconds from now, 0 for none; when it passes the job is
 * canceled.  Returns 0 or an exit status. */
static int wait_job(struct client *c, const char *id, double timeout, json_t **job)
{
    double start = now(), backoff = 0.25, last_line = 0, seen_at = 0, seen_prog = 0;
    int use_wait = 1, canceled = 0, wait_s = c->tty ? WAIT_TTY : WAIT_LOG;
    char path[256], last[200] = "";
    struct request rq = {.method = "GET", .path = path};
    struct reply r = {0};

    *job = NULL;
    for (;;) {
        double t0 = now(), left = timeout > 0 ? timeout - (t0 - start) : 0;
        int w = wait_s;
        const char *state, *stage;
        double prog;
        char cur[200];
        if (canceled && t0 - start > timeout + CANCEL_GRACE) {
            say(c, "job %s was asked to cancel %.0f s ago and has not ended: giving up", id,
                (double)CANCEL_GRACE);
            return SLIMD_EXIT_FAILURE;
        }
        if (timeout > 0 && left <= 0 && !canceled) {
            say(c, "job %s has not ended within --timeout %.0f s: canceling it", id, timeout);
            canceled = 1;
            if (cancel_job(c, id) == 0)
                use_wait = 0;   /* its end is close: look again at once */
        }
        if (timeout > 0 && left > 0 && left < w)
            w = (int)left + 1;
        if (use_wait && !canceled)
            snprintf(path, sizeof path, "/v1/jobs/%s?wait=%d", id, w);
        else
            snprintf(path, sizeof path, "/v1/jobs/%s", id);
        rq.timeout = (use_wait ? w : 0) + 60;
        call(c, &rq, &r);
        if (r.status == 400 && use_wait) {   /* a server that refuses ?wait: poll */
            use_wait = 0;
            continue;
        }
        if (r.status != 200 || !json_is_object(r.json)) {
            int ex = report_failure(c, "reading the job", &r, 0);
            reply_release(&r);
            return ex;
        }
        state = json_string_value(json_object_get(r.json, "state"));
        stage = json_string_value(json_object_get(r.json, "stage"));
        prog = json_number_value(json_object_get(r.json, "progress"));
        snprintf(cur, sizeof cur, "%s %s %3.0f%%", state ? state : "?", stage ? stage : "",
                 100 * prog);
        if (finished(state)) {
            clear_line(c);
            *job = json_incref(r.json);
            reply_release(&r);
            return 0;
        }
        {
            /* a line in a log: on a change of state or stage, or every
             * 10 s of progress */
            int changed = strcmp(cur, last) != 0;
            int log = changed && (strncmp(cur, last, strlen(cur) - 4) ||
                                  now() - last_line >= 10);
            /* the time left, from the progress seen made since it was
             * first seen running (this clock only: the server's may
             * differ) */
            char eta[48] = "";
            if (state && !strcmp(state, "running") && !seen_at) {
                seen_at = now();
                seen_prog = prog;
            }
            if (seen_at && prog - seen_prog >= 0.02 && prog < 1)
                snprintf(eta, sizeof eta, ", about %.0f s left",
                         (now() - seen_at) * (1 - prog) / (prog - seen_prog));
            progress(c, log, "job %s %s%s%s %3.0f%% (%.0f s%s)", id, state ? state : "?",
                     stage && *stage ? ", " : "", stage ? stage : "", 100 * prog, now() - start,
                     eta);
            if (log)
                last_line = now();
            /* the server ignored ?wait when it answered at once and
             * nothing changed: poll, backing off to 5 s */
            if (!use_wait || canceled || (now() - t0 < 0.5 * w && !changed)) {
                nap(backoff);
                backoff = backoff * 2 > 5 ? 5 : backoff * 2;
            } else {
                backoff = 0.25;
            }
            snprintf(last, sizeof last, "%s", cur);
        }
        reply_release(&r);
    }
}

/* The report's warnings[] (a pass that selected nothing, a skipped
 * tensor...), the first few, so a CI log shows them. */
static void print_warnings(struct client *c, const char *path)
{
    json_t *rep = json_load_file(path, 0, NULL), *w;
    json_t *ws = json_object_get(rep, "warnings");
    size_t i, n = json_array_size(ws);
    json_array_foreach(ws, i, w) {
        if (i == 5) {
            say(c, "... %zu more warnings in %s", n - 5, path);
            break;
        }
        say(c, "warning: %s: %s", json_string_value(json_object_get(w, "code")) ?: "?",
            json_string_value(json_object_get(w, "message")) ?: "");
    }
    json_decref(rep);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: slimd submit [MODEL_FILE_OR_ID] --spec SPEC [--server URL] [--wait]\n"
            "                    [-o OUT] [--report FILE] [--model-name NAME]\n"
            "                    [--name JOBNAME] [--label KEY=VALUE]... [--token-file FILE]\n"
            "                    [--cacert FILE] [--timeout S]\n"
            "\n"
            "Submits a compression job to a slimd server and, with --wait, waits for it,\n"
            "then downloads its artifact and report.  The job id is printed on stdout;\n"
            "progress and messages go to stderr.\n"
            "\n"
            "  MODEL_FILE_OR_ID    a model file (.safetensors, .onnx, or a tar of a sharded\n"
            "                      checkpoint): reused when the server has a model with the\n"
            "                      same sha256, else uploaded under its file name; or a\n"
            "                      model id (mdl_...); or\n"
            "                      nothing, with --model-name or a \"model\" in the spec\n"
            "  --spec SPEC         the job spec: a JSON file, - for stdin, or the JSON itself\n"
            "                      ('{\"passes\": [...]}'); its \"model\" is replaced by the\n"
            "                      model given here\n"
            "  --server URL        http(s)://host:port (SLIMD_SERVER; default\n"
            "                      %s)\n"
            "  --wait              wait for the job to end, then download its artifact to OUT\n"
            "                      and its report; -o and --report imply it\n"
            "  -o, --output OUT    the artifact's file, or a directory (existing, or ending\n"
            "                      in /) for the default name MODEL.JOB_ID.EXT (MODEL: the\n"
            "                      file's stem or the model's name; EXT: safetensors, onnx\n"
            "                      or tar, as the server sends); missing directories are made\n"
            "  --report FILE       the report JSON (default: OUT without its extension,\n"
            "                      .report.json); a job that fails a gate still has one\n"
            "  --model-name NAME   the newest model of that name on the server\n"
            "                      (\"model\": {\"name\": NAME})\n"
            "  --name JOBNAME      the job's \"name\"\n"
            "  --label KEY=VALUE   one of the job's \"labels\"; repeatable\n"
            "  --token-file FILE   a bearer token on the file's first line (default:\n"
            "                      SLIMD_TOKEN); --wait needs a token with the read scope\n"
            "  --cacert FILE       CA certificates (PEM) for an https server's certificate\n"
            "  --timeout S         cancel the job if it has not ended S seconds after it was\n"
            "                      submitted (exit 3); interrupting slimd submit leaves\n"
            "                      the job running\n"
            "\n"
            "exit status:\n"
            "  0  submitted (without --wait), or succeeded and downloaded\n"
            "  1  anything else: a bad token (401/403), a full server (507), an output\n"
            "     file that cannot be written, a download whose sha256 does not match\n"
            "  2  bad command line, spec or model: a spec or model file that cannot be read\n"
            "     or parsed, a model id or name that does not exist, or the server's\n"
            "     400/404/413/415/422 for the upload or the spec (its message is printed)\n"
            "  3  the job failed (its error code and message are printed) or was canceled\n"
            "  4  the job failed a quality gate (error code GATE_FAILED)\n"
            "  5  the server could not be reached: DNS, connection refused, TLS, timeout\n"
            "     (one that answered before is retried for %.0f s first)\n",
            DEFAULT_SERVER, RETRY_WINDOW);
}

int slimd_submit(int argc, char **argv)
{
    static const struct option opts[] = {
        {"spec", required_argument, NULL, 's'},
        {"server", required_argument, NULL, 'S'},
        {"wait", no_argument, NULL, 'w'},
        {"output", required_argument, NULL, 'o'},
        {"report", required_argument, NULL, 'r'},
        {"model-name", required_argument, NULL, 'm'},
        {"name", required_argument, NULL, 'n'},
        {"label", required_argument, NULL, 'l'},
        {"token-file", required_argument, NULL, 't'},
        {"cacert", required_argument, NULL, 'C'},
        {"timeout", required_argument, NULL, 'T'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *spec_arg = NULL, *server = getenv("SLIMD_SERVER"), *out = NULL, *report = NULL;
    const char *model_name = NULL, *job_name = NULL, *token_file = NULL, *model = NULL;
    const char *code, *msg, *state, *want;
    struct client c = {0};
    struct request rq = {.method = "POST", .path = "/v1/jobs", .ctype = "application/json",
                         .timeout = 120};
    struct reply r = {0};
    json_t *spec = NULL, *labels = NULL, *job = NULL, *totals;
    char *body = NULL, key[33], model_id[128] = "", stem[256] = "", job_id[128] = "";
    char dir[4096] = ".", fstem[600], art_path[4096] = "", rep_path[4096] = "", hex[65];
    const char *fixed_out = NULL;
    FILE *mf = NULL;
    double timeout = 0;
    int wait = 0, ch, ex = SLIMD_EXIT_BAD_INPUT;
    struct stat st;
    uint64_t model_size = 0;

    optind = 1;
    labels = json_object();
    while ((ch = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        switch (ch) {
        case 's': spec_arg = optarg; break;
        case 'S': server = optarg; break;
        case 'w': wait = 1; break;
        case 'o': out = optarg; wait = 1; break;
        case 'r': report = optarg; wait = 1; break;
        case 'm': model_name = optarg; break;
        case 'n': job_name = optarg; break;
        case 't': token_file = optarg; break;
        case 'C': c.cacert = optarg; break;
        case 'T': {
            char *end;
            timeout = strtod(optarg, &end);
            if (*end || !(timeout > 0) || timeout > 1e7) {
                fprintf(stderr, "slimd submit: --timeout '%s': expected seconds > 0\n", optarg);
                goto out;
            }
            break;
        }
        case 'l': {
            const char *eq = strchr(optarg, '=');
            if (!eq || eq == optarg) {
                fprintf(stderr, "slimd submit: --label '%s': expected KEY=VALUE\n", optarg);
                goto out;
            }
            {
                char k[256];
                snprintf(k, sizeof k, "%.*s", (int)(eq - optarg), optarg);
                json_object_set_new(labels, k, json_string(eq + 1));
            }
            break;
        }
        case 'h': usage(stdout); ex = 0; goto out;
        default: usage(stderr); goto out;
        }
    }
    if (optind < argc)
        model = argv[optind++];
    if (optind < argc) {
        fprintf(stderr, "slimd submit: unexpected argument '%s'\n", argv[optind]);
        goto out;
    }
    if (!spec_arg) {
        fprintf(stderr, "slimd submit: --spec SPEC is required (a JSON file, - for stdin, or "
                "the JSON itself)\n");
        goto out;
    }
    if (model && model_name) {
        fprintf(stderr, "slimd submit: give the model as MODEL_FILE_OR_ID or --model-name, "
                "not both\n");
        goto out;
    }
    if (!server || !*server)
        server = DEFAULT_SERVER;
    if (strncmp(server, "http://", 7) && strncmp(server, "https://", 8)) {
        fprintf(stderr, "slimd submit: --server '%s': expected http://HOST:PORT or "
                "https://HOST:PORT\n", server);
        goto out;
    }
    snprintf(c.server, sizeof c.server, "%s", server);
    while (strlen(c.server) > 8 && c.server[strlen(c.server) - 1] == '/')
        c.server[strlen(c.server) - 1] = 0;
    if (!(spec = load_spec(spec_arg)))
        goto out;
    ex = SLIMD_EXIT_FAILURE;
    if (load_token(token_file, c.auth, sizeof c.auth))
        goto out;

    /* the model: a file, an id, a name, or the spec's own */
    ex = SLIMD_EXIT_BAD_INPUT;
    if (model && stat(model, &st) == 0) {
        if (S_ISDIR(st.st_mode)) {
            fprintf(stderr, "slimd submit: %s is a directory: upload a sharded checkpoint as a "
                    "tar of its folder (tar -cf model.tar -C DIR .)\n", model);
            goto out;
        }
        if (!(mf = fopen(model, "rb"))) {
            fprintf(stderr, "slimd submit: %s: %s\n", model, strerror(errno));
            goto out;
        }
        model_size = (uint64_t)st.st_size;
        make_stem(model, stem, sizeof stem);
    } else if (model && !strncmp(model, "mdl_", 4) && !strchr(model, '/')) {
        snprintf(model_id, sizeof model_id, "%s", model);
    } else if (model) {
        fprintf(stderr, "slimd submit: %s: %s (expected a model file or a model id mdl_...)\n",
                model, strerror(errno));
        goto out;
    } else if (model_name) {
        json_object_set_new(spec, "model", json_pack("{s:s}", "name", model_name));
        make_stem(model_name, stem, sizeof stem);
    } else if (!json_object_get(spec, "model")) {
        fprintf(stderr, "slimd submit: no model: give MODEL_FILE_OR_ID, --model-name NAME, or "
                "\"model\" in the spec\n");
        goto out;
    }
    if (job_name)
        json_object_set_new(spec, "name", json_string(job_name));
    if (json_object_size(labels)) {
        json_t *have = json_object_get(spec, "labels");
        if (json_is_object(have))
            json_object_update(have, labels);
        else
            json_object_set(spec, "labels", labels);
    }
    /* where the downloads go, checked before any work is done: OUT's
     * directories are made (OUT itself too when it ends in '/') */
    for (int i = 0; i < 2; i++) {
        const char *f = i ? report : out;
        if (f && mkdir_parents(f)) {
            fprintf(stderr, "slimd submit: cannot make the directories of %s: %s\n", f,
                    strerror(errno));
            ex = SLIMD_EXIT_FAILURE;
            goto out;
        }
    }
    if (out && stat(out, &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(dir, sizeof dir, "%s", out);
        while (strlen(dir) > 1 && dir[strlen(dir) - 1] == '/')
            dir[strlen(dir) - 1] = 0;
    } else if (out) {
        char copy[4096];
        snprintf(copy, sizeof copy, "%s", out);
        snprintf(dir, sizeof dir, "%s", dirname(copy));
        fixed_out = out;
    }
    if (wait && access(dir, W_OK)) {
        fprintf(stderr, "slimd submit: -o %s: cannot write in %s: %s\n", out ? out : ".", dir,
                strerror(errno));
        ex = SLIMD_EXIT_FAILURE;
        goto out;
    }

    ex = SLIMD_EXIT_FAILURE;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) || !(c.h = curl_easy_init())) {
        fprintf(stderr, "slimd submit: cannot start libcurl\n");
        goto out;
    }
    c.tty = isatty(STDERR_FILENO);

    if (mf) {
        int found;
        if (file_sha256(mf, hex)) {
            fprintf(stderr, "slimd submit: %s: %s\n", model, strerror(errno ? errno : EIO));
            ex = SLIMD_EXIT_BAD_INPUT;
            goto out;
        }
        found = find_by_sha(&c, hex, model_id, sizeof model_id, &ex);
        if (found < 0)
            goto out;
        if (found)
            say(&c, "model %s has the same bytes as %s (sha256 %.12s): not uploaded again",
                model_id, model, hex);
        else if ((ex = upload_model(&c, model, mf, model_size, model_id,
                                    sizeof model_id)))
            goto out;
    }
    if (model_id[0])
        json_object_set_new(spec, "model", json_string(model_id));

    /* the job */
    if (!(body = json_dumps(spec, JSON_COMPACT))) {
        ex = SLIMD_EXIT_FAILURE;
        goto out;
    }
    random_key(key);
    rq.data = body;
    rq.data_len = strlen(body);
    rq.idem = key;
    call(&c, &rq, &r);
    if (r.status != 201 && r.status != 202 && r.status != 200) {
        ex = report_failure(&c, "submitting the job", &r, 1);
        goto out;
    }
    snprintf(job_id, sizeof job_id, "%s",
             json_string_value(json_object_get(r.json, "id")) ?: "");
    if (!plain_id(job_id)) {
        say(&c, "submitting the job: the answer has no job id");
        ex = SLIMD_EXIT_FAILURE;
        goto out;
    }
    printf("%s\n", job_id);
    fflush(stdout);
    say(&c, "job %s submitted to %s", job_id, c.server);
    if (!stem[0]) {   /* a model given by id or in the spec: its name */
        struct request mq = {.method = "GET", .timeout = 60};
        struct reply mr = {0};
        char mpath[200];
        const char *mid = json_string_value(json_object_get(r.json, "model"));
        if (plain_id(mid)) {
            snprintf(mpath, sizeof mpath, "/v1/models/%s", mid);
            mq.path = mpath;
            call(&c, &mq, &mr);
        }
        make_stem(mr.status == 200 ? json_string_value(json_object_get(mr.json, "name")) : mid,
                  stem, sizeof stem);
        reply_release(&mr);
    }
    reply_release(&r);
    if (!wait) {
        ex = 0;
        goto out;
    }

    if ((ex = wait_job(&c, job_id, timeout, &job)))
        goto out;
    state = json_string_value(json_object_get(job, "state"));
    job_error(job, &code, &msg);
    snprintf(fstem, sizeof fstem, "%s.%s", stem, job_id);
    if (!strcmp(state, "succeeded")) {
        char apath[256];
        want = json_string_value(json_object_get(json_object_get(job, "artifact"), "sha256"));
        snprintf(apath, sizeof apath, "/v1/jobs/%s/artifact", job_id);
        if ((ex = download(&c, apath, "the artifact", fixed_out, dir, fstem, want,
                           art_path, sizeof art_path, 0)))
            goto out;
    }
    /* the report: --report, else beside the artifact (OUT without its
     * extension, .report.json); a failed job has one only when it ran to
     * the end (a missed gate), so there a 409 is no error */
    {
        char rpath[256], rdir[4096], want_rep[4096], copy[4096];
        char *slash, *dot;
        int rex;
        if (report) {
            snprintf(want_rep, sizeof want_rep, "%s", report);
        } else if (art_path[0] || fixed_out) {
            snprintf(want_rep, sizeof want_rep, "%s", art_path[0] ? art_path : fixed_out);
            slash = strrchr(want_rep, '/');
            dot = strrchr(want_rep, '.');
            if (dot && (!slash || dot > slash + 1))
                *dot = 0;
            snprintf(want_rep + strlen(want_rep), sizeof want_rep - strlen(want_rep),
                     ".report.json");
        } else {
            snprintf(want_rep, sizeof want_rep, "%s%s%s.report.json", strcmp(dir, ".") ? dir : "",
                     strcmp(dir, ".") ? "/" : "", fstem);
        }
        snprintf(copy, sizeof copy, "%s", want_rep);
        snprintf(rdir, sizeof rdir, "%s", dirname(copy));
        snprintf(rpath, sizeof rpath, "/v1/jobs/%s/report", job_id);
        rex = download(&c, rpath, "the report", want_rep, rdir, fstem, NULL, rep_path,
                       sizeof rep_path, strcmp(state, "succeeded") != 0);
        if (rex > 0 && !strcmp(state, "succeeded")) {
            ex = rex;
            goto out;
        }
        if (rex)
            rep_path[0] = 0;
    }
    if (rep_path[0])
        print_warnings(&c, rep_path);
    if (!strcmp(state, "succeeded")) {
        json_t *rep = json_load_file(rep_path, 0, NULL);
        totals = json_object_get(rep, "totals");
        say(&c, "job %s succeeded: %lld -> %lld bytes (ratio %.2f); artifact %s, report %s",
            job_id, (long long)json_integer_value(json_object_get(totals, "bytes_before")),
            (long long)json_integer_value(json_object_get(totals, "bytes_after")),
            json_number_value(json_object_get(totals, "ratio")), art_path, rep_path);
        json_decref(rep);
        ex = 0;
    } else if (!strcmp(state, "failed") && !strcmp(code, "GATE_FAILED")) {
        say(&c, "job %s failed a quality gate: %s%s%s", job_id, msg,
            rep_path[0] ? "; report " : "", rep_path);
        ex = SLIMD_EXIT_GATE_FAILED;
    } else if (!strcmp(state, "failed")) {
        say(&c, "job %s failed%s%s%s: %s", job_id, code[0] ? " (" : "", code, code[0] ? ")" : "",
            msg);
        ex = SLIMD_EXIT_JOB_FAILED;
    } else {
        say(&c, "job %s was canceled%s%s", job_id, msg[0] ? ": " : "", msg);
        ex = SLIMD_EXIT_JOB_FAILED;
    }
out:
    reply_release(&r);
    json_decref(job);
    json_decref(spec);
    json_decref(labels);
    free(body);   /* json_dumps: jansson's default allocator */
    if (mf)
        fclose(mf);
    if (c.h)
        curl_easy_cleanup(c.h);
    curl_global_cleanup();
    return ex;
}
