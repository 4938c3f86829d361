/*
 * decode.c - any slimd artifact back to plain weights (`slimd decode`):
 * every compressed tensor decoded to dense values, every other tensor
 * copied, written as a plain safetensors file or, for an ONNX model, a
 * plain ONNX file whose initializers hold the decoded weights.
 *
 * The decoding follows docs/artifact-format.md, the same document the
 * numpy reference decoder there follows, scheme by scheme: the stored
 * positions and codes of a tensor (all of them; a sparse mask's; an
 * entropy stream's, kernels/entropy.c) and then what a code means
 * (scale and zero point, codebook, sign, or the value itself).  The
 * artifact is input like any upload: every name, shape, size and code
 * is checked against what the metadata says before anything is sized
 * by it, and a malformed artifact is SLIM_EFORMAT naming the tensor.
 *
 * Kinds, told apart by their bytes: a safetensors artifact (plain
 * safetensors out); slimd's entropy container of an ONNX model (a
 * safetensors file with "slimd.container": "onnx" and the graph in
 * the tensor "slimd.onnx": plain ONNX out); an ONNX artifact, .onnx or
 * the daemon's tar (plain ONNX out, formats/onnx_plain.c).  Sharded
 * artifacts are decoded shard by shard (each shard file is an artifact
 * of its own).
 */
#include <cblas.h>
#include <errno.h>
#include <string.h>
#include "passes/decode.h"
#include "passes/formats/onnx.h"
#include "passes/formats/source.h"
#include "passes/kernels/kernels.h"

#define MAX_DECODED ((uint64_t)1 << 32) /* elements of one decoded tensor */

static int bad(struct slim_error *err, const char *name, const char *what)
{
    return slim_error_set(err, SLIM_EFORMAT, "tensor '%.100s': %s", name, what);
}

static const struct slim_tensor *stored(const struct slim_stored *st, json_t *names, size_t k)
{
    const char *n = json_string_value(json_array_get(names, k));
    return n ? st->find(st->ud, n) : NULL;
}

static const struct slim_tensor *named(const struct slim_stored *st, json_t *e, const char *key)
{
    const char *n = json_string_value(json_object_get(e, key));
    return n ? st->find(st->ud, n) : NULL;
}

/* The entry's shape as rows x cols; -1 when it is not a sane shape. */
static int entry_shape(json_t *e, int64_t *dims, int *ndim, uint64_t *rows, uint64_t *cols)
{
    json_t *s = json_object_get(e, "shape"), *d;
    uint64_t n = 1;
    size_t i;
    if (!json_is_array(s) || json_array_size(s) > SLIM_MAX_DIMS)
        return -1;
    json_array_foreach(s, i, d) {
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return -1;
        dims[i] = json_integer_value(d);
        if (dims[i] && n > MAX_DECODED / (uint64_t)dims[i])
            return -1;
        n *= (uint64_t)dims[i];
    }
    *ndim = (int)json_array_size(s);
    *rows = *ndim ? (uint64_t)dims[0] : 1;
    *cols = *rows ? n / *rows : 0;
    return 0;
}

static int code_bits_of(const char *scheme, json_t *e)
{
    if (!strcmp(scheme, "int8"))
        return 8;
    if (!strcmp(scheme, "int4"))
        return 4;
    if (!strcmp(scheme, "ternary"))
        return 2;
    if (!strcmp(scheme, "binary"))
        return 1;
    if (!strcmp(scheme, "cluster")) {
        json_int_t b = json_integer_value(json_object_get(e, "bits"));
        return b == 4 ? 4 : b == 0 || b == 8 ? 8 : -1;
    }
    return 0;
}

/* Element i of a float32 array at p, which may be unaligned (a stored
 * tensor follows an entropy stream of any length). */
static float ld_f32(const void *p, uint64_t i)
{
    float f;
    memcpy(&f, (const unsigned char *)p + i * sizeof f, sizeof f);
    return f;
}

/* Float of element k of a raw little-endian array of dtype dt. */
static float raw_value(enum slim_dtype dt, const unsigned char *p)
{
    float f = 0.0f;
    (void)slim_to_f32(dt, p, 1, &f);
    return f;
}

