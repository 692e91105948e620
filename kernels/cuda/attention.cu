// kernels/cuda/attention.cu: causal scaled-dot-product self-attention with GQA and packed
// segments, FlashAttention style (Dao et al. 2022; FA2's loop order): tiles of queries and keys in
// shared memory, an online softmax, the log-sum-exp saved per query row, and a backward that
// recomputes the probabilities from it. No (T,T) matrix exists anywhere. Twin of
// kernels/cpu/attention.c, same mask and formulas (docs/backend.md, Attention):
//   query t of row b sees key j iff j <= t and seg[b,j] == seg[b,t] (seg NULL: plain causal);
//   s = scale q.k, lse = log sum exp s, o = softmax(s) v;
//   backward with P = exp(s - lse), Di = dO_i . O_i, dS = P (dP - Di):
//   dq = scale dS k, dk = scale dS^T q, dv = P^T dO.
//
// Letters: B batch rows, T sequence length, H query heads, Hkv kv heads (query head h reads kv
// head h / (H/Hkv)), D head dim (<= 256), DM the kernel's compiled head-dim bound (32, 64, 128 or
// 256, the smallest >= D), BR rows per block (NW warps x RPW rows each), BC columns per tile
// (one per lane).
//
// One kernel shape serves all three passes: a block owns BR "rows" whose accumulators live in
// registers (lane l holds dims l, l+32, ...), and walks tiles of BC "columns" staged in shared
// memory (rows padded by one float: lane j reads column j's vector without bank conflicts).
//   forward and dq: rows are queries of one head, columns are keys;
//   dk/dv:          rows are keys of one kv head, columns are queries of each head of its group.
// Each output row is written by one block only (dq and dk/dv are separate passes, as in the CPU
// twin), so there are no atomics and results do not change from run to run.
// A column tile is skipped when no (row, column) pair in it is visible (a vote after loading):
// with packed short documents most tiles outside the diagonal are, so packing costs little.
#include "cuda-common.h"

#include <math.h>

#define ATT_NW 4                        // warps per block
#define ATT_RPW 4                       // rows per warp
#define ATT_BR (ATT_NW * ATT_RPW)       // rows per block
#define ATT_BC 32                       // columns per tile: one per lane
#define ATT_THREADS (ATT_NW * 32)
#define ATT_MAX_D 256

static __device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
static __device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Stage `n` vectors of D floats, vector i at src + (i0 + i) * stride (zeros where i0 + i >= lim),
// into dst rows of `ld` floats.
static __device__ __forceinline__ void stage(float *dst, int ld, const float *src, int64_t stride, int64_t i0,
                                             int n, int64_t lim, int D)
{
    for (int x = threadIdx.x; x < n * D; x += ATT_THREADS) {
        int i = x / D, d = x - i * D;
        dst[i * ld + d] = i0 + i < lim ? src[(i0 + i) * stride + d] : 0.0f;
    }
}

// Is any (row, column) pair of the block visible? rows r at t = r0 + r, columns j at k = c0 + j:
// visible iff k <= t (keys are the smaller index), both < T, and the segments match.
// `rows_are_queries` picks which side is the query. A block-wide vote: also a barrier.
static __device__ __forceinline__ int any_visible(const int *segr, const int *segc, int64_t r0, int64_t c0,
                                                  int64_t T, int rows_are_queries)
{
    int any = 0;
    for (int x = threadIdx.x; x < ATT_BR * ATT_BC; x += ATT_THREADS) {
        int r = x / ATT_BC, j = x % ATT_BC;
        int64_t t = r0 + r, k = c0 + j;
        int64_t qi = rows_are_queries ? t : k, ki = rows_are_queries ? k : t;
        any |= t < T && k < T && ki <= qi && segr[r] == segc[j];
    }
    return __syncthreads_or(any);
}

