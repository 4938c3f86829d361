/*
 * misc.c - health and Prometheus metrics (the dashboard is in pages.c).
 *
 * Request counters are atomics bumped by server.c's completion callback,
 * one per status class; job gauges are read from SQLite at scrape time,
 * so they are right across restarts without bookkeeping.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "api/api.h"

static atomic_long requests_by_class[6]; /* index status / 100 */

void api_metrics_count(int status)
{
    int c = status / 100;
    atomic_fetch_add(&requests_by_class[c >= 1 && c <= 5 ? c : 0], 1);
}

enum MHD_Result api_health(struct api_ctx *ctx, struct MHD_Connection *conn,
                           struct api_request *req)
{
    (void)ctx;
    return api_reply_json(conn, req, 200,
                          json_pack("{s:s, s:s}", "status", "ok", "version", SLIMD_VERSION), NULL);
}

enum MHD_Result api_metrics(struct api_ctx *ctx, struct MHD_Connection *conn,
                            struct api_request *req)
{
    int64_t counts[5];
    struct slim_error err;
    char *buf = NULL;
    size_t len = 0;
    FILE *f;
    if (store_job_counts(ctx->st, counts, &err))
        return api_reply_slim_error(conn, req, &err);
    f = open_memstream(&buf, &len);
    if (!f)
        return api_reply_error(conn, req, SLIM_ENOMEM, "out of memory");
    fputs("# HELP slimd_jobs Jobs by state.\n# TYPE slimd_jobs gauge\n", f);
    for (int s = 0; s < 5; s++)
        fprintf(f, "slimd_jobs{state=\"%s\"} %lld\n", store_job_state_name(s),
                (long long)counts[s]);
    fputs("# HELP slimd_http_requests_total HTTP requests by status class.\n"
          "# TYPE slimd_http_requests_total counter\n", f);
    for (int c = 1; c <= 5; c++)
        fprintf(f, "slimd_http_requests_total{code=\"%dxx\"} %ld\n", c,
                atomic_load(&requests_by_class[c]));
    fprintf(f, "# HELP slimd_build_info Version.\n# TYPE slimd_build_info gauge\n"
               "slimd_build_info{version=\"%s\"} 1\n", SLIMD_VERSION);
    fclose(f);
    return api_reply_text(conn, req, 200, buf, len, "text/plain; version=0.0.4");
}
