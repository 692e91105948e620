/* plugins/peft/adapter_fusion.c: AdapterFusion (Pfeiffer et al. 2021), stage 2: attention over
 * the outputs of N trained, frozen bottleneck adapters, at every location where they sit, as
 * adapter-transformers computes it (methods/bottleneck.py compose_fuse, methods/modeling.py
 * BertFusion; AdapterFusionConfig "dynamic" by default, "static" without the value matrix):
 *   u    the adapters' common input (h, or h + resid for Pfeiffer-type adapters)
 *   y_a  = adapter a's scaled output s_a (act(u Wd^T + bd) Wu^T + bu)          (N,C) each
 *   p    = softmax_a( (q Wq^T + bq) . (y_a Wk^T + bk) ),  q = u (or h with query_before_ln)
 *   h'   = h + sum_a p_a (y_a Wv^T)       (Wv without bias; residual_before: h' = (sum_a p_a y_a + h) Wv^T)
 * Trainable: Wq, bq, Wk, bk (bert init N(0, 0.02), biases 0) and Wv (identity + 1e-6 off the
 * diagonal, value_initialized) per location; the adapters are loaded frozen with
 * adapters=DIR1,DIR2,... (ftk bottleneck adapter directories; names from the directories'
 * basenames, or adapter_names=). regularization (dynamic's default) adds 0.01 ||I - Wv||^2 per
 * location to the loss and its gradient before each optimizer update (the paper's L; adapters'
 * trainer applies the same gradient after its step instead). adapter_drop_layers=n (AdapterDrop)
 * runs neither fusion nor adapters in the first n layers. No dropout on the scores, no
 * temperature annealing (refused). Sequential adapters only (parallel ones are refused), all with
 * the same input and locations.
 *
 * Training keeps only the sublayer output h per location; backward recomputes the adapters, the
 * scores and the mix. Saved in ftk's format, self-contained: adapter_config.json (peft_type
 * ADAPTER_FUSION, adapters' fusion keys, adapter_names, adapter_configs = each adapter's
 * bottleneck options) and adapter_model.safetensors with the frozen adapters' tensors
 * (model.layers.L.{attention,output}_adapters.adapters.NAME...) and the fusion's
 * (...adapter_fusion_layer.N1,N2.{query,key,value}.{weight,bias}), adapters' state-dict names.
 * CPU backend only (the scores and softmax run on the host). */
#include "bottleneck_impl.h"
#include "ftk/safetensors.h"
#include "ftk/source.h"

#define FU_MAX 8

struct fu_site {
    float *Wq, *bq, *Wk, *bk, *Wv;
    float *gWq, *gbq, *gWk, *gbk, *gWv;
};

struct fusion {
    int64_t C, L;
    int n;
    char names[FU_MAX][64], fname[FU_MAX * 65];
    struct bn_config cfg[FU_MAX];
    struct bn_module mod[FU_MAX][BN_MAX_LAYERS][2];   /* frozen, memory of the plugin's own */
    struct fu_site site[BN_MAX_LAYERS][2];
    int has[BN_MAX_LAYERS][2];
    int query, key, value, query_before_ln, residual_before, value_before_softmax, value_init, regularization;
    char preset[16];
    int64_t drop_layers;
    int h_resid;               /* the adapters read h + resid */
    int64_t msum, mmax;
    float *keep, *infer;       /* h (N,C) per location in training / inference */
    size_t keep_cap, infer_cap;
    int64_t keep_N;
    float *scr;
    size_t scr_cap;
};

static const char *const fu_keys[] = {"adapters", "adapter_names", "adapter_configs", "fusion_config", "query", "key",
                                      "value", "query_before_ln", "residual_before", "value_before_softmax",
                                      "value_initialized", "regularization", "temperature", "dropout_prob",
                                      "adapter_drop_layers", NULL};

/* A directory's basename as a tensor-name component: '.', ',', '/', '"' and spaces become '_'. */
static void base_name(const char *dir, char *out, size_t n)
{
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/')
        len--;
    size_t st = len;
    while (st > 0 && dir[st - 1] != '/')
        st--;
    size_t k = 0;
    for (size_t i = st; i < len && k + 1 < n; i++)
        out[k++] = strchr("., /\"", dir[i]) ? '_' : dir[i];
    out[k] = '\0';
}

/* Adapter i's module tensors in backend memory of the plugin's own (frozen: no gradients). */
static ftk_status alloc_modules(struct fusion *S, const struct ftk_backend *be, void *ctx, int i)
{
    for (int l = 0; l < S->L; l++)
        for (int loc = 0; loc < 2; loc++) {
            if (!S->has[l][loc])
                continue;
            for (int k = 0; k < 5; k++) {
                int64_t d0, d1;
                if (!bn_shape(&S->cfg[i], S->C, k, &d0, &d1))
                    continue;
                FTK_TRY(be->alloc(ctx, (size_t)(d0 * d1) * sizeof(float), (void **)bn_slot(&S->mod[i][l][loc], k, 0)));
            }
        }
    return FTK_OK;
}

