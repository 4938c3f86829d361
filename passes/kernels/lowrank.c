/*
 * lowrank.c - truncated SVD and the split W (m, n) ~ U_r V_r with U_r =
 * U sqrt(S), V_r = sqrt(S) V^T.
 *
 * Exact: sgesdd's own steps, taken one at a time so that a cancel is
 * heard within a few hundred milliseconds and progress is real (one
 * sgesdd call on 4096^2 ran ~17 s, deaf and silent).  On the column-major
 * view A (M >= N) of W^T, or of W transposed when W is tall: A is
 * bidiagonalised by sgebrd's loop written out (slabrd per panel of 32
 * columns, then the two sgemm updates of the trailing matrix), B's SVD is
 * sbdsdc's divide and conquer, and U = Q U_B, V^T = V_B^T P^T are sormbr
 * applied to 512 columns (rows) at a time, which are independent.  sbdsdc
 * alone (~20 % of the time) cannot be stopped: it runs on a helper thread
 * that a cancel leaves to finish and free its buffers (slim_kernel_settle
 * waits for it).  Same arithmetic as sgesdd, same speed (CPU time within
 * noise on 2048^2 here); slim_svd_exact_ref is the one sgesdd call.
 * Rejected: one-sided Jacobi (interruptible per sweep, but 5-10x the
 * flops), sbdsvdx by index ranges (33 s for half the vectors of a 4096
 * bidiagonal, against sbdsdc's 6 s for all), and running sgesdd whole on
 * a thread that a cancel abandons (17 s of CPU and ~300 MiB after the
 * job ended, and no progress to show).
 *
 * Randomized: a range finder (Halko, Martinsson, Tropp, SIAM Review 2011)
 * and Rayleigh-Ritz.  sgemm passes over W dominate, so the default is
 * randomized block Krylov (Musco and Musco, NeurIPS 2015): Q = orth[W Om,
 * (W W^T) W Om, ..., (W W^T)^q W Om]; each W^T Q_i is kept, so W^T Q needs
 * no extra pass.  On 4096^2, rank 256, q = 5 and b = 96 (12 passes of
 * width 96) beat scikit-learn's randomized_svd (n_iter 4: 10 passes of
 * width 266) in error on a power-law spectrum, in half the time; on a flat
 * spectrum they are 0.5% worse (see tests/bench).  Subspace iteration with
 * dashSVD's dynamic shifts (Feng et al., ACM TOMS 2024) is kept as
 * SLIM_SVD_POWER; it needed ~1.6x the passes for the same error.
 *
 * Each block is orthonormalised by Cholesky QR (Gram matrix in double)
 * after Gram-Schmidt against the last two blocks (the projected matrix is
 * block tridiagonal), then again after Gram-Schmidt against all ("twice is
 * enough"); dashSVD's eigSVD takes over for rank-deficient blocks.
 * Householder QR per product (slim_svd_randomized_ref) costs a product;
 * LU (scikit-learn) is not orthonormal, which Krylov needs.  The Ritz step
 * asks ssyevr for the k top eigenpairs of Bt^T Bt only.  Both methods are
 * orthogonal projections, so ||W - W_r||^2 = ||W||^2 - sum s_i^2: the
 * error, and an energy target, follow from the singular values.
 * OpenBLAS 0.3.21's thread count is process-wide: the kernels set it to
 * `threads` and restore it, so concurrent callers race on speed only.
 */
#include <cblas.h>
#include <float.h>
#include <lapacke.h>
#include <math.h>
#include <pthread.h>
#include <string.h>
#include <time.h>
#include "passes/kernels/kernels.h"

/* ---- small helpers ------------------------------------------------------ */

static int blas_threads_enter(int threads)
{
    int old = openblas_get_num_threads();
    openblas_set_num_threads(threads > 0 ? threads : 1);
    return old;
}

static void blas_threads_leave(int old)
{
    openblas_set_num_threads(old);
}

static int nomem(struct slim_error *err)
{
    return slim_error_set(err, SLIM_ENOMEM, "lowrank: out of memory");
}

struct sumsq_job {
    const float *w;
    size_t n;
    double part[SLIM_KERNEL_MAX_THREADS];
};

static void sumsq_part(void *ctx, int part, int nparts)
{
    struct sumsq_job *j = ctx;
    size_t a = j->n * (size_t)part / (size_t)nparts, b = j->n * (size_t)(part + 1) / (size_t)nparts;
    double total = 0.0;
    for (size_t i0 = a; i0 < b; i0 += 4096) {
        size_t e = b - i0 < 4096 ? b : i0 + 4096;
        float acc[16] = {0};
        size_t i = i0;
        for (; i + 16 <= e; i += 16)
            for (int l = 0; l < 16; l++)
                acc[l] += j->w[i + l] * j->w[i + l];
        for (; i < e; i++)
            acc[0] += j->w[i] * j->w[i];
        for (int l = 0; l < 16; l++)
            total += acc[l];
    }
    j->part[part] = total;
}

/* ||w||^2 in double; -1 if w holds NaN (which the sum of squares
 * propagates, so no separate scan is needed). */
static double sum_squares(const float *w, size_t n, int threads)
{
    struct sumsq_job j = {.w = w, .n = n};
    int nparts = slim_kernel_threads(threads, n);
    double s = 0.0;
    slim_kernel_parallel(nparts, sumsq_part, &j);
    for (int p = 0; p < nparts; p++)
        s += j.part[p];
    return isnan(s) ? -1.0 : s;
}

/* Gaussian N(0, 1) by Box-Muller over splitmix64; chunks of 4096 values
 * have their own stream, so the result does not depend on threads. */
static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

struct gauss_job {
    float *out;
    size_t n;
    uint64_t seed;
};

static void gauss_part(void *ctx, int part, int nparts)
{
    struct gauss_job *j = ctx;
    size_t chunks = (j->n + 4095) / 4096;
    for (size_t c = chunks * (size_t)part / (size_t)nparts;
         c < chunks * (size_t)(part + 1) / (size_t)nparts; c++) {
        uint64_t st = j->seed ^ (0xd1b54a32d192ed03ull * (c + 1));
        size_t a = c * 4096, b = j->n - a < 4096 ? j->n : a + 4096;
        for (size_t i = a; i < b; i += 2) {
            uint64_t r = splitmix64(&st);
            float u1 = ((float)(r >> 40) + 0.5f) * (1.0f / 16777216.0f);
            float u2 = (float)((r >> 16) & 0xffffff) * (1.0f / 16777216.0f);
            float rad = sqrtf(-2.0f * logf(u1)), s, co;
            sincosf(6.2831853f * u2, &s, &co);
            j->out[i] = rad * co;
            if (i + 1 < b)
                j->out[i + 1] = rad * s;
        }
    }
}

static void gaussian_fill(float *out, size_t n, uint64_t seed, int threads)
{
    struct gauss_job j = {out, n, seed};
    slim_kernel_parallel(slim_kernel_threads(threads, n), gauss_part, &j);
}

void slim_svd_release(struct slim_svd *svd)
{
    if (!svd)
        return;
    slim_aligned_free(svd->u);
    slim_aligned_free(svd->s);
    slim_aligned_free(svd->vt);
    memset(svd, 0, sizeof *svd);
}

