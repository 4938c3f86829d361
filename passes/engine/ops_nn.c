/*
 * ops_nn.c - the layers: Gemm and MatMul (cblas_sgemm), Conv (im2col +
 * sgemm), MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool,
 * BatchNormalization (inference), Softmax and LogSoftmax.
 *
 * Conv.  A sample's input (C, H, W) is unfolded into columns (im2col:
 * one row per (channel, kh, kw), one column per output position), so the
 * convolution is one matrix product W (M, C*kH*kW) @ cols (C*kH*kW,
 * oH*oW) (Chellapilla, Puri and Simard, "High performance convolutional
 * neural networks for document processing", 2006).  Small images give
 * small products, which BLAS runs poorly, so the columns of several
 * samples sit side by side (up to COL_FLOATS floats) and one sgemm
 * covers them all; its (M, samples * oH*oW) result is then scattered to
 * NCHW with the bias (and a fused Relu) added on the way.  A 1x1 conv of
 * stride 1 without padding needs no columns: the input already is them.
 * Groups run one product per group.  Rejected: Winograd and FFT
 * convolution (much more code, and accuracy to watch), and a direct
 * convolution loop (an order of magnitude slower than sgemm).  When a
 * pool was fused into the Conv (graph.c), each chunk's planes are pooled
 * from the scratch they were scattered to, so the batch's full-size
 * activations never go to memory.
 *
 * Pools walk each output position's window, clipped to the input
 * beforehand so the inner loops have no bounds tests; the 2x2 stride-2
 * max pool of every small CNN gets its own loop.  Output sizes follow
 * ONNX: explicit pads or auto_pad (SAME_UPPER, SAME_LOWER, VALID),
 * ceil_mode, and a last window that would start in the end padding is
 * dropped (as ONNX Runtime and PyTorch do).
 *
 * Softmax before opset 13 flattens the input to 2-D at `axis` and
 * normalises rows; from 13 on it normalises along the one axis.
 */
#pragma GCC optimize("O3")   /* -O2 on GCC 12 leaves these loops scalar */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "passes/engine/internal.h"

/* im2col columns per chunk: 256 K floats (1 MiB), so that the columns
 * and the product stay in L2 between im2col, sgemm and the scatter
 * (16 MiB chunks took 1.6x as long on the CNN benchmark) */
#define COL_FLOATS ((int64_t)256 << 10)

/* ---- Gemm / MatMul ---------------------------------------------------------------- */

static void relu_inplace(float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] = y[i] > 0.0f ? y[i] : 0.0f;
}

static int float_input(const struct eng_value *v, const char *what, struct slim_error *err)
{
    if (!eng_is_float(v->type))
        return slim_error_set(err, SLIM_EUNSUPPORTED, "%s is %s (only float is supported)", what,
                              slim_onnx_type_name(v->type));
    return 0;
}

static int gemm_compile(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    int64_t ta, tb;
    int rc;
    if ((rc = eng_attr_float(n, "alpha", 1.0f, &n->a.alpha, err)) ||
        (rc = eng_attr_float(n, "beta", 1.0f, &n->a.beta, err)) ||
        (rc = eng_attr_int(n, "transA", 0, &ta, err)) ||
        (rc = eng_attr_int(n, "transB", 0, &tb, err)))
        return rc;
    n->a.trans_a = ta != 0;
    n->a.trans_b = tb != 0;
    return 0;
}

/* Y = alpha * A' B' + beta * C, C broadcast to (M, N) */
static int gemm_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    const struct eng_value *a = eng_in(e, n, 0), *b = eng_in(e, n, 1), *c = eng_in(e, n, 2);
    int64_t m, k, nn, kb, shape[2];
    struct eng_value *y;
    float *yd, beta = 0.0f;
    int rc;
    char s1[96], s2[96];

    if ((rc = float_input(a, "A", err)) || (rc = float_input(b, "B", err)))
        return rc;
    if (a->ndim != 2 || b->ndim != 2)
        return slim_error_set(err, SLIM_EINVAL, "A %s and B %s are not both 2-D",
                              eng_shape_str(a->ndim, a->shape, s1, sizeof s1),
                              eng_shape_str(b->ndim, b->shape, s2, sizeof s2));
    m = a->shape[n->a.trans_a];
    k = a->shape[!n->a.trans_a];
    kb = b->shape[n->a.trans_b];
    nn = b->shape[!n->a.trans_b];
    if (k != kb)
        return slim_error_set(err, SLIM_EINVAL, "A %s and B %s do not multiply (transA %d, "
                              "transB %d)", eng_shape_str(a->ndim, a->shape, s1, sizeof s1),
                              eng_shape_str(b->ndim, b->shape, s2, sizeof s2), n->a.trans_a,
                              n->a.trans_b);
    shape[0] = m;
    shape[1] = nn;
    if ((rc = eng_out(e, n, 0, a->type, 2, shape, err)))
        return rc;
    y = eng_outv(e, n, 0);
    yd = y->data;
    if (c && n->a.beta != 0.0f && m && nn) {
        const float *cd = c->data;
        float bt = n->a.beta;
        int64_t cr = c->ndim == 2 ? c->shape[0] : 1, cc = c->ndim ? c->shape[c->ndim - 1] : 1;
        if ((rc = float_input(c, "C", err)))
            return rc;
        if (c->ndim > 2 || (cr != 1 && cr != m) || (cc != 1 && cc != nn))
            return slim_error_set(err, SLIM_EINVAL, "C %s does not broadcast to [%lld, %lld]",
                                  eng_shape_str(c->ndim, c->shape, s1, sizeof s1), (long long)m,
                                  (long long)nn);
        for (int64_t i = 0; i < m; i++) {
            const float *crow = cd + (cr == 1 ? 0 : i * cc);
            float *yrow = yd + i * nn;
            if (cc == 1)
                for (int64_t j = 0; j < nn; j++)
                    yrow[j] = bt * crow[0];
            else
                for (int64_t j = 0; j < nn; j++)
                    yrow[j] = bt * crow[j];
        }
        beta = 1.0f;
    }
    if (m && nn) {
        if (k)
            cblas_sgemm(CblasRowMajor, n->a.trans_a ? CblasTrans : CblasNoTrans,
                        n->a.trans_b ? CblasTrans : CblasNoTrans, (int)m, (int)nn, (int)k,
                        n->a.alpha, a->data, n->a.trans_a ? (int)m : (int)k, b->data,
                        n->a.trans_b ? (int)k : (int)nn, beta, yd, (int)nn);
        else if (beta == 0.0f)
            memset(yd, 0, (size_t)(m * nn) * sizeof *yd);
    }
    if (n->a.fuse_relu)
        relu_inplace(yd, y->numel);
    if (y->type == SLIM_ONNX_FLOAT16)
        eng_round_f16(yd, y->numel);
    return 0;
}

