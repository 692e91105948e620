/* ftk/safetensors.h: reading and writing safetensors files and sharded HF checkpoints.
 *
 * Reading maps files (no copy for directories); tensors are views that live as long as the
 * ftk_st_model. Writing is crash-safe (ftk/fileio.h): a temporary file, fsync, rename.
 * Sharded checkpoints: model.safetensors.index.json's "weight_map" names the shard per tensor. */
#ifndef FTK_SAFETENSORS_H
#define FTK_SAFETENSORS_H

#include "message.h"
#include "source.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ftk_st_model;

/* Opens `prefix`.safetensors or, if absent, `prefix`.safetensors.index.json and its shards, from
 * a source (prefix "model" for models, "adapter_model" for PEFT adapters). */
FTK_API ftk_status ftk_st_model_open(struct ftk_source *src, const char *prefix, struct ftk_st_model **out);
/* Opens one safetensors file by path (directory file, not archive). */
FTK_API ftk_status ftk_st_file_open(const char *path, struct ftk_st_model **out);
FTK_API void ftk_st_model_close(struct ftk_st_model *m);
FTK_API size_t ftk_st_model_count(const struct ftk_st_model *m);
/* i-th tensor across all shards (for listings), with its name. */
FTK_API const struct ftk_tensor *ftk_st_model_at(const struct ftk_st_model *m, size_t i, const char **name);
/* NULL when absent. */
FTK_API const struct ftk_tensor *ftk_st_model_find(const struct ftk_st_model *m, const char *name);
/* Finds `name` (FTK_E_NOTFOUND naming tensor and checkpoint) and converts it to F32, checking
 * that it has `numel` elements when numel >= 0. dst must hold numel floats. */
FTK_API ftk_status ftk_st_model_read_f32(const struct ftk_st_model *m, const char *name, float *dst, int64_t numel);
/* The file-level __metadata__ of the first shard (NULL if none). */
FTK_API const char *ftk_st_model_meta(const struct ftk_st_model *m, const char *key);

/* Writes a safetensors file one tensor at a time (memory: one tensor), crash-safely: `fill`
 * is called for tensor i with a buffer of its nbytes to fill, in order. Tensors are stored in
 * the order given. */
struct ftk_st_entry {
    const char *name;
    enum ftk_dtype dtype;
    int ndim;
    int64_t shape[FTK_MAX_DIMS];
};
typedef ftk_status (*ftk_st_fill_fn)(void *arg, size_t i, void *dst, size_t nbytes);
FTK_API ftk_status ftk_st_write_streaming(const char *path, const struct ftk_message *meta_only,
                                          const struct ftk_st_entry *entries, size_t n,
                                          ftk_st_fill_fn fill, void *arg);
/* The same, a few rows at a time (memory: about chunk_bytes, whatever the tensors' sizes): `fill`
 * is called with rows [row0, row0 + nrows) of tensor i (its first dimension; a scalar is one
 * row) to write into dst, in order, each call covering at most chunk_bytes or one row. */
typedef ftk_status (*ftk_st_fill_rows_fn)(void *arg, size_t i, void *dst, int64_t row0, int64_t nrows);
FTK_API ftk_status ftk_st_write_rows(const char *path, const struct ftk_message *meta_only,
                                     const struct ftk_st_entry *entries, size_t n,
                                     ftk_st_fill_rows_fn fill, void *arg, size_t chunk_bytes);

/* Writes a message's tensors and metadata as one safetensors file, crash-safely. */
FTK_API ftk_status ftk_st_write(const char *path, const struct ftk_message *m);

#ifdef __cplusplus
}
#endif
#endif
