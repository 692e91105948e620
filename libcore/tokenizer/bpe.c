/* libcore/tokenizer/bpe.c: the BPE model, as HF tokenizers/src/models/bpe/{model,word}.rs:
 * characters (with byte_fallback / unk / fuse_unk) become symbols, then the pair of lowest merge
 * rank (leftmost on ties) is merged until none is left, using a min-heap and a linked list. */
#include <stdlib.h>
#include <string.h>
#include "tokenizer-impl.h"

static ftk_status grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return FTK_OK;
    size_t c = *cap ? *cap : 64;
    while (c < need)
        c *= 2;
    void *q = realloc(*p, c * elem);
    FTK_FAIL_IF(!q, FTK_E_NOMEM, "tokenizer: out of memory");
    *p = q;
    *cap = c;
    return FTK_OK;
}

static ftk_status add_sym(struct tk_bpe_work *w, int32_t id, size_t len)
{
    FTK_TRY(grow((void **)&w->sym, &w->capsym, w->nsym + 1, sizeof *w->sym));
    int32_t i = (int32_t)w->nsym;
    w->sym[i] = (struct tk_sym){id, i - 1, i + 1, (uint32_t)len};
    w->nsym++;
    return FTK_OK;
}

/* min-heap on (rank, pos): HF's Merge ordering, lowest rank first, then leftmost */
static inline int merge_less(const struct tk_merge *a, const struct tk_merge *b)
{
    return a->key < b->key;
}
#define MERGE_KEY(rank, pos) ((uint64_t)(rank) << 32 | (uint32_t)(pos))

static void sift_down(struct tk_merge *h, size_t n, size_t i)
{
    struct tk_merge x = h[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && merge_less(&h[c + 1], &h[c]))
            c++;
        if (!merge_less(&h[c], &x))
            break;
        h[i] = h[c];
        i = c;
    }
    h[i] = x;
}

static ftk_status heap_push(struct tk_bpe_work *w, struct tk_merge m)
{
    FTK_TRY(grow((void **)&w->heap, &w->capheap, w->nheap + 1, sizeof *w->heap));
    size_t i = w->nheap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!merge_less(&m, &w->heap[p]))
            break;
        w->heap[i] = w->heap[p];
        i = p;
    }
    w->heap[i] = m;
    return FTK_OK;
}

static struct tk_merge heap_pop(struct tk_bpe_work *w)
{
    struct tk_merge top = w->heap[0];
    w->nheap--;
    if (w->nheap) {
        w->heap[0] = w->heap[w->nheap];
        sift_down(w->heap, w->nheap, 0);
    }
    return top;
}

/* (a, b) -> rank and merged id; 0 when the pair does not merge. */
static inline int merge_get(const struct tk_bpe *m, int32_t a, int32_t b, uint32_t *rank, int32_t *id)
{
    if (m->pm) {
        uint64_t p = (uint64_t)(uint32_t)a << 18 | (uint32_t)b;
        size_t i = (size_t)((p * 0x9E3779B97F4A7C15ull) >> 32) & m->pm_mask;
        for (;;) {
            uint64_t e = m->pm[i];
            if (e == UINT64_MAX)
                return 0;
            if (e >> 20 == p) {
                *rank = (uint32_t)(e & 0xFFFFF);
                *id = m->merge_new[*rank];
                return 1;
            }
            i = (i + 1) & m->pm_mask;
        }
    }
    const struct tk_u64map_entry *e = tk_u64map_get(&m->merges, (uint64_t)(uint32_t)a << 32 | (uint32_t)b);
    if (!e)
        return 0;
    *rank = e->a;
    *id = e->b;
    return 1;
}

