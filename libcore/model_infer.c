/* libcore/model_infer.c: inference with a KV cache (generation): prefill of one row through
 * the training forward with its keys and values captured, and one-token decode steps for all
 * rows of a cache. Shapes: B cache rows, S cache capacity, C hidden, H/Hkv heads, D head dim. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "ftk/rope.h"
#include "model-impl.h"

ftk_status ftk_kv_cache_create(struct ftk_model *m, int64_t B, int64_t S, struct ftk_kv_cache **out)
{
    FTK_FAIL_IF(B <= 0 || S <= 0, FTK_E_INVALID, "kv cache of %lld rows x %lld positions", (long long)B, (long long)S);
    const struct ftk_model_config *c = &m->cfg;
    struct ftk_kv_cache *kc = calloc(1, sizeof *kc);
    FTK_FAIL_IF(!kc, FTK_E_NOMEM, "out of memory");
    kc->m = m;
    kc->B = B;
    kc->S = S;
    kc->k = calloc((size_t)c->L, sizeof *kc->k);
    kc->v = calloc((size_t)c->L, sizeof *kc->v);
    kc->len = calloc((size_t)B, sizeof *kc->len);
    ftk_status s = kc->k && kc->v && kc->len ? FTK_OK : ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    size_t bytes = (size_t)(B * S * c->Hkv * c->D) * sizeof(float);
    for (int64_t l = 0; l < c->L && s == FTK_OK; l++) {
        s = m->be->alloc(m->ctx, bytes, (void **)&kc->k[l]);
        if (s == FTK_OK)
            s = m->be->alloc(m->ctx, bytes, (void **)&kc->v[l]);
    }
    if (s == FTK_OK)
        s = m->be->alloc(m->ctx, (size_t)B * sizeof(int32_t), (void **)&kc->len_dev);
    if (s != FTK_OK) {
        ftk_kv_cache_free(kc);
        return ftk_error_wrap(s, "kv cache of %lld x %lld positions", (long long)B, (long long)S);
    }
    *out = kc;
    return FTK_OK;
}

void ftk_kv_cache_free(struct ftk_kv_cache *kc)
{
    if (!kc)
        return;
    struct ftk_model *m = kc->m;
    for (int64_t l = 0; l < m->cfg.L; l++) {
        if (kc->k && kc->k[l])
            m->be->free(m->ctx, kc->k[l]);
        if (kc->v && kc->v[l])
            m->be->free(m->ctx, kc->v[l]);
    }
    if (kc->len_dev)
        m->be->free(m->ctx, kc->len_dev);
    free(kc->k);
    free(kc->v);
    free(kc->len);
    free(kc);
}

int64_t ftk_kv_cache_len(const struct ftk_kv_cache *kc, int64_t row) { return row >= 0 && row < kc->B ? kc->len[row] : -1; }
int64_t ftk_kv_cache_capacity(const struct ftk_kv_cache *kc) { return kc->S; }
void ftk_kv_cache_reset(struct ftk_kv_cache *kc, int64_t row)
{
    if (row >= 0 && row < kc->B)
        kc->len[row] = 0;
}

ftk_status model_capture_kv(struct ftk_model *m, int l, const float *k, const float *v, int64_t N, int64_t at)
{
    struct ftk_kv_cache *kc = m->capture;
    FTK_FAIL_IF(at + N > kc->S, FTK_E_INVALID,
                "prompt of %lld positions (virtual and prefix positions of the adapter included) is longer than the context of %lld",
                (long long)(at + N), (long long)kc->S);
    size_t per = (size_t)(m->cfg.Hkv * m->cfg.D), off = (size_t)(m->capture_row * kc->S + at) * per;
    FTK_TRY(m->be->copy(m->ctx, kc->k[l] + off, k, (size_t)N * per * sizeof(float)));
    return m->be->copy(m->ctx, kc->v[l] + off, v, (size_t)N * per * sizeof(float));
}

/* Logits (rows, V) of the final hidden states xf into host memory. */
static ftk_status head_logits(struct ftk_model *m, const float *xf, int64_t rows, float *logits)
{
    float *dev = NULL;
    size_t bytes = (size_t)(rows * m->cfg.V) * sizeof(float);
    FTK_TRY(m->be->alloc(m->ctx, bytes, (void **)&dev));
    ftk_status s = m->be->linear_forward(m->ctx, dev, xf, m->lm_head->w, NULL, rows, m->cfg.C, m->cfg.V);
    if (s == FTK_OK)
        s = m->be->to_host(m->ctx, logits, dev, bytes);
    if (s == FTK_OK)   /* the head hook's rows (WARP) */
        s = model_head_patch_logits(m, xf, rows, logits);
    m->be->free(m->ctx, dev);
    return s;
}

