/* libcore/plan.c: a LLaMA-Factory training YAML into the equivalent ftk pipeline, a Makefile
 * that sets pipelines/{sft,dpo}.mk's variables and includes it (ftk/plan.h). Every key is
 * either mapped, or listed as having no effect on ftk's result, or refused naming its line. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>
#include <cjson/cJSON.h>
#include "ftk/fileio.h"
#include "ftk/paths.h"
#include "ftk/plan.h"

#define MAX_KEYS 128

struct kv { char *key, *val; int line; };

struct plan {
    struct kv kv[MAX_KEYS];
    int n;
    const char *path;
};

static const char *get(const struct plan *p, const char *key)
{
    for (int i = 0; i < p->n; i++)
        if (!strcmp(p->kv[i].key, key))
            return p->kv[i].val;
    return NULL;
}

static int line_of(const struct plan *p, const char *key)
{
    for (int i = 0; i < p->n; i++)
        if (!strcmp(p->kv[i].key, key))
            return p->kv[i].line;
    return 0;
}

/* A flat mapping of scalars; `--set key=value` overrides come after the file's. */
static ftk_status parse_yaml(struct plan *p, const char *text, size_t len)
{
    yaml_parser_t y;
    yaml_event_t ev;
    FTK_FAIL_IF(!yaml_parser_initialize(&y), FTK_E_NOMEM, "out of memory");
    yaml_parser_set_input_string(&y, (const unsigned char *)text, len);
    ftk_status s = FTK_OK;
    int depth = 0, done = 0;
    char *key = NULL;
    int key_line = 0;
    while (s == FTK_OK && !done) {
        if (!yaml_parser_parse(&y, &ev)) {
            s = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s:%zu: YAML error: %s", p->path, y.problem_mark.line + 1,
                              y.problem ? y.problem : "?");
            break;
        }
        int line = (int)ev.start_mark.line + 1;
        switch (ev.type) {
        case YAML_STREAM_END_EVENT: done = 1; break;
        case YAML_MAPPING_START_EVENT:
            if (++depth > 1 || key)
                s = ftk_error_set(FTK_E_UNSUPPORTED, __FILE__, __LINE__, "%s:%d: key \"%s\": nested values are not supported",
                                  p->path, line, key ? key : "?");
            break;
        case YAML_MAPPING_END_EVENT: depth--; break;
        case YAML_SEQUENCE_START_EVENT:
            s = ftk_error_set(FTK_E_UNSUPPORTED, __FILE__, __LINE__, "%s:%d: key \"%s\": lists are not supported (use a comma-separated string)",
                              p->path, line, key ? key : "?");
            break;
        case YAML_SCALAR_EVENT: {
            const char *v = (const char *)ev.data.scalar.value;
            if (depth != 1) {
                s = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s:%d: expected a mapping of keys to values", p->path, line);
            } else if (!key) {
                key = strdup(v);
                key_line = line;
            } else {
                if (p->n == MAX_KEYS) {
                    s = ftk_error_set(FTK_E_UNSUPPORTED, __FILE__, __LINE__, "%s: more than %d keys", p->path, MAX_KEYS);
                    break;
                }
                int null = ev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
                           (!strcmp(v, "null") || !strcmp(v, "~") || !v[0]);
                p->kv[p->n++] = (struct kv){key, null ? NULL : strdup(v), key_line};
                key = NULL;
            }
            break;
        }
        default: break;
        }
        yaml_event_delete(&ev);
    }
    free(key);
    yaml_parser_delete(&y);
    return s;
}

/* Keys that change nothing in what ftk computes (scheduling, logging, framework switches). */
static const char *no_effect[] = {
    "do_train", "trust_remote_code", "overwrite_cache", "preprocessing_num_workers", "dataloader_num_workers",
    "overwrite_output_dir", "save_only_model", "report_to", "ddp_timeout", "logging_steps", "plot_loss",
    "bf16", "fp16", "pure_bf16", "flash_attn", "do_eval", "low_cpu_mem_usage", NULL};

