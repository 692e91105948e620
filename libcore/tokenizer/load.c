/* libcore/tokenizer/load.c: tokenizer.json and tokenizer_config.json into struct ftk_tokenizer,
 * and the accessors of ftk/tokenizer.h. Field names and defaults follow HF tokenizers' serde
 * (tokenizers/src/{models,normalizers,pre_tokenizers,processors,decoders}/). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <cjson/cJSON.h>
#include "ftk/hash.h"
#include "tokenizer-impl.h"

/* Parsing context: the file name for messages. */
struct ld {
    const char *file;
};

static const char *jstr(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int jbool(const cJSON *o, const char *key, int dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsBool(v))
        return cJSON_IsTrue(v);
    return dflt;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (d)
        memcpy(d, s, n + 1);
    return d;
}

/* {"String": s} or {"Regex": r} (HF SplitPattern / ReplacePattern). */
static ftk_status parse_pattern(struct ld *ld, const cJSON *o, const char *where, struct tk_pattern *p)
{
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(o, "pattern");
    const char *s;
    if (cJSON_IsObject(pat) && (s = jstr(pat, "String")))
        return tk_pattern_string(p, s, strlen(s));
    if (cJSON_IsObject(pat) && (s = jstr(pat, "Regex"))) {
        char what[256];
        snprintf(what, sizeof what, "%s: %s.pattern", ld->file, where);
        return tk_pattern_regex(p, s, what);
    }
    FTK_FAIL(FTK_E_FORMAT, "%s: %s: \"pattern\" must be {\"String\": ...} or {\"Regex\": ...}",
             ld->file, where);
}

static ftk_status parse_behavior(struct ld *ld, const cJSON *o, const char *where, int dflt, int *out)
{
    const char *b = jstr(o, "behavior");
    if (!b) {
        *out = dflt;
        return FTK_OK;
    }
    static const char *const names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext",
                                        "Contiguous"};
    for (int i = 0; i < 5; i++)
        if (strcmp(b, names[i]) == 0) {
            *out = i;
            return FTK_OK;
        }
    FTK_FAIL(FTK_E_FORMAT, "%s: %s.behavior: unknown value \"%s\"", ld->file, where, b);
}

static ftk_status parse_prepend_scheme(struct ld *ld, const cJSON *o, const char *where, int *out)
{
    const char *s = jstr(o, "prepend_scheme");
    if (!s) { /* before tokenizers 0.19: add_prefix_space */
        *out = jbool(o, "add_prefix_space", 1) ? TK_PREPEND_ALWAYS : TK_PREPEND_NEVER;
        return FTK_OK;
    }
    if (strcmp(s, "always") == 0) *out = TK_PREPEND_ALWAYS;
    else if (strcmp(s, "first") == 0) *out = TK_PREPEND_FIRST;
    else if (strcmp(s, "never") == 0) *out = TK_PREPEND_NEVER;
    else FTK_FAIL(FTK_E_FORMAT, "%s: %s.prepend_scheme: unknown value \"%s\"", ld->file, where, s);
    return FTK_OK;
}

/* One code point string (Metaspace replacement, Strip content). */
static ftk_status parse_char(struct ld *ld, const cJSON *o, const char *key, const char *where,
                             const char *dflt, uint32_t *cp)
{
    const char *s = jstr(o, key);
    if (!s)
        s = dflt;
    FTK_FAIL_IF(!s || !*s, FTK_E_FORMAT, "%s: %s.%s: missing", ld->file, where, key);
    size_t n = strlen(s);
    FTK_FAIL_IF(tk_utf8_invalid_at(s, n) != (size_t)-1, FTK_E_FORMAT, "%s: %s.%s: invalid UTF-8",
                ld->file, where, key);
    int k = tk_utf8_dec((const unsigned char *)s, n, cp);
    FTK_FAIL_IF((size_t)k != n, FTK_E_FORMAT, "%s: %s.%s: \"%s\" must be one character", ld->file,
                where, key, s);
    return FTK_OK;
}

static const cJSON *jarray(const cJSON *o, const char *key)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsArray(a) ? a : NULL;
}

/* ---- normalizers ----------------------------------------------------------------------------- */

