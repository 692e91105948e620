/* ftk-tokenize: LLaMA-Factory datasets to a stream of `example` messages (docs/tools/tokenize.md).
 * Exit status: 0 ok, 1 input or runtime error, 2 usage. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ftk/dataset.h"
#include "ftk/error.h"

static const char usage[] =
    "usage: ftk tokenize --tokenizer PATH [--template NAME|FILE] [--format F] [options] [FILE...]\n"
    "       ftk tokenize --tokenizer PATH --decode [--skip-special-tokens] [FILE]\n"
    "\n"
    "Reads datasets (files, or stdin when none or \"-\"): JSON arrays or JSON lines, auto-detected;\n"
    "plain, compressed (.gz .zst .xz .bz2, by magic) or inside archives (.tar .zip .7z: every\n"
    ".json/.jsonl/.txt member). Writes a stream of `example` messages to stdout.\n"
    "\n"
    "  --tokenizer PATH       model directory, archive or tokenizer.json (required)\n"
    "  --template NAME|FILE   chat template: llama3, qwen, qwen3, llama2, mistral, chatml, alpaca,\n"
    "                         vicuna, empty, or a template .json file (required except --format text)\n"
    "  --format F             text | alpaca | sharegpt | openai (default: alpaca, or dataset_info's)\n"
    "  --columns K=V[,K=V]    map columns and tags: prompt query response history messages system\n"
    "                         tools chosen rejected kto_tag text role_tag content_tag user_tag\n"
    "                         assistant_tag observation_tag function_tag system_tag (repeatable)\n"
    "  --ranking              preference data: chosen/rejected (pairwise examples)\n"
    "  --kto                  KTO data: a boolean kto_tag column (default column name \"kto_tag\")\n"
    "  --dataset-info FILE    LLaMA-Factory dataset_info.json; with --dataset NAME it gives the file,\n"
    "                         formatting, ranking, columns and tags (flags given after override it)\n"
    "  --dataset NAME         the dataset_info.json entry\n"
    "  --default-system TEXT  system prompt for records without one (instead of the template's)\n"
    "  --cutoff-len N         truncate examples to N tokens as LLaMA-Factory does (counted, not an error)\n"
    "  --train-on-prompt      label prompt tokens too\n"
    "  --mask-history         label only the last turn\n"
    "  --add-special-tokens   text: apply the tokenizer's post-processor (tokenizer.encode(text))\n"
    "  --append-eos           text: end each document with the eos token (LLaMA-Factory pre-training)\n"
    "  --skip-bad             skip bad records, each reported on stderr, and count them\n"
    "  --threads N            encode on N threads (output order is the input order)\n"
    "  --quiet                no progress on stderr (a bar on a terminal, else a line every 10 s)\n"
    "  --level N              zstd level of the stream, 0 = uncompressed (default 3)\n"
    "  --decode               read an example stream or JSONL {\"ids\": [...]} and write JSONL {\"text\": ...}\n"
    "  --skip-special-tokens  --decode: leave special tokens out\n"
    "  -h, --help             this help;  --version  the version\n"
    "\n"
    "Bad records (malformed JSON, missing fields, empty response, invalid UTF-8, roles out of\n"
    "turn) stop the run with an error naming the file and line, unless --skip-bad.\n"
    "Exit status: 0 ok, 1 input or runtime error, 2 usage.\n"
    "\n"
    "examples:\n"
    "  ftk tokenize --tokenizer model/ --format text < corpus.txt > pt.fts\n"
    "  ftk tokenize --tokenizer model/ --template llama3 alpaca.json > sft.fts\n"
    "  ftk tokenize --tokenizer model/ --template qwen3 --dataset-info data/dataset_info.json \\\n"
    "      --dataset dpo_en_demo --cutoff-len 1024 > dpo.fts\n"
    "  ftk tokenize --tokenizer model/ --template chatml --format sharegpt \\\n"
    "      --columns messages=conversations,user_tag=user data.jsonl.zst > sft.fts\n"
    "  ftk tokenize --tokenizer model/ --decode < sft.fts | jq -r .text\n";

struct opts {
    struct ftk_tokenize_config cfg;
    const char *dataset_info, *dataset;
    char *info_file;   /* from dataset_info.json */
    int decode, skip_special;
};

