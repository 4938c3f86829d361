/*
 * quantize.c - the quantize pass: int8 (per tensor or per output
 * channel), int4 (groups along the input dimension), fp16, bf16, ternary
 * and binary, with optional MSE calibration of the clipping range.
 *
 * int8 symmetric maps [-max|w|, max|w|] to [-127, 127] with
 * scale = max|w| / 127, so zero is exact and the code is symmetric
 * (-128 is never used, as in most int8 runtimes).  Asymmetric maps
 * [min(w, 0), max(w, 0)] to [-128, 127]: stretching the range to include
 * zero costs a little resolution on one-signed rows but keeps 0 exactly
 * representable (zero point = an integer code), which pruned weights and
 * padding rely on.  int4 does the same on [0, 15] per group (symmetric:
 * zero point 8).  An all-zero block gets scale 1 so no reader ever
 * divides by zero.  Ternary (Li et al. 2016, TWN) and binary (Rastegari
 * et al. 2016, XNOR-Net) are per output row.  The kernels are in
 * qpack.c; this file reads the spec and lays out the stored tensors.
 *
 * A channel is an output row: shape[0], with every other dimension
 * flattened into the row, so conv kernels [out, in, kh, kw] quantize per
 * output filter.
 *
 * After quantizing, `val` holds exactly what a reader decodes,
 * (q - zp) * scale in fp32, so the report (and, with "output":
 * {"dequantize": true}, the artifact) work from the stored values.
 */
#include <math.h>
#include <string.h>
#include "passes/kernels/kernels.h"
#include "passes/pass.h"
#include "passes/report.h"

enum qdtype { Q_INT8, Q_FP16, Q_BF16, Q_INT4, Q_TERNARY, Q_BINARY };
static const char *const qdtype_names[] = {"int8", "fp16", "bf16", "int4", "ternary", "binary",
                                           NULL};
enum qgran { G_TENSOR, G_CHANNEL, G_GROUP };
static const char *const qgran_names[] = {"tensor", "channel", "group", NULL};
enum qcal { CAL_MINMAX, CAL_MSE };
static const char *const qcal_names[] = {"minmax", "mse", NULL};

/* Shrink factors tried by "calibration": "mse" (1.0 down to 0.5). */
#define MSE_STEPS 40

struct qcfg {
    int dtype;       /* enum qdtype */
    int granularity; /* enum qgran */
    int symmetric;
    long group_size;
    int calibration; /* enum qcal */
};

static const char *const qkeys[] = {"dtype", "granularity", "symmetric", "group_size",
                                    "calibration", NULL};

