/* plugins/peft/adalora.c: AdaLoRA (Zhang et al. 2023) as HuggingFace peft's ADALORA implements it
 * (peft/tuners/adalora: layer.py SVDLinear and RankAllocator, model.py AdaLoraModel):
 *   y = x W^T + b + s * (dropout(x) (A * E)^T) B^T,   s = lora_alpha / (ranknum + 1e-5)
 * A (r,I) right singular vectors, E (r,1) singular values, B (O,r) left singular vectors, r =
 * init_r; ranknum = init_r forever (peft masks E, it never resizes during training); lora_alpha
 * <= 0 means s = r / (r + 1e-5) (peft: scaling = lora_alpha if > 0 else r). Init as peft's
 * reset_lora_parameters: E = 0, A and B ~ N(0, 0.02); init_lora_weights=false: all three N(0, 1).
 *
 * Training, through the optimizer-step slots (the trainer calls them once per step):
 *   before_update  peft AdaLoraModel.forward's orthogonal regulariser
 *                    R = (1 / 2n) sum over the n sites of ||A A^T - I||_F + ||B^T B - I||_F,
 *                  loss += orth_reg_weight * R and its gradient into A and B.
 *   after_update   AdaLoraModel.update_and_allocate(global_step), step = the 0-based index of the
 *                  step just taken (HF Trainer's on_optimizer_step / peft's examples): while
 *                  step < total_step - tfinal, the sensitivity |w * g| of every entry of A, E, B
 *                  is smoothed (EMA beta1) with its uncertainty (EMA beta2 of |ipt - ema|); the
 *                  budget falls from n init_r to n target_r on a cubic between tinit and
 *                  total_step - tfinal, and every deltaT steps the E entries whose triplet score
 *                  (E's + mean of A's row + mean of B's column) is within the k lowest are zeroed
 *                  (the rank pattern). At step total_step - tfinal the pattern is final; after
 *                  it E is re-masked every step (AdamW's moments move masked entries again).
 * Saved as peft saves it: base_model.model.<module>.lora_{A,B,E} (no ".weight") and
 * adapter_config.json with peft_type ADALORA; once a rank pattern exists, A, E and B keep only
 * the kept ranks and the config holds rank_pattern {"<module>.lora_E": [bool x init_r]}. Loading
 * such an adapter (peft resizes the modules) puts the kept ranks back at their places among
 * init_r, zeros elsewhere: the same output; the regulariser then sees only the kept ranks, as
 * peft's resized modules do. The importance averages are not saved (peft's neither): a resumed
 * run starts them again. Shapes: N tokens, I in, O out, r = init_r. Everything goes through the
 * backend's gemm/copy/scale/axpy except lora_dropout (host arithmetic: the CPU backend only). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include "ftk/plugin.h"
#include "ftk/safetensors.h"

#define MAX_SITES 4096

struct ada_site {
    const struct ftk_site *s;
    float *A, *B, *E, *gA, *gB, *gE;   /* backend memory: (r,I), (O,r), (r,1) */
    float *ema[3], *unc[3];            /* host RankAllocator state of A, B, E (same shapes) */
    unsigned char *keep;               /* (r) host: 1 = rank kept (the rank pattern) */
    int resized;                       /* loaded with a rank pattern: peft's module has only the kept ranks */
};

struct adalora {
    int64_t r, target_r, tinit, tfinal, deltaT, total_step;
    double alpha, dropout, beta1, beta2, orth;
    int init_true;
    float scale;                       /* s = alpha / (ranknum + 1e-5) */
    char *targets;              /* any length: a regex target_modules arrives as every module's name */
    struct ada_site sites[MAX_SITES];
    int n;
    int have_pattern;                  /* a rank pattern exists (masking done, or loaded) */
    float *ae, *dae, *t, *xd, *mask, *cov, *md;   /* backend scratch */
    size_t ae_cap, dae_cap, t_cap, xd_cap, mask_cap, cov_cap, md_cap;
    float *hw, *hg;                    /* host scratch (the largest parameter) */
    size_t hw_cap;
};

static const char *part[3] = {"lora_A", "lora_B", "lora_E"};

/* splitmix64: init and dropout draws that depend only on (seed, what, index) */
static uint64_t mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
static double uniform01(uint64_t h) { return (double)(h >> 11) * (1.0 / 9007199254740992.0); }
static double normal(uint64_t h)   /* Box-Muller */
{
    double u1 = uniform01(h), u2 = uniform01(mix(h));
    return sqrt(-2.0 * log(u1 > 0 ? u1 : 1e-300)) * cos(2 * M_PI * u2);
}

static int targeted(const struct adalora *S, const struct ftk_site *s)
{
    if (!strcmp(S->targets, "all") || !strcmp(S->targets, "all-linear"))
        return s->kind != FTK_LIN_LM_HEAD;
    const char *name = ftk_linear_name(s->kind);
    size_t m = strlen(s->module);
    for (const char *t = S->targets; *t;) {   /* no copy: the list has any length */
        while (*t == ' ')
            t++;
        size_t n = strcspn(t, ",");
        /* peft: the module name equals the target or ends with ".target" */
        if ((n == strlen(name) && !strncmp(t, name, n)) || (n == m && !strncmp(t, s->module, n)) ||
            (n && m > n && s->module[m - n - 1] == '.' && !strncmp(s->module + m - n, t, n)))
            return 1;
        t += n + (t[n] == ',');
    }
    return 0;
}

