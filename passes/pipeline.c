/*
 * pipeline.c - one job spec over one model: validate the spec, load the
 * model, run the passes in order, write the artifact, build the report.
 *
 * The spec is validated whole before anything runs (unknown keys, bad
 * values, an order of passes that makes no sense), so a job that was
 * accepted fails later only for reasons the spec could not show (a NaN
 * in the weights, a full disk).  Composition is checked with one rule:
 * passes go in non-decreasing stage (prune 1, lowrank 2, then the storage
 * encoding: cluster or quantize, 3), and at most one encoding runs, since
 * a tensor is stored one way.
 *
 * Progress: load takes the first 5 %, the passes share the next 85 %
 * evenly, write and report the last 10 %.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "passes/artifact.h"
#include "passes/pass.h"
#include "passes/report.h"
#include "passes/formats/source.h"
#include "passes/formats/writer.h"
#include "passes/formats/onnx.h"
#include "passes/eval.h"
#include "passes/gates.h"
#include "passes/engine/engine.h"
#include "passes/decode.h"

struct spec_pass {
    const struct slim_pass_ops *ops;
    void *cfg;
    struct slim_select sel;
    size_t index;            /* in the spec's "passes" */
};

struct slim_spec {
    struct spec_pass *passes;
    size_t n_passes;
    int dequantize;
    int sparse;
    int onnx_opset;          /* output.opset: upgrade an ONNX model to it; 0: keep */
    int float16_graph;       /* output.float16_graph: the whole ONNX graph in fp16 */
    int want_onnx;           /* output.format: 1 onnx, 0 safetensors, -1 unsaid */
    int entropy;             /* output.entropy: gaps and codes Huffman-coded */
    int threads;
    uint64_t memory_limit;   /* limits.memory_mb in bytes; 0: none */
    json_t *json;     /* the passes as given, for the artifact's metadata */
    /* "eval": {"dataset": id, "max_samples", "batch_size"} */
    char *eval_dataset;      /* the id as given (the caller resolves it); NULL: none */
    int64_t eval_max_samples;/* 0: every sample */
    int64_t eval_batch;      /* samples per engine run */
    struct slim_gates gates; /* "gates": checked by slim_spec_check_gates */
};

static void select_release(struct slim_select *sel)
{
    for (size_t i = 0; i < sel->n_include; i++)
        slim_free(sel->include[i]);
    for (size_t i = 0; i < sel->n_exclude; i++)
        slim_free(sel->exclude[i]);
    slim_free(sel->include);
    slim_free(sel->exclude);
}

void slim_spec_free(struct slim_spec *spec)
{
    if (!spec)
        return;
    slim_free(spec->eval_dataset);
    for (size_t i = 0; i < spec->n_passes; i++) {
        if (spec->passes[i].ops && spec->passes[i].ops->release)
            spec->passes[i].ops->release(spec->passes[i].cfg);
        slim_free(spec->passes[i].cfg);
        select_release(&spec->passes[i].sel);
    }
    slim_free(spec->passes);
    json_decref(spec->json);
    slim_free(spec);
}

void slim_spec_set_threads(struct slim_spec *spec, int threads)
{
    spec->threads = threads;
}

const char *slim_spec_eval_dataset(const struct slim_spec *spec)
{
    return spec->eval_dataset;
}

int slim_spec_check_gates(const struct slim_spec *spec, json_t *report, struct slim_error *err)
{
    return slim_gates_check(&spec->gates, report, err);
}

/* "eval": {"dataset": "ds_...", "max_samples": n, "batch_size": n} */
static int parse_eval(json_t *ev, struct slim_spec *spec, struct slim_error *err)
{
    const char *key;
    json_t *v;
    long n;
    if (!json_is_object(ev))
        return slim_error_set(err, SLIM_ESPEC, "eval: expected an object such as "
                              "{\"dataset\": \"ds_...\"}");
    json_object_foreach(ev, key, v) {
        if (strcmp(key, "dataset") && strcmp(key, "max_samples") && strcmp(key, "batch_size"))
            return slim_error_set(err, SLIM_ESPEC, "eval: unknown key '%.40s' (expected "
                                  "dataset, max_samples, batch_size)", key);
    }
    v = json_object_get(ev, "dataset");
    if (!json_is_string(v) || !*json_string_value(v) || strlen(json_string_value(v)) > 100)
        return slim_error_set(err, SLIM_ESPEC, "eval.dataset: required, a dataset id");
    if (!(spec->eval_dataset = slim_strdup(json_string_value(v))))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    n = 0;
    if (slim_spec_int(ev, "eval", "max_samples", 1, 100000000, &n, err))
        return SLIM_ESPEC;
    spec->eval_max_samples = n;
    n = 100;
    if (slim_spec_int(ev, "eval", "batch_size", 1, 65536, &n, err))
        return SLIM_ESPEC;
    spec->eval_batch = n;
    return 0;
}

/* The ids the training passes name, in pass order: each one's dataset,
 * then distill's student model when it is an id. */
static const char *spec_ref(const struct slim_spec *spec, size_t want, int *kind,
                            size_t *pass, int *needs_labels)
{
    size_t at = 0;
    for (size_t k = 0; k < spec->n_passes; k++) {
        const char *ds, *student;
        double ratio;
        int labels;
        if (!spec->passes[k].ops->model)
            continue;
        slim_train_cfg_refs(spec->passes[k].cfg, &ds, &student, &labels, &ratio);
        *pass = k;
        *needs_labels = labels;
        if (at++ == want) {
            *kind = SLIM_REF_DATASET;
            return ds;
        }
        if (student && at++ == want) {
            *kind = SLIM_REF_MODEL;
            return student;
        }
    }
    return NULL;
}

size_t slim_spec_n_refs(const struct slim_spec *spec)
{
    size_t n = 0, pass;
    int kind, labels;
    while (spec_ref(spec, n, &kind, &pass, &labels))
        n++;
    return n;
}

const char *slim_spec_ref(const struct slim_spec *spec, size_t i, int *kind, char *field,
                          size_t field_len, int *needs_labels)
{
    size_t pass = 0;
    const char *id = spec_ref(spec, i, kind, &pass, needs_labels);
    if (id && field)
        snprintf(field, field_len, "passes[%zu].%s", pass,
                 *kind == SLIM_REF_DATASET ? "dataset" : "student");
    return id;
}

/* What an engine (evaluation, a teacher) may hold: the job's budget, or
 * half the machine: a graph can ask for any size, and overcommitted
 * memory would otherwise end in the OOM killer taking the daemon. */
static uint64_t engine_limit(const struct slim_spec *spec)
{
    long pages, page;
    if (spec->memory_limit)
        return spec->memory_limit;
    pages = sysconf(_SC_PHYS_PAGES);
    page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page / 2 : 0;
}

uint64_t slim_spec_memory_limit(const struct slim_spec *spec)
{
    return spec->memory_limit;
}

static int parse_limits(json_t *limits, struct slim_spec *spec, struct slim_error *err)
{
    const char *key;
    json_t *v;
    long mb = 0;
    int rc;
    if (!json_is_object(limits))
        return slim_error_set(err, SLIM_ESPEC, "limits: expected an object");
    json_object_foreach(limits, key, v) {
        if (strcmp(key, "memory_mb"))
            return slim_error_set(err, SLIM_ESPEC, "limits: unknown key '%.40s' (expected "
                                  "memory_mb)", key);
    }
    if ((rc = slim_spec_int(limits, "limits", "memory_mb", 1, 1L << 30, &mb, err)))
        return rc;
    spec->memory_limit = (uint64_t)mb << 20;
    return 0;
}

static int parse_globs(json_t *v, const char *where, const char *key, char ***out, size_t *n,
                       struct slim_error *err)
{
    json_t *g;
    size_t i;
    if (!json_is_array(v))
        return slim_error_set(err, SLIM_ESPEC, "%s.%s: expected an array of glob strings", where,
                              key);
    *out = slim_calloc(json_array_size(v) + 1, sizeof **out);
    if (!*out)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    json_array_foreach(v, i, g) {
        if (!json_is_string(g) || !json_string_length(g))
            return slim_error_set(err, SLIM_ESPEC, "%s.%s[%zu]: expected a non-empty string",
                                  where, key, i);
        if (!((*out)[i] = slim_strdup(json_string_value(g))))
            return slim_error_set(err, SLIM_ENOMEM, "out of memory");
        *n = i + 1;
    }
    return 0;
}

static int key_allowed(const char *key, const char *const *keys)
{
    if (!strcmp(key, "op") || !strcmp(key, "include") || !strcmp(key, "exclude"))
        return 1;
    for (int i = 0; keys && keys[i]; i++)
        if (!strcmp(key, keys[i]))
            return 1;
    return 0;
}

static int parse_pass(json_t *p, size_t idx, struct spec_pass *sp, struct slim_error *err)
{
    char where[32];
    const char *key;
    json_t *v, *op;
    int rc;

    snprintf(where, sizeof where, "passes[%zu]", idx);
    if (!json_is_object(p))
        return slim_error_set(err, SLIM_ESPEC, "%s: expected an object", where);
    op = json_object_get(p, "op");
    if (!json_is_string(op))
        return slim_error_set(err, SLIM_ESPEC, "%s.op: required (one of %s)", where,
                              slim_pass_names());
    sp->ops = slim_pass_find(json_string_value(op));
    if (!sp->ops)
        return slim_error_set(err, SLIM_ESPEC, "%s.op: unknown op '%.40s' (expected one of %s)",
                              where, json_string_value(op), slim_pass_names());
    json_object_foreach(p, key, v) {
        if (!key_allowed(key, sp->ops->keys))
            return slim_error_set(err, SLIM_ESPEC, "%s: unknown key '%.40s' for op '%s'", where,
                                  key, sp->ops->op);
    }
    if ((v = json_object_get(p, "include")) &&
        (rc = parse_globs(v, where, "include", &sp->sel.include, &sp->sel.n_include, err)))
        return rc;
    if ((v = json_object_get(p, "exclude")) &&
        (rc = parse_globs(v, where, "exclude", &sp->sel.exclude, &sp->sel.n_exclude, err)))
        return rc;
    sp->cfg = slim_calloc(1, sp->ops->cfg_size);
    if (!sp->cfg)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    return sp->ops->parse(p, where, sp->cfg, err);
}

/* output.entropy codes what a pass stores as codes (quantize to int8,
 * int4, ternary, binary; cluster) and the positions of pruned tensors
 * stored sparse.  A spec with neither, or with an output option that
 * needs the artifact to be plain ONNX or plain floats, is refused. */
static int entropy_check(const struct slim_spec *spec, json_t *passes, struct slim_error *err)
{
    int codes = 0, pruned = 0;
    size_t i;
    json_t *v;
    if (spec->dequantize)
        return slim_error_set(err, SLIM_ESPEC, "output.entropy and output.dequantize "
                              "contradict each other (dequantize stores plain fp32): choose one");
    if (spec->float16_graph || spec->onnx_opset || spec->want_onnx == 1)
        return slim_error_set(err, SLIM_ESPEC, "output.entropy: the artifact is slimd's "
                              "container, not ONNX, so output.%s does not apply (`slimd decode` "
                              "gives plain ONNX)", spec->float16_graph ? "float16_graph"
                              : spec->onnx_opset ? "opset" : "format 'onnx'");
    json_array_foreach(passes, i, v) {
        const char *op = json_string_value(json_object_get(v, "op"));
        const char *dt = json_string_value(json_object_get(v, "dtype"));
        pruned |= !strcmp(op, "prune");
        codes |= !strcmp(op, "cluster") ||
                 (!strcmp(op, "quantize") && dt && strcmp(dt, "fp16") && strcmp(dt, "bf16"));
    }
    if (!codes && !(pruned && spec->sparse))
        return slim_error_set(err, SLIM_ESPEC, "output.entropy: nothing to code%s (it codes "
                              "quantize int8/int4/ternary/binary or cluster codes, and pruned "
                              "positions with output.sparse)", pruned ? ": add output.sparse" : "");
    return 0;
}