// ---- forward: rows are queries of head h, columns keys of kv head h / group -----------------
// q (B,T,H,D), k v (B,T,Hkv,D), seg (B,T) or NULL -> o (B,T,H,D), lse (B,T,H) or NULL
template <int DM>
static __global__ void __launch_bounds__(ATT_THREADS)
att_fwd_kernel(float *o, float *lse, const float *q, const float *k, const float *v, const int32_t *seg,
               int64_t T, int64_t H, int64_t Hkv, int D, float scale)
{
    extern __shared__ float smem[];
    float *Qs = smem;                              // (BR, DM)
    float *Ks = Qs + ATT_BR * DM;                  // (BC, DM+1)
    float *Vs = Ks + ATT_BC * (DM + 1);            // (BC, DM+1)
    int *segr = (int *)(Vs + ATT_BC * (DM + 1));   // (BR)
    int *segc = segr + ATT_BR;                     // (BC)
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t b = blockIdx.z, h = blockIdx.y, kvh = h / (H / Hkv), q0 = (int64_t)blockIdx.x * ATT_BR;
    const int64_t qlast = (q0 + ATT_BR < T ? q0 + ATT_BR : T) - 1;

    stage(Qs, DM, q + (b * T * H + h) * D, H * D, q0, ATT_BR, T, D);
    for (int r = threadIdx.x; r < ATT_BR; r += ATT_THREADS)
        segr[r] = seg && q0 + r < T ? seg[b * T + q0 + r] : 0;

    float acc[ATT_RPW][DM / 32], m[ATT_RPW], l[ATT_RPW];
#pragma unroll
    for (int i = 0; i < ATT_RPW; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
#pragma unroll
        for (int e = 0; e < DM / 32; e++)
            acc[i][e] = 0.0f;
    }
    for (int64_t k0 = 0; k0 <= qlast; k0 += ATT_BC) {
        stage(Ks, DM + 1, k + (b * T * Hkv + kvh) * D, Hkv * D, k0, ATT_BC, T, D);
        stage(Vs, DM + 1, v + (b * T * Hkv + kvh) * D, Hkv * D, k0, ATT_BC, T, D);
        for (int j = threadIdx.x; j < ATT_BC; j += ATT_THREADS)
            segc[j] = seg && k0 + j < T ? seg[b * T + k0 + j] : 0;
        __syncthreads();   // segr/segc complete before the vote reads them
        if (!any_visible(segr, segc, q0, k0, T, 1))
            continue;      // nobody reads this tile: the next stage() may overwrite it at once
        // s[i] = scale q_i . k_lane
        float s[ATT_RPW];
#pragma unroll
        for (int i = 0; i < ATT_RPW; i++)
            s[i] = 0.0f;
        for (int d = 0; d < D; d++) {
            const float kd = Ks[lane * (DM + 1) + d];
#pragma unroll
            for (int i = 0; i < ATT_RPW; i++)
                s[i] += Qs[(warp * ATT_RPW + i) * DM + d] * kd;
        }
        const int64_t key = k0 + lane;
        float p[ATT_RPW];
#pragma unroll
        for (int i = 0; i < ATT_RPW; i++) {
            const int r = warp * ATT_RPW + i;
            const int64_t t = q0 + r;
            const bool vis = t < T && key < T && key <= t && segr[r] == segc[lane];
            const float si = vis ? s[i] * scale : -INFINITY;
            const float mn = fmaxf(m[i], warp_max(si));
            float alpha;
            if (mn == -INFINITY) {   // nothing visible to this row yet
                p[i] = 0.0f;
                alpha = 1.0f;
            } else {
                p[i] = vis ? expf(si - mn) : 0.0f;
                alpha = expf(m[i] - mn);   // 0 when m was -inf
            }
            l[i] = l[i] * alpha + warp_sum(p[i]);
            m[i] = mn;
#pragma unroll
            for (int e = 0; e < DM / 32; e++)
                acc[i][e] *= alpha;
        }
        // acc[i] += sum_j p_ij v_j
        for (int j = 0; j < ATT_BC; j++) {
            float vj[DM / 32];
#pragma unroll
            for (int e = 0; e < DM / 32; e++)
                vj[e] = Vs[j * (DM + 1) + lane + 32 * e];
#pragma unroll
            for (int i = 0; i < ATT_RPW; i++) {
                const float pj = __shfl_sync(0xffffffffu, p[i], j);
#pragma unroll
                for (int e = 0; e < DM / 32; e++)
                    acc[i][e] += pj * vj[e];
            }
        }
        __syncthreads();   // done with Ks/Vs before the next tile is staged
    }
#pragma unroll
    for (int i = 0; i < ATT_RPW; i++) {
        const int64_t t = q0 + warp * ATT_RPW + i;
        if (t >= T)
            continue;
        const float inv = 1.0f / l[i];
        float *orow = o + ((b * T + t) * H + h) * D;
#pragma unroll
        for (int e = 0; e < DM / 32; e++)
            if (lane + 32 * e < D)
                orow[lane + 32 * e] = acc[i][e] * inv;
        if (lse && lane == 0)
            lse[(b * T + t) * H + h] = m[i] + logf(l[i]);
    }
}