/* numpy matmul: [..., M, K] @ [..., K, N], batch dims broadcast, 1-D
 * operands promoted (and their dim dropped from the result). */
static int matmul_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    const struct eng_value *a = eng_in(e, n, 0), *b = eng_in(e, n, 1);
    int64_t m, k, kb, nn, shape[SLIM_MAX_DIMS], bshape[SLIM_MAX_DIMS], batches = 1;
    int an = a->ndim, bn = b->ndim, nb, nd = 0, rc;
    struct eng_value *y;
    char s1[96], s2[96];

    if ((rc = float_input(a, "A", err)) || (rc = float_input(b, "B", err)))
        return rc;
    if (an < 1 || bn < 1)
        return slim_error_set(err, SLIM_EINVAL, "scalar operands");
    m = an >= 2 ? a->shape[an - 2] : 1;
    k = a->shape[an - 1];
    kb = bn >= 2 ? b->shape[bn - 2] : b->shape[0];
    nn = bn >= 2 ? b->shape[bn - 1] : 1;
    if (k != kb)
        return slim_error_set(err, SLIM_EINVAL, "%s and %s do not multiply",
                              eng_shape_str(an, a->shape, s1, sizeof s1),
                              eng_shape_str(bn, b->shape, s2, sizeof s2));
    /* batch dims, broadcast */
    nb = (an > 2 ? an - 2 : 0) > (bn > 2 ? bn - 2 : 0) ? an - 2 : (bn > 2 ? bn - 2 : 0);
    for (int d = 0; d < nb; d++) {
        int ia = d - (nb - (an > 2 ? an - 2 : 0)), ib = d - (nb - (bn > 2 ? bn - 2 : 0));
        int64_t da = ia >= 0 ? a->shape[ia] : 1, db = ib >= 0 ? b->shape[ib] : 1;
        if (da != db && da != 1 && db != 1)
            return slim_error_set(err, SLIM_EINVAL, "batch dims of %s and %s do not broadcast",
                                  eng_shape_str(an, a->shape, s1, sizeof s1),
                                  eng_shape_str(bn, b->shape, s2, sizeof s2));
        bshape[d] = da == 1 ? db : da;
        shape[nd++] = bshape[d];
        batches *= bshape[d];
    }
    if (an >= 2)
        shape[nd++] = m;
    if (bn >= 2)
        shape[nd++] = nn;
    if ((rc = eng_out(e, n, 0, a->type, nd, shape, err)))
        return rc;
    y = eng_outv(e, n, 0);
    if (!y->numel)
        return 0;
    if (!k) {
        memset(y->data, 0, (size_t)y->numel * sizeof(float));
        return 0;
    }
    if (bn <= 2) {
        /* every row of A (batch dims included) times one B: one product */
        int64_t rows = a->numel / k;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)nn, (int)k, 1.0f,
                    a->data, (int)k, b->data, (int)nn, 0.0f, y->data, (int)nn);
    } else {
        int64_t abatch = eng_numel(an > 2 ? an - 2 : 0, a->shape);
        int64_t bbatch = eng_numel(bn - 2, b->shape);
        for (int64_t i = 0; i < batches; i++) {
            /* the batch index of each operand, broadcasting its size-1 dims */
            int64_t rem = i, ai = 0, bi = 0, as = 1, bs = 1;
            for (int d = nb - 1; d >= 0; d--) {
                int ia = d - (nb - (an > 2 ? an - 2 : 0)), ib = d - (nb - (bn - 2));
                int64_t idx = rem % bshape[d];
                rem /= bshape[d];
                if (ia >= 0) {
                    ai += (a->shape[ia] == 1 ? 0 : idx) * as;
                    as *= a->shape[ia];
                }
                if (ib >= 0) {
                    bi += (b->shape[ib] == 1 ? 0 : idx) * bs;
                    bs *= b->shape[ib];
                }
            }
            (void)abatch;
            (void)bbatch;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)nn, (int)k, 1.0f,
                        (const float *)a->data + ai * m * k, (int)k,
                        (const float *)b->data + bi * k * nn, (int)nn, 0.0f,
                        (float *)y->data + i * m * nn, (int)nn);
        }
    }
    if (y->type == SLIM_ONNX_FLOAT16)
        eng_round_f16(y->data, y->numel);
    return 0;
}