/* Decodes one non-lowrank entry into out[rows * cols] (zeroed). */
static int decode_leaf(const struct slim_stored *st, json_t *e, const char *name, float *out,
                       uint64_t rows, uint64_t cols, struct slim_error *err)
{
    const char *scheme = json_string_value(json_object_get(e, "scheme"));
    const struct slim_tensor *main = stored(st, json_object_get(e, "tensors"), 0), *sc = NULL,
                             *zp = NULL, *cb = NULL;
    uint64_t n = rows * cols, m = n;
    uint64_t *pos = NULL;
    uint8_t *codes = NULL;
    const unsigned char *vals = NULL; /* value schemes: m elements of vdt */
    enum slim_dtype vdt = SLIM_DT_F32;
    int bits = code_bits_of(scheme ? scheme : "", e), rc = 0;
    int sparse = json_is_true(json_object_get(e, "sparse"));
    int entropy = json_is_true(json_object_get(e, "entropy"));
    size_t eb = 0;
    int64_t group = 0;

    if (!scheme || bits < 0)
        return bad(err, name, "unknown scheme in slimd.tensors");
    if (!main)
        return bad(err, name, "its stored tensor is missing");
    if (!bits) {
        if (!strcmp(scheme, "fp16"))
            vdt = SLIM_DT_F16;
        else if (!strcmp(scheme, "bf16"))
            vdt = SLIM_DT_BF16;
        else if (!strcmp(scheme, "dense")) {
            const char *sd = json_string_value(json_object_get(e, "stored_dtype"));
            if (!sd || slim_dtype_parse(sd, &vdt) || !slim_dtype_is_float(vdt))
                return bad(err, name, "bad stored_dtype");
        } else {
            return bad(err, name, "unknown scheme in slimd.tensors");
        }
        eb = slim_dtype_size(vdt);
    }
    /* the scheme's siblings, checked before any code is read */
    if (!strcmp(scheme, "int8") || !strcmp(scheme, "int4") || !strcmp(scheme, "ternary") ||
        !strcmp(scheme, "binary")) {
        uint64_t want = rows;
        sc = named(st, e, "scale");
        if (!strcmp(scheme, "int4")) {
            group = json_integer_value(json_object_get(e, "group_size"));
            if (group <= 0)
                return bad(err, name, "int4 without a group_size");
            want = rows * ((cols + (uint64_t)group - 1) / (uint64_t)group);
            zp = named(st, e, "zero_point");
            if (!zp || zp->dtype != SLIM_DT_U8 || (uint64_t)slim_tensor_numel(zp) != want)
                return bad(err, name, "its zero point does not fit its shape");
        } else if (!strcmp(scheme, "int8") && json_object_get(e, "zero_point") &&
                   !json_is_null(json_object_get(e, "zero_point"))) {
            zp = named(st, e, "zero_point");
            if (!zp || zp->dtype != SLIM_DT_I8)
                return bad(err, name, "its zero point is missing");
        }
        if (!sc || sc->dtype != SLIM_DT_F32 ||
            !((uint64_t)slim_tensor_numel(sc) == want ||
              (!strcmp(scheme, "int8") && slim_tensor_numel(sc) == 1)))
            return bad(err, name, "its scale does not fit its shape");
        if (zp && slim_tensor_numel(zp) != slim_tensor_numel(sc))
            return bad(err, name, "its zero point does not fit its scale");
    } else if (!strcmp(scheme, "cluster")) {
        cb = named(st, e, "codebook");
        if (!cb || cb->dtype != SLIM_DT_F32 || slim_tensor_numel(cb) < 1)
            return bad(err, name, "its codebook is missing");
    }
    /* positions and codes (or values) of the stored elements */
    if (entropy) {
        struct slim_entropy_info info;
        if (main->dtype != SLIM_DT_U8 ||
            (rc = slim_entropy_header(main->data, main->nbytes, &info, err)))
            goto fail_prefix;
        if (info.n != n || info.code_bits != bits || (!bits && (size_t)info.value_bytes != eb)) {
            rc = bad(err, name, "its entropy stream does not fit its shape and scheme");
            goto out;
        }
        m = info.m;
        pos = slim_malloc((size_t)(m ? m : 1) * sizeof *pos);
        codes = bits ? slim_malloc((size_t)(m ? m : 1)) : NULL;
        if (!pos || (bits && !codes)) {
            rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
            goto out;
        }
        if ((rc = slim_entropy_decode(main->data, main->nbytes, &info, pos, codes, err)))
            goto fail_prefix;
        vals = bits ? NULL : (const unsigned char *)main->data + info.values_at;
    } else {
        const unsigned char *mb = main->data;
        if (sparse) {
            const struct slim_tensor *mk = named(st, e, "mask");
            const unsigned char *mp;
            if (!mk || mk->dtype != SLIM_DT_U8 || mk->nbytes != (n + 7) / 8) {
                rc = bad(err, name, "its mask is missing or of the wrong size");
                goto out;
            }
            mp = mk->data;
            m = 0;
            for (uint64_t i = 0; i < n; i++)
                m += mp[i / 8] >> (i % 8) & 1;
            if (!(pos = slim_malloc((size_t)(m ? m : 1) * sizeof *pos))) {
                rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
                goto out;
            }
            for (uint64_t i = 0, k = 0; i < n; i++)
                if (mp[i / 8] >> (i % 8) & 1)
                    pos[k++] = i;
            if (main->nbytes != (bits ? (bits < 8 ? (m * (uint64_t)bits + 7) / 8 : m) : m * eb)) {
                rc = bad(err, name, "its stored codes do not match its mask");
                goto out;
            }
        } else if (main->nbytes != (bits ? (bits < 8 ? rows * ((cols * (uint64_t)bits + 7) / 8)
                                                     : n)
                                         : n * eb)) {
            rc = bad(err, name, "its stored codes do not match its shape");
            goto out;
        }
        if (bits) {
            if (!(codes = slim_malloc((size_t)(m ? m : 1)))) {
                rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
                goto out;
            }
            for (uint64_t k = 0; k < m; k++) {
                uint64_t bit;
                if (sparse || bits == 8)
                    bit = k * (uint64_t)bits; /* no row padding */
                else
                    bit = (k / cols) * ((cols * (uint64_t)bits + 7) / 8) * 8 +
                          (k % cols) * (uint64_t)bits;
                codes[k] = (uint8_t)(mb[bit / 8] >> (bit % 8) & ((1u << bits) - 1));
            }
        } else {
            vals = mb;
        }
    }
    /* what each code means */
    for (uint64_t k = 0; k < m; k++) {
        uint64_t i = pos ? pos[k] : k, r = i / cols, c = i % cols;
        float v;
        if (!bits) {
            v = raw_value(vdt, vals + k * eb);
        } else if (!strcmp(scheme, "int8")) {
            uint64_t ri = slim_tensor_numel(sc) == 1 ? 0 : r;
            float z = zp ? (float)((const int8_t *)zp->data)[ri] : 0.0f;
            v = ((float)(int8_t)codes[k] - z) * ld_f32(sc->data, ri);
        } else if (!strcmp(scheme, "int4")) {
            uint64_t g = r * ((cols + (uint64_t)group - 1) / (uint64_t)group) + c / (uint64_t)group;
            v = ((float)codes[k] - (float)((const uint8_t *)zp->data)[g]) * ld_f32(sc->data, g);
        } else if (!strcmp(scheme, "ternary")) {
            if (codes[k] > 2) {
                rc = bad(err, name, "a ternary code of 3");
                goto out;
            }
            v = (codes[k] == 0 ? 0.0f : codes[k] == 1 ? 1.0f : -1.0f) * ld_f32(sc->data, r);
        } else if (!strcmp(scheme, "binary")) {
            v = (codes[k] ? 1.0f : -1.0f) * ld_f32(sc->data, r);
        } else {
            if ((int64_t)codes[k] >= slim_tensor_numel(cb)) {
                rc = bad(err, name, "a cluster index past its codebook");
                goto out;
            }
            v = ld_f32(cb->data, codes[k]);
        }
        out[i] = v;
    }
    goto out;
fail_prefix:
    slim_error_prefix(err, "tensor '%.100s'", name);
out:
    slim_free(pos);
    slim_free(codes);
    return rc;
}

