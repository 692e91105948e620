/* plugins/peft/bottleneck_impl.h: bottleneck adapter modules as adapter-transformers (the
 * `adapters` package, methods/modeling.py Adapter/ParallelAdapter, configuration BnConfig) defines
 * them, placed where its Llama integration places them (models/llama/modeling_llama.py: the
 * attention_adapters after self_attn's o_proj, the output_adapters after the MLP's down_proj, each
 * given h = the sublayer's output and the residual stream `resid` that entered the sublayer, with
 * no layer norm). Static functions, included by the plugins built on them (bottleneck.c,
 * adapter_fusion.c, pals.c; mam.c and unipelt.c use a bn_set, the hook glue at the end).
 *
 * One module (one layer, one location), C channels, m bottleneck, N rows:
 *   u (N,C)  the adapter's input:  h (Houlsby), h + resid (Pfeiffer: original_ln_before),
 *            resid (parallel, as adapters' ParallelAdapter) or x, the normed input the sublayer
 *            read (parallel_input=normed, He et al.'s "x" read literally)
 *   z = u Wd^T + bd (N,m),  a = act(z),  y = s * (a Wu^T + bu) (N,C),  h' = h + dropout(y)
 * Wd (m,C) adapter_down.0, Wu (C,m) adapter_up, s a float, a learned scalar or a per-channel
 * vector (scaling "learned"/"channel"). Tensor names are adapters' Llama state-dict names:
 *   model.layers.L.{attention,output}_adapters.adapters.NAME.adapter_{down.0,up}.{weight,bias}
 * (and .scaling for learned/channel scaling, adapters' nn.Parameter of that name).
 *
 * Matrix work goes through the backend (linear_forward/backward, gemm, axpy, scale, copy); the
 * activation, dropout and learned scaling run on the host: the CPU backend only for now (the
 * plugins refuse another backend by name). Randomness (init, dropout, AdapterDrop) comes from
 * splitmix64 of (seed, step, layer, location, index), never a running generator. */
#ifndef FTK_BOTTLENECK_IMPL_H
#define FTK_BOTTLENECK_IMPL_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include "ftk/plugin.h"
#include "param_table.h"

#define BN_MAX_LAYERS 64

enum bn_act { BN_RELU, BN_GELU, BN_GELU_NEW, BN_SWISH, BN_TANH, BN_SIGMOID, BN_LINEAR };
enum bn_input { BN_IN_H, BN_IN_H_RESID, BN_IN_RESID, BN_IN_X };
enum bn_scaling { BN_SCALE_FIXED, BN_SCALE_LEARNED, BN_SCALE_CHANNEL };
enum bn_init { BN_INIT_MAM, BN_INIT_BERT, BN_INIT_HOULSBY };
enum { BN_ATTN = 0, BN_MLP = 1 };   /* locations: FTK_SUB_ATTN, FTK_SUB_MLP */

struct bn_config {
    char config[16];           /* "houlsby", "pfeiffer", "parallel" */
    int loc[2];                /* mh_adapter (after attention), output_adapter (after the MLP) */
    int parallel;              /* is_parallel */
    int ln_before_orig;        /* original_ln_before: a sequential adapter reads h + resid */
    int normed_input;          /* parallel_input=normed: a parallel adapter reads x, not resid */
    enum bn_input input;
    double reduction_factor;
    int64_t m;                 /* bottleneck size: bottleneck_size, or int(C // reduction_factor) */
    enum bn_act act;
    char act_name[16];
    enum bn_scaling scaling_kind;
    double scaling;            /* BN_SCALE_FIXED */
    enum bn_init init;
    double dropout;            /* on y, in training */
    uint64_t leave_out;        /* bit l: no adapter in layer l */
    int64_t drop_layers;       /* AdapterDrop: the first n layers run without adapters */
    int drop_robust;           /* robust AdapterDrop: n drawn per training step from {0..L-1} */
    char name[64];             /* adapter name inside tensor names */
};

/* One module's parameters (backend memory); gradients NULL when frozen (AdapterFusion). */
struct bn_module {
    float *Wd, *bd, *Wu, *bu, *s;
    float *gWd, *gbd, *gWu, *gbu, *gs;
};

/* ---- randomness --------------------------------------------------------------------------- */

static inline uint64_t bn_mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
static inline double bn_u01(uint64_t h) { return (double)(h >> 11) * (1.0 / 9007199254740992.0); }
static inline double bn_normal(uint64_t h)
{
    double u1 = bn_u01(h), u2 = bn_u01(bn_mix(h));
    return sqrt(-2.0 * log(u1 > 0 ? u1 : 1e-300)) * cos(2 * M_PI * u2);
}
/* Key of (seed, a, b, c): every draw is a function of where it is used. */
static inline uint64_t bn_key(uint64_t seed, uint64_t a, uint64_t b, uint64_t c)
{
    return bn_mix(seed ^ bn_mix(a * 0x100000001B3ull + 17) ^ bn_mix(b * 0x9E37ull + 29) ^ bn_mix(c + 41));
}

/* ---- activations (transformers' ACT2FN, which adapters uses) ------------------------------- */

static const struct { const char *name; enum bn_act act; } bn_acts[] __attribute__((unused)) = {
    {"relu", BN_RELU}, {"gelu", BN_GELU}, {"gelu_new", BN_GELU_NEW}, {"gelu_pytorch_tanh", BN_GELU_NEW},
    {"swish", BN_SWISH}, {"silu", BN_SWISH}, {"tanh", BN_TANH}, {"sigmoid", BN_SIGMOID}, {"linear", BN_LINEAR},
};

static inline int bn_act_parse(const char *s, enum bn_act *out)
{
    for (size_t i = 0; i < sizeof bn_acts / sizeof *bn_acts; i++)
        if (!strcmp(s, bn_acts[i].name)) {
            *out = bn_acts[i].act;
            return 1;
        }
    return 0;
}