/* ---- windows: Conv and the pools ---------------------------------------------------- */

/* Spatial geometry of a Conv or pool, 1-D inputs as H = 1. */
struct geom {
    int64_t h, w, kh, kw, oh, ow, sh, sw, dh, dw, pt, pl, pb, pr;
};

static int window_compile(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    char buf[32];
    const char *ap = eng_attr_string(n, "auto_pad", buf, sizeof buf);
    int64_t v;
    int rc;
    if ((rc = eng_attr_ints(n, "kernel_shape", n->a.kernel, SLIM_MAX_DIMS, &n->a.n_kernel, err)) ||
        (rc = eng_attr_ints(n, "pads", n->a.pads, 2 * SLIM_MAX_DIMS, &n->a.n_pads, err)) ||
        (rc = eng_attr_ints(n, "strides", n->a.strides, SLIM_MAX_DIMS, &n->a.n_strides, err)) ||
        (rc = eng_attr_ints(n, "dilations", n->a.dilations, SLIM_MAX_DIMS, &n->a.n_dilations,
                            err)))
        return rc;
    if ((rc = eng_attr_int(n, "group", 1, &n->a.group, err)) ||
        (rc = eng_attr_int(n, "ceil_mode", 0, &v, err)))
        return rc;
    n->a.ceil_mode = v != 0;
    if ((rc = eng_attr_int(n, "count_include_pad", 0, &v, err)))
        return rc;
    n->a.count_include_pad = v != 0;
    if ((rc = eng_attr_int(n, "storage_order", 0, &v, err)))
        return rc;
    if (v)
        return slim_error_set(err, SLIM_EUNSUPPORTED, "storage_order 1 is not supported");
    if (!ap || !strcmp(ap, "NOTSET"))
        n->a.auto_pad = PAD_NOTSET;
    else if (!strcmp(ap, "SAME_UPPER"))
        n->a.auto_pad = PAD_SAME_UPPER;
    else if (!strcmp(ap, "SAME_LOWER"))
        n->a.auto_pad = PAD_SAME_LOWER;
    else if (!strcmp(ap, "VALID"))
        n->a.auto_pad = PAD_VALID;
    else
        return slim_error_set(err, SLIM_EFORMAT, "auto_pad '%s'", ap);
    if (n->a.group < 1)
        return slim_error_set(err, SLIM_EFORMAT, "group %lld", (long long)n->a.group);
    return 0;
}

/* One spatial dim: output size and pads from input size `in`, kernel k. */
static int window_dim(const struct eng_attrs *a, int d, int sp, int64_t in, int64_t k,
                      int64_t *out, int64_t *pb, int64_t *pe, int64_t *s, int64_t *dil,
                      struct slim_error *err)
{
    int64_t ek;
    *s = a->n_strides > 0 ? a->strides[d] : 1;
    *dil = a->n_dilations > 0 ? a->dilations[d] : 1;
    if (*s < 1 || *dil < 1 || k < 1)
        return slim_error_set(err, SLIM_EINVAL, "kernel %lld, stride %lld, dilation %lld",
                              (long long)k, (long long)*s, (long long)*dil);
    ek = (k - 1) * *dil + 1;
    if (a->auto_pad == PAD_SAME_UPPER || a->auto_pad == PAD_SAME_LOWER) {
        int64_t total;
        *out = (in + *s - 1) / *s;
        total = (*out - 1) * *s + ek - in;
        if (total < 0)
            total = 0;
        *pb = a->auto_pad == PAD_SAME_UPPER ? total / 2 : total - total / 2;
        *pe = total - *pb;
        return 0;
    }
    *pb = *pe = 0;
    if (a->auto_pad == PAD_NOTSET && a->n_pads > 0) {
        *pb = a->pads[d];
        *pe = a->pads[d + sp];
    }
    if (in + *pb + *pe < ek) {
        *out = 0;
        return slim_error_set(err, SLIM_EINVAL, "a window of %lld over %lld (padded: %lld)",
                              (long long)ek, (long long)in, (long long)(in + *pb + *pe));
    }
    if (a->ceil_mode) {
        *out = (in + *pb + *pe - ek + *s - 1) / *s + 1;
        if ((*out - 1) * *s >= in + *pb)
            (*out)--;   /* the last window would start inside the end padding */
    } else {
        *out = (in + *pb + *pe - ek) / *s + 1;
    }
    return 0;
}

