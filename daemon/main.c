/*
 * main.c - slimd's entry point: picks the subcommand.  Everything else
 * lives in libslimd so the tests and benchmarks link the same code.
 *
 * Before anything else, slim_blas_pick_kernels (passes/blas.c) may run
 * the program again with OPENBLAS_CORETYPE set: see there.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include "daemon/cli.h"
#include "passes/slim.h"

int main(int argc, char **argv)
{
    slim_blas_pick_kernels(argv);
    if (argc < 2) {
        slimd_usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        printf("slimd %s\n", SLIMD_VERSION);
        return 0;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        slimd_usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "serve"))
        return slimd_serve(argc - 1, argv + 1);
    if (!strcmp(argv[1], "compress"))
        return slimd_compress(argc - 1, argv + 1);
    if (!strcmp(argv[1], "infer"))
        return slimd_infer(argc - 1, argv + 1);
    if (!strcmp(argv[1], "eval"))
        return slimd_eval(argc - 1, argv + 1);
    if (!strcmp(argv[1], "decode"))
        return slimd_decode(argc - 1, argv + 1);
    if (!strcmp(argv[1], "submit"))
        return slimd_submit(argc - 1, argv + 1);
    if (!strcmp(argv[1], "token"))
        return slimd_token(argc - 1, argv + 1);
    if (!strcmp(argv[1], "scheduled"))
        return slimd_scheduled(argc - 1, argv + 1);
    fprintf(stderr, "slimd: unknown command '%s'\n\n", argv[1]);
    slimd_usage(stderr);
    return 2;
}
