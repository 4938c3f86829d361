/*
 * train.h - training in the engine: mini-batch gradient descent on an
 * ONNX graph (formats/onnx.h), for the distill and finetune passes.
 *
 * slim_trainer_new builds a graph of its own from the model, separate
 * from the inference engine (engine.h): the engine folds BatchNormalization
 * into Conv and fuses Relu and pools, which a backward pass cannot use,
 * and it frees activations as soon as their last reader has run, where
 * training keeps every one for the backward pass.  The trainable subset
 * is Gemm, MatMul, Add, Relu, LeakyRelu, Sigmoid, Tanh, Flatten, Reshape,
 * Identity, Conv, MaxPool, AveragePool, GlobalAveragePool,
 * BatchNormalization, Dropout, and a Softmax or LogSoftmax at the graph's
 * end (taken into the loss: the trainer works on the logits before it).
 * The integer shape arithmetic exporters write for x.view(x.size(0), -1)
 * (Shape, Gather, Unsqueeze, Squeeze, Concat, Cast, Constant) is
 * evaluated on every batch.  Conv and the pools are 1-D or 2-D (any
 * strides, pads, auto_pad, dilations, groups; ceil_mode; both
 * count_include_pad); MatMul takes a 2-D right operand or equal batch
 * dims.  Any other op, or one of these with inputs it cannot take (a
 * Reshape whose shape is not a small integer tensor, MaxPool's Indices
 * output, a Softmax that does not end the graph), is SLIM_EUNSUPPORTED
 * naming the op and the node.
 *
 * Parameters are the float initializers that trainable ops consume as
 * weights: Gemm's B and C, MatMul's constant operand, Conv's W and B,
 * Add's constant operand (a bias), BatchNormalization's scale and bias.
 * BatchNormalization's running mean and variance are state: updated
 * from the batch statistics in training mode (ONNX's momentum), used in
 * evaluation.  Everything else (shapes, Reshape's target) is constant.
 *
 * Loss per sample, with student logits s, teacher logits z, label y:
 *   alpha * T^2 * KL(softmax(z/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)
 * (Hinton et al. 2015, "Distilling the knowledge in a neural network";
 * T^2 keeps the soft term's gradient at the scale of the hard one).
 * Without teacher logits alpha is taken as 0, without labels as 1.
 *
 * Constraints a finetune pass imposes per parameter (Han et al. 2016,
 * "Deep Compression"):
 *   mask        pruned weights stay exactly zero: their gradient and the
 *               optimizer's state for them are zeroed every step;
 *   share       clustered weights stay shared: the k centroids are the
 *               parameters, each gets the sum of its members' gradients,
 *               and the weight is codebook[idx] after every step;
 *   fake_quant  quantization-aware training with a straight-through
 *               estimator (Bengio et al. 2013; Jacob et al. 2018): the
 *               forward pass uses quantize->dequantize of the float master
 *               copy, the gradient updates the master copy unchanged.
 *
 * Reproducibility: the shuffle and Dropout draw from the trainer's own
 * PRNG (xoshiro256** seeded through splitmix64 from opts.seed when the
 * trainer is made, and again when slim_trainer_set_opts changes the
 * seed; consecutive fits continue its sequence), never rand(); with the
 * same seed, data, options and BLAS thread count, two runs on one
 * machine give the same weights bit for bit.  Matrix work is
 * OpenBLAS sgemm (Gemm, MatMul, Conv through im2col, forward and both
 * backward products); buffers are sized on the first batch and reused.
 *
 * BLAS threads are the caller's (openblas_set_num_threads), as for the
 * engine; the element-wise work runs on the calling thread.
 *
 * A trainer is used by one thread at a time, except slim_trainer_progress
 * and slim_trainer_cancel, which any thread may call while
 * slim_trainer_fit runs.  Internal to libslim: no HTTP, SQLite or libuv.
 */
