/* libcore/tokenizer/decoder.c: HF decoders (tokenizers/src/decoders/): ByteLevel, Replace,
 * ByteFallback, Fuse, Strip, Metaspace, Sequence, each a map from a list of token strings to a
 * list of strings (Decoder::decode_chain); and ftk_tokenizer_decode, which adds transformers'
 * skip_special_tokens and clean_up_tokenization. */
#include <stdlib.h>
#include <string.h>
#include "tokenizer-impl.h"

static void swap_lists(struct tk_list *a, struct tk_list *b)
{
    struct tk_list t = *a;
    *a = *b;
    *b = t;
}

static ftk_status bytelevel(struct tk_list *in, struct tk_list *tmp)
{
    /* all tokens' bytes, then one String::from_utf8_lossy */
    struct tk_list raw = {0};
    ftk_status st = FTK_OK;
    for (size_t i = 0; i < in->n && st == FTK_OK; i++) {
        const unsigned char *p = (const unsigned char *)in->b + in->s[i].off;
        size_t n = in->s[i].len, j = 0, start = raw.bn;
        int ok = 1;
        while (j < n && st == FTK_OK) {
            uint32_t cp;
            j += (size_t)tk_utf8_dec(p + j, n - j, &cp);
            int b = tk_cp_to_byte(cp);
            if (b < 0) {
                ok = 0;
                break;
            }
            char c = (char)b;
            st = tk_list_bytes(&raw, &c, 1);
        }
        if (!ok && st == FTK_OK) { /* not a byte-level token: its own UTF-8 bytes */
            raw.bn = start;
            st = tk_list_bytes(&raw, (const char *)p, n);
        }
    }
    tk_list_clear(tmp);
    if (st == FTK_OK)
        st = tk_utf8_lossy(raw.b, raw.bn, tmp);
    if (st == FTK_OK)
        st = tk_list_span(tmp, 0, tmp->bn, 0);
    tk_list_free(&raw);
    if (st == FTK_OK)
        swap_lists(in, tmp);
    return st;
}

/* "<0xAB>" -> 0xAB, else -1 */
static int byte_token(const char *p, size_t n)
{
    if (n != 6 || memcmp(p, "<0x", 3) != 0 || p[5] != '>')
        return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 :
                c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

static ftk_status flush_bytes(struct tk_list *tmp, const char *bytes, size_t nb)
{
    if (!nb)
        return FTK_OK;
    if (tk_utf8_invalid_at(bytes, nb) == (size_t)-1)
        return tk_list_push(tmp, bytes, nb, 0);
    for (size_t k = 0; k < nb; k++) /* HF: one U+FFFD per byte when not valid UTF-8 */
        FTK_TRY(tk_list_push(tmp, "\xEF\xBF\xBD", 3, 0));
    return FTK_OK;
}

static ftk_status bytefallback(struct tk_list *in, struct tk_list *tmp)
{
    tk_list_clear(tmp);
    char *bytes = malloc(in->n + 1);
    FTK_FAIL_IF(!bytes, FTK_E_NOMEM, "tokenizer: out of memory");
    size_t nb = 0;
    ftk_status st = FTK_OK;
    for (size_t i = 0; i < in->n && st == FTK_OK; i++) {
        const char *p = in->b + in->s[i].off;
        int b = byte_token(p, in->s[i].len);
        if (b >= 0) {
            bytes[nb++] = (char)b;
            continue;
        }
        st = flush_bytes(tmp, bytes, nb);
        nb = 0;
        if (st == FTK_OK)
            st = tk_list_push(tmp, p, in->s[i].len, 0);
    }
    if (st == FTK_OK)
        st = flush_bytes(tmp, bytes, nb);
    free(bytes);
    if (st == FTK_OK)
        swap_lists(in, tmp);
    return st;
}

static ftk_status fuse(struct tk_list *in, struct tk_list *tmp)
{
    tk_list_clear(tmp);
    for (size_t i = 0; i < in->n; i++)
        FTK_TRY(tk_list_bytes(tmp, in->b + in->s[i].off, in->s[i].len));
    FTK_TRY(tk_list_span(tmp, 0, tmp->bn, 0));
    swap_lists(in, tmp);
    return FTK_OK;
}

static ftk_status strip(const struct tk_decoder *d, struct tk_list *in, struct tk_list *tmp)
{
    char c[4];
    size_t cl = (size_t)tk_utf8_enc(d->ch, c);
    tk_list_clear(tmp);
    for (size_t i = 0; i < in->n; i++) {
        const char *p = in->b + in->s[i].off;
        size_t a = 0, b = in->s[i].len;
        for (int k = 0; k < d->start && b - a >= cl && memcmp(p + a, c, cl) == 0; k++)
            a += cl;
        for (int k = 0; k < d->stop && b - a >= cl && memcmp(p + b - cl, c, cl) == 0; k++)
            b -= cl;
        FTK_TRY(tk_list_push(tmp, p + a, b - a, 0));
    }
    swap_lists(in, tmp);
    return FTK_OK;
}

static ftk_status metaspace(const struct tk_decoder *d, struct tk_list *in, struct tk_list *tmp)
{
    char c[4];
    size_t cl = (size_t)tk_utf8_enc(d->ch, c);
    tk_list_clear(tmp);
    for (size_t i = 0; i < in->n; i++) {
        const char *p = in->b + in->s[i].off;
        size_t n = in->s[i].len, off = tmp->bn;
        for (size_t j = 0; j < n;) {
            if (n - j >= cl && memcmp(p + j, c, cl) == 0) {
                if (!(i == 0 && d->prepend_scheme != TK_PREPEND_NEVER))
                    FTK_TRY(tk_list_bytes(tmp, " ", 1));
                j += cl;
            } else {
                FTK_TRY(tk_list_bytes(tmp, p + j, 1));
                j++;
            }
        }
        FTK_TRY(tk_list_span(tmp, off, tmp->bn - off, 0));
    }
    swap_lists(in, tmp);
    return FTK_OK;
}

static ftk_status replace(const struct tk_decoder *d, struct tk_match_ctx *mc, struct tk_list *in,
                          struct tk_list *tmp, struct tk_runs *runs)
{
    tk_list_clear(tmp);
    for (size_t i = 0; i < in->n; i++) {
        size_t off = tmp->bn;
        FTK_TRY(tk_pattern_replace(&d->pat, mc, in->b + in->s[i].off, in->s[i].len, d->str,
                                   d->str_len, tmp, runs));
        FTK_TRY(tk_list_span(tmp, off, tmp->bn - off, 0));
    }
    swap_lists(in, tmp);
    return FTK_OK;
}

ftk_status tk_decode_chain(const struct tk_decoder *d, struct tk_match_ctx *mc, struct tk_list *toks,
                           struct tk_list *tmp, struct tk_runs *runs)
{
    switch (d->type) {
    case TK_DEC_SEQUENCE:
        for (size_t i = 0; i < d->nsub; i++)
            FTK_TRY(tk_decode_chain(&d->sub[i], mc, toks, tmp, runs));
        return FTK_OK;
    case TK_DEC_BYTELEVEL: return bytelevel(toks, tmp);
    case TK_DEC_REPLACE: return replace(d, mc, toks, tmp, runs);
    case TK_DEC_BYTEFALLBACK: return bytefallback(toks, tmp);
    case TK_DEC_FUSE: return fuse(toks, tmp);
    case TK_DEC_STRIP: return strip(d, toks, tmp);
    case TK_DEC_METASPACE: return metaspace(d, toks, tmp);
    default:
        FTK_FAIL(FTK_E_INVALID, "tokenizer: bad decoder type %d", d->type);
    }
}

void tk_decoder_free(struct tk_decoder *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->nsub; i++)
        tk_decoder_free(&d->sub[i]);
    free(d->sub);
    free(d->str);
    tk_pattern_free(&d->pat);
}

