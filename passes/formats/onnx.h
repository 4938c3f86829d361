/*
 * onnx.h - ONNX models read into memory and checked: the ModelProto as
 * protobuf-c unpacked it (onnx.pb-c.h, generated at build time from the
 * onnx.proto of Debian's libonnx-dev), and where every initializer's
 * bytes are: inside the protobuf (raw_data or the typed fields), or in
 * external data files (the form every model over 2 GB must take).
 *
 * A model comes as one .onnx file (external data files beside it, named
 * by each tensor's "location"), or as one uncompressed tar holding the
 * .onnx and its data files, as the daemon stores a multi-file upload
 * (the same mechanism as sharded safetensors).  External files are
 * mapped read-only, so their weights cost page cache, not heap, and
 * stream through the passes as safetensors tensors do.  Every bound is
 * checked before use: each initializer's byte count against its dims
 * and type, each external span against its file, each location against
 * escaping the model's folder.
 *
 * Internal to libslim: the engine and the pipeline use it; nothing here
 * knows of HTTP or SQLite.
 */
#ifndef SLIM_ONNX_H
#define SLIM_ONNX_H

#include "passes/formats/onnx.pb-c.h"
#include "passes/slim.h"

/* TensorProto.DataType (ONNX's numbering, persisted in every model). */
enum slim_onnx_type {
    SLIM_ONNX_UNDEFINED = 0,
    SLIM_ONNX_FLOAT = 1,
    SLIM_ONNX_UINT8 = 2,
    SLIM_ONNX_INT8 = 3,
    SLIM_ONNX_UINT16 = 4,
    SLIM_ONNX_INT16 = 5,
    SLIM_ONNX_INT32 = 6,
    SLIM_ONNX_INT64 = 7,
    SLIM_ONNX_STRING = 8,
    SLIM_ONNX_BOOL = 9,
    SLIM_ONNX_FLOAT16 = 10,
    SLIM_ONNX_DOUBLE = 11,
    SLIM_ONNX_UINT32 = 12,
    SLIM_ONNX_UINT64 = 13,
    SLIM_ONNX_BFLOAT16 = 16,
    SLIM_ONNX_UINT4 = 21,
    SLIM_ONNX_INT4 = 22,
};

/* The largest .onnx protobuf slimd parses: protobuf's own 2 GiB limit. */
#define SLIM_ONNX_MAX_PROTO ((size_t)2 << 30)

struct slim_onnx_file {
    char *location;              /* as the tensors name it */
    const unsigned char *data;   /* its bytes (a mapping) */
    size_t len;
    void *map;                   /* owned mapping (folder form), or NULL (inside the tar) */
    size_t map_len;
};

struct slim_onnx {
    Onnx__ModelProto *model;     /* owned */
    Onnx__GraphProto *graph;     /* model->graph, never NULL once open */
    int64_t opset;               /* the default ("" / "ai.onnx") domain's version */
    char *name;                  /* the .onnx file's name (in the tar: its member name) */
    struct slim_onnx_file *files;/* external data files, mapped as they are first named */
    size_t n_files;
    char *dir;                   /* folder of the .onnx (folder form), else NULL */
    void *tar;                   /* the tar's mapping (tar form) */
    size_t tar_len;
    struct slim_tar_member *members;
    size_t n_members;
    void **bufs;                 /* typed-field tensors repacked as bytes, owned */
    size_t n_bufs;
    Onnx__TensorProto **dense;   /* sparse initializers made dense, owned */
    size_t n_dense;
    uint64_t bytes;              /* the .onnx and every external file it uses */
    int external;                /* some initializer lives in an external file */
};

/* 1 if head[0..len) starts like a serialized ModelProto (field 1,
 * ir_version, as a varint; or a graph/opset field first). */
int slim_onnx_sniff(const void *head, size_t len);

/* Opens path: a .onnx file, or a tar holding exactly one .onnx and its
 * external data files.  Unpacks the model, requires a graph and an
 * opset for the default domain, and checks every initializer's bytes
 * (inline sizes; external locations, files and spans).  On failure m
 * is empty and SLIM_EFORMAT/SLIM_EIO/SLIM_ENOMEM names the problem. */
int slim_onnx_open(const char *path, struct slim_onnx *m, struct slim_error *err);
/* The same unpacking and checks over a .onnx held in memory (buf is only
 * read during the call: protobuf-c copies what it keeps).  No folder or
 * tar comes with it, so an initializer in external data is SLIM_EFORMAT;
 * m->name and m->dir stay NULL.  For the fuzz target and for callers
 * that already hold the bytes. */
int slim_onnx_parse(const void *buf, size_t len, struct slim_onnx *m, struct slim_error *err);
void slim_onnx_release(struct slim_onnx *m);

/* Elements of t (product of dims); -1 on overflow or a negative dim. */
int64_t slim_onnx_numel(const Onnx__TensorProto *t);
/* Bytes of n elements of ONNX type `type` (INT4/UINT4: two per byte,
 * rounded up); 0 for types slimd does not handle (strings, complex). */
