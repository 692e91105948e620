/* plugins/peft/warp.c: WARP (Hambardzumyan, Khachatrian, May 2021, "WARP: Word-level
 * Adversarial ReProgramming") on a causal LM: P trainable prompt embeddings e (P,C) in front of
 * every row (the `embed` hook, prompt tuning's module virtual_tokens.h) and a trainable
 * verbalizer v (K,C), one output embedding per class token ids[k] (the `head` hook): the token
 * predicting a label scores class k by x . v[k].
 *
 * mode (the head hook's two modes, libcore/model_head.c):
 *   class  the paper's: log-probs are a softmax over the K class scores x v^T only; every
 *          labelled token must be one of the verbalizer ids (an error names the row and
 *          position of one that is not), and logits outside the K ids are -inf.
 *   full   lm_head with rows ids[k] replaced by v[k], softmax over the whole vocabulary
 *          (generation and unrestricted labels work as with the base model).
 * Options (snake_case; adapter_config.json holds the same keys):
 *   num_virtual_tokens                       P (required)
 *   prompt_tuning_init, prompt_tuning_init_text, tokenizer_name_or_path
 *                                            the prompt's init, as prompt_tuning (RANDOM, TEXT,
 *                                            SAMPLE_VOCAB; TEXT is the paper's WARP_init with a
 *                                            human-readable prompt)
 *   verbalizer_ids=ID,ID,...                 the K class tokens (distinct, in [0,V)), or
 *   verbalizer_words=WORD,WORD,...           words, each encoded alone by the tokenizer of
 *                                            tokenizer_name_or_path (no special tokens) into
 *                                            exactly one token
 *   verbalizer_init=embed_tokens|lm_head     v[k] starts as that matrix's row ids[k]
 *                                            (embed_tokens, the paper's: its MLM head is tied;
 *                                            lm_head: the full mode starts at the base model's
 *                                            head; the same rows when they are tied)
 *   mode=class|full                          (class)
 * Loading an adapter (options with peft_type) skips the inits. Weight decay applies to both.
 *
 * Saved in ftk's own format, shaped like a peft prompt-learning adapter: adapter_model.safetensors
 * {"prompt_embeddings": F32 (P,C), "verbalizer": F32 (K,C)} and adapter_config.json with
 * peft_type WARP, the keys above (verbalizer_ids as a list of numbers). */
#include <errno.h>
#include "virtual_tokens.h"

#define WARP_MAX_CLASSES 65536

struct warp {
    struct vt_common v;
    struct vt_init in;         /* the prompt's init */
    float *e, *ge;             /* (P,C) prompt and its gradient, backend memory */
    float *vb, *gv;            /* (K,C) verbalizer and its gradient, backend memory */
    int64_t K;
    int32_t *ids;              /* (K) host, the class tokens */
    char *words;               /* verbalizer_words as given, or NULL */
    int cls;                   /* 1: class mode */
    int vinit_lm_head;         /* verbalizer_init=lm_head */
};

/* "34,62,7" -> ids; checked: numbers, in [0,V), distinct. */
static ftk_status parse_ids(struct warp *S, const char *list, int64_t V)
{
    int64_t n = 1;
    for (const char *c = list; *c; c++)
        n += *c == ',';
    FTK_FAIL_IF(n > WARP_MAX_CLASSES, FTK_E_INVALID, "verbalizer_ids: %lld ids (at most %d)", (long long)n, WARP_MAX_CLASSES);
    S->ids = malloc((size_t)n * sizeof *S->ids);
    FTK_FAIL_IF(!S->ids, FTK_E_NOMEM, "out of memory");
    const char *c = list;
    for (S->K = 0; S->K < n; S->K++) {
        char *end;
        errno = 0;
        long long x = strtoll(c, &end, 10);
        while (*end == ' ')
            end++;
        FTK_FAIL_IF(end == c || errno || (*end != ',' && *end != '\0'), FTK_E_INVALID,
                    "verbalizer_ids: \"%s\" is not a list of token ids (ID,ID,...)", list);
        FTK_FAIL_IF(x < 0 || x >= V, FTK_E_INVALID, "verbalizer_ids: token id %lld outside the model's vocabulary [0, %lld)", x,
                    (long long)V);
        for (int64_t k = 0; k < S->K; k++)
            FTK_FAIL_IF(S->ids[k] == x, FTK_E_INVALID, "verbalizer_ids: token %lld given twice (classes %lld and %lld)", x,
                        (long long)k, (long long)S->K);
        S->ids[S->K] = (int32_t)x;
        c = *end ? end + 1 : end;
    }
    return FTK_OK;
}

