/*
 * engine.h - slimd's inference engine: runs an ONNX graph (formats/onnx.h)
 * on batches of float input, for the accuracy and latency figures in
 * every report of an ONNX job.
 *
 * slim_engine_new compiles the graph once: nodes topologically sorted,
 * initializers and Constant values loaded, every op checked against the
 * supported set (an unsupported one is SLIM_EUNSUPPORTED naming the op
 * and the node).  slim_engine_run then executes it on a batch; tensor
 * buffers are reused from one run to the next.  Matrix work goes through
 * OpenBLAS sgemm, Conv through im2col + sgemm.
 *
 * Internal to libslim; no HTTP, SQLite or libuv.
 */
#ifndef SLIM_ENGINE_H
#define SLIM_ENGINE_H

#include "passes/formats/onnx.h"

struct slim_engine;

/* Compiles m's graph.  The graph must have one non-initializer float
 * input (its first dimension is the batch) and at least one output; the
 * first output is what slim_engine_run returns.  m is borrowed and must
 * outlive the engine.  *out is new (slim_engine_free).  Errors:
 * SLIM_EUNSUPPORTED ("operator 'Foo' (node 'n3') is not supported"),
 * SLIM_EFORMAT (a malformed graph: a cycle, an undefined input, a bad
 * attribute), SLIM_ENOMEM. */
int slim_engine_new(struct slim_onnx *m, struct slim_engine **out, struct slim_error *err);
/* The same, with a limit on the bytes that the engine's tensor buffers
 * (the pool that every node's outputs come from, constant folding
 * included) may hold at once; 0 is none.  A graph that needs more
 * fails, in compile or in slim_engine_run, with SLIM_EBUDGET naming the
 * tensor, where it would otherwise take whatever memory its shapes
 * (broadcasts, pads, MatMul sizes) ask for. */
int slim_engine_new_limited(struct slim_onnx *m, uint64_t max_bytes, struct slim_engine **out,
                            struct slim_error *err);
void slim_engine_free(struct slim_engine *e);

/* Checks, without loading a weight, that the engine has every operator
 * of m's graph: SLIM_EUNSUPPORTED names the first it lacks (the check
 * slim_engine_new makes first).  Cheap enough for a request handler. */
int slim_engine_check(const struct slim_onnx *m, struct slim_error *err);

/* The input's name, and its per-sample shape (the dims after the batch
 * dim, as declared; a symbolic or unknown dim is -1) into dims[0..*ndim).
 * Returns the elements per sample, or -1 when a dim is unknown. */
int64_t slim_engine_input(const struct slim_engine *e, const char **name, int64_t *dims,
                          int *ndim);

/* Fixes the per-sample shape of the input when the model leaves a dim
 * after the batch dim symbolic or unknown (the caller knows it from its
 * data).  When the model declares the shape, dims must agree with it
 * (a declared dim of -1 takes the given one).  SLIM_EINVAL otherwise. */
int slim_engine_set_sample_shape(struct slim_engine *e, const int64_t *dims, int ndim,
                                 struct slim_error *err);

/* Runs the graph on x (batch samples, each slim_engine_input elements,
 * row-major).  *y is borrowed until the next run or free: the first
 * output, *y_size elements per sample (0 when the output's size is not a
 * multiple of the batch: a graph that drops the batch dim; its shape is
 * then slim_engine_output_shape's).  Errors: SLIM_EINVAL (shapes that
 * do not fit the graph, named), SLIM_ENUMERIC, SLIM_ENOMEM. */
int slim_engine_run(struct slim_engine *e, const float *x, int64_t batch, const float **y,
                    int64_t *y_size, struct slim_error *err);

/* The full shape of the first output as the last run made it (the batch
 * dim included, when the graph keeps one); *ndim 0 before any run. */
void slim_engine_output_shape(const struct slim_engine *e, int64_t *dims, int *ndim);

#endif