#define BN_GELU_K 0.7978845608028654   /* sqrt(2/pi) */
static inline double bn_act_f(enum bn_act f, double z)
{
    switch (f) {
    case BN_RELU: return z > 0 ? z : 0;
    case BN_GELU: return 0.5 * z * (1 + erf(z * M_SQRT1_2));
    case BN_GELU_NEW: return 0.5 * z * (1 + tanh(BN_GELU_K * (z + 0.044715 * z * z * z)));
    case BN_SWISH: return z / (1 + exp(-z));
    case BN_TANH: return tanh(z);
    case BN_SIGMOID: return 1 / (1 + exp(-z));
    case BN_LINEAR: return z;
    }
    return z;
}
static inline double bn_act_df(enum bn_act f, double z)
{
    switch (f) {
    case BN_RELU: return z > 0 ? 1 : 0;   /* torch: relu'(0) = 0 */
    case BN_GELU: return 0.5 * (1 + erf(z * M_SQRT1_2)) + z * exp(-0.5 * z * z) / sqrt(2 * M_PI);
    case BN_GELU_NEW: {
        double t = tanh(BN_GELU_K * (z + 0.044715 * z * z * z));
        return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * BN_GELU_K * (1 + 3 * 0.044715 * z * z);
    }
    case BN_SWISH: {
        double sg = 1 / (1 + exp(-z));
        return sg * (1 + z * (1 - sg));
    }
    case BN_TANH: {
        double t = tanh(z);
        return 1 - t * t;
    }
    case BN_SIGMOID: {
        double sg = 1 / (1 + exp(-z));
        return sg * (1 - sg);
    }
    case BN_LINEAR: return 1;
    }
    return 1;
}

/* ---- options ------------------------------------------------------------------------------ */

/* A layer list "0,3,5" (adapters' leave_out) into bits; FTK_E_INVALID naming the key. */
static inline ftk_status bn_layer_bits(const char *key, const char *v, int64_t L, uint64_t *out)
{
    *out = 0;
    if (!v)
        return FTK_OK;
    char buf[512];
    snprintf(buf, sizeof buf, "%s", v);
    for (char *save = NULL, *t = strtok_r(buf, ", []", &save); t; t = strtok_r(NULL, ", []", &save)) {
        char *end;
        long l = strtol(t, &end, 10);
        FTK_FAIL_IF(*end || l < 0 || l >= L || l >= BN_MAX_LAYERS, FTK_E_INVALID,
                    "%s: \"%s\" is not a layer of this model (0..%lld)", key, t, (long long)L - 1);
        *out |= 1ull << l;
    }
    return FTK_OK;
}

/* Keys the bottleneck options take (adapters' BnConfig names, ftk's additions), and the keys an
 * adapter_config.json carries besides (peft's). Anything else is refused as a typo. */
static const char *const bn_keys[] __attribute__((unused)) = {
    "config", "architecture", "mh_adapter", "output_adapter", "is_parallel", "original_ln_before", "parallel_input",
    "reduction_factor", "bottleneck_size", "non_linearity", "scaling", "init_weights", "dropout", "leave_out",
    "adapter_drop_layers", "adapter_drop_robust", "adapter_name", "original_ln_after", "residual_before_ln",
    "adapter_residual_before_ln", "ln_before", "ln_after", "use_gating", "phm_layer", "inv_adapter", "cross_adapter",
    "stochastic_depth", "init_weights_seed", NULL};
static const char *const bn_file_keys[] __attribute__((unused)) = {
    "peft_type", "task_type", "base_model_name_or_path", "inference_mode", "revision", "format", NULL};

static inline int bn_in(const char *const *list, const char *k)
{
    for (int i = 0; list[i]; i++)
        if (!strcmp(list[i], k))
            return 1;
    return 0;
}

/* Every key of o must be in one of the NULL-ended lists a, b, c (c may be NULL). */
static inline ftk_status bn_check_keys(const struct ftk_kv *o, const char *plugin, const char *const *a, const char *const *b,
                                const char *const *c)
{
    for (int i = 0; o && o[i].key; i++)
        FTK_FAIL_IF(!bn_in(a, o[i].key) && !bn_in(b, o[i].key) && !(c && bn_in(c, o[i].key)), FTK_E_INVALID,
                    "%s: unknown option \"%s\"", plugin, o[i].key);
    return FTK_OK;
}

/* A boolean option that ftk supports only at one value. */
static inline ftk_status bn_fixed_bool(const struct ftk_kv *o, const char *key, int want, const char *why)
{
    int v;
    FTK_TRY(ftk_kv_bool(o, key, want, &v));
    FTK_FAIL_IF(v != want, FTK_E_UNSUPPORTED, "%s=%s is not supported%s", key, v ? "true" : "false", why);
    return FTK_OK;
}

/* Parses the options of one bottleneck adapter (adapters' BnConfig keys; defaults from
 * `config`: houlsby = DoubleSeqBnConfig, pfeiffer = SeqBnConfig, parallel = ParBnConfig) for a
 * model of C channels and L layers. Does not check for unknown keys (bn_check_keys does). */
