/*
 * gates.c - quality gates (see gates.h).
 *
 * A gate is checked against what the report measured, after the
 * artifact is written and hashed: the gate's verdict needs the numbers
 * of the artifact as stored (the report's relative error is of what it
 * decodes to; the accuracy is the engine's run on the artifact).  So a
 * missed gate costs the whole job's time, and in exchange the failed
 * job keeps its artifact and report, which is what a user looking into
 * the failure wants.  Rejected: stopping mid-pipeline when one tensor
 * is over max_rel_error (the remaining tensors' errors, the accuracy
 * and the ratio would then be unknown to the user).
 *
 * max_rel_error bounds the worst tensor (the message names it), not a
 * mean: a mean of thousands of tensors hides the one layer that broke.
 * The accuracy gates read accuracy.before and accuracy.after (top-1, as
 * fractions), which exist only for a job with an eval dataset; the spec
 * parser refuses them without one.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "passes/gates.h"

static const struct {
    const char *key;
    unsigned bit;
    double lo, hi;           /* the values the gate may take */
    const char *expect;
} gate_keys[] = {
    {"max_rel_error", SLIM_GATE_MAX_REL_ERROR, 0, 1e9, "a number >= 0"},
    {"min_ratio", SLIM_GATE_MIN_RATIO, 0, 1e9, "a number > 0"},
    {"min_accuracy", SLIM_GATE_MIN_ACCURACY, 0, 1, "a fraction from 0 to 1"},
    {"max_accuracy_drop", SLIM_GATE_MAX_ACCURACY_DROP, 0, 1, "a fraction from 0 to 1"},
};
#define N_GATES (sizeof gate_keys / sizeof gate_keys[0])

static double *slot(struct slim_gates *g, unsigned bit)
{
    switch (bit) {
    case SLIM_GATE_MAX_REL_ERROR: return &g->max_rel_error;
    case SLIM_GATE_MIN_RATIO: return &g->min_ratio;
    case SLIM_GATE_MIN_ACCURACY: return &g->min_accuracy;
    default: return &g->max_accuracy_drop;
    }
}

int slim_gates_parse(json_t *v, int has_eval, struct slim_gates *g, struct slim_error *err)
{
    const char *key;
    json_t *x;
    memset(g, 0, sizeof *g);
    if (!v)
        return 0;
    if (!json_is_object(v))
        return slim_error_set(err, SLIM_ESPEC, "gates: expected an object such as "
                              "{\"max_rel_error\": 0.05, \"min_ratio\": 3}");
    json_object_foreach(v, key, x) {
        size_t i = 0;
        while (i < N_GATES && strcmp(key, gate_keys[i].key))
            i++;
        if (i == N_GATES)
            return slim_error_set(err, SLIM_ESPEC, "gates: unknown key '%.40s' (expected "
                                  "max_rel_error, min_ratio, min_accuracy, max_accuracy_drop)",
                                  key);
        double d = json_number_value(x);
        if (!json_is_number(x) || !isfinite(d) || d < gate_keys[i].lo || d > gate_keys[i].hi ||
            (gate_keys[i].bit == SLIM_GATE_MIN_RATIO && d <= 0))
            return slim_error_set(err, SLIM_ESPEC, "gates.%s: expected %s", key,
                                  gate_keys[i].expect);
        if ((gate_keys[i].bit & (SLIM_GATE_MIN_ACCURACY | SLIM_GATE_MAX_ACCURACY_DROP)) &&
            !has_eval)
            return slim_error_set(err, SLIM_ESPEC, "gates.%s: needs an accuracy to check: add "
                                  "\"eval\": {\"dataset\": \"ds_...\"} (an ONNX model and a "
                                  "labelled dataset)", key);
        g->set |= gate_keys[i].bit;
        *slot(g, gate_keys[i].bit) = d;
    }
    return 0;
}