/* The geometry for input x (N, C, spatial...) and kernel dims k. */
static int window_geom(const struct eng_node *n, const struct eng_value *x, const int64_t *k,
                       struct geom *g, struct slim_error *err)
{
    int sp = x->ndim - 2, rc;
    char s1[96];
    if (sp < 1 || sp > 2)
        return slim_error_set(err, SLIM_EUNSUPPORTED, "input %s: only 1-D and 2-D windows are "
                              "supported", eng_shape_str(x->ndim, x->shape, s1, sizeof s1));
    if ((n->a.n_pads > 0 && n->a.n_pads != 2 * sp) ||
        (n->a.n_strides > 0 && n->a.n_strides != sp) ||
        (n->a.n_dilations > 0 && n->a.n_dilations != sp))
        return slim_error_set(err, SLIM_EINVAL, "pads/strides/dilations do not match %d "
                              "spatial dims", sp);
    if (sp == 1) {
        g->h = g->kh = g->oh = g->sh = g->dh = 1;
        g->pt = g->pb = 0;
        g->w = x->shape[2];
        g->kw = k[0];
        return window_dim(&n->a, 0, 1, x->shape[2], k[0], &g->ow, &g->pl, &g->pr, &g->sw, &g->dw,
                          err);
    }
    g->h = x->shape[2];
    g->w = x->shape[3];
    g->kh = k[0];
    g->kw = k[1];
    if ((rc = window_dim(&n->a, 0, 2, x->shape[2], k[0], &g->oh, &g->pt, &g->pb, &g->sh, &g->dh,
                         err)))
        return rc;
    return window_dim(&n->a, 1, 2, x->shape[3], k[1], &g->ow, &g->pl, &g->pr, &g->sw, &g->dw,
                      err);
}

/* The output positions o in [0, count) whose tap o * s + off falls in
 * [0, len): [*lo, *hi). */
static void valid_range(int64_t off, int64_t s, int64_t len, int64_t count, int64_t *lo,
                        int64_t *hi)
{
    int64_t a = off < 0 ? (-off + s - 1) / s : 0;
    int64_t b = len - 1 - off >= 0 ? (len - 1 - off) / s + 1 : 0;
    if (b > count)
        b = count;
    if (a > b)
        a = b;
    *lo = a;
    *hi = b;
}

/* x (C, H, W) -> col (C*kH*kW rows of stride ldc, oH*oW columns) */
static void im2col(const float *x, int64_t c, const struct geom *g, float *col, int64_t ldc)
{
    for (int64_t ch = 0; ch < c; ch++)
        for (int64_t kh = 0; kh < g->kh; kh++)
            for (int64_t kw = 0; kw < g->kw; kw++) {
                float *row = col + ((ch * g->kh + kh) * g->kw + kw) * ldc;
                int64_t iw0 = kw * g->dw - g->pl, lo, hi;
                valid_range(iw0, g->sw, g->w, g->ow, &lo, &hi);
                for (int64_t oh = 0; oh < g->oh; oh++) {
                    int64_t ih = oh * g->sh - g->pt + kh * g->dh;
                    float *dst = row + oh * g->ow;
                    const float *src;
                    /* rows are short (an image's width): plain loops, not
                     * memcpy/memset calls */
                    if (ih < 0 || ih >= g->h) {
                        for (int64_t ow = 0; ow < g->ow; ow++)
                            dst[ow] = 0.0f;
                        continue;
                    }
                    src = x + (ch * g->h + ih) * g->w + iw0;
                    for (int64_t ow = 0; ow < lo; ow++)
                        dst[ow] = 0.0f;
                    if (g->sw == 1)
                        for (int64_t ow = lo; ow < hi; ow++)
                            dst[ow] = src[ow];
                    else
                        for (int64_t ow = lo; ow < hi; ow++)
                            dst[ow] = src[ow * g->sw];
                    for (int64_t ow = hi; ow < g->ow; ow++)
                        dst[ow] = 0.0f;
                }
            }
}

/* y[i] = src[i] + b, and max(., 0) when relu */
static void bias_row(float *y, const float *src, int64_t n, float b, int relu)
{
    if (relu)
        for (int64_t i = 0; i < n; i++) {
            float v = src[i] + b;
            y[i] = v > 0.0f ? v : 0.0f;
        }
    else
        for (int64_t i = 0; i < n; i++)
            y[i] = src[i] + b;
}

/* ---- pools ---------------------------------------------------------------------------- */

enum pool_kind { POOL_MAX, POOL_AVG };