static inline ftk_status bn_config_parse(const struct ftk_kv *o, int64_t C, int64_t L, struct bn_config *c)
{
    memset(c, 0, sizeof *c);
    const char *cf = ftk_kv_get(o, "config");
    cf = cf ? cf : "pfeiffer";
    if (!strcmp(cf, "houlsby") || !strcmp(cf, "double_seq_bn"))
        snprintf(c->config, sizeof c->config, "houlsby");
    else if (!strcmp(cf, "pfeiffer") || !strcmp(cf, "seq_bn"))
        snprintf(c->config, sizeof c->config, "pfeiffer");
    else if (!strcmp(cf, "parallel") || !strcmp(cf, "par_bn"))
        snprintf(c->config, sizeof c->config, "parallel");
    else
        FTK_FAIL(FTK_E_INVALID, "config=%s: expected houlsby (double_seq_bn), pfeiffer (seq_bn) or parallel (par_bn)", cf);
    int hou = c->config[0] == 'h', par = c->config[1] == 'a';
    const char *arch = ftk_kv_get(o, "architecture");
    FTK_FAIL_IF(arch && strcmp(arch, "bottleneck"), FTK_E_UNSUPPORTED, "architecture=%s: this plugin is bottleneck adapters", arch);

    FTK_TRY(ftk_kv_bool(o, "mh_adapter", hou, &c->loc[BN_ATTN]));
    FTK_TRY(ftk_kv_bool(o, "output_adapter", 1, &c->loc[BN_MLP]));
    FTK_FAIL_IF(!c->loc[BN_ATTN] && !c->loc[BN_MLP], FTK_E_INVALID, "mh_adapter and output_adapter are both false: no adapter");
    FTK_TRY(ftk_kv_bool(o, "is_parallel", par, &c->parallel));
    FTK_TRY(ftk_kv_bool(o, "original_ln_before", !hou && !par, &c->ln_before_orig));
    const char *pin = ftk_kv_get(o, "parallel_input");
    pin = pin ? pin : "residual";
    FTK_FAIL_IF(strcmp(pin, "residual") && strcmp(pin, "normed"), FTK_E_INVALID,
                "parallel_input=%s: expected residual (adapters' ParallelAdapter) or normed (the sublayer's normed input)", pin);
    c->normed_input = !strcmp(pin, "normed");
    c->input = c->parallel ? (c->normed_input ? BN_IN_X : BN_IN_RESID) : (c->ln_before_orig ? BN_IN_H_RESID : BN_IN_H);

    const char *rf = ftk_kv_get(o, "reduction_factor");
    FTK_FAIL_IF(rf && rf[0] == '{', FTK_E_UNSUPPORTED, "reduction_factor as a per-layer mapping (%s) is not supported", rf);
    FTK_TRY(ftk_kv_double(o, "reduction_factor", par ? 2.0 : 16.0, &c->reduction_factor));
    FTK_FAIL_IF(!(c->reduction_factor > 0), FTK_E_INVALID, "reduction_factor=%g must be > 0", c->reduction_factor);
    int64_t m = (int64_t)floor((double)C / c->reduction_factor);   /* adapters: int(hidden // rf) */
    FTK_TRY(ftk_kv_int(o, "bottleneck_size", m < 1 ? 1 : m, &c->m));
    FTK_FAIL_IF(c->m < 1 || c->m > 1 << 20, FTK_E_INVALID, "bottleneck_size=%lld must be in [1, 2^20]", (long long)c->m);

    const char *act = ftk_kv_get(o, "non_linearity");
    act = act ? act : hou ? "swish" : "relu";
    char lower[16];
    size_t i = 0;
    for (; act[i] && i + 1 < sizeof lower; i++)
        lower[i] = (char)(act[i] >= 'A' && act[i] <= 'Z' ? act[i] + 32 : act[i]);
    lower[i] = '\0';
    FTK_FAIL_IF(!bn_act_parse(lower, &c->act), FTK_E_INVALID,
                "non_linearity=%s: expected relu, gelu, gelu_new, swish (silu), tanh, sigmoid or linear", act);
    snprintf(c->act_name, sizeof c->act_name, "%s", lower);

    const char *sc = ftk_kv_get(o, "scaling");
    if (sc && !strcmp(sc, "learned"))
        c->scaling_kind = BN_SCALE_LEARNED;
    else if (sc && !strcmp(sc, "channel"))
        c->scaling_kind = BN_SCALE_CHANNEL;
    else {
        FTK_TRY(ftk_kv_double(o, "scaling", par ? 4.0 : 1.0, &c->scaling));
        FTK_FAIL_IF(!isfinite(c->scaling), FTK_E_INVALID, "scaling=%s: a number, learned or channel", sc);
    }
    const char *in = ftk_kv_get(o, "init_weights");
    if (!in || !strcmp(in, "mam_adapter") || !strcmp(in, "lora"))
        c->init = BN_INIT_MAM;
    else if (!strcmp(in, "bert"))
        c->init = BN_INIT_BERT;
    else if (!strcmp(in, "houlsby"))
        c->init = BN_INIT_HOULSBY;
    else
        FTK_FAIL(FTK_E_INVALID, "init_weights=%s: expected mam_adapter (up-projection zero), bert or houlsby", in);
    FTK_TRY(ftk_kv_double(o, "dropout", 0.0, &c->dropout));
    FTK_FAIL_IF(!(c->dropout >= 0 && c->dropout < 1), FTK_E_INVALID, "dropout=%g must be in [0, 1)", c->dropout);
    FTK_TRY(bn_layer_bits("leave_out", ftk_kv_get(o, "leave_out"), L, &c->leave_out));
    FTK_TRY(ftk_kv_int(o, "adapter_drop_layers", 0, &c->drop_layers));
    FTK_FAIL_IF(c->drop_layers < 0 || c->drop_layers > L, FTK_E_INVALID, "adapter_drop_layers=%lld must be in [0, %lld]",
                (long long)c->drop_layers, (long long)L);
    FTK_TRY(ftk_kv_bool(o, "adapter_drop_robust", 0, &c->drop_robust));
    const char *nm = ftk_kv_get(o, "adapter_name");
    nm = nm ? nm : "default";
    FTK_FAIL_IF(!*nm || strlen(nm) >= sizeof c->name || strpbrk(nm, ". /\""), FTK_E_INVALID,
                "adapter_name=\"%s\": 1 to %zu characters, no '.', '/', '\"' or space", nm, sizeof c->name - 1);
    snprintf(c->name, sizeof c->name, "%s", nm);

    /* what adapters can express and ftk does not do: refused, not ignored */
    FTK_TRY(bn_fixed_bool(o, "original_ln_after", 1, " (the residual add stays the model's)"));
    const char *rbl = ftk_kv_get(o, "residual_before_ln");
    FTK_FAIL_IF(rbl && strcmp(rbl, "true") && !(strcmp(rbl, "false") == 0 && !c->ln_before_orig), FTK_E_UNSUPPORTED,
                "residual_before_ln=%s is not supported (the adapter's residual is the sublayer output h)", rbl);
    FTK_TRY(bn_fixed_bool(o, "ln_before", 0, " (no new layer norm in the adapter)"));
    FTK_TRY(bn_fixed_bool(o, "ln_after", 0, " (no new layer norm in the adapter)"));
    FTK_TRY(bn_fixed_bool(o, "use_gating", 0, " (UniPELT's gates)"));
    FTK_TRY(bn_fixed_bool(o, "phm_layer", 0, " (Compacter)"));
    FTK_TRY(bn_fixed_bool(o, "cross_adapter", 0, " (no cross-attention in these models)"));
    const char *inv = ftk_kv_get(o, "inv_adapter");
    FTK_FAIL_IF(inv, FTK_E_UNSUPPORTED, "inv_adapter=%s (invertible adapters) is not supported", inv);
    double sd;
    FTK_TRY(ftk_kv_double(o, "stochastic_depth", 0.0, &sd));
    FTK_FAIL_IF(sd != 0, FTK_E_UNSUPPORTED, "stochastic_depth=%g is not supported", sd);
    FTK_FAIL_IF(ftk_kv_get(o, "init_weights_seed"), FTK_E_UNSUPPORTED,
                "init_weights_seed is not supported (ftk derives the init from the run's seed)");
    return FTK_OK;
}

