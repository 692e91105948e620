/* libcore/model_config.c: config.json for Llama-family models (ftk/model_config.h). Field
 * names and defaults follow transformers' LlamaConfig/MistralConfig/Qwen2Config/Qwen3Config. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include "ftk/model_config.h"

static const cJSON *get(const cJSON *o, const char *k) { return cJSON_GetObjectItemCaseSensitive(o, k); }
static int present(const cJSON *j) { return j && !cJSON_IsNull(j); }

static ftk_status get_int(const cJSON *o, const char *k, int64_t def, int required, int64_t *out,
                          const char *where)
{
    const cJSON *j = get(o, k);
    if (!present(j)) {
        FTK_FAIL_IF(required, FTK_E_FORMAT, "%s: \"%s\" missing", where, k);
        *out = def;
        return FTK_OK;
    }
    FTK_FAIL_IF(!cJSON_IsNumber(j) || j->valuedouble != floor(j->valuedouble) || fabs(j->valuedouble) > 1e15,
                FTK_E_FORMAT, "%s: \"%s\" is not an integer", where, k);
    *out = (int64_t)j->valuedouble;
    return FTK_OK;
}

static ftk_status get_num(const cJSON *o, const char *k, double def, double *out, const char *where)
{
    const cJSON *j = get(o, k);
    if (!present(j)) {
        *out = def;
        return FTK_OK;
    }
    FTK_FAIL_IF(!cJSON_IsNumber(j), FTK_E_FORMAT, "%s: \"%s\" is not a number", where, k);
    *out = j->valuedouble;
    return FTK_OK;
}

/* A key the rope type needs: transformers fails with KeyError without it. */
static ftk_status get_rope_num(const cJSON *rs, const char *k, const char *type, double *out, const char *where)
{
    FTK_FAIL_IF(!present(get(rs, k)), FTK_E_FORMAT, "%s: \"%s\" missing from %s (rope type \"%s\" needs it)",
                where, k, rs->string, type);
    return get_num(rs, k, 0.0, out, where);
}

static int get_bool(const cJSON *o, const char *k, int def)
{
    const cJSON *j = get(o, k);
    return cJSON_IsBool(j) ? cJSON_IsTrue(j) : def;
}

