/* plugins/peft/full.c: full fine-tuning (LLaMA-Factory's finetuning_type full): every weight of
 * the base model trains. The checkpoint is the whole model, written by the tool in HF layout. */
#include "ftk/plugin.h"

static ftk_status full_init(struct ftk_peft *p, const struct ftk_kv *opts)
{
    (void)p;
    for (; opts && opts->key; opts++)
        FTK_FAIL(FTK_E_INVALID, "full takes no options (got %s)", opts->key);
    return FTK_OK;
}

static int full_trainable(struct ftk_peft *p, const char *name)
{
    (void)p;
    (void)name;
    return 1;
}

FTK_EXPORT const struct ftk_peft_plugin ftk_peft_plugin = {
    .abi_version = FTK_PEFT_ABI,
    .struct_size = sizeof(struct ftk_peft_plugin),
    .name = "full",
    .priv_size = 0,
    .init = full_init,
    .base_trainable = full_trainable,
};
