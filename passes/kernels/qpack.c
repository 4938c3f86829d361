/*
 * qpack.c - quantization packers: int8 per row, int4 in groups along the
 * row (two per byte), ternary (TWN: Li, Zhang, Liu 2016) and binary
 * (XNOR-Net: Rastegari et al. 2016) per row, their decoders, and MSE
 * calibration of the clipping range for int8 and int4.
 *
 * A row or group is quantized while it is in L1: one pass finds its range,
 * one writes codes; decoded values come from the codes, so they are what a
 * reader computes, (q - zp) * scale.  A range always includes 0 (a pruned
 * weight decodes to exactly 0); an all-zero row or group gets scale 1
 * (int8/int4) or 0 (ternary/binary, whose codes then decode to 0): nothing
 * divides by zero, no NaN.  Scales are computed in double, so a range near
 * FLT_MAX cannot overflow.
 *
 * MSE calibration (the "mse" observer of PTQ tool chains; Banner et al.,
 * "Post-training 4-bit quantization", 2019): the range [lo, hi] shrinks to
 * [a lo, a hi] for a on an even grid from 1 to SLIM_QCAL_MIN_SHRINK, and
 * the least squared error wins (ties to the larger a, so the error never
 * rises above min/max).  Golden-section search was rejected: the error is
 * not unimodal in a.
 *
 * Rounding is to nearest even, as rintf: the fast kernels add and subtract
 * 1.5 * 2^23 after clamping (exact below 2^22, and it vectorises on plain
 * SSE2, where rintf does not); reductions use 16 explicit lanes, so GCC
 * vectorises them without -ffast-math (refused below).  -O3-level
 * vectorisation is asked for by pragma.  The _ref twins are the same
 * formulas in plain scalar code with rintf and double sums.
 */
#pragma GCC optimize("O3")
#include <float.h>
#include <math.h>
#include <string.h>
#include "passes/kernels/kernels.h"

#if defined(__FAST_MATH__)
#error "qpack.c relies on IEEE rounding (rnd below); do not build it with -ffast-math"
#endif

#define LANES 16

static inline float rnd(float x)
{
    return (x + 12582912.0f) - 12582912.0f;
}

static inline float clampf(float x, float lo, float hi)
{
    x = x < lo ? lo : x;
    return x > hi ? hi : x;
}

/* Range of v (n,) widened to include 0; returns non-zero if v holds NaN
 * or Inf. */
static int range_lanes(const float *v, size_t n, float *lo, float *hi)
{
    float mn[LANES] = {0}, mx[LANES] = {0};
    int bad[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) {
            float x = v[i + l];
            mn[l] = x < mn[l] ? x : mn[l];
            mx[l] = x > mx[l] ? x : mx[l];
            bad[l] |= (x - x) != 0.0f;
        }
    for (; i < n; i++) {
        float x = v[i];
        mn[0] = x < mn[0] ? x : mn[0];
        mx[0] = x > mx[0] ? x : mx[0];
        bad[0] |= (x - x) != 0.0f;
    }
    for (int l = 1; l < LANES; l++) {
        mn[0] = mn[l] < mn[0] ? mn[l] : mn[0];
        mx[0] = mx[l] > mx[0] ? mx[l] : mx[0];
        bad[0] |= bad[l];
    }
    *lo = mn[0];
    *hi = mx[0];
    return bad[0];
}

static int range_ref(const float *v, size_t n, float *lo, float *hi)
{
    *lo = 0.0f;
    *hi = 0.0f;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(v[i]))
            return 1;
        *lo = fminf(*lo, v[i]);
        *hi = fmaxf(*hi, v[i]);
    }
    return 0;
}

/* ---- parameters (shared by the twins) ----------------------------------- */

/* A linear quantizer: code = rnd(clamp(w / scale, qlo, qhi)) + zp, and
 * qlo, qhi already shifted by -zp so that codes land in the dtype's range. */
struct qparam {
    float scale;
    int zp;
    float qlo, qhi;
};

