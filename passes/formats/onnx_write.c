/*
 * onnx_write.c - ONNX models out: the compressed artifact of an ONNX job,
 * a graph that ONNX Runtime runs unchanged, with the same inputs and
 * outputs as the original.
 *
 * The pipeline hands over what it would write as safetensors (the stored
 * tensors of every original initializer, in a spill file) and the
 * "slimd.tensors" entries that say how each compressed weight decodes.
 * Here every compressed weight W becomes initializers plus a few nodes,
 * placed at the front of the graph, whose output is a tensor named W
 * with the decoded values, so that every node that used W is untouched:
 *
 *   int8      W_quantized (INT8) -> DequantizeLinear(scale, zero point,
 *             axis 0 per channel) -> W.  Before opset 13 (no per-axis
 *             DequantizeLinear): Cast, Sub, Mul.
 *   int4      opset >= 21 and 2-D: UINT4 W_quantized, blocked
 *             DequantizeLinear (axis 1, block_size) -> W.  Otherwise (the
 *             documented fallback, docs/artifact-format.md): the packed
 *             bytes (two codes per byte, 0.5 byte a weight) expanded by a
 *             Gather from a 256-row table of nibbles, then (code - zero
 *             point) * scale per group with Sub and Mul over a [rows,
 *             groups, group_size] view.
 *   ternary,  packed 2/1-bit codes expanded by a Gather from a 256-row
 *   binary    table of {0, +1, -1} / {-1, +1}, times the row's scale.
 *   cluster   UINT8 indices (or 4-bit packed ones, expanded as above) ->
 *             Cast -> Gather(codebook) -> W.
 *   fp16/bf16 FLOAT16/BFLOAT16 initializer -> Cast(to FLOAT) -> W.
 *   pruned    dense: the initializer itself; with "output": {"sparse":
 *             true}: a sparse_initializer (values and INT64 indices).
 *   lowrank   W ~ U V: a Gemm, MatMul or (group 1) Conv that uses W is
 *             replaced by two nodes in sequence (x V^T then U^T; a Conv
 *             by a Conv with V and a 1x1 Conv with U); any other use gets
 *             W = MatMul(U, V) back.
 *
 * ONNX Runtime folds the decode nodes of constant inputs once when it
 * loads the model, so they cost nothing per inference there.
 *
 * The ModelProto is the original with its graph's node, initializer,
 * sparse_initializer and input lists replaced (everything else shared,
 * not copied), and packed by protobuf-c straight into the artifact
 * writer: weight bytes are appended by pointer from the spill mapping,
 * never copied into a second buffer.  Models whose input kept its
 * weights in external data are written the same way: the .onnx and one
 * "<name>.data" file (in a tar for the daemon, beside the file for the
 * CLI).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include "passes/formats/onnx.h"
#include "passes/formats/source.h"
#include "passes/formats/writer.h"

/* ---- an arena for the messages this file makes ------------------------ */

struct arena {
    void **p;
    size_t n, cap;
    int oom;
};

/* memcpy for arrays that may be empty: protobuf-c leaves an empty
 * repeated field's pointer NULL, and memcpy from NULL is undefined even
 * for 0 bytes (compilers may drop a later NULL check because of it). */
static void copy(void *dst, const void *src, size_t n)
{
    if (n)
        memcpy(dst, src, n);
}

static void *arena_alloc(struct arena *a, size_t n)
{
    void *p;
    if (a->n == a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 256;
        void **g = slim_realloc(a->p, cap * sizeof *g);
        if (!g) {
            a->oom = 1;
            return NULL;
        }
        a->p = g;
        a->cap = cap;
    }
    if (!(p = slim_aligned_alloc(n ? n : 1))) {
        a->oom = 1;
        return NULL;
    }
    memset(p, 0, n ? n : 1);
    a->p[a->n++] = p;
    return p;
}

static void arena_release(struct arena *a)
{
    for (size_t i = 0; i < a->n; i++)
        slim_aligned_free(a->p[i]);
    slim_free(a->p);
    memset(a, 0, sizeof *a);
}

static char *astr(struct arena *a, const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = arena_alloc(a, n);
    if (p)
        memcpy(p, s, n);
    return p;
}

/* ---- a growing array of message pointers ------------------------------ */

struct plist {
    void **v;
    size_t n, cap;
};

static int plist_push(struct plist *l, void *p)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        void **g = slim_realloc(l->v, cap * sizeof *g);
        if (!g)
            return -1;
        l->v = g;
        l->cap = cap;
    }
    l->v[l->n++] = p;
    return 0;
}

/* ---- the rewrite -------------------------------------------------------- */

struct wctx {
    struct slim_onnx *m;
    struct arena a;
    struct plist pre;        /* decode nodes: they read initializers only */
    struct plist body;       /* the original's nodes, low-rank consumers split */
    struct plist *cur;       /* where node_add puts a node */
    struct plist inits;
    struct plist sparse;
    json_t *names;           /* every value name in use */
    json_t *stored;          /* stored tensor name -> index */
    const struct slim_tensor *st;
    size_t n_st;
    json_t *entries;
    int64_t opset;
    int seq;
    struct {                 /* code tables and shared constants made so far */
        int bits, ttype;
        const void *values;
        const char *name;
    } tables[16];
    int n_tables;
    const char *bit16;       /* the 16x4 table of bits (mask_bits) */
};

/* A value name not used in the graph yet, based on base; arena-owned. */
static char *fresh(struct wctx *c, const char *base)
{
    char buf[600];
    snprintf(buf, sizeof buf, "%.500s", base);
    for (int k = 1; json_object_get(c->names, buf); k++)
        snprintf(buf, sizeof buf, "%.500s_%d", base, k);
    json_object_set_new(c->names, buf, json_true());
    return astr(&c->a, buf);
}

static Onnx__TensorProto *tensor_new(struct wctx *c, const char *name, int type, int ndim,
                                     const int64_t *dims, const void *data, size_t nbytes)
{
    Onnx__TensorProto *t = arena_alloc(&c->a, sizeof *t);
    int64_t *d = arena_alloc(&c->a, (size_t)(ndim ? ndim : 1) * sizeof *d);
    if (!t || !d)
        return NULL;
    onnx__tensor_proto__init(t);
    copy(d, dims, (size_t)ndim * sizeof *d);
    t->n_dims = (size_t)ndim;
    t->dims = d;
    t->has_data_type = 1;
    t->data_type = type;
    t->name = astr(&c->a, name);
    t->has_raw_data = 1;
    t->raw_data.data = (uint8_t *)data;
    t->raw_data.len = nbytes;
    return t;
}

/* Adds an initializer (a fresh name from base) and returns its name. */
static const char *init_add(struct wctx *c, const char *base, int type, int ndim,
                            const int64_t *dims, const void *data, size_t nbytes)
{
    char *name = fresh(c, base);
    Onnx__TensorProto *t = name ? tensor_new(c, name, type, ndim, dims, data, nbytes) : NULL;
    if (!t || plist_push(&c->inits, t)) {
        c->a.oom = 1;
        return NULL;
    }
    return name;
}

/* Small constants (shapes, slice bounds, scalars) made for the graph. */
static const char *const_i64(struct wctx *c, const char *base, const int64_t *v, int n)
{
    int64_t *d = arena_alloc(&c->a, (size_t)(n ? n : 1) * sizeof *d);
    int64_t dims[1] = {n};
    if (!d)
        return NULL;
    copy(d, v, (size_t)n * sizeof *d);
    return init_add(c, base, SLIM_ONNX_INT64, 1, dims, d, (size_t)n * sizeof *d);
}

static const char *const_f32(struct wctx *c, const char *base, float v)
{
    float *d = arena_alloc(&c->a, sizeof *d);
    if (!d)
        return NULL;
    *d = v;
    return init_add(c, base, SLIM_ONNX_FLOAT, 0, NULL, d, sizeof *d);
}

static Onnx__AttributeProto *attr_new(struct wctx *c, Onnx__NodeProto *n, const char *name)
{
    Onnx__AttributeProto *a = arena_alloc(&c->a, sizeof *a), **g;
    if (!a)
        return NULL;
    onnx__attribute_proto__init(a);
    a->name = astr(&c->a, name);
    g = arena_alloc(&c->a, (n->n_attribute + 1) * sizeof *g);
    if (!g)
        return NULL;
    copy(g, n->attribute, n->n_attribute * sizeof *g);
    g[n->n_attribute++] = a;
    n->attribute = g;
    return a;
}

static void attr_int(struct wctx *c, Onnx__NodeProto *n, const char *name, int64_t v)
{
    Onnx__AttributeProto *a = attr_new(c, n, name);
    if (!a)
        return;
    a->has_type = 1;
    a->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT;
    a->has_i = 1;
    a->i = v;
}

/* A node op(ins) -> one output; outname NULL: a fresh name from base.
 * Returns the output's name. */
static const char *node_add(struct wctx *c, const char *op, const char *base,
                            const char *outname, int n_in, const char *const *ins,
                            Onnx__NodeProto **out)
{
    Onnx__NodeProto *n = arena_alloc(&c->a, sizeof *n);
    char **in = arena_alloc(&c->a, (size_t)(n_in ? n_in : 1) * sizeof *in);
    char **o = arena_alloc(&c->a, sizeof *o);
    char nm[600];
    if (!n || !in || !o)
        return NULL;
    onnx__node_proto__init(n);
    for (int i = 0; i < n_in; i++)
        if (!ins[i] || !(in[i] = astr(&c->a, ins[i])))
            return NULL;
    n->n_input = (size_t)n_in;
    n->input = in;
    /* a decode node's value is read once, by the next decode node: a
     * short name ("d_17") and no node name keep the graph's bytes small
     * next to a sparse artifact's (62 nodes of a 3-layer MLP were 5 KB
     * with names) */
    o[0] = outname ? astr(&c->a, outname) : fresh(c, c->cur == &c->pre ? "d" : base);
    if (!o[0])
        return NULL;
    n->n_output = 1;
    n->output = o;
    n->op_type = astr(&c->a, op);
    if (c->cur != &c->pre) {
        snprintf(nm, sizeof nm, "slimd/%.400s/%s%d", base, op, c->seq++);
        n->name = astr(&c->a, nm);
    }
    if (plist_push(c->cur, n)) {
        c->a.oom = 1;
        return NULL;
    }
    if (out)
        *out = n;
    return o[0];
}

