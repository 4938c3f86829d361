/*
 * bench_passes.c - speed and quality of the issue-3 kernels on the
 * issue's sizes, side by side with the same work done by numpy and
 * scikit-learn (tests/bench/numpy_peer.py).  A benchmark, not a test: it
 * prints figures and never fails on them.  run_bench.sh drives it:
 *
 *   bench_passes gen DIR          writes the inputs (raw float32) to DIR
 *   bench_passes run DIR [PEER]   times our kernels on them and prints a
 *                                 table with the peer's figures from PEER
 *                                 ("key value" lines) and the ratio
 *
 * Inputs: w4096 (4096 x 4096 Gaussian, sigma 0.02) for the element-wise
 * passes and 16M-weight k-means; lr1024 and lr4096, weight-like matrices
 * with a power-law spectrum (G1 diag((1 + i)^-1/2) G2 / sqrt(n), G Gaussian)
 * for low rank, plus g4096 (pure Gaussian, flat spectrum: the hard case
 * for randomized SVD); km1m (1M Gaussian weights).  Throughput is GB/s of
 * fp32 input; every figure is the best of a few runs; in-place kernels get
 * a fresh copy each run, outside the timing.  Threads: SLIMD_BENCH_THREADS
 * (default 2).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cblas.h>
#include "passes/kernels/kernels.h"

#define N4096 ((size_t)4096 * 4096)

static int threads = 2;

/* ---- data ------------------------------------------------------------------ */

static uint64_t rs = 0x243f6a8885a308d3ull;

static double urand(void)
{
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return ((double)(rs >> 11) + 0.5) / 9007199254740992.0;
}

static void gauss_fill(float *v, size_t n, float sigma)
{
    for (size_t i = 0; i + 1 < n; i += 2) {
        double r = sqrt(-2.0 * log(urand())), t = 6.283185307179586 * urand();
        v[i] = (float)(r * cos(t)) * sigma;
        v[i + 1] = (float)(r * sin(t)) * sigma;
    }
    if (n & 1)
        v[n - 1] = (float)(sqrt(-2.0 * log(urand())) * cos(6.283185307179586 * urand())) * sigma;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "bench_passes: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static void save(const char *dir, const char *name, const float *v, size_t n)
{
    char path[4096];
    FILE *f;
    snprintf(path, sizeof path, "%s/%s.f32", dir, name);
    f = fopen(path, "wb");
    if (!f || fwrite(v, sizeof *v, n, f) != n || fclose(f) != 0) {
        perror(path);
        exit(1);
    }
}

static float *load(const char *dir, const char *name, size_t n)
{
    char path[4096];
    float *v = xmalloc(n * sizeof *v);
    FILE *f;
    snprintf(path, sizeof path, "%s/%s.f32", dir, name);
    f = fopen(path, "rb");
    if (!f || fread(v, sizeof *v, n, f) != n) {
        fprintf(stderr, "bench_passes: cannot read %zu floats from %s (run 'gen' first)\n", n,
                path);
        exit(1);
    }
    fclose(f);
    return v;
}

/* (G1 diag(d) G2) / sqrt(n), d_i = (1 + i)^-1/2: a slowly decaying,
 * weight-like spectrum */
static float *power_law(size_t n)
{
    float *g1 = xmalloc(n * n * sizeof *g1), *g2 = xmalloc(n * n * sizeof *g2);
    float *w = xmalloc(n * n * sizeof *w);
    gauss_fill(g1, n * n, 1.0f);
    gauss_fill(g2, n * n, 1.0f);
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++)
            g1[i * n + j] *= 1.0f / sqrtf((float)(1 + j)) / sqrtf((float)n);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)n, (int)n, 1.0f, g1,
                (int)n, g2, (int)n, 0.0f, w, (int)n);
    free(g1);
    free(g2);
    return w;
}

static int gen(const char *dir)
{
    float *w = xmalloc(N4096 * sizeof *w);
    gauss_fill(w, N4096, 0.02f);
    save(dir, "w4096", w, N4096);
    gauss_fill(w, (size_t)1 << 20, 0.02f);
    save(dir, "km1m", w, (size_t)1 << 20);
    gauss_fill(w, N4096, 1.0f);
    save(dir, "g4096", w, N4096);
    free(w);
    w = power_law(1024);
    save(dir, "lr1024", w, 1024 * 1024);
    free(w);
    w = power_law(4096);
    save(dir, "lr4096", w, N4096);
    free(w);
    return 0;
}

/* ---- peer figures ------------------------------------------------------------ */

