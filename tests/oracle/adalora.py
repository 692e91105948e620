#!/usr/bin/env python3
"""Parity fixtures for AdaLoRA (ftk's adalora plugin) made by transformers + peft (ADALORA).

Base model tests/fixtures/hf_tiny/llama (F32), batch from its expected.safetensors, the same
batch at every step. AdaLoraConfig(init_r=4, target_r=2, lora_alpha=8, all 7 linears, tinit=1,
tfinal=3, deltaT=1, total_step=8, beta1=beta2=0.85, orth_reg_weight=0.5): with 14 sites the
budget is 56 ranks, 39 after step 2, 31 after step 3, 28 (target) after step 4, and the mask is
final at step 5 (= total_step - tfinal), so the rank allocator masks something at steps 2..7.
peft's init (seed 4321) with lora_E set to 0.1 N(0,1) (peft starts it at 0, which leaves A and
B without a loss gradient at step 0) is saved to tests/fixtures/peft_methods/adalora/init/.

The loop is HF Trainer's with peft's callback: loss = model(**batch).loss (cross-entropy +
orth_reg_weight * the orthogonality regulariser, peft AdaLoraModel.forward), backward,
clip_grad_norm_ 1.0, AdamW (lr 1e-2, betas .9/.999, eps 1e-8, weight decay 0.01 on every tensor,
constant lr), model.base_model.update_and_allocate(global_step) with global_step the 0-based
index of the step (HF's on_optimizer_step sees state.global_step before its increment), zero_grad.
After the 8 steps the adapter is saved to adalora/final/ (rank_pattern set: peft truncates A, E, B
to the kept ranks). tests/fixtures/peft_methods/adalora/expected.safetensors:
  logits F32[B,T,V], loss, ce, reg        the train-mode forward of step 0 (loss = ce + 0.5 reg)
  grad.<saved name>                       d loss / d each tensor at step 0 (regulariser included)
  loss<k>, grad_norm<k>, budget<k>        step k = 0..7 (budget from RankAllocator.budget_schedule)
  step<k+1>.<saved name>                  the parameters after step k (and its update_and_allocate)
  pattern<k+1>.<module>                   F32[init_r] 1 = kept, after step k, once peft has set rank_pattern
  final.logits                            eval forward after the 8 steps
  final.reg                               the regulariser of adalora/final loaded back by peft for training

tests/fixtures/peft_methods/adalora/clipped.safetensors: the same init and loop with clipping
engaged at every step (max_grad_norm 0.01 under grad norms 0.05..0.8, lr 5e-2), so the rank
allocator ranks clipped gradients (peft's update_and_allocate runs after clip_grad_norm_) and
the clip factor, which changes from step to step, moves its averages:
  input_ids, labels, position_ids         the batch (expected.safetensors')
  loss<k>, grad_norm<k>, budget<k>        step k = 0..7
  step<k+1>.<saved name>                  the parameters after step k (masked E entries are 0)
The script also runs the loop with the allocator fed the unclipped gradients and refuses to write
the fixture unless the masks then differ (they do at steps 2..7), so the fixture tells the two apart.
At each of the 4 maskings the threshold score is 3% or more below the lowest kept score (no near ties).

Run from the repo root:  .venv/bin/python tests/oracle/adalora.py [clipped]
(with "clipped", only clipped.safetensors is written). Rerunning gives the same tensors; the key
orders of adapter_config.json and of the safetensors metadata may change.
"""
import json
import os
import sys

import torch
import transformers
import peft
from safetensors.torch import save_file, load_file
from transformers import AutoModelForCausalLM

SRC = "tests/fixtures/hf_tiny/llama"
OUT = "tests/fixtures/peft_methods/adalora"
SEED = 4321
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CFG = dict(init_r=4, target_r=2, lora_alpha=8, lora_dropout=0.0, target_modules=LINEAR, tinit=1, tfinal=3, deltaT=1,
           total_step=8, beta1=0.85, beta2=0.85, orth_reg_weight=0.5, task_type="CAUSAL_LM")
STEPS = 8
CLIP_LR, CLIP_MAX_NORM = 5e-2, 0.01


def saved_name(n):   # base_model.model.model.layers.0.self_attn.q_proj.lora_A.default -> ...lora_A
    return n.replace(".default", "")


def meta():
    return {"seed": str(SEED), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "script": "tests/oracle/adalora.py"}


