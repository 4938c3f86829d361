/*
 * test_engine.c - the inference engine (passes/engine/) on small graphs
 * built here as protobuf-c ModelProtos: Conv against a direct seven-loop
 * convolution (groups, pads, strides, dilations, auto_pad), a Conv with
 * its Relu and pool fused against the two run apart, Gemm's trans
 * flags and C broadcast against a plain loop, numpy broadcasting of the
 * elementwise ops against index arithmetic, Softmax and the pools and a
 * blocked INT4 DequantizeLinear against values worked out by hand; and
 * the graph: a shuffled node list sorted, a cycle and an undefined input
 * rejected, the unsupported-operator message, an int64 shape chain over
 * two batch sizes, buffers reused from run to run, and allocation
 * failures at every step of compiling a model without a leak.
 *
 * Each test builds its graph with the gb_* helpers (allocations in an
 * arena freed at the end of the test), writes it with protobuf-c's
 * packer and opens it with slim_onnx_open, as the CLI does.
 */
#include <math.h>
#include "tests/unit/util.h"
#include "passes/engine/engine.h"

#include "tests/unit/graph_builder.h"   /* gb_*: the graph builder */

struct loaded {
    struct slim_onnx m;
    struct slim_engine *e;
};

/* Opens g as an engine; returns the engine's error code. */
static int gb_load(struct gb *g, struct loaded *l, struct slim_error *err)
{
    int rc;
    memset(l, 0, sizeof *l);
    if ((rc = slim_onnx_open(gb_write(g, "m.onnx"), &l->m, err)))
        return rc;
    if ((rc = slim_engine_new(&l->m, &l->e, err)))
        slim_onnx_release(&l->m);
    return rc;
}

static void loaded_release(struct loaded *l)
{
    slim_engine_free(l->e);
    slim_onnx_release(&l->m);
}

/* Builds, runs once on x (batch samples), copies the output to y (y_cap
 * floats); returns the output's element count. */
static int64_t gb_run(struct gb *g, const float *x, int64_t batch, float *y, int64_t y_cap)
{
    struct loaded l;
    struct slim_error err;
    const float *out;
    int64_t ysize, shape[SLIM_MAX_DIMS], n = 1;
    int nd;
    if (gb_load(g, &l, &err))
        fail_msg("engine: %s", err.msg);
    if (slim_engine_run(l.e, x, batch, &out, &ysize, &err))
        fail_msg("run: %s", err.msg);
    slim_engine_output_shape(l.e, shape, &nd);
    for (int i = 0; i < nd; i++)
        n *= shape[i];
    assert_true(n <= y_cap);
    memcpy(y, out, (size_t)n * sizeof *y);
    loaded_release(&l);
    return n;
}

/* ---- numbers ----------------------------------------------------------------- */

static uint64_t rng = 88172645463325252ull;

static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static void fill(float *v, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        v[i] = frand();
}

/* max|a - b| <= tol * max|b| + 1e-6 */
static void assert_close(const float *a, const double *b, int64_t n, double tol, const char *what)
{
    double err = 0, scale = 0;
    for (int64_t i = 0; i < n; i++) {
        err = fmax(err, fabs((double)a[i] - b[i]));
        scale = fmax(scale, fabs(b[i]));
    }
    if (!(err <= tol * scale + 1e-6))
        fail_msg("%s: max|diff| %g over max|ref| %g", what, err, scale);
}

/* ---- Conv against a direct convolution ----------------------------------------- */

struct conv_case {
    const char *what;
    int64_t n, c, h, w, m, kh, kw, group, sh, sw, dh, dw, pads[4];
    const char *auto_pad;       /* NULL: explicit pads */
    int bias;
};

