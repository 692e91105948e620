/* tests/unit/test_pack.c: ftk pack (libcore/pack.c, pack_batch.c).
 *
 * Example streams are written with the library into tmpfiles; example i has tokens
 * [10 + i, marker, 100 + 2, 100 + 3, ...] (marker 1 for chosen/plain, 2 for rejected), and its
 * first third is prompt (label -100), so every batch row can be traced back to its example. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "ftk/pack.h"
#include "ftk/stream.h"
#include "pack-impl.h"

/* ---- example streams ------------------------------------------------------------------------ */

struct gen {
    const char *kind;      /* example_kind; NULL: header without it */
    int64_t count;
    int64_t lo, hi;        /* lengths in [lo, hi], from the index */
    const int64_t *lens;   /* or explicit lengths */
    const char *hash, *pad, *eos, *producer;
    const char *examples;  /* header's example count, if any */
    const char *header_kind; /* example_kind written in the header when not kind */
    int note;              /* add a message of an unknown kind after example 0 */
    int records;           /* example i carries metadata index = 100 + i (its dataset record) */
};

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static int64_t ex_len(const struct gen *g, int64_t i, int s)
{
    int64_t n = g->lens ? g->lens[i] : g->lo + (int64_t)(mix((uint64_t)i) % (uint64_t)(g->hi - g->lo + 1));
    return s ? n + 1 + (int64_t)(i % 3) : n;   /* rejected: a little longer */
}
static int64_t ex_prompt(const struct gen *g, int64_t n)
{
    return g->kind && strcmp(g->kind, "text") == 0 ? 0 : n / 3;
}
static int32_t ex_tok(int64_t i, int s, int64_t t)
{
    return t == 0 ? (int32_t)(10 + i) : t == 1 ? (s ? 2 : 1) : (int32_t)(100 + t);
}
static int32_t ex_lab(const struct gen *g, int64_t i, int s, int64_t t)
{
    return t < ex_prompt(g, ex_len(g, i, s)) ? FTK_IGNORE_INDEX : ex_tok(i, s, t);
}

static FILE *make_stream(const struct gen *g)
{
    FILE *f = tmpfile();
    struct ftk_stream_writer *w;
    struct ftk_message m;
    ftk_message_init(&m);
    if (ftk_stream_writer_open(f, 0, &w) != FTK_OK)
        return NULL;
    ftk_stream_header_init(&m, g->producer ? g->producer : "test");
    ftk_message_set_meta(&m, "tokenizer_hash", g->hash ? g->hash : "h1");
    ftk_message_set_meta(&m, "vocab_size", "1000");
    ftk_message_set_meta(&m, "pad_token_id", g->pad ? g->pad : "0");
    ftk_message_set_meta(&m, "eos_token_id", g->eos ? g->eos : "2");
    if (g->header_kind || g->kind)
        ftk_message_set_meta(&m, "example_kind", g->header_kind ? g->header_kind : g->kind);
    if (g->examples)
        ftk_message_set_meta(&m, "examples", g->examples);
    ftk_stream_write(w, &m);
    int pw = g->kind && !strcmp(g->kind, "pairwise"), kto = g->kind && !strcmp(g->kind, "kto");
    for (int64_t i = 0; i < g->count; i++) {
        ftk_message_free(&m);
        ftk_message_set_meta(&m, "kind", "example");
        if (g->records)
            ftk_message_set_meta_int(&m, "index", 100 + i);
        for (int s = 0; s < (pw ? 2 : 1); s++) {
            int64_t n = ex_len(g, i, s);
            struct ftk_tensor *a, *b;
            ftk_message_add(&m, pw ? (s ? "rejected_input_ids" : "chosen_input_ids") : "input_ids",
                            FTK_DTYPE_I32, 1, &n, NULL, &a);
            ftk_message_add(&m, pw ? (s ? "rejected_labels" : "chosen_labels") : "labels",
                            FTK_DTYPE_I32, 1, &n, NULL, &b);
            for (int64_t t = 0; t < n; t++) {
                ((int32_t *)a->data)[t] = ex_tok(i, s, t);
                ((int32_t *)b->data)[t] = ex_lab(g, i, s, t);
            }
        }
        if (kto) {
            int64_t one = 1;
            int32_t tag = (int32_t)(i % 2), pl = (int32_t)ex_prompt(g, ex_len(g, i, 0));
            ftk_message_add(&m, "kto_tag", FTK_DTYPE_I32, 1, &one, &tag, NULL);
            ftk_message_add(&m, "prompt_len", FTK_DTYPE_I32, 1, &one, &pl, NULL);
        }
        ftk_stream_write(w, &m);
        if (g->note && i == 0) {
            struct ftk_message n;
            ftk_message_init(&n);
            ftk_message_set_meta(&n, "kind", "note");
            ftk_message_set_meta(&n, "text", "hello");
            ftk_stream_write(w, &n);
            ftk_message_free(&n);
        }
    }
    ftk_message_free(&m);
    ftk_stream_writer_finish(w, NULL);
    ftk_stream_writer_close(w);
    rewind(f);
    return f;
}

