/*
 * test_train.c - the trainer (passes/engine/train.h) on small graphs
 * built here as protobuf-c ModelProtos and on the committed fixtures:
 * every op's gradient (the parameters' and the input's) against central
 * finite differences of the loss, the distillation loss included; masks
 * that keep pruned weights exactly zero, shared weights that stay
 * codebook[idx], fake quantization with a straight-through gradient; two
 * runs with one seed equal to the bit; an MLP that learns a separable
 * problem; a cancel that stops within one batch; the evaluation forward
 * and slim_trainer_store checked against the inference engine; and
 * the unsupported-operator message.
 *
 * The graph builder (gb_*) is tests/unit/graph_builder.h, shared with
 * test_engine.c.
 */
#include <math.h>
#include "tests/unit/util.h"
#include "passes/engine/engine.h"
#include "passes/engine/train_internal.h"

#include "tests/unit/graph_builder.h"   /* gb_*: the graph builder */

#define ATTRS(...) ((Onnx__AttributeProto *[]){__VA_ARGS__, NULL})

/* ---- helpers ------------------------------------------------------------- */

static uint64_t rng_state = 12345;

static double urand(void)   /* [0, 1) */
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

/* n values in [-1, 1] with |v| >= 0.05 (away from Relu's kink) */
static void fill(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        double v;
        do
            v = urand() * 2.0 - 1.0;
        while (fabs(v) < 0.05);
        x[i] = (float)v;
    }
}

/* n distinct values 0.01 apart, shuffled (no ties for MaxPool) */
static void fill_distinct(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)(i - n / 2) * 0.01f + 0.003f;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)(urand() * (double)(i + 1));
        float s = x[i];
        x[i] = x[j];
        x[j] = s;
    }
}

static void gb_param(struct gb *g, const char *name, int ndim, const int64_t *dims)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= dims[i];
    float *v = amalloc((size_t)n * sizeof *v);
    fill(v, n);
    for (int64_t i = 0; i < n; i++)
        v[i] *= 0.5f;
    gb_init_f(g, name, ndim, dims, v);
}

static const char *fixture(const char *name)
{
    static char path[4096];
    const char *src = getenv("SLIMD_SRCDIR");
    snprintf(path, sizeof path, "%s/tests/fixtures/%s", src ? src : ".", name);
    return path;
}

static struct slim_trainer *trainer_of(const char *path, struct slim_onnx *m,
                                       const struct slim_train_opts *o)
{
    struct slim_error err;
    struct slim_trainer *t;
    if (slim_onnx_open(path, m, &err))
        fail_msg("open %s: %s", path, err.msg);
    if (slim_trainer_new(m, o, &t, &err))
        fail_msg("trainer: %s", err.msg);
    return t;
}

static struct slim_trainer *gb_trainer(struct gb *g, struct slim_onnx *m,
                                       const struct slim_train_opts *o)
{
    return trainer_of(gb_write(g, "t.onnx"), m, o);
}

/* ---- gradients against central differences ---------------------------------- */

enum { LOSS_CE, LOSS_BOTH, LOSS_TEACHER_PROBS };

static double loss_at(struct slim_trainer *t, const uint64_t *rng, const float *x,
                      const int64_t *lab, const float *z, int zprobs, int64_t nb)
{
    struct slim_error err;
    double l;
    memcpy(t->rng, rng, sizeof t->rng);     /* the same Dropout mask every time */
    t->training = 1;
    if (tr_step(t, x, lab, z, zprobs, nb, 0, &l, NULL, &err))
        fail_msg("step: %s", err.msg);
    return l;
}

/* One tensor: analytic gradient ga against (L(v + h) - L(v - h)) / 2h at
 * up to 24 of its n positions.  Returns the worst error over tolerance. */
static double check_tensor(struct slim_trainer *t, const uint64_t *rng, float *v,
                           const float *ga, int64_t n, float *x, const int64_t *lab,
                           const float *z, int zprobs, int64_t nb, const char *what)
{
    const double h = 3e-3;
    double worst = 0.0;
    int64_t step = n > 24 ? n / 24 : 1;
    for (int64_t i = 0; i < n; i += step) {
        float keep = v[i];
        v[i] = keep + (float)h;
        double lp = loss_at(t, rng, x, lab, z, zprobs, nb);
        v[i] = keep - (float)h;
        double lm = loss_at(t, rng, x, lab, z, zprobs, nb);
        v[i] = keep;
        double num = (lp - lm) / (2.0 * h), tol = 2e-4 + 5e-3 * fabs(num);
        double e = fabs(num - ga[i]) / tol;
        if (e > 1.0)
            print_message("%s[%lld]: analytic %.6g, numeric %.6g\n", what, (long long)i,
                          ga[i], num);
        if (e > worst)
            worst = e;
    }
    return worst;
}

/* Every parameter's and the input's gradient of graph g on nb random
 * samples; returns how many tensors were checked. */
