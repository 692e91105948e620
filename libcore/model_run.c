/* libcore/model_run.c: forward to per-row label log-probs and the hand-written backward of a
 * Llama-family model, op by op through the backend (llm.c style). Shapes: N = B*T tokens,
 * C hidden, H/Hkv heads, D head dim, F MLP width, V vocab. Matches transformers'
 * LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM in F32. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "ftk/rope.h"
#include "model-impl.h"

/* ---- workspace ------------------------------------------------------------------------ */

/* Carves `n` floats from the arena cursor (or only counts when base is NULL). */
static float *carve(float *base, size_t *off, int64_t n)
{
    float *p = base ? base + *off : NULL;
    *off += ((size_t)n + 15) & ~(size_t)15;   /* keep every buffer 64-byte aligned */
    return p;
}

/* Lays out every activation and gradient buffer for N tokens; train = 0 shares one layer's
 * buffers across all layers (inference keeps nothing for backward). */
static size_t layout(struct ftk_model *m, float *base, int64_t N, int train)
{
    const struct ftk_model_config *c = &m->cfg;
    int64_t C = c->C, HD = c->H * c->D, KD = c->Hkv * c->D, F = c->F;
    size_t off = 0;
    for (int64_t l = 0; l < c->L; l++) {
        struct layer_act *a = base ? &m->act[l] : NULL, tmp;
        if (!a)
            a = &tmp;
        if (l > 0 && (!train || m->recompute)) {   /* one layer's buffers serve all */
            if (base)
                m->act[l] = m->act[0];
            if (train)   /* recompute keeps each layer's input, to run it again in backward */
                a->x_in = carve(base, &off, N * C);
            continue;
        }
        a->x_in = carve(base, &off, N * C);
        a->a = carve(base, &off, N * C);
        a->rstd1 = carve(base, &off, N);
        a->q = carve(base, &off, N * HD);
        a->k = carve(base, &off, N * KD);
        a->v = carve(base, &off, N * KD);
        if (c->qk_norm) {
            a->q_pre = carve(base, &off, N * HD);
            a->k_pre = carve(base, &off, N * KD);
            a->qrstd = carve(base, &off, N * c->H);
            a->krstd = carve(base, &off, N * c->Hkv);
        }
        a->o = carve(base, &off, N * HD);
        a->lse = carve(base, &off, N * c->H);
        a->x_mid = carve(base, &off, N * C);
        a->m = carve(base, &off, N * C);
        a->rstd2 = carve(base, &off, N);
        a->gate = carve(base, &off, N * F);
        a->up = carve(base, &off, N * F);
        a->h = carve(base, &off, N * F);
    }
    m->x_final = carve(base, &off, N * C);
    m->xf = carve(base, &off, N * C);
    m->rstdf = carve(base, &off, N);
    m->logp_tok = carve(base, &off, N);
    m->lse_tok = carve(base, &off, N);
    m->ids = (int32_t *)carve(base, &off, N);
    m->labels_shift = (int32_t *)carve(base, &off, N);
    m->pos = (int32_t *)carve(base, &off, N);
    m->seg = (int32_t *)carve(base, &off, N);
    m->inv_freq = carve(base, &off, c->D);
    m->dtmp = carve(base, &off, N * C);          /* o_proj / down_proj outputs in forward */
    if (train) {
        m->dx = carve(base, &off, N * C);
        m->scratch1 = carve(base, &off, N * C);  /* da / dm / dxf */
        m->dq = carve(base, &off, N * HD);
        m->dk = carve(base, &off, N * KD);
        m->dv = carve(base, &off, N * KD);
        m->do_ = carve(base, &off, N * HD);
        m->scratch2 = carve(base, &off, N * (HD > F ? HD : F));   /* qk-norm grads, dlogp */
        m->dgate = carve(base, &off, N * F);
        m->dup = carve(base, &off, N * F);
        m->dh = carve(base, &off, N * F);
    }
    return off;
}

