/*
 * main.c - slimd's entry point: picks the subcommand.  Everything else
 * lives in libslimd so the tests and benchmarks link the same code.
 *
 * OpenBLAS picks its kernels when it is loaded, from the CPU model.  A
 * CPU newer than the installed OpenBLAS knows (Debian 12's 0.3.21 on a
 * Xeon model 207, say) gets the generic Prescott (SSE3) kernels, 2.5x
 * slower for every sgemm of lowrank and of the inference engine.  Newer
 * OpenBLAS releases fall back by the CPU's feature flags instead; slimd
 * does the same for the old one: when the core is Prescott and the CPU
 * has every AVX-512 subset the SkylakeX kernels use (or AVX2 and FMA for
 * Haswell's), it sets OPENBLAS_CORETYPE and runs itself again, once,
 * before anything else has happened.  An OPENBLAS_CORETYPE the user set
 * is always left alone (OPENBLAS_CORETYPE=Prescott keeps the old
 * kernels).  Checking flags, not the model number, is what keeps this
 * from choosing kernels the CPU cannot run.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include "daemon/cli.h"

char *openblas_get_corename(void);

static void openblas_kernels(char **argv)
{
    const char *core, *want = NULL;
    if (getenv("OPENBLAS_CORETYPE"))
        return;
    core = openblas_get_corename();
    if (!core || strcasecmp(core, "Prescott"))
        return;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512cd"))
        want = "SkylakeX";
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        want = "Haswell";
    if (!want || setenv("OPENBLAS_CORETYPE", want, 1))
        return;
    execv("/proc/self/exe", argv);
    unsetenv("OPENBLAS_CORETYPE");   /* no re-exec: carry on with Prescott */
}

int main(int argc, char **argv)
{
    openblas_kernels(argv);
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
    if (!strcmp(argv[1], "token"))
        return slimd_token(argc - 1, argv + 1);
    fprintf(stderr, "slimd: unknown command '%s'\n\n", argv[1]);
    slimd_usage(stderr);
    return 2;
}