ftk_status ftk_model_prefill(struct ftk_model *m, struct ftk_kv_cache *kc, int64_t row, const int32_t *ids, int64_t n,
                             float *logits)
{
    FTK_FAIL_IF(row < 0 || row >= kc->B, FTK_E_INVALID, "prefill: row %lld outside the cache's %lld", (long long)row, (long long)kc->B);
    FTK_FAIL_IF(kc->len[row] != 0, FTK_E_INVALID, "prefill: row %lld is not empty (reset it first)", (long long)row);
    FTK_FAIL_IF(n <= 0, FTK_E_INVALID, "prefill: empty prompt");
    FTK_FAIL_IF(n > kc->S, FTK_E_INVALID, "prompt of %lld tokens is longer than the context of %lld", (long long)n, (long long)kc->S);
    /* the forward's shifted labels cover the embed hook's virtual tokens too */
    int32_t *pos = malloc((size_t)n * sizeof *pos), *shift = malloc((size_t)(n + model_n_virtual(m)) * sizeof *shift);
    ftk_status s = pos && shift ? FTK_OK : ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    for (int64_t t = 0; pos && t < n; t++)
        pos[t] = (int32_t)t;
    struct ftk_batch_view b = {.B = 1, .T = n, .input_ids = ids, .position_ids = pos};
    m->capture = kc;
    m->capture_row = row;
    if (s == FTK_OK)
        s = model_run_forward(m, &b, 0, shift);
    m->capture = NULL;
    /* the cache holds the prefix (attn_kv), the virtual tokens (embed), then the prompt */
    int64_t held = m->n_prefix + m->T;
    if (s == FTK_OK && logits)
        s = head_logits(m, m->xf + (m->T - 1) * m->cfg.C, 1, logits);
    if (s == FTK_OK)
        kc->len[row] = (int32_t)held;
    free(pos);
    free(shift);
    return s;
}

