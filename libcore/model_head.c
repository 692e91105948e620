/* libcore/model_head.c: the log-prob head and the logits with the PEFT `head` hook
 * (ftk/plugin.h head_rows; WARP's verbalizer, docs/peft-methods.md). The plugin gives K rows
 * (K,C) for token ids (K):
 *   full mode: scores s = x W'^T over the whole vocabulary, W' = lm_head with rows ids[k]
 *     replaced by rows[k]. The backend's chunked logprob ops run on lm_head with the K rows
 *     swapped in and swapped back after the op (also when it fails), so lm_head, or the
 *     embed_tokens it is tied to, is bit-identical afterwards and no (V,C) copy exists.
 *     Rows' gradient, from the saved log-sum-exp lse_n (N x K work, no vocabulary pass):
 *       grads[k] += sum_n w_n (1[label_n = ids[k]] - exp(x_n . rows[k] - lse_n)) x_n
 *   class mode (the paper's): s (N,K) = x rows^T, log-softmax over the K classes only:
 *       logp_n = s[n,k(label_n)] - logsumexp_k s[n,k]
 *       G[n,k] = w_n (1[label_n = ids[k]] - softmax_k s[n,k]), dx += G rows, grads += G^T x
 * w_n = d loss / d logp_n (m->scratch2). Matrix products are backend gemms; the (N,K) scores go
 * to the host for the elementwise steps (K is a handful of classes), so any backend works.
 * Letters: N tokens (B*T), C hidden, V vocabulary, K head rows. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "model-impl.h"

struct head {
    int64_t K;
    const int32_t *ids;   /* (K) host */
    const float *rows;    /* (K,C) backend */
    float *grads;         /* (K,C) backend, or NULL */
    int cls;              /* 1: class mode */
};

/* The hook's rows, checked (K = 0 without the hook or with the adapter off). */
static ftk_status head_get(struct ftk_model *m, struct head *h)
{
    memset(h, 0, sizeof *h);
    if (!MODEL_HOOK(m, head_rows))
        return FTK_OK;
    const char *name = m->peft->pl->name;
    int cls = 0;
    float *g = NULL;
    h->K = m->peft->pl->head_rows(m->peft, &h->ids, &h->rows, &g, &cls);
    h->grads = g;
    h->cls = cls != 0;
    int64_t V = m->cfg.V;
    FTK_FAIL_IF(h->K < 0 || h->K > V, FTK_E_INVALID, "peft \"%s\": %lld head rows for a vocabulary of %lld", name,
                (long long)h->K, (long long)V);
    if (h->K == 0)
        return FTK_OK;
    FTK_FAIL_IF(!h->ids || !h->rows, FTK_E_INVALID, "peft \"%s\": %lld head rows without ids or rows", name, (long long)h->K);
    for (int64_t k = 0; k < h->K; k++)
        FTK_FAIL_IF(h->ids[k] < 0 || h->ids[k] >= V, FTK_E_INVALID,
                    "peft \"%s\": head row %lld has token id %d outside the vocabulary [0, %lld)", name, (long long)k,
                    h->ids[k], (long long)V);
    /* distinct: pairs for a few classes; a map of the vocabulary (1 + the row of each id) past that */
    int64_t *seen = h->K > 32 ? calloc((size_t)V, sizeof *seen) : NULL;
    FTK_FAIL_IF(h->K > 32 && !seen, FTK_E_NOMEM, "out of memory");
    for (int64_t k = 0; k < h->K; k++) {
        int64_t first = -1;
        if (seen)
            first = seen[h->ids[k]] - 1;
        for (int64_t j = 0; !seen && j < k && first < 0; j++)
            if (h->ids[j] == h->ids[k])
                first = j;
        if (first >= 0) {
            free(seen);
            FTK_FAIL(FTK_E_INVALID, "peft \"%s\": head rows %lld and %lld both replace token %d", name, (long long)first,
                     (long long)k, h->ids[k]);
        }
        if (seen)
            seen[h->ids[k]] = k + 1;
    }
    free(seen);
    return FTK_OK;
}

/* Index of `label` among ids, or -1. */
static int64_t class_of(const struct head *h, int32_t label)
{
    for (int64_t k = 0; k < h->K; k++)
        if (h->ids[k] == label)
            return k;
    return -1;
}

/* ---- backend-memory helpers ----------------------------------------------------------------- */

