/* ftk/merge.h: folding a LoRA adapter into its base model (the library behind ftk merge-lora).
 *
 * W' = W + scale * B A for every adapted linear, in F32, cast to the output dtype; scale is
 * lora_alpha / r (lora_alpha / sqrt(r) with use_rslora), as peft's LoraLayer.merge. The base
 * checkpoint is read from its mapping and the result written a chunk of rows at a time, so
 * memory holds one chunk of output (FTK_MERGE_DEFAULT_CHUNK) and its rows in F32 (twice the
 * bytes for a bf16/f16 output) plus the adapter, whatever the model
 * or tensor size (a directory base; an archive base is read into memory by libarchive). Adapters of other
 * mergeable methods (DoRA, (IA)^3, AdaLoRA, diff pruning) are folded by their plugin's merge
 * slot, with the base model loaded whole (F32, CPU backend) and the adapter on it; BitFit's by its
 * merge_bias slot into the modules' biases (added, with config.json's attention_bias / mlp_bias,
 * where the base has none).
 *
 * Ownership: what you pass in stays yours and is not kept. */
#ifndef FTK_MERGE_H
#define FTK_MERGE_H

#include <stdint.h>
#include "error.h"
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* transformers' default max_shard_size ("5GB", decimal as huggingface_hub counts). */
#define FTK_MERGE_DEFAULT_SHARD_SIZE ((uint64_t)5000000000ull)
/* Rows of a tensor merged and written at a time: the merge's memory beside the adapter. */
#define FTK_MERGE_DEFAULT_CHUNK ((size_t)16 << 20)

struct ftk_merge_opts {
    const char *model;      /* base model: HF directory or archive */
    const char *adapter;    /* LoRA adapter (peft layout): directory or archive */
    const char *output;     /* new directory, or an archive when it ends in .tar, .tar.zst or .zip */
    const char *dtype;      /* "float32", "bfloat16", "float16" (or f32/bf16/f16); NULL: the base's
                               torch_dtype (float32 when config.json names none) */
    uint64_t shard_size;    /* bytes per shard before a new one starts; 0: the default */
    size_t chunk_bytes;     /* output bytes computed and written per step (at least one row);
                               0: FTK_MERGE_DEFAULT_CHUNK. Changes memory, never the result. */
};

struct ftk_merge_stats {
    int64_t tensors;        /* tensors written */
    int64_t merged;         /* of which LoRA was folded into */
    int64_t shards;         /* safetensors files written (1: model.safetensors, no index) */
    uint64_t total_size;    /* bytes of tensor data (the index's metadata.total_size) */
    char dtype[16];         /* the output dtype, torch's name */
    int64_t replaced;       /* tensors replaced whole by the adapter's (modules_to_save) */
};

/* Merges and writes the output all-or-nothing: a failed merge leaves no output behind.
 * LoRA's per-module rank_pattern / alpha_pattern give each module its own scale, and tensors of
 * modules_to_save replace the base's whole.
 * Errors: FTK_E_UNSUPPORTED for adapters that cannot be folded (LoRA with bias, fan_in_fan_out,
 * layer_replication, a saved lm_head of a tied model; methods without a merge slot), FTK_E_MISMATCH for an adapter made
 * for another base (a module the base lacks, or shapes that differ), FTK_E_INVALID for a bad
 * dtype or an existing non-empty output directory. `stats` may be NULL. */
FTK_API ftk_status ftk_merge_lora(const struct ftk_merge_opts *o, struct ftk_merge_stats *stats);

/* "5GB", "500MB", "2GiB", "1000" (bytes) -> bytes. Units as huggingface_hub's
 * convert_file_size_to_int: KB/MB/GB decimal, KiB/MiB/GiB binary, case-insensitive. */
FTK_API ftk_status ftk_parse_size(const char *s, uint64_t *out);
/* "float32"/"f32"/"F32", "bfloat16"/"bf16", "float16"/"f16"/"half" -> dtype. */
FTK_API ftk_status ftk_parse_float_dtype(const char *s, enum ftk_dtype *out);

#ifdef __cplusplus
}
#endif
#endif
