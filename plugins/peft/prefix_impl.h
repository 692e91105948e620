/* plugins/peft/prefix_impl.h: the prefix of prefix tuning as peft 0.21 builds it for causal LMs
 * (peft/tuners/prefix_tuning/model.py PrefixEncoder): P learned keys and values per layer that
 * the core's attn_kv hook shows every query. Static functions, included by the plugins built on
 * it (prefix_tuning.c; mam.c and unipelt.c, whose prefixes are He et al.'s and Mao et al.'s: the
 * same MLP reparameterisation).
 *
 * The prefix of virtual token p is one vector of S*TD numbers, S = 2L, TD = Hkv*D (peft's
 * token_dim for GQA models), laid out [layer][key, value][head][dim]: layer l's keys are slice
 * 2l, its values slice 2l+1.
 *   projection off (P-tuning v2): the prefix is the parameter NAMESembedding.weight (P, S*TD),
 *       N(0,1) init (nn.Embedding).
 *   projection on (prefix tuning): prefix = tanh(E W1^T + b1) W2^T + b2 with
 *       E = NAMESembedding.weight (P,TD) N(0,1), W1 = NAMEStransform.0.weight (Enc,TD),
 *       W2 = NAMEStransform.2.weight (S*TD,Enc), biases b1 (Enc), b2 (S*TD); nn.Linear init
 *       U(+-1/sqrt(fan_in)), ftk's own seeded draws. Enc = the encoder width.
 * NAMES is the plugin's prefix for the parameter names ("prompt_encoder.", peft's module).
 *
 * Compute: backend gemm and linear_*; the tanh (P x Enc numbers once per forward and backward)
 * goes through host memory with to_host/to_device, so any backend works. */
#ifndef FTK_PREFIX_IMPL_H
#define FTK_PREFIX_IMPL_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include "ftk/plugin.h"
#include "param_table.h"

#define PX_MAX_TOKENS 100000

struct px_prefix {
    int64_t P, L, S, TD, E;
    int projection;              /* prefix_projection as configured (saved as such) */
    int mlp;                     /* 1: the MLP trains (projection, not inference_mode) */
    int zero_init;               /* init_weights=zero */
    float *emb, *gemb;           /* mlp: (P,TD); else (P,S*TD) */
    float *w1, *gw1, *b1, *gb1;  /* mlp: (E,TD), (E) */
    float *w2, *gw2, *b2, *gb2;  /* mlp: (S*TD,E), (S*TD) */
    float *kv, *dkv;             /* (S,P,TD) the prefix by slice, and its gradient from the core */
    float *h, *dh;               /* mlp: (P,E) tanh output, its gradient */
    float *eye, *ones;           /* (P,P) identity, (P) ones */
    float *host;                 /* host scratch, 2 P E floats */
};

/* splitmix64: init draws that depend only on (seed, tensor, index) */
static inline uint64_t px_mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
static inline double px_u01(uint64_t h) { return (double)(h >> 11) * (1.0 / 9007199254740992.0); }

/* n values into backend memory dst: N(0,1) (gauss) or U(-bound, bound); zero: all 0. */
static inline ftk_status px_init_tensor(struct ftk_peft *p, float *dst, int64_t n, int which, int gauss, double bound,
                                        int zero)
{
    if (zero)
        return FTK_OK;   /* ftk_peft_add_param memory starts zeroed */
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    float *host = malloc((size_t)n * sizeof *host);
    FTK_FAIL_IF(!host, FTK_E_NOMEM, "out of memory");
    uint64_t seed = ftk_peft_seed(p);
    for (int64_t j = 0; j < n; j++) {
        uint64_t h = px_mix(seed ^ px_mix((uint64_t)which * 0x10001 + 7) ^ px_mix((uint64_t)j));
        if (gauss) {   /* Box-Muller */
            double u1 = px_u01(h), u2 = px_u01(px_mix(h));
            host[j] = (float)(sqrt(-2.0 * log(u1 > 0 ? u1 : 1e-300)) * cos(2 * M_PI * u2));
        } else {
            host[j] = (float)((2 * px_u01(h) - 1) * bound);
        }
    }
    ftk_status st = be->to_device(ctx, dst, host, (size_t)n * sizeof *host);
    free(host);
    return st;
}

