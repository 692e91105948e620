/* libcore/pack_batch.c: one batch from examples (pack-impl.h), and the PRNG of ftk pack.
 *
 * Letters: B rows, T row length, T2 KL row length, P pairs (B = 2P). Layouts follow what
 * LLaMA-Factory's collators hand to a HF model: right padding, labels aligned with input_ids
 * (the model shifts), FTK_IGNORE_INDEX on padding; pairwise batches concatenated as
 * [chosen_0..chosen_{P-1}, rejected_0..rejected_{P-1}] (PairwiseDataCollatorWithPadding, TRL's
 * concatenated_forward); KTO KL rows as TRL's KTOTrainer builds them: prompt of row i with the
 * completion of row (i-1) mod B. */
#include <stdlib.h>
#include <string.h>

#include "pack-impl.h"

struct ftk_pack_example *ftk_pack_example_new(int nseq, const int64_t *n)
{
    int64_t total = 0;
    for (int s = 0; s < nseq; s++)
        total += n[s];
    struct ftk_pack_example *e = malloc(sizeof *e + (size_t)(2 * total) * sizeof(int32_t));
    if (!e)
        return NULL;
    memset(e, 0, sizeof *e);
    e->nseq = nseq;
    int32_t *p = (int32_t *)(e + 1);
    for (int s = 0; s < nseq; s++) {
        e->n[s] = n[s];
        e->ids[s] = p;
        e->labels[s] = p + n[s];
        p += 2 * n[s];
    }
    return e;
}

int64_t ftk_pack_row_len(const struct ftk_pack_params *p, int64_t maxlen)
{
    if (p->seq_len > 0)
        return p->seq_len;
    int64_t m = p->multiple > 0 ? p->multiple : 1;
    if (maxlen < 1)
        maxlen = 1;
    return (maxlen + m - 1) / m * m;
}

static void fill_pad(int32_t *ids, int32_t *labels, int32_t *pos, int32_t *seg, size_t n,
                     int32_t pad_id)
{
    for (size_t i = 0; i < n; i++) {
        ids[i] = pad_id;
        labels[i] = FTK_IGNORE_INDEX;
    }
    memset(pos, 0, n * sizeof *pos);
    memset(seg, 0, n * sizeof *seg);
}

ftk_status ftk_pack_batch_alloc(struct ftk_pack_batch *b, int64_t B, int64_t T, int64_t T2,
                                int kto, int32_t pad_id)
{
    memset(b, 0, sizeof *b);
    FTK_FAIL_IF(B < 1 || T < 1 || T2 < 0 || B > INT32_MAX || T > INT32_MAX || T2 > INT32_MAX,
                FTK_E_INVALID, "pack: bad batch shape (%lld,%lld)", (long long)B, (long long)T);
    size_t main = (size_t)B * (size_t)T, kl = (size_t)B * (size_t)T2;
    size_t words = 4 * main + (kto ? (size_t)B + 4 * kl : 0);
    int32_t *mem = malloc(words * sizeof(int32_t));
    FTK_FAIL_IF(!mem, FTK_E_NOMEM, "pack: out of memory for a (%lld,%lld) batch", (long long)B,
                (long long)T);
    b->mem_ = mem;
    b->B = B;
    b->T = T;
    b->input_ids = mem;
    b->labels = mem + main;
    b->position_ids = mem + 2 * main;
    b->segment_ids = mem + 3 * main;
    fill_pad(b->input_ids, b->labels, b->position_ids, b->segment_ids, main, pad_id);
    if (kto) {
        b->kto = 1;
        b->kto_tag = mem + 4 * main;
        memset(b->kto_tag, 0, (size_t)B * sizeof(int32_t));
        b->T2 = T2;
        int32_t *k = b->kto_tag + B;
        b->kl_input_ids = k;
        b->kl_labels = k + kl;
        b->kl_position_ids = k + 2 * kl;
        b->kl_segment_ids = k + 3 * kl;
        fill_pad(b->kl_input_ids, b->kl_labels, b->kl_position_ids, b->kl_segment_ids, kl, pad_id);
    }
    return FTK_OK;
}

