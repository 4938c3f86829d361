/*
 * internal.h - what graph.c and the ops_*.c files share inside the
 * engine: values (tensors with an element type and a shape), nodes with
 * their parsed attributes, the operator table, and the calls an operator
 * makes to get its output buffers.  Nothing here is seen outside
 * passes/engine/.
 *
 * Element types are ONNX's own numbers (enum slim_onnx_type), so Cast's
 * `to`, a zero point's type and an error message need no translation.
 * How a value's elements are held in memory is simpler than the types:
 *
 *   FLOAT               float
 *   FLOAT16, DOUBLE     float too: FLOAT16 values are rounded to binary16
 *                       after every op that makes them (so they hold
 *                       exactly what an fp16 tensor can), DOUBLE values
 *                       keep float precision (Cast to DOUBLE and back is
 *                       exact; arithmetic in DOUBLE is done in float)
 *   INT64, INT32        int64_t, int32_t
 *   INT8, UINT8, BOOL   one byte (BOOL is 0 or 1)
 *   INT4, UINT4         one byte per element, unpacked when an
 *                       initializer is loaded (low nibble first)
 *
 * Holding the narrow floats as float keeps every float kernel single
 * (BLAS is sgemm only); a model whose outputs depend on double precision
 * is not what this engine is for.
 *
 * An operator is a row of the table in ops.c: its name, how many inputs
 * and outputs it takes, a compile function (reads and checks attributes
 * once, in slim_engine_new) and a run function (shapes, output buffers,
 * the numbers).  Run functions see whole batches: the first dim of the
 * graph input flows through every op like any other dim.
 */
#ifndef SLIM_ENGINE_INTERNAL_H
#define SLIM_ENGINE_INTERNAL_H

#include <stdint.h>
#include "passes/engine/engine.h"

/* A buffer of the run-time pool (graph.c): kept, with its capacity,
 * from one run to the next; refs counts the values that use it (a
 * Reshape's output shares its input's buffer). */
struct eng_buf {
    void *p;
    size_t cap;
    int refs;
};

struct eng_value {
    const char *name;           /* borrowed from the model */
    int type;                   /* enum slim_onnx_type; 0 until known */
    int ndim;
    int64_t shape[SLIM_MAX_DIMS];
    int64_t numel;
    void *data;                 /* the elements, held as the header comment says */
    struct eng_buf *buf;        /* pool buffer behind data, or NULL (constant, graph input) */
    void *owned;                /* a constant's own buffer (slim_aligned_alloc) */
    int is_const;               /* initializer, Constant, or folded at compile time */
    int is_output;              /* a graph output: kept until the next run */
    int producer;               /* position of the node that makes it in the schedule, or -1 */
    int last_use;               /* position of its last reader, or -1 */
};

#define ENG_MAX_INTS 16

/* Attributes, parsed once by the op's compile function.  One flat record
 * rather than a union per op: it is small, and each op reads only its
 * own fields. */
struct eng_attrs {
    int64_t axis;
    float alpha, beta, epsilon;
    int trans_a, trans_b;
    int allowzero;
    int to;                     /* Cast */
    int64_t block_size;         /* Quantize/DequantizeLinear, opset 21 */
    int output_dtype;           /* QuantizeLinear, opset 21 */
    int64_t start, end;         /* Shape, opset 15 */
    int has_end;
    int count_include_pad, ceil_mode;
    int64_t group;
    enum { PAD_NOTSET, PAD_SAME_UPPER, PAD_SAME_LOWER, PAD_VALID } auto_pad;
    int n_kernel, n_pads, n_strides, n_dilations;
    int64_t kernel[SLIM_MAX_DIMS], pads[2 * SLIM_MAX_DIMS], strides[SLIM_MAX_DIMS],
        dilations[SLIM_MAX_DIMS];
    /* perm (Transpose), axes (Squeeze, Unsqueeze, Slice < 10, Split <
     * 13's split sizes in ints2), starts/ends (Slice < 10), shape
     * (Reshape < 5) */
    int n_ints, n_ints2, n_ints3, has_ints;
    int64_t ints[ENG_MAX_INTS], ints2[ENG_MAX_INTS], ints3[ENG_MAX_INTS];
    int64_t num_outputs;        /* Split, opset 18 */
    int fuse_relu;              /* Conv/Gemm: the Relu that only it feeds, fused in */
    int exclusive, reverse;     /* CumSum */
};

struct eng_node {
    const Onnx__NodeProto *proto;
    const struct eng_op *op;
    int n_in, n_out;
    int *in, *out;              /* value indices; -1 for an omitted optional input */
    struct eng_attrs a;
    int folded;                 /* run once at compile time: every input was constant */
    int skip;                   /* fused into the node before it */
    const struct eng_node *pool;/* Conv: the MaxPool/AveragePool fused into it, or NULL */
};

struct eng_op {
    const char *name;
    int min_in, max_in, min_out, max_out;
    int (*compile)(struct slim_engine *e, struct eng_node *n, struct slim_error *err);
    int (*run)(struct slim_engine *e, struct eng_node *n, struct slim_error *err);
};

