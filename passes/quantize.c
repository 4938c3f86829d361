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
#include "passes/kernels.h"
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

/* Adds the main stored tensor (the codes) and the scale (and zero point)
 * siblings; every buffer is stolen. */
static int add_outs(struct slim_wt *t, enum slim_dtype qdt, int64_t qcols, void *q,
                    float *scale, void *zp, enum slim_dtype zdt, int sdims,
                    const int64_t *sshape, int use_orig_shape, struct slim_error *err)
{
    int64_t qshape[2] = {t->rows, qcols};
    size_t nscale = (size_t)(sdims == 1 ? sshape[0] : sshape[0] * sshape[1]);
    size_t qbytes = use_orig_shape ? (size_t)(t->rows * t->cols) * slim_dtype_size(qdt)
                                   : (size_t)(t->rows * qcols);
    int rc = slim_wt_add_out(t, "", qdt, use_orig_shape ? t->ndim : 2,
                             use_orig_shape ? t->shape : qshape, q, qbytes, err);
    if (rc) {
        slim_aligned_free(scale);
        slim_aligned_free(zp);
        return rc;
    }
    rc = slim_wt_add_out(t, "_scale", SLIM_DT_F32, sdims, sshape, scale, nscale * sizeof(float),
                         err);
    if (rc) {
        slim_aligned_free(zp);
        return rc;
    }
    if (zp)
        return slim_wt_add_out(t, "_zero_point", zdt, sdims, sshape, zp, nscale, err);
    return 0;
}

static int quantize_int8(const struct qcfg *cfg, struct slim_work *w, struct slim_wt *t,
                         struct slim_error *err)
{
    size_t n = (size_t)(t->rows * t->cols);
    int per_tensor = cfg->granularity == G_TENSOR;
    size_t rows = per_tensor ? 1 : (size_t)t->rows, cols = per_tensor ? n : (size_t)t->cols;
    int8_t *q = slim_aligned_alloc(n), *zp = slim_aligned_alloc(rows);
    float *scale = slim_aligned_alloc(rows * sizeof(float));
    int64_t sshape[2] = {(int64_t)rows, 1};
    int rc;

    if (!q || !zp || !scale) {
        rc = slim_error_set(err, SLIM_ENOMEM, "tensor '%s': out of memory", t->name);
        goto fail;
    }
    rc = slim_q8_rows(t->val, rows, cols, cfg->symmetric,
                      cfg->calibration == CAL_MSE ? MSE_STEPS : 0, q, scale, zp, t->val,
                      w->threads, err);
    if (rc)
        goto fail;
    if (cfg->symmetric) {
        slim_aligned_free(zp);
        zp = NULL;
    }
    t->code_bits = 8;
    return add_outs(t, SLIM_DT_I8, 0, q, scale, zp, SLIM_DT_I8, per_tensor ? 1 : 2, sshape, 1,
                    err);
fail:
    slim_aligned_free(q);
    slim_aligned_free(zp);
    slim_aligned_free(scale);
    return rc;
}

static int quantize_int4(const struct qcfg *cfg, struct slim_work *w, struct slim_wt *t,
                         struct slim_error *err)
{
    size_t rows = (size_t)t->rows, cols = (size_t)t->cols;
    size_t group = cfg->granularity == G_GROUP ? (size_t)cfg->group_size : (cols ? cols : 1);
    size_t ng = (cols + group - 1) / group, pc = (cols + 1) / 2;
    uint8_t *q = slim_aligned_alloc(rows * pc), *zp = slim_aligned_alloc(rows * ng);
    float *scale = slim_aligned_alloc(rows * ng * sizeof(float));
    int64_t sshape[2] = {(int64_t)rows, (int64_t)ng};
    int rc;

    if (!q || !zp || !scale) {
        rc = slim_error_set(err, SLIM_ENOMEM, "tensor '%s': out of memory", t->name);
        goto fail;
    }
    rc = slim_q4_groups(t->val, rows, cols, group, cfg->symmetric,
                        cfg->calibration == CAL_MSE ? MSE_STEPS : 0, q, scale, zp, t->val,
                        w->threads, err);
    if (rc)
        goto fail;
    t->code_bits = 4;
    return add_outs(t, SLIM_DT_U8, (int64_t)pc, q, scale, zp, SLIM_DT_U8, 2, sshape, 0, err);
fail:
    slim_aligned_free(q);
    slim_aligned_free(zp);
    slim_aligned_free(scale);
    return rc;
}