ftk_status model_workspace(struct ftk_model *m, int64_t B, int64_t T, int train)
{
    int64_t N = B * T;
    size_t need = layout(m, NULL, N, train) * sizeof(float);
    if (need > m->act_size) {
        if (m->act_arena)
            m->be->free(m->ctx, m->act_arena);
        m->act_arena = NULL;
        m->act_size = 0;
        FTK_TRY(m->be->alloc(m->ctx, need, &m->act_arena));
        m->act_size = need;
    }
    if (!m->act) {
        m->act = calloc((size_t)m->cfg.L, sizeof *m->act);
        FTK_FAIL_IF(!m->act, FTK_E_NOMEM, "out of memory");
    }
    layout(m, m->act_arena, N, train);
    m->B = B;
    m->T = T;
    m->N = N;
    return FTK_OK;
}

/* ---- linear with the PEFT hook ------------------------------------------------------------ */

static const struct ftk_site *site_of(struct ftk_model *m, int layer, int k)
{
    return layer < 0 ? &m->sites[m->n_sites - 1] : &m->sites[(size_t)layer * 7 + (size_t)k];
}

static int hooked(struct ftk_model *m, int layer, int k)
{
    return m->adapter_on && m->peft && ftk_peft_hooked(m->peft, layer, (enum ftk_linear)k);
}

/* y (N,O) = x (N,I) W^T + b, plus the plugin's delta at this site. */
ftk_status model_lin_fwd(struct ftk_model *m, int l, int k, float *y, const float *x, int train)
{
    const struct ftk_param *w = m->layers[l].lin[k], *b = m->layers[l].bias[k];
    FTK_TRY(m->be->linear_forward(m->ctx, y, x, w->w, b ? b->w : NULL, m->N, w->shape[1], w->shape[0]));
    if (hooked(m, l, k))
        FTK_TRY(m->peft->pl->linear_forward(m->peft, site_of(m, l, k), y, x, m->N, train));
    return FTK_OK;
}

/* dx (N,I) += dy W (+ the plugin's), weight/bias gradients += when trainable. */
static ftk_status lin_bwd(struct ftk_model *m, int l, int k, float *dx, const float *dy, const float *x)
{
    const struct ftk_param *w = m->layers[l].lin[k], *b = m->layers[l].bias[k];
    FTK_TRY(m->be->linear_backward(m->ctx, dx, w->g, b ? b->g : NULL, dy, x, w->w, m->N, w->shape[1], w->shape[0]));
    if (hooked(m, l, k))
        FTK_TRY(m->peft->pl->linear_backward(m->peft, site_of(m, l, k), dx, dy, x, m->N));
    return FTK_OK;
}

/* ---- forward ------------------------------------------------------------------------------ */

static ftk_status check_batch(struct ftk_model *m, const struct ftk_batch_view *b, int32_t *max_pos)
{
    FTK_FAIL_IF(b->B <= 0 || b->T <= 0, FTK_E_INVALID, "empty batch (%lld x %lld)", (long long)b->B, (long long)b->T);
    *max_pos = 0;
    for (int64_t i = 0; i < b->B * b->T; i++) {
        int32_t id = b->input_ids[i], p = b->position_ids ? b->position_ids[i] : (int32_t)(i % b->T);
        FTK_FAIL_IF(id < 0 || id >= m->cfg.V, FTK_E_INVALID, "row %lld, position %lld: token id %d outside the vocabulary [0, %lld)",
                    (long long)(i / b->T), (long long)(i % b->T), id, (long long)m->cfg.V);
        FTK_FAIL_IF(p < 0, FTK_E_INVALID, "row %lld: negative position id %d", (long long)(i / b->T), p);
        if (p > *max_pos)
            *max_pos = p;
        int32_t lab = b->labels ? b->labels[i] : FTK_IGNORE_INDEX;
        FTK_FAIL_IF(lab != FTK_IGNORE_INDEX && (lab < 0 || lab >= m->cfg.V), FTK_E_INVALID,
                    "row %lld, position %lld: label %d outside the vocabulary", (long long)(i / b->T), (long long)(i % b->T), lab);
    }
    FTK_FAIL_IF(m->cfg.sliding_window && *max_pos + 1 > m->cfg.sliding_window, FTK_E_UNSUPPORTED,
                "sequence of %d positions exceeds the model's sliding window %lld (sliding-window attention is not implemented)",
                *max_pos + 1, (long long)m->cfg.sliding_window);
    return FTK_OK;
}

