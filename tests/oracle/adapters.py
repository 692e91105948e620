#!/usr/bin/env python3
"""Parity fixtures for the sublayer_out-hook methods of issue 11 (plugins bottleneck, pals,
adapter_fusion), made with torch autograd on transformers' LlamaForCausalLM.

The adapters are written here from the papers' formulas, as adapter-transformers places them in
Llama (models/llama/modeling_llama.py: attention_adapters after self_attn, output_adapters after
the MLP, given h = the sublayer output and resid = the residual stream entering the sublayer) and
attached with forward hooks: self_attn's and mlp's outputs are replaced, the norms' pre-hooks
capture resid. One bottleneck module (methods/modeling.py Adapter / ParallelAdapter):
    y = s * (act(u Wd^T + bd) Wu^T + bu),  h' = h + y
    u = h (Houlsby), h + resid (Pfeiffer), resid (parallel), the normed x (parallel_input=normed)
PALs (Stickland & Murray 2019; the authors' BERTPals): parallel to each layer,
    layer output += act(V^D(SelfAttn(V^E a))), a = the layer's normed input, V^E/V^D shared, a
    per-layer causal multi-head attention (Q, K, V with biases, no output matrix, no RoPE)
AdapterFusion (Pfeiffer et al. 2021; adapters' BertFusion, "dynamic"): per location,
    p = softmax_a((u Wq^T + bq) . (y_a Wk^T + bk)),  h' = h + sum_a p_a (y_a Wv^T)
    over the frozen adapters' outputs y_a; Wv starts as the identity (+1e-6 off the diagonal).

Base: tests/fixtures/hf_tiny/llama (F32), batch from its expected.safetensors. For each variant M
the adapter goes to tests/fixtures/peft_methods/adapters/M/ in ftk's format (adapter_config.json +
adapter_model.safetensors; fusion: its two stage-1 adapters fusion_a/, fusion_b/ and the fusion
weights as fusion*.init.<name>), weights random so every gradient is non-zero, and to
expected.safetensors:
  M.logits, M.loss                    train-mode forward (dropout 0)
  M.grad.<name>, M.grad_norm          gradients, total norm (clip 1.0)
  M.step1.<name>, M.loss1             one AdamW step (lr 1e-2, betas .9/.999, eps 1e-8, weight
                                      decay 0.01 on all but biases) and the loss after it
Run from the repo root:  .venv/bin/python tests/oracle/adapters.py
"""
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

SRC = "tests/fixtures/hf_tiny/llama"
OUT = "tests/fixtures/peft_methods/adapters"
SEED = 2024

ACT = {"relu": F.relu, "gelu": F.gelu, "swish": F.silu, "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
       "tanh": torch.tanh, "linear": lambda x: x}
LOCS = ("attention", "output")  # after self_attn, after the MLP


class Bottleneck(torch.nn.Module):
    """One adapter module: y = s * (act(u Wd^T + bd) Wu^T + bu)."""

    def __init__(self, C, m, act, scaling):
        super().__init__()
        self.down = torch.nn.Linear(C, m)
        self.up = torch.nn.Linear(m, C)
        self.act = ACT[act]
        if scaling == "learned":
            self.scaling = torch.nn.Parameter(torch.ones(1))
        elif scaling == "channel":
            self.scaling = torch.nn.Parameter(torch.ones(C))
        else:
            self.scaling = float(scaling)

    def forward(self, u):
        return self.up(self.act(self.down(u))) * self.scaling

    def named(self, prefix):
        out = [(prefix + "adapter_down.0.weight", self.down.weight), (prefix + "adapter_down.0.bias", self.down.bias),
               (prefix + "adapter_up.weight", self.up.weight), (prefix + "adapter_up.bias", self.up.bias)]
        if isinstance(self.scaling, torch.nn.Parameter):
            out.append((prefix + "scaling", self.scaling))
        return out


class Hooks:
    """Captures resid and the normed inputs per layer; `edit(layer, loc, h, x, resid)` returns h'."""

    def __init__(self, model, edit):
        self.resid = {}
        self.handles = []
        for i, layer in enumerate(model.model.layers):
            self.handles.append(layer.input_layernorm.register_forward_pre_hook(self._keep(i, 0)))
            self.handles.append(layer.post_attention_layernorm.register_forward_pre_hook(self._keep(i, 1)))
            self.handles.append(layer.self_attn.register_forward_hook(self._attn(i, edit), with_kwargs=True))
            self.handles.append(layer.mlp.register_forward_hook(self._mlp(i, edit)))

    def _keep(self, i, loc):
        def f(mod, args):
            self.resid[(i, loc)] = args[0]
        return f

    def _attn(self, i, edit):
        def f(mod, args, kwargs, out):
            x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            return (edit(i, 0, out[0], x, self.resid[(i, 0)]),) + tuple(out[1:])
        return f

    def _mlp(self, i, edit):
        def f(mod, args, out):
            return edit(i, 1, out, args[0], self.resid[(i, 1)])
        return f


