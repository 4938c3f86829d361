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
#include "passes/kernels/kernels.h"
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
 * encodes it.  Pruned tensors in the sparse output have a size that
 * depends on their values. */
static int mark_pruned(struct slim_work *w, struct slim_wt *t)
{
    t->pruned = 1;
    if (t->scheme == SLIM_SCHEME_COPY) {
        t->scheme = SLIM_SCHEME_DENSE;
        t->dense_dtype = t->dtype;
    }
    if (w->sparse_output && w->planning)
        slim_work_unplannable(w);
    return 0;
}

static int prune_plan(const void *cfgp, struct slim_work *w, size_t i, struct slim_error *err)
{
    (void)cfgp;
    (void)err;
    return mark_pruned(w, &w->wts[i]);
}

/* ---- global scope: a radix select over the streamed model ------------
 *
 * The k-th smallest |w| over every selected tensor is found as prune.c
 * finds it within one tensor (the key is |w|'s bit pattern; the top 16
 * bits name a bucket, the low 15 the key inside it), but in two summary
 * sweeps over the streamed model instead of two passes over memory:
 * sweep 0 histograms the top bits, sweep 1 the low bits of the members of
 * the bucket holding the k-th key.  That gives the threshold key T and
 * how many keys equal to T are zeroed: the first ones in model order, as
 * slim_prune_global breaks ties, so the two agree bit for bit.  Memory:
 * one 64 K-bucket histogram, whatever the model's size. */

#define G_HI_BINS (1u << 16)
#define G_LO_BITS 15
#define G_KEY_MASK 0x7fffffffu
#define G_KEY_INF 0x7f800000u

struct global_state {
    uint64_t hist[G_HI_BINS];
    uint64_t total;         /* weights seen in sweep 0 */
    uint64_t need;          /* after sweep 0: keys of the bucket still to zero */
    uint32_t bin;           /* the bucket of the k-th key */
    uint32_t thresh;        /* after sweep 1: T */
    uint64_t ties_left;     /* keys == T still to zero, in model order */
    int none;               /* k == 0: nothing to zero */
};

static uint32_t key_of(float v)
{
    uint32_t b;
    memcpy(&b, &v, 4);
    return b & G_KEY_MASK;
}

static int global_sweeps(const void *cfgp)
{
    return ((const struct prune_cfg *)cfgp)->global ? 2 : 0;
}

static int global_summarize(const void *cfgp, struct slim_work *w, size_t i,
                            struct slim_error *err)
{
    struct global_state *g = w->state;
    const struct slim_wt *t = &w->wts[i];
    const float *v = t->val ? t->val : w->orig;
    size_t n = (size_t)(t->rows * t->cols);
    (void)cfgp;
    if (w->sweep == 0) {
        uint32_t worst = 0;
        for (size_t k = 0; k < n; k++) {
            uint32_t key = key_of(v[k]);
            g->hist[key >> G_LO_BITS]++;
            worst = key > worst ? key : worst;
        }
        if (worst > G_KEY_INF)
            return slim_error_set(err, SLIM_ENUMERIC, "prune: NaN in weights");
        g->total += n;
    } else if (!g->none) {
        for (size_t k = 0; k < n; k++) {
            uint32_t key = key_of(v[k]);
            if (key >> G_LO_BITS == g->bin)
                g->hist[key & ((1u << G_LO_BITS) - 1)]++;
        }
    }
    return 0;
}

static int global_sweep_done(const void *cfgp, void *state, int sweep, struct slim_error *err)
{
    const struct prune_cfg *cfg = cfgp;
    struct global_state *g = state;
    uint64_t before = 0;
    uint32_t b = 0;
    (void)err;
    if (sweep == 0) {
        uint64_t k = slim_prune_count((size_t)g->total, cfg->sparsity);
        if (k == 0) {
            g->none = 1;
            return 0;
        }
        while (before + g->hist[b] < k)
            before += g->hist[b++];
        g->bin = b;
        g->need = k - before;
    } else if (!g->none) {
        while (before + g->hist[b] < g->need)
            before += g->hist[b++];
        g->thresh = g->bin << G_LO_BITS | b;
        g->ties_left = g->need - before;
    }
    memset(g->hist, 0, sizeof g->hist);
    return 0;
}