static int svd_alloc(struct slim_svd *out, size_t m, size_t n, size_t k)
{
    memset(out, 0, sizeof *out);
    out->m = m;
    out->n = n;
    out->k = k;
    out->u = slim_kernel_alloc(m * k * sizeof(float));
    out->s = slim_aligned_alloc(k * sizeof(float));
    out->vt = slim_kernel_alloc(k * n * sizeof(float));
    if (!out->u || !out->s || !out->vt) {
        slim_svd_release(out);
        return -1;
    }
    return 0;
}

static int check_args(const float *w, size_t m, size_t n, struct slim_error *err)
{
    if (!m || !n)
        return slim_error_set(err, SLIM_EINVAL, "lowrank: empty matrix %zux%zu", m, n);
    if (!w)
        return slim_error_set(err, SLIM_EINVAL, "lowrank: NULL matrix");
    if (m > (size_t)INT32_MAX || n > (size_t)INT32_MAX || m * n / m != n)
        return slim_error_set(err, SLIM_EINVAL, "lowrank: matrix %zux%zu too large", m, n);
    return 0;
}

/* ---- exact ---------------------------------------------------------------- */

/* LAPACK routines that LAPACKE does not wrap: sgebrd's panel step and its
 * unblocked tail (reference LAPACK and OpenBLAS both export them). */
void slabrd_(const lapack_int *m, const lapack_int *n, const lapack_int *nb, float *a,
             const lapack_int *lda, float *d, float *e, float *tauq, float *taup, float *x,
             const lapack_int *ldx, float *y, const lapack_int *ldy);
void sgebd2_(const lapack_int *m, const lapack_int *n, float *a, const lapack_int *lda, float *d,
             float *e, float *tauq, float *taup, float *work, lapack_int *info);

/* sgebrd's panel width and its crossover to unblocked code (what ilaenv
 * answers for SGEBRD), so the panels are LAPACK's own */
#define BRD_NB 32
#define BRD_NX 128
/* columns of U (rows of V^T) per back-transformation step: the steps
 * cost ~0.3 s of one core on 4096^2; narrower ones pay for sormbr's block
 * reflectors again each time (measured: 128 columns cost 2x) */
#define ORM_CHUNK 512
/* The phases' shares of the time, for progress (measured on 2048^2 and
 * 4096^2 here): bidiagonalisation, bidiagonal SVD, back transformations. */
#define PH_BRD 0.58
#define PH_BD 0.19

static int polled(const struct slim_poll *p, double frac)
{
    return p && p->fn && p->fn(p->ud, frac > 1.0 ? 1.0 : frac);
}

static int canceled(struct slim_error *err)
{
    return slim_error_set(err, SLIM_ECANCELED, "canceled");
}

/* Detached helpers (see slim_kernel_settle). */
static pthread_mutex_t detached_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t detached_cv = PTHREAD_COND_INITIALIZER;
static int detached_n;

void slim_kernel_settle(void)
{
    pthread_mutex_lock(&detached_lock);
    while (detached_n > 0)
        pthread_cond_wait(&detached_cv, &detached_lock);
    pthread_mutex_unlock(&detached_lock);
}

int slim_kernel_detached(void)
{
    int n;
    pthread_mutex_lock(&detached_lock);
    n = detached_n;
    pthread_mutex_unlock(&detached_lock);
    return n;
}

/* A (M, N) column-major (lda M), M >= N -> B = Q^T A P upper bidiagonal
 * (d (N), e (N - 1)), the reflectors left in A with tauq, taup (N): what
 * sgebrd computes, by sgebrd's own loop (slabrd on each panel of BRD_NB
 * columns, two sgemm updates of the trailing matrix, sgebd2 for the last
 * BRD_NX or fewer), with a poll between panels.  A panel's work goes with
 * its trailing matrix, (M - i)(N - i) nb; the tail's with (M - i)(N - i)^2. */
static int bidiagonalize(float *a, lapack_int M, lapack_int N, float *d, float *e, float *tauq,
                         float *taup, const struct slim_poll *poll, struct slim_error *err)
{
    lapack_int nb = BRD_NB, i = 0, info = 0;
    float *x = slim_kernel_alloc((size_t)M * nb * sizeof *x);
    float *y = slim_kernel_alloc((size_t)N * nb * sizeof *y);
    double total = 0.0, done = 0.0;
    int rc = 0;

    if (!x || !y) {
        rc = nomem(err);
        goto out;
    }
    for (lapack_int j = 0; j + BRD_NX < N; j += nb)
        total += (double)(M - j) * (double)(N - j) * nb;
    for (i = 0; i + BRD_NX < N; i += nb) {
        lapack_int mi = M - i, ni = N - i, mr = mi - nb, nr = ni - nb;
        slabrd_(&mi, &ni, &nb, a + i + (size_t)i * M, &M, d + i, e + i, tauq + i, taup + i, x,
                &M, y, &N);
        /* A(i+nb:, i+nb:) -= V Y^T + X U^T, V and U the panel's reflectors */
        cblas_sgemm(CblasColMajor, CblasNoTrans, CblasTrans, mr, nr, nb, -1.0f,
                    a + (i + nb) + (size_t)i * M, M, y + nb, N, 1.0f,
                    a + (i + nb) + (size_t)(i + nb) * M, M);
        cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, mr, nr, nb, -1.0f, x + nb, M,
                    a + i + (size_t)(i + nb) * M, M, 1.0f, a + (i + nb) + (size_t)(i + nb) * M, M);
        for (lapack_int j = i; j < i + nb; j++) {
            a[j + (size_t)j * M] = d[j];
            a[j + (size_t)(j + 1) * M] = e[j];
        }
        done += (double)mi * (double)ni * nb;
        total = done > total ? done : total;
        if (polled(poll, PH_BRD * 0.98 * done / total)) {
            rc = canceled(err);
            goto out;
        }
    }
    {
        lapack_int mi = M - i, ni = N - i;
        float *work = x; /* sgebd2 wants max(mi, ni) <= M floats */
        sgebd2_(&mi, &ni, a + i + (size_t)i * M, &M, d + i, e + i, tauq + i, taup + i, work,
                &info);
        if (info)
            rc = slim_error_set(err, SLIM_EINTERNAL, "lowrank: sgebd2 failed (info %d)",
                                (int)info);
    }
out:
    slim_aligned_free(x);
    slim_aligned_free(y);
    return rc;
}

/* The bidiagonal SVD B = U_B S V_B^T (sbdsdc, divide and conquer), the one
 * step that cannot stop midway: it runs on a helper thread, and the
 * caller polls while it waits.  A cancel detaches the helper, which frees
 * the job when sbdsdc returns. */
struct bd_job {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cv;
    lapack_int n, info;
    float *d, *e, *u, *vt;  /* d (n), e (n), u and vt (n, n) column-major */
    int done, abandoned;
};

static void bd_free(struct bd_job *j)
{
    slim_aligned_free(j->d);
    slim_aligned_free(j->e);
    slim_aligned_free(j->u);
    slim_aligned_free(j->vt);
    pthread_cond_destroy(&j->cv);
    pthread_mutex_destroy(&j->lock);
    slim_free(j);
}

