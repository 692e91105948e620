/* libcore/backend.c: choosing a backend by name (ftk/backend.h). */
#include "ftk/backend.h"

#include <string.h>

#ifdef FTK_HAVE_CUDA
/* kernels/cuda/backend.cu. A strong reference on purpose: a weak one would not pull that object
 * out of libftk.a into programs that link the static library. The table is returned even on a
 * machine without a GPU; its `create` then fails with FTK_E_UNSUPPORTED ("no CUDA device"). */
const struct ftk_backend *ftk_backend_cuda(void);
#endif

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
    if (strcmp(name, "cuda") == 0) {
#ifdef FTK_HAVE_CUDA
        return check_table(ftk_backend_cuda(), name, out);
#else
        FTK_FAIL(FTK_E_UNSUPPORTED, "backend cuda: this libftk was built without CUDA (nvcc was "
                 "not found; rebuild with `make CUDA=1`); use --device cpu");
#endif
    }
    FTK_FAIL(FTK_E_NOTFOUND, "unknown backend '%s' (expected cpu or cuda)", name);
}
