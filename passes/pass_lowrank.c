/*
 * pass_lowrank.c - the lowrank pass: {"op": "lowrank", "rank" |
 * "rank_ratio" | "energy", "algorithm"}.  Each selected matrix W (m x n,
 * conv kernels flattened to out x rest) becomes W_u [m, r] and W_v [r, n]
 * with the singular values split evenly (U sqrt(S), sqrt(S) V^T), via the
 * SVD kernels of lowrank.c.
 *
 * The algorithm defaults to randomized when r < min(m, n) / 4 (where a
 * sketch is much cheaper than a full SVD and loses nothing measurable)
 * and exact otherwise.  A matrix whose factors would not be smaller,
 * r (m + n) >= m n, is left as it is and its report row says so: storing
 * it factored would cost bytes and accuracy for nothing.
 *
 * The factors replace W in the working set (W_u in W's place, W_v right
 * after it), both keeping W as their origin, so later passes select them
 * through W's name and the report multiplies them back out.
 */
#include <stdio.h>
#include <string.h>
#include "passes/kernels/kernels.h"
#include "passes/pass.h"

enum { ALG_AUTO, ALG_EXACT, ALG_RANDOMIZED };

struct lowrank_cfg {
    long rank;
    double ratio, energy;
    int algorithm;
};

static const char *const lowrank_keys[] = {"rank", "rank_ratio", "energy", "algorithm", NULL};
static const char *const alg_names[] = {"exact", "randomized", NULL};

static int lowrank_parse(json_t *spec, const char *where, void *cfgp, struct slim_error *err)
{
    struct lowrank_cfg *cfg = cfgp;
    int rc, alg = -1, given = 0;
    if ((rc = slim_spec_int(spec, where, "rank", 1, 1 << 20, &cfg->rank, err)) ||
        (rc = slim_spec_num(spec, where, "rank_ratio", 1e-9, 1.0, &cfg->ratio, err)) ||
        (rc = slim_spec_num(spec, where, "energy", 1e-9, 1.0, &cfg->energy, err)) ||
        (rc = slim_spec_enum(spec, where, "algorithm", alg_names, &alg, err)))
        return rc;
    given = !!json_object_get(spec, "rank") + !!json_object_get(spec, "rank_ratio") +
            !!json_object_get(spec, "energy");
    if (given != 1)
        return slim_error_set(err, SLIM_ESPEC,
                              "%s: give exactly one of rank, rank_ratio or energy", where);
    cfg->algorithm = alg < 0 ? ALG_AUTO : alg == 0 ? ALG_EXACT : ALG_RANDOMIZED;
    return 0;
}

/* The rank cfg asks of an m x n matrix when it does not depend on the
 * values (rank or rank_ratio); 0 for "energy". */
static size_t rank_asked(const struct lowrank_cfg *cfg, size_t m, size_t n)
{
    size_t mn = m < n ? m : n;
    if (cfg->rank)
        return (size_t)cfg->rank < mn ? (size_t)cfg->rank : mn;
    if (cfg->ratio > 0)
        return slim_lowrank_rank_for_ratio(m, n, cfg->ratio);
    return 0;
}

/* t keeps its place when rank-r factors would not be smaller; its report
 * row says why. */
static int skip(struct slim_wt *t, size_t r)
{
    json_decref(t->report_extra);
    t->report_extra = json_pack("{s:s, s:I}", "lowrank",
                                "skipped: rank-r factors would not be smaller than the matrix",
                                "rank_needed", (json_int_t)r);
    return 0;
}

/* Turns t (index i) into W_u [m, r] and inserts W_v [r, n] after it; u
 * and v are stolen (NULL while planning).  Returns 1 (one insertion). */
static int become_factors(struct slim_work *w, size_t i, size_t r, float *u, float *v,
                          struct slim_error *err)
{
    struct slim_wt *t = &w->wts[i];
    size_t m = (size_t)t->rows, n = (size_t)t->cols;
    char *uname = slim_malloc(strlen(t->name) + 3), vname[512];
    enum slim_dtype dt = t->dtype;
    int rc;
    if (!uname) {
        slim_aligned_free(u);
        slim_aligned_free(v);
        return slim_error_set(err, SLIM_ENOMEM, "tensor '%s': out of memory", t->name);
    }
    sprintf(uname, "%s_u", t->name);
    snprintf(vname, sizeof vname, "%s_v", t->name);
    slim_free(t->name);
    t->name = uname;
    slim_aligned_free(t->val);
    t->val = u;
    t->ndim = 2;
    memset(t->shape, 0, sizeof t->shape);
    t->shape[0] = t->rows = (int64_t)m;
    t->shape[1] = t->cols = (int64_t)r;
    t->scheme = SLIM_SCHEME_DENSE;
    t->dense_dtype = dt;
    t->pruned = 0;
    if ((rc = slim_work_insert(w, i + 1, vname, w->wts[i].origin, (int64_t)r, (int64_t)n, v,
                               err)))
        return rc;
    w->wts[i + 1].dtype = dt;
    w->wts[i + 1].dense_dtype = dt;
    return 1;
}

