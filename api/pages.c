/*
 * pages.c - the pages for people: the dashboard (/), a job's page
 * (/v1/jobs/{id}/report.html) and the comparison of two jobs
 * (/v1/jobs/compare?a=&b=).
 *
 * The job's page and the comparison are rendered here, whole, from the
 * job row and its report: a page that needs no script to show its
 * figures prints, saves and reads the same everywhere.  A job that has
 * not succeeded gets a page too (why it failed, with its error code,
 * stage and spec; how far a running one is, refreshed every two seconds
 * by a <meta> refresh) instead of the JSON 409 that the report endpoint
 * answers.  The dashboard is the other way round: a static page whose
 * script reads the JSON API, so it can never disagree with the API and
 * holds no data itself (it is open; the API behind it asks for the
 * token).
 *
 * Charts are inline SVG, one per measure (error, bits per weight,
 * sparsity, bytes): a row per tensor with the name on a line of its own
 * above its bar, so that "model.layers.27.self_attn.q_proj.weight"
 * never runs into its neighbour; a name too long for a phone's row (48
 * characters) is cut from the left (the end of a name is what tells
 * tensors apart), and the full name is the row's <title>.  Lengths are
 * percentages, so the text keeps its size on a phone and only the bars
 * shrink.
 *
 * With --auth token these pages need the token like the rest of the
 * API; a link cannot carry it, so the dashboard fetches them with it and
 * shows them in place (dashboard.js), which is why the dashboard's CSP
 * also allows pages.js and pages.css.
 *
 * Everything that comes from users (tensor, model and job names,
 * labels, the spec, error messages) goes through esc().  The style
 * sheet and the two scripts are files of their own (api/pages.css,
 * api/pages.js, api/dashboard.js, api/dashboard.html), turned into C
 * strings at build time (api/assets.c, by a rule in Makefile.am), and
 * each page's Content-Security-Policy allows exactly them by their
 * SHA-256 and nothing else: an injected script or inline handler would
 * not run.  Rejected: 'unsafe-inline' (what the CSP is there to forbid)
 * and nonces (a fresh one per response for text that never changes).
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "api/api.h"

/* api/assets.c, generated from the files named above */
extern const char api_asset_pages_css[], api_asset_pages_js[], api_asset_dashboard_js[],
    api_asset_dashboard_html[];

/* ---- the policies, computed once ---------------------------------------- */

static char page_csp[512], dashboard_csp[640];
static pthread_once_t csp_once = PTHREAD_ONCE_INIT;

static void csp_init(void)
{
    char css[64], js[64], dash[64];
    if (api_csp_hash(api_asset_pages_css, css, sizeof css))
        snprintf(css, sizeof css, "'none'");   /* unstyled, still safe */
    if (api_csp_hash(api_asset_pages_js, js, sizeof js))
        snprintf(js, sizeof js, "'none'");
    if (api_csp_hash(api_asset_dashboard_js, dash, sizeof dash))
        snprintf(dash, sizeof dash, "'none'");
    snprintf(page_csp, sizeof page_csp, "default-src 'none'; script-src %s; style-src %s; "
             "frame-ancestors 'none'; base-uri 'none'; form-action 'none'", js, css);
    snprintf(dashboard_csp, sizeof dashboard_csp, "default-src 'none'; script-src %s %s; "
             "style-src %s; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
             "form-action 'none'", js, dash, css);
}

/* ---- writing HTML ----------------------------------------------------- */

static void esc(FILE *f, const char *s)
{
    for (; s && *s; s++) {
        switch (*s) {
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '"': fputs("&quot;", f); break;
        case '\'': fputs("&#39;", f); break;
        default: fputc(*s, f);
        }
    }
}

/* esc(), with a chance to break the line after each '.' and '/', so
 * that a long tensor name wraps between its parts in a narrow column. */
static void esc_wrap(FILE *f, const char *s)
{
    for (; s && *s; s++) {
        char c[2] = {*s, 0};
        esc(f, c);
        if (*s == '.' || *s == '/')
            fputs("<wbr>", f);
    }
}

static const char *str(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static double num(json_t *o, const char *key)
{
    return json_number_value(json_object_get(o, key));
}

/* 1536 -> "1.5 KiB" */
static const char *human_bytes(double n, char *buf, size_t len)
{
    static const char *const unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (fabs(n) >= 1024 && u < 4) {
        n /= 1024;
        u++;
    }
    snprintf(buf, len, u ? "%.1f %s" : "%.0f %s", n, unit[u]);
    return buf;
}

static const char *human_seconds(double s, char *buf, size_t len)
{
    if (s < 0 || !isfinite(s))
        snprintf(buf, len, "-");
    else if (s < 1)
        snprintf(buf, len, "%.0f ms", s * 1000);
    else if (s < 120)
        snprintf(buf, len, "%.1f s", s);
    else if (s < 7200)
        snprintf(buf, len, "%.0f min %02.0f s", floor(s / 60), fmod(s, 60));
    else
        snprintf(buf, len, "%.0f h %02.0f min", floor(s / 3600), fmod(s / 60, 60));
    return buf;
}

/* A span between two of the store's timestamps, which have whole
 * seconds: 0 means under a second. */
static const char *human_span(double s, char *buf, size_t len)
{
    if (s == 0) {
        snprintf(buf, len, "&lt; 1 s");
        return buf;
    }
    return human_seconds(s, buf, len);
}

/* Seconds since the epoch of store.c's "2026-11-29T14:39:29Z", or -1. */
static double iso_time(const char *s)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    if (!s || !strptime(s, "%Y-%m-%dT%H:%M:%SZ", &tm))
        return -1;
    return (double)timegm(&tm);
}

