/* libcore/paths.c: plugin and data directories relative to the running executable (ftk/paths.h). */
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "ftk/paths.h"

static char plugin_dir[PATH_MAX], data_dir[PATH_MAX];
static pthread_once_t once = PTHREAD_ONCE_INIT;

static int is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Both are computed once per process; they never change after that. */
static void resolve(void)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    char bin[PATH_MAX] = ".";
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            snprintf(bin, sizeof bin, "%s", exe);
        }
    }
    const char *env = getenv("FTK_PLUGIN_DIR");
    if (env && *env)
        snprintf(plugin_dir, sizeof plugin_dir, "%s", env);
    else {
        snprintf(plugin_dir, sizeof plugin_dir, "%.4000s/../plugins", bin);          /* build tree */
        if (!is_dir(plugin_dir))
            snprintf(plugin_dir, sizeof plugin_dir, "%.4000s/../lib/ftk/plugins", bin); /* installed */
    }
    env = getenv("FTK_DATA_DIR");
    if (env && *env)
        snprintf(data_dir, sizeof data_dir, "%s", env);
    else
        snprintf(data_dir, sizeof data_dir, "%.4000s/../share/ftk", bin);
}

const char *ftk_plugin_dir(void)
{
    pthread_once(&once, resolve);
    return plugin_dir;
}

const char *ftk_data_dir(void)
{
    pthread_once(&once, resolve);
    return data_dir;
}