/* One plane (H, W) -> (oH, oW). */
static void pool_plane(enum pool_kind kind, const float *x, float *y, const struct geom *g,
                       int include_pad)
{
    for (int64_t oh = 0; oh < g->oh; oh++) {
        int64_t h0 = oh * g->sh - g->pt, khlo, khhi, ph_lo, ph_hi;
        /* taps h0 + kh * dh inside the input, and inside the padded input */
        valid_range(h0, g->dh, g->h, g->kh, &khlo, &khhi);
        valid_range(h0 + g->pt, g->dh, g->h + g->pt + g->pb, g->kh, &ph_lo, &ph_hi);
        for (int64_t ow = 0; ow < g->ow; ow++) {
            int64_t w0 = ow * g->sw - g->pl, kwlo, kwhi, pw_lo, pw_hi;
            float acc = kind == POOL_MAX ? -INFINITY : 0.0f;
            valid_range(w0, g->dw, g->w, g->kw, &kwlo, &kwhi);
            valid_range(w0 + g->pl, g->dw, g->w + g->pl + g->pr, g->kw, &pw_lo, &pw_hi);
            for (int64_t kh = khlo; kh < khhi; kh++) {
                const float *row = x + (h0 + kh * g->dh) * g->w + w0;
                if (kind == POOL_MAX)
                    for (int64_t kw = kwlo; kw < kwhi; kw++)
                        acc = row[kw * g->dw] > acc ? row[kw * g->dw] : acc;
                else
                    for (int64_t kw = kwlo; kw < kwhi; kw++)
                        acc += row[kw * g->dw];
            }
            if (kind == POOL_AVG) {
                int64_t cnt = include_pad ? (ph_hi - ph_lo) * (pw_hi - pw_lo)
                                          : (khhi - khlo) * (kwhi - kwlo);
                acc = cnt ? acc / (float)cnt : 0.0f;
            }
            y[oh * g->ow + ow] = acc;
        }
    }
}

/* The 2x2 stride-2 max pool without padding of most small CNNs. */
static void maxpool2x2_plane(const float *x, float *y, const struct geom *g)
{
    for (int64_t oh = 0; oh < g->oh; oh++) {
        const float *r0 = x + 2 * oh * g->w, *r1 = r0 + g->w;
        float *dst = y + oh * g->ow;
        for (int64_t ow = 0; ow < g->ow; ow++) {
            float a = r0[2 * ow] > r0[2 * ow + 1] ? r0[2 * ow] : r0[2 * ow + 1];
            float b = r1[2 * ow] > r1[2 * ow + 1] ? r1[2 * ow] : r1[2 * ow + 1];
            dst[ow] = a > b ? a : b;
        }
    }
}

/* planes (H, W) of x -> (oH, oW) of y, pooled as node pn says (a MaxPool
 * or an AveragePool; also a pool fused into a Conv). */
static void pool_planes(const struct eng_node *pn, const struct geom *g, const float *x, float *y,
                        int64_t planes)
{
    enum pool_kind kind = strcmp(pn->op->name, "MaxPool") ? POOL_AVG : POOL_MAX;
    int fast = kind == POOL_MAX && g->kh == 2 && g->kw == 2 && g->sh == 2 && g->sw == 2 &&
               g->dh == 1 && g->dw == 1 && !g->pt && !g->pl && 2 * g->oh <= g->h &&
               2 * g->ow <= g->w;
    int64_t ip = g->h * g->w, op = g->oh * g->ow;
    for (int64_t i = 0; i < planes; i++) {
        if (fast)
            maxpool2x2_plane(x + i * ip, y + i * op, g);
        else
            pool_plane(kind, x + i * ip, y + i * op, g, pn->a.count_include_pad);
    }
}

/* What a Conv run needs, set up once per run. */
struct conv_ctx {
    const float *x, *w, *bias;
    struct geom g;
    int64_t cin, m, cg, mg, grp, kdim, p, nb;
    int relu, one_by_one;
    float *col, *tmp;
};

/* Conv output planes of samples [b0, b0 + cnt) into dst (cnt, M, oH*oW),
 * bias and fused Relu included. */
static void conv_chunk(const struct conv_ctx *c, int64_t b0, int64_t cnt, float *dst)
{
    const struct geom *g = &c->g;
    int64_t p = c->p, m = c->m, in_plane = g->h * g->w;
    if (c->one_by_one) {
        /* 1x1: the input planes are the columns */
        for (int64_t j = 0; j < cnt; j++)
            for (int64_t gi = 0; gi < c->grp; gi++)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)c->mg, (int)p,
                            (int)c->cg, 1.0f, c->w + gi * c->mg * c->kdim, (int)c->kdim,
                            c->x + ((b0 + j) * c->cin + gi * c->cg) * p, (int)p, 0.0f,
                            dst + (j * m + gi * c->mg) * p, (int)p);
        for (int64_t r = 0; r < cnt * m; r++)
            bias_row(dst + r * p, dst + r * p, p, c->bias ? c->bias[r % m] : 0.0f, c->relu);
    } else if (c->grp == 1 && cnt > 1) {
        /* columns of cnt samples side by side, one product, scattered to NCHW */
        for (int64_t j = 0; j < cnt; j++)
            im2col(c->x + (b0 + j) * c->cin * in_plane, c->cin, g, c->col + j * p, cnt * p);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)(cnt * p),
                    (int)c->kdim, 1.0f, c->w, (int)c->kdim, c->col, (int)(cnt * p), 0.0f, c->tmp,
                    (int)(cnt * p));
        for (int64_t j = 0; j < cnt; j++)
            for (int64_t o = 0; o < m; o++)
                bias_row(dst + (j * m + o) * p, c->tmp + o * cnt * p + j * p, p,
                         c->bias ? c->bias[o] : 0.0f, c->relu);
    } else {
        /* one sample at a time: one product per group, straight into dst */
        for (int64_t j = 0; j < cnt; j++)
            for (int64_t gi = 0; gi < c->grp; gi++) {
                float *yb = dst + (j * m + gi * c->mg) * p;
                im2col(c->x + ((b0 + j) * c->cin + gi * c->cg) * in_plane, c->cg, g, c->col, p);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)c->mg, (int)p,
                            (int)c->kdim, 1.0f, c->w + gi * c->mg * c->kdim, (int)c->kdim,
                            c->col, (int)p, 0.0f, yb, (int)p);
                for (int64_t o = 0; o < c->mg; o++)
                    bias_row(yb + o * p, yb + o * p, p,
                             c->bias ? c->bias[gi * c->mg + o] : 0.0f, c->relu);
            }
    }
}