static int grad_check_loss(struct gb *g, int64_t nb, int loss, int distinct)
{
    struct slim_onnx m;
    struct slim_train_opts o;
    struct slim_trainer *t;
    struct slim_error err;
    uint64_t rng[4];
    double l, worst = 0.0;
    int checked = 0;
    slim_train_opts_init(&o);
    o.temperature = 2.0f;
    o.alpha = 0.4f;
    t = gb_trainer(g, &m, &o);
    int64_t in = slim_trainer_input(t, NULL, NULL), c = slim_trainer_classes(t);
    assert_true(in > 0 && c > 0);
    float *x = amalloc((size_t)(nb * in) * sizeof *x), *z = amalloc((size_t)(nb * c) * 4);
    int64_t *lab = amalloc((size_t)nb * sizeof *lab);
    if (distinct)
        fill_distinct(x, nb * in);
    else
        fill(x, nb * in);
    for (int64_t i = 0; i < nb; i++)
        lab[i] = (int64_t)(urand() * (double)c);
    fill(z, nb * c);
    if (loss == LOSS_TEACHER_PROBS) {   /* rows of probabilities, one of them 0 */
        for (int64_t r = 0; r < nb; r++) {
            double s = 0;
            for (int64_t j = 0; j < c; j++)
                s += (z[r * c + j] = (float)(fabs(z[r * c + j]) * (j == 0 ? 0.0 : 1.0)));
            for (int64_t j = 0; j < c; j++)
                z[r * c + j] = (float)(z[r * c + j] / s);
        }
    } else {
        for (int64_t i = 0; i < nb * c; i++)
            z[i] *= 3.0f;
    }
    const int64_t *L = loss == LOSS_TEACHER_PROBS ? NULL : lab;
    const float *Z = loss == LOSS_CE ? NULL : z;
    int zp = loss == LOSS_TEACHER_PROBS;
    t->v[t->input].needs_grad = 1;
    tr_plan_grads(t);
    memcpy(rng, t->rng, sizeof rng);
    t->training = 1;
    if (tr_step(t, x, L, Z, zp, nb, 1, &l, NULL, &err))
        fail_msg("step: %s", err.msg);
    /* keep the analytic gradients: the finite differences overwrite nothing
     * but forward buffers, yet copy them to be plain */
    struct tv *xi = &t->v[t->input];
    if (xi->gset) {
        float *ga = amalloc((size_t)(nb * in) * sizeof *ga);
        memcpy(ga, xi->grad, (size_t)(nb * in) * sizeof *ga);
        double w = check_tensor(t, rng, x, ga, nb * in, x, L, Z, zp, nb, "input");
        worst = w > worst ? w : worst;
        checked++;
    }
    for (size_t i = 0; i < t->np; i++) {
        struct tparam *p = &t->p[i];
        if (p->is_state || !t->v[p->v].gset)
            continue;
        float *ga = amalloc((size_t)p->n * sizeof *ga);
        memcpy(ga, p->g, (size_t)p->n * sizeof *ga);
        double w = check_tensor(t, rng, p->w, ga, p->n, x, L, Z, zp, nb, t->v[p->v].name);
        worst = w > worst ? w : worst;
        checked++;
    }
    slim_trainer_free(t);
    slim_onnx_release(&m);
    if (worst > 1.0)
        fail_msg("gradient off by %.2fx the tolerance", worst);
    return checked;
}

static int grad_check(struct gb *g, int64_t nb)
{
    return grad_check_loss(g, nb, LOSS_BOTH, 0);
}

static void test_grad_gemm(void **state)
{
    struct gb g;
    int64_t in[1] = {4}, w[2] = {3, 4}, c[1] = {3}, w2[2] = {4, 3}, c2[2] = {3, 1};
    (void)state;
    /* x [N, 4] W^T * 0.7 + 1.3 C */
    gb_init(&g, 17, 1, in);
    gb_param(&g, "W", 2, w);
    gb_param(&g, "C", 1, c);
    gb_node(&g, "Gemm", "gemm", "x,W,C", "y",
            ATTRS(attr_i("transB", 1), attr_f("alpha", 0.7f), attr_f("beta", 1.3f)));
    assert_int_equal(grad_check(&g, 5), 3);
    assert_int_equal(grad_check_loss(&g, 5, LOSS_CE, 0), 3);
    assert_int_equal(grad_check_loss(&g, 5, LOSS_TEACHER_PROBS, 0), 3);
    arena_free();
    /* the batch as B: y [3, N] = W^T x^T + C [3, 1] (both trans flags, C down columns) */
    gb_init(&g, 17, 1, in);
    gb_param(&g, "W", 2, w2);
    gb_param(&g, "C", 2, c2);
    gb_node(&g, "Gemm", "gemm", "W,x,C", "y",
            ATTRS(attr_i("transA", 1), attr_i("transB", 1), attr_f("beta", 0.5f)));
    assert_int_equal(grad_check(&g, 4), 3);
    arena_free();
    /* no C, B not transposed */
    int64_t w3[2] = {4, 5};
    gb_init(&g, 17, 1, in);
    gb_param(&g, "W", 2, w3);
    gb_node(&g, "Gemm", "gemm", "x,W", "y", NULL);
    assert_int_equal(grad_check(&g, 3), 2);
    arena_free();
}

static void test_grad_matmul_add(void **state)
{
    struct gb g;
    int64_t in[2] = {3, 4}, w[2] = {4, 5}, b[1] = {5}, c[2] = {3, 1};
    (void)state;
    gb_init(&g, 17, 2, in);
    gb_param(&g, "W", 2, w);
    gb_param(&g, "b", 1, b);
    gb_param(&g, "c", 2, c);
    gb_node(&g, "MatMul", "mm", "x,W", "h", NULL);
    gb_node(&g, "Add", "add1", "h,b", "h2", NULL);        /* bias [5] over [N, 3, 5] */
    gb_node(&g, "Add", "add2", "c,h2", "y", NULL);        /* [3, 1] first, broadcast both ways */
    assert_int_equal(grad_check(&g, 3), 4);
    arena_free();
    /* x read by two nodes: Relu(x) + B + x */
    int64_t in2[2] = {3, 4}, bb[2] = {3, 4};
    gb_init(&g, 17, 2, in2);
    gb_param(&g, "B", 2, bb);
    gb_node(&g, "Relu", "r", "x", "r", NULL);
    gb_node(&g, "Add", "a1", "r,B", "s", NULL);
    gb_node(&g, "Add", "a2", "s,x", "y", NULL);
    assert_int_equal(grad_check(&g, 2), 2);
    arena_free();
}

static void test_grad_activations(void **state)
{
    const char *ops[] = {"Relu", "LeakyRelu", "Sigmoid", "Tanh"};
    (void)state;
    for (size_t k = 0; k < 4; k++) {
        struct gb g;
        int64_t in[1] = {6}, w[2] = {6, 4};
        gb_init(&g, 17, 1, in);
        gb_param(&g, "W", 2, w);
        gb_node(&g, ops[k], "act", "x", "a",
                k == 1 ? ATTRS(attr_f("alpha", 0.2f)) : NULL);
        gb_node(&g, "MatMul", "mm", "a,W", "h", NULL);
        gb_node(&g, ops[k], "act2", "h", "y", k == 1 ? ATTRS(attr_f("alpha", 0.2f)) : NULL);
        assert_int_equal(grad_check(&g, 3), 2);
        arena_free();
    }
}