/* nlev: 255 (int8) or 15 (int4); a: shrink factor. */
static struct qparam qparam_make(float lo, float hi, int symmetric, int nlev, float a)
{
    struct qparam p;
    double l = (double)lo * a, h = (double)hi * a;
    if (symmetric) {
        double amax = h > -l ? h : -l;
        /* int8: [-127, 127], zp 0; int4: [-8, 7] + 8, scale max / 7 */
        int half = nlev == 255 ? 127 : 7;
        p.scale = (float)(amax / half);
        if (!(p.scale > 0.0f) || !isfinite(p.scale))
            p.scale = 1.0f;
        p.zp = nlev == 255 ? 0 : 8;
        p.qlo = nlev == 255 ? -127.0f : -8.0f;
        p.qhi = nlev == 255 ? 127.0f : 7.0f;
    } else {
        int qmin = nlev == 255 ? -128 : 0, qmax = nlev == 255 ? 127 : 15;
        p.scale = (float)((h - l) / nlev);
        if (!(p.scale > 0.0f) || !isfinite(p.scale))
            p.scale = 1.0f;
        double z = rint((double)qmin - l / p.scale);
        p.zp = z < qmin ? qmin : (z > qmax ? qmax : (int)z);
        p.qlo = (float)(qmin - p.zp);
        p.qhi = (float)(qmax - p.zp);
    }
    return p;
}

static float shrink(int j, int steps)
{
    if (steps < 2)
        return 1.0f;
    return 1.0f - (1.0f - SLIM_QCAL_MIN_SHRINK) * (float)j / (float)(steps - 1);
}

/* ---- the fast block kernels ----------------------------------------------- */

static float sqerr_lanes(const float *w, size_t n, struct qparam p)
{
    float acc[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) {
            float x = w[i + l];
            float d = x - rnd(clampf(x / p.scale, p.qlo, p.qhi)) * p.scale;
            acc[l] += d * d;
        }
    for (; i < n; i++) {
        float x = w[i];
        float d = x - rnd(clampf(x / p.scale, p.qlo, p.qhi)) * p.scale;
        acc[0] += d * d;
    }
    for (int l = 1; l < LANES; l++)
        acc[0] += acc[l];
    return acc[0];
}

static double sqerr_ref(const float *w, size_t n, struct qparam p)
{
    double e = 0.0;
    for (size_t i = 0; i < n; i++) {
        float r = rintf(w[i] / p.scale);
        r = r < p.qlo ? p.qlo : (r > p.qhi ? p.qhi : r);
        double d = (double)w[i] - (double)(r * p.scale);
        e += d * d;
    }
    return e;
}

static struct qparam choose(const float *w, size_t n, float lo, float hi, int symmetric,
                            int nlev, int steps, int ref)
{
    struct qparam best = qparam_make(lo, hi, symmetric, nlev, 1.0f);
    if (steps >= 2 && n) {
        double best_e = ref ? sqerr_ref(w, n, best) : sqerr_lanes(w, n, best);
        for (int j = 1; j < steps; j++) {
            struct qparam p = qparam_make(lo, hi, symmetric, nlev, shrink(j, steps));
            double e = ref ? sqerr_ref(w, n, p) : sqerr_lanes(w, n, p);
            if (e < best_e) {
                best_e = e;
                best = p;
            }
        }
    }
    return best;
}

static void codes_i8(const float *w, size_t n, struct qparam p, int8_t *q)
{
    const float zp = (float)p.zp;
    for (size_t i = 0; i < n; i++)
        q[i] = (int8_t)(int)(rnd(clampf(w[i] / p.scale, p.qlo, p.qhi)) + zp);
}

static void codes_u4(const float *w, size_t n, struct qparam p, uint8_t *q)
{
    const float zp = (float)p.zp;
    for (size_t i = 0; i < n; i++)
        q[i] = (uint8_t)(int)(rnd(clampf(w[i] / p.scale, p.qlo, p.qhi)) + zp);
}

/* ---- row-parallel driver ------------------------------------------------- */

enum qkind { K_Q8, K_Q4, K_TERN, K_BIN };

struct qjob {
    int kind;
    const float *w;
    size_t rows, cols, group;
    int symmetric, steps;
    void *q;          /* int8_t codes or uint8_t packed */
    float *scale;
    void *zp;         /* int8_t or uint8_t */
    float *deq;
    uint8_t *tmp;     /* nparts * cols */
    struct slim_qstats *stats;
    float *stat_row;  /* nparts * cols: decoded row when stats want one and deq is NULL */
    struct slim_qstats part_stats[SLIM_KERNEL_MAX_THREADS];
    size_t bad_row[SLIM_KERNEL_MAX_THREADS];
    int bad[SLIM_KERNEL_MAX_THREADS];
};

