/*
 * prune.c - magnitude pruning kernels: unstructured (one tensor, or global
 * over several), N:M along the last dimension, and whole rows.
 *
 * Unstructured pruning zeroes exactly k = round(s n) weights, those of
 * smallest |w|, in linear time.  A non-negative float orders like its bit
 * pattern, so |w| is the key bits & 0x7fffffff and the k-th key is found
 * by radix select (the MSD step of a radix sort; Knuth, TAOCP 3, 5.2.5):
 * pass 1 histograms the top 16 key bits per thread, naming the bucket of
 * the k-th key; pass 2 zeroes every lower bucket and histograms the low
 * 15 bits of the bucket's members, giving the exact threshold key T; the
 * members below T, and the first ones equal to T by index, are zeroed from
 * an address list made in pass 2 (or by a third scan if the bucket is
 * huge, e.g. all weights equal).  Ties go to the lower index, as in the
 * sort-based _ref twin, so the two agree bit for bit.  NaN keys sort above
 * +Inf, so pass 1 also rejects NaN before anything is written.  Rejected:
 * quickselect and np.partition (data-dependent passes, a copy of n keys,
 * several times the memory traffic of two streaming passes).
 *
 * N:M keeps, in each run of M weights, those ranked below N by |w|
 * (larger first, ties to the lower index), the rank being a branch-free
 * count of comparisons; for M = 4 four runs are transposed into SSE
 * registers so the six comparisons serve four runs at once.
 *
 * Also here: the kernels' thread helper and large-buffer allocator.  The
 * file asks for -O3-level vectorisation (the pragma): the project's -O2
 * on GCC 12 leaves the streaming loops scalar.
 */
#pragma GCC optimize("O3")
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <immintrin.h>
#endif
#include "passes/kernels/kernels.h"

/* Float bit patterns; may_alias so reading and writing w as integers is
 * well-defined next to the float accesses of the caller. */
typedef uint32_t u32a __attribute__((may_alias));

#define HI_BITS 16
#define LO_BITS 15
#define HI_BINS (1u << HI_BITS)
#define LO_BINS (1u << LO_BITS)
#define KEY_MASK 0x7fffffffu
#define KEY_INF 0x7f800000u

/* ---- threads ------------------------------------------------------------ */

#define MAX_PARTS SLIM_KERNEL_MAX_THREADS

struct part_arg {
    void (*fn)(void *ctx, int part, int nparts);
    void *ctx;
    int part, nparts;
};

static void *part_main(void *p)
{
    struct part_arg *a = p;
    a->fn(a->ctx, a->part, a->nparts);
    return NULL;
}

void slim_kernel_parallel(int nparts, void (*fn)(void *ctx, int part, int nparts), void *ctx)
{
    pthread_t tid[MAX_PARTS];
    struct part_arg arg[MAX_PARTS];
    int started[MAX_PARTS];

    if (nparts > MAX_PARTS)
        nparts = MAX_PARTS;
    if (nparts <= 1) {
        fn(ctx, 0, 1);
        return;
    }
    for (int p = 1; p < nparts; p++) {
        arg[p] = (struct part_arg){fn, ctx, p, nparts};
        started[p] = pthread_create(&tid[p], NULL, part_main, &arg[p]) == 0;
    }
    fn(ctx, 0, nparts);
    for (int p = 1; p < nparts; p++) {
        if (started[p])
            pthread_join(tid[p], NULL);
        else
            fn(ctx, p, nparts);
    }
}

int slim_kernel_threads(int threads, size_t work)
{
    size_t cap = work >> 16;
    if (threads <= 0)
        threads = 1;
    if (threads > MAX_PARTS)
        threads = MAX_PARTS;
    if ((size_t)threads > cap)
        threads = cap ? (int)cap : 1;
    return threads;
}

void *slim_kernel_alloc(size_t n)
{
    /* large blocks already come 2 MiB-aligned with MADV_HUGEPAGE, and
     * reused across tensors (alloc.c) */
    return slim_aligned_alloc(n);
}

