/* tools/ftk-generate.c: generate text with a model (docs/tools/generate.md).
 * Exit status: 0 ok, 1 input or runtime error, 2 usage. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ftk/generate_run.h"
#include "blas_env.h"

static const char usage_text[] =
    "usage: ftk generate --model DIR [options] [PROMPTS.jsonl | EXAMPLES.fts | -]\n"
    "\n"
    "Reads prompts as JSON lines, {\"prompt\": TEXT} or {\"messages\": [{\"role\", \"content\"}...]}\n"
    "(with --template), or an example stream (the prompt is each example's unlabelled prefix),\n"
    "and writes one JSON line per prompt: {\"index\", \"prompt\", \"text\", \"ids\", \"finish_reason\",\n"
    "\"prompt_tokens\", \"completion_tokens\"}. With no input file and a terminal on stdin: a chat\n"
    "(a line per turn; /clear forgets the conversation; an empty line or Ctrl-D ends it).\n"
    "\n"
    "  --model DIR             HF model directory or archive (required)\n"
    "  --adapter DIR           apply a PEFT adapter unmerged\n"
    "  --template NAME|FILE    chat template for \"messages\" (llama3, qwen, qwen3, ...)\n"
    "  --max-new-tokens N      (generation_config.json, else 256)\n"
    "  --do-sample | --greedy  sample or take the argmax (default: generation_config.json, else greedy)\n"
    "  --temperature X  --top-k N  --top-p X  --min-p X  --repetition-penalty X\n"
    "  --seed S                sampling seed (default 0)\n"
    "  --stop STR              stop when the text contains STR (repeatable; STR is cut off)\n"
    "  --eos ID                also stop on token ID (repeatable; generation_config's eos always stop)\n"
    "  --ignore-eos            no eos stops (for benchmarks: always max-new-tokens)\n"
    "  --batch-size N          prompts generated together (default 8)\n"
    "  --context N             positions per prompt (default: max_position_embeddings)\n"
    "  --stream                one prompt: print its text as it is generated, instead of JSON\n"
    "  --quiet                 no progress on stderr (a bar on a terminal, else a line every 10 s)\n"
    "  --threads N  -h, --help, --version\n"
    "\n"
    "Example:\n"
    "  echo '{\"prompt\": \"Once upon a time\"}' | ftk generate --model models/stories260K --max-new-tokens 64\n"
    "\n"
    "Exit status: 0 success, 1 input or runtime error, 2 usage error.\n";

static int usage_error(const char *fmt, const char *a)
{
    fprintf(stderr, "ftk-generate: error: ");
    fprintf(stderr, fmt, a);
    fprintf(stderr, "\nTry 'ftk generate --help'.\n");
    return -1;
}

static int num(const char *s, const char *opt, double lo, double *out)
{
    char *end;
    errno = 0;
    double d = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(d) || d < lo) {
        char m[96];
        snprintf(m, sizeof m, "%s wants a number >= %g, got '%%s'", opt, lo);
        return usage_error(m, s);
    }
    *out = d;
    return 0;
}

/* A probability in [0, 1], one error line otherwise. */
static int prob(const char *s, const char *opt, double *out)
{
    char *end;
    errno = 0;
    double d = strtod(s, &end);
    if (errno || end == s || *end || !(d >= 0 && d <= 1))
        return usage_error(opt[2] == 't' ? "--top-p %s is not in [0, 1]" : "--min-p %s is not in [0, 1]", s);
    *out = d;
    return 0;
}

/* A seed: a whole number in [0, 2^64), exact (a double would round seeds above 2^53). */
static int seed_of(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-')
        return usage_error("--seed wants a whole number >= 0, got '%s'", s);
    *out = (uint64_t)v;
    return 0;
}

