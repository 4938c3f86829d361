/*
 * safetensors.c - a strict reader and an atomic writer for safetensors.
 *
 * The format: an 8-byte little-endian header length N, N bytes of JSON
 * (an object mapping tensor names to {dtype, shape, data_offsets}, plus an
 * optional "__metadata__" object of strings), then the data area that the
 * offsets index.  Uploads come from anywhere, so the reader checks every
 * bound before it trusts a number: N against the file and a cap, every
 * offset against the data area, shape x dtype size against the byte span
 * (with overflow checks), and that the spans tile the data area exactly,
 * with no gap and no overlap, as the reference implementation requires.
 * The JSON goes through jansson with JSON_REJECT_DUPLICATES, so a name
 * cannot appear twice.
 *
 * The file is mmapped read-only and tensors point into the mapping, so a
 * large model costs page cache, not heap.  Tensors are kept in data-offset
 * order, which is the file's physical order and what the writer reproduces.
 *
 * The writer lays tensors out in the order given, pads the header with
 * spaces to a multiple of 8 (so F64/I64 data stay aligned when mapped;
 * slim_st_header in writer.c), and writes through the artifact writer:
 * a temp file in the destination folder that is fsynced and renamed, so
 * a reader never sees half a file.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "passes/slim.h"
#include "passes/formats/source.h"
#include "passes/formats/onnx.h"
#include "passes/formats/writer.h"

static uint64_t read_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static int by_offset(const void *a, const void *b)
{
    const struct slim_tensor *x = a, *y = b;
    const unsigned char *px = x->data, *py = y->data;
    if (px != py)
        return px < py ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

/* Reads one header entry into t; name is borrowed. */
static int parse_entry(const char *name, json_t *v, const unsigned char *data, uint64_t data_len,
                       struct slim_tensor *t, struct slim_error *err)
{
    json_t *dt, *shape, *offs, *val;
    const char *key;
    size_t i;
    uint64_t numel = 1, begin, end;

    if (!json_is_object(v))
        return slim_error_set(err, SLIM_EFORMAT, "tensor '%s': entry is not an object", name);
    json_object_foreach(v, key, val) {
        if (strcmp(key, "dtype") && strcmp(key, "shape") && strcmp(key, "data_offsets"))
            return slim_error_set(err, SLIM_EFORMAT, "tensor '%s': unknown key '%s'", name, key);
    }
    dt = json_object_get(v, "dtype");
    shape = json_object_get(v, "shape");
    offs = json_object_get(v, "data_offsets");
    if (!json_is_string(dt))
        return slim_error_set(err, SLIM_EFORMAT, "tensor '%s': missing dtype", name);
    if (slim_dtype_parse(json_string_value(dt), &t->dtype))
        return slim_error_set(err, SLIM_EFORMAT,
                              "tensor '%s': unsupported dtype '%.20s' (expected F64, F32, F16, BF16, "
                              "I64, I32, I16, I8, U8 or BOOL)", name, json_string_value(dt));
    if (!json_is_array(shape))
        return slim_error_set(err, SLIM_EFORMAT, "tensor '%s': missing shape", name);
    if (json_array_size(shape) > SLIM_MAX_DIMS)
        return slim_error_set(err, SLIM_EFORMAT, "tensor '%s': %zu dimensions (at most %d)", name,
                              json_array_size(shape), SLIM_MAX_DIMS);
    t->ndim = (int)json_array_size(shape);
    json_array_foreach(shape, i, val) {
        json_int_t d = json_is_integer(val) ? json_integer_value(val) : -1;
        if (d < 0)
            return slim_error_set(err, SLIM_EFORMAT,
                                  "tensor '%s': shape[%zu] is not a non-negative integer", name, i);
        t->shape[i] = d;
        if (d && numel > UINT64_MAX / (uint64_t)d)
            return slim_error_set(err, SLIM_EFORMAT, "tensor '%s': shape overflows", name);
        numel *= (uint64_t)d;
    }
    if (!json_is_array(offs) || json_array_size(offs) != 2 ||
        !json_is_integer(json_array_get(offs, 0)) || !json_is_integer(json_array_get(offs, 1)) ||
        json_integer_value(json_array_get(offs, 0)) < 0 ||
        json_integer_value(json_array_get(offs, 1)) < 0)
        return slim_error_set(err, SLIM_EFORMAT,
                              "tensor '%s': data_offsets must be [begin, end] non-negative integers",
                              name);
    begin = (uint64_t)json_integer_value(json_array_get(offs, 0));
    end = (uint64_t)json_integer_value(json_array_get(offs, 1));
    if (begin > end || end > data_len)
        return slim_error_set(err, SLIM_EFORMAT,
                              "tensor '%s': data_offsets [%llu, %llu] outside the data area of "
                              "%llu bytes", name, (unsigned long long)begin,
                              (unsigned long long)end, (unsigned long long)data_len);
    if (numel > UINT64_MAX / 8 || numel * slim_dtype_size(t->dtype) != end - begin)
        return slim_error_set(err, SLIM_EFORMAT,
                              "tensor '%s': shape needs %llu bytes of %s but data_offsets span %llu",
                              name, (unsigned long long)(numel * slim_dtype_size(t->dtype)),
                              slim_dtype_name(t->dtype), (unsigned long long)(end - begin));
    t->data = data + begin;
    t->nbytes = (size_t)(end - begin);
    t->name = slim_strdup(name);
    if (!t->name)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    return 0;
}

