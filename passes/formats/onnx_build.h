/*
 * onnx_build.h - ONNX models made in memory and written whole: a
 * (trained) model saved as it is, and the MLP a distill pass builds from
 * a list of hidden widths.  Internal to libslim (onnx_build.c).
 */
#ifndef SLIM_ONNX_BUILD_H
#define SLIM_ONNX_BUILD_H

#include "passes/formats/onnx.h"

/* Writes m's ModelProto to path atomically (temp file, fsync, rename).
 * Every initializer must be inline (slim_trainer_store moves trained
 * ones inline); SLIM_EINTERNAL otherwise. */
int slim_onnx_save(struct slim_onnx *m, const char *path, struct slim_error *err);
/* The same for a ModelProto built by the caller (borrowed). */
int slim_onnx_save_proto(Onnx__ModelProto *mp, const char *path, struct slim_error *err);

#define SLIM_MLP_MAX_HIDDEN 16

struct slim_mlp_shape {
    const char *input_name;     /* the teacher's input name */
    const char *output_name;    /* the teacher's first output's name */
    int64_t dims[SLIM_MAX_DIMS];/* one sample's dims (flattened when more than one) */
    int ndim;
    int64_t classes;            /* outputs per sample */
    int64_t hidden[SLIM_MLP_MAX_HIDDEN];
    int n_hidden;
    uint64_t seed;              /* He initialisation */
};

/* Writes an MLP (Flatten, then Gemm + Relu per hidden width, then Gemm
 * to the classes; opset 13) with He-initialised weights and zero biases
 * to path (atomically).  0, SLIM_EINVAL, SLIM_ENOMEM or SLIM_EIO. */
int slim_onnx_mlp(const struct slim_mlp_shape *s, const char *path, struct slim_error *err);

#endif
