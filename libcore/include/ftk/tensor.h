/* ftk/tensor.h: dtypes and contiguous tensors.
 *
 * Ownership: a tensor whose `owned` flag is set frees `data` in ftk_tensor_free; a view
 * (owned = 0) points into memory someone else keeps alive (an mmap, a message buffer). */
#ifndef FTK_TENSOR_H
#define FTK_TENSOR_H

#include <stddef.h>
#include <stdint.h>
#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Values are fixed; appended only. Names as safetensors spells them. */
enum ftk_dtype {
    FTK_DTYPE_F32 = 0,
    FTK_DTYPE_BF16 = 1,
    FTK_DTYPE_F16 = 2,
    FTK_DTYPE_I32 = 3,
    FTK_DTYPE_I64 = 4,
    FTK_DTYPE_U8 = 5,
    FTK_DTYPE_I8 = 6,
    FTK_DTYPE_F64 = 7,
    FTK_DTYPE_I16 = 8,
    FTK_DTYPE_U16 = 9,
    FTK_DTYPE_U32 = 10,
    FTK_DTYPE_U64 = 11,
    FTK_DTYPE_BOOL = 12,
    FTK_DTYPE_COUNT
};

#define FTK_MAX_DIMS 8

struct ftk_tensor {
    enum ftk_dtype dtype;
    int ndim;
    int64_t shape[FTK_MAX_DIMS];
    void *data;      /* contiguous, row-major */
    size_t nbytes;   /* numel * dtype size */
    int owned;       /* 1: data is malloc'd and freed with the tensor */
};

FTK_API size_t ftk_dtype_size(enum ftk_dtype dt);
FTK_API const char *ftk_dtype_name(enum ftk_dtype dt);
/* Parses a safetensors dtype name ("F32", "BF16", ...). FTK_E_FORMAT if unknown. */
FTK_API ftk_status ftk_dtype_parse(const char *name, enum ftk_dtype *out);

/* numel of a shape; -1 if a dimension is negative or the product overflows int64. */
FTK_API int64_t ftk_shape_numel(int ndim, const int64_t *shape);
static inline int64_t ftk_tensor_numel(const struct ftk_tensor *t) { return ftk_shape_numel(t->ndim, t->shape); }

/* Allocates a zeroed owned tensor. */
FTK_API ftk_status ftk_tensor_alloc(struct ftk_tensor *t, enum ftk_dtype dt, int ndim, const int64_t *shape);
FTK_API void ftk_tensor_free(struct ftk_tensor *t);

/* Scalar conversions used by readers of BF16/F16 weights. */
FTK_API float ftk_bf16_to_f32(uint16_t h);
FTK_API uint16_t ftk_f32_to_bf16(float f);   /* round to nearest even, NaN kept */
FTK_API float ftk_f16_to_f32(uint16_t h);
FTK_API uint16_t ftk_f32_to_f16(float f);    /* round to nearest even */
/* Converts n elements of src (F32, BF16, F16, F64) to F32. FTK_E_UNSUPPORTED for other dtypes. */
FTK_API ftk_status ftk_convert_to_f32(float *dst, const void *src, enum ftk_dtype src_dtype, size_t n);
FTK_API ftk_status ftk_convert_from_f32(void *dst, enum ftk_dtype dst_dtype, const float *src, size_t n);

#ifdef __cplusplus
}
#endif
#endif