static void test_grad_views(void **state)
{
    struct gb g;
    int64_t in[2] = {2, 3}, w[2] = {4, 6}, shp[1] = {3}, shv[3] = {0, 2, -1}, one[1] = {1};
    int64_t ax[1] = {0}, m1[1] = {-1};
    (void)state;
    /* Flatten, Gemm, Reshape [0, 2, -1], Identity; and the exporters'
     * Shape -> Gather -> Unsqueeze -> Concat chain to a Reshape */
    gb_init(&g, 17, 2, in);
    gb_param(&g, "W", 2, w);
    gb_init_i64(&g, "shape", 1, shp, shv);
    gb_init_i64(&g, "zero", 0, NULL, ax);
    gb_init_i64(&g, "axes", 1, one, ax);
    gb_init_i64(&g, "minus1", 1, one, m1);
    gb_node(&g, "Shape", "shape_of", "x", "s", NULL);
    gb_node(&g, "Gather", "batch", "s,zero", "n", ATTRS(attr_i("axis", 0)));
    gb_node(&g, "Unsqueeze", "unsq", "n,axes", "n1", NULL);
    gb_node(&g, "Concat", "cat", "n1,minus1", "flat_shape", ATTRS(attr_i("axis", 0)));
    gb_node(&g, "Reshape", "flat", "x,flat_shape", "f", NULL);
    gb_node(&g, "Gemm", "gemm", "f,W", "h", ATTRS(attr_i("transB", 1)));
    gb_node(&g, "Reshape", "r", "h,shape", "h3", NULL);
    gb_node(&g, "Flatten", "fl", "h3", "h4", ATTRS(attr_i("axis", 1)));
    gb_node(&g, "Identity", "id", "h4", "y", NULL);
    assert_int_equal(grad_check(&g, 3), 2);
    arena_free();
}

static void test_grad_conv(void **state)
{
    struct gb g;
    int64_t in[3] = {2, 5, 6}, w[4] = {4, 2, 3, 2}, b[1] = {4};
    int64_t pads[4] = {1, 0, 1, 1}, strides[2] = {2, 1}, dil[2] = {1, 2};
    (void)state;
    gb_init(&g, 17, 3, in);
    gb_param(&g, "W", 4, w);
    gb_param(&g, "B", 1, b);
    gb_node(&g, "Conv", "conv", "x,W,B", "y",
            ATTRS(attr_ints("pads", 4, pads), attr_ints("strides", 2, strides),
                  attr_ints("dilations", 2, dil)));
    assert_int_equal(grad_check(&g, 3), 3);
    arena_free();
    /* groups, SAME_UPPER */
    int64_t in2[3] = {4, 5, 5}, w2[4] = {6, 2, 3, 3};
    gb_init(&g, 17, 3, in2);
    gb_param(&g, "W", 4, w2);
    gb_node(&g, "Conv", "conv", "x,W", "y",
            ATTRS(attr_i("group", 2), attr_s("auto_pad", "SAME_UPPER"),
                  attr_ints("strides", 2, strides)));
    assert_int_equal(grad_check(&g, 2), 2);
    arena_free();
    /* 1-D */
    int64_t in3[2] = {2, 7}, w3[3] = {3, 2, 3}, p3[2] = {1, 1}, s3[1] = {2};
    gb_init(&g, 17, 2, in3);
    gb_param(&g, "W", 3, w3);
    gb_param(&g, "B", 1, w3);
    gb_node(&g, "Conv", "conv1d", "x,W,B", "y",
            ATTRS(attr_ints("pads", 2, p3), attr_ints("strides", 1, s3)));
    assert_int_equal(grad_check(&g, 3), 3);
    arena_free();
    /* a low-rank Conv as slimd writes it: 2-D factors reshaped to kernels,
     * V [r, in*kh*kw] -> [r, in, kh, kw], then U [out, r] -> [out, r, 1, 1] */
    int64_t in4[3] = {2, 4, 4}, v4[2] = {3, 2 * 3 * 3}, u4[2] = {4, 3}, b4[1] = {4};
    int64_t vs[1] = {4}, vsv[4] = {3, 2, 3, 3}, us[1] = {4}, usv[4] = {0, -1, 1, 1};
    gb_init(&g, 17, 3, in4);
    gb_param(&g, "V", 2, v4);
    gb_param(&g, "U", 2, u4);
    gb_param(&g, "B", 1, b4);
    gb_init_i64(&g, "vshape", 1, vs, vsv);
    gb_init_i64(&g, "ushape", 1, us, usv);
    gb_node(&g, "Reshape", "vk", "V,vshape", "Vk", NULL);
    gb_node(&g, "Reshape", "uk", "U,ushape", "Uk", NULL);
    gb_node(&g, "Conv", "conv_v", "x,Vk", "h", ATTRS(attr_ints("pads", 4, (int64_t[]){1, 1, 1, 1})));
    gb_node(&g, "Conv", "conv_u", "h,Uk,B", "y", NULL);
    assert_int_equal(grad_check(&g, 3), 4);
    arena_free();
}