int slim_st_parse(const void *buf, size_t len, struct slim_model *m, struct slim_error *err)
{
    const unsigned char *p = buf;
    uint64_t hlen, data_len;
    json_t *root = NULL, *val;
    json_error_t jerr;
    const char *key;
    size_t n = 0, cap;
    int rc = 0;

    memset(m, 0, sizeof *m);
    m->file_bytes = len;
    if (len < 8)
        return slim_error_set(err, SLIM_EFORMAT, "file too short for a safetensors header (%zu bytes)",
                              len);
    hlen = read_le64(p);
    if (hlen > SLIM_ST_MAX_HEADER)
        return slim_error_set(err, SLIM_EFORMAT, "header length %llu exceeds the limit of %u bytes",
                              (unsigned long long)hlen, SLIM_ST_MAX_HEADER);
    if (hlen > len - 8)
        return slim_error_set(err, SLIM_EFORMAT,
                              "header length %llu runs past the end of the file (%zu bytes)",
                              (unsigned long long)hlen, len);
    if (hlen < 2 || p[8] != '{')
        return slim_error_set(err, SLIM_EFORMAT, "header does not start with a JSON object");
    data_len = len - 8 - hlen;
    root = json_loadb((const char *)p + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return slim_error_set(err, SLIM_EFORMAT, "header is not valid JSON: %s (at byte %d)",
                              jerr.text, jerr.position);
    if (!json_is_object(root)) {
        rc = slim_error_set(err, SLIM_EFORMAT, "header is not a JSON object");
        goto out;
    }
    cap = json_object_size(root);
    m->tensors = slim_calloc(cap ? cap : 1, sizeof *m->tensors);
    m->metadata = json_object();
    if (!m->tensors || !m->metadata) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
        goto out;
    }
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            const char *mk;
            json_t *mv;
            if (!json_is_object(val)) {
                rc = slim_error_set(err, SLIM_EFORMAT, "__metadata__ is not an object");
                goto out;
            }
            size_t md_bytes = 0;
            if (json_object_size(val) > SLIM_ST_MAX_METADATA_KEYS) {
                rc = slim_error_set(err, SLIM_EFORMAT,
                                    "__metadata__ has %zu entries, more than the %d slimd keeps",
                                    json_object_size(val), SLIM_ST_MAX_METADATA_KEYS);
                goto out;
            }
            json_object_foreach(val, mk, mv) {
                if (!json_is_string(mv)) {
                    rc = slim_error_set(err, SLIM_EFORMAT,
                                        "__metadata__['%.60s'] is not a string", mk);
                    goto out;
                }
                md_bytes += strlen(mk) + json_string_length(mv);
                if (md_bytes > SLIM_ST_MAX_METADATA_BYTES) {
                    rc = slim_error_set(err, SLIM_EFORMAT,
                                        "__metadata__ holds more than the %u bytes slimd keeps",
                                        SLIM_ST_MAX_METADATA_BYTES);
                    goto out;
                }
                json_object_set(m->metadata, mk, mv);
            }
            continue;
        }
        rc = parse_entry(key, val, p + 8 + hlen, data_len, &m->tensors[n], err);
        if (rc)
            goto out;
        n++;
    }
    m->n_tensors = n;
    qsort(m->tensors, n, sizeof *m->tensors, by_offset);
    {
        const unsigned char *expect = p + 8 + hlen;
        for (size_t i = 0; i < n; i++) {
            const unsigned char *d = m->tensors[i].data;
            if (d != expect) {
                rc = slim_error_set(err, SLIM_EFORMAT,
                                    "tensor '%s': data at offset %lld %s the previous tensor's end "
                                    "(%lld)", m->tensors[i].name,
                                    (long long)(d - (p + 8 + hlen)),
                                    d < expect ? "overlaps" : "leaves a gap after",
                                    (long long)(expect - (p + 8 + hlen)));
                goto out;
            }
            expect = d + m->tensors[i].nbytes;
        }
        if (expect != p + len) {
            rc = slim_error_set(err, SLIM_EFORMAT,
                                "tensors cover %lld of the %llu data bytes (trailing bytes)",
                                (long long)(expect - (p + 8 + hlen)), (unsigned long long)data_len);
            goto out;
        }
    }
