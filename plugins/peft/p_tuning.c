/* plugins/peft/p_tuning.c: P-tuning (Liu et al. 2021, "GPT Understands, Too") as HuggingFace
 * peft's P_TUNING does it for a causal LM: P virtual tokens in front of every row (the `embed`
 * hook, as prompt_tuning.c), whose embeddings are the output of a prompt encoder run on P
 * trainable input embeddings (peft tuners/p_tuning/model.py PromptEncoder):
 *   MLP   out = L2(relu(L1(relu(L0(emb)))))      L0 (H,C), L1 (H,H), L2 (C,H), with biases;
 *         exactly these three, whatever encoder_num_layers says (peft ignores it too);
 *         encoder_dropout is not used (as in peft)
 *   LSTM  out = M2(relu(M0(lstm(emb))))          a bidirectional torch.nn.LSTM of
 *         encoder_num_layers layers, hidden H, batch_first, over the P tokens as one sequence;
 *         dropout encoder_dropout on each layer's output but the last (training only, ftk's
 *         seeded masks); M0 (2H,2H), M2 (C,2H)
 * with H = encoder_hidden_size (default token_dim = C). The encoder runs once per forward
 * (forward_begin; peft runs it on one row and repeats the result over the batch), its output
 * gradient is summed over the rows (embed_backward) and taken through the encoder in
 * backward_end. Matrix products run on the backend (linear, gemm); the elementwise steps (ReLU,
 * the LSTM's gates, step by step) on the host on (P, width) copies, so any backend works.
 * Init as torch: emb N(0,1); Linear weight and bias U(-1/sqrt(in), 1/sqrt(in)); LSTM every
 * tensor U(-1/sqrt(H), 1/sqrt(H)) (ftk's seeded draws). Weight decay on all but biases.
 *
 * Files. peft saves only the encoder's OUTPUT: adapter_model.safetensors {"prompt_embeddings":
 * (P,C)}, and loads it as the virtual tokens themselves (inference mode; peft refuses to load a
 * prompt learning adapter as trainable). ftk writes that too, plus ftk_prompt_encoder.safetensors
 * with the encoder (peft's parameter names without ".default": prompt_encoder.embedding.weight,
 * prompt_encoder.mlp_head.0.weight, prompt_encoder.lstm_head.weight_ih_l0_reverse, ...), which
 * peft never reads. Loading an adapter directory (options with peft_type):
 *   with ftk_prompt_encoder.safetensors: the encoder, checked to reproduce prompt_embeddings;
 *     training continues exactly (train-step --resume);
 *   without (peft's adapter): the virtual tokens are prompt_embeddings, which then train
 *     directly, like prompt tuning (the encoder is gone).
 * Shapes: P virtual tokens, C hidden, H encoder hidden, NL LSTM layers. */
#include "virtual_tokens.h"

enum { ENC_MLP = 0, ENC_LSTM = 1, ENC_DIRECT = 2 };

#define MAX_LSTM_LAYERS 8
#define MAX_DEV 64

struct lin {                   /* torch.nn.Linear (out, in), backend memory */
    float *w, *b, *gw, *gb;
    int64_t in, out;
};

struct lstm_dir {              /* one direction of one layer: gates i, f, g, o stacked (4H) */
    float *wih, *whh, *bih, *bhh;          /* (4H,In), (4H,H), (4H), (4H) */
    float *gwih, *gwhh, *gbih, *gbhh;
};

struct p_tuning {
    struct vt_common v;
    int enc;                   /* ENC_*; ENC_DIRECT: a peft adapter's prompt_embeddings */
    char enc_name[8];          /* "MLP" / "LSTM" as configured (saved back in the config) */
    int64_t H, NL;
    double dropout;
    int registered;            /* parameters exist (init, or load for an adapter) */
    float *emb, *gemb;         /* (P,C) encoder input, or the prompt itself (direct) */
    struct lin mlp[3];
    int n_mlp;                 /* 3 (MLP) or 2 (the LSTM's head) */
    struct lstm_dir dirs[2 * MAX_LSTM_LAYERS];
    /* forward state and scratch, backend memory */
    float *out, *dout;         /* (P,C) encoder output and its gradient */
    float *xin[3];             /* input of mlp[k] (P, in_k): xin[0] is the encoder input or the LSTM output */
    float *dxb[3];             /* (P, in_k) gradient scratch, k >= 1 */
    float *Y[MAX_LSTM_LAYERS];   /* (P,2H) each layer's output [h_fwd, h_rev] */
    float *Xd[MAX_LSTM_LAYERS];  /* (P,2H) the next layer's input after dropout (or NULL: Y) */
    float *zx, *dz, *dy, *dx, *t4, *tH, *zeroH;   /* (P,4H) x2, (P,2H) x2, (4H), (H), (H) */
    /* host */
    float *hb, *hb2;           /* (P, max width) */
    float *gates, *cell;       /* (NL, 2, P, 4H) i f g o after the nonlinearity, (NL, 2, P, H) c_t */
    unsigned char *mask;       /* (NL, P, 2H) dropout keep flags of the last train forward */
    int dropped;               /* the last forward applied dropout */
    int pending;               /* embed_backward ran; backward_end takes dout through the encoder */
    void *dev[MAX_DEV];
    int n_dev;
};