/* The options of the one adapter a composed method puts after each MLP (the MAM adapter's
 * parallel adapter, UniPELT's Pfeiffer adapter): bn_config_parse of config `config` with
 * mh_adapter=false, bottleneck_size def_m unless o gives it or reduction_factor (def_m <= 0:
 * config's default), and the keys of o listed in `pass` as given. */
static inline ftk_status bn_config_after_mlp(const struct ftk_kv *o, const char *const *pass, const char *config,
                                             int64_t def_m, int64_t C, int64_t L, struct bn_config *c)
{
    struct ftk_kv kv[24];
    int n = 0;
    char m[32];
    kv[n++] = (struct ftk_kv){"config", config};
    kv[n++] = (struct ftk_kv){"mh_adapter", "false"};
    kv[n++] = (struct ftk_kv){"output_adapter", "true"};
    if (def_m > 0 && !ftk_kv_get(o, "bottleneck_size") && !ftk_kv_get(o, "reduction_factor")) {
        snprintf(m, sizeof m, "%lld", (long long)def_m);
        kv[n++] = (struct ftk_kv){"bottleneck_size", m};
    }
    for (int i = 0; pass[i] && n < 23; i++)
        if (ftk_kv_get(o, pass[i]))
            kv[n++] = (struct ftk_kv){pass[i], ftk_kv_get(o, pass[i])};
    kv[n] = (struct ftk_kv){NULL, NULL};
    return bn_config_parse(kv, C, L, c);
}

/* Has layer l a module at all (leave_out, fixed AdapterDrop without robust). */
static inline int bn_layer_has(const struct bn_config *c, int l)
{
    return !(c->leave_out >> l & 1) && (c->drop_robust || l >= c->drop_layers);
}

/* Does layer l's module run in this forward: AdapterDrop's n is adapter_drop_layers, or in
 * training with the robust variant a draw from {0..L-1} for the step. */
static inline int bn_layer_runs(const struct bn_config *c, int l, int64_t L, int train, uint64_t seed, int64_t step)
{
    if (!bn_layer_has(c, l))
        return 0;
    int64_t n = c->drop_layers;
    if (train && c->drop_robust)
        n = (int64_t)(bn_key(seed, (uint64_t)step, 0xD20Bu, 0) % (uint64_t)L);
    return l >= n;
}

/* The module's parameter names: model.layers.L.{attention,output}_adapters.adapters.NAME.WHAT */
static inline void bn_param_name(char *out, size_t n, int layer, int loc, const char *name, const char *what)
{
    snprintf(out, n, "model.layers.%d.%s_adapters.adapters.%s.%s", layer, loc == BN_ATTN ? "attention" : "output", name,
             what);
}

static const char *const bn_what[5] __attribute__((unused)) = {"adapter_down.0.weight", "adapter_down.0.bias", "adapter_up.weight",
                                       "adapter_up.bias", "scaling"};

/* Shape of tensor k (0..4) of a module; returns its ndim, 0 when absent (fixed scaling). */
static inline int bn_shape(const struct bn_config *c, int64_t C, int k, int64_t *d0, int64_t *d1)
{
    int64_t s0[5] = {c->m, c->m, C, C, c->scaling_kind == BN_SCALE_CHANNEL ? C : 1}, s1[5] = {C, 1, c->m, 1, 1};
    *d0 = s0[k];
    *d1 = s1[k];
    if (k == 4 && c->scaling_kind == BN_SCALE_FIXED)
        return 0;
    return k == 0 || k == 2 ? 2 : 1;
}

static inline float **bn_slot(struct bn_module *w, int k, int grad)
{
    float **v[5] = {&w->Wd, &w->bd, &w->Wu, &w->bu, &w->s}, **g[5] = {&w->gWd, &w->gbd, &w->gWu, &w->gbu, &w->gs};
    return grad ? g[k] : v[k];
}

