/*
 * slim.h - the public interface of libslim, slimd's compute library.
 *
 * libslim holds everything that touches model weights.  Its folders show
 * its layers: kernels/ uses only the ground; formats/ the ground and the
 * kernels; engine/ the ground and formats/onnx.h; the passes, pipeline,
 * report and eval use them all, and nothing uses them:
 *   passes/            the ground (this header, errors, allocation, dtypes,
 *                      globs), and on top the passes (pass_*.c, pass.c
 *                      their registry), the pipeline that runs one job
 *                      spec over one model (pipeline.c), the report
 *                      (report.c), the artifact's layout (artifact.c)
 *                      and the evaluation (eval.c)
 *   passes/kernels/    numbers in, numbers out: pruning, quantizers, SVD,
 *                      k-means, each with a `_ref` twin (kernels.h)
 *   passes/formats/    bytes <-> tensors and graphs: safetensors, sharded
 *                      sources, the artifact writer, ONNX in and out
 *                      (onnx.h), datasets (dataset.h)
 *   passes/engine/     runs an ONNX graph (engine.h)
 * It knows nothing of HTTP, SQLite or libuv, so the daemon, the offline
 * `slimd compress`, the unit tests and the benchmarks all call the same
 * code.
 *
 * Job specs and reports are JSON, and the safetensors header is JSON, so
 * libslim uses jansson for them (DESIGN.md allows it; STYLE.md's "libc and
 * BLAS only" was written for the kernels, which indeed use nothing else).
 * Writing a second, private JSON parser for the safetensors header was
 * rejected: jansson's JSON_REJECT_DUPLICATES already gives the strictness
 * a header parser needs.
 *
 * Errors are values: every fallible function returns 0 or a negative
 * enum slim_errno, and puts its detail into a caller-owned struct
 * slim_error that needs no allocation.
 */
#ifndef SLIM_H
#define SLIM_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

/* ---- errors -------------------------------------------------------- */

/* X(name, value, stable REST code, HTTP status, default message) */
#define SLIM_ERRNO_MAP(X)                                                   \
    X(OK,          0,   "OK",                200, "ok")                     \
    X(EINVAL,     -1,   "INVALID_ARGUMENT",  400, "invalid argument")       \
    X(ESPEC,      -2,   "INVALID_SPEC",      400, "invalid job spec")       \
    X(EFORMAT,    -3,   "INVALID_MODEL",     400, "malformed model file")   \
    X(EMEDIA,     -4,   "UNSUPPORTED_MEDIA", 415, "unsupported media type") \
    X(ENOTFOUND,  -5,   "NOT_FOUND",         404, "not found")              \
    X(ECONFLICT,  -6,   "CONFLICT",          409, "conflict")               \
    X(ETOOBIG,    -7,   "PAYLOAD_TOO_LARGE", 413, "payload too large")      \
    X(EMETHOD,    -8,   "METHOD_NOT_ALLOWED",405, "method not allowed")     \
    X(ENOMEM,     -9,   "OUT_OF_MEMORY",     500, "out of memory")          \
    X(EIO,        -10,  "IO_ERROR",          500, "input/output error")     \
    X(ECANCELED,  -11,  "CANCELED",          409, "canceled")               \
    X(EINTERNAL,  -12,  "INTERNAL",          500, "internal error")         \
    X(ENUMERIC,   -13,  "NUMERIC_ERROR",     400, "numeric error")          \
    X(ERANGE,     -14,  "RANGE_NOT_SATISFIABLE", 416, "range not satisfiable") \
    X(EBUDGET,    -15,  "OVER_MEMORY_BUDGET", 422, "over the memory budget") \
    X(EBUSY,      -16,  "TOO_MANY_REQUESTS", 429, "too many requests") \
    X(ENOSPACE,   -17,  "INSUFFICIENT_STORAGE", 507, "insufficient storage") \
    X(EUNSUPPORTED, -18, "UNSUPPORTED_OPERATOR", 422, "unsupported operator") \
    X(EDATASET,   -19,  "INVALID_DATASET",   400, "malformed dataset") \
    X(EUNAUTH,    -20,  "UNAUTHORIZED",      401, "no valid bearer token") \
    X(EFORBIDDEN, -21,  "FORBIDDEN",         403, "forbidden") \
    X(EGATE,      -22,  "GATE_FAILED",       422, "quality gate failed") \
    X(EIDEMPOTENCY, -26, "IDEMPOTENCY_KEY_REUSED", 422, "idempotency key reused")

