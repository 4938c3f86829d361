/*
 * cluster.c - 1-D k-means weight sharing: a codebook of k <= 256 values
 * and one uint8 index per weight.
 *
 * In 1-D a cluster is a run of the sorted values, so the weights are
 * sorted once (parallel LSD radix sort of the float bits) and a clustering
 * is k - 1 boundaries.  Block prefix sums of (x - mean) and its square
 * give any run's mean and error in O(1), so a Lloyd iteration costs
 * O(k log n): k - 1 galloping searches for centroid midpoints, k means.
 *
 * Lloyd stops at one of many finite-sample fixed points (from quantile
 * starts, 30% above scikit-learn on 1M Gaussian weights, k = 256), so we
 * solve the dynamic programme D[j][i] = min_a D[j-1][a] + cost(a, i),
 * whose argmin is monotone in i (Wu, J. Algorithms 1991; Groenlund et al.,
 * "Fast exact k-means ... in 1D", 2017): divide and conquer fills a row in
 * O(n log n).  Exactly, over the distinct values, when k d log2 d < 2^24;
 * else over 16 k atoms (runs of the sorted values cut half at equal counts,
 * half at equal widths, so sparse tails get small clusters), followed by
 * a banded DP at full resolution: boundary j moves among bnd_j + t g,
 * |t| <= h; a boundary on its window's edge widens it and the pass
 * repeats; the stride g halves to 1.  Each pass contains the current
 * solution, so the inertia never rises; a Lloyd pass then settles the
 * float centroids.  Rejected: SMAWK (2.5e8 evaluations at n = 1M),
 * k-means++ (O(n k), worse in 1-D).  opts->no_dp keeps quantile + Lloyd,
 * the behaviour of the O(n k) _ref twin.  Empty clusters are re-seeded at
 * the top value of the worst cluster (the inertia cannot rise); indices
 * come from the same float midpoints (a table on the key's top bits, then
 * a short scan), so they agree exactly with the sorted clusters.
 */
#pragma GCC optimize("O3")
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "passes/kernels/kernels.h"

#define BLK 64
#define DP_BUDGET (1u << 24)

/* ---- radix sort --------------------------------------------------------- */

static inline uint32_t f2key(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u ^ ((uint32_t)-(int32_t)(u >> 31) | 0x80000000u);
}

static inline float key2f(uint32_t u)
{
    float f;
    u ^= ((u >> 31) - 1) | 0x80000000u;
    memcpy(&f, &u, sizeof f);
    return f;
}

#define RADIX_BITS 11
#define RADIX (1u << RADIX_BITS)

struct sort_job {
    const float *src;     /* phase 0: floats to key (NULL: keys already in out) */
    const uint32_t *in;   /* phase 1: this pass's input and output */
    uint32_t *out;
    size_t n;
    int phase;            /* 0: keys + histograms, 1: scatter on `digit`,
                           * 2: recount `digit` over this part of `in` */
    int digit;
    size_t *hist;         /* nparts * 3 * RADIX counts, then offsets */
};

static void sort_part(void *ctx, int part, int nparts)
{
    struct sort_job *j = ctx;
    size_t lo = j->n * (size_t)part / (size_t)nparts, hi = j->n * (size_t)(part + 1) / (size_t)nparts;
    size_t *h = j->hist + (size_t)part * 3 * RADIX;
    if (j->phase == 0) {
        memset(h, 0, 3 * RADIX * sizeof *h);
        for (size_t i = lo; i < hi; i++) {
            uint32_t u = j->src ? f2key(j->src[i]) : j->out[i];
            j->out[i] = u;
            h[u & (RADIX - 1)]++;
            h[RADIX + (u >> RADIX_BITS & (RADIX - 1))]++;
            h[2 * RADIX + (u >> (2 * RADIX_BITS))]++;
        }
        return;
    }
    size_t *off = h + (size_t)j->digit * RADIX;
    int sh = RADIX_BITS * j->digit;
    if (j->phase == 2) {
        memset(off, 0, RADIX * sizeof *off);
        for (size_t i = lo; i < hi; i++)
            off[j->in[i] >> sh & (RADIX - 1)]++;
        return;
    }
    for (size_t i = lo; i < hi; i++) {
        uint32_t u = j->in[i];
        j->out[off[u >> sh & (RADIX - 1)]++] = u;
    }
}

/* keys (n,) <- f2key(src) (or the keys already there when src is NULL),
 * sorted, stably, by nparts threads; scratch (n,).  Returns the buffer
 * (keys or scratch) that holds the result. */
