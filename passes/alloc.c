/*
 * alloc.c - the one allocation wrapper.  Every allocation in slimd goes
 * through here so that tests can make the Nth allocation fail
 * (slim_alloc_fail_after) and check that nothing leaks (slim_alloc_live),
 * as curl's memdebug and Redis' zmalloc do.  The counters are atomics so
 * the wrapper costs a couple of relaxed increments on the hot path; large
 * tensor buffers are few, so that is nothing next to their size.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include "passes/slim.h"

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

void slim_free(void *p)
{
    if (p) {
        atomic_fetch_sub_explicit(&live, 1, memory_order_relaxed);
        free(p);
    }
}

void *slim_aligned_alloc(size_t n)
{
    void *p = NULL;
    if (should_fail())
        return NULL;
    if (posix_memalign(&p, 64, n ? n : 64) != 0)
        return NULL;
    atomic_fetch_add_explicit(&live, 1, memory_order_relaxed);
    return p;
}

void slim_aligned_free(void *p)
{
    slim_free(p);
}
