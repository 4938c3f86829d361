/*
 * train.c - the trainer (train.h): the training graph built from an ONNX
 * model, the loss, the optimizers, the constraints a finetune keeps
 * (masks, shared weights, fake quantization) and the fitting loop.
 *
 * The graph is built here rather than borrowed from the inference engine
 * (engine.h): the engine folds BatchNormalization into Conv, fuses Relu
 * and pools, and frees activations early, all of which a backward pass
 * must not have.  What the two share is the ONNX reader (formats/onnx.h)
 * and sgemm.  Only the nodes the logits depend on are scheduled; a
 * Softmax or LogSoftmax that ends the graph becomes part of the loss
 * (softmax and cross-entropy fused: the gradient is p - onehot, with no
 * division by a probability).
 *
 * Each step: gather the batch through the epoch's permutation, run the
 * forward pass in training mode keeping every activation, the loss and
 * its gradient on the logits, the backward pass in reverse schedule
 * order, then the optimizer on every parameter that got a gradient.
 * Buffers (activations, gradients, saved masks, Conv columns, the batch)
 * grow to the largest batch once and are then reused: a step allocates
 * nothing.
 */
#include <math.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#include "passes/engine/train_internal.h"

/* -O2 on GCC 12 leaves the element-wise loops scalar; errno is never
 * read, and with it sqrtf vectorises */
#pragma GCC optimize("O3", "no-math-errno")

/* ---- PRNG: xoshiro256** (Blackman & Vigna 2018), seeded by splitmix64 ---- */

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void seed_rng(struct slim_trainer *t, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        t->rng[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t tr_rand(struct slim_trainer *t)
{
    uint64_t *s = t->rng, r = rotl(s[1] * 5, 7) * 9, u = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= u;
    s[3] = rotl(s[3], 45);
    return r;
}

/* ---- buffers ------------------------------------------------------------------ */

/* Whether growing a buffer from cap to bytes keeps the trainer's
 * activations and gradients within o.max_bytes; counts the growth. */
static int tr_budget(struct slim_trainer *t, size_t cap, size_t bytes, const char *name,
                     struct slim_error *err)
{
    if (bytes < 64)
        bytes = 64;
    if (bytes <= cap)
        return 0;
    if (t->o.max_bytes && t->held - cap + bytes > t->o.max_bytes)
        return slim_error_set(err, SLIM_EBUDGET, "training '%.60s' needs %llu MiB, past the "
                              "limit of %llu MiB for activations and gradients", name,
                              (unsigned long long)((t->held - cap + bytes + (1u << 20) - 1) >> 20),
                              (unsigned long long)(t->o.max_bytes >> 20));
    t->held = t->held - cap + bytes;
    return 0;
}

void *tr_scratch(void **p, size_t *cap, size_t bytes)
{
    if (bytes < 64)
        bytes = 64;
    if (*cap >= bytes)
        return *p;
    slim_aligned_free(*p);
    *cap = 0;
    if (!(*p = slim_aligned_alloc(bytes)))
        return NULL;
    *cap = bytes;
    return *p;
}

#define TR_MAX_NUMEL ((int64_t)1 << 40)

int tr_ensure(struct slim_trainer *t, struct tv *v, int ndim, const int64_t *shape,
              struct slim_error *err)
{
    int64_t n = 1;
    size_t bytes;
    int rc;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (shape[i] && n > TR_MAX_NUMEL / shape[i]))
            return slim_error_set(err, SLIM_EINVAL, "'%.80s': shape too large", v->name);
        n *= shape[i];
    }
    v->ndim = ndim;
    memcpy(v->shape, shape, (size_t)ndim * sizeof *shape);
    v->numel = n;
    bytes = (size_t)n * sizeof(float);
    if ((rc = tr_budget(t, v->cap, bytes, v->name, err)))
        return rc;
    if (!tr_scratch((void **)&v->buf, &v->cap, bytes))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory for '%.80s' (%lld floats)",
                              v->name, (long long)n);
    v->data = v->buf;
    return 0;
}

float *tr_grad(struct slim_trainer *t, struct tv *v, int *acc, struct slim_error *err)
{
    if (v->kind == TV_PARAM) {
        v->grad = t->p[v->param].g;
    } else {
        if (tr_budget(t, v->gcap, (size_t)v->numel * sizeof(float), v->name, err))
            return NULL;
        if (!tr_scratch((void **)&v->gbuf, &v->gcap, (size_t)v->numel * sizeof(float))) {
            slim_error_set(err, SLIM_ENOMEM, "out of memory for the gradient of '%.80s'",
                           v->name);
            return NULL;
        }
        v->grad = v->gbuf;
    }
    *acc = v->gset;
    v->gset = 1;
    return v->grad;
}

/* ---- options -------------------------------------------------------------------- */

void slim_train_opts_init(struct slim_train_opts *o)
{
    memset(o, 0, sizeof *o);
    o->optimizer = SLIM_OPT_ADAM;
    o->lr = 1e-3f;
    o->momentum = 0.9f;
    o->beta1 = 0.9f;
    o->beta2 = 0.999f;
    o->eps = 1e-8f;
    o->batch_size = 128;
    o->epochs = 1;
    o->shuffle = 1;
    o->temperature = 1.0f;
    o->alpha = 0.5f;
}

static int check_opts(const struct slim_train_opts *o, struct slim_error *err)
{
    if (o->optimizer != SLIM_OPT_SGD && o->optimizer != SLIM_OPT_ADAM)
        return slim_error_set(err, SLIM_EINVAL, "optimizer: expected sgd or adam");
    if (!(o->lr > 0.0f) || !isfinite(o->lr))
        return slim_error_set(err, SLIM_EINVAL, "lr: must be > 0");
    if (!(o->momentum >= 0.0f && o->momentum < 1.0f))
        return slim_error_set(err, SLIM_EINVAL, "momentum: must be in [0, 1)");
    if (!(o->beta1 >= 0.0f && o->beta1 < 1.0f) || !(o->beta2 >= 0.0f && o->beta2 < 1.0f))
        return slim_error_set(err, SLIM_EINVAL, "betas: must be in [0, 1)");
    if (!(o->eps > 0.0f))
        return slim_error_set(err, SLIM_EINVAL, "eps: must be > 0");
    if (!(o->weight_decay >= 0.0f) || !isfinite(o->weight_decay))
        return slim_error_set(err, SLIM_EINVAL, "weight_decay: must be >= 0");
    if (o->batch_size < 1 || o->batch_size > (1 << 24))
        return slim_error_set(err, SLIM_EINVAL, "batch_size: must be in [1, 16777216]");
    if (o->epochs < 0)
        return slim_error_set(err, SLIM_EINVAL, "epochs: must be >= 0");
    if (!(o->temperature > 0.0f) || !isfinite(o->temperature))
        return slim_error_set(err, SLIM_EINVAL, "temperature: must be > 0");
    if (!(o->alpha >= 0.0f && o->alpha <= 1.0f))
        return slim_error_set(err, SLIM_EINVAL, "alpha: must be in [0, 1]");
    return 0;
}

int slim_trainer_set_opts(struct slim_trainer *t, const struct slim_train_opts *o,
                          struct slim_error *err)
{
    int rc = check_opts(o, err);
    if (rc)
        return rc;
    if (o->optimizer != t->o.optimizer) {
        for (size_t i = 0; i < t->np; i++) {
            struct tparam *p = &t->p[i];
            if (p->s1)
                memset(p->s1, 0, (size_t)p->n * sizeof(float));
            if (p->s2)
                memset(p->s2, 0, (size_t)p->n * sizeof(float));
            if (p->b1)
                memset(p->b1, 0, (size_t)p->k * sizeof(float));
            if (p->b2)
                memset(p->b2, 0, (size_t)p->k * sizeof(float));
        }
        t->adam_t = 0;
    }
    if (o->seed != t->o.seed)
        seed_rng(t, o->seed);
    t->o = *o;
    return 0;
}

