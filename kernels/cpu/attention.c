/* kernels/cpu/attention.c: causal scaled-dot-product self-attention with GQA and packed segments,
 * forward saving the log-sum-exp per query row, and backward in the FlashAttention manner
 * (probabilities recomputed from lse, never a (T,T) matrix in memory).
 *
 * Letters: B batch rows, T sequence length, H query heads, Hkv key/value heads (H % Hkv == 0;
 * query head h reads kv head h / (H/Hkv), as transformers' repeat_kv), D head dim,
 * BQ/BK rows in a query/key block, L keys (or queries) a block spans.
 * Mask: query t sees key t' iff t' <= t and seg[t'] == seg[t] (seg NULL: plain causal). The key
 * t' = t always qualifies, so every row has at least one key and no row is NaN; padding
 * (segment 0) rows are finite and meaningless.
 *
 * Work is cut into blocks of BQ query rows of one head (forward, dq) or BK key rows of one kv head
 * (dk, dv), each a task on the thread pool doing its matmuls with single-threaded cblas_sgemm
 * (OpenBLAS is set to one thread for the op and restored after). A task owns the output rows it
 * writes, so no two threads write one row and results do not depend on the thread count.
 * A block only spans the keys its rows can see: from the first position of the earliest row's
 * segment to the block's end (forward), which keeps packed short documents cheap. */
#include "cpu.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#define ATT_BQ 64   /* query rows per task */
#define ATT_BK 64   /* key rows per task (backward dk/dv) */

struct att {
    float *o, *lse, *dq, *dk, *dv, *di;
    const float *q, *k, *v, *dout, *o_in, *lse_in;
    const int32_t *seg;
    const int32_t *first, *last;  /* (B,T): first/last position of t's segment in its row */
    float *work;                  /* (threads, 2, BQ or BK, T) */
    int64_t B, T, H, Hkv, D, nqb, nkb;
    float scale;
};

/* Row-major sgemm, C (M,N) = alpha op(A) op(B) + beta C, in the calling thread. */
static void mm(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
               int64_t lda, const float *Bm, int64_t ldb, float beta, float *C, int64_t ldc)
{
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                (int)M, (int)N, (int)K, alpha, A, (int)lda, Bm, (int)ldb, beta, C, (int)ldc);
}

static inline int visible(const struct att *a, int64_t b, int64_t t, int64_t j)
{
    return j <= t && (!a->seg || a->seg[b * a->T + j] == a->seg[b * a->T + t]);
}

/* first[b,t] / last[b,t]: the first and last position in row b whose segment id equals seg[b,t]
 * (0 and T-1 without seg, or when ids are outside [0,T] and no small table fits). */
static void segment_bounds(const int32_t *seg, int64_t B, int64_t T, int32_t *first, int32_t *last,
                           int32_t *tab /* (T+1) */)
{
    for (int64_t b = 0; b < B; b++) {
        const int32_t *s = seg ? seg + b * T : NULL;
        int small = s != NULL;
        for (int64_t t = 0; s && t < T; t++)
            small &= s[t] >= 0 && s[t] <= T;
        for (int64_t t = 0; t < T; t++) {
            first[b * T + t] = 0;
            last[b * T + t] = (int32_t)(T - 1);
        }
        if (!small)
            continue;
        for (int64_t i = 0; i <= T; i++)
            tab[i] = -1;
        for (int64_t t = 0; t < T; t++)
            if (tab[s[t]] < 0)
                tab[s[t]] = (int32_t)t;
        for (int64_t t = 0; t < T; t++)
            first[b * T + t] = tab[s[t]];
        for (int64_t i = 0; i <= T; i++)
            tab[i] = -1;
        for (int64_t t = T - 1; t >= 0; t--)
            if (tab[s[t]] < 0)
                tab[s[t]] = (int32_t)t;
        for (int64_t t = 0; t < T; t++)
            last[b * T + t] = tab[s[t]];
    }
}

/* task index -> (b, head, block) with the block fastest */
static inline void split3(int64_t task, int64_t nblk, int64_t heads, int64_t *b, int64_t *h, int64_t *blk)
{
    *blk = task % nblk;
    *h = (task / nblk) % heads;
    *b = task / (nblk * heads);
}