/* The output size and begin pads ONNX gives a case. */
static void conv_out(const struct conv_case *cc, int64_t *oh, int64_t *ow, int64_t *pt,
                     int64_t *pl)
{
    int64_t ekh = (cc->kh - 1) * cc->dh + 1, ekw = (cc->kw - 1) * cc->dw + 1;
    if (cc->auto_pad && strcmp(cc->auto_pad, "VALID")) {
        int64_t th, tw;
        *oh = (cc->h + cc->sh - 1) / cc->sh;
        *ow = (cc->w + cc->sw - 1) / cc->sw;
        th = (*oh - 1) * cc->sh + ekh - cc->h;
        tw = (*ow - 1) * cc->sw + ekw - cc->w;
        th = th < 0 ? 0 : th;
        tw = tw < 0 ? 0 : tw;
        *pt = !strcmp(cc->auto_pad, "SAME_UPPER") ? th / 2 : th - th / 2;
        *pl = !strcmp(cc->auto_pad, "SAME_UPPER") ? tw / 2 : tw - tw / 2;
        return;
    }
    if (cc->auto_pad) {
        *pt = *pl = 0;
        *oh = (cc->h - ekh) / cc->sh + 1;
        *ow = (cc->w - ekw) / cc->sw + 1;
        return;
    }
    *pt = cc->pads[0];
    *pl = cc->pads[1];
    *oh = (cc->h + cc->pads[0] + cc->pads[2] - ekh) / cc->sh + 1;
    *ow = (cc->w + cc->pads[1] + cc->pads[3] - ekw) / cc->sw + 1;
}

static void conv_check(const struct conv_case *cc)
{
    int64_t cg = cc->c / cc->group, mg = cc->m / cc->group, oh, ow, pt, pl;
    int64_t xd[3] = {cc->c, cc->h, cc->w}, wd[4] = {cc->m, cg, cc->kh, cc->kw}, bd[1] = {cc->m};
    int64_t nx = cc->n * cc->c * cc->h * cc->w, nw = cc->m * cg * cc->kh * cc->kw, ny;
    float *x = malloc((size_t)nx * sizeof *x), *w = malloc((size_t)nw * sizeof *w);
    float b[64], *y;
    double *ref;
    Onnx__AttributeProto *attrs[8];
    int na = 0;
    struct gb g;

    conv_out(cc, &oh, &ow, &pt, &pl);
    ny = cc->n * cc->m * oh * ow;
    y = malloc((size_t)ny * sizeof *y);
    ref = malloc((size_t)ny * sizeof *ref);
    fill(x, nx);
    fill(w, nw);
    fill(b, cc->m);
    gb_init(&g, 13, 3, xd);
    gb_init_f(&g, "w", 4, wd, w);
    gb_init_f(&g, "b", 1, bd, b);
    attrs[na++] = attr_i("group", cc->group);
    attrs[na++] = attr_ints("strides", 2, (int64_t[]){cc->sh, cc->sw});
    attrs[na++] = attr_ints("dilations", 2, (int64_t[]){cc->dh, cc->dw});
    if (cc->auto_pad)
        attrs[na++] = attr_s("auto_pad", cc->auto_pad);
    else
        attrs[na++] = attr_ints("pads", 4, cc->pads);
    attrs[na] = NULL;
    gb_node(&g, "Conv", "conv", cc->bias ? "x,w,b" : "x,w", "y", attrs);
    assert_int_equal(gb_run(&g, x, cc->n, y, ny), ny);

    /* the direct convolution: n, m, oh, ow, then c, kh, kw of m's group */
    for (int64_t n = 0; n < cc->n; n++)
        for (int64_t m = 0; m < cc->m; m++)
            for (int64_t i = 0; i < oh; i++)
                for (int64_t j = 0; j < ow; j++) {
                    double acc = cc->bias ? b[m] : 0.0;
                    int64_t gi = m / mg;
                    for (int64_t c = 0; c < cg; c++)
                        for (int64_t kh = 0; kh < cc->kh; kh++)
                            for (int64_t kw = 0; kw < cc->kw; kw++) {
                                int64_t ih = i * cc->sh - pt + kh * cc->dh;
                                int64_t iw = j * cc->sw - pl + kw * cc->dw;
                                if (ih < 0 || ih >= cc->h || iw < 0 || iw >= cc->w)
                                    continue;
                                acc += (double)x[((n * cc->c + gi * cg + c) * cc->h + ih) * cc->w +
                                                 iw] *
                                       w[((m * cg + c) * cc->kh + kh) * cc->kw + kw];
                            }
                    ref[((n * cc->m + m) * oh + i) * ow + j] = acc;
                }
    assert_close(y, ref, ny, 1e-5, cc->what);
    free(x);
    free(w);
    free(y);
    free(ref);
    arena_free();
}

