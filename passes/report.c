/*
 * report.c - what a job did to each tensor, in numbers.
 *
 * Errors are measured against the original tensor after the whole
 * pipeline, from the values a reader of the artifact decodes (the
 * working set keeps exactly those), so a prune followed by int8 reports
 * the combined error, and a low-rank pair is multiplied back out
 * (W_u @ W_v, with sgemm) before it is compared.  The sums are the
 * quantizers' own (slim_qstats_add): float over blocks of 4096 weights,
 * double across blocks, since a float accumulator over a whole tensor of
 * millions of weights loses the small differences that matter here.
 *
 * Sizes count tensor data bytes (before: the original tensor; after:
 * every stored tensor derived from it).  The artifact's file size,
 * header included, is in totals as file_bytes_after.
 *
 * rel_error = ||W - W_hat||_F / ||W||_F; snr_db = 10 log10(||W||^2 /
 * ||W - W_hat||^2), null when the two are identical (infinite SNR has no
 * JSON spelling).
 */
#include <cblas.h>
#include <math.h>
#include <string.h>
#include "passes/kernels/kernels.h"
#include "passes/report.h"

void slim_error_stats(const float *a, const float *b, size_t n, double *rel, double *snr_db)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)a[i] * (double)a[i];
    }
    if (num == 0.0) {
        *rel = 0.0;
        *snr_db = INFINITY;
    } else if (den == 0.0) {
        *rel = INFINITY;
        *snr_db = -INFINITY;
    } else {
        *rel = sqrt(num / den);
        *snr_db = 10.0 * log10(den / num);
    }
}

static json_t *num_or_null(double v)
{
    return isfinite(v) ? json_real(v) : json_null();
}

/* ---- the measurement: error, signal and non-zeros in one read ---------- */

struct stats_job {
    const float *a, *b;
    size_t n;
    struct slim_qstats part[SLIM_KERNEL_MAX_THREADS];
};

/* The quantizers' own sums (slim_qstats_add), over this part's range. */
static void stats_part(void *ctx, int part, int nparts)
{
    struct stats_job *j = ctx;
    size_t lo = j->n * (size_t)part / (size_t)nparts, hi = j->n * (size_t)(part + 1) / (size_t)nparts;
    memset(&j->part[part], 0, sizeof j->part[part]);
    slim_qstats_add(j->a + lo, j->b + lo, hi - lo, &j->part[part]);
}

/* rel and SNR from the sums of squares of the error (num) and of the
 * original (den). */
static void rel_snr(double num, double den, double *rel, double *snr)
{
    if (num == 0.0) {
        *rel = 0.0;
        *snr = INFINITY;
    } else if (den == 0.0) {
        *rel = INFINITY;
        *snr = -INFINITY;
    } else {
        *rel = sqrt(num / den);
        *snr = 10.0 * log10(den / num);
    }
}

/* rel and SNR of hat against orig, and hat's non-zeros, over n floats. */
static void measure(const float *orig, const float *hat, size_t n, int threads, double *rel,
                    double *snr, int64_t *nnz)
{
    struct stats_job j = {.a = orig, .b = hat, .n = n};
    int parts = slim_kernel_threads(threads, n);
    double num = 0.0, den = 0.0;
    slim_kernel_parallel(parts, stats_part, &j);
    *nnz = 0;
    for (int p = 0; p < parts; p++) {
        num += j.part[p].err2;
        den += j.part[p].ref2;
        *nnz += j.part[p].nonzero;
    }
    rel_snr(num, den, rel, snr);
}

/* Non-zeros of n stored elements of dtype dt: floats whose bits are not
 * +-0 (NaN counts), and every integer element (counted as stored). */
static int64_t nonzero_raw(enum slim_dtype dt, const void *raw, size_t n)
{
    int64_t nz = 0;
    if (dt == SLIM_DT_F32) {
        const uint32_t *u = raw;
        for (size_t i = 0; i < n; i++)
            nz += (u[i] & 0x7fffffffu) != 0;
    } else if (dt == SLIM_DT_F16 || dt == SLIM_DT_BF16) {
        const uint16_t *u = raw;
        for (size_t i = 0; i < n; i++)
            nz += (u[i] & 0x7fffu) != 0;
    } else if (dt == SLIM_DT_F64) {
        const uint64_t *u = raw;
        for (size_t i = 0; i < n; i++)
            nz += (u[i] & 0x7fffffffffffffffull) != 0;
    } else {
        nz = (int64_t)n;
    }
    return nz;
}

int slim_report_tensor(struct slim_work *w, const struct slim_artifact *art,
                       struct slim_report_totals *tot, json_t *rows, struct slim_error *err)
{
    int dequantize = w->dequantize_output;
    const struct slim_tensor *src = w->wts[0].src;
    struct slim_wt *self = NULL, *u = NULL, *v = NULL;
    size_t after = 0, n = (size_t)slim_tensor_numel(src);
    const char *scheme = "copy", *dtype_after = slim_dtype_name(src->dtype);
    double rel = 0.0, snr = INFINITY;
    float *prod = NULL;
    const float *hat = NULL;
    json_t *row, *extra = NULL;
    int64_t nz_hat = 0;

