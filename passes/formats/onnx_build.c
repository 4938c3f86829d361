/*
 * onnx_build.c - ONNX models made in memory and saved whole: the
 * training passes' intermediate files (a trained model, slim_onnx_save)
 * and the MLP student that `distill` builds from a shape
 * ({"hidden": [w1, ...]}, slim_onnx_mlp).
 *
 * A trained model is small enough to live inline: slim_trainer_store
 * (engine/train.h) puts its weights into the ModelProto as raw_data, and
 * slim_onnx_save packs that ModelProto as it is, through the artifact
 * writer (temp file, fsync, rename).  The graph is not rebuilt, so every
 * node, attribute and name the user's model had survives training.
 * Rejected: going through slim_onnx_write (the artifact writer), which
 * wants the stored tensors of a compression plan, not a trained graph.
 *
 * The MLP is Flatten (when a sample has more than one dim), then
 * Gemm(transB = 1) + Relu per hidden width, then a Gemm to the classes:
 * the same layout torch's nn.Linear exports, at opset 13, so ONNX Runtime
 * and every other reader runs it.  Weights are He-initialised (He et al.
 * 2015: normal with variance 2 / fan_in, as torch's kaiming_normal_) from
 * a seeded xorshift generator with Box-Muller; biases are zero.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "passes/formats/onnx_build.h"
#include "passes/formats/writer.h"

struct pbuf {
    ProtobufCBuffer base;
    unsigned char *data;
    size_t len, cap;
    int oom;
};

static void pbuf_append(ProtobufCBuffer *b, size_t len, const uint8_t *data)
{
    struct pbuf *p = (struct pbuf *)b;
    if (p->oom)
        return;
    if (p->len + len > p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 1 << 16;
        while (cap < p->len + len)
            cap *= 2;
        unsigned char *d = slim_realloc(p->data, cap);
        if (!d) {
            p->oom = 1;
            return;
        }
        p->data = d;
        p->cap = cap;
    }
    memcpy(p->data + p->len, data, len);
    p->len += len;
}

int slim_onnx_save_proto(Onnx__ModelProto *mp, const char *path, struct slim_error *err)
{
    struct pbuf p;
    struct slim_writer *wr = NULL;
    struct slim_piece piece;
    int rc;
    memset(&p, 0, sizeof p);
    p.base.append = pbuf_append;
    protobuf_c_message_pack_to_buffer(&mp->base, &p.base);
    if (p.oom) {
        slim_free(p.data);
        return slim_error_set(err, SLIM_ENOMEM, "out of memory packing the model");
    }
    if ((rc = slim_writer_open(path, NULL, NULL, &wr, err))) {
        slim_free(p.data);
        return rc;
    }
    piece = (struct slim_piece){p.data, p.len};
    /* the writer frees what it owns with slim_aligned_free: keep ours */
    if ((rc = slim_writer_submit(wr, &piece, 1, NULL, 0, err))) {
        slim_writer_abort(wr);
        slim_free(p.data);
        return rc;
    }
    rc = slim_writer_finish(wr, err);
    slim_free(p.data);
    return rc;
}

int slim_onnx_save(struct slim_onnx *m, const char *path, struct slim_error *err)
{
    for (size_t i = 0; i < m->graph->n_initializer; i++)
        if (m->graph->initializer[i]->n_external_data)
            return slim_error_set(err, SLIM_EINTERNAL, "initializer '%.100s' is still in "
                                  "external data", m->graph->initializer[i]->name);
    return slim_onnx_save_proto(m->model, path, err);
}

/* ---- the MLP ------------------------------------------------------------- */

/* Everything the MLP's ModelProto points to, freed at once. */
struct mlp {
    void **p;
    size_t n, cap;
    int oom;
};

static void *take(struct mlp *m, void *p)
{
    if (!p) {
        m->oom = 1;
        return NULL;
    }
    if (m->n == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 64;
        void **q = slim_realloc(m->p, cap * sizeof *q);
        if (!q) {
            slim_free(p);
            m->oom = 1;
            return NULL;
        }
        m->p = q;
        m->cap = cap;
    }
    return m->p[m->n++] = p;
}

static void *zalloc(struct mlp *m, size_t n)
{
    return take(m, slim_calloc(1, n ? n : 1));
}

static char *str(struct mlp *m, const char *s)
{
    return take(m, slim_strdup(s));
}