static void head(FILE *f, const char *title, int refresh)
{
    fputs("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
          "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">", f);
    if (refresh)
        fprintf(f, "<meta http-equiv=\"refresh\" content=\"%d\">", refresh);
    fputs("<title>", f);
    esc(f, title);
    fprintf(f, " - slimd</title><style>%s</style></head><body>", api_asset_pages_css);
}

static void foot(FILE *f)
{
    fprintf(f, "</main><script>%s</script></body></html>\n", api_asset_pages_js);
}

/* The job's name (lifecycle's "name") or its id. */
static const char *job_title(json_t *job)
{
    const char *name = str(job, "name");
    return name && *name ? name : str(job, "id");
}

/* error: today a string with error_code beside it; {"code", "message"}
 * where the daemon records it that way. */
static void job_error(json_t *job, const char **code, const char **msg)
{
    json_t *e = json_object_get(job, "error");
    *code = str(job, "error_code");
    *msg = json_string_value(e);
    if (json_is_object(e)) {
        *code = str(e, "code") ? str(e, "code") : *code;
        *msg = str(e, "message");
    }
}

static void labels_html(FILE *f, json_t *labels)
{
    const char *k;
    json_t *v;
    if (!json_is_object(labels) || !json_object_size(labels))
        return;
    fputs(" <span class=\"labels\">", f);
    json_object_foreach(labels, k, v) {
        fputs("<span>", f);
        esc(f, k);
        fputc(':', f);
        esc(f, json_string_value(v));
        fputs("</span>", f);
    }
    fputs("</span>", f);
}

/* "job_... · model NAME (mdl_...) · sha256 ..." */
static void job_sub(FILE *f, json_t *job, json_t *model)
{
    const char *state = str(job, "state"), *sha = str(model, "sha256");
    fprintf(f, "<p class=\"sub\"><span class=\"state %s\">%s</span> <code>", state, state);
    esc(f, str(job, "id"));
    fputs("</code> &middot; model <b>", f);
    esc(f, model ? str(model, "name") : "(deleted)");
    fputs("</b> <code>", f);
    esc(f, str(job, "model"));
    fputs("</code>", f);
    if (!sha)
        sha = str(job, "model_sha256");
    if (sha) {
        fputs(" &middot; sha256 <code class=\"msha\">", f);
        esc(f, sha);
        fputs("</code>", f);
    }
    labels_html(f, json_object_get(job, "labels"));
    fputs("</p>", f);
}

static void spec_html(FILE *f, json_t *spec)
{
    char *text = spec ? json_dumps(spec, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    fputs("<pre class=\"spec\">", f);
    esc(f, text ? text : "(no spec)");
    fputs("</pre>", f);
    free(text);
}

/* ---- the figures of one report ---------------------------------------- */

struct summary {
    double bytes_before, bytes_after, file_before, file_after, ratio, params, nonzero;
    double bpw, err_mean, err_max, sparsity, seconds;
    size_t n, changed;
    int err_inf;
};

static int changed(json_t *t)
{
    const char *scheme = str(t, "scheme");
    return scheme && strcmp(scheme, "copy");
}

static void summarize(json_t *rep, struct summary *s)
{
    json_t *tot = json_object_get(rep, "totals"), *tensors = json_object_get(rep, "tensors"), *t;
    size_t i;
    double sum = 0;
    memset(s, 0, sizeof *s);
    s->bytes_before = num(tot, "bytes_before");
    s->bytes_after = num(tot, "bytes_after");
    s->file_before = num(tot, "file_bytes_before");
    s->file_after = num(tot, "file_bytes_after");
    s->ratio = num(tot, "ratio");
    s->params = num(tot, "params");
    s->nonzero = num(tot, "nonzero_params");
    s->bpw = s->params > 0 ? 8.0 * s->bytes_after / s->params : 0;
    s->sparsity = s->params > 0 ? 1.0 - s->nonzero / s->params : 0;
    s->seconds = num(json_object_get(rep, "timings"), "total_seconds");
    s->n = json_array_size(tensors);
    json_array_foreach(tensors, i, t) {
        json_t *e = json_object_get(t, "rel_error");
        if (!changed(t))
            continue;
        s->changed++;
        if (json_is_null(e)) {   /* the original was all zeros: no finite error */
            s->err_inf = 1;
            continue;
        }
        sum += json_number_value(e);
        if (json_number_value(e) > s->err_max)
            s->err_max = json_number_value(e);
    }
    s->err_mean = s->changed ? sum / (double)s->changed : 0;
}

static void card(FILE *f, const char *k, const char *v, const char *d)
{
    fprintf(f, "<div class=\"card\"><div class=\"k\">%s</div><div class=\"v\">%s</div>", k, v);
    if (d)
        fprintf(f, "<div class=\"d\">%s</div>", d);
    fputs("</div>", f);
}

static void cards_html(FILE *f, const struct summary *s, json_t *rep)
{
    char a[48], b[48], v[160], d[200];
    json_t *acc = json_object_get(rep, "accuracy");
    fputs("<section class=\"cards\" id=\"totals\">", f);
    snprintf(v, sizeof v, "<span id=\"ratio\">%.2f</span>&times;", s->ratio);
    snprintf(d, sizeof d, "tensor data; file %.2f&times;",
             s->file_after > 0 ? s->file_before / s->file_after : 0);
    card(f, "Ratio", v, d);
    snprintf(v, sizeof v, "%s &rarr; %s", human_bytes(s->file_before, a, sizeof a),
             human_bytes(s->file_after, b, sizeof b));
    snprintf(d, sizeof d, "file; tensors %.0f &rarr; %.0f bytes", s->bytes_before,
             s->bytes_after);
    card(f, "Size", v, d);
    snprintf(v, sizeof v, "%.2f", s->bpw);
    snprintf(d, sizeof d, "%.0f parameters", s->params);
    card(f, "Bits per weight", v, d);
    snprintf(v, sizeof v, "%.3g", s->err_mean);
    snprintf(d, sizeof d, "relative, over %zu of %zu tensors changed", s->changed, s->n);
    card(f, "Error, mean", v, d);
    snprintf(v, sizeof v, s->err_inf ? "inf" : "%.3g", s->err_max);
    card(f, "Error, max", v, s->err_inf ? "a changed tensor was all zeros" : "relative");
    snprintf(v, sizeof v, "%.1f %%", 100 * s->sparsity);
    snprintf(d, sizeof d, "%.0f non-zero parameters", s->nonzero);
    card(f, "Sparsity", v, d);
    card(f, "Pipeline time", human_seconds(s->seconds, v, sizeof v), NULL);
    if (json_is_number(json_object_get(acc, "before")) &&
        json_is_number(json_object_get(acc, "after"))) {
        double before = 100 * num(acc, "before"), after = 100 * num(acc, "after");
        snprintf(v, sizeof v, "<span id=\"acc-after\">%.2f</span> %%", after);
        snprintf(d, sizeof d, "was %.2f %% (%+.2f points)", before, after - before);
        card(f, "Top-1 accuracy", v, d);
    }
    fputs("</section>", f);
}

/* One row "label | before | after" of an {"before", "after"} pair. */
static void pair_row(FILE *f, const char *label, json_t *pair, double mul, const char *fmt)
{
    char b[64], a[64];
    if (!json_is_object(pair))
        return;
    snprintf(b, sizeof b, fmt, mul * num(pair, "before"));
    snprintf(a, sizeof a, fmt, mul * num(pair, "after"));
    fprintf(f, "<tr><td>%s</td><td class=\"n\">%s</td><td class=\"n\">%s</td></tr>", label, b, a);
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
        esc(f, str(ev, "skipped"));
        fputs("</p>", f);
        return;
    }
    fprintf(f, "<h2 id=\"accuracy\">%s</h2><p>%lld samples",
            acc ? "Accuracy" : "Output drift (random input)",
            (long long)json_integer_value(json_object_get(ev, "samples")));
    if (str(ev, "dataset")) {
        fputs(" of dataset ", f);
        esc(f, str(ev, "dataset"));
    }
    fputs(", measured on the artifact as written.</p><div class=\"tbl\"><table class=\"narrow\"><thead><tr><th>"
          "</th><th class=\"n\">before</th><th class=\"n\">after</th></tr></thead><tbody>", f);
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
    fprintf(f, "</tbody></table></div><p>Agreement (same top class): %.2f %%; output drift: "
               "relative error %.3g, max |&Delta;| %.3g.</p>",
            100.0 * num(ev, "agreement"),
            num(json_object_get(ev, "output_drift"), "relative_error"),
            num(json_object_get(ev, "output_drift"), "max_abs_error"));
}

/* A training pass's progress (job JSON "training"), when there is one. */
static void training_html(FILE *f, json_t *job)
{
    json_t *tr = json_object_get(job, "training");
    if (!json_is_object(tr))
        return;
    fprintf(f, "<h2>Training</h2><p>epoch %lld of %lld", 
            (long long)json_integer_value(json_object_get(tr, "epoch")),
            (long long)json_integer_value(json_object_get(tr, "epochs")));
    if (json_is_number(json_object_get(tr, "loss")))
        fprintf(f, ", loss %.4g", num(tr, "loss"));
    if (json_is_number(json_object_get(tr, "val_accuracy")))
        fprintf(f, ", validation accuracy %.2f %%", 100 * num(tr, "val_accuracy"));
    fputs("</p>", f);
}

/* A warning's text: a string, or an object with "message" (and maybe
 * "tensor", "pass", "code"). */
static void warning_text(FILE *f, json_t *w, int with_tensor)
{
    if (json_is_string(w)) {
        esc(f, json_string_value(w));
        return;
    }
    if (str(w, "code")) {
        fputs("<b>", f);
        esc(f, str(w, "code"));
        fputs("</b> ", f);
    }
    if (with_tensor && str(w, "tensor")) {
        fputs("<code>", f);
        esc(f, str(w, "tensor"));
        fputs("</code>: ", f);
    }
    if (str(w, "message")) {
        esc(f, str(w, "message"));
    } else {
        char *text = json_dumps(w, JSON_COMPACT);
        esc(f, text);
        free(text);
    }
}

static void warnings_html(FILE *f, json_t *rep)
{
    json_t *ws = json_object_get(rep, "warnings"), *w;
    size_t i;
    if (!json_array_size(ws))
        return;
    fprintf(f, "<h2>Warnings</h2><div class=\"box warn\"><ul class=\"warnings\" id=\"warnings\">");
    json_array_foreach(ws, i, w) {
        fputs("<li>", f);
        warning_text(f, w, 1);
        fputs("</li>", f);
    }
    fputs("</ul></div>", f);
}

/* ---- charts ----------------------------------------------------------- */

enum measure { M_ERROR, M_BPW, M_SPARSITY, M_BYTES };
#define ROW_H 32
/* 48 characters of 11 px monospace fill a phone's chart (~320 px) */
#define LABEL_CHARS 48

/* The name, cut from the left to at most LABEL_CHARS characters
 * (UTF-8 aware: a cut never splits a character). */
static void label_text(FILE *f, const char *name)
{
    size_t chars = 0;
    const char *p;
    for (p = name; *p; p++)
        chars += ((unsigned char)*p & 0xC0) != 0x80;
    if (chars <= LABEL_CHARS) {
        esc(f, name);
        return;
    }
    for (p = name; chars > LABEL_CHARS - 1; p++)
        chars -= ((unsigned char)*p & 0xC0) != 0x80;
    while (((unsigned char)*p & 0xC0) == 0x80)
        p++;
    fputs("&hellip;", f);
    esc(f, p);
}

/* The value of measure m for tensor t; 0 when it has none (*has = 0).
 * *inf = 1 for an error with no finite value. */
static double measure_of(json_t *t, enum measure m, int *has, int *inf)
{
    json_t *v;
    *inf = 0;
    switch (m) {
    case M_ERROR:
        v = json_object_get(t, "rel_error");
        *has = v != NULL;
        *inf = json_is_null(v);
        return json_number_value(v);
    case M_BPW: v = json_object_get(t, "bits_per_weight"); break;
    case M_SPARSITY: v = json_object_get(t, "sparsity"); break;
    default: v = json_object_get(t, "bytes_after"); break;
    }
    *has = json_is_number(v);
    return json_number_value(v);
}

static void measure_value(char *buf, size_t len, json_t *t, enum measure m, double x, int inf)
{
    char a[24], b[24];
    if (inf)
        snprintf(buf, len, "inf");
    else if (m == M_ERROR)
        snprintf(buf, len, "%.3g", x);
    else if (m == M_BPW)
        snprintf(buf, len, "%.2f", x);
    else if (m == M_SPARSITY)
        snprintf(buf, len, "%.1f %%", 100 * x);
    else
        snprintf(buf, len, "%s \xe2\x86\x92 %s", human_bytes(num(t, "bytes_before"), b, sizeof b),
                 human_bytes(x, a, sizeof a));
}

/* One chart: a row per tensor of each report in reps (one, or two side
 * by side for a comparison: bars of the first, then the second). */
static void chart(FILE *f, const char *id, const char *title, const char *legend,
                  json_t *const *reps, int nreps, enum measure m)
{
    json_t *tensors = json_object_get(reps[0], "tensors"), *t;
    double max = 0;
    size_t i, n = json_array_size(tensors);
    int bars = m == M_BYTES && nreps == 1 ? 2 : nreps;
    int step = nreps > 1 ? 13 : 7;   /* two values need a line each */
    int row_h = ROW_H + (bars - 1) * step;

    for (int r = 0; r < nreps; r++) {
        json_array_foreach(json_object_get(reps[r], "tensors"), i, t) {
            int has, inf;
            double x = m == M_BYTES ? num(t, "bytes_before") : measure_of(t, m, &has, &inf);
            if (m == M_BYTES && nreps > 1)
                x = num(t, "bytes_after");
            if (x > max)
                max = x;
        }
    }
    if (m == M_SPARSITY)
        max = 1;
    fprintf(f, "<div class=\"chart\" id=\"%s\"><h3>%s</h3><div class=\"legend\">%s</div>"
               "<div class=\"scroll\"><svg width=\"100%%\" height=\"%zu\" role=\"img\" "
               "aria-label=\"%s per tensor\">", id, title, legend, n * (size_t)row_h + 4, title);
    json_array_foreach(tensors, i, t) {
        const char *name = str(t, "name");
        size_t y = i * (size_t)row_h;
        char val[96];
        int has, inf;
        fputs("<g><title>", f);
        esc(f, name);
        fputs("</title>", f);
        fprintf(f, "<text class=\"lbl\" x=\"0\" y=\"%zu\">", y + 11);
        label_text(f, name);
        fputs("</text>", f);
        for (int r = 0; r < bars; r++) {
            json_t *tr = t;
            double x;
            const char *cls = r == 0 || m == M_BYTES ? "bar" : "bar2";
            size_t by = y + 16 + (size_t)r * (size_t)step;
            if (nreps > 1 && r > 0) {   /* the same tensor in the other report */
                tr = NULL;
                json_t *u;
                size_t j;
                json_array_foreach(json_object_get(reps[r], "tensors"), j, u)
                    if (name && str(u, "name") && !strcmp(name, str(u, "name"))) {
                        tr = u;
                        break;
                    }
                if (!tr)
                    continue;
            }
            if (m == M_BYTES && nreps == 1 && r == 0) {
                x = num(t, "bytes_before");
                has = 1;
                inf = 0;
                cls = "bbefore";
            } else {
                x = measure_of(tr, m, &has, &inf);
            }
            if (!has)
                continue;
            double w = inf ? 82.0 : max > 0 ? 82.0 * x / max : 0;
            fprintf(f, "<rect class=\"%s\" x=\"0\" y=\"%zu\" width=\"%.2f%%\" height=\"6\"/>",
                    inf ? "bar2" : cls, by, w);
            if (m == M_BYTES && nreps == 1 && r == 0)
                continue;
            measure_value(val, sizeof val, tr, m, x, inf);
            fprintf(f, "<text class=\"val\" x=\"100%%\" y=\"%zu\" text-anchor=\"end\">%s</text>",
                    by + 8, val);
        }
        fputs("</g>", f);
    }
    fputs("</svg></div></div>", f);
}

/* ---- the tensor table ------------------------------------------------- */

static void td_num(FILE *f, double v, const char *fmt, const char *k)
{
    fprintf(f, "<td class=\"n\" data-k=\"%s\" data-v=\"%.9g\">", k, v);
    fprintf(f, fmt, v);
    fputs("</td>", f);
}

/* "rank 4", "16 clusters (12 used)" or "" */
static void structure_text(FILE *f, json_t *t, double *key)
{
    *key = 0;
    if (json_is_integer(json_object_get(t, "rank"))) {
        *key = num(t, "rank");
        fprintf(f, "rank %lld", (long long)json_integer_value(json_object_get(t, "rank")));
    } else if (json_is_integer(json_object_get(t, "clusters"))) {
        *key = num(t, "clusters");
        fprintf(f, "%lld clusters", (long long)json_integer_value(json_object_get(t, "clusters")));
        if (json_is_integer(json_object_get(t, "clusters_used")) &&
            json_integer_value(json_object_get(t, "clusters_used")) !=
                json_integer_value(json_object_get(t, "clusters")))
            fprintf(f, " (%lld used)",
                    (long long)json_integer_value(json_object_get(t, "clusters_used")));
    }
}

static void tensor_warnings(FILE *f, json_t *rep, json_t *t)
{
    json_t *w;
    size_t i;
    const char *name = str(t, "name");
    json_array_foreach(json_object_get(t, "warnings"), i, w) {
        fputs("<div class=\"tw\">", f);
        warning_text(f, w, 0);
        fputs("</div>", f);
    }
    json_array_foreach(json_object_get(rep, "warnings"), i, w) {
        if (json_is_object(w) && str(w, "tensor") && name && !strcmp(str(w, "tensor"), name)) {
            fputs("<div class=\"tw\">", f);
            warning_text(f, w, 0);
            fputs("</div>", f);
        }
    }
    if (str(t, "skipped")) {   /* a pass looked at it and left it, saying why */
        fputs("<div class=\"tw\">", f);
        esc(f, str(t, "skipped"));
        fputs("</div>", f);
    }
}

static void tensor_table(FILE *f, json_t *rep)
{
    json_t *t, *d;
    size_t i, j;
    fputs("<div class=\"tbl\"><table class=\"sortable cardrows\" id=\"tensors\"><thead><tr>"
          "<th class=\"n\">#</th><th>tensor</th><th>shape</th><th>scheme</th><th>dtype</th>"
          "<th class=\"n\">bytes before</th><th class=\"n\">bytes after</th>"
          "<th class=\"n\">bits/weight</th><th class=\"n\">sparsity</th>"
          "<th class=\"n\">rank / clusters</th><th class=\"n\">rel. error</th>"
          "<th class=\"n\">SNR dB</th><th>warnings</th></tr></thead><tbody>", f);
    json_array_foreach(json_object_get(rep, "tensors"), i, t) {
        json_t *e = json_object_get(t, "rel_error"), *snr = json_object_get(t, "snr_db");
        double key;
        fprintf(f, "<tr><td class=\"n\" data-k=\"#\">%zu</td><td class=\"name\" data-k=\"tensor\">",
                i + 1);
        esc_wrap(f, str(t, "name"));
        fputs("</td><td data-k=\"shape\">", f);
        json_array_foreach(json_object_get(t, "shape"), j, d)
            fprintf(f, "%s%lld", j ? "&times;" : "", (long long)json_integer_value(d));
        fputs("</td><td data-k=\"scheme\">", f);
        esc(f, str(t, "scheme"));
        fputs("</td><td class=\"nw\" data-k=\"dtype\">", f);
        esc(f, str(t, "dtype_before"));
        fputs(" &rarr; ", f);
        esc(f, str(t, "dtype_after"));
        fputs("</td>", f);
        td_num(f, num(t, "bytes_before"), "%.0f", "bytes before");
        td_num(f, num(t, "bytes_after"), "%.0f", "bytes after");
        td_num(f, num(t, "bits_per_weight"), "%.2f", "bits/weight");
        if (json_is_number(json_object_get(t, "sparsity")))
            td_num(f, 100 * num(t, "sparsity"), "%.1f %%", "sparsity");
        else
            fputs("<td class=\"n\" data-k=\"sparsity\" data-v=\"-1\">-</td>", f);
        fputs("<td class=\"n\" data-k=\"rank / clusters\" data-v=\"", f);
        {   /* the sort key must come before the text: write the text aside */
            char *buf = NULL;
            size_t len = 0;
            FILE *g = open_memstream(&buf, &len);
            if (g) {
                structure_text(g, t, &key);
                fclose(g);
                fprintf(f, "%.9g\">%s</td>", key, buf ? buf : "");
                free(buf);
            } else {
                fputs("0\"></td>", f);
            }
        }
        if (json_is_null(e))
            fputs("<td class=\"n\" data-k=\"rel. error\" data-v=\"Infinity\">inf</td>", f);
        else
            td_num(f, json_number_value(e), "%.3g", "rel. error");
        if (json_is_number(snr))
            td_num(f, json_number_value(snr), "%.1f", "SNR dB");
        else   /* identical (or the original was zeros and the error infinite) */
            fprintf(f, "<td class=\"n\" data-k=\"SNR dB\" data-v=\"%s\">%s</td>",
                    json_is_null(e) ? "-Infinity" : "Infinity",
                    json_is_null(e) ? "-inf" : "exact");
        fputs("<td data-k=\"warnings\">", f);
        tensor_warnings(f, rep, t);
        fputs("</td></tr>", f);
    }
    fputs("</tbody></table></div>", f);
}

/* ---- timings ---------------------------------------------------------- */

static void timings_html(FILE *f, json_t *job, json_t *rep)
{
    double created = iso_time(str(job, "created_at")), started = iso_time(str(job, "started_at"));
    double finished = iso_time(str(job, "finished_at"));
    json_t *tm = json_object_get(rep, "timings"), *p;
    char a[48];
    size_t i;
    static const char *const stages[][2] = {
        {"plan_seconds", "plan"}, {"read_seconds", "read"}, {"measure_seconds", "measure"},
        {"stream_seconds", "stream (read, passes, write)"}, {"total_seconds", "pipeline total"},
    };
    fputs("<h2>Timings</h2><div class=\"tbl\"><table class=\"narrow\" id=\"timings\"><tbody>", f);
    fputs("<tr><td>created</td><td>", f);
    esc(f, str(job, "created_at"));
    fputs("</td></tr>", f);
    if (started >= 0 && created >= 0)
        fprintf(f, "<tr><td>waited in the queue</td><td>%s</td></tr>",
                human_span(started - created, a, sizeof a));
    if (started >= 0) {
        double end = finished >= 0 ? finished : (double)time(NULL);
        fprintf(f, "<tr><td>%s</td><td>%s</td></tr>", finished >= 0 ? "ran for" : "running for",
                human_span(end - started, a, sizeof a));
    }
    if (finished >= 0) {
        fputs("<tr><td>finished</td><td>", f);
        esc(f, str(job, "finished_at"));
        fputs("</td></tr>", f);
    }
    for (size_t k = 0; k < sizeof stages / sizeof stages[0]; k++)
        if (json_is_number(json_object_get(tm, stages[k][0])))
            fprintf(f, "<tr><td>%s</td><td>%s</td></tr>", stages[k][1],
                    human_seconds(num(tm, stages[k][0]), a, sizeof a));
    json_array_foreach(json_object_get(rep, "passes"), i, p) {
        fprintf(f, "<tr><td>pass %lld: ", (long long)json_integer_value(json_object_get(p, "index")));
        esc(f, str(p, "op"));
        fprintf(f, "</td><td>%s</td></tr>", human_seconds(num(p, "seconds"), a, sizeof a));
    }
    fputs("</tbody></table></div>", f);
}

/* ---- the job's page --------------------------------------------------- */

static void nav(FILE *f, const char *id, int report, int artifact)
{
    fputs("<nav class=\"top\"><a class=\"brand\" href=\"/\">slimd</a>"
          "<a href=\"/\" id=\"to-dashboard\">Dashboard</a>", f);
    if (id) {
        fprintf(f, "<a href=\"/v1/jobs/%s\">Job JSON</a>", id);
        if (report)
            fprintf(f, "<a href=\"/v1/jobs/%s/report\" id=\"to-json\">Report JSON</a>", id);
        if (artifact)
            fprintf(f, "<a href=\"/v1/jobs/%s/artifact\" id=\"to-artifact\">Artifact</a>", id);
    }
    fputs("</nav><main>", f);
}

static void state_box(FILE *f, json_t *job)
{
    const char *state = str(job, "state"), *code, *msg, *stage = str(job, "stage");
    char a[48];
    double started = iso_time(str(job, "started_at"));
    double progress = num(job, "progress");
    job_error(job, &code, &msg);
    if (!strcmp(state, "failed")) {
        fputs("<section class=\"box failed\" id=\"failure\"><h2>This job failed</h2><p>", f);
        if (code) {
            fputs("<span class=\"errcode\">", f);
            esc(f, code);
            fputs("</span> ", f);
        }
        esc(f, msg ? msg : "no message was recorded");
        fputs("</p><p class=\"muted\">", f);
        if (stage) {
            fputs("stage <b>", f);
            esc(f, stage);
            fputs("</b>, ", f);
        }
        fprintf(f, "%.0f %% done when it stopped, attempt %lld. The spec it ran is below."
                   "</p></section>",
                100 * progress, (long long)json_integer_value(json_object_get(job, "attempts")));
    } else if (!strcmp(state, "canceled")) {
        fputs("<section class=\"box canceled\" id=\"canceled\"><h2>Canceled</h2><p>", f);
        if (started >= 0)
            fprintf(f, "It ran for %s and was %.0f %% done. ",
                    human_span(iso_time(str(job, "finished_at")) - started, a, sizeof a),
                    100 * progress);
        else
            fputs("It was canceled before it started. ", f);
        fputs("Nothing it made was kept.</p></section>", f);
    } else if (!strcmp(state, "running")) {
        fprintf(f, "<section class=\"box\" id=\"running\"><h2>Running</h2><p><progress max=\"1\" "
                   "value=\"%.4f\"></progress> <b>%.0f %%</b>", progress, 100 * progress);
        if (stage) {
            fputs(" &middot; stage <b>", f);
            esc(f, stage);
            fputs("</b>", f);
        }
        if (started >= 0)
            fprintf(f, " &middot; for %s", human_span((double)time(NULL) - started, a, sizeof a));
        fputs("</p><p class=\"muted\">This page refreshes every 2 seconds.</p></section>", f);
    } else if (!strcmp(state, "queued")) {
        fputs("<section class=\"box warn\" id=\"queued\"><h2>Queued</h2><p>Waiting for a worker "
              "since ", f);
        esc(f, str(job, "created_at"));
        fputs(". This page refreshes every 2 seconds.</p></section>", f);
    }
}

static const char *const chart_specs[][3] = {
    {"chart-error", "Relative error", "||W - &#372;|| / ||W|| per tensor"},
    {"chart-bpw", "Bits per weight", "stored bits per parameter, scales and indices included"},
    {"chart-sparsity", "Sparsity", "share of zero weights after the passes"},
    {"chart-bytes", "Bytes", "<span class=\"sw b\"></span>before<span class=\"sw a\"></span>after"},
};

static char *job_page(json_t *job, json_t *model, json_t *rep)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    const char *state = str(job, "state"), *id = str(job, "id");
    int live = !strcmp(state, "running") || !strcmp(state, "queued");
    struct summary s;
    if (!f)
        return NULL;
    head(f, job_title(job), live ? 2 : 0);
    /* a job failed by a quality gate keeps its artifact: the link stays */
    nav(f, id, rep != NULL, json_is_object(json_object_get(job, "artifact")));
    fputs("<h1 id=\"title\">", f);
    if (rep && !strcmp(state, "succeeded"))
        fputs("Report: ", f);
    esc(f, job_title(job));
    fputs("</h1>", f);
    job_sub(f, job, model);
    state_box(f, job);
    training_html(f, job);
    if (rep) {
        summarize(rep, &s);
        cards_html(f, &s, rep);
        eval_html(f, rep);
        warnings_html(f, rep);
        fputs("<h2>Per tensor</h2><div class=\"charts\">", f);
        for (int m = M_ERROR; m <= M_BYTES; m++)
            chart(f, chart_specs[m][0], chart_specs[m][1], chart_specs[m][2], &rep, 1,
                  (enum measure)m);
        fputs("</div><h2>Tensors</h2><p class=\"muted\">Select a column heading to sort.</p>", f);
        tensor_table(f, rep);
    }
    timings_html(f, job, rep);
    fputs("<h2>Spec</h2>", f);
    spec_html(f, json_object_get(job, "spec"));
    foot(f);
    if (fclose(f)) {
        free(buf);
        return NULL;
    }
    return buf;
}