static ftk_status dev_alloc(struct ftk_peft *p, struct p_tuning *S, float **out, int64_t n)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    FTK_ASSERT(S->n_dev < MAX_DEV);
    FTK_TRY(be->alloc(ctx, (size_t)n * sizeof(float), (void **)out));
    S->dev[S->n_dev++] = *out;
    return FTK_OK;
}

/* ---- parameters ---------------------------------------------------------------------------- */

static ftk_status add(struct ftk_peft *p, const char *name, int64_t n0, int64_t n1, float **w, float **g)
{
    int64_t shape[2] = {n0, n1};
    return ftk_peft_add_param(p, name, n1 ? 2 : 1, shape, strstr(name, "bias") == NULL, w, g);
}

static ftk_status add_lin(struct ftk_peft *p, struct lin *L, int k, int64_t in, int64_t out)
{
    char n[96];
    L->in = in;
    L->out = out;
    snprintf(n, sizeof n, "prompt_encoder.mlp_head.%d.weight", k);
    FTK_TRY(add(p, n, out, in, &L->w, &L->gw));
    snprintf(n, sizeof n, "prompt_encoder.mlp_head.%d.bias", k);
    return add(p, n, out, 0, &L->b, &L->gb);
}

static void lstm_name(char *n, size_t sz, const char *what, int64_t l, int d)
{
    snprintf(n, sz, "prompt_encoder.lstm_head.%s_l%lld%s", what, (long long)l, d ? "_reverse" : "");
}

/* The parameters of the configured encoder (peft's named_parameters order) and the scratch. */
static ftk_status register_encoder(struct ftk_peft *p, struct p_tuning *S)
{
    int64_t P = S->v.P, C = S->v.C, H = S->H;
    S->registered = 1;
    if (S->enc == ENC_DIRECT) {
        FTK_TRY(add(p, "prompt_embeddings", P, C, &S->emb, &S->gemb));
        S->out = S->emb;
        return FTK_OK;
    }
    FTK_TRY(add(p, "prompt_encoder.embedding.weight", P, C, &S->emb, &S->gemb));
    int64_t wmax = C > H ? C : H;
    if (S->enc == ENC_LSTM) {
        char n[96];
        for (int64_t l = 0; l < S->NL; l++)
            for (int d = 0; d < 2; d++) {
                struct lstm_dir *D = &S->dirs[2 * l + d];
                int64_t in = l ? 2 * H : C;
                lstm_name(n, sizeof n, "weight_ih", l, d);
                FTK_TRY(add(p, n, 4 * H, in, &D->wih, &D->gwih));
                lstm_name(n, sizeof n, "weight_hh", l, d);
                FTK_TRY(add(p, n, 4 * H, H, &D->whh, &D->gwhh));
                lstm_name(n, sizeof n, "bias_ih", l, d);
                FTK_TRY(add(p, n, 4 * H, 0, &D->bih, &D->gbih));
                lstm_name(n, sizeof n, "bias_hh", l, d);
                FTK_TRY(add(p, n, 4 * H, 0, &D->bhh, &D->gbhh));
            }
        S->n_mlp = 2;
        FTK_TRY(add_lin(p, &S->mlp[0], 0, 2 * H, 2 * H));
        FTK_TRY(add_lin(p, &S->mlp[1], 2, 2 * H, C));
        for (int64_t l = 0; l < S->NL; l++) {
            FTK_TRY(dev_alloc(p, S, &S->Y[l], P * 2 * H));
            if (S->dropout > 0 && l + 1 < S->NL)
                FTK_TRY(dev_alloc(p, S, &S->Xd[l], P * 2 * H));
        }
        FTK_TRY(dev_alloc(p, S, &S->zx, P * 4 * H));
        FTK_TRY(dev_alloc(p, S, &S->dz, P * 4 * H));
        FTK_TRY(dev_alloc(p, S, &S->dy, P * 2 * H));
        FTK_TRY(dev_alloc(p, S, &S->dx, P * 2 * H));
        FTK_TRY(dev_alloc(p, S, &S->t4, 4 * H));
        FTK_TRY(dev_alloc(p, S, &S->tH, H));
        FTK_TRY(dev_alloc(p, S, &S->zeroH, H));
        wmax = 4 * H > wmax ? 4 * H : wmax;
        S->gates = malloc((size_t)(S->NL * 2 * P * 4 * H) * sizeof *S->gates);
        S->cell = malloc((size_t)(S->NL * 2 * P * H) * sizeof *S->cell);
        S->mask = malloc((size_t)(S->NL * P * 2 * H));
        FTK_FAIL_IF(!S->gates || !S->cell || !S->mask, FTK_E_NOMEM, "out of memory");
    } else {
        S->n_mlp = 3;
        FTK_TRY(add_lin(p, &S->mlp[0], 0, C, H));
        FTK_TRY(add_lin(p, &S->mlp[1], 2, H, H));
        FTK_TRY(add_lin(p, &S->mlp[2], 4, H, C));
    }
    for (int k = 1; k < S->n_mlp; k++) {
        FTK_TRY(dev_alloc(p, S, &S->xin[k], P * S->mlp[k].in));
        FTK_TRY(dev_alloc(p, S, &S->dxb[k], P * S->mlp[k].in));
    }
    FTK_TRY(dev_alloc(p, S, &S->out, P * C));
    FTK_TRY(dev_alloc(p, S, &S->dout, P * C));
    S->hb = malloc((size_t)(P * wmax + 8 * H) * sizeof *S->hb);   /* the LSTM's step vectors: 6H */
    S->hb2 = malloc((size_t)(P * wmax) * sizeof *S->hb2);
    FTK_FAIL_IF(!S->hb || !S->hb2, FTK_E_NOMEM, "out of memory");
    return FTK_OK;
}

