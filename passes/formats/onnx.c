/*
 * onnx.c - ONNX models in: unpacked with protobuf-c, checked, and their
 * initializers' bytes located (onnx.h says what and why).
 *
 * The .onnx protobuf is mapped and unpacked in one call; protobuf-c
 * copies what it keeps (raw_data included), so the mapping is dropped
 * right after and a model with inline weights costs their bytes once, on
 * the heap.  That is bounded by protobuf's 2 GiB: anything larger keeps
 * its weights in external files, which stay mapped and are read tensor
 * by tensor.  Hand-decoding the protobuf wire format to point into the
 * mapping instead was rejected (the generated code is the one decoder).
 *
 * External locations are relative paths: absolute paths, "..", empty
 * components and backslashes are refused, so a model cannot make the
 * daemon read outside its own folder or tar.  slim_onnx_parse takes the
 * .onnx as bytes in memory (tests/fuzz/fuzz_onnx.c feeds it): the same
 * unpacking and checks, and with no folder or tar beside it, external
 * data is refused rather than looked up relative to the process's
 * working folder.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "passes/formats/onnx.h"
#include "passes/formats/source.h"

static void *pb_alloc(void *ud, size_t n)
{
    (void)ud;
    return slim_malloc(n);
}

static void pb_free(void *ud, void *p)
{
    (void)ud;
    slim_free(p);
}

static ProtobufCAllocator pb_allocator = {pb_alloc, pb_free, NULL};

int slim_onnx_sniff(const void *head, size_t len)
{
    const unsigned char *p = head;
    size_t i = 1;
    if (len < 4)
        return 0;
    /* ir_version (field 1, varint) first, as every exporter writes it */
    if (p[0] == 0x08) {
        while (i < len && i < 6 && (p[i] & 0x80))
            i++;
        if (i >= len || i >= 6)
            return 0;
        i++;
        if (i >= len)
            return 0;
        /* then producer_name/version, domain, model_version, doc, graph or opset_import */
        return p[i] == 0x12 || p[i] == 0x1a || p[i] == 0x22 || p[i] == 0x28 || p[i] == 0x32 ||
               p[i] == 0x3a || p[i] == 0x42;
    }
    return 0;
}

int64_t slim_onnx_numel(const Onnx__TensorProto *t)
{
    int64_t n = 1;
    for (size_t i = 0; i < t->n_dims; i++) {
        if (t->dims[i] < 0 || (t->dims[i] && n > INT64_MAX / t->dims[i]))
            return -1;
        n *= t->dims[i];
    }
    return n;
}

size_t slim_onnx_type_bytes(int type, int64_t n)
{
    size_t es;
    switch (type) {
    case SLIM_ONNX_UINT8: case SLIM_ONNX_INT8: case SLIM_ONNX_BOOL: es = 1; break;
    case SLIM_ONNX_UINT16: case SLIM_ONNX_INT16: case SLIM_ONNX_FLOAT16:
    case SLIM_ONNX_BFLOAT16: es = 2; break;
    case SLIM_ONNX_FLOAT: case SLIM_ONNX_INT32: case SLIM_ONNX_UINT32: es = 4; break;
    case SLIM_ONNX_INT64: case SLIM_ONNX_DOUBLE: case SLIM_ONNX_UINT64: es = 8; break;
    case SLIM_ONNX_INT4: case SLIM_ONNX_UINT4: return (size_t)(n + 1) / 2;
    default: return 0;
    }
    return (size_t)n * es;
}

int slim_onnx_to_dtype(int type)
{
    switch (type) {
    case SLIM_ONNX_FLOAT: return SLIM_DT_F32;
    case SLIM_ONNX_UINT8: return SLIM_DT_U8;
    case SLIM_ONNX_INT8: return SLIM_DT_I8;
    case SLIM_ONNX_INT16: return SLIM_DT_I16;
    case SLIM_ONNX_INT32: return SLIM_DT_I32;
    case SLIM_ONNX_INT64: return SLIM_DT_I64;
    case SLIM_ONNX_BOOL: return SLIM_DT_BOOL;
    case SLIM_ONNX_FLOAT16: return SLIM_DT_F16;
    case SLIM_ONNX_DOUBLE: return SLIM_DT_F64;
    case SLIM_ONNX_BFLOAT16: return SLIM_DT_BF16;
    default: return -1;
    }
}