enum slim_errno {
#define SLIM_X(name, val, code, status, msg) SLIM_##name = val,
    SLIM_ERRNO_MAP(SLIM_X)
#undef SLIM_X
};

struct slim_error {
    int code;      /* enum slim_errno */
    char msg[160]; /* git-style message, e.g. "passes[1]: unknown op 'prun'" */
};

/* Sets err (if not NULL) to code and a printf-formatted message; returns
 * code, so callers can write `return slim_error_set(err, ...)`. */
int slim_error_set(struct slim_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prefixes err->msg with "prefix: " (used to add context as an error
 * travels up, e.g. the tensor name). */
void slim_error_prefix(struct slim_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
const char *slim_strerror(int code);   /* "invalid job spec" */
const char *slim_errcode(int code);    /* "INVALID_SPEC" */
int slim_http_status(int code);        /* 400 */

/* ---- allocation ------------------------------------------------------ */

/* Every allocation in slimd goes through these, so tests can make the Nth
 * allocation fail (slim_alloc_fail_after) and count what is still live. */
void *slim_malloc(size_t n);
void *slim_calloc(size_t n, size_t size);
void *slim_realloc(void *p, size_t n);
char *slim_strdup(const char *s);
void slim_free(void *p);
/* 64-byte aligned, for float arrays the kernels vectorise over. */
void *slim_aligned_alloc(size_t n);
void slim_aligned_free(void *p);
/* After n more successful allocations, every allocation fails; n < 0
 * turns failure injection off.  Test-only; not thread-safe to change
 * while other threads allocate. */
void slim_alloc_fail_after(long n);
long slim_alloc_live(void);            /* allocations not yet freed */
/* Returns the cached large blocks (see alloc.c) to the kernel.  Any
 * thread, any time; the pipeline calls it when a job ends. */
void slim_alloc_trim(void);

/* ---- BLAS ---------------------------------------------------------- */

/* When the installed OpenBLAS fell back to its generic Prescott kernels
 * on a CPU that has AVX-512 (or AVX2 and FMA), sets OPENBLAS_CORETYPE
 * and runs the program again (argv); returns when it did not (the core
 * is right, the user chose one, or the exec failed).  First thing in
 * main (passes/blas.c). */
void slim_blas_pick_kernels(char **argv);

/* ---- dtypes ---------------------------------------------------------- */

/* Persisted (reports, metadata): explicit values, grow only at the end. */
enum slim_dtype {
    SLIM_DT_F64 = 0,
    SLIM_DT_F32 = 1,
    SLIM_DT_F16 = 2,
    SLIM_DT_BF16 = 3,
    SLIM_DT_I64 = 4,
    SLIM_DT_I32 = 5,
    SLIM_DT_I16 = 6,
    SLIM_DT_I8 = 7,
    SLIM_DT_U8 = 8,
    SLIM_DT_BOOL = 9,
    SLIM_DT_COUNT
};

const char *slim_dtype_name(enum slim_dtype dt);          /* "F32" */
int slim_dtype_parse(const char *name, enum slim_dtype *out); /* 0 or SLIM_EFORMAT */
size_t slim_dtype_size(enum slim_dtype dt);               /* bytes per element */
int slim_dtype_is_float(enum slim_dtype dt);

/* IEEE binary16 / bfloat16 <-> binary32, round to nearest even; NaN stays
 * NaN (quiet), Inf stays Inf, overflow rounds to Inf, subnormals kept. */
uint16_t slim_f32_to_f16(float f);
float slim_f16_to_f32(uint16_t h);
uint16_t slim_f32_to_bf16(float f);
float slim_bf16_to_f32(uint16_t h);

/* Converts n elements of a floating dtype at src (possibly unaligned,
 * little-endian) to float.  Returns SLIM_EINVAL for a non-float dtype. */
int slim_to_f32(enum slim_dtype dt, const void *src, size_t n, float *dst);

/* ---- tensors and models --------------------------------------------- */

#define SLIM_MAX_DIMS 8

struct slim_tensor {
    char *name;                 /* owned */
    enum slim_dtype dtype;
    int ndim;
    int64_t shape[SLIM_MAX_DIMS];
    const void *data;           /* borrowed from the model's mapping, or owned if own != NULL */
    void *own;                  /* non-NULL when this tensor owns its bytes (then data == own) */
    size_t nbytes;
    int role;                   /* enum slim_role: what the graph uses it for, where known */
    int file_mapped;            /* data is in a read-only file mapping (pages can be given
                                 * back and re-read); ONNX sources set it */
};

/* What a tensor is to its model, where the format says (ONNX does;
 * safetensors does not, and the default selection goes by shape and
 * name). */
enum slim_role {
    SLIM_ROLE_UNKNOWN = 0,
    SLIM_ROLE_WEIGHT = 1,       /* the weight of a Gemm, MatMul or Conv */
    SLIM_ROLE_OTHER = 2,        /* anything else: never selected by default */
};

int64_t slim_tensor_numel(const struct slim_tensor *t);
/* Writes "[4096, 4096]"-style shape JSON; new reference. */
json_t *slim_shape_json(const struct slim_tensor *t);

/* A model: tensors in file order plus string metadata. */
struct slim_model {
    struct slim_tensor *tensors;
    size_t n_tensors;
    json_t *metadata;           /* object of string -> string; owned; never NULL */
    void *map;                  /* mmap of the file, or NULL */
    size_t map_len;
    size_t file_bytes;
};

/* ---- safetensors ------------------------------------------------------ */

/* Largest header slimd accepts: 100 MB is what the reference
 * implementation allows, and nothing real comes close. */
#define SLIM_ST_MAX_HEADER (100u * 1024 * 1024)
/* __metadata__ is free text that slimd stores with the model and copies
 * into every artifact: real files carry a handful of keys ("format":
 * "pt"), so more than this is refused rather than stored and re-read on
 * every request. */
#define SLIM_ST_MAX_METADATA_KEYS 1024
#define SLIM_ST_MAX_METADATA_BYTES (1024u * 1024)

/* Opens and validates a safetensors file (mmap, read-only).  Checks: the
 * 8-byte length fits the file and SLIM_ST_MAX_HEADER; the header is one
 * JSON object without duplicate keys; every entry has a known dtype, a
 * shape of non-negative ints, and data_offsets [begin, end] inside the
 * data area with end - begin == numel * dtype size; the spans are
 * contiguous, non-overlapping and cover the data area exactly;
 * __metadata__, if present, maps strings to strings (at most
 * SLIM_ST_MAX_METADATA_KEYS of them, SLIM_ST_MAX_METADATA_BYTES in all).  On success fills
 * *m (release it with slim_model_release); on failure returns
 * SLIM_EFORMAT (not safetensors, or malformed) / SLIM_EIO and leaves *m
 * empty. */
int slim_st_open(const char *path, struct slim_model *m, struct slim_error *err);
/* Same checks over a buffer the caller keeps alive while m is used. */
int slim_st_parse(const void *buf, size_t len, struct slim_model *m, struct slim_error *err);
void slim_model_release(struct slim_model *m);
/* Looks a tensor up by name; borrowed pointer or NULL. */
const struct slim_tensor *slim_model_find(const struct slim_model *m, const char *name);

/* Writes tensors (in the order given) and metadata (object of strings,
 * may be NULL) as safetensors to path, atomically: a temp file in the same
 * folder, fsync, rename; the temp file is removed on error.  The header is
 * padded with spaces to a multiple of 8 bytes, as the reference writer
 * does. */
int slim_st_write(const char *path, const struct slim_tensor *tensors, size_t n,
                  json_t *metadata, struct slim_error *err);

/* Format sniffing for uploads: "safetensors", or NULL. */
const char *slim_format_detect(const void *head, size_t len);

/* ---- pipeline --------------------------------------------------------- */

/* Progress callback: called from the thread running the pipeline with
 * progress in [0, 1] (or -1 when it only polls for cancellation) and the
 * current stage ("load", "quantize", "write",
 * ...).  Returning non-zero asks the pipeline to stop: it returns
 * SLIM_ECANCELED at its next check, which comes at least once per tensor
 * and once per 64 rows inside large tensors. */
typedef int (*slim_progress_fn)(void *ud, double progress, const char *stage);

struct slim_spec;  /* opaque: a validated job spec */

/* Validates a whole job spec, {"passes": [...], "output": {...}} (other
 * top-level keys, such as "model", are the caller's and are ignored when
 * listed in `allow`, a NULL-terminated list; any other key is an error).
 * On error returns SLIM_ESPEC with a message that names the field, e.g.
 * "passes[1].dtype: expected one of int8, fp16, bf16".  The spec borrows
 * nothing from `json`. */
int slim_spec_parse(json_t *json, const char *const *allow, struct slim_spec **out,
                    struct slim_error *err);
void slim_spec_free(struct slim_spec *spec);
/* Checks a finished job's report (a new "gates" array is added to it)
 * against the spec's "gates": SLIM_EGATE naming the first gate missed,
 * its measured value and its bound; 0 when all hold or there are none. */
int slim_spec_check_gates(const struct slim_spec *spec, json_t *report, struct slim_error *err);
/* The id in the spec's "eval": {"dataset": id}, borrowed; NULL when the
 * spec has no eval.  The caller resolves it to a file
 * (slim_run_opts.eval_dataset). */
const char *slim_spec_eval_dataset(const struct slim_spec *spec);
/* The ids the training passes (distill, finetune) name, for the caller
 * to check and resolve to files (slim_run_opts.ref_paths): their
 * datasets (SLIM_REF_DATASET) and distill's student when it is an
 * uploaded model (SLIM_REF_MODEL), in pass order.  slim_spec_ref returns
 * ref i's id (borrowed; NULL past the end), its kind, the field that
 * names it ("passes[2].dataset") into field, and whether the pass trains
 * on labels (a dataset without them cannot serve it). */
enum { SLIM_REF_DATASET = 0, SLIM_REF_MODEL = 1 };
size_t slim_spec_n_refs(const struct slim_spec *spec);
const char *slim_spec_ref(const struct slim_spec *spec, size_t i, int *kind, char *field,
                          size_t field_len, int *needs_labels);
/* The job's "limits": {"memory_mb": N} in bytes, 0 when it has none. */
uint64_t slim_spec_memory_limit(const struct slim_spec *spec);
/* Threads a job may use for BLAS and element-wise kernels (default 0:
 * every core; slim_run_opts.threads, when set, wins). */
void slim_spec_set_threads(struct slim_spec *spec, int threads);

struct slim_run_opts {
    slim_progress_fn progress;  /* may be NULL */
    void *progress_ud;
    int threads;                /* 0: use every core */
    /* Called on the pipeline's writer thread with every byte of the
     * artifact, in file order, as it is written (the daemon hashes it
     * there, so the artifact is never read back); may be NULL. */
    void (*sink)(void *ud, const void *buf, size_t len);
    void *sink_ud;
    /* The job's "eval" dataset as a file (formats/dataset.h's canonical
     * safetensors), resolved by the caller from the spec's id; NULL when
     * the spec has none. */
    const char *eval_dataset;
    /* The files of the training passes' references, slim_spec_n_refs of
     * them in slim_spec_ref's order (datasets in the canonical form,
     * models as uploaded); NULL when the spec has none. */
    const char *const *ref_paths;
    /* Called on the pipeline's thread after every epoch of a training
     * pass with the job's training state (borrowed for the call):
     * {"pass", "op", "epoch", "epochs", "loss", "val_accuracy",
     * "history": [{"epoch", "loss", "accuracy", "val_loss",
     * "val_accuracy", "seconds", "samples_per_s"}]}.  May be NULL. */
    void (*training)(void *ud, json_t *state);
    void *training_ud;
};

/* Runs the spec over the model at in_path and writes the artifact to
 * out_path (atomically: temp file, fsync, rename).  The model streams
 * through: one tensor at a time is read, taken through every pass,
 * measured and written, so memory is bounded by the largest tensor.
 * On success *report is a new reference to the report object.  Returns
 * 0, SLIM_ECANCELED, or an error with detail. */
int slim_pipeline_run(const struct slim_spec *spec, const char *in_path,
                      const char *out_path, const struct slim_run_opts *opts,
                      json_t **report, struct slim_error *err);

/* slim_pipeline_run returns SLIM_ECANCELED within a few hundred
 * milliseconds of its progress callback asking it to stop, but a kernel
 * step that cannot stop midway (the exact SVD's bidiagonal SVD) is left
 * to finish on a thread of its own, with its memory.  This waits until
 * no such step runs in the process.  Any thread. */
void slim_pipeline_settle(void);

/* What kind of artifact slim_pipeline_run writes for the model at
 * in_path, judged from its first bytes: 0, one safetensors file at
 * out_path; 1 (a model.safetensors.index.json naming shard files beside
 * it), a folder out_path with the same shard names and a new index; 2
 * (a tar of index and shards, as the daemon stores a sharded upload), a
 * tar at out_path laid out the same way; 3 (ONNX), an .onnx file (with
 * its external data file "<out_path>.data" beside it when the input had
 * one).  An ONNX model in a tar gives a tar (2). */
int slim_pipeline_output_kind(const char *in_path);

/* 1 when spec's artifact for the model at in_path is slimd's entropy
 * container of an ONNX model (one safetensors file, whatever
 * slim_pipeline_output_kind says of the model), else 0. */
int slim_spec_container(const struct slim_spec *spec, const char *in_path);

/* Estimates the memory the job needs at its peak: the largest working
 * set of one tensor (its bytes as read, as fp32, the values being
 * changed, each pass's scratch, and the outputs still queued for the
 * writer), from the model's header and the plan, without reading a
 * weight.  *bytes gets the estimate; err->msg (code 0) names the tensor
 * that needs it.  Returns 0 or an error opening the model. */
int slim_pipeline_estimate(const struct slim_spec *spec, const char *in_path, uint64_t *bytes,
                           struct slim_error *err);

/* Decodes any slimd artifact at in_path (a safetensors artifact, the
 * entropy container of an ONNX model, an ONNX artifact as a .onnx or
 * the daemon's tar) into plain weights at out_path, atomically: dense
 * float32 for every compressed tensor, every other tensor as stored.
 * *kind is 0 when out_path got a safetensors file, 1 for an ONNX model
 * (a plain graph whose initializers hold the decoded weights).  Returns
 * SLIM_EFORMAT naming the problem for input that is not a slimd
 * artifact or is malformed (truncated, corrupted), SLIM_EIO,
 * SLIM_ENOMEM. */
int slim_artifact_decode(const char *in_path, const char *out_path, int *kind,
                         struct slim_error *err);

/* Describes a model file for GET /v1/models: format, tensors, params.
 * New reference in *info. */
int slim_model_describe(const char *path, json_t **info, struct slim_error *err);

/* ---- datasets ----------------------------------------------------------- */

/* What the daemon calls at upload (the evaluator's loader,
 * slim_dataset_load, is in formats/dataset.h).  Errors in the data are
 * SLIM_EFORMAT with a message that names the tensor or IDX part
 * ("tensor 'labels': 9 labels for 10 samples in 'input'", "images:
 * dimension 2 is 0"); the daemon answers them as INVALID_DATASET. */

/* Checks a dataset in the canonical form (a safetensors file holding
 * `input`, samples first, F32/F16/BF16/F64/U8, and optionally integer
 * `labels` [n] >= 0, nothing else) as strictly as slim_dataset_load, and
 * describes it: *info is a new reference to {"format": "safetensors",
 * "samples", "input_shape" (one sample's dims), "input_dtype", "labels":
 * bool, "classes" (max label + 1; 0 without labels)}. */
int slim_dataset_describe(const char *path, json_t **info, struct slim_error *err);
/* Reads the IDX headers of images_path and labels_path (NULL: no labels;
 * gzip or not) and checks them against each other, without reading the
 * data: *idx_bytes gets the files' uncompressed size, *out_bytes the size
 * of the file slim_dataset_from_idx would write.  For the daemon's
 * limits, before any conversion. */
int slim_dataset_idx_size(const char *images_path, const char *labels_path,
                          uint64_t *idx_bytes, uint64_t *out_bytes, struct slim_error *err);
/* Converts MNIST-style IDX files (gzip or not) into the canonical form
 * at out_path, atomically (temp file in its folder, fsync, rename; the
 * temp file removed on error): images (any element type, at least 2
 * dims: samples first) become `input` F32, ubyte scaled by 1/255 as
 * torchvision's ToTensor does, other types as they are; labels (one
 * integer >= 0 per image) become `labels` I64.  __metadata__ says
 * "slimd.source": "idx" and "slimd.scale": "1/255" or "1".  Memory stays
 * a few MiB whatever the size. */
int slim_dataset_from_idx(const char *images_path, const char *labels_path,
                          const char *out_path, struct slim_error *err);

/* 1 if text is valid UTF-8 (jansson's rules: no overlong forms,
 * surrogates, or code points past U+10FFFF), else 0.  For names read as
 * raw bytes (ONNX protobufs, tar headers) before they reach JSON. */
int slim_utf8_valid(const char *text);

/* Glob matching used by include/exclude: '*' matches any run of
 * characters (including '.'), '?' one character, '[...]' a class. */
int slim_glob_match(const char *pattern, const char *name);

/* Wall-clock seconds from a monotonic clock. */
double slim_now(void);

#endif