static int conv_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    const struct eng_value *x = eng_in(e, n, 0), *w = eng_in(e, n, 1), *bias = eng_in(e, n, 2);
    const struct eng_node *pn = n->pool;
    int64_t batch, shape[4], kern[2], pkern[2], pplane = 0;
    struct eng_value *y, conv_y;
    struct conv_ctx c = {0};
    struct geom pg;
    float *planes = NULL;
    int rc;
    char s1[96], s2[96];

    if ((rc = float_input(x, "X", err)) || (rc = float_input(w, "W", err)))
        return rc;
    if (w->ndim != x->ndim || x->ndim < 3)
        return slim_error_set(err, SLIM_EINVAL, "X %s and W %s",
                              eng_shape_str(x->ndim, x->shape, s1, sizeof s1),
                              eng_shape_str(w->ndim, w->shape, s2, sizeof s2));
    batch = x->shape[0];
    c.grp = n->a.group;
    c.cin = x->shape[1];
    c.m = w->shape[0];
    c.cg = w->shape[1];
    if (c.cin != c.cg * c.grp || c.m % c.grp)
        return slim_error_set(err, SLIM_EINVAL, "X %s, W %s and group %lld do not fit",
                              eng_shape_str(x->ndim, x->shape, s1, sizeof s1),
                              eng_shape_str(w->ndim, w->shape, s2, sizeof s2),
                              (long long)c.grp);
    for (int d = 2; d < w->ndim; d++) {
        if (d - 2 < 2)
            kern[d - 2] = w->shape[d];
        if (n->a.n_kernel > 0 && (n->a.n_kernel != w->ndim - 2 || n->a.kernel[d - 2] != w->shape[d]))
            return slim_error_set(err, SLIM_EINVAL, "kernel_shape does not match W %s",
                                  eng_shape_str(w->ndim, w->shape, s2, sizeof s2));
    }
    if ((rc = window_geom(n, x, kern, &c.g, err)))
        return rc;
    if (bias && (bias->numel != c.m || !eng_is_float(bias->type)))
        return slim_error_set(err, SLIM_EINVAL, "B has %lld elements for %lld output channels",
                              (long long)bias->numel, (long long)c.m);
    c.x = x->data;
    c.w = w->data;
    c.bias = bias ? bias->data : NULL;
    c.relu = n->a.fuse_relu;
    c.mg = c.m / c.grp;
    c.kdim = c.cg * c.g.kh * c.g.kw;
    c.p = c.g.oh * c.g.ow;
    c.one_by_one = c.g.kh == 1 && c.g.kw == 1 && c.g.sh == 1 && c.g.sw == 1 && !c.g.pt &&
                   !c.g.pl && !c.g.pb && !c.g.pr;
    shape[0] = batch;
    shape[1] = c.m;
    shape[2] = x->ndim == 3 ? c.g.ow : c.g.oh;
    shape[3] = c.g.ow;
    if (pn) {
        /* a pool fused in: its geometry over the Conv's output */
        memset(&conv_y, 0, sizeof conv_y);
        conv_y.ndim = x->ndim;
        memcpy(conv_y.shape, shape, sizeof shape);
        pkern[0] = pn->a.kernel[0];
        pkern[1] = pn->a.n_kernel > 1 ? pn->a.kernel[1] : 1;
        if (pn->a.n_kernel != x->ndim - 2)
            return slim_error_set(err, SLIM_EINVAL, "the pool's kernel_shape does not fit");
        if ((rc = window_geom(pn, &conv_y, pkern, &pg, err)))
            return rc;
        shape[2] = x->ndim == 3 ? pg.ow : pg.oh;
        shape[3] = pg.ow;
        pplane = pg.oh * pg.ow;
    }
    if ((rc = eng_out(e, n, 0, x->type, x->ndim, shape, err)))
        return rc;
    y = eng_outv(e, n, 0);
    if (!y->numel || !c.p)
        return 0;

    /* samples per chunk: as many as COL_FLOATS of columns hold */
    c.nb = c.grp == 1 && !c.one_by_one ? COL_FLOATS / (c.kdim * c.p) : 1;
    c.nb = c.nb < 1 ? 1 : c.nb > batch ? batch : c.nb;
    c.col = eng_scratch(e, 0, (size_t)(c.kdim * c.nb * c.p) * sizeof *c.col);
    c.tmp = c.nb > 1 ? eng_scratch(e, 1, (size_t)(c.m * c.nb * c.p) * sizeof *c.tmp) : NULL;
    if (pn)
        planes = eng_scratch(e, 2, (size_t)(c.nb * c.m * c.p) * sizeof *planes);
    if ((!c.col && !c.one_by_one) || (c.nb > 1 && !c.tmp) || (pn && !planes))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    for (int64_t b0 = 0; b0 < batch; b0 += c.nb) {
        int64_t cnt = batch - b0 < c.nb ? batch - b0 : c.nb;
        if (!pn) {
            conv_chunk(&c, b0, cnt, (float *)y->data + b0 * c.m * c.p);
            continue;
        }
        /* the chunk's planes are pooled while they are in cache */
        conv_chunk(&c, b0, cnt, planes);
        pool_planes(pn, &pg, planes, (float *)y->data + b0 * c.m * pplane, cnt * c.m);
    }
    if (y->type == SLIM_ONNX_FLOAT16)
        eng_round_f16(y->data, y->numel);
    return 0;
}