static ftk_status parse_normalizer(struct ld *ld, const cJSON *o, const char *where,
                                   struct tk_normalizer *nz)
{
    memset(nz, 0, sizeof *nz);
    const char *type = jstr(o, "type");
    FTK_FAIL_IF(!type, FTK_E_FORMAT, "%s: %s: missing \"type\"", ld->file, where);
    char sub[256];
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *a = jarray(o, "normalizers");
        FTK_FAIL_IF(!a, FTK_E_FORMAT, "%s: %s: Sequence without \"normalizers\"", ld->file, where);
        nz->type = TK_NORM_SEQUENCE;
        size_t n = (size_t)cJSON_GetArraySize(a);
        nz->sub = calloc(n ? n : 1, sizeof *nz->sub);
        FTK_FAIL_IF(!nz->sub, FTK_E_NOMEM, "tokenizer: out of memory");
        for (size_t i = 0; i < n; i++) {
            snprintf(sub, sizeof sub, "%s.normalizers[%zu]", where, i);
            nz->nsub = i + 1;
            FTK_TRY(parse_normalizer(ld, cJSON_GetArrayItem(a, (int)i), sub, &nz->sub[i]));
        }
        return FTK_OK;
    }
    if (strcmp(type, "NFC") == 0) nz->type = TK_NORM_NFC;
    else if (strcmp(type, "NFD") == 0) nz->type = TK_NORM_NFD;
    else if (strcmp(type, "NFKC") == 0) nz->type = TK_NORM_NFKC;
    else if (strcmp(type, "NFKD") == 0) nz->type = TK_NORM_NFKD;
    else if (strcmp(type, "Lowercase") == 0) nz->type = TK_NORM_LOWERCASE;
    else if (strcmp(type, "StripAccents") == 0) nz->type = TK_NORM_STRIP_ACCENTS;
    else if (strcmp(type, "ByteLevel") == 0) nz->type = TK_NORM_BYTELEVEL;
    else if (strcmp(type, "Strip") == 0) {
        nz->type = TK_NORM_STRIP;
        nz->left = jbool(o, "strip_left", 1);
        nz->right = jbool(o, "strip_right", 1);
    } else if (strcmp(type, "Prepend") == 0) {
        const char *p = jstr(o, "prepend");
        FTK_FAIL_IF(!p, FTK_E_FORMAT, "%s: %s: Prepend without \"prepend\"", ld->file, where);
        nz->type = TK_NORM_PREPEND;
        nz->str = xstrdup(p);
        FTK_FAIL_IF(!nz->str, FTK_E_NOMEM, "tokenizer: out of memory");
        nz->str_len = strlen(p);
    } else if (strcmp(type, "Replace") == 0) {
        const char *c = jstr(o, "content");
        FTK_FAIL_IF(!c, FTK_E_FORMAT, "%s: %s: Replace without \"content\"", ld->file, where);
        nz->type = TK_NORM_REPLACE;
        nz->str = xstrdup(c);
        FTK_FAIL_IF(!nz->str, FTK_E_NOMEM, "tokenizer: out of memory");
        nz->str_len = strlen(c);
        FTK_TRY(parse_pattern(ld, o, where, &nz->pat));
    } else {
        FTK_FAIL(FTK_E_UNSUPPORTED, "%s: %s: normalizer type \"%s\" is not supported", ld->file, where,
                 type);
    }
    return FTK_OK;
}

/* ---- pre-tokenizers -------------------------------------------------------------------------- */

static ftk_status parse_pretok(struct ld *ld, const cJSON *o, const char *where, struct tk_pretokenizer *pt)
{
    memset(pt, 0, sizeof *pt);
    const char *type = jstr(o, "type");
    FTK_FAIL_IF(!type, FTK_E_FORMAT, "%s: %s: missing \"type\"", ld->file, where);
    char sub[256];
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *a = jarray(o, "pretokenizers");
        FTK_FAIL_IF(!a, FTK_E_FORMAT, "%s: %s: Sequence without \"pretokenizers\"", ld->file, where);
        pt->type = TK_PRE_SEQUENCE;
        size_t n = (size_t)cJSON_GetArraySize(a);
        pt->sub = calloc(n ? n : 1, sizeof *pt->sub);
        FTK_FAIL_IF(!pt->sub, FTK_E_NOMEM, "tokenizer: out of memory");
        for (size_t i = 0; i < n; i++) {
            snprintf(sub, sizeof sub, "%s.pretokenizers[%zu]", where, i);
            pt->nsub = i + 1;
            FTK_TRY(parse_pretok(ld, cJSON_GetArrayItem(a, (int)i), sub, &pt->sub[i]));
        }
        return FTK_OK;
    }
    if (strcmp(type, "Split") == 0) {
        pt->type = TK_PRE_SPLIT;
        FTK_TRY(parse_pattern(ld, o, where, &pt->pat));
        FTK_TRY(parse_behavior(ld, o, where, TK_SPLIT_REMOVED, &pt->behavior));
        FTK_FAIL_IF(!jstr(o, "behavior"), FTK_E_FORMAT, "%s: %s: Split without \"behavior\"", ld->file, where);
        pt->invert = jbool(o, "invert", 0);
    } else if (strcmp(type, "ByteLevel") == 0) {
        pt->type = TK_PRE_BYTELEVEL;
        pt->add_prefix_space = jbool(o, "add_prefix_space", 1);
        pt->use_regex = jbool(o, "use_regex", 1);
        if (pt->use_regex) {
            char what[256];
            snprintf(what, sizeof what, "%s: %s (ByteLevel regex)", ld->file, where);
            FTK_TRY(tk_pattern_regex(&pt->pat, TK_BYTELEVEL_REGEX, what));
        }
    } else if (strcmp(type, "Metaspace") == 0) {
        pt->type = TK_PRE_METASPACE;
        FTK_TRY(parse_char(ld, o, "replacement", where, "\xE2\x96\x81", &pt->replacement));
        pt->rep_len = tk_utf8_enc(pt->replacement, pt->rep);
        pt->rep[pt->rep_len] = '\0';
        FTK_TRY(parse_prepend_scheme(ld, o, where, &pt->prepend_scheme));
        pt->split = jbool(o, "split", 1);
        FTK_TRY(tk_pattern_string(&pt->pat, pt->rep, (size_t)pt->rep_len));
    } else if (strcmp(type, "Whitespace") == 0) {
        /* HF: \w+|[^\w\s]+, inverted, removed: keeps the matches */
        char what[256];
        snprintf(what, sizeof what, "%s: %s (Whitespace regex)", ld->file, where);
        pt->type = TK_PRE_WHITESPACE;
        FTK_TRY(tk_pattern_regex(&pt->pat, "\\w+|[^\\w\\s]+", what));
        pt->behavior = TK_SPLIT_REMOVED;
        pt->invert = 1;
    } else if (strcmp(type, "WhitespaceSplit") == 0) {
        pt->type = TK_PRE_WHITESPACE_SPLIT;
        pt->pat = (struct tk_pattern){.kind = TK_PAT_CHARFN, .fn = tk_is_whitespace};
        pt->behavior = TK_SPLIT_REMOVED;
    } else if (strcmp(type, "Digits") == 0) {
        pt->type = TK_PRE_DIGITS;
        pt->pat = (struct tk_pattern){.kind = TK_PAT_CHARFN, .fn = tk_is_numeric};
        pt->behavior = jbool(o, "individual_digits", 0) ? TK_SPLIT_ISOLATED : TK_SPLIT_CONTIGUOUS;
    } else if (strcmp(type, "Punctuation") == 0) {
        pt->type = TK_PRE_PUNCTUATION;
        pt->pat = (struct tk_pattern){.kind = TK_PAT_CHARFN, .fn = tk_is_punct};
        FTK_TRY(parse_behavior(ld, o, where, TK_SPLIT_ISOLATED, &pt->behavior));
    } else if (strcmp(type, "BertPreTokenizer") == 0) {
        pt->type = TK_PRE_BERT;
    } else {
        FTK_FAIL(FTK_E_UNSUPPORTED, "%s: %s: pre-tokenizer type \"%s\" is not supported", ld->file,
                 where, type);
    }
    return FTK_OK;
}

