// kernels/cuda/backend.cu: the CUDA backend's table (ftk/backend.h), filled in by issue 10.
//
// libcore/backend.c refers to ftk_backend_cuda() in every build with FTK_HAVE_CUDA, so this file
// must define it (a weak reference would not pull this object out of libftk.a for programs that
// link the static library). Until the kernels exist it returns NULL, and ftk_backend_get("cuda")
// answers FTK_E_UNSUPPORTED "no CUDA backend yet". To implement: a static const struct
// ftk_backend with .struct_size, .api_version = FTK_BACKEND_API, .name = "cuda" and the slots
// (designated initializers), each op in its own kernels/cuda/<op>.cu next to its CPU twin, and
// tests/unit/test_cuda_ops.c checks every slot against the CPU backend.
#include "ftk/backend.h"

extern "C" FTK_API const struct ftk_backend *ftk_backend_cuda(void) { return nullptr; }