/* Copies the batch to the device; labels shifted HF-style: hidden t predicts labels[t+1]. */
static ftk_status upload(struct ftk_model *m, const struct ftk_batch_view *b, int32_t *host_shift, int32_t pos_off)
{
    int64_t N = m->N;
    int32_t *tmp = malloc((size_t)N * sizeof *tmp);
    FTK_FAIL_IF(!tmp, FTK_E_NOMEM, "out of memory");
    for (int64_t r = 0; r < b->B; r++)
        for (int64_t t = 0; t < b->T; t++)
            host_shift[r * b->T + t] = (b->labels && t + 1 < b->T) ? b->labels[r * b->T + t + 1] : FTK_IGNORE_INDEX;
    ftk_status s = m->be->to_device(m->ctx, m->ids, b->input_ids, (size_t)N * 4);
    if (s == FTK_OK)
        s = m->be->to_device(m->ctx, m->labels_shift, host_shift, (size_t)N * 4);
    if (s == FTK_OK) {
        for (int64_t i = 0; i < N; i++)
            tmp[i] = pos_off + (b->position_ids ? b->position_ids[i] : (int32_t)(i % b->T));
        s = m->be->to_device(m->ctx, m->pos, tmp, (size_t)N * 4);
    }
    free(tmp);
    return s;
}

/* Layer l: act[l].x_in -> act[l+1].x_in (or x_final), keeping what backward needs in act[l]
 * (buffers shared by all layers when not training, or when recomputing). */