static void *bd_main(void *arg)
{
    struct bd_job *j = arg;
    float q = 0.0f;
    lapack_int iq = 0, info;
    int abandoned;
    info = LAPACKE_sbdsdc(LAPACK_COL_MAJOR, 'U', 'I', j->n, j->d, j->e, j->u, j->n, j->vt, j->n,
                          &q, &iq);
    pthread_mutex_lock(&j->lock);
    j->info = info;
    j->done = 1;
    abandoned = j->abandoned;
    pthread_cond_signal(&j->cv);
    pthread_mutex_unlock(&j->lock);
    if (abandoned) {
        bd_free(j);
        pthread_mutex_lock(&detached_lock);
        detached_n--;
        pthread_cond_broadcast(&detached_cv);
        pthread_mutex_unlock(&detached_lock);
    }
    return NULL;
}

/* Runs sbdsdc on d, e (copied) into *job (new; bd_free) while polling;
 * `expect` is the seconds it should take, for progress. */
static int bidiagonal_svd(const float *d, const float *e, lapack_int n, double expect,
                          const struct slim_poll *poll, struct bd_job **job,
                          struct slim_error *err)
{
    struct bd_job *j = slim_calloc(1, sizeof *j);
    double t0 = slim_now();
    int rc = 0;

    *job = NULL;
    if (!j)
        return nomem(err);
    pthread_mutex_init(&j->lock, NULL);
    pthread_cond_init(&j->cv, NULL);
    j->n = n;
    j->d = slim_aligned_alloc((size_t)n * sizeof(float));
    j->e = slim_aligned_alloc((size_t)n * sizeof(float));
    j->u = slim_kernel_alloc((size_t)n * n * sizeof(float));
    j->vt = slim_kernel_alloc((size_t)n * n * sizeof(float));
    if (!j->d || !j->e || !j->u || !j->vt) {
        bd_free(j);
        return nomem(err);
    }
    memcpy(j->d, d, (size_t)n * sizeof(float));
    memcpy(j->e, e, (size_t)(n - 1) * sizeof(float));
    j->e[n - 1] = 0.0f;
    if (pthread_create(&j->thread, NULL, bd_main, j)) {
        bd_main(j);   /* no thread: run it here, unpolled */
        pthread_mutex_lock(&j->lock);
    } else {
        pthread_mutex_lock(&j->lock);
        while (!j->done) {
            struct timespec ts;
            double f = expect > 0 ? (slim_now() - t0) / expect : 0.0;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 20 * 1000 * 1000;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&j->cv, &j->lock, &ts);
            if (j->done)
                break;
            pthread_mutex_unlock(&j->lock);
            /* estimated from the time it should take: sbdsdc says nothing */
            if (polled(poll, PH_BRD + PH_BD * (f < 0.95 ? f : 0.95))) {
                pthread_mutex_lock(&j->lock);
                if (!j->done) {
                    j->abandoned = 1;
                    pthread_mutex_lock(&detached_lock);
                    detached_n++;
                    pthread_mutex_unlock(&detached_lock);
                    pthread_detach(j->thread);
                    pthread_mutex_unlock(&j->lock);
                    return canceled(err);
                }
                rc = canceled(err);
                break;
            }
            pthread_mutex_lock(&j->lock);
        }
        pthread_mutex_unlock(&j->lock);
        pthread_join(j->thread, NULL);
        pthread_mutex_lock(&j->lock);
    }
    if (!rc && j->info)
        rc = slim_error_set(err, j->info < 0 ? SLIM_EINTERNAL : SLIM_ENUMERIC,
                            "lowrank: sbdsdc failed (info %d)", (int)j->info);
    pthread_mutex_unlock(&j->lock);
    if (rc)
        bd_free(j);
    else
        *job = j;
    return rc;
}

/* C (rows, cols, ld ldc) column-major <- Q C (vect 'Q', left) or C P^T
 * (vect 'P', right), Q and P from bidiagonalize(a (M, N)), in steps of
 * ORM_CHUNK columns (Q) or rows (P) of C, which are independent; frac0 +
 * span * (step share) is polled after each. */
static int back_transform(char vect, const float *a, lapack_int M, lapack_int N, const float *tau,
                          float *c, lapack_int rows, lapack_int cols, lapack_int ldc,
                          float *work, lapack_int lwork, double frac0, double span,
                          const struct slim_poll *poll, struct slim_error *err)
{
    lapack_int total = vect == 'Q' ? cols : rows;
    for (lapack_int s = 0; s < total; s += ORM_CHUNK) {
        lapack_int w = total - s < ORM_CHUNK ? total - s : ORM_CHUNK, info;
        if (vect == 'Q')
            info = LAPACKE_sormbr_work(LAPACK_COL_MAJOR, 'Q', 'L', 'N', rows, w, N, a, M, tau,
                                       c + (size_t)s * ldc, ldc, work, lwork);
        else
            info = LAPACKE_sormbr_work(LAPACK_COL_MAJOR, 'P', 'R', 'T', w, cols, N, a, M, tau,
                                       c + s, ldc, work, lwork);
        if (info)
            return slim_error_set(err, SLIM_EINTERNAL, "lowrank: sormbr failed (info %d)",
                                  (int)info);
        if (polled(poll, frac0 + span * (double)(s + w) / (double)total))
            return canceled(err);
    }
    return 0;
}

/* dst (cols, rows) row-major <- src (rows, cols) row-major, in tiles. */
static void transpose(const float *src, size_t rows, size_t cols, float *dst)
{
    for (size_t i0 = 0; i0 < rows; i0 += 64)
        for (size_t j0 = 0; j0 < cols; j0 += 64)
            for (size_t i = i0; i < rows && i < i0 + 64; i++)
                for (size_t j = j0; j < cols && j < j0 + 64; j++)
                    dst[j * rows + i] = src[i * cols + j];
}

int slim_svd_exact(const float *w, size_t m, size_t n, int threads, const struct slim_poll *poll,
                   struct slim_svd *out, struct slim_error *err)
{
    size_t k = m < n ? m : n;
    /* A, column-major M x N with M >= N: W^T (row-major W as it lies) when
     * n >= m, else W (a transposing copy) */
    int wide = n >= m;
    lapack_int M = (lapack_int)(wide ? n : m), N = (lapack_int)k, lwork = -1;
    float *a = NULL, *d = NULL, *e = NULL, *tq = NULL, *tp = NULL, *ua = NULL, *vta = NULL;
    float *work = NULL, wq = 0.0f;
    struct bd_job *bd = NULL;
    double frob2, amax = 0.0, scale = 1.0, t0;
    int rc, old;

