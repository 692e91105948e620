/* tests/unit/test_plugin_merge.c: ftk_merge_lora (ftk merge-lora) without Python.
 * - the merged tensors equal peft's merge_and_unload (tests/fixtures/merge/<case>.safetensors,
 *   made by tests/oracle/merge_parity.py): F32 to 1e-6 relative, BF16 within 1 ulp of the F32
 *   merge rounded once;
 * - ftk's model loading the merged directory gives the logits of base + adapter in ftk;
 * - sharding (tiny --shard-size) writes an index that ftk reads back, archives load, and bad
 *   input is a clear error that leaves no output.
 * Errors are max|got - want| / max|want| over each tensor (scale-free). */
#include <ftw.h>
#include <malloc.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "check.h"
#include "ftk/fileio.h"
#include "ftk/merge.h"
#include "ftk/model.h"
#include "ftk/safetensors.h"

static const struct ftk_backend *be;
static void *ctx;
static char tmp[256];

static double rel_err(const float *got, const float *want, int64_t n)
{
    double md = 0, mw = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        if (!(d <= md)) md = d;
        if (fabs(want[i]) > mw) mw = fabs(want[i]);
    }
    return md / (mw > 1e-30 ? mw : 1e-30);
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *f)
{
    (void)sb; (void)flag; (void)f;
    return remove(p);
}
static void rm_rf(const char *p) { nftw(p, rm_one, 16, FTW_DEPTH | FTW_PHYS); }
static int exists(const char *p) { struct stat sb; return stat(p, &sb) == 0; }

/* This process's data segment (VmData: what RLIMIT_DATA limits), in bytes. */
static long long vm_data(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmData: %lld kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb * 1024;
}

/* The fixture batch of tests/fixtures/hf_tiny/<arch>, or a fixed batch for other models. */
struct batch {
    struct ftk_st_model *e;
    struct ftk_batch_view b;
    int32_t ids[32], pos[32];
};
static void batch_for(struct batch *bt, const char *model)
{
    char p[300];
    snprintf(p, sizeof p, "%s/expected.safetensors", model);
    memset(bt, 0, sizeof *bt);
    if (exists(p) && ftk_st_file_open(p, &bt->e) == FTK_OK) {
        const struct ftk_tensor *ids = ftk_st_model_find(bt->e, "input_ids");
        bt->b = (struct ftk_batch_view){.B = ids->shape[0], .T = ids->shape[1], .input_ids = ids->data,
                                        .position_ids = ftk_st_model_find(bt->e, "position_ids")->data};
        return;
    }
    for (int i = 0; i < 32; i++) {
        bt->ids[i] = (int32_t)(3 + (i * 37) % 500);
        bt->pos[i] = i % 16;
    }
    bt->b = (struct ftk_batch_view){.B = 2, .T = 16, .input_ids = bt->ids, .position_ids = bt->pos};
}

/* logits (B,T,V) of a model dir (+ adapter), malloc'd; NULL on failure. */
static float *logits_of(const char *model, const char *adapter, const struct ftk_batch_view *b, int64_t *n)
{
    struct ftk_model *m;
    CHECK_OK(ftk_model_load(model, be, ctx, &m));
    if (ftk_last_error()[0] && !m)
        return NULL;
    if (adapter)
        CHECK_OK(ftk_model_load_adapter(m, adapter, 0));
    *n = b->B * b->T * ftk_model_get_config(m)->V;
    float *l = malloc((size_t)*n * sizeof *l);
    CHECK_OK(ftk_model_logits(m, b, l));
    ftk_model_free(m);
    return l;
}

/* Merged model `out` against base + adapter, both in ftk. */
static double logits_vs_unmerged(const char *base, const char *adapter, const char *out)
{
    struct batch bt;
    batch_for(&bt, base);
    int64_t n1, n2;
    float *want = logits_of(base, adapter, &bt.b, &n1), *got = logits_of(out, NULL, &bt.b, &n2);
    double err = n1 == n2 ? rel_err(got, want, n1) : INFINITY;
    free(want);
    free(got);
    ftk_st_model_close(bt.e);
    return err;
}

static uint16_t bf16_bits(float f) { return ftk_f32_to_bf16(f); }

/* Every tensor of the peft fixture whose name starts with `prefix` ("" or "merged."), the rest
 * of its name naming a tensor of the merged checkpoint in `out`. */
