/*
 * train_ops.c - forward and backward of every op the trainer has
 * (train.h lists them), on whole batches.
 *
 * Gemm and MatMul are one sgemm forward and one per input backward
 * (dA = dY B^T, dB = A^T dY, the trans flags folded into sgemm's).
 * Conv lowers a chunk of samples at once to columns (im2col, Chellapilla
 * et al. 2006) so that one sgemm covers the chunk, not one small product
 * per sample: the forward pass is W [M, CKK] x cols [CKK, S*OHW], the
 * backward pass dW += dY [M, S*OHW] x cols^T and dcols = W^T x dY,
 * scattered back with col2im.  The columns are recomputed in the
 * backward pass rather than kept: im2col is cheap next to the product,
 * and keeping them would cost CKK*OHW floats per sample per layer.
 * MaxPool keeps the argmax of each window, Dropout its scaled mask,
 * BatchNormalization x-hat and its per-channel mean and 1/std.
 *
 * Each backward function receives the output's gradient and adds into
 * the gradient of each input that needs one (tr_grad says whether it is
 * the first writer, which then overwrites).  The integer ops (Shape,
 * Gather, Unsqueeze, Squeeze, Concat, Cast, Constant) carry the shape
 * arithmetic that exporters write for x.view(x.size(0), -1); they are
 * evaluated on every forward pass and have no gradient.
 */
#include <cblas.h>
#include <math.h>
#include <string.h>
#include "passes/engine/train_internal.h"

/* -O2 on GCC 12 leaves the element-wise loops scalar; errno is never
 * read, and with it sqrtf vectorises */
#pragma GCC optimize("O3", "no-math-errno")

static const char *const op_names[] = {
    [OP_GEMM] = "Gemm", [OP_MATMUL] = "MatMul", [OP_ADD] = "Add", [OP_RELU] = "Relu",
    [OP_LEAKY] = "LeakyRelu", [OP_SIGMOID] = "Sigmoid", [OP_TANH] = "Tanh",
    [OP_FLATTEN] = "Flatten", [OP_RESHAPE] = "Reshape", [OP_IDENTITY] = "Identity",
    [OP_CONV] = "Conv", [OP_MAXPOOL] = "MaxPool", [OP_AVGPOOL] = "AveragePool",
    [OP_GAP] = "GlobalAveragePool", [OP_BN] = "BatchNormalization", [OP_DROPOUT] = "Dropout",
    [OP_SHAPE] = "Shape", [OP_GATHER] = "Gather", [OP_UNSQUEEZE] = "Unsqueeze",
    [OP_SQUEEZE] = "Squeeze", [OP_CONCAT] = "Concat", [OP_CAST] = "Cast",
    [OP_CONSTANT] = "Constant",
};

const char *tr_op_name(int op)
{
    return op_names[op];
}

int tr_op_find(const char *name)
{
    for (size_t i = 0; i < sizeof op_names / sizeof *op_names; i++)
        if (!strcmp(op_names[i], name))
            return (int)i;
    return -1;
}

static const char *node_name(const struct tnode *n)
{
    return n->proto->name && *n->proto->name ? n->proto->name : "?";
}

static struct tv *IN(struct slim_trainer *t, const struct tnode *n, int k)
{
    return k < n->n_in && n->in[k] >= 0 ? &t->v[n->in[k]] : NULL;
}

static struct tv *OUT(struct slim_trainer *t, const struct tnode *n)
{
    return &t->v[n->out];
}

/* ---- attributes ------------------------------------------------------------ */

static int att_int(const struct tnode *n, const char *name, int64_t dflt, int64_t *out,
                   struct slim_error *err)
{
    const Onnx__AttributeProto *a = slim_onnx_attr(n->proto, name);
    *out = dflt;
    if (!a)
        return 0;
    if (!a->has_i && a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT)
        return slim_error_set(err, SLIM_EFORMAT, "node '%.60s': attribute '%s' is not an int",
                              node_name(n), name);
    *out = a->i;
    return 0;
}

static int att_float(const struct tnode *n, const char *name, float dflt, float *out,
                     struct slim_error *err)
{
    const Onnx__AttributeProto *a = slim_onnx_attr(n->proto, name);
    *out = dflt;
    if (!a)
        return 0;
    if (!a->has_f && a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT)
        return slim_error_set(err, SLIM_EFORMAT, "node '%.60s': attribute '%s' is not a float",
                              node_name(n), name);
    *out = a->f;
    return 0;
}

/* INTS into out[0..max); *count -1 when absent. */
static int att_ints(const struct tnode *n, const char *name, int64_t *out, int max, int *count,
                    struct slim_error *err)
{
    const Onnx__AttributeProto *a = slim_onnx_attr(n->proto, name);
    *count = -1;
    if (!a)
        return 0;
    if (a->n_ints > (size_t)max)
        return slim_error_set(err, SLIM_EFORMAT, "node '%.60s': attribute '%s' has %zu values "
                              "(at most %d)", node_name(n), name, a->n_ints, max);
    for (size_t i = 0; i < a->n_ints; i++)
        out[i] = a->ints[i];
    *count = (int)a->n_ints;
    return 0;
}

static int unsupported(const struct tnode *n, const char *why, struct slim_error *err)
{
    return slim_error_set(err, SLIM_EUNSUPPORTED, "operator '%s' (node '%.60s') is not "
                          "supported for training: %s", n->proto->op_type, node_name(n), why);
}

/* Conv and the pools: kernel, strides, pads, dilations, auto_pad. */
static int compile_window(struct tnode *n, int64_t kh, int64_t kw, int nsp,
                          struct slim_error *err)
{
    int64_t k[2], s[2], d[2], p[4];
    int nk, ns, nd, np, rc;
    char ap[32] = "";
    const Onnx__AttributeProto *a = slim_onnx_attr(n->proto, "auto_pad");
    if ((rc = att_ints(n, "kernel_shape", k, 2, &nk, err)) ||
        (rc = att_ints(n, "strides", s, 2, &ns, err)) ||
        (rc = att_ints(n, "dilations", d, 2, &nd, err)) ||
        (rc = att_ints(n, "pads", p, 4, &np, err)))
        return rc;
    if (nk < 0) {
        if (kh < 0)
            return slim_error_set(err, SLIM_EFORMAT, "node '%.60s': kernel_shape is missing",
                                  node_name(n));
        k[0] = kh;
        k[1] = kw;
        nk = nsp;
    }
    if (nk != nsp || (ns >= 0 && ns != nsp) || (nd >= 0 && nd != nsp) ||
        (np >= 0 && np != 2 * nsp))
        return unsupported(n, "kernel_shape, strides, dilations and pads must agree "
                           "with 1 or 2 spatial dims", err);
    if (a && a->has_s)
        snprintf(ap, sizeof ap, "%.*s", (int)a->s.len, (const char *)a->s.data);
    n->auto_pad = !strcmp(ap, "SAME_UPPER") ? 1 : !strcmp(ap, "SAME_LOWER") ? 2 : 0;
    if (*ap && n->auto_pad == 0 && strcmp(ap, "NOTSET") && strcmp(ap, "VALID"))
        return slim_error_set(err, SLIM_EFORMAT, "node '%.60s': bad auto_pad '%s'",
                              node_name(n), ap);
    n->nsp = nsp;
    /* a 1-D window is a 2-D one of height 1 */
    if (nsp == 1) {
        n->kernel[0] = 1, n->kernel[1] = k[0];
        n->stride[0] = 1, n->stride[1] = ns > 0 ? s[0] : 1;
        n->dil[0] = 1, n->dil[1] = nd > 0 ? d[0] : 1;
        n->pad[0] = 0, n->pad[2] = 0;
        n->pad[1] = np > 0 ? p[0] : 0, n->pad[3] = np > 0 ? p[1] : 0;
    } else {
        for (int i = 0; i < 2; i++) {
            n->kernel[i] = k[i];
            n->stride[i] = ns > 0 ? s[i] : 1;
            n->dil[i] = nd > 0 ? d[i] : 1;
        }
        for (int i = 0; i < 4; i++)
            n->pad[i] = np > 0 ? p[i] : 0;
    }
    if (!strcmp(ap, "VALID"))
        memset(n->pad, 0, sizeof n->pad);
    for (int i = 0; i < 2; i++)
        if (n->kernel[i] < 1 || n->stride[i] < 1 || n->dil[i] < 1)
            return slim_error_set(err, SLIM_EFORMAT, "node '%.60s': kernel, strides and "
                                  "dilations must be >= 1", node_name(n));
    for (int i = 0; i < 4; i++)
        if (n->pad[i] < 0)
            return slim_error_set(err, SLIM_EFORMAT, "node '%.60s': negative pads",
                                  node_name(n));
    return 0;
}
/* Reshape of a parameter by a shape known at compile time (the
 * attribute, or an integer initializer or Constant): the output's shape,
 * with ONNX's 0 (copy the dim, unless allowzero) and -1 (the rest).
 * Left unknown (ndim 0) when either is only known per batch. */
static void reshape_static(struct slim_trainer *t, struct tnode *n)
{
    const struct tv *x = &t->v[n->in[0]], *s = n->n_in > 1 && n->in[1] >= 0
                                                  ? &t->v[n->in[1]] : NULL;
    struct tv *y = &t->v[n->out];
    int64_t shape[SLIM_MAX_DIMS], known = 1;
    int c = s ? (int)s->numel : n->n_ints, infer = -1;
    if (x->kind != TV_PARAM || (s && (s->producer >= 0 || s->ndim != 1)) || c < 1 ||
        c > SLIM_MAX_DIMS)
        return;
    for (int d = 0; d < c; d++) {
        shape[d] = s ? s->ints[d] : n->ints[d];
        if (shape[d] == 0 && !n->allowzero) {
            if (d >= x->ndim)
                return;
            shape[d] = x->shape[d];
        }
        if (shape[d] == -1) {
            if (infer >= 0)
                return;
            infer = d;
        } else if (shape[d] < 0) {
            return;
        } else {
            known *= shape[d];
        }
    }
    if (infer >= 0) {
        if (!known || x->numel % known)
            return;
        shape[infer] = x->numel / known;
        known = x->numel;
    }
    if (known != x->numel)
        return;
    y->ndim = c;
    memcpy(y->shape, shape, (size_t)c * sizeof *shape);
    y->numel = known;
}


