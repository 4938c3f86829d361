/*
 * source.c - see source.h.
 *
 * A sharded checkpoint is what Hugging Face writes for large models:
 * model-00001-of-0000N.safetensors ... and model.safetensors.index.json,
 * {"metadata": {"total_size": N}, "weight_map": {tensor: shard file}}.
 * slimd reads it from a folder (slimd compress INDEX.json) or from one
 * uncompressed tar that holds the index and the shards (an upload is one
 * body, and a tar is the one container every client can make: `tar cf`).
 * A tar member is stored contiguously, so a shard inside it is a byte
 * range of the tar: the tar is mapped once, each shard's header is
 * parsed in place, and tensors are read with pread at their offset in
 * the tar; nothing is unpacked.  Rejected: zip (compressed members
 * would have to be inflated to a temp file first) and multipart with one
 * part per shard (libmicrohttpd's post processor streams parts in
 * order, but the sizes are unknown until each part ends, so the daemon
 * would have to write a container of its own anyway).
 *
 * The tar reader accepts ustar, pax (a `path` or `size` record for the
 * next member) and GNU long names ('L'), checks every header's checksum
 * and every member's bounds, and skips directories and other entries.
 * Shard names must be plain file names (no '/'), so an index cannot
 * point outside its folder.  Shards are taken in name order, which for
 * Hugging Face's names is their numbering.
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
#include "passes/formats/source.h"
#include "passes/formats/onnx.h"

#define INDEX_MAX ((size_t)64 << 20)   /* a 1e6-tensor index is ~60 MB */
#define MAX_SHARDS 100000

static int valid_shard_name(const char *s)
{
    return s[0] && !strchr(s, '/') && strcmp(s, ".") && strcmp(s, "..") && strlen(s) < 256;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The distinct shard names of index's weight_map, sorted (new array of
 * borrowed strings in *names). */
static int shard_names(json_t *index, const char ***names, size_t *n, struct slim_error *err)
{
    json_t *map = json_object_get(index, "weight_map"), *v;
    const char *key, **all;
    size_t k = 0, u = 0;
    if (!json_is_object(index) || !json_is_object(map) || !json_object_size(map))
        return slim_error_set(err, SLIM_EFORMAT,
                              "index: expected {\"weight_map\": {tensor: shard file, ...}}");
    if (!(all = slim_calloc(json_object_size(map), sizeof *all)))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    json_object_foreach(map, key, v) {
        if (!json_is_string(v) || !valid_shard_name(json_string_value(v))) {
            slim_free(all);
            return slim_error_set(err, SLIM_EFORMAT,
                                  "index: weight_map['%.80s'] is not a plain shard file name", key);
        }
        all[k++] = json_string_value(v);
    }
    qsort(all, k, sizeof *all, by_name);
    for (size_t i = 0; i < k; i++)
        if (!u || strcmp(all[u - 1], all[i]))
            all[u++] = all[i];
    if (u > MAX_SHARDS) {
        slim_free(all);
        return slim_error_set(err, SLIM_EFORMAT, "index: %zu shards is too many", u);
    }
    *names = all;
    *n = u;
    return 0;
}

/* Every index entry names a tensor of its shard, and every shard tensor
 * is in the index. */
static int cross_check(struct slim_source *src, struct slim_error *err)
{
    json_t *map = json_object_get(src->index, "weight_map"), *v;
    const char *key;
    size_t total = 0;
    json_object_foreach(map, key, v) {
        const struct slim_shard *s = NULL;
        for (size_t i = 0; i < src->n && !s; i++)
            if (!strcmp(src->shards[i].name, json_string_value(v)))
                s = &src->shards[i];
        if (!s || !slim_model_find(&s->model, key))
            return slim_error_set(err, SLIM_EFORMAT, "index: tensor '%.80s' is not in shard %.80s",
                                  key, json_string_value(v));
    }
    for (size_t i = 0; i < src->n; i++)
        total += src->shards[i].model.n_tensors;
    if (total != json_object_size(map))
        return slim_error_set(err, SLIM_EFORMAT,
                              "index: the shards hold %zu tensors but weight_map lists %zu", total,
                              json_object_size(map));
    return 0;
}

