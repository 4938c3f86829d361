/*
 * onnx_plain.c - ONNX models without their weights and back: the graph
 * that slimd's entropy container carries (docs/artifact-format.md,
 * "Entropy-coded artifacts"), and the plain ONNX model that `slimd
 * decode` rebuilds from it.
 *
 * The container holds the model's ModelProto with every initializer
 * that slimd stores as a tensor reduced to a stub (name, dims and data
 * type, no data): the weights live, coded, in the safetensors part.  An
 * initializer of a type slimd does not store (strings, 4-bit types)
 * stays in the graph with its bytes, moved inline if it was in external
 * data.  Decoding unpacks that ModelProto, gives each stub the raw_data
 * of the decoded tensor of its name (checked against its type and
 * dims), and packs it as one .onnx file.  A model over protobuf's 2 GiB
 * cannot be one file: such a container is refused at decode with a
 * message saying so.
 */
#include <string.h>
#include "passes/decode.h"
#include "passes/formats/onnx.h"
#include "passes/formats/writer.h"

int slim_onnx_graph_stub(struct slim_onnx *m, const struct slim_model *kept, uint8_t **out,
                         size_t *len, struct slim_error *err)
{
    Onnx__GraphProto *g = m->graph, g2;
    Onnx__ModelProto mp = *m->model;
    Onnx__TensorProto **inits = slim_calloc(g->n_initializer + 1, sizeof *inits);
    Onnx__TensorProto *made = slim_calloc(g->n_initializer + 1, sizeof *made);
    uint8_t *buf = NULL;
    size_t size;
    int rc = 0;

    *out = NULL;
    *len = 0;
    if (!inits || !made) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
        goto out;
    }
    g2 = *g;
    for (size_t i = 0; i < g->n_initializer; i++) {
        const Onnx__TensorProto *tp = g->initializer[i];
        Onnx__TensorProto *s = &made[i];
        int external = tp->has_data_location &&
                       tp->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL;
        if (!(kept && tp->name && slim_model_find(kept, tp->name)) && !external) {
            inits[i] = g->initializer[i];
            continue;
        }
        onnx__tensor_proto__init(s);
        s->name = tp->name;
        s->n_dims = tp->n_dims;
        s->dims = tp->dims;
        s->has_data_type = tp->has_data_type;
        s->data_type = tp->data_type;
        if (!(kept && tp->name && slim_model_find(kept, tp->name))) {
            /* not stored by slimd but external: its bytes go inline */
            const void *data;
            size_t nbytes;
            int fb;
            if ((rc = slim_onnx_tensor_data(m, tp, &data, &nbytes, &fb, err)))
                goto out;
            s->has_raw_data = 1;
            s->raw_data.len = nbytes;
            s->raw_data.data = (uint8_t *)data;
        }
        inits[i] = s;
    }
    g2.initializer = inits;
    mp.graph = &g2;
    size = onnx__model_proto__get_packed_size(&mp);
    if (!(buf = slim_aligned_alloc(size + 1))) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory packing the graph");
        goto out;
    }
    onnx__model_proto__pack(&mp, buf);
    *out = buf;
    *len = size;
out:
    slim_free(inits);
    slim_free(made);
    return rc;
}

static const struct slim_tensor *find_decoded(const struct slim_tensor *t, size_t n,
                                              const char *name)
{
    for (size_t i = 0; name && i < n; i++)
        if (!strcmp(t[i].name, name))
            return &t[i];
    return NULL;
}

/* Packs mp into path, atomically. */
static int write_model(Onnx__ModelProto *mp, const char *path, struct slim_error *err)
{
    struct slim_writer *wr = NULL;
    size_t size = onnx__model_proto__get_packed_size(mp);
    struct slim_piece piece;
    uint8_t *buf;
    int rc;
    if (size > SLIM_ONNX_MAX_PROTO)
        return slim_error_set(err, SLIM_ETOOBIG, "the decoded model is %zu bytes, over "
                              "protobuf's 2 GiB for one .onnx file", size);
    if (!(buf = slim_aligned_alloc(size + 1)))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory (%zu bytes)", size);
    onnx__model_proto__pack(mp, buf);
    if ((rc = slim_writer_open(path, NULL, NULL, &wr, err))) {
        slim_aligned_free(buf);
        return rc;
    }
    piece = (struct slim_piece){buf, size};
    if ((rc = slim_writer_submit(wr, &piece, 1, (void *[]){buf}, 1, err))) {
        slim_writer_abort(wr);
        return rc;
    }
    return slim_writer_finish(wr, err);
}