/* ---- unstructured: radix select over segments --------------------------- */

size_t slim_prune_count(size_t n, double sparsity)
{
    double k;
    if (!(sparsity > 0.0))
        return 0;
    if (sparsity >= 1.0)
        return n;
    k = floor(sparsity * (double)n + 0.5);
    return k >= (double)n ? n : (size_t)k;
}

struct seg {
    u32a *p;
    size_t n;
    size_t start; /* global index of p[0] */
};

struct select_job {
    const struct seg *segs;
    size_t nseg, total;
    int nparts;
    int phase;              /* 1, 2 or 3 */
    uint64_t *hist;         /* nparts * HI_BINS, phase 1 */
    uint64_t *lowhist;      /* nparts * LO_BINS, phase 2 */
    uint32_t bin;           /* bucket of the k-th key */
    u32a **cand;            /* bucket members' addresses, or NULL */
    size_t *cand_off;       /* nparts: where each part's members go */
    uint32_t tkey;          /* phase 3: exact threshold key */
    size_t *eq_quota;       /* phase 3: per part, keys == tkey to zero */
};

static void part_range(const struct select_job *j, int part, size_t *a, size_t *b)
{
    *a = j->total / (size_t)j->nparts * (size_t)part;
    *b = part == j->nparts - 1 ? j->total : j->total / (size_t)j->nparts * (size_t)(part + 1);
}

