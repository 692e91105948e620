/* plugins/peft/unipelt.c: UniPELT (Mao et al. 2022, "UniPELT: A Unified Framework for
 * Parameter-Efficient Language Model Tuning"), as the authors' code builds it on BERT
 * (github morningmoni/UniPELT: lora_layers.py LoRA_Linear with add_gate, modeling_bert.py
 * BertSelfAttention's prefix_gate, adapters/modeling.py Adapter with add_gate) and as
 * adapter-transformers' UniPELTConfig places it in Llama: three submodules, each scaled by its own
 * learned gate G = mean over the row's tokens of sigmoid(x_t W_G^T + b_G), ONE number per example:
 *
 *   LoRA on q_proj and v_proj (linear hook):  y += G_L (x A^T) B^T     (the gate replaces
 *     alpha / r, as their code and adapters' do), A (r,C) kaiming-uniform, B 0; the gate reads the
 *     linear's input x (the attention's normed input).
 *   prefix tuning (attn_kv hook): prefix_impl.h's prefix (the MLP reparameterisation, their
 *     prefix_embed_MLP), its keys AND values of layer l times G_P, whose input is the attention's
 *     input x (their hidden_states; adapters' residual_input on Llama, the same normed x). One gate
 *     per example, so each row has its own prefix: the core's per-row prefixes (attn_prefix_per_row).
 *   a bottleneck adapter after the MLP (sublayer_out hook): h' = h + G_A (act(u Wd^T + bd) Wu^T + bu)
 *     with adapters' Pfeiffer placement on Llama, u = h + resid (original_ln_before without a
 *     post-norm), reduction 16, relu; the gate reads u (the adapter's input, their x).
 *
 * The mean runs over the row's real tokens: with segment_ids (ftk pack's padded rows) the padding
 * (segment 0) is left out, so a padded row is its unpadded self; their code averages over every
 * position, padding included. A row holding several documents (neat packing) is refused: its
 * documents would share gates. As in the paper (an encoder) the gates see the whole row, later
 * tokens included: in a causal LM token t's output depends, through these scalars, on the tokens
 * after it, and a KV-cache decode step cannot reproduce the full forward (every new token moves
 * every gate): the plugin says so (decode_recomputes) and generation runs the whole sequence for
 * each new token, the gates pooled over it. Training, eval and ref-logps (full forwards) are exact.
 *
 * Gates: weight N(0, 0.02) (adapters'), bias 0 (a fresh gate is 1/2). Options: num_virtual_tokens
 * (10), prefix_projection (true), encoder_hidden_size (512: their mid_dim), r (8),
 * reduction_factor (16) or bottleneck_size, non_linearity (relu), init_weights (mam_adapter: Wu
 * and biases 0; bert). Saved in ftk's format: adapter_config.json (peft_type UNIPELT) and
 * adapter_model.safetensors: prompt_encoder.* (the prefix MLP),
 * model.layers.L.self_attn.prefix_gate.{weight,bias},
 * base_model.model.model.layers.L.self_attn.{q,v}_proj.{lora_A,lora_B,lora_gate}.weight and
 * .lora_gate.bias, model.layers.L.output_adapters.adapters.default.{adapter_down.0,adapter_up,
 * gate}.{weight,bias}. Not mergeable (the gates depend on the input). CPU backend only (gates and
 * scaling on the host). Shapes: B rows of T tokens, N = B T, C channels, r rank, P prefix. */
#include "bottleneck_impl.h"
#include "prefix_impl.h"

enum { G_Q, G_V, G_PREFIX, G_ADAPTER, G_KINDS };

struct gate {                  /* nn.Linear(C, 1) */
    float *w, *b, *gw, *gb;    /* (1,C), (1) */
};

struct lora_mod {
    float *A, *B, *gA, *gB;    /* (r,C), (O,r) */
    int64_t O;
};

