#!/usr/bin/env python3
"""Loads an adapter written by `ftk train-step` with peft and checks it against what peft itself
produced (tests/oracle/hf_tiny_models.py fixtures):
  1. peft's PeftModel.from_pretrained loads the ftk adapter directory (config + safetensors);
  2. its LoRA weights equal the fixture's weights after the same 3 AdamW steps (lora.step3.*);
  3. logits of base + ftk adapter equal logits of base + the fixture's step-3 weights.
Usage: .venv/bin/python tests/oracle/check_ftk_adapter.py ARCH FTK_ADAPTER_DIR
(the adapter must come from training on the fixture batch 3 times with the fixture's settings:
 see tests/tools/test_train_step.sh)."""
import sys
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

arch, adir = sys.argv[1], sys.argv[2]
base = f"tests/fixtures/hf_tiny/{arch}"
exp = load_file(f"{base}/expected.safetensors")
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager")
pm = PeftModel.from_pretrained(model, adir)
worst = 0.0
for n, p in pm.named_parameters():
    if "lora_" in n:
        want = exp["lora.step3." + n.replace(".default", "")]
        worst = max(worst, ((p - want).abs().max() / want.abs().max()).item())
ids, pos = exp["input_ids"].long(), exp["position_ids"].long()
with torch.no_grad():
    got = pm(input_ids=ids, position_ids=pos).logits
    for n, p in pm.named_parameters():
        if "lora_" in n:
            p.copy_(exp["lora.step3." + n.replace(".default", "")])
    want = pm(input_ids=ids, position_ids=pos).logits
lerr = ((got - want).abs().max() / want.abs().max()).item()
print(f"{arch}: peft loaded the ftk adapter; LoRA weights rel err {worst:.2e}; logits rel err {lerr:.2e}")
sys.exit(0 if worst <= 1e-4 and lerr <= 1e-4 else 1)