/* verbalizer_words through the tokenizer: each word one token. */
static ftk_status words_to_ids(struct warp *S, const char *words, int64_t V)
{
    FTK_FAIL_IF(!S->in.tokenizer[0], FTK_E_INVALID,
                "verbalizer_words needs tokenizer_name_or_path (a directory with tokenizer.json, e.g. the model's)");
    int64_t n = 1;
    for (const char *c = words; *c; c++)
        n += *c == ',';
    FTK_FAIL_IF(n > WARP_MAX_CLASSES, FTK_E_INVALID, "verbalizer_words: %lld words (at most %d)", (long long)n, WARP_MAX_CLASSES);
    struct ftk_tokenizer *tk = NULL;
    FTK_TRY(vt_tokenizer(S->in.tokenizer, "verbalizer_words", &tk));
    char *list = malloc((size_t)n * 24 + 1);
    ftk_status s = list ? FTK_OK : ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    size_t at = 0;
    const char *w = words;
    for (int64_t k = 0; s == FTK_OK && k < n; k++) {
        const char *end = strchr(w, ',');
        size_t len = end ? (size_t)(end - w) : strlen(w);
        struct ftk_ids ids = {0};
        if (len == 0)
            s = ftk_error_set(FTK_E_INVALID, __FILE__, __LINE__, "verbalizer_words: word %lld of \"%s\" is empty", (long long)k,
                              words);
        if (s == FTK_OK)
            s = ftk_tokenizer_encode(tk, w, len, 0, &ids);
        if (s == FTK_OK && ids.n != 1)
            s = ftk_error_set(FTK_E_INVALID, __FILE__, __LINE__,
                              "verbalizer_words: \"%.*s\" is %zu tokens for this tokenizer, a class needs exactly one "
                              "(give another word, or its token with verbalizer_ids)", (int)len, w, ids.n);
        if (s == FTK_OK)
            at += (size_t)snprintf(list + at, 24, "%s%d", k ? "," : "", ids.ids[0]);
        ftk_ids_free(&ids);
        w = end ? end + 1 : w + len;
    }
    ftk_tokenizer_free(tk);
    if (s == FTK_OK) {
        s = parse_ids(S, list, V);
        if (s != FTK_OK)
            s = ftk_error_wrap(s, "verbalizer_words \"%s\" (token ids %s)", words, list);
    }
    free(list);
    return s;
}

static ftk_status warp_init(struct ftk_peft *p, const struct ftk_kv *o)
{
    struct warp *S = ftk_peft_priv(p);
    const struct ftk_model_config *cfg = ftk_peft_config(p);
    static const char *const keys[] = {"verbalizer_ids", "verbalizer_words", "verbalizer_init", "mode",
                                       "prompt_tuning_init", "prompt_tuning_init_text", "tokenizer_name_or_path", NULL};
    FTK_TRY(vt_parse(p, o, "WARP", keys, &S->v));
    FTK_TRY(vt_parse_init(o, &S->in));
    const char *mode = ftk_kv_get(o, "mode"), *vi = ftk_kv_get(o, "verbalizer_init"),
               *ids = ftk_kv_get(o, "verbalizer_ids"), *words = ftk_kv_get(o, "verbalizer_words");
    FTK_FAIL_IF(mode && strcmp(mode, "class") && strcmp(mode, "full"), FTK_E_INVALID,
                "mode=%s (class: softmax over the verbalizer's classes, the paper's; full: over the whole vocabulary)", mode);
    S->cls = !mode || !strcmp(mode, "class");
    FTK_FAIL_IF(vi && strcmp(vi, "embed_tokens") && strcmp(vi, "lm_head"), FTK_E_INVALID,
                "verbalizer_init=%s (embed_tokens or lm_head)", vi);
    S->vinit_lm_head = vi && !strcmp(vi, "lm_head");
    FTK_FAIL_IF(!ids && !words, FTK_E_INVALID, "WARP needs its classes: verbalizer_ids=ID,ID,... or verbalizer_words=WORD,WORD,...");
    FTK_FAIL_IF(ids && words && !S->v.from_adapter, FTK_E_INVALID, "give verbalizer_ids or verbalizer_words, not both");
    if (words && !(S->words = strdup(words)))
        FTK_FAIL(FTK_E_NOMEM, "out of memory");
    if (ids)   /* an adapter's ids are what it was trained with: its words are not tokenized again */
        FTK_TRY(parse_ids(S, ids, cfg->V));
    else
        FTK_TRY(words_to_ids(S, words, cfg->V));

    int64_t P = S->v.P, C = S->v.C, K = S->K, pshape[2] = {P, C}, vshape[2] = {K, C};
    FTK_TRY(ftk_peft_add_param(p, "prompt_embeddings", 2, pshape, 1, &S->e, &S->ge));
    FTK_TRY(ftk_peft_add_param(p, "verbalizer", 2, vshape, 1, &S->vb, &S->gv));
    if (S->v.from_adapter)   /* the adapter's weights follow (load) */
        return FTK_OK;
    FTK_TRY(vt_init_prompt(p, &S->v, &S->in, S->e));
    int64_t nw = 0;
    const float *w = S->vinit_lm_head ? ftk_peft_base_weight(p, "lm_head.weight", &nw) : NULL;
    if (!w)   /* embed_tokens, or lm_head tied to it */
        w = ftk_peft_base_weight(p, "model.embed_tokens.weight", &nw);
    FTK_FAIL_IF(!w || nw != cfg->V * C, FTK_E_INVALID, "the model has no embedding of (%lld, %lld) to start the verbalizer from",
                (long long)cfg->V, (long long)C);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    for (int64_t k = 0; k < K; k++)
        FTK_TRY(be->copy(ctx, S->vb + k * C, w + (int64_t)S->ids[k] * C, (size_t)C * sizeof(float)));
    return FTK_OK;
}

