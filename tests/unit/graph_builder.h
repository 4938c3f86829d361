/*
 * graph_builder.h - the unit tests' ONNX graph builder (gb_*): small
 * ModelProtos assembled from nodes, initializers and value infos in an
 * arena freed at the end of each test, packed with protobuf-c and opened
 * with slim_onnx_open as the CLI does.  Shared by test_engine.c (the
 * inference engine) and test_train.c (the trainer).
 */
#ifndef SLIM_TEST_GRAPH_BUILDER_H
#define SLIM_TEST_GRAPH_BUILDER_H

#include "tests/unit/util.h"
#include "passes/engine/engine.h"

#define ARENA_MAX 8192
static void *arena[ARENA_MAX];
static int n_arena;

static void *amalloc(size_t n)
{
    void *p = calloc(1, n ? n : 1);
    assert_non_null(p);
    assert_true(n_arena < ARENA_MAX);
    arena[n_arena++] = p;
    return p;
}

static char *astrdup(const char *s)
{
    char *p = amalloc(strlen(s) + 1);
    strcpy(p, s);
    return p;
}

static void arena_free(void)
{
    while (n_arena)
        free(arena[--n_arena]);
}

struct gb {
    Onnx__NodeProto *nodes[64];
    int n_nodes;
    Onnx__TensorProto *inits[64];
    int n_inits;
    int64_t opset;
    int in_ndim;                    /* dims after the symbolic batch dim */
    int64_t in_dims[SLIM_MAX_DIMS];
};

static void gb_init(struct gb *g, int64_t opset, int in_ndim, const int64_t *in_dims)
{
    memset(g, 0, sizeof *g);
    g->opset = opset;
    g->in_ndim = in_ndim;
    memcpy(g->in_dims, in_dims, (size_t)in_ndim * sizeof *in_dims);
}

/* "a,b,,c" -> {"a", "b", "", "c"} */
static char **split_names(const char *list, size_t *n)
{
    char **out = amalloc(16 * sizeof *out);
    const char *p = list;
    *n = 0;
    if (!*list)
        return out;
    for (;;) {
        const char *c = strchr(p, ',');
        size_t len = c ? (size_t)(c - p) : strlen(p);
        out[*n] = amalloc(len + 1);
        memcpy(out[*n], p, len);
        (*n)++;
        if (!c)
            return out;
        p = c + 1;
    }
}

static Onnx__AttributeProto *attr_new(const char *name, Onnx__AttributeProto__AttributeType t)
{
    Onnx__AttributeProto *a = amalloc(sizeof *a);
    onnx__attribute_proto__init(a);
    a->name = astrdup(name);
    a->has_type = 1;
    a->type = t;
    return a;
}

static Onnx__AttributeProto *attr_i(const char *name, int64_t v)
{
    Onnx__AttributeProto *a = attr_new(name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT);
    a->has_i = 1;
    a->i = v;
    return a;
}

static Onnx__AttributeProto *attr_f(const char *name, float v)
{
    Onnx__AttributeProto *a = attr_new(name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT);
    a->has_f = 1;
    a->f = v;
    return a;
}

static Onnx__AttributeProto *attr_ints(const char *name, int n, const int64_t *v)
{
    Onnx__AttributeProto *a = attr_new(name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS);
    a->n_ints = (size_t)n;
    a->ints = amalloc((size_t)n * sizeof *a->ints);
    memcpy(a->ints, v, (size_t)n * sizeof *v);
    return a;
}

static Onnx__AttributeProto *attr_s(const char *name, const char *s)
{
    Onnx__AttributeProto *a = attr_new(name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING);
    a->has_s = 1;
    a->s.data = (uint8_t *)astrdup(s);
    a->s.len = strlen(s);
    return a;
}

/* A node; attrs is NULL-terminated (or NULL). */
static void gb_node(struct gb *g, const char *op, const char *name, const char *ins,
                    const char *outs, Onnx__AttributeProto **attrs)
{
    Onnx__NodeProto *n = amalloc(sizeof *n);
    onnx__node_proto__init(n);
    n->op_type = astrdup(op);
    n->name = astrdup(name);
    n->input = split_names(ins, &n->n_input);
    n->output = split_names(outs, &n->n_output);
    for (Onnx__AttributeProto **a = attrs; a && *a; a++)
        n->n_attribute++;
    n->attribute = amalloc((n->n_attribute + 1) * sizeof *n->attribute);
    for (size_t i = 0; i < n->n_attribute; i++)
        n->attribute[i] = attrs[i];
    g->nodes[g->n_nodes++] = n;
}

