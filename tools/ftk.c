/* tools/ftk.c: `ftk TOOL args...` runs ftk-TOOL (git-style), first beside this executable,
 * then on PATH, so `ftk eval` never meets the shell builtin. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "blas_env.h"

static const char *tools[] = {"tokenize", "pack", "train-step", "ref-logps", "merge-lora", "generate",
                              "eval", "dump", NULL};

static void usage(FILE *f)
{
    fprintf(f, "usage: ftk TOOL [ARGS...]   (runs ftk-TOOL)\n"
               "       ftk --help | --version\n\n"
               "Fine-tuning kit: small tools joined by pipes of zstd tensor streams.\n"
               "Tools (see `ftk TOOL --help` and docs/tools/):\n");
    for (int i = 0; tools[i]; i++) {
        char p[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", p, sizeof p - 1);
        int have = 0;
        if (n > 0) {
            p[n] = '\0';
            char *s = strrchr(p, '/');
            if (s) {
                snprintf(s + 1, sizeof p - (size_t)(s + 1 - p), "ftk-%s", tools[i]);
                have = access(p, X_OK) == 0;
            }
        }
        fprintf(f, "  %-12s%s\n", tools[i], have ? "" : " (not built)");
    }
    fprintf(f, "\nExit status: 0 success, 1 runtime or input error, 2 usage error.\n");
}

int main(int argc, char **argv)
{
    blas_env(argv, 0);   /* set for the tool it starts */
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("ftk %s\n", FTK_VERSION);
        return 0;
    }
    if (argv[1][0] == '-' || strchr(argv[1], '/')) {
        fprintf(stderr, "ftk: error: unknown option or tool \"%s\" (try ftk --help)\n", argv[1]);
        return 2;
    }
    char name[256];
    snprintf(name, sizeof name, "ftk-%s", argv[1]);
    argv[1] = name;
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = '\0';
        char *s = strrchr(self, '/');
        if (s) {
            snprintf(s + 1, sizeof self - (size_t)(s + 1 - self), "%s", name);
            if (access(self, X_OK) == 0) {
                execv(self, argv + 1);
                fprintf(stderr, "ftk: error: cannot run %s: %s\n", self, strerror(errno));
                return 1;
            }
        }
    }
    execvp(name, argv + 1);
    fprintf(stderr, "ftk: error: no tool \"%s\" (%s not found beside ftk or on PATH; try ftk --help)\n",
            argv[1] + 4, name);
    return 2;
}
