/* plugins/loss/simpo.c: SimPO (Meng et al. 2024, reference-free, length-normalised) as
 * LLaMA-Factory's CustomDPOTrainer.simpo_loss computes it (TRL's CPOTrainer with
 * loss_type="simpo", label_smoothing 0 and cpo_alpha 0 is the same), on average log-probs:
 *
 *   pc = logps_c / n_c, pr = logps_r / n_r
 *   loss_i = -logsig(beta (pc - pr - gamma / beta))   (+ pref_ftx * -pc)
 *
 * Mean over pairs, divided by the step's micro-batches. Rewards beta * pc, beta * pr. */
#include <stdlib.h>
#include "pref-common.h"

struct simpo {
    double beta, gamma, ftx;
};

static ftk_status simpo_init(struct ftk_loss *l, const struct ftk_kv *opts)
{
    static const char *const known[] = {"beta", "gamma", "simpo_gamma", "pref_ftx", NULL};
    struct simpo *p = ftk_loss_priv(l);
    FTK_TRY(pref_check_keys(opts, "simpo", known));
    FTK_TRY(ftk_kv_double(opts, "beta", 0.1, &p->beta));    /* LLaMA-Factory pref_beta */
    FTK_TRY(ftk_kv_double(opts, "gamma", 0.5, &p->gamma));  /* LLaMA-Factory simpo_gamma */
    if (ftk_kv_get(opts, "simpo_gamma"))
        FTK_TRY(ftk_kv_double(opts, "simpo_gamma", 0.5, &p->gamma));
    FTK_TRY(ftk_kv_double(opts, "pref_ftx", 0.0, &p->ftx));
    FTK_FAIL_IF(!(p->beta > 0), FTK_E_INVALID, "simpo: beta=%g must be > 0", p->beta);
    FTK_FAIL_IF(!(p->ftx >= 0), FTK_E_INVALID, "simpo: pref_ftx=%g must be >= 0", p->ftx);
    return FTK_OK;
}

static ftk_status simpo_compute(struct ftk_loss *l, const struct ftk_loss_batch *b, double *loss, float *dlogps,
                                struct ftk_metrics *met)
{
    const struct simpo *p = ftk_loss_priv(l);
    FTK_TRY(pref_check_pairwise(b, "simpo"));
    const int64_t P = b->B / 2;
    const double beta = p->beta, accum = (double)(b->accum > 0 ? b->accum : 1);
    double *w = malloc((size_t)P * 4 * sizeof *w);
    FTK_FAIL_IF(!w, FTK_E_NOMEM, "out of memory");
    double *pc = w, *pr = w + P, *cr = w + 2 * P, *rr = w + 3 * P;
    double total = 0;
    ftk_status s = FTK_OK;
    for (int64_t i = 0; i < P && s == FTK_OK; i++)
        if ((s = pref_avg(b, i, b->logps[i], &pc[i])) == FTK_OK)
            s = pref_avg(b, i + P, b->logps[i + P], &pr[i]);
    for (int64_t i = 0; i < P && s == FTK_OK; i++) {
        double z = (pc[i] - pr[i]) - p->gamma / beta;
        total += -pref_logsig(beta * z) + p->ftx * -pc[i];
        double dz = -beta * pref_sig(-beta * z);
        dlogps[i] = (float)((dz - p->ftx) / (double)b->n_tokens[i] / (double)P / accum);
        dlogps[i + P] = (float)(-dz / (double)b->n_tokens[i + P] / (double)P / accum);
        cr[i] = beta * pc[i];
        rr[i] = beta * pr[i];
    }
    if (s == FTK_OK) {
        *loss = total / (double)P / accum;
        pref_pair_metrics(met, P, cr, rr, pc, pr);
    }
    free(w);
    return s;
}

FTK_EXPORT const struct ftk_loss_plugin ftk_loss_plugin = {
    .abi_version = FTK_LOSS_ABI,
    .struct_size = sizeof(struct ftk_loss_plugin),
    .name = "simpo",
    .priv_size = sizeof(struct simpo),
    .init = simpo_init,
    .compute = simpo_compute,
};
