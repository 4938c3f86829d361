/*
 * models.c - /v1/models: upload, list, get, download, delete.
 *
 * An upload is stored only once it is whole and valid: server.c streams
 * the body into a blob writer (temp file, hashed on the way); here, at
 * the end, the temp file's first bytes decide the format (415 if it is
 * no format slimd reads), the strict parser checks every bound (400 with
 * the parser's message), and only then is the blob committed (fsync,
 * rename) and the row inserted.  Any failure aborts the writer, which
 * removes the temp file, and a row that cannot be inserted takes its
 * blob with it (unless another row shares it): a failed upload leaves
 * nothing behind.
 *
 * The same bytes uploaded twice are two rows on one blob (the store is
 * keyed by sha256); rows show "duplicates" (other rows of the owner with
 * those bytes) and "shared_blob", and deleting one keeps the blob for
 * the other.  Idempotency-Key (idem.c) makes a retried upload answer
 * the first result instead of adding a row.
 *
 * With --auth token a model belongs to the token that uploaded it: only
 * that token (or an admin) lists, reads, downloads or deletes it; to
 * anyone else it does not exist (404).
 */
#include <stdio.h>
#include <string.h>
#include "api/api.h"
#include "daemon/log.h"

int api_upload_keep(struct api_ctx *ctx, struct api_request *req, struct blob_writer *bw,
                    const char *path, const char *name, json_t *info, api_insert_fn insert,
                    json_t **row, uint64_t *bytes, struct slim_error *err)
{
    char sha[65];
    int rc;
    *row = NULL;
    if (bw) {   /* commit frees the writer whatever happens */
        *bytes = store_blob_bytes(bw);
        rc = store_blob_commit(bw, sha, err);
    } else {    /* adopt hashes the file and removes it when it fails */
        rc = store_blob_adopt(ctx->st, path, sha, bytes, err);
    }
    if (rc)
        return rc;
    if ((rc = insert(ctx->st, api_request_creator(req), name, sha, *bytes, info, row, err)))
        store_blob_drop_unused(ctx->st, sha);   /* unless another row shares it */
    return rc;
}

int api_model_store(struct api_ctx *ctx, struct api_request *req, int part, const char *field,
                    const char *name, json_t **row, struct slim_error *err)
{
    struct api_upload *up = api_request_upload(req);
    struct blob_writer *bw = up->part[part];
    unsigned char head[512];
    size_t got = 0;
    json_t *info = NULL;
    uint64_t bytes = bw ? store_blob_bytes(bw) : 0;
    const char *fmt = NULL;

    *row = NULL;
    if (up->failed)
        slim_error_set(err, up->failed, "%s", up->msg);
    else if (up->pp && !up->seen[part])
        slim_error_set(err, SLIM_EINVAL, "multipart body has no field named '%s' (use curl "
                       "-F %s=@model.safetensors)", field ? field : "file",
                       field ? field : "file");
    else if (bytes == 0 && field)
        slim_error_set(err, SLIM_EFORMAT, "the multipart field '%s' is empty: it holds the "
                       "model file", field);
    else if (bytes == 0)
        slim_error_set(err, SLIM_EFORMAT, "empty body: send the model file as the body (curl "
                       "-T model.safetensors -X POST) or as multipart field 'file'");
    else if (name && !api_valid_name(name))
        slim_error_set(err, SLIM_EINVAL, "name: expected 1 to 200 bytes of UTF-8 text "
                       "without control characters");
    else if (api_read_head(store_blob_temp_path(bw), head, sizeof head, &got))
        slim_error_set(err, SLIM_EIO, "cannot read the uploaded file back");
    else if (!(fmt = slim_format_detect(head, got)))
        slim_error_set(err, SLIM_EMEDIA, "unrecognised model format: expected safetensors (an "
                       "8-byte length, then JSON), ONNX, or an uncompressed tar (a sharded "
                       "checkpoint, or an ONNX model and its external data)");
    else if (slim_model_describe(store_blob_temp_path(bw), &info, err) &&
             err->code == SLIM_EFORMAT)
        slim_error_prefix(err, "invalid %s", !strcmp(fmt, "onnx") ? "ONNX model"
                                             : strcmp(fmt, "tar") ? "safetensors file"
                                                                  : "upload");
    if (!info) {
        /* drop the temp files before answering, so a client that sees the
         * error also sees nothing left behind */
        api_upload_discard(up);
        return err->code;
    }
    if (!name)
        name = up->filename[part] ? up->filename[part] : "model";
    up->part[part] = NULL;   /* api_upload_keep consumes it */
    if (api_upload_keep(ctx, req, bw, NULL, name, info, store_model_insert, row, &bytes, err)) {
        json_decref(info);
        return err->code;
    }
    json_decref(info);
    log_info("model %s stored (%s, %llu bytes, sha256 %.12s%s)",
             json_string_value(json_object_get(*row, "id")), name, (unsigned long long)bytes,
             json_string_value(json_object_get(*row, "sha256")),
             json_is_true(json_object_get(*row, "shared_blob")) ? ", same bytes as another: "
                                                                  "one blob" : "");
    return 0;
}

/* An upload of bytes another model of the same owner already has is
 * a new row (its own name and id) on the same blob: 201 like any
 * upload, with "duplicates" and "shared_blob" saying so.  Answering 200
 * with the older row was rejected: the upload's ?name= would be lost,
 * and deleting "one of the two" would delete the other's row. */
