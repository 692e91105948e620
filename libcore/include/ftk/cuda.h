/* ftk/cuda.h: what the CUDA build of libftk can see. Built only when nvcc was found
 * (FTK_HAVE_CUDA); without it ftk_cuda_available() is 0 and the other calls fail cleanly. */
#ifndef FTK_CUDA_H
#define FTK_CUDA_H

#include <stddef.h>
#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 1 if libftk was built with CUDA. */
FTK_API int ftk_cuda_built(void);
/* Number of usable GPUs (0 without a driver or device; never an error). */
FTK_API int ftk_cuda_device_count(void);
/* Name, compute capability and memory of device `dev`. FTK_E_CUDA when it cannot be queried. */
FTK_API ftk_status ftk_cuda_device_info(int dev, char *name, size_t name_len, int *cc_major, int *cc_minor,
                                        size_t *total_mem);

#ifdef __cplusplus
}
#endif
#endif