static enum MHD_Result reply_page(struct MHD_Connection *conn, struct api_request *req,
                                  char *html, const char *csp)
{
    if (!html)
        return api_reply_error(conn, req, SLIM_ENOMEM, "out of memory");
    return api_reply_html(conn, req, html, strlen(html), csp);
}

/* The job row the caller may see, or a reply (404) in *ret. */
static int visible_job(struct api_ctx *ctx, struct MHD_Connection *conn, struct api_request *req,
                       const char *param, const char *id, json_t **job, enum MHD_Result *ret)
{
    struct slim_error err;
    if (store_job_get(ctx->st, id, job, &err)) {
        if (param)
            slim_error_prefix(&err, "%s", param);
        *ret = api_reply_slim_error(conn, req, &err);
        return 0;
    }
    if (!api_request_sees(req, *job)) {
        json_decref(*job);
        *ret = api_reply_error(conn, req, SLIM_ENOTFOUND, "%s%sjob %.64s does not exist",
                               param ? param : "", param ? ": " : "", id);
        return 0;
    }
    return 1;
}

enum MHD_Result api_pages_job(struct api_ctx *ctx, struct MHD_Connection *conn,
                              struct api_request *req, const char *id)
{
    struct slim_error err;
    json_t *job, *model = NULL, *rep = NULL;
    enum MHD_Result ret;
    char *html;