static const char *node2(struct wctx *c, const char *op, const char *base, const char *outname,
                         const char *x, const char *y)
{
    return node_add(c, op, base, outname, 2, (const char *const[]){x, y}, NULL);
}

static const char *cast(struct wctx *c, const char *base, const char *outname, const char *x,
                        int to)
{
    Onnx__NodeProto *n;
    const char *o = node_add(c, "Cast", base, outname, 1, (const char *const[]){x}, &n);
    if (o)
        attr_int(c, n, "to", to);
    return o;
}

static const char *reshape(struct wctx *c, const char *base, const char *outname,
                           const char *x, const int64_t *shape, int ndim)
{
    const char *s = const_i64(c, "slimd_shape", shape, ndim);
    return s ? node2(c, "Reshape", base, outname, x, s) : NULL;
}

/* x[:, :n] of a 2-D x (Slice with inputs: opset 10 and later). */
static const char *slice_cols(struct wctx *c, const char *base, const char *x, int64_t n)
{
    int64_t z = 0, one = 1;
    const char *st = const_i64(c, "slimd_zero", &z, 1), *en = const_i64(c, "slimd_end", &n, 1);
    const char *ax = const_i64(c, "slimd_axis", &one, 1);
    if (!st || !en || !ax)
        return NULL;
    return node_add(c, "Slice", base, NULL, 4, (const char *const[]){x, st, en, ax}, NULL);
}

/* The stored tensor `name`, or NULL. */
static const struct slim_tensor *stored(struct wctx *c, const char *name)
{
    json_t *i = json_object_get(c->stored, name);
    return i ? &c->st[json_integer_value(i)] : NULL;
}

/* The stored tensor named by entry e's key (e.g. "scale"), or its k-th. */
static const struct slim_tensor *entry_tensor(struct wctx *c, json_t *e, const char *key, int k)
{
    const char *name = key ? json_string_value(json_object_get(e, key)) : NULL;
    if (!name)
        name = json_string_value(json_array_get(json_object_get(e, "tensors"), (size_t)k));
    return name ? stored(c, name) : NULL;
}

/* The initializer of a 256-row table of the codes of `bits` bits in
 * each byte value (least significant first), of ONNX type ttype: the
 * codes themselves, or values[code] when values is given.  One table per
 * (bits, type, values) in the whole graph: every tensor that expands
 * codes of that kind shares it.  Returns its name, or NULL (no memory). */
static const char *code_table(struct wctx *c, int bits, int ttype, const float *values)
{
    int per = 8 / bits;
    int64_t tdims[2] = {256, per};
    size_t es = ttype == SLIM_ONNX_FLOAT ? 4 : 1;
    void *tab;
    const char *name;
    for (int k = 0; k < c->n_tables; k++)
        if (c->tables[k].bits == bits && c->tables[k].ttype == ttype &&
            c->tables[k].values == values)
            return c->tables[k].name;
    if (c->n_tables == (int)(sizeof c->tables / sizeof c->tables[0]) ||
        !(tab = arena_alloc(&c->a, 256 * (size_t)per * es)))
        return NULL;
    for (int b = 0; b < 256; b++)
        for (int j = 0; j < per; j++) {
            int code = (b >> (j * bits)) & ((1 << bits) - 1);
            if (ttype == SLIM_ONNX_FLOAT)
                ((float *)tab)[b * per + j] = values ? values[code] : (float)code;
            else
                ((uint8_t *)tab)[b * per + j] = (uint8_t)code;
        }
    if (!(name = init_add(c, "slimd_code_table", ttype, 2, tdims, tab, 256 * (size_t)per * es)))
        return NULL;
    c->tables[c->n_tables].bits = bits;
    c->tables[c->n_tables].ttype = ttype;
    c->tables[c->n_tables].values = values;
    c->tables[c->n_tables++].name = name;
    return name;
}

/* Codes of `bits` bits packed in P [rows, rb] (row by row, least
 * significant first), expanded through table t (code_table: [256, 8 /
 * bits]) into [rows, cols] (cols <= rb * 8 / bits). */
static const char *expand_codes(struct wctx *c, const char *base, const char *packed,
                                int64_t rows, int64_t rb, int64_t cols, int bits, const char *t)
{
    int per = 8 / bits;
    int64_t shape[2] = {rows, rb * per};
    const char *idx = t ? cast(c, base, NULL, packed, SLIM_ONNX_INT32) : NULL;
    const char *g = idx ? node2(c, "Gather", base, NULL, t, idx) : NULL;
    const char *r = g ? reshape(c, base, NULL, g, shape, 2) : NULL;
    if (r && rb * per != cols)
        r = slice_cols(c, base, r, cols);
    return r;
}

static int64_t e_int(json_t *e, const char *key, int64_t dflt)
{
    json_t *v = json_object_get(e, key);
    return json_is_integer(v) ? json_integer_value(v) : dflt;
}

/* Shape of entry e (the original's dims), rows = dims[0], cols = rest. */
static int entry_shape(json_t *e, int64_t *dims, int *ndim, int64_t *rows, int64_t *cols)
{
    json_t *s = json_object_get(e, "shape"), *v;
    size_t i;
    int64_t n = 1;
    *ndim = 0;
    if (!json_is_array(s) || json_array_size(s) > SLIM_MAX_DIMS)
        return -1;
    json_array_foreach(s, i, v) {
        dims[i] = json_integer_value(v);
        n *= dims[i];
    }
    *ndim = (int)json_array_size(s);
    *rows = *ndim ? dims[0] : 1;
    *cols = *rows ? n / *rows : 0;
    return 0;
}

static int decode(struct wctx *c, json_t *e, const char *out, struct slim_error *err);

/* int8: DequantizeLinear, per channel on axis 0 (opset 13+). */
static int decode_int8(struct wctx *c, json_t *e, const char *out, const int64_t *dims, int ndim,
                       int64_t rows, struct slim_error *err)
{
    const struct slim_tensor *q = entry_tensor(c, e, NULL, 0);
    const struct slim_tensor *sc = entry_tensor(c, e, "scale", -1);
    const struct slim_tensor *zp = json_is_string(json_object_get(e, "zero_point"))
                                       ? entry_tensor(c, e, "zero_point", -1) : NULL;
    int channel = sc && slim_tensor_numel(sc) > 1;
    int64_t sdims[1] = {rows};
    const char *qn, *sn, *zn = NULL;
    char base[600];
    if (!q || !sc)
        return slim_error_set(err, SLIM_EINTERNAL, "'%s': int8 entry without its tensors", out);
    snprintf(base, sizeof base, "%s_quantized", out);
    qn = init_add(c, base, SLIM_ONNX_INT8, ndim, dims, q->data, q->nbytes);
    snprintf(base, sizeof base, "%s_scale", out);
    sn = init_add(c, base, SLIM_ONNX_FLOAT, channel ? 1 : 0, sdims, sc->data, sc->nbytes);
    if (zp) {
        snprintf(base, sizeof base, "%s_zero_point", out);
        zn = init_add(c, base, SLIM_ONNX_INT8, channel ? 1 : 0, sdims, zp->data, zp->nbytes);
    }
    if (!qn || !sn || (zp && !zn))
        return SLIM_ENOMEM;
    if (!channel || c->opset >= 13) {
        Onnx__NodeProto *n;
        const char *ins[3] = {qn, sn, zn};
        if (!node_add(c, "DequantizeLinear", out, out, zn ? 3 : 2, ins, &n))
            return SLIM_ENOMEM;
        if (channel)
            attr_int(c, n, "axis", 0);
        return 0;
    }
    /* opset 10-12: no per-axis DequantizeLinear */
    {
        int64_t bshape[SLIM_MAX_DIMS];
        const char *f = cast(c, out, NULL, qn, SLIM_ONNX_FLOAT), *s2, *z2;
        bshape[0] = rows;
        for (int d = 1; d < ndim; d++)
            bshape[d] = 1;
        s2 = f ? reshape(c, out, NULL, sn, bshape, ndim) : NULL;
        if (zn && s2) {
            z2 = cast(c, out, NULL, zn, SLIM_ONNX_FLOAT);
            z2 = z2 ? reshape(c, out, NULL, z2, bshape, ndim) : NULL;
            f = z2 ? node2(c, "Sub", out, NULL, f, z2) : NULL;
        }
        return f && s2 && node2(c, "Mul", out, out, f, s2) ? 0 : SLIM_ENOMEM;
    }
}

/* Repacks int4 codes from rows of rb bytes into rows of nb bytes (pad
 * codes = pad), as ONNX wants them: rows padded (fallback) or one
 * contiguous run (blocked DequantizeLinear: row_bits 0). */
static uint8_t *repack4(struct wctx *c, const uint8_t *src, int64_t rows, int64_t cols,
                        int64_t rb, int64_t width, int contiguous, size_t *nbytes)
{
    size_t total = contiguous ? (size_t)((rows * cols + 1) / 2)
                              : (size_t)rows * (size_t)((width + 1) / 2);
    uint8_t *dst = arena_alloc(&c->a, total ? total : 1);
    if (!dst)
        return NULL;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < cols; k++) {
            int code = (src[r * rb + k / 2] >> ((k & 1) * 4)) & 15;
            size_t at = contiguous ? (size_t)(r * cols + k) : (size_t)(r * width + k);
            size_t byte = contiguous ? at / 2 : (size_t)r * (size_t)((width + 1) / 2) +
                                                    (size_t)k / 2;
            dst[byte] |= (uint8_t)(code << (((contiguous ? at : (size_t)k) & 1) * 4));
        }
    *nbytes = total;
    return dst;
}

