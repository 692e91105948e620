/* libcore/tokenizer/pattern.c: the patterns of Split, Replace, Digits, Punctuation, ... and HF's
 * split behaviours (tokenizers/src/tokenizer/pattern.rs and normalizer.rs). HF compiles regexes
 * with Oniguruma; here PCRE2 (UTF + UCP, JIT when available) runs the same patterns. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tokenizer-impl.h"

/* 1 when PCRE2 knows `name` as a script (so \p{name} should read \p{sc:name}). */
static int is_script(const char *name, size_t n)
{
    char rx[96];
    if (n < 3 || n > 60)
        return 0; /* one- and two-letter names are general categories */
    snprintf(rx, sizeof rx, "\\p{sc:%.*s}", (int)n, name);
    int err;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)rx, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err,
                                   &off, NULL);
    if (!re)
        return 0;
    pcre2_code_free(re);
    return 1;
}

/* Rewrites an Oniguruma pattern (as HF's SysRegex compiles it) so PCRE2 matches the same:
 * - \s: Oniguruma's is Unicode White_Space; PCRE2's (UCP) lacks U+0085;
 * - \w: Oniguruma's is Letter|Mark|Decimal_Number|Connector_Punctuation; PCRE2 10.42's (UCP) is
 *   \p{L}\p{N}_ (no marks, all numbers);
 * - \p{Script}: Oniguruma uses the Script property; PCRE2 10.40+ reads \p{Han} as
 *   Script_Extensions (so U+3002 would be Han): written \p{sc:Han}.
 * \S and \W inside a class are left alone (no tokenizer seen uses them). */
#define ONIG_S_IN "\\s\\x{85}"
#define ONIG_W_IN "\\p{L}\\p{M}\\p{Nd}\\p{Pc}"
static char *rewrite_regex(const char *src, size_t *outlen)
{
    size_t n = strlen(src), o = 0;
    char *out = malloc(n * 24 + 16);
    if (!out)
        return NULL;
    int in_class = 0;
    for (size_t i = 0; i < n; i++) {
        char c = src[i];
        if (c == '\\' && i + 1 < n) {
            char d = src[i + 1];
            const char *rep = NULL;
            if (d == 's')
                rep = in_class ? ONIG_S_IN : "[" ONIG_S_IN "]";
            else if (d == 'S' && !in_class)
                rep = "[^" ONIG_S_IN "]";
            else if (d == 'w')
                rep = in_class ? ONIG_W_IN : "[" ONIG_W_IN "]";
            else if (d == 'W' && !in_class)
                rep = "[^" ONIG_W_IN "]";
            if (rep) {
                size_t r = strlen(rep);
                memcpy(out + o, rep, r);
                o += r;
                i++;
                continue;
            }
            if ((d == 'p' || d == 'P') && i + 2 < n && src[i + 2] == '{') {
                const char *name = src + i + 3, *close = strchr(name, '}');
                if (close && *name != '^' && is_script(name, (size_t)(close - name))) {
                    o += (size_t)sprintf(out + o, "\\%c{sc:%.*s}", d, (int)(close - name), name);
                    i = (size_t)(close - src);
                    continue;
                }
            }
            out[o++] = c;
            out[o++] = d;
            i++;
            continue;
        }
        if (c == '[' && !in_class) {
            in_class = 1;
            out[o++] = c;
            /* a ']' right after '[' or '[^' is literal */
            if (i + 1 < n && src[i + 1] == '^') { out[o++] = '^'; i++; }
            if (i + 1 < n && src[i + 1] == ']') { out[o++] = ']'; i++; }
            continue;
        }
        if (c == ']' && in_class)
            in_class = 0;
        out[o++] = c;
    }
    out[o] = '\0';
    *outlen = o;
    return out;
}

