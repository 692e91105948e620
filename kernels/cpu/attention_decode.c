/* kernels/cpu/attention_decode.c: one query token per row against a KV cache (generation).
 * q (B,H,D), kc vc (B,S,Hkv,D), len (B) -> o (B,H,D); query head h reads kv head h/(H/Hkv).
 * Softmax in F32 with the row maximum subtracted, as attention_forward does. */
#include <math.h>
#include <stdlib.h>
#include "cpu.h"

struct dec_args {
    float *o;
    const float *q, *kc, *vc;
    const int32_t *len;
    int64_t S, H, Hkv, D;
    float scale;
};

/* One (row, head) pair per index: b = i / H, h = i % H. */
static void dec_range(void *arg, int64_t begin, int64_t end, int tid)
{
    (void)tid;
    const struct dec_args *a = arg;
    int64_t D = a->D, group = a->H / a->Hkv;
    for (int64_t i = begin; i < end; i++) {
        int64_t b = i / a->H, h = i % a->H, kvh = h / group, n = a->len[b];
        const float *q = a->q + (b * a->H + h) * D;
        float *o = a->o + (b * a->H + h) * D;
        float *w = malloc((size_t)(n > 0 ? n : 1) * sizeof *w);
        if (!w)
            continue;   /* reported by the caller's check below */
        float mx = -INFINITY;
        for (int64_t t = 0; t < n; t++) {
            const float *k = a->kc + ((b * a->S + t) * a->Hkv + kvh) * D;
            float s = 0;
            for (int64_t d = 0; d < D; d++)
                s += q[d] * k[d];
            w[t] = s * a->scale;
            if (w[t] > mx)
                mx = w[t];
        }
        float sum = 0;
        for (int64_t t = 0; t < n; t++) {
            w[t] = expf(w[t] - mx);
            sum += w[t];
        }
        for (int64_t d = 0; d < D; d++)
            o[d] = 0;
        for (int64_t t = 0; t < n; t++) {
            const float *v = a->vc + ((b * a->S + t) * a->Hkv + kvh) * D;
            float p = w[t] / sum;
            for (int64_t d = 0; d < D; d++)
                o[d] += p * v[d];
        }
        free(w);
    }
}

ftk_status cpu_attention_decode(void *ctx, float *o, const float *q, const float *kc, const float *vc,
                                const int32_t *len, int64_t B, int64_t S, int64_t H, int64_t Hkv, int64_t D, float scale)
{
    struct cpu_ctx *c = ctx;
    FTK_FAIL_IF(B <= 0 || H <= 0 || Hkv <= 0 || H % Hkv || D <= 0, FTK_E_INVALID,
                "attention_decode: bad shape B=%lld H=%lld Hkv=%lld D=%lld", (long long)B, (long long)H, (long long)Hkv, (long long)D);
    for (int64_t b = 0; b < B; b++)
        FTK_FAIL_IF(len[b] < 1 || len[b] > S, FTK_E_INVALID, "attention_decode: row %lld has %d cached positions (capacity %lld)",
                    (long long)b, len[b], (long long)S);
    struct dec_args a = {o, q, kc, vc, len, S, H, Hkv, D, scale};
    ftk_threads_for(c->pool, B * H, 1, dec_range, &a);
    return FTK_OK;
}
