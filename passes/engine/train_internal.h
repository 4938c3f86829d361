/*
 * train_internal.h - what train.c (the graph, the loss, the optimizers,
 * the API) and train_ops.c (each op's forward and backward) share.
 * Nothing here is seen outside passes/engine/.
 *
 * A training graph is values and nodes.  A value is an activation (its
 * own buffer, sized on the first batch and kept, or a view of its
 * input's for Reshape/Flatten/Identity), the graph input, a parameter
 * (its data is the parameter's forward values), a state tensor
 * (BatchNormalization's running statistics), a float constant, or a small
 * integer tensor (shapes: Shape, Gather, Concat... evaluated on every
 * forward pass, since a shape depends on the batch).  Every activation
 * is kept until the backward pass has used it.
 *
 * Gradients: each value that needs one has a gradient buffer; `gset`
 * says whether this backward pass wrote it yet, so the first writer
 * overwrites (sgemm beta 0) and later ones add (a value read by two
 * nodes), with no memset of every buffer per step.
 */
#ifndef SLIM_TRAIN_INTERNAL_H
#define SLIM_TRAIN_INTERNAL_H

#include <pthread.h>
#include <stdint.h>
#include "passes/engine/train.h"

enum tv_kind { TV_ACT, TV_INPUT, TV_PARAM, TV_STATE, TV_CONST, TV_INT, TV_OTHER };

#define TV_MAX_INTS 16

struct tv {
    const char *name;           /* borrowed from the model */
    int kind;                   /* enum tv_kind */
    int ndim;
    int64_t shape[SLIM_MAX_DIMS];
    int64_t numel;
    float *data;                /* the values this batch */
    float *grad;                /* the gradient, when needs_grad */
    float *buf, *gbuf;          /* owned buffers (activations), capacities in floats */
    size_t cap, gcap;
    int needs_grad;
    int gset;                   /* grad written in this backward pass */
    int param;                  /* index in t->params (PARAM, STATE), or -1 */
    int producer;               /* node index, or -1 */
    int64_t ints[TV_MAX_INTS];  /* TV_INT: the elements */
    const Onnx__TensorProto *init; /* the initializer it came from, or NULL */
};

enum top {
    OP_GEMM, OP_MATMUL, OP_ADD, OP_RELU, OP_LEAKY, OP_SIGMOID, OP_TANH, OP_FLATTEN,
    OP_RESHAPE, OP_IDENTITY, OP_CONV, OP_MAXPOOL, OP_AVGPOOL, OP_GAP, OP_BN, OP_DROPOUT,
    /* integer shape arithmetic, no gradient */
    OP_SHAPE, OP_GATHER, OP_UNSQUEEZE, OP_SQUEEZE, OP_CONCAT, OP_CAST, OP_CONSTANT,
};

#define TN_MAX_IN 5

struct tnode {
    const Onnx__NodeProto *proto;
    int op;                     /* enum top */
    int n_in, n_out;
    int in[TN_MAX_IN];          /* value indices, -1 when omitted */
    int out;                    /* the one output the trainer uses */
    /* attributes */
    float alpha, beta, eps, momentum, ratio;
    int trans_a, trans_b, allowzero;
    int64_t axis;
    int nsp;                    /* spatial dims of Conv/pools: 1 or 2 */
    int64_t kernel[2], stride[2], dil[2], pad[4]; /* pad: top, left, bottom, right */
    int auto_pad;               /* 0 NOTSET/VALID as given, 1 SAME_UPPER, 2 SAME_LOWER */
    int64_t group;
    int ceil_mode, count_include_pad;
    int n_ints;                 /* Unsqueeze/Squeeze axes (attribute form) */
    int64_t ints[TV_MAX_INTS];
    int64_t start, end;         /* Shape */
    int has_end, to;
    /* saved by the forward pass for the backward pass, capacity kept */
    void *save;                 /* MaxPool: int32 argmax; Dropout: float mask;
                                 * BatchNormalization: float x-hat */
    size_t save_cap;            /* bytes */
    float *stat;                /* BatchNormalization: mean, invstd per channel */
    size_t stat_cap;            /* floats */
};