#define MAX_PEER 64
static char peer_key[MAX_PEER][64];
static double peer_val[MAX_PEER];
static int n_peer;
static char peer_desc[256] = "no peer figures";

static void load_peer(const char *path)
{
    FILE *f = path ? fopen(path, "r") : NULL;
    char line[256];
    if (!f)
        return;
    while (n_peer < MAX_PEER && fgets(line, sizeof line, f)) {
        char key[64];
        double v;
        if (line[0] == '#') {
            snprintf(peer_desc, sizeof peer_desc, "%s", line + 1 + (line[1] == ' '));
            peer_desc[strcspn(peer_desc, "\n")] = 0;
            continue;
        }
        if (sscanf(line, "%63s %lf", key, &v) == 2) {
            strcpy(peer_key[n_peer], key);
            peer_val[n_peer++] = v;
        }
    }
    fclose(f);
}

static double peer(const char *key)
{
    for (int i = 0; i < n_peer; i++)
        if (!strcmp(peer_key[i], key))
            return peer_val[i];
    return NAN;
}

/* ---- table --------------------------------------------------------------------- */

static void header(void)
{
    printf("%-34s %12s %12s %8s   %-14s %-14s\n", "pass (fp32 input)", "ours", "peer",
           "speedup", "ours quality", "peer quality");
    printf("%-34s %12s %12s %8s   %-14s %-14s\n", "----------------", "----", "----",
           "-------", "------------", "------------");
}

/* rate: GB/s (higher is better) or seconds (lower is better) */
static void row(const char *name, double ours, double theirs, int seconds, const char *qname,
                double q_ours, double q_theirs)
{
    char a[32], b[32], r[32], qa[32], qb[32];
    const char *unit = seconds ? "s" : "GB/s";
    snprintf(a, sizeof a, "%.3f %s", ours, unit);
    if (isnan(theirs)) {
        snprintf(b, sizeof b, "-");
        snprintf(r, sizeof r, "-");
    } else {
        snprintf(b, sizeof b, "%.3f %s", theirs, unit);
        snprintf(r, sizeof r, "%.1fx", seconds ? theirs / ours : ours / theirs);
    }
    if (qname) {
        snprintf(qa, sizeof qa, "%s %.6g", qname, q_ours);
        if (isnan(q_theirs))
            snprintf(qb, sizeof qb, "-");
        else
            snprintf(qb, sizeof qb, "%s %.6g", qname, q_theirs);
    } else {
        qa[0] = qb[0] = 0;
    }
    printf("%-34s %12s %12s %8s   %-14s %-14s\n", name, a, b, r, qa, qb);
    fflush(stdout);
}

static double rel_err(const float *a, const float *ref, size_t n)
{
    double e = 0.0, s = 0.0;
    for (size_t i = 0; i < n; i++) {
        e += ((double)a[i] - ref[i]) * ((double)a[i] - ref[i]);
        s += (double)ref[i] * ref[i];
    }
    return sqrt(e / s);
}

static void check(int rc, const char *what, const struct slim_error *err)
{
    if (rc) {
        fprintf(stderr, "bench_passes: %s: %s\n", what, err->msg);
        exit(1);
    }
}

#define REPS 5

/* ---- the element-wise passes ---------------------------------------------------- */

