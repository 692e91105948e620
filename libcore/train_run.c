/* libcore/train_run.c: the body of `ftk train-step` (ftk/train_run.h): the model and plugins
 * set up, the batch stream checked against the model, steps run, metrics written, checkpoints
 * saved all-or-nothing, resume from a checkpoint continuing bit-identically. */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "ftk/fileio.h"
#include "ftk/hash.h"
#include "ftk/model.h"
#include "ftk/progress.h"
#include "ftk/stream.h"
#include "ftk/train_run.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* tc: the run's resolved training config (warmup and total steps as used) */
static ftk_status write_args(const struct ftk_train_opts *o, const struct ftk_train_config *tc, const char *dir)
{
    char path[4200], buf[16384];
    snprintf(path, sizeof path, "%.4000s/ftk_train_args.json", dir);
    size_t n = (size_t)snprintf(buf, sizeof buf,
                     "{\"model\": \"%s\", \"peft\": \"%s\", \"loss\": \"%s\", \"lr\": %.17g, \"weight_decay\": %.17g,\n"
                     " \"adam_beta1\": %.17g, \"adam_beta2\": %.17g, \"adam_eps\": %.17g, \"max_grad_norm\": %.17g,\n"
                     " \"grad_accum\": %lld, \"lr_scheduler\": \"%s\", \"warmup_steps\": %lld, \"max_steps\": %lld, \"seed\": %llu",
                     o->model, o->peft ? o->peft : "", o->loss, tc->lr, tc->weight_decay, tc->beta1,
                     tc->beta2, tc->eps, tc->max_grad_norm, (long long)tc->grad_accum,
                     ftk_schedule_name(tc->schedule), (long long)tc->warmup_steps, (long long)tc->total_steps,
                     (unsigned long long)o->seed);
    /* the loss options and the reference: what a preference run needs to be repeated */
    const char *sep = "";
    if (n < sizeof buf)
        n += (size_t)snprintf(buf + n, sizeof buf - n, ",\n \"loss_opts\": {");
    for (const struct ftk_kv *kv = o->loss_opts; kv && kv->key && n < sizeof buf; kv++, sep = ", ")
        n += (size_t)snprintf(buf + n, sizeof buf - n, "%s\"%s\": \"%s\"", sep, kv->key, kv->value);
    if (n < sizeof buf)
        n += (size_t)snprintf(buf + n, sizeof buf - n, "}, \"ref_model\": %s%s%s}\n", o->ref_model ? "\"" : "",
                              o->ref_model ? o->ref_model : "null", o->ref_model ? "\"" : "");
    FTK_FAIL_IF(n >= sizeof buf, FTK_E_INVALID, "%s: the run's arguments do not fit in %zu bytes", path, sizeof buf);
    return ftk_file_write_atomic(path, buf, n);
}

static ftk_status rm_tree(const char *path)
{
    DIR *d = opendir(path);
    if (!d)
        return FTK_OK;
    struct dirent *e;
    char p[4096];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", path, e->d_name);
            unlink(p);
        }
    closedir(d);
    FTK_FAIL_IF(rmdir(path) != 0, FTK_E_IO, "%s: cannot remove: %s", path, strerror(errno));
    return FTK_OK;
}

/* Writes the result into `dir` all-or-nothing: everything goes into a temporary sibling that
 * replaces `dir` by rename once complete. A checkpoint (is_ckpt) of full weights stays F32, the
 * dtype they train in: --resume must continue from the same numbers. */
