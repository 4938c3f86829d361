/*
 * ops_shape.c - operators that move elements without arithmetic:
 * Flatten, Reshape, Squeeze, Unsqueeze, Identity and Dropout (views of
 * their input: the output shares the input's buffer, eng_out_view), and
 * Transpose, Concat, Split, Slice, Gather, Shape, Constant (copies);
 * and CumSum, ConstantOfShape and ScatterElements, which expand a sparse
 * artifact's bit mask or gaps into positions and values (onnx_write.c).
 * They work on any held type, by element size, which is what the int64
 * chains of exported models need (Shape -> Gather -> Unsqueeze -> Concat
 * -> Reshape computes a Reshape's target from the batch size at run
 * time).
 *
 * Opset differences real models hit are handled where they arise:
 * Squeeze/Unsqueeze axes and Split sizes are attributes before opset 13
 * and inputs from 13 on; Slice takes starts/ends/axes as attributes
 * before opset 10; Reshape's allowzero (14) keeps a 0 as 0 instead of
 * copying the input dim; Shape's start/end (15); Split's num_outputs
 * (18).
 *
 * Copies are row-wise: a Transpose walks the output in order with an
 * odometer over the input strides, a Slice copies runs of its innermost
 * dim with memcpy when its step is 1.
 */
#pragma GCC optimize("O3")   /* -O2 on GCC 12 leaves these loops scalar */
#include <string.h>

#include "passes/engine/internal.h"

/* ---- views ------------------------------------------------------------------------ */

static int identity_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    const struct eng_value *x = eng_in(e, n, 0), *train = eng_in(e, n, 2);
    struct eng_value *mask = eng_outv(e, n, 1);
    int rc;
    /* Dropout (12+) in training mode would drop: not inference */
    if (train && train->numel == 1 && train->type == SLIM_ONNX_BOOL &&
        *(const uint8_t *)train->data)
        return slim_error_set(err, SLIM_EUNSUPPORTED, "Dropout in training mode is not "
                              "supported");
    if ((rc = eng_out_view(e, n, 0, x, x->ndim, x->shape, err)) || !mask)
        return rc;
    /* Dropout's mask in inference: every element kept (BOOL from opset
     * 10, the input's type before) */
    if ((rc = eng_out(e, n, 1, e->opset >= 10 ? SLIM_ONNX_BOOL : x->type, x->ndim, x->shape,
                      err)))
        return rc;
    if (mask->type == SLIM_ONNX_BOOL)
        memset(mask->data, 1, (size_t)mask->numel);
    else
        for (int64_t i = 0; i < mask->numel; i++)
            ((float *)mask->data)[i] = 1.0f;
    return 0;
}

static int flatten_compile(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    return eng_attr_int(n, "axis", 1, &n->a.axis, err);
}

static int flatten_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    const struct eng_value *x = eng_in(e, n, 0);
    int64_t axis = n->a.axis < 0 ? n->a.axis + x->ndim : n->a.axis, shape[2];
    if (axis < 0 || axis > x->ndim)
        return slim_error_set(err, SLIM_EINVAL, "axis %lld for a tensor of %d dims",
                              (long long)n->a.axis, x->ndim);
    shape[0] = eng_numel((int)axis, x->shape);
    shape[1] = eng_numel(x->ndim - (int)axis, x->shape + axis);
    return eng_out_view(e, n, 0, x, 2, shape, err);
}

static int reshape_compile(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    int64_t az;
    int rc;
    if ((rc = eng_attr_int(n, "allowzero", 0, &az, err)))
        return rc;
    n->a.allowzero = az != 0;
    if (e->opset < 5) {
        if ((rc = eng_attr_ints(n, "shape", n->a.ints, ENG_MAX_INTS, &n->a.n_ints, err)))
            return rc;
        if (n->a.n_ints < 0)
            return slim_error_set(err, SLIM_EFORMAT, "no 'shape' attribute");
    } else if (n->n_in < 2) {
        return slim_error_set(err, SLIM_EFORMAT, "no shape input");
    }
    return 0;
}