static void test_conv_reference(void **state)
{
    static const struct conv_case cases[] = {
        {"3x3 pad 1", 3, 4, 9, 8, 5, 3, 3, 1, 1, 1, 1, 1, {1, 1, 1, 1}, NULL, 1},
        {"no bias", 2, 3, 7, 7, 4, 3, 3, 1, 1, 1, 1, 1, {0, 0, 0, 0}, NULL, 0},
        {"strides 2x3, asymmetric pads", 2, 3, 11, 10, 4, 3, 2, 1, 2, 3, 1, 1, {0, 1, 2, 1}, NULL,
         1},
        {"dilations 2x3", 2, 2, 12, 13, 3, 3, 3, 1, 1, 1, 2, 3, {2, 1, 0, 3}, NULL, 1},
        {"group 2", 2, 4, 7, 6, 6, 3, 3, 2, 1, 1, 1, 1, {1, 1, 1, 1}, NULL, 1},
        {"depthwise stride 2", 2, 6, 9, 9, 6, 3, 3, 6, 2, 2, 1, 1, {1, 1, 1, 1}, NULL, 1},
        {"group 3, stride 2, dilation 2", 1, 6, 13, 12, 9, 3, 2, 3, 2, 2, 2, 2, {1, 0, 1, 2},
         NULL, 1},
        {"1x1", 3, 8, 5, 4, 6, 1, 1, 1, 1, 1, 1, 1, {0, 0, 0, 0}, NULL, 1},
        {"1x1 group 2", 2, 8, 5, 4, 6, 1, 1, 2, 1, 1, 1, 1, {0, 0, 0, 0}, NULL, 1},
        {"1x1 stride 2", 2, 3, 7, 7, 4, 1, 1, 1, 2, 2, 1, 1, {0, 0, 0, 0}, NULL, 1},
        {"SAME_UPPER stride 2", 2, 3, 8, 7, 4, 3, 3, 1, 2, 2, 1, 1, {0}, "SAME_UPPER", 1},
        {"SAME_LOWER 4x4", 2, 3, 7, 8, 4, 4, 4, 1, 1, 1, 1, 1, {0}, "SAME_LOWER", 1},
        {"VALID stride 2", 2, 3, 9, 8, 4, 3, 2, 1, 2, 1, 1, 1, {0}, "VALID", 1},
        /* more samples than one im2col chunk holds (256 K floats) */
        {"many samples", 300, 8, 12, 12, 8, 3, 3, 1, 1, 1, 1, 1, {1, 1, 1, 1}, NULL, 1},
    };
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        conv_check(&cases[i]);
}

/* A Conv with its Relu and pool fused (one node's chunks pooled in
 * cache) gives what the two run apart give: Conv+Relu in one model, the
 * pool over its output in another. */
static void fused_pool_check(const char *pool, Onnx__AttributeProto **pattrs, const char *what)
{
    enum { N = 200, C = 3, H = 11, W = 10, M = 4 };   /* 3 chunks of samples */
    int64_t xd[3] = {C, H, W}, wd[4] = {M, C, 3, 3}, bd[1] = {M}, yd[3] = {M, H, W};
    float x[N * C * H * W], w[M * C * 9], b[M], *conv = malloc(N * M * H * W * sizeof(float));
    float fused[N * M * H * W], apart[N * M * H * W];
    double ref[N * M * H * W];
    int64_t n1, n2;
    struct gb g;
    fill(x, N * C * H * W);
    fill(w, M * C * 9);
    fill(b, M);
    for (int k = 0; k < 2; k++) {
        gb_init(&g, 13, 3, xd);
        gb_init_f(&g, "w", 4, wd, w);
        gb_init_f(&g, "b", 1, bd, b);
        gb_node(&g, "Conv", "conv", "x,w,b", "c",
                (Onnx__AttributeProto *[]){attr_ints("pads", 4, (int64_t[]){1, 1, 1, 1}), NULL});
        gb_node(&g, "Relu", "relu", "c", k ? "r" : "y", NULL);
        if (k)
            gb_node(&g, pool, "pool", "r", "y", pattrs);
        if (k)
            n1 = gb_run(&g, x, N, fused, N * M * H * W);
        else
            assert_int_equal(gb_run(&g, x, N, conv, N * M * H * W), N * M * H * W);
    }   /* the arena is freed at the end: pattrs live in it */
    gb_init(&g, 13, 3, yd);
    gb_node(&g, pool, "pool", "x", "y", pattrs);
    n2 = gb_run(&g, conv, N, apart, N * M * H * W);
    assert_int_equal(n1, n2);
    for (int64_t i = 0; i < n2; i++)
        ref[i] = apart[i];
    assert_close(fused, ref, n2, 1e-6, what);
    free(conv);
    arena_free();
}