/* ---- forward --------------------------------------------------------------------------------
 * S (m,L) = scale Q_blk K^T; masked softmax per row (lse saved); O_blk = P V. */
static void att_fwd_tasks(void *arg, int64_t t0, int64_t t1, int tid)
{
    const struct att *a = arg;
    const int64_t T = a->T, H = a->H, Hkv = a->Hkv, D = a->D, G = H / Hkv;
    float *S = a->work + (int64_t)tid * 2 * ATT_BQ * T;
    for (int64_t task = t0; task < t1; task++) {
        int64_t b, h, qb;
        split3(task, a->nqb, H, &b, &h, &qb);
        const int64_t i0 = qb * ATT_BQ, i1 = i0 + ATT_BQ < T ? i0 + ATT_BQ : T, m = i1 - i0;
        int64_t klo = i0;
        for (int64_t t = i0; t < i1; t++)
            klo = a->first[b * T + t] < klo ? a->first[b * T + t] : klo;
        const int64_t L = i1 - klo, g = h / G;
        const float *Q = a->q + ((b * T + i0) * H + h) * D;
        const float *K = a->k + ((b * T + klo) * Hkv + g) * D, *V = a->v + ((b * T + klo) * Hkv + g) * D;
        mm(0, 1, m, L, D, a->scale, Q, H * D, K, Hkv * D, 0.0f, S, L);
        for (int64_t r = 0; r < m; r++) {
            const int64_t t = i0 + r;
            float *s = S + r * L, mx = -INFINITY;
            for (int64_t j = 0; j < L; j++) {
                if (!visible(a, b, t, klo + j))
                    s[j] = -INFINITY;
                else if (s[j] > mx)
                    mx = s[j];
            }
            double sum = 0.0;
            for (int64_t j = 0; j < L; j++) {
                float p = s[j] == -INFINITY ? 0.0f : expf(s[j] - mx);
                s[j] = p;
                sum += p;
            }
            const float inv = (float)(1.0 / sum);
            for (int64_t j = 0; j < L; j++)
                s[j] *= inv;
            if (a->lse)
                a->lse[(b * T + t) * H + h] = mx + (float)log(sum);
        }
        mm(0, 0, m, D, L, 1.0f, S, L, V, Hkv * D, 0.0f, a->o + ((b * T + i0) * H + h) * D, H * D);
    }
}

static ftk_status att_setup(struct cpu_ctx *c, struct att *a, int backward)
{
    FTK_FAIL_IF(a->H <= 0 || a->Hkv <= 0 || a->H % a->Hkv != 0, FTK_E_INVALID,
                "attention: %lld query heads are not a multiple of %lld kv heads",
                (long long)a->H, (long long)a->Hkv);
    FTK_FAIL_IF(a->T > INT32_MAX / 2 || a->D > INT32_MAX / 2, FTK_E_UNSUPPORTED, "attention: T or D too large");
    const int64_t B = a->B, T = a->T;
    a->nqb = (T + ATT_BQ - 1) / ATT_BQ;
    a->nkb = (T + ATT_BK - 1) / ATT_BK;
    const int64_t blk = ATT_BQ > ATT_BK ? ATT_BQ : ATT_BK;
    size_t n_int = (size_t)(2 * B * T + T + 1);
    size_t n_di = backward ? (size_t)(B * T * a->H) : 0;
    size_t n_work = (size_t)c->nthreads * 2 * (size_t)blk * (size_t)T;
    char *s = cpu_scratch(c, n_int * sizeof(int32_t) + 64 + (n_di + n_work) * sizeof(float));
    if (!s)
        return FTK_E_NOMEM;
    int32_t *first = (int32_t *)s, *last = first + B * T, *tab = last + B * T;
    float *f = (float *)(s + (n_int * sizeof(int32_t) + 63) / 64 * 64);
    segment_bounds(a->seg, B, T, first, last, tab);
    a->first = first;
    a->last = last;
    a->di = backward ? f : NULL;
    a->work = f + n_di;
    return FTK_OK;
}

