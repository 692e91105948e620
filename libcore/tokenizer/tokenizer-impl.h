/* libcore/tokenizer/tokenizer-impl.h: the tokenizer's internal types, shared by the files of
 * libcore/tokenizer/ (one job each: load.c parses tokenizer.json, normalizer.c, pretokenizer.c,
 * bpe.c, added.c, postprocessor.c, decoder.c, encode.c, pattern.c matches and splits, util.c holds
 * the hash maps, string lists and Unicode predicates).
 *
 * The pipeline follows HuggingFace tokenizers (tokenizers/src/tokenizer/mod.rs): added tokens
 * with normalized=false are split out of the raw text, each remaining segment is normalized,
 * added tokens with normalized=true are split out of the normalized text, the rest goes through
 * the pre-tokenizer and then the model; the post-processor adds special tokens. HF tracks offsets
 * through every step; ids do not need them, so here every step works on plain byte strings. */
#ifndef FTK_TOKENIZER_IMPL_H
#define FTK_TOKENIZER_IMPL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include "ftk/tokenizer.h"

/* ---- util.c: growable byte buffers and lists of strings ------------------------------------ */

struct tk_span {
    uint32_t off, len;
    uint8_t first; /* begins at offset 0 of the original text (Metaspace prepend_scheme "first") */
};
/* A list of strings stored back to back in one buffer. */
struct tk_list {
    char *b;
    size_t bn, bcap;
    struct tk_span *s;
    size_t n, cap;
};
ftk_status tk_list_reserve(struct tk_list *l, size_t bytes);
/* Appends a string (copied) as a new element. */
ftk_status tk_list_push(struct tk_list *l, const char *p, size_t n, int first);
/* Appends bytes to the buffer only (the caller then adds a span with tk_list_span). */
ftk_status tk_list_bytes(struct tk_list *l, const char *p, size_t n);
ftk_status tk_list_span(struct tk_list *l, size_t off, size_t len, int first);
static inline void tk_list_clear(struct tk_list *l) { l->bn = 0; l->n = 0; }
void tk_list_free(struct tk_list *l);

/* ---- util.c: hash maps ----------------------------------------------------------------------- */

uint64_t tk_hash_bytes(const void *p, size_t n);

/* String -> int32 map; keys are not copied (they point into the tokenizer's storage). */
struct tk_strmap {
    struct tk_strmap_entry { const char *k; uint32_t klen; int32_t v; uint32_t h; } *e;
    size_t n, cap; /* cap: power of two */
};
ftk_status tk_strmap_init(struct tk_strmap *m, size_t expect);
/* Inserts or overwrites. */
ftk_status tk_strmap_put(struct tk_strmap *m, const char *k, size_t klen, int32_t v);
/* -1 when absent. */
int32_t tk_strmap_get(const struct tk_strmap *m, const char *k, size_t klen);
void tk_strmap_free(struct tk_strmap *m);

/* uint64 -> (uint32, int32) map, used for merges ((left id, right id) -> (rank, new id)) and for
 * the added-token trie ((node, byte) -> child). Key UINT64_MAX is reserved. */
struct tk_u64map {
    struct tk_u64map_entry { uint64_t k; uint32_t a; int32_t b; } *e;
    size_t n, cap;
};
ftk_status tk_u64map_init(struct tk_u64map *m, size_t expect);
ftk_status tk_u64map_put(struct tk_u64map *m, uint64_t k, uint32_t a, int32_t b);
/* NULL when absent. */
static inline const struct tk_u64map_entry *tk_u64map_get(const struct tk_u64map *m, uint64_t k)
{
    uint64_t h = k * 0x9E3779B97F4A7C15ull;
    size_t mask = m->cap - 1, i = (size_t)(h >> 32) & mask;
    for (;;) {
        const struct tk_u64map_entry *e = &m->e[i];
        if (e->k == k)
            return e;
        if (e->k == UINT64_MAX)
            return NULL;
        i = (i + 1) & mask;
    }
}
void tk_u64map_free(struct tk_u64map *m);

/* ---- util.c: UTF-8 and Unicode predicates (utf8proc) ----------------------------------------- */

/* Decodes one code point of valid UTF-8 at p (n bytes left); returns its length. */
static inline int tk_utf8_dec(const unsigned char *p, size_t n, uint32_t *cp)
{
    unsigned c = p[0];
    if (c < 0x80 || n < 2) { *cp = c; return 1; }
    if (c < 0xE0) { *cp = (c & 0x1F) << 6 | (p[1] & 0x3F); return 2; }
    if (c < 0xF0 || n < 4) { *cp = (c & 0x0F) << 12 | (p[1] & 0x3F) << 6 | (p[2] & 0x3F); return 3; }
    *cp = (c & 0x07) << 18 | (p[1] & 0x3F) << 12 | (p[2] & 0x3F) << 6 | (p[3] & 0x3F);
    return 4;
}
int tk_utf8_enc(uint32_t cp, char out[4]);
/* Offset of the first invalid byte, or (size_t)-1 when `p` is valid UTF-8. */
size_t tk_utf8_invalid_at(const char *p, size_t n);
/* Appends `p` with ill-formed sequences replaced by U+FFFD as Rust's String::from_utf8_lossy
 * does (one replacement per maximal ill-formed subpart). */
