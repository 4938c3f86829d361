/*
 * kernels.h - the numerical kernels of the issue-3 weight passes: pruning
 * (prune.c), low rank (lowrank.c), 1-D k-means (cluster.c), int8/int4/
 * ternary/binary packers with MSE calibration (qpack.c).  Plain C over
 * contiguous row-major floats: no tensors, JSON or I/O; libc, pthreads,
 * OpenBLAS and LAPACKE only.
 *
 * Conventions, unless a function says otherwise:
 * - Shapes are element counts; a matrix (rows, cols) is row-major and "the
 *   last dimension" is cols.  Empty inputs are valid and do nothing.
 * - Buffers are borrowed: the caller allocates every output with the size
 *   in its shape comment and keeps ownership.  The exception is struct
 *   slim_svd, whose arrays the kernel allocates (new; slim_svd_release).
 *   Nothing is retained after return.
 * - `threads` caps the threads a kernel uses (the caller's counts); 0
 *   means 1; small inputs use fewer.  Kernels are reentrant.  OpenBLAS's
 *   thread count is process-wide, see lowrank.c.
 * - Errors are values: 0 or a negative enum slim_errno, detail in err (may
 *   be NULL).  NaN input is SLIM_ENUMERIC (quantizers, k-means and SVD
 *   also reject Inf), a bad argument SLIM_EINVAL, no memory SLIM_ENOMEM.
 *   On error in-place kernels leave w unchanged; outputs are unspecified.
 * - Every optimised kernel has a plain, single-threaded `_ref` twin with
 *   the same contract; the unit tests hold the two together.
 * - Kernels that can run for seconds (the SVDs) take a struct slim_poll:
 *   they report their progress through it and stop when it says so.
 */
#ifndef SLIM_KERNELS_H
#define SLIM_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include "passes/slim.h"

/* ---- progress and cancellation ------------------------------------------ */

/* A long kernel calls fn(ud, frac) between steps, with frac the share of
 * its work done (0..1, non-decreasing), often enough that it stops within
 * a few hundred milliseconds on a 4096 x 4096 matrix: when fn returns
 * nonzero the kernel releases what it made and returns SLIM_ECANCELED.
 * fn runs on the kernel's calling thread.  A NULL poll, or a NULL fn,
 * never stops the kernel. */
struct slim_poll {
    int (*fn)(void *ud, double frac);
    void *ud;
};

/* A LAPACK call that cannot stop midway (the bidiagonal SVD of the exact
 * SVD) runs on a helper thread; a canceled kernel returns at once and
 * leaves the helper to finish and free what it holds, detached.  This
 * waits until every detached helper of the process has ended, so that a
 * caller holding resources for the kernel's sake (the memory and CPU a
 * job reserved) can release them when nothing uses them any more.  Any
 * thread.  Defined in lowrank.c. */
void slim_kernel_settle(void);
/* Detached helpers still running; 0 once settled. */
int slim_kernel_detached(void);

/* ---- pruning (prune.c) -------------------------------------------------- */

/* How many of n weights a sparsity s in [0, 1] prunes: round(s * n), half
 * up, clamped to [0, n].  Every unstructured kernel uses this rule. */
size_t slim_prune_count(size_t n, double sparsity);

/* w (n,) in place: the slim_prune_count(n, s) weights of smallest |w|
 * become +0.0 (ties broken by lower index first, so the count is exact).
 * Already-zero weights count among them.  *n_zeroed (may be NULL) gets
 * that count.  Linear time (radix select on |w|'s bit pattern). */
int slim_prune_unstructured(float *w, size_t n, double sparsity, int threads,
                            size_t *n_zeroed, struct slim_error *err);
int slim_prune_unstructured_ref(float *w, size_t n, double sparsity, size_t *n_zeroed,
                                struct slim_error *err);

/* ws[t] (ns[t],) for t < count, in place: as slim_prune_unstructured over
 * the concatenation of all tensors, in the order given (global scope). */
int slim_prune_global(float *const *ws, const size_t *ns, size_t count, double sparsity,
                      int threads, size_t *n_zeroed, struct slim_error *err);
int slim_prune_global_ref(float *const *ws, const size_t *ns, size_t count, double sparsity,
                          size_t *n_zeroed, struct slim_error *err);

