/*
 * gates.h - a job spec's quality gates: bounds the finished job's report
 * must meet, else the job fails with GATE_FAILED (its artifact and
 * report kept for inspection).  Internal to libslim.
 */
#ifndef SLIM_GATES_H
#define SLIM_GATES_H

#include <jansson.h>
#include "passes/slim.h"

enum {
    SLIM_GATE_MAX_REL_ERROR = 1,
    SLIM_GATE_MIN_RATIO = 2,
    SLIM_GATE_MIN_ACCURACY = 4,
    SLIM_GATE_MAX_ACCURACY_DROP = 8,
};

struct slim_gates {
    unsigned set;              /* SLIM_GATE_* bits of the gates given */
    double max_rel_error;      /* the worst tensor's relative error */
    double min_ratio;          /* totals.ratio: bytes before / bytes after */
    double min_accuracy;       /* accuracy.after (top-1, 0..1) on the eval dataset */
    double max_accuracy_drop;  /* accuracy.before - accuracy.after (0..1) */
};

/* Parses "gates": {max_rel_error, min_ratio, min_accuracy,
 * max_accuracy_drop}.  has_eval: the spec has "eval": {"dataset"}, which
 * the accuracy gates need.  SLIM_ESPEC naming the key on a bad one. */
int slim_gates_parse(json_t *v, int has_eval, struct slim_gates *g, struct slim_error *err);
/* Checks report (a finished job's) against g: adds "gates": [{gate,
 * bound, value, passed[, tensor]}] to it, and returns SLIM_EGATE with a
 * message naming the first gate missed, its measured value and its
 * bound; 0 when every gate holds (or none is set). */
int slim_gates_check(const struct slim_gates *g, json_t *report, struct slim_error *err);

#endif
