/* libcore/pack.c: ftk_pack_run, the streaming pipeline of ftk pack (ftk/pack.h).
 *
 *   reader -> parse example -> over-long policy -> shuffle buffer -> sort window -> batcher -> writer
 *
 * Each stage takes ownership of the examples pushed into it and holds at most its buffer:
 * shuffle_buffer examples, sort_buffer examples, one batch. So memory is bounded by the
 * options, never by the length of the input. Batches are built in pack_batch.c. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "ftk/progress.h"
#include "ftk/stream.h"
#include "pack-impl.h"

void ftk_pack_config_init(struct ftk_pack_config *c)
{
    memset(c, 0, sizeof *c);
    c->batch_size = 8;          /* HF TrainingArguments.per_device_train_batch_size */
    c->pad_to_multiple_of = 8;  /* tensor-core friendly shapes, as LLaMA-Factory's collator */
    c->pad_id = -1;
    c->shuffle_buffer = 10000;
    c->sort_buffer = 1024;
    c->zstd_level = 3;
}

ftk_status ftk_pack_config_check(const struct ftk_pack_config *c)
{
    FTK_FAIL_IF(c->batch_size < 0, FTK_E_INVALID, "--batch-size must be >= 1");
    FTK_FAIL_IF(c->max_tokens < 0, FTK_E_INVALID, "--max-tokens must be >= 1");
    FTK_FAIL_IF(c->batch_size == 0 && c->max_tokens == 0, FTK_E_INVALID,
                "give --batch-size or --max-tokens");
    FTK_FAIL_IF(c->pad_to_multiple_of < 1, FTK_E_INVALID, "--pad-to-multiple-of must be >= 1");
    FTK_FAIL_IF(c->seq_len < 0 || c->seq_len > INT32_MAX, FTK_E_INVALID, "--seq-len out of range");
    FTK_FAIL_IF(c->pad_id > INT32_MAX, FTK_E_INVALID, "--pad-id out of range");
    FTK_FAIL_IF(c->mode != FTK_PACK_PAD && c->seq_len == 0, FTK_E_INVALID,
                "--packing and --neat-packing need --seq-len");
    FTK_FAIL_IF(c->mode != FTK_PACK_PAD && c->mode != FTK_PACK_PACKING && c->mode != FTK_PACK_NEAT,
                FTK_E_INVALID, "bad pack mode %d", (int)c->mode);
    FTK_FAIL_IF(c->max_tokens > 0 && c->seq_len > c->max_tokens, FTK_E_INVALID,
                "--max-tokens %" PRId64 " is less than one row of --seq-len %" PRId64,
                c->max_tokens, c->seq_len);
    FTK_FAIL_IF(c->shuffle && c->shuffle_buffer < 1, FTK_E_INVALID, "--shuffle-buffer must be >= 1");
    FTK_FAIL_IF(c->sort_by_length && c->sort_buffer < 1, FTK_E_INVALID, "--sort-buffer must be >= 1");
    FTK_FAIL_IF(c->zstd_level < 0 || c->zstd_level > 19, FTK_E_INVALID, "zstd level must be 0..19");
    return FTK_OK;
}

enum ex_kind { EX_TEXT, EX_SFT, EX_PAIRWISE, EX_KTO };

struct packer {
    const struct ftk_pack_config *c;
    struct ftk_progress prog;
    struct ftk_pack_params p;
    enum ex_kind kind;
    int split;                 /* text + packing: examples flow across rows (LLaMA-Factory pt) */
    int64_t limit;             /* tokens per sequence; 0: no limit */
    int64_t pack_rows;         /* packing: rows per batch */
    struct ftk_pack_rng rng;
    struct ftk_stream_writer *w;
    struct ftk_pack_stats st;
    size_t msg_index;          /* input message being handled, for errors */

    struct ftk_pack_example **shuf;   /* shuffle buffer (shuffle_buffer) */
    int64_t nshuf;
    struct ftk_pack_example **win;    /* sort window (sort_buffer) */
    int64_t nwin;
    struct ftk_pack_example **pend;   /* padded batcher: the batch being gathered */
    int64_t npend, cap_pend, pend_max;

    struct ftk_pack_batch pb;         /* packing: the batch being filled */
    int pb_open;
    int64_t *row_used;                /* (pack_rows) tokens in each row */
    int32_t *row_segs;                /* (pack_rows) segments in each row */
    int64_t pb_examples;
};

/* ---- writer side ------------------------------------------------------------------------- */

