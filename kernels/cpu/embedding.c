/* kernels/cpu/embedding.c: token embedding lookup (nn.Embedding) and its scatter-add backward.
 * Letters: N tokens, C channels, V vocabulary. */
#include "cpu.h"

#include <string.h>

static ftk_status check_ids(const int32_t *ids, int64_t N, int64_t V)
{
    for (int64_t n = 0; n < N; n++)
        FTK_FAIL_IF(ids[n] < 0 || ids[n] >= V, FTK_E_INVALID,
                    "embedding: token %lld has id %d, outside the vocabulary [0,%lld)",
                    (long long)n, (int)ids[n], (long long)V);
    return FTK_OK;
}

/* ids (N), wte (V,C) -> y (N,C) */
ftk_status cpu_embedding_forward(void *ctx, float *y, const int32_t *ids, const float *wte,
                                 int64_t N, int64_t C, int64_t V)
{
    (void)ctx;
    FTK_TRY(check_ids(ids, N, V));
    for (int64_t n = 0; n < N; n++)
        memcpy(y + n * C, wte + (int64_t)ids[n] * C, (size_t)C * sizeof(float));
    return FTK_OK;
}

struct emb_bwd { float *dwte; const float *dy; const int32_t *ids; int64_t N, C; };

/* Threads own column ranges [c0,c1) of dwte, so repeated ids never race. */
static void emb_bwd_cols(void *arg, int64_t c0, int64_t c1, int tid)
{
    (void)tid;
    const struct emb_bwd *a = arg;
    for (int64_t n = 0; n < a->N; n++) {
        float *dst = a->dwte + (int64_t)a->ids[n] * a->C;
        const float *src = a->dy + n * a->C;
        for (int64_t c = c0; c < c1; c++)
            dst[c] += src[c];
    }
}

/* dy (N,C), ids (N) -> dwte (V,C) += scatter-add */
ftk_status cpu_embedding_backward(void *ctx, float *dwte, const float *dy, const int32_t *ids,
                                  int64_t N, int64_t C, int64_t V)
{
    FTK_TRY(check_ids(ids, N, V));
    struct emb_bwd a = { dwte, dy, ids, N, C };
    cpu_for(ctx, C, 64, emb_bwd_cols, &a);
    return FTK_OK;
}