static void bench_elementwise(const char *dir)
{
    const size_t R = 4096, C = 4096, n = N4096, ng = C / 128;
    float *w = load(dir, "w4096", n), *t = xmalloc(n * sizeof *t), *deq = xmalloc(n * sizeof *deq);
    float *scale = xmalloc(R * ng * sizeof *scale);
    int8_t *q8 = xmalloc(n), zp8[4096];
    uint8_t *pk = xmalloc(n), *zp4 = xmalloc(R * ng);
    struct slim_error err = {0};
    double best, gb = (double)n * sizeof(float) / 1e9;
    size_t z;

    /* int8 per channel, symmetric */
    best = INFINITY;
    for (int r = 0; r < REPS; r++) {
        double t0 = slim_now();
        check(slim_q8_rows(w, R, C, 1, 0, q8, scale, NULL, NULL, NULL, threads, &err), "int8", &err);
        best = fmin(best, slim_now() - t0);
    }
    check(slim_q8_rows(w, R, C, 1, 0, q8, scale, NULL, deq, NULL, threads, &err), "int8", &err);
    row("int8 per-channel symmetric", gb / best, peer("int8_gbps"), 0, "err", rel_err(deq, w, n),
        peer("int8_err"));
    best = INFINITY;
    for (int r = 0; r < REPS; r++) {
        double t0 = slim_now();
        check(slim_q8_rows(w, R, C, 0, 0, q8, scale, zp8, NULL, NULL, threads, &err), "int8", &err);
        best = fmin(best, slim_now() - t0);
    }
    check(slim_q8_rows(w, R, C, 0, 0, q8, scale, zp8, deq, NULL, threads, &err), "int8", &err);
    row("int8 per-channel asymmetric", gb / best, peer("int8a_gbps"), 0, "err",
        rel_err(deq, w, n), peer("int8a_err"));

    /* int4, groups of 128, asymmetric; then symmetric; then calibrated */
    for (int sym = 0; sym <= 1; sym++) {
        best = INFINITY;
        for (int r = 0; r < REPS; r++) {
            double t0 = slim_now();
            check(slim_q4_groups(w, R, C, 128, sym, 0, pk, scale, zp4, NULL, NULL, threads, &err),
                  "int4", &err);
            best = fmin(best, slim_now() - t0);
        }
        check(slim_q4_groups(w, R, C, 128, sym, 0, pk, scale, zp4, deq, NULL, threads, &err), "int4",
              &err);
        row(sym ? "int4 group 128 symmetric" : "int4 group 128 asymmetric", gb / best,
            peer(sym ? "int4s_gbps" : "int4_gbps"), 0, "err", rel_err(deq, w, n),
            peer(sym ? "int4s_err" : "int4_err"));
    }
    double t0 = slim_now();
    check(slim_q4_groups(w, R, C, 128, 0, 50, pk, scale, zp4, deq, NULL, threads, &err), "int4", &err);
    row("int4 g128 asym, MSE calib (50)", gb / (slim_now() - t0), NAN, 0, "err",
        rel_err(deq, w, n), NAN);

    /* ternary and binary */
    best = INFINITY;
    for (int r = 0; r < REPS; r++) {
        t0 = slim_now();
        check(slim_ternary_rows(w, R, C, pk, scale, NULL, NULL, threads, &err), "ternary", &err);
        best = fmin(best, slim_now() - t0);
    }
    check(slim_ternary_rows(w, R, C, pk, scale, deq, NULL, threads, &err), "ternary", &err);
    row("ternary per row (2 bit)", gb / best, peer("ternary_gbps"), 0, "err", rel_err(deq, w, n),
        peer("ternary_err"));
    best = INFINITY;
    for (int r = 0; r < REPS; r++) {
        t0 = slim_now();
        check(slim_binary_rows(w, R, C, pk, scale, NULL, NULL, threads, &err), "binary", &err);
        best = fmin(best, slim_now() - t0);
    }
    check(slim_binary_rows(w, R, C, pk, scale, deq, NULL, threads, &err), "binary", &err);
    row("binary per row (1 bit)", gb / best, peer("binary_gbps"), 0, "err", rel_err(deq, w, n),
        peer("binary_err"));

    /* pruning, in place on a fresh copy */
    best = INFINITY;
    for (int r = 0; r < REPS; r++) {
        memcpy(t, w, n * sizeof *t);
        t0 = slim_now();
        check(slim_prune_unstructured(t, n, 0.5, threads, &z, &err), "prune", &err);
        best = fmin(best, slim_now() - t0);
    }
    row("prune 50% unstructured", gb / best, peer("prune50_gbps"), 0, "zeroed", (double)z,
        peer("prune50_zeroed"));
    best = INFINITY;
    for (int r = 0; r < REPS; r++) {
        memcpy(t, w, n * sizeof *t);
        t0 = slim_now();
        check(slim_prune_nm(t, R, C, 2, 4, threads, &z, &err), "prune 2:4", &err);
        best = fmin(best, slim_now() - t0);
    }
    row("prune 2:4", gb / best, peer("prune24_gbps"), 0, "zeroed", (double)z,
        peer("prune24_zeroed"));
    best = INFINITY;
    for (int r = 0; r < REPS; r++) {
        memcpy(t, w, n * sizeof *t);
        t0 = slim_now();
        check(slim_prune_rows(t, R, C, 0.5, threads, &z, &err), "prune rows", &err);
        best = fmin(best, slim_now() - t0);
    }
    row("prune 50% rows", gb / best, peer("rows_gbps"), 0, "rows", (double)z, peer("rows_zeroed"));

    free(w), free(t), free(deq), free(scale), free(q8), free(pk), free(zp4);
}

/* ---- low rank -------------------------------------------------------------------- */

