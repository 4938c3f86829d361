/*
 * util.h - small helpers shared by the C unit tests: a private temp dir
 * per test program (removed at exit) and whole-file writes.  cmocka's
 * headers need stdarg/stddef/setjmp first, so this includes them.
 */
#ifndef SLIM_TEST_UTIL_H
#define SLIM_TEST_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include "passes/slim.h"

/* 1 when built with AddressSanitizer (tests/sanitize.sh, gcc's macro or
 * clang's feature): alloc.c then serves every buffer from
 * posix_memalign, without its large-block cache. */
#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif
#ifndef TEST_ASAN
#define TEST_ASAN 0
#endif

static char test_tmp_root[256];

static void test_tmp_cleanup(void)
{
    char cmd[300];
    if (test_tmp_root[0]) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", test_tmp_root);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", test_tmp_root);
    }
}

/* A fresh folder under $TMPDIR (or /tmp) that lives until exit. */
static inline const char *test_tmp_dir(void)
{
    if (!test_tmp_root[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(test_tmp_root, sizeof test_tmp_root, "%s/slimd-unit-XXXXXX", base ? base : "/tmp");
        if (!mkdtemp(test_tmp_root)) {
            perror("mkdtemp");
            exit(99);
        }
        atexit(test_tmp_cleanup);
    }
    return test_tmp_root;
}

/* Writes len bytes to a file named `name` in the temp dir; returns a path
 * in a static buffer rotated over four slots. */
static inline const char *test_write_file(const char *name, const void *buf, size_t len)
{
    static char paths[4][512];
    static int slot;
    char *p = paths[slot++ & 3];
    snprintf(p, 512, "%s/%s", test_tmp_dir(), name);
    FILE *f = fopen(p, "wb");
    if (!f || (len && fwrite(buf, 1, len, f) != len) || fclose(f) != 0) {
        perror(p);
        exit(99);
    }
    return p;
}

/* Writes tensors as a safetensors model named `name` in the temp dir;
 * returns its path (static, rotated over four slots). */
static inline const char *test_write_model(const char *name, struct slim_tensor *t, size_t n)
{
    static char path[4][512];
    static int slot;
    char *p = path[slot++ & 3];
    struct slim_error err;
    snprintf(p, 512, "%s/%s", test_tmp_dir(), name);
    if (slim_st_write(p, t, n, NULL, &err))
        fail_msg("write %s: %s", p, err.msg);
    return p;
}

/* The report's row for tensor `name` (borrowed); fails the test if none. */
static inline json_t *test_report_row(json_t *report, const char *name)
{
    size_t i;
    json_t *t;
    json_array_foreach(json_object_get(report, "tensors"), i, t)
        if (!strcmp(json_string_value(json_object_get(t, "name")), name))
            return t;
    fail_msg("no report row for %s", name);
    return NULL;
}

#endif