static int lowrank_plan(const void *cfgp, struct slim_work *w, size_t i, struct slim_error *err)
{
    const struct lowrank_cfg *cfg = cfgp;
    struct slim_wt *t = &w->wts[i];
    size_t m = (size_t)t->rows, n = (size_t)t->cols, r = rank_asked(cfg, m, n);
    if (cfg->energy > 0)
        return slim_work_unplannable(w);
    if (r > slim_lowrank_max_useful_rank(m, n) || r == 0)
        return skip(t, r);
    return become_factors(w, i, r, NULL, NULL, err);
}

/* The SVD kernels' poll: their share of the work becomes the job's
 * progress within this tensor's span, and a cancel stops them. */
static int kernel_poll(void *ud, double frac)
{
    return slim_work_check(ud, frac, NULL) != 0;
}

/* Factors t (index i in w) in place; returns 1 when it inserted W_v. */
static int factor_one(const void *cfgp, struct slim_work *w, size_t i, struct slim_error *err)
{
    const struct lowrank_cfg *cfg = cfgp;
    struct slim_wt *t = &w->wts[i];
    size_t m = (size_t)t->rows, n = (size_t)t->cols, mn = m < n ? m : n;
    size_t r = rank_asked(cfg, m, n), useful = slim_lowrank_max_useful_rank(m, n);
    const float *a = t->val ? t->val : w->orig;
    struct slim_svd svd;
    struct slim_poll poll = {kernel_poll, w};
    struct slim_svd_opts opts = {.poll = &poll};
    float *u = NULL, *v = NULL;
    int randomized, rc;
    double rel;

    memset(&svd, 0, sizeof svd);
    if (cfg->energy > 0) {
        rc = slim_svd_for_energy(a, m, n, cfg->energy, cfg->algorithm != ALG_EXACT,
                                 w->threads, &poll, &svd, &r, err);
        randomized = svd.k < mn;
    } else {
        randomized = cfg->algorithm == ALG_RANDOMIZED ||
                     (cfg->algorithm == ALG_AUTO && r < mn / 4);
        if (r > useful) {
            rc = 0; /* decided below without an SVD */
        } else if (randomized) {
            rc = slim_svd_randomized(a, m, n, r, &opts, w->threads, &svd, err);
        } else {
            rc = slim_svd_exact(a, m, n, w->threads, &poll, &svd, err);
        }
    }
    if (rc)
        return rc;
    if (r > useful || r == 0) {
        slim_svd_release(&svd);
        return skip(t, r);
    }
    rel = slim_lowrank_rel_error(&svd, r);
    u = slim_aligned_alloc(m * r * sizeof(float));
    v = slim_aligned_alloc(r * n * sizeof(float));
    if (!u || !v) {
        slim_svd_release(&svd);
        slim_aligned_free(u);
        slim_aligned_free(v);
        return slim_error_set(err, SLIM_ENOMEM, "tensor '%s': out of memory", t->name);
    }
    slim_lowrank_factors(&svd, r, u, v);
    slim_svd_release(&svd);
    json_decref(t->report_extra);
    t->report_extra = json_pack("{s:I, s:s, s:f}", "rank", (json_int_t)r, "algorithm",
                                randomized ? "randomized" : "exact", "svd_rel_error", rel);
    return become_factors(w, i, r, u, v, err);
}

/* An exact SVD (sgesdd) copies W and holds U, Vt and LAPACK's work
 * arrays; the randomized one a basis about 2.25 r wide on both sides,
 * with double-precision blocks.  Rank by energy may need the exact one. */
static size_t lowrank_scratch(const void *cfgp, int64_t rows, int64_t cols)
{
    const struct lowrank_cfg *cfg = cfgp;
    size_t m = (size_t)rows, n = (size_t)cols, mn = m < n ? m : n, mx = m > n ? m : n;
    size_t r = rank_asked(cfg, m, n);
    int randomized = cfg->energy <= 0 && (cfg->algorithm == ALG_RANDOMIZED ||
                                          (cfg->algorithm == ALG_AUTO && r < mn / 4));
    if (randomized)
        return 4 * (m + n) * 3 * r + 12 * mx * r + 4 * 9 * r * r;
    return 4 * (m * n + 2 * (m + n) * mn + 4 * mn * mn + 8 * mx);
}

const struct slim_pass_ops slim_pass_lowrank = {
    .op = "lowrank",
    .stage = 2,
    .keys = lowrank_keys,
    .cfg_size = sizeof(struct lowrank_cfg),
    .parse = lowrank_parse,
    .originals_only = 1, /* factors are not factored again */
    .plan = lowrank_plan,
    .tensor = factor_one,
    .scratch_bytes = lowrank_scratch,
};