static ftk_status layer_forward(struct ftk_model *m, int l, int train)
{
    const struct ftk_model_config *c = &m->cfg;
    const struct ftk_backend *be = m->be;
    void *ctx = m->ctx;
    int64_t N = m->N, C = c->C, R = m->rot_dim;
    const int32_t *seg = m->has_seg ? m->seg : NULL;
    float scale = 1.0f / sqrtf((float)c->D);
    struct layer_act *a = &m->act[l];
    const struct layer_w *w = &m->layers[l];
    float *next = l + 1 < c->L ? m->act[l + 1].x_in : m->x_final;
    FTK_TRY(be->rmsnorm_forward(ctx, a->a, a->rstd1, a->x_in, w->ln1->w, N, C, c->rms_norm_eps));
    FTK_TRY(model_lin_fwd(m, l, FTK_LIN_Q, c->qk_norm ? a->q_pre : a->q, a->a, train));
    FTK_TRY(model_lin_fwd(m, l, FTK_LIN_K, c->qk_norm ? a->k_pre : a->k, a->a, train));
    FTK_TRY(model_lin_fwd(m, l, FTK_LIN_V, a->v, a->a, train));
    if (c->qk_norm) {   /* Qwen3: RMSNorm of each head's q and k before RoPE */
        FTK_TRY(be->rmsnorm_forward(ctx, a->q, a->qrstd, a->q_pre, w->qn->w, N * c->H, c->D, c->rms_norm_eps));
        FTK_TRY(be->rmsnorm_forward(ctx, a->k, a->krstd, a->k_pre, w->kn->w, N * c->Hkv, c->D, c->rms_norm_eps));
    }
    FTK_TRY(be->rope_forward(ctx, a->q, m->pos, m->inv_freq, m->rope_scale, N, c->H, c->D, R));
    FTK_TRY(be->rope_forward(ctx, a->k, m->pos, m->inv_freq, m->rope_scale, N, c->Hkv, c->D, R));
    const float *pk = NULL, *pv = NULL;
    if (m->n_prefix)
        FTK_TRY(model_prefix(m, l, &pk, &pv, NULL, NULL));
    if (m->capture) {   /* prefill (one row: a per-row prefix is that row's): the prefix, then this row's
                           keys and values into the cache */
        if (m->n_prefix)
            FTK_TRY(model_capture_kv(m, l, pk, pv, m->n_prefix, 0));
        FTK_TRY(model_capture_kv(m, l, a->k, a->v, N, m->n_prefix));
    }
    FTK_TRY(be->attention_forward(ctx, a->o, a->lse, a->q, a->k, a->v, seg, m->B, m->T, c->H, c->Hkv, c->D, scale));
    if (m->n_prefix)
        FTK_TRY(be->attention_prefix_forward(ctx, a->o, a->lse, a->q, pk, pv, N, m->prefix_sets, m->n_prefix, c->H,
                                             c->Hkv, c->D, scale));
    FTK_TRY(model_lin_fwd(m, l, FTK_LIN_O, m->dtmp, a->o, train));
    FTK_TRY(model_sublayer_fwd(m, l, FTK_SUB_ATTN, m->dtmp, a->a, a->x_in, train, 0));
    FTK_TRY(be->add(ctx, a->x_mid, a->x_in, m->dtmp, N * C));
    FTK_TRY(be->rmsnorm_forward(ctx, a->m, a->rstd2, a->x_mid, w->ln2->w, N, C, c->rms_norm_eps));
    FTK_TRY(model_lin_fwd(m, l, FTK_LIN_GATE, a->gate, a->m, train));
    FTK_TRY(model_lin_fwd(m, l, FTK_LIN_UP, a->up, a->m, train));
    FTK_TRY(be->swiglu_forward(ctx, a->h, a->gate, a->up, N * c->F));
    FTK_TRY(model_lin_fwd(m, l, FTK_LIN_DOWN, m->dtmp, a->h, train));
    FTK_TRY(model_sublayer_fwd(m, l, FTK_SUB_MLP, m->dtmp, a->m, a->x_mid, train, 0));
    FTK_TRY(be->add(ctx, next, a->x_mid, m->dtmp, N * C));
    return FTK_OK;
}

/* The forward of b (rows of b->T + model_n_virtual(m) tokens, host_shift sized for them). */
static ftk_status run_forward(struct ftk_model *m, const struct ftk_batch_view *b, int train, int32_t *host_shift)
{
    const struct ftk_model_config *c = &m->cfg;
    const struct ftk_backend *be = m->be;
    void *ctx = m->ctx;
    int32_t max_pos = 0;
    FTK_TRY(check_batch(m, b, &max_pos));
    FTK_TRY(model_workspace(m, b->B, b->T, train));
    m->has_seg = b->segment_ids != NULL;
    if (m->has_seg)   /* before forward_begin: ftk_peft_segments serves the hooks from there */
        FTK_TRY(be->to_device(ctx, m->seg, b->segment_ids, (size_t)m->N * 4));
    m->n_prefix = 0;
    m->prefix_sets = 1;
    if (MODEL_HOOK(m, forward_begin))
        FTK_TRY(m->peft->pl->forward_begin(m->peft, m->B, m->T, train));
    if (MODEL_HOOK(m, attn_prefix)) {   /* P of layer 0 holds for all; real positions start at P */
        const float *pk, *pv;
        float *gk, *gv;
        FTK_TRY(m->peft->pl->attn_prefix(m->peft, 0, &m->n_prefix, &pk, &pv, &gk, &gv));
        FTK_FAIL_IF(m->n_prefix < 0 || m->n_prefix > INT32_MAX / 2, FTK_E_INVALID, "peft \"%s\": %lld prefix positions",
                    m->peft->pl->name, (long long)m->n_prefix);
        FTK_FAIL_IF(m->n_prefix && !FTK_BACKEND_HAS(be, attention_prefix_forward), FTK_E_UNSUPPORTED,
                    "peft \"%s\" needs prefix attention, which backend %s lacks", m->peft->pl->name, be->name);
        if (MODEL_HOOK(m, attn_prefix_per_row) && m->peft->pl->attn_prefix_per_row(m->peft))
            m->prefix_sets = m->B;
        max_pos += (int32_t)m->n_prefix;
        FTK_FAIL_IF(c->sliding_window && max_pos + 1 > c->sliding_window, FTK_E_UNSUPPORTED,
                    "sequence of %d positions with the prefix exceeds the model's sliding window %lld", max_pos + 1,
                    (long long)c->sliding_window);
    }
    FTK_TRY(upload(m, b, host_shift, (int32_t)m->n_prefix));
    int64_t N = m->N, C = c->C, R;
    float inv[1024];
    FTK_FAIL_IF(c->D / 2 > 1024, FTK_E_UNSUPPORTED, "head_dim %lld too large", (long long)c->D);
    FTK_TRY(ftk_rope_inv_freq(&c->rope, max_pos + 1, inv, &R, &m->rope_scale));
    m->rot_dim = R;
    FTK_TRY(be->to_device(ctx, m->inv_freq, inv, (size_t)(R / 2) * sizeof(float)));

    FTK_TRY(be->embedding_forward(ctx, m->act[0].x_in, m->ids, m->wte->w, N, C, c->V));
    if (m->n_virtual)
        FTK_TRY(m->peft->pl->embed_forward(m->peft, m->act[0].x_in, m->B, m->T, train));
    for (int l = 0; l < c->L; l++)
        FTK_TRY(layer_forward(m, l, train));
    FTK_TRY(be->rmsnorm_forward(ctx, m->xf, m->rstdf, m->x_final, m->norm->w, N, C, c->rms_norm_eps));
    m->trained = train;
    return FTK_OK;
}