/* ---- decoders -------------------------------------------------------------------------------- */

static ftk_status parse_decoder(struct ld *ld, const cJSON *o, const char *where, struct tk_decoder *d)
{
    memset(d, 0, sizeof *d);
    const char *type = jstr(o, "type");
    FTK_FAIL_IF(!type, FTK_E_FORMAT, "%s: %s: missing \"type\"", ld->file, where);
    char sub[256];
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *a = jarray(o, "decoders");
        FTK_FAIL_IF(!a, FTK_E_FORMAT, "%s: %s: Sequence without \"decoders\"", ld->file, where);
        d->type = TK_DEC_SEQUENCE;
        size_t n = (size_t)cJSON_GetArraySize(a);
        d->sub = calloc(n ? n : 1, sizeof *d->sub);
        FTK_FAIL_IF(!d->sub, FTK_E_NOMEM, "tokenizer: out of memory");
        for (size_t i = 0; i < n; i++) {
            snprintf(sub, sizeof sub, "%s.decoders[%zu]", where, i);
            d->nsub = i + 1;
            FTK_TRY(parse_decoder(ld, cJSON_GetArrayItem(a, (int)i), sub, &d->sub[i]));
        }
        return FTK_OK;
    }
    if (strcmp(type, "ByteLevel") == 0) {
        d->type = TK_DEC_BYTELEVEL;
    } else if (strcmp(type, "ByteFallback") == 0) {
        d->type = TK_DEC_BYTEFALLBACK;
    } else if (strcmp(type, "Fuse") == 0) {
        d->type = TK_DEC_FUSE;
    } else if (strcmp(type, "Replace") == 0) {
        const char *c = jstr(o, "content");
        FTK_FAIL_IF(!c, FTK_E_FORMAT, "%s: %s: Replace without \"content\"", ld->file, where);
        d->type = TK_DEC_REPLACE;
        d->str = xstrdup(c);
        FTK_FAIL_IF(!d->str, FTK_E_NOMEM, "tokenizer: out of memory");
        d->str_len = strlen(c);
        FTK_TRY(parse_pattern(ld, o, where, &d->pat));
    } else if (strcmp(type, "Strip") == 0) {
        d->type = TK_DEC_STRIP;
        FTK_TRY(parse_char(ld, o, "content", where, " ", &d->ch));
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "start");
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(o, "stop");
        d->start = cJSON_IsNumber(a) ? a->valueint : 0;
        d->stop = cJSON_IsNumber(b) ? b->valueint : 0;
    } else if (strcmp(type, "Metaspace") == 0) {
        d->type = TK_DEC_METASPACE;
        FTK_TRY(parse_char(ld, o, "replacement", where, "\xE2\x96\x81", &d->ch));
        FTK_TRY(parse_prepend_scheme(ld, o, where, &d->prepend_scheme));
    } else {
        FTK_FAIL(FTK_E_UNSUPPORTED, "%s: %s: decoder type \"%s\" is not supported", ld->file, where, type);
    }
    return FTK_OK;
}

/* ---- post-processors ------------------------------------------------------------------------- */

static ftk_status ids_append(struct ftk_ids *dst, const struct ftk_ids *src)
{
    for (size_t i = 0; i < src->n; i++)
        FTK_TRY(ftk_ids_push(dst, src->ids[i]));
    return FTK_OK;
}

/* Wraps the current prefix/suffix: prefix = pre + prefix, suffix = suffix + suf. */
static ftk_status post_wrap(struct tk_post *p, const struct ftk_ids *pre, const struct ftk_ids *suf)
{
    struct ftk_ids np = {0};
    ftk_status st = ids_append(&np, pre);
    if (st == FTK_OK)
        st = ids_append(&np, &p->prefix);
    if (st == FTK_OK)
        st = ids_append(&p->suffix, suf);
    if (st != FTK_OK) {
        ftk_ids_free(&np);
        return st;
    }
    ftk_ids_free(&p->prefix);
    p->prefix = np;
    return FTK_OK;
}