/* q (B,T,H,D), k v (B,T,Hkv,D), seg (B,T) or NULL -> o (B,T,H,D), lse (B,T,H) or NULL */
ftk_status cpu_attention_forward(void *ctx, float *o, float *lse, const float *q, const float *k,
                                 const float *v, const int32_t *seg, int64_t B, int64_t T,
                                 int64_t H, int64_t Hkv, int64_t D, float scale)
{
    struct cpu_ctx *c = ctx;
    struct att a = { .o = o, .lse = lse, .q = q, .k = k, .v = v, .seg = seg,
                     .B = B, .T = T, .H = H, .Hkv = Hkv, .D = D, .scale = scale };
    FTK_TRY(att_setup(c, &a, 0));
    if (B * T == 0)
        return FTK_OK;
    openblas_set_num_threads(1);
    cpu_for(c, B * H * a.nqb, 1, att_fwd_tasks, &a);
    openblas_set_num_threads(c->nthreads);
    return FTK_OK;
}

/* ---- backward ---------------------------------------------------------------------------------
 * With P = exp(scale Q K^T - lse) (masked), dP = dO V^T, Di = dO_i . O_i, dS = P (dP - Di):
 *   dQ = scale dS K,  dK = scale dS^T Q,  dV = P^T dO.
 * Pass 1 over query blocks of one head: Di and dQ. Pass 2 over key blocks of one kv head: the
 * transposed products S^T = K Q^T, dP^T = V dO^T for each of the G query heads of the group,
 * then dV += P^T dO and dK += scale dS^T Q. Each pass's tasks own the rows they write. */
static void att_bwd_q_tasks(void *arg, int64_t t0, int64_t t1, int tid)
{
    const struct att *a = arg;
    const int64_t T = a->T, H = a->H, Hkv = a->Hkv, D = a->D, G = H / Hkv;
    float *S = a->work + (int64_t)tid * 2 * ATT_BQ * T, *dP = S + ATT_BQ * T;
    for (int64_t task = t0; task < t1; task++) {
        int64_t b, h, qb;
        split3(task, a->nqb, H, &b, &h, &qb);
        const int64_t i0 = qb * ATT_BQ, i1 = i0 + ATT_BQ < T ? i0 + ATT_BQ : T, m = i1 - i0;
        int64_t klo = i0;
        for (int64_t t = i0; t < i1; t++)
            klo = a->first[b * T + t] < klo ? a->first[b * T + t] : klo;
        const int64_t L = i1 - klo, g = h / G;
        const int64_t row0 = (b * T + i0) * H + h;   /* row index of (b, i0, h) */
        const float *Q = a->q + row0 * D, *dO = a->dout + row0 * D;
        const float *K = a->k + ((b * T + klo) * Hkv + g) * D, *V = a->v + ((b * T + klo) * Hkv + g) * D;
        for (int64_t r = 0; r < m; r++) {
            const float *dor = dO + r * H * D, *orow = a->o_in + (row0 + r * H) * D;
            float di = 0.0f;
            for (int64_t d = 0; d < D; d++)
                di += dor[d] * orow[d];
            a->di[row0 + r * H] = di;
        }
        if (!a->dq)
            continue;
        mm(0, 1, m, L, D, a->scale, Q, H * D, K, Hkv * D, 0.0f, S, L);
        mm(0, 1, m, L, D, 1.0f, dO, H * D, V, Hkv * D, 0.0f, dP, L);
        for (int64_t r = 0; r < m; r++) {
            const int64_t t = i0 + r;
            const float lse = a->lse_in[row0 + r * H], di = a->di[row0 + r * H];
            float *s = S + r * L, *dp = dP + r * L;
            for (int64_t j = 0; j < L; j++)
                s[j] = visible(a, b, t, klo + j) ? expf(s[j] - lse) * (dp[j] - di) : 0.0f;
        }
        mm(0, 0, m, D, L, a->scale, S, L, K, Hkv * D, 1.0f, a->dq + row0 * D, H * D);
    }
}

