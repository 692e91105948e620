/* tools/ftk-train-step.c: train a model on a batch stream with a PEFT and a loss plugin
 * (docs/tools/train-step.md). Exit status: 0 ok, 1 input or runtime error, 2 usage. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ftk/train_run.h"
#include "blas_env.h"

static const char usage_text[] =
    "usage: ftk train-step --model DIR [options] [BATCHES.fts|-]\n"
    "\n"
    "Trains on the batch stream of `ftk pack` (stdin when no file) and writes the adapter (or the\n"
    "full model), the trainer state and metrics (JSONL, one line per optimizer step).\n"
    "\n"
    "Model and method:\n"
    "  --model DIR             HF model directory or archive (required)\n"
    "  --finetuning-type NAME  PEFT plugin: lora (default), full, freeze, or a path to a .so\n"
    "  --lora-rank R           LoRA rank (default 8)          --lora-alpha A  (default 2*rank)\n"
    "  --lora-dropout P        (default 0)                    --lora-target L (default all)\n"
    "  --use-rslora            alpha/sqrt(r) scaling\n"
    "  --freeze-trainable-layers N, --freeze-trainable-modules L, --freeze-extra-modules L\n"
    "  --peft-opt K=V          any option of the PEFT plugin (repeatable)\n"
    "  --adapter DIR           start from this adapter (peft layout); its config sets the options\n"
    "  --loss NAME             loss plugin: sft (default), dpo, orpo, simpo, kto; --loss-opt K=V\n"
    "                          (repeatable; docs/losses.md: beta, loss_type, label_smoothing, ...)\n"
    "  --ref-model DIR         reference model for dpo/kto batches without ref_logps (default: the\n"
    "                          base model with the adapter off; `ftk ref-logps` precomputes them)\n"
    "Optimizer (torch AdamW, HF Trainer semantics):\n"
    "  --lr X (5e-5)  --weight-decay X (0)  --adam-beta1 X (0.9)  --adam-beta2 X (0.999)\n"
    "  --adam-eps X (1e-8)  --max-grad-norm X (1.0; 0 = no clipping)\n"
    "  --grad-accum N          batches per optimizer step (default 1)\n"
    "  --lr-scheduler S        constant, constant_with_warmup, linear (default), cosine\n"
    "  --warmup-steps N | --warmup-ratio R\n"
    "  --max-steps N           default: the stream header's batch count / grad-accum\n"
    "Output:\n"
    "  --output DIR            the result: adapter_config.json + adapter_model.safetensors (or the\n"
    "                          HF model for full/freeze), trainer_state.safetensors, ftk_train_args.json\n"
    "  --save-steps N          also a checkpoint every N steps in DIR/checkpoint-STEP\n"
    "  --save-dtype D          full/freeze: float32, bfloat16, float16 (default: the base's)\n"
    "  --metrics FILE          metrics JSONL there instead of stdout\n"
    "  --resume DIR            continue from a checkpoint (same data and flags): bit-identical\n"
    "  --recompute             recompute activations in backward: less memory, same numbers\n"
    "  --quiet                 no progress on stderr (a bar on a terminal with the loss, else a line every 10 s)\n"
    "  --threads N  --seed S (42)  --device cpu\n"
    "  -h, --help, --version\n"
    "\n"
    "Example:\n"
    "  ftk tokenize --tokenizer m/ --template llama3 --format alpaca data.json | ftk pack --batch-size 4 \\\n"
    "    | ftk train-step --model m/ --lora-rank 16 --lr 1e-4 --max-steps 100 --output out/\n"
    "\n"
    "Exit status: 0 success, 1 input or runtime error, 2 usage error.\n";

#define MAX_KV 64

struct args {
    struct ftk_train_opts o;
    struct ftk_kv peft_kv[MAX_KV + 1], loss_kv[MAX_KV + 1];
    int n_peft, n_loss;
    char *owned[2 * MAX_KV];
    int n_owned;
};

static int usage_error(const char *fmt, const char *a)
{
    fprintf(stderr, "ftk-train-step: error: ");
    fprintf(stderr, fmt, a);
    fprintf(stderr, "\nTry 'ftk train-step --help'.\n");
    return -1;
}

static int dbl(const char *s, const char *opt, double *out)
{
    char *end;
    errno = 0;
    double d = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(d)) {
        char m[80];
        snprintf(m, sizeof m, "%s wants a number, got '%%s'", opt);
        return usage_error(m, s);
    }
    *out = d;
    return 0;
}

static int i64(const char *s, const char *opt, int64_t lo, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo) {
        char m[80];
        snprintf(m, sizeof m, "%s wants an integer >= %lld, got '%%s'", opt, (long long)lo);
        return usage_error(m, s);
    }
    *out = v;
    return 0;
}

static int add_kv(struct ftk_kv *kv, int *n, const char *key, const char *val)
{
    if (*n == MAX_KV)
        return usage_error("too many options (at most 64)%s", "");
    kv[*n].key = key;
    kv[*n].value = val;
    ++*n;
    return 0;
}

/* K=V into the list; the strings live as long as the args. */
static int add_kv_pair(struct args *a, struct ftk_kv *kv, int *n, const char *kv_text)
{
    const char *eq = strchr(kv_text, '=');
    if (!eq || eq == kv_text)
        return usage_error("option '%s' is not K=V", kv_text);
    if (*n == MAX_KV || a->n_owned == (int)(sizeof a->owned / sizeof *a->owned))
        return usage_error("too many options (at most 64)%s", "");
    char *k = strndup(kv_text, (size_t)(eq - kv_text));
    if (!k)
        return usage_error("out of memory%s", "");
    a->owned[a->n_owned++] = k;
    return add_kv(kv, n, k, eq + 1);
}

