/* libcore/trainer.c: gradient accumulation, clipping, AdamW and the schedule around the model
 * (ftk/trainer.h), and the trainer state for bit-identical resume. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ftk/optim.h"
#include "ftk/safetensors.h"
#include "ftk/trainer.h"

struct ftk_trainer {
    struct ftk_model *m;
    struct ftk_loss *loss;
    struct ftk_model *ref;        /* reference for batches without ref_logps; == m: adapter off */
    struct ftk_train_config c;
    float **mom, **var;           /* per trainable parameter, backend memory */
    size_t n;
    struct ftk_message *held;     /* batches of the step being gathered */
    int64_t n_held;
    int64_t step;                 /* optimizer steps done */
    int64_t batches_done;
    int64_t fed;                  /* batches received (for error messages) */
};

ftk_status ftk_trainer_create(struct ftk_model *m, struct ftk_loss *loss, const struct ftk_train_config *c,
                              struct ftk_trainer **out)
{
    FTK_FAIL_IF(c->grad_accum < 1, FTK_E_INVALID, "gradient accumulation steps must be >= 1");
    FTK_FAIL_IF(!(c->lr >= 0) || !(c->beta1 >= 0 && c->beta1 < 1) || !(c->beta2 >= 0 && c->beta2 < 1) || !(c->eps > 0) ||
                !(c->weight_decay >= 0),   /* torch.optim.AdamW refuses a negative weight_decay */
                FTK_E_INVALID, "AdamW hyper-parameters out of range (lr %g, betas %g %g, eps %g, weight_decay %g)", c->lr,
                c->beta1, c->beta2, c->eps, c->weight_decay);
    size_t n = ftk_model_n_trainable(m);
    FTK_FAIL_IF(n == 0, FTK_E_INVALID, "nothing to train: the PEFT method made no trainable parameters");
    struct ftk_trainer *t = calloc(1, sizeof *t);
    FTK_FAIL_IF(!t, FTK_E_NOMEM, "out of memory");
    t->m = m;
    t->loss = loss;
    t->c = *c;
    t->n = n;
    t->mom = calloc(n, sizeof *t->mom);
    t->var = calloc(n, sizeof *t->var);
    t->held = calloc((size_t)c->grad_accum, sizeof *t->held);
    ftk_status s = t->mom && t->var && t->held ? FTK_OK : ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    void *ctx;
    const struct ftk_backend *be = ftk_model_backend(m, &ctx);
    for (size_t i = 0; i < n && s == FTK_OK; i++) {
        size_t bytes = (size_t)ftk_model_trainable(m, i)->numel * sizeof(float);
        s = be->alloc(ctx, bytes, (void **)&t->mom[i]);
        if (s == FTK_OK)
            s = be->alloc(ctx, bytes, (void **)&t->var[i]);
    }
    if (s != FTK_OK) {
        ftk_trainer_free(t);
        return s;
    }
    *out = t;
    return FTK_OK;
}

void ftk_trainer_free(struct ftk_trainer *t)
{
    if (!t)
        return;
    void *ctx;
    const struct ftk_backend *be = ftk_model_backend(t->m, &ctx);
    for (size_t i = 0; i < t->n; i++) {
        if (t->mom && t->mom[i])
            be->free(ctx, t->mom[i]);
        if (t->var && t->var[i])
            be->free(ctx, t->var[i]);
    }
    for (int64_t i = 0; t->held && i < t->n_held; i++)
        ftk_message_free(&t->held[i]);
    free(t->held);
    free(t->mom);
    free(t->var);
    free(t);
}

int64_t ftk_trainer_step(const struct ftk_trainer *t) { return t->step; }
void ftk_trainer_set_reference(struct ftk_trainer *t, struct ftk_model *ref) { t->ref = ref; }
int64_t ftk_trainer_batches_done(const struct ftk_trainer *t) { return t->batches_done; }

