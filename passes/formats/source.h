/*
 * source.h - where a model's tensors come from: one safetensors file, or
 * a sharded checkpoint (the shards plus the model.safetensors.index.json
 * that Hugging Face writes), either as files in a folder (named by the
 * index) or packed in one uncompressed tar, as the daemon stores an
 * upload.  Every shard is a safetensors file checked as strictly as a
 * single one; tensors are read from their shard with pread.  Internal to
 * libslim.
 */
#ifndef SLIM_SOURCE_H
#define SLIM_SOURCE_H

#include <sys/types.h>
#include "passes/slim.h"

enum slim_source_kind {
    SLIM_SRC_FILE = 0,    /* one safetensors file */
    SLIM_SRC_INDEX = 1,   /* index.json and shard files beside it */
    SLIM_SRC_TAR = 2,     /* a tar holding an index.json and its shards */
    SLIM_SRC_ONNX = 3,    /* an .onnx file (external data files beside it) */
    SLIM_SRC_ONNX_TAR = 4,/* a tar holding one .onnx and its external data files */
};

struct slim_onnx;

struct slim_shard {
    char *name;           /* the shard's file name ("" for a single file) */
    struct slim_model model;
    const char *base;     /* file offset 0 in memory: data offsets are relative to it */
    int fd;               /* for pread; owned unless shared (tar) */
    int in_memory;        /* ONNX: tensors' data pointers are read directly, never
                           * pread (inline weights on the heap, external ones mapped) */
};

struct slim_source {
    int kind;             /* enum slim_source_kind */
    struct slim_shard *shards;
    size_t n;
    char *index_name;     /* the index's file name (sharded), e.g. "model.safetensors.index.json" */
    json_t *index;        /* the index (sharded): {"metadata", "weight_map"} */
    void *map;            /* the tar's mapping */
    size_t map_len;
    int fd;               /* the tar's descriptor (shards share it) */
    uint64_t bytes;       /* every input byte: the file, or the index and all shards */
    struct slim_onnx *onnx;/* ONNX: the model (one shard whose tensors are its
                           * initializers); owned */
};

/* Which form path holds, from its first bytes: SLIM_SRC_ONNX (a
 * ModelProto), SLIM_SRC_TAR or SLIM_SRC_ONNX_TAR (a ustar header; the
 * members decide), SLIM_SRC_INDEX (a JSON object), else SLIM_SRC_FILE;
 * -1 when it cannot be opened (errno set). */
int slim_source_kind(const char *path);
/* Opens path as whichever form it holds (sniffed from its bytes: a tar,
 * a JSON index, or safetensors) and validates all of it: every shard's
 * header, every index entry against the shard it names, and every shard
 * tensor listed in the index.  On failure *src is empty. */
int slim_source_open(const char *path, struct slim_source *src, struct slim_error *err);
void slim_source_release(struct slim_source *src);
/* The file offset of tensor t of shard s (for pread on s->fd). */
off_t slim_source_offset(const struct slim_shard *s, const struct slim_tensor *t);

/* A regular file in a tar: its name (a "./" prefix dropped) and where
 * its bytes are. */
struct slim_tar_member {
    char name[1024];
    uint64_t off, size;
};
/* Lists the regular-file members of the tar at map[0..len) (ustar, pax
 * and GNU long names; headers' checksums and every size checked against
 * len).  *out is new (slim_free).  SLIM_EFORMAT names the bad header. */
int slim_tar_members(const unsigned char *map, size_t len, struct slim_tar_member **out,
                     size_t *n, struct slim_error *err);

/* A ustar header for a regular file member of `size` bytes (mode 0644,
 * owner 0, mtime 0, so the same content makes the same bytes) into
 * hdr[512].  SLIM_EINVAL when the name does not fit. */
int slim_tar_header(const char *name, uint64_t size, unsigned char hdr[512],
                    struct slim_error *err);

#endif