static ftk_status dev_alloc(struct ftk_model *m, int64_t n, float **out)
{
    *out = NULL;
    return m->be->alloc(m->ctx, (size_t)(n > 0 ? n : 1) * sizeof(float), (void **)out);
}

/* save (K,C) = rows ids of w (V,C) */
static ftk_status gather_rows(struct ftk_model *m, const struct head *h, float *save, const float *w)
{
    size_t bytes = (size_t)m->cfg.C * sizeof(float);
    for (int64_t k = 0; k < h->K; k++)
        FTK_TRY(m->be->copy(m->ctx, save + k * m->cfg.C, w + (int64_t)h->ids[k] * m->cfg.C, bytes));
    return FTK_OK;
}

/* rows ids of w (V,C) = src (K,C) */
static ftk_status scatter_rows(struct ftk_model *m, const struct head *h, float *w, const float *src)
{
    size_t bytes = (size_t)m->cfg.C * sizeof(float);
    for (int64_t k = 0; k < h->K; k++)
        FTK_TRY(m->be->copy(m->ctx, w + (int64_t)h->ids[k] * m->cfg.C, src + k * m->cfg.C, bytes));
    return FTK_OK;
}

/* Host scores (n,K) = xf (n,C) rows^T, through a backend gemm. */
static ftk_status scores(struct ftk_model *m, const struct head *h, const float *xf, int64_t n, float *host)
{
    float *dev;
    FTK_TRY(dev_alloc(m, n * h->K, &dev));
    ftk_status s = m->be->gemm(m->ctx, 0, 1, n, h->K, m->cfg.C, 1.0f, xf, m->cfg.C, h->rows, m->cfg.C, 0.0f, dev, h->K);
    if (s == FTK_OK)
        s = m->be->to_host(m->ctx, host, dev, (size_t)(n * h->K) * sizeof(float));
    m->be->free(m->ctx, dev);
    return s;
}

/* Host copies of what the head reads: labels (N), and when asked token weights and lse (N). */
struct head_host {
    int32_t *labels;
    float *w, *lse, *s, *G;   /* (N), (N), (N,K), (N,K) */
};

static void host_free(struct head_host *hh)
{
    free(hh->labels);
    free(hh->w);
    free(hh->lse);
    free(hh->s);
    free(hh->G);
}

static ftk_status host_get(struct ftk_model *m, const struct head *h, int weights, int lse, struct head_host *hh)
{
    int64_t N = m->N;
    memset(hh, 0, sizeof *hh);
    hh->labels = malloc((size_t)N * sizeof *hh->labels);
    hh->w = malloc((size_t)N * sizeof *hh->w);
    hh->lse = malloc((size_t)N * sizeof *hh->lse);
    hh->s = malloc((size_t)(N * h->K) * sizeof *hh->s);
    hh->G = malloc((size_t)(N * h->K) * sizeof *hh->G);
    FTK_FAIL_IF(!hh->labels || !hh->w || !hh->lse || !hh->s || !hh->G, FTK_E_NOMEM, "out of memory");
    FTK_TRY(m->be->to_host(m->ctx, hh->labels, m->labels_shift, (size_t)N * sizeof(int32_t)));
    if (weights)
        FTK_TRY(m->be->to_host(m->ctx, hh->w, m->scratch2, (size_t)N * sizeof(float)));
    if (lse)
        FTK_TRY(m->be->to_host(m->ctx, hh->lse, m->lse_tok, (size_t)N * sizeof(float)));
    return scores(m, h, m->xf, N, hh->s);
}

/* From G (N,K) host: grads (K,C) += G^T xf, and (class mode) dxf (N,C) += G rows. */
static ftk_status apply_G(struct ftk_model *m, const struct head *h, const float *G, float *dxf)
{
    int64_t N = m->N, C = m->cfg.C, K = h->K;
    float *dG;
    FTK_TRY(dev_alloc(m, N * K, &dG));
    ftk_status s = m->be->to_device(m->ctx, dG, G, (size_t)(N * K) * sizeof(float));
    if (s == FTK_OK && dxf)
        s = m->be->gemm(m->ctx, 0, 0, N, C, K, 1.0f, dG, K, h->rows, C, 1.0f, dxf, C);
    if (s == FTK_OK && h->grads)
        s = m->be->gemm(m->ctx, 1, 0, K, C, N, 1.0f, dG, K, m->xf, C, 1.0f, h->grads, C);
    m->be->free(m->ctx, dG);
    return s;
}