static int reshape_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    const struct eng_value *x = eng_in(e, n, 0);
    int64_t shape[SLIM_MAX_DIMS], known = 1;
    int nd, infer = -1, rc;
    char s1[96], s2[96];

    if (e->opset < 5) {
        nd = n->a.n_ints;
        memcpy(shape, n->a.ints, (size_t)nd * sizeof *shape);
    } else if ((rc = eng_read_ints(eng_in(e, n, 1), shape, SLIM_MAX_DIMS, &nd, err))) {
        return rc;
    }
    for (int i = 0; i < nd; i++) {
        if (shape[i] == 0 && !n->a.allowzero) {
            if (i >= x->ndim)
                return slim_error_set(err, SLIM_EINVAL, "shape[%d] = 0 copies a dim the input "
                                      "(%d dims) does not have", i, x->ndim);
            shape[i] = x->shape[i];
        }
        if (shape[i] == -1) {
            if (infer >= 0)
                return slim_error_set(err, SLIM_EINVAL, "two -1 in the target shape");
            infer = i;
        } else if (shape[i] < 0) {
            return slim_error_set(err, SLIM_EINVAL, "shape[%d] = %lld", i, (long long)shape[i]);
        } else if (__builtin_mul_overflow(known, shape[i], &known) || known > ENG_MAX_NUMEL) {
            return slim_error_set(err, SLIM_EINVAL, "the target shape has more than 2^48 "
                                  "elements");
        }
    }
    if (infer >= 0) {
        if (!known || x->numel % known)
            return slim_error_set(err, SLIM_EINVAL, "cannot reshape %s to %s",
                                  eng_shape_str(x->ndim, x->shape, s1, sizeof s1),
                                  eng_shape_str(nd, shape, s2, sizeof s2));
        shape[infer] = x->numel / known;
    }
    return eng_out_view(e, n, 0, x, nd, shape, err);
}

/* Squeeze/Unsqueeze axes: the attribute before opset 13, the optional
 * second input from 13 on. */
static int axes_compile(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    if (e->opset >= 13)
        return 0;
    return eng_attr_ints(n, "axes", n->a.ints, ENG_MAX_INTS, &n->a.n_ints, err);
}

static int get_axes(struct slim_engine *e, struct eng_node *n, int k, int64_t *axes, int *count,
                    struct slim_error *err)
{
    const struct eng_value *v;
    if (e->opset < 13) {
        *count = n->a.n_ints;
        if (*count > 0)
            memcpy(axes, n->a.ints, (size_t)*count * sizeof *axes);
        return 0;
    }
    if (!(v = eng_in(e, n, k))) {
        *count = -1;
        return 0;
    }
    return eng_read_ints(v, axes, ENG_MAX_INTS, count, err);
}

static int squeeze_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    const struct eng_value *x = eng_in(e, n, 0);
    int64_t axes[ENG_MAX_INTS], shape[SLIM_MAX_DIMS];
    int drop[SLIM_MAX_DIMS] = {0}, count, nd = 0, rc;

    if ((rc = get_axes(e, n, 1, axes, &count, err)))
        return rc;
    for (int i = 0; i < count; i++) {
        int64_t a = eng_axis(axes[i], x->ndim);
        if (a < 0 || x->shape[a] != 1)
            return slim_error_set(err, SLIM_EINVAL, "cannot squeeze axis %lld of a tensor of "
                                  "%d dims", (long long)axes[i], x->ndim);
        drop[a] = 1;
    }
    for (int d = 0; d < x->ndim; d++)
        if (!(count < 0 ? x->shape[d] == 1 : drop[d]))
            shape[nd++] = x->shape[d];
    return eng_out_view(e, n, 0, x, nd, shape, err);
}

static int unsqueeze_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    const struct eng_value *x = eng_in(e, n, 0);
    int64_t axes[ENG_MAX_INTS], shape[SLIM_MAX_DIMS];
    int add[SLIM_MAX_DIMS] = {0}, count, nd, rc;

    if ((rc = get_axes(e, n, 1, axes, &count, err)))
        return rc;
    if (count < 0)
        return slim_error_set(err, SLIM_EFORMAT, "no axes");
    nd = x->ndim + count;
    if (nd > SLIM_MAX_DIMS)
        return slim_error_set(err, SLIM_EUNSUPPORTED, "%d dims", nd);
    for (int i = 0; i < count; i++) {
        int64_t a = eng_axis(axes[i], nd);
        if (a < 0 || add[a])
            return slim_error_set(err, SLIM_EINVAL, "bad or repeated axis %lld",
                                  (long long)axes[i]);
        add[a] = 1;
    }
    for (int d = 0, k = 0; d < nd; d++)
        shape[d] = add[d] ? 1 : x->shape[k++];
    return eng_out_view(e, n, 0, x, nd, shape, err);
}

/* ---- copies ------------------------------------------------------------------------- */

static int transpose_compile(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    return eng_attr_ints(n, "perm", n->a.ints, ENG_MAX_INTS, &n->a.n_ints, err);
}

/* Copies rows of `count` elements of size es from src with stride
 * `stride` (in elements) to contiguous dst. */
static void gather_row(char *dst, const char *src, int64_t count, int64_t stride, size_t es)
{
    if (stride == 1) {
        memcpy(dst, src, (size_t)count * es);
        return;
    }
    switch (es) {
    case 1:
        for (int64_t i = 0; i < count; i++)
            dst[i] = src[i * stride];
        break;
    case 4:
        for (int64_t i = 0; i < count; i++)
            ((uint32_t *)dst)[i] = ((const uint32_t *)src)[i * stride];
        break;
    default:
        for (int64_t i = 0; i < count; i++)
            ((uint64_t *)dst)[i] = ((const uint64_t *)src)[i * stride];
        break;
    }
}

