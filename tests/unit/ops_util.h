/* tests/unit/ops_util.h: helpers shared by the op tests (test_ops_*.c), included after check.h.
 *
 * The pattern of every op test: random F32 inputs; a naive reference forward written in the test
 * in f64 on the same values; the op's forward compared with it; the loss L = sum(gout * out)
 * with random gout; the op's backward compared with f64 central finite differences of the
 * reference L. Errors are measured as max|got - want| / max(max|want|, 1e-6) over the tensor
 * (an NMSE-like scale-free norm; per-element relative error is meaningless near zero). */
#ifndef FTK_TEST_OPS_UTIL_H
#define FTK_TEST_OPS_UTIL_H

#include <stdint.h>
#include <stdlib.h>
#include <cjson/cJSON.h>
#include "ftk/backend.h"

/* xorshift64*: reproducible inputs without libc's rand state */
static uint64_t ops_rng_ = 0x9E3779B97F4A7C15ull;
static inline void ops_seed(uint64_t s) { ops_rng_ = s ? s : 1; }
static inline double ops_uniform(void)   /* [0,1) */
{
    ops_rng_ ^= ops_rng_ >> 12;
    ops_rng_ ^= ops_rng_ << 25;
    ops_rng_ ^= ops_rng_ >> 27;
    return (double)((ops_rng_ * 2685821657736338717ull) >> 11) * (1.0 / 9007199254740992.0);
}
static inline void ops_fill(float *x, int64_t n, double lo, double hi)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)(lo + (hi - lo) * ops_uniform());
}
static inline float *ops_rand(int64_t n, double lo, double hi)
{
    float *x = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    ops_fill(x, n, lo, hi);
    return x;
}
static inline float *ops_zeros(int64_t n) { return calloc((size_t)(n > 0 ? n : 1), sizeof(float)); }
static inline double *ops_to_f64(const float *x, int64_t n)
{
    double *d = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    for (int64_t i = 0; i < n; i++)
        d[i] = x[i];
    return d;
}

/* max|a-b| / max(max|b|, 1e-6); *worst gets the index of the largest difference */
static inline double ops_err(const float *a, const double *b, int64_t n, int64_t *worst)
{
    double md = 0, mb = 0;
    int64_t w = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= md)) { md = d; w = i; }   /* NaN counts as worst */
        if (fabs(b[i]) > mb) mb = fabs(b[i]);
    }
    if (worst) *worst = w;
    return md / (mb > 1e-6 ? mb : 1e-6);
}

/* CHECK that a (F32, from the op) matches b (f64, from the reference) within tol. */
#define CHECK_CLOSE(what, a, b, n, tol) do { int64_t w_; double e_ = ops_err((a), (b), (n), &w_); \
    if (!(e_ <= (tol))) CHECK_FAIL_("%s: error %.3g > %.3g, worst [%lld] = %.9g, expected %.9g", \
        (what), e_, (double)(tol), (long long)w_, (double)(a)[w_], (double)(b)[w_]); } while (0)

/* f64 central differences: g[j] = (L(x + h e_j) - L(x - h e_j)) / 2h for j < n, where L reads x. */
typedef double (*ops_loss_fn)(void *arg);
static inline void ops_fd_grad(ops_loss_fn L, void *arg, double *x, int64_t n, double *g, double h)
{
    for (int64_t j = 0; j < n; j++) {
        double s = x[j];
        x[j] = s + h;
        double lp = L(arg);
        x[j] = s - h;
        double lm = L(arg);
        x[j] = s;
        g[j] = (lp - lm) / (2 * h);
    }
}

/* A fixture file parsed (NULL if missing or malformed); cJSON_Delete it. */
static inline cJSON *ops_json(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    size_t got = fread(s, 1, (size_t)n, f);
    s[got] = 0;
    fclose(f);
    cJSON *j = cJSON_Parse(s);
    free(s);
    return j;
}
/* Number array o[key] into f (float) or i (int32), at most cap; returns the array's length. */
static inline int64_t ops_jarr(const cJSON *o, const char *key, float *f, int32_t *i, int64_t cap)
{
    const cJSON *e;
    int64_t n = 0;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(o, key)) {
        if (n < cap) {
            if (f) f[n] = (float)cJSON_GetNumberValue(e);
            if (i) i[n] = (int32_t)cJSON_GetNumberValue(e);
        }
        n++;
    }
    return n;
}
static inline double ops_jnum(const cJSON *o, const char *key)
{
    return cJSON_GetNumberValue(cJSON_GetObjectItem(o, key));
}

/* The CPU backend and a context with `threads` threads. */
static inline void *ops_ctx(const struct ftk_backend **be, int threads)
{
    *be = ftk_backend_cpu();
    struct ftk_backend_opts o = { .struct_size = sizeof o, .threads = threads };
    void *ctx = NULL;
    if ((*be)->create(&o, &ctx) != FTK_OK) {
        printf("cannot create the cpu backend: %s\n", ftk_last_error());
        exit(1);
    }
    return ctx;
}

/* Step size and tolerance for finite differences of an f64 reference: the truncation error is
 * O(h^2) ~ 1e-10, rounding ~1e-16/h ~ 1e-11; what remains is the op's F32 arithmetic (~1e-6
 * relative on these small sizes; 1e-4 leaves room for sums over a few hundred terms). */
#define OPS_FD_H 1e-5
#define OPS_GRAD_TOL 1e-4
#define OPS_FWD_TOL 1e-5

#endif
