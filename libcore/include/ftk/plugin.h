/* ftk/plugin.h: the plugin ABI (DESIGN.md section 6, docs/plugins.md).
 *
 * A plugin is a shared object exporting ONE const struct: `ftk_peft_plugin` (a PEFT method) or
 * `ftk_loss_plugin` (a loss). `abi_version` and `struct_size` come first, forever. Appending a
 * slot grows struct_size; changing one bumps the ABI number. libcore refuses a plugin whose ABI
 * differs (FTK_E_ABI, naming both numbers), uses a slot only if struct_size covers it and it is
 * non-NULL, and callocs `priv_size` bytes of private state per instance.
 *
 * Plugins are found by name in ftk_plugin_dir()/{peft,loss}/NAME.so, or by a path containing
 * '/'. They are opened RTLD_NOW | RTLD_LOCAL and never closed (pointers into them may live on).
 *
 * Ownership: libcore owns instances, their private state and every parameter a PEFT plugin
 * registers (ftk_peft_add_param); the plugin never frees them. */
#ifndef FTK_PLUGIN_H
#define FTK_PLUGIN_H

#include <stddef.h>
#include <stdint.h>
#include "backend.h"
#include "message.h"
#include "model_config.h"
#include "source.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FTK_PEFT_ABI 1
#define FTK_LOSS_ABI 1

/* Options: key/value strings, from the tool's --peft-opt/--loss-opt K=V flags or an adapter's
 * config. A NULL-key entry ends the list. */
struct ftk_kv {
    const char *key;
    const char *value;
};
FTK_API const char *ftk_kv_get(const struct ftk_kv *kv, const char *key);
/* Typed getters: the default when absent; FTK_E_INVALID naming the key when malformed. */
FTK_API ftk_status ftk_kv_double(const struct ftk_kv *kv, const char *key, double def, double *out);
FTK_API ftk_status ftk_kv_int(const struct ftk_kv *kv, const char *key, int64_t def, int64_t *out);
FTK_API ftk_status ftk_kv_bool(const struct ftk_kv *kv, const char *key, int def, int *out);

/* Is `slot` of plugin table `pl` usable: covered by its struct_size and non-NULL. */
#define FTK_PLUGIN_SLOT(pl, slot) \
    ((pl)->struct_size >= offsetof(__typeof__(*(pl)), slot) + sizeof((pl)->slot) && (pl)->slot != NULL)

/* ---- PEFT plugins -------------------------------------------------------------------------- */

/* The linear layers of the model, HF module names. Values fixed, appended only. */
enum ftk_linear {
    FTK_LIN_Q = 0, FTK_LIN_K = 1, FTK_LIN_V = 2, FTK_LIN_O = 3,
    FTK_LIN_GATE = 4, FTK_LIN_UP = 5, FTK_LIN_DOWN = 6, FTK_LIN_LM_HEAD = 7,
    FTK_LIN_COUNT
};
/* "q_proj", ..., "lm_head" */
FTK_API const char *ftk_linear_name(enum ftk_linear k);

/* One place in the model: linear `kind` of layer `layer` (-1 for lm_head). */
struct ftk_site {
    int layer;
    enum ftk_linear kind;
    int64_t in, out;           /* I, O of y (N,O) = x (N,I) W^T */
    const char *module;        /* HF module path, "model.layers.3.self_attn.q_proj", "lm_head" */
};

struct ftk_peft;   /* an instance: the plugin, its options, the model it is attached to */

/* One sublayer of the model, for the sublayer_out hook. */
enum ftk_sublayer_kind { FTK_SUB_ATTN = 0, FTK_SUB_MLP = 1 };
struct ftk_sublayer {
    int layer;
    enum ftk_sublayer_kind kind;
    int64_t B, T;              /* N = B*T rows; T includes virtual tokens */
    const int32_t *seg;        /* (B,T) segment ids, backend memory, or NULL (plain causal) */
    int decoding;              /* 1: a KV-cache decode step, one new token per row (T = 1, rows
                                  are independent sequences, earlier tokens are not here) */
    /* appended: the residual stream the sublayer's norm read (N,C), backend memory: the layer's
     * input for attention, the stream after attention for the MLP. Bottleneck adapters read it
     * where adapter-transformers does (Pfeiffer's h + resid, the parallel adapter's input). */
    const float *resid;
    /* appended, backward only: d loss / d resid (N,C) += the plugin's part. It is the gradient
     * of the stream itself, the same memory as dy: read dy fully before adding into it. */
    float *dresid;
};