static int qparse(json_t *spec, const char *where, void *cfgp, struct slim_error *err)
{
    struct qcfg *cfg = cfgp;
    int rc;
    cfg->dtype = -1;
    cfg->granularity = -1;
    cfg->symmetric = 1;
    cfg->group_size = 0;
    cfg->calibration = CAL_MINMAX;
    if ((rc = slim_spec_enum(spec, where, "dtype", qdtype_names, &cfg->dtype, err)) ||
        (rc = slim_spec_enum(spec, where, "granularity", qgran_names, &cfg->granularity, err)) ||
        (rc = slim_spec_bool(spec, where, "symmetric", &cfg->symmetric, err)) ||
        (rc = slim_spec_int(spec, where, "group_size", 2, 1 << 16, &cfg->group_size, err)) ||
        (rc = slim_spec_enum(spec, where, "calibration", qcal_names, &cfg->calibration, err)))
        return rc;
    if (cfg->dtype < 0)
        return slim_error_set(err, SLIM_ESPEC,
                              "%s.dtype: required (one of int8, int4, fp16, bf16, ternary, binary)",
                              where);
    switch (cfg->dtype) {
    case Q_INT8:
        if (cfg->granularity < 0)
            cfg->granularity = G_CHANNEL;
        if (cfg->granularity == G_GROUP)
            return slim_error_set(err, SLIM_ESPEC,
                                  "%s.granularity: int8 takes \"tensor\" or \"channel\"", where);
        break;
    case Q_INT4:
        if (cfg->granularity < 0)
            cfg->granularity = G_GROUP;
        if (cfg->granularity == G_TENSOR)
            return slim_error_set(err, SLIM_ESPEC,
                                  "%s.granularity: int4 takes \"group\" or \"channel\"", where);
        if (cfg->granularity == G_GROUP && !cfg->group_size)
            cfg->group_size = 128;
        break;
    default:
        if (cfg->granularity >= 0 && cfg->granularity != G_CHANNEL)
            return slim_error_set(err, SLIM_ESPEC,
                                  "%s.granularity: %s is per output channel only", where,
                                  qdtype_names[cfg->dtype]);
        cfg->granularity = G_CHANNEL;
        if (json_object_get(spec, "symmetric") && cfg->dtype != Q_FP16 && cfg->dtype != Q_BF16)
            return slim_error_set(err, SLIM_ESPEC, "%s.symmetric: not used by %s", where,
                                  qdtype_names[cfg->dtype]);
    }
    if (cfg->group_size && cfg->granularity != G_GROUP)
        return slim_error_set(err, SLIM_ESPEC,
                              "%s.group_size: only with \"granularity\": \"group\"", where);
    if (cfg->calibration == CAL_MSE && cfg->dtype != Q_INT8 && cfg->dtype != Q_INT4)
        return slim_error_set(err, SLIM_ESPEC, "%s.calibration: \"mse\" is for int8 and int4",
                              where);
    return 0;
}

static const int scheme_of[] = {
    [Q_INT8] = SLIM_SCHEME_INT8, [Q_FP16] = SLIM_SCHEME_F16, [Q_BF16] = SLIM_SCHEME_BF16,
    [Q_INT4] = SLIM_SCHEME_INT4, [Q_TERNARY] = SLIM_SCHEME_TERNARY,
    [Q_BINARY] = SLIM_SCHEME_BINARY,
};

static size_t group_of(const struct qcfg *cfg, size_t cols)
{
    return cfg->granularity == G_GROUP ? (size_t)cfg->group_size : (cols ? cols : 1);
}

/* Describes how t is stored under cfg: the main tensor of codes and its
 * scale (and zero point) siblings, with no data yet, plus the scheme,
 * code width and "slimd.tensors" fields.  The one place that knows the
 * layout: plan and quantize_one both call it. */