int slim_onnx_plain_write(const void *graph, size_t glen, const struct slim_tensor *t,
                          size_t n, const char *path, struct slim_error *err)
{
    Onnx__ModelProto *mp = onnx__model_proto__unpack(NULL, glen, graph);
    ProtobufCBinaryData *saved = NULL;
    protobuf_c_boolean *had = NULL;
    Onnx__GraphProto *g;
    size_t done = 0;
    int rc = 0;

    if (!mp || !mp->graph) {
        rc = slim_error_set(err, SLIM_EFORMAT, "the container's ONNX graph does not parse");
        goto out;
    }
    g = mp->graph;
    saved = slim_calloc(g->n_initializer + 1, sizeof *saved);
    had = slim_calloc(g->n_initializer + 1, sizeof *had);
    if (!saved || !had) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < g->n_initializer; i++, done++) {
        Onnx__TensorProto *tp = g->initializer[i];
        const struct slim_tensor *d = find_decoded(t, n, tp->name);
        int64_t numel = 1;
        saved[i] = tp->raw_data;
        had[i] = tp->has_raw_data;
        if (!d)
            continue;
        for (size_t k = 0; k < tp->n_dims; k++) {
            if (tp->dims[k] < 0 || (tp->dims[k] && numel > INT64_MAX / tp->dims[k]))
                numel = -1;
            if (numel < 0)
                break;
            numel *= tp->dims[k];
        }
        if (!tp->has_data_type || tp->data_type != slim_onnx_from_dtype(d->dtype) ||
            numel != slim_tensor_numel(d)) {
            rc = slim_error_set(err, SLIM_EFORMAT, "initializer '%.100s': the graph says %s "
                                "x %lld, the decoded tensor %s x %lld", tp->name,
                                slim_onnx_type_name(tp->has_data_type ? tp->data_type : 0),
                                (long long)numel, slim_dtype_name(d->dtype),
                                (long long)slim_tensor_numel(d));
            goto out;
        }
        tp->has_raw_data = 1;
        tp->raw_data.len = d->nbytes;
        tp->raw_data.data = (uint8_t *)d->data;
    }
    for (size_t i = 0; i < g->n_initializer; i++) {
        const Onnx__TensorProto *tp = g->initializer[i];
        int nonempty = 1;
        for (size_t k = 0; k < tp->n_dims; k++)
            nonempty &= tp->dims[k] > 0;
        if (!tp->has_raw_data && nonempty && !tp->n_float_data && !tp->n_int32_data &&
            !tp->n_int64_data && !tp->n_double_data && !tp->n_uint64_data &&
            !tp->n_string_data) {
            rc = slim_error_set(err, SLIM_EFORMAT, "initializer '%.100s' has no data in the "
                                "container", tp->name);
            goto out;
        }
    }
    rc = write_model(mp, path, err);
out:
    /* the decoded bytes are the caller's: give protobuf-c back its own */
    for (size_t i = 0; mp && mp->graph && saved && i < done; i++) {
        mp->graph->initializer[i]->raw_data = saved[i];
        mp->graph->initializer[i]->has_raw_data = had[i];
    }
    slim_free(saved);
    slim_free(had);
    if (mp)
        onnx__model_proto__free_unpacked(mp, NULL);
    return rc;
}

/* ---- an ONNX artifact back to a plain graph ----------------------------------- */

/* The stored tensors of an ONNX artifact under the names its
 * "slimd.tensors" entries give them (the safetensors artifact's names
 * and layouts): most are an initializer's bytes as they are, int4 codes
 * are repacked into rows of whole bytes, 4-bit zero points unpacked. */
struct table {
    struct slim_tensor *t;
    size_t n, cap;
    void **bufs;
    size_t n_bufs, cap_bufs;
    json_t *idx;                    /* name -> index in t */
};

static const struct slim_tensor *table_find(void *ud, const char *name)
{
    struct table *tb = ud;
    json_t *i = json_object_get(tb->idx, name);
    return i ? &tb->t[json_integer_value(i)] : NULL;
}