static int64_t warp_n_virtual(struct ftk_peft *p) { return ((struct warp *)ftk_peft_priv(p))->v.P; }

static ftk_status warp_embed_forward(struct ftk_peft *p, float *x, int64_t B, int64_t T, int train)
{
    (void)train;
    struct warp *S = ftk_peft_priv(p);
    return vt_write(p, &S->v, x, S->e, B, T);
}

static ftk_status warp_embed_backward(struct ftk_peft *p, const float *dx, int64_t B, int64_t T)
{
    struct warp *S = ftk_peft_priv(p);
    return vt_grad(p, &S->v, S->ge, dx, B, T);
}

static int64_t warp_head_rows(struct ftk_peft *p, const int32_t **ids, const float **rows, float **grads, int *restrict_to_rows)
{
    struct warp *S = ftk_peft_priv(p);
    *ids = S->ids;
    *rows = S->vb;
    *grads = S->gv;
    *restrict_to_rows = S->cls;
    return S->K;
}

static ftk_status warp_save(struct ftk_peft *p, const char *dir, const char *base_path)
{
    struct warp *S = ftk_peft_priv(p);
    struct ftk_message msg;
    ftk_message_init(&msg);
    ftk_status st = ftk_message_set_meta(&msg, "format", "pt");
    if (st == FTK_OK)
        st = vt_add_tensor(p, &msg, "prompt_embeddings", 2, S->v.P, S->v.C, S->e);
    if (st == FTK_OK)
        st = vt_add_tensor(p, &msg, "verbalizer", 2, S->K, S->v.C, S->vb);
    if (st == FTK_OK)
        st = vt_write_file(dir, "adapter_model.safetensors", &msg);
    ftk_message_free(&msg);
    FTK_TRY(st);
    cJSON *c = vt_config(p, &S->v, "WARP", base_path), *ids = cJSON_CreateArray();
    if (!c || !ids) {
        cJSON_Delete(c);
        cJSON_Delete(ids);
        FTK_FAIL(FTK_E_NOMEM, "out of memory");
    }
    vt_config_init(c, &S->in);
    for (int64_t k = 0; k < S->K; k++)
        cJSON_AddItemToArray(ids, cJSON_CreateNumber(S->ids[k]));
    cJSON_AddItemToObject(c, "verbalizer_ids", ids);
    if (S->words) {   /* a JSON list, as adapter.c joins it back with commas */
        cJSON *wl = cJSON_CreateArray();
        const char *w = S->words;
        while (wl) {
            const char *end = strchr(w, ',');
            char one[256];
            snprintf(one, sizeof one, "%.*s", (int)(end ? end - w : (ptrdiff_t)strlen(w)), w);
            cJSON_AddItemToArray(wl, cJSON_CreateString(one));
            if (!end)
                break;
            w = end + 1;
        }
        cJSON_AddItemToObject(c, "verbalizer_words", wl);
    } else {
        cJSON_AddNullToObject(c, "verbalizer_words");
    }
    cJSON_AddStringToObject(c, "verbalizer_init", S->vinit_lm_head ? "lm_head" : "embed_tokens");
    cJSON_AddStringToObject(c, "mode", S->cls ? "class" : "full");
    return vt_write_config(dir, c);
}

static ftk_status warp_load(struct ftk_peft *p, struct ftk_source *src)
{
    struct warp *S = ftk_peft_priv(p);
    struct ftk_st_model *st;
    const char *where = ftk_source_path(src);
    FTK_TRY(ftk_st_model_open(src, "adapter_model", &st));
    ftk_status s = ftk_peft_load_tensor(p, st, where, "prompt_embeddings", 2, S->v.P, S->v.C, S->e);
    if (s == FTK_OK)
        s = ftk_peft_load_tensor(p, st, where, "verbalizer", 2, S->K, S->v.C, S->vb);
    if (s == FTK_OK && ftk_st_model_count(st) != 2)
        s = ftk_error_set(FTK_E_MISMATCH, __FILE__, __LINE__,
                          "%s: a WARP adapter holds prompt_embeddings and verbalizer only, this one %zu tensors", where,
                          ftk_st_model_count(st));
    ftk_st_model_close(st);
    return s;
}

static void warp_release(struct ftk_peft *p)
{
    struct warp *S = ftk_peft_priv(p);
    free(S->ids);
    free(S->words);
    S->ids = NULL;
    S->words = NULL;
}

FTK_EXPORT const struct ftk_peft_plugin ftk_peft_plugin = {
    .abi_version = FTK_PEFT_ABI,
    .struct_size = sizeof(struct ftk_peft_plugin),
    .name = "warp",
    .priv_size = sizeof(struct warp),
    .init = warp_init,
    .save = warp_save,
    .load = warp_load,
    .release = warp_release,
    .n_virtual = warp_n_virtual,
    .embed_forward = warp_embed_forward,
    .embed_backward = warp_embed_backward,
    .head_rows = warp_head_rows,
};