/* Float bit patterns; may_alias so writing w as integers is well-defined. */
typedef uint32_t u32a __attribute__((may_alias));

struct below_job {
    float *w;
    size_t n;
    uint32_t thresh;
};

/* Zeroes every weight whose key is below T: branch-free, so it
 * vectorises; split across threads. */
static void zero_below_part(void *ctx, int part, int nparts)
{
    struct below_job *j = ctx;
    size_t lo = j->n * (size_t)part / (size_t)nparts, hi = j->n * (size_t)(part + 1) / (size_t)nparts;
    u32a *u = (u32a *)j->w;
    for (size_t k = lo; k < hi; k++)
        u[k] = (u[k] & G_KEY_MASK) < j->thresh ? 0u : u[k];
}

static int prune_global_one(struct slim_work *w, struct slim_wt *t)
{
    struct global_state *g = w->state;
    size_t n = (size_t)(t->rows * t->cols);
    if (!g->none) {
        struct below_job j = {t->val, n, g->thresh};
        slim_kernel_parallel(slim_kernel_threads(w->threads, n), zero_below_part, &j);
        for (size_t k = 0; k < n && g->ties_left; k++)
            if (key_of(t->val[k]) == g->thresh) {
                t->val[k] = 0.0f;
                g->ties_left--;
            }
    }
    return mark_pruned(w, t);
}

static int prune_one(const void *cfgp, struct slim_work *w, size_t i, struct slim_error *err)
{
    const struct prune_cfg *cfg = cfgp;
    struct slim_wt *t = &w->wts[i];
    size_t rows = (size_t)t->rows, cols = (size_t)t->cols;
    int rc = slim_wt_load(w, t, err);
    if (rc)
        return rc;
    if (cfg->global)
        return prune_global_one(w, t);
    if (cfg->pattern == P_UNSTRUCTURED)
        rc = slim_prune_unstructured(t->val, rows * cols, cfg->sparsity, w->threads, NULL, err);
    else if (cfg->pattern == P_NM)
        rc = slim_prune_nm(t->val, rows, cols, cfg->n, cfg->m, w->threads, NULL, err);
    else
        rc = slim_prune_rows(t->val, rows, cols, cfg->sparsity, w->threads, NULL, err);
    if (!rc)
        mark_pruned(w, t);
    if (!rc && cfg->pattern == P_NM) {   /* the report checks it still holds at the end */
        w->nm_n = cfg->n;
        w->nm_m = cfg->m;
        w->nm_pass = w->pass_index;
        w->nm_after = -1;
    }
    return rc;
}

/* The radix select's candidate list (at most n / 16 + 64 K addresses)
 * and histograms; rows' norms.  N:M and global need nothing to speak of. */
static size_t prune_scratch(const void *cfgp, int64_t rows, int64_t cols)
{
    const struct prune_cfg *cfg = cfgp;
    size_t n = (size_t)(rows * cols);
    if (cfg->pattern == P_UNSTRUCTURED && !cfg->global)
        return (n / 16 + 65536) * sizeof(void *) + ((size_t)4 << 20);
    if (cfg->pattern == P_ROWS)
        return (size_t)rows * 2 * sizeof(double);
    return 0;
}

const struct slim_pass_ops slim_pass_prune = {
    .op = "prune",
    .stage = 1,
    .keys = prune_keys,
    .cfg_size = sizeof(struct prune_cfg),
    .parse = prune_parse,
    .plan = prune_plan,
    .tensor = prune_one,
    .state_size = sizeof(struct global_state),
    .sweeps = global_sweeps,
    .summarize = global_summarize,
    .sweep_done = global_sweep_done,
    .scratch_bytes = prune_scratch,
};