static void *table_buf(struct table *tb, size_t n)
{
    void *p;
    if (tb->n_bufs == tb->cap_bufs) {
        size_t cap = tb->cap_bufs ? 2 * tb->cap_bufs : 32;
        void **b = slim_realloc(tb->bufs, cap * sizeof *b);
        if (!b)
            return NULL;
        tb->bufs = b;
        tb->cap_bufs = cap;
    }
    if (!(p = slim_aligned_alloc(n ? n : 1)))
        return NULL;
    memset(p, 0, n ? n : 1);
    tb->bufs[tb->n_bufs++] = p;
    return p;
}

static int table_add(struct table *tb, const char *name, enum slim_dtype dt, const void *data,
                     size_t nbytes)
{
    struct slim_tensor *t;
    if (!name)
        return 0;
    if (tb->n == tb->cap) {
        size_t cap = tb->cap ? 2 * tb->cap : 32;
        struct slim_tensor *g = slim_realloc(tb->t, cap * sizeof *g);
        if (!g)
            return SLIM_ENOMEM;
        tb->t = g;
        tb->cap = cap;
    }
    t = &tb->t[tb->n];
    memset(t, 0, sizeof *t);
    t->name = (char *)name;
    t->dtype = dt;
    t->ndim = 1;
    t->shape[0] = (int64_t)(nbytes / slim_dtype_size(dt));
    t->data = data;
    t->nbytes = nbytes;
    json_object_set_new(tb->idx, name, json_integer((json_int_t)tb->n));
    tb->n++;
    return 0;
}

static const Onnx__TensorProto *init_named(const Onnx__GraphProto *g, const char *name)
{
    for (size_t i = 0; i < g->n_initializer; i++)
        if (g->initializer[i]->name && !strcmp(g->initializer[i]->name, name))
            return g->initializer[i];
    return NULL;
}

/* The bytes of the initializer named base + suffix; SLIM_EFORMAT when
 * it is missing (optional: 0 with *data NULL). */
static int init_bytes(struct slim_onnx *m, const char *base, const char *suffix, int optional,
                      const Onnx__TensorProto **tp, const void **data, size_t *nbytes,
                      struct slim_error *err)
{
    char name[600];
    int fb;
    snprintf(name, sizeof name, "%.500s%s", base, suffix);
    *data = NULL;
    *nbytes = 0;
    if (!(*tp = init_named(m->graph, name)))
        return optional ? 0 : slim_error_set(err, SLIM_EFORMAT, "tensor '%.100s': the "
                                             "artifact has no initializer '%.100s'", base, name);
    return slim_onnx_tensor_data(m, *tp, data, nbytes, &fb, err);
}

/* The bit mask of a sparse clustered weight written with gap symbols
 * (W_gaps, onnx_write.c's gap_symbols: 4 bits each, 0..14 = that many
 * zeros then a weight, 15 = fifteen zeros), rebuilt for the safetensors
 * decoder under the entry's mask name. */
static int mask_from_gaps(struct slim_onnx *m, struct table *tb, json_t *e, const char *out,
                          const char *mask, struct slim_error *err)
{
    const Onnx__TensorProto *tp;
    const uint8_t *g;
    const void *d;
    size_t nb, n = 1;
    json_t *sh = json_object_get(e, "shape");
    uint8_t *bits;
    int64_t pos = -1;
    int rc;
    if ((rc = init_bytes(m, out, "_gaps", 0, &tp, &d, &nb, err)))
        return rc;
    for (size_t i = 0; i < json_array_size(sh); i++) {
        json_int_t v = json_integer_value(json_array_get(sh, i));
        if (v < 0 || (v && n > ((size_t)1 << 40) / (size_t)v))
            return slim_error_set(err, SLIM_EFORMAT, "tensor '%.100s': bad shape", out);
        n *= (size_t)v;
    }
    if (!(bits = table_buf(tb, (n + 7) / 8 + 1)))
        return SLIM_ENOMEM;
    g = d;
    for (size_t k = 0; k < 2 * nb; k++) {
        int sym = (g[k / 2] >> ((k & 1) * 4)) & 15;
        if (sym == 15) {
            pos += 15;
            continue;
        }
        pos += sym + 1;
        if (pos >= (int64_t)n)
            return slim_error_set(err, SLIM_EFORMAT, "tensor '%.100s': its gaps run past its "
                                  "%zu weights", out, n);
        bits[pos >> 3] |= (uint8_t)(1u << (pos & 7));
    }
    return table_add(tb, mask, SLIM_DT_U8, bits, (n + 7) / 8);
}

