// kernels/cuda/attention_decode.cu: one new query token per row against a KV cache (generation);
// twin of kernels/cpu/attention_decode.c.
// q (B,H,D), kc vc (B,S,Hkv,D) with row b's first len[b] positions valid, len (B) -> o (B,H,D);
// query head h reads kv head h / (H/Hkv); scores scale q.k, softmax with the maximum subtracted.
//
// One block per (row, head), DEC_NW warps; warp w takes keys w, w + DEC_NW, ... with an online
// softmax (lane l holds dims l, l+32, ... of q and of its accumulator), then the warps' partial
// (max, sum, accumulator) are merged in shared memory. len is copied to the host and checked
// first (B ints), as the CPU twin checks it.
// Letters: B rows, S cache capacity, H query heads, Hkv kv heads, D head dim (<= 256), DM the
// compiled bound on D.
#include "cuda-common.h"

#include <math.h>
#include <stdlib.h>

#define DEC_NW 4
#define DEC_MAX_D 256

template <int DM>
static __global__ void __launch_bounds__(DEC_NW * 32)
dec_kernel(float *o, const float *q, const float *kc, const float *vc, const int32_t *len, int64_t S,
           int64_t H, int64_t Hkv, int D, float scale)
{
    __shared__ float accs[DEC_NW][DM];
    __shared__ float ms[DEC_NW], ls[DEC_NW];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t b = blockIdx.y, h = blockIdx.x, kvh = h / (H / Hkv), n = len[b];
    const float *qr = q + (b * H + h) * D;
    float qv[DM / 32], acc[DM / 32];
#pragma unroll
    for (int e = 0; e < DM / 32; e++) {
        qv[e] = lane + 32 * e < D ? qr[lane + 32 * e] : 0.0f;
        acc[e] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int64_t t = warp; t < n; t += DEC_NW) {
        const float *kr = kc + ((b * S + t) * Hkv + kvh) * D, *vr = vc + ((b * S + t) * Hkv + kvh) * D;
        float s = 0.0f;
#pragma unroll
        for (int e = 0; e < DM / 32; e++)
            if (lane + 32 * e < D)
                s += qv[e] * kr[lane + 32 * e];
        for (int off = 16; off > 0; off >>= 1)
            s += __shfl_xor_sync(0xffffffffu, s, off);
        s *= scale;
        const float mn = fmaxf(m, s), alpha = expf(m - mn), p = expf(s - mn);
        l = l * alpha + p;
        m = mn;
#pragma unroll
        for (int e = 0; e < DM / 32; e++)
            acc[e] = acc[e] * alpha + (lane + 32 * e < D ? p * vr[lane + 32 * e] : 0.0f);
    }
#pragma unroll
    for (int e = 0; e < DM / 32; e++)
        accs[warp][lane + 32 * e] = acc[e];
    if (lane == 0) {
        ms[warp] = m;
        ls[warp] = l;
    }
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < DEC_NW; w++)
        M = fmaxf(M, ms[w]);
    float L = 0.0f;
    for (int w = 0; w < DEC_NW; w++)
        if (ms[w] != -INFINITY)   // a warp with no key (len < DEC_NW) adds nothing
            L += ls[w] * expf(ms[w] - M);
    for (int d = threadIdx.x; d < D; d += DEC_NW * 32) {
        float s = 0.0f;
        for (int w = 0; w < DEC_NW; w++)
            if (ms[w] != -INFINITY)
                s += accs[w][d] * expf(ms[w] - M);
        o[(b * H + h) * D + d] = s / L;
    }
}

ftk_status cu_attention_decode(void *ctx, float *o, const float *q, const float *kc, const float *vc,
                               const int32_t *len, int64_t B, int64_t S, int64_t H, int64_t Hkv,
                               int64_t D, float scale)
{
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    FTK_FAIL_IF(B <= 0 || H <= 0 || Hkv <= 0 || H % Hkv || D <= 0, FTK_E_INVALID,
                "attention_decode: bad shape B=%lld H=%lld Hkv=%lld D=%lld", (long long)B, (long long)H,
                (long long)Hkv, (long long)D);
    FTK_FAIL_IF(D > DEC_MAX_D, FTK_E_UNSUPPORTED, "attention_decode: head_dim %lld > %d is not built into the CUDA kernels",
                (long long)D, DEC_MAX_D);
    FTK_FAIL_IF(B > 65535 || H > INT32_MAX, FTK_E_UNSUPPORTED, "attention_decode: B=%lld H=%lld beyond the CUDA grid",
                (long long)B, (long long)H);
    int32_t *hl;
    FTK_TRY(cuda_fetch_i32(c, len, B, &hl));
    for (int64_t b = 0; b < B; b++)
        if (hl[b] < 1 || hl[b] > S) {
            int32_t bad = hl[b];
            free(hl);
            FTK_FAIL(FTK_E_INVALID, "attention_decode: row %lld has %d cached positions (capacity %lld)",
                     (long long)b, bad, (long long)S);
        }
    free(hl);
    dim3 grid((unsigned)H, (unsigned)B);
    if (D <= 32)
        dec_kernel<32><<<grid, DEC_NW * 32, 0, c->stream>>>(o, q, kc, vc, len, S, H, Hkv, (int)D, scale);
    else if (D <= 64)
        dec_kernel<64><<<grid, DEC_NW * 32, 0, c->stream>>>(o, q, kc, vc, len, S, H, Hkv, (int)D, scale);
    else if (D <= 128)
        dec_kernel<128><<<grid, DEC_NW * 32, 0, c->stream>>>(o, q, kc, vc, len, S, H, Hkv, (int)D, scale);
    else
        dec_kernel<256><<<grid, DEC_NW * 32, 0, c->stream>>>(o, q, kc, vc, len, S, H, Hkv, (int)D, scale);
    CUDA_CHECK_LAUNCH();
    return FTK_OK;
}
