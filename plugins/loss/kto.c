/* plugins/loss/kto.c: KTO (Ethayarajh et al. 2024) as TRL's KTOTrainer computes it (the loss
 * LLaMA-Factory's CustomKTOTrainer calls), for KTO batches (kto_tag (B): 1 desirable, 0 not):
 *
 *   kl = max(0, mean_j(kl_logps_j - kl_ref_logps_j))    over the KL rows (mismatched prompt and
 *        completion pairs), detached: no gradient flows through it (TRL: .detach(), no_grad)
 *   desirable row:   wd * (1 - sig(beta (logps - ref_logps - kl)))
 *   undesirable row: wu * (1 - sig(beta (kl - (logps - ref_logps))))
 *   loss = mean over the B rows (torch.cat(...).nanmean()), divided by the step's micro-batches
 *   pref_ftx: + pref_ftx * mean_desirable(-logps / n) / n_desirable * B (LLaMA-Factory's term,
 *   "remember to rescale", verbatim)
 *
 * Metrics as TRL's KTOTrainer: kl, rewards/chosen and logps/chosen (means over the desirable
 * rows, only when there are some), rewards/rejected and logps/rejected likewise, and
 * rewards/margins when both kinds are present. */
#include <stdlib.h>
#include "pref-common.h"

struct kto {
    double beta, wd, wu, ftx;
};

static ftk_status kto_init(struct ftk_loss *l, const struct ftk_kv *opts)
{
    static const char *const known[] = {"beta", "desirable_weight", "undesirable_weight", "kto_chosen_weight",
                                        "kto_rejected_weight", "pref_ftx", NULL};
    struct kto *k = ftk_loss_priv(l);
    FTK_TRY(pref_check_keys(opts, "kto", known));
    FTK_TRY(ftk_kv_double(opts, "beta", 0.1, &k->beta));
    FTK_TRY(ftk_kv_double(opts, "desirable_weight", 1.0, &k->wd));
    FTK_TRY(ftk_kv_double(opts, "undesirable_weight", 1.0, &k->wu));
    if (ftk_kv_get(opts, "kto_chosen_weight"))   /* LLaMA-Factory's names */
        FTK_TRY(ftk_kv_double(opts, "kto_chosen_weight", 1.0, &k->wd));
    if (ftk_kv_get(opts, "kto_rejected_weight"))
        FTK_TRY(ftk_kv_double(opts, "kto_rejected_weight", 1.0, &k->wu));
    FTK_TRY(ftk_kv_double(opts, "pref_ftx", 0.0, &k->ftx));
    FTK_FAIL_IF(!(k->beta > 0), FTK_E_INVALID, "kto: beta=%g must be > 0", k->beta);
    FTK_FAIL_IF(!(k->wd >= 0 && k->wu >= 0), FTK_E_INVALID, "kto: the desirable/undesirable weights must be >= 0");
    FTK_FAIL_IF(!(k->ftx >= 0), FTK_E_INVALID, "kto: pref_ftx=%g must be >= 0", k->ftx);
    return FTK_OK;
}

static int kto_needs(struct ftk_loss *l) { (void)l; return 1; }

static ftk_status kto_compute(struct ftk_loss *l, const struct ftk_loss_batch *b, double *loss, float *dlogps,
                              struct ftk_metrics *met)
{
    const struct kto *k = ftk_loss_priv(l);
    struct ftk_tensor *tag = b->batch ? ftk_message_find(b->batch, "kto_tag") : NULL;
    FTK_FAIL_IF(!tag, FTK_E_INVALID, "kto needs KTO batches (kto_tag): pack a kto stream");
    FTK_TRY(ftk_message_get(b->batch, "kto_tag", FTK_DTYPE_I32, 1, &tag));
    FTK_FAIL_IF(tag->shape[0] != b->B, FTK_E_INVALID, "kto: kto_tag has %lld entries for %lld rows",
                (long long)tag->shape[0], (long long)b->B);
    FTK_FAIL_IF(b->B_kl <= 0 || !b->kl_logps || !b->kl_ref_logps, FTK_E_INVALID,
                "kto needs the KL rows' log-probs (kl_input_ids ...; the KL reference from `ftk ref-logps` or online)");
    const int32_t *tags = tag->data;
    const double beta = k->beta, accum = (double)(b->accum > 0 ? b->accum : 1);
    double kl = 0;
    for (int64_t j = 0; j < b->B_kl; j++)
        kl += (double)b->kl_logps[j] - (double)b->kl_ref_logps[j];
    kl /= (double)b->B_kl;
    if (kl < 0)
        kl = 0;
    double total = 0, rc = 0, rr = 0, lc = 0, lrj = 0, sft = 0;
    int64_t nc = 0, nr = 0;
    for (int64_t i = 0; i < b->B; i++) {
        double lr = (double)b->logps[i] - (double)b->ref_logps[i], g;
        if (tags[i]) {
            double s = pref_sig(beta * (lr - kl));
            total += k->wd * (1 - s);
            g = -k->wd * beta * s * (1 - s);
            rc += beta * lr, lc += b->logps[i], nc++;
        } else {
            double s = pref_sig(beta * (kl - lr));
            total += k->wu * (1 - s);
            g = k->wu * beta * s * (1 - s);
            rr += beta * lr, lrj += b->logps[i], nr++;
        }
        dlogps[i] = (float)(g / (double)b->B / accum);
    }
    if (k->ftx > 0 && nc > 0) {
        for (int64_t i = 0; i < b->B; i++)
            if (tags[i]) {
                double avg = 0;
                FTK_TRY(pref_avg(b, i, b->logps[i], &avg));
                sft += -avg;
            }
        /* ftx * mean(-avg) / nc * B, its share of row i: ftx * (-1/n_i) / nc / nc * B */
        for (int64_t i = 0; i < b->B; i++)
            if (tags[i])
                dlogps[i] += (float)(-k->ftx / (double)b->n_tokens[i] / (double)nc / (double)nc * (double)b->B / accum);
    }
    double L = total / (double)b->B;
    if (k->ftx > 0 && nc > 0)
        L += k->ftx * (sft / (double)nc) / (double)nc * (double)b->B;
    *loss = L / accum;
    ftk_metrics_add(met, "kl", kl);
    if (nc) {
        ftk_metrics_add(met, "rewards/chosen", rc / (double)nc);
        ftk_metrics_add(met, "logps/chosen", lc / (double)nc);
    }
    if (nr) {
        ftk_metrics_add(met, "rewards/rejected", rr / (double)nr);
        ftk_metrics_add(met, "logps/rejected", lrj / (double)nr);
    }
    if (nc && nr)
        ftk_metrics_add(met, "rewards/margins", rc / (double)nc - rr / (double)nr);
    return FTK_OK;
}

FTK_EXPORT const struct ftk_loss_plugin ftk_loss_plugin = {
    .abi_version = FTK_LOSS_ABI,
    .struct_size = sizeof(struct ftk_loss_plugin),
    .name = "kto",
    .priv_size = sizeof(struct kto),
    .init = kto_init,
    .needs_ref = kto_needs,
    .compute = kto_compute,
    .needs_kl = kto_needs,
};
