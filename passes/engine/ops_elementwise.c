/*
 * ops_elementwise.c - operators that map elements to elements: Add, Sub,
 * Mul, Div with numpy broadcasting, the activations (Relu, LeakyRelu,
 * Sigmoid, Tanh, Erf, Clip) and Cast.
 *
 * Broadcasting is planned, then looped: the two input shapes are padded
 * to the output's rank, each dim gets a stride per input (0 where that
 * input is broadcast), and adjacent dims that both inputs walk the same
 * way are merged.  What is left is an outer loop over rows and an inner
 * loop of the last merged dim in which each input's stride is 1 or 0, so
 * the inner loop is one of four plain loops the compiler vectorises:
 * x + y, x + scalar, scalar + y, scalar + scalar.  A bias add over NCHW
 * ([N, C, H, W] + [C, 1, 1]) becomes rows of H*W with a scalar per row.
 * Rejected: an index computation per element (a division per dim per
 * element), and materialising the broadcast input (memory traffic).
 *
 * Float kernels run on float for FLOAT, FLOAT16 and DOUBLE values; a
 * FLOAT16 result is rounded to binary16 afterwards (internal.h).  The
 * integer kernels (INT64, INT32) are what Shape/Gather arithmetic needs;
 * integer division by zero gives 0 rather than a trap.
 */
#pragma GCC optimize("O3")   /* -O2 on GCC 12 leaves these loops scalar */
#include <math.h>
#include <string.h>

#include "passes/engine/internal.h"

/* ---- broadcasting -------------------------------------------------------------- */

struct bcast {
    int nd;                                 /* merged dims, outer first */
    int64_t dims[SLIM_MAX_DIMS];
    int64_t sa[SLIM_MAX_DIMS], sb[SLIM_MAX_DIMS];   /* element strides, 0 = broadcast */
};

/* The output shape of a op b, and the loop plan for it. */
static int bcast_plan(const struct eng_value *a, const struct eng_value *b, int *ndim,
                      int64_t *shape, struct bcast *p, struct slim_error *err)
{
    int nd = a->ndim > b->ndim ? a->ndim : b->ndim;
    int64_t sa[SLIM_MAX_DIMS], sb[SLIM_MAX_DIMS], ra = 1, rb = 1;
    char s1[96], s2[96];

    for (int d = nd - 1; d >= 0; d--) {
        int ia = d - (nd - a->ndim), ib = d - (nd - b->ndim);
        int64_t da = ia >= 0 ? a->shape[ia] : 1, db = ib >= 0 ? b->shape[ib] : 1;
        if (da != db && da != 1 && db != 1)
            return slim_error_set(err, SLIM_EINVAL, "shapes %s and %s do not broadcast",
                                  eng_shape_str(a->ndim, a->shape, s1, sizeof s1),
                                  eng_shape_str(b->ndim, b->shape, s2, sizeof s2));
        shape[d] = da == 1 ? db : da;
        sa[d] = da == 1 ? 0 : ra;
        sb[d] = db == 1 ? 0 : rb;
        ra *= da;
        rb *= db;
    }
    *ndim = nd;
    p->nd = 0;
    for (int d = 0; d < nd; d++) {
        int k = p->nd - 1;
        if (shape[d] == 1)
            continue;
        if (k >= 0 && p->sa[k] == sa[d] * shape[d] && p->sb[k] == sb[d] * shape[d]) {
            p->dims[k] *= shape[d];
            p->sa[k] = sa[d];
            p->sb[k] = sb[d];
            continue;
        }
        p->dims[p->nd] = shape[d];
        p->sa[p->nd] = sa[d];
        p->sb[p->nd] = sb[d];
        p->nd++;
    }
    return 0;
}

enum bin_op { BIN_ADD, BIN_SUB, BIN_MUL, BIN_DIV };

