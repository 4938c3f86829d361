/*
 * alloc.c - the one allocation wrapper.  Every allocation in slimd goes
 * through here so that tests can make the Nth allocation fail
 * (slim_alloc_fail_after) and check that nothing leaks (slim_alloc_live),
 * as curl's memdebug and Redis' zmalloc do.  The counters are atomics so
 * the wrapper costs a couple of relaxed increments on the hot path; large
 * tensor buffers are few, so that is nothing next to their size.
 *
 * Large buffers (slim_aligned_alloc of LARGE_MIN bytes or more: tensors,
 * codes, kernel scratch) are mmap'd on a 2 MiB boundary with
 * MADV_HUGEPAGE and, when freed, kept in a small cache for the next
 * request of a similar size.  Why: the pipeline streams one tensor at a
 * time, and each tensor asks for buffers of about the sizes the previous
 * one freed.  glibc returns such blocks to the kernel (they are above its
 * mmap threshold), so every tensor paid first-touch page faults again:
 * measured 17-32 us per 4 KiB page on this project's virtual machines,
 * three quarters of a whole int8 job.  A reused block is already mapped;
 * a new one faults in 2 MiB pages.  The cache holds at most
 * CACHE_MAX_BYTES and is emptied by slim_alloc_trim() (the pipeline calls
 * it when a job ends), so an idle daemon gives the memory back.
 * Rejected: mallopt(M_MMAP_THRESHOLD) (process-wide, and glibc's
 * per-thread arenas still mmap anything above 32 MiB), and a per-job
 * arena handed through every kernel (the kernels allocate their own
 * scratch; one wrapper serves them all).  Under AddressSanitizer the
 * blocks and their cache are off and every buffer comes from
 * posix_memalign: a mapping rounded up to 2 MiB has no redzone, and a
 * reused block would hide a use after free.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include "passes/slim.h"

/* gcc says __SANITIZE_ADDRESS__, clang __has_feature(address_sanitizer) */
#if !defined(SLIM_ASAN) && defined(__SANITIZE_ADDRESS__)
#define SLIM_ASAN 1
#endif
#if !defined(SLIM_ASAN) && defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SLIM_ASAN 1
#endif
#endif
#ifndef SLIM_ASAN
#define SLIM_ASAN 0
#endif

static atomic_long fail_after = -1;
static atomic_long live;

static int should_fail(void)
{
    long n = atomic_load_explicit(&fail_after, memory_order_relaxed);
    if (n < 0)
        return 0;
    if (n == 0)
        return 1;
    atomic_fetch_sub_explicit(&fail_after, 1, memory_order_relaxed);
    return 0;
}

void slim_alloc_fail_after(long n)
{
    atomic_store(&fail_after, n);
}

long slim_alloc_live(void)
{
    return atomic_load(&live);
}

void *slim_malloc(size_t n)
{
    void *p;
    if (should_fail())
        return NULL;
    p = malloc(n ? n : 1);
    if (p)
        atomic_fetch_add_explicit(&live, 1, memory_order_relaxed);
    return p;
}

void *slim_calloc(size_t n, size_t size)
{
    void *p;
    if (should_fail())
        return NULL;
    p = calloc(n ? n : 1, size ? size : 1);
    if (p)
        atomic_fetch_add_explicit(&live, 1, memory_order_relaxed);
    return p;
}

void *slim_realloc(void *p, size_t n)
{
    void *q;
    if (!p)
        return slim_malloc(n);
    if (should_fail())
        return NULL;
    q = realloc(p, n ? n : 1);
    return q;
}

char *slim_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = slim_malloc(n);
    if (p)
        memcpy(p, s, n);
    return p;
}


/* ---- large blocks --------------------------------------------------- */

#define LARGE_MIN ((size_t)1 << 20)
#define HUGE_PAGE ((size_t)2 << 20)
#define BLOCK_HEAD 64            /* user pointer = base + 64: 64-byte aligned */
#define MAX_LARGE 512            /* live large blocks tracked; beyond: posix_memalign */
#define CACHE_SLOTS 32
#define CACHE_MAX_BYTES ((size_t)1 << 30)

struct block {
    char *base;                  /* 2 MiB aligned mapping */
    size_t len;                  /* mapping length, a multiple of HUGE_PAGE */
};

