/* libcore/model-impl.h: the model's internals, shared by model.c (loading, parameters, the
 * PEFT instance) and model_run.c (forward and backward). Not installed. */
#ifndef FTK_MODEL_IMPL_H
#define FTK_MODEL_IMPL_H

#include "ftk/model.h"
#include "ftk/plugin.h"

/* Pointers into the parameter table for one layer (backend memory; NULL when absent). */
struct layer_w {
    struct ftk_param *ln1, *ln2, *qn, *kn;
    struct ftk_param *lin[FTK_LIN_COUNT - 1];     /* q k v o gate up down weights */
    struct ftk_param *bias[FTK_LIN_COUNT - 1];    /* their biases, if any */
};

/* Activations saved by a train forward for backward; shapes per layer (N = B*T tokens). */
struct layer_act {
    float *x_in;      /* (N,C) residual stream entering the layer */
    float *a;         /* (N,C) input_layernorm output */
    float *rstd1;     /* (N) */
    float *q, *k, *v; /* (N,H*D), (N,Hkv*D) x2; q, k after norm and RoPE */
    float *q_pre, *k_pre, *qrstd, *krstd;   /* qk_norm only: before the norm, (N*H), (N*Hkv) */
    float *o;         /* (N,H*D) attention output */
    float *lse;       /* (N,H) */
    float *x_mid;     /* (N,C) residual after attention */
    float *m;         /* (N,C) post_attention_layernorm output */
    float *rstd2;     /* (N) */
    float *gate, *up, *h;   /* (N,F) */
};

struct ftk_peft {
    const struct ftk_peft_plugin *pl;
    struct ftk_model *model;
    void *priv;
    uint64_t seed;
    int attached[64][FTK_LIN_COUNT];   /* per layer, per linear; layer index 63 stands for lm_head */
};

struct ftk_model {
    struct ftk_model_config cfg;
    const struct ftk_backend *be;
    void *ctx;
    struct ftk_param *params;      /* base weights, HF order */
    size_t n_params;
    float *own_head;            /* lm_head's own copy when untied for modules_to_save (not in the arena) */
    struct ftk_param **train;      /* trainable: base ones, then the plugin's */
    size_t n_train, cap_train;
    struct ftk_param *extra;       /* the plugin's parameters (owned) */
    size_t n_extra, cap_extra;
    struct layer_w *layers;        /* (L) */
    struct ftk_param *wte, *norm, *lm_head;   /* lm_head == wte when tied */
    struct ftk_site *sites;        /* every linear: L*7 + lm_head */
    size_t n_sites;
    char (*site_names)[96];
    struct ftk_peft *peft;
    int adapter_on;
    int64_t step;
    int64_t micro;              /* the micro-batch of the step under way (gradient accumulation) */

    /* Workspace of the last forward, reused while big enough. */
    void *act_arena;
    size_t act_size;
    int64_t B, T, N;
    int trained;                   /* the last forward kept activations */
    int has_seg;                   /* the last batch had segment_ids */
    int recompute;                 /* keep only layer inputs; rerun each layer in backward */
    struct ftk_kv_cache *capture;  /* prefill: the cache and row k/v go to */
    int64_t capture_row;
    struct layer_act *act;         /* (L) */
    float *x_final, *xf, *rstdf;   /* (N,C), (N,C), (N) */
    float *logp_tok, *lse_tok;     /* (N) */
    int32_t *ids, *labels_shift, *pos, *seg;   /* (N) device copies; labels shifted */
    int64_t n_virtual;             /* embed hook: virtual tokens at the head of each row (of T) */
    int64_t n_prefix;              /* attn_kv hook: prefix keys/values of every layer */
    int64_t prefix_sets;           /* 1: one prefix for all rows; B: one per row */
    float *inv_freq;               /* (D/2) */
    int64_t rot_dim;
    float rope_scale;
    float *scratch1, *scratch2;    /* (N, max(C, H*D, F)) gradient buffers */
    float *dx, *dtmp;              /* (N,C) */
    float *dq, *dk, *dv, *do_, *dgate, *dup, *dh;   /* backward buffers */
};

/* A KV cache: per layer (B,S,Hkv,D) keys and values, post-RoPE; len (B) positions filled. */
struct ftk_kv_cache {
    struct ftk_model *m;
    int64_t B, S;
    float **k, **v;       /* (L) backend memory */
    int32_t *len;         /* (B) host */
    int32_t *len_dev;     /* (B) backend memory */
};

/* model_run.c, shared with model_infer.c */
ftk_status model_workspace(struct ftk_model *m, int64_t B, int64_t T, int train);
ftk_status model_lin_fwd(struct ftk_model *m, int l, int k, float *y, const float *x, int train);
ftk_status model_run_forward(struct ftk_model *m, const struct ftk_batch_view *b, int train, int32_t *host_shift);
/* model_infer.c: copies N positions of keys, values of layer l of a prefill (one row) into the
 * cache from position `at` */
ftk_status model_capture_kv(struct ftk_model *m, int l, const float *k, const float *v, int64_t N, int64_t at);

/* The PEFT hooks beyond `linear` (model_hooks.c). Each is a no-op when the plugin lacks it or
 * the adapter is off. */
#define MODEL_HOOK(m, slot) ((m)->adapter_on && (m)->peft && FTK_PLUGIN_SLOT((m)->peft->pl, slot))
/* Virtual tokens the embed hook prepends (0 without). */
int64_t model_n_virtual(struct ftk_model *m);
/* b with n_virtual unlabelled tokens (id 0) at the head of each row, positions 0..P-1 then
 * the row's own + P; *buf (free it) holds the arrays. */
ftk_status model_expand_virtual(struct ftk_model *m, const struct ftk_batch_view *b, struct ftk_batch_view *out,
                                int32_t **buf);
ftk_status model_sublayer_fwd(struct ftk_model *m, int l, enum ftk_sublayer_kind kind, float *h, const float *x,
                              const float *resid, int train, int decoding);
/* dh = dy + the plugin's part; dx += the plugin's part (dh may not alias dy); dy, the stream's
 * gradient, becomes d loss / d resid but for the norm's part (the plugin's part added) */
ftk_status model_sublayer_bwd(struct ftk_model *m, int l, enum ftk_sublayer_kind kind, float *dh, float *dx,
                              float *dy, const float *x, const float *resid);
ftk_status model_prefix(struct ftk_model *m, int l, const float **pk, const float **pv, float **dpk, float **dpv);

/* The log-prob head of m->xf (N,C) against m->labels_shift (N), with the head hook's rows
 * (model_head.c; without the hook: the backend's logprob ops on lm_head). forward: logp_tok,
 * lse_tok (N). backward: from the token weights in m->scratch2 (N), dxf (N,C) +=, lm_head's
 * gradient += (when it trains), the rows' gradients +=. fused: both (one logits pass per chunk
 * without the hook). */
ftk_status model_head_forward(struct ftk_model *m);
ftk_status model_head_backward(struct ftk_model *m, float *dxf);
ftk_status model_head_fused(struct ftk_model *m, float *dxf);
/* Host logits (rows,V) of the final hidden states xf (rows,C), already x lm_head^T: the hook's
 * columns ids[k] become x rows[k] (class mode: -inf in the others). No-op without the hook. */
ftk_status model_head_patch_logits(struct ftk_model *m, const float *xf, int64_t rows, float *logits);

/* peft hook dispatch (model.c) */
int ftk_peft_hooked(const struct ftk_peft *p, int layer, enum ftk_linear k);

#endif
