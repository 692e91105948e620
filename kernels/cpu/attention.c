/* kernels/cpu/attention.c: causal scaled-dot-product self-attention with GQA and packed segments,
 * forward saving the log-sum-exp per query row, and backward in the FlashAttention manner
 * (probabilities recomputed from lse, never stored as a (T,T) matrix).
 *
 * Letters: B batch rows, T sequence length, H query heads, Hkv key/value heads (H % Hkv == 0;
 * query head h reads kv head h / (H/Hkv), as transformers' repeat_kv), D head dim.
 * Mask: query t sees key t' iff t' <= t and seg[t'] == seg[t] (seg NULL: plain causal). The
 * key t' = t always qualifies, so every row has at least one key and no row is NaN; padding
 * (segment 0) rows are finite and meaningless.
 *
 * Row r = (b*T + t)*H + h indexes a query row; lse is (B,T,H) in that order. */
#include "cpu.h"

#include <math.h>
#include <string.h>

static inline float dotf(const float *a, const float *b, int64_t n)
{
    /* four partial sums: shorter dependency chains, and the compiler can keep them in registers */
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2];
        s3 += a[i + 3] * b[i + 3];
    }
    for (; i < n; i++)
        s0 += a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
}

static inline void axpyf(float *y, float a, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] += a * x[i];
}

struct attn_args {
    float *o, *lse, *dq, *dk, *dv;
    const float *q, *k, *v, *dout, *o_in, *lse_in;
    const int32_t *seg;
    float *scratch;          /* forward: (threads, T) scores; backward: Di (B*T*H) then (threads, 2D) */
    float *di;
    int64_t B, T, H, Hkv, D;
    float scale;
};

static inline int visible(const int32_t *seg_row, int64_t t, int64_t j)
{
    return !seg_row || seg_row[j] == seg_row[t];
}

/* ---- forward: one query row at a time ------------------------------------------------------- */
static void attn_fwd_rows(void *arg, int64_t r0, int64_t r1, int tid)
{
    const struct attn_args *a = arg;
    const int64_t T = a->T, H = a->H, Hkv = a->Hkv, D = a->D, G = H / Hkv;
    float *s = a->scratch + (int64_t)tid * T;
    for (int64_t r = r0; r < r1; r++) {
        const int64_t h = r % H, bt = r / H, t = bt % T, b = bt / T, g = h / G;
        const int32_t *seg = a->seg ? a->seg + b * T : NULL;
        const float *q = a->q + r * D;
        const float *kb = a->k + (b * T * Hkv + g) * D, *vb = a->v + (b * T * Hkv + g) * D;
        float mx = -INFINITY;
        for (int64_t j = 0; j <= t; j++) {
            if (!visible(seg, t, j)) {
                s[j] = -INFINITY;
                continue;
            }
            s[j] = a->scale * dotf(q, kb + j * Hkv * D, D);
            if (s[j] > mx)
                mx = s[j];
        }
        float sum = 0.0f;
        float *o = a->o + r * D;
        memset(o, 0, (size_t)D * sizeof(float));
        for (int64_t j = 0; j <= t; j++) {
            if (s[j] == -INFINITY)
                continue;
            float p = expf(s[j] - mx);
            sum += p;
            axpyf(o, p, vb + j * Hkv * D, D);
        }
        float inv = 1.0f / sum;
        for (int64_t d = 0; d < D; d++)
            o[d] *= inv;
        if (a->lse)
            a->lse[r] = mx + logf(sum);
    }
}

static ftk_status check_heads(int64_t H, int64_t Hkv)
{
    FTK_FAIL_IF(H <= 0 || Hkv <= 0 || H % Hkv != 0, FTK_E_INVALID,
                "attention: %lld query heads are not a multiple of %lld kv heads",
                (long long)H, (long long)Hkv);
    return FTK_OK;
}

/* q (B,T,H,D), k v (B,T,Hkv,D), seg (B,T) or NULL -> o (B,T,H,D), lse (B,T,H) or NULL */
ftk_status cpu_attention_forward(void *ctx, float *o, float *lse, const float *q, const float *k,
                                 const float *v, const int32_t *seg, int64_t B, int64_t T,
                                 int64_t H, int64_t Hkv, int64_t D, float scale)
{
    struct cpu_ctx *c = ctx;
    FTK_TRY(check_heads(H, Hkv));
    if (B * T == 0)
        return FTK_OK;
    float *s = cpu_scratch(c, (size_t)c->nthreads * (size_t)T * sizeof(float));
    if (!s)
        return FTK_E_NOMEM;
    struct attn_args a = { .o = o, .lse = lse, .q = q, .k = k, .v = v, .seg = seg, .scratch = s,
                           .B = B, .T = T, .H = H, .Hkv = Hkv, .D = D, .scale = scale };
    cpu_for(c, B * T * H, 0, attn_fwd_rows, &a);
    return FTK_OK;
}

