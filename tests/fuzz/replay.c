/*
 * replay.c - a main() for the fuzz targets without libFuzzer: feeds every
 * file of the target's committed corpus (tests/fuzz/corpus/<name>/:
 * the seeds and the regression inputs the fuzzers found) to
 * LLVMFuzzerTestOneInput once, and prints TAP, one test case per file.
 *
 * `make check` builds each target this way with the ordinary compiler,
 * so every input that once crashed a parser runs again in every test
 * run, and under ASan+UBSan in tests/sanitize.sh's, without clang.  A
 * file that still breaks a target aborts it (the target's own checks,
 * or a sanitizer), which the TAP driver reports as an error.  The
 * corpus folder is $SLIMD_SRCDIR/tests/fuzz/corpus/FUZZ_NAME (the test
 * environment sets SLIMD_SRCDIR), or the folders given as arguments.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The files of dir, sorted, as "dir/name" strings; *n gets the count. */
static char **list(const char *dir, size_t *n)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    char **v = NULL;
    size_t cap = 0;
    *n = 0;
    if (!d)
        return NULL;
    while ((de = readdir(d))) {
        size_t len;
        if (de->d_name[0] == '.')
            continue;
        if (*n == cap && !(v = realloc(v, (cap = cap ? 2 * cap : 64) * sizeof *v)))
            abort();
        len = strlen(dir) + strlen(de->d_name) + 2;
        if (!(v[*n] = malloc(len)))
            abort();
        snprintf(v[(*n)++], len, "%s/%s", dir, de->d_name);
    }
    closedir(d);
    if (*n)
        qsort(v, *n, sizeof *v, by_name);
    return v;
}

static int replay(const char *path)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf;
    long len;
    if (!f || fseek(f, 0, SEEK_END) || (len = ftell(f)) < 0 || fseek(f, 0, SEEK_SET))
        return -1;
    /* exactly len bytes, so ASan sees a read past the end of the input */
    if (!(buf = malloc(len ? (size_t)len : 1)) || fread(buf, 1, (size_t)len, f) != (size_t)len) {
        fclose(f);
        free(buf);
        return -1;
    }
    fclose(f);
    LLVMFuzzerTestOneInput(buf, (size_t)len);
    free(buf);
    return 0;
}

int main(int argc, char **argv)
{
    char def[4096];
    const char *defdirs[1] = {def};
    const char *src = getenv("SLIMD_SRCDIR");
    const char *const *dirs = (const char *const *)argv + 1;
    int ndirs = argc - 1, t = 0;
    char **files[64];
    size_t nfiles[64], total = 0;

    if (ndirs == 0) {
        snprintf(def, sizeof def, "%s/tests/fuzz/corpus/%s", src ? src : ".", FUZZ_NAME);
        dirs = defdirs;
        ndirs = 1;
    }
    if (ndirs > 64)
        ndirs = 64;
    if (LLVMFuzzerInitialize)
        LLVMFuzzerInitialize(&argc, &argv);
    for (int i = 0; i < ndirs; i++) {
        files[i] = list(dirs[i], &nfiles[i]);
        if (!files[i] || !nfiles[i]) {
            printf("Bail out! no corpus files in %s\n", dirs[i]);
            return 99;
        }
        total += nfiles[i];
    }
    printf("1..%zu\n", total);
    fflush(stdout);
    for (int i = 0; i < ndirs; i++) {
        for (size_t k = 0; k < nfiles[i]; k++) {
            const char *base = strrchr(files[i][k], '/') + 1;
            int rc = replay(files[i][k]);
            printf("%s %d - fuzz_%s: %s\n", rc ? "not ok" : "ok", ++t, FUZZ_NAME, base);
            fflush(stdout);
            free(files[i][k]);
        }
        free(files[i]);
    }
    return 0;
}