static ftk_status grow(float **p, size_t *cap, size_t n, const struct ftk_backend *be, void *ctx)
{
    if (n <= *cap)
        return FTK_OK;
    if (*p)
        be->free(ctx, *p);
    *p = NULL;
    *cap = 0;
    FTK_TRY(be->alloc(ctx, n * sizeof(float), (void **)p));
    *cap = n;
    return FTK_OK;
}

static ftk_status grow_host(struct adalora *S, size_t n)
{
    if (n <= S->hw_cap)
        return FTK_OK;
    free(S->hw);
    free(S->hg);
    S->hw = malloc(n * sizeof *S->hw);
    S->hg = malloc(n * sizeof *S->hg);
    S->hw_cap = S->hw && S->hg ? n : 0;
    FTK_FAIL_IF(!S->hw || !S->hg, FTK_E_NOMEM, "out of memory");
    return FTK_OK;
}

static int64_t numel_of(const struct adalora *S, const struct ada_site *as, int k)
{
    return k == 0 ? S->r * as->s->in : k == 1 ? as->s->out * S->r : S->r;
}

static struct ada_site *find_site(struct adalora *S, const struct ftk_site *s)
{
    for (int i = 0; i < S->n; i++)
        if (S->sites[i].s == s)
            return &S->sites[i];
    return NULL;
}

/* rank_pattern (adapter_config.json, as JSON text): {"<module>.lora_E": [bool x init_r], ...};
 * peft's in-memory keys end in ".lora_E.default". Sites it does not name keep every rank. */
static ftk_status parse_pattern(struct adalora *S, const char *text)
{
    cJSON *root = cJSON_Parse(text);
    FTK_FAIL_IF(!root || !cJSON_IsObject(root), FTK_E_FORMAT, "rank_pattern is not a JSON object: %.80s", text);
    ftk_status st = FTK_OK;
    const cJSON *e;
    cJSON_ArrayForEach(e, root) {
        char mod[300];
        snprintf(mod, sizeof mod, "%s", e->string);
        char *dot = strstr(mod, ".lora_E");
        struct ada_site *as = NULL;
        if (dot) {
            *dot = '\0';
            for (int i = 0; i < S->n && !as; i++)
                if (!strcmp(S->sites[i].s->module, mod))
                    as = &S->sites[i];
        }
        if (!as) {
            st = ftk_error_set(FTK_E_MISMATCH, __FILE__, __LINE__, "rank_pattern names \"%s\", which is not an AdaLoRA "
                               "site of this model (target_modules %s)", e->string, S->targets);
            break;
        }
        if (!cJSON_IsArray(e) || cJSON_GetArraySize(e) != S->r) {
            st = ftk_error_set(FTK_E_MISMATCH, __FILE__, __LINE__, "rank_pattern[\"%s\"] must be a list of init_r = %lld "
                               "booleans", e->string, (long long)S->r);
            break;
        }
        int k = 0;
        const cJSON *b;
        cJSON_ArrayForEach(b, e) {
            if (!cJSON_IsBool(b) && !cJSON_IsNumber(b)) {
                st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "rank_pattern[\"%s\"][%d] is not a boolean", e->string, k);
                break;
            }
            as->keep[k++] = cJSON_IsBool(b) ? (unsigned char)cJSON_IsTrue(b) : (unsigned char)(b->valuedouble != 0);
        }
        as->resized = 1;
        S->have_pattern = 1;
        if (st != FTK_OK)
            break;
    }
    cJSON_Delete(root);
    return st;
}

