/*
 * idem.c - Idempotency-Key on POST /v1/jobs and POST /v1/models.
 *
 * A client that retries a request (its connection dropped before the
 * answer came) sends the same Idempotency-Key and gets the first
 * answer, status and body, instead of a second job or model.  The key
 * is scoped to the route and the token (another token's key is another
 * key) and remembered for 24 hours in SQLite (schema 6), so a restart
 * between the two tries changes nothing.  The request is identified by
 * a SHA-256: of the body for a job spec, of the uploaded bytes and the
 * ?name= for an upload; the same key with a different request is 422
 * IDEMPOTENCY_KEY_REUSED, and with one still being processed 409.
 *
 * Only successes are remembered: a request that failed (a bad spec, a
 * full disk) releases its key, so the client can fix the cause and try
 * again with the same key.  A key claimed by a process that died is
 * released when the store next opens.  Rejected: replaying failures too
 * (a 507 replayed for 24 h after the disk was freed helps nobody) and
 * keeping the records in memory (lost with the process, the case the
 * header is for).
 */
#include <stdio.h>
#include <string.h>
#include "api/api.h"
#include "daemon/log.h"

/* 1 when key has the shape of an Idempotency-Key (see api.h). */
static int key_ok(const char *key, size_t max)
{
    size_t n = strlen(key);
    return n > 0 && n < max && strspn(key, "!\"#$%&'()*+,-./0123456789:;<=>?@"
                                          "ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`"
                                          "abcdefghijklmnopqrstuvwxyz{|}~") == n;
}

int api_idem_check(struct MHD_Connection *conn, struct api_request *req, enum MHD_Result *ret)
{
    const char *key = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Idempotency-Key");
    if (!key || key_ok(key, sizeof ((struct api_idem *)0)->key))
        return 1;
    *ret = api_reply_error(conn, req, SLIM_EINVAL, "Idempotency-Key: expected 1 to %zu "
                           "printable ASCII characters without spaces (a UUID, say)",
                           sizeof ((struct api_idem *)0)->key - 1);
    return 0;
}

int api_idem_begin(struct api_ctx *ctx, struct MHD_Connection *conn, struct api_request *req,
                   const char *route, const char *request_sha, struct api_idem *idem,
                   enum MHD_Result *ret)
{
    const char *key = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Idempotency-Key");
    const char *owner = api_request_creator(req);
    struct store_idem replay;
    struct slim_error err;

    memset(idem, 0, sizeof *idem);
    if (!key)
        return 1;
    if (!api_idem_check(conn, req, ret))
        return 0;
    if (store_idem_claim(ctx->st, route, owner, key, request_sha, &replay, &err)) {
        *ret = api_reply_slim_error(conn, req, &err);
        return 0;
    }
    if (replay.status) {
        *ret = api_reply_json(conn, req, replay.status, replay.response,
                              replay.location[0] ? replay.location : NULL);
        return 0;
    }
    idem->active = 1;
    snprintf(idem->route, sizeof idem->route, "%s", route);
    snprintf(idem->key, sizeof idem->key, "%s", key);
    snprintf(idem->owner, sizeof idem->owner, "%s", owner ? owner : "");
    return 1;
}

enum MHD_Result api_idem_reply(struct api_ctx *ctx, struct MHD_Connection *conn,
                               struct api_request *req, struct api_idem *idem, int status,
                               json_t *body, const char *location)
{
    struct slim_error err;
    if (idem->active &&
        store_idem_finish(ctx->st, idem->route, idem->owner, idem->key, status, location, body,
                          &err))
        /* the work is done: answer it; a retry with the key would then
         * be 409 until the store reopens, never a second result */
        log_warn("Idempotency-Key %s: cannot record the result: %s", idem->key, err.msg);
    idem->active = 0;
    return api_reply_json(conn, req, status, body, location);
}

void api_idem_release(struct api_ctx *ctx, struct api_idem *idem)
{
    if (idem->active)
        store_idem_release(ctx->st, idem->route, idem->owner, idem->key);
    idem->active = 0;
}

int api_sha256_hex(const void *buf, size_t len, char out[65], struct slim_error *err)
{
    struct store_hash *h;
    int rc = store_hash_new(&h, err);
    if (rc)
        return rc;
    store_hash_update(h, buf, len);
    return store_hash_final(h, out, err);
}
