/*
 * graph.c - the engine's graph: compiled once, run many times
 * (engine.h says what for).
 *
 * slim_engine_new turns the ModelProto into a schedule.  Every name (an
 * initializer, the graph input, a node output) becomes a value; nodes
 * are sorted topologically with Kahn's algorithm (ready nodes in file
 * order, so a sorted file keeps its order), which also finds cycles and
 * undefined inputs.  Initializers that some node reads are converted
 * once into the engine's held types (internal.h); Constant nodes become
 * constant values; every other node whose inputs are all constant is run
 * once, there and then, and its outputs become constants too (so a
 * DequantizeLinear of int4 weights costs nothing per run).  Then three
 * fusions, each only where the first node's output has no other reader:
 * a BatchNormalization with constant parameters is folded into the
 * weights and bias of the Conv before it; a Relu after a Conv or Gemm
 * is applied in that node's output loop; a MaxPool or AveragePool after
 * a Conv pools each chunk of samples while it is in cache.
 *
 * Buffers come from a pool that lives as long as the engine: an op asks
 * for its outputs (eng_out), and once a value's last reader in the
 * schedule has run its buffer goes back to the pool, where the next
 * output takes the smallest free buffer that fits.  So a chain of layers
 * cycles through a few buffers that stay mapped and warm from run to
 * run, and a second run of the same batch size allocates nothing.
 * Reshape-like ops share their input's buffer (a reference count on the
 * buffer).  Rejected: a static memory plan computed at compile time, as
 * ONNX Runtime does: sizes depend on the batch, and the pool gets the
 * same reuse without a planner.
 */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "passes/engine/internal.h"

/* ---- small helpers ------------------------------------------------------- */

size_t eng_held_size(int type)
{
    switch (type) {
    case SLIM_ONNX_FLOAT: case SLIM_ONNX_FLOAT16: case SLIM_ONNX_DOUBLE:
    case SLIM_ONNX_INT32:
        return 4;
    case SLIM_ONNX_INT64:
        return 8;
    case SLIM_ONNX_INT8: case SLIM_ONNX_UINT8: case SLIM_ONNX_BOOL:
    case SLIM_ONNX_INT4: case SLIM_ONNX_UINT4:
        return 1;
    default:
        return 0;
    }
}

int64_t eng_numel_checked(int ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || __builtin_mul_overflow(n, shape[i], &n) || n > ENG_MAX_NUMEL)
            return -1;
    }
    return n;
}

int64_t eng_numel(int ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    return n;
}

void eng_round_f16(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = slim_f16_to_f32(slim_f32_to_f16(x[i]));
}

int64_t eng_axis(int64_t axis, int rank)
{
    if (axis < 0)
        axis += rank;
    return axis >= 0 && axis < rank ? axis : -1;
}

const char *eng_shape_str(int ndim, const int64_t *shape, char *buf, size_t len)
{
    size_t o = 0;
    o += (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < ndim && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < len)
        snprintf(buf + o, len - o, "]");
    return buf;
}

static const char *node_label(const struct eng_node *n, char *buf, size_t len)
{
    if (n->proto->name && *n->proto->name)
        snprintf(buf, len, "'%.60s'", n->proto->name);
    else if (n->proto->n_output && n->proto->output[0] && *n->proto->output[0])
        snprintf(buf, len, "making '%.60s'", n->proto->output[0]);
    else
        snprintf(buf, len, "without a name");
    return buf;
}

/* ---- attributes ----------------------------------------------------------- */

static int attr_type_error(const struct eng_node *n, const char *name, struct slim_error *err)
{
    return slim_error_set(err, SLIM_EFORMAT, "attribute '%s' has the wrong type", name);
}

int eng_attr_int(const struct eng_node *n, const char *name, int64_t dflt, int64_t *out,
                 struct slim_error *err)
{
    const Onnx__AttributeProto *a = slim_onnx_attr(n->proto, name);
    *out = dflt;
    if (!a)
        return 0;
    if (a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT)
        return attr_type_error(n, name, err);
    *out = a->i;
    return 0;
}

int eng_attr_float(const struct eng_node *n, const char *name, float dflt, float *out,
                   struct slim_error *err)
{
    const Onnx__AttributeProto *a = slim_onnx_attr(n->proto, name);
    *out = dflt;
    if (!a)
        return 0;
    if (a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT)
        return attr_type_error(n, name, err);
    *out = a->f;
    return 0;
}

int eng_attr_ints(const struct eng_node *n, const char *name, int64_t *out, int max, int *count,
                  struct slim_error *err)
{
    const Onnx__AttributeProto *a = slim_onnx_attr(n->proto, name);
    *count = -1;
    if (!a)
        return 0;
    if (a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS)
        return attr_type_error(n, name, err);
    if (a->n_ints > (size_t)max)
        return slim_error_set(err, SLIM_EUNSUPPORTED, "attribute '%s' has %zu values (at most "
                              "%d supported)", name, a->n_ints, max);
    if (a->n_ints)   /* an empty list's pointer may be NULL */
        memcpy(out, a->ints, a->n_ints * sizeof *out);
    *count = (int)a->n_ints;
    return 0;
}

const char *eng_attr_string(const struct eng_node *n, const char *name, char *buf, size_t len)
{
    const Onnx__AttributeProto *a = slim_onnx_attr(n->proto, name);
    size_t k;
    if (!a || a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING || !len)
        return NULL;
    k = a->s.len < len - 1 ? a->s.len : len - 1;
    memcpy(buf, a->s.data, k);
    buf[k] = 0;
    return buf;
}

int eng_read_ints(const struct eng_value *v, int64_t *out, int max, int *count,
                  struct slim_error *err)
{
    if (!v)   /* an optional input left out by an empty name, before one that is given */
        return slim_error_set(err, SLIM_EFORMAT, "an input of integers is left out (empty "
                              "name)");
    if (v->type != SLIM_ONNX_INT64 && v->type != SLIM_ONNX_INT32)
        return slim_error_set(err, SLIM_EINVAL, "'%.60s' is %s, expected INT64", v->name,
                              slim_onnx_type_name(v->type));
    if (v->numel > max)
        return slim_error_set(err, SLIM_EUNSUPPORTED, "'%.60s' has %lld values (at most %d "
                              "supported)", v->name, (long long)v->numel, max);
    for (int64_t i = 0; i < v->numel; i++)
        out[i] = v->type == SLIM_ONNX_INT64 ? ((const int64_t *)v->data)[i]
                                            : ((const int32_t *)v->data)[i];
    *count = (int)v->numel;
    return 0;
}