/* ---- building the graph ----------------------------------------------------------- */

static int find_value(const struct slim_trainer *t, const char *name)
{
    for (size_t i = t->nv; i-- > 0;)
        if (t->v[i].name && !strcmp(t->v[i].name, name))
            return (int)i;
    return -1;
}

static struct tv *new_value(struct slim_trainer *t, const char *name)
{
    struct tv *v = &t->v[t->nv++];
    memset(v, 0, sizeof *v);
    v->name = name;
    v->param = -1;
    v->producer = -1;
    return v;
}

/* A tensor's elements as a value: FLOAT -> a float constant, small
 * INT64/INT32 -> integer values, anything else TV_OTHER (an error if an
 * op the trainer runs reads it). */
static int load_tensor(struct slim_trainer *t, struct slim_onnx *m, const Onnx__TensorProto *tp,
                       struct tv *v, struct slim_error *err)
{
    const void *data;
    size_t nbytes;
    int type = tp->has_data_type ? tp->data_type : 0, rc;
    int64_t n = slim_onnx_numel(tp);
    if (tp->n_dims > SLIM_MAX_DIMS || n < 0)
        return slim_error_set(err, SLIM_EFORMAT, "tensor '%.80s': bad dims", v->name);
    v->ndim = (int)tp->n_dims;
    for (size_t i = 0; i < tp->n_dims; i++)
        v->shape[i] = tp->dims[i];
    v->numel = n;
    if (type == SLIM_ONNX_FLOAT) {
        if ((rc = slim_onnx_tensor_data(m, tp, &data, &nbytes, NULL, err)))
            return rc;
        if ((rc = tr_ensure(t, v, v->ndim, v->shape, err)))
            return rc;
        memcpy(v->buf, data, nbytes);
        v->kind = TV_CONST;
    } else if ((type == SLIM_ONNX_INT64 || type == SLIM_ONNX_INT32) && n <= TV_MAX_INTS) {
        if ((rc = slim_onnx_tensor_data(m, tp, &data, &nbytes, NULL, err)))
            return rc;
        for (int64_t i = 0; i < n; i++) {
            if (type == SLIM_ONNX_INT64) {
                int64_t x;
                memcpy(&x, (const char *)data + 8 * i, 8);
                v->ints[i] = x;
            } else {
                int32_t x;
                memcpy(&x, (const char *)data + 4 * i, 4);
                v->ints[i] = x;
            }
        }
        v->kind = TV_INT;
    } else {
        v->kind = TV_OTHER;
    }
    return 0;
}

static int load_constant(struct slim_trainer *t, struct slim_onnx *m, struct tnode *n,
                         struct tv *v, struct slim_error *err)
{
    const Onnx__AttributeProto *a;
    int rc;
    if ((a = slim_onnx_attr(n->proto, "value")) && a->t)
        return load_tensor(t, m, a->t, v, err);
    if ((a = slim_onnx_attr(n->proto, "value_float"))) {
        if ((rc = tr_ensure(t, v, 0, NULL, err)))
            return rc;
        v->buf[0] = a->f;
        v->kind = TV_CONST;
        return 0;
    }
    if ((a = slim_onnx_attr(n->proto, "value_floats"))) {
        int64_t len = (int64_t)a->n_floats;
        if ((rc = tr_ensure(t, v, 1, &len, err)))
            return rc;
        memcpy(v->buf, a->floats, a->n_floats * sizeof(float));
        v->kind = TV_CONST;
        return 0;
    }
    if ((a = slim_onnx_attr(n->proto, "value_int"))) {
        v->kind = TV_INT;
        v->ndim = 0;
        v->numel = 1;
        v->ints[0] = a->i;
        return 0;
    }
    if ((a = slim_onnx_attr(n->proto, "value_ints")) && a->n_ints <= TV_MAX_INTS) {
        v->kind = TV_INT;
        v->ndim = 1;
        v->shape[0] = (int64_t)a->n_ints;
        v->numel = (int64_t)a->n_ints;
        for (size_t i = 0; i < a->n_ints; i++)
            v->ints[i] = a->ints[i];
        return 0;
    }
    v->kind = TV_OTHER;
    return 0;
}

int tr_make_param(struct slim_trainer *t, int vi, int is_state, struct slim_error *err)
{
    struct tv *v;
    struct tparam *p;
    if (vi < 0)
        return 0;
    v = &t->v[vi];
    if (v->kind == TV_PARAM || v->kind == TV_STATE) {
        if ((v->kind == TV_STATE) != (is_state != 0))
            return slim_error_set(err, SLIM_EUNSUPPORTED, "initializer '%.80s' is both a "
                                  "trained weight and a running statistic", v->name);
        return 0;
    }
    if (v->kind != TV_CONST || !v->init)
        return 0;
    p = &t->p[t->np];
    memset(p, 0, sizeof *p);
    p->v = vi;
    p->is_state = is_state;
    p->ndim = v->ndim;
    memcpy(p->dims, v->shape, sizeof p->dims);
    p->n = v->numel;
    p->w = v->buf;
    v->buf = NULL;
    v->cap = 0;
    p->decay = v->ndim >= 2;
    v->kind = is_state ? TV_STATE : TV_PARAM;
    v->param = (int)t->np++;    /* p->w is the trainer's now, freed with it */
    v->data = p->w;
    if (!is_state && !(p->g = slim_aligned_alloc((size_t)(p->n ? p->n : 1) * sizeof(float))))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    return 0;
}

static int is_int_op(int op)
{
    return op >= OP_SHAPE;
}

void tr_plan_grads(struct slim_trainer *t)
{
    for (size_t i = 0; i < t->nv; i++) {
        struct tv *v = &t->v[i];
        if (v->kind == TV_PARAM)
            v->needs_grad = !t->p[v->param].frozen;
        else if (v->kind != TV_INPUT)
            v->needs_grad = 0;
    }
    for (size_t i = 0; i < t->nn; i++) {
        struct tnode *n = &t->nodes[i];
        int any = 0;
        if (is_int_op(n->op))
            continue;
        for (int k = 0; k < n->n_in; k++)
            if (n->in[k] >= 0 && t->v[n->in[k]].needs_grad)
                any = 1;
        t->v[n->out].needs_grad = any;
    }
}

static const char *pname(const Onnx__NodeProto *np)
{
    return np->name && *np->name ? np->name : "?";
}

/* The per-sample dims of the graph input. */
static int read_input(struct slim_trainer *t, const Onnx__ValueInfoProto *vi,
                      struct slim_error *err)
{
    const Onnx__TypeProto__Tensor *tt = vi->type ? vi->type->tensor_type : NULL;
    const Onnx__TensorShapeProto *sh = tt ? tt->shape : NULL;
    if (!tt || (tt->has_elem_type && tt->elem_type != SLIM_ONNX_FLOAT))
        return slim_error_set(err, SLIM_EUNSUPPORTED, "input '%.80s': training needs a FLOAT "
                              "tensor input", vi->name);
    if (!sh) {
        t->in_ndim = -1;
        return 0;
    }
    if (sh->n_dim < 1 || sh->n_dim > SLIM_MAX_DIMS)
        return slim_error_set(err, SLIM_EFORMAT, "input '%.80s': rank %zu (a batch dim "
                              "first is needed)", vi->name, sh->n_dim);
    t->in_ndim = (int)sh->n_dim - 1;
    for (size_t i = 1; i < sh->n_dim; i++) {
        const Onnx__TensorShapeProto__Dimension *d = sh->dim[i];
        t->in_dims[i - 1] =
            d->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE &&
                    d->dim_value > 0 ? d->dim_value : -1;
    }
    return 0;
}