static int pool_run(struct slim_engine *e, struct eng_node *n, enum pool_kind kind,
                    struct slim_error *err)
{
    const struct eng_value *x = eng_in(e, n, 0);
    int64_t shape[4], kern[2];
    struct eng_value *y;
    struct geom g;
    int rc;

    if ((rc = float_input(x, "X", err)))
        return rc;
    if (eng_outv(e, n, 1))
        return slim_error_set(err, SLIM_EUNSUPPORTED, "MaxPool's Indices output is not "
                              "supported");
    if (n->a.n_kernel != x->ndim - 2)
        return slim_error_set(err, SLIM_EINVAL, "kernel_shape of %d dims for an input of %d",
                              n->a.n_kernel, x->ndim);
    kern[0] = n->a.kernel[0];
    kern[1] = n->a.n_kernel > 1 ? n->a.kernel[1] : 1;
    if (kind == POOL_AVG && n->a.n_dilations > 0 && e->opset < 19)
        return slim_error_set(err, SLIM_EFORMAT, "AveragePool has dilations from opset 19");
    if ((rc = window_geom(n, x, kern, &g, err)))
        return rc;
    shape[0] = x->shape[0];
    shape[1] = x->shape[1];
    shape[2] = x->ndim == 3 ? g.ow : g.oh;
    shape[3] = g.ow;
    if ((rc = eng_out(e, n, 0, x->type, x->ndim, shape, err)))
        return rc;
    y = eng_outv(e, n, 0);
    pool_planes(n, &g, x->data, y->data, x->shape[0] * x->shape[1]);
    return 0;
}

static int maxpool_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    return pool_run(e, n, POOL_MAX, err);
}

static int avgpool_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    return pool_run(e, n, POOL_AVG, err);
}

static int global_pool(struct slim_engine *e, struct eng_node *n, enum pool_kind kind,
                       struct slim_error *err)
{
    const struct eng_value *x = eng_in(e, n, 0);
    int64_t shape[SLIM_MAX_DIMS], planes, len;
    float *yd;
    int rc;
    if ((rc = float_input(x, "X", err)))
        return rc;
    if (x->ndim < 3)
        return slim_error_set(err, SLIM_EINVAL, "input of %d dims", x->ndim);
    for (int d = 0; d < x->ndim; d++)
        shape[d] = d < 2 ? x->shape[d] : 1;
    if ((rc = eng_out(e, n, 0, x->type, x->ndim, shape, err)))
        return rc;
    yd = eng_outv(e, n, 0)->data;
    planes = x->shape[0] * x->shape[1];
    len = eng_numel(x->ndim - 2, x->shape + 2);
    for (int64_t i = 0; i < planes; i++) {
        const float *xp = (const float *)x->data + i * len;
        float acc = kind == POOL_MAX ? -INFINITY : 0.0f;
        if (kind == POOL_MAX)
            for (int64_t j = 0; j < len; j++)
                acc = xp[j] > acc ? xp[j] : acc;
        else
            for (int64_t j = 0; j < len; j++)
                acc += xp[j];
        yd[i] = kind == POOL_AVG && len ? acc / (float)len : acc;
    }
    if (x->type == SLIM_ONNX_FLOAT16)
        eng_round_f16(yd, planes);
    return 0;
}

static int gap_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    return global_pool(e, n, POOL_AVG, err);
}

static int gmp_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    return global_pool(e, n, POOL_MAX, err);
}

/* ---- BatchNormalization ---------------------------------------------------------------- */

static int bn_compile(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    int64_t v;
    int rc;
    if ((rc = eng_attr_float(n, "epsilon", 1e-5f, &n->a.epsilon, err)))
        return rc;
    if ((rc = eng_attr_int(n, "training_mode", 0, &v, err)))
        return rc;
    if (v || n->n_out > 1)
        return slim_error_set(err, SLIM_EUNSUPPORTED, "training mode is not supported");
    if ((rc = eng_attr_int(n, "spatial", 1, &v, err)))
        return rc;
    if (!v)
        return slim_error_set(err, SLIM_EUNSUPPORTED, "spatial = 0 is not supported");
    if (n->n_in != 5)
        return slim_error_set(err, SLIM_EFORMAT, "%d inputs (expected 5)", n->n_in);
    return 0;
}

