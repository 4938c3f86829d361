/*
 * artifact.c - see artifact.h.
 *
 * Every compressed tensor is one "main" tensor of codes (or values) plus
 * siblings (scales, zero points, codebook).  The sparse form replaces the
 * main tensor only: W_mask holds one bit per weight (1 = stored, least
 * significant bit first, over the row-major weights), and W becomes 1-D
 * with the codes of the stored weights in row-major order, packed exactly
 * as the dense form packs them (int4 two per byte, ternary four, binary
 * eight) but without row padding.  A weight is stored when it decodes to
 * a non-zero value, so the mask is also the decoded sparsity pattern.
 *
 * Each element's code is read back out of the dense main tensor
 * (element c of row r at bit (c * bits) of the row's bytes), so the
 * sparse form works for every scheme with one piece of code.
 */
#include <string.h>
#include "passes/artifact.h"

static void *own(struct slim_artifact *a, size_t bytes)
{
    void *p;
    if (a->n_owned == a->cap_owned) {
        size_t cap = a->cap_owned ? 2 * a->cap_owned : 16;
        void **o = slim_realloc(a->owned, cap * sizeof *o);
        if (!o)
            return NULL;
        a->owned = o;
        a->cap_owned = cap;
    }
    p = slim_aligned_alloc(bytes ? bytes : 1);
    if (p)
        a->owned[a->n_owned++] = p;
    return p;
}

/* Makes a own p (slim_aligned_alloc'ed); frees p on failure. */
static int adopt(struct slim_artifact *a, void *p)
{
    if (a->n_owned == a->cap_owned) {
        size_t cap = a->cap_owned ? 2 * a->cap_owned : 16;
        void **o = slim_realloc(a->owned, cap * sizeof *o);
        if (!o) {
            slim_aligned_free(p);
            return -1;
        }
        a->owned = o;
        a->cap_owned = cap;
    }
    a->owned[a->n_owned++] = p;
    return 0;
}

void slim_artifact_release(struct slim_artifact *a)
{
    for (size_t i = 0; i < a->n_owned; i++)
        slim_aligned_free(a->owned[i]);
    slim_free(a->owned);
    slim_free(a->tensors);
    slim_free(a->origins);
    memset(a, 0, sizeof *a);
}

static struct slim_tensor *push(struct slim_artifact *a, const char *origin, const char *name,
                                enum slim_dtype dt, int ndim, const int64_t *shape,
                                const void *data, size_t nbytes)
{
    struct slim_tensor *o = &a->tensors[a->n];
    a->origins[a->n++] = origin;
    memset(o, 0, sizeof *o);
    o->name = (char *)name;
    o->dtype = dt;
    o->ndim = ndim;
    memcpy(o->shape, shape, (size_t)ndim * sizeof *shape);
    o->data = data;
    o->nbytes = nbytes;
    return o;
}

/* Values of t in dtype dt (F32 borrowed from val; others converted). */
static const void *dense_bytes(struct slim_artifact *a, const struct slim_wt *t,
                               enum slim_dtype dt)
{
    size_t n = (size_t)(t->rows * t->cols), es = slim_dtype_size(dt);
    unsigned char *b;
    if (dt == SLIM_DT_F32)
        return t->val;
    b = own(a, n * es);
    if (!b)
        return NULL;
    for (size_t k = 0; k < n; k++) {
        if (dt == SLIM_DT_F64) {
            double d = t->val[k];
            memcpy(b + 8 * k, &d, 8);
        } else {
            uint16_t h = dt == SLIM_DT_F16 ? slim_f32_to_f16(t->val[k])
                                           : slim_f32_to_bf16(t->val[k]);
            memcpy(b + 2 * k, &h, 2);
        }
    }
    return b;
}

/* Writes t's sparse form: W_mask and the 1-D codes of the stored weights.
 * main/bits/dt describe the dense codes (bits >= 8: whole elements, no
 * row padding; < 8: rows padded to whole bytes). */
