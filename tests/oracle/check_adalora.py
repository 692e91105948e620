#!/usr/bin/env python3
"""peft loads what ftk trains with AdaLoRA: the adapter test_plugin_adalora saves after its eight
trainer steps (FTK_ADALORA_OUT=DIR; rank_pattern set, ranks kept only) is loaded with
PeftModel.from_pretrained on the original tiny llama and must give the logits of peft's own model
after the same steps (final.logits of tests/fixtures/peft_methods/adalora/expected.safetensors).
Usage:
  FTK_ADALORA_OUT=/tmp/ada build/tests/test_plugin_adalora
  .venv/bin/python tests/oracle/check_adalora.py /tmp/ada"""
import json
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

out = sys.argv[1]
exp = load_file("tests/fixtures/peft_methods/adalora/expected.safetensors")
ids, pos = exp["input_ids"].long(), exp["position_ids"].long()
cfg = json.load(open(f"{out}/adapter_config.json"))
assert cfg["peft_type"] == "ADALORA", cfg["peft_type"]
base = AutoModelForCausalLM.from_pretrained("tests/fixtures/hf_tiny/llama", dtype=torch.float32, attn_implementation="eager")
pm = PeftModel.from_pretrained(base, out)
ranks = {n: p.shape[0] for n, p in pm.named_parameters() if "lora_E" in n}
with torch.no_grad():
    got = pm(input_ids=ids, position_ids=pos).logits
want = exp["final.logits"]
err = ((got - want).abs().max() / want.abs().max()).item()
ok = err <= 1e-4 and sum(ranks.values()) == sum(sum(v) for v in cfg["rank_pattern"].values())
print(f"llama adalora: peft loaded ftk's adapter ({sum(ranks.values())} ranks kept over {len(ranks)} modules); "
      f"logits vs peft after the same 8 steps rel err {err:.2e}{'' if ok else '  FAIL'}")
sys.exit(0 if ok else 1)