out:
    json_decref(root);
    if (rc) {
        m->n_tensors = n;
        slim_model_release(m);
    }
    return rc;
}

int slim_st_open(const char *path, struct slim_model *m, struct slim_error *err)
{
    struct stat stt;
    void *map = NULL;
    int fd, rc;

    /* messages name the file, never the server's folders */
    const char *name = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    memset(m, 0, sizeof *m);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return slim_error_set(err, SLIM_EIO, "cannot open %s: %s", name, strerror(errno));
    if (fstat(fd, &stt) != 0) {
        rc = slim_error_set(err, SLIM_EIO, "cannot stat %s: %s", name, strerror(errno));
        close(fd);
        return rc;
    }
    if (stt.st_size > 0) {
        map = mmap(NULL, (size_t)stt.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            rc = slim_error_set(err, SLIM_EIO, "cannot map %s: %s", name, strerror(errno));
            close(fd);
            return rc;
        }
    }
    close(fd);
    rc = slim_st_parse(map ? map : "", (size_t)stt.st_size, m, err);
    if (rc) {
        if (map)
            munmap(map, (size_t)stt.st_size);
        return rc;
    }
    m->map = map;
    m->map_len = (size_t)stt.st_size;
    return 0;
}

void slim_model_release(struct slim_model *m)
{
    for (size_t i = 0; i < m->n_tensors; i++) {
        slim_free(m->tensors[i].name);
        slim_aligned_free(m->tensors[i].own);
    }
    slim_free(m->tensors);
    json_decref(m->metadata);
    if (m->map)
        munmap(m->map, m->map_len);
    memset(m, 0, sizeof *m);
}

const struct slim_tensor *slim_model_find(const struct slim_model *m, const char *name)
{
    for (size_t i = 0; i < m->n_tensors; i++)
        if (strcmp(m->tensors[i].name, name) == 0)
            return &m->tensors[i];
    return NULL;
}

