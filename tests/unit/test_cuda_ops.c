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
 * T=1100, the vocabulary sum of the log-prob head) and still catches any indexing or masking
 * error (those give NMSE ~1). TF32 or BF16 paths need their own, stated limits.
 *
 * Backward ops accumulate (+=): every gradient buffer starts from the same random values on both
 * sides, so an op that overwrites instead of adding fails. Bad ids, labels and cache lengths
 * must give FTK_E_INVALID on both backends. Letters as in ftk/backend.h. */
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

/* gemm: all four transpose combinations, row strides wider than the rows, alpha and beta, K = 0 */
static void case_gemm(void)
{
    const int64_t M = 19, N = 33, K = 7, pad = 3;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int k0 = 0; k0 < 2; k0++) {
                const int64_t k = k0 ? 0 : K;
                const int64_t ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
                const int64_t lda = ac + pad, ldb = bc + pad, ldc = N + pad;
                float *a = ops_rand(ar * lda, -1, 1), *b = ops_rand(br * ldb, -1, 1), *c = ops_rand(M * ldc, -1, 1);
                float *A = DEVF(a, ar * lda), *Bm = DEVF(b, br * ldb), *C = DEVF(c, M * ldc);
                CHECK_OK(cpu->gemm(cctx, ta, tb, M, N, k, 0.7f, a, lda, b, ldb, 0.3f, c, ldc));
                CHECK_OK(oth->gemm(octx, ta, tb, M, N, k, 0.7f, A, lda, Bm, ldb, 0.3f, C, ldc));
                char what[64];
                snprintf(what, sizeof what, "gemm ta=%d tb=%d K=%lld", ta, tb, (long long)k);
                cmp(what, C, c, M * ldc);
                free(a); free(b); free(c);
                DFREE(A); DFREE(Bm); DFREE(C);
            }
}

static void linear_once(int64_t N, int64_t I, int64_t O, int bias, int grads)
{
    float *x = ops_rand(N * I, -1, 1), *w = ops_rand(O * I, -1, 1), *b = ops_rand(O, -1, 1);
    float *dy = ops_rand(N * O, -1, 1), *y = ops_zeros(N * O);
    float *dx = ops_rand(N * I, -1, 1), *dw = ops_rand(O * I, -1, 1), *db = ops_rand(O, -1, 1);
    float *X = DEVF(x, N * I), *W = DEVF(w, O * I), *Bb = DEVF(b, O), *DY = DEVF(dy, N * O), *Y = DEVF(NULL, N * O);
    float *DX = DEVF(dx, N * I), *DW = DEVF(dw, O * I), *DB = DEVF(db, O);
    CHECK_OK(cpu->linear_forward(cctx, y, x, w, bias ? b : NULL, N, I, O));
    CHECK_OK(oth->linear_forward(octx, Y, X, W, bias ? Bb : NULL, N, I, O));
    cmp("linear y", Y, y, N * O);
    /* grads: 1 all three, 0 dw only (LoRA's frozen base: dx only would be the other way round) */
    CHECK_OK(cpu->linear_backward(cctx, grads ? dx : NULL, dw, grads ? db : NULL, dy, x, w, N, I, O));
    CHECK_OK(oth->linear_backward(octx, grads ? DX : NULL, DW, grads ? DB : NULL, DY, X, W, N, I, O));
    cmp("linear dx", DX, dx, N * I);
    cmp("linear dw", DW, dw, O * I);
    cmp("linear db", DB, db, O);
    free(x); free(w); free(b); free(dy); free(y); free(dx); free(dw); free(db);
    DFREE(X); DFREE(W); DFREE(Bb); DFREE(DY); DFREE(Y); DFREE(DX); DFREE(DW); DFREE(DB);
}

static void case_linear(void)
{
    linear_once(37, 29, 45, 1, 1);
    linear_once(1, 1, 1, 1, 1);
    linear_once(300, 64, 17, 0, 0);
    linear_once(513, 7, 260, 1, 1);   /* db over more than one 256-row group */
}

