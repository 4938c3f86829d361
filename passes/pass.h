/*
 * pass.h - the common interface of every pass, and the working set the
 * pipeline carries from one pass to the next.  Internal to libslim.
 *
 * The pipeline streams the model: for each original tensor, in file
 * order, it builds a small working set (struct slim_work) that holds that
 * tensor alone, takes it through every pass, measures it, hands what it
 * became to the writer, and drops it.  A working tensor (struct slim_wt)
 * holds its current effective values as dense fp32 (`val`, exactly what
 * a reader of the artifact decodes) and how it will be stored (`scheme`
 * plus the packed tensors in `outs`).  A later pass starts from the
 * values the earlier one left, which is what makes composition (prune
 * then quantize, lowrank then quantize) work without special cases.  A
 * pass that replaces a tensor (lowrank: W -> W_u, W_v) adds tensors whose
 * `origin` names the original.
 *
 * Every pass has two per-tensor functions that slim_work_each runs:
 * `plan` works on shapes alone and decides what the tensor will be stored
 * as (names, dtypes, shapes, scheme metadata) without touching a value,
 * so the artifact's header, and the hash of the whole file, can be
 * written before any data; `tensor` does the work.  Both build the
 * stored tensors through the same code, and the pipeline checks that
 * what ran matches the plan.  A pass whose output shapes depend on the
 * values (lowrank by energy; pruned tensors in the sparse output) calls
 * slim_work_unplannable() while planning, and the pipeline then writes
 * the header last (pipeline.c).
 *
 * A pass that needs the whole model at once (global pruning's
 * threshold) first gets `sweeps` summary passes over every tensor, with
 * the passes before it applied, and keeps only a summary (a histogram);
 * then it applies per tensor like any other.  Rejected: keeping every
 * tensor's values until the end (the old design): 4 bytes per weight of
 * heap, 2.4 GB for a 1 GiB model, and first-touch page faults on all of
 * it.
 */
#ifndef SLIM_PASS_H
#define SLIM_PASS_H

#include "passes/kernels/kernels.h"
#include "passes/slim.h"

/* Storage schemes, named in the artifact's "slimd.tensors" metadata.
 * Persisted: explicit values, grow only at the end. */
enum slim_scheme {
    SLIM_SCHEME_COPY = 0,    /* untouched: original bytes copied */
    SLIM_SCHEME_DENSE = 1,   /* dense values in `dense_dtype` (e.g. pruned only) */
    SLIM_SCHEME_F16 = 2,
    SLIM_SCHEME_BF16 = 3,
    SLIM_SCHEME_INT8 = 4,
    SLIM_SCHEME_INT4 = 5,
    SLIM_SCHEME_TERNARY = 6,
    SLIM_SCHEME_BINARY = 7,
    SLIM_SCHEME_CLUSTER = 8,
};
const char *slim_scheme_name(int scheme);

/* One stored tensor of a scheme (W, W_scale, W_zero_point, ...). */
struct slim_out {
    char *name;          /* owned */
    enum slim_dtype dtype;
    int ndim;
    int64_t shape[SLIM_MAX_DIMS];
    void *data;          /* owned, slim_aligned_alloc */
    size_t nbytes;
};

struct slim_wt {
    char *name;                      /* name in the artifact; owned */
    char *origin;                    /* original tensor it derives from; owned */
    const struct slim_tensor *src;   /* original, borrowed from the model; NULL for new tensors */
    enum slim_dtype dtype;           /* dtype before the pipeline */
    int ndim;
    int64_t shape[SLIM_MAX_DIMS];
    int64_t rows, cols;              /* 2-D view: shape[0] x the rest */
    float *val;                      /* effective values, rows*cols; NULL while untouched */
    int scheme;                      /* enum slim_scheme */
    enum slim_dtype dense_dtype;     /* for SLIM_SCHEME_DENSE */
    struct slim_out *outs;           /* stored tensors when scheme is packed */
    int n_outs;
    json_t *scheme_info;             /* extra fields for "slimd.tensors"; owned or NULL */
    int code_bits;                   /* packed schemes: bits per code in outs[0] (8, 4, 2, 1),
                                      * rows padded to whole bytes; 0 otherwise */
    int pruned;                      /* zeros are structural: later passes keep them exact */
    json_t *report_extra;            /* per-tensor report fields (rank, clusters...); owned or NULL */
    /* measured: a quantizer read the original itself and measured what
     * it decodes to against it (stats); the report uses that instead of
     * reading both again, and val may then be NULL */
    int measured;
    struct slim_qstats stats;
};

