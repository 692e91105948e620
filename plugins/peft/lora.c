/* plugins/peft/lora.c: LoRA (Hu et al. 2021) as HuggingFace peft implements it:
 *   y = x W^T + b + scale * (dropout(x) A^T) B^T,  A (r,I), B (O,r), scale = alpha / r
 * (alpha / sqrt(r) with use_rslora). Init as peft: A kaiming-uniform(a=sqrt(5)), i.e.
 * U(-1/sqrt(I), 1/sqrt(I)), or N(0, 1/r) with init_lora_weights=gaussian; B = 0. Saved in
 * peft's layout: adapter_config.json + adapter_model.safetensors with names
 * base_model.model.<module>.lora_{A,B}.weight. Shapes: N tokens, I in, O out, r rank.
 * rank_pattern / alpha_pattern (peft's per-module overrides, regex keys matched by
 * ftk_peft_pattern as get_pattern_key) give each site its own r and alpha, hence its own scale.
 *
 * use_dora (DoRA, Liu et al. 2024; peft tuners/lora/dora.py DoraLinearLayer): a magnitude m (O)
 * per output row, initialised to ||W + s B A||_row at init, and
 *   y = x W^T + b + (m/n - 1) * (xd W^T) + (m/n) * s * (xd A^T B^T),   n = ||W + s B A||_row
 * with n detached from the graph (paper section 4.3, as peft), xd = dropout(x) (peft uses the
 * base result y - b instead of xd W^T when there is no dropout: the same number). Saved as
 * base_model.model.<module>.lora_magnitude_vector (O). Merge: W' = (m/n) (W + s B A).
 *
 * init_lora_weights = pissa (Meng et al. 2024) / pissa_niter_N / olora (Buyukakyuz 2024), as
 * peft's pissa_init/olora_init: A, B from the top r singular triplets of W (pissa: exact, from the
 * Gram matrix's top eigenvectors in f64; pissa_niter_N: torch.svd_lowrank's randomised range
 * finder with N power iterations, its Gaussian test matrix drawn from ftk_init_seed (the run's
 * seed, saved in adapter_config.json) and the module name) or the Householder QR of W, and the
 * base weight W becomes the residual W - s B A (in backend memory), so the initial output is
 * unchanged. The adapter is saved as peft saves it (init_lora_weights names the init); loading
 * it, ftk and peft both run the init again on the ORIGINAL base (deterministic up to the signs of
 * singular vectors, which leave s B A unchanged; pissa_niter_N only with ftk's seed: peft draws
 * its own test matrix) and then overwrite A and B, so the pair (original base, adapter) is the
 * model. The DoRA/LoRA elementwise parts and these inits run on the host: the CPU backend only
 * for now.
 *
 * loraplus_lr_ratio (LoRA+): lora_B and 1-D parameters get the learning rate times the ratio
 * (ftk_peft_set_lr_scale), as peft's create_loraplus_optimizer groups them. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include "ftk/fileio.h"
#include "ftk/plugin.h"
#include "ftk/safetensors.h"
#include <cblas.h>   /* after the others: its complex.h defines I, undone below */
#undef I

#define MAX_SITES 4096

struct lora_site {
    const struct ftk_site *s;
    int64_t r;                 /* rank_pattern's, else the config's r */
    float scale;               /* alpha / r (alpha / sqrt(r) rsLoRA), alpha from alpha_pattern or lora_alpha */
    float *A, *B, *gA, *gB;    /* backend memory */
    float *m, *gm;             /* DoRA magnitude (O) */
    float *W;                  /* base weight (O,I), backend memory (DoRA, PiSSA, OLoRA) */
    const float *b;            /* base bias (O) or NULL */
};

struct lora {
    int64_t r;
    double alpha, dropout;
    int rslora, gaussian, dora;
    char init[32];             /* "true", "gaussian", "pissa", "pissa_niter_N", "olora" */
    int niter;                 /* N of pissa_niter_N; -1 otherwise */
    uint64_t init_seed;        /* pissa_niter_N's test matrices: ftk_init_seed, else the run's seed */
    char *rank_pattern, *alpha_pattern;   /* peft's per-module overrides, JSON objects (NULL: none) */
    char *targets;              /* any length: a regex target_modules arrives as every module's name */         /* comma list as given, or "all" */
    struct lora_site sites[MAX_SITES];
    int n;
    float *tmp, *tmp2;         /* (N, r) scratch, (N, I) dropout input */
    size_t tmp_cap, tmp2_cap;
    float *mask;               /* (N, I) scratch: s u A before the dropout mask */
    size_t mask_cap;
    float *d1, *d2, *d3;       /* DoRA scratch: (O,I) W + s B A, (N,O) base, (N,O) lora result */
    size_t d1_cap, d2_cap, d3_cap;
    float *mns;                /* DoRA (O) host: m / n for the site at hand */
    size_t mns_cap;
    char mts[256];             /* modules_to_save: comma list of top-level modules trained whole */
    double loraplus;           /* LoRA+ lr ratio of lora_B and 1-D parameters; 0: off */
};

/* modules_to_save (peft): whole modules outside the layers that train and are saved with the
 * adapter as base_model.model.<HF name>. Their HF weight names: */
static int mts_name(const char *item, int k, char *out, size_t n)
{
    static const char *fmt[] = {"%s.weight", "model.%s.weight"};   /* lm_head; embed_tokens, norm */
    if (k >= 2)
        return 0;
    snprintf(out, n, fmt[k], item);
    return 1;
}

/* Is base weight `name` in modules_to_save? */
static int mts_has(const struct lora *L, const char *name)
{
    char buf[256], cand[300];
    snprintf(buf, sizeof buf, "%s", L->mts);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save))
        for (int k = 0; mts_name(t, k, cand, sizeof cand); k++)
            if (!strcmp(cand, name))
                return 1;
    return 0;
}

static int lora_base_trainable(struct ftk_peft *p, const char *name)
{
    struct lora *L = ftk_peft_priv(p);
    return L->mts[0] && mts_has(L, name);
}

/* splitmix64: init and dropout draws that depend only on (seed, what, index) */
static uint64_t mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
static double uniform01(uint64_t h) { return (double)(h >> 11) * (1.0 / 9007199254740992.0); }

static int targeted(const struct lora *L, const struct ftk_site *s)
{
    const char *name = ftk_linear_name(s->kind);
    if (!strcmp(L->targets, "all") || !strcmp(L->targets, "all-linear"))
        return s->kind != FTK_LIN_LM_HEAD;   /* LLaMA-Factory's `all`, peft's `all-linear` */
    size_t m = strlen(s->module);
    for (const char *t = L->targets; *t;) {   /* no copy: the list has any length */
        while (*t == ' ')
            t++;
        size_t n = strcspn(t, ",");
        /* peft: the module name equals the target or ends with ".target" */
        if ((n == strlen(name) && !strncmp(t, name, n)) || (n == m && !strncmp(t, s->module, n)) ||
            (n && m > n && s->module[m - n - 1] == '.' && !strncmp(s->module + m - n, t, n)))
            return 1;
        t += n + (t[n] == ',');
    }
    return 0;
}

static ftk_status grow(float **p, size_t *cap, size_t n, const struct ftk_backend *be, void *ctx)
{
    if (n <= *cap)
        return FTK_OK;
    if (*p)
        be->free(ctx, *p);
    *p = NULL;
    *cap = 0;
    FTK_TRY(be->alloc(ctx, n * sizeof(float), (void **)p));
    *cap = n;
    return FTK_OK;
}

/* ---- PiSSA and OLoRA inits (host, f64) -------------------------------------------------- */