static void check_weights_prefixed(const char *fixture, const char *prefix, const char *out, int bf16)
{
    struct ftk_st_model *want, *got;
    struct ftk_source *src;
    CHECK_OK(ftk_st_file_open(fixture, &want));
    CHECK_OK(ftk_source_open(out, &src));
    CHECK_OK(ftk_st_model_open(src, "model", &got));
    double worst = 0;
    int64_t max_ulp = 0, seen = 0;
    for (size_t i = 0; i < ftk_st_model_count(want); i++) {
        const char *name;
        const struct ftk_tensor *w = ftk_st_model_at(want, i, &name);
        if (strncmp(name, prefix, strlen(prefix)))
            continue;
        name += strlen(prefix);
        seen++;
        const struct ftk_tensor *g = ftk_st_model_find(got, name);
        if (!g) { CHECK_FAIL_("%s lacks %s", out, name); continue; }
        CHECK_INT(g->dtype, bf16 ? FTK_DTYPE_BF16 : FTK_DTYPE_F32);
        int64_t n = ftk_tensor_numel(w);
        float *gf = malloc((size_t)n * sizeof *gf);
        CHECK_OK(ftk_convert_to_f32(gf, g->data, g->dtype, (size_t)n));
        if (!bf16) {
            double e = rel_err(gf, w->data, n);
            if (e > worst) worst = e;
        } else {
            const uint16_t *gb = g->data;
            for (int64_t k = 0; k < n; k++) {
                int64_t d = (int64_t)gb[k] - (int64_t)bf16_bits(((const float *)w->data)[k]);
                if (llabs(d) > max_ulp) max_ulp = llabs(d);
            }
        }
        free(gf);
    }
    if (bf16) {
        printf("  %s: bf16 weights within %lld ulp of peft's f32 merge rounded once\n", fixture, (long long)max_ulp);
        CHECK(max_ulp <= 1);
    } else {
        printf("  %s: f32 weights rel err %.2e vs peft merge_and_unload\n", fixture, worst);
        CHECK(worst <= 1e-6);
    }
    CHECK(seen > 0);
    ftk_st_model_close(got);
    ftk_source_close(src);
    ftk_st_model_close(want);
}

static void check_weights(const char *fixture, const char *out, int bf16) { check_weights_prefixed(fixture, "", out, bf16); }

/* A peft adapter with expected.safetensors ("logits"; tests/oracle/lora_patterns.py also
 * "merged.<name>"): ftk's forward with the adapter unmerged gives peft's logits; the merge gives
 * peft's merge_and_unload tensors (when the fixture has them) and logits. */
static void peft_expected_case(const char *name, const char *base, const char *adapter, int64_t merged, int64_t replaced,
                               int weights)
{
    char fx[400], out[400];
    snprintf(fx, sizeof fx, "%s/expected.safetensors", adapter);
    struct ftk_st_model *e;
    CHECK_OK(ftk_st_file_open(fx, &e));
    const struct ftk_tensor *want = ftk_st_model_find(e, "logits");
    struct batch bt;
    batch_for(&bt, base);
    int64_t n;
    float *got = logits_of(base, adapter, &bt.b, &n);
    CHECK(want && got && n == ftk_tensor_numel(want));
    if (want && got && n == ftk_tensor_numel(want)) {
        double err = rel_err(got, want->data, n);
        printf("  %s: ftk base + adapter vs peft logits rel err %.2e\n", name, err);
        CHECK(err <= 1e-5);
    }
    free(got);
    snprintf(out, sizeof out, "%s/%s", tmp, name);
    struct ftk_merge_opts o = {.model = base, .adapter = adapter, .output = out};
    struct ftk_merge_stats st;
    CHECK_OK(ftk_merge_lora(&o, &st));
    CHECK_INT(st.merged, merged);
    CHECK_INT(st.replaced, replaced);
    if (weights)
        check_weights_prefixed(fx, "merged.", out, 0);
    got = logits_of(out, NULL, &bt.b, &n);
    if (want && got && n == ftk_tensor_numel(want)) {
        double err = rel_err(got, want->data, n);
        printf("  %s: merged model vs peft logits rel err %.2e\n", name, err);
        CHECK(err <= 1e-5);
    }
    free(got);
    ftk_st_model_close(bt.e);
    ftk_st_model_close(e);
}