static int describe_outs(const struct qcfg *cfg, struct slim_wt *t, struct slim_error *err)
{
    size_t rows = (size_t)t->rows, cols = (size_t)t->cols, n = rows * cols;
    size_t group = group_of(cfg, cols), ng = (cols + group - 1) / group;
    int64_t shape[2] = {t->rows, 0}, sshape[2] = {t->rows, 1};
    int rc;

    slim_wt_clear_outs(t);
    switch (cfg->dtype) {
    case Q_INT8: {
        size_t srows = cfg->granularity == G_TENSOR ? 1 : rows;
        int sdims = cfg->granularity == G_TENSOR ? 1 : 2;
        sshape[0] = (int64_t)srows;
        if ((rc = slim_wt_add_out(t, "", SLIM_DT_I8, t->ndim, t->shape, NULL, n, err)) ||
            (rc = slim_wt_add_out(t, "_scale", SLIM_DT_F32, sdims, sshape, NULL,
                                  srows * sizeof(float), err)) ||
            (!cfg->symmetric && (rc = slim_wt_add_out(t, "_zero_point", SLIM_DT_I8, sdims,
                                                      sshape, NULL, srows, err))))
            return rc;
        t->code_bits = 8;
        break;
    }
    case Q_INT4:
        shape[1] = (int64_t)((cols + 1) / 2);
        sshape[1] = (int64_t)ng;
        if ((rc = slim_wt_add_out(t, "", SLIM_DT_U8, 2, shape, NULL, rows * (size_t)shape[1],
                                  err)) ||
            (rc = slim_wt_add_out(t, "_scale", SLIM_DT_F32, 2, sshape, NULL,
                                  rows * ng * sizeof(float), err)) ||
            (rc = slim_wt_add_out(t, "_zero_point", SLIM_DT_U8, 2, sshape, NULL, rows * ng,
                                  err)))
            return rc;
        t->code_bits = 4;
        break;
    case Q_TERNARY:
    case Q_BINARY:
        shape[1] = (int64_t)(cfg->dtype == Q_BINARY ? (cols + 7) / 8 : (cols + 3) / 4);
        if ((rc = slim_wt_add_out(t, "", SLIM_DT_U8, 2, shape, NULL, rows * (size_t)shape[1],
                                  err)) ||
            (rc = slim_wt_add_out(t, "_scale", SLIM_DT_F32, 2, sshape, NULL,
                                  rows * sizeof(float), err)))
            return rc;
        t->code_bits = cfg->dtype == Q_BINARY ? 1 : 2;
        break;
    default:
        if ((rc = slim_wt_add_out(t, "", cfg->dtype == Q_BF16 ? SLIM_DT_BF16 : SLIM_DT_F16,
                                  t->ndim, t->shape, NULL, n * 2, err)))
            return rc;
        t->code_bits = 16;
    }
    t->scheme = scheme_of[cfg->dtype];
    if (cfg->dtype == Q_INT8 || cfg->dtype == Q_INT4) {
        t->scheme_info = json_pack("{s:s, s:b, s:s, s:s*}", "granularity",
                                   qgran_names[cfg->granularity], "symmetric", cfg->symmetric,
                                   "scale", t->outs[1].name, "zero_point",
                                   t->n_outs > 2 ? t->outs[2].name : NULL);
        if (cfg->dtype == Q_INT4)
            json_object_set_new(t->scheme_info, "group_size", json_integer((json_int_t)group));
        if (cfg->calibration == CAL_MSE)
            json_object_set_new(t->scheme_info, "calibration", json_string("mse"));
    } else if (cfg->dtype == Q_TERNARY || cfg->dtype == Q_BINARY) {
        t->scheme_info = json_pack("{s:s}", "scale", t->outs[1].name);
    }
    return 0;
}

/* Fills the outs that describe_outs laid out (data allocated) from the
 * values `in` and writes the decoded values into t->val (in may be
 * t->val; t->val may be NULL when stats measure the result instead). */
