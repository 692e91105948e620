/* tests/unit/test_plugin_pissa_fast.c: the lora plugin's PiSSA inits beyond the tiny fixtures
 * (test_plugin_peft_methods checks exact `pissa` against peft's torch.linalg.svd):
 * - on a 1-layer Llama (C 48, k_proj 24 x 48, up_proj 96 x 48: wide and tall) whose q/k/up
 *   weights are U diag(sigma) V^T with known factors and a spectral gap after rank 4:
 *   exact `pissa` gives s B A = U_4 diag(sigma_4) V_4^T, and `pissa_niter_N` (torch.svd_lowrank's
 *   randomised range finder) converges to it as N grows (principal angles and ||s B A - exact||);
 * - the residual property W_res + s B A == W to F32 rounding at every site, for every init;
 * - pissa_niter_N is deterministic for a seed; the seed is saved (ftk_init_seed) and loading the
 *   adapter with another run seed recomputes the same residual; merge-lora folds it into that
 *   residual (merged weights = W_res + s B A, logits = base + adapter).
 * Errors are scale-free: max|got - want| / max|want| or Frobenius ratios. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "check.h"
#include "ftk/fileio.h"
#include "ftk/merge.h"
#include "ftk/message.h"
#include "ftk/model.h"
#include "ftk/safetensors.h"

static const struct ftk_backend *be;
static void *ctx;
static char tmp[64], model_dir[128];

#define C_ 48
#define F_ 96
#define V_ 64
#define R_ 4
#define SCALE 2.0   /* lora_alpha 8 / r 4 */

/* The gapped sites: name, shape, the known factors (filled by make_model). */
struct gapped {
    const char *name;
    int64_t O, I;
    double *U, *S, *V;   /* U (O,k), S (k), V (I,k), k = min(O,I) */
};
static struct gapped sites[] = {
    {"model.layers.0.self_attn.q_proj.weight", C_, C_, NULL, NULL, NULL},
    {"model.layers.0.self_attn.k_proj.weight", 24, C_, NULL, NULL, NULL},
    {"model.layers.0.mlp.up_proj.weight", F_, C_, NULL, NULL, NULL},
};
#define N_SITES 3

static uint64_t mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
static double gauss(uint64_t h)
{
    double u1 = ((double)(mix(h) >> 11) + 0.5) / 9007199254740992.0, u2 = (double)(mix(h + 1) >> 11) / 9007199254740992.0;
    return sqrt(-2 * log(u1)) * cos(2 * M_PI * u2);
}

/* k orthonormal columns (n,k) from Gaussian ones (Gram-Schmidt twice). */
static double *orthonormal(int64_t n, int64_t k, uint64_t seed)
{
    double *x = malloc((size_t)(n * k) * sizeof *x);
    for (int64_t i = 0; i < n * k; i++)
        x[i] = gauss(seed * 1000003 + (uint64_t)i * 2);
    for (int64_t j = 0; j < k; j++) {
        for (int pass = 0; pass < 2; pass++)
            for (int64_t c = 0; c < j; c++) {
                double d = 0;
                for (int64_t i = 0; i < n; i++)
                    d += x[i * k + c] * x[i * k + j];
                for (int64_t i = 0; i < n; i++)
                    x[i * k + j] -= d * x[i * k + c];
            }
        double nn = 0;
        for (int64_t i = 0; i < n; i++)
            nn += x[i * k + j] * x[i * k + j];
        for (int64_t i = 0; i < n; i++)
            x[i * k + j] /= sqrt(nn);
    }
    return x;
}

/* sigma: 8, 7, 6, 5, then 1.5 * 0.9^j: sigma_5 / sigma_4 = 0.3 */
static double sigma_of(int64_t j) { return j < R_ ? 8.0 - (double)j : 1.5 * pow(0.9, (double)(j - R_)); }

static struct gapped *gapped_site(const char *name)
{
    for (int i = 0; i < N_SITES; i++)
        if (!strcmp(sites[i].name, name))
            return &sites[i];
    return NULL;
}

