/* ftk/hash.h: SHA-256 (FIPS 180-4), for content hashes in stream headers. */
#ifndef FTK_HASH_H
#define FTK_HASH_H

#include <stddef.h>
#include <stdint.h>
#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ftk_sha256 {
    uint32_t h[8];
    uint64_t len;
    uint8_t buf[64];
    size_t nbuf;
};
FTK_API void ftk_sha256_init(struct ftk_sha256 *s);
FTK_API void ftk_sha256_update(struct ftk_sha256 *s, const void *data, size_t len);
FTK_API void ftk_sha256_final(struct ftk_sha256 *s, uint8_t out[32]);
/* Hex digest (64 chars + NUL) of a buffer. */
FTK_API void ftk_sha256_hex(const void *data, size_t len, char out[65]);

#ifdef __cplusplus
}
#endif
#endif