int slim_onnx_from_dtype(enum slim_dtype dt)
{
    static const int map[SLIM_DT_COUNT] = {
        [SLIM_DT_F64] = SLIM_ONNX_DOUBLE, [SLIM_DT_F32] = SLIM_ONNX_FLOAT,
        [SLIM_DT_F16] = SLIM_ONNX_FLOAT16, [SLIM_DT_BF16] = SLIM_ONNX_BFLOAT16,
        [SLIM_DT_I64] = SLIM_ONNX_INT64, [SLIM_DT_I32] = SLIM_ONNX_INT32,
        [SLIM_DT_I16] = SLIM_ONNX_INT16, [SLIM_DT_I8] = SLIM_ONNX_INT8,
        [SLIM_DT_U8] = SLIM_ONNX_UINT8, [SLIM_DT_BOOL] = SLIM_ONNX_BOOL,
    };
    return (unsigned)dt < SLIM_DT_COUNT ? map[dt] : SLIM_ONNX_UNDEFINED;
}

const char *slim_onnx_type_name(int type)
{
    switch (type) {
    case SLIM_ONNX_FLOAT: return "FLOAT";
    case SLIM_ONNX_UINT8: return "UINT8";
    case SLIM_ONNX_INT8: return "INT8";
    case SLIM_ONNX_UINT16: return "UINT16";
    case SLIM_ONNX_INT16: return "INT16";
    case SLIM_ONNX_INT32: return "INT32";
    case SLIM_ONNX_INT64: return "INT64";
    case SLIM_ONNX_STRING: return "STRING";
    case SLIM_ONNX_BOOL: return "BOOL";
    case SLIM_ONNX_FLOAT16: return "FLOAT16";
    case SLIM_ONNX_DOUBLE: return "DOUBLE";
    case SLIM_ONNX_UINT32: return "UINT32";
    case SLIM_ONNX_UINT64: return "UINT64";
    case SLIM_ONNX_BFLOAT16: return "BFLOAT16";
    case SLIM_ONNX_UINT4: return "UINT4";
    case SLIM_ONNX_INT4: return "INT4";
    default: return "UNKNOWN";
    }
}

const Onnx__AttributeProto *slim_onnx_attr(const Onnx__NodeProto *n, const char *name)
{
    for (size_t i = 0; i < n->n_attribute; i++)
        if (n->attribute[i]->name && !strcmp(n->attribute[i]->name, name))
            return n->attribute[i];
    return NULL;
}

/* 1 if loc is a relative path that stays inside its folder. */
static int safe_location(const char *loc)
{
    const char *p = loc;
    if (!*loc || *loc == '/' || strchr(loc, '\\') || strlen(loc) > 900)
        return 0;
    while (*p) {
        const char *e = strchr(p, '/');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == 0 || (n == 2 && !memcmp(p, "..", 2)) || (n == 1 && *p == '.'))
            return 0;
        p += n + (e != NULL);
    }
    return 1;
}

