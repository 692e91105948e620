/* ftk-pack: example stream -> batch stream (docs/tools/pack.md).
 * Exit status: 0 ok, 1 input or runtime error, 2 usage. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ftk/fileio.h"
#include "ftk/pack.h"
#include "ftk/tokenizer.h"

static const char usage[] =
    "usage: ftk-pack [options] [EXAMPLES.fts|-] > BATCHES.fts\n"
    "Groups the example stream from ftk tokenize (stdin when no file) into batch messages.\n"
    "  --batch-size B          rows per batch (pairs for pairwise streams; default 8)\n"
    "  --max-tokens N          padded tokens per batch, B*T <= N (alone: B varies)\n"
    "  --pad-to-multiple-of M  round T up to a multiple of M (default 8)\n"
    "  --seq-len T             fixed row length (required by packing)\n"
    "  --pad-id ID             pad token (default: header pad_token_id, else eos_token_id)\n"
    "  --packing               concatenate examples into rows of --seq-len\n"
    "  --neat-packing          packing; positions and segments restart per example\n"
    "  --shuffle               shuffle examples through a bounded buffer\n"
    "  --seed S                shuffle seed (default 0)\n"
    "  --shuffle-buffer N      examples held for shuffling (default 10000)\n"
    "  --sort-by-length        batch examples of similar length (windows of --sort-buffer)\n"
    "  --sort-buffer N         examples per sort window (default 1024)\n"
    "  --truncate | --drop     what to do with examples longer than a row (default: error)\n"
    "  --expect-tokenizer H    fail unless the stream's tokenizer_hash is H\n"
    "  --tokenizer PATH        the model's tokenizer: its hash is expected, its pad (or eos) is\n"
    "                          the pad id\n"
    "  --level L               zstd level of the output, 0 = uncompressed (default 3)\n"
    "  -o, --output FILE       write there (atomically) instead of stdout\n"
    "  --quiet                 no progress on stderr (a bar on a terminal, else a line every 10 s)\n"
    "  -h, --help, --version\n"
    "Exit status: 0 ok, 1 input or runtime error, 2 usage.\n";

struct pack_opts {
    struct ftk_pack_config cfg;
    const char *input;    /* NULL or "-": stdin */
    const char *output;   /* NULL: stdout */
    const char *tokenizer;
};

static int bad(const char *fmt, const char *arg)
{
    fprintf(stderr, "ftk-pack: error: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry 'ftk-pack --help'.\n");
    return -1;
}

static int num(const char *s, const char *opt, int64_t lo, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || !*s || *end || v < lo) {
        char msg[96];
        snprintf(msg, sizeof msg, "%s wants an integer >= %" PRId64 ", got '%%s'", opt, lo);
        return bad(msg, s);
    }
    *out = v;
    return 0;
}

