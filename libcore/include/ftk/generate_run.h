/* ftk/generate_run.h: what `ftk generate` does, as a library call (docs/tools/generate.md). */
#ifndef FTK_GENERATE_RUN_H
#define FTK_GENERATE_RUN_H

#include "generate.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ftk_generate_opts {
    const char *model, *adapter, *tokenizer, *template_name;
    const char *input;             /* JSONL or an example stream; NULL: stdin (a terminal: chat) */
    int64_t max_new_tokens;        /* 0: generation_config.json or 256 */
    int do_sample;                 /* -1: generation_config.json */
    double temperature, top_p, min_p;   /* < 0: generation_config.json */
    int64_t top_k;                 /* < 0: generation_config.json */
    double repetition_penalty;     /* <= 0: generation_config.json */
    uint64_t seed;
    int32_t eos[FTK_GEN_MAX_EOS];  /* extra stop ids */
    int n_eos;
    const char *stop[FTK_GEN_MAX_STOP];
    int n_stop;
    int64_t batch_size;            /* prompts per batch */
    int64_t context;               /* 0: the model's max_position_embeddings */
    int stream;                    /* one prompt: print tokens as they come */
    int threads;
    int quiet;                     /* no progress on stderr */
    int ignore_eos;                /* generate max_new_tokens whatever comes (benchmarks) */
};

FTK_API ftk_status ftk_generate_run(const struct ftk_generate_opts *o);

#ifdef __cplusplus
}
#endif
#endif