/* Loads adapter i's tensors from st, named `name` there (its own adapter_name). */
static ftk_status load_modules(struct ftk_peft *p, struct fusion *S, int i, const struct ftk_st_model *st, const char *where,
                               const char *name, size_t *count)
{
    for (int l = 0; l < S->L; l++)
        for (int loc = 0; loc < 2; loc++)
            for (int k = 0; k < 5 && S->has[l][loc]; k++) {
                int64_t d[2];
                int nd = bn_shape(&S->cfg[i], S->C, k, &d[0], &d[1]);
                if (!nd)
                    continue;
                char tn[256];
                bn_param_name(tn, sizeof tn, l, loc, name, bn_what[k]);
                FTK_TRY(ftk_peft_load_tensor(p, st, where, tn, nd, d[0], d[1], *bn_slot(&S->mod[i][l][loc], k, 0)));
                (*count)++;
            }
    return FTK_OK;
}

/* One stage-1 adapter directory: its bottleneck options into cfg[i]. */
static ftk_status read_dir_config(struct fusion *S, int i, const char *dir)
{
    struct ftk_source *src;
    FTK_TRY(ftk_source_open(dir, &src));
    char *text = NULL, **strs = NULL;
    size_t len;
    struct ftk_kv *kv = NULL;
    cJSON *root = NULL;
    ftk_status s = ftk_source_read(src, "adapter_config.json", &text, &len);
    if (s == FTK_OK && !(root = cJSON_ParseWithLength(text, len)))
        s = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s/adapter_config.json: not valid JSON", dir);
    const cJSON *pt = root ? cJSON_GetObjectItemCaseSensitive(root, "peft_type") : NULL;
    if (s == FTK_OK && !(cJSON_IsString(pt) && !strcmp(pt->valuestring, "BOTTLENECK")))
        s = ftk_error_set(FTK_E_INVALID, __FILE__, __LINE__, "adapters: %s is not a bottleneck adapter (peft_type %s)", dir,
                          cJSON_IsString(pt) ? pt->valuestring : "missing");
    if (s == FTK_OK)
        s = bn_kv_from_json(root, &kv, &strs);
    if (s == FTK_OK)
        s = bn_check_keys(kv, "adapters", bn_keys, bn_file_keys, NULL);
    if (s == FTK_OK)
        s = bn_config_parse(kv, S->C, S->L, &S->cfg[i]);
    bn_kv_free(kv, strs);
    cJSON_Delete(root);
    free(text);
    ftk_source_close(src);
    if (s != FTK_OK)
        return ftk_error_wrap(s, "adapters: %s", dir);
    return FTK_OK;
}

static ftk_status fusion_flags(struct fusion *S, const struct ftk_kv *o)
{
    const char *pre = ftk_kv_get(o, "fusion_config");
    pre = pre ? pre : "dynamic";
    FTK_FAIL_IF(strcmp(pre, "dynamic") && strcmp(pre, "static"), FTK_E_INVALID,
                "fusion_config=%s: expected dynamic (query, key, value) or static (no value)", pre);
    snprintf(S->preset, sizeof S->preset, "%s", pre);
    int dyn = pre[0] == 'd';
    FTK_TRY(ftk_kv_bool(o, "query", 1, &S->query));
    FTK_TRY(ftk_kv_bool(o, "key", 1, &S->key));
    FTK_TRY(ftk_kv_bool(o, "value", dyn, &S->value));
    FTK_FAIL_IF(!S->query && !S->key && !S->value, FTK_E_UNSUPPORTED, "query, key and value all false is not supported");
    FTK_TRY(ftk_kv_bool(o, "query_before_ln", 0, &S->query_before_ln));
    FTK_TRY(ftk_kv_bool(o, "residual_before", 0, &S->residual_before));
    /* with a bias-free value matrix, mixing before or after it is the same number */
    FTK_TRY(ftk_kv_bool(o, "value_before_softmax", 1, &S->value_before_softmax));
    FTK_TRY(ftk_kv_bool(o, "value_initialized", dyn, &S->value_init));
    FTK_TRY(ftk_kv_bool(o, "regularization", dyn, &S->regularization));
    FTK_TRY(bn_fixed_bool(o, "temperature", 0, " (adapters anneals it once per forward call: not reproducible)"));
    double dp;
    FTK_TRY(ftk_kv_double(o, "dropout_prob", 0.0, &dp));
    FTK_FAIL_IF(dp != 0, FTK_E_UNSUPPORTED, "dropout_prob=%g (dropout on the fusion scores) is not supported", dp);
    FTK_TRY(ftk_kv_int(o, "adapter_drop_layers", 0, &S->drop_layers));
    FTK_FAIL_IF(S->drop_layers < 0 || S->drop_layers > S->L, FTK_E_INVALID, "adapter_drop_layers=%lld must be in [0, %lld]",
                (long long)S->drop_layers, (long long)S->L);
    return FTK_OK;
}