ftk_status ftk_model_decode(struct ftk_model *m, struct ftk_kv_cache *kc, const int32_t *ids, float *logits)
{
    const struct ftk_model_config *c = &m->cfg;
    const struct ftk_backend *be = m->be;
    void *ctx = m->ctx;
    int64_t B = kc->B, C = c->C;
    FTK_FAIL_IF(!FTK_BACKEND_HAS(be, attention_decode), FTK_E_UNSUPPORTED, "backend %s cannot decode with a KV cache", be->name);
    int32_t maxp = 0;
    for (int64_t r = 0; r < B; r++) {
        FTK_FAIL_IF(kc->len[r] >= kc->S, FTK_E_INVALID, "row %lld: the context of %lld positions is full", (long long)r, (long long)kc->S);
        FTK_FAIL_IF(ids[r] < 0 || ids[r] >= c->V, FTK_E_INVALID, "row %lld: token id %d outside the vocabulary", (long long)r, ids[r]);
        if (kc->len[r] > maxp)
            maxp = kc->len[r];
    }
    FTK_FAIL_IF(c->sliding_window && maxp + 1 > c->sliding_window, FTK_E_UNSUPPORTED,
                "generation past the model's sliding window of %lld positions is not implemented", (long long)c->sliding_window);
    FTK_TRY(model_workspace(m, B, 1, 0));
    m->has_seg = 0;   /* rows are independent sequences here (ftk_peft_segments says NULL) */
    int64_t R;
    float inv[1024];
    FTK_TRY(ftk_rope_inv_freq(&c->rope, maxp + 1, inv, &R, &m->rope_scale));
    m->rot_dim = R;
    FTK_TRY(be->to_device(ctx, m->inv_freq, inv, (size_t)(R / 2) * sizeof(float)));
    FTK_TRY(be->to_device(ctx, m->ids, ids, (size_t)B * 4));
    FTK_TRY(be->to_device(ctx, m->pos, kc->len, (size_t)B * 4));   /* the new token's position = len */
    int32_t *after = malloc((size_t)B * sizeof *after);
    FTK_FAIL_IF(!after, FTK_E_NOMEM, "out of memory");
    for (int64_t r = 0; r < B; r++)
        after[r] = kc->len[r] + 1;
    ftk_status s = be->to_device(ctx, kc->len_dev, after, (size_t)B * 4);
    free(after);
    FTK_TRY(s);
    float scale = 1.0f / sqrtf((float)c->D);
    size_t per = (size_t)(c->Hkv * c->D);

    FTK_TRY(be->embedding_forward(ctx, m->act[0].x_in, m->ids, m->wte->w, B, C, c->V));
    for (int l = 0; l < c->L; l++) {
        struct layer_act *a = &m->act[l];
        const struct layer_w *w = &m->layers[l];
        float *next = l + 1 < c->L ? m->act[l + 1].x_in : m->x_final;
        FTK_TRY(be->rmsnorm_forward(ctx, a->a, a->rstd1, a->x_in, w->ln1->w, B, C, c->rms_norm_eps));
        FTK_TRY(model_lin_fwd(m, l, FTK_LIN_Q, c->qk_norm ? a->q_pre : a->q, a->a, 0));
        FTK_TRY(model_lin_fwd(m, l, FTK_LIN_K, c->qk_norm ? a->k_pre : a->k, a->a, 0));
        FTK_TRY(model_lin_fwd(m, l, FTK_LIN_V, a->v, a->a, 0));
        if (c->qk_norm) {
            FTK_TRY(be->rmsnorm_forward(ctx, a->q, a->qrstd, a->q_pre, w->qn->w, B * c->H, c->D, c->rms_norm_eps));
            FTK_TRY(be->rmsnorm_forward(ctx, a->k, a->krstd, a->k_pre, w->kn->w, B * c->Hkv, c->D, c->rms_norm_eps));
        }
        FTK_TRY(be->rope_forward(ctx, a->q, m->pos, m->inv_freq, m->rope_scale, B, c->H, c->D, R));
        FTK_TRY(be->rope_forward(ctx, a->k, m->pos, m->inv_freq, m->rope_scale, B, c->Hkv, c->D, R));
        for (int64_t r = 0; r < B; r++) {   /* append this step's key and value of each row */
            size_t off = (size_t)(r * kc->S + kc->len[r]) * per;
            FTK_TRY(be->copy(ctx, kc->k[l] + off, a->k + r * (int64_t)per, per * sizeof(float)));
            FTK_TRY(be->copy(ctx, kc->v[l] + off, a->v + r * (int64_t)per, per * sizeof(float)));
        }
        FTK_TRY(be->attention_decode(ctx, a->o, a->q, kc->k[l], kc->v[l], kc->len_dev, B, kc->S, c->H, c->Hkv, c->D, scale));
        FTK_TRY(model_lin_fwd(m, l, FTK_LIN_O, m->dtmp, a->o, 0));
        FTK_TRY(model_sublayer_fwd(m, l, FTK_SUB_ATTN, m->dtmp, a->a, a->x_in, 0, 1));
        FTK_TRY(be->add(ctx, a->x_mid, a->x_in, m->dtmp, B * C));
        FTK_TRY(be->rmsnorm_forward(ctx, a->m, a->rstd2, a->x_mid, w->ln2->w, B, C, c->rms_norm_eps));
        FTK_TRY(model_lin_fwd(m, l, FTK_LIN_GATE, a->gate, a->m, 0));
        FTK_TRY(model_lin_fwd(m, l, FTK_LIN_UP, a->up, a->m, 0));
        FTK_TRY(be->swiglu_forward(ctx, a->h, a->gate, a->up, B * c->F));
        FTK_TRY(model_lin_fwd(m, l, FTK_LIN_DOWN, m->dtmp, a->h, 0));
        FTK_TRY(model_sublayer_fwd(m, l, FTK_SUB_MLP, m->dtmp, a->m, a->x_mid, 0, 1));
        FTK_TRY(be->add(ctx, next, a->x_mid, m->dtmp, B * C));
    }
    FTK_TRY(be->rmsnorm_forward(ctx, m->xf, m->rstdf, m->x_final, m->norm->w, B, C, c->rms_norm_eps));
    FTK_TRY(head_logits(m, m->xf, B, logits));
    for (int64_t r = 0; r < B; r++)
        kc->len[r]++;
    m->trained = 0;
    return FTK_OK;
}