static int alloc_shards(struct slim_source *src, size_t n, struct slim_error *err)
{
    if (!(src->shards = slim_calloc(n ? n : 1, sizeof *src->shards)))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        src->shards[i].fd = -1;
    return 0;
}

static int open_file(const char *path, struct slim_source *src, struct slim_error *err)
{
    struct slim_shard *s;
    int rc;
    src->kind = SLIM_SRC_FILE;
    if ((rc = alloc_shards(src, 1, err)))
        return rc;
    s = &src->shards[0];
    src->n = 1;
    if (!(s->name = slim_strdup("")))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    if ((rc = slim_st_open(path, &s->model, err)))
        return rc;
    s->base = s->model.map;
    if ((s->fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return slim_error_set(err, SLIM_EIO, "cannot open the model: %s", strerror(errno));
    src->bytes = s->model.file_bytes;
    return 0;
}

static int open_index(const char *path, struct slim_source *src, struct slim_error *err)
{
    json_error_t jerr;
    const char **names = NULL, *slash = strrchr(path, '/');
    char dir[PATH_MAX], file[PATH_MAX];
    struct stat st;
    int rc;

    src->kind = SLIM_SRC_INDEX;
    if (stat(path, &st) || st.st_size > (off_t)INDEX_MAX)
        return slim_error_set(err, SLIM_EFORMAT, "index: missing, or over %zu bytes", INDEX_MAX);
    src->index = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!src->index)
        return slim_error_set(err, SLIM_EFORMAT, "index: not valid JSON: %s (line %d)", jerr.text,
                              jerr.line);
    src->index_name = slim_strdup(slash ? slash + 1 : path);
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) : 1, slash ? path : ".");
    src->bytes = (uint64_t)st.st_size;
    if (!src->index_name)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    if ((rc = shard_names(src->index, &names, &src->n, err)) ||
        (rc = alloc_shards(src, src->n, err)))
        goto out;
    for (size_t i = 0; i < src->n; i++) {
        struct slim_shard *s = &src->shards[i];
        if (snprintf(file, sizeof file, "%s/%s", dir, names[i]) >= (int)sizeof file) {
            rc = slim_error_set(err, SLIM_EINVAL, "shard %s: path too long", names[i]);
            goto out;
        }
        if (!(s->name = slim_strdup(names[i]))) {
            rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
            goto out;
        }
        if ((rc = slim_st_open(file, &s->model, err))) {
            slim_error_prefix(err, "shard %s", names[i]);
            goto out;
        }
        s->base = s->model.map;
        if ((s->fd = open(file, O_RDONLY | O_CLOEXEC)) < 0) {
            rc = slim_error_set(err, SLIM_EIO, "shard %s: cannot open: %s", names[i],
                                strerror(errno));
            goto out;
        }
        src->bytes += s->model.file_bytes;
    }
    rc = cross_check(src, err);
out:
    slim_free(names);
    return rc;
}

/* ---- tar ------------------------------------------------------------ */

static int octal(const unsigned char *p, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    size_t i = 0;
    if (p[0] & 0x80) {            /* GNU base-256 */
        for (i = 1; i < n; i++) {
            if (v >> 55)
                return -1;
            v = v << 8 | p[i];
        }
        *out = v;
        return 0;
    }
    while (i < n && p[i] == ' ')
        i++;
    for (; i < n && p[i] >= '0' && p[i] <= '7'; i++) {
        if (v >> 60)
            return -1;
        v = v * 8 + (uint64_t)(p[i] - '0');
    }
    if (i < n && p[i] != 0 && p[i] != ' ')
        return -1;
    *out = v;
    return 0;
}

static int checksum_ok(const unsigned char *h)
{
    uint64_t want, sum = 0;
    if (octal(h + 148, 8, &want))
        return 0;
    for (int i = 0; i < 512; i++)
        sum += (i >= 148 && i < 156) ? ' ' : h[i];
    return sum == want;
}