static ftk_status fu_init(struct ftk_peft *p, const struct ftk_kv *o)
{
    struct fusion *S = ftk_peft_priv(p);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    FTK_FAIL_IF(strcmp(be->name, "cpu"), FTK_E_UNSUPPORTED, "AdapterFusion on the %s backend is not implemented yet", be->name);
    const struct ftk_model_config *mc = ftk_peft_config(p);
    S->C = mc->C;
    S->L = mc->L;
    FTK_FAIL_IF(S->L > BN_MAX_LAYERS, FTK_E_UNSUPPORTED, "more than %d layers", BN_MAX_LAYERS);
    FTK_TRY(bn_check_keys(o, "adapter_fusion", fu_keys, bn_file_keys, NULL));
    FTK_TRY(fusion_flags(S, o));

    /* the adapters: directories (stage 2 starts) or the saved configs (a saved fusion) */
    const char *dirs = ftk_kv_get(o, "adapters"), *cfgs = ftk_kv_get(o, "adapter_configs"), *names = ftk_kv_get(o, "adapter_names");
    FTK_FAIL_IF(!dirs && !cfgs, FTK_E_INVALID, "adapter_fusion needs adapters=DIR1,DIR2,... (trained bottleneck adapters)");
    char dirv[FU_MAX][1024];
    char buf[8192];
    if (dirs) {
        snprintf(buf, sizeof buf, "%s", dirs);
        for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            FTK_FAIL_IF(S->n == FU_MAX, FTK_E_UNSUPPORTED, "adapters: more than %d", FU_MAX);
            snprintf(dirv[S->n], sizeof dirv[0], "%s", t);
            base_name(t, S->names[S->n], sizeof S->names[0]);
            S->n++;
        }
    }
    if (names) {
        snprintf(buf, sizeof buf, "%s", names);
        int k = 0;
        for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save), k++) {
            FTK_FAIL_IF(k == FU_MAX, FTK_E_UNSUPPORTED, "adapter_names: more than %d", FU_MAX);
            FTK_FAIL_IF(!*t || strlen(t) >= sizeof S->names[0] || strpbrk(t, "., /\""), FTK_E_INVALID,
                        "adapter_names: \"%s\": no '.', ',', '/', '\"' or space", t);
            snprintf(S->names[k], sizeof S->names[0], "%s", t);
        }
        FTK_FAIL_IF(dirs && k != S->n, FTK_E_INVALID, "adapter_names has %d names for %d adapters", k, S->n);
        if (!dirs)
            S->n = k;
    }
    FTK_FAIL_IF(S->n < 1, FTK_E_INVALID, "adapter_fusion: no adapters");
    for (int i = 0; i < S->n; i++)
        for (int j = 0; j < i; j++)
            FTK_FAIL_IF(!strcmp(S->names[i], S->names[j]), FTK_E_INVALID,
                        "two adapters are named \"%s\" (directories' basenames): give adapter_names=", S->names[i]);
    if (dirs) {
        for (int i = 0; i < S->n; i++)
            FTK_TRY(read_dir_config(S, i, dirv[i]));
    } else {
        cJSON *root = cJSON_Parse(cfgs);
        FTK_FAIL_IF(!cJSON_IsObject(root), FTK_E_FORMAT, "adapter_configs: not a JSON object");
        ftk_status s = FTK_OK;
        for (int i = 0; i < S->n && s == FTK_OK; i++) {
            const cJSON *c = cJSON_GetObjectItemCaseSensitive(root, S->names[i]);
            struct ftk_kv *kv = NULL;
            char **strs = NULL;
            if (!cJSON_IsObject(c))
                s = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "adapter_configs lacks adapter \"%s\"", S->names[i]);
            if (s == FTK_OK)
                s = bn_kv_from_json(c, &kv, &strs);
            if (s == FTK_OK)
                s = bn_check_keys(kv, "adapter_configs", bn_keys, bn_file_keys, NULL);
            if (s == FTK_OK)
                s = bn_config_parse(kv, S->C, S->L, &S->cfg[i]);
            bn_kv_free(kv, strs);
        }
        cJSON_Delete(root);
        FTK_TRY(s);
    }
    snprintf(S->fname, sizeof S->fname, "%s", S->names[0]);
    for (int i = 1; i < S->n; i++)
        snprintf(S->fname + strlen(S->fname), sizeof S->fname - strlen(S->fname), ",%s", S->names[i]);

    /* the adapters must agree on what fusion mixes */
    for (int i = 0; i < S->n; i++) {
        const struct bn_config *c = &S->cfg[i];
        FTK_FAIL_IF(c->parallel, FTK_E_UNSUPPORTED, "adapter \"%s\" is a parallel adapter: AdapterFusion of parallel adapters "
                    "is not supported", S->names[i]);
        FTK_FAIL_IF(c->ln_before_orig != S->cfg[0].ln_before_orig, FTK_E_UNSUPPORTED,
                    "adapters \"%s\" and \"%s\" read different inputs (original_ln_before): they cannot be fused", S->names[0],
                    S->names[i]);
        S->msum += c->m;
        S->mmax = c->m > S->mmax ? c->m : S->mmax;
    }
    S->h_resid = S->cfg[0].ln_before_orig;
    int any = 0;
    for (int l = 0; l < S->L; l++)
        for (int loc = 0; loc < 2; loc++) {
            int cnt = 0;
            for (int i = 0; i < S->n; i++)
                cnt += S->cfg[i].loc[loc] && bn_layer_has(&S->cfg[i], l);
            FTK_FAIL_IF(cnt && cnt < S->n, FTK_E_UNSUPPORTED,
                        "the adapters differ at layer %d, %s: AdapterFusion needs every adapter at each place it fuses", l,
                        loc ? "after the MLP" : "after the attention");
            S->has[l][loc] = cnt == S->n && l >= S->drop_layers;
            any |= S->has[l][loc];
        }
    FTK_FAIL_IF(!any, FTK_E_INVALID, "adapter_fusion: no layer to fuse at (adapter_drop_layers=%lld)", (long long)S->drop_layers);

    for (int i = 0; i < S->n; i++)
        FTK_TRY(alloc_modules(S, be, ctx, i));
    for (int i = 0; dirs && i < S->n; i++) {   /* stage-1 weights, by their own adapter_name */
        struct ftk_source *src;
        struct ftk_st_model *st;
        FTK_TRY(ftk_source_open(dirv[i], &src));
        ftk_status s = ftk_st_model_open(src, "adapter_model", &st);
        size_t count = 0;
        if (s == FTK_OK) {
            s = load_modules(p, S, i, st, dirv[i], S->cfg[i].name, &count);
            ftk_st_model_close(st);
        }
        ftk_source_close(src);
        FTK_TRY(s);
    }
    for (int i = 0; i < S->n; i++)   /* inside the fusion each adapter goes by its fusion name */
        snprintf(S->cfg[i].name, sizeof S->cfg[i].name, "%s", S->names[i]);

    uint64_t seed = ftk_peft_seed(p);
    int64_t C = S->C;
    for (int l = 0; l < S->L; l++)
        for (int loc = 0; loc < 2; loc++) {
            if (!S->has[l][loc])
                continue;
            struct fu_site *f = &S->site[l][loc];
            struct { const char *what; int on, bias; float **w, **g, **b, **gb; } t[3] = {
                {"query", S->query, 1, &f->Wq, &f->gWq, &f->bq, &f->gbq},
                {"key", S->key, 1, &f->Wk, &f->gWk, &f->bk, &f->gbk},
                {"value", S->value, 0, &f->Wv, &f->gWv, NULL, NULL}};
            for (int j = 0; j < 3; j++) {
                if (!t[j].on)
                    continue;
                char name[700];
                int64_t d[2] = {C, C};
                snprintf(name, sizeof name, "model.layers.%d.%s_adapters.adapter_fusion_layer.%s.%s.weight", l,
                         loc ? "output" : "attention", S->fname, t[j].what);
                FTK_TRY(ftk_peft_add_param(p, name, 2, d, 1, t[j].w, t[j].g));
                float *host = malloc((size_t)(C * C) * sizeof *host);
                FTK_FAIL_IF(!host, FTK_E_NOMEM, "out of memory");
                for (int64_t k = 0; k < C * C; k++)
                    host[k] = j == 2 && S->value_init ? (k / C == k % C ? 1.0f : 1e-6f)
                                                      : (float)(0.02 * bn_normal(bn_key(seed, (uint64_t)l, (uint64_t)(loc * 4 + j), (uint64_t)k)));
                ftk_status s = be->to_device(ctx, *t[j].w, host, (size_t)(C * C) * sizeof *host);
                free(host);
                FTK_TRY(s);
                if (t[j].bias) {
                    snprintf(name, sizeof name, "model.layers.%d.%s_adapters.adapter_fusion_layer.%s.%s.bias", l,
                             loc ? "output" : "attention", S->fname, t[j].what);
                    FTK_TRY(ftk_peft_add_param(p, name, 1, d, 0, t[j].b, t[j].gb));
                }
            }
        }
    return FTK_OK;
}