#ifndef SLIM_TRAIN_H
#define SLIM_TRAIN_H

#include "passes/formats/onnx.h"

struct slim_trainer;

/* Persisted in job specs by name ("sgd", "adam"); values only grow. */
enum slim_train_optimizer {
    SLIM_OPT_SGD = 0,           /* SGD with (heavy-ball) momentum */
    SLIM_OPT_ADAM = 1,          /* Adam (Kingma & Ba 2015); decoupled decay: AdamW */
};

struct slim_train_opts {
    int optimizer;              /* enum slim_train_optimizer */
    float lr;                   /* learning rate (> 0) */
    float momentum;             /* SGD: v = momentum * v + g; w -= lr * v */
    float beta1, beta2, eps;    /* Adam */
    float weight_decay;         /* SGD: added to the gradient (L2); Adam: decoupled
                                 * (w -= lr * wd * w), as torch's AdamW. Applied
                                 * to every parameter but BatchNormalization's and
                                 * biases (1-D parameters) */
    int64_t batch_size;         /* samples per step (> 0); the last batch of an
                                 * epoch may be smaller */
    int epochs;                 /* passes over the data (>= 0) */
    uint64_t seed;              /* shuffle and Dropout masks */
    int shuffle;                /* 1: a new permutation every epoch (default) */
    float temperature;          /* T (> 0) */
    float alpha;                /* weight of the distillation term, [0, 1] */
    uint64_t max_bytes;         /* activations and their gradients at most this
                                 * (0: no cap); past it, SLIM_EBUDGET */
};

/* Defaults: Adam, lr 1e-3, momentum 0.9, betas 0.9/0.999, eps 1e-8, no
 * weight decay, batch 128, 1 epoch, seed 0, shuffle on, T 1, alpha 0.5. */
void slim_train_opts_init(struct slim_train_opts *o);

/* Builds a trainer for m's graph: one float input whose first dim is
 * the batch, the first output the logits (or a Softmax/LogSoftmax of
 * them).  Parameters are copied out of m (so m may be released; to put
 * the trained values back into a model use slim_trainer_store).  o is
 * copied and checked (SLIM_EINVAL names the field).  *out is new
 * (slim_trainer_free).  Errors: SLIM_EUNSUPPORTED ("operator 'Foo'
 * (node 'n3') is not supported for training"), SLIM_EFORMAT (malformed
 * graph or attribute), SLIM_EINVAL, SLIM_ENOMEM. */
int slim_trainer_new(struct slim_onnx *m, const struct slim_train_opts *o,
                     struct slim_trainer **out, struct slim_error *err);
void slim_trainer_free(struct slim_trainer *t);

/* Changes the options between fits (lr schedules, a second stage with
 * other epochs); the optimizer's state is kept unless the optimizer
 * changes.  SLIM_EINVAL names a bad field. */
int slim_trainer_set_opts(struct slim_trainer *t, const struct slim_train_opts *o,
                          struct slim_error *err);

/* The input's per-sample shape as the model declares it (-1 for a
 * symbolic dim) and the elements per sample (-1 while a dim is unknown);
 * slim_trainer_set_sample_shape fixes unknown dims (as the engine's). */
int64_t slim_trainer_input(const struct slim_trainer *t, int64_t *dims, int *ndim);
int slim_trainer_set_sample_shape(struct slim_trainer *t, const int64_t *dims, int ndim,
                                  struct slim_error *err);
/* Logits per sample (the classes), known once the input shape is: 0
 * before. */
int64_t slim_trainer_classes(const struct slim_trainer *t);

/* ---- parameters ----------------------------------------------------------- */

/* Parameter i (0 <= i < slim_trainer_n_params) : its initializer name
 * (borrowed, lives as long as t), rank and dims.  Returns the element
 * count, or -1 when i is out of range. */
