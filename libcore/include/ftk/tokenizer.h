/* ftk/tokenizer.h: HuggingFace tokenizers (tokenizer.json + tokenizer_config.json), exact.
 *
 * Encoding equals HuggingFace `tokenizers` token for token; decoding equals transformers'
 * `decode` (skip_special_tokens, clean_up_tokenization_spaces). A loaded tokenizer is
 * immutable: encode/decode may run from many threads at once.
 * Ownership: ftk_tokenizer_free frees the tokenizer; ftk_ids buffers are the caller's
 * (ftk_ids_free); strings returned through char ** are malloc'd for the caller. */
#ifndef FTK_TOKENIZER_H
#define FTK_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>
#include "error.h"
#include "source.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ftk_tokenizer;

/* A growable id list. */
struct ftk_ids {
    int32_t *ids;
    size_t n, cap;
};
FTK_API ftk_status ftk_ids_push(struct ftk_ids *v, int32_t id);
FTK_API void ftk_ids_free(struct ftk_ids *v);

/* Loads tokenizer.json and (if present) tokenizer_config.json from a source (model dir or
 * archive). Unsupported model/normalizer/pre-tokenizer types: FTK_E_UNSUPPORTED naming them. */
FTK_API ftk_status ftk_tokenizer_load(struct ftk_source *src, struct ftk_tokenizer **out);
/* `path`: a directory, an archive, or a tokenizer.json file (its directory is searched for
 * tokenizer_config.json). */
FTK_API ftk_status ftk_tokenizer_load_path(const char *path, struct ftk_tokenizer **out);
FTK_API void ftk_tokenizer_free(struct ftk_tokenizer *t);

/* Appends the ids of `text` (UTF-8, `len` bytes) to `out`. add_special: apply the
 * post-processor (what `tokenizer.encode(text)` does by default). Invalid UTF-8: FTK_E_FORMAT
 * naming the byte offset. */
FTK_API ftk_status ftk_tokenizer_encode(const struct ftk_tokenizer *t, const char *text, size_t len,
                                        int add_special, struct ftk_ids *out);
/* clean_up: 1/0, or -1 for tokenizer_config.json's clean_up_tokenization_spaces. */
FTK_API ftk_status ftk_tokenizer_decode(const struct ftk_tokenizer *t, const int32_t *ids, size_t n,
                                        int skip_special, int clean_up, char **out, size_t *out_len);

/* len(tokenizer) in transformers: vocab plus added tokens (max id + 1). */
FTK_API size_t ftk_tokenizer_vocab_size(const struct ftk_tokenizer *t);
/* Id of a token string (vocab or added token), -1 if none. */
FTK_API int32_t ftk_tokenizer_token_to_id(const struct ftk_tokenizer *t, const char *token);
/* Token string of an id, NULL if out of range. */
FTK_API const char *ftk_tokenizer_id_to_token(const struct ftk_tokenizer *t, int32_t id);
FTK_API int ftk_tokenizer_is_special(const struct ftk_tokenizer *t, int32_t id);
/* From tokenizer_config.json (NULL / -1 when not set). */
FTK_API const char *ftk_tokenizer_special(const struct ftk_tokenizer *t, const char *which); /* "bos_token", "eos_token", "pad_token", "unk_token" */
FTK_API int32_t ftk_tokenizer_special_id(const struct ftk_tokenizer *t, const char *which);
FTK_API const char *ftk_tokenizer_chat_template(const struct ftk_tokenizer *t);
/* Hex SHA-256 of tokenizer.json's bytes: identifies the tokenizer in stream headers. */
FTK_API const char *ftk_tokenizer_hash(const struct ftk_tokenizer *t);

#ifdef __cplusplus
}
#endif
#endif
