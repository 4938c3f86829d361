/*
 * test_train_passes.c - the pieces of the training passes that need no
 * daemon: the MLP student builder (formats/onnx_build.c), the spec's
 * training references and errors (pipeline.c, pass_train.c), and a
 * whole prune -> finetune job through slim_pipeline_run whose pruned
 * zeros must survive.  tests/integration/test_train.py covers the rest
 * against ONNX Runtime.
 */
#include <math.h>
#include <string.h>
#include <unistd.h>
#include "tests/unit/util.h"
#include "passes/engine/engine.h"
#include "passes/formats/onnx_build.h"
#include "passes/slim.h"

static const char *mlp_path(const char *name, int64_t in, int n_hidden, const int64_t *hidden,
                            int64_t classes, uint64_t seed)
{
    static char path[2][4096];
    static int which;
    struct slim_mlp_shape s;
    struct slim_error err;
    char *p = path[which++ & 1];
    memset(&s, 0, sizeof s);
    s.input_name = "input";
    s.output_name = "logits";
    s.ndim = 1;
    s.dims[0] = in;
    s.classes = classes;
    s.n_hidden = n_hidden;
    memcpy(s.hidden, hidden, (size_t)n_hidden * sizeof *hidden);
    s.seed = seed;
    snprintf(p, 4096, "%s/%s", test_tmp_dir(), name);
    assert_int_equal(slim_onnx_mlp(&s, p, &err), 0);
    return p;
}

/* The MLP runs in the engine with the shapes asked, He-initialised. */
static void test_mlp_builder(void **state)
{
    (void)state;
    const int64_t hidden[2] = {64, 32};
    const char *path = mlp_path("mlp.onnx", 100, 2, hidden, 7, 3);
    struct slim_onnx m;
    struct slim_engine *e;
    struct slim_error err;
    const float *y;
    float x[5 * 100];
    int64_t dims[SLIM_MAX_DIMS], k;
    const char *name;
    int nd;
    assert_int_equal(slim_onnx_open(path, &m, &err), 0);
    assert_int_equal(m.graph->n_initializer, 6);
    assert_string_equal(m.graph->initializer[0]->name, "fc1.weight");
    assert_int_equal(m.graph->initializer[0]->dims[0], 64);
    assert_int_equal(m.graph->initializer[0]->dims[1], 100);
    {
        /* He: standard deviation sqrt(2 / fan_in) */
        const float *w = (const float *)m.graph->initializer[0]->raw_data.data;
        double s2 = 0;
        for (int i = 0; i < 6400; i++)
            s2 += (double)w[i] * w[i];
        assert_true(fabs(sqrt(s2 / 6400) - sqrt(2.0 / 100)) < 0.01);
    }
    assert_int_equal(slim_engine_new(&m, &e, &err), 0);
    assert_int_equal(slim_engine_input(e, &name, dims, &nd), 100);
    assert_string_equal(name, "input");
    for (int i = 0; i < 500; i++)
        x[i] = (float)(i % 17) / 17.0f;
    assert_int_equal(slim_engine_run(e, x, 5, &y, &k, &err), 0);
    assert_int_equal(k, 7);
    for (int i = 0; i < 35; i++)
        assert_true(isfinite(y[i]));
    slim_engine_free(e);
    slim_onnx_release(&m);
    /* the seed decides the weights */
    {
        const char *again = mlp_path("mlp2.onnx", 100, 2, hidden, 7, 4);
        struct slim_onnx m2;
        assert_int_equal(slim_onnx_open(path, &m, &err), 0);
        assert_int_equal(slim_onnx_open(again, &m2, &err), 0);
        assert_memory_not_equal(m.graph->initializer[0]->raw_data.data,
                                 m2.graph->initializer[0]->raw_data.data, 64);
        slim_onnx_release(&m);
        slim_onnx_release(&m2);
    }
}

static int parse(const char *text, struct slim_spec **spec, struct slim_error *err)
{
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    int rc;
    assert_non_null(j);
    rc = slim_spec_parse(j, NULL, spec, err);
    json_decref(j);
    return rc;
}