ftk_status model_run_forward(struct ftk_model *m, const struct ftk_batch_view *b, int train, int32_t *host_shift)
{
    m->n_virtual = model_n_virtual(m);
    if (!m->n_virtual)
        return run_forward(m, b, train, host_shift);
    struct ftk_batch_view x;
    int32_t *buf = NULL;
    FTK_TRY(model_expand_virtual(m, b, &x, &buf));
    ftk_status s = run_forward(m, &x, train, host_shift);
    free(buf);
    return s;
}

ftk_status ftk_model_forward(struct ftk_model *m, const struct ftk_batch_view *b, int train, float *logps,
                             int64_t *n_tokens)
{
    FTK_FAIL_IF(m->peft && ftk_peft_hooked(m->peft, -1, FTK_LIN_LM_HEAD), FTK_E_UNSUPPORTED,
                "a PEFT method on lm_head is not supported by the log-prob head yet");
    int64_t T = b->T + model_n_virtual(m), n_all = b->B * T > 0 ? b->B * T : 1;
    int32_t *shift = malloc((size_t)n_all * sizeof *shift);
    float *lp = malloc((size_t)n_all * sizeof *lp);
    ftk_status s = shift && lp ? FTK_OK : ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    if (s == FTK_OK)
        s = model_run_forward(m, b, train, shift);
    if (s == FTK_OK)
        s = model_head_forward(m);
    if (s == FTK_OK)
        s = m->be->to_host(m->ctx, lp, m->logp_tok, (size_t)m->N * sizeof(float));
    if (s == FTK_OK)
        for (int64_t r = 0; r < b->B; r++) {
            double sum = 0;
            int64_t n = 0;
            for (int64_t t = 0; t < T; t++)
                if (shift[r * T + t] != FTK_IGNORE_INDEX) {
                    sum += lp[r * T + t];
                    n++;
                }
            if (logps)
                logps[r] = (float)sum;
            if (n_tokens)
                n_tokens[r] = n;
        }
    free(shift);
    free(lp);
    if (s != FTK_OK)
        m->trained = 0;
    return s;
}

