/*
 * test_safetensors.c - the strict reader on good and malformed files, the
 * writer's round trip, and the fp16/bf16 conversions against bit
 * patterns worked by hand.
 */
#include <math.h>
#include "tests/unit/util.h"
#include "passes/slim.h"

/* Builds a safetensors buffer from a header string and data bytes. */
static size_t build(unsigned char *buf, const char *hdr, const void *data, size_t dlen)
{
    uint64_t n = strlen(hdr);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)(n >> (8 * i));
    memcpy(buf + 8, hdr, n);
    if (dlen)
        memcpy(buf + 8 + n, data, dlen);
    return 8 + n + dlen;
}

static int parse(const char *hdr, size_t dlen, struct slim_error *err)
{
    static unsigned char buf[4096];
    unsigned char data[256] = {0};
    struct slim_model m;
    size_t len = build(buf, hdr, data, dlen);
    int rc = slim_st_parse(buf, len, &m, err);
    if (!rc)
        slim_model_release(&m);
    return rc;
}

static void test_valid(void **state)
{
    unsigned char buf[512];
    float w[6] = {1, 2, 3, 4, 5, 6};
    unsigned char data[24 + 16];
    int64_t ids[2] = {7, -9};
    struct slim_model m;
    struct slim_error err;
    (void)state;
    memcpy(data, ids, 16);      /* "ids" first in the data area */
    memcpy(data + 16, w, 24);
    size_t len = build(buf,
                       "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[16,40]},"
                       "\"__metadata__\":{\"format\":\"pt\"},"
                       "\"ids\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,16]}}",
                       data, sizeof data);
    assert_int_equal(slim_st_parse(buf, len, &m, &err), 0);
    assert_int_equal(m.n_tensors, 2);
    /* kept in data order, not header order */
    assert_string_equal(m.tensors[0].name, "ids");
    assert_string_equal(m.tensors[1].name, "w");
    assert_int_equal(m.tensors[1].dtype, SLIM_DT_F32);
    assert_int_equal(m.tensors[1].ndim, 2);
    assert_int_equal(m.tensors[1].shape[0], 2);
    assert_int_equal(m.tensors[1].shape[1], 3);
    assert_memory_equal(m.tensors[1].data, w, 24);
    assert_string_equal(json_string_value(json_object_get(m.metadata, "format")), "pt");
    assert_ptr_equal(slim_model_find(&m, "w"), &m.tensors[1]);
    assert_null(slim_model_find(&m, "nope"));
    slim_model_release(&m);
}

static void test_empty_and_scalar(void **state)
{
    struct slim_error err;
    (void)state;
    /* zero-element tensors and a scalar (shape []) are legal */
    assert_int_equal(parse("{\"e\":{\"dtype\":\"F32\",\"shape\":[0,4],\"data_offsets\":[0,0]},"
                           "\"s\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[0,8]}}",
                           8, &err),
                     0);
    assert_int_equal(parse("{}", 0, &err), 0);
}

struct bad_case {
    const char *hdr;
    size_t dlen;
    const char *needle; /* the message must say this */
};

static void test_malformed(void **state)
{
    static const struct bad_case cases[] = {
        {"[1,2]", 0, "JSON object"},
        {"{\"a\":", 0, "not valid JSON"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "not valid JSON"},
        {"{\"a\":{\"dtype\":\"F8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "unsupported dtype"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, "shape[0]"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, "needs 8 bytes"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,8]}}", 4, "outside the data"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4, "outside the data"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[2,6]}}", 8, "overlaps"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "gap"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 12, "trailing"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4,
         "unknown key"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "data_offsets"},
        {"{\"__metadata__\":{\"k\":1}}", 0, "is not a string"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
         "dimensions"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,4294967296],"
         "\"data_offsets\":[0,4]}}", 4, "overflows"},
    };
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct slim_error err = {0, ""};
        int rc = parse(cases[i].hdr, cases[i].dlen, &err);
        if (rc != SLIM_EFORMAT || !strstr(err.msg, cases[i].needle))
            fail_msg("case %zu: rc %d, message '%s' (wanted '%s')", i, rc, err.msg,
                     cases[i].needle);
    }
}