int tr_compile(struct slim_trainer *t, struct tnode *n, struct slim_error *err)
{
    int64_t v;
    int rc = 0, cnt;
    switch (n->op) {
    case OP_GEMM:
        if ((rc = att_float(n, "alpha", 1.0f, &n->alpha, err)) ||
            (rc = att_float(n, "beta", 1.0f, &n->beta, err)) ||
            (rc = att_int(n, "transA", 0, &v, err)))
            return rc;
        n->trans_a = v != 0;
        if ((rc = att_int(n, "transB", 0, &v, err)))
            return rc;
        n->trans_b = v != 0;
        if ((rc = tr_make_param(t, n->in[0], 0, err)) ||
            (rc = tr_make_param(t, n->in[1], 0, err)) ||
            (n->n_in > 2 && (rc = tr_make_param(t, n->in[2], 0, err))))
            return rc;
        break;
    case OP_MATMUL:
    case OP_ADD:
        if ((rc = tr_make_param(t, n->in[0], 0, err)) ||
            (rc = tr_make_param(t, n->in[1], 0, err)))
            return rc;
        break;
    case OP_LEAKY:
        if ((rc = att_float(n, "alpha", 0.01f, &n->alpha, err)))
            return rc;
        break;
    case OP_FLATTEN:
        if ((rc = att_int(n, "axis", 1, &n->axis, err)))
            return rc;
        break;
    case OP_RESHAPE:
        if ((rc = att_int(n, "allowzero", 0, &v, err)))
            return rc;
        n->allowzero = v != 0;
        if (n->n_in < 2 || n->in[1] < 0) {
            int c;
            if ((rc = att_ints(n, "shape", n->ints, TV_MAX_INTS, &c, err)))
                return rc;
            if (c < 0)
                return slim_error_set(err, SLIM_EFORMAT, "node '%.60s': Reshape without a "
                                      "shape", node_name(n));
            n->n_ints = c;
        } else if (t->v[n->in[1]].kind != TV_INT) {
            return unsupported(n, "the shape must be a small integer tensor", err);
        }
        /* a reshaped initializer is a weight like any other (a low-rank
         * Conv's factors are 2-D initializers reshaped to kernels), and
         * with a shape known now its output's shape is known now too, so
         * the Conv after it can check its kernel */
        if ((rc = tr_make_param(t, n->in[0], 0, err)))
            return rc;
        reshape_static(t, n);
        break;
    case OP_CONV: {
        struct tv *w = IN(t, n, 1);
        if (!w || w->ndim < 3 || w->ndim > 4)
            return unsupported(n, "only 1-D and 2-D convolutions with a known weight shape",
                               err);
        if ((rc = att_int(n, "group", 1, &n->group, err)))
            return rc;
        if (n->group < 1 || w->shape[0] % n->group)
            return slim_error_set(err, SLIM_EFORMAT, "node '%.60s': group %lld does not "
                                  "divide the %lld output channels", node_name(n),
                                  (long long)n->group, (long long)w->shape[0]);
        if ((rc = compile_window(n, w->ndim == 4 ? w->shape[2] : w->shape[2],
                                 w->ndim == 4 ? w->shape[3] : 1, w->ndim - 2, err)))
            return rc;
        if ((rc = tr_make_param(t, n->in[1], 0, err)) ||
            (n->n_in > 2 && (rc = tr_make_param(t, n->in[2], 0, err))))
            return rc;
        break;
    }
    case OP_MAXPOOL:
    case OP_AVGPOOL: {
        int64_t k[2];
        if ((rc = att_ints(n, "kernel_shape", k, 2, &cnt, err)))
            return rc;
        if (cnt < 1)
            return slim_error_set(err, SLIM_EFORMAT, "node '%.60s': kernel_shape is missing",
                                  node_name(n));
        if ((rc = compile_window(n, -1, -1, cnt, err)) ||
            (rc = att_int(n, "ceil_mode", 0, &v, err)))
            return rc;
        n->ceil_mode = v != 0;
        if ((rc = att_int(n, "count_include_pad", 0, &v, err)))
            return rc;
        n->count_include_pad = v != 0;
        if (n->op == OP_MAXPOOL && n->n_out > 1 && n->proto->output[1] &&
            *n->proto->output[1])
            return unsupported(n, "MaxPool's Indices output", err);
        break;
    }
    case OP_BN:
        if (n->n_in != 5)
            return slim_error_set(err, SLIM_EFORMAT, "node '%.60s': BatchNormalization takes "
                                  "5 inputs", node_name(n));
        if ((rc = att_float(n, "epsilon", 1e-5f, &n->eps, err)) ||
            (rc = att_float(n, "momentum", 0.9f, &n->momentum, err)))
            return rc;
        for (int k = 1; k < 5; k++) {
            struct tv *x = IN(t, n, k);
            if (!x || !x->init)
                return unsupported(n, "scale, bias, mean and variance must be initializers",
                                   err);
            if ((rc = tr_make_param(t, n->in[k], k >= 3, err)))
                return rc;
        }
        break;
    case OP_DROPOUT: {
        n->ratio = 0.5f;
        if (n->n_in > 1 && n->in[1] >= 0) {
            struct tv *r = IN(t, n, 1);
            if (r->kind != TV_CONST || r->numel != 1)
                return unsupported(n, "the ratio must be a constant scalar", err);
            n->ratio = r->data[0];
        } else if ((rc = att_float(n, "ratio", 0.5f, &n->ratio, err))) {
            return rc;
        }
        if (!(n->ratio >= 0.0f && n->ratio < 1.0f))
            return slim_error_set(err, SLIM_EFORMAT, "node '%.60s': Dropout ratio %g is not "
                                  "in [0, 1)", node_name(n), n->ratio);
        break;
    }
    case OP_SHAPE:
        if ((rc = att_int(n, "start", 0, &n->start, err)) ||
            (rc = att_int(n, "end", INT64_MAX, &n->end, err)))
            return rc;
        break;
    case OP_GATHER:
        if ((rc = att_int(n, "axis", 0, &n->axis, err)))
            return rc;
        if (n->axis != 0)
            return unsupported(n, "integer Gather on axis 0 only", err);
        break;
    case OP_UNSQUEEZE:
    case OP_SQUEEZE:
        if ((rc = att_ints(n, "axes", n->ints, TV_MAX_INTS, &cnt, err)))
            return rc;
        n->n_ints = cnt;
        break;
    case OP_CONCAT:
        if ((rc = att_int(n, "axis", 0, &n->axis, err)))
            return rc;
        break;
    case OP_CAST:
        if ((rc = att_int(n, "to", 0, &v, err)))
            return rc;
        if (v != SLIM_ONNX_INT64 && v != SLIM_ONNX_INT32)
            return unsupported(n, "Cast of shapes to INT64 or INT32 only", err);
        break;
    default:
        break;
    }
    return 0;
}

/* ---- Gemm, MatMul ---------------------------------------------------------- */

static int fwd_gemm(struct slim_trainer *t, struct tnode *n, struct slim_error *err)
{
    struct tv *a = IN(t, n, 0), *b = IN(t, n, 1), *c = IN(t, n, 2), *y = OUT(t, n);
    int64_t m, k, kb, nn, cm = 1, cn = 1, shape[2];
    int rc;
    if (a->ndim != 2 || b->ndim != 2)
        return slim_error_set(err, SLIM_EINVAL, "Gemm (node '%.60s'): A and B must be 2-D",
                              node_name(n));
    m = n->trans_a ? a->shape[1] : a->shape[0];
    k = n->trans_a ? a->shape[0] : a->shape[1];
    kb = n->trans_b ? b->shape[1] : b->shape[0];
    nn = n->trans_b ? b->shape[0] : b->shape[1];
    if (k != kb)
        return slim_error_set(err, SLIM_EINVAL, "Gemm (node '%.60s'): inner dims %lld and "
                              "%lld differ", node_name(n), (long long)k, (long long)kb);
    if (c) {
        if (c->ndim > 2)
            return slim_error_set(err, SLIM_EINVAL, "Gemm (node '%.60s'): C has rank %d",
                                  node_name(n), c->ndim);
        cn = c->ndim >= 1 ? c->shape[c->ndim - 1] : 1;
        cm = c->ndim == 2 ? c->shape[0] : 1;
        if ((cm != 1 && cm != m) || (cn != 1 && cn != nn))
            return slim_error_set(err, SLIM_EINVAL, "Gemm (node '%.60s'): C does not "
                                  "broadcast to [%lld, %lld]", node_name(n), (long long)m,
                                  (long long)nn);
    }
    shape[0] = m, shape[1] = nn;
    if ((rc = tr_ensure(t, y, 2, shape, err)))
        return rc;
    if (c) {
        for (int64_t i = 0; i < m; i++) {
            const float *cr = c->data + (cm == 1 ? 0 : i * cn);
            float *yr = y->data + i * nn;
            if (cn == 1)
                for (int64_t j = 0; j < nn; j++)
                    yr[j] = n->beta * cr[0];
            else
                for (int64_t j = 0; j < nn; j++)
                    yr[j] = n->beta * cr[j];
        }
    }
    if (m && nn && k)
        cblas_sgemm(CblasRowMajor, n->trans_a ? CblasTrans : CblasNoTrans,
                    n->trans_b ? CblasTrans : CblasNoTrans, (int)m, (int)nn, (int)k, n->alpha,
                    a->data, (int)a->shape[1], b->data, (int)b->shape[1], c ? 1.0f : 0.0f,
                    y->data, (int)nn);
    else if (!c)
        memset(y->data, 0, (size_t)y->numel * sizeof(float));
    return 0;
}

