/* libcore/tokenizer/util.c: string lists, hash maps, UTF-8 and Unicode predicates for the
 * tokenizer (tokenizer-impl.h). */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>
#include "tokenizer-impl.h"

/* ---- string lists ---------------------------------------------------------------------------- */

ftk_status tk_list_reserve(struct tk_list *l, size_t bytes)
{
    if (l->bn + bytes <= l->bcap)
        return FTK_OK;
    size_t cap = l->bcap ? l->bcap : 256;
    while (cap < l->bn + bytes)
        cap *= 2;
    char *b = realloc(l->b, cap);
    FTK_FAIL_IF(!b, FTK_E_NOMEM, "tokenizer: out of memory (%zu bytes)", cap);
    l->b = b;
    l->bcap = cap;
    return FTK_OK;
}

ftk_status tk_list_bytes(struct tk_list *l, const char *p, size_t n)
{
    FTK_TRY(tk_list_reserve(l, n));
    if (n)
        memcpy(l->b + l->bn, p, n);
    l->bn += n;
    return FTK_OK;
}

ftk_status tk_list_span(struct tk_list *l, size_t off, size_t len, int first)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        struct tk_span *s = realloc(l->s, cap * sizeof *s);
        FTK_FAIL_IF(!s, FTK_E_NOMEM, "tokenizer: out of memory");
        l->s = s;
        l->cap = cap;
    }
    FTK_FAIL_IF(off + len > UINT32_MAX, FTK_E_INVALID, "tokenizer: text longer than 4 GiB");
    l->s[l->n++] = (struct tk_span){(uint32_t)off, (uint32_t)len, (uint8_t)(first != 0)};
    return FTK_OK;
}

ftk_status tk_list_push(struct tk_list *l, const char *p, size_t n, int first)
{
    size_t off = l->bn;
    FTK_TRY(tk_list_bytes(l, p, n));
    return tk_list_span(l, off, n, first);
}

void tk_list_free(struct tk_list *l)
{
    free(l->b);
    free(l->s);
    memset(l, 0, sizeof *l);
}

/* ---- hash maps ------------------------------------------------------------------------------- */

/* 64-bit multiply-mix over 8-byte words (wyhash-like; speed matters more than quality here). */
uint64_t tk_hash_bytes(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xC2B2AE3D27D4EB4Full);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDull;
        h ^= h >> 32;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    for (size_t i = 0; i < n; i++)
        w |= (uint64_t)s[i] << (8 * i);
    h = (h ^ w) * 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 29;
    h *= 0x9E3779B97F4A7C15ull;
    h ^= h >> 32;
    return h;
}

static size_t pow2_at_least(size_t n)
{
    size_t c = 16;
    while (c < n)
        c *= 2;
    return c;
}

ftk_status tk_strmap_init(struct tk_strmap *m, size_t expect)
{
    m->cap = pow2_at_least(expect * 2 + 1);
    m->n = 0;
    m->e = calloc(m->cap, sizeof *m->e);
    FTK_FAIL_IF(!m->e, FTK_E_NOMEM, "tokenizer: out of memory (vocab map)");
    return FTK_OK;
}

static ftk_status strmap_grow(struct tk_strmap *m)
{
    struct tk_strmap nm = {.cap = m->cap * 2};
    nm.e = calloc(nm.cap, sizeof *nm.e);
    FTK_FAIL_IF(!nm.e, FTK_E_NOMEM, "tokenizer: out of memory (vocab map)");
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->e[i].k)
            continue;
        size_t j = m->e[i].h & (nm.cap - 1);
        while (nm.e[j].k)
            j = (j + 1) & (nm.cap - 1);
        nm.e[j] = m->e[i];
    }
    nm.n = m->n;
    free(m->e);
    *m = nm;
    return FTK_OK;
}

ftk_status tk_strmap_put(struct tk_strmap *m, const char *k, size_t klen, int32_t v)
{
    if ((m->n + 1) * 2 > m->cap)
        FTK_TRY(strmap_grow(m));
    uint32_t h = (uint32_t)tk_hash_bytes(k, klen);
    size_t i = h & (m->cap - 1);
    while (m->e[i].k) {
        if (m->e[i].h == h && m->e[i].klen == klen && memcmp(m->e[i].k, k, klen) == 0) {
            m->e[i].v = v;
            return FTK_OK;
        }
        i = (i + 1) & (m->cap - 1);
    }
    m->e[i] = (struct tk_strmap_entry){k, (uint32_t)klen, v, h};
    m->n++;
    return FTK_OK;
}

int32_t tk_strmap_get(const struct tk_strmap *m, const char *k, size_t klen)
{
    if (!m->cap)
        return -1;
    uint32_t h = (uint32_t)tk_hash_bytes(k, klen);
    size_t i = h & (m->cap - 1);
    while (m->e[i].k) {
        if (m->e[i].h == h && m->e[i].klen == klen && memcmp(m->e[i].k, k, klen) == 0)
            return m->e[i].v;
        i = (i + 1) & (m->cap - 1);
    }
    return -1;
}