static void att_bwd_kv_tasks(void *arg, int64_t t0, int64_t t1, int tid)
{
    const struct att *a = arg;
    const int64_t T = a->T, H = a->H, Hkv = a->Hkv, D = a->D, G = H / Hkv;
    float *S = a->work + (int64_t)tid * 2 * ATT_BK * T, *dP = S + ATT_BK * T;
    for (int64_t task = t0; task < t1; task++) {
        int64_t b, g, kb;
        split3(task, a->nkb, Hkv, &b, &g, &kb);
        const int64_t j0 = kb * ATT_BK, j1 = j0 + ATT_BK < T ? j0 + ATT_BK : T, n = j1 - j0;
        int64_t qhi = j1;   /* queries that can see these keys: [j0, max last position of their segments] */
        for (int64_t j = j0; j < j1; j++)
            qhi = a->last[b * T + j] + 1 > qhi ? a->last[b * T + j] + 1 : qhi;
        const int64_t L = qhi - j0;
        const int64_t krow0 = (b * T + j0) * Hkv + g;
        const float *K = a->k + krow0 * D, *V = a->v + krow0 * D;
        for (int64_t h = g * G; h < (g + 1) * G; h++) {
            const int64_t qrow0 = (b * T + j0) * H + h;
            const float *Q = a->q + qrow0 * D, *dO = a->dout + qrow0 * D;
            mm(0, 1, n, L, D, a->scale, K, Hkv * D, Q, H * D, 0.0f, S, L);     /* S^T (n,L) */
            mm(0, 1, n, L, D, 1.0f, V, Hkv * D, dO, H * D, 0.0f, dP, L);       /* dP^T (n,L) */
            for (int64_t r = 0; r < n; r++) {
                const int64_t j = j0 + r;
                float *s = S + r * L, *dp = dP + r * L;
                for (int64_t c = 0; c < L; c++) {
                    const int64_t i = j0 + c, ri = qrow0 + c * H;
                    if (!visible(a, b, i, j)) {
                        s[c] = 0.0f;
                        dp[c] = 0.0f;
                        continue;
                    }
                    float p = expf(s[c] - a->lse_in[ri]);
                    s[c] = p;                          /* P^T */
                    dp[c] = p * (dp[c] - a->di[ri]);   /* dS^T */
                }
            }
            if (a->dv)
                mm(0, 0, n, D, L, 1.0f, S, L, dO, H * D, 1.0f, a->dv + krow0 * D, Hkv * D);
            if (a->dk)
                mm(0, 0, n, D, L, a->scale, dP, L, Q, H * D, 1.0f, a->dk + krow0 * D, Hkv * D);
        }
    }
}

/* dout (B,T,H,D), q (B,T,H,D), k v (B,T,Hkv,D), o (B,T,H,D), lse (B,T,H), seg (B,T) or NULL
 * -> dq (B,T,H,D) +=, dk dv (B,T,Hkv,D) += (each may be NULL) */
ftk_status cpu_attention_backward(void *ctx, float *dq, float *dk, float *dv, const float *dout,
                                  const float *q, const float *k, const float *v, const float *o,
                                  const float *lse, const int32_t *seg, int64_t B, int64_t T,
                                  int64_t H, int64_t Hkv, int64_t D, float scale)
{
    struct cpu_ctx *c = ctx;
    struct att a = { .dq = dq, .dk = dk, .dv = dv, .q = q, .k = k, .v = v, .dout = dout,
                     .o_in = o, .lse_in = lse, .seg = seg,
                     .B = B, .T = T, .H = H, .Hkv = Hkv, .D = D, .scale = scale };
    FTK_TRY(att_setup(c, &a, 1));
    if (B * T == 0)
        return FTK_OK;
    openblas_set_num_threads(1);
    cpu_for(c, B * H * a.nqb, 1, att_bwd_q_tasks, &a);
    if (dk || dv)
        cpu_for(c, B * Hkv * a.nkb, 1, att_bwd_kv_tasks, &a);
    openblas_set_num_threads(c->nthreads);
    return FTK_OK;
}
