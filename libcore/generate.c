/* libcore/generate.c: the generation loop and sampling (ftk/generate.h). Logits processing in
 * the order of transformers' generate: RepetitionPenaltyLogitsProcessor, then the warpers
 * Temperature, TopK, TopP, MinP; then argmax (greedy) or a draw from the softmax. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cjson/cJSON.h>
#include "ftk/generate.h"

void ftk_gen_config_init(struct ftk_gen_config *c)
{
    memset(c, 0, sizeof *c);
    c->max_new_tokens = 256;
    c->temperature = 1.0;
    c->top_p = 1.0;
    c->repetition_penalty = 1.0;
}

static void add_eos(struct ftk_gen_config *c, int32_t id)
{
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos[i] == id)
            return;
    if (c->n_eos < FTK_GEN_MAX_EOS)
        c->eos[c->n_eos++] = id;
}

ftk_status ftk_gen_config_load(struct ftk_gen_config *c, const char *model_path)
{
    struct ftk_source *src;
    FTK_TRY(ftk_source_open(model_path, &src));
    if (!ftk_source_exists(src, "generation_config.json")) {
        ftk_source_close(src);
        return FTK_OK;
    }
    char *text;
    size_t len;
    ftk_status s = ftk_source_read(src, "generation_config.json", &text, &len);
    ftk_source_close(src);
    FTK_TRY(s);
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    FTK_FAIL_IF(!cJSON_IsObject(j), FTK_E_FORMAT, "%s/generation_config.json: not a JSON object", model_path);
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "eos_token_id"), *x;
    if (cJSON_IsNumber(e))
        add_eos(c, (int32_t)e->valuedouble);
    else if (cJSON_IsArray(e))
        cJSON_ArrayForEach(x, e)
            if (cJSON_IsNumber(x))
                add_eos(c, (int32_t)x->valuedouble);
    if (cJSON_IsBool(x = cJSON_GetObjectItemCaseSensitive(j, "do_sample")))
        c->do_sample = cJSON_IsTrue(x);
    if (cJSON_IsNumber(x = cJSON_GetObjectItemCaseSensitive(j, "temperature")))
        c->temperature = x->valuedouble;
    if (cJSON_IsNumber(x = cJSON_GetObjectItemCaseSensitive(j, "top_k")))
        c->top_k = (int64_t)x->valuedouble;
    if (cJSON_IsNumber(x = cJSON_GetObjectItemCaseSensitive(j, "top_p")))
        c->top_p = x->valuedouble;
    if (cJSON_IsNumber(x = cJSON_GetObjectItemCaseSensitive(j, "min_p")))
        c->min_p = x->valuedouble;
    if (cJSON_IsNumber(x = cJSON_GetObjectItemCaseSensitive(j, "repetition_penalty")))
        c->repetition_penalty = x->valuedouble;
    if (cJSON_IsNumber(x = cJSON_GetObjectItemCaseSensitive(j, "max_new_tokens")))
        c->max_new_tokens = (int64_t)x->valuedouble;
    cJSON_Delete(j);
    return FTK_OK;
}

/* xoshiro256** */
static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
static uint64_t next_u64(uint64_t s[4])
{
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 45);
    return r;
}
static double next_unit(uint64_t s[4]) { return (double)(next_u64(s) >> 11) * (1.0 / 9007199254740992.0); }

struct cand { float logit; int32_t id; };
static int by_logit_desc(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    if (x->logit != y->logit)
        return x->logit > y->logit ? -1 : 1;
    return x->id - y->id;
}