enum MHD_Result api_models_upload(struct api_ctx *ctx, struct MHD_Connection *conn,
                                  struct api_request *req)
{
    struct api_upload *up = api_request_upload(req);
    const char *name = api_upload_name(conn);
    struct slim_error err;
    struct api_idem idem;
    enum MHD_Result ret;
    json_t *row = NULL;
    char loc[128], sha[65], what[200];

    if (up->pp)
        MHD_post_process(up->pp, NULL, 0);
    if (!api_idem_check(conn, req, &ret)) {
        api_upload_discard(up);
        return ret;
    }
    if (api_model_store(ctx, req, 0, NULL, name, &row, &err))
        return api_reply_slim_error(conn, req, &err);
    /* the request is its bytes and its name: known now, once hashed */
    snprintf(what, sizeof what, "%s?name=%s", json_string_value(json_object_get(row, "sha256")),
             name ? name : "");
    if (api_sha256_hex(what, strlen(what), sha, &err)) {
        store_model_delete(ctx->st, json_string_value(json_object_get(row, "id")), NULL);
        json_decref(row);
        return api_reply_slim_error(conn, req, &err);
    }
    if (!api_idem_begin(ctx, conn, req, "POST /v1/models", sha, &idem, &ret)) {
        /* a replay or a refused key: the row just made is not wanted
         * (its blob stays with the row replayed, which has its bytes) */
        store_model_delete(ctx->st, json_string_value(json_object_get(row, "id")), NULL);
        json_decref(row);
        return ret;
    }
    snprintf(loc, sizeof loc, "/v1/models/%s", json_string_value(json_object_get(row, "id")));
    return api_idem_reply(ctx, conn, req, &idem, 201, row, loc);
}

static const char *const upload_query[] = {"limit", "offset", "name", "sha256", NULL};

enum MHD_Result api_uploads_list(struct api_ctx *ctx, struct MHD_Connection *conn,
                                 struct api_request *req, const char *key,
                                 int (*find)(struct store *, const char *, const char *,
                                             const char *, int, int, json_t **, int *,
                                             struct slim_error *))
{
    const char *name = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "name");
    const char *sha = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "sha256");
    struct slim_error err;
    json_t *rows;
    int limit, offset, total;
    enum MHD_Result ret;
    if (!api_query_check(conn, req, upload_query, &ret) ||
        !api_paging(conn, req, &limit, &offset, &ret))
        return ret;
    if (sha && (strlen(sha) != 64 || strspn(sha, "0123456789abcdef") != 64))
        return api_reply_error(conn, req, SLIM_EINVAL, "sha256: expected 64 lowercase hex "
                               "digits, got '%.80s'", sha);
    if (find(ctx->st, api_request_owner(req), name, sha, limit, offset, &rows, &total, &err))
        return api_reply_slim_error(conn, req, &err);
    return api_reply_json(conn, req, 200,
                          json_pack("{s:o, s:i, s:i, s:i}", key, rows, "total", total,
                                    "limit", limit, "offset", offset),
                          NULL);
}

enum MHD_Result api_models_list(struct api_ctx *ctx, struct MHD_Connection *conn,
                                struct api_request *req)
{
    return api_uploads_list(ctx, conn, req, "models", store_model_find);
}

enum MHD_Result api_models_get(struct api_ctx *ctx, struct MHD_Connection *conn,
                               struct api_request *req, const char *id, const char *sub)
{
    struct slim_error err;
    json_t *row;
    char path[4096], fname[256];
    const char *sha, *name;
    enum MHD_Result r;

    if (store_model_get(ctx->st, id, &row, &err))
        return api_reply_slim_error(conn, req, &err);
    if (!api_request_sees(req, row)) {
        json_decref(row);
        return api_reply_error(conn, req, SLIM_ENOTFOUND, "model %.64s does not exist", id);
    }
    if (!sub)
        return api_reply_json(conn, req, 200, row, NULL);
    sha = json_string_value(json_object_get(row, "sha256"));
    name = json_string_value(json_object_get(row, "name"));
    if (api_blob_local(ctx, conn, sha, path, sizeof path, &err)) {
        json_decref(row);
        return api_reply_slim_error(conn, req, &err);
    }
    snprintf(fname, sizeof fname, "%s", name && !strpbrk(name, "\"\\/\r\n") ? name : id);
    r = api_reply_file(conn, req, path, sha, "application/octet-stream", fname);
    json_decref(row);
    return r;
}

enum MHD_Result api_models_delete(struct api_ctx *ctx, struct MHD_Connection *conn,
                                  struct api_request *req, const char *id)
{
    struct slim_error err;
    json_t *row;
    int sees;
    /* the owner never changes, so checking it before the delete races
     * with nothing */
    if (store_model_get(ctx->st, id, &row, &err))
        return api_reply_slim_error(conn, req, &err);
    sees = api_request_sees(req, row);
    json_decref(row);
    if (!sees)
        return api_reply_error(conn, req, SLIM_ENOTFOUND, "model %.64s does not exist", id);
    if (store_model_delete(ctx->st, id, &err))
        return api_reply_slim_error(conn, req, &err);
    log_info("model %s deleted", id);
    return api_reply_empty(conn, req, 204);
}
