/*
 * log.h - one line per event on stderr: an RFC 3339 timestamp, a level,
 * then the message ("2026-11-29T03:39:30Z info job job_ab12 running").
 * Lines are written with a single fprintf under the stream's lock, so
 * threads never interleave within a line.  Journald and docker logs both
 * take stderr as it is, so there is no file or syslog backend.
 */
#ifndef SLIM_LOG_H
#define SLIM_LOG_H

#include <stddef.h>

void slim_log(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define log_info(...) slim_log("info", __VA_ARGS__)
#define log_warn(...) slim_log("warn", __VA_ARGS__)
#define log_error(...) slim_log("error", __VA_ARGS__)

/* Writes the current UTC time as "2026-11-29T03:39:30Z" into buf (>= 21). */
void slim_time_rfc3339(char *buf, size_t len);

#endif
