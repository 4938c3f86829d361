/*
 * jobs.c - /v1/jobs: submit, list, get, cancel, report, artifact.
 *
 * A submission is validated whole by the same parser the runner uses
 * (slim_spec_parse), so what is accepted will run; the job is inserted
 * queued and the runner is woken.  The API never touches a running
 * pipeline: a cancel marks the row (queued jobs end at once) and asks the
 * runner through its hook to stop a running one, which the pipeline
 * notices at its next progress check.
 *
 * Lifecycle (issue 10): a spec names its model by id, {"name"} or
 * {"sha256"} (resolved here to an id, which the stored spec then holds),
 * and may carry a "name" and "labels" that the list filters on; a
 * multipart body uploads the model and submits in one request
 * (submit_multipart); Idempotency-Key is idem.c's.  DELETE removes a
 * job that is not running with its report and artifact; a pin keeps
 * retention (the runner's) away from it.
 *
 * With --auth token a job belongs to the token that submitted it, and
 * may only name a model and a dataset that token sees: a submit token
 * lists, reads and cancels its own jobs; an admin token every job.
 * Another token's job, model or dataset is answered 404.
 *
 * report.html, the page for people, is api/pages.c's.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "api/api.h"
#include "daemon/log.h"

/* "name" and "labels" are schema 6's (this file checks them); "notify"
 * is events.c's */
const char *const api_spec_top_keys[] = {"model", "name", "labels", "notify", NULL};

/* The training passes' references (slim_spec_ref): each dataset and
 * student model must exist and be the caller's to use, a dataset must
 * have labels when its pass trains on them, and a student must be an
 * ONNX model.  Each failure is a 400 naming the field: the reference is
 * a value of the spec, like an op's name. */
static int check_refs(struct api_ctx *ctx, struct api_request *req,
                      const struct slim_spec *spec, uint64_t *data_bytes, struct slim_error *err)
{
    size_t n = slim_spec_n_refs(spec);
    *data_bytes = 0;
    for (size_t i = 0; i < n; i++) {
        char field[64];
        int kind, labels, rc;
        const char *id = slim_spec_ref(spec, i, &kind, field, sizeof field, &labels);
        json_t *row = NULL;
        rc = kind == SLIM_REF_DATASET ? store_dataset_get(ctx->st, id, &row, err)
                                      : store_model_get(ctx->st, id, &row, err);
        if (rc == SLIM_ENOTFOUND || (!rc && !api_request_sees(req, row))) {
            json_decref(row);
            return slim_error_set(err, SLIM_ESPEC, "%s: %s %.64s does not exist", field,
                                  kind == SLIM_REF_DATASET ? "dataset" : "model", id);
        }
        if (rc)
            return rc;
        if (kind == SLIM_REF_DATASET && labels &&
            json_is_false(json_object_get(row, "labels"))) {
            json_decref(row);
            return slim_error_set(err, SLIM_ESPEC, "%s: dataset %.64s has no labels: finetune "
                                  "trains on labels, and distill without them needs alpha 1",
                                  field, id);
        }
        /* a training pass holds its dataset in memory, and once more split
         * into training and held-out parts */
        if (kind == SLIM_REF_DATASET) {
            uint64_t b = 2 * (uint64_t)json_integer_value(json_object_get(row, "bytes"));
            *data_bytes = b > *data_bytes ? b : *data_bytes;
        }
        if (kind == SLIM_REF_MODEL) {
            const char *fmt = json_string_value(json_object_get(row, "format"));
            if (!fmt || strcmp(fmt, "onnx")) {
                slim_error_set(err, SLIM_ESPEC, "%s: model %.64s is %s; a student must be an "
                               "ONNX model (training needs its graph)", field, id,
                               fmt ? fmt : "of no known format");
                json_decref(row);
                return SLIM_ESPEC;
            }
        }
        json_decref(row);
    }
    return 0;
}

/* The memory a job reserves while it runs: its limits.memory_mb, or the
 * pipeline's estimate for its model.  A job whose estimate is over its
 * own limit, or whose reservation is over the daemon's whole budget
 * (--job-memory-mb), could never run: it is refused now, with the tensor
 * that needs the memory named. */