/* The batch's tensors as the model reads them, checked. */
static ftk_status view_of(const struct ftk_message *msg, struct ftk_batch_view *v, const float **ref, int64_t idx)
{
    struct ftk_tensor *ids, *lab, *pos, *seg = NULL, *r = NULL;
    ftk_status s = ftk_message_get(msg, "input_ids", FTK_DTYPE_I32, 2, &ids);
    if (s == FTK_OK)
        s = ftk_message_get(msg, "labels", FTK_DTYPE_I32, 2, &lab);
    if (s == FTK_OK)
        s = ftk_message_get(msg, "position_ids", FTK_DTYPE_I32, 2, &pos);
    if (s == FTK_OK && ftk_message_find(msg, "segment_ids"))
        s = ftk_message_get(msg, "segment_ids", FTK_DTYPE_I32, 2, &seg);
    if (s == FTK_OK && ftk_message_find(msg, "ref_logps"))
        s = ftk_message_get(msg, "ref_logps", FTK_DTYPE_F32, 1, &r);
    if (s != FTK_OK)
        return ftk_error_wrap(s, "batch %lld", (long long)idx);
    int64_t B = ids->shape[0], T = ids->shape[1];
    FTK_FAIL_IF(lab->shape[0] != B || lab->shape[1] != T || pos->shape[0] != B || pos->shape[1] != T ||
                (seg && (seg->shape[0] != B || seg->shape[1] != T)) || (r && r->shape[0] != B),
                FTK_E_FORMAT, "batch %lld: tensors of different shapes (input_ids is [%lld,%lld])", (long long)idx,
                (long long)B, (long long)T);
    *v = (struct ftk_batch_view){B, T, ids->data, lab->data, pos->data, seg ? seg->data : NULL};
    *ref = r ? r->data : NULL;
    return FTK_OK;
}

/* KTO's KL rows (kl_input_ids, kl_labels, kl_position_ids, kl_segment_ids) and their offline
 * reference (kl_ref_logps), checked; v->B = 0 when the batch has none. */
static ftk_status kl_view_of(const struct ftk_message *msg, struct ftk_batch_view *v, const float **ref, int64_t idx)
{
    memset(v, 0, sizeof *v);
    *ref = NULL;
    if (!ftk_message_find(msg, "kl_input_ids"))
        return FTK_OK;
    struct ftk_tensor *ids, *lab, *pos, *seg = NULL, *r = NULL;
    ftk_status s = ftk_message_get(msg, "kl_input_ids", FTK_DTYPE_I32, 2, &ids);
    if (s == FTK_OK)
        s = ftk_message_get(msg, "kl_labels", FTK_DTYPE_I32, 2, &lab);
    if (s == FTK_OK)
        s = ftk_message_get(msg, "kl_position_ids", FTK_DTYPE_I32, 2, &pos);
    if (s == FTK_OK && ftk_message_find(msg, "kl_segment_ids"))
        s = ftk_message_get(msg, "kl_segment_ids", FTK_DTYPE_I32, 2, &seg);
    if (s == FTK_OK && ftk_message_find(msg, "kl_ref_logps"))
        s = ftk_message_get(msg, "kl_ref_logps", FTK_DTYPE_F32, 1, &r);
    if (s != FTK_OK)
        return ftk_error_wrap(s, "batch %lld", (long long)idx);
    int64_t B = ids->shape[0], T = ids->shape[1];
    FTK_FAIL_IF(lab->shape[0] != B || lab->shape[1] != T || pos->shape[0] != B || pos->shape[1] != T ||
                (seg && (seg->shape[0] != B || seg->shape[1] != T)) || (r && r->shape[0] != B),
                FTK_E_FORMAT, "batch %lld: KL tensors of different shapes (kl_input_ids is [%lld,%lld])", (long long)idx,
                (long long)B, (long long)T);
    *v = (struct ftk_batch_view){B, T, ids->data, lab->data, pos->data, seg ? seg->data : NULL};
    *ref = r ? r->data : NULL;
    return FTK_OK;
}

/* Reference log-probs of `v` into out (B), without gradient: the separate reference model, or
 * the trained model with its PEFT deltas off. `what` names the rows for the error. */