static int decode_int4(struct wctx *c, json_t *e, const char *out, const int64_t *dims, int ndim,
                       int64_t rows, int64_t cols, struct slim_error *err)
{
    const struct slim_tensor *q = entry_tensor(c, e, NULL, 0);
    const struct slim_tensor *sc = entry_tensor(c, e, "scale", -1);
    const struct slim_tensor *zp = entry_tensor(c, e, "zero_point", -1);
    int64_t g = e_int(e, "group_size", cols), ng, rb, width;
    int symmetric = json_is_true(json_object_get(e, "symmetric"));
    char base[600];
    size_t nb;
    uint8_t *codes;
    if (!q || !sc || !zp || g <= 0)
        return slim_error_set(err, SLIM_EINTERNAL, "'%s': int4 entry without its tensors", out);
    ng = (cols + g - 1) / g;
    rb = (cols + 1) / 2;
    snprintf(base, sizeof base, "%s_quantized", out);
    if (c->opset >= 21 && ndim == 2) {
        /* blocked DequantizeLinear: UINT4 codes, one contiguous run */
        int64_t sdims[2] = {rows, ng};
        const char *qn, *sn, *zn, *ins[3];
        Onnx__NodeProto *n;
        uint8_t *zp4 = repack4(c, zp->data, rows, ng, ng, ng, 1, &nb);
        size_t zb = nb;
        if (!(codes = repack4(c, q->data, rows, cols, rb, cols, 1, &nb)) || !zp4)
            return SLIM_ENOMEM;
        /* repack4 reads 4-bit codes; zero points are bytes: pack them */
        memset(zp4, 0, zb);
        for (int64_t i = 0; i < rows * ng; i++)
            zp4[i / 2] |= (uint8_t)((((const uint8_t *)zp->data)[i] & 15) << ((i & 1) * 4));
        qn = init_add(c, base, SLIM_ONNX_UINT4, 2, dims, codes, nb);
        snprintf(base, sizeof base, "%s_scale", out);
        sn = init_add(c, base, SLIM_ONNX_FLOAT, 2, sdims, sc->data, sc->nbytes);
        snprintf(base, sizeof base, "%s_zero_point", out);
        zn = init_add(c, base, SLIM_ONNX_UINT4, 2, sdims, zp4, zb);
        ins[0] = qn, ins[1] = sn, ins[2] = zn;
        if (!qn || !sn || !zn || !node_add(c, "DequantizeLinear", out, out, 3, ins, &n))
            return SLIM_ENOMEM;
        attr_int(c, n, "axis", 1);
        attr_int(c, n, "block_size", g);
        return 0;
    }
    /* the fallback: nibbles through a table, groups as a 3-D view */
    {
        int64_t pdims[2], v3[3] = {rows, ng, 1}, shape3[3] = {rows, ng, g};
        int64_t flat[2] = {rows, 0};
        const char *tab = code_table(c, 4, SLIM_ONNX_FLOAT, NULL);
        const char *pn, *x, *sn, *zn;
        width = ng * g;
        if (width == rb * 2) {
            codes = (uint8_t *)q->data;
            nb = q->nbytes;
        } else if (!(codes = repack4(c, q->data, rows, cols, rb, width, 0, &nb))) {
            return SLIM_ENOMEM;
        }
        pdims[0] = rows;
        pdims[1] = (width + 1) / 2;
        if (!tab || !(pn = init_add(c, base, SLIM_ONNX_UINT8, 2, pdims, codes, nb)))
            return SLIM_ENOMEM;
        x = expand_codes(c, out, pn, rows, pdims[1], width, 4, tab);
        x = x ? reshape(c, out, NULL, x, shape3, 3) : NULL;
        snprintf(base, sizeof base, "%s_scale", out);
        sn = init_add(c, base, SLIM_ONNX_FLOAT, 3, v3, sc->data, sc->nbytes);
        if (symmetric) {
            zn = const_f32(c, "slimd_int4_zero_point", 8.0f);
        } else {
            snprintf(base, sizeof base, "%s_zero_point", out);
            zn = init_add(c, base, SLIM_ONNX_UINT8, 3, v3, zp->data, zp->nbytes);
            zn = zn ? cast(c, out, NULL, zn, SLIM_ONNX_FLOAT) : NULL;
        }
        x = x && zn ? node2(c, "Sub", out, NULL, x, zn) : NULL;
        x = x && sn ? node2(c, "Mul", out, NULL, x, sn) : NULL;
        flat[1] = width;
        if (width != cols) {
            x = x ? reshape(c, out, NULL, x, flat, 2) : NULL;
            x = x ? slice_cols(c, out, x, cols) : NULL;
        }
        return x && reshape(c, out, out, x, dims, ndim) ? 0 : SLIM_ENOMEM;
    }
}

/* ternary / binary: codes through a table of values, times the row's scale */
static int decode_sign(struct wctx *c, json_t *e, const char *out, const int64_t *dims, int ndim,
                       int64_t rows, int64_t cols, int bits, struct slim_error *err)
{
    static const float ternary[4] = {0.0f, 1.0f, -1.0f, 0.0f}, binary[2] = {-1.0f, 1.0f};
    const struct slim_tensor *q = entry_tensor(c, e, NULL, 0);
    const struct slim_tensor *sc = entry_tensor(c, e, "scale", -1);
    int64_t rb = (cols * bits + 7) / 8, pdims[2] = {rows, rb}, sdims[2] = {rows, 1};
    const char *tab = code_table(c, bits, SLIM_ONNX_FLOAT, bits == 1 ? binary : ternary);
    char base[600];
    const char *pn, *sn, *x;
    if (!q || !sc)
        return slim_error_set(err, SLIM_EINTERNAL, "'%s': entry without its tensors", out);
    snprintf(base, sizeof base, "%s_packed", out);
    if (!tab || !(pn = init_add(c, base, SLIM_ONNX_UINT8, 2, pdims, q->data, q->nbytes)))
        return SLIM_ENOMEM;
    snprintf(base, sizeof base, "%s_scale", out);
    sn = init_add(c, base, SLIM_ONNX_FLOAT, 2, sdims, sc->data, sc->nbytes);
    x = sn ? expand_codes(c, out, pn, rows, rb, cols, bits, tab) : NULL;
    x = x ? node2(c, "Mul", out, NULL, x, sn) : NULL;
    return x && reshape(c, out, out, x, dims, ndim) ? 0 : SLIM_ENOMEM;
}

static int decode_cluster(struct wctx *c, json_t *e, const char *out, const int64_t *dims,
                          int ndim, int64_t rows, int64_t cols, struct slim_error *err)
{
    const struct slim_tensor *q = entry_tensor(c, e, NULL, 0);
    const struct slim_tensor *cb = entry_tensor(c, e, "codebook", -1);
    int bits = (int)e_int(e, "index_bits", e_int(e, "bits", 8));
    char base[600];
    const char *qn, *cn, *idx;
    int64_t cdims[1];
    if (!q || !cb)
        return slim_error_set(err, SLIM_EINTERNAL, "'%s': cluster entry without its tensors",
                              out);
    cdims[0] = slim_tensor_numel(cb);
    snprintf(base, sizeof base, "%s_codebook", out);
    if (!(cn = init_add(c, base, SLIM_ONNX_FLOAT, 1, cdims, cb->data, cb->nbytes)))
        return SLIM_ENOMEM;
    snprintf(base, sizeof base, "%s_indices", out);
    if (bits == 8) {
        qn = init_add(c, base, SLIM_ONNX_UINT8, ndim, dims, q->data, q->nbytes);
        idx = qn ? cast(c, out, NULL, qn, SLIM_ONNX_INT32) : NULL;
        return idx && node2(c, "Gather", out, out, cn, idx) ? 0 : SLIM_ENOMEM;
    }
    {
        int64_t rb = (cols * bits + 7) / 8, pdims[2] = {rows, rb};
        const char *tab = code_table(c, bits, SLIM_ONNX_UINT8, NULL);
        qn = tab ? init_add(c, base, SLIM_ONNX_UINT8, 2, pdims, q->data, q->nbytes) : NULL;
        idx = qn ? expand_codes(c, out, qn, rows, rb, cols, bits, tab) : NULL;
        idx = idx ? cast(c, out, NULL, idx, SLIM_ONNX_INT32) : NULL;
        idx = idx ? node2(c, "Gather", out, NULL, cn, idx) : NULL;
        return idx && reshape(c, out, out, idx, dims, ndim) ? 0 : SLIM_ENOMEM;
    }
}

/* The n bits of mask M (UINT8 [nb]) as INT32 [1, n] of 0/1: bytes to
 * nibbles through the 256x2 nibble table that 4-bit codes use, nibbles
 * to bits through a 16x4 one (64 bytes, where one 256x8 table would be
 * 2 KB, as much as the stored weights of a small layer). */
static const char *mask_bits(struct wctx *c, const char *base, const char *mn, int64_t nb,
                             int64_t n)
{
    const char *t16 = c->bit16, *x;
    int64_t shape[2] = {1, nb * 8};
    if (!t16) {
        uint8_t *tab = arena_alloc(&c->a, 64);
        int64_t tdims[2] = {16, 4};
        if (!tab)
            return NULL;
        for (int v = 0; v < 16; v++)
            for (int k = 0; k < 4; k++)
                tab[v * 4 + k] = (uint8_t)((v >> k) & 1);
        if (!(t16 = c->bit16 = init_add(c, "slimd_bit_table", SLIM_ONNX_UINT8, 2, tdims, tab,
                                        64)))
            return NULL;
    }
    x = expand_codes(c, base, mn, 1, nb, nb * 2, 4, code_table(c, 4, SLIM_ONNX_UINT8, NULL));
    x = x ? cast(c, base, NULL, x, SLIM_ONNX_INT32) : NULL;
    x = x ? node2(c, "Gather", base, NULL, t16, x) : NULL;   /* [1, 2 nb, 4] */
    x = x ? reshape(c, base, NULL, x, shape, 2) : NULL;
    if (x && nb * 8 != n)
        x = slice_cols(c, base, x, n);
    return x ? cast(c, base, NULL, x, SLIM_ONNX_INT32) : NULL;
}