/* rope_scaling (transformers 4) or rope_parameters (transformers 5, which also holds rope_theta). */
static ftk_status parse_rope(const cJSON *root, struct ftk_model_config *c, const char *where)
{
    struct ftk_rope_config *r = &c->rope;
    /* transformers 5: `rope_scaling or rope_parameters`, so a non-empty rope_scaling wins; the
     * chosen dict's rope_theta wins over the top-level one. */
    const cJSON *rs = get(root, "rope_scaling");
    if (!present(rs) || (cJSON_IsObject(rs) && !rs->child))
        rs = get(root, "rope_parameters");
    FTK_TRY(get_num(root, "rope_theta", 10000.0, &r->theta, where));
    if (present(rs)) {
        FTK_FAIL_IF(!cJSON_IsObject(rs), FTK_E_FORMAT, "%s: \"%s\" is not an object", where, rs->string);
        const cJSON *x;
        cJSON_ArrayForEach(x, rs)   /* per-layer-type dicts: these models' rotary embedding needs a flat one */
            FTK_FAIL_IF(cJSON_IsObject(x), FTK_E_UNSUPPORTED, "%s: %s nested by layer type (\"%s\") is not supported",
                        where, rs->string, x->string);
        FTK_TRY(get_num(rs, "rope_theta", r->theta, &r->theta, where));
    }
    FTK_TRY(get_num(root, "partial_rotary_factor", 1.0, &r->partial_rotary_factor, where));
    r->head_dim = c->D;
    r->max_position_embeddings = c->max_position_embeddings;
    r->type = FTK_ROPE_DEFAULT;
    r->factor = 1.0;
    if (!present(rs)) {
        r->partial_rotary_factor = 1.0;   /* default rope: see below */
        return FTK_OK;
    }
    const cJSON *t = get(rs, "rope_type");
    if (!present(t))
        t = get(rs, "type");
    const char *type = cJSON_IsString(t) ? t->valuestring : "default";
    if (!strcmp(type, "default"))
        r->type = FTK_ROPE_DEFAULT;
    else if (!strcmp(type, "linear"))
        r->type = FTK_ROPE_LINEAR;
    else if (!strcmp(type, "dynamic"))
        r->type = FTK_ROPE_DYNAMIC;
    else if (!strcmp(type, "llama3"))
        r->type = FTK_ROPE_LLAMA3;
    else
        FTK_FAIL(FTK_E_UNSUPPORTED, "%s: rope type \"%s\" is not supported (supported: default, linear, dynamic, llama3)",
                 where, type);
    if (r->type != FTK_ROPE_DEFAULT) {
        FTK_TRY(get_rope_num(rs, "factor", type, &r->factor, where));
        FTK_FAIL_IF(!(r->factor > 0), FTK_E_FORMAT, "%s: rope factor %g must be positive", where, r->factor);
    }
    if (r->type == FTK_ROPE_LLAMA3) {
        FTK_TRY(get_rope_num(rs, "low_freq_factor", type, &r->low_freq_factor, where));
        FTK_TRY(get_rope_num(rs, "high_freq_factor", type, &r->high_freq_factor, where));
        /* standardize_rope_params fills it from max_position_embeddings */
        FTK_TRY(get_int(rs, "original_max_position_embeddings", c->max_position_embeddings, 0,
                        &r->original_max_position_embeddings, where));
    }
    /* The four models' default rope rotates all of head_dim whatever partial_rotary_factor says;
     * the scaled types shorten inv_freq by it and their apply_rotary_pos_emb then fails. */
    FTK_TRY(get_num(rs, "partial_rotary_factor", r->partial_rotary_factor, &r->partial_rotary_factor, where));
    FTK_FAIL_IF(r->type != FTK_ROPE_DEFAULT && r->partial_rotary_factor != 1.0, FTK_E_UNSUPPORTED,
                "%s: partial_rotary_factor %g with rope type \"%s\" is not supported (1)", where, r->partial_rotary_factor, type);
    if (r->type == FTK_ROPE_DEFAULT)
        r->partial_rotary_factor = 1.0;
    double af;
    FTK_TRY(get_num(rs, "attention_factor", 1.0, &af, where));
    FTK_FAIL_IF(af != 1.0, FTK_E_UNSUPPORTED, "%s: rope attention_factor %g is not supported", where, af);
    return FTK_OK;
}

static ftk_status parse_eos(const cJSON *root, struct ftk_model_config *c, const char *where)
{
    const cJSON *e = get(root, "eos_token_id");
    c->n_eos = 0;
    if (!present(e))
        return FTK_OK;
    if (cJSON_IsNumber(e)) {
        c->eos_token_ids[c->n_eos++] = (int32_t)e->valuedouble;
        return FTK_OK;
    }
    FTK_FAIL_IF(!cJSON_IsArray(e), FTK_E_FORMAT, "%s: \"eos_token_id\" is neither a number nor a list", where);
    const cJSON *x;
    cJSON_ArrayForEach(x, e) {
        FTK_FAIL_IF(!cJSON_IsNumber(x), FTK_E_FORMAT, "%s: \"eos_token_id\" holds a non-number", where);
        FTK_FAIL_IF(c->n_eos == FTK_MAX_EOS, FTK_E_UNSUPPORTED, "%s: more than %d eos_token_id values", where, FTK_MAX_EOS);
        c->eos_token_ids[c->n_eos++] = (int32_t)x->valuedouble;
    }
    return FTK_OK;
}

