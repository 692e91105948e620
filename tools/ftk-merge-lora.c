/* tools/ftk-merge-lora.c: fold a LoRA adapter into its base model, writing a HuggingFace model
 * directory or archive (docs/tools/merge-lora.md). Exit status: 0 ok, 1 input or runtime
 * error, 2 usage. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ftk/merge.h"
#include "blas_env.h"

static const char usage_text[] =
    "usage: ftk merge-lora --model DIR --adapter DIR --output OUT [options]\n"
    "\n"
    "Folds a LoRA adapter (ftk's or peft's layout) into its base model: W + scale * B A in F32,\n"
    "cast to the output dtype, written a 16 MiB chunk of rows at a time (a base larger than RAM\n"
    "merges from a directory) as a HuggingFace model that\n"
    "transformers' from_pretrained and ftk load. A failed merge leaves no output behind.\n"
    "DoRA, (IA)3, AdaLoRA and diff-pruning adapters are folded by their plugin (the base is\n"
    "then loaded whole, in F32); methods that are not weight deltas are refused.\n"
    "\n"
    "  --model DIR          base model: HF directory or archive (required)\n"
    "  --adapter DIR        adapter: adapter_config.json + adapter_model.safetensors (required)\n"
    "  --output OUT         a new (or empty) directory, or an archive: OUT.tar, OUT.tar.zst,\n"
    "                       OUT.tar.gz, OUT.zip (required; -o)\n"
    "  --dtype D            float32, bfloat16 or float16 (f32/bf16/f16); default: the base's\n"
    "                       torch_dtype from config.json (float32 when it names none)\n"
    "  --shard-size SIZE    largest shard before a new one starts: 5GB (default, as\n"
    "                       transformers), 500MB, 2GiB, or bytes; above it the weights go to\n"
    "                       model-0000N-of-0000M.safetensors + model.safetensors.index.json\n"
    "  -q, --quiet          no summary on stderr\n"
    "  -h, --help, --version\n"
    "\n"
    "Examples:\n"
    "  ftk merge-lora --model Llama-3.2-1B/ --adapter out/ --output merged/\n"
    "  ftk merge-lora --model base.tar.zst --adapter out/ --dtype bf16 --shard-size 2GB -o merged.tar.zst\n"
    "  ftk train-step --model m/ --output a/ < batches.fts && ftk merge-lora --model m/ --adapter a/ -o m2/\n"
    "\n"
    "Exit status: 0 success, 1 input or runtime error, 2 usage error.\n";

struct args {
    struct ftk_merge_opts o;
    int quiet;
};

static int usage_error(const char *what, const char *a)
{
    fprintf(stderr, "ftk-merge-lora: error: %s%s\nTry 'ftk merge-lora --help'.\n", what, a);
    return -1;
}

static int parse_args(int argc, char **argv, struct args *a)
{
    memset(a, 0, sizeof *a);
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *x = i + 1 < argc ? argv[i + 1] : NULL;
        int takes = !strcmp(f, "--model") || !strcmp(f, "--adapter") || !strcmp(f, "--output") || !strcmp(f, "-o") ||
                    !strcmp(f, "--dtype") || !strcmp(f, "--shard-size");
        if (takes && !x)
            return usage_error(f, " needs a value");
        if (takes)
            i++;
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) { fputs(usage_text, stdout); exit(0); }
        else if (!strcmp(f, "--version")) { printf("ftk-merge-lora %s\n", FTK_VERSION); exit(0); }
        else if (!strcmp(f, "--model")) a->o.model = x;
        else if (!strcmp(f, "--adapter")) a->o.adapter = x;
        else if (!strcmp(f, "--output") || !strcmp(f, "-o")) a->o.output = x;
        else if (!strcmp(f, "--dtype")) {
            enum ftk_dtype dt;
            if (ftk_parse_float_dtype(x, &dt) != FTK_OK)
                return usage_error("--dtype: ", ftk_last_error());
            a->o.dtype = x;
        }
        else if (!strcmp(f, "--shard-size")) {
            if (ftk_parse_size(x, &a->o.shard_size) != FTK_OK)
                return usage_error("--shard-size: ", ftk_last_error());
        }
        else if (!strcmp(f, "-q") || !strcmp(f, "--quiet")) a->quiet = 1;
        else return usage_error(f[0] == '-' ? "unknown option " : "unexpected argument ", f);
    }
    if (!a->o.model || !a->o.adapter || !a->o.output)
        return usage_error("--model, --adapter and --output are required", "");
    return 0;
}

int main(int argc, char **argv)
{
    blas_env(argv, 1);
    struct args a;
    if (parse_args(argc, argv, &a) != 0)
        return 2;
    struct ftk_merge_stats st;
    if (ftk_merge_lora(&a.o, &st) != FTK_OK) {
        fprintf(stderr, "ftk-merge-lora: error: %s\n", ftk_last_error());
        return 1;
    }
    char saved[64] = "";
    if (st.replaced)
        snprintf(saved, sizeof saved, ", %" PRId64 " from modules_to_save", st.replaced);
    if (!a.quiet)
        fprintf(stderr, "ftk-merge-lora: %s: %" PRId64 " tensors (%" PRId64 " with LoRA folded in%s), %s, %" PRIu64 " bytes in %" PRId64
                        " file%s\n",
                a.o.output, st.tensors, st.merged, saved, st.dtype, st.total_size, st.shards, st.shards == 1 ? "" : "s");
    return 0;
}