static int bwd_gemm(struct slim_trainer *t, struct tnode *n, struct slim_error *err)
{
    struct tv *a = IN(t, n, 0), *b = IN(t, n, 1), *c = IN(t, n, 2), *y = OUT(t, n);
    int64_t m = y->shape[0], nn = y->shape[1];
    int64_t k = n->trans_a ? a->shape[0] : a->shape[1];
    const float *dy = y->grad;
    int acc;
    if (a->needs_grad) {
        float *da = tr_grad(t, a, &acc, err);
        if (!da)
            return err->code;
        if (!n->trans_a)    /* dA [m, k] = dY [m, n] opB^T */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, n->trans_b ? CblasNoTrans : CblasTrans,
                        (int)m, (int)k, (int)nn, n->alpha, dy, (int)nn, b->data,
                        (int)b->shape[1], acc ? 1.0f : 0.0f, da, (int)k);
        else                /* dA [k, m] = opB [k, n] dY^T */
            cblas_sgemm(CblasRowMajor, n->trans_b ? CblasTrans : CblasNoTrans, CblasTrans,
                        (int)k, (int)m, (int)nn, n->alpha, b->data, (int)b->shape[1], dy,
                        (int)nn, acc ? 1.0f : 0.0f, da, (int)m);
    }
    if (b->needs_grad) {
        float *db = tr_grad(t, b, &acc, err);
        if (!db)
            return err->code;
        if (!n->trans_b)    /* dB [k, n] = opA^T [k, m] dY */
            cblas_sgemm(CblasRowMajor, n->trans_a ? CblasNoTrans : CblasTrans, CblasNoTrans,
                        (int)k, (int)nn, (int)m, n->alpha, a->data, (int)a->shape[1], dy,
                        (int)nn, acc ? 1.0f : 0.0f, db, (int)nn);
        else                /* dB [n, k] = dY^T [n, m] opA */
            cblas_sgemm(CblasRowMajor, CblasTrans, n->trans_a ? CblasTrans : CblasNoTrans,
                        (int)nn, (int)k, (int)m, n->alpha, dy, (int)nn, a->data,
                        (int)a->shape[1], acc ? 1.0f : 0.0f, db, (int)k);
    }
    if (c && c->needs_grad) {
        int64_t cn = c->ndim >= 1 ? c->shape[c->ndim - 1] : 1;
        int64_t cm = c->ndim == 2 ? c->shape[0] : 1;
        float *dc = tr_grad(t, c, &acc, err);
        if (!dc)
            return err->code;
        if (!acc)
            memset(dc, 0, (size_t)c->numel * sizeof(float));
        for (int64_t i = 0; i < m; i++) {
            const float *dr = dy + i * nn;
            float *cr = dc + (cm == 1 ? 0 : i * cn);
            if (cn == 1) {
                float s = 0.0f;
                for (int64_t j = 0; j < nn; j++)
                    s += dr[j];
                cr[0] += n->beta * s;
            } else {
                for (int64_t j = 0; j < nn; j++)
                    cr[j] += n->beta * dr[j];
            }
        }
    }
    return 0;
}

/* MatMul: A [..., m, k] x B [k, n] (any leading dims of A as rows), or
 * A [b..., m, k] x B [b..., k, n] with the same leading dims. */
static int matmul_dims(struct slim_trainer *t, struct tnode *n, int64_t *batch, int64_t *m,
                       int64_t *k, int64_t *nn, struct slim_error *err)
{
    struct tv *a = IN(t, n, 0), *b = IN(t, n, 1);
    if (a->ndim < 2 || b->ndim < 2)
        return slim_error_set(err, SLIM_EINVAL, "MatMul (node '%.60s'): 1-D operands are not "
                              "supported for training", node_name(n));
    *k = a->shape[a->ndim - 1];
    *nn = b->shape[b->ndim - 1];
    if (b->shape[b->ndim - 2] != *k)
        return slim_error_set(err, SLIM_EINVAL, "MatMul (node '%.60s'): inner dims %lld and "
                              "%lld differ", node_name(n), (long long)*k,
                              (long long)b->shape[b->ndim - 2]);
    if (b->ndim == 2) {
        *batch = 1;
        *m = *k ? a->numel / *k : 0;
        return 0;
    }
    if (a->ndim != b->ndim)
        return slim_error_set(err, SLIM_EINVAL, "MatMul (node '%.60s'): broadcast batch "
                              "dims are not supported for training", node_name(n));
    *batch = 1;
    for (int i = 0; i < a->ndim - 2; i++) {
        if (a->shape[i] != b->shape[i])
            return slim_error_set(err, SLIM_EINVAL, "MatMul (node '%.60s'): batch dims "
                                  "differ", node_name(n));
        *batch *= a->shape[i];
    }
    *m = a->shape[a->ndim - 2];
    return 0;
}

static int fwd_matmul(struct slim_trainer *t, struct tnode *n, struct slim_error *err)
{
    struct tv *a = IN(t, n, 0), *b = IN(t, n, 1), *y = OUT(t, n);
    int64_t batch, m, k, nn, shape[SLIM_MAX_DIMS];
    int rc;
    if ((rc = matmul_dims(t, n, &batch, &m, &k, &nn, err)))
        return rc;
    memcpy(shape, a->shape, sizeof shape);
    shape[a->ndim - 1] = nn;
    if ((rc = tr_ensure(t, y, a->ndim, shape, err)))
        return rc;
    for (int64_t i = 0; i < batch; i++)
        if (m && nn)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)nn, (int)k,
                        1.0f, a->data + i * m * k, (int)k, b->data + (b->ndim > 2 ? i * k * nn : 0),
                        (int)nn, 0.0f, y->data + i * m * nn, (int)nn);
    return 0;
}

static int bwd_matmul(struct slim_trainer *t, struct tnode *n, struct slim_error *err)
{
    struct tv *a = IN(t, n, 0), *b = IN(t, n, 1), *y = OUT(t, n);
    int64_t batch, m, k, nn;
    int rc, acc;
    if ((rc = matmul_dims(t, n, &batch, &m, &k, &nn, err)))
        return rc;
    if (a->needs_grad) {
        float *da = tr_grad(t, a, &acc, err);
        if (!da)
            return err->code;
        for (int64_t i = 0; i < batch; i++)     /* dA = dY B^T */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)k, (int)nn, 1.0f,
                        y->grad + i * m * nn, (int)nn, b->data + (b->ndim > 2 ? i * k * nn : 0),
                        (int)nn, acc ? 1.0f : 0.0f, da + i * m * k, (int)k);
    }
    if (b->needs_grad) {
        float *db = tr_grad(t, b, &acc, err);
        if (!db)
            return err->code;
        for (int64_t i = 0; i < batch; i++) {   /* dB = A^T dY */
            int shared = b->ndim == 2;
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)k, (int)nn, (int)m, 1.0f,
                        a->data + i * m * k, (int)k, y->grad + i * m * nn, (int)nn,
                        (acc || (shared && i > 0)) ? 1.0f : 0.0f,
                        db + (shared ? 0 : i * k * nn), (int)nn);
        }
    }
    return 0;
}

/* ---- Add, with numpy broadcasting ------------------------------------------ */

/* Output dims merged where both inputs broadcast alike: d[0..r), and
 * each input's stride per merged dim (0 where it broadcasts). */
struct bcast {
    int r;
    int64_t d[SLIM_MAX_DIMS], sa[SLIM_MAX_DIMS], sb[SLIM_MAX_DIMS], n;
};

static void input_strides(const struct tv *x, int r, const int64_t *ys, int64_t *st)
{
    int64_t s = 1;
    for (int i = r - 1; i >= 0; i--) {
        int xi = i - (r - x->ndim);
        int64_t d = xi >= 0 ? x->shape[xi] : 1;
        st[i] = (d == 1 && ys[i] != 1) ? 0 : s;
        s *= d;
    }
}

static int bc_plan(const struct tv *a, const struct tv *b, struct bcast *p, int *ndim,
                   int64_t *ys)
{
    int r = a->ndim > b->ndim ? a->ndim : b->ndim;
    int64_t sa[SLIM_MAX_DIMS], sb[SLIM_MAX_DIMS];
    for (int i = 0; i < r; i++) {
        int ai = i - (r - a->ndim), bi = i - (r - b->ndim);
        int64_t da = ai >= 0 ? a->shape[ai] : 1, db = bi >= 0 ? b->shape[bi] : 1;
        if (da != db && da != 1 && db != 1)
            return -1;
        ys[i] = da == 1 ? db : da;
    }
    *ndim = r;
    input_strides(a, r, ys, sa);
    input_strides(b, r, ys, sb);
    p->r = 0;
    p->n = 1;
    for (int i = 0; i < r; i++) {
        p->n *= ys[i];
        if (ys[i] == 1)
            continue;
        if (p->r && (p->sa[p->r - 1] == 0) == (sa[i] == 0) &&
            (p->sb[p->r - 1] == 0) == (sb[i] == 0)) {
            p->d[p->r - 1] *= ys[i];
            p->sa[p->r - 1] = sa[i];
            p->sb[p->r - 1] = sb[i];
            continue;
        }
        p->d[p->r] = ys[i];
        p->sa[p->r] = sa[i];
        p->sb[p->r] = sb[i];
        p->r++;
    }
    if (!p->r) {
        p->r = 1;
        p->d[0] = 1;
        p->sa[0] = p->sb[0] = 1;
    }
    return 0;
}

/* Runs the body once per inner run of p's output: oy its offset in the
 * output, oa/ob in the inputs, inner_ its length. */