/* All messages of a stream (small tests only). */
struct msgs {
    struct ftk_message m[4096];
    size_t n;
};

static ftk_status read_all(FILE *f, struct msgs *out)
{
    rewind(f);
    struct ftk_stream_reader *r;
    FTK_TRY(ftk_stream_reader_open(f, "out", &r));
    out->n = 0;
    ftk_status st;
    for (;;) {
        FTK_ASSERT(out->n < 4096);
        ftk_message_init(&out->m[out->n]);
        st = ftk_stream_read(r, &out->m[out->n]);
        if (st != FTK_OK)
            break;
        out->n++;
    }
    ftk_stream_reader_close(r);
    return st == FTK_E_EOF ? FTK_OK : st;
}

static void free_all(struct msgs *a)
{
    for (size_t i = 0; i <= a->n && i < 4096; i++)
        ftk_message_free(&a->m[i]);
    a->n = 0;
}

/* Runs pack on a fresh stream of g; *out receives the output (rewound), NULL on failure. */
static ftk_status pack(const struct ftk_pack_config *c, const struct gen *g, FILE **out)
{
    FILE *in = make_stream(g);
    *out = tmpfile();
    ftk_status st = ftk_pack_run(c, in, "in", *out, NULL);
    fclose(in);
    rewind(*out);
    return st;
}

static struct msgs M;   /* big: static */

static const int32_t *T32(const struct ftk_message *m, const char *name)
{
    struct ftk_tensor *t = ftk_message_find(m, name);
    return t ? (const int32_t *)t->data : NULL;
}
static int64_t dim(const struct ftk_message *m, const char *name, int d)
{
    struct ftk_tensor *t = ftk_message_find(m, name);
    return t ? t->shape[d] : -1;
}

static char *file_bytes(FILE *f, size_t *len)
{
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    rewind(f);
    char *b = malloc(*len + 1);
    *len = fread(b, 1, *len, f);
    return b;
}

/* ---- pure batch building --------------------------------------------------------------------- */

static struct ftk_pack_example *mk(int64_t index, int nseq, int64_t n0, int64_t n1, int32_t base)
{
    int64_t n[2] = {n0, n1};
    struct ftk_pack_example *e = ftk_pack_example_new(nseq, n);
    e->index = index;
    for (int s = 0; s < nseq; s++)
        for (int64_t t = 0; t < n[s]; t++) {
            e->ids[s][t] = base + s * 50 + (int32_t)t;
            e->labels[s][t] = t == 0 ? FTK_IGNORE_INDEX : e->ids[s][t];
        }
    return e;
}