/* Ternary or binary, one scale per row. */
static int quantize_low_bit(int binary, struct slim_work *w, struct slim_wt *t,
                            struct slim_error *err)
{
    size_t rows = (size_t)t->rows, cols = (size_t)t->cols, n = rows * cols;
    size_t pc = binary ? (cols + 7) / 8 : (cols + 3) / 4;
    uint8_t *q = slim_aligned_alloc(rows * pc), *zero = NULL;
    float *scale = slim_aligned_alloc(rows * sizeof(float));
    int64_t sshape[2] = {(int64_t)rows, 1};
    int rc;

    if (binary && t->pruned) {
        /* one bit cannot say 0: remember the pruned zeros so the decoded
         * values keep them (the sparse output's mask stores them) */
        zero = slim_aligned_alloc(n ? n : 1);
        if (zero)
            for (size_t i = 0; i < n; i++)
                zero[i] = t->val[i] == 0.0f;
    }
    if (!q || !scale || (binary && t->pruned && !zero)) {
        rc = slim_error_set(err, SLIM_ENOMEM, "tensor '%s': out of memory", t->name);
        goto fail;
    }
    rc = binary ? slim_binary_rows(t->val, rows, cols, q, scale, t->val, w->threads, err)
                : slim_ternary_rows(t->val, rows, cols, q, scale, t->val, w->threads, err);
    if (rc)
        goto fail;
    if (zero)
        for (size_t i = 0; i < n; i++)
            t->val[i] = zero[i] ? 0.0f : t->val[i];
    slim_aligned_free(zero);
    t->code_bits = binary ? 1 : 2;
    return add_outs(t, SLIM_DT_U8, (int64_t)pc, q, scale, NULL, SLIM_DT_U8, 2, sshape, 0, err);
fail:
    slim_aligned_free(q);
    slim_aligned_free(scale);
    slim_aligned_free(zero);
    return rc;
}

static int quantize_half(int bf16, struct slim_wt *t, struct slim_error *err)
{
    size_t n = (size_t)(t->rows * t->cols);
    uint16_t *h = slim_aligned_alloc(n * 2);
    if (!h)
        return slim_error_set(err, SLIM_ENOMEM, "tensor '%s': out of memory", t->name);
    for (size_t i = 0; i < n; i++) {
        if (bf16) {
            h[i] = slim_f32_to_bf16(t->val[i]);
            t->val[i] = slim_bf16_to_f32(h[i]);
        } else {
            h[i] = slim_f32_to_f16(t->val[i]);
            t->val[i] = slim_f16_to_f32(h[i]);
        }
    }
    if (!bf16 && slim_has_nonfinite(t->val, n)) {
        slim_aligned_free(h);
        return slim_error_set(err, SLIM_ENUMERIC,
                              "tensor '%s': values beyond fp16's range (|w| > 65504); use bf16",
                              t->name);
    }
    t->code_bits = 16;
    return slim_wt_add_out(t, "", bf16 ? SLIM_DT_BF16 : SLIM_DT_F16, t->ndim, t->shape, h, n * 2,
                           err);
}

static const int scheme_of[] = {
    [Q_INT8] = SLIM_SCHEME_INT8, [Q_FP16] = SLIM_SCHEME_F16, [Q_BF16] = SLIM_SCHEME_BF16,
    [Q_INT4] = SLIM_SCHEME_INT4, [Q_TERNARY] = SLIM_SCHEME_TERNARY,
    [Q_BINARY] = SLIM_SCHEME_BINARY,
};

/* For "calibration": "mse": the error this pass would have with the plain
 * min/max range, from a scratch run of the same kernel (they run at
 * GB/s, so this costs little next to the search itself).  Returns 0 and
 * *rel, or an error. */