ftk_status ftk_model_logits(struct ftk_model *m, const struct ftk_batch_view *b, float *logits)
{
    int64_t P = model_n_virtual(m);
    int32_t *shift = malloc((size_t)(b->B * (b->T + P)) * sizeof *shift);
    FTK_FAIL_IF(!shift, FTK_E_NOMEM, "out of memory");
    ftk_status s = model_run_forward(m, b, 0, shift);
    free(shift);
    FTK_TRY(s);
    float *dev = NULL;
    size_t bytes = (size_t)(m->N * m->cfg.V) * sizeof(float);
    FTK_TRY(m->be->alloc(m->ctx, bytes, (void **)&dev));
    s = m->be->linear_forward(m->ctx, dev, m->xf, m->lm_head->w, NULL, m->N, m->cfg.C, m->cfg.V);
    if (s == FTK_OK && hooked(m, -1, FTK_LIN_LM_HEAD))
        s = m->peft->pl->linear_forward(m->peft, site_of(m, -1, FTK_LIN_LM_HEAD), dev, m->xf, m->N, 0);
    for (int64_t r = 0; s == FTK_OK && r < b->B; r++) {   /* the virtual tokens' rows stay behind */
        s = m->be->to_host(m->ctx, logits + r * b->T * m->cfg.V, dev + (r * m->T + P) * m->cfg.V,
                           (size_t)(b->T * m->cfg.V) * sizeof(float));
        if (s == FTK_OK)
            s = model_head_patch_logits(m, m->xf + (r * m->T + P) * m->cfg.C, b->T, logits + r * b->T * m->cfg.V);
    }
    m->be->free(m->ctx, dev);
    return s;
}

/* ---- backward ----------------------------------------------------------------------------- */

static ftk_status zero(struct ftk_model *m, float *p, int64_t n) { return m->be->zero(m->ctx, p, (size_t)n * sizeof(float)); }

/* d loss / d logp of each token into m->scratch2: its row's coefficient where it is scored. */
static ftk_status token_weights(struct ftk_model *m, const float *dlogps)
{
    int64_t N = m->N;
    int32_t *shift = malloc((size_t)N * sizeof *shift);
    float *dtok = malloc((size_t)N * sizeof *dtok);
    ftk_status s = shift && dtok ? FTK_OK : ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    if (s == FTK_OK)
        s = m->be->to_host(m->ctx, shift, m->labels_shift, (size_t)N * 4);
    if (s == FTK_OK) {
        for (int64_t i = 0; i < N; i++)
            dtok[i] = shift[i] == FTK_IGNORE_INDEX ? 0.0f : dlogps[i / m->T];
        s = m->be->to_device(m->ctx, m->scratch2, dtok, (size_t)N * sizeof(float));
    }
    free(shift);
    free(dtok);
    return s;
}

static ftk_status body_backward(struct ftk_model *m, float *dxf);

ftk_status ftk_model_backward(struct ftk_model *m, const float *dlogps)
{
    FTK_FAIL_IF(!m->trained, FTK_E_INVALID, "backward needs a preceding forward with train = 1");
    int64_t N = m->N, C = m->cfg.C;
    FTK_TRY(token_weights(m, dlogps));
    float *dxf = m->scratch1;
    FTK_TRY(zero(m, dxf, N * C));
    FTK_TRY(model_head_backward(m, dxf));
    return body_backward(m, dxf);
}

/* Sums of the per-token log-probs per row (host), from m->logp_tok. */
static ftk_status row_sums(struct ftk_model *m, const int32_t *shift, float *logps, int64_t *n_tokens)
{
    float *lp = malloc((size_t)m->N * sizeof *lp);
    FTK_FAIL_IF(!lp, FTK_E_NOMEM, "out of memory");
    ftk_status s = m->be->to_host(m->ctx, lp, m->logp_tok, (size_t)m->N * sizeof(float));
    for (int64_t r = 0; s == FTK_OK && r < m->B; r++) {
        double sum = 0;
        int64_t n = 0;
        for (int64_t t = 0; t < m->T; t++)
            if (shift[r * m->T + t] != FTK_IGNORE_INDEX) {
                sum += lp[r * m->T + t];
                n++;
            }
        if (logps)
            logps[r] = (float)sum;
        if (n_tokens)
            n_tokens[r] = n;
    }
    free(lp);
    return s;
}