static inline ftk_status px_scratch(struct ftk_peft *p, float **dst, int64_t n)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    return be->alloc(ctx, (size_t)n * sizeof(float), (void **)dst);
}

/* The options every prefix takes: num_virtual_tokens, prefix_projection, encoder_hidden_size
 * (defaults given; def_E <= 0: token_dim), into S's P, L, S, TD, E, projection. */
static inline ftk_status px_options(const struct ftk_kv *o, const struct ftk_model_config *c, const char *plugin,
                                    int64_t def_P, int def_projection, int64_t def_E, struct px_prefix *S)
{
    S->L = c->L;
    S->S = 2 * c->L;
    S->TD = c->Hkv * c->D;
    FTK_TRY(ftk_kv_int(o, "num_virtual_tokens", def_P, &S->P));
    FTK_FAIL_IF(S->P < 1 || S->P > PX_MAX_TOKENS, FTK_E_INVALID, "%s: num_virtual_tokens = %lld (1 to %d)", plugin,
                (long long)S->P, PX_MAX_TOKENS);
    FTK_TRY(ftk_kv_bool(o, "prefix_projection", def_projection, &S->projection));
    FTK_TRY(ftk_kv_int(o, "encoder_hidden_size", def_E > 0 ? def_E : S->TD, &S->E));
    FTK_FAIL_IF(S->E < 1 || S->E > (1 << 20), FTK_E_INVALID, "%s: encoder_hidden_size = %lld", plugin, (long long)S->E);
    return FTK_OK;
}

/* px_options' keys as adapter_config.json has them, into object o. */
static inline void px_config_json(const struct px_prefix *S, cJSON *o)
{
    cJSON_AddNumberToObject(o, "num_virtual_tokens", (double)S->P);
    cJSON_AddBoolToObject(o, "prefix_projection", S->projection);
    cJSON_AddNumberToObject(o, "encoder_hidden_size", (double)S->E);
}

/* A parameter of the prefix: NAMES + what, registered (weight decay unless a bias), listed in t. */
static inline ftk_status px_param(struct ftk_peft *p, struct ptab *t, const char *names, const char *what, int nd,
                                  int64_t d0, int64_t d1, float **w, float **g)
{
    char name[256];
    snprintf(name, sizeof name, "%s%s", names, what);
    return ptab_add(p, t, name, nd, d0, d1, !strstr(what, "bias"), w, g);
}

/* Registers (listing them in t, when not NULL) and initialises the parameters (S's shapes, mlp
 * and zero_init set) and allocates the scratch. */
