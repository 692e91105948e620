/* tests/bench/bench_tokenizer.c: single-thread encode speed of ftk's tokenizer.
 *   bench_tokenizer TOKENIZER_DIR CORPUS.jsonl [REPEATS]
 * CORPUS: one {"text": ...} per line (tests/bench/make_tokenize_corpus.py). Documents are
 * parsed first; only ftk_tokenizer_encode (no special tokens) is timed. Prints one line per run
 * and the median MB/s (MB = 10^6 bytes of UTF-8 text) by wall time and by process CPU time, and
 * the token count. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cjson/cJSON.h>
#include "ftk/tokenizer.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* CPU time of the process: on a shared machine it is steadier than wall time. */
static double cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench_tokenizer TOKENIZER_DIR CORPUS.jsonl [REPEATS]\n");
        return 2;
    }
    int reps = argc > 3 ? atoi(argv[3]) : 3;
    if (reps < 1 || reps > 99)
        reps = 3;
    struct ftk_tokenizer *t;
    double t0 = now();
    if (ftk_tokenizer_load_path(argv[1], &t) != FTK_OK) {
        fprintf(stderr, "bench_tokenizer: error: %s\n", ftk_last_error());
        return 1;
    }
    double load_s = now() - t0;
    FILE *f = fopen(argv[2], "r");
    if (!f) {
        perror(argv[2]);
        return 1;
    }
    size_t ndocs = 0, cap = 0, bytes = 0;
    char **docs = NULL;
    size_t *lens = NULL;
    char *line = NULL;
    size_t lcap = 0;
    while (getline(&line, &lcap, f) > 0) {
        cJSON *o = cJSON_Parse(line);
        const cJSON *s = cJSON_GetObjectItem(o, "text");
        if (cJSON_IsString(s)) {
            if (ndocs == cap) {
                cap = cap ? cap * 2 : 1024;
                docs = realloc(docs, cap * sizeof *docs);
                lens = realloc(lens, cap * sizeof *lens);
            }
            lens[ndocs] = strlen(s->valuestring);
            docs[ndocs] = strdup(s->valuestring);
            bytes += lens[ndocs++];
        }
        cJSON_Delete(o);
    }
    free(line);
    fclose(f);
    double mbs[100], cmbs[100];
    size_t ntok = 0;
    struct ftk_ids ids = {0};
    for (int r = 0; r < reps; r++) {
        ntok = 0;
        t0 = now();
        double c0 = cpu();
        for (size_t i = 0; i < ndocs; i++) {
            ids.n = 0;
            if (ftk_tokenizer_encode(t, docs[i], lens[i], 0, &ids) != FTK_OK) {
                fprintf(stderr, "bench_tokenizer: document %zu: %s\n", i, ftk_last_error());
                return 1;
            }
            ntok += ids.n;
        }
        double s = now() - t0, c = cpu() - c0;
        mbs[r] = (double)bytes / 1e6 / s;
        cmbs[r] = (double)bytes / 1e6 / c;
        fprintf(stderr, "run %d: %.2f s wall, %.2f s cpu: %.2f MB/s wall, %.2f MB/s cpu\n", r + 1, s, c,
                mbs[r], cmbs[r]);
    }
    /* BENCH_DUMP=FILE: the ids of every document, one line each, for an exact comparison */
    const char *dump = getenv("BENCH_DUMP");
    FILE *df = dump ? fopen(dump, "w") : NULL;
    for (size_t i = 0; df && i < ndocs; i++) {
        ids.n = 0;
        if (ftk_tokenizer_encode(t, docs[i], lens[i], 0, &ids) != FTK_OK)
            return 1;
        for (size_t k = 0; k < ids.n; k++)
            fprintf(df, k ? " %d" : "%d", ids.ids[k]);
        fputc('\n', df);
    }
    if (df)
        fclose(df);
    qsort(mbs, (size_t)reps, sizeof *mbs, cmp);
    qsort(cmbs, (size_t)reps, sizeof *cmbs, cmp);
    printf("ftk %s: %.1f MB in %zu docs, %zu tokens, load %.2f s, median %.2f MB/s wall, "
           "%.2f MB/s cpu\n", argv[1], (double)bytes / 1e6, ndocs, ntok, load_s, mbs[reps / 2],
           cmbs[reps / 2]);
    ftk_ids_free(&ids);
    for (size_t i = 0; i < ndocs; i++)
        free(docs[i]);
    free(docs);
    free(lens);
    ftk_tokenizer_free(t);
    return 0;
}