    memset(out, 0, sizeof *out);
    if ((rc = check_args(w, m, n, err)))
        return rc;
    frob2 = sum_squares(w, m * n, threads);
    if (frob2 < 0.0)
        return slim_error_set(err, SLIM_ENUMERIC, "lowrank: NaN in matrix");
    if (isinf(frob2))
        return slim_error_set(err, SLIM_ENUMERIC, "lowrank: Inf in matrix (or ||W|| overflows)");
    if (polled(poll, 0.0))
        return canceled(err);
    a = slim_kernel_alloc(m * n * sizeof *a);
    d = slim_aligned_alloc(k * sizeof *d);
    e = slim_aligned_alloc(k * sizeof *e);
    tq = slim_aligned_alloc(k * sizeof *tq);
    tp = slim_aligned_alloc(k * sizeof *tp);
    ua = slim_kernel_alloc((size_t)M * k * sizeof *ua);
    vta = slim_kernel_alloc(k * k * sizeof *vta);
    if (!a || !d || !e || !tq || !tp || !ua || !vta) {
        rc = nomem(err);
        goto out;
    }
    if (wide)
        memcpy(a, w, m * n * sizeof *a);
    else
        transpose(w, m, n, a);
    /* sgesdd's scaling: entries far from 1 would under- or overflow in
     * the reflectors; the singular values are scaled back at the end */
    for (size_t i = 0; i < m * n; i++)
        amax = fabs(a[i]) > amax ? fabs(a[i]) : amax;
    {
        double small = sqrt((double)FLT_MIN) / FLT_EPSILON, big = 1.0 / small;
        if (amax > 0.0 && amax < small)
            scale = small / amax;
        else if (amax > big)
            scale = big / amax;
        if (scale != 1.0)
            for (size_t i = 0; i < m * n; i++)
                a[i] = (float)(a[i] * scale);
    }
    old = blas_threads_enter(threads);
    t0 = slim_now();
    rc = bidiagonalize(a, M, N, d, e, tq, tp, poll, err);
    if (!rc)
        rc = bidiagonal_svd(d, e, N, (slim_now() - t0) * PH_BD / PH_BRD, poll, &bd, err);
    if (!rc) {
        /* U_A = Q [U_B; 0] (M, N), V_A^T = V_B^T P^T (N, N), as sgesdd's
         * path for M >= N does it */
        for (lapack_int c = 0; c < N; c++) {
            memcpy(ua + (size_t)c * M, bd->u + (size_t)c * N, (size_t)N * sizeof *ua);
            memset(ua + (size_t)c * M + N, 0, (size_t)(M - N) * sizeof *ua);
        }
        memcpy(vta, bd->vt, (size_t)N * N * sizeof *vta);
        memcpy(d, bd->d, (size_t)N * sizeof *d);
        bd_free(bd);
        bd = NULL;
        /* the workspace a whole-width call would want: with less,
         * sormbr falls back to unblocked code (measured: 4x slower) */
        if (LAPACKE_sormbr_work(LAPACK_COL_MAJOR, 'Q', 'L', 'N', M, N, N, a, M, tq, ua, M, &wq,
                                -1) == 0)
            lwork = (lapack_int)wq;
        if (LAPACKE_sormbr_work(LAPACK_COL_MAJOR, 'P', 'R', 'T', N, N, N, a, M, tp, vta, N, &wq,
                                -1) == 0 && (lapack_int)wq > lwork)
            lwork = (lapack_int)wq;
        if (lwork < 1 || !(work = slim_aligned_alloc((size_t)lwork * sizeof *work)))
            rc = lwork < 1 ? slim_error_set(err, SLIM_EINTERNAL, "lowrank: sormbr workspace query failed")
                           : nomem(err);
    }
    {
        /* U's share of the back transformations is M / (M + N) */
        double rest = 1.0 - PH_BRD - PH_BD, fu = (double)M / (double)(M + N);
        if (!rc)
            rc = back_transform('Q', a, M, N, tq, ua, M, N, M, work, lwork, PH_BRD + PH_BD,
                                rest * fu, poll, err);
        if (!rc)
            rc = back_transform('P', a, M, N, tp, vta, N, N, N, work, lwork,
                                PH_BRD + PH_BD + rest * fu, rest * (1.0 - fu), poll, err);
    }
    blas_threads_leave(old);
    if (!rc && svd_alloc(out, m, n, k))
        rc = nomem(err);
    if (!rc) {
        /* W = A^T = V_A S U_A^T when wide: U_W (m, k) row-major is V_A^T's
         * column-major buffer and Vt_W (k, n) is U_A's; else W = A =
         * U_A S V_A^T, both transposed */
        if (wide) {
            memcpy(out->u, vta, m * k * sizeof *vta);
            memcpy(out->vt, ua, k * n * sizeof *ua);
        } else {
            transpose(ua, k, m, out->u);
            transpose(vta, k, k, out->vt);
        }
        for (size_t i = 0; i < k; i++)
            out->s[i] = (float)(d[i] / scale);
        out->frob2 = frob2;
    }
out:
    if (bd)
        bd_free(bd);
    slim_aligned_free(a);
    slim_aligned_free(d);
    slim_aligned_free(e);
    slim_aligned_free(tq);
    slim_aligned_free(tp);
    slim_aligned_free(ua);
    slim_aligned_free(vta);
    slim_aligned_free(work);
    if (!rc)
        polled(poll, 1.0);
    return rc;
}

int slim_svd_exact_ref(const float *w, size_t m, size_t n, struct slim_svd *out,
                       struct slim_error *err)
{
    size_t k = m < n ? m : n;
    float *a = NULL;
    double frob2;
    int rc, old, info;

    if ((rc = check_args(w, m, n, err)))
        return rc;
    frob2 = sum_squares(w, m * n, 1);
    if (frob2 < 0.0)
        return slim_error_set(err, SLIM_ENUMERIC, "lowrank: NaN in matrix");
    if (isinf(frob2))
        return slim_error_set(err, SLIM_ENUMERIC, "lowrank: Inf in matrix (or ||W|| overflows)");
    a = slim_kernel_alloc(m * n * sizeof *a);
    if (!a || svd_alloc(out, m, n, k)) {
        slim_aligned_free(a);
        return nomem(err);
    }
    memcpy(a, w, m * n * sizeof *a);
    old = blas_threads_enter(1);
    /* column-major W^T (n x m) = V S U^T: "U" is V^T row-major, "VT" is U */
    info = LAPACKE_sgesdd(LAPACK_COL_MAJOR, 'S', (lapack_int)n, (lapack_int)m, a,
                          (lapack_int)n, out->s, out->vt, (lapack_int)n, out->u, (lapack_int)k);
    blas_threads_leave(old);
    slim_aligned_free(a);
    if (info != 0) {
        slim_svd_release(out);
        return slim_error_set(err, info < 0 ? SLIM_EINTERNAL : SLIM_ENUMERIC,
                              "lowrank: sgesdd failed (info %d)", (int)info);
    }
    out->frob2 = frob2;
    return 0;
}

/* ---- eigSVD and block orthonormalisation --------------------------------- */

struct ws {
    double *xd;   /* (rows, b) double copy of a block */
    double *g;    /* (b, b) Gram / eigenvectors */
    double *d;    /* (b,) eigenvalues */
    float *mf;    /* (b, b) V D^-1/2 in float */
    float *c;     /* (p, b) projections on earlier blocks */
    float *tmp;   /* (rows, b) or (L, L) */
    float *tmp2;  /* (L, k) */
    lapack_int *isuppz; /* (2 L) */
};

/* Eigen-decomposition of X^T X for X (rows, b, ld ldx): on return g holds
 * the eigenvectors (columns, row-major) and d the eigenvalues, descending. */