// ---- backward, pass 0: Di = dO . O per (b,t,h), one warp per row ----------------------------
static __global__ void att_di_kernel(float *di, const float *dout, const float *o, int64_t rows, int D)
{
    const int64_t r = blockIdx.x * (int64_t)(blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (r >= rows)
        return;
    float s = 0.0f;
    for (int d = lane; d < D; d += 32)
        s += dout[r * D + d] * o[r * D + d];
    s = warp_sum(s);
    if (lane == 0)
        di[r] = s;
}

// ---- backward, pass 1: dq; rows are queries of head h, columns keys -------------------------
template <int DM>
static __global__ void __launch_bounds__(ATT_THREADS)
att_dq_kernel(float *dq, const float *dout, const float *q, const float *k, const float *v, const float *lse,
              const float *di, const int32_t *seg, int64_t T, int64_t H, int64_t Hkv, int D, float scale)
{
    extern __shared__ float smem[];
    float *Qs = smem;                              // (BR, DM)
    float *dOs = Qs + ATT_BR * DM;                 // (BR, DM)
    float *Ks = dOs + ATT_BR * DM;                 // (BC, DM+1)
    float *Vs = Ks + ATT_BC * (DM + 1);            // (BC, DM+1)
    float *lr = Vs + ATT_BC * (DM + 1);            // (BR) lse of the rows
    float *dr = lr + ATT_BR;                       // (BR) Di of the rows
    int *segr = (int *)(dr + ATT_BR);              // (BR)
    int *segc = segr + ATT_BR;                     // (BC)
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t b = blockIdx.z, h = blockIdx.y, kvh = h / (H / Hkv), q0 = (int64_t)blockIdx.x * ATT_BR;
    const int64_t qlast = (q0 + ATT_BR < T ? q0 + ATT_BR : T) - 1;

    stage(Qs, DM, q + (b * T * H + h) * D, H * D, q0, ATT_BR, T, D);
    stage(dOs, DM, dout + (b * T * H + h) * D, H * D, q0, ATT_BR, T, D);
    for (int r = threadIdx.x; r < ATT_BR; r += ATT_THREADS) {
        const bool in = q0 + r < T;
        segr[r] = seg && in ? seg[b * T + q0 + r] : 0;
        lr[r] = in ? lse[(b * T + q0 + r) * H + h] : 0.0f;
        dr[r] = in ? di[(b * T + q0 + r) * H + h] : 0.0f;
    }
    float acc[ATT_RPW][DM / 32];
#pragma unroll
    for (int i = 0; i < ATT_RPW; i++)
#pragma unroll
        for (int e = 0; e < DM / 32; e++)
            acc[i][e] = 0.0f;
    for (int64_t k0 = 0; k0 <= qlast; k0 += ATT_BC) {
        stage(Ks, DM + 1, k + (b * T * Hkv + kvh) * D, Hkv * D, k0, ATT_BC, T, D);
        stage(Vs, DM + 1, v + (b * T * Hkv + kvh) * D, Hkv * D, k0, ATT_BC, T, D);
        for (int j = threadIdx.x; j < ATT_BC; j += ATT_THREADS)
            segc[j] = seg && k0 + j < T ? seg[b * T + k0 + j] : 0;
        __syncthreads();
        if (!any_visible(segr, segc, q0, k0, T, 1))
            continue;
        float s[ATT_RPW], dp[ATT_RPW];
#pragma unroll
        for (int i = 0; i < ATT_RPW; i++)
            s[i] = dp[i] = 0.0f;
        for (int d = 0; d < D; d++) {
            const float kd = Ks[lane * (DM + 1) + d], vd = Vs[lane * (DM + 1) + d];
#pragma unroll
            for (int i = 0; i < ATT_RPW; i++) {
                s[i] += Qs[(warp * ATT_RPW + i) * DM + d] * kd;
                dp[i] += dOs[(warp * ATT_RPW + i) * DM + d] * vd;
            }
        }
        const int64_t key = k0 + lane;
        float ds[ATT_RPW];
#pragma unroll
        for (int i = 0; i < ATT_RPW; i++) {
            const int r = warp * ATT_RPW + i;
            const int64_t t = q0 + r;
            const bool vis = t < T && key < T && key <= t && segr[r] == segc[lane];
            const float p = vis ? expf(s[i] * scale - lr[r]) : 0.0f;
            ds[i] = p * (dp[i] - dr[r]);
        }
        for (int j = 0; j < ATT_BC; j++) {
            float kj[DM / 32];
#pragma unroll
            for (int e = 0; e < DM / 32; e++)
                kj[e] = Ks[j * (DM + 1) + lane + 32 * e];
#pragma unroll
            for (int i = 0; i < ATT_RPW; i++) {
                const float g = __shfl_sync(0xffffffffu, ds[i], j);
#pragma unroll
                for (int e = 0; e < DM / 32; e++)
                    acc[i][e] += g * kj[e];
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < ATT_RPW; i++) {
        const int64_t t = q0 + warp * ATT_RPW + i;
        if (t >= T)
            continue;
        float *row = dq + ((b * T + t) * H + h) * D;
#pragma unroll
        for (int e = 0; e < DM / 32; e++)
            if (lane + 32 * e < D)
                row[lane + 32 * e] += scale * acc[i][e];
    }
}

// ---- backward, pass 2: dk, dv; rows are keys of kv head kvh, columns queries of each head of
// its group (h = kvh * group + g), from the tile holding the block's first key to T ----------
template <int DM>
static __global__ void __launch_bounds__(ATT_THREADS)
att_dkdv_kernel(float *dk, float *dv, const float *dout, const float *q, const float *k, const float *v,
                const float *lse, const float *di, const int32_t *seg, int64_t T, int64_t H, int64_t Hkv,
                int D, float scale)
{
    extern __shared__ float smem[];
    float *Kr = smem;                              // (BR, DM)
    float *Vr = Kr + ATT_BR * DM;                  // (BR, DM)
    float *Qc = Vr + ATT_BR * DM;                  // (BC, DM+1)
    float *dOc = Qc + ATT_BC * (DM + 1);           // (BC, DM+1)
    float *lc = dOc + ATT_BC * (DM + 1);           // (BC) lse of the columns
    float *dc = lc + ATT_BC;                       // (BC) Di of the columns
    int *segr = (int *)(dc + ATT_BC);              // (BR)
    int *segc = segr + ATT_BR;                     // (BC)
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t b = blockIdx.z, kvh = blockIdx.y, group = H / Hkv, k0 = (int64_t)blockIdx.x * ATT_BR;

    stage(Kr, DM, k + (b * T * Hkv + kvh) * D, Hkv * D, k0, ATT_BR, T, D);
    stage(Vr, DM, v + (b * T * Hkv + kvh) * D, Hkv * D, k0, ATT_BR, T, D);
    for (int r = threadIdx.x; r < ATT_BR; r += ATT_THREADS)
        segr[r] = seg && k0 + r < T ? seg[b * T + k0 + r] : 0;
    float gk[ATT_RPW][DM / 32], gv[ATT_RPW][DM / 32];
#pragma unroll
    for (int i = 0; i < ATT_RPW; i++)
#pragma unroll
        for (int e = 0; e < DM / 32; e++)
            gk[i][e] = gv[i][e] = 0.0f;
    for (int64_t g = 0; g < group; g++) {
        const int64_t h = kvh * group + g;
        for (int64_t c0 = k0 / ATT_BC * ATT_BC; c0 < T; c0 += ATT_BC) {
            stage(Qc, DM + 1, q + (b * T * H + h) * D, H * D, c0, ATT_BC, T, D);
            stage(dOc, DM + 1, dout + (b * T * H + h) * D, H * D, c0, ATT_BC, T, D);
            for (int j = threadIdx.x; j < ATT_BC; j += ATT_THREADS) {
                const bool in = c0 + j < T;
                segc[j] = seg && in ? seg[b * T + c0 + j] : 0;
                lc[j] = in ? lse[(b * T + c0 + j) * H + h] : 0.0f;
                dc[j] = in ? di[(b * T + c0 + j) * H + h] : 0.0f;
            }
            __syncthreads();
            if (!any_visible(segr, segc, k0, c0, T, 0))
                continue;
            // s[i] = q_lane . k_i, dp[i] = dO_lane . v_i
            float s[ATT_RPW], dp[ATT_RPW];
#pragma unroll
            for (int i = 0; i < ATT_RPW; i++)
                s[i] = dp[i] = 0.0f;
            for (int d = 0; d < D; d++) {
                const float qd = Qc[lane * (DM + 1) + d], gd = dOc[lane * (DM + 1) + d];
#pragma unroll
                for (int i = 0; i < ATT_RPW; i++) {
                    s[i] += Kr[(warp * ATT_RPW + i) * DM + d] * qd;
                    dp[i] += Vr[(warp * ATT_RPW + i) * DM + d] * gd;
                }
            }
            const int64_t t = c0 + lane;   // the query
            float p[ATT_RPW], ds[ATT_RPW];
#pragma unroll
            for (int i = 0; i < ATT_RPW; i++) {
                const int r = warp * ATT_RPW + i;
                const int64_t key = k0 + r;
                const bool vis = t < T && key < T && key <= t && segr[r] == segc[lane];
                p[i] = vis ? expf(s[i] * scale - lc[lane]) : 0.0f;
                ds[i] = p[i] * (dp[i] - dc[lane]);
            }
            for (int j = 0; j < ATT_BC; j++) {
                float qj[DM / 32], oj[DM / 32];
#pragma unroll
                for (int e = 0; e < DM / 32; e++) {
                    qj[e] = Qc[j * (DM + 1) + lane + 32 * e];
                    oj[e] = dOc[j * (DM + 1) + lane + 32 * e];
                }
#pragma unroll
                for (int i = 0; i < ATT_RPW; i++) {
                    const float pj = __shfl_sync(0xffffffffu, p[i], j), sj = __shfl_sync(0xffffffffu, ds[i], j);
#pragma unroll
                    for (int e = 0; e < DM / 32; e++) {
                        gv[i][e] += pj * oj[e];
                        gk[i][e] += sj * qj[e];
                    }
                }
            }
            __syncthreads();
        }
    }
#pragma unroll
    for (int i = 0; i < ATT_RPW; i++) {
        const int64_t key = k0 + warp * ATT_RPW + i;
        if (key >= T)
            continue;
        float *dkr = dk ? dk + ((b * T + key) * Hkv + kvh) * D : NULL;
        float *dvr = dv ? dv + ((b * T + key) * Hkv + kvh) * D : NULL;
#pragma unroll
        for (int e = 0; e < DM / 32; e++)
            if (lane + 32 * e < D) {
                if (dkr) dkr[lane + 32 * e] += scale * gk[i][e];
                if (dvr) dvr[lane + 32 * e] += gv[i][e];
            }
    }
}

// ---- host side ---------------------------------------------------------------------------------

static size_t fwd_smem(int dm) { return (size_t)(ATT_BR * dm + 2 * ATT_BC * (dm + 1)) * 4 + (ATT_BR + ATT_BC) * 4; }
static size_t bwd_smem(int dm)
{
    return (size_t)(2 * ATT_BR * dm + 2 * ATT_BC * (dm + 1)) * 4 + (size_t)(2 * ATT_BC + 2 * ATT_BR) * 4 +
           (ATT_BR + ATT_BC) * 4;
}

static ftk_status check_shape(int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D)
{
    FTK_FAIL_IF(B < 0 || T < 0 || H <= 0 || Hkv <= 0 || H % Hkv != 0 || D <= 0, FTK_E_INVALID,
                "attention: bad shape B=%lld T=%lld H=%lld Hkv=%lld D=%lld", (long long)B, (long long)T,
                (long long)H, (long long)Hkv, (long long)D);
    FTK_FAIL_IF(D > ATT_MAX_D, FTK_E_UNSUPPORTED, "attention: head_dim %lld > %d is not built into the CUDA kernels",
                (long long)D, ATT_MAX_D);
    FTK_FAIL_IF(B > 65535 || H > 65535 || (T + ATT_BR - 1) / ATT_BR > INT32_MAX, FTK_E_UNSUPPORTED,
                "attention: B=%lld H=%lld T=%lld beyond the CUDA grid", (long long)B, (long long)H, (long long)T);
    return FTK_OK;
}

static int dm_for(int64_t D) { return D <= 32 ? 32 : D <= 64 ? 64 : D <= 128 ? 128 : 256; }

template <int DM>
static ftk_status fwd_launch(struct cuda_ctx *c, float *o, float *lse, const float *q, const float *k,
                             const float *v, const int32_t *seg, int64_t B, int64_t T, int64_t H,
                             int64_t Hkv, int64_t D, float scale)
{
    const size_t sm = fwd_smem(DM);
    CUDA_CHECK(cudaFuncSetAttribute(att_fwd_kernel<DM>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm));
    dim3 grid((unsigned)((T + ATT_BR - 1) / ATT_BR), (unsigned)H, (unsigned)B);
    att_fwd_kernel<DM><<<grid, ATT_THREADS, sm, c->stream>>>(o, lse, q, k, v, seg, T, H, Hkv, (int)D, scale);
    CUDA_CHECK_LAUNCH();
    return FTK_OK;
}

template <int DM>
static ftk_status bwd_launch(struct cuda_ctx *c, float *dq, float *dk, float *dv, const float *dout,
                             const float *q, const float *k, const float *v, const float *lse, const float *di,
                             const int32_t *seg, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D, float scale)
{
    const size_t sm = bwd_smem(DM);
    if (dq) {
        CUDA_CHECK(cudaFuncSetAttribute(att_dq_kernel<DM>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm));
        dim3 grid((unsigned)((T + ATT_BR - 1) / ATT_BR), (unsigned)H, (unsigned)B);
        att_dq_kernel<DM><<<grid, ATT_THREADS, sm, c->stream>>>(dq, dout, q, k, v, lse, di, seg, T, H, Hkv, (int)D, scale);
        CUDA_CHECK_LAUNCH();
    }
    if (dk || dv) {
        CUDA_CHECK(cudaFuncSetAttribute(att_dkdv_kernel<DM>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm));
        dim3 grid((unsigned)((T + ATT_BR - 1) / ATT_BR), (unsigned)Hkv, (unsigned)B);
        att_dkdv_kernel<DM><<<grid, ATT_THREADS, sm, c->stream>>>(dk, dv, dout, q, k, v, lse, di, seg, T, H, Hkv,
                                                                  (int)D, scale);
        CUDA_CHECK_LAUNCH();
    }
    return FTK_OK;
}

// q (B,T,H,D), k v (B,T,Hkv,D), seg (B,T) or NULL -> o (B,T,H,D), lse (B,T,H) or NULL
ftk_status cu_attention_forward(void *ctx, float *o, float *lse, const float *q, const float *k,
                                const float *v, const int32_t *seg, int64_t B, int64_t T,
                                int64_t H, int64_t Hkv, int64_t D, float scale)
{
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    FTK_TRY(check_shape(B, T, H, Hkv, D));
    if (B == 0 || T == 0)
        return FTK_OK;
    switch (dm_for(D)) {
    case 32: return fwd_launch<32>(c, o, lse, q, k, v, seg, B, T, H, Hkv, D, scale);
    case 64: return fwd_launch<64>(c, o, lse, q, k, v, seg, B, T, H, Hkv, D, scale);
    case 128: return fwd_launch<128>(c, o, lse, q, k, v, seg, B, T, H, Hkv, D, scale);
    default: return fwd_launch<256>(c, o, lse, q, k, v, seg, B, T, H, Hkv, D, scale);
    }
}

// dout (B,T,H,D) and the forward's q k v o lse -> dq (B,T,H,D) +=, dk dv (B,T,Hkv,D) +=
ftk_status cu_attention_backward(void *ctx, float *dq, float *dk, float *dv, const float *dout,
                                 const float *q, const float *k, const float *v, const float *o,
                                 const float *lse, const int32_t *seg, int64_t B, int64_t T,
                                 int64_t H, int64_t Hkv, int64_t D, float scale)
{
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    FTK_TRY(check_shape(B, T, H, Hkv, D));
    if (B == 0 || T == 0 || (!dq && !dk && !dv))
        return FTK_OK;
    const int64_t rows = B * T * H;
    void *di;
    FTK_TRY(cuda_scratch(c, (size_t)rows * sizeof(float), &di));
    att_di_kernel<<<(unsigned)((rows + 7) / 8), 256, 0, c->stream>>>((float *)di, dout, o, rows, (int)D);
    CUDA_CHECK_LAUNCH();
    const float *dis = (const float *)di;
    switch (dm_for(D)) {
    case 32: return bwd_launch<32>(c, dq, dk, dv, dout, q, k, v, lse, dis, seg, B, T, H, Hkv, D, scale);
    case 64: return bwd_launch<64>(c, dq, dk, dv, dout, q, k, v, lse, dis, seg, B, T, H, Hkv, D, scale);
    case 128: return bwd_launch<128>(c, dq, dk, dv, dout, q, k, v, lse, dis, seg, B, T, H, Hkv, D, scale);
    default: return bwd_launch<256>(c, dq, dk, dv, dout, q, k, v, lse, dis, seg, B, T, H, Hkv, D, scale);
    }
}