/* dst (contiguous, dims) <- src walked with strides (in elements). */
static void strided_copy(char *dst, const char *src, int nd, const int64_t *dims,
                         const int64_t *strides, size_t es)
{
    int64_t idx[SLIM_MAX_DIMS] = {0}, off = 0, inner, rows;
    if (nd == 0) {
        memcpy(dst, src, es);
        return;
    }
    inner = dims[nd - 1];
    rows = eng_numel(nd - 1, dims);
    if (!inner || !rows)
        return;
    for (int64_t r = 0; r < rows; r++) {
        gather_row(dst + (size_t)(r * inner) * es, src + off * (int64_t)es, inner,
                   strides[nd - 1], es);
        for (int d = nd - 2; d >= 0; d--) {
            off += strides[d];
            if (++idx[d] < dims[d])
                break;
            off -= strides[d] * dims[d];
            idx[d] = 0;
        }
    }
}

static int transpose_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    const struct eng_value *x = eng_in(e, n, 0);
    int64_t perm[SLIM_MAX_DIMS], shape[SLIM_MAX_DIMS], in_stride[SLIM_MAX_DIMS],
        strides[SLIM_MAX_DIMS], s = 1;
    int seen[SLIM_MAX_DIMS] = {0}, rc;

    if (n->a.n_ints >= 0 && n->a.n_ints != x->ndim)
        return slim_error_set(err, SLIM_EINVAL, "perm of %d values for %d dims", n->a.n_ints,
                              x->ndim);
    for (int d = 0; d < x->ndim; d++) {
        perm[d] = n->a.n_ints >= 0 ? eng_axis(n->a.ints[d], x->ndim) : x->ndim - 1 - d;
        if (perm[d] < 0 || seen[perm[d]]++)
            return slim_error_set(err, SLIM_EINVAL, "perm is not a permutation");
    }
    for (int d = x->ndim - 1; d >= 0; d--) {
        in_stride[d] = s;
        s *= x->shape[d];
    }
    for (int d = 0; d < x->ndim; d++) {
        shape[d] = x->shape[perm[d]];
        strides[d] = in_stride[perm[d]];
    }
    if ((rc = eng_out(e, n, 0, x->type, x->ndim, shape, err)))
        return rc;
    strided_copy(eng_outv(e, n, 0)->data, x->data, x->ndim, shape, strides,
                 eng_held_size(x->type));
    return 0;
}

static int axis_compile(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    return eng_attr_int(n, "axis", 0, &n->a.axis, err);
}

static int concat_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    const struct eng_value *x0 = eng_in(e, n, 0);
    int64_t shape[SLIM_MAX_DIMS], axis = eng_axis(n->a.axis, x0->ndim), outer, off = 0;
    size_t es = eng_held_size(x0->type), row;
    struct eng_value *y;
    int rc;
    char s1[96], s2[96];

    if (axis < 0)
        return slim_error_set(err, SLIM_EINVAL, "axis %lld for %d dims", (long long)n->a.axis,
                              x0->ndim);
    memcpy(shape, x0->shape, (size_t)x0->ndim * sizeof *shape);
    shape[axis] = 0;
    for (int k = 0; k < n->n_in; k++) {
        const struct eng_value *x = eng_in(e, n, k);
        int ok = x && x->ndim == x0->ndim && x->type == x0->type;
        for (int d = 0; ok && d < x->ndim; d++)
            ok = d == axis || x->shape[d] == x0->shape[d];
        if (!ok)
            return slim_error_set(err, SLIM_EINVAL, "input %d (%s %s) does not fit input 0 "
                                  "(%s %s)", k, x ? slim_onnx_type_name(x->type) : "none",
                                  x ? eng_shape_str(x->ndim, x->shape, s1, sizeof s1) : "",
                                  slim_onnx_type_name(x0->type),
                                  eng_shape_str(x0->ndim, x0->shape, s2, sizeof s2));
        shape[axis] += x->shape[axis];
    }
    if ((rc = eng_out(e, n, 0, x0->type, x0->ndim, shape, err)))
        return rc;
    y = eng_outv(e, n, 0);
    outer = eng_numel((int)axis, shape);
    row = (size_t)eng_numel(x0->ndim - (int)axis, shape + axis) * es;   /* one outer row of y */
    for (int k = 0; k < n->n_in; k++) {
        const struct eng_value *x = eng_in(e, n, k);
        size_t xrow = (size_t)eng_numel(x->ndim - (int)axis, x->shape + axis) * es;
        for (int64_t o = 0; o < outer && xrow; o++)
            memcpy((char *)y->data + (size_t)o * row + off, (const char *)x->data + o * xrow,
                   xrow);
        off += (int64_t)xrow;
    }
    return 0;
}