static ftk_status write_batch(struct packer *k, struct ftk_pack_batch *b)
{
    struct ftk_message m;
    ftk_message_init(&m);
    ftk_status st = ftk_pack_batch_to_message(b, &m);
    if (st == FTK_OK)
        st = ftk_stream_write(k->w, &m);
    ftk_message_free(&m);
    if (st != FTK_OK)
        return ftk_error_wrap(st, "batch %" PRId64, k->st.batches);
    k->st.batches++;
    k->st.rows += b->B;
    k->st.tokens += b->tokens;
    k->st.slots += b->B * b->T;
    char pst[48];
    snprintf(pst, sizeof pst, "%lld tokens", (long long)k->st.tokens);
    ftk_progress_update(&k->prog, k->st.batches, pst);
    return FTK_OK;
}

/* ---- padded batcher ---------------------------------------------------------------------- */

/* Would a batch of n examples whose longest sequence is maxlen respect the limits? */
static int batch_fits(const struct packer *k, int64_t n, int64_t maxlen)
{
    int64_t rows = k->kind == EX_PAIRWISE ? 2 * n : n;
    if (k->c->batch_size > 0 && n > k->c->batch_size)
        return 0;
    if (k->c->max_tokens > 0 && rows * ftk_pack_row_len(&k->p, maxlen) > k->c->max_tokens)
        return 0;
    return 1;
}

static ftk_status pad_flush(struct packer *k)
{
    if (k->npend == 0)
        return FTK_OK;
    struct ftk_pack_batch b;
    ftk_status st = ftk_pack_build_padded(k->pend, k->npend, &k->p, &b);
    if (st == FTK_OK)
        st = write_batch(k, &b);
    ftk_pack_batch_free(&b);
    for (int64_t i = 0; i < k->npend; i++)
        free(k->pend[i]);
    k->npend = 0;
    k->pend_max = 0;
    return st;
}

static ftk_status pad_push(struct packer *k, struct ftk_pack_example *e)
{
    int64_t len = ftk_pack_example_len(e);
    int64_t newmax = len > k->pend_max ? len : k->pend_max;
    if (k->npend > 0 && !batch_fits(k, k->npend + 1, newmax)) {
        ftk_status st = pad_flush(k);
        if (st != FTK_OK) {
            free(e);
            return st;
        }
        newmax = len;
    }
    if (k->npend == k->cap_pend) {
        int64_t cap = k->cap_pend ? 2 * k->cap_pend : 64;
        void *np = realloc(k->pend, (size_t)cap * sizeof *k->pend);
        if (!np) {
            free(e);
            FTK_FAIL(FTK_E_NOMEM, "pack: out of memory");
        }
        k->pend = np;
        k->cap_pend = cap;
    }
    k->pend[k->npend++] = e;
    k->pend_max = newmax;
    if (k->c->batch_size > 0 && k->npend == k->c->batch_size)
        return pad_flush(k);
    return FTK_OK;
}

/* ---- packing batcher --------------------------------------------------------------------- */

static ftk_status pack_flush(struct packer *k)
{
    if (!k->pb_open)
        return FTK_OK;
    /* Rows are opened in order, so the used rows are a prefix; drop the empty tail. */
    int64_t used = 0;
    while (used < k->pb.B && k->row_used[used] > 0)
        used++;
    ftk_status st = FTK_OK;
    if (used > 0) {
        k->pb.B = used;   /* each tensor's (B,T) block starts at its base: a prefix stays valid */
        k->pb.examples = k->pb_examples;
        st = write_batch(k, &k->pb);
    }
    ftk_pack_batch_free(&k->pb);
    k->pb_open = 0;
    return st;
}

static ftk_status pack_open(struct packer *k)
{
    FTK_TRY(ftk_pack_batch_alloc(&k->pb, k->pack_rows, k->c->seq_len, 0, 0, k->p.pad_id));
    memset(k->row_used, 0, (size_t)k->pack_rows * sizeof *k->row_used);
    memset(k->row_segs, 0, (size_t)k->pack_rows * sizeof *k->row_segs);
    k->pb_examples = 0;
    k->pb_open = 1;
    return FTK_OK;
}

/* Whole examples (SFT): best fit over the rows of the current batch: the row with the least
 * room that still takes the example; when none does, the batch goes out and a new one starts.
 * A streaming stand-in for LLaMA-Factory's greedy_knapsack, which needs the whole dataset;
 * with --sort-by-length, pack_window_bfd packs each window best-fit-decreasing instead. */
static ftk_status pack_whole(struct packer *k, const struct ftk_pack_example *e)
{
    int64_t n = e->n[0], T = k->c->seq_len;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (!k->pb_open)
            FTK_TRY(pack_open(k));
        int64_t best = -1;
        for (int64_t r = 0; r < k->pack_rows; r++) {
            int64_t room = T - k->row_used[r];
            if (room >= n && (best < 0 || room < T - k->row_used[best]))
                best = r;
            if (k->row_used[r] == 0)
                break;   /* later rows are empty too */
        }
        if (best >= 0) {
            ftk_pack_row_append(&k->pb, best, &k->row_used[best], ++k->row_segs[best], e->ids[0],
                                e->labels[0], n, &k->p);
            k->pb_examples++;
            return FTK_OK;
        }
        FTK_TRY(pack_flush(k));
    }
    FTK_ASSERT(0 && "an example within the limit always fits an empty row");
    return FTK_E_INVALID;
}