static int in_list(const char *k, const char **l)
{
    for (; *l; l++)
        if (!strcmp(k, *l))
            return 1;
    return 0;
}

struct map { const char *key, *var; };
static const struct map direct[] = {
    {"model_name_or_path", "MODEL"}, {"adapter_name_or_path", "ADAPTER"}, {"template", "TEMPLATE"},
    {"finetuning_type", "FINETUNING"}, {"lora_rank", "LORA_RANK"}, {"lora_alpha", "LORA_ALPHA"},
    {"lora_dropout", "LORA_DROPOUT"}, {"lora_target", "LORA_TARGET"}, {"pref_beta", "BETA"},
    {"pref_loss", "PREF_LOSS"}, {"pref_ftx", "PREF_FTX"}, {"cutoff_len", "CUTOFF"}, {"max_samples", "MAX_SAMPLES"},
    {"output_dir", "OUT"}, {"save_steps", "SAVE_STEPS"}, {"per_device_train_batch_size", "BATCH"},
    {"gradient_accumulation_steps", "GRAD_ACCUM"}, {"learning_rate", "LR"}, {"max_steps", "STEPS"},
    {"lr_scheduler_type", "SCHEDULER"}, {"warmup_ratio", "WARMUP_RATIO"}, {"weight_decay", "WEIGHT_DECAY"},
    {"max_grad_norm", "MAX_GRAD_NORM"}, {"seed", "SEED"}, {"ref_model", "REF_MODEL"},
    {"ref_model_adapters", "REF_ADAPTER"}, {"simpo_gamma", "SIMPO_GAMMA"}, {"dpo_label_smoothing", "LABEL_SMOOTHING"},
    {"kto_chosen_weight", "KTO_DESIRABLE"}, {"kto_rejected_weight", "KTO_UNDESIRABLE"}, {NULL, NULL}};

/* Flags appended to a stage's *_FLAGS variable: key, variable, flag, and how the value goes:
 * 1 a boolean switch (the flag alone when true), 0 "flag VALUE", 2 "flag=VALUE" (--peft-opt). */
struct flagmap { const char *key, *var, *flag; int boolean; };
static const struct flagmap flags[] = {
    {"train_on_prompt", "TOKENIZE_FLAGS", "--train-on-prompt", 1},
    {"mask_history", "TOKENIZE_FLAGS", "--mask-history", 1},
    {"use_rslora", "TRAIN_FLAGS", "--use-rslora", 1},
    {"use_dora", "TRAIN_FLAGS", "--peft-opt use_dora=true", 1},
    {"loraplus_lr_ratio", "TRAIN_FLAGS", "--peft-opt loraplus_lr_ratio", 2},
    {"loraplus_lr_embedding", "TRAIN_FLAGS", "--peft-opt loraplus_lr_embedding", 2},
    {"additional_target", "TRAIN_FLAGS", "--peft-opt modules_to_save", 2},   /* "embed_tokens,lm_head" */
    {"warmup_steps", "TRAIN_FLAGS", "--warmup-steps", 0},
    {"freeze_trainable_layers", "TRAIN_FLAGS", "--freeze-trainable-layers", 0},
    {"freeze_trainable_modules", "TRAIN_FLAGS", "--freeze-trainable-modules", 0},
    {"freeze_extra_modules", "TRAIN_FLAGS", "--freeze-extra-modules", 0},
    {"adam_beta1", "TRAIN_FLAGS", "--adam-beta1", 0}, {"adam_beta2", "TRAIN_FLAGS", "--adam-beta2", 0},
    {"adam_epsilon", "TRAIN_FLAGS", "--adam-eps", 0}, {NULL, NULL, NULL, 0}};

static int truthy(const char *v) { return v && (!strcasecmp(v, "true") || !strcmp(v, "1") || !strcasecmp(v, "yes")); }

