/*
 * test_kernels.c - the maths of the issue-3 kernels (passes/kernels/kernels.h):
 * exact pruning counts and patterns, SVD errors against a spectrum built
 * by hand, k-means inertia and fixed zeros, packed int4/ternary/binary
 * bytes worked out by hand, every optimised kernel against its _ref twin
 * (normalised MSE), boundary cases (empty, one element, all-zero groups,
 * sizes off the block) and NaN/Inf rejected with SLIM_ENUMERIC.  Sizes
 * above 2^17 elements make the kernels use two threads.
 */
#include <math.h>
#include <cblas.h>
#include <lapacke.h>
#include "tests/unit/util.h"
#include "passes/kernels/kernels.h"

/* ---- helpers ---------------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static void rng_seed(uint64_t s)
{
    rng_state = s * 0x9e3779b97f4a7c15ull + 1;
}

static double urand(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return ((double)(rng_state >> 11) + 0.5) / 9007199254740992.0;
}

static float grand(void)
{
    return (float)(sqrt(-2.0 * log(urand())) * cos(6.283185307179586 * urand()));
}

static float *gauss_array(size_t n, float scale)
{
    float *v = malloc((n ? n : 1) * sizeof *v);
    assert_non_null(v);
    for (size_t i = 0; i < n; i++)
        v[i] = grand() * scale;
    return v;
}

static float *dup_array(const float *v, size_t n)
{
    float *c = malloc((n ? n : 1) * sizeof *c);
    assert_non_null(c);
    memcpy(c, v, n * sizeof *c);
    return c;
}

/* sum (a - b)^2 / sum b^2, 0 when both are zero */
static double nmse(const float *a, const float *b, size_t n)
{
    double e = 0.0, s = 0.0;
    for (size_t i = 0; i < n; i++) {
        e += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        s += (double)b[i] * b[i];
    }
    return s > 0.0 ? e / s : e;
}

static size_t count_zeros(const float *v, size_t n)
{
    size_t z = 0;
    for (size_t i = 0; i < n; i++)
        z += v[i] == 0.0f;
    return z;
}

/* ---- threads ------------------------------------------------------------ */

static void mark_part(void *ctx, int part, int nparts)
{
    int *seen = ctx;
    seen[part] = nparts;
}

static void test_parallel_runs_every_part(void **state)
{
    int seen[8] = {0};
    (void)state;
    slim_kernel_parallel(5, mark_part, seen);
    for (int p = 0; p < 5; p++)
        assert_int_equal(seen[p], 5);
    assert_int_equal(seen[5], 0);
    assert_int_equal(slim_kernel_threads(0, 1u << 30), 1);
    assert_int_equal(slim_kernel_threads(8, 1000), 1);
    assert_int_equal(slim_kernel_threads(2, 1u << 20), 2);
}

/* ---- prune: unstructured ----------------------------------------------- */

static void test_prune_count_rule(void **state)
{
    (void)state;
    assert_int_equal(slim_prune_count(10, 0.5), 5);
    assert_int_equal(slim_prune_count(10, 0.25), 3);  /* 2.5 rounds half up */
    assert_int_equal(slim_prune_count(10, 0.24), 2);
    assert_int_equal(slim_prune_count(7, 1.0), 7);
    assert_int_equal(slim_prune_count(7, 0.0), 0);
    assert_int_equal(slim_prune_count(0, 0.5), 0);
    assert_int_equal(slim_prune_count(4096 * 4096, 0.5), 4096 * 4096 / 2);
}

/* Checks that exactly k of orig became zero in w, that they were the k
 * smallest |w| (ties to the lower index), and that nothing else moved. */
static void check_unstructured(const float *orig, const float *w, size_t n, size_t k)
{
    float max_pruned = 0.0f, min_kept = INFINITY;
    size_t pruned = 0;
    for (size_t i = 0; i < n; i++) {
        if (w[i] == 0.0f && orig[i] != 0.0f) {
            pruned++;
            max_pruned = fmaxf(max_pruned, fabsf(orig[i]));
        } else {
            assert_true(w[i] == orig[i]);
            if (orig[i] != 0.0f)
                min_kept = fminf(min_kept, fabsf(orig[i]));
        }
    }
    assert_true(count_zeros(w, n) >= k);
    assert_true(pruned <= k);
    assert_true(max_pruned <= min_kept);
}

static void test_prune_unstructured_exact(void **state)
{
    const size_t sizes[] = {1, 2, 7, 1000, 4099, 300001};
    const double sp[] = {0.0, 0.1, 0.5, 0.73, 0.999, 1.0};
    (void)state;
    rng_seed(1);
    for (size_t a = 0; a < sizeof sizes / sizeof sizes[0]; a++)
        for (size_t b = 0; b < sizeof sp / sizeof sp[0]; b++) {
            size_t n = sizes[a], k = slim_prune_count(n, sp[b]), z1, z2;
            float *orig = gauss_array(n, 0.02f);
            /* ties: a run of equal magnitudes of both signs */
            for (size_t i = 0; i < n / 4; i++)
                orig[i * 3 % n] = i & 1 ? 0.01f : -0.01f;
            float *w = dup_array(orig, n), *r = dup_array(orig, n);
            assert_int_equal(slim_prune_unstructured(w, n, sp[b], 2, &z1, NULL), 0);
            assert_int_equal(slim_prune_unstructured_ref(r, n, sp[b], &z2, NULL), 0);
            assert_int_equal(z1, k);
            assert_int_equal(z2, k);
            check_unstructured(orig, w, n, k);
            /* same tie rule as the sort-based twin: identical bits */
            assert_memory_equal(w, r, n * sizeof *w);
            free(orig);
            free(w);
            free(r);
        }
}

static void test_prune_unstructured_all_equal(void **state)
{
    /* one bucket holds everything: the rescan path, ties by index */
    size_t n = 200003, k = slim_prune_count(n, 0.3), z;
    float *w = malloc(n * sizeof *w);
    (void)state;
    for (size_t i = 0; i < n; i++)
        w[i] = i & 1 ? -0.5f : 0.5f;
    assert_int_equal(slim_prune_unstructured(w, n, 0.3, 2, &z, NULL), 0);
    assert_int_equal(z, k);
    for (size_t i = 0; i < n; i++)
        assert_true(i < k ? w[i] == 0.0f : fabsf(w[i]) == 0.5f);
    free(w);
}

static void test_prune_unstructured_zeros_count(void **state)
{
    /* already-zero weights are the smallest, so they are pruned first */
    float w[8] = {0.0f, 3.0f, -0.0f, 1.0f, 0.0f, -2.0f, 5.0f, 4.0f};
    size_t z;
    (void)state;
    assert_int_equal(slim_prune_unstructured(w, 8, 0.5, 1, &z, NULL), 0);
    assert_int_equal(z, 4);
    const float want[8] = {0, 3, 0, 0, 0, -2, 5, 4};
    for (int i = 0; i < 8; i++)
        assert_true(w[i] == want[i]);
}