static void test_conv_pool_fused(void **state)
{
    (void)state;
    fused_pool_check("MaxPool", (Onnx__AttributeProto *[]){
        attr_ints("kernel_shape", 2, (int64_t[]){2, 2}), attr_ints("strides", 2, (int64_t[]){2, 2}),
        NULL}, "MaxPool 2x2 fused");
    fused_pool_check("MaxPool", (Onnx__AttributeProto *[]){
        attr_ints("kernel_shape", 2, (int64_t[]){3, 3}), attr_ints("strides", 2, (int64_t[]){2, 2}),
        attr_ints("pads", 4, (int64_t[]){1, 1, 1, 1}), attr_i("ceil_mode", 1), NULL},
        "MaxPool 3x3 pads ceil_mode fused");
    fused_pool_check("AveragePool", (Onnx__AttributeProto *[]){
        attr_ints("kernel_shape", 2, (int64_t[]){3, 2}), attr_ints("strides", 2, (int64_t[]){2, 1}),
        attr_ints("pads", 4, (int64_t[]){1, 0, 1, 1}), attr_i("count_include_pad", 1), NULL},
        "AveragePool fused");
}

/* ---- Gemm --------------------------------------------------------------------------- */

static void test_gemm_trans_flags(void **state)
{
    enum { M = 5, K = 7, N = 6 };
    float a[M * K], b[K * N], c[N], y[M * N];
    double ref[M * N];
    (void)state;
    fill(a, M * K);
    fill(b, K * N);
    fill(c, N);
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            struct gb g;
            int64_t xd[1] = {ta ? M : K}, bd[2] = {tb ? N : K, tb ? K : N}, cd[1] = {N};
            char what[64];
            gb_init(&g, 13, 1, xd);
            gb_init_f(&g, "b", 2, bd, b);
            gb_init_f(&g, "c", 1, cd, c);
            gb_node(&g, "Gemm", "gemm", "x,b,c", "y",
                    (Onnx__AttributeProto *[]){attr_i("transA", ta), attr_i("transB", tb),
                                               attr_f("alpha", 0.5f), attr_f("beta", -2.0f),
                                               NULL});
            /* x is A as stored: (K, M) when transA */
            assert_int_equal(gb_run(&g, a, ta ? K : M, y, M * N), M * N);
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++) {
                    double acc = 0;
                    for (int k = 0; k < K; k++)
                        acc += (double)(ta ? a[k * M + i] : a[i * K + k]) *
                               (tb ? b[j * K + k] : b[k * N + j]);
                    ref[i * N + j] = 0.5 * acc - 2.0 * c[j];
                }
            snprintf(what, sizeof what, "Gemm transA %d transB %d", ta, tb);
            assert_close(y, ref, M * N, 1e-5, what);
            arena_free();
        }
}

/* ---- broadcasting ---------------------------------------------------------------------- */

static void test_broadcast_binary(void **state)
{
    static const char *const ops[] = {"Add", "Sub", "Mul", "Div"};
    /* x (2, 3, 4, 5) op b of each shape, and b op x */
    static const int64_t shapes[][5] = {
        /* ndim, dims... */
        {2, 4, 1}, {2, 1, 5}, {0}, {1, 5}, {3, 3, 1, 1}, {4, 1, 3, 1, 5}, {4, 2, 3, 4, 5},
    };
    float x[120], b[120], y[120];
    double ref[120];
    (void)state;
    fill(x, 120);
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int op = 0; op < 4; op++)
            for (int swap = 0; swap < 2; swap++) {
                int nd = (int)shapes[s][0];
                int64_t bd[4], bn = 1, xd[3] = {3, 4, 5};
                struct gb g;
                char what[64];
                for (int d = 0; d < nd; d++)
                    bn *= bd[d] = shapes[s][1 + d];
                fill(b, bn);
                for (int64_t i = 0; i < bn; i++)
                    b[i] = op == 3 ? fabsf(b[i]) + 0.5f : b[i];
                gb_init(&g, 13, 3, xd);
                gb_init_f(&g, "b", nd, bd, b);
                gb_node(&g, ops[op], "op", swap ? "b,x" : "x,b", "y", NULL);
                assert_int_equal(gb_run(&g, x, 2, y, 120), 120);
                /* the reference: each output index mapped into b's shape */
                for (int64_t i = 0; i < 120; i++) {
                    int64_t idx[4] = {i / 60, i / 20 % 3, i / 5 % 4, i % 5}, bi = 0;
                    double u, v;
                    for (int d = 0; d < nd; d++) {
                        int64_t od = idx[4 - nd + d];
                        bi = bi * bd[d] + (bd[d] == 1 ? 0 : od);
                    }
                    u = swap ? b[bi] : x[i];
                    v = swap ? x[i] : b[bi];
                    ref[i] = op == 0 ? u + v : op == 1 ? u - v : op == 2 ? u * v : u / v;
                    if (op == 3 && swap && fabs(x[i]) < 1e-3)
                        ref[i] = y[i];   /* dividing by ~0: not a broadcasting question */
                }
                snprintf(what, sizeof what, "%s %s shape #%zu", ops[op], swap ? "b,x" : "x,b", s);
                assert_close(y, ref, 120, 1e-6, what);
                arena_free();
            }
}