static int push_sparse(struct slim_artifact *a, const struct slim_wt *t, const char *name,
                       const unsigned char *main, int bits, enum slim_dtype dt,
                       const char *mask_name)
{
    size_t rows = (size_t)t->rows, cols = (size_t)t->cols, n = rows * cols, nnz = 0;
    size_t rb = bits < 8 ? (cols * (size_t)bits + 7) / 8 : cols * (size_t)bits / 8;
    size_t eb = bits >= 8 ? (size_t)bits / 8 : 0;
    unsigned char *mask = own(a, (n + 7) / 8), *vals;
    int64_t shape[1];

    if (!mask)
        return -1;
    memset(mask, 0, (n + 7) / 8);
    for (size_t i = 0; i < n; i++)
        if (t->val[i] != 0.0f) {
            mask[i / 8] |= (unsigned char)(1u << (i % 8));
            nnz++;
        }
    vals = own(a, bits >= 8 ? nnz * eb : (nnz * (size_t)bits + 7) / 8);
    if (!vals)
        return -1;
    if (bits < 8)
        memset(vals, 0, (nnz * (size_t)bits + 7) / 8);
    size_t k = 0;
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++) {
            size_t i = r * cols + c;
            if (!(mask[i / 8] >> (i % 8) & 1))
                continue;
            if (bits >= 8) {
                memcpy(vals + k * eb, main + r * rb + c * eb, eb);
            } else {
                size_t bit = c * (size_t)bits, kb = k * (size_t)bits;
                unsigned code = (main[r * rb + bit / 8] >> (bit % 8)) & ((1u << bits) - 1);
                vals[kb / 8] |= (unsigned char)(code << (kb % 8));
            }
            k++;
        }
    shape[0] = (int64_t)((n + 7) / 8);
    push(a, t->origin, mask_name, SLIM_DT_U8, 1, shape, mask, (n + 7) / 8);
    shape[0] = (int64_t)(bits >= 8 ? nnz : (nnz * (size_t)bits + 7) / 8);
    push(a, t->origin, name, bits >= 8 ? dt : SLIM_DT_U8, 1, shape, vals,
         bits >= 8 ? nnz * eb : (nnz * (size_t)bits + 7) / 8);
    return 0;
}

/* Whether t is entropy-coded (output.entropy): its codes always, plain
 * values only when they are stored sparse (the gaps are what shrinks). */
static int entropy_applies(const struct slim_wt *t, int entropy, int is_sparse)
{
    if (!entropy || t->scheme == SLIM_SCHEME_COPY)
        return 0;
    if (t->code_bits >= 1 && t->code_bits <= 8 && t->n_outs)
        return 1;
    return is_sparse;
}

/* Writes t's entropy-coded main tensor `name`: one U8 stream
 * (kernels/entropy.c) of its stored positions (all of them, or the
 * non-zero ones when sparse) and their codes (bits 1..8: main holds the
 * dense codes, rows padded to whole bytes) or raw values (bits 16, 32,
 * 64: main holds the dense values). */
static int push_entropy(struct slim_artifact *a, const struct slim_wt *t, const char *name,
                        const unsigned char *main, int bits, int is_sparse,
                        struct slim_error *err)
{
    size_t rows = (size_t)t->rows, cols = (size_t)t->cols, n = rows * cols, m = 0;
    size_t rb = bits < 8 ? (cols * (size_t)bits + 7) / 8 : cols * (size_t)bits / 8;
    size_t eb = bits >= 8 ? (size_t)bits / 8 : 0;
    unsigned char *keep = NULL, *sel = NULL;
    uint8_t *stream = NULL;
    size_t len = 0;
    int64_t shape[1];
    int rc = 0;

    if (is_sparse) {
        if (!(keep = slim_calloc(n / 8 + 1, 1)))
            goto oom;
        for (size_t i = 0; i < n; i++)
            if (t->val[i] != 0.0f)
                keep[i / 8] |= (unsigned char)(1u << (i % 8));
    }
    if (!(sel = slim_malloc((bits > 8 ? n * eb : n) + 1)))
        goto oom;
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++) {
            size_t i = r * cols + c;
            if (keep && !(keep[i / 8] >> (i % 8) & 1))
                continue;
            if (bits > 8) {
                memcpy(sel + m * eb, main + r * rb + c * eb, eb);
            } else if (bits == 8) {
                sel[m] = main[r * rb + c];
            } else {
                size_t bit = c * (size_t)bits;
                sel[m] = (unsigned char)((main[r * rb + bit / 8] >> (bit % 8)) &
                                         ((1u << bits) - 1));
            }
            m++;
        }
    {
        struct slim_entropy_in in = {(uint64_t)n, keep, bits <= 8 ? sel : NULL,
                                     bits <= 8 ? bits : 0, bits > 8 ? sel : NULL,
                                     bits > 8 ? (int)eb : 0};
        rc = slim_entropy_encode(&in, &stream, &len, err);
    }
    slim_free(keep);
    slim_free(sel);
    keep = sel = NULL;
    if (rc)
        return rc;
    if (adopt(a, stream))
        goto oom;
    shape[0] = (int64_t)len;
    push(a, t->origin, name, SLIM_DT_U8, 1, shape, stream, len);
    return 0;
