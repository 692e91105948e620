// tests/cuda/emu/emu.cpp: a host emulation of the CUDA runtime calls and device built-ins that
// kernels/cuda uses (include/cuda_runtime.h, include/cublas_v2.h), so that the CUDA backend's
// own source - host code and kernels, unchanged apart from the launch syntax that emu.sh
// rewrites - runs against the CPU backend in test_cuda_ops on a machine without a GPU.
//
// A launch runs its blocks one after another. The threads of a block are fibers (own stacks,
// switched by emu_swap below, cooperative): __syncthreads waits until every live thread of the
// block has arrived; a warp shuffle publishes each lane's value, waits for the 32 lanes, reads,
// and waits again. So barriers, shuffles and block votes behave as on the GPU for kernels that
// reach them uniformly (which CUDA requires anyway); a barrier reached by only part of a block
// deadlocks here, which is reported. Device memory is host memory filled with 0xff bytes (NaN
// as floats) by cudaMalloc, dynamic shared memory likewise per block, so a read of memory never
// written shows up as NaN in the comparison. With -fsanitize=address, out-of-bounds accesses of
// device memory are caught (a memcheck of sorts).
//
// What this does not check: timing, occupancy, shared-memory limits, bank conflicts, the
// compiled SASS, races that need true parallelism, and anything specific to nvcc's device code
// generation (fast math, fused multiply-adds, the device math library's accuracy).
#include "cuda_runtime.h"
#include "cublas_v2.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>

// ---- fibers ------------------------------------------------------------------------------
extern "C" void emu_swap(void **save_sp, void *load_sp);
asm(R"(
    .text
    .globl emu_swap
    .type emu_swap, @function
emu_swap:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_swap, .-emu_swap
)");

#define EMU_STACK (256 * 1024)

struct fiber {
    void *sp;
    char *stack;
    emu_thread_ids ids;
    int done;
    int at_block_barrier;
};

static struct {
    const std::function<void()> *body;
    std::vector<fiber> f;
    int cur, live, nthreads;
    void *sched_sp;
    // block barrier
    int bar_arrived;
    unsigned bar_gen;
    int vote;
    // warp exchange
    std::vector<uint64_t> wval;
    std::vector<int> warr;
    std::vector<unsigned> wgen;
    std::vector<int> wlive;
    std::vector<char> dyn;
    size_t dyn_size;
    int max_dyn;
    long yields;
} E;

// the fibers' stacks, freed at exit (LeakSanitizer then reports only the backend's own leaks)
static struct emu_cleanup {
    ~emu_cleanup() { for (fiber &f : E.f) free(f.stack); }
} emu_cleanup_;

static void yield_(void) { emu_swap(&E.f[E.cur].sp, E.sched_sp); }

static void open_barrier(void);

extern "C" void emu_trampoline(void)
{
    (*E.body)();
    fiber &me = E.f[E.cur];
    me.done = 1;
    E.live--;
    E.wlive[E.cur / 32]--;
    // an exited thread no longer holds a barrier back (as on sm_70 and later)
    if (E.bar_arrived > 0 && E.bar_arrived == E.live)
        open_barrier();
    const int w = E.cur / 32;
    if (E.warr[w] > 0 && E.warr[w] == E.wlive[w]) {
        E.warr[w] = 0;
        E.wgen[w]++;
    }
    emu_swap(&me.sp, E.sched_sp);
    abort();   // never resumed
}

const emu_thread_ids *emu_ids(void) { return &E.f[E.cur].ids; }
void *emu_dyn_smem(void) { return E.dyn.data(); }

static void open_barrier(void)
{
    E.bar_arrived = 0;
    E.bar_gen++;
    for (int t = 0; t < E.nthreads; t++)
        E.f[t].at_block_barrier = 0;
}

void __syncthreads(void)
{
    unsigned g = E.bar_gen;
    if (++E.bar_arrived == E.live) {
        open_barrier();
        return;
    }
    E.f[E.cur].at_block_barrier = 1;
    while (E.bar_gen == g)
        yield_();
}

int __syncthreads_or(int p)
{
    __syncthreads();
    if (p)
        E.vote = 1;
    __syncthreads();
    int r = E.vote;
    __syncthreads();
    if (threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0)
        E.vote = 0;
    __syncthreads();
    return r;
}

static void warp_wait(int w)
{
    unsigned g = E.wgen[w];
    if (++E.warr[w] == E.wlive[w]) {
        E.warr[w] = 0;
        E.wgen[w]++;
        return;
    }
    while (E.wgen[w] == g)
        yield_();
}