/* One row: y[i] = a[i * sa] OP b[i * sb], sa and sb each 0 or 1. */
#define ROW_LOOPS(T, EXPR)                                                  \
    do {                                                                    \
        if (sa && sb) {                                                     \
            for (int64_t i = 0; i < n; i++) {                               \
                T x = a[i], z = b[i];                                       \
                y[i] = (EXPR);                                              \
            }                                                               \
        } else if (sa) {                                                    \
            const T z = b[0];                                               \
            for (int64_t i = 0; i < n; i++) {                               \
                T x = a[i];                                                 \
                y[i] = (EXPR);                                              \
            }                                                               \
        } else if (sb) {                                                    \
            const T x = a[0];                                               \
            for (int64_t i = 0; i < n; i++) {                               \
                T z = b[i];                                                 \
                y[i] = (EXPR);                                              \
            }                                                               \
        } else {                                                            \
            const T x = a[0], z = b[0];                                     \
            for (int64_t i = 0; i < n; i++)                                 \
                y[i] = (EXPR);                                              \
        }                                                                   \
    } while (0)

static void row_f32(enum bin_op op, const float *a, int64_t sa, const float *b, int64_t sb,
                    float *y, int64_t n)
{
    switch (op) {
    case BIN_ADD: ROW_LOOPS(float, x + z); break;
    case BIN_SUB: ROW_LOOPS(float, x - z); break;
    case BIN_MUL: ROW_LOOPS(float, x * z); break;
    case BIN_DIV: ROW_LOOPS(float, x / z); break;
    }
}

/* Integer tensors wrap as two's complement, as ONNX Runtime's do; C's
 * signed overflow is undefined, so sums and products go through unsigned.
 * Division by zero gives 0 rather than a trap, and MIN / -1 wraps to MIN. */
static inline int64_t idiv64(int64_t x, int64_t z)
{
    if (!z)
        return 0;
    if (z == -1)
        return (int64_t)(0 - (uint64_t)x);
    return x / z;
}

static void row_i64(enum bin_op op, const int64_t *a, int64_t sa, const int64_t *b, int64_t sb,
                    int64_t *y, int64_t n)
{
    switch (op) {
    case BIN_ADD: ROW_LOOPS(int64_t, (int64_t)((uint64_t)x + (uint64_t)z)); break;
    case BIN_SUB: ROW_LOOPS(int64_t, (int64_t)((uint64_t)x - (uint64_t)z)); break;
    case BIN_MUL: ROW_LOOPS(int64_t, (int64_t)((uint64_t)x * (uint64_t)z)); break;
    case BIN_DIV: ROW_LOOPS(int64_t, idiv64(x, z)); break;
    }
}

static void row_i32(enum bin_op op, const int32_t *a, int64_t sa, const int32_t *b, int64_t sb,
                    int32_t *y, int64_t n)
{
    switch (op) {
    case BIN_ADD: ROW_LOOPS(int32_t, (int32_t)((uint32_t)x + (uint32_t)z)); break;
    case BIN_SUB: ROW_LOOPS(int32_t, (int32_t)((uint32_t)x - (uint32_t)z)); break;
    case BIN_MUL: ROW_LOOPS(int32_t, (int32_t)((uint32_t)x * (uint32_t)z)); break;
    case BIN_DIV: ROW_LOOPS(int32_t, (int32_t)idiv64(x, z)); break;
    }
}

static int binary(struct slim_engine *e, struct eng_node *n, enum bin_op op,
                  struct slim_error *err)
{
    const struct eng_value *a = eng_in(e, n, 0), *b = eng_in(e, n, 1);
    struct eng_value *y;
    struct bcast p = {0};
    int64_t shape[SLIM_MAX_DIMS], idx[SLIM_MAX_DIMS] = {0}, inner, isa, isb, rows, oa = 0,
        ob = 0;
    size_t es;
    int ndim = 0, rc;