/* torch's init: U(-a, a) into n floats of backend memory (what: a stream per tensor). */
static ftk_status fill_uniform(struct ftk_peft *p, float *dst, int64_t n, double a, uint64_t what)
{
    float *h = malloc((size_t)n * sizeof *h);
    FTK_FAIL_IF(!h, FTK_E_NOMEM, "out of memory");
    for (int64_t i = 0; i < n; i++)
        h[i] = (float)(a * (2.0 * vt_uniform(ftk_peft_seed(p), what, (uint64_t)i) - 1.0));
    ftk_status s = vt_upload(p, dst, h, n);
    free(h);
    return s;
}

static ftk_status init_weights(struct ftk_peft *p, struct p_tuning *S)
{
    int64_t P = S->v.P, C = S->v.C, H = S->H;
    float *h = malloc((size_t)(P * C) * sizeof *h);
    FTK_FAIL_IF(!h, FTK_E_NOMEM, "out of memory");
    for (int64_t i = 0; i < P * C; i++)   /* nn.Embedding: N(0,1) */
        h[i] = (float)vt_normal(ftk_peft_seed(p), 1, (uint64_t)i);
    ftk_status s = vt_upload(p, S->emb, h, P * C);
    free(h);
    FTK_TRY(s);
    uint64_t what = 10;
    for (int64_t l = 0; S->enc == ENC_LSTM && l < 2 * S->NL; l++) {
        struct lstm_dir *D = &S->dirs[l];
        double a = 1.0 / sqrt((double)H);
        FTK_TRY(fill_uniform(p, D->wih, 4 * H * (l >= 2 ? 2 * H : C), a, what++));
        FTK_TRY(fill_uniform(p, D->whh, 4 * H * H, a, what++));
        FTK_TRY(fill_uniform(p, D->bih, 4 * H, a, what++));
        FTK_TRY(fill_uniform(p, D->bhh, 4 * H, a, what++));
    }
    for (int k = 0; k < S->n_mlp; k++) {   /* kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(in)); bias the same */
        double a = 1.0 / sqrt((double)S->mlp[k].in);
        FTK_TRY(fill_uniform(p, S->mlp[k].w, S->mlp[k].out * S->mlp[k].in, a, what++));
        FTK_TRY(fill_uniform(p, S->mlp[k].b, S->mlp[k].out, a, what++));
    }
    return FTK_OK;
}

static ftk_status ptu_init(struct ftk_peft *p, const struct ftk_kv *o)
{
    struct p_tuning *S = ftk_peft_priv(p);
    static const char *const keys[] = {"encoder_reparameterization_type", "encoder_hidden_size", "encoder_num_layers",
                                       "encoder_dropout", NULL};
    FTK_TRY(vt_parse(p, o, "P_TUNING", keys, &S->v));
    const char *t = ftk_kv_get(o, "encoder_reparameterization_type");
    snprintf(S->enc_name, sizeof S->enc_name, "%s", t ? t : "MLP");
    FTK_FAIL_IF(strcmp(S->enc_name, "MLP") && strcmp(S->enc_name, "LSTM"), FTK_E_UNSUPPORTED,
                "encoder_reparameterization_type=%s (MLP or LSTM)", t);
    S->enc = strcmp(S->enc_name, "MLP") ? ENC_LSTM : ENC_MLP;
    FTK_TRY(ftk_kv_int(o, "encoder_hidden_size", S->v.C, &S->H));
    FTK_FAIL_IF(S->H < 1 || S->H > (1 << 20), FTK_E_INVALID, "encoder_hidden_size %lld", (long long)S->H);
    FTK_TRY(ftk_kv_int(o, "encoder_num_layers", 2, &S->NL));
    FTK_TRY(ftk_kv_double(o, "encoder_dropout", 0.0, &S->dropout));
    FTK_FAIL_IF(!(S->dropout >= 0 && S->dropout < 1), FTK_E_INVALID, "encoder_dropout %g outside [0, 1)", S->dropout);
    if (S->enc == ENC_LSTM)
        FTK_FAIL_IF(S->NL < 1 || S->NL > MAX_LSTM_LAYERS, FTK_E_INVALID, "encoder_num_layers %lld outside [1, %d]",
                    (long long)S->NL, MAX_LSTM_LAYERS);
    if (S->v.from_adapter)   /* load decides: the encoder (ftk's file) or peft's output only */
        return FTK_OK;
    FTK_TRY(register_encoder(p, S));
    return init_weights(p, S);
}

