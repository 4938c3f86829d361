/*
 * test_pipeline.c - the streaming pipeline: global pruning over the
 * streamed model agrees bit for bit with the in-memory kernel (ties
 * included, after a layer prune too), the quantizers' fused measurement
 * agrees with measuring the decoded values, F16/BF16 inputs stream
 * through, value-dependent layouts (lowrank by energy, sparse output)
 * take the spill path, cancels and errors leave no file behind, and the
 * allocator reuses large blocks.
 */
#include <dirent.h>
#include <math.h>
#include "tests/unit/util.h"
#include "passes/kernels/kernels.h"
#include "passes/slim.h"

/* Runs spec_text over model into OUT (in the temp dir); returns the
 * pipeline's code and the report (or NULL). */
static int run_spec(const char *model, const char *spec_text, const char *out,
                    const struct slim_run_opts *opts, json_t **report, struct slim_error *err)
{
    json_t *js = json_loads(spec_text, 0, NULL);
    struct slim_spec *spec = NULL;
    int rc;
    assert_non_null(js);
    rc = slim_spec_parse(js, NULL, &spec, err);
    if (!rc)
        rc = slim_pipeline_run(spec, model, out, opts, report, err);
    slim_spec_free(spec);
    json_decref(js);
    return rc;
}

static const char *out_path(const char *name)
{
    static char p[2][512];
    static int slot;
    char *s = p[slot++ & 1];
    snprintf(s, 512, "%s/%s", test_tmp_dir(), name);
    return s;
}

/* Files in the temp dir whose name contains `part`. */
static int count_files(const char *part)
{
    DIR *d = opendir(test_tmp_dir());
    struct dirent *e;
    int n = 0;
    assert_non_null(d);
    while ((e = readdir(d)))
        n += strstr(e->d_name, part) != NULL;
    closedir(d);
    return n;
}

static uint64_t rng_state = 88172645463325252ull;
static double uniform(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

static void test_global_prune_matches_kernel(void **state)
{
    /* values from a small set, so ties straddle the threshold and cross
     * tensor boundaries; zeros and -0.0 included */
    static const float pool[] = {0.0f, -0.0f, 0.5f, -0.5f, 0.25f, 1.0f, -1.0f, 0.125f, 2.0f};
    const int64_t shapes[3][2] = {{7, 33}, {16, 16}, {5, 129}};
    static const char *const specs[] = {
        "{\"passes\":[{\"op\":\"prune\",\"sparsity\":0.37,\"scope\":\"global\"}]}",
        "{\"passes\":[{\"op\":\"prune\",\"pattern\":\"2:4\"},"
        "{\"op\":\"prune\",\"sparsity\":0.8,\"scope\":\"global\"}]}",
        "{\"passes\":[{\"op\":\"prune\",\"sparsity\":0.0,\"scope\":\"global\"}]}",
        "{\"passes\":[{\"op\":\"prune\",\"sparsity\":1.0,\"scope\":\"global\"}]}",
    };
    static const double sparsity[] = {0.37, 0.8, 0.0, 1.0};
    struct slim_tensor t[4];
    float *vals[3], *want[3];
    size_t ns[3];
    float bias[5] = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f};
    char names[3][16];
    (void)state;
    for (int k = 0; k < 3; k++) {
        ns[k] = (size_t)(shapes[k][0] * shapes[k][1]);
        vals[k] = malloc(ns[k] * sizeof(float));
        want[k] = malloc(ns[k] * sizeof(float));
        for (size_t i = 0; i < ns[k]; i++)
            vals[k][i] = pool[(size_t)(uniform() * 9) % 9];
        snprintf(names[k], sizeof names[k], "l%d.weight", k);
        t[k] = (struct slim_tensor){.name = names[k], .dtype = SLIM_DT_F32, .ndim = 2,
                                    .shape = {shapes[k][0], shapes[k][1]}, .data = vals[k],
                                    .nbytes = ns[k] * 4};
    }
    /* a bias in the middle: never selected, never counted */
    t[3] = t[2];
    t[2] = (struct slim_tensor){.name = "l1.bias", .dtype = SLIM_DT_F32, .ndim = 1,
                                .shape = {5}, .data = bias, .nbytes = 20};
    const char *model = test_write_model("global.safetensors", t, 4);
    for (size_t s = 0; s < sizeof specs / sizeof specs[0]; s++) {
        struct slim_error err;
        struct slim_model art;
        json_t *rep = NULL;
        float *ws[3];
        for (int k = 0; k < 3; k++) {
            memcpy(want[k], vals[k], ns[k] * sizeof(float));
            ws[k] = want[k];
            if (s == 1)
                assert_int_equal(slim_prune_nm_ref(want[k], (size_t)shapes[k][0],
                                                   (size_t)shapes[k][1], 2, 4, NULL, NULL), 0);
        }
        assert_int_equal(slim_prune_global_ref(ws, ns, 3, sparsity[s], NULL, NULL), 0);
        if (run_spec(model, specs[s], out_path("global-out.safetensors"), NULL, &rep, &err))
            fail_msg("spec %zu: %s", s, err.msg);
        assert_int_equal(slim_st_open(out_path("global-out.safetensors"), &art, &err), 0);
        for (int k = 0; k < 3; k++) {
            const struct slim_tensor *a = slim_model_find(&art, names[k]);
            assert_non_null(a);
            assert_int_equal(a->dtype, SLIM_DT_F32);
            if (memcmp(a->data, want[k], ns[k] * 4))
                fail_msg("spec %zu: tensor %s differs from slim_prune_global_ref", s, names[k]);
        }
        assert_memory_equal(slim_model_find(&art, "l1.bias")->data, bias, 20);
        slim_model_release(&art);
        json_decref(rep);
    }
    for (int k = 0; k < 3; k++) {
        free(vals[k]);
        free(want[k]);
    }
}