static inline ftk_status px_create(struct ftk_peft *p, struct px_prefix *S, const char *names, struct ptab *t)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t P = S->P, TD = S->TD, E = S->E, W = S->S * TD;
    if (S->mlp) {   /* peft PrefixEncoder with the projection, as torch initialises it */
        FTK_TRY(px_param(p, t, names, "embedding.weight", 2, P, TD, &S->emb, &S->gemb));
        FTK_TRY(px_param(p, t, names, "transform.0.weight", 2, E, TD, &S->w1, &S->gw1));
        FTK_TRY(px_param(p, t, names, "transform.0.bias", 1, E, 1, &S->b1, &S->gb1));
        FTK_TRY(px_param(p, t, names, "transform.2.weight", 2, W, E, &S->w2, &S->gw2));
        FTK_TRY(px_param(p, t, names, "transform.2.bias", 1, W, 1, &S->b2, &S->gb2));
        FTK_TRY(px_init_tensor(p, S->emb, P * TD, 0, 1, 0, 0));
        FTK_TRY(px_init_tensor(p, S->w1, E * TD, 1, 0, 1.0 / sqrt((double)TD), 0));
        FTK_TRY(px_init_tensor(p, S->b1, E, 2, 0, 1.0 / sqrt((double)TD), 0));
        FTK_TRY(px_init_tensor(p, S->w2, W * E, 3, 0, 1.0 / sqrt((double)E), S->zero_init));
        FTK_TRY(px_init_tensor(p, S->b2, W, 4, 0, 1.0 / sqrt((double)E), S->zero_init));
        FTK_TRY(px_scratch(p, &S->h, P * E));
        FTK_TRY(px_scratch(p, &S->dh, P * E));
        S->host = malloc((size_t)(2 * P * E) * sizeof *S->host);
        FTK_FAIL_IF(!S->host, FTK_E_NOMEM, "out of memory");
    } else {
        FTK_TRY(px_param(p, t, names, "embedding.weight", 2, P, W, &S->emb, &S->gemb));
        FTK_TRY(px_init_tensor(p, S->emb, P * W, 0, 1, 0, S->zero_init));
    }
    FTK_TRY(px_scratch(p, &S->kv, S->S * P * TD));
    FTK_TRY(px_scratch(p, &S->dkv, S->S * P * TD));
    FTK_TRY(px_scratch(p, &S->eye, P * P));
    FTK_TRY(px_scratch(p, &S->ones, P));
    float *h = calloc((size_t)(P * P), sizeof *h);
    FTK_FAIL_IF(!h, FTK_E_NOMEM, "out of memory");
    for (int64_t i = 0; i < P; i++)
        h[i * P + i] = 1.0f;
    ftk_status st = be->to_device(ctx, S->eye, h, (size_t)(P * P) * sizeof *h);
    for (int64_t i = 0; i < P; i++)
        h[i] = 1.0f;
    if (st == FTK_OK)
        st = be->to_device(ctx, S->ones, h, (size_t)P * sizeof *h);
    free(h);
    return st;
}

/* kv (S,P,TD) from the parameters. */
static inline ftk_status px_compute(struct ftk_peft *p, struct px_prefix *S)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t P = S->P, TD = S->TD, E = S->E, W = S->S * TD;
    if (!S->mlp) {   /* slice s of each row: kv_s (P,TD) = I (P,P) emb[:, s TD : (s+1) TD] */
        for (int64_t s = 0; s < S->S; s++)
            FTK_TRY(be->gemm(ctx, 0, 0, P, TD, P, 1.0f, S->eye, P, S->emb + s * TD, W, 0.0f, S->kv + s * P * TD, TD));
        return FTK_OK;
    }
    /* h (P,E) = tanh(emb W1^T + b1) */
    FTK_TRY(be->linear_forward(ctx, S->h, S->emb, S->w1, S->b1, P, TD, E));
    FTK_TRY(be->to_host(ctx, S->host, S->h, (size_t)(P * E) * sizeof(float)));
    for (int64_t i = 0; i < P * E; i++)
        S->host[i] = tanhf(S->host[i]);
    FTK_TRY(be->to_device(ctx, S->h, S->host, (size_t)(P * E) * sizeof(float)));
    /* kv_s (P,TD) = h W2[s TD : (s+1) TD, :]^T + ones b2[s TD : (s+1) TD] */
    for (int64_t s = 0; s < S->S; s++) {
        float *kv = S->kv + s * P * TD;
        FTK_TRY(be->gemm(ctx, 0, 1, P, TD, E, 1.0f, S->h, E, S->w2 + s * TD * E, E, 0.0f, kv, TD));
        FTK_TRY(be->gemm(ctx, 0, 0, P, TD, 1, 1.0f, S->ones, 1, S->b2 + s * TD, TD, 1.0f, kv, TD));
    }
    return FTK_OK;
}

/* forward_begin: the prefix of this forward; in training its gradient starts at 0. */
static inline ftk_status px_forward_begin(struct ftk_peft *p, struct px_prefix *S, int train)
{
    FTK_TRY(px_compute(p, S));
    if (!train)
        return FTK_OK;
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    return be->zero(ctx, S->dkv, (size_t)(S->S * S->P * S->TD) * sizeof(float));
}