/* The external file named loc, mapped on first use. */
static int external_file(struct slim_onnx *m, const char *loc, const struct slim_onnx_file **out,
                         struct slim_error *err)
{
    struct slim_onnx_file *f;
    for (size_t i = 0; i < m->n_files; i++)
        if (!strcmp(m->files[i].location, loc)) {
            *out = &m->files[i];
            return 0;
        }
    /* slim_onnx_parse: bytes alone, no folder or tar to look in */
    if (!m->tar && !m->dir)
        return slim_error_set(err, SLIM_EFORMAT, "external data file '%.100s': the model came "
                              "without its folder", loc);
    if (!safe_location(loc))
        return slim_error_set(err, SLIM_EFORMAT,
                              "external data location '%.100s' is not a relative path inside "
                              "the model's folder", loc);
    f = slim_realloc(m->files, (m->n_files + 1) * sizeof *f);
    if (!f)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    m->files = f;
    f = &m->files[m->n_files];
    memset(f, 0, sizeof *f);
    if (m->tar) {
        const char *slash = strrchr(m->name, '/');
        size_t dl = slash ? (size_t)(slash - m->name) + 1 : 0;
        const struct slim_tar_member *mem = NULL;
        for (size_t i = 0; i < m->n_members && !mem; i++)
            if (!strncmp(m->members[i].name, m->name, dl) && !strcmp(m->members[i].name + dl, loc))
                mem = &m->members[i];
        if (!mem)
            return slim_error_set(err, SLIM_EFORMAT,
                                  "external data file '%.100s' is not in the upload", loc);
        f->data = (const unsigned char *)m->tar + mem->off;
        f->len = (size_t)mem->size;
    } else {
        char path[PATH_MAX];
        struct stat st;
        int fd;
        snprintf(path, sizeof path, "%s/%s", m->dir, loc);
        if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
            return slim_error_set(err, errno == ENOENT ? SLIM_EFORMAT : SLIM_EIO,
                                  "external data file '%.100s': %s", loc, strerror(errno));
        if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
            close(fd);
            return slim_error_set(err, SLIM_EFORMAT,
                                  "external data file '%.100s' is not a regular file", loc);
        }
        f->map_len = (size_t)st.st_size;
        if (f->map_len) {
            f->map = mmap(NULL, f->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
            if (f->map == MAP_FAILED) {
                f->map = NULL;
                close(fd);
                return slim_error_set(err, SLIM_EIO, "external data file '%.100s': %s", loc,
                                      strerror(errno));
            }
        }
        close(fd);
        f->data = f->map;
        f->len = f->map_len;
    }
    if (!(f->location = slim_strdup(loc))) {
        if (f->map)
            munmap(f->map, f->map_len);
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    }
    m->bytes += f->len;
    m->n_files++;
    *out = f;
    return 0;
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;
    if (!s || !*s || *s == '-')
        return -1;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

static int keep_buf(struct slim_onnx *m, void *buf)
{
    void **b = slim_realloc(m->bufs, (m->n_bufs + 1) * sizeof *b);
    if (!b)
        return -1;
    m->bufs = b;
    m->bufs[m->n_bufs++] = buf;
    return 0;
}

int slim_onnx_tensor_data(struct slim_onnx *m, const Onnx__TensorProto *t, const void **data,
                          size_t *nbytes, int *file_backed, struct slim_error *err)
{
    const char *name = t->name ? t->name : "";
    int type = t->has_data_type ? t->data_type : 0;
    int64_t n = slim_onnx_numel(t);
    size_t want;
    unsigned char *buf;

    if (file_backed)
        *file_backed = 0;
    if (n < 0)
        return slim_error_set(err, SLIM_EFORMAT, "tensor '%.100s': bad dims", name);
    want = slim_onnx_type_bytes(type, n);
    if (!want && n && type != SLIM_ONNX_STRING)
        return slim_error_set(err, SLIM_EFORMAT, "tensor '%.100s': unsupported type %s (%d)",
                              name, slim_onnx_type_name(type), type);
    if (type == SLIM_ONNX_STRING)
        return slim_error_set(err, SLIM_EFORMAT, "tensor '%.100s': string tensors have no bytes",
                              name);
    if (t->has_data_location && t->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL) {
        const char *loc = NULL;
        uint64_t off = 0, len = UINT64_MAX;
        const struct slim_onnx_file *f;
        int rc;
        for (size_t i = 0; i < t->n_external_data; i++) {
            const Onnx__StringStringEntryProto *e = t->external_data[i];
            if (!e->key || !e->value)
                continue;
            if (!strcmp(e->key, "location"))
                loc = e->value;
            else if (!strcmp(e->key, "offset") && parse_u64(e->value, &off))
                return slim_error_set(err, SLIM_EFORMAT, "tensor '%.100s': bad external offset",
                                      name);
            else if (!strcmp(e->key, "length") && parse_u64(e->value, &len))
                return slim_error_set(err, SLIM_EFORMAT, "tensor '%.100s': bad external length",
                                      name);
        }
        if (!loc)
            return slim_error_set(err, SLIM_EFORMAT,
                                  "tensor '%.100s': external data without a location", name);
        if ((rc = external_file(m, loc, &f, err))) {
            slim_error_prefix(err, "tensor '%.100s'", name);
            return rc;
        }
        if (len == UINT64_MAX)
            len = off <= f->len ? f->len - off : 0;
        if (off > f->len || len > f->len - off || len != want)
            return slim_error_set(err, SLIM_EFORMAT,
                                  "tensor '%.100s': external span [%llu, +%llu) of '%.100s' "
                                  "does not hold its %zu bytes (file: %zu bytes)", name,
                                  (unsigned long long)off, (unsigned long long)len, loc, want,
                                  f->len);
        *data = f->data + off;
        *nbytes = want;
        if (file_backed)
            *file_backed = f->map != NULL;
        return 0;
    }
    if (t->has_raw_data) {
        if (t->raw_data.len != want)
            return slim_error_set(err, SLIM_EFORMAT,
                                  "tensor '%.100s': raw_data has %zu bytes, its dims and type "
                                  "need %zu", name, t->raw_data.len, want);
        *data = t->raw_data.data;
        *nbytes = want;
        return 0;
    }
    /* the typed fields: repack as little-endian bytes, once the field
     * is known to hold what the dims say (dims alone may claim
     * terabytes) */
    {
        size_t have = type == SLIM_ONNX_FLOAT ? t->n_float_data
                      : type == SLIM_ONNX_INT64 ? t->n_int64_data
                      : type == SLIM_ONNX_DOUBLE ? t->n_double_data
                      : type == SLIM_ONNX_UINT32 || type == SLIM_ONNX_UINT64 ? t->n_uint64_data
                      : t->n_int32_data;
        size_t need = type == SLIM_ONNX_INT4 || type == SLIM_ONNX_UINT4 ? want : (size_t)n;
        if (have != need)
            return slim_error_set(err, SLIM_EFORMAT,
                                  "tensor '%.100s': holds a different number of values than "
                                  "its dims (%lld)", name, (long long)n);
    }
    if (!(buf = slim_aligned_alloc(want + 8)))
        return slim_error_set(err, SLIM_ENOMEM, "tensor '%.100s': out of memory", name);
    switch (type) {
    case SLIM_ONNX_FLOAT:
        if (t->n_float_data != (size_t)n)
            goto count;
        if (want)   /* no values: the field's pointer may be NULL */
            memcpy(buf, t->float_data, want);
        break;
    case SLIM_ONNX_INT64:
        if (t->n_int64_data != (size_t)n)
            goto count;
        if (want)
            memcpy(buf, t->int64_data, want);
        break;
    case SLIM_ONNX_DOUBLE:
        if (t->n_double_data != (size_t)n)
            goto count;
        if (want)
            memcpy(buf, t->double_data, want);
        break;
    case SLIM_ONNX_UINT32: case SLIM_ONNX_UINT64:
        if (t->n_uint64_data != (size_t)n)
            goto count;
        for (int64_t i = 0; i < n; i++) {
            if (type == SLIM_ONNX_UINT32) {
                uint32_t v = (uint32_t)t->uint64_data[i];
                memcpy(buf + 4 * i, &v, 4);
            } else {
                memcpy(buf + 8 * i, &t->uint64_data[i], 8);
            }
        }
        break;
    case SLIM_ONNX_INT4: case SLIM_ONNX_UINT4:
        if (t->n_int32_data != (want))
            goto count;
        for (size_t i = 0; i < want; i++)
            buf[i] = (unsigned char)t->int32_data[i];
        break;
    default: {
        size_t es = want / (size_t)(n ? n : 1);
        if (t->n_int32_data != (size_t)n)
            goto count;
        for (int64_t i = 0; i < n; i++) {
            int32_t v = t->int32_data[i];
            if (es == 1)
                buf[i] = (unsigned char)v;
            else if (es == 2) {
                uint16_t h = (uint16_t)v;
                memcpy(buf + 2 * i, &h, 2);
            } else {
                memcpy(buf + 4 * i, &v, 4);
            }
        }
    }
    }
    if (keep_buf(m, buf)) {
        slim_aligned_free(buf);
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    }
    *data = buf;
    *nbytes = want;
    return 0;
count:
    slim_aligned_free(buf);
    return slim_error_set(err, SLIM_EFORMAT,
                          "tensor '%.100s': holds a different number of values than its dims "
                          "(%lld)", name, (long long)n);
}

int slim_onnx_sparse_dense(struct slim_onnx *m, const Onnx__SparseTensorProto *sp,
                           const Onnx__TensorProto **out, struct slim_error *err)
{
    const Onnx__TensorProto *v = sp->values, *ix = sp->indices;
    const char *name = v && v->name ? v->name : "";
    const void *vd, *id;
    size_t vb, ib, es, rank = sp->n_dims;
    int64_t n = 1, nnz;
    Onnx__TensorProto *t, **list;
    int64_t *dims;
    unsigned char *buf;
    int rc;

    if (!v || !ix || rank > SLIM_MAX_DIMS)
        return slim_error_set(err, SLIM_EFORMAT, "sparse initializer '%.100s': needs values, "
                              "indices and at most %d dims", name, SLIM_MAX_DIMS);
    for (size_t d = 0; d < rank; d++) {
        if (sp->dims[d] < 0 || (sp->dims[d] && n > INT64_MAX / 16 / sp->dims[d]))
            return slim_error_set(err, SLIM_EFORMAT, "sparse initializer '%.100s': bad dims",
                                  name);
        n *= sp->dims[d];
    }
    if ((rc = slim_onnx_tensor_data(m, v, &vd, &vb, NULL, err)) ||
        (rc = slim_onnx_tensor_data(m, ix, &id, &ib, NULL, err)))
        return rc;
    nnz = slim_onnx_numel(v);
    es = slim_onnx_type_bytes(v->data_type, 1);
    if (v->n_dims != 1 || !es || es > 8 || (ix->has_data_type && ix->data_type != SLIM_ONNX_INT64) ||
        !((ix->n_dims == 1 && ix->dims[0] == nnz) ||
          (ix->n_dims == 2 && ix->dims[0] == nnz && (size_t)ix->dims[1] == rank)))
        return slim_error_set(err, SLIM_EFORMAT, "sparse initializer '%.100s': values must be "
                              "1-D and indices INT64 [nnz] or [nnz, rank]", name);
    if (!(buf = slim_aligned_alloc((size_t)n * es + 8)) || keep_buf(m, buf)) {
        slim_aligned_free(buf);
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    }
    memset(buf, 0, (size_t)n * es);
    for (int64_t i = 0; i < nnz; i++) {
        int64_t at = 0, k;
        if (ix->n_dims == 1) {
            memcpy(&at, (const char *)id + 8 * i, 8);
        } else {
            for (size_t d = 0; d < rank; d++) {
                memcpy(&k, (const char *)id + 8 * (i * (int64_t)rank + (int64_t)d), 8);
                if (k < 0 || k >= sp->dims[d])
                    return slim_error_set(err, SLIM_EFORMAT, "sparse initializer '%.100s': "
                                          "index out of range", name);
                at = at * sp->dims[d] + k;
            }
        }
        if (at < 0 || at >= n)
            return slim_error_set(err, SLIM_EFORMAT, "sparse initializer '%.100s': index %lld "
                                  "out of range", name, (long long)at);
        memcpy(buf + (size_t)at * es, (const char *)vd + (size_t)i * es, es);
    }
    t = slim_calloc(1, sizeof *t);
    dims = slim_calloc(rank + 1, sizeof *dims);
    list = slim_realloc(m->dense, (m->n_dense + 1) * sizeof *list);
    if (list)
        m->dense = list;
    if (!t || !dims || !list) {
        slim_free(t);
        slim_free(dims);
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    }
    onnx__tensor_proto__init(t);
    if (rank)
        memcpy(dims, sp->dims, rank * sizeof *dims);
    t->n_dims = rank;
    t->dims = dims;
    t->has_data_type = 1;
    t->data_type = v->data_type;
    t->name = v->name;
    t->has_raw_data = 1;
    t->raw_data.data = buf;
    t->raw_data.len = (size_t)n * es;
    m->dense[m->n_dense++] = t;
    *out = t;
    return 0;
}

static int ends_with(const char *s, const char *tail)
{
    size_t a = strlen(s), b = strlen(tail);
    return a >= b && !strcmp(s + a - b, tail);
}

/* Protobuf's own parsers stop at 100 levels of nested messages.
 * protobuf-c recurses without a limit, so a few MB of nested graphs (a
 * GraphProto in an attribute of a node of a GraphProto ...) would
 * overflow the stack of the thread that unpacks them. */
#define MAX_NESTING 100

static int read_varint(const unsigned char *p, size_t end, size_t *at, uint64_t *v)
{
    uint64_t r = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        unsigned char b;
        if (*at >= end)
            return -1;
        b = p[(*at)++];
        r |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = r;
            return 0;
        }
    }
    return -1;
}