static int split_compile(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    int rc;
    if ((rc = eng_attr_int(n, "axis", 0, &n->a.axis, err)) ||
        (rc = eng_attr_int(n, "num_outputs", 0, &n->a.num_outputs, err)))
        return rc;
    if (e->opset < 13)
        return eng_attr_ints(n, "split", n->a.ints2, ENG_MAX_INTS, &n->a.n_ints2, err);
    n->a.n_ints2 = -1;
    return 0;
}

static int split_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    const struct eng_value *x = eng_in(e, n, 0);
    int64_t axis = eng_axis(n->a.axis, x->ndim), sizes[ENG_MAX_INTS], outer, row, off = 0,
        total = 0;
    size_t es = eng_held_size(x->type);
    int count = n->a.n_ints2, rc;

    if (axis < 0)
        return slim_error_set(err, SLIM_EINVAL, "axis %lld for %d dims", (long long)n->a.axis,
                              x->ndim);
    if (n->n_out > ENG_MAX_INTS)
        return slim_error_set(err, SLIM_EUNSUPPORTED, "%d outputs", n->n_out);
    if (count >= 0) {
        memcpy(sizes, n->a.ints2, (size_t)count * sizeof *sizes);
    } else if (e->opset >= 13 && eng_in(e, n, 1)) {
        if ((rc = eng_read_ints(eng_in(e, n, 1), sizes, ENG_MAX_INTS, &count, err)))
            return rc;
    } else {
        /* equal parts; with num_outputs (18) the last may be smaller */
        int64_t parts = n->n_out, each = (x->shape[axis] + parts - 1) / parts;
        if (!n->a.num_outputs && x->shape[axis] % parts)
            return slim_error_set(err, SLIM_EINVAL, "dim %lld does not split in %d",
                                  (long long)x->shape[axis], n->n_out);
        for (int k = 0; k < n->n_out; k++) {
            sizes[k] = x->shape[axis] - k * each < each ? x->shape[axis] - k * each : each;
            if (sizes[k] < 0)
                sizes[k] = 0;
        }
        count = n->n_out;
    }
    /* each size checked against what is left of the dim before it is
     * added, so no sum of sizes can overflow */
    for (int k = 0; k < count && total >= 0; k++)
        total = sizes[k] < 0 || sizes[k] > x->shape[axis] - total ? -1 : total + sizes[k];
    if (count != n->n_out || total != x->shape[axis])
        return slim_error_set(err, SLIM_EINVAL, "split sizes do not fit dim %lld into %d "
                              "outputs", (long long)x->shape[axis], n->n_out);
    outer = eng_numel((int)axis, x->shape);
    row = eng_numel(x->ndim - (int)axis, x->shape + axis);
    for (int k = 0; k < n->n_out; k++) {
        int64_t shape[SLIM_MAX_DIMS], yrow;
        struct eng_value *y;
        memcpy(shape, x->shape, (size_t)x->ndim * sizeof *shape);
        shape[axis] = sizes[k];
        yrow = eng_numel(x->ndim - (int)axis, shape + axis);
        if (eng_outv(e, n, k)) {
            if ((rc = eng_out(e, n, k, x->type, x->ndim, shape, err)))
                return rc;
            y = eng_outv(e, n, k);
            for (int64_t o = 0; o < outer && yrow; o++)
                memcpy((char *)y->data + (size_t)(o * yrow) * es,
                       (const char *)x->data + (size_t)(o * row + off) * es, (size_t)yrow * es);
        }
        off += yrow;
    }
    return 0;
}

static int slice_compile(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    int rc;
    if (e->opset >= 10) {
        if (n->n_in < 3)
            return slim_error_set(err, SLIM_EFORMAT, "starts and ends inputs are required");
        return 0;
    }
    /* before opset 10: attributes axes (ints), starts (ints2), ends (ints3) */
    if ((rc = eng_attr_ints(n, "axes", n->a.ints, ENG_MAX_INTS, &n->a.n_ints, err)) ||
        (rc = eng_attr_ints(n, "starts", n->a.ints2, ENG_MAX_INTS, &n->a.n_ints2, err)) ||
        (rc = eng_attr_ints(n, "ends", n->a.ints3, ENG_MAX_INTS, &n->a.n_ints3, err)))
        return rc;
    if (n->a.n_ints2 < 0 || n->a.n_ints3 != n->a.n_ints2 ||
        (n->a.n_ints >= 0 && n->a.n_ints != n->a.n_ints2))
        return slim_error_set(err, SLIM_EFORMAT, "starts, ends (and axes) must have one value "
                              "per sliced axis");
    return 0;
}