ftk_status tk_pattern_regex(struct tk_pattern *p, const char *src, const char *what)
{
    memset(p, 0, sizeof *p);
    p->kind = TK_PAT_REGEX;
    size_t n;
    char *rx = rewrite_regex(src, &n);
    FTK_FAIL_IF(!rx, FTK_E_NOMEM, "tokenizer: out of memory");
    int err;
    PCRE2_SIZE erroff;
    p->re = pcre2_compile((PCRE2_SPTR)rx, n, PCRE2_UTF | PCRE2_UCP, &err, &erroff, NULL);
    free(rx);
    if (!p->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        FTK_FAIL(FTK_E_UNSUPPORTED, "%s: regex \"%s\" not supported by PCRE2: %s (at %zu)", what, src,
                 (const char *)msg, (size_t)erroff);
    }
    (void)pcre2_jit_compile(p->re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter */
    return FTK_OK;
}

ftk_status tk_pattern_string(struct tk_pattern *p, const char *s, size_t n)
{
    memset(p, 0, sizeof *p);
    p->kind = TK_PAT_STRING;
    p->str = malloc(n + 1);
    FTK_FAIL_IF(!p->str, FTK_E_NOMEM, "tokenizer: out of memory");
    memcpy(p->str, s, n);
    p->str[n] = '\0';
    p->len = n;
    return FTK_OK;
}

void tk_pattern_free(struct tk_pattern *p)
{
    if (p->re)
        pcre2_code_free(p->re);
    free(p->str);
    memset(p, 0, sizeof *p);
}

void tk_match_ctx_free(struct tk_match_ctx *c)
{
    if (c->md)
        pcre2_match_data_free(c->md);
    if (c->mctx)
        pcre2_match_context_free(c->mctx);
    if (c->jit)
        pcre2_jit_stack_free(c->jit);
    memset(c, 0, sizeof *c);
}

static ftk_status runs_push(struct tk_runs *r, size_t a, size_t b, int match)
{
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 64;
        struct tk_run *v = realloc(r->v, cap * sizeof *v);
        FTK_FAIL_IF(!v, FTK_E_NOMEM, "tokenizer: out of memory");
        r->v = v;
        r->cap = cap;
    }
    r->v[r->n++] = (struct tk_run){(uint32_t)a, (uint32_t)b, (uint8_t)match};
    return FTK_OK;
}

/* One regex search from `pos`; returns 1 with [*s,*e) on a match, 0 on none. */
static ftk_status regex_next(const struct tk_pattern *p, struct tk_match_ctx *mc, const char *str,
                             size_t n, size_t pos, size_t *s, size_t *e, int *found)
{
    if (!mc->md) {
        mc->md = pcre2_match_data_create(8, NULL);
        FTK_FAIL_IF(!mc->md, FTK_E_NOMEM, "tokenizer: out of memory");
    }
    int rc = pcre2_match(p->re, (PCRE2_SPTR)str, n, pos, PCRE2_NO_UTF_CHECK, mc->md, mc->mctx);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT && !mc->jit) {
        /* a long run (of spaces, say) outgrew the default 32 KiB JIT stack */
        mc->jit = pcre2_jit_stack_create(64 * 1024, 64 * 1024 * 1024, NULL);
        mc->mctx = pcre2_match_context_create(NULL);
        FTK_FAIL_IF(!mc->jit || !mc->mctx, FTK_E_NOMEM, "tokenizer: out of memory (JIT stack)");
        pcre2_jit_stack_assign(mc->mctx, NULL, mc->jit);
        rc = pcre2_match(p->re, (PCRE2_SPTR)str, n, pos, PCRE2_NO_UTF_CHECK, mc->md, mc->mctx);
    }
    if (rc == PCRE2_ERROR_NOMATCH) {
        *found = 0;
        return FTK_OK;
    }
    if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        FTK_FAIL(FTK_E_INVALID, "tokenizer: regex match failed at byte %zu: %s", pos, (const char *)msg);
    }
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(mc->md);
    *s = ov[0];
    *e = ov[1];
    *found = 1;
    return FTK_OK;
}