static int gram_eig(const float *x, size_t rows, size_t b, size_t ldx, struct ws *ws)
{
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < b; j++)
            ws->xd[i * b + j] = x[i * ldx + j];
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)b, (int)rows, 1.0, ws->xd, (int)b,
                0.0, ws->g, (int)b);
    if (LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'U', (lapack_int)b, ws->g, (lapack_int)b, ws->d))
        return -1;
    /* ascending -> descending: reverse the columns and the values */
    for (size_t j = 0; j < b / 2; j++) {
        double t = ws->d[j];
        ws->d[j] = ws->d[b - 1 - j];
        ws->d[b - 1 - j] = t;
        for (size_t i = 0; i < b; i++) {
            t = ws->g[i * b + j];
            ws->g[i * b + j] = ws->g[i * b + b - 1 - j];
            ws->g[i * b + b - 1 - j] = t;
        }
    }
    return 0;
}

/* Directions whose squared singular value is below this fraction of the
 * largest are numerically absent (rank-deficient W); they become zero. */
#define EIG_FLOOR 1e-12

/* X (rows, b, ld b) -> X R^-1 with R^T R = X^T X (Cholesky QR).  The
 * Gram matrix is formed in double when X may be ill-conditioned (precise),
 * in float when X is already nearly orthonormal.  Returns -1, leaving X as
 * it was, if X^T X is not numerically positive definite. */
static int chol_qr(float *x, size_t rows, size_t b, int precise, double min_pivot,
                   struct ws *ws)
{
    if (precise) {
        for (size_t i = 0; i < rows * b; i++)
            ws->xd[i] = x[i];
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)b, (int)rows, 1.0, ws->xd,
                    (int)b, 0.0, ws->g, (int)b);
    } else {
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)b, (int)rows, 1.0f, x, (int)b,
                    0.0f, ws->mf, (int)b);
        for (size_t i = 0; i < b * b; i++)
            ws->g[i] = ws->mf[i];
    }
    if (LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'U', (lapack_int)b, ws->g, (lapack_int)b))
        return -1;
    /* A pivot this small means X is (numerically) rank-deficient: let the
     * caller fall back.  Pivots carry sqrt(eps) of noise relative to the
     * largest: 1.5e-8 with a double Gram matrix, 3.5e-4 with a float one,
     * whose input is meant to be nearly orthonormal anyway (R ~ I). */
    double dmax = 0.0, dmin = INFINITY;
    for (size_t j = 0; j < b; j++) {
        double d = fabs(ws->g[j * b + j]);
        dmax = d > dmax ? d : dmax;
        dmin = d < dmin ? d : dmin;
    }
    if (!(dmin > dmax * (precise ? 1e-6 : 1e-2)) || !(dmin > min_pivot))
        return -1;
    for (size_t i = 0; i < b; i++)
        for (size_t j = 0; j < b; j++)
            ws->mf[i * b + j] = j >= i ? (float)ws->g[i * b + j] : 0.0f;
    cblas_strsm(CblasRowMajor, CblasRight, CblasUpper, CblasNoTrans, CblasNonUnit, (int)rows,
                (int)b, 1.0f, ws->mf, (int)b, x, (int)b);
    return 0;
}

/* X (rows, b, ld b) -> X V D^-1/2 (eigSVD, Feng et al.), which copes with
 * a rank-deficient X: directions whose squared norm is below EIG_FLOOR of
 * the largest, or below floor, become zero columns.  sv (b,), if not
 * NULL, receives X's singular values, descending. */
static int eig_orth(float *x, size_t rows, size_t b, double floor, double *sv, struct ws *ws)
{
    if (gram_eig(x, rows, b, b, ws))
        return -1;
    double top = ws->d[0] > 0.0 ? ws->d[0] : 0.0;
    if (floor < top * EIG_FLOOR)
        floor = top * EIG_FLOOR;
    for (size_t j = 0; j < b; j++) {
        double dj = ws->d[j];
        double inv = dj > floor && dj > 0.0 ? 1.0 / sqrt(dj) : 0.0;
        if (sv)
            sv[j] = dj > 0.0 ? sqrt(dj) : 0.0;
        for (size_t i = 0; i < b; i++)
            ws->mf[i * b + j] = (float)(ws->g[i * b + j] * inv);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)b, (int)b, 1.0f, x,
                (int)b, ws->mf, (int)b, 0.0f, ws->tmp, (int)b);
    memcpy(x, ws->tmp, rows * b * sizeof *x);
    return 0;
}

/* X (rows, b, ld b) -> orthonormal basis of its span minus span(prev),
 * written to dst (ld ldd); prev (rows, p, ld ldp) is orthonormal.  Two
 * rounds of block Gram-Schmidt, each followed by Cholesky QR (eigSVD if
 * that breaks down).  The first round projects out only the last `near`
 * columns of prev: for a Krylov block W W^T Q_i that is where all of its
 * component along prev lies in exact arithmetic (the projected matrix is
 * block tridiagonal); the second, over all of prev, removes what rounding
 * left ("twice is enough").  The second round starts from orthonormal (or
 * zero) columns, so a direction left with a norm under 1e-3 by it was
 * numerically inside span(prev): it becomes a zero column rather than
 * amplified rounding noise, which would not be orthogonal to prev (this
 * happens when W has rank below the basis width).  With sv (b,) the
 * eigSVD path is taken and sv gets X's singular values, descending (the
 * shifts of the power method). */
static int orth_block(float *x, size_t rows, size_t b, const float *prev, size_t p, size_t ldp,
                      size_t near, float *dst, size_t ldd, double *sv, struct ws *ws)
{
    for (int pass = 0; pass < 2; pass++) {
        size_t q = pass == 0 && near < p ? near : p;
        const float *pv = prev + (p - q);
        if (q) {
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)q, (int)b, (int)rows, 1.0f,
                        pv, (int)ldp, x, (int)b, 0.0f, ws->c, (int)b);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)b, (int)q,
                        -1.0f, pv, (int)ldp, ws->c, (int)b, 1.0f, x, (int)b);
        }
        /* pass 0: double Gram; pass 1: float, then double if it balks;
         * eigSVD when Cholesky QR cannot do it */
        double floor = pass == 1 && p ? 1e-6 : 0.0;
        if (sv || (chol_qr(x, rows, b, pass == 0, sqrt(floor), ws) &&
                   (pass == 0 || chol_qr(x, rows, b, 1, sqrt(floor), ws)))) {
            if (eig_orth(x, rows, b, floor, pass == 0 ? sv : NULL, ws))
                return -1;
        }
    }
    for (size_t i = 0; i < rows; i++)
        memcpy(dst + i * ldd, x + i * b, b * sizeof *x);
    return 0;
}

/* Rayleigh-Ritz: W ~ Q Q^T W with Q (m, L) orthonormal and bt = W^T Q
 * (n, L) -> the leading k triplets into out.  The Gram matrix Bt^T Bt is
 * formed by one sgemm and only its k largest eigenpairs are computed
 * (ssyevr): a full eigen-decomposition of an L x L matrix costs more than
 * two passes over W here.  fp32 is enough: eigenvalues lose eps * s_1^2,
 * i.e. nothing that the Frobenius error can see. */