static void embedding_once(int64_t N, int64_t C, int64_t V)
{
    int32_t *ids = malloc((size_t)N * sizeof *ids);
    for (int64_t i = 0; i < N; i++)
        ids[i] = (int32_t)((i * 7 + i / 3) % V);   /* repeats */
    float *wte = ops_rand(V * C, -1, 1), *y = ops_zeros(N * C), *dwte = ops_rand(V * C, -1, 1), *dy = ops_rand(N * C, -1, 1);
    int32_t *IDS = DEVI(ids, N);
    float *WTE = DEVF(wte, V * C), *Y = DEVF(NULL, N * C), *DWTE = DEVF(dwte, V * C), *DY = DEVF(dy, N * C);
    CHECK_OK(cpu->embedding_forward(cctx, y, ids, wte, N, C, V));
    CHECK_OK(oth->embedding_forward(octx, Y, IDS, WTE, N, C, V));
    cmp("embedding y", Y, y, N * C);
    CHECK_OK(cpu->embedding_backward(cctx, dwte, dy, ids, N, C, V));
    CHECK_OK(oth->embedding_backward(octx, DWTE, DY, IDS, N, C, V));
    cmp("embedding dwte", DWTE, dwte, V * C);
    /* an id outside [0,V) is data, not a crash */
    ids[N / 2] = (int32_t)V;
    oth->to_device(octx, IDS, ids, (size_t)N * sizeof *ids);
    CHECK_ERR(cpu->embedding_forward(cctx, y, ids, wte, N, C, V), FTK_E_INVALID, "outside the vocabulary");
    CHECK_ERR(oth->embedding_forward(octx, Y, IDS, WTE, N, C, V), FTK_E_INVALID, "outside the vocabulary");
    ids[N / 2] = -1;
    oth->to_device(octx, IDS, ids, (size_t)N * sizeof *ids);
    CHECK_ERR(oth->embedding_backward(octx, DWTE, DY, IDS, N, C, V), FTK_E_INVALID, "outside the vocabulary");
    free(ids); free(wte); free(y); free(dwte); free(dy);
    DFREE(IDS); DFREE(WTE); DFREE(Y); DFREE(DWTE); DFREE(DY);
}

static void rmsnorm_once(int64_t N, int64_t C, int with_rstd)
{
    float *x = ops_rand(N * C, -2, 2), *w = ops_rand(C, 0.5, 1.5), *r = ops_zeros(N), *y = ops_zeros(N * C);
    float *dy = ops_rand(N * C, -1, 1), *dx = ops_rand(N * C, -1, 1), *dw = ops_rand(C, -1, 1);
    float *X = DEVF(x, N * C), *Wn = DEVF(w, C), *R = DEVF(NULL, N), *Y = DEVF(NULL, N * C);
    float *DY = DEVF(dy, N * C), *DX = DEVF(dx, N * C), *DW = DEVF(dw, C);
    CHECK_OK(cpu->rmsnorm_forward(cctx, y, r, x, w, N, C, 1e-6f));
    CHECK_OK(oth->rmsnorm_forward(octx, Y, with_rstd ? R : NULL, X, Wn, N, C, 1e-6f));
    cmp("rmsnorm y", Y, y, N * C);
    if (!with_rstd)   /* the backward needs rstd: save it now */
        CHECK_OK(oth->rmsnorm_forward(octx, Y, R, X, Wn, N, C, 1e-6f));
    cmp("rmsnorm rstd", R, r, N);
    CHECK_OK(cpu->rmsnorm_backward(cctx, dx, dw, dy, x, w, r, N, C));
    CHECK_OK(oth->rmsnorm_backward(octx, DX, DW, DY, X, Wn, R, N, C));
    cmp("rmsnorm dx", DX, dx, N * C);
    cmp("rmsnorm dw", DW, dw, C);
    /* in place: y aliases x */
    CHECK_OK(cpu->rmsnorm_forward(cctx, x, NULL, x, w, N, C, 1e-5f));
    CHECK_OK(oth->rmsnorm_forward(octx, X, NULL, X, Wn, N, C, 1e-5f));
    cmp("rmsnorm in place", X, x, N * C);
    free(x); free(w); free(r); free(y); free(dy); free(dx); free(dw);
    DFREE(X); DFREE(Wn); DFREE(R); DFREE(Y); DFREE(DY); DFREE(DX); DFREE(DW);
}