static ftk_status ref_forward(struct ftk_trainer *t, const struct ftk_batch_view *v, float *out, const char *what,
                              int64_t idx)
{
    FTK_FAIL_IF(!t->ref, FTK_E_INVALID,
                "batch %lld: the loss needs reference log-probs and the batch has no %s: run the stream through "
                "`ftk ref-logps`, or give --ref-model (the online reference of a LoRA run is the base model; "
                "full fine-tuning has no adapter to switch off)", (long long)idx, what);
    ftk_status s;
    if (t->ref == t->m) {
        ftk_model_enable_adapter(t->m, 0);
        s = ftk_model_forward(t->m, v, 0, out, NULL);
        ftk_model_enable_adapter(t->m, 1);
    } else {
        s = ftk_model_forward(t->ref, v, 0, out, NULL);
    }
    return s == FTK_OK ? FTK_OK : ftk_error_wrap(s, "batch %lld: reference forward", (long long)idx);
}

/* Labelled tokens after HF's shift (what the token mean divides by) and non-padding tokens. */
static void count_tokens(const struct ftk_batch_view *v, int64_t *labelled, int64_t *real)
{
    for (int64_t r = 0; r < v->B; r++)
        for (int64_t t = 0; t < v->T; t++) {
            int64_t i = r * v->T + t;
            if (t + 1 < v->T && v->labels[i + 1] != FTK_IGNORE_INDEX)
                ++*labelled;
            if (!v->segment_ids || v->segment_ids[i] != 0)
                ++*real;
        }
}

