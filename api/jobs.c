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
 * report.html is a page: its CSP allows its one inline style by hash
 * and nothing else (no script, no images but its inline SVG).
 */
#include <pthread.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "api/api.h"
#include "daemon/log.h"

static const char *const spec_top_keys[] = {"model", NULL};

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
    if ((rc = slim_pipeline_estimate(spec, path, &need, err)))
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
    uint64_t mem = 0, data_bytes = 0;
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
    if (!rc)
        rc = check_refs(ctx, req, spec, &data_bytes, &err);
    /* the artifact goes to the data dir too: refuse the job now if the
     * disk could not hold one the size of its model */
    if (!rc)
        rc = store_check_free(ctx->st, ctx->min_free + (uint64_t)json_integer_value(
                                                           json_object_get(mrow, "bytes")), &err);
    if (!rc)
        rc = reserve_memory(ctx, spec, json_string_value(json_object_get(mrow, "sha256")),
                            data_bytes, &mem, &err);
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

static void html_escape(FILE *f, const char *s)
{
    for (; s && *s; s++) {
        switch (*s) {
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*s, f);
        }
    }
}

/* One row "label | before | after" of an {"before", "after"} pair. */
static void pair_row(FILE *f, const char *label, json_t *pair, double mul, const char *fmt)
{
    char b[64], a[64];
    if (!json_is_object(pair))
        return;
    snprintf(b, sizeof b, fmt, mul * json_number_value(json_object_get(pair, "before")));
    snprintf(a, sizeof a, fmt, mul * json_number_value(json_object_get(pair, "after")));
    fprintf(f, "<tr><td>%s</td><td>%s</td><td>%s</td></tr>", label, b, a);
}

/* The model's answers before and after (ONNX jobs): accuracy on the
 * eval dataset, or the output drift on a random batch. */
static void eval_html(FILE *f, json_t *rep)
{
    json_t *acc = json_object_get(rep, "accuracy"), *ev = acc ? acc : json_object_get(rep, "drift");
    if (!json_is_object(ev))
        return;
    if (json_is_string(json_object_get(ev, "skipped"))) {
        fputs("<h2>Output drift</h2><p>Not measured: ", f);
        html_escape(f, json_string_value(json_object_get(ev, "skipped")));
        fputs("</p>", f);
        return;
    }
    fprintf(f, "<h2>%s</h2><p>%lld samples", acc ? "Accuracy" : "Output drift (random input)",
            (long long)json_integer_value(json_object_get(ev, "samples")));
    if (json_is_string(json_object_get(ev, "dataset"))) {
        fputs(" of dataset ", f);
        html_escape(f, json_string_value(json_object_get(ev, "dataset")));
    }
    fprintf(f, ", measured on the artifact as written.</p><table><tr><th></th><th>before</th>"
               "<th>after</th></tr>");
    if (json_object_get(ev, "before")) {
        json_t *top1 = json_pack("{s:O, s:O}", "before", json_object_get(ev, "before"), "after",
                                 json_object_get(ev, "after"));
        pair_row(f, "top-1 accuracy", top1, 100.0, "%.2f %%");
        json_decref(top1);
    }
    pair_row(f, "top-5 accuracy", json_object_get(ev, "top5"), 100.0, "%.2f %%");
    pair_row(f, "cross-entropy", json_object_get(ev, "cross_entropy"), 1.0, "%.4f");
    pair_row(f, "samples/s", json_object_get(ev, "throughput"), 1.0, "%.0f");
    pair_row(f, "ms per batch", json_object_get(ev, "latency_ms"), 1.0, "%.2f");
    fprintf(f, "</table><p>Agreement (same top class): %.2f %%; output drift: relative error "
               "%.3g, max |&Delta;| %.3g.</p>",
            100.0 * json_number_value(json_object_get(ev, "agreement")),
            json_number_value(json_object_get(json_object_get(ev, "output_drift"),
                                              "relative_error")),
            json_number_value(json_object_get(json_object_get(ev, "output_drift"),
                                              "max_abs_error")));
}

/* report.html's one style sheet, inline; its hash is in the page's CSP. */
static const char report_style[] =
    "body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
    "td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}"
    "td:first-child,th:first-child{text-align:left}";