static void test_grad_pools(void **state)
{
    struct gb g;
    int64_t in[3] = {2, 5, 5}, k2[2] = {2, 2}, k3[2] = {3, 3}, s2[2] = {2, 2},
            p1[4] = {1, 1, 1, 1}, w[2] = {8, 3};
    (void)state;
    gb_init(&g, 17, 3, in);
    gb_node(&g, "MaxPool", "mp", "x", "y", ATTRS(attr_ints("kernel_shape", 2, k2),
                                                  attr_ints("strides", 2, s2)));
    assert_int_equal(grad_check_loss(&g, 3, LOSS_BOTH, 1), 1);
    arena_free();
    gb_init(&g, 17, 3, in);
    gb_node(&g, "MaxPool", "mp", "x", "y", ATTRS(attr_ints("kernel_shape", 2, k3),
                                                  attr_ints("strides", 2, s2),
                                                  attr_ints("pads", 4, p1),
                                                  attr_i("ceil_mode", 1)));
    assert_int_equal(grad_check_loss(&g, 2, LOSS_BOTH, 1), 1);
    arena_free();
    for (int cip = 0; cip < 2; cip++) {
        gb_init(&g, 17, 3, in);
        gb_node(&g, "AveragePool", "ap", "x", "y",
                ATTRS(attr_ints("kernel_shape", 2, k3), attr_ints("strides", 2, s2),
                      attr_ints("pads", 4, p1), attr_i("count_include_pad", cip)));
        assert_int_equal(grad_check(&g, 2), 1);
        arena_free();
    }
    int64_t w2[2] = {2, 3};
    gb_init(&g, 17, 3, in);
    gb_param(&g, "W", 2, w2);
    gb_node(&g, "GlobalAveragePool", "gap", "x", "p", NULL);
    gb_node(&g, "Flatten", "f", "p", "q", NULL);
    gb_node(&g, "MatMul", "mm", "q,W", "y", NULL);
    assert_int_equal(grad_check(&g, 3), 2);
    arena_free();
    (void)w;
}

static void test_grad_batchnorm_dropout(void **state)
{
    struct gb g;
    int64_t in[3] = {3, 2, 2}, c[1] = {3};
    float mean[3] = {0.1f, -0.2f, 0.3f}, var[3] = {1.0f, 0.5f, 2.0f};
    (void)state;
    gb_init(&g, 17, 3, in);
    gb_param(&g, "scale", 1, c);
    gb_param(&g, "bias", 1, c);
    gb_init_f(&g, "mean", 1, c, mean);
    gb_init_f(&g, "var", 1, c, var);
    gb_node(&g, "BatchNormalization", "bn", "x,scale,bias,mean,var", "y",
            ATTRS(attr_f("epsilon", 1e-3f)));
    assert_int_equal(grad_check(&g, 4), 3);
    arena_free();
    /* BN over [N, C] after a Gemm, then Dropout (ratio as an input) and a Gemm */
    int64_t in2[1] = {5}, w[2] = {3, 5}, w2[2] = {3, 4}, sc[1] = {3};
    float ratio = 0.4f;
    gb_init(&g, 17, 1, in2);
    gb_param(&g, "W", 2, w);
    gb_param(&g, "W2", 2, w2);
    gb_param(&g, "scale", 1, sc);
    gb_param(&g, "bias", 1, sc);
    gb_init_f(&g, "mean", 1, sc, mean);
    gb_init_f(&g, "var", 1, sc, var);
    gb_init_f(&g, "ratio", 0, NULL, &ratio);
    gb_node(&g, "Gemm", "g1", "x,W", "h", ATTRS(attr_i("transB", 1)));
    gb_node(&g, "BatchNormalization", "bn", "h,scale,bias,mean,var", "b", NULL);
    gb_node(&g, "Dropout", "drop", "b,ratio", "d", NULL);
    gb_node(&g, "MatMul", "g2", "d,W2", "y", NULL);
    assert_int_equal(grad_check(&g, 6), 5);
    arena_free();
}

static void test_grad_softmax_end(void **state)
{
    const char *ops[] = {"Softmax", "LogSoftmax"};
    (void)state;
    for (int k = 0; k < 2; k++) {
        struct gb g;
        struct slim_onnx m;
        struct slim_train_opts o;
        struct slim_trainer *t;
        struct slim_error err;
        int64_t in[1] = {4}, w[2] = {4, 3};
        float x[4] = {0.5f, -1.0f, 2.0f, 0.25f}, y[3];
        gb_init(&g, 17, 1, in);
        gb_param(&g, "W", 2, w);
        gb_node(&g, "MatMul", "mm", "x,W", "logits", NULL);
        gb_node(&g, ops[k], "sm", "logits", "y", ATTRS(attr_i("axis", -1)));
        assert_int_equal(grad_check(&g, 4), 2);
        /* predict gives the logits, before the softmax */
        slim_train_opts_init(&o);
        t = gb_trainer(&g, &m, &o);
        assert_int_equal(slim_trainer_classes(t), 3);
        assert_int_equal(slim_trainer_predict(t, x, 1, y, &err), 0);
        const float *W;
        int64_t n;
        assert_int_equal(slim_trainer_param(t, "W", &W, &n, &err), 0);
        for (int j = 0; j < 3; j++) {
            float s = 0;
            for (int i = 0; i < 4; i++)
                s += x[i] * W[i * 3 + j];
            assert_float_equal(y[j], s, 1e-5);
        }
        slim_trainer_free(t);
        slim_onnx_release(&m);
        arena_free();
    }
}

/* The loss by hand: alpha T^2 KL(softmax(z/T) || softmax(s/T)) + (1 - alpha) CE. */
static void test_loss_value(void **state)
{
    struct gb g;
    struct slim_onnx m;
    struct slim_train_opts o;
    struct slim_trainer *t;
    struct slim_error err;
    int64_t in[1] = {3}, lab[2] = {2, 0};
    float s[6] = {1.0f, 2.0f, 0.5f, -1.0f, 0.0f, 3.0f}, z[6] = {0.2f, 1.5f, 2.5f, 1.0f, -2.0f, 0.0f};
    double l, want = 0.0, T = 2.5, a = 0.3;
    (void)state;
    gb_init(&g, 17, 1, in);
    gb_node(&g, "Identity", "id", "x", "y", NULL);
    slim_train_opts_init(&o);
    o.temperature = (float)T;
    o.alpha = (float)a;
    t = gb_trainer(&g, &m, &o);
    for (int r = 0; r < 2; r++) {
        double se = 0, pz[3], lq[3], zs = 0, qs = 0, kl = 0;
        for (int j = 0; j < 3; j++)
            se += exp(s[r * 3 + j]);
        for (int j = 0; j < 3; j++) {
            zs += exp(z[r * 3 + j] / T);
            qs += exp(s[r * 3 + j] / T);
        }
        for (int j = 0; j < 3; j++) {
            pz[j] = exp(z[r * 3 + j] / T) / zs;
            lq[j] = s[r * 3 + j] / T - log(qs);
            kl += pz[j] * (log(pz[j]) - lq[j]);
        }
        want += (1 - a) * (log(se) - s[r * 3 + lab[r]]) + a * T * T * kl;
    }
    want /= 2;
    t->training = 1;
    assert_int_equal(tr_step(t, s, lab, z, 0, 2, 1, &l, NULL, &err), 0);
    assert_float_equal(l, want, 1e-5);
    /* a teacher given as probabilities is the same teacher */
    float p[6];
    for (int r = 0; r < 2; r++) {
        double zs = 0;
        for (int j = 0; j < 3; j++)
            zs += exp(z[r * 3 + j]);
        for (int j = 0; j < 3; j++)
            p[r * 3 + j] = (float)(exp(z[r * 3 + j]) / zs);
    }
    assert_int_equal(tr_step(t, s, lab, p, 1, 2, 1, &l, NULL, &err), 0);
    assert_float_equal(l, want, 1e-5);
    slim_trainer_free(t);
    slim_onnx_release(&m);
    arena_free();
}

