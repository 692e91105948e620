/* libcore/cuda-impl.h: reaching libftk-cuda.so from libcore (cuda.c opens it on first use). */
#ifndef FTK_CUDA_IMPL_H
#define FTK_CUDA_IMPL_H

/* A symbol of libftk-cuda.so, or NULL with *error (if given) saying why. */
void *ftk_cuda_symbol(const char *name, const char **error);

#endif