/* ---- values ----------------------------------------------------------------- */

/* Name -> value index, open addressing over a power-of-two table. */
struct name_map {
    int *slot;                  /* value index + 1, 0 = empty */
    size_t mask;
};

static uint64_t name_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    while (*s)
        h = (h ^ (unsigned char)*s++) * 1099511628211ull;
    return h;
}

static int map_find(const struct name_map *mp, const struct eng_value *values, const char *name)
{
    for (size_t i = name_hash(name) & mp->mask;; i = (i + 1) & mp->mask) {
        int s = mp->slot[i];
        if (!s)
            return -1;
        if (!strcmp(values[s - 1].name, name))
            return s - 1;
    }
}

static void map_put(struct name_map *mp, const char *name, int index)
{
    size_t i = name_hash(name) & mp->mask;
    while (mp->slot[i])
        i = (i + 1) & mp->mask;
    mp->slot[i] = index + 1;
}

/* Converts tensor bytes of ONNX type `type` into v's held form, in a
 * new buffer v owns. */
static int const_fill(struct eng_value *v, int type, const void *src, size_t nbytes,
                      struct slim_error *err)
{
    size_t held = eng_held_size(type);
    int64_t n = v->numel;
    const unsigned char *s = src;

    if (!held)
        return slim_error_set(err, SLIM_EUNSUPPORTED, "tensor '%.80s' is %s, a type slimd's "
                              "engine does not hold", v->name, slim_onnx_type_name(type));
    if (!(v->owned = slim_aligned_alloc((size_t)n * held + 64)))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    v->data = v->owned;
    v->type = type;
    v->is_const = 1;
    switch (type) {
    case SLIM_ONNX_FLOAT16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            ((float *)v->data)[i] = slim_f16_to_f32(h);
        }
        break;
    case SLIM_ONNX_DOUBLE:
        for (int64_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, s + 8 * i, 8);
            ((float *)v->data)[i] = (float)d;
        }
        break;
    case SLIM_ONNX_BOOL:
        for (int64_t i = 0; i < n; i++)
            ((uint8_t *)v->data)[i] = s[i] != 0;
        break;
    case SLIM_ONNX_INT4: case SLIM_ONNX_UINT4:
        /* two per byte, low nibble first; INT4 sign-extended */
        for (int64_t i = 0; i < n; i++) {
            int q = (s[i / 2] >> (4 * (i & 1))) & 15;
            if (type == SLIM_ONNX_INT4)
                ((int8_t *)v->data)[i] = (int8_t)(q >= 8 ? q - 16 : q);
            else
                ((uint8_t *)v->data)[i] = (uint8_t)q;
        }
        break;
    default:
        if (nbytes != (size_t)n * held)
            return slim_error_set(err, SLIM_EFORMAT, "tensor '%.80s': %zu bytes for %lld "
                                  "elements", v->name, nbytes, (long long)n);
        memcpy(v->data, src, nbytes);
    }
    return 0;
}

/* An empty tensor's other dims still bound the ops' loops (a Gather of
 * [2^40, 0] walks 2^40 rows of nothing): their product, each 0 taken as
 * 1, is held to what the engine could hold as 4-byte elements. */
static int extent_ok(const struct slim_engine *e, const struct eng_value *v,
                     struct slim_error *err)
{
    int64_t n = 1, cap = e->max_bytes ? (int64_t)(e->max_bytes / 4) : ENG_MAX_NUMEL;
    if (v->numel)
        return 0;
    for (int i = 0; i < v->ndim; i++)
        if (v->shape[i] && (__builtin_mul_overflow(n, v->shape[i], &n) || n > cap))
            return slim_error_set(err, SLIM_EBUDGET, "'%.60s' is empty, but its other dims "
                                  "span more than the engine's limit", v->name);
    return 0;
}

/* Makes v a constant holding TensorProto t (an initializer, or a
 * Constant's value). */
static int const_from_tensor(struct slim_engine *e, struct eng_value *v,
                             const Onnx__TensorProto *t, struct slim_error *err)
{
    const void *data;
    size_t nbytes;
    int rc;
    if (t->n_dims > SLIM_MAX_DIMS)
        return slim_error_set(err, SLIM_EUNSUPPORTED, "tensor '%.80s' has %zu dims (at most "
                              "%d supported)", v->name, t->n_dims, SLIM_MAX_DIMS);
    v->ndim = (int)t->n_dims;
    for (size_t i = 0; i < t->n_dims; i++)
        v->shape[i] = t->dims[i];
    v->numel = slim_onnx_numel(t);
    if ((rc = extent_ok(e, v, err)) ||
        (rc = slim_onnx_tensor_data(e->m, t, &data, &nbytes, NULL, err)))
        return rc;
    return const_fill(v, t->has_data_type ? t->data_type : 0, data, nbytes, err);
}

/* ---- the buffer pool ------------------------------------------------------- */

/* A free buffer of at least bytes, or NULL: out of memory, or (*over
 * set) the pool would pass e->max_bytes. */
static struct eng_buf *pool_get(struct slim_engine *e, size_t bytes, int *over)
{
    struct eng_buf *best = NULL, *largest = NULL, **grown;
    *over = 0;
    for (size_t i = 0; i < e->n_pool; i++) {
        struct eng_buf *b = e->pool[i];
        if (b->refs)
            continue;
        if (b->cap >= bytes && (!best || b->cap < best->cap))
            best = b;
        if (!largest || b->cap > largest->cap)
            largest = b;
    }
    if (!best && e->max_bytes &&
        e->pool_bytes - (largest ? largest->cap : 0) + bytes > e->max_bytes) {
        *over = 1;
        return NULL;
    }
    if (!best && largest) {
        /* nothing free is big enough: grow the largest (its contents are dead) */
        void *p = slim_aligned_alloc(bytes);
        if (!p)
            return NULL;
        slim_aligned_free(largest->p);
        e->pool_bytes += bytes - largest->cap;
        largest->p = p;
        largest->cap = bytes;
        best = largest;
    }
    if (!best) {
        if (!(best = slim_calloc(1, sizeof *best)))
            return NULL;
        if (!(best->p = slim_aligned_alloc(bytes))) {
            slim_free(best);
            return NULL;
        }
        best->cap = bytes;
        if (!(grown = slim_realloc(e->pool, (e->n_pool + 1) * sizeof *grown))) {
            slim_aligned_free(best->p);
            slim_free(best);
            return NULL;
        }
        e->pool = grown;
        e->pool[e->n_pool++] = best;
        e->pool_bytes += bytes;
    }
    best->refs = 1;
    return best;
}