oom:
    slim_free(keep);
    slim_free(sel);
    return slim_error_set(err, SLIM_ENOMEM, "tensor '%.100s': out of memory entropy-coding it",
                          t->name);
}

static char *mask_name_of(struct slim_artifact *a, const char *name)
{
    size_t len = strlen(name) + 6;
    char *m = own(a, len);
    if (m)
        snprintf(m, len, "%s_mask", name);
    return m;
}

int slim_artifact_layout(struct slim_work *w, struct slim_artifact *a, struct slim_error *err)
{
    int dequantize = w->dequantize_output, sparse = w->sparse_output;
    int entropy = w->entropy_output && !dequantize && !w->planning;
    size_t cap = 0;
    int rc;
    memset(a, 0, sizeof *a);
    for (size_t i = 0; i < w->n; i++)
        cap += (size_t)w->wts[i].n_outs + 2;
    a->tensors = slim_calloc(cap ? cap : 1, sizeof *a->tensors);
    a->origins = slim_calloc(cap ? cap : 1, sizeof *a->origins);
    if (!a->tensors || !a->origins)
        goto oom;
    for (size_t i = 0; i < w->n; i++) {
        struct slim_wt *t = &w->wts[i];
        int is_sparse = sparse && t->pruned && t->val;
        if (t->scheme == SLIM_SCHEME_COPY && !(dequantize && t->val)) {
            struct slim_tensor *o = &a->tensors[a->n];
            a->origins[a->n++] = t->origin;
            *o = *t->src;
            o->data = w->raw;
            o->own = NULL;
            continue;
        }
        if (dequantize || t->scheme == SLIM_SCHEME_DENSE) {
            enum slim_dtype dt = dequantize ? SLIM_DT_F32 : t->dense_dtype;
            const void *b = w->planning ? NULL : dense_bytes(a, t, dt);
            size_t es = slim_dtype_size(dt);
            if (!b && !w->planning)
                goto oom;
            if (entropy_applies(t, entropy, is_sparse)) {
                if ((rc = push_entropy(a, t, t->name, b, (int)(8 * es), is_sparse, err)))
                    goto fail;
            } else if (is_sparse && !w->planning) {
                char *mn = mask_name_of(a, t->name);
                if (!mn || push_sparse(a, t, t->name, b, (int)(8 * es), dt, mn))
                    goto oom;
            } else {
                push(a, t->origin, t->name, dt, t->ndim, t->shape, b, (size_t)(t->rows * t->cols) * es);
            }
            continue;
        }
        for (int k = 0; k < t->n_outs; k++) {
            struct slim_out *o = &t->outs[k];
            if (k == 0 && entropy_applies(t, entropy, is_sparse)) {
                int bits = t->code_bits ? t->code_bits : 8 * (int)slim_dtype_size(o->dtype);
                if ((rc = push_entropy(a, t, o->name, o->data, bits, is_sparse, err)))
                    goto fail;
                continue;
            }
            if (k == 0 && is_sparse && !w->planning) {
                char *mn = mask_name_of(a, t->name);
                if (!mn || push_sparse(a, t, o->name, o->data, t->code_bits, o->dtype, mn))
                    goto oom;
                continue;
            }
            push(a, t->origin, o->name, o->dtype, o->ndim, o->shape, o->data, o->nbytes);
        }
    }
    return 0;
oom:
    slim_artifact_release(a);
    return slim_error_set(err, SLIM_ENOMEM, "out of memory laying out the artifact");
fail:
    slim_artifact_release(a);
    return rc;
}

/* {scheme, shape, dtype, tensors, ...} for one working tensor. */
static json_t *describe(const struct slim_wt *t, int sparse, int entropy)
{
    json_t *e = json_pack("{s:s, s:[], s:s, s:[]}", "scheme", slim_scheme_name(t->scheme),
                          "shape", "dtype", slim_dtype_name(t->dtype), "tensors");
    json_t *names;
    if (!e)
        return NULL;
    for (int d = 0; d < t->ndim; d++)
        json_array_append_new(json_object_get(e, "shape"), json_integer(t->shape[d]));
    names = json_object_get(e, "tensors");
    if (t->n_outs)
        for (int k = 0; k < t->n_outs; k++)
            json_array_append_new(names, json_string(t->outs[k].name));
    else
        json_array_append_new(names, json_string(t->name));
    if (t->scheme == SLIM_SCHEME_DENSE)
        json_object_set_new(e, "stored_dtype", json_string(slim_dtype_name(t->dense_dtype)));
    if (t->code_bits && t->code_bits < 16)
        json_object_set_new(e, "bits", json_integer(t->code_bits));
    if (t->scheme_info)
        json_object_update(e, t->scheme_info);
    if (entropy_applies(t, entropy, sparse && t->pruned)) {
        /* one U8 stream: positions (gaps) and codes; no mask */
        json_object_set_new(e, "entropy", json_true());
        if (sparse && t->pruned)
            json_object_set_new(e, "sparse", json_true());
    } else if (sparse && t->pruned) {
        char mask[512];
        snprintf(mask, sizeof mask, "%s_mask", t->name);
        json_object_set_new(e, "sparse", json_true());
        json_object_set_new(e, "mask", json_string(mask));
        json_array_append_new(names, json_string(mask));
    }
    return e;
}