static void swiglu_once(int64_t n)
{
    float *g = ops_rand(n, -8, 8), *u = ops_rand(n, -2, 2), *h = ops_zeros(n), *dh = ops_rand(n, -1, 1);
    float *dg = ops_rand(n, -1, 1), *du = ops_rand(n, -1, 1);
    float *G = DEVF(g, n), *U = DEVF(u, n), *Hh = DEVF(NULL, n), *DH = DEVF(dh, n), *DG = DEVF(dg, n), *DU = DEVF(du, n);
    CHECK_OK(cpu->swiglu_forward(cctx, h, g, u, n));
    CHECK_OK(oth->swiglu_forward(octx, Hh, G, U, n));
    cmp("swiglu h", Hh, h, n);
    CHECK_OK(cpu->swiglu_backward(cctx, dg, du, dh, g, u, n));
    CHECK_OK(oth->swiglu_backward(octx, DG, DU, DH, G, U, n));
    cmp("swiglu dgate", DG, dg, n);
    cmp("swiglu dup", DU, du, n);
    CHECK_OK(cpu->swiglu_backward(cctx, NULL, du, dh, g, u, n));
    CHECK_OK(oth->swiglu_backward(octx, NULL, DU, DH, G, U, n));
    cmp("swiglu dup only", DU, du, n);
    free(g); free(u); free(h); free(dh); free(dg); free(du);
    DFREE(G); DFREE(U); DFREE(Hh); DFREE(DH); DFREE(DG); DFREE(DU);
}

static void case_embedding_rmsnorm_swiglu(void)
{
    embedding_once(41, 70, 13);
    embedding_once(1, 1, 1);
    embedding_once(700, 300, 50);   /* dwte columns over more than one block */
    rmsnorm_once(41, 70, 1);
    rmsnorm_once(1, 1, 1);
    rmsnorm_once(3, 4097, 0);        /* a long row: several passes of the block */
    rmsnorm_once(130, 128, 1);       /* Qwen3 q/k norm: N = tokens*heads, C = D; dw over 3 row groups */
    swiglu_once(41 * 70);
    swiglu_once(1);
    swiglu_once(100003);
}

static void rope_once(int64_t N, int64_t H, int64_t D, int64_t R, float scaling, double theta)
{
    int32_t *pos = malloc((size_t)N * sizeof *pos);
    for (int64_t i = 0; i < N; i++)
        pos[i] = (int32_t)((i * 131) % 4000);
    float inv[128] = { 0 };
    for (int64_t i = 0; i < R / 2; i++)   /* llama3 & co. only change these numbers */
        inv[i] = (float)(1.0 / pow(theta, (double)(2 * i) / (double)R));
    float *x = ops_rand(N * H * D, -1, 1);
    float *X = DEVF(x, N * H * D), *INV = DEVF(inv, R / 2 > 0 ? R / 2 : 1);
    int32_t *P = DEVI(pos, N);
    CHECK_OK(cpu->rope_forward(cctx, x, pos, inv, scaling, N, H, D, R));
    CHECK_OK(oth->rope_forward(octx, X, P, INV, scaling, N, H, D, R));
    cmp("rope forward", X, x, N * H * D);
    CHECK_OK(cpu->rope_backward(cctx, x, pos, inv, scaling, N, H, D, R));
    CHECK_OK(oth->rope_backward(octx, X, P, INV, scaling, N, H, D, R));
    cmp("rope backward", X, x, N * H * D);
    CHECK_ERR(oth->rope_forward(octx, X, P, INV, scaling, N, H, D, D + 2), FTK_E_INVALID, "rotary dims");
    free(x); free(pos);
    DFREE(X); DFREE(INV); DFREE(P);
}

static void case_rope(void)
{
    rope_once(23, 3, 20, 16, 1.0f, 500000.0);    /* partial rotary */
    rope_once(64, 8, 128, 128, 1.0f, 10000.0);   /* full, Llama head_dim */
    rope_once(5, 1, 6, 2, 0.7f, 10000.0);        /* attention_scaling != 1 */
    rope_once(4, 2, 8, 0, 1.0f, 10000.0);        /* R = 0: nothing rotates */
}