/* ---- Softmax by hand ------------------------------------------------------------------------ */

static void test_softmax_by_hand(void **state)
{
    /* x (1, 2, 2): [[1, 2], [3, 4]] */
    const float x[4] = {1, 2, 3, 4};
    float y[4];
    double e1 = exp(1), e2 = exp(2), e3 = exp(3), e4 = exp(4), s = e1 + e2 + e3 + e4;
    int64_t xd[2] = {2, 2};
    struct gb g;
    (void)state;

    /* opset 11, axis 1: rows of everything from axis 1 on: one row of 4 */
    gb_init(&g, 11, 2, xd);
    gb_node(&g, "Softmax", "sm", "x", "y", (Onnx__AttributeProto *[]){attr_i("axis", 1), NULL});
    gb_run(&g, x, 1, y, 4);
    assert_close(y, (double[]){e1 / s, e2 / s, e3 / s, e4 / s}, 4, 1e-6, "Softmax-11 axis 1");
    arena_free();
    /* opset 13, axis 1: along dim 1 only: columns [1, 3] and [2, 4] */
    gb_init(&g, 13, 2, xd);
    gb_node(&g, "Softmax", "sm", "x", "y", (Onnx__AttributeProto *[]){attr_i("axis", 1), NULL});
    gb_run(&g, x, 1, y, 4);
    assert_close(y, (double[]){e1 / (e1 + e3), e2 / (e2 + e4), e3 / (e1 + e3), e4 / (e2 + e4)},
                 4, 1e-6, "Softmax-13 axis 1");
    arena_free();
    /* opset 13 default axis -1: rows [1, 2] and [3, 4]; LogSoftmax of the same */
    gb_init(&g, 13, 2, xd);
    gb_node(&g, "LogSoftmax", "lsm", "x", "y", NULL);
    gb_run(&g, x, 1, y, 4);
    assert_close(y, (double[]){1 - log(e1 + e2), 2 - log(e1 + e2), 3 - log(e3 + e4),
                               4 - log(e3 + e4)}, 4, 1e-6, "LogSoftmax-13");
    arena_free();
}

/* ---- pools by hand -------------------------------------------------------------------------- */