/* Adds the error, signal and non-zeros of deq against w to st.  Partial sums of
 * STAT_BLOCK weights run in float over LANES independent accumulators
 * (so the loop vectorises at SSE2's four floats a step: doubles would
 * halve that) and go into the double totals at the end of each block:
 * a float sum of at most STAT_BLOCK / LANES = 256 squares per lane
 * is good to about 1e-6 relative, far below the 1e-4 the report is read
 * at, and the totals over millions of weights stay in double. */
#define STAT_BLOCK 4096

void slim_qstats_add(const float *w, const float *deq, size_t n, struct slim_qstats *st)
{
    for (size_t b = 0; b < n; b += STAT_BLOCK) {
        size_t end = n - b < STAT_BLOCK ? n : b + STAT_BLOCK, i = b;
        float e2[LANES] = {0}, r2[LANES] = {0};
        int32_t nz[LANES] = {0};
        for (; i + LANES <= end; i += LANES)
            for (int l = 0; l < LANES; l++) {
                float x = w[i + l], d = x - deq[i + l];
                e2[l] += d * d;
                r2[l] += x * x;
                nz[l] += deq[i + l] != 0.0f;
            }
        for (; i < end; i++) {
            float x = w[i], d = x - deq[i];
            e2[0] += d * d;
            r2[0] += x * x;
            nz[0] += deq[i] != 0.0f;
        }
        for (int l = 0; l < LANES; l++) {
            st->err2 += (double)e2[l];
            st->ref2 += (double)r2[l];
            st->nonzero += nz[l];
        }
    }
}

static int q8_row(const float *w, size_t n, int sym, int steps, int8_t *q, float *scale,
                  int8_t *zp, float *deq)
{
    float lo, hi;
    struct qparam p;
    if (range_lanes(w, n, &lo, &hi))
        return -1;
    p = choose(w, n, lo, hi, sym, 255, steps, 0);
    codes_i8(w, n, p, q);
    *scale = p.scale;
    if (zp)
        *zp = (int8_t)p.zp;
    if (deq)
        for (size_t i = 0; i < n; i++)
            deq[i] = (float)(q[i] - p.zp) * p.scale;
    return 0;
}

static void pack4(const uint8_t *q, size_t cols, uint8_t *out)
{
    size_t h = cols / 2;
    for (size_t j = 0; j < h; j++)
        out[j] = (uint8_t)(q[2 * j] | q[2 * j + 1] << 4);
    if (cols & 1)
        out[h] = q[cols - 1];
}

static int q4_row(const float *w, size_t cols, size_t group, int sym, int steps, uint8_t *qrow,
                  uint8_t *packed, float *scale, uint8_t *zp, float *deq)
{
    size_t g = 0;
    for (size_t c = 0; c < cols; c += group, g++) {
        size_t len = cols - c < group ? cols - c : group;
        float lo, hi;
        struct qparam p;
        if (range_lanes(w + c, len, &lo, &hi))
            return -1;
        p = choose(w + c, len, lo, hi, sym, 15, steps, 0);
        codes_u4(w + c, len, p, qrow + c);
        scale[g] = p.scale;
        zp[g] = (uint8_t)p.zp;
        if (deq)
            for (size_t i = 0; i < len; i++)
                deq[c + i] = (float)((int)qrow[c + i] - p.zp) * p.scale;
    }
    pack4(qrow, cols, packed);
    return 0;
}

/* Sum of |v| in double, via float lanes over blocks of 4096. */
static double abs_sum_lanes(const float *v, size_t n, float t, size_t *count)
{
    double total = 0.0;
    size_t cnt = 0;
    for (size_t b = 0; b < n; b += 4096) {
        size_t e = n - b < 4096 ? n : b + 4096;
        float acc[LANES] = {0};
        int c[LANES] = {0};
        size_t i = b;
        for (; i + LANES <= e; i += LANES)
            for (int l = 0; l < LANES; l++) {
                float a = fabsf(v[i + l]);
                int above = a > t;
                acc[l] += above ? a : 0.0f;
                c[l] += above;
            }
        for (; i < e; i++) {
            float a = fabsf(v[i]);
            acc[0] += a > t ? a : 0.0f;
            c[0] += a > t;
        }
        for (int l = 0; l < LANES; l++) {
            total += acc[l];
            cnt += (size_t)c[l];
        }
    }
    if (count)
        *count = cnt;
    return total;
}

