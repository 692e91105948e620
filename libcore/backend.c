/* libcore/backend.c: choosing a backend by name (ftk/backend.h). */
#include "ftk/backend.h"

#include <string.h>

#include "cuda-impl.h"

static ftk_status check_table(const struct ftk_backend *be, const char *name,
                              const struct ftk_backend **out)
{
    FTK_FAIL_IF(be->api_version != FTK_BACKEND_API, FTK_E_ABI,
                "backend %s has API version %u, this libftk needs %u", name,
                (unsigned)be->api_version, (unsigned)FTK_BACKEND_API);
    *out = be;
    return FTK_OK;
}

ftk_status ftk_backend_get(const char *name, const struct ftk_backend **out)
{
    *out = NULL;
    FTK_FAIL_IF(!name, FTK_E_INVALID, "backend: no name given (cpu or cuda)");
    if (strcmp(name, "cpu") == 0)
        return check_table(ftk_backend_cpu(), name, out);
    if (strcmp(name, "cuda") == 0) {   /* kernels/cuda/backend.cu, in libftk-cuda.so */
        const char *err = NULL;
        const struct ftk_backend *(*get)(void) =
            (const struct ftk_backend *(*)(void))ftk_cuda_symbol("ftk_backend_cuda", &err);
        FTK_FAIL_IF(!get, FTK_E_UNSUPPORTED, "backend cuda: %s; use --device cpu", err ? err : "unavailable");
        return check_table(get(), name, out);
    }
    FTK_FAIL(FTK_E_NOTFOUND, "unknown backend '%s' (expected cpu or cuda)", name);
}
