/*
 * auth.c - who may ask what: the gates every request passes before its
 * handler runs, and the headers every response carries.
 *
 * In the order a request meets them:
 *
 *  1. Host (api_gate_host): a web page that rebinds its own DNS name to
 *     127.0.0.1 reaches a loopback daemon as "same origin", and its
 *     requests say "Host: evil.example:8420".  Only names this daemon is
 *     known by pass: IP literals (a rebinding needs a name, so an IP is
 *     never one) that are the listen address (any IP when listening on
 *     0.0.0.0 or ::), "localhost" and *.localhost (browsers resolve them
 *     to loopback themselves), and each --allowed-host NAME ("*" turns
 *     the check off, for a proxy that rewrites Host).  Else 403.
 *  2. CORS preflight: with --cors-origin ORIGIN, an OPTIONS from that
 *     origin is answered 204 with the methods and headers it may use;
 *     from another, 403.  Without --cors-origin no CORS header is ever
 *     sent, so browsers keep other origins' pages from reading answers.
 *  3. Cross-site (api_gate, unsafe methods): as Go's
 *     net/http.CrossOriginProtection does, a request whose
 *     Sec-Fetch-Site is not same-origin or none, or (from browsers that
 *     do not send that) whose Origin is not this Host, is a web page of
 *     another site acting through the user's browser: 403, unless it is
 *     the --cors-origin.  curl and scripts send neither header.
 *  4. The token (--auth token): "Authorization: Bearer slimd_...",
 *     found by its hash (storage/token.c).  None or a bad one is 401 with
 *     WWW-Authenticate: Bearer (RFC 6750); a scope the route needs and
 *     the token lacks is 403 naming the scope.  admin implies read and
 *     submit; submit does not imply read (a timer that only submits
 *     needs no more).
 *  5. Content-Type: a web form can POST text/plain,
 *     application/x-www-form-urlencoded or multipart/form-data to any
 *     site without a preflight.  JSON endpoints take none of them (415).
 *     Uploads take all three (curl -F is multipart, curl --data-binary
 *     is urlencoded) and cancel takes any: there a form type is refused
 *     (403) only when the request also looks like a browser's (an
 *     Origin, Referer or Sec-Fetch-* header, or a "Mozilla/" User-Agent:
 *     an old browser that sends no Origin is still caught) and carries
 *     neither Authorization nor X-Slimd-Client, headers a form cannot
 *     set.  With --auth token every such request needs its token anyway,
 *     which a page of another site cannot have.
 *
 * Rejected: a cookie session for the dashboard (cookies ride along with
 * cross-site requests, the problem 3 and 5 exist for); a CSRF token in
 * the page (there is no session to bind it to); refusing every form
 * Content-Type on uploads (would break `curl -F` and `--data-binary`).
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <openssl/evp.h>
#include "api/api.h"

/* Every response: no MIME sniffing (a JSON error holding "<script>" is
 * never run as HTML), and a CSP that allows nothing, for responses that
 * are not pages.  Pages set their own. */
#define CSP_NONE "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
#define CORS_METHODS "GET, HEAD, POST, DELETE"
#define CORS_HEADERS "Authorization, Content-Type, X-Slimd-Client"
#define CORS_EXPOSE "Location, ETag, Content-Range, Content-Disposition, Retry-After, " \
                    "WWW-Authenticate"
#define REALM "Bearer realm=\"slimd\""

int api_host_is_loopback(const char *host)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) != 1)
        return 0;
    if (IN6_IS_ADDR_LOOPBACK(&a6))
        return 1;
    return IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127;
}

static const char *header(struct MHD_Connection *conn, const char *name)
{
    return MHD_lookup_connection_value(conn, MHD_HEADER_KIND, name);
}

/* 1 when a and b are the same numeric address (or both loopback). */
static int same_ip(const char *a, const char *b)
{
    unsigned char x[16], y[16];
    if (api_host_is_loopback(a) && api_host_is_loopback(b))
        return 1;
    if (inet_pton(AF_INET, a, x) == 1)
        return inet_pton(AF_INET, b, y) == 1 && !memcmp(x, y, 4);
    if (inet_pton(AF_INET6, a, x) == 1)
        return inet_pton(AF_INET6, b, y) == 1 && !memcmp(x, y, 16);
    return 0;
}

static int is_ip(const char *s)
{
    unsigned char x[16];
    return inet_pton(AF_INET, s, x) == 1 || inet_pton(AF_INET6, s, x) == 1;
}