static int encode(const struct qcfg *cfg, struct slim_work *w, struct slim_wt *t,
                  const float *in, struct slim_qstats *stats, struct slim_error *err)
{
    size_t rows = (size_t)t->rows, cols = (size_t)t->cols, n = rows * cols;
    int steps = cfg->calibration == CAL_MSE ? MSE_STEPS : 0;
    void *zp = t->n_outs > 2 ? t->outs[2].data : NULL;
    uint8_t *zero = NULL;
    int rc;

    switch (cfg->dtype) {
    case Q_INT8: {
        int per_tensor = cfg->granularity == G_TENSOR;
        int8_t scratch_zp[1];
        /* the kernel always writes zero points; symmetric ones (all 0)
         * are not stored */
        int8_t *zpp = zp ? zp : per_tensor ? scratch_zp : NULL;
        if (!zpp && !(zero = slim_aligned_alloc(rows + 1)))
            return slim_error_set(err, SLIM_ENOMEM, "tensor '%s': out of memory", t->name);
        if (!zpp)
            zpp = (int8_t *)zero;
        rc = slim_q8_rows(in, per_tensor ? 1 : rows, per_tensor ? n : cols, cfg->symmetric,
                          steps, t->outs[0].data, t->outs[1].data, zpp, t->val, stats, w->threads,
                          err);
        break;
    }
    case Q_INT4:
        rc = slim_q4_groups(in, rows, cols, group_of(cfg, cols), cfg->symmetric, steps,
                            t->outs[0].data, t->outs[1].data, zp, t->val, stats, w->threads,
                            err);
        break;
    case Q_TERNARY:
        rc = slim_ternary_rows(in, rows, cols, t->outs[0].data, t->outs[1].data, t->val, stats,
                               w->threads, err);
        break;
    case Q_BINARY:
        if (t->pruned) {
            /* one bit cannot say 0: remember the pruned zeros so the
             * decoded values keep them (the sparse output's mask stores
             * them) */
            if (!(zero = slim_aligned_alloc(n ? n : 1)))
                return slim_error_set(err, SLIM_ENOMEM, "tensor '%s': out of memory", t->name);
            for (size_t i = 0; i < n; i++)
                zero[i] = in[i] == 0.0f;
        }
        rc = slim_binary_rows(in, rows, cols, t->outs[0].data, t->outs[1].data, t->val, stats,
                              w->threads, err);
        if (!rc && zero)
            for (size_t i = 0; i < n; i++)
                t->val[i] = zero[i] ? 0.0f : t->val[i];
        break;
    default: {
        int bf16 = cfg->dtype == Q_BF16;
        uint16_t *h = t->outs[0].data;
        rc = 0;
        for (size_t i = 0; i < n; i++) {
            if (bf16) {
                h[i] = slim_f32_to_bf16(in[i]);
                t->val[i] = slim_bf16_to_f32(h[i]);
            } else {
                h[i] = slim_f32_to_f16(in[i]);
                t->val[i] = slim_f16_to_f32(h[i]);
            }
        }
        if (!bf16 && slim_has_nonfinite(t->val, n))
            rc = slim_error_set(err, SLIM_ENUMERIC,
                                "tensor '%s': values beyond fp16's range (|w| > 65504); use bf16",
                                t->name);
    }
    }
    slim_aligned_free(zero);
    return rc;
}

/* For "calibration": "mse": the error this pass would have with the plain
 * min/max range, from a scratch run of the same kernel (they run at
 * GB/s, so this costs little next to the search itself).  Returns 0 and
 * *rel, or an error. */
static int minmax_error(const struct qcfg *cfg, struct slim_work *w, const struct slim_wt *t,
                        const float *in, double *rel, struct slim_error *err)
{
    size_t rows = (size_t)t->rows, cols = (size_t)t->cols, n = rows * cols;
    size_t group = group_of(cfg, cols);
    size_t ng = cfg->dtype == Q_INT4 ? (cols + group - 1) / group : 1;
    float *deq = slim_aligned_alloc(n * sizeof(float) + 1);
    float *scale = slim_aligned_alloc(rows * ng * sizeof(float) + 1);
    uint8_t *q = slim_aligned_alloc(n + 1), *zp = slim_aligned_alloc(rows * ng + 1);
    double snr;
    int rc;
    if (!deq || !scale || !q || !zp) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
    } else if (cfg->dtype == Q_INT8) {
        int per_tensor = cfg->granularity == G_TENSOR;
        rc = slim_q8_rows(in, per_tensor ? 1 : rows, per_tensor ? n : cols, cfg->symmetric,
                          0, (int8_t *)q, scale, (int8_t *)zp, deq, NULL, w->threads, err);
    } else {
        rc = slim_q4_groups(in, rows, cols, group, cfg->symmetric, 0, q, scale, zp, deq, NULL,
                            w->threads, err);
    }
    if (!rc)
        slim_error_stats(in, deq, n, rel, &snr);
    slim_aligned_free(deq);
    slim_aligned_free(scale);
    slim_aligned_free(q);
    slim_aligned_free(zp);
    return rc;
}

static int quantize_plan(const void *cfgp, struct slim_work *w, size_t i,
                         struct slim_error *err)
{
    return describe_outs(cfgp, &w->wts[i], err);
}