/* The pipelines directory: installed (share/ftk/pipelines) or the source tree beside build/. */
static void pipelines_dir(char *out, size_t n)
{
    struct stat st;
    snprintf(out, n, "%s/pipelines", ftk_data_dir());
    if (stat(out, &st) == 0 && S_ISDIR(st.st_mode))
        return;
    char exe[PATH_MAX];
    ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (k > 0) {
        exe[k] = '\0';
        char *sl = strrchr(exe, '/');
        if (sl)
            *sl = '\0';
        snprintf(out, n, "%.3900s/../../pipelines", exe);
        char *r = realpath(out, NULL);
        if (r) {
            snprintf(out, n, "%s", r);
            free(r);
        }
    }
}

/* LLaMA-Factory's dataset: one name (its dataset_info.json entry), or several plain ones of
 * one format, given as files. */
static ftk_status write_data(const struct plan *p, FILE *out)
{
    const char *ds = get(p, "dataset"), *dir = get(p, "dataset_dir");
    FTK_FAIL_IF(!ds, FTK_E_INVALID, "%s: \"dataset\" is required", p->path);
    char info[4096];
    snprintf(info, sizeof info, "%s/dataset_info.json", dir ? dir : "data");
    if (!strchr(ds, ',')) {
        fprintf(out, "DATASET_INFO := %s\nDATA := %s\n", info, ds);
        return FTK_OK;
    }
    char *text;
    size_t len;
    ftk_status s = ftk_file_read_all(info, &text, &len);
    if (s != FTK_OK)
        return ftk_error_wrap(s, "%s:%d: dataset %s", p->path, line_of(p, "dataset"), ds);
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    FTK_FAIL_IF(!j, FTK_E_FORMAT, "%s: not valid JSON", info);
    char buf[1024], files[8192] = "", fmt[32] = "";
    snprintf(buf, sizeof buf, "%s", ds);
    for (char *save = NULL, *name = strtok_r(buf, ",", &save); name && s == FTK_OK; name = strtok_r(NULL, ",", &save)) {
        while (*name == ' ')
            name++;
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, name);
        const cJSON *fn = e ? cJSON_GetObjectItemCaseSensitive(e, "file_name") : NULL;
        const cJSON *fm = e ? cJSON_GetObjectItemCaseSensitive(e, "formatting") : NULL;
        const char *f = cJSON_IsString(fm) ? fm->valuestring : "alpaca";
        if (!cJSON_IsString(fn))
            s = ftk_error_set(FTK_E_NOTFOUND, __FILE__, __LINE__, "%s:%d: dataset \"%s\" has no file_name in %s", p->path,
                              line_of(p, "dataset"), name, info);
        else if (cJSON_GetObjectItemCaseSensitive(e, "columns") || cJSON_GetObjectItemCaseSensitive(e, "tags") ||
                 cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "ranking")) || (fmt[0] && strcmp(fmt, f)))
            s = ftk_error_set(FTK_E_UNSUPPORTED, __FILE__, __LINE__,
                              "%s:%d: several datasets are supported only when they share one format and have no "
                              "columns, tags or ranking (\"%s\" does not): tokenize them separately",
                              p->path, line_of(p, "dataset"), name);
        else {
            snprintf(fmt, sizeof fmt, "%s", f);
            size_t l = strlen(files);
            snprintf(files + l, sizeof files - l, "%s%s/%s", l ? " " : "", dir ? dir : "data", fn->valuestring);
        }
    }
    cJSON_Delete(j);
    FTK_TRY(s);
    fprintf(out, "DATA := %s\nFORMAT := %s\n", files, fmt);
    return FTK_OK;
}

static ftk_status plan_write(const char *yaml_path, const char *const *sets, int n_sets, FILE *out);