def load_base():
    m = AutoModelForCausalLM.from_pretrained(SRC, torch_dtype=torch.float32, attn_implementation="eager")
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def randomise(named, gen, sd=0.3):
    with torch.no_grad():
        for n, p in named:
            if n.endswith("scaling"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
            elif n.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(sd * torch.randn(p.shape, generator=gen))


def train_record(exp, tag, model, named, batch):
    ids, labels, pos = batch
    model.train()
    out = model(input_ids=ids, labels=labels, position_ids=pos)
    out.loss.backward()
    exp[tag + ".logits"] = out.logits.detach().float()
    exp[tag + ".loss"] = out.loss.detach().reshape(1)
    for n, p in named:
        exp[f"{tag}.grad.{n}"] = p.grad.detach().clone()
    gn = torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
    exp[tag + ".grad_norm"] = gn.detach().reshape(1).float()
    decay = [p for n, p in named if not n.endswith("bias")]
    nodecay = [p for n, p in named if n.endswith("bias")]
    groups = [g for g in ({"params": decay, "weight_decay": 0.01}, {"params": nodecay, "weight_decay": 0.0}) if g["params"]]
    opt = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
    opt.step()
    opt.zero_grad(set_to_none=True)
    for n, p in named:
        exp[f"{tag}.step1.{n}"] = p.detach().clone()
    with torch.no_grad():
        exp[tag + ".loss1"] = model(input_ids=ids, labels=labels, position_ids=pos).loss.reshape(1)


def write_dir(path, config, named):
    os.makedirs(path, exist_ok=True)
    save_file({n: p.detach().contiguous() for n, p in named}, os.path.join(path, "adapter_model.safetensors"),
              metadata={"format": "pt"})
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=1)
        f.write("\n")


# ---- bottleneck adapters -------------------------------------------------------------------