static size_t seg_find(const struct select_job *j, size_t g)
{
    size_t lo = 0, hi = j->nseg;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (j->segs[mid].start <= g)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

static void hist_run(const u32a *p, size_t len, uint32_t *h)
{
    for (size_t i = 0; i < len; i++)
        h[(p[i] & KEY_MASK) >> LO_BITS]++;
}

/* Zeroes keys below lo; bucket members go to the low histogram and, if
 * cand is not NULL, to the address list.  Returns the members found. */
static size_t zero_run(u32a *p, size_t len, uint32_t lo, uint32_t bin, uint64_t *lh, u32a **cand)
{
    size_t found = 0;
    const int32_t slo = (int32_t)lo;
    for (size_t i0 = 0; i0 < len; i0 += 256) {
        size_t e = len - i0 < 256 ? len : i0 + 256;
        unsigned inbin = 0;
        for (size_t i = i0; i < e; i++) {
            uint32_t k = p[i] & KEY_MASK;
            p[i] = (int32_t)k < slo ? 0u : p[i];
            inbin += (k >> LO_BITS) == bin;
        }
        if (!inbin)
            continue;
        for (size_t i = i0; i < e; i++) {
            uint32_t k = p[i] & KEY_MASK;
            if ((k >> LO_BITS) == bin) {
                lh[k & (LO_BINS - 1)]++;
                if (cand)
                    cand[found] = &p[i];
                found++;
            }
        }
    }
    return found;
}

/* Phase 3 by scanning: bucket members below tkey, and the first quota
 * equal to it, become zero.  Returns the quota left. */
static size_t finish_run(u32a *p, size_t len, uint32_t bin, uint32_t tkey, size_t quota)
{
    for (size_t i = 0; i < len; i++) {
        uint32_t k = p[i] & KEY_MASK;
        if ((k >> LO_BITS) != bin)
            continue;
        if (k < tkey) {
            p[i] = 0;
        } else if (k == tkey && quota) {
            p[i] = 0;
            quota--;
        }
    }
    return quota;
}

static void select_part(void *ctx, int part, int nparts)
{
    struct select_job *j = ctx;
    size_t a, b, s, off;
    uint32_t *h32 = NULL;
    uint64_t *h = NULL, *lh = NULL;
    u32a **cand = NULL;
    size_t quota = 0, slice_left = 0;
    (void)nparts;

    part_range(j, part, &a, &b);
    if (a >= b)
        return;
    if (j->phase == 1) {
        h = j->hist + (size_t)part * HI_BINS;
        /* counts gather in 32 bits (in the phase-2 buffer, same size and
         * unused yet), flushed to 64 bits every 2^30 weights */
        h32 = (uint32_t *)(j->lowhist + (size_t)part * LO_BINS);
        memset(h32, 0, HI_BINS * sizeof *h32);
        slice_left = (size_t)1 << 30;
    } else if (j->phase == 2) {
        lh = j->lowhist + (size_t)part * LO_BINS;
        memset(lh, 0, LO_BINS * sizeof *lh);
        if (j->cand)
            cand = j->cand + j->cand_off[part];
    } else {
        quota = j->eq_quota[part];
    }
    s = seg_find(j, a);
    off = a - j->segs[s].start;
    while (a < b) {
        size_t len = j->segs[s].n - off;
        u32a *p = j->segs[s].p + off;
        if (len > b - a)
            len = b - a;
        if (j->phase == 1) {
            if (len > slice_left)
                len = slice_left;
            hist_run(p, len, h32);
            slice_left -= len;
            if (!slice_left) {
                for (size_t i = 0; i < HI_BINS; i++)
                    h[i] += h32[i];
                memset(h32, 0, HI_BINS * sizeof *h32);
                slice_left = (size_t)1 << 30;
            }
        } else if (j->phase == 2) {
            size_t got = zero_run(p, len, j->bin << LO_BITS, j->bin, lh, cand);
            if (cand)
                cand += got;
        } else {
            quota = finish_run(p, len, j->bin, j->tkey, quota);
        }
        a += len;
        off += len;
        if (off == j->segs[s].n) {
            s++;
            off = 0;
        }
    }
    if (j->phase == 1)
        for (size_t i = 0; i < HI_BINS; i++)
            h[i] += h32[i];
}

static int has_nan(const struct seg *segs, size_t nseg)
{
    for (size_t s = 0; s < nseg; s++)
        for (size_t i = 0; i < segs[s].n; i++)
            if ((segs[s].p[i] & KEY_MASK) > KEY_INF)
                return 1;
    return 0;
}

static int select_zero(const struct seg *segs, size_t nseg, size_t total, size_t k, int threads,
                       struct slim_error *err)
{
    struct select_job j = {.segs = segs, .nseg = nseg, .total = total};
    uint64_t *sum = NULL;
    size_t before = 0, need, c_lt = 0, members;
    uint32_t t = 0;
    int rc = 0;

    if (!total)
        return 0;
    j.nparts = slim_kernel_threads(threads, total);
    j.hist = slim_malloc((size_t)j.nparts * HI_BINS * sizeof *j.hist);
    j.lowhist = slim_malloc((size_t)j.nparts * LO_BINS * sizeof *j.lowhist);
    sum = slim_calloc(HI_BINS, sizeof *sum);
    j.cand_off = slim_calloc((size_t)j.nparts, sizeof *j.cand_off);
    j.eq_quota = slim_calloc((size_t)j.nparts, sizeof *j.eq_quota);
    if (!j.hist || !j.lowhist || !sum || !j.cand_off || !j.eq_quota) {
        rc = slim_error_set(err, SLIM_ENOMEM, "prune: out of memory");
        goto out;
    }
    memset(j.hist, 0, (size_t)j.nparts * HI_BINS * sizeof *j.hist);

    /* phase 1: histogram of the top key bits */
    j.phase = 1;
    slim_kernel_parallel(j.nparts, select_part, &j);
    for (int p = 0; p < j.nparts; p++)
        for (size_t i = 0; i < HI_BINS; i++)
            sum[i] += j.hist[(size_t)p * HI_BINS + i];
    for (size_t i = (KEY_INF >> LO_BITS) + 1; i < HI_BINS; i++)
        if (sum[i]) {
            rc = slim_error_set(err, SLIM_ENUMERIC, "prune: NaN in weights");
            goto out;
        }
    if (sum[KEY_INF >> LO_BITS] && has_nan(segs, nseg)) {
        rc = slim_error_set(err, SLIM_ENUMERIC, "prune: NaN in weights");
        goto out;
    }
    if (k == 0)
        goto out;

    /* the bucket holding the k-th smallest key */
    while (before + sum[j.bin] < k)
        before += sum[j.bin++];
    need = k - before; /* 1..sum[bin] members of the bucket to zero */
    members = sum[j.bin];
    if (members <= (total >> 4) + 65536) {
        j.cand = slim_malloc((members ? members : 1) * sizeof *j.cand);
        if (!j.cand) {
            rc = slim_error_set(err, SLIM_ENOMEM, "prune: out of memory");
            goto out;
        }
        for (int p = 1; p < j.nparts; p++)
            j.cand_off[p] = j.cand_off[p - 1] + j.hist[(size_t)(p - 1) * HI_BINS + j.bin];
    }

    /* phase 2: zero lower buckets, histogram the bucket's low bits */
    j.phase = 2;
    slim_kernel_parallel(j.nparts, select_part, &j);
    memset(sum, 0, LO_BINS * sizeof *sum);
    for (int p = 0; p < j.nparts; p++)
        for (size_t i = 0; i < LO_BINS; i++)
            sum[i] += j.lowhist[(size_t)p * LO_BINS + i];
    while (c_lt + sum[t] < need)
        c_lt += sum[t++];
    j.tkey = (j.bin << LO_BITS) | t;

    /* phase 3: members below tkey, and the first (need - c_lt) equal */
    size_t eq = need - c_lt;
    if (j.cand) {
        for (size_t i = 0; i < members; i++) {
            uint32_t key = *j.cand[i] & KEY_MASK;
            if (key < j.tkey) {
                *j.cand[i] = 0;
            } else if (key == j.tkey && eq) {
                *j.cand[i] = 0;
                eq--;
            }
        }
    } else {
        for (int p = 0; p < j.nparts; p++) {
            size_t here = j.lowhist[(size_t)p * LO_BINS + t];
            j.eq_quota[p] = here < eq ? here : eq;
            eq -= j.eq_quota[p];
        }
        j.phase = 3;
        slim_kernel_parallel(j.nparts, select_part, &j);
    }
out:
    slim_free(j.hist);
    slim_free(j.lowhist);
    slim_free(sum);
    slim_free(j.cand_off);
    slim_free(j.eq_quota);
    slim_free(j.cand);
    return rc;
}

static int check_sparsity(double s, struct slim_error *err)
{
    if (!(s >= 0.0 && s <= 1.0))
        return slim_error_set(err, SLIM_EINVAL, "prune: sparsity %g outside [0, 1]", s);
    return 0;
}

int slim_prune_unstructured(float *w, size_t n, double sparsity, int threads, size_t *n_zeroed,
                            struct slim_error *err)
{
    struct seg s = {(u32a *)w, n, 0};
    size_t k = slim_prune_count(n, sparsity);
    int rc = check_sparsity(sparsity, err);
    if (!rc && n && !w)
        rc = slim_error_set(err, SLIM_EINVAL, "prune: NULL weights");
    if (!rc)
        rc = select_zero(&s, 1, n, k, threads, err);
    if (n_zeroed)
        *n_zeroed = rc ? 0 : k;
    return rc;
}

int slim_prune_global(float *const *ws, const size_t *ns, size_t count, double sparsity,
                      int threads, size_t *n_zeroed, struct slim_error *err)
{
    struct seg *segs = NULL;
    size_t nseg = 0, total = 0, k = 0;
    int rc = check_sparsity(sparsity, err);

    if (rc)
        goto out;
    segs = slim_malloc((count ? count : 1) * sizeof *segs);
    if (!segs) {
        rc = slim_error_set(err, SLIM_ENOMEM, "prune: out of memory");
        goto out;
    }
    for (size_t t = 0; t < count; t++) {
        if (!ns[t])
            continue;
        if (!ws[t]) {
            rc = slim_error_set(err, SLIM_EINVAL, "prune: tensor %zu is NULL", t);
            goto out;
        }
        segs[nseg++] = (struct seg){(u32a *)ws[t], ns[t], total};
        total += ns[t];
    }
    k = slim_prune_count(total, sparsity);
    rc = select_zero(segs, nseg, total, k, threads, err);
out:
    slim_free(segs);
    if (n_zeroed)
        *n_zeroed = rc ? 0 : k;
    return rc;
}

/* The reference: sort (key, index) pairs and zero the first k. */
struct keyidx {
    uint32_t key;
    size_t idx;
};

static int keyidx_cmp(const void *pa, const void *pb)
{
    const struct keyidx *a = pa, *b = pb;
    if (a->key != b->key)
        return a->key < b->key ? -1 : 1;
    return a->idx < b->idx ? -1 : (a->idx > b->idx);
}

int slim_prune_global_ref(float *const *ws, const size_t *ns, size_t count, double sparsity,
                          size_t *n_zeroed, struct slim_error *err)
{
    size_t total = 0, k, at = 0;
    struct keyidx *ki = NULL;
    int rc = check_sparsity(sparsity, err);

    if (n_zeroed)
        *n_zeroed = 0;
    if (rc)
        return rc;
    for (size_t t = 0; t < count; t++)
        total += ns[t];
    k = slim_prune_count(total, sparsity);
    ki = slim_malloc((total ? total : 1) * sizeof *ki);
    if (!ki)
        return slim_error_set(err, SLIM_ENOMEM, "prune: out of memory");
    for (size_t t = 0; t < count; t++)
        for (size_t i = 0; i < ns[t]; i++, at++) {
            float v = ws[t][i];
            if (isnan(v)) {
                slim_free(ki);
                return slim_error_set(err, SLIM_ENUMERIC, "prune: NaN in weights");
            }
            uint32_t bits;
            memcpy(&bits, &v, sizeof bits);
            ki[at] = (struct keyidx){bits & KEY_MASK, at};
        }
    qsort(ki, total, sizeof *ki, keyidx_cmp);
    for (size_t i = 0; i < k; i++) {
        size_t g = ki[i].idx, t = 0;
        while (g >= ns[t])
            g -= ns[t++];
        ws[t][g] = 0.0f;
    }
    slim_free(ki);
    if (n_zeroed)
        *n_zeroed = k;
    return 0;
}

int slim_prune_unstructured_ref(float *w, size_t n, double sparsity, size_t *n_zeroed,
                                struct slim_error *err)
{
    return slim_prune_global_ref(&w, &n, 1, sparsity, n_zeroed, err);
}

/* ---- N:M ---------------------------------------------------------------- */

static size_t nm_keep(size_t len, int nkeep, int m)
{
    return len == (size_t)m ? (size_t)nkeep : ((size_t)nkeep * len + (size_t)m - 1) / (size_t)m;
}

struct absidx {
    float a;
    int idx;
};

static int absidx_cmp(const void *pa, const void *pb)
{
    const struct absidx *a = pa, *b = pb;
    if (a->a != b->a)
        return a->a > b->a ? -1 : 1;
    return a->idx - b->idx;
}

/* One run g (len,): ranks by counting for short runs, by sorting else.
 * tmp holds at least len entries. */
static void nm_run(float *g, size_t len, size_t keep, struct absidx *tmp)
{
    if (keep >= len)
        return;
    if (len <= 32) {
        float a[32];
        unsigned char drop[32];
        for (size_t i = 0; i < len; i++)
            a[i] = fabsf(g[i]);
        for (size_t i = 0; i < len; i++) {
            size_t r = 0;
            for (size_t j = 0; j < i; j++)
                r += a[j] >= a[i];
            for (size_t j = i + 1; j < len; j++)
                r += a[j] > a[i];
            drop[i] = r >= keep;
        }
        for (size_t i = 0; i < len; i++)
            g[i] = drop[i] ? 0.0f : g[i];
        return;
    }
    for (size_t i = 0; i < len; i++)
        tmp[i] = (struct absidx){fabsf(g[i]), (int)i};
    qsort(tmp, len, sizeof *tmp, absidx_cmp);
    for (size_t i = keep; i < len; i++)
        g[tmp[i].idx] = 0.0f;
}

#if defined(__SSE2__)
/* 2:4 and friends: ngroups runs of 4 at p, four runs per step. */
static size_t nm4_sse(float *p, size_t ngroups, int keep)
{
    const __m128 absmask = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
    const __m128i one = _mm_set1_epi32(1), kk = _mm_set1_epi32(keep);
    size_t g = 0;
    for (; g + 4 <= ngroups; g += 4) {
        float *q = p + 4 * g;
        __m128 r0 = _mm_loadu_ps(q), r1 = _mm_loadu_ps(q + 4);
        __m128 r2 = _mm_loadu_ps(q + 8), r3 = _mm_loadu_ps(q + 12);
        __m128 a0 = r0, a1 = r1, a2 = r2, a3 = r3;
        __m128i k0 = _mm_setzero_si128(), k1 = k0, k2 = k0, k3 = k0;
        _MM_TRANSPOSE4_PS(a0, a1, a2, a3);
        a0 = _mm_and_ps(a0, absmask);
        a1 = _mm_and_ps(a1, absmask);
        a2 = _mm_and_ps(a2, absmask);
        a3 = _mm_and_ps(a3, absmask);
        /* pair i < j: a_i >= a_j ranks j lower, else i */
#define PAIR(ai, aj, ki, kj)                                                \
    do {                                                                    \
        __m128i ge = _mm_castps_si128(_mm_cmpge_ps(ai, aj));                \
        kj = _mm_sub_epi32(kj, ge);                                         \
        ki = _mm_add_epi32(ki, _mm_add_epi32(ge, one));                     \
    } while (0)
        PAIR(a0, a1, k0, k1);
        PAIR(a0, a2, k0, k2);
        PAIR(a0, a3, k0, k3);
        PAIR(a1, a2, k1, k2);
        PAIR(a1, a3, k1, k3);
        PAIR(a2, a3, k2, k3);
#undef PAIR
        __m128 m0 = _mm_castsi128_ps(_mm_cmplt_epi32(k0, kk));
        __m128 m1 = _mm_castsi128_ps(_mm_cmplt_epi32(k1, kk));
        __m128 m2 = _mm_castsi128_ps(_mm_cmplt_epi32(k2, kk));
        __m128 m3 = _mm_castsi128_ps(_mm_cmplt_epi32(k3, kk));
        _MM_TRANSPOSE4_PS(m0, m1, m2, m3);
        _mm_storeu_ps(q, _mm_and_ps(r0, m0));
        _mm_storeu_ps(q + 4, _mm_and_ps(r1, m1));
        _mm_storeu_ps(q + 8, _mm_and_ps(r2, m2));
        _mm_storeu_ps(q + 12, _mm_and_ps(r3, m3));
    }
    return g;
}
#endif

struct nm_job {
    float *w;
    size_t rows, cols;
    int nkeep, m;
    int phase;                      /* 0: NaN scan, 1: prune */
    unsigned char nan[MAX_PARTS];   /* per-part NaN flags, phase 0 */
    struct absidx *tmp; /* nparts * m, for long runs */
};

static int nan_in(const float *v, size_t n)
{
    unsigned bad = 0;
    for (size_t i = 0; i < n; i++)
        bad |= v[i] != v[i];
    return bad != 0;
}

static void nm_part(void *ctx, int part, int nparts)
{
    struct nm_job *j = ctx;
    size_t r0 = j->rows * (size_t)part / (size_t)nparts;
    size_t r1 = j->rows * (size_t)(part + 1) / (size_t)nparts;
    size_t cols = j->cols, m = (size_t)j->m;
    struct absidx *tmp = j->tmp ? j->tmp + (size_t)part * m : NULL;

    if (j->phase == 0) {
        j->nan[part] = (unsigned char)nan_in(j->w + r0 * cols, (r1 - r0) * cols);
        return;
    }
#if defined(__SSE2__)
    if (m == 4 && cols % 4 == 0) {
        /* rows are back to back, so the block is one stream of runs */
        size_t ng = (r1 - r0) * cols / 4;
        float *p = j->w + r0 * cols;
        for (size_t g = nm4_sse(p, ng, j->nkeep); g < ng; g++)
            nm_run(p + 4 * g, 4, (size_t)j->nkeep, tmp);
        return;
    }
#endif
    for (size_t r = r0; r < r1; r++) {
        float *row = j->w + r * cols;
        size_t c = 0;
#if defined(__SSE2__)
        if (m == 4)
            c = 4 * nm4_sse(row, cols / 4, j->nkeep);
#endif
        for (; c < cols; c += m) {
            size_t len = cols - c < m ? cols - c : m;
            nm_run(row + c, len, nm_keep(len, j->nkeep, j->m), tmp);
        }
    }
}

static size_t nm_pruned(size_t rows, size_t cols, int nkeep, int m)
{
    size_t full = cols / (size_t)m, rest = cols % (size_t)m;
    size_t per_row = full * (size_t)(m - nkeep) + (rest ? rest - nm_keep(rest, nkeep, m) : 0);
    return per_row * rows;
}

static int nm_check(float *w, size_t rows, size_t cols, int nkeep, int m, struct slim_error *err)
{
    if (m < 1 || m > 1024 || nkeep < 0 || nkeep > m)
        return slim_error_set(err, SLIM_EINVAL, "prune: bad N:M pattern %d:%d", nkeep, m);
    if (rows && cols && !w)
        return slim_error_set(err, SLIM_EINVAL, "prune: NULL weights");
    return 0;
}

int slim_prune_nm(float *w, size_t rows, size_t cols, int nkeep, int m, int threads,
                  size_t *n_zeroed, struct slim_error *err)
{
    struct nm_job j = {.w = w, .rows = rows, .cols = cols, .nkeep = nkeep, .m = m};
    int nparts, rc = nm_check(w, rows, cols, nkeep, m, err);

    if (n_zeroed)
        *n_zeroed = 0;
    if (rc || !rows || !cols)
        return rc;
    nparts = slim_kernel_threads(threads, rows * cols);
    if ((size_t)nparts > rows)
        nparts = (int)rows;
    if (m > 32) {
        j.tmp = slim_malloc((size_t)nparts * (size_t)m * sizeof *j.tmp);
        if (!j.tmp)
            return slim_error_set(err, SLIM_ENOMEM, "prune: out of memory");
    }
    j.phase = 0;
    slim_kernel_parallel(nparts, nm_part, &j);
    for (int p = 0; p < nparts; p++)
        if (j.nan[p]) {
            slim_free(j.tmp);
            return slim_error_set(err, SLIM_ENUMERIC, "prune: NaN in weights");
        }
    j.phase = 1;
    slim_kernel_parallel(nparts, nm_part, &j);
    slim_free(j.tmp);
    if (n_zeroed)
        *n_zeroed = nm_pruned(rows, cols, nkeep, m);
    return 0;
}

int slim_prune_nm_ref(float *w, size_t rows, size_t cols, int nkeep, int m, size_t *n_zeroed,
                      struct slim_error *err)
{
    struct absidx *tmp;
    int rc = nm_check(w, rows, cols, nkeep, m, err);

    if (n_zeroed)
        *n_zeroed = 0;
    if (rc || !rows || !cols)
        return rc;
    for (size_t i = 0; i < rows * cols; i++)
        if (isnan(w[i]))
            return slim_error_set(err, SLIM_ENUMERIC, "prune: NaN in weights");
    tmp = slim_malloc((size_t)m * sizeof *tmp);
    if (!tmp)
        return slim_error_set(err, SLIM_ENOMEM, "prune: out of memory");
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c += (size_t)m) {
            size_t len = cols - c < (size_t)m ? cols - c : (size_t)m;
            size_t keep = nm_keep(len, nkeep, m);
            float *g = w + r * cols + c;
            /* sort by |w| descending, lower index first on ties */
            for (size_t i = 0; i < len; i++)
                tmp[i] = (struct absidx){fabsf(g[i]), (int)i};
            qsort(tmp, len, sizeof *tmp, absidx_cmp);
            for (size_t i = keep; i < len; i++)
                g[tmp[i].idx] = 0.0f;
        }
    slim_free(tmp);
    if (n_zeroed)
        *n_zeroed = nm_pruned(rows, cols, nkeep, m);
    return 0;
}