int slim_spec_parse(json_t *json, const char *const *allow, struct slim_spec **out,
                    struct slim_error *err)
{
    struct slim_spec *spec;
    json_t *passes, *output, *v;
    const char *key;
    size_t i;
    int rc = 0, last_stage = 0, encodings = 0;
    size_t last_k = 0;

    *out = NULL;
    if (!json_is_object(json))
        return slim_error_set(err, SLIM_ESPEC, "job spec: expected a JSON object");
    json_object_foreach(json, key, v) {
        int ok = !strcmp(key, "passes") || !strcmp(key, "output") || !strcmp(key, "limits") ||
                 !strcmp(key, "eval") || !strcmp(key, "gates");
        for (int k = 0; !ok && allow && allow[k]; k++)
            ok = !strcmp(key, allow[k]);
        if (!ok)
            return slim_error_set(err, SLIM_ESPEC, "unknown key '%.40s' in job spec", key);
    }
    passes = json_object_get(json, "passes");
    if (!json_is_array(passes) || json_array_size(passes) == 0)
        return slim_error_set(err, SLIM_ESPEC, "passes: required, a non-empty array of passes");
    spec = slim_calloc(1, sizeof *spec);
    if (!spec || !(spec->passes = slim_calloc(json_array_size(passes), sizeof *spec->passes))) {
        slim_free(spec);
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    }
    spec->threads = 0; /* every core, unless the caller says */
    spec->want_onnx = -1;
    json_array_foreach(passes, i, v) {
        spec->n_passes = i + 1;
        spec->passes[i].index = i;
        if ((rc = parse_pass(v, i, &spec->passes[i], err)))
            goto fail;
        /* training passes (stage 0) may come anywhere: they keep what
         * the passes before imposed */
        int stage = spec->passes[i].ops->stage;
        if (stage == 0)
            continue;
        if (stage < last_stage) {
            rc = slim_error_set(err, SLIM_ESPEC,
                                "passes[%zu]: op '%s' cannot follow op '%s' (order: prune, "
                                "lowrank, then one of cluster or quantize; distill and "
                                "finetune anywhere)", i, spec->passes[i].ops->op,
                                spec->passes[last_k].ops->op);
            goto fail;
        }
        if (stage == 3 && ++encodings > 1) {
            rc = slim_error_set(err, SLIM_ESPEC,
                                "passes[%zu]: only one of cluster or quantize may run (a tensor "
                                "is stored one way)", i);
            goto fail;
        }
        last_stage = stage;
        last_k = i;
    }
    output = json_object_get(json, "output");
    if (output) {
        if (!json_is_object(output)) {
            rc = slim_error_set(err, SLIM_ESPEC, "output: expected an object");
            goto fail;
        }
        json_object_foreach(output, key, v) {
            if (strcmp(key, "dequantize") && strcmp(key, "format") && strcmp(key, "sparse") &&
                strcmp(key, "opset") && strcmp(key, "float16_graph") && strcmp(key, "entropy")) {
                rc = slim_error_set(err, SLIM_ESPEC, "output: unknown key '%.40s'", key);
                goto fail;
            }
        }
        if ((rc = slim_spec_bool(output, "output", "dequantize", &spec->dequantize, err)) ||
            (rc = slim_spec_bool(output, "output", "sparse", &spec->sparse, err)) ||
            (rc = slim_spec_bool(output, "output", "float16_graph", &spec->float16_graph, err)) ||
            (rc = slim_spec_bool(output, "output", "entropy", &spec->entropy, err)))
            goto fail;
        {
            long opset = 0;
            if ((rc = slim_spec_int(output, "output", "opset", 13, 21, &opset, err)))
                goto fail;
            spec->onnx_opset = (int)opset;
        }
        v = json_object_get(output, "format");
        if (v && !(json_is_string(v) && (!strcmp(json_string_value(v), "safetensors") ||
                                         !strcmp(json_string_value(v), "onnx")))) {
            rc = slim_error_set(err, SLIM_ESPEC, "output.format: expected 'safetensors' or "
                                "'onnx' (the model's own format)");
            goto fail;
        }
        spec->want_onnx = v ? !strcmp(json_string_value(v), "onnx") : -1;
    }
    if ((v = json_object_get(json, "limits")) && (rc = parse_limits(v, spec, err)))
        goto fail;
    spec->eval_batch = 100;
    if ((v = json_object_get(json, "eval")) && (rc = parse_eval(v, spec, err)))
        goto fail;
    if ((rc = slim_gates_parse(json_object_get(json, "gates"), spec->eval_dataset != NULL,
                               &spec->gates, err)))
        goto fail;
    /* binary weights have no code for 0: after a prune only the sparse
     * output, whose mask keeps the zeros, can store them faithfully */
    if (!spec->sparse) {
        int pruned = 0;
        json_array_foreach(passes, i, v) {
            const char *op = json_string_value(json_object_get(v, "op"));
            const char *dt = json_string_value(json_object_get(v, "dtype"));
            pruned |= !strcmp(op, "prune");
            if (pruned && !strcmp(op, "quantize") && dt && !strcmp(dt, "binary")) {
                rc = slim_error_set(err, SLIM_ESPEC,
                                    "passes[%zu]: binary weights cannot keep pruned zeros; add "
                                    "\"output\": {\"sparse\": true} or use ternary", i);
                goto fail;
            }
        }
    }
    if (spec->entropy && (rc = entropy_check(spec, passes, err)))
        goto fail;
    spec->json = json_deep_copy(passes);
    *out = spec;
    return 0;
fail:
    slim_spec_free(spec);
    return rc;
}

/* ---- the working set of one original tensor ---------------------------- */

static void wt_release(struct slim_wt *t)
{
    slim_wt_clear_outs(t);
    slim_free(t->name);
    slim_free(t->origin);
    slim_aligned_free(t->val);
    json_decref(t->report_extra);
    memset(t, 0, sizeof *t);
}

static void work_clear(struct slim_work *w)
{
    for (size_t i = 0; i < w->n; i++)
        wt_release(&w->wts[i]);
    w->n = 0;
}

/* Makes w hold src alone, untouched. */
static int work_begin(struct slim_work *w, const struct slim_tensor *src, struct slim_error *err)
{
    struct slim_wt *t;
    work_clear(w);
    if (!w->cap) {
        if (!(w->wts = slim_calloc(4, sizeof *w->wts)))
            return slim_error_set(err, SLIM_ENOMEM, "out of memory");
        w->cap = 4;
    }
    t = &w->wts[0];
    w->n = 1;
    w->nm_n = w->nm_m = 0;
    w->nm_pass = w->nm_after = -1;
    w->nm_broken = 0;
    t->name = slim_strdup(src->name);
    t->origin = slim_strdup(src->name);
    if (!t->name || !t->origin)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    t->src = src;
    t->dtype = src->dtype;
    t->ndim = src->ndim;
    memcpy(t->shape, src->shape, sizeof t->shape);
    t->rows = src->ndim ? src->shape[0] : 1;
    t->cols = t->rows ? slim_tensor_numel(src) / t->rows : 0;
    t->scheme = SLIM_SCHEME_COPY;
    t->dense_dtype = src->dtype;
    return 0;
}

/* ---- one run ------------------------------------------------------------ */

/* The artifact's tensors of one shard as planned (names owned), in order. */
struct layout {
    struct slim_tensor *t;
    size_t n, cap;
};

/* Where the artifact goes: one file (a single-file model), a tar (a
 * sharded model from a tar, as the daemon stores it), or a folder of
 * shard files and their index (a sharded model from a folder). */
struct out {
    int kind;                    /* enum slim_source_kind of the input */
    const char *path;
    slim_sink_fn sink;
    void *sink_ud;
    struct slim_writer *wr;      /* the file being written */
    uint64_t member;             /* tar: bytes of the current member */
    uint64_t total;              /* bytes of every file written */
};

enum {
    TOUCHED = 1,                 /* some pass selects the tensor: read it as fp32 */
    COPIES_RAW = 2,              /* the plan may store its bytes as they are */
};

struct run {
    const struct slim_spec *spec;
    struct slim_source src;
    struct slim_work w;
    void **state;                /* per pass, or NULL */
    double *seconds;             /* per pass */
    size_t *selected;            /* per pass: tensors it selected while streaming */
    json_t *warnings;            /* the report's warnings[] */
    size_t warnings_dropped;     /* past WARNINGS_MAX */
    unsigned char *touched;      /* per tensor (shard by shard): TOUCHED, COPIES_RAW */
    struct layout *plan;         /* per shard: planned (or, unplannable, recorded) layout */
    json_t **entries;            /* per shard: "slimd.tensors" */
    void *raw, *f32;             /* the current tensor's bytes, and as fp32 (may be raw) */
    void *mapped;                /* f32 is the model's own mapping: [mapped, +mapped_len) */
    size_t mapped_len;
    uint64_t peak;               /* estimated peak working set (plan) */
    const struct slim_tensor *peak_tensor;
    uint64_t bytes_total, bytes_done;
    int units;                   /* sweeps + 1: how often the model is read */
    int unit;
    double t_read, t_measure;
    struct seg *seg;             /* the part of a job with training passes; NULL: all of it */
};

/* One streamed part of a job that training passes cut (slim_pipeline_run
 * below): what it inherits and what it leaves. */
struct seg {
    int intermediate;            /* writes the next training pass's input: dense fp32 ONNX,
                                  * no evaluation */
    json_t *carry_in;            /* name -> {"pruned", "encoded"} from the parts before */
    json_t *carry_out;           /* the same after this part (new entries added) */
    double *seconds;             /* per pass of the whole spec */
    struct slim_onnx *before;    /* the job's original model, for the evaluation */
    uint64_t bytes_before;       /* its file's bytes (0: this part's input) */
};

/* Makes w hold src alone, untouched but for what training left: a
 * tensor pruned before a training pass stays pruned after it. */
static int begin_tensor(struct run *r, const struct slim_tensor *src, struct slim_error *err)
{
    int rc = work_begin(&r->w, src, err);
    json_t *c = r->seg && r->seg->carry_in ? json_object_get(r->seg->carry_in, src->name) : NULL;
    if (!rc && c)
        r->w.wts[0].pruned = json_is_true(json_object_get(c, "pruned"));
    return rc;
}

/* Notes what the passes did to each tensor, for the training pass after
 * this part: pruned (its zeros are structural) and encoded (stored by
 * cluster or quantize, which the pipeline applies again after
 * training). */
static int carry_record(struct run *r, struct slim_error *err)
{
    if (!r->seg || !r->seg->carry_out)
        return 0;
    for (size_t i = 0; i < r->w.n; i++) {
        const struct slim_wt *t = &r->w.wts[i];
        json_t *prev = r->seg->carry_in ? json_object_get(r->seg->carry_in, t->name) : NULL;
        int encoded = t->scheme >= SLIM_SCHEME_F16 ||
                      (prev && json_is_true(json_object_get(prev, "encoded")));
        if (!t->pruned && !encoded)
            continue;
        if (json_object_set_new(r->seg->carry_out, t->name,
                                json_pack("{s:b, s:b}", "pruned", t->pruned, "encoded",
                                          encoded)))
            return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    }
    return 0;
}


