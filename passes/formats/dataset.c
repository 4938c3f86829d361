/*
 * dataset.c - evaluation data (dataset.h): the canonical form read and
 * checked, and MNIST-style IDX files converted into it.
 *
 * The canonical form is a safetensors file with two tensors: `input`
 * (samples first) and an optional integer `labels` [n].  One form for
 * every upload means the evaluator reads one thing, and a dataset can be
 * downloaded and opened with the safetensors library.  The checks are the
 * reader's (slim_st_open: every offset and span) plus the dataset's own:
 * no other tensor, an input dtype the evaluator converts, a labels tensor
 * of one integer >= 0 per sample.  slim_dataset_describe runs the same
 * checks without converting the input, so an upload is refused for
 * exactly what would make the evaluation fail later.
 *
 * IDX (LeCun's MNIST format): 00 00, an element type byte, the number of
 * dimensions, that many big-endian uint32 sizes, then the elements,
 * big-endian.  The files are read through zlib's gz* API, which takes a
 * gzip file (magic 1f 8b) or passes a plain one through, so both forms
 * share one reader.  Every size is bounded before it is trusted: the
 * product of the dimensions against overflow, the data against the file
 * (a file that ends early or runs on is refused), and the images' count
 * against the labels'.
 *
 * The conversion streams: the output header is known from the IDX
 * headers, so it is written first, then the images 4 MiB of elements at
 * a time through the artifact writer (temp file, fsync, rename, as
 * slim_st_write does), then the labels, which are read and checked first
 * (they are small) so that a bad label fails before the long part.
 * Memory is a few chunks whatever the file's size; building the whole
 * float array for slim_st_write was rejected (60,000 MNIST images are
 * 188 MB of float32, and larger sets are common).
 *
 * Values: ubyte images become float32 / 255 (torchvision's ToTensor
 * convention, the same division, so pixels match it bit for bit); other
 * element types are converted as they are.  __metadata__ records it
 * ("slimd.source": "idx", "slimd.scale": "1/255" or "1").  Like the rest
 * of libslim this assumes a little-endian host.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>
#include "passes/formats/dataset.h"
#include "passes/formats/writer.h"

/* ---- the canonical form -------------------------------------------- */

/* What check() found: borrowed from the model. */
struct view {
    const struct slim_tensor *input, *labels;
    int64_t n, sample_size, classes;
};

static int64_t label_at(const struct slim_tensor *t, int64_t i)
{
    const unsigned char *p = (const unsigned char *)t->data + (size_t)i * slim_dtype_size(t->dtype);
    int64_t v8;
    int32_t v4;
    int16_t v2;
    switch (t->dtype) {
    case SLIM_DT_I64: memcpy(&v8, p, 8); return v8;
    case SLIM_DT_I32: memcpy(&v4, p, 4); return v4;
    case SLIM_DT_I16: memcpy(&v2, p, 2); return v2;
    case SLIM_DT_I8: return (int8_t)p[0];
    default: return p[0];
    }
}