static void value_release(struct eng_value *v)
{
    if (v->buf) {
        v->buf->refs--;
        v->buf = NULL;
    }
}

struct eng_value *eng_in(struct slim_engine *e, const struct eng_node *n, int k)
{
    return k < n->n_in && n->in[k] >= 0 ? &e->values[n->in[k]] : NULL;
}

struct eng_value *eng_outv(struct slim_engine *e, const struct eng_node *n, int k)
{
    return k < n->n_out && n->out[k] >= 0 ? &e->values[n->out[k]] : NULL;
}

static int set_shape(struct eng_value *v, int type, int ndim, const int64_t *shape,
                     struct slim_error *err)
{
    if (ndim < 0 || ndim > SLIM_MAX_DIMS)
        return slim_error_set(err, SLIM_EUNSUPPORTED, "'%.80s' would have %d dims (at most %d "
                              "supported)", v->name, ndim, SLIM_MAX_DIMS);
    if (eng_numel_checked(ndim, shape) < 0)
        return slim_error_set(err, SLIM_EINVAL, "'%.80s' would have a negative dim or more "
                              "than 2^48 elements", v->name);
    v->type = type;
    v->ndim = ndim;
    if (ndim)
        memmove(v->shape, shape, (size_t)ndim * sizeof *shape);
    v->numel = eng_numel(ndim, v->shape);
    return 0;
}

int eng_out(struct slim_engine *e, const struct eng_node *n, int k, int type, int ndim,
            const int64_t *shape, struct slim_error *err)
{
    struct eng_value *v = eng_outv(e, n, k);
    size_t bytes;
    int rc, over;
    if (!v)
        return slim_error_set(err, SLIM_EINTERNAL, "output %d is not produced", k);
    if ((rc = set_shape(v, type, ndim, shape, err)) || (rc = extent_ok(e, v, err)))
        return rc;
    value_release(v);
    /* rounded up to a cache line, so the pool's best fit sees the same
     * size classes run after run */
    bytes = ((size_t)v->numel * eng_held_size(type) + 63) & ~(size_t)63;
    if (!(v->buf = pool_get(e, bytes ? bytes : 64, &over)))
        return over ? slim_error_set(err, SLIM_EBUDGET, "'%.60s' needs %llu MiB, past the "
                                     "engine's limit of %llu MiB for all its tensors", v->name,
                                     (unsigned long long)(bytes >> 20),
                                     (unsigned long long)(e->max_bytes >> 20))
                    : slim_error_set(err, SLIM_ENOMEM, "out of memory");
    v->data = v->buf->p;
    return 0;
}

int eng_out_view(struct slim_engine *e, const struct eng_node *n, int k,
                 const struct eng_value *src, int ndim, const int64_t *shape,
                 struct slim_error *err)
{
    struct eng_value *v = eng_outv(e, n, k);
    char a[96], b[96];
    int rc;
    if (!v)
        return 0;
    if (eng_numel_checked(ndim, shape) != src->numel)
        return slim_error_set(err, SLIM_EINVAL, "cannot view %s as %s",
                              eng_shape_str(src->ndim, src->shape, a, sizeof a),
                              eng_shape_str(ndim, shape, b, sizeof b));
    if ((rc = set_shape(v, src->type, ndim, shape, err)) || (rc = extent_ok(e, v, err)))
        return rc;
    value_release(v);
    v->data = src->data;
    v->buf = src->buf;
    if (v->buf)
        v->buf->refs++;
    return 0;
}

void *eng_scratch(struct slim_engine *e, int slot, size_t bytes)
{
    if (e->scratch_cap[slot] < bytes) {
        void *p = slim_aligned_alloc(bytes);
        if (!p)
            return NULL;
        slim_aligned_free(e->scratch[slot]);
        e->scratch[slot] = p;
        e->scratch_cap[slot] = bytes;
    }
    return e->scratch[slot];
}

/* ---- compile ---------------------------------------------------------------- */

const struct eng_op *eng_op_find(const char *name)
{
    static const struct eng_op *const tables[] = {eng_ops_elementwise, eng_ops_shape, eng_ops_nn,
                                                  eng_ops_quant};
    for (size_t t = 0; t < sizeof tables / sizeof *tables; t++)
        for (const struct eng_op *op = tables[t]; op->name; op++)
            if (!strcmp(op->name, name))
                return op;
    return NULL;
}

static int is_default_domain(const char *d)
{
    return !d || !*d || !strcmp(d, "ai.onnx");
}

/* Checks every node's operator against the table, in file order, so the
 * first unsupported one in the file is the one named. */
static int check_ops(const Onnx__GraphProto *g, struct slim_error *err)
{
    for (size_t i = 0; i < g->n_node; i++) {
        const Onnx__NodeProto *np = g->node[i];
        const struct eng_op *op = is_default_domain(np->domain) ? eng_op_find(np->op_type) : NULL;
        struct eng_node tmp = {.proto = np};
        char lab[96];
        if (!op) {
            if (np->name && *np->name)
                return slim_error_set(err, SLIM_EUNSUPPORTED, "operator '%.40s%s%.30s' (node "
                                      "'%.60s') is not supported by slimd's engine",
                                      is_default_domain(np->domain) ? "" : np->domain,
                                      is_default_domain(np->domain) ? "" : ".", np->op_type,
                                      np->name);
            return slim_error_set(err, SLIM_EUNSUPPORTED, "operator '%.40s%s%.30s' (node %s) is "
                                  "not supported by slimd's engine",
                                  is_default_domain(np->domain) ? "" : np->domain,
                                  is_default_domain(np->domain) ? "" : ".", np->op_type,
                                  node_label(&tmp, lab, sizeof lab));
        }
        if ((int)np->n_input < op->min_in || (int)np->n_input > op->max_in ||
            (int)np->n_output < op->min_out || (int)np->n_output > op->max_out)
            return slim_error_set(err, SLIM_EFORMAT, "node %s (%s): %zu inputs and %zu outputs "
                                  "(expected %d-%d and %d-%d)", node_label(&tmp, lab, sizeof lab),
                                  np->op_type, np->n_input, np->n_output, op->min_in, op->max_in,
                                  op->min_out, op->max_out);
    }
    return 0;
}