/* One-sided Jacobi (Hestenes): the columns of a (m,n) are orthogonalised in place by plane
 * rotations accumulated in v (n,n), so a_final = a v = U diag(sigma) and a = U diag(sigma) v^T.
 * Exact to f64 rounding; O(m n^2) per sweep: used on the (m, r) matrices of ritz() only. */
static void jacobi_svd(double *a, int64_t m, int64_t n, double *v)
{
    for (int64_t i = 0; i < n * n; i++)
        v[i] = 0;
    for (int64_t i = 0; i < n; i++)
        v[i * n + i] = 1;
    for (int sweep = 0; sweep < 100; sweep++) {
        int rotated = 0;
        for (int64_t p = 0; p < n; p++)
            for (int64_t q = p + 1; q < n; q++) {
                double al = 0, be = 0, ga = 0;
                for (int64_t i = 0; i < m; i++) {
                    al += a[i * n + p] * a[i * n + p];
                    be += a[i * n + q] * a[i * n + q];
                    ga += a[i * n + p] * a[i * n + q];
                }
                if (fabs(ga) <= 1e-15 * sqrt(al * be) || ga == 0)
                    continue;
                rotated = 1;
                double zeta = (be - al) / (2 * ga);
                double t = (zeta >= 0 ? 1.0 : -1.0) / (fabs(zeta) + sqrt(1 + zeta * zeta));
                double c = 1 / sqrt(1 + t * t), s = c * t;
                for (int64_t i = 0; i < m; i++) {
                    double x = a[i * n + p], y = a[i * n + q];
                    a[i * n + p] = c * x - s * y;
                    a[i * n + q] = s * x + c * y;
                }
                for (int64_t i = 0; i < n; i++) {
                    double x = v[i * n + p], y = v[i * n + q];
                    v[i * n + p] = c * x - s * y;
                    v[i * n + q] = s * x + c * y;
                }
            }
        if (!rotated)
            break;
    }
}

/* LAPACK (OpenBLAS carries it): eigenpairs il..iu of a symmetric matrix. The three trailing
 * arguments are the hidden lengths of the character arguments (gfortran's convention). */
extern void dsyevr_(const char *jobz, const char *range, const char *uplo, const blasint *n, double *a, const blasint *lda,
                    const double *vl, const double *vu, const blasint *il, const blasint *iu, const double *abstol,
                    blasint *m, double *w, double *z, const blasint *ldz, blasint *isuppz, double *work,
                    const blasint *lwork, blasint *iwork, const blasint *liwork, blasint *info, size_t, size_t, size_t);

static double normal01(uint64_t h)   /* Box-Muller */
{
    double u1 = uniform01(h), u2 = uniform01(mix(h));
    return sqrt(-2.0 * log(u1 > 0 ? u1 : 1e-300)) * cos(2 * M_PI * u2);
}

static uint64_t name_hash(const char *s)   /* FNV-1a */
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* y = W x (trans 0: x (I,k), y (O,k)) or W^T x (trans 1: x (O,k), y (I,k)); w (O,I). */
static void w_times(const double *w, int64_t O, int64_t I, int trans, const double *x, int64_t k, double *y)
{
    cblas_dgemm(CblasRowMajor, trans ? CblasTrans : CblasNoTrans, CblasNoTrans, (blasint)(trans ? I : O), (blasint)k,
                (blasint)(trans ? O : I), 1.0, w, (blasint)I, x, (blasint)k, 0.0, y, (blasint)k);
}

/* The k columns of x (n,k) orthonormalised in place: modified Gram-Schmidt, twice ("twice is
 * enough"). A column numerically in the span of the previous ones becomes 0 (W of rank < r). */
static void orthonormalize(double *x, int64_t n, int64_t k)
{
    for (int64_t j = 0; j < k; j++) {
        double n0 = 0, n1 = 0;
        for (int64_t i = 0; i < n; i++)
            n0 += x[i * k + j] * x[i * k + j];
        for (int pass = 0; pass < 2; pass++)
            for (int64_t c = 0; c < j; c++) {
                double d = 0;
                for (int64_t i = 0; i < n; i++)
                    d += x[i * k + c] * x[i * k + j];
                for (int64_t i = 0; i < n; i++)
                    x[i * k + j] -= d * x[i * k + c];
            }
        for (int64_t i = 0; i < n; i++)
            n1 += x[i * k + j] * x[i * k + j];
        double f = n1 > 1e-26 * n0 && n1 > 0 ? 1 / sqrt(n1) : 0;
        for (int64_t i = 0; i < n; i++)
            x[i * k + j] *= f;
    }
}

/* Rayleigh-Ritz on the span of q's k orthonormal columns, a subspace of R^O (left: q (O,k)) or of
 * R^I (q (I,k)): the SVD of the small y = W^T q (I,k) or W q (O,k) by one-sided Jacobi, y z =
 * Y diag(S), gives W ~ U diag(S) V^T with (U, V) = (q z, Y) or (Y, q z): U (O,k), V (I,k), S
 * descending. torch.svd_lowrank's last step (B = Q^T A, svd(B)); for the Gram matrix's exact
 * eigenvectors it returns exact, orthonormal singular pairs. */
static ftk_status ritz(const double *w, int64_t O, int64_t I, const double *q, int left, int64_t k, double *U, double *S,
                       double *V)
{
    int64_t ny = left ? I : O, nq = left ? O : I;
    double *y = malloc((size_t)(ny * k) * sizeof *y), *z = malloc((size_t)(k * k) * sizeof *z), *sg = malloc((size_t)k * sizeof *sg);
    int64_t *ord = malloc((size_t)k * sizeof *ord);
    if (!y || !z || !sg || !ord) {
        free(y), free(z), free(sg), free(ord);
        FTK_FAIL(FTK_E_NOMEM, "out of memory");
    }
    w_times(w, O, I, left, q, k, y);
    jacobi_svd(y, ny, k, z);
    for (int64_t j = 0; j < k; j++) {
        double s2 = 0;
        for (int64_t i = 0; i < ny; i++)
            s2 += y[i * k + j] * y[i * k + j];
        sg[j] = sqrt(s2);
        ord[j] = j;
    }
    for (int64_t j = 1; j < k; j++)   /* descending singular values (insertion sort, stable) */
        for (int64_t c = j; c > 0 && sg[ord[c]] > sg[ord[c - 1]]; c--) {
            int64_t t = ord[c];
            ord[c] = ord[c - 1];
            ord[c - 1] = t;
        }
    double *ydir = left ? V : U, *qz = left ? U : V;
    for (int64_t c = 0; c < k; c++) {
        int64_t j = ord[c];
        double inv = sg[j] > 0 ? 1 / sg[j] : 0;
        S[c] = sg[j];
        for (int64_t i = 0; i < ny; i++)
            ydir[i * k + c] = y[i * k + j] * inv;
        for (int64_t i = 0; i < nq; i++) {
            double d = 0;
            for (int64_t l = 0; l < k; l++)
                d += q[i * k + l] * z[l * k + j];
            qz[i * k + c] = d;
        }
    }
    free(y), free(z), free(sg), free(ord);
    return FTK_OK;
}

/* Exact: q (n,k) = the eigenvectors of the k largest eigenvalues of the Gram matrix of the
 * smaller side, G = W W^T (left, n = O) or W^T W (n = I), in f64 (dsyrk, then LAPACK dsyevr for
 * those k only). The top singular vectors are G's top eigenvectors, resolved to f64 rounding
 * relative to sigma_1^2 / (sigma_k^2 - sigma_{k+1}^2): far below the F32 of A and B. */