ftk_status tk_bpe_pack_merges(struct tk_bpe *m)
{
    size_t nm = 0;
    for (size_t i = 0; i < m->merges.cap; i++)
        if (m->merges.e[i].k != UINT64_MAX && m->merges.e[i].a + 1 > nm)
            nm = m->merges.e[i].a + 1;
    if (m->nvocab > (1u << 18) || nm > (1u << 20))
        return FTK_OK; /* stay with the general map */
    size_t cap = 16;
    while (cap < m->merges.n + m->merges.n / 2 + 1)
        cap *= 2;
    m->pm = malloc(cap * sizeof *m->pm);
    m->merge_new = malloc((nm ? nm : 1) * sizeof *m->merge_new);
    FTK_FAIL_IF(!m->pm || !m->merge_new, FTK_E_NOMEM, "tokenizer: out of memory (merges)");
    memset(m->pm, 0xFF, cap * sizeof *m->pm);
    m->pm_mask = cap - 1;
    for (size_t i = 0; i < m->merges.cap; i++) {
        const struct tk_u64map_entry *e = &m->merges.e[i];
        if (e->k == UINT64_MAX)
            continue;
        uint64_t p = (e->k >> 32) << 18 | (e->k & 0xFFFFFFFFu);
        size_t j = (size_t)((p * 0x9E3779B97F4A7C15ull) >> 32) & m->pm_mask;
        while (m->pm[j] != UINT64_MAX)
            j = (j + 1) & m->pm_mask;
        m->pm[j] = p << 20 | e->a;
        m->merge_new[e->a] = e->b;
    }
    tk_u64map_free(&m->merges);
    return FTK_OK;
}

/* Word::merge_all (no dropout). */
static ftk_status merge_all(const struct tk_bpe *m, struct tk_bpe_work *w)
{
    struct tk_sym *sym = w->sym;
    size_t n = w->nsym;
    w->nheap = 0;
    FTK_TRY(grow((void **)&w->heap, &w->capheap, n, sizeof *w->heap));
    for (size_t i = 0; i + 1 < n; i++) {
        uint32_t rank;
        int32_t id;
        if (merge_get(m, sym[i].id, sym[i + 1].id, &rank, &id))
            w->heap[w->nheap++] = (struct tk_merge){MERGE_KEY(rank, i), id, sym[i].id, sym[i + 1].id};
    }
    for (size_t i = w->nheap / 2; i-- > 0;) /* heapify */
        sift_down(w->heap, w->nheap, i);
    while (w->nheap) {
        struct tk_merge top = heap_pop(w);
        uint32_t pos = (uint32_t)top.key;
        struct tk_sym *cur = &w->sym[pos];
        if (cur->len == 0 || cur->next >= (int32_t)n)
            continue;
        int32_t next = cur->next;
        struct tk_sym right = w->sym[next];
        if (cur->id != top.left || right.id != top.right) {
            /* the pair changed since the push: HF still merges when the new pair's merge makes
             * the same token (Word::merge_all compares new ids only) */
            uint32_t rank;
            int32_t id;
            if (!merge_get(m, cur->id, right.id, &rank, &id) || id != top.id)
                continue; /* stale entry */
        }
        cur->id = top.id;
        cur->len += right.len;
        cur->next = right.next;
        w->sym[next].len = 0;
        if (right.next < (int32_t)n)
            w->sym[right.next].prev = (int32_t)pos;
        uint32_t rank;
        int32_t id;
        if (cur->prev >= 0) {
            if (merge_get(m, w->sym[cur->prev].id, cur->id, &rank, &id)) {
                int32_t prev = cur->prev;
                FTK_TRY(heap_push(w, (struct tk_merge){MERGE_KEY(rank, prev), id,
                                                        w->sym[prev].id, cur->id}));
            }
        }
        if (cur->next < (int32_t)n) {
            if (merge_get(m, cur->id, w->sym[cur->next].id, &rank, &id))
                FTK_TRY(heap_push(w, (struct tk_merge){MERGE_KEY(rank, pos), id, cur->id,
                                                        w->sym[cur->next].id}));
        }
    }
    return FTK_OK;
}

static int32_t char_id(const struct tk_bpe *m, struct tk_bpe_work *w, const char *c, size_t clen,
                       int is_first, int is_last, size_t *slen, const char **sp)
{
    if (!m->prefix && !m->suffix) {
        *sp = c;
        *slen = clen;
        return tk_strmap_get(&m->vocab, c, clen);
    }
    size_t need = clen + m->prefix_len + m->suffix_len, k = 0;
    if (need > w->tmpcap) {
        char *t = realloc(w->tmp, need * 2);
        if (!t)
            return -2;
        w->tmp = t;
        w->tmpcap = need * 2;
    }
    if (!is_first && m->prefix) {
        memcpy(w->tmp, m->prefix, m->prefix_len);
        k = m->prefix_len;
    }
    memcpy(w->tmp + k, c, clen);
    k += clen;
    if (is_last && m->suffix) {
        memcpy(w->tmp + k, m->suffix, m->suffix_len);
        k += m->suffix_len;
    }
    *sp = w->tmp;
    *slen = k;
    return tk_strmap_get(&m->vocab, w->tmp, k);
}

