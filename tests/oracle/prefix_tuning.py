#!/usr/bin/env python3
"""Parity fixtures for prefix tuning (peft PREFIX_TUNING with prefix_projection=True, the MLP
reparameterisation) and P-tuning v2 (prefix_projection=False), made by transformers + peft.

Base models: tests/fixtures/hf_tiny/<arch> (F32; llama: GQA + Llama 3 rope, qwen2: q/k/v biases,
qwen3: qk-norm, head_dim 8 != hidden/heads, tied embeddings); batch from its expected.safetensors.
For each arch and tag ("proj": num_virtual_tokens=3, prefix_projection=True,
encoder_hidden_size=12; "noproj": num_virtual_tokens=3, prefix_projection=False) peft's own init
(seed 4321) is kept and written to tests/fixtures/peft_methods/prefix_tuning/<arch>/<tag>/ by
save_pretrained (prompt_embeddings only, the projected prefix), and
tests/fixtures/peft_methods/prefix_tuning/<arch>/expected.safetensors holds:
  T.init.<name>                 the trainable tensors at init (peft's names without ".default":
                                prompt_encoder.embedding.weight, prompt_encoder.transform.{0,2}.*)
  T.logits F32[B,T,V], T.loss   train-mode forward (no position_ids: transformers places the real
                                tokens after the P cached prefix positions)
  T.grad.<name>, T.grad_norm    gradients, total norm before clipping at 1.0
  T.step1.<name>, T.loss1       after one AdamW step (lr 1e-2, betas .9/.999, eps 1e-8, weight
                                decay 0.01 except biases: HF Trainer's rule), and the loss after it
  T.logits1                     logits after the step (tests/oracle/check_prefix_tuning.py)
  T.prompt                      I32[n] a prompt; T.gen I32[8]: greedy tokens of peft's generate
                                with the saved adapter loaded by PeftModel.from_pretrained (no eos
                                stop; checked equal to the argmax of uncached forwards)
The script also checks what ftk relies on: passing position_ids (peft adds P) equals passing
none; the base model given the prefix cache and position_ids = P.. equals both; position_ids 0..
without the offset differs.
Run from the repo root:  .venv/bin/python tests/oracle/prefix_tuning.py
"""
import json
import os
import sys

import torch
import transformers
import peft
from peft import PeftModel
from safetensors.torch import save_file, load_file
from transformers import AutoModelForCausalLM

SRC = "tests/fixtures/hf_tiny"
OUT = "tests/fixtures/peft_methods/prefix_tuning"
SEED = 4321
ARCHS = ["llama", "qwen2", "qwen3"]
P = 3
TAGS = {"proj": dict(prefix_projection=True, encoder_hidden_size=12), "noproj": dict(prefix_projection=False)}


def load_base(arch):
    return AutoModelForCausalLM.from_pretrained(os.path.join(SRC, arch), dtype=torch.float32,
                                                attn_implementation="eager")


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def check_positions(pm, ids):
    """peft passes the prefix as a cache of P positions: the real tokens are at P, P+1, ..."""
    with torch.no_grad():
        none = pm(input_ids=ids).logits
        given = pm(input_ids=ids, position_ids=torch.arange(ids.shape[1]).expand_as(ids)).logits
        base = pm.get_base_model()
        off = base(input_ids=ids, past_key_values=pm.get_prompt(ids.shape[0]),
                   position_ids=(torch.arange(ids.shape[1]) + P).expand_as(ids)).logits
        plain = base(input_ids=ids, past_key_values=pm.get_prompt(ids.shape[0]),
                     position_ids=torch.arange(ids.shape[1]).expand_as(ids)).logits
    assert rel(given, none) < 1e-6, rel(given, none)
    assert rel(off, none) < 1e-6, rel(off, none)
    assert rel(plain, none) > 1e-3, rel(plain, none)
    return rel(plain, none)


def make(arch):
    e = load_file(os.path.join(SRC, arch, "expected.safetensors"))
    ids, labels = e["input_ids"].long(), e["labels"].long()
    exp = {"input_ids": e["input_ids"], "labels": e["labels"], "position_ids": e["position_ids"]}
    os.makedirs(os.path.join(OUT, arch), exist_ok=True)
    for tag, kw in TAGS.items():
        torch.manual_seed(SEED)
        cfg = peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P, **kw)
        pm = peft.get_peft_model(load_base(arch), cfg)
        named = [(n.replace(".default", ""), p) for n, p in pm.named_parameters() if p.requires_grad]
        for n, p in named:
            exp[f"{tag}.init.{n}"] = p.detach().clone()
        adir = os.path.join(OUT, arch, tag)
        pm.save_pretrained(adir, safe_serialization=True)
        d = check_positions(pm, ids)

        pm.train()
        out = pm(input_ids=ids, labels=labels)
        out.loss.backward()
        exp[tag + ".logits"] = out.logits.detach().float()
        exp[tag + ".loss"] = out.loss.detach().reshape(1)
        for n, p in named:
            exp[f"{tag}.grad.{n}"] = p.grad.detach().clone()
        gn = torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        exp[tag + ".grad_norm"] = gn.detach().reshape(1).float()
        decay = [p for n, p in named if "bias" not in n]
        nodecay = [p for n, p in named if "bias" in n]
        groups = [{"params": decay, "weight_decay": 0.01}, {"params": nodecay, "weight_decay": 0.0}]
        opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
        opt.step()
        opt.zero_grad(set_to_none=True)
        for n, p in named:
            exp[f"{tag}.step1.{n}"] = p.detach().clone()
        with torch.no_grad():
            o1 = pm(input_ids=ids, labels=labels)
        exp[tag + ".loss1"] = o1.loss.reshape(1)
        exp[tag + ".logits1"] = o1.logits.float()

        # greedy generation with peft's saved adapter, as a user loads it
        # (no eos: generation runs its 8 tokens; the same as argmax of full uncached forwards)
        lm = PeftModel.from_pretrained(load_base(arch), adir)
        lm.eval()
        lm.generation_config.eos_token_id = None
        prompt = ids[0, :4].unsqueeze(0)
        with torch.no_grad():
            g = lm.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8,
                            do_sample=False, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
            gen = g.sequences[0, prompt.shape[1]:]
            seq = prompt
            for _ in range(8):
                seq = torch.cat([seq, lm(input_ids=seq).logits[:, -1:].argmax(-1)], 1)
        assert seq[0, prompt.shape[1]:].tolist() == gen.tolist(), (seq, gen)
        margin = min((s[0].topk(2).values[0] - s[0].topk(2).values[1]).item() for s in g.scores)
        exp[tag + ".prompt"] = prompt[0].int()
        exp[tag + ".gen"] = gen.int()
        print(f"{arch} {tag}: loss {out.loss.item():.6f} -> {o1.loss.item():.6f}, positions without the offset "
              f"change the logits by {d:.2e}, greedy {gen.tolist()} (smallest top-2 margin {margin:.2e})",
              file=sys.stderr)
    save_file({k: v.contiguous() for k, v in exp.items()}, os.path.join(OUT, arch, "expected.safetensors"),
              metadata={"seed": str(SEED), "torch": torch.__version__,
                        "transformers": transformers.__version__, "peft": peft.__version__})


def main():
    torch.use_deterministic_algorithms(True)
    for arch in ARCHS:
        make(arch)
    with open(os.path.join(OUT, "VERSIONS.json"), "w") as f:
        json.dump({"torch": torch.__version__, "transformers": transformers.__version__,
                   "peft": peft.__version__, "seed": SEED, "script": "tests/oracle/prefix_tuning.py"}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