static ftk_status parse_root(const cJSON *root, const char *where, struct ftk_model_config *c)
{
    memset(c, 0, sizeof *c);
    FTK_FAIL_IF(!cJSON_IsObject(root), FTK_E_FORMAT, "%s: not a JSON object", where);
    const cJSON *mt = get(root, "model_type");
    FTK_FAIL_IF(!cJSON_IsString(mt), FTK_E_FORMAT, "%s: \"model_type\" missing", where);
    static const struct { const char *name; enum ftk_arch arch; } archs[] = {
        {"llama", FTK_ARCH_LLAMA}, {"mistral", FTK_ARCH_MISTRAL}, {"qwen2", FTK_ARCH_QWEN2}, {"qwen3", FTK_ARCH_QWEN3}};
    int found = 0;
    for (size_t i = 0; i < sizeof archs / sizeof *archs; i++)
        if (!strcmp(mt->valuestring, archs[i].name)) {
            c->arch = archs[i].arch;
            found = 1;
        }
    FTK_FAIL_IF(!found, FTK_E_UNSUPPORTED, "%s: model_type \"%s\" is not supported (llama, mistral, qwen2, qwen3)",
                where, mt->valuestring);
    snprintf(c->model_type, sizeof c->model_type, "%s", mt->valuestring);

    FTK_TRY(get_int(root, "vocab_size", 0, 1, &c->V, where));
    FTK_TRY(get_int(root, "hidden_size", 0, 1, &c->C, where));
    FTK_TRY(get_int(root, "intermediate_size", 0, 1, &c->F, where));
    FTK_TRY(get_int(root, "num_hidden_layers", 0, 1, &c->L, where));
    FTK_TRY(get_int(root, "num_attention_heads", 0, 1, &c->H, where));
    /* Absent: the config class's default (Mistral 8, Qwen2/Qwen3 32); null: num_attention_heads. */
    int64_t kv_default = c->arch == FTK_ARCH_MISTRAL ? 8 : c->arch == FTK_ARCH_LLAMA ? c->H : 32;
    FTK_TRY(get_int(root, "num_key_value_heads", get(root, "num_key_value_heads") ? c->H : kv_default, 0, &c->Hkv, where));
    FTK_FAIL_IF(c->V <= 0 || c->C <= 0 || c->F <= 0 || c->L <= 0 || c->H <= 0 || c->Hkv <= 0, FTK_E_FORMAT,
                "%s: vocab_size, hidden_size, intermediate_size, num_hidden_layers and the head counts must be positive", where);
    FTK_FAIL_IF(c->H % c->Hkv, FTK_E_FORMAT, "%s: num_attention_heads %lld is not a multiple of num_key_value_heads %lld",
                where, (long long)c->H, (long long)c->Hkv);
    /* Qwen3Config's head_dim defaults to 128; the others' to hidden_size / num_attention_heads. */
    FTK_TRY(get_int(root, "head_dim", c->arch == FTK_ARCH_QWEN3 ? 128 : c->C / c->H, 0, &c->D, where));
    FTK_FAIL_IF(c->D <= 0 || c->D % 2, FTK_E_FORMAT, "%s: head_dim %lld must be positive and even", where, (long long)c->D);
    FTK_FAIL_IF(!present(get(root, "head_dim")) && c->arch != FTK_ARCH_QWEN3 && c->C % c->H, FTK_E_FORMAT,
                "%s: hidden_size %lld is not a multiple of num_attention_heads %lld", where, (long long)c->C, (long long)c->H);
    double eps;
    FTK_TRY(get_num(root, "rms_norm_eps", 1e-6, &eps, where));
    c->rms_norm_eps = (float)eps;
    static const int64_t max_pos_default[] = {[FTK_ARCH_LLAMA] = 2048, [FTK_ARCH_MISTRAL] = 4096 * 32,
                                              [FTK_ARCH_QWEN2] = 32768, [FTK_ARCH_QWEN3] = 32768};
    FTK_TRY(get_int(root, "max_position_embeddings", max_pos_default[c->arch], 0, &c->max_position_embeddings, where));
    FTK_TRY(parse_rope(root, c, where));

    const cJSON *act = get(root, "hidden_act");
    FTK_FAIL_IF(present(act) && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu")), FTK_E_UNSUPPORTED,
                "%s: hidden_act \"%s\" is not supported (silu)", where, cJSON_IsString(act) ? act->valuestring : "?");
    double drop;
    FTK_TRY(get_num(root, "attention_dropout", 0.0, &drop, where));
    FTK_FAIL_IF(drop != 0.0, FTK_E_UNSUPPORTED, "%s: attention_dropout %g is not supported (0)", where, drop);

    /* Qwen2 always has q/k/v bias; Llama's attention_bias adds bias to q/k/v and o. */
    int attn_bias = get_bool(root, "attention_bias", 0);
    c->qkv_bias = c->arch == FTK_ARCH_QWEN2 || attn_bias;
    c->o_bias = (c->arch == FTK_ARCH_LLAMA || c->arch == FTK_ARCH_QWEN3) && attn_bias;
    if (c->arch == FTK_ARCH_QWEN3)
        c->qkv_bias = attn_bias;
    FTK_FAIL_IF(attn_bias && c->arch == FTK_ARCH_MISTRAL, FTK_E_UNSUPPORTED, "%s: attention_bias on mistral is not supported", where);
    c->mlp_bias = c->arch == FTK_ARCH_LLAMA && get_bool(root, "mlp_bias", 0);   /* the others' MLPs have none */
    c->qk_norm = c->arch == FTK_ARCH_QWEN3;
    c->tie_word_embeddings = get_bool(root, "tie_word_embeddings", 0);   /* False in all four configs */

    /* Sliding-window attention equals full attention on rows no longer than the window, so the
     * window is kept and longer rows are refused at run time. Qwen's flag gates its window. */
    int64_t sw = 0;
    if (c->arch == FTK_ARCH_MISTRAL || ((c->arch == FTK_ARCH_QWEN2 || c->arch == FTK_ARCH_QWEN3) &&
                                        get_bool(root, "use_sliding_window", 0)))
        FTK_TRY(get_int(root, "sliding_window", get(root, "sliding_window") ? 0 : 4096, 0, &sw, where));   /* absent: 4096 */
    c->sliding_window = sw > 0 ? sw : 0;
    const cJSON *lt = get(root, "layer_types");
    if (cJSON_IsArray(lt)) {
        const cJSON *x;
        cJSON_ArrayForEach(x, lt)
            FTK_FAIL_IF(!cJSON_IsString(x) || strcmp(x->valuestring, "full_attention"), FTK_E_UNSUPPORTED,
                        "%s: layer_types other than full_attention are not supported", where);
    }

    int64_t v;
    FTK_TRY(get_int(root, "bos_token_id", -1, 0, &v, where));
    c->bos_token_id = (int32_t)v;
    FTK_TRY(get_int(root, "pad_token_id", -1, 0, &v, where));
    c->pad_token_id = (int32_t)v;
    FTK_TRY(parse_eos(root, c, where));
    const cJSON *dt = get(root, "dtype");   /* transformers 5 takes torch_dtype only when dtype is unset */
    if (!cJSON_IsString(dt))
        dt = get(root, "torch_dtype");
    if (cJSON_IsString(dt))
        snprintf(c->torch_dtype, sizeof c->torch_dtype, "%s", dt->valuestring);
    return FTK_OK;
}