void ftk_pack_batch_free(struct ftk_pack_batch *b)
{
    if (!b)
        return;
    free(b->mem_);
    memset(b, 0, sizeof *b);
}

/* Writes one sequence at the start of a padded row: positions 0..n-1, segment 1. */
static void put_row(int32_t *ids, int32_t *labels, int32_t *pos, int32_t *seg,
                    const int32_t *src_ids, const int32_t *src_labels, int64_t n)
{
    memcpy(ids, src_ids, (size_t)n * sizeof *ids);
    memcpy(labels, src_labels, (size_t)n * sizeof *labels);
    for (int64_t t = 0; t < n; t++) {
        pos[t] = (int32_t)t;
        seg[t] = 1;
    }
}

/* KL row of row i: prompt of example a (tokens [0, pa)), then the completion of example c
 * (tokens [pc, nc)), labelled as c labels it; the prompt part carries no label. */
static int64_t kl_len(const struct ftk_pack_example *a, const struct ftk_pack_example *c)
{
    return (int64_t)a->prompt_len + (c->n[0] - c->prompt_len);
}

ftk_status ftk_pack_build_padded(struct ftk_pack_example *const *ex, int64_t n,
                                 const struct ftk_pack_params *p, struct ftk_pack_batch *b)
{
    FTK_FAIL_IF(n < 1, FTK_E_INVALID, "pack: empty batch");
    int pairwise = ex[0]->nseq == 2;
    int64_t maxlen = 0, maxkl = 0;
    for (int64_t i = 0; i < n; i++) {
        FTK_ASSERT(ex[i]->nseq == ex[0]->nseq);
        int64_t len = ftk_pack_example_len(ex[i]);
        if (len > maxlen)
            maxlen = len;
        if (p->kto) {
            int64_t k = kl_len(ex[i], ex[(i + n - 1) % n]);
            if (p->kl_limit > 0 && k > p->kl_limit)
                k = p->kl_limit;
            if (k > maxkl)
                maxkl = k;
        }
    }
    int64_t T = ftk_pack_row_len(p, maxlen);
    int64_t T2 = p->kto ? ftk_pack_row_len(p, maxkl) : 0;
    int64_t B = pairwise ? 2 * n : n;
    FTK_TRY(ftk_pack_batch_alloc(b, B, T, T2, p->kto, p->pad_id));
    b->pairwise = pairwise;
    b->examples = n;
    for (int64_t i = 0; i < n; i++) {
        const struct ftk_pack_example *e = ex[i];
        for (int s = 0; s < e->nseq; s++) {
            int64_t r = i + s * n;   /* chosen at i, rejected at i + P */
            FTK_ASSERT(e->n[s] <= T);
            put_row(b->input_ids + r * T, b->labels + r * T, b->position_ids + r * T,
                    b->segment_ids + r * T, e->ids[s], e->labels[s], e->n[s]);
            b->tokens += e->n[s];
        }
        if (p->kto) {
            const struct ftk_pack_example *c = ex[(i + n - 1) % n];
            int64_t len = kl_len(e, c), pa = e->prompt_len;
            if (len > T2)
                len = T2;
            if (pa > len)
                pa = len;
            int32_t *ids = b->kl_input_ids + i * T2, *lab = b->kl_labels + i * T2;
            memcpy(ids, e->ids[0], (size_t)pa * sizeof *ids);           /* prompt of i */
            memcpy(ids + pa, c->ids[0] + c->prompt_len, (size_t)(len - pa) * sizeof *ids);
            memcpy(lab + pa, c->labels[0] + c->prompt_len, (size_t)(len - pa) * sizeof *lab);
            for (int64_t t = 0; t < len; t++) {
                b->kl_position_ids[i * T2 + t] = (int32_t)t;
                b->kl_segment_ids[i * T2 + t] = 1;
            }
            b->kto_tag[i] = e->kto_tag;
        }
    }
    return FTK_OK;
}

