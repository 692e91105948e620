/* plugins/loss/sft.c: causal-LM cross-entropy for SFT and pre-training, as transformers'
 * ForCausalLMLoss computes it: the mean over every labelled token of the optimizer step
 * (loss = -sum logp / n_tokens_total), so gradient accumulation gives the same gradient as one
 * big batch (transformers >= 4.46, num_items_in_batch). */
#include "ftk/plugin.h"

static ftk_status sft_init(struct ftk_loss *l, const struct ftk_kv *opts)
{
    (void)l;
    for (; opts && opts->key; opts++)
        FTK_FAIL(FTK_E_INVALID, "sft takes no options (got %s)", opts->key);
    return FTK_OK;
}

static ftk_status sft_compute(struct ftk_loss *l, const struct ftk_loss_batch *b, double *loss, float *dlogps,
                              struct ftk_metrics *m)
{
    (void)l;
    (void)m;
    double sum = 0;
    int64_t n = 0;
    for (int64_t i = 0; i < b->B; i++) {
        sum += b->logps[i];
        n += b->n_tokens[i];
    }
    int64_t denom = b->n_tokens_total > 0 ? b->n_tokens_total : n;
    FTK_FAIL_IF(denom == 0, FTK_E_INVALID, "batch has no labelled tokens");
    *loss = -sum / (double)denom;
    for (int64_t i = 0; i < b->B; i++)
        dlogps[i] = (float)(-1.0 / (double)denom);
    return FTK_OK;
}

/* d loss / d logps = -1 / n_tokens_total whatever the log-probs are */
static int sft_linear(struct ftk_loss *l)
{
    (void)l;
    return 1;
}

FTK_EXPORT const struct ftk_loss_plugin ftk_loss_plugin = {
    .abi_version = FTK_LOSS_ABI,
    .struct_size = sizeof(struct ftk_loss_plugin),
    .name = "sft",
    .priv_size = 0,
    .init = sft_init,
    .compute = sft_compute,
    .linear = sft_linear,
};