static ftk_status gram_top(const double *w, int64_t O, int64_t I, int left, int64_t k, double *q)
{
    blasint n = (blasint)(left ? O : I), il = n - (blasint)k + 1, iu = n, m = 0, info = 0, lwork = -1, liwork = -1, iwq = 0;
    double vl = 0, vu = 0, abstol = 2.2250738585072014e-308, wq = 0;   /* DLAMCH('S'): the most accurate */
    double *g = malloc((size_t)n * (size_t)n * sizeof *g), *ev = malloc((size_t)n * sizeof *ev),
           *z = malloc((size_t)n * (size_t)k * sizeof *z), *work = NULL;
    blasint *isuppz = malloc((size_t)(2 * k) * sizeof *isuppz), *iwork = NULL;
    ftk_status st = g && ev && z && isuppz ? FTK_OK : ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    if (st == FTK_OK) {   /* row-major upper triangle = column-major lower */
        cblas_dsyrk(CblasRowMajor, CblasUpper, left ? CblasNoTrans : CblasTrans, n, (blasint)(left ? I : O), 1.0, w,
                    (blasint)I, 0.0, g, n);
        dsyevr_("V", "I", "L", &n, g, &n, &vl, &vu, &il, &iu, &abstol, &m, ev, z, &n, isuppz, &wq, &lwork, &iwq, &liwork,
                &info, 1, 1, 1);
        lwork = (blasint)wq;
        liwork = iwq;
        work = malloc((size_t)lwork * sizeof *work);
        iwork = malloc((size_t)liwork * sizeof *iwork);
        if (info || !work || !iwork)
            st = ftk_error_set(info ? FTK_E_INVALID : FTK_E_NOMEM, __FILE__, __LINE__, "dsyevr workspace query: info %d", (int)info);
    }
    if (st == FTK_OK) {
        dsyevr_("V", "I", "L", &n, g, &n, &vl, &vu, &il, &iu, &abstol, &m, ev, z, &n, isuppz, work, &lwork, iwork, &liwork,
                &info, 1, 1, 1);
        if (info || m != (blasint)k)
            st = ftk_error_set(FTK_E_INVALID, __FILE__, __LINE__, "PiSSA: the eigensolver (LAPACK dsyevr) failed on a %d x %d "
                               "Gram matrix (info %d, %d of %lld eigenpairs): is the weight finite?", (int)n, (int)n, (int)info,
                               (int)m, (long long)k);
    }
    for (int64_t c = 0; c < k && st == FTK_OK; c++)   /* ascending -> descending; column-major -> (n,k) */
        for (blasint i = 0; i < n; i++)
            q[i * k + c] = z[(size_t)(k - 1 - c) * (size_t)n + (size_t)i];
    free(g), free(ev), free(z), free(isuppz), free(work), free(iwork);
    return st;
}

/* pissa_niter_N: torch.svd_lowrank(W, q=k, niter=N)'s range finder (Halko, Martinsson, Tropp 2011,
 * algorithms 4.4 and 5.1) on A = W if O >= I (left: q (O,k)), else A = W^T (q (I,k)): A (m,n),
 * G (n,k) Gaussian from key, q = orth(A G), then N times q = orth(A orth(A^T q)). t: (n,k) scratch. */
static void range_finder(const double *w, int64_t O, int64_t I, int niter, uint64_t key, int64_t k, double *q, double *t)
{
    int left = O >= I;
    int64_t m = left ? O : I, n = left ? I : O;
    for (int64_t j = 0; j < n * k; j++)
        t[j] = normal01(mix(key ^ mix((uint64_t)j)));
    w_times(w, O, I, !left, t, k, q);   /* A t */
    orthonormalize(q, m, k);
    for (int it = 0; it < niter; it++) {
        w_times(w, O, I, left, q, k, t);   /* A^T q */
        orthonormalize(t, n, k);
        w_times(w, O, I, !left, t, k, q);
        orthonormalize(q, m, k);
    }
}

/* PiSSA (peft pissa_init): W (O,I) = U S V^T; A (r,I) = sqrt(S_r/s) V_r^T, B (O,r) = U_r sqrt(S_r/s).
 * niter < 0 ("pissa"): the exact top r triplets (gram_top); niter >= 0 ("pissa_niter_N"):
 * torch.svd_lowrank's approximation (range_finder, key seeds its test matrix). Both end in
 * ritz(). Components beyond min(O, I) are 0. */
static ftk_status pissa_host(const float *W, int64_t O, int64_t I, int64_t r, double scale, int niter, uint64_t key, float *A,
                             float *B)
{
    int64_t k = r < O ? r : O;
    if (k > I)
        k = I;
    int left = niter < 0 ? O < I : O >= I;   /* q's side: the Gram matrix's (smaller) or A's columns (larger) */
    int64_t nq = left ? O : I;
    double *w = malloc((size_t)(O * I) * sizeof *w), *q = malloc((size_t)(nq * k) * sizeof *q),
           *t = malloc((size_t)((O > I ? O : I) * k) * sizeof *t), *U = malloc((size_t)(O * k) * sizeof *U),
           *V = malloc((size_t)(I * k) * sizeof *V), *S = malloc((size_t)k * sizeof *S);
    ftk_status st = w && q && t && U && V && S ? FTK_OK : ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    if (st == FTK_OK) {
        for (int64_t j = 0; j < O * I; j++)
            w[j] = W[j];
        if (niter < 0)
            st = gram_top(w, O, I, left, k, q);
        else
            range_finder(w, O, I, niter, key, k, q, t);
    }
    if (st == FTK_OK)
        st = ritz(w, O, I, q, left, k, U, S, V);
    for (int64_t c = 0; c < r && st == FTK_OK; c++) {
        double f = c < k ? sqrt(S[c] / scale) : 0;
        for (int64_t o = 0; o < O; o++)
            B[o * r + c] = (float)(c < k ? f * U[o * k + c] : 0);
        for (int64_t i = 0; i < I; i++)
            A[c * I + i] = (float)(c < k ? f * V[i * k + c] : 0);
    }
    free(w), free(q), free(t), free(U), free(V), free(S);
    return st;
}

/* OLoRA (peft olora_init): W (O,I) = Q R (Householder, LAPACK's signs: R_kk = -sign(a_kk) ||a||);
 * B (O,r) = Q[:, :r], A (r,I) = R[:r]. Only the first r reflections matter: row j of R is final
 * after reflection j, and H_j (j >= r) leaves the first r columns of [I_r; 0] alone, so the cost
 * is O(O I r), not O(O I min(O,I)). */
static ftk_status olora_host(const float *W, int64_t O, int64_t I, int64_t r, float *A, float *B)
{
    int64_t k = O < I ? O : I;
    if (k > r)
        k = r;
    double *a = malloc((size_t)(O * I) * sizeof *a), *vs = calloc((size_t)(O * k), sizeof *vs), *q = calloc((size_t)(O * r), sizeof *q);
    if (!a || !vs || !q) {
        free(a), free(vs), free(q);
        FTK_FAIL(FTK_E_NOMEM, "out of memory");
    }
    for (int64_t j = 0; j < O * I; j++)
        a[j] = W[j];
    for (int64_t j = 0; j < k; j++) {   /* H_j = I - 2 v v^T / (v^T v) on rows j.. */
        double nrm = 0;
        for (int64_t i = j; i < O; i++)
            nrm += a[i * I + j] * a[i * I + j];
        nrm = sqrt(nrm);
        double *v = vs + j * O, alpha = a[j * I + j];
        if (nrm == 0)
            continue;
        double beta = alpha >= 0 ? -nrm : nrm, vv = 0;
        for (int64_t i = j; i < O; i++)
            v[i] = a[i * I + j];
        v[j] = alpha - beta;
        for (int64_t i = j; i < O; i++)
            vv += v[i] * v[i];
        if (vv == 0)
            continue;
        for (int64_t c = j; c < I; c++) {
            double d = 0;
            for (int64_t i = j; i < O; i++)
                d += v[i] * a[i * I + c];
            d *= 2 / vv;
            for (int64_t i = j; i < O; i++)
                a[i * I + c] -= d * v[i];
        }
    }
    for (int64_t i = 0; i < r && i < O; i++)   /* Q[:, :r] = H_0 ... H_{k-1} [I_r; 0] */
        q[i * r + i] = 1;
    for (int64_t j = k - 1; j >= 0; j--) {
        const double *v = vs + j * O;
        double vv = 0;
        for (int64_t i = j; i < O; i++)
            vv += v[i] * v[i];
        if (vv == 0)
            continue;
        for (int64_t c = 0; c < r; c++) {
            double d = 0;
            for (int64_t i = j; i < O; i++)
                d += v[i] * q[i * r + c];
            d *= 2 / vv;
            for (int64_t i = j; i < O; i++)
                q[i * r + c] -= d * v[i];
        }
    }
    for (int64_t i = 0; i < O * r; i++)
        B[i] = (float)q[i];
    for (int64_t c = 0; c < r; c++)
        for (int64_t i = 0; i < I; i++)
            A[c * I + i] = (float)(c < k && i >= c ? a[c * I + i] : 0);
    free(a), free(vs), free(q);
    return FTK_OK;
}