static void test_prune_global(void **state)
{
    size_t ns[3] = {1000, 0, 250001}, k, z1, z2, total = 251001;
    float *a[3], *b[3];
    (void)state;
    rng_seed(2);
    for (int t = 0; t < 3; t++) {
        /* different scales, so the global threshold prunes them unevenly */
        a[t] = gauss_array(ns[t], t == 0 ? 0.001f : 0.05f);
        b[t] = dup_array(a[t], ns[t]);
    }
    k = slim_prune_count(total, 0.6);
    assert_int_equal(slim_prune_global(a, ns, 3, 0.6, 2, &z1, NULL), 0);
    assert_int_equal(slim_prune_global_ref(b, ns, 3, 0.6, &z2, NULL), 0);
    assert_int_equal(z1, k);
    assert_int_equal(z2, k);
    assert_int_equal(count_zeros(a[0], ns[0]) + count_zeros(a[2], ns[2]), k);
    assert_int_equal(count_zeros(a[0], ns[0]), ns[0]); /* the small tensor goes first */
    for (int t = 0; t < 3; t++) {
        assert_memory_equal(a[t], b[t], ns[t] * sizeof(float));
        free(a[t]);
        free(b[t]);
    }
}

static void test_prune_nan_rejected(void **state)
{
    float w[6] = {1, 2, NAN, 4, 5, 6}, keep[6];
    size_t z = 99, n = 6;
    float *ws[1] = {w};
    struct slim_error err = {0};
    (void)state;
    memcpy(keep, w, sizeof w);
    assert_int_equal(slim_prune_unstructured(w, 6, 0.5, 1, &z, &err), SLIM_ENUMERIC);
    assert_int_equal(err.code, SLIM_ENUMERIC);
    assert_int_equal(z, 0);
    assert_int_equal(slim_prune_global(ws, &n, 1, 0.5, 1, &z, NULL), SLIM_ENUMERIC);
    assert_int_equal(slim_prune_nm(w, 2, 3, 1, 3, 1, &z, NULL), SLIM_ENUMERIC);
    assert_int_equal(slim_prune_rows(w, 2, 3, 0.5, 1, &z, NULL), SLIM_ENUMERIC);
    assert_int_equal(slim_prune_unstructured_ref(w, 6, 0.5, &z, NULL), SLIM_ENUMERIC);
    assert_int_equal(slim_prune_nm_ref(w, 2, 3, 1, 3, &z, NULL), SLIM_ENUMERIC);
    /* w untouched; NaN compares unequal, so compare bits */
    assert_memory_equal(w, keep, sizeof w);
    /* Inf is a magnitude like any other */
    float v[4] = {INFINITY, -1.0f, 2.0f, -INFINITY};
    assert_int_equal(slim_prune_unstructured(v, 4, 0.5, 1, &z, NULL), 0);
    assert_true(v[0] == INFINITY && v[1] == 0.0f && v[2] == 0.0f && v[3] == -INFINITY);
}

static void test_prune_bad_args(void **state)
{
    float w[4] = {1, 2, 3, 4};
    size_t z;
    (void)state;
    assert_int_equal(slim_prune_unstructured(w, 4, -0.1, 1, &z, NULL), SLIM_EINVAL);
    assert_int_equal(slim_prune_unstructured(w, 4, 1.5, 1, &z, NULL), SLIM_EINVAL);
    assert_int_equal(slim_prune_unstructured(w, 4, NAN, 1, &z, NULL), SLIM_EINVAL);
    assert_int_equal(slim_prune_nm(w, 1, 4, 3, 2, 1, &z, NULL), SLIM_EINVAL);
    assert_int_equal(slim_prune_nm(w, 1, 4, 1, 0, 1, &z, NULL), SLIM_EINVAL);
    /* empty tensors are fine */
    assert_int_equal(slim_prune_unstructured(NULL, 0, 0.5, 1, &z, NULL), 0);
    assert_int_equal(z, 0);
    assert_int_equal(slim_prune_nm(NULL, 0, 4, 2, 4, 1, &z, NULL), 0);
    assert_int_equal(slim_prune_rows(NULL, 0, 4, 0.5, 1, &z, NULL), 0);
    assert_int_equal(slim_prune_global(NULL, NULL, 0, 0.5, 1, &z, NULL), 0);
}

/* ---- prune: N:M and rows ---------------------------------------------- */

static void test_prune_nm_by_hand(void **state)
{
    /* 2:4 over 10 columns: two full runs and a partial run of 2, which
     * keeps ceil(2 * 2 / 4) = 1.  The tie 4, 4, -4 keeps the lower
     * indices. */
    float w[10] = {1, -3, 2, 0.5f, 4, 4, -4, 1, 0.1f, -0.2f};
    const float want[10] = {0, -3, 2, 0, 4, 4, 0, 0, 0, -0.2f};
    size_t z;
    (void)state;
    assert_int_equal(slim_prune_nm(w, 1, 10, 2, 4, 1, &z, NULL), 0);
    assert_int_equal(z, 5);
    for (int i = 0; i < 10; i++)
        assert_true(w[i] == want[i]);
    /* 1:3 over 4 columns: runs of 3 and 1; the lone one keeps ceil(1/3) = 1 */
    float v[4] = {-1, 2, 3, -9};
    assert_int_equal(slim_prune_nm(v, 1, 4, 1, 3, 1, &z, NULL), 0);
    assert_int_equal(z, 2);
    assert_true(v[0] == 0 && v[1] == 0 && v[2] == 3 && v[3] == -9);
}

/* Every run of every row keeps exactly its quota, and those are the
 * largest |w|. */
static void check_nm(const float *orig, const float *w, size_t rows, size_t cols, int nk, int m)
{
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c += (size_t)m) {
            size_t len = cols - c < (size_t)m ? cols - c : (size_t)m;
            size_t keep = len == (size_t)m ? (size_t)nk : ((size_t)nk * len + m - 1) / m;
            size_t kept = 0;
            float min_kept = INFINITY, max_gone = 0.0f;
            for (size_t i = 0; i < len; i++) {
                size_t at = r * cols + c + i;
                if (w[at] != 0.0f) {
                    kept++;
                    assert_true(w[at] == orig[at]);
                    min_kept = fminf(min_kept, fabsf(orig[at]));
                } else {
                    max_gone = fmaxf(max_gone, fabsf(orig[at]));
                }
            }
            assert_int_equal(kept, keep);
            assert_true(max_gone <= min_kept);
        }
}

static void test_prune_nm_patterns(void **state)
{
    const int pat[][2] = {{2, 4}, {1, 4}, {3, 4}, {4, 8}, {2, 8}, {1, 2}, {5, 40}, {0, 4}, {4, 4}};
    const size_t shapes[][2] = {{3, 16}, {5, 10}, {600, 301}, {512, 512}, {1, 3}};
    (void)state;
    rng_seed(3);
    for (size_t p = 0; p < sizeof pat / sizeof pat[0]; p++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            size_t rows = shapes[s][0], cols = shapes[s][1], n = rows * cols, z1, z2;
            float *orig = gauss_array(n, 1.0f);
            float *w = dup_array(orig, n), *r = dup_array(orig, n);
            assert_int_equal(slim_prune_nm(w, rows, cols, pat[p][0], pat[p][1], 2, &z1, NULL), 0);
            assert_int_equal(slim_prune_nm_ref(r, rows, cols, pat[p][0], pat[p][1], &z2, NULL),
                             0);
            assert_int_equal(z1, z2);
            assert_int_equal(z1, n - (n - count_zeros(w, n)));
            check_nm(orig, w, rows, cols, pat[p][0], pat[p][1]);
            assert_memory_equal(w, r, n * sizeof *w);
            free(orig);
            free(w);
            free(r);
        }
}

