/*
 * test_quantize.c - the quantize pass through the real pipeline on small
 * files: int8 codes, scales and zero points against values worked by
 * hand, fp16/bf16, untouched tensors copied bit for bit, include/exclude,
 * the report's error figures, and the spec validator's messages.
 */
#include <math.h>
#include "tests/unit/util.h"
#include "passes/slim.h"

/* Runs spec_text over model; opens the artifact into *out. */
static json_t *run(const char *model, const char *spec_text, struct slim_model *out)
{
    json_error_t jerr;
    json_t *js = json_loads(spec_text, 0, &jerr), *report = NULL;
    struct slim_spec *spec;
    struct slim_error err;
    char path[512];
    assert_non_null(js);
    if (slim_spec_parse(js, NULL, &spec, &err))
        fail_msg("spec: %s", err.msg);
    snprintf(path, sizeof path, "%s/out.safetensors", test_tmp_dir());
    if (slim_pipeline_run(spec, model, path, NULL, &report, &err))
        fail_msg("run: %s", err.msg);
    slim_spec_free(spec);
    json_decref(js);
    if (slim_st_open(path, out, &err))
        fail_msg("open artifact: %s", err.msg);
    return report;
}

static void test_int8_symmetric_channel_by_hand(void **state)
{
    /* row 0: max|w| = 2 -> scale 2/127; 1/(2/127) = 63.5 -> 64 (tie to even),
     * -2 -> -127, 0.5 -> 31.75 -> 32.  row 1: all zero -> scale 1, codes 0. */
    float w[6] = {1.0f, -2.0f, 0.5f, 0.0f, 0.0f, 0.0f};
    float bias[2] = {0.25f, -0.5f};
    struct slim_tensor t[2] = {
        {.name = "fc.weight", .dtype = SLIM_DT_F32, .ndim = 2, .shape = {2, 3}, .data = w,
         .nbytes = 24},
        {.name = "fc.bias", .dtype = SLIM_DT_F32, .ndim = 1, .shape = {2}, .data = bias,
         .nbytes = 8},
    };
    struct slim_model a;
    (void)state;
    json_t *rep = run(test_write_model("m1.safetensors", t, 2),
                      "{\"passes\":[{\"op\":\"quantize\",\"dtype\":\"int8\"}]}", &a);
    const struct slim_tensor *q = slim_model_find(&a, "fc.weight");
    const struct slim_tensor *s = slim_model_find(&a, "fc.weight_scale");
    const struct slim_tensor *b = slim_model_find(&a, "fc.bias");
    assert_non_null(q);
    assert_non_null(s);
    assert_null(slim_model_find(&a, "fc.weight_zero_point"));
    assert_int_equal(q->dtype, SLIM_DT_I8);
    assert_int_equal(q->shape[0], 2);
    assert_int_equal(q->shape[1], 3);
    const int8_t want[6] = {64, -127, 32, 0, 0, 0};
    assert_memory_equal(q->data, want, 6);
    assert_int_equal(s->dtype, SLIM_DT_F32);
    assert_int_equal(s->ndim, 2);
    assert_int_equal(s->shape[0], 2);
    assert_int_equal(s->shape[1], 1);
    float sc[2];
    memcpy(sc, s->data, 8);
    assert_true(sc[0] == 2.0f / 127.0f);
    assert_true(sc[1] == 1.0f);
    /* the bias is copied bit for bit */
    assert_int_equal(b->dtype, SLIM_DT_F32);
    assert_memory_equal(b->data, bias, 8);
    /* metadata names the scheme */
    json_t *md = a.metadata;
    assert_string_equal(json_string_value(json_object_get(md, "slimd.version")), SLIMD_VERSION);
    assert_non_null(strstr(json_string_value(json_object_get(md, "slimd.quantization")), "int8"));
    assert_non_null(strstr(json_string_value(json_object_get(md, "slimd.tensors")),
                           "fc.weight_scale"));
    /* report: error of the row-0 codes, measured by hand */
    json_t *r = test_report_row(rep, "fc.weight");
    double s0 = 2.0 / 127.0, e1 = 64 * s0 - 1.0, e3 = 32 * s0 - 0.5, e2 = -127 * s0 + 2.0;
    double rel = sqrt((e1 * e1 + e2 * e2 + e3 * e3) / (1.0 + 4.0 + 0.25));
    assert_float_equal(json_real_value(json_object_get(r, "rel_error")), rel, 1e-6);
    assert_int_equal(json_integer_value(json_object_get(r, "bytes_before")), 24);
    assert_int_equal(json_integer_value(json_object_get(r, "bytes_after")), 6 + 8);
    assert_string_equal(json_string_value(json_object_get(r, "dtype_after")), "I8");
    r = test_report_row(rep, "fc.bias");
    assert_true(json_real_value(json_object_get(r, "rel_error")) == 0.0);
    assert_true(json_is_null(json_object_get(r, "snr_db")));
    json_t *tot = json_object_get(rep, "totals");
    assert_int_equal(json_integer_value(json_object_get(tot, "bytes_before")), 32);
    assert_int_equal(json_integer_value(json_object_get(tot, "bytes_after")), 22);
    assert_int_equal(json_integer_value(json_object_get(tot, "params")), 8);
    assert_int_equal(json_array_size(json_object_get(rep, "passes")), 1);
    json_decref(rep);
    slim_model_release(&a);
}