/* PiSSA/OLoRA at one site: A, B from W, then W -= s B A (f32, as peft). pissa_niter_N's test
 * matrix depends on (init_seed, module name) only: the same init on every load. */
static ftk_status init_from_weight(struct lora *L, struct lora_site *ls, const struct ftk_backend *be, void *ctx)
{
    uint64_t key = mix(L->init_seed ^ mix(name_hash(ls->s->module)) ^ 0x5049535341ull);   /* "PISSA" */
    int64_t O = ls->s->out, I = ls->s->in, r = ls->r;
    float *W = malloc((size_t)(O * I) * sizeof *W), *A = malloc((size_t)(r * I) * sizeof *A), *B = malloc((size_t)(O * r) * sizeof *B);
    ftk_status st = W && A && B ? FTK_OK : ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    if (st == FTK_OK)
        st = be->to_host(ctx, W, ls->W, (size_t)(O * I) * sizeof *W);
    if (st == FTK_OK)
        st = strcmp(L->init, "olora") ? pissa_host(W, O, I, r, ls->scale, L->niter, key, A, B) : olora_host(W, O, I, r, A, B);
    if (st == FTK_OK) {
        for (int64_t o = 0; o < O; o++)
            for (int64_t i = 0; i < I; i++) {
                float d = 0;
                for (int64_t k = 0; k < r; k++)
                    d += B[o * r + k] * A[k * I + i];
                W[o * I + i] -= ls->scale * d;
            }
        st = be->to_device(ctx, ls->W, W, (size_t)(O * I) * sizeof *W);
    }
    if (st == FTK_OK)
        st = be->to_device(ctx, ls->A, A, (size_t)(r * I) * sizeof *A);
    if (st == FTK_OK)
        st = be->to_device(ctx, ls->B, B, (size_t)(O * r) * sizeof *B);
    free(W), free(A), free(B);
    return st;
}

/* DoRA: n (O) = ||W + s B A||_row into *out (host), with (W + s B A) left in L->d1. */
static ftk_status dora_norms(struct ftk_peft *p, struct lora *L, const struct lora_site *ls, double *out)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t O = ls->s->out, I = ls->s->in;
    FTK_TRY(grow(&L->d1, &L->d1_cap, (size_t)(O * I), be, ctx));
    FTK_TRY(be->copy(ctx, L->d1, ls->W, (size_t)(O * I) * sizeof(float)));
    FTK_TRY(be->gemm(ctx, 0, 0, O, I, ls->r, ls->scale, ls->B, ls->r, ls->A, I, 1.0f, L->d1, I));
    for (int64_t o = 0; o < O; o++) {
        double acc = 0;
        for (int64_t i = 0; i < I; i++)
            acc += (double)L->d1[o * I + i] * L->d1[o * I + i];
        out[o] = sqrt(acc);
    }
    return FTK_OK;
}