static Onnx__ValueInfoProto *value_info(struct mlp *m, const char *name, const int64_t *dims,
                                        int ndim)
{
    Onnx__ValueInfoProto *v = zalloc(m, sizeof *v);
    Onnx__TypeProto *tp = zalloc(m, sizeof *tp);
    Onnx__TypeProto__Tensor *tt = zalloc(m, sizeof *tt);
    Onnx__TensorShapeProto *sh = zalloc(m, sizeof *sh);
    Onnx__TensorShapeProto__Dimension **d = zalloc(m, (size_t)(ndim + 1) * sizeof *d);
    if (m->oom)
        return NULL;
    onnx__value_info_proto__init(v);
    onnx__type_proto__init(tp);
    onnx__type_proto__tensor__init(tt);
    onnx__tensor_shape_proto__init(sh);
    for (int i = 0; i <= ndim; i++) {
        if (!(d[i] = zalloc(m, sizeof *d[i])))
            return NULL;
        onnx__tensor_shape_proto__dimension__init(d[i]);
        if (i == 0) {
            d[i]->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
            d[i]->dim_param = str(m, "batch");
        } else {
            d[i]->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
            d[i]->dim_value = dims[i - 1];
        }
    }
    sh->n_dim = (size_t)ndim + 1;
    sh->dim = d;
    tt->has_elem_type = 1;
    tt->elem_type = SLIM_ONNX_FLOAT;
    tt->shape = sh;
    tp->value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
    tp->tensor_type = tt;
    v->name = str(m, name);
    v->type = tp;
    return m->oom ? NULL : v;
}

static Onnx__NodeProto *node(struct mlp *m, const char *op, const char *name, int n_in,
                             const char *const *in, const char *out)
{
    Onnx__NodeProto *n = zalloc(m, sizeof *n);
    char **ins = zalloc(m, (size_t)n_in * sizeof *ins), **outs = zalloc(m, sizeof *outs);
    if (m->oom)
        return NULL;
    onnx__node_proto__init(n);
    for (int i = 0; i < n_in; i++)
        ins[i] = str(m, in[i]);
    outs[0] = str(m, out);
    n->n_input = (size_t)n_in;
    n->input = ins;
    n->n_output = 1;
    n->output = outs;
    n->name = str(m, name);
    n->op_type = str(m, op);
    return m->oom ? NULL : n;
}

static void attr_int(struct mlp *m, Onnx__NodeProto *n, const char *name, int64_t v)
{
    Onnx__AttributeProto *a = zalloc(m, sizeof *a);
    Onnx__AttributeProto **list = zalloc(m, sizeof *list);
    if (m->oom || !n)
        return;
    onnx__attribute_proto__init(a);
    a->name = str(m, name);
    a->has_type = 1;
    a->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT;
    a->has_i = 1;
    a->i = v;
    list[0] = a;
    n->n_attribute = 1;
    n->attribute = list;
}

static Onnx__TensorProto *init_f32(struct mlp *m, const char *name, int ndim,
                                   const int64_t *dims, float **data)
{
    Onnx__TensorProto *t = zalloc(m, sizeof *t);
    int64_t *d = zalloc(m, (size_t)ndim * sizeof *d), n = 1;
    if (m->oom)
        return NULL;
    onnx__tensor_proto__init(t);
    for (int i = 0; i < ndim; i++)
        n *= d[i] = dims[i];
    t->n_dims = (size_t)ndim;
    t->dims = d;
    t->has_data_type = 1;
    t->data_type = SLIM_ONNX_FLOAT;
    t->name = str(m, name);
    t->has_raw_data = 1;
    t->raw_data.len = (size_t)n * sizeof(float);
    t->raw_data.data = zalloc(m, t->raw_data.len);
    *data = (float *)t->raw_data.data;
    return m->oom ? NULL : t;
}