struct ftk_peft_plugin {
    uint32_t abi_version;      /* FTK_PEFT_ABI */
    uint32_t struct_size;      /* sizeof(struct ftk_peft_plugin) at build time */
    const char *name;          /* "lora", "full", "freeze" */
    size_t priv_size;          /* calloc'd per instance, ftk_peft_priv() */

    /* Parses options and creates trainable parameters (ftk_peft_add_param) for the sites it
     * wants. Called once, after the base model is loaded. */
    ftk_status (*init)(struct ftk_peft *p, const struct ftk_kv *opts);
    /* (optional) 1 if the base weight `hf_name` (e.g. "model.layers.0.mlp.up_proj.weight")
     * trains (full, freeze). Absent: every base weight is frozen. */
    int (*base_trainable)(struct ftk_peft *p, const char *hf_name);
    /* (optional) y (N,O) += delta(x (N,I)) at a site; `train` says whether dropout applies. */
    ftk_status (*linear_forward)(struct ftk_peft *p, const struct ftk_site *s, float *y,
                                 const float *x, int64_t N, int train);
    /* (optional) from dy (N,O): dx (N,I) += d delta/dx, and the plugin's own gradients +=. */
    ftk_status (*linear_backward)(struct ftk_peft *p, const struct ftk_site *s, float *dx,
                                  const float *dy, const float *x, int64_t N);
    /* (optional) writes the adapter into directory `dir` (created by the caller) in the
     * format peft uses for this method; `base_path` goes into the config. */
    ftk_status (*save)(struct ftk_peft *p, const char *dir, const char *base_path);
    /* (optional) reads an adapter written by save (or by peft) after init. */
    ftk_status (*load)(struct ftk_peft *p, struct ftk_source *src);
    /* (optional) W (O,I) += the site's delta as a dense matrix (merging), F32 host memory. */
    ftk_status (*merge)(struct ftk_peft *p, const struct ftk_site *s, float *w_host);
    /* (optional) frees what the plugin allocated itself (scratch); its parameters are libcore's. */
    void (*release)(struct ftk_peft *p);

    /* ---- appended (ABI 1): the optimizer step and the hook points beyond `linear` ----------
     * All slots below are optional; a hook is active when its slot is set, at every layer (the
     * plugin skips layers itself, e.g. AdapterDrop). docs/plugins.md has the call order. */

    /* Once per optimizer step, after the backward of every micro-batch and before gradient
     * clipping: a regulariser adds its gradient to the plugin's parameters and its value to
     * *loss (AdaLoRA's orthogonality, diff pruning's L0 penalty). */
    ftk_status (*before_update)(struct ftk_peft *p, double *loss);
    /* Once per optimizer step, after the update, gradients still holding the step's (clipped)
     * values: AdaLoRA's rank allocation, diff pruning's magnitude projection. `step` is the
     * 0-based index of the step just taken. */
    ftk_status (*after_update)(struct ftk_peft *p, int64_t step);

    /* Once per forward, before layer 0: B rows of T tokens (virtual tokens included). What the
     * whole forward shares is computed here (prefix keys/values from a reparameterising MLP,
     * a prompt encoder's output). */
    ftk_status (*forward_begin)(struct ftk_peft *p, int64_t B, int64_t T, int train);
    /* Once per backward, after layer 0's and before the embedding's: the gradients collected
     * for what forward_begin computed flow into the plugin's parameters. */
    ftk_status (*backward_end)(struct ftk_peft *p);

    /* sublayer_out. h (N,C) is a sublayer's output before the residual add (attention: after
     * o_proj; MLP: after down_proj), x (N,C) the normed input that sublayer read. The plugin
     * replaces h by h + delta(h, x) in place; in training it keeps what its backward needs
     * (called again for the same layer when the model recomputes activations). */
    ftk_status (*sublayer_forward)(struct ftk_peft *p, const struct ftk_sublayer *s, float *h,
                                   const float *x, int train);
    /* dy (N,C): the gradient w.r.t. the new h. The core has copied dy into dh; the plugin adds
     * the delta's part: dh (N,C) += (d delta/dh)^T dy, dx (N,C) += (d delta/dx)^T dy, and its
     * own gradients +=. */
    ftk_status (*sublayer_backward)(struct ftk_peft *p, const struct ftk_sublayer *s, float *dh,
                                    float *dx, const float *dy, const float *x);