/* ["<s>", 1] (Roberta/Bert cls and sep) */
static ftk_status pair_id(struct ld *ld, const cJSON *o, const char *key, const char *where, int32_t *id)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, key);
    const cJSON *v = cJSON_IsArray(a) ? cJSON_GetArrayItem(a, 1) : NULL;
    FTK_FAIL_IF(!cJSON_IsNumber(v), FTK_E_FORMAT, "%s: %s.%s: expected [token, id]", ld->file, where, key);
    *id = (int32_t)v->valuedouble;
    return FTK_OK;
}

static ftk_status parse_post(struct ld *ld, const cJSON *o, const char *where, struct tk_post *p)
{
    const char *type = jstr(o, "type");
    FTK_FAIL_IF(!type, FTK_E_FORMAT, "%s: %s: missing \"type\"", ld->file, where);
    char sub[256];
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *a = jarray(o, "processors");
        FTK_FAIL_IF(!a, FTK_E_FORMAT, "%s: %s: Sequence without \"processors\"", ld->file, where);
        for (int i = 0; i < cJSON_GetArraySize(a); i++) {
            snprintf(sub, sizeof sub, "%s.processors[%d]", where, i);
            FTK_TRY(parse_post(ld, cJSON_GetArrayItem(a, i), sub, p));
        }
        return FTK_OK;
    }
    if (strcmp(type, "ByteLevel") == 0)
        return FTK_OK; /* offsets only */
    struct ftk_ids pre = {0}, suf = {0};
    ftk_status st = FTK_OK;
    if (strcmp(type, "RobertaProcessing") == 0 || strcmp(type, "BertProcessing") == 0) {
        int32_t cls, sep;
        FTK_TRY(pair_id(ld, o, "cls", where, &cls));
        FTK_TRY(pair_id(ld, o, "sep", where, &sep));
        st = ftk_ids_push(&pre, cls);
        if (st == FTK_OK)
            st = ftk_ids_push(&suf, sep);
    } else if (strcmp(type, "TemplateProcessing") == 0) {
        const cJSON *single = jarray(o, "single");
        const cJSON *specials = cJSON_GetObjectItemCaseSensitive(o, "special_tokens");
        FTK_FAIL_IF(!single, FTK_E_FORMAT, "%s: %s: TemplateProcessing without \"single\"", ld->file, where);
        int seen_a = 0;
        const cJSON *item;
        cJSON_ArrayForEach(item, single) {
            const cJSON *sp = cJSON_GetObjectItemCaseSensitive(item, "SpecialToken");
            const cJSON *sq = cJSON_GetObjectItemCaseSensitive(item, "Sequence");
            if (sq) {
                if (seen_a) {
                    st = ftk_error_set(FTK_E_UNSUPPORTED, __FILE__, __LINE__,
                                       "%s: %s.single: more than one Sequence", ld->file, where);
                    break;
                }
                seen_a = 1;
                continue;
            }
            const char *name = sp ? jstr(sp, "id") : NULL;
            const cJSON *tok = name ? cJSON_GetObjectItemCaseSensitive(specials, name) : NULL;
            const cJSON *ids = tok ? jarray(tok, "ids") : NULL;
            if (!ids) {
                st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__,
                                   "%s: %s.single: special token \"%s\" not in special_tokens", ld->file,
                                   where, name ? name : "?");
                break;
            }
            const cJSON *v;
            cJSON_ArrayForEach(v, ids) {
                if (st == FTK_OK)
                    st = ftk_ids_push(seen_a ? &suf : &pre, (int32_t)v->valuedouble);
            }
            if (st != FTK_OK)
                break;
        }
        if (st == FTK_OK && !seen_a)
            st = ftk_error_set(FTK_E_UNSUPPORTED, __FILE__, __LINE__,
                               "%s: %s.single: no Sequence A", ld->file, where);
    } else {
        FTK_FAIL(FTK_E_UNSUPPORTED, "%s: %s: post-processor type \"%s\" is not supported", ld->file,
                 where, type);
    }
    if (st == FTK_OK)
        st = post_wrap(p, &pre, &suf);
    ftk_ids_free(&pre);
    ftk_ids_free(&suf);
    return st;
}

/* ---- the model ------------------------------------------------------------------------------- */

