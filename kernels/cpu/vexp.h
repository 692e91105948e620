/* kernels/cpu/vexp.h: exp over rows of floats, eight at a time, for the softmax-shaped loops of
 * the CPU backend (the log-prob head's logsumexp and softmax). glibc's expf is scalar: on a
 * 32000-token vocabulary those loops were a quarter of a small model's training step.
 *
 * The functions are always inlined, so a range function built by CPU_RANGE_VARIANTS gets them
 * compiled for AVX-512, AVX2+FMA and baseline x86-64, and runs the one the CPU has.
 *
 * cpu_vexp8: exp(x) with the Cephes expf reduction and polynomial (x = n ln2 + r, |r| <= ln2/2,
 * a degree-6 polynomial for e^r, 2^n by the exponent bits): within 2 ulp of expf for
 * x in [-87.3, 88.7]; 0 below (where expf is subnormal), +inf where expf overflows, NaN stays NaN. */
#ifndef FTK_KERNELS_CPU_VEXP_H
#define FTK_KERNELS_CPU_VEXP_H

#include <stdint.h>
#include <string.h>

#include "ftk/threads.h"

/* CPU_RANGE_VARIANTS(name, body): `ftk_range_fn name(void)` returns `body` (an always-inline
 * range function) compiled for the best of AVX-512, AVX2+FMA and baseline x86-64 that the CPU
 * has, by its feature bits (target_clones' arch= would go by the CPU model, which a virtual CPU
 * may not name). Elsewhere it is `body` compiled for the target at hand. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(FTK_NO_CPU_VARIANTS)
#define CPU_RANGE_VARIANTS(name, body)                                                                                       \
    __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma"))) static void name##_avx512(void *a, int64_t b,     \
                                                                                                  int64_t e, int t)       \
    {                                                                                                                        \
        body(a, b, e, t);                                                                                                    \
    }                                                                                                                        \
    __attribute__((target("avx2,fma"))) static void name##_avx2(void *a, int64_t b, int64_t e, int t) { body(a, b, e, t); } \
    static void name##_base(void *a, int64_t b, int64_t e, int t) { body(a, b, e, t); }                                     \
    static ftk_range_fn name(void)                                                                                           \
    {                                                                                                                        \
        __builtin_cpu_init();                                                                                                \
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&                                       \
            __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw"))                                        \
            return name##_avx512;                                                                                            \
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))                                                 \
            return name##_avx2;                                                                                              \
        return name##_base;                                                                                                  \
    }
#else
#define CPU_RANGE_VARIANTS(name, body)                                                                                       \
    static void name##_base(void *a, int64_t b, int64_t e, int t) { body(a, b, e, t); }                                     \
    static ftk_range_fn name(void) { return name##_base; }
#endif

/* The helpers pass 32-byte vectors by value; they are always inlined, so no call crosses an ABI
 * (the Makefile's -Wno-psabi quiets GCC's notes about one without AVX). */
typedef float cpu_v8f __attribute__((vector_size(32)));
typedef int32_t cpu_v8i __attribute__((vector_size(32)));
typedef double cpu_v8d __attribute__((vector_size(64)));

#define CPU_VINLINE static inline __attribute__((always_inline))

CPU_VINLINE cpu_v8f cpu_v8_splat(float x) { return (cpu_v8f){x, x, x, x, x, x, x, x}; }

/* mask ? a : b, lane by lane (C has no ?: on vectors) */
CPU_VINLINE cpu_v8f cpu_v8_select(cpu_v8i mask, cpu_v8f a, cpu_v8f b)
{
    return (cpu_v8f)(((cpu_v8i)a & mask) | ((cpu_v8i)b & ~mask));
}

