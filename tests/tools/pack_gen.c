/* tests/tools/pack_gen.c: example streams for tests/tools/test_pack.sh, made with libftk
 * (built by that script), fast enough for the 1-million-example memory test.
 *
 *   pack_gen gen [--kind text|sft|pairwise|kto] [--count N] [--min-len A] [--max-len B]
 *                [--seed S] [--hash H] [--pad-id P] [--eos-id E] [--level L] > ex.fts
 *
 * Example i (lengths drawn from splitmix64(seed, i) in [A, B]): token 0 is 10 + i % 30000 (the
 * pair's id for pairwise: chosen and rejected share it), token 1 is 1 for chosen/plain and 2
 * for rejected, then 100 + t; sft/kto: the first third is prompt (label -100). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ftk/stream.h"

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static int die(const char *what)
{
    fprintf(stderr, "pack_gen: %s: %s\n", what, ftk_last_error());
    return 1;
}

static void fill(int32_t *ids, int32_t *lab, int64_t n, int64_t i, int marker, int64_t prompt)
{
    for (int64_t t = 0; t < n; t++) {
        ids[t] = t == 0 ? (int32_t)(10 + i % 30000) : t == 1 ? marker : (int32_t)(100 + t);
        lab[t] = t < prompt ? -100 : ids[t];
    }
}

static int gen(int argc, char **argv)
{
    const char *kind = "sft", *hash = "abc123", *pad = "0", *eos = "2";
    long long count = 10, lo = 1, hi = 16, seed = 1, level = 0;
    for (int a = 2; a + 1 < argc; a += 2) {
        const char *k = argv[a], *v = argv[a + 1];
        if (!strcmp(k, "--kind")) kind = v;
        else if (!strcmp(k, "--count")) count = atoll(v);
        else if (!strcmp(k, "--min-len")) lo = atoll(v);
        else if (!strcmp(k, "--max-len")) hi = atoll(v);
        else if (!strcmp(k, "--seed")) seed = atoll(v);
        else if (!strcmp(k, "--hash")) hash = v;
        else if (!strcmp(k, "--pad-id")) pad = v;
        else if (!strcmp(k, "--eos-id")) eos = v;
        else if (!strcmp(k, "--level")) level = atoll(v);
        else { fprintf(stderr, "pack_gen: unknown %s\n", k); return 2; }
    }
    struct ftk_stream_writer *w;
    struct ftk_message m;
    ftk_message_init(&m);
    if (ftk_stream_writer_open(stdout, (int)level, &w) != FTK_OK) return die("open");
    if (ftk_stream_header_init(&m, "pack_gen") != FTK_OK) return die("header");
    ftk_message_set_meta(&m, "tokenizer_hash", hash);
    ftk_message_set_meta(&m, "vocab_size", "32000");
    ftk_message_set_meta(&m, "template", "test");
    ftk_message_set_meta(&m, "pad_token_id", pad);
    ftk_message_set_meta(&m, "bos_token_id", "1");
    ftk_message_set_meta(&m, "eos_token_id", eos);
    ftk_message_set_meta(&m, "example_kind", kind);
    ftk_message_set_meta(&m, "custom_key", "kept");
    if (ftk_stream_write(w, &m) != FTK_OK) return die("write header");
    int pairwise = !strcmp(kind, "pairwise"), kto = !strcmp(kind, "kto");
    int text = !strcmp(kind, "text");
    for (long long i = 0; i < count; i++) {
        ftk_message_free(&m);
        ftk_message_set_meta(&m, "kind", "example");
        int64_t n = lo + (int64_t)(mix((uint64_t)seed * 1000003u + (uint64_t)i) % (uint64_t)(hi - lo + 1));
        int64_t prompt = text ? 0 : n / 3;
        struct ftk_tensor *ids, *lab;
        const char *names[2][2] = {{"input_ids", "labels"}, {"chosen_input_ids", "chosen_labels"}};
        for (int s = 0; s < (pairwise ? 2 : 1); s++) {
            const char *in = pairwise ? (s ? "rejected_input_ids" : names[1][0]) : names[0][0];
            const char *ln = pairwise ? (s ? "rejected_labels" : names[1][1]) : names[0][1];
            int64_t len = s ? n + 1 + (int64_t)(mix((uint64_t)i) % 5) : n;   /* rejected differs */
            if (ftk_message_add(&m, in, FTK_DTYPE_I32, 1, &len, NULL, &ids) != FTK_OK ||
                ftk_message_add(&m, ln, FTK_DTYPE_I32, 1, &len, NULL, &lab) != FTK_OK)
                return die("add");
            fill(ids->data, lab->data, len, i, s ? 2 : 1, prompt);
        }
        if (kto) {
            int64_t one = 1;
            int32_t tag = (int32_t)(i % 2), pl = (int32_t)prompt;
            ftk_message_add(&m, "kto_tag", FTK_DTYPE_I32, 1, &one, &tag, NULL);
            ftk_message_add(&m, "prompt_len", FTK_DTYPE_I32, 1, &one, &pl, NULL);
        }
        if (ftk_stream_write(w, &m) != FTK_OK) return die("write");
    }
    ftk_message_free(&m);
    if (ftk_stream_writer_finish(w, NULL) != FTK_OK) return die("finish");
    ftk_stream_writer_close(w);
    return fflush(stdout) ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "gen")) return gen(argc, argv);
    fprintf(stderr, "usage: pack_gen gen [--kind K] [--count N] ...\n");
    return 2;
}