static void case_attention(const int32_t *seg, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D)
{
    const int64_t nq = B * T * H * D, nk = B * T * Hkv * D, nl = B * T * H;
    const float sc = 1.0f / sqrtf((float)D);
    float *q = ops_rand(nq, -1, 1), *k = ops_rand(nk, -1, 1), *v = ops_rand(nk, -1, 1), *go = ops_rand(nq, -1, 1);
    float *o = ops_zeros(nq), *l = ops_zeros(nl), *dq = ops_rand(nq, -1, 1), *dk = ops_rand(nk, -1, 1), *dv = ops_rand(nk, -1, 1);
    float *Q = DEVF(q, nq), *K = DEVF(k, nk), *Vv = DEVF(v, nk), *GO = DEVF(go, nq);
    float *O = DEVF(NULL, nq), *L = DEVF(NULL, nl), *DQ = DEVF(dq, nq), *DK = DEVF(dk, nk), *DV = DEVF(dv, nk);
    int32_t *S = seg ? DEVI(seg, B * T) : NULL;
    CHECK_OK(oth->attention_forward(octx, O, NULL, Q, K, Vv, S, B, T, H, Hkv, D, sc));   /* lse not saved */
    CHECK_OK(cpu->attention_forward(cctx, o, l, q, k, v, seg, B, T, H, Hkv, D, sc));
    cmp("attention o (no lse)", O, o, nq);
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

/* row b of seg (B,T): documents of the given lengths, then padding (segment 0) to T */
static void segs(int32_t *seg, int64_t T, const int *lens, int n)
{
    int64_t t = 0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < lens[i] && t < T; j++)
            seg[t++] = i + 1;
    while (t < T)
        seg[t++] = 0;
}

static void case_attention_shapes(void)
{
    /* GQA 4:2, T150, packed segments crossing tile boundaries, a one-token document, right
     * padding, and a row that is one document */
    static int32_t seg[2 * 150];
    for (int i = 0; i < 150; i++) {
        seg[i] = i < 30 ? 1 : i < 100 ? 2 : i < 101 ? 3 : i < 140 ? 4 : 0;
        seg[150 + i] = i < 145 ? 9 : 0;
    }
    case_attention(seg, 2, 150, 4, 2, 16);
    case_attention(NULL, 1, 77, 3, 1, 8);          /* MQA, plain causal */
    case_attention(NULL, 1, 1, 1, 1, 1);           /* one token, D = 1 */
    /* left padding (segment 0 first), a segment id that comes back later in the row, D = 20 */
    static int32_t seg2[3 * 40];
    for (int i = 0; i < 40; i++) {
        seg2[i] = i < 7 ? 0 : 5;
        seg2[40 + i] = i < 10 ? 1 : i < 20 ? 2 : i < 30 ? 1 : 3;
        seg2[80 + i] = 0;                          /* an all-padding row */
    }
    case_attention(seg2, 3, 40, 6, 3, 20);
    case_attention(NULL, 2, 70, 8, 2, 128);        /* Llama-3 head_dim */
    static int32_t seg3[67];
    const int l3[] = { 12, 33, 5 };
    segs(seg3, 67, l3, 3);
    case_attention(seg3, 1, 67, 2, 1, 96);         /* D between the compiled bounds */
    case_attention(NULL, 1, 45, 2, 2, 256);        /* the largest head_dim built */
}

/* Long sequences: T >= 1024 with packed documents, and plain causal */
static void case_attention_long(void)
{
    static int32_t seg[2 * 1100];
    const int l0[] = { 300, 1, 511, 250 }, l1[] = { 1100 };
    segs(seg, 1100, l0, 4);
    segs(seg + 1100, 1100, l1, 1);
    case_attention(seg, 2, 1100, 4, 2, 64);
    case_attention(NULL, 1, 1031, 2, 1, 32);
}

/* n floats of other-backend memory, to the host */
static float *fetch(const float *d, int64_t n)
{
    float *h = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    CHECK_OK(oth->to_host(octx, h, d, (size_t)n * sizeof(float)));
    return h;
}

/* the same call twice from the same state gives the same bits (bit-identical resume, DESIGN.md
 * section 4): run 0 keeps a copy of each result in call order, run 1 compares with it;
 * D NULL frees the copies */