#define BC_WALK(p, ...)                                                               \
    do {                                                                              \
        int64_t inner_ = (p)->d[(p)->r - 1], outer_ = (p)->n / inner_;                \
        int64_t idx_[SLIM_MAX_DIMS] = {0}, oa = 0, ob = 0;                            \
        for (int64_t o = 0; o < outer_; o++) {                                        \
            int64_t oy = o * inner_;                                                  \
            __VA_ARGS__;                                                              \
            for (int k_ = (p)->r - 2; k_ >= 0; k_--) {                                \
                idx_[k_]++;                                                           \
                oa += (p)->sa[k_];                                                    \
                ob += (p)->sb[k_];                                                    \
                if (idx_[k_] < (p)->d[k_])                                            \
                    break;                                                            \
                oa -= (p)->sa[k_] * (p)->d[k_];                                       \
                ob -= (p)->sb[k_] * (p)->d[k_];                                       \
                idx_[k_] = 0;                                                         \
            }                                                                         \
        }                                                                             \
    } while (0)

static int fwd_add(struct slim_trainer *t, struct tnode *n, struct slim_error *err)
{
    struct tv *a = IN(t, n, 0), *b = IN(t, n, 1), *y = OUT(t, n);
    struct bcast p;
    int64_t ys[SLIM_MAX_DIMS];
    int r, rc;
    char s1[64], s2[64];
    if (bc_plan(a, b, &p, &r, ys)) {
        snprintf(s1, sizeof s1, "%d-D", a->ndim);
        snprintf(s2, sizeof s2, "%d-D", b->ndim);
        return slim_error_set(err, SLIM_EINVAL, "Add (node '%.60s'): shapes (%s, %s) do not "
                              "broadcast", node_name(n), s1, s2);
    }
    if ((rc = tr_ensure(t, y, r, ys, err)))
        return rc;
    {
        const float *A = a->data, *B = b->data;
        float *Y = y->data;
        int64_t sai = p.sa[p.r - 1], sbi = p.sb[p.r - 1];
        BC_WALK(&p, {
            float *yy = Y + oy;
            const float *aa = A + oa, *bb = B + ob;
            if (sai && sbi)
                for (int64_t j = 0; j < inner_; j++)
                    yy[j] = aa[j] + bb[j];
            else if (sai)
                for (int64_t j = 0; j < inner_; j++)
                    yy[j] = aa[j] + bb[0];
            else if (sbi)
                for (int64_t j = 0; j < inner_; j++)
                    yy[j] = aa[0] + bb[j];
            else
                for (int64_t j = 0; j < inner_; j++)
                    yy[j] = aa[0] + bb[0];
        });
    }
    return 0;
}

static int bwd_add(struct slim_trainer *t, struct tnode *n, struct slim_error *err)
{
    struct tv *y = OUT(t, n);
    for (int which = 0; which < 2; which++) {
        struct tv *x = IN(t, n, which);
        struct bcast p;
        int64_t ys[SLIM_MAX_DIMS];
        int r, acc;
        float *dx;
        if (!x->needs_grad)
            continue;
        if (!(dx = tr_grad(t, x, &acc, err)))
            return err->code;
        if (x->numel == y->numel) {
            if (acc)
                for (int64_t i = 0; i < y->numel; i++)
                    dx[i] += y->grad[i];
            else
                memcpy(dx, y->grad, (size_t)y->numel * sizeof(float));
            continue;
        }
        if (!acc)
            memset(dx, 0, (size_t)x->numel * sizeof(float));
        bc_plan(IN(t, n, 0), IN(t, n, 1), &p, &r, ys);
        {
            const float *dy = y->grad;
            int64_t sxi = which ? p.sb[p.r - 1] : p.sa[p.r - 1];
            BC_WALK(&p, {
                float *dd = dx + (which ? ob : oa);
                const float *g = dy + oy;
                if (sxi) {
                    for (int64_t j = 0; j < inner_; j++)
                        dd[j] += g[j];
                } else {
                    float s = 0.0f;
                    for (int64_t j = 0; j < inner_; j++)
                        s += g[j];
                    dd[0] += s;
                }
            });
        }
    }
    return 0;
}

/* ---- element-wise --------------------------------------------------------- */

static int fwd_unary(struct slim_trainer *t, struct tnode *n, struct slim_error *err)
{
    struct tv *x = IN(t, n, 0), *y = OUT(t, n);
    int rc;
    if ((rc = tr_ensure(t, y, x->ndim, x->shape, err)))
        return rc;
    const float *X = x->data;
    float *Y = y->data;
    int64_t len = x->numel;
    float al = n->alpha;
    switch (n->op) {
    case OP_RELU:
        for (int64_t i = 0; i < len; i++)
            Y[i] = X[i] > 0.0f ? X[i] : 0.0f;
        break;
    case OP_LEAKY:
        for (int64_t i = 0; i < len; i++)
            Y[i] = X[i] >= 0.0f ? X[i] : al * X[i];
        break;
    case OP_SIGMOID:
        for (int64_t i = 0; i < len; i++)
            Y[i] = 1.0f / (1.0f + expf(-X[i]));
        break;
    case OP_TANH:
        for (int64_t i = 0; i < len; i++)
            Y[i] = tanhf(X[i]);
        break;
    }
    return 0;
}

static int bwd_unary(struct slim_trainer *t, struct tnode *n, struct slim_error *err)
{
    struct tv *x = IN(t, n, 0), *y = OUT(t, n);
    int acc;
    float *dx;
    if (!x->needs_grad)
        return 0;
    if (!(dx = tr_grad(t, x, &acc, err)))
        return err->code;
    const float *X = x->data, *Y = y->data, *dy = y->grad;
    int64_t len = x->numel;
    float al = n->alpha;
    /* the first writer sets, a later one adds: one pass either way */
#define UNARY_BWD(EXPR)                                   \
    do {                                                  \
        if (acc)                                          \
            for (int64_t i = 0; i < len; i++)             \
                dx[i] += (EXPR);                          \
        else                                              \
            for (int64_t i = 0; i < len; i++)             \
                dx[i] = (EXPR);                           \
    } while (0)
    switch (n->op) {
    case OP_RELU:
        UNARY_BWD(Y[i] > 0.0f ? dy[i] : 0.0f);
        break;
    case OP_LEAKY:
        UNARY_BWD(X[i] >= 0.0f ? dy[i] : al * dy[i]);
        break;
    case OP_SIGMOID:
        UNARY_BWD(dy[i] * Y[i] * (1.0f - Y[i]));
        break;
    case OP_TANH:
        UNARY_BWD(dy[i] * (1.0f - Y[i] * Y[i]));
        break;
    }
#undef UNARY_BWD
    return 0;
}

/* ---- views: Flatten, Reshape, Identity, Dropout in evaluation ------------- */

static void view(struct tv *y, const struct tv *x, int ndim, const int64_t *shape)
{
    y->ndim = ndim;
    memcpy(y->shape, shape, (size_t)ndim * sizeof *shape);
    y->numel = x->numel;
    y->data = x->data;
}

static int bwd_view(struct slim_trainer *t, struct tnode *n, struct slim_error *err)
{
    struct tv *x = IN(t, n, 0), *y = OUT(t, n);
    int acc;
    float *dx;
    if (!x->needs_grad)
        return 0;
    if (!(dx = tr_grad(t, x, &acc, err)))
        return err->code;
    if (acc)
        for (int64_t i = 0; i < x->numel; i++)
            dx[i] += y->grad[i];
    else
        memcpy(dx, y->grad, (size_t)x->numel * sizeof(float));
    return 0;
}

static int fwd_flatten(struct slim_trainer *t, struct tnode *n, struct slim_error *err)
{
    struct tv *x = IN(t, n, 0);
    int64_t axis = n->axis < 0 ? n->axis + x->ndim : n->axis, shape[2] = {1, 1};
    if (axis < 0 || axis > x->ndim)
        return slim_error_set(err, SLIM_EINVAL, "Flatten (node '%.60s'): axis %lld out of "
                              "range for rank %d", node_name(n), (long long)n->axis, x->ndim);
    for (int i = 0; i < x->ndim; i++)
        shape[i < axis ? 0 : 1] *= x->shape[i];
    view(OUT(t, n), x, 2, shape);
    return 0;
}

static int fwd_reshape(struct slim_trainer *t, struct tnode *n, struct slim_error *err)
{
    struct tv *x = IN(t, n, 0), *s = IN(t, n, 1);
    const int64_t *want = s ? s->ints : n->ints;
    int nd = s ? (int)s->numel : n->n_ints, infer = -1;
    int64_t shape[SLIM_MAX_DIMS], prod = 1;
    if (nd > SLIM_MAX_DIMS || (s && s->ndim != 1))
        return slim_error_set(err, SLIM_EINVAL, "Reshape (node '%.60s'): bad shape",
                              node_name(n));
    for (int i = 0; i < nd; i++) {
        shape[i] = want[i];
        if (want[i] == 0 && !n->allowzero) {
            if (i >= x->ndim)
                return slim_error_set(err, SLIM_EINVAL, "Reshape (node '%.60s'): 0 at dim %d "
                                      "past the input's rank", node_name(n), i);
            shape[i] = x->shape[i];
        } else if (want[i] == -1) {
            if (infer >= 0)
                return slim_error_set(err, SLIM_EINVAL, "Reshape (node '%.60s'): two -1 dims",
                                      node_name(n));
            infer = i;
            continue;
        } else if (want[i] < 0) {
            return slim_error_set(err, SLIM_EINVAL, "Reshape (node '%.60s'): dim %lld",
                                  node_name(n), (long long)want[i]);
        }
        prod *= shape[i];
    }
    if (infer >= 0) {
        if (!prod || x->numel % prod)
            return slim_error_set(err, SLIM_EINVAL, "Reshape (node '%.60s'): %lld elements do "
                                  "not fit the shape", node_name(n), (long long)x->numel);
        shape[infer] = x->numel / prod;
        prod *= shape[infer];
    }
    if (prod != x->numel)
        return slim_error_set(err, SLIM_EINVAL, "Reshape (node '%.60s'): %lld elements do not "
                              "fit the shape (%lld)", node_name(n), (long long)x->numel,
                              (long long)prod);
    view(OUT(t, n), x, nd, shape);
    return 0;
}