/* The Makefile is built in memory and written only when complete. */
ftk_status ftk_plan_run(const char *yaml_path, const char *const *sets, int n_sets, FILE *out)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    FTK_FAIL_IF(!mem, FTK_E_NOMEM, "out of memory");
    ftk_status s = plan_write(yaml_path, sets, n_sets, mem);
    fclose(mem);
    if (s == FTK_OK && (fwrite(buf, 1, len, out) != len || fflush(out) != 0))
        s = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "writing the Makefile failed");
    free(buf);
    return s;
}

static ftk_status plan_write(const char *yaml_path, const char *const *sets, int n_sets, FILE *out)
{
    struct plan p = {.path = yaml_path};
    char *text;
    size_t len;
    FTK_TRY(ftk_file_read_all(yaml_path, &text, &len));
    ftk_status s = parse_yaml(&p, text, len);
    free(text);
    for (int i = 0; i < n_sets && s == FTK_OK; i++) {   /* --set key=value */
        const char *eq = strchr(sets[i], '=');
        if (!eq || eq == sets[i]) {
            s = ftk_error_set(FTK_E_INVALID, __FILE__, __LINE__, "--set %s: not key=value", sets[i]);
            break;
        }
        char *k = strndup(sets[i], (size_t)(eq - sets[i]));
        int found = 0;
        for (int j = 0; j < p.n; j++)
            if (!strcmp(p.kv[j].key, k)) {
                free(p.kv[j].val);
                p.kv[j].val = strdup(eq + 1);
                found = 1;
            }
        if (found)
            free(k);
        else if (p.n < MAX_KEYS)
            p.kv[p.n++] = (struct kv){k, strdup(eq + 1), 0};
    }
    const char *stage = get(&p, "stage");
    const char *mk = NULL;
    if (s == FTK_OK) {
        if (!stage)
            s = ftk_error_set(FTK_E_INVALID, __FILE__, __LINE__, "%s: \"stage\" is required (sft, pt, dpo, kto)", yaml_path);
        else if (!strcmp(stage, "sft") || !strcmp(stage, "pt"))
            mk = "sft.mk";
        else if (!strcmp(stage, "dpo"))
            mk = "dpo.mk";
        else if (!strcmp(stage, "kto"))
            mk = "kto.mk";
        else
            s = ftk_error_set(FTK_E_UNSUPPORTED, __FILE__, __LINE__, "%s:%d: stage \"%s\" is not supported yet (sft, pt, dpo, kto)",
                              yaml_path, line_of(&p, "stage"), stage);
    }
    /* every key: mapped, of no effect, or refused */
    char ignored[1024] = "", flagbuf[2][1024] = {"", ""};
    for (int i = 0; i < p.n && s == FTK_OK; i++) {
        const char *k = p.kv[i].key, *v = p.kv[i].val;
        int known = !strcmp(k, "stage") || !strcmp(k, "dataset") || !strcmp(k, "dataset_dir") ||
                    !strcmp(k, "num_train_epochs") || !strcmp(k, "packing") || !strcmp(k, "neat_packing");
        for (int m = 0; direct[m].key && !known; m++)
            known = !strcmp(k, direct[m].key);
        for (int m = 0; flags[m].key && !known; m++)
            if (!strcmp(k, flags[m].key)) {
                known = 1;
                char *b = flagbuf[!strcmp(flags[m].var, "TRAIN_FLAGS")];
                size_t l = strlen(b);
                if (flags[m].boolean == 1 && truthy(v))
                    snprintf(b + l, 1024 - l, " %s", flags[m].flag);
                else if (!flags[m].boolean && v)
                    snprintf(b + l, 1024 - l, " %s %s", flags[m].flag, v);
                else if (flags[m].boolean == 2 && v)
                    snprintf(b + l, 1024 - l, " %s=%s", flags[m].flag, v);
            }
        /* LLaMA-Factory (model/adapter.py): pissa_init with pissa_iter -1 is peft's exact "pissa",
         * else "pissa_niter_<pissa_iter>" (default 16); pissa_iter alone changes nothing */
        if (!known && (!strcmp(k, "pissa_init") || (!strcmp(k, "pissa_iter") && truthy(get(&p, "pissa_init"))))) {
            known = 1;
            const char *it = get(&p, "pissa_iter");
            char *e = NULL;
            long n = it ? strtol(it, &e, 10) : 16;
            if (it && (e == it || *e || n < -1 || n > 100000))
                s = ftk_error_set(FTK_E_INVALID, __FILE__, __LINE__, "%s:%d: pissa_iter %s: a whole number >= 0 (the fast "
                                  "SVD's iterations), or -1 for the exact SVD", yaml_path, line_of(&p, "pissa_iter"), it);
            else if (!strcmp(k, "pissa_init") && truthy(v)) {
                size_t l = strlen(flagbuf[1]);
                if (n == -1)
                    snprintf(flagbuf[1] + l, 1024 - l, " --peft-opt init_lora_weights=pissa");
                else
                    snprintf(flagbuf[1] + l, 1024 - l, " --peft-opt init_lora_weights=pissa_niter_%ld", n);
            }
        }
        if (!known && (in_list(k, no_effect) || !strcmp(k, "pissa_iter"))) {
            known = 1;
            size_t l = strlen(ignored);
            snprintf(ignored + l, sizeof ignored - l, "%s%s", l ? ", " : "", k);
        }
        if (!known && !strcmp(k, "resume_from_checkpoint") && !v)
            known = 1;
        if (!known)
            s = ftk_error_set(FTK_E_UNSUPPORTED, __FILE__, __LINE__, "%s:%d: key \"%s\" is not supported yet", yaml_path,
                              p.kv[i].line, k);
    }
    const char *ep = get(&p, "num_train_epochs");
    char *end = NULL;
    double epochs = ep ? strtod(ep, &end) : 1.0;
    if (s == FTK_OK && ep && (*end || epochs < 1 || epochs != (double)(long)epochs))
        s = ftk_error_set(FTK_E_UNSUPPORTED, __FILE__, __LINE__, "%s:%d: num_train_epochs %s: only whole epochs are supported",
                          yaml_path, line_of(&p, "num_train_epochs"), ep);
    if (s == FTK_OK) {
        char pipes[4096];
        pipelines_dir(pipes, sizeof pipes);
        fprintf(out, "# Made by `ftk plan %s` (ftk %s): LLaMA-Factory stage %s as pipelines/%s.\n"
                     "# Run: make -f THIS_FILE   (variables can be overridden on the command line)\n",
                yaml_path, FTK_VERSION, stage, mk);
        if (ignored[0])
            fprintf(out, "# No effect on ftk's result: %s (ftk computes in F32 on the CPU).\n", ignored);
        for (int m = 0; direct[m].key; m++) {
            const char *v = get(&p, direct[m].key);
            if (v)
                fprintf(out, "%s := %s\n", direct[m].var, v);
        }
        if (!strcmp(stage, "pt"))
            fprintf(out, "FORMAT := text\n");
        fprintf(out, "EPOCHS := %ld\n", (long)epochs);
        if (truthy(get(&p, "neat_packing")))
            fprintf(out, "PACKING := neat-packing\n");
        else if (truthy(get(&p, "packing")))
            fprintf(out, "PACKING := packing\n");
        if (flagbuf[0][0])
            fprintf(out, "TOKENIZE_FLAGS :=%s\n", flagbuf[0]);
        if (flagbuf[1][0])
            fprintf(out, "TRAIN_FLAGS :=%s\n", flagbuf[1]);
        s = write_data(&p, out);
        if (s == FTK_OK)
            fprintf(out, "include %s/%s\n", pipes, mk);
    }
    for (int i = 0; i < p.n; i++) {
        free(p.kv[i].key);
        free(p.kv[i].val);
    }
    return s;
}