/* A low-rank factor as output.dequantize writes it: plain F32. */
static json_t *describe_f32(const struct slim_wt *t)
{
    json_t *e = json_pack("{s:s, s:[], s:s, s:[s], s:s}", "scheme", "dense", "shape", "dtype",
                          "F32", "tensors", t->name, "stored_dtype", "F32");
    for (int d = 0; e && d < t->ndim; d++)
        json_array_append_new(json_object_get(e, "shape"), json_integer(t->shape[d]));
    return e;
}

int slim_artifact_describe(struct slim_work *w, json_t *entries, struct slim_error *err)
{
    int sparse = w->sparse_output, entropy = w->entropy_output, deq = w->dequantize_output;
    for (size_t i = 0; i < w->n; i++) {
        struct slim_wt *t = &w->wts[i];
        json_t *e;
        /* dequantized, every tensor is plain F32 under its own name: only
         * a low-rank pair still needs saying (two tensors stand for W; an
         * ONNX graph multiplies through both) */
        if (deq && !strcmp(t->name, t->origin))
            continue;
        if (!strcmp(t->name, t->origin)) {
            if (t->scheme == SLIM_SCHEME_COPY ||
                (t->scheme == SLIM_SCHEME_DENSE && !(sparse && t->pruned) &&
                 !entropy_applies(t, entropy, 0)))
                continue;
            e = describe(t, sparse, entropy);
        } else {
            /* a low-rank pair: W_u here, W_v next */
            const struct slim_tensor *src = t->src;
            struct slim_wt *v = i + 1 < w->n ? &w->wts[i + 1] : NULL;
            json_t *fu = deq ? describe_f32(t) : describe(t, sparse, entropy);
            json_t *fv = !v ? NULL : deq ? describe_f32(v) : describe(v, sparse, entropy), *names;
            e = json_pack("{s:s, s:o, s:s, s:I, s:[], s:{s:o, s:o}}", "scheme", "lowrank",
                          "shape", slim_shape_json(src), "dtype", slim_dtype_name(src->dtype),
                          "rank", (json_int_t)t->cols, "tensors", "factors", t->name, fu,
                          v ? v->name : "?", fv);
            if (!e)
                goto oom;
            names = json_object_get(e, "tensors");
            json_array_extend(names, json_object_get(fu, "tensors"));
            if (fv)
                json_array_extend(names, json_object_get(fv, "tensors"));
            i++;
        }
        if (!e)
            goto oom;
        json_object_set_new(entries, t->origin, e);
    }
    return 0;
oom:
    return slim_error_set(err, SLIM_ENOMEM, "out of memory building metadata");
}

int slim_artifact_metadata(json_t *model_md, json_t *passes, json_t *entries, json_t **out,
                           struct slim_error *err)
{
    json_t *md = json_deep_copy(model_md), *quant;
    char *text;
    if (!md)
        goto oom;
    json_object_set_new(md, "slimd.version", json_string(SLIMD_VERSION));
    if (!(text = json_dumps(passes, JSON_COMPACT)))
        goto oom;
    json_object_set_new(md, "slimd.passes", json_string(text));
    free(text);
    quant = json_array();
    for (size_t i = 0; quant && i < json_array_size(passes); i++) {
        json_t *p = json_array_get(passes, i);
        if (!strcmp(json_string_value(json_object_get(p, "op")), "quantize"))
            json_array_append(quant, p);
    }
    if (quant && json_array_size(quant)) {
        text = json_dumps(json_array_size(quant) == 1 ? json_array_get(quant, 0) : quant,
                          JSON_COMPACT);
        if (text)
            json_object_set_new(md, "slimd.quantization", json_string(text));
        free(text);
    }
    json_decref(quant);
    if (json_object_size(entries)) {
        if (!(text = json_dumps(entries, JSON_COMPACT)))
            goto oom;
        json_object_set_new(md, "slimd.tensors", json_string(text));
        free(text);
    }
    *out = md;
    return 0;
oom:
    json_decref(md);
    return slim_error_set(err, SLIM_ENOMEM, "out of memory building metadata");
}
