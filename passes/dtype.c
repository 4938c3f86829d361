/*
 * dtype.c - the element types slimd reads and writes, and the float
 * conversions between them.
 *
 * fp16 and bf16 conversions are done in integer arithmetic on the bit
 * patterns, rounding to nearest even, so results do not depend on the
 * compiler's or the CPU's half-precision support (F16C would be faster,
 * but the conversion is never the bottleneck of a job, and one portable
 * path is one path to test).
 */
#include <math.h>
#include <string.h>
#include <time.h>
#include "passes/slim.h"

static const struct {
    const char *name;
    size_t size;
    int is_float;
} dtypes[SLIM_DT_COUNT] = {
    [SLIM_DT_F64] = {"F64", 8, 1},  [SLIM_DT_F32] = {"F32", 4, 1},
    [SLIM_DT_F16] = {"F16", 2, 1},  [SLIM_DT_BF16] = {"BF16", 2, 1},
    [SLIM_DT_I64] = {"I64", 8, 0},  [SLIM_DT_I32] = {"I32", 4, 0},
    [SLIM_DT_I16] = {"I16", 2, 0},  [SLIM_DT_I8] = {"I8", 1, 0},
    [SLIM_DT_U8] = {"U8", 1, 0},    [SLIM_DT_BOOL] = {"BOOL", 1, 0},
};

const char *slim_dtype_name(enum slim_dtype dt)
{
    return (unsigned)dt < SLIM_DT_COUNT ? dtypes[dt].name : "?";
}

int slim_dtype_parse(const char *name, enum slim_dtype *out)
{
    for (int i = 0; i < SLIM_DT_COUNT; i++)
        if (strcmp(name, dtypes[i].name) == 0) {
            *out = (enum slim_dtype)i;
            return 0;
        }
    return SLIM_EFORMAT;
}

size_t slim_dtype_size(enum slim_dtype dt)
{
    return (unsigned)dt < SLIM_DT_COUNT ? dtypes[dt].size : 0;
}

int slim_dtype_is_float(enum slim_dtype dt)
{
    return (unsigned)dt < SLIM_DT_COUNT && dtypes[dt].is_float;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t slim_f32_to_f16(float f)
{
    uint32_t x = f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t exp = (x >> 23) & 0xffu;
    uint32_t man = x & 0x7fffffu;

    if (exp == 0xff) /* Inf or NaN (NaN kept quiet and non-zero) */
        return (uint16_t)(sign | 0x7c00u | (man ? 0x200u | (man >> 13) : 0));
    int e = (int)exp - 127 + 15;
    if (e >= 31)
        return (uint16_t)(sign | 0x7c00u);
    if (e <= 0) {
        /* Subnormal half (or zero): shift the full significand right. */
        if (e < -10)
            return (uint16_t)sign;
        man |= 0x800000u;
        int shift = 14 - e;
        uint32_t half = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1)))
            half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = ((uint32_t)e << 10) | (man >> 13);
    uint32_t rem = man & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (half & 1)))
        half++; /* may carry into the exponent, up to Inf: correct */
    return (uint16_t)(sign | half);
}

float slim_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;

    if (exp == 0x1f)
        return bits_f32(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        if (man == 0)
            return bits_f32(sign);
        float v = ldexpf((float)man, -24);
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp - 15 + 127) << 23) | (man << 13));
}

uint16_t slim_f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40u); /* quiet NaN */
    uint32_t lsb = (x >> 16) & 1u;
    x += 0x7fffu + lsb;
    return (uint16_t)(x >> 16);
}

float slim_bf16_to_f32(uint16_t h)
{
    return bits_f32((uint32_t)h << 16);
}

int slim_to_f32(enum slim_dtype dt, const void *src, size_t n, float *dst)
{
    const unsigned char *p = src;
    switch (dt) {
    case SLIM_DT_F32:
        memcpy(dst, src, n * 4);
        return 0;
    case SLIM_DT_F64:
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            dst[i] = (float)d;
        }
        return 0;
    case SLIM_DT_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = slim_f16_to_f32(h);
        }
        return 0;
    case SLIM_DT_BF16:
        /* bf16 is the top half of a float: a shift, which vectorises */
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            uint32_t u;
            memcpy(&h, p + 2 * i, 2);
            u = (uint32_t)h << 16;
            memcpy(&dst[i], &u, 4);
        }
        return 0;
    default:
        return SLIM_EINVAL;
    }
}

int64_t slim_tensor_numel(const struct slim_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

json_t *slim_shape_json(const struct slim_tensor *t)
{
    json_t *a = json_array();
    for (int i = 0; a && i < t->ndim; i++)
        json_array_append_new(a, json_integer(t->shape[i]));
    return a;
}

double slim_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}