/* A 1-layer Llama in tmp/model: random weights, the gapped sites U diag(S) V^T. */
static int make_model(void)
{
    snprintf(model_dir, sizeof model_dir, "%s/model", tmp);
    if (mkdir(model_dir, 0777) != 0)
        return 0;
    char p[256];
    snprintf(p, sizeof p, "%s/config.json", model_dir);
    FILE *f = fopen(p, "w");
    if (!f)
        return 0;
    fprintf(f, "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": %d, "
               "\"intermediate_size\": %d, \"num_hidden_layers\": 1, \"num_attention_heads\": 4, \"num_key_value_heads\": 2, "
               "\"head_dim\": 12, \"vocab_size\": %d, \"max_position_embeddings\": 64, \"rms_norm_eps\": 1e-06, "
               "\"rope_theta\": 10000.0, \"tie_word_embeddings\": false, \"attention_bias\": false, \"mlp_bias\": false, "
               "\"hidden_act\": \"silu\", \"torch_dtype\": \"float32\", \"bos_token_id\": 1, \"eos_token_id\": 2}\n",
            C_, F_, V_);
    fclose(f);
    static const struct { const char *name; int64_t d0, d1; } t[] = {
        {"model.embed_tokens.weight", V_, C_}, {"model.layers.0.input_layernorm.weight", C_, 0},
        {"model.layers.0.self_attn.q_proj.weight", C_, C_}, {"model.layers.0.self_attn.k_proj.weight", 24, C_},
        {"model.layers.0.self_attn.v_proj.weight", 24, C_}, {"model.layers.0.self_attn.o_proj.weight", C_, C_},
        {"model.layers.0.post_attention_layernorm.weight", C_, 0}, {"model.layers.0.mlp.gate_proj.weight", F_, C_},
        {"model.layers.0.mlp.up_proj.weight", F_, C_}, {"model.layers.0.mlp.down_proj.weight", C_, F_},
        {"model.norm.weight", C_, 0}, {"lm_head.weight", V_, C_}};
    struct ftk_message msg;
    ftk_message_init(&msg);
    ftk_status s = ftk_message_set_meta(&msg, "format", "pt");
    for (size_t i = 0; i < sizeof t / sizeof *t && s == FTK_OK; i++) {
        int64_t shape[2] = {t[i].d0, t[i].d1};
        struct ftk_tensor *x;
        if ((s = ftk_message_add(&msg, t[i].name, FTK_DTYPE_F32, t[i].d1 ? 2 : 1, shape, NULL, &x)) != FTK_OK)
            break;
        float *w = x->data;
        int64_t n = t[i].d0 * (t[i].d1 ? t[i].d1 : 1);
        struct gapped *g = gapped_site(t[i].name);
        if (!t[i].d1) {
            for (int64_t j = 0; j < n; j++)
                w[j] = 1.0f;
        } else if (!g) {
            for (int64_t j = 0; j < n; j++)
                w[j] = (float)(0.1 * gauss(i * 7919 + (uint64_t)j * 2 + 12345));
        } else {
            int64_t O = g->O, I = g->I, k = O < I ? O : I;
            g->U = orthonormal(O, k, i * 2 + 1);
            g->V = orthonormal(I, k, i * 2 + 2);
            g->S = malloc((size_t)k * sizeof *g->S);
            for (int64_t j = 0; j < k; j++)
                g->S[j] = sigma_of(j);
            for (int64_t o = 0; o < O; o++)
                for (int64_t c = 0; c < I; c++) {
                    double d = 0;
                    for (int64_t j = 0; j < k; j++)
                        d += g->U[o * k + j] * g->S[j] * g->V[c * k + j];
                    w[o * I + c] = (float)d;
                }
        }
    }
    snprintf(p, sizeof p, "%s/model.safetensors", model_dir);
    if (s == FTK_OK)
        s = ftk_st_write(p, &msg);
    ftk_message_free(&msg);
    CHECK_OK(s);
    return s == FTK_OK;
}

static struct ftk_model *load_base(void)
{
    struct ftk_model *m = NULL;
    CHECK_OK(ftk_model_load(model_dir, be, ctx, &m));
    return m;
}