int slim_engine_check(const struct slim_onnx *m, struct slim_error *err)
{
    return check_ops(m->graph, err);
}

/* Creates the values, resolves every node's inputs and outputs, and
 * sorts the nodes into e->nodes (Kahn's algorithm). */
static int build(struct slim_engine *e, struct name_map *mp, const Onnx__TensorProto ***init_of,
                 struct slim_error *err)
{
    const Onnx__GraphProto *g = e->m->graph;
    size_t cap = g->n_initializer + g->n_sparse_initializer + g->n_input, nv = 0, head = 0;
    size_t tail = 0, done = 0;
    size_t n_edges = 0;
    int *producer = NULL, *indeg = NULL, *queue = NULL, *first = NULL, *next = NULL;
    int *fill = NULL;
    struct eng_node *order = NULL;
    int rc = 0;
    char lab[96];

    for (size_t i = 0; i < g->n_node; i++)
        cap += g->node[i]->n_output;
    /* room for the constants compile makes (a Conv's weights with a
     * BatchNormalization folded in: two per node at most) */
    e->values_cap = cap + 2 * g->n_node + 1;
    e->values = slim_calloc(e->values_cap, sizeof *e->values);
    *init_of = slim_calloc(cap + 1, sizeof **init_of);
    producer = slim_malloc((cap + 1) * sizeof *producer);
    for (mp->mask = 16; mp->mask < 2 * cap; mp->mask *= 2)
        ;
    mp->slot = slim_calloc(mp->mask, sizeof *mp->slot);
    mp->mask--;
    indeg = slim_calloc(g->n_node + 1, sizeof *indeg);
    queue = slim_malloc((g->n_node + 1) * sizeof *queue);
    order = slim_calloc(g->n_node + 1, sizeof *order);
    e->input = e->output = -1;
    if (!e->values || !*init_of || !producer || !mp->slot || !indeg || !queue || !order) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < g->n_initializer; i++) {
        const char *name = g->initializer[i]->name;
        if (map_find(mp, e->values, name) >= 0) {
            rc = slim_error_set(err, SLIM_EFORMAT, "initializer '%.80s' is defined twice", name);
            goto out;
        }
        e->values[nv] = (struct eng_value){.name = name, .producer = -1, .last_use = -1};
        (*init_of)[nv] = g->initializer[i];
        producer[nv] = -1;
        map_put(mp, name, (int)nv++);
    }
    /* sparse initializers (pruned weights) run as their dense form */
    for (size_t i = 0; i < g->n_sparse_initializer; i++) {
        const Onnx__SparseTensorProto *sp = g->sparse_initializer[i];
        const Onnx__TensorProto *t;
        int64_t dense = sp->n_dims <= SLIM_MAX_DIMS
                            ? eng_numel_checked((int)sp->n_dims, sp->dims) : -1;
        /* the dense form is the engine's too: a few bytes of indices may
         * claim any dims */
        if (e->max_bytes && dense >= 0 && (uint64_t)dense > e->max_bytes / 8) {
            rc = slim_error_set(err, SLIM_EBUDGET, "sparse initializer '%.60s' is %lld "
                                "elements dense, past the engine's limit of %llu MiB",
                                sp->values && sp->values->name ? sp->values->name : "",
                                (long long)dense, (unsigned long long)(e->max_bytes >> 20));
            goto out;
        }
        if ((rc = slim_onnx_sparse_dense(e->m, sp, &t, err)))
            goto out;
        if (!t->name || map_find(mp, e->values, t->name) >= 0) {
            rc = slim_error_set(err, SLIM_EFORMAT, "sparse initializer '%.80s' is unnamed or "
                                "defined twice", t->name ? t->name : "");
            goto out;
        }
        e->values[nv] = (struct eng_value){.name = t->name, .producer = -1, .last_use = -1};
        (*init_of)[nv] = t;
        producer[nv] = -1;
        map_put(mp, t->name, (int)nv++);
    }
    for (size_t i = 0; i < g->n_input; i++) {
        const char *name = g->input[i]->name;
        if (!name || map_find(mp, e->values, name) >= 0)
            continue;   /* an initializer also listed as an input (old exporters) */
        if (e->input >= 0) {
            rc = slim_error_set(err, SLIM_EUNSUPPORTED, "the graph has more than one input "
                                "('%.60s' and '%.60s'); slimd's engine runs graphs with one",
                                e->values[e->input].name, name);
            goto out;
        }
        e->values[nv] = (struct eng_value){.name = name, .producer = -1, .last_use = -1};
        producer[nv] = -1;
        e->input = (int)nv;
        map_put(mp, name, (int)nv++);
    }
    if (e->input < 0) {
        rc = slim_error_set(err, SLIM_EFORMAT, "the graph has no input besides its initializers");
        goto out;
    }
    /* outputs first: a node may read a value made by a node after it in the file */
    for (size_t i = 0; i < g->n_node; i++) {
        const Onnx__NodeProto *np = g->node[i];
        for (size_t k = 0; k < np->n_output; k++) {
            const char *name = np->output[k];
            if (!name || !*name)
                continue;
            if (map_find(mp, e->values, name) >= 0) {
                struct eng_node tmp = {.proto = np};
                rc = slim_error_set(err, SLIM_EFORMAT, "node %s (%s): output '%.60s' is "
                                    "already defined", node_label(&tmp, lab, sizeof lab),
                                    np->op_type, name);
                goto out;
            }
            e->values[nv] = (struct eng_value){.name = name, .producer = -1, .last_use = -1};
            producer[nv] = (int)i;
            map_put(mp, name, (int)nv++);
        }
    }
    e->n_values = nv;
    /* readers of each value, as one array in value order (CSR): first[v]
     * .. first[v + 1] index into next, which holds reading nodes, once
     * per read */
    first = slim_calloc(nv + 2, sizeof *first);
    for (size_t i = 0; i < g->n_node; i++)
        order[i].proto = g->node[i];
    for (size_t i = 0; i < g->n_node; i++) {
        const Onnx__NodeProto *np = g->node[i];
        struct eng_node *n = &order[i];
        n->op = eng_op_find(np->op_type);
        n->n_in = (int)np->n_input;
        n->n_out = (int)np->n_output;
        n->in = slim_malloc((size_t)(n->n_in + 1) * sizeof *n->in);
        n->out = slim_malloc((size_t)(n->n_out + 1) * sizeof *n->out);
        if (!n->in || !n->out || !first) {
            rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
            goto out;
        }
        for (int k = 0; k < n->n_in; k++) {
            const char *name = np->input[k];
            int v = name && *name ? map_find(mp, e->values, name) : -1;
            n->in[k] = v;
            /* an empty name leaves out an optional input; the kernels
             * take the first min_in as given */
            if (k < n->op->min_in && v < 0 && !(name && *name)) {
                rc = slim_error_set(err, SLIM_EFORMAT, "node %s (%s): input %d is required "
                                    "but has no name", node_label(n, lab, sizeof lab),
                                    np->op_type, k);
                goto out;
            }
            if (name && *name && v < 0) {
                rc = slim_error_set(err, SLIM_EFORMAT, "node %s (%s): input '%.60s' is not "
                                    "made by any node, initializer or graph input",
                                    node_label(n, lab, sizeof lab), np->op_type, name);
                goto out;
            }
            if (v >= 0 && producer[v] >= 0) {
                indeg[i]++;
                first[v + 1]++;
                n_edges++;
            }
        }
        /* trailing empty names leave optional inputs out: the kernels see
         * fewer inputs (Reshape's n_in, Slice's axes and steps) */
        while (n->n_in > 0 && n->in[n->n_in - 1] < 0)
            n->n_in--;
        for (int k = 0; k < n->n_out; k++) {
            const char *name = np->output[k];
            n->out[k] = name && *name ? map_find(mp, e->values, name) : -1;
            if (k < n->op->min_out && n->out[k] < 0) {
                rc = slim_error_set(err, SLIM_EFORMAT, "node %s (%s): output %d is required "
                                    "but has no name", node_label(n, lab, sizeof lab),
                                    np->op_type, k);
                goto out;
            }
        }
    }
    for (size_t v = 0; v < nv; v++)
        first[v + 1] += first[v];
    if (!(next = slim_malloc((n_edges + 1) * sizeof *next)) ||
        !(fill = slim_calloc(nv + 1, sizeof *fill))) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < g->n_node; i++)
        for (int k = 0; k < order[i].n_in; k++) {
            int v = order[i].in[k];
            if (v >= 0 && producer[v] >= 0)
                next[first[v] + fill[v]++] = (int)i;
        }
    /* Kahn: a node is ready once every input made by a node is made */
    for (size_t i = 0; i < g->n_node; i++)
        if (!indeg[i])
            queue[tail++] = (int)i;
    while (head < tail) {
        int i = queue[head++];
        struct eng_node *n = &order[i];
        e->nodes[done++] = *n;
        for (int k = 0; k < n->n_out; k++) {
            int v = n->out[k];
            for (int r = v >= 0 ? first[v] : 0; v >= 0 && r < first[v + 1]; r++)
                if (--indeg[next[r]] == 0)
                    queue[tail++] = next[r];
        }
    }
    if (done < g->n_node) {
        for (size_t i = 0; i < g->n_node; i++)
            if (indeg[i]) {
                rc = slim_error_set(err, SLIM_EFORMAT, "the graph has a cycle (through node %s, "
                                    "%s)", node_label(&order[i], lab, sizeof lab),
                                    order[i].proto->op_type);
                break;
            }
        /* the nodes left out of the schedule still own their arrays */
        for (size_t i = 0, o = done; i < g->n_node; i++)
            if (indeg[i])
                e->nodes[o++] = order[i];
        e->n_nodes = g->n_node;
        goto out_keep;
    }
    e->n_nodes = done;
    for (size_t i = 0; i < e->n_nodes; i++)
        for (int k = 0; k < e->nodes[i].n_out; k++)
            if (e->nodes[i].out[k] >= 0)
                e->values[e->nodes[i].out[k]].producer = (int)i;
    goto out_keep;