static int reserve_memory(struct api_ctx *ctx, const struct slim_spec *spec, const char *sha,
                          uint64_t data_bytes, uint64_t *mem, struct slim_error *err)
{
    uint64_t need = 0, limit = slim_spec_memory_limit(spec);
    char path[4096], detail[160];
    int rc;
    store_blob_path(ctx->st, sha, path, sizeof path);
    if ((rc = store_blob_fetch(ctx->st, path, err)) ||
        (rc = slim_pipeline_estimate(spec, path, &need, err)))
        return rc;
    need += data_bytes;   /* the training passes' data (check_refs) */
    snprintf(detail, sizeof detail, "%s", err->msg);
    if (limit && need > limit)
        return slim_error_set(err, SLIM_EBUDGET, "%s, over the job's limits.memory_mb of %llu",
                              detail, (unsigned long long)(limit >> 20));
    *mem = limit ? limit : need;
    if (ctx->job_memory && *mem > ctx->job_memory)
        return slim_error_set(err, SLIM_EBUDGET,
                              "%s%s; this daemon runs jobs within %llu MiB (--job-memory-mb)",
                              limit ? "limits.memory_mb asks for more than that: " : "",
                              limit ? "" : detail,
                              (unsigned long long)(ctx->job_memory >> 20));
    return 0;
}

/* "name" and "labels" (schema 6): a name of 1 to 200 bytes of text; at
 * most 32 labels, keys of 1 to 63 characters from [A-Za-z0-9._/-]
 * (selector-friendly, as in k8s), values of 1 to 200 bytes of text. */