/* Returns 0 to run, 1 when --help/--version was handled, -1 on a usage error. */
static int parse_args(int argc, char **argv, struct pack_opts *o)
{
    enum { O_BS = 256, O_MT, O_MULT, O_SEQ, O_PAD, O_PACK, O_NEAT, O_SHUF, O_SEED, O_SBUF,
           O_SORT, O_SORTBUF, O_TRUNC, O_DROP, O_EXPECT, O_LEVEL, O_VERSION, O_TOK, O_QUIET };
    static const struct option longs[] = {
        {"batch-size", 1, 0, O_BS}, {"max-tokens", 1, 0, O_MT}, {"pad-to-multiple-of", 1, 0, O_MULT},
        {"seq-len", 1, 0, O_SEQ}, {"pad-id", 1, 0, O_PAD}, {"packing", 0, 0, O_PACK},
        {"neat-packing", 0, 0, O_NEAT}, {"shuffle", 0, 0, O_SHUF}, {"seed", 1, 0, O_SEED},
        {"shuffle-buffer", 1, 0, O_SBUF}, {"sort-by-length", 0, 0, O_SORT},
        {"sort-buffer", 1, 0, O_SORTBUF}, {"truncate", 0, 0, O_TRUNC}, {"drop", 0, 0, O_DROP},
        {"expect-tokenizer", 1, 0, O_EXPECT}, {"level", 1, 0, O_LEVEL}, {"output", 1, 0, 'o'},
        {"tokenizer", 1, 0, O_TOK}, {"quiet", 0, 0, O_QUIET},
        {"help", 0, 0, 'h'}, {"version", 0, 0, O_VERSION}, {0, 0, 0, 0},
    };
    memset(o, 0, sizeof *o);
    ftk_pack_config_init(&o->cfg);
    struct ftk_pack_config *c = &o->cfg;
    int bs_given = 0, policy = 0, c_;
    int64_t v;
    opterr = 0;
    while ((c_ = getopt_long(argc, argv, "o:h", longs, NULL)) != -1) {
        int rc = 0;
        switch (c_) {
        case O_BS: rc = num(optarg, "--batch-size", 1, &c->batch_size); bs_given = 1; break;
        case O_MT: rc = num(optarg, "--max-tokens", 1, &c->max_tokens); break;
        case O_MULT: rc = num(optarg, "--pad-to-multiple-of", 1, &c->pad_to_multiple_of); break;
        case O_SEQ: rc = num(optarg, "--seq-len", 1, &c->seq_len); break;
        case O_PAD: rc = num(optarg, "--pad-id", 0, &c->pad_id); break;
        case O_PACK: if (c->mode != FTK_PACK_NEAT) c->mode = FTK_PACK_PACKING; break;
        case O_NEAT: c->mode = FTK_PACK_NEAT; break;
        case O_SHUF: c->shuffle = 1; break;
        case O_SEED: rc = num(optarg, "--seed", 0, &v); c->seed = (uint64_t)v; break;
        case O_SBUF: rc = num(optarg, "--shuffle-buffer", 1, &c->shuffle_buffer); break;
        case O_SORT: c->sort_by_length = 1; break;
        case O_SORTBUF: rc = num(optarg, "--sort-buffer", 1, &c->sort_buffer); break;
        case O_TRUNC: c->overlong = FTK_PACK_OVERLONG_TRUNCATE; policy++; break;
        case O_DROP: c->overlong = FTK_PACK_OVERLONG_DROP; policy++; break;
        case O_EXPECT: c->expect_tokenizer = optarg; break;
        case O_LEVEL: rc = num(optarg, "--level", 0, &v); c->zstd_level = (int)v; break;
        case O_QUIET: c->quiet = 1; break;
        case 'o': o->output = optarg; break;
        case O_TOK: o->tokenizer = optarg; break;
        case 'h': fputs(usage, stdout); return 1;
        case O_VERSION: printf("ftk-pack %s\n", FTK_VERSION); return 1;
        default: return bad("unknown or incomplete option '%s'", argv[optind - 1]);
        }
        if (rc)
            return -1;
    }
    if (c->max_tokens > 0 && !bs_given)
        c->batch_size = 0;   /* --max-tokens alone: as many rows as fit */
    if (policy > 1)
        return bad("%s", "--truncate and --drop exclude each other");
    if (optind + 1 < argc)
        return bad("more than one input: '%s'", argv[optind + 1]);
    o->input = optind < argc ? argv[optind] : NULL;
    if (ftk_pack_config_check(c) != FTK_OK)
        return bad("%s", ftk_last_error());
    return 0;
}

int main(int argc, char **argv)
{
    struct pack_opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    /* --tokenizer: the stream must come from it; its pad token (else eos) pads, unless --pad-id */
    struct ftk_tokenizer *tok = NULL;
    if (o.tokenizer) {
        if (ftk_tokenizer_load_path(o.tokenizer, &tok) != FTK_OK) {
            fprintf(stderr, "ftk-pack: error: %s\n", ftk_last_error());
            return 1;
        }
        if (!o.cfg.expect_tokenizer)
            o.cfg.expect_tokenizer = ftk_tokenizer_hash(tok);
        if (o.cfg.pad_id < 0)
            o.cfg.pad_id = ftk_tokenizer_special_id(tok, "pad_token");
        if (o.cfg.pad_id < 0)
            o.cfg.pad_id = ftk_tokenizer_special_id(tok, "eos_token");
    }
    int from_stdin = !o.input || strcmp(o.input, "-") == 0;
    FILE *in = from_stdin ? stdin : fopen(o.input, "rb");
    if (!in) {
        fprintf(stderr, "ftk-pack: error: %s: %s\n", o.input, strerror(errno));
        return 1;
    }
    /* -o FILE: written to a temporary name and renamed when complete (docs/errors.md). */
    struct ftk_atomic_file af = {0};
    if (o.output && ftk_atomic_open(&af, o.output) != FTK_OK) {
        fprintf(stderr, "ftk-pack: error: %s\n", ftk_last_error());
        return 1;
    }
    FILE *out = o.output ? af.fp : stdout;
    ftk_status st = ftk_pack_run(&o.cfg, in, from_stdin ? "<stdin>" : o.input, out, NULL);
    if (!from_stdin)
        fclose(in);
    if (o.output)
        st = st == FTK_OK ? ftk_atomic_commit(&af) : (ftk_atomic_abort(&af), st);
    else if (fflush(out) != 0 && st == FTK_OK)
        st = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "writing stdout: %s", strerror(errno));
    if (st != FTK_OK)
        fprintf(stderr, "ftk-pack: error: %s\n", ftk_last_error());
    ftk_tokenizer_free(tok);
    return st == FTK_OK ? 0 : 1;
}