static ftk_status save_to(const struct ftk_train_opts *o, const struct ftk_train_config *tc, struct ftk_model *m,
                          struct ftk_trainer *t, const char *dir, int is_full, int is_ckpt)
{
    /* "out/" names the directory "out": the temporary sibling must not land inside it */
    char clean[4000];
    snprintf(clean, sizeof clean, "%s", dir);
    for (size_t l = strlen(clean); l > 1 && clean[l - 1] == '/'; l--)
        clean[l - 1] = '\0';
    dir = clean;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", dir, (long)getpid());
    rm_tree(tmp);
    FTK_TRY(ftk_mkdirs(tmp));
    ftk_status s;
    if (is_full) {
        enum ftk_dtype dt = FTK_DTYPE_F32;
        const char *want = is_ckpt ? "float32" : o->save_dtype ? o->save_dtype : ftk_model_get_config(m)->torch_dtype;
        if (!strcmp(want, "bfloat16"))
            dt = FTK_DTYPE_BF16;
        else if (!strcmp(want, "float16"))
            dt = FTK_DTYPE_F16;
        s = ftk_model_save(m, o->model, tmp, dt, 0);
    } else {
        struct ftk_peft *p = ftk_model_peft(m);
        const struct ftk_peft_plugin *pl = ftk_peft_get_plugin(p);
        s = FTK_OK;
        if (!FTK_PLUGIN_SLOT(pl, save))
            s = ftk_error_set(FTK_E_UNSUPPORTED, __FILE__, __LINE__, "peft plugin \"%s\" cannot save", pl->name);
        if (s == FTK_OK)
            s = pl->save(p, tmp, o->model);
    }
    if (s == FTK_OK)
        s = ftk_trainer_save_state(t, tmp);
    if (s == FTK_OK)
        s = write_args(o, tc, tmp);
    if (s == FTK_OK) {
        /* A new directory appears whole by one rename; into an existing one (which may hold
         * checkpoints) each file is renamed in, each one complete. */
        struct stat st;
        if (stat(dir, &st) != 0) {
            if (rename(tmp, dir) != 0)
                s = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "%s: cannot rename into place: %s", dir, strerror(errno));
        } else {
            DIR *d = opendir(tmp);
            struct dirent *e;
            char from[4400], to[4400];
            while (d && (e = readdir(d)) && s == FTK_OK) {
                if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                    continue;
                snprintf(from, sizeof from, "%s/%s", tmp, e->d_name);
                snprintf(to, sizeof to, "%s/%s", dir, e->d_name);
                if (rename(from, to) != 0)
                    s = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "%s: %s", to, strerror(errno));
            }
            if (d)
                closedir(d);
            rmdir(tmp);
            if (s == FTK_OK) {   /* the renames inside dir */
                char inside[4100];
                snprintf(inside, sizeof inside, "%s/.", dir);
                ftk_fsync_parent(inside);
            }
        }
        if (s == FTK_OK)
            ftk_fsync_parent(dir);   /* the rename of dir itself */
    }
    if (s != FTK_OK)
        rm_tree(tmp);
    return s;
}

static void put_metrics(FILE *f, const struct ftk_step_result *r, double elapsed, double step_s)
{
    fprintf(f, "{\"step\": %" PRId64 ", \"loss\": %.9g, \"lr\": %.9g, \"grad_norm\": %.9g, \"tokens\": %" PRId64
               ", \"tokens_per_s\": %.6g, \"elapsed_s\": %.6g",
            r->step, r->loss, r->lr, r->grad_norm, r->tokens, step_s > 0 ? (double)r->tokens / step_s : 0.0, elapsed);
    for (int i = 0; i < r->metrics.n; i++)
        fprintf(f, ", \"%s\": %.9g", r->metrics.name[i], r->metrics.value[i]);
    fputs("}\n", f);
    fflush(f);
}