/* ---- rows ----------------------------------------------------------------- */

struct rows_job {
    const float *w;
    size_t rows, cols;
    double *norm2;
};

static double row_norm2(const float *v, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += (double)v[i] * (double)v[i];
    return s;
}

static void rows_part(void *ctx, int part, int nparts)
{
    struct rows_job *j = ctx;
    size_t r0 = j->rows * (size_t)part / (size_t)nparts;
    size_t r1 = j->rows * (size_t)(part + 1) / (size_t)nparts;
    for (size_t r = r0; r < r1; r++)
        j->norm2[r] = row_norm2(j->w + r * j->cols, j->cols);
}

struct normidx {
    double v;
    size_t idx;
};

static int normidx_cmp(const void *pa, const void *pb)
{
    const struct normidx *a = pa, *b = pb;
    if (a->v != b->v)
        return a->v < b->v ? -1 : 1;
    return a->idx < b->idx ? -1 : (a->idx > b->idx);
}

/* Shared by the twins: norms are computed by `parts` threads (1 for the
 * reference, whose loop is then the plain one), then sorted. */
static int prune_rows(float *w, size_t rows, size_t cols, double sparsity, int threads,
                      size_t *rows_zeroed, struct slim_error *err)
{
    struct rows_job j = {.w = w, .rows = rows, .cols = cols};
    struct normidx *ni = NULL;
    size_t k = slim_prune_count(rows, sparsity);
    int rc = check_sparsity(sparsity, err);

    if (rows_zeroed)
        *rows_zeroed = 0;
    if (rc || !rows)
        return rc;
    if (cols && !w)
        return slim_error_set(err, SLIM_EINVAL, "prune: NULL weights");
    j.norm2 = slim_malloc(rows * sizeof *j.norm2);
    ni = slim_malloc(rows * sizeof *ni);
    if (!j.norm2 || !ni) {
        rc = slim_error_set(err, SLIM_ENOMEM, "prune: out of memory");
        goto out;
    }
    int nparts = slim_kernel_threads(threads, rows * cols);
    if ((size_t)nparts > rows)
        nparts = (int)rows;
    slim_kernel_parallel(nparts, rows_part, &j);
    for (size_t r = 0; r < rows; r++) {
        if (isnan(j.norm2[r])) {
            rc = slim_error_set(err, SLIM_ENUMERIC, "prune: NaN in row %zu", r);
            goto out;
        }
        ni[r] = (struct normidx){j.norm2[r], r};
    }
    qsort(ni, rows, sizeof *ni, normidx_cmp);
    for (size_t i = 0; i < k; i++)
        memset(w + ni[i].idx * cols, 0, cols * sizeof *w);
    if (rows_zeroed)
        *rows_zeroed = k;
out:
    slim_free(j.norm2);
    slim_free(ni);
    return rc;
}

int slim_prune_rows(float *w, size_t rows, size_t cols, double sparsity, int threads,
                    size_t *rows_zeroed, struct slim_error *err)
{
    return prune_rows(w, rows, cols, sparsity, threads, rows_zeroed, err);
}

int slim_prune_rows_ref(float *w, size_t rows, size_t cols, double sparsity,
                        size_t *rows_zeroed, struct slim_error *err)
{
    return prune_rows(w, rows, cols, sparsity, 1, rows_zeroed, err);
}