/* w (rows, cols) in place: in every run of m consecutive weights of a row
 * the nkeep largest |w| stay and the rest become +0.0; a last partial run
 * of len < m keeps ceil(nkeep * len / m).  Ties keep the lower index.
 * 0 <= nkeep <= m, 1 <= m <= 1024.  *n_zeroed gets the weights pruned. */
int slim_prune_nm(float *w, size_t rows, size_t cols, int nkeep, int m, int threads,
                  size_t *n_zeroed, struct slim_error *err);
int slim_prune_nm_ref(float *w, size_t rows, size_t cols, int nkeep, int m, size_t *n_zeroed,
                      struct slim_error *err);

/* w (rows, cols) in place: the slim_prune_count(rows, s) rows of smallest
 * L2 norm become zero (ties: lower row first).  *rows_zeroed gets that
 * count. */
int slim_prune_rows(float *w, size_t rows, size_t cols, double sparsity, int threads,
                    size_t *rows_zeroed, struct slim_error *err);
int slim_prune_rows_ref(float *w, size_t rows, size_t cols, double sparsity,
                        size_t *rows_zeroed, struct slim_error *err);

/* ---- low rank (lowrank.c) ----------------------------------------------- */

/* A (possibly truncated) SVD W ~ U diag(s) Vt, singular values descending.
 * Arrays come from slim_aligned_alloc and belong to the struct. */
struct slim_svd {
    size_t m, n;   /* W's shape */
    size_t k;      /* triplets held */
    float *u;      /* (m, k) */
    float *s;      /* (k,) */
    float *vt;     /* (k, n) */
    double frob2;  /* ||W||_F^2, summed in double */
};

/* Randomized SVD options; zero-initialised means the defaults. */
enum slim_svd_method {
    SLIM_SVD_KRYLOV = 0, /* randomized block Krylov (default) */
    SLIM_SVD_POWER = 1,  /* subspace iteration with dynamic shifts (dashSVD) */
};
struct slim_svd_opts {
    int method;        /* enum slim_svd_method */
    int iters;         /* Krylov depth q / power iterations; 0: 5 (Krylov), 3 (power) */
    size_t block;      /* block width b; 0: max(3k/8, min(k/2, 32)) rounded up to
                        * a multiple of 8 (Krylov), k + 10 (power) */
    uint64_t seed;     /* Gaussian sketch seed; 0 is a valid seed */
    const struct slim_poll *poll; /* progress and cancellation; NULL: none */
};

/* W (m, n) -> full thin SVD, k = min(m, n), by sgesdd's own steps taken
 * one at a time: bidiagonalisation in panels of 32 columns (sgebrd's
 * loop, with slabrd), the bidiagonal SVD (sbdsdc, on a helper thread that
 * a cancel leaves behind, see slim_kernel_settle), and the back
 * transformations (sormbr) 256 columns at a time, polling between steps.
 * *out is filled (new; release with slim_svd_release) only on success;
 * SLIM_ECANCELED when poll stopped it. */
int slim_svd_exact(const float *w, size_t m, size_t n, int threads, const struct slim_poll *poll,
                   struct slim_svd *out, struct slim_error *err);
/* LAPACKE_sgesdd in one call, one thread: the reference. */
int slim_svd_exact_ref(const float *w, size_t m, size_t n, struct slim_svd *out,
                       struct slim_error *err);
/* W (m, n) -> the leading k triplets, 1 <= k <= min(m, n), by a randomized
 * range finder (opts may be NULL).  Falls back to the exact SVD when the
 * basis would be as wide as min(m, n).  Deterministic for a given seed
 * and thread count. */
int slim_svd_randomized(const float *w, size_t m, size_t n, size_t k,
                        const struct slim_svd_opts *opts, int threads, struct slim_svd *out,
                        struct slim_error *err);
/* Textbook Halko et al. Algorithm 4.4 (power iterations with Householder QR
 * after every product, iters 0: 4), the reference for the fast paths. */
int slim_svd_randomized_ref(const float *w, size_t m, size_t n, size_t k, int iters,
                            uint64_t seed, struct slim_svd *out, struct slim_error *err);
/* W (m, n) -> the smallest SVD whose leading r triplets hold at least
 * `energy` of ||W||_F^2 (sum s_i^2 >= energy * frob2), and that r in *r.
 * Randomized with a doubling k; exact when k would pass min(m, n) / 4.
 * poll may be NULL. */