void ftk_pack_row_append(struct ftk_pack_batch *b, int64_t r, int64_t *used, int32_t seg,
                         const int32_t *ids, const int32_t *labels, int64_t n,
                         const struct ftk_pack_params *p)
{
    FTK_ASSERT(r >= 0 && r < b->B && *used + n <= b->T);
    int64_t at = r * b->T + *used;
    memcpy(b->input_ids + at, ids, (size_t)n * sizeof *ids);
    memcpy(b->labels + at, labels, (size_t)n * sizeof *labels);
    for (int64_t t = 0; t < n; t++) {
        b->position_ids[at + t] = (int32_t)(p->neat ? t : *used + t);
        b->segment_ids[at + t] = p->neat ? seg : 1;
    }
    /* Neat packing: the segment's first label goes to -100, as transformers'
     * DataCollatorWithFlattening does (separator_id). The model's shift would otherwise train
     * the previous example's last token to predict it across the boundary; unpacked, that label
     * is never a target either (nothing precedes it). */
    if (p->neat && n > 0)
        b->labels[at] = FTK_IGNORE_INDEX;
    *used += n;
    b->tokens += n;
}

ftk_status ftk_pack_batch_to_message(const struct ftk_pack_batch *b, struct ftk_message *m)
{
    int64_t shape[2] = {b->B, b->T};
    FTK_TRY(ftk_message_set_meta(m, "kind", "batch"));
    if (b->pairwise)
        FTK_TRY(ftk_message_set_meta(m, "pairwise", "1"));
    if (b->kto)
        FTK_TRY(ftk_message_set_meta(m, "kto", "1"));
    FTK_TRY(ftk_message_set_meta_int(m, "examples", b->examples));
    FTK_TRY(ftk_message_add(m, "input_ids", FTK_DTYPE_I32, 2, shape, b->input_ids, NULL));
    FTK_TRY(ftk_message_add(m, "labels", FTK_DTYPE_I32, 2, shape, b->labels, NULL));
    FTK_TRY(ftk_message_add(m, "position_ids", FTK_DTYPE_I32, 2, shape, b->position_ids, NULL));
    FTK_TRY(ftk_message_add(m, "segment_ids", FTK_DTYPE_I32, 2, shape, b->segment_ids, NULL));
    if (b->kto) {
        int64_t s1[1] = {b->B}, s2[2] = {b->B, b->T2};
        FTK_TRY(ftk_message_add(m, "kto_tag", FTK_DTYPE_I32, 1, s1, b->kto_tag, NULL));
        FTK_TRY(ftk_message_add(m, "kl_input_ids", FTK_DTYPE_I32, 2, s2, b->kl_input_ids, NULL));
        FTK_TRY(ftk_message_add(m, "kl_labels", FTK_DTYPE_I32, 2, s2, b->kl_labels, NULL));
        FTK_TRY(ftk_message_add(m, "kl_position_ids", FTK_DTYPE_I32, 2, s2, b->kl_position_ids, NULL));
        FTK_TRY(ftk_message_add(m, "kl_segment_ids", FTK_DTYPE_I32, 2, s2, b->kl_segment_ids, NULL));
    }
    return FTK_OK;
}

/* ---- PRNG: xoshiro256** 1.0 (Blackman & Vigna), state filled by splitmix64 as they advise */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void ftk_pack_rng_seed(struct ftk_pack_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t ftk_pack_rng_next(struct ftk_pack_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

uint64_t ftk_pack_rng_below(struct ftk_pack_rng *r, uint64_t n)
{
    FTK_ASSERT(n >= 1);
    /* Reject the low values that would make `% n` uneven: 2^64 mod n of them. */
    uint64_t threshold = (0 - n) % n;
    for (;;) {
        uint64_t x = ftk_pack_rng_next(r);
        if (x >= threshold)
            return x % n;
    }
}
