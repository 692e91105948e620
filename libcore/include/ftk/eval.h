/* ftk/eval.h: measuring a model (the library behind ftk eval, docs/tools/eval.md).
 *
 * Four modes, each ending in one JSON object of metrics:
 *   loss        a `batch` stream: token-mean NLL of the labelled tokens (the SFT loss), perplexity
 *   preference  a pairwise `batch` stream: DPO implicit rewards beta * (logp - ref_logp), reward
 *               accuracy (chosen > rejected) and margins, with TRL's metric names
 *   choice      MMLU/CMMLU/C-Eval style records (question, A-D, answer): the letter whose token
 *               has the largest logit at the last prompt position, as LLaMA-Factory's evaluator,
 *               with few-shot prompts from a dev split rendered by a chat template
 *   generation  question/answer records: greedy generation (ftk/generate.h), exact match and
 *               "contains" against the reference answer(s)
 *
 * Ownership: what you pass in stays yours and is not kept. */
#ifndef FTK_EVAL_H
#define FTK_EVAL_H

#include <stdint.h>
#include <stdio.h>
#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Values fixed, appended only. */
enum ftk_eval_mode {
    FTK_EVAL_AUTO = 0,          /* a stream: loss, or preference when its header says pairwise;
                                   records: choice when the first has "A" and "B" (or a "choices"
                                   list), else generation */
    FTK_EVAL_LOSS = 1,
    FTK_EVAL_PREFERENCE = 2,
    FTK_EVAL_CHOICE = 3,
    FTK_EVAL_GENERATION = 4,
};
FTK_API ftk_status ftk_eval_mode_parse(const char *name, enum ftk_eval_mode *out);
FTK_API const char *ftk_eval_mode_name(enum ftk_eval_mode m);

struct ftk_eval_opts {
    enum ftk_eval_mode mode;
    const char *model;          /* HF directory or archive (required) */
    const char *adapter;        /* PEFT adapter applied unmerged, or NULL */
    const char *input;          /* stream or records file; NULL or "-": stdin */
    const char *per_example;    /* JSONL details per row / pair / question, or NULL */
    int threads;                /* 0: all cores */
    /* preference */
    double beta;                /* DPO beta (0: 0.1, TRL's default) */
    const char *ref_model;      /* reference for batches without ref_logps; NULL: the model with its
                                   adapter off (an error without an adapter) */
    /* choice and generation */
    const char *template_name;  /* chat template (name or file); required for choice */
    const char *system;         /* system prompt; NULL: the template's default */
    int64_t context;            /* longest prompt (+ generation) in tokens; 0: max_position_embeddings */
    /* choice */
    const char *dev;            /* records for the few-shot examples (the first n_shot are used) */
    int64_t n_shot;             /* 0: zero-shot */
    const char *lang;           /* LLaMA-Factory eval template: "en" (default) or "zh" */
    const char *subject;        /* subject name in the prompt; NULL: the record's "subject", else
                                   the input file name ("high_school_physics_test.csv" ->
                                   "high school physics") */
    /* generation */
    int64_t max_new_tokens;     /* 0: 64 */
    int64_t batch_size;         /* prompts generated together; 0: 8 */
    int ignore_case;            /* compare case-insensitively */
    int quiet;                  /* no progress on stderr */
};

/* Runs the evaluation and writes the metrics object (one line) to `out`. */
FTK_API ftk_status ftk_eval_run(const struct ftk_eval_opts *o, FILE *out);

#ifdef __cplusplus
}
#endif
#endif