ftk_status ftk_model_config_parse(const char *json, size_t len, const char *where, struct ftk_model_config *out)
{
    cJSON *root = cJSON_ParseWithLength(json, len);
    FTK_FAIL_IF(!root, FTK_E_FORMAT, "%s: not valid JSON", where);
    ftk_status st = parse_root(root, where, out);
    cJSON_Delete(root);
    return st;
}

ftk_status ftk_model_config_load(struct ftk_source *src, struct ftk_model_config *out)
{
    char *text;
    size_t len;
    FTK_TRY(ftk_source_read(src, "config.json", &text, &len));
    char where[1100];
    snprintf(where, sizeof where, "%s/config.json", ftk_source_path(src));
    ftk_status st = ftk_model_config_parse(text, len, where, out);
    free(text);
    return st;
}

int64_t ftk_model_config_n_params(const struct ftk_model_config *c)
{
    int64_t q = c->H * c->D, kv = c->Hkv * c->D;
    int64_t attn = c->C * q + 2 * c->C * kv + q * c->C;
    if (c->qkv_bias)
        attn += q + 2 * kv;
    if (c->o_bias)
        attn += c->C;
    if (c->qk_norm)
        attn += 2 * c->D;
    int64_t mlp = 3 * c->C * c->F + (c->mlp_bias ? 2 * c->F + c->C : 0);
    int64_t layer = attn + mlp + 2 * c->C;
    return c->V * c->C * (c->tie_word_embeddings ? 1 : 2) + c->L * layer + c->C;
}
