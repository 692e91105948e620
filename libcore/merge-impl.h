/* libcore/merge-impl.h: the adapter side of ftk merge-lora, shared by merge.c (the plan and the
 * writing) and merge_adapter.c (reading and checking adapter_config.json and the weights).
 * Internal to libcore. Shapes: O out features, I in features, r rank. */
#ifndef FTK_MERGE_IMPL_H
#define FTK_MERGE_IMPL_H

#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>
#include "ftk/error.h"
#include "ftk/safetensors.h"
#include "ftk/source.h"

#define PEFT_PREFIX "base_model.model."

/* One adapted linear: W' = W + scale B A. */
struct merge_pair {
    char *module;                    /* "model.layers.0.self_attn.q_proj" */
    const struct ftk_tensor *A, *B;  /* A (r,I), B (O,r), views into the adapter */
    double scale;                    /* lora_alpha / r (rsLoRA: / sqrt(r)), per module with the patterns */
};

/* A tensor of modules_to_save: replaces the base tensor of the same name whole. */
struct merge_saved {
    char *name;                      /* the base's name: "lm_head.weight" */
    const struct ftk_tensor *t;
};

struct merge_adapter {
    struct ftk_source *src;
    struct ftk_st_model *st;
    cJSON *cfg;
    struct merge_pair *pairs;
    size_t n_pairs;
    struct merge_saved *saved;
    size_t n_saved;
    int plugin;                      /* merged by the method's plugin, not as W + s B A */
};

/* Reads adapter_config.json and, for a LoRA adapter merged as W + s B A, its weights; refuses
 * what would be merged wrongly. a->plugin set: the method's plugin merges it (other methods,
 * DoRA, PiSSA/OLoRA) and only the config has been read. */
ftk_status merge_adapter_open(struct merge_adapter *a, const char *path);
void merge_adapter_free(struct merge_adapter *a);
int merge_is_float(enum ftk_dtype dt);

#endif
