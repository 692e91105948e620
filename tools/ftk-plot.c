/* tools/ftk-plot.c: training curves (metrics JSONL of ftk train-step) as an SVG image. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ftk/plot.h"

static const char usage_text[] =
    "usage: ftk plot [options] METRICS.jsonl... > loss.svg\n"
    "\n"
    "Draws the metrics that ftk train-step writes (one JSON object per step, with \"step\" and\n"
    "\"loss\") as an SVG image: one panel per metric over a shared step axis: loss, and when the\n"
    "runs have them rewards/margins, rewards/chosen + rewards/rejected, rewards/accuracies,\n"
    "grad_norm and lr. Several files (at most 8) are drawn over each other, one colour per file\n"
    "(stdin when no file, or -).\n"
    "\n"
    "  --metrics LIST     these fields instead, comma-separated, one panel each (loss,lr)\n"
    "  --title TEXT       a title above the panels\n"
    "  --width PX         image width in pixels (default 720)\n"
    "  --panel-height PX  height of each panel (default 180)\n"
    "  -o, --output FILE  write there instead of stdout\n"
    "  -h, --help, --version\n"
    "\n"
    "Examples:\n"
    "  ftk train-step --model m/ --metrics out/metrics.jsonl ... && ftk plot out/metrics.jsonl > loss.svg\n"
    "  ftk plot --title 'lr sweep' runs/lr1e-4/metrics.jsonl runs/lr3e-4/metrics.jsonl -o sweep.svg\n"
    "  ftk plot --metrics loss,rewards/margins dpo/metrics.jsonl > dpo.svg\n"
    "\n"
    "Exit status: 0 success, 1 input or runtime error, 2 usage error.\n";

struct plot_opts {
    struct ftk_plot_style style;
    const char *output;
    char **files;
    int n_files;
};

static int parse_int(const char *flag, const char *v, int *out)
{
    char *end;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || *end || x <= 0 || x > 100000) {
        fprintf(stderr, "ftk-plot: error: %s needs a positive number of pixels\n", flag);
        return -1;
    }
    *out = (int)x;
    return 0;
}

static int parse_args(int argc, char **argv, struct plot_opts *o)
{
    memset(o, 0, sizeof *o);
    o->files = calloc((size_t)argc + 1, sizeof *o->files);
    if (!o->files)
        return -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { fputs(usage_text, stdout); free(o->files); exit(0); }
        else if (!strcmp(a, "--version")) { printf("ftk-plot %s\n", FTK_VERSION); free(o->files); exit(0); }
        else if (!strcmp(a, "--metrics") || !strcmp(a, "--title") || !strcmp(a, "-o") || !strcmp(a, "--output")) {
            if (!v) {
                fprintf(stderr, "ftk-plot: error: %s needs a value\n", a);
                return -1;
            }
            *(a[2] == 'm' ? &o->style.metrics : a[2] == 't' ? &o->style.title : &o->output) = v;
            i++;
        } else if (!strcmp(a, "--width")) {
            if (parse_int(a, v, &o->style.width)) return -1;
            i++;
        } else if (!strcmp(a, "--panel-height")) {
            if (parse_int(a, v, &o->style.panel_height)) return -1;
            i++;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "ftk-plot: error: unknown option %s\n%s", a, usage_text);
            return -1;
        } else
            o->files[o->n_files++] = argv[i];
    }
    if (o->n_files == 0)
        o->files[o->n_files++] = "-";
    if (o->n_files > FTK_PLOT_MAX_RUNS) {
        fprintf(stderr, "ftk-plot: error: at most %d metrics files\n", FTK_PLOT_MAX_RUNS);
        return -1;
    }
    return 0;
}

static ftk_status read_all(struct ftk_plot *p, const struct plot_opts *o)
{
    for (int i = 0; i < o->n_files; i++) {
        int std = !strcmp(o->files[i], "-");
        FILE *f = std ? stdin : fopen(o->files[i], "r");
        FTK_FAIL_IF(!f, FTK_E_IO, "%s: %s", o->files[i], strerror(errno));
        ftk_status st = ftk_plot_read_jsonl(p, f, std ? "<stdin>" : o->files[i]);
        if (!std)
            fclose(f);
        FTK_TRY(st);
    }
    return FTK_OK;
}

/* To a temporary name, renamed when complete: a failed run leaves no half image. */
static ftk_status write_out(const struct ftk_plot *p, const struct plot_opts *o)
{
    if (!o->output || !strcmp(o->output, "-"))
        return ftk_plot_write_svg(p, &o->style, stdout);
    size_t n = strlen(o->output) + 8;
    char *tmp = malloc(n);
    FTK_FAIL_IF(!tmp, FTK_E_NOMEM, "out of memory");
    snprintf(tmp, n, "%s.tmp", o->output);
    FILE *f = fopen(tmp, "w");
    ftk_status st = f ? ftk_plot_write_svg(p, &o->style, f)
                      : ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "%s: %s", tmp, strerror(errno));
    if (f && fclose(f) != 0 && st == FTK_OK)
        st = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "%s: %s", tmp, strerror(errno));
    if (st == FTK_OK && rename(tmp, o->output) != 0)
        st = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "%s: %s", o->output, strerror(errno));
    if (st != FTK_OK)
        remove(tmp);
    free(tmp);
    return st;
}

int main(int argc, char **argv)
{
    struct plot_opts o;
    if (parse_args(argc, argv, &o) != 0) {
        free(o.files);
        return 2;
    }
    struct ftk_plot *p = NULL;
    ftk_status st = ftk_plot_init(&p);
    if (st == FTK_OK)
        st = read_all(p, &o);
    if (st == FTK_OK)
        st = write_out(p, &o);
    if (st == FTK_OK && fflush(stdout) != 0)
        st = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "stdout: %s", strerror(errno));
    ftk_plot_free(p);
    free(o.files);
    if (st != FTK_OK) {
        fprintf(stderr, "ftk-plot: error: %s\n", ftk_last_error());
        return 1;
    }
    return 0;
}