/* Initial values of tensor k of module (layer, loc) as adapters' init_weights: bert N(0, 0.02)
 * weights; mam_adapter Wd kaiming_uniform(a=sqrt 5) = U(-1/sqrt C, 1/sqrt C), Wu = 0; houlsby
 * trunc_normal(0, 0.01, +-0.02); biases 0, scaling 1. Into host memory (n floats). */
static inline void bn_init_values(const struct bn_config *c, int64_t C, uint64_t seed, int layer, int loc, int k, float *host,
                           int64_t n)
{
    for (int64_t j = 0; j < n; j++) {
        uint64_t h = bn_key(seed, (uint64_t)layer, (uint64_t)(loc * 8 + k), (uint64_t)j);
        double v = 0;
        if (k == 4)
            v = 1;
        else if (k == 0 || k == 2) {
            if (c->init == BN_INIT_BERT)
                v = 0.02 * bn_normal(h);
            else if (c->init == BN_INIT_HOULSBY) {
                for (int t = 0; t < 64; t++, h = bn_mix(h)) {   /* resample outside +-2 sd */
                    v = bn_normal(h);
                    if (fabs(v) <= 2)
                        break;
                }
                v = fabs(v) <= 2 ? 0.01 * v : 0;
            } else if (k == 0)
                v = (2 * bn_u01(h) - 1) / sqrt((double)C);
        }
        host[j] = (float)v;
    }
}

/* The options as adapter_config.json keys (adapters' names), into object o. */
static inline void bn_config_json(const struct bn_config *c, cJSON *o)
{
    cJSON_AddStringToObject(o, "config", c->config);
    cJSON_AddStringToObject(o, "adapter_name", c->name);
    cJSON_AddBoolToObject(o, "mh_adapter", c->loc[BN_ATTN]);
    cJSON_AddBoolToObject(o, "output_adapter", c->loc[BN_MLP]);
    cJSON_AddBoolToObject(o, "is_parallel", c->parallel);
    cJSON_AddBoolToObject(o, "original_ln_before", c->ln_before_orig);
    cJSON_AddBoolToObject(o, "original_ln_after", 1);
    cJSON_AddBoolToObject(o, "residual_before_ln", 1);
    cJSON_AddBoolToObject(o, "ln_before", 0);
    cJSON_AddBoolToObject(o, "ln_after", 0);
    cJSON_AddStringToObject(o, "parallel_input", c->normed_input ? "normed" : "residual");
    cJSON_AddNumberToObject(o, "reduction_factor", c->reduction_factor);
    cJSON_AddNumberToObject(o, "bottleneck_size", (double)c->m);
    cJSON_AddStringToObject(o, "non_linearity", c->act_name);
    if (c->scaling_kind == BN_SCALE_FIXED)
        cJSON_AddNumberToObject(o, "scaling", c->scaling);
    else
        cJSON_AddStringToObject(o, "scaling", c->scaling_kind == BN_SCALE_LEARNED ? "learned" : "channel");
    static const char *inits[] = {"mam_adapter", "bert", "houlsby"};
    cJSON_AddStringToObject(o, "init_weights", inits[c->init]);
    cJSON_AddNumberToObject(o, "dropout", c->dropout);
    char lo[512] = "";
    for (int l = 0; l < BN_MAX_LAYERS; l++)
        if (c->leave_out >> l & 1)
            snprintf(lo + strlen(lo), sizeof lo - strlen(lo), "%s%d", lo[0] ? "," : "", l);
    cJSON_AddStringToObject(o, "leave_out", lo);
    cJSON_AddNumberToObject(o, "adapter_drop_layers", (double)c->drop_layers);
    cJSON_AddBoolToObject(o, "adapter_drop_robust", c->drop_robust);
}

/* Only the listed keys of bn_config_json, into object o (a composed method's adapter options). */
static inline void bn_config_json_keys(const struct bn_config *c, cJSON *o, const char *const *keys)
{
    cJSON *all = cJSON_CreateObject();
    bn_config_json(c, all);
    for (int i = 0; keys[i]; i++) {
        cJSON *it = cJSON_DetachItemFromObject(all, keys[i]);
        if (it)
            cJSON_AddItemToObject(o, keys[i], it);
    }
    cJSON_Delete(all);
}

/* ---- one module, forward and backward ------------------------------------------------------ */

/* y (N,C) = s * (a Wu^T + bu): the module's output from its activations a (N,m). */
static inline ftk_status bn_module_up(const struct ftk_backend *be, void *ctx, const struct bn_config *c,
                                      const struct bn_module *w, int64_t N, int64_t C, const float *a, float *y)
{
    FTK_TRY(be->linear_forward(ctx, y, a, w->Wu, w->bu, N, c->m, C));
    if (c->scaling_kind == BN_SCALE_FIXED) {
        if (c->scaling != 1.0)
            FTK_TRY(be->scale(ctx, y, N * C, (float)c->scaling));
    } else {
        for (int64_t n = 0; n < N; n++)
            for (int64_t k = 0; k < C; k++)
                y[n * C + k] *= w->s[c->scaling_kind == BN_SCALE_CHANNEL ? k : 0];
    }
    return FTK_OK;
}

/* z (N,m) = u Wd^T + bd;  a (N,m) = act(z);  y (N,C) = s * (a Wu^T + bu). Host elementwise. */
static inline ftk_status bn_module_forward(const struct ftk_backend *be, void *ctx, const struct bn_config *c,
                                    const struct bn_module *w, int64_t N, int64_t C, const float *u, float *z, float *a,
                                    float *y)
{
    int64_t m = c->m;
    FTK_TRY(be->linear_forward(ctx, z, u, w->Wd, w->bd, N, C, m));
    for (int64_t j = 0; j < N * m; j++)
        a[j] = (float)bn_act_f(c->act, z[j]);
    return bn_module_up(be, ctx, c, w, N, C, a, y);
}

/* From gy (N,C) = d loss / d y: the module's gradients += (those non-NULL) and du (N,C) += (when
 * non-NULL). u, z, a from the forward; scratch gup (N,C), ga (N,m). gy is not changed. */
