/*
 * ops_quant.c - QuantizeLinear and DequantizeLinear: the ops slimd's own
 * int8/int4 ONNX artifacts are made of (a DequantizeLinear in front of
 * every quantized weight), and the QDQ pairs of statically quantized
 * models.
 *
 * Three granularities, told apart by the scale's shape and block_size:
 * per tensor (one scale), per axis (a 1-D scale along `axis`, default
 * 1), and blocked (opset 21: block_size > 0, the scale has x's rank with
 * dim `axis` divided into ceil(len / block_size) blocks).  x is viewed
 * as (outer, len, inner) around the axis, so all three are the same
 * loop with a different scale index.  Zero points, when given, have the
 * scale's shape; INT4/UINT4 values arrive unpacked, one per byte
 * (internal.h).
 *
 * The arithmetic follows ONNX Runtime, which the tests compare against:
 * dequantize is (float)(x - zero_point) * scale; quantize is
 * nearbyint(x / scale) (round half to even) plus the zero point,
 * saturated to the output type, with a division rather than a multiply
 * by 1/scale so that ties round the same way.  A DequantizeLinear of a
 * constant weight runs once, at compile time (graph.c folds it).
 */
#pragma GCC optimize("O3")   /* -O2 on GCC 12 leaves these loops scalar */
#include <math.h>

#include "passes/engine/internal.h"

static int quant_compile(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    int64_t v;
    int rc;
    if ((rc = eng_attr_int(n, "axis", 1, &n->a.axis, err)) ||
        (rc = eng_attr_int(n, "block_size", 0, &n->a.block_size, err)) ||
        (rc = eng_attr_int(n, "output_dtype", 0, &v, err)))
        return rc;
    n->a.output_dtype = (int)v;
    if (n->a.block_size < 0)
        return slim_error_set(err, SLIM_EFORMAT, "block_size %lld", (long long)n->a.block_size);
    return 0;
}

enum qmode { Q_TENSOR, Q_AXIS, Q_BLOCK };

/* Where x's scale comes from, checked against x's shape. */
struct qplan {
    enum qmode mode;
    int64_t outer, len, inner, nblk, bs;
};

static int qplan(const struct eng_node *n, const struct eng_value *x, const struct eng_value *s,
                 const struct eng_value *zp, struct qplan *q, struct slim_error *err)
{
    int64_t axis = x->ndim ? eng_axis(n->a.axis, x->ndim) : 0;
    char s1[96], s2[96];
    if (!eng_is_float(s->type))
        return slim_error_set(err, SLIM_EINVAL, "scale is %s", slim_onnx_type_name(s->type));
    if (zp && (zp->ndim != s->ndim || zp->numel != s->numel))
        return slim_error_set(err, SLIM_EINVAL, "zero point %s and scale %s differ",
                              eng_shape_str(zp->ndim, zp->shape, s1, sizeof s1),
                              eng_shape_str(s->ndim, s->shape, s2, sizeof s2));
    q->outer = 1;
    q->len = x->numel;
    q->inner = 1;
    q->nblk = 1;
    q->bs = 0;
    if (n->a.block_size == 0 && s->numel == 1 && s->ndim <= 1) {
        q->mode = Q_TENSOR;
        return 0;
    }
    if (axis < 0)
        return slim_error_set(err, SLIM_EINVAL, "axis %lld for %d dims", (long long)n->a.axis,
                              x->ndim);
    q->outer = eng_numel((int)axis, x->shape);
    q->len = x->shape[axis];
    q->inner = eng_numel(x->ndim - (int)axis - 1, x->shape + axis + 1);
    if (n->a.block_size == 0) {
        if (s->ndim != 1 || s->shape[0] != q->len)
            return slim_error_set(err, SLIM_EINVAL, "scale %s for axis %lld of %s",
                                  eng_shape_str(s->ndim, s->shape, s1, sizeof s1),
                                  (long long)axis, eng_shape_str(x->ndim, x->shape, s2, sizeof s2));
        q->mode = Q_AXIS;
        return 0;
    }
    q->mode = Q_BLOCK;
    q->bs = n->a.block_size;
    q->nblk = (q->len + q->bs - 1) / q->bs;
    {
        int ok = s->ndim == x->ndim;
        for (int d = 0; ok && d < x->ndim; d++)
            ok = s->shape[d] == (d == axis ? q->nblk : x->shape[d]);
        if (!ok)
            return slim_error_set(err, SLIM_EINVAL, "scale %s for blocks of %lld along axis "
                                  "%lld of %s", eng_shape_str(s->ndim, s->shape, s1, sizeof s1),
                                  (long long)q->bs, (long long)axis,
                                  eng_shape_str(x->ndim, x->shape, s2, sizeof s2));
    }
    return 0;
}

/* Index of the scale for element (o, a, i). */
static inline int64_t qindex(const struct qplan *q, int64_t o, int64_t a, int64_t i)
{
    switch (q->mode) {
    case Q_TENSOR: return 0;
    case Q_AXIS: return a;
    default: return (o * q->nblk + a / q->bs) * q->inner + i;
    }
}

