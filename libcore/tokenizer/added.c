/* libcore/tokenizer/added.c: splitting text on added tokens, as HF AddedVocabulary
 * (tokenizers/src/tokenizer/added_vocabulary.rs): leftmost-longest matching (HF uses
 * aho-corasick with MatchKind::LeftmostLongest), then single_word, lstrip and rstrip. */
#include <stdlib.h>
#include <string.h>
#include "tokenizer-impl.h"

static ftk_status trie_node(struct tk_trie *t, size_t *out)
{
    if (t->nnodes == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 256;
        int32_t *tok = realloc(t->tok, cap * sizeof *tok);
        FTK_FAIL_IF(!tok, FTK_E_NOMEM, "tokenizer: out of memory");
        t->tok = tok;
        t->cap = cap;
    }
    t->tok[t->nnodes] = -1;
    *out = t->nnodes++;
    return FTK_OK;
}

ftk_status tk_trie_build(struct tk_trie *t, const struct tk_added_token *toks, size_t n,
                         int normalized, const struct tk_normalizer *nz)
{
    memset(t, 0, sizeof *t);
    FTK_TRY(tk_u64map_init(&t->next, 64));
    size_t root;
    FTK_TRY(trie_node(t, &root));
    t->empty = 1;
    struct tk_list norm = {0}, tmp = {0};
    struct tk_runs runs = {0};
    struct tk_match_ctx mc = {0};
    ftk_status st = FTK_OK;
    for (size_t i = 0; i < n && st == FTK_OK; i++) {
        if (toks[i].normalized != normalized)
            continue;
        const char *c = toks[i].content;
        size_t len = toks[i].len;
        if (normalized && nz) {
            /* HF matches normalized tokens by their normalized content */
            st = tk_normalize(nz, &mc, c, len, &norm, &tmp, &runs);
            if (st != FTK_OK)
                break;
            c = norm.b;
            len = norm.bn;
        }
        if (len == 0)
            continue;
        size_t node = 0;
        for (size_t j = 0; j < len && st == FTK_OK; j++) {
            uint64_t key = (uint64_t)node << 8 | (unsigned char)c[j];
            const struct tk_u64map_entry *e = tk_u64map_get(&t->next, key);
            if (e) {
                node = (size_t)e->b;
                continue;
            }
            size_t child;
            st = trie_node(t, &child);
            if (st == FTK_OK)
                st = tk_u64map_put(&t->next, key, 0, (int32_t)child);
            node = child;
        }
        if (st == FTK_OK && t->tok[node] < 0)
            t->tok[node] = (int32_t)i;
        t->firstbyte[(unsigned char)c[0]] = 1;
        t->empty = 0;
    }
    tk_list_free(&norm);
    tk_list_free(&tmp);
    free(runs.v);
    tk_match_ctx_free(&mc);
    return st;
}

void tk_trie_free(struct tk_trie *t)
{
    tk_u64map_free(&t->next);
    free(t->tok);
    memset(t, 0, sizeof *t);
}

static ftk_status splits_push(struct tk_added_splits *o, size_t a, size_t b, int32_t tok)
{
    if (o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 16;
        struct tk_added_split *v = realloc(o->v, cap * sizeof *v);
        FTK_FAIL_IF(!v, FTK_E_NOMEM, "tokenizer: out of memory");
        o->v = v;
        o->cap = cap;
    }
    o->v[o->n++] = (struct tk_added_split){a, b, tok};
    return FTK_OK;
}

/* The character ending at s[end) / starting at s[at]. */
static uint32_t char_before(const char *s, size_t end)
{
    size_t p = end - 1;
    while (p > 0 && ((unsigned char)s[p] & 0xC0) == 0x80)
        p--;
    uint32_t cp;
    tk_utf8_dec((const unsigned char *)s + p, end - p, &cp);
    return cp;
}

ftk_status tk_added_find(const struct tk_trie *t, const struct tk_added_token *toks, const char *s,
                         size_t n, struct tk_added_splits *out)
{
    out->n = 0;
    size_t start_offset = 0, i = 0;
    if (!t->empty) {
        while (i < n) {
            if (!t->firstbyte[(unsigned char)s[i]]) {
                i++;
                continue;
            }
            /* longest token starting at i */
            size_t node = 0, best_end = 0;
            int32_t best = -1;
            for (size_t j = i; j < n; j++) {
                const struct tk_u64map_entry *e =
                    tk_u64map_get(&t->next, (uint64_t)node << 8 | (unsigned char)s[j]);
                if (!e)
                    break;
                node = (size_t)e->b;
                if (t->tok[node] >= 0) {
                    best = t->tok[node];
                    best_end = j + 1;
                }
            }
            if (best < 0) {
                i++;
                continue;
            }
            size_t start = i, stop = best_end;
            i = best_end; /* the matcher goes on after the match, whatever is done with it */
            const struct tk_added_token *tk = &toks[best];
            if (tk->single_word) {
                int start_space = start == 0 || !tk_is_alnum_word(char_before(s, start));
                uint32_t cp = 0;
                if (stop < n)
                    tk_utf8_dec((const unsigned char *)s + stop, n - stop, &cp);
                int stop_space = stop == n || !tk_is_alnum_word(cp);
                if (!start_space || !stop_space)
                    continue;
            }
            if (tk->lstrip) {
                size_t ns = start;
                while (ns > 0) {
                    uint32_t cp = char_before(s, ns);
                    if (!tk_is_whitespace(cp))
                        break;
                    size_t p = ns - 1;
                    while (p > 0 && ((unsigned char)s[p] & 0xC0) == 0x80)
                        p--;
                    ns = p;
                }
                start = ns > start_offset ? ns : start_offset;
            }
            if (tk->rstrip) {
                while (stop < n) {
                    uint32_t cp;
                    int k = tk_utf8_dec((const unsigned char *)s + stop, n - stop, &cp);
                    if (!tk_is_whitespace(cp))
                        break;
                    stop += (size_t)k;
                }
            }
            if (start_offset < start)
                FTK_TRY(splits_push(out, start_offset, start, -1));
            FTK_TRY(splits_push(out, start, stop, best));
            start_offset = stop;
        }
    }
    if (start_offset < n)
        FTK_TRY(splits_push(out, start_offset, n, -1));
    return FTK_OK;
}