/* ||W - U_r V_r|| / ||W|| from the factors (one sgemm) */
static double lowrank_measured(const float *w, size_t m, size_t n, const struct slim_svd *svd,
                               size_t r)
{
    float *u = xmalloc(m * r * sizeof *u), *v = xmalloc(r * n * sizeof *v);
    float *a = xmalloc(m * n * sizeof *a);
    slim_lowrank_factors(svd, r, u, v);
    memcpy(a, w, m * n * sizeof *a);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)r, -1.0f, u,
                (int)r, v, (int)n, 1.0f, a, (int)n);
    double e = 0.0, f = 0.0;
    for (size_t i = 0; i < m * n; i++) {
        e += (double)a[i] * a[i];
        f += (double)w[i] * w[i];
    }
    free(u), free(v), free(a);
    return sqrt(e / f);
}

static void bench_one_svd(const char *label, const float *w, size_t m, size_t n, size_t r,
                          int exact, const struct slim_svd_opts *o, const char *pkey,
                          const char *pekey, int reps)
{
    struct slim_svd svd;
    struct slim_error err = {0};
    double best = INFINITY, e = 0.0;
    for (int i = 0; i < reps; i++) {
        double t0 = slim_now();
        int rc = exact ? slim_svd_exact(w, m, n, threads, NULL, &svd, &err)
                       : slim_svd_randomized(w, m, n, r, o, threads, &svd, &err);
        check(rc, label, &err);
        best = fmin(best, slim_now() - t0);
        if (i == reps - 1)
            e = lowrank_measured(w, m, n, &svd, r);
        slim_svd_release(&svd);
    }
    row(label, best, pkey ? peer(pkey) : NAN, 1, "err", e, pekey ? peer(pekey) : NAN);
}

static void bench_lowrank(const char *dir)
{
    float *w = load(dir, "lr1024", 1024 * 1024);
    struct slim_svd_opts power = {.method = SLIM_SVD_POWER};
    bench_one_svd("lowrank r64 1024^2 randomized", w, 1024, 1024, 64, 0, NULL, "lr64_s",
                  "lr64_err", 5);
    bench_one_svd("lowrank r64 1024^2 exact", w, 1024, 1024, 64, 1, NULL, "lr64x_s", "lr64x_err",
                  2);
    free(w);
    w = load(dir, "lr4096", N4096);
    bench_one_svd("lowrank r256 4096^2 randomized", w, 4096, 4096, 256, 0, NULL, "lr256_s",
                  "lr256_err", 3);
    bench_one_svd("  (dashSVD power, 3 iterations)", w, 4096, 4096, 256, 0, &power, NULL, NULL,
                  1);
    free(w);
    w = load(dir, "g4096", N4096);
    bench_one_svd("lowrank r256 4096^2 flat spectrum", w, 4096, 4096, 256, 0, NULL, "lr256g_s",
                  "lr256g_err", 2);
    free(w);
}

/* ---- k-means ----------------------------------------------------------------------- */

static void bench_kmeans(const char *dir)
{
    struct slim_kmeans_opts o = {.k = 256};
    struct slim_kmeans_info info;
    struct slim_error err = {0};
    float cb[256];
    size_t n1 = (size_t)1 << 20;
    float *w = load(dir, "km1m", n1);
    uint8_t *idx = xmalloc(N4096);
    double best = INFINITY;
    for (int r = 0; r < 3; r++) {
        double t0 = slim_now();
        check(slim_kmeans_1d(w, n1, &o, threads, cb, idx, &info, &err), "kmeans", &err);
        best = fmin(best, slim_now() - t0);
    }
    row("k-means k=256, 1M weights", best, peer("km1m_s"), 1, "inertia", info.inertia,
        peer("km1m_inertia"));
    free(w);
    w = load(dir, "w4096", N4096);
    double t0 = slim_now();
    check(slim_kmeans_1d(w, N4096, &o, threads, cb, idx, &info, &err), "kmeans", &err);
    row("k-means k=256, 16M weights", slim_now() - t0, peer("km16m_s"), 1, "inertia",
        info.inertia, peer("km16m_inertia"));
    free(w);
    free(idx);
}

int main(int argc, char **argv)
{
    const char *env = getenv("SLIMD_BENCH_THREADS");
    if (env && atoi(env) > 0)
        threads = atoi(env);
    if (argc >= 3 && !strcmp(argv[1], "gen"))
        return gen(argv[2]);
    if (argc < 3 || strcmp(argv[1], "run")) {
        fprintf(stderr, "usage: bench_passes gen DIR | bench_passes run DIR [PEER]\n");
        return 2;
    }
    load_peer(argc > 3 ? argv[3] : NULL);
    printf("slimd issue-3 kernels, %d threads, best of runs; peer: %s\n", threads, peer_desc);
    header();
    bench_elementwise(argv[2]);
    bench_lowrank(argv[2]);
    bench_kmeans(argv[2]);
    return 0;
}
