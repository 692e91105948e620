/* ftk/dataset.h: LLaMA-Factory datasets to `example` messages (the library behind ftk tokenize).
 *
 * Formats, column names and role tags are LLaMA-Factory's (data/README.md, dataset_info.json;
 * src/llamafactory/data/converter.py); labels and truncation follow its processors
 * (processor/supervised.py, pairwise.py, feedback.py, processor_utils.py infer_seqlen).
 * docs/tools/tokenize.md is the user's description.
 *
 * Ownership: what you pass in stays yours and is not kept past the call; ftk_ids outputs are
 * appended to and stay the caller's. */
#ifndef FTK_DATASET_H
#define FTK_DATASET_H

#include <stdint.h>
#include <stdio.h>
#include "error.h"
#include "tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- labels and truncation ------------------------------------------------------------------ */

/* processor_utils.infer_seqlen: how much of a source (prompt) and target (response) of the
 * given lengths to keep within cutoff_len; the response is favoured, long pairs are cut in
 * proportion. */
FTK_API void ftk_infer_seqlen(int64_t source_len, int64_t target_len, int64_t cutoff_len,
                              int64_t *new_source, int64_t *new_target);

struct ftk_label_config {
    int64_t cutoff_len;    /* <= 0: no truncation */
    int train_on_prompt;   /* label prompt tokens too */
    int mask_history;      /* label only the last turn; truncation keeps the last turns first */
    int efficient_eos;     /* the template's efficient_eos */
    int32_t eos_id;        /* used with efficient_eos */
};

/* SupervisedDatasetProcessor._encode_supervised_example. msg_ids[i]: the ids of message i
 * (ftk_template_encode), n even: (prompt, response) per turn. *truncated: 1 if anything was cut. */
FTK_API ftk_status ftk_labels_supervised(const struct ftk_label_config *c, const struct ftk_ids *msg_ids,
                                         size_t n, struct ftk_ids *input_ids, struct ftk_ids *labels,
                                         int *truncated);
/* PairwiseDatasetProcessor._encode_pairwise_example: prompt (all messages before the reply)
 * with the chosen and with the rejected reply; prompt labels are ignored. */
FTK_API ftk_status ftk_labels_pairwise(const struct ftk_label_config *c, const struct ftk_ids *prompt,
                                       const struct ftk_ids *chosen, const struct ftk_ids *rejected,
                                       struct ftk_ids *chosen_ids, struct ftk_ids *chosen_labels,
                                       struct ftk_ids *rejected_ids, struct ftk_ids *rejected_labels,
                                       int *truncated);
/* FeedbackDatasetProcessor._encode_feedback_example (KTO), without the KL pairing (ftk pack or
 * the loss pairs examples): *prompt_len is the kept prompt length. */
FTK_API ftk_status ftk_labels_feedback(const struct ftk_label_config *c, const struct ftk_ids *prompt,
                                       const struct ftk_ids *response, struct ftk_ids *input_ids,
                                       struct ftk_ids *labels, int64_t *prompt_len, int *truncated);

/* ---- dataset attributes (dataset_info.json) ------------------------------------------------- */

enum ftk_data_format {
    FTK_FORMAT_TEXT = 0,      /* pre-training: one document per line, or a "text" column */
    FTK_FORMAT_ALPACA = 1,
    FTK_FORMAT_SHAREGPT = 2,
    FTK_FORMAT_OPENAI = 3,    /* sharegpt with role/content tags, as LLaMA-Factory reads it */
};

#define FTK_DATASET_NAME_MAX 128

/* One dataset's description: DatasetAttr of LLaMA-Factory's parser.py. An empty column name
 * means "not used". */
struct ftk_dataset_attr {
    enum ftk_data_format format;
    int ranking;   /* preference data: chosen/rejected */
    /* columns */
    char prompt[FTK_DATASET_NAME_MAX], query[FTK_DATASET_NAME_MAX], response[FTK_DATASET_NAME_MAX],
        history[FTK_DATASET_NAME_MAX], messages[FTK_DATASET_NAME_MAX], system[FTK_DATASET_NAME_MAX],
        tools[FTK_DATASET_NAME_MAX], chosen[FTK_DATASET_NAME_MAX], rejected[FTK_DATASET_NAME_MAX],
        kto_tag[FTK_DATASET_NAME_MAX];
    /* sharegpt tags */
    char role_tag[FTK_DATASET_NAME_MAX], content_tag[FTK_DATASET_NAME_MAX], user_tag[FTK_DATASET_NAME_MAX],
        assistant_tag[FTK_DATASET_NAME_MAX], observation_tag[FTK_DATASET_NAME_MAX],
        function_tag[FTK_DATASET_NAME_MAX], system_tag[FTK_DATASET_NAME_MAX];
};

