/*
 * datasets.c - /v1/datasets: upload, list, get, download, delete.
 *
 * A dataset is stored in one form, the canonical safetensors of
 * formats/dataset.h (`input`, samples first, and optional integer
 * `labels`), whatever it was uploaded as, so the evaluator reads one
 * thing and a download opens with any safetensors reader.  Two ways in:
 *
 *   - that file itself, as the raw body or the multipart field `file`:
 *     checked whole (slim_dataset_describe) and stored as sent, under
 *     the sha256 its upload was hashed to;
 *   - MNIST-style IDX files, gzip or not, as the multipart fields
 *     `images` and `labels` (labels optional): server.c streams each
 *     field to its own temp file; here their headers are checked against
 *     each other and the limits (the IDX data after gunzip counts against
 *     --max-upload-bytes, so a small gzip cannot unpack into a huge
 *     file, and the converted file must fit the free space), then they
 *     are converted into a temp file in tmp/ that is hashed and moved
 *     into the blob store.  Storing the IDX files as uploaded and
 *     converting at each job was rejected: every job would pay the
 *     conversion, and a bad file would only be found by a job.
 *
 * Like models, a dataset belongs to the token that uploaded it (see
 * models.c).
 *
 * Every failure answers with the problem named (EFORMAT from libslim is
 * INVALID_DATASET here) and leaves nothing: the parts are discarded, the
 * converted temp file removed, and a blob whose row could not be
 * inserted dropped unless something else shares it.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "api/api.h"
#include "daemon/log.h"

enum { PART_FILE = 0, PART_IMAGES = 1, PART_LABELS = 2 };   /* server.c's dataset_fields */

/* Messages stay within struct slim_error's 160 bytes. */
#define IDX_HINT "curl -F images=@images.gz -F labels=@labels.gz"

/* libslim's "malformed data" is this resource's INVALID_DATASET. */
static int dataset_error(struct slim_error *err, int rc)
{
    if (rc == SLIM_EFORMAT)
        err->code = rc = SLIM_EDATASET;
    return rc;
}

/* Which way the multipart body came: *idx = 1 for images (and labels),
 * 0 for `file`.  Empty parts are named. */
static int multipart_kind(const struct api_upload *up, int *idx, struct slim_error *err)
{
    const int file = up->seen[PART_FILE], images = up->seen[PART_IMAGES];
    const int labels = up->seen[PART_LABELS];
    *idx = images;
    if (file && (images || labels))
        return slim_error_set(err, SLIM_EINVAL, "send either the field 'file' (a dataset in "
                              "safetensors) or the fields 'images' and 'labels' (IDX files), "
                              "not both");
    if (labels && !images)
        return slim_error_set(err, SLIM_EINVAL, "multipart field 'labels' without 'images': "
                              "send both (" IDX_HINT ")");
    if (!file && !images)
        return slim_error_set(err, SLIM_EINVAL, "multipart body has no field named 'images' "
                              "(IDX, with 'labels') or 'file' (safetensors): use " IDX_HINT);
    for (int i = PART_IMAGES; images && i <= PART_LABELS; i++)
        if (up->seen[i] && !store_blob_bytes(up->part[i]))
            return slim_error_set(err, SLIM_EDATASET, "%s: the multipart field is empty",
                                  i == PART_IMAGES ? "images" : "labels");
    return 0;
}

/* The safetensors way: something was sent, and it looks like safetensors
 * (IDX data sent this way gets a pointer to the multipart form). */
static int check_file(const struct api_upload *up, struct slim_error *err)
{
    const char *fmt;
    unsigned char head[512];
    size_t got = 0;
    if (!up->part[PART_FILE] || !store_blob_bytes(up->part[PART_FILE]))
        return slim_error_set(err, SLIM_EDATASET, "empty body: send a safetensors dataset "
                              "(curl -T data.safetensors -X POST) or IDX files (" IDX_HINT ")");
    if (api_read_head(store_blob_temp_path(up->part[PART_FILE]), head, sizeof head, &got))
        return slim_error_set(err, SLIM_EIO, "cannot read the uploaded file back");
    fmt = slim_format_detect(head, got);
    if (fmt && !strcmp(fmt, "safetensors"))
        return 0;
    if ((got >= 2 && head[0] == 0x1f && head[1] == 0x8b) ||
        (got >= 4 && !head[0] && !head[1] && head[2] >= 0x08 && head[2] <= 0x0e && head[3]))
        return slim_error_set(err, SLIM_EMEDIA, "this looks like an IDX file%s: send IDX files "
                              "as multipart fields (" IDX_HINT ")",
                              head[0] == 0x1f ? " (gzip)" : "");
    return slim_error_set(err, SLIM_EMEDIA, "unrecognised dataset format: expected safetensors "
                          "('input', optional 'labels') or IDX files as multipart fields "
                          "'images' and 'labels'");
}

/* The IDX way: headers and limits first, then the conversion into out
 * (a path under tmp/ that the caller removes). */
static int convert_idx(struct api_ctx *ctx, const struct api_upload *up, char *out, size_t len,
                       struct slim_error *err)
{
    const char *images = store_blob_temp_path(up->part[PART_IMAGES]);
    const char *labels = up->part[PART_LABELS] ? store_blob_temp_path(up->part[PART_LABELS])
                                               : NULL;
    uint64_t idx_bytes = 0, out_bytes = 0;
    int rc;