static int ritz(const float *q, const float *bt, size_t m, size_t n, size_t L, size_t k,
                struct slim_svd *out, struct ws *ws)
{
    float *g = (float *)ws->g, *ev = (float *)ws->d, *z = ws->tmp;
    lapack_int found = 0;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)L, (int)L, (int)n, 1.0f, bt,
                (int)L, bt, (int)L, 0.0f, g, (int)L);
    /* column-major lower == row-major upper of a symmetric matrix; the
     * eigenvectors come back as columns of z (L, k) in column-major,
     * i.e. z[j * L + i], eigenvalues ascending */
    if (LAPACKE_ssyevr(LAPACK_COL_MAJOR, 'V', 'I', 'L', (lapack_int)L, g, (lapack_int)L, 0.0f,
                       0.0f, (lapack_int)(L - k + 1), (lapack_int)L, 0.0f, &found, ev, z,
                       (lapack_int)L, ws->isuppz) ||
        (size_t)found != k)
        return -1;
    float top = ev[k - 1] > 0.0f ? ev[k - 1] : 0.0f;
    for (size_t j = 0; j < k; j++) {
        float dj = ev[k - 1 - j];
        out->s[j] = dj > top * (float)EIG_FLOOR && dj > 0.0f ? sqrtf(dj) : 0.0f;
    }
    /* zk (L, k) row-major, descending order */
    float *zk = ws->tmp2;
    for (size_t i = 0; i < L; i++)
        for (size_t j = 0; j < k; j++)
            zk[i * k + j] = z[(k - 1 - j) * L + i];
    /* U = Q Z_k (m, k); Vt = S^-1 Z_k^T Bt^T (k, n) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)k, (int)L, 1.0f, q,
                (int)L, zk, (int)k, 0.0f, out->u, (int)k);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasTrans, (int)k, (int)n, (int)L, 1.0f, zk, (int)k,
                bt, (int)L, 0.0f, out->vt, (int)n);
    for (size_t j = 0; j < k; j++) {
        float inv = out->s[j] > 0.0f ? 1.0f / out->s[j] : 0.0f;
        for (size_t c = 0; c < n; c++)
            out->vt[j * n + c] *= inv;
        if (out->s[j] == 0.0f)
            for (size_t i = 0; i < m; i++)
                out->u[i * k + j] = 0.0f;
    }
    return 0;
}

static void ws_free(struct ws *ws)
{
    slim_aligned_free(ws->xd);
    slim_aligned_free(ws->g);
    slim_aligned_free(ws->d);
    slim_aligned_free(ws->mf);
    slim_aligned_free(ws->c);
    slim_aligned_free(ws->tmp);
    slim_aligned_free(ws->tmp2);
    slim_aligned_free(ws->isuppz);
}

/* Workspace for blocks of width b over `rows` rows, earlier blocks up to
 * L columns, and the final Ritz step (rows >= max(m, n)). */
static int ws_alloc(struct ws *ws, size_t rows, size_t b, size_t L, size_t k)
{
    size_t t = rows * b > L * L ? rows * b : L * L;
    memset(ws, 0, sizeof *ws);
    ws->xd = slim_kernel_alloc(rows * b * sizeof(double));
    ws->g = slim_kernel_alloc(L * L * sizeof(double));
    ws->d = slim_aligned_alloc(L * sizeof(double));
    ws->mf = slim_aligned_alloc(b * b * sizeof(float));
    ws->c = slim_aligned_alloc(L * b * sizeof(float));
    ws->tmp = slim_kernel_alloc(t * sizeof(float));
    ws->tmp2 = slim_kernel_alloc(L * k * sizeof(float));
    ws->isuppz = slim_aligned_alloc(2 * L * sizeof(lapack_int));
    if (!ws->xd || !ws->g || !ws->d || !ws->mf || !ws->c || !ws->tmp || !ws->tmp2 ||
        !ws->isuppz) {
        ws_free(ws);
        return -1;
    }
    return 0;
}

/* ---- randomized ------------------------------------------------------------ */

/* Randomized block Krylov (Musco and Musco 2015). */
static int krylov(const float *w, size_t m, size_t n, size_t k, size_t b, int q, uint64_t seed,
                  int threads, const struct slim_poll *poll, struct slim_svd *out,
                  struct slim_error *err)
{
    size_t L = b * (size_t)(q + 1), rows = m > n ? m : n;
    float *Q = slim_kernel_alloc(m * L * sizeof(float));
    float *Bt = slim_kernel_alloc(n * L * sizeof(float));
    float *x = slim_kernel_alloc(rows * b * sizeof(float));
    struct ws ws;
    int rc = 0;

    if (!Q || !Bt || !x || ws_alloc(&ws, rows, b, L, k)) {
        slim_aligned_free(Q);
        slim_aligned_free(Bt);
        slim_aligned_free(x);
        return nomem(err);
    }
    gaussian_fill(Bt, n * b, seed, threads); /* Om (n, b), borrowing Bt */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)b, (int)n, 1.0f, w,
                (int)n, Bt, (int)b, 0.0f, x, (int)b);
    for (int i = 0; i <= q && !rc; i++) {
        size_t p = (size_t)i * b;
        if (orth_block(x, m, b, Q, p, L, 2 * b, Q + p, L, NULL, &ws)) {
            rc = -1;
            break;
        }
        /* Y_i = W^T Q_i, kept as block i of Bt = W^T Q */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)n, (int)b, (int)m, 1.0f, w,
                    (int)n, Q + p, (int)L, 0.0f, Bt + p, (int)L);
        /* a poll after each pass over W: ~0.1 s apiece on 4096^2 here */
        if (polled(poll, ((double)i + 0.5) / (double)(q + 2))) {
            rc = canceled(err);
            break;
        }
        if (i < q)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)b, (int)n, 1.0f,
                        w, (int)n, Bt + p, (int)L, 0.0f, x, (int)b);
        /* two passes over W per block; the Ritz step is about one more */
        if (polled(poll, (double)(i + 1) / (double)(q + 2))) {
            rc = canceled(err);
            break;
        }
    }
    if (!rc && svd_alloc(out, m, n, k)) {
        rc = nomem(err);
    } else if (!rc && ritz(Q, Bt, m, n, L, k, out, &ws)) {
        slim_svd_release(out);
        rc = -1;
    }
    if (rc == -1)
        rc = slim_error_set(err, SLIM_ENUMERIC, "lowrank: eigen-decomposition failed");
    ws_free(&ws);
    slim_aligned_free(Q);
    slim_aligned_free(Bt);
    slim_aligned_free(x);
    return rc;
}

/* Subspace iteration with dynamic shifts (dashSVD, Feng et al. 2024). */
static int power_shifted(const float *w, size_t m, size_t n, size_t k, size_t l, int p,
                         uint64_t seed, int threads, const struct slim_poll *poll,
                         struct slim_svd *out, struct slim_error *err)
{
    size_t rows = m > n ? m : n;
    float *Q = slim_kernel_alloc(m * l * sizeof(float));
    float *Y = slim_kernel_alloc(n * l * sizeof(float));
    float *x = slim_kernel_alloc(m * l * sizeof(float));
    double *sv = slim_aligned_alloc(l * sizeof(double));
    double alpha = 0.0;
    struct ws ws;
    int rc = 0;

