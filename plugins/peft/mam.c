/* plugins/peft/mam.c: the MAM adapter ("mix-and-match", He et al. 2022, "Towards a Unified View of
 * Parameter-Efficient Transfer Learning", ICLR 2022), as the authors' code builds it
 * (github jxhe/unify-parameter-efficient-tuning: petl/petl_factory.py Prefix and Adapter_Layer,
 * modeling_bart.py with attn_mode=prefix, attn_option=concat, ffn_mode=adapter,
 * ffn_option=parallel, ffn_adapter_init_option=lora, ffn_adapter_scalar=4, no adapter layer norm):
 *
 *   attention (attn_kv hook): prefix tuning. l learned keys and values per layer, concatenated
 *     before the layer's own and seen by every query, produced by ONE MLP shared by all layers and
 *     heads (their Prefix: wte (l, d) -> Linear(d, mid) -> tanh -> Linear(mid, 2 L d), split into
 *     heads afterwards; no per-head MLP) = prefix_impl.h's module with the projection. l = 30,
 *     mid = 800 (their options.py mid_dim and adapters' MAMConfig).
 *   FFN (sublayer_out hook, after down_proj): a scaled parallel adapter,
 *     h_mlp' = h_mlp + s * (relu(u Wd^T + bd) Wu^T + bu), s = 4, bottleneck 512, Wd
 *     kaiming-uniform, Wu and the biases 0 (their "lora" init) = bottleneck_impl.h's bn_set.
 *
 * On ftk's pre-norm Llama the parallel adapter's input u is, by default, the residual stream
 * that the MLP's norm reads (parallel_input=residual): in their post-norm BART the FFN's input and
 * the residual are the same tensor, and adapter-transformers' ParallelAdapter (its MAMConfig,
 * models/llama) reads the residual; parallel_input=normed takes the normed input the MLP itself
 * reads (the paper's x read literally). For GQA models the prefix is per key/value head: width
 * Hkv*D per layer and kind (peft's token_dim), which is d_model for MHA models as in the paper.
 * The prefix keys carry no rotary embedding and the real tokens' positions start at l (ftk's
 * attn_kv contract: peft's prefix is a cache of l positions). Their BART has absolute positions,
 * which the prefix does not move; adapter-transformers' Llama prefix starts the real tokens at 0
 * instead, a different function on a RoPE model (prefixes are not interchangeable with it).
 *
 * Options: num_virtual_tokens (30), prefix_projection (true; false: the prefix itself is the
 * parameter, their prefix_nomlp), encoder_hidden_size (800), bottleneck_size (512) or
 * reduction_factor, scaling (4, or learned / channel), non_linearity (relu), parallel_input
 * (residual), init_weights (mam_adapter: their "lora"; bert). Saved in ftk's format:
 * adapter_config.json (peft_type MAM) and adapter_model.safetensors with prompt_encoder.* (the
 * prefix MLP, peft's PrefixEncoder names) and adapters' Llama names for the adapter
 * (model.layers.L.output_adapters.adapters.default.*). Not mergeable (tanh, relu). CPU backend. */
#include "bottleneck_impl.h"
#include "prefix_impl.h"

struct mam {
    struct px_prefix px;
    struct bn_set ad;
    struct ptab tab;
};

static const char *const mam_keys[] = {"num_virtual_tokens", "prefix_projection", "encoder_hidden_size", "bottleneck_size",
                                       "reduction_factor", "scaling", "non_linearity", "parallel_input", "init_weights", NULL};

/* the adapter's keys, handed to bottleneck_impl.h's parser */
static const char *const mam_bn_keys[] = {"bottleneck_size", "reduction_factor", "scaling", "non_linearity",
                                          "parallel_input", "init_weights", NULL};