out:
    /* arrays not yet handed to e->nodes */
    for (size_t i = 0; order && i < g->n_node; i++) {
        slim_free(order[i].in);
        slim_free(order[i].out);
    }
out_keep:
    slim_free(order);
    slim_free(first);
    slim_free(next);
    slim_free(fill);
    slim_free(producer);
    slim_free(indeg);
    slim_free(queue);
    return rc;
}

/* The declared per-sample shape of the graph input. */
static int input_shape(struct slim_engine *e, struct slim_error *err)
{
    const Onnx__GraphProto *g = e->m->graph;
    struct eng_value *v = &e->values[e->input];
    for (size_t i = 0; i < g->n_input; i++) {
        const Onnx__TypeProto *tp = g->input[i]->type;
        const Onnx__TypeProto__Tensor *tt;
        if (!g->input[i]->name || strcmp(g->input[i]->name, v->name))
            continue;
        if (!tp || tp->value_case != ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE || !tp->tensor_type)
            return slim_error_set(err, SLIM_EUNSUPPORTED, "graph input '%.80s' is not a tensor",
                                  v->name);
        tt = tp->tensor_type;
        if (tt->has_elem_type && tt->elem_type != SLIM_ONNX_FLOAT)
            return slim_error_set(err, SLIM_EUNSUPPORTED, "graph input '%.80s' is %s; slimd's "
                                  "engine feeds FLOAT", v->name,
                                  slim_onnx_type_name(tt->elem_type));
        e->in_ndim = -1;
        if (!tt->shape)
            return 0;
        if (tt->shape->n_dim < 1 || tt->shape->n_dim > SLIM_MAX_DIMS)
            return slim_error_set(err, SLIM_EUNSUPPORTED, "graph input '%.80s' has %zu dims; "
                                  "the engine needs a batch dim and at most %d", v->name,
                                  tt->shape->n_dim, SLIM_MAX_DIMS);
        e->in_ndim = (int)tt->shape->n_dim - 1;
        for (size_t d = 1; d < tt->shape->n_dim; d++) {
            const Onnx__TensorShapeProto__Dimension *dim = tt->shape->dim[d];
            e->in_dims[d - 1] =
                dim->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE &&
                        dim->dim_value >= 0
                    ? dim->dim_value
                    : -1;
        }
        return 0;
    }
    e->in_ndim = -1;
    return 0;
}