static ftk_status run_step(struct ftk_trainer *t, struct ftk_step_result *res)
{
    struct ftk_model *m = t->m;
    void *ctx;
    const struct ftk_backend *be = ftk_model_backend(m, &ctx);
    memset(res, 0, sizeof *res);
    int64_t labelled = 0, real = 0;
    struct ftk_batch_view *views = calloc((size_t)t->n_held, sizeof *views);
    const float **refs = calloc((size_t)t->n_held, sizeof *refs);
    float *buf = NULL;
    ftk_status s = views && refs ? FTK_OK : ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory");
    int64_t base_idx = t->batches_done;
    for (int64_t i = 0; i < t->n_held && s == FTK_OK; i++)
        if ((s = view_of(&t->held[i], &views[i], &refs[i], base_idx + i)) == FTK_OK)
            count_tokens(&views[i], &labelled, &real);
    ftk_model_set_step(m, t->step);
    if (s == FTK_OK)
        s = ftk_model_zero_grad(m);
    struct ftk_metrics sum = {0};
    int n_rep[FTK_MAX_METRICS] = {0};   /* micro-batches that reported each metric */
    const int needs_ref = ftk_loss_needs_ref(t->loss), needs_kl = ftk_loss_needs_kl(t->loss);
    for (int64_t i = 0; i < t->n_held && s == FTK_OK; i++) {
        const struct ftk_batch_view *v = &views[i];
        int64_t idx = base_idx + i;
        ftk_model_set_micro(m, i);   /* fresh dropout masks per micro-batch, as torch */
        struct ftk_batch_view kv = {0};
        const float *kl_ref = NULL;
        if (needs_kl && (s = kl_view_of(&t->held[i], &kv, &kl_ref, idx)) != FTK_OK)
            break;
        int64_t Bk = kv.B;
        /* logps, dl, ref (B) floats; kl, kl_ref (Bk) floats; nt (B) int64 */
        float *p = realloc(buf, (size_t)(3 * v->B + 2 * Bk) * sizeof(float) + (size_t)v->B * sizeof(int64_t) + 8);
        if (!p) { s = ftk_error_set(FTK_E_NOMEM, __FILE__, __LINE__, "out of memory"); break; }
        buf = p;
        float *logps = buf, *dl = buf + v->B, *refb = buf + 2 * v->B, *klb = buf + 3 * v->B, *klrb = klb + Bk;
        int64_t *nt = (int64_t *)((char *)buf + (((size_t)(3 * v->B + 2 * Bk) * sizeof(float) + 7) & ~(size_t)7));
        /* Reference and KL forwards first (train = 0): the train forward's activations must be the
         * last ones for backward. TRL/LLaMA-Factory run the KL rows under no_grad. */
        const float *ref = refs[i];
        if (needs_ref && !ref) {
            if ((s = ref_forward(t, v, refb, "ref_logps", idx)) != FTK_OK)
                break;
            ref = refb;
        }
        if (needs_kl && Bk > 0) {
            if (needs_ref && !kl_ref) {
                if ((s = ref_forward(t, &kv, klrb, "kl_ref_logps", idx)) != FTK_OK)
                    break;
                kl_ref = klrb;
            }
            if ((s = ftk_model_forward(m, &kv, 0, klb, NULL)) != FTK_OK) {
                s = ftk_error_wrap(s, "batch %lld: KL rows", (long long)idx);
                break;
            }
        }
        /* A loss linear in the log-probs (SFT) knows dlogps before the forward: the fused
         * forward-backward makes each chunk's logits once instead of twice. */
        int fused = ftk_loss_is_linear(t->loss) && !needs_kl;
        if (fused) {
            for (int64_t r = 0; r < v->B; r++) {
                int64_t c = 0;
                for (int64_t q = 0; q + 1 < v->T; q++)
                    c += v->labels[r * v->T + q + 1] != FTK_IGNORE_INDEX;
                nt[r] = c;
                logps[r] = 0;
            }
            struct ftk_loss_batch pre = {.B = v->B, .logps = logps, .ref_logps = ref, .n_tokens = nt,
                                         .n_tokens_total = labelled, .batch = &t->held[i], .accum = t->n_held};
            double unused;
            struct ftk_metrics none = {0};
            if ((s = ftk_loss_compute(t->loss, &pre, &unused, dl, &none)) == FTK_OK)
                s = ftk_model_forward_backward(m, v, dl, logps, nt);
        } else {
            s = ftk_model_forward(m, v, 1, logps, nt);
        }
        if (s != FTK_OK) {
            s = ftk_error_wrap(s, "batch %lld", (long long)idx);
            break;
        }
        struct ftk_loss_batch lb = {.B = v->B, .pairwise = ftk_message_get_meta(&t->held[i], "pairwise") != NULL,
                                    .logps = logps, .ref_logps = ref, .n_tokens = nt, .n_tokens_total = labelled,
                                    .batch = &t->held[i], .accum = t->n_held,
                                    .B_kl = needs_kl ? Bk : 0, .kl_logps = needs_kl && Bk ? klb : NULL,
                                    .kl_ref_logps = needs_kl && Bk ? kl_ref : NULL};
        double L = 0;
        struct ftk_metrics met = {0};
        if ((s = ftk_loss_compute(t->loss, &lb, &L, dl, &met)) != FTK_OK) {
            s = ftk_error_wrap(s, "batch %lld", (long long)idx);
            break;
        }
        if (!isfinite(L)) {
            s = ftk_error_set(FTK_E_INVALID, __FILE__, __LINE__, "batch %lld: loss is %g", (long long)idx, L);
            break;
        }
        res->loss += L;
        for (int k = 0; k < met.n; k++) {   /* summed here, divided by the reporters below */
            int j = 0;
            while (j < sum.n && strcmp(sum.name[j], met.name[k]))
                j++;
            if (j == sum.n && sum.n == FTK_MAX_METRICS)
                continue;
            ftk_metrics_add(&sum, met.name[k], (j < sum.n ? sum.value[j] : 0) + met.value[k]);
            n_rep[j]++;
        }
        if (!fused)
            s = ftk_model_backward(m, dl);
    }
    for (int j = 0; j < sum.n; j++)
        sum.value[j] /= (double)(n_rep[j] > 0 ? n_rep[j] : 1);
    free(buf);
    free(views);
    free(refs);
    FTK_TRY(s);

    /* the plugin's regularisers (AdaLoRA, diff pruning) add their gradients before clipping */
    struct ftk_peft *pp = ftk_model_peft(m);
    const struct ftk_peft_plugin *pl = pp ? ftk_peft_get_plugin(pp) : NULL;
    if (pl && FTK_PLUGIN_SLOT(pl, before_update)) {
        double reg = 0;
        if ((s = pl->before_update(pp, &reg)) != FTK_OK)
            return ftk_error_wrap(s, "step %lld: peft \"%s\" before the update", (long long)t->step + 1, pl->name);
        res->loss += reg;
    }

    /* clip_grad_norm_ over every trainable parameter, then AdamW */
    float *sq = calloc(t->n, sizeof *sq);
    FTK_FAIL_IF(!sq, FTK_E_NOMEM, "out of memory");
    for (size_t i = 0; i < t->n && s == FTK_OK; i++)
        s = be->sumsq(ctx, &sq[i], ftk_model_trainable(m, i)->g, ftk_model_trainable(m, i)->numel);
    float total = 0, coef = 1;
    if (s == FTK_OK)
        s = ftk_clip_grad_norm_coef(sq, (int64_t)t->n, (float)t->c.max_grad_norm, &total, &coef);
    free(sq);
    if (s != FTK_OK)
        return ftk_error_wrap(s, "step %lld", (long long)t->step + 1);
    double lr = t->c.lr * ftk_schedule_factor(t->c.schedule, t->step, t->c.warmup_steps, t->c.total_steps);
    for (size_t i = 0; i < t->n && s == FTK_OK; i++) {
        struct ftk_param *q = ftk_model_trainable(m, i);
        struct ftk_adamw_params hp = {.lr = (float)(lr * q->lr_scale), .beta1 = (float)t->c.beta1, .beta2 = (float)t->c.beta2,
                                      .eps = (float)t->c.eps, .weight_decay = q->decay ? (float)t->c.weight_decay : 0.0f,
                                      .step = t->step + 1, .grad_scale = coef};
        s = be->adamw_step(ctx, q->w, t->mom[i], t->var[i], q->g, q->numel, &hp);
    }
    FTK_TRY(s);
    /* after_update sees the clipped gradients, as peft's update_and_allocate does after
     * clip_grad_norm_ (AdamW above applied the clip factor without writing it back) */
    for (size_t i = 0; pl && FTK_PLUGIN_SLOT(pl, after_update) && coef < 1 && i < t->n && s == FTK_OK; i++)
        s = be->scale(ctx, ftk_model_trainable(m, i)->g, ftk_model_trainable(m, i)->numel, coef);
    FTK_TRY(s);
    if (pl && FTK_PLUGIN_SLOT(pl, after_update) && (s = pl->after_update(pp, t->step)) != FTK_OK)
        return ftk_error_wrap(s, "step %lld: peft \"%s\" after the update", (long long)t->step + 1, pl->name);
    t->step++;
    res->step = t->step;
    res->lr = lr;
    res->grad_norm = total;
    res->tokens = real;
    res->labelled = labelled;
    res->metrics = sum;
    t->batches_done += t->n_held;
    for (int64_t i = 0; i < t->n_held; i++)
        ftk_message_free(&t->held[i]);
    t->n_held = 0;
    return FTK_OK;
}