static char report_csp[256];
static pthread_once_t report_csp_once = PTHREAD_ONCE_INIT;

static void report_csp_init(void)
{
    char hash[64];
    if (api_csp_hash(report_style, hash, sizeof hash))
        snprintf(hash, sizeof hash, "'none'");   /* unstyled, still safe */
    snprintf(report_csp, sizeof report_csp, "default-src 'none'; style-src %s; "
             "frame-ancestors 'none'; base-uri 'none'; form-action 'none'", hash);
}

/* A page for people: totals, then a bar per tensor of its relative
 * error (inline SVG, no scripts), then the table. */
static char *report_html(const char *job_id, json_t *rep)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    json_t *tensors = json_object_get(rep, "tensors"), *t, *totals = json_object_get(rep, "totals");
    size_t i, n = json_array_size(tensors);
    double maxe = 0;
    if (!f)
        return NULL;
    json_array_foreach(tensors, i, t) {
        double e = json_number_value(json_object_get(t, "rel_error"));
        if (e > maxe)
            maxe = e;
    }
    fprintf(f, "<!doctype html><html><head><meta charset=\"utf-8\"><title>slimd report %s</title>"
               "<style>%s</style></head><body>", job_id, report_style);
    fprintf(f, "<h1>Report for %s</h1><p>%lld bytes &rarr; %lld bytes (ratio %.2f), %lld "
               "parameters</p>", job_id,
            (long long)json_integer_value(json_object_get(totals, "bytes_before")),
            (long long)json_integer_value(json_object_get(totals, "bytes_after")),
            json_number_value(json_object_get(totals, "ratio")),
            (long long)json_integer_value(json_object_get(totals, "params")));
    eval_html(f, rep);
    fprintf(f, "<h2>Relative error per tensor</h2><svg width=\"720\" height=\"%zu\" "
               "role=\"img\">", n * 18 + 4);
    json_array_foreach(tensors, i, t) {
        double e = json_number_value(json_object_get(t, "rel_error"));
        double w = maxe > 0 ? 440.0 * e / maxe : 0;
        fprintf(f, "<text x=\"0\" y=\"%zu\" font-size=\"12\">", i * 18 + 14);
        html_escape(f, json_string_value(json_object_get(t, "name")));
        fprintf(f, "</text><rect x=\"220\" y=\"%zu\" width=\"%.1f\" height=\"14\" "
                   "fill=\"#4a7\"/><text x=\"%.1f\" y=\"%zu\" font-size=\"12\">%.3g</text>",
                i * 18 + 2, w, 224 + w, i * 18 + 14, e);
    }
    fputs("</svg><h2>Tensors</h2><table><tr><th>name</th><th>dtype</th><th>bytes before</th>"
          "<th>bytes after</th><th>rel. error</th><th>SNR dB</th></tr>", f);
    json_array_foreach(tensors, i, t) {
        json_t *snr = json_object_get(t, "snr_db");
        fputs("<tr><td>", f);
        html_escape(f, json_string_value(json_object_get(t, "name")));
        fprintf(f, "</td><td>%s &rarr; %s</td><td>%lld</td><td>%lld</td><td>%.3g</td><td>",
                json_string_value(json_object_get(t, "dtype_before")),
                json_string_value(json_object_get(t, "dtype_after")),
                (long long)json_integer_value(json_object_get(t, "bytes_before")),
                (long long)json_integer_value(json_object_get(t, "bytes_after")),
                json_number_value(json_object_get(t, "rel_error")));
        if (json_is_number(snr))
            fprintf(f, "%.1f", json_number_value(snr));
        else
            fputs("exact", f);
        fputs("</td></tr>", f);
    }
    fputs("</table></body></html>\n", f);
    fclose(f);
    return buf;
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
    if (!strcmp(sub, "report"))
        return api_reply_json(conn, req, 200, rep, NULL);
    char *html = report_html(id, rep);
    json_decref(rep);
    if (!html)
        return api_reply_error(conn, req, SLIM_ENOMEM, "out of memory");
    pthread_once(&report_csp_once, report_csp_init);
    return api_reply_html(conn, req, html, strlen(html), report_csp);
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