static void test_pools_by_hand(void **state)
{
    /* one 4x4 plane: 0 .. 15 */
    float x[16], y[16];
    int64_t xd[3] = {1, 4, 4};
    struct gb g;
    (void)state;
    for (int i = 0; i < 16; i++)
        x[i] = (float)i;

    gb_init(&g, 13, 3, xd);
    gb_node(&g, "MaxPool", "mp", "x", "y",
            (Onnx__AttributeProto *[]){attr_ints("kernel_shape", 2, (int64_t[]){2, 2}),
                                       attr_ints("strides", 2, (int64_t[]){2, 2}), NULL});
    assert_int_equal(gb_run(&g, x, 1, y, 16), 4);
    assert_close(y, (double[]){5, 7, 13, 15}, 4, 0, "MaxPool 2x2");
    arena_free();

    /* 3x3 stride 2, pads 1: windows centred on (0,0), (0,2), (2,0), (2,2).
     * Window at (0,0) covers rows -1..1, cols -1..1: inside are 0,1,4,5
     * (sum 10), 4 of 9 positions; at (0,2): 1,2,3,5,6,7 (sum 24), 6; at
     * (2,0): 4,5,8,9,12,13 (51), 6; at (2,2): 5,6,7,9,10,11,13,14,15 (90), 9. */
    for (int cip = 0; cip < 2; cip++) {
        gb_init(&g, 13, 3, xd);
        gb_node(&g, "AveragePool", "ap", "x", "y",
                (Onnx__AttributeProto *[]){attr_ints("kernel_shape", 2, (int64_t[]){3, 3}),
                                           attr_ints("strides", 2, (int64_t[]){2, 2}),
                                           attr_ints("pads", 4, (int64_t[]){1, 1, 1, 1}),
                                           attr_i("count_include_pad", cip), NULL});
        assert_int_equal(gb_run(&g, x, 1, y, 16), 4);
        if (cip)
            assert_close(y, (double[]){10 / 9.0, 24 / 9.0, 51 / 9.0, 90 / 9.0}, 4, 1e-6,
                         "AveragePool count_include_pad");
        else
            assert_close(y, (double[]){10 / 4.0, 24 / 6.0, 51 / 6.0, 90 / 9.0}, 4, 1e-6,
                         "AveragePool");
        arena_free();
    }

    /* ceil_mode: 3x3 stride 2 without pads over 4x4 gives 2x2 (floor: 1x1);
     * the windows at 2 are clipped to rows/cols 2..3 */
    gb_init(&g, 13, 3, xd);
    gb_node(&g, "MaxPool", "mp", "x", "y",
            (Onnx__AttributeProto *[]){attr_ints("kernel_shape", 2, (int64_t[]){3, 3}),
                                       attr_ints("strides", 2, (int64_t[]){2, 2}),
                                       attr_i("ceil_mode", 1), NULL});
    assert_int_equal(gb_run(&g, x, 1, y, 16), 4);
    assert_close(y, (double[]){10, 11, 14, 15}, 4, 0, "MaxPool ceil_mode");
    arena_free();

    gb_init(&g, 13, 3, xd);
    gb_node(&g, "GlobalAveragePool", "gap", "x", "y", NULL);
    assert_int_equal(gb_run(&g, x, 1, y, 16), 1);
    assert_close(y, (double[]){7.5}, 1, 1e-7, "GlobalAveragePool");
    arena_free();
}

/* ---- blocked INT4 DequantizeLinear by hand ---------------------------------------------------- */

static void test_dq_blocked_int4(void **state)
{
    /* w (5, 2) INT4, blocks of 2 along axis 0 (3 blocks, the last one
     * short), row-major values 1 2 | -8 -1 | 7 0 | -3 4 | 5 -6, packed
     * two per byte, low nibble first */
    const uint8_t wq[5] = {0x21, 0xF8, 0x07, 0x4D, 0xA5};
    const float ws[6] = {0.5f, 0.25f, 2.0f, 1.0f, 0.1f, 0.2f};   /* (3, 2) */
    const uint8_t wz[3] = {0x01, 0xF0, 0x00};                     /* (3, 2): 1 0 | 0 -1 | 0 0 */
    const double want[10] = {(1 - 1) * 0.5, (2 - 0) * 0.25, (-8 - 1) * 0.5, (-1 - 0) * 0.25,
                             (7 - 0) * 2.0, (0 + 1) * 1.0,  (-3 - 0) * 2.0, (4 + 1) * 1.0,
                             5 * 0.1,       -6 * 0.2};
    float x[10], y[10];
    int64_t xd[2] = {5, 2}, wd[2] = {5, 2}, sd[2] = {3, 2};
    struct gb g;
    (void)state;

    /* y = x + dq(w) with x = 0: the folded constant comes out as it is */
    memset(x, 0, sizeof x);
    gb_init(&g, 21, 2, xd);
    gb_init_raw(&g, "wq", SLIM_ONNX_INT4, 2, wd, wq, sizeof wq);
    gb_init_f(&g, "ws", 2, sd, ws);
    gb_init_raw(&g, "wz", SLIM_ONNX_INT4, 2, sd, wz, sizeof wz);
    gb_node(&g, "DequantizeLinear", "dq", "wq,ws,wz", "w",
            (Onnx__AttributeProto *[]){attr_i("axis", 0), attr_i("block_size", 2), NULL});
    gb_node(&g, "Add", "add", "x,w", "y", NULL);
    assert_int_equal(gb_run(&g, x, 1, y, 10), 10);
    assert_close(y, want, 10, 1e-7, "INT4 blocked");
    arena_free();

    /* a scale whose block count does not fit is refused when compiled
     * (the DequantizeLinear is folded then) */
    {
        struct loaded l;
        struct slim_error err;
        int64_t bad[2] = {2, 2};
        gb_init(&g, 21, 2, xd);
        gb_init_raw(&g, "wq", SLIM_ONNX_INT4, 2, wd, wq, sizeof wq);
        gb_init_f(&g, "ws", 2, bad, ws);
        gb_node(&g, "DequantizeLinear", "dq", "wq,ws", "w",
                (Onnx__AttributeProto *[]){attr_i("axis", 0), attr_i("block_size", 2), NULL});
        gb_node(&g, "Add", "add", "x,w", "y", NULL);
        assert_int_equal(gb_load(&g, &l, &err), SLIM_EINVAL);
        assert_non_null(strstr(err.msg, "node 'dq' (DequantizeLinear)"));
        arena_free();
    }
}