/* "[60000, 28, 28]" into buf. */
static const char *shape_text(const struct slim_tensor *t, char *buf, size_t len)
{
    size_t o = 0;
    o += (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < t->ndim && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    if (o < len)
        snprintf(buf + o, len - o, "]");
    return buf;
}

static int check(const struct slim_model *m, struct view *v, struct slim_error *err)
{
    const struct slim_tensor *t;
    char shape[96];
    int64_t max = -1;

    memset(v, 0, sizeof *v);
    for (size_t i = 0; i < m->n_tensors; i++) {
        t = &m->tensors[i];
        if (!strcmp(t->name, "input"))
            v->input = t;
        else if (!strcmp(t->name, "labels"))
            v->labels = t;
        else
            return slim_error_set(err, SLIM_EFORMAT, "unexpected tensor '%.60s': a dataset holds "
                                  "'input' and, optionally, 'labels'", t->name);
    }
    if (!(t = v->input))
        return slim_error_set(err, SLIM_EFORMAT, "no tensor 'input' (the samples, first "
                              "dimension = samples)");
    if (t->dtype != SLIM_DT_F32 && t->dtype != SLIM_DT_F16 && t->dtype != SLIM_DT_BF16 &&
        t->dtype != SLIM_DT_F64 && t->dtype != SLIM_DT_U8)
        return slim_error_set(err, SLIM_EFORMAT, "tensor 'input': dtype %s is not one of F32, "
                              "F16, BF16, F64, U8", slim_dtype_name(t->dtype));
    if (t->ndim < 1)
        return slim_error_set(err, SLIM_EFORMAT, "tensor 'input': a scalar; expected at least "
                              "one dimension (the samples)");
    if (t->shape[0] == 0)
        return slim_error_set(err, SLIM_EFORMAT, "tensor 'input': no samples (shape %s)",
                              shape_text(t, shape, sizeof shape));
    v->n = t->shape[0];
    v->sample_size = slim_tensor_numel(t) / v->n;
    if (v->sample_size == 0)
        return slim_error_set(err, SLIM_EFORMAT, "tensor 'input': empty samples (shape %s)",
                              shape_text(t, shape, sizeof shape));
    if (!(t = v->labels))
        return 0;
    if (t->dtype != SLIM_DT_I64 && t->dtype != SLIM_DT_I32 && t->dtype != SLIM_DT_I16 &&
        t->dtype != SLIM_DT_I8 && t->dtype != SLIM_DT_U8)
        return slim_error_set(err, SLIM_EFORMAT, "tensor 'labels': dtype %s is not an integer "
                              "type (I64, I32, I16, I8, U8)", slim_dtype_name(t->dtype));
    if (t->ndim != 1)
        return slim_error_set(err, SLIM_EFORMAT, "tensor 'labels': shape %s, expected [%lld] "
                              "(one label per sample)", shape_text(t, shape, sizeof shape),
                              (long long)v->n);
    if (t->shape[0] != v->n)
        return slim_error_set(err, SLIM_EFORMAT, "tensor 'labels': %lld labels for %lld samples "
                              "in 'input'", (long long)t->shape[0], (long long)v->n);
    for (int64_t i = 0; i < v->n; i++) {
        int64_t y = label_at(t, i);
        if (y < 0)
            return slim_error_set(err, SLIM_EFORMAT, "tensor 'labels': label %lld of sample %lld "
                                  "is negative (labels are class indices)", (long long)y,
                                  (long long)i);
        if (y > max)
            max = y;
    }
    v->classes = max + 1;
    return 0;
}

int slim_dataset_load(const char *path, int64_t max_samples, struct slim_dataset *d,
                      struct slim_error *err)
{
    struct slim_model m;
    struct view v;
    const struct slim_tensor *t;
    int64_t n;
    size_t count;
    int rc;

    memset(d, 0, sizeof *d);
    if (max_samples < 0)
        return slim_error_set(err, SLIM_EINVAL, "max_samples: expected 0 (all) or more, got %lld",
                              (long long)max_samples);
    if ((rc = slim_st_open(path, &m, err)))
        return rc;
    if ((rc = check(&m, &v, err)))
        goto out;
    t = v.input;
    n = max_samples && max_samples < v.n ? max_samples : v.n;
    /* n * sample_size <= the tensor's numel, which the reader bounded */
    count = (size_t)n * (size_t)v.sample_size;
    if (count > SIZE_MAX / sizeof(float) || !(d->x = slim_aligned_alloc(count * sizeof(float)))) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory for %lld samples of %lld values",
                            (long long)n, (long long)v.sample_size);
        goto out;
    }
    if (t->dtype == SLIM_DT_U8) {
        const unsigned char *p = t->data;
        for (size_t i = 0; i < count; i++)
            d->x[i] = (float)p[i];
    } else if ((rc = slim_to_f32(t->dtype, t->data, count, d->x))) {
        slim_error_set(err, SLIM_EINTERNAL, "tensor 'input': cannot convert %s",
                       slim_dtype_name(t->dtype));
        goto out;
    }
    if (v.labels) {
        if (!(d->labels = slim_malloc((size_t)n * sizeof *d->labels))) {
            rc = slim_error_set(err, SLIM_ENOMEM, "out of memory for %lld labels", (long long)n);
            goto out;
        }
        for (int64_t i = 0; i < n; i++)
            d->labels[i] = label_at(v.labels, i);
        d->classes = v.classes;
    }
    d->n = n;
    d->ndim = t->ndim - 1;
    for (int i = 1; i < t->ndim; i++)
        d->shape[i - 1] = t->shape[i];
    d->sample_size = v.sample_size;