/* The decimal number in p[0..n) up to the first non-digit, reading
 * nothing past n (the tar is mapped: its bytes are not NUL-terminated).
 * *used gets the digits read; -1 when there are none or it overflows. */
static int bounded_decimal(const char *p, uint64_t n, uint64_t *out, uint64_t *used)
{
    uint64_t v = 0, i = 0;
    for (; i < n && i < 20 && p[i] >= '0' && p[i] <= '9'; i++)
        v = v * 10 + (uint64_t)(p[i] - '0');
    if (i == 0 || i == 20)
        return -1;
    *out = v;
    *used = i;
    return 0;
}

/* Reads pax records "LEN key=value\n" for path and size. */
static void pax_records(const char *p, uint64_t len, char *path, size_t plen, uint64_t *size,
                        int *has_size)
{
    uint64_t off = 0;
    while (off < len) {
        uint64_t rl, digits, v, vd;
        const char *kv, *eq;
        if (bounded_decimal(p + off, len - off, &rl, &digits) || digits >= len - off ||
            p[off + digits] != ' ' || rl < digits + 3 || rl > len - off)
            return;
        kv = p + off + digits + 1;
        eq = memchr(kv, '=', (size_t)(p + off + rl - kv));
        if (eq && p[off + rl - 1] == '\n') {
            size_t kl = (size_t)(eq - kv), vl = (size_t)(p + off + rl - 1 - (eq + 1));
            if (kl == 4 && !memcmp(kv, "path", 4) && vl < plen) {
                memcpy(path, eq + 1, vl);
                path[vl] = 0;
            } else if (kl == 4 && !memcmp(kv, "size", 4) &&
                       !bounded_decimal(eq + 1, vl, &v, &vd) && vd == vl) {
                *size = v;
                *has_size = 1;
            }
        }
        off += rl;
    }
}

/* Lists the regular-file members of the tar at map[0..len). */
int slim_tar_members(const unsigned char *map, size_t len, struct slim_tar_member **out,
                     size_t *n, struct slim_error *err)
{
    struct slim_tar_member *m = NULL;
    size_t cap = 0, count = 0;
    uint64_t off = 0;
    char next_name[1024] = "";
    uint64_t next_size = 0;
    int has_size = 0;

    while (off + 512 <= len) {
        const unsigned char *h = map + off;
        uint64_t size, data = off + 512;
        char name[1024];
        int zero = 1;
        for (int i = 0; i < 512 && zero; i++)
            zero = h[i] == 0;
        if (zero)
            break;                    /* end of archive */
        if (!checksum_ok(h) || octal(h + 124, 12, &size))
            return slim_free(m), slim_error_set(err, SLIM_EFORMAT,
                                                "tar: bad header at offset %llu",
                                                (unsigned long long)off);
        if (has_size)
            size = next_size;
        if (size > len - data)
            return slim_free(m), slim_error_set(err, SLIM_EFORMAT,
                                                "tar: member at offset %llu runs past the end",
                                                (unsigned long long)off);
        if (next_name[0]) {
            snprintf(name, sizeof name, "%s", next_name);
        } else if (!memcmp(h + 257, "ustar", 5) && h[345]) {
            snprintf(name, sizeof name, "%.155s/%.100s", (const char *)h + 345,
                     (const char *)h + 0);
        } else {
            snprintf(name, sizeof name, "%.100s", (const char *)h);
        }
        next_name[0] = 0;
        has_size = 0;
        switch (h[156]) {
        case 'x':
            pax_records((const char *)map + data, size, next_name, sizeof next_name,
                        &next_size, &has_size);
            break;
        case 'L':
            snprintf(next_name, sizeof next_name, "%.*s",
                     (int)(size < sizeof next_name - 1 ? size : sizeof next_name - 1),
                     (const char *)map + data);
            break;
        case '0':
        case 0:
            /* names go into JSON (the model's record, the artifact's
             * index); pax says UTF-8, and slimd holds ustar names to it */
            if (!slim_utf8_valid(name))
                return slim_free(m), slim_error_set(err, SLIM_EFORMAT,
                                                    "tar: the name of the member at offset %llu "
                                                    "is not UTF-8 text",
                                                    (unsigned long long)off);
            if (count == cap) {
                struct slim_tar_member *g = slim_realloc(m, (cap = cap ? 2 * cap : 16) * sizeof *m);
                if (!g)
                    return slim_free(m), slim_error_set(err, SLIM_ENOMEM, "out of memory");
                m = g;
            }
            snprintf(m[count].name, sizeof m[count].name, "%s",
                     strncmp(name, "./", 2) ? name : name + 2);
            m[count].off = data;
            m[count].size = size;
            count++;
            break;
        default:                      /* directories, links, global pax: skipped */
            break;
        }
        off = data + ((size + 511) & ~(uint64_t)511);
    }
    *out = m;
    *n = count;
    return 0;
}