/* ---- the graph ---------------------------------------------------------------------------------- */

/* x (N, 3, 4) -> Shape -> Gather(0) -> Unsqueeze -> Concat(-1) -> Reshape
 * -> MatMul w (12, 2) -> Relu: the nodes in the given order. */
static void chain_graph(struct gb *g, const int *order)
{
    static const int64_t xd[2] = {3, 4}, one[1] = {1}, wd[2] = {12, 2};
    static const int64_t zero = 0, minus1 = -1, ax0 = 0;
    float w[24];
    for (int i = 0; i < 24; i++)
        w[i] = (float)(i % 5) - 2.0f;
    gb_init(g, 13, 2, xd);
    gb_init_i64(g, "zero", 0, NULL, &zero);
    gb_init_i64(g, "minus1", 1, one, &minus1);
    gb_init_i64(g, "ax0", 1, one, &ax0);
    gb_init_f(g, "w", 2, wd, w);
    for (int k = 0; k < 7; k++)
        switch (order[k]) {
        case 0: gb_node(g, "Shape", "shape", "x", "s", NULL); break;
        case 1:
            gb_node(g, "Gather", "gather", "s,zero", "n",
                    (Onnx__AttributeProto *[]){attr_i("axis", 0), NULL});
            break;
        case 2: gb_node(g, "Unsqueeze", "unsqueeze", "n,ax0", "n1", NULL); break;
        case 3:
            gb_node(g, "Concat", "concat", "n1,minus1", "t",
                    (Onnx__AttributeProto *[]){attr_i("axis", 0), NULL});
            break;
        case 4: gb_node(g, "Reshape", "reshape", "x,t", "flat", NULL); break;
        case 5: gb_node(g, "MatMul", "matmul", "flat,w", "h", NULL); break;
        case 6: gb_node(g, "Relu", "relu", "h", "y", NULL); break;
        }
}

static void chain_reference(const float *x, int64_t batch, double *ref)
{
    for (int64_t b = 0; b < batch; b++)
        for (int j = 0; j < 2; j++) {
            double acc = 0;
            for (int k = 0; k < 12; k++)
                acc += (double)x[b * 12 + k] * ((float)((k * 2 + j) % 5) - 2.0f);
            ref[b * 2 + j] = acc > 0 ? acc : 0;
        }
}

static void test_topological_order(void **state)
{
    static const int sorted[7] = {0, 1, 2, 3, 4, 5, 6};
    static const int shuffled[7] = {6, 4, 2, 5, 0, 3, 1};
    float x[5 * 12], y[10];
    double ref[10];
    struct gb g;
    (void)state;
    fill(x, 5 * 12);
    chain_reference(x, 5, ref);
    chain_graph(&g, sorted);
    assert_int_equal(gb_run(&g, x, 5, y, 10), 10);
    assert_close(y, ref, 10, 1e-6, "sorted");
    arena_free();
    chain_graph(&g, shuffled);
    assert_int_equal(gb_run(&g, x, 5, y, 10), 10);
    assert_close(y, ref, 10, 1e-6, "shuffled");
    arena_free();
}

static void test_runs_reuse_buffers(void **state)
{
    static const int sorted[7] = {0, 1, 2, 3, 4, 5, 6};
    float x[9 * 12];
    double ref[18];
    const float *y;
    int64_t ysize, shape[SLIM_MAX_DIMS];
    int nd;
    long live;
    struct loaded l;
    struct slim_error err;
    struct gb g;
    (void)state;

    fill(x, 9 * 12);
    chain_graph(&g, sorted);
    if (gb_load(&g, &l, &err))
        fail_msg("%s", err.msg);
    /* the int64 chain follows the batch: 9, then 2, then 9 again */
    for (int r = 0; r < 3; r++) {
        int64_t batch = r == 1 ? 2 : 9;
        if (slim_engine_run(l.e, x, batch, &y, &ysize, &err))
            fail_msg("%s", err.msg);
        assert_int_equal(ysize, 2);
        slim_engine_output_shape(l.e, shape, &nd);
        assert_int_equal(nd, 2);
        assert_int_equal(shape[0], batch);
        chain_reference(x, batch, ref);
        assert_close(y, ref, 2 * batch, 1e-6, "chain");
    }
    /* a further run of a size already seen allocates nothing */
    live = slim_alloc_live();
    if (slim_engine_run(l.e, x, 9, &y, &ysize, &err) ||
        slim_engine_run(l.e, x, 2, &y, &ysize, &err))
        fail_msg("%s", err.msg);
    assert_int_equal(slim_alloc_live(), live);
    loaded_release(&l);
    arena_free();
}

