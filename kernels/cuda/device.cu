// kernels/cuda/device.cu: device discovery in libftk-cuda.so (ftk/cuda.h, through libcore/cuda.c).
#include <cuda_runtime.h>
#include <stdio.h>
#include "ftk/cuda.h"

// Exported under ftk_cudalib_* names: libcore/cuda.c finds them with dlsym (ftk/cuda.h).
extern "C" FTK_API int ftk_cudalib_device_count(void)
{
    int n = 0;
    // No driver or no device is a normal answer on a build machine: 0 GPUs, not an error.
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

extern "C" FTK_API ftk_status ftk_cudalib_device_info(int dev, char *name, size_t name_len, int *cc_major,
                                                   int *cc_minor, size_t *total_mem)
{
    cudaDeviceProp p;
    cudaError_t e = cudaGetDeviceProperties(&p, dev);
    if (e != cudaSuccess)
        return ftk_error_set(FTK_E_CUDA, __FILE__, __LINE__, "cudaGetDeviceProperties(%d): %s", dev,
                             cudaGetErrorString(e));
    if (name && name_len)
        snprintf(name, name_len, "%s", p.name);
    if (cc_major) *cc_major = p.major;
    if (cc_minor) *cc_minor = p.minor;
    if (total_mem) *total_mem = p.totalGlobalMem;
    return FTK_OK;
}