/* y = (x - mean) / sqrt(var + eps) * scale + B, per channel (dim 1) */
static int bn_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    const struct eng_value *x = eng_in(e, n, 0);
    const struct eng_value *p[4] = {eng_in(e, n, 1), eng_in(e, n, 2), eng_in(e, n, 3),
                                    eng_in(e, n, 4)};
    int64_t c, inner, batch;
    float *yd;
    int rc;
    if ((rc = float_input(x, "X", err)))
        return rc;
    if (x->ndim < 2)
        return slim_error_set(err, SLIM_EINVAL, "input of %d dims", x->ndim);
    c = x->shape[1];
    for (int i = 0; i < 4; i++)
        if (!eng_is_float(p[i]->type) || p[i]->numel != c)
            return slim_error_set(err, SLIM_EINVAL, "'%.60s' has %lld elements for %lld "
                                  "channels", p[i]->name, (long long)p[i]->numel, (long long)c);
    if ((rc = eng_out(e, n, 0, x->type, x->ndim, x->shape, err)))
        return rc;
    yd = eng_outv(e, n, 0)->data;
    batch = x->shape[0];
    inner = eng_numel(x->ndim - 2, x->shape + 2);
    for (int64_t ch = 0; ch < c; ch++) {
        const float *sc = p[0]->data, *bb = p[1]->data, *mean = p[2]->data, *var = p[3]->data;
        float a = sc[ch] / sqrtf(var[ch] + n->a.epsilon), b = bb[ch] - mean[ch] * a;
        for (int64_t i = 0; i < batch; i++) {
            const float *xp = (const float *)x->data + (i * c + ch) * inner;
            float *yp = yd + (i * c + ch) * inner;
            for (int64_t j = 0; j < inner; j++)
                yp[j] = xp[j] * a + b;
        }
    }
    if (x->type == SLIM_ONNX_FLOAT16)
        eng_round_f16(yd, x->numel);
    return 0;
}

/* ---- Softmax / LogSoftmax ------------------------------------------------------------------ */

static int softmax_compile(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    return eng_attr_int(n, "axis", e->opset >= 13 ? -1 : 1, &n->a.axis, err);
}

/* x (len,) with stride `inner` -> y, softmax or log-softmax */
static void softmax_line(const float *x, float *y, int64_t len, int64_t inner, int lg)
{
    float mx = -INFINITY, sum = 0.0f;
    for (int64_t i = 0; i < len; i++)
        mx = x[i * inner] > mx ? x[i * inner] : mx;
    if (lg) {
        for (int64_t i = 0; i < len; i++)
            sum += expf(x[i * inner] - mx);
        float l = logf(sum);
        for (int64_t i = 0; i < len; i++)
            y[i * inner] = x[i * inner] - mx - l;
        return;
    }
    for (int64_t i = 0; i < len; i++) {
        y[i * inner] = expf(x[i * inner] - mx);
        sum += y[i * inner];
    }
    float r = 1.0f / sum;
    for (int64_t i = 0; i < len; i++)
        y[i * inner] *= r;
}

static int softmax_any(struct slim_engine *e, struct eng_node *n, int lg, struct slim_error *err)
{
    const struct eng_value *x = eng_in(e, n, 0);
    int64_t axis = x->ndim ? eng_axis(n->a.axis, x->ndim) : 0, outer, len, inner;
    float *yd;
    int rc;
    if ((rc = float_input(x, "input", err)))
        return rc;
    if (axis < 0)
        return slim_error_set(err, SLIM_EINVAL, "axis %lld for %d dims", (long long)n->a.axis,
                              x->ndim);
    if ((rc = eng_out(e, n, 0, x->type, x->ndim, x->shape, err)))
        return rc;
    if (!x->numel)
        return 0;
    yd = eng_outv(e, n, 0)->data;
    outer = eng_numel((int)axis, x->shape);
    if (e->opset < 13) {
        /* coerced to 2-D: rows of everything from axis on */
        len = outer ? x->numel / outer : 0;
        inner = 1;
    } else {
        len = x->ndim ? x->shape[axis] : 1;
        inner = eng_numel(x->ndim - (int)axis - 1, x->shape + axis + 1);
    }
    for (int64_t o = 0; o < outer; o++)
        for (int64_t j = 0; j < inner; j++)
            softmax_line((const float *)x->data + o * len * inner + j, yd + o * len * inner + j,
                         len, inner, lg);
    if (x->type == SLIM_ONNX_FLOAT16)
        eng_round_f16(yd, x->numel);
    return 0;
}

static int softmax_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    return softmax_any(e, n, 0, err);
}

static int logsoftmax_run(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    return softmax_any(e, n, 1, err);
}

const struct eng_op eng_ops_nn[] = {
    {"Gemm", 2, 3, 1, 1, gemm_compile, gemm_run},
    {"MatMul", 2, 2, 1, 1, NULL, matmul_run},
    {"Conv", 2, 3, 1, 1, window_compile, conv_run},
    {"MaxPool", 1, 1, 1, 2, window_compile, maxpool_run},
    {"AveragePool", 1, 1, 1, 1, window_compile, avgpool_run},
    {"GlobalAveragePool", 1, 1, 1, 1, NULL, gap_run},
    {"GlobalMaxPool", 1, 1, 1, 1, NULL, gmp_run},
    {"BatchNormalization", 5, 5, 1, 5, bn_compile, bn_run},
    {"Softmax", 1, 1, 1, 1, softmax_compile, softmax_run},
    {"LogSoftmax", 1, 1, 1, 1, softmax_compile, logsoftmax_run},
    {NULL, 0, 0, 0, 0, NULL, NULL},
};