static void test_cycle_rejected(void **state)
{
    int64_t xd[1] = {3};
    struct loaded l;
    struct slim_error err;
    struct gb g;
    (void)state;
    /* y = a + x; a = relu(b); b = relu(a): a and b feed each other */
    gb_init(&g, 13, 1, xd);
    gb_node(&g, "Add", "add", "a,x", "y", NULL);
    gb_node(&g, "Relu", "r1", "b", "a", NULL);
    gb_node(&g, "Relu", "r2", "a", "b", NULL);
    assert_int_equal(gb_load(&g, &l, &err), SLIM_EFORMAT);
    assert_non_null(strstr(err.msg, "cycle"));
    arena_free();

    /* an input nothing makes */
    gb_init(&g, 13, 1, xd);
    gb_node(&g, "Add", "add", "x,nowhere", "y", NULL);
    assert_int_equal(gb_load(&g, &l, &err), SLIM_EFORMAT);
    assert_non_null(strstr(err.msg, "'nowhere'"));
    arena_free();
}

static void test_unsupported_message(void **state)
{
    int64_t xd[1] = {3};
    struct loaded l;
    struct slim_error err;
    struct gb g;
    (void)state;
    gb_init(&g, 13, 1, xd);
    gb_node(&g, "Relu", "r", "x", "a", NULL);
    gb_node(&g, "Foo", "bar", "a", "y", NULL);
    assert_int_equal(gb_load(&g, &l, &err), SLIM_EUNSUPPORTED);
    assert_string_equal(err.msg, "operator 'Foo' (node 'bar') is not supported by slimd's "
                        "engine");
    assert_int_equal(slim_http_status(SLIM_EUNSUPPORTED), 422);
    arena_free();
}

/* Compiling fails cleanly at every allocation: no leak, no crash. */
static void test_alloc_failures(void **state)
{
    static const int sorted[7] = {0, 1, 2, 3, 4, 5, 6};
    float x[2 * 12];
    const float *y;
    int64_t ysize;
    struct loaded l;
    struct slim_error err;
    struct gb g;
    long base;
    int rc = -1, steps = 0;
    (void)state;
    fill(x, 2 * 12);
    chain_graph(&g, sorted);
    gb_write(&g, "m.onnx");
    base = slim_alloc_live();
    for (long n = 0; rc && n < 10000; n++) {
        memset(&l, 0, sizeof l);
        slim_alloc_fail_after(n);
        rc = slim_onnx_open(gb_write(&g, "m.onnx"), &l.m, &err);
        if (rc) {
            /* protobuf-c reports a failed allocation as a failed unpack */
            assert_true(rc == SLIM_ENOMEM || rc == SLIM_EFORMAT);
        } else {
            rc = slim_engine_new(&l.m, &l.e, &err);
            if (!rc)
                rc = slim_engine_run(l.e, x, 2, &y, &ysize, &err);
            if (rc)
                assert_int_equal(rc, SLIM_ENOMEM);
        }
        slim_alloc_fail_after(-1);
        loaded_release(&l);
        assert_int_equal(slim_alloc_live(), base);
        steps++;
    }
    assert_int_equal(rc, 0);
    assert_true(steps > 10);
    arena_free();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conv_reference),
        cmocka_unit_test(test_conv_pool_fused),
        cmocka_unit_test(test_gemm_trans_flags),
        cmocka_unit_test(test_broadcast_binary),
        cmocka_unit_test(test_softmax_by_hand),
        cmocka_unit_test(test_pools_by_hand),
        cmocka_unit_test(test_dq_blocked_int4),
        cmocka_unit_test(test_topological_order),
        cmocka_unit_test(test_runs_reuse_buffers),
        cmocka_unit_test(test_cycle_rejected),
        cmocka_unit_test(test_unsupported_message),
        cmocka_unit_test(test_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