/* The fusion's intermediates for one location, recomputed from h0 (and resid): */
struct fu_work {
    float *u, *Y, *Z, *A, *K, *Q, *P, *mix, *out;   /* Y, K: n x (N,C); Z, A: (N, sum m) */
    float *gout, *gmix, *gY, *gK, *gQ, *gqin, *gu, *gup, *ga;
    const float *qin;
};

static ftk_status work(struct fusion *S, const struct ftk_backend *be, void *ctx, int64_t N, struct fu_work *w)
{
    int64_t C = S->C, n = S->n;
    size_t need = (size_t)(N * (C * (3 * n + 11) + 2 * S->msum + n + S->mmax));
    FTK_TRY(bn_grow(be, ctx, &S->scr, &S->scr_cap, need));
    float *q = S->scr;
    w->u = q, q += N * C;
    w->Y = q, q += n * N * C;
    w->Z = q, q += N * S->msum;
    w->A = q, q += N * S->msum;
    w->K = q, q += n * N * C;
    w->Q = q, q += N * C;
    w->P = q, q += N * n;
    w->mix = q, q += N * C;
    w->out = q, q += N * C;
    w->gout = q, q += N * C;
    w->gmix = q, q += N * C;
    w->gY = q, q += n * N * C;
    w->gK = q, q += N * C;
    w->gQ = q, q += N * C;
    w->gqin = q, q += N * C;
    w->gu = q, q += N * C;
    w->gup = q, q += N * C;
    w->ga = q;
    return FTK_OK;
}