def make_bottleneck(model, cfg, gen):
    """Modules per (layer, location) for an ftk `bottleneck` config dict; returns (edit, named)."""
    C, L = model.config.hidden_size, model.config.num_hidden_layers
    hou, par = cfg["config"] == "houlsby", cfg["config"] == "parallel"
    locs = (hou, True)
    m = cfg.get("bottleneck_size") or max(1, int(C // cfg["reduction_factor"]))
    act = cfg["non_linearity"]
    drop = cfg.get("adapter_drop_layers", 0)
    normed = cfg.get("parallel_input") == "normed"
    mods, named = {}, []
    for l in range(L):
        for loc in range(2):
            if not locs[loc] or l < drop:
                continue
            b = Bottleneck(C, m, act, cfg["scaling"])
            mods[(l, loc)] = b
            named += b.named(f"model.layers.{l}.{LOCS[loc]}_adapters.adapters.{cfg.get('adapter_name', 'default')}.")
    randomise(named, gen)

    def edit(l, loc, h, x, resid):
        b = mods.get((l, loc))
        if b is None:
            return h
        if par:
            u = x if normed else resid
        else:
            u = h + resid if cfg["config"] == "pfeiffer" else h
        return h + b(u)
    return edit, named


BOTTLENECK = {
    "houlsby": {"config": "houlsby", "reduction_factor": 4, "non_linearity": "swish", "scaling": 1.0},
    "pfeiffer": {"config": "pfeiffer", "reduction_factor": 4, "non_linearity": "relu", "scaling": 1.0},
    "parallel": {"config": "parallel", "reduction_factor": 2, "non_linearity": "relu", "scaling": 4.0},
    "parallel_normed": {"config": "parallel", "reduction_factor": 4, "non_linearity": "gelu", "scaling": "channel",
                        "parallel_input": "normed"},
    "pfeiffer_drop": {"config": "pfeiffer", "bottleneck_size": 3, "non_linearity": "tanh", "scaling": "learned",
                      "adapter_drop_layers": 1, "adapter_name": "task"},
}


def bottleneck(tag, cfg, gen, exp, batch):
    model = load_base()
    edit, named = make_bottleneck(model, cfg, gen)
    Hooks(model, edit)
    write_dir(os.path.join(OUT, tag), dict(peft_type="BOTTLENECK", task_type="CAUSAL_LM", **cfg), named)
    train_record(exp, tag, model, named, batch)
    return model, edit


# ---- PALs ----------------------------------------------------------------------------------

def pals(tag, cfg, gen, exp, batch):
    model = load_base()
    C, L = model.config.hidden_size, model.config.num_hidden_layers
    ds, H = cfg["d_s"], cfg["num_heads"]
    D = ds // H
    enc, dec = torch.nn.Linear(C, ds), torch.nn.Linear(ds, C)
    qkv = [[torch.nn.Linear(ds, ds) for _ in range(3)] for _ in range(L)]
    named = [("model.pals.aug_dense.weight", enc.weight), ("model.pals.aug_dense.bias", enc.bias),
             ("model.pals.aug_dense2.weight", dec.weight), ("model.pals.aug_dense2.bias", dec.bias)]
    for l in range(L):
        for j, w in enumerate(("query", "key", "value")):
            named += [(f"model.layers.{l}.pals.attn.{w}.weight", qkv[l][j].weight),
                      (f"model.layers.{l}.pals.attn.{w}.bias", qkv[l][j].bias)]
    randomise(named, gen, 0.4)
    act = ACT[cfg.get("non_linearity", "linear")]
    stash = {}

    def pal(l, a):
        B, T, _ = a.shape
        z = enc(a)
        q, k, v = (lin(z).view(B, T, H, D).transpose(1, 2) for lin in qkv[l])
        s = q @ k.transpose(-1, -2) / math.sqrt(D)
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        o = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, ds)
        return act(dec(o))

    def edit(l, loc, h, x, resid):
        if cfg["placement"] == "attention":
            return h + pal(l, x) if loc == 0 else h
        if loc == 0:
            stash[l] = pal(l, x)
            return h
        return h + stash.pop(l)
    Hooks(model, edit)
    write_dir(os.path.join(OUT, tag), dict(peft_type="PALS", task_type="CAUSAL_LM", **cfg), named)
    train_record(exp, tag, model, named, batch)


# ---- AdapterFusion -------------------------------------------------------------------------

def fusion(tag, kind, value, gen, exp, batch):
    """Two frozen stage-1 adapters of config `kind` (written to TAG_a/, TAG_b/) fused per location."""
    model = load_base()
    C, L = model.config.hidden_size, model.config.num_hidden_layers
    cfgs = [{"config": kind, "reduction_factor": 4, "non_linearity": "relu", "scaling": 1.0},
            {"config": kind, "reduction_factor": 8, "non_linearity": "swish", "scaling": 2.0}]
    edits, names = [], [f"{tag}_a", f"{tag}_b"]
    for cfg, nm in zip(cfgs, names):
        e, named = make_bottleneck(model, cfg, gen)
        write_dir(os.path.join(OUT, nm), dict(peft_type="BOTTLENECK", task_type="CAUSAL_LM", **cfg), named)
        edits.append(e)
    fname = ",".join(names)
    locs = (0, 1) if kind == "houlsby" else (1,)
    fl, named = {}, []
    for l in range(L):
        for loc in locs:
            q, k = torch.nn.Linear(C, C), torch.nn.Linear(C, C)
            mods = {"query": q, "key": k}
            if value:
                v = torch.nn.Linear(C, C, bias=False)
                mods["value"] = v
            fl[(l, loc)] = mods
            for w, lin in mods.items():
                named.append((f"model.layers.{l}.{LOCS[loc]}_adapters.adapter_fusion_layer.{fname}.{w}.weight", lin.weight))
                if lin.bias is not None:
                    named.append((f"model.layers.{l}.{LOCS[loc]}_adapters.adapter_fusion_layer.{fname}.{w}.bias",
                                  lin.bias))
    randomise(named, gen, 0.5)
    with torch.no_grad():  # the value matrix near its identity init
        for mods in fl.values():
            if "value" in mods:
                mods["value"].weight.copy_(torch.eye(C) + 0.2 * torch.randn(C, C, generator=gen))
    for n, p in named:
        exp[f"{tag}.init.{n}"] = p.detach().clone()

    def edit(l, loc, h, x, resid):
        mods = fl.get((l, loc))
        if mods is None:
            return h
        u = h + resid if kind == "pfeiffer" else h
        ups = torch.stack([e(l, loc, h, x, resid) - h for e in edits], dim=2)  # (B,T,n,C): each y_a
        qv = mods["query"](u)
        kv = mods["key"](ups)
        vv = mods["value"](ups) if "value" in mods else ups
        p = torch.einsum("btc,btnc->btn", qv, kv).softmax(-1)
        return h + torch.einsum("btn,btnc->btc", p, vv)
    Hooks(model, edit)
    train_record(exp, tag, model, named, batch)


def main():
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)
    e = load_file(os.path.join(SRC, "expected.safetensors"))
    batch = (e["input_ids"].long(), e["labels"].long(), e["position_ids"].long())
    exp = {"input_ids": e["input_ids"], "labels": e["labels"], "position_ids": e["position_ids"]}
    os.makedirs(OUT, exist_ok=True)
    for tag, cfg in BOTTLENECK.items():
        bottleneck(tag, cfg, gen, exp, batch)
    pals("pals", {"d_s": 8, "num_heads": 2, "placement": "layer", "non_linearity": "gelu"}, gen, exp, batch)
    pals("pals_attn", {"d_s": 6, "num_heads": 3, "placement": "attention", "non_linearity": "linear"}, gen, exp, batch)
    fusion("fusion", "houlsby", True, gen, exp, batch)
    fusion("fusion_static", "pfeiffer", False, gen, exp, batch)
    save_file({k: v.contiguous() for k, v in exp.items()}, os.path.join(OUT, "expected.safetensors"),
              metadata={"seed": str(SEED), "torch": torch.__version__, "transformers": transformers.__version__})
    with open(os.path.join(OUT, "VERSIONS.json"), "w") as f:
        json.dump({"torch": torch.__version__, "transformers": transformers.__version__, "seed": SEED,
                   "script": "tests/oracle/adapters.py"}, f, indent=1)
        f.write("\n")
    print({k[:-5]: round(v.item(), 6) for k, v in exp.items() if k.endswith(".loss")}, file=sys.stderr)


if __name__ == "__main__":
    main()