static void merge_case(const char *name, const char *base, const char *adapter, const char *fixture)
{
    char out[400], out16[400];
    snprintf(out, sizeof out, "%s/%s-f32", tmp, name);
    snprintf(out16, sizeof out16, "%s/%s-bf16", tmp, name);
    struct ftk_merge_opts o = {.model = base, .adapter = adapter, .output = out};
    struct ftk_merge_stats st;
    CHECK_OK(ftk_merge_lora(&o, &st));
    CHECK_STR(st.dtype, "float32");   /* the base's */
    CHECK_INT(st.merged, 14);         /* 7 linears x 2 layers */
    if (fixture)
        check_weights(fixture, out, 0);
    double err = logits_vs_unmerged(base, adapter, out);
    printf("  %s: merged logits vs base + adapter rel err %.2e\n", name, err);
    CHECK(err <= 1e-5);
    o.output = out16;
    o.dtype = "bf16";
    CHECK_OK(ftk_merge_lora(&o, &st));
    CHECK_STR(st.dtype, "bfloat16");
    if (fixture)
        check_weights(fixture, out16, 1);
    char *cfg;
    size_t len;
    char p[500];
    snprintf(p, sizeof p, "%s/config.json", out16);
    CHECK_OK(ftk_file_read_all(p, &cfg, &len));
    CHECK(strstr(cfg, "\"bfloat16\"") != NULL);
    free(cfg);
}

static ftk_status merge3(const char *model, const char *adapter, const char *out)
{
    struct ftk_merge_opts o = {.model = model, .adapter = adapter, .output = out};
    return ftk_merge_lora(&o, NULL);
}

/* A copy of an adapter whose adapter_config.json has `key` replaced by `json_value`. */
static void adapter_variant(const char *src, const char *dst, const char *key, const char *json_value)
{
    char p[500], *text, *cfg;
    size_t len;
    mkdir(dst, 0755);
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", src);
    CHECK_OK(ftk_file_read_all(p, &text, &len));
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", dst);
    CHECK_OK(ftk_file_write_atomic(p, text, len));
    free(text);
    snprintf(p, sizeof p, "%s/adapter_config.json", src);
    CHECK_OK(ftk_file_read_all(p, &cfg, &len));
    /* replace "key": <value> (up to the next ',' or newline, or a whole list) */
    char pat[100];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    char *at = strstr(cfg, pat), *out = malloc(len + 200);
    if (at) {
        char *end = at + strlen(pat);
        if (*end == '[')   /* a list: up to its ']' */
            end = strchr(end, ']') + 1;
        while (*end && *end != ',' && *end != '\n')
            end++;
        int n = snprintf(out, len + 200, "%.*s%s%s%s", (int)(at - cfg), cfg, pat, json_value, end);
        snprintf(p, sizeof p, "%s/adapter_config.json", dst);
        CHECK_OK(ftk_file_write_atomic(p, out, (size_t)n));
    } else {
        CHECK_FAIL_("%s has no %s", src, key);
    }
    free(out);
    free(cfg);
}

/* test_plugin_merge --limited-heap BYTES MODEL ADAPTER OUT: merges one row-chunk of 1 MiB at a time
 * with the data segment limited to what it is at the start plus BYTES. A fresh process (exec'd by
 * the test): the test's own freed heap would otherwise serve the merge's allocations unseen. */
