/*
 * fuzz.h - what every libFuzzer target of tests/fuzz/ shares: a private
 * scratch folder on tmpfs for the parsers that take paths, a file
 * written there from the input, and the allocation check.
 *
 * Parsers that read files (IDX, tar uploads) get the input as a file in
 * a folder of the process's own, made once under /dev/shm (TMPDIR when
 * there is no /dev/shm), so the fuzzer does not wear the disk or pay for
 * fsync, and parallel fuzzers do not collide.  The folder is removed at
 * exit.  Each target checks slim_alloc_live() before and after every
 * input: an allocation of libslim's wrapper that an input leaves behind
 * aborts at once, naming the input, even where LeakSanitizer would only
 * report at exit.
 */
#ifndef SLIM_FUZZ_H
#define SLIM_FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <ftw.h>
#include "passes/slim.h"

static char fuzz_dir[256];

static inline int fuzz_rm(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static inline void fuzz_cleanup(void)
{
    if (fuzz_dir[0])
        nftw(fuzz_dir, fuzz_rm, 8, FTW_DEPTH | FTW_PHYS);
}

/* The scratch folder, made on first use. */
static inline const char *fuzz_scratch(void)
{
    if (!fuzz_dir[0]) {
        const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
        snprintf(fuzz_dir, sizeof fuzz_dir, "%s/slimd-fuzz-XXXXXX", base ? base : "/tmp");
        if (!mkdtemp(fuzz_dir)) {
            perror("mkdtemp");
            abort();
        }
        atexit(fuzz_cleanup);
    }
    return fuzz_dir;
}

/* Writes data[0..size) to the scratch file `name`; its path into path. */
static inline void fuzz_file(const char *name, const uint8_t *data, size_t size, char *path,
                      size_t plen)
{
    int fd;
    snprintf(path, plen, "%s/%s", fuzz_scratch(), name);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || (size && write(fd, data, size) != (ssize_t)size) || close(fd)) {
        perror(path);
        abort();
    }
}

/* Aborts when libslim's allocations are not back to `before`. */
static inline void fuzz_check_live(long before, const char *what)
{
    long now = slim_alloc_live();
    if (now != before) {
        fprintf(stderr, "%s: %ld libslim allocation(s) left behind by this input\n", what,
                now - before);
        abort();
    }
}

/* Aborts with a message: a property the target checks does not hold. */
#define FUZZ_ASSERT(cond, ...)                                                    \
    do {                                                                          \
        if (!(cond)) {                                                            \
            fprintf(stderr, "fuzz property failed: %s: ", #cond);                 \
            fprintf(stderr, __VA_ARGS__);                                         \
            fputc('\n', stderr);                                                  \
            abort();                                                              \
        }                                                                         \
    } while (0)

#endif