static void gb_init_raw(struct gb *g, const char *name, int type, int ndim, const int64_t *dims,
                        const void *raw, size_t nbytes)
{
    Onnx__TensorProto *t = amalloc(sizeof *t);
    onnx__tensor_proto__init(t);
    t->name = astrdup(name);
    t->has_data_type = 1;
    t->data_type = type;
    t->n_dims = (size_t)ndim;
    t->dims = amalloc((size_t)(ndim + 1) * sizeof *t->dims);
    if (ndim)   /* a scalar's dims may be NULL: no memcpy from NULL */
        memcpy(t->dims, dims, (size_t)ndim * sizeof *dims);
    t->has_raw_data = 1;
    t->raw_data.len = nbytes;
    t->raw_data.data = amalloc(nbytes);
    if (nbytes)
        memcpy(t->raw_data.data, raw, nbytes);
    g->inits[g->n_inits++] = t;
}

static void gb_init_f(struct gb *g, const char *name, int ndim, const int64_t *dims,
                      const float *v)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= dims[i];
    gb_init_raw(g, name, SLIM_ONNX_FLOAT, ndim, dims, v, (size_t)n * sizeof *v);
}

static void gb_init_i64(struct gb *g, const char *name, int ndim, const int64_t *dims,
                        const int64_t *v)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= dims[i];
    gb_init_raw(g, name, SLIM_ONNX_INT64, ndim, dims, v, (size_t)n * sizeof *v);
}

static Onnx__ValueInfoProto *value_info(const char *name, int with_shape, int ndim,
                                        const int64_t *dims)
{
    Onnx__ValueInfoProto *v = amalloc(sizeof *v);
    Onnx__TypeProto *tp = amalloc(sizeof *tp);
    Onnx__TypeProto__Tensor *tt = amalloc(sizeof *tt);
    onnx__value_info_proto__init(v);
    onnx__type_proto__init(tp);
    onnx__type_proto__tensor__init(tt);
    v->name = astrdup(name);
    v->type = tp;
    tp->value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
    tp->tensor_type = tt;
    tt->has_elem_type = 1;
    tt->elem_type = SLIM_ONNX_FLOAT;
    if (with_shape) {
        Onnx__TensorShapeProto *sh = amalloc(sizeof *sh);
        onnx__tensor_shape_proto__init(sh);
        sh->n_dim = (size_t)ndim + 1;
        sh->dim = amalloc(sh->n_dim * sizeof *sh->dim);
        for (size_t d = 0; d < sh->n_dim; d++) {
            Onnx__TensorShapeProto__Dimension *dim = amalloc(sizeof *dim);
            onnx__tensor_shape_proto__dimension__init(dim);
            if (d == 0) {
                dim->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
                dim->dim_param = astrdup("N");
            } else {
                dim->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
                dim->dim_value = dims[d - 1];
            }
            sh->dim[d] = dim;
        }
        tt->shape = sh;
    }
    return v;
}

/* Writes the graph (input "x", output "y") as a .onnx file; its path. */
static const char *gb_write(struct gb *g, const char *file)
{
    Onnx__ModelProto m;
    Onnx__GraphProto gr;
    Onnx__OperatorSetIdProto op;
    Onnx__OperatorSetIdProto *ops[1] = {&op};
    Onnx__ValueInfoProto *in[1], *out[1];
    uint8_t *buf;
    size_t len;

    onnx__model_proto__init(&m);
    onnx__graph_proto__init(&gr);
    onnx__operator_set_id_proto__init(&op);
    op.domain = astrdup("");
    op.has_version = 1;
    op.version = g->opset;
    in[0] = value_info("x", 1, g->in_ndim, g->in_dims);
    out[0] = value_info("y", 0, 0, NULL);
    gr.name = astrdup("g");
    gr.n_node = (size_t)g->n_nodes;
    gr.node = g->nodes;
    gr.n_initializer = (size_t)g->n_inits;
    gr.initializer = g->inits;
    gr.n_input = 1;
    gr.input = in;
    gr.n_output = 1;
    gr.output = out;
    m.has_ir_version = 1;
    m.ir_version = g->opset >= 21 ? 10 : 8;
    m.graph = &gr;
    m.n_opset_import = 1;
    m.opset_import = ops;
    len = onnx__model_proto__get_packed_size(&m);
    buf = amalloc(len);
    onnx__model_proto__pack(&m, buf);
    return test_write_file(file, buf, len);
}

#endif