/* ---- class mode --------------------------------------------------------------------------- */

static double row_lse(const float *s, int64_t K)
{
    double mx = -INFINITY, z = 0;
    for (int64_t k = 0; k < K; k++)
        mx = fmax(mx, s[k]);
    for (int64_t k = 0; k < K; k++)
        z += exp((double)s[k] - mx);
    return mx + log(z);
}

/* "34, 62, 7" (the first few ids) */
static void ids_text(const struct head *h, char *buf, size_t n)
{
    size_t at = 0;
    buf[0] = '\0';
    for (int64_t k = 0; k < h->K && k < 8 && at < n; k++)
        at += (size_t)snprintf(buf + at, n - at, "%s%d", k ? ", " : "", h->ids[k]);
    if (h->K > 8 && at < n)
        snprintf(buf + at, n - at, ", ...");
}

static ftk_status class_forward(struct ftk_model *m, const struct head *h)
{
    int64_t N = m->N, K = h->K;
    struct head_host hh;
    ftk_status s = host_get(m, h, 0, 0, &hh);
    float *logp = hh.w;   /* the token weights are not read here: their buffer takes logp (0 where unscored) */
    for (int64_t n = 0; s == FTK_OK && n < N; n++) {
        double lse = row_lse(hh.s + n * K, K);
        hh.lse[n] = (float)lse;
        logp[n] = 0.0f;
        int32_t y = hh.labels[n];
        if (y == FTK_IGNORE_INDEX)
            continue;
        int64_t k = class_of(h, y);
        if (k < 0) {   /* hidden t of a row predicts the label at t + 1; the row's first P are virtual */
            char ids[128];
            ids_text(h, ids, sizeof ids);
            s = ftk_error_set(FTK_E_INVALID, __FILE__, __LINE__,
                              "row %lld, position %lld: label %d is not one of the %lld classes of peft \"%s\" (tokens %s): "
                              "in class mode only the answer tokens may be labelled", (long long)(n / m->T),
                              (long long)(n % m->T + 1 - m->n_virtual), y, (long long)K, m->peft->pl->name, ids);
            break;
        }
        logp[n] = (float)((double)hh.s[n * K + k] - lse);
    }
    if (s == FTK_OK)
        s = m->be->to_device(m->ctx, m->logp_tok, logp, (size_t)N * sizeof(float));
    if (s == FTK_OK)
        s = m->be->to_device(m->ctx, m->lse_tok, hh.lse, (size_t)N * sizeof(float));
    host_free(&hh);
    return s;
}

static ftk_status class_backward(struct ftk_model *m, const struct head *h, float *dxf)
{
    int64_t N = m->N, K = h->K;
    struct head_host hh;
    ftk_status s = host_get(m, h, 1, 0, &hh);
    for (int64_t n = 0; s == FTK_OK && n < N; n++) {
        double lse = row_lse(hh.s + n * K, K), w = hh.labels[n] == FTK_IGNORE_INDEX ? 0.0 : hh.w[n];
        for (int64_t k = 0; k < K; k++)
            hh.G[n * K + k] = (float)(w * ((hh.labels[n] == h->ids[k]) - exp((double)hh.s[n * K + k] - lse)));
    }
    if (s == FTK_OK)
        s = apply_G(m, h, hh.G, dxf);
    host_free(&hh);
    return s;
}

/* ---- full-vocabulary mode ------------------------------------------------------------------ */

/* grads += sum_n w_n (1[label_n = ids[k]] - exp(s_nk - lse_n)) xf_n, lse from the forward. */
static ftk_status full_rows_grad(struct ftk_model *m, const struct head *h)
{
    if (!h->grads)
        return FTK_OK;
    int64_t N = m->N, K = h->K;
    struct head_host hh;
    ftk_status s = host_get(m, h, 1, 1, &hh);
    for (int64_t n = 0; s == FTK_OK && n < N; n++) {
        double w = hh.labels[n] == FTK_IGNORE_INDEX ? 0.0 : hh.w[n];
        for (int64_t k = 0; k < K; k++)
            hh.G[n * K + k] = w == 0.0 ? 0.0f
                                       : (float)(w * ((hh.labels[n] == h->ids[k]) - exp((double)hh.s[n * K + k] - hh.lse[n])));
    }
    if (s == FTK_OK)
        s = apply_G(m, h, hh.G, NULL);
    host_free(&hh);
    return s;
}