/* The base model with lora (r 4, alpha 8, q/k/up) and init_lora_weights=init, run seed `seed`. */
static struct ftk_model *with_init(const char *init, uint64_t seed)
{
    struct ftk_model *m = load_base();
    const struct ftk_peft_plugin *pl;
    const struct ftk_kv opts[] = {{"r", "4"}, {"lora_alpha", "8"}, {"target_modules", "q_proj,k_proj,up_proj"},
                                  {"init_lora_weights", init}, {NULL, NULL}};
    CHECK_OK(ftk_plugin_load_peft("lora", &pl));
    ftk_status s = m ? ftk_model_set_peft(m, pl, opts, seed, NULL) : FTK_E_INVALID;
    CHECK_OK(s);
    if (s != FTK_OK) {
        ftk_model_free(m);
        return NULL;
    }
    return m;
}

/* lora_A / lora_B of the site whose base weight is `wname`. */
static void ab_of(struct ftk_model *m, const char *wname, struct ftk_param **A, struct ftk_param **B)
{
    char mod[256], n[300];
    snprintf(mod, sizeof mod, "%s", wname);
    *strstr(mod, ".weight") = '\0';
    snprintf(n, sizeof n, "base_model.model.%s.lora_A.weight", mod);
    *A = ftk_model_find_param(m, n);
    snprintf(n, sizeof n, "base_model.model.%s.lora_B.weight", mod);
    *B = ftk_model_find_param(m, n);
    CHECK(*A && *B);
}

/* s B A (O,I) in f64 */
static double *sba(const struct ftk_param *A, const struct ftk_param *B)
{
    int64_t r = A->shape[0], I = A->shape[1], O = B->shape[0];
    double *d = calloc((size_t)(O * I), sizeof *d);
    for (int64_t o = 0; o < O; o++)
        for (int64_t k = 0; k < r; k++)
            for (int64_t i = 0; i < I; i++)
                d[o * I + i] += SCALE * (double)B->w[o * r + k] * A->w[k * I + i];
    return d;
}

/* ||x - y||_F / ||y||_F */
static double frob_rel(const double *x, const double *y, int64_t n)
{
    double a = 0, b = 0;
    for (int64_t i = 0; i < n; i++) {
        a += (x[i] - y[i]) * (x[i] - y[i]);
        b += y[i] * y[i];
    }
    return sqrt(a / b);
}

/* sqrt(sum of sin^2 of the principal angles) between span(cols of X (n,r)) and span(cols of
 * the orthonormal Q (n,k), first r) = sqrt(r - ||Q_r^T Xo||_F^2), Xo = X with orthonormalised
 * columns (those of B and A^T are orthogonal: U sqrt(S), V sqrt(S)). */
static double angles(const float *X, int xt, const double *Q, int64_t n, int64_t k)
{
    double *xo = malloc((size_t)(n * R_) * sizeof *xo), f = 0;
    for (int64_t c = 0; c < R_; c++) {
        double nn = 0;
        for (int64_t i = 0; i < n; i++) {
            double v = xt ? X[c * n + i] : X[i * R_ + c];
            xo[i * R_ + c] = v;
            nn += v * v;
        }
        for (int64_t i = 0; i < n; i++)
            xo[i * R_ + c] /= sqrt(nn);
    }
    for (int64_t a = 0; a < R_; a++)
        for (int64_t c = 0; c < R_; c++) {
            double d = 0;
            for (int64_t i = 0; i < n; i++)
                d += Q[i * k + a] * xo[i * R_ + c];
            f += d * d;
        }
    free(xo);
    return sqrt(fmax(0.0, (double)R_ - f));
}

/* max|W_res + s B A - W| / max|W| at every gapped site, W the checkpoint's */
static double residual_err(struct ftk_model *m, const struct ftk_st_model *base)
{
    double worst = 0;
    for (int s = 0; s < N_SITES; s++) {
        struct ftk_param *A, *B, *W = ftk_model_find_param(m, sites[s].name);
        ab_of(m, sites[s].name, &A, &B);
        const struct ftk_tensor *t = ftk_st_model_find(base, sites[s].name);
        if (!W || !A || !B || !t) {
            CHECK(0);
            continue;
        }
        const float *w0 = t->data;
        int64_t r = A->shape[0], I = A->shape[1], O = B->shape[0];
        double md = 0, mw = 0;
        for (int64_t o = 0; o < O; o++)
            for (int64_t i = 0; i < I; i++) {
                float d = 0;
                for (int64_t k = 0; k < r; k++)
                    d += B->w[o * r + k] * A->w[k * I + i];
                md = fmax(md, fabs((double)(W->w[o * I + i] + (float)SCALE * d) - w0[o * I + i]));
                mw = fmax(mw, fabs(w0[o * I + i]));
            }
        worst = fmax(worst, md / mw);
    }
    return worst;
}

