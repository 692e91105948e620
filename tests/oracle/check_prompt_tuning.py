#!/usr/bin/env python3
"""peft loads what ftk trains: the prompt tuning and P-tuning adapters test_plugin_prompt_tuning
writes after its AdamW step (FTK_PROMPT_TUNING_OUT=DIR) are loaded with PeftModel.from_pretrained
on the original tiny base and must give the logits of peft's own model after the same step
(the fixture's M.step1.prompt_embeddings, or for P-tuning the encoder's output after the step,
M.step1.prompt_embeddings_out, which is what peft would save). ftk's P-tuning adapters also hold
ftk_prompt_encoder.safetensors, which peft ignores.
Usage:
  FTK_PROMPT_TUNING_OUT=/tmp/pt build/tests/test_plugin_prompt_tuning
  .venv/bin/python tests/oracle/check_prompt_tuning.py /tmp/pt"""
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

FIX = "tests/fixtures/peft_methods/prompt_tuning"
P = 4
out = sys.argv[1]
bad = 0
for arch in ["llama", "qwen3"]:
    base = f"tests/fixtures/hf_tiny/{arch}"
    exp = load_file(f"{FIX}/{arch}/expected.safetensors")
    ids = exp["input_ids"].long()

    def fresh():
        return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager")

    for tag in ["pt_random", "pt_text", "ptune_mlp", "ptune_lstm"]:
        with torch.no_grad():
            got = PeftModel.from_pretrained(fresh(), f"{out}/{arch}/{tag}")(input_ids=ids).logits[:, P:]
            pm = PeftModel.from_pretrained(fresh(), f"{FIX}/{arch}/{tag}")   # inference mode: the prompt is the table
            key = f"{tag}.step1.prompt_embeddings" + ("" if tag.startswith("pt_") else "_out")
            pm.prompt_encoder["default"].embedding.weight.copy_(exp[key])
            want = pm(input_ids=ids).logits[:, P:]
        err = ((got - want).abs().max() / want.abs().max()).item()
        ok = err <= 1e-4
        bad += not ok
        print(f"{arch} {tag}: peft loaded ftk's adapter; logits vs peft after the same step rel err {err:.2e}"
              f"{'' if ok else '  FAIL'}")
sys.exit(1 if bad else 0)