static int nonfinite_lanes(const float *v, size_t n)
{
    int bad[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++)
            bad[l] |= (v[i + l] - v[i + l]) != 0.0f;
    for (; i < n; i++)
        bad[0] |= (v[i] - v[i]) != 0.0f;
    for (int l = 1; l < LANES; l++)
        bad[0] |= bad[l];
    return bad[0];
}

/* Ternary threshold and scale of one row (shared by the twins: the sums
 * are the only difference, and they are passed in). */
static float tern_threshold(double abs_sum, size_t n)
{
    return n ? (float)(0.7 * abs_sum / (double)n) : 0.0f;
}

static int tern_row(const float *w, size_t n, uint8_t *packed, float *scale, float *deq)
{
    size_t cnt;
    float t, s;
    if (nonfinite_lanes(w, n))
        return -1;
    t = tern_threshold(abs_sum_lanes(w, n, -1.0f, NULL), n);
    double above = abs_sum_lanes(w, n, t, &cnt);
    s = cnt ? (float)(above / (double)cnt) : 0.0f;
    *scale = s;
    size_t nb = n / 4;
    for (size_t j = 0; j < nb; j++) {
        unsigned byte = 0;
        for (int b = 0; b < 4; b++) {
            float x = w[4 * j + b];
            unsigned code = (unsigned)(x > t) | (unsigned)(x < -t) << 1;
            byte |= code << (2 * b);
        }
        packed[j] = (uint8_t)byte;
    }
    if (n % 4) {
        unsigned byte = 0;
        for (size_t i = 4 * nb; i < n; i++) {
            unsigned code = (unsigned)(w[i] > t) | (unsigned)(w[i] < -t) << 1;
            byte |= code << (2 * (i - 4 * nb));
        }
        packed[nb] = (uint8_t)byte;
    }
    if (deq)
        for (size_t i = 0; i < n; i++)
            deq[i] = w[i] > t ? s : (w[i] < -t ? -s : 0.0f);
    return 0;
}

static int bin_row(const float *w, size_t n, uint8_t *packed, float *scale, float *deq)
{
    float s;
    if (nonfinite_lanes(w, n))
        return -1;
    s = n ? (float)(abs_sum_lanes(w, n, -1.0f, NULL) / (double)n) : 0.0f;
    *scale = s;
    size_t nb = n / 8;
    for (size_t j = 0; j < nb; j++) {
        unsigned byte = 0;
        for (int b = 0; b < 8; b++)
            byte |= (unsigned)(w[8 * j + b] >= 0.0f) << b;
        packed[j] = (uint8_t)byte;
    }
    if (n % 8) {
        unsigned byte = 0;
        for (size_t i = 8 * nb; i < n; i++)
            byte |= (unsigned)(w[i] >= 0.0f) << (i - 8 * nb);
        packed[nb] = (uint8_t)byte;
    }
    if (deq)
        for (size_t i = 0; i < n; i++)
            deq[i] = w[i] >= 0.0f ? s : -s;
    return 0;
}

static void qpart(void *ctx, int part, int nparts)
{
    struct qjob *j = ctx;
    size_t r0 = j->rows * (size_t)part / (size_t)nparts;
    size_t r1 = j->rows * (size_t)(part + 1) / (size_t)nparts;
    size_t cols = j->cols, ng = j->group ? (cols + j->group - 1) / j->group : 0;
    int rc = 0;

    struct slim_qstats *st = &j->part_stats[part];
    memset(st, 0, sizeof *st);
    for (size_t r = r0; r < r1 && !rc; r++) {
        const float *w = j->w + r * cols;
        float *deq = j->deq ? j->deq + r * cols
                            : j->stats ? j->stat_row + (size_t)part * cols : NULL;
        switch (j->kind) {
        case K_Q8:
            rc = q8_row(w, cols, j->symmetric, j->steps, (int8_t *)j->q + r * cols, &j->scale[r],
                        j->zp ? (int8_t *)j->zp + r : NULL, deq);
            break;
        case K_Q4:
            rc = q4_row(w, cols, j->group, j->symmetric, j->steps, j->tmp + (size_t)part * cols,
                        (uint8_t *)j->q + r * ((cols + 1) / 2), j->scale + r * ng,
                        (uint8_t *)j->zp + r * ng, deq);
            break;
        case K_TERN:
            rc = tern_row(w, cols, (uint8_t *)j->q + r * ((cols + 3) / 4), &j->scale[r], deq);
            break;
        default:
            rc = bin_row(w, cols, (uint8_t *)j->q + r * ((cols + 7) / 8), &j->scale[r], deq);
            break;
        }
        if (rc) {
            j->bad[part] = 1;
            j->bad_row[part] = r;
        } else if (j->stats) {
            slim_qstats_add(j->stats->ref ? j->stats->ref + r * cols : w, deq, cols, st);
        }
    }
}

