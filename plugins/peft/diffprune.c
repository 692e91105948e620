/* plugins/peft/diffprune.c: diff pruning (Guo, Rush, Kim 2021, "Parameter-Efficient Transfer
 * Learning with Diff Pruning") at the `linear` hook. Every targeted weight W0 (O,I) gets a diff
 *   delta = z ⊙ w,   W = W0 + delta,   y = x W0^T + b + x delta^T
 * with w (O,I) trained (initialised to 0, as the authors' code) and z (O,I) hard-concrete gates
 * of logits alpha (O,I) (hard_concrete.h: Louizos et al. 2018), sampled per optimizer step in
 * training and deterministic (z_hat) in evaluation. The L0 relaxation
 *   lambda * sum_i sigmoid(alpha_i - beta log(-gamma/zeta))
 * is added to the step's loss, and its gradient to alpha, in before_update. Gradients through
 * z follow Louizos exactly: d delta_i / d alpha_i = w_i dz_i/dalpha_i, zero where the gate is
 * clamped at 0 or 1.
 *
 * structured=true (the paper's structured diff pruning, section 3.3, grouped per weight matrix
 * as the authors' per_params_alpha): one more gate z_g per site, delta = z_g z ⊙ w, and the
 * expected L0 is sum_i P(z_i != 0) P(z_g != 0).
 *
 * Magnitude projection (the paper's L0-ball projection): after the update of step
 * projection_step, the deterministic diffs of all sites are pruned to the target_sparsity
 * fraction of largest |delta| (one global top-k); from then on the mask is fixed, delta = w on
 * the kept entries (the paper's fine-tuning with a fixed mask), and the L0 penalty is off.
 *
 * Saved format (ftk's own: peft has no diff pruning), docs/peft-methods.md: before the
 * projection the training state, base_model.model.<module>.diff_w and .diff_alpha (O,I) F32
 * (+ .diff_alpha_group (1) when structured), from which delta = z_hat ⊙ w; after it the sparse
 * diff, .diff_indices I32 (k) flat o*I+i, strictly increasing, and .diff_values F32 (k).
 * adapter_config.json: peft_type "DIFF_PRUNING" and every option.
 *
 * The elementwise parts (gates, projection) run on the host: the CPU backend only for now.
 * Shapes: N tokens, I in, O out. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include "ftk/fileio.h"
#include "ftk/plugin.h"
#include "ftk/safetensors.h"
#include "hard_concrete.h"

#define MAX_SITES 4096

struct dp_site {
    const struct ftk_site *s;
    float *w, *gw;             /* (O,I) the diff's values, its gradient */
    float *a, *ga;             /* (O,I) the gates' logits log alpha, its gradient */
    float *ag, *gag;           /* (1) the group gate's logit (structured), or NULL */
    int32_t *keep;             /* after the projection: kept flat indices o*I+i, increasing */
    int64_t n_keep;
};

struct diffprune {
    char *targets;              /* any length: a regex target_modules arrives as every module's name */
    struct hc_params hc;
    double lambda;             /* sparsity_pen */
    double alpha_init, alpha_lr_ratio;
    int structured;
    double target;             /* target_sparsity: fraction of entries kept (0: none) */
    int64_t proj_step;         /* projection_step (-1: none) */
    int cfg_projected;         /* the options say the adapter was saved projected */
    int projected;             /* the mask is fixed: delta = w on keep */
    struct dp_site sites[MAX_SITES];
    int n;
    float *delta, *gd;         /* (O,I) scratch: the site's delta, dy^T x */
    size_t delta_cap, gd_cap;
};

