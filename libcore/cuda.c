/* libcore/cuda.c: the CUDA library (libftk-cuda.so: kernels/cuda, cuBLAS) opened on first use,
 * from the directory libftk itself was loaded from, so that CPU runs never map cuBLAS
 * (ftk/cuda.h). Builds without nvcc have no such library and say so. */
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include "cuda-impl.h"
#include "ftk/cuda.h"

static pthread_once_t once = PTHREAD_ONCE_INIT;
static void *lib;
static char why[512];

static void open_lib(void)
{
    Dl_info info;
    char path[PATH_MAX] = "libftk-cuda.so";
    if (dladdr((void *)&open_lib, &info) && info.dli_fname && strrchr(info.dli_fname, '/')) {
        size_t n = (size_t)(strrchr(info.dli_fname, '/') - info.dli_fname);
        if (n + 20 < sizeof path)
            snprintf(path, sizeof path, "%.*s/libftk-cuda.so", (int)n, info.dli_fname);
    }
    lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);   /* never closed: its tables stay in use */
    if (!lib) {
        const char *e = dlerror();
#ifdef FTK_HAVE_CUDA
        snprintf(why, sizeof why, "cannot load the CUDA library %s: %s", path, e ? e : "?");
#else
        (void)e;
        snprintf(why, sizeof why, "this ftk was built without CUDA (nvcc was not found; rebuild with `make CUDA=1`)");
#endif
    }
}

void *ftk_cuda_symbol(const char *name, const char **error)
{
    pthread_once(&once, open_lib);
    void *s = lib ? dlsym(lib, name) : NULL;
    if (!s && error)
        *error = lib ? "the CUDA library lacks a symbol" : why;
    return s;
}

int ftk_cuda_built(void) { return ftk_cuda_symbol("ftk_cudalib_device_count", NULL) != NULL; }

int ftk_cuda_device_count(void)
{
    int (*f)(void) = (int (*)(void))ftk_cuda_symbol("ftk_cudalib_device_count", NULL);
    return f ? f() : 0;
}

ftk_status ftk_cuda_device_info(int dev, char *name, size_t name_len, int *cc_major, int *cc_minor, size_t *total_mem)
{
    const char *err = NULL;
    ftk_status (*f)(int, char *, size_t, int *, int *, size_t *) =
        (ftk_status (*)(int, char *, size_t, int *, int *, size_t *))ftk_cuda_symbol("ftk_cudalib_device_info", &err);
    FTK_FAIL_IF(!f, FTK_E_UNSUPPORTED, "device %d: %s", dev, err ? err : "no CUDA library");
    return f(dev, name, name_len, cc_major, cc_minor, total_mem);
}