static int parse_args(int argc, char **argv, struct ftk_generate_opts *o)
{
    memset(o, 0, sizeof *o);
    o->do_sample = -1;
    o->temperature = o->top_p = o->min_p = -1;
    o->top_k = -1;
    o->batch_size = 8;
    double d;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *x = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED() do { if (!x) return usage_error("%s needs a value", f); i++; } while (0)
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) { fputs(usage_text, stdout); exit(0); }
        else if (!strcmp(f, "--version")) { printf("ftk-generate %s\n", FTK_VERSION); exit(0); }
        else if (!strcmp(f, "--model")) { NEED(); o->model = x; }
        else if (!strcmp(f, "--adapter")) { NEED(); o->adapter = x; }
        else if (!strcmp(f, "--tokenizer")) { NEED(); o->tokenizer = x; }
        else if (!strcmp(f, "--template")) { NEED(); o->template_name = x; }
        else if (!strcmp(f, "--max-new-tokens")) { NEED(); if (num(x, f, 1, &d)) return -1; o->max_new_tokens = (int64_t)d; }
        else if (!strcmp(f, "--do-sample")) o->do_sample = 1;
        else if (!strcmp(f, "--greedy")) o->do_sample = 0;
        else if (!strcmp(f, "--temperature")) { NEED(); if (num(x, f, 0, &o->temperature)) return -1; if (o->temperature == 0) o->do_sample = 0; }
        else if (!strcmp(f, "--top-k")) { NEED(); if (num(x, f, 0, &d)) return -1; o->top_k = (int64_t)d; }
        else if (!strcmp(f, "--top-p")) { NEED(); if (prob(x, f, &o->top_p)) return -1; }
        else if (!strcmp(f, "--min-p")) { NEED(); if (prob(x, f, &o->min_p)) return -1; }
        else if (!strcmp(f, "--repetition-penalty")) { NEED(); if (num(x, f, 1e-6, &o->repetition_penalty)) return -1; }
        else if (!strcmp(f, "--seed")) { NEED(); if (seed_of(x, &o->seed)) return -1; }
        else if (!strcmp(f, "--stop")) { NEED(); if (o->n_stop == FTK_GEN_MAX_STOP) return usage_error("too many --stop%s", ""); o->stop[o->n_stop++] = x; }
        else if (!strcmp(f, "--eos")) { NEED(); if (num(x, f, 0, &d)) return -1; if (o->n_eos == FTK_GEN_MAX_EOS) return usage_error("too many --eos%s", ""); o->eos[o->n_eos++] = (int32_t)d; }
        else if (!strcmp(f, "--batch-size")) { NEED(); if (num(x, f, 1, &d)) return -1; o->batch_size = (int64_t)d; }
        else if (!strcmp(f, "--context")) { NEED(); if (num(x, f, 1, &d)) return -1; o->context = (int64_t)d; }
        else if (!strcmp(f, "--stream")) o->stream = 1;
        else if (!strcmp(f, "--quiet") || !strcmp(f, "-q")) o->quiet = 1;
        else if (!strcmp(f, "--ignore-eos")) o->ignore_eos = 1;
        else if (!strcmp(f, "--threads")) { NEED(); if (num(x, f, 0, &d)) return -1; o->threads = (int)d; }
        else if (!strcmp(f, "--device")) { NEED(); if (strcmp(x, "cpu")) return usage_error("--device %s: only cpu is implemented so far", x); }
        else if (f[0] == '-' && f[1]) return usage_error("unknown option %s", f);
        else if (o->input) return usage_error("more than one input (%s)", f);
        else o->input = f;
#undef NEED
    }
    if (!o->model)
        return usage_error("--model is required%s", "");
    return 0;
}

int main(int argc, char **argv)
{
    blas_env(argv, 1);
    struct ftk_generate_opts o;
    if (parse_args(argc, argv, &o) != 0)
        return 2;
    if (ftk_generate_run(&o) != FTK_OK) {
        fprintf(stderr, "ftk-generate: error: %s\n", ftk_last_error());
        return 1;
    }
    return 0;
}