/* Forward of location (l, loc) into w: the adapters' outputs, the scores, the mix and out. */
static ftk_status fu_compute(struct fusion *S, const struct ftk_backend *be, void *ctx, int l, int loc, int64_t N,
                             const float *h0, const float *resid, struct fu_work *w)
{
    int64_t C = S->C, n = S->n;
    const struct fu_site *f = &S->site[l][loc];
    if (S->h_resid) {
        FTK_FAIL_IF(!resid, FTK_E_INVALID, "adapter_fusion: the core gave no residual stream (libftk too old?)");
        FTK_TRY(be->add(ctx, w->u, h0, resid, N * C));
    } else
        FTK_TRY(be->copy(ctx, w->u, h0, (size_t)(N * C) * sizeof(float)));
    int64_t off = 0;
    for (int a = 0; a < n; a++) {
        FTK_TRY(bn_module_forward(be, ctx, &S->cfg[a], &S->mod[a][l][loc], N, C, w->u, w->Z + N * off, w->A + N * off,
                                  w->Y + a * N * C));
        off += S->cfg[a].m;
    }
    w->qin = S->query_before_ln ? h0 : w->u;
    if (S->query)
        FTK_TRY(be->linear_forward(ctx, w->Q, w->qin, f->Wq, f->bq, N, C, C));
    else
        FTK_TRY(be->copy(ctx, w->Q, w->qin, (size_t)(N * C) * sizeof(float)));
    for (int a = 0; a < n; a++) {
        if (S->key)
            FTK_TRY(be->linear_forward(ctx, w->K + a * N * C, w->Y + a * N * C, f->Wk, f->bk, N, C, C));
        else
            FTK_TRY(be->copy(ctx, w->K + a * N * C, w->Y + a * N * C, (size_t)(N * C) * sizeof(float)));
    }
    for (int64_t r = 0; r < N; r++) {   /* host: scores, softmax over the adapters, the mix */
        double sc[FU_MAX], mx = -INFINITY, sum = 0;
        for (int a = 0; a < n; a++) {
            double d = 0;
            for (int64_t c = 0; c < C; c++)
                d += (double)w->Q[r * C + c] * w->K[(a * N + r) * C + c];
            sc[a] = d;
            mx = d > mx ? d : mx;
        }
        for (int a = 0; a < n; a++)
            sum += (sc[a] = exp(sc[a] - mx));
        for (int a = 0; a < n; a++)
            w->P[r * n + a] = (float)(sc[a] / sum);
        for (int64_t c = 0; c < C; c++) {
            double v = S->residual_before ? h0[r * C + c] : 0;
            for (int a = 0; a < n; a++)
                v += (double)w->P[r * n + a] * w->Y[(a * N + r) * C + c];
            w->mix[r * C + c] = (float)v;
        }
    }
    if (S->value)
        return be->linear_forward(ctx, w->out, w->mix, f->Wv, NULL, N, C, C);
    return be->copy(ctx, w->out, w->mix, (size_t)(N * C) * sizeof(float));
}