ftk_status ftk_model_forward_backward(struct ftk_model *m, const struct ftk_batch_view *b, const float *dlogps,
                                      float *logps, int64_t *n_tokens)
{
    FTK_FAIL_IF(m->peft && ftk_peft_hooked(m->peft, -1, FTK_LIN_LM_HEAD), FTK_E_UNSUPPORTED,
                "a PEFT method on lm_head is not supported by the log-prob head yet");
    int64_t n_all = b->B * (b->T + model_n_virtual(m));
    int32_t *shift = malloc((size_t)(n_all > 0 ? n_all : 1) * sizeof *shift);
    FTK_FAIL_IF(!shift, FTK_E_NOMEM, "out of memory");
    ftk_status s = model_run_forward(m, b, 1, shift);
    if (s == FTK_OK)
        s = token_weights(m, dlogps);
    float *dxf = m->scratch1;
    if (s == FTK_OK)
        s = zero(m, dxf, m->N * m->cfg.C);
    if (s == FTK_OK)   /* one logits matmul per chunk serves forward and backward */
        s = model_head_fused(m, dxf);
    if (s == FTK_OK)
        s = row_sums(m, shift, logps, n_tokens);
    if (s == FTK_OK)
        s = body_backward(m, dxf);
    free(shift);
    m->trained = 0;
    return s;
}

