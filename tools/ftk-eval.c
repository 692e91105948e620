/* tools/ftk-eval.c: measure a model: loss/perplexity, preference reward accuracy, multiple-choice
 * accuracy, generation exact match (docs/tools/eval.md). Exit status: 0 ok, 1 input or runtime
 * error, 2 usage. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ftk/eval.h"
#include "blas_env.h"

static const char usage_text[] =
    "usage: ftk eval --model DIR [--adapter DIR] [options] [INPUT|-]\n"
    "\n"
    "Evaluates a model and prints one JSON object of metrics on stdout. The mode follows the\n"
    "input (stdin when none): a `batch` stream (ftk pack) gives loss and perplexity, a pairwise\n"
    "one preference reward accuracy; JSONL/JSON/CSV records with A-D choices give multiple-choice\n"
    "accuracy, other question/answer records generation exact match.\n"
    "\n"
    "  --model DIR          HF model directory or archive (required)\n"
    "  --adapter DIR        PEFT adapter applied unmerged\n"
    "  --mode M             auto (default), loss, preference, choice, generation\n"
    "  --per-example FILE   one JSON line per row / pair / question there\n"
    "  --threads N          CPU threads (default: all cores)\n"
    "  --quiet              no progress on stderr (a bar on a terminal, else a line every 10 s)\n"
    "Preference (pairwise batches; the reference is the stream's ref_logps, else --ref-model,\n"
    "else the model with its adapter off):\n"
    "  --beta X             DPO beta of the implicit reward beta*(logp - ref_logp) (0.1)\n"
    "  --ref-model DIR      reference model for batches without ref_logps\n"
    "Multiple choice (LLaMA-Factory's evaluator: MMLU, CMMLU, C-Eval records):\n"
    "  --template NAME      chat template (name or file; required)\n"
    "  --dev FILE           few-shot examples (records like the input)\n"
    "  --n-shot N           few-shot examples per question, the first N of --dev (0)\n"
    "  --lang en|zh         prompt language (en)\n"
    "  --subject NAME       subject in the prompt (default: the record's, else the file name)\n"
    "  --system TEXT        system prompt (default: the template's)\n"
    "  --context N          longest prompt in tokens (default: max_position_embeddings)\n"
    "Generation (records with prompt/question/instruction/messages and answer):\n"
    "  --template NAME      chat template (optional: without it the prompt is encoded as it is)\n"
    "  --max-new-tokens N   (64)   --batch-size N (8)   --ignore-case\n"
    "  -h, --help, --version\n"
    "\n"
    "Examples:\n"
    "  ftk tokenize --tokenizer m/ --template llama3 --format alpaca val.json | ftk pack --batch-size 8 \\\n"
    "    | ftk eval --model m/ --adapter out/\n"
    "  ftk eval --model m/ --template llama3 --dev mmlu/dev/anatomy_dev.csv --n-shot 5 mmlu/test/anatomy_test.csv\n"
    "  ftk eval --model m/ --adapter out/ --beta 0.1 --per-example pairs.jsonl pref_batches.fts\n"
    "  ftk eval --model merged/ --template qwen --max-new-tokens 32 qa.jsonl\n"
    "\n"
    "Exit status: 0 success, 1 input or runtime error, 2 usage error.\n";

static int usage_error(const char *what, const char *a)
{
    fprintf(stderr, "ftk-eval: error: %s%s\nTry 'ftk eval --help'.\n", what, a);
    return -1;
}

static int num(const char *s, const char *opt, double lo, double *out)
{
    char *end;
    errno = 0;
    double d = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(d) || d < lo) {
        fprintf(stderr, "ftk-eval: error: %s wants a number >= %g, got '%s'\nTry 'ftk eval --help'.\n", opt, lo, s);
        return -1;
    }
    *out = d;
    return 0;
}

static int parse_args(int argc, char **argv, struct ftk_eval_opts *o)
{
    memset(o, 0, sizeof *o);
    static const char *const valued[] = {"--model", "--adapter", "--mode", "--per-example", "--threads", "--beta", "--ref-model",
                                         "--template", "--dev", "--n-shot", "--lang", "--subject", "--system", "--context",
                                         "--max-new-tokens", "--batch-size", NULL};
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *x = NULL;
        for (int k = 0; valued[k]; k++)
            if (!strcmp(f, valued[k])) {
                if (i + 1 >= argc)
                    return usage_error(f, " needs a value");
                x = argv[++i];
            }
        double v;
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) { fputs(usage_text, stdout); exit(0); }
        else if (!strcmp(f, "--version")) { printf("ftk-eval %s\n", FTK_VERSION); exit(0); }
        else if (!strcmp(f, "--model")) o->model = x;
        else if (!strcmp(f, "--adapter")) o->adapter = x;
        else if (!strcmp(f, "--quiet") || !strcmp(f, "-q")) o->quiet = 1;
        else if (!strcmp(f, "--mode")) {
            if (ftk_eval_mode_parse(x, &o->mode) != FTK_OK)
                return usage_error("--mode: ", ftk_last_error());
        }
        else if (!strcmp(f, "--per-example")) o->per_example = x;
        else if (!strcmp(f, "--threads")) { if (num(x, f, 0, &v)) return -1; o->threads = (int)v; }
        else if (!strcmp(f, "--beta")) { if (num(x, f, 1e-12, &o->beta)) return -1; }
        else if (!strcmp(f, "--ref-model")) o->ref_model = x;
        else if (!strcmp(f, "--template")) o->template_name = x;
        else if (!strcmp(f, "--dev")) o->dev = x;
        else if (!strcmp(f, "--n-shot")) { if (num(x, f, 0, &v)) return -1; o->n_shot = (int64_t)v; }
        else if (!strcmp(f, "--lang")) {
            if (strcmp(x, "en") && strcmp(x, "zh"))
                return usage_error("--lang wants en or zh, got ", x);
            o->lang = x;
        }
        else if (!strcmp(f, "--subject")) o->subject = x;
        else if (!strcmp(f, "--system")) o->system = x;
        else if (!strcmp(f, "--context")) { if (num(x, f, 1, &v)) return -1; o->context = (int64_t)v; }
        else if (!strcmp(f, "--max-new-tokens")) { if (num(x, f, 1, &v)) return -1; o->max_new_tokens = (int64_t)v; }
        else if (!strcmp(f, "--batch-size")) { if (num(x, f, 1, &v)) return -1; o->batch_size = (int64_t)v; }
        else if (!strcmp(f, "--ignore-case")) o->ignore_case = 1;
        else if (x) continue;
        else if (f[0] == '-' && f[1]) return usage_error("unknown option ", f);
        else if (o->input) return usage_error("more than one input: ", f);
        else o->input = f;
    }
    if (!o->model)
        return usage_error("--model is required", "");
    return 0;
}

int main(int argc, char **argv)
{
    blas_env(argv, 1);
    struct ftk_eval_opts o;
    if (parse_args(argc, argv, &o) != 0)
        return 2;
    if (ftk_eval_run(&o, stdout) != FTK_OK) {
        fprintf(stderr, "ftk-eval: error: %s\n", ftk_last_error());
        return 1;
    }
    return 0;
}