static void same_bits(const char *what, float *D, int64_t n, int run)
{
    static float *kept[16];
    static int k, last = -1;
    if (!D) {
        for (int i = 0; i < 16; i++) {
            free(kept[i]);
            kept[i] = NULL;
        }
        last = -1;
        return;
    }
    if (run != last) {
        k = 0;
        last = run;
    }
    if (k >= 16) {
        CHECK_FAIL_("same_bits: more than 16 results");
        return;
    }
    if (run == 0) {
        kept[k++] = fetch(D, n);
        return;
    }
    float *again = fetch(D, n);
    if (memcmp(kept[k++], again, (size_t)n * sizeof(float)) != 0)
        CHECK_FAIL_("%s: two runs differ", what);
    free(again);
}

static void case_determinism(void)
{
    const int64_t B = 2, T = 300, H = 4, Hkv = 2, D = 64, N = B * T, C = 96, V = 517;
    const int64_t nq = B * T * H * D, nk = B * T * Hkv * D;
    static int32_t seg[2 * 300], ids[600], lab[600];
    const int l0[] = { 100, 150, 50 }, l1[] = { 300 };
    segs(seg, T, l0, 3);
    segs(seg + T, T, l1, 1);
    for (int64_t i = 0; i < N; i++) {
        ids[i] = (int32_t)((i * 13) % 7);   /* many repeats: scatter order matters if any */
        lab[i] = (int32_t)((i * 31) % V);
    }
    float *q = ops_rand(nq, -1, 1), *k = ops_rand(nk, -1, 1), *v = ops_rand(nk, -1, 1), *go = ops_rand(nq, -1, 1);
    float *x = ops_rand(N * C, -1, 1), *w = ops_rand(V * C, -1, 1), *dl = ops_rand(N, -1, 1);
    float *Q = DEVF(q, nq), *K = DEVF(k, nk), *Vv = DEVF(v, nk), *GO = DEVF(go, nq), *O = DEVF(NULL, nq);
    float *L = DEVF(NULL, B * T * H), *DQ = DEVF(NULL, nq), *DK = DEVF(NULL, nk), *DV = DEVF(NULL, nk);
    float *X = DEVF(x, N * C), *W = DEVF(w, V * C), *DL = DEVF(dl, N), *DX = DEVF(NULL, N * C), *DW = DEVF(NULL, V * C);
    float *R = DEVF(NULL, N), *Y = DEVF(NULL, N * C), *G = DEVF(NULL, C), *S2 = DEVF(NULL, 1), *LP = DEVF(NULL, N);
    int32_t *SEG = DEVI(seg, B * T), *IDS = DEVI(ids, N), *LAB = DEVI(lab, N);
    CHECK_OK(oth->attention_forward(octx, O, L, Q, K, Vv, SEG, B, T, H, Hkv, D, 0.125f));
    for (int run = 0; run < 2; run++) {
        CHECK_OK(oth->zero(octx, DQ, (size_t)nq * 4));
        CHECK_OK(oth->zero(octx, DK, (size_t)nk * 4));
        CHECK_OK(oth->zero(octx, DV, (size_t)nk * 4));
        CHECK_OK(oth->attention_backward(octx, DQ, DK, DV, GO, Q, K, Vv, O, L, SEG, B, T, H, Hkv, D, 0.125f));
        same_bits("attention dq", DQ, nq, run);
        same_bits("attention dk", DK, nk, run);
        same_bits("attention dv", DV, nk, run);
        CHECK_OK(oth->zero(octx, DW, (size_t)(V * C) * 4));
        CHECK_OK(oth->embedding_backward(octx, DW, X, IDS, N, C, V));
        same_bits("embedding dwte", DW, V * C, run);
        CHECK_OK(oth->rmsnorm_forward(octx, Y, R, X, W, N, C, 1e-6f));
        CHECK_OK(oth->zero(octx, G, (size_t)C * 4));
        CHECK_OK(oth->rmsnorm_backward(octx, NULL, G, X, X, W, R, N, C));
        same_bits("rmsnorm dw", G, C, run);
        CHECK_OK(oth->zero(octx, G, (size_t)C * 4));
        CHECK_OK(oth->linear_backward(octx, NULL, NULL, G, X, X, W, N, C, C));
        same_bits("linear db", G, C, run);
        CHECK_OK(oth->zero(octx, DX, (size_t)(N * C) * 4));
        CHECK_OK(oth->zero(octx, DW, (size_t)(V * C) * 4));
        CHECK_OK(oth->logprob_fused(octx, LP, DX, DW, DL, X, W, LAB, N, C, V, 64));
        same_bits("logprob logp", LP, N, run);
        same_bits("logprob dh", DX, N * C, run);
        same_bits("logprob dw", DW, V * C, run);
        CHECK_OK(oth->sumsq(octx, S2, Q, nq));
        same_bits("sumsq", S2, 1, run);
    }
    same_bits(NULL, NULL, 0, 0);   /* frees the kept copy */
    free(q); free(k); free(v); free(go); free(x); free(w); free(dl);
    DFREE(Q); DFREE(K); DFREE(Vv); DFREE(GO); DFREE(O); DFREE(L); DFREE(DQ); DFREE(DK); DFREE(DV);
    DFREE(X); DFREE(W); DFREE(DL); DFREE(DX); DFREE(DW); DFREE(R); DFREE(Y); DFREE(G); DFREE(S2); DFREE(LP);
    DFREE(SEG); DFREE(IDS); DFREE(LAB);
}