static pthread_mutex_t large_lock = PTHREAD_MUTEX_INITIALIZER;
static struct block live_blocks[MAX_LARGE];   /* base NULL: free slot */
static struct block cache[CACHE_SLOTS];
static size_t n_cache, cache_bytes;

/* A fresh 2 MiB-aligned mapping of len bytes (len a multiple of
 * HUGE_PAGE), or NULL. */
static char *map_block(size_t len)
{
    char *m = mmap(NULL, len + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    uintptr_t a;
    if (m == MAP_FAILED)
        return NULL;
    a = ((uintptr_t)m + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1);
    if (a > (uintptr_t)m)
        munmap(m, a - (uintptr_t)m);
    if ((uintptr_t)m + HUGE_PAGE > a)
        munmap((char *)a + len, (uintptr_t)m + HUGE_PAGE - a);
#if defined(MADV_HUGEPAGE)
    (void)madvise((char *)a, len, MADV_HUGEPAGE);
#endif
    return (char *)a;
}

/* Takes the best-fitting cached block for len (no more than twice as
 * large plus a page, so a small request does not pin a big block).
 * Caller holds large_lock. */
static int cache_take(size_t len, struct block *out)
{
    size_t best = n_cache;
    for (size_t i = 0; i < n_cache; i++)
        if (cache[i].len >= len && cache[i].len <= 2 * len + HUGE_PAGE &&
            (best == n_cache || cache[i].len < cache[best].len))
            best = i;
    if (best == n_cache)
        return 0;
    *out = cache[best];
    cache_bytes -= cache[best].len;
    cache[best] = cache[--n_cache];
    return 1;
}

static void *large_alloc(size_t n)
{
    size_t len = (n + BLOCK_HEAD + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
    struct block b = {NULL, 0};
    size_t slot;
    pthread_mutex_lock(&large_lock);
    for (slot = 0; slot < MAX_LARGE && live_blocks[slot].base; slot++)
        ;
    if (slot == MAX_LARGE) {
        pthread_mutex_unlock(&large_lock);
        return NULL;            /* caller falls back to posix_memalign */
    }
    if (!cache_take(len, &b)) {
        b.len = len;
        b.base = map_block(len);
    }
    if (b.base)
        live_blocks[slot] = b;
    pthread_mutex_unlock(&large_lock);
    return b.base ? b.base + BLOCK_HEAD : NULL;
}

/* 1 if p was a large block (now freed or cached), 0 if it is not one. */
static int large_free(void *p)
{
    char *base = (char *)p - BLOCK_HEAD;
    struct block b = {NULL, 0};
    if (((uintptr_t)base & (HUGE_PAGE - 1)) != 0)
        return 0;
    pthread_mutex_lock(&large_lock);
    for (size_t i = 0; i < MAX_LARGE; i++)
        if (live_blocks[i].base == base) {
            b = live_blocks[i];
            live_blocks[i].base = NULL;
            break;
        }
    if (b.base && n_cache < CACHE_SLOTS && cache_bytes + b.len <= CACHE_MAX_BYTES) {
        cache[n_cache++] = b;
        cache_bytes += b.len;
        b.base = NULL;
    }
    pthread_mutex_unlock(&large_lock);
    if (b.base)
        munmap(b.base, b.len);
    return b.len != 0;
}

void slim_alloc_trim(void)
{
    struct block drop[CACHE_SLOTS];
    size_t n;
    pthread_mutex_lock(&large_lock);
    n = n_cache;
    memcpy(drop, cache, n * sizeof *drop);
    n_cache = 0;
    cache_bytes = 0;
    pthread_mutex_unlock(&large_lock);
    for (size_t i = 0; i < n; i++)
        munmap(drop[i].base, drop[i].len);
}

void *slim_aligned_alloc(size_t n)
{
    void *p = NULL;
    if (should_fail())
        return NULL;
    if (n >= LARGE_MIN && !SLIM_ASAN)
        p = large_alloc(n);
    if (!p && posix_memalign(&p, 64, n ? n : 64) != 0)
        return NULL;
    atomic_fetch_add_explicit(&live, 1, memory_order_relaxed);
    return p;
}

/* Frees what any of the allocators above returned: large blocks are
 * found by their alignment and the registry, the rest go to free(). */
void slim_free(void *p)
{
    if (!p)
        return;
    atomic_fetch_sub_explicit(&live, 1, memory_order_relaxed);
    if (!large_free(p))
        free(p);
}

void slim_aligned_free(void *p)
{
    slim_free(p);
}
