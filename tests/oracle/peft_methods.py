#!/usr/bin/env python3
"""Parity fixtures for the `linear`-hook PEFT methods of issue 11, made by transformers + peft.

Base models: tests/fixtures/hf_tiny/<arch> (F32, from hf_tiny_models.py), batch from its
expected.safetensors. For each arch and method M a peft adapter (with trained-looking weights, so
every gradient is non-zero) goes to tests/fixtures/peft_methods/<arch>/<M>/ and the expected values
to tests/fixtures/peft_methods/<arch>/expected.safetensors:
  M.logits F32[B,T,V], M.loss F32[1]        train-mode forward with the adapter (dropout 0)
  M.grad.<saved name>                       d loss / d each trainable tensor
  M.grad_norm F32[1]                        total norm before clipping (clip 1.0)
  M.step1.<saved name>, M.loss1             params after one AdamW step (lr 1e-2, betas .9/.999,
                                            eps 1e-8, weight decay 0.01 on every tensor, constant lr)
                                            and the loss after it
Methods:
  ia3     peft IA3Config defaults for the arch (llama: k_proj, v_proj, down_proj; feedforward
          down_proj, scaled on its input); ia3_l = 1 + 0.1 N(0,1)
  dora    LoraConfig(r=4, alpha=8, all linear, use_dora=True); lora_B 0.1 N(0,1)
  bitfit  no peft: every linear gets a bias (zeros where the model had none, the paper), then the
          biases are set to 0.1 N(0,1) and only they train (torch autograd is the oracle);
          weight decay 0 on biases (HF Trainer's default). Saved in ftk's format (docs/peft-methods.md).
  pissa   LoraConfig(r=4, alpha=8, all linear, init_lora_weights="pissa") (exact SVD); also
          pissa.residual.<hf weight> = the base weights after the init, pissa.init.<saved name>
  olora   the same with init_lora_weights="olora" (QR)
Run from the repo root:  .venv/bin/python tests/oracle/peft_methods.py
"""
import json
import os
import sys

import torch
import transformers
import peft
from safetensors.torch import save_file, load_file
from transformers import AutoModelForCausalLM

SRC = "tests/fixtures/hf_tiny"
OUT = "tests/fixtures/peft_methods"
SEED = 4321
ARCHS = ["llama", "qwen2"]
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peft_name(n):
    return n.replace(".default", "").replace("lora_magnitude_vector.weight", "lora_magnitude_vector")


def load_base(arch):
    return AutoModelForCausalLM.from_pretrained(os.path.join(SRC, arch), torch_dtype=torch.float32,
                                                attn_implementation="eager")


def train_record(exp, tag, model, named, batch, decay):
    """Forward, backward, clip, one AdamW step; records under `tag.`."""
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
    groups = [{"params": [p for n, p in named if decay(n)], "weight_decay": 0.01},
              {"params": [p for n, p in named if not decay(n)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
    opt.step()
    opt.zero_grad(set_to_none=True)
    for n, p in named:
        exp[f"{tag}.step1.{n}"] = p.detach().clone()
    with torch.no_grad():
        exp[tag + ".loss1"] = model(input_ids=ids, labels=labels, position_ids=pos).loss.reshape(1)


def peft_method(arch, tag, cfg, gen, exp, batch, randomise=None):
    model = load_base(arch)
    pm = peft.get_peft_model(model, cfg)
    if tag in ("pissa", "olora"):
        for n, p in pm.named_parameters():
            if "lora_" in n:
                exp[f"{tag}.init.{peft_name(n)}"] = p.detach().clone()
        sd = pm.base_model.model.state_dict()
        for k, v in sd.items():
            if ".base_layer.weight" in k:
                exp[f"{tag}.residual." + k.replace(".base_layer", "")] = v.detach().clone()
    if randomise:
        with torch.no_grad():
            for n, p in pm.named_parameters():
                randomise(n, p, gen)
    pm.save_pretrained(os.path.join(OUT, arch, tag), safe_serialization=True)
    named = [(peft_name(n), p) for n, p in pm.named_parameters() if p.requires_grad]
    train_record(exp, tag, pm, named, batch, lambda n: True)
    return pm


def bitfit(arch, gen, exp, batch):
    model = load_base(arch)
    for p in model.parameters():
        p.requires_grad_(False)
    named = []
    for mn, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and mn.split(".")[-1] in LINEAR:
            if mod.bias is None:
                mod.bias = torch.nn.Parameter(torch.zeros(mod.out_features))
            with torch.no_grad():
                mod.bias.copy_(0.1 * torch.randn(mod.out_features, generator=gen))
            mod.bias.requires_grad_(True)
            named.append((f"base_model.model.{mn}.bias", mod.bias))
    exp.update({"bitfit.init." + n: p.detach().clone() for n, p in named})
    train_record(exp, "bitfit", model, named, batch, lambda n: False)


def make(arch):
    gen = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)
    e = load_file(os.path.join(SRC, arch, "expected.safetensors"))
    batch = (e["input_ids"].long(), e["labels"].long(), e["position_ids"].long())
    exp = {"input_ids": e["input_ids"], "labels": e["labels"], "position_ids": e["position_ids"]}
    os.makedirs(os.path.join(OUT, arch), exist_ok=True)

    def ia3_rand(n, p, g):
        if "ia3_l" in n:
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
    peft_method(arch, "ia3", peft.IA3Config(task_type="CAUSAL_LM"), gen, exp, batch, ia3_rand)

    def b_rand(n, p, g):
        if "lora_B" in n:
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    lora = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LINEAR, task_type="CAUSAL_LM")
    peft_method(arch, "dora", peft.LoraConfig(use_dora=True, **lora), gen, exp, batch, b_rand)
    bitfit(arch, gen, exp, batch)
    peft_method(arch, "pissa", peft.LoraConfig(init_lora_weights="pissa", **lora), gen, exp, batch)
    peft_method(arch, "olora", peft.LoraConfig(init_lora_weights="olora", **lora), gen, exp, batch)

    save_file({k: v.contiguous() for k, v in exp.items()}, os.path.join(OUT, arch, "expected.safetensors"),
              metadata={"seed": str(SEED), "torch": torch.__version__,
                        "transformers": transformers.__version__, "peft": peft.__version__})
    print(arch, {t: round(exp[t + ".loss"].item(), 6) for t in ("ia3", "dora", "bitfit", "pissa", "olora")},
          file=sys.stderr)


def main():
    torch.use_deterministic_algorithms(True)
    for arch in ARCHS:
        make(arch)
    with open(os.path.join(OUT, "VERSIONS.json"), "w") as f:
        json.dump({"torch": torch.__version__, "transformers": transformers.__version__,
                   "peft": peft.__version__, "seed": SEED, "script": "tests/oracle/peft_methods.py"}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