out:
    slim_model_release(&m);
    if (rc)
        slim_dataset_release(d);
    return rc;
}

void slim_dataset_release(struct slim_dataset *d)
{
    if (!d)
        return;
    slim_aligned_free(d->x);
    slim_free(d->labels);
    memset(d, 0, sizeof *d);
}

int slim_dataset_describe(const char *path, json_t **info, struct slim_error *err)
{
    struct slim_model m;
    struct view v;
    json_t *shape = NULL;
    int rc;

    *info = NULL;
    if ((rc = slim_st_open(path, &m, err)))
        return rc;
    if ((rc = check(&m, &v, err)))
        goto out;
    if (!(shape = json_array())) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
        goto out;
    }
    for (int i = 1; i < v.input->ndim; i++)
        if (json_array_append_new(shape, json_integer(v.input->shape[i]))) {
            json_decref(shape);
            rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
            goto out;
        }
    *info = json_pack("{s:s, s:I, s:o, s:s, s:b, s:I}", "format", "safetensors",
                      "samples", (json_int_t)v.n, "input_shape", shape,
                      "input_dtype", slim_dtype_name(v.input->dtype),
                      "labels", v.labels != NULL, "classes", (json_int_t)v.classes);
    if (!*info)
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
out:
    slim_model_release(&m);
    return rc;
}

/* ---- IDX --------------------------------------------------------------- */

enum {
    IDX_UBYTE = 0x08, IDX_SBYTE = 0x09, IDX_SHORT = 0x0B, IDX_INT = 0x0C, IDX_FLOAT = 0x0D,
    IDX_DOUBLE = 0x0E,
};

/* Elements per chunk of the conversion: 4 MiB of float32 out. */
#define CHUNK_ELEMS ((size_t)1 << 20)
/* More elements than this is no dataset (2^60: times 8 bytes still fits). */
#define MAX_ELEMS ((uint64_t)1 << 60)

/* One IDX file being read. */
struct idx {
    const char *what;          /* "images" or "labels": every message starts with it */
    gzFile gz;
    int gzip;                  /* the file starts with 1f 8b */
    int type;                  /* IDX_* */
    size_t esize;
    int ndim;
    uint64_t dims[SLIM_MAX_DIMS];
    uint64_t numel;
    uint64_t data_bytes;
    uint64_t got;              /* data bytes read so far */
    char desc[160];            /* "60000 x 28 x 28 ubyte", for messages */
};

static const char *type_name(int type)
{
    switch (type) {
    case IDX_UBYTE: return "ubyte";
    case IDX_SBYTE: return "sbyte";
    case IDX_SHORT: return "short";
    case IDX_INT: return "int";
    case IDX_FLOAT: return "float";
    case IDX_DOUBLE: return "double";
    }
    return NULL;
}