static void check_stats(const float *w, const float *deq, size_t n, const struct slim_qstats *st,
                        const char *what)
{
    double num = 0, den = 0;
    int64_t nz = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)w[i] - (double)deq[i];
        num += d * d;
        den += (double)w[i] * (double)w[i];
        nz += deq[i] != 0.0f;
    }
    if (fabs(st->err2 - num) > 1e-6 * num + 1e-30 || fabs(st->ref2 - den) > 1e-6 * den ||
        st->nonzero != nz)
        fail_msg("%s: fused err2 %.9g ref2 %.9g nz %lld; measured %.9g %.9g %lld", what,
                 st->err2, st->ref2, (long long)st->nonzero, num, den, (long long)nz);
}

static void test_fused_stats_match(void **state)
{
    /* rows of odd length (not a multiple of the lanes or of a group), one
     * long row (per-tensor int8: blocks of the running sums), and zeros */
    const size_t rows = 37, cols = 1003, n = rows * cols;
    float *w = malloc(n * 4), *deq = malloc(n * 4), *sc = malloc(rows * 4 * 8);
    uint8_t *q = malloc(n), *zp = malloc(rows * 8);
    (void)state;
    for (size_t i = 0; i < n; i++)
        w[i] = i % 11 == 0 ? 0.0f : (float)(uniform() * 2.0 - 1.0) * 0.05f;
    for (int sym = 0; sym < 2; sym++) {
        struct slim_qstats a = {0}, b = {0};
        /* with deq given, and without (the kernel's own scratch row) */
        assert_int_equal(slim_q8_rows(w, rows, cols, sym, 0, (int8_t *)q, sc, (int8_t *)zp, deq,
                                      &a, 2, NULL), 0);
        assert_int_equal(slim_q8_rows(w, rows, cols, sym, 0, (int8_t *)q, sc, (int8_t *)zp, NULL,
                                      &b, 2, NULL), 0);
        check_stats(w, deq, n, &a, "int8 with deq");
        check_stats(w, deq, n, &b, "int8 without deq");
        memset(&a, 0, sizeof a);
        assert_int_equal(slim_q8_rows(w, 1, n, sym, 0, (int8_t *)q, sc, (int8_t *)zp, deq, &a, 2,
                                      NULL), 0);
        check_stats(w, deq, n, &a, "int8 per tensor");
        memset(&a, 0, sizeof a);
        assert_int_equal(slim_q4_groups(w, rows, cols, 128, sym, 0, q, sc, zp, deq, &a, 2, NULL),
                         0);
        check_stats(w, deq, n, &a, "int4");
    }
    /* measured against another array (the original, when w holds a
     * prune's result) */
    {
        float *pruned = malloc(n * 4);
        struct slim_qstats a = {.ref = w};
        for (size_t i = 0; i < n; i++)
            pruned[i] = i % 3 ? w[i] : 0.0f;
        assert_int_equal(slim_q8_rows(pruned, rows, cols, 1, 0, (int8_t *)q, sc, NULL, NULL, &a,
                                      2, NULL), 0);
        assert_int_equal(slim_q8_rows(pruned, rows, cols, 1, 0, (int8_t *)q, sc, NULL, deq, NULL,
                                      2, NULL), 0);
        check_stats(w, deq, n, &a, "int8 against a reference");
        free(pruned);
    }
    struct slim_qstats c = {0}, d = {0};
    assert_int_equal(slim_ternary_rows(w, rows, cols, q, sc, deq, &c, 2, NULL), 0);
    check_stats(w, deq, n, &c, "ternary");
    assert_int_equal(slim_binary_rows(w, rows, cols, q, sc, deq, &d, 2, NULL), 0);
    check_stats(w, deq, n, &d, "binary");
    free(w);
    free(deq);
    free(sc);
    free(q);
    free(zp);
}