/* ---- Dropout ----------------------------------------------------------------- */

static int fwd_dropout(struct slim_trainer *t, struct tnode *n, struct slim_error *err)
{
    struct tv *x = IN(t, n, 0), *y = OUT(t, n);
    float *mask, scale;
    int rc;
    if (!t->training || n->ratio == 0.0f) {
        view(y, x, x->ndim, x->shape);
        return 0;
    }
    if ((rc = tr_ensure(t, y, x->ndim, x->shape, err)))
        return rc;
    if (!(mask = tr_scratch(&n->save, &n->save_cap, (size_t)x->numel * sizeof(float))))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    scale = 1.0f / (1.0f - n->ratio);
    /* 24-bit uniforms: u < ratio drops */
    uint32_t thr = (uint32_t)((double)n->ratio * 16777216.0);
    for (int64_t i = 0; i < x->numel; i++) {
        uint32_t u = (uint32_t)(tr_rand(t) >> 40);
        mask[i] = u < thr ? 0.0f : scale;
        y->data[i] = x->data[i] * mask[i];
    }
    return 0;
}

static int bwd_dropout(struct slim_trainer *t, struct tnode *n, struct slim_error *err)
{
    struct tv *x = IN(t, n, 0), *y = OUT(t, n);
    const float *mask = n->save;
    int acc;
    float *dx;
    if (!t->training || n->ratio == 0.0f)
        return bwd_view(t, n, err);
    if (!x->needs_grad)
        return 0;
    if (!(dx = tr_grad(t, x, &acc, err)))
        return err->code;
    for (int64_t i = 0; i < x->numel; i++)
        dx[i] = (acc ? dx[i] : 0.0f) + y->grad[i] * mask[i];
    return 0;
}

/* ---- Conv: im2col + sgemm --------------------------------------------------- */

struct geom {
    int64_t c, h, w, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr;
};

static int64_t out_size(int64_t in, int64_t k, int64_t s, int64_t d, int64_t p0, int64_t p1,
                        int ceil_mode)
{
    int64_t ek = d * (k - 1) + 1, num = in + p0 + p1 - ek, o;
    if (num < 0)
        return -1;
    o = ceil_mode ? (num + s - 1) / s + 1 : num / s + 1;
    if (ceil_mode && (o - 1) * s >= in + p0)
        o--;
    return o;
}

/* Geometry of n over x ([N, C, H, W] or [N, C, L]) into *g. */
static int geometry(const struct tnode *n, const struct tv *x, struct geom *g,
                    struct slim_error *err)
{
    if (x->ndim != 2 + n->nsp)
        return slim_error_set(err, SLIM_EINVAL, "%s (node '%.60s'): input has rank %d, "
                              "expected %d", tr_op_name(n->op), node_name(n), x->ndim,
                              2 + n->nsp);
    g->c = x->shape[1];
    g->h = n->nsp == 2 ? x->shape[2] : 1;
    g->w = x->shape[x->ndim - 1];
    g->kh = n->kernel[0], g->kw = n->kernel[1];
    g->sh = n->stride[0], g->sw = n->stride[1];
    g->dh = n->dil[0], g->dw = n->dil[1];
    g->pt = n->pad[0], g->pl = n->pad[1], g->pb = n->pad[2], g->pr = n->pad[3];
    if (n->auto_pad) {
        int64_t in[2] = {g->h, g->w}, k[2] = {g->kh, g->kw}, s[2] = {g->sh, g->sw},
                d[2] = {g->dh, g->dw}, p0[2], p1[2];
        for (int i = 0; i < 2; i++) {
            int64_t o = (in[i] + s[i] - 1) / s[i];
            int64_t tot = (o - 1) * s[i] + d[i] * (k[i] - 1) + 1 - in[i];
            if (tot < 0)
                tot = 0;
            p0[i] = n->auto_pad == 1 ? tot / 2 : tot - tot / 2;
            p1[i] = tot - p0[i];
        }
        g->pt = p0[0], g->pl = p0[1], g->pb = p1[0], g->pr = p1[1];
    }
    g->oh = out_size(g->h, g->kh, g->sh, g->dh, g->pt, g->pb, n->ceil_mode);
    g->ow = out_size(g->w, g->kw, g->sw, g->dw, g->pl, g->pr, n->ceil_mode);
    if (g->oh < 1 || g->ow < 1)
        return slim_error_set(err, SLIM_EINVAL, "%s (node '%.60s'): the window is larger "
                              "than the padded input", tr_op_name(n->op), node_name(n));
    return 0;
}

/* The range of output positions o with 0 <= o*s + off < len: [*lo, *hi). */
static void valid_range(int64_t off, int64_t s, int64_t len, int64_t n_out, int64_t *lo,
                        int64_t *hi)
{
    int64_t a = off >= 0 ? 0 : (-off + s - 1) / s;
    int64_t b = len - off <= 0 ? 0 : (len - off - 1) / s + 1;
    if (a > n_out)
        a = n_out;
    if (b > n_out)
        b = n_out;
    if (b < a)
        b = a;
    *lo = a, *hi = b;
}

/* x [c, h, w] -> col [c*kh*kw, oh*ow] at stride ld (rows) */
static void im2col(const float *x, const struct geom *g, int64_t c, float *col, int64_t ld)
{
    int64_t ohw = g->oh * g->ow;
    for (int64_t ci = 0; ci < c; ci++)
        for (int64_t i = 0; i < g->kh; i++)
            for (int64_t j = 0; j < g->kw; j++) {
                float *row = col + ((ci * g->kh + i) * g->kw + j) * ld;
                int64_t wlo, whi, offw = j * g->dw - g->pl;
                valid_range(offw, g->sw, g->w, g->ow, &wlo, &whi);
                for (int64_t oh = 0; oh < g->oh; oh++) {
                    int64_t ih = oh * g->sh - g->pt + i * g->dh;
                    float *r = row + oh * g->ow;
                    if (ih < 0 || ih >= g->h) {
                        memset(r, 0, (size_t)g->ow * sizeof(float));
                        continue;
                    }
                    const float *xr = x + (ci * g->h + ih) * g->w + offw;
                    for (int64_t ow = 0; ow < wlo; ow++)
                        r[ow] = 0.0f;
                    if (g->sw == 1)
                        memcpy(r + wlo, xr + wlo, (size_t)(whi - wlo) * sizeof(float));
                    else
                        for (int64_t ow = wlo; ow < whi; ow++)
                            r[ow] = xr[ow * g->sw];
                    for (int64_t ow = whi; ow < g->ow; ow++)
                        r[ow] = 0.0f;
                }
            }
    (void)ohw;
}

/* col [c*kh*kw, oh*ow] at stride ld, added into dx [c, h, w] */
static void col2im(const float *col, const struct geom *g, int64_t c, float *dx, int64_t ld)
{
    for (int64_t ci = 0; ci < c; ci++)
        for (int64_t i = 0; i < g->kh; i++)
            for (int64_t j = 0; j < g->kw; j++) {
                const float *row = col + ((ci * g->kh + i) * g->kw + j) * ld;
                int64_t wlo, whi, offw = j * g->dw - g->pl;
                valid_range(offw, g->sw, g->w, g->ow, &wlo, &whi);
                for (int64_t oh = 0; oh < g->oh; oh++) {
                    int64_t ih = oh * g->sh - g->pt + i * g->dh;
                    const float *r = row + oh * g->ow;
                    if (ih < 0 || ih >= g->h)
                        continue;
                    float *xr = dx + (ci * g->h + ih) * g->w + offw;
                    for (int64_t ow = wlo; ow < whi; ow++)
                        xr[ow * g->sw] += r[ow];
                }
            }
}

/* Columns kept under this many floats: a chunk of samples per sgemm. */
#define CONV_COL_FLOATS ((int64_t)4 << 20)

struct convp {
    struct geom g;
    int64_t n, m, cg, mg, ckk, ohw, chunk;
};

static int conv_plan(struct slim_trainer *t, struct tnode *n, struct convp *p,
                     struct slim_error *err)
{
    struct tv *x = IN(t, n, 0), *w = IN(t, n, 1), *b = IN(t, n, 2);
    int rc;
    if ((rc = geometry(n, x, &p->g, err)))
        return rc;
    p->n = x->shape[0];
    p->m = w->shape[0];
    if (p->g.c != w->shape[1] * n->group)
        return slim_error_set(err, SLIM_EINVAL, "Conv (node '%.60s'): %lld input channels, "
                              "weight expects %lld x group %lld", node_name(n),
                              (long long)p->g.c, (long long)w->shape[1], (long long)n->group);
    if (w->ndim == 4 && (w->shape[2] != p->g.kh || w->shape[3] != p->g.kw))
        return slim_error_set(err, SLIM_EINVAL, "Conv (node '%.60s'): kernel_shape differs "
                              "from the weight's", node_name(n));
    if (b && b->numel != p->m)
        return slim_error_set(err, SLIM_EINVAL, "Conv (node '%.60s'): bias has %lld values "
                              "for %lld channels", node_name(n), (long long)b->numel,
                              (long long)p->m);
    p->cg = w->shape[1];
    p->mg = p->m / n->group;
    p->ckk = p->cg * p->g.kh * p->g.kw;
    p->ohw = p->g.oh * p->g.ow;
    p->chunk = CONV_COL_FLOATS / (p->ckk * p->ohw > 0 ? p->ckk * p->ohw : 1);
    if (p->chunk < 1)
        p->chunk = 1;
    if (p->chunk > p->n)
        p->chunk = p->n;
    if (!tr_scratch((void **)&t->col, &t->col_cap,
                    (size_t)(p->ckk * p->ohw * (p->chunk ? p->chunk : 1)) * sizeof(float)) ||
        !tr_scratch((void **)&t->tmp, &t->tmp_cap,
                    (size_t)(p->mg * p->ohw * (p->chunk ? p->chunk : 1)) * sizeof(float)))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory (Conv columns)");
    return 0;
}