static void decode_once(int64_t B, int64_t S, int64_t H, int64_t Hkv, int64_t D, const int32_t *len)
{
    const int64_t nq = B * H * D, nc = B * S * Hkv * D;
    const float sc = 1.0f / sqrtf((float)D);
    float *q = ops_rand(nq, -1, 1), *kc = ops_rand(nc, -1, 1), *vc = ops_rand(nc, -1, 1), *o = ops_zeros(nq);
    float *Q = DEVF(q, nq), *KC = DEVF(kc, nc), *VC = DEVF(vc, nc), *O = DEVF(NULL, nq);
    int32_t *LEN = DEVI(len, B);
    CHECK_OK(cpu->attention_decode(cctx, o, q, kc, vc, len, B, S, H, Hkv, D, sc));
    CHECK_OK(oth->attention_decode(octx, O, Q, KC, VC, LEN, B, S, H, Hkv, D, sc));
    cmp("attention_decode o", O, o, nq);
    int32_t bad[8];
    for (int64_t b = 0; b < B; b++)
        bad[b] = len[b];
    bad[B - 1] = (int32_t)S + 1;
    oth->to_device(octx, LEN, bad, (size_t)B * sizeof(int32_t));
    CHECK_ERR(oth->attention_decode(octx, O, Q, KC, VC, LEN, B, S, H, Hkv, D, sc), FTK_E_INVALID, "cached positions");
    bad[B - 1] = 0;
    oth->to_device(octx, LEN, bad, (size_t)B * sizeof(int32_t));
    CHECK_ERR(oth->attention_decode(octx, O, Q, KC, VC, LEN, B, S, H, Hkv, D, sc), FTK_E_INVALID, "cached positions");
    free(q); free(kc); free(vc); free(o);
    DFREE(Q); DFREE(KC); DFREE(VC); DFREE(O); DFREE(LEN);
}

static void case_decode(void)
{
    const int32_t l1[] = { 1, 17, 40 }, l2[] = { 300 }, l3[] = { 2, 3, 1, 5 }, l4[] = { 1000, 3 };
    decode_once(3, 40, 4, 2, 20, l1);      /* len 1, and len = capacity */
    decode_once(1, 301, 8, 8, 128, l2);
    decode_once(4, 5, 3, 1, 7, l3);        /* MQA, fewer keys than warps */
    decode_once(2, 1024, 2, 1, 256, l4);
}