static ftk_status fu_fwd(struct ftk_peft *p, const struct ftk_sublayer *s, float *h, const float *x, int train)
{
    (void)x;
    struct fusion *S = ftk_peft_priv(p);
    int l = s->layer, loc = s->kind == FTK_SUB_ATTN ? BN_ATTN : BN_MLP;
    if (l < 0 || l >= S->L || !S->has[l][loc])
        return FTK_OK;
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t N = s->B * s->T, C = S->C;
    float *h0;
    if (train) {
        if (N != S->keep_N) {
            FTK_TRY(bn_grow(be, ctx, &S->keep, &S->keep_cap, (size_t)(N * C * 2 * S->L)));
            S->keep_N = N;
        }
        h0 = S->keep + (size_t)(l * 2 + loc) * (size_t)(N * C);
    } else {
        FTK_TRY(bn_grow(be, ctx, &S->infer, &S->infer_cap, (size_t)(N * C)));
        h0 = S->infer;
    }
    FTK_TRY(be->copy(ctx, h0, h, (size_t)(N * C) * sizeof(float)));
    struct fu_work w;
    FTK_TRY(work(S, be, ctx, N, &w));
    FTK_TRY(fu_compute(S, be, ctx, l, loc, N, h0, s->resid, &w));
    if (S->residual_before)   /* h' = out: the mix holds h */
        return be->copy(ctx, h, w.out, (size_t)(N * C) * sizeof(float));
    return be->axpy(ctx, h, w.out, N * C, 1.0f);
}

static ftk_status fu_bwd(struct ftk_peft *p, const struct ftk_sublayer *s, float *dh, float *dx, const float *dy,
                         const float *x)
{
    (void)dx, (void)x;
    struct fusion *S = ftk_peft_priv(p);
    int l = s->layer, loc = s->kind == FTK_SUB_ATTN ? BN_ATTN : BN_MLP;
    if (l < 0 || l >= S->L || !S->has[l][loc])
        return FTK_OK;
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t N = s->B * s->T, C = S->C, n = S->n;
    FTK_FAIL_IF(N != S->keep_N, FTK_E_INVALID, "adapter_fusion: backward of %lld rows after a train forward of %lld",
                (long long)N, (long long)S->keep_N);
    const float *h0 = S->keep + (size_t)(l * 2 + loc) * (size_t)(N * C);
    struct fu_work w;
    FTK_TRY(work(S, be, ctx, N, &w));
    FTK_TRY(fu_compute(S, be, ctx, l, loc, N, h0, s->resid, &w));
    const struct fu_site *f = &S->site[l][loc];
    size_t NC = (size_t)(N * C) * sizeof(float);
    FTK_TRY(be->copy(ctx, w.gout, dy, NC));   /* dy is read once, here: dresid may be the same memory */
    const float *gmix = w.gout;
    if (S->value) {
        FTK_TRY(be->zero(ctx, w.gmix, NC));
        FTK_TRY(be->linear_backward(ctx, w.gmix, f->gWv, NULL, w.gout, w.mix, f->Wv, N, C, C));
        gmix = w.gmix;
    }
    if (S->residual_before) {   /* h' = out, and the mix holds h: dh = gmix + (through u, q) */
        FTK_TRY(be->axpy(ctx, dh, gmix, N * C, 1.0f));
        FTK_TRY(be->axpy(ctx, dh, w.gout, N * C, -1.0f));
    }
    /* host: through the mix and the softmax; gY_a = p_a gmix + (key path), gQ = sum_a gS_a K_a */
    FTK_TRY(be->zero(ctx, w.gQ, NC));
    double *gS = malloc((size_t)(N * n) * sizeof *gS);
    FTK_FAIL_IF(!gS, FTK_E_NOMEM, "out of memory");
    for (int64_t r = 0; r < N; r++) {
        double gp[FU_MAX], dot = 0;
        for (int a = 0; a < n; a++) {
            double d = 0;
            for (int64_t c = 0; c < C; c++)
                d += (double)gmix[r * C + c] * w.Y[(a * N + r) * C + c];
            gp[a] = d;
            dot += w.P[r * n + a] * d;
        }
        for (int a = 0; a < n; a++) {
            double pa = w.P[r * n + a], g = pa * (gp[a] - dot);
            gS[r * n + a] = g;
            for (int64_t c = 0; c < C; c++) {
                w.gY[(a * N + r) * C + c] = (float)(pa * gmix[r * C + c]);
                w.gQ[r * C + c] += (float)(g * w.K[(a * N + r) * C + c]);
            }
        }
    }
    ftk_status st = FTK_OK;
    for (int a = 0; a < n && st == FTK_OK; a++) {   /* gK_a = gS_a Q, into adapter a's output gradient */
        for (int64_t r = 0; r < N; r++)
            for (int64_t c = 0; c < C; c++)
                w.gK[r * C + c] = (float)(gS[r * n + a] * w.Q[r * C + c]);
        if (S->key)
            st = be->linear_backward(ctx, w.gY + a * N * C, f->gWk, f->gbk, w.gK, w.Y + a * N * C, f->Wk, N, C, C);
        else
            st = be->axpy(ctx, w.gY + a * N * C, w.gK, N * C, 1.0f);
    }
    free(gS);
    FTK_TRY(st);
    const float *gq = w.gQ;
    if (S->query) {
        FTK_TRY(be->zero(ctx, w.gqin, NC));
        FTK_TRY(be->linear_backward(ctx, w.gqin, f->gWq, f->gbq, w.gQ, w.qin, f->Wq, N, C, C));
        gq = w.gqin;
    }
    FTK_TRY(be->zero(ctx, w.gu, NC));
    int64_t off = 0;
    for (int a = 0; a < n; a++) {   /* through the frozen adapters to their input */
        FTK_TRY(bn_module_backward(be, ctx, &S->cfg[a], &S->mod[a][l][loc], N, C, w.u, w.Z + N * off, w.A + N * off,
                                   w.gY + a * N * C, w.gu, w.gup, w.ga));
        off += S->cfg[a].m;
    }
    FTK_TRY(be->axpy(ctx, S->query_before_ln ? dh : w.gu, gq, N * C, 1.0f));
    FTK_TRY(be->axpy(ctx, dh, w.gu, N * C, 1.0f));
    if (S->h_resid) {
        FTK_FAIL_IF(!s->dresid, FTK_E_INVALID, "adapter_fusion: the core gave no residual gradient (libftk too old?)");
        FTK_TRY(be->axpy(ctx, s->dresid, w.gu, N * C, 1.0f));
    }
    return FTK_OK;
}