static int bad_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "ftk-tokenize: error: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry 'ftk tokenize --help'.\n");
    return 2;
}

static int parse_int(const char *s, long long lo, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || !*s || *end || v < lo)
        return -1;
    *out = v;
    return 0;
}

/* 0 ok, 1 help/version printed, 2 usage error */
static int parse_args(int argc, char **argv, struct opts *o)
{
    static const char *inputs[4096];
    size_t n_in = 0;
    const char *format = NULL, *columns[64];
    size_t n_cols = 0;
    int ranking = 0, kto = 0;
    long long v;
    memset(o, 0, sizeof *o);
    o->cfg.zstd_level = 3;
    o->cfg.threads = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED() do { if (!next) return bad_usage("%s needs a value", a); i++; } while (0)
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(usage, stdout); return 1; }
        else if (!strcmp(a, "--version")) { printf("ftk-tokenize %s\n", FTK_VERSION); return 1; }
        else if (!strcmp(a, "--tokenizer")) { NEED(); o->cfg.tokenizer = next; }
        else if (!strcmp(a, "--template")) { NEED(); o->cfg.template_name = next; }
        else if (!strcmp(a, "--format")) { NEED(); format = next; }
        else if (!strcmp(a, "--columns")) {
            NEED();
            if (n_cols == 64) return bad_usage("%s: too many", a);
            columns[n_cols++] = next;
        }
        else if (!strcmp(a, "--ranking")) ranking = 1;
        else if (!strcmp(a, "--kto")) kto = 1;
        else if (!strcmp(a, "--dataset-info")) { NEED(); o->dataset_info = next; }
        else if (!strcmp(a, "--dataset")) { NEED(); o->dataset = next; }
        else if (!strcmp(a, "--default-system")) { NEED(); o->cfg.default_system = next; }
        else if (!strcmp(a, "--cutoff-len")) {
            NEED();
            if (parse_int(next, 1, &v)) return bad_usage("--cutoff-len: \"%s\" is not a positive integer", next);
            o->cfg.cutoff_len = v;
        }
        else if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) o->cfg.quiet = 1;
        else if (!strcmp(a, "--threads")) {
            NEED();
            if (parse_int(next, 1, &v) || v > 1024) return bad_usage("--threads: \"%s\" is not 1..1024", next);
            o->cfg.threads = (int)v;
        }
        else if (!strcmp(a, "--level")) {
            NEED();
            if (parse_int(next, 0, &v) || v > 19) return bad_usage("--level: \"%s\" is not 0..19", next);
            o->cfg.zstd_level = (int)v;
        }
        else if (!strcmp(a, "--train-on-prompt")) o->cfg.train_on_prompt = 1;
        else if (!strcmp(a, "--mask-history")) o->cfg.mask_history = 1;
        else if (!strcmp(a, "--add-special-tokens")) o->cfg.add_special_tokens = 1;
        else if (!strcmp(a, "--append-eos")) o->cfg.append_eos = 1;
        else if (!strcmp(a, "--skip-bad")) o->cfg.skip_bad = 1;
        else if (!strcmp(a, "--decode")) o->decode = 1;
        else if (!strcmp(a, "--skip-special-tokens")) o->skip_special = 1;
        else if (a[0] == '-' && a[1]) return bad_usage("unknown option %s", a);
        else {
            if (n_in == sizeof inputs / sizeof *inputs) return bad_usage("%s: too many inputs", a);
            inputs[n_in++] = a;
        }
