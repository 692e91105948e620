/* tests/unit/test_cpu_vexp.c: the vector exp of kernels/cpu/vexp.h against glibc's expf, and its
 * row helpers (max, sum of exp, scaled exp) against scalar loops, in every variant this CPU can
 * run (AVX-512, AVX2+FMA, baseline x86-64): within 2 ulp where expf is normal, 0 below, +inf
 * above, NaN kept; every row length's tail. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "check.h"
#include "../../kernels/cpu/vexp.h"

struct job {
    const float *x;      /* inputs */
    float *y;            /* cpu_vexp8 of each, or the row results */
    int64_t n;
    float shift, scale;
    double sum;
    float max;
};

/* y[i] = exp(x[i]) through cpu_vexp8, eight at a time (n a multiple of 8) */
static inline __attribute__((always_inline)) void exp_body(void *arg, int64_t b, int64_t e, int t)
{
    (void)b, (void)e, (void)t;
    struct job *j = arg;
    for (int64_t i = 0; i < j->n; i += 8) {
        cpu_v8f v;
        memcpy(&v, j->x + i, sizeof v);
        v = cpu_vexp8(v);
        memcpy(j->y + i, &v, sizeof v);
    }
}
CPU_RANGE_VARIANTS(exp_fn, exp_body)

static inline __attribute__((always_inline)) void row_body(void *arg, int64_t b, int64_t e, int t)
{
    (void)b, (void)e, (void)t;
    struct job *j = arg;
    j->max = cpu_row_max(j->x, j->n);
    j->sum = cpu_row_sum_exp(j->x, j->n, j->shift);
    memcpy(j->y, j->x, (size_t)j->n * sizeof *j->y);
    cpu_row_scaled_exp(j->y, j->n, j->shift, j->scale);
}
CPU_RANGE_VARIANTS(row_fn, row_body)

static int64_t ulps(float a, float b)
{
    int32_t ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    if (ia < 0)
        ia = INT32_MIN - ia;
    if (ib < 0)
        ib = INT32_MIN - ib;
    return llabs((long long)ia - ib);
}

static void check_variant(const char *name, ftk_range_fn expf8, ftk_range_fn row)
{
    char title[160];
    snprintf(title, sizeof title, "%s: exp within 2 ulp of expf on [-87.3, 88.7]; 0, inf and NaN outside", name);
    TEST(title) {
        enum { N = 1 << 20 };
        float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);
        for (int i = 0; i < N - 16; i++)
            x[i] = -87.3f + (88.7f + 87.3f) * (float)i / (float)(N - 17);
        const float edge[16] = {0.0f, -0.0f, 1e-30f, -1e-30f, -87.4f, -100.0f, -INFINITY, 88.8f,
                                1000.0f, INFINITY, NAN, 0.693359375f, -0.34657359f, 0.34657359f, 88.72f, -87.33f};
        memcpy(x + N - 16, edge, sizeof edge);
        struct job j = {.x = x, .y = y, .n = N};
        expf8(&j, 0, 1, 0);
        int64_t worst = 0;
        float at = 0;
        for (int i = 0; i < N - 16; i++) {
            int64_t u = ulps(y[i], expf(x[i]));
            if (u > worst) {
                worst = u;
                at = x[i];
            }
        }
        printf("  worst %lld ulp at x = %.9g\n", (long long)worst, at);
        CHECK(worst <= 2);
        CHECK(y[N - 16] == 1.0f && y[N - 15] == 1.0f && y[N - 14] == 1.0f && y[N - 13] == 1.0f);
        CHECK(y[N - 12] == 0.0f && y[N - 11] == 0.0f && y[N - 10] == 0.0f);
        CHECK(isinf(y[N - 9]) && isinf(y[N - 8]) && isinf(y[N - 7]));
        CHECK(isnan(y[N - 6]));
        for (int i = N - 5; i < N; i++)
            CHECK(ulps(y[i], expf(x[i])) <= 2);
        free(x);
        free(y);
    }
    snprintf(title, sizeof title, "%s: every float within 256 of the clamp edges: 2 ulp where expf is finite and normal, "
             "else its inf or 0", name);
    TEST(title) {
        /* expf is finite up to 88.7228317f (the next float overflows) and normal down to -87.3365402f */
        float x[2 * 512], y[2 * 512];
        float a = 88.7228317f, b = -87.3365402f;
        for (int i = 0; i < 256; i++) {
            a = nextafterf(a, 0.0f);
            b = nextafterf(b, 0.0f);
        }
        for (int i = 0; i < 512; i++, a = nextafterf(a, 100.0f), b = nextafterf(b, -100.0f)) {
            x[i] = a;
            x[512 + i] = b;
        }
        struct job j = {.x = x, .y = y, .n = 2 * 512};
        expf8(&j, 0, 1, 0);
        int bad = 0;
        for (int i = 0; i < 2 * 512; i++) {
            float want = expf(x[i]);
            int ok = isinf(want) ? isinf(y[i]) : want < 0x1p-126f ? y[i] == 0.0f : ulps(y[i], want) <= 2;
            if (!ok && bad++ < 4)
                printf("  x = %.9g: %.9g, expf %.9g\n", x[i], y[i], want);
        }
        CHECK_INT(bad, 0);
    }
    snprintf(title, sizeof title, "%s: row max, sum of exp and scaled exp equal scalar loops for every tail", name);
    TEST(title) {
        static float x[32000 + 1], y[32000 + 1];
        uint32_t s = 12345;
        for (int i = 0; i < 32001; i++) {
            s = s * 1664525u + 1013904223u;
            x[i] = (float)(s >> 8) / (float)(1 << 24) * 40.0f - 20.0f;
        }
        const int64_t lens[] = {0, 1, 5, 7, 8, 9, 15, 16, 17, 31, 100, 32000, 32001};
        int bad = 0;
        for (size_t k = 0; k < sizeof lens / sizeof *lens; k++) {
            int64_t n = lens[k];
            float mx = -INFINITY;
            double sum = 0;
            for (int64_t i = 0; i < n; i++)
                mx = x[i] > mx ? x[i] : mx;
            for (int64_t i = 0; i < n; i++)
                sum += expf(x[i] - 3.0f);
            struct job j = {.x = x, .y = y, .n = n, .shift = 3.0f, .scale = -0.25f};
            y[n < 32001 ? n : 0] = 7.0f;   /* past the row: must stay */
            row(&j, 0, 1, 0);
            bad += j.max != mx;
            bad += fabs(j.sum - sum) > 1e-6 * sum;
            for (int64_t i = 0; i < n; i++)
                bad += ulps(y[i], -0.25f * expf(x[i] - 3.0f)) > 3;
            bad += n < 32001 && y[n] != 7.0f;
        }
        CHECK_INT(bad, 0);
    }
}

int main(void)
{
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512bw"))
        check_variant("AVX-512", exp_fn_avx512, row_fn_avx512);
    else
        printf("skip AVX-512 variant: this CPU lacks it\n");
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        check_variant("AVX2+FMA", exp_fn_avx2, row_fn_avx2);
    else
        printf("skip AVX2 variant: this CPU lacks it\n");
#endif
    check_variant("baseline", exp_fn_base, row_fn_base);
    CHECK(exp_fn() != NULL && row_fn() != NULL);
    return check_summary();
}