struct unipelt {
    struct px_prefix px;
    struct bn_set ad;
    struct ptab tab;
    int64_t C, L, r;
    struct lora_mod lora[BN_MAX_LAYERS][2];     /* q_proj, v_proj */
    struct gate gate[BN_MAX_LAYERS][G_KINDS];
    /* the forward under way */
    int64_t B, T;
    float *pool;               /* (N) host: 1/n_b for the tokens row b's gates average, else 0 */
    float *sig;                /* (L, G_KINDS, N) host: sigmoid of each gate's logit per token */
    float *g;                  /* (L, G_KINDS, B) host: the gates */
    double *G;                 /* (B) host: d loss / d gate */
    float *rows, *drows;       /* (L, 2, B, P, TD): the gated prefix of every row, its gradient */
    size_t fwd_cap, G_cap, rows_cap, drows_cap;
    float *scr;                /* LoRA: u, du (N,r), t, gt (N,O); adapter gate: u (N,C) */
    size_t scr_cap;
};

static const char *const up_keys[] = {"num_virtual_tokens", "prefix_projection", "encoder_hidden_size", "r",
                                      "reduction_factor", "bottleneck_size", "non_linearity", "init_weights", NULL};
static const char *const up_bn_keys[] = {"reduction_factor", "bottleneck_size", "non_linearity", "init_weights", NULL};

#define GEN_REFUSED                                                                                                    \
    "unipelt cannot decode with a KV cache: its gates average over the whole row (Mao et al.), so every new token " \
    "changes the earlier positions (ftk_model_decode_exact says so; generation recomputes)"

/* n host values into backend memory w: N(0, sd), or U(-bound, bound) when sd is 0 */
static ftk_status fill(struct ftk_peft *p, float *w, int64_t n, double sd, double bound, uint64_t key)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    float *host = malloc((size_t)n * sizeof *host);
    FTK_FAIL_IF(!host, FTK_E_NOMEM, "out of memory");
    for (int64_t j = 0; j < n; j++) {
        uint64_t h = bn_mix(key ^ bn_mix((uint64_t)j));
        host[j] = (float)(sd > 0 ? sd * bn_normal(h) : (2 * bn_u01(h) - 1) * bound);
    }
    ftk_status s = be->to_device(ctx, w, host, (size_t)n * sizeof *host);
    free(host);
    return s;
}

/* A gate named PREFIX{weight,bias}: weight N(0, 0.02), bias 0. */
static ftk_status add_gate(struct ftk_peft *p, struct unipelt *S, struct gate *gt, const char *prefix, uint64_t key)
{
    char name[256];
    snprintf(name, sizeof name, "%sweight", prefix);
    FTK_TRY(ptab_add(p, &S->tab, name, 2, 1, S->C, 1, &gt->w, &gt->gw));
    snprintf(name, sizeof name, "%sbias", prefix);
    FTK_TRY(ptab_add(p, &S->tab, name, 1, 1, 1, 0, &gt->b, &gt->gb));
    return fill(p, gt->w, S->C, 0.02, 0, key);
}