    for (size_t i = 0; i < art->n; i++)
        after += art->tensors[i].nbytes;
    for (size_t i = 0; i < w->n; i++) {
        struct slim_wt *t = &w->wts[i];
        if (!strcmp(t->name, src->name))
            self = t;
        else if (!u)
            u = t;
        else
            v = t;
    }
    if (self && self->measured) {
        /* the quantizer measured itself against the original */
        rel_snr(self->stats.err2, self->stats.ref2, &rel, &snr);
        nz_hat = self->stats.nonzero;
        tot->nonzero += nz_hat;
        scheme = slim_scheme_name(self->scheme);
        extra = self->report_extra;
        dtype_after = dequantize ? "F32" : slim_dtype_name(self->outs[0].dtype);
    } else if (self && (self->val || (self->report_extra && w->orig))) {
        /* a touched tensor, or one a pass looked at and left (its row
         * says why) */
        hat = self->val ? self->val : w->orig;
        scheme = slim_scheme_name(self->scheme);
        extra = self->report_extra;
        if (dequantize && self->val)
            dtype_after = "F32";
        else if (self->scheme == SLIM_SCHEME_DENSE)
            dtype_after = slim_dtype_name(self->dense_dtype);
        else if (self->n_outs)
            dtype_after = slim_dtype_name(self->outs[0].dtype);
    } else if (u && v && u->val && v->val) {
        /* a low-rank pair: W_hat (rows, cols) = U (rows, r) @ V (r, cols),
         * 512 rows at a time with a cancel check between (the whole
         * product of a 4096^2 rank-256 pair is 8.6 GFLOP) */
        prod = slim_aligned_alloc(n * sizeof(float));
        if (!prod)
            return slim_error_set(err, SLIM_ENOMEM, "out of memory");
        for (int64_t r0 = 0; r0 < u->rows; r0 += 512) {
            int64_t nr = u->rows - r0 < 512 ? u->rows - r0 : 512;
            int rc;
            if ((rc = slim_work_check(w, -1.0, err))) {
                slim_aligned_free(prod);
                return rc;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nr, (int)v->cols,
                        (int)u->cols, 1.0f, u->val + r0 * u->cols, (int)u->cols, v->val,
                        (int)v->cols, 0.0f, prod + r0 * v->cols, (int)v->cols);
        }
        hat = prod;
        scheme = u->scheme == SLIM_SCHEME_DENSE ? "lowrank" : slim_scheme_name(u->scheme);
        dtype_after = slim_dtype_name(dequantize ? SLIM_DT_F32 : u->n_outs ? u->outs[0].dtype
                                                                           : u->dense_dtype);
        extra = u->report_extra;
    }
    if (hat) {
        measure(w->orig, hat, n, w->threads, &rel, &snr, &nz_hat);
        tot->nonzero += nz_hat;
    } else if (!(self && self->measured)) {
        tot->nonzero += nonzero_raw(src->dtype, w->raw, n);
    }
    slim_aligned_free(prod);
    row = json_pack("{s:s, s:o, s:s, s:s, s:I, s:I, s:o, s:o, s:s, s:f}", "name", src->name,
                    "shape", slim_shape_json(src), "dtype_before", slim_dtype_name(src->dtype),
                    "dtype_after", dtype_after, "bytes_before", (json_int_t)src->nbytes,
                    "bytes_after", (json_int_t)after, "rel_error", num_or_null(rel), "snr_db",
                    num_or_null(snr), "scheme", scheme, "bits_per_weight",
                    n ? 8.0 * (double)after / (double)n : 0.0);
    if (!row)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    if (hat || (self && self->measured))
        json_object_set_new(row, "sparsity",
                            json_real(n ? 1.0 - (double)nz_hat / (double)n : 0.0));
    if (extra)
        json_object_update(row, extra);
    json_array_append_new(rows, row);
    tot->bytes_before += (int64_t)src->nbytes;
    tot->bytes_after += (int64_t)after;
    tot->params += (int64_t)n;
    return 0;
}

int slim_report_finish(const struct slim_report_totals *tot, json_t *rows, json_t *passes_rep,
                       json_t **report, struct slim_error *err)
{
    *report = json_pack("{s:O, s:{s:I, s:I, s:f, s:I, s:I, s:I, s:I, s:f}, s:O, s:s}", "tensors",
                        rows, "totals", "bytes_before", (json_int_t)tot->bytes_before,
                        "bytes_after", (json_int_t)tot->bytes_after, "ratio",
                        tot->bytes_after ? (double)tot->bytes_before / (double)tot->bytes_after
                                         : 0.0,
                        "params", (json_int_t)tot->params, "nonzero_params",
                        (json_int_t)tot->nonzero, "file_bytes_before",
                        (json_int_t)tot->file_bytes_before, "file_bytes_after",
                        (json_int_t)tot->file_bytes_after, "file_ratio",
                        tot->file_bytes_after ? (double)tot->file_bytes_before /
                                                    (double)tot->file_bytes_after
                                              : 0.0,
                        "passes", passes_rep, "slimd_version",
                        SLIMD_VERSION);
    if (!*report)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    return 0;
}
