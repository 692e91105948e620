/* libcore/tokenizer/pretokenizer.c: HF pre-tokenizers (tokenizers/src/pre_tokenizers/): Split,
 * ByteLevel, Metaspace, Whitespace, WhitespaceSplit, Digits, Punctuation, BertPreTokenizer and
 * Sequence. Each works on a list of pieces; a piece that becomes empty is dropped, as HF's
 * PreTokenizedString::split drops empty splits. */
#include <stdlib.h>
#include <string.h>
#include "tokenizer-impl.h"

/* GPT-2 bytes_to_unicode(): printable bytes map to themselves, the rest to 256, 257, ... */
const uint16_t tk_byte_to_cp[256] = {
    256, 257, 258, 259, 260, 261, 262, 263, 264, 265, 266, 267, 268, 269, 270, 271,
    272, 273, 274, 275, 276, 277, 278, 279, 280, 281, 282, 283, 284, 285, 286, 287,
    288, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47,
    48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79,
    80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95,
    96, 97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111,
    112, 113, 114, 115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 289,
    290, 291, 292, 293, 294, 295, 296, 297, 298, 299, 300, 301, 302, 303, 304, 305,
    306, 307, 308, 309, 310, 311, 312, 313, 314, 315, 316, 317, 318, 319, 320, 321,
    322, 161, 162, 163, 164, 165, 166, 167, 168, 169, 170, 171, 172, 323, 174, 175,
    176, 177, 178, 179, 180, 181, 182, 183, 184, 185, 186, 187, 188, 189, 190, 191,
    192, 193, 194, 195, 196, 197, 198, 199, 200, 201, 202, 203, 204, 205, 206, 207,
    208, 209, 210, 211, 212, 213, 214, 215, 216, 217, 218, 219, 220, 221, 222, 223,
    224, 225, 226, 227, 228, 229, 230, 231, 232, 233, 234, 235, 236, 237, 238, 239,
    240, 241, 242, 243, 244, 245, 246, 247, 248, 249, 250, 251, 252, 253, 254, 255,
};

int tk_cp_to_byte(uint32_t cp)
{
    if (cp >= 256 + 68)
        return -1;
    if (cp >= 256) {
        for (int b = 0; b < 256; b++)
            if (tk_byte_to_cp[b] == cp)
                return b;
        return -1;
    }
    return tk_byte_to_cp[cp] == cp ? (int)cp : -1;
}

static void swap_lists(struct tk_list *a, struct tk_list *b)
{
    struct tk_list t = *a;
    *a = *b;
    *b = t;
}

/* Splits every piece of `in` by pattern/behaviour into `tmp`, then swaps. */
static ftk_status split_all(const struct tk_pattern *p, struct tk_match_ctx *mc, int behavior,
                            int invert, struct tk_list *in, struct tk_list *tmp, struct tk_runs *runs)
{
    tk_list_clear(tmp);
    FTK_TRY(tk_list_reserve(tmp, in->bn));
    for (size_t i = 0; i < in->n; i++) {
        const struct tk_span *sp = &in->s[i];
        FTK_TRY(tk_split(p, mc, in->b + sp->off, sp->len, sp->first, behavior, invert, runs, tmp));
    }
    swap_lists(in, tmp);
    return FTK_OK;
}

static ftk_status bytelevel(const struct tk_pretokenizer *pt, struct tk_match_ctx *mc,
                            struct tk_list *in, struct tk_list *tmp, struct tk_runs *runs)
{
    if (pt->add_prefix_space) {
        tk_list_clear(tmp);
        for (size_t i = 0; i < in->n; i++) {
            const struct tk_span *sp = &in->s[i];
            size_t off = tmp->bn;
            if (sp->len == 0 || in->b[sp->off] != ' ')
                FTK_TRY(tk_list_bytes(tmp, " ", 1));
            FTK_TRY(tk_list_bytes(tmp, in->b + sp->off, sp->len));
            FTK_TRY(tk_list_span(tmp, off, tmp->bn - off, sp->first));
        }
        swap_lists(in, tmp);
    }
    if (pt->use_regex)
        FTK_TRY(split_all(&pt->pat, mc, TK_SPLIT_ISOLATED, 0, in, tmp, runs));
    /* every byte becomes one character of the byte alphabet */
    tk_list_clear(tmp);
    FTK_TRY(tk_list_reserve(tmp, in->bn * 2));
    for (size_t i = 0; i < in->n; i++) {
        const struct tk_span *sp = &in->s[i];
        size_t off = tmp->bn;
        char *o = tmp->b + off;
        const unsigned char *p = (const unsigned char *)in->b + sp->off;
        for (size_t j = 0; j < sp->len; j++) {
            uint32_t cp = tk_byte_to_cp[p[j]];
            if (cp < 0x80) {
                *o++ = (char)cp;
            } else {
                *o++ = (char)(0xC0 | cp >> 6);
                *o++ = (char)(0x80 | (cp & 0x3F));
            }
        }
        tmp->bn = (size_t)(o - tmp->b);
        FTK_TRY(tk_list_span(tmp, off, tmp->bn - off, sp->first));
    }
    swap_lists(in, tmp);
    return FTK_OK;
}