static ftk_status up_init(struct ftk_peft *p, const struct ftk_kv *o)
{
    struct unipelt *S = ftk_peft_priv(p);
    const struct ftk_model_config *c = ftk_peft_config(p);
    S->C = c->C;
    S->L = c->L;
    FTK_FAIL_IF(S->L > BN_MAX_LAYERS, FTK_E_UNSUPPORTED, "unipelt: more than %d layers", BN_MAX_LAYERS);
    FTK_TRY(bn_check_keys(o, "unipelt", up_keys, bn_file_keys, NULL));
    const char *pt = ftk_kv_get(o, "peft_type");   /* an adapter_config.json's: it must be this method's */
    FTK_FAIL_IF(pt && strcmp(pt, "UNIPELT"), FTK_E_INVALID, "peft_type %s given to the unipelt plugin", pt);
    FTK_TRY(px_options(o, c, "unipelt", 10, 1, 512, &S->px));
    S->px.mlp = S->px.projection;
    FTK_TRY(ftk_kv_int(o, "r", 8, &S->r));
    FTK_FAIL_IF(S->r < 1 || S->r > S->C, FTK_E_INVALID, "unipelt: r = %lld (1 to the hidden size %lld)", (long long)S->r,
                (long long)S->C);
    struct bn_config bc;
    FTK_TRY(bn_config_after_mlp(o, up_bn_keys, "pfeiffer", 0, c->C, c->L, &bc));
    FTK_TRY(px_create(p, &S->px, "prompt_encoder.", &S->tab));
    uint64_t seed = ftk_peft_seed(p);
    char name[256];
    for (int l = 0; l < S->L; l++) {
        snprintf(name, sizeof name, "model.layers.%d.self_attn.prefix_gate.", l);
        FTK_TRY(add_gate(p, S, &S->gate[l][G_PREFIX], name, bn_key(seed, (uint64_t)l, 0x6A7E, G_PREFIX)));
    }
    for (size_t i = 0; i < ftk_peft_n_sites(p); i++) {   /* LoRA on every layer's q_proj and v_proj */
        const struct ftk_site *s = ftk_peft_site(p, i);
        if (s->layer < 0 || (s->kind != FTK_LIN_Q && s->kind != FTK_LIN_V))
            continue;
        int k = s->kind == FTK_LIN_Q ? G_Q : G_V;
        struct lora_mod *m = &S->lora[s->layer][k];
        m->O = s->out;
        snprintf(name, sizeof name, "base_model.model.%s.lora_A.weight", s->module);
        FTK_TRY(ptab_add(p, &S->tab, name, 2, S->r, s->in, 1, &m->A, &m->gA));
        snprintf(name, sizeof name, "base_model.model.%s.lora_B.weight", s->module);
        FTK_TRY(ptab_add(p, &S->tab, name, 2, s->out, S->r, 1, &m->B, &m->gB));
        /* A: kaiming_uniform(a = sqrt 5) = U(+-1/sqrt(in)); B = 0 */
        FTK_TRY(fill(p, m->A, S->r * s->in, 0, 1.0 / sqrt((double)s->in), bn_key(seed, (uint64_t)s->layer, 0x10A, (uint64_t)k)));
        snprintf(name, sizeof name, "base_model.model.%s.lora_gate.", s->module);
        FTK_TRY(add_gate(p, S, &S->gate[s->layer][k], name, bn_key(seed, (uint64_t)s->layer, 0x6A7E, (uint64_t)k)));
        FTK_TRY(ftk_peft_attach(p, s));
    }
    FTK_TRY(bn_set_create(p, &S->ad, &bc, &S->tab, "unipelt"));
    for (int l = 0; l < S->L; l++) {
        snprintf(name, sizeof name, "model.layers.%d.output_adapters.adapters.%s.gate.", l, bc.name);
        FTK_TRY(add_gate(p, S, &S->gate[l][G_ADAPTER], name, bn_key(seed, (uint64_t)l, 0x6A7E, G_ADAPTER)));
    }
    return FTK_OK;
}

/* ---- gates ---------------------------------------------------------------------------------- */

static float *sig_of(struct unipelt *S, int l, int k) { return S->sig + ((size_t)l * G_KINDS + (size_t)k) * (size_t)(S->B * S->T); }
static float *gate_of(struct unipelt *S, int l, int k) { return S->g + ((size_t)l * G_KINDS + (size_t)k) * (size_t)S->B; }

