/*
 * pass_cluster.c - the cluster pass: {"op": "cluster", "clusters": k}.
 * Weight sharing: each selected tensor's weights are replaced by the
 * nearest of k shared values, found by 1-D k-means (cluster.c), and
 * stored as a codebook plus one index per weight:
 *   W_codebook  F32 [k]
 *   W           U8 [rows, cols], or, when k <= 16, two indices per byte
 *               [rows, ceil(cols / 2)], element 2j in the low nibble.
 * After a prune the zeros keep a centroid of exactly 0 of their own, so
 * sparsity survives clustering.
 */
#include <string.h>
#include "passes/kernels/kernels.h"
#include "passes/pass.h"

struct cluster_cfg {
    long k;
};

static const char *const cluster_keys[] = {"clusters", NULL};

static int cluster_parse(json_t *spec, const char *where, void *cfgp, struct slim_error *err)
{
    struct cluster_cfg *cfg = cfgp;
    int rc = slim_spec_int(spec, where, "clusters", 2, SLIM_KMEANS_MAX_K, &cfg->k, err);
    if (rc)
        return rc;
    if (!cfg->k)
        return slim_error_set(err, SLIM_ESPEC, "%s.clusters: required, from 2 to %d", where,
                              SLIM_KMEANS_MAX_K);
    return 0;
}

/* Packs per-element codes of `bits` bits (8 or 4) row by row, each row
 * padded to whole bytes, low bits first. */
static void pack_rows(const uint8_t *codes, size_t rows, size_t cols, int bits, uint8_t *out)
{
    size_t rb = (cols * (size_t)bits + 7) / 8;
    if (bits == 8) {
        memcpy(out, codes, rows * cols);
        return;
    }
    memset(out, 0, rows * rb);
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++)
            out[r * rb + c / 2] |= (uint8_t)((codes[r * cols + c] & 15) << (4 * (c & 1)));
}

/* Describes t's stored form (no data yet): the packed indices and the
 * codebook; shared by plan and cluster_one. */
static int describe_outs(const struct cluster_cfg *cfg, struct slim_wt *t,
                         struct slim_error *err)
{
    size_t rows = (size_t)t->rows, cols = (size_t)t->cols;
    int bits = cfg->k <= 16 ? 4 : 8, rc;
    size_t rb = (cols * (size_t)bits + 7) / 8;
    int64_t bshape[1] = {cfg->k}, ishape[2] = {(int64_t)rows, (int64_t)rb};

    slim_wt_clear_outs(t);
    if ((rc = slim_wt_add_out(t, "", SLIM_DT_U8, 2, ishape, NULL, rows * rb, err)) ||
        (rc = slim_wt_add_out(t, "_codebook", SLIM_DT_F32, 1, bshape, NULL,
                              (size_t)cfg->k * sizeof(float), err)))
        return rc;
    t->scheme = SLIM_SCHEME_CLUSTER;
    t->code_bits = bits;
    t->scheme_info = json_pack("{s:I, s:i, s:s}", "clusters", (json_int_t)cfg->k, "index_bits",
                               bits, "codebook", t->outs[1].name);
    return 0;
}

static int cluster_plan(const void *cfgp, struct slim_work *w, size_t i, struct slim_error *err)
{
    return describe_outs(cfgp, &w->wts[i], err);
}

/* k-means' poll: its share of the work moves the job's progress within
 * this tensor's span, and a cancel stops it. */
static int kernel_poll(void *ud, double frac)
{
    return slim_work_check(ud, frac, NULL) != 0;
}

static int cluster_one(const void *cfgp, struct slim_work *w, size_t i, struct slim_error *err)
{
    const struct cluster_cfg *cfg = cfgp;
    struct slim_wt *t = &w->wts[i];
    size_t rows = (size_t)t->rows, cols = (size_t)t->cols, n = rows * cols;
    struct slim_poll poll = {kernel_poll, w};
    struct slim_kmeans_opts opts = {.k = (int)cfg->k, .keep_zero = t->pruned, .poll = &poll};
    struct slim_kmeans_info info;
    uint8_t *idx = NULL;
    float *book;
    int rc;

    if ((rc = slim_wt_load(w, t, err)) || (rc = describe_outs(cfg, t, err)) ||
        (rc = slim_wt_alloc_outs(t, err)))
        return rc;
    book = t->outs[1].data;
    if (!(idx = slim_aligned_alloc(n + 1)))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    if ((rc = slim_kmeans_1d(t->val, n, &opts, w->threads, book, idx, &info, err)))
        goto out;
    for (size_t k = 0; k < n; k++)
        t->val[k] = book[idx[k]];
    pack_rows(idx, rows, cols, t->code_bits, t->outs[0].data);
    json_decref(t->report_extra);
    t->report_extra = json_pack("{s:I, s:i, s:f, s:i}", "clusters", (json_int_t)cfg->k,
                                "clusters_used", info.k_used, "inertia", info.inertia,
                                "kmeans_iterations", info.iterations);
out:
    slim_aligned_free(idx);
    return rc;
}

/* One index byte per weight, and k-means' sort keys and their radix
 * scratch (4 bytes each per weight). */
static size_t cluster_scratch(const void *cfg, int64_t rows, int64_t cols)
{
    (void)cfg;
    return (size_t)(rows * cols) * 9;
}

const struct slim_pass_ops slim_pass_cluster = {
    .op = "cluster",
    .stage = 3,
    .keys = cluster_keys,
    .cfg_size = sizeof(struct cluster_cfg),
    .parse = cluster_parse,
    .plan = cluster_plan,
    .tensor = cluster_one,
    .scratch_bytes = cluster_scratch,
};