static void test_metadata_caps(void **state)
{
    /* a metadata bomb (issue 9: 1e6 keys made every model list slow) is
     * refused; the most slimd keeps still reads */
    float w[2] = {1, 2};
    struct slim_tensor t = {.name = "w", .dtype = SLIM_DT_F32, .ndim = 1, .shape = {2},
                            .data = w, .nbytes = 8};
    struct slim_model m;
    struct slim_error err;
    char key[32], path[512];
    json_t *md = json_object();
    char *big = malloc(SLIM_ST_MAX_METADATA_BYTES + 2);
    (void)state;
    snprintf(path, sizeof path, "%s/md.safetensors", test_tmp_dir());
    for (int i = 0; i < SLIM_ST_MAX_METADATA_KEYS; i++) {
        snprintf(key, sizeof key, "k%d", i);
        json_object_set_new(md, key, json_string("v"));
    }
    assert_int_equal(slim_st_write(path, &t, 1, md, &err), 0);
    assert_int_equal(slim_st_open(path, &m, &err), 0);
    assert_int_equal(json_object_size(m.metadata), SLIM_ST_MAX_METADATA_KEYS);
    slim_model_release(&m);
    json_object_set_new(md, "one_more", json_string("v"));
    assert_int_equal(slim_st_write(path, &t, 1, md, &err), 0);
    assert_int_equal(slim_st_open(path, &m, &err), SLIM_EFORMAT);
    assert_non_null(strstr(err.msg, "entries"));
    json_object_clear(md);
    memset(big, 'x', SLIM_ST_MAX_METADATA_BYTES + 1);
    big[SLIM_ST_MAX_METADATA_BYTES + 1] = 0;
    json_object_set_new(md, "big", json_string(big));
    assert_int_equal(slim_st_write(path, &t, 1, md, &err), 0);
    assert_int_equal(slim_st_open(path, &m, &err), SLIM_EFORMAT);
    assert_non_null(strstr(err.msg, "bytes"));
    json_decref(md);
    free(big);
}

static void test_bad_lengths(void **state)
{
    unsigned char buf[32] = {0};
    struct slim_model m;
    struct slim_error err;
    (void)state;
    assert_int_equal(slim_st_parse(buf, 5, &m, &err), SLIM_EFORMAT);
    assert_non_null(strstr(err.msg, "too short"));
    buf[0] = 200; /* header length 200 in a 32-byte file */
    assert_int_equal(slim_st_parse(buf, sizeof buf, &m, &err), SLIM_EFORMAT);
    assert_non_null(strstr(err.msg, "past the end"));
    memset(buf, 0xff, 8); /* absurd length */
    assert_int_equal(slim_st_parse(buf, sizeof buf, &m, &err), SLIM_EFORMAT);
    assert_non_null(strstr(err.msg, "exceeds the limit"));
}

static void test_write_roundtrip(void **state)
{
    float w[4] = {1.5f, -2.0f, 0.0f, 3.25f};
    uint8_t b[3] = {1, 2, 3};
    struct slim_tensor t[2] = {
        {.name = "weight", .dtype = SLIM_DT_F32, .ndim = 2, .shape = {2, 2}, .data = w,
         .nbytes = 16},
        {.name = "bytes", .dtype = SLIM_DT_U8, .ndim = 1, .shape = {3}, .data = b, .nbytes = 3},
    };
    json_t *md = json_pack("{s:s}", "author", "test");
    char path[512];
    struct slim_model m;
    struct slim_error err;
    (void)state;
    snprintf(path, sizeof path, "%s/rt.safetensors", test_tmp_dir());
    assert_int_equal(slim_st_write(path, t, 2, md, &err), 0);
    assert_int_equal(slim_st_open(path, &m, &err), 0);
    assert_int_equal(m.n_tensors, 2);
    assert_string_equal(m.tensors[0].name, "weight");
    assert_memory_equal(m.tensors[0].data, w, 16);
    assert_memory_equal(m.tensors[1].data, b, 3);
    assert_string_equal(json_string_value(json_object_get(m.metadata, "author")), "test");
    /* header padded to a multiple of 8 */
    uint64_t hlen = 0;
    memcpy(&hlen, m.map, 8);
    assert_int_equal(hlen % 8, 0);
    slim_model_release(&m);
    json_decref(md);
    /* nothing left behind but the file */
    char cmd[600];
    snprintf(cmd, sizeof cmd, "test $(ls '%s' | grep -c tmp) -eq 0", test_tmp_dir());
    assert_int_equal(system(cmd), 0);
}