/* Runs node n now; used at compile time for nodes whose inputs are all
 * constant, whose outputs then become constants with their own buffers. */
static int fold(struct slim_engine *e, struct eng_node *n, struct slim_error *err)
{
    int rc = n->op->run(e, n, err);
    for (int k = 0; k < n->n_out; k++) {
        struct eng_value *v = eng_outv(e, n, k);
        size_t bytes;
        if (!v || v->is_const)
            continue;
        if (!rc) {
            bytes = (size_t)v->numel * eng_held_size(v->type);
            if (!(v->owned = slim_aligned_alloc(bytes + 64)))
                rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
            else {
                memcpy(v->owned, v->data, bytes);
                v->data = v->owned;
                v->is_const = 1;
            }
        }
        value_release(v);
    }
    n->folded = !rc;
    return rc;
}

/* The node reading value v when it has exactly one reader (and v is not
 * a graph output), else NULL. */
static struct eng_node *sole_reader(struct slim_engine *e, int v)
{
    struct eng_node *r = NULL;
    int readers = 0;
    if (e->values[v].is_output)
        return NULL;
    for (size_t j = 0; j < e->n_nodes; j++) {
        struct eng_node *n = &e->nodes[j];
        if (n->folded || n->skip)
            continue;
        for (int k = 0; k < n->n_in; k++)
            if (n->in[k] == v) {
                readers++;
                r = n;
            }
    }
    return readers == 1 ? r : NULL;
}

static int is_const_float(const struct slim_engine *e, int v)
{
    return v >= 0 && e->values[v].is_const && e->values[v].type == SLIM_ONNX_FLOAT;
}

/* A new constant FLOAT value of n elements (dims given), or NULL. */
static struct eng_value *new_const(struct slim_engine *e, const char *name, int ndim,
                                   const int64_t *shape)
{
    struct eng_value *v;
    if (e->n_values >= e->values_cap)
        return NULL;
    v = &e->values[e->n_values];
    *v = (struct eng_value){.name = name, .producer = -1, .last_use = -1, .is_const = 1,
                            .type = SLIM_ONNX_FLOAT};
    set_shape(v, SLIM_ONNX_FLOAT, ndim, shape, NULL);
    if (!(v->owned = slim_aligned_alloc((size_t)v->numel * sizeof(float) + 64)))
        return NULL;
    v->data = v->owned;
    e->n_values++;
    return v;
}

/* Folds a BatchNormalization (inference) into the Conv before it, when
 * the Conv's weights and bias and the BatchNormalization's parameters are
 * constant and the BatchNormalization is the Conv's only reader, as ONNX
 * Runtime does: W'[m] = W[m] * a[m], B'[m] = B[m] * a[m] + b[m] with
 * a = scale / sqrt(var + eps), b = bias - mean * a.  One pass over the
 * activations fewer, and the Relu after it can then be fused too.  New
 * constants are made: the original weights may have other readers. */
static int fold_batchnorm(struct slim_engine *e, struct slim_error *err)
{
    for (size_t i = 0; i < e->n_nodes; i++) {
        struct eng_node *n = &e->nodes[i], *bn;
        const struct eng_value *w, *b, *p[4];
        struct eng_value *nw, *nb;
        int64_t m, per;
        if (n->folded || n->skip || strcmp(n->op->name, "Conv") || n->out[0] < 0 ||
            !is_const_float(e, n->in[1]) || (n->n_in > 2 && n->in[2] >= 0 &&
                                              !is_const_float(e, n->in[2])))
            continue;
        if (!(bn = sole_reader(e, n->out[0])) || strcmp(bn->op->name, "BatchNormalization") ||
            bn->in[0] != n->out[0] || bn->out[0] < 0)
            continue;
        w = &e->values[n->in[1]];
        b = n->n_in > 2 && n->in[2] >= 0 ? &e->values[n->in[2]] : NULL;
        m = w->ndim ? w->shape[0] : 0;
        if (!m || (b && b->numel != m))
            continue;
        for (int k = 0; k < 4; k++) {
            p[k] = is_const_float(e, bn->in[k + 1]) ? &e->values[bn->in[k + 1]] : NULL;
            if (!p[k] || p[k]->numel != m)
                break;
        }
        if (!p[0] || !p[1] || !p[2] || !p[3] || p[0]->numel != m || p[1]->numel != m ||
            p[2]->numel != m || p[3]->numel != m)
            continue;
        if (!(nw = new_const(e, w->name, w->ndim, w->shape)) ||
            !(nb = new_const(e, b ? b->name : p[1]->name, 1, &m)))
            return slim_error_set(err, SLIM_ENOMEM, "out of memory");
        per = w->numel / m;
        for (int64_t o = 0; o < m; o++) {
            const float *sc = p[0]->data, *bb = p[1]->data, *mean = p[2]->data,
                        *var = p[3]->data;
            float a = sc[o] / sqrtf(var[o] + bn->a.epsilon);
            for (int64_t j = 0; j < per; j++)
                ((float *)nw->data)[o * per + j] = ((const float *)w->data)[o * per + j] * a;
            ((float *)nb->data)[o] = (b ? ((const float *)b->data)[o] : 0.0f) * a + bb[o] -
                                     mean[o] * a;
        }
        n->in[1] = (int)(nw - e->values);
        n->in[2] = (int)(nb - e->values);
        if (n->n_in < 3)
            n->n_in = 3;    /* n->in has room for one more */
        n->out[0] = bn->out[0];
        e->values[bn->out[0]].producer = (int)i;
        bn->skip = 1;
    }
    return 0;
}

