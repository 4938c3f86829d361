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
 * With --auth token a model belongs to the token that uploaded it: only
 * that token (or an admin) lists, reads, downloads or deletes it; to
 * anyone else it does not exist (404).
 */
#include <stdio.h>
#include <string.h>
#include "api/api.h"
#include "daemon/log.h"

enum MHD_Result api_models_upload(struct api_ctx *ctx, struct MHD_Connection *conn,
                                  struct api_request *req)
{
    struct api_upload *up = api_request_upload(req);
    const char *name = api_upload_name(conn);
    unsigned char head[512];
    size_t got = 0;
    struct slim_error err;
    json_t *info = NULL, *row = NULL;
    char sha[65], loc[128];
    uint64_t bytes;
    const char *fmt = NULL;

    if (up->pp)
        MHD_post_process(up->pp, NULL, 0);
    bytes = up->part[0] ? store_blob_bytes(up->part[0]) : 0;
    if (up->failed)
        slim_error_set(&err, up->failed, "%s", up->msg);
    else if (up->pp && !up->seen[0])
        slim_error_set(&err, SLIM_EINVAL, "multipart body has no field named 'file' (use curl "
                       "-F file=@model.safetensors)");
    else if (bytes == 0)
        slim_error_set(&err, SLIM_EFORMAT, "empty body: send the model file as the body (curl "
                       "-T model.safetensors -X POST) or as multipart field 'file'");
    else if (name && !api_valid_name(name))
        slim_error_set(&err, SLIM_EINVAL, "name: expected 1 to 200 bytes of UTF-8 text "
                       "without control characters");
    else if (api_read_head(store_blob_temp_path(up->part[0]), head, sizeof head, &got))
        slim_error_set(&err, SLIM_EIO, "cannot read the uploaded file back");
    else if (!(fmt = slim_format_detect(head, got)))
        slim_error_set(&err, SLIM_EMEDIA, "unrecognised model format: expected safetensors (an "
                       "8-byte length, then JSON), ONNX, or an uncompressed tar (a sharded "
                       "checkpoint, or an ONNX model and its external data)");
    else if (slim_model_describe(store_blob_temp_path(up->part[0]), &info, &err) &&
             err.code == SLIM_EFORMAT)
        slim_error_prefix(&err, "invalid %s", !strcmp(fmt, "onnx") ? "ONNX model"
                                              : strcmp(fmt, "tar") ? "safetensors file"
                                                                   : "upload");
    if (!info) {
        /* drop the temp file before answering, so a client that sees the
         * error also sees nothing left behind */
        api_upload_discard(up);
        return api_reply_slim_error(conn, req, &err);
    }
    if (!name)
        name = up->filename[0] ? up->filename[0] : "model";
    /* commit frees the writer whatever happens */
    if (store_blob_commit(up->part[0], sha, &err)) {
        up->part[0] = NULL;
        json_decref(info);
        return api_reply_slim_error(conn, req, &err);
    }
    up->part[0] = NULL;
    if (store_model_insert(ctx->st, api_request_creator(req), name, sha, bytes, info, &row,
                           &err)) {
        /* no row came: the blob goes too, unless another row shares it */
        store_blob_drop_unused(ctx->st, sha);
        json_decref(info);
        return api_reply_slim_error(conn, req, &err);
    }
    json_decref(info);
    snprintf(loc, sizeof loc, "/v1/models/%s", json_string_value(json_object_get(row, "id")));
    log_info("model %s stored (%s, %llu bytes, sha256 %.12s)", json_string_value(json_object_get(row, "id")),
             name, (unsigned long long)bytes, sha);
    return api_reply_json(conn, req, 201, row, loc);
}

enum MHD_Result api_models_list(struct api_ctx *ctx, struct MHD_Connection *conn,
                                struct api_request *req)
{
    struct slim_error err;
    json_t *rows;
    int limit, offset, total;
    enum MHD_Result ret;
    if (!api_paging(conn, req, &limit, &offset, &ret))
        return ret;
    if (store_model_list(ctx->st, api_request_owner(req), limit, offset, &rows, &total, &err))
        return api_reply_slim_error(conn, req, &err);
    return api_reply_json(conn, req, 200,
                          json_pack("{s:o, s:i, s:i, s:i}", "models", rows, "total", total,
                                    "limit", limit, "offset", offset),
                          NULL);
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
    store_blob_path(ctx->st, sha, path, sizeof path);
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
