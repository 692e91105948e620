/* tests/unit/test_ops_embedding.c: embedding lookup and scatter-add backward, bad ids.
 * Letters: N tokens, C channels, V vocabulary. */
#include "check.h"
#include "ops_util.h"

int main(void)
{
    const struct ftk_backend *be;
    void *ctx = ops_ctx(&be, 2);
    ops_seed(3);
    const int64_t N = 9, C = 130, V = 7;   /* C > 64: several column chunks in backward */
    const int32_t ids[9] = { 3, 0, 6, 3, 3, 1, 6, 2, 0 };   /* repeats: scatter must add */
    float *wte = ops_rand(V * C, -1, 1), *y = ops_zeros(N * C), *dy = ops_rand(N * C, -1, 1);
    float *dwte = ops_zeros(V * C);

    TEST("embedding forward gathers rows") {
        CHECK_OK(be->embedding_forward(ctx, y, ids, wte, N, C, V));
        int same = 1;
        for (int64_t n = 0; n < N; n++)
            for (int64_t c = 0; c < C; c++)
                same &= y[n * C + c] == wte[ids[n] * C + c];
        CHECK(same);
    }
    TEST("embedding backward scatter-adds, accumulating") {
        double *want = calloc((size_t)(V * C), sizeof(double));
        for (int64_t n = 0; n < N; n++)
            for (int64_t c = 0; c < C; c++)
                want[ids[n] * C + c] += 2.0 * dy[n * C + c];
        CHECK_OK(be->embedding_backward(ctx, dwte, dy, ids, N, C, V));
        CHECK_OK(be->embedding_backward(ctx, dwte, dy, ids, N, C, V));
        CHECK_CLOSE("dwte", dwte, want, V * C, 1e-6);
        /* rows of ids never used (4, 5) stay zero */
        CHECK(dwte[4 * C] == 0.0f && dwte[5 * C + C - 1] == 0.0f);
        free(want);
    }
    TEST("embedding rejects ids outside the vocabulary") {
        const int32_t bad[2] = { 1, 7 }, neg[1] = { -1 };
        CHECK_ERR(be->embedding_forward(ctx, y, bad, wte, 2, C, V), FTK_E_INVALID, "token 1 has id 7");
        CHECK_ERR(be->embedding_backward(ctx, dwte, dy, neg, 1, C, V), FTK_E_INVALID, "id -1");
    }
    free(wte); free(y); free(dy); free(dwte);
    be->destroy(ctx);
    return check_summary();
}
