/*
 * eval.h - what compression did to a runnable model's answers: the
 * original and the artifact as written, both run by the engine on the
 * same samples, compared.  Internal to libslim (the pipeline calls it).
 */
#ifndef SLIM_EVAL_H
#define SLIM_EVAL_H

#include "passes/formats/onnx.h"
#include "passes/slim.h"

struct slim_eval_opts {
    const char *dataset;        /* canonical dataset file (formats/dataset.h), or NULL: drift
                                 * on a seeded random batch */
    const char *dataset_id;     /* as the spec named it, for the report (may be NULL) */
    int64_t max_samples;        /* 0: all */
    int64_t batch;              /* samples per engine run */
    uint64_t memory_limit;      /* each engine's buffers at most this (0: no cap) */
    /* polled between batches: non-zero stops with SLIM_ECANCELED */
    int (*check)(void *ud, double frac);
    void *check_ud;
};

/* Checks, without loading a weight, that `before` can be evaluated: the
 * engine supports every op (SLIM_EUNSUPPORTED names the first that it
 * does not).  Shapes are checked when the evaluation runs. */
int slim_eval_check(struct slim_onnx *before, struct slim_error *err);

/* Runs the original (`before`, borrowed) and the artifact at
 * after_path (re-read from disk: what was written is what is measured)
 * over the dataset, batch by batch, or over one random batch without a
 * dataset.  *out is a new object for the report: with labels "before"
 * and "after" (top-1), "top5", "cross_entropy", and always "agreement",
 * "samples", "output_drift", "throughput" and "latency_ms" (per batch),
 * before and after.  Errors: SLIM_EUNSUPPORTED, SLIM_EINVAL (a dataset
 * that does not fit the model, named), SLIM_ECANCELED. */
int slim_eval_run(struct slim_onnx *before, const char *after_path,
                  const struct slim_eval_opts *o, json_t **out, struct slim_error *err);

#endif
