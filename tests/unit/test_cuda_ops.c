/* tests/unit/test_cuda_ops.c: every op of another backend against the CPU backend, forward and
 * backward, on the same random inputs (DESIGN.md section 7; ggml's test-backend-ops).
 *
 * Usage: test_cuda_ops [BACKEND]   (default "cuda"; "cpu" runs the harness against itself)
 * Without the backend (a build without CUDA, or no GPU) every case is reported as skipped:
 * "#summary passed=0 failed=0 skipped=N", which tests/run.sh counts.
 *
 * Error measure: NMSE = mse(other, cpu) / mse(cpu, 0), as ggml's test-backend-ops. The limit is
 * NMSE_F32 for every op: both sides compute in F32 but sum in different orders, which moves
 * results by a few ulps (NMSE ~1e-12); 1e-8 leaves room for long sums (attention over
 * T=150, the vocabulary sum of the log-prob head) and still catches any indexing or masking
 * error (those give NMSE ~1). TF32 or BF16 paths need their own, stated limits.
 * Letters as in ftk/backend.h. */
#include "check.h"
#include "ops_util.h"

#define NMSE_F32 1e-8

static const struct ftk_backend *cpu, *oth;
static void *cctx, *octx;

/* a host array on the other backend */
static void *dev(const void *host, size_t nbytes)
{
    void *p = NULL;
    if (oth->alloc(octx, nbytes ? nbytes : 4, &p) != FTK_OK)
        return NULL;
    if (host && nbytes)
        oth->to_device(octx, p, host, nbytes);
    return p;
}

/* compare n floats of other-backend memory d with host h */
static void cmp(const char *what, const float *d, const float *h, int64_t n)
{
    float *got = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    CHECK_OK(oth->to_host(octx, got, d, (size_t)n * sizeof(float)));
    double se = 0, s0 = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = (double)got[i] - h[i];
        se += e * e;
        s0 += (double)h[i] * h[i];
    }
    double nmse = s0 > 0 ? se / s0 : se;
    if (!(nmse <= NMSE_F32))
        CHECK_FAIL_("%s: NMSE %.3g > %.1g (n=%lld)", what, nmse, NMSE_F32, (long long)n);
    free(got);
}

#define DEVF(h, n) ((float *)dev((h), (size_t)(n) * sizeof(float)))
#define DEVI(h, n) ((int32_t *)dev((h), (size_t)(n) * sizeof(int32_t)))
#define DFREE(p) oth->free(octx, (p))

static void case_linear(void)
{
    const int64_t N = 37, I = 29, O = 45;
    float *x = ops_rand(N * I, -1, 1), *w = ops_rand(O * I, -1, 1), *b = ops_rand(O, -1, 1);
    float *dy = ops_rand(N * O, -1, 1), *y = ops_zeros(N * O), *dx = ops_zeros(N * I), *dw = ops_zeros(O * I), *db = ops_zeros(O);
    float *X = DEVF(x, N * I), *W = DEVF(w, O * I), *Bb = DEVF(b, O), *DY = DEVF(dy, N * O), *Y = DEVF(NULL, N * O);
    float *DX = DEVF(dx, N * I), *DW = DEVF(dw, O * I), *DB = DEVF(db, O);
    CHECK_OK(cpu->linear_forward(cctx, y, x, w, b, N, I, O));
    CHECK_OK(oth->linear_forward(octx, Y, X, W, Bb, N, I, O));
    cmp("linear y", Y, y, N * O);
    CHECK_OK(cpu->linear_backward(cctx, dx, dw, db, dy, x, w, N, I, O));
    CHECK_OK(oth->linear_backward(octx, DX, DW, DB, DY, X, W, N, I, O));
    cmp("linear dx", DX, dx, N * I);
    cmp("linear dw", DW, dw, O * I);
    cmp("linear db", DB, db, O);
    free(x); free(w); free(b); free(dy); free(y); free(dx); free(dw); free(db);
    DFREE(X); DFREE(W); DFREE(Bb); DFREE(DY); DFREE(Y); DFREE(DX); DFREE(DW); DFREE(DB);
}