/* The gate (l, k) of every row from x (N,C): sig_n = sigmoid(x_n w + b), g_b = sum_n pool_n sig_n. */
static void gate_forward(struct unipelt *S, int l, int k, const float *x)
{
    const struct gate *gt = &S->gate[l][k];
    int64_t C = S->C;
    float *sg = sig_of(S, l, k), *g = gate_of(S, l, k);
    for (int64_t b = 0; b < S->B; b++) {
        double acc = 0;
        for (int64_t t = 0; t < S->T; t++) {
            int64_t n = b * S->T + t;
            double z = gt->b[0];
            for (int64_t c = 0; c < C; c++)
                z += (double)gt->w[c] * x[n * C + c];
            sg[n] = (float)(1 / (1 + exp(-z)));
            acc += (double)S->pool[n] * sg[n];
        }
        g[b] = (float)acc;
    }
}

/* From S->G (B) = d loss / d g: the gate's gradients +=, dx (N,C) += (and dx2 when not NULL). */
static ftk_status gate_backward(struct unipelt *S, int l, int k, const float *x, float *dx, float *dx2)
{
    struct gate *gt = &S->gate[l][k];
    int64_t C = S->C;
    const float *sg = sig_of(S, l, k);
    double gb = 0, *gw = calloc((size_t)C, sizeof *gw);
    FTK_FAIL_IF(!gw, FTK_E_NOMEM, "out of memory");
    for (int64_t n = 0; n < S->B * S->T; n++) {
        double dz = S->G[n / S->T] * S->pool[n] * sg[n] * (1 - sg[n]);
        if (dz == 0)
            continue;
        gb += dz;
        for (int64_t c = 0; c < C; c++) {
            gw[c] += dz * x[n * C + c];
            float d = (float)(dz * gt->w[c]);
            dx[n * C + c] += d;
            if (dx2)
                dx2[n * C + c] += d;
        }
    }
    for (int64_t c = 0; c < C; c++)
        gt->gw[c] += (float)gw[c];
    gt->gb[0] += (float)gb;
    free(gw);
    return FTK_OK;
}

/* ---- the forward's bookkeeping -------------------------------------------------------------- */

static ftk_status up_forward_begin(struct ftk_peft *p, int64_t B, int64_t T, int train)
{
    struct unipelt *S = ftk_peft_priv(p);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t N = B * T, per = S->px.P * S->px.TD;
    S->B = B;
    S->T = T;
    size_t need = (size_t)N * (size_t)(1 + S->L * G_KINDS) + (size_t)(S->L * G_KINDS * B);
    if (need > S->fwd_cap) {
        free(S->pool);
        S->pool = calloc(need, sizeof *S->pool);
        S->fwd_cap = S->pool ? need : 0;
        FTK_FAIL_IF(!S->pool, FTK_E_NOMEM, "out of memory");
    }
    if ((size_t)B > S->G_cap) {
        free(S->G);
        S->G = calloc((size_t)B, sizeof *S->G);
        S->G_cap = S->G ? (size_t)B : 0;
        FTK_FAIL_IF(!S->G, FTK_E_NOMEM, "out of memory");
    }
    S->sig = S->pool + N;
    S->g = S->sig + (size_t)N * (size_t)(S->L * G_KINDS);
    FTK_TRY(bn_grow(be, ctx, &S->rows, &S->rows_cap, (size_t)(S->L * 2 * B * per)));
    if (train) {
        FTK_TRY(bn_grow(be, ctx, &S->drows, &S->drows_cap, (size_t)(S->L * 2 * B * per)));
        FTK_TRY(be->zero(ctx, S->drows, (size_t)(S->L * 2 * B * per) * sizeof(float)));
    }
    /* pooling weights: a row's real tokens (segment != 0), or all of them without segment ids */
    const int32_t *seg = ftk_peft_segments(p);
    for (int64_t b = 0; b < B; b++) {
        int64_t n = 0;
        int32_t doc = 0;
        for (int64_t t = 0; t < T; t++) {
            int32_t sg = seg ? seg[b * T + t] : 1;
            FTK_FAIL_IF(sg != 0 && doc != 0 && sg != doc, FTK_E_UNSUPPORTED,
                        "unipelt: row %lld packs several documents (segment_ids %d and %d); its gates average over the "
                        "row, so the documents would share them: pack without --neat-packing", (long long)b, doc, sg);
            if (sg != 0) {
                doc = sg;
                n++;
            }
        }
        for (int64_t t = 0; t < T; t++)   /* a row of padding only: every position */
            S->pool[b * T + t] = n ? ((seg ? seg[b * T + t] : 1) != 0 ? 1.0f / (float)n : 0.0f) : 1.0f / (float)T;
    }
    return px_forward_begin(p, &S->px, train);
}

