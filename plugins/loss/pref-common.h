/* plugins/loss/pref-common.h: small helpers shared by the preference loss plugins (dpo, orpo,
 * simpo, kto). Each plugin is its own .so, so these are static inline; all math in double, as
 * the per-row sums arrive in F32 and the losses are compared with TRL at 1e-6. */
#ifndef FTK_PREF_COMMON_H
#define FTK_PREF_COMMON_H

#include <math.h>
#include <string.h>
#include "ftk/plugin.h"

/* log(sigmoid(x)) without overflow: min(x,0) - log1p(exp(-|x|)) (torch's F.logsigmoid). */
static inline double pref_logsig(double x) { return (x < 0 ? x : 0) - log1p(exp(-fabs(x))); }
static inline double pref_sig(double x) { return x >= 0 ? 1 / (1 + exp(-x)) : exp(x) / (1 + exp(x)); }

/* Pairwise batches: B/2 chosen rows, then the B/2 rejected rows in the same order. */
static inline ftk_status pref_check_pairwise(const struct ftk_loss_batch *b, const char *loss)
{
    FTK_FAIL_IF(!b->pairwise || b->B < 2 || b->B % 2, FTK_E_INVALID,
                "%s needs pairwise batches (B/2 chosen rows, then B/2 rejected): pack a pairwise stream "
                "(this batch has %lld rows%s)", loss, (long long)b->B, b->pairwise ? "" : ", not pairwise");
    return FTK_OK;
}

/* Row i's log-prob sum divided by its labelled tokens (LLaMA-Factory's logps / valid_length). */
static inline ftk_status pref_avg(const struct ftk_loss_batch *b, int64_t i, double sum, double *out)
{
    FTK_FAIL_IF(b->n_tokens[i] <= 0, FTK_E_INVALID, "row %lld has no labelled tokens (a length-normalised loss divides by them)",
                (long long)i);
    *out = sum / (double)b->n_tokens[i];
    return FTK_OK;
}

/* The reward metrics of LLaMA-Factory's CustomDPOTrainer / TRL's DPOTrainer, from per-pair
 * rewards and policy log-probs (as the loss saw them: sums, or averages where it normalises). */
static inline void pref_pair_metrics(struct ftk_metrics *m, int64_t P, const double *cr, const double *rr,
                                     const double *pc, const double *pr)
{
    double sc = 0, sr = 0, acc = 0, mar = 0, lc = 0, lr = 0;
    for (int64_t i = 0; i < P; i++) {
        sc += cr[i];
        sr += rr[i];
        acc += cr[i] > rr[i];
        mar += cr[i] - rr[i];
        lc += pc[i];
        lr += pr[i];
    }
    ftk_metrics_add(m, "rewards/chosen", sc / (double)P);
    ftk_metrics_add(m, "rewards/rejected", sr / (double)P);
    ftk_metrics_add(m, "rewards/accuracies", acc / (double)P);
    ftk_metrics_add(m, "rewards/margins", mar / (double)P);
    ftk_metrics_add(m, "logps/chosen", lc / (double)P);
    ftk_metrics_add(m, "logps/rejected", lr / (double)P);
}

/* Options the plugin does not know are an error naming them. */
static inline ftk_status pref_check_keys(const struct ftk_kv *opts, const char *loss, const char *const *known)
{
    for (; opts && opts->key; opts++) {
        int ok = 0;
        for (const char *const *k = known; *k; k++)
            ok |= !strcmp(*k, opts->key);
        FTK_FAIL_IF(!ok, FTK_E_INVALID, "%s: unknown option %s", loss, opts->key);
    }
    return FTK_OK;
}

#endif