static void test_pure(void)
{
    TEST("rng: same seed same numbers, bounded, seeds differ") {
        struct ftk_pack_rng a, b, c;
        ftk_pack_rng_seed(&a, 42);
        ftk_pack_rng_seed(&b, 42);
        ftk_pack_rng_seed(&c, 43);
        int same = 1, differ = 0;
        for (int i = 0; i < 1000; i++) {
            uint64_t x = ftk_pack_rng_next(&a), y = ftk_pack_rng_next(&b), z = ftk_pack_rng_next(&c);
            same &= x == y;
            differ |= x != z;
        }
        CHECK(same);
        CHECK(differ);
        int hist[7] = {0}, inrange = 1;
        for (int i = 0; i < 70000; i++) {
            uint64_t v = ftk_pack_rng_below(&a, 7);
            inrange &= v < 7;
            if (v < 7)
                hist[v]++;
        }
        CHECK(inrange);
        for (int i = 0; i < 7; i++)
            CHECK(hist[i] > 9000 && hist[i] < 11000);
    }
    TEST("row length: fixed seq_len, rounded to the multiple, never 0") {
        struct ftk_pack_params p = {.multiple = 8};
        CHECK_INT(ftk_pack_row_len(&p, 1), 8);
        CHECK_INT(ftk_pack_row_len(&p, 8), 8);
        CHECK_INT(ftk_pack_row_len(&p, 9), 16);
        CHECK_INT(ftk_pack_row_len(&p, 0), 8);
        p.multiple = 1;
        CHECK_INT(ftk_pack_row_len(&p, 13), 13);
        p.seq_len = 32;
        CHECK_INT(ftk_pack_row_len(&p, 13), 32);
    }
    TEST("padded batch: labels aligned, padding unlabelled, positions 0..n-1, segment 1/0") {
        struct ftk_pack_example *e[3] = {mk(0, 1, 3, 0, 10), mk(1, 1, 9, 0, 20), mk(2, 1, 1, 0, 30)};
        struct ftk_pack_params p = {.multiple = 8, .pad_id = 7};
        struct ftk_pack_batch b;
        CHECK_OK(ftk_pack_build_padded(e, 3, &p, &b));
        CHECK_INT(b.B, 3);
        CHECK_INT(b.T, 16);
        CHECK_INT(b.tokens, 13);
        for (int64_t r = 0; r < 3; r++)
            for (int64_t t = 0; t < b.T; t++) {
                int64_t i = r * b.T + t;
                if (t < e[r]->n[0]) {
                    CHECK_INT(b.input_ids[i], e[r]->ids[0][t]);
                    CHECK_INT(b.labels[i], e[r]->labels[0][t]);
                    CHECK_INT(b.position_ids[i], t);
                    CHECK_INT(b.segment_ids[i], 1);
                } else {
                    CHECK_INT(b.input_ids[i], 7);
                    CHECK_INT(b.labels[i], FTK_IGNORE_INDEX);
                    CHECK_INT(b.segment_ids[i], 0);
                }
            }
        ftk_pack_batch_free(&b);
        for (int i = 0; i < 3; i++)
            free(e[i]);
    }
    TEST("pairwise batch: chosen at row i, rejected at row i+B/2, one T") {
        struct ftk_pack_example *e[2] = {mk(0, 2, 4, 11, 100), mk(1, 2, 6, 3, 200)};
        struct ftk_pack_params p = {.multiple = 8, .pad_id = 0};
        struct ftk_pack_batch b;
        CHECK_OK(ftk_pack_build_padded(e, 2, &p, &b));
        CHECK_INT(b.B, 4);
        CHECK_INT(b.T, 16);
        CHECK(b.pairwise);
        for (int i = 0; i < 2; i++) {
            CHECK_INT(b.input_ids[i * b.T], e[i]->ids[0][0]);        /* chosen */
            CHECK_INT(b.input_ids[(i + 2) * b.T], e[i]->ids[1][0]);  /* rejected */
            CHECK_INT(b.input_ids[(i + 2) * b.T + e[i]->n[1] - 1], e[i]->ids[1][e[i]->n[1] - 1]);
            CHECK_INT(b.labels[(i + 2) * b.T + e[i]->n[1]], FTK_IGNORE_INDEX);
        }
        ftk_pack_batch_free(&b);
        free(e[0]);
        free(e[1]);
    }
    TEST("kto batch: tags, KL row i = prompt of i + response of (i-1) mod B") {
        struct ftk_pack_example *e[3] = {mk(0, 1, 5, 0, 10), mk(1, 1, 7, 0, 30), mk(2, 1, 4, 0, 50)};
        int32_t pl[3] = {2, 3, 1};
        for (int i = 0; i < 3; i++) {
            e[i]->prompt_len = pl[i];
            e[i]->kto_tag = i == 1;
        }
        struct ftk_pack_params p = {.multiple = 1, .pad_id = 0, .kto = 1};
        struct ftk_pack_batch b;
        CHECK_OK(ftk_pack_build_padded(e, 3, &p, &b));
        CHECK_INT(b.kto_tag[0], 0);
        CHECK_INT(b.kto_tag[1], 1);
        /* row 0: prompt 0 (2) + response of 2 (3) = 5; row 1: 3 + 3 = 6; row 2: 1 + 4 = 5 */
        CHECK_INT(b.T2, 6);
        for (int i = 0; i < 3; i++) {
            const struct ftk_pack_example *a = e[i], *c = e[(i + 2) % 3];
            int64_t len = a->prompt_len + c->n[0] - c->prompt_len, t;
            for (t = 0; t < a->prompt_len; t++) {
                CHECK_INT(b.kl_input_ids[i * b.T2 + t], a->ids[0][t]);
                CHECK_INT(b.kl_labels[i * b.T2 + t], FTK_IGNORE_INDEX);
            }
            for (; t < len; t++) {
                CHECK_INT(b.kl_input_ids[i * b.T2 + t], c->ids[0][c->prompt_len + t - a->prompt_len]);
                CHECK_INT(b.kl_labels[i * b.T2 + t], c->labels[0][c->prompt_len + t - a->prompt_len]);
                CHECK_INT(b.kl_position_ids[i * b.T2 + t], t);
            }
            for (; t < b.T2; t++)
                CHECK_INT(b.kl_labels[i * b.T2 + t], FTK_IGNORE_INDEX);
        }
        ftk_pack_batch_free(&b);
        for (int i = 0; i < 3; i++)
            free(e[i]);
    }
    TEST("row append: neat restarts positions and numbers segments; plain continues") {
        int32_t ids[4] = {5, 6, 7, 8}, lab[4] = {5, 6, 7, 8};
        for (int neat = 0; neat < 2; neat++) {
            struct ftk_pack_params p = {.seq_len = 8, .pad_id = 0, .neat = neat};
            struct ftk_pack_batch b;
            CHECK_OK(ftk_pack_batch_alloc(&b, 1, 8, 0, 0, 0));
            int64_t used = 0;
            ftk_pack_row_append(&b, 0, &used, 1, ids, lab, 3, &p);
            ftk_pack_row_append(&b, 0, &used, 2, ids, lab, 4, &p);
            CHECK_INT(used, 7);
            int32_t pos_neat[8] = {0, 1, 2, 0, 1, 2, 3, 0}, seg_neat[8] = {1, 1, 1, 2, 2, 2, 2, 0};
            for (int t = 0; t < 8; t++) {
                CHECK_INT(b.position_ids[t], neat ? pos_neat[t] : (t < 7 ? t : 0));
                CHECK_INT(b.segment_ids[t], neat ? seg_neat[t] : (t < 7 ? 1 : 0));
            }
            /* neat: each segment's first label is -100, so the shifted loss never
             * predicts the next example's first token from this one's last */
            CHECK_INT(b.labels[0], neat ? -100 : 5);
            CHECK_INT(b.labels[3], neat ? -100 : 5);
            CHECK_INT(b.labels[4], 6);
            CHECK_INT(b.labels[7], -100);
            ftk_pack_batch_free(&b);
        }
    }
}