static void test_half_inputs_stream(void **state)
{
    /* F16 and BF16 tensors are converted one at a time; the report
     * measures against the converted original; an untouched BF16 table
     * is copied bit for bit */
    const size_t rows = 24, cols = 50, n = rows * cols;
    uint16_t *h = malloc(n * 2), *b = malloc(n * 2), table[8];
    float *hf = malloc(n * 4);
    (void)state;
    for (size_t i = 0; i < n; i++) {
        float v = (float)(uniform() * 2.0 - 1.0);
        h[i] = slim_f32_to_f16(v);
        b[i] = slim_f32_to_bf16(v);
        hf[i] = slim_f16_to_f32(h[i]);
    }
    for (int i = 0; i < 8; i++)
        table[i] = slim_f32_to_bf16((float)i);
    struct slim_tensor t[3] = {
        {.name = "a.weight", .dtype = SLIM_DT_F16, .ndim = 2, .shape = {24, 50}, .data = h,
         .nbytes = n * 2},
        {.name = "b.weight", .dtype = SLIM_DT_BF16, .ndim = 2, .shape = {24, 50}, .data = b,
         .nbytes = n * 2},
        {.name = "norm", .dtype = SLIM_DT_BF16, .ndim = 2, .shape = {2, 4}, .data = table,
         .nbytes = 16},
    };
    const char *model = test_write_model("half.safetensors", t, 3);
    struct slim_error err;
    struct slim_model art;
    json_t *rep = NULL;
    if (run_spec(model, "{\"passes\":[{\"op\":\"quantize\",\"dtype\":\"int8\"}]}",
                 out_path("half-out.safetensors"), NULL, &rep, &err))
        fail_msg("run: %s", err.msg);
    assert_int_equal(slim_st_open(out_path("half-out.safetensors"), &art, &err), 0);
    const struct slim_tensor *q = slim_model_find(&art, "a.weight");
    const struct slim_tensor *s = slim_model_find(&art, "a.weight_scale");
    assert_non_null(q);
    assert_non_null(s);
    assert_int_equal(q->dtype, SLIM_DT_I8);
    double num = 0, den = 0;
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++) {
            float scale;
            memcpy(&scale, (const char *)s->data + 4 * r, 4);
            double dq = (double)((const int8_t *)q->data)[r * cols + c] * scale;
            double x = hf[r * cols + c];
            num += (x - dq) * (x - dq);
            den += x * x;
        }
    double rel = json_real_value(json_object_get(test_report_row(rep, "a.weight"), "rel_error"));
    assert_true(fabs(rel - sqrt(num / den)) <= 1e-5 * rel);
    assert_string_equal(json_string_value(json_object_get(test_report_row(rep, "b.weight"), "dtype_before")),
                        "BF16");
    assert_memory_equal(slim_model_find(&art, "norm")->data, table, 16);
    slim_model_release(&art);
    json_decref(rep);
    free(h);
    free(b);
    free(hf);
}