static ftk_status ada_init(struct ftk_peft *p, const struct ftk_kv *o)
{
    struct adalora *S = ftk_peft_priv(p);
    FTK_TRY(ftk_kv_int(o, "init_r", 12, &S->r));
    FTK_TRY(ftk_kv_int(o, "target_r", 8, &S->target_r));
    FTK_TRY(ftk_kv_int(o, "tinit", 0, &S->tinit));
    FTK_TRY(ftk_kv_int(o, "tfinal", 0, &S->tfinal));
    FTK_TRY(ftk_kv_int(o, "deltaT", 1, &S->deltaT));
    FTK_TRY(ftk_kv_int(o, "total_step", 0, &S->total_step));
    FTK_TRY(ftk_kv_double(o, "lora_alpha", 8.0, &S->alpha));   /* peft LoraConfig's default */
    FTK_TRY(ftk_kv_double(o, "lora_dropout", 0.0, &S->dropout));
    FTK_TRY(ftk_kv_double(o, "beta1", 0.85, &S->beta1));
    FTK_TRY(ftk_kv_double(o, "beta2", 0.85, &S->beta2));
    FTK_TRY(ftk_kv_double(o, "orth_reg_weight", 0.5, &S->orth));
    FTK_TRY(ftk_kv_bool(o, "init_lora_weights", 1, &S->init_true));
    int dora;
    FTK_TRY(ftk_kv_bool(o, "use_dora", 0, &dora));
    FTK_FAIL_IF(dora, FTK_E_UNSUPPORTED, "use_dora: AdaLoRA does not support DoRA (neither does peft)");
    FTK_FAIL_IF(S->r < 1 || S->r > 65536, FTK_E_INVALID, "init_r=%lld must be in 1..65536", (long long)S->r);
    FTK_FAIL_IF(S->target_r < 0 || S->target_r > S->r, FTK_E_INVALID,
                "target_r=%lld must be in 0..init_r (init_r=%lld): AdaLoRA only removes ranks", (long long)S->target_r,
                (long long)S->r);
    FTK_FAIL_IF(!ftk_kv_get(o, "total_step") || S->total_step <= 0, FTK_E_INVALID,
                "total_step is required and must be > 0 (the number of optimizer steps of the run: AdaLoRA's budget "
                "schedule is laid out over it)");
    FTK_FAIL_IF(S->tinit < 0 || S->tfinal < 0, FTK_E_INVALID, "tinit=%lld and tfinal=%lld must be >= 0", (long long)S->tinit,
                (long long)S->tfinal);
    FTK_FAIL_IF(S->tinit >= S->total_step - S->tfinal, FTK_E_INVALID,
                "tinit=%lld, tfinal=%lld, total_step=%lld leave no budgeting phase: tinit must be < total_step - tfinal",
                (long long)S->tinit, (long long)S->tfinal, (long long)S->total_step);
    FTK_FAIL_IF(S->deltaT < 1, FTK_E_INVALID, "deltaT=%lld must be >= 1", (long long)S->deltaT);
    FTK_FAIL_IF(!(S->beta1 > 0 && S->beta1 < 1) || !(S->beta2 > 0 && S->beta2 < 1), FTK_E_INVALID,
                "beta1=%g and beta2=%g must be in (0, 1)", S->beta1, S->beta2);
    FTK_FAIL_IF(!(S->orth >= 0), FTK_E_INVALID, "orth_reg_weight=%g must be >= 0", S->orth);
    FTK_FAIL_IF(!(S->dropout >= 0 && S->dropout < 1), FTK_E_INVALID, "lora_dropout=%g must be in [0, 1)", S->dropout);
    const char *mts = ftk_kv_get(o, "modules_to_save");
    FTK_FAIL_IF(mts && *mts, FTK_E_UNSUPPORTED, "modules_to_save=%s with AdaLoRA is not supported", mts);
    const char *t = ftk_kv_get(o, "target_modules");
    FTK_FAIL_IF(!(S->targets = strdup(t ? t : "q_proj,v_proj")), FTK_E_NOMEM, "out of memory");   /* peft's default for Llama, Qwen */
    float ranknum = (float)S->r + 1e-5f;
    S->scale = (S->alpha > 0 ? (float)S->alpha : (float)S->r) / ranknum;

    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    FTK_FAIL_IF(S->dropout > 0 && strcmp(be->name, "cpu"), FTK_E_UNSUPPORTED,
                "lora_dropout on the %s backend is not implemented yet", be->name);
    uint64_t seed = ftk_peft_seed(p);
    for (size_t i = 0; i < ftk_peft_n_sites(p); i++) {
        const struct ftk_site *s = ftk_peft_site(p, i);
        if (!targeted(S, s))
            continue;
        FTK_FAIL_IF(s->kind == FTK_LIN_LM_HEAD, FTK_E_UNSUPPORTED, "AdaLoRA on lm_head is not supported");
        FTK_FAIL_IF(S->n == MAX_SITES, FTK_E_UNSUPPORTED, "more than %d AdaLoRA sites", MAX_SITES);
        struct ada_site *as = &S->sites[S->n++];
        as->s = s;
        as->keep = malloc((size_t)S->r);
        FTK_FAIL_IF(!as->keep, FTK_E_NOMEM, "out of memory");
        memset(as->keep, 1, (size_t)S->r);
        float **w[3] = {&as->A, &as->B, &as->E}, **g[3] = {&as->gA, &as->gB, &as->gE};
        for (int k = 0; k < 3; k++) {
            char name[300];
            int64_t shape[2] = {k == 1 ? s->out : S->r, k == 0 ? s->in : k == 1 ? S->r : 1};
            snprintf(name, sizeof name, "base_model.model.%s.%s", s->module, part[k]);
            FTK_TRY(ftk_peft_add_param(p, name, 2, shape, 1, w[k], g[k]));   /* HF Trainer decays all three */
            if (k == 2 && S->init_true)
                continue;   /* E = 0 */
            size_t n = (size_t)(shape[0] * shape[1]);
            double sd = S->init_true ? 0.02 : 1.0;
            FTK_TRY(grow_host(S, n));
            for (size_t j = 0; j < n; j++)
                S->hw[j] = (float)(sd * normal(mix(seed ^ mix((uint64_t)i * 0x10001 + 17 + (uint64_t)k) ^ mix(j))));
            FTK_TRY(be->to_device(ctx, *w[k], S->hw, n * sizeof(float)));
        }
        FTK_TRY(ftk_peft_attach(p, s));
    }
    FTK_FAIL_IF(S->n == 0, FTK_E_INVALID, "target_modules=%s matches no linear layer", S->targets);
    const char *rp = ftk_kv_get(o, "rank_pattern");
    if (rp && strcmp(rp, "{}") && strcmp(rp, "null"))
        FTK_TRY(parse_pattern(S, rp));
    return FTK_OK;
}

/* ---- forward and backward ------------------------------------------------------------------ */

/* Dropout key of (seed, step, site): forward and backward draw the same mask from it. */
static uint64_t drop_key(struct ftk_peft *p, const struct adalora *S, const struct ada_site *as)
{
    return mix(ftk_peft_seed(p) ^ mix(ftk_peft_noise_step(p) + 7) ^ mix((uint64_t)(as - S->sites) + 99));
}
static int dropped_at(uint64_t key, size_t j, double p) { return uniform01(mix(key ^ mix(j))) < p; }