static void test_prune_rows(void **state)
{
    /* row norms^2: 14, 0.25, 25, 0 (already zero) -> 50% zeroes rows 3, 1 */
    float w[12] = {1, 2, 3, 0.5f, 0, 0, 3, 4, 0, 0, 0, 0};
    size_t z;
    (void)state;
    assert_int_equal(slim_prune_rows(w, 4, 3, 0.5, 1, &z, NULL), 0);
    assert_int_equal(z, 2);
    const float want[12] = {1, 2, 3, 0, 0, 0, 3, 4, 0, 0, 0, 0};
    for (int i = 0; i < 12; i++)
        assert_true(w[i] == want[i]);
    /* large: twin agreement and the count */
    rng_seed(4);
    size_t rows = 1000, cols = 300;
    float *a = gauss_array(rows * cols, 1.0f), *b;
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++)
            a[r * cols + c] *= (float)(r % 17 + 1);
    b = dup_array(a, rows * cols);
    size_t z2;
    assert_int_equal(slim_prune_rows(a, rows, cols, 0.37, 2, &z, NULL), 0);
    assert_int_equal(slim_prune_rows_ref(b, rows, cols, 0.37, &z2, NULL), 0);
    assert_int_equal(z, 370);
    assert_int_equal(z2, 370);
    assert_memory_equal(a, b, rows * cols * sizeof *a);
    size_t zr = 0;
    for (size_t r = 0; r < rows; r++)
        zr += count_zeros(a + r * cols, cols) == cols;
    assert_int_equal(zr, 370);
    free(a);
    free(b);
}

/* ---- low rank ----------------------------------------------------------- */

/* W (m, n) = U diag(s) V^T with random orthonormal U (m, p), V (n, p). */
static float *make_spectrum(size_t m, size_t n, const float *s)
{
    size_t p = m < n ? m : n;
    float *u = gauss_array(m * p, 1.0f), *v = gauss_array(n * p, 1.0f), *tau = malloc(p * 4);
    float *w = malloc(m * n * sizeof *w);
    assert_int_equal(LAPACKE_sgeqrf(LAPACK_ROW_MAJOR, (int)m, (int)p, u, (int)p, tau), 0);
    assert_int_equal(LAPACKE_sorgqr(LAPACK_ROW_MAJOR, (int)m, (int)p, (int)p, u, (int)p, tau), 0);
    assert_int_equal(LAPACKE_sgeqrf(LAPACK_ROW_MAJOR, (int)n, (int)p, v, (int)p, tau), 0);
    assert_int_equal(LAPACKE_sorgqr(LAPACK_ROW_MAJOR, (int)n, (int)p, (int)p, v, (int)p, tau), 0);
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < p; j++)
            u[i * p + j] *= s[j];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)n, (int)p, 1.0f, u, (int)p,
                v, (int)p, 0.0f, w, (int)n);
    free(u);
    free(v);
    free(tau);
    return w;
}

/* ||W - U_r V_r||_F / ||W||_F measured from the factors, in double */
static double measured_error(const float *w, size_t m, size_t n, const struct slim_svd *svd,
                             size_t r)
{
    float *u = malloc(m * r * sizeof *u), *v = malloc(r * n * sizeof *v);
    double e = 0.0, f = 0.0;
    slim_lowrank_factors(svd, r, u, v);
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++) {
            double a = 0.0;
            for (size_t t = 0; t < r; t++)
                a += (double)u[i * r + t] * v[t * n + j];
            e += (w[i * n + j] - a) * (w[i * n + j] - a);
            f += (double)w[i * n + j] * w[i * n + j];
        }
    free(u);
    free(v);
    return sqrt(e / f);
}

static double dropped_error(const float *s, size_t p, size_t r)
{
    double d = 0.0, t = 0.0;
    for (size_t i = 0; i < p; i++) {
        t += (double)s[i] * s[i];
        if (i >= r)
            d += (double)s[i] * s[i];
    }
    return sqrt(d / t);
}

static void test_svd_exact_error(void **state)
{
    const size_t shapes[][2] = {{120, 80}, {64, 150}};
    (void)state;
    rng_seed(5);
    for (size_t sh = 0; sh < 2; sh++) {
        size_t m = shapes[sh][0], n = shapes[sh][1], p = m < n ? m : n;
        float s[150];
        for (size_t i = 0; i < p; i++)
            s[i] = 3.0f * powf(0.93f, (float)i);
        float *w = make_spectrum(m, n, s);
        struct slim_svd svd;
        assert_int_equal(slim_svd_exact(w, m, n, 1, NULL, &svd, NULL), 0);
        assert_int_equal(svd.k, p);
        for (size_t i = 0; i < p; i++)
            assert_true(fabsf(svd.s[i] - s[i]) <= 1e-4f * s[0]);
        const size_t ranks[] = {1, 10, 40, p};
        for (size_t a = 0; a < 4; a++) {
            size_t r = ranks[a];
            double want = dropped_error(s, p, r), got = measured_error(w, m, n, &svd, r);
            double est = slim_lowrank_rel_error(&svd, r);
            if (r == p) {
                assert_true(got < 1e-5 && est < 1e-3);
                continue;
            }
            assert_true(fabs(got - want) <= 1e-4 * want);
            assert_true(fabs(est - want) <= 1e-3 * want);
        }
        slim_svd_release(&svd);
        free(w);
    }
}

/* max |X X^T - I| over a (k, len) row-major X whose rows should be
 * orthonormal; stride between a row's elements `step`, between rows `ld` */
static double orth_defect(const float *x, size_t k, size_t len, size_t ld, size_t step)
{
    double worst = 0.0;
    for (size_t a = 0; a < k; a++)
        for (size_t b = a; b < k; b++) {
            double dot = 0.0;
            for (size_t t = 0; t < len; t++)
                dot += (double)x[a * ld + t * step] * x[b * ld + t * step];
            dot -= a == b ? 1.0 : 0.0;
            worst = fabs(dot) > worst ? fabs(dot) : worst;
        }
    return worst;
}

/* The stepped exact SVD against LAPACKE_sgesdd on shapes that take the
 * panelled path (min(m, n) > 128, not a multiple of the panel), wide and
 * tall: singular values within 1e-5 of the largest, U and V orthonormal,
 * W rebuilt to fp32 precision, and the leading vectors the same up to
 * sign. */
static void test_svd_exact_twin(void **state)
{
    const size_t shapes[][2] = {{300, 200}, {200, 300}, {257, 257}, {1000, 130}, {150, 700}};
    (void)state;
    rng_seed(17);
    for (size_t sh = 0; sh < 5; sh++) {
        size_t m = shapes[sh][0], n = shapes[sh][1], p = m < n ? m : n;
        float *w = gauss_array(m * n, 1.0f);
        struct slim_svd a, b;
        assert_int_equal(slim_svd_exact(w, m, n, 2, NULL, &a, NULL), 0);
        assert_int_equal(slim_svd_exact_ref(w, m, n, &b, NULL), 0);
        assert_int_equal(a.k, p);
        assert_int_equal(b.k, p);
        for (size_t i = 0; i < p; i++) {
            assert_true(fabsf(a.s[i] - b.s[i]) <= 1e-5f * b.s[0]);
            assert_true(i == 0 || a.s[i] <= a.s[i - 1]);
        }
        assert_true(measured_error(w, m, n, &a, p) < 1e-5);
        assert_true(orth_defect(a.u, p, m, 1, p) < 1e-4);    /* columns of U */
        assert_true(orth_defect(a.vt, p, n, n, 1) < 1e-4);   /* rows of Vt */
        for (size_t j = 0; j < 3; j++) {
            double du = 0.0, dv = 0.0;
            for (size_t i = 0; i < m; i++)
                du += (double)a.u[i * p + j] * b.u[i * p + j];
            for (size_t c = 0; c < n; c++)
                dv += (double)a.vt[j * n + c] * b.vt[j * n + c];
            assert_true(fabs(fabs(du) - 1.0) < 1e-3 && fabs(fabs(dv) - 1.0) < 1e-3);
        }
        slim_svd_release(&a);
        slim_svd_release(&b);
        free(w);
    }
}