/* ---- LoRA on q_proj and v_proj, gated ------------------------------------------------------ */

static ftk_status scratch(struct unipelt *S, const struct ftk_backend *be, void *ctx, int64_t n)
{
    return bn_grow(be, ctx, &S->scr, &S->scr_cap, (size_t)n);
}

/* Checks that a hook sees the rows forward_begin announced (KV-cache decode steps do not). */
static ftk_status check_rows(const struct unipelt *S, int64_t N)
{
    FTK_FAIL_IF(N != S->B * S->T || S->B <= 0, FTK_E_UNSUPPORTED, GEN_REFUSED);
    return FTK_OK;
}

static ftk_status up_linear_forward(struct ftk_peft *p, const struct ftk_site *s, float *y, const float *x, int64_t N,
                                    int train)
{
    (void)train;
    struct unipelt *S = ftk_peft_priv(p);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    FTK_TRY(check_rows(S, N));
    int l = s->layer, k = s->kind == FTK_LIN_Q ? G_Q : G_V;
    const struct lora_mod *m = &S->lora[l][k];
    if (k == G_Q)   /* the prefix's gate reads the same x; attn_prefix of this layer comes next */
        gate_forward(S, l, G_PREFIX, x);
    gate_forward(S, l, k, x);
    FTK_TRY(scratch(S, be, ctx, N * (S->r + m->O)));
    float *u = S->scr, *t = u + N * S->r;
    FTK_TRY(be->linear_forward(ctx, u, x, m->A, NULL, N, s->in, S->r));
    FTK_TRY(be->linear_forward(ctx, t, u, m->B, NULL, N, S->r, m->O));
    const float *g = gate_of(S, l, k);
    for (int64_t n = 0; n < N; n++)
        for (int64_t o = 0; o < m->O; o++)
            y[n * m->O + o] += g[n / S->T] * t[n * m->O + o];
    return FTK_OK;
}

/* The prefix gate's backward, at q_proj's (after the core's prefix backward of the layer): its
 * gradient from the rows' prefix gradients, and theirs into the shared prefix's (dkv). */
static ftk_status prefix_gate_backward(struct ftk_peft *p, struct unipelt *S, int l, const float *x, float *dx)
{
    int64_t per = S->px.P * S->px.TD, B = S->B;
    const float *g = gate_of(S, l, G_PREFIX);
    for (int kv = 0; kv < 2; kv++) {
        const float *pre = S->px.kv + (2 * l + kv) * per;
        float *dpre = S->px.dkv + (2 * l + kv) * per;
        for (int64_t b = 0; b < B; b++) {
            const float *d = S->drows + ((size_t)(l * 2 + kv) * (size_t)B + (size_t)b) * (size_t)per;
            double acc = kv ? S->G[b] : 0;
            for (int64_t j = 0; j < per; j++) {
                acc += (double)d[j] * pre[j];
                dpre[j] += g[b] * d[j];
            }
            S->G[b] = acc;
        }
    }
    (void)p;
    return gate_backward(S, l, G_PREFIX, x, dx, NULL);
}