/* From d loss / d (final norm output): the norm, every layer, the embedding. */
static ftk_status body_backward(struct ftk_model *m, float *dxf)
{
    const struct ftk_model_config *c = &m->cfg;
    const struct ftk_backend *be = m->be;
    void *ctx = m->ctx;
    int64_t N = m->N, C = c->C, HD = c->H * c->D, KD = c->Hkv * c->D, F = c->F, R = m->rot_dim;
    const int32_t *seg = m->has_seg ? m->seg : NULL;
    float scale = 1.0f / sqrtf((float)c->D);
    FTK_TRY(zero(m, m->dx, N * C));
    FTK_TRY(be->rmsnorm_backward(ctx, m->dx, m->norm->g, dxf, m->x_final, m->norm->w, m->rstdf, N, C));
    for (int l = (int)c->L - 1; l >= 0; l--) {
        struct layer_act *a = &m->act[l];
        if (m->recompute && l + 1 < c->L)   /* the shared buffers hold the last layer's: redo this one */
            FTK_TRY(layer_forward(m, l, 1));
        const struct layer_w *w = &m->layers[l];
        /* MLP branch; m->dx is d loss / d (layer output); with a sublayer hook the down_proj
         * output's gradient (into dtmp, free in backward) differs from it */
        float *dm = m->scratch1;
        FTK_TRY(zero(m, dm, N * C));
        const float *dsub = m->dx;
        if (MODEL_HOOK(m, sublayer_backward)) {
            FTK_TRY(model_sublayer_bwd(m, l, FTK_SUB_MLP, m->dtmp, dm, m->dx, a->m, a->x_mid));
            dsub = m->dtmp;
        }
        FTK_TRY(zero(m, m->dh, N * F));
        FTK_TRY(lin_bwd(m, l, FTK_LIN_DOWN, m->dh, dsub, a->h));
        FTK_TRY(zero(m, m->dgate, N * F));
        FTK_TRY(zero(m, m->dup, N * F));
        FTK_TRY(be->swiglu_backward(ctx, m->dgate, m->dup, m->dh, a->gate, a->up, N * F));
        FTK_TRY(lin_bwd(m, l, FTK_LIN_GATE, dm, m->dgate, a->m));
        FTK_TRY(lin_bwd(m, l, FTK_LIN_UP, dm, m->dup, a->m));
        /* residual: dx stays, the norm's gradient is added: dx = d loss / d x_mid */
        FTK_TRY(be->rmsnorm_backward(ctx, m->dx, w->ln2->g, dm, a->x_mid, w->ln2->w, a->rstd2, N, C));
        /* attention branch; da collects the sublayer hook's part first */
        float *da = m->scratch1;
        FTK_TRY(zero(m, da, N * C));
        dsub = m->dx;
        if (MODEL_HOOK(m, sublayer_backward)) {
            FTK_TRY(model_sublayer_bwd(m, l, FTK_SUB_ATTN, m->dtmp, da, m->dx, a->a, a->x_in));
            dsub = m->dtmp;
        }
        FTK_TRY(zero(m, m->do_, N * HD));
        FTK_TRY(lin_bwd(m, l, FTK_LIN_O, m->do_, dsub, a->o));
        FTK_TRY(zero(m, m->dq, N * HD));
        FTK_TRY(zero(m, m->dk, N * KD));
        FTK_TRY(zero(m, m->dv, N * KD));
        FTK_TRY(be->attention_backward(ctx, m->dq, m->dk, m->dv, m->do_, a->q, a->k, a->v, a->o, a->lse,
                                       seg, m->B, m->T, c->H, c->Hkv, c->D, scale));
        if (m->n_prefix) {   /* the prefix keys' share of dq, and the prefix's own gradients */
            const float *pk, *pv;
            float *dpk, *dpv;
            FTK_TRY(model_prefix(m, l, &pk, &pv, &dpk, &dpv));
            FTK_TRY(be->attention_prefix_backward(ctx, m->dq, dpk, dpv, m->do_, a->q, pk, pv, a->o, a->lse, N,
                                                  m->prefix_sets, m->n_prefix, c->H, c->Hkv, c->D, scale));
        }
        FTK_TRY(be->rope_backward(ctx, m->dq, m->pos, m->inv_freq, m->rope_scale, N, c->H, c->D, R));
        FTK_TRY(be->rope_backward(ctx, m->dk, m->pos, m->inv_freq, m->rope_scale, N, c->Hkv, c->D, R));
        float *dq = m->dq, *dk = m->dk;
        if (c->qk_norm) {   /* through the per-head norms: into scratch2 (q) and do_ (k, free now) */
            FTK_TRY(zero(m, m->scratch2, N * HD));
            FTK_TRY(be->rmsnorm_backward(ctx, m->scratch2, w->qn->g, m->dq, a->q_pre, w->qn->w, a->qrstd, N * c->H, c->D));
            FTK_TRY(zero(m, m->do_, N * KD));
            FTK_TRY(be->rmsnorm_backward(ctx, m->do_, w->kn->g, m->dk, a->k_pre, w->kn->w, a->krstd, N * c->Hkv, c->D));
            dq = m->scratch2;
            dk = m->do_;
        }
        FTK_TRY(lin_bwd(m, l, FTK_LIN_Q, da, dq, a->a));
        FTK_TRY(lin_bwd(m, l, FTK_LIN_K, da, dk, a->a));
        FTK_TRY(lin_bwd(m, l, FTK_LIN_V, da, m->dv, a->a));
        FTK_TRY(be->rmsnorm_backward(ctx, m->dx, w->ln1->g, da, a->x_in, w->ln1->w, a->rstd1, N, C));
    }
    if (m->n_virtual) {   /* the virtual rows' gradient is the plugin's, not the embedding's */
        FTK_TRY(m->peft->pl->embed_backward(m->peft, m->dx, m->B, m->T));
        for (int64_t r = 0; r < m->B; r++)
            FTK_TRY(zero(m, m->dx + r * m->T * C, m->n_virtual * C));
    }
    if (MODEL_HOOK(m, backward_end))
        FTK_TRY(m->peft->pl->backward_end(m->peft));
    if (m->wte->g)
        FTK_TRY(be->embedding_backward(ctx, m->wte->g, m->dx, m->ids, N, C, c->V));
    return FTK_OK;
}
