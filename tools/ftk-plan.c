/* tools/ftk-plan.c: a LLaMA-Factory training YAML into an ftk pipeline Makefile
 * (docs/tools/plan.md). Exit status: 0 ok, 1 input or runtime error, 2 usage. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ftk/fileio.h"
#include "ftk/plan.h"

static const char usage_text[] =
    "usage: ftk plan CONFIG.yaml [--set KEY=VALUE ...] [-o FILE.mk]\n"
    "\n"
    "Reads a LLaMA-Factory training config (what `llamafactory-cli train CONFIG.yaml` takes) and\n"
    "prints the equivalent ftk pipeline: a Makefile setting pipelines/sft.mk's or dpo.mk's\n"
    "variables. Stages sft, pt and dpo; every key is mapped, or noted as having no effect on\n"
    "ftk's result, or refused with an error naming it and its line.\n"
    "\n"
    "  --set KEY=VALUE   override a key of the YAML (e.g. model_name_or_path=models/stories260K)\n"
    "  -o FILE           write the Makefile there (atomically) instead of stdout\n"
    "  -h, --help, --version\n"
    "\n"
    "Example:\n"
    "  ftk plan llama3_lora_sft.yaml --set model_name_or_path=models/stories260K > sft.mk && make -f sft.mk\n"
    "\n"
    "Exit status: 0 success, 1 input or runtime error, 2 usage error.\n";

int main(int argc, char **argv)
{
    const char *yaml = NULL, *out_path = NULL;
    const char **sets = calloc((size_t)argc, sizeof *sets);
    int n_sets = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(usage_text, stdout); free(sets); return 0; }
        if (!strcmp(a, "--version")) { printf("ftk-plan %s\n", FTK_VERSION); free(sets); return 0; }
        if ((!strcmp(a, "--set") || !strcmp(a, "-o")) && i + 1 >= argc) {
            fprintf(stderr, "ftk-plan: error: %s needs a value\nTry 'ftk plan --help'.\n", a);
            free(sets);
            return 2;
        }
        if (!strcmp(a, "--set")) sets[n_sets++] = argv[++i];
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) out_path = argv[++i];
        else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "ftk-plan: error: unknown option %s\nTry 'ftk plan --help'.\n", a);
            free(sets);
            return 2;
        } else if (yaml) {
            fprintf(stderr, "ftk-plan: error: one CONFIG.yaml at a time\n");
            free(sets);
            return 2;
        } else yaml = a;
    }
    if (!yaml) {
        fprintf(stderr, "ftk-plan: error: CONFIG.yaml is required\nTry 'ftk plan --help'.\n");
        free(sets);
        return 2;
    }
    ftk_status s;
    if (out_path) {
        struct ftk_atomic_file f;
        s = ftk_atomic_open(&f, out_path);
        if (s == FTK_OK) {
            s = ftk_plan_run(yaml, sets, n_sets, f.fp);
            if (s == FTK_OK)
                s = ftk_atomic_commit(&f);
            else
                ftk_atomic_abort(&f);
        }
    } else {
        s = ftk_plan_run(yaml, sets, n_sets, stdout);
    }
    free(sets);
    if (s != FTK_OK) {
        fprintf(stderr, "ftk-plan: error: %s\n", ftk_last_error());
        return 1;
    }
    return 0;
}