static ftk_status up_linear_backward(struct ftk_peft *p, const struct ftk_site *s, float *dx, const float *dy,
                                     const float *x, int64_t N)
{
    struct unipelt *S = ftk_peft_priv(p);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    FTK_TRY(check_rows(S, N));
    int l = s->layer, k = s->kind == FTK_LIN_Q ? G_Q : G_V;
    struct lora_mod *m = &S->lora[l][k];
    int64_t r = S->r, O = m->O;
    FTK_TRY(scratch(S, be, ctx, N * (2 * r + 2 * O)));
    float *u = S->scr, *du = u + N * r, *t = du + N * r, *gt = t + N * O;
    /* again u = x A^T, t = u B^T; G_b = sum over row b of dy . t; the module sees g_b dy */
    FTK_TRY(be->linear_forward(ctx, u, x, m->A, NULL, N, s->in, r));
    FTK_TRY(be->linear_forward(ctx, t, u, m->B, NULL, N, r, O));
    const float *g = gate_of(S, l, k);
    for (int64_t b = 0; b < S->B; b++)
        S->G[b] = 0;
    for (int64_t n = 0; n < N; n++) {
        double acc = 0;
        for (int64_t o = 0; o < O; o++) {
            acc += (double)dy[n * O + o] * t[n * O + o];
            gt[n * O + o] = g[n / S->T] * dy[n * O + o];
        }
        S->G[n / S->T] += acc;
    }
    FTK_TRY(be->zero(ctx, du, (size_t)(N * r) * sizeof(float)));
    FTK_TRY(be->linear_backward(ctx, du, m->gB, NULL, gt, u, m->B, N, r, O));
    FTK_TRY(be->linear_backward(ctx, dx, m->gA, NULL, du, x, m->A, N, s->in, r));
    FTK_TRY(gate_backward(S, l, k, x, dx, NULL));
    return k == G_Q ? prefix_gate_backward(p, S, l, x, dx) : FTK_OK;
}

/* ---- the gated prefix (attn_kv) -------------------------------------------------------------- */

static int up_per_row(struct ftk_peft *p)
{
    (void)p;
    return 1;
}

/* Layer l's prefix of each row: g_b times the shared keys and values (B,P,Hkv,D). */
static ftk_status up_attn_prefix(struct ftk_peft *p, int layer, int64_t *P, const float **pk, const float **pv, float **dpk,
                                 float **dpv)
{
    struct unipelt *S = ftk_peft_priv(p);
    const float *k = NULL, *v = NULL;
    float *dk, *dv;
    FTK_TRY(px_layer(&S->px, "unipelt", layer, P, &k, &v, &dk, &dv));
    int64_t per = S->px.P * S->px.TD, B = S->B;
    float *rk = S->rows + (size_t)(layer * 2) * (size_t)(B * per), *rv = rk + B * per;
    const float *g = gate_of(S, layer, G_PREFIX);
    for (int64_t b = 0; b < B; b++)
        for (int64_t j = 0; j < per; j++) {
            rk[b * per + j] = g[b] * k[j];
            rv[b * per + j] = g[b] * v[j];
        }
    *pk = rk;
    *pv = rv;
    *dpk = S->drows ? S->drows + (size_t)(layer * 2) * (size_t)(B * per) : NULL;
    *dpv = *dpk ? *dpk + B * per : NULL;
    return FTK_OK;
}

static ftk_status up_backward_end(struct ftk_peft *p)
{
    struct unipelt *S = ftk_peft_priv(p);
    return px_backward_end(p, &S->px);
}

/* ---- the gated adapter after the MLP (sublayer_out) ---------------------------------------- */

static ftk_status up_sublayer_forward(struct ftk_peft *p, const struct ftk_sublayer *s, float *h, const float *x, int train)
{
    struct unipelt *S = ftk_peft_priv(p);
    FTK_FAIL_IF(s->decoding, FTK_E_UNSUPPORTED, GEN_REFUSED);
    if (s->kind != FTK_SUB_MLP)
        return FTK_OK;
    FTK_TRY(check_rows(S, s->B * s->T));
    FTK_FAIL_IF(!s->resid, FTK_E_INVALID, "unipelt: the core gave no residual stream (libftk too old?)");
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t N = s->B * s->T, C = S->C;
    FTK_TRY(scratch(S, be, ctx, N * C));
    FTK_TRY(be->add(ctx, S->scr, h, s->resid, N * C));   /* u = h + resid, the adapter's (and its gate's) input */
    gate_forward(S, s->layer, G_ADAPTER, S->scr);
    return bn_set_forward(p, &S->ad, s, h, x, train, gate_of(S, s->layer, G_ADAPTER));
}