static int ends_with(const char *s, const char *tail)
{
    size_t a = strlen(s), b = strlen(tail);
    return a >= b && !strcmp(s + a - b, tail);
}

static int open_tar(const char *path, struct slim_source *src, struct slim_error *err)
{
    struct slim_tar_member *m = NULL, *idx = NULL;
    const char **names = NULL;
    size_t nm = 0, dirlen = 0;
    struct stat st;
    json_error_t jerr;
    int rc;

    src->kind = SLIM_SRC_TAR;
    if ((src->fd = open(path, O_RDONLY | O_CLOEXEC)) < 0 || fstat(src->fd, &st))
        return slim_error_set(err, SLIM_EIO, "cannot open the model: %s", strerror(errno));
    src->map_len = (size_t)st.st_size;
    src->bytes = (uint64_t)st.st_size;
    src->map = mmap(NULL, src->map_len, PROT_READ, MAP_PRIVATE, src->fd, 0);
    if (src->map == MAP_FAILED) {
        src->map = NULL;
        return slim_error_set(err, SLIM_EIO, "cannot map the model: %s", strerror(errno));
    }
    if ((rc = slim_tar_members(src->map, src->map_len, &m, &nm, err)))
        return rc;
    for (size_t i = 0; i < nm; i++)
        if (ends_with(m[i].name, ".safetensors.index.json")) {
            if (idx) {
                rc = slim_error_set(err, SLIM_EFORMAT, "tar: two indexes (%.100s and %.100s)",
                                    idx->name, m[i].name);
                goto out;
            }
            idx = &m[i];
        }
    if (!idx) {
        rc = slim_error_set(err, SLIM_EFORMAT,
                            "tar: no model.safetensors.index.json (a sharded checkpoint needs "
                            "its index)");
        goto out;
    }
    if (idx->size > INDEX_MAX) {
        rc = slim_error_set(err, SLIM_EFORMAT, "index: over %zu bytes", INDEX_MAX);
        goto out;
    }
    src->index = json_loadb((const char *)src->map + idx->off, (size_t)idx->size,
                            JSON_REJECT_DUPLICATES, &jerr);
    if (!src->index) {
        rc = slim_error_set(err, SLIM_EFORMAT, "index: not valid JSON: %s (line %d)", jerr.text,
                            jerr.line);
        goto out;
    }
    {
        const char *slash = strrchr(idx->name, '/');
        dirlen = slash ? (size_t)(slash - idx->name) + 1 : 0;
        src->index_name = slim_strdup(idx->name + dirlen);
    }
    if (!src->index_name) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
        goto out;
    }
    if ((rc = shard_names(src->index, &names, &src->n, err)) ||
        (rc = alloc_shards(src, src->n, err)))
        goto out;
    for (size_t i = 0; i < src->n; i++) {
        struct slim_shard *s = &src->shards[i];
        const struct slim_tar_member *f = NULL;
        for (size_t k = 0; k < nm && !f; k++)
            if (!strncmp(m[k].name, idx->name, dirlen) && !strcmp(m[k].name + dirlen, names[i]))
                f = &m[k];
        if (!(s->name = slim_strdup(names[i]))) {
            rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
            goto out;
        }
        if (!f) {
            rc = slim_error_set(err, SLIM_EFORMAT, "tar: shard %.100s named by the index is "
                                "missing", names[i]);
            goto out;
        }
        if ((rc = slim_st_parse((const char *)src->map + f->off, (size_t)f->size, &s->model,
                                err))) {
            slim_error_prefix(err, "shard %s", names[i]);
            goto out;
        }
        s->base = src->map;
        s->fd = -1;
    }
    rc = cross_check(src, err);