int slim_decode_entry(const struct slim_stored *st, json_t *e, const char *name, float **out,
                      struct slim_error *err)
{
    int64_t dims[SLIM_MAX_DIMS];
    uint64_t rows, cols;
    int ndim, rc;
    const char *scheme;
    float *w;

    *out = NULL;
    if (!json_is_object(e) || !(scheme = json_string_value(json_object_get(e, "scheme"))) ||
        entry_shape(e, dims, &ndim, &rows, &cols) || !json_is_array(json_object_get(e, "tensors")))
        return bad(err, name, "malformed slimd.tensors entry");
    if (!(w = slim_aligned_alloc((size_t)(rows * cols) * sizeof *w + 1)))
        return slim_error_set(err, SLIM_ENOMEM, "tensor '%.100s': out of memory", name);
    memset(w, 0, (size_t)(rows * cols) * sizeof *w);
    if (!strcmp(scheme, "lowrank")) {
        json_t *f = json_object_get(e, "factors"), *fe[2];
        float *fv[2] = {NULL, NULL};
        uint64_t fr[2], fc[2];
        const char *fn[2];
        int64_t fd[SLIM_MAX_DIMS];
        int fnd, k = 0;
        void *it;
        rc = 0;
        if (!json_is_object(f) || json_object_size(f) != 2) {
            rc = bad(err, name, "a low-rank entry without its two factors");
            goto lr_out;
        }
        for (it = json_object_iter(f); it; it = json_object_iter_next(f, it), k++) {
            fn[k] = json_object_iter_key(it);
            fe[k] = json_object_iter_value(it);
            if (!json_is_object(fe[k]) ||
                !strcmp(json_string_value(json_object_get(fe[k], "scheme")) ?
                        json_string_value(json_object_get(fe[k], "scheme")) : "lowrank",
                        "lowrank") ||
                entry_shape(fe[k], fd, &fnd, &fr[k], &fc[k]) || fnd != 2) {
                rc = bad(err, name, "a malformed low-rank factor");
                goto lr_out;
            }
        }
        if (fr[0] != rows || fc[1] != cols || fc[0] != fr[1] || rows > INT32_MAX ||
            cols > INT32_MAX || fc[0] > INT32_MAX) {
            rc = bad(err, name, "low-rank factors whose shapes do not multiply to it");
            goto lr_out;
        }
        for (k = 0; k < 2; k++) {
            if ((rc = slim_decode_entry(st, fe[k], fn[k], &fv[k], err)))
                goto lr_out;
        }
        if (rows && cols && fc[0])
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)cols,
                        (int)fc[0], 1.0f, fv[0], (int)fc[0], fv[1], (int)cols, 0.0f, w,
                        (int)cols);
    lr_out:
        slim_aligned_free(fv[0]);
        slim_aligned_free(fv[1]);
    } else {
        rc = decode_leaf(st, e, name, w, rows, cols, err);
    }
    if (rc) {
        slim_aligned_free(w);
        return rc;
    }
    *out = w;
    return 0;
}