static ftk_status parse_model(struct ld *ld, const cJSON *m, struct tk_bpe *b, int32_t max_added)
{
    const char *type = jstr(m, "type");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(m, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(m, "merges");
    if (!type && vocab && merges)
        type = "BPE";
    FTK_FAIL_IF(!type, FTK_E_FORMAT, "%s: model: missing \"type\"", ld->file);
    FTK_FAIL_IF(strcmp(type, "BPE") != 0, FTK_E_UNSUPPORTED,
                "%s: model.type \"%s\" is not supported (ftk implements BPE only)", ld->file, type);
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(m, "dropout");
    FTK_FAIL_IF(cJSON_IsNumber(dropout) && dropout->valuedouble > 0 && dropout->valuedouble < 1,
                FTK_E_UNSUPPORTED, "%s: model.dropout %g: BPE dropout is not supported", ld->file,
                dropout->valuedouble);
    FTK_FAIL_IF(!cJSON_IsObject(vocab), FTK_E_FORMAT, "%s: model.vocab: expected an object", ld->file);
    FTK_FAIL_IF(!cJSON_IsArray(merges), FTK_E_FORMAT, "%s: model.merges: expected an array", ld->file);

    /* vocab: strings back to back (NUL-terminated), id -> offset */
    size_t total = 0, count = 0;
    int64_t max_id = max_added;
    const cJSON *v;
    cJSON_ArrayForEach(v, vocab) {
        FTK_FAIL_IF(!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > INT32_MAX - 1,
                    FTK_E_FORMAT, "%s: model.vocab[\"%s\"]: id must be a non-negative integer", ld->file,
                    v->string);
        total += strlen(v->string) + 1;
        count++;
        if ((int64_t)v->valuedouble > max_id)
            max_id = (int64_t)v->valuedouble;
    }
    /* ids index dense arrays: refuse a handful of tokens with ids in the billions */
    FTK_FAIL_IF(max_id >= 16 * (int64_t)count + (1 << 20), FTK_E_UNSUPPORTED,
                "%s: model.vocab/added_tokens: ids up to %lld for %zu tokens: such sparse ids are not "
                "supported", ld->file, (long long)max_id, count);
    b->nvocab = (size_t)(max_id + 1);
    b->vstore = malloc(total ? total : 1);
    b->voff = malloc(b->nvocab * sizeof *b->voff);
    b->vlen = malloc(b->nvocab * sizeof *b->vlen);
    FTK_FAIL_IF(!b->vstore || !b->voff || !b->vlen, FTK_E_NOMEM, "tokenizer: out of memory (vocab)");
    memset(b->voff, 0xFF, b->nvocab * sizeof *b->voff);
    FTK_TRY(tk_strmap_init(&b->vocab, count));
    size_t off = 0;
    cJSON_ArrayForEach(v, vocab) {
        size_t n = strlen(v->string);
        int32_t id = (int32_t)v->valuedouble;
        memcpy(b->vstore + off, v->string, n + 1);
        b->voff[id] = (uint32_t)off;
        b->vlen[id] = (uint32_t)n;
        FTK_TRY(tk_strmap_put(&b->vocab, b->vstore + off, n, id));
        off += n + 1;
    }
    b->vstore_len = off;

    const char *unk = jstr(m, "unk_token");
    b->unk_id = unk ? tk_strmap_get(&b->vocab, unk, strlen(unk)) : -1;
    const char *pre = jstr(m, "continuing_subword_prefix"), *suf = jstr(m, "end_of_word_suffix");
    if (pre && *pre) {
        b->prefix = xstrdup(pre);
        b->prefix_len = strlen(pre);
    }
    if (suf && *suf) {
        b->suffix = xstrdup(suf);
        b->suffix_len = strlen(suf);
    }
    FTK_FAIL_IF((pre && *pre && !b->prefix) || (suf && *suf && !b->suffix), FTK_E_NOMEM,
                "tokenizer: out of memory");
    if (!b->prefix && !b->suffix) {
        b->bmp_id = malloc(0x10000 * sizeof *b->bmp_id);
        FTK_FAIL_IF(!b->bmp_id, FTK_E_NOMEM, "tokenizer: out of memory");
        for (uint32_t c = 0; c < 0x10000; c++) {
            char u[4];
            int k = tk_utf8_enc(c, u);
            b->bmp_id[c] = c >= 0xD800 && c < 0xE000 ? -1 : tk_strmap_get(&b->vocab, u, (size_t)k);
        }
    }
    if (!b->prefix && !b->suffix && tk_strmap_get(&b->vocab, "\xE2\x96\x81", 3) >= 0) {
        b->split_meta = 1;
        for (size_t id = 0; id < b->nvocab && b->split_meta; id++) {
            if (b->voff[id] == UINT32_MAX || b->vlen[id] == 0)
                continue;
            const char *tok = b->vstore + b->voff[id];
            for (const char *p = tok + 1; (p = strstr(p, "\xE2\x96\x81")); p += 3)
                if (p - tok < 3 || memcmp(p - 3, "\xE2\x96\x81", 3) != 0) {
                    b->split_meta = 0;
                    break;
                }
        }
    }
    b->fuse_unk = jbool(m, "fuse_unk", 0);
    b->byte_fallback = jbool(m, "byte_fallback", 0);
    b->ignore_merges = jbool(m, "ignore_merges", 0);
    for (int i = 0; i < 256; i++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", i);
        b->byte_ids[i] = tk_strmap_get(&b->vocab, name, 6);
    }

    /* merges: "a b" or ["a", "b"]; rank = position; a later duplicate wins (HF collects into a
     * HashMap) */
    size_t nm = (size_t)cJSON_GetArraySize(merges), rank = 0;
    FTK_TRY(tk_u64map_init(&b->merges, nm));
    char *buf = NULL;
    size_t bufcap = 0;
    ftk_status st = FTK_OK;
    cJSON_ArrayForEach(v, merges) {
        const char *a, *c;
        size_t al, cl;
        if (cJSON_IsString(v)) {
            const char *sp = strchr(v->valuestring, ' ');
            if (!sp) {
                st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__,
                                   "%s: model.merges[%zu]: \"%s\" is not \"left right\"", ld->file, rank,
                                   v->valuestring);
                break;
            }
            a = v->valuestring;
            al = (size_t)(sp - a);
            c = sp + 1;
            cl = strlen(c);
        } else if (cJSON_IsArray(v) && cJSON_GetArraySize(v) == 2 &&
                   cJSON_IsString(cJSON_GetArrayItem(v, 0)) && cJSON_IsString(cJSON_GetArrayItem(v, 1))) {
            a = cJSON_GetArrayItem(v, 0)->valuestring;
            c = cJSON_GetArrayItem(v, 1)->valuestring;
            al = strlen(a);
            cl = strlen(c);
        } else {
            st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__,
                               "%s: model.merges[%zu]: expected \"a b\" or [\"a\", \"b\"]", ld->file, rank);
            break;
        }
        int32_t ia = tk_strmap_get(&b->vocab, a, al), ic = tk_strmap_get(&b->vocab, c, cl);
        size_t skip = b->prefix_len <= cl ? b->prefix_len : cl;
        size_t need = al + cl - skip;
        if (need + 1 > bufcap) {
            char *nb = realloc(buf, need * 2 + 16);
            if (!nb) {
                st = ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "tokenizer: out of memory");
                break;
            }
            buf = nb;
            bufcap = need * 2 + 16;
        }
        memcpy(buf, a, al);
        memcpy(buf + al, c + skip, cl - skip);
        int32_t inew = tk_strmap_get(&b->vocab, buf, need);
        if (ia < 0 || ic < 0 || inew < 0) {
            st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__,
                               "%s: model.merges[%zu]: \"%.*s\" + \"%.*s\": token not in the vocab",
                               ld->file, rank, (int)al, a, (int)cl, c);
            break;
        }
        st = tk_u64map_put(&b->merges, (uint64_t)(uint32_t)ia << 32 | (uint32_t)ic, (uint32_t)rank, inew);
        if (st != FTK_OK)
            break;
        rank++;
    }
    free(buf);
    if (st == FTK_OK)
        st = tk_bpe_pack_merges(b);
    return st;
}

