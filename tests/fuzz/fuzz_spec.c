/*
 * fuzz_spec.c - libFuzzer target for the job spec: the JSON a client
 * POSTs to /v1/jobs, parsed as api/jobs.c does (json_loadb with
 * JSON_REJECT_DUPLICATES, then slim_spec_parse with "model" allowed),
 * then planned (slim_pipeline_estimate, what the daemon does before it
 * queues a job) and run (slim_pipeline_run) over a small model.
 *
 * Running what was accepted matters as much as parsing it: the daemon
 * promises that a spec it takes will run, so a parameter the parser
 * lets through and a kernel cannot handle (a group size, a rank, a
 * sparsity at an edge) is a bug the parser alone would not show.  The
 * model is made once, in the scratch folder: five tensors of different
 * dtypes and shapes (a matrix whose sides are not multiples of a block,
 * a vector, a bf16 and an fp16 matrix, an integer table), a few hundred
 * bytes, so a run costs well under a millisecond of compute.  A run
 * ends in success or a named error; when it succeeds, the report is
 * checked to be JSON that dumps, and the artifact to be a safetensors
 * file that the reader accepts.
 */
#include <math.h>
#include "tests/fuzz/fuzz.h"

static char model_path[512], out_path[512];

static void make_model(void)
{
    static float w1[13 * 24], b1[13], small[3];
    static uint16_t w2[8 * 13], w3[6 * 5];
    static int64_t ids[4] = {3, 1, 4, 1};
    struct slim_tensor t[6];
    struct slim_error err;
    uint32_t s = 12345;

    for (size_t i = 0; i < sizeof w1 / sizeof w1[0]; i++) {
        s = s * 1103515245u + 12345u;
        w1[i] = ((float)(s >> 8) / 16777216.0f - 0.5f) * (i % 7 == 0 ? 8.0f : 1.0f);
    }
    w1[5] = 0.0f;
    for (size_t i = 0; i < 13; i++)
        b1[i] = (float)i / 13.0f;
    for (size_t i = 0; i < sizeof w2 / sizeof w2[0]; i++)
        w2[i] = slim_f32_to_bf16(sinf((float)i));
    for (size_t i = 0; i < sizeof w3 / sizeof w3[0]; i++)
        w3[i] = slim_f32_to_f16(cosf((float)i) * 100.0f);
    small[0] = 1.0f;
    small[1] = -2.0f;
    small[2] = 0.5f;
    memset(t, 0, sizeof t);
    t[0] = (struct slim_tensor){.name = "layer.0.weight", .dtype = SLIM_DT_F32, .ndim = 2,
                                .shape = {13, 24}, .data = w1, .nbytes = sizeof w1};
    t[1] = (struct slim_tensor){.name = "layer.0.bias", .dtype = SLIM_DT_F32, .ndim = 1,
                                .shape = {13}, .data = b1, .nbytes = sizeof b1};
    t[2] = (struct slim_tensor){.name = "layer.1.weight", .dtype = SLIM_DT_BF16, .ndim = 2,
                                .shape = {8, 13}, .data = w2, .nbytes = sizeof w2};
    t[3] = (struct slim_tensor){.name = "conv.weight", .dtype = SLIM_DT_F16, .ndim = 4,
                                .shape = {6, 5, 1, 1}, .data = w3, .nbytes = sizeof w3};
    t[4] = (struct slim_tensor){.name = "ids", .dtype = SLIM_DT_I64, .ndim = 1, .shape = {4},
                                .data = ids, .nbytes = sizeof ids};
    t[5] = (struct slim_tensor){.name = "tiny.weight", .dtype = SLIM_DT_F32, .ndim = 2,
                                .shape = {1, 3}, .data = small, .nbytes = sizeof small};
    snprintf(model_path, sizeof model_path, "%s/model.safetensors", fuzz_scratch());
    snprintf(out_path, sizeof out_path, "%s/out.safetensors", fuzz_scratch());
    if (slim_st_write(model_path, t, 6, NULL, &err)) {
        fprintf(stderr, "fuzz_spec: cannot write the model: %s\n", err.msg);
        abort();
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    make_model();
    return 0;
}

static void run(const struct slim_spec *spec)
{
    struct slim_run_opts opts = {.threads = 1};
    struct slim_error err;
    struct slim_model m;
    json_t *report = NULL;
    uint64_t bytes = 0;
    char *text;
    int rc;

    rc = slim_pipeline_estimate(spec, model_path, &bytes, &err);
    if (rc) {
        FUZZ_ASSERT(rc < 0 && err.code == rc, "estimate: rc %d, code %d", rc, err.code);
        return;
    }
    rc = slim_pipeline_run(spec, model_path, out_path, &opts, &report, &err);
    if (rc) {
        FUZZ_ASSERT(rc < 0 && err.code == rc && !report, "run: rc %d, code %d", rc, err.code);
        /* a spec the daemon queued fails only for what the model holds
         * (the passes' own checks on a tensor), never as a crash or a
         * numeric accident of the kernels' making */
        FUZZ_ASSERT(rc != SLIM_EINTERNAL && rc != SLIM_ENOMEM, "run: %s", err.msg);
        return;
    }
    text = json_dumps(report, JSON_COMPACT);
    FUZZ_ASSERT(text != NULL, "the report does not dump as JSON");
    free(text);
    json_decref(report);
    if (slim_pipeline_output_kind(model_path) == 0) {
        rc = slim_st_open(out_path, &m, &err);
        FUZZ_ASSERT(rc == 0, "the artifact does not open: %s", err.msg);
        slim_model_release(&m);
    }
    unlink(out_path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const allow[] = {"model", NULL};
    struct slim_spec *spec = NULL;
    struct slim_error err;
    json_error_t jerr;
    long live = slim_alloc_live();
    json_t *body;
    int rc;

    body = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &jerr);
    if (!body)
        return 0;
    rc = slim_spec_parse(body, allow, &spec, &err);
    if (rc) {
        FUZZ_ASSERT(rc < 0 && err.code == rc && !spec, "parse: rc %d", rc);
    } else {
        uint64_t mem = slim_spec_memory_limit(spec);
        const char *ds = slim_spec_eval_dataset(spec);
        (void)mem;
        FUZZ_ASSERT(!ds || strlen(ds) <= 100, "eval.dataset longer than the parser allows");
        run(spec);
        slim_spec_free(spec);
    }
    json_decref(body);
    slim_alloc_trim();
    fuzz_check_live(live, "slim_spec_parse");
    return 0;
}
