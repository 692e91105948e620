#!/usr/bin/env python3
"""Parity fixtures for the MAM adapter (plugin mam) and UniPELT (plugin unipelt), made with torch
autograd on transformers' LlamaForCausalLM with the papers' formulas attached (peft has neither).

MAM adapter (He et al. 2022; their petl/petl_factory.py Prefix + Adapter_Layer, modeling_bart.py
with attn_mode=prefix, attn_option=concat, ffn_option=parallel):
    prefix: kv = tanh(E W1^T + b1) W2^T + b2 (one MLP for all layers and heads), layer l's P keys
        and values concatenated before its own (no RoPE on them; the real tokens at P, P+1, ..., as
        ftk's attn_kv hook and peft's cache place them)
    after the MLP: h' = h + s * (relu(u Wd^T + bd) Wu^T + bu), u = resid (the stream the MLP's norm
        reads; adapters' ParallelAdapter) or the MLP's normed input (parallel_input=normed)
UniPELT (Mao et al. 2022; their lora_layers.py, modeling_bert.py, adapters/modeling.py), every
    gate G(x) = mean over the row's tokens of sigmoid(x_t w + b), one number per example:
    LoRA on q_proj, v_proj: y += G_L(x) (x A^T) B^T, x the linear's input
    prefix: layer l's keys and values times G_P(x), x the attention's (normed) input
    Pfeiffer adapter after the MLP: h' = h + G_A(u) (act(u Wd^T + bd) Wu^T + bu), u = h + resid

The prefix enters through a wrapper of transformers' eager attention (the keys/values after RoPE
get the prefix in front, the mask P visible columns); the script checks that, for MAM, this equals
the base model given the prefix as a cache (peft's way) with the adapter hooks. LoRA, gates and
adapters are forward hooks (tests/oracle/adapters.py's Hooks for the MLP).

Base: tests/fixtures/hf_tiny/llama (F32), batch from its expected.safetensors, positions + P. For
each variant T the adapter goes to tests/fixtures/peft_methods/mam_unipelt/T/ in ftk's format
(adapter_config.json + adapter_model.safetensors), weights random so every gradient is non-zero,
and to expected.safetensors:
  T.logits, T.loss           train-mode forward (no dropout)
  T.grad.<name>, T.grad_norm gradients, total norm (clip 1.0)
  T.step1.<name>, T.loss1    one AdamW step (lr 1e-2, betas .9/.999, eps 1e-8, weight decay 0.01
                             on all but biases) and the loss after it
Run from the repo root:  .venv/bin/python tests/oracle/mam_unipelt.py
"""
import importlib.util
import json
import os
import sys

import torch
import torch.nn.functional as F
import transformers
import transformers.models.llama.modeling_llama as llama
from safetensors.torch import load_file, save_file

spec = importlib.util.spec_from_file_location("oracle_adapters", os.path.join(os.path.dirname(__file__), "adapters.py"))
ad = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ad)

SRC = ad.SRC
OUT = "tests/fixtures/peft_methods/mam_unipelt"
SEED = 1107

VARIANTS = {
    "mam": {"peft_type": "MAM", "num_virtual_tokens": 3, "prefix_projection": True, "encoder_hidden_size": 12,
            "bottleneck_size": 4, "scaling": 4.0, "non_linearity": "relu", "parallel_input": "residual"},
    "mam_normed": {"peft_type": "MAM", "num_virtual_tokens": 2, "prefix_projection": False, "encoder_hidden_size": 16,
                   "bottleneck_size": 3, "scaling": "learned", "non_linearity": "gelu", "parallel_input": "normed"},
    "unipelt": {"peft_type": "UNIPELT", "num_virtual_tokens": 3, "prefix_projection": True, "encoder_hidden_size": 12,
                "r": 2, "bottleneck_size": 4, "non_linearity": "relu"},
    "unipelt_noproj": {"peft_type": "UNIPELT", "num_virtual_tokens": 2, "prefix_projection": False,
                       "encoder_hidden_size": 16, "r": 3, "bottleneck_size": 3, "non_linearity": "swish"},
}