static void test_int8_asymmetric_tensor_by_hand(void **state)
{
    /* range [-1, 3]: scale = 4/255, zp = round(-128 + 63.75) = -64;
     * 3 -> round(191.25) - 64 = 127; -1 -> round(-63.75) - 64 = -128;
     * 0 -> -64 (decodes to exactly 0); 1 -> round(63.75) - 64 = 0. */
    float w[4] = {3.0f, -1.0f, 0.0f, 1.0f};
    struct slim_tensor t = {.name = "w", .dtype = SLIM_DT_F32, .ndim = 2, .shape = {2, 2},
                            .data = w, .nbytes = 16};
    struct slim_model a;
    (void)state;
    json_t *rep = run(test_write_model("m2.safetensors", &t, 1),
                      "{\"passes\":[{\"op\":\"quantize\",\"dtype\":\"int8\",\"granularity\":"
                      "\"tensor\",\"symmetric\":false}]}", &a);
    const struct slim_tensor *q = slim_model_find(&a, "w");
    const struct slim_tensor *s = slim_model_find(&a, "w_scale");
    const struct slim_tensor *z = slim_model_find(&a, "w_zero_point");
    const int8_t want[4] = {127, -128, -64, 0};
    assert_non_null(z);
    assert_memory_equal(q->data, want, 4);
    assert_int_equal(s->ndim, 1);
    assert_int_equal(s->shape[0], 1);
    assert_int_equal(z->dtype, SLIM_DT_I8);
    assert_int_equal(((const int8_t *)z->data)[0], -64);
    float sc;
    memcpy(&sc, s->data, 4);
    assert_true(sc == 4.0f / 255.0f);
    json_decref(rep);
    slim_model_release(&a);
}

static float gauss(unsigned *seed)
{
    float u1 = ((float)(rand_r(seed) % 100000) + 0.5f) / 100000.0f;
    float u2 = (float)(rand_r(seed) % 100000) / 100000.0f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
}

static void test_gaussian_error_bounds(void **state)
{
    enum { R = 128, C = 256 };
    static float w[R * C];
    unsigned seed = 42;
    struct slim_tensor t = {.name = "layer.weight", .dtype = SLIM_DT_F32, .ndim = 2,
                            .shape = {R, C}, .data = w, .nbytes = sizeof w};
    struct slim_model a;
    (void)state;
    for (int i = 0; i < R * C; i++)
        w[i] = 0.02f * gauss(&seed);
    const char *m = test_write_model("g.safetensors", &t, 1);
    json_t *rep = run(m, "{\"passes\":[{\"op\":\"quantize\",\"dtype\":\"int8\"}]}", &a);
    double rel = json_real_value(json_object_get(test_report_row(rep, "layer.weight"), "rel_error"));
    /* int8 on Gaussian rows: about 1 % or less; also decode by hand and compare */
    assert_true(rel > 0.001 && rel < 0.012);
    const int8_t *q = slim_model_find(&a, "layer.weight")->data;
    const float *sc = slim_model_find(&a, "layer.weight_scale")->data;
    double num = 0, den = 0;
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            double d = q[r * C + c] * (double)sc[r] - w[r * C + c];
            num += d * d;
            den += (double)w[r * C + c] * w[r * C + c];
        }
    assert_float_equal(sqrt(num / den), rel, 1e-6);
    json_decref(rep);
    slim_model_release(&a);

    rep = run(m, "{\"passes\":[{\"op\":\"quantize\",\"dtype\":\"fp16\"}]}", &a);
    const struct slim_tensor *h = slim_model_find(&a, "layer.weight");
    assert_int_equal(h->dtype, SLIM_DT_F16);
    assert_int_equal(((const uint16_t *)h->data)[5], slim_f32_to_f16(w[5]));
    rel = json_real_value(json_object_get(test_report_row(rep, "layer.weight"), "rel_error"));
    assert_true(rel > 0 && rel < 5e-4);
    json_decref(rep);
    slim_model_release(&a);

    rep = run(m, "{\"passes\":[{\"op\":\"quantize\",\"dtype\":\"bf16\"}],"
                 "\"output\":{\"dequantize\":true}}", &a);
    h = slim_model_find(&a, "layer.weight");
    assert_int_equal(h->dtype, SLIM_DT_F32); /* dequantized output */
    assert_true(((const float *)h->data)[7] == slim_bf16_to_f32(slim_f32_to_bf16(w[7])));
    json_decref(rep);
    slim_model_release(&a);
}

