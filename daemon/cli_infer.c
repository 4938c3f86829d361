/*
 * cli_infer.c - `slimd infer` and `slimd eval`: the inference engine
 * (passes/engine/) from the command line, without a server.
 *
 * infer runs a model once on a whole safetensors `input` tensor (first
 * dim = batch) and writes the first output as the tensor `output` (F32,
 * the output's own shape): what the integration tests compare with ONNX
 * Runtime.  eval runs the model over every sample of a dataset in
 * batches, R times, and prints one JSON object: samples, top-1 accuracy
 * when the file has `labels`, the best whole-set time, samples per
 * second and the batch size: what the engine benchmark reads.
 *
 * Both read the same canonical dataset form as formats/dataset.h
 * (`input`, optional integer `labels`) straight from safetensors with
 * slim_st_open; the input is converted to float once, before any timing.
 */
#include <cblas.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "daemon/cli.h"
#include "passes/engine/engine.h"

/* What both subcommands load: the model, its engine, and the input as
 * float. */
struct infer_job {
    struct slim_onnx onnx;
    struct slim_engine *engine;
    struct slim_model data;
    float *x;                   /* n * sample floats (slim_aligned_alloc) */
    int64_t n, sample;
    int64_t *labels;            /* n, or NULL */
};

static void job_release(struct infer_job *j)
{
    slim_engine_free(j->engine);
    slim_onnx_release(&j->onnx);
    slim_model_release(&j->data);
    slim_aligned_free(j->x);
    slim_free(j->labels);
    memset(j, 0, sizeof *j);
}

static int load_labels(struct infer_job *j, const struct slim_tensor *t, struct slim_error *err)
{
    if (t->ndim != 1 || t->shape[0] != j->n)
        return slim_error_set(err, SLIM_EFORMAT, "labels: shape does not match %lld samples",
                              (long long)j->n);
    if (!(j->labels = slim_malloc((size_t)(j->n ? j->n : 1) * sizeof *j->labels)))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    for (int64_t i = 0; i < j->n; i++) {
        const unsigned char *p = (const unsigned char *)t->data;
        switch (t->dtype) {
        case SLIM_DT_I64: memcpy(&j->labels[i], p + 8 * i, 8); break;
        case SLIM_DT_I32: {
            int32_t v;
            memcpy(&v, p + 4 * i, 4);
            j->labels[i] = v;
            break;
        }
        case SLIM_DT_U8: j->labels[i] = p[i]; break;
        default:
            return slim_error_set(err, SLIM_EFORMAT, "labels are %s (expected I64, I32 or U8)",
                                  slim_dtype_name(t->dtype));
        }
    }
    return 0;
}

static int job_load(struct infer_job *j, const char *model, const char *input, int want_labels,
                    struct slim_error *err)
{
    const struct slim_tensor *t, *lt;
    int64_t dims[SLIM_MAX_DIMS], want;
    int rc;

    memset(j, 0, sizeof *j);
    if ((rc = slim_onnx_open(model, &j->onnx, err)) ||
        (rc = slim_engine_new(&j->onnx, &j->engine, err))) {
        slim_error_prefix(err, "%s", model);
        return rc;
    }
    if ((rc = slim_st_open(input, &j->data, err))) {
        slim_error_prefix(err, "%s", input);
        return rc;
    }
    if (!(t = slim_model_find(&j->data, "input")) || t->ndim < 1)
        return slim_error_set(err, SLIM_EFORMAT, "%s: no tensor 'input' with a sample dim",
                              input);
    j->n = t->shape[0];
    j->sample = j->n ? slim_tensor_numel(t) / j->n : 0;
    want = slim_engine_input(j->engine, NULL, NULL, NULL);
    if (want < 0) {
        memcpy(dims, t->shape + 1, (size_t)(t->ndim - 1) * sizeof *dims);
        if ((rc = slim_engine_set_sample_shape(j->engine, dims, t->ndim - 1, err)))
            return rc;
    } else if (want != j->sample) {
        return slim_error_set(err, SLIM_EINVAL, "%s: samples of %lld values, the model takes "
                              "%lld", input, (long long)j->sample, (long long)want);
    }
    if (!(j->x = slim_aligned_alloc((size_t)slim_tensor_numel(t) * sizeof *j->x + 64)))
        return slim_error_set(err, SLIM_ENOMEM, "out of memory");
    if (t->dtype == SLIM_DT_U8) {
        const unsigned char *p = t->data;
        for (int64_t i = 0; i < slim_tensor_numel(t); i++)
            j->x[i] = p[i];
    } else if (slim_to_f32(t->dtype, t->data, (size_t)slim_tensor_numel(t), j->x)) {
        return slim_error_set(err, SLIM_EFORMAT, "%s: input is %s (expected F32, F16, BF16, "
                              "F64 or U8)", input, slim_dtype_name(t->dtype));
    }
    if (want_labels && (lt = slim_model_find(&j->data, "labels")) &&
        (rc = load_labels(j, lt, err)))
        return rc;
    return 0;
}