/* Text (pre-training): examples are concatenated and cut into rows, as LLaMA-Factory's
 * pre-training processor does; a piece continued in the next row is a new segment there. */
static ftk_status pack_split(struct packer *k, const struct ftk_pack_example *e)
{
    int64_t off = 0, n = e->n[0], T = k->c->seq_len;
    while (off < n) {
        if (!k->pb_open)
            FTK_TRY(pack_open(k));
        int64_t r = 0;
        while (r < k->pack_rows && k->row_used[r] == T)
            r++;
        if (r == k->pack_rows) {
            FTK_TRY(pack_flush(k));
            continue;
        }
        int64_t take = n - off < T - k->row_used[r] ? n - off : T - k->row_used[r];
        ftk_pack_row_append(&k->pb, r, &k->row_used[r], ++k->row_segs[r], e->ids[0] + off,
                            e->labels[0] + off, take, &k->p);
        off += take;
    }
    k->pb_examples++;
    if (k->row_used[k->pack_rows - 1] == T)
        return pack_flush(k);
    return FTK_OK;
}

static ftk_status batcher_push(struct packer *k, struct ftk_pack_example *e)
{
    if (k->c->mode == FTK_PACK_PAD)
        return pad_push(k, e);
    ftk_status st = k->split ? pack_split(k, e) : pack_whole(k, e);
    free(e);
    return st;
}

static ftk_status batcher_flush(struct packer *k)
{
    return k->c->mode == FTK_PACK_PAD ? pad_flush(k) : pack_flush(k);
}

/* ---- sort window ------------------------------------------------------------------------- */

/* Longest first (HF's group_by_length puts the longest megabatch first, so out-of-memory shows
 * at step one); ties keep input order, so the sort is deterministic whatever qsort does. */
static int by_len_desc(const void *a, const void *b)
{
    const struct ftk_pack_example *x = *(struct ftk_pack_example *const *)a;
    const struct ftk_pack_example *y = *(struct ftk_pack_example *const *)b;
    int64_t lx = ftk_pack_example_len(x), ly = ftk_pack_example_len(y);
    if (lx != ly)
        return lx > ly ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

/* Sorted window, whole examples: best-fit-decreasing over the window (LLaMA-Factory's
 * greedy_knapsack, per window instead of per dataset), then the rows go out in the order they
 * were opened, pack_rows per batch. The streaming best fit of pack_whole would close a batch as
 * soon as a long example finds no room, before the short ones that fill the gaps arrive.
 * Rows are found by their room: heads[r] lists the open rows with r tokens free, so each
 * example costs at most T steps. k->win[0..n) is sorted longest first; the caller frees it. */
static ftk_status pack_window_bfd(struct packer *k, int64_t n)
{
    int64_t T = k->c->seq_len, nbins = 0;
    int64_t *heads = malloc((size_t)(T + 1) * sizeof *heads);
    int64_t *next = malloc((size_t)n * sizeof *next);      /* (bins) list link */
    int64_t *room = malloc((size_t)n * sizeof *room);      /* (bins) free tokens */
    int64_t *bin_of = malloc((size_t)n * sizeof *bin_of);  /* (n) row of each example */
    int64_t *first = malloc((size_t)(n + 1) * sizeof *first);
    int64_t *order = malloc((size_t)n * sizeof *order);
    ftk_status st = FTK_OK;
    if (!heads || !next || !room || !bin_of || !first || !order) {
        st = ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "pack: out of memory for the sort window");
        goto done;
    }
    for (int64_t r = 0; r <= T; r++)
        heads[r] = -1;
    for (int64_t i = 0; i < n; i++) {
        int64_t len = k->win[i]->n[0], r = len, b;
        while (r < T && heads[r] < 0)
            r++;
        if (r < T) {            /* best fit: the open row with the least room that takes it */
            b = heads[r];
            heads[r] = next[b];
        } else {                /* none: open a row */
            b = nbins++;
            room[b] = T;
        }
        room[b] -= len;
        bin_of[i] = b;
        next[b] = heads[room[b]];
        heads[room[b]] = b;
    }
    /* examples grouped by row, rows in opening order, examples in window order */
    memset(first, 0, (size_t)(nbins + 1) * sizeof *first);
    for (int64_t i = 0; i < n; i++)
        first[bin_of[i] + 1]++;
    for (int64_t b = 0; b < nbins; b++)
        first[b + 1] += first[b];
    for (int64_t i = 0; i < n; i++)
        order[first[bin_of[i]]++] = i;   /* first[b] now ends bin b */
    for (int64_t b = 0, i = 0; b < nbins && st == FTK_OK; b++) {
        int64_t r = 0;
        if (k->pb_open)
            while (r < k->pack_rows && k->row_used[r] > 0)
                r++;
        if (!k->pb_open || r == k->pack_rows) {
            st = pack_flush(k);
            if (st == FTK_OK)
                st = pack_open(k);
            r = 0;
        }
        for (; st == FTK_OK && i < first[b]; i++) {
            const struct ftk_pack_example *e = k->win[order[i]];
            ftk_pack_row_append(&k->pb, r, &k->row_used[r], ++k->row_segs[r], e->ids[0],
                                e->labels[0], e->n[0], &k->p);
            k->pb_examples++;
        }
    }
done:
    free(heads);
    free(next);
    free(room);
    free(bin_of);
    free(first);
    free(order);
    return st;
}

