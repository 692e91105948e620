/* plugins/loss/orpo.c: ORPO (Hong et al. 2024, monolithic preference optimisation without a
 * reference model) as LLaMA-Factory's CustomDPOTrainer.odds_ratio_loss computes it (TRL's
 * ORPOTrainer.odds_ratio_loss has the same odds ratio), on length-normalised log-probs
 * (LLaMA-Factory divides by the labelled tokens for orpo):
 *
 *   pc = logps_c / n_c, pr = logps_r / n_r
 *   log_odds = (pc - pr) - (log1p(-exp(pc)) - log1p(-exp(pr)))
 *   loss_i = -pc - beta logsig(log_odds)   (+ pref_ftx * -pc, LLaMA-Factory's extra SFT term)
 *
 * Mean over pairs, divided by the step's micro-batches. Rewards beta * pc, beta * pr (no
 * reference); metrics sft_loss and odds_ratio_loss as LLaMA-Factory logs them. */
#include <stdlib.h>
#include "pref-common.h"

struct orpo {
    double beta, ftx;
};

static ftk_status orpo_init(struct ftk_loss *l, const struct ftk_kv *opts)
{
    static const char *const known[] = {"beta", "pref_ftx", NULL};
    struct orpo *o = ftk_loss_priv(l);
    FTK_TRY(pref_check_keys(opts, "orpo", known));
    FTK_TRY(ftk_kv_double(opts, "beta", 0.1, &o->beta));
    FTK_TRY(ftk_kv_double(opts, "pref_ftx", 0.0, &o->ftx));
    FTK_FAIL_IF(!(o->beta > 0), FTK_E_INVALID, "orpo: beta=%g must be > 0", o->beta);
    FTK_FAIL_IF(!(o->ftx >= 0), FTK_E_INVALID, "orpo: pref_ftx=%g must be >= 0", o->ftx);
    return FTK_OK;
}

static ftk_status orpo_compute(struct ftk_loss *l, const struct ftk_loss_batch *b, double *loss, float *dlogps,
                               struct ftk_metrics *met)
{
    const struct orpo *o = ftk_loss_priv(l);
    FTK_TRY(pref_check_pairwise(b, "orpo"));
    const int64_t P = b->B / 2;
    const double beta = o->beta, accum = (double)(b->accum > 0 ? b->accum : 1);
    double *w = malloc((size_t)P * 4 * sizeof *w);
    FTK_FAIL_IF(!w, FTK_E_NOMEM, "out of memory");
    double *pc = w, *pr = w + P, *cr = w + 2 * P, *rr = w + 3 * P;
    double total = 0, sft = 0, orl = 0;
    ftk_status s = FTK_OK;
    for (int64_t i = 0; i < P && s == FTK_OK; i++)
        if ((s = pref_avg(b, i, b->logps[i], &pc[i])) == FTK_OK)
            s = pref_avg(b, i + P, b->logps[i + P], &pr[i]);
    for (int64_t i = 0; i < P && s == FTK_OK; i++) {
        if (!(pc[i] < 0 && pr[i] < 0)) {
            s = ftk_error_set(FTK_E_INVALID, __FILE__, __LINE__,
                              "orpo: pair %lld has an average log-prob of 0 (probability 1): the odds are infinite", (long long)i);
            break;
        }
        double lo = (pc[i] - pr[i]) - (log1p(-exp(pc[i])) - log1p(-exp(pr[i])));
        double orr = -pref_logsig(lo);
        double L = -pc[i] + beta * orr + o->ftx * -pc[i];
        total += L;
        sft += -pc[i];
        orl += (L - -pc[i]) / beta;   /* LLaMA-Factory: (losses - sft_loss) / beta */
        /* d lo / d pc = 1 / (1 - exp(pc)); d lo / d pr = -1 / (1 - exp(pr)) */
        double dlo = -beta * pref_sig(-lo);
        double gc = -1 - o->ftx + dlo / (-expm1(pc[i])), gr = -dlo / (-expm1(pr[i]));
        dlogps[i] = (float)(gc / (double)b->n_tokens[i] / (double)P / accum);
        dlogps[i + P] = (float)(gr / (double)b->n_tokens[i + P] / (double)P / accum);
        cr[i] = beta * pc[i];
        rr[i] = beta * pr[i];
    }
    if (s == FTK_OK) {
        *loss = total / (double)P / accum;
        pref_pair_metrics(met, P, cr, rr, pc, pr);
        ftk_metrics_add(met, "sft_loss", sft / (double)P);
        ftk_metrics_add(met, "odds_ratio_loss", orl / (double)P);
    }
    free(w);
    return s;
}

FTK_EXPORT const struct ftk_loss_plugin ftk_loss_plugin = {
    .abi_version = FTK_LOSS_ABI,
    .struct_size = sizeof(struct ftk_loss_plugin),
    .name = "orpo",
    .priv_size = sizeof(struct orpo),
    .init = orpo_init,
    .compute = orpo_compute,
};