/* The ids a spec's training passes name, in order, with their fields. */
static void test_spec_refs(void **state)
{
    (void)state;
    struct slim_spec *spec;
    struct slim_error err;
    char field[64];
    int kind, labels;
    assert_int_equal(parse("{\"passes\": [{\"op\": \"prune\", \"sparsity\": 0.5},"
                           "{\"op\": \"finetune\", \"dataset\": \"ds_a\"},"
                           "{\"op\": \"distill\", \"dataset\": \"ds_b\", \"student\": \"mdl_s\","
                           " \"alpha\": 1}]}", &spec, &err), 0);
    assert_int_equal(slim_spec_n_refs(spec), 3);
    assert_string_equal(slim_spec_ref(spec, 0, &kind, field, sizeof field, &labels), "ds_a");
    assert_int_equal(kind, SLIM_REF_DATASET);
    assert_string_equal(field, "passes[1].dataset");
    assert_true(labels);
    assert_string_equal(slim_spec_ref(spec, 1, &kind, field, sizeof field, &labels), "ds_b");
    assert_string_equal(field, "passes[2].dataset");
    assert_false(labels);     /* alpha 1: the teacher alone */
    assert_string_equal(slim_spec_ref(spec, 2, &kind, field, sizeof field, &labels), "mdl_s");
    assert_int_equal(kind, SLIM_REF_MODEL);
    assert_string_equal(field, "passes[2].student");
    assert_null(slim_spec_ref(spec, 3, &kind, field, sizeof field, &labels));
    slim_spec_free(spec);
}