/* ---- added tokens ---------------------------------------------------------------------------- */

static ftk_status parse_added(struct ld *ld, const cJSON *arr, struct ftk_tokenizer *t)
{
    size_t n = (size_t)cJSON_GetArraySize(arr);
    t->added = calloc(n ? n : 1, sizeof *t->added);
    FTK_FAIL_IF(!t->added, FTK_E_NOMEM, "tokenizer: out of memory");
    for (size_t i = 0; i < n; i++) {
        const cJSON *o = cJSON_GetArrayItem(arr, (int)i);
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
        const char *content = jstr(o, "content");
        FTK_FAIL_IF(!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble > INT32_MAX - 1 || !content,
                    FTK_E_FORMAT, "%s: added_tokens[%zu]: needs \"id\" and \"content\"", ld->file, i);
        struct tk_added_token *a = &t->added[i];
        t->nadded = i + 1;
        a->content = xstrdup(content);
        FTK_FAIL_IF(!a->content, FTK_E_NOMEM, "tokenizer: out of memory");
        a->len = strlen(content);
        a->id = (int32_t)id->valuedouble;
        a->special = jbool(o, "special", 0);
        a->lstrip = jbool(o, "lstrip", 0);
        a->rstrip = jbool(o, "rstrip", 0);
        a->single_word = jbool(o, "single_word", 0);
        a->normalized = jbool(o, "normalized", !a->special);
    }
    return FTK_OK;
}

/* ---- tokenizer_config.json ------------------------------------------------------------------- */

/* "bos_token": "<s>" or {"content": "<s>", ...} or null */
static ftk_status config_token(const cJSON *cfg, const char *key, char **out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    const char *s = NULL;
    if (cJSON_IsString(v))
        s = v->valuestring;
    else if (cJSON_IsObject(v))
        s = jstr(v, "content");
    if (s) {
        *out = xstrdup(s);
        FTK_FAIL_IF(!*out, FTK_E_NOMEM, "tokenizer: out of memory");
    }
    return FTK_OK;
}

static ftk_status parse_config(const char *text, size_t len, struct ftk_tokenizer *t)
{
    cJSON *cfg = cJSON_ParseWithLength(text, len);
    if (!cfg) {
        const char *e = cJSON_GetErrorPtr();
        size_t at = e && e >= text && e <= text + len ? (size_t)(e - text) : 0, line = 1;
        for (size_t i = 0; i < at; i++)
            line += text[i] == '\n';
        FTK_FAIL(FTK_E_FORMAT, "tokenizer_config.json: malformed JSON at line %zu (byte %zu)", line, at);
    }
    ftk_status st = FTK_OK;
    if (!cJSON_IsObject(cfg))
        st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "tokenizer_config.json: not a JSON object");
    if (st == FTK_OK) st = config_token(cfg, "bos_token", &t->bos);
    if (st == FTK_OK) st = config_token(cfg, "eos_token", &t->eos);
    if (st == FTK_OK) st = config_token(cfg, "pad_token", &t->pad);
    if (st == FTK_OK) st = config_token(cfg, "unk_token", &t->unk);
    t->clean_up = jbool(cfg, "clean_up_tokenization_spaces", 0);
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
    const char *tmpl = NULL;
    if (cJSON_IsString(ct)) {
        tmpl = ct->valuestring;
    } else if (cJSON_IsArray(ct)) { /* [{"name": "default", "template": ...}, ...] */
        const cJSON *it;
        cJSON_ArrayForEach(it, ct) {
            const char *name = jstr(it, "name");
            if (!tmpl || (name && strcmp(name, "default") == 0))
                tmpl = jstr(it, "template");
        }
    }
    if (st == FTK_OK && tmpl && !(t->chat_template = xstrdup(tmpl)))
        st = ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "tokenizer: out of memory");
    cJSON_Delete(cfg);
    return st;
}

