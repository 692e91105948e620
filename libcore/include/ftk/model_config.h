/* ftk/model_config.h: a HuggingFace config.json for the Llama family, parsed and checked.
 *
 * Supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM (q/k/v bias),
 * Qwen3ForCausalLM (q/k RMSNorm over head_dim); GQA/MQA; tied or untied embeddings; RoPE
 * default/linear/dynamic/llama3, from transformers 4's `rope_theta` + `rope_scaling` or
 * transformers 5's `rope_parameters`. Anything in config.json that would change the math and is
 * not implemented is refused with FTK_E_UNSUPPORTED naming the key: never a silent difference.
 * Letters: V vocab, C hidden, F intermediate, L layers, H heads, Hkv kv heads, D head dim. */
#ifndef FTK_MODEL_CONFIG_H
#define FTK_MODEL_CONFIG_H

#include <stdint.h>
#include "error.h"
#include "rope.h"
#include "source.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Values fixed, appended only. */
enum ftk_arch { FTK_ARCH_LLAMA = 0, FTK_ARCH_MISTRAL = 1, FTK_ARCH_QWEN2 = 2, FTK_ARCH_QWEN3 = 3 };

#define FTK_MAX_EOS 8

struct ftk_model_config {
    enum ftk_arch arch;
    char model_type[32];          /* "llama", "mistral", "qwen2", "qwen3" */
    int64_t V, C, F, L, H, Hkv, D;
    float rms_norm_eps;
    struct ftk_rope_config rope;
    int tie_word_embeddings;
    int qkv_bias;                 /* q/k/v projections have biases (Qwen2, Llama attention_bias) */
    int o_bias;                   /* o_proj has a bias (Llama attention_bias) */
    int mlp_bias;                 /* gate/up/down have biases (Llama mlp_bias) */
    int qk_norm;                  /* Qwen3: RMSNorm of q and k over head_dim before RoPE */
    int64_t sliding_window;       /* 0: none. Rows longer than this are refused (see docs/models.md) */
    int64_t max_position_embeddings;
    int32_t bos_token_id, pad_token_id;   /* -1 when absent */
    int32_t eos_token_ids[FTK_MAX_EOS];
    int n_eos;
    char torch_dtype[16];         /* "float32", "bfloat16", "float16" or "" */
};

/* Parses config.json text; `where` names it in errors. */
FTK_API ftk_status ftk_model_config_parse(const char *json, size_t len, const char *where,
                                          struct ftk_model_config *out);
/* Reads and parses config.json from a model directory or archive. */
FTK_API ftk_status ftk_model_config_load(struct ftk_source *src, struct ftk_model_config *out);
/* Number of parameters of the base model (embeddings counted once when tied). */
FTK_API int64_t ftk_model_config_n_params(const struct ftk_model_config *c);

#ifdef __cplusplus
}
#endif
#endif
