/* libcore/tokenizer/normalizer.c: HF normalizers (tokenizers/src/normalizers/): NFC, NFD, NFKC,
 * NFKD (utf8proc), Lowercase, Strip, StripAccents, Prepend, Replace, ByteLevel and Sequence. */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>
#include "tokenizer-impl.h"

static int all_ascii(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80)
            return 0;
    return 1;
}

static ftk_status unicode_form(int type, const char *s, size_t n, struct tk_list *out)
{
    if (all_ascii(s, n)) /* every normalization form leaves ASCII alone */
        return tk_list_bytes(out, s, n);
    int opt = UTF8PROC_STABLE;
    switch (type) {
    case TK_NORM_NFC: opt |= UTF8PROC_COMPOSE; break;
    case TK_NORM_NFD: opt |= UTF8PROC_DECOMPOSE; break;
    case TK_NORM_NFKC: opt |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
    default: opt |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
    }
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &dst,
                                      (utf8proc_option_t)opt);
    FTK_FAIL_IF(r < 0, FTK_E_FORMAT, "tokenizer: normalization failed: %s",
                utf8proc_errmsg(r));
    ftk_status st = tk_list_bytes(out, (const char *)dst, (size_t)r);
    free(dst);
    return st;
}

/* Rust char::to_lowercase, one character at a time as HF's NormalizedString::lowercase does
 * (so no final-sigma rule). U+0130 is the one character whose lowercase is two. */
static ftk_status lowercase(const char *s, size_t n, struct tk_list *out)
{
    FTK_TRY(tk_list_reserve(out, n + n / 2 + 4));
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x80) {
            FTK_TRY(tk_list_reserve(out, 1));
            out->b[out->bn++] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
            i++;
            continue;
        }
        uint32_t cp;
        i += (size_t)tk_utf8_dec((const unsigned char *)s + i, n - i, &cp);
        char buf[8];
        int k;
        if (cp == 0x130) {
            memcpy(buf, "i\xCC\x87", 3);
            k = 3;
        } else {
            k = tk_utf8_enc((uint32_t)utf8proc_tolower((utf8proc_int32_t)cp), buf);
        }
        FTK_TRY(tk_list_bytes(out, buf, (size_t)k));
    }
    return FTK_OK;
}

static ftk_status strip(const char *s, size_t n, int left, int right, struct tk_list *out)
{
    size_t a = 0, b = n;
    uint32_t cp;
    while (left && a < b) {
        int k = tk_utf8_dec((const unsigned char *)s + a, b - a, &cp);
        if (!tk_is_whitespace(cp))
            break;
        a += (size_t)k;
    }
    while (right && b > a) {
        size_t p = b - 1;
        while (p > a && ((unsigned char)s[p] & 0xC0) == 0x80)
            p--;
        tk_utf8_dec((const unsigned char *)s + p, b - p, &cp);
        if (!tk_is_whitespace(cp))
            break;
        b = p;
    }
    return tk_list_bytes(out, s + a, b - a);
}

/* HF StripAccents: drops nonspacing marks (Mn). */
static ftk_status strip_accents(const char *s, size_t n, struct tk_list *out)
{
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        int k = tk_utf8_dec((const unsigned char *)s + i, n - i, &cp);
        if (cp < 0x80 || utf8proc_category((utf8proc_int32_t)cp) != UTF8PROC_CATEGORY_MN)
            FTK_TRY(tk_list_bytes(out, s + i, (size_t)k));
        i += (size_t)k;
    }
    return FTK_OK;
}

/* HF ByteLevel normalizer: every byte becomes its GPT-2 byte-alphabet character. */
static ftk_status bytelevel(const char *s, size_t n, struct tk_list *out)
{
    for (size_t i = 0; i < n; i++) {
        char u[4];
        int k = tk_utf8_enc(tk_byte_to_cp[(unsigned char)s[i]], u);
        FTK_TRY(tk_list_bytes(out, u, (size_t)k));
    }
    return FTK_OK;
}

static ftk_status apply_one(const struct tk_normalizer *nz, struct tk_match_ctx *mc, const char *s,
                            size_t n, struct tk_list *out, struct tk_runs *runs)
{
    switch (nz->type) {
    case TK_NORM_NFC: case TK_NORM_NFD: case TK_NORM_NFKC: case TK_NORM_NFKD:
        return unicode_form(nz->type, s, n, out);
    case TK_NORM_LOWERCASE:
        return lowercase(s, n, out);
    case TK_NORM_STRIP:
        return strip(s, n, nz->left, nz->right, out);
    case TK_NORM_STRIP_ACCENTS:
        return strip_accents(s, n, out);
    case TK_NORM_BYTELEVEL:
        return bytelevel(s, n, out);
    case TK_NORM_PREPEND:
        if (n)
            FTK_TRY(tk_list_bytes(out, nz->str, nz->str_len));
        return tk_list_bytes(out, s, n);
    case TK_NORM_REPLACE:
        return tk_pattern_replace(&nz->pat, mc, s, n, nz->str, nz->str_len, out, runs);
    default:
        FTK_FAIL(FTK_E_INVALID, "tokenizer: bad normalizer type %d", nz->type);
    }
}

static void swap_lists(struct tk_list *a, struct tk_list *b)
{
    struct tk_list t = *a;
    *a = *b;
    *b = t;
}

/* Applies nz to the string in `cur` (its whole buffer), leaving the result there. */
static ftk_status apply(const struct tk_normalizer *nz, struct tk_match_ctx *mc, struct tk_list *cur,
                        struct tk_list *tmp, struct tk_runs *runs)
{
    if (nz->type == TK_NORM_SEQUENCE) {
        for (size_t i = 0; i < nz->nsub; i++)
            FTK_TRY(apply(&nz->sub[i], mc, cur, tmp, runs));
        return FTK_OK;
    }
    tk_list_clear(tmp);
    FTK_TRY(apply_one(nz, mc, cur->b, cur->bn, tmp, runs));
    swap_lists(cur, tmp);
    return FTK_OK;
}

ftk_status tk_normalize(const struct tk_normalizer *nz, struct tk_match_ctx *mc, const char *s,
                        size_t n, struct tk_list *out, struct tk_list *tmp, struct tk_runs *runs)
{
    tk_list_clear(out);
    FTK_TRY(tk_list_bytes(out, s, n));
    if (nz)
        FTK_TRY(apply(nz, mc, out, tmp, runs));
    return FTK_OK;
}

void tk_normalizer_free(struct tk_normalizer *nz)
{
    if (!nz)
        return;
    for (size_t i = 0; i < nz->nsub; i++)
        tk_normalizer_free(&nz->sub[i]);
    free(nz->sub);
    free(nz->str);
    tk_pattern_free(&nz->pat);
}
