/*
 * pass.c - what every pass shares: the registry of ops, tensor
 * selection by include/exclude globs, the working-tensor helpers and the
 * spec readers that turn a bad value into a message naming its field
 * ("passes[0].granularity: expected one of tensor, channel").
 *
 * The default selection is what compressing a network usually means:
 * floating-point tensors of rank >= 2 (matrices and conv kernels), never
 * biases or norms.  Explicit "include" globs choose among floating-point
 * tensors of rank >= 2 (so "layer0.*" means layer0's matrices, not its
 * bias), and may name a 2-D tensor the default leaves out because of its
 * name; 1-D tensors (biases, norm scales) and integer tensors (token
 * ids, position tables) are never compressed.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "passes/pass.h"

static const struct slim_pass_ops *const registry[] = {
    &slim_pass_prune, &slim_pass_lowrank, &slim_pass_cluster, &slim_pass_quantize,
    &slim_pass_distill, &slim_pass_finetune,
};

const struct slim_pass_ops *slim_pass_find(const char *op)
{
    for (size_t i = 0; i < sizeof registry / sizeof registry[0]; i++)
        if (strcmp(registry[i]->op, op) == 0)
            return registry[i];
    return NULL;
}

const char *slim_pass_names(void)
{
    static char names[256];
    if (!names[0]) {
        size_t off = 0;
        for (size_t i = 0; i < sizeof registry / sizeof registry[0]; i++)
            off += (size_t)snprintf(names + off, sizeof names - off, "%s%s", i ? ", " : "",
                                    registry[i]->op);
    }
    return names;
}

const char *slim_scheme_name(int scheme)
{
    static const char *const names[] = {"copy", "dense", "fp16", "bf16", "int8",
                                        "int4", "ternary", "binary", "cluster"};
    return scheme >= 0 && scheme < (int)(sizeof names / sizeof names[0]) ? names[scheme] : "?";
}

static int name_is_bias_or_norm(const char *name)
{
    size_t n = strlen(name);
    return (n >= 4 && strcmp(name + n - 4, "bias") == 0) || strstr(name, "norm") != NULL;
}

int slim_select_match(const struct slim_select *sel, const struct slim_wt *t)
{
    if (!slim_dtype_is_float(t->dtype) || t->ndim < 2)
        return 0;
    if (sel->only)
        return json_object_get(sel->only, t->name) != NULL;
    if (sel->include) {
        int hit = 0;
        for (size_t i = 0; i < sel->n_include && !hit; i++)
            hit = slim_glob_match(sel->include[i], t->name) ||
                  slim_glob_match(sel->include[i], t->origin);
        if (!hit)
            return 0;
    } else if ((t->src && t->src->role == SLIM_ROLE_OTHER) ||
               ((!t->src || t->src->role != SLIM_ROLE_WEIGHT) && name_is_bias_or_norm(t->origin))) {
        return 0;
    }
    for (size_t i = 0; i < sel->n_exclude; i++)
        if (slim_glob_match(sel->exclude[i], t->name) ||
            slim_glob_match(sel->exclude[i], t->origin))
            return 0;
    return 1;
}

int slim_work_check(struct slim_work *w, double frac, struct slim_error *err)
{
    double p = -1.0;
    if (!w->progress)
        return 0;
    if (frac >= 0)
        p = w->p_lo + (w->p_hi - w->p_lo) * (frac > 1 ? 1 : frac);
    if (w->progress(w->progress_ud, p, w->stage))
        return slim_error_set(err, SLIM_ECANCELED, "canceled");
    return 0;
}

int slim_work_each(struct slim_work *w, const struct slim_select *sel, int originals_only,
                   slim_wt_fn fn, const void *cfg, struct slim_error *err)
{
    int rc;
    for (size_t i = 0; i < w->n; i++) {
        struct slim_wt *t = &w->wts[i];
        if (!slim_select_match(sel, t) || (originals_only && strcmp(t->name, t->origin)))
            continue;
        if ((rc = slim_work_check(w, -1.0, err)))
            return rc;
        rc = fn(cfg, w, i, err);
        if (rc < 0) {
            const char *name = w->wts[i].origin;
            char quoted[300];
            snprintf(quoted, sizeof quoted, "'%s'", name);
            if (err && rc != SLIM_ECANCELED && !strstr(err->msg, quoted))
                slim_error_prefix(err, "tensor '%s'", name);
            return rc;
        }
        i += (size_t)rc;
    }
    return 0;
}

int slim_wt_load(struct slim_work *w, struct slim_wt *t, struct slim_error *err)
{
    size_t n = (size_t)(t->rows * t->cols);
    if (t->val || w->planning)
        return 0;
    if (!w->orig || !t->src)
        return slim_error_set(err, SLIM_EINTERNAL, "tensor '%s': no values to load", t->name);
    t->val = slim_aligned_alloc(n * sizeof(float));
    if (!t->val)
        return slim_error_set(err, SLIM_ENOMEM, "tensor '%s': out of memory (%zu floats)",
                              t->name, n);
    memcpy(t->val, w->orig, n * sizeof(float));
    return 0;
}

int slim_work_unplannable(struct slim_work *w)
{
    w->unplannable = 1;
    return 0;
}

void slim_wt_clear_outs(struct slim_wt *t)
{
    for (int i = 0; i < t->n_outs; i++) {
        slim_free(t->outs[i].name);
        slim_aligned_free(t->outs[i].data);
    }
    slim_free(t->outs);
    t->outs = NULL;
    t->n_outs = 0;
    json_decref(t->scheme_info);
    t->scheme_info = NULL;
}

int slim_wt_add_out(struct slim_wt *t, const char *suffix, enum slim_dtype dtype, int ndim,
                    const int64_t *shape, void *data, size_t nbytes, struct slim_error *err)
{
    struct slim_out *outs, *o;
    size_t len = strlen(t->name) + strlen(suffix) + 1;
    char *name = slim_malloc(len);

    outs = name ? slim_realloc(t->outs, (size_t)(t->n_outs + 1) * sizeof *outs) : NULL;
    if (!outs) {
        slim_free(name);
        slim_aligned_free(data);
        return slim_error_set(err, SLIM_ENOMEM, "tensor '%s': out of memory", t->name);
    }
    snprintf(name, len, "%s%s", t->name, suffix);
    t->outs = outs;
    o = &outs[t->n_outs++];
    o->name = name;
    o->dtype = dtype;
    o->ndim = ndim;
    memcpy(o->shape, shape, (size_t)ndim * sizeof *shape);
    o->data = data;
    o->nbytes = nbytes;
    return 0;
}

int slim_wt_alloc_outs(struct slim_wt *t, struct slim_error *err)
{
    for (int k = 0; k < t->n_outs; k++)
        if (!t->outs[k].data && !(t->outs[k].data = slim_aligned_alloc(t->outs[k].nbytes + 1)))
            return slim_error_set(err, SLIM_ENOMEM, "tensor '%s': out of memory", t->name);
    return 0;
}

int slim_work_insert(struct slim_work *w, size_t at, const char *name, const char *origin,
                     int64_t rows, int64_t cols, float *val, struct slim_error *err)
{
    struct slim_wt t;
    memset(&t, 0, sizeof t);
    t.name = slim_strdup(name);
    t.origin = slim_strdup(origin);
    if (!t.name || !t.origin)
        goto oom;
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 16;
        struct slim_wt *wts = slim_realloc(w->wts, cap * sizeof *wts);
        if (!wts)
            goto oom;
        w->wts = wts;
        w->cap = cap;
    }
    t.dtype = SLIM_DT_F32;
    t.ndim = 2;
    t.shape[0] = t.rows = rows;
    t.shape[1] = t.cols = cols;
    t.val = val;
    t.scheme = SLIM_SCHEME_DENSE;
    t.code_bits = 0;
    t.dense_dtype = SLIM_DT_F32;
    memmove(&w->wts[at + 1], &w->wts[at], (w->n - at) * sizeof *w->wts);
    w->wts[at] = t;
    w->n++;
    return 0;
oom:
    slim_free(t.name);
    slim_free(t.origin);
    slim_aligned_free(val);
    return slim_error_set(err, SLIM_ENOMEM, "out of memory");
}

int slim_has_nonfinite(const float *v, size_t n)
{
    /* x - x is 0 for finite x and NaN otherwise; summing keeps the loop
     * branch-free so it vectorises. */
    float acc = 0.0f;
    for (size_t i = 0; i < n; i++)
        acc += v[i] - v[i];
    return acc != 0.0f || isnan(acc);
}

