/* tools/ftk-ref-logps.c: add the reference model's log-probs to a batch stream
 * (docs/tools/ref-logps.md). Exit status: 0 ok, 1 input or runtime error, 2 usage. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ftk/fileio.h"
#include "ftk/ref_logps.h"
#include "blas_env.h"

static const char usage[] =
    "usage: ftk ref-logps --model DIR [options] [BATCHES.fts|-] > BATCHES+REF.fts\n"
    "Runs the reference model over the batches of `ftk pack` (stdin when no file) and adds\n"
    "ref_logps F32[B] (per-row sums of label log-probs; KTO batches also kl_ref_logps) to each,\n"
    "for `ftk train-step --loss dpo|kto`. Everything else passes through.\n"
    "  --model DIR             reference model: HF directory or archive (required)\n"
    "  --adapter DIR           apply this peft adapter to it\n"
    "  --threads N             CPU threads (default: all cores)\n"
    "  --device cpu            only the CPU backend so far\n"
    "  --level L               zstd level of the output, 0 = uncompressed (default 3)\n"
    "  -o, --output FILE       write there (atomically) instead of stdout\n"
    "  -q, --quiet             no progress and no summary on stderr\n"
    "  -h, --help, --version\n"
    "Example: ftk pack --batch-size 4 < pairs.fts | ftk ref-logps --model base/ > train.fts\n"
    "Exit status: 0 ok, 1 input or runtime error, 2 usage.\n";

struct opts {
    struct ftk_ref_logps_opts r;
    const char *input, *output;
    int quiet;
};

static int bad(const char *fmt, const char *arg)
{
    fprintf(stderr, "ftk-ref-logps: error: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry 'ftk ref-logps --help'.\n");
    return -1;
}

static int num(const char *s, const char *opt, long lo, long hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || !*s || *end || v < lo || v > hi) {
        char m[96];
        snprintf(m, sizeof m, "%s wants an integer in [%ld, %ld], got '%%s'", opt, lo, hi);
        return bad(m, s);
    }
    *out = (int)v;
    return 0;
}

/* 0 to run, 1 after --help/--version, -1 on a usage error. */
static int parse_args(int argc, char **argv, struct opts *o)
{
    enum { O_MODEL = 256, O_ADAPTER, O_THREADS, O_DEVICE, O_LEVEL, O_VERSION };
    static const struct option longs[] = {
        {"model", 1, 0, O_MODEL}, {"adapter", 1, 0, O_ADAPTER}, {"threads", 1, 0, O_THREADS},
        {"device", 1, 0, O_DEVICE}, {"level", 1, 0, O_LEVEL}, {"output", 1, 0, 'o'}, {"quiet", 0, 0, 'q'},
        {"help", 0, 0, 'h'}, {"version", 0, 0, O_VERSION}, {0, 0, 0, 0},
    };
    memset(o, 0, sizeof *o);
    o->r.zstd_level = 3;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "o:qh", longs, NULL)) != -1) {
        int rc = 0;
        switch (c) {
        case O_MODEL: o->r.model = optarg; break;
        case O_ADAPTER: o->r.adapter = optarg; break;
        case O_THREADS: rc = num(optarg, "--threads", 0, 4096, &o->r.threads); break;
        case O_DEVICE:
            if (strcmp(optarg, "cpu"))
                return bad("--device %s: only cpu is implemented in this build of ref-logps", optarg);
            break;
        case O_LEVEL: rc = num(optarg, "--level", 0, 19, &o->r.zstd_level); break;
        case 'o': o->output = optarg; break;
        case 'q': o->quiet = 1; o->r.quiet = 1; break;
        case 'h': fputs(usage, stdout); return 1;
        case O_VERSION: printf("ftk-ref-logps %s\n", FTK_VERSION); return 1;
        default: return bad("unknown or incomplete option '%s'", argv[optind - 1]);
        }
        if (rc)
            return -1;
    }
    if (!o->r.model)
        return bad("--model is required%s", "");
    if (optind + 1 < argc)
        return bad("more than one input: '%s'", argv[optind + 1]);
    o->input = optind < argc ? argv[optind] : NULL;
    return 0;
}

int main(int argc, char **argv)
{
    blas_env(argv, 1);
    struct opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    int from_stdin = !o.input || !strcmp(o.input, "-");
    FILE *in = from_stdin ? stdin : fopen(o.input, "rb");
    if (!in) {
        fprintf(stderr, "ftk-ref-logps: error: %s: %s\n", o.input, strerror(errno));
        return 1;
    }
    struct ftk_atomic_file af = {0};
    if (o.output && ftk_atomic_open(&af, o.output) != FTK_OK) {
        fprintf(stderr, "ftk-ref-logps: error: %s\n", ftk_last_error());
        return 1;
    }
    FILE *out = o.output ? af.fp : stdout;
    struct ftk_ref_logps_stats st;
    ftk_status s = ftk_ref_logps_run(&o.r, in, from_stdin ? "<stdin>" : o.input, out, &st);
    if (!from_stdin)
        fclose(in);
    if (o.output)
        s = s == FTK_OK ? ftk_atomic_commit(&af) : (ftk_atomic_abort(&af), s);
    else if (fflush(out) != 0 && s == FTK_OK)
        s = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "writing stdout: %s", strerror(errno));
    if (s != FTK_OK) {
        fprintf(stderr, "ftk-ref-logps: error: %s\n", ftk_last_error());
        return 1;
    }
    if (!o.quiet)
        fprintf(stderr, "ftk-ref-logps: %lld batches, %lld rows, %lld KL rows, %lld labelled tokens\n",
                (long long)st.batches, (long long)st.rows, (long long)st.kl_rows, (long long)st.tokens);
    return 0;
}