static int64_t clamp64(int64_t v, int64_t lo, int64_t hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

static int slice_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    const struct eng_value *x = eng_in(e, n, 0);
    int64_t starts[ENG_MAX_INTS], ends[ENG_MAX_INTS], axes[ENG_MAX_INTS], steps[ENG_MAX_INTS];
    int64_t first[SLIM_MAX_DIMS], step[SLIM_MAX_DIMS], shape[SLIM_MAX_DIMS],
        strides[SLIM_MAX_DIMS], s = 1, off = 0;
    int count, c2, rc, seen[SLIM_MAX_DIMS] = {0};
    size_t es = eng_held_size(x->type);

    if (e->opset < 10) {
        count = n->a.n_ints2;
        memcpy(starts, n->a.ints2, (size_t)count * sizeof *starts);
        memcpy(ends, n->a.ints3, (size_t)count * sizeof *ends);
        for (int i = 0; i < count; i++) {
            axes[i] = n->a.n_ints >= 0 ? n->a.ints[i] : i;
            steps[i] = 1;
        }
    } else {
        if ((rc = eng_read_ints(eng_in(e, n, 1), starts, ENG_MAX_INTS, &count, err)) ||
            (rc = eng_read_ints(eng_in(e, n, 2), ends, ENG_MAX_INTS, &c2, err)))
            return rc;
        if (c2 != count)
            return slim_error_set(err, SLIM_EINVAL, "%d starts and %d ends", count, c2);
        for (int i = 0; i < count; i++) {
            axes[i] = i;
            steps[i] = 1;
        }
        if (eng_in(e, n, 3) &&
            ((rc = eng_read_ints(eng_in(e, n, 3), axes, ENG_MAX_INTS, &c2, err)) || c2 != count))
            return rc ? rc : slim_error_set(err, SLIM_EINVAL, "%d axes for %d starts", c2, count);
        if (eng_in(e, n, 4) &&
            ((rc = eng_read_ints(eng_in(e, n, 4), steps, ENG_MAX_INTS, &c2, err)) ||
             c2 != count))
            return rc ? rc : slim_error_set(err, SLIM_EINVAL, "%d steps for %d starts", c2,
                                            count);
    }
    for (int d = 0; d < x->ndim; d++) {
        first[d] = 0;
        step[d] = 1;
        shape[d] = x->shape[d];
    }
    for (int i = 0; i < count; i++) {
        int64_t a = eng_axis(axes[i], x->ndim), dim, st = steps[i], b, en;
        if (a < 0 || seen[a]++)
            return slim_error_set(err, SLIM_EINVAL, "bad or repeated axis %lld",
                                  (long long)axes[i]);
        if (!st)
            return slim_error_set(err, SLIM_EINVAL, "a step of 0");
        dim = x->shape[a];
        /* a step longer than the dim takes one element, as dim + 1 does;
         * clamped, the counts and strides below cannot overflow */
        st = clamp64(st, -dim - 1, dim + 1);
        b = starts[i] < 0 ? starts[i] + dim : starts[i];
        en = ends[i] < 0 ? ends[i] + dim : ends[i];
        /* ONNX's clamping: [0, dim] going forward, [-1, dim - 1] backward */
        if (st > 0) {
            b = clamp64(b, 0, dim);
            en = clamp64(en, 0, dim);
            shape[a] = en > b ? (en - b + st - 1) / st : 0;
        } else {
            b = clamp64(b, 0, dim - 1);
            en = clamp64(en, -1, dim - 1);
            shape[a] = b > en ? (b - en - st - 1) / -st : 0;
        }
        first[a] = b;
        step[a] = st;
    }
    for (int d = x->ndim - 1; d >= 0; d--) {
        strides[d] = s * step[d];
        off += first[d] * s;
        s *= x->shape[d];
    }
    if ((rc = eng_out(e, n, 0, x->type, x->ndim, shape, err)))
        return rc;
    if (eng_outv(e, n, 0)->numel)
        strided_copy(eng_outv(e, n, 0)->data, (const char *)x->data + off * (int64_t)es,
                     x->ndim, shape, strides, es);
    return 0;
}