static const char *const kind_names[] = {"int8", "int4", "ternary", "binary"};

static int qrun(struct qjob *j, int threads, struct slim_error *err)
{
    int nparts, rc = 0;
    if (!j->rows || !j->cols)
        return 0;
    nparts = slim_kernel_threads(threads, j->rows * j->cols);
    if ((size_t)nparts > j->rows)
        nparts = (int)j->rows;
    if (j->kind == K_Q4) {
        j->tmp = slim_malloc((size_t)nparts * j->cols);
        if (!j->tmp)
            return slim_error_set(err, SLIM_ENOMEM, "%s: out of memory", kind_names[j->kind]);
    }
    if (j->stats && !j->deq &&
        !(j->stat_row = slim_aligned_alloc((size_t)nparts * j->cols * sizeof(float)))) {
        slim_free(j->tmp);
        return slim_error_set(err, SLIM_ENOMEM, "%s: out of memory", kind_names[j->kind]);
    }
    slim_kernel_parallel(nparts, qpart, j);
    for (int p = 0; p < nparts; p++)
        if (j->bad[p]) {
            rc = slim_error_set(err, SLIM_ENUMERIC, "%s: NaN or Inf in row %zu",
                                kind_names[j->kind], j->bad_row[p]);
            break;
        }
    if (!rc && j->stats)
        for (int p = 0; p < nparts; p++) {
            j->stats->err2 += j->part_stats[p].err2;
            j->stats->ref2 += j->part_stats[p].ref2;
            j->stats->nonzero += j->part_stats[p].nonzero;
        }
    slim_free(j->tmp);
    slim_aligned_free(j->stat_row);
    j->tmp = NULL;
    j->stat_row = NULL;
    return rc;
}

static int qcheck(int kind, const float *w, size_t rows, size_t cols, const void *q,
                  const float *scale, const void *zp, int steps, struct slim_error *err)
{
    if (!rows || !cols)
        return 0;
    if (!w || !q || !scale || (kind == K_Q4 && !zp))
        return slim_error_set(err, SLIM_EINVAL, "%s: NULL buffer", kind_names[kind]);
    if (steps < 0 || steps > SLIM_QCAL_MAX_STEPS)
        return slim_error_set(err, SLIM_EINVAL, "%s: calibration steps %d outside [0, %d]",
                              kind_names[kind], steps, SLIM_QCAL_MAX_STEPS);
    return 0;
}

int slim_q8_rows(const float *w, size_t rows, size_t cols, int symmetric, int mse_steps,
                 int8_t *q, float *scale, int8_t *zp, float *deq, struct slim_qstats *stats,
                 int threads, struct slim_error *err)
{
    struct qjob j = {.kind = K_Q8, .w = w, .rows = rows, .cols = cols, .symmetric = symmetric,
                     .steps = mse_steps, .q = q, .scale = scale, .zp = zp, .deq = deq,
                     .stats = stats};
    int rc = qcheck(K_Q8, w, rows, cols, q, scale, zp, mse_steps, err);
    if (!rc && !symmetric && rows && cols && !zp)
        rc = slim_error_set(err, SLIM_EINVAL, "int8: asymmetric needs zero points");
    return rc ? rc : qrun(&j, threads, err);
}

