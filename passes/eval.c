/*
 * eval.c - accuracy, agreement, output drift and speed of a compressed
 * model next to its original (eval.h).
 *
 * Both models are compiled by the engine and fed the same batches; for
 * each batch the original's outputs are kept while the artifact runs, so
 * agreement (the same top class) and drift are per sample, and the
 * figures need one pass over the data.  The artifact is opened from the
 * file the job wrote, not from the pipeline's memory, so a bug in the
 * writer shows here as lost accuracy instead of hiding behind correct
 * in-memory weights.
 *
 * The first graph output is taken as the class scores.  Cross-entropy
 * reads it as logits, unless the node that makes it is a Softmax
 * (probabilities) or LogSoftmax (log-probabilities).  Throughput counts
 * engine time only (samples / seconds in slim_engine_run, after one
 * untimed warm-up run each); latency is the mean engine time of one
 * batch of `batch` samples, which is what a user who is told "int8 is
 * smaller" also needs to know ("but slower?").
 */
#include <math.h>
#include <string.h>
#include "passes/eval.h"
#include "passes/engine/engine.h"
#include "passes/formats/dataset.h"

enum { RANDOM_SAMPLES = 32 };

enum out_kind { LOGITS, PROBS, LOG_PROBS };

static enum out_kind output_kind(const struct slim_onnx *m)
{
    const Onnx__GraphProto *g = m->graph;
    const char *name = g->n_output ? g->output[0]->name : NULL;
    for (size_t i = 0; name && i < g->n_node; i++)
        for (size_t k = 0; k < g->node[i]->n_output; k++)
            if (!strcmp(g->node[i]->output[k], name)) {
                if (!strcmp(g->node[i]->op_type, "Softmax"))
                    return PROBS;
                if (!strcmp(g->node[i]->op_type, "LogSoftmax"))
                    return LOG_PROBS;
                return LOGITS;
            }
    return LOGITS;
}

/* -log p(label) of one sample's scores y[0..k). */
static double cross_entropy(const float *y, int64_t k, int64_t label, enum out_kind kind)
{
    double mx = -INFINITY, s = 0.0;
    if (kind == PROBS)
        return -log(y[label] > 1e-30f ? (double)y[label] : 1e-30);
    if (kind == LOG_PROBS)
        return -(double)y[label];
    for (int64_t j = 0; j < k; j++)
        mx = y[j] > mx ? y[j] : mx;
    for (int64_t j = 0; j < k; j++)
        s += exp((double)y[j] - mx);
    return -((double)y[label] - mx - log(s));
}

static int64_t argmax(const float *y, int64_t k)
{
    int64_t best = 0;
    for (int64_t j = 1; j < k; j++)
        if (y[j] > y[best])
            best = j;
    return best;
}

/* 1 if label is among the 5 highest of y[0..k). */
static int in_top5(const float *y, int64_t k, int64_t label)
{
    int64_t higher = 0;
    for (int64_t j = 0; j < k; j++)
        higher += y[j] > y[label] || (y[j] == y[label] && j < label);
    return higher < 5;
}

int slim_eval_check(struct slim_onnx *before, struct slim_error *err)
{
    return slim_engine_check(before, err);
}

struct side {
    struct slim_engine *e;
    double seconds;
    int64_t runs;
    int64_t top1, top5;
    double loss;
};

static int run_side(struct side *s, const float *x, int64_t nb, const float **y, int64_t *k,
                    struct slim_error *err)
{
    double t0 = slim_now();
    int rc = slim_engine_run(s->e, x, nb, y, k, err);
    s->seconds += slim_now() - t0;
    s->runs++;
    return rc;
}

static json_t *pair(double before, double after)
{
    return json_pack("{s:f, s:f}", "before", before, "after", after);
}