/* Gap symbols of mask M (n bits, nnz set): for each set bit, the count
 * of clear bits since the previous set one (or the start), d, written as
 * floor(d / 15) symbols 15 ("15 more zeros, no weight") and one symbol
 * d mod 15 ("this many zeros, then a weight"); 4 bits a symbol, two a
 * byte, low nibble first, an odd count padded with a 15 (which adds no
 * weight, so a reader needs no count).  *out gets the packed symbols
 * (arena); returns their count, or -1 (no memory). */
static int64_t gap_symbols(struct wctx *c, const uint8_t *mask, int64_t n, int64_t nnz,
                           uint8_t **out)
{
    /* one symbol per stored weight, one per 15 zeros at most besides */
    uint8_t *p = arena_alloc(&c->a, (size_t)((nnz + n / 15 + 2) / 2));
    int64_t syms = 0, d = 0;
    if (!p)
        return -1;
    for (int64_t i = 0; i < n; i++) {
        if (!((mask[i >> 3] >> (i & 7)) & 1)) {
            d++;
            continue;
        }
        for (; d >= 15; d -= 15, syms++)
            p[syms >> 1] |= (uint8_t)(15 << ((syms & 1) * 4));
        p[syms >> 1] |= (uint8_t)(d << ((syms & 1) * 4));
        syms++;
        d = 0;
    }
    if (syms & 1)
        p[syms >> 1] |= 15 << 4;    /* the pad nibble: "15 zeros", no weight */
    *out = p;
    return syms;
}

/* A constant initializer of static data (type, ndim 0 or 1 with k
 * elements), made once per graph and shared by every tensor that needs
 * it, like code_table's tables; one static object per constant, since
 * the object's address is the key. */
static const char *shared_const(struct wctx *c, const char *base, int type, int ndim,
                                const void *data, int64_t k, size_t nbytes)
{
    const char *name;
    for (int i = 0; i < c->n_tables; i++)
        if (c->tables[i].values == data && c->tables[i].bits == -ndim - 1)
            return c->tables[i].name;
    if (c->n_tables == (int)(sizeof c->tables / sizeof c->tables[0]) ||
        !(name = init_add(c, base, type, ndim, &k, data, nbytes)))
        return NULL;
    c->tables[c->n_tables].bits = -ndim - 1;   /* no code table has bits < 0 */
    c->tables[c->n_tables].ttype = type;
    c->tables[c->n_tables].values = data;
    c->tables[c->n_tables++].name = name;
    return name;
}

/* A pruned and clustered tensor stored sparse.  No ONNX type holds codes
 * at positions, so the graph places them itself, from whichever of two
 * position forms is smaller for this tensor:
 *
 *   mask  W_mask UINT8 [n/8], the safetensors bit mask (n/8 bytes).
 *         Bits through the nibble and bit tables (mask_bits); CumSum
 *         over them numbers the stored weights 1..nnz, times the bit it
 *         is 0 where nothing is stored: a Gather of [0, values] by those
 *         numbers is W.
 *   gaps  W_gaps UINT8, 4-bit gap symbols (gap_symbols; about nnz / 2
 *         bytes at 10 % density, where the mask is n / 8).  Tables give
 *         each symbol its advance (d + 1, or 15) and whether it carries
 *         a weight; CumSum of the advances minus 1 is each symbol's
 *         position (a "15" lands on a zero), CumSum of the weight flags
 *         times the flag its value's number; ScatterElements puts
 *         [0, values][number] at the positions into ConstantOfShape
 *         zeros.
 *
 * The values are the codes of the stored weights (W_indices, packed as
 * in safetensors) through the codebook, behind one 0. */
static int decode_sparse_cluster(struct wctx *c, json_t *e, const char *out,
                                 const int64_t *dims, int ndim, struct slim_error *err)
{
    static const int32_t advance[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 15};
    static const int32_t carries[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0};
    static const int64_t axis1 = 1;
    static const int32_t one1 = 1;
    static const float zero1 = 0.0f;
    const struct slim_tensor *q = entry_tensor(c, e, NULL, 0);
    const struct slim_tensor *cb = entry_tensor(c, e, "codebook", -1);
    const struct slim_tensor *mk = entry_tensor(c, e, "mask", -1);
    int bits = (int)e_int(e, "index_bits", e_int(e, "bits", 8));
    int64_t n = 1, nnz = 0, nb, syms, qdims[1], cdims[1];
    const char *qn, *cn, *v, *zero, *axis_n;
    uint8_t *packed;
    char base[600];

    if (!q || !cb || !mk || (bits != 8 && bits != 4 && bits != 2 && bits != 1))
        return slim_error_set(err, SLIM_EINTERNAL, "'%s': sparse cluster entry without its "
                              "tensors", out);
    if (c->opset < 11)
        return slim_error_set(err, SLIM_ESPEC, "'%.40s': clustered weights stored sparse need "
                              "CumSum, opset 11 (the model has %lld): set output.opset, or "
                              "drop output.sparse", out, (long long)c->opset);
    for (int i = 0; i < ndim; i++)
        n *= dims[i];
    nb = (n + 7) / 8;
    for (int64_t i = 0; i < (int64_t)mk->nbytes; i++)
        nnz += __builtin_popcount(((const uint8_t *)mk->data)[i]);
    if ((int64_t)mk->nbytes != nb || (int64_t)q->nbytes != (nnz * bits + 7) / 8)
        return slim_error_set(err, SLIM_EINTERNAL, "'%s': mask and codes disagree", out);
    axis_n = shared_const(c, "slimd_cumsum_axis", SLIM_ONNX_INT64, 0, &axis1, 1, 8);

    /* values: 0, then codebook[code] of each stored weight */
    snprintf(base, sizeof base, "%s_codebook", out);
    cdims[0] = slim_tensor_numel(cb);
    cn = init_add(c, base, SLIM_ONNX_FLOAT, 1, cdims, cb->data, cb->nbytes);
    zero = shared_const(c, "slimd_zero_value", SLIM_ONNX_FLOAT, 1, &zero1, 1, 4);
    v = zero;
    if (nnz) {
        int64_t flat[1] = {nnz};
        snprintf(base, sizeof base, "%s_indices", out);
        qdims[0] = (int64_t)q->nbytes;
        qn = init_add(c, base, SLIM_ONNX_UINT8, 1, qdims, q->data, q->nbytes);
        v = !qn ? NULL : bits == 8 ? qn
            : expand_codes(c, out, qn, 1, qdims[0], nnz, bits,
                           code_table(c, bits, SLIM_ONNX_UINT8, NULL));
        v = v ? cast(c, out, NULL, v, SLIM_ONNX_INT32) : NULL;
        v = v && cn ? node2(c, "Gather", out, NULL, cn, v) : NULL;
        v = v && bits != 8 ? reshape(c, out, NULL, v, flat, 1) : v;
        if (v && zero) {
            Onnx__NodeProto *cat;
            v = node_add(c, "Concat", out, NULL, 2, (const char *const[]){zero, v}, &cat);
            if (v)
                attr_int(c, cat, "axis", 0);
        }
    }
    if (!v || !axis_n)
        return SLIM_ENOMEM;

    if ((syms = gap_symbols(c, mk->data, n, nnz, &packed)) < 0)
        return SLIM_ENOMEM;
    if ((syms + 1) / 2 + 64 >= nb) {
        /* the bit mask: numbers 1..nnz where a weight is, else 0 */
        const char *m, *pos;
        snprintf(base, sizeof base, "%s_mask", out);
        qdims[0] = nb;
        m = init_add(c, base, SLIM_ONNX_UINT8, 1, qdims, mk->data, mk->nbytes);
        m = m ? mask_bits(c, out, m, nb, n) : NULL;
        pos = m ? node2(c, "CumSum", out, NULL, m, axis_n) : NULL;
        pos = pos ? node2(c, "Mul", out, NULL, pos, m) : NULL;
        v = pos ? node2(c, "Gather", out, NULL, v, pos) : NULL;
    } else {
        /* the gaps: each symbol's position and value number, scattered */
        int64_t sdims[1] = {syms}, len[1] = {n};
        const char *g, *adv, *car, *pos, *num, *zeros, *lenn, *onen;
        Onnx__NodeProto *sc;
        snprintf(base, sizeof base, "%s_gaps", out);
        qdims[0] = (syms + 1) / 2;
        g = init_add(c, base, SLIM_ONNX_UINT8, 1, qdims, packed, (size_t)qdims[0]);
        g = g ? expand_codes(c, out, g, 1, qdims[0], syms, 4,
                             code_table(c, 4, SLIM_ONNX_UINT8, NULL)) : NULL;
        g = g ? cast(c, out, NULL, g, SLIM_ONNX_INT32) : NULL;        /* [1, syms] */
        adv = shared_const(c, "slimd_gap_advance", SLIM_ONNX_INT32, 1, advance, 16, 64);
        car = shared_const(c, "slimd_gap_carries", SLIM_ONNX_INT32, 1, carries, 16, 64);
        onen = shared_const(c, "slimd_one", SLIM_ONNX_INT32, 1, &one1, 1, 4);
        pos = g && adv ? node2(c, "Gather", out, NULL, adv, g) : NULL;
        pos = pos ? node2(c, "CumSum", out, NULL, pos, axis_n) : NULL;
        pos = pos && onen ? node2(c, "Sub", out, NULL, pos, onen) : NULL;
        pos = pos ? reshape(c, out, NULL, pos, sdims, 1) : NULL;
        num = g && car ? node2(c, "Gather", out, NULL, car, g) : NULL;
        {
            const char *k = num ? node2(c, "CumSum", out, NULL, num, axis_n) : NULL;
            num = k ? node2(c, "Mul", out, NULL, k, num) : NULL;
        }
        num = num ? reshape(c, out, NULL, num, sdims, 1) : NULL;
        v = num ? node2(c, "Gather", out, NULL, v, num) : NULL;
        lenn = const_i64(c, "slimd_shape", len, 1);
        zeros = lenn ? node_add(c, "ConstantOfShape", out, NULL, 1,
                                (const char *const[]){lenn}, NULL) : NULL;
        v = v && pos && zeros ? node_add(c, "ScatterElements", out, NULL, 3,
                                         (const char *const[]){zeros, pos, v}, &sc) : NULL;
        if (v)
            attr_int(c, sc, "axis", 0);
    }
    return v && reshape(c, out, out, v, dims, ndim) ? 0 : SLIM_ENOMEM;
}

