/*
 * dataset.h - evaluation data: samples as float32 and integer class
 * labels, read from the canonical form the daemon stores (a safetensors
 * file with an `input` tensor, first dimension = samples, and an
 * optional integer `labels` tensor), and the converters that make that
 * form out of what users upload (MNIST-style IDX files, gzip or not).
 * Internal to libslim; what the daemon calls at upload (describe, the
 * IDX converter) is declared in slim.h.
 */
#ifndef SLIM_DATASET_H
#define SLIM_DATASET_H

#include "passes/slim.h"

struct slim_dataset {
    int64_t n;                      /* samples */
    int ndim;                       /* per-sample dims (after the sample dim) */
    int64_t shape[SLIM_MAX_DIMS];
    int64_t sample_size;            /* elements per sample */
    float *x;                       /* n * sample_size, owned (slim_aligned_alloc) */
    int64_t *labels;                /* n, owned; NULL without labels */
    int64_t classes;                /* max label + 1; 0 without labels */
};

/* Loads the safetensors dataset at path: `input` (F32, F16, BF16, F64 or
 * U8, at least 1-D; U8 is taken as is, not scaled) and optional `labels`
 * (I64, I32, I16, I8 or U8, shape [n], every value >= 0).  At most
 * max_samples samples are kept (0: all).  On failure d is empty and
 * SLIM_EFORMAT names the problem. */
int slim_dataset_load(const char *path, int64_t max_samples, struct slim_dataset *d,
                      struct slim_error *err);
void slim_dataset_release(struct slim_dataset *d);

#endif
