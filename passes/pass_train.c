/*
 * pass_train.c - the training passes: distill and finetune, run by the
 * trainer of engine/train.h.
 *
 *   {"op": "distill", "student": "mdl_..." | {"hidden": [w, ...]} |
 *    {"from": "lowrank", "rank_ratio": f}, "dataset", "temperature",
 *    "alpha", "epochs", "batch_size", "lr", "optimizer", "seed",
 *    "weight_decay", "validation_fraction"}
 *   {"op": "finetune", "dataset", "epochs", "lr", "optimizer",
 *    "batch_size", "seed", "weight_decay", "validation_fraction"}
 *
 * Both are whole-model passes: a trainer needs every weight at once and
 * passes over the data many times, which the streaming pipeline (one
 * tensor at a time, pass.h) cannot give it.  So the pipeline cuts the job
 * at each training pass (pipeline.c): the passes before it stream into
 * an intermediate ONNX file holding the decoded fp32 values, the
 * training pass reads that file whole and writes the trained model as
 * another ONNX file, and the passes after it stream from there.  What
 * the streamed passes did to each tensor reaches the training pass as
 * the "carry" (name -> {"pruned", "encoded"}), and becomes the trainer's
 * constraints here:
 *   pruned              a mask: the weights that are zero stay exactly zero;
 *   encoded, cluster    shared weights: the distinct values are the
 *                       codebook, and the codebook is what trains;
 *   encoded, quantize   fake quantization with a straight-through
 *                       estimator, through the quantize pass's own
 *                       encoder (what the artifact will decode to), and
 *                       the float master weights are written out: the
 *                       pipeline re-applies the encoding after training.
 *
 * distill: the teacher is the model as it stands (the intermediate file);
 * the engine runs it once over the dataset for its logits (or
 * probabilities, for a graph ending in Softmax), and the student learns
 * from them and the labels (train.h has the loss).  The student is an
 * uploaded ONNX model (resolved by the caller to a file), an MLP built
 * from the teacher's input and output sizes (formats/onnx_build.c), or
 * the teacher factorised by the lowrank pass (the pipeline runs it).
 *
 * "validation_fraction" holds out a seeded random part of the dataset:
 * it is never trained on, and every epoch's accuracy on it goes into the
 * job's training progress and the report.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "passes/pass.h"
#include "passes/engine/engine.h"
#include "passes/engine/train.h"
#include "passes/formats/dataset.h"
#include "passes/formats/onnx_build.h"

enum { STUDENT_NONE, STUDENT_MODEL, STUDENT_HIDDEN, STUDENT_LOWRANK };

struct train_cfg {
    int distill;
    char *dataset;
    double temperature, alpha, lr, weight_decay, val_frac, momentum;
    long epochs, batch;
    int optimizer;
    long seed;
    int student;
    char *student_model;
    int64_t hidden[SLIM_MLP_MAX_HIDDEN];
    int n_hidden;
    double rank_ratio;
};

static const char *const distill_keys[] = {"student", "dataset", "temperature", "alpha",
                                           "epochs", "batch_size", "lr", "optimizer", "seed",
                                           "weight_decay", "momentum", "validation_fraction",
                                           NULL};
static const char *const finetune_keys[] = {"dataset", "epochs", "batch_size", "lr",
                                            "optimizer", "seed", "weight_decay", "momentum",
                                            "validation_fraction", NULL};
static const char *const opt_names[] = {"sgd", "adam", NULL};

static int id_string(json_t *v, const char *where, const char *key, const char *what,
                     char **out, struct slim_error *err)
{
    if (!json_is_string(v) || !json_string_length(v) || json_string_length(v) > 100)
        return slim_error_set(err, SLIM_ESPEC, "%s.%s: required, %s", where, key, what);
    if (!(*out = slim_strdup(json_string_value(v))))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    return 0;
}

static int parse_student(json_t *s, const char *where, struct train_cfg *cfg,
                         struct slim_error *err)
{
    const char *key;
    json_t *v;
    if (!s)
        return slim_error_set(err, SLIM_ESPEC, "%s.student: required: a model id (mdl_...), "
                              "{\"hidden\": [widths]} or {\"from\": \"lowrank\", "
                              "\"rank_ratio\": f}", where);
    if (json_is_string(s)) {
        cfg->student = STUDENT_MODEL;
        return id_string(s, where, "student", "a model id", &cfg->student_model, err);
    }
    if (!json_is_object(s))
        return slim_error_set(err, SLIM_ESPEC, "%s.student: expected a model id, {\"hidden\": "
                              "[...]} or {\"from\": \"lowrank\", \"rank_ratio\": f}", where);
    if ((v = json_object_get(s, "hidden"))) {
        size_t i;
        json_t *h;
        json_object_foreach(s, key, h) {
            if (strcmp(key, "hidden"))
                return slim_error_set(err, SLIM_ESPEC, "%s.student: unknown key '%.40s' "
                                      "(expected hidden)", where, key);
        }
        if (!json_is_array(v) || json_array_size(v) > SLIM_MLP_MAX_HIDDEN)
            return slim_error_set(err, SLIM_ESPEC, "%s.student.hidden: expected an array of "
                                  "at most %d layer widths", where, SLIM_MLP_MAX_HIDDEN);
        json_array_foreach(v, i, h) {
            if (!json_is_integer(h) || json_integer_value(h) < 1 ||
                json_integer_value(h) > 65536)
                return slim_error_set(err, SLIM_ESPEC, "%s.student.hidden[%zu]: expected an "
                                      "integer from 1 to 65536", where, i);
            cfg->hidden[i] = json_integer_value(h);
        }
        cfg->n_hidden = (int)json_array_size(v);
        cfg->student = STUDENT_HIDDEN;
        return 0;
    }
    if ((v = json_object_get(s, "from"))) {
        json_object_foreach(s, key, v) {
            if (strcmp(key, "from") && strcmp(key, "rank_ratio"))
                return slim_error_set(err, SLIM_ESPEC, "%s.student: unknown key '%.40s' "
                                      "(expected from, rank_ratio)", where, key);
        }
        v = json_object_get(s, "from");
        if (!json_is_string(v) || strcmp(json_string_value(v), "lowrank"))
            return slim_error_set(err, SLIM_ESPEC, "%s.student.from: expected 'lowrank'",
                                  where);
        v = json_object_get(s, "rank_ratio");
        if (!json_is_number(v) || !(json_number_value(v) > 0 && json_number_value(v) <= 1))
            return slim_error_set(err, SLIM_ESPEC, "%s.student.rank_ratio: required, a "
                                  "number in (0, 1]", where);
        cfg->rank_ratio = json_number_value(v);
        cfg->student = STUDENT_LOWRANK;
        return 0;
    }
    return slim_error_set(err, SLIM_ESPEC, "%s.student: expected \"hidden\" or \"from\"",
                          where);
}

static int train_parse(json_t *spec, const char *where, void *cfgp, int distill,
                       struct slim_error *err)
{
    struct train_cfg *cfg = cfgp;
    int rc, opt = 1;
    cfg->distill = distill;
    if (json_object_get(spec, "include") || json_object_get(spec, "exclude"))
        return slim_error_set(err, SLIM_ESPEC, "%s: include/exclude do not apply to %s (it "
                              "trains the whole model)", where, distill ? "distill" : "finetune");
    cfg->temperature = 4.0;
    cfg->alpha = distill ? 0.5 : 0.0;
    cfg->lr = 1e-3;
    cfg->epochs = distill ? 10 : 3;
    cfg->batch = 128;
    cfg->momentum = 0.9;
    if ((rc = id_string(json_object_get(spec, "dataset"), where, "dataset",
                        "the id of an uploaded dataset (ds_...)", &cfg->dataset, err)) ||
        (rc = slim_spec_int(spec, where, "epochs", 1, 10000, &cfg->epochs, err)) ||
        (rc = slim_spec_int(spec, where, "batch_size", 1, 65536, &cfg->batch, err)) ||
        (rc = slim_spec_num(spec, where, "lr", 1e-12, 10.0, &cfg->lr, err)) ||
        (rc = slim_spec_enum(spec, where, "optimizer", opt_names, &opt, err)) ||
        (rc = slim_spec_int(spec, where, "seed", 0, 2147483647L, &cfg->seed, err)) ||
        (rc = slim_spec_num(spec, where, "weight_decay", 0.0, 1.0, &cfg->weight_decay, err)) ||
        (rc = slim_spec_num(spec, where, "momentum", 0.0, 0.999, &cfg->momentum, err)) ||
        (rc = slim_spec_num(spec, where, "validation_fraction", 0.0, 0.9, &cfg->val_frac,
                            err)))
        return rc;
    if (json_object_get(spec, "validation_fraction") && cfg->val_frac <= 0.0)
        return slim_error_set(err, SLIM_ESPEC, "%s.validation_fraction: expected a number "
                              "above 0 and at most 0.9", where);
    cfg->optimizer = opt == 0 ? SLIM_OPT_SGD : SLIM_OPT_ADAM;
    if (!distill)
        return 0;
    if ((rc = slim_spec_num(spec, where, "temperature", 0.01, 100.0, &cfg->temperature, err)) ||
        (rc = slim_spec_num(spec, where, "alpha", 0.0, 1.0, &cfg->alpha, err)))
        return rc;
    return parse_student(json_object_get(spec, "student"), where, cfg, err);
}

static int distill_parse(json_t *spec, const char *where, void *cfg, struct slim_error *err)
{
    return train_parse(spec, where, cfg, 1, err);
}

static int finetune_parse(json_t *spec, const char *where, void *cfg, struct slim_error *err)
{
    return train_parse(spec, where, cfg, 0, err);
}

static void train_release(void *cfgp)
{
    struct train_cfg *cfg = cfgp;
    if (!cfg)   /* the spec failed before this pass's cfg was made */
        return;
    slim_free(cfg->dataset);
    slim_free(cfg->student_model);
}