static ftk_status mam_init(struct ftk_peft *p, const struct ftk_kv *o)
{
    struct mam *S = ftk_peft_priv(p);
    const struct ftk_model_config *c = ftk_peft_config(p);
    FTK_TRY(bn_check_keys(o, "mam", mam_keys, bn_file_keys, NULL));
    const char *pt = ftk_kv_get(o, "peft_type");   /* an adapter_config.json's: it must be this method's */
    FTK_FAIL_IF(pt && strcmp(pt, "MAM"), FTK_E_INVALID, "peft_type %s given to the mam plugin", pt);
    FTK_TRY(px_options(o, c, "mam", 30, 1, 800, &S->px));
    S->px.mlp = S->px.projection;
    struct bn_config bc;
    FTK_TRY(bn_config_after_mlp(o, mam_bn_keys, "parallel", 512, c->C, c->L, &bc));
    FTK_TRY(px_create(p, &S->px, "prompt_encoder.", &S->tab));
    return bn_set_create(p, &S->ad, &bc, &S->tab, "mam");
}

static ftk_status mam_forward_begin(struct ftk_peft *p, int64_t B, int64_t T, int train)
{
    (void)B;
    (void)T;
    struct mam *S = ftk_peft_priv(p);
    return px_forward_begin(p, &S->px, train);
}

static ftk_status mam_backward_end(struct ftk_peft *p)
{
    struct mam *S = ftk_peft_priv(p);
    return px_backward_end(p, &S->px);
}

static ftk_status mam_attn_prefix(struct ftk_peft *p, int layer, int64_t *P, const float **pk, const float **pv, float **dpk,
                                  float **dpv)
{
    struct mam *S = ftk_peft_priv(p);
    return px_layer(&S->px, "mam", layer, P, pk, pv, dpk, dpv);
}

static ftk_status mam_fwd(struct ftk_peft *p, const struct ftk_sublayer *s, float *h, const float *x, int train)
{
    struct mam *S = ftk_peft_priv(p);
    return bn_set_forward(p, &S->ad, s, h, x, train, NULL);
}

static ftk_status mam_bwd(struct ftk_peft *p, const struct ftk_sublayer *s, float *dh, float *dx, const float *dy,
                          const float *x)
{
    struct mam *S = ftk_peft_priv(p);
    return bn_set_backward(p, &S->ad, s, dh, dx, dy, x, NULL, NULL);
}

static ftk_status mam_save(struct ftk_peft *p, const char *dir, const char *base_path)
{
    static const char *const saved[] = {"bottleneck_size", "scaling", "non_linearity", "parallel_input", "init_weights", NULL};
    struct mam *S = ftk_peft_priv(p);
    FTK_TRY(ptab_save(p, &S->tab, dir));
    cJSON *c = ptab_config_begin("MAM", base_path);
    px_config_json(&S->px, c);
    bn_config_json_keys(&S->ad.c, c, saved);
    cJSON_AddStringToObject(c, "format", "ftk MAM adapter 1 (He et al. 2022): prefix tuning (prompt_encoder.*, peft's "
                                         "PrefixEncoder names) + a scaled parallel adapter after each MLP "
                                         "(model.layers.L.output_adapters.adapters.default.*, adapter-transformers' names)");
    return ptab_config_write(c, dir);
}

static ftk_status mam_load(struct ftk_peft *p, struct ftk_source *src)
{
    struct mam *S = ftk_peft_priv(p);
    return ptab_load(p, &S->tab, src);
}

static void mam_release(struct ftk_peft *p)
{
    struct mam *S = ftk_peft_priv(p);
    px_release(p, &S->px);
    bn_set_release(p, &S->ad);
    ptab_free(&S->tab);
}

FTK_EXPORT const struct ftk_peft_plugin ftk_peft_plugin = {
    .abi_version = FTK_PEFT_ABI,
    .struct_size = sizeof(struct ftk_peft_plugin),
    .name = "mam",
    .priv_size = sizeof(struct mam),
    .init = mam_init,
    .save = mam_save,
    .load = mam_load,
    .release = mam_release,
    .forward_begin = mam_forward_begin,
    .backward_end = mam_backward_end,
    .sublayer_forward = mam_fwd,
    .sublayer_backward = mam_bwd,
    .attn_prefix = mam_attn_prefix,
};