/* ---- training --------------------------------------------------------------------- */

/* n random images in [0, 1] of the fixtures' shape, random labels */
static void random_images(float *x, int64_t *lab, int64_t n)
{
    for (int64_t i = 0; i < n * 784; i++)
        x[i] = (float)urand();
    for (int64_t i = 0; i < n; i++)
        lab[i] = (int64_t)(urand() * 10);
}

static void test_mask_keeps_zeros(void **state)
{
    struct slim_onnx m;
    struct slim_train_opts o;
    struct slim_trainer *t;
    struct slim_error err;
    const float *w;
    int64_t n, nx = 192;
    (void)state;
    for (int opt = 0; opt < 2; opt++) {
        slim_train_opts_init(&o);
        o.optimizer = opt ? SLIM_OPT_SGD : SLIM_OPT_ADAM;
        o.lr = opt ? 0.05f : 1e-3f;
        o.weight_decay = 1e-2f;
        o.epochs = 2;
        o.batch_size = 32;
        t = trainer_of(fixture("mlp.onnx"), &m, &o);
        assert_int_equal(slim_trainer_param(t, "fc1.weight", &w, &n, &err), 0);
        assert_int_equal(n, 300 * 784);
        uint8_t *keep = amalloc((size_t)n);
        float *before = amalloc((size_t)n * sizeof *before);
        memcpy(before, w, (size_t)n * sizeof *before);
        for (int64_t i = 0; i < n; i++)
            keep[i] = urand() < 0.3;
        assert_int_equal(slim_trainer_mask(t, "fc1.weight", keep, n, &err), 0);
        float *x = amalloc((size_t)nx * 784 * sizeof *x);
        int64_t *lab = amalloc((size_t)nx * sizeof *lab);
        random_images(x, lab, nx);
        struct slim_train_data d = {.x = x, .labels = lab, .n = nx};
        assert_int_equal(slim_trainer_fit(t, &d, NULL, NULL, &err), 0);
        assert_int_equal(slim_trainer_param(t, "fc1.weight", &w, &n, &err), 0);
        int64_t moved = 0;
        for (int64_t i = 0; i < n; i++) {
            uint32_t bits;
            memcpy(&bits, &w[i], 4);
            if (!keep[i])
                assert_int_equal(bits, 0);
            else
                moved += w[i] != before[i];
        }
        assert_true(moved > n / 10);
        slim_trainer_free(t);
        slim_onnx_release(&m);
        arena_free();
    }
}

static void test_shared_stay_shared(void **state)
{
    struct slim_onnx m;
    struct slim_train_opts o;
    struct slim_trainer *t;
    struct slim_error err;
    const float *w, *book;
    float cb[8];
    int64_t n, nx = 128;
    int k;
    (void)state;
    slim_train_opts_init(&o);
    o.epochs = 2;
    o.batch_size = 32;
    o.lr = 1e-2f;
    t = trainer_of(fixture("mlp.onnx"), &m, &o);
    assert_int_equal(slim_trainer_param(t, "fc2.weight", &w, &n, &err), 0);
    int32_t *idx = amalloc((size_t)n * sizeof *idx);
    uint8_t *keep = amalloc((size_t)n);
    for (int i = 0; i < 8; i++)
        cb[i] = (float)(i - 4) * 0.03f;
    for (int64_t i = 0; i < n; i++) {
        idx[i] = i % 11 == 0 ? -1 : (int32_t)(urand() * 8);
        keep[i] = i % 13 != 0;
    }
    /* out-of-range index refused */
    idx[5] = 8;
    assert_int_equal(slim_trainer_share(t, "fc2.weight", idx, cb, 8, n, &err), SLIM_EINVAL);
    idx[5] = 3;
    assert_int_equal(slim_trainer_share(t, "fc2.weight", idx, cb, 8, n, &err), 0);
    assert_int_equal(slim_trainer_mask(t, "fc2.weight", keep, n, &err), 0);
    float *x = amalloc((size_t)nx * 784 * sizeof *x);
    int64_t *lab = amalloc((size_t)nx * sizeof *lab);
    random_images(x, lab, nx);
    struct slim_train_data d = {.x = x, .labels = lab, .n = nx};
    assert_int_equal(slim_trainer_fit(t, &d, NULL, NULL, &err), 0);
    assert_int_equal(slim_trainer_codebook(t, "fc2.weight", &book, &k, &err), 0);
    assert_int_equal(k, 8);
    int changed = 0;
    for (int i = 0; i < 8; i++)
        changed += book[i] != cb[i];
    assert_true(changed >= 6);
    assert_int_equal(slim_trainer_param(t, "fc2.weight", &w, &n, &err), 0);
    for (int64_t i = 0; i < n; i++) {
        float want = idx[i] < 0 || !keep[i] ? 0.0f : book[idx[i]];
        assert_memory_equal(&w[i], &want, 4);
    }
    assert_int_equal(slim_trainer_codebook(t, "fc1.weight", &book, &k, &err), SLIM_EINVAL);
    slim_trainer_free(t);
    slim_onnx_release(&m);
    arena_free();
}

