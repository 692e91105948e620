#!/usr/bin/env python3
"""Parity fixtures for LoRA+ (loraplus_lr_ratio of ftk's lora plugin), made by transformers + peft:
peft's own create_loraplus_optimizer builds the torch AdamW parameter groups.

Base model tests/fixtures/hf_tiny/llama (F32), batch from its expected.safetensors. For each tag
(lora: LoraConfig(r=4, alpha=8, all 7 linears); dora: the same with use_dora=True, whose 1-D
magnitude goes to LoRA+'s B group) lora_B is set to 0.1 N(0,1) so every gradient is non-zero,
the adapter is saved to tests/fixtures/peft_methods/loraplus/<tag>/ and two training steps run:
forward, backward, clip_grad_norm_ 1.0, AdamW step (create_loraplus_optimizer: lr 1e-2,
loraplus_lr_ratio 16, loraplus_weight_decay 0.01, betas .9/.999, eps 1e-8), zero_grad.
tests/fixtures/peft_methods/loraplus/expected.safetensors holds, per tag:
  tag.lr.<saved name>       F32[1] the learning rate of the parameter's group
  tag.loss<k>, tag.grad_norm<k>   step k (0, 1): the loss of its forward, the norm before clipping
  tag.step<k+1>.<saved name>      the parameters after step k
Run from the repo root:  .venv/bin/python tests/oracle/loraplus.py
"""
import json
import os
import sys

import torch
import transformers
import peft
from peft.optimizers import create_loraplus_optimizer
from safetensors.torch import save_file, load_file
from transformers import AutoModelForCausalLM

SRC = "tests/fixtures/hf_tiny/llama"
OUT = "tests/fixtures/peft_methods/loraplus"
SEED = 4321
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RATIO, LR, WD = 16.0, 1e-2, 0.01


def peft_name(n):
    return n.replace(".default", "").replace("lora_magnitude_vector.weight", "lora_magnitude_vector")


def run(tag, use_dora, gen, exp, batch):
    ids, labels, pos = batch
    model = AutoModelForCausalLM.from_pretrained(SRC, dtype=torch.float32, attn_implementation="eager")
    cfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LINEAR, task_type="CAUSAL_LM",
                          use_dora=use_dora)
    pm = peft.get_peft_model(model, cfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    pm.save_pretrained(os.path.join(OUT, tag), safe_serialization=True)
    named = [(peft_name(n), p) for n, p in pm.named_parameters() if p.requires_grad]
    opt = create_loraplus_optimizer(pm, torch.optim.AdamW, lr=LR, loraplus_lr_ratio=RATIO, loraplus_weight_decay=WD,
                                    betas=(0.9, 0.999), eps=1e-8)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    for n, p in named:
        exp[f"{tag}.lr.{n}"] = torch.tensor([lr_of[id(p)]], dtype=torch.float32)
    pm.train()
    for k in range(2):
        out = pm(input_ids=ids, labels=labels, position_ids=pos)
        out.loss.backward()
        gn = torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        exp[f"{tag}.loss{k}"] = out.loss.detach().reshape(1)
        exp[f"{tag}.grad_norm{k}"] = gn.detach().reshape(1).float()
        for n, p in named:
            exp[f"{tag}.step{k + 1}.{n}"] = p.detach().clone()
    print(tag, [round(exp[f"{tag}.loss{k}"].item(), 6) for k in range(2)],
          sorted({round(v, 6) for v in lr_of.values()}), file=sys.stderr)


def main():
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    e = load_file(os.path.join(SRC, "expected.safetensors"))
    batch = (e["input_ids"].long(), e["labels"].long(), e["position_ids"].long())
    exp = {"input_ids": e["input_ids"], "labels": e["labels"], "position_ids": e["position_ids"]}
    os.makedirs(OUT, exist_ok=True)
    run("lora", False, gen, exp, batch)
    run("dora", True, gen, exp, batch)
    meta = {"seed": str(SEED), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "script": "tests/oracle/loraplus.py"}
    save_file({k: v.contiguous() for k, v in exp.items()}, os.path.join(OUT, "expected.safetensors"), metadata=meta)
    with open(os.path.join(OUT, "VERSIONS.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