static int fwd_conv(struct slim_trainer *t, struct tnode *n, struct slim_error *err)
{
    struct tv *x = IN(t, n, 0), *w = IN(t, n, 1), *b = IN(t, n, 2), *y = OUT(t, n);
    struct convp p;
    int64_t shape[4];
    int rc;
    if ((rc = conv_plan(t, n, &p, err)))
        return rc;
    shape[0] = p.n, shape[1] = p.m;
    if (n->nsp == 2)
        shape[2] = p.g.oh, shape[3] = p.g.ow;
    else
        shape[2] = p.g.ow;
    if ((rc = tr_ensure(t, y, 2 + n->nsp, shape, err)))
        return rc;
    int64_t hw = p.g.h * p.g.w;
    for (int64_t n0 = 0; n0 < p.n; n0 += p.chunk) {
        int64_t s = p.n - n0 < p.chunk ? p.n - n0 : p.chunk, ld = s * p.ohw;
        for (int64_t gi = 0; gi < n->group; gi++) {
            for (int64_t si = 0; si < s; si++)
                im2col(x->data + ((n0 + si) * p.g.c + gi * p.cg) * hw, &p.g, p.cg,
                       t->col + si * p.ohw, ld);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)p.mg, (int)ld,
                        (int)p.ckk, 1.0f, w->data + gi * p.mg * p.ckk, (int)p.ckk, t->col,
                        (int)ld, 0.0f, t->tmp, (int)ld);
            for (int64_t si = 0; si < s; si++)
                for (int64_t mi = 0; mi < p.mg; mi++) {
                    int64_t ch = gi * p.mg + mi;
                    float bias = b ? b->data[ch] : 0.0f;
                    const float *src = t->tmp + mi * ld + si * p.ohw;
                    float *dst = y->data + ((n0 + si) * p.m + ch) * p.ohw;
                    for (int64_t q = 0; q < p.ohw; q++)
                        dst[q] = src[q] + bias;
                }
        }
    }
    return 0;
}

static int bwd_conv(struct slim_trainer *t, struct tnode *n, struct slim_error *err)
{
    struct tv *x = IN(t, n, 0), *w = IN(t, n, 1), *b = IN(t, n, 2), *y = OUT(t, n);
    struct convp p;
    float *dx = NULL, *dw = NULL;
    int rc, acc;
    if ((rc = conv_plan(t, n, &p, err)))
        return rc;
    if (b && b->needs_grad) {
        float *db = tr_grad(t, b, &acc, err);
        if (!db)
            return err->code;
        if (!acc)
            memset(db, 0, (size_t)p.m * sizeof(float));
        for (int64_t i = 0; i < p.n; i++)
            for (int64_t ch = 0; ch < p.m; ch++) {
                const float *g = y->grad + (i * p.m + ch) * p.ohw;
                float s = 0.0f;
                for (int64_t q = 0; q < p.ohw; q++)
                    s += g[q];
                db[ch] += s;
            }
    }
    if (w->needs_grad) {
        if (!(dw = tr_grad(t, w, &acc, err)))
            return err->code;
        if (!acc)
            memset(dw, 0, (size_t)w->numel * sizeof(float));
    }
    if (x->needs_grad) {
        if (!(dx = tr_grad(t, x, &acc, err)))
            return err->code;
        if (!acc)
            memset(dx, 0, (size_t)x->numel * sizeof(float));
    }
    if (!dw && !dx)
        return 0;
    int64_t hw = p.g.h * p.g.w;
    for (int64_t n0 = 0; n0 < p.n; n0 += p.chunk) {
        int64_t s = p.n - n0 < p.chunk ? p.n - n0 : p.chunk, ld = s * p.ohw;
        for (int64_t gi = 0; gi < n->group; gi++) {
            for (int64_t si = 0; si < s; si++)
                for (int64_t mi = 0; mi < p.mg; mi++)
                    memcpy(t->tmp + mi * ld + si * p.ohw,
                           y->grad + ((n0 + si) * p.m + gi * p.mg + mi) * p.ohw,
                           (size_t)p.ohw * sizeof(float));
            if (dw) {       /* dW [mg, ckk] += dY [mg, ld] cols^T */
                for (int64_t si = 0; si < s; si++)
                    im2col(x->data + ((n0 + si) * p.g.c + gi * p.cg) * hw, &p.g, p.cg,
                           t->col + si * p.ohw, ld);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)p.mg, (int)p.ckk,
                            (int)ld, 1.0f, t->tmp, (int)ld, t->col, (int)ld, 1.0f,
                            dw + gi * p.mg * p.ckk, (int)p.ckk);
            }
            if (dx) {       /* cols [ckk, ld] = W^T dY, then col2im */
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)p.ckk, (int)ld,
                            (int)p.mg, 1.0f, w->data + gi * p.mg * p.ckk, (int)p.ckk, t->tmp,
                            (int)ld, 0.0f, t->col, (int)ld);
                for (int64_t si = 0; si < s; si++)
                    col2im(t->col + si * p.ohw, &p.g, p.cg,
                           dx + ((n0 + si) * p.g.c + gi * p.cg) * hw, ld);
            }
        }
    }
    return 0;
}

/* ---- pools ---------------------------------------------------------------- */

static int pool_out(struct slim_trainer *t, struct tnode *n, struct geom *g,
                    struct slim_error *err)
{
    struct tv *x = IN(t, n, 0);
    int64_t shape[4];
    int rc;
    if ((rc = geometry(n, x, g, err)))
        return rc;
    shape[0] = x->shape[0], shape[1] = x->shape[1];
    if (n->nsp == 2)
        shape[2] = g->oh, shape[3] = g->ow;
    else
        shape[2] = g->ow;
    return tr_ensure(t, OUT(t, n), x->ndim, shape, err);
}

static int fwd_maxpool(struct slim_trainer *t, struct tnode *n, struct slim_error *err)
{
    struct tv *x = IN(t, n, 0), *y;
    struct geom g;
    int32_t *arg;
    int rc;
    if ((rc = pool_out(t, n, &g, err)))
        return rc;
    y = OUT(t, n);
    if (g.h * g.w > INT32_MAX)
        return slim_error_set(err, SLIM_EINVAL, "MaxPool (node '%.60s'): plane too large",
                              node_name(n));
    if (!(arg = tr_scratch(&n->save, &n->save_cap, (size_t)y->numel * sizeof(int32_t))))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    int64_t planes = x->shape[0] * x->shape[1], hw = g.h * g.w, ohw = g.oh * g.ow;
    /* every window inside the plane (no pads, dilation 1, no ceil
     * overhang): no bounds to test */
    int inside = !g.pt && !g.pl && g.dh == 1 && g.dw == 1 &&
                 (g.oh - 1) * g.sh + g.kh <= g.h && (g.ow - 1) * g.sw + g.kw <= g.w;
    for (int64_t pl = 0; pl < planes && inside; pl++) {
        const float *xp = x->data + pl * hw;
        float *yp = y->data + pl * ohw;
        int32_t *ap = arg + pl * ohw;
        for (int64_t oh = 0; oh < g.oh; oh++)
            for (int64_t ow = 0; ow < g.ow; ow++) {
                int32_t base = (int32_t)(oh * g.sh * g.w + ow * g.sw), am = base;
                float best = xp[base];
                for (int64_t i = 0; i < g.kh; i++)
                    for (int64_t j = 0; j < g.kw; j++) {
                        int32_t k = base + (int32_t)(i * g.w + j);
                        if (xp[k] > best) {
                            best = xp[k];
                            am = k;
                        }
                    }
                ap[oh * g.ow + ow] = am;
                yp[oh * g.ow + ow] = best;
            }
    }
    for (int64_t pl = 0; pl < planes && !inside; pl++) {
        const float *xp = x->data + pl * hw;
        float *yp = y->data + pl * ohw;
        int32_t *ap = arg + pl * ohw;
        for (int64_t oh = 0; oh < g.oh; oh++)
            for (int64_t ow = 0; ow < g.ow; ow++) {
                float best = -INFINITY;
                int32_t bi = -1;
                for (int64_t i = 0; i < g.kh; i++) {
                    int64_t ih = oh * g.sh - g.pt + i * g.dh;
                    if (ih < 0 || ih >= g.h)
                        continue;
                    for (int64_t j = 0; j < g.kw; j++) {
                        int64_t iw = ow * g.sw - g.pl + j * g.dw;
                        if (iw < 0 || iw >= g.w)
                            continue;
                        float v = xp[ih * g.w + iw];
                        if (bi < 0 || v > best || v != v) {
                            best = v;
                            bi = (int32_t)(ih * g.w + iw);
                        }
                    }
                }
                yp[oh * g.ow + ow] = bi < 0 ? 0.0f : best;
                ap[oh * g.ow + ow] = bi;
            }
    }
    return 0;
}