ftk_status tk_pattern_find(const struct tk_pattern *p, struct tk_match_ctx *mc, const char *s,
                           size_t n, int invert, struct tk_runs *out)
{
    out->n = 0;
    if (n == 0)
        return runs_push(out, 0, 0, invert);
    size_t prev = 0;
    int m = !invert, nm = invert;
    switch (p->kind) {
    case TK_PAT_STRING: {
        if (p->len == 0)
            break;
        const char *at = s, *end = s + n;
        while ((size_t)(end - at) >= p->len) {
            const char *f = memmem(at, (size_t)(end - at), p->str, p->len);
            if (!f)
                break;
            size_t a = (size_t)(f - s);
            if (a > prev)
                FTK_TRY(runs_push(out, prev, a, nm));
            FTK_TRY(runs_push(out, a, a + p->len, m));
            prev = a + p->len;
            at = f + p->len;
        }
        break;
    }
    case TK_PAT_REGEX: {
        /* Oniguruma's find_iter (the onig crate's FindMatches): empty matches are matches too
         * (they cut the string), except one right where the previous match ended, which moves
         * the search one character on. */
        size_t pos = 0, last_end = (size_t)-1;
        while (pos <= n) {
            size_t a = 0, b = 0;
            int found = 0;
            FTK_TRY(regex_next(p, mc, s, n, pos, &a, &b, &found));
            if (!found)
                break;
            if (a == b && last_end == b) {
                uint32_t cp;
                pos += pos < n ? (size_t)tk_utf8_dec((const unsigned char *)s + pos, n - pos, &cp) : 1;
                continue;
            }
            if (a > prev)
                FTK_TRY(runs_push(out, prev, a, nm));
            FTK_TRY(runs_push(out, a, b, m));
            prev = pos = last_end = b;
        }
        break;
    }
    case TK_PAT_CHARFN: {
        size_t i = 0;
        while (i < n) {
            uint32_t cp;
            int k = tk_utf8_dec((const unsigned char *)s + i, n - i, &cp);
            if (p->fn(cp)) {
                if (i > prev)
                    FTK_TRY(runs_push(out, prev, i, nm));
                FTK_TRY(runs_push(out, i, i + (size_t)k, m));
                prev = i + (size_t)k;
            }
            i += (size_t)k;
        }
        break;
    }
    }
    if (prev < n)
        FTK_TRY(runs_push(out, prev, n, nm));
    return FTK_OK;
}

ftk_status tk_split(const struct tk_pattern *p, struct tk_match_ctx *mc, const char *s, size_t n,
                    int first, int behavior, int invert, struct tk_runs *r, struct tk_list *out)
{
    FTK_TRY(tk_pattern_find(p, mc, s, n, invert, r));
    /* HF NormalizedString::split: rewrite the runs into pieces (a, b, remove) in place. */
    size_t k = 0;
    int prev_match = 0;
    switch (behavior) {
    case TK_SPLIT_ISOLATED:
        for (size_t i = 0; i < r->n; i++)
            r->v[i].match = 0;
        k = r->n;
        break;
    case TK_SPLIT_REMOVED:
        k = r->n;
        break;
    case TK_SPLIT_CONTIGUOUS:
        for (size_t i = 0; i < r->n; i++) {
            int im = r->v[i].match;
            if (im == prev_match && k > 0)
                r->v[k - 1].b = r->v[i].b;
            else
                r->v[k++] = (struct tk_run){r->v[i].a, r->v[i].b, 0};
            prev_match = im;
        }
        break;
    case TK_SPLIT_MERGED_PREV:
        for (size_t i = 0; i < r->n; i++) {
            int im = r->v[i].match;
            if (im && !prev_match && k > 0)
                r->v[k - 1].b = r->v[i].b;
            else
                r->v[k++] = (struct tk_run){r->v[i].a, r->v[i].b, 0};
            prev_match = im;
        }
        break;
    case TK_SPLIT_MERGED_NEXT: {
        /* right to left, writing from the end */
        size_t w = r->n;
        for (size_t i = r->n; i-- > 0;) {
            int im = r->v[i].match;
            struct tk_run cur = r->v[i];
            if (im && !prev_match && w < r->n)
                r->v[w].a = cur.a;
            else
                r->v[--w] = (struct tk_run){cur.a, cur.b, 0};
            prev_match = im;
        }
        memmove(r->v, r->v + w, (r->n - w) * sizeof *r->v);
        k = r->n - w;
        break;
    }
    default:
        FTK_FAIL(FTK_E_INVALID, "tokenizer: bad split behaviour %d", behavior);
    }
    for (size_t i = 0; i < k; i++) {
        if (r->v[i].match || r->v[i].b == r->v[i].a)
            continue;
        FTK_TRY(tk_list_push(out, s + r->v[i].a, r->v[i].b - r->v[i].a, first && r->v[i].a == 0));
    }
    return FTK_OK;
}

ftk_status tk_pattern_replace(const struct tk_pattern *p, struct tk_match_ctx *mc, const char *s,
                              size_t n, const char *rep, size_t rep_len, struct tk_list *out,
                              struct tk_runs *r)
{
    FTK_TRY(tk_pattern_find(p, mc, s, n, 0, r));
    for (size_t i = 0; i < r->n; i++) {
        if (r->v[i].match)
            FTK_TRY(tk_list_bytes(out, rep, rep_len));
        else
            FTK_TRY(tk_list_bytes(out, s + r->v[i].a, r->v[i].b - r->v[i].a));
    }
    return FTK_OK;
}
