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

/* Lays out the tensors derived from one original tensor (w holds them)
 * for writing, as w's output options say (dequantize_output: every
 * touched tensor as F32; sparse_output: pruned tensors as a bitmask plus
 * their non-zero codes).  Untouched tensors borrow w->raw.  While
 * planning only names, dtypes, shapes and sizes are filled (data NULL). */
int slim_artifact_layout(struct slim_work *w, struct slim_artifact *a, struct slim_error *err);
void slim_artifact_release(struct slim_artifact *a);
/* Adds the "slimd.tensors" entries of w's tensors (what a reader needs
 * to decode them) to the object `entries`, keyed by original name. */
int slim_artifact_describe(struct slim_work *w, json_t *entries, struct slim_error *err);
/* The artifact's __metadata__: the model's own (model_md, borrowed) plus
 * slimd's: the passes (borrowed) and the entries (borrowed); new
 * reference in *out. */
int slim_artifact_metadata(json_t *model_md, json_t *passes, json_t *entries, json_t **out,
                           struct slim_error *err);

#endif
