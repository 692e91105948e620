/* kernels/cpu/attention_prefix.c: P prefix keys/values seen by every query (prefix tuning),
 * merged into a causal attention's result through the log-sum-exp, and the prefix's part of
 * the backward. q (N,H,D), o (N,H,D), lse (N,H), pk pv (R,P,Hkv,D): R = 1, one prefix for every
 * token, or R rows of N/R tokens each with its own (UniPELT's gated prefix); query head h reads
 * kv head h/(H/Hkv). Softmax in F32 with the row maximum subtracted, as attention_forward.
 *
 * Why merge instead of a longer key axis: the causal kernel stays as it is, and a prefix of
 * tens of tokens costs N*H*P*D multiply-adds here, small beside the T*T of the causal part. */
#include <math.h>
#include "cpu.h"

struct pre_args {
    float *o, *lse, *dq, *dpk, *dpv, *pw, *ds;
    const float *q, *pk, *pv, *dout, *o_in, *lse_in;
    int64_t N, R, P, H, Hkv, D;
    float scale;
};

/* Offset of token n's prefix set in pk, pv (R sets of P*Hkv*D). */
static int64_t set_of(const struct pre_args *a, int64_t n) { return n / (a->N / a->R) * a->P * a->Hkv * a->D; }

/* One (token, head) pair per index: the prefix scores, their softmax, merged into o and lse. */
static void fwd_range(void *arg, int64_t begin, int64_t end, int tid)
{
    (void)tid;
    const struct pre_args *a = arg;
    int64_t D = a->D, P = a->P, group = a->H / a->Hkv;
    for (int64_t i = begin; i < end; i++) {
        int64_t h = i % a->H, g = h / group, off = set_of(a, i / a->H);
        const float *q = a->q + i * D, *pk = a->pk + off, *pv = a->pv + off;
        float *o = a->o + i * D, *w = a->pw + i * P;
        float mx = -INFINITY;
        for (int64_t j = 0; j < P; j++) {
            const float *k = pk + (j * a->Hkv + g) * D;
            float s = 0;
            for (int64_t d = 0; d < D; d++)
                s += q[d] * k[d];
            w[j] = s * a->scale;
            if (w[j] > mx)
                mx = w[j];
        }
        float sum = 0;
        for (int64_t j = 0; j < P; j++) {
            w[j] = expf(w[j] - mx);
            sum += w[j];
        }
        float lse_p = mx + logf(sum), lse_c = a->lse[i];
        float hi = lse_p > lse_c ? lse_p : lse_c;
        float lse = hi + logf(expf(lse_c - hi) + expf(lse_p - hi));
        float ac = expf(lse_c - lse), ap = expf(lse_p - lse) / sum;
        for (int64_t d = 0; d < D; d++)
            o[d] *= ac;
        for (int64_t j = 0; j < P; j++) {
            const float *v = pv + (j * a->Hkv + g) * D;
            float p = w[j] * ap;
            for (int64_t d = 0; d < D; d++)
                o[d] += p * v[d];
        }
        a->lse[i] = lse;
    }
}

ftk_status cpu_attention_prefix_forward(void *ctx, float *o, float *lse, const float *q, const float *pk,
                                        const float *pv, int64_t N, int64_t R, int64_t P, int64_t H, int64_t Hkv,
                                        int64_t D, float scale)
{
    struct cpu_ctx *c = ctx;
    FTK_FAIL_IF(N <= 0 || R <= 0 || N % R || P < 0 || H <= 0 || Hkv <= 0 || H % Hkv || D <= 0, FTK_E_INVALID,
                "attention_prefix_forward: bad shape N=%lld R=%lld P=%lld H=%lld Hkv=%lld D=%lld", (long long)N,
                (long long)R, (long long)P, (long long)H, (long long)Hkv, (long long)D);
    if (P == 0)
        return FTK_OK;
    float *pw = cpu_scratch(c, (size_t)(N * H * P) * sizeof(float));
    FTK_FAIL_IF(!pw, FTK_E_NOMEM, "attention_prefix_forward: out of memory");
    struct pre_args a = {.o = o, .lse = lse, .pw = pw, .q = q, .pk = pk, .pv = pv, .N = N, .R = R, .P = P, .H = H,
                         .Hkv = Hkv, .D = D, .scale = scale};
    cpu_for(c, N * H, 16, fwd_range, &a);
    return FTK_OK;
}