ftk_status ftk_train_run(const struct ftk_train_opts *o)
{
    const struct ftk_backend *be = ftk_backend_cpu();
    void *ctx = NULL;
    struct ftk_backend_opts bo = {.struct_size = sizeof bo, .threads = o->threads};
    FTK_TRY(be->create(&bo, &ctx));
    struct ftk_model *m = NULL, *refm = NULL;
    struct ftk_loss *loss = NULL;
    struct ftk_trainer *t = NULL;
    struct ftk_stream_reader *r = NULL;
    FILE *in = NULL, *mf = NULL;
    struct ftk_message msg;
    ftk_message_init(&msg);
    const char *name = o->input && strcmp(o->input, "-") ? o->input : "<stdin>";
    int is_full = 0;
    ftk_status s = FTK_OK;

    /* the model: from the resume checkpoint when it holds full weights */
    char ckpt_model[4096] = "";
    if (o->resume) {
        snprintf(ckpt_model, sizeof ckpt_model, "%s/model.safetensors", o->resume);
        if (access(ckpt_model, R_OK) != 0)
            ckpt_model[0] = '\0';
        else
            snprintf(ckpt_model, sizeof ckpt_model, "%s", o->resume);
    }
    s = ftk_model_load(ckpt_model[0] ? ckpt_model : o->model, be, ctx, &m);
    if (s == FTK_OK)
        ftk_model_set_recompute(m, o->recompute);
    const struct ftk_peft_plugin *pl = NULL;
    if (s == FTK_OK) {
        char cfg[4096];
        snprintf(cfg, sizeof cfg, "%s/adapter_config.json", o->resume ? o->resume : "");
        if (o->resume && access(cfg, R_OK) == 0)
            s = ftk_model_load_adapter(m, o->resume, o->seed);
        else if (o->adapter && !o->resume)
            s = ftk_model_load_adapter(m, o->adapter, o->seed);
        else if ((s = ftk_plugin_load_peft(o->peft, &pl)) == FTK_OK)
            s = ftk_model_set_peft(m, pl, o->peft_opts, o->seed, NULL);
        if (s == FTK_OK) {
            pl = ftk_peft_get_plugin(ftk_model_peft(m));
            is_full = FTK_PLUGIN_SLOT(pl, base_trainable) && !FTK_PLUGIN_SLOT(pl, save);
        }
    }
    const struct ftk_loss_plugin *lp = NULL;
    if (s == FTK_OK && (s = ftk_plugin_load_loss(o->loss, &lp)) == FTK_OK)
        s = ftk_loss_create(lp, o->loss_opts, &loss);

    /* the input stream and its header */
    if (s == FTK_OK) {
        in = o->input && strcmp(o->input, "-") ? fopen(o->input, "rb") : stdin;
        if (!in)
            s = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "%s: %s", o->input, strerror(errno));
    }
    if (s == FTK_OK)
        s = ftk_stream_reader_open(in, name, &r);
    if (s == FTK_OK)
        s = ftk_stream_read(r, &msg);
    if (s == FTK_OK)
        s = ftk_stream_check_model(&msg, o->model, ftk_model_get_config(m), name);
    int64_t total = o->max_steps;
    if (s == FTK_OK && total <= 0) {
        int64_t nb = -1;
        int said = ftk_message_get_meta_int(&msg, "batches", &nb) == FTK_OK;
        if (said && nb > 0)
            total = (nb + o->train.grad_accum - 1) / o->train.grad_accum;
        else if (said && nb == 0)
            s = ftk_error_set(FTK_E_INVALID, __FILE__, __LINE__, "%s: no batch to train on (the stream header says 0 batches)", name);
        else
            s = ftk_error_set(FTK_E_INVALID, __FILE__, __LINE__,
                              "%s: the stream header does not say how many batches follow: give --max-steps", name);
    }
    struct ftk_train_config tc = o->train;
    if (s == FTK_OK) {
        tc.total_steps = total;
        if (tc.warmup_steps < 0)
            tc.warmup_steps = ftk_schedule_warmup_steps(o->warmup_ratio, total);
        s = ftk_trainer_create(m, loss, &tc, &t);
    }
    /* the reference for batches without ref_logps: --ref-model, else the base under the adapter */
    if (s == FTK_OK && ftk_loss_needs_ref(loss)) {
        if (o->ref_model) {
            if ((s = ftk_model_load(o->ref_model, be, ctx, &refm)) == FTK_OK &&
                ftk_model_get_config(refm)->V != ftk_model_get_config(m)->V)
                s = ftk_error_set(FTK_E_MISMATCH, __FILE__, __LINE__, "--ref-model %s has a vocabulary of %lld, the model %lld",
                                  o->ref_model, (long long)ftk_model_get_config(refm)->V, (long long)ftk_model_get_config(m)->V);
            if (s == FTK_OK)
                ftk_trainer_set_reference(t, refm);
        } else {   /* LoRA-like (no base weight trains): the base, adapter off, is the reference */
            int base_trains = 0;
            for (size_t i = 0; i < ftk_model_n_trainable(m); i++)
                base_trains |= ftk_model_trainable(m, i)->base;
            if (!base_trains)
                ftk_trainer_set_reference(t, m);
        }
    }
    if (s == FTK_OK && o->resume)
        s = ftk_trainer_load_state(t, o->resume);
    if (s == FTK_OK && o->metrics && !(mf = fopen(o->metrics, o->resume ? "a" : "w")))
        s = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "%s: %s", o->metrics, strerror(errno));

    if (s == FTK_OK && !o->quiet) {   /* as peft's print_trainable_parameters */
        int64_t n = 0;
        for (size_t i = 0; i < ftk_model_n_trainable(m); i++)
            n += ftk_model_trainable(m, i)->numel;
        fprintf(stderr, "train-step: %lld trainable parameters in %zu tensors\n", (long long)n, ftk_model_n_trainable(m));
    }

    /* the steps */
    int64_t skip = t ? ftk_trainer_batches_done(t) : 0, seen = 0;
    double t0 = now_s(), last = t0;
    struct ftk_progress prog;
    ftk_progress_start(&prog, "train-step", "steps", total, o->quiet);
    while (s == FTK_OK && ftk_trainer_step(t) < total) {
        s = ftk_stream_read(r, &msg);
        if (s != FTK_OK)
            break;
        const char *kind = ftk_message_kind(&msg);
        if (!strcmp(kind, "end"))
            break;
        if (!strcmp(kind, "example")) {
            s = ftk_error_set(FTK_E_FORMAT, __FILE__, __LINE__, "%s: message %zu is an example: batch the stream with `ftk pack` first",
                              name, ftk_stream_reader_index(r));
            break;
        }
        if (strcmp(kind, "batch"))
            continue;   /* other kinds pass by: they are not ours to train on */
        if (seen++ < skip)
            continue;   /* resumed: already trained on */
        int stepped;
        struct ftk_step_result res;
        if ((s = ftk_trainer_feed(t, &msg, &stepped, &res)) != FTK_OK || !stepped)
            continue;
        double tn = now_s();
        put_metrics(mf ? mf : stdout, &res, tn - t0, tn - last);
        char pst[64];
        snprintf(pst, sizeof pst, "loss %.4f, %.0f tokens/s", res.loss, tn > last ? (double)res.tokens / (tn - last) : 0.0);
        ftk_progress_update(&prog, res.step, pst);
        last = tn;
        if (o->save_steps > 0 && res.step % o->save_steps == 0 && res.step < total) {
            char dir[4096];
            snprintf(dir, sizeof dir, "%s/checkpoint-%" PRId64, o->output, res.step);
            if ((s = ftk_mkdirs(o->output)) == FTK_OK)
                s = save_to(o, &tc, m, t, dir, is_full, 1);
        }
    }
    if (s == FTK_E_EOF)
        s = FTK_OK;
    if (s == FTK_OK && ftk_trainer_step(t) < total) {   /* the data ended inside a step: finish it */
        int stepped;
        struct ftk_step_result res;
        if ((s = ftk_trainer_flush(t, &stepped, &res)) == FTK_OK && stepped)
            put_metrics(mf ? mf : stdout, &res, now_s() - t0, now_s() - last);
    }
    if (s == FTK_OK)
        ftk_progress_done(&prog);
    if (s == FTK_OK && ftk_trainer_step(t) > 0 && ftk_trainer_step(t) < total && !o->quiet)   /* HF would loop the data */
        fprintf(stderr, "train-step: the data ended after %lld of %lld steps; the schedule was sized for %lld (pack more "
                        "epochs to run them all)\n", (long long)ftk_trainer_step(t), (long long)total, (long long)total);
    if (s == FTK_OK && ftk_trainer_step(t) == 0)
        s = ftk_error_set(FTK_E_INVALID, __FILE__, __LINE__, "%s: no batch to train on", name);
    if (s == FTK_OK && o->output)
        s = save_to(o, &tc, m, t, o->output, is_full, 0);
    if (mf && fclose(mf) != 0 && s == FTK_OK)
        s = ftk_error_set(FTK_E_IO, __FILE__, __LINE__, "%s: %s", o->metrics, strerror(errno));
    ftk_message_free(&msg);
    ftk_stream_reader_close(r);
    if (in && in != stdin)
        fclose(in);
    ftk_trainer_free(t);
    ftk_loss_free(loss);
    ftk_model_free(refm);
    ftk_model_free(m);
    be->destroy(ctx);
    return s;
}