struct poll_log {
    double last;
    int calls, stop_at_call;
    double stop_at_frac;
    int backwards;
};

static int log_poll(void *ud, double frac)
{
    struct poll_log *l = ud;
    if (frac < l->last)
        l->backwards++;
    l->last = frac;
    l->calls++;
    return (l->stop_at_call && l->calls >= l->stop_at_call) ||
           (l->stop_at_frac > 0 && frac >= l->stop_at_frac);
}

/* Progress goes 0 -> 1 without stepping back; a stop asked in the
 * panels, or while the bidiagonal SVD runs on its helper, returns
 * SLIM_ECANCELED; once the detached helper is settled nothing is left
 * allocated.  The randomized SVD stops too. */
static void test_svd_exact_poll(void **state)
{
    size_t m = 400, n = 300;
    float *w;
    struct slim_svd svd;
    struct poll_log l = {0};
    struct slim_poll poll = {log_poll, &l};
    struct slim_error err;
    long live;
    (void)state;
    rng_seed(18);
    w = gauss_array(m * n, 1.0f);
    assert_int_equal(slim_svd_exact(w, m, n, 2, &poll, &svd, NULL), 0);
    assert_true(l.calls > (int)((300 - 128) / 32) && l.backwards == 0 && l.last == 1.0);
    slim_svd_release(&svd);

    live = slim_alloc_live();
    l = (struct poll_log){.stop_at_call = 3};
    assert_int_equal(slim_svd_exact(w, m, n, 2, &poll, &svd, &err), SLIM_ECANCELED);
    assert_int_equal(l.calls, 3);
    assert_true(l.last > 0.0 && l.last < 0.58);
    assert_int_equal(slim_alloc_live(), live);
    free(w);

    /* 1024^2: sbdsdc runs long enough to be waited on and left behind */
    w = gauss_array(1024 * 1024, 1.0f);
    live = slim_alloc_live();
    l = (struct poll_log){.stop_at_frac = 0.59};
    assert_int_equal(slim_svd_exact(w, 1024, 1024, 2, &poll, &svd, &err), SLIM_ECANCELED);
    assert_true(l.last >= 0.59 && l.last < 0.77);
    slim_kernel_settle();
    assert_int_equal(slim_kernel_detached(), 0);
    assert_int_equal(slim_alloc_live(), live);

    struct slim_svd_opts o = {.poll = &poll};
    l = (struct poll_log){.stop_at_call = 2};
    assert_int_equal(slim_svd_randomized(w, 1024, 1024, 64, &o, 2, &svd, NULL), SLIM_ECANCELED);
    assert_int_equal(slim_alloc_live(), live);
    l = (struct poll_log){0};
    assert_int_equal(slim_svd_randomized(w, 1024, 1024, 64, &o, 2, &svd, NULL), 0);
    assert_true(l.calls >= 6 && l.backwards == 0 && l.last < 1.0);
    slim_svd_release(&svd);
    free(w);
}

/* k-means polls between its phases: progress grows, a stop is heard at
 * the first poll, and nothing leaks. */
static void test_kmeans_poll(void **state)
{
    size_t n = 200000;
    float *w = gauss_array(n, 1.0f), cb[16];
    uint8_t *idx = malloc(n);
    struct poll_log l = {0};
    struct slim_poll poll = {log_poll, &l};
    struct slim_kmeans_opts o = {.k = 16, .poll = &poll};
    long live = slim_alloc_live();
    (void)state;
    assert_int_equal(slim_kmeans_1d(w, n, &o, 2, cb, idx, NULL, NULL), 0);
    assert_true(l.calls >= 3 && l.backwards == 0);
    l = (struct poll_log){.stop_at_call = 1};
    assert_int_equal(slim_kmeans_1d(w, n, &o, 2, cb, idx, NULL, NULL), SLIM_ECANCELED);
    assert_int_equal(l.calls, 1);
    assert_int_equal(slim_alloc_live(), live);
    free(w);
    free(idx);
}

static void test_svd_randomized_error(void **state)
{
    const size_t m = 400, n = 300, p = 300, k = 20;
    float s[300];
    (void)state;
    rng_seed(6);
    for (size_t i = 0; i < p; i++)
        s[i] = 1.0f / (1.0f + (float)i); /* decaying, but slowly */
    float *w = make_spectrum(m, n, s);
    double opt = dropped_error(s, p, k);
    struct slim_svd svd;
    struct slim_svd_opts krylov = {0}, power = {.method = SLIM_SVD_POWER, .seed = 3};

    assert_int_equal(slim_svd_randomized(w, m, n, k, &krylov, 2, &svd, NULL), 0);
    assert_int_equal(svd.k, k);
    double got = measured_error(w, m, n, &svd, k);
    assert_true(got <= 1.02 * opt);
    /* the error from the singular values is exact for a projection */
    assert_true(fabs(slim_lowrank_rel_error(&svd, k) - got) <= 1e-3 * got);
    slim_svd_release(&svd);

    assert_int_equal(slim_svd_randomized(w, m, n, k, &power, 1, &svd, NULL), 0);
    assert_true(measured_error(w, m, n, &svd, k) <= 1.02 * opt);
    slim_svd_release(&svd);

    assert_int_equal(slim_svd_randomized_ref(w, m, n, k, 0, 1, &svd, NULL), 0);
    assert_true(measured_error(w, m, n, &svd, k) <= 1.02 * opt);
    slim_svd_release(&svd);

    /* the transposed shape, and a rank so large the exact path is taken */
    float *wt = malloc(m * n * sizeof *wt);
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++)
            wt[j * m + i] = w[i * n + j];
    assert_int_equal(slim_svd_randomized(wt, n, m, k, NULL, 1, &svd, NULL), 0);
    assert_true(measured_error(wt, n, m, &svd, k) <= 1.02 * opt);
    slim_svd_release(&svd);
    assert_int_equal(slim_svd_randomized(w, m, n, 200, NULL, 1, &svd, NULL), 0);
    assert_int_equal(svd.k, 200);
    assert_true(fabs(measured_error(w, m, n, &svd, 200) - dropped_error(s, p, 200)) <=
                1e-3 * dropped_error(s, p, 200));
    slim_svd_release(&svd);
    free(wt);
    free(w);
}