/* Walks the wire format of a ModelProto without recursion (an explicit
 * stack of the messages entered, guided by the descriptors) and refuses
 * nesting deeper than MAX_NESTING, or bytes that are no protobuf, before
 * protobuf-c recurses into them. */
static int check_nesting(const unsigned char *p, size_t len, struct slim_error *err)
{
    const ProtobufCMessageDescriptor *desc[MAX_NESTING + 1];
    size_t end[MAX_NESTING + 1], at = 0;
    int depth = 0;

    desc[0] = &onnx__model_proto__descriptor;
    end[0] = len;
    for (;;) {
        uint64_t key, v;
        while (depth > 0 && at == end[depth])
            depth--;
        if (at == len)
            return 0;
        if (read_varint(p, end[depth], &at, &key))
            break;
        if ((key & 7) == 0) {
            if (read_varint(p, end[depth], &at, &v))
                break;
        } else if ((key & 7) == 1 || (key & 7) == 5) {
            size_t n = (key & 7) == 1 ? 8 : 4;
            if (end[depth] - at < n)
                break;
            at += n;
        } else if ((key & 7) == 2) {
            const ProtobufCFieldDescriptor *f = NULL;
            if (read_varint(p, end[depth], &at, &v) || v > end[depth] - at)
                break;
            if ((key >> 3) <= UINT32_MAX)
                f = protobuf_c_message_descriptor_get_field(desc[depth], (unsigned)(key >> 3));
            if (f && f->type == PROTOBUF_C_TYPE_MESSAGE) {
                if (depth == MAX_NESTING)
                    return slim_error_set(err, SLIM_EFORMAT, "not a valid ONNX model: its "
                                          "messages nest more than %d deep", MAX_NESTING);
                depth++;
                desc[depth] = f->descriptor;
                end[depth] = at + (size_t)v;
            } else {
                at += (size_t)v;
            }
        } else {
            break;   /* groups (3, 4) and wire types 6, 7: nothing ONNX uses */
        }
    }
    return slim_error_set(err, SLIM_EFORMAT, "not a valid ONNX model (the protobuf does not "
                          "parse as a ModelProto)");
}

