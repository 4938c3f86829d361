/*
 * fuzz_onnx.c - libFuzzer target for the ONNX reader and the engine
 * that runs uploaded graphs.
 *
 * The input is a .onnx file.  slim_onnx_parse unpacks and checks it
 * (every initializer's bytes against its dims and type; external data is
 * refused, since bytes alone come with no folder); then what an upload
 * and an eval job do with a model that passed: slim_onnx_describe (the
 * model's record, which must exist for every model the reader accepts,
 * or the upload would answer 500), the engine's operator check, the
 * engine's compile (with a limit on its memory, which it must keep), and,
 * when the graph declares a small per-sample input, one run on a batch
 * of two samples of ones.  Every initializer's
 * bytes are read end to end, so a span the reader let through that runs
 * past its buffer is a sanitizer report here rather than a wrong weight
 * later.
 */
#include "tests/fuzz/fuzz.h"
#include "passes/formats/onnx.h"
#include "passes/engine/engine.h"

/* Largest per-sample input the target runs (elements). */
#define RUN_MAX_ELEMS 4096
/* What the engine's tensors may hold at once: a few hundred bytes of
 * graph can ask for any size (broadcasts, pads, MatMul shapes), and past
 * the limit the engine must say so (SLIM_EBUDGET), not allocate. */
#define ENGINE_MAX_BYTES ((uint64_t)256 << 20)

static void touch_initializers(struct slim_onnx *m)
{
    struct slim_error err;
    for (size_t i = 0; i < m->graph->n_initializer; i++) {
        const Onnx__TensorProto *t = m->graph->initializer[i];
        const void *d;
        size_t nb;
        unsigned sum = 0;
        if (t->has_data_type && t->data_type == SLIM_ONNX_STRING)
            continue;
        FUZZ_ASSERT(slim_onnx_tensor_data(m, t, &d, &nb, NULL, &err) == 0,
                    "initializer %zu passed the reader's check but not now: %s", i, err.msg);
        for (size_t k = 0; k < nb; k++)
            sum += ((const unsigned char *)d)[k];
        (void)sum;
    }
}

static void run_engine(struct slim_onnx *m)
{
    struct slim_engine *e = NULL;
    struct slim_error err;
    const char *name;
    const float *y;
    int64_t dims[SLIM_MAX_DIMS + 1], per, ysize;
    int nd = 0, rc;
    float *x;

    rc = slim_engine_new_limited(m, ENGINE_MAX_BYTES, &e, &err);
    if (rc) {
        FUZZ_ASSERT(rc < 0 && err.code == rc && !e, "engine_new: rc %d", rc);
        return;
    }
    per = slim_engine_input(e, &name, dims, &nd);
    if (per > 0 && per <= RUN_MAX_ELEMS) {
        x = malloc(2 * (size_t)per * sizeof *x);
        FUZZ_ASSERT(x != NULL, "malloc");
        for (int64_t i = 0; i < 2 * per; i++)
            x[i] = 1.0f;
        rc = slim_engine_run(e, x, 2, &y, &ysize, &err);
        if (!rc && ysize > 0) {   /* ASan checks the output's extent */
            volatile float last = y[2 * ysize - 1];
            (void)last;
        }
        free(x);
    }
    slim_engine_free(e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct slim_onnx m;
    struct slim_error err;
    long live = slim_alloc_live();
    json_t *info;
    int rc;

    (void)slim_onnx_sniff(data, size);
    rc = slim_onnx_parse(data, size, &m, &err);
    if (rc) {
        FUZZ_ASSERT(rc < 0 && err.code == rc && !m.model, "parse: rc %d", rc);
        fuzz_check_live(live, "slim_onnx_parse");
        return 0;
    }
    touch_initializers(&m);
    info = slim_onnx_describe(&m);
    FUZZ_ASSERT(info != NULL, "slim_onnx_describe gave nothing for a model the reader took");
    json_decref(info);
    if (slim_engine_check(&m, &err) == 0)
        run_engine(&m);
    slim_onnx_release(&m);
    slim_alloc_trim();
    fuzz_check_live(live, "slim_onnx_parse");
    return 0;
}