static void test_svd_rank_helpers(void **state)
{
    float s[4] = {3, 2, 1, 1}; /* squares 9 4 1 1: total 15 */
    (void)state;
    assert_int_equal(slim_lowrank_rank_for_ratio(100, 40, 0.25), 10);
    assert_int_equal(slim_lowrank_rank_for_ratio(100, 40, 0.0001), 1);
    assert_int_equal(slim_lowrank_rank_for_ratio(100, 40, 2.0), 40);
    assert_int_equal(slim_lowrank_rank_for_energy(s, 4, 15.0, 0.5), 1);   /* 9/15 = 0.6 */
    assert_int_equal(slim_lowrank_rank_for_energy(s, 4, 15.0, 0.8), 2);   /* 13/15 */
    assert_int_equal(slim_lowrank_rank_for_energy(s, 4, 15.0, 1.0), 4);
    assert_int_equal(slim_lowrank_rank_for_energy(s, 2, 15.0, 0.9), 0);   /* need more */
    assert_int_equal(slim_lowrank_max_useful_rank(4096, 4096), 2047);
    assert_int_equal(slim_lowrank_max_useful_rank(10, 1), 0);

    /* energy, randomized and exact, on a known spectrum */
    size_t m = 300, n = 200, r1, r2;
    float sp[200];
    double tot = 0.0, cum = 0.0;
    size_t want = 0;
    rng_seed(7);
    for (size_t i = 0; i < n; i++) {
        sp[i] = powf(0.9f, (float)i);
        tot += (double)sp[i] * sp[i];
    }
    for (want = 0; cum < 0.95 * tot; want++)
        cum += (double)sp[want] * sp[want];
    float *w = make_spectrum(m, n, sp);
    struct slim_svd a, b;
    assert_int_equal(slim_svd_for_energy(w, m, n, 0.95, 1, 2, NULL, &a, &r1, NULL), 0);
    assert_int_equal(slim_svd_for_energy(w, m, n, 0.95, 0, 1, NULL, &b, &r2, NULL), 0);
    assert_int_equal(r2, want);
    assert_true(r1 >= want && r1 <= want + 1);
    assert_int_equal(a.k, r1);
    assert_true(slim_lowrank_rel_error(&a, r1) <= sqrt(0.05) + 1e-6);
    slim_svd_release(&a);
    slim_svd_release(&b);
    free(w);
}

static void test_svd_bad_input(void **state)
{
    float w[6] = {1, 2, 3, 4, NAN, 6};
    struct slim_svd svd;
    struct slim_error err = {0};
    (void)state;
    assert_int_equal(slim_svd_exact(w, 2, 3, 1, NULL, &svd, &err), SLIM_ENUMERIC);
    assert_int_equal(slim_svd_randomized(w, 2, 3, 1, NULL, 1, &svd, NULL), SLIM_ENUMERIC);
    w[4] = 5;
    assert_int_equal(slim_svd_exact(w, 0, 3, 1, NULL, &svd, NULL), SLIM_EINVAL);
    assert_int_equal(slim_svd_randomized(w, 2, 3, 0, NULL, 1, &svd, NULL), SLIM_EINVAL);
    assert_int_equal(slim_svd_randomized(w, 2, 3, 3, NULL, 1, &svd, NULL), SLIM_EINVAL);
    /* a zero matrix and a 1 x 1 one */
    float z[6] = {0};
    assert_int_equal(slim_svd_exact(z, 2, 3, 1, NULL, &svd, NULL), 0);
    assert_true(svd.s[0] == 0.0f && slim_lowrank_rel_error(&svd, 1) == 0.0);
    slim_svd_release(&svd);
    float one = -2.5f, u, v;
    assert_int_equal(slim_svd_exact(&one, 1, 1, 1, NULL, &svd, NULL), 0);
    slim_lowrank_factors(&svd, 1, &u, &v);
    assert_true(fabsf(u * v - one) < 1e-6f);
    slim_svd_release(&svd);
    /* rank-deficient W, randomized: no NaN, error still right */
    float s[200] = {5, 4, 3};
    rng_seed(8);
    float *d = make_spectrum(300, 200, s);
    assert_int_equal(slim_svd_randomized(d, 300, 200, 8, NULL, 1, &svd, NULL), 0);
    for (size_t i = 0; i < 300 * 8; i++)
        assert_false(isnan(svd.u[i]));
    for (size_t i = 0; i < 8 * 200; i++)
        assert_false(isnan(svd.vt[i]));
    assert_true(measured_error(d, 300, 200, &svd, 8) < 1e-4);
    slim_svd_release(&svd);
    free(d);
}

/* ---- k-means ---------------------------------------------------------- */

static double recon_inertia(const float *w, size_t n, const float *cb, const uint8_t *idx)
{
    double e = 0.0;
    for (size_t i = 0; i < n; i++)
        e += ((double)w[i] - cb[idx[i]]) * ((double)w[i] - cb[idx[i]]);
    return e;
}

static void test_kmeans_by_hand(void **state)
{
    float w[7] = {10, 0, 10, 0, 0, 10, 1};
    float cb[3];
    uint8_t idx[7];
    struct slim_kmeans_opts o = {.k = 2};
    struct slim_kmeans_info info;
    (void)state;
    /* {0, 0, 0, 1} and {10, 10, 10}: centroids 0.25 and 10, inertia 0.75 */
    assert_int_equal(slim_kmeans_1d(w, 7, &o, 1, cb, idx, &info, NULL), 0);
    assert_true(cb[0] == 0.25f && cb[1] == 10.0f);
    assert_true(fabs(info.inertia - 0.75) < 1e-12);
    assert_int_equal(info.exact, 1);
    const uint8_t want[7] = {1, 0, 1, 0, 0, 1, 0};
    assert_memory_equal(idx, want, 7);
    /* with zeros kept: 0 is fixed, the other centroid takes {1, 10, 10, 10} */
    o.keep_zero = 1;
    assert_int_equal(slim_kmeans_1d(w, 7, &o, 1, cb, idx, &info, NULL), 0);
    assert_true(cb[0] == 0.0f && cb[1] == 7.75f);
    assert_true(idx[1] == 0 && idx[3] == 0 && idx[4] == 0 && idx[6] == 1);
    /* more clusters than values: each value its own, the rest repeat */
    o.keep_zero = 0;
    o.k = 3;
    float two[3] = {2, -1, 2};
    assert_int_equal(slim_kmeans_1d(two, 3, &o, 1, cb, idx, &info, NULL), 0);
    assert_true(cb[0] == -1.0f && cb[1] == 2.0f && cb[2] == 2.0f);
    assert_true(info.inertia == 0.0 && info.k_used == 2);
    assert_true(idx[0] == 1 && idx[1] == 0 && idx[2] == 1);
}

static void test_kmeans_boundaries(void **state)
{
    float cb[256], one = 0.5f, zeros[5] = {0};
    uint8_t idx[5] = {9, 9, 9, 9, 9};
    struct slim_kmeans_opts o = {.k = 4, .keep_zero = 1};
    struct slim_kmeans_info info;
    struct slim_error err = {0};
    (void)state;
    assert_int_equal(slim_kmeans_1d(NULL, 0, &o, 1, cb, NULL, &info, NULL), 0);
    assert_true(cb[0] == 0.0f && info.inertia == 0.0);
    assert_int_equal(slim_kmeans_1d(&one, 1, &o, 1, cb, idx, &info, NULL), 0);
    assert_true(cb[idx[0]] == 0.5f && info.inertia == 0.0);
    assert_int_equal(slim_kmeans_1d(zeros, 5, &o, 1, cb, idx, &info, NULL), 0);
    for (int i = 0; i < 5; i++)
        assert_true(cb[idx[i]] == 0.0f);
    /* k = 1 with keep_zero: everything maps to the fixed zero */
    float v[4] = {0, 1, 2, 3};
    o.k = 1;
    assert_int_equal(slim_kmeans_1d(v, 4, &o, 1, cb, idx, &info, NULL), 0);
    assert_true(cb[0] == 0.0f && idx[3] == 0 && fabs(info.inertia - 14.0) < 1e-12);
    /* bad input */
    o.k = 0;
    assert_int_equal(slim_kmeans_1d(v, 4, &o, 1, cb, idx, &info, &err), SLIM_EINVAL);
    o.k = 257;
    assert_int_equal(slim_kmeans_1d(v, 4, &o, 1, cb, idx, &info, NULL), SLIM_EINVAL);
    o.k = 2;
    v[2] = NAN;
    assert_int_equal(slim_kmeans_1d(v, 4, &o, 1, cb, idx, &info, &err), SLIM_ENUMERIC);
    assert_int_equal(err.code, SLIM_ENUMERIC);
    v[2] = INFINITY;
    assert_int_equal(slim_kmeans_1d(v, 4, &o, 1, cb, idx, &info, NULL), SLIM_ENUMERIC);
    assert_int_equal(slim_kmeans_1d_ref(v, 4, &o, cb, idx, &info, NULL), SLIM_ENUMERIC);
}