static void test_include_exclude_and_types(void **state)
{
    float a_[4] = {1, 2, 3, 4}, b_[4] = {5, 6, 7, 8};
    int64_t ids[2] = {1, 2};
    uint16_t h[4];
    for (int i = 0; i < 4; i++)
        h[i] = slim_f32_to_f16((float)i - 1.5f);
    struct slim_tensor t[4] = {
        {.name = "enc.q.weight", .dtype = SLIM_DT_F32, .ndim = 2, .shape = {2, 2}, .data = a_,
         .nbytes = 16},
        {.name = "dec.q.weight", .dtype = SLIM_DT_F32, .ndim = 2, .shape = {2, 2}, .data = b_,
         .nbytes = 16},
        {.name = "pos", .dtype = SLIM_DT_I64, .ndim = 2, .shape = {1, 2}, .data = ids,
         .nbytes = 16},
        {.name = "half.weight", .dtype = SLIM_DT_F16, .ndim = 2, .shape = {2, 2}, .data = h,
         .nbytes = 8},
    };
    struct slim_model a;
    (void)state;
    json_t *rep = run(test_write_model("m3.safetensors", t, 4),
                      "{\"passes\":[{\"op\":\"quantize\",\"dtype\":\"int8\","
                      "\"include\":[\"*.weight\"],\"exclude\":[\"dec.*\"]}]}", &a);
    assert_int_equal(slim_model_find(&a, "enc.q.weight")->dtype, SLIM_DT_I8);
    assert_int_equal(slim_model_find(&a, "half.weight")->dtype, SLIM_DT_I8);
    assert_int_equal(slim_model_find(&a, "dec.q.weight")->dtype, SLIM_DT_F32);
    assert_memory_equal(slim_model_find(&a, "dec.q.weight")->data, b_, 16);
    assert_int_equal(slim_model_find(&a, "pos")->dtype, SLIM_DT_I64);
    assert_memory_equal(slim_model_find(&a, "pos")->data, ids, 16);
    json_decref(rep);
    slim_model_release(&a);
}

static void test_nan_rejected(void **state)
{
    float w[4] = {1, NAN, 3, 4};
    struct slim_tensor t = {.name = "w", .dtype = SLIM_DT_F32, .ndim = 2, .shape = {2, 2},
                            .data = w, .nbytes = 16};
    json_t *js = json_loads("{\"passes\":[{\"op\":\"quantize\",\"dtype\":\"int8\"}]}", 0, NULL);
    struct slim_spec *spec;
    struct slim_error err;
    json_t *rep = NULL;
    char out[512];
    (void)state;
    assert_int_equal(slim_spec_parse(js, NULL, &spec, &err), 0);
    snprintf(out, sizeof out, "%s/nan-out.safetensors", test_tmp_dir());
    assert_int_equal(slim_pipeline_run(spec, test_write_model("nan.safetensors", &t, 1), out, NULL,
                                       &rep, &err),
                     SLIM_ENUMERIC);
    assert_non_null(strstr(err.msg, "NaN"));
    assert_non_null(strstr(err.msg, "'w'"));
    assert_int_equal(access(out, F_OK), -1); /* no artifact */
    slim_spec_free(spec);
    json_decref(js);
}

static int cancel_now(void *ud, double p, const char *stage)
{
    (void)p;
    (void)stage;
    return ++*(int *)ud >= 2;
}

static void test_cancel(void **state)
{
    float w[4] = {1, 2, 3, 4};
    struct slim_tensor t = {.name = "w", .dtype = SLIM_DT_F32, .ndim = 2, .shape = {2, 2},
                            .data = w, .nbytes = 16};
    json_t *js = json_loads("{\"passes\":[{\"op\":\"quantize\",\"dtype\":\"int8\"}]}", 0, NULL);
    struct slim_spec *spec;
    struct slim_error err;
    json_t *rep = NULL;
    int calls = 0;
    struct slim_run_opts opts = {.progress = cancel_now, .progress_ud = &calls, .threads = 1};
    char out[512];
    (void)state;
    assert_int_equal(slim_spec_parse(js, NULL, &spec, &err), 0);
    snprintf(out, sizeof out, "%s/c.safetensors", test_tmp_dir());
    assert_int_equal(slim_pipeline_run(spec, test_write_model("c-in.safetensors", &t, 1), out, &opts,
                                       &rep, &err),
                     SLIM_ECANCELED);
    assert_null(rep);
    slim_spec_free(spec);
    json_decref(js);
}