/* Reads the current values (t->val, or the original while no pass has
 * changed them: then nothing is copied) and writes the decoded ones into
 * t->val.  For a tensor of the model itself (not a low-rank factor) the
 * kernel also measures the result against the original (t->stats), and
 * when nothing after this pass needs the decoded values (the dense,
 * sparse or binary-after-prune outputs, calibration's comparison), they
 * are not written at all: for a plain int8 job that is the one pass
 * over the weights, and after a prune it saves the report's own pass. */
static int quantize_one(const void *cfgp, struct slim_work *w, size_t i,
                        struct slim_error *err)
{
    const struct qcfg *cfg = cfgp;
    struct slim_wt *t = &w->wts[i];
    size_t n = (size_t)(t->rows * t->cols);
    int calibrate = cfg->calibration == CAL_MSE, rc;
    int half = cfg->dtype == Q_FP16 || cfg->dtype == Q_BF16;
    double rel_minmax = 0.0, rel_mse, snr;
    const float *in = t->val ? t->val : w->orig;
    int fused = w->orig && !strcmp(t->name, t->origin) && !half &&
                !(cfg->dtype == Q_BINARY && t->pruned);
    int need_val = !fused || calibrate || w->dequantize_output ||
                   (w->sparse_output && t->pruned);
    float *before = NULL;

    /* the quantizer kernels reject NaN and Inf row by row themselves */
    if (half && slim_has_nonfinite(in, n))
        return slim_error_set(err, SLIM_ENUMERIC,
                              "tensor '%s': contains NaN or Inf; cannot quantize", t->name);
    if (calibrate && (rc = minmax_error(cfg, w, t, in, &rel_minmax, err)))
        return rc;
    if (calibrate && in == t->val) {
        /* encoding writes over t->val: keep what it started from */
        if (!(before = slim_aligned_alloc(n * sizeof(float) + 1)))
            return slim_error_set(err, SLIM_ENOMEM, "out of memory");
        memcpy(before, in, n * sizeof(float));
        in = before;
    }
    if (need_val && !t->val && !(t->val = slim_aligned_alloc(n * sizeof(float) + 1))) {
        rc = slim_error_set(err, SLIM_ENOMEM, "tensor '%s': out of memory", t->name);
        goto out;
    }
    memset(&t->stats, 0, sizeof t->stats);
    t->stats.ref = in == w->orig ? NULL : w->orig;
    if ((rc = describe_outs(cfg, t, err)) || (rc = slim_wt_alloc_outs(t, err)) ||
        (rc = encode(cfg, w, t, in, fused ? &t->stats : NULL, err)))
        goto out;
    t->measured = fused;
    if (calibrate) {
        /* the report shows what the search bought: this pass's error with
         * the min/max range and with the chosen one */
        slim_error_stats(in, t->val, n, &rel_mse, &snr);
        if (!t->report_extra)
            t->report_extra = json_object();
        json_object_update_new(t->report_extra,
                               json_pack("{s:s, s:f, s:f}", "calibration", "mse",
                                         "calibration_rel_error_minmax", rel_minmax,
                                         "calibration_rel_error_mse", rel_mse));
    }
out:
    slim_aligned_free(before);
    return rc;
}

/* MSE calibration keeps the values it started from and a min/max run
 * of the kernel (values, codes, scales); otherwise a decoded row per
 * thread at most. */
static size_t quantize_scratch(const void *cfgp, int64_t rows, int64_t cols)
{
    const struct qcfg *cfg = cfgp;
    size_t n = (size_t)(rows * cols);
    if (cfg->calibration == CAL_MSE)
        return 9 * n + 8 * (size_t)rows;
    return (size_t)cols * 4 * SLIM_KERNEL_MAX_THREADS + (size_t)rows;
}

const struct slim_pass_ops slim_pass_quantize = {
    .op = "quantize",
    .stage = 3,
    .keys = qkeys,
    .cfg_size = sizeof(struct qcfg),
    .parse = qparse,
    .plan = quantize_plan,
    .tensor = quantize_one,
    .scratch_bytes = quantize_scratch,
};