ftk_status tk_utf8_lossy(const char *p, size_t n, struct tk_list *out);

int tk_is_whitespace(uint32_t cp); /* Rust char::is_whitespace (White_Space) */
int tk_is_alnum_word(uint32_t cp); /* regex \w: alphabetic, marks, Nd, Pc */
int tk_is_numeric(uint32_t cp);    /* Rust char::is_numeric: Nd, Nl, No */
int tk_is_punct(uint32_t cp);      /* ASCII punctuation or Unicode P* (HF is_punc) */

/* ---- pattern.c: patterns and HF's split behaviours --------------------------------------------- */

enum tk_pat_kind { TK_PAT_STRING = 0, TK_PAT_REGEX = 1, TK_PAT_CHARFN = 2 };
struct tk_pattern {
    int kind;
    char *str;              /* TK_PAT_STRING: the literal */
    size_t len;
    pcre2_code *re;         /* TK_PAT_REGEX */
    int (*fn)(uint32_t cp); /* TK_PAT_CHARFN: each matching character is one match */
};
/* Compiles `src` (Oniguruma syntax as HF writes it) with PCRE2_UTF|PCRE2_UCP and JIT. `what`
 * names it in errors. */
ftk_status tk_pattern_regex(struct tk_pattern *p, const char *src, const char *what);
ftk_status tk_pattern_string(struct tk_pattern *p, const char *s, size_t n);
void tk_pattern_free(struct tk_pattern *p);

/* HF SplitDelimiterBehavior. */
enum tk_behavior {
    TK_SPLIT_REMOVED = 0, TK_SPLIT_ISOLATED, TK_SPLIT_MERGED_PREV, TK_SPLIT_MERGED_NEXT,
    TK_SPLIT_CONTIGUOUS,
};

/* Per-call scratch for matching (PCRE2 match data). */
struct tk_match_ctx {
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit;
};
void tk_match_ctx_free(struct tk_match_ctx *c);

/* One match/non-match run of a string, as HF Pattern::find_matches returns. */
struct tk_run { uint32_t a, b; uint8_t match; };
struct tk_runs { struct tk_run *v; size_t n, cap; };

/* Finds the matches of `p` in s[0..n) (HF find_matches; every byte covered, in order). */
ftk_status tk_pattern_find(const struct tk_pattern *p, struct tk_match_ctx *mc, const char *s,
                           size_t n, int invert, struct tk_runs *out);
/* Splits s[0..n) by `p` and `behavior` (HF NormalizedString::split) and appends the non-empty
 * pieces to `out`; `first` marks the first piece when s begins the original text. */
ftk_status tk_split(const struct tk_pattern *p, struct tk_match_ctx *mc, const char *s, size_t n,
                    int first, int behavior, int invert, struct tk_runs *scratch, struct tk_list *out);
/* Replaces every match of `p` in s with `rep` (HF replace), appending the result to `out`'s
 * buffer (no span added). */
ftk_status tk_pattern_replace(const struct tk_pattern *p, struct tk_match_ctx *mc, const char *s,
                              size_t n, const char *rep, size_t rep_len, struct tk_list *out,
                              struct tk_runs *scratch);

/* ---- normalizer.c ---------------------------------------------------------------------------- */

enum tk_norm_type {
    TK_NORM_SEQUENCE = 0, TK_NORM_NFC, TK_NORM_NFD, TK_NORM_NFKC, TK_NORM_NFKD, TK_NORM_LOWERCASE,
    TK_NORM_STRIP, TK_NORM_PREPEND, TK_NORM_REPLACE, TK_NORM_STRIP_ACCENTS, TK_NORM_BYTELEVEL,
};
struct tk_normalizer {
    int type;
    struct tk_normalizer *sub;  /* Sequence */
    size_t nsub;
    char *str;                  /* Prepend: the prefix; Replace: the content */
    size_t str_len;
    struct tk_pattern pat;      /* Replace */
    int left, right;            /* Strip */
};
/* Normalizes s[0..n) into out (cleared first). */
ftk_status tk_normalize(const struct tk_normalizer *nz, struct tk_match_ctx *mc, const char *s,
                        size_t n, struct tk_list *out, struct tk_list *tmp, struct tk_runs *runs);