    if (a->type != b->type)
        return slim_error_set(err, SLIM_EINVAL, "inputs of types %s and %s",
                              slim_onnx_type_name(a->type), slim_onnx_type_name(b->type));
    if (!eng_is_float(a->type) && a->type != SLIM_ONNX_INT64 && a->type != SLIM_ONNX_INT32)
        return slim_error_set(err, SLIM_EUNSUPPORTED, "%s inputs are not supported",
                              slim_onnx_type_name(a->type));
    if ((rc = bcast_plan(a, b, &ndim, shape, &p, err)) ||
        (rc = eng_out(e, n, 0, a->type, ndim, shape, err)))
        return rc;
    y = eng_outv(e, n, 0);
    if (!y->numel)
        return 0;
    es = eng_held_size(a->type);
    inner = p.nd ? p.dims[p.nd - 1] : 1;
    isa = p.nd ? p.sa[p.nd - 1] : 0;
    isb = p.nd ? p.sb[p.nd - 1] : 0;
    rows = y->numel / inner;
    for (int64_t r = 0; r < rows; r++) {
        const char *ap = (const char *)a->data + (size_t)oa * es;
        const char *bp = (const char *)b->data + (size_t)ob * es;
        char *yp = (char *)y->data + (size_t)(r * inner) * es;
        if (eng_is_float(a->type))
            row_f32(op, (const float *)ap, isa, (const float *)bp, isb, (float *)yp, inner);
        else if (a->type == SLIM_ONNX_INT64)
            row_i64(op, (const int64_t *)ap, isa, (const int64_t *)bp, isb, (int64_t *)yp, inner);
        else
            row_i32(op, (const int32_t *)ap, isa, (const int32_t *)bp, isb, (int32_t *)yp, inner);
        /* next row: odometer over the outer merged dims */
        for (int d = p.nd - 2; d >= 0; d--) {
            oa += p.sa[d];
            ob += p.sb[d];
            if (++idx[d] < p.dims[d])
                break;
            oa -= p.sa[d] * p.dims[d];
            ob -= p.sb[d] * p.dims[d];
            idx[d] = 0;
        }
    }
    if (y->type == SLIM_ONNX_FLOAT16)
        eng_round_f16(y->data, y->numel);
    return 0;
}

static int add_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    return binary(e, n, BIN_ADD, err);
}

static int sub_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    return binary(e, n, BIN_SUB, err);
}

static int mul_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    return binary(e, n, BIN_MUL, err);
}

static int div_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    return binary(e, n, BIN_DIV, err);
}

/* ---- activations ------------------------------------------------------------------- */

enum un_op { UN_RELU, UN_LEAKY, UN_SIGMOID, UN_TANH, UN_ERF, UN_CLIP };

/* x (n,) -> y (n,), float */
static void unary_f32(enum un_op op, const float *x, float *y, int64_t n, float p0, float p1)
{
    switch (op) {
    case UN_RELU:
        for (int64_t i = 0; i < n; i++)
            y[i] = x[i] > 0.0f ? x[i] : 0.0f;
        break;
    case UN_LEAKY:
        for (int64_t i = 0; i < n; i++)
            y[i] = x[i] >= 0.0f ? x[i] : x[i] * p0;
        break;
    case UN_SIGMOID:
        /* exp of a non-positive argument only: no overflow either side */
        for (int64_t i = 0; i < n; i++) {
            float t = expf(-fabsf(x[i]));
            y[i] = x[i] >= 0.0f ? 1.0f / (1.0f + t) : t / (1.0f + t);
        }
        break;
    case UN_TANH:
        for (int64_t i = 0; i < n; i++)
            y[i] = tanhf(x[i]);
        break;
    case UN_ERF:
        for (int64_t i = 0; i < n; i++)
            y[i] = erff(x[i]);
        break;
    case UN_CLIP:
        for (int64_t i = 0; i < n; i++)
            y[i] = x[i] < p0 ? p0 : x[i] > p1 ? p1 : x[i];
        break;
    }
}