static ftk_status window_flush(struct packer *k)
{
    int64_t n = k->nwin;
    if (n == 0)
        return FTK_OK;
    k->nwin = 0;
    qsort(k->win, (size_t)n, sizeof *k->win, by_len_desc);
    ftk_status st = FTK_OK;
    if (k->c->mode != FTK_PACK_PAD && !k->split) {
        st = pack_window_bfd(k, n);
        for (int64_t i = 0; i < n; i++)
            free(k->win[i]);
        return st;
    }
    if (k->c->mode != FTK_PACK_PAD) {
        for (int64_t i = 0; i < n; i++)
            if (st == FTK_OK)
                st = batcher_push(k, k->win[i]);
            else
                free(k->win[i]);
        return st;
    }
    /* Padded: cut the sorted window into batches by the batcher's own rule, then (with
     * --shuffle) put the batches in random order so lengths do not fall steadily. */
    st = pad_flush(k);
    int64_t ngroups = 0;
    int64_t *start = malloc((size_t)(n + 1) * sizeof *start);
    if (st == FTK_OK && !start)
        st = ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "pack: out of memory");
    if (st == FTK_OK) {
        int64_t cnt = 0, mx = 0;
        for (int64_t i = 0; i < n; i++) {
            int64_t len = ftk_pack_example_len(k->win[i]);
            if (cnt > 0 && !batch_fits(k, cnt + 1, len > mx ? len : mx))
                cnt = 0;
            if (cnt == 0) {
                start[ngroups++] = i;
                mx = 0;
            }
            cnt++;
            mx = len > mx ? len : mx;
        }
        start[ngroups] = n;
    }
    int64_t *order = st == FTK_OK ? malloc((size_t)ngroups * sizeof *order + 1) : NULL;
    if (st == FTK_OK && !order)
        st = ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "pack: out of memory");
    if (st == FTK_OK) {
        for (int64_t g = 0; g < ngroups; g++)
            order[g] = g;
        if (k->c->shuffle)   /* Fisher-Yates */
            for (int64_t g = ngroups - 1; g > 0; g--) {
                int64_t j = (int64_t)ftk_pack_rng_below(&k->rng, (uint64_t)g + 1);
                int64_t t = order[g];
                order[g] = order[j];
                order[j] = t;
            }
        for (int64_t g = 0; g < ngroups; g++) {
            for (int64_t i = start[order[g]]; i < start[order[g] + 1]; i++) {
                if (st == FTK_OK)
                    st = pad_push(k, k->win[i]);
                else
                    free(k->win[i]);
                k->win[i] = NULL;
            }
            if (st == FTK_OK)
                st = pad_flush(k);
        }
    } else {
        for (int64_t i = 0; i < n; i++)
            free(k->win[i]);
    }
    free(order);
    free(start);
    return st;
}

static ftk_status window_push(struct packer *k, struct ftk_pack_example *e)
{
    if (!k->c->sort_by_length)
        return batcher_push(k, e);
    k->win[k->nwin++] = e;
    if (k->nwin == k->c->sort_buffer)
        return window_flush(k);
    return FTK_OK;
}

/* ---- shuffle buffer ---------------------------------------------------------------------- */

/* tf.data-style: fill the buffer, then each new example replaces a uniformly chosen one, which
 * moves on. An example moves at most shuffle_buffer places back, any number forward. */
static ftk_status shuffle_push(struct packer *k, struct ftk_pack_example *e)
{
    if (!k->c->shuffle)
        return window_push(k, e);
    if (k->nshuf < k->c->shuffle_buffer) {
        k->shuf[k->nshuf++] = e;
        return FTK_OK;
    }
    int64_t j = (int64_t)ftk_pack_rng_below(&k->rng, (uint64_t)k->nshuf);
    struct ftk_pack_example *out = k->shuf[j];
    k->shuf[j] = e;
    return window_push(k, out);
}

