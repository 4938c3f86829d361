/*
 * main.c - slimd's entry point: picks the subcommand.  Everything else
 * lives in libslimd so the tests and benchmarks link the same code.
 */
#include <stdio.h>
#include <string.h>
#include "daemon/cli.h"

int main(int argc, char **argv)
{
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
    fprintf(stderr, "slimd: unknown command '%s'\n\n", argv[1]);
    slimd_usage(stderr);
    return 2;
}