static ftk_status up_sublayer_backward(struct ftk_peft *p, const struct ftk_sublayer *s, float *dh, float *dx,
                                       const float *dy, const float *x)
{
    struct unipelt *S = ftk_peft_priv(p);
    if (s->kind != FTK_SUB_MLP)
        return FTK_OK;
    FTK_TRY(check_rows(S, s->B * s->T));
    for (int64_t b = 0; b < S->B; b++)
        S->G[b] = 0;
    FTK_TRY(bn_set_backward(p, &S->ad, s, dh, dx, dy, x, gate_of(S, s->layer, G_ADAPTER), S->G));
    /* u = h + resid: the gate's part goes to both (dy, the stream's gradient, is read by now) */
    return gate_backward(S, s->layer, G_ADAPTER, bn_set_input(&S->ad, s, x), dh, s->dresid);
}

/* ---- files ---------------------------------------------------------------------------------- */

static ftk_status up_save(struct ftk_peft *p, const char *dir, const char *base_path)
{
    static const char *const saved[] = {"bottleneck_size", "non_linearity", "init_weights", NULL};
    struct unipelt *S = ftk_peft_priv(p);
    FTK_TRY(ptab_save(p, &S->tab, dir));
    cJSON *c = ptab_config_begin("UNIPELT", base_path);
    px_config_json(&S->px, c);
    cJSON_AddNumberToObject(c, "r", (double)S->r);
    bn_config_json_keys(&S->ad.c, c, saved);
    cJSON_AddStringToObject(c, "format", "ftk UniPELT 1 (Mao et al. 2022): gated LoRA on q_proj, v_proj (peft's names + "
                                         "lora_gate), gated prefix tuning (prompt_encoder.*, self_attn.prefix_gate), a gated "
                                         "Pfeiffer adapter after each MLP (adapter-transformers' names + gate)");
    return ptab_config_write(c, dir);
}

static ftk_status up_load(struct ftk_peft *p, struct ftk_source *src)
{
    struct unipelt *S = ftk_peft_priv(p);
    return ptab_load(p, &S->tab, src);
}

static void up_release(struct ftk_peft *p)
{
    struct unipelt *S = ftk_peft_priv(p);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    px_release(p, &S->px);
    bn_set_release(p, &S->ad);
    ptab_free(&S->tab);
    be->free(ctx, S->rows);
    be->free(ctx, S->drows);
    be->free(ctx, S->scr);
    free(S->pool);
    free(S->G);
}

static int up_decode_recomputes(struct ftk_peft *p)
{
    (void)p;
    return 1;
}

FTK_EXPORT const struct ftk_peft_plugin ftk_peft_plugin = {
    .abi_version = FTK_PEFT_ABI,
    .struct_size = sizeof(struct ftk_peft_plugin),
    .name = "unipelt",
    .priv_size = sizeof(struct unipelt),
    .init = up_init,
    .linear_forward = up_linear_forward,
    .linear_backward = up_linear_backward,
    .save = up_save,
    .load = up_load,
    .release = up_release,
    .forward_begin = up_forward_begin,
    .backward_end = up_backward_end,
    .sublayer_forward = up_sublayer_forward,
    .sublayer_backward = up_sublayer_backward,
    .attn_prefix = up_attn_prefix,
    .attn_prefix_per_row = up_per_row,
    .decode_recomputes = up_decode_recomputes,
};