/* Checks every string field of msg and of the messages in it (at most
 * MAX_NESTING deep: check_nesting saw to it); on the first that is not
 * UTF-8, writes its path ("graph.node[3].name") to path and returns 0. */
static int strings_utf8(const ProtobufCMessage *msg, char *path, size_t plen, size_t at)
{
    const ProtobufCMessageDescriptor *d = msg->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const char *base = (const char *)msg;
        size_t n = 1;
        void *const *items;
        if (f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            *(const uint32_t *)(base + f->quantifier_offset) != f->id)
            continue;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            n = *(const size_t *)(base + f->quantifier_offset);
            items = *(void *const *const *)(base + f->offset);
        } else {
            items = (void *const *)(base + f->offset);
        }
        for (size_t k = 0; k < n; k++) {
            const void *v = items[k];
            int w;
            if (!v)
                continue;
            w = f->label == PROTOBUF_C_LABEL_REPEATED
                    ? snprintf(path + at, plen - at, "%s%s[%zu]", at ? "." : "", f->name, k)
                    : snprintf(path + at, plen - at, "%s%s", at ? "." : "", f->name);
            if (w < 0 || (size_t)w >= plen - at)
                w = (int)(plen - at - 1);
            if (f->type == PROTOBUF_C_TYPE_STRING ? !slim_utf8_valid(v)
                                                  : !strings_utf8(v, path, plen, at + (size_t)w))
                return 0;
            path[at] = 0;
        }
    }
    return 1;
}