static uint32_t *radix_sort(const float *src, uint32_t *keys, uint32_t *scratch, size_t n,
                            int nparts, size_t *hist)
{
    struct sort_job j = {.src = src, .out = keys, .n = n, .hist = hist};
    uint32_t *cur = keys, *other = scratch;
    int moved = 0;
    slim_kernel_parallel(nparts, sort_part, &j);
    for (int d = 0; d < 3; d++) {
        size_t base = 0;
        int trivial = 0;
        for (size_t v = 0; v < RADIX && !trivial; v++) {
            size_t tot = 0;
            for (int p = 0; p < nparts; p++)
                tot += hist[((size_t)p * 3 + (size_t)d) * RADIX + v];
            trivial = tot == n;
        }
        if (trivial)
            continue; /* every key has this digit: the pass would only copy */
        j.in = cur;
        j.out = other;
        j.digit = d;
        if (nparts > 1 && moved) {
            /* the data moved since phase 0: each part's counts are stale */
            j.phase = 2;
            slim_kernel_parallel(nparts, sort_part, &j);
        }
        /* offsets, digit-major then part, so the scatter is stable */
        for (size_t v = 0; v < RADIX; v++)
            for (int p = 0; p < nparts; p++) {
                size_t *c = &hist[((size_t)p * 3 + (size_t)d) * RADIX + v];
                size_t t = *c;
                *c = base;
                base += t;
            }
        j.phase = 1;
        slim_kernel_parallel(nparts, sort_part, &j);
        other = cur;
        cur = j.out;
        moved = 1;
    }
    return cur;
}

/* ---- prefix sums over the sorted values --------------------------------- */

struct pre {
    const float *x;
    size_t n;
    double mu;
    double *p1, *p2;     /* (n / BLK + 1,) sums of (x - mu), (x - mu)^2 before block b */
};

static void pre_sums(const struct pre *p, size_t i, double *s1, double *s2)
{
    size_t b = i / BLK;
    double a1 = p->p1[b], a2 = p->p2[b];
    for (size_t t = b * BLK; t < i; t++) {
        double d = (double)p->x[t] - p->mu;
        a1 += d;
        a2 += d * d;
    }
    *s1 = a1;
    *s2 = a2;
}

static int pre_init(struct pre *p, const float *x, size_t n)
{
    size_t nb = n / BLK + 1;
    double s = 0.0, a1 = 0.0, a2 = 0.0;
    p->x = x;
    p->n = n;
    p->p1 = slim_malloc(nb * sizeof(double));
    p->p2 = slim_malloc(nb * sizeof(double));
    if (!p->p1 || !p->p2)
        return -1;
    for (size_t i = 0; i < n; i++)
        s += x[i];
    p->mu = n ? s / (double)n : 0.0;
    for (size_t b = 0; b < nb; b++) {
        p->p1[b] = a1;
        p->p2[b] = a2;
        for (size_t t = b * BLK; t < (b + 1) * BLK && t < n; t++) {
            double d = (double)x[t] - p->mu;
            a1 += d;
            a2 += d * d;
        }
    }
    return 0;
}

static void pre_free(struct pre *p)
{
    slim_free(p->p1);
    slim_free(p->p2);
}

/* Sum of squared deviations of x[a..b) from c. */
static double range_sse(const struct pre *p, size_t a, size_t b, double c)
{
    double s1a, s2a, s1b, s2b, s1, s2, cnt = (double)(b - a), d = c - p->mu;
    if (a >= b)
        return 0.0;
    pre_sums(p, a, &s1a, &s2a);
    pre_sums(p, b, &s1b, &s2b);
    s1 = s1b - s1a;
    s2 = s2b - s2a;
    double e = s2 - 2.0 * d * s1 + cnt * d * d;
    return e > 0.0 ? e : 0.0;
}

static double range_mean(const struct pre *p, size_t a, size_t b)
{
    double s1a, s2a, s1b, s2b;
    pre_sums(p, a, &s1a, &s2a);
    pre_sums(p, b, &s1b, &s2b);
    return p->mu + (s1b - s1a) / (double)(b - a);
}

/* ---- Lloyd on the sorted values ------------------------------------------- */