struct slim_work {
    struct slim_wt *wts;             /* the tensors derived from one original tensor */
    size_t n, cap;
    const float *orig;               /* that original as fp32 (NULL while planning) */
    const void *raw;                 /* its bytes as stored in the model (NULL while planning) */
    int planning;                    /* running `plan` functions: no values anywhere */
    int unplannable;                 /* a plan could not know its output shapes */
    void *state;                     /* the running pass's per-run state, if it has one */
    int sweep;                       /* the summary sweep being run (summarize) */
    int threads;
    int dequantize_output;           /* output.dequantize: every touched tensor written as F32 */
    int sparse_output;               /* output.sparse: pruned tensors as mask + non-zero codes */
    int entropy_output;              /* output.entropy: codes and gaps Huffman-coded */
    /* progress: the pipeline maps a pass's own 0..1 into [p_lo, p_hi) */
    slim_progress_fn progress;
    void *progress_ud;
    double p_lo, p_hi;
    const char *stage;
    /* for the report's warnings (the pipeline reads them after each
     * tensor): the running pass's index; an N:M prune's pattern on this
     * tensor (nm_m 0: none), the pass that made it and the last pass
     * after it that touched the tensor (-1: none); how many groups of
     * the artifact's values break the pattern (report.c counts them) */
    int pass_index;
    int nm_n, nm_m, nm_pass, nm_after;
    int64_t nm_broken;
};

/* Reports fraction `frac` (0..1) of the current stage (a negative frac
 * only polls for cancellation) and returns SLIM_ECANCELED (with err set)
 * when the caller asked to stop. */
int slim_work_check(struct slim_work *w, double frac, struct slim_error *err);
/* Materialises t->val: a copy of w->orig for the original tensor (a
 * buffer reused across tensors by the allocator).  No-op while planning
 * or when val exists.  0 or SLIM_ENOMEM. */
int slim_wt_load(struct slim_work *w, struct slim_wt *t, struct slim_error *err);
/* Called by a plan that cannot know its outputs' shapes without the
 * values; returns 0. */
int slim_work_unplannable(struct slim_work *w);
/* Drops stored tensors (outs) and scheme info of t. */
void slim_wt_clear_outs(struct slim_wt *t);
/* Adds a stored tensor to t; data is stolen (freed on failure too) and
 * may be NULL (a planned tensor: nbytes says what it will hold). */
int slim_wt_add_out(struct slim_wt *t, const char *suffix, enum slim_dtype dtype, int ndim,
                    const int64_t *shape, void *data, size_t nbytes, struct slim_error *err);
/* Allocates data for every out of t that has none (after a plan
 * function described them).  0 or SLIM_ENOMEM. */
int slim_wt_alloc_outs(struct slim_wt *t, struct slim_error *err);
/* Inserts a new working tensor (e.g. a low-rank factor) at index `at`
 * (0..w->n), taking ownership of val (may be NULL while planning; freed
 * on failure too); pointers into w->wts are invalid afterwards.  Returns
 * 0 or SLIM_ENOMEM. */
int slim_work_insert(struct slim_work *w, size_t at, const char *name, const char *origin,
                     int64_t rows, int64_t cols, float *val, struct slim_error *err);
/* 1 if any element of v[0..n) is NaN or Inf. */
int slim_has_nonfinite(const float *v, size_t n);

/* Per-tensor work of a pass: returns how many tensors it inserted right
 * after index i (they are skipped), or a negative error. */
typedef int (*slim_wt_fn)(const void *cfg, struct slim_work *w, size_t i,
                          struct slim_error *err);
struct slim_select;
struct slim_train_run;
/* Runs fn over every tensor sel selects, in order (originals_only: not
 * over tensors a previous pass derived, such as low-rank factors), each
 * after a cancellation check.  fn loads the values it changes
 * (slim_wt_load), or reads w->orig while t->val is NULL.  An error from fn is returned with the tensor's name put in
 * front, unless the message already names it. */
int slim_work_each(struct slim_work *w, const struct slim_select *sel, int originals_only,
                   slim_wt_fn fn, const void *cfg, struct slim_error *err);

/* Tensor selection shared by every pass. */
struct slim_select {
    json_t *only;     /* when set, only tensors named in this object (borrowed): the
                       * pipeline re-applying an encoding after training */
    char **include;   /* NULL: the default selection */
    size_t n_include;
    char **exclude;
    size_t n_exclude;
};
/* 1 if the pass with this selection applies to t.  Globs match the
 * tensor's own name or its origin's, so "*.weight" still selects the
 * low-rank factors of a weight. */
int slim_select_match(const struct slim_select *sel, const struct slim_wt *t);

/* What the pipeline gives a whole-model pass (pipeline.c cuts the job
 * there: the passes before it stream into in_path, and the passes after
 * it stream from out_path). */