/* A plain initializer named out holding stored tensor s (its values as
 * stored, in its shape dims). */
static int plain(struct wctx *c, const struct slim_tensor *s, const char *out,
                 const int64_t *dims, int ndim, struct slim_error *err)
{
    int type = slim_onnx_from_dtype(s->dtype);
    Onnx__TensorProto *t = tensor_new(c, out, type, ndim, dims, s->data, s->nbytes);
    if (!t || plist_push(&c->inits, t))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    json_object_set_new(c->names, out, json_true());
    return 0;
}

/* A pruned tensor as a sparse_initializer: the stored values and the
 * INT64 linear indices of the mask's set bits. */
static int sparse_init(struct wctx *c, json_t *e, const char *out, const int64_t *dims, int ndim,
                       struct slim_error *err)
{
    const struct slim_tensor *v = entry_tensor(c, e, NULL, 0);
    const struct slim_tensor *mk = entry_tensor(c, e, "mask", -1);
    Onnx__SparseTensorProto *sp = arena_alloc(&c->a, sizeof *sp);
    int64_t n = 1, nnz, *idx, k = 0, *d = arena_alloc(&c->a, SLIM_MAX_DIMS * sizeof *d);
    if (!v || !mk)
        return slim_error_set(err, SLIM_EINTERNAL, "'%s': sparse entry without its tensors", out);
    for (int i = 0; i < ndim; i++)
        n *= dims[i];
    nnz = slim_tensor_numel(v);
    idx = arena_alloc(&c->a, (size_t)(nnz ? nnz : 1) * sizeof *idx);
    if (!sp || !idx || !d)
        return SLIM_ENOMEM;
    for (int64_t i = 0; i < n && k < nnz; i++)
        if ((((const uint8_t *)mk->data)[i >> 3] >> (i & 7)) & 1)
            idx[k++] = i;
    if (k != nnz)
        return slim_error_set(err, SLIM_EINTERNAL, "'%s': mask and values disagree", out);
    onnx__sparse_tensor_proto__init(sp);
    {
        int64_t vd[1] = {nnz};
        sp->values = tensor_new(c, out, slim_onnx_from_dtype(v->dtype), 1, vd, v->data,
                                v->nbytes);
        sp->indices = tensor_new(c, "", SLIM_ONNX_INT64, 1, vd, idx,
                                 (size_t)nnz * sizeof *idx);
    }
    copy(d, dims, (size_t)ndim * sizeof *d);
    sp->n_dims = (size_t)ndim;
    sp->dims = d;
    if (!sp->values || !sp->indices || plist_push(&c->sparse, sp))
        return SLIM_ENOMEM;
    sp->indices->name = NULL;
    json_object_set_new(c->names, out, json_true());
    return 0;
}

/* Makes a value named `out` with the decoded tensor of entry e. */
static int decode(struct wctx *c, json_t *e, const char *out, struct slim_error *err)
{
    const char *scheme = json_string_value(json_object_get(e, "scheme"));
    int64_t dims[SLIM_MAX_DIMS], rows, cols;
    int ndim, rc;
    if (!scheme || entry_shape(e, dims, &ndim, &rows, &cols))
        return slim_error_set(err, SLIM_EINTERNAL, "'%s': malformed slimd.tensors entry", out);
    if (json_is_true(json_object_get(e, "sparse"))) {
        if (!strcmp(scheme, "cluster")) {
            json_object_set_new(c->names, out, json_true());
            rc = decode_sparse_cluster(c, e, out, dims, ndim, err);
            if (rc == SLIM_ENOMEM)
                slim_error_set(err, SLIM_ENOMEM, "out of memory writing the ONNX graph");
            return rc;
        }
        if (strcmp(scheme, "dense") && strcmp(scheme, "copy"))
            return slim_error_set(err, SLIM_ESPEC, "'%.40s': %s codes stored sparse have no "
                                  "ONNX form: drop output.sparse, or the %s pass", out, scheme,
                                  scheme);
        return sparse_init(c, e, out, dims, ndim, err);
    }
    json_object_set_new(c->names, out, json_true());
    if (!strcmp(scheme, "int8"))
        rc = decode_int8(c, e, out, dims, ndim, rows, err);
    else if (!strcmp(scheme, "int4"))
        rc = decode_int4(c, e, out, dims, ndim, rows, cols, err);
    else if (!strcmp(scheme, "ternary"))
        rc = decode_sign(c, e, out, dims, ndim, rows, cols, 2, err);
    else if (!strcmp(scheme, "binary"))
        rc = decode_sign(c, e, out, dims, ndim, rows, cols, 1, err);
    else if (!strcmp(scheme, "cluster"))
        rc = decode_cluster(c, e, out, dims, ndim, rows, cols, err);
    else if (!strcmp(scheme, "fp16") || !strcmp(scheme, "bf16")) {
        const struct slim_tensor *s = entry_tensor(c, e, NULL, 0);
        int type = !strcmp(scheme, "fp16") ? SLIM_ONNX_FLOAT16 : SLIM_ONNX_BFLOAT16;
        char base[600];
        const char *h;
        if (type == SLIM_ONNX_BFLOAT16 && c->opset < 13)
            return slim_error_set(err, SLIM_ESPEC, "'%s': bf16 needs opset 13 or later (the "
                                  "model has %lld); use fp16", out, (long long)c->opset);
        snprintf(base, sizeof base, "%s_%s", out, scheme);
        h = s ? init_add(c, base, type, ndim, dims, s->data, s->nbytes) : NULL;
        rc = h && cast(c, out, out, h, SLIM_ONNX_FLOAT) ? 0 : SLIM_ENOMEM;
    } else if (!strcmp(scheme, "dense") || !strcmp(scheme, "copy")) {
        const struct slim_tensor *s = entry_tensor(c, e, NULL, 0);
        json_object_del(c->names, out);
        rc = s ? plain(c, s, out, dims, ndim, err) : SLIM_EINTERNAL;
    } else {
        return slim_error_set(err, SLIM_EINTERNAL, "'%s': scheme '%s' has no ONNX form", out,
                              scheme);
    }
    if (rc == SLIM_ENOMEM)
        slim_error_set(err, SLIM_ENOMEM, "out of memory writing the ONNX graph");
    return rc;
}

/* ---- low rank ------------------------------------------------------------ */

static const Onnx__AttributeProto *attr_of(const Onnx__NodeProto *n, const char *name)
{
    return slim_onnx_attr(n, name);
}

static int64_t attr_i(const Onnx__NodeProto *n, const char *name, int64_t dflt)
{
    const Onnx__AttributeProto *a = attr_of(n, name);
    return a && a->has_i ? a->i : dflt;
}

/* Copies n's attributes except those named in skip onto m. */
static void copy_attrs(struct wctx *c, Onnx__NodeProto *m, const Onnx__NodeProto *n,
                       const char *const *skip)
{
    for (size_t i = 0; i < n->n_attribute; i++) {
        int drop = 0;
        for (int k = 0; skip && skip[k] && !drop; k++)
            drop = !strcmp(n->attribute[i]->name, skip[k]);
        if (!drop) {
            Onnx__AttributeProto **g = arena_alloc(&c->a, (m->n_attribute + 1) * sizeof *g);
            if (!g)
                return;
            copy(g, m->attribute, m->n_attribute * sizeof *g);
            g[m->n_attribute++] = n->attribute[i];
            m->attribute = g;
        }
    }
}

/* Replaces node n, which uses the low-rank weight w (= U V, U [rows, r],
 * V [r, cols]) as input `at`, by two nodes; 1 if done, 0 if n is not a
 * form this knows (the caller then keeps n and makes W = U V). */