int slim_q4_groups(const float *w, size_t rows, size_t cols, size_t group, int symmetric,
                   int mse_steps, uint8_t *packed, float *scale, uint8_t *zp, float *deq,
                   struct slim_qstats *stats, int threads, struct slim_error *err)
{
    struct qjob j = {.kind = K_Q4, .w = w, .rows = rows, .cols = cols, .group = group,
                     .symmetric = symmetric, .steps = mse_steps, .q = packed, .scale = scale,
                     .zp = zp, .deq = deq, .stats = stats};
    int rc = qcheck(K_Q4, w, rows, cols, packed, scale, zp, mse_steps, err);
    if (!rc && !group)
        rc = slim_error_set(err, SLIM_EINVAL, "int4: group size 0");
    return rc ? rc : qrun(&j, threads, err);
}

int slim_ternary_rows(const float *w, size_t rows, size_t cols, uint8_t *packed, float *scale,
                      float *deq, struct slim_qstats *stats, int threads,
                      struct slim_error *err)
{
    struct qjob j = {.kind = K_TERN, .w = w, .rows = rows, .cols = cols, .q = packed,
                     .scale = scale, .deq = deq, .stats = stats};
    int rc = qcheck(K_TERN, w, rows, cols, packed, scale, NULL, 0, err);
    return rc ? rc : qrun(&j, threads, err);
}

int slim_binary_rows(const float *w, size_t rows, size_t cols, uint8_t *packed, float *scale,
                     float *deq, struct slim_qstats *stats, int threads, struct slim_error *err)
{
    struct qjob j = {.kind = K_BIN, .w = w, .rows = rows, .cols = cols, .q = packed,
                     .scale = scale, .deq = deq, .stats = stats};
    int rc = qcheck(K_BIN, w, rows, cols, packed, scale, NULL, 0, err);
    return rc ? rc : qrun(&j, threads, err);
}

/* ---- decoders ------------------------------------------------------------- */

void slim_q4_dequant(const uint8_t *packed, const float *scale, const uint8_t *zp, size_t rows,
                     size_t cols, size_t group, float *out)
{
    size_t ng = group ? (cols + group - 1) / group : 0, pb = (cols + 1) / 2;
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++) {
            uint8_t byte = packed[r * pb + c / 2];
            int q = c & 1 ? byte >> 4 : byte & 15;
            size_t g = r * ng + c / group;
            out[r * cols + c] = (float)(q - zp[g]) * scale[g];
        }
}

void slim_ternary_dequant(const uint8_t *packed, const float *scale, size_t rows, size_t cols,
                          float *out)
{
    size_t pb = (cols + 3) / 4;
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++) {
            int code = packed[r * pb + c / 4] >> (2 * (c % 4)) & 3;
            out[r * cols + c] = code == 1 ? scale[r] : (code == 2 ? -scale[r] : 0.0f);
        }
}

void slim_binary_dequant(const uint8_t *packed, const float *scale, size_t rows, size_t cols,
                         float *out)
{
    size_t pb = (cols + 7) / 8;
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++) {
            int bit = packed[r * pb + c / 8] >> (c % 8) & 1;
            out[r * cols + c] = bit ? scale[r] : -scale[r];
        }
}

/* ---- the reference twins ------------------------------------------------- */

int slim_q8_rows_ref(const float *w, size_t rows, size_t cols, int symmetric, int mse_steps,
                     int8_t *q, float *scale, int8_t *zp, float *deq, struct slim_error *err)
{
    int rc = qcheck(K_Q8, w, rows, cols, q, scale, zp, mse_steps, err);
    if (rc || !rows || !cols)
        return rc;
    if (!symmetric && !zp)
        return slim_error_set(err, SLIM_EINVAL, "int8: asymmetric needs zero points");
    for (size_t r = 0; r < rows; r++) {
        const float *v = w + r * cols;
        float lo, hi;
        if (range_ref(v, cols, &lo, &hi))
            return slim_error_set(err, SLIM_ENUMERIC, "int8: NaN or Inf in row %zu", r);
        struct qparam p = choose(v, cols, lo, hi, symmetric, 255, mse_steps, 1);
        scale[r] = p.scale;
        if (zp)
            zp[r] = (int8_t)p.zp;
        for (size_t c = 0; c < cols; c++) {
            float x = rintf(v[c] / p.scale);
            x = x < p.qlo ? p.qlo : (x > p.qhi ? p.qhi : x);
            int code = (int)x + p.zp;
            q[r * cols + c] = (int8_t)code;
            if (deq)
                deq[r * cols + c] = (float)(code - p.zp) * p.scale;
        }
    }
    return 0;
}

