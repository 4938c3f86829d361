/*
 * report.h - the job report, built one tensor at a time as the pipeline
 * streams the model.  Internal to libslim.
 */
#ifndef SLIM_REPORT_H
#define SLIM_REPORT_H

#include "passes/artifact.h"
#include "passes/pass.h"

/* Running totals of a report. */
struct slim_report_totals {
    int64_t bytes_before, bytes_after, params, nonzero;
    int64_t file_bytes_before, file_bytes_after;
};

/* Measures one original tensor once the passes ran over it: w holds
 * what derives from it (w->orig its fp32 values when a pass touched it,
 * w->raw its stored bytes), art their laid-out form.  Appends the
 * tensor's row to rows (error of what the artifact decodes to against
 * the original, sizes before and after, scheme, sparsity, the passes'
 * extra fields) and adds to tot.  Error, SNR and non-zeros come from one
 * threaded read of the two buffers.  A low-rank pair is multiplied back
 * in row blocks, checking w for a cancel between them (SLIM_ECANCELED). */
int slim_report_tensor(struct slim_work *w, const struct slim_artifact *art,
                       struct slim_report_totals *tot, json_t *rows, struct slim_error *err);
/* The whole report from the rows, totals and passes_rep (an array of
 * {index, op, seconds}); rows and passes_rep are borrowed.  *report is
 * new. */
int slim_report_finish(const struct slim_report_totals *tot, json_t *rows, json_t *passes_rep,
                       json_t **report, struct slim_error *err);

/* ||a - b||_F / ||a||_F and the SNR in dB over n floats, in double
 * precision.  rel is 0 when a == b; snr_db is +Inf then (the report
 * writes null). */
void slim_error_stats(const float *a, const float *b, size_t n, double *rel, double *snr_db);

#endif