void tk_normalizer_free(struct tk_normalizer *nz);

/* ---- pretokenizer.c -------------------------------------------------------------------------- */

enum tk_pretok_type {
    TK_PRE_SEQUENCE = 0, TK_PRE_SPLIT, TK_PRE_BYTELEVEL, TK_PRE_METASPACE, TK_PRE_WHITESPACE,
    TK_PRE_WHITESPACE_SPLIT, TK_PRE_DIGITS, TK_PRE_PUNCTUATION, TK_PRE_BERT,
};
enum tk_prepend_scheme { TK_PREPEND_ALWAYS = 0, TK_PREPEND_FIRST, TK_PREPEND_NEVER };
struct tk_pretokenizer {
    int type;
    struct tk_pretokenizer *sub; /* Sequence */
    size_t nsub;
    struct tk_pattern pat;       /* Split (also Whitespace's regex, ByteLevel's when use_regex) */
    int behavior, invert;        /* Split, Punctuation, Digits */
    int add_prefix_space, use_regex; /* ByteLevel */
    uint32_t replacement;        /* Metaspace */
    char rep[5];
    int rep_len;
    int prepend_scheme, split;   /* Metaspace */
};
/* Applies the pre-tokenizer to `in` (a list of pieces), leaving the pieces in `in`. */
ftk_status tk_pretokenize(const struct tk_pretokenizer *pt, struct tk_match_ctx *mc,
                          struct tk_list *in, struct tk_list *tmp, struct tk_runs *runs);
void tk_pretokenizer_free(struct tk_pretokenizer *pt);
/* GPT-2's bytes_to_unicode(): byte -> code point, and the inverse (-1 when not a byte char). */
extern const uint16_t tk_byte_to_cp[256];
int tk_cp_to_byte(uint32_t cp);
/* ByteLevel's regex (GPT-2's), used when use_regex is set. */
#define TK_BYTELEVEL_REGEX \
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

/* ---- bpe.c ----------------------------------------------------------------------------------- */

struct tk_bpe {
    /* vocab: token strings back to back, id -> (offset, length); -1 offset for holes */
    char *vstore;
    size_t vstore_len;
    uint32_t *voff, *vlen;
    size_t nvocab;          /* max id + 1 */
    struct tk_strmap vocab;
    struct tk_u64map merges; /* (left << 32 | right) -> (rank, merged id) */
    int32_t unk_id;          /* -1 when no unk_token */
    char *prefix, *suffix;   /* continuing_subword_prefix, end_of_word_suffix (NULL = none) */
    size_t prefix_len, suffix_len;
    int fuse_unk, byte_fallback, ignore_merges;
    int32_t byte_ids[256];   /* byte_fallback: id of "<0xAB>", -1 when absent */
    int32_t *bmp_id;         /* code point < 0x10000 -> id of that one-character token, -1; NULL
                              * with a prefix or suffix (then the characters vary) */
    /* The merges again, packed for cache locality when ids < 2^18 and ranks < 2^20: one uint64
     * per slot, (left << 18 | right) << 20 | rank, UINT64_MAX empty; rank -> merged id. */
    uint64_t *pm;
    size_t pm_mask;
    int32_t *merge_new;
    int split_meta;          /* no token holds "x\u2581" with x != U+2581: a word can be cut
                              * before such a "\u2581" without changing the result */
};
/* Per-call scratch for merging. */
struct tk_bpe_work {
    struct tk_sym { int32_t id; int32_t prev, next; uint32_t len; } *sym;
    size_t nsym, capsym;
    struct tk_merge { uint64_t key; /* rank << 32 | pos */ int32_t id, left, right; } *heap;
    size_t nheap, capheap;
    char *tmp;
    size_t tmpcap;
};
/* Appends the ids of one pre-token (HF BPE::tokenize). */
ftk_status tk_bpe_tokenize(const struct tk_bpe *m, struct tk_bpe_work *w, const char *s, size_t n,
                           struct ftk_ids *out);
void tk_bpe_work_free(struct tk_bpe_work *w);
/* After loading: packs the merges into the compact table when ids and ranks fit. */
ftk_status tk_bpe_pack_merges(struct tk_bpe *m);
void tk_bpe_free(struct tk_bpe *m);
static inline const char *tk_bpe_token(const struct tk_bpe *m, int32_t id, size_t *len)
{
    if (id < 0 || (size_t)id >= m->nvocab || m->voff[id] == UINT32_MAX)
        return NULL;
    *len = m->vlen[id];
    return m->vstore + m->voff[id];
}

/* ---- added.c --------------------------------------------------------------------------------- */