/* ---- whole artifacts -------------------------------------------------------- */

static const struct slim_tensor *model_find(void *ud, const char *name)
{
    return slim_model_find(ud, name);
}

/* The decoded tensors of a safetensors artifact m, in its order: each
 * entry as F32 (or, with keep_dtype, converted to its original dtype)
 * where its first stored tensor was, every other tensor as stored.
 * out[] are tensors owning their data (own); *n_out set. */
static int decode_model(struct slim_model *m, int keep_dtype, const char *skip,
                        struct slim_tensor **out, size_t *n_out, struct slim_error *err)
{
    const char *text = json_string_value(json_object_get(m->metadata, "slimd.tensors"));
    json_t *entries = NULL, *members = json_object(), *seen = json_object(), *e;
    struct slim_stored st = {model_find, m};
    struct slim_tensor *o = slim_calloc(m->n_tensors + 1, sizeof *o);
    json_error_t jerr;
    const char *name;
    size_t n = 0;
    int rc = 0;

    *out = NULL;
    *n_out = 0;
    if (!o || !members || !seen) {
        rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
        goto out;
    }
    if (text && !(entries = json_loads(text, JSON_REJECT_DUPLICATES, &jerr))) {
        rc = slim_error_set(err, SLIM_EFORMAT, "slimd.tensors: not JSON (%.80s)", jerr.text);
        goto out;
    }
    if (entries && !json_is_object(entries)) {
        rc = slim_error_set(err, SLIM_EFORMAT, "slimd.tensors: not a JSON object");
        goto out;
    }
    /* which stored tensor stands for which entry */
    json_object_foreach(entries, name, e) {
        json_t *names = json_object_get(e, "tensors"), *v;
        size_t i;
        if (!json_is_array(names) || !json_array_size(names)) {
            rc = bad(err, name, "a slimd.tensors entry without tensors");
            goto out;
        }
        json_array_foreach(names, i, v) {
            if (!json_is_string(v) || !slim_model_find(m, json_string_value(v))) {
                rc = slim_error_set(err, SLIM_EFORMAT, "tensor '%.100s': its stored tensor "
                                    "'%.100s' is not in the file", name,
                                    json_is_string(v) ? json_string_value(v) : "?");
                goto out;
            }
            json_object_set_new(members, json_string_value(v),
                                i ? json_null() : json_string(name));
        }
    }
    for (size_t i = 0; i < m->n_tensors; i++) {
        const struct slim_tensor *t = &m->tensors[i];
        json_t *mem = json_object_get(members, t->name);
        struct slim_tensor *d = &o[n];
        if ((skip && !strcmp(t->name, skip)) || json_is_null(mem))
            continue;
        if (mem) {
            const char *orig = json_string_value(mem);
            json_t *ent = json_object_get(entries, orig);
            enum slim_dtype dt = SLIM_DT_F32;
            float *v;
            int64_t dims[SLIM_MAX_DIMS];
            uint64_t rows, cols;
            int nd;
            if ((rc = slim_decode_entry(&st, ent, orig, &v, err)))
                goto out;
            entry_shape(ent, dims, &nd, &rows, &cols);
            if (keep_dtype) {
                const char *ds = json_string_value(json_object_get(ent, "dtype"));
                if (!ds || slim_dtype_parse(ds, &dt) || !slim_dtype_is_float(dt))
                    dt = SLIM_DT_F32;
            }
            size_t cnt = (size_t)(rows * cols), es = slim_dtype_size(dt);
            if (dt != SLIM_DT_F32) {
                unsigned char *b = slim_aligned_alloc(cnt * es + 1);
                if (!b) {
                    slim_aligned_free(v);
                    rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
                    goto out;
                }
                for (size_t k = 0; k < cnt; k++) {
                    if (dt == SLIM_DT_F64) {
                        double x = v[k];
                        memcpy(b + 8 * k, &x, 8);
                    } else {
                        uint16_t h = dt == SLIM_DT_F16 ? slim_f32_to_f16(v[k])
                                                       : slim_f32_to_bf16(v[k]);
                        memcpy(b + 2 * k, &h, 2);
                    }
                }
                slim_aligned_free(v);
                v = (float *)b;
            }
            d->name = slim_strdup(orig);
            d->dtype = dt;
            d->ndim = nd;
            memcpy(d->shape, dims, sizeof dims);
            d->own = v;
            d->data = v;
            d->nbytes = cnt * es;
        } else {
            void *b = slim_aligned_alloc(t->nbytes + 1);
            *d = *t;
            d->name = slim_strdup(t->name);
            d->own = b;
            d->data = b;
            if (b && t->nbytes)
                memcpy(b, t->data, t->nbytes);
            if (!b) {
                slim_free(d->name);
                d->name = NULL;
            }
        }
        if (d->name && json_object_get(seen, d->name)) {
            rc = slim_error_set(err, SLIM_EFORMAT, "tensor '%.100s' is both stored and an "
                                "entry of slimd.tensors", d->name);
            slim_free(d->name);
            slim_aligned_free(d->own);
            memset(d, 0, sizeof *d);
            goto out;
        }
        if (d->name)
            json_object_set_new(seen, d->name, json_true());
        if (!d->name || !d->own) {
            slim_free(d->name);
            slim_aligned_free(d->own);
            memset(d, 0, sizeof *d);
            rc = slim_error_set(err, SLIM_ENOMEM, "out of memory");
            goto out;
        }
        n++;
    }
out:
    if (rc) {
        slim_decoded_free(o, n);
        o = NULL;
        n = 0;
    }
    *out = o;
    *n_out = n;
    json_decref(entries);
    json_decref(members);
    json_decref(seen);
    return rc;
}