static inline ftk_status bn_module_backward(const struct ftk_backend *be, void *ctx, const struct bn_config *c,
                                     const struct bn_module *w, int64_t N, int64_t C, const float *u, const float *z,
                                     const float *a, const float *gy, float *du, float *gup, float *ga)
{
    int64_t m = c->m;
    const float *g = gy;
    if (c->scaling_kind == BN_SCALE_FIXED) {
        if (c->scaling != 1.0) {
            FTK_TRY(be->copy(ctx, gup, gy, (size_t)(N * C) * sizeof(float)));
            FTK_TRY(be->scale(ctx, gup, N * C, (float)c->scaling));
            g = gup;
        }
    } else {   /* ds += sum gy * (a Wu^T + bu); then gup = gy * s */
        int ch = c->scaling_kind == BN_SCALE_CHANNEL;
        FTK_TRY(be->linear_forward(ctx, gup, a, w->Wu, w->bu, N, m, C));
        double acc1 = 0;
        for (int64_t k = 0; k < C; k++) {
            double acc = 0;
            for (int64_t n = 0; n < N; n++)
                acc += (double)gy[n * C + k] * gup[n * C + k];
            if (ch && w->gs)
                w->gs[k] += (float)acc;
            acc1 += acc;
        }
        if (!ch && w->gs)
            w->gs[0] += (float)acc1;
        for (int64_t n = 0; n < N; n++)
            for (int64_t k = 0; k < C; k++)
                gup[n * C + k] = gy[n * C + k] * w->s[ch ? k : 0];
        g = gup;
    }
    FTK_TRY(be->zero(ctx, ga, (size_t)(N * m) * sizeof(float)));
    FTK_TRY(be->linear_backward(ctx, ga, w->gWu, w->gbu, g, a, w->Wu, N, m, C));
    for (int64_t j = 0; j < N * m; j++)
        ga[j] *= (float)bn_act_df(c->act, z[j]);
    return be->linear_backward(ctx, du, w->gWd, w->gbd, ga, u, w->Wd, N, C, m);
}

/* Dropout on y (N*C values), the mask a function of key: y *= keep / (1 - p) (train, p > 0). */
static inline void bn_dropout(float *y, int64_t n, double p, uint64_t key)
{
    float keep = (float)(1.0 / (1.0 - p));
    for (int64_t j = 0; j < n; j++)
        y[j] = bn_u01(bn_mix(key ^ bn_mix((uint64_t)j))) < p ? 0.0f : y[j] * keep;
}

/* Grows backend buffer *p to n floats (contents lost). */
static inline ftk_status bn_grow(const struct ftk_backend *be, void *ctx, float **p, size_t *cap, size_t n)
{
    if (n <= *cap)
        return FTK_OK;
    be->free(ctx, *p);
    *p = NULL;
    *cap = 0;
    FTK_TRY(be->alloc(ctx, n * sizeof(float), (void **)p));
    *cap = n;
    return FTK_OK;
}

/* ---- a model's adapters at the sublayer_out hook (bn_set) ---------------------------------- */

/* The modules of one bottleneck config at every (layer, location) it places them, with the
 * activations training keeps and the hook glue: bottleneck.c is one set, mam.c's parallel adapter
 * and unipelt.c's gated adapter are one each. Backend memory, CPU backend (host elementwise). */
struct bn_set {
    struct bn_config c;
    int64_t C, L;
    struct bn_module mod[BN_MAX_LAYERS][2];
    int has[BN_MAX_LAYERS][2];
    int ran[BN_MAX_LAYERS][2];   /* the module ran in the last train forward (AdapterDrop) */
    /* activations: training keeps one set per module (u, z, a); inference shares set 0 */
    float *keep;
    size_t keep_cap;
    int64_t keep_N;
    float *infer;                /* inference's u, z, a */
    size_t infer_cap;
    float *scratch;              /* gy, gup, du (N,C) each, y (N,C), ga (N,m) */
    size_t scratch_cap;
};

/* Registers (listing them in t when not NULL) and initialises the modules of config c (parsed)
 * for the model of p. `plugin` names it in errors. */
static inline ftk_status bn_set_create(struct ftk_peft *p, struct bn_set *S, const struct bn_config *c, struct ptab *t,
                                       const char *plugin)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    FTK_FAIL_IF(strcmp(be->name, "cpu"), FTK_E_UNSUPPORTED, "%s on the %s backend: not implemented yet", plugin, be->name);
    const struct ftk_model_config *mc = ftk_peft_config(p);
    S->C = mc->C;
    S->L = mc->L;
    S->c = *c;
    FTK_FAIL_IF(S->L > BN_MAX_LAYERS, FTK_E_UNSUPPORTED, "%s: more than %d layers", plugin, BN_MAX_LAYERS);
    uint64_t seed = ftk_peft_seed(p);
    int any = 0;
    for (int l = 0; l < S->L; l++)
        for (int loc = 0; loc < 2; loc++) {
            if (!S->c.loc[loc] || !bn_layer_has(&S->c, l))
                continue;
            S->has[l][loc] = 1;
            any = 1;
            for (int k = 0; k < 5; k++) {
                int64_t d[2];
                int nd = bn_shape(&S->c, S->C, k, &d[0], &d[1]);
                if (!nd)
                    continue;
                char name[256];
                bn_param_name(name, sizeof name, l, loc, S->c.name, bn_what[k]);
                /* HF Trainer's weight decay: every parameter but biases */
                FTK_TRY(ptab_add(p, t, name, nd, d[0], d[1], k != 1 && k != 3, bn_slot(&S->mod[l][loc], k, 0),
                                 bn_slot(&S->mod[l][loc], k, 1)));
                float *host = malloc((size_t)(d[0] * d[1]) * sizeof *host);
                FTK_FAIL_IF(!host, FTK_E_NOMEM, "out of memory");
                bn_init_values(&S->c, S->C, seed, l, loc, k, host, d[0] * d[1]);
                ftk_status st = be->to_device(ctx, *bn_slot(&S->mod[l][loc], k, 0), host, (size_t)(d[0] * d[1]) * sizeof *host);
                free(host);
                FTK_TRY(st);
            }
        }
    FTK_FAIL_IF(!any, FTK_E_INVALID, "%s: no layer keeps an adapter (leave_out, adapter_drop_layers=%lld)", plugin,
                (long long)S->c.drop_layers);
    return FTK_OK;
}