/* HF Metaspace (0.19+): ' ' -> replacement, prepend by scheme, split MergedWithNext. */
static ftk_status metaspace(const struct tk_pretokenizer *pt, struct tk_match_ctx *mc,
                            struct tk_list *in, struct tk_list *tmp, struct tk_runs *runs)
{
    tk_list_clear(tmp);
    for (size_t i = 0; i < in->n; i++) {
        const struct tk_span *sp = &in->s[i];
        const char *p = in->b + sp->off;
        size_t off = tmp->bn;
        int starts = sp->len > 0 && (p[0] == ' ' ||
                     (sp->len >= (size_t)pt->rep_len && memcmp(p, pt->rep, (size_t)pt->rep_len) == 0));
        int prepend = (pt->prepend_scheme == TK_PREPEND_ALWAYS && !starts) ||
                      (pt->prepend_scheme == TK_PREPEND_FIRST && !starts && sp->first);
        if (prepend)
            FTK_TRY(tk_list_bytes(tmp, pt->rep, (size_t)pt->rep_len));
        for (size_t j = 0; j < sp->len; j++) {
            if (p[j] == ' ')
                FTK_TRY(tk_list_bytes(tmp, pt->rep, (size_t)pt->rep_len));
            else
                FTK_TRY(tk_list_bytes(tmp, p + j, 1));
        }
        FTK_TRY(tk_list_span(tmp, off, tmp->bn - off, sp->first));
    }
    swap_lists(in, tmp);
    if (pt->split)
        FTK_TRY(split_all(&pt->pat, mc, TK_SPLIT_MERGED_NEXT, 0, in, tmp, runs));
    return FTK_OK;
}

ftk_status tk_pretokenize(const struct tk_pretokenizer *pt, struct tk_match_ctx *mc,
                          struct tk_list *in, struct tk_list *tmp, struct tk_runs *runs)
{
    switch (pt->type) {
    case TK_PRE_SEQUENCE:
        for (size_t i = 0; i < pt->nsub; i++)
            FTK_TRY(tk_pretokenize(&pt->sub[i], mc, in, tmp, runs));
        return FTK_OK;
    case TK_PRE_SPLIT:
    case TK_PRE_DIGITS:
    case TK_PRE_PUNCTUATION:
    case TK_PRE_WHITESPACE:
    case TK_PRE_WHITESPACE_SPLIT:
        return split_all(&pt->pat, mc, pt->behavior, pt->invert, in, tmp, runs);
    case TK_PRE_BERT: {
        /* whitespace removed, then punctuation isolated */
        struct tk_pattern ws = {.kind = TK_PAT_CHARFN, .fn = tk_is_whitespace};
        struct tk_pattern pu = {.kind = TK_PAT_CHARFN, .fn = tk_is_punct};
        FTK_TRY(split_all(&ws, mc, TK_SPLIT_REMOVED, 0, in, tmp, runs));
        return split_all(&pu, mc, TK_SPLIT_ISOLATED, 0, in, tmp, runs);
    }
    case TK_PRE_BYTELEVEL:
        return bytelevel(pt, mc, in, tmp, runs);
    case TK_PRE_METASPACE:
        return metaspace(pt, mc, in, tmp, runs);
    default:
        FTK_FAIL(FTK_E_INVALID, "tokenizer: bad pre-tokenizer type %d", pt->type);
    }
}

void tk_pretokenizer_free(struct tk_pretokenizer *pt)
{
    if (!pt)
        return;
    for (size_t i = 0; i < pt->nsub; i++)
        tk_pretokenizer_free(&pt->sub[i]);
    free(pt->sub);
    tk_pattern_free(&pt->pat);
}