static int same(const float *a, const float *b, int64_t n) { return !memcmp(a, b, (size_t)n * sizeof *a); }

/* every base weight and lora tensor of m and r bitwise equal */
static int same_model(struct ftk_model *m, struct ftk_model *r)
{
    int ok = 1;
    for (int s = 0; s < N_SITES; s++) {
        struct ftk_param *A, *B, *A2, *B2, *W = ftk_model_find_param(m, sites[s].name), *W2 = ftk_model_find_param(r, sites[s].name);
        ab_of(m, sites[s].name, &A, &B);
        ab_of(r, sites[s].name, &A2, &B2);
        ok = ok && W && W2 && A && A2 && B && B2 && same(W->w, W2->w, W->numel) && same(A->w, A2->w, A->numel) &&
             same(B->w, B2->w, B->numel);
    }
    return ok;
}

static float *logits_of(struct ftk_model *m, int64_t *n)
{
    static int32_t ids[16], pos[16];
    for (int i = 0; i < 16; i++) {
        ids[i] = (int32_t)(3 + (i * 37) % (V_ - 3));
        pos[i] = i % 8;
    }
    struct ftk_batch_view b = {.B = 2, .T = 8, .input_ids = ids, .position_ids = pos};
    *n = 16 * V_;
    float *l = malloc((size_t)*n * sizeof *l);
    CHECK_OK(ftk_model_logits(m, &b, l));
    return l;
}

static double rel_err(const float *got, const float *want, int64_t n)
{
    double md = 0, mw = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        if (!(d <= md)) md = d;
        if (fabs(want[i]) > mw) mw = fabs(want[i]);
    }
    return md / (mw > 1e-30 ? mw : 1e-30);
}