#define LABELS_MAX 32
static int check_name_labels(json_t *body, struct slim_error *err)
{
    json_t *name = json_object_get(body, "name"), *labels = json_object_get(body, "labels"), *v;
    const char *k;
    if (name && (!json_is_string(name) || !api_valid_name(json_string_value(name))))
        return slim_error_set(err, SLIM_ESPEC, "name: expected a string of 1 to 200 bytes "
                              "without control characters");
    if (!labels)
        return 0;
    if (!json_is_object(labels))
        return slim_error_set(err, SLIM_ESPEC, "labels: expected an object of strings, e.g. "
                              "{\"branch\": \"main\"}");
    if (json_object_size(labels) > LABELS_MAX)
        return slim_error_set(err, SLIM_ESPEC, "labels: %zu labels, at most %d",
                              json_object_size(labels), LABELS_MAX);
    json_object_foreach(labels, k, v) {
        size_t n = strlen(k);
        if (n == 0 || n > 63 ||
            strspn(k, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._/-") != n)
            return slim_error_set(err, SLIM_ESPEC, "labels: key '%.70s': expected 1 to 63 "
                                  "characters of letters, digits, '.', '_', '/' and '-'", k);
        if (!json_is_string(v) || !api_valid_name(json_string_value(v)))
            return slim_error_set(err, SLIM_ESPEC, "labels.%s: expected a string of 1 to 200 "
                                  "bytes without control characters", k);
    }
    return 0;
}

/* The spec's "model": an id, {"name": N} (the newest model of that name
 * the caller sees) or {"sha256": HEX}.  *mrow gets the model's row (new
 * reference) and the spec's "model" becomes its id, so the stored spec
 * says what ran. */
static int resolve_model(struct api_ctx *ctx, struct api_request *req, json_t *body,
                         json_t **mrow, struct slim_error *err)
{
    json_t *model = json_object_get(body, "model"), *by, *rows = NULL;
    const char *name = NULL, *sha = NULL;
    int rc, total = 0;

    *mrow = NULL;
    if (json_is_string(model)) {
        rc = store_model_get(ctx->st, json_string_value(model), mrow, err);
        if (!rc && !api_request_sees(req, *mrow)) {   /* another token's model */
            json_decref(*mrow);
            *mrow = NULL;
            rc = slim_error_set(err, SLIM_ENOTFOUND, "model %.64s does not exist",
                                json_string_value(model));
        }
        return rc;
    }
    if (!json_is_object(model) || json_object_size(model) != 1)
        return slim_error_set(err, SLIM_ESPEC, "model: required, the id of an uploaded model "
                              "(\"mdl_...\"), {\"name\": NAME} or {\"sha256\": HEX}");
    if ((by = json_object_get(model, "name"))) {
        if (!json_is_string(by) || !api_valid_name(json_string_value(by)))
            return slim_error_set(err, SLIM_ESPEC, "model.name: expected a model's name (1 to "
                                  "200 bytes of text)");
        name = json_string_value(by);
    } else if ((by = json_object_get(model, "sha256"))) {
        sha = json_string_value(by);
        if (!sha || strlen(sha) != 64 || strspn(sha, "0123456789abcdef") != 64)
            return slim_error_set(err, SLIM_ESPEC, "model.sha256: expected 64 lowercase hex "
                                  "digits");
    } else {
        return slim_error_set(err, SLIM_ESPEC, "model: an object names the model by \"name\" "
                              "or by \"sha256\", not '%.40s'", json_object_iter_key(
                                                                json_object_iter(model)));
    }
    /* the newest first: the store lists newest first */
    rc = store_model_find(ctx->st, api_request_owner(req), name, sha, 1, 0, &rows, &total, err);
    if (!rc && !json_array_size(rows))
        rc = slim_error_set(err, SLIM_ENOTFOUND, name ? "model.name: no model is named '%.80s'"
                                                      : "model.sha256: no model has sha256 %.64s",
                            name ? name : sha);
    if (!rc) {
        *mrow = json_incref(json_array_get(rows, 0));
        rc = json_object_set(body, "model", json_object_get(*mrow, "id"))
                 ? slim_error_set(err, SLIM_ENOMEM, "out of memory") : 0;
    }
    json_decref(rows);
    return rc;
}

/* A spec's own checks, before anything is stored or looked up: the
 * pipeline's parser, name and labels.  *spec: new, or NULL on error. */
static int check_spec(json_t *body, struct slim_spec **spec, struct slim_error *err)
{
    int rc;
    *spec = NULL;
    if (!json_is_object(body))
        return slim_error_set(err, SLIM_ESPEC, "job spec: expected a JSON object");
    if ((rc = slim_spec_parse(body, api_spec_top_keys, spec, err)))
        return rc;
    if ((rc = check_name_labels(body, err))) {
        slim_spec_free(*spec);
        *spec = NULL;
    }
    return rc;
}

/* Queues the job a parsed spec describes (body borrowed; its "model" is
 * resolved in place).  *row: the job, new. */
static int submit(struct api_ctx *ctx, struct api_request *req, json_t *body, json_t **row,
                  struct slim_error *err)
{
    struct slim_spec *spec = NULL;
    json_t *mrow = NULL, *drow;
    const char *dataset, *notify_url = NULL;
    uint64_t mem = 0, data_bytes = 0;
    int rc;

    *row = NULL;
    if ((rc = check_spec(body, &spec, err)) || (rc = api_notify_url(body, &notify_url, err)) ||
        (rc = resolve_model(ctx, req, body, &mrow, err)))
        goto out;
    /* an eval dataset must exist, like the model (404 when it does not;
     * the insert checks again, atomically, and records the reference
     * that keeps the dataset from being deleted under the job) */
    dataset = slim_spec_eval_dataset(spec);
    if (dataset && !(rc = store_dataset_get(ctx->st, dataset, &drow, err))) {
        if (!api_request_sees(req, drow))
            rc = slim_error_set(err, SLIM_ENOTFOUND, "dataset %.64s does not exist", dataset);
        json_decref(drow);
    }
    if (!rc)
        rc = check_refs(ctx, req, spec, &data_bytes, err);
    /* the artifact goes to the data dir too: refuse the job now if the
     * disk could not hold one the size of its model */
    if (!rc)
        rc = store_check_free(ctx->st, ctx->min_free + (uint64_t)json_integer_value(
                                                           json_object_get(mrow, "bytes")), err);
    if (!rc)
        rc = reserve_memory(ctx, spec, json_string_value(json_object_get(mrow, "sha256")),
                            data_bytes, &mem, err);
    if (!rc)
        rc = store_job_insert(ctx->st, api_request_creator(req),
                              json_string_value(json_object_get(mrow, "id")), dataset, body, mem,
                              ctx->max_queued, row, err);
    if (rc == SLIM_ENOTFOUND && dataset && !strncmp(err->msg, "dataset ", 8))
        slim_error_prefix(err, "eval.dataset");
    /* the webhook is recorded before the runner hears of the job; if it
     * cannot be, the job is withdrawn rather than run without it */
    if (!rc && notify_url &&
        (rc = store_webhook_add(ctx->st, json_string_value(json_object_get(*row, "id")),
                                notify_url, err))) {
        int was_running = 0;
        store_job_cancel(ctx->st, json_string_value(json_object_get(*row, "id")), &was_running,
                         NULL);
        json_decref(*row);
        *row = NULL;
    }
out:
    json_decref(mrow);
    slim_spec_free(spec);   /* after the insert: dataset is borrowed from it */
    return rc;
}

/* The body's text as a spec: *body new, or an error naming the problem. */
static int parse_spec(const char *text, size_t len, json_t **body, struct slim_error *err)
{
    json_error_t jerr;
    if (len == 0)
        return slim_error_set(err, SLIM_ESPEC, "empty body: expected a job spec {\"model\": ..., "
                              "\"passes\": [...]}");
    if (!(*body = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr)))
        return slim_error_set(err, SLIM_ESPEC, "body is not valid JSON: %s (line %d, column %d)",
                              jerr.text, jerr.line, jerr.column);
    return 0;
}

/* The answer to a submission: the job (202, remembered under the
 * Idempotency-Key) or the error (the key released). */
static enum MHD_Result submitted(struct api_ctx *ctx, struct MHD_Connection *conn,
                                 struct api_request *req, struct api_idem *idem, int rc,
                                 json_t *row, const struct slim_error *err)
{
    char loc[128];
    if (rc) {
        api_idem_release(ctx, idem);
        return api_reply_slim_error(conn, req, err);
    }
    log_info("job %s queued (model %s%s%s)", json_string_value(json_object_get(row, "id")),
             json_string_value(json_object_get(row, "model")),
             json_is_string(json_object_get(row, "name")) ? ", name " : "",
             json_is_string(json_object_get(row, "name"))
                 ? json_string_value(json_object_get(row, "name")) : "");
    if (ctx->hooks && ctx->hooks->wake)
        ctx->hooks->wake(ctx->hooks->ud);
    snprintf(loc, sizeof loc, "/v1/jobs/%s", json_string_value(json_object_get(row, "id")));
    return api_idem_reply(ctx, conn, req, idem, 202, row, loc);
}

enum { PART_MODEL = 0, PART_SPEC = 1 };   /* server.c's job_fields */

/* Upload and submit in one request: multipart fields `model` (the file)
 * and `spec` (the JSON spec, without "model": the upload is the model).
 * The spec is checked before the model is stored, and the model is
 * removed again when the job cannot be queued, so a refused request
 * leaves nothing.  The model is named by ?name=, else the file name. */
static enum MHD_Result submit_multipart(struct api_ctx *ctx, struct MHD_Connection *conn,
                                        struct api_request *req)
{
    struct api_upload *up = api_request_upload(req);
    struct slim_spec *spec = NULL;
    struct slim_error err;
    struct api_idem idem;
    enum MHD_Result ret;
    json_t *body = NULL, *mrow = NULL, *row = NULL;
    char text[64 * 1024 + 1], sha[65], what[200];
    size_t len = 0;
    int rc = 0;

    memset(&idem, 0, sizeof idem);
    MHD_post_process(up->pp, NULL, 0);
    if (!api_idem_check(conn, req, &ret)) {
        api_upload_discard(up);
        return ret;
    }
    if (up->failed)
        rc = slim_error_set(&err, up->failed, "%s", up->msg);
    else if (!up->seen[PART_SPEC] || !up->part[PART_SPEC])
        rc = slim_error_set(&err, SLIM_ESPEC, "multipart job: no field named 'spec' (use curl "
                            "-F model=@model.safetensors -F spec=@spec.json)");
    else if (store_blob_bytes(up->part[PART_SPEC]) > sizeof text - 1)
        rc = slim_error_set(&err, SLIM_ETOOBIG, "spec: over the limit of %zu bytes",
                            sizeof text - 1);
    else if (api_read_head(store_blob_temp_path(up->part[PART_SPEC]), (unsigned char *)text,
                           sizeof text - 1, &len))
        rc = slim_error_set(&err, SLIM_EIO, "cannot read the spec field back");
    store_blob_abort(up->part[PART_SPEC]);
    up->part[PART_SPEC] = NULL;
    if (!rc)
        rc = parse_spec(text, len, &body, &err);
    if (!rc && json_is_object(body) && json_object_get(body, "model"))
        rc = slim_error_set(&err, SLIM_ESPEC, "model: leave it out of the spec: the multipart "
                            "field 'model' is the model");
    if (!rc && !(rc = check_spec(body, &spec, &err)))
        slim_spec_free(spec);
    if (!rc)
        rc = api_model_store(ctx, req, PART_MODEL, "model", api_upload_name(conn), &mrow, &err);
    if (rc) {
        api_upload_discard(up);
        json_decref(body);
        return api_reply_slim_error(conn, req, &err);
    }
    /* the request is the model's bytes, its name and the spec */
    snprintf(what, sizeof what, "%s?name=%s\n", json_string_value(json_object_get(mrow, "sha256")),
             api_upload_name(conn) ? api_upload_name(conn) : "");
    {
        struct store_hash *h;
        if (!(rc = store_hash_new(&h, &err))) {
            store_hash_update(h, what, strlen(what));
            store_hash_update(h, text, len);
            rc = store_hash_final(h, sha, &err);
        }
    }
    if (!rc && !api_idem_begin(ctx, conn, req, "POST /v1/jobs", sha, &idem, &ret)) {
        store_model_delete(ctx->st, json_string_value(json_object_get(mrow, "id")), NULL);
        json_decref(mrow);
        json_decref(body);
        return ret;
    }
    if (!rc && json_object_set(body, "model", json_object_get(mrow, "id")))
        rc = slim_error_set(&err, SLIM_ENOMEM, "out of memory");
    if (!rc)
        rc = submit(ctx, req, body, &row, &err);
    if (rc)   /* the model came for this job alone */
        store_model_delete(ctx->st, json_string_value(json_object_get(mrow, "id")), NULL);
    json_decref(mrow);
    json_decref(body);
    return submitted(ctx, conn, req, &idem, rc, row, &err);
}

enum MHD_Result api_jobs_submit(struct api_ctx *ctx, struct MHD_Connection *conn,
                                struct api_request *req)
{
    struct slim_error err;
    struct api_idem idem;
    enum MHD_Result ret;
    json_t *body = NULL, *row = NULL;
    size_t len;
    const char *text = api_request_body(req, &len);
    char sha[65];
    int rc;

    if (api_request_upload(req)->pp)
        return submit_multipart(ctx, conn, req);
    if (api_sha256_hex(text, len, sha, &err))
        return api_reply_slim_error(conn, req, &err);
    if (!api_idem_begin(ctx, conn, req, "POST /v1/jobs", sha, &idem, &ret))
        return ret;
    rc = parse_spec(text, len, &body, &err);
    if (!rc)
        rc = submit(ctx, req, body, &row, &err);
    json_decref(body);
    return submitted(ctx, conn, req, &idem, rc, row, &err);
}

static const char *const jobs_query[] = {"limit", "offset", "state", "name", "model", "label",
                                         NULL};

/* Every ?label=k:v of the request into one JSON object (AND). */
struct label_args {
    json_t *obj;
    const char *bad;      /* the first value without a ':' */
};

static enum MHD_Result label_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                 const char *value)
{
    struct label_args *a = cls;
    const char *colon;
    (void)kind;
    if (strcmp(key, "label"))
        return MHD_YES;
    if (!value || !(colon = strchr(value, ':')) || colon == value || !colon[1]) {
        a->bad = value ? value : "";
        return MHD_NO;
    }
    char k[64];
    snprintf(k, sizeof k, "%.*s", (int)(colon - value) < 63 ? (int)(colon - value) : 63, value);
    json_object_set_new(a->obj, k, json_string(colon + 1));
    return MHD_YES;
}

