/* ftk/message.h: one message of a tensor stream, i.e. one safetensors blob in memory.
 *
 * A message is string metadata (always including "kind") plus named tensors, both kept in
 * insertion order. Ownership: everything added is copied; ftk_message_free frees all of it.
 * A decoded message's tensors are views into its own blob, freed with the message. */
#ifndef FTK_MESSAGE_H
#define FTK_MESSAGE_H

#include <stddef.h>
#include <stdint.h>
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Largest JSON header accepted anywhere (stream or safetensors file). */
#define FTK_MAX_HEADER_BYTES ((uint64_t)100 * 1000 * 1000)
/* HF ignore_index: label value of tokens that carry no loss. */
#define FTK_IGNORE_INDEX (-100)

struct ftk_meta_kv {
    char *key;
    char *value;
};

struct ftk_named_tensor {
    char *name;
    struct ftk_tensor t;
};

struct ftk_message {
    struct ftk_meta_kv *meta;
    size_t n_meta, cap_meta;
    struct ftk_named_tensor *tensors;
    size_t n_tensors, cap_tensors;
    void *blob;       /* decoded messages: the buffer the tensors point into */
    size_t blob_len;
};

FTK_API void ftk_message_init(struct ftk_message *m);
FTK_API void ftk_message_free(struct ftk_message *m);   /* and leaves it initialised, empty */

/* Metadata. set replaces an existing key. get returns NULL when absent. */
FTK_API ftk_status ftk_message_set_meta(struct ftk_message *m, const char *key, const char *value);
FTK_API ftk_status ftk_message_set_meta_int(struct ftk_message *m, const char *key, int64_t value);
FTK_API const char *ftk_message_get_meta(const struct ftk_message *m, const char *key);
/* Parses an integer metadata value; FTK_E_NOTFOUND or FTK_E_FORMAT naming the key. */
FTK_API ftk_status ftk_message_get_meta_int(const struct ftk_message *m, const char *key, int64_t *out);
static inline const char *ftk_message_kind(const struct ftk_message *m) { return ftk_message_get_meta(m, "kind"); }

/* Adds (or replaces) a tensor, copying `data` (NULL: zero-filled). `out`, if given, receives
 * the stored tensor so the caller can fill it. */
FTK_API ftk_status ftk_message_add(struct ftk_message *m, const char *name, enum ftk_dtype dt,
                                   int ndim, const int64_t *shape, const void *data,
                                   struct ftk_tensor **out);
FTK_API struct ftk_tensor *ftk_message_find(const struct ftk_message *m, const char *name);
/* Finds `name` and checks its dtype and rank (ndim < 0: any rank). Errors name the tensor. */
FTK_API ftk_status ftk_message_get(const struct ftk_message *m, const char *name, enum ftk_dtype dt,
                                   int ndim, struct ftk_tensor **out);
/* Removes a tensor; returns 1 if it was there. */
FTK_API int ftk_message_remove(struct ftk_message *m, const char *name);
/* Deep copy of src into an initialised, empty dst. */
FTK_API ftk_status ftk_message_copy(struct ftk_message *dst, const struct ftk_message *src);

/* Serialises as a safetensors blob: u64 LE header length, JSON header padded with spaces so
 * the data starts 8-byte aligned, then the tensors' bytes in insertion order. *out is malloc'd. */
FTK_API ftk_status ftk_message_encode(const struct ftk_message *m, uint8_t **out, size_t *out_len);

/* Parses a whole safetensors blob. On success the message takes `blob` (malloc'd) when
 * take_ownership is set; otherwise tensors are views into `blob`, which must outlive `m`.
 * `where` names the source in error messages ("message 3", "model.safetensors"). */
FTK_API ftk_status ftk_message_decode(struct ftk_message *m, void *blob, size_t len,
                                      int take_ownership, const char *where);

/* Validates a JSON header against a data buffer of `data_len` bytes and fills `m` with views
 * into `data` (shared by decode and the safetensors reader). */
FTK_API ftk_status ftk_message_parse_header(struct ftk_message *m, const char *json, size_t json_len,
                                            const uint8_t *data, size_t data_len, const char *where);
/* Byte length of the data buffer a header describes (its largest data_offsets end), after a
 * light parse; used by stream readers to know how much to read. */
FTK_API ftk_status ftk_message_header_data_len(const char *json, size_t json_len, uint64_t *out,
                                               const char *where);

#ifdef __cplusplus
}
#endif
#endif
