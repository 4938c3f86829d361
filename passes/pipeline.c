/*
 * pipeline.c - one job spec over one model: validate the spec, load the
 * model, run the passes in order, write the artifact, build the report.
 *
 * The spec is validated whole before anything runs (unknown keys, bad
 * values, an order of passes that makes no sense), so a job that was
 * accepted fails later only for reasons the spec could not show (a NaN
 * in the weights, a full disk).  Composition is checked with one rule:
 * passes go in non-decreasing stage (prune 1, lowrank 2, then the storage
 * encoding: cluster or quantize, 3), and at most one encoding runs, since
 * a tensor is stored one way.
 *
 * Progress: load takes the first 5 %, the passes share the next 85 %
 * evenly, write and report the last 10 %.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "passes/artifact.h"
#include "passes/pass.h"
#include "passes/report.h"

struct spec_pass {
    const struct slim_pass_ops *ops;
    void *cfg;
    struct slim_select sel;
};

struct slim_spec {
    struct spec_pass *passes;
    size_t n_passes;
    int dequantize;
    int sparse;
    int threads;
    json_t *json;     /* the passes as given, for the artifact's metadata */
};

static void select_release(struct slim_select *sel)
{
    for (size_t i = 0; i < sel->n_include; i++)
        slim_free(sel->include[i]);
    for (size_t i = 0; i < sel->n_exclude; i++)
        slim_free(sel->exclude[i]);
    slim_free(sel->include);
    slim_free(sel->exclude);
}

void slim_spec_free(struct slim_spec *spec)
{
    if (!spec)
        return;
    for (size_t i = 0; i < spec->n_passes; i++) {
        if (spec->passes[i].ops && spec->passes[i].ops->release)
            spec->passes[i].ops->release(spec->passes[i].cfg);
        slim_free(spec->passes[i].cfg);
        select_release(&spec->passes[i].sel);
    }
    slim_free(spec->passes);
    json_decref(spec->json);
    slim_free(spec);
}

void slim_spec_set_threads(struct slim_spec *spec, int threads)
{
    spec->threads = threads;
}

static int parse_globs(json_t *v, const char *where, const char *key, char ***out, size_t *n,
                       struct slim_error *err)
{
    json_t *g;
    size_t i;
    if (!json_is_array(v))
        return slim_error_set(err, SLIM_ESPEC, "%s.%s: expected an array of glob strings", where,
                              key);
    *out = slim_calloc(json_array_size(v) + 1, sizeof **out);
    if (!*out)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    json_array_foreach(v, i, g) {
        if (!json_is_string(g) || !json_string_length(g))
            return slim_error_set(err, SLIM_ESPEC, "%s.%s[%zu]: expected a non-empty string",
                                  where, key, i);
        if (!((*out)[i] = slim_strdup(json_string_value(g))))
            return slim_error_set(err, SLIM_ENOMEM, "out of memory");
        *n = i + 1;
    }
    return 0;
}

static int key_allowed(const char *key, const char *const *keys)
{
    if (!strcmp(key, "op") || !strcmp(key, "include") || !strcmp(key, "exclude"))
        return 1;
    for (int i = 0; keys && keys[i]; i++)
        if (!strcmp(key, keys[i]))
            return 1;
    return 0;
}

static int parse_pass(json_t *p, size_t idx, struct spec_pass *sp, struct slim_error *err)
{
    char where[32];
    const char *key;
    json_t *v, *op;
    int rc;

    snprintf(where, sizeof where, "passes[%zu]", idx);
    if (!json_is_object(p))
        return slim_error_set(err, SLIM_ESPEC, "%s: expected an object", where);
    op = json_object_get(p, "op");
    if (!json_is_string(op))
        return slim_error_set(err, SLIM_ESPEC, "%s.op: required (one of %s)", where,
                              slim_pass_names());
    sp->ops = slim_pass_find(json_string_value(op));
    if (!sp->ops)
        return slim_error_set(err, SLIM_ESPEC, "%s.op: unknown op '%.40s' (expected one of %s)",
                              where, json_string_value(op), slim_pass_names());
    json_object_foreach(p, key, v) {
        if (!key_allowed(key, sp->ops->keys))
            return slim_error_set(err, SLIM_ESPEC, "%s: unknown key '%.40s' for op '%s'", where,
                                  key, sp->ops->op);
    }
    if ((v = json_object_get(p, "include")) &&
        (rc = parse_globs(v, where, "include", &sp->sel.include, &sp->sel.n_include, err)))
        return rc;
    if ((v = json_object_get(p, "exclude")) &&
        (rc = parse_globs(v, where, "exclude", &sp->sel.exclude, &sp->sel.n_exclude, err)))
        return rc;
    sp->cfg = slim_calloc(1, sp->ops->cfg_size);
    if (!sp->cfg)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    return sp->ops->parse(p, where, sp->cfg, err);
}

