/*
 * test_entropy.c - the entropy coder of passes/kernels/entropy.c: exact
 * round trips on random and adversarial inputs (all zeros, nothing
 * stored, one symbol, all 256 symbols, gaps far past the escape, a
 * skewed alphabet that forces the 15-bit length limit, raw values),
 * sizes close to the entropy bound, and every truncation and many
 * corruptions of a stream refused with SLIM_EFORMAT (or decoded to
 * something in range), never a crash.
 */
#include <math.h>
#include "tests/unit/util.h"
#include "passes/kernels/kernels.h"

static uint64_t rng = 0x12345678abcdefull;

static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

/* Encodes, decodes and compares; returns the stream's size. */
static size_t roundtrip(uint64_t n, const uint8_t *keep, const uint8_t *codes, int bits,
                        const void *values, int vb)
{
    struct slim_entropy_in in = {n, keep, codes, bits, values, vb};
    struct slim_entropy_info info;
    struct slim_error err;
    uint8_t *buf = NULL, *got_codes;
    uint64_t *pos, m = 0;
    size_t len = 0;

    assert_int_equal(slim_entropy_encode(&in, &buf, &len, &err), 0);
    assert_int_equal(slim_entropy_header(buf, len, &info, &err), 0);
    for (uint64_t i = 0; i < n; i++)
        m += !keep || (keep[i / 8] >> (i % 8) & 1);
    assert_int_equal(info.n, n);
    assert_int_equal(info.m, m);
    pos = malloc((m + 1) * sizeof *pos);
    got_codes = malloc(m + 1);
    assert_int_equal(slim_entropy_decode(buf, len, &info, pos, got_codes, &err), 0);
    for (uint64_t i = 0, k = 0; i < n; i++) {
        if (keep && !(keep[i / 8] >> (i % 8) & 1))
            continue;
        assert_int_equal(pos[k], i);
        if (bits)
            assert_int_equal(got_codes[k], codes[k] & ((1 << bits) - 1));
        k++;
    }
    if (!bits && m)
        assert_memory_equal(buf + info.values_at, values, m * (size_t)vb);
    free(pos);
    free(got_codes);
    slim_aligned_free(buf);
    return len;
}

static void test_random(void **state)
{
    (void)state;
    const int bitss[] = {1, 2, 4, 8};
    for (int b = 0; b < 4; b++) {
        for (int trial = 0; trial < 4; trial++) {
            uint64_t n = 1 + rnd() % 20000, m;
            double p = (trial + 1) / 5.0;
            uint8_t *keep = calloc(n / 8 + 1, 1), *codes = malloc(n);
            m = 0;
            for (uint64_t i = 0; i < n; i++)
                if (rnd() % 1000 < p * 1000) {
                    keep[i / 8] |= (uint8_t)(1 << (i % 8));
                    codes[m++] = (uint8_t)(rnd() % 7 == 0 ? rnd() : rnd() % 3);
                }
            roundtrip(n, keep, codes, bitss[b], NULL, 0);
            /* dense: every position stored */
            for (uint64_t i = 0; i < n; i++)
                codes[i] = (uint8_t)rnd();
            roundtrip(n, NULL, codes, bitss[b], NULL, 0);
            free(keep);
            free(codes);
        }
    }
}

static void test_adversarial(void **state)
{
    (void)state;
    uint64_t n = 100000;
    uint8_t *keep = calloc(n / 8 + 1, 1), *codes = calloc(n, 1);
    float *vals = calloc(n, sizeof *vals);
    /* nothing stored, all zeros: a few bytes */
    assert_true(roundtrip(n, keep, codes, 4, NULL, 0) < 32);
    assert_true(roundtrip(n, keep, NULL, 0, vals, 4) < 32);
    assert_true(roundtrip(0, NULL, codes, 8, NULL, 0) < 200);
    assert_true(roundtrip(0, keep, NULL, 0, vals, 2) < 16);
    /* one symbol everywhere: one bit an element */
    assert_true(roundtrip(n, NULL, codes, 8, NULL, 0) < n / 8 + 200);
    /* 256 symbols, uniform */
    for (uint64_t i = 0; i < n; i++)
        codes[i] = (uint8_t)i;
    assert_true(roundtrip(n, NULL, codes, 8, NULL, 0) <= n + 200);
    /* the first and the last position only: gaps far past any escape */
    keep[0] = 1;
    keep[(n - 1) / 8] |= (uint8_t)(1 << ((n - 1) % 8));
    roundtrip(n, keep, codes, 8, NULL, 0);
    roundtrip(n, keep, NULL, 0, vals, 4);
    /* the last position alone */
    keep[0] = 0;
    roundtrip(n, keep, codes, 1, NULL, 0);
    /* every position but one */
    memset(keep, 0xff, n / 8 + 1);
    keep[5] = 0xfe;
    roundtrip(n, keep, codes, 2, NULL, 0);
    /* Fibonacci-like counts: an unlimited Huffman code would need > 15 bits */
    {
        uint64_t f = 1, g = 1, k = 0;
        for (int s = 0; s < 40 && k < n; s++) {
            for (uint64_t j = 0; j < f && k < n; j++)
                codes[k++] = (uint8_t)s;
            uint64_t h = f + g;
            f = g;
            g = h;
        }
        roundtrip(k, NULL, codes, 8, NULL, 0);
    }
    /* raw values, 2 and 8 bytes */
    for (uint64_t i = 0; i < n; i++)
        vals[i] = (float)i;
    memset(keep, 0, n / 8 + 1);
    for (uint64_t i = 0; i < n; i += 97)
        keep[i / 8] |= (uint8_t)(1 << (i % 8));
    roundtrip(n, keep, NULL, 0, vals, 2);
    roundtrip(n / 2, keep, NULL, 0, vals, 8);
    free(keep);
    free(codes);
    free(vals);
}