void tk_strmap_free(struct tk_strmap *m)
{
    free(m->e);
    memset(m, 0, sizeof *m);
}

ftk_status tk_u64map_init(struct tk_u64map *m, size_t expect)
{
    m->cap = pow2_at_least(expect * 2 + 1);
    m->n = 0;
    m->e = malloc(m->cap * sizeof *m->e);
    FTK_FAIL_IF(!m->e, FTK_E_NOMEM, "tokenizer: out of memory (merge map)");
    for (size_t i = 0; i < m->cap; i++)
        m->e[i].k = UINT64_MAX;
    return FTK_OK;
}

ftk_status tk_u64map_put(struct tk_u64map *m, uint64_t k, uint32_t a, int32_t b)
{
    if ((m->n + 1) * 2 > m->cap) {
        struct tk_u64map nm;
        FTK_TRY(tk_u64map_init(&nm, m->cap));
        for (size_t i = 0; i < m->cap; i++)
            if (m->e[i].k != UINT64_MAX)
                FTK_TRY(tk_u64map_put(&nm, m->e[i].k, m->e[i].a, m->e[i].b));
        free(m->e);
        *m = nm;
    }
    uint64_t h = k * 0x9E3779B97F4A7C15ull;
    size_t mask = m->cap - 1, i = (size_t)(h >> 32) & mask;
    while (m->e[i].k != UINT64_MAX && m->e[i].k != k)
        i = (i + 1) & mask;
    if (m->e[i].k == UINT64_MAX)
        m->n++;
    m->e[i] = (struct tk_u64map_entry){k, a, b};
    return FTK_OK;
}

void tk_u64map_free(struct tk_u64map *m)
{
    free(m->e);
    memset(m, 0, sizeof *m);
}

/* ---- UTF-8 ----------------------------------------------------------------------------------- */

int tk_utf8_enc(uint32_t cp, char out[4])
{
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | cp >> 6); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12); out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18); out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3F)); out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Length of the valid sequence at p, or 0 with *bad = length of the maximal ill-formed subpart
 * (Unicode 3.9, "U+FFFD substitution of maximal subparts", which Rust follows). */
static size_t utf8_seq(const unsigned char *p, size_t n, size_t *bad)
{
    unsigned c = p[0];
    if (c < 0x80)
        return 1;
    size_t need;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c == 0xE0) { need = 2; lo = 0xA0; }
    else if (c >= 0xE1 && c <= 0xEC) need = 2;
    else if (c == 0xED) { need = 2; hi = 0x9F; }
    else if (c >= 0xEE && c <= 0xEF) need = 2;
    else if (c == 0xF0) { need = 3; lo = 0x90; }
    else if (c >= 0xF1 && c <= 0xF3) need = 3;
    else if (c == 0xF4) { need = 3; hi = 0x8F; }
    else { *bad = 1; return 0; }
    for (size_t i = 1; i <= need; i++) {
        if (i >= n || p[i] < lo || p[i] > hi) {
            *bad = i;
            return 0;
        }
        lo = 0x80;
        hi = 0xBF;
    }
    return need + 1;
}

size_t tk_utf8_invalid_at(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        size_t bad, k = utf8_seq(p + i, n - i, &bad);
        if (!k)
            return i;
        i += k;
    }
    return (size_t)-1;
}

ftk_status tk_utf8_lossy(const char *s, size_t n, struct tk_list *out)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, run = 0;
    while (i < n) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        size_t bad, k = utf8_seq(p + i, n - i, &bad);
        if (k) {
            i += k;
            continue;
        }
        FTK_TRY(tk_list_bytes(out, s + run, i - run));
        FTK_TRY(tk_list_bytes(out, "\xEF\xBF\xBD", 3));
        i += bad;
        run = i;
    }
    return tk_list_bytes(out, s + run, n - run);
}

/* ---- Unicode predicates ---------------------------------------------------------------------- */

int tk_is_whitespace(uint32_t c)
{
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

int tk_is_alnum_word(uint32_t c)
{
    if (c < 0x80)
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    switch (utf8proc_category((utf8proc_int32_t)c)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME: case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_PC:
        return 1;
    default:
        return c == 0x200C || c == 0x200D;
    }
}

int tk_is_numeric(uint32_t c)
{
    if (c < 0x80)
        return c >= '0' && c <= '9';
    int cat = utf8proc_category((utf8proc_int32_t)c);
    return cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_NO;
}

int tk_is_punct(uint32_t c)
{
    if (c < 0x80)
        return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
               (c >= 123 && c <= 126);
    int cat = utf8proc_category((utf8proc_int32_t)c);
    return cat >= UTF8PROC_CATEGORY_PC && cat <= UTF8PROC_CATEGORY_PO;
}