static int gather_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    const struct eng_value *x = eng_in(e, n, 0), *ix = eng_in(e, n, 1);
    int64_t axis = eng_axis(n->a.axis, x->ndim), shape[SLIM_MAX_DIMS], outer, inner, dim;
    size_t es = eng_held_size(x->type);
    struct eng_value *y;
    int nd = 0, rc;

    if (axis < 0)
        return slim_error_set(err, SLIM_EINVAL, "axis %lld for %d dims", (long long)n->a.axis,
                              x->ndim);
    if (ix->type != SLIM_ONNX_INT64 && ix->type != SLIM_ONNX_INT32)
        return slim_error_set(err, SLIM_EINVAL, "indices are %s", slim_onnx_type_name(ix->type));
    if (x->ndim - 1 + ix->ndim > SLIM_MAX_DIMS)
        return slim_error_set(err, SLIM_EUNSUPPORTED, "too many dims");
    for (int d = 0; d < axis; d++)
        shape[nd++] = x->shape[d];
    for (int d = 0; d < ix->ndim; d++)
        shape[nd++] = ix->shape[d];
    for (int d = (int)axis + 1; d < x->ndim; d++)
        shape[nd++] = x->shape[d];
    if ((rc = eng_out(e, n, 0, x->type, nd, shape, err)))
        return rc;
    y = eng_outv(e, n, 0);
    if (!y->numel)
        return 0;
    outer = eng_numel((int)axis, x->shape);
    inner = eng_numel(x->ndim - (int)axis - 1, x->shape + axis + 1);
    dim = x->shape[axis];
    for (int64_t o = 0; o < outer; o++)
        for (int64_t j = 0; j < ix->numel; j++) {
            int64_t k = ix->type == SLIM_ONNX_INT64 ? ((const int64_t *)ix->data)[j]
                                                    : ((const int32_t *)ix->data)[j];
            if (k < 0)
                k += dim;
            if (k < 0 || k >= dim)
                return slim_error_set(err, SLIM_EINVAL, "index %lld out of [0, %lld)",
                                      (long long)k, (long long)dim);
            memcpy((char *)y->data + (size_t)((o * ix->numel + j) * inner) * es,
                   (const char *)x->data + (size_t)((o * dim + k) * inner) * es,
                   (size_t)inner * es);
        }
    return 0;
}

static int cumsum_compile(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    int64_t ex, rev;
    int rc;
    (void)e;
    if ((rc = eng_attr_int(n, "exclusive", 0, &ex, err)) ||
        (rc = eng_attr_int(n, "reverse", 0, &rev, err)))
        return rc;
    n->a.exclusive = ex != 0;
    n->a.reverse = rev != 0;
    return 0;
}

/* One running sum along the axis, per (outer, inner) line; T is the
 * held element type, the sum kept in A (uint64 for the integers, double
 * for float: a long float sum would drift from ONNX Runtime's). */
#define CUMSUM_LINES(T, A)                                                                 \
    do {                                                                                   \
        const T *xs = x->data;                                                             \
        T *ys = y->data;                                                                   \
        for (int64_t o = 0; o < outer; o++)                                                \
            for (int64_t i = 0; i < inner; i++) {                                          \
                A acc = 0;                                                                 \
                for (int64_t s = 0; s < dim; s++) {                                        \
                    int64_t k = n->a.reverse ? dim - 1 - s : s;                            \
                    size_t at = (size_t)((o * dim + k) * inner + i);                       \
                    A v = (A)xs[at];                                                       \
                    if (!n->a.exclusive)                                                   \
                        acc += v;                                                          \
                    ys[at] = (T)acc;                                                       \
                    if (n->a.exclusive)                                                    \
                        acc += v;                                                          \
                }                                                                          \
            }                                                                              \
    } while (0)

/* CumSum (opset 11, 14): the running sum along the axis given as a
 * scalar input; exclusive leaves the element itself out, reverse runs
 * from the end.  Float, int32 and int64; integer sums wrap as two's
 * complement (as ONNX Runtime's do), so they run in uint64. */
static int cumsum_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    const struct eng_value *x = eng_in(e, n, 0), *ax = eng_in(e, n, 1);
    int64_t a[1], axis, outer, inner, dim;
    struct eng_value *y;
    int count, rc;

    if ((rc = eng_read_ints(ax, a, 1, &count, err)))
        return rc;
    if (count != 1 || ax->ndim > 1)
        return slim_error_set(err, SLIM_EINVAL, "axis must be one integer");
    if ((axis = eng_axis(a[0], x->ndim)) < 0)
        return slim_error_set(err, SLIM_EINVAL, "axis %lld for %d dims", (long long)a[0],
                              x->ndim);
    if (!eng_is_float(x->type) && x->type != SLIM_ONNX_INT32 && x->type != SLIM_ONNX_INT64)
        return slim_error_set(err, SLIM_EUNSUPPORTED, "%s inputs are not supported",
                              slim_onnx_type_name(x->type));
    if ((rc = eng_out(e, n, 0, x->type, x->ndim, x->shape, err)))
        return rc;
    y = eng_outv(e, n, 0);
    if (!y->numel)
        return 0;
    outer = eng_numel((int)axis, x->shape);
    dim = x->shape[axis];
    inner = eng_numel(x->ndim - (int)axis - 1, x->shape + axis + 1);
    if (eng_is_float(x->type))
        CUMSUM_LINES(float, double);
    else if (x->type == SLIM_ONNX_INT64)
        CUMSUM_LINES(int64_t, uint64_t);
    else
        CUMSUM_LINES(int32_t, uint64_t);
    if (x->type == SLIM_ONNX_FLOAT16)
        eng_round_f16(y->data, y->numel);
    return 0;
}
#undef CUMSUM_LINES