uint64_t emu_shfl(uint64_t bits, int src, int xor_mode)
{
    const int t = E.cur, w = t / 32, lane = t % 32;
    if (E.wlive[w] != 32) {
        fprintf(stderr, "emu: a warp shuffle in a warp with %d live lanes (all 32 must take part)\n", E.wlive[w]);
        abort();
    }
    E.wval[t] = bits;
    warp_wait(w);
    int s = xor_mode ? (lane ^ src) : src;
    uint64_t r = E.wval[w * 32 + (s & 31)];
    warp_wait(w);
    return r;
}

static int last_err;

cudaError_t emu_launch(const std::function<void()> &body, dim3 grid, dim3 block, size_t smem, cudaStream_t)
{
    const int n = (int)(block.x * block.y * block.z);
    if (n <= 0 || n > 1024 || n % 32 || block.y != 1 || block.z != 1 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
        grid.y > 65535 || grid.z > 65535 || smem > (size_t)(E.max_dyn > 48 * 1024 ? E.max_dyn : 48 * 1024)) {
        fprintf(stderr, "emu: bad launch grid (%u,%u,%u) block (%u,%u,%u) smem %zu (limit %d)\n", grid.x, grid.y, grid.z,
                block.x, block.y, block.z, smem, E.max_dyn);
        last_err = cudaErrorInvalidValue;
        return cudaErrorInvalidValue;
    }
    // FTK_EMU_ORDER: the order in which a pass resumes the threads of a block (forward,
    // reverse, random): hazards that a missing barrier leaves open show up in some order
    const char *om = getenv("FTK_EMU_ORDER");
    // warp-ahead: one warp at a time runs until every lane waits at a block barrier (or ends),
    // the next warp after it (warp-ahead-reverse: from the last warp): the largest skew between
    // warps that the barriers allow, where a missing __syncthreads at a tile's end shows
    const int order_mode = !om ? 0 : !strcmp(om, "reverse") ? 1 : !strcmp(om, "random") ? 2
                         : !strcmp(om, "warp-ahead") ? 3 : !strcmp(om, "warp-ahead-reverse") ? 4 : 0;
    static uint64_t rng = 0x9E3779B97F4A7C15ull;
    E.body = &body;
    E.nthreads = n;
    if ((int)E.f.size() < n) {
        size_t old = E.f.size();
        E.f.resize(n);
        for (size_t i = old; i < E.f.size(); i++)
            E.f[i].stack = (char *)aligned_alloc(64, EMU_STACK);
    }
    E.wval.assign(n, 0);
    E.warr.assign(n / 32, 0);
    E.wgen.assign(n / 32, 0);
    E.dyn.assign(smem ? smem : 16, (char)0xff);
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                memset(E.dyn.data(), 0xff, E.dyn.size());
                E.live = n;
                E.wlive.assign(n / 32, 32);
                E.bar_arrived = 0;
                E.vote = 0;
                for (int t = 0; t < n; t++) {
                    fiber &f = E.f[t];
                    f.done = 0;
                    f.at_block_barrier = 0;
                    f.ids.tid = dim3((unsigned)t, 0, 0);
                    f.ids.bid = dim3(bx, by, bz);
                    f.ids.bdim = block;
                    f.ids.gdim = grid;
                    // a new stack: emu_swap pops six registers, then returns into the trampoline
                    uintptr_t top = ((uintptr_t)(f.stack + EMU_STACK) & ~(uintptr_t)15) - 16;
                    void **sp = (void **)top;
                    *sp = (void *)emu_trampoline;   // return address at a 16-aligned slot
                    sp -= 6;
                    for (int r = 0; r < 6; r++) sp[r] = 0;
                    f.sp = sp;
                }
                std::vector<int> order(n);
                for (int i = 0; i < n; i++)
                    order[i] = order_mode == 1 ? n - 1 - i : i;
                int running = n;
                long stalled = 0;   // passes in which no barrier opened and no thread ended
                while (running) {
                    const unsigned g0 = E.bar_gen;
                    unsigned w0 = 0;
                    for (unsigned x : E.wgen) w0 += x;
                    const int r0 = running;
                    if (order_mode == 2)   // a fresh random order each pass (xorshift, fixed seed)
                        for (int i = n - 1; i > 0; i--) {
                            rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
                            int j = (int)(rng % (uint64_t)(i + 1)), x = order[i];
                            order[i] = order[j];
                            order[j] = x;
                        }
                    if (order_mode >= 3) {
                        for (int wi = 0; wi < n / 32; wi++) {
                            const int w = order_mode == 3 ? wi : n / 32 - 1 - wi;
                            for (int idle = 0; idle < 3;) {   // 3 rounds without a shuffle opening: stuck
                                const unsigned wg = E.wgen[w], bg = E.bar_gen;
                                int any = 0;
                                for (int t = w * 32; t < w * 32 + 32; t++) {
                                    if (E.f[t].done || E.f[t].at_block_barrier)
                                        continue;
                                    any = 1;
                                    E.cur = t;
                                    emu_swap(&E.sched_sp, E.f[t].sp);
                                    if (E.f[t].done)
                                        running--;
                                }
                                if (!any)
                                    break;
                                idle = (E.wgen[w] == wg && E.bar_gen == bg) ? idle + 1 : 0;
                            }
                        }
                    } else
                    for (int oi = 0; oi < n; oi++) {
                        const int t = order[oi];
                        if (E.f[t].done)
                            continue;
                        E.cur = t;
                        emu_swap(&E.sched_sp, E.f[t].sp);
                        if (E.f[t].done)
                            running--;
                    }
                    unsigned w1 = 0;
                    for (unsigned x : E.wgen) w1 += x;
                    stalled = (E.bar_gen == g0 && w1 == w0 && running == r0) ? stalled + 1 : 0;
                    if (stalled > 2) {   // every live thread waits at a barrier that cannot open
                        fprintf(stderr, "emu: deadlock in block (%u,%u,%u): %d threads wait at a barrier or shuffle "
                                "that the others never reach\n", bx, by, bz, running);
                        abort();
                    }
                }
            }
    E.max_dyn = 0;
    return cudaSuccess;
}

