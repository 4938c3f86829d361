/*
 * log.c - see log.h.  Quiet mode (SLIMD_LOG=quiet) exists for the
 * offline CLI, where a log line per stage would clutter a CI job's output.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "daemon/log.h"

void slim_time_rfc3339(char *buf, size_t len)
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

void slim_log(const char *level, const char *fmt, ...)
{
    char ts[32], line[1024];
    va_list ap;
    const char *mode = getenv("SLIMD_LOG");
    if (mode && !strcmp(mode, "quiet") && strcmp(level, "error"))
        return;
    slim_time_rfc3339(ts, sizeof ts);
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s %s %s\n", ts, level, line);
}
