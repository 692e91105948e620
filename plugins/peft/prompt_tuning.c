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
#include "virtual_tokens.h"

struct prompt_tuning {
    struct vt_common v;
    float *e, *g;              /* (P,C) the prompt and its gradient, backend memory */
    struct vt_init in;         /* prompt_tuning_init and what it reads */
};

static ftk_status pt_init(struct ftk_peft *p, const struct ftk_kv *o)
{
    struct prompt_tuning *S = ftk_peft_priv(p);
    static const char *const keys[] = {"prompt_tuning_init", "prompt_tuning_init_text", "tokenizer_name_or_path",
                                       "tokenizer_kwargs", NULL};
    FTK_TRY(vt_parse(p, o, "PROMPT_TUNING", keys, &S->v));
    FTK_TRY(vt_parse_init(o, &S->in));
    const char *kw = ftk_kv_get(o, "tokenizer_kwargs");
    FTK_FAIL_IF(kw && strcmp(kw, "{}") && !S->v.from_adapter, FTK_E_UNSUPPORTED,
                "tokenizer_kwargs (%s): ftk reads tokenizer.json as it is", kw);
    int64_t shape[2] = {S->v.P, S->v.C};
    FTK_TRY(ftk_peft_add_param(p, "prompt_embeddings", 2, shape, 1, &S->e, &S->g));
    if (S->v.from_adapter)   /* the adapter's weights follow (load) */
        return FTK_OK;
    return vt_init_prompt(p, &S->v, &S->in, S->e);
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
    vt_config_init(c, &S->in);
    cJSON_AddNullToObject(c, "tokenizer_kwargs");
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