/* x with dropout applied (train and p > 0) into S->xd, else x itself. Host arithmetic. */
static ftk_status dropped(struct ftk_peft *p, struct adalora *S, const struct ada_site *as, const float *x, int64_t N,
                          const float **out)
{
    *out = x;
    if (S->dropout <= 0)
        return FTK_OK;
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    size_t n = (size_t)(N * as->s->in);
    FTK_TRY(grow(&S->xd, &S->xd_cap, n, be, ctx));
    uint64_t key = drop_key(p, S, as);
    float keep = (float)(1.0 / (1.0 - S->dropout));
    for (size_t j = 0; j < n; j++)
        S->xd[j] = dropped_at(key, j, S->dropout) ? 0.0f : x[j] * keep;
    *out = S->xd;
    return FTK_OK;
}

/* S->ae (r,I) = A * E (row k of A times E[k]); E into host S->hw. */
static ftk_status a_times_e(struct ftk_peft *p, struct adalora *S, const struct ada_site *as)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t r = S->r, I = as->s->in;
    FTK_TRY(grow(&S->ae, &S->ae_cap, (size_t)(r * I), be, ctx));
    FTK_TRY(grow_host(S, (size_t)r));
    FTK_TRY(be->to_host(ctx, S->hw, as->E, (size_t)r * sizeof(float)));
    FTK_TRY(be->copy(ctx, S->ae, as->A, (size_t)(r * I) * sizeof(float)));
    for (int64_t k = 0; k < r; k++)
        FTK_TRY(be->scale(ctx, S->ae + k * I, I, S->hw[k]));
    return FTK_OK;
}

static ftk_status ada_forward(struct ftk_peft *p, const struct ftk_site *s, float *y, const float *x, int64_t N, int train)
{
    struct adalora *S = ftk_peft_priv(p);
    struct ada_site *as = find_site(S, s);
    if (!as)
        return FTK_OK;
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t r = S->r, I = s->in, O = s->out;
    const float *xd = x;
    if (train)
        FTK_TRY(dropped(p, S, as, x, N, &xd));
    FTK_TRY(a_times_e(p, S, as));
    FTK_TRY(grow(&S->t, &S->t_cap, (size_t)(2 * N * r), be, ctx));
    FTK_TRY(be->gemm(ctx, 0, 1, N, r, I, 1.0f, xd, I, S->ae, I, 0.0f, S->t, r));        /* t = xd (A*E)^T (N,r) */
    return be->gemm(ctx, 0, 1, N, O, r, S->scale, S->t, r, as->B, r, 1.0f, y, O);      /* y += s t B^T  (N,O) */
}

/* t = xd AE^T, u = dy B: dB += s dy^T t; dAE = s u^T xd, dA += E * dAE, dE[k] += dAE_k . A_k;
 * dx += s u AE (through the dropout mask). */
static ftk_status ada_backward(struct ftk_peft *p, const struct ftk_site *s, float *dx, const float *dy, const float *x,
                               int64_t N)
{
    struct adalora *S = ftk_peft_priv(p);
    struct ada_site *as = find_site(S, s);
    if (!as)
        return FTK_OK;
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t r = S->r, I = s->in, O = s->out;
    const float *xd;
    FTK_TRY(dropped(p, S, as, x, N, &xd));
    FTK_TRY(a_times_e(p, S, as));   /* E in S->hw */
    FTK_TRY(grow(&S->t, &S->t_cap, (size_t)(2 * N * r), be, ctx));
    FTK_TRY(grow(&S->dae, &S->dae_cap, (size_t)(r * I), be, ctx));
    float *t = S->t, *u = S->t + N * r;
    FTK_TRY(be->gemm(ctx, 0, 1, N, r, I, 1.0f, xd, I, S->ae, I, 0.0f, t, r));          /* t = xd AE^T    (N,r) */
    FTK_TRY(be->gemm(ctx, 0, 0, N, r, O, 1.0f, dy, O, as->B, r, 0.0f, u, r));          /* u = dy B       (N,r) */
    FTK_TRY(be->gemm(ctx, 1, 0, O, r, N, S->scale, dy, O, t, r, 1.0f, as->gB, r));     /* dB += s dy^T t (O,r) */
    FTK_TRY(be->gemm(ctx, 1, 0, r, I, N, S->scale, u, r, xd, I, 0.0f, S->dae, I));     /* dAE = s u^T xd (r,I) */
    for (int64_t k = 0; k < r; k++) {
        FTK_TRY(be->axpy(ctx, as->gA + k * I, S->dae + k * I, I, S->hw[k]));            /* dA_k += E_k dAE_k */
        FTK_TRY(be->gemm(ctx, 0, 1, 1, 1, I, 1.0f, S->dae + k * I, I, as->A + k * I, I, 1.0f, as->gE + k, 1));
    }
    if (!dx)
        return FTK_OK;
    if (S->dropout <= 0)
        return be->gemm(ctx, 0, 0, N, I, r, S->scale, u, r, S->ae, I, 1.0f, dx, I);    /* dx += s u AE */
    FTK_TRY(grow(&S->mask, &S->mask_cap, (size_t)(N * I), be, ctx));
    FTK_TRY(be->gemm(ctx, 0, 0, N, I, r, S->scale, u, r, S->ae, I, 0.0f, S->mask, I));
    uint64_t key = drop_key(p, S, as);
    float keep = (float)(1.0 / (1.0 - S->dropout));
    for (int64_t j = 0; j < N * I; j++)
        if (!dropped_at(key, (size_t)j, S->dropout))
            dx[j] += S->mask[j] * keep;
    return FTK_OK;
}