    pthread_once(&csp_once, csp_init);
    if (!visible_job(ctx, conn, req, NULL, id, &job, &ret))
        return ret;
    /* any state may have a report (a job failed by a quality gate keeps
     * its own); the store says CONFLICT when there is none */
    if (store_job_report(ctx->st, id, &rep, &err)) {
        rep = NULL;
        if (err.code != SLIM_ECONFLICT) {
            json_decref(job);
            return api_reply_slim_error(conn, req, &err);
        }
    }
    if (str(job, "model") && store_model_get(ctx->st, str(job, "model"), &model, &err))
        model = NULL;   /* deleted since: the page says so */
    html = job_page(job, model, rep);
    json_decref(job);
    json_decref(model);
    json_decref(rep);
    return reply_page(conn, req, html, page_csp);
}

/* ---- two jobs side by side -------------------------------------------- */

static void cmp_row(FILE *f, const char *label, double a, double b, const char *fmt, int lower_better)
{
    char x[64], y[64];
    const char *cls = "";
    snprintf(x, sizeof x, fmt, a);
    snprintf(y, sizeof y, fmt, b);
    if (lower_better >= 0 && a != b)
        cls = (b < a) == (lower_better == 1) ? "good" : "worse";
    fprintf(f, "<tr><td data-k=\"\">%s</td><td class=\"n\" data-k=\"A\">%s</td>"
               "<td class=\"n %s\" data-k=\"B\">%s</td><td class=\"n\" data-k=\"B / A\">", label,
            x, cls, y);
    if (a != 0 && isfinite(a) && isfinite(b))
        fprintf(f, "%.3f&times;", b / a);
    fputs("</td></tr>", f);
}