static ftk_status lora_init(struct ftk_peft *p, const struct ftk_kv *o)
{
    struct lora *L = ftk_peft_priv(p);
    FTK_TRY(ftk_kv_int(o, "r", 8, &L->r));
    FTK_TRY(ftk_kv_double(o, "lora_alpha", 2.0 * (double)L->r, &L->alpha));   /* LLaMA-Factory: 2 * rank */
    FTK_TRY(ftk_kv_double(o, "lora_dropout", 0.0, &L->dropout));
    FTK_TRY(ftk_kv_bool(o, "use_rslora", 0, &L->rslora));
    FTK_TRY(ftk_kv_bool(o, "use_dora", 0, &L->dora));
    FTK_FAIL_IF(L->r <= 0 || L->r > 65536, FTK_E_INVALID, "r=%lld must be from 1 to 65536", (long long)L->r);
    FTK_FAIL_IF(L->dropout < 0 || L->dropout >= 1, FTK_E_INVALID, "lora_dropout=%g must be in [0, 1)", L->dropout);
    const char *init = ftk_kv_get(o, "init_lora_weights");
    if (!init || !strcmp(init, "1"))
        init = "true";
    snprintf(L->init, sizeof L->init, "%s", init);
    L->gaussian = !strcmp(init, "gaussian");
    L->niter = -1;
    if (!strncmp(init, "pissa_niter_", 12)) {   /* peft: int(init.split("_niter_")[-1]) */
        char *end;
        long v = strtol(init + 12, &end, 10);
        FTK_FAIL_IF(end == init + 12 || *end || v < 0 || v > 100000, FTK_E_INVALID,
                    "init_lora_weights=%s: N of pissa_niter_N must be a whole number from 0 to 100000", init);
        L->niter = (int)v;
    }
    int from_w = !strcmp(init, "pissa") || !strcmp(init, "olora") || L->niter >= 0;
    FTK_FAIL_IF(!L->gaussian && !from_w && strcmp(init, "true"), FTK_E_UNSUPPORTED,
                "init_lora_weights=%s (supported: true, gaussian, pissa, pissa_niter_N, olora)", init);
    /* pissa_niter_N's seed: saved with the adapter, so loading it anywhere (eval, merge-lora: seed
     * 0) recomputes the same residual */
    const char *is = ftk_kv_get(o, "ftk_init_seed");
    L->init_seed = ftk_peft_seed(p);
    if (is) {
        char *end;
        unsigned long long v = strtoull(is, &end, 10);
        FTK_FAIL_IF(end == is || *end || is[0] == '-', FTK_E_INVALID, "ftk_init_seed=%s must be a whole number >= 0", is);
        L->init_seed = (uint64_t)v;
    }
    const char *mts = ftk_kv_get(o, "modules_to_save");
    snprintf(L->mts, sizeof L->mts, "%s", mts ? mts : "");
    if (L->mts[0]) {   /* top-level modules only: lm_head, embed_tokens, norm */
        char buf[256], cand[300];
        snprintf(buf, sizeof buf, "%s", L->mts);
        for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            int found = 0;
            for (int k = 0; mts_name(t, k, cand, sizeof cand) && !found; k++)
                found = ftk_peft_base_weight(p, cand, NULL) != NULL;
            FTK_FAIL_IF(!found, FTK_E_UNSUPPORTED, "modules_to_save: \"%s\" is not a top-level module of this model "
                        "(lm_head, embed_tokens, norm)", t);
            FTK_FAIL_IF(!strcmp(t, "lm_head") && ftk_peft_config(p)->tie_word_embeddings, FTK_E_UNSUPPORTED,
                        "modules_to_save: lm_head is tied to embed_tokens in this model");
        }
    }
    /* LoRA+ (Hayou et al. 2024; peft create_loraplus_optimizer, LLaMA-Factory
     * _create_loraplus_optimizer): an optimizer change only. lora_B and every 1-D parameter (the
     * DoRA magnitude) train at lr * ratio, the rest at lr; weight decay stays as without it
     * (LLaMA-Factory: A, B and the magnitude decay). The embedding group (loraplus_lr_embedding)
     * holds LoRA on embedding layers, which ftk has none of: the option is checked and unused. */
    FTK_TRY(ftk_kv_double(o, "loraplus_lr_ratio", 0.0, &L->loraplus));
    FTK_FAIL_IF(ftk_kv_get(o, "loraplus_lr_ratio") && !(L->loraplus > 0 && isfinite(L->loraplus)), FTK_E_INVALID,
                "loraplus_lr_ratio=%s must be a positive number (LoRA+ suggests 2 to 16)", ftk_kv_get(o, "loraplus_lr_ratio"));
    double lr_emb;
    FTK_TRY(ftk_kv_double(o, "loraplus_lr_embedding", 1e-6, &lr_emb));
    FTK_FAIL_IF(!(lr_emb >= 0 && isfinite(lr_emb)), FTK_E_INVALID, "loraplus_lr_embedding=%g must be >= 0", lr_emb);
    FTK_FAIL_IF(L->loraplus > 0 && mts_has(L, "model.norm.weight"), FTK_E_UNSUPPORTED,
                "loraplus_lr_ratio with modules_to_save=norm: LoRA+ would train the (1-D) norm weight at lr * ratio "
                "with weight decay, which ftk's trainer cannot express for a base weight");
    const char *t = ftk_kv_get(o, "target_modules");
    FTK_FAIL_IF(!(L->targets = strdup(t ? t : "all")), FTK_E_NOMEM, "out of memory");
    /* peft LoraModel._create_and_replace: per-module r and lora_alpha from the patterns */
    static const char *const pat_key[2] = {"rank_pattern", "alpha_pattern"};
    for (int k = 0; k < 2; k++) {
        const char *v = ftk_kv_get(o, pat_key[k]);
        if (!v || !strcmp(v, "{}"))
            continue;
        char **dst = k ? &L->alpha_pattern : &L->rank_pattern;
        FTK_FAIL_IF(!(*dst = strdup(v)), FTK_E_NOMEM, "out of memory");
        double probe;   /* a malformed object or key fails here, naming the option */
        FTK_TRY(ftk_peft_pattern(*dst, pat_key[k], "", 0, &probe));
    }

    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    FTK_FAIL_IF((L->dora || from_w) && strcmp(be->name, "cpu"), FTK_E_UNSUPPORTED,
                "use_dora / init_lora_weights=%s on the %s backend is not implemented yet", init, be->name);
    uint64_t seed = ftk_peft_seed(p);
    for (size_t i = 0; i < ftk_peft_n_sites(p); i++) {
        const struct ftk_site *s = ftk_peft_site(p, i);
        if (!targeted(L, s))
            continue;
        FTK_FAIL_IF(s->kind == FTK_LIN_LM_HEAD, FTK_E_UNSUPPORTED, "LoRA on lm_head is not supported yet");
        FTK_FAIL_IF(L->n == MAX_SITES, FTK_E_UNSUPPORTED, "more than %d LoRA sites", MAX_SITES);
        struct lora_site *ls = &L->sites[L->n++];
        ls->s = s;
        double r, alpha;
        FTK_TRY(ftk_peft_pattern(L->rank_pattern, "rank_pattern", s->module, (double)L->r, &r));
        FTK_TRY(ftk_peft_pattern(L->alpha_pattern, "alpha_pattern", s->module, L->alpha, &alpha));
        FTK_FAIL_IF(r != floor(r) || r < 1 || r > 65536, FTK_E_INVALID, "rank_pattern gives %s rank %g: it must be a whole number >= 1",
                    s->module, r);
        ls->r = (int64_t)r;
        ls->scale = (float)(L->rslora ? alpha / sqrt(r) : alpha / r);
        char name[256];
        int64_t sa[2] = {ls->r, s->in}, sb[2] = {s->out, ls->r};
        snprintf(name, sizeof name, "base_model.model.%s.lora_A.weight", s->module);
        FTK_TRY(ftk_peft_add_param(p, name, 2, sa, 1, &ls->A, &ls->gA));
        snprintf(name, sizeof name, "base_model.model.%s.lora_B.weight", s->module);
        FTK_TRY(ftk_peft_add_param(p, name, 2, sb, 1, &ls->B, &ls->gB));
        if (L->loraplus > 0)
            FTK_TRY(ftk_peft_set_lr_scale(p, name, (float)L->loraplus));
        if (L->dora || from_w) {
            snprintf(name, sizeof name, "%s.weight", s->module);
            ls->W = ftk_peft_base_weight(p, name, NULL);
            FTK_FAIL_IF(!ls->W, FTK_E_INVALID, "the model has no %s", name);
            snprintf(name, sizeof name, "%s.bias", s->module);
            ls->b = ftk_peft_base_weight(p, name, NULL);
        }
        if (from_w) {
            FTK_TRY(init_from_weight(L, ls, be, ctx));
        } else {
            size_t n = (size_t)(ls->r * s->in);
            float *host = malloc(n * sizeof *host);
            FTK_FAIL_IF(!host, FTK_E_NOMEM, "out of memory");
            double bound = 1.0 / sqrt((double)s->in), sd = 1.0 / (double)ls->r;
            for (size_t j = 0; j < n; j++) {
                uint64_t h = mix(seed ^ mix((uint64_t)i * 0x10001 + 1) ^ mix(j));
                if (L->gaussian) {   /* Box-Muller */
                    double u1 = uniform01(h), u2 = uniform01(mix(h));
                    host[j] = (float)(sd * sqrt(-2.0 * log(u1 > 0 ? u1 : 1e-300)) * cos(2 * M_PI * u2));
                } else {
                    host[j] = (float)((2 * uniform01(h) - 1) * bound);
                }
            }
            ftk_status st = be->to_device(ctx, ls->A, host, n * sizeof *host);
            free(host);
            FTK_TRY(st);
        }
        if (L->dora) {   /* peft DoraLinearLayer.update_layer, after the LoRA init: m = ||W + s B A||_row */
            snprintf(name, sizeof name, "base_model.model.%s.lora_magnitude_vector", s->module);
            int64_t sm[1] = {s->out};
            FTK_TRY(ftk_peft_add_param(p, name, 1, sm, 1, &ls->m, &ls->gm));
            if (L->loraplus > 0)   /* LoRA+: 1-D parameters go with lora_B */
                FTK_TRY(ftk_peft_set_lr_scale(p, name, (float)L->loraplus));
            double *nrm = malloc((size_t)s->out * sizeof *nrm);
            FTK_FAIL_IF(!nrm, FTK_E_NOMEM, "out of memory");
            ftk_status st = dora_norms(p, L, ls, nrm);
            for (int64_t j = 0; j < s->out && st == FTK_OK; j++)
                ls->m[j] = (float)nrm[j];   /* host memory: the CPU backend */
            free(nrm);
            FTK_TRY(st);
        }
        FTK_TRY(ftk_peft_attach(p, s));
    }
    FTK_FAIL_IF(L->n == 0, FTK_E_INVALID, "target_modules=%s matches no linear layer", L->targets);
    return FTK_OK;
}

static struct lora_site *find_site(struct lora *L, const struct ftk_site *s)
{
    for (int i = 0; i < L->n; i++)
        if (L->sites[i].s == s)
            return &L->sites[i];
    return NULL;
}

/* Dropout key of (seed, step, site): forward and backward draw the same mask from it. */
static uint64_t drop_key(struct ftk_peft *p, const struct lora *L, const struct lora_site *ls)
{
    return mix(ftk_peft_seed(p) ^ mix(ftk_peft_noise_step(p) + 7) ^ mix((uint64_t)(ls - L->sites) + 99));
}
static int dropped_at(uint64_t key, size_t j, double p) { return uniform01(mix(key ^ mix(j))) < p; }