/* ---- the optimizer step: regulariser and rank allocation ----------------------------------- */

/* One term of the regulariser: M = cov - I over the live ranks (cov (r,r) = A A^T or B^T B on the
 * backend in S->cov), ||M||_F into *norm and M / ||M|| (zero outside the live ranks, symmetrised)
 * onto the backend in S->md. Returns 0 in *norm when M is empty or zero. */
static ftk_status orth_term(struct ftk_peft *p, struct adalora *S, const struct ada_site *as, double *norm)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t r = S->r;
    FTK_TRY(grow_host(S, (size_t)(2 * r * r)));
    float *c = S->hw, *m = S->hw + r * r;
    FTK_TRY(be->to_host(ctx, c, S->cov, (size_t)(r * r) * sizeof(float)));
    double acc = 0;
    for (int64_t i = 0; i < r; i++)
        for (int64_t j = 0; j < r; j++) {
            int live = !as->resized || (as->keep[i] && as->keep[j]);
            double v = live ? 0.5 * ((double)c[i * r + j] + c[j * r + i]) - (i == j) : 0.0;
            m[i * r + j] = (float)v;
            acc += v * v;
        }
    *norm = sqrt(acc);
    if (*norm > 0)
        for (int64_t i = 0; i < r * r; i++)
            m[i] = (float)(m[i] / *norm);
    return be->to_device(ctx, S->md, m, (size_t)(r * r) * sizeof(float));
}

/* peft AdaLoraModel.forward: loss += w R, R = sum ||A A^T - I|| + ||B^T B - I|| over 2n; the
 * gradient of ||M||_F, M = A A^T - I, is 2 (M / ||M||) A (B: 2 B (M / ||M||)). */
static ftk_status ada_before_update(struct ftk_peft *p, double *loss)
{
    struct adalora *S = ftk_peft_priv(p);
    if (S->orth <= 0)
        return FTK_OK;
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t r = S->r;
    FTK_TRY(grow(&S->cov, &S->cov_cap, (size_t)(r * r), be, ctx));
    FTK_TRY(grow(&S->md, &S->md_cap, (size_t)(r * r), be, ctx));
    double R = 0, coef = S->orth / (2.0 * S->n) * 2.0;   /* w / 2n times the 2 of d||M|| */
    for (int i = 0; i < S->n; i++) {
        struct ada_site *as = &S->sites[i];
        int64_t I = as->s->in, O = as->s->out;
        double nrm;
        FTK_TRY(be->gemm(ctx, 0, 1, r, r, I, 1.0f, as->A, I, as->A, I, 0.0f, S->cov, r));         /* A A^T */
        FTK_TRY(orth_term(p, S, as, &nrm));
        R += nrm;
        if (nrm > 0)
            FTK_TRY(be->gemm(ctx, 0, 0, r, I, r, (float)coef, S->md, r, as->A, I, 1.0f, as->gA, I));  /* dA += c M A */
        FTK_TRY(be->gemm(ctx, 1, 0, r, r, O, 1.0f, as->B, r, as->B, r, 0.0f, S->cov, r));         /* B^T B */
        FTK_TRY(orth_term(p, S, as, &nrm));
        R += nrm;
        if (nrm > 0)
            FTK_TRY(be->gemm(ctx, 0, 0, O, r, r, (float)coef, as->B, r, S->md, r, 1.0f, as->gB, r));  /* dB += c B M */
    }
    *loss += S->orth * R / (2.0 * S->n);
    return FTK_OK;
}

/* RankAllocator.update_ipt: ipt = |w g|, ema = b1 ema + (1-b1) ipt, unc = b2 unc + (1-b2) |ipt - ema|
 * (float32, as torch). */
static ftk_status update_ipt(struct ftk_peft *p, struct adalora *S)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    float b1 = (float)S->beta1, c1 = (float)(1 - S->beta1), b2 = (float)S->beta2, c2 = (float)(1 - S->beta2);
    for (int i = 0; i < S->n; i++) {
        struct ada_site *as = &S->sites[i];
        const float *w[3] = {as->A, as->B, as->E}, *g[3] = {as->gA, as->gB, as->gE};
        for (int k = 0; k < 3; k++) {
            size_t n = (size_t)numel_of(S, as, k);
            if (!as->ema[k]) {
                as->ema[k] = calloc(n, sizeof(float));
                as->unc[k] = calloc(n, sizeof(float));
                FTK_FAIL_IF(!as->ema[k] || !as->unc[k], FTK_E_NOMEM, "out of memory");
            }
            FTK_TRY(grow_host(S, n));
            FTK_TRY(be->to_host(ctx, S->hw, w[k], n * sizeof(float)));
            FTK_TRY(be->to_host(ctx, S->hg, g[k], n * sizeof(float)));
            float *e = as->ema[k], *u = as->unc[k];
            for (size_t j = 0; j < n; j++) {   /* -std=c11: no FMA contraction, torch's roundings */
                float ipt = fabsf(S->hw[j] * S->hg[j]);
                e[j] = b1 * e[j] + c1 * ipt;
                u[j] = b2 * u[j] + c2 * fabsf(ipt - e[j]);
            }
        }
    }
    return FTK_OK;
}