CPU_VINLINE cpu_v8f cpu_vexp8(cpu_v8f x)
{
    /* the last floats whose expf is finite and normal: 88.7228f sent 88.7228088..88.7228317 to inf */
    const cpu_v8f hi = cpu_v8_splat(88.7228317f), lo = cpu_v8_splat(-87.33654f);
    cpu_v8f xc = cpu_v8_select(x > hi, hi, cpu_v8_select(x < lo, lo, x));
    /* n = round(x / ln2): adding 1.5 * 2^23 rounds to an integer in the low mantissa bits */
    const cpu_v8f shift = cpu_v8_splat(12582912.0f);
    cpu_v8f n = (xc * cpu_v8_splat(1.44269504088896341f) + shift) - shift;
    cpu_v8f r = xc - n * cpu_v8_splat(0.693359375f) - n * cpu_v8_splat(-2.12194440e-4f);   /* Cody-Waite ln2 */
    cpu_v8f p = cpu_v8_splat(1.9875691500e-4f);
    p = p * r + cpu_v8_splat(1.3981999507e-3f);
    p = p * r + cpu_v8_splat(8.3334519073e-3f);
    p = p * r + cpu_v8_splat(4.1665795894e-2f);
    p = p * r + cpu_v8_splat(1.6666665459e-1f);
    p = p * r + cpu_v8_splat(5.0000001201e-1f);
    p = p * (r * r) + r + cpu_v8_splat(1.0f);
    /* 2^n from the exponent bits; n = 128 (x above 88.38) is 2^127 * 2, as 2^128 is no float */
    cpu_v8i top = n > cpu_v8_splat(127.5f);   /* -1 where n = 128 */
    cpu_v8i e = (__builtin_convertvector(n, cpu_v8i) + 127 + top) << 23;
    cpu_v8f y = p * (cpu_v8f)e;
    y = cpu_v8_select(top, y + y, y);
    y = cpu_v8_select(x > hi, cpu_v8_splat(__builtin_inff()), y);
    return cpu_v8_select(x < lo, cpu_v8_splat(0.0f), y);   /* NaN compares false both ways: stays NaN */
}

/* Eight floats from p[0..k), k <= 8, the rest `fill`. */
CPU_VINLINE cpu_v8f cpu_v8_load_tail(const float *p, int64_t k, float fill)
{
    float t[8] = {fill, fill, fill, fill, fill, fill, fill, fill};
    memcpy(t, p, (size_t)k * sizeof *t);
    cpu_v8f v;
    memcpy(&v, t, sizeof v);
    return v;
}

/* max over z[0..n); -inf for n == 0. NaNs are skipped, as `z > m ? z : m` does. */
CPU_VINLINE float cpu_row_max(const float *z, int64_t n)
{
    cpu_v8f m = cpu_v8_splat(-__builtin_inff());
    int64_t v = 0;
    for (; v + 8 <= n; v += 8) {
        cpu_v8f x;
        memcpy(&x, z + v, sizeof x);
        m = cpu_v8_select(x > m, x, m);
    }
    float mx = -__builtin_inff();
    for (int i = 0; i < 8; i++)
        mx = m[i] > mx ? m[i] : mx;
    for (; v < n; v++)
        mx = z[v] > mx ? z[v] : mx;
    return mx;
}

/* sum over v of exp(z[v] - mx), accumulated in double (a float sum over 100k+ terms drifts) */
CPU_VINLINE double cpu_row_sum_exp(const float *z, int64_t n, float mx)
{
    cpu_v8d acc = {0};
    const cpu_v8f m = cpu_v8_splat(mx);
    int64_t v = 0;
    for (; v + 8 <= n; v += 8) {
        cpu_v8f x;
        memcpy(&x, z + v, sizeof x);
        acc += __builtin_convertvector(cpu_vexp8(x - m), cpu_v8d);
    }
    if (v < n)   /* the tail padded with -inf: exp gives 0 */
        acc += __builtin_convertvector(cpu_vexp8(cpu_v8_load_tail(z + v, n - v, -__builtin_inff()) - m), cpu_v8d);
    double s = 0.0;
    for (int i = 0; i < 8; i++)
        s += acc[i];
    return s;
}

/* z[v] = scale * exp(z[v] - shift) for v in [0, n) */
CPU_VINLINE void cpu_row_scaled_exp(float *z, int64_t n, float shift, float scale)
{
    const cpu_v8f sh = cpu_v8_splat(shift), sc = cpu_v8_splat(scale);
    int64_t v = 0;
    for (; v + 8 <= n; v += 8) {
        cpu_v8f x;
        memcpy(&x, z + v, sizeof x);
        x = sc * cpu_vexp8(x - sh);
        memcpy(z + v, &x, sizeof x);
    }
    if (v < n) {
        cpu_v8f x = sc * cpu_vexp8(cpu_v8_load_tail(z + v, n - v, 0.0f) - sh);
        memcpy(z + v, &x, (size_t)(n - v) * sizeof(float));
    }
}

#endif