/* BPE::merge_word and Word::merge_all over s[0..n). */
static ftk_status tokenize_word(const struct tk_bpe *m, struct tk_bpe_work *w, const char *s, size_t n,
                                struct ftk_ids *out)
{
    w->nsym = 0;
    int32_t unk = -1;
    size_t unk_len = 0;
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        size_t clen = (size_t)tk_utf8_dec((const unsigned char *)s + i, n - i, &cp);
        const char *sp = s + i;
        size_t slen = clen;
        int32_t id = m->bmp_id && cp < 0x10000 ? m->bmp_id[cp]
                     : char_id(m, w, s + i, clen, i == 0, i + clen == n, &slen, &sp);
        FTK_FAIL_IF(id == -2, FTK_E_NOMEM, "tokenizer: out of memory");
        if (id >= 0) {
            if (unk >= 0) {
                FTK_TRY(add_sym(w, unk, unk_len));
                unk = -1;
            }
            FTK_TRY(add_sym(w, id, clen));
            i += clen;
            continue;
        }
        if (m->byte_fallback) {
            int ok = 1;
            for (size_t j = 0; j < slen; j++)
                if (m->byte_ids[(unsigned char)sp[j]] < 0)
                    ok = 0;
            if (ok) {
                /* HF adds the byte tokens without flushing a pending unk first */
                size_t nb = slen;
                unsigned char bytes[64];
                if (nb > sizeof bytes)
                    nb = sizeof bytes; /* a single character with prefix/suffix: never this long */
                memcpy(bytes, sp, nb);
                for (size_t j = 0; j < nb; j++)
                    FTK_TRY(add_sym(w, m->byte_ids[bytes[j]], 1));
                i += clen;
                continue;
            }
        }
        if (m->unk_id >= 0) {
            if (unk >= 0 && m->fuse_unk) {
                unk_len += clen;
            } else {
                if (unk >= 0)
                    FTK_TRY(add_sym(w, unk, unk_len));
                unk = m->unk_id;
                unk_len = clen;
            }
        }
        i += clen;
    }
    if (unk >= 0)
        FTK_TRY(add_sym(w, unk, unk_len));
    if (w->nsym == 0)
        return FTK_OK;
    w->sym[w->nsym - 1].next = (int32_t)w->nsym; /* sentinel: past the end */
    FTK_TRY(merge_all(m, w));
    for (size_t k = 0; k < w->nsym; k++)
        if (w->sym[k].len)
            FTK_TRY(ftk_ids_push(out, w->sym[k].id));
    return FTK_OK;
}

#define META "\xE2\x96\x81" /* U+2581, SentencePiece's space */

ftk_status tk_bpe_tokenize(const struct tk_bpe *m, struct tk_bpe_work *w, const char *s, size_t n,
                           struct ftk_ids *out)
{
    if (n == 0)
        return FTK_OK;
    if (m->ignore_merges) {
        int32_t id = tk_strmap_get(&m->vocab, s, n);
        if (id >= 0)
            return ftk_ids_push(out, id);
    }
    if (!m->split_meta || n < 32)
        return tokenize_word(m, w, s, n, out);
    /* SentencePiece-style BPE without a pre-tokenizer sees a whole text as one word. When no
     * token can hold a character followed by U+2581 (split_meta, checked at load), no merge
     * crosses such a place, so the pieces between them merge independently: same result,
     * small heaps. */
    size_t a = 0;
    for (size_t i = 1; i + 3 <= n; i++) {
        if (memcmp(s + i, META, 3) != 0)
            continue;
        if (i >= 3 && memcmp(s + i - 3, META, 3) == 0)
            continue;
        FTK_TRY(tokenize_word(m, w, s + a, i - a, out));
        a = i;
        i += 2;
    }
    return tokenize_word(m, w, s + a, n - a, out);
}

void tk_bpe_work_free(struct tk_bpe_work *w)
{
    free(w->sym);
    free(w->heap);
    free(w->tmp);
    memset(w, 0, sizeof *w);
}

void tk_bpe_free(struct tk_bpe *m)
{
    free(m->vstore);
    free(m->voff);
    free(m->vlen);
    tk_strmap_free(&m->vocab);
    tk_u64map_free(&m->merges);
    free(m->prefix);
    free(m->suffix);
    free(m->bmp_id);
    free(m->pm);
    free(m->merge_new);
    memset(m, 0, sizeof *m);
}