static void logprob_once(int64_t N, int64_t C, int64_t V, int64_t chunk, int every_ignored)
{
    int32_t *lab = malloc((size_t)N * sizeof *lab);
    for (int64_t i = 0; i < N; i++)
        lab[i] = every_ignored == 1 || (every_ignored > 1 && i % every_ignored == 0) ? FTK_IGNORE_INDEX
                                                                                     : (int32_t)((i * 97) % V);
    float *h = ops_rand(N * C, -1, 1), *w = ops_rand(V * C, -1, 1), *dl = ops_rand(N, -1, 1);
    float *lp = ops_zeros(N), *lse = ops_zeros(N), *dh = ops_rand(N * C, -1, 1), *dw = ops_rand(V * C, -1, 1);
    float *Hh = DEVF(h, N * C), *W = DEVF(w, V * C), *DL = DEVF(dl, N), *LP = DEVF(lp, N), *LSE = DEVF(NULL, N);
    float *DH = DEVF(dh, N * C), *DW = DEVF(dw, V * C);
    int32_t *LAB = DEVI(lab, N);
    /* garbage in logp/lse first: ignored tokens must come out 0 */
    float *junk = ops_rand(N, 5, 6);
    oth->to_device(octx, LP, junk, (size_t)N * sizeof(float));
    oth->to_device(octx, LSE, junk, (size_t)N * sizeof(float));
    CHECK_OK(cpu->logprob_forward(cctx, lp, lse, h, w, lab, N, C, V, chunk));
    CHECK_OK(oth->logprob_forward(octx, LP, LSE, Hh, W, LAB, N, C, V, chunk));
    cmp("logprob logp", LP, lp, N);
    cmp("logprob lse", LSE, lse, N);
    CHECK_OK(oth->logprob_forward(octx, LP, NULL, Hh, W, LAB, N, C, V, chunk));
    cmp("logprob logp (no lse)", LP, lp, N);
    CHECK_OK(cpu->logprob_backward(cctx, dh, dw, dl, h, w, lab, lse, N, C, V, chunk));
    CHECK_OK(oth->logprob_backward(octx, DH, DW, DL, Hh, W, LAB, LSE, N, C, V, chunk));
    cmp("logprob dh", DH, dh, N * C);
    cmp("logprob dw", DW, dw, V * C);
    CHECK_OK(cpu->logprob_backward(cctx, dh, NULL, dl, h, w, lab, lse, N, C, V, chunk));   /* frozen lm_head */
    CHECK_OK(oth->logprob_backward(octx, DH, NULL, DL, Hh, W, LAB, LSE, N, C, V, chunk));
    cmp("logprob dh (dw NULL)", DH, dh, N * C);
    CHECK_OK(cpu->logprob_fused(cctx, lp, dh, dw, dl, h, w, lab, N, C, V, chunk));
    CHECK_OK(oth->logprob_fused(octx, LP, DH, DW, DL, Hh, W, LAB, N, C, V, chunk));
    cmp("logprob fused logp", LP, lp, N);
    cmp("logprob fused dh", DH, dh, N * C);
    cmp("logprob fused dw", DW, dw, V * C);
    CHECK_OK(cpu->logprob_fused(cctx, lp, NULL, dw, dl, h, w, lab, N, C, V, 0));
    CHECK_OK(oth->logprob_fused(octx, LP, NULL, DW, DL, Hh, W, LAB, N, C, V, 0));
    cmp("logprob fused logp (default chunk)", LP, lp, N);
    cmp("logprob fused dw (dh NULL)", DW, dw, V * C);
    if (N > 1) {   /* a label outside the vocabulary is data, not a crash */
        lab[N - 1] = (int32_t)V;
        oth->to_device(octx, LAB, lab, (size_t)N * sizeof *lab);
        CHECK_ERR(oth->logprob_forward(octx, LP, LSE, Hh, W, LAB, N, C, V, chunk), FTK_E_INVALID, "outside the vocabulary");
        CHECK_ERR(oth->logprob_fused(octx, LP, DH, DW, DL, Hh, W, LAB, N, C, V, chunk), FTK_E_INVALID, "outside the vocabulary");
    }
    free(lab); free(h); free(w); free(dl); free(lp); free(lse); free(dh); free(dw); free(junk);
    DFREE(Hh); DFREE(W); DFREE(DL); DFREE(LP); DFREE(LSE); DFREE(DH); DFREE(DW); DFREE(LAB);
}

static void case_logprob(void)
{
    logprob_once(30, 24, 1001, 7, 5);      /* every 5th ignored, chunks of 7 */
    logprob_once(1, 3, 2, 0, 0);
    logprob_once(9, 8, 50, 4, 1);          /* every token ignored: logp 0, no gradient */
    logprob_once(64, 96, 32003, 0, 3);     /* a real vocabulary size, the default chunk */
    logprob_once(200, 16, 257, 33, 0);     /* last chunk shorter */
}