static int unary(struct slim_engine *e, struct eng_node *n, enum un_op op, float p0, float p1,
                 struct slim_error *err)
{
    const struct eng_value *x = eng_in(e, n, 0);
    struct eng_value *y;
    int rc;
    if (!eng_is_float(x->type))
        return slim_error_set(err, SLIM_EUNSUPPORTED, "%s input is not supported",
                              slim_onnx_type_name(x->type));
    if ((rc = eng_out(e, n, 0, x->type, x->ndim, x->shape, err)))
        return rc;
    y = eng_outv(e, n, 0);
    unary_f32(op, x->data, y->data, x->numel, p0, p1);
    if (y->type == SLIM_ONNX_FLOAT16)
        eng_round_f16(y->data, y->numel);
    return 0;
}

static int relu_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    return unary(e, n, UN_RELU, 0, 0, err);
}

static int leaky_compile(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    return eng_attr_float(n, "alpha", 0.01f, &n->a.alpha, err);
}

static int leaky_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    return unary(e, n, UN_LEAKY, n->a.alpha, 0, err);
}

static int sigmoid_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    return unary(e, n, UN_SIGMOID, 0, 0, err);
}

static int tanh_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    return unary(e, n, UN_TANH, 0, 0, err);
}

static int erf_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    return unary(e, n, UN_ERF, 0, 0, err);
}

/* Clip: min/max attributes before opset 11, optional scalar inputs from 11. */
static int clip_compile(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    int rc;
    if (e->opset >= 11)
        return 0;
    if ((rc = eng_attr_float(n, "min", -INFINITY, &n->a.alpha, err)))
        return rc;
    return eng_attr_float(n, "max", INFINITY, &n->a.beta, err);
}

static int clip_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    float lo = n->a.alpha, hi = n->a.beta;
    if (e->opset >= 11) {
        const struct eng_value *mn = eng_in(e, n, 1), *mx = eng_in(e, n, 2);
        lo = -INFINITY;
        hi = INFINITY;
        if ((mn && (!eng_is_float(mn->type) || mn->numel != 1)) ||
            (mx && (!eng_is_float(mx->type) || mx->numel != 1)))
            return slim_error_set(err, SLIM_EUNSUPPORTED, "min and max must be float scalars");
        if (mn)
            lo = *(const float *)mn->data;
        if (mx)
            hi = *(const float *)mx->data;
    }
    return unary(e, n, UN_CLIP, lo, hi, err);
}

/* ---- Cast ------------------------------------------------------------------------------ */

static int cast_target(int to)
{
    switch (to) {
    case SLIM_ONNX_FLOAT: case SLIM_ONNX_FLOAT16: case SLIM_ONNX_DOUBLE: case SLIM_ONNX_INT64:
    case SLIM_ONNX_INT32: case SLIM_ONNX_INT8: case SLIM_ONNX_UINT8: case SLIM_ONNX_BOOL:
        return 1;
    default:
        return 0;
    }
}

static int cast_compile(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    int64_t to;
    int rc;
    if ((rc = eng_attr_int(n, "to", 0, &to, err)))
        return rc;
    if (!cast_target((int)to))
        return slim_error_set(err, SLIM_EUNSUPPORTED, "cast to %s is not supported",
                              slim_onnx_type_name((int)to));
    n->a.to = (int)to;
    return 0;
}

/* Stores v (already a float or an integer, per is_float) as element i of
 * y, held as type `to`: float to integer truncates toward zero (C's
 * conversion, as ONNX Runtime's static_cast), anything to BOOL is != 0. */
static void store_f(int to, void *y, int64_t i, float v)
{
    switch (to) {
    case SLIM_ONNX_FLOAT: case SLIM_ONNX_DOUBLE: ((float *)y)[i] = v; break;
    case SLIM_ONNX_FLOAT16: ((float *)y)[i] = slim_f16_to_f32(slim_f32_to_f16(v)); break;
    case SLIM_ONNX_INT64:
        ((int64_t *)y)[i] = v > -9.2e18f && v < 9.2e18f ? (int64_t)v : INT64_MIN;
        break;
    case SLIM_ONNX_INT32:
        ((int32_t *)y)[i] = v > -2.1e9f && v < 2.1e9f ? (int32_t)v : INT32_MIN;
        break;
    case SLIM_ONNX_INT8:
        ((int8_t *)y)[i] = (int8_t)(v > -2.1e9f && v < 2.1e9f ? (int32_t)v : 0);
        break;
    case SLIM_ONNX_UINT8:
        ((uint8_t *)y)[i] = (uint8_t)(v > -2.1e9f && v < 2.1e9f ? (int32_t)v : 0);
        break;
    case SLIM_ONNX_BOOL: ((uint8_t *)y)[i] = v != 0.0f; break;
    }
}