static int parse_args(int argc, char **argv, struct args *a)
{
    memset(a, 0, sizeof *a);
    struct ftk_train_opts *o = &a->o;
    o->peft = "lora";
    o->loss = "sft";
    o->train = (struct ftk_train_config){.lr = 5e-5, .weight_decay = 0, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8,
                                         .max_grad_norm = 1.0, .grad_accum = 1, .warmup_steps = 0,
                                         .schedule = FTK_SCHED_LINEAR};
    o->seed = 42;
    int64_t v;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        const char *x = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED() do { if (!x) return usage_error("%s needs a value", f); i++; } while (0)
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) { fputs(usage_text, stdout); exit(0); }
        else if (!strcmp(f, "--version")) { printf("ftk-train-step %s\n", FTK_VERSION); exit(0); }
        else if (!strcmp(f, "--model")) { NEED(); o->model = x; }
        else if (!strcmp(f, "--finetuning-type") || !strcmp(f, "--peft")) { NEED(); o->peft = x; }
        else if (!strcmp(f, "--lora-rank")) { NEED(); if (add_kv(a->peft_kv, &a->n_peft, "r", x)) return -1; }
        else if (!strcmp(f, "--lora-alpha")) { NEED(); if (add_kv(a->peft_kv, &a->n_peft, "lora_alpha", x)) return -1; }
        else if (!strcmp(f, "--lora-dropout")) { NEED(); if (add_kv(a->peft_kv, &a->n_peft, "lora_dropout", x)) return -1; }
        else if (!strcmp(f, "--lora-target")) { NEED(); if (add_kv(a->peft_kv, &a->n_peft, "target_modules", x)) return -1; }
        else if (!strcmp(f, "--use-rslora")) { if (add_kv(a->peft_kv, &a->n_peft, "use_rslora", "true")) return -1; }
        else if (!strcmp(f, "--freeze-trainable-layers")) { NEED(); if (add_kv(a->peft_kv, &a->n_peft, "freeze_trainable_layers", x)) return -1; }
        else if (!strcmp(f, "--freeze-trainable-modules")) { NEED(); if (add_kv(a->peft_kv, &a->n_peft, "freeze_trainable_modules", x)) return -1; }
        else if (!strcmp(f, "--freeze-extra-modules")) { NEED(); if (add_kv(a->peft_kv, &a->n_peft, "freeze_extra_modules", x)) return -1; }
        else if (!strcmp(f, "--peft-opt")) { NEED(); if (add_kv_pair(a, a->peft_kv, &a->n_peft, x)) return -1; }
        else if (!strcmp(f, "--adapter")) { NEED(); o->adapter = x; }
        else if (!strcmp(f, "--loss")) { NEED(); o->loss = x; }
        else if (!strcmp(f, "--ref-model")) { NEED(); o->ref_model = x; }
        else if (!strcmp(f, "--loss-opt")) { NEED(); if (add_kv_pair(a, a->loss_kv, &a->n_loss, x)) return -1; }
        else if (!strcmp(f, "--lr") || !strcmp(f, "--learning-rate")) { NEED(); if (dbl(x, f, &o->train.lr)) return -1; }
        else if (!strcmp(f, "--weight-decay")) { NEED(); if (dbl(x, f, &o->train.weight_decay)) return -1; }
        else if (!strcmp(f, "--adam-beta1")) { NEED(); if (dbl(x, f, &o->train.beta1)) return -1; }
        else if (!strcmp(f, "--adam-beta2")) { NEED(); if (dbl(x, f, &o->train.beta2)) return -1; }
        else if (!strcmp(f, "--adam-eps")) { NEED(); if (dbl(x, f, &o->train.eps)) return -1; }
        else if (!strcmp(f, "--max-grad-norm")) { NEED(); if (dbl(x, f, &o->train.max_grad_norm)) return -1; }
        else if (!strcmp(f, "--grad-accum") || !strcmp(f, "--gradient-accumulation-steps")) { NEED(); if (i64(x, f, 1, &o->train.grad_accum)) return -1; }
        else if (!strcmp(f, "--lr-scheduler")) {
            NEED();
            if (ftk_schedule_parse(x, &o->train.schedule) != FTK_OK)
                return usage_error("%s", ftk_last_error());
        }
        else if (!strcmp(f, "--warmup-steps")) { NEED(); if (i64(x, f, 0, &o->train.warmup_steps)) return -1; }
        else if (!strcmp(f, "--warmup-ratio")) {
            NEED();
            if (dbl(x, f, &o->warmup_ratio)) return -1;
            if (o->warmup_ratio < 0 || o->warmup_ratio > 1) return usage_error("--warmup-ratio %s is not in [0, 1]", x);
        }
        else if (!strcmp(f, "--max-steps")) { NEED(); if (i64(x, f, 1, &o->max_steps)) return -1; }
        else if (!strcmp(f, "--output") || !strcmp(f, "-o")) { NEED(); o->output = x; }
        else if (!strcmp(f, "--save-steps")) { NEED(); if (i64(x, f, 1, &o->save_steps)) return -1; }
        else if (!strcmp(f, "--save-dtype")) {
            NEED();
            if (strcmp(x, "float32") && strcmp(x, "bfloat16") && strcmp(x, "float16"))
                return usage_error("--save-dtype %s: use float32, bfloat16 or float16", x);
            o->save_dtype = x;
        }
        else if (!strcmp(f, "--metrics")) { NEED(); o->metrics = x; }
        else if (!strcmp(f, "--resume")) { NEED(); o->resume = x; }
        else if (!strcmp(f, "--recompute")) o->recompute = 1;
        else if (!strcmp(f, "--quiet") || !strcmp(f, "-q")) o->quiet = 1;
        else if (!strcmp(f, "--threads")) {
            NEED();
            if (i64(x, f, 0, &v)) return -1;
            if (v > INT_MAX) return usage_error("--threads %s is too large", x);
            o->threads = (int)v;
        }
        else if (!strcmp(f, "--seed")) { NEED(); if (i64(x, f, 0, &v)) return -1; o->seed = (uint64_t)v; }
        else if (!strcmp(f, "--device")) {
            NEED();
            if (strcmp(x, "cpu"))
                return usage_error("--device %s: only cpu is implemented in this build of train-step", x);
        }
        else if (f[0] == '-' && f[1]) return usage_error("unknown option %s", f);
        else if (o->input) return usage_error("more than one input file (%s)", f);
        else o->input = f;
#undef NEED
    }
    if (!o->model)
        return usage_error("--model is required%s", "");
    if (!o->output && (o->save_steps || o->resume))
        return usage_error("--save-steps and --resume need --output%s", "");
    /* HF: warmup_steps > 0 wins over warmup_ratio, in whatever order the flags came */
    if (o->train.warmup_steps == 0 && o->warmup_ratio > 0)
        o->train.warmup_steps = -1;
    o->peft_opts = a->peft_kv;
    o->loss_opts = a->loss_kv;
    return 0;
}

int main(int argc, char **argv)
{
    blas_env(argv, 1);
    struct args a;
    if (parse_args(argc, argv, &a) != 0)
        return 2;
    ftk_status s = ftk_train_run(&a.o);
    for (int i = 0; i < a.n_owned; i++)
        free(a.owned[i]);
    if (s != FTK_OK) {
        fprintf(stderr, "ftk-train-step: error: %s\n", ftk_last_error());
        return 1;
    }
    return 0;
}