static void case_optim(void)
{
    const int64_t n = 5003;
    float *p = ops_rand(n, -1, 1), *m = ops_zeros(n), *v = ops_zeros(n), *g = ops_rand(n, -1, 1);
    float *P = DEVF(p, n), *M = DEVF(m, n), *Vv = DEVF(v, n), *G = DEVF(g, n);
    struct ftk_adamw_params hp = { .lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                                   .weight_decay = 0.01f, .grad_scale = 0.7f };
    for (int s = 1; s <= 3; s++) {
        hp.step = s;
        hp.beta1 = s == 3 ? 0.3f : 0.9f;   /* 1 - beta1 >= 0.5: torch lerp's other branch */
        CHECK_OK(cpu->adamw_step(cctx, p, m, v, g, n, &hp));
        CHECK_OK(oth->adamw_step(octx, P, M, Vv, G, n, &hp));
    }
    cmp("adamw p", P, p, n);
    cmp("adamw m", M, m, n);
    cmp("adamw v", Vv, v, n);
    hp.step = 0;
    CHECK_ERR(oth->adamw_step(octx, P, M, Vv, G, n, &hp), FTK_E_INVALID, "step");
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
    CHECK_OK(cpu->add(cctx, p, g, p, n));   /* y aliases b */
    CHECK_OK(oth->add(octx, P, G, P, n));
    cmp("axpy, scale, add", P, p, n);
    /* sumsq over more than the CPU's 65536-element chunks and the GPU's partials */
    const int64_t big = 3 * 65536 + 77;
    float *x = ops_rand(big, -3, 3), *X = DEVF(x, big);
    CHECK_OK(cpu->sumsq(cctx, &ss, x, big));
    CHECK_OK(oth->sumsq(octx, SS, X, big));
    cmp("sumsq big", SS, &ss, 1);
    CHECK_OK(cpu->sumsq(cctx, &ss, x, 0));
    CHECK_OK(oth->sumsq(octx, SS, X, 0));
    cmp("sumsq empty", SS, &ss, 1);
    /* memory slots: copy, zero */
    CHECK_OK(oth->copy(octx, P, X, (size_t)n * sizeof(float)));
    cmp("copy", P, x, n);
    CHECK_OK(oth->zero(octx, P, 10 * sizeof(float)));
    memset(x, 0, 10 * sizeof(float));
    CHECK_OK(oth->sync(octx));
    cmp("zero", P, x, n);
    free(p); free(m); free(v); free(g); free(x);
    DFREE(P); DFREE(M); DFREE(Vv); DFREE(G); DFREE(SS); DFREE(X);
}

#define NCASES 11

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
    printf("backend %s against cpu\n", oth->name);
    ops_seed(11);
    TEST("gemm: transposes, strides, alpha/beta, K=0") case_gemm();
    TEST("linear fwd/bwd, odd shapes, no bias, NULL grads") case_linear();
    TEST("embedding, rmsnorm, swiglu fwd/bwd, odd shapes, bad ids") case_embedding_rmsnorm_swiglu();
    TEST("rope fwd/bwd: partial rotary, full, scaling, R=0") case_rope();
    TEST("attention fwd/bwd: GQA/MQA, packed segments, padding, D 1..256") case_attention_shapes();
    TEST("attention fwd/bwd, long sequences T=1100/1031, packed") case_attention_long();
    TEST("attention_decode against a KV cache, bad lengths") case_decode();
    TEST("logprob forward/backward/fused, ignored labels, chunks, V=32003") case_logprob();
    TEST("adamw, sumsq, axpy, scale, add, copy, zero") case_optim();
    TEST("determinism: backward ops and reductions give the same bits twice") case_determinism();
    TEST("another context on the same backend") {
        void *c2 = NULL;
        CHECK_OK(oth->create(&o, &c2));
        oth->destroy(c2);
        oth->destroy(NULL);
    }
    oth->destroy(octx);
    cpu->destroy(cctx);
    return check_summary();
}