static int lowrank_node(struct wctx *c, const Onnx__NodeProto *n, size_t at, const char *u,
                        const char *v, const int64_t *dims, int ndim, int64_t rank)
{
    const char *op = n->op_type, *out = n->output[0];
    Onnx__NodeProto *a, *b;
    const char *h;
    if (!strcmp(op, "Gemm") && at == 1 && ndim == 2 && n->n_output == 1) {
        int tb = (int)attr_i(n, "transB", 0);
        /* y = alpha A W' + beta C: W' = W^T (transB) = V^T U^T, or W = U V */
        const char *first = tb ? v : u, *second = tb ? u : v;
        const char *ins2[3] = {NULL, second, n->n_input > 2 ? n->input[2] : NULL};
        h = node_add(c, "Gemm", out, NULL, 2, (const char *const[]){n->input[0], first}, &a);
        if (!h)
            return -1;
        copy_attrs(c, a, n, (const char *const[]){"beta", NULL});
        ins2[0] = h;
        if (!node_add(c, "Gemm", out, out, n->n_input > 2 ? 3 : 2, ins2, &b))
            return -1;
        attr_int(c, b, "transB", tb);
        {
            const Onnx__AttributeProto *beta = attr_of(n, "beta");
            if (beta)
                copy_attrs(c, b, &(Onnx__NodeProto){.n_attribute = 1,
                                   .attribute = (Onnx__AttributeProto **)&beta}, NULL);
        }
        return 1;
    }
    if (!strcmp(op, "MatMul") && ndim == 2 && n->n_input == 2) {
        /* x W = (x U) V;  W x = U (V x) */
        if (at == 1) {
            h = node2(c, "MatMul", out, NULL, n->input[0], u);
            return h && node2(c, "MatMul", out, out, h, v) ? 1 : -1;
        }
        h = node2(c, "MatMul", out, NULL, v, n->input[1]);
        return h && node2(c, "MatMul", out, out, u, h) ? 1 : -1;
    }
    if (!strcmp(op, "Conv") && at == 1 && ndim >= 3 && attr_i(n, "group", 1) == 1) {
        /* Conv(x, W) = Conv1x1(Conv(x, V as [r, in, k...]), U as [out, r, 1...]) */
        int64_t vd[SLIM_MAX_DIMS], ud[SLIM_MAX_DIMS];
        const char *vr, *ur, *ins2[3];
        vd[0] = rank;
        ud[0] = dims[0];
        ud[1] = rank;
        for (int d = 1; d < ndim; d++)
            vd[d] = dims[d];
        for (int d = 2; d < ndim; d++)
            ud[d] = 1;
        vr = reshape(c, out, NULL, v, vd, ndim);
        ur = reshape(c, out, NULL, u, ud, ndim);
        if (!vr || !ur)
            return -1;
        h = node_add(c, "Conv", out, NULL, 2, (const char *const[]){n->input[0], vr}, &a);
        if (!h)
            return -1;
        copy_attrs(c, a, n, (const char *const[]){"kernel_shape", NULL});
        ins2[0] = h, ins2[1] = ur, ins2[2] = n->n_input > 2 ? n->input[2] : NULL;
        return node_add(c, "Conv", out, out, n->n_input > 2 ? 3 : 2, ins2, &b) ? 1 : -1;
    }
    return 0;
}

/* ---- packing ------------------------------------------------------------- */

/* protobuf-c appends into this: small appends gather in a staging buffer,
 * large ones (weights) go to the writer as pieces that point at them. */
struct sink_buf {
    ProtobufCBuffer base;
    struct slim_writer *wr;
    uint8_t *stage;
    size_t used;
    uint64_t total;
    int rc;
    struct slim_error *err;
};

enum { STAGE = 1 << 20, DIRECT = 64 << 10 };

static void stage_flush(struct sink_buf *s)
{
    struct slim_piece p;
    if (!s->used || s->rc)
        return;
    p = (struct slim_piece){s->stage, s->used};
    s->rc = slim_writer_submit(s->wr, &p, 1, (void *[]){s->stage}, 1, s->err);
    s->stage = NULL;
    s->used = 0;
}

static void sink_append(ProtobufCBuffer *b, size_t len, const uint8_t *data)
{
    struct sink_buf *s = (struct sink_buf *)b;
    s->total += len;
    if (s->rc)
        return;
    if (len >= DIRECT) {
        struct slim_piece p = {data, len};
        stage_flush(s);
        if (!s->rc)
            s->rc = slim_writer_submit(s->wr, &p, 1, NULL, 0, s->err);
        return;
    }
    while (len) {
        size_t k;
        if (!s->stage && !(s->stage = slim_aligned_alloc(STAGE))) {
            s->rc = slim_error_set(s->err, SLIM_ENOMEM, "out of memory");
            return;
        }
        k = STAGE - s->used < len ? STAGE - s->used : len;
        memcpy(s->stage + s->used, data, k);
        s->used += k;
        data += k;
        len -= k;
        if (s->used == STAGE)
            stage_flush(s);
        if (s->rc)
            return;
    }
}

static int submit_bytes(struct slim_writer *wr, const void *data, size_t len,
                        struct slim_error *err)
{
    struct slim_piece p = {data, len};
    return len ? slim_writer_submit(wr, &p, 1, NULL, 0, err) : 0;
}

static int submit_zeros(struct slim_writer *wr, size_t len, struct slim_error *err)
{
    static const uint8_t zeros[4096];
    int rc = 0;
    while (len && !rc) {
        size_t k = len < sizeof zeros ? len : sizeof zeros;
        rc = submit_bytes(wr, zeros, k, err);
        len -= k;
    }
    return rc;
}

/* Moves every initializer of at least 1 KiB into the data file: their
 * external_data entries (offsets 64-byte aligned), their bytes listed in
 * order for write_data and dropped from the protobuf.  *total gets the
 * data file's size. */
static int externalize(struct wctx *c, const char *location, uint64_t *total,
                       struct plist *order)
{
    uint64_t off = 0;
    for (size_t i = 0; i < c->inits.n; i++) {
        Onnx__TensorProto *t = c->inits.v[i];
        Onnx__StringStringEntryProto **kv, *e;
        struct slim_piece *p;
        char num[32];
        if (!t->has_raw_data || t->raw_data.len < 1024)
            continue;
        off = (off + 63) & ~(uint64_t)63;
        kv = arena_alloc(&c->a, 3 * sizeof *kv);
        e = arena_alloc(&c->a, 3 * sizeof *e);
        p = arena_alloc(&c->a, sizeof *p);
        if (!kv || !e || !p || plist_push(order, p))
            return -1;
        for (int k = 0; k < 3; k++) {
            onnx__string_string_entry_proto__init(&e[k]);
            kv[k] = &e[k];
        }
        e[0].key = "location";
        e[0].value = (char *)location;
        snprintf(num, sizeof num, "%llu", (unsigned long long)off);
        e[1].key = "offset";
        e[1].value = astr(&c->a, num);
        snprintf(num, sizeof num, "%zu", t->raw_data.len);
        e[2].key = "length";
        e[2].value = astr(&c->a, num);
        t->n_external_data = 3;
        t->external_data = kv;
        t->has_data_location = 1;
        t->data_location = ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL;
        *p = (struct slim_piece){t->raw_data.data, t->raw_data.len};
        off += t->raw_data.len;
        t->has_raw_data = 0;
        t->raw_data.data = NULL;
        t->raw_data.len = 0;
    }
    *total = off;
    return c->a.oom ? -1 : 0;
}

/* Writes the data file's bytes: the externalized tensors in order, with
 * their alignment padding. */
static int write_data(struct slim_writer *wr, const struct plist *order, struct slim_error *err)
{
    uint64_t off = 0;
    int rc = 0;
    for (size_t i = 0; i < order->n && !rc; i++) {
        const struct slim_piece *p = order->v[i];
        uint64_t at = (off + 63) & ~(uint64_t)63;
        if ((rc = submit_zeros(wr, (size_t)(at - off), err)))
            break;
        rc = submit_bytes(wr, p->data, p->len, err);
        off = at + p->len;
    }
    return rc;
}

/* A tar member header (an owned copy goes to the writer). */
static int tar_member(struct slim_writer *wr, const char *name, uint64_t size,
                      struct slim_error *err)
{
    unsigned char *hdr = slim_aligned_alloc(512);
    struct slim_piece p = {hdr, 512};
    int rc;
    if (!hdr)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    if ((rc = slim_tar_header(name, size, hdr, err))) {
        slim_aligned_free(hdr);
        return rc;
    }
    return slim_writer_submit(wr, &p, 1, (void *[]){hdr}, 1, err);
}

static int pack_model(struct slim_writer *wr, Onnx__ModelProto *mp, struct slim_error *err)
{
    struct sink_buf s;
    memset(&s, 0, sizeof s);
    s.base.append = sink_append;
    s.wr = wr;
    s.err = err;
    protobuf_c_message_pack_to_buffer(&mp->base, &s.base);
    stage_flush(&s);
    slim_aligned_free(s.stage);
    return s.rc;
}

/* ---- the whole model ------------------------------------------------------ */

static int metadata_props(struct wctx *c, Onnx__ModelProto *mp, json_t *metadata)
{
    const char *key;
    json_t *v;
    size_t n = 0, cap = c->m->model->n_metadata_props + json_object_size(metadata);
    Onnx__StringStringEntryProto **kv = arena_alloc(&c->a, (cap + 1) * sizeof *kv);
    if (!kv)
        return -1;
    for (size_t i = 0; i < c->m->model->n_metadata_props; i++) {
        Onnx__StringStringEntryProto *e = c->m->model->metadata_props[i];
        if (!e->key || !json_object_get(metadata, e->key))
            kv[n++] = e;
    }
    json_object_foreach(metadata, key, v) {
        Onnx__StringStringEntryProto *e = arena_alloc(&c->a, sizeof *e);
        if (!e || !json_is_string(v))
            continue;
        onnx__string_string_entry_proto__init(e);
        e->key = astr(&c->a, key);
        e->value = astr(&c->a, json_string_value(v));
        kv[n++] = e;
    }
    mp->n_metadata_props = n;
    mp->metadata_props = kv;
    return c->a.oom ? -1 : 0;
}

/* Rebuilds the graph: decode nodes and new initializers, the original
 * nodes with low-rank consumers replaced, inputs without the weights that
 * nodes now produce. */