/* Gives a Conv or Gemm the Relu that is its output's only reader. */
static void fuse_relu(struct slim_engine *e)
{
    for (size_t i = 0; i < e->n_nodes; i++) {
        struct eng_node *n = &e->nodes[i], *r;
        if (n->folded || n->skip || n->n_out != 1 || n->out[0] < 0 ||
            (strcmp(n->op->name, "Conv") && strcmp(n->op->name, "Gemm")))
            continue;
        if (!(r = sole_reader(e, n->out[0])) || strcmp(r->op->name, "Relu") || r->out[0] < 0)
            continue;
        n->a.fuse_relu = 1;
        n->out[0] = r->out[0];
        e->values[r->out[0]].producer = (int)i;
        r->skip = 1;
    }
}

/* Gives a Conv the MaxPool or AveragePool that is its output's only
 * reader (after its Relu, if one was fused): the Conv then pools each
 * chunk of samples while it is in cache, instead of writing the whole
 * batch's activations out and reading them back. */
static void fuse_pool(struct slim_engine *e)
{
    for (size_t i = 0; i < e->n_nodes; i++) {
        struct eng_node *n = &e->nodes[i], *r;
        if (n->folded || n->skip || strcmp(n->op->name, "Conv") || n->out[0] < 0)
            continue;
        if (!(r = sole_reader(e, n->out[0])) || r->in[0] != n->out[0] || r->out[0] < 0 ||
            (strcmp(r->op->name, "MaxPool") && strcmp(r->op->name, "AveragePool")) ||
            (r->n_out > 1 && r->out[1] >= 0))
            continue;
        n->pool = r;
        n->out[0] = r->out[0];
        e->values[r->out[0]].producer = (int)i;
        r->skip = 1;
    }
}

int slim_engine_new(struct slim_onnx *m, struct slim_engine **out, struct slim_error *err)
{
    return slim_engine_new_limited(m, 0, out, err);
}

int slim_engine_new_limited(struct slim_onnx *m, uint64_t max_bytes, struct slim_engine **out,
                            struct slim_error *err)
{
    const Onnx__GraphProto *g = m->graph;
    const Onnx__TensorProto **init_of = NULL;
    struct name_map mp = {NULL, 0};
    struct slim_engine *e;
    int rc;
    char lab[96];

    *out = NULL;
    if (!(e = slim_calloc(1, sizeof *e)))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    e->m = m;
    e->opset = m->opset;
    e->max_bytes = max_bytes;
    if ((rc = check_ops(g, err)))
        goto out;
    if (!(e->nodes = slim_calloc(g->n_node + 1, sizeof *e->nodes))) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
        goto out;
    }
    if ((rc = build(e, &mp, &init_of, err)) || (rc = input_shape(e, err)))
        goto out;
    /* graph outputs */
    for (size_t i = 0; i < g->n_output; i++) {
        int v = g->output[i]->name ? map_find(&mp, e->values, g->output[i]->name) : -1;
        if (v < 0) {
            rc = slim_error_set(err, SLIM_EFORMAT, "graph output '%.80s' is not made by any "
                                "node", g->output[i]->name ? g->output[i]->name : "");
            goto out;
        }
        e->values[v].is_output = 1;
        if (e->output < 0)
            e->output = v;
    }
    if (e->output < 0) {
        rc = slim_error_set(err, SLIM_EFORMAT, "the graph has no output");
        goto out;
    }
    /* initializers that some node reads (or that are the output) */
    for (size_t i = 0; i < e->n_values; i++) {
        int used = e->values[i].is_output;
        if (!init_of[i])
            continue;
        for (size_t j = 0; j < e->n_nodes && !used; j++)
            for (int k = 0; k < e->nodes[j].n_in; k++)
                used |= e->nodes[j].in[k] == (int)i;
        if (used && (rc = const_from_tensor(e, &e->values[i], init_of[i], err)))
            goto out;
    }
    /* compile every node, and run those whose inputs are all constant */
    for (size_t i = 0; i < e->n_nodes; i++) {
        struct eng_node *n = &e->nodes[i];
        int all_const = 1;
        if (n->op->compile && (rc = n->op->compile(e, n, err)))
            goto node_error;
        if (!n->op->run) {          /* Constant: done by its compile */
            n->folded = 1;
            continue;
        }
        for (int k = 0; k < n->n_in; k++)
            if (n->in[k] >= 0 && !e->values[n->in[k]].is_const)
                all_const = 0;
        if (all_const && (rc = fold(e, n, err)))
            goto node_error;
        continue;
    node_error:
        slim_error_prefix(err, "node %s (%s)", node_label(n, lab, sizeof lab), n->op->name);
        goto out;
    }
    if ((rc = fold_batchnorm(e, err)))
        goto out;
    fuse_relu(e);
    fuse_pool(e);
    /* liveness: the last position that reads each value */
    for (size_t i = 0; i < e->n_nodes; i++) {
        const struct eng_node *n = &e->nodes[i];
        if (n->folded || n->skip)
            continue;
        for (int k = 0; k < n->n_in; k++)
            if (n->in[k] >= 0)
                e->values[n->in[k]].last_use = (int)i;
    }
    rc = 0;
out:
    slim_free(mp.slot);
    slim_free(init_of);
    if (rc) {
        slim_engine_free(e);
        return rc;
    }
    *out = e;
    return 0;
}

void slim_engine_free(struct slim_engine *e)
{
    if (!e)
        return;
    for (size_t i = 0; i < e->n_nodes; i++) {
        slim_free(e->nodes[i].in);
        slim_free(e->nodes[i].out);
    }
    slim_free(e->nodes);
    for (size_t i = 0; i < e->n_values; i++)
        slim_aligned_free(e->values[i].owned);
    slim_free(e->values);
    for (size_t i = 0; i < e->n_pool; i++) {
        slim_aligned_free(e->pool[i]->p);
        slim_free(e->pool[i]);
    }
    slim_free(e->pool);
    slim_aligned_free(e->y);
    for (int i = 0; i < 4; i++)
        slim_aligned_free(e->scratch[i]);
    slim_free(e);
}