static ftk_status shuffle_flush(struct packer *k)
{
    while (k->nshuf > 0) {
        int64_t j = (int64_t)ftk_pack_rng_below(&k->rng, (uint64_t)k->nshuf);
        struct ftk_pack_example *out = k->shuf[j];
        k->shuf[j] = k->shuf[--k->nshuf];
        FTK_TRY(window_push(k, out));
    }
    return FTK_OK;
}

/* ---- input side -------------------------------------------------------------------------- */

/* The input-side helpers set errors without saying which example: parse_example prefixes
 * that, and only on failure (formatting it for every example costs more than the parse). */
static ftk_status get_seq(const struct ftk_message *m, const char *ids_name, const char *lab_name,
                          struct ftk_tensor **ids, struct ftk_tensor **lab)
{
    FTK_TRY(ftk_message_get(m, ids_name, FTK_DTYPE_I32, 1, ids));
    *lab = NULL;
    if (ftk_message_find(m, lab_name)) {
        FTK_TRY(ftk_message_get(m, lab_name, FTK_DTYPE_I32, 1, lab));
        FTK_FAIL_IF((*lab)->shape[0] != (*ids)->shape[0], FTK_E_FORMAT,
                    "%s has %" PRId64 " tokens but %s has %" PRId64, lab_name, (*lab)->shape[0],
                    ids_name, (*ids)->shape[0]);
    } else {
        /* Plain text without labels: every token is a target (pre-training). */
        FTK_FAIL_IF(strcmp(ids_name, "input_ids") != 0, FTK_E_FORMAT, "missing tensor %s", lab_name);
    }
    FTK_FAIL_IF((*ids)->shape[0] == 0, FTK_E_FORMAT, "%s is empty", ids_name);
    return FTK_OK;
}

static ftk_status get_scalar(const struct ftk_message *m, const char *name, int32_t *out)
{
    struct ftk_tensor *t;
    FTK_TRY(ftk_message_get(m, name, FTK_DTYPE_I32, -1, &t));
    FTK_FAIL_IF(ftk_tensor_numel(t) != 1, FTK_E_FORMAT, "%s must hold one value", name);
    *out = *(const int32_t *)t->data;
    return FTK_OK;
}

static void copy_seq(struct ftk_pack_example *e, int s, const struct ftk_tensor *ids,
                     const struct ftk_tensor *lab)
{
    memcpy(e->ids[s], ids->data, (size_t)e->n[s] * sizeof(int32_t));
    memcpy(e->labels[s], (lab ? lab : ids)->data, (size_t)e->n[s] * sizeof(int32_t));
}

static ftk_status read_example(struct packer *k, const struct ftk_message *m,
                               struct ftk_pack_example **out)
{
    struct ftk_tensor *ids[2], *lab[2];
    int64_t n[2];
    int nseq = 1;
    if (k->kind == EX_PAIRWISE) {
        FTK_TRY(get_seq(m, "chosen_input_ids", "chosen_labels", &ids[0], &lab[0]));
        FTK_TRY(get_seq(m, "rejected_input_ids", "rejected_labels", &ids[1], &lab[1]));
        nseq = 2;
    } else {
        FTK_FAIL_IF(ftk_message_find(m, "chosen_input_ids") && !ftk_message_find(m, "input_ids"),
                    FTK_E_FORMAT, "a pairwise example, but the stream header's example_kind "
                    "is not \"pairwise\"");
        FTK_TRY(get_seq(m, "input_ids", "labels", &ids[0], &lab[0]));
    }
    int32_t tag = 0, plen = 0;
    if (k->kind == EX_KTO) {
        FTK_TRY(get_scalar(m, "kto_tag", &tag));
        FTK_TRY(get_scalar(m, "prompt_len", &plen));
        FTK_FAIL_IF(tag != 0 && tag != 1, FTK_E_FORMAT, "kto_tag is %d, expected 0 or 1", (int)tag);
        FTK_FAIL_IF(plen < 0 || plen > ids[0]->shape[0], FTK_E_FORMAT,
                    "prompt_len %d outside [0, %" PRId64 "]", (int)plen, ids[0]->shape[0]);
    }
    for (int s = 0; s < nseq; s++)
        n[s] = ids[s]->shape[0];
    struct ftk_pack_example *e = ftk_pack_example_new(nseq, n);
    FTK_FAIL_IF(!e, FTK_E_NOMEM, "out of memory");
    for (int s = 0; s < nseq; s++)
        copy_seq(e, s, ids[s], lab[s]);
    e->index = k->st.examples;
    e->kto_tag = tag;
    e->prompt_len = plen;
    *out = e;
    return FTK_OK;
}