int slim_spec_parse(json_t *json, const char *const *allow, struct slim_spec **out,
                    struct slim_error *err)
{
    struct slim_spec *spec;
    json_t *passes, *output, *v;
    const char *key;
    size_t i;
    int rc = 0, last_stage = 0, encodings = 0;

    *out = NULL;
    if (!json_is_object(json))
        return slim_error_set(err, SLIM_ESPEC, "job spec: expected a JSON object");
    json_object_foreach(json, key, v) {
        int ok = !strcmp(key, "passes") || !strcmp(key, "output");
        for (int k = 0; !ok && allow && allow[k]; k++)
            ok = !strcmp(key, allow[k]);
        if (!ok)
            return slim_error_set(err, SLIM_ESPEC, "unknown key '%.40s' in job spec", key);
    }
    passes = json_object_get(json, "passes");
    if (!json_is_array(passes) || json_array_size(passes) == 0)
        return slim_error_set(err, SLIM_ESPEC, "passes: required, a non-empty array of passes");
    spec = slim_calloc(1, sizeof *spec);
    if (!spec || !(spec->passes = slim_calloc(json_array_size(passes), sizeof *spec->passes))) {
        slim_free(spec);
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    }
    spec->threads = 1;
    json_array_foreach(passes, i, v) {
        spec->n_passes = i + 1;
        if ((rc = parse_pass(v, i, &spec->passes[i], err)))
            goto fail;
        int stage = spec->passes[i].ops->stage;
        if (stage < last_stage) {
            rc = slim_error_set(err, SLIM_ESPEC,
                                "passes[%zu]: op '%s' cannot follow op '%s' (order: prune, "
                                "lowrank, then one of cluster or quantize)", i,
                                spec->passes[i].ops->op, spec->passes[i - 1].ops->op);
            goto fail;
        }
        if (stage == 3 && ++encodings > 1) {
            rc = slim_error_set(err, SLIM_ESPEC,
                                "passes[%zu]: only one of cluster or quantize may run (a tensor "
                                "is stored one way)", i);
            goto fail;
        }
        last_stage = stage;
    }
    output = json_object_get(json, "output");
    if (output) {
        if (!json_is_object(output)) {
            rc = slim_error_set(err, SLIM_ESPEC, "output: expected an object");
            goto fail;
        }
        json_object_foreach(output, key, v) {
            if (strcmp(key, "dequantize") && strcmp(key, "format") && strcmp(key, "sparse")) {
                rc = slim_error_set(err, SLIM_ESPEC, "output: unknown key '%.40s'", key);
                goto fail;
            }
        }
        if ((rc = slim_spec_bool(output, "output", "dequantize", &spec->dequantize, err)) ||
            (rc = slim_spec_bool(output, "output", "sparse", &spec->sparse, err)))
            goto fail;
        v = json_object_get(output, "format");
        if (v && !(json_is_string(v) && !strcmp(json_string_value(v), "safetensors"))) {
            rc = slim_error_set(err, SLIM_ESPEC, "output.format: expected 'safetensors'");
            goto fail;
        }
    }
    /* binary weights have no code for 0: after a prune only the sparse
     * output, whose mask keeps the zeros, can store them faithfully */
    if (!spec->sparse) {
        int pruned = 0;
        json_array_foreach(passes, i, v) {
            const char *op = json_string_value(json_object_get(v, "op"));
            const char *dt = json_string_value(json_object_get(v, "dtype"));
            pruned |= !strcmp(op, "prune");
            if (pruned && !strcmp(op, "quantize") && dt && !strcmp(dt, "binary")) {
                rc = slim_error_set(err, SLIM_ESPEC,
                                    "passes[%zu]: binary weights cannot keep pruned zeros; add "
                                    "\"output\": {\"sparse\": true} or use ternary", i);
                goto fail;
            }
        }
    }
    spec->json = json_deep_copy(passes);
    *out = spec;
    return 0;
fail:
    slim_spec_free(spec);
    return rc;
}

static void work_release(struct slim_work *w)
{
    for (size_t i = 0; i < w->n; i++) {
        struct slim_wt *t = &w->wts[i];
        slim_wt_clear_outs(t);
        slim_free(t->name);
        slim_free(t->origin);
        slim_aligned_free(t->val);
        json_decref(t->report_extra);
    }
    slim_free(w->wts);
    memset(w, 0, sizeof *w);
}