static void test_kmeans_lloyd_trace_and_ref(void **state)
{
    size_t n = 50000;
    double trace[4096];
    float cb[32], cbr[32];
    uint8_t *idx = malloc(n), *idr = malloc(n);
    struct slim_kmeans_opts o = {.k = 32, .no_dp = 1, .trace = trace, .trace_cap = 4096};
    struct slim_kmeans_info info, ir;
    (void)state;
    rng_seed(9);
    float *w = gauss_array(n, 0.02f);
    assert_int_equal(slim_kmeans_1d(w, n, &o, 2, cb, idx, &info, NULL), 0);
    assert_true(info.trace_len >= 2);
    for (int i = 1; i < info.trace_len; i++)
        assert_true(trace[i] <= trace[i - 1] * (1.0 + 1e-12));
    assert_true(fabs(info.inertia - recon_inertia(w, n, cb, idx)) <= 1e-9 * info.inertia);
    for (int j = 1; j < 32; j++)
        assert_true(cb[j] > cb[j - 1]);
    /* the O(nk) twin from the same start lands on the same fixed point */
    o.trace = NULL;
    assert_int_equal(slim_kmeans_1d_ref(w, n, &o, cbr, idr, &ir, NULL), 0);
    assert_true(fabs(info.inertia - ir.inertia) <= 1e-6 * ir.inertia);
    assert_true(nmse(cb, cbr, 32) < 1e-10);
    /* the default (DP start, banded refinement) is no worse than Lloyd */
    struct slim_kmeans_opts d = {.k = 32};
    struct slim_kmeans_info id;
    assert_int_equal(slim_kmeans_1d(w, n, &d, 2, cb, idx, &id, NULL), 0);
    assert_true(id.inertia <= info.inertia * (1.0 + 1e-12));
    assert_true(fabs(id.inertia - recon_inertia(w, n, cb, idx)) <= 1e-9 * id.inertia);
    /* threads do not change the answer */
    float cb1[32];
    uint8_t *idx1 = malloc(n);
    assert_int_equal(slim_kmeans_1d(w, n, &d, 1, cb1, idx1, NULL, NULL), 0);
    assert_memory_equal(cb, cb1, sizeof cb);
    assert_memory_equal(idx, idx1, n);
    free(idx1);
    free(w);
    free(idx);
    free(idr);
}

static void test_kmeans_exact_dp(void **state)
{
    /* small enough for the exact DP: it must beat or tie Lloyd */
    size_t n = 3000;
    float cb[8];
    uint8_t *idx = malloc(n);
    struct slim_kmeans_opts o = {.k = 8}, l = {.k = 8, .no_dp = 1};
    struct slim_kmeans_info a, b;
    (void)state;
    rng_seed(10);
    float *w = gauss_array(n, 1.0f);
    for (size_t i = 0; i < n / 3; i++)
        w[i] = w[i] * 0.1f + 4.0f; /* a second mode */
    assert_int_equal(slim_kmeans_1d(w, n, &o, 1, cb, idx, &a, NULL), 0);
    assert_int_equal(a.exact, 1);
    assert_int_equal(slim_kmeans_1d(w, n, &l, 1, cb, idx, &b, NULL), 0);
    assert_true(a.inertia <= b.inertia * (1.0 + 1e-12));
    free(w);
    free(idx);
}

static void test_kmeans_keep_zero_pruned(void **state)
{
    size_t n = 300000, zeros = 0;
    float cb[16];
    uint8_t *idx = malloc(n);
    struct slim_kmeans_opts o = {.k = 16, .keep_zero = 1};
    struct slim_kmeans_info info;
    (void)state;
    rng_seed(11);
    float *w = gauss_array(n, 0.05f);
    assert_int_equal(slim_prune_unstructured(w, n, 0.5, 2, NULL, NULL), 0);
    assert_int_equal(slim_kmeans_1d(w, n, &o, 2, cb, idx, &info, NULL), 0);
    int zidx = -1;
    for (size_t i = 0; i < n; i++)
        if (w[i] == 0.0f) {
            zeros++;
            assert_true(cb[idx[i]] == 0.0f);
            assert_true(zidx < 0 || idx[i] == zidx);
            zidx = idx[i];
        }
    /* a non-zero weight goes to its nearest non-fixed centroid */
    for (size_t i = 0; i < n; i++)
        if (w[i] != 0.0f) {
            assert_true(idx[i] != zidx);
            for (int j = 0; j < 16; j++)
                if (j != zidx)
                    assert_true(fabsf(w[i] - cb[idx[i]]) <= fabsf(w[i] - cb[j]) * (1 + 1e-6f));
        }
    assert_int_equal(zeros, n / 2);
    assert_int_equal(info.k_used, 16);
    for (int j = 1; j < 16; j++)
        assert_true(cb[j] > cb[j - 1]);
    assert_true(fabs(info.inertia - recon_inertia(w, n, cb, idx)) <= 1e-9 * info.inertia);
    free(w);
    free(idx);
}

/* ---- quantization: hand-worked bytes ------------------------------------- */

static void test_int8_by_hand(void **state)
{
    /* row 0 as in quantize.c's test: scale 2/127, codes 64 -127 32;
     * row 1 all zero: scale 1, codes 0 */
    float w[6] = {1.0f, -2.0f, 0.5f, 0, 0, 0}, scale[2], deq[6];
    int8_t q[6], zp[2];
    (void)state;
    assert_int_equal(slim_q8_rows(w, 2, 3, 1, 0, q, scale, NULL, deq, NULL, 1, NULL), 0);
    const int8_t want[6] = {64, -127, 32, 0, 0, 0};
    assert_memory_equal(q, want, 6);
    assert_true(scale[0] == 2.0f / 127.0f && scale[1] == 1.0f);
    assert_true(deq[1] == -2.0f && deq[3] == 0.0f);
    /* asymmetric, range [-1, 3.25]: scale 4.25/255 = 1/60, zp = rint(-128 + 60) = -68 */
    float a[3] = {-1.0f, 3.25f, 0.0f};
    assert_int_equal(slim_q8_rows(a, 1, 3, 0, 0, q, scale, zp, deq, NULL, 1, NULL), 0);
    assert_int_equal(zp[0], -68);
    assert_int_equal(q[0], -128);
    assert_int_equal(q[1], 127);
    assert_int_equal(q[2], -68);
    assert_true(deq[2] == 0.0f);
}

