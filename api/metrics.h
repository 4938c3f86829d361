/*
 * metrics.h - the counters and histograms behind GET /metrics.
 *
 * The daemon's own events are counted in memory as they happen (HTTP
 * requests by route template and status, uploads and downloads, jobs as
 * they end: duration, queue wait, compression ratio, failures by error
 * code, re-queues); what is state rather than an event is read at
 * scrape time (jobs per state from SQLite, the data dir's size, the
 * process's CPU, memory and descriptors from /proc/self).  Counters
 * start at zero with each process, as Prometheus expects (its rate()
 * handles the reset).
 *
 * Every function is safe to call from any thread; each takes one mutex
 * for a few hundred nanoseconds.  Labels are bounded: routes are the
 * route table's templates ("/v1/jobs/{id}", never an id), ops are the
 * pass ops the spec parser accepts, codes are SLIM_ERRNO_MAP's.
 */
#ifndef SLIM_API_METRICS_H
#define SLIM_API_METRICS_H

#include <stdint.h>
#include <stdio.h>
#include <jansson.h>

/* One HTTP request ended: route is its template (or "unmatched"),
 * method the route's method ("other" for an unknown one). */
void api_metrics_http(const char *route, const char *method, int status, double seconds);
/* Bytes of upload bodies received (models, datasets). */
void api_metrics_upload_bytes(uint64_t n);
/* Bytes of a file response queued (kind: "model", "dataset", "artifact",
 * "other"). */
void api_metrics_download_bytes(const char *kind, uint64_t n);

/* A job was claimed after waiting queue_seconds since it was submitted. */
void api_metrics_job_started(double queue_seconds);
/* A job ended: outcome "succeeded", "failed", "canceled" or "requeued";
 * seconds from its claim; code its error (enum slim_errno; 0 unless
 * failed); report (borrowed, may be NULL): its passes' seconds and the
 * compression ratio; artifact_bytes written (0 unless succeeded). */
void api_metrics_job_ended(const char *outcome, double seconds, int code, json_t *report,
                           uint64_t artifact_bytes);
/* A job went back to the queue: reason "shutdown", "disk_full" or
 * "recovery". */
void api_metrics_job_requeued(const char *reason, int n);

/* Writes every family in the Prometheus text format 0.0.4. */
void api_metrics_write(FILE *f);
/* The process families (process_cpu_seconds_total, ...), from /proc/self. */
void api_metrics_write_process(FILE *f);
/* slimd_data_dir_bytes: the bytes the files under dir take on disk. */
void api_metrics_write_data_dir(FILE *f, const char *dir);

#endif
