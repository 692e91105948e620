// tests/cuda/emu/include/cuda_runtime.h: the part of the CUDA runtime API that kernels/cuda uses,
// implemented on the host by tests/cuda/emu/emu.cpp, so that the backend's own code (host side
// and kernels) runs on a machine without a GPU. See tests/cuda/emu.sh.
#ifndef FTK_EMU_CUDA_RUNTIME_H
#define FTK_EMU_CUDA_RUNTIME_H
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <functional>

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
typedef dim3 uint3;

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2, cudaErrorNoDevice = 100 };
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
typedef struct emu_stream *cudaStream_t;
#define cudaStreamNonBlocking 1u

const char *cudaGetErrorString(cudaError_t e);
const char *cudaGetErrorName(cudaError_t e);
cudaError_t cudaGetLastError(void);
cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaMalloc(void **p, size_t n);
template <typename T> static inline cudaError_t cudaMalloc(T **p, size_t n) { return cudaMalloc((void **)p, n); }
cudaError_t cudaFree(void *p);
cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t s);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind k, cudaStream_t s);
cudaError_t emu_func_set_attribute(int attr, int value);
template <typename F> static inline cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute a, int v) { return emu_func_set_attribute((int)a, v); }

// ---- the device side: threads as fibers of one block at a time ----
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
struct emu_thread_ids { dim3 tid, bid, bdim, gdim; };
const emu_thread_ids *emu_ids(void);
#define threadIdx (emu_ids()->tid)
#define blockIdx (emu_ids()->bid)
#define blockDim (emu_ids()->bdim)
#define gridDim (emu_ids()->gdim)
void __syncthreads(void);
int __syncthreads_or(int p);
uint64_t emu_shfl(uint64_t bits, int src_lane, int xor_mode);
template <typename T> static inline T emu_shfl_t(T v, int lane, int x)
{
    uint64_t b = 0;
    __builtin_memcpy(&b, &v, sizeof v);
    b = emu_shfl(b, lane, x);
    T r;
    __builtin_memcpy(&r, &b, sizeof r);
    return r;
}
template <typename T> static inline T __shfl_sync(unsigned, T v, int lane) { return emu_shfl_t(v, lane, 0); }
template <typename T> static inline T __shfl_xor_sync(unsigned, T v, int m) { return emu_shfl_t(v, m, 1); }
void *emu_dyn_smem(void);
cudaError_t emu_launch(const std::function<void()> &body, dim3 grid, dim3 block, size_t smem = 0, cudaStream_t s = 0);
#endif
