/* tests/unit/test_generate.c: greedy generation with the KV cache equals transformers' greedy
 * generate (= llama2.c's run.c) on the embedded stories260K model, token for token, for every
 * prompt of tests/fixtures/stories260k/greedy.jsonl; batched and one at a time; the tokenizer
 * encodes the prompts as llama2.c did; KV-cache decoding equals the full forward; sampling
 * filters behave as transformers' warpers. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include "check.h"
#include "ftk/fileio.h"
#include "ftk/generate.h"

#define MODEL "models/stories260K"
#define MAXP 16

static int32_t *ids_of(const cJSON *a, int64_t *n)
{
    *n = cJSON_GetArraySize(a);
    int32_t *v = malloc((size_t)(*n ? *n : 1) * sizeof *v);
    int64_t i = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, a) v[i++] = (int32_t)x->valuedouble;
    return v;
}

int main(void)
{
    const struct ftk_backend *be = ftk_backend_cpu();
    struct ftk_backend_opts o = {.struct_size = sizeof o, .threads = 1};
    void *ctx;
    if (be->create(&o, &ctx) != FTK_OK)
        return 1;
    struct ftk_model *m = NULL;
    struct ftk_tokenizer *tok = NULL;
    char *text = NULL;
    TEST("load the embedded model and its tokenizer") {
        CHECK_OK(ftk_model_load(MODEL, be, ctx, &m));
        CHECK_OK(ftk_tokenizer_load_path(MODEL, &tok));
        CHECK_OK(ftk_file_read_all("tests/fixtures/stories260k/greedy.jsonl", &text, NULL));
    }
    if (!m || !tok || !text)
        return check_summary();

    const char *prompts_text[MAXP];
    int32_t *prompts[MAXP], *want[MAXP];
    int64_t lens[MAXP], nwant[MAXP], np = 0, max_new = 0;
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); line && np < MAXP; line = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(line);
        prompts_text[np] = strdup(cJSON_GetObjectItem(j, "prompt")->valuestring);
        prompts[np] = ids_of(cJSON_GetObjectItem(j, "prompt_ids"), &lens[np]);
        want[np] = ids_of(cJSON_GetObjectItem(j, "ids"), &nwant[np]);
        if (nwant[np] > max_new)
            max_new = nwant[np];
        np++;
        cJSON_Delete(j);
    }
    TEST("the tokenizer encodes the prompts as llama2.c (BOS + ids)") {
        for (int64_t i = 0; i < np; i++) {
            struct ftk_ids ids = {0};
            CHECK_OK(ftk_tokenizer_encode(tok, prompts_text[i], strlen(prompts_text[i]), 1, &ids));
            CHECK_INT(ids.n, lens[i]);
            for (size_t k = 0; k < ids.n && (int64_t)k < lens[i]; k++)
                CHECK_INT(ids.ids[k], prompts[i][k]);
            ftk_ids_free(&ids);
        }
    }
    struct ftk_gen_config gc;
    ftk_gen_config_init(&gc);
    gc.eos[0] = 1;   /* the model ends a story with BOS, as run.c's stop rule (tests/fixtures/stories260k/README.md) */
    gc.n_eos = 1;
    TEST("greedy, one prompt at a time: equal to transformers token for token") {
        int64_t total = 0;
        for (int64_t i = 0; i < np; i++) {
            struct ftk_gen_result r;
            gc.max_new_tokens = nwant[i];
            CHECK_OK(ftk_generate(m, tok, &gc, 1, (const int32_t *const *)&prompts[i], &lens[i], NULL, NULL, &r));
            int64_t same = 0;
            while (same < r.n && same < nwant[i] && r.ids[same] == want[i][same])
                same++;
            if (same != nwant[i] || r.n != nwant[i])
                printf("  prompt %lld: first difference at token %lld of %lld\n", (long long)i, (long long)same, (long long)nwant[i]);
            CHECK_INT(same, nwant[i]);
            total += same;
            ftk_gen_result_free(&r);
        }
        printf("  %lld generated tokens equal over %lld prompts\n", (long long)total, (long long)np);
    }
    TEST("greedy, all prompts batched in one KV cache: the same tokens") {
        struct ftk_gen_result r[MAXP];
        gc.max_new_tokens = max_new;
        CHECK_OK(ftk_generate(m, tok, &gc, np, (const int32_t *const *)prompts, lens, NULL, NULL, r));
        for (int64_t i = 0; i < np; i++) {
            int64_t k = 0;
            while (k < nwant[i] && k < r[i].n && r[i].ids[k] == want[i][k])
                k++;
            CHECK_INT(k, nwant[i]);
            ftk_gen_result_free(&r[i]);
        }
    }
    TEST("KV-cache decode logits equal the full forward's") {
        int64_t n = lens[0] + 12, V = ftk_model_get_config(m)->V;
        int32_t *seq = malloc((size_t)n * sizeof *seq);
        memcpy(seq, prompts[0], (size_t)lens[0] * sizeof *seq);
        memcpy(seq + lens[0], want[0], 12 * sizeof *seq);
        float *full = malloc((size_t)(n * V) * sizeof *full), *step = malloc((size_t)V * sizeof *step);
        int32_t *pos = malloc((size_t)n * sizeof *pos);
        for (int64_t t = 0; t < n; t++)
            pos[t] = (int32_t)t;
        struct ftk_batch_view b = {.B = 1, .T = n, .input_ids = seq, .position_ids = pos};
        CHECK_OK(ftk_model_logits(m, &b, full));
        struct ftk_kv_cache *kc;
        CHECK_OK(ftk_kv_cache_create(m, 1, 64, &kc));
        CHECK_OK(ftk_model_prefill(m, kc, 0, seq, lens[0], step));
        double worst = 0;
        for (int64_t t = lens[0] - 1; t < n; t++) {
            if (t >= lens[0])
                CHECK_OK(ftk_model_decode(m, kc, &seq[t], step));
            for (int64_t v = 0; v < V; v++)
                worst = fmax(worst, fabs(step[v] - full[t * V + v]));
        }
        printf("  max |decode - full| = %.2e\n", worst);
        CHECK(worst < 1e-4);
        CHECK_ERR(ftk_model_prefill(m, kc, 0, seq, 3, step), FTK_E_INVALID, "not empty");
        ftk_kv_cache_free(kc);
        free(seq); free(full); free(step); free(pos);
    }
    TEST("sampling: top-k keeps tied maxima; top-p keeps the smallest nucleus; temperature 0 is greedy; repetition penalty") {
        float lg[5] = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f}, tmp[5];
        uint64_t rng[4] = {1, 2, 3, 4};
        struct ftk_gen_config c;
        ftk_gen_config_init(&c);
        c.do_sample = 1;
        c.top_k = 1;
        memcpy(tmp, lg, sizeof lg);
        int32_t a = ftk_gen_pick(&c, tmp, 5, NULL, 0, rng);
        CHECK(a == 1 || a == 3);   /* the two tied maxima survive top-k 1, as torch keeps ties */
        c.top_k = 0;
        c.top_p = 0.3;   /* p = .39 .39 .14 ...: the first token alone reaches 0.3 */
        for (int i = 0; i < 20; i++) {
            memcpy(tmp, lg, sizeof lg);
            CHECK_INT(ftk_gen_pick(&c, tmp, 5, NULL, 0, rng), 1);
        }
        c.top_p = 1.0;
        c.temperature = 0;   /* 0 means greedy (docs/tools/generate.md), even with do_sample */
        for (int i = 0; i < 20; i++) {
            memcpy(tmp, lg, sizeof lg);
            CHECK_INT(ftk_gen_pick(&c, tmp, 5, NULL, 0, rng), 1);
        }
        c.temperature = 1.0;
        c.repetition_penalty = 100.0;
        c.do_sample = 0;
        int32_t seen[1] = {1};
        memcpy(tmp, lg, sizeof lg);
        CHECK_INT(ftk_gen_pick(&c, tmp, 5, seen, 1, rng), 3);   /* 3/100 < 3: the repeat loses */
    }
    for (int64_t i = 0; i < np; i++) {
        free(prompts[i]);
        free(want[i]);
        free((void *)prompts_text[i]);
    }
    free(text);
    ftk_tokenizer_free(tok);
    ftk_model_free(m);
    be->destroy(ctx);
    return check_summary();
}
