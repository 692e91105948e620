/* libcore/tokenizer/encode.c: ftk_tokenizer_encode, the pipeline of HF
 * Tokenizer::encode_single_sequence: added tokens (raw), normalizer, added tokens (normalized),
 * pre-tokenizer, model, then the post-processor's special tokens. All scratch is per call, so a
 * const tokenizer can encode from many threads. */
#include <stdlib.h>
#include <string.h>
#include "tokenizer-impl.h"

ftk_status ftk_ids_push(struct ftk_ids *v, int32_t id)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        int32_t *p = realloc(v->ids, cap * sizeof *p);
        FTK_FAIL_IF(!p, FTK_E_NOMEM, "tokenizer: out of memory (%zu ids)", cap);
        v->ids = p;
        v->cap = cap;
    }
    v->ids[v->n++] = id;
    return FTK_OK;
}

void ftk_ids_free(struct ftk_ids *v)
{
    if (!v)
        return;
    free(v->ids);
    v->ids = NULL;
    v->n = v->cap = 0;
}

struct enc_work {
    struct tk_match_ctx mc;
    struct tk_list norm, pieces, tmp;
    struct tk_runs runs;
    struct tk_added_splits raw, nsplit;
    struct tk_bpe_work bpe;
    struct tk_cache *cache; /* this thread's, or NULL */
};

static void work_free(struct enc_work *w)
{
    tk_match_ctx_free(&w->mc);
    tk_list_free(&w->norm);
    tk_list_free(&w->pieces);
    tk_list_free(&w->tmp);
    free(w->runs.v);
    free(w->raw.v);
    free(w->nsplit.v);
    tk_bpe_work_free(&w->bpe);
}

/* Pre-tokenizes and runs the model over one piece of normalized text. */
static ftk_status encode_piece(const struct ftk_tokenizer *t, struct enc_work *w, const char *s,
                               size_t n, int first, struct ftk_ids *out)
{
    if (n == 0)
        return FTK_OK;
    if (!t->pretok)
        return tk_bpe_tokenize(&t->bpe, &w->bpe, s, n, out);
    tk_list_clear(&w->pieces);
    FTK_TRY(tk_list_push(&w->pieces, s, n, first));
    FTK_TRY(tk_pretokenize(t->pretok, &w->mc, &w->pieces, &w->tmp, &w->runs));
    for (size_t i = 0; i < w->pieces.n; i++) {
        const char *p = w->pieces.b + w->pieces.s[i].off;
        size_t len = w->pieces.s[i].len;
        if (!w->cache || len > TK_CACHE_MAX_WORD) {
            FTK_TRY(tk_bpe_tokenize(&t->bpe, &w->bpe, p, len, out));
            continue;
        }
        int hit = tk_cache_lookup(w->cache, p, len, out);
        FTK_FAIL_IF(hit < 0, FTK_E_NOMEM, "tokenizer: out of memory");
        if (hit)
            continue;
        size_t n0 = out->n;
        FTK_TRY(tk_bpe_tokenize(&t->bpe, &w->bpe, p, len, out));
        tk_cache_store(w->cache, p, len, out->ids + n0, out->n - n0);
    }
    return FTK_OK;
}

static ftk_status encode(const struct ftk_tokenizer *t, struct enc_work *w, const char *text,
                         size_t len, struct ftk_ids *out)
{
    FTK_TRY(tk_added_find(&t->trie_raw, t->added, text, len, &w->raw));
    for (size_t i = 0; i < w->raw.n; i++) {
        const struct tk_added_split *sp = &w->raw.v[i];
        if (sp->tok >= 0) {
            FTK_TRY(ftk_ids_push(out, t->added[sp->tok].id));
            continue;
        }
        if (sp->b == sp->a)
            continue;
        int first = sp->a == 0;
        const char *s = text + sp->a;
        size_t n = sp->b - sp->a;
        if (t->normalizer) {
            FTK_TRY(tk_normalize(t->normalizer, &w->mc, s, n, &w->norm, &w->tmp, &w->runs));
            s = w->norm.b;
            n = w->norm.bn;
        }
        if (t->trie_norm.empty) {
            FTK_TRY(encode_piece(t, w, s, n, first, out));
            continue;
        }
        FTK_TRY(tk_added_find(&t->trie_norm, t->added, s, n, &w->nsplit));
        for (size_t j = 0; j < w->nsplit.n; j++) {
            const struct tk_added_split *q = &w->nsplit.v[j];
            if (q->tok >= 0)
                FTK_TRY(ftk_ids_push(out, t->added[q->tok].id));
            else
                FTK_TRY(encode_piece(t, w, s + q->a, q->b - q->a, first && q->a == 0, out));
        }
    }
    return FTK_OK;
}

ftk_status ftk_tokenizer_encode(const struct ftk_tokenizer *t, const char *text, size_t len,
                                int add_special, struct ftk_ids *out)
{
    size_t bad = tk_utf8_invalid_at(text, len);
    FTK_FAIL_IF(bad != (size_t)-1, FTK_E_FORMAT, "tokenizer: invalid UTF-8 at byte offset %zu (0x%02x)",
                bad, (unsigned char)text[bad]);
    FTK_FAIL_IF(len > UINT32_MAX / 4, FTK_E_INVALID, "tokenizer: text of %zu bytes is too long", len);
    size_t n0 = out->n;
    if (add_special)
        for (size_t i = 0; i < t->post.prefix.n; i++)
            FTK_TRY(ftk_ids_push(out, t->post.prefix.ids[i]));
    struct enc_work w = {0};
    if (t->pretok) /* words are short and repeat; without a pre-tokenizer a text is one word */
        w.cache = tk_cache_get((struct tk_caches *)&t->caches);
    ftk_status st = encode(t, &w, text, len, out);
    work_free(&w);
    if (st == FTK_OK && add_special)
        for (size_t i = 0; i < t->post.suffix.n && st == FTK_OK; i++)
            st = ftk_ids_push(out, t->post.suffix.ids[i]);
    if (st != FTK_OK)
        out->n = n0;
    return st;
}