int slim_svd_for_energy(const float *w, size_t m, size_t n, double energy, int randomized,
                        int threads, const struct slim_poll *poll, struct slim_svd *out,
                        size_t *r, struct slim_error *err);
void slim_svd_release(struct slim_svd *svd);

/* svd -> U_r = U[:, :r] sqrt(s) (m, r) and V_r = sqrt(s) Vt[:r] (r, n), so
 * W ~ U_r V_r with the singular values split evenly.  r <= svd->k. */
void slim_lowrank_factors(const struct slim_svd *svd, size_t r, float *u_r, float *v_r);
/* ||W - U_r V_r||_F / ||W||_F from the singular values alone:
 * sqrt(frob2 - sum_{i<r} s_i^2) / sqrt(frob2) (0 for a zero W).  Exact for
 * both algorithms, because both approximations are orthogonal projections
 * of W, up to the fp32 rounding of s: errors below ~3e-4 read as noise. */
double slim_lowrank_rel_error(const struct slim_svd *svd, size_t r);
/* rank_ratio f -> r = round(f * min(m, n)), at least 1. */
size_t slim_lowrank_rank_for_ratio(size_t m, size_t n, double ratio);
/* Smallest r <= k with sum_{i<r} s_i^2 >= energy * frob2; returns 0 if the
 * k values given do not reach it (the caller needs more triplets). */
size_t slim_lowrank_rank_for_energy(const float *s, size_t k, double frob2, double energy);
/* Largest r whose factors are smaller than W: r * (m + n) < m * n. */
size_t slim_lowrank_max_useful_rank(size_t m, size_t n);

/* ---- 1-D k-means weight sharing (cluster.c) ----------------------------- */

#define SLIM_KMEANS_MAX_K 256

struct slim_kmeans_opts {
    int k;             /* 1..SLIM_KMEANS_MAX_K */
    int keep_zero;     /* exact zeros get a fixed centroid 0.0 of their own */
    int max_iter;      /* Lloyd iterations per start; 0: 100000 */
    int no_dp;         /* never use the optimal DP (tests, benchmarks) */
    double *trace;     /* optional: inertia after each Lloyd iteration of the */
    int trace_cap;     /*   first start (quantile init), up to trace_cap values */
    const struct slim_poll *poll; /* slim_kmeans_1d: polled between phases; NULL: none */
};

struct slim_kmeans_info {
    double inertia;    /* sum (w_i - codebook[idx_i])^2, in double */
    int iterations;    /* Lloyd iterations of the start that won (0 for DP) */
    int k_used;        /* distinct clusters in use (<= k) */
    int exact;         /* 1 when the result is the optimum (DP or <= k values) */
    int trace_len;     /* values written to opts->trace */
};

/* w (n,) -> codebook (k,), ascending, and idx (n,) (may be NULL) with
 * w[i] ~ codebook[idx[i]].  Unused codebook slots (fewer than k distinct
 * values) repeat the largest centroid.  With keep_zero, weights == 0.0
 * map to a codebook entry that is exactly 0.0 and the other k - 1
 * entries fit the non-zero weights.  info may be NULL. */
int slim_kmeans_1d(const float *w, size_t n, const struct slim_kmeans_opts *opts, int threads,
                   float *codebook, uint8_t *idx, struct slim_kmeans_info *info,
                   struct slim_error *err);
/* Plain Lloyd over the unsorted weights, O(n k) per iteration, from the
 * same quantile start: the reference for the sorted-prefix-sum Lloyd. */
int slim_kmeans_1d_ref(const float *w, size_t n, const struct slim_kmeans_opts *opts,
                       float *codebook, uint8_t *idx, struct slim_kmeans_info *info,
                       struct slim_error *err);

/* ---- quantization packers (qpack.c) ------------------------------------- */

/* MSE calibration: with mse_steps > 0 the clipping range of each row or
 * group is shrunk by the factor in {1, ..., SLIM_QCAL_MIN_SHRINK} (mse_steps
 * values, evenly spaced) that minimises the squared error; 0 (or 1) keeps
 * the plain min/max range. */
#define SLIM_QCAL_MIN_SHRINK 0.5f
#define SLIM_QCAL_MAX_STEPS 1000