static int bwd_maxpool(struct slim_trainer *t, struct tnode *n, struct slim_error *err)
{
    struct tv *x = IN(t, n, 0), *y = OUT(t, n);
    const int32_t *arg = n->save;
    int acc;
    float *dx;
    if (!x->needs_grad)
        return 0;
    if (!(dx = tr_grad(t, x, &acc, err)))
        return err->code;
    if (!acc)
        memset(dx, 0, (size_t)x->numel * sizeof(float));
    int64_t planes = x->shape[0] * x->shape[1], hw = x->numel / (planes ? planes : 1);
    int64_t ohw = y->numel / (planes ? planes : 1);
    for (int64_t pl = 0; pl < planes; pl++)
        for (int64_t q = 0; q < ohw; q++) {
            int32_t a = arg[pl * ohw + q];
            if (a >= 0)
                dx[pl * hw + a] += y->grad[pl * ohw + q];
        }
    return 0;
}

/* The divisor and the in-bounds window [h0, h1) x [w0, w1) of output (oh, ow). */
static float avg_window(const struct tnode *n, const struct geom *g, int64_t oh, int64_t ow,
                        int64_t *h0, int64_t *h1, int64_t *w0, int64_t *w1)
{
    int64_t hs = oh * g->sh - g->pt, ws = ow * g->sw - g->pl;
    int64_t he = hs + (g->kh - 1) * g->dh + 1, we = ws + (g->kw - 1) * g->dw + 1;
    int64_t cnt = 0;
    /* dilation 1 is what AveragePool has (before opset 19); step by dh anyway */
    int64_t ph0 = hs, ph1 = he < g->h + g->pb ? he : g->h + g->pb;
    int64_t pw0 = ws, pw1 = we < g->w + g->pr ? we : g->w + g->pr;
    *h0 = hs < 0 ? hs + ((-hs + g->dh - 1) / g->dh) * g->dh : hs;
    *h1 = he < g->h ? he : g->h;
    *w0 = ws < 0 ? ws + ((-ws + g->dw - 1) / g->dw) * g->dw : ws;
    *w1 = we < g->w ? we : g->w;
    if (n->count_include_pad) {
        int64_t ch = ph1 > ph0 ? (ph1 - ph0 + g->dh - 1) / g->dh : 0;
        int64_t cw = pw1 > pw0 ? (pw1 - pw0 + g->dw - 1) / g->dw : 0;
        cnt = ch * cw;
    } else {
        int64_t ch = *h1 > *h0 ? (*h1 - *h0 + g->dh - 1) / g->dh : 0;
        int64_t cw = *w1 > *w0 ? (*w1 - *w0 + g->dw - 1) / g->dw : 0;
        cnt = ch * cw;
    }
    return cnt > 0 ? 1.0f / (float)cnt : 0.0f;
}

static int fwd_avgpool(struct slim_trainer *t, struct tnode *n, struct slim_error *err)
{
    struct tv *x = IN(t, n, 0), *y;
    struct geom g;
    int rc;
    if ((rc = pool_out(t, n, &g, err)))
        return rc;
    y = OUT(t, n);
    int64_t planes = x->shape[0] * x->shape[1], hw = g.h * g.w, ohw = g.oh * g.ow;
    for (int64_t pl = 0; pl < planes; pl++) {
        const float *xp = x->data + pl * hw;
        float *yp = y->data + pl * ohw;
        for (int64_t oh = 0; oh < g.oh; oh++)
            for (int64_t ow = 0; ow < g.ow; ow++) {
                int64_t h0, h1, w0, w1;
                float inv = avg_window(n, &g, oh, ow, &h0, &h1, &w0, &w1), s = 0.0f;
                for (int64_t ih = h0; ih < h1; ih += g.dh)
                    for (int64_t iw = w0; iw < w1; iw += g.dw)
                        s += xp[ih * g.w + iw];
                yp[oh * g.ow + ow] = s * inv;
            }
    }
    return 0;
}

static int bwd_avgpool(struct slim_trainer *t, struct tnode *n, struct slim_error *err)
{
    struct tv *x = IN(t, n, 0), *y = OUT(t, n);
    struct geom g;
    int rc, acc;
    float *dx;
    if (!x->needs_grad)
        return 0;
    if ((rc = geometry(n, x, &g, err)))
        return rc;
    if (!(dx = tr_grad(t, x, &acc, err)))
        return err->code;
    if (!acc)
        memset(dx, 0, (size_t)x->numel * sizeof(float));
    int64_t planes = x->shape[0] * x->shape[1], hw = g.h * g.w, ohw = g.oh * g.ow;
    for (int64_t pl = 0; pl < planes; pl++) {
        float *dp = dx + pl * hw;
        const float *gp = y->grad + pl * ohw;
        for (int64_t oh = 0; oh < g.oh; oh++)
            for (int64_t ow = 0; ow < g.ow; ow++) {
                int64_t h0, h1, w0, w1;
                float inv = avg_window(n, &g, oh, ow, &h0, &h1, &w0, &w1);
                float v = gp[oh * g.ow + ow] * inv;
                for (int64_t ih = h0; ih < h1; ih += g.dh)
                    for (int64_t iw = w0; iw < w1; iw += g.dw)
                        dp[ih * g.w + iw] += v;
            }
    }
    return 0;
}

static int fwd_gap(struct slim_trainer *t, struct tnode *n, struct slim_error *err)
{
    struct tv *x = IN(t, n, 0), *y;
    int64_t shape[SLIM_MAX_DIMS], planes, len;
    int rc;
    if (x->ndim < 3)
        return slim_error_set(err, SLIM_EINVAL, "GlobalAveragePool (node '%.60s'): input has "
                              "rank %d", node_name(n), x->ndim);
    memcpy(shape, x->shape, sizeof shape);
    for (int i = 2; i < x->ndim; i++)
        shape[i] = 1;
    if ((rc = tr_ensure(t, OUT(t, n), x->ndim, shape, err)))
        return rc;
    y = OUT(t, n);
    planes = x->shape[0] * x->shape[1];
    len = planes ? x->numel / planes : 0;
    for (int64_t pl = 0; pl < planes; pl++) {
        const float *xp = x->data + pl * len;
        float s = 0.0f;
        for (int64_t i = 0; i < len; i++)
            s += xp[i];
        y->data[pl] = len ? s / (float)len : 0.0f;
    }
    return 0;
}

static int bwd_gap(struct slim_trainer *t, struct tnode *n, struct slim_error *err)
{
    struct tv *x = IN(t, n, 0), *y = OUT(t, n);
    int acc;
    float *dx;
    if (!x->needs_grad)
        return 0;
    if (!(dx = tr_grad(t, x, &acc, err)))
        return err->code;
    int64_t planes = x->shape[0] * x->shape[1], len = planes ? x->numel / planes : 0;
    for (int64_t pl = 0; pl < planes; pl++) {
        float g = y->grad[pl] / (float)len;
        float *dp = dx + pl * len;
        for (int64_t i = 0; i < len; i++)
            dp[i] = (acc ? dp[i] : 0.0f) + g;
    }
    return 0;
}

/* ---- BatchNormalization ------------------------------------------------------ */

static int fwd_bn(struct slim_trainer *t, struct tnode *n, struct slim_error *err)
{
    struct tv *x = IN(t, n, 0), *sc = IN(t, n, 1), *bi = IN(t, n, 2), *rm = IN(t, n, 3),
              *rv = IN(t, n, 4), *y = OUT(t, n);
    int64_t c, len, nb;
    int rc;
    if (x->ndim < 2)
        return slim_error_set(err, SLIM_EINVAL, "BatchNormalization (node '%.60s'): input "
                              "has rank %d", node_name(n), x->ndim);
    nb = x->shape[0];
    c = x->shape[1];
    len = nb && c ? x->numel / (nb * c) : 0;
    if (sc->numel != c || bi->numel != c || rm->numel != c || rv->numel != c)
        return slim_error_set(err, SLIM_EINVAL, "BatchNormalization (node '%.60s'): %lld "
                              "channels, parameters of another size", node_name(n),
                              (long long)c);
    if ((rc = tr_ensure(t, y, x->ndim, x->shape, err)))
        return rc;
    if (!t->training) {
        for (int64_t ch = 0; ch < c; ch++) {
            float inv = 1.0f / sqrtf(rv->data[ch] + n->eps);
            float a = sc->data[ch] * inv, b = bi->data[ch] - rm->data[ch] * a;
            for (int64_t i = 0; i < nb; i++) {
                const float *xp = x->data + (i * c + ch) * len;
                float *yp = y->data + (i * c + ch) * len;
                for (int64_t q = 0; q < len; q++)
                    yp[q] = xp[q] * a + b;
            }
        }
        return 0;
    }
    float *xh = tr_scratch(&n->save, &n->save_cap, (size_t)x->numel * sizeof(float));
    if (!xh || !tr_scratch((void **)&n->stat, &n->stat_cap, (size_t)(2 * c) * sizeof(float)))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    double cnt = (double)(nb * len);
    struct tparam *pm = &t->p[rm->param], *pv = &t->p[rv->param];
    for (int64_t ch = 0; ch < c; ch++) {
        double s = 0.0, ss = 0.0;
        for (int64_t i = 0; i < nb; i++) {
            const float *xp = x->data + (i * c + ch) * len;
            for (int64_t q = 0; q < len; q++)
                s += xp[q];
        }
        double mean = cnt > 0 ? s / cnt : 0.0;
        for (int64_t i = 0; i < nb; i++) {
            const float *xp = x->data + (i * c + ch) * len;
            for (int64_t q = 0; q < len; q++) {
                double d = xp[q] - mean;
                ss += d * d;
            }
        }
        double var = cnt > 0 ? ss / cnt : 0.0;
        float inv = (float)(1.0 / sqrt(var + n->eps)), fm = (float)mean;
        n->stat[ch] = fm;
        n->stat[c + ch] = inv;
        for (int64_t i = 0; i < nb; i++) {
            const float *xp = x->data + (i * c + ch) * len;
            float *hp = xh + (i * c + ch) * len, *yp = y->data + (i * c + ch) * len;
            for (int64_t q = 0; q < len; q++) {
                hp[q] = (xp[q] - fm) * inv;
                yp[q] = hp[q] * sc->data[ch] + bi->data[ch];
            }
        }
        /* running statistics as torch keeps them: the unbiased variance */
        pm->w[ch] = n->momentum * pm->w[ch] + (1.0f - n->momentum) * fm;
        pv->w[ch] = n->momentum * pv->w[ch] +
                    (1.0f - n->momentum) * (float)(cnt > 1 ? ss / (cnt - 1) : var);
    }
    return 0;
}