struct slim_engine {
    struct slim_onnx *m;
    int64_t opset;
    struct eng_value *values;   /* fixed capacity: pointers to values stay valid */
    size_t n_values, values_cap;
    struct eng_node *nodes;     /* in schedule (topological) order */
    size_t n_nodes;
    int input, output;          /* value indices */
    int in_ndim;                /* per-sample dims of the input */
    int64_t in_dims[SLIM_MAX_DIMS];
    struct eng_buf **pool;
    size_t n_pool;
    float *y;                   /* the output converted to float, when it is not */
    size_t y_cap;
    void *scratch[4];           /* op scratch (im2col columns, ...), capacity kept */
    size_t scratch_cap[4];
    uint64_t max_bytes;         /* the pool's limit (slim_engine_new_limited), 0: none */
    uint64_t pool_bytes;        /* what the pool's buffers hold */
};

/* Elements of one value at most: products of dims are checked against
 * it, so no byte count can overflow (2^48 x 8 bytes < 2^63). */
#define ENG_MAX_NUMEL ((int64_t)1 << 48)

/* ---- graph.c: what ops call -------------------------------------------- */

/* Input k of n, or NULL when it is omitted (k past the end, or ""). */
struct eng_value *eng_in(struct slim_engine *e, const struct eng_node *n, int k);
/* Output k of n, or NULL when the node does not produce it. */
struct eng_value *eng_outv(struct slim_engine *e, const struct eng_node *n, int k);
/* Gives output k of n its type and shape and a buffer for it; the
 * elements are uninitialised.  Returns 0 or SLIM_ENOMEM/SLIM_EINVAL. */
int eng_out(struct slim_engine *e, const struct eng_node *n, int k, int type, int ndim,
            const int64_t *shape, struct slim_error *err);
/* Output k of n as a new shape over src's elements (no copy): Reshape,
 * Flatten, Squeeze, Unsqueeze, Identity.  numel must match. */
int eng_out_view(struct slim_engine *e, const struct eng_node *n, int k,
                 const struct eng_value *src, int ndim, const int64_t *shape,
                 struct slim_error *err);
/* Makes v a constant: from a TensorProto (Constant's `value`), or from
 * nbytes of ONNX type `type` at src (value_float, value_ints, ...). */
int eng_const_tensor(struct slim_engine *e, struct eng_value *v, const Onnx__TensorProto *t,
                     struct slim_error *err);
int eng_const_raw(struct eng_value *v, int type, int ndim, const int64_t *shape, const void *src,
                  size_t nbytes, struct slim_error *err);
/* A scratch buffer of at least bytes, slot 0..3, kept across runs. */
void *eng_scratch(struct slim_engine *e, int slot, size_t bytes);

/* Attribute readers: the default when the attribute is absent;
 * SLIM_EFORMAT when it has the wrong type. */
int eng_attr_int(const struct eng_node *n, const char *name, int64_t dflt, int64_t *out,
                 struct slim_error *err);
int eng_attr_float(const struct eng_node *n, const char *name, float dflt, float *out,
                   struct slim_error *err);
/* INTS into out[0..*count); *count = -1 when absent. */
int eng_attr_ints(const struct eng_node *n, const char *name, int64_t *out, int max, int *count,
                  struct slim_error *err);
/* STRING, borrowed (NUL-terminated copy in buf), or NULL when absent. */
const char *eng_attr_string(const struct eng_node *n, const char *name, char *buf,
                            size_t len);

/* The elements of a shape (dims >= 0), or -1 when a dim is negative or
 * the product passes ENG_MAX_NUMEL. */
int64_t eng_numel_checked(int ndim, const int64_t *shape);

/* The integer elements of v (INT64 or INT32) into out[0..*count).  v may
 * be NULL (eng_in of an input left out): SLIM_EFORMAT. */
int eng_read_ints(const struct eng_value *v, int64_t *out, int max, int *count,
                  struct slim_error *err);

/* ---- helpers ------------------------------------------------------------- */

/* Bytes per held element (see the header comment); 0 for a type the
 * engine does not hold. */
size_t eng_held_size(int type);
static inline int eng_is_float(int type)
{
    return type == SLIM_ONNX_FLOAT || type == SLIM_ONNX_FLOAT16 || type == SLIM_ONNX_DOUBLE;
}
int64_t eng_numel(int ndim, const int64_t *shape);
/* Rounds n floats to binary16 in place (values of FLOAT16 tensors). */
void eng_round_f16(float *x, int64_t n);
/* Normalises axis (negative counts from the end) into [0, rank); -1
 * when out of range. */
int64_t eng_axis(int64_t axis, int rank);
/* "[2, 3, 4]" into buf, for messages. */
const char *eng_shape_str(int ndim, const int64_t *shape, char *buf, size_t len);

/* ---- ops.c: the operator table ------------------------------------------ */

const struct eng_op *eng_op_find(const char *name);

/* Each ops_*.c file's operators. */
extern const struct eng_op eng_ops_elementwise[];
extern const struct eng_op eng_ops_shape[];
extern const struct eng_op eng_ops_nn[];
extern const struct eng_op eng_ops_quant[];

#endif