/* rounds to multiples of 0.25 */
static void quarter(void *ud, const char *name, const float *w, float *wq, int ndim,
                    const int64_t *dims)
{
    int64_t n = 1;
    (void)name;
    for (int i = 0; i < ndim; i++)
        n *= dims[i];
    ++*(int *)ud;
    for (int64_t i = 0; i < n; i++)
        wq[i] = roundf(w[i] * 4.0f) / 4.0f;
}

static void test_fake_quant_ste(void **state)
{
    struct gb g;
    struct slim_onnx m;
    struct slim_train_opts o;
    struct slim_trainer *t;
    struct slim_error err;
    int64_t in[1] = {4}, wd[2] = {3, 4}, nx = 64, n;
    float W[12], x[64 * 4], y[3];
    int64_t lab[64];
    int calls = 0;
    const float *w;
    (void)state;
    fill(W, 12);
    gb_init(&g, 17, 1, in);
    gb_init_f(&g, "W", 2, wd, W);
    gb_node(&g, "Gemm", "gemm", "x,W", "y", ATTRS(attr_i("transB", 1)));
    slim_train_opts_init(&o);
    o.lr = 1e-2f;
    o.batch_size = 16;
    o.epochs = 3;
    t = gb_trainer(&g, &m, &o);
    assert_int_equal(slim_trainer_fake_quant(t, "W", quarter, &calls, &err), 0);
    fill(x, nx * 4);
    for (int i = 0; i < nx; i++)
        lab[i] = x[i * 4] > 0 ? 0 : x[i * 4 + 1] > 0 ? 1 : 2;
    struct slim_train_data d = {.x = x, .labels = lab, .n = nx};
    assert_int_equal(slim_trainer_fit(t, &d, NULL, NULL, &err), 0);
    assert_true(calls >= 12);
    assert_int_equal(slim_trainer_param(t, "W", &w, &n, &err), 0);
    int off_grid = 0, moved = 0;
    for (int i = 0; i < 12; i++) {
        off_grid += w[i] * 4.0f != roundf(w[i] * 4.0f);
        moved += w[i] != W[i];
    }
    assert_true(off_grid > 0 && moved > 6);   /* the master copy trained freely */
    assert_int_equal(slim_trainer_predict(t, x, 1, y, &err), 0);
    for (int j = 0; j < 3; j++) {
        float s = 0;
        for (int i = 0; i < 4; i++)
            s += x[i] * roundf(w[j * 4 + i] * 4.0f) / 4.0f;
        assert_float_equal(y[j], s, 1e-5);  /* the forward pass saw the grid */
    }
    slim_trainer_free(t);
    slim_onnx_release(&m);
    arena_free();
}

/* every parameter and running statistic of two trainers, bit for bit */
static int same_params(struct slim_trainer *a, struct slim_trainer *b)
{
    struct slim_error err;
    assert_int_equal(slim_trainer_n_params(a), slim_trainer_n_params(b));
    for (size_t i = 0; i < a->np; i++) {
        const float *x, *y;
        int64_t n, n2;
        const char *name = a->v[a->p[i].v].name;
        assert_int_equal(slim_trainer_param(a, name, &x, &n, &err), 0);
        assert_int_equal(slim_trainer_param(b, name, &y, &n2, &err), 0);
        assert_int_equal(n, n2);
        if (memcmp(x, y, (size_t)n * sizeof *x))
            return 0;
    }
    return 1;
}

static void test_reproducible(void **state)
{
    struct slim_onnx m1, m2, m3;
    struct slim_train_opts o;
    struct slim_trainer *a, *b, *c;
    struct slim_error err;
    int64_t nx = 96;
    (void)state;
    slim_train_opts_init(&o);
    o.seed = 7;
    o.batch_size = 32;
    o.epochs = 2;
    float *x = amalloc((size_t)nx * 784 * sizeof *x);
    int64_t *lab = amalloc((size_t)nx * sizeof *lab);
    random_images(x, lab, nx);
    struct slim_train_data d = {.x = x, .labels = lab, .n = nx};
    /* cnn.onnx: BatchNormalization's statistics and Dropout's masks */
    a = trainer_of(fixture("cnn.onnx"), &m1, &o);
    b = trainer_of(fixture("cnn.onnx"), &m2, &o);
    o.seed = 8;
    c = trainer_of(fixture("cnn.onnx"), &m3, &o);
    assert_int_equal(slim_trainer_fit(a, &d, NULL, NULL, &err), 0);
    assert_int_equal(slim_trainer_fit(b, &d, NULL, NULL, &err), 0);
    assert_int_equal(slim_trainer_fit(c, &d, NULL, NULL, &err), 0);
    assert_true(same_params(a, b));
    assert_false(same_params(a, c));
    slim_trainer_free(a);
    slim_trainer_free(b);
    slim_trainer_free(c);
    slim_onnx_release(&m1);
    slim_onnx_release(&m2);
    slim_onnx_release(&m3);
    arena_free();
}

/* Three Gaussian blobs in 2-D; an MLP 2-16-3 built here from random
 * weights learns them with each optimizer. */