static void case_embedding_rmsnorm_swiglu(void)
{
    const int64_t N = 41, C = 70, V = 13;
    int32_t ids[41];
    for (int i = 0; i < N; i++)
        ids[i] = (int32_t)((i * 7) % V);
    float *wte = ops_rand(V * C, -1, 1), *y = ops_zeros(N * C), *dwte = ops_zeros(V * C), *dy = ops_rand(N * C, -1, 1);
    int32_t *IDS = DEVI(ids, N);
    float *WTE = DEVF(wte, V * C), *Y = DEVF(NULL, N * C), *DWTE = DEVF(dwte, V * C), *DY = DEVF(dy, N * C);
    CHECK_OK(cpu->embedding_forward(cctx, y, ids, wte, N, C, V));
    CHECK_OK(oth->embedding_forward(octx, Y, IDS, WTE, N, C, V));
    cmp("embedding y", Y, y, N * C);
    CHECK_OK(cpu->embedding_backward(cctx, dwte, dy, ids, N, C, V));
    CHECK_OK(oth->embedding_backward(octx, DWTE, DY, IDS, N, C, V));
    cmp("embedding dwte", DWTE, dwte, V * C);

    float *w = ops_rand(C, 0.5, 1.5), *r = ops_zeros(N), *dx = ops_zeros(N * C), *dw = ops_zeros(C), *z = ops_zeros(N * C);
    float *Wn = DEVF(w, C), *R = DEVF(NULL, N), *DX = DEVF(dx, N * C), *DW = DEVF(dw, C), *Z = DEVF(NULL, N * C);
    CHECK_OK(cpu->rmsnorm_forward(cctx, z, r, y, w, N, C, 1e-6f));
    CHECK_OK(oth->rmsnorm_forward(octx, Z, R, Y, Wn, N, C, 1e-6f));
    cmp("rmsnorm y", Z, z, N * C);
    cmp("rmsnorm rstd", R, r, N);
    CHECK_OK(cpu->rmsnorm_backward(cctx, dx, dw, dy, y, w, r, N, C));
    CHECK_OK(oth->rmsnorm_backward(octx, DX, DW, DY, Y, Wn, R, N, C));
    cmp("rmsnorm dx", DX, dx, N * C);
    cmp("rmsnorm dw", DW, dw, C);

    const int64_t n = N * C;
    float *g = ops_rand(n, -5, 5), *u = ops_rand(n, -2, 2), *h = ops_zeros(n), *dg = ops_zeros(n), *du = ops_zeros(n);
    float *G = DEVF(g, n), *U = DEVF(u, n), *Hh = DEVF(NULL, n), *DG = DEVF(dg, n), *DU = DEVF(du, n);
    CHECK_OK(cpu->swiglu_forward(cctx, h, g, u, n));
    CHECK_OK(oth->swiglu_forward(octx, Hh, G, U, n));
    cmp("swiglu h", Hh, h, n);
    CHECK_OK(cpu->swiglu_backward(cctx, dg, du, dy, g, u, n));
    CHECK_OK(oth->swiglu_backward(octx, DG, DU, DY, G, U, n));
    cmp("swiglu dgate", DG, dg, n);
    cmp("swiglu dup", DU, du, n);
    free(wte); free(y); free(dwte); free(dy); free(w); free(r); free(dx); free(dw); free(z);
    free(g); free(u); free(h); free(dg); free(du);
    DFREE(IDS); DFREE(WTE); DFREE(Y); DFREE(DWTE); DFREE(DY); DFREE(Wn); DFREE(R); DFREE(DX); DFREE(DW);
    DFREE(Z); DFREE(G); DFREE(U); DFREE(Hh); DFREE(DG); DFREE(DU);
}

static void case_rope(void)
{
    const int64_t N = 23, H = 3, D = 20, R = 16;
    int32_t pos[23];
    for (int i = 0; i < N; i++)
        pos[i] = (int32_t)((i * 131) % 4000);
    float inv[8];
    for (int i = 0; i < R / 2; i++)
        inv[i] = 1.0f / powf(500000.0f, (float)(2 * i) / (float)R);
    float *x = ops_rand(N * H * D, -1, 1);
    float *X = DEVF(x, N * H * D), *INV = DEVF(inv, R / 2);
    int32_t *P = DEVI(pos, N);
    CHECK_OK(cpu->rope_forward(cctx, x, pos, inv, 1.0f, N, H, D, R));
    CHECK_OK(oth->rope_forward(octx, X, P, INV, 1.0f, N, H, D, R));
    cmp("rope forward", X, x, N * H * D);
    CHECK_OK(cpu->rope_backward(cctx, x, pos, inv, 1.0f, N, H, D, R));
    CHECK_OK(oth->rope_backward(octx, X, P, INV, 1.0f, N, H, D, R));
    cmp("rope backward", X, x, N * H * D);
    free(x);
    DFREE(X); DFREE(INV); DFREE(P);
}