static int limited_heap_merge(char **argv)
{
    mallopt(M_MMAP_THRESHOLD, 128 << 10);   /* large blocks mapped afresh, counted by RLIMIT_DATA */
    struct rlimit rl;
    long long now = vm_data();
    if (now <= 0 || getrlimit(RLIMIT_DATA, &rl) != 0)
        return 2;
    rl.rlim_cur = (rlim_t)(now + atoll(argv[2]));
    if (setrlimit(RLIMIT_DATA, &rl) != 0)
        return 2;
    struct ftk_merge_opts o = {.model = argv[3], .adapter = argv[4], .output = argv[5], .chunk_bytes = 1 << 20};
    if (ftk_merge_lora(&o, NULL) != FTK_OK) {
        printf("  merge in a heap limited to %s more bytes: %s\n", argv[2], ftk_last_error());
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 6 && !strcmp(argv[1], "--limited-heap"))
        return limited_heap_merge(argv);
    be = ftk_backend_cpu();
    struct ftk_backend_opts bo = {.struct_size = sizeof bo, .threads = 1};
    if (be->create(&bo, &ctx) != FTK_OK) {
        printf("cannot create the cpu backend: %s\n", ftk_last_error());
        return 1;
    }
    snprintf(tmp, sizeof tmp, "/tmp/ftk-test-merge-XXXXXX");
    if (!mkdtemp(tmp)) {
        printf("mkdtemp failed\n");
        return 1;
    }
    static const char *archs[] = {"llama", "mistral", "qwen2", "qwen3"};
    for (int i = 0; i < 4; i++) {
        char name[100], base[100], ad[120], fx[120];
        snprintf(name, sizeof name, "%s: merged = peft merge_and_unload, logits = base + adapter", archs[i]);
        snprintf(base, sizeof base, "tests/fixtures/hf_tiny/%s", archs[i]);
        snprintf(ad, sizeof ad, "%s/adapter", base);
        snprintf(fx, sizeof fx, "tests/fixtures/merge/%s.safetensors", archs[i]);
        TEST(name) merge_case(archs[i], base, ad, fx);
    }
    char p[400], q[600];
    TEST("rsLoRA: scale alpha/sqrt(r)") {
        snprintf(p, sizeof p, "%s/rslora-adapter", tmp);
        adapter_variant("tests/fixtures/hf_tiny/llama/adapter", p, "use_rslora", "true");
        merge_case("llama-rslora", "tests/fixtures/hf_tiny/llama", p, "tests/fixtures/merge/llama-rslora.safetensors");
    }
    TEST("peft rank_pattern, alpha_pattern (regex keys) and modules_to_save: forward and merge = peft") {
        peft_expected_case("patterns", "tests/fixtures/hf_tiny/llama", "tests/fixtures/hf_tiny/llama/patterns", 14, 1, 1);
        peft_expected_case("mts", "tests/fixtures/hf_tiny/llama", "tests/fixtures/hf_tiny/llama/mts", 4, 1, 0);
    }
    TEST("target_modules and exclude_modules as regex strings: forward and merge = peft") {
        peft_expected_case("regex-targets", "tests/fixtures/hf_tiny/llama", "tests/fixtures/hf_tiny/llama/regex-targets", 9, 0, 1);
    }
    TEST("modules_to_save embed_tokens on a tied model (qwen3): the head keeps the original embeddings, as peft") {
        peft_expected_case("qwen3-mts-embed", "tests/fixtures/hf_tiny/qwen3", "tests/fixtures/hf_tiny/qwen3/mts-embed", 4, 1, 1);
        peft_expected_case("qwen3-dora-mts-embed", "tests/fixtures/hf_tiny/qwen3", "tests/fixtures/hf_tiny/qwen3/dora-mts-embed", 4, 1, 1);
    }
    TEST("DoRA with modules_to_save (the plugin path): forward and merge = peft") {
        peft_expected_case("dora-mts", "tests/fixtures/hf_tiny/llama", "tests/fixtures/hf_tiny/llama/dora-mts", 4, 1, 1);
    }
    TEST("stories260K (a trained model), tied embeddings") {
        snprintf(p, sizeof p, "%s/stories", tmp);
        CHECK_OK(merge3("models/stories260K", "tests/fixtures/merge/stories260K-adapter", p));
        double err = logits_vs_unmerged("models/stories260K", "tests/fixtures/merge/stories260K-adapter", p);
        printf("  stories260K: merged logits vs base + adapter rel err %.2e\n", err);
        CHECK(err <= 1e-5);
        snprintf(q, sizeof q, "%s/stories/tokenizer.json", tmp);
        CHECK(exists(q));   /* tokenizer files travel with the weights */
    }
    TEST("a merge written a row at a time equals the whole-tensor one byte for byte (LoRA, patterns + modules_to_save, DoRA)") {
        static const char *const cases[][3] = {
            {"tests/fixtures/hf_tiny/llama", "tests/fixtures/hf_tiny/llama/adapter", NULL},
            {"tests/fixtures/hf_tiny/llama", "tests/fixtures/hf_tiny/llama/adapter", "bf16"},
            {"tests/fixtures/hf_tiny/llama", "tests/fixtures/hf_tiny/llama/patterns", "bf16"},
            {"tests/fixtures/hf_tiny/qwen3", "tests/fixtures/hf_tiny/qwen3/mts-embed", NULL},
            {"tests/fixtures/hf_tiny/llama", "tests/fixtures/hf_tiny/llama/dora-mts", "bf16"},
        };
        for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
            static const size_t chunks[] = {0, 1, 700};   /* default (whole), one row, a few rows */
            char *want = NULL;
            size_t want_len = 0;
            for (size_t k = 0; k < 3; k++) {
                snprintf(p, sizeof p, "%s/chunked-%zu-%zu", tmp, c, k);
                struct ftk_merge_opts o = {.model = cases[c][0], .adapter = cases[c][1], .output = p, .dtype = cases[c][2],
                                           .chunk_bytes = chunks[k]};
                CHECK_OK(ftk_merge_lora(&o, NULL));
                snprintf(q, sizeof q, "%s/model.safetensors", p);
                char *got;
                size_t len;
                CHECK_OK(ftk_file_read_all(q, &got, &len));
                if (k == 0) {
                    want = got;
                    want_len = len;
                    continue;
                }
                CHECK(want && len == want_len && memcmp(got, want, len) == 0);
                free(got);
            }
            free(want);
        }
    }
    TEST("modules_to_save goes a chunk of rows at a time too: a 16 MiB saved embedding merges in 8 MiB more heap") {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
        printf("  skipped: a sanitizer's allocator holds memory of its own\n");
#else
        /* base: embeddings (4096,1024) F32 and no head (tied); adapter: a saved copy, no LoRA pair */
        char base[300], ad[300];
        snprintf(base, sizeof base, "%s/big-base", tmp);
        snprintf(ad, sizeof ad, "%s/big-adapter", tmp);
        mkdir(base, 0755);
        mkdir(ad, 0755);
        const int64_t shape[2] = {4096, 1024};
        struct ftk_message m;
        struct ftk_tensor *t;
        ftk_message_init(&m);
        CHECK_OK(ftk_message_add(&m, "model.embed_tokens.weight", FTK_DTYPE_F32, 2, shape, NULL, NULL));
        snprintf(p, sizeof p, "%s/model.safetensors", base);
        CHECK_OK(ftk_st_write(p, &m));
        ftk_message_free(&m);
        CHECK_OK(ftk_message_add(&m, "base_model.model.model.embed_tokens.weight", FTK_DTYPE_F32, 2, shape, NULL, &t));
        for (int64_t k = 0; k < shape[0] * shape[1]; k++)
            ((float *)t->data)[k] = (float)k;
        snprintf(p, sizeof p, "%s/adapter_model.safetensors", ad);
        CHECK_OK(ftk_st_write(p, &m));
        static const char cfg[] = "{\"model_type\": \"llama\", \"torch_dtype\": \"float32\"}";
        static const char acfg[] = "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, \"target_modules\": [\"q_proj\"], "
                                   "\"modules_to_save\": [\"embed_tokens\"]}";
        snprintf(p, sizeof p, "%s/config.json", base);
        CHECK_OK(ftk_file_write_atomic(p, cfg, strlen(cfg)));
        snprintf(p, sizeof p, "%s/adapter_config.json", ad);
        CHECK_OK(ftk_file_write_atomic(p, acfg, strlen(acfg)));
        snprintf(q, sizeof q, "%s/big-merged", tmp);
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {   /* a few 1 MiB chunks, not a whole F32 copy (16 MiB) */
            /* no OpenBLAS threads: one would spin forever at exit on its 128 MiB buffer that
             * the limit refuses (the merge itself needs no BLAS here) */
            setenv("OPENBLAS_NUM_THREADS", "1", 1);
            execl("/proc/self/exe", "test_plugin_merge", "--limited-heap", "8388608", base, ad, q, (char *)NULL);
            _exit(3);
        }
        int st = -1;
        CHECK(pid > 0 && waitpid(pid, &st, 0) == pid);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        struct ftk_st_model *r = NULL;
        char out[700];
        snprintf(out, sizeof out, "%s/model.safetensors", q);
        if (WIFEXITED(st) && WEXITSTATUS(st) == 0 && ftk_st_file_open(out, &r) == FTK_OK) {
            const struct ftk_tensor *e = ftk_st_model_find(r, "model.embed_tokens.weight");
            CHECK(e && e->nbytes == t->nbytes && memcmp(e->data, t->data, t->nbytes) == 0);
            ftk_st_model_close(r);
        }
        ftk_message_free(&m);
#endif
    }
    TEST("sharding: a 5KB --shard-size writes an index that ftk reads back") {
        snprintf(p, sizeof p, "%s/sharded", tmp);
        struct ftk_merge_opts o = {.model = "tests/fixtures/hf_tiny/qwen2", .adapter = "tests/fixtures/hf_tiny/qwen2/adapter",
                                   .output = p, .shard_size = 5000};
        struct ftk_merge_stats st;
        CHECK_OK(ftk_merge_lora(&o, &st));
        printf("  %lld shards, total_size %llu\n", (long long)st.shards, (unsigned long long)st.total_size);
        CHECK(st.shards > 2);
        snprintf(q, sizeof q, "%s/model.safetensors.index.json", p);
        CHECK(exists(q));
        snprintf(q, sizeof q, "%s/model.safetensors", p);
        CHECK(!exists(q));
        snprintf(q, sizeof q, "%s/model-00001-of-%05lld.safetensors", p, (long long)st.shards);
        CHECK(exists(q));
        snprintf(q, sizeof q, "%s/qwen2-f32", tmp);   /* the unsharded merge from above */
        struct batch bt;
        batch_for(&bt, "tests/fixtures/hf_tiny/qwen2");
        int64_t n1, n2;
        float *a = logits_of(p, NULL, &bt.b, &n1), *b = logits_of(q, NULL, &bt.b, &n2);
        CHECK(n1 == n2 && memcmp(a, b, (size_t)n1 * sizeof *a) == 0);
        free(a);
        free(b);
        ftk_st_model_close(bt.e);
        /* a tensor larger than the limit gets a shard of its own */
        snprintf(p, sizeof p, "%s/sharded1", tmp);
        o.output = p;
        o.shard_size = 1;
        CHECK_OK(ftk_merge_lora(&o, &st));
        CHECK_INT(st.shards, st.tensors);
    }
    static const char *exts[] = {"tar", "tar.zst", "zip"};
    for (int i = 0; i < 3; i++) {
        char name[80];
        snprintf(name, sizeof name, "archive output .%s loads", exts[i]);
        TEST(name) {
            snprintf(p, sizeof p, "%s/merged.%s", tmp, exts[i]);
            CHECK_OK(merge3("tests/fixtures/hf_tiny/llama", "tests/fixtures/hf_tiny/llama/adapter", p));
            snprintf(q, sizeof q, "%s/llama-f32", tmp);
            struct batch bt;
            batch_for(&bt, "tests/fixtures/hf_tiny/llama");
            int64_t n1, n2;
            float *a = logits_of(p, NULL, &bt.b, &n1), *b = logits_of(q, NULL, &bt.b, &n2);
            CHECK(a && b && n1 == n2 && memcmp(a, b, (size_t)n1 * sizeof *a) == 0);
            free(a);
            free(b);
            ftk_st_model_close(bt.e);
        }
    }
    TEST("bad input: clear errors, no partial output") {
        snprintf(p, sizeof p, "%s/bad", tmp);
        CHECK_ERR(merge3("tests/fixtures/hf_tiny/llama", "tests/fixtures/hf_tiny/qwen3/adapter", p), FTK_E_MISMATCH,
                  "adapter for another base");
        CHECK(!exists(p));
        snprintf(q, sizeof q, "%s/bad.tar.zst", tmp);
        CHECK_ERR(merge3("tests/fixtures/hf_tiny/llama", "tests/fixtures/hf_tiny/qwen3/adapter", q), FTK_E_MISMATCH,
                  "adapter for another base");
        CHECK(!exists(q));
        CHECK_ERR(merge3("tests/fixtures/hf_tiny/llama", "tests/fixtures/hf_tiny/nosuch", p), FTK_E_NOTFOUND, "nosuch");
        CHECK_ERR(merge3("tests/fixtures/hf_tiny/nosuch", "tests/fixtures/hf_tiny/llama/adapter", p), FTK_E_NOTFOUND, "nosuch");
        CHECK(!exists(p));
        struct ftk_merge_opts o = {.model = "tests/fixtures/hf_tiny/llama", .adapter = "tests/fixtures/hf_tiny/llama/adapter",
                                   .output = p, .dtype = "int8"};
        CHECK_ERR(ftk_merge_lora(&o, NULL), FTK_E_INVALID, "unknown dtype \"int8\"");
        snprintf(q, sizeof q, "%s/llama-f32", tmp);
        CHECK_ERR(merge3("tests/fixtures/hf_tiny/llama", "tests/fixtures/hf_tiny/llama/adapter", q), FTK_E_INVALID, "not empty");
        /* one adapter_config.json key changed: what each does to the merge */
        static const struct { const char *src, *key, *value; ftk_status code; const char *msg; } bad[] = {
            /* DoRA goes to the lora plugin's merge, which wants the magnitude vector */
            {"adapter", "use_dora", "true", FTK_E_NOTFOUND, "lora_magnitude_vector"},
            {"adapter", "bias", "\"all\"", FTK_E_UNSUPPORTED, "bias = all"},
            {"adapter", "fan_in_fan_out", "true", FTK_E_UNSUPPORTED, "fan_in_fan_out"},
            {"adapter", "rank_pattern", "{\"q_proj\": 2}", FTK_E_MISMATCH, "r = 2 (rank_pattern)"},
            {"adapter", "alpha_pattern", "{\"(?!q)_proj\": 2}", FTK_E_UNSUPPORTED, "the construct \"(?!\""},
            {"adapter", "alpha_pattern", "{\"q_proj[\": 2}", FTK_E_FORMAT, "q_proj["},
            /* lm_head saved whole, but the config does not say so */
            {"mts", "modules_to_save", "[\"embed_tokens\"]", FTK_E_UNSUPPORTED, "nor in modules_to_save"},
            {"adapter", "layer_replication", "[[0, 2]]", FTK_E_UNSUPPORTED, "layer_replication"},
            {"adapter", "r", "8", FTK_E_MISMATCH, "r = 8"},
            {"adapter", "target_modules", "[\"q_proj\"]", FTK_E_MISMATCH, "target_modules"},
        };
        for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
            char src[200];
            snprintf(src, sizeof src, "tests/fixtures/hf_tiny/llama/%s", bad[i].src);
            snprintf(q, sizeof q, "%s/bad-config-%zu", tmp, i);
            adapter_variant(src, q, bad[i].key, bad[i].value);
            CHECK_ERR(merge3("tests/fixtures/hf_tiny/llama", q, p), bad[i].code, bad[i].msg);
        }
        CHECK(!exists(p));
    }
    TEST("peft LoRA variants that cannot be merged (aLoRA, Arrow) are refused, merged or loaded") {
        /* peft: "aLoRA does not support merging" (the delta applies only after the invocation
         * tokens), "Cannot merge an active Arrow router adapter" */
        static const char *const key[] = {"alora_invocation_tokens", "arrow_config"};
        static const char *const val[] = {"[5, 6]", "{\"top_k\": 2}"};
        static const char *const src[] = {"tests/fixtures/hf_tiny/llama/adapter", "tests/fixtures/hf_tiny/llama/dora-mts"};
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 2; j++) {
                snprintf(p, sizeof p, "%s/variant-out", tmp);
                snprintf(q, sizeof q, "%s/variant-%d-%d", tmp, i, j);
                adapter_variant(src[j], q, key[i], val[i]);
                CHECK_ERR(merge3("tests/fixtures/hf_tiny/llama", q, p), FTK_E_UNSUPPORTED, key[i]);
                CHECK(!exists(p));
                struct ftk_model *m;
                CHECK_OK(ftk_model_load("tests/fixtures/hf_tiny/llama", be, ctx, &m));
                CHECK_ERR(ftk_model_load_adapter(m, q, 0), FTK_E_UNSUPPORTED, key[i]);
                ftk_model_free(m);
            }
    }
    TEST("sizes as huggingface_hub counts them") {
        uint64_t v = 0;
        CHECK_OK(ftk_parse_size("5GB", &v));
        CHECK(v == 5000000000ull);
        CHECK_OK(ftk_parse_size("500MB", &v));
        CHECK(v == 500000000ull);
        CHECK_OK(ftk_parse_size("2GiB", &v));
        CHECK(v == 2147483648ull);
        CHECK_OK(ftk_parse_size("1.5kb", &v));
        CHECK(v == 1500);
        CHECK_OK(ftk_parse_size("4096", &v));
        CHECK(v == 4096);
        CHECK_ERR(ftk_parse_size("5XB", &v), FTK_E_INVALID, "unknown unit");
        CHECK_ERR(ftk_parse_size("GB", &v), FTK_E_INVALID, "not a number");
    }
    rm_rf(tmp);
    be->destroy(ctx);
    return check_summary();
}
