/*
 * artifact.h - how the working set is laid out as safetensors: which
 * tensors are written, in what form (original bytes, dense, packed,
 * sparse), and the "slimd.*" metadata that tells any reader how to
 * decode them (docs/artifact-format.md).  Internal to libslim.
 */
#ifndef SLIM_ARTIFACT_H
#define SLIM_ARTIFACT_H

#include "passes/pass.h"

struct slim_artifact {
    struct slim_tensor *tensors;  /* to write, in order; data borrowed or in owned[] */
    size_t n;
    const char **origins;         /* origins[i]: the model tensor tensors[i] derives from */
    void **owned;                 /* buffers made for the artifact (aligned) */
    size_t n_owned, cap_owned;
};

/* Lays w out for writing, as w's output options say
 * (dequantize_output: every touched tensor as F32; sparse_output: pruned
 * tensors as a bitmask plus their non-zero codes). */
int slim_artifact_layout(struct slim_work *w, struct slim_artifact *a, struct slim_error *err);
void slim_artifact_release(struct slim_artifact *a);
/* The artifact's __metadata__: the model's own plus slimd's; new
 * reference in *out.  passes: the spec's passes array (borrowed). */
int slim_artifact_metadata(struct slim_work *w, json_t *passes, json_t **out,
                           struct slim_error *err);

#endif