/* The module's activations: u (N,C) when the input is h-based, z, a (N,m); training keeps one
 * set per module for backward, inference uses a set of its own. */
static inline ftk_status bn_set_acts(struct bn_set *S, const struct ftk_backend *be, void *ctx, int l, int loc, int train,
                                     int64_t N, float **u, float **z, float **a)
{
    int64_t C = S->C, m = S->c.m, per = N * (C + 2 * m);
    float *base;
    if (train) {
        if (N != S->keep_N) {   /* a new train shape: every module's slot moves */
            FTK_TRY(bn_grow(be, ctx, &S->keep, &S->keep_cap, (size_t)(per * 2 * S->L)));
            S->keep_N = N;
        }
        base = S->keep + (size_t)(l * 2 + loc) * (size_t)per;
    } else {
        FTK_TRY(bn_grow(be, ctx, &S->infer, &S->infer_cap, (size_t)per));
        base = S->infer;
    }
    *u = base;
    *z = base + N * C;
    *a = base + N * C + N * m;
    return FTK_OK;
}

static inline ftk_status bn_set_scratch(struct bn_set *S, const struct ftk_backend *be, void *ctx, int64_t N, float **gy,
                                        float **gup, float **du, float **ga, float **y)
{
    int64_t C = S->C, m = S->c.m;
    FTK_TRY(bn_grow(be, ctx, &S->scratch, &S->scratch_cap, (size_t)(N * (4 * C + m))));
    *gy = S->scratch;
    *gup = *gy + N * C;
    *du = *gup + N * C;
    *y = *du + N * C;
    *ga = *y + N * C;
    return FTK_OK;
}

/* The module at sublayer s, or NULL where there is none. */
static inline struct bn_module *bn_set_module(struct bn_set *S, const struct ftk_sublayer *s, int *loc_out)
{
    int l = s->layer, loc = s->kind == FTK_SUB_ATTN ? BN_ATTN : BN_MLP;
    *loc_out = loc;
    return l >= 0 && l < S->L && S->has[l][loc] ? &S->mod[l][loc] : NULL;
}

/* The input u (N,C) the module of s read in the last train forward: kept (h, h + resid), or the
 * core's resid or x. */
static inline const float *bn_set_input(struct bn_set *S, const struct ftk_sublayer *s, const float *x)
{
    int64_t N = s->B * s->T;
    switch (S->c.input) {
    case BN_IN_RESID: return s->resid;
    case BN_IN_X: return x;
    default: return S->keep + (size_t)(s->layer * 2 + (s->kind == FTK_SUB_ATTN ? BN_ATTN : BN_MLP)) * (size_t)(N * (S->C + 2 * S->c.m));
    }
}

/* sublayer_forward: h (N,C) += r_b * dropout(y(u)). row_scale (B, host) is a factor per row
 * (UniPELT's gate), NULL for 1. */
static inline ftk_status bn_set_forward(struct ftk_peft *p, struct bn_set *S, const struct ftk_sublayer *s, float *h,
                                        const float *x, int train, const float *row_scale)
{
    int loc;
    struct bn_module *w = bn_set_module(S, s, &loc);
    int l = s->layer;
    if (!w)
        return FTK_OK;
    int runs = bn_layer_runs(&S->c, l, S->L, train, ftk_peft_seed(p), ftk_peft_step(p));
    if (train)
        S->ran[l][loc] = runs;
    if (!runs)
        return FTK_OK;
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t N = s->B * s->T, C = S->C;
    float *u, *z, *a, *gy, *gup, *du, *ga, *y;
    FTK_TRY(bn_set_acts(S, be, ctx, l, loc, train, N, &u, &z, &a));
    FTK_TRY(bn_set_scratch(S, be, ctx, N, &gy, &gup, &du, &ga, &y));
    const float *in = u;
    switch (S->c.input) {
    case BN_IN_H: FTK_TRY(be->copy(ctx, u, h, (size_t)(N * C) * sizeof(float))); break;
    case BN_IN_H_RESID:
        FTK_FAIL_IF(!s->resid, FTK_E_INVALID, "bottleneck: the core gave no residual stream (libftk too old?)");
        FTK_TRY(be->add(ctx, u, h, s->resid, N * C));
        break;
    case BN_IN_RESID:
        FTK_FAIL_IF(!s->resid, FTK_E_INVALID, "bottleneck: the core gave no residual stream (libftk too old?)");
        in = s->resid;
        break;
    case BN_IN_X: in = x; break;
    }
    FTK_TRY(bn_module_forward(be, ctx, &S->c, w, N, C, in, z, a, y));
    if (train && S->c.dropout > 0)
        bn_dropout(y, N * C, S->c.dropout, bn_key(ftk_peft_seed(p), ftk_peft_noise_step(p), (uint64_t)l, (uint64_t)loc + 5));
    for (int64_t n = 0; row_scale && n < N; n++)
        for (int64_t k = 0; k < C; k++)
            y[n * C + k] *= row_scale[n / s->T];
    return be->axpy(ctx, h, y, N * C, 1.0f);
}

/* sublayer_backward: the module's gradients +=, dh / dx / dresid += the part through its input.
 * With row_scale (the forward's): the module sees r_b dy, and dscale (B, host) += sum over row
 * b of dy . dropout(y) (the factor's gradient; NULL: not computed). */
