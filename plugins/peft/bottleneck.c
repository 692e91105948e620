/* plugins/peft/bottleneck.c: bottleneck adapters at the sublayer_out hook, as adapter-transformers
 * defines and places them in Llama models (bottleneck_impl.h has the module and its options):
 *   config=houlsby   (Houlsby et al. 2019, adapters' DoubleSeqBnConfig): a serial adapter after
 *                    the attention and after the MLP, each reading the sublayer output h
 *                    (swish, reduction_factor 16)
 *   config=pfeiffer  (Pfeiffer et al. 2021, SeqBnConfig): one after the MLP, reading h + resid
 *                    (original_ln_before on a model without a post-norm; relu, 16)
 *   config=parallel  (He et al. 2022, ParBnConfig): one parallel to the MLP, reading the stream
 *                    resid that the MLP's norm read (or its normed x), scaled by s = 4 (relu, 2)
 * with every BnConfig option ftk supports overridable, plus AdapterDrop (Rücklé et al. 2021):
 * adapter_drop_layers=n (no adapters in the first n layers, in training and inference) and
 * adapter_drop_robust=true (in training, n drawn per step from {0..L-1}).
 *
 * The hook replaces h by h + dropout(y(u)) (bottleneck_impl.h's bn_set). Training keeps, per
 * module, the input u (when it is h or h + resid: the core does not keep those) and z, a = act(z);
 * backward reads resid and x from the core. Saved in ftk's format: adapter_config.json (peft_type BOTTLENECK, adapters' keys) and
 * adapter_model.safetensors with adapters' Llama tensor names. Not mergeable (non-linear). */
#include "bottleneck_impl.h"

struct bottleneck {
    struct bn_set set;
    struct ptab tab;           /* the parameters by saved name */
};

static ftk_status bn_init(struct ftk_peft *p, const struct ftk_kv *o)
{
    struct bottleneck *S = ftk_peft_priv(p);
    const struct ftk_model_config *mc = ftk_peft_config(p);
    struct bn_config c;
    FTK_TRY(bn_check_keys(o, "bottleneck", bn_keys, bn_file_keys, NULL));
    const char *pt = ftk_kv_get(o, "peft_type");   /* an adapter_config.json's: it must be this method's */
    FTK_FAIL_IF(pt && strcmp(pt, "BOTTLENECK"), FTK_E_INVALID, "peft_type %s given to the bottleneck plugin", pt);
    FTK_TRY(bn_config_parse(o, mc->C, mc->L, &c));
    return bn_set_create(p, &S->set, &c, &S->tab, "bottleneck adapters");
}

static ftk_status bn_fwd(struct ftk_peft *p, const struct ftk_sublayer *s, float *h, const float *x, int train)
{
    struct bottleneck *S = ftk_peft_priv(p);
    return bn_set_forward(p, &S->set, s, h, x, train, NULL);
}

static ftk_status bn_bwd(struct ftk_peft *p, const struct ftk_sublayer *s, float *dh, float *dx, const float *dy,
                         const float *x)
{
    struct bottleneck *S = ftk_peft_priv(p);
    return bn_set_backward(p, &S->set, s, dh, dx, dy, x, NULL, NULL);
}

/* ---- files -------------------------------------------------------------------------------- */

static ftk_status bn_save(struct ftk_peft *p, const char *dir, const char *base_path)
{
    struct bottleneck *S = ftk_peft_priv(p);
    FTK_TRY(ptab_save(p, &S->tab, dir));
    cJSON *c = ptab_config_begin("BOTTLENECK", base_path);
    bn_config_json(&S->set.c, c);
    cJSON_AddStringToObject(c, "format", "ftk bottleneck adapter 1: adapter-transformers' BnConfig keys; tensors named as "
                                         "its Llama state dict (model.layers.L.{attention,output}_adapters.adapters.NAME...)");
    return ptab_config_write(c, dir);
}

static ftk_status bn_load(struct ftk_peft *p, struct ftk_source *src)
{
    struct bottleneck *S = ftk_peft_priv(p);
    return ptab_load(p, &S->tab, src);
}

static void bn_release(struct ftk_peft *p)
{
    struct bottleneck *S = ftk_peft_priv(p);
    bn_set_release(p, &S->set);
    ptab_free(&S->tab);
}

FTK_EXPORT const struct ftk_peft_plugin ftk_peft_plugin = {
    .abi_version = FTK_PEFT_ABI,
    .struct_size = sizeof(struct ftk_peft_plugin),
    .name = "bottleneck",
    .priv_size = sizeof(struct bottleneck),
    .init = bn_init,
    .save = bn_save,
    .load = bn_load,
    .release = bn_release,
    .sublayer_forward = bn_fwd,
    .sublayer_backward = bn_bwd,
};
