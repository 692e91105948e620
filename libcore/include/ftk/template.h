/* ftk/template.h: chat templates as data files, rendered the way LLaMA-Factory renders them.
 *
 * A template is a JSON file (tools/templates/NAME.json, installed to <data dir>/templates/)
 * modelled on LLaMA-Factory's register_template (src/llamafactory/data/template.py): slots for
 * the user, assistant, system, function, observation and prefix parts, a default system prompt,
 * stop words, efficient_eos, replace_eos, and the "llama2" (system fused into the first user
 * message) and "reasoning" (<think> blocks) classes. docs/templates.md describes the format.
 *
 * Like LLaMA-Factory's Template._encode, every message becomes its own list of ids, each string
 * slot encoded on its own (no special tokens added by the tokenizer), so a template never
 * depends on how the tokenizer would merge text across two slots.
 *
 * Ownership: ftk_template_free frees what ftk_template_parse/_load made. Message contents are
 * the caller's and are not kept. ftk_ids lists passed in are appended to; the caller frees them. */
#ifndef FTK_TEMPLATE_H
#define FTK_TEMPLATE_H

#include <stddef.h>
#include <stdint.h>
#include "error.h"
#include "tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Values are fixed; appended only. Names as LLaMA-Factory's Role enum. */
enum ftk_role {
    FTK_ROLE_USER = 0,
    FTK_ROLE_ASSISTANT = 1,
    FTK_ROLE_SYSTEM = 2,
    FTK_ROLE_FUNCTION = 3,
    FTK_ROLE_OBSERVATION = 4,
};

struct ftk_chat_message {
    enum ftk_role role;
    const char *content;   /* UTF-8, NUL-terminated */
};

/* How a template turns text into ids. The tokenizer sits behind function pointers so the
 * template logic can be tested with a fake one. */
struct ftk_text_encoder {
    void *ctx;
    /* Appends the ids of text without adding special tokens (HF add_special_tokens=False). */
    ftk_status (*encode)(void *ctx, const char *text, size_t len, struct ftk_ids *out);
    /* Id of a token string, -1 when the vocabulary has none. */
    int32_t (*token_to_id)(void *ctx, const char *token);
    int32_t bos_id, eos_id;   /* -1 when the tokenizer has none (the slot then adds nothing) */
};

struct ftk_template;

/* Parses a template from JSON text. `where` names it in errors (a path or a name). */
FTK_API ftk_status ftk_template_parse(const char *json, size_t len, const char *where,
                                      struct ftk_template **out);
/* `name_or_path`: a file path (contains '/' or ends in ".json"), or a name looked up as
 * <ftk_data_dir()>/templates/NAME.json. FTK_E_NOTFOUND lists where it looked. */
FTK_API ftk_status ftk_template_load(const char *name_or_path, struct ftk_template **out);
FTK_API void ftk_template_free(struct ftk_template *t);

FTK_API const char *ftk_template_name(const struct ftk_template *t);
FTK_API const char *ftk_template_default_system(const struct ftk_template *t);
/* efficient_eos: the eos is not in the assistant slot but appended once after the last turn
 * (and labelled at the start of the following prompt), as LLaMA-Factory does. */
FTK_API int ftk_template_efficient_eos(const struct ftk_template *t);
/* The token that replaces the tokenizer's eos (replace_eos: the first stop word), or NULL. */
FTK_API const char *ftk_template_eos_token(const struct ftk_template *t);

/* Encodes a conversation into one id list per message: out[i] gets message i's ids (the prefix
 * and system prompt belong to message 0). Messages follow LLaMA-Factory's order: user or
 * observation at even positions, assistant or function at odd ones; the last message is the
 * response. `system` NULL or "": the template's default system prompt. A role sequence the
 * template cannot render is FTK_E_FORMAT naming the message. */
FTK_API ftk_status ftk_template_encode(const struct ftk_template *t, const struct ftk_text_encoder *enc,
                                       const struct ftk_chat_message *msgs, size_t n,
                                       const char *system, struct ftk_ids *out);

/* The same rendering as text, special slots written as the given token strings (NULL: left
 * out): what the ids above decode to. *out is malloc'd. */
FTK_API ftk_status ftk_template_render(const struct ftk_template *t, const struct ftk_chat_message *msgs,
                                       size_t n, const char *system, const char *bos_token,
                                       const char *eos_token, char **out);

#ifdef __cplusplus
}
#endif
#endif