struct tk_added_token {
    char *content;
    size_t len;
    int32_t id;
    int special, lstrip, rstrip, single_word, normalized;
};
/* A byte trie over a set of added tokens, for HF's leftmost-longest matching. */
struct tk_trie {
    struct tk_u64map next;   /* (node << 8 | byte) -> child node */
    int32_t *tok;            /* node -> index into the added-token array, -1 when none */
    size_t nnodes, cap;
    uint8_t firstbyte[256];  /* bytes that start a token */
    int empty;               /* no tokens */
};
ftk_status tk_trie_build(struct tk_trie *t, const struct tk_added_token *toks, size_t n,
                         int normalized, const struct tk_normalizer *nz);
void tk_trie_free(struct tk_trie *t);
/* One piece of an added-token split: token index (>= 0) or -1 for text. */
struct tk_added_split { size_t a, b; int32_t tok; };
struct tk_added_splits { struct tk_added_split *v; size_t n, cap; };
/* HF AddedVocabulary::find_matches over s[0..n) (cleared first). */
ftk_status tk_added_find(const struct tk_trie *t, const struct tk_added_token *toks, const char *s,
                         size_t n, struct tk_added_splits *out);

/* ---- postprocessor.c ------------------------------------------------------------------------- */

/* Every supported post-processor adds ids around a single sequence: prefix + A + suffix. */
struct tk_post {
    struct ftk_ids prefix, suffix;
};

/* ---- decoder.c ------------------------------------------------------------------------------- */

enum tk_dec_type {
    TK_DEC_SEQUENCE = 0, TK_DEC_BYTELEVEL, TK_DEC_REPLACE, TK_DEC_BYTEFALLBACK, TK_DEC_FUSE,
    TK_DEC_STRIP, TK_DEC_METASPACE,
};
struct tk_decoder {
    int type;
    struct tk_decoder *sub;
    size_t nsub;
    struct tk_pattern pat;     /* Replace */
    char *str;                 /* Replace content */
    size_t str_len;
    uint32_t ch;               /* Strip content, Metaspace replacement */
    int start, stop;           /* Strip */
    int prepend_scheme;        /* Metaspace */
};
/* Runs the decoder chain over a list of token strings (HF Decoder::decode_chain). */
ftk_status tk_decode_chain(const struct tk_decoder *d, struct tk_match_ctx *mc, struct tk_list *toks,
                           struct tk_list *tmp, struct tk_runs *runs);
void tk_decoder_free(struct tk_decoder *d);

/* ---- cache.c: per-thread cache of pre-token -> ids ---------------------------------------------- */

struct tk_cache;
struct tk_caches {
    pthread_key_t key;
    pthread_mutex_t mu;     /* guards the list */
    struct tk_cache *head;
    int ok;
};
int tk_caches_init(struct tk_caches *cs);
void tk_caches_free(struct tk_caches *cs);
/* The calling thread's cache (made on first use); NULL when none can be had. */
struct tk_cache *tk_cache_get(struct tk_caches *cs);
/* 1 and the ids appended on a hit, 0 on a miss, -1 when out of memory. */
int tk_cache_lookup(const struct tk_cache *c, const char *s, size_t n, struct ftk_ids *out);
void tk_cache_store(struct tk_cache *c, const char *s, size_t n, const int32_t *ids, size_t nids);
/* Pre-tokens up to this many bytes are cached. */
#define TK_CACHE_MAX_WORD 64

/* ---- the tokenizer --------------------------------------------------------------------------- */

struct ftk_tokenizer {
    struct tk_bpe bpe;
    struct tk_normalizer *normalizer;  /* NULL: none */
    struct tk_pretokenizer *pretok;    /* NULL: none */
    struct tk_decoder *decoder;        /* NULL: tokens joined with " " */
    struct tk_post post;
    struct tk_added_token *added;
    size_t nadded;
    struct tk_strmap added_map;        /* content -> id */
    int32_t *added_by_id;              /* id -> index into added, -1 (size: vocab_size) */
    size_t vocab_size;                 /* max id + 1 over vocab and added tokens */
    struct tk_trie trie_raw, trie_norm; /* normalized=false / normalized=true added tokens */
    /* tokenizer_config.json */
    char *bos, *eos, *pad, *unk;
    char *chat_template;
    int clean_up;
    char hash[65];
    /* Per-thread caches. Encoding takes a const tokenizer; the caches are its one mutable part
     * (each thread touches only its own; the list is under the mutex). */
    struct tk_caches caches;
};

/* load.c helpers shared with the unit tests: builds from tokenizer.json text (config may be NULL). */
ftk_status tk_tokenizer_from_json(const char *json, size_t len, const char *config, size_t clen,
                                  const char *what, struct ftk_tokenizer **out);

#endif
