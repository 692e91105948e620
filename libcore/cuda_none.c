/* libcore/cuda_none.c: ftk/cuda.h for builds without nvcc (kernels/cuda/device.cu otherwise). */
#ifndef FTK_HAVE_CUDA
#include <stdio.h>
#include "ftk/cuda.h"

int ftk_cuda_built(void) { return 0; }
int ftk_cuda_device_count(void) { return 0; }

ftk_status ftk_cuda_device_info(int dev, char *name, size_t name_len, int *cc_major, int *cc_minor, size_t *total_mem)
{
    (void)name; (void)name_len; (void)cc_major; (void)cc_minor; (void)total_mem;
    FTK_FAIL(FTK_E_UNSUPPORTED, "device %d: this libftk was built without CUDA (nvcc was not found at build time)", dev);
}
#else
typedef int ftk_cuda_none_unused_;   /* ISO C forbids an empty translation unit */
#endif