out:
    slim_free(names);
    slim_free(m);
    return rc;
}

/* 1 if the tar behind fd holds an .onnx member. */
static int tar_has_onnx(int fd)
{
    struct stat st;
    struct slim_tar_member *m = NULL;
    size_t n = 0;
    void *map;
    int found = 0;
    if (fstat(fd, &st) || st.st_size <= 0)
        return 0;
    map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED)
        return 0;
    if (!slim_tar_members(map, (size_t)st.st_size, &m, &n, NULL))
        for (size_t i = 0; i < n && !found; i++)
            found = ends_with(m[i].name, ".onnx");
    slim_free(m);
    munmap(map, (size_t)st.st_size);
    return found;
}

int slim_source_kind(const char *path)
{
    unsigned char head[512];
    ssize_t got;
    int fd = open(path, O_RDONLY | O_CLOEXEC), kind;
    const char *fmt;
    if (fd < 0)
        return -1;
    do
        got = pread(fd, head, sizeof head, 0);
    while (got < 0 && errno == EINTR);
    if (got == 512 && !memcmp(head + 257, "ustar", 5))
        kind = tar_has_onnx(fd) ? SLIM_SRC_ONNX_TAR : SLIM_SRC_TAR;
    else if (got > 0 && (fmt = slim_format_detect(head, (size_t)got)) && !strcmp(fmt, "onnx"))
        kind = SLIM_SRC_ONNX;
    else
        kind = got > 0 && head[0] == '{' ? SLIM_SRC_INDEX : SLIM_SRC_FILE;
    close(fd);
    return kind;
}

/* 1 if node input `name` is the weight of a Gemm (B), MatMul (either
 * side) or Conv (W) somewhere in the graph. */
static int onnx_is_weight(const Onnx__GraphProto *g, const char *name)
{
    for (size_t i = 0; i < g->n_node; i++) {
        const Onnx__NodeProto *n = g->node[i];
        if (!strcmp(n->op_type, "Gemm") || !strcmp(n->op_type, "Conv")) {
            if (n->n_input > 1 && !strcmp(n->input[1], name))
                return 1;
        } else if (!strcmp(n->op_type, "MatMul")) {
            for (size_t k = 0; k < n->n_input && k < 2; k++)
                if (!strcmp(n->input[k], name))
                    return 1;
        }
    }
    return 0;
}

/* The ONNX model as one shard whose tensors are its initializers with a
 * dtype slimd knows (the others are left to the ONNX writer untouched). */