size_t slim_trainer_n_params(const struct slim_trainer *t);
int64_t slim_trainer_param_info(const struct slim_trainer *t, size_t i, const char **name,
                                int *ndim, int64_t *dims);

/* The current values of parameter or state tensor `name` (a
 * BatchNormalization running mean/var too): *data borrowed until the
 * next call that trains or changes t.  For a shared parameter the values
 * are codebook[idx] (exactly); for a masked one, masked entries are
 * exactly 0; for a fake-quantized one, the float master copy (re-quantize
 * it when writing the model).  SLIM_ENOTFOUND when t has no such tensor. */
int slim_trainer_param(struct slim_trainer *t, const char *name, const float **data,
                       int64_t *n, struct slim_error *err);
/* Overwrites parameter `name` with n values (the optimizer's state for
 * it is reset).  SLIM_EINVAL when n does not match. */
int slim_trainer_set_param(struct slim_trainer *t, const char *name, const float *data,
                           int64_t n, struct slim_error *err);
/* A shared parameter's codebook (k centroids, borrowed like
 * slim_trainer_param's data).  SLIM_EINVAL when `name` is not shared. */
int slim_trainer_codebook(struct slim_trainer *t, const char *name, const float **codebook,
                          int *k, struct slim_error *err);

/* Puts every parameter and state tensor back into m's FLOAT initializers
 * of the same names (m may be the model t was built from, or another
 * copy of it): the bytes become raw_data in a buffer m owns (an
 * initializer that was in external data or typed fields is moved inline;
 * its external_data entries are cleared).  SLIM_EFORMAT when an
 * initializer is missing or has another shape; m is left unchanged
 * then. */
int slim_trainer_store(struct slim_trainer *t, struct slim_onnx *m, struct slim_error *err);

/* Leaves parameter `name` out of training (its gradient is not applied). */
int slim_trainer_freeze(struct slim_trainer *t, const char *name, struct slim_error *err);

/* Pruning: keep[i] == 0 makes weight i zero now and for good (its
 * gradient and optimizer state are zeroed every step).  keep has the
 * parameter's element count; it is copied.  A later call replaces the
 * mask.  SLIM_ENOTFOUND / SLIM_EINVAL. */
int slim_trainer_mask(struct slim_trainer *t, const char *name, const uint8_t *keep,
                      int64_t n, struct slim_error *err);

/* Clustering: weight i is codebook[idx[i]] (idx has the parameter's
 * element count, each in [0, k) or -1 for a weight fixed at zero); the k
 * centroids become what trains, each with the sum of its members'
 * gradients.  idx and codebook are copied.  Combines with a mask (masked
 * weights are zero and give their centroid no gradient).  SLIM_EINVAL for
 * an index out of range or k < 1. */
int slim_trainer_share(struct slim_trainer *t, const char *name, const int32_t *idx,
                       const float *codebook, int k, int64_t n, struct slim_error *err);

/* Quantization-aware training: before every forward pass in training
 * and evaluation, fn(ud, name, w, wq, ndim, dims) writes the quantized-
 * then-dequantized values of the master weights w (n = product of dims)
 * into wq; the forward pass uses wq, the backward pass's weight gradient
 * updates w as if the rounding were the identity (straight-through).  fn
 * must be deterministic and must not call back into t.  fn NULL removes
 * it. */
typedef void (*slim_train_quant_fn)(void *ud, const char *name, const float *w, float *wq,
                                    int ndim, const int64_t *dims);
int slim_trainer_fake_quant(struct slim_trainer *t, const char *name, slim_train_quant_fn fn,
                            void *ud, struct slim_error *err);
/* A ready fake quantizer: symmetric int8, scale = max|w| / 127 (values
 * rounded to nearest even, clamped to [-127, 127]); per tensor when ud
 * is NULL, else per slice along the axis *(const int *)ud points to (0
 * for a Conv weight's output channels, 1 for a MatMul B [in, out]). */