static int host_allowed(const struct api_ctx *ctx, const char *h)
{
    char name[256];
    size_t n;
    for (const char *const *a = ctx->allowed_hosts; a && *a; a++)
        if (!strcmp(*a, "*"))
            return 1;
    if (api_parse_host(h, name, sizeof name))
        return 0;
    n = strlen(name);
    if (!strcmp(name, "localhost") || (n > 10 && !strcmp(name + n - 10, ".localhost")))
        return 1;
    if (is_ip(name))
        return ctx->listen_any || same_ip(name, ctx->listen_host);
    for (const char *const *a = ctx->allowed_hosts; a && *a; a++)
        if (!strcasecmp(*a, name))
            return 1;
    return 0;
}

static int cors_allowed(const struct api_ctx *ctx, const char *origin)
{
    for (const char *const *o = ctx->cors_origins; origin && o && *o; o++)
        if (!strcmp(*o, origin))
            return 1;
    return 0;
}

int api_gate_host(struct api_ctx *ctx, struct MHD_Connection *conn, struct api_request *req,
                  const char *method, int path_known, enum MHD_Result *ret)
{
    const char *host = header(conn, MHD_HTTP_HEADER_HOST);
    const char *origin = header(conn, "Origin");
    struct MHD_Response *resp;

    /* HTTP/1.0 may come without a Host (libmicrohttpd answers 400 to an
     * HTTP/1.1 request without one); a browser always sends it */
    if (host && !host_allowed(ctx, host)) {
        *ret = api_reply_error(conn, req, SLIM_EFORBIDDEN, "Host '%.100s' is not a name of this "
                               "daemon: use its address, localhost, or start it with "
                               "--allowed-host NAME", host);
        return 0;
    }
    if (strcmp(method, "OPTIONS") || !ctx->cors_origins || !origin ||
        !header(conn, "Access-Control-Request-Method"))
        return 1;
    if (!cors_allowed(ctx, origin) || !path_known) {
        *ret = api_reply_error(conn, req, SLIM_EFORBIDDEN, "origin '%.100s' may not call this "
                               "API from a browser (--cors-origin)", origin);
        return 0;
    }
    /* the preflight: api_secure_response adds Allow-Origin and Vary */
    resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (!resp) {
        *ret = MHD_NO;
        return 0;
    }
    MHD_add_response_header(resp, "Access-Control-Allow-Methods", CORS_METHODS);
    MHD_add_response_header(resp, "Access-Control-Allow-Headers", CORS_HEADERS);
    MHD_add_response_header(resp, "Access-Control-Max-Age", "600");
    api_request_set_status(req, 204);
    MHD_add_response_header(resp, "Cache-Control", "no-store");
    api_secure_response(conn, req, resp);
    *ret = MHD_queue_response(conn, 204, resp);
    MHD_destroy_response(resp);
    return 0;
}

/* The origin's "host[:port]" is the Host header: a page of this very
 * daemon (its dashboard). */
static int same_origin(const char *origin, const char *host)
{
    const char *p = strstr(origin, "://");
    return p && host && !strcasecmp(p + 3, host);
}

/* Go's CrossOriginProtection: Sec-Fetch-Site first (every current
 * browser), then Origin; neither means not a browser. */
static int cross_site(const struct api_ctx *ctx, struct MHD_Connection *conn)
{
    const char *sfs = header(conn, "Sec-Fetch-Site"), *origin = header(conn, "Origin");
    if (origin && cors_allowed(ctx, origin))
        return 0;
    if (sfs)
        return strcmp(sfs, "same-origin") && strcmp(sfs, "none");
    if (origin)
        return !same_origin(origin, header(conn, MHD_HTTP_HEADER_HOST));
    return 0;
}

static int looks_like_browser(struct MHD_Connection *conn)
{
    const char *ua = header(conn, MHD_HTTP_HEADER_USER_AGENT);
    return header(conn, "Origin") || header(conn, "Referer") || header(conn, "Sec-Fetch-Site") ||
           header(conn, "Sec-Fetch-Mode") || (ua && !strncmp(ua, "Mozilla/", 8));
}

/* The token of the Authorization header (api_parse_bearer), or NULL. */
static const char *bearer(struct MHD_Connection *conn)
{
    return api_parse_bearer(header(conn, MHD_HTTP_HEADER_AUTHORIZATION));
}

static int authenticate(struct api_ctx *ctx, struct MHD_Connection *conn,
                        struct api_request *req, unsigned scope, enum MHD_Result *ret)
{
    struct api_principal *who = api_request_principal(req);
    const char *tok = bearer(conn);
    struct slim_error err;
    char need[24], have[24], hdr[128];

