/*
 * misc.c - health, Prometheus metrics and the dashboard page.
 *
 * Request counters are atomics bumped by server.c's completion callback,
 * one per status class; job gauges are read from SQLite at scrape time,
 * so they are right across restarts without bookkeeping.
 */
#include <stdatomic.h>
#include <stdio.h>
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

/* The dashboard: one static page that reads the JSON API from the
 * browser; nothing is rendered server-side, so it can never disagree
 * with what the API says. */
static const char dashboard_html[] =
    "<!doctype html><html><head><meta charset=\"utf-8\"><title>slimd</title>"
    "<style>body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
    "td,th{padding:2px 10px;border-bottom:1px solid #ddd;text-align:left}</style></head>"
    "<body><h1>slimd</h1><h2>Jobs</h2><table id=\"jobs\"><tr><th>id</th><th>model</th>"
    "<th>state</th><th>progress</th><th>created</th><th>report</th></tr></table>"
    "<h2>Models</h2><table id=\"models\"><tr><th>id</th><th>name</th><th>bytes</th>"
    "<th>params</th></tr></table><script>\n"
    "function cell(r,t){const d=document.createElement('td');d.textContent=t;r.appendChild(d);return d}\n"
    "async function load(){\n"
    " const j=await (await fetch('/v1/jobs?limit=50')).json();const jt=document.getElementById('jobs');\n"
    " while(jt.rows.length>1)jt.deleteRow(1);\n"
    " for(const x of j.jobs){const r=jt.insertRow();cell(r,x.id);cell(r,x.model||'');cell(r,x.state+(x.error?': '+x.error:''));\n"
    "  cell(r,Math.round(x.progress*100)+'%');cell(r,x.created_at);const c=cell(r,'');\n"
    "  if(x.state==='succeeded'){const a=document.createElement('a');a.href='/v1/jobs/'+x.id+'/report.html';a.textContent='report';c.appendChild(a)}}\n"
    " const m=await (await fetch('/v1/models?limit=50')).json();const mt=document.getElementById('models');\n"
    " while(mt.rows.length>1)mt.deleteRow(1);\n"
    " for(const x of m.models){const r=mt.insertRow();cell(r,x.id);cell(r,x.name);cell(r,x.bytes);cell(r,x.params)}}\n"
    "load();setInterval(load,2000);\n"
    "</script></body></html>\n";

enum MHD_Result api_dashboard(struct api_ctx *ctx, struct MHD_Connection *conn,
                              struct api_request *req)
{
    char *page = strdup(dashboard_html);
    (void)ctx;
    if (!page)
        return api_reply_error(conn, req, SLIM_ENOMEM, "out of memory");
    return api_reply_text(conn, req, 200, page, sizeof dashboard_html - 1,
                          "text/html; charset=utf-8");
}