/* regularization: loss += 0.01 sum ||I - Wv||^2 over locations, dWv += 0.02 (Wv - I). */
static ftk_status fu_before_update(struct ftk_peft *p, double *loss)
{
    struct fusion *S = ftk_peft_priv(p);
    if (!S->regularization || !S->value)
        return FTK_OK;
    int64_t C = S->C;
    double reg = 0;
    for (int l = 0; l < S->L; l++)
        for (int loc = 0; loc < 2; loc++) {
            if (!S->has[l][loc])
                continue;
            struct fu_site *f = &S->site[l][loc];
            for (int64_t k = 0; k < C * C; k++) {   /* host: the CPU backend */
                double d = (double)f->Wv[k] - (k / C == k % C ? 1.0 : 0.0);
                reg += 0.01 * d * d;
                f->gWv[k] += (float)(0.02 * d);
            }
        }
    *loss += reg;
    return FTK_OK;
}

/* ---- files -------------------------------------------------------------------------------- */

/* Fusion tensor j (0..4: query.weight, query.bias, key.weight, key.bias, value.weight) of a site. */
static float *fu_tensor(struct fusion *S, struct fu_site *f, int j, char *name, size_t n, int l, int loc, int *nd)
{
    static const char *what[5] = {"query.weight", "query.bias", "key.weight", "key.bias", "value.weight"};
    int on[5] = {S->query, S->query, S->key, S->key, S->value};
    float *w[5] = {f->Wq, f->bq, f->Wk, f->bk, f->Wv};
    if (!on[j])
        return NULL;
    snprintf(name, n, "model.layers.%d.%s_adapters.adapter_fusion_layer.%s.%s", l, loc ? "output" : "attention", S->fname,
             what[j]);
    *nd = j == 1 || j == 3 ? 1 : 2;
    return w[j];
}