    if (!tok) {
        *ret = api_reply_error_header(conn, req, SLIM_EUNAUTH, "WWW-Authenticate", REALM,
                                      "this needs a bearer token (Authorization: Bearer "
                                      "slimd_...; make one with `slimd token create`)");
        return 0;
    }
    if (store_token_verify(ctx->st, tok, &who->token, &err)) {
        if (err.code == SLIM_EUNAUTH)
            *ret = api_reply_error_header(conn, req, SLIM_EUNAUTH, "WWW-Authenticate",
                                          REALM ", error=\"invalid_token\"", "%s", err.msg);
        else
            *ret = api_reply_slim_error(conn, req, &err);
        return 0;
    }
    if (!(who->token.scopes & STORE_SCOPE_ADMIN) && (who->token.scopes & scope) != scope) {
        store_scopes_format(scope, need, sizeof need);
        store_scopes_format(who->token.scopes, have, sizeof have);
        snprintf(hdr, sizeof hdr, REALM ", error=\"insufficient_scope\", scope=\"%s\"", need);
        *ret = api_reply_error_header(conn, req, SLIM_EFORBIDDEN, "WWW-Authenticate", hdr,
                                      "this needs the '%s' scope; token %s has %s", need,
                                      who->token.id, have);
        return 0;
    }
    who->authenticated = 1;
    return 1;
}

int api_gate(struct api_ctx *ctx, struct MHD_Connection *conn, struct api_request *req,
             const char *method, unsigned scope, unsigned flags, enum MHD_Result *ret)
{
    const char *ct = header(conn, MHD_HTTP_HEADER_CONTENT_TYPE);
    int unsafe = strcmp(method, "GET") && strcmp(method, "HEAD") && strcmp(method, "OPTIONS");

    if (unsafe && cross_site(ctx, conn)) {
        *ret = api_reply_error(conn, req, SLIM_EFORBIDDEN, "cross-site request refused: a page "
                               "of another site (Origin '%.100s') may not %s here "
                               "(--cors-origin allows one)",
                               header(conn, "Origin") ? header(conn, "Origin") : "?", method);
        return 0;
    }
    if (ctx->auth == API_AUTH_TOKEN && scope && !authenticate(ctx, conn, req, scope, ret))
        return 0;
    if ((flags & API_GATE_JSON) && api_is_form_type(ct)) {
        *ret = api_reply_error(conn, req, SLIM_EMEDIA, "Content-Type '%.60s': this endpoint "
                               "takes JSON: send -H 'Content-Type: application/json'", ct);
        return 0;
    }
    if ((flags & API_GATE_FORM) && api_is_form_type(ct) && !header(conn, "Authorization") &&
        !header(conn, "X-Slimd-Client") && looks_like_browser(conn)) {
        *ret = api_reply_error(conn, req, SLIM_EFORBIDDEN, "a browser sent this as a web form "
                               "(Content-Type '%.60s'): a page must send Authorization or "
                               "X-Slimd-Client, which forms cannot", ct);
        return 0;
    }
    return 1;
}

void api_secure_response(struct MHD_Connection *conn, struct api_request *req,
                         struct MHD_Response *resp)
{
    struct api_ctx *ctx = api_request_ctx(req);
    const char *origin = header(conn, "Origin");
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
    if (!MHD_get_response_header(resp, "Content-Security-Policy"))
        MHD_add_response_header(resp, "Content-Security-Policy", CSP_NONE);
    if (ctx && ctx->cors_origins) {
        /* the answer depends on Origin: caches must keep them apart */
        MHD_add_response_header(resp, "Vary", "Origin");
        if (cors_allowed(ctx, origin)) {
            MHD_add_response_header(resp, "Access-Control-Allow-Origin", origin);
            MHD_add_response_header(resp, "Access-Control-Expose-Headers", CORS_EXPOSE);
        }
    }
}

int api_csp_hash(const char *text, char *out, size_t len)
{
    unsigned char md[EVP_MAX_MD_SIZE], b64[64];
    unsigned int n = 0;
    if (!EVP_Digest(text, strlen(text), md, &n, EVP_sha256(), NULL) || n != 32)
        return -1;
    EVP_EncodeBlock(b64, md, 32);   /* 44 characters and a NUL */
    return snprintf(out, len, "'sha256-%s'", b64) < (int)len ? 0 : -1;
}

const char *api_request_owner(struct api_request *req)
{
    struct api_ctx *ctx = api_request_ctx(req);
    struct api_principal *who = api_request_principal(req);
    if (!ctx || ctx->auth != API_AUTH_TOKEN)
        return NULL;
    /* a route that took no token (none should list rows) sees nothing */
    if (!who->authenticated)
        return "";
    return who->token.scopes & STORE_SCOPE_ADMIN ? NULL : who->token.id;
}

const char *api_request_creator(struct api_request *req)
{
    struct api_principal *who = api_request_principal(req);
    return who->authenticated ? who->token.id : NULL;
}

int api_request_sees(struct api_request *req, json_t *row)
{
    const char *owner = api_request_owner(req);
    const char *of = json_string_value(json_object_get(row, "owner"));
    return !owner || (of && !strcmp(of, owner));
}