    /* attn_kv. Prefix keys and values of layer `layer`, shared by every row and seen by every
     * query (peft PREFIX_TUNING: used as already-rotated cached keys, so no RoPE; the real
     * tokens' positions start at *P). *P is the same for every layer (0: no prefix). pk, pv
     * (P,Hkv,D) stay valid until the next forward_begin; the core adds their gradients into
     * dpk, dpv (P,Hkv,D) (NULL when not training). */
    ftk_status (*attn_prefix)(struct ftk_peft *p, int layer, int64_t *P, const float **pk,
                              const float **pv, float **dpk, float **dpv);

    /* embed. P virtual tokens prepended to every row (peft PROMPT_TUNING, P_TUNING): the core
     * runs rows of P + T tokens whose first P are the plugin's, at positions 0..P-1 (the real
     * tokens follow at P..), unlabelled. Returns P (constant for the instance's life). */
    int64_t (*n_virtual)(struct ftk_peft *p);
    /* x (B,T,C), T including the P virtual tokens: writes rows x[b, 0..P-1, :]. */
    ftk_status (*embed_forward)(struct ftk_peft *p, float *x, int64_t B, int64_t T, int train);
    /* dx (B,T,C): the gradient w.r.t. the layer-0 input; the plugin reads its rows' part. */
    ftk_status (*embed_backward)(struct ftk_peft *p, const float *dx, int64_t B, int64_t T);

    /* head. K output rows of the plugin's (WARP's verbalizer) in every head of the model: the
     * training/eval log-prob head, ftk_model_logits and generation. Returns K (0: no head; the
     * same for the instance's life) and sets ids (K) host, distinct token ids in [0,V); rows
     * (K,C) backend memory; grads (K,C) backend memory that the core adds d loss / d rows into
     * (NULL: not computed). All stay valid for the instance's life. *restrict_to_rows:
     *   0 full vocabulary: scores x W'^T with W' = lm_head whose rows ids[k] are rows[k];
     *     lm_head itself (or the tied embed_tokens) keeps its values, and its gradient, when it
     *     trains, gets nothing at those rows (they take no part in the head);
     *   1 class: log-probs normalise over the K scores x rows^T only (WARP's softmax over the
     *     classes); a label that is not one of ids is an error naming its row and position, and
     *     logits outside the K ids are -inf (ftk_model_logits, generation). */
    int64_t (*head_rows)(struct ftk_peft *p, const int32_t **ids, const float **rows, float **grads,
                         int *restrict_to_rows);

    /* attn_kv, appended: 1 if attn_prefix's pk, pv, dpk, dpv are (B,P,Hkv,D), one prefix per row
     * of the forward under way (B of forward_begin; UniPELT scales the prefix by a gate per
     * example); absent or 0: (P,Hkv,D), shared by all rows. Asked once per forward, after
     * forward_begin. */
    int (*attn_prefix_per_row)(struct ftk_peft *p);

    /* generation, appended: 1 if a KV-cache decode step cannot give this instance's output for
     * a new token (PALs' own attention over the earlier tokens, UniPELT's gates pooled over the
     * whole row): generation then runs the whole sequence through the model again for every new
     * token (ftk_model_decode_exact). Absent or 0: KV-cache decoding. */
    int (*decode_recomputes)(struct ftk_peft *p);

    /* merging, appended (optional): *has_bias = whether the merged model has a bias at the
     * site, and if so its value (O), F32 host memory, written whole (BitFit's trained biases;
     * (IA)^3's b * l). ftk merge-lora stores it as <module>.bias, adding the tensor and the
     * config switch (attention_bias, mlp_bias) when the base has none. */
    ftk_status (*merge_bias)(struct ftk_peft *p, const struct ftk_site *s, float *bias_host, int *has_bias);
};