int slim_eval_run(struct slim_onnx *before, const char *after_path,
                  const struct slim_eval_opts *o, json_t **out, struct slim_error *err)
{
    struct slim_onnx after;
    struct slim_dataset ds;
    struct side b, a;
    int64_t dims[SLIM_MAX_DIMS], per, n, batch = o->batch > 0 ? o->batch : 100, k = 0;
    int64_t agree = 0;
    const char *in_name;
    float *keep = NULL, *rnd = NULL;
    const float *x;
    double d2 = 0.0, r2 = 0.0, dmax = 0.0;
    enum out_kind kind = output_kind(before);
    int nd, rc, have_after = 0;

    *out = NULL;
    memset(&ds, 0, sizeof ds);
    memset(&b, 0, sizeof b);
    memset(&a, 0, sizeof a);
    if ((rc = slim_engine_new_limited(before, o->memory_limit, &b.e, err)))
        goto out;
    if ((rc = slim_onnx_open(after_path, &after, err))) {
        slim_error_prefix(err, "the artifact as written");
        goto out;
    }
    have_after = 1;
    if ((rc = slim_engine_new_limited(&after, o->memory_limit, &a.e, err))) {
        slim_error_prefix(err, "the artifact");
        goto out;
    }
    per = slim_engine_input(b.e, &in_name, dims, &nd);
    if (o->dataset) {
        if ((rc = slim_dataset_load(o->dataset, o->max_samples, &ds, err))) {
            slim_error_prefix(err, "eval.dataset");
            goto out;
        }
        /* a model that leaves its sample dims symbolic takes the data's */
        if (per <= 0 && !(rc = slim_engine_set_sample_shape(b.e, ds.shape, ds.ndim, err)) &&
            !(rc = slim_engine_set_sample_shape(a.e, ds.shape, ds.ndim, err)))
            per = slim_engine_input(b.e, &in_name, dims, &nd);
        if (rc)
            goto out;
    }
    if (per <= 0) {
        rc = slim_error_set(err, SLIM_EINVAL, "the model's input '%.100s' has dims of unknown "
                            "size besides the batch: the engine cannot evaluate it", in_name);
        goto out;
    }
    if (o->dataset) {
        if (ds.sample_size != per) {
            rc = slim_error_set(err, SLIM_EINVAL, "eval.dataset: its samples have %lld values, "
                                "the model's input '%.100s' takes %lld per sample",
                                (long long)ds.sample_size, in_name, (long long)per);
            goto out;
        }
        n = ds.n;
        x = ds.x;
    } else {
        /* no data: a seeded uniform [0, 1) batch, to see how far the
         * outputs moved */
        uint64_t st = 0x9E3779B97F4A7C15ull;
        n = RANDOM_SAMPLES;
        if (!(rnd = slim_aligned_alloc((size_t)(n * per) * sizeof *rnd))) {
            rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
            goto out;
        }
        for (int64_t i = 0; i < n * per; i++) {
            st ^= st << 13, st ^= st >> 7, st ^= st << 17;
            rnd[i] = (float)((st >> 40) * (1.0 / (1u << 24)));
        }
        x = rnd;
        batch = n;
    }
    if (n == 0) {
        rc = slim_error_set(err, SLIM_EINVAL, "eval.dataset: no samples");
        goto out;
    }
    /* one untimed run each first: buffers sized and BLAS threads woken
     * are not the model's speed */
    {
        const float *y;
        int64_t ky;
        if ((rc = slim_engine_run(b.e, x, n < batch ? n : batch, &y, &ky, err)) ||
            (rc = slim_engine_run(a.e, x, n < batch ? n : batch, &y, &ky, err)))
            goto out;
    }
    for (int64_t i = 0; i < n; i += batch) {
        int64_t nb = n - i < batch ? n - i : batch, kb, ka;
        const float *yb, *ya;
        if (o->check && o->check(o->check_ud, (double)i / (double)n)) {
            rc = slim_error_set(err, SLIM_ECANCELED, "canceled");
            goto out;
        }
        if ((rc = run_side(&b, x + i * per, nb, &yb, &kb, err)))
            goto out;
        if (!keep && !(keep = slim_aligned_alloc((size_t)(batch * kb) * sizeof *keep))) {
            rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
            goto out;
        }
        memcpy(keep, yb, (size_t)(nb * kb) * sizeof *keep);
        if ((rc = run_side(&a, x + i * per, nb, &ya, &ka, err))) {
            slim_error_prefix(err, "the artifact");
            goto out;
        }
        if (ka != kb || (k && k != kb)) {
            rc = slim_error_set(err, SLIM_EINTERNAL, "the artifact gives %lld outputs per "
                                "sample, the original %lld", (long long)ka, (long long)kb);
            goto out;
        }
        k = kb;
        for (int64_t s = 0; s < nb; s++) {
            const float *p = keep + s * k, *q = ya + s * k;
            int64_t cb = argmax(p, k), ca = argmax(q, k);
            agree += cb == ca;
            for (int64_t j = 0; j < k; j++) {
                double d = (double)q[j] - (double)p[j];
                d2 += d * d;
                r2 += (double)p[j] * (double)p[j];
                dmax = fabs(d) > dmax ? fabs(d) : dmax;
            }
            if (ds.labels) {
                int64_t lab = ds.labels[i + s];
                if (lab >= k) {
                    rc = slim_error_set(err, SLIM_EINVAL, "eval.dataset: label %lld of sample "
                                        "%lld is not one of the model's %lld outputs",
                                        (long long)lab, (long long)(i + s), (long long)k);
                    goto out;
                }
                b.top1 += cb == lab;
                a.top1 += ca == lab;
                b.top5 += in_top5(p, k, lab);
                a.top5 += in_top5(q, k, lab);
                b.loss += cross_entropy(p, k, lab, kind);
                a.loss += cross_entropy(q, k, lab, kind);
            }
        }
    }
    *out = json_pack("{s:I, s:I, s:f, s:{s:f, s:f}, s:o, s:o, s:s}", "samples", (json_int_t)n,
                     "batch_size", (json_int_t)batch, "agreement", (double)agree / (double)n,
                     "output_drift", "relative_error", r2 > 0 ? sqrt(d2 / r2) : sqrt(d2),
                     "max_abs_error", dmax, "throughput",
                     pair(b.seconds > 0 ? (double)n / b.seconds : 0.0,
                          a.seconds > 0 ? (double)n / a.seconds : 0.0),
                     "latency_ms", pair(1e3 * b.seconds / (double)b.runs,
                                        1e3 * a.seconds / (double)a.runs),
                     "measured_on", "the artifact as written, re-read from disk");
    if (!*out) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
        goto out;
    }
    if (o->dataset_id)
        json_object_set_new(*out, "dataset", json_string(o->dataset_id));
    else
        json_object_set_new(*out, "input", json_string("uniform [0, 1), seeded"));
    if (ds.labels) {
        json_object_set_new(*out, "before", json_real((double)b.top1 / (double)n));
        json_object_set_new(*out, "after", json_real((double)a.top1 / (double)n));
        if (k > 5)
            json_object_set_new(*out, "top5", pair((double)b.top5 / (double)n,
                                                   (double)a.top5 / (double)n));
        json_object_set_new(*out, "cross_entropy", pair(b.loss / (double)n, a.loss / (double)n));
    }
out:
    slim_engine_free(b.e);
    slim_engine_free(a.e);
    if (have_after)
        slim_onnx_release(&after);
    slim_dataset_release(&ds);
    slim_aligned_free(keep);
    slim_aligned_free(rnd);
    return rc;
}