static json_t *tensor_named(json_t *rep, const char *name)
{
    json_t *t;
    size_t i;
    json_array_foreach(json_object_get(rep, "tensors"), i, t)
        if (name && str(t, "name") && !strcmp(str(t, "name"), name))
            return t;
    return NULL;
}

static void cmp_cell(FILE *f, json_t *t, const char *key, const char *fmt, const char *k)
{
    json_t *v = json_object_get(t, key);
    if (json_is_number(v))
        td_num(f, json_number_value(v), fmt, k);
    else if (t && json_is_null(v) && !strcmp(key, "rel_error"))
        fprintf(f, "<td class=\"n\" data-k=\"%s\" data-v=\"Infinity\">inf</td>", k);
    else if (t && json_is_null(v))
        fprintf(f, "<td class=\"n\" data-k=\"%s\" data-v=\"Infinity\">exact</td>", k);
    else
        fprintf(f, "<td class=\"n\" data-k=\"%s\" data-v=\"-1\">-</td>", k);
}

static void job_head(FILE *f, const char *side, json_t *job)
{
    fprintf(f, "<div class=\"card\"><div class=\"k\">%s</div><div class=\"v\"><a href=\"/v1/jobs/",
            side);
    esc(f, str(job, "id"));
    fputs("/report.html\">", f);
    esc(f, job_title(job));
    fputs("</a></div><div class=\"d\"><code>", f);
    esc(f, str(job, "id"));
    fputs("</code>", f);
    labels_html(f, json_object_get(job, "labels"));
    fputs("</div>", f);
    spec_html(f, json_object_get(job, "spec"));
    fputs("</div>", f);
}