/* Registers what entry e of the value `out` stores, under its
 * safetensors names; *e2 may become a changed copy of e (a sparse
 * initializer is read dense). */
static int table_entry(struct slim_onnx *m, struct table *tb, json_t *e, const char *out,
                       json_t **e2, struct slim_error *err)
{
    const char *scheme = json_string_value(json_object_get(e, "scheme"));
    json_t *names = json_object_get(e, "tensors");
    const char *main = json_string_value(json_array_get(names, 0));
    const char *scale = json_string_value(json_object_get(e, "scale"));
    const char *zpn = json_string_value(json_object_get(e, "zero_point"));
    const Onnx__TensorProto *tp;
    const void *d;
    size_t nb;
    int rc;

    *e2 = NULL;
    if (!scheme || !main)
        return slim_error_set(err, SLIM_EFORMAT, "tensor '%.100s': malformed slimd.tensors "
                              "entry", out);
    if (json_is_true(json_object_get(e, "sparse")) && !strcmp(scheme, "cluster")) {
        /* the bit mask and the stored weights' codes, as in safetensors */
        const char *mask = json_string_value(json_object_get(e, "mask"));
        const char *cb = json_string_value(json_object_get(e, "codebook"));
        if (!mask || !cb)
            return slim_error_set(err, SLIM_EFORMAT, "tensor '%.100s': malformed sparse "
                                  "cluster entry", out);
        if ((rc = init_bytes(m, out, "_mask", 1, &tp, &d, &nb, err)))
            return rc;
        if (!d && (rc = mask_from_gaps(m, tb, e, out, mask, err)))
            return rc;
        if ((d && (rc = table_add(tb, mask, SLIM_DT_U8, d, nb))) ||
            (rc = init_bytes(m, out, "_indices", 0, &tp, &d, &nb, err)) ||
            (rc = table_add(tb, main, SLIM_DT_U8, d, nb)) ||
            (rc = init_bytes(m, out, "_codebook", 0, &tp, &d, &nb, err)))
            return rc;
        return table_add(tb, cb, SLIM_DT_F32, d, nb);
    }
    if (json_is_true(json_object_get(e, "sparse"))) {
        const Onnx__GraphProto *g = m->graph;
        const Onnx__TensorProto *dense = NULL;
        for (size_t i = 0; i < g->n_sparse_initializer && !dense; i++) {
            const Onnx__SparseTensorProto *sp = g->sparse_initializer[i];
            if (sp->values && sp->values->name && !strcmp(sp->values->name, out) &&
                (rc = slim_onnx_sparse_dense(m, sp, &dense, err)))
                return rc;
        }
        if (!dense)
            return slim_error_set(err, SLIM_EFORMAT, "tensor '%.100s': no sparse_initializer "
                                  "of that name", out);
        if ((rc = slim_onnx_tensor_data(m, dense, &d, &nb, NULL, err)))
            return rc;
        if (!(*e2 = json_deep_copy(e)))
            return SLIM_ENOMEM;
        json_object_del(*e2, "sparse");
        json_object_del(*e2, "mask");
        return table_add(tb, main, SLIM_DT_F32, d, nb);
    }
    if (!strcmp(scheme, "int8")) {
        if ((rc = init_bytes(m, out, "_quantized", 0, &tp, &d, &nb, err)) ||
            (rc = table_add(tb, main, SLIM_DT_I8, d, nb)) ||
            (rc = init_bytes(m, out, "_scale", 0, &tp, &d, &nb, err)) ||
            (rc = table_add(tb, scale, SLIM_DT_F32, d, nb)))
            return rc;
        if (zpn && ((rc = init_bytes(m, out, "_zero_point", 0, &tp, &d, &nb, err)) ||
                    (rc = table_add(tb, zpn, SLIM_DT_I8, d, nb))))
            return rc;
        return 0;
    }
    if (!strcmp(scheme, "int4")) {
        json_t *sh = json_object_get(e, "shape");
        int64_t rows = 1, cols = 1, g = json_integer_value(json_object_get(e, "group_size"));
        int64_t ng, rb, pw;
        uint8_t *codes, *zp;
        const uint8_t *q;
        size_t qb;
        int u4;
        for (size_t i = 0; i < json_array_size(sh); i++) {
            int64_t v = json_integer_value(json_array_get(sh, i));
            if (v < 0 || v > ((int64_t)1 << 32))
                return slim_error_set(err, SLIM_EFORMAT, "tensor '%.100s': bad shape", out);
            if (i == 0)
                rows = v;
            else if (v && cols > ((int64_t)1 << 34) / v)
                return slim_error_set(err, SLIM_EFORMAT, "tensor '%.100s': bad shape", out);
            else
                cols *= v;
        }
        if (g <= 0 || rows * cols > ((int64_t)1 << 34))
            return slim_error_set(err, SLIM_EFORMAT, "tensor '%.100s': bad int4 entry", out);
        ng = (cols + g - 1) / g;
        rb = (cols + 1) / 2;
        pw = (ng * g + 1) / 2;
        if ((rc = init_bytes(m, out, "_quantized", 0, &tp, &d, &qb, err)))
            return rc;
        q = d;
        u4 = tp->has_data_type && tp->data_type == SLIM_ONNX_UINT4;
        if ((size_t)(u4 ? (rows * cols + 1) / 2 : rows * pw) != qb)
            return slim_error_set(err, SLIM_EFORMAT, "tensor '%.100s': its int4 codes do not "
                                  "fit its shape", out);
        if (!(codes = table_buf(tb, (size_t)(rows * rb))))
            return SLIM_ENOMEM;
        for (int64_t r = 0; r < rows; r++) {
            if (!u4) {
                memcpy(codes + r * rb, q + r * pw, (size_t)rb);
                continue;
            }
            for (int64_t k = 0; k < cols; k++) {
                int64_t at = r * cols + k;
                int code = q[at / 2] >> ((at & 1) * 4) & 15;
                codes[r * rb + k / 2] |= (uint8_t)(code << ((k & 1) * 4));
            }
        }
        if ((rc = table_add(tb, main, SLIM_DT_U8, codes, (size_t)(rows * rb))) ||
            (rc = init_bytes(m, out, "_scale", 0, &tp, &d, &nb, err)) ||
            (rc = table_add(tb, scale, SLIM_DT_F32, d, nb)) ||
            (rc = init_bytes(m, out, "_zero_point", 1, &tp, &d, &nb, err)))
            return rc;
        if (!(zp = table_buf(tb, (size_t)(rows * ng))))
            return SLIM_ENOMEM;
        if (!d) {
            memset(zp, 8, (size_t)(rows * ng)); /* symmetric: the scalar 8 */
        } else if (tp->has_data_type && tp->data_type == SLIM_ONNX_UINT4) {
            if (nb != (size_t)((rows * ng + 1) / 2))
                return slim_error_set(err, SLIM_EFORMAT, "tensor '%.100s': bad zero point", out);
            for (int64_t i = 0; i < rows * ng; i++)
                zp[i] = (uint8_t)(((const uint8_t *)d)[i / 2] >> ((i & 1) * 4) & 15);
        } else {
            if (nb != (size_t)(rows * ng))
                return slim_error_set(err, SLIM_EFORMAT, "tensor '%.100s': bad zero point", out);
            memcpy(zp, d, nb);
        }
        return table_add(tb, zpn ? zpn : "", SLIM_DT_U8, zp, (size_t)(rows * ng));
    }
    if (!strcmp(scheme, "ternary") || !strcmp(scheme, "binary")) {
        if ((rc = init_bytes(m, out, "_packed", 0, &tp, &d, &nb, err)) ||
            (rc = table_add(tb, main, SLIM_DT_U8, d, nb)) ||
            (rc = init_bytes(m, out, "_scale", 0, &tp, &d, &nb, err)))
            return rc;
        return table_add(tb, scale, SLIM_DT_F32, d, nb);
    }
    if (!strcmp(scheme, "cluster")) {
        const char *cb = json_string_value(json_object_get(e, "codebook"));
        if ((rc = init_bytes(m, out, "_indices", 0, &tp, &d, &nb, err)) ||
            (rc = table_add(tb, main, SLIM_DT_U8, d, nb)) ||
            (rc = init_bytes(m, out, "_codebook", 0, &tp, &d, &nb, err)))
            return rc;
        return table_add(tb, cb, SLIM_DT_F32, d, nb);
    }
    if (!strcmp(scheme, "fp16") || !strcmp(scheme, "bf16")) {
        int f16 = !strcmp(scheme, "fp16");
        if ((rc = init_bytes(m, out, f16 ? "_fp16" : "_bf16", 0, &tp, &d, &nb, err)))
            return rc;
        return table_add(tb, main, f16 ? SLIM_DT_F16 : SLIM_DT_BF16, d, nb);
    }
    if (!strcmp(scheme, "dense")) {
        const char *sd = json_string_value(json_object_get(e, "stored_dtype"));
        enum slim_dtype dt = SLIM_DT_F32;
        if (sd && slim_dtype_parse(sd, &dt))
            return slim_error_set(err, SLIM_EFORMAT, "tensor '%.100s': bad stored_dtype", out);
        if ((rc = init_bytes(m, out, "", 0, &tp, &d, &nb, err)))
            return rc;
        return table_add(tb, main, dt, d, nb);
    }
    return slim_error_set(err, SLIM_EFORMAT, "tensor '%.100s': unknown scheme '%.40s'", out,
                          scheme);
}

