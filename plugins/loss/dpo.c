/* plugins/loss/dpo.c: Direct Preference Optimization and its pairwise relatives, as
 * LLaMA-Factory's CustomDPOTrainer computes them with TRL's DPOTrainer.dpo_loss:
 *
 *   z = (pi_c - pi_r) - (ref_c - ref_r)                        per pair (chosen row i, rejected i+B/2)
 *   sigmoid   -(1-ls) logsig(beta z) - ls logsig(-beta z)      (DPO; ls = label_smoothing: cDPO)
 *   hinge     relu(1 - beta z)                                 (SLiC)
 *   ipo       (z - 1/(2 beta))^2  on length-normalised log-probs (LLaMA-Factory divides policy and
 *             reference log-probs by the labelled tokens for ipo; TRL >= 1.0 does the same)
 *   kto_pair  TRL 0.8's pairwise KTO: KL_c = max(0, mean(pi_c - ref_c)), KL_r likewise,
 *             losses [1 - sig(beta (lr_c - KL_r)), 1 - sig(beta (KL_c - lr_r))] (2P of them)
 *
 * The loss is the mean over pairs (over the 2P terms for kto_pair), divided by the step's
 * micro-batches (HF Trainer's loss / gradient_accumulation_steps). pref_ftx adds
 * pref_ftx * mean(-pi_c / n_c), LLaMA-Factory's SFT term. Rewards beta (pi - ref), on the same
 * (summed or averaged) log-probs the loss uses, as LLaMA-Factory reports them. */
#include <stdlib.h>
#include "pref-common.h"

enum dpo_type { DPO_SIGMOID, DPO_HINGE, DPO_IPO, DPO_KTO_PAIR };

struct dpo {
    enum dpo_type type;
    double beta, ls, ftx;
};

static ftk_status dpo_init(struct ftk_loss *l, const struct ftk_kv *opts)
{
    static const char *const known[] = {"beta", "loss_type", "label_smoothing", "pref_ftx", NULL};
    struct dpo *d = ftk_loss_priv(l);
    FTK_TRY(pref_check_keys(opts, "dpo", known));
    FTK_TRY(ftk_kv_double(opts, "beta", 0.1, &d->beta));   /* LLaMA-Factory pref_beta */
    FTK_TRY(ftk_kv_double(opts, "label_smoothing", 0.0, &d->ls));
    FTK_TRY(ftk_kv_double(opts, "pref_ftx", 0.0, &d->ftx));
    const char *t = ftk_kv_get(opts, "loss_type");
    if (!t || !strcmp(t, "sigmoid"))
        d->type = DPO_SIGMOID;
    else if (!strcmp(t, "hinge"))
        d->type = DPO_HINGE;
    else if (!strcmp(t, "ipo"))
        d->type = DPO_IPO;
    else if (!strcmp(t, "kto_pair"))
        d->type = DPO_KTO_PAIR;
    else
        FTK_FAIL(FTK_E_INVALID, "dpo: loss_type=%s: use sigmoid, hinge, ipo or kto_pair", t);
    FTK_FAIL_IF(!(d->beta > 0), FTK_E_INVALID, "dpo: beta=%g must be > 0", d->beta);
    FTK_FAIL_IF(!(d->ls >= 0 && d->ls <= 0.5), FTK_E_INVALID, "dpo: label_smoothing=%g must be in [0, 0.5]", d->ls);
    FTK_FAIL_IF(d->ls > 0 && d->type != DPO_SIGMOID, FTK_E_INVALID, "dpo: label_smoothing applies to loss_type=sigmoid only");
    FTK_FAIL_IF(!(d->ftx >= 0), FTK_E_INVALID, "dpo: pref_ftx=%g must be >= 0", d->ftx);
    return FTK_OK;
}

static int dpo_needs_ref(struct ftk_loss *l) { (void)l; return 1; }