int main(void)
{
    be = ftk_backend_cpu();
    struct ftk_backend_opts o = {.struct_size = sizeof o, .threads = 1};
    if (be->create(&o, &ctx) != FTK_OK) {
        printf("cannot create the cpu backend: %s\n", ftk_last_error());
        return 1;
    }
    snprintf(tmp, sizeof tmp, "/tmp/ftk_pissa_fast_XXXXXX");
    if (!mkdtemp(tmp) || !make_model()) {
        printf("cannot write the test model in %s\n", tmp);
        return 1;
    }
    char p[256];
    snprintf(p, sizeof p, "%s/model.safetensors", model_dir);
    struct ftk_st_model *base = NULL;
    CHECK_OK(ftk_st_file_open(p, &base));

    /* s B A of the exact init, per site, for the convergence test */
    double *exact[N_SITES] = {0};
    TEST("exact pissa: s B A = U_r diag(S_r) V_r^T of the known factors (q 48x48, k 24x48, up 96x48)") {
        struct ftk_model *m = with_init("pissa", 42);
        double worst = 0;
        for (int s = 0; m && s < N_SITES; s++) {
            struct ftk_param *A, *B;
            ab_of(m, sites[s].name, &A, &B);
            int64_t O = sites[s].O, I = sites[s].I, k = O < I ? O : I;
            double *want = calloc((size_t)(O * I), sizeof *want);
            for (int64_t oo = 0; oo < O; oo++)
                for (int64_t i = 0; i < I; i++)
                    for (int64_t j = 0; j < R_; j++)
                        want[oo * I + i] += sites[s].U[oo * k + j] * sites[s].S[j] * sites[s].V[i * k + j];
            exact[s] = sba(A, B);
            worst = fmax(worst, frob_rel(exact[s], want, O * I));
            free(want);
        }
        double res = m ? residual_err(m, base) : NAN;
        printf("  ||s B A - U_r S_r V_r^T||_F / ||U_r S_r V_r^T||_F worst %.2e; residual max|W_res + s B A - W| / max|W| %.2e\n",
               worst, res);
        CHECK(worst <= 1e-6);
        CHECK(res <= 1e-6);
        ftk_model_free(m);
    }

    TEST("pissa_niter_N converges to the exact top-r subspace as N grows (gap sigma_5/sigma_4 = 0.3)") {
        static const int ns[] = {0, 1, 2, 4, 8, 16};
        double prev_e = INFINITY, prev_a = INFINITY, e16 = NAN, a16 = NAN;
        for (size_t t = 0; t < sizeof ns / sizeof *ns; t++) {
            char init[32];
            snprintf(init, sizeof init, "pissa_niter_%d", ns[t]);
            struct ftk_model *m = with_init(init, 42);
            if (!m)
                continue;
            double e = 0, ang = 0;
            for (int s = 0; s < N_SITES; s++) {
                struct ftk_param *A, *B;
                ab_of(m, sites[s].name, &A, &B);
                int64_t O = sites[s].O, I = sites[s].I, k = O < I ? O : I;
                double *d = sba(A, B);
                if (exact[s])
                    e = fmax(e, frob_rel(d, exact[s], O * I));
                free(d);
                ang = fmax(ang, angles(B->w, 0, sites[s].U, O, k));   /* left: B's columns */
                ang = fmax(ang, angles(A->w, 1, sites[s].V, I, k));   /* right: A's rows */
            }
            double res = residual_err(m, base);
            printf("  N=%-2d ||s B A - exact||_F / ||exact||_F %.2e, sqrt(sum sin^2 angles) %.2e, residual %.2e\n", ns[t], e, ang,
                   res);
            CHECK(res <= 1e-6);
            if (prev_e > 1e-6)   /* until F32 rounding: each step shrinks it (by about 0.3^2 per iteration) */
                CHECK(e < prev_e);
            if (prev_a > 1e-6)
                CHECK(ang < prev_a);
            prev_e = e;
            prev_a = ang;
            if (ns[t] == 16) {
                e16 = e;
                a16 = ang;
            }
            if (ns[t] == 0)
                CHECK(e > 1e-2);   /* no iteration: visibly approximate */
            ftk_model_free(m);
        }
        CHECK(e16 <= 1e-5);
        CHECK(a16 <= 1e-5);
    }

    TEST("pissa_niter_N is deterministic for a seed; another seed draws another test matrix") {
        struct ftk_model *a = with_init("pissa_niter_1", 7), *b = with_init("pissa_niter_1", 7), *c = with_init("pissa_niter_1", 8);
        if (a && b && c) {
            CHECK(same_model(a, b));
            CHECK(!same_model(a, c));
            CHECK(residual_err(c, base) <= 1e-6);
        }
        ftk_model_free(a);
        ftk_model_free(b);
        ftk_model_free(c);
    }

    TEST("save/load: the seed is saved, loading (run seed 0) recomputes the same residual; merge-lora folds into it") {
        char ad[128], out[128];
        snprintf(ad, sizeof ad, "%s/adapter", tmp);
        snprintf(out, sizeof out, "%s/merged", tmp);
        CHECK(mkdir(ad, 0777) == 0);
        struct ftk_model *m = with_init("pissa_niter_2", 1234567890123ull);
        if (m) {
            for (size_t i = 0; i < ftk_model_n_trainable(m); i++) {   /* "training": A, B move away from the init */
                struct ftk_param *q = ftk_model_trainable(m, i);
                for (int64_t j = 0; j < q->numel; j++)
                    q->w[j] += 0.01f * (float)((j % 7) - 3);
            }
            struct ftk_peft *pf = ftk_model_peft(m);
            CHECK_OK(ftk_peft_get_plugin(pf)->save(pf, ad, model_dir));
            char cfg[300], *text = NULL;
            size_t len;
            snprintf(cfg, sizeof cfg, "%s/adapter_config.json", ad);
            CHECK_OK(ftk_file_read_all(cfg, &text, &len));
            CHECK(text && strstr(text, "\"init_lora_weights\":\t\"pissa_niter_2\""));
            CHECK(text && strstr(text, "\"ftk_init_seed\":\t\"1234567890123\""));
            free(text);
            struct ftk_model *r = load_base();
            if (r) {
                CHECK_OK(ftk_model_load_adapter(r, ad, 0));
                CHECK(same_model(m, r));   /* residual, A and B bitwise */
                int64_t n;
                float *l1 = logits_of(m, &n), *l2 = logits_of(r, &n);
                CHECK(same(l1, l2, n));
                free(l1);
                free(l2);
            }
            struct ftk_merge_opts mo = {.model = model_dir, .adapter = ad, .output = out, .dtype = "float32"};
            struct ftk_merge_stats ms;
            ftk_status st = ftk_merge_lora(&mo, &ms);
            if (st == FTK_E_UNSUPPORTED) {
                printf("  merge-lora refuses: %s\n", ftk_last_error());
            } else {
                CHECK_OK(st);
                struct ftk_st_model *mg = NULL;
                snprintf(p, sizeof p, "%s/model.safetensors", out);
                CHECK_OK(ftk_st_file_open(p, &mg));
                double worst = 0;
                for (int s = 0; r && mg && s < N_SITES; s++) {   /* merged = W_res + s B A */
                    struct ftk_param *A, *B, *W = ftk_model_find_param(r, sites[s].name);
                    ab_of(r, sites[s].name, &A, &B);
                    const struct ftk_tensor *t = ftk_st_model_find(mg, sites[s].name);
                    double *d = sba(A, B);
                    float *want = malloc((size_t)W->numel * sizeof *want);
                    for (int64_t j = 0; j < W->numel; j++)
                        want[j] = (float)(W->w[j] + d[j]);
                    if (t)
                        worst = fmax(worst, rel_err(t->data, want, W->numel));
                    CHECK(t != NULL);
                    free(d);
                    free(want);
                }
                struct ftk_model *g = NULL;
                CHECK_OK(ftk_model_load(out, be, ctx, &g));
                double el = NAN;
                if (g && r) {
                    int64_t n;
                    float *l1 = logits_of(r, &n), *l2 = logits_of(g, &n);
                    el = rel_err(l2, l1, n);
                    free(l1);
                    free(l2);
                }
                printf("  merge-lora: %lld tensors merged, weights vs W_res + s B A %.2e, logits vs base + adapter %.2e\n",
                       (long long)ms.merged, worst, el);
                CHECK(worst <= 1e-6);
                CHECK(el <= 1e-5);
                ftk_model_free(g);
                ftk_st_model_close(mg);
            }
            ftk_model_free(r);
        }
        ftk_model_free(m);
    }

    TEST("bad pissa_niter_N and ftk_init_seed are errors naming them") {
        const struct ftk_peft_plugin *pl;
        CHECK_OK(ftk_plugin_load_peft("lora", &pl));
        static const char *bad[][2] = {{"pissa_niter_-1", "pissa_niter_-1"}, {"pissa_niter_", "pissa_niter_"},
                                       {"pissa_niter_4x", "pissa_niter_4x"}};
        for (int i = 0; i < 3; i++) {
            struct ftk_model *m = load_base();
            const struct ftk_kv kv[] = {{"r", "4"}, {"init_lora_weights", bad[i][0]}, {NULL, NULL}};
            if (m)
                CHECK_ERR(ftk_model_set_peft(m, pl, kv, 0, NULL), FTK_E_INVALID, bad[i][1]);
            ftk_model_free(m);
        }
        struct ftk_model *m = load_base();
        const struct ftk_kv kv[] = {{"r", "4"}, {"init_lora_weights", "pissa_niter_2"}, {"ftk_init_seed", "x1"}, {NULL, NULL}};
        if (m)
            CHECK_ERR(ftk_model_set_peft(m, pl, kv, 0, NULL), FTK_E_INVALID, "ftk_init_seed=x1");
        ftk_model_free(m);
    }

    ftk_st_model_close(base);
    for (int s = 0; s < N_SITES; s++) {
        free(exact[s]);
        free(sites[s].U);
        free(sites[s].S);
        free(sites[s].V);
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0)
        printf("could not remove %s\n", tmp);
    be->destroy(ctx);
    return check_summary();
}