/* x with dropout applied, into tmp2 (train and p > 0), else x itself. Host arithmetic: the CPU
 * backend only for now. */
static ftk_status dropped(struct ftk_peft *p, struct lora *L, const struct lora_site *ls, const float *x, int64_t N,
                          const float **out)
{
    *out = x;
    if (L->dropout <= 0)
        return FTK_OK;
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    FTK_FAIL_IF(strcmp(be->name, "cpu"), FTK_E_UNSUPPORTED, "lora_dropout on the %s backend is not implemented yet", be->name);
    size_t n = (size_t)(N * ls->s->in);
    FTK_TRY(grow(&L->tmp2, &L->tmp2_cap, n, be, ctx));
    uint64_t key = drop_key(p, L, ls);
    float keep = (float)(1.0 / (1.0 - L->dropout));
    for (size_t j = 0; j < n; j++)
        L->tmp2[j] = dropped_at(key, j, L->dropout) ? 0.0f : x[j] * keep;
    *out = L->tmp2;
    return FTK_OK;
}

/* ---- DoRA ---------------------------------------------------------------------------------- */

/* L->mns (O, host) = m / ||W + s B A||_row; the norms (detached, as peft) into nrm if not NULL. */
static ftk_status dora_scale(struct ftk_peft *p, struct lora *L, const struct lora_site *ls, double *nrm_out)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t O = ls->s->out;
    FTK_TRY(grow(&L->mns, &L->mns_cap, (size_t)(2 * O + 2 * O), be, ctx));   /* O floats + O doubles */
    double *nrm = (double *)(void *)(L->mns + 2 * O);
    FTK_TRY(dora_norms(p, L, ls, nrm));
    for (int64_t o = 0; o < O; o++) {
        L->mns[o] = ls->m[o] / (float)nrm[o];
        if (nrm_out)
            nrm_out[o] = nrm[o];
    }
    return FTK_OK;
}

/* y (N,O) += (m/n - 1) * base + (m/n) * s * (xd A^T B^T); base = y - b (no dropout) or xd W^T */
static ftk_status dora_forward(struct ftk_peft *p, struct lora *L, struct lora_site *ls, float *y, const float *x, int64_t N,
                               int train)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t I = ls->s->in, O = ls->s->out, r = ls->r;
    const float *xd = x;
    if (train)
        FTK_TRY(dropped(p, L, ls, x, N, &xd));
    FTK_TRY(dora_scale(p, L, ls, NULL));
    FTK_TRY(grow(&L->d2, &L->d2_cap, (size_t)(N * O), be, ctx));
    FTK_TRY(grow(&L->d3, &L->d3_cap, (size_t)(N * O), be, ctx));
    FTK_TRY(grow(&L->tmp, &L->tmp_cap, (size_t)(N * r), be, ctx));
    if (xd != x) {   /* peft: base_result = F.linear(dropout(x), W) */
        FTK_TRY(be->gemm(ctx, 0, 1, N, O, I, 1.0f, xd, I, ls->W, I, 0.0f, L->d2, O));
    } else {         /* peft: base_result = result - bias */
        for (int64_t n = 0; n < N; n++)
            for (int64_t o = 0; o < O; o++)
                L->d2[n * O + o] = y[n * O + o] - (ls->b ? ls->b[o] : 0.0f);
    }
    FTK_TRY(be->gemm(ctx, 0, 1, N, r, I, 1.0f, xd, I, ls->A, I, 0.0f, L->tmp, r));     /* t  = xd A^T (N,r) */
    FTK_TRY(be->gemm(ctx, 0, 1, N, O, r, 1.0f, L->tmp, r, ls->B, r, 0.0f, L->d3, O));  /* lr = t B^T  (N,O) */
    for (int64_t n = 0; n < N; n++)
        for (int64_t o = 0; o < O; o++) {
            float g = L->mns[o];
            y[n * O + o] += (g - 1.0f) * L->d2[n * O + o] + g * L->d3[n * O + o] * ls->scale;
        }
    return FTK_OK;
}

/* dm[o] += sum_n dy (base + s lr) / n[o];  A, B as LoRA with dy * m/n;
 * dx += [(dy * (m/n - 1)) W + s ((dy * m/n) B) A] (through the dropout mask) */
static ftk_status dora_backward(struct ftk_peft *p, struct lora *L, struct lora_site *ls, float *dx, const float *dy,
                                const float *x, int64_t N)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t I = ls->s->in, O = ls->s->out, r = ls->r;
    const float *xd;
    FTK_TRY(dropped(p, L, ls, x, N, &xd));
    FTK_TRY(dora_scale(p, L, ls, NULL));
    const double *nrm = (const double *)(const void *)(L->mns + 2 * O);
    FTK_TRY(grow(&L->d2, &L->d2_cap, (size_t)(N * O), be, ctx));
    FTK_TRY(grow(&L->d3, &L->d3_cap, (size_t)(N * O), be, ctx));
    FTK_TRY(grow(&L->tmp, &L->tmp_cap, (size_t)(2 * N * r), be, ctx));
    float *t = L->tmp, *u = L->tmp + N * r;
    FTK_TRY(be->gemm(ctx, 0, 1, N, O, I, 1.0f, xd, I, ls->W, I, 0.0f, L->d2, O));      /* base = xd W^T */
    FTK_TRY(be->gemm(ctx, 0, 1, N, r, I, 1.0f, xd, I, ls->A, I, 0.0f, t, r));          /* t = xd A^T */
    FTK_TRY(be->gemm(ctx, 0, 1, N, O, r, 1.0f, t, r, ls->B, r, 0.0f, L->d3, O));       /* lr = t B^T */
    for (int64_t o = 0; o < O; o++) {
        double acc = 0;
        for (int64_t n = 0; n < N; n++)
            acc += (double)dy[n * O + o] * (L->d2[n * O + o] + ls->scale * L->d3[n * O + o]);
        ls->gm[o] += (float)(acc / nrm[o]);
    }
    for (int64_t n = 0; n < N; n++)
        for (int64_t o = 0; o < O; o++) {
            float g = L->mns[o], d = dy[n * O + o];
            L->d2[n * O + o] = d * (g - 1.0f);   /* through the base path */
            L->d3[n * O + o] = d * g;            /* through the LoRA path */
        }
    FTK_TRY(be->gemm(ctx, 0, 0, N, r, O, 1.0f, L->d3, O, ls->B, r, 0.0f, u, r));       /* u = dyl B (N,r) */
    FTK_TRY(be->gemm(ctx, 1, 0, O, r, N, ls->scale, L->d3, O, t, r, 1.0f, ls->gB, r));  /* dB += s dyl^T t */
    FTK_TRY(be->gemm(ctx, 1, 0, r, I, N, ls->scale, u, r, xd, I, 1.0f, ls->gA, I));     /* dA += s u^T xd */
    if (!dx)
        return FTK_OK;
    float *dst = dx;
    float beta = 1.0f;
    if (L->dropout > 0) {
        FTK_TRY(grow(&L->mask, &L->mask_cap, (size_t)(N * I), be, ctx));
        dst = L->mask;
        beta = 0.0f;
    }
    FTK_TRY(be->gemm(ctx, 0, 0, N, I, O, 1.0f, L->d2, O, ls->W, I, beta, dst, I));
    FTK_TRY(be->gemm(ctx, 0, 0, N, I, r, ls->scale, u, r, ls->A, I, 1.0f, dst, I));
    if (L->dropout > 0) {
        uint64_t key = drop_key(p, L, ls);
        float keep = (float)(1.0 / (1.0 - L->dropout));
        for (int64_t j = 0; j < N * I; j++)
            if (!dropped_at(key, (size_t)j, L->dropout))
                dx[j] += L->mask[j] * keep;
    }
    return FTK_OK;
}