/* ConstantOfShape (opset 9): a tensor of the shape its input holds, every
 * element the one value of attribute `value` (float 0 without it). */
static int cos_compile(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    const Onnx__AttributeProto *a = slim_onnx_attr(n->proto, "value");
    const void *data;
    size_t nbytes;
    int fb, rc, type;
    n->a.to = SLIM_ONNX_FLOAT;
    n->a.alpha = 0.0f;
    n->a.start = 0;
    if (!a)
        return 0;
    if (!a->t)
        return slim_error_set(err, SLIM_EFORMAT, "value must be a tensor");
    if ((rc = slim_onnx_tensor_data(e->m, a->t, &data, &nbytes, &fb, err)))
        return rc;
    type = a->t->data_type;
    if (nbytes != slim_onnx_type_bytes(type, 1) || !eng_held_size(type))
        return slim_error_set(err, SLIM_EUNSUPPORTED, "value must be one %s element the "
                              "engine holds", slim_onnx_type_name(type));
    n->a.to = type;
    switch (type) {
    case SLIM_ONNX_FLOAT: n->a.alpha = *(const float *)data; break;
    case SLIM_ONNX_DOUBLE: n->a.alpha = (float)*(const double *)data; break;
    case SLIM_ONNX_FLOAT16: n->a.alpha = slim_f16_to_f32(*(const uint16_t *)data); break;
    case SLIM_ONNX_INT64: n->a.start = *(const int64_t *)data; break;
    case SLIM_ONNX_INT32: n->a.start = *(const int32_t *)data; break;
    case SLIM_ONNX_INT8: n->a.start = *(const int8_t *)data; break;
    default: n->a.start = *(const uint8_t *)data; break;
    }
    return 0;
}

static int cos_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    int64_t shape[SLIM_MAX_DIMS];
    struct eng_value *y;
    int nd, rc;
    if ((rc = eng_read_ints(eng_in(e, n, 0), shape, SLIM_MAX_DIMS, &nd, err)))
        return rc;
    if (eng_numel_checked(nd, shape) < 0)
        return slim_error_set(err, SLIM_EINVAL, "bad shape");
    if ((rc = eng_out(e, n, 0, n->a.to, nd, shape, err)))
        return rc;
    y = eng_outv(e, n, 0);
    for (int64_t i = 0; i < y->numel; i++)
        switch (eng_held_size(n->a.to)) {
        case 8: ((int64_t *)y->data)[i] = n->a.start; break;
        case 4:
            if (eng_is_float(n->a.to))
                ((float *)y->data)[i] = n->a.alpha;
            else
                ((int32_t *)y->data)[i] = (int32_t)n->a.start;
            break;
        default: ((uint8_t *)y->data)[i] = (uint8_t)n->a.start; break;
        }
    return 0;
}

static int scatter_compile(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    char red[16];
    const char *r = eng_attr_string(n, "reduction", red, sizeof red);
    (void)e;
    if (r && strcmp(r, "none"))
        return slim_error_set(err, SLIM_EUNSUPPORTED, "reduction '%s' (only none)", r);
    return eng_attr_int(n, "axis", 0, &n->a.axis, err);
}

/* ScatterElements (opset 11; 16's reduction "none" only): a copy of data
 * with updates[i...] written at the position whose axis coordinate is
 * indices[i...] and whose other coordinates are i's. */
static int scatter_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    const struct eng_value *x = eng_in(e, n, 0), *ix = eng_in(e, n, 1), *u = eng_in(e, n, 2);
    int64_t axis = eng_axis(n->a.axis, x->ndim), at[SLIM_MAX_DIMS] = {0}, stride[SLIM_MAX_DIMS];
    size_t es = eng_held_size(x->type);
    struct eng_value *y;
    int rc;
    if (axis < 0)
        return slim_error_set(err, SLIM_EINVAL, "axis %lld for %d dims", (long long)n->a.axis,
                              x->ndim);
    if (ix->type != SLIM_ONNX_INT64 && ix->type != SLIM_ONNX_INT32)
        return slim_error_set(err, SLIM_EINVAL, "indices are %s", slim_onnx_type_name(ix->type));
    if (u->type != x->type || ix->ndim != x->ndim || u->ndim != x->ndim)
        return slim_error_set(err, SLIM_EINVAL, "data, indices and updates must have one rank "
                              "(and data and updates one type)");
    for (int d = 0; d < x->ndim; d++)
        if (ix->shape[d] != u->shape[d] || (d != axis && ix->shape[d] > x->shape[d]))
            return slim_error_set(err, SLIM_EINVAL, "indices and updates do not fit data");
    if ((rc = eng_out(e, n, 0, x->type, x->ndim, x->shape, err)))
        return rc;
    y = eng_outv(e, n, 0);
    memcpy(y->data, x->data, (size_t)x->numel * es);
    for (int64_t d = x->ndim - 1, s = 1; d >= 0; d--) {
        stride[d] = s;
        s *= x->shape[d];
    }
    for (int64_t i = 0; i < ix->numel; i++) {
        int64_t k = ix->type == SLIM_ONNX_INT64 ? ((const int64_t *)ix->data)[i]
                                                : ((const int32_t *)ix->data)[i], off = 0;
        if (k < 0)
            k += x->shape[axis];
        if (k < 0 || k >= x->shape[axis])
            return slim_error_set(err, SLIM_EINVAL, "index %lld out of [0, %lld)",
                                  (long long)k, (long long)x->shape[axis]);
        for (int d = 0; d < x->ndim; d++)
            off += (d == axis ? k : at[d]) * stride[d];
        memcpy((char *)y->data + (size_t)off * es, (const char *)u->data + (size_t)i * es, es);
        for (int d = x->ndim - 1; d >= 0; d--) {      /* odometer over indices' shape */
            if (++at[d] < ix->shape[d])
                break;
            at[d] = 0;
        }
    }
    return 0;
}