/* peft: a module matches a target when its name equals it or ends with "." + target */
static int in_list(const char *list, const struct ftk_site *s)
{
    const char *name = ftk_linear_name(s->kind);
    if (!strcmp(list, "all") || !strcmp(list, "all-linear"))
        return s->kind != FTK_LIN_LM_HEAD;
    size_t m = strlen(s->module);
    for (const char *t = list; *t;) {   /* no copy: the list has any length */
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
    be->free(ctx, *p);
    *p = NULL;
    *cap = 0;
    FTK_TRY(be->alloc(ctx, n * sizeof(float), (void **)p));
    *cap = n;
    return FTK_OK;
}

/* The options, and the adapter_config.json keys that are bookkeeping, not options. */
static const char *const known_opts[] = {
    "target_modules", "sparsity_pen", "concrete_lower", "concrete_upper", "temperature", "alpha_init", "alpha_lr_ratio",
    "structured", "target_sparsity", "projection_step", "projected",
    "peft_type", "task_type", "base_model_name_or_path", "format", "inference_mode", "revision", NULL};

static ftk_status check_known(const struct ftk_kv *o)
{
    for (; o && o->key; o++) {
        int ok = 0;
        for (const char *const *k = known_opts; *k && !ok; k++)
            ok = !strcmp(*k, o->key);
        FTK_FAIL_IF(!ok, FTK_E_INVALID, "diffprune: unknown option \"%s\" (options: target_modules, sparsity_pen, "
                    "concrete_lower, concrete_upper, temperature, alpha_init, alpha_lr_ratio, structured, target_sparsity, "
                    "projection_step)", o->key);
    }
    return FTK_OK;
}

static ftk_status dp_init(struct ftk_peft *p, const struct ftk_kv *o)
{
    struct diffprune *S = ftk_peft_priv(p);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    FTK_TRY(check_known(o));
    const char *pt = ftk_kv_get(o, "peft_type");   /* an adapter_config.json's: it must be this method's */
    FTK_FAIL_IF(pt && strcmp(pt, "DIFF_PRUNING"), FTK_E_INVALID, "peft_type %s given to the diffprune plugin", pt);
    FTK_TRY(ftk_kv_double(o, "sparsity_pen", 1.25e-7, &S->lambda));
    FTK_TRY(ftk_kv_double(o, "concrete_lower", -1.5, &S->hc.gamma));
    FTK_TRY(ftk_kv_double(o, "concrete_upper", 1.5, &S->hc.zeta));
    FTK_TRY(ftk_kv_double(o, "temperature", 1.0, &S->hc.beta));
    FTK_TRY(ftk_kv_double(o, "alpha_init", 5.0, &S->alpha_init));
    FTK_TRY(ftk_kv_double(o, "alpha_lr_ratio", 1e4, &S->alpha_lr_ratio));
    FTK_TRY(ftk_kv_bool(o, "structured", 0, &S->structured));
    FTK_TRY(ftk_kv_double(o, "target_sparsity", 0.0, &S->target));
    FTK_TRY(ftk_kv_int(o, "projection_step", -1, &S->proj_step));
    FTK_TRY(ftk_kv_bool(o, "projected", 0, &S->cfg_projected));
    FTK_FAIL_IF(S->lambda < 0, FTK_E_INVALID, "diffprune: sparsity_pen=%g must be >= 0", S->lambda);
    FTK_FAIL_IF(!(S->hc.gamma < 0), FTK_E_INVALID, "diffprune: concrete_lower=%g must be < 0 (the gate's stretch below 0)",
                S->hc.gamma);
    FTK_FAIL_IF(!(S->hc.zeta > 1), FTK_E_INVALID, "diffprune: concrete_upper=%g must be > 1 (the gate's stretch above 1)",
                S->hc.zeta);
    FTK_FAIL_IF(!(S->hc.beta > 0), FTK_E_INVALID, "diffprune: temperature=%g must be > 0", S->hc.beta);
    FTK_FAIL_IF(!(S->alpha_lr_ratio > 0), FTK_E_INVALID, "diffprune: alpha_lr_ratio=%g must be > 0", S->alpha_lr_ratio);
    const char *ts = ftk_kv_get(o, "target_sparsity"), *ps = ftk_kv_get(o, "projection_step");
    FTK_FAIL_IF(ts && !(S->target > 0 && S->target <= 1), FTK_E_INVALID,
                "diffprune: target_sparsity=%g must be in (0, 1] (the fraction of the diff's entries kept, 0.005 = 0.5%%)",
                S->target);
    FTK_FAIL_IF(ps && S->proj_step < 0, FTK_E_INVALID, "diffprune: projection_step=%lld must be >= 0 (a 0-based step)",
                (long long)S->proj_step);
    FTK_FAIL_IF(ts && !ps && !S->cfg_projected, FTK_E_INVALID,
                "diffprune: target_sparsity needs projection_step (the 0-based optimizer step after whose update the diff "
                "is projected; the run's last step projects at the end of training)");
    FTK_FAIL_IF(ps && !ts, FTK_E_INVALID, "diffprune: projection_step needs target_sparsity");
    FTK_FAIL_IF(strcmp(be->name, "cpu"), FTK_E_UNSUPPORTED, "diffprune on the %s backend is not implemented yet", be->name);
    const char *t = ftk_kv_get(o, "target_modules");
    FTK_FAIL_IF(!(S->targets = strdup(t ? t : "all")), FTK_E_NOMEM, "out of memory");

    for (size_t i = 0; i < ftk_peft_n_sites(p); i++) {
        const struct ftk_site *s = ftk_peft_site(p, i);
        if (!in_list(S->targets, s))
            continue;
        FTK_FAIL_IF(s->kind == FTK_LIN_LM_HEAD, FTK_E_UNSUPPORTED, "diffprune on lm_head is not supported yet");
        FTK_FAIL_IF(S->n == MAX_SITES, FTK_E_UNSUPPORTED, "more than %d diffprune sites", MAX_SITES);
        FTK_FAIL_IF(s->out * s->in > INT32_MAX, FTK_E_UNSUPPORTED, "diffprune: %s has more than 2^31 weights", s->module);
        struct dp_site *ds = &S->sites[S->n++];
        ds->s = s;
        char name[300];
        int64_t shape[2] = {s->out, s->in}, one[1] = {1};
        snprintf(name, sizeof name, "base_model.model.%s.diff_w", s->module);
        FTK_TRY(ftk_peft_add_param(p, name, 2, shape, 1, &ds->w, &ds->gw));
        snprintf(name, sizeof name, "base_model.model.%s.diff_alpha", s->module);
        FTK_TRY(ftk_peft_add_param(p, name, 2, shape, 0, &ds->a, &ds->ga));
        FTK_TRY(ftk_peft_set_lr_scale(p, name, (float)S->alpha_lr_ratio));
        for (int64_t j = 0; j < s->out * s->in; j++)   /* host memory: the CPU backend */
            ds->a[j] = (float)S->alpha_init;
        if (S->structured) {
            snprintf(name, sizeof name, "base_model.model.%s.diff_alpha_group", s->module);
            FTK_TRY(ftk_peft_add_param(p, name, 1, one, 0, &ds->ag, &ds->gag));
            FTK_TRY(ftk_peft_set_lr_scale(p, name, (float)S->alpha_lr_ratio));
            ds->ag[0] = (float)S->alpha_init;
        }
        FTK_TRY(ftk_peft_attach(p, s));
    }
    FTK_FAIL_IF(S->n == 0, FTK_E_INVALID, "diffprune: target_modules=%s matches no linear layer", S->targets);
    return FTK_OK;
}

static struct dp_site *find_site(struct diffprune *S, const struct ftk_site *s)
{
    for (int i = 0; i < S->n; i++)
        if (S->sites[i].s == s)
            return &S->sites[i];
    return NULL;
}

/* The gates' key for this step (training) */
static uint64_t key_of(struct ftk_peft *p, const struct dp_site *ds)
{
    return hc_key(ftk_peft_seed(p), (int64_t)ftk_peft_noise_step(p), ds->s->layer, (int)ds->s->kind);
}

/* The group gate (1 when not structured) and its derivative. */
static double group_gate(const struct diffprune *S, const struct dp_site *ds, int train, uint64_t key, double *dzg)
{
    *dzg = 0;
    if (!ds->ag)
        return 1;
    if (!train)
        return hc_z_hat(ds->ag[0], &S->hc);
    return hc_z(ds->ag[0], hc_u(key, (uint64_t)(ds->s->out * ds->s->in)), &S->hc, dzg);
}

/* S->delta (O,I) = the site's diff: z ⊙ w (z sampled when train, else z_hat), or w on the
 * kept entries once projected. */
static ftk_status build_delta(struct ftk_peft *p, struct diffprune *S, const struct dp_site *ds, int train)
{
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t n = ds->s->out * ds->s->in;
    FTK_TRY(grow(&S->delta, &S->delta_cap, (size_t)n, be, ctx));
    float *d = S->delta;
    if (S->projected) {
        memset(d, 0, (size_t)n * sizeof *d);
        for (int64_t t = 0; t < ds->n_keep; t++)
            d[ds->keep[t]] = ds->w[ds->keep[t]];
        return FTK_OK;
    }
    uint64_t key = train ? key_of(p, ds) : 0;
    double dzg, zg = group_gate(S, ds, train, key, &dzg), dz;
    for (int64_t j = 0; j < n; j++) {
        double z = train ? hc_z(ds->a[j], hc_u(key, (uint64_t)j), &S->hc, &dz) : hc_z_hat(ds->a[j], &S->hc);
        d[j] = (float)(z * zg * ds->w[j]);
    }
    return FTK_OK;
}

/* y (N,O) += x (N,I) delta^T */
static ftk_status dp_forward(struct ftk_peft *p, const struct ftk_site *s, float *y, const float *x, int64_t N, int train)
{
    struct diffprune *S = ftk_peft_priv(p);
    struct dp_site *ds = find_site(S, s);
    if (!ds)
        return FTK_OK;
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    FTK_TRY(build_delta(p, S, ds, train));
    return be->gemm(ctx, 0, 1, N, s->out, s->in, 1.0f, x, s->in, S->delta, s->in, 1.0f, y, s->out);
}

/* G = dy^T x (O,I) is the gradient of delta; dx (N,I) += dy delta; dw += G ⊙ z zg;
 * dalpha_i += G_i w_i zg dz_i; dalpha_g += sum_i G_i w_i z_i dzg. Always after a train forward
 * of the same step: the same gates, drawn once here for delta and the gradients. */
static ftk_status dp_backward(struct ftk_peft *p, const struct ftk_site *s, float *dx, const float *dy, const float *x, int64_t N)
{
    struct diffprune *S = ftk_peft_priv(p);
    struct dp_site *ds = find_site(S, s);
    if (!ds)
        return FTK_OK;
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    int64_t O = s->out, I = s->in, n = O * I;
    FTK_TRY(grow(&S->gd, &S->gd_cap, (size_t)n, be, ctx));
    float *G = S->gd;
    FTK_TRY(be->gemm(ctx, 1, 0, O, I, N, 1.0f, dy, O, x, I, 0.0f, G, I));
    if (S->projected) {
        FTK_TRY(build_delta(p, S, ds, 1));
        for (int64_t t = 0; t < ds->n_keep; t++)
            ds->gw[ds->keep[t]] += G[ds->keep[t]];
    } else {
        FTK_TRY(grow(&S->delta, &S->delta_cap, (size_t)n, be, ctx));
        uint64_t key = key_of(p, ds);
        double dzg, zg = group_gate(S, ds, 1, key, &dzg), dz, gsum = 0;
        for (int64_t j = 0; j < n; j++) {
            double z = hc_z(ds->a[j], hc_u(key, (uint64_t)j), &S->hc, &dz), gwj = (double)G[j] * ds->w[j];
            S->delta[j] = (float)(z * zg * ds->w[j]);
            ds->gw[j] += (float)(G[j] * z * zg);
            ds->ga[j] += (float)(gwj * zg * dz);
            gsum += gwj * z;
        }
        if (ds->gag)
            ds->gag[0] += (float)(gsum * dzg);
    }
    return dx ? be->gemm(ctx, 0, 0, N, I, O, 1.0f, dy, O, S->delta, I, 1.0f, dx, I) : FTK_OK;
}

/* The L0 penalty lambda * sum_i P(z_i != 0) [* P(z_g != 0)] into *loss, its gradient into
 * alpha. Off once the mask is fixed. */
static ftk_status dp_before_update(struct ftk_peft *p, double *loss)
{
    struct diffprune *S = ftk_peft_priv(p);
    if (S->projected || S->lambda == 0)
        return FTK_OK;
    double c = hc_shift(&S->hc), lam = S->lambda, pen = 0;
    for (int i = 0; i < S->n; i++) {
        struct dp_site *ds = &S->sites[i];
        int64_t n = ds->s->out * ds->s->in;
        double pg = ds->ag ? hc_sigmoid(ds->ag[0] - c) : 1, sum = 0;
        for (int64_t j = 0; j < n; j++) {
            double q = hc_sigmoid(ds->a[j] - c);
            sum += q;
            ds->ga[j] += (float)(lam * q * (1 - q) * pg);
        }
        if (ds->gag)
            ds->gag[0] += (float)(lam * pg * (1 - pg) * sum);
        pen += sum * pg;
    }
    *loss += lam * pen;
    return FTK_OK;
}

/* ---- the magnitude projection -------------------------------------------------------------- */

/* |v| as ordered bits: for non-negative floats the IEEE bit patterns sort as the values. */
static uint32_t mag_bits(float v)
{
    float a = fabsf(v);
    uint32_t u;
    memcpy(&u, &a, sizeof u);
    return u;
}

/* Keeps the k = round(target_sparsity * total) entries of largest |z_hat ⊙ w| over all sites
 * (never an entry whose diff is 0; ties at the threshold go to the earlier sites and indices),
 * then fixes the mask: w = the kept diffs, 0 elsewhere. Radix select on the magnitudes' bits
 * (16 high, then 16 low): memory is two histograms, not a copy of the diffs. */
static ftk_status project(struct ftk_peft *p, struct diffprune *S)
{
    int64_t total = 0;
    for (int i = 0; i < S->n; i++)
        total += S->sites[i].s->out * S->sites[i].s->in;
    int64_t k = (int64_t)floor(S->target * (double)total + 0.5);
    int64_t *h = calloc(65536, sizeof *h);
    FTK_FAIL_IF(!h, FTK_E_NOMEM, "out of memory");
    ftk_status st = FTK_OK;
    uint32_t thr = 0;
    int64_t need = k;   /* entries still to take at the current level */
    for (int pass = 0; pass < 2 && st == FTK_OK && need > 0; pass++) {
        memset(h, 0, 65536 * sizeof *h);
        for (int i = 0; i < S->n && st == FTK_OK; i++) {
            const struct dp_site *ds = &S->sites[i];
            if ((st = build_delta(p, S, ds, 0)) != FTK_OK)
                break;
            for (int64_t j = 0; j < ds->s->out * ds->s->in; j++) {
                uint32_t u = mag_bits(S->delta[j]);
                if (u > 0x7F800000u) {
                    st = ftk_error_set(FTK_E_INVALID, __FILE__, __LINE__, "diffprune: projection: %s has a NaN diff at %lld",
                                       ds->s->module, (long long)j);
                    break;
                }
                if (u && (pass == 0 || (u >> 16) == (thr >> 16)))
                    h[pass ? (u & 0xFFFF) : (u >> 16)]++;
            }
        }
        int64_t acc = 0, b = 65535;
        for (; b >= 0 && acc + h[b] < need; b--)
            acc += h[b];
        if (b < 0) {              /* fewer nonzero diffs than k: keep them all */
            need = 0;
            thr = 0;
            break;
        }
        thr = pass ? (thr & 0xFFFF0000u) | (uint32_t)b : (uint32_t)b << 16;
        need -= acc;              /* at the next level, inside bin b; after pass 1: entries == thr to keep */
    }
    free(h);
    FTK_TRY(st);
    if (k == 0)
        thr = UINT32_MAX;         /* above every magnitude: nothing kept */
    int64_t eq_left = need;
    for (int i = 0; i < S->n; i++) {
        struct dp_site *ds = &S->sites[i];
        int64_t n = ds->s->out * ds->s->in, c = 0;
        FTK_TRY(build_delta(p, S, ds, 0));
        int32_t *keep = malloc((size_t)(n > 0 ? n : 1) * sizeof *keep);
        FTK_FAIL_IF(!keep, FTK_E_NOMEM, "out of memory");
        for (int64_t j = 0; j < n; j++) {
            uint32_t u = mag_bits(S->delta[j]);
            if (u > thr || (u == thr && u > 0 && eq_left > 0 && eq_left--))
                keep[c++] = (int32_t)j;
        }
        int32_t *fit = realloc(keep, (size_t)(c > 0 ? c : 1) * sizeof *keep);
        keep = fit ? fit : keep;
        for (int64_t j = 0; j < n; j++)   /* w = the kept diffs, 0 elsewhere */
            ds->w[j] = 0;
        for (int64_t t = 0; t < c; t++)
            ds->w[keep[t]] = S->delta[keep[t]];
        free(ds->keep);
        ds->keep = keep;
        ds->n_keep = c;
    }
    S->projected = 1;
    return FTK_OK;
}

/* Projects at projection_step. Once projected, w outside the mask gets no gradient but AdamW's
 * moments from before the projection still move it: it is set back to 0, so the state in
 * memory is what a checkpoint holds (resumed runs are bit-identical). */
static ftk_status dp_after_update(struct ftk_peft *p, int64_t step)
{
    struct diffprune *S = ftk_peft_priv(p);
    if (!S->projected)
        return S->proj_step >= 0 && step == S->proj_step ? project(p, S) : FTK_OK;
    for (int i = 0; i < S->n; i++) {
        struct dp_site *ds = &S->sites[i];
        int64_t n = ds->s->out * ds->s->in, t = 0;
        for (int64_t j = 0; j < n; j++) {
            if (t < ds->n_keep && ds->keep[t] == j)
                t++;
            else
                ds->w[j] = 0;
        }
    }
    return FTK_OK;
}

/* W (O,I) += delta (deterministic gates, or the fixed mask) */
static ftk_status dp_merge(struct ftk_peft *p, const struct ftk_site *s, float *w)
{
    struct diffprune *S = ftk_peft_priv(p);
    struct dp_site *ds = find_site(S, s);
    if (!ds)
        return FTK_OK;
    FTK_TRY(build_delta(p, S, ds, 0));
    for (int64_t j = 0; j < s->out * s->in; j++)
        w[j] += S->delta[j];
    return FTK_OK;
}

/* ---- files -------------------------------------------------------------------------------- */

struct save_job {
    struct diffprune *S;
    int *site, *what;          /* per entry: site index; 0 w, 1 alpha, 2 group alpha, 3 indices, 4 values */
};

static ftk_status fill_entry(void *arg, size_t i, void *dst, size_t nbytes)
{
    const struct save_job *J = arg;
    const struct dp_site *ds = &J->S->sites[J->site[i]];
    switch (J->what[i]) {
    case 0: memcpy(dst, ds->w, nbytes); break;
    case 1: memcpy(dst, ds->a, nbytes); break;
    case 2: memcpy(dst, ds->ag, nbytes); break;
    case 3: memcpy(dst, ds->keep, nbytes); break;
    default:
        for (int64_t t = 0; t < ds->n_keep; t++)
            ((float *)dst)[t] = ds->w[ds->keep[t]];
        break;
    }
    return FTK_OK;
}

static cJSON *module_list(const struct diffprune *S)
{
    cJSON *tm = cJSON_CreateArray();
    for (int i = 0; i < S->n; i++) {   /* the distinct module kinds, in model order */
        int dup = 0;
        for (int j = 0; j < i; j++)
            dup |= S->sites[j].s->kind == S->sites[i].s->kind;
        if (!dup)
            cJSON_AddItemToArray(tm, cJSON_CreateString(ftk_linear_name(S->sites[i].s->kind)));
    }
    return tm;
}

static ftk_status dp_save(struct ftk_peft *p, const char *dir, const char *base_path)
{
    struct diffprune *S = ftk_peft_priv(p);
    size_t cap = (size_t)S->n * 3;
    struct ftk_st_entry *e = calloc(cap, sizeof *e);
    char (*names)[300] = calloc(cap, sizeof *names);
    int *site = calloc(cap, sizeof *site), *what = calloc(cap, sizeof *what);
    if (!e || !names || !site || !what) {
        free(e), free(names), free(site), free(what);
        FTK_FAIL(FTK_E_NOMEM, "out of memory");
    }
    static const char *const suffix[] = {"diff_w", "diff_alpha", "diff_alpha_group", "diff_indices", "diff_values"};
    size_t n = 0;
    for (int i = 0; i < S->n; i++) {
        const struct dp_site *ds = &S->sites[i];
        for (int k = S->projected ? 3 : 0; k < (S->projected ? 5 : (ds->ag ? 3 : 2)); k++) {
            snprintf(names[n], sizeof names[n], "base_model.model.%s.%s", ds->s->module, suffix[k]);
            e[n].name = names[n];
            e[n].dtype = k == 3 ? FTK_DTYPE_I32 : FTK_DTYPE_F32;
            e[n].ndim = k < 2 ? 2 : 1;
            e[n].shape[0] = k < 2 ? ds->s->out : k == 2 ? 1 : ds->n_keep;
            e[n].shape[1] = k < 2 ? ds->s->in : 0;
            site[n] = i;
            what[n] = k;
            n++;
        }
    }
    struct ftk_message meta;
    ftk_message_init(&meta);
    ftk_status st = ftk_message_set_meta(&meta, "format", "pt");
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    struct save_job job = {S, site, what};
    if (st == FTK_OK)
        st = ftk_st_write_streaming(path, &meta, e, n, fill_entry, &job);
    ftk_message_free(&meta);
    free(e), free(names), free(site), free(what);
    FTK_TRY(st);

    cJSON *c = cJSON_CreateObject();
    cJSON_AddStringToObject(c, "peft_type", "DIFF_PRUNING");
    cJSON_AddStringToObject(c, "task_type", "CAUSAL_LM");
    if (base_path)
        cJSON_AddStringToObject(c, "base_model_name_or_path", base_path);
    else
        cJSON_AddNullToObject(c, "base_model_name_or_path");
    cJSON_AddItemToObject(c, "target_modules", module_list(S));
    cJSON_AddNumberToObject(c, "sparsity_pen", S->lambda);
    cJSON_AddNumberToObject(c, "concrete_lower", S->hc.gamma);
    cJSON_AddNumberToObject(c, "concrete_upper", S->hc.zeta);
    cJSON_AddNumberToObject(c, "temperature", S->hc.beta);
    cJSON_AddNumberToObject(c, "alpha_init", S->alpha_init);
    cJSON_AddNumberToObject(c, "alpha_lr_ratio", S->alpha_lr_ratio);
    cJSON_AddBoolToObject(c, "structured", S->structured);
    if (S->target > 0) {
        cJSON_AddNumberToObject(c, "target_sparsity", S->target);
        cJSON_AddNumberToObject(c, "projection_step", (double)S->proj_step);
    } else {
        cJSON_AddNullToObject(c, "target_sparsity");
        cJSON_AddNullToObject(c, "projection_step");
    }
    cJSON_AddBoolToObject(c, "projected", S->projected);
    cJSON_AddStringToObject(c, "format", S->projected
                            ? "ftk DIFF_PRUNING 1, projected: base_model.model.<module>.diff_indices (I32, flat o*in+i, increasing) "
                              "and .diff_values (F32): W = W0 + the sparse diff (docs/peft-methods.md)"
                            : "ftk DIFF_PRUNING 1: base_model.model.<module>.diff_w and .diff_alpha (F32, out x in): "
                              "W = W0 + z_hat(diff_alpha) * diff_w (docs/peft-methods.md)");
    char *text = cJSON_Print(c);
    cJSON_Delete(c);
    FTK_FAIL_IF(!text, FTK_E_NOMEM, "out of memory");
    st = ftk_peft_write_config(dir, text);
    free(text);
    return st;
}

/* The sparse diff of one site: indices I32 (k) strictly increasing in [0, O*I), values (k). */
static ftk_status load_sparse(struct ftk_peft *p, const struct ftk_st_model *st, const char *where, struct dp_site *ds)
{
    char name[300];
    snprintf(name, sizeof name, "base_model.model.%s.diff_indices", ds->s->module);
    const struct ftk_tensor *ti = ftk_st_model_find(st, name);
    FTK_FAIL_IF(!ti, FTK_E_NOTFOUND, "%s: adapter has no %s (adapter for another base, or other target_modules?)", where, name);
    FTK_FAIL_IF(ti->dtype != FTK_DTYPE_I32 || ti->ndim != 1, FTK_E_FORMAT, "%s: %s must be a 1-D I32 tensor", where, name);
    int64_t k = ti->shape[0], n = ds->s->out * ds->s->in;
    const int32_t *idx = ti->data;
    for (int64_t t = 0; t < k; t++)
        FTK_FAIL_IF(idx[t] < 0 || idx[t] >= n || (t > 0 && idx[t] <= idx[t - 1]), FTK_E_FORMAT,
                    "%s: %s[%lld] = %d: indices must increase strictly within [0, %lld) (out x in = %lld x %lld)", where, name,
                    (long long)t, (int)idx[t], (long long)n, (long long)ds->s->out, (long long)ds->s->in);
    int32_t *keep = malloc((size_t)(k > 0 ? k : 1) * sizeof *keep);
    float *val = malloc((size_t)(k > 0 ? k : 1) * sizeof *val);
    if (!keep || !val) {
        free(keep), free(val);
        FTK_FAIL(FTK_E_NOMEM, "out of memory");
    }
    memcpy(keep, idx, (size_t)k * sizeof *keep);
    snprintf(name, sizeof name, "base_model.model.%s.diff_values", ds->s->module);
    ftk_status s = k > 0 ? ftk_peft_load_tensor(p, st, where, name, 1, k, 0, val) : FTK_OK;
    if (s == FTK_OK && k == 0 && !ftk_st_model_find(st, name))
        s = ftk_error_set(FTK_E_NOTFOUND, __FILE__, __LINE__, "%s: adapter has no %s", where, name);
    if (s != FTK_OK) {
        free(keep), free(val);
        return s;
    }
    memset(ds->w, 0, (size_t)n * sizeof *ds->w);
    for (int64_t t = 0; t < k; t++)
        ds->w[keep[t]] = val[t];
    free(val);
    free(ds->keep);
    ds->keep = keep;
    ds->n_keep = k;
    return FTK_OK;
}

static ftk_status dp_load(struct ftk_peft *p, struct ftk_source *src)
{
    struct diffprune *S = ftk_peft_priv(p);
    struct ftk_st_model *st;
    FTK_TRY(ftk_st_model_open(src, "adapter_model", &st));
    const char *where = ftk_source_path(src);
    char name[300];
    snprintf(name, sizeof name, "base_model.model.%s.diff_indices", S->sites[0].s->module);
    int sparse = ftk_st_model_find(st, name) != NULL;
    ftk_status s = FTK_OK;
    if (S->cfg_projected != sparse)
        s = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: adapter_config.json says projected=%s but the tensors are %s", where,
                          S->cfg_projected ? "true" : "false", sparse ? "sparse (diff_indices)" : "dense (diff_w)");
    size_t want = 0;
    for (int i = 0; i < S->n && s == FTK_OK; i++) {
        struct dp_site *ds = &S->sites[i];
        if (sparse) {
            s = load_sparse(p, st, where, ds);
            want += 2;
            continue;
        }
        snprintf(name, sizeof name, "base_model.model.%s.diff_w", ds->s->module);
        s = ftk_peft_load_tensor(p, st, where, name, 2, ds->s->out, ds->s->in, ds->w);
        snprintf(name, sizeof name, "base_model.model.%s.diff_alpha", ds->s->module);
        if (s == FTK_OK)
            s = ftk_peft_load_tensor(p, st, where, name, 2, ds->s->out, ds->s->in, ds->a);
        snprintf(name, sizeof name, "base_model.model.%s.diff_alpha_group", ds->s->module);
        if (s == FTK_OK && ds->ag)
            s = ftk_peft_load_tensor(p, st, where, name, 1, 1, 0, ds->ag);
        want += ds->ag ? 3 : 2;
    }
    if (s == FTK_OK && want != ftk_st_model_count(st))
        s = ftk_error_set(FTK_E_MISMATCH, __FILE__, __LINE__,
                          "%s: adapter has %zu tensors, the model's %d diffprune sites take %zu (structured=%s?)", where,
                          ftk_st_model_count(st), S->n, want, S->structured ? "true" : "false");
    if (s == FTK_OK)
        S->projected = sparse;
    ftk_st_model_close(st);
    return s;
}

static void dp_release(struct ftk_peft *p)
{
    struct diffprune *S = ftk_peft_priv(p);
    void *ctx;
    const struct ftk_backend *be = ftk_peft_backend(p, &ctx);
    be->free(ctx, S->delta);
    be->free(ctx, S->gd);
    for (int i = 0; i < S->n; i++)
        free(S->sites[i].keep);
    free(S->targets);
}

FTK_EXPORT const struct ftk_peft_plugin ftk_peft_plugin = {
    .abi_version = FTK_PEFT_ABI,
    .struct_size = sizeof(struct ftk_peft_plugin),
    .name = "diffprune",
    .priv_size = sizeof(struct diffprune),
    .init = dp_init,
    .linear_forward = dp_forward,
    .linear_backward = dp_backward,
    .save = dp_save,
    .load = dp_load,
    .merge = dp_merge,
    .release = dp_release,
    .before_update = dp_before_update,
    .after_update = dp_after_update,
};
