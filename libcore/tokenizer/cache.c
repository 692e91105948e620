/* libcore/tokenizer/cache.c: a per-thread cache of short pre-tokens -> ids (HF's BPE keeps a
 * similar cache of words). Each thread that encodes with a tokenizer gets its own cache through
 * a pthread key owned by the tokenizer, so encoding stays lock-free; the mutex only guards the
 * list of caches that ftk_tokenizer_free releases. A full cache is simply emptied. */
#include <stdlib.h>
#include <string.h>
#include "tokenizer-impl.h"

#define SLOTS 16384          /* power of two; emptied when half full */
#define ARENA (1u << 20)     /* key bytes and ids */

struct tk_cache {
    struct tk_cache_slot { uint64_t h; uint32_t off; uint16_t klen, nids; } slot[SLOTS];
    size_t used;
    unsigned char *arena;
    size_t arena_n;
    struct tk_caches *owner;
    struct tk_cache *prev, *next;
};

static void unlink_cache(struct tk_cache *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        c->owner->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
}

/* pthread destructor: the thread ends while the tokenizer lives on */
static void cache_destroy(void *p)
{
    struct tk_cache *c = p;
    pthread_mutex_lock(&c->owner->mu);
    unlink_cache(c);
    pthread_mutex_unlock(&c->owner->mu);
    free(c->arena);
    free(c);
}

int tk_caches_init(struct tk_caches *cs)
{
    cs->head = NULL;
    if (pthread_mutex_init(&cs->mu, NULL) != 0)
        return -1;
    if (pthread_key_create(&cs->key, cache_destroy) != 0) {
        pthread_mutex_destroy(&cs->mu);
        return -1;
    }
    cs->ok = 1;
    return 0;
}

void tk_caches_free(struct tk_caches *cs)
{
    if (!cs->ok)
        return;
    pthread_key_delete(cs->key); /* destructors of other threads will not run any more */
    for (struct tk_cache *c = cs->head, *n; c; c = n) {
        n = c->next;
        free(c->arena);
        free(c);
    }
    pthread_mutex_destroy(&cs->mu);
    cs->ok = 0;
}

struct tk_cache *tk_cache_get(struct tk_caches *cs)
{
    if (!cs->ok)
        return NULL;
    struct tk_cache *c = pthread_getspecific(cs->key);
    if (c)
        return c;
    c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->arena = malloc(ARENA);
    if (!c->arena || pthread_setspecific(cs->key, c) != 0) {
        free(c->arena);
        free(c);
        return NULL; /* no cache: slower, still right */
    }
    c->owner = cs;
    pthread_mutex_lock(&cs->mu);
    c->next = cs->head;
    if (cs->head)
        cs->head->prev = c;
    cs->head = c;
    pthread_mutex_unlock(&cs->mu);
    return c;
}

static void cache_clear(struct tk_cache *c)
{
    memset(c->slot, 0, sizeof c->slot);
    c->used = 0;
    c->arena_n = 0;
}

int tk_cache_lookup(const struct tk_cache *c, const char *s, size_t n, struct ftk_ids *out)
{
    uint64_t h = tk_hash_bytes(s, n) | 1; /* 0 marks an empty slot */
    size_t i = (size_t)h & (SLOTS - 1);
    for (;;) {
        const struct tk_cache_slot *sl = &c->slot[i];
        if (sl->h == 0)
            return 0;
        if (sl->h == h && sl->klen == n && memcmp(c->arena + sl->off, s, n) == 0) {
            const unsigned char *p = c->arena + sl->off + ((n + 3) & ~(size_t)3);
            for (size_t k = 0; k < sl->nids; k++) {
                int32_t id;
                memcpy(&id, p + 4 * k, 4);
                if (ftk_ids_push(out, id) != FTK_OK)
                    return -1;
            }
            return 1;
        }
        i = (i + 1) & (SLOTS - 1);
    }
}

void tk_cache_store(struct tk_cache *c, const char *s, size_t n, const int32_t *ids, size_t nids)
{
    if (n > UINT16_MAX || nids > UINT16_MAX)
        return;
    size_t need = ((n + 3) & ~(size_t)3) + 4 * nids;
    if (need > ARENA / 4)
        return;
    if (c->used * 2 >= SLOTS || c->arena_n + need > ARENA)
        cache_clear(c);
    uint64_t h = tk_hash_bytes(s, n) | 1;
    size_t i = (size_t)h & (SLOTS - 1);
    while (c->slot[i].h != 0) {
        if (c->slot[i].h == h && c->slot[i].klen == n && memcmp(c->arena + c->slot[i].off, s, n) == 0)
            return;
        i = (i + 1) & (SLOTS - 1);
    }
    unsigned char *p = c->arena + c->arena_n;
    memcpy(p, s, n);
    memcpy(p + ((n + 3) & ~(size_t)3), ids, 4 * nids);
    c->slot[i] = (struct tk_cache_slot){h, (uint32_t)c->arena_n, (uint16_t)n, (uint16_t)nids};
    c->arena_n += (need + 7) & ~(size_t)7;
    c->used++;
}
