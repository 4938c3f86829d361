/*
 * test_dataset.c - formats/dataset.c: IDX files (plain and gzip, every
 * element type) converted into the canonical safetensors form and read
 * back; malformed IDX (bad magic, short files, files that run on, counts
 * that differ, dimensions that overflow or are zero, bad labels), each
 * refused with a message that names the part and leaving no file; the
 * canonical loader's checks and max_samples; allocation failures.
 */
#include <dirent.h>
#include <sys/stat.h>
#include <zlib.h>
#include "tests/unit/util.h"
#include "passes/formats/dataset.h"

/* An IDX file in memory: 00 00 type ndim, big-endian dims, then data. */
static size_t idx_build(unsigned char *buf, int type, int ndim, const uint32_t *dims,
                        const void *data, size_t dlen)
{
    size_t o = 4;
    buf[0] = 0;
    buf[1] = 0;
    buf[2] = (unsigned char)type;
    buf[3] = (unsigned char)ndim;
    for (int i = 0; i < ndim; i++, o += 4) {
        buf[o] = (unsigned char)(dims[i] >> 24);
        buf[o + 1] = (unsigned char)(dims[i] >> 16);
        buf[o + 2] = (unsigned char)(dims[i] >> 8);
        buf[o + 3] = (unsigned char)dims[i];
    }
    if (dlen)
        memcpy(buf + o, data, dlen);
    return o + dlen;
}

/* Writes buf as a gzip file named name in the temp dir. */
static const char *write_gz(const char *name, const void *buf, size_t len)
{
    static char path[4][512];
    static int slot;
    char *p = path[slot++ & 3];
    gzFile gz;
    snprintf(p, 512, "%s/%s", test_tmp_dir(), name);
    gz = gzopen(p, "wb");
    assert_non_null(gz);
    assert_int_equal(gzwrite(gz, buf, (unsigned)len), (int)len);
    assert_int_equal(gzclose(gz), Z_OK);
    return p;
}

static const char *out_path(const char *name)
{
    static char path[4][512];
    static int slot;
    char *p = path[slot++ & 3];
    snprintf(p, 512, "%s/%s", test_tmp_dir(), name);
    return p;
}

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) ? -1 : (long)st.st_size;
}