int32_t ftk_gen_pick(const struct ftk_gen_config *c, float *lg, int64_t V, const int32_t *seen, int64_t n_seen, uint64_t rng[4])
{
    if (c->repetition_penalty != 1.0) {   /* each distinct id once, as torch.gather/scatter does */
        float p = (float)c->repetition_penalty;
        for (int64_t i = 0; i < n_seen; i++) {
            int32_t id = seen[i];
            if (id < 0 || id >= V)
                continue;
            int dup = 0;
            for (int64_t j = 0; j < i && !dup; j++)
                dup = seen[j] == id;
            if (!dup)
                lg[id] = lg[id] < 0 ? lg[id] * p : lg[id] / p;
        }
    }
    if (!c->do_sample || c->temperature <= 0) {   /* temperature 0 means greedy (docs/tools/generate.md) */
        int64_t best = 0;
        for (int64_t v = 1; v < V; v++)
            if (lg[v] > lg[best])
                best = v;
        return (int32_t)best;
    }
    if (c->temperature != 1.0)
        for (int64_t v = 0; v < V; v++)
            lg[v] = lg[v] / (float)c->temperature;
    struct cand *cs = malloc((size_t)V * sizeof *cs);
    if (!cs)
        return -1;
    for (int64_t v = 0; v < V; v++)
        cs[v] = (struct cand){lg[v], (int32_t)v};
    qsort(cs, (size_t)V, sizeof *cs, by_logit_desc);
    int64_t keep = V;
    if (c->top_k > 0 && c->top_k < keep) {   /* ties with the k-th logit stay, as torch.topk's threshold does */
        float kth = cs[c->top_k - 1].logit;
        keep = c->top_k;
        while (keep < V && cs[keep].logit == kth)
            keep++;
    }
    double mx = cs[0].logit, z = 0;
    double *p = malloc((size_t)keep * sizeof *p);
    if (!p) {
        free(cs);
        return -1;   /* out of memory: the caller fails the run rather than emit a wrong token */
    }
    for (int64_t i = 0; i < keep; i++)
        z += (p[i] = exp((double)cs[i].logit - mx));
    for (int64_t i = 0; i < keep; i++)
        p[i] /= z;
    if (c->top_p < 1.0) {   /* smallest prefix with mass >= top_p (at least one token) */
        double cum = 0;
        int64_t k = 0;
        while (k < keep && cum < c->top_p)
            cum += p[k++];
        keep = k > 0 ? k : 1;
    }
    if (c->min_p > 0) {     /* drop tokens below min_p x the top probability */
        double lim = c->min_p * p[0];
        int64_t k = 1;
        while (k < keep && p[k] >= lim)
            k++;
        keep = k;
    }
    double tot = 0;
    for (int64_t i = 0; i < keep; i++)
        tot += p[i];
    double u = next_unit(rng) * tot;
    int32_t id = cs[keep - 1].id;
    for (int64_t i = 0; i < keep; i++) {
        u -= p[i];
        if (u < 0) {
            id = cs[i].id;
            break;
        }
    }
    free(p);
    free(cs);
    return id;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int is_eos(const struct ftk_gen_config *c, int32_t id)
{
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos[i] == id)
            return 1;
    return 0;
}

/* Decodes what row i generated; cuts at the first stop string (returns 1 if one was found). */
static ftk_status row_text(const struct ftk_tokenizer *tok, const struct ftk_gen_config *c, struct ftk_gen_result *r,
                           int *stopped)
{
    *stopped = 0;
    free(r->text);
    r->text = NULL;
    size_t len;
    FTK_TRY(ftk_tokenizer_decode(tok, r->ids, (size_t)r->n, 1, -1, &r->text, &len));
    char *first = NULL;
    for (int k = 0; k < c->n_stop; k++) {
        char *at = c->stop[k][0] ? strstr(r->text, c->stop[k]) : NULL;
        if (at && (!first || at < first))
            first = at;
    }
    if (first) {
        *first = '\0';
        *stopped = 1;
    }
    return FTK_OK;
}

/* The next logits of every live row without a decode step (ftk_model_decode_exact is 0): the
 * whole sequence so far, prompt and generated tokens, prefilled again into the row. O(T^2) per
 * row, as transformers' generate with use_cache=False. seq: scratch of the longest sequence. */
static ftk_status recompute(struct ftk_model *m, struct ftk_kv_cache *kc, int64_t n, const int32_t *const *prompts,
                            const int64_t *lens, const struct ftk_gen_result *out, const int *done, int32_t *seq, float *logits)
{
    int64_t V = ftk_model_get_config(m)->V;
    for (int64_t i = 0; i < n; i++) {
        if (done[i])
            continue;
        memcpy(seq, prompts[i], (size_t)lens[i] * sizeof *seq);
        memcpy(seq + lens[i], out[i].ids, (size_t)out[i].n * sizeof *seq);
        ftk_kv_cache_reset(kc, i);
        FTK_TRY(ftk_model_prefill(m, kc, i, seq, lens[i] + out[i].n, logits + i * V));
    }
    return FTK_OK;
}

int64_t ftk_gen_context(const struct ftk_model *m, const struct ftk_gen_config *c)
{
    return c->context > 0 ? c->context : ftk_model_get_config(m)->max_position_embeddings;
}