static void test_spec_errors(void **state)
{
    (void)state;
    static const char *const bad[][2] = {
        {"{\"op\": \"distill\", \"dataset\": \"d\"}", "passes[0].student: required"},
        {"{\"op\": \"distill\", \"dataset\": \"d\", \"student\": {\"hidden\": [4, -1]}}",
         "passes[0].student.hidden[1]"},
        {"{\"op\": \"distill\", \"dataset\": \"d\", \"student\": {\"hidden\": [4], \"x\": 1}}",
         "passes[0].student: unknown key 'x'"},
        {"{\"op\": \"finetune\"}", "passes[0].dataset: required"},
        {"{\"op\": \"finetune\", \"dataset\": \"d\", \"lr\": 0}", "passes[0].lr"},
        {"{\"op\": \"finetune\", \"dataset\": \"d\", \"alpha\": 0.5}",
         "passes[0]: unknown key 'alpha'"},
        {"{\"op\": \"finetune\", \"dataset\": \"d\", \"exclude\": [\"a\"]}",
         "passes[0]: include/exclude"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[512];
        struct slim_spec *spec = NULL;
        struct slim_error err;
        snprintf(text, sizeof text, "{\"passes\": [%s]}", bad[i][0]);
        assert_int_equal(parse(text, &spec, &err), SLIM_ESPEC);
        if (!strstr(err.msg, bad[i][1]))
            fail_msg("%s: got '%s', want '%s'", bad[i][0], err.msg, bad[i][1]);
        assert_null(spec);
    }
}

/* prune 50 % -> finetune over a made-up task: the zeros of the prune
 * stay exactly zero, the rest moves; the report has the training. */
static void test_prune_finetune_job(void **state)
{
    (void)state;
    const int64_t hidden[1] = {16};
    const char *model = mlp_path("teacher.onnx", 8, 1, hidden, 3, 1);
    enum { N = 300 };
    float x[N * 8];
    int64_t lab[N];
    struct slim_tensor t[2];
    struct slim_spec *spec;
    struct slim_error err;
    struct slim_run_opts o;
    struct slim_onnx a, b;
    json_t *rep = NULL;
    char spec_text[512], out0[4096], out1[4096];
    const char *ds, *refs[1];
    uint64_t s = 7;
    for (int i = 0; i < N; i++) {
        float sum = 0;
        for (int j = 0; j < 8; j++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            x[i * 8 + j] = (float)((s >> 40) % 1000) / 500.0f - 1.0f;
            sum += x[i * 8 + j] * (float)(j - 3);
        }
        lab[i] = sum < -1 ? 0 : sum < 1 ? 1 : 2;
    }
    memset(t, 0, sizeof t);
    t[0] = (struct slim_tensor){.name = "input", .dtype = SLIM_DT_F32, .ndim = 2,
                                .shape = {N, 8}, .data = x, .nbytes = sizeof x};
    t[1] = (struct slim_tensor){.name = "labels", .dtype = SLIM_DT_I64, .ndim = 1,
                                .shape = {N}, .data = lab, .nbytes = sizeof lab};
    ds = test_write_model("ds.safetensors", t, 2);
    refs[0] = ds;
    memset(&o, 0, sizeof o);
    o.ref_paths = refs;
    o.threads = 1;
    snprintf(out0, sizeof out0, "%s/pruned.onnx", test_tmp_dir());
    snprintf(out1, sizeof out1, "%s/tuned.onnx", test_tmp_dir());
    assert_int_equal(parse("{\"passes\": [{\"op\": \"prune\", \"sparsity\": 0.5}]}", &spec,
                           &err), 0);
    assert_int_equal(slim_pipeline_run(spec, model, out0, &o, &rep, &err), 0);
    json_decref(rep);
    slim_spec_free(spec);
    snprintf(spec_text, sizeof spec_text, "{\"passes\": [{\"op\": \"prune\", \"sparsity\": 0.5},"
             "{\"op\": \"finetune\", \"dataset\": \"x\", \"epochs\": 3, \"batch_size\": 16,"
             " \"lr\": 0.01, \"validation_fraction\": 0.2}]}");
    assert_int_equal(parse(spec_text, &spec, &err), 0);
    if (slim_pipeline_run(spec, model, out1, &o, &rep, &err))
        fail_msg("%s", err.msg);
    {
        json_t *tr = json_array_get(json_object_get(rep, "training"), 0);
        assert_non_null(tr);
        assert_int_equal(json_integer_value(json_object_get(tr, "epochs")), 3);
        assert_int_equal(json_integer_value(json_object_get(tr, "val_samples")), 60);
        assert_int_equal(json_array_size(json_object_get(tr, "history")), 3);
        assert_int_equal(json_integer_value(json_object_get(
                             json_object_get(tr, "constraints"), "masked")), 2);
    }
    json_decref(rep);
    slim_spec_free(spec);
    assert_int_equal(slim_onnx_open(out0, &a, &err), 0);
    assert_int_equal(slim_onnx_open(out1, &b, &err), 0);
    {
        int moved = 0;
        for (size_t i = 0; i < a.graph->n_initializer; i++) {
            const Onnx__TensorProto *ta = a.graph->initializer[i], *tb = NULL;
            const void *da, *db;
            size_t na, nb;
            int fb;
            if (ta->n_dims != 2)
                continue;
            for (size_t j = 0; j < b.graph->n_initializer; j++)
                if (!strcmp(b.graph->initializer[j]->name, ta->name))
                    tb = b.graph->initializer[j];
            assert_non_null(tb);
            assert_int_equal(slim_onnx_tensor_data(&a, ta, &da, &na, &fb, &err), 0);
            assert_int_equal(slim_onnx_tensor_data(&b, tb, &db, &nb, &fb, &err), 0);
            assert_int_equal(na, nb);
            for (size_t k = 0; k < na / 4; k++) {
                float va = ((const float *)da)[k], vb = ((const float *)db)[k];
                assert_int_equal(va == 0.0f, vb == 0.0f);
                moved += va != vb;
            }
        }
        assert_true(moved > 0);
    }
    slim_onnx_release(&a);
    slim_onnx_release(&b);
    /* no leftover intermediate files beside the artifact */
    {
        char p[4200];
        snprintf(p, sizeof p, "%s.part0.onnx", out1);
        assert_int_not_equal(access(p, F_OK), 0);
        snprintf(p, sizeof p, "%s.trained1.onnx", out1);
        assert_int_not_equal(access(p, F_OK), 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mlp_builder),
        cmocka_unit_test(test_spec_refs),
        cmocka_unit_test(test_spec_errors),
        cmocka_unit_test(test_prune_finetune_job),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