static char *compare_page(json_t *ja, json_t *jb, json_t *model, json_t *ra, json_t *rb)
{
    char *buf = NULL;
    size_t len = 0, i;
    FILE *f = open_memstream(&buf, &len);
    struct summary a, b;
    json_t *reps[2] = {ra, rb}, *t;
    char title[200];
    if (!f)
        return NULL;
    summarize(ra, &a);
    summarize(rb, &b);
    snprintf(title, sizeof title, "%s vs %s", job_title(ja), job_title(jb));
    head(f, title, 0);
    nav(f, NULL, 0, 0);
    fputs("<h1 id=\"title\">Compare: ", f);
    esc(f, job_title(ja));
    fputs(" <span class=\"muted\">vs</span> ", f);
    esc(f, job_title(jb));
    fputs("</h1><p class=\"sub\">model <b>", f);
    esc(f, str(model, "name"));
    fputs("</b> <code>", f);
    esc(f, str(ja, "model"));
    fputs("</code> &middot; sha256 <code class=\"msha\">", f);
    esc(f, str(model, "sha256"));
    fputs("</code></p><section class=\"sides\" id=\"sides\">", f);
    job_head(f, "A", ja);
    job_head(f, "B", jb);
    fputs("</section><h2>Totals</h2><div class=\"tbl\"><table class=\"cardrows\" id=\"totals\">"
          "<thead><tr><th></th><th class=\"n\">A</th><th class=\"n\">B</th><th class=\"n\">B / A"
          "</th></tr></thead><tbody>", f);
    cmp_row(f, "ratio", a.ratio, b.ratio, "%.3f", 0);
    cmp_row(f, "file bytes after", a.file_after, b.file_after, "%.0f", 1);
    cmp_row(f, "tensor bytes after", a.bytes_after, b.bytes_after, "%.0f", 1);
    cmp_row(f, "bits per weight", a.bpw, b.bpw, "%.3f", 1);
    cmp_row(f, "error, mean", a.err_mean, b.err_mean, "%.4g", 1);
    cmp_row(f, "error, max", a.err_inf ? INFINITY : a.err_max, b.err_inf ? INFINITY : b.err_max,
            "%.4g", 1);
    cmp_row(f, "sparsity %", 100 * a.sparsity, 100 * b.sparsity, "%.2f", -1);
    cmp_row(f, "tensors changed", (double)a.changed, (double)b.changed, "%.0f", -1);
    cmp_row(f, "pipeline seconds", a.seconds, b.seconds, "%.3f", 1);
    {
        json_t *aa = json_object_get(ra, "accuracy"), *ab = json_object_get(rb, "accuracy");
        if (json_is_number(json_object_get(aa, "after")) &&
            json_is_number(json_object_get(ab, "after")))
            cmp_row(f, "top-1 accuracy after %", 100 * num(aa, "after"), 100 * num(ab, "after"),
                    "%.2f", 0);
    }
    fputs("</tbody></table></div><h2>Per tensor</h2><div class=\"charts\">", f);
    chart(f, "chart-error", "Relative error",
          "<span class=\"sw a\"></span>A<span class=\"sw c\"></span>B", reps, 2, M_ERROR);
    chart(f, "chart-bpw", "Bits per weight",
          "<span class=\"sw a\"></span>A<span class=\"sw c\"></span>B", reps, 2, M_BPW);
    fputs("</div><div class=\"tbl\"><table class=\"sortable cardrows\" id=\"tensors\"><thead><tr>"
          "<th>tensor</th><th>scheme A</th><th>scheme B</th><th class=\"n\">bits/w A</th>"
          "<th class=\"n\">bits/w B</th><th class=\"n\">rel. error A</th>"
          "<th class=\"n\">rel. error B</th><th class=\"n\">SNR A</th><th class=\"n\">SNR B</th>"
          "<th class=\"n\">bytes A</th><th class=\"n\">bytes B</th></tr></thead><tbody>", f);
    json_array_foreach(json_object_get(ra, "tensors"), i, t) {
        json_t *u = tensor_named(rb, str(t, "name"));
        fputs("<tr><td class=\"name\" data-k=\"tensor\">", f);
        esc_wrap(f, str(t, "name"));
        fputs("</td><td data-k=\"scheme A\">", f);
        esc(f, str(t, "scheme"));
        fputs("</td><td data-k=\"scheme B\">", f);
        esc(f, u ? str(u, "scheme") : "-");
        fputs("</td>", f);
        cmp_cell(f, t, "bits_per_weight", "%.2f", "bits/w A");
        cmp_cell(f, u, "bits_per_weight", "%.2f", "bits/w B");
        cmp_cell(f, t, "rel_error", "%.3g", "rel. error A");
        cmp_cell(f, u, "rel_error", "%.3g", "rel. error B");
        cmp_cell(f, t, "snr_db", "%.1f", "SNR A");
        cmp_cell(f, u, "snr_db", "%.1f", "SNR B");
        cmp_cell(f, t, "bytes_after", "%.0f", "bytes A");
        cmp_cell(f, u, "bytes_after", "%.0f", "bytes B");
        fputs("</tr>", f);
    }
    fputs("</tbody></table></div>", f);
    foot(f);
    if (fclose(f)) {
        free(buf);
        return NULL;
    }
    return buf;
}