static void test_mlp_learns(void **state)
{
    (void)state;
    for (int opt = 0; opt < 2; opt++) {
        struct gb g;
        struct slim_onnx m;
        struct slim_train_opts o;
        struct slim_trainer *t;
        struct slim_error err;
        struct slim_train_progress p;
        int64_t in[1] = {2}, w1[2] = {2, 16}, b1[1] = {16}, w2[2] = {16, 3}, b2[1] = {3};
        enum { NX = 450 };
        static float x[NX * 2];
        static int64_t lab[NX];
        const double cx[3] = {-2.0, 2.0, 0.0}, cy[3] = {-1.0, -1.0, 2.5};
        gb_init(&g, 17, 1, in);
        gb_param(&g, "W1", 2, w1);
        gb_param(&g, "b1", 1, b1);
        gb_param(&g, "W2", 2, w2);
        gb_param(&g, "b2", 1, b2);
        gb_node(&g, "MatMul", "l1", "x,W1", "h", NULL);
        gb_node(&g, "Add", "b1", "h,b1", "hb", NULL);
        gb_node(&g, "Relu", "r", "hb", "a", NULL);
        gb_node(&g, "MatMul", "l2", "a,W2", "o", NULL);
        gb_node(&g, "Add", "b2", "o,b2", "y", NULL);
        for (int i = 0; i < NX; i++) {
            int c = i % 3;
            double u1 = urand() + 1e-12, u2 = urand();
            double r = sqrt(-2 * log(u1)) * 0.6;
            lab[i] = c;
            x[2 * i] = (float)(cx[c] + r * cos(6.283185307 * u2));
            x[2 * i + 1] = (float)(cy[c] + r * sin(6.283185307 * u2));
        }
        slim_train_opts_init(&o);
        o.optimizer = opt ? SLIM_OPT_SGD : SLIM_OPT_ADAM;
        o.lr = opt ? 0.05f : 0.01f;
        o.epochs = 15;
        o.batch_size = 32;
        t = gb_trainer(&g, &m, &o);
        struct slim_train_data tr = {.x = x, .labels = lab, .n = 300};
        struct slim_train_data va = {.x = x + 600, .labels = lab + 300, .n = 150};
        double l0, a0, l1, a1;
        assert_int_equal(slim_trainer_evaluate(t, &va, &l0, &a0, &err), 0);
        assert_int_equal(slim_trainer_fit(t, &tr, &va, NULL, &err), 0);
        assert_int_equal(slim_trainer_evaluate(t, &va, &l1, &a1, &err), 0);
        slim_trainer_progress(t, &p);
        assert_int_equal(p.epoch, 15);
        assert_float_equal(p.val_accuracy, a1, 1e-12);
        assert_true(a1 >= 0.95);
        assert_true(l1 < l0 / 3);
        slim_trainer_free(t);
        slim_onnx_release(&m);
        arena_free();
    }
}

struct cancel_ctx {
    int calls, stop_at, epochs;
    struct slim_trainer *t;
};

static int cancel_cb(void *ud)
{
    struct cancel_ctx *c = ud;
    return ++c->calls >= c->stop_at;
}

static int epoch_cb(void *ud, const struct slim_train_progress *p)
{
    struct cancel_ctx *c = ud;
    c->epochs++;
    assert_true(isfinite(p->loss) && p->samples_per_s > 0);
    slim_trainer_cancel(c->t);  /* as another thread would: the next batch stops */
    return 0;
}

static void test_cancel(void **state)
{
    struct slim_onnx m;
    struct slim_train_opts o;
    struct slim_trainer *t;
    struct slim_error err;
    struct slim_train_progress p;
    int64_t nx = 512;
    (void)state;
    slim_train_opts_init(&o);
    o.batch_size = 32;
    o.epochs = 3;
    t = trainer_of(fixture("mlp.onnx"), &m, &o);
    float *x = amalloc((size_t)nx * 784 * sizeof *x);
    int64_t *lab = amalloc((size_t)nx * sizeof *lab);
    random_images(x, lab, nx);
    struct slim_train_data d = {.x = x, .labels = lab, .n = nx};
    struct cancel_ctx c = {.stop_at = 4};
    struct slim_train_hooks h = {.cancel = cancel_cb, .ud = &c};
    assert_int_equal(slim_trainer_fit(t, &d, NULL, &h, &err), SLIM_ECANCELED);
    slim_trainer_progress(t, &p);
    assert_int_equal(p.step, 3);        /* three batches ran, the fourth did not */
    assert_int_equal(p.steps, 48);
    memset(&c, 0, sizeof c);
    c.stop_at = 1 << 30;
    c.t = t;
    struct slim_train_hooks h2 = {.cancel = cancel_cb, .epoch = epoch_cb, .ud = &c};
    assert_int_equal(slim_trainer_fit(t, &d, NULL, &h2, &err), SLIM_ECANCELED);
    slim_trainer_progress(t, &p);
    assert_int_equal(c.epochs, 1);
    assert_int_equal(p.epoch, 1);
    assert_int_equal(p.step, 16);
    slim_trainer_free(t);
    slim_onnx_release(&m);
    arena_free();
}

/* The evaluation forward pass against the inference engine, before and
 * after training, the trained weights written back with
 * slim_trainer_store. */
static void test_store_matches_engine(void **state)
{
    const char *models[] = {"cnn.onnx", "mlp.onnx", "mlp_external.onnx"};
    (void)state;
    for (int k = 0; k < 3; k++) {
        struct slim_onnx m;
        struct slim_train_opts o;
        struct slim_trainer *t;
        struct slim_engine *e;
        struct slim_error err;
        int64_t nx = 64, ysz;
        const float *ye;
        slim_train_opts_init(&o);
        o.batch_size = 16;
        o.lr = 1e-2f;
        t = trainer_of(fixture(models[k]), &m, &o);
        float *x = amalloc((size_t)nx * 784 * sizeof *x), *y = amalloc((size_t)nx * 10 * 4);
        int64_t *lab = amalloc((size_t)nx * sizeof *lab);
        random_images(x, lab, nx);
        for (int round = 0; round < 2; round++) {
            assert_int_equal(slim_trainer_store(t, &m, &err), 0);
            assert_int_equal(slim_engine_new(&m, &e, &err), 0);
            assert_int_equal(slim_engine_run(e, x, nx, &ye, &ysz, &err), 0);
            assert_int_equal(ysz, 10);
            assert_int_equal(slim_trainer_predict(t, x, nx, y, &err), 0);
            for (int64_t i = 0; i < nx * 10; i++)
                assert_float_equal(y[i], ye[i], 1e-3 + 1e-4 * fabs(ye[i]));
            slim_engine_free(e);
            struct slim_train_data d = {.x = x, .labels = lab, .n = nx};
            assert_int_equal(slim_trainer_fit(t, &d, NULL, NULL, &err), 0);
        }
        slim_trainer_free(t);
        slim_onnx_release(&m);
        arena_free();
    }
}