enum MHD_Result api_jobs_list(struct api_ctx *ctx, struct MHD_Connection *conn,
                              struct api_request *req)
{
    const char *state = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "state");
    struct store_job_filter f = {
        .owner = api_request_owner(req),
        .state = -1,
        .name = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "name"),
        .model = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "model"),
    };
    struct label_args la = {json_object(), NULL};
    struct slim_error err;
    int limit, offset, total, rc;
    enum MHD_Result ret;
    char *labels = NULL;
    json_t *rows;

    if (!la.obj)
        return api_reply_error(conn, req, SLIM_ENOMEM, "out of memory");
    if (!api_query_check(conn, req, jobs_query, &ret) ||
        !api_paging(conn, req, &limit, &offset, &ret)) {
        json_decref(la.obj);
        return ret;
    }
    if (state && (f.state = store_job_state_parse(state)) < 0) {
        json_decref(la.obj);
        return api_reply_error(conn, req, SLIM_EINVAL,
                               "state: '%.40s' is not one of queued, running, succeeded, failed, "
                               "canceled", state);
    }
    MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, label_arg, &la);
    if (la.bad) {
        ret = api_reply_error(conn, req, SLIM_EINVAL, "label: expected KEY:VALUE (e.g. "
                              "label=branch:main), got '%.80s'", la.bad);
        json_decref(la.obj);
        return ret;
    }
    if (json_object_size(la.obj) && !(labels = json_dumps(la.obj, JSON_COMPACT))) {
        json_decref(la.obj);
        return api_reply_error(conn, req, SLIM_ENOMEM, "out of memory");
    }
    json_decref(la.obj);
    f.labels = labels;
    rc = store_job_find(ctx->st, &f, limit, offset, &rows, &total, &err);
    free(labels);
    if (rc)
        return api_reply_slim_error(conn, req, &err);
    return api_reply_json(conn, req, 200,
                          json_pack("{s:o, s:i, s:i, s:i}", "jobs", rows, "total", total,
                                    "limit", limit, "offset", offset),
                          NULL);
}