/* LLaMA-Factory's defaults for a format (alpaca: instruction/input/output; sharegpt:
 * conversations with from/value and human/gpt/observation/function_call/system; openai:
 * messages with role/content and user/assistant/tool/function/system; text: the "text" column). */
FTK_API void ftk_dataset_attr_init(struct ftk_dataset_attr *a, enum ftk_data_format f);
FTK_API ftk_status ftk_data_format_parse(const char *name, enum ftk_data_format *out);
FTK_API const char *ftk_data_format_name(enum ftk_data_format f);
/* "key=value[,key=value...]" where key is a column (prompt, query, response, history, messages,
 * system, tools, chosen, rejected, kto_tag, text) or a tag (role_tag, ..., system_tag). */
FTK_API ftk_status ftk_dataset_attr_set(struct ftk_dataset_attr *a, const char *assignments);
/* Reads dataset `name` from a dataset_info.json: formatting, ranking, columns, tags. *file_path
 * (malloc'd) is file_name resolved against the json's directory. Hub-only entries (hf_hub_url,
 * ms_hub_url, script_url without file_name) are FTK_E_UNSUPPORTED. `format_override` >= 0
 * replaces "formatting" (e.g. text for a pre-training file described as alpaca). */
FTK_API ftk_status ftk_dataset_info_load(const char *json_path, const char *name, int format_override,
                                         struct ftk_dataset_attr *a, char **file_path);

/* ---- the tokenize run ----------------------------------------------------------------------- */

enum ftk_example_kind { FTK_EXAMPLE_TEXT = 0, FTK_EXAMPLE_SFT = 1, FTK_EXAMPLE_PAIRWISE = 2, FTK_EXAMPLE_KTO = 3 };
FTK_API const char *ftk_example_kind_name(enum ftk_example_kind k);

struct ftk_tokenize_config {
    const char *tokenizer;      /* model dir, archive or tokenizer.json */
    const char *template_name;  /* name or file; NULL: none (text format only) */
    struct ftk_dataset_attr attr;
    const char *const *inputs;  /* files (or "-"); n_inputs 0: stdin */
    size_t n_inputs;
    const char *default_system; /* replaces the template's default system prompt; NULL: keep */
    int64_t cutoff_len;         /* <= 0: none */
    int train_on_prompt, mask_history;
    int add_special_tokens;     /* text format: apply the tokenizer's post-processor */
    int append_eos;             /* text format: end each document with the eos token */
    int skip_bad;               /* skip bad records (reported through on_skip) instead of failing */
    int threads;                /* <= 1: one */
    int zstd_level;             /* stream compression; 0 = none */
    /* Called for every skipped record, in input order (may be NULL). */
    void (*on_skip)(void *ctx, const char *source, int64_t index, const char *why);
    void *on_skip_ctx;
    int quiet;                  /* no progress on stderr */
};

struct ftk_tokenize_stats {
    int64_t records, examples, skipped, truncated, tokens;
};

/* Reads every input and writes the stream (header, examples, end) to `out`. A bad record
 * stops the run with an error naming the source and the record (line), unless skip_bad. */
FTK_API ftk_status ftk_tokenize_run(const struct ftk_tokenize_config *c, FILE *out, struct ftk_tokenize_stats *st);

/* --decode: reads an example stream or JSONL lines {"ids": [...]} from `in` and writes one
 * JSON line {"text": ...} per example (pairwise: {"chosen": ..., "rejected": ...}). */
FTK_API ftk_status ftk_tokenize_decode(const char *tokenizer, FILE *in, const char *in_name, FILE *out,
                                       int skip_special, int64_t *count);

#ifdef __cplusplus
}
#endif
#endif