/* Per (token, head): p_j = exp(s_j - lse'), ds_j = p_j (dout.pv_j - dout.o'), dq += scale ds_j pk_j;
 * p and ds are kept for the per-key sums below. */
static void bwd_q_range(void *arg, int64_t begin, int64_t end, int tid)
{
    (void)tid;
    const struct pre_args *a = arg;
    int64_t D = a->D, P = a->P, group = a->H / a->Hkv;
    for (int64_t i = begin; i < end; i++) {
        int64_t h = i % a->H, g = h / group, off = set_of(a, i / a->H);
        const float *q = a->q + i * D, *dout = a->dout + i * D, *o = a->o_in + i * D;
        float di = 0;
        for (int64_t d = 0; d < D; d++)
            di += dout[d] * o[d];
        for (int64_t j = 0; j < P; j++) {
            const float *k = a->pk + off + (j * a->Hkv + g) * D, *v = a->pv + off + (j * a->Hkv + g) * D;
            float s = 0, dp = 0;
            for (int64_t d = 0; d < D; d++) {
                s += q[d] * k[d];
                dp += dout[d] * v[d];
            }
            float p = expf(s * a->scale - a->lse_in[i]), ds = p * (dp - di);
            a->pw[i * P + j] = p;
            a->ds[i * P + j] = ds;
            if (a->dq)
                for (int64_t d = 0; d < D; d++)
                    a->dq[i * D + d] += a->scale * ds * k[d];
        }
    }
}

/* Per (prefix set, position, kv head): dpk += scale sum ds q, dpv += sum p dout over every token
 * of the set and every query head of the group (one task owns one output row: no races,
 * thread-count free). */
static void bwd_kv_range(void *arg, int64_t begin, int64_t end, int tid)
{
    (void)tid;
    const struct pre_args *a = arg;
    int64_t D = a->D, P = a->P, group = a->H / a->Hkv;
    for (int64_t r = begin; r < end; r++) {
        int64_t j = r / a->Hkv % P, g = r % a->Hkv, per = a->N / a->R, set = r / (P * a->Hkv);
        float *dk = a->dpk ? a->dpk + r * D : NULL, *dv = a->dpv ? a->dpv + r * D : NULL;
        for (int64_t n = set * per; n < (set + 1) * per; n++)
            for (int64_t h = g * group; h < (g + 1) * group; h++) {
                int64_t i = n * a->H + h;
                float p = a->pw[i * P + j], ds = a->ds[i * P + j] * a->scale;
                const float *q = a->q + i * D, *dout = a->dout + i * D;
                if (dk)
                    for (int64_t d = 0; d < D; d++)
                        dk[d] += ds * q[d];
                if (dv)
                    for (int64_t d = 0; d < D; d++)
                        dv[d] += p * dout[d];
            }
    }
}

ftk_status cpu_attention_prefix_backward(void *ctx, float *dq, float *dpk, float *dpv, const float *dout,
                                         const float *q, const float *pk, const float *pv, const float *o,
                                         const float *lse, int64_t N, int64_t R, int64_t P, int64_t H, int64_t Hkv,
                                         int64_t D, float scale)
{
    struct cpu_ctx *c = ctx;
    FTK_FAIL_IF(N <= 0 || R <= 0 || N % R || P < 0 || H <= 0 || Hkv <= 0 || H % Hkv || D <= 0, FTK_E_INVALID,
                "attention_prefix_backward: bad shape N=%lld R=%lld P=%lld H=%lld Hkv=%lld D=%lld", (long long)N,
                (long long)R, (long long)P, (long long)H, (long long)Hkv, (long long)D);
    if (P == 0)
        return FTK_OK;
    float *pw = cpu_scratch(c, (size_t)(2 * N * H * P) * sizeof(float));
    FTK_FAIL_IF(!pw, FTK_E_NOMEM, "attention_prefix_backward: out of memory");
    struct pre_args a = {.dq = dq, .dpk = dpk, .dpv = dpv, .pw = pw, .ds = pw + N * H * P, .q = q, .pk = pk,
                         .pv = pv, .dout = dout, .o_in = o, .lse_in = lse, .N = N, .R = R, .P = P, .H = H,
                         .Hkv = Hkv, .D = D, .scale = scale};
    cpu_for(c, N * H, 16, bwd_q_range, &a);
    if (dpk || dpv)
        cpu_for(c, R * P * Hkv, 1, bwd_kv_range, &a);
    return FTK_OK;
}