static ftk_status lora_forward(struct ftk_peft *p, const struct ftk_site *s, float *y, const float *x, int64_t N, int train)
{
    struct lora *L = ftk_peft_priv(p);
    struct lora_site *ls = find_site(L, s);
    if (!ls)
        return FTK_OK;
    if (L->dora)
        return dora_forward(p, L, ls, y, x, N, train);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    const float *xd = x;
    if (train)
        FTK_TRY(dropped(p, L, ls, x, N, &xd));
    FTK_TRY(grow(&L->tmp, &L->tmp_cap, (size_t)(N * ls->r), be, ctx));
    /* t (N,r) = xd (N,I) A^T ; y (N,O) += scale * t B^T */
    FTK_TRY(be->gemm(ctx, 0, 1, N, ls->r, s->in, 1.0f, xd, s->in, ls->A, s->in, 0.0f, L->tmp, ls->r));
    FTK_TRY(be->gemm(ctx, 0, 1, N, s->out, ls->r, ls->scale, L->tmp, ls->r, ls->B, ls->r, 1.0f, y, s->out));
    return FTK_OK;
}

static ftk_status lora_backward(struct ftk_peft *p, const struct ftk_site *s, float *dx, const float *dy, const float *x,
                                int64_t N)
{
    struct lora *L = ftk_peft_priv(p);
    struct lora_site *ls = find_site(L, s);
    if (!ls)
        return FTK_OK;
    if (L->dora)
        return dora_backward(p, L, ls, dx, dy, x, N);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    const float *xd;
    FTK_TRY(dropped(p, L, ls, x, N, &xd));
    FTK_TRY(grow(&L->tmp, &L->tmp_cap, (size_t)(2 * N * ls->r), be, ctx));
    float *t = L->tmp, *u = L->tmp + N * ls->r;
    int64_t I = s->in, O = s->out, r = ls->r;
    FTK_TRY(be->gemm(ctx, 0, 1, N, r, I, 1.0f, xd, I, ls->A, I, 0.0f, t, r));          /* t = xd A^T      (N,r) */
    FTK_TRY(be->gemm(ctx, 0, 0, N, r, O, 1.0f, dy, O, ls->B, r, 0.0f, u, r));          /* u = dy B        (N,r) */
    FTK_TRY(be->gemm(ctx, 1, 0, O, r, N, ls->scale, dy, O, t, r, 1.0f, ls->gB, r));     /* dB += s dy^T t  (O,r) */
    FTK_TRY(be->gemm(ctx, 1, 0, r, I, N, ls->scale, u, r, xd, I, 1.0f, ls->gA, I));     /* dA += s u^T xd  (r,I) */
    if (!dx)
        return FTK_OK;
    if (L->dropout <= 0)
        return be->gemm(ctx, 0, 0, N, I, r, ls->scale, u, r, ls->A, I, 1.0f, dx, I);   /* dx += s u A */
    /* with dropout: dx += (s u A) * mask / (1-p), the forward's mask drawn again */
    FTK_TRY(grow(&L->mask, &L->mask_cap, (size_t)(N * I), be, ctx));
    FTK_TRY(be->gemm(ctx, 0, 0, N, I, r, ls->scale, u, r, ls->A, I, 0.0f, L->mask, I));
    uint64_t key = drop_key(p, L, ls);
    float keep = (float)(1.0 / (1.0 - L->dropout));
    for (int64_t j = 0; j < N * I; j++)
        if (!dropped_at(key, (size_t)j, L->dropout))
            dx[j] += L->mask[j] * keep;
    return FTK_OK;
}

/* ---- files -------------------------------------------------------------------------------- */

static ftk_status lora_save(struct ftk_peft *p, const char *dir, const char *base_path)
{
    struct lora *L = ftk_peft_priv(p);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    struct ftk_message msg;
    ftk_message_init(&msg);
    ftk_status st = ftk_message_set_meta(&msg, "format", "pt");
    for (int i = 0; i < L->n && st == FTK_OK; i++) {
        const struct lora_site *ls = &L->sites[i];
        char name[256];
        int64_t sa[2] = {ls->r, ls->s->in}, sb[2] = {ls->s->out, ls->r};
        struct ftk_tensor *t;
        snprintf(name, sizeof name, "base_model.model.%s.lora_A.weight", ls->s->module);
        if ((st = ftk_message_add(&msg, name, FTK_DTYPE_F32, 2, sa, NULL, &t)) == FTK_OK)
            st = be->to_host(ctx, t->data, ls->A, t->nbytes);
        snprintf(name, sizeof name, "base_model.model.%s.lora_B.weight", ls->s->module);
        if (st == FTK_OK && (st = ftk_message_add(&msg, name, FTK_DTYPE_F32, 2, sb, NULL, &t)) == FTK_OK)
            st = be->to_host(ctx, t->data, ls->B, t->nbytes);
        if (L->dora) {   /* peft saves the DoRA magnitude without ".weight" */
            int64_t sm[1] = {ls->s->out};
            snprintf(name, sizeof name, "base_model.model.%s.lora_magnitude_vector", ls->s->module);
            if (st == FTK_OK && (st = ftk_message_add(&msg, name, FTK_DTYPE_F32, 1, sm, NULL, &t)) == FTK_OK)
                st = be->to_host(ctx, t->data, ls->m, t->nbytes);
        }
    }
    char mbuf[256], cand[300];
    snprintf(mbuf, sizeof mbuf, "%s", L->mts);
    for (char *save = NULL, *t = strtok_r(mbuf, ",", &save); t && st == FTK_OK; t = strtok_r(NULL, ",", &save))
        for (int k = 0; mts_name(t, k, cand, sizeof cand) && st == FTK_OK; k++) {
            int64_t numel;
            const float *w = ftk_peft_base_weight(p, cand, &numel);
            if (!w)
                continue;
            const struct ftk_model_config *mc = ftk_peft_config(p);
            int64_t shape[2] = {strstr(cand, "norm") ? numel : numel / mc->C, mc->C};
            char name[400];
            struct ftk_tensor *t2;
            snprintf(name, sizeof name, "base_model.model.%s", cand);
            if ((st = ftk_message_add(&msg, name, FTK_DTYPE_F32, strstr(cand, "norm") ? 1 : 2, shape, NULL, &t2)) == FTK_OK)
                st = be->to_host(ctx, t2->data, w, t2->nbytes);
        }
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    if (st == FTK_OK)
        st = ftk_st_write(path, &msg);
    ftk_message_free(&msg);
    FTK_TRY(st);

    cJSON *c = cJSON_CreateObject(), *tm = cJSON_CreateArray();
    char *buf = strdup(L->targets);
    if (!buf) {
        cJSON_Delete(c);
        cJSON_Delete(tm);
        FTK_FAIL(FTK_E_NOMEM, "out of memory");
    }
    int all = !strcmp(buf, "all") || !strcmp(buf, "all-linear");
    static const char *linear[] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    if (all)
        for (int i = 0; i < 7; i++)
            cJSON_AddItemToArray(tm, cJSON_CreateString(linear[i]));
    else
        for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save))
            cJSON_AddItemToArray(tm, cJSON_CreateString(t));
    free(buf);
    cJSON_AddStringToObject(c, "peft_type", "LORA");
    cJSON_AddStringToObject(c, "task_type", "CAUSAL_LM");
    if (base_path)
        cJSON_AddStringToObject(c, "base_model_name_or_path", base_path);
    else
        cJSON_AddNullToObject(c, "base_model_name_or_path");
    cJSON_AddNumberToObject(c, "r", (double)L->r);
    cJSON_AddNumberToObject(c, "lora_alpha", L->alpha);
    cJSON_AddNumberToObject(c, "lora_dropout", L->dropout);
    cJSON_AddItemToObject(c, "target_modules", tm);
    cJSON_AddBoolToObject(c, "use_rslora", L->rslora);
    cJSON_AddBoolToObject(c, "use_dora", L->dora);
    cJSON_AddStringToObject(c, "bias", "none");
    cJSON_AddBoolToObject(c, "fan_in_fan_out", 0);
    if (strcmp(L->init, "true"))   /* gaussian, pissa, olora: peft runs pissa/olora again on load */
        cJSON_AddStringToObject(c, "init_lora_weights", L->init);
    else
        cJSON_AddBoolToObject(c, "init_lora_weights", 1);
    if (L->niter >= 0) {   /* ftk's own key (peft ignores it, warning): its test matrices' seed */
        char sd[32];
        snprintf(sd, sizeof sd, "%llu", (unsigned long long)L->init_seed);
        cJSON_AddStringToObject(c, "ftk_init_seed", sd);
    }
    cJSON_AddBoolToObject(c, "inference_mode", 1);
    if (L->mts[0]) {
        cJSON *mt = cJSON_CreateArray();
        char b2[256];
        snprintf(b2, sizeof b2, "%s", L->mts);
        for (char *save = NULL, *t = strtok_r(b2, ",", &save); t; t = strtok_r(NULL, ",", &save))
            cJSON_AddItemToArray(mt, cJSON_CreateString(t));
        cJSON_AddItemToObject(c, "modules_to_save", mt);
    } else {
        cJSON_AddNullToObject(c, "modules_to_save");
    }
    cJSON_AddNullToObject(c, "layers_to_transform");
    cJSON *rp = L->rank_pattern ? cJSON_Parse(L->rank_pattern) : NULL, *ap = L->alpha_pattern ? cJSON_Parse(L->alpha_pattern) : NULL;
    cJSON_AddItemToObject(c, "rank_pattern", rp ? rp : cJSON_CreateObject());
    cJSON_AddItemToObject(c, "alpha_pattern", ap ? ap : cJSON_CreateObject());
    cJSON_AddNullToObject(c, "revision");
    char *text = cJSON_Print(c);
    cJSON_Delete(c);
    FTK_FAIL_IF(!text, FTK_E_NOMEM, "out of memory");
    st = ftk_peft_write_config(dir, text);
    free(text);
    return st;
}

