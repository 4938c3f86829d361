/*
 * tokens.c - /v1/tokens: what `slimd token` does, for admin tokens over
 * HTTP.  POST makes a token and shows its secret in that one answer
 * (only its hash is kept); GET lists them (never a secret); DELETE
 * revokes, which takes effect at the next request.  An admin token may
 * revoke itself: the operator can always make a new one with the CLI on
 * the data dir.
 */
#include <stdio.h>
#include <string.h>
#include "api/api.h"
#include "daemon/log.h"

/* {"name": "ci", "scopes": ["read", "submit"]} -> name and bits. */
static int parse_body(struct api_request *req, json_t **body, const char **name,
                      unsigned *scopes, struct slim_error *err)
{
    size_t len, i;
    const char *text = api_request_body(req, &len);
    json_error_t jerr;
    json_t *v, *sc;
    const char *key;
    unsigned bits;

    *scopes = 0;
    *body = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!*body)
        return slim_error_set(err, SLIM_EINVAL, "body is not valid JSON: %s (line %d)",
                              jerr.text, jerr.line);
    if (!json_is_object(*body))
        return slim_error_set(err, SLIM_EINVAL, "expected {\"name\": ..., \"scopes\": [...]}");
    json_object_foreach(*body, key, v)
        if (strcmp(key, "name") && strcmp(key, "scopes"))
            return slim_error_set(err, SLIM_EINVAL, "unknown key '%.40s' (expected name, "
                                  "scopes)", key);
    *name = json_string_value(json_object_get(*body, "name"));
    if (!*name || !api_valid_name(*name))
        return slim_error_set(err, SLIM_EINVAL, "name: required, 1 to 200 bytes of UTF-8 text "
                              "without control characters");
    sc = json_object_get(*body, "scopes");
    if (!json_is_array(sc) || !json_array_size(sc))
        return slim_error_set(err, SLIM_EINVAL, "scopes: required, a non-empty array of read, "
                              "submit, admin");
    json_array_foreach(sc, i, v) {
        if (!json_is_string(v))
            return slim_error_set(err, SLIM_EINVAL, "scopes[%zu]: expected a string", i);
        if (store_scopes_parse(json_string_value(v), &bits, err) ||
            strchr(json_string_value(v), ','))
            return slim_error_set(err, SLIM_EINVAL, "scopes[%zu]: '%.40s' is not one of read, "
                                  "submit, admin", i, json_string_value(v));
        *scopes |= bits;
    }
    return 0;
}

enum MHD_Result api_tokens_create(struct api_ctx *ctx, struct MHD_Connection *conn,
                                  struct api_request *req)
{
    char secret[STORE_TOKEN_LEN + 1], loc[96];
    struct slim_error err;
    json_t *body = NULL, *row = NULL;
    const char *name = NULL;
    unsigned scopes;
    int rc;

    rc = parse_body(req, &body, &name, &scopes, &err);
    if (!rc)
        rc = store_token_create(ctx->st, name, scopes, secret, &row, &err);
    if (!rc && json_object_set_new(row, "token", json_string(secret)))
        rc = slim_error_set(&err, SLIM_ENOMEM, "out of memory");
    explicit_bzero(secret, sizeof secret);
    if (rc) {
        json_decref(row);
        json_decref(body);
        return api_reply_slim_error(conn, req, &err);
    }
    log_info("token %s (%s) created by token %s", json_string_value(json_object_get(row, "id")),
             name, api_request_creator(req) ? api_request_creator(req) : "-");
    json_decref(body);
    snprintf(loc, sizeof loc, "/v1/tokens/%s", json_string_value(json_object_get(row, "id")));
    return api_reply_json(conn, req, 201, row, loc);
}

enum MHD_Result api_tokens_list(struct api_ctx *ctx, struct MHD_Connection *conn,
                                struct api_request *req)
{
    static const char *const none[] = {NULL};
    struct slim_error err;
    enum MHD_Result ret;
    json_t *rows;
    if (!api_query_check(conn, req, none, &ret))
        return ret;
    if (store_token_list(ctx->st, &rows, &err))
        return api_reply_slim_error(conn, req, &err);
    return api_reply_json(conn, req, 200, json_pack("{s:o}", "tokens", rows), NULL);
}

enum MHD_Result api_tokens_revoke(struct api_ctx *ctx, struct MHD_Connection *conn,
                                  struct api_request *req, const char *id)
{
    struct slim_error err;
    if (store_token_revoke(ctx->st, id, NULL, &err))
        return api_reply_slim_error(conn, req, &err);
    log_info("token %s revoked by token %s", id,
             api_request_creator(req) ? api_request_creator(req) : "-");
    return api_reply_empty(conn, req, 204);
}