/* What a plugin may ask of its instance. */
FTK_API void *ftk_peft_priv(struct ftk_peft *p);
FTK_API const struct ftk_peft_plugin *ftk_peft_get_plugin(const struct ftk_peft *p);
FTK_API const struct ftk_model_config *ftk_peft_config(struct ftk_peft *p);
FTK_API const struct ftk_backend *ftk_peft_backend(struct ftk_peft *p, void **ctx);
/* The instance's seed (--seed): plugins derive init and dropout randomness from it. */
FTK_API uint64_t ftk_peft_seed(struct ftk_peft *p);
/* The optimizer step about to run (0-based); dropout masks depend on it. */
FTK_API int64_t ftk_peft_step(struct ftk_peft *p);
/* What dropout-like randomness (dropout masks, sampled gates) is keyed on: the step, made
 * distinct for each micro-batch of a gradient-accumulated step, as torch draws anew in each
 * forward (the step itself for the first micro-batch). The same in a forward, its recompute and
 * its backward, and on resume. */
FTK_API uint64_t ftk_peft_noise_step(struct ftk_peft *p);
/* The segment ids (B,T) of the forward under way (backend memory; B, T as forward_begin gave
 * them), valid from forward_begin to the end of that forward's backward: 0 marks padding, each
 * other value one document (packed rows). NULL when the batch has none (every row is one
 * document, no padding) and in KV-cache decode steps. For hooks that pool over a row (UniPELT's
 * gates). */
FTK_API const int32_t *ftk_peft_segments(struct ftk_peft *p);
/* Registers a trainable parameter of the plugin, zero-filled backend memory, with its saved
 * name (PEFT's, e.g. "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").
 * *w and *g (its gradient) stay valid for the instance's life. `decay` 0 excludes it from
 * weight decay. */
FTK_API ftk_status ftk_peft_add_param(struct ftk_peft *p, const char *name, int ndim, const int64_t *shape,
                                      int decay, float **w, float **g);
/* Multiplies the learning rate of the plugin's parameter `name` by `scale` (LoRA+'s ratio for
 * lora_B). FTK_E_NOTFOUND when the plugin registered no such parameter. */
FTK_API ftk_status ftk_peft_set_lr_scale(struct ftk_peft *p, const char *name, float scale);
/* Sites of the model, for plugins that pick by name (LoRA's target_modules). */
FTK_API size_t ftk_peft_n_sites(struct ftk_peft *p);
FTK_API const struct ftk_site *ftk_peft_site(struct ftk_peft *p, size_t i);
/* Marks a site as hooked: linear_forward/backward are called there. */
FTK_API ftk_status ftk_peft_attach(struct ftk_peft *p, const struct ftk_site *s);
/* Adapter files, shared by the plugins' save and load. An adapter tensor `name` of checkpoint
 * `st` (opened from `where`) into backend memory `dst` as F32, after checking its shape is
 * (d0) for ndim 1 or (d0,d1) for ndim 2: FTK_E_NOTFOUND / FTK_E_MISMATCH name file and tensor. */
struct ftk_st_model;
FTK_API ftk_status ftk_peft_load_tensor(struct ftk_peft *p, const struct ftk_st_model *st, const char *where,
                                        const char *name, int ndim, int64_t d0, int64_t d1, float *dst);
/* Writes adapter_config.json (JSON text) into dir, crash-safely, ending with a newline. */
FTK_API ftk_status ftk_peft_write_config(const char *dir, const char *json);
/* peft's rank_pattern / alpha_pattern: `json` is the option's JSON object {"regex": number};
 * *out = the value of its first key whose regex full-matches `module` as peft's
 * get_pattern_key does (re.match(rf"(.*\.)?({key})$", module)), else `def` (also for NULL or
 * ""). `option` names the option in errors (a bad JSON object, a regex ftk cannot run). */
FTK_API ftk_status ftk_peft_pattern(const char *json, const char *option, const char *module, double def, double *out);
/* *hit = whether Python regex `regex` matches all of `name` (peft's target_modules or
 * exclude_modules given as one string: re.fullmatch). Errors as ftk_peft_pattern's. */
FTK_API ftk_status ftk_peft_regex_fullmatch(const char *regex, const char *option, const char *name, int *hit);
/* A base weight, F32, backend memory (for PiSSA-like inits and merges). NULL if absent. */
FTK_API float *ftk_peft_base_weight(struct ftk_peft *p, const char *hf_name, int64_t *numel);

