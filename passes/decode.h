/*
 * decode.h - compressed tensors back to dense values (decode.c), for
 * `slimd decode` and for evaluating an entropy-coded artifact.
 * Internal to libslim.
 */
#ifndef SLIM_DECODE_H
#define SLIM_DECODE_H

#include "passes/slim.h"

/* The tensor of the ONNX graph in slimd's entropy container. */
#define SLIM_CONTAINER_GRAPH "slimd.onnx"

/* Where an entry's stored tensors are found, by the names that
 * "slimd.tensors" gives them (borrowed; NULL when missing). */
struct slim_stored {
    const struct slim_tensor *(*find)(void *ud, const char *name);
    void *ud;
};

/* Decodes one "slimd.tensors" entry e of the tensor `name` to float32
 * values of its shape: *out is new (slim_aligned_free).  Everything the
 * entry and the stored tensors say is checked first: SLIM_EFORMAT names
 * the tensor and the problem; SLIM_ENOMEM. */
int slim_decode_entry(const struct slim_stored *st, json_t *e, const char *name, float **out,
                      struct slim_error *err);
/* Frees n decoded tensors (their names and owned data) and the array. */
void slim_decoded_free(struct slim_tensor *t, size_t n);

#endif