/* The backend's head on lm_head with the K rows swapped in (fwd: logp_tok, lse_tok; bwd: dxf +=,
 * lm_head's gradient += except at the K rows). lm_head's rows, and its gradient's, are put back
 * whatever the op returns. */
static ftk_status full_op(struct ftk_model *m, const struct head *h, int bwd, float *dxf)
{
    int64_t C = m->cfg.C, K = h->K;
    float *w = m->lm_head->w, *g = bwd ? m->lm_head->g : NULL, *save = NULL, *gsave = NULL;
    ftk_status s = dev_alloc(m, K * C, &save);
    if (s == FTK_OK && g)
        s = dev_alloc(m, K * C, &gsave);
    if (s == FTK_OK)
        s = gather_rows(m, h, save, w);
    if (s == FTK_OK && g)
        s = gather_rows(m, h, gsave, g);
    if (s == FTK_OK) {
        s = scatter_rows(m, h, w, h->rows);
        if (s == FTK_OK && !bwd)
            s = m->be->logprob_forward(m->ctx, m->logp_tok, m->lse_tok, m->xf, w, m->labels_shift, m->N, C, m->cfg.V, 0);
        if (s == FTK_OK && bwd)
            s = m->be->logprob_backward(m->ctx, dxf, g, m->scratch2, m->xf, w, m->labels_shift, m->lse_tok, m->N, C,
                                        m->cfg.V, 0);
        ftk_status r = scatter_rows(m, h, w, save);
        if (r == FTK_OK && g)
            r = scatter_rows(m, h, g, gsave);   /* the rows took no part in lm_head's score */
        if (s == FTK_OK)
            s = r;
    }
    m->be->free(m->ctx, save);
    m->be->free(m->ctx, gsave);
    return s;
}

/* ---- the entry points (model-impl.h) -------------------------------------------------------- */

ftk_status model_head_forward(struct ftk_model *m)
{
    struct head h;
    FTK_TRY(head_get(m, &h));
    if (!h.K)
        return m->be->logprob_forward(m->ctx, m->logp_tok, m->lse_tok, m->xf, m->lm_head->w, m->labels_shift, m->N,
                                      m->cfg.C, m->cfg.V, 0);
    return h.cls ? class_forward(m, &h) : full_op(m, &h, 0, NULL);
}

ftk_status model_head_backward(struct ftk_model *m, float *dxf)
{
    struct head h;
    FTK_TRY(head_get(m, &h));
    if (!h.K)
        return m->be->logprob_backward(m->ctx, dxf, m->lm_head->g, m->scratch2, m->xf, m->lm_head->w, m->labels_shift,
                                       m->lse_tok, m->N, m->cfg.C, m->cfg.V, 0);
    if (h.cls)
        return class_backward(m, &h, dxf);
    FTK_TRY(full_op(m, &h, 1, dxf));
    return full_rows_grad(m, &h);
}

/* With the hook, forward then backward: the rows' gradient needs the log-sum-exp, which the
 * fused op does not keep (one more logits pass per chunk, WARP's cost). */
ftk_status model_head_fused(struct ftk_model *m, float *dxf)
{
    struct head h;
    FTK_TRY(head_get(m, &h));
    if (!h.K)
        return m->be->logprob_fused(m->ctx, m->logp_tok, dxf, m->lm_head->g, m->scratch2, m->xf, m->lm_head->w,
                                    m->labels_shift, m->N, m->cfg.C, m->cfg.V, 0);
    FTK_TRY(model_head_forward(m));
    return model_head_backward(m, dxf);
}

ftk_status model_head_patch_logits(struct ftk_model *m, const float *xf, int64_t rows, float *logits)
{
    struct head h;
    FTK_TRY(head_get(m, &h));
    if (!h.K || rows <= 0)
        return FTK_OK;
    int64_t V = m->cfg.V;
    float *s = malloc((size_t)(rows * h.K) * sizeof *s);
    FTK_FAIL_IF(!s, FTK_E_NOMEM, "out of memory");
    ftk_status st = scores(m, &h, xf, rows, s);
    for (int64_t n = 0; st == FTK_OK && n < rows; n++) {
        float *row = logits + n * V;
        if (h.cls)
            for (int64_t v = 0; v < V; v++)
                row[v] = -INFINITY;
        for (int64_t k = 0; k < h.K; k++)
            row[h.ids[k]] = s[n * h.K + k];
    }
    free(s);
    return st;
}