void slim_decoded_free(struct slim_tensor *t, size_t n)
{
    for (size_t i = 0; t && i < n; i++) {
        slim_free(t[i].name);
        slim_aligned_free(t[i].own);
    }
    slim_free(t);
}

int slim_artifact_decode(const char *in_path, const char *out_path, int *out_kind,
                         struct slim_error *err)
{
    struct slim_model m;
    struct slim_tensor *d = NULL;
    size_t n = 0;
    const char *container;
    int kind = slim_source_kind(in_path), rc;

    *out_kind = 0;
    if (kind < 0)
        return slim_error_set(err, SLIM_EIO, "cannot open '%.200s': %s", in_path,
                              strerror(errno));
    if (kind == SLIM_SRC_ONNX || kind == SLIM_SRC_ONNX_TAR) {
        *out_kind = 1;
        return slim_onnx_plain_from_artifact(in_path, out_path, err);
    }
    if (kind != SLIM_SRC_FILE)
        return slim_error_set(err, SLIM_EFORMAT, "'%.200s' is a sharded artifact: decode its "
                              "shard files one by one (each is an artifact of its own)",
                              in_path);
    memset(&m, 0, sizeof m);
    if ((rc = slim_st_open(in_path, &m, err))) {
        if (rc == SLIM_EFORMAT)
            slim_error_prefix(err, "not a slimd artifact (neither safetensors nor ONNX)");
        return rc;
    }
    if (!json_object_get(m.metadata, "slimd.version")) {
        rc = slim_error_set(err, SLIM_EFORMAT, "not a slimd artifact: a safetensors file "
                            "without slimd.version in its metadata");
        goto out;
    }
    container = json_string_value(json_object_get(m.metadata, "slimd.container"));
    if (container && strcmp(container, "onnx")) {
        rc = slim_error_set(err, SLIM_EFORMAT, "unknown slimd.container '%.40s'", container);
        goto out;
    }
    if (container) {
        const struct slim_tensor *g = slim_model_find(&m, SLIM_CONTAINER_GRAPH);
        *out_kind = 1;
        if (!g || g->dtype != SLIM_DT_U8) {
            rc = slim_error_set(err, SLIM_EFORMAT, "an ONNX container without its graph "
                                "(tensor '%s')", SLIM_CONTAINER_GRAPH);
            goto out;
        }
        if ((rc = decode_model(&m, 1, SLIM_CONTAINER_GRAPH, &d, &n, err)))
            goto out;
        rc = slim_onnx_plain_write(g->data, g->nbytes, d, n, out_path, err);
    } else {
        json_t *md;
        if ((rc = decode_model(&m, 0, NULL, &d, &n, err)))
            goto out;
        if ((md = json_object()))
            json_object_set_new(md, "slimd.decoded_from", json_string(SLIMD_VERSION));
        rc = md ? slim_st_write(out_path, d, n, md, err)
                : slim_error_set(err, SLIM_ENOMEM, "out of memory");
        json_decref(md);
    }
out:
    slim_decoded_free(d, n);
    slim_model_release(&m);
    return rc;
}