/* ---- backward ---------------------------------------------------------------------------------
 * With P_ij = exp(scale q_i.k_j - lse_i), dP_ij = dO_i.v_j, Di = dO_i.O_i (= sum_j P_ij dP_ij),
 * dS_ij = P_ij (dP_ij - Di):
 *   dq_i = scale sum_j dS_ij k_j,  dk_j = scale sum_i dS_ij q_i,  dv_j = sum_i P_ij dO_i.
 * Pass 1 runs over query rows (dq, and Di saved); pass 2 over key rows (b, j, kv head g), which
 * own dk_j and dv_j, summing over the G query heads of the group: no two threads write one row. */
static void attn_bwd_q_rows(void *arg, int64_t r0, int64_t r1, int tid)
{
    (void)tid;
    const struct attn_args *a = arg;
    const int64_t T = a->T, H = a->H, Hkv = a->Hkv, D = a->D, G = H / Hkv;
    for (int64_t r = r0; r < r1; r++) {
        const int64_t h = r % H, bt = r / H, t = bt % T, b = bt / T, g = h / G;
        const int32_t *seg = a->seg ? a->seg + b * T : NULL;
        const float *q = a->q + r * D, *dout = a->dout + r * D;
        const float *kb = a->k + (b * T * Hkv + g) * D, *vb = a->v + (b * T * Hkv + g) * D;
        const float di = dotf(dout, a->o_in + r * D, D), lse = a->lse_in[r];
        a->di[r] = di;
        if (!a->dq)
            continue;
        float *dq = a->dq + r * D;
        for (int64_t j = 0; j <= t; j++) {
            if (!visible(seg, t, j))
                continue;
            const float *kj = kb + j * Hkv * D;
            float p = expf(a->scale * dotf(q, kj, D) - lse);
            float ds = p * (dotf(dout, vb + j * Hkv * D, D) - di);
            axpyf(dq, a->scale * ds, kj, D);
        }
    }
}

static void attn_bwd_kv_rows(void *arg, int64_t r0, int64_t r1, int tid)
{
    const struct attn_args *a = arg;
    const int64_t T = a->T, H = a->H, Hkv = a->Hkv, D = a->D, G = H / Hkv;
    float *dk = a->scratch + (int64_t)tid * 2 * D, *dv = dk + D;
    for (int64_t r = r0; r < r1; r++) {   /* r = (b*T + j)*Hkv + g */
        const int64_t g = r % Hkv, bj = r / Hkv, j = bj % T, b = bj / T;
        const int32_t *seg = a->seg ? a->seg + b * T : NULL;
        const float *kj = a->k + r * D, *vj = a->v + r * D;
        memset(dk, 0, (size_t)2 * D * sizeof(float));
        for (int64_t h = g * G; h < (g + 1) * G; h++) {
            for (int64_t i = j; i < T; i++) {
                if (!visible(seg, i, j))
                    continue;
                const int64_t ri = (b * T + i) * H + h;
                const float *qi = a->q + ri * D, *doi = a->dout + ri * D;
                float p = expf(a->scale * dotf(qi, kj, D) - a->lse_in[ri]);
                axpyf(dv, p, doi, D);
                float ds = p * (dotf(doi, vj, D) - a->di[ri]);
                axpyf(dk, a->scale * ds, qi, D);
            }
        }
        if (a->dk)
            for (int64_t d = 0; d < D; d++)
                a->dk[r * D + d] += dk[d];
        if (a->dv)
            for (int64_t d = 0; d < D; d++)
                a->dv[r * D + d] += dv[d];
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
    FTK_TRY(check_heads(H, Hkv));
    if (B * T == 0)
        return FTK_OK;
    size_t n_di = (size_t)(B * T * H), n_kv = (size_t)c->nthreads * 2 * (size_t)D;
    float *s = cpu_scratch(c, (n_di + n_kv) * sizeof(float));
    if (!s)
        return FTK_E_NOMEM;
    struct attn_args a = { .dq = dq, .dk = dk, .dv = dv, .q = q, .k = k, .v = v, .dout = dout,
                           .o_in = o, .lse_in = lse, .seg = seg, .di = s, .scratch = s + n_di,
                           .B = B, .T = T, .H = H, .Hkv = Hkv, .D = D, .scale = scale };
    cpu_for(c, B * T * H, 0, attn_bwd_q_rows, &a);
    if (dk || dv)
        cpu_for(c, B * T * Hkv, 0, attn_bwd_kv_rows, &a);
    return FTK_OK;
}
