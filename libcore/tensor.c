/* libcore/tensor.c: dtypes, shapes, owned tensors and float conversions (ftk/tensor.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "ftk/tensor.h"

static const struct { const char *name; size_t size; } dtypes[FTK_DTYPE_COUNT] = {
    [FTK_DTYPE_F32] = {"F32", 4},  [FTK_DTYPE_BF16] = {"BF16", 2}, [FTK_DTYPE_F16] = {"F16", 2},
    [FTK_DTYPE_I32] = {"I32", 4},  [FTK_DTYPE_I64] = {"I64", 8},   [FTK_DTYPE_U8] = {"U8", 1},
    [FTK_DTYPE_I8] = {"I8", 1},    [FTK_DTYPE_F64] = {"F64", 8},   [FTK_DTYPE_I16] = {"I16", 2},
    [FTK_DTYPE_U16] = {"U16", 2},  [FTK_DTYPE_U32] = {"U32", 4},   [FTK_DTYPE_U64] = {"U64", 8},
    [FTK_DTYPE_BOOL] = {"BOOL", 1},
};

size_t ftk_dtype_size(enum ftk_dtype dt)
{
    return (unsigned)dt < FTK_DTYPE_COUNT ? dtypes[dt].size : 0;
}

const char *ftk_dtype_name(enum ftk_dtype dt)
{
    return (unsigned)dt < FTK_DTYPE_COUNT ? dtypes[dt].name : "?";
}

ftk_status ftk_dtype_parse(const char *name, enum ftk_dtype *out)
{
    for (int i = 0; i < FTK_DTYPE_COUNT; i++)
        if (strcmp(name, dtypes[i].name) == 0) {
            *out = (enum ftk_dtype)i;
            return FTK_OK;
        }
    FTK_FAIL(FTK_E_FORMAT, "unknown dtype \"%.40s\"", name);
}

int64_t ftk_shape_numel(int ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return -1;
        if (shape[i] != 0 && n > INT64_MAX / shape[i])
            return -1;
        n *= shape[i];
    }
    return n;
}

ftk_status ftk_tensor_alloc(struct ftk_tensor *t, enum ftk_dtype dt, int ndim, const int64_t *shape)
{
    memset(t, 0, sizeof *t);
    FTK_FAIL_IF(ndim < 0 || ndim > FTK_MAX_DIMS, FTK_E_INVALID, "tensor rank %d out of range 0..%d", ndim, FTK_MAX_DIMS);
    int64_t n = ftk_shape_numel(ndim, shape);
    FTK_FAIL_IF(n < 0, FTK_E_INVALID, "invalid tensor shape");
    FTK_FAIL_IF((uint64_t)n > SIZE_MAX / 8, FTK_E_NOMEM, "tensor of %lld elements is too large", (long long)n);
    t->dtype = dt;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    t->nbytes = (size_t)n * ftk_dtype_size(dt);
    t->data = calloc(1, t->nbytes ? t->nbytes : 1);
    FTK_FAIL_IF(!t->data, FTK_E_NOMEM, "out of memory allocating %zu bytes", t->nbytes);
    t->owned = 1;
    return FTK_OK;
}

void ftk_tensor_free(struct ftk_tensor *t)
{
    if (!t)
        return;
    if (t->owned)
        free(t->data);
    memset(t, 0, sizeof *t);
}

float ftk_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t ftk_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)      /* NaN: keep it a (quiet) NaN */
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1);           /* round to nearest even */
    return (uint16_t)(u >> 16);
}

float ftk_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else {                              /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            u = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t ftk_f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000;
    int32_t exp = (int32_t)((u >> 23) & 0xff) - 127 + 15;
    uint32_t man = u & 0x7fffff;
    if (((u >> 23) & 0xff) == 0xff)
        return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    if (exp >= 31)
        return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {                           /* subnormal or zero */
        if (exp < -10)
            return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = 1u << (shift - 1), rest = man & ((1u << shift) - 1);
        uint32_t r = man >> shift;
        if (rest > half || (rest == half && (r & 1)))
            r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ((uint32_t)exp << 10) | (man >> 13), rest = man & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (r & 1)))
        r++;                                  /* may carry into the exponent: correct */
    return (uint16_t)(sign | r);
}

ftk_status ftk_convert_to_f32(float *dst, const void *src, enum ftk_dtype dt, size_t n)
{
    switch (dt) {
    case FTK_DTYPE_F32: memcpy(dst, src, n * 4); return FTK_OK;
    case FTK_DTYPE_BF16: { const uint16_t *s = src; for (size_t i = 0; i < n; i++) dst[i] = ftk_bf16_to_f32(s[i]); return FTK_OK; }
    case FTK_DTYPE_F16: { const uint16_t *s = src; for (size_t i = 0; i < n; i++) dst[i] = ftk_f16_to_f32(s[i]); return FTK_OK; }
    case FTK_DTYPE_F64: { const double *s = src; for (size_t i = 0; i < n; i++) dst[i] = (float)s[i]; return FTK_OK; }
    default: FTK_FAIL(FTK_E_UNSUPPORTED, "cannot convert dtype %s to F32", ftk_dtype_name(dt));
    }
}

ftk_status ftk_convert_from_f32(void *dst, enum ftk_dtype dt, const float *src, size_t n)
{
    switch (dt) {
    case FTK_DTYPE_F32: memcpy(dst, src, n * 4); return FTK_OK;
    case FTK_DTYPE_BF16: { uint16_t *d = dst; for (size_t i = 0; i < n; i++) d[i] = ftk_f32_to_bf16(src[i]); return FTK_OK; }
    case FTK_DTYPE_F16: { uint16_t *d = dst; for (size_t i = 0; i < n; i++) d[i] = ftk_f32_to_f16(src[i]); return FTK_OK; }
    case FTK_DTYPE_F64: { double *d = dst; for (size_t i = 0; i < n; i++) d[i] = src[i]; return FTK_OK; }
    default: FTK_FAIL(FTK_E_UNSUPPORTED, "cannot convert F32 to dtype %s", ftk_dtype_name(dt));
    }
}