void slim_train_fq_int8(void *ud, const char *name, const float *w, float *wq, int ndim,
                        const int64_t *dims);

/* ---- training --------------------------------------------------------------- */

/* A data set in memory, borrowed for the call.  x: n samples of
 * slim_trainer_input elements each, row-major.  labels: n class indices
 * in [0, classes), or NULL.  teacher: n rows of `classes` teacher
 * outputs aligned with x, or NULL; teacher_probs 1 says they are
 * probabilities (a teacher graph ending in Softmax, as the inference
 * engine returns it): the trainer takes their log, which softmax(./T)
 * maps to the same distribution as the logits. */
struct slim_train_data {
    const float *x;
    const int64_t *labels;
    const float *teacher;
    int teacher_probs;
    int64_t n;
};

/* Progress after an epoch (and, for slim_trainer_progress, during one). */
struct slim_train_progress {
    int epoch;                  /* epochs finished in this fit (1-based once one is) */
    int epochs;                 /* opts.epochs */
    int64_t step;               /* batches done in this fit */
    int64_t steps;              /* batches the whole fit takes */
    double loss;                /* mean training loss of the epoch (running mean
                                 * while it goes) */
    double accuracy;            /* training accuracy of the epoch (argmax vs labels;
                                 * NAN without labels) */
    double val_loss;            /* on the held-out set in evaluation mode, NAN when
                                 * there is none (val_loss: the same loss as training) */
    double val_accuracy;        /* NAN without a held-out set or its labels */
    double samples_per_s;       /* training throughput of the epoch */
    double seconds;             /* wall time of the epoch */
};

/* Called after every epoch from the fitting thread; returning non-zero
 * stops the fit with SLIM_ECANCELED. */
typedef int (*slim_train_epoch_fn)(void *ud, const struct slim_train_progress *p);
/* Called before every batch; non-zero stops the fit with SLIM_ECANCELED
 * before that batch (so a cancel takes effect within one batch). */
typedef int (*slim_train_cancel_fn)(void *ud);

struct slim_train_hooks {
    slim_train_epoch_fn epoch;  /* may be NULL */
    slim_train_cancel_fn cancel;/* may be NULL */
    void *ud;
};

/* Trains for opts.epochs over train, evaluating on val (may be NULL)
 * after each epoch.  On success the weights are the last step's.  A
 * canceled fit returns SLIM_ECANCELED with the weights as the last
 * finished batch left them (consistent, usable).  Errors: SLIM_EINVAL
 * (a label out of range, n == 0, teacher and labels both NULL, shapes
 * that do not fit), SLIM_ENUMERIC (the loss became NaN or Inf: named
 * epoch and step), SLIM_ENOMEM, SLIM_ECANCELED. */
int slim_trainer_fit(struct slim_trainer *t, const struct slim_train_data *train,
                     const struct slim_train_data *val, const struct slim_train_hooks *hooks,
                     struct slim_error *err);

/* A snapshot of the fit's progress: any thread, any time (a mutex
 * guards it).  Before the first epoch ends, epoch is 0 and the losses
 * are running means. */
void slim_trainer_progress(struct slim_trainer *t, struct slim_train_progress *p);
/* Asks a running fit to stop before its next batch: any thread. */
void slim_trainer_cancel(struct slim_trainer *t);

/* Forward pass in evaluation mode (BatchNormalization's running
 * statistics, no Dropout, fake quantization applied) on n samples:
 * logits (before the graph's final Softmax, if any) into
 * out[n * classes]. */
int slim_trainer_predict(struct slim_trainer *t, const float *x, int64_t n, float *out,
                         struct slim_error *err);
/* Mean loss (as training defines it, over data's labels and teacher)
 * and accuracy (NAN without labels) in evaluation mode. */
int slim_trainer_evaluate(struct slim_trainer *t, const struct slim_train_data *data,
                          double *loss, double *accuracy, struct slim_error *err);

#endif