/* ---- loss plugins -------------------------------------------------------------------------- */

/* What a loss sees of one batch: per-row sums of label log-probs and counts. Preference
 * batches (pairwise) hold B/2 chosen rows, then the B/2 rejected rows in the same order. */
struct ftk_loss_batch {
    int64_t B;
    int pairwise;
    const float *logps;        /* (B) sum over labelled tokens of log p(label) */
    const float *ref_logps;    /* (B) the same under the reference model, or NULL */
    const int64_t *n_tokens;   /* (B) labelled tokens per row */
    int64_t n_tokens_total;    /* labelled tokens of the whole optimizer step (gradient
                                  accumulation): SFT's token mean divides by this */
    const struct ftk_message *batch;   /* the batch message (kto_tag, ...) */
    int64_t accum;             /* micro-batches in the optimizer step: a loss that averages over
                                  its batch divides by this (HF Trainer's loss / GA); the token
                                  mean uses n_tokens_total instead */
    /* Appended (ABI 1): KTO's KL rows (the batch's kl_input_ids ...), forwarded without
     * gradient as TRL's KTOTrainer does (torch.no_grad). Set only when the loss asks for them
     * (needs_kl); otherwise B_kl = 0 and both NULL. */
    int64_t B_kl;
    const float *kl_logps;     /* (B_kl) policy log-prob sums of the KL rows */
    const float *kl_ref_logps; /* (B_kl) the same under the reference model */
};

#define FTK_MAX_METRICS 16
struct ftk_metrics {
    int n;
    char name[FTK_MAX_METRICS][40];   /* TRL's names: "rewards/chosen", ... */
    double value[FTK_MAX_METRICS];
};
FTK_API void ftk_metrics_add(struct ftk_metrics *m, const char *name, double value);

struct ftk_loss;
struct ftk_loss_plugin {
    uint32_t abi_version;      /* FTK_LOSS_ABI */
    uint32_t struct_size;
    const char *name;          /* "sft", "dpo", ... */
    size_t priv_size;
    ftk_status (*init)(struct ftk_loss *l, const struct ftk_kv *opts);
    /* (optional) 1 if the loss needs ref_logps. */
    int (*needs_ref)(struct ftk_loss *l);
    /* loss, dlogps (B) = d loss / d logps[b], and metrics. */
    ftk_status (*compute)(struct ftk_loss *l, const struct ftk_loss_batch *b, double *loss,
                          float *dlogps, struct ftk_metrics *metrics);
    /* (optional, appended) 1 if the loss needs the KL rows of KTO batches (B_kl, kl_logps and,
     * with needs_ref, kl_ref_logps). */
    int (*needs_kl)(struct ftk_loss *l);
    /* (optional, appended) 1 if dlogps does not depend on the log-probs (SFT's token mean):
     * the trainer then asks for dlogps first and runs the fused forward-backward. */
    int (*linear)(struct ftk_loss *l);
};
FTK_API void *ftk_loss_priv(struct ftk_loss *l);
FTK_API int ftk_loss_is_linear(struct ftk_loss *l);

/* ---- loading (libcore side) ------------------------------------------------------------- */

/* Finds and checks a plugin by name ("lora") or path ("./my.so"). */
FTK_API ftk_status ftk_plugin_load_peft(const char *name_or_path, const struct ftk_peft_plugin **out);
FTK_API ftk_status ftk_plugin_load_loss(const char *name_or_path, const struct ftk_loss_plugin **out);

FTK_API ftk_status ftk_loss_create(const struct ftk_loss_plugin *pl, const struct ftk_kv *opts, struct ftk_loss **out);
FTK_API void ftk_loss_free(struct ftk_loss *l);
FTK_API int ftk_loss_needs_ref(struct ftk_loss *l);
FTK_API int ftk_loss_needs_kl(struct ftk_loss *l);
FTK_API ftk_status ftk_loss_compute(struct ftk_loss *l, const struct ftk_loss_batch *b, double *loss,
                                    float *dlogps, struct ftk_metrics *metrics);

#ifdef __cplusplus
}
#endif
#endif