static void test_spec_errors(void **state)
{
    static const struct {
        const char *spec;
        const char *msg;
    } cases[] = {
        {"[]", "expected a JSON object"},
        {"{}", "passes: required"},
        {"{\"passes\":[]}", "passes: required"},
        {"{\"passes\":[{\"op\":\"prun\"}]}", "passes[0].op: unknown op 'prun'"},
        {"{\"passes\":[{}]}", "passes[0].op: required"},
        {"{\"passes\":[{\"op\":\"quantize\"}]}", "passes[0].dtype: required"},
        {"{\"passes\":[{\"op\":\"quantize\",\"dtype\":\"int3\"}]}",
         "passes[0].dtype: 'int3' is not one of"},
        {"{\"passes\":[{\"op\":\"quantize\",\"dtype\":\"int8\",\"granularity\":\"row\"}]}",
         "passes[0].granularity"},
        {"{\"passes\":[{\"op\":\"quantize\",\"dtype\":\"int8\",\"symmetric\":1}]}",
         "passes[0].symmetric: expected true or false"},
        {"{\"passes\":[{\"op\":\"quantize\",\"dtype\":\"int8\",\"bits\":8}]}",
         "passes[0]: unknown key 'bits'"},
        {"{\"passes\":[{\"op\":\"quantize\",\"dtype\":\"int8\",\"include\":\"*\"}]}",
         "passes[0].include: expected an array"},
        {"{\"passes\":[{\"op\":\"quantize\",\"dtype\":\"int8\"},"
         "{\"op\":\"quantize\",\"dtype\":\"fp16\"}]}", "passes[1]: only one of"},
        {"{\"passes\":[{\"op\":\"quantize\",\"dtype\":\"int8\"}],\"output\":{\"zip\":1}}",
         "output: unknown key 'zip'"},
        {"{\"passes\":[{\"op\":\"quantize\",\"dtype\":\"int8\"}],\"extra\":1}",
         "unknown key 'extra'"},
    };
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *js = json_loads(cases[i].spec, 0, NULL);
        struct slim_spec *spec = NULL;
        struct slim_error err = {0, ""};
        assert_non_null(js);
        int rc = slim_spec_parse(js, NULL, &spec, &err);
        if (rc != SLIM_ESPEC || !strstr(err.msg, cases[i].msg))
            fail_msg("case %zu: rc %d, '%s' (wanted '%s')", i, rc, err.msg, cases[i].msg);
        assert_null(spec);
        json_decref(js);
    }
}

static void test_alloc_failures(void **state)
{
    /* Every allocation failing in turn: the pipeline reports an error
     * (never crashes) and leaks nothing. */
    float w[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    struct slim_tensor t = {.name = "w", .dtype = SLIM_DT_F32, .ndim = 2, .shape = {2, 4},
                            .data = w, .nbytes = 32};
    const char *m = test_write_model("af.safetensors", &t, 1);
    json_t *js = json_loads("{\"passes\":[{\"op\":\"quantize\",\"dtype\":\"int8\","
                            "\"symmetric\":false}]}", 0, NULL);
    char out[512];
    int ok = 0;
    (void)state;
    snprintf(out, sizeof out, "%s/af-out.safetensors", test_tmp_dir());
    for (long n = 0; n < 200 && !ok; n++) {
        struct slim_spec *spec = NULL;
        struct slim_error err;
        json_t *rep = NULL;
        long live = slim_alloc_live();
        slim_alloc_fail_after(n);
        int rc = slim_spec_parse(js, NULL, &spec, &err);
        if (!rc)
            rc = slim_pipeline_run(spec, m, out, NULL, &rep, &err);
        slim_alloc_fail_after(-1);
        slim_spec_free(spec);
        json_decref(rep);
        if (rc == 0)
            ok = 1;
        else
            assert_int_equal(rc, SLIM_ENOMEM);
        assert_int_equal(slim_alloc_live(), live);
    }
    assert_true(ok);
    json_decref(js);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_int8_symmetric_channel_by_hand),
        cmocka_unit_test(test_int8_asymmetric_tensor_by_hand),
        cmocka_unit_test(test_gaussian_error_bounds),
        cmocka_unit_test(test_include_exclude_and_types),
        cmocka_unit_test(test_nan_rejected),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_spec_errors),
        cmocka_unit_test(test_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