/* ---- the pipeline ---------------------------------------------------------------------------- */

/* Checks every row of a padded (non-packed) batch stream against the generator. Returns the
 * number of examples seen; marks seen[] (by index). */
static int64_t check_padded_rows(const struct gen *g, char *seen, int *bad)
{
    int64_t examples = 0;
    for (size_t k = 1; k < M.n; k++) {
        const struct ftk_message *m = &M.m[k];
        if (strcmp(ftk_message_kind(m), "batch") != 0)
            continue;
        int64_t B = dim(m, "input_ids", 0), T = dim(m, "input_ids", 1);
        const int32_t *ids = T32(m, "input_ids"), *lab = T32(m, "labels");
        const int32_t *pos = T32(m, "position_ids"), *seg = T32(m, "segment_ids");
        int pw = ftk_message_get_meta(m, "pairwise") != NULL;
        for (int64_t r = 0; r < B; r++) {
            int s = pw && r >= B / 2;
            int64_t i = ids[r * T] - 10;
            if (i < 0 || i >= g->count) { (*bad)++; continue; }
            if (!s) { seen[i]++; examples++; }
            if (pw && ids[(s ? r - B / 2 : r + B / 2) * T] != ids[r * T])
                (*bad)++;   /* the pair's other row */
            int64_t n = ex_len(g, i, s);
            for (int64_t t = 0; t < T; t++) {
                int64_t x = r * T + t;
                if (t < n && (ids[x] != ex_tok(i, s, t) || lab[x] != ex_lab(g, i, s, t) ||
                              pos[x] != t || seg[x] != 1))
                    (*bad)++;
                if (t >= n && (lab[x] != FTK_IGNORE_INDEX || seg[x] != 0 || ids[x] != 0))
                    (*bad)++;
            }
        }
    }
    return examples;
}