/* ---- assembly -------------------------------------------------------------------------------- */

static ftk_status build(struct ld *ld, const cJSON *root, struct ftk_tokenizer *t)
{
    FTK_FAIL_IF(!cJSON_IsObject(root), FTK_E_FORMAT, "%s: not a JSON object", ld->file);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    FTK_FAIL_IF(!cJSON_IsObject(model), FTK_E_FORMAT, "%s: missing \"model\"", ld->file);
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (cJSON_IsArray(added))
        FTK_TRY(parse_added(ld, added, t));
    int32_t max_added = -1;
    for (size_t i = 0; i < t->nadded; i++)
        if (t->added[i].id > max_added)
            max_added = t->added[i].id;
    FTK_TRY(parse_model(ld, model, &t->bpe, max_added));
    t->vocab_size = t->bpe.nvocab;
    FTK_TRY(tk_strmap_init(&t->added_map, t->nadded));
    t->added_by_id = malloc(t->vocab_size * sizeof *t->added_by_id);
    FTK_FAIL_IF(!t->added_by_id, FTK_E_NOMEM, "tokenizer: out of memory");
    memset(t->added_by_id, 0xFF, t->vocab_size * sizeof *t->added_by_id);
    for (size_t i = 0; i < t->nadded; i++) {
        FTK_TRY(tk_strmap_put(&t->added_map, t->added[i].content, t->added[i].len, t->added[i].id));
        t->added_by_id[t->added[i].id] = (int32_t)i;
    }

    const cJSON *o = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    if (cJSON_IsObject(o)) {
        t->normalizer = calloc(1, sizeof *t->normalizer);
        FTK_FAIL_IF(!t->normalizer, FTK_E_NOMEM, "tokenizer: out of memory");
        FTK_TRY(parse_normalizer(ld, o, "normalizer", t->normalizer));
    }
    o = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    if (cJSON_IsObject(o)) {
        t->pretok = calloc(1, sizeof *t->pretok);
        FTK_FAIL_IF(!t->pretok, FTK_E_NOMEM, "tokenizer: out of memory");
        FTK_TRY(parse_pretok(ld, o, "pre_tokenizer", t->pretok));
    }
    o = cJSON_GetObjectItemCaseSensitive(root, "post_processor");
    if (cJSON_IsObject(o))
        FTK_TRY(parse_post(ld, o, "post_processor", &t->post));
    o = cJSON_GetObjectItemCaseSensitive(root, "decoder");
    if (cJSON_IsObject(o)) {
        t->decoder = calloc(1, sizeof *t->decoder);
        FTK_FAIL_IF(!t->decoder, FTK_E_NOMEM, "tokenizer: out of memory");
        FTK_TRY(parse_decoder(ld, o, "decoder", t->decoder));
    }
    FTK_TRY(tk_trie_build(&t->trie_raw, t->added, t->nadded, 0, NULL));
    FTK_TRY(tk_trie_build(&t->trie_norm, t->added, t->nadded, 1, t->normalizer));
    return FTK_OK;
}

ftk_status tk_tokenizer_from_json(const char *json, size_t len, const char *config, size_t clen,
                                  const char *what, struct ftk_tokenizer **out)
{
    *out = NULL;
    struct ld ld = {.file = what ? what : "tokenizer.json"};
    struct ftk_tokenizer *t = calloc(1, sizeof *t);
    FTK_FAIL_IF(!t, FTK_E_NOMEM, "tokenizer: out of memory");
    (void)tk_caches_init(&t->caches); /* without caches encoding is slower, still right */
    ftk_sha256_hex(json, len, t->hash);
    ftk_status st = FTK_OK;
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) {
        const char *e = cJSON_GetErrorPtr();
        size_t at = e && e >= json && e <= json + len ? (size_t)(e - json) : 0, line = 1;
        for (size_t i = 0; i < at; i++)
            line += json[i] == '\n';
        st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: malformed JSON at line %zu (byte %zu)",
                           ld.file, line, at);
    }
    if (st == FTK_OK)
        st = build(&ld, root, t);
    cJSON_Delete(root);
    if (st == FTK_OK && config)
        st = parse_config(config, clen, t);
    if (st != FTK_OK) {
        ftk_tokenizer_free(t);
        return st;
    }
    *out = t;
    return FTK_OK;
}

ftk_status ftk_tokenizer_load(struct ftk_source *src, struct ftk_tokenizer **out)
{
    *out = NULL;
    char *json = NULL, *cfg = NULL;
    size_t len = 0, clen = 0;
    FTK_TRY(ftk_source_read(src, "tokenizer.json", &json, &len));
    ftk_status st = ftk_source_read(src, "tokenizer_config.json", &cfg, &clen);
    if (st == FTK_E_NOTFOUND) {
        cfg = NULL;
        st = FTK_OK;
    }
    if (st == FTK_OK)
        st = tk_tokenizer_from_json(json, len, cfg, clen, "tokenizer.json", out);
    free(json);
    free(cfg);
    if (st != FTK_OK)
        return ftk_error_wrap(st, "%s", ftk_source_path(src));
    return FTK_OK;
}