/* ---- the encoder: forward ------------------------------------------------------------------ */

static float sigm(float z) { return 1.0f / (1.0f + expf(-z)); }

/* mlp[0..n-1] on in (P, in_0) -> S->out (P,C), ReLU between (on the host). */
static ftk_status mlp_forward(struct ftk_peft *p, struct p_tuning *S, const float *in)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t P = S->v.P;
    S->xin[0] = (float *)in;
    for (int k = 0; k < S->n_mlp; k++) {
        const struct lin *L = &S->mlp[k];
        int last = k + 1 == S->n_mlp;
        float *y = last ? S->out : S->xin[k + 1];
        FTK_TRY(be->linear_forward(ctx, y, S->xin[k], L->w, L->b, P, L->in, L->out));
        if (last)
            break;
        size_t bytes = (size_t)(P * L->out) * sizeof(float);
        FTK_TRY(be->to_host(ctx, S->hb, y, bytes));
        for (int64_t i = 0; i < P * L->out; i++)
            S->hb[i] = S->hb[i] > 0 ? S->hb[i] : 0.0f;
        FTK_TRY(be->to_device(ctx, y, S->hb, bytes));
    }
    return FTK_OK;
}

/* One direction d of LSTM layer l over x (P,In): writes its half of Y[l] (P,2H) and caches the
 * gates and cells. Step t: z = x_t Wih^T + bih + h_prev Whh^T + bhh (4H: i f g o). */
static ftk_status lstm_dir_forward(struct ftk_peft *p, struct p_tuning *S, int64_t l, int d, const float *x, int64_t In)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t P = S->v.P, H = S->H, H4 = 4 * H;
    const struct lstm_dir *D = &S->dirs[2 * l + d];
    float *Y = S->Y[l], *zxh = S->hb2, *z = S->hb;
    float *G = S->gates + ((l * 2 + d) * P) * H4, *Cl = S->cell + ((l * 2 + d) * P) * H;
    FTK_TRY(be->linear_forward(ctx, S->zx, x, D->wih, D->bih, P, In, H4));
    FTK_TRY(be->to_host(ctx, zxh, S->zx, (size_t)(P * H4) * sizeof(float)));
    const float *hprev = S->zeroH, *cprev = NULL;
    for (int64_t s = 0; s < P; s++) {
        int64_t t = d ? P - 1 - s : s;
        FTK_TRY(be->linear_forward(ctx, S->t4, hprev, D->whh, D->bhh, 1, H, H4));
        FTK_TRY(be->to_host(ctx, z, S->t4, (size_t)H4 * sizeof(float)));
        float *g = G + t * H4, *c = Cl + t * H, *h = z + H4;   /* h: host scratch after z */
        for (int64_t j = 0; j < H4; j++) {
            float v = z[j] + zxh[t * H4 + j];
            g[j] = j >= 2 * H && j < 3 * H ? tanhf(v) : sigm(v);
        }
        for (int64_t j = 0; j < H; j++) {
            c[j] = g[H + j] * (cprev ? cprev[j] : 0.0f) + g[j] * g[2 * H + j];
            h[j] = g[3 * H + j] * tanhf(c[j]);
        }
        float *row = Y + t * 2 * H + d * H;
        FTK_TRY(be->to_device(ctx, row, h, (size_t)H * sizeof(float)));
        hprev = row;
        cprev = c;
    }
    return FTK_OK;
}