#undef NEED
    }
    if (!o->cfg.tokenizer)
        return bad_usage("%s", "--tokenizer is required");
    if (!o->dataset != !o->dataset_info)
        return bad_usage("%s", "--dataset-info and --dataset go together");
    if (o->decode)
        return n_in > 1 ? bad_usage("%s", "--decode reads one input") : (o->cfg.inputs = inputs, o->cfg.n_inputs = n_in, 0);

    enum ftk_data_format f = FTK_FORMAT_ALPACA;
    if (format && ftk_data_format_parse(format, &f) != FTK_OK)
        return bad_usage("%s", ftk_last_error());
    if (o->dataset_info) {
        if (n_in)
            return bad_usage("%s", "--dataset names the input file; give no FILE");
        if (ftk_dataset_info_load(o->dataset_info, o->dataset, format ? (int)f : -1, &o->cfg.attr, &o->info_file) != FTK_OK) {
            fprintf(stderr, "ftk-tokenize: error: %s\n", ftk_last_error());
            return 3;
        }
        inputs[n_in++] = o->info_file;
    } else {
        ftk_dataset_attr_init(&o->cfg.attr, f);
    }
    if (ranking)
        o->cfg.attr.ranking = 1;
    if (ranking && !o->cfg.attr.chosen[0])
        snprintf(o->cfg.attr.chosen, sizeof o->cfg.attr.chosen, "chosen");
    if (ranking && !o->cfg.attr.rejected[0])
        snprintf(o->cfg.attr.rejected, sizeof o->cfg.attr.rejected, "rejected");
    if (kto && !o->cfg.attr.kto_tag[0])
        snprintf(o->cfg.attr.kto_tag, sizeof o->cfg.attr.kto_tag, "kto_tag");
    for (size_t i = 0; i < n_cols; i++)
        if (ftk_dataset_attr_set(&o->cfg.attr, columns[i]) != FTK_OK)
            return bad_usage("--columns: %s", ftk_last_error());
    if (o->cfg.attr.ranking && o->cfg.attr.kto_tag[0])
        return bad_usage("%s", "--ranking and --kto exclude each other");
    if (o->cfg.attr.format == FTK_FORMAT_TEXT && (o->cfg.attr.ranking || o->cfg.attr.kto_tag[0]))
        return bad_usage("%s", "--format text takes no --ranking or --kto");
    if (o->cfg.attr.format != FTK_FORMAT_TEXT && !o->cfg.template_name)
        return bad_usage("--format %s needs --template NAME|FILE", ftk_data_format_name(o->cfg.attr.format));
    if (o->cfg.attr.format == FTK_FORMAT_TEXT && o->cfg.template_name)
        return bad_usage("%s", "--format text takes no --template");
    if (o->cfg.train_on_prompt && o->cfg.mask_history)
        return bad_usage("%s", "--train-on-prompt and --mask-history exclude each other");
    o->cfg.inputs = inputs;
    o->cfg.n_inputs = n_in;
    return 0;
}

static void report_skip(void *ctx, const char *source, int64_t index, const char *why)
{
    (void)ctx;
    (void)index;
    fprintf(stderr, "ftk-tokenize: skipped %s: %s\n", source, why);
}

int main(int argc, char **argv)
{
    struct opts o;
    int pr = parse_args(argc, argv, &o);
    if (pr == 1)
        return 0;
    if (pr == 3)
        return 1;
    if (pr != 0)
        return 2;
    ftk_status st;
    if (o.decode) {
        FILE *in = stdin;
        const char *name = o.cfg.n_inputs && strcmp(o.cfg.inputs[0], "-") ? o.cfg.inputs[0] : "<stdin>";
        if (in && strcmp(name, "<stdin>") && !(in = fopen(name, "rb"))) {
            fprintf(stderr, "ftk-tokenize: error: %s: %s\n", name, strerror(errno));
            return 1;
        }
        int64_t n = 0;
        st = ftk_tokenize_decode(o.cfg.tokenizer, in, name, stdout, o.skip_special, &n);
        if (in != stdin)
            fclose(in);
    } else {
        struct ftk_tokenize_stats s;
        o.cfg.on_skip = report_skip;
        st = ftk_tokenize_run(&o.cfg, stdout, &s);
        if (st == FTK_OK && s.skipped)
            fprintf(stderr, "ftk-tokenize: %" PRId64 " of %" PRId64 " records skipped (%" PRId64 " examples written)\n",
                    s.skipped, s.records, s.examples);
    }
    free(o.info_file);
    if (st != FTK_OK) {
        fprintf(stderr, "ftk-tokenize: error: %s\n", ftk_last_error());
        return 1;
    }
    return 0;
}
