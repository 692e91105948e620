/* plugins/peft/prompt_tuning.c: prompt tuning (Lester, Al-Rfou, Constant 2021, "The Power of
 * Scale for Parameter-Efficient Prompt Tuning") as HuggingFace peft's PROMPT_TUNING does it for a
 * causal LM: P trainable embeddings e (P,C) are put in front of every row's token embeddings
 * (the `embed` hook: the core runs P + T positions, the virtual ones unlabelled, at positions
 * 0..P-1; transformers does the same when peft drops position_ids), and only e trains.
 *
 * prompt_tuning_init (peft PromptEmbedding):
 *   RANDOM        e ~ N(0,1), nn.Embedding's init (ftk's seeded draws, not torch's stream)
 *   TEXT          rows of model.embed_tokens for tokenizer(prompt_tuning_init_text) with its
 *                 special tokens (peft calls tokenizer(text)), the ids truncated to P or repeated
 *                 (ceil(P/n) times, then cut to P). tokenizer_name_or_path is read by ftk's
 *                 tokenizer: a local directory with tokenizer.json (the model's) or the file.
 *   SAMPLE_VOCAB  rows of model.embed_tokens for P ids drawn uniformly from [0, V) (seeded).
 * Loading an adapter (options with peft_type) skips the init, as peft does in inference mode.
 * Weight decay applies to e (HF Trainer decays every non-bias, non-norm weight).
 *
 * Saved as peft: adapter_model.safetensors {"prompt_embeddings": F32 (P,C)} and
 * adapter_config.json with peft_type PROMPT_TUNING. */
#include "ftk/tokenizer.h"
#include "virtual_tokens.h"

struct prompt_tuning {
    struct vt_common v;
    float *e, *g;              /* (P,C) the prompt and its gradient, backend memory */
    char init[16];
    char text[1024], tokenizer[1024];
};

/* TEXT: the ids of `text` (special tokens included), truncated or repeated to P. */
static ftk_status text_ids(struct prompt_tuning *S, int64_t V, int32_t *out)
{
    struct ftk_tokenizer *tk = NULL;
    ftk_status s = ftk_tokenizer_load_path(S->tokenizer, &tk);
    if (s != FTK_OK)
        return ftk_error_wrap(s, "prompt_tuning_init=TEXT: tokenizer_name_or_path \"%s\" (ftk reads a local directory "
                              "holding tokenizer.json, e.g. the model's, or the file itself)", S->tokenizer);
    struct ftk_ids ids = {0};
    s = ftk_tokenizer_encode(tk, S->text, strlen(S->text), 1, &ids);
    ftk_tokenizer_free(tk);
    if (s == FTK_OK && ids.n == 0)
        s = ftk_error_set(FTK_E_INVALID, __FILE__, __LINE__, "prompt_tuning_init_text \"%s\" has no tokens", S->text);
    for (int64_t k = 0; s == FTK_OK && k < S->v.P; k++) {
        out[k] = ids.ids[(size_t)k % ids.n];
        if (out[k] < 0 || out[k] >= V)
            s = ftk_error_set(FTK_E_MISMATCH, __FILE__, __LINE__,
                              "prompt_tuning_init_text: token id %d outside the model's vocabulary of %lld (tokenizer of "
                              "another model?)", out[k], (long long)V);
    }
    ftk_ids_free(&ids);
    return s;
}