/* backward_end: dkv (S,P,TD), collected by the core, into the parameters' gradients. */
static inline ftk_status px_backward_end(struct ftk_peft *p, struct px_prefix *S)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t P = S->P, TD = S->TD, E = S->E, W = S->S * TD;
    if (!S->mlp) {   /* gemb[:, s TD : (s+1) TD] += dkv_s */
        for (int64_t s = 0; s < S->S; s++)
            FTK_TRY(be->gemm(ctx, 0, 0, P, TD, P, 1.0f, S->eye, P, S->dkv + s * P * TD, TD, 1.0f, S->gemb + s * TD, W));
        return FTK_OK;
    }
    for (int64_t s = 0; s < S->S; s++) {
        const float *dkv = S->dkv + s * P * TD;
        /* dh (P,E) = sum_s dkv_s W2_s;  gW2_s (TD,E) += dkv_s^T h;  gb2_s (TD) += ones^T dkv_s */
        FTK_TRY(be->gemm(ctx, 0, 0, P, E, TD, 1.0f, dkv, TD, S->w2 + s * TD * E, E, s ? 1.0f : 0.0f, S->dh, E));
        FTK_TRY(be->gemm(ctx, 1, 0, TD, E, P, 1.0f, dkv, TD, S->h, E, 1.0f, S->gw2 + s * TD * E, E));
        FTK_TRY(be->gemm(ctx, 1, 0, 1, TD, P, 1.0f, S->ones, 1, dkv, TD, 1.0f, S->gb2 + s * TD, TD));
    }
    /* through tanh: dpre = dh (1 - h^2), then the first linear */
    float *hh = S->host, *dd = S->host + P * E;
    FTK_TRY(be->to_host(ctx, hh, S->h, (size_t)(P * E) * sizeof(float)));
    FTK_TRY(be->to_host(ctx, dd, S->dh, (size_t)(P * E) * sizeof(float)));
    for (int64_t i = 0; i < P * E; i++)
        dd[i] *= 1.0f - hh[i] * hh[i];
    FTK_TRY(be->to_device(ctx, S->dh, dd, (size_t)(P * E) * sizeof(float)));
    return be->linear_backward(ctx, S->gemb, S->gw1, S->gb1, S->dh, S->emb, S->w1, P, TD, E);
}

/* attn_prefix: layer l's keys and values (P,Hkv,D) and where their gradients go. */
static inline ftk_status px_layer(struct px_prefix *S, const char *plugin, int layer, int64_t *P, const float **pk,
                                  const float **pv, float **dpk, float **dpv)
{
    FTK_FAIL_IF(layer < 0 || layer >= S->L, FTK_E_INVALID, "%s: layer %d of %lld", plugin, layer, (long long)S->L);
    int64_t n = S->P * S->TD;
    *P = S->P;
    *pk = S->kv + (2 * layer) * n;
    *pv = S->kv + (2 * layer + 1) * n;
    *dpk = S->dkv + (2 * layer) * n;
    *dpv = S->dkv + (2 * layer + 1) * n;
    return FTK_OK;
}

/* The prefix as peft saves it: (P, S*TD) in host memory `out`. */
static inline ftk_status px_prompt_embeddings(struct ftk_peft *p, struct px_prefix *S, float *out)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t P = S->P, TD = S->TD, W = S->S * TD;
    float *kv = malloc((size_t)(P * W) * sizeof *kv);
    FTK_FAIL_IF(!kv, FTK_E_NOMEM, "out of memory");
    ftk_status st = px_compute(p, S);
    if (st == FTK_OK)
        st = be->to_host(ctx, kv, S->kv, (size_t)(P * W) * sizeof *kv);
    for (int64_t s = 0; st == FTK_OK && s < S->S; s++)
        for (int64_t i = 0; i < P; i++)
            memcpy(out + i * W + s * TD, kv + (s * P + i) * TD, (size_t)TD * sizeof *kv);
    free(kv);
    return st;
}

static inline void px_release(struct ftk_peft *p, struct px_prefix *S)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    be->free(ctx, S->kv);
    be->free(ctx, S->dkv);
    be->free(ctx, S->h);
    be->free(ctx, S->dh);
    be->free(ctx, S->eye);
    be->free(ctx, S->ones);
    free(S->host);
}

#endif