/* A succeeded job named by ?param=, with its report and model row. */
static int compare_side(struct api_ctx *ctx, struct MHD_Connection *conn, struct api_request *req,
                        const char *param, json_t **job, json_t **rep, json_t **model,
                        enum MHD_Result *ret)
{
    const char *id = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, param);
    struct slim_error err;
    *job = *rep = *model = NULL;
    if (!id || !*id) {
        *ret = api_reply_error(conn, req, SLIM_EINVAL, "%s: required, the id of a succeeded job "
                               "(/v1/jobs/compare?a=job_...&b=job_...)", param);
        return 0;
    }
    if (!visible_job(ctx, conn, req, param, id, job, ret))
        return 0;
    if (store_job_report(ctx->st, id, rep, &err)) {
        slim_error_prefix(&err, "%s", param);
        *ret = api_reply_slim_error(conn, req, &err);
        json_decref(*job);
        *job = NULL;
        return 0;
    }
    if (str(*job, "model") && store_model_get(ctx->st, str(*job, "model"), model, &err))
        *model = NULL;
    return 1;
}

enum MHD_Result api_pages_compare(struct api_ctx *ctx, struct MHD_Connection *conn,
                                  struct api_request *req)
{
    json_t *ja, *jb, *ra, *rb, *ma, *mb;
    enum MHD_Result ret;
    const char *sa, *sb;
    char *html;

