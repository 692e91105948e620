#!/usr/bin/env python3
"""Parity fixtures for the training core (issue 6), made by HuggingFace transformers + peft.

For each supported architecture, a tiny randomly initialised model (F32) is saved in HF layout
with the expected outputs of one batch:
  tests/fixtures/hf_tiny/<arch>/config.json, model.safetensors     the model
  tests/fixtures/hf_tiny/<arch>/adapter/                             a peft LoRA adapter (B != 0)
  tests/fixtures/hf_tiny/<arch>/expected.safetensors                 inputs and expected values:
    input_ids, labels, position_ids I32[B,T]        the batch (labels -100 on a prompt prefix)
    logits F32[B,T,V], loss F32[1]                  base model forward (HF's shifted token-mean CE)
    grad.<param>                                    d loss / d every weight (finetuning_type full)
    lora.logits, lora.loss, lora.grad.<peft name>   with the adapter (dropout 0)
    lora.step<k>.<peft name>, lora.loss<k>          LoRA params and loss after AdamW step k=1..3
                                                    (lr 1e-2, betas .9/.999, eps 1e-8, wd 0.01,
                                                    clip_grad_norm 1.0, linear schedule, 1 warmup step)
    packed.input_ids, packed.position_ids,          two documents packed in one row (neat packing):
    packed.segment_ids, packed.logits               expected logits = each document run alone
Run from the repo root:  .venv/bin/python tests/oracle/hf_tiny_models.py
"""
import json
import os
import sys

import torch
import transformers
import peft
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, get_linear_schedule_with_warmup

OUT = "tests/fixtures/hf_tiny"
SEED = 1234
B, T = 2, 8

COMMON = dict(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0,
              attn_implementation="eager")

ARCHS = {
    # Llama-3 style: llama3 rope scaling, untied embeddings
    "llama": dict(model_type="llama", architectures=["LlamaForCausalLM"], rope_theta=500000.0,
                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                  tie_word_embeddings=False),
    # Mistral: plain RoPE, tied embeddings to cover that case
    "mistral": dict(model_type="mistral", architectures=["MistralForCausalLM"], rope_theta=10000.0,
                    tie_word_embeddings=True, sliding_window=None, head_dim=4),
    # Qwen2: q/k/v bias, linear rope scaling
    "qwen2": dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], rope_theta=1000000.0,
                  rope_scaling={"rope_type": "linear", "factor": 2.0}, tie_word_embeddings=False,
                  use_sliding_window=False),
    # Qwen3: q/k RMSNorm over head_dim, explicit head_dim larger than hidden/heads
    "qwen3": dict(model_type="qwen3", architectures=["Qwen3ForCausalLM"], rope_theta=1000000.0,
                  head_dim=8, tie_word_embeddings=True, use_sliding_window=False),
}

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def randomise(model, gen):
    """Weights large enough that errors show: N(0, 0.2), norms around 1, biases N(0, 0.1)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))


def make(arch, extra):
    gen = torch.Generator().manual_seed(SEED)
    cfg_cls = transformers.AutoConfig.for_model(extra["model_type"]).__class__
    cfg = cfg_cls(**{**COMMON, **{k: v for k, v in extra.items() if k != "model_type"}})
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32)
    randomise(model, gen)
    d = os.path.join(OUT, arch)
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)

    V = cfg.vocab_size
    ids = torch.randint(3, V, (B, T), generator=gen)
    labels = ids.clone()
    labels[0, :3] = -100          # a prompt prefix carries no loss
    labels[1, :5] = -100
    pos = torch.arange(T).unsqueeze(0).expand(B, T).contiguous()
    exp = {"input_ids": ids.int(), "labels": labels.int(), "position_ids": pos.int()}

    model.train()
    out = model(input_ids=ids, labels=labels, position_ids=pos)
    out.loss.backward()
    exp["logits"] = out.logits.detach().float()
    exp["loss"] = out.loss.detach().reshape(1)
    for n, p in model.named_parameters():
        exp["grad." + n] = p.grad.detach().clone()
    model.zero_grad(set_to_none=True)

    # Neat packing: two documents in one row, positions restart; reference = each run alone.
    a, b = ids[0, :5], ids[1, :3]
    with torch.no_grad():
        la = model(input_ids=a[None]).logits[0]
        lb = model(input_ids=b[None]).logits[0]
    exp["packed.input_ids"] = torch.cat([a, b])[None].int()
    exp["packed.position_ids"] = torch.cat([torch.arange(5), torch.arange(3)])[None].int()
    exp["packed.segment_ids"] = torch.tensor([[1] * 5 + [2] * 3], dtype=torch.int32)
    exp["packed.logits"] = torch.cat([la, lb])[None].float()

    # LoRA with peft: rank 4, alpha 8, all linear layers, B randomised so every grad is non-zero.
    lcfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS,
                           task_type="CAUSAL_LM")
    pm = peft.get_peft_model(model, lcfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    pm.save_pretrained(os.path.join(d, "adapter"), safe_serialization=True)
    pm.train()
    out = pm(input_ids=ids, labels=labels, position_ids=pos)
    out.loss.backward()
    exp["lora.logits"] = out.logits.detach().float()
    exp["lora.loss"] = out.loss.detach().reshape(1)
    named = [(n, p) for n, p in pm.named_parameters() if p.requires_grad]
    for n, p in named:
        exp["lora.grad." + peft_name(n)] = p.grad.detach().clone()
    pm.zero_grad(set_to_none=True)

    opt = torch.optim.AdamW([p for _, p in named], lr=1e-2, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.01)
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=1, num_training_steps=3)
    for step in range(1, 4):
        out = pm(input_ids=ids, labels=labels, position_ids=pos)
        out.loss.backward()
        exp[f"lora.loss{step}"] = out.loss.detach().reshape(1)
        gn = torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        exp[f"lora.grad_norm{step}"] = gn.detach().reshape(1).float()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        for n, p in named:
            exp[f"lora.step{step}." + peft_name(n)] = p.detach().clone()

    save_file({k: v.contiguous() for k, v in exp.items()}, os.path.join(d, "expected.safetensors"),
              metadata={"seed": str(SEED), "torch": torch.__version__,
                        "transformers": transformers.__version__, "peft": peft.__version__})
    print(f"{arch}: loss {exp['loss'].item():.6f} lora loss {exp['lora.loss'].item():.6f} "
          f"-> {exp['lora.loss3'].item():.6f}", file=sys.stderr)


def peft_name(n):
    """peft's saved name: drop the adapter name ('.default') as save_pretrained does."""
    return n.replace(".default", "")


def main():
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT, exist_ok=True)
    for arch, extra in ARCHS.items():
        make(arch, extra)
    with open(os.path.join(OUT, "VERSIONS.json"), "w") as f:
        json.dump({"torch": torch.__version__, "transformers": transformers.__version__,
                   "peft": peft.__version__, "seed": SEED, "script": "tests/oracle/hf_tiny_models.py"},
                  f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