static inline ftk_status bn_set_backward(struct ftk_peft *p, struct bn_set *S, const struct ftk_sublayer *s, float *dh,
                                         float *dx, const float *dy, const float *x, const float *row_scale,
                                         double *dscale)
{
    int loc;
    struct bn_module *w = bn_set_module(S, s, &loc);
    int l = s->layer;
    if (!w || !S->ran[l][loc])
        return FTK_OK;
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t N = s->B * s->T, C = S->C;
    FTK_FAIL_IF(N != S->keep_N, FTK_E_INVALID, "bottleneck: backward of %lld rows after a train forward of %lld", (long long)N,
                (long long)S->keep_N);
    float *u, *z, *a, *gy, *gup, *du, *ga, *y;
    FTK_TRY(bn_set_acts(S, be, ctx, l, loc, 1, N, &u, &z, &a));
    FTK_TRY(bn_set_scratch(S, be, ctx, N, &gy, &gup, &du, &ga, &y));
    /* dy is read once, here: dresid may be the same memory */
    FTK_TRY(be->copy(ctx, gy, dy, (size_t)(N * C) * sizeof(float)));
    uint64_t key = bn_key(ftk_peft_seed(p), ftk_peft_noise_step(p), (uint64_t)l, (uint64_t)loc + 5);
    if (S->c.dropout > 0)
        bn_dropout(gy, N * C, S->c.dropout, key);
    if (row_scale) {   /* dropout(y) . dy per row, then the module's share r_b dy */
        if (dscale) {
            FTK_TRY(bn_module_up(be, ctx, &S->c, w, N, C, a, y));
            for (int64_t n = 0; n < N; n++) {
                double acc = 0;
                for (int64_t k = 0; k < C; k++)
                    acc += (double)gy[n * C + k] * y[n * C + k];
                dscale[n / s->T] += acc;
            }
        }
        for (int64_t n = 0; n < N; n++)
            for (int64_t k = 0; k < C; k++)
                gy[n * C + k] *= row_scale[n / s->T];
    }
    const float *in = u;
    float *dst = du;
    switch (S->c.input) {
    case BN_IN_H: dst = dh; break;
    case BN_IN_H_RESID: FTK_TRY(be->zero(ctx, du, (size_t)(N * C) * sizeof(float))); break;
    case BN_IN_RESID:
        FTK_FAIL_IF(!s->resid || !s->dresid, FTK_E_INVALID, "bottleneck: the core gave no residual stream (libftk too old?)");
        in = s->resid;
        dst = s->dresid;
        break;
    case BN_IN_X: in = x; dst = dx; break;
    }
    FTK_TRY(bn_module_backward(be, ctx, &S->c, w, N, C, in, z, a, gy, dst, gup, ga));
    if (S->c.input == BN_IN_H_RESID) {   /* u = h + resid: both get du */
        FTK_FAIL_IF(!s->dresid, FTK_E_INVALID, "bottleneck: the core gave no residual gradient (libftk too old?)");
        FTK_TRY(be->axpy(ctx, dh, du, N * C, 1.0f));
        FTK_TRY(be->axpy(ctx, s->dresid, du, N * C, 1.0f));
    }
    return FTK_OK;
}

static inline void bn_set_release(struct ftk_peft *p, struct bn_set *S)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    be->free(ctx, S->keep);
    be->free(ctx, S->infer);
    be->free(ctx, S->scratch);
}

/* adapter_config.json's values as options (the rules of libcore/adapter.c: booleans "true"/
 * "false", numbers %.17g, string and number lists comma-joined, nulls left out). kv and strs
 * (n + 1 entries each) are malloc'd; free them with bn_kv_free. */
static inline ftk_status bn_kv_from_json(const cJSON *obj, struct ftk_kv **kv_out, char ***strs_out)
{
    int n = cJSON_GetArraySize(obj);
    struct ftk_kv *kv = calloc((size_t)n + 1, sizeof *kv);
    char **strs = calloc((size_t)n + 1, sizeof *strs);
    *kv_out = kv;
    *strs_out = strs;
    FTK_FAIL_IF(!kv || !strs, FTK_E_NOMEM, "out of memory");
    int k = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, obj) {
        char buf[1024] = "";
        if (cJSON_IsNull(e))
            continue;
        if (cJSON_IsBool(e))
            snprintf(buf, sizeof buf, "%s", cJSON_IsTrue(e) ? "true" : "false");
        else if (cJSON_IsNumber(e))
            snprintf(buf, sizeof buf, "%.17g", e->valuedouble);
        else if (cJSON_IsString(e))
            snprintf(buf, sizeof buf, "%s", e->valuestring);
        else if (cJSON_IsArray(e)) {
            const cJSON *x;
            cJSON_ArrayForEach(x, e) {
                size_t len = strlen(buf);
                if (cJSON_IsNumber(x))
                    snprintf(buf + len, sizeof buf - len, "%s%.17g", len ? "," : "", x->valuedouble);
                else if (cJSON_IsString(x))
                    snprintf(buf + len, sizeof buf - len, "%s%s", len ? "," : "", x->valuestring);
            }
        } else {
            char *t = cJSON_PrintUnformatted(e);
            snprintf(buf, sizeof buf, "%s", t ? t : "");
            free(t);
        }
        strs[k] = strdup(buf);
        FTK_FAIL_IF(!strs[k], FTK_E_NOMEM, "out of memory");
        kv[k].key = e->string;
        kv[k].value = strs[k];
        k++;
    }
    return FTK_OK;
}

static inline void bn_kv_free(struct ftk_kv *kv, char **strs)
{
    for (int i = 0; strs && strs[i]; i++)
        free(strs[i]);
    free(strs);
    free(kv);
}

#endif