static int work_init(struct slim_work *w, const struct slim_model *m, struct slim_error *err)
{
    memset(w, 0, sizeof *w);
    w->model = m;
    w->wts = slim_calloc(m->n_tensors ? m->n_tensors : 1, sizeof *w->wts);
    if (!w->wts)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    w->cap = m->n_tensors;
    for (size_t i = 0; i < m->n_tensors; i++) {
        const struct slim_tensor *src = &m->tensors[i];
        struct slim_wt *t = &w->wts[i];
        w->n = i + 1;
        t->name = slim_strdup(src->name);
        t->origin = slim_strdup(src->name);
        if (!t->name || !t->origin)
            return slim_error_set(err, SLIM_ENOMEM, "out of memory");
        t->src = src;
        t->dtype = src->dtype;
        t->ndim = src->ndim;
        memcpy(t->shape, src->shape, sizeof t->shape);
        t->rows = src->ndim ? src->shape[0] : 1;
        t->cols = t->rows ? slim_tensor_numel(src) / t->rows : 0;
        t->scheme = SLIM_SCHEME_COPY;
        t->dense_dtype = src->dtype;
    }
    return 0;
}

int slim_pipeline_run(const struct slim_spec *spec, const char *in_path, const char *out_path,
                      const struct slim_run_opts *opts, json_t **report, struct slim_error *err)
{
    struct slim_model model;
    struct slim_work w;
    struct slim_artifact art;
    json_t *passes_rep = json_array(), *md = NULL;
    double t_start = slim_now(), t0, t_load, t_write;
    int rc;

    *report = NULL;
    memset(&w, 0, sizeof w);
    memset(&art, 0, sizeof art);
    if (opts && opts->progress && opts->progress(opts->progress_ud, 0.0, "load")) {
        json_decref(passes_rep);
        return slim_error_set(err, SLIM_ECANCELED, "canceled");
    }
    rc = slim_st_open(in_path, &model, err);
    if (rc) {
        json_decref(passes_rep);
        return rc;
    }
    if ((rc = work_init(&w, &model, err)))
        goto out;
    w.threads = opts && opts->threads ? opts->threads : spec->threads;
    w.dequantize_output = spec->dequantize;
    w.sparse_output = spec->sparse;
    w.progress = opts ? opts->progress : NULL;
    w.progress_ud = opts ? opts->progress_ud : NULL;
    t_load = slim_now() - t_start;

    for (size_t i = 0; i < spec->n_passes; i++) {
        const struct spec_pass *sp = &spec->passes[i];
        w.stage = sp->ops->op;
        w.p_lo = 0.05 + 0.85 * (double)i / (double)spec->n_passes;
        w.p_hi = 0.05 + 0.85 * (double)(i + 1) / (double)spec->n_passes;
        if ((rc = slim_work_check(&w, 0.0, err)))
            goto out;
        t0 = slim_now();
        rc = sp->ops->apply(sp->cfg, &sp->sel, &w, err);
        if (rc) {
            if (rc != SLIM_ECANCELED)
                slim_error_prefix(err, "passes[%zu] (%s)", i, sp->ops->op);
            goto out;
        }
        json_array_append_new(passes_rep,
                              json_pack("{s:I, s:s, s:f}", "index", (json_int_t)i, "op",
                                        sp->ops->op, "seconds", slim_now() - t0));
    }

    w.stage = "write";
    w.p_lo = 0.90;
    w.p_hi = 0.95;
    if ((rc = slim_work_check(&w, 0.0, err)))
        goto out;
    t0 = slim_now();
    if ((rc = slim_artifact_layout(&w, &art, err)) ||
        (rc = slim_artifact_metadata(&w, spec->json, &md, err)) ||
        (rc = slim_st_write(out_path, art.tensors, art.n, md, err)))
        goto out;
    t_write = slim_now() - t0;

    w.stage = "report";
    w.p_lo = 0.95;
    w.p_hi = 1.0;
    if ((rc = slim_work_check(&w, 0.0, err)))
        goto out;
    rc = slim_report_build(&w, &art, out_path, passes_rep, report, err);
    if (rc)
        goto out;
    json_object_set_new(*report, "timings",
                        json_pack("{s:f, s:f, s:f}", "load_seconds", t_load, "write_seconds",
                                  t_write, "total_seconds", slim_now() - t_start));
    slim_work_check(&w, 1.0, err);
out:
    if (rc)
        unlink(out_path);
    slim_artifact_release(&art);
    json_decref(md);
    json_decref(passes_rep);
    work_release(&w);
    slim_model_release(&model);
    return rc;
}