static int onnx_plan_check(const struct run *r, struct slim_error *err);
static int eval_check(struct run *r, struct slim_error *err);

static void layout_release(struct layout *l)
{
    for (size_t i = 0; i < l->n; i++)
        slim_free(l->t[i].name);
    slim_free(l->t);
    memset(l, 0, sizeof *l);
}

static uint64_t layout_bytes(const struct layout *l)
{
    uint64_t b = 0;
    for (size_t i = 0; i < l->n; i++)
        b += l->t[i].nbytes;
    return b;
}

/* Appends copies of a's descriptors (no data) to l. */
static int layout_add(struct layout *l, const struct slim_artifact *a, struct slim_error *err)
{
    if (l->n + a->n > l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        while (cap < l->n + a->n)
            cap *= 2;
        struct slim_tensor *t = slim_realloc(l->t, cap * sizeof *t);
        if (!t)
            return slim_error_set(err, SLIM_ENOMEM, "out of memory");
        l->t = t;
        l->cap = cap;
    }
    for (size_t i = 0; i < a->n; i++) {
        struct slim_tensor *d = &l->t[l->n];
        *d = a->tensors[i];
        d->data = NULL;
        d->own = NULL;
        if (!(d->name = slim_strdup(a->tensors[i].name)))
            return slim_error_set(err, SLIM_ENOMEM, "out of memory");
        l->n++;
    }
    return 0;
}

/* 0 if a is what the plan said at position *pos (then *pos moves on). */
static int layout_check(const struct layout *l, size_t *pos, const struct slim_artifact *a,
                        const char *tensor, struct slim_error *err)
{
    for (size_t i = 0; i < a->n; i++, (*pos)++) {
        const struct slim_tensor *p = *pos < l->n ? &l->t[*pos] : NULL, *t = &a->tensors[i];
        if (!p || strcmp(p->name, t->name) || p->dtype != t->dtype || p->nbytes != t->nbytes ||
            p->ndim != t->ndim || memcmp(p->shape, t->shape, (size_t)t->ndim * sizeof *t->shape))
            return slim_error_set(err, SLIM_EINTERNAL,
                                  "tensor '%s': the artifact's layout differs from its plan "
                                  "(stored tensor '%s')", tensor, t->name);
    }
    return 0;
}

/* Gives back the pages of a tensor read in place (they stay in the page
 * cache; the process stops counting them). */
static void drop_mapped(struct run *r)
{
    if (r->mapped && r->mapped_len)
        (void)madvise(r->mapped, r->mapped_len, MADV_DONTNEED);
    r->mapped = NULL;
}

static void drop_buffers(struct run *r)
{
    if (r->mapped) {
        drop_mapped(r);
        r->f32 = NULL;
    }
    if (r->f32 != r->raw)
        slim_aligned_free(r->f32);
    slim_aligned_free(r->raw);
    r->raw = r->f32 = NULL;
    r->w.raw = NULL;
    r->w.orig = NULL;
}

/* Converts n elements of dtype dt, stored at the tail of buf (buf + n *
 * (4 - size)), to fp32 at the front of buf, in place.  Chunk by chunk,
 * front to back, through a small copy: chunk c's output ends at 4 (c+1)
 * elements' worth, never past the input still to come (which starts at
 * n * (4 - size) + size (c+1) elements' worth, further as long as c < n).
 * The one 2x buffer is what a F16/BF16 tensor costs instead of 3x. */
static int widen_in_place(enum slim_dtype dt, void *buf, size_t n)
{
    enum { CHUNK = 4096 };
    size_t es = slim_dtype_size(dt);
    unsigned char tmp[CHUNK * 8];
    const unsigned char *in = (const unsigned char *)buf + n * (4 - es);
    for (size_t i = 0; i < n; i += CHUNK) {
        size_t c = n - i < CHUNK ? n - i : CHUNK;
        memcpy(tmp, in + i * es, c * es);
        if (slim_to_f32(dt, tmp, c, (float *)buf + i))
            return SLIM_EINVAL;
    }
    return 0;
}

/* Reads tensor t of shard s: its stored bytes into r->raw and, when
 * want_f32, its fp32 values into r->f32 (the same buffer for F32).  A
 * narrower dtype is read into the tail of the fp32 buffer and widened in
 * place, unless keep_raw (the stored bytes may be written out as they
 * are).  pread into buffers the allocator reuses from the tensor before. */
static int read_tensor(struct run *r, const struct slim_shard *s, const struct slim_tensor *t,
                       int want_f32, int keep_raw, struct slim_error *err)
{
    size_t n = (size_t)slim_tensor_numel(t), done = 0, at = 0;
    off_t off = slim_source_offset(s, t);
    int fd = s->fd >= 0 ? s->fd : r->src.fd;
    int widen = want_f32 && !keep_raw && t->dtype != SLIM_DT_F32 &&
                slim_dtype_is_float(t->dtype) && slim_dtype_size(t->dtype) < 4;
    double t0 = slim_now();
    unsigned char *buf;
    drop_buffers(r);
    /* ONNX inline weights: fp32 straight from the unpacked protobuf,
     * nothing to fault in or give back (external ones are file mappings:
     * faulted in and given back below, like a safetensors file's) */
    if (s->in_memory && !t->file_mapped && want_f32 && !keep_raw && t->dtype == SLIM_DT_F32 &&
        (uintptr_t)t->data % sizeof(float) == 0) {
        r->mapped = (void *)t->data;
        r->mapped_len = 0;
        r->f32 = (void *)t->data;
        r->w.raw = NULL;
        r->w.orig = r->f32;
        return 0;
    }
#if defined(MADV_POPULATE_READ)
    /* fp32 that no pass writes back as it is: read in place from the
     * model's mapping, its pages mapped in one call instead of a fault
     * per 4 KiB (and no copy); given back once the tensor is done */
    if (want_f32 && !keep_raw && t->dtype == SLIM_DT_F32 && t->nbytes &&
        (uintptr_t)t->data % sizeof(float) == 0) {
        long pg = sysconf(_SC_PAGESIZE);
        uintptr_t lo = (uintptr_t)t->data & ~(uintptr_t)(pg - 1);
        uintptr_t hi = ((uintptr_t)t->data + t->nbytes + (uintptr_t)pg - 1) &
                       ~(uintptr_t)(pg - 1);
        if (madvise((void *)lo, hi - lo, MADV_POPULATE_READ) == 0) {
            r->mapped = (void *)lo;
            r->mapped_len = hi - lo;
            r->f32 = (void *)t->data;
            r->w.raw = NULL;
            r->w.orig = r->f32;
            r->t_read += slim_now() - t0;
            return 0;
        }
    }
#endif
    if (widen)
        at = n * 4 - t->nbytes;
    if (!(buf = slim_aligned_alloc(at + t->nbytes + 1)))
        return slim_error_set(err, SLIM_ENOMEM, "tensor '%s': out of memory (%zu bytes)",
                              t->name, at + t->nbytes);
    r->raw = buf;
    if (s->in_memory) {
        memcpy(buf + at, t->data, t->nbytes);
        done = t->nbytes;
    }
    while (done < t->nbytes) {
        ssize_t got = pread(fd, buf + at + done, t->nbytes - done, off + (off_t)done);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return slim_error_set(err, SLIM_EIO, "tensor '%s': cannot read the model: %s",
                                  t->name, got < 0 ? strerror(errno) : "short file");
        done += (size_t)got;
    }
    if (widen) {
        widen_in_place(t->dtype, buf, n);
        r->f32 = buf;
        r->raw = NULL;
    } else if (want_f32) {
        if (t->dtype == SLIM_DT_F32) {
            r->f32 = r->raw;
        } else {
            if (!(r->f32 = slim_aligned_alloc(n * sizeof(float) + 1)))
                return slim_error_set(err, SLIM_ENOMEM, "tensor '%s': out of memory", t->name);
            if (slim_to_f32(t->dtype, r->raw, n, r->f32))
                return slim_error_set(err, SLIM_EINVAL,
                                      "tensor '%s': dtype %s is not floating-point", t->name,
                                      slim_dtype_name(t->dtype));
        }
    }
    r->w.raw = r->raw;
    r->w.orig = r->f32;
    r->t_read += slim_now() - t0;
    return 0;
}

/* Progress over every read of the model: sweeps, then the real run. */
static int tensor_progress(struct run *r, const struct slim_tensor *t, struct slim_error *err)
{
    double total = (double)r->bytes_total * r->units, at = (double)r->bytes_total * r->unit;
    double lo = total > 0 ? (at + (double)r->bytes_done) / total : 0.0;
    double hi = total > 0 ? (at + (double)(r->bytes_done + t->nbytes)) / total : 1.0;
    r->w.p_lo = 0.02 + 0.96 * lo;
    r->w.p_hi = 0.02 + 0.96 * hi;
    return slim_work_check(&r->w, 0.0, err);
}

/* Runs passes [0, upto) over the working set. */
static int run_passes(struct run *r, size_t upto, struct slim_error *err)
{
    int rc;
    for (size_t k = 0; k < upto; k++) {
        const struct spec_pass *sp = &r->spec->passes[k];
        double t0 = slim_now();
        if (sp->ops->model)   /* training: not a streaming pass (see pipeline_run) */
            continue;
        r->w.stage = sp->ops->op;
        r->w.state = r->state[k];
        r->w.pass_index = (int)k;
        if (!r->w.planning && r->selected) {
            size_t hits = 0;
            for (size_t i = 0; i < r->w.n; i++)
                hits += slim_select_match(&sp->sel, &r->w.wts[i]) &&
                        !(sp->ops->originals_only &&
                          strcmp(r->w.wts[i].name, r->w.wts[i].origin));
            r->selected[k] += hits;
            if (hits && r->w.nm_m && (int)k > r->w.nm_pass)
                r->w.nm_after = (int)k;
        }
        rc = slim_work_each(&r->w, &sp->sel, sp->ops->originals_only,
                            r->w.planning ? sp->ops->plan : sp->ops->tensor, sp->cfg, err);
        r->seconds[k] += slim_now() - t0;
        if (rc) {
            if (rc != SLIM_ECANCELED)
                slim_error_prefix(err, "passes[%zu] (%s)", k, sp->ops->op);
            return rc;
        }
    }
    return 0;
}

/* What one tensor's working set costs at its peak, from its plan: the
 * bytes read, the fp32 copy (F16/BF16 inputs), one values buffer per
 * working tensor, the scratch each pass asks for, and its stored
 * tensors three times over (the batch being built, and the two the
 * writer may hold). */
static void estimate_tensor(struct run *r, const struct slim_tensor *src, int flags,
                            const struct slim_artifact *art)
{
    uint64_t n = (uint64_t)slim_tensor_numel(src), need = src->nbytes, out = 0, scratch = 0;
    for (size_t i = 0; i < art->n; i++)
        out += art->tensors[i].nbytes;
    if (flags & TOUCHED) {
        int64_t rows = src->ndim ? src->shape[0] : 1, cols = rows ? (int64_t)n / rows : 0;
        /* fp32 values: the stored bytes' buffer for F32, widened in place
         * unless the stored bytes may be written out as they are */
        if (src->dtype != SLIM_DT_F32)
            need = (flags & COPIES_RAW) ? need + 4 * n : 4 * n;
        for (size_t i = 0; i < r->w.n; i++)
            need += 4 * (uint64_t)(r->w.wts[i].rows * r->w.wts[i].cols);
        if (r->w.n > 1)
            need += 4 * n; /* the low-rank product the report measures */
        for (size_t k = 0; k < r->spec->n_passes; k++) {
            const struct spec_pass *sp = &r->spec->passes[k];
            uint64_t s = sp->ops->scratch_bytes ? sp->ops->scratch_bytes(sp->cfg, rows, cols) : 0;
            scratch = s > scratch ? s : scratch;
        }
    }
    need += scratch + 3 * out;
    if (need > r->peak) {
        r->peak = need;
        r->peak_tensor = src;
    }
}