/* A job the caller may not see is answered 404 (see the file comment);
 * the owner never changes, so checking before the change races with
 * nothing. */
static int job_visible(struct api_ctx *ctx, struct api_request *req, const char *id,
                       struct slim_error *err)
{
    json_t *row;
    int sees, rc = store_job_get(ctx->st, id, &row, err);
    if (rc)
        return rc;
    sees = api_request_sees(req, row);
    json_decref(row);
    return sees ? 0 : slim_error_set(err, SLIM_ENOTFOUND, "job %.64s does not exist", id);
}

/* 204: the job, its report and its artifact (when nothing else shares
 * its blob) are gone.  A queued job may be deleted (it never runs); a
 * running one is 409: cancel it first. */
enum MHD_Result api_jobs_delete(struct api_ctx *ctx, struct MHD_Connection *conn,
                                struct api_request *req, const char *id)
{
    struct slim_error err;
    uint64_t freed = 0;
    if (job_visible(ctx, req, id, &err) || store_job_delete(ctx->st, id, &freed, &err))
        return api_reply_slim_error(conn, req, &err);
    log_info("job %s deleted (%llu bytes freed)", id, (unsigned long long)freed);
    return api_reply_empty(conn, req, 204);
}

/* A pinned job is never removed by retention (--retain-days,
 * --max-data-bytes); DELETE still removes it. */