/* An `example` message as an ftk_pack_example. Unknown tensors and metadata of examples do not
 * survive: a batch has no place for per-example extras (docs/tools/pack.md). Errors name the
 * example: its number among the examples, the message index and the dataset record (`index`). */
static ftk_status parse_example(struct packer *k, const struct ftk_message *m,
                                struct ftk_pack_example **out)
{
    ftk_status st = read_example(k, m, out);
    if (st == FTK_OK)
        return FTK_OK;
    const char *src = ftk_message_get_meta(m, "index");
    return ftk_error_wrap(st, "example %" PRId64 " (message %zu%s%.24s)", k->st.examples,
                          k->msg_index, src ? ", record " : "", src ? src : "");
}

/* The over-long policy. Returns FTK_OK with *e set to NULL when the example is dropped.
 * m is the example's message, for the record its error names. */
static ftk_status apply_limit(struct packer *k, const struct ftk_message *m, struct ftk_pack_example **ep)
{
    struct ftk_pack_example *e = *ep;
    if (k->limit == 0 || ftk_pack_example_len(e) <= k->limit)
        return FTK_OK;
    switch (k->c->overlong) {
    case FTK_PACK_OVERLONG_TRUNCATE:
        for (int s = 0; s < e->nseq; s++)
            if (e->n[s] > k->limit)
                e->n[s] = k->limit;   /* labels[s] stays where it is: only the length shrinks */
        if (e->prompt_len > k->limit)
            e->prompt_len = (int32_t)k->limit;
        k->st.truncated++;
        return FTK_OK;
    case FTK_PACK_OVERLONG_DROP:
        free(e);
        *ep = NULL;
        k->st.dropped++;
        return FTK_OK;
    default: {
        int64_t len = ftk_pack_example_len(e), idx = e->index;
        const char *src = ftk_message_get_meta(m, "index");
        free(e);
        *ep = NULL;
        FTK_FAIL(FTK_E_INVALID,
                 "example %" PRId64 " (message %zu%s%.24s) has %" PRId64 " tokens, more than the row "
                 "limit %" PRId64 " (%s); pass --truncate or --drop",
                 idx, k->msg_index, src ? ", record " : "", src ? src : "", len, k->limit,
                 k->c->seq_len > 0 ? "--seq-len" : "--max-tokens");
    }
    }
}

static int parse_i64(const char *s, int64_t *out)
{
    if (!s || !*s)
        return 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (*end)
        return 0;
    *out = v;
    return 1;
}