static int rebuild(struct wctx *c, Onnx__GraphProto *g2, struct slim_error *err)
{
    const Onnx__GraphProto *g = c->m->graph;
    json_t *lowrank = json_object();   /* W -> its entry, for the consumers */
    int rc = 0;

    for (size_t i = 0; i < g->n_node; i++)
        for (size_t k = 0; k < g->node[i]->n_output; k++)
            json_object_set_new(c->names, g->node[i]->output[k], json_true());
    for (size_t i = 0; i < g->n_input; i++)
        json_object_set_new(c->names, g->input[i]->name, json_true());
    for (size_t i = 0; i < g->n_initializer; i++)
        json_object_set_new(c->names, g->initializer[i]->name, json_true());
    for (size_t i = 0; i < g->n_sparse_initializer; i++)
        if (g->sparse_initializer[i]->values && g->sparse_initializer[i]->values->name)
            json_object_set_new(c->names, g->sparse_initializer[i]->values->name, json_true());

    c->cur = &c->pre;
    for (size_t i = 0; i < g->n_initializer && !rc; i++) {
        Onnx__TensorProto *t = g->initializer[i];
        json_t *e = json_object_get(c->entries, t->name);
        const struct slim_tensor *s = stored(c, t->name);
        if (e && !strcmp(json_string_value(json_object_get(e, "scheme")), "lowrank")) {
            json_t *f = json_object_get(e, "factors"), *fe;
            const char *fname;
            json_object_foreach(f, fname, fe) {
                if ((rc = decode(c, fe, fname, err)))
                    break;
            }
            json_object_set(lowrank, t->name, e);
        } else if (e) {
            rc = decode(c, e, t->name, err);
        } else if (s) {
            rc = plain(c, s, t->name, t->dims, (int)t->n_dims, err);
        } else if (t->has_data_type && t->data_type == SLIM_ONNX_STRING) {
            rc = plist_push(&c->inits, t) ? SLIM_ENOMEM : 0;
        } else {
            /* a type slimd does not read (UINT32, INT4...): copied as is,
             * its bytes brought inline */
            const void *d;
            size_t nb;
            Onnx__TensorProto *n2;
            if ((rc = slim_onnx_tensor_data(c->m, t, &d, &nb, NULL, err)))
                break;
            n2 = tensor_new(c, t->name, t->data_type, (int)t->n_dims, t->dims, d, nb);
            rc = !n2 || plist_push(&c->inits, n2) ? SLIM_ENOMEM : 0;
        }
    }
    for (size_t i = 0; i < g->n_sparse_initializer && !rc; i++)
        rc = plist_push(&c->sparse, g->sparse_initializer[i]) ? SLIM_ENOMEM : 0;
    /* the original nodes, low-rank consumers split in two */
    for (size_t i = 0; i < g->n_node && !rc; i++) {
        Onnx__NodeProto *n = g->node[i];
        int done = 0;
        for (size_t k = 0; k < n->n_input && !done; k++) {
            json_t *e = json_object_get(lowrank, n->input[k]), *f;
            const char *u = NULL, *v = NULL, *key;
            json_t *fe;
            int64_t dims[SLIM_MAX_DIMS], rows, cols;
            int ndim;
            if (!e)
                continue;
            f = json_object_get(e, "factors");
            json_object_foreach(f, key, fe) {
                if (!u)
                    u = key;
                else
                    v = key;
            }
            entry_shape(e, dims, &ndim, &rows, &cols);
            c->cur = &c->body;
            done = lowrank_node(c, n, k, u, v, dims, ndim, e_int(e, "rank", 0));
            c->cur = &c->pre;
            if (done < 0)
                rc = SLIM_ENOMEM;
            else if (!done && !json_object_get(c->names, n->input[k])) {
                /* another use: W = U V back, once */
                const char *w = node2(c, "MatMul", n->input[k], NULL, u, v);
                json_object_set_new(c->names, n->input[k], json_true());
                rc = w && reshape(c, n->input[k], n->input[k], w, dims, ndim) ? 0 : SLIM_ENOMEM;
            }
        }
        if (!done && !rc)
            rc = plist_push(&c->body, n) ? SLIM_ENOMEM : 0;
    }
    json_decref(lowrank);
    if (rc || c->a.oom)
        return rc ? rc : slim_error_set(err, SLIM_ENOMEM, "out of memory writing the graph");

    /* decode nodes first (they read initializers only), then the body */
    for (size_t i = 0; i < c->body.n && !rc; i++)
        rc = plist_push(&c->pre, c->body.v[i]);
    if (rc)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory writing the graph");
    *g2 = *g;
    g2->n_node = c->pre.n;
    g2->node = (Onnx__NodeProto **)c->pre.v;
    g2->n_initializer = c->inits.n;
    g2->initializer = (Onnx__TensorProto **)c->inits.v;
    g2->n_sparse_initializer = c->sparse.n;
    g2->sparse_initializer = (Onnx__SparseTensorProto **)c->sparse.v;
    /* old exporters list initializers among the inputs: drop those now
     * made by nodes (or gone) */
    {
        Onnx__ValueInfoProto **in = arena_alloc(&c->a, (g->n_input + 1) * sizeof *in);
        size_t n = 0;
        if (!in)
            return slim_error_set(err, SLIM_ENOMEM, "out of memory");
        for (size_t i = 0; i < g->n_input; i++) {
            int keep = 1;
            for (size_t k = 0; k < g->n_initializer && keep; k++)
                if (!strcmp(g->initializer[k]->name, g->input[i]->name)) {
                    keep = 0;
                    for (size_t j = 0; j < c->inits.n && !keep; j++)
                        keep = !strcmp(((Onnx__TensorProto *)c->inits.v[j])->name,
                                       g->input[i]->name);
                }
            if (keep)
                in[n++] = g->input[i];
        }
        g2->n_input = n;
        g2->input = in;
    }
    return 0;
}

/* ---- opset upgrade ------------------------------------------------------- */

/* Ops whose meaning is the same at every opset from 13 to 21 (new
 * versions only added types or optional attributes), so a model that
 * uses only these can say opset 21 and take INT4 blocked
 * DequantizeLinear.  Left out on purpose: Reduce* and Split (axes moved
 * to an input at 18), Pad, Resize, and everything slimd does not know. */
static const char *const upgrade_safe[] = {
    "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Erf",
    "Softmax", "LogSoftmax", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
    "Concat", "Shape", "Gather", "Slice", "Constant", "Identity", "Dropout", "Conv", "MaxPool",
    "AveragePool", "GlobalAveragePool", "BatchNormalization", "QuantizeLinear",
    "DequantizeLinear", "Cast", NULL};

static int ir_for_opset(int64_t opset)
{
    return opset >= 21 ? 10 : opset >= 19 ? 9 : opset >= 15 ? 8 : 7;
}

int slim_onnx_upgrade_check(const struct slim_onnx *m, int target, struct slim_error *err)
{
    const Onnx__GraphProto *g = m->graph;
    if (target <= m->opset)
        return 0;
    if (m->opset < 13)
        return slim_error_set(err, SLIM_ESPEC, "output.opset: the model's opset is %lld; slimd "
                              "upgrades models from opset 13 on", (long long)m->opset);
    for (size_t i = 0; i < g->n_node; i++) {
        const Onnx__NodeProto *n = g->node[i];
        int ok = 0;
        if (n->domain && *n->domain && strcmp(n->domain, "ai.onnx"))
            continue;
        for (int k = 0; upgrade_safe[k] && !ok; k++)
            ok = !strcmp(n->op_type, upgrade_safe[k]);
        if (!ok)
            return slim_error_set(err, SLIM_ESPEC, "output.opset: cannot move operator '%.60s' "
                                  "(node '%.100s') from opset %lld to %d: its meaning changed "
                                  "or slimd does not know it", n->op_type,
                                  n->name ? n->name : "", (long long)m->opset, target);
    }
    return 0;
}

/* The upgraded opset_import and IR version on mp (a shallow copy). */
static int upgrade_apply(struct wctx *c, Onnx__ModelProto *mp)
{
    Onnx__OperatorSetIdProto **ops, *o;
    if (c->opset <= c->m->opset)
        return 0;
    ops = arena_alloc(&c->a, (mp->n_opset_import + 1) * sizeof *ops);
    if (!ops)
        return -1;
    for (size_t i = 0; i < mp->n_opset_import; i++) {
        ops[i] = mp->opset_import[i];
        if (!ops[i]->domain || !*ops[i]->domain || !strcmp(ops[i]->domain, "ai.onnx")) {
            if (!(o = arena_alloc(&c->a, sizeof *o)))
                return -1;
            *o = *ops[i];
            o->has_version = 1;
            o->version = c->opset;
            ops[i] = o;
        }
    }
    mp->opset_import = ops;
    if (!mp->has_ir_version || mp->ir_version < ir_for_opset(c->opset)) {
        mp->has_ir_version = 1;
        mp->ir_version = ir_for_opset(c->opset);
    }
    return 0;
}

/* ---- the whole graph in fp16 --------------------------------------------- */

/* A FLOAT tensor proto as FLOAT16 (its values rounded to nearest even),
 * new in the arena; other types are returned as they are. */
static Onnx__TensorProto *to_f16(struct wctx *c, Onnx__TensorProto *t, struct slim_error *err)
{
    const void *d;
    size_t nb;
    uint16_t *h;
    Onnx__TensorProto *n;
    if (!t || !t->has_data_type || t->data_type != SLIM_ONNX_FLOAT)
        return t;
    if (t->has_raw_data && !t->has_data_location) {
        d = t->raw_data.data;
        nb = t->raw_data.len;
    } else if (slim_onnx_tensor_data(c->m, t, &d, &nb, NULL, err)) {
        return NULL;
    }
    if (!(h = arena_alloc(&c->a, nb / 2 + 2)))
        return NULL;
    for (size_t i = 0; i < nb / 4; i++) {
        float f;
        memcpy(&f, (const char *)d + 4 * i, 4);
        h[i] = slim_f32_to_f16(f);
    }
    n = tensor_new(c, t->name ? t->name : "", SLIM_ONNX_FLOAT16, (int)t->n_dims, t->dims, h,
                   nb / 2);
    if (n && !t->name)
        n->name = NULL;
    return n;
}

static Onnx__NodeProto *node_copy(struct wctx *c, const Onnx__NodeProto *n)
{
    Onnx__NodeProto *m = arena_alloc(&c->a, sizeof *m);
    char **in = arena_alloc(&c->a, (n->n_input + 1) * sizeof *in);
    char **out = arena_alloc(&c->a, (n->n_output + 1) * sizeof *out);
    Onnx__AttributeProto **at = arena_alloc(&c->a, (n->n_attribute + 1) * sizeof *at);
    if (!m || !in || !out || !at)
        return NULL;
    *m = *n;
    copy(in, n->input, n->n_input * sizeof *in);
    copy(out, n->output, n->n_output * sizeof *out);
    copy(at, n->attribute, n->n_attribute * sizeof *at);
    m->input = in;
    m->output = out;
    m->attribute = at;
    return m;
}