static int files_in_tmp(void)
{
    DIR *d = opendir(test_tmp_dir());
    struct dirent *e;
    int n = 0;
    assert_non_null(d);
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

/* Three 2x2 ubyte images and their labels, the shared fixture. */
static const unsigned char PIX[12] = {0, 1, 2, 3, 127, 128, 200, 254, 255, 9, 17, 77};
static const unsigned char LAB[3] = {4, 0, 9};
static const uint32_t IMG_DIMS[3] = {3, 2, 2};
static const uint32_t LAB_DIMS[1] = {3};

static void write_pair(const char *img_name, const char *lab_name, int gz, const char **img,
                       const char **lab)
{
    unsigned char a[64], b[64];
    size_t na = idx_build(a, 0x08, 3, IMG_DIMS, PIX, sizeof PIX);
    size_t nb = idx_build(b, 0x08, 1, LAB_DIMS, LAB, sizeof LAB);
    /* kept out of the helpers' rotating buffers, which later calls reuse */
    static char paths[2][512];
    snprintf(paths[0], 512, "%s", gz ? write_gz(img_name, a, na) : test_write_file(img_name, a, na));
    snprintf(paths[1], 512, "%s", gz ? write_gz(lab_name, b, nb) : test_write_file(lab_name, b, nb));
    *img = paths[0];
    *lab = paths[1];
}

/* Converts, expecting an error whose message holds want; checks that no
 * output (nor its temp file) was left. */
static void expect_idx_error(const char *img, const char *lab, const char *want)
{
    struct slim_error err;
    const char *out = out_path("bad.safetensors");
    int before = files_in_tmp();
    uint64_t a, b;
    unlink(out);
    assert_int_equal(slim_dataset_from_idx(img, lab, out, &err), SLIM_EFORMAT);
    if (!strstr(err.msg, want))
        fail_msg("message '%s' does not contain '%s'", err.msg, want);
    assert_int_equal(file_size(out), -1);
    assert_int_equal(files_in_tmp(), before);
    /* the header check alone finds the header errors too */
    int rc = slim_dataset_idx_size(img, lab, &a, &b, &err);
    assert_true(rc == 0 || rc == SLIM_EFORMAT);
}

static void test_idx_plain_and_gzip(void **state)
{
    (void)state;
    const char *img, *lab, *out = out_path("plain.safetensors"), *outz = out_path("gz.safetensors");
    struct slim_dataset d;
    struct slim_error err;
    struct slim_model m;
    json_t *info;
    uint64_t idx_bytes = 0, out_bytes = 0;

    write_pair("img.idx", "lab.idx", 0, &img, &lab);
    assert_int_equal(slim_dataset_idx_size(img, lab, &idx_bytes, &out_bytes, &err), 0);
    assert_int_equal(idx_bytes, file_size(img) + file_size(lab));
    assert_int_equal(slim_dataset_from_idx(img, lab, out, &err), 0);
    assert_int_equal(out_bytes, file_size(out));

    assert_int_equal(slim_dataset_load(out, 0, &d, &err), 0);
    assert_int_equal(d.n, 3);
    assert_int_equal(d.ndim, 2);
    assert_int_equal(d.shape[0], 2);
    assert_int_equal(d.shape[1], 2);
    assert_int_equal(d.sample_size, 4);
    assert_int_equal(d.classes, 10);
    for (int i = 0; i < 12; i++) {
        float want = (float)PIX[i] / 255.0f;   /* torch's ToTensor: div(255) in float32 */
        assert_memory_equal(&d.x[i], &want, 4);
    }
    for (int i = 0; i < 3; i++)
        assert_int_equal(d.labels[i], LAB[i]);
    slim_dataset_release(&d);

    assert_int_equal(slim_st_open(out, &m, &err), 0);
    assert_string_equal(json_string_value(json_object_get(m.metadata, "slimd.source")), "idx");
    assert_string_equal(json_string_value(json_object_get(m.metadata, "slimd.scale")), "1/255");
    assert_int_equal(slim_model_find(&m, "labels")->dtype, SLIM_DT_I64);
    assert_int_equal(slim_model_find(&m, "input")->dtype, SLIM_DT_F32);
    slim_model_release(&m);

    assert_int_equal(slim_dataset_describe(out, &info, &err), 0);
    json_t *want = json_pack("{s:s, s:i, s:[i, i], s:s, s:b, s:i}", "format", "safetensors",
                             "samples", 3, "input_shape", 2, 2, "input_dtype", "F32",
                             "labels", 1, "classes", 10);
    assert_true(json_equal(info, want));
    json_decref(want);
    json_decref(info);

    /* the same files gzipped make the same bytes */
    write_pair("img.idx.gz", "lab.idx.gz", 1, &img, &lab);
    assert_int_equal(slim_dataset_idx_size(img, lab, &idx_bytes, &out_bytes, &err), 0);
    assert_int_equal(out_bytes, file_size(out));
    assert_int_equal(slim_dataset_from_idx(img, lab, outz, &err), 0);
    {
        long n = file_size(out);
        char *a = malloc((size_t)n), *b = malloc((size_t)n);
        FILE *fa = fopen(out, "rb"), *fb = fopen(outz, "rb");
        assert_int_equal(file_size(outz), n);
        assert_int_equal(fread(a, 1, (size_t)n, fa), n);
        assert_int_equal(fread(b, 1, (size_t)n, fb), n);
        assert_memory_equal(a, b, (size_t)n);
        fclose(fa);
        fclose(fb);
        free(a);
        free(b);
    }
    unlink(out);
    unlink(outz);
}

static void test_idx_without_labels_and_types(void **state)
{
    (void)state;
    unsigned char buf[256], data[64];
    const char *out = out_path("types.safetensors");
    struct slim_dataset d;
    struct slim_error err;
    struct slim_model m;
    uint32_t dims[2] = {2, 3};

    /* float images (big-endian), no labels: values as they are */
    float f[6] = {1.5f, -2.25f, 0.0f, 1e-3f, 3e8f, -0.0f};
    for (int i = 0; i < 6; i++) {
        uint32_t u;
        memcpy(&u, &f[i], 4);
        for (int k = 0; k < 4; k++)
            data[4 * i + k] = (unsigned char)(u >> (24 - 8 * k));
    }
    const char *img = test_write_file("f.idx", buf, idx_build(buf, 0x0D, 2, dims, data, 24));
    assert_int_equal(slim_dataset_from_idx(img, NULL, out, &err), 0);
    assert_int_equal(slim_dataset_load(out, 0, &d, &err), 0);
    assert_int_equal(d.n, 2);
    assert_int_equal(d.ndim, 1);
    assert_int_equal(d.shape[0], 3);
    assert_null(d.labels);
    assert_int_equal(d.classes, 0);
    assert_memory_equal(d.x, f, sizeof f);
    slim_dataset_release(&d);
    assert_int_equal(slim_st_open(out, &m, &err), 0);
    assert_string_equal(json_string_value(json_object_get(m.metadata, "slimd.scale")), "1");
    assert_null(slim_model_find(&m, "labels"));
    slim_model_release(&m);

    /* double, sbyte, short and int images; short and int labels */
    double dv[6] = {0.5, -1.0, 2.0, 1e10, -3.75, 0.125};
    for (int i = 0; i < 6; i++) {
        uint64_t u;
        memcpy(&u, &dv[i], 8);
        for (int k = 0; k < 8; k++)
            data[8 * i + k] = (unsigned char)(u >> (56 - 8 * k));
    }
    img = test_write_file("d.idx", buf, idx_build(buf, 0x0E, 2, dims, data, 48));
    unsigned char lab[64], ld[8] = {0, 3, 1, 0};      /* short labels 3, 256 */
    uint32_t ldims[1] = {2};
    const char *labp = test_write_file("s.idx", lab, idx_build(lab, 0x0B, 1, ldims, ld, 4));
    assert_int_equal(slim_dataset_from_idx(img, labp, out, &err), 0);
    assert_int_equal(slim_dataset_load(out, 0, &d, &err), 0);
    for (int i = 0; i < 6; i++)
        assert_true(d.x[i] == (float)dv[i]);
    assert_int_equal(d.labels[0], 3);
    assert_int_equal(d.labels[1], 256);
    assert_int_equal(d.classes, 257);
    slim_dataset_release(&d);

    unsigned char sb[6] = {0x80, 0xff, 0, 1, 0x7f, 5};
    img = test_write_file("sb.idx", buf, idx_build(buf, 0x09, 2, dims, sb, 6));
    unsigned char il[8] = {0, 0, 0, 7, 0, 1, 0, 0};   /* int labels 7, 65536 */
    labp = test_write_file("i.idx", lab, idx_build(lab, 0x0C, 1, ldims, il, 8));
    assert_int_equal(slim_dataset_from_idx(img, labp, out, &err), 0);
    assert_int_equal(slim_dataset_load(out, 0, &d, &err), 0);
    float sbw[6] = {-128, -1, 0, 1, 127, 5};
    assert_memory_equal(d.x, sbw, sizeof sbw);
    assert_int_equal(d.labels[1], 65536);
    slim_dataset_release(&d);

    unsigned char sh[12] = {0xff, 0xfe, 0x01, 0x00, 0, 0, 0x7f, 0xff, 0x80, 0, 0, 3};
    img = test_write_file("sh.idx", buf, idx_build(buf, 0x0B, 2, dims, sh, 12));
    assert_int_equal(slim_dataset_from_idx(img, NULL, out, &err), 0);
    assert_int_equal(slim_dataset_load(out, 0, &d, &err), 0);
    float shw[6] = {-2, 256, 0, 32767, -32768, 3};
    assert_memory_equal(d.x, shw, sizeof shw);
    slim_dataset_release(&d);
    unlink(out);
}

static void test_idx_bad_magic(void **state)
{
    (void)state;
    unsigned char buf[64];
    const char *img, *lab;
    write_pair("img.idx", "lab.idx", 0, &img, &lab);
    const char *png = test_write_file("x.png", "\x89PNG\r\n\x1a\n0123456789", 18);
    expect_idx_error(png, lab, "images: not an IDX file: it starts 89 50 4e 47; IDX starts 00 "
                     "00, a type 08 to 0e, the number of dimensions (MNIST: 00 00 08 03)");
    expect_idx_error(img, png, "labels: not an IDX file");
    expect_idx_error(write_gz("x.png.gz", "\x89PNG\r\n\x1a\n0123456789", 18), lab,
                     "after gunzip");
    /* an unknown element type */
    uint32_t dims[2] = {1, 1};
    size_t n = idx_build(buf, 0x0A, 2, dims, "x", 1);
    expect_idx_error(test_write_file("t.idx", buf, n), NULL, "it starts 00 00 0a 02");
    /* shorter than a header */
    expect_idx_error(test_write_file("tiny.idx", "\0\0", 2), NULL,
                     "images: the file ends in the IDX header (magic number)");
    expect_idx_error(test_write_file("dims.idx", "\0\0\x08\x03\0\0\0\x03", 8), NULL,
                     "images: the file ends in the IDX header (dimension sizes)");
    /* gzip data that is not deflate */
    expect_idx_error(test_write_file("junk.gz", "\x1f\x8b\x08\0\0\0\0\0\0\x03garbage!!", 19),
                     NULL, "images: corrupt gzip data");
    /* an empty file */
    expect_idx_error(test_write_file("empty.idx", "", 0), NULL, "images: the file ends");
}

static void test_idx_short_and_long(void **state)
{
    (void)state;
    unsigned char buf[64], gzbuf[256];
    const char *img, *lab;
    write_pair("img.idx", "lab.idx", 0, &img, &lab);
    /* 10 of the 12 data bytes */
    size_t n = idx_build(buf, 0x08, 3, IMG_DIMS, PIX, 10);
    expect_idx_error(test_write_file("short.idx", buf, n), lab,
                     "images: the file ends after 10 of the 12 data bytes its header claims "
                     "(3 x 2 x 2 ubyte)");
    /* labels cut short */
    n = idx_build(buf, 0x08, 1, LAB_DIMS, LAB, 2);
    expect_idx_error(img, test_write_file("lshort.idx", buf, n), "labels: the file ends after 2");
    /* a byte too many */
    unsigned char more[13];
    memcpy(more, PIX, 12);
    more[12] = 1;
    n = idx_build(buf, 0x08, 3, IMG_DIMS, more, 13);
    expect_idx_error(test_write_file("long.idx", buf, n), lab, "images: the file runs on past "
                     "the 12 data bytes");
    /* a gzip stream cut in the middle */
    n = idx_build(buf, 0x08, 3, IMG_DIMS, PIX, 12);
    const char *gz = write_gz("whole.gz", buf, n);
    FILE *f = fopen(gz, "rb");
    size_t gn = fread(gzbuf, 1, sizeof gzbuf, f);
    fclose(f);
    expect_idx_error(test_write_file("cut.gz", gzbuf, gn - 12), lab,
                     "images: the gzip stream is cut short after");
    /* every data byte there, but not the trailer (CRC and length) */
    expect_idx_error(test_write_file("notrailer.gz", gzbuf, gn - 8), lab,
                     "images: the gzip stream is cut short after the data");
    /* a trailer whose CRC does not match */
    gzbuf[gn - 8] ^= 0x55;
    expect_idx_error(test_write_file("crc.gz", gzbuf, gn), lab,
                     "images: corrupt gzip data (incorrect data check)");
}

static void test_idx_count_mismatch_and_dims(void **state)
{
    (void)state;
    unsigned char buf[128];
    const char *img, *lab;
    write_pair("img.idx", "lab.idx", 0, &img, &lab);
    uint32_t four[1] = {4};
    unsigned char l4[4] = {1, 2, 3, 4};
    size_t n = idx_build(buf, 0x08, 1, four, l4, 4);
    expect_idx_error(img, test_write_file("l4.idx", buf, n),
                     "images hold 3 samples but labels hold 4");
    /* dims whose product overflows 64 bits, and one beyond 2^60 elements */
    uint32_t huge[3] = {0xffffffffu, 0xffffffffu, 0xffffffffu};
    n = idx_build(buf, 0x08, 3, huge, NULL, 0);
    expect_idx_error(test_write_file("huge.idx", buf, n), NULL,
                     "images: the dimensions (4294967295 x 4294967295 x 4294967295 ubyte) "
                     "multiply past 2^60");
    /* a plausible header whose data is missing: refused when read, not allocated */
    uint32_t big[3] = {60000000, 28, 28};
    n = idx_build(buf, 0x08, 3, big, PIX, 12);
    expect_idx_error(test_write_file("big.idx", buf, n), NULL, "the file ends after 12 of the "
                     "47040000000 data bytes");
    uint32_t zero[3] = {3, 0, 2};
    n = idx_build(buf, 0x08, 3, zero, NULL, 0);
    expect_idx_error(test_write_file("zero.idx", buf, n), NULL, "images: dimension 1 is 0");
    uint32_t nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    n = idx_build(buf, 0x08, 9, nine, "x", 1);
    expect_idx_error(test_write_file("nine.idx", buf, n), NULL, "images: 9 dimensions");
    n = idx_build(buf, 0x08, 0, NULL, NULL, 0);
    expect_idx_error(test_write_file("nodims.idx", buf, n), NULL, "declares 0 dimensions");
    /* images need a sample dimension and at least one more */
    n = idx_build(buf, 0x08, 1, four, l4, 4);
    expect_idx_error(test_write_file("flat.idx", buf, n), NULL, "images: 1 dimension");
    /* labels: one dimension, integers, >= 0 */
    n = idx_build(buf, 0x08, 3, IMG_DIMS, PIX, 12);
    expect_idx_error(img, test_write_file("l2d.idx", buf, n), "labels: 3 dimensions");
    unsigned char fl[12] = {0};
    n = idx_build(buf, 0x0D, 1, LAB_DIMS, fl, 12);
    expect_idx_error(img, test_write_file("lf.idx", buf, n), "labels: element type float");
    unsigned char neg[3] = {1, 0xff, 2};
    n = idx_build(buf, 0x09, 1, LAB_DIMS, neg, 3);
    expect_idx_error(img, test_write_file("lneg.idx", buf, n),
                     "labels: label -1 of sample 1 is negative");
    /* a missing file is an I/O error that names the part, not the path */
    struct slim_error err;
    assert_int_equal(slim_dataset_from_idx(out_path("nope.idx"), lab, out_path("o"), &err),
                     SLIM_EIO);
    assert_non_null(strstr(err.msg, "images: cannot open"));
    assert_null(strstr(err.msg, test_tmp_dir()));
}

/* Writes a canonical dataset from tensors; returns its path. */
static const char *write_ds(const char *name, struct slim_tensor *t, size_t n)
{
    return test_write_model(name, t, n);
}

static void expect_load_error(const char *path, const char *want)
{
    struct slim_dataset d;
    struct slim_error err;
    json_t *info = (json_t *)1;
    assert_int_equal(slim_dataset_load(path, 0, &d, &err), SLIM_EFORMAT);
    if (!strstr(err.msg, want))
        fail_msg("message '%s' does not contain '%s'", err.msg, want);
    assert_null(d.x);
    assert_null(d.labels);
    assert_int_equal(slim_dataset_describe(path, &info, &err), SLIM_EFORMAT);
    assert_null(info);
    assert_non_null(strstr(err.msg, want));
}

static void test_canonical_checks(void **state)
{
    (void)state;
    float x[12];
    int64_t y[3] = {1, 0, 2};
    int32_t y32[3] = {1, -5, 2};
    float yf[3] = {1, 0, 2};
    for (int i = 0; i < 12; i++)
        x[i] = (float)i;
    struct slim_tensor in = {.name = "input", .dtype = SLIM_DT_F32, .ndim = 2,
                             .shape = {3, 4}, .data = x, .nbytes = sizeof x};
    struct slim_tensor lab = {.name = "labels", .dtype = SLIM_DT_I64, .ndim = 1,
                              .shape = {3}, .data = y, .nbytes = sizeof y};
    struct slim_tensor t[3];

    t[0] = lab;
    expect_load_error(write_ds("nolabels.st", t, 1), "no tensor 'input'");
    t[0] = in;
    t[1] = lab;
    t[2] = (struct slim_tensor){.name = "extra", .dtype = SLIM_DT_F32, .ndim = 1, .shape = {1},
                                .data = x, .nbytes = 4};
    expect_load_error(write_ds("extra.st", t, 3), "unexpected tensor 'extra'");
    t[0] = in;
    t[0].dtype = SLIM_DT_I32;
    expect_load_error(write_ds("i32.st", t, 1), "tensor 'input': dtype I32 is not one of");
    t[0] = in;
    t[0].ndim = 0;
    t[0].nbytes = 4;
    expect_load_error(write_ds("scalar.st", t, 1), "tensor 'input': a scalar");
    t[0] = in;
    t[0].shape[0] = 0;
    t[0].nbytes = 0;
    expect_load_error(write_ds("nosamples.st", t, 1), "tensor 'input': no samples (shape [0, 4])");
    t[0] = in;
    t[0].shape[1] = 0;
    t[0].nbytes = 0;
    expect_load_error(write_ds("emptysamples.st", t, 1), "tensor 'input': empty samples");
    t[0] = in;
    t[1] = lab;
    t[1].dtype = SLIM_DT_F32;
    t[1].data = yf;
    t[1].nbytes = sizeof yf;
    expect_load_error(write_ds("labf.st", t, 2), "tensor 'labels': dtype F32 is not an integer");
    t[1] = lab;
    t[1].ndim = 2;
    t[1].shape[0] = 1;
    t[1].shape[1] = 3;
    expect_load_error(write_ds("lab2d.st", t, 2), "tensor 'labels': shape [1, 3], expected [3]");
    t[1] = lab;
    t[1].shape[0] = 2;
    t[1].nbytes = 16;
    expect_load_error(write_ds("lab2.st", t, 2), "tensor 'labels': 2 labels for 3 samples");
    t[1] = lab;
    t[1].dtype = SLIM_DT_I32;
    t[1].data = y32;
    t[1].nbytes = sizeof y32;
    expect_load_error(write_ds("labneg.st", t, 2), "tensor 'labels': label -5 of sample 1 is "
                      "negative");
    /* a file that is no safetensors at all */
    struct slim_dataset d;
    struct slim_error err;
    assert_int_equal(slim_dataset_load(test_write_file("junk.st", "junk", 4), 0, &d, &err),
                     SLIM_EFORMAT);
}

static void test_canonical_dtypes_and_max_samples(void **state)
{
    (void)state;
    uint16_t h[6], b[6];
    double f64[6] = {1, -2, 0.5, 4, 5, 6};
    unsigned char u8[6] = {0, 1, 128, 255, 7, 9};
    unsigned char yu8[3] = {2, 2, 0};
    struct slim_dataset d;
    struct slim_error err;
    json_t *info;
    for (int i = 0; i < 6; i++) {
        h[i] = slim_f32_to_f16((float)f64[i]);
        b[i] = slim_f32_to_bf16((float)f64[i]);
    }
    struct slim_tensor t[2] = {
        {.name = "input", .dtype = SLIM_DT_F16, .ndim = 3, .shape = {3, 2, 1}, .data = h,
         .nbytes = sizeof h},
        {.name = "labels", .dtype = SLIM_DT_U8, .ndim = 1, .shape = {3}, .data = yu8,
         .nbytes = 3},
    };
    const char *p = write_ds("f16.st", t, 2);
    assert_int_equal(slim_dataset_load(p, 0, &d, &err), 0);
    assert_int_equal(d.n, 3);
    assert_int_equal(d.ndim, 2);
    assert_int_equal(d.shape[0], 2);
    assert_int_equal(d.shape[1], 1);
    for (int i = 0; i < 6; i++)
        assert_true(d.x[i] == (float)f64[i]);
    assert_int_equal(d.labels[0], 2);
    assert_int_equal(d.classes, 3);
    slim_dataset_release(&d);
    assert_int_equal(slim_dataset_describe(p, &info, &err), 0);
    assert_string_equal(json_string_value(json_object_get(info, "input_dtype")), "F16");
    assert_int_equal(json_integer_value(json_object_get(info, "classes")), 3);
    json_decref(info);

    /* max_samples keeps the first ones; classes still cover the file */
    assert_int_equal(slim_dataset_load(p, 2, &d, &err), 0);
    assert_int_equal(d.n, 2);
    assert_int_equal(d.labels[1], 2);
    assert_int_equal(d.classes, 3);
    assert_true(d.x[3] == (float)f64[3]);
    slim_dataset_release(&d);
    assert_int_equal(slim_dataset_load(p, 1000, &d, &err), 0);
    assert_int_equal(d.n, 3);
    slim_dataset_release(&d);
    assert_int_equal(slim_dataset_load(p, -1, &d, &err), SLIM_EINVAL);

    t[0].dtype = SLIM_DT_BF16;
    t[0].data = b;
    assert_int_equal(slim_dataset_load(write_ds("bf16.st", t, 1), 0, &d, &err), 0);
    for (int i = 0; i < 6; i++)
        assert_true(d.x[i] == (float)f64[i]);
    assert_null(d.labels);
    slim_dataset_release(&d);
    t[0].dtype = SLIM_DT_F64;
    t[0].data = f64;
    t[0].nbytes = sizeof f64;
    assert_int_equal(slim_dataset_load(write_ds("f64.st", t, 2), 0, &d, &err), 0);
    for (int i = 0; i < 6; i++)
        assert_true(d.x[i] == (float)f64[i]);
    slim_dataset_release(&d);
    /* U8 input is taken as it is, not scaled */
    t[0].dtype = SLIM_DT_U8;
    t[0].data = u8;
    t[0].nbytes = sizeof u8;
    t[0].ndim = 1;
    t[0].shape[0] = 6;
    assert_int_equal(slim_dataset_load(write_ds("u8.st", t, 1), 4, &d, &err), 0);
    assert_int_equal(d.n, 4);
    assert_int_equal(d.ndim, 0);
    assert_int_equal(d.sample_size, 1);
    for (int i = 0; i < 4; i++)
        assert_true(d.x[i] == (float)u8[i]);
    slim_dataset_release(&d);
}

/* Every allocation through slim_malloc fails in turn: each call reports
 * SLIM_ENOMEM, leaks nothing and leaves no file. */
static void test_alloc_failures(void **state)
{
    (void)state;
    const char *img, *lab, *out = out_path("nomem.safetensors");
    struct slim_dataset d;
    struct slim_error err;
    long before = slim_alloc_live();
    int files, rc = -1;
    json_t *info;

    write_pair("img.idx.gz", "lab.idx.gz", 1, &img, &lab);
    files = files_in_tmp();
    for (long n = 0; rc && n < 200; n++) {
        slim_alloc_fail_after(n);
        rc = slim_dataset_from_idx(img, lab, out, &err);
        slim_alloc_fail_after(-1);
        assert_true(rc == 0 || rc == SLIM_ENOMEM);
        assert_int_equal(slim_alloc_live(), before);
        if (rc)
            assert_int_equal(files_in_tmp(), files);
    }
    assert_int_equal(rc, 0);
    rc = -1;
    for (long n = 0; rc && n < 200; n++) {
        slim_alloc_fail_after(n);
        rc = slim_dataset_load(out, 0, &d, &err);
        slim_alloc_fail_after(-1);
        assert_true(rc == 0 || rc == SLIM_ENOMEM);
        if (!rc)
            slim_dataset_release(&d);
        assert_int_equal(slim_alloc_live(), before);
    }
    assert_int_equal(rc, 0);
    rc = -1;
    for (long n = 0; rc && n < 200; n++) {
        slim_alloc_fail_after(n);
        rc = slim_dataset_describe(out, &info, &err);
        slim_alloc_fail_after(-1);
        assert_true(rc == 0 || rc == SLIM_ENOMEM);
        if (!rc)
            json_decref(info);
        assert_int_equal(slim_alloc_live(), before);
    }
    assert_int_equal(rc, 0);
    unlink(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_idx_plain_and_gzip),
        cmocka_unit_test(test_idx_without_labels_and_types),
        cmocka_unit_test(test_idx_bad_magic),
        cmocka_unit_test(test_idx_short_and_long),
        cmocka_unit_test(test_idx_count_mismatch_and_dims),
        cmocka_unit_test(test_canonical_checks),
        cmocka_unit_test(test_canonical_dtypes_and_max_samples),
        cmocka_unit_test(test_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