/* RankAllocator.budget_schedule */
static int64_t budget_at(const struct adalora *S, int64_t step, int *mask)
{
    int64_t init = S->n * S->r, target = S->n * S->target_r;
    if (step <= S->tinit) {
        *mask = 0;
        return init;
    }
    if (step > S->total_step - S->tfinal) {
        *mask = 1;
        return target;
    }
    double mul = 1.0 - (double)(step - S->tinit) / (double)(S->total_step - S->tfinal - S->tinit);
    *mask = step % S->deltaT == 0;
    return (int64_t)((double)(init - target) * (mul * mul * mul) + (double)target);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Zeroes E where the rank is not kept. */
static ftk_status apply_mask(struct ftk_peft *p, struct adalora *S)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    for (int i = 0; i < S->n; i++)
        for (int64_t k = 0; k < S->r; k++)
            if (!S->sites[i].keep[k])
                FTK_TRY(be->zero(ctx, S->sites[i].E + k, sizeof(float)));
    return FTK_OK;
}

/* RankAllocator.mask_to_budget: score of rank k = ema*unc of E_k + (mean over row A_k + mean
 * over column B_k of ema*unc); the (init - budget)-th smallest score is the threshold and every
 * rank scoring <= it is masked. */
static ftk_status mask_to_budget(struct ftk_peft *p, struct adalora *S, int64_t budget)
{
    int64_t r = S->r, total = S->n * r, k = total - budget;
    double *score = malloc((size_t)total * sizeof *score), *sorted = malloc((size_t)total * sizeof *sorted);
    if (!score || !sorted) {
        free(score), free(sorted);
        FTK_FAIL(FTK_E_NOMEM, "out of memory");
    }
    for (int i = 0; i < S->n; i++) {
        const struct ada_site *as = &S->sites[i];
        int64_t I = as->s->in, O = as->s->out;
        for (int64_t q = 0; q < r; q++) {
            double sa = 0, sb = 0, se = 0;
            if (as->ema[0]) {
                for (int64_t j = 0; j < I; j++)
                    sa += (double)(as->ema[0][q * I + j] * as->unc[0][q * I + j]);
                for (int64_t o = 0; o < O; o++)
                    sb += (double)(as->ema[1][o * r + q] * as->unc[1][o * r + q]);
                se = (double)(as->ema[2][q] * as->unc[2][q]);
            }
            score[i * r + q] = (double)((float)se + ((float)(sa / (double)I) + (float)(sb / (double)O)));
        }
    }
    memcpy(sorted, score, (size_t)total * sizeof *sorted);
    qsort(sorted, (size_t)total, sizeof *sorted, cmp_double);
    double thr = k >= 1 ? sorted[(k <= total ? k : total) - 1] : -INFINITY;
    for (int i = 0; i < S->n; i++)
        for (int64_t q = 0; q < r; q++)
            S->sites[i].keep[q] = !(score[i * r + q] <= thr);
    free(score);
    free(sorted);
    S->have_pattern = 1;
    return apply_mask(p, S);
}

/* AdaLoraModel.update_and_allocate(global_step = step). */
static ftk_status ada_after_update(struct ftk_peft *p, int64_t step)
{
    struct adalora *S = ftk_peft_priv(p);
    int64_t final = S->total_step - S->tfinal;
    if (step < final) {
        FTK_TRY(update_ipt(p, S));
        int mask;
        int64_t budget = budget_at(S, step, &mask);
        return mask ? mask_to_budget(p, S, budget) : FTK_OK;
    }
    if (step == final) {   /* the final pattern, then the averages start again (reset_ipt) */
        if (!S->sites[0].ema[0])   /* resumed right here: no averages to rank by; keep what was loaded */
            return S->have_pattern ? apply_mask(p, S) : FTK_OK;
        FTK_TRY(mask_to_budget(p, S, S->n * S->target_r));
        for (int i = 0; i < S->n; i++)
            for (int k = 0; k < 3; k++) {
                free(S->sites[i].ema[k]);
                free(S->sites[i].unc[k]);
                S->sites[i].ema[k] = S->sites[i].unc[k] = NULL;
            }
        return FTK_OK;
    }
    return S->have_pattern ? apply_mask(p, S) : FTK_OK;
}

/* ---- files -------------------------------------------------------------------------------- */

static int64_t kept(const struct adalora *S, const struct ada_site *as)
{
    int64_t n = 0;
    for (int64_t k = 0; k < S->r; k++)
        n += !S->have_pattern || as->keep[k];
    return n;
}

