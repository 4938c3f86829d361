/*
 * report.c - what a job did to each tensor, in numbers.
 *
 * Errors are measured against the original tensor after the whole
 * pipeline, from the values a reader of the artifact decodes (the
 * working set keeps exactly those), so a prune followed by int8 reports
 * the combined error, and a low-rank pair is multiplied back out
 * (W_u @ W_v, with sgemm) before it is compared.  Sums are in double:
 * a float accumulator loses the small differences that matter here on
 * tensors of millions of weights.
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
#include <sys/stat.h>
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

static int64_t count_nonzero(const float *v, size_t n)
{
    int64_t nz = 0;
    for (size_t i = 0; i < n; i++)
        nz += v[i] != 0.0f;
    return nz;
}

/* One original tensor: find what derives from it and compare. */
static int report_tensor(struct slim_work *w, const struct slim_artifact *art,
                         const struct slim_tensor *src, json_t *rows,
                         int64_t *bytes_after, int64_t *nonzero, struct slim_error *err)
{
    int dequantize = w->dequantize_output;
    struct slim_wt *self = NULL, *u = NULL, *v = NULL;
    size_t after = 0, n = (size_t)slim_tensor_numel(src);
    const char *scheme = "copy", *dtype_after = slim_dtype_name(src->dtype);
    double rel = 0.0, snr = INFINITY;
    float *orig = NULL, *prod = NULL;
    const float *hat = NULL;
    json_t *row, *extra = NULL;
    int64_t nz_hat = 0;
    int rc = 0;

    for (size_t i = 0; i < art->n; i++)
        if (!strcmp(art->origins[i], src->name))
            after += art->tensors[i].nbytes;
    for (size_t i = 0; i < w->n; i++) {
        struct slim_wt *t = &w->wts[i];
        if (strcmp(t->origin, src->name))
            continue;
        if (!strcmp(t->name, src->name))
            self = t;
        else if (!u)
            u = t;
        else
            v = t;
    }
    if (self && self->val) {
        hat = self->val;
        scheme = slim_scheme_name(self->scheme);
        extra = self->report_extra;
        if (dequantize)
            dtype_after = "F32";
        else if (self->scheme == SLIM_SCHEME_DENSE)
            dtype_after = slim_dtype_name(self->dense_dtype);
        else if (self->n_outs)
            dtype_after = slim_dtype_name(self->outs[0].dtype);
    } else if (u && v && u->val && v->val) {
        /* a low-rank pair: W_hat (rows, cols) = U (rows, r) @ V (r, cols) */
        prod = slim_aligned_alloc(n * sizeof(float));
        if (!prod)
            return slim_error_set(err, SLIM_ENOMEM, "out of memory");
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)u->rows, (int)v->cols,
                    (int)u->cols, 1.0f, u->val, (int)u->cols, v->val, (int)v->cols, 0.0f, prod,
                    (int)v->cols);
        hat = prod;
        scheme = u->scheme == SLIM_SCHEME_DENSE ? "lowrank" : slim_scheme_name(u->scheme);
        dtype_after = slim_dtype_name(dequantize ? SLIM_DT_F32 : u->n_outs ? u->outs[0].dtype
                                                                           : u->dense_dtype);
        extra = u->report_extra;
    }
    if (hat) {
        orig = slim_aligned_alloc(n * sizeof(float));
        if (!orig) {
            rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
            goto out;
        }
        slim_to_f32(src->dtype, src->data, n, orig);
        slim_error_stats(orig, hat, n, &rel, &snr);
        nz_hat = count_nonzero(hat, n);
        *nonzero += nz_hat;
    } else if (slim_dtype_is_float(src->dtype)) {
        orig = slim_aligned_alloc(n * sizeof(float));
        if (!orig) {
            rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
            goto out;
        }
        slim_to_f32(src->dtype, src->data, n, orig);
        *nonzero += count_nonzero(orig, n);
    } else {
        *nonzero += (int64_t)n; /* integer tensors: counted as stored */
    }
    row = json_pack("{s:s, s:o, s:s, s:s, s:I, s:I, s:o, s:o, s:s, s:f}", "name", src->name,
                    "shape", slim_shape_json(src), "dtype_before", slim_dtype_name(src->dtype),
                    "dtype_after", dtype_after, "bytes_before", (json_int_t)src->nbytes,
                    "bytes_after", (json_int_t)after, "rel_error", num_or_null(rel), "snr_db",
                    num_or_null(snr), "scheme", scheme, "bits_per_weight",
                    n ? 8.0 * (double)after / (double)n : 0.0);
    if (!row) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
        goto out;
    }
    if (hat)
        json_object_set_new(row, "sparsity",
                            json_real(n ? 1.0 - (double)nz_hat / (double)n : 0.0));
    if (extra)
        json_object_update(row, extra);
    json_array_append_new(rows, row);
    *bytes_after += (int64_t)after;
out:
    slim_aligned_free(orig);
    slim_aligned_free(prod);
    return rc;
}

int slim_report_build(struct slim_work *w, const struct slim_artifact *art,
                      const char *artifact_path, json_t *passes_rep, json_t **report,
                      struct slim_error *err)
{
    const struct slim_model *m = w->model;
    json_t *rows = json_array();
    int64_t before = 0, after = 0, params = 0, nonzero = 0;
    struct stat st;
    int rc = 0;

    if (!rows)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    for (size_t i = 0; i < m->n_tensors; i++) {
        const struct slim_tensor *src = &m->tensors[i];
        before += (int64_t)src->nbytes;
        params += slim_tensor_numel(src);
        rc = report_tensor(w, art, src, rows, &after, &nonzero, err);
        if (rc) {
            json_decref(rows);
            return rc;
        }
        if ((i & 15) == 15)
            slim_work_check(w, (double)i / (double)m->n_tensors, NULL);
    }
    if (stat(artifact_path, &st) != 0)
        st.st_size = 0;
    *report = json_pack("{s:o, s:{s:I, s:I, s:f, s:I, s:I, s:I, s:I}, s:O, s:s}", "tensors", rows,
                        "totals", "bytes_before", (json_int_t)before, "bytes_after",
                        (json_int_t)after, "ratio",
                        after ? (double)before / (double)after : 0.0, "params",
                        (json_int_t)params, "nonzero_params", (json_int_t)nonzero,
                        "file_bytes_before", (json_int_t)m->file_bytes, "file_bytes_after",
                        (json_int_t)st.st_size, "passes", passes_rep, "slimd_version",
                        SLIMD_VERSION);
    if (!*report)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    return 0;
}
