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

static const char *const spec_top_keys[] = {"model", NULL};

/* The memory a job reserves while it runs: its limits.memory_mb, or the
 * pipeline's estimate for its model.  A job whose estimate is over its
 * own limit, or whose reservation is over the daemon's whole budget
 * (--job-memory-mb), could never run: it is refused now, with the tensor
 * that needs the memory named. */
static int reserve_memory(struct api_ctx *ctx, const struct slim_spec *spec, const char *sha,
                          uint64_t *mem, struct slim_error *err)
{
    uint64_t need = 0, limit = slim_spec_memory_limit(spec);
    char path[4096], detail[160];
    int rc;
    store_blob_path(ctx->st, sha, path, sizeof path);
    if ((rc = slim_pipeline_estimate(spec, path, &need, err)))
        return rc;
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

enum MHD_Result api_jobs_submit(struct api_ctx *ctx, struct MHD_Connection *conn,
                                struct api_request *req)
{
    const char *ct = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_TYPE);
    struct slim_spec *spec = NULL;
    struct slim_error err;
    json_error_t jerr;
    json_t *body, *model, *mrow, *drow, *row;
    const char *dataset;
    uint64_t mem = 0;
    int rc = 0;
    size_t len;
    const char *text = api_request_body(req, &len);
    char loc[128];

    if (ct && !strncasecmp(ct, "multipart/", 10))
        return api_reply_error(conn, req, SLIM_EMEDIA,
                               "job specs are JSON: send them with -H 'Content-Type: "
                               "application/json' -d @spec.json");
    if (len == 0)
        return api_reply_error(conn, req, SLIM_ESPEC,
                               "empty body: expected a job spec {\"model\": ..., \"passes\": [...]}");
    body = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!body)
        return api_reply_error(conn, req, SLIM_ESPEC, "body is not valid JSON: %s (line %d, column %d)",
                               jerr.text, jerr.line, jerr.column);
    if (!json_is_object(body)) {
        json_decref(body);
        return api_reply_error(conn, req, SLIM_ESPEC, "job spec: expected a JSON object");
    }
    model = json_object_get(body, "model");
    if (!json_is_string(model)) {
        json_decref(body);
        return api_reply_error(conn, req, SLIM_ESPEC,
                               "model: required, the id of an uploaded model (mdl_...)");
    }
    if (slim_spec_parse(body, spec_top_keys, &spec, &err)) {
        json_decref(body);
        return api_reply_slim_error(conn, req, &err);
    }
    rc = store_model_get(ctx->st, json_string_value(model), &mrow, &err);
    if (!rc && !api_request_sees(req, mrow)) {   /* another token's model */
        json_decref(mrow);
        rc = slim_error_set(&err, SLIM_ENOTFOUND, "model %.64s does not exist",
                            json_string_value(model));
    }
    if (rc) {
        slim_spec_free(spec);
        json_decref(body);
        return api_reply_slim_error(conn, req, &err);
    }
    /* an eval dataset must exist, like the model (404 when it does not;
     * the insert checks again, atomically, and records the reference
     * that keeps the dataset from being deleted under the job) */
    dataset = slim_spec_eval_dataset(spec);
    if (dataset && !(rc = store_dataset_get(ctx->st, dataset, &drow, &err))) {
        if (!api_request_sees(req, drow))
            rc = slim_error_set(&err, SLIM_ENOTFOUND, "dataset %.64s does not exist", dataset);
        json_decref(drow);
    }
    /* the artifact goes to the data dir too: refuse the job now if the
     * disk could not hold one the size of its model */
    if (!rc)
        rc = store_check_free(ctx->st, ctx->min_free + (uint64_t)json_integer_value(
                                                           json_object_get(mrow, "bytes")), &err);
    if (!rc)
        rc = reserve_memory(ctx, spec, json_string_value(json_object_get(mrow, "sha256")),
                            &mem, &err);
    json_decref(mrow);
    if (!rc)
        rc = store_job_insert(ctx->st, api_request_creator(req), json_string_value(model),
                              dataset, body, mem, ctx->max_queued, &row, &err);
    if (rc == SLIM_ENOTFOUND && dataset && !strncmp(err.msg, "dataset ", 8))
        slim_error_prefix(&err, "eval.dataset");
    slim_spec_free(spec);   /* after the insert: dataset is borrowed from it */
    if (rc) {
        json_decref(body);
        return api_reply_slim_error(conn, req, &err);
    }
    log_info("job %s queued (model %s)", json_string_value(json_object_get(row, "id")),
             json_string_value(model));
    json_decref(body);
    if (ctx->hooks && ctx->hooks->wake)
        ctx->hooks->wake(ctx->hooks->ud);
    snprintf(loc, sizeof loc, "/v1/jobs/%s", json_string_value(json_object_get(row, "id")));
    return api_reply_json(conn, req, 202, row, loc);
}

enum MHD_Result api_jobs_list(struct api_ctx *ctx, struct MHD_Connection *conn,
                              struct api_request *req)
{
    const char *state = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "state");
    struct slim_error err;
    int limit, offset, total, st = -1;
    enum MHD_Result ret;
    json_t *rows;

    if (!api_paging(conn, req, &limit, &offset, &ret))
        return ret;
    if (state && (st = store_job_state_parse(state)) < 0)
        return api_reply_error(conn, req, SLIM_EINVAL,
                               "state: '%.40s' is not one of queued, running, succeeded, failed, "
                               "canceled", state);
    if (store_job_list(ctx->st, api_request_owner(req), st, limit, offset, &rows, &total, &err))
        return api_reply_slim_error(conn, req, &err);
    return api_reply_json(conn, req, 200,
                          json_pack("{s:o, s:i, s:i, s:i}", "jobs", rows, "total", total,
                                    "limit", limit, "offset", offset),
                          NULL);
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
    if (!sub)
        return api_reply_json(conn, req, 200, row, NULL);
    if (strcmp(json_string_value(json_object_get(row, "state")), "succeeded"))
        return not_ready(conn, req, row, strcmp(sub, "artifact") ? "report" : "artifact");
    if (!strcmp(sub, "artifact")) {
        art = json_object_get(row, "artifact");
        const char *sha = json_string_value(json_object_get(art, "sha256"));
        store_blob_path(ctx->st, sha, path, sizeof path);
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
