/*
 * pass_prune.c - the prune pass: reads {"op": "prune", "sparsity",
 * "pattern", "scope"} and applies the magnitude-pruning kernels of
 * prune.c to the selected tensors.
 *
 * Patterns: "unstructured" (the exact fraction with the smallest |w|, per
 * tensor or, with "scope": "global", over all selected tensors at once),
 * "N:M" (N of every M consecutive weights along the input dimension
 * stay: sparsity is implied, so a "sparsity" that disagrees is an error),
 * and "rows" (whole output rows with the smallest L2 norm).  A pruned
 * tensor is marked, so later passes keep its zeros exact (cluster fixes a
 * zero centroid; the quantizers all map 0 to an exact code) and the
 * sparse output can store only the survivors.
 */
#include <stdio.h>
#include <string.h>
#include "passes/kernels.h"
#include "passes/pass.h"

enum pattern { P_UNSTRUCTURED, P_NM, P_ROWS };

struct prune_cfg {
    double sparsity;
    int pattern;
    int global;
    int n, m;
};

static const char *const prune_keys[] = {"sparsity", "pattern", "scope", NULL};
static const char *const scope_names[] = {"layer", "global", NULL};

static int prune_parse(json_t *spec, const char *where, void *cfgp, struct slim_error *err)
{
    struct prune_cfg *cfg = cfgp;
    json_t *pat = json_object_get(spec, "pattern");
    int rc;
    cfg->sparsity = -1;
    if ((rc = slim_spec_num(spec, where, "sparsity", 0.0, 1.0, &cfg->sparsity, err)) ||
        (rc = slim_spec_enum(spec, where, "scope", scope_names, &cfg->global, err)))
        return rc;
    cfg->pattern = P_UNSTRUCTURED;
    if (pat) {
        const char *p = json_is_string(pat) ? json_string_value(pat) : "";
        char tail;
        if (!strcmp(p, "unstructured")) {
            cfg->pattern = P_UNSTRUCTURED;
        } else if (!strcmp(p, "rows")) {
            cfg->pattern = P_ROWS;
        } else if (sscanf(p, "%d:%d%c", &cfg->n, &cfg->m, &tail) == 2) {
            if (cfg->m < 1 || cfg->m > 1024 || cfg->n < 1 || cfg->n > cfg->m)
                return slim_error_set(err, SLIM_ESPEC,
                                      "%s.pattern: '%s' needs 1 <= N <= M <= 1024", where, p);
            cfg->pattern = P_NM;
        } else {
            return slim_error_set(err, SLIM_ESPEC,
                                  "%s.pattern: expected \"unstructured\", \"rows\" or \"N:M\" "
                                  "(e.g. \"2:4\")", where);
        }
    }
    if (cfg->pattern == P_NM) {
        double implied = 1.0 - (double)cfg->n / cfg->m;
        if (cfg->sparsity >= 0 && (cfg->sparsity - implied > 1e-9 || implied - cfg->sparsity > 1e-9))
            return slim_error_set(err, SLIM_ESPEC,
                                  "%s.sparsity: %g disagrees with pattern %d:%d (sparsity %g); "
                                  "leave it out", where, cfg->sparsity, cfg->n, cfg->m, implied);
        cfg->sparsity = implied;
    } else if (cfg->sparsity < 0) {
        return slim_error_set(err, SLIM_ESPEC, "%s.sparsity: required, a fraction from 0 to 1",
                              where);
    }
    if (cfg->global && cfg->pattern != P_UNSTRUCTURED)
        return slim_error_set(err, SLIM_ESPEC,
                              "%s.scope: \"global\" works with the unstructured pattern only",
                              where);
    return 0;
}

/* Marks t as pruned: stored dense in its own dtype unless a later pass
 * encodes it. */
static void mark_pruned(struct slim_wt *t)
{
    t->pruned = 1;
    if (t->scheme == SLIM_SCHEME_COPY) {
        t->scheme = SLIM_SCHEME_DENSE;
        t->dense_dtype = t->dtype;
    }
}

static int prune_global(const struct prune_cfg *cfg, const struct slim_select *sel,
                        struct slim_work *w, struct slim_error *err)
{
    float **ws = slim_calloc(w->n ? w->n : 1, sizeof *ws);
    size_t *ns = slim_calloc(w->n ? w->n : 1, sizeof *ns), count = 0;
    int rc = 0;
    if (!ws || !ns) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < w->n; i++) {
        struct slim_wt *t = &w->wts[i];
        if (!slim_select_match(sel, t))
            continue;
        if ((rc = slim_work_check(w, 0.5 * (double)i / (double)w->n, err)) ||
            (rc = slim_wt_load(t, err)))
            goto out;
        ws[count] = t->val;
        ns[count++] = (size_t)(t->rows * t->cols);
    }
    rc = slim_prune_global(ws, ns, count, cfg->sparsity, w->threads, NULL, err);
    if (rc)
        goto out;
    for (size_t i = 0; i < w->n; i++)
        if (slim_select_match(sel, &w->wts[i]))
            mark_pruned(&w->wts[i]);
out:
    slim_free(ws);
    slim_free(ns);
    return rc;
}

static int prune_one(const void *cfgp, struct slim_work *w, size_t i, struct slim_error *err)
{
    const struct prune_cfg *cfg = cfgp;
    struct slim_wt *t = &w->wts[i];
    size_t rows = (size_t)t->rows, cols = (size_t)t->cols;
    int rc;
    if (cfg->pattern == P_UNSTRUCTURED)
        rc = slim_prune_unstructured(t->val, rows * cols, cfg->sparsity, w->threads, NULL, err);
    else if (cfg->pattern == P_NM)
        rc = slim_prune_nm(t->val, rows, cols, cfg->n, cfg->m, w->threads, NULL, err);
    else
        rc = slim_prune_rows(t->val, rows, cols, cfg->sparsity, w->threads, NULL, err);
    if (!rc)
        mark_pruned(t);
    return rc;
}

static int prune_apply(const void *cfgp, const struct slim_select *sel, struct slim_work *w,
                       struct slim_error *err)
{
    const struct prune_cfg *cfg = cfgp;
    if (cfg->global)
        return prune_global(cfg, sel, w, err);
    return slim_work_each(w, sel, 0, prune_one, cfg, err);
}

const struct slim_pass_ops slim_pass_prune = {
    .op = "prune",
    .stage = 1,
    .keys = prune_keys,
    .cfg_size = sizeof(struct prune_cfg),
    .parse = prune_parse,
    .apply = prune_apply,
    .release = NULL,
};