/* Every FLOAT initializer, constant and Cast target becomes FLOAT16;
 * float inputs are cast to fp16 where the graph starts and its float
 * outputs back to FLOAT where it ends, so callers see the same
 * interface.  Intermediate value_info is dropped (it named FLOAT). */
static int float16_graph(struct wctx *c, Onnx__GraphProto *g2, struct slim_error *err)
{
    struct plist nodes = {0};
    json_t *rename = json_object();   /* old value name -> new */
    int rc = 0;

    for (size_t i = 0; i < g2->n_initializer && !rc; i++)
        if (!(g2->initializer[i] = to_f16(c, g2->initializer[i], err)))
            rc = SLIM_ENOMEM;
    for (size_t i = 0; i < g2->n_sparse_initializer && !rc; i++) {
        Onnx__SparseTensorProto *sp = arena_alloc(&c->a, sizeof *sp);
        if (!sp) {
            rc = SLIM_ENOMEM;
            break;
        }
        *sp = *g2->sparse_initializer[i];
        if (!(sp->values = to_f16(c, sp->values, err)))
            rc = SLIM_ENOMEM;
        g2->sparse_initializer[i] = sp;
    }
    /* inputs: x -> Cast -> x_fp16 */
    for (size_t i = 0; i < g2->n_input && !rc; i++) {
        const Onnx__ValueInfoProto *v = g2->input[i];
        const Onnx__TypeProto *tp = v->type;
        int is_init = 0;
        char nm[600];
        const char *o;
        for (size_t k = 0; k < g2->n_initializer && !is_init; k++)
            is_init = !strcmp(g2->initializer[k]->name, v->name);
        if (is_init || !tp || tp->value_case != ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE ||
            !tp->tensor_type || tp->tensor_type->elem_type != SLIM_ONNX_FLOAT)
            continue;
        snprintf(nm, sizeof nm, "%.500s_fp16", v->name);
        c->cur = &nodes;
        o = cast(c, v->name, fresh(c, nm), v->name, SLIM_ONNX_FLOAT16);
        if (!o)
            rc = SLIM_ENOMEM;
        else
            json_object_set_new(rename, v->name, json_string(o));
    }
    /* outputs: y made as y_fp16, then Cast back to y */
    for (size_t i = 0; i < g2->n_output && !rc; i++) {
        const Onnx__ValueInfoProto *v = g2->output[i];
        const Onnx__TypeProto *tp = v->type;
        char nm[600];
        if (!tp || tp->value_case != ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE || !tp->tensor_type ||
            tp->tensor_type->elem_type != SLIM_ONNX_FLOAT)
            continue;
        snprintf(nm, sizeof nm, "%.500s_fp16", v->name);
        json_object_set_new(rename, v->name, json_string(fresh(c, nm)));
    }
    for (size_t i = 0; i < g2->n_node && !rc; i++) {
        Onnx__NodeProto *n = node_copy(c, g2->node[i]);
        if (!n) {
            rc = SLIM_ENOMEM;
            break;
        }
        /* graph inputs are read as their cast; outputs are made (and read
         * inside the graph) as their fp16 value */
        for (size_t k = 0; k < n->n_input && !rc; k++) {
            json_t *to = json_object_get(rename, n->input[k]);
            if (to && !(n->input[k] = astr(&c->a, json_string_value(to))))
                rc = SLIM_ENOMEM;
        }
        for (size_t k = 0; k < n->n_output && !rc; k++) {
            json_t *to = json_object_get(rename, n->output[k]);
            if (to && !(n->output[k] = astr(&c->a, json_string_value(to))))
                rc = SLIM_ENOMEM;
        }
        for (size_t k = 0; k < n->n_attribute; k++) {
            Onnx__AttributeProto *a = n->attribute[k], *b;
            int cast_to = !strcmp(n->op_type, "Cast") && a->name && !strcmp(a->name, "to") &&
                          a->i == SLIM_ONNX_FLOAT;
            int value = a->t && a->t->has_data_type && a->t->data_type == SLIM_ONNX_FLOAT;
            if (!cast_to && !value)
                continue;
            if (!(b = arena_alloc(&c->a, sizeof *b))) {
                rc = SLIM_ENOMEM;
                break;
            }
            *b = *a;
            if (cast_to)
                b->i = SLIM_ONNX_FLOAT16;
            else if (!(b->t = to_f16(c, a->t, err)))
                rc = SLIM_ENOMEM;
            n->attribute[k] = b;
        }
        if (!rc && plist_push(&nodes, n))
            rc = SLIM_ENOMEM;
    }
    for (size_t i = 0; i < g2->n_output && !rc; i++) {
        json_t *from = json_object_get(rename, g2->output[i]->name);
        c->cur = &nodes;
        if (from && !cast(c, g2->output[i]->name, g2->output[i]->name, json_string_value(from),
                          SLIM_ONNX_FLOAT))
            rc = SLIM_ENOMEM;
    }
    if (!rc) {
        Onnx__NodeProto **arr = arena_alloc(&c->a, (nodes.n + 1) * sizeof *arr);
        if (arr) {
            copy(arr, nodes.v, nodes.n * sizeof *arr);
            g2->n_node = nodes.n;
            g2->node = arr;
            g2->n_value_info = 0;
            g2->value_info = NULL;
        } else {
            rc = SLIM_ENOMEM;
        }
    }
    slim_free(nodes.v);
    json_decref(rename);   /* names live in the arena (fresh) */
    if (rc == SLIM_ENOMEM)
        slim_error_set(err, SLIM_ENOMEM, "out of memory writing the fp16 graph");
    return rc;
}

int slim_onnx_write(struct slim_onnx *m, const struct slim_tensor *st, size_t n_st,
                    json_t *entries, json_t *metadata, struct slim_onnx_out *o,
                    struct slim_error *err)
{
    struct wctx c;
    Onnx__GraphProto g2;
    Onnx__ModelProto mp;
    struct plist order = {0};
    struct slim_writer *wr = NULL;
    char location[600];
    uint64_t dbytes = 0, written = 0;
    size_t psize;
    int rc;

    memset(&c, 0, sizeof c);
    o->bytes = 0;
    c.m = m;
    c.st = st;
    c.n_st = n_st;
    c.entries = entries;
    c.opset = m->opset;
    c.names = json_object();
    c.stored = json_object();
    if (!c.names || !c.stored) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n_st; i++)
        json_object_set_new(c.stored, st[i].name, json_integer((json_int_t)i));
    if (m->opset < 10) {
        rc = slim_error_set(err, SLIM_ESPEC, "the model's opset is %lld: slimd writes ONNX "
                            "artifacts for opset 10 and later", (long long)m->opset);
        goto out;
    }
    if (o->opset && (rc = slim_onnx_upgrade_check(m, o->opset, err)))
        goto out;
    if (o->opset > m->opset)
        c.opset = o->opset;
    if ((rc = rebuild(&c, &g2, err)))
        goto out;
    if (o->float16_graph && (rc = float16_graph(&c, &g2, err)))
        goto out;
    mp = *m->model;
    mp.graph = &g2;
    if (upgrade_apply(&c, &mp) || metadata_props(&c, &mp, metadata)) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
        goto out;
    }
    if (o->external) {
        const char *base = o->tar ? o->onnx_name : o->path, *slash = strrchr(base, '/');
        snprintf(location, sizeof location, "%.500s.data", slash ? slash + 1 : base);
        if (externalize(&c, location, &dbytes, &order)) {
            rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
            goto out;
        }
    }
    psize = protobuf_c_message_get_packed_size(&mp.base);
    if (psize > SLIM_ONNX_MAX_PROTO) {
        rc = slim_error_set(err, SLIM_ETOOBIG, "the ONNX artifact would be over protobuf's "
                            "2 GiB: write it with external data");
        goto out;
    }
    if ((rc = slim_writer_open(o->path, o->sink, o->sink_ud, &wr, err)))
        goto out;
    if (o->tar) {
        /* "<name>.onnx", then "<name>.onnx.data" beside it, then the end */
        if ((rc = tar_member(wr, o->onnx_name, psize, err)) || (rc = pack_model(wr, &mp, err)) ||
            (rc = submit_zeros(wr, (512 - psize % 512) % 512, err)))
            goto out;
        if (o->external) {
            char dname[1200];
            const char *slash = strrchr(o->onnx_name, '/');
            snprintf(dname, sizeof dname, "%.*s%s", slash ? (int)(slash - o->onnx_name + 1) : 0,
                     o->onnx_name, location);
            if ((rc = tar_member(wr, dname, dbytes, err)) ||
                (rc = write_data(wr, &order, err)) ||
                (rc = submit_zeros(wr, (512 - dbytes % 512) % 512, err)))
                goto out;
        }
        if ((rc = submit_zeros(wr, 1024, err)))
            goto out;
    } else if ((rc = pack_model(wr, &mp, err))) {
        goto out;
    }
    written = slim_writer_queued(wr);
    rc = slim_writer_finish(wr, err);
    wr = NULL;
    if (rc)
        goto out;
    if (o->external && !o->tar) {
        /* the CLI: the data file beside the .onnx */
        char dpath[PATH_MAX];
        const char *slash = strrchr(o->path, '/');
        snprintf(dpath, sizeof dpath, "%.*s%s", slash ? (int)(slash - o->path + 1) : 0, o->path,
                 location);
        if ((rc = slim_writer_open(dpath, NULL, NULL, &wr, err)) ||
            (rc = write_data(wr, &order, err)))
            goto out;
        written += slim_writer_queued(wr);
        rc = slim_writer_finish(wr, err);
        wr = NULL;
        if (rc)
            goto out;
    }
    o->bytes = written;
out:
    slim_writer_abort(wr);
    slim_free(order.v);
    slim_free(c.pre.v);
    slim_free(c.body.v);
    slim_free(c.inits.v);
    slim_free(c.sparse.v);
    json_decref(c.names);
    json_decref(c.stored);
    arena_release(&c.a);
    return rc;
}
