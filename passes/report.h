/*
 * report.h - the job report, built from the working set after the whole
 * pipeline ran.  Internal to libslim.
 */
#ifndef SLIM_REPORT_H
#define SLIM_REPORT_H

#include "passes/artifact.h"
#include "passes/pass.h"

/* Builds the report: per original tensor the error of what the artifact
 * decodes to against the original, sizes before and after, totals, and
 * the passes (passes_rep is borrowed: an array of {index, op, seconds}).
 * Sizes after come from the artifact's layout (art).  artifact_path is stat'ed for the file size.  *report is a new
 * reference. */
int slim_report_build(struct slim_work *w, const struct slim_artifact *art,
                      const char *artifact_path, json_t *passes_rep, json_t **report,
                      struct slim_error *err);

/* ||a - b||_F / ||a||_F and the SNR in dB over n floats, in double
 * precision.  rel is 0 when a == b; snr_db is +Inf then (the report
 * writes null). */
void slim_error_stats(const float *a, const float *b, size_t n, double *rel, double *snr_db);

#endif
