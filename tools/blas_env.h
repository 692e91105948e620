/* tools/blas_env.h: the tools that run the model start again, once, with OPENBLAS_CORETYPE set
 * when OpenBLAS fell back to generic kernels on a CPU it did not recognise (libcore/blas_core.c).
 * Call first thing in main, before any input is read. A user's OPENBLAS_CORETYPE is left alone. */
#ifndef FTK_TOOLS_BLAS_ENV_H
#define FTK_TOOLS_BLAS_ENV_H

#include <stdlib.h>
#include <unistd.h>
#include "ftk/backend.h"

static inline void blas_env(char **argv, int restart)
{
    const char *core;
    if (getenv("OPENBLAS_CORETYPE") || !(core = ftk_blas_better_core()))
        return;
    setenv("OPENBLAS_CORETYPE", core, 1);   /* for this process's children too (the ftk dispatcher) */
    if (restart)
        execv("/proc/self/exe", argv);     /* on failure: go on with the kernels we have */
}

#endif