static int shape_compile(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    int rc;
    n->a.has_end = slim_onnx_attr(n->proto, "end") != NULL;
    if ((rc = eng_attr_int(n, "start", 0, &n->a.start, err)))
        return rc;
    return eng_attr_int(n, "end", 0, &n->a.end, err);
}

static int shape_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    const struct eng_value *x = eng_in(e, n, 0);
    int64_t r = x->ndim, b = n->a.start, en = n->a.has_end ? n->a.end : r, len;
    int rc;
    b = clamp64(b < 0 ? b + r : b, 0, r);
    en = clamp64(en < 0 ? en + r : en, 0, r);
    len = en > b ? en - b : 0;
    if ((rc = eng_out(e, n, 0, SLIM_ONNX_INT64, 1, &len, err)))
        return rc;
    for (int64_t i = 0; i < len; i++)
        ((int64_t *)eng_outv(e, n, 0)->data)[i] = x->shape[b + i];
    return 0;
}

/* Constant: its value becomes a constant of the graph now; no run. */
static int constant_compile(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    struct eng_value *v = eng_outv(e, n, 0);
    const Onnx__AttributeProto *a;
    int64_t len;
    if (!v)
        return 0;
    if ((a = slim_onnx_attr(n->proto, "value")) && a->t)
        return eng_const_tensor(e, v, a->t, err);
    if ((a = slim_onnx_attr(n->proto, "value_float")))
        return eng_const_raw(v, SLIM_ONNX_FLOAT, 0, NULL, &a->f, 4, err);
    if ((a = slim_onnx_attr(n->proto, "value_int")))
        return eng_const_raw(v, SLIM_ONNX_INT64, 0, NULL, &a->i, 8, err);
    if ((a = slim_onnx_attr(n->proto, "value_floats"))) {
        len = (int64_t)a->n_floats;
        return eng_const_raw(v, SLIM_ONNX_FLOAT, 1, &len, a->floats, a->n_floats * 4, err);
    }
    if ((a = slim_onnx_attr(n->proto, "value_ints"))) {
        len = (int64_t)a->n_ints;
        return eng_const_raw(v, SLIM_ONNX_INT64, 1, &len, a->ints, a->n_ints * 8, err);
    }
    return slim_error_set(err, SLIM_EUNSUPPORTED, "a Constant without value, value_float(s) or "
                          "value_int(s)");
}

const struct eng_op eng_ops_shape[] = {
    {"Identity", 1, 1, 1, 1, NULL, identity_run},
    {"Dropout", 1, 3, 1, 2, NULL, identity_run},
    {"Flatten", 1, 1, 1, 1, flatten_compile, flatten_run},
    {"Reshape", 1, 2, 1, 1, reshape_compile, reshape_run},
    {"Squeeze", 1, 2, 1, 1, axes_compile, squeeze_run},
    {"Unsqueeze", 1, 2, 1, 1, axes_compile, unsqueeze_run},
    {"Transpose", 1, 1, 1, 1, transpose_compile, transpose_run},
    {"Concat", 1, 64, 1, 1, axis_compile, concat_run},
    {"Split", 1, 2, 1, ENG_MAX_INTS, split_compile, split_run},
    {"Slice", 1, 5, 1, 1, slice_compile, slice_run},
    {"Gather", 2, 2, 1, 1, axis_compile, gather_run},
    {"CumSum", 2, 2, 1, 1, cumsum_compile, cumsum_run},
    {"ConstantOfShape", 1, 1, 1, 1, cos_compile, cos_run},
    {"ScatterElements", 3, 3, 1, 1, scatter_compile, scatter_run},
    {"Shape", 1, 1, 1, 1, shape_compile, shape_run},
    {"Constant", 0, 0, 1, 1, constant_compile, NULL},
    {NULL, 0, 0, 0, 0, NULL, NULL},
};