def init_model():
    """peft's AdaLoRA model at its init (seed SEED) with lora_E = 0.1 N(0,1), and the batch."""
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    e = load_file(os.path.join(SRC, "expected.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(SRC, dtype=torch.float32, attn_implementation="eager")
    pm = peft.get_peft_model(model, peft.AdaLoraConfig(**CFG))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_E" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return pm, e


def clipped_run(unclipped_allocator=False):
    """The loop with CLIP_LR, CLIP_MAX_NORM: its tensors, and the E masks (0/1 lists) after each
    step. unclipped_allocator: update_and_allocate sees the gradients before clipping (the clip
    factor divided back out), as an allocator would that ignored the clip."""
    pm, e = init_model()
    ids, labels, pos = e["input_ids"].long(), e["labels"].long(), e["position_ids"].long()
    named = [(saved_name(n), p) for n, p in pm.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW([p for _, p in named], lr=CLIP_LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    ada = pm.base_model
    exp = {"input_ids": e["input_ids"], "labels": e["labels"], "position_ids": e["position_ids"]}
    masks = []
    pm.train()
    for k in range(STEPS):
        out = pm(input_ids=ids, labels=labels, position_ids=pos)
        out.loss.backward()
        gn = torch.nn.utils.clip_grad_norm_([p for _, p in named], CLIP_MAX_NORM)
        coef = min(1.0, CLIP_MAX_NORM / (gn.item() + 1e-6))   # clip_grad_norm_'s factor
        assert coef < 1, f"step {k}: grad norm {gn.item()} does not engage the clip"
        opt.step()
        if unclipped_allocator:
            with torch.no_grad():
                for _, p in named:
                    p.grad.div_(coef)
        ada.update_and_allocate(k)
        opt.zero_grad(set_to_none=True)
        exp[f"loss{k}"] = out.loss.detach().reshape(1)
        exp[f"grad_norm{k}"] = gn.detach().reshape(1).float()
        exp[f"budget{k}"] = torch.tensor([float(ada.rankallocator.budget_schedule(k)[0])])
        for n, p in named:
            exp[f"step{k + 1}.{n}"] = p.detach().clone()
        masks.append([int(x) for n, p in named if "lora_E" in n for x in (p.detach().flatten() == 0)])
    return exp, masks


def clipped():
    exp, masks = clipped_run()
    _, other = clipped_run(unclipped_allocator=True)
    for k in range(STEPS):
        d = sum(a != b for a, b in zip(masks[k], other[k]))
        print(f"clipped, step {k}: loss {exp[f'loss{k}'].item():.6f} grad_norm {exp[f'grad_norm{k}'].item():.4f} "
              f"(max {CLIP_MAX_NORM}) E zeros {sum(masks[k])}; {d} E entries masked otherwise by an allocator "
              f"fed unclipped gradients", file=sys.stderr)
    assert masks != other, "the clip does not change the masks: the fixture would not test it"
    os.makedirs(OUT, exist_ok=True)
    save_file({k: v.contiguous() for k, v in exp.items()}, os.path.join(OUT, "clipped.safetensors"), metadata=meta())


def main():
    pm, e = init_model()
    ids, labels, pos = e["input_ids"].long(), e["labels"].long(), e["position_ids"].long()
    exp = {"input_ids": e["input_ids"], "labels": e["labels"], "position_ids": e["position_ids"]}
    os.makedirs(OUT, exist_ok=True)
    pm.save_pretrained(os.path.join(OUT, "init"), safe_serialization=True)
    named = [(saved_name(n), p) for n, p in pm.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW([p for _, p in named], lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    ada = pm.base_model
    lcfg = ada.peft_config["default"]
    pm.train()
    for k in range(STEPS):
        out = pm(input_ids=ids, labels=labels, position_ids=pos)
        if k == 0:
            with torch.no_grad():
                ce = ada.model(input_ids=ids, labels=labels, position_ids=pos).loss
            exp["logits"] = out.logits.detach().float()
            exp["loss"] = out.loss.detach().clone().reshape(1)
            exp["ce"] = ce.reshape(1)
            exp["reg"] = ((out.loss - ce) / CFG["orth_reg_weight"]).detach().reshape(1)
        out.loss.backward()
        if k == 0:
            for n, p in named:
                exp[f"grad.{n}"] = p.grad.detach().clone()
        gn = torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        opt.step()
        ada.update_and_allocate(k)
        opt.zero_grad(set_to_none=True)
        exp[f"loss{k}"] = out.loss.detach().reshape(1)
        exp[f"grad_norm{k}"] = gn.detach().reshape(1).float()
        exp[f"budget{k}"] = torch.tensor([float(ada.rankallocator.budget_schedule(k)[0])])
        for n, p in named:
            exp[f"step{k + 1}.{n}"] = p.detach().clone()
        if lcfg.rank_pattern:
            for n, keep in lcfg.rank_pattern.items():
                mod = n.replace(".lora_E.default", "").replace(".lora_E", "")
                exp[f"pattern{k + 1}.{mod}"] = torch.tensor([float(x) for x in keep])
        masked = sum(int((p == 0).sum()) for n, p in named if "lora_E" in n)
        print(f"step {k}: loss {out.loss.item():.6f} grad_norm {gn.item():.4f} E zeros {masked}", file=sys.stderr)
    pm.eval()
    with torch.no_grad():
        exp["final.logits"] = pm(input_ids=ids, position_ids=pos).logits.float()
    pm.save_pretrained(os.path.join(OUT, "final"), safe_serialization=True)
    # peft loads it for training: modules resized to the kept ranks, so the regulariser sees only those
    base = AutoModelForCausalLM.from_pretrained(SRC, dtype=torch.float32, attn_implementation="eager")
    back = peft.PeftModel.from_pretrained(base, os.path.join(OUT, "final"), is_trainable=True)
    with torch.no_grad():
        tot = back(input_ids=ids, labels=labels, position_ids=pos).loss
        ce = back.base_model.model(input_ids=ids, labels=labels, position_ids=pos).loss
    exp["final.reg"] = ((tot - ce) / CFG["orth_reg_weight"]).reshape(1)
    save_file({k: v.contiguous() for k, v in exp.items()}, os.path.join(OUT, "expected.safetensors"), metadata=meta())
    with open(os.path.join(OUT, "VERSIONS.json"), "w") as f:
        json.dump(meta(), f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    if sys.argv[1:] != ["clipped"]:
        main()
    clipped()