/* A decoded weight: its values as the graph's tensor of that name. */
struct dec {
    char name[256];
    float *val;
    int type;                       /* the ONNX type the graph reads it as */
    uint16_t *half;                 /* its FLOAT16/BFLOAT16 form, when that */
    int64_t dims[SLIM_MAX_DIMS];
    int ndim;
    size_t n;
};

static int entry_dims(json_t *e, int64_t *dims, int *ndim, size_t *n)
{
    json_t *sh = json_object_get(e, "shape");
    *n = 1;
    *ndim = (int)json_array_size(sh);
    if (*ndim > SLIM_MAX_DIMS)
        return -1;
    for (int i = 0; i < *ndim; i++) {
        dims[i] = json_integer_value(json_array_get(sh, (size_t)i));
        *n *= (size_t)dims[i];
    }
    return 0;
}

/* Uses of each value name by the kept nodes and the graph's outputs. */
static void count_uses(const Onnx__GraphProto *g, const unsigned char *gone, json_t *uses)
{
    json_object_clear(uses);
    for (size_t i = 0; i < g->n_node; i++) {
        if (gone[i])
            continue;
        for (size_t k = 0; k < g->node[i]->n_input; k++) {
            const char *in = g->node[i]->input[k];
            if (in && *in)
                json_object_set_new(uses, in, json_integer(
                    json_integer_value(json_object_get(uses, in)) + 1));
        }
    }
    for (size_t i = 0; i < g->n_output; i++)
        if (g->output[i]->name)
            json_object_set_new(uses, g->output[i]->name, json_integer(1 << 20));
}