/* Calls fn(r, shard, tensor, index) for every tensor, shard by shard. */
#define FOR_EACH_TENSOR(r, s, t, i)                                                         \
    for (size_t s##_k = 0, i = 0; s##_k < (r)->src.n; s##_k++)                              \
        for (const struct slim_shard *s = &(r)->src.shards[s##_k]; s; s = NULL)             \
            for (size_t t##_j = 0; t##_j < s->model.n_tensors; t##_j++, i++)                \
                for (const struct slim_tensor *t = &s->model.tensors[t##_j]; t; t = NULL)

/* The plan: every tensor through every pass on shapes alone.  Fills
 * r->plan, r->entries and r->touched per shard; w.unplannable tells
 * whether the layout can be trusted before the values are seen. */
static int plan_model(struct run *r, struct slim_error *err)
{
    struct slim_artifact art;
    int rc = 0;
    r->w.planning = 1;
    FOR_EACH_TENSOR(r, sh, src, i) {
        if ((rc = begin_tensor(r, src, err)))
            goto out;
        for (size_t k = 0; k < r->spec->n_passes; k++)
            if (!r->spec->passes[k].ops->model &&
                slim_select_match(&r->spec->passes[k].sel, &r->w.wts[0]))
                r->touched[i] |= TOUCHED;
        if ((rc = run_passes(r, r->spec->n_passes, err)) ||
            (rc = slim_artifact_layout(&r->w, &art, err)))
            goto out;
        for (size_t k = 0; k < r->w.n; k++)
            if (r->w.wts[k].scheme == SLIM_SCHEME_COPY)
                r->touched[i] |= COPIES_RAW;
        rc = layout_add(&r->plan[sh_k], &art, err);
        if (!rc)
            rc = slim_artifact_describe(&r->w, r->entries[sh_k], err);
        if (!rc)
            estimate_tensor(r, src, r->touched[i], &art);
        slim_artifact_release(&art);
        if (rc)
            goto out;
    }
out:
    r->w.planning = 0;
    work_clear(&r->w);
    return rc;
}

/* Summary sweeps for whole-model passes (global pruning), in pass order:
 * pass k's sweeps see the model with passes [0, k) applied. */
static int run_sweeps(struct run *r, struct slim_error *err)
{
    int rc = 0;
    for (size_t k = 0; k < r->spec->n_passes; k++) {
        const struct spec_pass *sp = &r->spec->passes[k];
        int sweeps = sp->ops->sweeps ? sp->ops->sweeps(sp->cfg) : 0;
        for (int s = 0; s < sweeps; s++, r->unit++) {
            r->bytes_done = 0;
            FOR_EACH_TENSOR(r, sh, src, i) {
                if (r->touched[i] & TOUCHED) {
                    double t0;
                    if ((rc = tensor_progress(r, src, err)) ||
                        (rc = begin_tensor(r, src, err)) ||
                        (rc = read_tensor(r, sh, src, 1, 0, err)) ||
                        (rc = run_passes(r, k, err)))
                        return rc;
                    t0 = slim_now();
                    r->w.state = r->state[k];
                    r->w.sweep = s;
                    r->w.stage = sp->ops->op;
                    rc = slim_work_each(&r->w, &sp->sel, sp->ops->originals_only,
                                        sp->ops->summarize, sp->cfg, err);
                    r->seconds[k] += slim_now() - t0;
                    if (rc)
                        return rc;
                }
                r->bytes_done += src->nbytes;
            }
            if ((rc = sp->ops->sweep_done(sp->cfg, r->state[k], s, err)))
                return rc;
        }
    }
    work_clear(&r->w);
    drop_buffers(r);
    return 0;
}

/* Hands the laid-out tensors to the writer with the buffers they point
 * into; every other buffer of the working set is freed now. */
static int emit(struct run *r, struct slim_writer *wr, struct slim_artifact *art,
                struct slim_error *err)
{
    struct slim_piece *pieces = slim_calloc(art->n + 1, sizeof *pieces);
    void **bufs = NULL, **give = NULL;
    size_t nb = 0, ng = 0, cap = 2 + art->n_owned;
    int rc;

    for (size_t i = 0; i < r->w.n; i++)
        cap += 1 + (size_t)r->w.wts[i].n_outs;
    bufs = slim_calloc(cap, sizeof *bufs);
    give = slim_calloc(cap, sizeof *give);
    if (!pieces || !bufs || !give) {
        slim_free(pieces);
        slim_free(bufs);
        slim_free(give);
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    }
    /* every buffer, once: the working tensors', the layout's, the read's */
    for (size_t i = 0; i < r->w.n; i++) {
        struct slim_wt *t = &r->w.wts[i];
        bufs[nb++] = t->val;
        t->val = NULL;
        for (int k = 0; k < t->n_outs; k++) {
            bufs[nb++] = t->outs[k].data;
            t->outs[k].data = NULL;
        }
    }
    for (size_t i = 0; i < art->n_owned; i++)
        bufs[nb++] = art->owned[i];
    art->n_owned = 0;
    bufs[nb++] = r->raw;
    if (r->f32 != r->raw && !r->mapped)
        bufs[nb++] = r->f32;
    drop_mapped(r);
    r->raw = r->f32 = NULL;
    r->w.raw = NULL;
    r->w.orig = NULL;
    for (size_t i = 0; i < art->n; i++)
        pieces[i] = (struct slim_piece){art->tensors[i].data, art->tensors[i].nbytes};
    for (size_t b = 0; b < nb; b++) {
        int used = 0;
        for (size_t i = 0; i < art->n && bufs[b] && !used; i++)
            used = art->tensors[i].data == bufs[b];
        if (used)
            give[ng++] = bufs[b];
        else
            slim_aligned_free(bufs[b]);
    }
    rc = slim_writer_submit(wr, pieces, art->n, give, ng, err);
    slim_free(pieces);
    slim_free(bufs);
    slim_free(give);
    return rc;
}

/* Queues a copy of len bytes. */
static int submit_copy(struct slim_writer *wr, const void *data, size_t len,
                       struct slim_error *err)
{
    char *buf = slim_malloc(len ? len : 1);
    struct slim_piece piece = {buf, len};
    if (!buf)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    memcpy(buf, data, len);
    return slim_writer_submit(wr, &piece, 1, (void *[]){buf}, 1, err);
}

/* ---- the artifact's files --------------------------------------------- */

static int out_begin(struct out *o, struct slim_error *err)
{
    if (o->kind == SLIM_SRC_INDEX) {
        if (mkdir(o->path, 0755) && errno != EEXIST)
            return slim_error_set(err, SLIM_EIO, "cannot create the output folder: %s",
                                  strerror(errno));
        return 0;
    }
    return slim_writer_open(o->path, o->sink, o->sink_ud, &o->wr, err);
}

/* Finishes the file being written and counts it. */
static int out_close(struct out *o, struct slim_error *err)
{
    uint64_t bytes = slim_writer_queued(o->wr);
    int rc = slim_writer_finish(o->wr, err);
    o->wr = NULL;
    if (!rc)
        o->total += bytes;
    return rc;
}

/* Starts a file of the artifact named `name` (tar member or file in the
 * folder) that will hold len bytes, beginning with head[0..head_len). */
static int out_file_begin(struct out *o, const char *name, uint64_t len, const char *head,
                          size_t head_len, struct slim_error *err)
{
    int rc;
    if (o->kind == SLIM_SRC_TAR) {
        unsigned char hdr[512];
        if ((rc = slim_tar_header(name, len, hdr, err)) ||
            (rc = submit_copy(o->wr, hdr, sizeof hdr, err)))
            return rc;
        o->member = len;
    } else if (o->kind == SLIM_SRC_INDEX) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", o->path, name);
        if ((rc = slim_writer_open(path, NULL, NULL, &o->wr, err)))
            return rc;
    }
    return head_len ? submit_copy(o->wr, head, head_len, err) : 0;
}

static int out_file_end(struct out *o, struct slim_error *err)
{
    static const char zeros[512];
    if (o->kind == SLIM_SRC_TAR)
        return o->member % 512 ? submit_copy(o->wr, zeros, 512 - o->member % 512, err) : 0;
    if (o->kind == SLIM_SRC_INDEX)
        return out_close(o, err);
    return 0;
}

static int out_end(struct out *o, struct slim_error *err)
{
    static const char zeros[1024];
    int rc;
    if (o->kind == SLIM_SRC_INDEX)
        return 0;
    if (o->kind == SLIM_SRC_TAR && (rc = submit_copy(o->wr, zeros, sizeof zeros, err)))
        return rc;
    return out_close(o, err);
}

/* The output index: the input's, with total_size and a weight_map of
 * the artifact's tensors (every shard keeps its name).  New text. */
static char *index_text(const struct run *r, struct slim_error *err)
{
    json_t *idx = json_object(), *map = json_object(), *md;
    uint64_t total = 0;
    char *text = NULL;
    md = json_deep_copy(json_object_get(r->src.index, "metadata"));
    if (!json_is_object(md)) {
        json_decref(md);
        md = json_object();
    }
    for (size_t s = 0; idx && map && md && s < r->src.n; s++) {
        const struct layout *l = &r->plan[s];
        for (size_t i = 0; i < l->n; i++)
            json_object_set_new(map, l->t[i].name, json_string(r->src.shards[s].name));
        total += layout_bytes(l);
    }
    if (idx && map && md) {
        json_object_set_new(md, "total_size", json_integer((json_int_t)total));
        json_object_set_new(md, "slimd.version", json_string(SLIMD_VERSION));
        json_object_set_new(idx, "metadata", md);
        json_object_set_new(idx, "weight_map", map);
        md = map = NULL;
        text = json_dumps(idx, JSON_INDENT(2) | JSON_SORT_KEYS);
    }
    json_decref(idx);
    json_decref(map);
    json_decref(md);
    if (!text)
        slim_error_set(err, SLIM_ENOMEM, "out of memory writing the index");
    return text;
}

static int out_index(struct out *o, const struct run *r, struct slim_error *err)
{
    char *text;
    size_t len;
    int rc;
    if (o->kind == SLIM_SRC_FILE)
        return 0;
    if (!(text = index_text(r, err)))
        return SLIM_ENOMEM;
    len = strlen(text);
    rc = out_file_begin(o, r->src.index_name, len, text, len, err);
    free(text);
    return rc ? rc : out_file_end(o, err);
}

/* Starts shard s of the artifact: its file (or member) and safetensors
 * header, for the layout l. */
static int out_shard_begin(struct out *o, struct run *r, size_t s, struct slim_error *err)
{
    json_t *md = NULL;
    char *hdr = NULL;
    size_t len = 0;
    int rc = slim_artifact_metadata(r->src.shards[s].model.metadata, r->spec->json,
                                    r->entries[s], &md, err);
    if (!rc)
        rc = slim_st_header(r->plan[s].t, r->plan[s].n, md, &hdr, &len, err);
    json_decref(md);
    if (!rc)
        rc = out_file_begin(o, r->src.shards[s].name, len + layout_bytes(&r->plan[s]), hdr, len,
                            err);
    slim_free(hdr);
    return rc;
}

/* Copies a spilled shard's data into the artifact, 8 MiB at a time. */
/* Checks for a cancel every 8 MiB: a spilled artifact can be gigabytes. */
static int copy_spill(struct run *r, const char *spill, struct slim_writer *wr,
                      struct slim_error *err)
{
    int fd = open(spill, O_RDONLY | O_CLOEXEC), rc = 0;
    const size_t step = (size_t)8 << 20;
    if (fd < 0)
        return slim_error_set(err, SLIM_EIO, "cannot reopen the artifact's data: %s",
                              strerror(errno));
    for (;;) {
        if ((rc = slim_work_check(&r->w, -1.0, err)))
            break;
        char *buf = slim_aligned_alloc(step);
        ssize_t got;
        struct slim_piece piece;
        if (!buf) {
            rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
            break;
        }
        do
            got = read(fd, buf, step);
        while (got < 0 && errno == EINTR);
        if (got <= 0) {
            slim_aligned_free(buf);
            if (got < 0)
                rc = slim_error_set(err, SLIM_EIO, "cannot read the artifact's data: %s",
                                    strerror(errno));
            break;
        }
        piece = (struct slim_piece){buf, (size_t)got};
        if ((rc = slim_writer_submit(wr, &piece, 1, (void *[]){buf}, 1, err)))
            break;
    }
    close(fd);
    return rc;
}

static void spill_path(const char *out_path, size_t s, char *buf, size_t len)
{
    snprintf(buf, len, "%s.data-%zu", out_path, s);
}

static void run_release(struct run *r)
{
    if (r->state)
        for (size_t k = 0; k < r->spec->n_passes; k++)
            slim_free(r->state[k]);
    slim_free(r->state);
    slim_free(r->seconds);
    slim_free(r->selected);
    json_decref(r->warnings);
    slim_free(r->touched);
    for (size_t s = 0; s < r->src.n; s++) {
        if (r->plan)
            layout_release(&r->plan[s]);
        if (r->entries)
            json_decref(r->entries[s]);
    }
    slim_free(r->plan);
    slim_free(r->entries);
    drop_buffers(r);
    work_clear(&r->w);
    slim_free(r->w.wts);
    slim_source_release(&r->src);
}

static int run_init(struct run *r, const struct slim_spec *spec, const char *in_path,
                    const struct slim_run_opts *opts, struct slim_error *err)
{
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    size_t n_tensors = 0;
    int rc;
    memset(r, 0, sizeof *r);
    r->spec = spec;
    if ((rc = slim_source_open(in_path, &r->src, err)))
        return rc;
    for (size_t s = 0; s < r->src.n; s++) {
        const struct slim_shard *sh = &r->src.shards[s];
        if (sh->fd >= 0)
            (void)posix_fadvise(sh->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
        n_tensors += sh->model.n_tensors;
        for (size_t i = 0; i < sh->model.n_tensors; i++)
            r->bytes_total += sh->model.tensors[i].nbytes;
    }
    r->state = slim_calloc(spec->n_passes, sizeof *r->state);
    r->seconds = slim_calloc(spec->n_passes, sizeof *r->seconds);
    r->selected = slim_calloc(spec->n_passes + 1, sizeof *r->selected);
    r->warnings = json_array();
    if (!r->selected || !r->warnings)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    r->touched = slim_calloc(n_tensors + 1, 1);
    r->plan = slim_calloc(r->src.n, sizeof *r->plan);
    r->entries = slim_calloc(r->src.n, sizeof *r->entries);
    if (!r->state || !r->seconds || !r->touched || !r->plan || !r->entries)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    for (size_t s = 0; s < r->src.n; s++)
        if (!(r->entries[s] = json_object()))
            return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    r->units = 1;
    for (size_t k = 0; k < spec->n_passes; k++) {
        const struct spec_pass *sp = &spec->passes[k];
        if (sp->ops->state_size && !(r->state[k] = slim_calloc(1, sp->ops->state_size)))
            return slim_error_set(err, SLIM_ENOMEM, "out of memory");
        r->units += sp->ops->sweeps ? sp->ops->sweeps(sp->cfg) : 0;
    }
    r->w.threads = opts && opts->threads ? opts->threads : spec->threads;
    if (r->w.threads <= 0)
        r->w.threads = ncpu > 0 ? (int)ncpu : 1;
    r->w.dequantize_output = spec->dequantize;
    r->w.sparse_output = spec->sparse;
    r->w.entropy_output = spec->entropy;
    r->w.progress = opts ? opts->progress : NULL;
    r->w.progress_ud = opts ? opts->progress_ud : NULL;
    r->w.stage = "load";
    return 0;
}

static int budget_error(const struct run *r, uint64_t limit, struct slim_error *err)
{
    return slim_error_set(err, SLIM_EBUDGET,
                          "tensor '%.100s' needs about %llu MiB at once, over the job's memory "
                          "budget of %llu MiB (limits.memory_mb)",
                          r->peak_tensor ? r->peak_tensor->name : "?",
                          (unsigned long long)((r->peak + (1u << 20) - 1) >> 20),
                          (unsigned long long)(limit >> 20));
}

int slim_pipeline_estimate(const struct slim_spec *spec, const char *in_path, uint64_t *bytes,
                           struct slim_error *err)
{
    struct run r;
    int rc = run_init(&r, spec, in_path, NULL, err);
    *bytes = 0;
    if (!rc)
        rc = plan_model(&r, err);
    if (!rc)
        rc = onnx_plan_check(&r, err);
    if (!rc)
        rc = eval_check(&r, err);
    if (!rc) {
        *bytes = r.peak;
        slim_error_set(err, 0, "tensor '%.100s' needs about %llu MiB at once",
                       r.peak_tensor ? r.peak_tensor->name : "?",
                       (unsigned long long)((r.peak + (1u << 20) - 1) >> 20));
    }
    run_release(&r);
    return rc;
}

void slim_pipeline_settle(void)
{
    slim_kernel_settle();
}

int slim_spec_container(const struct slim_spec *spec, const char *in_path)
{
    int kind = slim_source_kind(in_path);
    return spec->entropy && (kind == SLIM_SRC_ONNX || kind == SLIM_SRC_ONNX_TAR);
}

int slim_pipeline_output_kind(const char *in_path)
{
    int kind = slim_source_kind(in_path);
    if (kind == SLIM_SRC_ONNX_TAR)
        return SLIM_SRC_TAR;
    return kind < 0 ? SLIM_SRC_FILE : kind;
}

/* The ONNX artifact, from the spilled stored tensors of the one shard
 * (formats/onnx_write.c builds the graph around them). */
static int out_onnx(struct run *r, struct out *o, const char *out_path, struct slim_error *err)
{
    struct layout *l = &r->plan[0];
    struct slim_onnx_out oo;
    char sp[PATH_MAX];
    struct stat st;
    unsigned char *map = NULL;
    uint64_t off = 0;
    json_t *md = NULL, *none = json_object();
    int fd, rc;

    spill_path(out_path, 0, sp, sizeof sp);
    if ((fd = open(sp, O_RDONLY | O_CLOEXEC)) < 0 || fstat(fd, &st)) {
        rc = slim_error_set(err, SLIM_EIO, "cannot reopen the artifact's data: %s",
                            strerror(errno));
        goto out;
    }
    if (st.st_size > 0 &&
        (map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0)) == MAP_FAILED) {
        map = NULL;
        rc = slim_error_set(err, SLIM_EIO, "cannot map the artifact's data: %s",
                            strerror(errno));
        goto out;
    }
    for (size_t i = 0; i < l->n; i++) {
        l->t[i].data = map ? map + off : NULL;
        off += l->t[i].nbytes;
    }
    if (off != (uint64_t)st.st_size) {
        rc = slim_error_set(err, SLIM_EINTERNAL, "the artifact's data has %llu bytes, its "
                            "layout %llu", (unsigned long long)st.st_size,
                            (unsigned long long)off);
        goto out;
    }
    if ((rc = slim_artifact_metadata(none, r->spec->json, r->entries[0], &md, err)))
        goto out;
    memset(&oo, 0, sizeof oo);
    oo.path = out_path;
    oo.tar = r->src.kind == SLIM_SRC_ONNX_TAR;
    oo.onnx_name = r->src.onnx->name;
    oo.external = r->src.onnx->external;
    oo.sink = o->sink;
    oo.sink_ud = o->sink_ud;
    oo.opset = r->spec->onnx_opset;
    oo.float16_graph = r->spec->float16_graph;
    if (!(rc = slim_onnx_write(r->src.onnx, l->t, l->n, r->entries[0], md, &oo, err)))
        o->total = oo.bytes;
out:
    for (size_t i = 0; i < l->n; i++)
        l->t[i].data = NULL;
    if (map)
        munmap(map, (size_t)st.st_size);
    if (fd >= 0)
        close(fd);
    unlink(sp);
    json_decref(md);
    json_decref(none);
    return rc;
}

/* ONNX artifacts hold sparse tensors as sparse_initializer (plain
 * values) or, clustered, as a bit mask and codes that the graph expands
 * with CumSum (opset 11): a spec that would store quantized weights
 * sparse, or clustered ones sparse below opset 11, has no ONNX form and
 * is refused before anything runs. */
static int onnx_plan_check(const struct run *r, struct slim_error *err)
{
    const char *name;
    json_t *e;
    if (r->spec->want_onnx >= 0 && r->spec->want_onnx != (r->src.onnx != NULL))
        return slim_error_set(err, SLIM_ESPEC, "output.format: the artifact's format is the "
                              "model's, %s", r->src.onnx ? "onnx" : "safetensors");
    if (!r->src.onnx) {
        if (r->spec->onnx_opset || r->spec->float16_graph)
            return slim_error_set(err, SLIM_ESPEC, "output.%s: only for ONNX models",
                                  r->spec->onnx_opset ? "opset" : "float16_graph");
        return 0;
    }
    if (r->spec->onnx_opset) {
        int rc = slim_onnx_upgrade_check(r->src.onnx, r->spec->onnx_opset, err);
        if (rc)
            return rc;
    }
    if (r->spec->float16_graph && r->spec->dequantize)
        return slim_error_set(err, SLIM_ESPEC, "output.float16_graph and output.dequantize "
                              "contradict each other: choose one");
    json_object_foreach(r->entries[0], name, e) {
        const char *scheme = json_string_value(json_object_get(e, "scheme"));
        if (r->spec->float16_graph && scheme && strcmp(scheme, "fp16") && strcmp(scheme, "dense") &&
            strcmp(scheme, "lowrank"))
            return slim_error_set(err, SLIM_ESPEC, "output.float16_graph: tensor '%.100s' is "
                                  "stored %s, which decodes to fp32; a float16 graph takes "
                                  "pruned, low-rank or fp16 weights", name, scheme);
        if (json_is_true(json_object_get(e, "sparse")) && scheme && strcmp(scheme, "dense") &&
            strcmp(scheme, "cluster") && !r->spec->entropy)
            return slim_error_set(err, SLIM_ESPEC, "output.sparse: '%.40s' would be %s codes "
                                  "stored sparse, which ONNX cannot hold: drop output.sparse "
                                  "or the %s pass", name, scheme, scheme);
        if (json_is_true(json_object_get(e, "sparse")) && scheme && !strcmp(scheme, "cluster") &&
            !r->spec->entropy && (r->spec->onnx_opset ? r->spec->onnx_opset
                                                      : r->src.onnx->opset) < 11)
            return slim_error_set(err, SLIM_ESPEC, "output.sparse: clustered '%.40s' stored "
                                  "sparse needs opset 11 (CumSum; the model has %lld): set "
                                  "output.opset or drop output.sparse", name,
                                  (long long)r->src.onnx->opset);
    }
    return 0;
}

/* An "eval" needs a graph the engine runs: a safetensors model has none,
 * and an ONNX model with an op the engine lacks is refused up front
 * (SLIM_EUNSUPPORTED), before any work.  Without "eval" nothing is
 * checked: weight-only jobs never depend on the engine. */
static int eval_check(struct run *r, struct slim_error *err)
{
    for (size_t k = 0; k < r->spec->n_passes; k++) {
        const struct spec_pass *sp = &r->spec->passes[k];
        int rc;
        if (!sp->ops->model)
            continue;
        if (!r->src.onnx)
            return slim_error_set(err, SLIM_ESPEC, "passes[%zu] (%s): training needs an ONNX "
                                  "model (a safetensors file holds weights, not the graph "
                                  "that trains them)", sp->index, sp->ops->op);
        /* the teacher runs in the engine; the trainer checks its own ops
         * when it starts */
        if ((rc = slim_engine_check(r->src.onnx, err))) {
            slim_error_prefix(err, "passes[%zu] (%s)", sp->index, sp->ops->op);
            return rc;
        }
        /* the trainer holds the whole model: weights, gradients and two
         * Adam moments, and the copy being written */
        if (5 * r->bytes_total > r->peak)
            r->peak = 5 * r->bytes_total;
    }
    if (!r->spec->eval_dataset)
        return 0;
    if (!r->src.onnx)
        return slim_error_set(err, SLIM_ESPEC, "eval: needs an ONNX model (a safetensors "
                              "file holds weights, not the graph that runs them)");
    return slim_eval_check(r->src.onnx, err);
}

static int eval_poll(void *ud, double frac)
{
    struct run *r = ud;
    return slim_work_check(&r->w, frac, NULL) != 0;
}

/* The original and the artifact as written, side by side: accuracy on
 * the eval dataset, or the output drift on a random batch without one
 * (then an engine that cannot run the graph only notes why there is no
 * figure). */
static int evaluate(struct run *r, struct slim_onnx *before, const char *out_path,
                    const struct slim_run_opts *opts, json_t **ev, struct slim_error *err)
{
    struct slim_eval_opts eo;
    char plain[PATH_MAX];
    const char *eval_path = out_path;
    int rc;
    memset(&eo, 0, sizeof eo);
    eo.dataset = opts ? opts->eval_dataset : NULL;
    eo.dataset_id = r->spec->eval_dataset;
    eo.max_samples = r->spec->eval_max_samples;
    eo.batch = r->spec->eval_batch;
    eo.memory_limit = engine_limit(r->spec);
    eo.check = eval_poll;
    eo.check_ud = r;
    if (r->spec->eval_dataset && !eo.dataset)
        return slim_error_set(err, SLIM_EINVAL, "eval.dataset '%.100s': no file given for it",
                              r->spec->eval_dataset);
    r->w.stage = "evaluate";
    r->w.p_lo = 0.98;
    r->w.p_hi = 0.995;
    if (r->spec->entropy) {
        /* the container is not ONNX: evaluate what `slimd decode` gives */
        int kind;
        snprintf(plain, sizeof plain, "%s.plain-onnx", out_path);
        if ((rc = slim_artifact_decode(out_path, plain, &kind, err)))
            return rc;
        eval_path = plain;
    }
    rc = slim_eval_run(before, eval_path, &eo, ev, err);
    if (r->spec->entropy)
        unlink(plain);
    /* without "eval" the drift is a bonus: the engine failing on the
     * graph (an op it lacks, a tensor over the budget) never fails a
     * weight-only job */
    if (rc && rc != SLIM_ECANCELED && !r->spec->eval_dataset) {
        *ev = json_pack("{s:s}", "skipped", err->msg);
        rc = *ev ? 0 : slim_error_set(err, SLIM_ENOMEM, "out of memory");
    }
    return rc;
}

/* slimd's entropy container of an ONNX model: one safetensors file
 * whose last tensor, SLIM_CONTAINER_GRAPH, is the ModelProto with its
 * stored initializers reduced to stubs (formats/onnx_plain.c), and whose
 * metadata says "slimd.container": "onnx".  ONNX Runtime cannot load
 * coded weights, so `slimd decode` (and the evaluation here) turn it
 * back into a plain .onnx.  *graph is new. */
static int container_begin(struct run *r, struct out *o, uint8_t **graph, size_t *glen,
                           struct slim_error *err)
{
    struct slim_shard *sh = &r->src.shards[0];
    struct layout *l = &r->plan[0];
    struct slim_artifact one;
    struct slim_tensor t;
    int rc;
    for (size_t i = 0; i < l->n; i++)
        if (!strcmp(l->t[i].name, SLIM_CONTAINER_GRAPH))
            return slim_error_set(err, SLIM_ESPEC, "output.entropy: the model has an "
                                  "initializer named '%s', the name the container gives its "
                                  "graph", SLIM_CONTAINER_GRAPH);
    if ((rc = slim_onnx_graph_stub(r->src.onnx, &sh->model, graph, glen, err)))
        return rc;
    memset(&t, 0, sizeof t);
    t.name = SLIM_CONTAINER_GRAPH;
    t.dtype = SLIM_DT_U8;
    t.ndim = 1;
    t.shape[0] = (int64_t)*glen;
    t.nbytes = *glen;
    memset(&one, 0, sizeof one);
    one.tensors = &t;
    one.n = 1;
    if ((rc = layout_add(l, &one, err)))
        return rc;
    json_object_set_new(sh->model.metadata, "slimd.container", json_string("onnx"));
    json_object_set_new(sh->model.metadata, "slimd.onnx_name",
                        json_string(r->src.onnx->name ? r->src.onnx->name : "model.onnx"));
    o->kind = SLIM_SRC_FILE;
    return 0;
}

/* Streams every tensor through the passes into the artifact.  With a
 * plan the headers go first and every file is written (and hashed)
 * front to back in one go; without one (output sizes that depend on the
 * values), each shard's data goes to a spill file and is copied behind
 * its header at the end. */
/* ---- the report's warnings ----
 *
 * Things that "succeed" but are seldom what the user meant: a pass whose
 * include/exclude selected no tensor, a tensor a pass looked at and left
 * (its row says why), an N:M pattern that a later pass broke (checked on
 * the values the artifact decodes to), a tensor the passes zeroed whole.
 * Each is {code, pass, op, tensor, message} (pass, op, tensor null when
 * they do not apply); at most WARNINGS_MAX, then one MORE_WARNINGS. */
#define WARNINGS_MAX 1000

static void warn(struct run *r, const char *code, int pass, const char *tensor,
                 const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void warn(struct run *r, const char *code, int pass, const char *tensor,
                 const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    if (json_array_size(r->warnings) >= WARNINGS_MAX) {
        r->warnings_dropped++;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_array_append_new(r->warnings, json_pack(
        "{s:s, s:o, s:o, s:o, s:s}", "code", code, "pass",
        pass >= 0 ? json_integer(pass) : json_null(), "op",
        pass >= 0 ? json_string(r->spec->passes[pass].ops->op) : json_null(), "tensor",
        tensor ? json_string(tensor) : json_null(), "message", msg));
}

/* The index of the first pass with this op, or -1. */
static int pass_of_op(const struct run *r, const char *op)
{
    for (size_t k = 0; k < r->spec->n_passes; k++)
        if (!strcmp(r->spec->passes[k].ops->op, op))
            return (int)k;
    return -1;
}

/* After one tensor's report row (borrowed) is made. */
static void tensor_warnings(struct run *r, const struct slim_tensor *src, json_t *row)
{
    const char *name = json_string_value(json_object_get(row, "name")), *key;
    json_t *v, *sp = json_object_get(row, "sparsity");
    json_object_foreach(row, key, v) {
        const char *text = json_string_value(v);
        if (text && !strncmp(text, "skipped", 7))
            warn(r, "TENSOR_SKIPPED", pass_of_op(r, key), name, "%s", text);
    }
    if (r->w.nm_broken > 0) {
        int k = r->w.nm_after;
        warn(r, "PATTERN_LOST", k >= 0 ? k : r->w.nm_pass, name,
             "the %d:%d pattern of passes[%d] (prune) no longer holds in the artifact: %lld "
             "group(s) of %d have more than %d non-zeros%s%s%s", r->w.nm_n, r->w.nm_m,
             r->w.nm_pass, (long long)r->w.nm_broken, r->w.nm_m, r->w.nm_n,
             k >= 0 ? " after passes[" : "", k >= 0 ? r->spec->passes[k].ops->op : "",
             k >= 0 ? "]" : "");
    }
    if (json_is_number(sp) && json_number_value(sp) >= 1.0 && r->w.orig) {
        size_t n = (size_t)slim_tensor_numel(src), i;
        for (i = 0; i < n && r->w.orig[i] == 0.0f; i++)
            ;
        if (i < n)
            warn(r, "TENSOR_ZEROED", -1, name, "every weight of this tensor is zero in the "
                 "artifact (it had non-zeros before)");
    }
}

/* After the stream: passes that selected nothing. */
static void selection_warnings(struct run *r)
{
    for (size_t k = 0; k < r->spec->n_passes; k++) {
        json_t *p = json_array_get(r->spec->json, k);
        char *inc, *exc;
        if (r->selected[k])
            continue;
        inc = json_dumps(json_object_get(p, "include"), JSON_COMPACT | JSON_ENCODE_ANY);
        exc = json_dumps(json_object_get(p, "exclude"), JSON_COMPACT | JSON_ENCODE_ANY);
        warn(r, "EMPTY_SELECTION", (int)k, NULL,
             "passes[%zu] (%s) selected no tensor (include %.120s, exclude %.120s): it did "
             "nothing", k, r->spec->passes[k].ops->op, inc ? inc : "default",
             exc ? exc : "none");
        free(inc);
        free(exc);
    }
}

static int stream(struct run *r, struct out *o, const char *out_path, int planned,
                  struct slim_report_totals *tot, json_t *rows, struct slim_error *err)
{
    struct slim_artifact art;
    struct slim_writer *spill = NULL;
    char sp[PATH_MAX];
    size_t pos = 0, glen = 0;
    uint8_t *graph = NULL;
    double t0;
    int rc = 0;

    memset(&art, 0, sizeof art);
    if (planned && ((rc = out_begin(o, err)) || (rc = out_index(o, r, err))))
        return rc;
    r->bytes_done = 0;
    for (size_t s = 0, i = 0; s < r->src.n && !rc; s++) {
        const struct slim_shard *sh = &r->src.shards[s];
        struct slim_writer *wr;
        if (planned) {
            if ((rc = out_shard_begin(o, r, s, err)))
                break;
            wr = o->wr;
        } else {
            layout_release(&r->plan[s]);
            json_object_clear(r->entries[s]);
            spill_path(out_path, s, sp, sizeof sp);
            if ((rc = slim_writer_open(sp, NULL, NULL, &spill, err)))
                break;
            wr = spill;
        }
        pos = 0;
        for (size_t j = 0; j < sh->model.n_tensors; j++, i++) {
            const struct slim_tensor *src = &sh->model.tensors[j];
            if ((rc = tensor_progress(r, src, err)) || (rc = begin_tensor(r, src, err)) ||
                (rc = read_tensor(r, sh, src, r->touched[i] & TOUCHED,
                                  r->touched[i] & COPIES_RAW, err)) ||
                (rc = run_passes(r, r->spec->n_passes, err)) ||
                (rc = slim_work_check(&r->w, -1.0, err)) ||
                (rc = carry_record(r, err)) ||
                (rc = slim_artifact_layout(&r->w, &art, err)))
                goto out;
            t0 = slim_now();
            rc = slim_report_tensor(&r->w, &art, tot, rows, err);
            r->t_measure += slim_now() - t0;
            if (rc)
                goto out;
            tensor_warnings(r, src, json_array_get(rows, json_array_size(rows) - 1));
            if (planned)
                rc = layout_check(&r->plan[s], &pos, &art, src->name, err);
            else if (!(rc = layout_add(&r->plan[s], &art, err)))
                rc = slim_artifact_describe(&r->w, r->entries[s], err);
            if (rc || (rc = emit(r, wr, &art, err)))
                goto out;
            slim_artifact_release(&art);
            work_clear(&r->w);
            r->bytes_done += src->nbytes;
        }
        if (planned && pos != r->plan[s].n)
            rc = slim_error_set(err, SLIM_EINTERNAL, "the artifact has fewer tensors than planned");
        else if (planned)
            rc = out_file_end(o, err);
        else {
            rc = slim_writer_finish(spill, err);
            spill = NULL;
        }
    }
    if (rc)
        goto out;
    r->w.stage = "write";
    r->w.p_lo = r->w.p_hi = 0.98;
    if ((rc = slim_work_check(&r->w, 0.0, err)))
        goto out;
    if (r->src.onnx && !r->spec->entropy) {
        rc = out_onnx(r, o, out_path, err);
        goto out;
    }
    if (!planned) {
        if (r->src.onnx && (rc = container_begin(r, o, &graph, &glen, err)))
            goto out;
        if ((rc = out_begin(o, err)) || (rc = out_index(o, r, err)))
            goto out;
        for (size_t s = 0; s < r->src.n && !rc; s++) {
            spill_path(out_path, s, sp, sizeof sp);
            if (!(rc = out_shard_begin(o, r, s, err)) && !(rc = copy_spill(r, sp, o->wr, err))) {
                if (graph) {
                    struct slim_piece piece = {graph, glen};
                    rc = slim_writer_submit(o->wr, &piece, 1, (void *[]){graph}, 1, err);
                    graph = NULL;
                }
                if (!rc)
                    rc = out_file_end(o, err);
            }
            unlink(sp);
        }
        if (rc)
            goto out;
    }
    rc = out_end(o, err);
out:
    slim_aligned_free(graph);
    slim_artifact_release(&art);
    slim_writer_abort(spill);
    for (size_t s = 0; !planned && s < r->src.n; s++) {
        spill_path(out_path, s, sp, sizeof sp);
        unlink(sp);
    }
    return rc;
}

/* Runs the streaming passes of spec over the model at in_path into
 * out_path: the whole job, or one part of a job that training passes cut
 * (sg not NULL; see slim_pipeline_run). */
static int run_segment(const struct slim_spec *spec, const char *in_path, const char *out_path,
                       const struct slim_run_opts *opts, struct seg *sg, json_t **report,
                       struct slim_error *err)
{
    struct run r;
    struct out o;
    struct slim_report_totals tot;
    json_t *rows = json_array(), *passes_rep = json_array();
    double t_start = slim_now(), t_plan, t_stream;
    int rc, planned;

    *report = NULL;
    memset(&tot, 0, sizeof tot);
    memset(&o, 0, sizeof o);
    if (opts && opts->progress && opts->progress(opts->progress_ud, 0.0, "load")) {
        json_decref(rows);
        json_decref(passes_rep);
        return slim_error_set(err, SLIM_ECANCELED, "canceled");
    }
    rc = run_init(&r, spec, in_path, opts, err);
    r.seg = sg;
    if (rc)
        goto out;
    /* a part after a training pass reads the trainer's temp file: the
     * artifact (the container's slimd.onnx_name, an external-data tar's
     * member names) keeps the job's model's name */
    if (sg && sg->before && sg->before->name && r.src.onnx && r.src.onnx->name &&
        strcmp(sg->before->name, r.src.onnx->name)) {
        char *name = slim_strdup(sg->before->name);
        if (!name) {
            rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
            goto out;
        }
        slim_free(r.src.onnx->name);
        r.src.onnx->name = name;
    }
    if (!rows || !passes_rep) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
        goto out;
    }
    o.kind = r.src.kind;
    o.path = out_path;
    o.sink = opts ? opts->sink : NULL;
    o.sink_ud = opts ? opts->sink_ud : NULL;
    if ((rc = plan_model(&r, err)) || (rc = onnx_plan_check(&r, err)) ||
        (rc = eval_check(&r, err)))
        goto out;
    /* ONNX: the graph is built around the stored tensors at the end */
    planned = !r.w.unplannable && !r.src.onnx && !spec->entropy;
    t_plan = slim_now() - t_start;
    if (spec->memory_limit && r.peak > spec->memory_limit) {
        rc = budget_error(&r, spec->memory_limit, err);
        goto out;
    }
    if ((rc = run_sweeps(&r, err)))
        goto out;
    t_stream = slim_now();
    if ((rc = stream(&r, &o, out_path, planned, &tot, rows, err)))
        goto out;
    t_stream = slim_now() - t_stream;
    tot.file_bytes_before = (int64_t)(sg && sg->bytes_before ? sg->bytes_before : r.src.bytes);
    tot.file_bytes_after = (int64_t)o.total;
    if (sg) {
        for (size_t k = 0; k < spec->n_passes; k++)
            sg->seconds[spec->passes[k].index] += r.seconds[k];
        if (sg->intermediate) {
            rc = 0;
            goto out;
        }
    }
    for (size_t k = 0; !sg && k < spec->n_passes; k++)
        json_array_append_new(passes_rep,
                              json_pack("{s:I, s:s, s:f}", "index", (json_int_t)k, "op",
                                        spec->passes[k].ops->op, "seconds", r.seconds[k]));
    if ((rc = slim_report_finish(&tot, rows, passes_rep, report, err)))
        goto out;
    selection_warnings(&r);
    if (r.warnings_dropped)
        json_array_append_new(r.warnings, json_pack(
            "{s:s, s:n, s:n, s:n, s:s}", "code", "MORE_WARNINGS", "pass", "op", "tensor",
            "message", "more warnings were left out of the report"));
    json_object_set(*report, "warnings", r.warnings);
    if (r.src.n > 1 || r.src.kind != SLIM_SRC_FILE)
        json_object_set_new(json_object_get(*report, "totals"), "shards",
                            json_integer((json_int_t)r.src.n));
    json_object_set_new(*report, "timings",
                        json_pack("{s:f, s:f, s:f, s:f, s:f, s:b}", "plan_seconds", t_plan,
                                  "read_seconds", r.t_read, "measure_seconds", r.t_measure,
                                  "stream_seconds", t_stream, "total_seconds",
                                  slim_now() - t_start, "streamed_header", planned));
    if (r.src.onnx) {
        double t_eval = slim_now();
        json_t *ev = NULL;
        if ((rc = evaluate(&r, sg && sg->before ? sg->before : r.src.onnx, out_path, opts, &ev,
                           err)))
            goto out;
        json_object_set_new(*report, spec->eval_dataset ? "accuracy" : "drift", ev);
        json_object_set_new(json_object_get(*report, "timings"), "eval_seconds",
                            json_real(slim_now() - t_eval));
    }
    /* a cancel heard now still wins: the artifact goes, and the job ends
     * canceled rather than succeeded (which the store would refuse) */
    r.w.p_lo = r.w.p_hi = 1.0;
    rc = slim_work_check(&r.w, 0.0, err);
out:
    if (o.wr)
        slim_writer_abort(o.wr);
    if (rc) {
        if (o.kind == SLIM_SRC_INDEX && r.src.n) {
            char path[PATH_MAX];
            for (size_t s = 0; s < r.src.n; s++) {
                snprintf(path, sizeof path, "%s/%s", out_path, r.src.shards[s].name);
                unlink(path);
            }
            snprintf(path, sizeof path, "%s/%s", out_path, r.src.index_name);
            unlink(path);
        } else {
            unlink(out_path);
        }
        json_decref(*report);
        *report = NULL;
    }
    json_decref(rows);
    json_decref(passes_rep);
    run_release(&r);
    slim_alloc_trim();
    return rc;
}

/* ---- jobs with training passes ------------------------------------------- */

/* Training passes (distill, finetune) need the whole model and many
 * passes over the data, so a job with them is cut into parts: the
 * streaming passes between two training passes run as one part of the
 * streaming pipeline above, each training pass is one whole-model stage
 * between parts, and files carry the model from one to the next:
 *
 *   model -> [prune] -> seg0.onnx -> finetune -> train0.onnx -> [cluster]
 *         -> seg1.onnx -> finetune -> train1.onnx -> [(cluster again)] -> artifact
 *
 * A part before a training pass writes ONNX with every weight decoded to
 * fp32 (output.dequantize), which is what the trainer reads; the last
 * part writes the artifact as the spec says, and its report and
 * evaluation compare the artifact with the job's original model.  What
 * the streamed passes did crosses each training stage as the "carry"
 * (name -> {"pruned", "encoded"}): the training pass turns it into
 * constraints (pass_train.c), the next part marks pruned tensors pruned
 * again (their zeros stay structural, for the sparse output and later
 * passes), and the encoding pass (cluster or quantize) that ran before a
 * training pass is applied again, to the tensors it encoded, in every
 * part after: quantized weights were trained as float master copies
 * with fake quantization and are re-quantized there; clustered ones kept
 * at most k distinct values, which k-means gives back exactly.  A
 * distill resets the carry: the student's weights owe nothing to the
 * passes before.
 *
 * Rejected: holding the model in memory across the job (the streaming
 * passes are written against one tensor at a time, and a second
 * in-memory path for each would have been a second implementation of
 * every pass).  The files cost one write and read of the model per
 * training pass, which is nothing beside the training itself.
 */

struct prog {
    slim_progress_fn fn;
    void *ud;
    double lo, hi;
};

static int prog_map(void *ud, double p, const char *stage)
{
    struct prog *g = ud;
    if (!g->fn)
        return 0;
    return g->fn(g->ud, p < 0 ? -1.0 : g->lo + (g->hi - g->lo) * p, stage);
}

struct job {
    const struct slim_spec *spec;
    const struct slim_run_opts *opts;
    struct prog prog;
    double *seconds;
    const char *out_path;
    int n_tmp;
    char tmp[64][PATH_MAX];
};

/* A temp file beside the artifact, removed when the job ends. */
static const char *job_tmp(struct job *j, const char *what)
{
    if (j->n_tmp == (int)(sizeof j->tmp / sizeof j->tmp[0]))
        return NULL;
    snprintf(j->tmp[j->n_tmp], PATH_MAX, "%s.%s%d.onnx", j->out_path, what, j->n_tmp);
    return j->tmp[j->n_tmp++];
}

static void job_cleanup(struct job *j)
{
    char data[PATH_MAX + 8];
    for (int i = 0; i < j->n_tmp; i++) {
        unlink(j->tmp[i]);
        snprintf(data, sizeof data, "%s.data", j->tmp[i]);
        unlink(data);
    }
}

/* The spec's passes [lo, hi), plus the encoding pass again when one ran
 * before lo (applied only to what it encoded: carry's "encoded"), as a
 * spec of their own; intermediate parts write dense fp32 ONNX.  The
 * passes are borrowed from spec (shallow copies). */
static int part_spec(const struct slim_spec *spec, size_t lo, size_t hi, int intermediate,
                     json_t *encoded, struct slim_spec *out, struct slim_error *err)
{
    const struct spec_pass *enc = NULL;
    size_t n = 0;
    *out = *spec;
    for (size_t k = 0; k < lo; k++)
        if (spec->passes[k].ops->stage == 3)
            enc = &spec->passes[k];
    out->passes = slim_calloc(hi - lo + 2, sizeof *out->passes);
    if (!out->passes)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    for (size_t k = lo; k < hi; k++)
        out->passes[n++] = spec->passes[k];
    if (enc && encoded && json_object_size(encoded)) {
        out->passes[n] = *enc;
        out->passes[n].sel.only = encoded;
        n++;
    }
    out->n_passes = n;
    if (intermediate) {
        out->entropy = 0;
        out->dequantize = 1;
        out->sparse = 0;
        out->want_onnx = 1;
        out->onnx_opset = 0;
        out->float16_graph = 0;
        out->eval_dataset = NULL;
    }
    return 0;
}

/* The carry's encoded tensors (a new object of their names). */
static json_t *encoded_of(json_t *carry)
{
    json_t *o = json_object(), *v;
    const char *name;
    json_object_foreach(carry, name, v) {
        if (json_is_true(json_object_get(v, "encoded")))
            json_object_set_new(o, name, json_true());
    }
    return o;
}

struct lowrank_ud {
    struct job *j;
    double lo, hi;
};

/* distill {"from": "lowrank"}: the teacher through the lowrank pass. */
static int lowrank_student(void *ud, const char *in, const char *out, double ratio,
                           struct slim_error *err)
{
    struct lowrank_ud *lu = ud;
    struct slim_spec sub;
    struct spec_pass sp;
    struct seg sg;
    struct slim_run_opts o = *lu->j->opts;
    struct prog g = {lu->j->opts->progress, lu->j->opts->progress_ud, lu->lo, lu->hi};
    json_t *pj = json_pack("{s:s, s:f}", "op", "lowrank", "rank_ratio", ratio), *rep = NULL;
    double secs[1] = {0};
    int rc;

    memset(&sp, 0, sizeof sp);
    memset(&sg, 0, sizeof sg);
    sub = *lu->j->spec;
    if (!pj)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    rc = parse_pass(pj, 0, &sp, err);
    json_decref(pj);
    if (rc)
        goto out;
    sub.passes = &sp;
    sub.n_passes = 1;
    sub.dequantize = 1;
    sub.entropy = 0;
    sub.sparse = 0;
    sub.want_onnx = 1;
    sub.onnx_opset = 0;
    sub.float16_graph = 0;
    sub.eval_dataset = NULL;
    sg.intermediate = 1;
    sg.seconds = secs;
    o.progress = prog_map;
    o.progress_ud = &g;
    o.sink = NULL;
    rc = run_segment(&sub, in, out, &o, &sg, &rep, err);
    json_decref(rep);
    if (rc && rc != SLIM_ECANCELED)
        slim_error_prefix(err, "the lowrank student");
out:
    if (sp.ops && sp.ops->release)
        sp.ops->release(sp.cfg);
    slim_free(sp.cfg);
    select_release(&sp.sel);
    return rc;
}

/* Pipeline progress of a job with training: each streamed part weighs
 * 1, each training pass 6. */
static void span(const struct slim_spec *spec, size_t upto_part, int training, double *lo,
                 double *hi)
{
    double total = 1, at = 0;
    for (size_t k = 0; k < spec->n_passes; k++)
        total += spec->passes[k].ops->model ? 7 : 0;
    for (size_t k = 0, part = 0; k < spec->n_passes && part < upto_part; k++)
        if (spec->passes[k].ops->model) {
            at += 7;
            part++;
        }
    if (training) {
        *lo = (at + 1) / total;
        *hi = (at + 7) / total;
    } else {
        *lo = at / total;
        *hi = (at + 1) / total;
    }
}

static int run_training_job(const struct slim_spec *spec, const char *in_path,
                            const char *out_path, const struct slim_run_opts *opts,
                            json_t **report, struct slim_error *err)
{
    struct job *j = slim_calloc(1, sizeof *j);
    struct slim_run_opts po, dflt;
    struct slim_onnx orig;
    struct slim_spec part;
    json_t *carry = json_object(), *training = json_array(), *encoded = NULL;
    const char *cur = in_path;
    size_t lo = 0, part_no = 0, ref = 0;
    int rc = 0, have_orig = 0;
    double t_train = 0, t_start = slim_now();

    memset(&part, 0, sizeof part);
    memset(&dflt, 0, sizeof dflt);
    if (!opts)
        opts = &dflt;
    if (!j || !carry || !training) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
        goto out;
    }
    j->spec = spec;
    j->opts = opts;
    j->out_path = out_path;
    j->seconds = slim_calloc(spec->n_passes + 1, sizeof *j->seconds);
    if (!j->seconds) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
        goto out;
    }
    if ((rc = slim_onnx_open(in_path, &orig, err)))
        goto out;
    have_orig = 1;
    po = *opts;
    po.progress = prog_map;
    po.progress_ud = &j->prog;
    j->prog.fn = opts->progress;
    j->prog.ud = opts->progress_ud;
    for (size_t k = 0; k <= spec->n_passes; k++) {
        struct seg sg;
        struct slim_train_run tr;
        const struct spec_pass *sp = k < spec->n_passes ? &spec->passes[k] : NULL;
        const char *seg_out, *train_out;
        json_t *rep = NULL, *entry;
        double t0;
        if (sp && !sp->ops->model)
            continue;
        memset(&sg, 0, sizeof sg);
        sg.intermediate = sp != NULL;
        sg.carry_in = carry;
        sg.carry_out = json_deep_copy(carry);
        sg.seconds = j->seconds;
        sg.before = &orig;
        sg.bytes_before = orig.bytes;
        json_decref(encoded);
        encoded = encoded_of(carry);
        if (!sg.carry_out || !encoded ||
            (rc = part_spec(spec, lo, sp ? k : spec->n_passes, sp != NULL, encoded, &part, err))) {
            json_decref(sg.carry_out);
            if (!rc)
                rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
            goto out;
        }
        span(spec, part_no, 0, &j->prog.lo, &j->prog.hi);
        po.sink = sp ? NULL : opts->sink;
        seg_out = sp ? job_tmp(j, "part") : out_path;
        if (!seg_out) {
            json_decref(sg.carry_out);
            rc = slim_error_set(err, SLIM_EINVAL, "too many training passes");
            goto out;
        }
        rc = run_segment(&part, cur, seg_out, &po, &sg, sp ? &rep : report, err);
        slim_free(part.passes);
        part.passes = NULL;
        json_decref(rep);
        json_decref(carry);
        carry = sg.carry_out;
        if (rc || !sp)
            break;
        /* the training pass over what the part wrote */
        cur = seg_out;
        train_out = job_tmp(j, "trained");
        entry = json_pack("{s:I}", "index", (json_int_t)k);
        memset(&tr, 0, sizeof tr);
        tr.index = k;
        tr.memory_limit = engine_limit(spec);
        tr.in_path = cur;
        tr.out_path = train_out;
        {
            int kind, labels;
            const char *id = slim_spec_ref(spec, ref, &kind, NULL, 0, &labels);
            const char *ds, *student;
            double ratio;
            slim_train_cfg_refs(sp->cfg, &ds, &student, &labels, &ratio);
            (void)id;
            tr.dataset = opts->ref_paths ? opts->ref_paths[ref] : NULL;
            ref++;
            if (student) {
                tr.student = opts->ref_paths ? opts->ref_paths[ref] : NULL;
                ref++;
            }
            if (!tr.dataset) {
                json_decref(entry);
                rc = slim_error_set(err, SLIM_EINVAL, "passes[%zu].dataset '%.64s': no file "
                                    "given for it", k, ds);
                goto out;
            }
        }
        tr.carry = carry;
        for (size_t e = 0; e < k; e++)
            if (spec->passes[e].ops->stage == 3) {
                tr.encoding = spec->passes[e].ops;
                tr.encoding_cfg = spec->passes[e].cfg;
            }
        struct lowrank_ud lu = {j, 0, 0};
        span(spec, part_no, 1, &tr.p_lo, &tr.p_hi);
        lu.lo = tr.p_lo;
        lu.hi = tr.p_lo;
        tr.lowrank = lowrank_student;
        tr.lowrank_ud = &lu;
        tr.progress = opts->progress;
        tr.progress_ud = opts->progress_ud;
        tr.stage = sp->ops->op;
        tr.training = opts->training;
        tr.training_ud = opts->training_ud;
        tr.report = entry;
        if (!train_out || !entry) {
            json_decref(entry);
            rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
            goto out;
        }
        t0 = slim_now();
        rc = sp->ops->model(sp->cfg, &tr, err);
        j->seconds[k] += slim_now() - t0;
        t_train += slim_now() - t0;
        if (rc) {
            json_decref(entry);
            if (rc != SLIM_ECANCELED)
                slim_error_prefix(err, "passes[%zu] (%s)", k, sp->ops->op);
            goto out;
        }
        json_array_append_new(training, entry);
        if (sp->ops == &slim_pass_distill) {
            /* the student starts afresh: nothing before constrains it */
            json_decref(carry);
            carry = json_object();
        }
        cur = train_out;
        lo = k + 1;
        part_no++;
    }
    if (rc)
        goto out;
    /* the report of the last part, told about the whole job */
    {
        json_t *passes_rep = json_array();
        for (size_t k = 0; k < spec->n_passes; k++)
            json_array_append_new(passes_rep,
                                  json_pack("{s:I, s:s, s:f}", "index", (json_int_t)k, "op",
                                            spec->passes[k].ops->op, "seconds", j->seconds[k]));
        json_object_set_new(*report, "passes", passes_rep);
        json_object_set_new(*report, "training", training);
        training = NULL;
        json_object_set_new(json_object_get(*report, "timings"), "train_seconds",
                            json_real(t_train));
        /* the whole job, every part and training pass (the last part's
         * own stream and plan times stay as they are) */
        json_object_set_new(json_object_get(*report, "timings"), "total_seconds",
                            json_real(slim_now() - t_start));
    }
out:
    if (rc && *report) {
        json_decref(*report);
        *report = NULL;
    }
    if (rc)
        unlink(out_path);
    if (j) {
        job_cleanup(j);
        slim_free(j->seconds);
    }
    if (have_orig)
        slim_onnx_release(&orig);
    slim_free(part.passes);
    slim_free(j);
    json_decref(carry);
    json_decref(encoded);
    json_decref(training);
    return rc;
}

int slim_pipeline_run(const struct slim_spec *spec, const char *in_path, const char *out_path,
                      const struct slim_run_opts *opts, json_t **report, struct slim_error *err)
{
    for (size_t k = 0; k < spec->n_passes; k++)
        if (spec->passes[k].ops->model) {
            /* the checks a plain run makes up front (an ONNX model; the
             * teacher's ops), before any part runs */
            uint64_t bytes;
            struct slim_error e2;
            int rc = slim_pipeline_estimate(spec, in_path, &bytes, &e2);
            if (rc) {
                *report = NULL;
                *err = e2;
                return rc;
            }
            return run_training_job(spec, in_path, out_path, opts, report, err);
        }
    return run_segment(spec, in_path, out_path, opts, NULL, report, err);
}