/* transformers' PreTrainedTokenizerBase.clean_up_tokenization. */
static size_t clean_up(char *s, size_t n)
{
    static const char *const from[] = {" .", " ?", " !", " ,", " ' ", " n't", " 'm", " 's", " 've", " 're"};
    static const char *const to[] = {".", "?", "!", ",", "'", "n't", "'m", "'s", "'ve", "'re"};
    for (size_t r = 0; r < sizeof from / sizeof *from; r++) {
        size_t fl = strlen(from[r]), tl = strlen(to[r]), o = 0;
        for (size_t i = 0; i < n;) {
            if (n - i >= fl && memcmp(s + i, from[r], fl) == 0) {
                memmove(s + o, to[r], tl);
                o += tl;
                i += fl;
            } else {
                s[o++] = s[i++];
            }
        }
        n = o;
    }
    s[n] = '\0';
    return n;
}

ftk_status ftk_tokenizer_decode(const struct ftk_tokenizer *t, const int32_t *ids, size_t n,
                                int skip_special, int clean, char **out, size_t *out_len)
{
    *out = NULL;
    if (out_len)
        *out_len = 0;
    struct tk_list toks = {0}, tmp = {0};
    struct tk_runs runs = {0};
    struct tk_match_ctx mc = {0};
    ftk_status st = FTK_OK;
    for (size_t i = 0; i < n && st == FTK_OK; i++) {
        const char *tok = ftk_tokenizer_id_to_token(t, ids[i]);
        if (!tok)
            continue; /* HF drops ids it does not know */
        if (skip_special && ftk_tokenizer_is_special(t, ids[i]))
            continue;
        st = tk_list_push(&toks, tok, strlen(tok), 0);
    }
    if (st == FTK_OK && t->decoder) {
        st = tk_decode_chain(t->decoder, &mc, &toks, &tmp, &runs);
    }
    if (st == FTK_OK) {
        tk_list_clear(&tmp);
        for (size_t i = 0; i < toks.n && st == FTK_OK; i++) {
            if (i && !t->decoder)
                st = tk_list_bytes(&tmp, " ", 1);
            if (st == FTK_OK)
                st = tk_list_bytes(&tmp, toks.b + toks.s[i].off, toks.s[i].len);
        }
        if (st == FTK_OK)
            st = tk_list_bytes(&tmp, "", 1); /* NUL */
    }
    if (st == FTK_OK) {
        size_t len = tmp.bn - 1;
        if (clean < 0)
            clean = t->clean_up;
        if (clean)
            len = clean_up(tmp.b, len);
        *out = tmp.b;
        if (out_len)
            *out_len = len;
        tmp.b = NULL;
    }
    tk_list_free(&toks);
    tk_list_free(&tmp);
    free(runs.v);
    tk_match_ctx_free(&mc);
    return st;
}