    if (!Q || !Y || !x || !sv || ws_alloc(&ws, rows, l, l, k)) {
        slim_aligned_free(Q);
        slim_aligned_free(Y);
        slim_aligned_free(x);
        slim_aligned_free(sv);
        return nomem(err);
    }
    gaussian_fill(Y, n * l, seed, threads);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)l, (int)n, 1.0f, w,
                (int)n, Y, (int)l, 0.0f, x, (int)l);
    rc = orth_block(x, m, l, NULL, 0, l, 0, Q, l, NULL, &ws);
    for (int i = 0; i < p && !rc; i++) {
        /* X = W (W^T Q) - alpha Q, then Q = orth(X) */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)n, (int)l, (int)m, 1.0f, w,
                    (int)n, Q, (int)l, 0.0f, Y, (int)l);
        memcpy(x, Q, m * l * sizeof *x);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)l, (int)n, 1.0f, w,
                    (int)n, Y, (int)l, (float)-alpha, x, (int)l);
        rc = orth_block(x, m, l, NULL, 0, l, 0, Q, l, sv, &ws);
        if (!rc && sv[l - 1] > alpha)
            alpha = (sv[l - 1] + alpha) / 2.0;
        if (!rc && polled(poll, (double)(i + 1) / (double)(p + 1)))
            rc = canceled(err);
    }
    if (!rc)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)n, (int)l, (int)m, 1.0f, w,
                    (int)n, Q, (int)l, 0.0f, Y, (int)l);
    if (!rc && svd_alloc(out, m, n, k)) {
        rc = nomem(err);
    } else if (!rc && ritz(Q, Y, m, n, l, k, out, &ws)) {
        slim_svd_release(out);
        rc = -1;
    }
    if (rc == -1)
        rc = slim_error_set(err, SLIM_ENUMERIC, "lowrank: eigen-decomposition failed");
    ws_free(&ws);
    slim_aligned_free(Q);
    slim_aligned_free(Y);
    slim_aligned_free(x);
    slim_aligned_free(sv);
    return rc;
}

/* Keeps the leading k triplets of a full SVD. */
static int truncate_svd(struct slim_svd *svd, size_t k, struct slim_error *err)
{
    struct slim_svd t;
    if (k == svd->k)
        return 0;
    if (svd_alloc(&t, svd->m, svd->n, k)) {
        slim_svd_release(svd);
        return nomem(err);
    }
    for (size_t i = 0; i < svd->m; i++)
        memcpy(t.u + i * k, svd->u + i * svd->k, k * sizeof(float));
    memcpy(t.s, svd->s, k * sizeof(float));
    memcpy(t.vt, svd->vt, k * svd->n * sizeof(float));
    t.frob2 = svd->frob2;
    slim_svd_release(svd);
    *svd = t;
    return 0;
}

int slim_svd_randomized(const float *w, size_t m, size_t n, size_t k,
                        const struct slim_svd_opts *opts, int threads, struct slim_svd *out,
                        struct slim_error *err)
{
    struct slim_svd_opts o = opts ? *opts : (struct slim_svd_opts){0};
    size_t mn = m < n ? m : n, b;
    double frob2;
    int rc, old, iters;

    if ((rc = check_args(w, m, n, err)))
        return rc;
    if (k < 1 || k > mn)
        return slim_error_set(err, SLIM_EINVAL, "lowrank: rank %zu outside [1, %zu]", k, mn);
    if (o.method != SLIM_SVD_KRYLOV && o.method != SLIM_SVD_POWER)
        return slim_error_set(err, SLIM_EINVAL, "lowrank: unknown method %d", o.method);
    if (o.iters < 0 || o.iters > 64)
        return slim_error_set(err, SLIM_EINVAL, "lowrank: iterations %d outside [0, 64]",
                              o.iters);
    iters = o.iters ? o.iters : (o.method == SLIM_SVD_KRYLOV ? 5 : 3);
    /* Krylov: 3k/8, but at least min(k/2, 32) (small ranks need a
     * relatively wider basis), rounded up to a multiple of 8 for sgemm:
     * the basis is 6 b ~ 2.25 k wide */
    if (o.block) {
        b = o.block;
    } else if (o.method == SLIM_SVD_KRYLOV) {
        size_t lo = k / 2 < 32 ? k / 2 : 32;
        b = 3 * k / 8 > lo ? 3 * k / 8 : lo;
        b = 8 * ((b + 7) / 8);
    } else {
        b = k + 10;
    }
    if (b < k && o.method == SLIM_SVD_POWER)
        b = k;
    if (b > (size_t)INT32_MAX / 65)
        return slim_error_set(err, SLIM_EINVAL, "lowrank: block %zu too large", b);

    /* a basis as wide as the matrix buys nothing: take the exact SVD */
    size_t L = o.method == SLIM_SVD_KRYLOV ? b * (size_t)(iters + 1) : b;
    if (L > mn || (o.method == SLIM_SVD_KRYLOV && L < k)) {
        if ((rc = slim_svd_exact(w, m, n, threads, o.poll, out, err)))
            return rc;
        return truncate_svd(out, k, err);
    }
    frob2 = sum_squares(w, m * n, threads);
    if (frob2 < 0.0)
        return slim_error_set(err, SLIM_ENUMERIC, "lowrank: NaN in matrix");
    if (isinf(frob2))
        return slim_error_set(err, SLIM_ENUMERIC, "lowrank: Inf in matrix (or ||W|| overflows)");
    old = blas_threads_enter(threads);
    if (o.method == SLIM_SVD_KRYLOV)
        rc = krylov(w, m, n, k, b, iters, o.seed, threads, o.poll, out, err);
    else
        rc = power_shifted(w, m, n, k, b, iters, o.seed, threads, o.poll, out, err);
    blas_threads_leave(old);
    if (!rc)
        out->frob2 = frob2;
    return rc;
}

/* ---- the textbook reference ---------------------------------------------- */

/* X (rows, l) -> its Householder Q, in place. */
static int house_q(float *x, size_t rows, size_t l, float *tau)
{
    if (LAPACKE_sgeqrf(LAPACK_ROW_MAJOR, (lapack_int)rows, (lapack_int)l, x, (lapack_int)l, tau))
        return -1;
    if (LAPACKE_sorgqr(LAPACK_ROW_MAJOR, (lapack_int)rows, (lapack_int)l, (lapack_int)l, x,
                       (lapack_int)l, tau))
        return -1;
    return 0;
}