static int minmax_error(const struct qcfg *cfg, struct slim_work *w, const struct slim_wt *t,
                        double *rel, struct slim_error *err)
{
    size_t rows = (size_t)t->rows, cols = (size_t)t->cols, n = rows * cols;
    size_t group = cfg->granularity == G_GROUP ? (size_t)cfg->group_size : (cols ? cols : 1);
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
        rc = slim_q8_rows(t->val, per_tensor ? 1 : rows, per_tensor ? n : cols, cfg->symmetric,
                          0, (int8_t *)q, scale, (int8_t *)zp, deq, w->threads, err);
    } else {
        rc = slim_q4_groups(t->val, rows, cols, group, cfg->symmetric, 0, q, scale, zp, deq,
                            w->threads, err);
    }
    if (!rc)
        slim_error_stats(t->val, deq, n, rel, &snr);
    slim_aligned_free(deq);
    slim_aligned_free(scale);
    slim_aligned_free(q);
    slim_aligned_free(zp);
    return rc;
}

static int quantize_one(const void *cfgp, struct slim_work *w, size_t i,
                        struct slim_error *err)
{
    const struct qcfg *cfg = cfgp;
    struct slim_wt *t = &w->wts[i];
    int rc;
    if (slim_has_nonfinite(t->val, (size_t)(t->rows * t->cols)))
        return slim_error_set(err, SLIM_ENUMERIC,
                              "tensor '%s': contains NaN or Inf; cannot quantize", t->name);
    int calibrate = cfg->calibration == CAL_MSE;
    double rel_minmax = 0.0, rel_mse, snr;
    float *before = NULL;
    if (calibrate) {
        size_t n = (size_t)(t->rows * t->cols);
        before = slim_aligned_alloc(n * sizeof(float) + 1);
        if (!before)
            return slim_error_set(err, SLIM_ENOMEM, "out of memory");
        memcpy(before, t->val, n * sizeof(float));
        if ((rc = minmax_error(cfg, w, t, &rel_minmax, err))) {
            slim_aligned_free(before);
            return rc;
        }
    }
    slim_wt_clear_outs(t);
    switch (cfg->dtype) {
    case Q_INT8: rc = quantize_int8(cfg, w, t, err); break;
    case Q_INT4: rc = quantize_int4(cfg, w, t, err); break;
    case Q_TERNARY: rc = quantize_low_bit(0, w, t, err); break;
    case Q_BINARY: rc = quantize_low_bit(1, w, t, err); break;
    default: rc = quantize_half(cfg->dtype == Q_BF16, t, err);
    }
    if (calibrate && !rc) {
        /* the report shows what the search bought: this pass's error with
         * the min/max range and with the chosen one */
        slim_error_stats(before, t->val, (size_t)(t->rows * t->cols), &rel_mse, &snr);
        if (!t->report_extra)
            t->report_extra = json_object();
        json_object_update_new(t->report_extra,
                               json_pack("{s:s, s:f, s:f}", "calibration", "mse",
                                         "calibration_rel_error_minmax", rel_minmax,
                                         "calibration_rel_error_mse", rel_mse));
    }
    slim_aligned_free(before);
    if (rc)
        return rc;
    t->scheme = scheme_of[cfg->dtype];
    if (cfg->dtype == Q_INT8 || cfg->dtype == Q_INT4) {
        t->scheme_info = json_pack("{s:s, s:b, s:s, s:s*}", "granularity",
                                   qgran_names[cfg->granularity], "symmetric", cfg->symmetric,
                                   "scale", t->outs[1].name, "zero_point",
                                   t->n_outs > 2 ? t->outs[2].name : NULL);
        if (cfg->dtype == Q_INT4)
            json_object_set_new(t->scheme_info, "group_size",
                                json_integer(cfg->granularity == G_GROUP ? cfg->group_size
                                                                         : t->cols));
        if (cfg->calibration == CAL_MSE)
            json_object_set_new(t->scheme_info, "calibration", json_string("mse"));
    } else if (cfg->dtype == Q_TERNARY || cfg->dtype == Q_BINARY) {
        t->scheme_info = json_pack("{s:s}", "scale", t->outs[1].name);
    }
    return 0;
}

static int qapply(const void *cfg, const struct slim_select *sel, struct slim_work *w,
                  struct slim_error *err)
{
    return slim_work_each(w, sel, 0, quantize_one, cfg, err);
}

const struct slim_pass_ops slim_pass_quantize = {
    .op = "quantize",
    .stage = 3,
    .keys = qkeys,
    .cfg_size = sizeof(struct qcfg),
    .parse = qparse,
    .apply = qapply,
    .release = NULL,
};