/* The encoder's output into S->out (direct: S->out is the prompt itself). */
static ftk_status encoder_forward(struct ftk_peft *p, struct p_tuning *S, int train)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    if (S->enc == ENC_DIRECT)
        return FTK_OK;
    if (S->enc == ENC_MLP)
        return mlp_forward(p, S, S->emb);
    int64_t P = S->v.P, H = S->H;
    S->dropped = train && S->dropout > 0 && S->NL > 1;
    const float *x = S->emb;
    int64_t In = S->v.C;
    for (int64_t l = 0; l < S->NL; l++) {
        FTK_TRY(lstm_dir_forward(p, S, l, 0, x, In));
        FTK_TRY(lstm_dir_forward(p, S, l, 1, x, In));
        x = S->Y[l];
        In = 2 * H;
        if (l + 1 < S->NL && S->dropped) {   /* torch.nn.LSTM's dropout between layers */
            size_t n = (size_t)(P * 2 * H);
            unsigned char *mk = S->mask + (size_t)l * n;
            float keep = (float)(1.0 / (1.0 - S->dropout));
            uint64_t seed = ftk_peft_seed(p) ^ vt_mix(ftk_peft_noise_step(p) + 77);
            FTK_TRY(be->to_host(ctx, S->hb, S->Y[l], n * sizeof(float)));
            for (size_t i = 0; i < n; i++) {
                mk[i] = vt_uniform(seed, 200 + (uint64_t)l, i) >= S->dropout;
                S->hb[i] = mk[i] ? S->hb[i] * keep : 0.0f;
            }
            FTK_TRY(be->to_device(ctx, S->Xd[l], S->hb, n * sizeof(float)));
            x = S->Xd[l];
        }
    }
    return mlp_forward(p, S, x);
}

/* ---- the encoder: backward ----------------------------------------------------------------- */

/* From d out (P,C) = dout: the mlp's gradients, and dx0 (P, in_0) += d input. */
static ftk_status mlp_backward(struct ftk_peft *p, struct p_tuning *S, const float *dout, float *dx0)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t P = S->v.P;
    const float *d = dout;
    for (int k = S->n_mlp - 1; k >= 0; k--) {
        const struct lin *L = &S->mlp[k];
        float *dx = k ? S->dxb[k] : dx0;
        size_t bytes = (size_t)(P * L->in) * sizeof(float);
        if (k)
            FTK_TRY(be->zero(ctx, dx, bytes));
        FTK_TRY(be->linear_backward(ctx, dx, L->gw, L->gb, d, S->xin[k], L->w, P, L->in, L->out));
        if (!k)
            break;
        FTK_TRY(be->to_host(ctx, S->hb, dx, bytes));   /* through the ReLU: its output > 0 */
        FTK_TRY(be->to_host(ctx, S->hb2, S->xin[k], bytes));
        for (int64_t i = 0; i < P * L->in; i++)
            S->hb[i] = S->hb2[i] > 0 ? S->hb[i] : 0.0f;
        FTK_TRY(be->to_device(ctx, dx, S->hb, bytes));
        d = dx;
    }
    return FTK_OK;
}

/* One direction of layer l: from dY (P,2H) (host copy dyh), its weights' gradients and
 * dxl (P,In) += d x. Back through time: dh = dY_t + dh_next, dc = dh o (1 - tanh^2 c) + dc_next. */
static ftk_status lstm_dir_backward(struct ftk_peft *p, struct p_tuning *S, int64_t l, int d, const float *dyh,
                                    const float *x, int64_t In, float *dxl)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t P = S->v.P, H = S->H, H4 = 4 * H;
    const struct lstm_dir *D = &S->dirs[2 * l + d];
    const float *G = S->gates + ((l * 2 + d) * P) * H4, *Cl = S->cell + ((l * 2 + d) * P) * H;
    float *dzh = S->hb2, *dh = S->hb, *dc = S->hb + H, *db = S->hb + 2 * H;   /* db: (4H) */
    memset(S->hb, 0, (size_t)(2 * H + H4) * sizeof(float));
    for (int64_t s = P - 1; s >= 0; s--) {   /* s: the step's index in this direction's order */
        int64_t t = d ? P - 1 - s : s, tp = d ? t + 1 : t - 1;
        const float *g = G + t * H4, *c = Cl + t * H, *cp = s > 0 ? Cl + tp * H : NULL;
        float *dz = dzh + t * H4;
        for (int64_t j = 0; j < H; j++) {
            float gi = g[j], gf = g[H + j], gg = g[2 * H + j], go = g[3 * H + j], tc = tanhf(c[j]);
            float dhj = dyh[t * 2 * H + d * H + j] + dh[j];
            float dcj = dhj * go * (1.0f - tc * tc) + dc[j];
            dz[j] = dcj * gg * gi * (1.0f - gi);
            dz[H + j] = dcj * (cp ? cp[j] : 0.0f) * gf * (1.0f - gf);
            dz[2 * H + j] = dcj * gi * (1.0f - gg * gg);
            dz[3 * H + j] = dhj * tc * go * (1.0f - go);
            dc[j] = dcj * gf;
        }
        for (int64_t j = 0; j < H4; j++)
            db[j] += dz[j];
        FTK_TRY(be->to_device(ctx, S->dz + t * H4, dz, (size_t)H4 * sizeof(float)));
        if (s > 0) {   /* dh_prev = dz Whh: (1,4H) (4H,H) */
            FTK_TRY(be->gemm(ctx, 0, 0, 1, H, H4, 1.0f, S->dz + t * H4, H4, D->whh, H, 0.0f, S->tH, H));
            FTK_TRY(be->to_host(ctx, dh, S->tH, (size_t)H * sizeof(float)));
        }
    }
    /* gWhh (4H,H) += sum_t dz_t^T h_prev(t): forward h_prev(t) = Y[t-1], reverse Y[t+1] */
    if (P > 1) {
        const float *A = S->dz + (d ? 0 : H4), *Bm = S->Y[l] + (d ? 2 * H : 0) + d * H;
        FTK_TRY(be->gemm(ctx, 1, 0, H4, H, P - 1, 1.0f, A, H4, Bm, 2 * H, 1.0f, D->gwhh, H));
    }
    FTK_TRY(be->to_device(ctx, S->t4, db, (size_t)H4 * sizeof(float)));
    FTK_TRY(be->axpy(ctx, D->gbhh, S->t4, H4, 1.0f));
    return be->linear_backward(ctx, dxl, D->gwih, D->gbih, S->dz, x, D->wih, P, In, H4);
}