enum MHD_Result api_jobs_pin(struct api_ctx *ctx, struct MHD_Connection *conn,
                             struct api_request *req, const char *id, int pin)
{
    struct slim_error err;
    json_t *row;
    if (job_visible(ctx, req, id, &err) || store_job_pin(ctx->st, id, pin, &row, &err))
        return api_reply_slim_error(conn, req, &err);
    log_info("job %s %s", id, pin ? "pinned" : "unpinned");
    return api_reply_json(conn, req, 200, row, NULL);
}

/* The job's state as a reason why its report/artifact is not there. */
static enum MHD_Result not_ready(struct MHD_Connection *conn, struct api_request *req,
                                 json_t *row, const char *what)
{
    const char *state = json_string_value(json_object_get(row, "state"));
    enum MHD_Result r = api_reply_error(conn, req, SLIM_ECONFLICT,
                                        "job %s is %s: its %s exists once it has succeeded",
                                        json_string_value(json_object_get(row, "id")), state,
                                        what);
    json_decref(row);
    return r;
}

enum MHD_Result api_jobs_get(struct api_ctx *ctx, struct MHD_Connection *conn,
                             struct api_request *req, const char *id, const char *sub)
{
    struct slim_error err;
    json_t *row, *rep, *art;
    char path[4096], fname[200];
    enum MHD_Result r;