static void test_int4_by_hand(void **state)
{
    /* one row of 7 in groups of 4: [-7 0 3 7] and [3.5 -3.5 1] */
    float w[7] = {-7, 0, 3, 7, 3.5f, -3.5f, 1}, scale[2], deq[7], back[7];
    uint8_t p[4], zp[2];
    (void)state;
    /* symmetric: scales 1 and 0.5, zp 8: codes 1 8 11 15 | 15 1 10 */
    assert_int_equal(slim_q4_groups(w, 1, 7, 4, 1, 0, p, scale, zp, deq, NULL, 1, NULL), 0);
    const uint8_t want_sym[4] = {0x81, 0xFB, 0x1F, 0x0A};
    assert_memory_equal(p, want_sym, 4);
    assert_true(scale[0] == 1.0f && scale[1] == 0.5f && zp[0] == 8 && zp[1] == 8);
    slim_q4_dequant(p, scale, zp, 1, 7, 4, back);
    assert_memory_equal(back, deq, sizeof deq);
    assert_memory_equal(deq, w, sizeof w);
    /* asymmetric: [-5 0 2 10] -> scale 1, zp 5, codes 0 5 7 15;
     * [7.5 1.5 0] -> scale 0.5, zp 0, codes 15 3 0 */
    float a[7] = {-5, 0, 2, 10, 7.5f, 1.5f, 0};
    assert_int_equal(slim_q4_groups(a, 1, 7, 4, 0, 0, p, scale, zp, deq, NULL, 1, NULL), 0);
    const uint8_t want_asym[4] = {0x50, 0xF7, 0x3F, 0x00};
    assert_memory_equal(p, want_asym, 4);
    assert_true(scale[0] == 1.0f && scale[1] == 0.5f && zp[0] == 5 && zp[1] == 0);
    slim_q4_dequant(p, scale, zp, 1, 7, 4, back);
    assert_memory_equal(back, a, sizeof a);
    /* an all-zero group: scale 1, codes = zp, decodes to 0 (no NaN) */
    float z[5] = {0, 0, 0, 0, 1};
    for (int sym = 0; sym <= 1; sym++) {
        assert_int_equal(slim_q4_groups(z, 1, 5, 4, sym, 0, p, scale, zp, deq, NULL, 1, NULL), 0);
        assert_true(scale[0] == 1.0f && zp[0] == (sym ? 8 : 0));
        assert_int_equal(p[0], sym ? 0x88 : 0x00);
        for (int i = 0; i < 4; i++)
            assert_true(deq[i] == 0.0f);
        assert_true(deq[4] == 1.0f);
    }
}

static void test_ternary_binary_by_hand(void **state)
{
    /* ternary row 0: mean|w| = 0.7, t = 0.49; {1, -1, 2} above, scale
     * 4/3; codes 1 2 0 0 | 1 0 -> 0x09 0x01.  Row 1 all zero. */
    float w[12] = {1, -1, 0.1f, -0.1f, 2, 0, 0, 0, 0, 0, 0, 0}, scale[2], deq[12], back[12];
    uint8_t p[4];
    (void)state;
    assert_int_equal(slim_ternary_rows(w, 2, 6, p, scale, deq, NULL, 1, NULL), 0);
    const uint8_t want_t[4] = {0x09, 0x01, 0x00, 0x00};
    assert_memory_equal(p, want_t, 4);
    assert_true(scale[0] == 4.0f / 3.0f && scale[1] == 0.0f);
    slim_ternary_dequant(p, scale, 2, 6, back);
    assert_memory_equal(back, deq, sizeof deq);
    assert_true(deq[1] == -4.0f / 3.0f && deq[2] == 0.0f && deq[7] == 0.0f);
    /* binary, 9 columns: mean|w| = 14/9; signs + - + + - + - + | + */
    float b[9] = {1, -2, 0, 3, -0.5f, 0.5f, -1, 2, 4}, bs, bd[9], bb[9];
    uint8_t bp[2];
    assert_int_equal(slim_binary_rows(b, 1, 9, bp, &bs, bd, NULL, 1, NULL), 0);
    assert_int_equal(bp[0], 0xAD);
    assert_int_equal(bp[1], 0x01);
    assert_true(bs == (float)(14.0 / 9.0));
    slim_binary_dequant(bp, &bs, 1, 9, bb);
    assert_memory_equal(bb, bd, sizeof bd);
    assert_true(bd[1] == -bs && bd[2] == bs);
    /* all-zero row: scale 0, so it decodes to exact zeros */
    float zr[3] = {0, 0, 0};
    assert_int_equal(slim_binary_rows(zr, 1, 3, bp, &bs, bd, NULL, 1, NULL), 0);
    assert_true(bs == 0.0f && bd[0] == 0.0f && bd[2] == 0.0f);
}

/* ---- quantization: twins, calibration, boundaries ------------------------ */

static void test_quant_twins(void **state)
{
    const size_t shapes[][2] = {{37, 300}, {600, 257}, {3, 1}};
    (void)state;
    rng_seed(12);
    for (size_t sh = 0; sh < 3; sh++) {
        size_t rows = shapes[sh][0], cols = shapes[sh][1], n = rows * cols;
        size_t ng = (cols + 63) / 64, pb = (cols + 1) / 2;
        float *w = gauss_array(n, 0.02f), *d1 = malloc(n * 4), *d2 = malloc(n * 4);
        float *s1 = malloc(rows * ng * 4), *s2 = malloc(rows * ng * 4);
        int8_t *q1 = malloc(n), *q2 = malloc(n), z1[600], z2[600];
        uint8_t *p1 = malloc(rows * pb), *p2 = malloc(rows * pb);
        uint8_t *u1 = malloc(rows * ng), *u2 = malloc(rows * ng);
        for (size_t r = 0; r < rows; r += 5) /* some all-zero rows */
            memset(w + r * cols, 0, cols * sizeof *w);
        for (int sym = 0; sym <= 1; sym++)
            for (int steps = 0; steps <= 40; steps += 40) {
                assert_int_equal(slim_q8_rows(w, rows, cols, sym, steps, q1, s1, z1, d1, NULL, 2, NULL),
                                 0);
                assert_int_equal(slim_q8_rows_ref(w, rows, cols, sym, steps, q2, s2, z2, d2, NULL),
                                 0);
                assert_true(nmse(d1, d2, n) < 1e-10);
                assert_true(nmse(d1, w, n) < 1e-4);
                assert_int_equal(
                    slim_q4_groups(w, rows, cols, 64, sym, steps, p1, s1, u1, d1, NULL, 2, NULL), 0);
                assert_int_equal(
                    slim_q4_groups_ref(w, rows, cols, 64, sym, steps, p2, s2, u2, d2, NULL), 0);
                assert_true(nmse(d1, d2, n) < 1e-10);
                assert_true(nmse(d1, w, n) < 0.02);
                slim_q4_dequant(p1, s1, u1, rows, cols, 64, d2);
                assert_memory_equal(d1, d2, n * sizeof *d1);
            }
        assert_int_equal(slim_ternary_rows(w, rows, cols, p1, s1, d1, NULL, 2, NULL), 0);
        assert_int_equal(slim_ternary_rows_ref(w, rows, cols, p2, s2, d2, NULL), 0);
        assert_true(nmse(d1, d2, n) < 1e-6);
        assert_int_equal(slim_binary_rows(w, rows, cols, p1, s1, d1, NULL, 2, NULL), 0);
        assert_int_equal(slim_binary_rows_ref(w, rows, cols, p2, s2, d2, NULL), 0);
        assert_true(nmse(d1, d2, n) < 1e-10);
        free(w), free(d1), free(d2), free(s1), free(s2), free(q1), free(q2);
        free(p1), free(p2), free(u1), free(u2);
    }
}