int slim_svd_randomized_ref(const float *w, size_t m, size_t n, size_t k, int iters,
                            uint64_t seed, struct slim_svd *out, struct slim_error *err)
{
    size_t mn = m < n ? m : n, l;
    float *om = NULL, *Q = NULL, *Y = NULL, *B = NULL, *ub = NULL, *sb = NULL, *vtb = NULL,
          *tau = NULL;
    double frob2;
    int rc, old;

    if ((rc = check_args(w, m, n, err)))
        return rc;
    if (k < 1 || k > mn)
        return slim_error_set(err, SLIM_EINVAL, "lowrank: rank %zu outside [1, %zu]", k, mn);
    l = k + 10 < mn ? k + 10 : mn;
    iters = iters > 0 ? iters : 4;
    frob2 = sum_squares(w, m * n, 1);
    if (frob2 < 0.0 || isinf(frob2))
        return slim_error_set(err, SLIM_ENUMERIC, "lowrank: NaN or Inf in matrix");
    om = slim_aligned_alloc(n * l * sizeof *om);
    Q = slim_aligned_alloc(m * l * sizeof *Q);
    Y = slim_aligned_alloc(n * l * sizeof *Y);
    B = slim_aligned_alloc(l * n * sizeof *B);
    ub = slim_aligned_alloc(l * l * sizeof *ub);
    sb = slim_aligned_alloc(l * sizeof *sb);
    vtb = slim_aligned_alloc(l * n * sizeof *vtb);
    tau = slim_aligned_alloc(l * sizeof *tau);
    if (!om || !Q || !Y || !B || !ub || !sb || !vtb || !tau) {
        rc = nomem(err);
        goto out;
    }
    old = blas_threads_enter(1);
    gaussian_fill(om, n * l, seed, 1);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)l, (int)n, 1.0f, w,
                (int)n, om, (int)l, 0.0f, Q, (int)l);
    rc = house_q(Q, m, l, tau);
    for (int i = 0; i < iters && !rc; i++) {
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)n, (int)l, (int)m, 1.0f, w,
                    (int)n, Q, (int)l, 0.0f, Y, (int)l);
        rc = house_q(Y, n, l, tau);
        if (rc)
            break;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)l, (int)n, 1.0f, w,
                    (int)n, Y, (int)l, 0.0f, Q, (int)l);
        rc = house_q(Q, m, l, tau);
    }
    if (!rc) {
        /* B = Q^T W (l, n) = Ub S Vt; U = Q Ub */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)l, (int)n, (int)m, 1.0f, Q,
                    (int)l, w, (int)n, 0.0f, B, (int)n);
        rc = LAPACKE_sgesdd(LAPACK_ROW_MAJOR, 'S', (lapack_int)l, (lapack_int)n, B, (lapack_int)n,
                            sb, ub, (lapack_int)l, vtb, (lapack_int)n)
                 ? -1
                 : 0;
    }
    if (!rc && svd_alloc(out, m, n, k)) {
        blas_threads_leave(old);
        rc = nomem(err);
        goto out;
    }
    if (!rc) {
        for (size_t i = 0; i < m; i++)
            for (size_t j = 0; j < k; j++) {
                float s = 0.0f;
                for (size_t t = 0; t < l; t++)
                    s += Q[i * l + t] * ub[t * l + j];
                out->u[i * k + j] = s;
            }
        memcpy(out->s, sb, k * sizeof *sb);
        memcpy(out->vt, vtb, k * n * sizeof *vtb);
        out->frob2 = frob2;
    }
    blas_threads_leave(old);
    if (rc == -1)
        rc = slim_error_set(err, SLIM_ENUMERIC, "lowrank: LAPACK failed");
out:
    slim_aligned_free(om);
    slim_aligned_free(Q);
    slim_aligned_free(Y);
    slim_aligned_free(B);
    slim_aligned_free(ub);
    slim_aligned_free(sb);
    slim_aligned_free(vtb);
    slim_aligned_free(tau);
    return rc;
}

/* ---- rank choice and factors ---------------------------------------------- */

size_t slim_lowrank_rank_for_ratio(size_t m, size_t n, double ratio)
{
    size_t mn = m < n ? m : n;
    double r = floor(ratio * (double)mn + 0.5);
    if (!(r >= 1.0))
        return mn ? 1 : 0;
    return r >= (double)mn ? mn : (size_t)r;
}

size_t slim_lowrank_rank_for_energy(const float *s, size_t k, double frob2, double energy)
{
    /* the singular values are fp32: allow 1e-6 of ||W||^2 of slack so
     * that energy 1 is reachable */
    double target = (energy < 1.0 ? energy : 1.0) * frob2 - 1e-6 * frob2, cum = 0.0;
    if (!k)
        return 0;
    for (size_t r = 0; r < k; r++) {
        cum += (double)s[r] * (double)s[r];
        if (cum >= target)
            return r + 1;
    }
    return 0;
}

size_t slim_lowrank_max_useful_rank(size_t m, size_t n)
{
    if (!m || !n)
        return 0;
    return (m * n - 1) / (m + n);
}

double slim_lowrank_rel_error(const struct slim_svd *svd, size_t r)
{
    double kept = 0.0;
    if (!(svd->frob2 > 0.0))
        return 0.0;
    for (size_t i = 0; i < r && i < svd->k; i++)
        kept += (double)svd->s[i] * (double)svd->s[i];
    return kept >= svd->frob2 ? 0.0 : sqrt((svd->frob2 - kept) / svd->frob2);
}

void slim_lowrank_factors(const struct slim_svd *svd, size_t r, float *u_r, float *v_r)
{
    if (r > svd->k)
        r = svd->k;
    for (size_t j = 0; j < r; j++) {
        float h = sqrtf(svd->s[j]);
        for (size_t c = 0; c < svd->n; c++)
            v_r[j * svd->n + c] = h * svd->vt[j * svd->n + c];
    }
    for (size_t i = 0; i < svd->m; i++)
        for (size_t j = 0; j < r; j++)
            u_r[i * r + j] = svd->u[i * svd->k + j] * sqrtf(svd->s[j]);
}

/* A poll for one step of a longer kernel: the step's 0..1 maps into
 * [lo, hi) of the parent's. */
struct sub_poll {
    struct slim_poll self;
    const struct slim_poll *parent;
    double lo, hi;
};

static int sub_poll_fn(void *ud, double frac)
{
    struct sub_poll *sp = ud;
    return polled(sp->parent, sp->lo + (sp->hi - sp->lo) * frac);
}

static const struct slim_poll *sub_poll(struct sub_poll *sp, const struct slim_poll *parent,
                                        double lo, double hi)
{
    sp->self.fn = sub_poll_fn;
    sp->self.ud = sp;
    sp->parent = parent;
    sp->lo = lo;
    sp->hi = hi;
    return parent ? &sp->self : NULL;
}

int slim_svd_for_energy(const float *w, size_t m, size_t n, double energy, int randomized,
                        int threads, const struct slim_poll *poll, struct slim_svd *out,
                        size_t *r, struct slim_error *err)
{
    size_t mn = m < n ? m : n, k;
    struct sub_poll sp;
    double lo = 0.0;
    int rc;

    if ((rc = check_args(w, m, n, err)))
        return rc;
    if (!(energy > 0.0 && energy <= 1.0))
        return slim_error_set(err, SLIM_EINVAL, "lowrank: energy %g outside (0, 1]", energy);
    k = mn / 32 > 16 ? mn / 32 : 16;
    /* each randomized try costs twice the last: it takes half of the
     * progress left (the exact SVD, if it comes to that, takes the rest) */
    while (randomized && k <= mn / 4) {
        struct slim_svd_opts o = {.poll = sub_poll(&sp, poll, lo, (1.0 + lo) / 2.0)};
        if ((rc = slim_svd_randomized(w, m, n, k, &o, threads, out, err)))
            return rc;
        *r = slim_lowrank_rank_for_energy(out->s, out->k, out->frob2, energy);
        if (*r)
            return truncate_svd(out, *r, err);
        slim_svd_release(out);
        k *= 2;
        lo = (1.0 + lo) / 2.0;
    }
    if ((rc = slim_svd_exact(w, m, n, threads, sub_poll(&sp, poll, lo, 1.0), out, err)))
        return rc;
    *r = slim_lowrank_rank_for_energy(out->s, out->k, out->frob2, energy);
    if (!*r)
        *r = out->k;
    return truncate_svd(out, *r, err);
}
