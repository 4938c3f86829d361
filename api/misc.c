/*
 * misc.c - health, Prometheus metrics and the dashboard page.
 *
 * Request counters are atomics bumped by server.c's completion callback,
 * one per status class; job gauges are read from SQLite at scrape time,
 * so they are right across restarts without bookkeeping.
 */
#include <pthread.h>
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

/* The dashboard: one static page that reads the JSON API from the
 * browser; nothing is rendered server-side, so it can never disagree
 * with what the API says.  The page itself is open (it holds no data);
 * with --auth token its requests need a token, which the user pastes
 * into the page once per tab: it stays in sessionStorage and goes out
 * as "Authorization: Bearer", never as a cookie (a cookie would ride
 * along with other sites' requests).  A report opens as a plain link
 * without a token; with one, the page fetches report.html with the
 * token and shows it in place (a link cannot carry the header), minus
 * its style sheet, which the dashboard's CSP would refuse (and the
 * browser report) as soon as the fetched page is parsed.
 *
 * Its CSP allows exactly its inline style and script, by their SHA-256
 * (computed once, below), and connections to itself only: an injected
 * script or handler would not run.  Rejected: 'unsafe-inline' (what the
 * CSP is there to forbid), a nonce (a fresh one per response for a
 * page that never changes), and serving the script as /dashboard.js
 * (another route for the same guarantee). */
static const char dashboard_style[] =
    "body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
    "td,th{padding:2px 10px;border-bottom:1px solid #ddd;text-align:left}"
    "#report td,#report th{text-align:right}";
static const char dashboard_script[] =
    "\nconst K='slimd.token';\n"
    "const $=id=>document.getElementById(id);\n"
    "function auth(){const t=sessionStorage.getItem(K);return t?{Authorization:'Bearer '+t}:{}}\n"
    "async function get(u){const r=await fetch(u,{headers:auth()});\n"
    " if(r.status===401){$('login').hidden=false;throw new Error('401')}\n"
    " if(!r.ok)throw new Error(u+': '+r.status);return r}\n"
    "function cell(r,t){const d=document.createElement('td');d.textContent=t;r.appendChild(d);return d}\n"
    "async function report(e){if(!sessionStorage.getItem(K))return;e.preventDefault();\n"
    " const html=(await (await get(e.target.href)).text()).replace(/<style>[^<]*<\\/style>/g,'');\n"
    " const doc=new DOMParser().parseFromString(html,'text/html');\n"
    " for(const s of doc.querySelectorAll('style,script'))s.remove();\n"
    " $('report').replaceChildren(...Array.from(doc.body.childNodes,n=>document.importNode(n,true)))}\n"
    "async function load(){\n"
    " const j=await (await get('/v1/jobs?limit=50')).json();const jt=$('jobs');\n"
    " while(jt.rows.length>1)jt.deleteRow(1);\n"
    " for(const x of j.jobs){const r=jt.insertRow();cell(r,x.id);cell(r,x.model||'');cell(r,x.state+(x.error_message?': '+x.error_message:''));\n"
    "  cell(r,Math.round(x.progress*100)+'%');cell(r,x.created_at);const c=cell(r,'');\n"
    "  if(x.state==='succeeded'){const a=document.createElement('a');a.href='/v1/jobs/'+x.id+'/report.html';a.textContent='report';a.addEventListener('click',report);c.appendChild(a)}}\n"
    " const m=await (await get('/v1/models?limit=50')).json();const mt=$('models');\n"
    " while(mt.rows.length>1)mt.deleteRow(1);\n"
    " for(const x of m.models){const r=mt.insertRow();cell(r,x.id);cell(r,x.name);cell(r,x.bytes);cell(r,x.params)}}\n"
    "$('login').addEventListener('submit',e=>{e.preventDefault();\n"
    " sessionStorage.setItem(K,$('token').value.trim());$('login').hidden=true;load().catch(()=>{})});\n"
    "load().catch(()=>{});setInterval(()=>load().catch(()=>{}),2000);\n";
static const char dashboard_body[] =
    "<body><h1>slimd</h1>"
    "<form id=\"login\" hidden><label>Bearer token <input id=\"token\" type=\"password\" "
    "autocomplete=\"off\" size=\"72\"></label> <button>Use</button></form>"
    "<h2>Jobs</h2><table id=\"jobs\"><tr><th>id</th><th>model</th>"
    "<th>state</th><th>progress</th><th>created</th><th>report</th></tr></table>"
    "<h2>Models</h2><table id=\"models\"><tr><th>id</th><th>name</th><th>bytes</th>"
    "<th>params</th></tr></table><section id=\"report\"></section>";

static char *dashboard_page, dashboard_csp[512];
static size_t dashboard_len;
static pthread_once_t dashboard_once = PTHREAD_ONCE_INIT;

static void dashboard_init(void)
{
    char script[64], style[64];
    FILE *f = open_memstream(&dashboard_page, &dashboard_len);
    if (f) {
        fprintf(f, "<!doctype html><html><head><meta charset=\"utf-8\"><title>slimd</title>"
                   "<style>%s</style></head>%s<script>%s</script></body></html>\n",
                dashboard_style, dashboard_body, dashboard_script);
        if (fclose(f)) {
            free(dashboard_page);
            dashboard_page = NULL;
        }
    }
    if (api_csp_hash(dashboard_script, script, sizeof script) ||
        api_csp_hash(dashboard_style, style, sizeof style)) {
        /* no hash: the page shows without style and script, still safe */
        snprintf(script, sizeof script, "'none'");
        snprintf(style, sizeof style, "'none'");
    }
    snprintf(dashboard_csp, sizeof dashboard_csp, "default-src 'none'; script-src %s; "
             "style-src %s; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
             "form-action 'none'", script, style);
}

enum MHD_Result api_dashboard(struct api_ctx *ctx, struct MHD_Connection *conn,
                              struct api_request *req)
{
    char *page;
    (void)ctx;
    pthread_once(&dashboard_once, dashboard_init);
    page = dashboard_page ? malloc(dashboard_len) : NULL;
    if (!page)
        return api_reply_error(conn, req, SLIM_ENOMEM, "out of memory");
    memcpy(page, dashboard_page, dashboard_len);
    return api_reply_html(conn, req, page, dashboard_len, dashboard_csp);
}