static ftk_status dpo_compute(struct ftk_loss *l, const struct ftk_loss_batch *b, double *loss, float *dlogps,
                              struct ftk_metrics *met)
{
    const struct dpo *d = ftk_loss_priv(l);
    FTK_TRY(pref_check_pairwise(b, "dpo"));
    const int64_t P = b->B / 2;
    const double beta = d->beta, accum = (double)(b->accum > 0 ? b->accum : 1);
    double *w = malloc((size_t)P * 6 * sizeof *w);
    FTK_FAIL_IF(!w, FTK_E_NOMEM, "out of memory");
    double *pc = w, *pr = w + P, *rc = w + 2 * P, *rr = w + 3 * P, *gc = w + 4 * P, *gr = w + 5 * P;
    ftk_status s = FTK_OK;
    for (int64_t i = 0; i < P && s == FTK_OK; i++) {
        pc[i] = b->logps[i], pr[i] = b->logps[i + P], rc[i] = b->ref_logps[i], rr[i] = b->ref_logps[i + P];
        if (d->type == DPO_IPO) {   /* LLaMA-Factory: all_logps / valid_length for ipo */
            if ((s = pref_avg(b, i, pc[i], &pc[i])) == FTK_OK && (s = pref_avg(b, i + P, pr[i], &pr[i])) == FTK_OK &&
                (s = pref_avg(b, i, rc[i], &rc[i])) == FTK_OK)
                s = pref_avg(b, i + P, rr[i], &rr[i]);
        }
    }
    if (s != FTK_OK) {
        free(w);
        return s;
    }
    /* gc, gr: d (sum of per-pair losses) / d (the log-probs as used: sums, or averages for ipo) */
    double total = 0;
    if (d->type == DPO_KTO_PAIR) {
        double mc = 0, mr = 0;
        for (int64_t i = 0; i < P; i++)
            mc += pc[i] - rc[i], mr += pr[i] - rr[i];
        mc /= (double)P, mr /= (double)P;
        /* torch.clamp(min=0) passes the gradient where x > 0 only (torch 2.15: none at 0, which
         * is where a LoRA's first step starts: policy = reference) */
        double klc = mc > 0 ? mc : 0, klr = mr > 0 ? mr : 0, pass_c = mc > 0, pass_r = mr > 0;
        double dklc = 0, dklr = 0;   /* d total / d KL_c, d KL_r */
        for (int64_t i = 0; i < P; i++) {
            double sa = pref_sig(beta * ((pc[i] - rc[i]) - klr)), sb = pref_sig(beta * (klc - (pr[i] - rr[i])));
            total += (1 - sa) + (1 - sb);
            gc[i] = -beta * sa * (1 - sa);
            dklr += beta * sa * (1 - sa);
            gr[i] = beta * sb * (1 - sb);
            dklc += -beta * sb * (1 - sb);
        }
        for (int64_t i = 0; i < P; i++) {
            gc[i] += dklc * pass_c / (double)P;
            gr[i] += dklr * pass_r / (double)P;
        }
        total /= 2.0;   /* the mean runs over 2P terms: halve, then divide by P below */
        for (int64_t i = 0; i < P; i++)
            gc[i] /= 2.0, gr[i] /= 2.0;
    } else {
        for (int64_t i = 0; i < P; i++) {
            double z = (pc[i] - pr[i]) - (rc[i] - rr[i]), L, dz;
            switch (d->type) {
            case DPO_SIGMOID:
                L = -(1 - d->ls) * pref_logsig(beta * z) - d->ls * pref_logsig(-beta * z);
                dz = -(1 - d->ls) * beta * pref_sig(-beta * z) + d->ls * beta * pref_sig(beta * z);
                break;
            case DPO_HINGE:
                L = 1 - beta * z > 0 ? 1 - beta * z : 0;
                dz = 1 - beta * z > 0 ? -beta : 0;   /* relu'(0) = 0 in torch */
                break;
            default: /* DPO_IPO */
                L = (z - 1 / (2 * beta)) * (z - 1 / (2 * beta));
                dz = 2 * (z - 1 / (2 * beta));
                break;
            }
            total += L;
            gc[i] = dz;
            gr[i] = -dz;
        }
    }
    /* LLaMA-Factory: losses += pref_ftx * (-chosen_logps / chosen_length) */
    double sft = 0;
    for (int64_t i = 0; i < P && d->ftx > 0 && s == FTK_OK; i++) {
        double avg = 0;
        if ((s = pref_avg(b, i, b->logps[i], &avg)) == FTK_OK)
            sft += -avg;
    }
    if (s != FTK_OK) {
        free(w);
        return s;
    }
    *loss = (total + d->ftx * sft) / (double)P / accum;
    for (int64_t i = 0; i < P; i++) {
        double sc = 1, sr = 1;   /* d used / d sum: 1, or 1/n for averaged log-probs */
        if (d->type == DPO_IPO)
            sc = 1.0 / (double)b->n_tokens[i], sr = 1.0 / (double)b->n_tokens[i + P];
        double g_c = gc[i] * sc + (d->ftx > 0 ? -d->ftx / (double)b->n_tokens[i] : 0);
        dlogps[i] = (float)(g_c / (double)P / accum);
        dlogps[i + P] = (float)(gr[i] * sr / (double)P / accum);
    }
    /* rewards beta (pi - ref), detached (TRL/LLaMA-Factory); reuse gc/gr as their storage */
    for (int64_t i = 0; i < P; i++)
        gc[i] = beta * (pc[i] - rc[i]), gr[i] = beta * (pr[i] - rr[i]);
    pref_pair_metrics(met, P, gc, gr, pc, pr);
    free(w);
    return FTK_OK;
}

FTK_EXPORT const struct ftk_loss_plugin ftk_loss_plugin = {
    .abi_version = FTK_LOSS_ABI,
    .struct_size = sizeof(struct ftk_loss_plugin),
    .name = "dpo",
    .priv_size = sizeof(struct dpo),
    .init = dpo_init,
    .needs_ref = dpo_needs_ref,
    .compute = dpo_compute,
};
