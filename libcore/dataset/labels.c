/* libcore/dataset/labels.c: input_ids and labels of one example, with cutoff_len truncation,
 * as LLaMA-Factory's processors build them (src/llamafactory/data/processor/supervised.py,
 * pairwise.py, feedback.py; processor_utils.py infer_seqlen). */
#include <stdint.h>
#include "ftk/dataset.h"
#include "ftk/message.h"
#include "dataset-impl.h"

/* No cutoff: large enough never to cut, small enough that 2 * target never overflows. */
#define NO_CUTOFF ((int64_t)1 << 60)

static int64_t cutoff_of(const struct ftk_label_config *c) { return c->cutoff_len > 0 ? c->cutoff_len : NO_CUTOFF; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

void ftk_infer_seqlen(int64_t source_len, int64_t target_len, int64_t cutoff_len, int64_t *new_source,
                      int64_t *new_target)
{
    int64_t max_target;
    if (target_len * 2 < cutoff_len)        /* truncate source */
        max_target = cutoff_len;
    else if (source_len * 2 < cutoff_len)   /* truncate target */
        max_target = cutoff_len - source_len;
    else                                    /* truncate both: int(cutoff * target / (source + target)) */
        max_target = (int64_t)((double)cutoff_len * ((double)target_len / (double)(source_len + target_len)));
    *new_target = min64(max_target, target_len);
    int64_t max_source = max64(cutoff_len - *new_target, 0);
    *new_source = min64(max_source, source_len);
}

ftk_status ftk_labels_supervised(const struct ftk_label_config *c, const struct ftk_ids *msg_ids, size_t n,
                                 struct ftk_ids *input_ids, struct ftk_ids *labels, int *truncated)
{
    FTK_FAIL_IF(n == 0 || n % 2 != 0, FTK_E_FORMAT, "a supervised example needs (prompt, response) turns, got %zu messages", n);
    int64_t cutoff = cutoff_of(c);
    size_t turns = n / 2;
    *truncated = 0;
    /* Turns in the order they are taken: mask_history takes the last turns first (they have
     * priority) and prepends them, so the result is still in conversation order. */
    struct ftk_ids seq_ids = {0}, seq_labels = {0};
    int64_t total = c->efficient_eos ? 1 : 0;
    ftk_status st = FTK_OK;
    /* Built back to front when mask_history: collect per-turn pieces, then assemble. */
    struct piece { size_t turn; int64_t src, tgt; } *pieces = calloc(turns, sizeof *pieces);
    FTK_FAIL_IF(!pieces, FTK_E_NOMEM, "out of memory");
    size_t np = 0;
    for (size_t k = 0; k < turns; k++) {
        if (total >= cutoff) {
            *truncated = 1;
            break;
        }
        size_t turn = c->mask_history ? turns - 1 - k : k;
        int64_t sl = (int64_t)msg_ids[2 * turn].n, tl = (int64_t)msg_ids[2 * turn + 1].n, ns, nt;
        ftk_infer_seqlen(sl, tl, cutoff - total, &ns, &nt);
        if (ns < sl || nt < tl)
            *truncated = 1;
        total += ns + nt;
        pieces[np++] = (struct piece){turn, ns, nt};
    }
    /* Assemble in conversation order; `k` is the index in taking order (turn_idx of the HF code). */
    for (size_t j = 0; j < np && st == FTK_OK; j++) {
        size_t k = c->mask_history ? np - 1 - j : j;
        const struct piece *p = &pieces[k];
        const struct ftk_ids *src = &msg_ids[2 * p->turn], *tgt = &msg_ids[2 * p->turn + 1];
        st = ds_ids_append(&seq_ids, src->ids, (size_t)p->src);
        if (st == FTK_OK)
            st = ds_ids_append(&seq_ids, tgt->ids, (size_t)p->tgt);
        /* source labels */
        if (st == FTK_OK) {
            if (c->train_on_prompt)
                st = ds_ids_append(&seq_labels, src->ids, (size_t)p->src);
            else if (c->efficient_eos && k != 0 && p->src > 0) {
                /* the previous turn's eos is the first label of this prompt */
                st = ds_ids_push(&seq_labels, c->eos_id);
                if (st == FTK_OK)
                    st = ds_ids_fill(&seq_labels, FTK_IGNORE_INDEX, (size_t)p->src - 1);
            } else
                st = ds_ids_fill(&seq_labels, FTK_IGNORE_INDEX, (size_t)p->src);
        }
        /* target labels */
        if (st == FTK_OK) {
            if (c->mask_history && k != 0)
                st = ds_ids_fill(&seq_labels, FTK_IGNORE_INDEX, (size_t)p->tgt);
            else
                st = ds_ids_append(&seq_labels, tgt->ids, (size_t)p->tgt);
        }
    }
    if (st == FTK_OK && c->efficient_eos) {
        st = ds_ids_push(&seq_ids, c->eos_id);
        if (st == FTK_OK)
            st = ds_ids_push(&seq_labels, c->eos_id);
    }
    if (st == FTK_OK)
        st = ds_ids_append(input_ids, seq_ids.ids, seq_ids.n);
    if (st == FTK_OK)
        st = ds_ids_append(labels, seq_labels.ids, seq_labels.n);
    ds_ids_free(&seq_ids);
    ds_ids_free(&seq_labels);
    free(pieces);
    return st;
}

/* prompt (cut to src) + reply (cut to tgt, with the efficient eos) -> ids and labels */
static ftk_status join(const struct ftk_ids *prompt, int64_t src, const struct ftk_ids *reply, int64_t tgt,
                       int add_eos, int32_t eos, struct ftk_ids *ids, struct ftk_ids *labels)
{
    /* the reply with its eos, cut to tgt */
    int64_t rn = (int64_t)reply->n;
    FTK_TRY(ds_ids_append(ids, prompt->ids, (size_t)src));
    FTK_TRY(ds_ids_fill(labels, FTK_IGNORE_INDEX, (size_t)src));
    int64_t from_reply = min64(tgt, rn);
    FTK_TRY(ds_ids_append(ids, reply->ids, (size_t)from_reply));
    FTK_TRY(ds_ids_append(labels, reply->ids, (size_t)from_reply));
    if (add_eos && tgt > rn) {
        FTK_TRY(ds_ids_push(ids, eos));
        FTK_TRY(ds_ids_push(labels, eos));
    }
    return FTK_OK;
}

ftk_status ftk_labels_pairwise(const struct ftk_label_config *c, const struct ftk_ids *prompt,
                               const struct ftk_ids *chosen, const struct ftk_ids *rejected,
                               struct ftk_ids *chosen_ids, struct ftk_ids *chosen_labels,
                               struct ftk_ids *rejected_ids, struct ftk_ids *rejected_labels, int *truncated)
{
    int64_t e = c->efficient_eos ? 1 : 0;
    int64_t cl = (int64_t)chosen->n + e, rl = (int64_t)rejected->n + e, pl = (int64_t)prompt->n, ns, nt;
    /* "consider the response is more important": the longer reply decides */
    ftk_infer_seqlen(pl, max64(cl, rl), cutoff_of(c), &ns, &nt);
    *truncated = ns < pl || nt < cl || nt < rl;
    FTK_TRY(join(prompt, ns, chosen, min64(nt, cl), c->efficient_eos, c->eos_id, chosen_ids, chosen_labels));
    FTK_TRY(join(prompt, ns, rejected, min64(nt, rl), c->efficient_eos, c->eos_id, rejected_ids, rejected_labels));
    return FTK_OK;
}

ftk_status ftk_labels_feedback(const struct ftk_label_config *c, const struct ftk_ids *prompt,
                               const struct ftk_ids *response, struct ftk_ids *input_ids, struct ftk_ids *labels,
                               int64_t *prompt_len, int *truncated)
{
    int64_t e = c->efficient_eos ? 1 : 0;
    int64_t rl = (int64_t)response->n + e, pl = (int64_t)prompt->n, ns, nt;
    ftk_infer_seqlen(pl, rl, cutoff_of(c), &ns, &nt);
    *truncated = ns < pl || nt < rl;
    *prompt_len = ns;
    return join(prompt, ns, response, nt, c->efficient_eos, c->eos_id, input_ids, labels);
}