ftk_status ftk_tokenizer_load_path(const char *path, struct ftk_tokenizer **out)
{
    *out = NULL;
    struct stat sb;
    size_t n = strlen(path);
    int is_json = stat(path, &sb) == 0 && S_ISREG(sb.st_mode) &&
                  ((n >= 5 && strcmp(path + n - 5, ".json") == 0) ||
                   (n >= 9 && strcmp(path + n - 9, ".json.zst") == 0));
    if (!is_json) {
        struct ftk_source *src;
        FTK_TRY(ftk_source_open(path, &src));
        ftk_status st = ftk_tokenizer_load(src, out);
        ftk_source_close(src);
        return st;
    }
    /* a tokenizer.json file: its directory is the source */
    char *dir = xstrdup(path);
    FTK_FAIL_IF(!dir, FTK_E_NOMEM, "tokenizer: out of memory");
    char *slash = strrchr(dir, '/');
    const char *base = slash ? slash + 1 : path;
    if (slash)
        slash[slash == dir ? 1 : 0] = '\0';
    else
        strcpy(dir, ".");
    char name[4096];
    snprintf(name, sizeof name, "%s", base);
    size_t bl = strlen(name);
    if (bl >= 4 && strcmp(name + bl - 4, ".zst") == 0)
        name[bl - 4] = '\0'; /* ftk_source_read finds NAME.zst */
    struct ftk_source *src;
    ftk_status st = ftk_source_open(dir, &src);
    free(dir);
    FTK_TRY(st);
    char *json = NULL, *cfg = NULL;
    size_t len = 0, clen = 0;
    st = ftk_source_read(src, name, &json, &len);
    if (st == FTK_OK) {
        st = ftk_source_read(src, "tokenizer_config.json", &cfg, &clen);
        if (st == FTK_E_NOTFOUND) {
            cfg = NULL;
            st = FTK_OK;
        }
    }
    if (st == FTK_OK)
        st = tk_tokenizer_from_json(json, len, cfg, clen, name, out);
    free(json);
    free(cfg);
    ftk_source_close(src);
    if (st != FTK_OK)
        return ftk_error_wrap(st, "%s", path);
    return FTK_OK;
}

void ftk_tokenizer_free(struct ftk_tokenizer *t)
{
    if (!t)
        return;
    tk_caches_free(&t->caches);
    tk_bpe_free(&t->bpe);
    tk_normalizer_free(t->normalizer);
    free(t->normalizer);
    tk_pretokenizer_free(t->pretok);
    free(t->pretok);
    tk_decoder_free(t->decoder);
    free(t->decoder);
    ftk_ids_free(&t->post.prefix);
    ftk_ids_free(&t->post.suffix);
    for (size_t i = 0; i < t->nadded; i++)
        free(t->added[i].content);
    free(t->added);
    tk_strmap_free(&t->added_map);
    free(t->added_by_id);
    tk_trie_free(&t->trie_raw);
    tk_trie_free(&t->trie_norm);
    free(t->bos);
    free(t->eos);
    free(t->pad);
    free(t->unk);
    free(t->chat_template);
    free(t);
}

/* ---- accessors ------------------------------------------------------------------------------- */

size_t ftk_tokenizer_vocab_size(const struct ftk_tokenizer *t) { return t->vocab_size; }

int32_t ftk_tokenizer_token_to_id(const struct ftk_tokenizer *t, const char *token)
{
    if (!token)
        return -1;
    size_t n = strlen(token);
    int32_t id = tk_strmap_get(&t->added_map, token, n);
    return id >= 0 ? id : tk_strmap_get(&t->bpe.vocab, token, n);
}

const char *ftk_tokenizer_id_to_token(const struct ftk_tokenizer *t, int32_t id)
{
    if (id < 0 || (size_t)id >= t->vocab_size)
        return NULL;
    if (t->added_by_id[id] >= 0)
        return t->added[t->added_by_id[id]].content;
    size_t n;
    return tk_bpe_token(&t->bpe, id, &n);
}

int ftk_tokenizer_is_special(const struct ftk_tokenizer *t, int32_t id)
{
    if (id < 0 || (size_t)id >= t->vocab_size || t->added_by_id[id] < 0)
        return 0;
    return t->added[t->added_by_id[id]].special;
}

const char *ftk_tokenizer_special(const struct ftk_tokenizer *t, const char *which)
{
    if (!which) return NULL;
    if (strcmp(which, "bos_token") == 0) return t->bos;
    if (strcmp(which, "eos_token") == 0) return t->eos;
    if (strcmp(which, "pad_token") == 0) return t->pad;
    if (strcmp(which, "unk_token") == 0) return t->unk;
    return NULL;
}

int32_t ftk_tokenizer_special_id(const struct ftk_tokenizer *t, const char *which)
{
    return ftk_tokenizer_token_to_id(t, ftk_tokenizer_special(t, which));
}

const char *ftk_tokenizer_chat_template(const struct ftk_tokenizer *t) { return t->chat_template; }
const char *ftk_tokenizer_hash(const struct ftk_tokenizer *t) { return t->hash; }