static ftk_status ada_save(struct ftk_peft *p, const char *dir, const char *base_path)
{
    struct adalora *S = ftk_peft_priv(p);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    struct ftk_message msg;
    ftk_message_init(&msg);
    ftk_status st = ftk_message_set_meta(&msg, "format", "pt");
    for (int i = 0; i < S->n && st == FTK_OK; i++) {
        const struct ada_site *as = &S->sites[i];
        int64_t r = S->r, I = as->s->in, O = as->s->out, kr = kept(S, as);
        const float *w[3] = {as->A, as->B, as->E};
        for (int k = 0; k < 3 && st == FTK_OK; k++) {
            char name[300];
            int64_t shape[2] = {k == 1 ? O : kr, k == 0 ? I : k == 1 ? kr : 1}, n = numel_of(S, as, k);
            struct ftk_tensor *t;
            snprintf(name, sizeof name, "base_model.model.%s.%s", as->s->module, part[k]);
            if ((st = grow_host(S, (size_t)n)) != FTK_OK || (st = ftk_message_add(&msg, name, FTK_DTYPE_F32, 2, shape, NULL, &t)) != FTK_OK)
                break;
            if ((st = be->to_host(ctx, S->hw, w[k], (size_t)n * sizeof(float))) != FTK_OK)
                break;
            float *dst = t->data;   /* the kept ranks only: rows of A and E, columns of B */
            int64_t c = 0;
            for (int64_t q = 0; q < r; q++) {
                if (S->have_pattern && !as->keep[q])
                    continue;
                if (k == 0)
                    memcpy(dst + c * I, S->hw + q * I, (size_t)I * sizeof(float));
                else if (k == 1)
                    for (int64_t o = 0; o < O; o++)
                        dst[o * kr + c] = S->hw[o * r + q];
                else
                    dst[c] = S->hw[q];
                c++;
            }
        }
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    if (st == FTK_OK)
        st = ftk_st_write(path, &msg);
    ftk_message_free(&msg);
    FTK_TRY(st);

    cJSON *c = cJSON_CreateObject(), *tm = cJSON_CreateArray();
    char *buf = strdup(S->targets);
    if (!buf) {
        cJSON_Delete(c);
        cJSON_Delete(tm);
        FTK_FAIL(FTK_E_NOMEM, "out of memory");
    }
    static const char *linear[] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    if (!strcmp(buf, "all") || !strcmp(buf, "all-linear"))
        for (int i = 0; i < 7; i++)
            cJSON_AddItemToArray(tm, cJSON_CreateString(linear[i]));
    else
        for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save))
            cJSON_AddItemToArray(tm, cJSON_CreateString(t));
    free(buf);
    cJSON_AddStringToObject(c, "peft_type", "ADALORA");
    cJSON_AddStringToObject(c, "task_type", "CAUSAL_LM");
    if (base_path)
        cJSON_AddStringToObject(c, "base_model_name_or_path", base_path);
    else
        cJSON_AddNullToObject(c, "base_model_name_or_path");
    cJSON_AddNumberToObject(c, "init_r", (double)S->r);
    cJSON_AddNumberToObject(c, "target_r", (double)S->target_r);
    cJSON_AddNumberToObject(c, "tinit", (double)S->tinit);
    cJSON_AddNumberToObject(c, "tfinal", (double)S->tfinal);
    cJSON_AddNumberToObject(c, "deltaT", (double)S->deltaT);
    cJSON_AddNumberToObject(c, "total_step", (double)S->total_step);
    cJSON_AddNumberToObject(c, "beta1", S->beta1);
    cJSON_AddNumberToObject(c, "beta2", S->beta2);
    cJSON_AddNumberToObject(c, "orth_reg_weight", S->orth);
    cJSON_AddNumberToObject(c, "lora_alpha", S->alpha);
    cJSON_AddNumberToObject(c, "lora_dropout", S->dropout);
    cJSON_AddItemToObject(c, "target_modules", tm);
    cJSON_AddBoolToObject(c, "init_lora_weights", S->init_true);
    cJSON_AddStringToObject(c, "bias", "none");
    cJSON_AddBoolToObject(c, "fan_in_fan_out", 0);
    cJSON_AddBoolToObject(c, "use_dora", 0);
    cJSON_AddBoolToObject(c, "use_rslora", 0);
    cJSON_AddBoolToObject(c, "inference_mode", 1);
    cJSON_AddNullToObject(c, "modules_to_save");
    cJSON_AddNullToObject(c, "layers_to_transform");
    cJSON_AddItemToObject(c, "alpha_pattern", cJSON_CreateObject());
    if (S->have_pattern) {   /* peft's keys after save: "<module>.lora_E" */
        cJSON *rp = cJSON_CreateObject();
        for (int i = 0; i < S->n; i++) {
            cJSON *l = cJSON_CreateArray();
            for (int64_t k = 0; k < S->r; k++)
                cJSON_AddItemToArray(l, cJSON_CreateBool(S->sites[i].keep[k]));
            char key[300];
            snprintf(key, sizeof key, "%s.lora_E", S->sites[i].s->module);
            cJSON_AddItemToObject(rp, key, l);
        }
        cJSON_AddItemToObject(c, "rank_pattern", rp);
    } else {
        cJSON_AddNullToObject(c, "rank_pattern");
    }
    cJSON_AddNullToObject(c, "revision");
    char *text = cJSON_Print(c);
    cJSON_Delete(c);
    FTK_FAIL_IF(!text, FTK_E_NOMEM, "out of memory");
    st = ftk_peft_write_config(dir, text);
    free(text);
    return st;
}

/* Reads A, B, E (kept ranks only when the config had a rank pattern) and puts them at their
 * ranks among init_r, zeros elsewhere. */