static int64_t sample_elems(const struct slim_trainer *t)
{
    int64_t n = 1;
    if (t->in_ndim < 0)
        return -1;
    for (int i = 0; i < t->in_ndim; i++) {
        if (t->in_dims[i] < 0)
            return -1;
        n *= t->in_dims[i];
    }
    return n;
}

static int forward(struct slim_trainer *t, const float *x, int64_t nb, struct slim_error *err);

/* Runs one zero sample through the graph in evaluation mode: the
 * logits per sample. */
static int find_classes(struct slim_trainer *t, struct slim_error *err)
{
    int64_t in = sample_elems(t);
    float *z;
    int rc;
    t->classes = 0;
    if (in < 0)
        return 0;
    if (!(z = slim_aligned_alloc((size_t)(in ? in : 1) * sizeof(float))))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    memset(z, 0, (size_t)in * sizeof(float));
    t->training = 0;
    rc = forward(t, z, 1, err);
    slim_aligned_free(z);
    if (rc)
        return rc;
    t->classes = t->v[t->logits].numel;
    if (t->classes < 1)
        return slim_error_set(err, SLIM_EINVAL, "the output '%.80s' is empty",
                              t->v[t->logits].name);
    return 0;
}

static int build(struct slim_trainer *t, struct slim_onnx *m, struct slim_error *err)
{
    const Onnx__GraphProto *g = m->graph;
    size_t cap = g->n_initializer + g->n_sparse_initializer + g->n_input + 1, nn = g->n_node;
    int *order = NULL, *done = NULL;
    char *need = NULL;
    int rc = 0;

    for (size_t i = 0; i < g->n_node; i++)
        cap += g->node[i]->n_output;
    if (!(t->v = slim_calloc(cap, sizeof *t->v)) ||
        !(t->p = slim_calloc(g->n_initializer + g->n_sparse_initializer + 1, sizeof *t->p)) ||
        !(t->nodes = slim_calloc(nn + 1, sizeof *t->nodes)) ||
        !(order = slim_calloc(nn + 1, sizeof *order)) ||
        !(done = slim_calloc(nn + 1, sizeof *done)) || !(need = slim_calloc(nn + 1, 1))) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < g->n_initializer; i++) {
        struct tv *v = new_value(t, g->initializer[i]->name ? g->initializer[i]->name : "");
        v->init = g->initializer[i];
        if ((rc = load_tensor(t, m, g->initializer[i], v, err)))
            goto out;
    }
    for (size_t i = 0; i < g->n_sparse_initializer; i++) {
        const Onnx__TensorProto *d;
        struct tv *v;
        if ((rc = slim_onnx_sparse_dense(m, g->sparse_initializer[i], &d, err)))
            goto out;
        v = new_value(t, d->name ? d->name : "");
        v->init = d;
        if ((rc = load_tensor(t, m, d, v, err)))
            goto out;
    }
    t->input = -1;
    for (size_t i = 0; i < g->n_input; i++) {
        const char *nm = g->input[i]->name ? g->input[i]->name : "";
        if (find_value(t, nm) >= 0)
            continue;
        if ((rc = read_input(t, g->input[i], err)))
            goto out;
        t->input = (int)(new_value(t, nm) - t->v);
        t->v[t->input].kind = TV_INPUT;
        break;
    }
    if (t->input < 0 || g->n_output < 1) {
        rc = slim_error_set(err, SLIM_EFORMAT, "the graph needs an input and an output");
        goto out;
    }
    /* schedule: Kahn's order, a node when all its inputs are defined */
    size_t n_done = 0;
    for (int progress = 1; progress && n_done < nn;) {
        progress = 0;
        for (size_t i = 0; i < nn; i++) {
            const Onnx__NodeProto *np = g->node[i];
            int ready = 1;
            if (done[i])
                continue;
            for (size_t k = 0; k < np->n_input && ready; k++)
                if (np->input[k] && *np->input[k] && find_value(t, np->input[k]) < 0)
                    ready = 0;
            if (!ready)
                continue;
            for (size_t k = 0; k < np->n_output; k++) {
                if (!np->output[k] || !*np->output[k])
                    continue;
                if (find_value(t, np->output[k]) >= 0) {
                    rc = slim_error_set(err, SLIM_EFORMAT, "node '%.60s': output '%.60s' is "
                                        "defined twice", pname(np), np->output[k]);
                    goto out;
                }
                new_value(t, np->output[k])->producer = (int)n_done;
            }
            order[n_done++] = (int)i;
            done[i] = 1;
            progress = 1;
        }
    }
    /* the logits: the first output, less a Softmax/LogSoftmax that ends the graph */
    int lg = find_value(t, g->output[0]->name ? g->output[0]->name : "");
    if (lg < 0) {
        rc = slim_error_set(err, SLIM_EFORMAT, "output '%.80s' is not computed (an undefined "
                            "input or a cycle)", g->output[0]->name);
        goto out;
    }
    while (t->v[lg].producer >= 0) {
        const Onnx__NodeProto *np = g->node[order[t->v[lg].producer]];
        const Onnx__AttributeProto *a = slim_onnx_attr(np, "axis");
        if (strcmp(np->op_type, "Softmax") && strcmp(np->op_type, "LogSoftmax"))
            break;
        if (a && a->i != -1 && a->i != 1) {
            rc = slim_error_set(err, SLIM_EUNSUPPORTED, "operator '%s' (node '%.60s') is not "
                                "supported for training: the final softmax must be over the "
                                "last axis", np->op_type, pname(np));
            goto out;
        }
        if (np->n_input < 1 || (lg = find_value(t, np->input[0])) < 0) {
            rc = slim_error_set(err, SLIM_EFORMAT, "node '%.60s': no input", pname(np));
            goto out;
        }
    }
    t->logits = lg;
    /* the nodes the logits need, walking producers back */
    {
        int stack[4096], sp = 0;
        if (t->v[lg].producer >= 0)
            stack[sp++] = t->v[lg].producer;
        while (sp > 0) {
            int s = stack[--sp];
            const Onnx__NodeProto *np = g->node[order[s]];
            if (need[s])
                continue;
            need[s] = 1;
            for (size_t k = 0; k < np->n_input; k++) {
                int vi = np->input[k] && *np->input[k] ? find_value(t, np->input[k]) : -1;
                if (vi >= 0 && t->v[vi].producer >= 0 && !need[t->v[vi].producer]) {
                    if (sp == (int)(sizeof stack / sizeof *stack)) {
                        rc = slim_error_set(err, SLIM_EUNSUPPORTED, "the graph is too deep "
                                            "for training");
                        goto out;
                    }
                    stack[sp++] = t->v[vi].producer;
                }
            }
        }
    }
    /* compile the needed nodes in schedule order */
    for (size_t s = 0; s < n_done; s++) {
        const Onnx__NodeProto *np = g->node[order[s]];
        struct tnode *n;
        if (!need[s])
            continue;
        n = &t->nodes[t->nn];
        memset(n, 0, sizeof *n);
        n->proto = np;
        if ((np->domain && *np->domain && strcmp(np->domain, "ai.onnx")) ||
            (n->op = tr_op_find(np->op_type)) < 0) {
            rc = slim_error_set(err, SLIM_EUNSUPPORTED, "operator '%.40s' (node '%.60s') is "
                                "not supported for training", np->op_type, pname(np));
            goto out;
        }
        if (np->n_input > TN_MAX_IN && n->op != OP_CONCAT) {
            rc = slim_error_set(err, SLIM_EFORMAT, "node '%.60s': %zu inputs", pname(np),
                                np->n_input);
            goto out;
        }
        if (n->op == OP_CONCAT && np->n_input > TN_MAX_IN) {
            rc = slim_error_set(err, SLIM_EUNSUPPORTED, "operator 'Concat' (node '%.60s') is "
                                "not supported for training: more than %d inputs", pname(np),
                                TN_MAX_IN);
            goto out;
        }
        n->n_in = (int)np->n_input;
        for (int k = 0; k < n->n_in; k++)
            n->in[k] = np->input[k] && *np->input[k] ? find_value(t, np->input[k]) : -1;
        n->n_out = (int)np->n_output;
        n->out = np->n_output && np->output[0] && *np->output[0]
                     ? find_value(t, np->output[0]) : -1;
        if (n->out < 0) {
            rc = slim_error_set(err, SLIM_EFORMAT, "node '%.60s': no output", pname(np));
            goto out;
        }
        t->v[n->out].producer = (int)t->nn;
        /* extra outputs (Dropout's mask, BN's training outputs) are not made */
        for (size_t k = 1; k < np->n_output; k++) {
            int vi = np->output[k] && *np->output[k] ? find_value(t, np->output[k]) : -1;
            if (vi >= 0)
                t->v[vi].kind = TV_OTHER;
        }
        if (n->op == OP_CONSTANT) {
            t->v[n->out].producer = -1;
            /* a value of another type (Dropout's training_mode) is TV_OTHER:
             * an error only for a node that reads it */
            if ((rc = load_constant(t, m, n, &t->v[n->out], err)))
                goto out;
            continue;   /* made now, nothing to run */
        }
        /* inputs the op can read */
        for (int k = 0; k < n->n_in; k++) {
            struct tv *x = n->in[k] >= 0 ? &t->v[n->in[k]] : NULL;
            int int_ok = is_int_op(n->op) || (n->op == OP_RESHAPE && k == 1);
            if (!x || (n->op == OP_DROPOUT && k == 2))
                continue;
            if (x->kind == TV_OTHER || (x->kind == TV_INT && !int_ok) ||
                (is_int_op(n->op) && n->op != OP_SHAPE && x->kind != TV_INT)) {
                rc = slim_error_set(err, SLIM_EUNSUPPORTED, "operator '%.40s' (node '%.60s') "
                                    "is not supported for training: input '%.60s' has a "
                                    "type it cannot take", np->op_type, pname(np), x->name);
                goto out;
            }
        }
        t->v[n->out].kind = is_int_op(n->op) ? TV_INT : TV_ACT;
        if ((rc = tr_compile(t, n, err)))
            goto out;
        t->nn++;
    }
    /* no value read by a scheduled node may be one the trainer does not make */
    for (size_t i = 0; i < t->nn; i++)
        for (int k = 0; k < t->nodes[i].n_in; k++) {
            int vi = t->nodes[i].in[k];
            if (vi >= 0 && t->v[vi].kind == TV_OTHER && !(t->nodes[i].op == OP_DROPOUT && k == 2)) {
                rc = slim_error_set(err, SLIM_EUNSUPPORTED, "node '%.60s' reads '%.60s', an "
                                    "output the trainer does not compute",
                                    pname(t->nodes[i].proto), t->v[vi].name);
                goto out;
            }
        }
    tr_plan_grads(t);