int64_t slim_engine_input(const struct slim_engine *e, const char **name, int64_t *dims,
                          int *ndim)
{
    int64_t n = 1;
    if (name)
        *name = e->values[e->input].name;
    if (e->in_ndim < 0) {
        if (ndim)
            *ndim = -1;
        return -1;
    }
    if (ndim)
        *ndim = e->in_ndim;
    for (int i = 0; i < e->in_ndim; i++) {
        if (dims)
            dims[i] = e->in_dims[i];
        n = e->in_dims[i] < 0 || n < 0 ? -1 : n * e->in_dims[i];
    }
    return n;
}

int slim_engine_set_sample_shape(struct slim_engine *e, const int64_t *dims, int ndim,
                                 struct slim_error *err)
{
    char a[96], b[96];
    if (ndim < 0 || ndim >= SLIM_MAX_DIMS)
        return slim_error_set(err, SLIM_EINVAL, "a sample of %d dims", ndim);
    if (e->in_ndim >= 0) {
        int ok = e->in_ndim == ndim;
        for (int i = 0; ok && i < ndim; i++)
            ok = e->in_dims[i] < 0 || e->in_dims[i] == dims[i];
        if (!ok)
            return slim_error_set(err, SLIM_EINVAL, "input '%.60s' takes samples of shape %s, "
                                  "not %s", e->values[e->input].name,
                                  eng_shape_str(e->in_ndim, e->in_dims, a, sizeof a),
                                  eng_shape_str(ndim, dims, b, sizeof b));
    }
    for (int i = 0; i < ndim; i++)
        if (dims[i] < 0)
            return slim_error_set(err, SLIM_EINVAL, "a sample shape with a negative dim");
    e->in_ndim = ndim;
    memcpy(e->in_dims, dims, (size_t)ndim * sizeof *dims);
    return 0;
}

/* ---- run ---------------------------------------------------------------------- */

int slim_engine_run(struct slim_engine *e, const float *x, int64_t batch, const float **y,
                    int64_t *y_size, struct slim_error *err)
{
    struct eng_value *in = &e->values[e->input], *ov;
    int64_t shape[SLIM_MAX_DIMS];
    char lab[96];
    int rc;

    if (batch < 1)
        return slim_error_set(err, SLIM_EINVAL, "a batch of %lld samples", (long long)batch);
    if (slim_engine_input(e, NULL, NULL, NULL) < 0)
        return slim_error_set(err, SLIM_EINVAL, "input '%.60s' has a sample shape that is not "
                              "fixed (set it with slim_engine_set_sample_shape)", in->name);
    for (size_t i = 0; i < e->n_pool; i++)
        e->pool[i]->refs = 0;
    for (size_t i = 0; i < e->n_values; i++)
        if (!e->values[i].is_const)
            e->values[i].buf = NULL;
    shape[0] = batch;
    memcpy(shape + 1, e->in_dims, (size_t)e->in_ndim * sizeof *shape);
    set_shape(in, SLIM_ONNX_FLOAT, e->in_ndim + 1, shape, NULL);
    in->data = (void *)x;   /* ops never write their inputs */

    for (size_t i = 0; i < e->n_nodes; i++) {
        struct eng_node *n = &e->nodes[i];
        if (n->folded || n->skip)
            continue;
        if ((rc = n->op->run(e, n, err))) {
            slim_error_prefix(err, "node %s (%s)", node_label(n, lab, sizeof lab), n->op->name);
            return rc;
        }
        for (int k = 0; k < n->n_in; k++) {
            struct eng_value *v = n->in[k] >= 0 ? &e->values[n->in[k]] : NULL;
            if (v && v->last_use == (int)i && !v->is_output)
                value_release(v);
        }
        for (int k = 0; k < n->n_out; k++) {
            struct eng_value *v = eng_outv(e, n, k);
            if (v && v->last_use < (int)i && !v->is_output)
                value_release(v);
        }
    }
    ov = &e->values[e->output];
    if (!ov->data)
        return slim_error_set(err, SLIM_EINTERNAL, "output '%.60s' was not computed", ov->name);
    *y_size = ov->numel % batch ? 0 : ov->numel / batch;
    if (eng_is_float(ov->type)) {
        *y = ov->data;
        return 0;
    }
    /* an integer or bool output, as float */
    if (e->y_cap < (size_t)ov->numel) {
        slim_aligned_free(e->y);
        e->y_cap = 0;
        if (!(e->y = slim_aligned_alloc((size_t)ov->numel * sizeof *e->y + 64)))
            return slim_error_set(err, SLIM_ENOMEM, "out of memory");
        e->y_cap = (size_t)ov->numel;
    }
    for (int64_t i = 0; i < ov->numel; i++) {
        switch (ov->type) {
        case SLIM_ONNX_INT64: e->y[i] = (float)((const int64_t *)ov->data)[i]; break;
        case SLIM_ONNX_INT32: e->y[i] = (float)((const int32_t *)ov->data)[i]; break;
        case SLIM_ONNX_INT8: case SLIM_ONNX_INT4:
            e->y[i] = ((const int8_t *)ov->data)[i];
            break;
        default: e->y[i] = ((const uint8_t *)ov->data)[i]; break;
        }
    }
    *y = e->y;
    return 0;
}

void slim_engine_output_shape(const struct slim_engine *e, int64_t *dims, int *ndim)
{
    const struct eng_value *v = &e->values[e->output];
    *ndim = v->data ? v->ndim : 0;
    memcpy(dims, v->shape, (size_t)*ndim * sizeof *dims);
}

/* ---- constants made by ops (Constant) ------------------------------------------ */

int eng_const_tensor(struct slim_engine *e, struct eng_value *v, const Onnx__TensorProto *t,
                     struct slim_error *err)
{
    return const_from_tensor(e, v, t, err);
}

int eng_const_raw(struct eng_value *v, int type, int ndim, const int64_t *shape, const void *src,
                  size_t nbytes, struct slim_error *err)
{
    int rc = set_shape(v, type, ndim, shape, err);
    return rc ? rc : const_fill(v, type, src, nbytes, err);
}