static ftk_status ada_load(struct ftk_peft *p, struct ftk_source *src)
{
    struct adalora *S = ftk_peft_priv(p);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    struct ftk_st_model *st;
    FTK_TRY(ftk_st_model_open(src, "adapter_model", &st));
    const char *where = ftk_source_path(src);
    ftk_status s = FTK_OK;
    size_t seen = 0;
    float *tmp = NULL, *full = NULL;
    for (int i = 0; i < S->n && s == FTK_OK; i++) {
        struct ada_site *as = &S->sites[i];
        int64_t r = S->r, I = as->s->in, O = as->s->out, kr = kept(S, as);
        float *w[3] = {as->A, as->B, as->E};
        for (int k = 0; k < 3 && s == FTK_OK; k++) {
            char name[300];
            snprintf(name, sizeof name, "base_model.model.%s.%s", as->s->module, part[k]);
            int64_t d0 = k == 1 ? O : kr, d1 = k == 0 ? I : k == 1 ? kr : 1, n = numel_of(S, as, k);
            if (kr == 0) {   /* a rank pruned to nothing: peft saves (0,I), (O,0), (0,1) */
                const struct ftk_tensor *t = ftk_st_model_find(st, name);
                if (!t)
                    s = ftk_error_set(FTK_E_NOTFOUND, __FILE__, __LINE__, "%s: adapter lacks %s", where, name);
                else if (t->ndim != 2 || t->shape[0] != d0 || t->shape[1] != d1)
                    s = ftk_error_set(FTK_E_MISMATCH, __FILE__, __LINE__, "%s: %s should be empty ([%lld,%lld]) as "
                                      "rank_pattern keeps no rank of it", where, name, (long long)d0, (long long)d1);
                else
                    s = be->zero(ctx, w[k], (size_t)n * sizeof(float));
                seen += s == FTK_OK;
                continue;
            }
            if (kr == r) {
                if ((s = ftk_peft_load_tensor(p, st, where, name, 2, d0, d1, w[k])) == FTK_OK)
                    seen++;
                continue;
            }
            float *t2 = realloc(tmp, (size_t)n * sizeof *t2), *f2 = realloc(full, (size_t)n * sizeof *f2);
            tmp = t2 ? t2 : tmp;
            full = f2 ? f2 : full;
            if (!t2 || !f2) {
                s = ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
                break;
            }
            float *dev;   /* the kept ranks, loaded and checked, then scattered on the host */
            if ((s = be->alloc(ctx, (size_t)(d0 * d1) * sizeof(float), (void **)&dev)) != FTK_OK)
                break;
            s = ftk_peft_load_tensor(p, st, where, name, 2, d0, d1, dev);
            if (s == FTK_OK)
                s = be->to_host(ctx, tmp, dev, (size_t)(d0 * d1) * sizeof(float));
            be->free(ctx, dev);
            if (s != FTK_OK)
                break;
            memset(full, 0, (size_t)n * sizeof *full);
            int64_t c = 0;
            for (int64_t q = 0; q < r; q++) {
                if (!as->keep[q])
                    continue;
                if (k == 0)
                    memcpy(full + q * I, tmp + c * I, (size_t)I * sizeof(float));
                else if (k == 1)
                    for (int64_t o = 0; o < O; o++)
                        full[o * r + q] = tmp[o * kr + c];
                else
                    full[q] = tmp[c];
                c++;
            }
            if ((s = be->to_device(ctx, w[k], full, (size_t)n * sizeof(float))) == FTK_OK)
                seen++;
        }
    }
    free(tmp);
    free(full);
    if (s == FTK_OK && seen != ftk_st_model_count(st))
        s = ftk_error_set(FTK_E_MISMATCH, __FILE__, __LINE__, "%s: adapter has %zu tensors, the model's AdaLoRA sites take %zu",
                          where, ftk_st_model_count(st), seen);
    ftk_st_model_close(st);
    return s;
}

/* W (O,I) += s B (A * E), F32 host memory (peft SVDLinear.get_delta_weight). */
static ftk_status ada_merge(struct ftk_peft *p, const struct ftk_site *s, float *w)
{
    struct adalora *S = ftk_peft_priv(p);
    struct ada_site *as = find_site(S, s);
    if (!as)
        return FTK_OK;
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t r = S->r, I = s->in, O = s->out;
    float *A = malloc((size_t)(r * I) * sizeof *A), *B = malloc((size_t)(O * r) * sizeof *B), *E = malloc((size_t)r * sizeof *E);
    ftk_status st = A && B && E ? FTK_OK : ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    if (st == FTK_OK)
        st = be->to_host(ctx, A, as->A, (size_t)(r * I) * sizeof *A);
    if (st == FTK_OK)
        st = be->to_host(ctx, B, as->B, (size_t)(O * r) * sizeof *B);
    if (st == FTK_OK)
        st = be->to_host(ctx, E, as->E, (size_t)r * sizeof *E);
    if (st == FTK_OK)
        for (int64_t o = 0; o < O; o++)
            for (int64_t i = 0; i < I; i++) {
                float d = 0;
                for (int64_t k = 0; k < r; k++)
                    d += B[o * r + k] * (A[k * I + i] * E[k]);
                w[o * I + i] += d * S->scale;
            }
    free(A), free(B), free(E);
    return st;
}

static void ada_release(struct ftk_peft *p)
{
    struct adalora *S = ftk_peft_priv(p);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    float *dev[] = {S->ae, S->dae, S->t, S->xd, S->mask, S->cov, S->md};
    for (size_t i = 0; i < sizeof dev / sizeof *dev; i++)
        be->free(ctx, dev[i]);
    for (int i = 0; i < S->n; i++) {
        for (int k = 0; k < 3; k++) {
            free(S->sites[i].ema[k]);
            free(S->sites[i].unc[k]);
        }
        free(S->sites[i].keep);
    }
    free(S->hw);
    free(S->hg);
    free(S->targets);
}

FTK_EXPORT const struct ftk_peft_plugin ftk_peft_plugin = {
    .abi_version = FTK_PEFT_ABI,
    .struct_size = sizeof(struct ftk_peft_plugin),
    .name = "adalora",
    .priv_size = sizeof(struct adalora),
    .init = ada_init,
    .linear_forward = ada_forward,
    .linear_backward = ada_backward,
    .save = ada_save,
    .load = ada_load,
    .merge = ada_merge,
    .release = ada_release,
    .before_update = ada_before_update,
    .after_update = ada_after_update,
};