int slim_onnx_plain_from_artifact(const char *in_path, const char *path,
                                  struct slim_error *err)
{
    struct slim_onnx m;
    struct table tb;
    struct dec *dec = NULL;
    size_t n_dec = 0, cap_dec = 0;
    json_t *entries = NULL, *uses = json_object(), *e, *copies = json_array();
    const char *key, *text = NULL, *version = NULL;
    unsigned char *gone = NULL, *init_gone = NULL;
    Onnx__GraphProto *g, g2;
    Onnx__ModelProto mp;
    Onnx__TensorProto *made = NULL, **inits = NULL;
    Onnx__NodeProto **nodes = NULL;
    Onnx__SparseTensorProto **sparse = NULL;
    Onnx__ValueInfoProto **inputs = NULL;
    size_t n_made = 0, n_inits = 0, n_nodes = 0, n_sparse = 0, n_inputs = 0;
    json_error_t jerr;
    int rc;

    memset(&tb, 0, sizeof tb);
    tb.idx = json_object();
    memset(&m, 0, sizeof m);
    if ((rc = slim_onnx_open(in_path, &m, err)))
        goto out_nom;
    g = m.graph;
    for (size_t i = 0; i < m.model->n_metadata_props; i++) {
        const Onnx__StringStringEntryProto *kv = m.model->metadata_props[i];
        if (kv->key && !strcmp(kv->key, "slimd.tensors"))
            text = kv->value;
        if (kv->key && !strcmp(kv->key, "slimd.version"))
            version = kv->value;
    }
    if (!version) {
        rc = slim_error_set(err, SLIM_EFORMAT, "not a slimd artifact: an ONNX model without "
                            "slimd.version in its metadata_props");
        goto out;
    }
    if (!uses || !copies || !tb.idx) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
        goto out;
    }
    entries = text ? json_loads(text, JSON_REJECT_DUPLICATES, &jerr) : json_object();
    if (!json_is_object(entries)) {
        rc = slim_error_set(err, SLIM_EFORMAT, "slimd.tensors: not a JSON object");
        goto out;
    }
    /* every stored tensor, then every weight decoded (low rank: its
     * factors, used by split nodes, and the product, for other uses) */
    json_object_foreach(entries, key, e) {
        json_t *list[3];
        const char *lname[3];
        int nl = 0;
        if (!strcmp(json_string_value(json_object_get(e, "scheme")) ?
                    json_string_value(json_object_get(e, "scheme")) : "", "lowrank")) {
            const char *fk;
            json_t *fe;
            json_object_foreach(json_object_get(e, "factors"), fk, fe) {
                if (nl < 2) {
                    list[nl] = fe;
                    lname[nl++] = fk;
                }
            }
        }
        list[nl] = e;
        lname[nl++] = key;
        for (int k = 0; k < nl; k++) {
            json_t *e2 = NULL, *use;
            struct dec *d;
            if (k < nl - 1 || nl == 1) {
                if ((rc = table_entry(&m, &tb, list[k], lname[k], &e2, err)))
                    goto out;
                if (e2)
                    json_array_append_new(copies, e2);
            }
            use = e2 ? e2 : list[k];
            if (k == nl - 1 && nl > 1)
                use = e;
            if (n_dec == cap_dec) {
                size_t cap = cap_dec ? 2 * cap_dec : 16;
                struct dec *nd = slim_realloc(dec, cap * sizeof *nd);
                if (!nd) {
                    rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
                    goto out;
                }
                dec = nd;
                cap_dec = cap;
            }
            d = &dec[n_dec];
            memset(d, 0, sizeof *d);
            snprintf(d->name, sizeof d->name, "%s", lname[k]);
            if (entry_dims(use, d->dims, &d->ndim, &d->n)) {
                rc = slim_error_set(err, SLIM_EFORMAT, "tensor '%.100s': bad shape", lname[k]);
                goto out;
            }
            if ((rc = slim_decode_entry(&(struct slim_stored){table_find, &tb}, use, lname[k],
                                        &d->val, err)))
                goto out;
            n_dec++;
        }
    }
    /* the nodes that made a decoded weight go, then whatever only they fed */
    gone = slim_calloc(g->n_node + 1, 1);
    init_gone = slim_calloc(g->n_initializer + 1, 1);
    if (!gone || !init_gone) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t j = 0; j < n_dec; j++)
        dec[j].type = SLIM_ONNX_FLOAT;
    for (size_t i = 0; i < g->n_node; i++)
        for (size_t k = 0; k < g->node[i]->n_output; k++)
            for (size_t j = 0; j < n_dec; j++)
                if (g->node[i]->output[k] && !strcmp(g->node[i]->output[k], dec[j].name)) {
                    /* a float16 graph's weight comes out of a Cast to FLOAT16 */
                    const Onnx__AttributeProto *to = slim_onnx_attr(g->node[i], "to");
                    gone[i] = 1;
                    if (g->node[i]->op_type && !strcmp(g->node[i]->op_type, "Cast") && to &&
                        (to->i == SLIM_ONNX_FLOAT16 || to->i == SLIM_ONNX_BFLOAT16))
                        dec[j].type = (int)to->i;
                }
    for (int changed = 1; changed;) {
        changed = 0;
        count_uses(g, gone, uses);
        for (size_t i = 0; i < g->n_node; i++) {
            int used = 0;
            if (gone[i])
                continue;
            for (size_t k = 0; k < g->node[i]->n_output; k++)
                used |= g->node[i]->output[k] && *g->node[i]->output[k] &&
                        json_object_get(uses, g->node[i]->output[k]) != NULL;
            if (!used && g->node[i]->n_output) {
                gone[i] = 1;
                changed = 1;
            }
        }
    }
    count_uses(g, gone, uses);
    nodes = slim_calloc(g->n_node + 1, sizeof *nodes);
    inits = slim_calloc(g->n_initializer + n_dec + 1, sizeof *inits);
    made = slim_calloc(g->n_initializer + n_dec + 1, sizeof *made);
    sparse = slim_calloc(g->n_sparse_initializer + 1, sizeof *sparse);
    inputs = slim_calloc(g->n_input + 1, sizeof *inputs);
    if (!nodes || !inits || !made || !sparse || !inputs) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < g->n_node; i++)
        if (!gone[i])
            nodes[n_nodes++] = g->node[i];
    /* initializers still read, inline */
    for (size_t i = 0; i < g->n_initializer; i++) {
        Onnx__TensorProto *tp = g->initializer[i];
        if (!tp->name || !json_object_get(uses, tp->name)) {
            init_gone[i] = 1;
            continue;
        }
        if (tp->has_data_location &&
            tp->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL) {
            Onnx__TensorProto *c = &made[n_made++];
            const void *d;
            size_t nb;
            if ((rc = slim_onnx_tensor_data(&m, tp, &d, &nb, NULL, err)))
                goto out;
            onnx__tensor_proto__init(c);
            c->name = tp->name;
            c->n_dims = tp->n_dims;
            c->dims = tp->dims;
            c->has_data_type = tp->has_data_type;
            c->data_type = tp->data_type;
            c->has_raw_data = 1;
            c->raw_data.len = nb;
            c->raw_data.data = (uint8_t *)d;
            tp = c;
        }
        inits[n_inits++] = tp;
    }
    /* the decoded weights that something reads and no initializer holds */
    for (size_t j = 0; j < n_dec; j++) {
        Onnx__TensorProto *c;
        int have = 0;
        if (!json_object_get(uses, dec[j].name))
            continue;
        for (size_t i = 0; i < n_inits && !have; i++)
            have = !strcmp(inits[i]->name, dec[j].name);
        if (have)
            continue;
        c = &made[n_made++];
        onnx__tensor_proto__init(c);
        c->name = dec[j].name;
        c->n_dims = (size_t)dec[j].ndim;
        c->dims = dec[j].dims;
        c->has_data_type = 1;
        c->data_type = dec[j].type;
        c->has_raw_data = 1;
        c->raw_data.len = dec[j].n * sizeof(float);
        c->raw_data.data = (uint8_t *)dec[j].val;
        if (dec[j].type != SLIM_ONNX_FLOAT) {
            if (!(dec[j].half = slim_malloc(dec[j].n * sizeof *dec[j].half + 1))) {
                rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
                goto out;
            }
            for (size_t k = 0; k < dec[j].n; k++)
                dec[j].half[k] = dec[j].type == SLIM_ONNX_FLOAT16 ? slim_f32_to_f16(dec[j].val[k])
                                                                 : slim_f32_to_bf16(dec[j].val[k]);
            c->raw_data.len = dec[j].n * sizeof *dec[j].half;
            c->raw_data.data = (uint8_t *)dec[j].half;
        }
        inits[n_inits++] = c;
    }
    for (size_t i = 0; i < g->n_sparse_initializer; i++) {
        const Onnx__SparseTensorProto *sp = g->sparse_initializer[i];
        int decoded = 0;
        for (size_t j = 0; j < n_dec && !decoded; j++)
            decoded = sp->values && sp->values->name && !strcmp(sp->values->name, dec[j].name);
        if (!decoded)
            sparse[n_sparse++] = g->sparse_initializer[i];
    }
    /* inputs that were initializers now gone are gone too */
    for (size_t i = 0; i < g->n_input; i++) {
        int drop = 0;
        for (size_t k = 0; k < g->n_initializer && !drop; k++)
            drop = init_gone[k] && g->input[i]->name &&
                   !strcmp(g->input[i]->name, g->initializer[k]->name);
        if (!drop)
            inputs[n_inputs++] = g->input[i];
    }
    mp = *m.model;
    g2 = *g;
    g2.n_node = n_nodes;
    g2.node = nodes;
    g2.n_initializer = n_inits;
    g2.initializer = inits;
    g2.n_sparse_initializer = n_sparse;
    g2.sparse_initializer = sparse;
    g2.n_input = n_inputs;
    g2.input = inputs;
    mp.graph = &g2;
    rc = write_model(&mp, path, err);
out:
    slim_onnx_release(&m);
out_nom:
    for (size_t j = 0; j < n_dec; j++) {
        slim_aligned_free(dec[j].val);
        slim_free(dec[j].half);
    }
    slim_free(dec);
    for (size_t i = 0; i < tb.n_bufs; i++)
        slim_aligned_free(tb.bufs[i]);
    slim_free(tb.bufs);
    slim_free(tb.t);
    json_decref(tb.idx);
    json_decref(entries);
    json_decref(uses);
    json_decref(copies);
    slim_free(gone);
    slim_free(init_gone);
    slim_free(nodes);
    slim_free(inits);
    slim_free(made);
    slim_free(sparse);
    slim_free(inputs);
    return rc;
}