/* Appends one verdict to rows; returns 1 when it passed. */
static int verdict(json_t *rows, const char *gate, double bound, double value, int passed,
                   const char *tensor)
{
    json_t *row = json_pack("{s:s, s:f, s:o, s:b}", "gate", gate, "bound", bound, "value",
                            isfinite(value) ? json_real(value) : json_null(), "passed", passed);
    if (row && tensor)
        json_object_set_new(row, "tensor", json_string(tensor));
    json_array_append_new(rows, row);
    return passed;
}

int slim_gates_check(const struct slim_gates *g, json_t *report, struct slim_error *err)
{
    json_t *rows, *t, *acc = json_object_get(report, "accuracy");
    char first[160] = "";
    size_t i;

    if (!g || !g->set)
        return 0;
    if (!(rows = json_array()))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    if (g->set & SLIM_GATE_MAX_REL_ERROR) {
        double worst = 0;
        const char *name = NULL;
        json_array_foreach(json_object_get(report, "tensors"), i, t) {
            double e = json_number_value(json_object_get(t, "rel_error"));
            if (!name || e > worst) {
                worst = e;
                name = json_string_value(json_object_get(t, "name"));
            }
        }
        if (!verdict(rows, "max_rel_error", g->max_rel_error, worst, worst <= g->max_rel_error,
                     name) && !first[0])
            snprintf(first, sizeof first, "gates.max_rel_error: tensor '%.60s' has relative "
                     "error %.4g, over the bound %.4g", name ? name : "?", worst,
                     g->max_rel_error);
    }
    if (g->set & SLIM_GATE_MIN_RATIO) {
        double ratio = json_number_value(json_object_get(json_object_get(report, "totals"),
                                                         "ratio"));
        if (!verdict(rows, "min_ratio", g->min_ratio, ratio, ratio >= g->min_ratio, NULL) &&
            !first[0])
            snprintf(first, sizeof first, "gates.min_ratio: the compression ratio is %.4g, "
                     "under the bound %.4g", ratio, g->min_ratio);
    }
    if (g->set & (SLIM_GATE_MIN_ACCURACY | SLIM_GATE_MAX_ACCURACY_DROP)) {
        json_t *b = json_object_get(acc, "before"), *a = json_object_get(acc, "after");
        double before = json_is_number(b) ? json_number_value(b) : NAN;
        double after = json_is_number(a) ? json_number_value(a) : NAN;
        if (g->set & SLIM_GATE_MIN_ACCURACY &&
            !verdict(rows, "min_accuracy", g->min_accuracy, after,
                     isfinite(after) && after >= g->min_accuracy, NULL) && !first[0]) {
            if (isfinite(after))
                snprintf(first, sizeof first, "gates.min_accuracy: top-1 accuracy is %.4f, "
                         "under the bound %.4f", after, g->min_accuracy);
            else
                snprintf(first, sizeof first, "gates.min_accuracy: no accuracy was measured "
                         "(bound %.4f)", g->min_accuracy);
        }
        if (g->set & SLIM_GATE_MAX_ACCURACY_DROP) {
            double drop = before - after;
            if (!verdict(rows, "max_accuracy_drop", g->max_accuracy_drop, drop,
                         isfinite(drop) && drop <= g->max_accuracy_drop, NULL) && !first[0]) {
                if (isfinite(drop))
                    snprintf(first, sizeof first, "gates.max_accuracy_drop: top-1 accuracy "
                             "dropped by %.4f (%.4f -> %.4f), over the bound %.4f", drop,
                             before, after, g->max_accuracy_drop);
                else
                    snprintf(first, sizeof first, "gates.max_accuracy_drop: no accuracy was "
                             "measured (bound %.4f)", g->max_accuracy_drop);
            }
        }
    }
    json_object_set_new(report, "gates", rows);
    if (first[0])
        return slim_error_set(err, SLIM_EGATE, "%s", first);
    return 0;
}