static int unpack(struct slim_onnx *m, const void *buf, size_t len, struct slim_error *err)
{
    char path[128] = "";
    int rc;
    if (len > SLIM_ONNX_MAX_PROTO)
        return slim_error_set(err, SLIM_EFORMAT, "the .onnx file is over 2 GiB (protobuf's "
                              "limit: larger models keep their weights in external data)");
    if ((rc = check_nesting(buf, len, err)))
        return rc;
    m->model = (Onnx__ModelProto *)protobuf_c_message_unpack(&onnx__model_proto__descriptor,
                                                             &pb_allocator, len, buf);
    if (!m->model)
        return slim_error_set(err, SLIM_EFORMAT, "not a valid ONNX model (the protobuf does "
                              "not parse as a ModelProto)");
    /* protobuf's strings are UTF-8; names end up in JSON (the model's
     * record, reports, the artifact's metadata), which takes nothing
     * else */
    if (!strings_utf8(&m->model->base, path, sizeof path, 0))
        return slim_error_set(err, SLIM_EFORMAT, "not a valid ONNX model: %s is not UTF-8 "
                              "text", path);
    return 0;
}

static int check(struct slim_onnx *m, struct slim_error *err)
{
    Onnx__ModelProto *mp = m->model;
    int have = 0;
    if (!mp->graph)
        return slim_error_set(err, SLIM_EFORMAT, "ONNX model without a graph");
    m->graph = mp->graph;
    for (size_t i = 0; i < mp->n_opset_import; i++) {
        const Onnx__OperatorSetIdProto *o = mp->opset_import[i];
        if (!o->domain || !*o->domain || !strcmp(o->domain, "ai.onnx")) {
            m->opset = o->has_version ? o->version : 0;
            have = 1;
        }
    }
    if (!have) {
        if (mp->n_opset_import)
            return slim_error_set(err, SLIM_EFORMAT,
                                  "ONNX model imports no opset of the default domain");
        m->opset = 1;   /* IR < 3 models predate opset_import */
    }
    for (size_t i = 0; i < m->graph->n_initializer; i++) {
        const Onnx__TensorProto *t = m->graph->initializer[i];
        const void *d;
        size_t nb;
        int rc, type = t->has_data_type ? t->data_type : 0;
        if (!t->name || !*t->name)
            return slim_error_set(err, SLIM_EFORMAT, "initializer %zu has no name", i);
        if (type == SLIM_ONNX_STRING)
            continue;
        if ((rc = slim_onnx_tensor_data(m, t, &d, &nb, NULL, err)))
            return rc;
        if (t->has_data_location &&
            t->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL)
            m->external = 1;
    }
    for (size_t i = 0; i < m->graph->n_node; i++) {
        const Onnx__NodeProto *n = m->graph->node[i];
        if (!n->op_type || !*n->op_type)
            return slim_error_set(err, SLIM_EFORMAT, "node %zu has no op_type", i);
    }
    return 0;
}