/* First i in [0, n] with x[i] >= t, searching from a guess. */
static size_t lower_bound_from(const float *x, size_t n, float t, size_t guess)
{
    size_t lo, hi, step = 1;
    if (guess > n)
        guess = n;
    if (guess < n && x[guess] < t) {
        lo = guess + 1;
        hi = lo;
        while (hi < n && x[hi] < t) {
            lo = hi + 1;
            hi += step;
            step *= 2;
        }
        if (hi > n)
            hi = n;
    } else {
        hi = guess;
        lo = guess;
        while (lo > 0 && x[lo - 1] >= t) {
            hi = lo - 1;
            lo = lo > step ? lo - step : 0;
            step *= 2;
        }
    }
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (x[mid] < t)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static float midpoint(float a, float b)
{
    return (float)(((double)a + (double)b) * 0.5);
}

struct lloyd {
    int k;
    float c[SLIM_KMEANS_MAX_K];    /* centroids, ascending */
    size_t bnd[SLIM_KMEANS_MAX_K + 1];
    double inertia;
    int iterations;
};

static int float_cmp(const void *pa, const void *pb)
{
    float a = *(const float *)pa, b = *(const float *)pb;
    return (a > b) - (a < b);
}

/* Boundaries for the current centroids. */
static void assign(const struct pre *p, struct lloyd *L)
{
    L->bnd[0] = 0;
    L->bnd[L->k] = p->n;
    for (int j = 1; j < L->k; j++)
        L->bnd[j] = lower_bound_from(p->x, p->n, midpoint(L->c[j - 1], L->c[j]), L->bnd[j]);
    for (int j = 1; j < L->k; j++)
        if (L->bnd[j] < L->bnd[j - 1])
            L->bnd[j] = L->bnd[j - 1];
}

static double total_sse(const struct pre *p, const struct lloyd *L)
{
    double e = 0.0;
    for (int j = 0; j < L->k; j++)
        e += range_sse(p, L->bnd[j], L->bnd[j + 1], L->c[j]);
    return e;
}

/* Re-seeds each empty cluster at the largest value of a distinct
 * non-empty cluster with the largest squared error (whose top value is
 * above its centroid, so the new centroid is new).  Returns the number
 * re-seeded. */
static int reseed(const struct pre *p, struct lloyd *L)
{
    unsigned char split[SLIM_KMEANS_MAX_K] = {0};
    int done = 0;
    for (int e = 0; e < L->k; e++) {
        if (L->bnd[e] != L->bnd[e + 1])
            continue;
        int s = -1;
        double worst = 0.0;
        for (int j = 0; j < L->k; j++) {
            size_t a = L->bnd[j], b = L->bnd[j + 1];
            if (a == b || split[j] || !(p->x[b - 1] > L->c[j]))
                continue;
            double sse = range_sse(p, a, b, L->c[j]);
            if (s < 0 || sse > worst) {
                worst = sse;
                s = j;
            }
        }
        if (s < 0)
            break;
        split[s] = 1;
        L->c[e] = p->x[L->bnd[s + 1] - 1];
        done++;
    }
    if (done) {
        qsort(L->c, (size_t)L->k, sizeof L->c[0], float_cmp);
        assign(p, L);
    }
    return done;
}

/* Lloyd from L->c (ascending) to a fixed point, at most max_iter
 * updates.  trace (cap,) gets the inertia after each update. */
static void lloyd_run(const struct pre *p, struct lloyd *L, int max_iter, double *trace, int cap,
                      int *len)
{
    size_t old[SLIM_KMEANS_MAX_K + 1];
    int it;
    for (int j = 0; j <= L->k; j++)
        L->bnd[j] = p->n * (size_t)j / (size_t)L->k;
    assign(p, L);
    for (it = 1; it <= max_iter; it++) {
        for (int j = 0; j < L->k; j++)
            if (L->bnd[j] < L->bnd[j + 1])
                L->c[j] = (float)range_mean(p, L->bnd[j], L->bnd[j + 1]);
        int moved = reseed(p, L);
        if (trace && *len < cap)
            trace[(*len)++] = total_sse(p, L);
        memcpy(old, L->bnd, sizeof(size_t) * (size_t)(L->k + 1));
        assign(p, L);
        if (!moved && !memcmp(old, L->bnd, sizeof(size_t) * (size_t)(L->k + 1)))
            break;
    }
    L->iterations = it > max_iter ? max_iter : it;
    L->inertia = total_sse(p, L);
}

/* ---- dynamic programming over weighted points ------------------------------ */

/* Points are runs x[at[i] .. at[i + 1]) of the sorted values, i < np;
 * s1, s2, cnt are their prefix sums (np + 1,), so a cost is O(1). */
struct dp {
    const size_t *at;
    size_t np;
    double *s1, *s2;
    double *prev, *cur;   /* (np + 1,) */
    uint32_t *arg;        /* (k, np + 1) */
};

static double dp_cost(const struct dp *d, size_t a, size_t b)
{
    double s1 = d->s1[b] - d->s1[a], s2 = d->s2[b] - d->s2[a];
    double e = s2 - s1 * s1 / (double)(d->at[b] - d->at[a]);
    return e > 0.0 ? e : 0.0;
}

/* Row j: cur[i] = min_{a in [olo, ohi], a < i} prev[a] + cost(a, i) for
 * i in [lo, hi]. */
static void dp_fill(struct dp *d, int j, size_t lo, size_t hi, size_t olo, size_t ohi)
{
    while (lo <= hi) {
        size_t mid = lo + (hi - lo) / 2, best = olo, top = ohi < mid - 1 ? ohi : mid - 1;
        double bv = INFINITY;
        for (size_t a = olo; a <= top; a++) {
            double v = d->prev[a] + dp_cost(d, a, mid);
            if (v < bv) {
                bv = v;
                best = a;
            }
        }
        d->cur[mid] = bv;
        d->arg[(size_t)j * (d->np + 1) + mid] = (uint32_t)best;
        if (mid > lo)
            dp_fill(d, j, lo, mid - 1, olo, best);
        /* tail-iterate on the right half */
        lo = mid + 1;
        olo = best;
    }
}

/* Optimal k-partition of the np points: writes the cluster boundaries, as
 * indices of the sorted values, into bnd (k + 1,).  Returns 0, or -1
 * without memory. */
static int dp_solve(const struct pre *p, const size_t *at, size_t np, int k, size_t *bnd)
{
    struct dp d = {.at = at, .np = np};
    int rc = -1;
    d.prev = slim_malloc((np + 1) * sizeof(double));
    d.cur = slim_malloc((np + 1) * sizeof(double));
    d.s1 = slim_malloc((np + 1) * sizeof(double));
    d.s2 = slim_malloc((np + 1) * sizeof(double));
    d.arg = slim_malloc((size_t)k * (np + 1) * sizeof(uint32_t));
    if (!d.prev || !d.cur || !d.s1 || !d.s2 || !d.arg)
        goto out;
    for (size_t i = 0; i <= np; i++)
        pre_sums(p, at[i], &d.s1[i], &d.s2[i]);
    /* row 0: one cluster over points 0..i-1 */
    for (size_t i = 1; i <= np; i++) {
        d.prev[i] = dp_cost(&d, 0, i);
        d.arg[i] = 0;
    }
    d.prev[0] = 0.0;
    for (int j = 1; j < k; j++) {
        /* j + 1 clusters over i >= j + 1 points */
        d.cur[j] = 0.0;
        for (size_t i = 0; i <= (size_t)j && i <= np; i++)
            d.cur[i] = INFINITY;
        dp_fill(&d, j, (size_t)j + 1, np, (size_t)j, np - 1);
        double *t = d.prev;
        d.prev = d.cur;
        d.cur = t;
    }
    /* backtrack */
    size_t end = np;
    bnd[k] = at[np];
    for (int j = k - 1; j >= 0; j--) {
        size_t start = j ? d.arg[(size_t)j * (np + 1) + end] : 0;
        bnd[j] = at[start];
        end = start;
    }
    rc = 0;
out:
    slim_free(d.prev);
    slim_free(d.cur);
    slim_free(d.s1);
    slim_free(d.s2);
    slim_free(d.arg);
    return rc;
}

/* ---- banded DP: joint refinement of all boundaries ----------------------- */

/* One pass re-solves the k-partition exactly with boundary j restricted to
 * a few candidates around its current place, bnd_j + t g for |t| <= h_j:
 * the same recurrence and divide and conquer as above (a totally monotone
 * matrix stays so on any increasing subset of rows and columns), over
 * 2h + 1 candidates per boundary instead of n.  The current solution is
 * among the candidates, so a pass never makes things worse; a boundary
 * that lands on the edge of its window may want to go further, so its
 * window doubles and the pass repeats.  The stride g starts near a
 * quarter of a coarse atom and halves down to 1 (multigrid-like), so the
 * last passes are exact at full resolution. */
#define BAND_H 8
#define BAND_MAX_H 64
#define BAND_MAX_PASSES 32

struct band {
    const struct pre *p;
    size_t off[SLIM_KMEANS_MAX_K + 2]; /* window j is entries off[j] .. off[j + 1] - 1 */
    size_t *pos;          /* per entry: boundary position (an index of x) */
    double *s1, *s2, *D;  /* per entry: prefix sums at pos, best cost so far */
    uint32_t *arg;        /* per entry: entry of window j - 1 it came from */
};

static double band_cost(const struct band *B, size_t ea, size_t ei)
{
    size_t a = B->pos[ea], i = B->pos[ei];
    if (a >= i)
        return INFINITY;
    double s1 = B->s1[ei] - B->s1[ea], s2 = B->s2[ei] - B->s2[ea];
    double e = s2 - s1 * s1 / (double)(i - a);
    return e > 0.0 ? e : 0.0;
}

/* Entries [lo, hi] of window j from candidates [olo, ohi] of window j - 1
 * (all as absolute entry numbers). */
static void band_fill(struct band *B, size_t lo, size_t hi, size_t olo, size_t ohi)
{
    while (lo <= hi) {
        size_t mid = lo + (hi - lo) / 2, best = olo;
        double bv = INFINITY;
        for (size_t a = olo; a <= ohi; a++) {
            double v = B->D[a] + band_cost(B, a, mid);
            if (v < bv) {
                bv = v;
                best = a;
            }
        }
        B->D[mid] = bv;
        B->arg[mid] = (uint32_t)best;
        if (mid > lo)
            band_fill(B, lo, mid - 1, olo, best);
        lo = mid + 1;
        olo = best;
    }
}

/* One pass at stride g with half-widths h (k + 1,): improves bnd, widens
 * h where an edge was hit.  Returns 1 if an edge was hit, 0 if not. */
static int band_pass(struct band *B, int k, size_t *bnd, size_t g, size_t *h)
{
    const struct pre *p = B->p;
    size_t n = p->n, e = 0;
    for (int j = 0; j <= k; j++) {
        size_t minj = (size_t)j, maxj = n - (size_t)(k - j);
        size_t down = j == 0 || j == k ? 0 : (bnd[j] - minj) / g;
        size_t up = j == 0 || j == k ? 0 : (maxj - bnd[j]) / g;
        down = down > h[j] ? h[j] : down;
        up = up > h[j] ? h[j] : up;
        B->off[j] = e;
        /* prefix sums along the window, one run over its span */
        size_t start = bnd[j] - down * g;
        double a1, a2;
        pre_sums(p, start, &a1, &a2);
        for (size_t t = 0, i = start; t <= down + up; t++) {
            size_t to = start + t * g;
            for (; i < to; i++) {
                double dd = (double)p->x[i] - p->mu;
                a1 += dd;
                a2 += dd * dd;
            }
            B->pos[e] = to;
            B->s1[e] = a1;
            B->s2[e] = a2;
            e++;
        }
    }
    B->off[k + 1] = e;
    B->D[0] = 0.0;
    for (int j = 1; j <= k; j++)
        band_fill(B, B->off[j], B->off[j + 1] - 1, B->off[j - 1], B->off[j] - 1);
    /* backtrack, and widen the windows whose edge was hit */
    size_t t = B->off[k];
    int hit = 0;
    for (int j = k; j >= 1; j--) {
        t = B->arg[t];
        bnd[j - 1] = B->pos[t];
        if (j - 1 >= 1) {
            int q = j - 1;
            size_t minq = (size_t)q, maxq = n - (size_t)(k - q);
            int at_lo = t == B->off[q] && bnd[q] >= minq + g;
            int at_hi = t == B->off[q + 1] - 1 && bnd[q] + g <= maxq;
            if (at_lo || at_hi) {
                hit = 1;
                h[q] = h[q] * 2 > BAND_MAX_H ? BAND_MAX_H : h[q] * 2;
            }
        }
    }
    return hit;
}

/* Refines bnd (k + 1,) in place, from stride g0 down to 1.  Returns 0, or
 * -1 without memory. */
static int band_refine(const struct pre *p, int k, size_t *bnd, size_t g0)
{
    struct band *B = slim_malloc(sizeof *B);
    size_t h[SLIM_KMEANS_MAX_K + 1], cap = (size_t)(k + 1) * (2 * BAND_MAX_H + 1);
    int rc = -1;
    if (!B)
        return -1;
    memset(B, 0, sizeof *B);
    B->p = p;
    B->pos = slim_malloc(cap * sizeof(size_t));
    B->s1 = slim_malloc(cap * sizeof(double));
    B->s2 = slim_malloc(cap * sizeof(double));
    B->D = slim_malloc(cap * sizeof(double));
    B->arg = slim_malloc(cap * sizeof(uint32_t));
    if (!B->pos || !B->s1 || !B->s2 || !B->D || !B->arg)
        goto out;
    for (size_t g = g0 ? g0 : 1;; g /= 2) {
        for (int j = 0; j <= k; j++)
            h[j] = BAND_H;
        for (int pass = 0; pass < BAND_MAX_PASSES && band_pass(B, k, bnd, g, h); pass++)
            ;
        if (g <= 1)
            break;
    }
    rc = 0;
out:
    slim_free(B->pos);
    slim_free(B->s1);
    slim_free(B->s2);
    slim_free(B->D);
    slim_free(B->arg);
    slim_free(B);
    return rc;
}

/* Atoms for the coarse DP: about `want` runs of the sorted values, half
 * of them of equal count and half of equal width in value (so that the
 * sparse tails, where clusters are small, are resolved too), never
 * splitting a run of equal values.  at (want + 2,) gets the starts and a
 * final nx; returns the number of atoms. */
static size_t make_atoms(const float *x, size_t nx, size_t want, size_t *at)
{
    size_t half = want / 2 ? want / 2 : 1, na = 0, ic = 1, iv = 1;
    float lo = x[0], hi = x[nx - 1];
    at[na++] = 0;
    while (ic < half || iv < half) {
        size_t bc = ic < half ? nx * ic / half : nx;
        size_t bv = nx;
        if (iv < half) {
            float t = (float)((double)lo + ((double)hi - lo) * (double)iv / (double)half);
            bv = lower_bound_from(x, nx, t, nx * iv / half);
        }
        size_t b = bc < bv ? bc : bv;
        if (bc <= bv)
            ic++;
        else
            iv++;
        while (b < nx && b > 0 && x[b] == x[b - 1])
            b++;
        if (b > at[na - 1] && b < nx && na < want)
            at[na++] = b;
    }
    at[na] = nx;
    return na;
}

/* ---- driver ------------------------------------------------------------------ */

/* Index of each weight: the number of thresholds <= w.  A table over the
 * top bits of the sortable key gives, for each bucket of keys, the count
 * at the bucket's lowest value; a short forward scan finishes (thresholds
 * padded with +Inf stop it).  Cheaper than an 8-step binary search per
 * weight, whose branches mispredict half the time. */
struct assign_job {
    const float *w;
    size_t n;
    const float *t;       /* (nt + 1,) ascending thresholds, then +Inf */
    const uint8_t *tab;   /* (1 << tbits,) */
    int tbits;
    const uint8_t *map;   /* cluster -> codebook index */
    uint8_t zero_idx;
    int keep_zero;
    uint8_t *idx;
};

static void assign_part(void *ctx, int part, int nparts)
{
    struct assign_job *j = ctx;
    size_t a = j->n * (size_t)part / (size_t)nparts, b = j->n * (size_t)(part + 1) / (size_t)nparts;
    const int sh = 32 - j->tbits;
    for (size_t i = a; i < b; i++) {
        float v = j->w[i];
        unsigned c = j->tab[f2key(v) >> sh];
        while (v >= j->t[c])
            c++;
        j->idx[i] = j->keep_zero && v == 0.0f ? j->zero_idx : j->map[c];
    }
}

static void build_table(const float *t, int nt, uint8_t *tab, int tbits)
{
    const int sh = 32 - tbits;
    unsigned c = 0;
    for (uint32_t bkt = 0; bkt < (1u << tbits); bkt++) {
        float lo = key2f(bkt << sh);
        if (isnan(lo)) {
            tab[bkt] = (uint8_t)(bkt < (1u << (tbits - 1)) ? 0 : nt);
            continue;
        }
        while ((int)c < nt && t[c] <= lo)
            c++;
        tab[bkt] = (uint8_t)c;
    }
}

/* Counts non-zeros and non-finite values. */
struct scan_job {
    const float *w;
    size_t n;
    size_t nonzero[SLIM_KERNEL_MAX_THREADS], bad[SLIM_KERNEL_MAX_THREADS];
};

static void scan_part(void *ctx, int part, int nparts)
{
    struct scan_job *j = ctx;
    size_t a = j->n * (size_t)part / (size_t)nparts, b = j->n * (size_t)(part + 1) / (size_t)nparts;
    size_t nz = 0, bad = 0;
    for (size_t i = a; i < b; i++) {
        nz += j->w[i] != 0.0f;
        bad += !(j->w[i] - j->w[i] == 0.0f);
    }
    j->nonzero[part] = nz;
    j->bad[part] = bad;
}

static int check_opts(const struct slim_kmeans_opts *o, struct slim_error *err)
{
    if (!o)
        return slim_error_set(err, SLIM_EINVAL, "cluster: no options");
    if (o->k < 1 || o->k > SLIM_KMEANS_MAX_K)
        return slim_error_set(err, SLIM_EINVAL, "cluster: k %d outside [1, %d]", o->k,
                              SLIM_KMEANS_MAX_K);
    if (o->max_iter < 0 || o->trace_cap < 0)
        return slim_error_set(err, SLIM_EINVAL, "cluster: negative max_iter or trace_cap");
    return 0;
}

/* Writes codebook (k,) from the kk cluster centroids c (ascending) plus
 * the fixed zero, and map (kk,) from cluster to codebook index. */
static int build_codebook(const float *c, int kk, int with_zero, int k, float *codebook,
                          uint8_t *map, uint8_t *zero_idx)
{
    int z = 0, u = 0;
    while (z < kk && c[z] < 0.0f)
        z++;
    for (int j = 0; j < kk; j++) {
        if (with_zero && j == z)
            codebook[u++] = 0.0f;
        map[j] = (uint8_t)u;
        codebook[u++] = c[j];
    }
    if (with_zero && z == kk)
        codebook[u++] = 0.0f;
    *zero_idx = (uint8_t)z;
    for (int i = u; i < k; i++)
        codebook[i] = u ? codebook[u - 1] : 0.0f;
    return u;
}

/* Between phases (the sort, the prefix sums, the DP, the refinement,
 * Lloyd, the assignment): each is linear or near it in n, ~0.1 s on 16 M
 * weights here. */
static int stop_asked(const struct slim_kmeans_opts *o, double frac, struct slim_error *err)
{
    if (o->poll && o->poll->fn && o->poll->fn(o->poll->ud, frac))
        return slim_error_set(err, SLIM_ECANCELED, "canceled");
    return 0;
}

int slim_kmeans_1d(const float *w, size_t n, const struct slim_kmeans_opts *opts, int threads,
                   float *codebook, uint8_t *idx, struct slim_kmeans_info *info,
                   struct slim_error *err)
{
    struct slim_kmeans_info inf = {0};
    struct scan_job cj = {.w = w, .n = n};
    struct pre p = {0};
    uint32_t *keys = NULL, *scratch = NULL, *sorted;
    size_t *hist = NULL, *at = NULL, nz = 0, nx, d = 0;
    float *x = NULL, thr[SLIM_KMEANS_MAX_K + 1];
    uint8_t map[SLIM_KMEANS_MAX_K], zero_idx = 0, *tab = NULL;
    struct lloyd best, *L = NULL;
    int rc, nparts, kk, with_zero, max_iter;

    if ((rc = check_opts(opts, err)))
        return rc;
    if (n && (!w || !codebook))
        return slim_error_set(err, SLIM_EINVAL, "cluster: NULL buffer");
    if (!n) {
        for (int i = 0; i < opts->k; i++)
            codebook[i] = 0.0f;
        if (info)
            *info = (struct slim_kmeans_info){.exact = 1};
        return 0;
    }
    max_iter = opts->max_iter ? opts->max_iter : 100000;
    nparts = slim_kernel_threads(threads, n);
    slim_kernel_parallel(nparts, scan_part, &cj);
    for (int i = 0; i < nparts; i++) {
        if (cj.bad[i])
            return slim_error_set(err, SLIM_ENUMERIC, "cluster: NaN or Inf in weights");
        nz += cj.nonzero[i];
    }
    with_zero = opts->keep_zero && nz < n;
    kk = opts->k - with_zero;
    nx = with_zero ? nz : n;

    keys = slim_kernel_alloc((nx ? nx : 1) * sizeof *keys);
    scratch = slim_kernel_alloc((nx ? nx : 1) * sizeof *scratch);
    hist = slim_malloc((size_t)nparts * 3 * RADIX * sizeof *hist);
    L = slim_malloc(sizeof *L);
    if (!keys || !scratch || !hist || !L) {
        rc = slim_error_set(err, SLIM_ENOMEM, "cluster: out of memory");
        goto out;
    }
    if (with_zero) {
        size_t t = 0;
        for (size_t i = 0; i < n; i++)
            if (w[i] != 0.0f)
                keys[t++] = f2key(w[i]);
        sorted = radix_sort(NULL, keys, scratch, nx, slim_kernel_threads(threads, nx), hist);
    } else {
        sorted = radix_sort(w, keys, scratch, nx, nparts, hist);
    }
    if ((rc = stop_asked(opts, 0.3, err)))
        goto out;
    /* the sorted floats replace the keys in place */
    x = (float *)sorted;
    for (size_t i = 0; i < nx; i++) {
        float f = key2f(sorted[i]);
        memcpy(&x[i], &f, sizeof f);
    }
    for (size_t i = 0; i < nx; i++)
        d += i == 0 || x[i] != x[i - 1];

    memset(&best, 0, sizeof best);
    best.k = kk < (int)d ? kk : (int)d;
    if (kk == 0 || nx == 0) {
        best.k = 0;
        inf.exact = 1;
        if (kk == 0)
            for (size_t i = 0; i < nx; i++)
                inf.inertia += (double)x[i] * (double)x[i];
    } else if ((size_t)kk >= d) {
        /* no more distinct values than clusters: each its own */
        int j = 0;
        for (size_t i = 0; i < nx; i++)
            if (i == 0 || x[i] != x[i - 1])
                best.c[j++] = x[i];
        inf.exact = 1;
    } else {
        double lg = 1.0;
        while ((double)(1ull << (int)lg) < (double)d)
            lg += 1.0;
        if (pre_init(&p, x, nx)) {
            rc = slim_error_set(err, SLIM_ENOMEM, "cluster: out of memory");
            goto out;
        }
        if ((rc = stop_asked(opts, 0.45, err)))
            goto out;
        int exact_dp = !opts->no_dp && (double)kk * (double)d * lg <= (double)DP_BUDGET;
        size_t natoms = exact_dp ? d : (size_t)kk * 16;
        natoms = natoms < 2048 ? 2048 : natoms;
        natoms = natoms > nx ? nx : natoms;
        at = slim_malloc((natoms + 2) * sizeof *at);
        if (!at) {
            rc = slim_error_set(err, SLIM_ENOMEM, "cluster: out of memory");
            goto out;
        }
        if (exact_dp) {
            size_t t = 0;
            for (size_t i = 0; i < nx; i++)
                if (i == 0 || x[i] != x[i - 1])
                    at[t++] = i;
            at[t] = nx;
            natoms = t;
        } else {
            natoms = make_atoms(x, nx, natoms, at);
        }
        L->k = kk;
        if (opts->no_dp || natoms < (size_t)kk) {
            /* quantile start, plain Lloyd */
            for (int j = 0; j < kk; j++) {
                size_t a = nx * (size_t)j / (size_t)kk, b = nx * (size_t)(j + 1) / (size_t)kk;
                L->c[j] = (float)range_mean(&p, a, b);
            }
            lloyd_run(&p, L, max_iter, opts->trace, opts->trace_cap, &inf.trace_len);
            best = *L;
        } else {
            /* optimal over the atoms (exact when they are the distinct
             * values), refined at full resolution, then polished */
            size_t g0 = 1;
            while (g0 * 8 <= nx / natoms)
                g0 *= 2;
            if (dp_solve(&p, at, natoms, kk, L->bnd)) {
                rc = slim_error_set(err, SLIM_ENOMEM, "cluster: out of memory");
                goto out;
            }
            if ((rc = stop_asked(opts, 0.6, err)))
                goto out;
            if (!exact_dp && band_refine(&p, kk, L->bnd, g0)) {
                rc = slim_error_set(err, SLIM_ENOMEM, "cluster: out of memory");
                goto out;
            }
            if ((rc = stop_asked(opts, 0.7, err)))
                goto out;
            for (int j = 0; j < kk; j++)
                L->c[j] = (float)range_mean(&p, L->bnd[j], L->bnd[j + 1]);
            lloyd_run(&p, L, max_iter, opts->trace, opts->trace_cap, &inf.trace_len);
            inf.exact = exact_dp;
            best = *L;
        }
    }

    if ((rc = stop_asked(opts, 0.8, err)))
        goto out;
    /* codebook, thresholds, indices */
    build_codebook(best.c, best.k, with_zero, opts->k, codebook, map, &zero_idx);
    for (int j = 0; j + 1 < best.k; j++)
        thr[j] = midpoint(best.c[j], best.c[j + 1]);
    if (best.k > 0) {
        /* exact inertia of the final assignment, from the sorted values */
        double e = 0.0;
        size_t a = 0;
        for (int j = 0; j < best.k; j++) {
            size_t b = j + 1 < best.k ? lower_bound_from(x, nx, thr[j], a) : nx;
            for (size_t i = a; i < b; i++) {
                double dd = (double)x[i] - (double)best.c[j];
                e += dd * dd;
            }
            inf.k_used += b > a;
            a = b;
        }
        inf.inertia = e;
    }
    inf.k_used += with_zero;
    inf.iterations = best.iterations;
    if (idx && best.k == 0) {
        /* every weight maps to the zero centroid (kk == 0) */
        memset(idx, zero_idx, n);
    } else if (idx) {
        int nt = best.k - 1, tbits = n >= ((size_t)1 << 22) ? 20 : 16;
        struct assign_job aj = {.w = w, .n = n, .t = thr, .tbits = tbits, .map = map,
                                .zero_idx = zero_idx, .keep_zero = with_zero, .idx = idx};
        thr[nt] = INFINITY;
        tab = slim_malloc((size_t)1 << tbits);
        if (!tab) {
            rc = slim_error_set(err, SLIM_ENOMEM, "cluster: out of memory");
            goto out;
        }
        build_table(thr, nt, tab, tbits);
        aj.tab = tab;
        slim_kernel_parallel(nparts, assign_part, &aj);
    }
    if (info)
        *info = inf;
out:
    pre_free(&p);
    slim_aligned_free(keys);
    slim_aligned_free(scratch);
    slim_free(hist);
    slim_free(at);
    slim_free(L);
    slim_free(tab);
    return rc;
}

/* ---- the reference: plain Lloyd over the unsorted weights ------------------- */

int slim_kmeans_1d_ref(const float *w, size_t n, const struct slim_kmeans_opts *opts,
                       float *codebook, uint8_t *idx, struct slim_kmeans_info *info,
                       struct slim_error *err)
{
    struct slim_kmeans_info inf = {0};
    float *x = NULL, c[SLIM_KMEANS_MAX_K];
    uint8_t *lab = NULL, map[SLIM_KMEANS_MAX_K], zero_idx = 0;
    size_t nx = 0, d = 0;
    int rc, kk, with_zero = 0, max_iter;

    if ((rc = check_opts(opts, err)))
        return rc;
    if (!n) {
        for (int i = 0; i < opts->k; i++)
            codebook[i] = 0.0f;
        if (info)
            *info = (struct slim_kmeans_info){.exact = 1};
        return 0;
    }
    max_iter = opts->max_iter ? opts->max_iter : 100000;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(w[i]))
            return slim_error_set(err, SLIM_ENUMERIC, "cluster: NaN or Inf in weights");
        with_zero |= opts->keep_zero && w[i] == 0.0f;
    }
    kk = opts->k - with_zero;
    x = slim_malloc(n * sizeof *x);
    lab = slim_malloc(n);
    if (!x || !lab) {
        rc = slim_error_set(err, SLIM_ENOMEM, "cluster: out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        if (!(with_zero && w[i] == 0.0f))
            x[nx++] = w[i];
    /* quantile start, from a sorted copy */
    float *s = slim_malloc((nx ? nx : 1) * sizeof *s);
    if (!s) {
        rc = slim_error_set(err, SLIM_ENOMEM, "cluster: out of memory");
        goto out;
    }
    memcpy(s, x, nx * sizeof *s);
    qsort(s, nx, sizeof *s, float_cmp);
    for (size_t i = 0; i < nx; i++)
        d += i == 0 || s[i] != s[i - 1];
    if (kk > (int)d)
        kk = (int)d;
    for (int j = 0; j < kk; j++) {
        size_t a = nx * (size_t)j / (size_t)kk, b = nx * (size_t)(j + 1) / (size_t)kk;
        double sum = 0.0;
        for (size_t i = a; i < b; i++)
            sum += s[i];
        c[j] = (float)(sum / (double)(b - a));
    }
    slim_free(s);
    for (int it = 0; it < max_iter && kk > 0; it++) {
        double sum[SLIM_KMEANS_MAX_K] = {0};
        size_t cnt[SLIM_KMEANS_MAX_K] = {0}, changed = 0;
        for (size_t i = 0; i < nx; i++) {
            int bj = 0;
            double bd = INFINITY;
            for (int j = 0; j < kk; j++) {
                double dd = fabs((double)x[i] - (double)c[j]);
                if (dd < bd) {
                    bd = dd;
                    bj = j;
                }
            }
            changed += it == 0 || lab[i] != bj;
            lab[i] = (uint8_t)bj;
            sum[bj] += x[i];
            cnt[bj]++;
        }
        inf.iterations = it + 1;
        if (!changed)
            break;
        for (int j = 0; j < kk; j++)
            if (cnt[j])
                c[j] = (float)(sum[j] / (double)cnt[j]);
        qsort(c, (size_t)kk, sizeof c[0], float_cmp);
    }
    build_codebook(c, kk, with_zero, opts->k, codebook, map, &zero_idx);
    /* final assignment to the nearest centroid, and its inertia */
    for (size_t i = 0; i < n; i++) {
        if (with_zero && w[i] == 0.0f) {
            if (idx)
                idx[i] = zero_idx;
            continue;
        }
        int bj = 0;
        double bd = INFINITY;
        for (int j = 0; j < kk; j++) {
            double dd = fabs((double)w[i] - (double)c[j]);
            if (dd < bd) {
                bd = dd;
                bj = j;
            }
        }
        if (idx)
            idx[i] = kk ? map[bj] : zero_idx;
        double e = kk ? (double)w[i] - (double)c[bj] : (double)w[i];
        inf.inertia += e * e;
    }
    inf.k_used = kk + with_zero;
    inf.exact = (size_t)kk >= d;
    if (info)
        *info = inf;
out:
    slim_free(x);
    slim_free(lab);
    return rc;
}
