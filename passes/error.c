/*
 * error.c - slimd's error values: one table (SLIM_ERRNO_MAP in slim.h)
 * gives each error its enum value, stable REST code, HTTP status and
 * default message, as libuv's UV_ERRNO_MAP does.  Detail travels in a
 * caller-owned struct slim_error, so reporting never allocates and works
 * even when memory has run out.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include "passes/slim.h"

struct errno_entry {
    int value;
    const char *code;
    int status;
    const char *msg;
};

static const struct errno_entry errno_table[] = {
#define SLIM_X(name, val, code, status, msg) {val, code, status, msg},
    SLIM_ERRNO_MAP(SLIM_X)
#undef SLIM_X
};

static const struct errno_entry *lookup(int code)
{
    for (size_t i = 0; i < sizeof errno_table / sizeof errno_table[0]; i++)
        if (errno_table[i].value == code)
            return &errno_table[i];
    return NULL;
}

int slim_error_set(struct slim_error *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        err->code = code;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

void slim_error_prefix(struct slim_error *err, const char *fmt, ...)
{
    char prefix[sizeof err->msg], old[sizeof err->msg];
    va_list ap;
    if (!err)
        return;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    /* Build "prefix: old" by hand: truncation is intended here. */
    size_t n = strlen(prefix);
    if (n > sizeof err->msg - 3)
        n = sizeof err->msg - 3;
    memcpy(err->msg, prefix, n);
    memcpy(err->msg + n, ": ", 2);
    n += 2;
    size_t m = strnlen(old, sizeof old);
    if (m > sizeof err->msg - 1 - n)
        m = sizeof err->msg - 1 - n;
    memcpy(err->msg + n, old, m);
    err->msg[n + m] = 0;
}

const char *slim_strerror(int code)
{
    const struct errno_entry *e = lookup(code);
    return e ? e->msg : "unknown error";
}

const char *slim_errcode(int code)
{
    const struct errno_entry *e = lookup(code);
    return e ? e->code : "INTERNAL";
}

int slim_http_status(int code)
{
    const struct errno_entry *e = lookup(code);
    return e ? e->status : 500;
}