static inline int32_t qload(int type, const void *p, int64_t i)
{
    switch (type) {
    case SLIM_ONNX_INT8: case SLIM_ONNX_INT4: return ((const int8_t *)p)[i];
    case SLIM_ONNX_UINT8: case SLIM_ONNX_UINT4: return ((const uint8_t *)p)[i];
    default: return ((const int32_t *)p)[i];
    }
}

static int dq_type(int type)
{
    return type == SLIM_ONNX_INT8 || type == SLIM_ONNX_UINT8 || type == SLIM_ONNX_INT32 ||
           type == SLIM_ONNX_INT4 || type == SLIM_ONNX_UINT4;
}

/* y = (x - zero_point) * scale */
static int dequantize_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    const struct eng_value *x = eng_in(e, n, 0), *s = eng_in(e, n, 1), *zp = eng_in(e, n, 2);
    const float *sd;
    struct eng_value *y;
    struct qplan q;
    float *yd;
    int rc;

    if (!dq_type(x->type))
        return slim_error_set(err, SLIM_EUNSUPPORTED, "%s input is not supported",
                              slim_onnx_type_name(x->type));
    if (zp && zp->type != x->type)
        return slim_error_set(err, SLIM_EINVAL, "x is %s but its zero point %s",
                              slim_onnx_type_name(x->type), slim_onnx_type_name(zp->type));
    if ((rc = qplan(n, x, s, zp, &q, err)) ||
        (rc = eng_out(e, n, 0, s->type, x->ndim, x->shape, err)))
        return rc;
    y = eng_outv(e, n, 0);
    if (!y->numel)
        return 0;
    yd = y->data;
    sd = s->data;
    for (int64_t o = 0; o < q.outer; o++)
        for (int64_t a = 0; a < q.len; a++) {
            int64_t base = (o * q.len + a) * q.inner;
            for (int64_t i = 0; i < q.inner; i++) {
                int64_t k = qindex(&q, o, a, i);
                int32_t z = zp ? qload(zp->type, zp->data, k) : 0;
                yd[base + i] = (float)(qload(x->type, x->data, base + i) - z) * sd[k];
            }
        }
    if (y->type == SLIM_ONNX_FLOAT16)
        eng_round_f16(yd, y->numel);
    return 0;
}

/* y = saturate(nearbyint(x / scale) + zero_point) */
static int quantize_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    const struct eng_value *x = eng_in(e, n, 0), *s = eng_in(e, n, 1), *zp = eng_in(e, n, 2);
    int type = zp ? zp->type : n->a.output_dtype ? n->a.output_dtype : SLIM_ONNX_UINT8;
    const float *sd, *xd;
    float lo, hi;
    struct eng_value *y;
    struct qplan q;
    int rc;

    switch (type) {
    case SLIM_ONNX_INT8: lo = -128.0f; hi = 127.0f; break;
    case SLIM_ONNX_UINT8: lo = 0.0f; hi = 255.0f; break;
    case SLIM_ONNX_INT4: lo = -8.0f; hi = 7.0f; break;
    case SLIM_ONNX_UINT4: lo = 0.0f; hi = 15.0f; break;
    default:
        return slim_error_set(err, SLIM_EUNSUPPORTED, "quantizing to %s is not supported",
                              slim_onnx_type_name(type));
    }
    if (!eng_is_float(x->type))
        return slim_error_set(err, SLIM_EINVAL, "x is %s", slim_onnx_type_name(x->type));
    if ((rc = qplan(n, x, s, zp, &q, err)) ||
        (rc = eng_out(e, n, 0, type, x->ndim, x->shape, err)))
        return rc;
    y = eng_outv(e, n, 0);
    if (!y->numel)
        return 0;
    sd = s->data;
    xd = x->data;
    for (int64_t o = 0; o < q.outer; o++)
        for (int64_t a = 0; a < q.len; a++) {
            int64_t base = (o * q.len + a) * q.inner;
            for (int64_t i = 0; i < q.inner; i++) {
                int64_t k = qindex(&q, o, a, i);
                float v = nearbyintf(xd[base + i] / sd[k]) + (float)(zp ? qload(zp->type,
                                                                               zp->data, k) : 0);
                v = !(v >= lo) ? lo : v > hi ? hi : v;   /* NaN -> lo */
                if (type == SLIM_ONNX_INT8 || type == SLIM_ONNX_INT4)
                    ((int8_t *)y->data)[base + i] = (int8_t)v;
                else
                    ((uint8_t *)y->data)[base + i] = (uint8_t)v;
            }
        }
    return 0;
}

const struct eng_op eng_ops_quant[] = {
    {"QuantizeLinear", 2, 3, 1, 1, quant_compile, quantize_run},
    {"DequantizeLinear", 2, 3, 1, 1, quant_compile, dequantize_run},
    {NULL, 0, 0, 0, 0, NULL, NULL},
};