int slim_st_write(const char *path, const struct slim_tensor *tensors, size_t n,
                  json_t *metadata, struct slim_error *err)
{
    struct slim_writer *wr = NULL;
    struct slim_piece *pieces;
    char *hdr = NULL;
    size_t len = 0;
    int rc;

    if (!(pieces = slim_calloc(n + 1, sizeof *pieces)))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    if ((rc = slim_st_header(tensors, n, metadata, &hdr, &len, err)) ||
        (rc = slim_writer_open(path, NULL, NULL, &wr, err))) {
        slim_free(hdr);
        slim_free(pieces);
        return rc;
    }
    pieces[0] = (struct slim_piece){hdr, len};
    for (size_t i = 0; i < n; i++)
        pieces[i + 1] = (struct slim_piece){tensors[i].data, tensors[i].nbytes};
    /* the tensors' bytes are the caller's: only the header is handed over,
     * and finish waits until everything is written */
    rc = slim_writer_submit(wr, pieces, n + 1, (void *[]){hdr}, 1, err);
    slim_free(pieces);
    if (rc) {
        slim_writer_abort(wr);
        return rc;
    }
    return slim_writer_finish(wr, err);
}

const char *slim_format_detect(const void *head, size_t len)
{
    const unsigned char *p = head;
    if (len >= 512 && !memcmp(p + 257, "ustar", 5))
        return "tar";
    if (len >= 10 && read_le64(p) <= SLIM_ST_MAX_HEADER && p[8] == '{')
        return "safetensors";
    if (slim_onnx_sniff(head, len))
        return "onnx";
    return NULL;
}

int slim_model_describe(const char *path, json_t **info, struct slim_error *err)
{
    struct slim_source src;
    json_t *dtypes;
    int64_t params = 0;
    size_t tensors = 0;
    int rc = slim_source_open(path, &src, err);
    if (rc)
        return rc;
    if (src.onnx) {
        json_t *files = json_array();
        *info = slim_onnx_describe(src.onnx);
        for (size_t i = 0; files && i < src.onnx->n_files; i++)
            json_array_append_new(files, json_string(src.onnx->files[i].location));
        if (*info && src.kind == SLIM_SRC_ONNX_TAR)
            json_object_set_new(*info, "onnx_file", json_string(src.onnx->name));
        if (*info && json_array_size(files))
            json_object_set(*info, "external_files", files);
        json_decref(files);
        slim_source_release(&src);
        return *info ? 0 : slim_error_set(err, SLIM_ENOMEM, "out of memory");
    }
    if (src.kind == SLIM_SRC_INDEX) {
        slim_source_release(&src);
        return slim_error_set(err, SLIM_EFORMAT, "an index alone is not a model: upload the "
                              "index and its shards as one tar");
    }
    dtypes = json_object();
    for (size_t s = 0; s < src.n; s++) {
        const struct slim_model *m = &src.shards[s].model;
        for (size_t i = 0; i < m->n_tensors; i++) {
            const char *dn = slim_dtype_name(m->tensors[i].dtype);
            json_t *c = json_object_get(dtypes, dn);
            json_object_set_new(dtypes, dn, json_integer(c ? json_integer_value(c) + 1 : 1));
            params += slim_tensor_numel(&m->tensors[i]);
        }
        tensors += m->n_tensors;
    }
    *info = json_pack("{s:s, s:I, s:I, s:o, s:O}", "format",
                      src.kind == SLIM_SRC_TAR ? "safetensors-sharded" : "safetensors",
                      "tensors", (json_int_t)tensors, "params", (json_int_t)params, "dtypes",
                      dtypes, "metadata", src.shards[0].model.metadata);
    if (*info && src.kind == SLIM_SRC_TAR) {
        json_t *names = json_array();
        for (size_t s = 0; s < src.n; s++)
            json_array_append_new(names, json_string(src.shards[s].name));
        json_object_set_new(*info, "shards", names);
        json_object_set_new(*info, "index", json_string(src.index_name));
    }
    slim_source_release(&src);
    if (!*info)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    return 0;
}
