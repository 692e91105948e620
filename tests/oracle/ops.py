#!/usr/bin/env python3
"""tests/oracle/ops.py: small reference outputs from transformers/torch for the CPU op tests.

Writes tests/fixtures/ops/rope.json and tests/fixtures/ops/attention.json (checked by
tests/unit/test_ops_rope.c and test_ops_attention.c). Run from the repository root:
    .venv/bin/python tests/oracle/ops.py
Values are float32 printed with 9 significant digits (round-trips exactly).
"""
import json
import os
import sys

import torch
import transformers
from transformers import LlamaConfig
from transformers.models.llama import modeling_llama as ml

SEED = 1234
OUT = "tests/fixtures/ops"


def f32list(t):
    return [float("%.9g" % x) for x in t.detach().to(torch.float32).reshape(-1).tolist()]


def rope_case(name, rope_scaling, head_dim, theta, max_pos, positions):
    heads = 2
    cfg = dict(hidden_size=head_dim * heads, num_attention_heads=heads, num_key_value_heads=1,
               head_dim=head_dim, max_position_embeddings=max_pos, rope_theta=theta,
               intermediate_size=8, num_hidden_layers=1, vocab_size=8)
    if rope_scaling is not None:
        cfg["rope_scaling"] = dict(rope_scaling)
    config = LlamaConfig(**cfg)
    rot = ml.LlamaRotaryEmbedding(config)
    pos = torch.tensor([positions], dtype=torch.long)
    q = torch.randn(1, heads, len(positions), head_dim)   # (B, H, T, D) as in LlamaAttention
    k = torch.randn(1, 1, len(positions), head_dim)
    cos, sin = rot(q, pos)                                 # runs dynamic_rope_update
    q2, k2 = ml.apply_rotary_pos_emb(q, k, cos, sin)
    return {
        "name": name,
        "type": (rope_scaling or {}).get("rope_type", "default"),
        "theta": theta, "head_dim": head_dim, "max_position_embeddings": max_pos,
        "factor": (rope_scaling or {}).get("factor", 0.0),
        "low_freq_factor": (rope_scaling or {}).get("low_freq_factor", 0.0),
        "high_freq_factor": (rope_scaling or {}).get("high_freq_factor", 0.0),
        "original_max_position_embeddings": (rope_scaling or {}).get("original_max_position_embeddings", 0),
        "attention_scaling": float(rot.attention_scaling),
        "positions": positions,
        "inv_freq": f32list(rot.inv_freq),
        # stored token-major (T, H, D) as ftk lays them out
        "q": f32list(q[0].transpose(0, 1)), "q_rot": f32list(q2[0].transpose(0, 1)),
    }


def attention_case(name, B, T, H, Hkv, D, seg):
    """Eager attention as LlamaAttention computes it (repeat_kv, softmax in float32) with the
    packing mask: query t sees key j iff j <= t and seg[j] == seg[t]."""
    q = torch.randn(B, H, T, D)
    k = torch.randn(B, Hkv, T, D)
    v = torch.randn(B, Hkv, T, D)
    s = torch.tensor(seg, dtype=torch.long).reshape(B, T)
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    same = s[:, :, None] == s[:, None, :]
    allowed = (causal[None] & same)[:, None]                    # (B,1,T,T)
    mask = torch.zeros(B, 1, T, T).masked_fill(~allowed, torch.finfo(torch.float32).min)
    module = torch.nn.Module()
    module.num_key_value_groups = H // Hkv
    module.training = False
    o, _ = ml.eager_attention_forward(module, q, k, v, mask, scaling=D ** -0.5, dropout=0.0)
    # o is (B,T,H,D) already (eager_attention_forward transposes back)
    return {"name": name, "B": B, "T": T, "H": H, "Hkv": Hkv, "D": D, "seg": seg,
            "q": f32list(q.transpose(1, 2)), "k": f32list(k.transpose(1, 2)),
            "v": f32list(v.transpose(1, 2)), "o": f32list(o)}