static int open_tar(const char *path, struct slim_onnx *m, struct slim_error *err)
{
    struct stat st;
    const struct slim_tar_member *onnx = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC), rc;

    if (fd < 0 || fstat(fd, &st)) {
        rc = slim_error_set(err, SLIM_EIO, "cannot open the model: %s", strerror(errno));
        if (fd >= 0)
            close(fd);
        return rc;
    }
    m->tar_len = (size_t)st.st_size;
    m->tar = mmap(NULL, m->tar_len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m->tar == MAP_FAILED) {
        m->tar = NULL;
        return slim_error_set(err, SLIM_EIO, "cannot map the model: %s", strerror(errno));
    }
    if ((rc = slim_tar_members(m->tar, m->tar_len, &m->members, &m->n_members, err)))
        return rc;
    for (size_t i = 0; i < m->n_members; i++)
        if (ends_with(m->members[i].name, ".onnx")) {
            if (onnx)
                return slim_error_set(err, SLIM_EFORMAT, "tar: two .onnx files (%.100s and "
                                      "%.100s)", onnx->name, m->members[i].name);
            onnx = &m->members[i];
        }
    if (!onnx)
        return slim_error_set(err, SLIM_EFORMAT, "tar: no .onnx file");
    if (!(m->name = slim_strdup(onnx->name)))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    m->bytes = m->tar_len;
    if ((rc = unpack(m, (const unsigned char *)m->tar + onnx->off, (size_t)onnx->size, err)))
        return rc;
    rc = check(m, err);
    m->bytes = m->tar_len;   /* the tar holds every file once */
    return rc;
}

static int open_file(const char *path, struct slim_onnx *m, struct slim_error *err)
{
    struct stat st;
    void *map = NULL;
    const char *slash = strrchr(path, '/');
    int fd = open(path, O_RDONLY | O_CLOEXEC), rc;

    if (fd < 0 || fstat(fd, &st)) {
        rc = slim_error_set(err, SLIM_EIO, "cannot open the model: %s", strerror(errno));
        if (fd >= 0)
            close(fd);
        return rc;
    }
    if ((m->dir = slim_malloc(slash ? (size_t)(slash - path) + 1 : 2))) {
        size_t dl = slash ? (size_t)(slash - path) : 1;
        memcpy(m->dir, slash ? path : ".", dl);
        m->dir[dl] = 0;
    }
    m->name = slim_strdup(slash ? slash + 1 : path);
    if (!m->dir || !m->name) {
        close(fd);
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    }
    if (st.st_size > 0) {
        map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            close(fd);
            return slim_error_set(err, SLIM_EIO, "cannot map the model: %s", strerror(errno));
        }
    }
    close(fd);
    m->bytes = (uint64_t)st.st_size;
    rc = unpack(m, map, (size_t)st.st_size, err);
    if (map)
        munmap(map, (size_t)st.st_size);
    return rc ? rc : check(m, err);
}

int slim_onnx_open(const char *path, struct slim_onnx *m, struct slim_error *err)
{
    int rc;
    memset(m, 0, sizeof *m);
    int kind = slim_source_kind(path);
    rc = kind == SLIM_SRC_TAR || kind == SLIM_SRC_ONNX_TAR ? open_tar(path, m, err)
                                                           : open_file(path, m, err);
    if (rc)
        slim_onnx_release(m);
    return rc;
}