// ---- runtime API ---------------------------------------------------------------------------
const char *cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "emulated error"; }
const char *cudaGetErrorName(cudaError_t e) { return e == cudaSuccess ? "cudaSuccess" : "cudaErrorEmulated"; }
cudaError_t cudaGetLastError(void) { cudaError_t e = (cudaError_t)last_err; last_err = 0; return e; }
cudaError_t cudaGetDeviceCount(int *n) { *n = getenv("FTK_EMU_NO_DEVICE") ? 0 : 1; return cudaSuccess; }
cudaError_t cudaSetDevice(int) { return cudaSuccess; }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned) { *s = (cudaStream_t)malloc(1); return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamDestroy(cudaStream_t s) { free(s); return cudaSuccess; }
cudaError_t cudaMalloc(void **p, size_t n)
{
    *p = malloc(n ? n : 1);
    if (!*p) return cudaErrorMemoryAllocation;
    memset(*p, 0xff, n);   // NaN floats: reads of memory never written show up
    return cudaSuccess;
}
cudaError_t cudaFree(void *p) { free(p); return cudaSuccess; }
cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t) { memset(p, v, n); return cudaSuccess; }
cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind, cudaStream_t) { memmove(d, s, n); return cudaSuccess; }
// records the raised limit for the next launch (sm_80 allows up to 163 KiB per block, sm_90 227)
cudaError_t emu_func_set_attribute(int attr, int v)
{
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || v > 163 * 1024) return cudaErrorInvalidValue;
    E.max_dyn = v;
    return cudaSuccess;
}

// ---- cuBLAS --------------------------------------------------------------------------------
cublasStatus_t cublasCreate(cublasHandle_t *h) { *h = (cublasHandle_t)malloc(1); return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasDestroy(cublasHandle_t h) { free(h); return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetMathMode(cublasHandle_t, cublasMath_t) { return CUBLAS_STATUS_SUCCESS; }
const char *cublasGetStatusName(cublasStatus_t s) { return s ? "CUBLAS_STATUS_INVALID_VALUE" : "CUBLAS_STATUS_SUCCESS"; }
cublasStatus_t cublasSgemm(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                           const float *alpha, const float *A, int lda, const float *B, int ldb, const float *beta,
                           float *C, int ldc)
{
    // cuBLAS's argument checks (column-major): the leading dimensions must cover the stored rows
    if (m < 0 || n < 0 || k < 0 || ldc < (m > 1 ? m : 1) || lda < ((ta ? k : m) > 1 ? (ta ? k : m) : 1) ||
        ldb < ((tb ? n : k) > 1 ? (tb ? n : k) : 1))
        return CUBLAS_STATUS_INVALID_VALUE;
    cblas_sgemm(CblasColMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k, *alpha, A,
                lda, B, ldb, *beta, C, ldc);
    return CUBLAS_STATUS_SUCCESS;
}