static void case_attention(const int32_t *seg, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D)
{
    const int64_t nq = B * T * H * D, nk = B * T * Hkv * D, nl = B * T * H;
    const float sc = 1.0f / sqrtf((float)D);
    float *q = ops_rand(nq, -1, 1), *k = ops_rand(nk, -1, 1), *v = ops_rand(nk, -1, 1), *go = ops_rand(nq, -1, 1);
    float *o = ops_zeros(nq), *l = ops_zeros(nl), *dq = ops_zeros(nq), *dk = ops_zeros(nk), *dv = ops_zeros(nk);
    float *Q = DEVF(q, nq), *K = DEVF(k, nk), *Vv = DEVF(v, nk), *GO = DEVF(go, nq);
    float *O = DEVF(NULL, nq), *L = DEVF(NULL, nl), *DQ = DEVF(dq, nq), *DK = DEVF(dk, nk), *DV = DEVF(dv, nk);
    int32_t *S = seg ? DEVI(seg, B * T) : NULL;
    CHECK_OK(cpu->attention_forward(cctx, o, l, q, k, v, seg, B, T, H, Hkv, D, sc));
    CHECK_OK(oth->attention_forward(octx, O, L, Q, K, Vv, S, B, T, H, Hkv, D, sc));
    cmp("attention o", O, o, nq);
    cmp("attention lse", L, l, nl);
    CHECK_OK(cpu->attention_backward(cctx, dq, dk, dv, go, q, k, v, o, l, seg, B, T, H, Hkv, D, sc));
    CHECK_OK(oth->attention_backward(octx, DQ, DK, DV, GO, Q, K, Vv, O, L, S, B, T, H, Hkv, D, sc));
    cmp("attention dq", DQ, dq, nq);
    cmp("attention dk", DK, dk, nk);
    cmp("attention dv", DV, dv, nk);
    free(q); free(k); free(v); free(go); free(o); free(l); free(dq); free(dk); free(dv);
    DFREE(Q); DFREE(K); DFREE(Vv); DFREE(GO); DFREE(O); DFREE(L); DFREE(DQ); DFREE(DK); DFREE(DV);
    if (S) DFREE(S);
}

static void case_logprob(void)
{
    const int64_t N = 30, C = 24, V = 1001;
    int32_t lab[30];
    for (int i = 0; i < N; i++)
        lab[i] = i % 5 == 0 ? FTK_IGNORE_INDEX : (int32_t)((i * 97) % V);
    float *h = ops_rand(N * C, -1, 1), *w = ops_rand(V * C, -1, 1), *dl = ops_rand(N, -1, 1);
    float *lp = ops_zeros(N), *lse = ops_zeros(N), *dh = ops_zeros(N * C), *dw = ops_zeros(V * C);
    float *Hh = DEVF(h, N * C), *W = DEVF(w, V * C), *DL = DEVF(dl, N), *LP = DEVF(NULL, N), *LSE = DEVF(NULL, N);
    float *DH = DEVF(dh, N * C), *DW = DEVF(dw, V * C);
    int32_t *LAB = DEVI(lab, N);
    CHECK_OK(cpu->logprob_forward(cctx, lp, lse, h, w, lab, N, C, V, 7));
    CHECK_OK(oth->logprob_forward(octx, LP, LSE, Hh, W, LAB, N, C, V, 7));
    cmp("logprob logp", LP, lp, N);
    CHECK_OK(cpu->logprob_backward(cctx, dh, dw, dl, h, w, lab, lse, N, C, V, 7));
    CHECK_OK(oth->logprob_backward(octx, DH, DW, DL, Hh, W, LAB, LSE, N, C, V, 7));
    cmp("logprob dh", DH, dh, N * C);
    cmp("logprob dw", DW, dw, V * C);
    CHECK_OK(cpu->logprob_fused(cctx, lp, dh, dw, dl, h, w, lab, N, C, V, 0));
    CHECK_OK(oth->logprob_fused(octx, LP, DH, DW, DL, Hh, W, LAB, N, C, V, 0));
    cmp("logprob fused logp", LP, lp, N);
    cmp("logprob fused dh", DH, dh, N * C);
    cmp("logprob fused dw", DW, dw, V * C);
    free(h); free(w); free(dl); free(lp); free(lse); free(dh); free(dw);
    DFREE(Hh); DFREE(W); DFREE(DL); DFREE(LP); DFREE(LSE); DFREE(DH); DFREE(DW); DFREE(LAB);
}