    pthread_once(&csp_once, csp_init);
    if (!compare_side(ctx, conn, req, "a", &ja, &ra, &ma, &ret))
        return ret;
    if (!compare_side(ctx, conn, req, "b", &jb, &rb, &mb, &ret)) {
        json_decref(ja);
        json_decref(ra);
        json_decref(ma);
        return ret;
    }
    /* the same model: the same row, or (identical uploads) the same bytes */
    sa = ma ? str(ma, "sha256") : NULL;
    sb = mb ? str(mb, "sha256") : NULL;
    if (!str(ja, "model") || !str(jb, "model") ||
        (strcmp(str(ja, "model"), str(jb, "model")) && !(sa && sb && !strcmp(sa, sb)))) {
        ret = api_reply_error(conn, req, SLIM_EINVAL, "b: job %s compressed model %s, and job "
                              "%s (a) model %s: only jobs on the same model compare",
                              str(jb, "id"), str(jb, "model") ? str(jb, "model") : "?",
                              str(ja, "id"), str(ja, "model") ? str(ja, "model") : "?");
        html = NULL;
    } else {
        html = compare_page(ja, jb, ma ? ma : mb, ra, rb);
        ret = reply_page(conn, req, html, page_csp);
    }
    json_decref(ja);
    json_decref(jb);
    json_decref(ra);
    json_decref(rb);
    json_decref(ma);
    json_decref(mb);
    return ret;
}

/* ---- the dashboard ---------------------------------------------------- */

static char *dashboard_page;
static size_t dashboard_len;
static pthread_once_t dashboard_once = PTHREAD_ONCE_INIT;

static void dashboard_init(void)
{
    FILE *f = open_memstream(&dashboard_page, &dashboard_len);
    if (!f)
        return;
    head(f, "dashboard", 0);
    fprintf(f, "%s<script>%s</script><script>%s</script></body></html>\n",
            api_asset_dashboard_html, api_asset_pages_js, api_asset_dashboard_js);
    if (fclose(f)) {
        free(dashboard_page);
        dashboard_page = NULL;
    }
}

enum MHD_Result api_dashboard(struct api_ctx *ctx, struct MHD_Connection *conn,
                              struct api_request *req)
{
    char *page;
    (void)ctx;
    pthread_once(&csp_once, csp_init);
    pthread_once(&dashboard_once, dashboard_init);
    page = dashboard_page ? malloc(dashboard_len) : NULL;
    if (!page)
        return api_reply_error(conn, req, SLIM_ENOMEM, "out of memory");
    memcpy(page, dashboard_page, dashboard_len);
    return api_reply_html(conn, req, page, dashboard_len, dashboard_csp);
}