/* What a quantizer's decoded values cost, summed in double over every
 * weight inside the row loop, while the row is in cache: err2 =
 * sum (ref - deq)^2, ref2 = sum ref^2, nonzero = count of deq != 0, ref
 * being w unless stats->ref says otherwise.  Every
 * quantizer below takes an optional `stats` (NULL: not measured); with
 * stats, deq may still be NULL (the values are made per row in scratch
 * and dropped).  This is the report's measurement, fused so that a job
 * does not read the tensor again to measure it. */
struct slim_qstats {
    double err2, ref2;
    int64_t nonzero;
    /* Input: the values to measure against, laid out as w (the original
     * weights, when w already holds an earlier pass's changes); NULL
     * measures against w. */
    const float *ref;
};

/* ref (n,), hat (n,): adds sum (ref - hat)^2, sum ref^2 and the count of
 * hat != 0 to st (st->ref is not read).  The quantizers call it per row;
 * the report over whole tensors.  Defined in qpack.c. */
void slim_qstats_add(const float *ref, const float *hat, size_t n, struct slim_qstats *st);

/* int8 per output row.  w (rows, cols) -> q (rows, cols), scale (rows,),
 * zp (rows,; NULL allowed when symmetric), deq (rows, cols) = (q - zp) *
 * scale, optional, may alias w.  Symmetric: scale = max|w| / 127, q in
 * [-127, 127], zp 0; asymmetric: [min(w, 0), max(w, 0)] -> [-128, 127],
 * scale = range / 255, zp = rint(-128 - min / scale).  All-zero row:
 * scale 1. */
int slim_q8_rows(const float *w, size_t rows, size_t cols, int symmetric, int mse_steps,
                 int8_t *q, float *scale, int8_t *zp, float *deq, struct slim_qstats *stats,
                 int threads, struct slim_error *err);
int slim_q8_rows_ref(const float *w, size_t rows, size_t cols, int symmetric, int mse_steps,
                     int8_t *q, float *scale, int8_t *zp, float *deq, struct slim_error *err);

/* int4 groups of `group` weights along each row (the last may be partial,
 * ng = ceil(cols / group)).  w (rows, cols) -> packed (rows, ceil(cols/2)),
 * element 2j in the low nibble, an odd row's last high nibble 0;
 * scale (rows, ng); zp (rows, ng) in 0..15; deq as above.  Symmetric:
 * zp 8, scale = max|w| / 7 (so +-max|w| are exact and q in 1..15);
 * asymmetric: [min(w, 0), max(w, 0)] -> [0, 15], scale = range / 15,
 * zp = rint(-min / scale).  All-zero group: scale 1, q = zp. */
int slim_q4_groups(const float *w, size_t rows, size_t cols, size_t group, int symmetric,
                   int mse_steps, uint8_t *packed, float *scale, uint8_t *zp, float *deq,
                   struct slim_qstats *stats, int threads, struct slim_error *err);
int slim_q4_groups_ref(const float *w, size_t rows, size_t cols, size_t group, int symmetric,
                       int mse_steps, uint8_t *packed, float *scale, uint8_t *zp, float *deq,
                       struct slim_error *err);
/* packed (rows, ceil(cols/2)), scale, zp (rows, ng) -> out (rows, cols). */
void slim_q4_dequant(const uint8_t *packed, const float *scale, const uint8_t *zp, size_t rows,
                     size_t cols, size_t group, float *out);

/* Ternary per row (TWN, Li et al. 2016): t = 0.7 mean|w|; |w| > t gives
 * sign(w), else 0; scale = mean |w| over |w| > t (0 if none).  w (rows,
 * cols) -> packed (rows, ceil(cols/4)): 2-bit codes 0 -> 0, 1 -> +1,
 * 2 -> -1, four per byte, low bits first; scale (rows,); deq optional. */
int slim_ternary_rows(const float *w, size_t rows, size_t cols, uint8_t *packed, float *scale,
                      float *deq, struct slim_qstats *stats, int threads,
                      struct slim_error *err);
int slim_ternary_rows_ref(const float *w, size_t rows, size_t cols, uint8_t *packed,
                          float *scale, float *deq, struct slim_error *err);
void slim_ternary_dequant(const uint8_t *packed, const float *scale, size_t rows, size_t cols,
                          float *out);