ftk_status ftk_trainer_feed(struct ftk_trainer *t, const struct ftk_message *batch, int *stepped, struct ftk_step_result *res)
{
    *stepped = 0;
    struct ftk_message *h = &t->held[t->n_held];
    ftk_message_init(h);
    FTK_TRY(ftk_message_copy(h, batch));
    t->n_held++;
    t->fed++;
    if (t->n_held < t->c.grad_accum)
        return FTK_OK;
    FTK_TRY(run_step(t, res));
    *stepped = 1;
    return FTK_OK;
}

ftk_status ftk_trainer_flush(struct ftk_trainer *t, int *stepped, struct ftk_step_result *res)
{
    *stepped = 0;
    if (t->n_held == 0)
        return FTK_OK;
    FTK_TRY(run_step(t, res));
    *stepped = 1;
    return FTK_OK;
}

/* ---- state ------------------------------------------------------------------------------ */

ftk_status ftk_trainer_save_state(const struct ftk_trainer *t, const char *dir)
{
    void *ctx;
    const struct ftk_backend *be = ftk_model_backend(t->m, &ctx);
    struct ftk_message msg;
    ftk_message_init(&msg);
    ftk_status s = ftk_message_set_meta(&msg, "format", "ftk-trainer-state-1");
    if (s == FTK_OK) s = ftk_message_set_meta_int(&msg, "step", t->step);
    if (s == FTK_OK) s = ftk_message_set_meta_int(&msg, "batches_done", t->batches_done);
    if (s == FTK_OK) s = ftk_message_set_meta_int(&msg, "grad_accum", t->c.grad_accum);
    for (size_t i = 0; i < t->n && s == FTK_OK; i++) {
        const struct ftk_param *q = ftk_model_trainable(t->m, (size_t)i);
        char name[400];
        struct ftk_tensor *x;
        for (int w = 0; w < 2 && s == FTK_OK; w++) {
            snprintf(name, sizeof name, "%s.%s", w ? "exp_avg_sq" : "exp_avg", q->name);
            if ((s = ftk_message_add(&msg, name, FTK_DTYPE_F32, q->ndim, q->shape, NULL, &x)) == FTK_OK)
                s = be->to_host(ctx, x->data, w ? t->var[i] : t->mom[i], x->nbytes);
        }
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/trainer_state.safetensors", dir);
    if (s == FTK_OK)
        s = ftk_st_write(path, &msg);
    ftk_message_free(&msg);
    return s;
}

ftk_status ftk_trainer_load_state(struct ftk_trainer *t, const char *dir)
{
    void *ctx;
    const struct ftk_backend *be = ftk_model_backend(t->m, &ctx);
    char path[4096];
    snprintf(path, sizeof path, "%s/trainer_state.safetensors", dir);
    struct ftk_st_model *st;
    FTK_TRY(ftk_st_file_open(path, &st));
    ftk_status s = FTK_OK;
    const char *fmt = ftk_st_model_meta(st, "format"), *step = ftk_st_model_meta(st, "step"),
               *done = ftk_st_model_meta(st, "batches_done");
    if (!fmt || strcmp(fmt, "ftk-trainer-state-1") || !step || !done)
        s = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: not an ftk trainer state", path);
    /* the data position counts batches: another accumulation would regroup them into other steps */
    const char *ga = ftk_st_model_meta(st, "grad_accum");
    if (s == FTK_OK && ga && strtoll(ga, NULL, 10) != t->c.grad_accum)
        s = ftk_error_set(FTK_E_MISMATCH, __FILE__, __LINE__, "%s: made with --grad-accum %s, this run has %lld", path, ga,
                          (long long)t->c.grad_accum);
    for (size_t i = 0; i < t->n && s == FTK_OK; i++) {
        const struct ftk_param *q = ftk_model_trainable(t->m, i);
        for (int w = 0; w < 2 && s == FTK_OK; w++) {
            char name[400];
            snprintf(name, sizeof name, "%s.%s", w ? "exp_avg_sq" : "exp_avg", q->name);
            const struct ftk_tensor *x = ftk_st_model_find(st, name);
            if (!x || x->dtype != FTK_DTYPE_F32 || ftk_tensor_numel(x) != q->numel)
                s = ftk_error_set(FTK_E_MISMATCH, __FILE__, __LINE__, "%s: no matching %s (resumed with other PEFT options?)", path, name);
            else
                s = be->to_device(ctx, w ? t->var[i] : t->mom[i], x->data, x->nbytes);
        }
    }
    if (s == FTK_OK && ftk_st_model_count(st) != 2 * t->n)
        s = ftk_error_set(FTK_E_MISMATCH, __FILE__, __LINE__, "%s: holds %zu moment tensors, the model trains %zu parameters",
                          path, ftk_st_model_count(st), t->n);
    if (s == FTK_OK) {
        t->step = strtoll(step, NULL, 10);
        t->batches_done = strtoll(done, NULL, 10);
    }
    ftk_st_model_close(st);
    return s;
}