static void test_pipeline(void)
{
    struct ftk_pack_config c;
    FILE *out;

    TEST("pipeline sft: every example once, in order, labels aligned, no label on padding") {
        struct gen g = {.kind = "sft", .count = 50, .lo = 2, .hi = 30};
        ftk_pack_config_init(&c);
        c.batch_size = 4;
        CHECK_OK(pack(&c, &g, &out));
        CHECK_OK(read_all(out, &M));
        char seen[50] = {0};
        int bad = 0;
        CHECK_INT(check_padded_rows(&g, seen, &bad), 50);
        CHECK_INT(bad, 0);
        for (int i = 0; i < 50; i++)
            CHECK_INT(seen[i], 1);
        CHECK_INT(M.m[1].tensors[0].t.data ? ((int32_t *)M.m[1].tensors[0].t.data)[0] : -1, 10);
        CHECK_INT(dim(&M.m[1], "input_ids", 1) % 8, 0);
        const struct ftk_message *h = &M.m[0], *e = &M.m[M.n - 1];
        CHECK_STR(ftk_message_get_meta(h, "producer"), "ftk-pack");
        CHECK_STR(ftk_message_get_meta(h, "tokenizer_hash"), "h1");
        CHECK_STR(ftk_message_get_meta(h, "vocab_size"), "1000");
        CHECK_STR(ftk_message_get_meta(h, "pad_token_id"), "0");
        CHECK_STR(ftk_message_kind(e), "end");
        CHECK_STR(ftk_message_get_meta(e, "examples"), "50");
        CHECK_STR(ftk_message_get_meta(e, "batches"), "13");
        free_all(&M);
        fclose(out);
    }
    TEST("pipeline: --max-tokens bounds B*T, --seq-len fixes T") {
        struct gen g = {.kind = "sft", .count = 60, .lo = 1, .hi = 40};
        ftk_pack_config_init(&c);
        c.batch_size = 0;
        c.max_tokens = 128;
        CHECK_OK(pack(&c, &g, &out));
        CHECK_OK(read_all(out, &M));
        int ok = 1;
        int64_t rows = 0;
        for (size_t k = 1; k + 1 < M.n; k++) {
            ok &= dim(&M.m[k], "input_ids", 0) * dim(&M.m[k], "input_ids", 1) <= 128;
            rows += dim(&M.m[k], "input_ids", 0);
        }
        CHECK(ok);
        CHECK_INT(rows, 60);
        free_all(&M);
        fclose(out);
        c.batch_size = 3;
        c.max_tokens = 0;
        c.seq_len = 48;
        CHECK_OK(pack(&c, &g, &out));
        CHECK_OK(read_all(out, &M));
        CHECK_INT(dim(&M.m[1], "input_ids", 1), 48);
        CHECK_STR(ftk_message_get_meta(&M.m[0], "seq_len"), "48");
        free_all(&M);
        fclose(out);
    }
    for (int sorted = 0; sorted < 2; sorted++)
    TEST(sorted ? "neat packing, sorted windows (best-fit-decreasing): no attention across examples"
                : "neat packing: no token can attend across an example boundary") {
        struct gen g = {.kind = "sft", .count = 200, .lo = 1, .hi = 40};
        ftk_pack_config_init(&c);
        c.batch_size = 4;
        c.seq_len = 64;
        c.mode = FTK_PACK_NEAT;
        c.sort_by_length = sorted;
        c.sort_buffer = 70;   /* windows end mid-batch: rows carry over */
        CHECK_OK(pack(&c, &g, &out));
        CHECK_OK(read_all(out, &M));
        char seen[200] = {0};
        int bad = 0;
        int64_t tokens = 0, slots = 0;
        for (size_t k = 1; k + 1 < M.n; k++) {
            const struct ftk_message *m = &M.m[k];
            int64_t B = dim(m, "input_ids", 0), T = dim(m, "input_ids", 1);
            const int32_t *ids = T32(m, "input_ids"), *lab = T32(m, "labels");
            const int32_t *pos = T32(m, "position_ids"), *seg = T32(m, "segment_ids");
            bad += T != 64;
            for (int64_t r = 0; r < B; r++) {
                const int32_t *I = ids + r * T, *L = lab + r * T, *P = pos + r * T, *S = seg + r * T;
                int64_t t = 0;
                int32_t want_seg = 1;
                while (t < T && S[t] != 0) {
                    /* one segment: must be exactly one whole example, positions 0..n-1 */
                    bad += S[t] != want_seg;
                    int64_t i = I[t] - 10;
                    if (i < 0 || i >= 200) { bad++; break; }
                    int64_t n = ex_len(&g, i, 0);
                    seen[i]++;
                    for (int64_t u = 0; u < n; u++, t++)
                        bad += t >= T || S[t] != want_seg || P[t] != u || I[t] != ex_tok(i, 0, u) ||
                               L[t] != (u == 0 ? FTK_IGNORE_INDEX : ex_lab(&g, i, 0, u));
                    tokens += n;
                    want_seg++;
                }
                for (; t < T; t++)   /* the rest is padding */
                    bad += S[t] != 0 || L[t] != FTK_IGNORE_INDEX;
                slots += T;
                /* the attention rule of neat packing: i sees j iff j <= i and S[i] == S[j] != 0;
                 * a same-segment pair is always one example, by the walk above. */
            }
        }
        CHECK_INT(bad, 0);
        int once = 1;
        for (int i = 0; i < 200; i++)
            once &= seen[i] == 1;
        CHECK(once);
        /* packing fills rows well: > 80% streaming, > 95% best-fit-decreasing */
        CHECK(tokens * 100 > slots * (sorted ? 95 : 80));
        free_all(&M);
        fclose(out);
    }
    TEST("plain packing: one segment per row, positions continue across examples") {
        struct gen g = {.kind = "sft", .count = 40, .lo = 1, .hi = 20};
        ftk_pack_config_init(&c);
        c.batch_size = 2;
        c.seq_len = 32;
        c.mode = FTK_PACK_PACKING;
        CHECK_OK(pack(&c, &g, &out));
        CHECK_OK(read_all(out, &M));
        int bad = 0;
        int64_t tokens = 0;
        for (size_t k = 1; k + 1 < M.n; k++) {
            const struct ftk_message *m = &M.m[k];
            int64_t B = dim(m, "input_ids", 0), T = dim(m, "input_ids", 1);
            const int32_t *pos = T32(m, "position_ids"), *seg = T32(m, "segment_ids");
            const int32_t *lab = T32(m, "labels");
            for (int64_t x = 0; x < B * T; x++) {
                if (seg[x]) { bad += seg[x] != 1 || pos[x] != x % T; tokens++; }
                else bad += lab[x] != FTK_IGNORE_INDEX;
            }
        }
        int64_t want = 0;
        for (int i = 0; i < 40; i++)
            want += ex_len(&g, i, 0);
        CHECK_INT(bad, 0);
        CHECK_INT(tokens, want);
        free_all(&M);
        fclose(out);
    }
    TEST("text packing: concatenated and cut into full rows, nothing lost") {
        struct gen g = {.kind = "text", .count = 30, .lo = 5, .hi = 60};
        ftk_pack_config_init(&c);
        c.batch_size = 3;
        c.seq_len = 16;
        c.mode = FTK_PACK_PACKING;
        CHECK_OK(pack(&c, &g, &out));
        CHECK_OK(read_all(out, &M));
        /* the rows read in order are the concatenation of the examples */
        int64_t i = 0, t = 0, bad = 0, partial = 0;
        for (size_t k = 1; k + 1 < M.n; k++) {
            const struct ftk_message *m = &M.m[k];
            int64_t B = dim(m, "input_ids", 0), T = dim(m, "input_ids", 1);
            const int32_t *ids = T32(m, "input_ids"), *seg = T32(m, "segment_ids");
            for (int64_t x = 0; x < B * T; x++) {
                if (!seg[x]) { partial++; continue; }
                bad += i >= 30 || ids[x] != ex_tok(i, 0, t);
                if (++t == ex_len(&g, i, 0)) { i++; t = 0; }
            }
        }
        CHECK_INT(bad, 0);
        CHECK_INT(i, 30);
        CHECK(partial < 16);   /* only the last row has padding */
        free_all(&M);
        fclose(out);
    }
    TEST("pairwise, shuffled: pair i at rows i and i+B/2, every pair once") {
        struct gen g = {.kind = "pairwise", .count = 37, .lo = 3, .hi = 25};
        ftk_pack_config_init(&c);
        c.batch_size = 4;
        c.shuffle = 1;
        c.shuffle_buffer = 10;
        c.seed = 5;
        CHECK_OK(pack(&c, &g, &out));
        CHECK_OK(read_all(out, &M));
        char seen[37] = {0};
        int bad = 0;
        CHECK_INT(check_padded_rows(&g, seen, &bad), 37);
        CHECK_INT(bad, 0);
        int once = 1, rows_even = 1;
        for (int i = 0; i < 37; i++)
            once &= seen[i] == 1;
        for (size_t k = 1; k + 1 < M.n; k++) {
            rows_even &= dim(&M.m[k], "input_ids", 0) % 2 == 0;
            CHECK_STR(ftk_message_get_meta(&M.m[k], "pairwise"), "1");
            /* markers: chosen rows carry 1 at t=1, rejected 2 */
            int64_t B = dim(&M.m[k], "input_ids", 0), T = dim(&M.m[k], "input_ids", 1);
            for (int64_t r = 0; r < B; r++)
                CHECK_INT(T32(&M.m[k], "input_ids")[r * T + 1], r < B / 2 ? 1 : 2);
        }
        CHECK(once);
        CHECK(rows_even);
        CHECK(T32(&M.m[1], "input_ids")[0] != 10);   /* shuffled */
        free_all(&M);
        fclose(out);
    }
    TEST("kto pipeline: tags and KL tensors") {
        struct gen g = {.kind = "kto", .count = 9, .lo = 3, .hi = 12};
        ftk_pack_config_init(&c);
        c.batch_size = 4;
        CHECK_OK(pack(&c, &g, &out));
        CHECK_OK(read_all(out, &M));
        const struct ftk_message *m = &M.m[1];
        CHECK_INT(dim(m, "kto_tag", 0), 4);
        CHECK_INT(dim(m, "kl_input_ids", 0), 4);
        const int32_t *tag = T32(m, "kto_tag"), *kl = T32(m, "kl_input_ids");
        int64_t T2 = dim(m, "kl_input_ids", 1);
        for (int i = 0; i < 4; i++) {
            CHECK_INT(tag[i], i % 2);
            int64_t j = (i + 3) % 4, p_i = ex_len(&g, i, 0) / 3, p_j = ex_len(&g, j, 0) / 3;
            if (p_i > 0)
                CHECK_INT(kl[i * T2], 10 + i);    /* prompt of row i */
            CHECK_INT(kl[i * T2 + p_i], ex_tok(j, 0, p_j));   /* then row j's response */
        }
        free_all(&M);
        fclose(out);
    }
    TEST("same seed gives a byte-identical stream; another seed another order") {
        struct gen g = {.kind = "sft", .count = 300, .lo = 1, .hi = 50};
        ftk_pack_config_init(&c);
        c.shuffle = 1;
        c.shuffle_buffer = 64;
        c.sort_by_length = 1;
        c.sort_buffer = 40;
        c.seed = 1234;
        FILE *o1, *o2, *o3;
        CHECK_OK(pack(&c, &g, &o1));
        CHECK_OK(pack(&c, &g, &o2));
        c.seed = 1235;
        CHECK_OK(pack(&c, &g, &o3));
        size_t l1, l2, l3;
        char *b1 = file_bytes(o1, &l1), *b2 = file_bytes(o2, &l2), *b3 = file_bytes(o3, &l3);
        CHECK(l1 == l2 && memcmp(b1, b2, l1) == 0);
        CHECK(l1 != l3 || memcmp(b1, b3, l1) != 0);
        free(b1);
        free(b2);
        free(b3);
        CHECK_OK(read_all(o3, &M));
        char seen[300] = {0};
        int bad = 0;
        CHECK_INT(check_padded_rows(&g, seen, &bad), 300);
        CHECK_INT(bad, 0);
        free_all(&M);
        fclose(o1);
        fclose(o2);
        fclose(o3);
    }
    TEST("--sort-by-length pads less") {
        struct gen g = {.kind = "sft", .count = 400, .lo = 1, .hi = 200};
        double frac[2];
        for (int s = 0; s < 2; s++) {
            ftk_pack_config_init(&c);
            c.sort_by_length = s;
            c.sort_buffer = 400;
            c.pad_to_multiple_of = 1;
            struct ftk_pack_stats st;
            FILE *in = make_stream(&g);
            out = tmpfile();
            CHECK_OK(ftk_pack_run(&c, in, "in", out, &st));
            frac[s] = (double)(st.slots - st.tokens) / (double)st.slots;
            fclose(in);
            fclose(out);
        }
        CHECK(frac[1] < 0.05);
        CHECK(frac[1] < frac[0] / 4);
    }
    TEST("over-long: error names the example; --truncate and --drop count") {
        int64_t lens[6] = {4, 5, 30, 6, 40, 3};
        struct gen g = {.kind = "sft", .count = 6, .lens = lens};
        ftk_pack_config_init(&c);
        c.seq_len = 16;
        CHECK_ERR(pack(&c, &g, &out), FTK_E_INVALID, "example 2 (message 3) has 30 tokens");
        CHECK(strstr(ftk_last_error(), "--truncate or --drop") != NULL);
        fclose(out);
        struct gen gr = g;   /* tokenize's examples carry their dataset record: the error names it */
        gr.records = 1;
        CHECK_ERR(pack(&c, &gr, &out), FTK_E_INVALID, "example 2 (message 3, record 102) has 30 tokens");
        fclose(out);
        c.overlong = FTK_PACK_OVERLONG_TRUNCATE;
        CHECK_OK(pack(&c, &g, &out));
        CHECK_OK(read_all(out, &M));
        CHECK_STR(ftk_message_get_meta(&M.m[M.n - 1], "truncated"), "2");
        CHECK_STR(ftk_message_get_meta(&M.m[M.n - 1], "dropped"), "0");
        CHECK_INT(T32(&M.m[1], "input_ids")[2 * 16 + 15], ex_tok(2, 0, 15));
        free_all(&M);
        fclose(out);
        c.overlong = FTK_PACK_OVERLONG_DROP;
        CHECK_OK(pack(&c, &g, &out));
        CHECK_OK(read_all(out, &M));
        CHECK_STR(ftk_message_get_meta(&M.m[M.n - 1], "dropped"), "2");
        CHECK_STR(ftk_message_get_meta(&M.m[M.n - 1], "examples"), "6");
        CHECK_INT(dim(&M.m[1], "input_ids", 0), 4);
        free_all(&M);
        fclose(out);
    }
    TEST("bad input: batch stream, tokenizer mismatch, unknown kind, no pad id, packing pairs") {
        struct gen g = {.kind = "sft", .count = 3, .lo = 2, .hi = 5};
        ftk_pack_config_init(&c);
        FILE *batches;
        CHECK_OK(pack(&c, &g, &batches));
        out = tmpfile();
        CHECK_ERR(ftk_pack_run(&c, batches, "b.fts", out, NULL), FTK_E_FORMAT, "batch stream");
        fclose(out);
        fclose(batches);
        c.expect_tokenizer = "other";
        CHECK_ERR(pack(&c, &g, &out), FTK_E_MISMATCH, "tokenizer hash mismatch");
        CHECK(strstr(ftk_last_error(), "h1") && strstr(ftk_last_error(), "other"));
        fclose(out);
        c.expect_tokenizer = "h1";
        CHECK_OK(pack(&c, &g, &out));
        fclose(out);
        c.expect_tokenizer = NULL;
        struct gen g2 = {.kind = "images", .count = 1, .lo = 2, .hi = 2};
        CHECK_ERR(pack(&c, &g2, &out), FTK_E_UNSUPPORTED, "example_kind");
        fclose(out);
        struct gen g3 = {.kind = "sft", .count = 1, .lo = 2, .hi = 2, .pad = "-1", .eos = "-1"};
        CHECK_ERR(pack(&c, &g3, &out), FTK_E_NOTFOUND, "--pad-id");
        fclose(out);
        c.pad_id = 5;
        CHECK_OK(pack(&c, &g3, &out));
        CHECK_OK(read_all(out, &M));
        CHECK_STR(ftk_message_get_meta(&M.m[0], "pad_token_id"), "5");
        free_all(&M);
        fclose(out);
        struct gen g4 = {.kind = "sft", .count = 1, .lo = 2, .hi = 2, .pad = "-1", .eos = "9"};
        c.pad_id = -1;
        CHECK_OK(pack(&c, &g4, &out));
        CHECK_OK(read_all(out, &M));
        CHECK_STR(ftk_message_get_meta(&M.m[0], "pad_token_id"), "9");   /* eos, as LLaMA-Factory */
        free_all(&M);
        fclose(out);
        struct gen g5 = {.kind = "pairwise", .count = 2, .lo = 2, .hi = 3};
        c.mode = FTK_PACK_NEAT;
        c.seq_len = 16;
        CHECK_ERR(pack(&c, &g5, &out), FTK_E_UNSUPPORTED, "--neat-packing works on text and sft streams, not pairwise");
        fclose(out);
    }
    TEST("header: batches when the input counts its examples; unknown kinds pass through") {
        struct gen g = {.kind = "sft", .count = 10, .lo = 2, .hi = 9, .examples = "10", .note = 1};
        ftk_pack_config_init(&c);
        c.batch_size = 4;
        CHECK_OK(pack(&c, &g, &out));
        CHECK_OK(read_all(out, &M));
        CHECK_STR(ftk_message_get_meta(&M.m[0], "batches"), "3");
        CHECK(ftk_message_get_meta(&M.m[0], "examples") == NULL);
        int notes = 0;
        for (size_t k = 0; k < M.n; k++)
            if (!strcmp(ftk_message_kind(&M.m[k]), "note")) {
                notes++;
                CHECK_STR(ftk_message_get_meta(&M.m[k], "text"), "hello");
            }
        CHECK_INT(notes, 1);
        CHECK_STR(ftk_message_get_meta(&M.m[M.n - 1], "batches"), "3");
        free_all(&M);
        fclose(out);
        c.max_tokens = 64;   /* batch count no longer known up front */
        CHECK_OK(pack(&c, &g, &out));
        CHECK_OK(read_all(out, &M));
        CHECK(ftk_message_get_meta(&M.m[0], "batches") == NULL);
        free_all(&M);
        fclose(out);
    }
    TEST("header batches equals the end count wherever it is written") {
        int64_t counts[3] = {10, 17, 64}, bss[3] = {1, 3, 8}, wins[3] = {0, 4, 7};
        int written = 0, agree = 1;
        for (int a = 0; a < 3; a++)
            for (int b = 0; b < 3; b++)
                for (int w = 0; w < 3; w++) {
                    char cnt[24];
                    snprintf(cnt, sizeof cnt, "%lld", (long long)counts[a]);
                    struct gen g = {.kind = w == 2 ? "pairwise" : "sft", .count = counts[a],
                                    .lo = 1, .hi = 30, .examples = cnt};
                    ftk_pack_config_init(&c);
                    c.batch_size = bss[b];
                    c.sort_by_length = wins[w] > 0;
                    c.sort_buffer = wins[w] > 0 ? wins[w] : 1;
                    c.shuffle = w == 2;
                    c.shuffle_buffer = 5;
                    CHECK_OK(pack(&c, &g, &out));
                    CHECK_OK(read_all(out, &M));
                    const char *hb = ftk_message_get_meta(&M.m[0], "batches");
                    const char *eb = ftk_message_get_meta(&M.m[M.n - 1], "batches");
                    if (hb) {
                        written++;
                        agree &= eb && strcmp(hb, eb) == 0;
                    }
                    free_all(&M);
                    fclose(out);
                }
        CHECK_INT(written, 27);
        CHECK(agree);
    }
    TEST("a pairwise example in a stream not marked pairwise is named; no example_kind = sft") {
        struct gen g = {.kind = "pairwise", .header_kind = "sft", .count = 2, .lo = 2, .hi = 3};
        ftk_pack_config_init(&c);
        CHECK_ERR(pack(&c, &g, &out), FTK_E_FORMAT, "example 0 (message 1): a pairwise example");
        fclose(out);
        struct gen g2 = {.kind = NULL, .count = 2, .lo = 2, .hi = 3};
        CHECK_OK(pack(&c, &g2, &out));
        fclose(out);
    }
    TEST("config check: packing without --seq-len, no batch size, max-tokens below seq-len") {
        ftk_pack_config_init(&c);
        c.mode = FTK_PACK_PACKING;
        CHECK_ERR(ftk_pack_config_check(&c), FTK_E_INVALID, "--seq-len");
        ftk_pack_config_init(&c);
        c.batch_size = 0;
        CHECK_ERR(ftk_pack_config_check(&c), FTK_E_INVALID, "--batch-size");
        ftk_pack_config_init(&c);
        c.max_tokens = 10;
        c.seq_len = 32;
        CHECK_ERR(ftk_pack_config_check(&c), FTK_E_INVALID, "--max-tokens");
    }
}

int main(void)
{
    test_pure();
    test_pipeline();
    return check_summary();
}