static void test_open_missing(void **state)
{
    struct slim_model m;
    struct slim_error err;
    (void)state;
    assert_int_equal(slim_st_open("/nonexistent/x.safetensors", &m, &err), SLIM_EIO);
    assert_non_null(strstr(err.msg, "cannot open"));
}

static void test_half_conversions(void **state)
{
    (void)state;
    assert_int_equal(slim_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(slim_f32_to_f16(-2.0f), 0xc000);
    assert_int_equal(slim_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(slim_f32_to_f16(65520.0f), 0x7c00);   /* rounds up to Inf */
    assert_int_equal(slim_f32_to_f16(65519.0f), 0x7bff);
    assert_int_equal(slim_f32_to_f16(INFINITY), 0x7c00);
    assert_true((slim_f32_to_f16(NAN) & 0x7c00) == 0x7c00 && (slim_f32_to_f16(NAN) & 0x3ff));
    assert_int_equal(slim_f32_to_f16(5.9604645e-08f), 0x0001); /* smallest subnormal */
    assert_int_equal(slim_f32_to_f16(2.9802322e-08f), 0x0000); /* half of it: tie to even 0 */
    assert_int_equal(slim_f32_to_f16(6.1035156e-05f), 0x0400); /* smallest normal */
    /* 1 + 2^-11 is a tie between 0x3c00 and 0x3c01: even wins */
    assert_int_equal(slim_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);
    assert_int_equal(slim_f32_to_f16(1.0f + 0x1p-10f + 0x1p-11f), 0x3c02);
    assert_true(slim_f16_to_f32(0x3c00) == 1.0f);
    assert_true(slim_f16_to_f32(0x0001) == 5.9604645e-08f);
    assert_true(isinf(slim_f16_to_f32(0xfc00)) && slim_f16_to_f32(0xfc00) < 0);
    for (uint32_t h = 0; h < 0x7c00; h++) /* every finite half round-trips */
        assert_int_equal(slim_f32_to_f16(slim_f16_to_f32((uint16_t)h)), h);

    assert_int_equal(slim_f32_to_bf16(1.0f), 0x3f80);
    /* 0x3f808000 is a tie: stays at even 0x3f80; 0x3f818000 goes to 0x3f82 */
    float a, b;
    uint32_t ua = 0x3f808000u, ub = 0x3f818000u;
    memcpy(&a, &ua, 4);
    memcpy(&b, &ub, 4);
    assert_int_equal(slim_f32_to_bf16(a), 0x3f80);
    assert_int_equal(slim_f32_to_bf16(b), 0x3f82);
    assert_true(isnan(slim_bf16_to_f32(slim_f32_to_bf16(NAN))));
}

static void test_detect(void **state)
{
    unsigned char buf[64];
    (void)state;
    size_t len = build(buf, "{}", NULL, 0);
    assert_null(slim_format_detect(buf, len - 2)); /* shorter than length + "{}" */
    assert_string_equal(slim_format_detect(buf, len), "safetensors");
    len = build(buf, "{\"a\":1}", NULL, 0);
    assert_string_equal(slim_format_detect(buf, len), "safetensors");
    assert_null(slim_format_detect("PK\003\004 zip file....", 20));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_empty_and_scalar),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_bad_lengths),
        cmocka_unit_test(test_metadata_caps),
        cmocka_unit_test(test_write_roundtrip),
        cmocka_unit_test(test_open_missing),
        cmocka_unit_test(test_half_conversions),
        cmocka_unit_test(test_detect),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