class Prefix(torch.nn.Module):
    """peft's PrefixEncoder / He et al.'s Prefix: (P, 2 L TD), by layer and kind (P, Hkv, D)."""

    def __init__(self, cfg, mc):
        super().__init__()
        self.L, self.Hkv, self.D = mc.num_hidden_layers, mc.num_key_value_heads, mc.head_dim
        P, TD, E = cfg["num_virtual_tokens"], self.Hkv * self.D, cfg["encoder_hidden_size"]
        self.proj = cfg["prefix_projection"]
        self.emb = torch.nn.Parameter(torch.zeros(P, TD if self.proj else 2 * self.L * TD))
        if self.proj:
            self.l1, self.l2 = torch.nn.Linear(TD, E), torch.nn.Linear(E, 2 * self.L * TD)

    def named(self):
        out = [("prompt_encoder.embedding.weight", self.emb)]
        if self.proj:
            out += [("prompt_encoder.transform.0.weight", self.l1.weight), ("prompt_encoder.transform.0.bias", self.l1.bias),
                    ("prompt_encoder.transform.2.weight", self.l2.weight), ("prompt_encoder.transform.2.bias", self.l2.bias)]
        return out

    def forward(self):
        kv = self.l2(torch.tanh(self.l1(self.emb))) if self.proj else self.emb
        return kv.view(kv.shape[0], 2 * self.L, self.Hkv, self.D)  # [p, 2l + kind, head, dim]


def gate_of(lin, x):
    """UniPELT's gate: mean over the sequence of sigmoid(x w + b), (B, 1, 1)."""
    return torch.sigmoid(lin(x)).mean(dim=1, keepdim=True)


class PrefixAttention:
    """transformers' eager attention with layer l's prefix keys/values (B,Hkv,P,D) in front."""

    def __init__(self):
        self.prefix = None  # layer -> (k, v) each (B, Hkv, P, D)
        self.orig = llama.eager_attention_forward

    def __call__(self, module, query, key, value, attention_mask, scaling, dropout=0.0, **kw):
        if self.prefix is not None:
            pk, pv = self.prefix(module.layer_idx)
            P, T = pk.shape[2], key.shape[2]
            key, value = torch.cat([pk, key], 2), torch.cat([pv, value], 2)
            if attention_mask is None:
                attention_mask = torch.full((T, T), float("-inf")).triu(1)[None, None].expand(query.shape[0], 1, T, T)
            attention_mask = torch.cat([torch.zeros(*attention_mask.shape[:3], P, dtype=attention_mask.dtype),
                                        attention_mask], -1)
        return self.orig(module, query, key, value, attention_mask, scaling, dropout, **kw)


ATTN = PrefixAttention()
llama.eager_attention_forward = ATTN


def build(tag, cfg, model, gen):
    """Attaches the method to model; returns the named trainable parameters."""
    mc = model.config
    C, L = mc.hidden_size, mc.num_hidden_layers
    pre = Prefix(cfg, mc)
    named = pre.named()
    uni = cfg["peft_type"] == "UNIPELT"
    mods, lin = {}, {}
    if uni:
        act = ad.ACT[cfg["non_linearity"]]
        xin = {}
        for l, layer in enumerate(model.model.layers):
            pg = torch.nn.Linear(C, 1)
            lin[(l, "prefix")] = pg
            named += [(f"model.layers.{l}.self_attn.prefix_gate.weight", pg.weight),
                      (f"model.layers.{l}.self_attn.prefix_gate.bias", pg.bias)]
            for proj in ("q_proj", "v_proj"):
                site = getattr(layer.self_attn, proj)
                A = torch.nn.Parameter(torch.zeros(cfg["r"], C))
                Bm = torch.nn.Parameter(torch.zeros(site.out_features, cfg["r"]))
                g = torch.nn.Linear(C, 1)
                stem = f"base_model.model.model.layers.{l}.self_attn.{proj}."
                named += [(stem + "lora_A.weight", A), (stem + "lora_B.weight", Bm), (stem + "lora_gate.weight", g.weight),
                          (stem + "lora_gate.bias", g.bias)]

                def hook(mod, args, out, A=A, Bm=Bm, g=g):
                    x = args[0]
                    return out + gate_of(g, x) * (x @ A.t() @ Bm.t())
                site.register_forward_hook(hook)
            layer.self_attn.register_forward_pre_hook(
                lambda mod, args, kwargs, l=l: xin.__setitem__(l, kwargs.get("hidden_states", args[0] if args else None)),
                with_kwargs=True)
        for l in range(L):
            b = ad.Bottleneck(C, cfg["bottleneck_size"], cfg["non_linearity"], 1.0)
            g = torch.nn.Linear(C, 1)
            mods[l] = (b, g)
            stem = f"model.layers.{l}.output_adapters.adapters.default."
            named += b.named(stem) + [(stem + "gate.weight", g.weight), (stem + "gate.bias", g.bias)]

        def edit(l, loc, h, x, resid):
            if loc == 0:
                return h
            b, g = mods[l]
            u = h + resid
            return h + gate_of(g, u) * b(u)

        def prefix(l):
            kv = pre()
            G = gate_of(lin[(l, "prefix")], xin[l])[:, :, :, None]  # (B,1,1,1)
            k = kv[:, 2 * l].permute(1, 0, 2)[None]  # (1, Hkv, P, D)
            v = kv[:, 2 * l + 1].permute(1, 0, 2)[None]
            return G * k, G * v
    else:
        for l in range(L):
            b = ad.Bottleneck(C, cfg["bottleneck_size"], cfg["non_linearity"], cfg["scaling"])
            mods[l] = b
            named += b.named(f"model.layers.{l}.output_adapters.adapters.default.")

        def edit(l, loc, h, x, resid):
            if loc == 0:
                return h
            return h + mods[l](x if cfg["parallel_input"] == "normed" else resid)

        def prefix(l):
            kv = pre()
            B = xin_B[0]
            return (kv[:, 2 * l].permute(1, 0, 2)[None].expand(B, -1, -1, -1),
                    kv[:, 2 * l + 1].permute(1, 0, 2)[None].expand(B, -1, -1, -1))
        xin_B = [None]
        model.model.register_forward_pre_hook(
            lambda mod, args, kwargs: xin_B.__setitem__(0, kwargs["input_ids"].shape[0]), with_kwargs=True)
    ad.randomise(named, gen)
    ad.Hooks(model, edit)
    return named, prefix, pre