static size_t type_size(int type)
{
    return type == IDX_SHORT ? 2 : type == IDX_INT || type == IDX_FLOAT ? 4
           : type == IDX_DOUBLE ? 8 : 1;
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void idx_close(struct idx *f)
{
    if (f->gz)
        gzclose(f->gz);
    f->gz = NULL;
}

/* Reads up to len bytes (fewer only at the end of the data); a corrupt
 * gzip stream is SLIM_EFORMAT, a failed read SLIM_EIO. */
static int idx_read(struct idx *f, void *buf, size_t len, size_t *got, struct slim_error *err)
{
    unsigned char *p = buf;
    *got = 0;
    while (*got < len) {
        size_t want = len - *got > (1u << 30) ? (1u << 30) : len - *got;
        int n = gzread(f->gz, p + *got, (unsigned)want), zerr = Z_OK;
        const char *msg;
        if (n > 0) {
            *got += (size_t)n;
            continue;
        }
        if (n == 0)
            break;
        msg = gzerror(f->gz, &zerr);
        /* zlib prefixes the file's name, "<fd:3>" after gzdopen: drop it */
        if (msg && !strncmp(msg, "<fd:", 4) && strstr(msg, ": "))
            msg = strstr(msg, ": ") + 2;
        if (zerr == Z_ERRNO)
            return slim_error_set(err, SLIM_EIO, "%s: read failed: %s", f->what, strerror(errno));
        if (zerr == Z_MEM_ERROR)
            return slim_error_set(err, SLIM_ENOMEM, "%s: out of memory inflating", f->what);
        return slim_error_set(err, SLIM_EFORMAT, "%s: corrupt gzip data (%s)", f->what,
                              msg ? msg : "unknown zlib error");
    }
    return 0;
}

/* Reads exactly len header or data bytes; the file ending first is an
 * error that says how far it got. */
static int idx_read_exact(struct idx *f, void *buf, size_t len, const char *part,
                          struct slim_error *err)
{
    size_t got;
    int rc = idx_read(f, buf, len, &got, err), zerr = Z_OK;
    if (rc || got == len)
        return rc;
    gzerror(f->gz, &zerr);
    if (!part)   /* data */
        return slim_error_set(err, SLIM_EFORMAT, "%s: %s after %llu of the %llu data bytes "
                              "its header claims (%s)", f->what,
                              f->gzip && zerr == Z_BUF_ERROR ? "the gzip stream is cut short"
                                                             : "the file ends",
                              (unsigned long long)(f->got + got),
                              (unsigned long long)f->data_bytes, f->desc);
    return slim_error_set(err, SLIM_EFORMAT, "%s: %s in the IDX header (%s)", f->what,
                          f->gzip && zerr == Z_BUF_ERROR ? "the gzip stream is cut short"
                                                         : "the file ends",
                          part);
}

static int idx_open(const char *path, const char *what, struct idx *f, struct slim_error *err)
{
    unsigned char head[4 * SLIM_MAX_DIMS], m2[2];
    size_t o;
    int fd, rc;

    memset(f, 0, sizeof *f);
    f->what = what;
    /* messages name the part, never the server's temp path */
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return slim_error_set(err, SLIM_EIO, "%s: cannot open: %s", what, strerror(errno));
    f->gzip = pread(fd, m2, 2, 0) == 2 && m2[0] == 0x1f && m2[1] == 0x8b;
    /* gzdopen owns fd from here: gzclose closes it */
    if (!(f->gz = gzdopen(fd, "rb"))) {
        close(fd);
        return slim_error_set(err, SLIM_ENOMEM, "%s: out of memory", what);
    }
    gzbuffer(f->gz, 128u << 10);
    if ((rc = idx_read_exact(f, head, 4, "magic number", err)))
        return rc;
    if (head[0] || head[1] || !type_name(head[2]))
        return slim_error_set(err, SLIM_EFORMAT, "%s: not an IDX file: it starts %02x %02x %02x "
                              "%02x%s; IDX starts 00 00, a type 08 to 0e, the number of "
                              "dimensions (MNIST: 00 00 08 03)", what, head[0], head[1], head[2],
                              head[3], f->gzip ? " after gunzip" : "");
    f->type = head[2];
    f->esize = type_size(f->type);
    f->ndim = head[3];
    if (f->ndim == 0)
        return slim_error_set(err, SLIM_EFORMAT, "%s: the IDX header declares 0 dimensions",
                              what);
    if (f->ndim > SLIM_MAX_DIMS)
        return slim_error_set(err, SLIM_EFORMAT, "%s: %d dimensions, more than the %d slimd "
                              "handles", what, f->ndim, SLIM_MAX_DIMS);
    if ((rc = idx_read_exact(f, head, 4 * (size_t)f->ndim, "dimension sizes", err)))
        return rc;
    f->numel = 1;
    o = 0;
    for (int i = 0; i < f->ndim; i++) {
        f->dims[i] = be32(head + 4 * i);
        o += (size_t)snprintf(f->desc + o, sizeof f->desc - o, "%s%llu", i ? " x " : "",
                              (unsigned long long)f->dims[i]);
        if (o >= sizeof f->desc)
            o = sizeof f->desc - 1;
    }
    snprintf(f->desc + o, sizeof f->desc - o, " %s", type_name(f->type));
    for (int i = 0; i < f->ndim; i++) {
        if (f->dims[i] == 0)
            return slim_error_set(err, SLIM_EFORMAT, "%s: dimension %d is 0 (%s): no data",
                                  what, i, f->desc);
        if (__builtin_mul_overflow(f->numel, f->dims[i], &f->numel) || f->numel > MAX_ELEMS)
            return slim_error_set(err, SLIM_EFORMAT, "%s: the dimensions (%s) multiply past "
                                  "2^60 elements", what, f->desc);
    }
    f->data_bytes = f->numel * f->esize;
    return 0;
}

/* After the data: one more byte means the header undercounts; a gzip
 * stream must also end whole (its CRC and length trailer read and
 * checked, which zlib does at this read). */
static int idx_expect_end(struct idx *f, struct slim_error *err)
{
    unsigned char b;
    size_t got;
    int zerr = Z_OK, rc = idx_read(f, &b, 1, &got, err);
    if (!rc && got)
        rc = slim_error_set(err, SLIM_EFORMAT, "%s: the file runs on past the %llu data bytes "
                            "its header claims (%s)", f->what,
                            (unsigned long long)f->data_bytes, f->desc);
    if (!rc && f->gzip && (gzerror(f->gz, &zerr), zerr == Z_BUF_ERROR))
        rc = slim_error_set(err, SLIM_EFORMAT, "%s: the gzip stream is cut short after the "
                            "data (its trailer is missing)", f->what);
    return rc;
}

/* Opens and checks the pair: images with at least one dimension per
 * sample, labels (when labels_path is not NULL) one integer per image. */
static int pair_open(const char *images_path, const char *labels_path, struct idx *img,
                     struct idx *lab, struct slim_error *err)
{
    int rc;
    memset(lab, 0, sizeof *lab);
    if ((rc = idx_open(images_path, "images", img, err)))
        return rc;
    if (img->ndim < 2)
        return slim_error_set(err, SLIM_EFORMAT, "images: 1 dimension (%s); expected the "
                              "samples and at least one more (MNIST: n x 28 x 28)", img->desc);
    /* the output's input tensor is float32 */
    if (img->numel > MAX_ELEMS / 2)
        return slim_error_set(err, SLIM_EFORMAT, "images: too many elements (%s)", img->desc);
    if (!labels_path)
        return 0;
    if ((rc = idx_open(labels_path, "labels", lab, err)))
        return rc;
    if (lab->ndim != 1)
        return slim_error_set(err, SLIM_EFORMAT, "labels: %d dimensions (%s); expected 1, one "
                              "label per sample (MNIST: 00 00 08 01)", lab->ndim, lab->desc);
    if (lab->type == IDX_FLOAT || lab->type == IDX_DOUBLE)
        return slim_error_set(err, SLIM_EFORMAT, "labels: element type %s; labels are class "
                              "indices, integers (ubyte, sbyte, short or int)",
                              type_name(lab->type));
    if (lab->dims[0] != img->dims[0])
        return slim_error_set(err, SLIM_EFORMAT, "images hold %llu samples but labels hold "
                              "%llu: they must match", (unsigned long long)img->dims[0],
                              (unsigned long long)lab->dims[0]);
    return 0;
}

/* The output's tensors (data left NULL) and metadata; meta is new. */
static int out_layout(const struct idx *img, const struct idx *lab, struct slim_tensor t[2],
                      size_t *nt, json_t **meta, struct slim_error *err)
{
    memset(t, 0, 2 * sizeof *t);
    t[0].name = (char *)"input";
    t[0].dtype = SLIM_DT_F32;
    t[0].ndim = img->ndim;
    for (int i = 0; i < img->ndim; i++)
        t[0].shape[i] = (int64_t)img->dims[i];
    t[0].nbytes = (size_t)img->numel * sizeof(float);
    *nt = 1;
    if (lab->gz) {
        t[1].name = (char *)"labels";
        t[1].dtype = SLIM_DT_I64;
        t[1].ndim = 1;
        t[1].shape[0] = (int64_t)lab->dims[0];
        t[1].nbytes = (size_t)lab->numel * sizeof(int64_t);
        *nt = 2;
    }
    *meta = json_pack("{s:s, s:s}", "slimd.source", "idx", "slimd.scale",
                      img->type == IDX_UBYTE ? "1/255" : "1");
    return *meta ? 0 : slim_error_set(err, SLIM_ENOMEM, "out of memory");
}

int slim_dataset_idx_size(const char *images_path, const char *labels_path,
                          uint64_t *idx_bytes, uint64_t *out_bytes, struct slim_error *err)
{
    struct idx img, lab;
    struct slim_tensor t[2];
    json_t *meta = NULL;
    char *hdr = NULL;
    size_t nt, hlen = 0;
    int rc;

    if ((rc = pair_open(images_path, labels_path, &img, &lab, err)) ||
        (rc = out_layout(&img, &lab, t, &nt, &meta, err)) ||
        (rc = slim_st_header(t, nt, meta, &hdr, &hlen, err)))
        goto out;
    *idx_bytes = 4 + 4 * (uint64_t)img.ndim + img.data_bytes;
    *out_bytes = hlen + t[0].nbytes;
    if (lab.gz) {
        *idx_bytes += 4 + 4 * (uint64_t)lab.ndim + lab.data_bytes;
        *out_bytes += t[1].nbytes;
    }
out:
    slim_free(hdr);
    json_decref(meta);
    idx_close(&img);
    idx_close(&lab);
    return rc;
}

/* Reads every label into out (n int64), each >= 0. */
static int read_labels(struct idx *f, int64_t *out, struct slim_error *err)
{
    unsigned char *buf = slim_malloc(CHUNK_ELEMS * 4);
    uint64_t done = 0;
    int rc = 0;

    if (!buf)
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    while (done < f->numel) {
        size_t k = f->numel - done < CHUNK_ELEMS ? (size_t)(f->numel - done) : CHUNK_ELEMS;
        if ((rc = idx_read_exact(f, buf, k * f->esize, NULL, err)))
            break;
        f->got += k * f->esize;
        for (size_t i = 0; i < k; i++) {
            const unsigned char *p = buf + i * f->esize;
            int64_t y = f->type == IDX_UBYTE ? p[0] : f->type == IDX_SBYTE ? (int8_t)p[0]
                        : f->type == IDX_SHORT ? (int16_t)(p[0] << 8 | p[1])
                        : (int32_t)be32(p);
            if (y < 0) {
                rc = slim_error_set(err, SLIM_EFORMAT, "labels: label %lld of sample %llu is "
                                    "negative (labels are class indices)", (long long)y,
                                    (unsigned long long)(done + i));
                goto out;
            }
            out[done + i] = y;
        }
        done += k;
    }
    if (!rc)
        rc = idx_expect_end(f, err);
out:
    slim_free(buf);
    return rc;
}

/* Big-endian elements of type at src -> float32 at dst; ubyte / 255. */
static void to_float(int type, const unsigned char *src, size_t n, float *dst,
                     const float *u8_table)
{
    uint32_t u;
    uint64_t w;
    double d;
    switch (type) {
    case IDX_UBYTE:
        for (size_t i = 0; i < n; i++)
            dst[i] = u8_table[src[i]];
        break;
    case IDX_SBYTE:
        for (size_t i = 0; i < n; i++)
            dst[i] = (float)(int8_t)src[i];
        break;
    case IDX_SHORT:
        for (size_t i = 0; i < n; i++)
            dst[i] = (float)(int16_t)(src[2 * i] << 8 | src[2 * i + 1]);
        break;
    case IDX_INT:
        for (size_t i = 0; i < n; i++)
            dst[i] = (float)(int32_t)be32(src + 4 * i);
        break;
    case IDX_FLOAT:
        for (size_t i = 0; i < n; i++) {
            u = be32(src + 4 * i);
            memcpy(&dst[i], &u, 4);
        }
        break;
    case IDX_DOUBLE:
        for (size_t i = 0; i < n; i++) {
            w = (uint64_t)be32(src + 8 * i) << 32 | be32(src + 8 * i + 4);
            memcpy(&d, &w, 8);
            dst[i] = (float)d;
        }
        break;
    }
}

int slim_dataset_from_idx(const char *images_path, const char *labels_path,
                          const char *out_path, struct slim_error *err)
{
    struct idx img, lab;
    struct slim_tensor t[2];
    struct slim_writer *wr = NULL;
    json_t *meta = NULL;
    unsigned char *raw = NULL;
    int64_t *labels = NULL;
    char *hdr = NULL;
    float table[256], *chunk;
    size_t nt, hlen = 0;
    uint64_t done = 0;
    int rc;

    memset(&lab, 0, sizeof lab);
    if ((rc = pair_open(images_path, labels_path, &img, &lab, err)) ||
        (rc = out_layout(&img, &lab, t, &nt, &meta, err)))
        goto out;
    if (lab.gz) {
        if (!(labels = slim_aligned_alloc(t[1].nbytes))) {
            rc = slim_error_set(err, SLIM_ENOMEM, "out of memory for %llu labels",
                                (unsigned long long)lab.numel);
            goto out;
        }
        if ((rc = read_labels(&lab, labels, err)))
            goto out;
    }
    if (!(raw = slim_malloc(CHUNK_ELEMS * img.esize))) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
        goto out;
    }
    for (int i = 0; i < 256; i++)
        table[i] = (float)i / 255.0f;   /* torch: x.float().div(255) */
    if ((rc = slim_st_header(t, nt, meta, &hdr, &hlen, err)) ||
        (rc = slim_writer_open(out_path, NULL, NULL, &wr, err)))
        goto out;
    rc = slim_writer_submit(wr, &(struct slim_piece){hdr, hlen}, 1, (void *[]){hdr}, 1, err);
    hdr = NULL;   /* stolen */
    while (!rc && done < img.numel) {
        size_t k = img.numel - done < CHUNK_ELEMS ? (size_t)(img.numel - done) : CHUNK_ELEMS;
        if ((rc = idx_read_exact(&img, raw, k * img.esize, NULL, err)))
            break;
        img.got += k * img.esize;
        if (!(chunk = slim_aligned_alloc(k * sizeof(float)))) {
            rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
            break;
        }
        to_float(img.type, raw, k, chunk, table);
        rc = slim_writer_submit(wr, &(struct slim_piece){chunk, k * sizeof(float)}, 1,
                                (void *[]){chunk}, 1, err);
        done += k;
    }
    if (!rc)
        rc = idx_expect_end(&img, err);
    if (!rc && labels) {
        rc = slim_writer_submit(wr, &(struct slim_piece){labels, t[1].nbytes}, 1,
                                (void *[]){labels}, 1, err);
        labels = NULL;   /* stolen */
    }
    if (!rc) {
        rc = slim_writer_finish(wr, err);
        wr = NULL;       /* freed either way */
    }
out:
    slim_writer_abort(wr);
    slim_aligned_free(labels);
    slim_free(raw);
    slim_free(hdr);
    json_decref(meta);
    idx_close(&img);
    idx_close(&lab);
    return rc;
}