int slim_onnx_parse(const void *buf, size_t len, struct slim_onnx *m, struct slim_error *err)
{
    int rc;
    memset(m, 0, sizeof *m);
    m->bytes = len;
    if ((rc = unpack(m, len ? buf : "", len, err)) || (rc = check(m, err)))
        slim_onnx_release(m);
    return rc;
}

void slim_onnx_release(struct slim_onnx *m)
{
    if (m->model)
        protobuf_c_message_free_unpacked(&m->model->base, &pb_allocator);
    for (size_t i = 0; i < m->n_files; i++) {
        if (m->files[i].map)
            munmap(m->files[i].map, m->files[i].map_len);
        slim_free(m->files[i].location);
    }
    slim_free(m->files);
    for (size_t i = 0; i < m->n_bufs; i++)
        slim_aligned_free(m->bufs[i]);
    slim_free(m->bufs);
    for (size_t i = 0; i < m->n_dense; i++) {
        slim_free(m->dense[i]->dims);
        slim_free(m->dense[i]);
    }
    slim_free(m->dense);
    if (m->tar)
        munmap(m->tar, m->tar_len);
    slim_free(m->members);
    slim_free(m->dir);
    slim_free(m->name);
    memset(m, 0, sizeof *m);
}

static json_t *value_infos(Onnx__ValueInfoProto **v, size_t n, const Onnx__GraphProto *g)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        const Onnx__TypeProto *tp = v[i]->type;
        json_t *shape = json_null(), *o;
        int elem = 0, is_init = 0;
        for (size_t k = 0; k < g->n_initializer && !is_init; k++)
            is_init = v[i]->name && g->initializer[k]->name &&
                      !strcmp(v[i]->name, g->initializer[k]->name);
        if (is_init)
            continue;  /* old exporters list initializers as inputs too */
        if (tp && tp->value_case == ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE && tp->tensor_type) {
            const Onnx__TypeProto__Tensor *tt = tp->tensor_type;
            elem = tt->has_elem_type ? tt->elem_type : 0;
            if (tt->shape) {
                shape = json_array();
                for (size_t d = 0; d < tt->shape->n_dim; d++) {
                    const Onnx__TensorShapeProto__Dimension *dim = tt->shape->dim[d];
                    if (dim->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE)
                        json_array_append_new(shape, json_integer(dim->dim_value));
                    else if (dim->value_case ==
                             ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM)
                        json_array_append_new(shape, json_string(dim->dim_param));
                    else
                        json_array_append_new(shape, json_null());
                }
            }
        }
        o = json_pack("{s:s, s:s, s:o}", "name", v[i]->name ? v[i]->name : "", "type",
                      slim_onnx_type_name(elem), "shape", shape);
        json_array_append_new(arr, o);
    }
    return arr;
}

static int by_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

json_t *slim_onnx_describe(const struct slim_onnx *m)
{
    const Onnx__GraphProto *g = m->graph;
    const char **ops = slim_calloc(g->n_node + 1, sizeof *ops);
    json_t *op_types = json_array(), *o;
    int64_t params = 0;
    size_t k = 0;

    for (size_t i = 0; ops && i < g->n_node; i++)
        ops[k++] = g->node[i]->op_type;
    if (ops)
        qsort(ops, k, sizeof *ops, by_str);
    for (size_t i = 0; ops && i < k; i++)
        if (!i || strcmp(ops[i], ops[i - 1]))
            json_array_append_new(op_types, json_string(ops[i]));
    slim_free(ops);
    for (size_t i = 0; i < g->n_initializer; i++) {
        int64_t n = slim_onnx_numel(g->initializer[i]);
        if (n > 0)
            params += n;
    }
    o = json_pack("{s:s, s:I, s:I, s:s, s:o, s:o, s:o, s:I, s:I, s:I, s:b}", "format", "onnx",
                  "opset", (json_int_t)m->opset, "ir_version",
                  (json_int_t)(m->model->has_ir_version ? m->model->ir_version : 0), "producer",
                  m->model->producer_name ? m->model->producer_name : "", "inputs",
                  value_infos(g->input, g->n_input, g), "outputs",
                  value_infos(g->output, g->n_output, g), "op_types", op_types, "nodes",
                  (json_int_t)g->n_node, "tensors", (json_int_t)g->n_initializer, "params",
                  (json_int_t)params, "external_data", m->external);
    return o;
}