static void store_i(int to, void *y, int64_t i, int64_t v)
{
    switch (to) {
    case SLIM_ONNX_FLOAT: case SLIM_ONNX_DOUBLE: ((float *)y)[i] = (float)v; break;
    case SLIM_ONNX_FLOAT16: ((float *)y)[i] = slim_f16_to_f32(slim_f32_to_f16((float)v)); break;
    case SLIM_ONNX_INT64: ((int64_t *)y)[i] = v; break;
    case SLIM_ONNX_INT32: ((int32_t *)y)[i] = (int32_t)v; break;
    case SLIM_ONNX_INT8: ((int8_t *)y)[i] = (int8_t)v; break;
    case SLIM_ONNX_UINT8: ((uint8_t *)y)[i] = (uint8_t)v; break;
    case SLIM_ONNX_BOOL: ((uint8_t *)y)[i] = v != 0; break;
    }
}

static int64_t load_i(int type, const void *x, int64_t i)
{
    switch (type) {
    case SLIM_ONNX_INT64: return ((const int64_t *)x)[i];
    case SLIM_ONNX_INT32: return ((const int32_t *)x)[i];
    case SLIM_ONNX_INT8: case SLIM_ONNX_INT4: return ((const int8_t *)x)[i];
    default: return ((const uint8_t *)x)[i];
    }
}

static int cast_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    const struct eng_value *x = eng_in(e, n, 0);
    struct eng_value *y;
    int rc, to = n->a.to;
    if (!eng_held_size(x->type))
        return slim_error_set(err, SLIM_EUNSUPPORTED, "cast from %s is not supported",
                              slim_onnx_type_name(x->type));
    if ((rc = eng_out(e, n, 0, to, x->ndim, x->shape, err)))
        return rc;
    y = eng_outv(e, n, 0);
    if (x->type == to ||
        (eng_is_float(x->type) && (to == SLIM_ONNX_FLOAT || to == SLIM_ONNX_DOUBLE))) {
        memcpy(y->data, x->data, (size_t)x->numel * eng_held_size(to));
        return 0;
    }
    if (eng_is_float(x->type)) {
        const float *xf = x->data;
        for (int64_t i = 0; i < x->numel; i++)
            store_f(to, y->data, i, xf[i]);
    } else {
        for (int64_t i = 0; i < x->numel; i++)
            store_i(to, y->data, i, load_i(x->type, x->data, i));
    }
    return 0;
}

const struct eng_op eng_ops_elementwise[] = {
    {"Add", 2, 2, 1, 1, NULL, add_run},
    {"Sub", 2, 2, 1, 1, NULL, sub_run},
    {"Mul", 2, 2, 1, 1, NULL, mul_run},
    {"Div", 2, 2, 1, 1, NULL, div_run},
    {"Relu", 1, 1, 1, 1, NULL, relu_run},
    {"LeakyRelu", 1, 1, 1, 1, leaky_compile, leaky_run},
    {"Sigmoid", 1, 1, 1, 1, NULL, sigmoid_run},
    {"Tanh", 1, 1, 1, 1, NULL, tanh_run},
    {"Erf", 1, 1, 1, 1, NULL, erf_run},
    {"Clip", 1, 3, 1, 1, clip_compile, clip_run},
    {"Cast", 1, 1, 1, 1, cast_compile, cast_run},
    {NULL, 0, 0, 0, 0, NULL, NULL},
};