static void case_optim(void)
{
    const int64_t n = 5003;
    float *p = ops_rand(n, -1, 1), *m = ops_zeros(n), *v = ops_zeros(n), *g = ops_rand(n, -1, 1);
    float *P = DEVF(p, n), *M = DEVF(m, n), *Vv = DEVF(v, n), *G = DEVF(g, n);
    struct ftk_adamw_params hp = { .lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                                   .weight_decay = 0.01f, .grad_scale = 0.7f };
    for (int s = 1; s <= 2; s++) {
        hp.step = s;
        CHECK_OK(cpu->adamw_step(cctx, p, m, v, g, n, &hp));
        CHECK_OK(oth->adamw_step(octx, P, M, Vv, G, n, &hp));
    }
    cmp("adamw p", P, p, n);
    cmp("adamw m", M, m, n);
    cmp("adamw v", Vv, v, n);
    float ss, *SS = DEVF(NULL, 1);
    CHECK_OK(cpu->sumsq(cctx, &ss, g, n));
    CHECK_OK(oth->sumsq(octx, SS, G, n));
    cmp("sumsq", SS, &ss, 1);
    CHECK_OK(cpu->axpy(cctx, p, g, n, 0.3f));
    CHECK_OK(oth->axpy(octx, P, G, n, 0.3f));
    CHECK_OK(cpu->scale(cctx, p, n, -2.0f));
    CHECK_OK(oth->scale(octx, P, n, -2.0f));
    CHECK_OK(cpu->add(cctx, p, p, g, n));
    CHECK_OK(oth->add(octx, P, P, G, n));
    cmp("axpy, scale, add", P, p, n);
    free(p); free(m); free(v); free(g);
    DFREE(P); DFREE(M); DFREE(Vv); DFREE(G); DFREE(SS);
}

#define NCASES 7

int main(int argc, char **argv)
{
    const char *name = argc > 1 ? argv[1] : "cuda";
    void *ctx1 = ops_ctx(&cpu, 2);
    cctx = ctx1;
    struct ftk_backend_opts o = { .struct_size = sizeof o, .threads = 2 };
    if (ftk_backend_get(name, &oth) != FTK_OK || oth->create(&o, &octx) != FTK_OK) {
        printf("skipped: no GPU (%s)\n", ftk_last_error());
        printf("#summary passed=0 failed=0 skipped=%d\n", NCASES);
        cpu->destroy(cctx);
        return 0;
    }
    ops_seed(11);
    TEST("linear fwd/bwd") case_linear();
    TEST("embedding, rmsnorm, swiglu fwd/bwd") case_embedding_rmsnorm_swiglu();
    TEST("rope fwd/bwd, partial rotary") case_rope();
    {
        static int32_t seg[2 * 150];
        for (int i = 0; i < 150; i++) {
            seg[i] = i < 30 ? 1 : i < 100 ? 2 : i < 101 ? 3 : i < 140 ? 4 : 0;
            seg[150 + i] = i < 145 ? 9 : 0;
        }
        TEST("attention GQA 4:2 T150 packed segments fwd/bwd") case_attention(seg, 2, 150, 4, 2, 16);
        TEST("attention MQA T77 causal fwd/bwd") case_attention(NULL, 1, 77, 3, 1, 8);
    }
    TEST("logprob forward/backward/fused, ignored labels, chunked") case_logprob();
    TEST("adamw, sumsq, axpy, scale, add") case_optim();
    oth->destroy(octx);
    cpu->destroy(cctx);
    return check_summary();
}