    if ((rc = dataset_error(err, slim_dataset_idx_size(images, labels, &idx_bytes, &out_bytes,
                                                       err))))
        return rc;
    if (idx_bytes > ctx->max_upload)
        return slim_error_set(err, SLIM_ETOOBIG, "the IDX files hold %" PRIu64 " bytes after "
                              "gunzip, over the limit of %" PRIu64 " bytes "
                              "(--max-upload-bytes counts IDX data uncompressed)", idx_bytes,
                              ctx->max_upload);
    if ((rc = store_check_free(ctx->st, ctx->min_free + out_bytes, err)))
        return rc;
    if (store_tmp_path(ctx->st, ".safetensors", out, len))
        return slim_error_set(err, SLIM_EINTERNAL, "cannot name a temp file");
    return dataset_error(err, slim_dataset_from_idx(images, labels, out, err));
}

enum MHD_Result api_datasets_upload(struct api_ctx *ctx, struct MHD_Connection *conn,
                                    struct api_request *req)
{
    struct api_upload *up = api_request_upload(req);
    const char *name = api_upload_name(conn), *path;
    struct slim_error err;
    json_t *info = NULL, *row = NULL;
    char loc[128], out[4096] = "";
    uint64_t bytes = 0;
    int rc = 0, idx = 0;

    if (up->pp)
        MHD_post_process(up->pp, NULL, 0);
    if (up->failed)
        rc = slim_error_set(&err, up->failed, "%s", up->msg);
    else if (up->pp)
        rc = multipart_kind(up, &idx, &err);
    if (!rc && name && !api_valid_name(name))
        rc = slim_error_set(&err, SLIM_EINVAL, "name: expected 1 to 200 bytes of UTF-8 text "
                            "without control characters");
    if (rc)
        goto out;
    if (idx)
        rc = convert_idx(ctx, up, out, sizeof out, &err);
    else
        rc = check_file(up, &err);
    if (rc)
        goto out;
    path = idx ? out : store_blob_temp_path(up->part[PART_FILE]);
    if ((rc = dataset_error(&err, slim_dataset_describe(path, &info, &err)))) {
        if (rc == SLIM_EDATASET)
            slim_error_prefix(&err, "invalid dataset");
        goto out;
    }
    if (json_object_set_new(info, "source", json_string(idx ? "idx" : "safetensors"))) {
        rc = slim_error_set(&err, SLIM_ENOMEM, "out of memory");
        goto out;
    }
    if (!name)
        name = up->filename[idx ? PART_IMAGES : PART_FILE];
    if (!name || !api_valid_name(name))
        name = "dataset";
    /* the converted file (adopted: hashed and moved into the blob store,
     * removed when that fails) or the upload's writer (consumed) */
    rc = api_upload_keep(ctx, req, idx ? NULL : up->part[PART_FILE], out, name, info,
                         store_dataset_insert, &row, &bytes, &err);
    if (idx)
        out[0] = 0;
    else
        up->part[PART_FILE] = NULL;
out:
    /* before answering, so a client that sees the reply sees nothing left */
    api_upload_discard(up);
    if (out[0])
        unlink(out);
    json_decref(info);
    if (rc)
        return api_reply_slim_error(conn, req, &err);
    snprintf(loc, sizeof loc, "/v1/datasets/%s", json_string_value(json_object_get(row, "id")));
    log_info("dataset %s stored (%s, %s, %lld samples, %llu bytes, sha256 %.12s)",
             json_string_value(json_object_get(row, "id")), name, idx ? "from IDX" : "safetensors",
             (long long)json_integer_value(json_object_get(row, "samples")),
             (unsigned long long)bytes, json_string_value(json_object_get(row, "sha256")));
    return api_reply_json(conn, req, 201, row, loc);
}

enum MHD_Result api_datasets_list(struct api_ctx *ctx, struct MHD_Connection *conn,
                                  struct api_request *req)
{
    return api_uploads_list(ctx, conn, req, "datasets", store_dataset_find);
}

enum MHD_Result api_datasets_get(struct api_ctx *ctx, struct MHD_Connection *conn,
                                 struct api_request *req, const char *id, const char *sub)
{
    struct slim_error err;
    json_t *row;
    char path[4096], fname[256];
    const char *sha;
    enum MHD_Result r;

    if (store_dataset_get(ctx->st, id, &row, &err))
        return api_reply_slim_error(conn, req, &err);
    if (!api_request_sees(req, row)) {
        json_decref(row);
        return api_reply_error(conn, req, SLIM_ENOTFOUND, "dataset %.64s does not exist", id);
    }
    if (!sub)
        return api_reply_json(conn, req, 200, row, NULL);
    /* the stored (canonical) file, named after the id: the upload's name
     * may be an IDX file's */
    sha = json_string_value(json_object_get(row, "sha256"));
    if (api_blob_local(ctx, conn, sha, path, sizeof path, &err)) {
        json_decref(row);
        return api_reply_slim_error(conn, req, &err);
    }
    snprintf(fname, sizeof fname, "%s.safetensors", id);
    r = api_reply_file(conn, req, path, sha, "application/octet-stream", fname);
    json_decref(row);
    return r;
}

enum MHD_Result api_datasets_delete(struct api_ctx *ctx, struct MHD_Connection *conn,
                                    struct api_request *req, const char *id)
{
    struct slim_error err;
    json_t *row;
    int sees;
    if (store_dataset_get(ctx->st, id, &row, &err))   /* owners never change */
        return api_reply_slim_error(conn, req, &err);
    sees = api_request_sees(req, row);
    json_decref(row);
    if (!sees)
        return api_reply_error(conn, req, SLIM_ENOTFOUND, "dataset %.64s does not exist", id);
    if (store_dataset_delete(ctx->st, id, &err))
        return api_reply_slim_error(conn, req, &err);
    log_info("dataset %s deleted", id);
    return api_reply_empty(conn, req, 204);
}
