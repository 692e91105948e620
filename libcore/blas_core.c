/* libcore/blas_core.c: which OpenBLAS kernels a tool should ask for (ftk/backend.h).
 *
 * OpenBLAS (DYNAMIC_ARCH) picks its kernels when it is loaded, from the CPU's family and model.
 * A CPU it does not know, such as a virtual machine's generic "Intel Xeon Processor", makes
 * Debian's 0.3.21 fall back to Prescott, its SSE3 kernels, although the CPU has AVX-512: sgemm
 * then runs at a third of its speed (docs/PERF.md). The choice cannot be changed once made, so
 * the tools set OPENBLAS_CORETYPE from the CPU's features and start again (tools/blas_env.h). */
#include <stddef.h>
#include <string.h>
#include <strings.h>
#include "ftk/backend.h"

char *openblas_get_corename(void);   /* OpenBLAS's own API (cblas.h in its -dev package) */

const char *ftk_blas_better_core(void)
{
    static const char *const generic[] = {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom", "Sandybridge", NULL};
    const char *cur = openblas_get_corename();
    int fallback = 0;
    for (int i = 0; cur && generic[i] && !fallback; i++)
        fallback = !strcasecmp(cur, generic[i]);
    if (!fallback)
        return NULL;   /* a kernel set of its generation: OpenBLAS knows this CPU */
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq"))
        return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return "Haswell";
    return NULL;
}