int slim_q4_groups_ref(const float *w, size_t rows, size_t cols, size_t group, int symmetric,
                       int mse_steps, uint8_t *packed, float *scale, uint8_t *zp, float *deq,
                       struct slim_error *err)
{
    int rc = qcheck(K_Q4, w, rows, cols, packed, scale, zp, mse_steps, err);
    size_t ng, pb = (cols + 1) / 2;
    if (rc || !rows || !cols)
        return rc;
    if (!group)
        return slim_error_set(err, SLIM_EINVAL, "int4: group size 0");
    ng = (cols + group - 1) / group;
    memset(packed, 0, rows * pb);
    for (size_t r = 0; r < rows; r++)
        for (size_t g = 0; g < ng; g++) {
            size_t c0 = g * group, len = cols - c0 < group ? cols - c0 : group;
            const float *v = w + r * cols + c0;
            float lo, hi;
            if (range_ref(v, len, &lo, &hi))
                return slim_error_set(err, SLIM_ENUMERIC, "int4: NaN or Inf in row %zu", r);
            struct qparam p = choose(v, len, lo, hi, symmetric, 15, mse_steps, 1);
            scale[r * ng + g] = p.scale;
            zp[r * ng + g] = (uint8_t)p.zp;
            for (size_t i = 0; i < len; i++) {
                size_t c = c0 + i;
                float x = rintf(v[i] / p.scale);
                x = x < p.qlo ? p.qlo : (x > p.qhi ? p.qhi : x);
                int code = (int)x + p.zp;
                packed[r * pb + c / 2] |= (uint8_t)(code << (4 * (c & 1)));
                if (deq)
                    deq[r * cols + c] = (float)(code - p.zp) * p.scale;
            }
        }
    return 0;
}

int slim_ternary_rows_ref(const float *w, size_t rows, size_t cols, uint8_t *packed,
                          float *scale, float *deq, struct slim_error *err)
{
    int rc = qcheck(K_TERN, w, rows, cols, packed, scale, NULL, 0, err);
    size_t pb = (cols + 3) / 4;
    if (rc || !rows || !cols)
        return rc;
    memset(packed, 0, rows * pb);
    for (size_t r = 0; r < rows; r++) {
        const float *v = w + r * cols;
        double sum = 0.0, above = 0.0;
        size_t cnt = 0;
        for (size_t c = 0; c < cols; c++) {
            if (!isfinite(v[c]))
                return slim_error_set(err, SLIM_ENUMERIC, "ternary: NaN or Inf in row %zu", r);
            sum += fabsf(v[c]);
        }
        float t = tern_threshold(sum, cols);
        for (size_t c = 0; c < cols; c++)
            if (fabsf(v[c]) > t) {
                above += fabsf(v[c]);
                cnt++;
            }
        float s = cnt ? (float)(above / (double)cnt) : 0.0f;
        scale[r] = s;
        for (size_t c = 0; c < cols; c++) {
            int code = v[c] > t ? 1 : (v[c] < -t ? 2 : 0);
            packed[r * pb + c / 4] |= (uint8_t)(code << (2 * (c % 4)));
            if (deq)
                deq[r * cols + c] = code == 1 ? s : (code == 2 ? -s : 0.0f);
        }
    }
    return 0;
}

int slim_binary_rows_ref(const float *w, size_t rows, size_t cols, uint8_t *packed,
                         float *scale, float *deq, struct slim_error *err)
{
    int rc = qcheck(K_BIN, w, rows, cols, packed, scale, NULL, 0, err);
    size_t pb = (cols + 7) / 8;
    if (rc || !rows || !cols)
        return rc;
    memset(packed, 0, rows * pb);
    for (size_t r = 0; r < rows; r++) {
        const float *v = w + r * cols;
        double sum = 0.0;
        for (size_t c = 0; c < cols; c++) {
            if (!isfinite(v[c]))
                return slim_error_set(err, SLIM_ENUMERIC, "binary: NaN or Inf in row %zu", r);
            sum += fabsf(v[c]);
        }
        float s = (float)(sum / (double)cols);
        scale[r] = s;
        for (size_t c = 0; c < cols; c++) {
            int bit = v[c] >= 0.0f;
            packed[r * pb + c / 8] |= (uint8_t)(bit << (c % 8));
            if (deq)
                deq[r * cols + c] = bit ? s : -s;
        }
    }
    return 0;
}
