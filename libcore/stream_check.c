/* libcore/stream_check.c: the checks a model-consuming tool (train-step, ref-logps) makes on a
 * batch stream's header before reading batches (ftk/train_run.h). */
#include <stdlib.h>
#include <string.h>
#include "ftk/hash.h"
#include "ftk/source.h"
#include "ftk/train_run.h"

ftk_status ftk_stream_check_model(const struct ftk_message *h, const char *model_path, const struct ftk_model_config *c,
                                  const char *name)
{
    const char *vs = ftk_message_get_meta(h, "vocab_size"), *hash = ftk_message_get_meta(h, "tokenizer_hash");
    if (vs) {
        long long v = strtoll(vs, NULL, 10);
        FTK_FAIL_IF(v > c->V, FTK_E_MISMATCH, "%s: the stream's tokenizer has %lld tokens, the model's vocabulary %lld",
                    name, v, (long long)c->V);
    }
    if (!hash || !strcmp(hash, "-1"))
        return FTK_OK;
    struct ftk_source *src;
    FTK_TRY(ftk_source_open(model_path, &src));
    char *tok = NULL;
    size_t len = 0;
    ftk_status s = FTK_OK;
    if (ftk_source_exists(src, "tokenizer.json") || ftk_source_exists(src, "tokenizer.json.zst"))
        s = ftk_source_read(src, "tokenizer.json", &tok, &len);
    ftk_source_close(src);
    FTK_TRY(s);
    if (!tok)   /* a model directory without tokenizer.json: nothing to compare with */
        return FTK_OK;
    char mine[65];
    ftk_sha256_hex(tok, len, mine);
    free(tok);
    FTK_FAIL_IF(strcmp(mine, hash), FTK_E_MISMATCH,
                "%s: tokenized with tokenizer %.12s..., but %s has tokenizer %.12s... (re-tokenize with this model's tokenizer)",
                name, hash, model_path, mine);
    return FTK_OK;
}