static int open_onnx(const char *path, int kind, struct slim_source *src,
                     struct slim_error *err)
{
    struct slim_shard *s;
    const Onnx__GraphProto *g;
    int rc;
    src->kind = kind;
    if (!(src->onnx = slim_calloc(1, sizeof *src->onnx)))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    if ((rc = slim_onnx_open(path, src->onnx, err)))
        return rc;
    if ((rc = alloc_shards(src, 1, err)))
        return rc;
    src->n = 1;
    s = &src->shards[0];
    s->fd = -1;
    s->in_memory = 1;
    if (!(s->name = slim_strdup(src->onnx->name)) || !(s->model.metadata = json_object()))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    g = src->onnx->graph;
    if (!(s->model.tensors = slim_calloc(g->n_initializer + 1, sizeof *s->model.tensors)))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    for (size_t i = 0; i < g->n_initializer; i++) {
        const Onnx__TensorProto *tp = g->initializer[i];
        struct slim_tensor *t = &s->model.tensors[s->model.n_tensors];
        int dt = slim_onnx_to_dtype(tp->has_data_type ? tp->data_type : 0);
        if (dt < 0 || tp->n_dims > SLIM_MAX_DIMS)
            continue;
        if ((rc = slim_onnx_tensor_data(src->onnx, tp, &t->data, &t->nbytes, &t->file_mapped,
                                        err)))
            return rc;
        if (!(t->name = slim_strdup(tp->name)))
            return slim_error_set(err, SLIM_ENOMEM, "out of memory");
        t->dtype = (enum slim_dtype)dt;
        t->ndim = (int)tp->n_dims;
        for (size_t d = 0; d < tp->n_dims; d++)
            t->shape[d] = tp->dims[d];
        t->role = onnx_is_weight(g, tp->name) ? SLIM_ROLE_WEIGHT : SLIM_ROLE_OTHER;
        s->model.n_tensors++;
    }
    s->model.file_bytes = (size_t)src->onnx->bytes;
    src->bytes = src->onnx->bytes;
    return 0;
}

int slim_source_open(const char *path, struct slim_source *src, struct slim_error *err)
{
    int kind = slim_source_kind(path), rc;

    memset(src, 0, sizeof *src);
    src->fd = -1;
    if (kind < 0)
        return slim_error_set(err, SLIM_EIO, "cannot open the model: %s", strerror(errno));
    if (kind == SLIM_SRC_ONNX || kind == SLIM_SRC_ONNX_TAR)
        rc = open_onnx(path, kind, src, err);
    else if (kind == SLIM_SRC_TAR)
        rc = open_tar(path, src, err);
    else if (kind == SLIM_SRC_INDEX)
        rc = open_index(path, src, err);
    else
        rc = open_file(path, src, err);
    if (rc)
        slim_source_release(src);
    return rc;
}

void slim_source_release(struct slim_source *src)
{
    for (size_t i = 0; src->shards && i < src->n; i++) {
        struct slim_shard *s = &src->shards[i];
        slim_free(s->name);
        slim_model_release(&s->model);
        if (s->fd >= 0)
            close(s->fd);
    }
    slim_free(src->shards);
    if (src->onnx) {
        slim_onnx_release(src->onnx);
        slim_free(src->onnx);
    }
    slim_free(src->index_name);
    json_decref(src->index);
    if (src->map)
        munmap(src->map, src->map_len);
    if (src->fd >= 0)
        close(src->fd);
    memset(src, 0, sizeof *src);
    src->fd = -1;
}

off_t slim_source_offset(const struct slim_shard *s, const struct slim_tensor *t)
{
    return (off_t)((const char *)t->data - s->base);
}

int slim_tar_header(const char *name, uint64_t size, unsigned char hdr[512],
                    struct slim_error *err)
{
    unsigned sum = 0;
    if (strlen(name) > 99)
        return slim_error_set(err, SLIM_EINVAL, "tar: member name '%.60s...' is too long", name);
    memset(hdr, 0, 512);
    memcpy(hdr, name, strlen(name));
    memcpy(hdr + 100, "0000644", 7);
    memcpy(hdr + 108, "0000000", 7);
    memcpy(hdr + 116, "0000000", 7);
    if (size < (uint64_t)1 << 33) {
        snprintf((char *)hdr + 124, 12, "%011llo", (unsigned long long)size);
    } else {
        /* 8 GiB and over: GNU's base-256, which tar and Python read */
        hdr[124] = 0x80;
        for (int i = 0; i < 8; i++)
            hdr[135 - i] = (unsigned char)(size >> (8 * i));
    }
    memcpy(hdr + 136, "00000000000", 11);
    hdr[156] = '0';
    memcpy(hdr + 257, "ustar", 6);
    memcpy(hdr + 263, "00", 2);
    memset(hdr + 148, ' ', 8);
    for (int i = 0; i < 512; i++)
        sum += hdr[i];
    snprintf((char *)hdr + 148, 8, "%06o", sum);
    hdr[155] = ' ';
    return 0;
}