def logprob_case(name, N, C, V, labels):
    """log_softmax(h w^T) gathered at the labels (ignore_index -100 -> 0), and the gradients of
    L = sum_n dlogp[n] * logp[n] w.r.t. h and w; plus the SFT loss = F.cross_entropy (mean)."""
    h = torch.randn(N, C, requires_grad=True)
    w = torch.randn(V, C, requires_grad=True)
    y = torch.tensor(labels)
    dlogp = torch.randn(N)
    logits = h @ w.T
    lp = torch.log_softmax(logits, -1)
    scored = y != -100
    logp = torch.where(scored, lp.gather(1, y.clamp(min=0)[:, None])[:, 0], torch.zeros(N))
    (dlogp * logp).sum().backward()
    ce = torch.nn.functional.cross_entropy(logits.detach(), y, ignore_index=-100)
    return {"name": name, "N": N, "C": C, "V": V, "labels": labels, "h": f32list(h), "w": f32list(w),
            "dlogp": f32list(dlogp), "logp": f32list(logp), "dh": f32list(h.grad), "dw": f32list(w.grad),
            "sft_loss": float(ce)}


def adamw_case():
    """Three torch.optim.AdamW steps on two tensors with clip_grad_norm_(max_norm=1) each step."""
    a = torch.nn.Parameter(torch.randn(7))
    b = torch.nn.Parameter(torch.randn(3, 2))
    init = [f32list(a), f32list(b)]
    opt = torch.optim.AdamW([a, b], lr=0.05, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    grads, norms = [], []
    for step in range(3):
        ga, gb = torch.randn(7) * 2, torch.randn(3, 2) * 2
        grads.append([f32list(ga), f32list(gb)])
        a.grad, b.grad = ga.clone(), gb.clone()
        norms.append(float(torch.nn.utils.clip_grad_norm_([a, b], 1.0)))
        opt.step()
    return {"lr": 0.05, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1, "max_norm": 1.0,
            "init": init, "grads": grads, "grad_norms": norms, "final": [f32list(a), f32list(b)]}


def main():
    torch.manual_seed(SEED)
    os.makedirs(OUT, exist_ok=True)
    positions = [0, 1, 7, 100]
    ropes = [
        rope_case("default", None, 16, 10000.0, 64, positions),
        rope_case("default theta 1e6", None, 8, 1000000.0, 64, positions),
        rope_case("linear x4", {"rope_type": "linear", "factor": 4.0}, 16, 10000.0, 64, positions),
        # seq_len 101 > 64: the dynamic base grows
        rope_case("dynamic x2, long", {"rope_type": "dynamic", "factor": 2.0}, 16, 10000.0, 64, positions),
        rope_case("dynamic x2, short", {"rope_type": "dynamic", "factor": 2.0}, 16, 10000.0, 256, positions),
        rope_case("llama3", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                  32, 500000.0, 512, positions),
    ]
    meta = {"torch": torch.__version__, "transformers": transformers.__version__, "seed": SEED}
    with open(os.path.join(OUT, "rope.json"), "w") as f:
        json.dump({"meta": meta, "cases": ropes}, f)
    atts = [
        attention_case("GQA 4:2 packed + padding", 2, 6, 4, 2, 4, [1, 1, 2, 2, 2, 0, 1, 1, 1, 1, 1, 1]),
        attention_case("MQA 3:1 causal", 1, 5, 3, 1, 8, [1, 1, 1, 1, 1]),
    ]
    with open(os.path.join(OUT, "attention.json"), "w") as f:
        json.dump({"meta": meta, "cases": atts}, f)
    lps = [
        logprob_case("all scored", 5, 6, 11, [3, 0, 10, 7, 7]),
        logprob_case("prompt and padding ignored", 7, 4, 9, [-100, -100, 2, 8, 0, -100, -100]),
    ]
    with open(os.path.join(OUT, "logprob.json"), "w") as f:
        json.dump({"meta": meta, "cases": lps}, f)
    with open(os.path.join(OUT, "adamw.json"), "w") as f:
        json.dump({"meta": meta, "case": adamw_case()}, f)
    print("wrote", OUT, meta, file=sys.stderr)


if __name__ == "__main__":
    main()