/* Checks the input header, settles the run's parameters and writes the output header. */
static ftk_status start(struct packer *k, const struct ftk_message *h)
{
    const struct ftk_pack_config *c = k->c;
    const char *producer = ftk_message_get_meta(h, "producer");
    FTK_FAIL_IF(producer && strcmp(producer, "ftk-pack") == 0, FTK_E_FORMAT,
                "the input is a batch stream (producer ftk-pack); ftk pack reads example "
                "streams such as ftk tokenize writes");
    const char *hash = ftk_message_get_meta(h, "tokenizer_hash");
    if (c->expect_tokenizer) {
        FTK_FAIL_IF(!hash, FTK_E_MISMATCH,
                    "--expect-tokenizer %s: the stream header has no tokenizer_hash",
                    c->expect_tokenizer);
        FTK_FAIL_IF(strcmp(hash, c->expect_tokenizer) != 0, FTK_E_MISMATCH,
                    "tokenizer hash mismatch: the stream was tokenized with %s, "
                    "--expect-tokenizer names %s", hash, c->expect_tokenizer);
    }
    const char *ek = ftk_message_get_meta(h, "example_kind");
    if (!ek || strcmp(ek, "sft") == 0)
        k->kind = EX_SFT;
    else if (strcmp(ek, "text") == 0)
        k->kind = EX_TEXT;
    else if (strcmp(ek, "pairwise") == 0)
        k->kind = EX_PAIRWISE;
    else if (strcmp(ek, "kto") == 0)
        k->kind = EX_KTO;
    else
        FTK_FAIL(FTK_E_UNSUPPORTED, "stream header: example_kind \"%s\" is not one of text, sft, "
                 "pairwise, kto", ek);
    FTK_FAIL_IF(c->mode != FTK_PACK_PAD && (k->kind == EX_PAIRWISE || k->kind == EX_KTO),
                FTK_E_UNSUPPORTED, "%s works on text and sft streams, not %s", c->mode == FTK_PACK_NEAT ? "--neat-packing" : "--packing",
                ek);

    /* Pad id: the flag, else the header's pad_token_id, else its eos_token_id (LLaMA-Factory
     * sets tokenizer.pad_token = eos_token when a tokenizer has none). Padding never carries
     * a label or a segment, so the id only has to be a valid token. */
    int64_t pad = c->pad_id, v;
    if (pad < 0 && parse_i64(ftk_message_get_meta(h, "pad_token_id"), &v) && v >= 0)
        pad = v;
    if (pad < 0 && parse_i64(ftk_message_get_meta(h, "eos_token_id"), &v) && v >= 0)
        pad = v;
    FTK_FAIL_IF(pad < 0, FTK_E_NOTFOUND,
                "no pad id: the stream header has neither pad_token_id nor eos_token_id; "
                "pass --pad-id");
    FTK_FAIL_IF(pad > INT32_MAX, FTK_E_FORMAT, "pad id %" PRId64 " out of range", pad);

    int64_t factor = k->kind == EX_PAIRWISE ? 2 : 1;
    k->p.seq_len = c->seq_len;
    k->p.multiple = c->pad_to_multiple_of;
    k->p.pad_id = (int32_t)pad;
    k->p.kto = k->kind == EX_KTO;
    k->p.neat = c->mode == FTK_PACK_NEAT;
    k->split = c->mode != FTK_PACK_PAD && k->kind == EX_TEXT;
    if (c->seq_len > 0) {
        FTK_FAIL_IF(c->max_tokens > 0 && factor * c->seq_len > c->max_tokens, FTK_E_INVALID,
                    "--max-tokens %" PRId64 " cannot hold one pair of rows of --seq-len %" PRId64,
                    c->max_tokens, c->seq_len);
        k->limit = c->seq_len;
    } else if (c->max_tokens > 0) {
        k->limit = c->max_tokens / factor / c->pad_to_multiple_of * c->pad_to_multiple_of;
        FTK_FAIL_IF(k->limit < 1, FTK_E_INVALID, "--max-tokens %" PRId64 " is too small",
                    c->max_tokens);
    }
    if (k->split)
        k->limit = 0;   /* long texts flow over rows */
    k->p.kl_limit = k->limit;
    if (c->mode != FTK_PACK_PAD) {
        k->pack_rows = c->batch_size;
        if (c->max_tokens > 0 && (k->pack_rows == 0 || c->max_tokens / c->seq_len < k->pack_rows))
            k->pack_rows = c->max_tokens / c->seq_len;
        k->row_used = calloc((size_t)k->pack_rows, sizeof *k->row_used);
        k->row_segs = calloc((size_t)k->pack_rows, sizeof *k->row_segs);
        FTK_FAIL_IF(!k->row_used || !k->row_segs, FTK_E_NOMEM, "pack: out of memory");
    }
    if (c->shuffle) {
        k->shuf = malloc((size_t)c->shuffle_buffer * sizeof *k->shuf);
        FTK_FAIL_IF(!k->shuf, FTK_E_NOMEM, "pack: out of memory for --shuffle-buffer");
    }
    if (c->sort_by_length) {
        k->win = malloc((size_t)c->sort_buffer * sizeof *k->win);
        FTK_FAIL_IF(!k->win, FTK_E_NOMEM, "pack: out of memory for --sort-buffer");
    }
    ftk_pack_rng_seed(&k->rng, c->seed);

    /* Output header: the input's metadata (tokenizer_hash, vocab_size, template, token ids,
     * example_kind and anything unknown) under our producer, plus what pack decided. */
    struct ftk_message out;
    ftk_message_init(&out);
    ftk_status st = ftk_stream_header_init(&out, "ftk-pack");
    for (size_t i = 0; st == FTK_OK && i < h->n_meta; i++) {
        const char *key = h->meta[i].key;
        if (strcmp(key, "kind") && strcmp(key, "producer") && strcmp(key, "producer_version") &&
            strcmp(key, "format_version") && strcmp(key, "examples"))
            st = ftk_message_set_meta(&out, key, h->meta[i].value);
    }
    if (st == FTK_OK && c->seq_len > 0)
        st = ftk_message_set_meta_int(&out, "seq_len", c->seq_len);
    if (st == FTK_OK)
        st = ftk_message_set_meta_int(&out, "pad_token_id", pad);
    if (st == FTK_OK)
        st = ftk_message_set_meta(&out, "pack_mode", c->mode == FTK_PACK_NEAT ? "neat_packing"
                                  : c->mode == FTK_PACK_PACKING ? "packing" : "pad");
    if (st == FTK_OK && k->kind == EX_PAIRWISE)
        st = ftk_message_set_meta(&out, "pairwise", "1");
    /* batches is known up front only when the input header counts its examples and every
     * batch but a window's last holds exactly batch_size examples. */
    int64_t nex;
    if (st == FTK_OK && c->mode == FTK_PACK_PAD && c->batch_size > 0 && c->max_tokens == 0 &&
        c->overlong != FTK_PACK_OVERLONG_DROP &&
        parse_i64(ftk_message_get_meta(h, "examples"), &nex) && nex >= 0) {
        int64_t bs = c->batch_size, nb;
        if (c->sort_by_length) {
            int64_t W = c->sort_buffer, full = nex / W, rem = nex % W;
            nb = full * ((W + bs - 1) / bs) + (rem + bs - 1) / bs;
        } else {
            nb = (nex + bs - 1) / bs;
        }
        st = ftk_message_set_meta_int(&out, "batches", nb);
    }
    if (st == FTK_OK)
        st = ftk_stream_write(k->w, &out);
    ftk_message_free(&out);
    return st;
}