    if (store_job_get(ctx->st, id, &row, &err))
        return api_reply_slim_error(conn, req, &err);
    if (!api_request_sees(req, row)) {
        json_decref(row);
        return api_reply_error(conn, req, SLIM_ENOTFOUND, "job %.64s does not exist", id);
    }
    if (!sub) {
        if (!api_jobs_wait(ctx, conn, req, id, &row, &r)) {
            json_decref(row);
            return r;
        }
        return api_reply_json(conn, req, 200, row, NULL);
    }
    /* a job that failed a quality gate keeps its artifact and report */
    if (strcmp(json_string_value(json_object_get(row, "state")), "succeeded") &&
        !json_is_object(json_object_get(row, "artifact")))
        return not_ready(conn, req, row, strcmp(sub, "artifact") ? "report" : "artifact");
    if (!strcmp(sub, "artifact")) {
        art = json_object_get(row, "artifact");
        const char *sha = json_string_value(json_object_get(art, "sha256"));
        if (api_blob_local(ctx, conn, sha, path, sizeof path, &err)) {
            json_decref(row);
            return api_reply_slim_error(conn, req, &err);
        }
        /* a sharded model's artifact is a tar of its shards and index;
         * so is an ONNX model with external data (the .onnx and its data) */
        int kind = slim_pipeline_output_kind(path), tar = kind == 2;
        snprintf(fname, sizeof fname, "%s.%s", id,
                 tar ? "tar" : kind == 3 ? "onnx" : "safetensors");
        r = api_reply_file(conn, req, path, sha, tar ? "application/x-tar" :
                           "application/octet-stream", fname);
        json_decref(row);
        return r;
    }
    json_decref(row);
    if (store_job_report(ctx->st, id, &rep, &err))
        return api_reply_slim_error(conn, req, &err);
    return api_reply_json(conn, req, 200, rep, NULL);
}

enum MHD_Result api_jobs_cancel(struct api_ctx *ctx, struct MHD_Connection *conn,
                                struct api_request *req, const char *id)
{
    struct slim_error err;
    int was_running = 0, sees;
    json_t *row;
    /* a submit token cancels its own jobs, an admin anyone's; the owner
     * never changes, so this check races with nothing */
    if (store_job_get(ctx->st, id, &row, &err))
        return api_reply_slim_error(conn, req, &err);
    sees = api_request_sees(req, row);
    json_decref(row);
    if (!sees)
        return api_reply_error(conn, req, SLIM_ENOTFOUND, "job %.64s does not exist", id);
    if (store_job_cancel(ctx->st, id, &was_running, &err))
        return api_reply_slim_error(conn, req, &err);
    if (was_running && ctx->hooks && ctx->hooks->cancel)
        ctx->hooks->cancel(ctx->hooks->ud, id);
    log_info("job %s %s", id, was_running ? "cancel requested" : "canceled");
    if (store_job_get(ctx->st, id, &row, &err))
        return api_reply_slim_error(conn, req, &err);
    return api_reply_json(conn, req, 200, row, NULL);
}