ftk_status ftk_generate(struct ftk_model *m, const struct ftk_tokenizer *tok, const struct ftk_gen_config *c, int64_t n,
                        const int32_t *const *prompts, const int64_t *lens, ftk_gen_token_fn on_token, void *arg,
                        struct ftk_gen_result *out)
{
    const struct ftk_model_config *mc = ftk_model_get_config(m);
    int64_t V = mc->V, ctx = ftk_gen_context(m, c);
    memset(out, 0, (size_t)n * sizeof *out);
    for (int64_t i = 0; i < n; i++) {
        FTK_FAIL_IF(lens[i] <= 0, FTK_E_INVALID, "prompt %lld is empty", (long long)i);
        FTK_FAIL_IF(lens[i] >= ctx, FTK_E_INVALID, "prompt %lld has %lld tokens, the context is %lld", (long long)i,
                    (long long)lens[i], (long long)ctx);
    }
    struct ftk_kv_cache *kc;
    FTK_TRY(ftk_kv_cache_create(m, n, ctx, &kc));
    int exact = ftk_model_decode_exact(m);
    float *logits = malloc((size_t)(n * V) * sizeof *logits);
    int32_t *next = calloc((size_t)n, sizeof *next), *seen = NULL;
    int *done = calloc((size_t)n, sizeof *done);
    int64_t *extra = calloc((size_t)n, sizeof *extra);   /* per row: the adapter's positions in the cache */
    ftk_status s = logits && next && done && extra ? FTK_OK : ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    /* one generator per row, seeded with seed + i: a row's draws do not depend on the others */
    uint64_t (*rng)[4] = malloc((size_t)n * sizeof *rng);
    if (s == FTK_OK && !rng)
        s = ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    for (int64_t i = 0; i < n && s == FTK_OK; i++) {
        uint64_t seed = c->seed + (uint64_t)i;
        uint64_t *g = rng[i];
        g[0] = seed ^ 0x9E3779B97F4A7C15ull, g[1] = 0xBF58476D1CE4E5B9ull, g[2] = 0x94D049BB133111EBull, g[3] = seed + 1;
        for (int k = 0; k < 16; k++)
            next_u64(g);
    }
    int64_t cap = 0;
    for (int64_t i = 0; i < n && s == FTK_OK; i++) {
        out[i].prompt_tokens = lens[i];
        out[i].finish_reason = "length";
        size_t want = (size_t)(c->max_new_tokens > 0 ? c->max_new_tokens : 1);
        if (!(out[i].ids = malloc(want * sizeof(int32_t)))) {
            s = ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
            break;
        }
        double t0 = now_s();
        if ((s = ftk_model_prefill(m, kc, i, prompts[i], lens[i], logits + i * V)) != FTK_OK)
            s = ftk_error_wrap(s, "prompt %lld", (long long)i);
        else   /* the adapter's own positions in the cache (prefix, virtual tokens) count too */
            extra[i] = ftk_kv_cache_len(kc, i) - lens[i];
        out[i].prefill_s = now_s() - t0;
        if (lens[i] + c->max_new_tokens > cap)
            cap = lens[i] + c->max_new_tokens;
    }
    if (s == FTK_OK && !(seen = malloc((size_t)cap * sizeof *seen)))
        s = ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    int64_t live = n;
    double decode_s = 0;
    for (int64_t step = 0; s == FTK_OK && step < c->max_new_tokens && live > 0; step++) {
        for (int64_t i = 0; i < n; i++) {
            if (done[i])
                continue;
            memcpy(seen, prompts[i], (size_t)lens[i] * sizeof *seen);
            memcpy(seen + lens[i], out[i].ids, (size_t)out[i].n * sizeof *seen);
            int32_t id = ftk_gen_pick(c, logits + i * V, V, seen, lens[i] + out[i].n, rng[i]);
            if (id < 0) {
                s = ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory (sampling over %lld tokens)", (long long)V);
                break;
            }
            out[i].ids[out[i].n++] = id;
            next[i] = id;
            if (on_token)
                on_token(arg, i, id);
            int stopped = 0;
            if (is_eos(c, id)) {
                out[i].finish_reason = "stop";
                done[i] = 1;
            } else if (tok && c->n_stop && (s = row_text(tok, c, &out[i], &stopped)) != FTK_OK) {
                break;   /* the error stands: no later row may overwrite it */
            } else if (stopped) {
                out[i].finish_reason = "stop";
                done[i] = 1;
            } else if (lens[i] + extra[i] + out[i].n >= ctx) {
                done[i] = 1;   /* the context is full: "length" */
            }
            if (done[i]) {
                live--;
                ftk_kv_cache_reset(kc, i);   /* still fed (and ignored) while others go on: keep it from filling */
            }
        }
        if (s == FTK_OK && live > 0 && step + 1 < c->max_new_tokens) {
            double t0 = now_s();
            s = exact ? ftk_model_decode(m, kc, next, logits) : recompute(m, kc, n, prompts, lens, out, done, seen, logits);
            decode_s += now_s() - t0;
        }
    }
    for (int64_t i = 0; i < n; i++)
        out[i].decode_s = decode_s;
    for (int64_t i = 0; i < n && s == FTK_OK && tok; i++) {   /* again: a stopping eos was not decoded yet */
        int stopped;
        s = row_text(tok, c, &out[i], &stopped);
    }
    free(seen);
    free(rng);
    free(logits);
    free(next);
    free(done);
    free(extra);
    ftk_kv_cache_free(kc);
    if (s != FTK_OK)
        for (int64_t i = 0; i < n; i++)
            ftk_gen_result_free(&out[i]);
    return s;
}

void ftk_gen_result_free(struct ftk_gen_result *r)
{
    if (!r)
        return;
    free(r->ids);
    free(r->text);
    r->ids = NULL;
    r->text = NULL;
    r->n = 0;
}