/* A 10 % random mask with 16 equally likely codes: close to the bound
 * n H(0.1) + 4 m bits. */
static void test_near_entropy(void **state)
{
    (void)state;
    uint64_t n = 266200, m = 0;
    uint8_t *keep = calloc(n / 8 + 1, 1), *codes = malloc(n);
    double h = -(0.1 * log2(0.1) + 0.9 * log2(0.9)), bound;
    size_t len;
    for (uint64_t i = 0; i < n; i++)
        if (rnd() % 10 == 0) {
            keep[i / 8] |= (uint8_t)(1 << (i % 8));
            codes[m++] = (uint8_t)(rnd() % 16);
        }
    len = roundtrip(n, keep, codes, 4, NULL, 0);
    bound = (n * h + 4.0 * m) / 8;
    print_message("n %llu m %llu: %zu bytes, bound %.0f (%.3f)\n", (unsigned long long)n,
                  (unsigned long long)m, len, bound, len / bound);
    assert_true(len < bound * 1.03);
    free(keep);
    free(codes);
}

/* Every truncation fails cleanly; random byte flips either fail with
 * SLIM_EFORMAT or decode to positions in range. */
static void test_corrupt(void **state)
{
    (void)state;
    uint64_t n = 5000, m = 0;
    uint8_t *keep = calloc(n / 8 + 1, 1), *codes = malloc(n), *buf, *bad;
    struct slim_entropy_in in = {n, keep, codes, 4, NULL, 0};
    struct slim_entropy_info info;
    struct slim_error err;
    uint64_t *pos = malloc(n * sizeof *pos);
    size_t len;
    for (uint64_t i = 0; i < n; i++)
        if (rnd() % 7 == 0) {
            keep[i / 8] |= (uint8_t)(1 << (i % 8));
            codes[m++] = (uint8_t)(rnd() % 16);
        }
    assert_int_equal(slim_entropy_encode(&in, &buf, &len, &err), 0);
    for (size_t cut = 0; cut < len; cut++) {
        int rc = slim_entropy_header(buf, cut, &info, &err);
        if (!rc)
            rc = slim_entropy_decode(buf, cut, &info, NULL, NULL, &err);
        assert_int_equal(rc, SLIM_EFORMAT);
    }
    bad = malloc(len);
    for (int trial = 0; trial < 3000; trial++) {
        memcpy(bad, buf, len);
        for (int f = 0; f < 1 + trial % 3; f++)
            bad[rnd() % len] ^= (uint8_t)(1 + rnd() % 255);
        if (slim_entropy_header(bad, len, &info, &err)) {
            assert_int_equal(err.code, SLIM_EFORMAT);
            continue;
        }
        if (info.n > n)
            continue; /* a caller refuses a stream whose n is not its tensor's */
        int rc = slim_entropy_decode(bad, len, &info, pos, NULL, &err);
        if (rc) {
            assert_int_equal(rc, SLIM_EFORMAT);
            continue;
        }
        for (uint64_t k = 0; k < info.m; k++) {
            assert_true(pos[k] < info.n);
            if (k)
                assert_true(pos[k] > pos[k - 1]);
        }
    }
    /* bad arguments */
    in.code_bits = 3;
    free(bad);
    assert_int_equal(slim_entropy_encode(&in, &bad, &len, &err), SLIM_EINVAL);
    assert_null(bad);
    free(pos);
    free(keep);
    free(codes);
    slim_aligned_free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random),
        cmocka_unit_test(test_adversarial),
        cmocka_unit_test(test_near_entropy),
        cmocka_unit_test(test_corrupt),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