size_t slim_onnx_type_bytes(int type, int64_t n);
/* The slimd dtype of an ONNX type (-1 if none: INT4, UINT32, ...). */
int slim_onnx_to_dtype(int type);
/* The ONNX type of a slimd dtype. */
int slim_onnx_from_dtype(enum slim_dtype dt);
const char *slim_onnx_type_name(int type);  /* "FLOAT", "INT8", ... */

/* The little-endian bytes of tensor t (an initializer, or a Constant's
 * value): raw_data, its span of an external file, or the typed field
 * (float_data, int32_data, ...) repacked into a buffer m owns.  *data is
 * borrowed from m until slim_onnx_release; *file_backed is 1 when it
 * points into a file mapping (pages that may be dropped and re-read).
 * SLIM_EFORMAT when the bytes do not match dims and type. */
int slim_onnx_tensor_data(struct slim_onnx *m, const Onnx__TensorProto *t, const void **data,
                          size_t *nbytes, int *file_backed, struct slim_error *err);

/* The dense form of sparse initializer sp: a TensorProto (named as its
 * values) whose raw_data holds zeros and the values at their indices
 * (INT64 [nnz] linear, or [nnz, rank] coordinates), every index checked
 * against dims.  *out is owned by m.  SLIM_EFORMAT names the problem. */
int slim_onnx_sparse_dense(struct slim_onnx *m, const Onnx__SparseTensorProto *sp,
                           const Onnx__TensorProto **out, struct slim_error *err);

/* The attribute `name` of node n, or NULL. */
const Onnx__AttributeProto *slim_onnx_attr(const Onnx__NodeProto *n, const char *name);

/* The model record for GET /v1/models: {"format": "onnx", "opset",
 * "ir_version", "producer", "inputs"/"outputs": [{"name", "type",
 * "shape"}] (a symbolic dim is its name, an unknown one null), "op_types"
 * (sorted), "nodes", "tensors" (initializers), "params" (their elements),
 * "external_data"}.  New reference. */
json_t *slim_onnx_describe(const struct slim_onnx *m);

/* Where slim_onnx_write puts the artifact. */
struct slim_onnx_out {
    const char *path;       /* the .onnx, or the tar */
    int tar;                /* one tar holding the .onnx (and its data file) */
    const char *onnx_name;  /* the .onnx's member name in the tar */
    int external;           /* weights in "<onnx name>.data" (beside path, or in the tar) */
    void (*sink)(void *ud, const void *buf, size_t len); /* every byte of path, or NULL */
    void *sink_ud;
    int opset;              /* upgrade the default domain to this opset (0: keep) */
    int float16_graph;      /* compute in fp16: every float tensor of the graph FLOAT16,
                             * Casts at the inputs and outputs */
    uint64_t bytes;         /* out: bytes written, every file */
};

/* 0 if m's graph can be moved to opset `target` unchanged in meaning
 * (every op in a list whose semantics held from opset 13 to 21, and the
 * model at 13 or later); else SLIM_ESPEC naming the op. */
int slim_onnx_upgrade_check(const struct slim_onnx *m, int target, struct slim_error *err);

/* Writes the ONNX artifact of m: the stored tensors st[0..n) (what the
 * pipeline would write as safetensors: names, dtypes, shapes, data) and
 * the "slimd.tensors" entries that say how each compressed initializer
 * decodes become initializers and decode nodes (onnx_write.c); metadata
 * (an object of strings, borrowed) goes into metadata_props.  st's data
 * is borrowed until return.  Atomic per file (temp file, fsync,
 * rename).  SLIM_ESPEC when the model or spec has no ONNX form (opset
 * below 10; sparse output of quantized weights; an opset upgrade over an
 * op whose meaning changed, named). */
int slim_onnx_write(struct slim_onnx *m, const struct slim_tensor *st, size_t n_st,
                    json_t *entries, json_t *metadata, struct slim_onnx_out *o,
                    struct slim_error *err);

/* slimd's entropy container of an ONNX model (onnx_plain.c): m's
 * ModelProto with each initializer that the model `kept` holds (the
 * tensors slimd stores itself) reduced to a stub (name, dims, type, no
 * data), and initializers in external data moved inline.  *out is new
 * (slim_aligned_free), *len its bytes. */
int slim_onnx_graph_stub(struct slim_onnx *m, const struct slim_model *kept, uint8_t **out,
                         size_t *len, struct slim_error *err);
/* Writes a plain .onnx at path (atomically) from a container's graph
 * (graph[0..glen)): every stub initializer gets the bytes of the tensor
 * of t[0..n) of its name, whose dtype and element count must match
 * (SLIM_EFORMAT otherwise, or when a stub finds no tensor). */
int slim_onnx_plain_write(const void *graph, size_t glen, const struct slim_tensor *t,
                          size_t n, const char *path, struct slim_error *err);
/* Writes the plain .onnx of an ONNX artifact (a .onnx with its external
 * data, or the daemon's tar of them) at path: the decode nodes slimd
 * added are gone, each compressed weight is a float initializer of its
 * decoded values.  SLIM_EFORMAT for anything malformed. */
int slim_onnx_plain_from_artifact(const char *in_path, const char *path,
                                  struct slim_error *err);

#endif