struct slim_train_run {
    size_t index;                /* the pass's index in the spec */
    const char *in_path;         /* the model as it stands: ONNX, every weight fp32 */
    const char *out_path;        /* where the trained model goes (ONNX) */
    const char *dataset;         /* the dataset's file (formats/dataset.h) */
    const char *student;         /* distill with a model id: that model's file */
    uint64_t memory_limit;       /* the teacher engine's buffers, and the trainer's
                                  * activations and gradients, each at most this (0: no cap) */
    /* what the passes before did, per tensor name: {"pruned": bool,
     * "encoded": bool} (borrowed; NULL: nothing) and the encoding pass
     * (cluster or quantize) that "encoded" refers to, with its cfg */
    json_t *carry;
    const struct slim_pass_ops *encoding;
    const void *encoding_cfg;
    /* distill {"from": "lowrank"}: writes the model at in factorised by
     * the lowrank pass with this rank_ratio to out (ONNX) */
    int (*lowrank)(void *ud, const char *in, const char *out, double rank_ratio,
                   struct slim_error *err);
    void *lowrank_ud;
    slim_progress_fn progress;   /* may be NULL */
    void *progress_ud;
    double p_lo, p_hi;
    const char *stage;
    /* the training state after every epoch (borrowed for the call) */
    void (*training)(void *ud, json_t *state);
    void *training_ud;
    json_t *report;              /* an object the pass fills (epochs, loss, history...) */
};
/* Reports fraction frac of the training pass (negative: only polls) and
 * returns non-zero when the caller asked to stop. */
int slim_train_check(struct slim_train_run *tr, double frac);
/* What a whole-model pass's cfg names: its dataset id, distill's student
 * model id (NULL for a shape), whether it needs labels, and the
 * rank_ratio of a lowrank student (0: none). */
void slim_train_cfg_refs(const void *cfg, const char **dataset, const char **student,
                         int *needs_labels, double *rank_ratio);

/* The interface every pass implements. */
struct slim_pass_ops {
    const char *op;
    /* Composition order: passes must appear in non-decreasing stage
     * (prune 1, lowrank 2, cluster/quantize 3), and at most one pass of
     * stage 3 (the storage encoding) may run. */
    int stage;
    const char *const *keys;     /* keys allowed besides op/include/exclude; NULL-terminated */
    size_t cfg_size;
    /* Reads spec (an object whose keys were already checked) into cfg
     * (zeroed, cfg_size bytes).  `where` is "passes[i]" for messages. */
    int (*parse)(json_t *spec, const char *where, void *cfg, struct slim_error *err);
    /* Frees what parse allocated inside cfg (may be NULL). */
    void (*release)(void *cfg);
    int originals_only;          /* skips tensors an earlier pass derived */
    /* Per selected tensor, on shapes alone (w->planning), and for real. */
    slim_wt_fn plan;
    slim_wt_fn tensor;
    /* Whole-model passes: how many summary sweeps this configuration
     * needs before `tensor` runs (NULL: none), the per-tensor summary
     * (with w->state and w->sweep set) and the step after each sweep.
     * state is state_size zeroed bytes that live for one run. */
    size_t state_size;
    int (*sweeps)(const void *cfg);
    slim_wt_fn summarize;
    int (*sweep_done)(const void *cfg, void *state, int sweep, struct slim_error *err);
    /* Scratch bytes beyond the pipeline's own buffers that `tensor` may
     * need for a rows x cols tensor, for the job's memory budget (NULL:
     * none worth counting). */
    size_t (*scratch_bytes)(const void *cfg, int64_t rows, int64_t cols);
    /* Whole-model passes (distill, finetune: pass_train.c) have no plan
     * or tensor function but this: they read the model as it stands
     * (an ONNX file the pipeline wrote) and write the trained one. */
    int (*model)(const void *cfg, struct slim_train_run *tr, struct slim_error *err);
};

extern const struct slim_pass_ops slim_pass_quantize;
extern const struct slim_pass_ops slim_pass_prune;
extern const struct slim_pass_ops slim_pass_lowrank;
extern const struct slim_pass_ops slim_pass_cluster;
extern const struct slim_pass_ops slim_pass_distill;
extern const struct slim_pass_ops slim_pass_finetune;

/* Finds the ops of a pass by name; NULL if unknown. */
const struct slim_pass_ops *slim_pass_find(const char *op);
/* "quantize, prune, ..." for error messages (static string). */
const char *slim_pass_names(void);

/* Spec helpers for parse(): each returns 0 or SLIM_ESPEC naming
 * where.key.  A missing key leaves *out untouched (the default). */
int slim_spec_bool(json_t *spec, const char *where, const char *key, int *out,
                   struct slim_error *err);
int slim_spec_int(json_t *spec, const char *where, const char *key, long lo, long hi, long *out,
                  struct slim_error *err);
int slim_spec_num(json_t *spec, const char *where, const char *key, double lo, double hi,
                  double *out, struct slim_error *err);
/* choices is NULL-terminated; *out is the index of the match. */
int slim_spec_enum(json_t *spec, const char *where, const char *key, const char *const *choices,
                   int *out, struct slim_error *err);

#endif