struct tparam {
    int v;                      /* its value */
    int is_state;               /* BatchNormalization running mean/var: no gradient */
    int ndim;
    int64_t dims[SLIM_MAX_DIMS];
    int64_t n;
    float *w;                   /* master values */
    float *g;                   /* gradient (n) */
    float *s1, *s2;             /* optimizer state (SGD: s1 velocity; Adam: m, v) */
    int decay;                  /* weight decay applies (rank >= 2) */
    int frozen;
    uint8_t *keep;              /* mask, or NULL */
    int32_t *idx;               /* shared: centroid per weight (-1: zero), or NULL */
    int k;
    float *book, *bg, *b1, *b2; /* centroids, their gradient and optimizer state */
    slim_train_quant_fn fq;     /* fake quantization, or NULL */
    void *fq_ud;
    float *wq;                  /* fq's output: what the forward pass uses */
};

struct slim_trainer {
    struct slim_train_opts o;
    struct tv *v;
    size_t nv;
    struct tnode *nodes;        /* the nodes the logits need, in schedule order */
    size_t nn;
    struct tparam *p;
    size_t np;
    int input, logits;
    int in_ndim;
    int64_t in_dims[SLIM_MAX_DIMS];
    int64_t classes;            /* logits per sample, 0 while the input shape is unknown */
    int training;               /* forward in training mode */
    int64_t adam_t;             /* Adam's step count */
    uint64_t rng[4];            /* xoshiro256** */
    /* conv scratch: columns and a [M, S*OHW] product, capacities in floats */
    float *col, *tmp;
    size_t col_cap, tmp_cap;
    /* per-batch buffers of fit */
    float *xb, *tb, *pt;
    int64_t *lb, *perm;
    size_t xb_cap, tb_cap, lb_cap, perm_cap;
    pthread_mutex_t mu;
    struct slim_train_progress prog;
    int cancel;                 /* atomic */
    uint64_t held;              /* bytes of activation and gradient buffers (o.max_bytes) */
};

/* train.c */
uint64_t tr_rand(struct slim_trainer *t);
/* Gives v an activation buffer for shape (data = its own buffer). */
int tr_ensure(struct slim_trainer *t, struct tv *v, int ndim, const int64_t *shape,
              struct slim_error *err);
/* The gradient buffer of v for a writer: *acc 1 when it must add to
 * what is there (another reader of v already wrote it). */
float *tr_grad(struct slim_trainer *t, struct tv *v, int *acc, struct slim_error *err);
/* A buffer of at least bytes in *p (capacity *cap, kept), or NULL. */
void *tr_scratch(void **p, size_t *cap, size_t bytes);
/* Makes the initializer behind value vi a parameter (is_state: a
 * running statistic) when it is a FLOAT initializer; anything else is
 * left as it is. */
int tr_make_param(struct slim_trainer *t, int vi, int is_state, struct slim_error *err);
/* Marks the values that need a gradient: unfrozen parameters, the input
 * when its kind's needs_grad was set (the tests' finite differences), and
 * everything computed from them. */
void tr_plan_grads(struct slim_trainer *t);
/* One forward pass (mode as t->training says), the mean loss over nb
 * samples into *loss, rows right into *correct (may be NULL), and with
 * backward the gradients of every parameter (no optimizer step).  fit's
 * step, and the unit tests' handle for finite differences. */
int tr_step(struct slim_trainer *t, const float *x, const int64_t *labels,
            const float *teacher, int teacher_probs, int64_t nb, int backward, double *loss,
            int64_t *correct, struct slim_error *err);

/* train_ops.c */
int tr_compile(struct slim_trainer *t, struct tnode *n, struct slim_error *err);
int tr_forward(struct slim_trainer *t, struct tnode *n, struct slim_error *err);
int tr_backward(struct slim_trainer *t, struct tnode *n, struct slim_error *err);
const char *tr_op_name(int op);
int tr_op_find(const char *name);

#endif