/* xorshift64* through Box-Muller: N(0, 1). */
static double gauss(uint64_t *s)
{
    double u1, u2;
    do {
        *s ^= *s >> 12, *s ^= *s << 25, *s ^= *s >> 27;
        u1 = (double)((*s * 0x2545F4914F6CDD1Dull) >> 11) * (1.0 / 9007199254740992.0);
    } while (u1 <= 0.0);
    *s ^= *s >> 12, *s ^= *s << 25, *s ^= *s >> 27;
    u2 = (double)((*s * 0x2545F4914F6CDD1Dull) >> 11) * (1.0 / 9007199254740992.0);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

int slim_onnx_mlp(const struct slim_mlp_shape *s, const char *path, struct slim_error *err)
{
    struct mlp m;
    Onnx__ModelProto mp;
    Onnx__GraphProto g;
    Onnx__OperatorSetIdProto ops, *opsp = &ops;
    Onnx__NodeProto **nodes;
    Onnx__TensorProto **inits;
    Onnx__ValueInfoProto *in, *out;
    int64_t in_features = 1, odims[1] = {s->classes};
    uint64_t seed = s->seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B9E28Dull;
    char cur[64], name[64];
    int n_layers = s->n_hidden + 1, nn = 0, ni = 0, rc;

    if (s->ndim < 1 || s->classes < 1 || s->n_hidden < 0 || s->n_hidden > SLIM_MLP_MAX_HIDDEN)
        return slim_error_set(err, SLIM_EINVAL, "the MLP needs a sample shape, classes and at "
                              "most %d hidden layers", SLIM_MLP_MAX_HIDDEN);
    for (int i = 0; i < s->ndim; i++)
        in_features *= s->dims[i];
    memset(&m, 0, sizeof m);
    nodes = zalloc(&m, (size_t)(2 * n_layers + 1) * sizeof *nodes);
    inits = zalloc(&m, (size_t)(2 * n_layers) * sizeof *inits);
    in = value_info(&m, s->input_name, s->dims, s->ndim);
    out = value_info(&m, s->output_name, odims, 1);
    if (m.oom)
        goto oom;
    snprintf(cur, sizeof cur, "%s", s->input_name);
    if (s->ndim > 1) {
        Onnx__NodeProto *f = node(&m, "Flatten", "flatten", 1, (const char *[]){cur}, "flat");
        attr_int(&m, f, "axis", 1);
        nodes[nn++] = f;
        snprintf(cur, sizeof cur, "flat");
    }
    for (int l = 0, fan_in = (int)in_features; l < n_layers; l++) {
        int64_t width = l < s->n_hidden ? s->hidden[l] : s->classes;
        int64_t wd[2] = {width, fan_in}, bd[1] = {width};
        char wn[32], bn[32], y[64];
        float *wv, *bv;
        double sd = sqrt(2.0 / (double)fan_in);
        snprintf(wn, sizeof wn, "fc%d.weight", l + 1);
        snprintf(bn, sizeof bn, "fc%d.bias", l + 1);
        inits[ni++] = init_f32(&m, wn, 2, wd, &wv);
        inits[ni++] = init_f32(&m, bn, 1, bd, &bv);
        if (m.oom)
            goto oom;
        for (int64_t k = 0; k < width * fan_in; k++)
            wv[k] = (float)(sd * gauss(&seed));
        if (l == n_layers - 1)
            snprintf(y, sizeof y, "%s", s->output_name);
        else
            snprintf(y, sizeof y, "fc%d", l + 1);
        snprintf(name, sizeof name, "fc%d", l + 1);
        Onnx__NodeProto *gm = node(&m, "Gemm", name, 3, (const char *[]){cur, wn, bn}, y);
        attr_int(&m, gm, "transB", 1);
        nodes[nn++] = gm;
        snprintf(cur, sizeof cur, "%s", y);
        if (l < n_layers - 1) {
            snprintf(name, sizeof name, "relu%d", l + 1);
            snprintf(y, sizeof y, "relu%d", l + 1);
            nodes[nn++] = node(&m, "Relu", name, 1, (const char *[]){cur}, y);
            snprintf(cur, sizeof cur, "%s", y);
        }
        fan_in = (int)width;
        if (m.oom)
            goto oom;
    }
    onnx__graph_proto__init(&g);
    g.name = "slimd_mlp_student";
    g.n_node = (size_t)nn;
    g.node = nodes;
    g.n_initializer = (size_t)ni;
    g.initializer = inits;
    g.n_input = 1;
    g.input = &in;
    g.n_output = 1;
    g.output = &out;
    onnx__operator_set_id_proto__init(&ops);
    ops.domain = "";
    ops.has_version = 1;
    ops.version = 13;
    onnx__model_proto__init(&mp);
    mp.has_ir_version = 1;
    mp.ir_version = 7;
    mp.producer_name = "slimd";
    mp.producer_version = SLIMD_VERSION;
    mp.n_opset_import = 1;
    mp.opset_import = &opsp;
    mp.graph = &g;
    rc = slim_onnx_save_proto(&mp, path, err);
    goto out;
oom:
    rc = slim_error_set(err, SLIM_ENOMEM, "out of memory building the MLP");
out:
    for (size_t i = 0; i < m.n; i++)
        slim_free(m.p[i]);
    slim_free(m.p);
    return rc;
}
