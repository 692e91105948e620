/* libcore/model_hooks.c: the PEFT hook points beyond `linear` (DESIGN.md section 6), as
 * model_run.c and model_infer.c call them: virtual tokens for the embed hook, the sublayer
 * outputs, and the prefix keys/values of attn_kv. */
#include <stdlib.h>
#include <string.h>
#include "model-impl.h"

int64_t model_n_virtual(struct ftk_model *m)
{
    return MODEL_HOOK(m, n_virtual) ? m->peft->pl->n_virtual(m->peft) : 0;
}

ftk_status model_expand_virtual(struct ftk_model *m, const struct ftk_batch_view *b, struct ftk_batch_view *out,
                                int32_t **buf)
{
    int64_t P = model_n_virtual(m), B = b->B, T = b->T, X = T + P;
    FTK_FAIL_IF(P < 0, FTK_E_INVALID, "peft \"%s\": %lld virtual tokens", m->peft->pl->name, (long long)P);
    /* segment_ids: every padded batch of ftk pack has them (the row's tokens 1, padding 0); the
     * virtual tokens join the row's one document. Rows of several documents (neat packing) would
     * need the virtual tokens before every document, not once per row: refused. */
    int32_t *rowseg = calloc((size_t)B, sizeof *rowseg);
    FTK_FAIL_IF(!rowseg, FTK_E_NOMEM, "out of memory");
    for (int64_t r = 0; b->segment_ids && r < B; r++)
        for (int64_t t = 0; t < T; t++) {
            int32_t sg = b->segment_ids[r * T + t];
            if (sg != 0 && rowseg[r] != 0 && sg != rowseg[r]) {
                int32_t first = rowseg[r];
                free(rowseg);
                FTK_FAIL(FTK_E_UNSUPPORTED,
                         "peft \"%s\" prepends virtual tokens to each row; row %lld packs several documents (segment_ids "
                         "%d and %d), which would each need them: pack without --neat-packing", m->peft->pl->name,
                         (long long)r, first, sg);
            }
            if (sg != 0)
                rowseg[r] = sg;
        }
    int32_t *a = malloc((size_t)(4 * B * X) * sizeof *a);
    if (!a)
        free(rowseg);
    FTK_FAIL_IF(!a, FTK_E_NOMEM, "out of memory");
    int32_t *ids = a, *lab = a + B * X, *pos = a + 2 * B * X, *seg = a + 3 * B * X;
    for (int64_t r = 0; r < B; r++)
        for (int64_t t = 0; t < X; t++) {
            int64_t i = r * X + t, j = r * T + t - P;
            ids[i] = t < P ? 0 : b->input_ids[j];
            lab[i] = t < P || !b->labels ? FTK_IGNORE_INDEX : b->labels[j];
            pos[i] = t < P ? (int32_t)t : (int32_t)P + (b->position_ids ? b->position_ids[j] : (int32_t)(t - P));
            seg[i] = t < P ? rowseg[r] : b->segment_ids ? b->segment_ids[j] : 0;
        }
    free(rowseg);
    *out = (struct ftk_batch_view){.B = B, .T = X, .input_ids = ids, .labels = lab, .position_ids = pos,
                                   .segment_ids = b->segment_ids ? seg : NULL};
    *buf = a;
    return FTK_OK;
}

ftk_status model_sublayer_fwd(struct ftk_model *m, int l, enum ftk_sublayer_kind kind, float *h, const float *x,
                              const float *resid, int train, int decoding)
{
    if (!MODEL_HOOK(m, sublayer_forward))
        return FTK_OK;
    struct ftk_sublayer s = {.layer = l, .kind = kind, .B = m->B, .T = m->T,
                             .seg = m->has_seg && !decoding ? m->seg : NULL, .decoding = decoding, .resid = resid};
    return m->peft->pl->sublayer_forward(m->peft, &s, h, x, train);
}

ftk_status model_sublayer_bwd(struct ftk_model *m, int l, enum ftk_sublayer_kind kind, float *dh, float *dx,
                              float *dy, const float *x, const float *resid)
{
    FTK_TRY(m->be->copy(m->ctx, dh, dy, (size_t)(m->N * m->cfg.C) * sizeof(float)));
    if (!MODEL_HOOK(m, sublayer_backward))
        return FTK_OK;
    struct ftk_sublayer s = {.layer = l, .kind = kind, .B = m->B, .T = m->T, .seg = m->has_seg ? m->seg : NULL,
                             .resid = resid, .dresid = dy};
    return m->peft->pl->sublayer_backward(m->peft, &s, dh, dx, dy, x);
}

ftk_status model_prefix(struct ftk_model *m, int l, const float **pk, const float **pv, float **dpk, float **dpv)
{
    int64_t P = 0;
    float *gk = NULL, *gv = NULL;
    *pk = *pv = NULL;
    FTK_TRY(m->peft->pl->attn_prefix(m->peft, l, &P, pk, pv, &gk, &gv));
    FTK_FAIL_IF(P != m->n_prefix, FTK_E_INVALID, "peft \"%s\": layer %d has %lld prefix positions, layer 0 had %lld",
                m->peft->pl->name, l, (long long)P, (long long)m->n_prefix);
    FTK_FAIL_IF(P > 0 && (!*pk || !*pv), FTK_E_INVALID, "peft \"%s\": layer %d gave no prefix keys/values", m->peft->pl->name, l);
    if (dpk)
        *dpk = gk;
    if (dpv)
        *dpv = gv;
    return FTK_OK;
}