static void test_value_dependent_layouts(void **state)
{
    /* lowrank by energy and the sparse output cannot be planned: their
     * data is spilled and copied behind the header; the artifact must
     * still open and hold what the report says */
    const size_t rows = 40, cols = 60, n = rows * cols;
    float *w = malloc(n * 4);
    static const char *const specs[] = {
        "{\"passes\":[{\"op\":\"lowrank\",\"energy\":0.5}]}",
        "{\"passes\":[{\"op\":\"prune\",\"sparsity\":0.6},{\"op\":\"quantize\",\"dtype\":\"int8\"}],"
        "\"output\":{\"sparse\":true}}",
    };
    (void)state;
    /* rank-3 signal: an energy of 0.5 needs few components */
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++)
            w[r * cols + c] = (float)(sin(0.1 * (double)(r * c)) + 0.5 * cos(0.3 * (double)r) +
                                      0.01 * uniform());
    struct slim_tensor t = {.name = "m.weight", .dtype = SLIM_DT_F32, .ndim = 2,
                            .shape = {40, 60}, .data = w, .nbytes = n * 4};
    const char *model = test_write_model("vd.safetensors", &t, 1);
    for (size_t s = 0; s < 2; s++) {
        struct slim_error err;
        struct slim_model art;
        json_t *rep = NULL;
        if (run_spec(model, specs[s], out_path("vd-out.safetensors"), NULL, &rep, &err))
            fail_msg("spec %zu: %s", s, err.msg);
        assert_false(json_is_true(json_object_get(json_object_get(rep, "timings"),
                                                  "streamed_header")));
        assert_int_equal(slim_st_open(out_path("vd-out.safetensors"), &art, &err), 0);
        int64_t after = 0;
        for (size_t i = 0; i < art.n_tensors; i++)
            after += (int64_t)art.tensors[i].nbytes;
        assert_int_equal(after, json_integer_value(json_object_get(
                                    json_object_get(rep, "totals"), "bytes_after")));
        if (s == 0) {
            assert_non_null(slim_model_find(&art, "m.weight_u"));
            assert_non_null(slim_model_find(&art, "m.weight_v"));
        } else {
            assert_non_null(slim_model_find(&art, "m.weight_mask"));
        }
        assert_non_null(json_object_get(art.metadata, "slimd.tensors"));
        slim_model_release(&art);
        json_decref(rep);
        assert_int_equal(count_files(".data"), 0);
        assert_int_equal(count_files(".tmp-"), 0);
    }
    free(w);
}

static int cancel_in_prune(void *ud, double p, const char *stage)
{
    (void)p;
    return stage && !strcmp(stage, "prune") && ++*(int *)ud >= 3;
}

static void test_cancel_and_errors_leave_nothing(void **state)
{
    float a[64], b[64];
    struct slim_error err;
    json_t *rep = NULL;
    int calls = 0;
    struct slim_run_opts opts = {.progress = cancel_in_prune, .progress_ud = &calls};
    (void)state;
    for (int i = 0; i < 64; i++)
        a[i] = b[i] = (float)i - 20.0f;
    b[17] = NAN;
    struct slim_tensor t[2] = {
        {.name = "a.weight", .dtype = SLIM_DT_F32, .ndim = 2, .shape = {8, 8}, .data = a,
         .nbytes = 256},
        {.name = "b.weight", .dtype = SLIM_DT_F32, .ndim = 2, .shape = {8, 8}, .data = b,
         .nbytes = 256},
    };
    const char *model = test_write_model("nan2.safetensors", t, 2);
    /* canceled inside the global prune's summary sweeps */
    assert_int_equal(run_spec(model, "{\"passes\":[{\"op\":\"prune\",\"sparsity\":0.5,"
                                     "\"scope\":\"global\"}]}",
                              out_path("c-out.safetensors"), &opts, &rep, &err),
                     SLIM_ECANCELED);
    assert_null(rep);
    /* NaN in the second tensor: the first was already queued for writing */
    assert_int_equal(run_spec(model, "{\"passes\":[{\"op\":\"quantize\",\"dtype\":\"int8\"}]}",
                              out_path("c-out.safetensors"), NULL, &rep, &err),
                     SLIM_ENUMERIC);
    assert_non_null(strstr(err.msg, "'b.weight'"));
    assert_null(rep);
    assert_int_equal(count_files("c-out"), 0);
    assert_int_equal(count_files(".tmp-"), 0);
}

static void test_large_blocks_are_reused(void **state)
{
    long live = slim_alloc_live();
    (void)state;
    slim_alloc_trim();
    char *p = slim_aligned_alloc((size_t)8 << 20);
    assert_non_null(p);
    assert_int_equal((uintptr_t)p % 64, 0);
    memset(p, 1, (size_t)8 << 20);
    slim_aligned_free(p);
    char *q = slim_aligned_alloc((size_t)7 << 20);   /* a similar size takes the same block */
    /* (under ASan there is no block cache: alloc.c) */
    if (!TEST_ASAN)
        assert_ptr_equal(p, q);
    slim_free(q);                                     /* slim_free works on large blocks too */
    char *r = slim_aligned_alloc((size_t)1 << 20);    /* far smaller: not that block */
    assert_ptr_not_equal(r, p);
    slim_aligned_free(r);
    assert_int_equal(slim_alloc_live(), live);
    slim_alloc_trim();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_global_prune_matches_kernel),
        cmocka_unit_test(test_fused_stats_match),
        cmocka_unit_test(test_half_inputs_stream),
        cmocka_unit_test(test_value_dependent_layouts),
        cmocka_unit_test(test_cancel_and_errors_leave_nothing),
        cmocka_unit_test(test_large_blocks_are_reused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