static ftk_status pt_init(struct ftk_peft *p, const struct ftk_kv *o)
{
    struct prompt_tuning *S = ftk_peft_priv(p);
    const struct ftk_model_config *cfg = ftk_peft_config(p);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    static const char *const keys[] = {"prompt_tuning_init", "prompt_tuning_init_text", "tokenizer_name_or_path",
                                       "tokenizer_kwargs", NULL};
    FTK_TRY(vt_parse(p, o, "PROMPT_TUNING", keys, &S->v));
    int64_t P = S->v.P, C = S->v.C;
    const char *init = ftk_kv_get(o, "prompt_tuning_init"), *text = ftk_kv_get(o, "prompt_tuning_init_text"),
               *tok = ftk_kv_get(o, "tokenizer_name_or_path"), *kw = ftk_kv_get(o, "tokenizer_kwargs");
    snprintf(S->init, sizeof S->init, "%s", init ? init : "RANDOM");
    FTK_FAIL_IF(strcmp(S->init, "RANDOM") && strcmp(S->init, "TEXT") && strcmp(S->init, "SAMPLE_VOCAB"), FTK_E_UNSUPPORTED,
                "prompt_tuning_init=%s (RANDOM, TEXT or SAMPLE_VOCAB)", S->init);
    int is_text = !strcmp(S->init, "TEXT");
    FTK_FAIL_IF(is_text && !text, FTK_E_INVALID, "prompt_tuning_init=TEXT needs prompt_tuning_init_text");
    FTK_FAIL_IF(is_text && (!tok || !*tok), FTK_E_INVALID,
                "prompt_tuning_init=TEXT needs tokenizer_name_or_path (a directory with tokenizer.json, e.g. the model's)");
    FTK_FAIL_IF(kw && strcmp(kw, "{}") && !S->v.from_adapter, FTK_E_UNSUPPORTED,
                "tokenizer_kwargs (%s): ftk reads tokenizer.json as it is", kw);
    FTK_FAIL_IF(text && strlen(text) >= sizeof S->text, FTK_E_INVALID, "prompt_tuning_init_text longer than %zu bytes",
                sizeof S->text - 1);
    FTK_FAIL_IF(tok && strlen(tok) >= sizeof S->tokenizer, FTK_E_INVALID, "tokenizer_name_or_path too long");
    snprintf(S->text, sizeof S->text, "%s", text ? text : "");
    snprintf(S->tokenizer, sizeof S->tokenizer, "%s", tok ? tok : "");

    int64_t shape[2] = {P, C};
    FTK_TRY(ftk_peft_add_param(p, "prompt_embeddings", 2, shape, 1, &S->e, &S->g));
    if (S->v.from_adapter)   /* the adapter's weights follow (load) */
        return FTK_OK;
    if (!strcmp(S->init, "RANDOM")) {
        float *h = malloc((size_t)(P * C) * sizeof *h);
        FTK_FAIL_IF(!h, FTK_E_NOMEM, "out of memory");
        for (int64_t i = 0; i < P * C; i++)
            h[i] = (float)vt_normal(ftk_peft_seed(p), 1, (uint64_t)i);
        ftk_status s = vt_upload(p, S->e, h, P * C);
        free(h);
        return s;
    }
    int64_t nv = 0;
    const float *wte = ftk_peft_base_weight(p, "model.embed_tokens.weight", &nv);
    FTK_FAIL_IF(!wte || nv != cfg->V * C, FTK_E_INVALID, "the model has no model.embed_tokens.weight of (%lld, %lld)",
                (long long)cfg->V, (long long)C);
    int32_t *ids = malloc((size_t)P * sizeof *ids);
    FTK_FAIL_IF(!ids, FTK_E_NOMEM, "out of memory");
    ftk_status s = FTK_OK;
    if (is_text)
        s = text_ids(S, cfg->V, ids);
    else   /* SAMPLE_VOCAB: torch.randint(0, V) in peft */
        for (int64_t k = 0; k < P; k++)
            ids[k] = (int32_t)(vt_mix(vt_mix(ftk_peft_seed(p) ^ 0x5A4D504C45ull) + (uint64_t)k) % (uint64_t)cfg->V);
    for (int64_t k = 0; s == FTK_OK && k < P; k++)
        s = be->copy(ctx, S->e + k * C, wte + (int64_t)ids[k] * C, (size_t)C * sizeof(float));
    free(ids);
    return s;
}

static int64_t pt_n_virtual(struct ftk_peft *p) { return ((struct prompt_tuning *)ftk_peft_priv(p))->v.P; }

static ftk_status pt_embed_forward(struct ftk_peft *p, float *x, int64_t B, int64_t T, int train)
{
    (void)train;
    struct prompt_tuning *S = ftk_peft_priv(p);
    return vt_write(p, &S->v, x, S->e, B, T);
}

static ftk_status pt_embed_backward(struct ftk_peft *p, const float *dx, int64_t B, int64_t T)
{
    struct prompt_tuning *S = ftk_peft_priv(p);
    return vt_grad(p, &S->v, S->g, dx, B, T);
}

static ftk_status pt_save(struct ftk_peft *p, const char *dir, const char *base_path)
{
    struct prompt_tuning *S = ftk_peft_priv(p);
    FTK_TRY(vt_save_prompt(p, &S->v, dir, S->e));
    cJSON *c = vt_config(p, &S->v, "PROMPT_TUNING", base_path);
    FTK_FAIL_IF(!c, FTK_E_NOMEM, "out of memory");
    cJSON_AddStringToObject(c, "prompt_tuning_init", S->init);
    if (S->text[0])
        cJSON_AddStringToObject(c, "prompt_tuning_init_text", S->text);
    else
        cJSON_AddNullToObject(c, "prompt_tuning_init_text");
    cJSON_AddNullToObject(c, "tokenizer_kwargs");
    if (S->tokenizer[0])
        cJSON_AddStringToObject(c, "tokenizer_name_or_path", S->tokenizer);
    else
        cJSON_AddNullToObject(c, "tokenizer_name_or_path");
    return vt_write_config(dir, c);
}

static ftk_status pt_load(struct ftk_peft *p, struct ftk_source *src)
{
    struct prompt_tuning *S = ftk_peft_priv(p);
    struct ftk_st_model *st;
    FTK_TRY(ftk_st_model_open(src, "adapter_model", &st));
    ftk_status s = ftk_peft_load_tensor(p, st, ftk_source_path(src), "prompt_embeddings", 2, S->v.P, S->v.C, S->e);
    if (s == FTK_OK && ftk_st_model_count(st) != 1)
        s = ftk_error_set(FTK_E_MISMATCH, __FILE__, __LINE__, "%s: a prompt tuning adapter holds prompt_embeddings only, this one %zu tensors",
                          ftk_source_path(src), ftk_st_model_count(st));
    ftk_st_model_close(st);
    return s;
}

FTK_EXPORT const struct ftk_peft_plugin ftk_peft_plugin = {
    .abi_version = FTK_PEFT_ABI,
    .struct_size = sizeof(struct ftk_peft_plugin),
    .name = "prompt_tuning",
    .priv_size = sizeof(struct prompt_tuning),
    .init = pt_init,
    .save = pt_save,
    .load = pt_load,
    .n_virtual = pt_n_virtual,
    .embed_forward = pt_embed_forward,
    .embed_backward = pt_embed_backward,
};