static void test_unsupported_and_bad_input(void **state)
{
    struct gb g;
    struct slim_onnx m;
    struct slim_train_opts o;
    struct slim_trainer *t;
    struct slim_error err;
    int64_t in[1] = {4};
    (void)state;
    gb_init(&g, 17, 1, in);
    gb_node(&g, "Sin", "the_sine", "x", "y", NULL);
    slim_train_opts_init(&o);
    assert_int_equal(slim_onnx_open(gb_write(&g, "u.onnx"), &m, &err), 0);
    assert_int_equal(slim_trainer_new(&m, &o, &t, &err), SLIM_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "'Sin'"));
    assert_non_null(strstr(err.msg, "the_sine"));
    o.lr = -1.0f;
    assert_int_equal(slim_trainer_new(&m, &o, &t, &err), SLIM_EINVAL);
    assert_non_null(strstr(err.msg, "lr"));
    slim_onnx_release(&m);
    arena_free();
    /* labels out of range */
    int64_t w[2] = {4, 3};
    gb_init(&g, 17, 1, in);
    gb_param(&g, "W", 2, w);
    gb_node(&g, "MatMul", "mm", "x,W", "y", NULL);
    slim_train_opts_init(&o);
    t = gb_trainer(&g, &m, &o);
    float x[8] = {0};
    int64_t lab[2] = {0, 3};
    struct slim_train_data d = {.x = x, .labels = lab, .n = 2};
    assert_int_equal(slim_trainer_fit(t, &d, NULL, NULL, &err), SLIM_EINVAL);
    assert_non_null(strstr(err.msg, "label 3"));
    d.labels = NULL;
    assert_int_equal(slim_trainer_fit(t, &d, NULL, NULL, &err), SLIM_EINVAL);
    assert_int_equal(slim_trainer_mask(t, "nope", NULL, 0, &err), SLIM_ENOTFOUND);
    slim_trainer_free(t);
    slim_onnx_release(&m);
    arena_free();
}

/* Every allocation of slim_trainer_new failing in turn: SLIM_ENOMEM and
 * nothing left allocated; then a fit under the same treatment. */
static void test_alloc_failures(void **state)
{
    struct gb g;
    struct slim_onnx m;
    struct slim_train_opts o;
    struct slim_trainer *t = NULL;
    struct slim_error err;
    int64_t in[3] = {1, 6, 6}, w[4] = {4, 1, 3, 3}, c[1] = {4}, k2[2] = {2, 2}, fw[2] = {3, 16};
    float mean[4] = {0}, var[4] = {1, 1, 1, 1}, x[4 * 36];
    int64_t lab[4] = {0, 1, 2, 1};
    int rc, k;
    (void)state;
    gb_init(&g, 17, 3, in);
    gb_param(&g, "W", 4, w);
    gb_param(&g, "scale", 1, c);
    gb_param(&g, "bias", 1, c);
    gb_init_f(&g, "mean", 1, c, mean);
    gb_init_f(&g, "var", 1, c, var);
    gb_param(&g, "F", 2, fw);
    gb_node(&g, "Conv", "conv", "x,W", "c", NULL);
    gb_node(&g, "BatchNormalization", "bn", "c,scale,bias,mean,var", "b", NULL);
    gb_node(&g, "Relu", "r", "b", "rr", NULL);
    gb_node(&g, "MaxPool", "mp", "rr", "p", ATTRS(attr_ints("kernel_shape", 2, k2),
                                                  attr_ints("strides", 2, k2)));
    gb_node(&g, "Flatten", "f", "p", "q", NULL);
    gb_node(&g, "Gemm", "fc", "q,F", "y", ATTRS(attr_i("transB", 1)));
    slim_train_opts_init(&o);
    o.batch_size = 2;
    fill(x, 4 * 36);
    assert_int_equal(slim_onnx_open(gb_write(&g, "a.onnx"), &m, &err), 0);
    long live = slim_alloc_live();
    for (k = 0; k < 10000; k++) {
        slim_alloc_fail_after(k);
        rc = slim_trainer_new(&m, &o, &t, &err);
        slim_alloc_fail_after(-1);
        if (!rc)
            break;
        if (rc != SLIM_ENOMEM)
            fail_msg("allocation %d failing: %s", k, err.msg);
        assert_null(t);
        assert_int_equal(slim_alloc_live(), live);
    }
    assert_true(k > 5);
    slim_trainer_free(t);
    assert_int_equal(slim_alloc_live(), live);
    struct slim_train_data d = {.x = x, .labels = lab, .n = 4};
    for (k = 0; k < 10000; k++) {
        assert_int_equal(slim_trainer_new(&m, &o, &t, &err), 0);
        slim_alloc_fail_after(k);
        rc = slim_trainer_fit(t, &d, NULL, NULL, &err);
        slim_alloc_fail_after(-1);
        slim_trainer_free(t);
        assert_int_equal(slim_alloc_live(), live);
        if (!rc)
            break;
        if (rc != SLIM_ENOMEM)
            fail_msg("allocation %d failing in fit: %s", k, err.msg);
    }
    assert_true(k > 5);
    slim_onnx_release(&m);
    arena_free();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grad_gemm),
        cmocka_unit_test(test_grad_matmul_add),
        cmocka_unit_test(test_grad_activations),
        cmocka_unit_test(test_grad_views),
        cmocka_unit_test(test_grad_conv),
        cmocka_unit_test(test_grad_pools),
        cmocka_unit_test(test_grad_batchnorm_dropout),
        cmocka_unit_test(test_grad_softmax_end),
        cmocka_unit_test(test_loss_value),
        cmocka_unit_test(test_mask_keeps_zeros),
        cmocka_unit_test(test_shared_stay_shared),
        cmocka_unit_test(test_fake_quant_ste),
        cmocka_unit_test(test_reproducible),
        cmocka_unit_test(test_mlp_learns),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_store_matches_engine),
        cmocka_unit_test(test_unsupported_and_bad_input),
        cmocka_unit_test(test_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