static int spec_fail(struct slim_error *err, const char *where, const char *key, const char *what)
{
    return slim_error_set(err, SLIM_ESPEC, "%s.%s: %s", where, key, what);
}

int slim_spec_bool(json_t *spec, const char *where, const char *key, int *out,
                   struct slim_error *err)
{
    json_t *v = json_object_get(spec, key);
    if (!v)
        return 0;
    if (!json_is_boolean(v))
        return spec_fail(err, where, key, "expected true or false");
    *out = json_is_true(v);
    return 0;
}

int slim_spec_int(json_t *spec, const char *where, const char *key, long lo, long hi, long *out,
                  struct slim_error *err)
{
    json_t *v = json_object_get(spec, key);
    if (!v)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return slim_error_set(err, SLIM_ESPEC, "%s.%s: expected an integer from %ld to %ld", where,
                              key, lo, hi);
    *out = (long)json_integer_value(v);
    return 0;
}

int slim_spec_num(json_t *spec, const char *where, const char *key, double lo, double hi,
                  double *out, struct slim_error *err)
{
    json_t *v = json_object_get(spec, key);
    double d;
    if (!v)
        return 0;
    d = json_number_value(v);
    if (!json_is_number(v) || !(d >= lo && d <= hi))
        return slim_error_set(err, SLIM_ESPEC, "%s.%s: expected a number from %g to %g", where,
                              key, lo, hi);
    *out = d;
    return 0;
}

int slim_spec_enum(json_t *spec, const char *where, const char *key, const char *const *choices,
                   int *out, struct slim_error *err)
{
    json_t *v = json_object_get(spec, key);
    char list[120];
    size_t off = 0;
    if (!v)
        return 0;
    if (json_is_string(v))
        for (int i = 0; choices[i]; i++)
            if (strcmp(json_string_value(v), choices[i]) == 0) {
                *out = i;
                return 0;
            }
    list[0] = 0;
    for (int i = 0; choices[i] && off < sizeof list; i++)
        off += (size_t)snprintf(list + off, sizeof list - off, "%s%s", i ? ", " : "", choices[i]);
    if (json_is_string(v))
        return slim_error_set(err, SLIM_ESPEC, "%s.%s: '%.30s' is not one of %s", where, key,
                              json_string_value(v), list);
    return slim_error_set(err, SLIM_ESPEC, "%s.%s: expected one of %s", where, key, list);
}