int slimd_infer(int argc, char **argv)
{
    struct infer_job j;
    struct slim_error err;
    struct slim_tensor out = {.name = "output", .dtype = SLIM_DT_F32};
    const float *y;
    int64_t ysize;
    int rc = 1;

    if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        slimd_usage(stdout);
        return 0;
    }
    if (argc != 4) {
        fprintf(stderr, "usage: slimd infer MODEL.onnx INPUT.safetensors OUTPUT.safetensors\n");
        return 2;
    }
    if (job_load(&j, argv[1], argv[2], 0, &err))
        goto fail;
    if (j.n < 1) {
        slim_error_set(&err, SLIM_EINVAL, "%s: no samples", argv[2]);
        goto fail;
    }
    if (slim_engine_run(j.engine, j.x, j.n, &y, &ysize, &err))
        goto fail;
    (void)ysize;   /* the output's own shape says how much there is */
    slim_engine_output_shape(j.engine, out.shape, &out.ndim);
    out.data = y;
    out.nbytes = (size_t)slim_tensor_numel(&out) * sizeof *y;
    if (slim_st_write(argv[3], &out, 1, NULL, &err))
        goto fail;
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "slimd infer: %s\n", err.msg);
out:
    job_release(&j);
    return rc;
}

static int parse_count(const char *s, long lo, long hi, long *out)
{
    char *end;
    long v;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int slimd_eval(int argc, char **argv)
{
    static const struct option opts[] = {
        {"batch", required_argument, NULL, 'b'},
        {"repeat", required_argument, NULL, 'r'},
        {"threads", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct infer_job j;
    struct slim_error err;
    long batch = 256, repeat = 1, threads = 0;
    double best = INFINITY;
    int64_t correct = 0;
    json_t *res;
    int c, rc = 1;

    optind = 1;
    while ((c = getopt_long(argc, argv, "b:r:t:h", opts, NULL)) != -1) {
        switch (c) {
        case 'b':
            if (parse_count(optarg, 1, 1L << 30, &batch)) {
                fprintf(stderr, "slimd eval: --batch '%s': expected a positive integer\n",
                        optarg);
                return 2;
            }
            break;
        case 'r':
            if (parse_count(optarg, 1, 1000000, &repeat)) {
                fprintf(stderr, "slimd eval: --repeat '%s': expected a positive integer\n",
                        optarg);
                return 2;
            }
            break;
        case 't':
            if (parse_count(optarg, 1, 256, &threads)) {
                fprintf(stderr, "slimd eval: --threads '%s': expected 1 to 256\n", optarg);
                return 2;
            }
            break;
        case 'h': slimd_usage(stdout); return 0;
        default: slimd_usage(stderr); return 2;
        }
    }
    if (optind + 2 != argc) {
        fprintf(stderr, "usage: slimd eval MODEL.onnx INPUT.safetensors [--batch N] "
                "[--repeat R] [--threads N]\n");
        return 2;
    }
    if (threads)
        openblas_set_num_threads((int)threads);
    if (job_load(&j, argv[optind], argv[optind + 1], 1, &err))
        goto fail;
    for (long r = 0; r < repeat; r++) {
        double t0 = slim_now();
        correct = 0;
        for (int64_t b0 = 0; b0 < j.n; b0 += batch) {
            int64_t cnt = j.n - b0 < batch ? j.n - b0 : batch, ysize;
            const float *y;
            if (slim_engine_run(j.engine, j.x + b0 * j.sample, cnt, &y, &ysize, &err))
                goto fail;
            if (!ysize) {
                slim_error_set(&err, SLIM_EINVAL, "the model's output has no batch dim");
                goto fail;
            }
            for (int64_t i = 0; j.labels && i < cnt; i++) {
                int64_t arg = 0;
                for (int64_t k = 1; k < ysize; k++)
                    if (y[i * ysize + k] > y[i * ysize + arg])
                        arg = k;
                correct += arg == j.labels[b0 + i];
            }
        }
        best = fmin(best, slim_now() - t0);
    }
    res = json_object();
    json_object_set_new(res, "samples", json_integer(j.n));
    if (j.labels)
        json_object_set_new(res, "accuracy", json_real(j.n ? (double)correct / (double)j.n : 0));
    json_object_set_new(res, "seconds", json_real(best));
    json_object_set_new(res, "samples_per_second",
                        json_real(best > 0 ? (double)j.n / best : 0.0));
    json_object_set_new(res, "batch", json_integer(batch));
    json_dumpf(res, stdout, JSON_REAL_PRECISION(9) | JSON_PRESERVE_ORDER);
    putchar('\n');
    json_decref(res);
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "slimd eval: %s\n", err.msg);
out:
    job_release(&j);
    return rc;
}