static void test_quant_mse_calibration_lowers_error(void **state)
{
    /* Gaussian groups: clipping the rare large values pays off (measured:
     * int4 asym -10%, sym -26%; int8 about -1%) */
    size_t rows = 64, cols = 512, n = rows * cols;
    float *w = gauss_array(n, 1.0f), *d0 = malloc(n * 4), *d1 = malloc(n * 4);
    float s[64 * 4];
    uint8_t *p = malloc(n / 2), zp[64 * 4];
    int8_t *q = malloc(n), z8[64];
    (void)state;
    rng_seed(13);
    for (size_t i = 0; i < n; i++)
        w[i] = grand();
    for (int sym = 0; sym <= 1; sym++) {
        assert_int_equal(slim_q4_groups(w, rows, cols, 128, sym, 0, p, s, zp, d0, NULL, 2, NULL), 0);
        assert_int_equal(slim_q4_groups(w, rows, cols, 128, sym, 50, p, s, zp, d1, NULL, 2, NULL), 0);
        assert_true(nmse(d1, w, n) < 0.95 * nmse(d0, w, n));
        assert_int_equal(slim_q8_rows(w, rows, cols, sym, 0, q, s, z8, d0, NULL, 2, NULL), 0);
        assert_int_equal(slim_q8_rows(w, rows, cols, sym, 50, q, s, z8, d1, NULL, 2, NULL), 0);
        assert_true(nmse(d1, w, n) < nmse(d0, w, n));
    }
    free(w), free(d0), free(d1), free(p), free(q);
}

static void test_quant_bad_input(void **state)
{
    float w[8] = {1, 2, 3, 4, 5, 6, 7, INFINITY}, s[4], d[8];
    int8_t q[8], z[2];
    uint8_t p[8], u[4];
    struct slim_error err = {0};
    (void)state;
    assert_int_equal(slim_q8_rows(w, 2, 4, 1, 0, q, s, z, d, NULL, 1, &err), SLIM_ENUMERIC);
    assert_int_equal(err.code, SLIM_ENUMERIC);
    assert_int_equal(slim_q8_rows_ref(w, 2, 4, 1, 0, q, s, z, d, NULL), SLIM_ENUMERIC);
    assert_int_equal(slim_q4_groups(w, 2, 4, 2, 0, 0, p, s, u, d, NULL, 1, NULL), SLIM_ENUMERIC);
    assert_int_equal(slim_q4_groups_ref(w, 2, 4, 2, 0, 0, p, s, u, d, NULL), SLIM_ENUMERIC);
    w[7] = NAN;
    assert_int_equal(slim_ternary_rows(w, 2, 4, p, s, d, NULL, 1, NULL), SLIM_ENUMERIC);
    assert_int_equal(slim_ternary_rows_ref(w, 2, 4, p, s, d, NULL), SLIM_ENUMERIC);
    assert_int_equal(slim_binary_rows(w, 2, 4, p, s, d, NULL, 1, NULL), SLIM_ENUMERIC);
    assert_int_equal(slim_binary_rows_ref(w, 2, 4, p, s, d, NULL), SLIM_ENUMERIC);
    w[7] = 8;
    assert_int_equal(slim_q4_groups(w, 2, 4, 0, 0, 0, p, s, u, d, NULL, 1, NULL), SLIM_EINVAL);
    assert_int_equal(slim_q8_rows(w, 2, 4, 0, 0, q, s, NULL, d, NULL, 1, NULL), SLIM_EINVAL);
    assert_int_equal(slim_q8_rows(w, 2, 4, 1, -1, q, s, NULL, d, NULL, 1, NULL), SLIM_EINVAL);
    /* empty: nothing to do, nothing touched */
    assert_int_equal(slim_q8_rows(NULL, 0, 4, 1, 0, NULL, NULL, NULL, NULL, NULL, 1, NULL), 0);
    assert_int_equal(slim_q4_groups(NULL, 3, 0, 32, 1, 0, NULL, NULL, NULL, NULL, NULL, 1, NULL), 0);
    assert_int_equal(slim_ternary_rows(NULL, 0, 0, NULL, NULL, NULL, NULL, 1, NULL), 0);
    /* one element */
    float one = -0.75f, so, dq;
    uint8_t po, zo;
    assert_int_equal(slim_q4_groups(&one, 1, 1, 32, 0, 0, &po, &so, &zo, &dq, NULL, 1, NULL), 0);
    assert_true(dq == -0.75f && po == 0 && zo == 15);
}

/* ---- allocation failures ---------------------------------------------- */

static void test_alloc_failures(void **state)
{
    /* fail the n-th allocation for n = 0, 1, ...: every kernel reports
     * SLIM_ENOMEM, leaks nothing, and at last succeeds */
    size_t n = 20000;
    float *orig = gauss_array(n, 1.0f), *w = malloc(n * 4), cb[8];
    uint8_t *idx = malloc(n);
    (void)state;
    for (int kernel = 0; kernel < 4; kernel++) {
        int ok = 0;
        for (long fail = 0; fail < 64 && !ok; fail++) {
            long live = slim_alloc_live();
            int rc;
            memcpy(w, orig, n * 4);
            slim_alloc_fail_after(fail);
            if (kernel == 0) {
                rc = slim_prune_unstructured(w, n, 0.5, 1, NULL, NULL);
            } else if (kernel == 1) {
                struct slim_kmeans_opts o = {.k = 8};
                rc = slim_kmeans_1d(w, n, &o, 1, cb, idx, NULL, NULL);
            } else {
                struct slim_svd svd;
                rc = kernel == 2 ? slim_svd_randomized(w, 200, 100, 5, NULL, 1, &svd, NULL)
                                 : slim_svd_exact(w, 200, 100, 1, NULL, &svd, NULL);
                if (!rc)
                    slim_svd_release(&svd);
            }
            slim_alloc_fail_after(-1);
            assert_int_equal(slim_alloc_live(), live);
            if (rc == 0)
                ok = 1;
            else
                assert_int_equal(rc, SLIM_ENOMEM);
        }
        assert_true(ok);
    }
    free(orig);
    free(w);
    free(idx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parallel_runs_every_part),
        cmocka_unit_test(test_prune_count_rule),
        cmocka_unit_test(test_prune_unstructured_exact),
        cmocka_unit_test(test_prune_unstructured_all_equal),
        cmocka_unit_test(test_prune_unstructured_zeros_count),
        cmocka_unit_test(test_prune_global),
        cmocka_unit_test(test_prune_nan_rejected),
        cmocka_unit_test(test_prune_bad_args),
        cmocka_unit_test(test_prune_nm_by_hand),
        cmocka_unit_test(test_prune_nm_patterns),
        cmocka_unit_test(test_prune_rows),
        cmocka_unit_test(test_svd_exact_error),
        cmocka_unit_test(test_svd_exact_twin),
        cmocka_unit_test(test_svd_exact_poll),
        cmocka_unit_test(test_kmeans_poll),
        cmocka_unit_test(test_svd_randomized_error),
        cmocka_unit_test(test_svd_rank_helpers),
        cmocka_unit_test(test_svd_bad_input),
        cmocka_unit_test(test_kmeans_by_hand),
        cmocka_unit_test(test_kmeans_boundaries),
        cmocka_unit_test(test_kmeans_lloyd_trace_and_ref),
        cmocka_unit_test(test_kmeans_exact_dp),
        cmocka_unit_test(test_kmeans_keep_zero_pruned),
        cmocka_unit_test(test_int8_by_hand),
        cmocka_unit_test(test_int4_by_hand),
        cmocka_unit_test(test_ternary_binary_by_hand),
        cmocka_unit_test(test_quant_twins),
        cmocka_unit_test(test_quant_mse_calibration_lowers_error),
        cmocka_unit_test(test_quant_bad_input),
        cmocka_unit_test(test_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