static ftk_status encoder_backward(struct ftk_peft *p, struct p_tuning *S)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    if (S->enc == ENC_MLP)
        return mlp_backward(p, S, S->dout, S->gemb);
    int64_t P = S->v.P, H = S->H;
    size_t n2 = (size_t)(P * 2 * H);
    FTK_TRY(be->zero(ctx, S->dy, n2 * sizeof(float)));
    FTK_TRY(mlp_backward(p, S, S->dout, S->dy));
    float *dyh = malloc(n2 * sizeof *dyh);
    FTK_FAIL_IF(!dyh, FTK_E_NOMEM, "out of memory");
    ftk_status s = FTK_OK;
    for (int64_t l = S->NL - 1; l >= 0 && s == FTK_OK; l--) {
        const float *x = l ? (S->Xd[l - 1] && S->dropped ? S->Xd[l - 1] : S->Y[l - 1]) : S->emb;
        int64_t In = l ? 2 * H : S->v.C;
        float *dxl = l ? S->dx : S->gemb;
        s = be->to_host(ctx, dyh, S->dy, n2 * sizeof(float));
        if (s == FTK_OK && l)
            s = be->zero(ctx, dxl, n2 * sizeof(float));
        for (int d = 0; d < 2 && s == FTK_OK; d++)
            s = lstm_dir_backward(p, S, l, d, dyh, x, In, dxl);
        if (s == FTK_OK && l) {   /* into the previous layer's output, through its dropout mask */
            if (S->dropped) {
                const unsigned char *mk = S->mask + (size_t)(l - 1) * n2;
                float keep = (float)(1.0 / (1.0 - S->dropout));
                s = be->to_host(ctx, dyh, dxl, n2 * sizeof(float));
                for (size_t i = 0; i < n2; i++)
                    dyh[i] = mk[i] ? dyh[i] * keep : 0.0f;
                if (s == FTK_OK)
                    s = be->to_device(ctx, S->dy, dyh, n2 * sizeof(float));
            } else {
                s = be->copy(ctx, S->dy, dxl, n2 * sizeof(float));
            }
        }
    }
    free(dyh);
    return s;
}

/* ---- the hook ------------------------------------------------------------------------------ */

static int64_t ptu_n_virtual(struct ftk_peft *p) { return ((struct p_tuning *)ftk_peft_priv(p))->v.P; }

static ftk_status ptu_forward_begin(struct ftk_peft *p, int64_t B, int64_t T, int train)
{
    (void)B;
    (void)T;
    struct p_tuning *S = ftk_peft_priv(p);
    FTK_FAIL_IF(!S->registered, FTK_E_INVALID, "p_tuning: adapter options without the adapter's weights (load them first)");
    S->pending = 0;
    return encoder_forward(p, S, train);
}

static ftk_status ptu_embed_forward(struct ftk_peft *p, float *x, int64_t B, int64_t T, int train)
{
    (void)train;
    struct p_tuning *S = ftk_peft_priv(p);
    return vt_write(p, &S->v, x, S->out, B, T);
}

static ftk_status ptu_embed_backward(struct ftk_peft *p, const float *dx, int64_t B, int64_t T)
{
    struct p_tuning *S = ftk_peft_priv(p);
    if (S->enc == ENC_DIRECT)
        return vt_grad(p, &S->v, S->gemb, dx, B, T);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    FTK_TRY(be->zero(ctx, S->dout, (size_t)(S->v.P * S->v.C) * sizeof(float)));
    FTK_TRY(vt_grad(p, &S->v, S->dout, dx, B, T));
    S->pending = 1;
    return FTK_OK;
}

