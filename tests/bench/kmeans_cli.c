/*
 * kmeans_cli.c - runs slimd's 1-D k-means kernel (passes/kernels/cluster.c) on a
 * raw little-endian float32 file, for tests/unit/test_kmeans_sklearn.py
 * and tests/bench/numpy_peer.py, which compare it with scikit-learn on
 * the same data.
 *
 *   kmeans_cli [-k K] [--keep-zero] [--no-dp] [--ref] [--threads N]
 *              [--max-iter N] [--out PREFIX] FILE
 *
 * Prints "key value" lines: inertia (sum of squared errors, double),
 * k_used, iterations, exact, seconds (kernel only).  With --out it writes
 * PREFIX.codebook (k float32) and PREFIX.idx (one uint8 per weight).
 * Exit status: 0 ok, 1 kernel or I/O error, 2 usage.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "passes/kernels/kernels.h"

static int usage(void)
{
    fprintf(stderr, "usage: kmeans_cli [-k K] [--keep-zero] [--no-dp] [--ref] [--threads N]\n"
                    "                  [--max-iter N] [--out PREFIX] FILE\n");
    return 2;
}

static int write_file(const char *prefix, const char *ext, const void *buf, size_t len)
{
    char path[4096];
    FILE *f;
    snprintf(path, sizeof path, "%s.%s", prefix, ext);
    f = fopen(path, "wb");
    if (!f || (len && fwrite(buf, 1, len, f) != len) || fclose(f) != 0) {
        perror(path);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct slim_kmeans_opts o = {.k = 16};
    struct slim_kmeans_info info;
    struct slim_error err = {0};
    const char *file = NULL, *out = NULL;
    int threads = 1, ref = 0, rc = 1;
    float *w = NULL, codebook[SLIM_KMEANS_MAX_K];
    uint8_t *idx = NULL;
    size_t n;
    long len;
    FILE *f;

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-k") && i + 1 < argc)
            o.k = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--keep-zero"))
            o.keep_zero = 1;
        else if (!strcmp(argv[i], "--no-dp"))
            o.no_dp = 1;
        else if (!strcmp(argv[i], "--ref"))
            ref = 1;
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--max-iter") && i + 1 < argc)
            o.max_iter = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--out") && i + 1 < argc)
            out = argv[++i];
        else if (argv[i][0] != '-' && !file)
            file = argv[i];
        else
            return usage();
    }
    if (!file)
        return usage();
    f = fopen(file, "rb");
    if (!f || fseek(f, 0, SEEK_END) || (len = ftell(f)) < 0 || fseek(f, 0, SEEK_SET)) {
        perror(file);
        return 1;
    }
    n = (size_t)len / sizeof(float);
    w = malloc(n ? n * sizeof *w : 1);
    idx = malloc(n ? n : 1);
    if (!w || !idx || (n && fread(w, sizeof *w, n, f) != n)) {
        fprintf(stderr, "%s: cannot read %zu floats\n", file, n);
        goto out;
    }
    double t = slim_now();
    int krc = ref ? slim_kmeans_1d_ref(w, n, &o, codebook, idx, &info, &err)
                  : slim_kmeans_1d(w, n, &o, threads, codebook, idx, &info, &err);
    t = slim_now() - t;
    if (krc) {
        fprintf(stderr, "kmeans: %s (%s)\n", err.msg, slim_errcode(krc));
        goto out;
    }
    printf("inertia %.17g\nk_used %d\niterations %d\nexact %d\nseconds %.6f\n", info.inertia,
           info.k_used, info.iterations, info.exact, t);
    if (out && (write_file(out, "codebook", codebook, (size_t)o.k * sizeof(float)) ||
                write_file(out, "idx", idx, n)))
        goto out;
    rc = 0;
out:
    if (f)
        fclose(f);
    free(w);
    free(idx);
    return rc;
}