out:
    slim_free(order);
    slim_free(done);
    slim_free(need);
    return rc;
}

int slim_trainer_new(struct slim_onnx *m, const struct slim_train_opts *o,
                     struct slim_trainer **out, struct slim_error *err)
{
    struct slim_trainer *t;
    int rc;
    *out = NULL;
    if ((rc = check_opts(o, err)))
        return rc;
    if (!(t = slim_calloc(1, sizeof *t)))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    if (pthread_mutex_init(&t->mu, NULL)) {
        slim_free(t);
        return slim_error_set(err, SLIM_ENOMEM, "out of memory (mutex)");
    }
    t->o = *o;
    seed_rng(t, o->seed);
    t->prog.val_loss = t->prog.val_accuracy = t->prog.accuracy = NAN;
    if ((rc = build(t, m, err)) || (rc = find_classes(t, err))) {
        slim_trainer_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

void slim_trainer_free(struct slim_trainer *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->nv; i++) {
        slim_aligned_free(t->v[i].buf);
        slim_aligned_free(t->v[i].gbuf);
    }
    for (size_t i = 0; i < t->nn; i++) {
        slim_aligned_free(t->nodes[i].save);
        slim_aligned_free(t->nodes[i].stat);
    }
    for (size_t i = 0; i < t->np; i++) {
        struct tparam *p = &t->p[i];
        slim_aligned_free(p->w);
        slim_aligned_free(p->g);
        slim_aligned_free(p->s1);
        slim_aligned_free(p->s2);
        slim_aligned_free(p->wq);
        slim_free(p->keep);
        slim_free(p->idx);
        slim_free(p->book);
        slim_free(p->bg);
        slim_free(p->b1);
        slim_free(p->b2);
    }
    slim_free(t->v);
    slim_free(t->p);
    slim_free(t->nodes);
    slim_aligned_free(t->col);
    slim_aligned_free(t->tmp);
    slim_aligned_free(t->xb);
    slim_aligned_free(t->tb);
    slim_aligned_free(t->pt);
    slim_aligned_free(t->lb);
    slim_aligned_free(t->perm);
    pthread_mutex_destroy(&t->mu);
    slim_free(t);
}

/* ---- shapes ------------------------------------------------------------------------ */

int64_t slim_trainer_input(const struct slim_trainer *t, int64_t *dims, int *ndim)
{
    if (ndim)
        *ndim = t->in_ndim < 0 ? 0 : t->in_ndim;
    if (dims && t->in_ndim > 0)
        memcpy(dims, t->in_dims, (size_t)t->in_ndim * sizeof *dims);
    return sample_elems(t);
}

int slim_trainer_set_sample_shape(struct slim_trainer *t, const int64_t *dims, int ndim,
                                  struct slim_error *err)
{
    if (ndim < 0 || ndim >= SLIM_MAX_DIMS)
        return slim_error_set(err, SLIM_EINVAL, "sample shape: rank %d", ndim);
    if (t->in_ndim >= 0 && ndim != t->in_ndim)
        return slim_error_set(err, SLIM_EINVAL, "sample shape: rank %d, the model's input has "
                              "%d dims after the batch", ndim, t->in_ndim);
    for (int i = 0; i < ndim; i++) {
        if (dims[i] < 1)
            return slim_error_set(err, SLIM_EINVAL, "sample shape: dim %d is %lld", i,
                                  (long long)dims[i]);
        if (t->in_ndim >= 0 && t->in_dims[i] >= 0 && t->in_dims[i] != dims[i])
            return slim_error_set(err, SLIM_EINVAL, "sample shape: dim %d is %lld, the model "
                                  "declares %lld", i, (long long)dims[i],
                                  (long long)t->in_dims[i]);
    }
    t->in_ndim = ndim;
    memcpy(t->in_dims, dims, (size_t)ndim * sizeof *dims);
    return find_classes(t, err);
}

int64_t slim_trainer_classes(const struct slim_trainer *t)
{
    return t->classes;
}

/* ---- forward, loss, backward ----------------------------------------------------------- */

static int forward(struct slim_trainer *t, const float *x, int64_t nb, struct slim_error *err)
{
    struct tv *in = &t->v[t->input];
    int rc;
    if (sample_elems(t) < 0)
        return slim_error_set(err, SLIM_EINVAL, "the input's sample shape is not known (set it "
                              "with slim_trainer_set_sample_shape)");
    in->ndim = t->in_ndim + 1;
    in->shape[0] = nb;
    memcpy(in->shape + 1, t->in_dims, (size_t)t->in_ndim * sizeof *t->in_dims);
    in->numel = nb * sample_elems(t);
    in->data = (float *)x;
    for (size_t i = 0; i < t->np; i++) {
        struct tparam *p = &t->p[i];
        if (p->fq) {
            p->fq(p->fq_ud, t->v[p->v].name, p->w, p->wq, p->ndim, p->dims);
            t->v[p->v].data = p->wq;
        } else {
            t->v[p->v].data = p->w;
        }
    }
    for (size_t i = 0; i < t->nn; i++) {
        struct tnode *n = &t->nodes[i];
        if (n->op == OP_CONSTANT)
            continue;
        if ((rc = tr_forward(t, n, err)))
            return rc;
    }
    return 0;
}

/* Loss over nb rows of logits s [nb, c] (labels lab, teacher z), its
 * gradient into ds (may be NULL), and the rows argmax got right.
 * Returns the summed loss. */
static double loss_rows(const struct slim_trainer *t, const float *s, int64_t nb, int64_t c,
                        const int64_t *lab, const float *z, int zprobs, float *ds,
                        int64_t *correct)
{
    double total = 0.0;
    float T = t->o.temperature;
    float a = z ? (lab ? t->o.alpha : 1.0f) : 0.0f;
    float inv_n = 1.0f / (float)nb;
    for (int64_t r = 0; r < nb; r++) {
        const float *sr = s + r * c;
        float *dr = ds ? ds + r * c : NULL;
        float mx = sr[0];
        int64_t am = 0;
        for (int64_t j = 1; j < c; j++)
            if (sr[j] > mx)
                mx = sr[j], am = j;
        if (lab && correct && am == lab[r])
            (*correct)++;
        if (dr)
            memset(dr, 0, (size_t)c * sizeof(float));
        if (lab && a < 1.0f) {      /* (1 - a) CE(softmax(s), y) */
            double se = 0.0;
            for (int64_t j = 0; j < c; j++)
                se += exp((double)(sr[j] - mx));
            double lse = mx + log(se);
            total += (1.0 - a) * (lse - sr[lab[r]]);
            if (dr) {
                for (int64_t j = 0; j < c; j++)
                    dr[j] += (1.0f - a) * (float)exp(sr[j] - lse) * inv_n;
                dr[lab[r]] -= (1.0f - a) * inv_n;
            }
        }
        if (z && a > 0.0f) {        /* a T^2 KL(softmax(z/T) || softmax(s/T)) */
            const float *zr = z + r * c;
            double zmx = -INFINITY, zse = 0.0, qse = 0.0, kl = 0.0;
            for (int64_t j = 0; j < c; j++) {
                double zj = zprobs ? (zr[j] > 0.0f ? log(zr[j]) : -INFINITY) : zr[j];
                if (zj > zmx)
                    zmx = zj;
            }
            for (int64_t j = 0; j < c; j++) {
                double zj = zprobs ? (zr[j] > 0.0f ? log(zr[j]) : -INFINITY) : zr[j];
                zse += exp((zj - zmx) / T);
                qse += exp((double)(sr[j] - mx) / T);
            }
            double zl = log(zse), ql = log(qse);
            for (int64_t j = 0; j < c; j++) {
                double zj = zprobs ? (zr[j] > 0.0f ? log(zr[j]) : -INFINITY) : zr[j];
                double lp = (zj - zmx) / T - zl, lq = (double)(sr[j] - mx) / T - ql;
                double p = exp(lp);
                if (p > 0.0)
                    kl += p * (lp - lq);
                if (dr)
                    dr[j] += a * T * (float)(exp(lq) - p) * inv_n;
            }
            total += (double)a * T * T * kl;
        }
    }
    return total;
}

static int backward(struct slim_trainer *t, struct slim_error *err)
{
    int rc;
    for (size_t i = t->nn; i-- > 0;) {
        struct tnode *n = &t->nodes[i];
        struct tv *y = &t->v[n->out];
        if (is_int_op(n->op) || !y->needs_grad || !y->gset)
            continue;
        if ((rc = tr_backward(t, n, err)))
            return rc;
    }
    return 0;
}

/* One forward pass (training mode when backward, else as t->training
 * says), the loss over nb samples (mean into *loss), and with backward
 * its gradient taken back to every parameter.  No optimizer step.  For
 * fit, and for the unit tests' finite differences. */
int tr_step(struct slim_trainer *t, const float *x, const int64_t *labels,
            const float *teacher, int teacher_probs, int64_t nb, int backward_too, double *loss,
            int64_t *correct, struct slim_error *err)
{
    struct tv *lg = &t->v[t->logits];
    float *ds = NULL;
    int rc, acc;
    if ((rc = forward(t, x, nb, err)))
        return rc;
    if (lg->numel != nb * t->classes)
        return slim_error_set(err, SLIM_EINVAL, "the output '%.80s' has %lld values for %lld "
                              "samples of %lld classes", lg->name, (long long)lg->numel,
                              (long long)nb, (long long)t->classes);
    if (backward_too) {
        for (size_t i = 0; i < t->nv; i++)
            t->v[i].gset = 0;
        if (!lg->needs_grad)
            backward_too = 0;
        else if (!(ds = tr_grad(t, lg, &acc, err)))
            return err->code;
    }
    *loss = loss_rows(t, lg->data, nb, t->classes, labels, teacher, teacher_probs, ds,
                      correct) / (double)nb;
    if (backward_too)
        return backward(t, err);
    return 0;
}

/* ---- optimizers ------------------------------------------------------------------ */

static int ensure_state(struct slim_trainer *t, float **s, int64_t n)
{
    (void)t;
    if (*s)
        return 0;
    if (!(*s = slim_aligned_alloc((size_t)(n ? n : 1) * sizeof(float))))
        return -1;
    memset(*s, 0, (size_t)n * sizeof(float));
    return 0;
}

/* w [n] -= update(g), the state s1/s2 kept; keep (may be NULL) zeroes
 * masked entries' gradient before and their weight and state after. */
static void update(const struct slim_train_opts *o, float *w, float *g, float *s1, float *s2,
                   int64_t n, int decay, const uint8_t *keep, float bc1, float bc2)
{
    float lr = o->lr, wd = decay ? o->weight_decay : 0.0f;
    if (keep)
        for (int64_t i = 0; i < n; i++)
            g[i] = keep[i] ? g[i] : 0.0f;
    if (o->optimizer == SLIM_OPT_SGD) {
        float mu = o->momentum;
        for (int64_t i = 0; i < n; i++) {
            float gi = g[i] + wd * w[i];
            float v = mu * s1[i] + gi;
            s1[i] = v;
            w[i] -= lr * v;
        }
    } else {
        float b1 = o->beta1, b2 = o->beta2, eps = o->eps, step = lr / bc1,
              sbc2 = sqrtf(bc2), dec = 1.0f - lr * wd;
        int64_t i = 0;
#ifdef __SSE2__
        /* four at a time: sqrtf keeps errno semantics, which GCC will not
         * vectorise (and the optimize pragma cannot turn off) */
        __m128 vb1 = _mm_set1_ps(b1), vb2 = _mm_set1_ps(b2), vc1 = _mm_set1_ps(1.0f - b1),
               vc2 = _mm_set1_ps(1.0f - b2), veps = _mm_set1_ps(eps),
               vstep = _mm_set1_ps(step), vs2 = _mm_set1_ps(1.0f / sbc2),
               vdec = _mm_set1_ps(dec);
        for (; i + 4 <= n; i += 4) {
            __m128 gi = _mm_loadu_ps(g + i);
            __m128 m = _mm_add_ps(_mm_mul_ps(vb1, _mm_loadu_ps(s1 + i)), _mm_mul_ps(vc1, gi));
            __m128 v = _mm_add_ps(_mm_mul_ps(vb2, _mm_loadu_ps(s2 + i)),
                                  _mm_mul_ps(_mm_mul_ps(vc2, gi), gi));
            __m128 den = _mm_add_ps(_mm_mul_ps(_mm_sqrt_ps(v), vs2), veps);
            __m128 wi = _mm_sub_ps(_mm_mul_ps(_mm_loadu_ps(w + i), vdec),
                                   _mm_div_ps(_mm_mul_ps(vstep, m), den));
            _mm_storeu_ps(s1 + i, m);
            _mm_storeu_ps(s2 + i, v);
            _mm_storeu_ps(w + i, wi);
        }
#endif
        for (; i < n; i++) {
            float gi = g[i];
            float m = b1 * s1[i] + (1.0f - b1) * gi;
            float v = b2 * s2[i] + (1.0f - b2) * gi * gi;
            s1[i] = m;
            s2[i] = v;
            w[i] = w[i] * dec - step * m / (sqrtf(v) * (1.0f / sbc2) + eps);
        }
    }
    if (keep)
        for (int64_t i = 0; i < n; i++)
            if (!keep[i]) {
                w[i] = 0.0f;
                s1[i] = 0.0f;
                if (s2)
                    s2[i] = 0.0f;
            }
}

static void materialize(struct tparam *p)
{
    for (int64_t i = 0; i < p->n; i++)
        p->w[i] = (p->idx[i] < 0 || (p->keep && !p->keep[i])) ? 0.0f : p->book[p->idx[i]];
}

static int optimizer_step(struct slim_trainer *t, struct slim_error *err)
{
    int adam = t->o.optimizer == SLIM_OPT_ADAM;
    float bc1 = 1.0f, bc2 = 1.0f;
    if (adam) {
        t->adam_t++;
        bc1 = 1.0f - powf(t->o.beta1, (float)t->adam_t);
        bc2 = 1.0f - powf(t->o.beta2, (float)t->adam_t);
    }
    for (size_t i = 0; i < t->np; i++) {
        struct tparam *p = &t->p[i];
        struct tv *v = &t->v[p->v];
        if (p->is_state || p->frozen || !v->gset)
            continue;
        if (p->idx) {
            if (ensure_state(t, &p->b1, p->k) || (adam && ensure_state(t, &p->b2, p->k)))
                return slim_error_set(err, SLIM_ENOMEM, "out of memory");
            memset(p->bg, 0, (size_t)p->k * sizeof(float));
            for (int64_t j = 0; j < p->n; j++)
                if (p->idx[j] >= 0 && (!p->keep || p->keep[j]))
                    p->bg[p->idx[j]] += p->g[j];
            update(&t->o, p->book, p->bg, p->b1, p->b2, p->k, p->decay, NULL, bc1, bc2);
            materialize(p);
            continue;
        }
        if (ensure_state(t, &p->s1, p->n) || (adam && ensure_state(t, &p->s2, p->n)))
            return slim_error_set(err, SLIM_ENOMEM, "out of memory");
        update(&t->o, p->w, p->g, p->s1, p->s2, p->n, p->decay, p->keep, bc1, bc2);
    }
    return 0;
}

/* ---- fit ----------------------------------------------------------------------- */

static int check_data(struct slim_trainer *t, const struct slim_train_data *d, const char *what,
                      struct slim_error *err)
{
    if (!d->x || d->n < 1)
        return slim_error_set(err, SLIM_EINVAL, "%s: no samples", what);
    if (!d->labels && !d->teacher)
        return slim_error_set(err, SLIM_EINVAL, "%s: neither labels nor teacher outputs", what);
    if (d->labels)
        for (int64_t i = 0; i < d->n; i++)
            if (d->labels[i] < 0 || d->labels[i] >= t->classes)
                return slim_error_set(err, SLIM_EINVAL, "%s: label %lld of sample %lld is not "
                                      "in [0, %lld)", what, (long long)d->labels[i],
                                      (long long)i, (long long)t->classes);
    return 0;
}

static int ensure_batch(struct slim_trainer *t, int64_t b, int64_t n, struct slim_error *err)
{
    int64_t in = sample_elems(t);
    if (!tr_scratch((void **)&t->xb, &t->xb_cap, (size_t)(b * in) * sizeof(float)) ||
        !tr_scratch((void **)&t->tb, &t->tb_cap, (size_t)(b * t->classes) * sizeof(float)) ||
        !tr_scratch((void **)&t->lb, &t->lb_cap, (size_t)b * sizeof(int64_t)) ||
        !tr_scratch((void **)&t->perm, &t->perm_cap, (size_t)n * sizeof(int64_t)))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory for a batch of %lld", (long long)b);
    return 0;
}

static int evaluate_rows(struct slim_trainer *t, const struct slim_train_data *d, double *loss,
                         double *acc, struct slim_error *err)
{
    int64_t b = t->o.batch_size, correct = 0;
    double sum = 0.0;
    int rc;
    t->training = 0;
    for (int64_t i = 0; i < d->n; i += b) {
        int64_t nb = d->n - i < b ? d->n - i : b;
        double l;
        if ((rc = tr_step(t, d->x + i * sample_elems(t), d->labels ? d->labels + i : NULL,
                          d->teacher ? d->teacher + i * t->classes : NULL, d->teacher_probs,
                          nb, 0, &l, &correct, err)))
            return rc;
        sum += l * (double)nb;
    }
    *loss = sum / (double)d->n;
    *acc = d->labels ? (double)correct / (double)d->n : NAN;
    return 0;
}

int slim_trainer_fit(struct slim_trainer *t, const struct slim_train_data *train,
                     const struct slim_train_data *val, const struct slim_train_hooks *hooks,
                     struct slim_error *err)
{
    int64_t in = sample_elems(t), b = t->o.batch_size, n = train->n, per, steps;
    struct slim_train_progress pr;
    int rc;
    if (in < 0)
        return slim_error_set(err, SLIM_EINVAL, "the input's sample shape is not known");
    if ((rc = check_data(t, train, "training data", err)) ||
        (val && (rc = check_data(t, val, "validation data", err))))
        return rc;
    if (b > n)
        b = n;
    if ((rc = ensure_batch(t, b, n, err)))
        return rc;
    per = (n + b - 1) / b;
    steps = per * t->o.epochs;
    memset(&pr, 0, sizeof pr);
    pr.epochs = t->o.epochs;
    pr.steps = steps;
    pr.loss = pr.accuracy = pr.val_loss = pr.val_accuracy = NAN;
    pthread_mutex_lock(&t->mu);
    t->prog = pr;
    pthread_mutex_unlock(&t->mu);
    __atomic_store_n(&t->cancel, 0, __ATOMIC_RELAXED);
    for (int64_t i = 0; i < n; i++)
        t->perm[i] = i;
    for (int ep = 0; ep < t->o.epochs; ep++) {
        double t0 = slim_now(), sum = 0.0;
        int64_t correct = 0, seen = 0;
        if (t->o.shuffle)
            for (int64_t i = n - 1; i > 0; i--) {   /* Fisher-Yates */
                int64_t j = (int64_t)((tr_rand(t) >> 11) % (uint64_t)(i + 1)), x = t->perm[i];
                t->perm[i] = t->perm[j];
                t->perm[j] = x;
            }
        for (int64_t s = 0; s < per; s++) {
            int64_t i0 = s * b, nb = n - i0 < b ? n - i0 : b;
            double l;
            if (__atomic_load_n(&t->cancel, __ATOMIC_RELAXED) ||
                (hooks && hooks->cancel && hooks->cancel(hooks->ud)))
                return slim_error_set(err, SLIM_ECANCELED, "training canceled (epoch %d, "
                                      "batch %lld)", ep + 1, (long long)s + 1);
            for (int64_t r = 0; r < nb; r++) {
                int64_t k = t->perm[i0 + r];
                memcpy(t->xb + r * in, train->x + k * in, (size_t)in * sizeof(float));
                if (train->labels)
                    t->lb[r] = train->labels[k];
                if (train->teacher)
                    memcpy(t->tb + r * t->classes, train->teacher + k * t->classes,
                           (size_t)t->classes * sizeof(float));
            }
            t->training = 1;
            if ((rc = tr_step(t, t->xb, train->labels ? t->lb : NULL,
                              train->teacher ? t->tb : NULL, train->teacher_probs, nb, 1, &l,
                              &correct, err)))
                return rc;
            if (!isfinite(l))
                return slim_error_set(err, SLIM_ENUMERIC, "the training loss is %s at epoch %d, "
                                      "batch %lld (lower the learning rate?)",
                                      isnan(l) ? "NaN" : "infinite", ep + 1, (long long)s + 1);
            if ((rc = optimizer_step(t, err)))
                return rc;
            sum += l * (double)nb;
            seen += nb;
            pthread_mutex_lock(&t->mu);
            t->prog.step = (int64_t)ep * per + s + 1;
            t->prog.loss = sum / (double)seen;
            t->prog.accuracy = train->labels ? (double)correct / (double)seen : NAN;
            pthread_mutex_unlock(&t->mu);
        }
        pr.epoch = ep + 1;
        pr.step = (int64_t)(ep + 1) * per;
        pr.loss = sum / (double)seen;
        pr.accuracy = train->labels ? (double)correct / (double)seen : NAN;
        pr.seconds = slim_now() - t0;
        pr.samples_per_s = pr.seconds > 0 ? (double)seen / pr.seconds : 0.0;
        if (val && (rc = evaluate_rows(t, val, &pr.val_loss, &pr.val_accuracy, err)))
            return rc;
        pthread_mutex_lock(&t->mu);
        t->prog = pr;
        pthread_mutex_unlock(&t->mu);
        if (hooks && hooks->epoch && hooks->epoch(hooks->ud, &pr))
            return slim_error_set(err, SLIM_ECANCELED, "training canceled after epoch %d",
                                  ep + 1);
    }
    return 0;
}

void slim_trainer_progress(struct slim_trainer *t, struct slim_train_progress *p)
{
    pthread_mutex_lock(&t->mu);
    *p = t->prog;
    pthread_mutex_unlock(&t->mu);
}

void slim_trainer_cancel(struct slim_trainer *t)
{
    __atomic_store_n(&t->cancel, 1, __ATOMIC_RELAXED);
}

int slim_trainer_predict(struct slim_trainer *t, const float *x, int64_t n, float *out,
                         struct slim_error *err)
{
    int64_t b = t->o.batch_size, in = sample_elems(t);
    int rc;
    if (in < 0)
        return slim_error_set(err, SLIM_EINVAL, "the input's sample shape is not known");
    t->training = 0;
    for (int64_t i = 0; i < n; i += b) {
        int64_t nb = n - i < b ? n - i : b;
        struct tv *lg = &t->v[t->logits];
        if ((rc = forward(t, x + i * in, nb, err)))
            return rc;
        if (lg->numel != nb * t->classes)
            return slim_error_set(err, SLIM_EINVAL, "the output has %lld values for %lld "
                                  "samples", (long long)lg->numel, (long long)nb);
        memcpy(out + i * t->classes, lg->data, (size_t)lg->numel * sizeof(float));
    }
    return 0;
}

int slim_trainer_evaluate(struct slim_trainer *t, const struct slim_train_data *data,
                          double *loss, double *accuracy, struct slim_error *err)
{
    int rc;
    if (sample_elems(t) < 0)
        return slim_error_set(err, SLIM_EINVAL, "the input's sample shape is not known");
    if ((rc = check_data(t, data, "evaluation data", err)))
        return rc;
    return evaluate_rows(t, data, loss, accuracy, err);
}

/* ---- parameters ------------------------------------------------------------------- */

static struct tparam *find_param(struct slim_trainer *t, const char *name, int state_ok,
                                 struct slim_error *err)
{
    for (size_t i = 0; i < t->np; i++)
        if (!strcmp(t->v[t->p[i].v].name, name)) {
            if (t->p[i].is_state && !state_ok) {
                slim_error_set(err, SLIM_EINVAL, "'%.80s' is a running statistic, not a "
                               "trained parameter", name);
                return NULL;
            }
            return &t->p[i];
        }
    slim_error_set(err, SLIM_ENOTFOUND, "the model has no trained parameter '%.80s'", name);
    return NULL;
}

size_t slim_trainer_n_params(const struct slim_trainer *t)
{
    return t->np;
}

int64_t slim_trainer_param_info(const struct slim_trainer *t, size_t i, const char **name,
                                int *ndim, int64_t *dims)
{
    const struct tparam *p;
    if (i >= t->np)
        return -1;
    p = &t->p[i];
    if (name)
        *name = t->v[p->v].name;
    if (ndim)
        *ndim = p->ndim;
    if (dims)
        memcpy(dims, p->dims, (size_t)p->ndim * sizeof *dims);
    return p->n;
}

int slim_trainer_param(struct slim_trainer *t, const char *name, const float **data,
                       int64_t *n, struct slim_error *err)
{
    struct tparam *p = find_param(t, name, 1, err);
    if (!p)
        return err->code;
    *data = p->w;
    *n = p->n;
    return 0;
}

static void reset_state(struct tparam *p)
{
    if (p->s1)
        memset(p->s1, 0, (size_t)p->n * sizeof(float));
    if (p->s2)
        memset(p->s2, 0, (size_t)p->n * sizeof(float));
}

int slim_trainer_set_param(struct slim_trainer *t, const char *name, const float *data,
                           int64_t n, struct slim_error *err)
{
    struct tparam *p = find_param(t, name, 1, err);
    if (!p)
        return err->code;
    if (n != p->n)
        return slim_error_set(err, SLIM_EINVAL, "'%.80s' has %lld values, not %lld", name,
                              (long long)p->n, (long long)n);
    if (p->idx)
        return slim_error_set(err, SLIM_EINVAL, "'%.80s' is shared: set its codebook with "
                              "slim_trainer_share", name);
    memcpy(p->w, data, (size_t)n * sizeof(float));
    if (p->keep)
        for (int64_t i = 0; i < n; i++)
            if (!p->keep[i])
                p->w[i] = 0.0f;
    reset_state(p);
    return 0;
}

int slim_trainer_codebook(struct slim_trainer *t, const char *name, const float **codebook,
                          int *k, struct slim_error *err)
{
    struct tparam *p = find_param(t, name, 0, err);
    if (!p)
        return err->code;
    if (!p->idx)
        return slim_error_set(err, SLIM_EINVAL, "'%.80s' is not shared", name);
    *codebook = p->book;
    *k = p->k;
    return 0;
}

int slim_trainer_freeze(struct slim_trainer *t, const char *name, struct slim_error *err)
{
    struct tparam *p = find_param(t, name, 0, err);
    if (!p)
        return err->code;
    p->frozen = 1;
    tr_plan_grads(t);
    return 0;
}

int slim_trainer_mask(struct slim_trainer *t, const char *name, const uint8_t *keep,
                      int64_t n, struct slim_error *err)
{
    struct tparam *p = find_param(t, name, 0, err);
    uint8_t *k;
    if (!p)
        return err->code;
    if (n != p->n)
        return slim_error_set(err, SLIM_EINVAL, "mask for '%.80s': %lld values, the parameter "
                              "has %lld", name, (long long)n, (long long)p->n);
    if (!(k = slim_malloc((size_t)(n ? n : 1))))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    for (int64_t i = 0; i < n; i++)
        k[i] = keep[i] != 0;
    slim_free(p->keep);
    p->keep = k;
    for (int64_t i = 0; i < n; i++)
        if (!k[i]) {
            p->w[i] = 0.0f;
            if (p->s1)
                p->s1[i] = 0.0f;
            if (p->s2)
                p->s2[i] = 0.0f;
        }
    return 0;
}

int slim_trainer_share(struct slim_trainer *t, const char *name, const int32_t *idx,
                       const float *codebook, int k, int64_t n, struct slim_error *err)
{
    struct tparam *p = find_param(t, name, 0, err);
    int32_t *ix = NULL;
    float *book = NULL, *bg = NULL;
    if (!p)
        return err->code;
    if (n != p->n)
        return slim_error_set(err, SLIM_EINVAL, "indices for '%.80s': %lld values, the "
                              "parameter has %lld", name, (long long)n, (long long)p->n);
    if (k < 1)
        return slim_error_set(err, SLIM_EINVAL, "codebook for '%.80s': k must be >= 1", name);
    for (int64_t i = 0; i < n; i++)
        if (idx[i] < -1 || idx[i] >= k)
            return slim_error_set(err, SLIM_EINVAL, "indices for '%.80s': index %d at %lld is "
                                  "not in [-1, %d)", name, idx[i], (long long)i, k);
    for (int i = 0; i < k; i++)
        if (!isfinite(codebook[i]))
            return slim_error_set(err, SLIM_EINVAL, "codebook for '%.80s': centroid %d is not "
                                  "finite", name, i);
    if (!(ix = slim_malloc((size_t)(n ? n : 1) * sizeof *ix)) ||
        !(book = slim_malloc((size_t)k * sizeof *book)) ||
        !(bg = slim_malloc((size_t)k * sizeof *bg))) {
        slim_free(ix);
        slim_free(book);
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    }
    memcpy(ix, idx, (size_t)n * sizeof *ix);
    memcpy(book, codebook, (size_t)k * sizeof *book);
    slim_free(p->idx);
    slim_free(p->book);
    slim_free(p->bg);
    slim_free(p->b1);
    slim_free(p->b2);
    p->idx = ix;
    p->book = book;
    p->bg = bg;
    p->b1 = p->b2 = NULL;
    p->k = k;
    materialize(p);
    return 0;
}

int slim_trainer_fake_quant(struct slim_trainer *t, const char *name, slim_train_quant_fn fn,
                            void *ud, struct slim_error *err)
{
    struct tparam *p = find_param(t, name, 0, err);
    if (!p)
        return err->code;
    if (fn && !p->wq && !(p->wq = slim_aligned_alloc((size_t)(p->n ? p->n : 1) * sizeof(float))))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    p->fq = fn;
    p->fq_ud = ud;
    return 0;
}

void slim_train_fq_int8(void *ud, const char *name, const float *w, float *wq, int ndim,
                        const int64_t *dims)
{
    int axis = ud ? *(const int *)ud : -1;
    int64_t outer = 1, len = 1, inner = 1;
    (void)name;
    if (axis < 0 || axis >= ndim) {
        for (int i = 0; i < ndim; i++)
            inner *= dims[i];
    } else {
        for (int i = 0; i < axis; i++)
            outer *= dims[i];
        len = dims[axis];
        for (int i = axis + 1; i < ndim; i++)
            inner *= dims[i];
    }
    for (int64_t c = 0; c < len; c++) {
        float mx = 0.0f;
        for (int64_t o = 0; o < outer; o++)
            for (int64_t i = 0; i < inner; i++) {
                float a = fabsf(w[(o * len + c) * inner + i]);
                if (a > mx)
                    mx = a;
            }
        float scale = mx / 127.0f;
        for (int64_t o = 0; o < outer; o++)
            for (int64_t i = 0; i < inner; i++) {
                int64_t j = (o * len + c) * inner + i;
                float q = scale > 0.0f ? nearbyintf(w[j] / scale) : 0.0f;
                q = q > 127.0f ? 127.0f : q < -127.0f ? -127.0f : q;
                wq[j] = q * scale;
            }
    }
}

int slim_trainer_store(struct slim_trainer *t, struct slim_onnx *m, struct slim_error *err)
{
    const Onnx__GraphProto *g = m->graph;
    Onnx__TensorProto **at;
    int rc = 0;
    if (!(at = slim_calloc(t->np + 1, sizeof *at)))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    for (size_t i = 0; i < t->np; i++) {
        const char *name = t->v[t->p[i].v].name;
        Onnx__TensorProto *tp = NULL;
        for (size_t k = 0; k < g->n_initializer && !tp; k++)
            if (g->initializer[k]->name && !strcmp(g->initializer[k]->name, name))
                tp = g->initializer[k];
        if (!tp || !tp->has_data_type || tp->data_type != SLIM_ONNX_FLOAT ||
            slim_onnx_numel(tp) != t->p[i].n) {
            rc = slim_error_set(err, SLIM_EFORMAT, "initializer '%.80s': %s", name,
                                !tp ? "not in the model (sparse initializers are not "
                                      "written back)" : "not FLOAT of the trained shape");
            goto out;
        }
        at[i] = tp;
    }
    for (size_t i = 0; i < t->np; i++) {
        Onnx__TensorProto *tp = at[i];
        size_t bytes = (size_t)t->p[i].n * sizeof(float);
        int external = tp->has_data_location &&
                       tp->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL;
        if (!external && tp->has_raw_data && tp->raw_data.len == bytes) {
            memcpy(tp->raw_data.data, t->p[i].w, bytes);
        } else if (!external && !tp->has_raw_data && tp->n_float_data == (size_t)t->p[i].n) {
            memcpy(tp->float_data, t->p[i].w, bytes);
        } else {
            /* moved inline; protobuf-c frees it with the model (onnx.c's
             * allocator is slim_malloc's) */
            void *buf = slim_malloc(bytes ? bytes : 1);
            if (!buf) {
                rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
                goto out;
            }
            memcpy(buf, t->p[i].w, bytes);
            if (tp->has_raw_data)
                slim_free(tp->raw_data.data);
            tp->raw_data.data = buf;
            tp->raw_data.len = bytes;
            tp->has_raw_data = 1;
            tp->n_float_data = 0;
            tp->has_data_location = 1;
            tp->data_location = ONNX__TENSOR_PROTO__DATA_LOCATION__DEFAULT;
        }
    }
out:
    slim_free(at);
    return rc;
}