/* Binary per row (XNOR-Net, Rastegari et al. 2016): scale = mean|w|;
 * bit 1 for w >= 0 (-> +scale), 0 for w < 0 (-> -scale).  w (rows, cols)
 * -> packed (rows, ceil(cols/8)), LSB first; scale (rows,); deq optional.
 * An all-zero row has scale 0 and so decodes to exact zeros. */
int slim_binary_rows(const float *w, size_t rows, size_t cols, uint8_t *packed, float *scale,
                     float *deq, struct slim_qstats *stats, int threads, struct slim_error *err);
int slim_binary_rows_ref(const float *w, size_t rows, size_t cols, uint8_t *packed,
                         float *scale, float *deq, struct slim_error *err);
void slim_binary_dequant(const uint8_t *packed, const float *scale, size_t rows, size_t cols,
                         float *out);

/* ---- threads ------------------------------------------------------------ */

/* The most threads any kernel uses, whatever `threads` says. */
#define SLIM_KERNEL_MAX_THREADS 64

/* Runs fn(ctx, part, nparts) for part = 0..nparts-1, part 0 on the calling
 * thread and the rest on new pthreads, and waits for all.  If a thread
 * cannot be created its part runs on the caller, so this never fails.
 * nparts <= 1 just calls fn(ctx, 0, 1).  Defined in prune.c. */
void slim_kernel_parallel(int nparts, void (*fn)(void *ctx, int part, int nparts), void *ctx);
/* Threads worth using for `work` elements: min(threads, work / 2^16), at
 * least 1, and 0 -> 1. */
int slim_kernel_threads(int threads, size_t work);
/* slim_aligned_alloc(n) for a kernel's large scratch buffer: buffers of
 * 1 MiB and more are mapped 2 MiB-aligned with MADV_HUGEPAGE and reused
 * from a cache (alloc.c), since first-touch page faults cost about 11 us
 * per 4 KB page on the benchmark VM.  Release with slim_aligned_free.
 * Defined in prune.c. */
void *slim_kernel_alloc(size_t n);

/* ---- entropy coding (entropy.c) ------------------------------------------ */

/* The stream's first byte; docs/artifact-format.md has the layout. */
#define SLIM_ENTROPY_VERSION 1

/* What slim_entropy_encode codes: n positions, of which those whose bit
 * is set in keep (n bits, least significant first; NULL: all) are
 * stored; for each stored element, in order, a symbol codes[k] of
 * code_bits (1, 2, 4 or 8), or, with code_bits 0, value_bytes raw bytes
 * at values + k * value_bytes. */
struct slim_entropy_in {
    uint64_t n;
    const uint8_t *keep;
    const uint8_t *codes;
    int code_bits;
    const void *values;
    int value_bytes;
};

/* Encodes in as one stream: gaps and codes Huffman-coded (Han et al.
 * 2016).  *out is new (slim_aligned_free), *out_len its bytes.  0,
 * SLIM_EINVAL or SLIM_ENOMEM. */
int slim_entropy_encode(const struct slim_entropy_in *in, uint8_t **out, size_t *out_len,
                        struct slim_error *err);

/* A stream's header, checked against its length. */
struct slim_entropy_info {
    int code_bits, gap_bits, value_bytes;
    uint64_t n, m;               /* positions; stored elements (m <= n) */
    size_t table_at, stream_at;  /* offsets of the code tables and the bit stream */
    uint64_t stream_bytes;
    size_t values_at;            /* raw values (code_bits 0): m * value_bytes bytes */
};

/* Reads and checks the header of buf[0..len): SLIM_EFORMAT naming the
 * problem for anything malformed or truncated.  The caller checks n
 * against the tensor it expects before sizing anything by m. */
int slim_entropy_header(const uint8_t *buf, size_t len, struct slim_entropy_info *info,
                        struct slim_error *err);
/* Decodes the stream whose header info describes: pos[0..m) the stored
 * positions (increasing, < n) and, with code_bits, codes[0..m) their
 * symbols (either may be NULL).  Bounds-checked throughout; SLIM_EFORMAT
 * on any inconsistency. */
int slim_entropy_decode(const uint8_t *buf, size_t len, const struct slim_entropy_info *info,
                        uint64_t *pos, uint8_t *codes, struct slim_error *err);

#endif