static ftk_status ptu_backward_end(struct ftk_peft *p)
{
    struct p_tuning *S = ftk_peft_priv(p);
    if (!S->pending)
        return FTK_OK;
    S->pending = 0;
    return encoder_backward(p, S);
}

/* ---- files --------------------------------------------------------------------------------- */

#define ENCODER_FILE "ftk_prompt_encoder.safetensors"

/* The encoder's tensors, in registration order: names as saved, shapes, backend memory. */
struct enc_entry {
    char name[96];
    int ndim;
    int64_t d0, d1;
    float *w;
};
#define MAX_ENTRIES (1 + 8 * MAX_LSTM_LAYERS + 6)

static int enc_table(struct p_tuning *S, struct enc_entry *e)
{
    int64_t P = S->v.P, C = S->v.C, H = S->H;
    int n = 0;
    e[n++] = (struct enc_entry){"prompt_encoder.embedding.weight", 2, P, C, S->emb};
    for (int64_t l = 0; S->enc == ENC_LSTM && l < S->NL; l++)
        for (int d = 0; d < 2; d++) {
            struct lstm_dir *D = &S->dirs[2 * l + d];
            static const char *what[4] = {"weight_ih", "weight_hh", "bias_ih", "bias_hh"};
            float *w[4] = {D->wih, D->whh, D->bih, D->bhh};
            int64_t d1[4] = {l ? 2 * H : C, H, 0, 0};
            for (int k = 0; k < 4; k++) {
                lstm_name(e[n].name, sizeof e[n].name, what[k], l, d);
                e[n].ndim = d1[k] ? 2 : 1;
                e[n].d0 = 4 * H;
                e[n].d1 = d1[k];
                e[n++].w = w[k];
            }
        }
    for (int k = 0; k < S->n_mlp; k++) {
        struct lin *L = &S->mlp[k];
        e[n] = (struct enc_entry){"", 2, L->out, L->in, L->w};
        snprintf(e[n++].name, sizeof e->name, "prompt_encoder.mlp_head.%d.weight", 2 * k);
        e[n] = (struct enc_entry){"", 1, L->out, 0, L->b};
        snprintf(e[n++].name, sizeof e->name, "prompt_encoder.mlp_head.%d.bias", 2 * k);
    }
    return n;
}

static ftk_status ptu_save(struct ftk_peft *p, const char *dir, const char *base_path)
{
    struct p_tuning *S = ftk_peft_priv(p);
    FTK_FAIL_IF(!S->registered, FTK_E_INVALID, "p_tuning: nothing to save (no weights loaded)");
    FTK_TRY(encoder_forward(p, S, 0));   /* peft saves the encoder's output (eval: no dropout) */
    FTK_TRY(vt_save_prompt(p, &S->v, dir, S->out));
    if (S->enc != ENC_DIRECT) {
        struct ftk_message msg;
        ftk_message_init(&msg);
        ftk_status st = ftk_message_set_meta(&msg, "format", "pt");
        if (st == FTK_OK)
            st = ftk_message_set_meta(&msg, "ftk", "P-tuning prompt encoder (docs/peft-methods.md); peft reads adapter_model.safetensors only");
        struct enc_entry e[MAX_ENTRIES];
        int n = enc_table(S, e);
        for (int i = 0; i < n && st == FTK_OK; i++)
            st = vt_add_tensor(p, &msg, e[i].name, e[i].ndim, e[i].d0, e[i].d1, e[i].w);
        if (st == FTK_OK)
            st = vt_write_file(dir, ENCODER_FILE, &msg);
        ftk_message_free(&msg);
        FTK_TRY(st);
    }
    cJSON *c = vt_config(p, &S->v, "P_TUNING", base_path);
    FTK_FAIL_IF(!c, FTK_E_NOMEM, "out of memory");
    cJSON_AddNumberToObject(c, "encoder_dropout", S->dropout);
    cJSON_AddNumberToObject(c, "encoder_hidden_size", (double)S->H);
    cJSON_AddNumberToObject(c, "encoder_num_layers", (double)S->NL);
    cJSON_AddStringToObject(c, "encoder_reparameterization_type", S->enc_name);
    return vt_write_config(dir, c);
}

/* Every encoder tensor from ftk's file; the encoder must then reproduce the adapter's
 * prompt_embeddings (both files from the same save). */
