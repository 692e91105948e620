/* ftk/generate.h: text generation with a KV cache, sampling as transformers' generate does it
 * (repetition penalty, then temperature, top-k, top-p, min-p; greedy when not sampling).
 * Ownership: results are malloc'd for the caller (ftk_gen_result_free). */
#ifndef FTK_GENERATE_H
#define FTK_GENERATE_H

#include <stdint.h>
#include "model.h"
#include "tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FTK_GEN_MAX_EOS 16
#define FTK_GEN_MAX_STOP 16

struct ftk_gen_config {
    int64_t max_new_tokens;        /* 256 */
    int do_sample;                 /* 0: greedy (argmax; ties to the lowest id, as torch.argmax) */
    double temperature;            /* 1.0 (sampling only; 0: greedy) */
    int64_t top_k;                 /* 0: off */
    double top_p;                  /* 1.0: off */
    double min_p;                  /* 0: off */
    double repetition_penalty;     /* 1.0: off (HF: over prompt and generated ids) */
    uint64_t seed;                 /* prompt i of a call draws from its own generator, seeded seed + i */
    int32_t eos[FTK_GEN_MAX_EOS];  /* stop ids (generation_config.json's eos_token_id, the template's) */
    int n_eos;
    const char *stop[FTK_GEN_MAX_STOP];   /* stop strings: the text ends before the first one */
    int n_stop;
    int64_t context;               /* positions per row (KV cache); 0: max_position_embeddings */
};

struct ftk_gen_result {
    int32_t *ids;                  /* generated ids (the stopping eos included) */
    int64_t n;
    char *text;                    /* decoded (skip_special_tokens), cut at a stop string */
    const char *finish_reason;     /* "stop" (eos or stop string) or "length" */
    int64_t prompt_tokens;
    double prefill_s;              /* seconds of this prompt's prefill */
    double decode_s;               /* seconds of the decode steps of its batch (shared) */
};

/* Called after each generated token of prompt `i` (streaming); may be NULL. */
typedef void (*ftk_gen_token_fn)(void *arg, int64_t i, int32_t id);

/* Generates for n prompts (ids, lengths), batched in one KV cache. tok may be NULL (no text,
 * no stop strings). A prompt longer than the context is an error naming it. */
FTK_API ftk_status ftk_generate(struct ftk_model *m, const struct ftk_tokenizer *tok, const struct ftk_gen_config *c,
                                int64_t n, const int32_t *const *prompts, const int64_t *lens,
                                ftk_gen_token_fn on_token, void *arg, struct ftk_gen_result *out);
/* The context ftk_generate works in: c->context when set, else the model's
 * max_position_embeddings. */
FTK_API int64_t ftk_gen_context(const struct ftk_model *m, const struct ftk_gen_config *c);
FTK_API void ftk_gen_result_free(struct ftk_gen_result *r);
FTK_API void ftk_gen_config_init(struct ftk_gen_config *c);
/* Reads generation_config.json of a model dir/archive into c (eos ids, sampling defaults, as
 * transformers' GenerationConfig); missing file: nothing changes. */
FTK_API ftk_status ftk_gen_config_load(struct ftk_gen_config *c, const char *model_path);

/* One sampling decision on logits (V) given the ids so far (for the repetition penalty);
 * `rng` is the caller's xoshiro state (4 words). -1 when out of memory. Exposed for tests. */
FTK_API int32_t ftk_gen_pick(const struct ftk_gen_config *c, float *logits, int64_t V, const int32_t *seen, int64_t n_seen,
                             uint64_t rng[4]);

#ifdef __cplusplus
}
#endif
#endif
