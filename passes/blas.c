/*
 * blas.c - the OpenBLAS kernels a process runs with.
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
#include <stdlib.h>
#include <strings.h>
#include <unistd.h>
#include <cblas.h>
#include "passes/slim.h"

void slim_blas_pick_kernels(char **argv)
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