static ftk_status fu_save(struct ftk_peft *p, const char *dir, const char *base_path)
{
    struct fusion *S = ftk_peft_priv(p);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    struct ftk_message msg;
    ftk_message_init(&msg);
    ftk_status st = ftk_message_set_meta(&msg, "format", "pt");
    int64_t C = S->C;
    for (int l = 0; l < S->L && st == FTK_OK; l++)
        for (int loc = 0; loc < 2 && st == FTK_OK; loc++) {
            if (!S->has[l][loc])
                continue;
            for (int i = 0; i < S->n && st == FTK_OK; i++)
                for (int k = 0; k < 5 && st == FTK_OK; k++) {
                    int64_t d[2];
                    int nd = bn_shape(&S->cfg[i], C, k, &d[0], &d[1]);
                    if (!nd)
                        continue;
                    char name[256];
                    struct ftk_tensor *t;
                    bn_param_name(name, sizeof name, l, loc, S->names[i], bn_what[k]);
                    if ((st = ftk_message_add(&msg, name, FTK_DTYPE_F32, nd, d, NULL, &t)) == FTK_OK)
                        st = be->to_host(ctx, t->data, *bn_slot(&S->mod[i][l][loc], k, 0), t->nbytes);
                }
            for (int j = 0; j < 5 && st == FTK_OK; j++) {
                char name[700];
                int nd;
                float *w = fu_tensor(S, &S->site[l][loc], j, name, sizeof name, l, loc, &nd);
                int64_t d[2] = {C, C};
                struct ftk_tensor *t;
                if (w && (st = ftk_message_add(&msg, name, FTK_DTYPE_F32, nd, d, NULL, &t)) == FTK_OK)
                    st = be->to_host(ctx, t->data, w, t->nbytes);
            }
        }
    char path[4200];
    snprintf(path, sizeof path, "%.4000s/adapter_model.safetensors", dir);
    if (st == FTK_OK)
        st = ftk_st_write(path, &msg);
    ftk_message_free(&msg);
    FTK_TRY(st);
    cJSON *c = cJSON_CreateObject();
    cJSON_AddStringToObject(c, "peft_type", "ADAPTER_FUSION");
    cJSON_AddStringToObject(c, "task_type", "CAUSAL_LM");
    if (base_path)
        cJSON_AddStringToObject(c, "base_model_name_or_path", base_path);
    else
        cJSON_AddNullToObject(c, "base_model_name_or_path");
    cJSON_AddStringToObject(c, "fusion_config", S->preset);
    cJSON_AddBoolToObject(c, "query", S->query);
    cJSON_AddBoolToObject(c, "key", S->key);
    cJSON_AddBoolToObject(c, "value", S->value);
    cJSON_AddBoolToObject(c, "query_before_ln", S->query_before_ln);
    cJSON_AddBoolToObject(c, "residual_before", S->residual_before);
    cJSON_AddBoolToObject(c, "value_before_softmax", S->value_before_softmax);
    cJSON_AddBoolToObject(c, "value_initialized", S->value_init);
    cJSON_AddBoolToObject(c, "regularization", S->regularization);
    cJSON_AddBoolToObject(c, "temperature", 0);
    cJSON_AddNumberToObject(c, "dropout_prob", 0);
    cJSON_AddNumberToObject(c, "adapter_drop_layers", (double)S->drop_layers);
    cJSON *nm = cJSON_AddArrayToObject(c, "adapter_names"), *cf = cJSON_AddObjectToObject(c, "adapter_configs");
    for (int i = 0; i < S->n; i++) {
        cJSON_AddItemToArray(nm, cJSON_CreateString(S->names[i]));
        cJSON *one = cJSON_AddObjectToObject(cf, S->names[i]);
        bn_config_json(&S->cfg[i], one);
    }
    cJSON_AddStringToObject(c, "format", "ftk AdapterFusion 1: the frozen adapters' and the fusion's tensors, named as "
                                         "adapter-transformers' Llama state dict");
    char *text = cJSON_Print(c);
    cJSON_Delete(c);
    FTK_FAIL_IF(!text, FTK_E_NOMEM, "out of memory");
    st = ftk_peft_write_config(dir, text);
    free(text);
    return st;
}

static ftk_status fu_load(struct ftk_peft *p, struct ftk_source *src)
{
    struct fusion *S = ftk_peft_priv(p);
    struct ftk_st_model *st;
    FTK_TRY(ftk_st_model_open(src, "adapter_model", &st));
    ftk_status s = FTK_OK;
    size_t count = 0;
    const char *where = ftk_source_path(src);
    for (int i = 0; i < S->n && s == FTK_OK; i++)
        s = load_modules(p, S, i, st, where, S->names[i], &count);
    for (int l = 0; l < S->L && s == FTK_OK; l++)
        for (int loc = 0; loc < 2 && s == FTK_OK; loc++)
            for (int j = 0; j < 5 && S->has[l][loc] && s == FTK_OK; j++) {
                char name[700];
                int nd;
                float *w = fu_tensor(S, &S->site[l][loc], j, name, sizeof name, l, loc, &nd);
                if (!w)
                    continue;
                s = ftk_peft_load_tensor(p, st, where, name, nd, S->C, nd > 1 ? S->C : 1, w);
                count++;
            }
    if (s == FTK_OK && count != ftk_st_model_count(st))
        s = ftk_error_set(FTK_E_MISMATCH, __FILE__, __LINE__, "%s: adapter has %zu tensors, these options make %zu", where,
                          ftk_st_model_count(st), count);
    ftk_st_model_close(st);
    return s;
}

static void fu_release(struct ftk_peft *p)
{
    struct fusion *S = ftk_peft_priv(p);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    for (int i = 0; i < S->n; i++)
        for (int l = 0; l < S->L; l++)
            for (int loc = 0; loc < 2; loc++)
                for (int k = 0; k < 5; k++)
                    be->free(ctx, *bn_slot(&S->mod[i][l][loc], k, 0));
    be->free(ctx, S->keep);
    be->free(ctx, S->infer);
    be->free(ctx, S->scr);
}

FTK_EXPORT const struct ftk_peft_plugin ftk_peft_plugin = {
    .abi_version = FTK_PEFT_ABI,
    .struct_size = sizeof(struct ftk_peft_plugin),
    .name = "adapter_fusion",
    .priv_size = sizeof(struct fusion),
    .init = fu_init,
    .save = fu_save,
    .load = fu_load,
    .release = fu_release,
    .before_update = fu_before_update,
    .sublayer_forward = fu_fwd,
    .sublayer_backward = fu_bwd,
};