static ftk_status handle_example(struct packer *k, const struct ftk_message *m)
{
    struct ftk_pack_example *e = NULL;
    FTK_TRY(parse_example(k, m, &e));
    k->st.examples++;
    FTK_TRY(apply_limit(k, m, &e));
    if (!e)
        return FTK_OK;
    return shuffle_push(k, e);
}

static ftk_status finish(struct packer *k)
{
    FTK_TRY(shuffle_flush(k));
    FTK_TRY(window_flush(k));
    FTK_TRY(batcher_flush(k));
    struct ftk_message end;
    ftk_message_init(&end);
    char frac[32];
    double pad = k->st.slots > 0 ? (double)(k->st.slots - k->st.tokens) / (double)k->st.slots : 0.0;
    snprintf(frac, sizeof frac, "%.6f", pad);
    ftk_status st = ftk_message_set_meta_int(&end, "examples", k->st.examples);
    if (st == FTK_OK)
        st = ftk_message_set_meta_int(&end, "batches", k->st.batches);
    if (st == FTK_OK)
        st = ftk_message_set_meta_int(&end, "rows", k->st.rows);
    if (st == FTK_OK)
        st = ftk_message_set_meta_int(&end, "tokens", k->st.tokens);
    if (st == FTK_OK)
        st = ftk_message_set_meta(&end, "padding_fraction", frac);
    if (st == FTK_OK)
        st = ftk_message_set_meta_int(&end, "truncated", k->st.truncated);
    if (st == FTK_OK)
        st = ftk_message_set_meta_int(&end, "dropped", k->st.dropped);
    if (st == FTK_OK)
        st = ftk_stream_writer_finish(k->w, &end);
    ftk_message_free(&end);
    return st;
}

static ftk_status run(struct packer *k, struct ftk_stream_reader *r)
{
    struct ftk_message m;
    ftk_message_init(&m);
    ftk_status st;
    int started = 0;
    while ((st = ftk_stream_read(r, &m)) == FTK_OK) {
        k->msg_index = ftk_stream_reader_index(r);
        const char *kind = ftk_message_kind(&m);
        if (!started) {
            st = start(k, &m);
            started = 1;
        } else if (kind && strcmp(kind, "example") == 0) {
            st = handle_example(k, &m);
        } else if (kind && strcmp(kind, "end") == 0) {
            continue;   /* the reader checks its count and that nothing follows */
        } else if (kind && strcmp(kind, "batch") == 0) {
            st = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__,
                               "message %zu is a batch: ftk pack reads example streams",
                               k->msg_index);
        } else {
            st = ftk_stream_write(k->w, &m);   /* unknown kinds pass through (DESIGN.md 3) */
        }
        if (st != FTK_OK)
            break;
    }
    ftk_message_free(&m);
    if (st != FTK_E_EOF)
        return st;
    FTK_FAIL_IF(!started, FTK_E_TRUNCATED, "empty input stream");
    return finish(k);
}

ftk_status ftk_pack_run(const struct ftk_pack_config *c, FILE *in, const char *in_name, FILE *out,
                        struct ftk_pack_stats *stats)
{
    FTK_TRY(ftk_pack_config_check(c));
    struct packer k;
    memset(&k, 0, sizeof k);
    k.c = c;
    struct ftk_stream_reader *r = NULL;
    ftk_status st = ftk_stream_reader_open(in, in_name, &r);
    if (st == FTK_OK)
        st = ftk_stream_writer_open(out, c->zstd_level, &k.w);
    ftk_progress_start(&k.prog, "pack", "batches", 0, c->quiet);
    if (st == FTK_OK)
        st = run(&k, r);
    if (st == FTK_OK)
        ftk_progress_done(&k.prog);
    if (stats)
        *stats = k.st;
    for (int64_t i = 0; i < k.nshuf; i++)
        free(k.shuf[i]);
    for (int64_t i = 0; i < k.nwin; i++)
        free(k.win[i]);
    for (int64_t i = 0; i < k.npend; i++)
        free(k.pend[i]);
    free(k.shuf);
    free(k.win);
    free(k.pend);
    free(k.row_used);
    free(k.row_segs);
    ftk_pack_batch_free(&k.pb);
    ftk_stream_writer_close(k.w);
    ftk_stream_reader_close(r);
    return st;
}