def cache_of(pre, B):
    """The prefix as a cache of P positions (peft's get_prompt): the MAM cross-check."""
    kv = pre().detach()
    cache = transformers.DynamicCache()
    for l in range(pre.L):
        k = kv[:, 2 * l].permute(1, 0, 2)[None].expand(B, -1, -1, -1).contiguous()
        v = kv[:, 2 * l + 1].permute(1, 0, 2)[None].expand(B, -1, -1, -1).contiguous()
        cache.update(k, v, l)
    return cache


def main():
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)
    e = load_file(os.path.join(SRC, "expected.safetensors"))
    ids, labels, pos = e["input_ids"].long(), e["labels"].long(), e["position_ids"].long()
    exp = {"input_ids": e["input_ids"], "labels": e["labels"], "position_ids": e["position_ids"]}
    os.makedirs(OUT, exist_ok=True)
    for tag, cfg in VARIANTS.items():
        model = ad.load_base()
        with torch.no_grad():
            plain = model(input_ids=ids, position_ids=pos).logits
        named, prefix, pre = build(tag, cfg, model, gen)
        ATTN.prefix = prefix
        P = cfg["num_virtual_tokens"]
        batch = (ids, labels, pos + P)
        with torch.no_grad():
            lg = model(input_ids=ids, position_ids=pos + P).logits
            if cfg["peft_type"] == "MAM":   # the wrapper = the prefix as peft's cache
                ATTN.prefix = None
                cached = model(input_ids=ids, position_ids=pos + P, past_key_values=cache_of(pre, ids.shape[0])).logits
                ATTN.prefix = prefix
                d = ((cached - lg).abs().max() / lg.abs().max()).item()
                assert d < 1e-6, (tag, d)
        moved = ((lg - plain).abs().max() / plain.abs().max()).item()
        assert moved > 1e-3, (tag, moved)
        ad.write_dir(os.path.join(OUT, tag), {k: v for k, v in cfg.items()}, named)
        ad.train_record(exp, tag, model, named, batch)
        ATTN.prefix = None
        print(f"{tag}: {len(named)} tensors, loss {exp[tag + '.loss'].item():.6f} -> {exp[tag + '.loss1'].item():.6f}, "
              f"logits moved {moved:.2e} from the base", file=sys.stderr)
    save_file({k: v.contiguous() for k, v in exp.items()}, os.path.join(OUT, "expected.safetensors"),
              metadata={"seed": str(SEED), "torch": torch.__version__, "transformers": transformers.__version__})
    with open(os.path.join(OUT, "VERSIONS.json"), "w") as f:
        json.dump({"torch": torch.__version__, "transformers": transformers.__version__, "seed": SEED,
                   "script": "tests/oracle/mam_unipelt.py"}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