static ftk_status load_encoder(struct ftk_peft *p, struct p_tuning *S, struct ftk_source *src, const struct ftk_st_model *ad)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    char where[4200];
    snprintf(where, sizeof where, "%.4000s/" ENCODER_FILE, ftk_source_path(src));
    struct ftk_st_model *st;
    FTK_TRY(ftk_st_model_open(src, "ftk_prompt_encoder", &st));
    struct enc_entry e[MAX_ENTRIES];
    int n = enc_table(S, e);
    ftk_status s = FTK_OK;
    for (int i = 0; i < n && s == FTK_OK; i++)
        s = ftk_peft_load_tensor(p, st, where, e[i].name, e[i].ndim, e[i].d0, e[i].d1, e[i].w);
    if (s == FTK_OK && ftk_st_model_count(st) != (size_t)n)
        s = ftk_error_set(FTK_E_MISMATCH, __FILE__, __LINE__, "%s: %zu tensors, the %s encoder of these options has %d", where,
                          ftk_st_model_count(st), S->enc_name, n);
    ftk_st_model_close(st);
    FTK_TRY(s);
    int64_t PC = S->v.P * S->v.C;
    float *want = malloc((size_t)PC * sizeof *want), *got = malloc((size_t)PC * sizeof *got);
    s = want && got ? FTK_OK : ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    if (s == FTK_OK)
        s = ftk_st_model_read_f32(ad, "prompt_embeddings", want, PC);
    if (s == FTK_OK)
        s = encoder_forward(p, S, 0);
    if (s == FTK_OK)
        s = be->to_host(ctx, got, S->out, (size_t)PC * sizeof(float));
    double md = 0, mw = 0;
    for (int64_t i = 0; s == FTK_OK && i < PC; i++) {
        md = fmax(md, fabs((double)got[i] - want[i]));
        mw = fmax(mw, fabs((double)want[i]));
    }
    if (s == FTK_OK && !(md <= 1e-4 * fmax(mw, 1e-30)))
        s = ftk_error_set(FTK_E_MISMATCH, __FILE__, __LINE__,
                          "%s: the encoder does not reproduce adapter_model.safetensors' prompt_embeddings (max difference "
                          "%.3g): the two files come from different saves", where, md);
    free(want);
    free(got);
    return s;
}

static ftk_status ptu_load(struct ftk_peft *p, struct ftk_source *src)
{
    struct p_tuning *S = ftk_peft_priv(p);
    const char *path = ftk_source_path(src);
    int has_encoder = ftk_source_exists(src, ENCODER_FILE);
    FTK_FAIL_IF(S->registered && !has_encoder, FTK_E_UNSUPPORTED,
                "%s: no " ENCODER_FILE ": a peft P-tuning adapter holds only the encoder's output; load it through its "
                "adapter_config.json (its prompt_embeddings then train directly)", path);
    if (!S->registered) {   /* options from the adapter's config: ftk's encoder, or peft's output only */
        if (!has_encoder)
            S->enc = ENC_DIRECT;
        FTK_TRY(register_encoder(p, S));
    }
    struct ftk_st_model *ad;
    FTK_TRY(ftk_st_model_open(src, "adapter_model", &ad));
    ftk_status s = FTK_OK;
    if (ftk_st_model_count(ad) != 1 || !ftk_st_model_find(ad, "prompt_embeddings"))
        s = ftk_error_set(FTK_E_MISMATCH, __FILE__, __LINE__, "%s: a P-tuning adapter holds prompt_embeddings only, this one %zu tensors%s",
                          path, ftk_st_model_count(ad), ftk_st_model_find(ad, "prompt_embeddings") ? "" : " without it");
    if (s == FTK_OK && S->enc == ENC_DIRECT)
        s = ftk_peft_load_tensor(p, ad, path, "prompt_embeddings", 2, S->v.P, S->v.C, S->emb);
    else if (s == FTK_OK) {
        const struct ftk_tensor *t = ftk_st_model_find(ad, "prompt_embeddings");
        if (t->ndim != 2 || t->shape[0] != S->v.P || t->shape[1] != S->v.C)
            s = ftk_error_set(FTK_E_MISMATCH, __FILE__, __LINE__, "%s: prompt_embeddings is not (%lld, %lld) (adapter for another base?)",
                              path, (long long)S->v.P, (long long)S->v.C);
        if (s == FTK_OK)
            s = load_encoder(p, S, src, ad);
    }
    ftk_st_model_close(ad);
    return s;
}

static void ptu_release(struct ftk_peft *p)
{
    struct p_tuning *S = ftk_peft_priv(p);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    for (int i = 0; i < S->n_dev; i++)
        be->free(ctx, S->dev[i]);
    free(S->hb);
    free(S->hb2);
    free(S->gates);
    free(S->cell);
    free(S->mask);
}

FTK_EXPORT const struct ftk_peft_plugin ftk_peft_plugin = {
    .abi_version = FTK_PEFT_ABI,
    .struct_size = sizeof(struct ftk_peft_plugin),
    .name = "p_tuning",
    .priv_size = sizeof(struct p_tuning),
    .init = ptu_init,
    .save = ptu_save,
    .load = ptu_load,
    .release = ptu_release,
    .forward_begin = ptu_forward_begin,
    .backward_end = ptu_backward_end,
    .n_virtual = ptu_n_virtual,
    .embed_forward = ptu_embed_forward,
    .embed_backward = ptu_embed_backward,
};