static int bwd_bn(struct slim_trainer *t, struct tnode *n, struct slim_error *err)
{
    struct tv *x = IN(t, n, 0), *sc = IN(t, n, 1), *bi = IN(t, n, 2), *y = OUT(t, n);
    int64_t nb = x->shape[0], c = x->shape[1], len = nb && c ? x->numel / (nb * c) : 0;
    const float *xh = n->save;
    float *dx = NULL, *dsc = NULL, *dbi = NULL;
    int ax = 0, as = 0, ab = 0;
    if (x->needs_grad && !(dx = tr_grad(t, x, &ax, err)))
        return err->code;
    if (sc->needs_grad && !(dsc = tr_grad(t, sc, &as, err)))
        return err->code;
    if (bi->needs_grad && !(dbi = tr_grad(t, bi, &ab, err)))
        return err->code;
    float cnt = (float)(nb * len);
    for (int64_t ch = 0; ch < c; ch++) {
        double sdy = 0.0, sdyx = 0.0;
        for (int64_t i = 0; i < nb; i++) {
            const float *g = y->grad + (i * c + ch) * len, *hp = xh + (i * c + ch) * len;
            for (int64_t q = 0; q < len; q++) {
                sdy += g[q];
                sdyx += g[q] * hp[q];
            }
        }
        if (dsc)
            dsc[ch] = (as ? dsc[ch] : 0.0f) + (float)sdyx;
        if (dbi)
            dbi[ch] = (ab ? dbi[ch] : 0.0f) + (float)sdy;
        if (!dx)
            continue;
        float k = sc->data[ch] * n->stat[c + ch] / cnt, a = (float)sdy, b = (float)sdyx;
        for (int64_t i = 0; i < nb; i++) {
            const float *g = y->grad + (i * c + ch) * len, *hp = xh + (i * c + ch) * len;
            float *dp = dx + (i * c + ch) * len;
            for (int64_t q = 0; q < len; q++)
                dp[q] = (ax ? dp[q] : 0.0f) + k * (cnt * g[q] - a - hp[q] * b);
        }
    }
    return 0;
}

/* ---- integer shape arithmetic -------------------------------------------------- */

static int set_ints(struct tv *y, int ndim, const int64_t *shape, const int64_t *v, int64_t n,
                    struct slim_error *err)
{
    if (n > TV_MAX_INTS || ndim > SLIM_MAX_DIMS)
        return slim_error_set(err, SLIM_EINVAL, "'%.60s': integer tensor too large for "
                              "shape arithmetic", y->name);
    y->ndim = ndim;
    memcpy(y->shape, shape, (size_t)ndim * sizeof *shape);
    y->numel = n;
    memmove(y->ints, v, (size_t)n * sizeof *v);
    return 0;
}

static int fwd_int(struct slim_trainer *t, struct tnode *n, struct slim_error *err)
{
    struct tv *x = IN(t, n, 0), *y = OUT(t, n);
    int64_t out[TV_MAX_INTS], shape[SLIM_MAX_DIMS];
    switch (n->op) {
    case OP_SHAPE: {
        int64_t r = x->ndim, s = n->start < 0 ? n->start + r : n->start;
        int64_t e = n->end == INT64_MAX ? r : n->end < 0 ? n->end + r : n->end;
        s = s < 0 ? 0 : s > r ? r : s;
        e = e < 0 ? 0 : e > r ? r : e;
        if (e < s)
            e = s;
        shape[0] = e - s;
        return set_ints(y, 1, shape, x->shape + s, e - s, err);
    }
    case OP_GATHER: {
        struct tv *ix = IN(t, n, 1);
        if (x->kind != TV_INT || ix->kind != TV_INT || x->ndim != 1)
            return unsupported(n, "integer Gather of a 1-D tensor only", err);
        for (int64_t i = 0; i < ix->numel; i++) {
            int64_t k = ix->ints[i] < 0 ? ix->ints[i] + x->numel : ix->ints[i];
            if (k < 0 || k >= x->numel)
                return slim_error_set(err, SLIM_EINVAL, "Gather (node '%.60s'): index %lld "
                                      "out of range", node_name(n), (long long)ix->ints[i]);
            out[i] = x->ints[k];
        }
        return set_ints(y, ix->ndim, ix->shape, out, ix->numel, err);
    }
    case OP_UNSQUEEZE:
    case OP_SQUEEZE: {
        const int64_t *axes = n->ints;
        int na = n->n_ints, r = x->ndim, k = 0;
        int keep[SLIM_MAX_DIMS + TV_MAX_INTS] = {0};
        if (na < 0) {
            struct tv *a = IN(t, n, 1);
            if (a && a->kind != TV_INT)
                return unsupported(n, "axes must be constant", err);
            axes = a ? a->ints : NULL;
            na = a ? (int)a->numel : 0;
        }
        if (n->op == OP_UNSQUEEZE) {
            int ro = r + na, xi = 0;
            if (ro > SLIM_MAX_DIMS)
                return slim_error_set(err, SLIM_EINVAL, "Unsqueeze (node '%.60s'): rank too "
                                      "large", node_name(n));
            for (int i = 0; i < na; i++) {
                int64_t a = axes[i] < 0 ? axes[i] + ro : axes[i];
                if (a < 0 || a >= ro)
                    return slim_error_set(err, SLIM_EINVAL, "Unsqueeze (node '%.60s'): axis "
                                          "out of range", node_name(n));
                keep[a] = 1;
            }
            for (int i = 0; i < ro; i++)
                shape[i] = keep[i] ? 1 : x->shape[xi++];
            return set_ints(y, ro, shape, x->ints, x->numel, err);
        }
        for (int i = 0; i < na; i++) {
            int64_t a = axes[i] < 0 ? axes[i] + r : axes[i];
            if (a < 0 || a >= r || x->shape[a] != 1)
                return slim_error_set(err, SLIM_EINVAL, "Squeeze (node '%.60s'): bad axis",
                                      node_name(n));
            keep[a] = 1;
        }
        for (int i = 0; i < r; i++)
            if (na ? !keep[i] : x->shape[i] != 1)
                shape[k++] = x->shape[i];
        return set_ints(y, k, shape, x->ints, x->numel, err);
    }
    case OP_CONCAT: {
        int64_t len = 0;
        for (int i = 0; i < n->n_in; i++) {
            struct tv *a = IN(t, n, i);
            if (!a)
                continue;
            if (a->kind != TV_INT || a->ndim != 1)
                return unsupported(n, "Concat of 1-D integer tensors only", err);
            if (len + a->numel > TV_MAX_INTS)
                return slim_error_set(err, SLIM_EINVAL, "Concat (node '%.60s'): too many "
                                      "values", node_name(n));
            memcpy(out + len, a->ints, (size_t)a->numel * sizeof *out);
            len += a->numel;
        }
        shape[0] = len;
        return set_ints(y, 1, shape, out, len, err);
    }
    case OP_CAST:
        if (x->kind != TV_INT)
            return unsupported(n, "Cast of shapes only", err);
        return set_ints(y, x->ndim, x->shape, x->ints, x->numel, err);
    default:
        return 0;
    }
}

/* ---- dispatch --------------------------------------------------------------- */

int tr_forward(struct slim_trainer *t, struct tnode *n, struct slim_error *err)
{
    switch (n->op) {
    case OP_GEMM: return fwd_gemm(t, n, err);
    case OP_MATMUL: return fwd_matmul(t, n, err);
    case OP_ADD: return fwd_add(t, n, err);
    case OP_RELU:
    case OP_LEAKY:
    case OP_SIGMOID:
    case OP_TANH: return fwd_unary(t, n, err);
    case OP_FLATTEN: return fwd_flatten(t, n, err);
    case OP_RESHAPE: return fwd_reshape(t, n, err);
    case OP_IDENTITY: view(OUT(t, n), IN(t, n, 0), IN(t, n, 0)->ndim, IN(t, n, 0)->shape);
        return 0;
    case OP_CONV: return fwd_conv(t, n, err);
    case OP_MAXPOOL: return fwd_maxpool(t, n, err);
    case OP_AVGPOOL: return fwd_avgpool(t, n, err);
    case OP_GAP: return fwd_gap(t, n, err);
    case OP_BN: return fwd_bn(t, n, err);
    case OP_DROPOUT: return fwd_dropout(t, n, err);
    case OP_CONSTANT: return 0;
    default: return fwd_int(t, n, err);
    }
}

int tr_backward(struct slim_trainer *t, struct tnode *n, struct slim_error *err)
{
    switch (n->op) {
    case OP_GEMM: return bwd_gemm(t, n, err);
    case OP_MATMUL: return bwd_matmul(t, n, err);
    case OP_ADD: return bwd_add(t, n, err);
    case OP_RELU:
    case OP_LEAKY:
    case OP_SIGMOID:
    case OP_TANH: return bwd_unary(t, n, err);
    case OP_FLATTEN:
    case OP_RESHAPE:
    case OP_IDENTITY: return bwd_view(t, n, err);
    case OP_CONV: return bwd_conv(t, n, err);
    case OP_MAXPOOL: return bwd_maxpool(t, n, err);
    case OP_AVGPOOL: return bwd_avgpool(t, n, err);
    case OP_GAP: return bwd_gap(t, n, err);
    case OP_BN: return bwd_bn(t, n, err);
    case OP_DROPOUT: return bwd_dropout(t, n, err);
    default: return 0;
    }
}