void slim_train_cfg_refs(const void *cfgp, const char **dataset, const char **student,
                         int *needs_labels, double *rank_ratio)
{
    const struct train_cfg *cfg = cfgp;
    *dataset = cfg->dataset;
    *student = cfg->student == STUDENT_MODEL ? cfg->student_model : NULL;
    *needs_labels = !cfg->distill || cfg->alpha < 1.0;
    *rank_ratio = cfg->student == STUDENT_LOWRANK ? cfg->rank_ratio : 0.0;
}

/* ---- data ---------------------------------------------------------------- */

struct split {
    float *x;
    int64_t *labels;
    float *teacher;
    int64_t n;
};

static void split_release(struct split *s)
{
    slim_aligned_free(s->x);
    slim_free(s->labels);
    slim_aligned_free(s->teacher);
    memset(s, 0, sizeof *s);
}

static uint64_t xs_next(uint64_t *s)
{
    *s ^= *s >> 12, *s ^= *s << 25, *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1Dull;
}

/* Holds out round(n * frac) samples, chosen by a seeded shuffle, into
 * val; the rest (in their order) into tr. */
static int split_data(const struct slim_dataset *ds, double frac, uint64_t seed,
                      struct split *tr, struct split *val, struct slim_error *err)
{
    int64_t n = ds->n, nv = (int64_t)llround((double)n * frac), per = ds->sample_size;
    int64_t *perm = slim_malloc((size_t)(n ? n : 1) * sizeof *perm);
    unsigned char *held = slim_calloc((size_t)(n ? n : 1), 1);
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 0xD1B54A32D192ED03ull;
    int rc = 0;
    if (frac > 0 && nv < 1)
        nv = 1;
    if (nv >= n)
        nv = n - 1;
    tr->n = n - nv;
    val->n = nv;
    tr->x = slim_aligned_alloc((size_t)(tr->n * per) * sizeof(float) + 1);
    val->x = slim_aligned_alloc((size_t)(val->n * per) * sizeof(float) + 1);
    if (ds->labels) {
        tr->labels = slim_malloc((size_t)tr->n * sizeof(int64_t) + 1);
        val->labels = slim_malloc((size_t)val->n * sizeof(int64_t) + 1);
    }
    if (!perm || !held || !tr->x || !val->x || (ds->labels && (!tr->labels || !val->labels))) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory splitting the dataset");
        goto out;
    }
    for (int64_t i = 0; i < n; i++)
        perm[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)(xs_next(&s) % (uint64_t)(i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (int64_t i = 0; i < nv; i++)
        held[perm[i]] = 1;
    for (int64_t i = 0, a = 0, b = 0; i < n; i++) {
        struct split *d = held[i] ? val : tr;
        int64_t at = held[i] ? b++ : a++;
        memcpy(d->x + at * per, ds->x + i * per, (size_t)per * sizeof(float));
        if (ds->labels)
            d->labels[at] = ds->labels[i];
    }
out:
    slim_free(perm);
    slim_free(held);
    return rc;
}

/* 1 if m's first output is made by a Softmax (probabilities). */
static int ends_in_softmax(const struct slim_onnx *m)
{
    const Onnx__GraphProto *g = m->graph;
    const char *name = g->n_output ? g->output[0]->name : NULL;
    for (size_t i = 0; name && i < g->n_node; i++)
        for (size_t k = 0; k < g->node[i]->n_output; k++)
            if (!strcmp(g->node[i]->output[k], name))
                return !strcmp(g->node[i]->op_type, "Softmax");
    return 0;
}

/* ---- one run --------------------------------------------------------------- */

struct trun {
    const struct train_cfg *cfg;
    struct slim_train_run *tr;
    struct slim_trainer *t;
    json_t *history;
    int64_t classes;
    double last_loss, last_val;
    int epochs_done;
};

static json_t *num_or_null(double v)
{
    return isfinite(v) ? json_real(v) : json_null();
}

/* The job's training state, for GET /v1/jobs/{id}. */
static void publish(struct trun *r, int epoch, double loss, double val_acc)
{
    json_t *st;
    if (!r->tr->training)
        return;
    st = json_pack("{s:I, s:s, s:i, s:i, s:o, s:o, s:O}", "pass", (json_int_t)r->tr->index,
                   "op", r->cfg->distill ? "distill" : "finetune", "epoch", epoch, "epochs",
                   (int)r->cfg->epochs, "loss", num_or_null(loss), "val_accuracy",
                   num_or_null(val_acc), "history", r->history);
    if (st)
        r->tr->training(r->tr->training_ud, st);
    json_decref(st);
}

static int on_epoch(void *ud, const struct slim_train_progress *p)
{
    struct trun *r = ud;
    json_t *h = json_pack("{s:i, s:o, s:o, s:o, s:o, s:f, s:f}", "epoch", p->epoch, "loss",
                          num_or_null(p->loss), "accuracy", num_or_null(p->accuracy),
                          "val_loss", num_or_null(p->val_loss), "val_accuracy",
                          num_or_null(p->val_accuracy), "seconds", p->seconds,
                          "samples_per_s", p->samples_per_s);
    if (h)
        json_array_append_new(r->history, h);
    r->last_loss = p->loss;
    r->last_val = p->val_accuracy;
    r->epochs_done = p->epoch;
    publish(r, p->epoch, p->loss, p->val_accuracy);
    return slim_train_check(r->tr, (double)p->epoch / (double)(p->epochs ? p->epochs : 1));
}

/* Before every batch: the job's progress within this pass, and a cancel
 * stops the fit before the batch. */
static int on_batch(void *ud)
{
    struct trun *r = ud;
    struct slim_train_progress p;
    slim_trainer_progress(r->t, &p);
    return slim_train_check(r->tr, p.steps ? (double)p.step / (double)p.steps : 0.0);
}

int slim_train_check(struct slim_train_run *tr, double frac)
{
    double p = frac < 0 ? -1.0 : tr->p_lo + (tr->p_hi - tr->p_lo) * (frac > 1 ? 1 : frac);
    return tr->progress && tr->progress(tr->progress_ud, p, tr->stage);
}

/* Fake quantization through the encoding pass itself: the values a
 * reader of the artifact would decode from w. */
struct fq {
    const struct slim_pass_ops *ops;
    const void *cfg;
};

static void fake_quant(void *ud, const char *name, const float *w, float *wq, int ndim,
                       const int64_t *dims)
{
    const struct fq *f = ud;
    struct slim_work work;
    struct slim_wt t;
    struct slim_error err;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= dims[i];
    memset(&work, 0, sizeof work);
    memset(&t, 0, sizeof t);
    t.name = t.origin = (char *)name;
    t.dtype = SLIM_DT_F32;
    t.ndim = ndim;
    memcpy(t.shape, dims, (size_t)ndim * sizeof *dims);
    t.rows = ndim ? dims[0] : 1;
    t.cols = t.rows ? n / t.rows : 0;
    t.scheme = SLIM_SCHEME_DENSE;
    t.dense_dtype = SLIM_DT_F32;
    t.val = slim_aligned_alloc((size_t)n * sizeof(float) + 1);
    work.wts = &t;
    work.n = work.cap = 1;
    work.threads = 1;
    work.dequantize_output = 1;   /* the decoded values are what we want */
    if (t.val) {
        memcpy(t.val, w, (size_t)n * sizeof(float));
        if (f->ops->tensor(f->cfg, &work, 0, &err) == 0 && t.val) {
            memcpy(wq, t.val, (size_t)n * sizeof(float));
            w = NULL;
        }
    }
    if (w) /* out of memory: the master weights as they are */
        memcpy(wq, w, (size_t)n * sizeof(float));
    slim_wt_clear_outs(&t);
    slim_aligned_free(t.val);
    json_decref(t.report_extra);
}

/* The constraints the passes before a finetune imposed (tr->carry). */
static int constrain(struct trun *r, struct fq *fq, struct slim_error *err)
{
    size_t np = slim_trainer_n_params(r->t);
    int rc = 0, masked = 0, shared = 0, quant = 0;
    for (size_t i = 0; i < np && !rc; i++) {
        const char *name;
        int64_t dims[SLIM_MAX_DIMS], n;
        int ndim;
        const float *v;
        json_t *c;
        n = slim_trainer_param_info(r->t, i, &name, &ndim, dims);
        c = json_object_get(r->tr->carry, name);
        if (!c || n <= 0)
            continue;
        int pruned = json_is_true(json_object_get(c, "pruned"));
        int encoded = json_is_true(json_object_get(c, "encoded"));
        if ((rc = slim_trainer_param(r->t, name, &v, &n, err)))
            break;
        if (encoded && r->tr->encoding == &slim_pass_cluster) {
            /* the distinct values are the codebook (at most 256) */
            float book[256];
            int k = 0;
            int32_t *idx = slim_malloc((size_t)n * sizeof *idx);
            if (!idx)
                return slim_error_set(err, SLIM_ENOMEM, "out of memory");
            for (int64_t j = 0; j < n && !rc; j++) {
                int c2 = 0;
                if (pruned && v[j] == 0.0f) {
                    idx[j] = -1;
                    continue;
                }
                while (c2 < k && book[c2] != v[j])
                    c2++;
                if (c2 == k) {
                    if (k == 256)
                        rc = slim_error_set(err, SLIM_EINTERNAL, "tensor '%s': more than 256 "
                                            "distinct values after clustering", name);
                    else
                        book[k++] = v[j];
                }
                idx[j] = c2;
            }
            if (!rc && k > 0)
                rc = slim_trainer_share(r->t, name, idx, book, k, n, err);
            slim_free(idx);
            shared++;
            continue;
        }
        if (pruned) {
            uint8_t *keep = slim_malloc((size_t)n + 1);
            if (!keep)
                return slim_error_set(err, SLIM_ENOMEM, "out of memory");
            for (int64_t j = 0; j < n; j++)
                keep[j] = v[j] != 0.0f;
            rc = slim_trainer_mask(r->t, name, keep, n, err);
            slim_free(keep);
            masked++;
        }
        if (!rc && encoded && r->tr->encoding) {
            rc = slim_trainer_fake_quant(r->t, name, fake_quant, fq, err);
            quant++;
        }
    }
    if (!rc)
        json_object_set_new(r->tr->report, "constraints",
                            json_pack("{s:i, s:i, s:i}", "masked", masked, "shared", shared,
                                      "fake_quantized", quant));
    return rc;
}

/* Runs the engine over data (n samples) for the teacher's outputs. */
static int teacher_outputs(struct slim_engine *e, struct split *s, int64_t per, int64_t *k,
                           struct slim_train_run *tr, struct slim_error *err)
{
    const int64_t batch = 256;
    int rc = 0;
    for (int64_t i = 0; i < s->n; i += batch) {
        int64_t nb = s->n - i < batch ? s->n - i : batch, ky;
        const float *y;
        if (slim_train_check(tr, -1.0))
            return slim_error_set(err, SLIM_ECANCELED, "canceled");
        if ((rc = slim_engine_run(e, s->x + i * per, nb, &y, &ky, err)))
            return rc;
        if (!s->teacher) {
            *k = ky;
            if (ky <= 0 ||
                !(s->teacher = slim_aligned_alloc((size_t)(s->n * ky) * sizeof(float) + 1)))
                return slim_error_set(err, ky <= 0 ? SLIM_EINVAL : SLIM_ENOMEM,
                                      ky <= 0 ? "the teacher's output has no per-sample size"
                                              : "out of memory");
        }
        if (ky != *k)
            return slim_error_set(err, SLIM_EINTERNAL, "the teacher's outputs changed size");
        memcpy(s->teacher + i * ky, y, (size_t)(nb * ky) * sizeof(float));
    }
    return 0;
}

static int run_train(const void *cfgp, struct slim_train_run *tr, struct slim_error *err)
{
    const struct train_cfg *cfg = cfgp;
    struct slim_dataset ds;
    struct split trs, vals;
    struct slim_onnx teacher, student;
    struct slim_engine *e = NULL;
    struct slim_train_opts o;
    struct slim_train_data dtr, dval;
    struct slim_train_hooks hooks;
    struct trun r;
    struct fq fq = {tr->encoding, tr->encoding_cfg};
    int64_t dims[SLIM_MAX_DIMS], per, k = 0;
    int nd, rc, have_teacher = 0, have_student = 0, teacher_probs = 0;
    double t0 = slim_now(), t_fit = 0, val_acc = NAN, val_loss = NAN;
    const char *in_name;

    memset(&ds, 0, sizeof ds);
    memset(&trs, 0, sizeof trs);
    memset(&vals, 0, sizeof vals);
    memset(&r, 0, sizeof r);
    r.cfg = cfg;
    r.tr = tr;
    r.last_loss = r.last_val = NAN;
    if (!(r.history = json_array()))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    if ((rc = slim_dataset_load(tr->dataset, 0, &ds, err))) {
        slim_error_prefix(err, "dataset");
        goto out;
    }
    if (ds.n < 2) {
        rc = slim_error_set(err, SLIM_EINVAL, "dataset: %lld samples: training needs at least 2",
                            (long long)ds.n);
        goto out;
    }
    if (!ds.labels && (!cfg->distill || cfg->alpha < 1.0)) {
        rc = slim_error_set(err, SLIM_EINVAL, cfg->distill ? "alpha: the dataset has no labels, "
                            "so only alpha 1 (the teacher alone) can train"
                            : "dataset: has no labels, which finetune trains on");
        goto out;
    }
    if ((rc = split_data(&ds, cfg->val_frac, (uint64_t)cfg->seed, &trs, &vals, err)))
        goto out;
    per = ds.sample_size;
    /* the model as it stands: the teacher (distill) or what trains */
    if ((rc = slim_onnx_open(tr->in_path, &teacher, err)))
        goto out;
    have_teacher = 1;
    if (cfg->distill) {
        int64_t ed;
        if ((rc = slim_engine_new_limited(&teacher, tr->memory_limit, &e, err))) {
            slim_error_prefix(err, "the teacher");
            goto out;
        }
        ed = slim_engine_input(e, &in_name, dims, &nd);
        if (ed <= 0 && (rc = slim_engine_set_sample_shape(e, ds.shape, ds.ndim, err)))
            goto out;
        ed = slim_engine_input(e, &in_name, dims, &nd);
        if (ed != per) {
            rc = slim_error_set(err, SLIM_EINVAL, "dataset: its samples have %lld values, the "
                                "teacher's input '%.100s' takes %lld", (long long)per, in_name,
                                (long long)ed);
            goto out;
        }
        tr->stage = "distill: teacher";
        if ((rc = teacher_outputs(e, &trs, per, &k, tr, err)) ||
            (vals.n && (rc = teacher_outputs(e, &vals, per, &k, tr, err))))
            goto out;
        teacher_probs = ends_in_softmax(&teacher);
        tr->stage = "distill";
        /* the student */
        if (cfg->student == STUDENT_HIDDEN) {
            struct slim_mlp_shape s;
            memset(&s, 0, sizeof s);
            s.input_name = teacher.graph->input[0]->name;
            for (size_t i = 0; i < teacher.graph->n_input; i++) {
                int init = 0;
                for (size_t j = 0; j < teacher.graph->n_initializer && !init; j++)
                    init = !strcmp(teacher.graph->initializer[j]->name,
                                   teacher.graph->input[i]->name);
                if (!init) {
                    s.input_name = teacher.graph->input[i]->name;
                    break;
                }
            }
            s.output_name = teacher.graph->output[0]->name;
            s.ndim = nd;
            memcpy(s.dims, dims, sizeof s.dims);
            s.classes = k;
            s.n_hidden = cfg->n_hidden;
            memcpy(s.hidden, cfg->hidden, sizeof s.hidden);
            s.seed = (uint64_t)cfg->seed;
            if ((rc = slim_onnx_mlp(&s, tr->out_path, err)))
                goto out;
        } else if (cfg->student == STUDENT_LOWRANK) {
            if (!tr->lowrank) {
                rc = slim_error_set(err, SLIM_EINTERNAL, "no lowrank student maker");
                goto out;
            }
            tr->stage = "distill: lowrank student";
            if ((rc = tr->lowrank(tr->lowrank_ud, tr->in_path, tr->out_path, cfg->rank_ratio,
                                  err)))
                goto out;
            tr->stage = "distill";
        }
        const char *spath = cfg->student == STUDENT_MODEL ? tr->student : tr->out_path;
        if (!spath) {
            rc = slim_error_set(err, SLIM_EINVAL, "student: no file given for model '%.64s'",
                                cfg->student_model);
            goto out;
        }
        if ((rc = slim_onnx_open(spath, &student, err))) {
            slim_error_prefix(err, "student");
            goto out;
        }
        have_student = 1;
    }
    slim_train_opts_init(&o);
    o.optimizer = cfg->optimizer;
    o.lr = (float)cfg->lr;
    o.momentum = (float)cfg->momentum;
    o.weight_decay = (float)cfg->weight_decay;
    o.batch_size = cfg->batch;
    o.epochs = (int)cfg->epochs;
    o.seed = (uint64_t)cfg->seed;
    o.temperature = (float)cfg->temperature;
    o.alpha = cfg->distill ? (float)cfg->alpha : 0.0f;
    o.max_bytes = tr->memory_limit;
    if ((rc = slim_trainer_new(have_student ? &student : &teacher, &o, &r.t, err))) {
        if (have_student)
            slim_error_prefix(err, "student");
        goto out;
    }
    if (slim_trainer_input(r.t, dims, &nd) <= 0 &&
        (rc = slim_trainer_set_sample_shape(r.t, ds.shape, ds.ndim, err)))
        goto out;
    if (slim_trainer_input(r.t, dims, &nd) != per) {
        rc = slim_error_set(err, SLIM_EINVAL, "dataset: its samples have %lld values, the %s "
                            "takes %lld", (long long)per, have_student ? "student" : "model",
                            (long long)slim_trainer_input(r.t, dims, &nd));
        goto out;
    }
    r.classes = slim_trainer_classes(r.t);
    if (cfg->distill && r.classes != k) {
        rc = slim_error_set(err, SLIM_EINVAL, "student: gives %lld outputs per sample, the "
                            "teacher %lld", (long long)r.classes, (long long)k);
        goto out;
    }
    if (!cfg->distill && tr->carry && (rc = constrain(&r, &fq, err)))
        goto out;
    dtr = (struct slim_train_data){trs.x, trs.labels, trs.teacher, teacher_probs, trs.n};
    dval = (struct slim_train_data){vals.x, vals.labels, vals.teacher, teacher_probs, vals.n};
    hooks = (struct slim_train_hooks){on_epoch, on_batch, &r};
    publish(&r, 0, NAN, NAN);
    t_fit = slim_now();
    rc = slim_trainer_fit(r.t, &dtr, vals.n ? &dval : NULL, &hooks, err);
    t_fit = slim_now() - t_fit;
    if (rc)
        goto out;
    if (vals.n && vals.labels &&
        (rc = slim_trainer_evaluate(r.t, &dval, &val_loss, &val_acc, err)))
        goto out;
    /* the trained weights into the model they came from, saved whole */
    if ((rc = slim_trainer_store(r.t, have_student ? &student : &teacher, err)) ||
        (rc = slim_onnx_save(have_student ? &student : &teacher, tr->out_path, err)))
        goto out;
    json_object_update_new(tr->report, json_pack(
        "{s:s, s:s, s:i, s:o, s:o, s:o, s:I, s:I, s:f, s:f, s:O}", "op",
        cfg->distill ? "distill" : "finetune", "dataset", cfg->dataset, "epochs",
        r.epochs_done, "final_loss", num_or_null(r.last_loss), "val_accuracy",
        num_or_null(val_acc), "val_loss", num_or_null(val_loss), "train_samples",
        (json_int_t)trs.n, "val_samples", (json_int_t)vals.n, "seconds", slim_now() - t0,
        "samples_per_s", t_fit > 0 ? (double)trs.n * (double)r.epochs_done / t_fit : 0.0,
        "history", r.history));
    if (cfg->distill) {
        const char *sk = cfg->student == STUDENT_MODEL ? "model"
                         : cfg->student == STUDENT_HIDDEN ? "mlp" : "lowrank";
        json_t *st = json_pack("{s:s}", "kind", sk);
        if (cfg->student == STUDENT_MODEL)
            json_object_set_new(st, "model", json_string(cfg->student_model));
        if (cfg->student == STUDENT_LOWRANK)
            json_object_set_new(st, "rank_ratio", json_real(cfg->rank_ratio));
        if (cfg->student == STUDENT_HIDDEN) {
            json_t *h = json_array();
            for (int i = 0; i < cfg->n_hidden; i++)
                json_array_append_new(h, json_integer(cfg->hidden[i]));
            json_object_set_new(st, "hidden", h);
        }
        {
            int64_t params = 0, dd[SLIM_MAX_DIMS];
            const char *nm;
            int ndd;
            for (size_t i = 0; i < slim_trainer_n_params(r.t); i++)
                params += slim_trainer_param_info(r.t, i, &nm, &ndd, dd);
            json_object_set_new(st, "params", json_integer(params));
        }
        json_object_set_new(st, "teacher_outputs", json_string(teacher_probs ? "probabilities"
                                                                              : "logits"));
        json_object_set_new(tr->report, "student", st);
        json_object_set_new(tr->report, "temperature", json_real(cfg->temperature));
        json_object_set_new(tr->report, "alpha", json_real(cfg->alpha));
    }
    publish(&r, r.epochs_done, r.last_loss, isfinite(val_acc) ? val_acc : r.last_val);
out:
    slim_trainer_free(r.t);
    slim_engine_free(e);
    if (have_student)
        slim_onnx_release(&student);
    if (have_teacher)
        slim_onnx_release(&teacher);
    slim_dataset_release(&ds);
    split_release(&trs);
    split_release(&vals);
    json_decref(r.history);
    return rc;
}

const struct slim_pass_ops slim_pass_distill = {
    .op = "distill",
    .stage = 0,
    .keys = distill_keys,
    .cfg_size = sizeof(struct train_cfg),
    .parse = distill_parse,
    .release = train_release,
    .model = run_train,
};

const struct slim_pass_ops slim_pass_finetune = {
    .op = "finetune",
    .stage = 0,
    .keys = finetune_keys,
    .cfg_size = sizeof(struct train_cfg),
    .parse = finetune_parse,
    .release = train_release,
    .model = run_train,
};