static ftk_status lora_load(struct ftk_peft *p, struct ftk_source *src)
{
    struct lora *L = ftk_peft_priv(p);
    struct ftk_st_model *st;
    FTK_TRY(ftk_st_model_open(src, "adapter_model", &st));
    ftk_status s = FTK_OK;
    size_t seen = 0;
    for (int i = 0; i < L->n && s == FTK_OK; i++) {
        struct lora_site *ls = &L->sites[i];
        for (int ab = 0; ab < 2 && s == FTK_OK; ab++) {
            char name[256];
            snprintf(name, sizeof name, "base_model.model.%s.lora_%c.weight", ls->s->module, ab ? 'B' : 'A');
            int64_t want0 = ab ? ls->s->out : ls->r, want1 = ab ? ls->r : ls->s->in;
            if ((s = ftk_peft_load_tensor(p, st, ftk_source_path(src), name, 2, want0, want1, ab ? ls->B : ls->A)) == FTK_OK)
                seen++;
        }
        if (L->dora && s == FTK_OK) {
            char name[256];
            snprintf(name, sizeof name, "base_model.model.%s.lora_magnitude_vector", ls->s->module);
            if ((s = ftk_peft_load_tensor(p, st, ftk_source_path(src), name, 1, ls->s->out, 0, ls->m)) == FTK_OK)
                seen++;
        }
    }
    char mbuf[256], cand[300];
    snprintf(mbuf, sizeof mbuf, "%s", L->mts);
    for (char *save = NULL, *t = strtok_r(mbuf, ",", &save); t && s == FTK_OK; t = strtok_r(NULL, ",", &save))
        for (int k = 0; mts_name(t, k, cand, sizeof cand) && s == FTK_OK; k++) {
            int64_t numel;
            float *w = ftk_peft_base_weight(p, cand, &numel);
            char name[400];
            snprintf(name, sizeof name, "base_model.model.%s", cand);
            if (!w)
                continue;
            int64_t C = ftk_peft_config(p)->C;   /* norm (C); lm_head, embed_tokens (V,C) */
            int norm = strstr(cand, "norm") != NULL;
            if ((s = ftk_peft_load_tensor(p, st, ftk_source_path(src), name, norm ? 1 : 2, norm ? numel : numel / C, C, w)) == FTK_OK)
                seen++;
        }
    if (s == FTK_OK && seen != ftk_st_model_count(st))
        s = ftk_error_set(FTK_E_MISMATCH, __FILE__, __LINE__, "%s: adapter has %zu tensors, the model's LoRA sites take %zu",
                          ftk_source_path(src), ftk_st_model_count(st), seen);
    ftk_st_model_close(st);
    return s;
}

static ftk_status lora_merge(struct ftk_peft *p, const struct ftk_site *s, float *w)
{
    struct lora *L = ftk_peft_priv(p);
    struct lora_site *ls = find_site(L, s);
    if (!ls)
        return FTK_OK;
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    size_t na = (size_t)(ls->r * s->in), nb = (size_t)(s->out * ls->r);
    float *A = malloc(na * sizeof *A), *B = malloc(nb * sizeof *B);
    ftk_status st = A && B ? FTK_OK : ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    if (st == FTK_OK)
        st = be->to_host(ctx, A, ls->A, na * sizeof *A);
    if (st == FTK_OK)
        st = be->to_host(ctx, B, ls->B, nb * sizeof *B);
    if (st == FTK_OK)   /* W (O,I) += scale * B (O,r) A (r,I), in F32 */
        for (int64_t o = 0; o < s->out; o++)
            for (int64_t k = 0; k < ls->r; k++) {
                float b = ls->scale * B[o * ls->r + k];
                for (int64_t i = 0; i < s->in; i++)
                    w[o * s->in + i] += b * A[k * s->in + i];
            }
    if (st == FTK_OK && L->dora)   /* peft DoRA merge: W' = (m / ||W + s B A||_row) (W + s B A) */
        for (int64_t o = 0; o < s->out; o++) {
            double acc = 0;
            for (int64_t i = 0; i < s->in; i++)
                acc += (double)w[o * s->in + i] * w[o * s->in + i];
            float g = ls->m[o] / (float)sqrt(acc);   /* host memory: DoRA runs on the CPU backend */
            for (int64_t i = 0; i < s->in; i++)
                w[o * s->in + i] *= g;
        }
    free(A);
    free(B);
    return st;
}

static void lora_release(struct ftk_peft *p)
{
    struct lora *L = ftk_peft_priv(p);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    be->free(ctx, L->tmp);
    be->free(ctx, L->tmp2);
    be->free(ctx, L->mask);
    be->free(ctx, L->d1);
    be->free(ctx, L->d2);
    be->free(ctx, L->d3);
    be->free(ctx, L->mns);
    free(L->rank_pattern);
    free(L->alpha_pattern);
    free(L->targets);
}

FTK_EXPORT const struct ftk_peft_plugin ftk_peft_plugin = {
    .abi_version = FTK_PEFT_ABI,
    .struct_size = sizeof(struct ftk_peft_plugin),
    .name = "lora",
    .priv_size = sizeof(struct lora),
    .init = lora_init,
    .linear_forward = lora_forward,
    .linear_backward = lora_backward,
    .save = lora_save,
    .load = lora_load,
    .merge = lora_merge,
    .release = lora_release,
    .base_trainable = lora_base_trainable,
};
