#!/usr/bin/env python3
"""peft loads what ftk trains: the adapters test_plugin_peft_methods writes after its AdamW step
(FTK_PEFT_METHODS_OUT=DIR) are loaded with PeftModel.from_pretrained on the original tiny base
and must give the logits of peft's own model after the same step (the fixture's M.step1.*
weights in peft's fixture adapter). BitFit (no peft) is loaded by setting each linear's bias.
Usage:
  FTK_PEFT_METHODS_OUT=/tmp/pm build/tests/test_plugin_peft_methods
  .venv/bin/python tests/oracle/check_peft_methods.py /tmp/pm"""
import json
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

out = sys.argv[1]
bad = 0
for arch in ["llama", "qwen2"]:
    base = f"tests/fixtures/hf_tiny/{arch}"
    exp = load_file(f"tests/fixtures/peft_methods/{arch}/expected.safetensors")
    ids, pos = exp["input_ids"].long(), exp["position_ids"].long()

    def fresh():
        return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager")

    for tag in ["ia3", "dora", "pissa", "olora", "bitfit"]:
        adir = f"{out}/{arch}/{tag}"
        with torch.no_grad():
            if tag == "bitfit":
                cfg = json.load(open(f"{adir}/adapter_config.json"))
                assert cfg["peft_type"] == "BITFIT"
                m = fresh()
                for k, v in load_file(f"{adir}/adapter_model.safetensors").items():
                    mod = m.get_submodule(k[len("base_model.model."):-len(".bias")])
                    mod.bias = torch.nn.Parameter(v.clone())
                got = m(input_ids=ids, position_ids=pos).logits
                m = fresh()
                for k in exp:
                    if k.startswith("bitfit.step1."):
                        n = k[len("bitfit.step1."):]
                        m.get_submodule(n[len("base_model.model."):-len(".bias")]).bias = torch.nn.Parameter(exp[k].clone())
                want = m(input_ids=ids, position_ids=pos).logits
            else:
                got = PeftModel.from_pretrained(fresh(), adir)(input_ids=ids, position_ids=pos).logits
                pm = PeftModel.from_pretrained(fresh(), f"tests/fixtures/peft_methods/{arch}/{tag}")
                for n, p in pm.named_parameters():
                    key = f"{tag}.step1." + n.replace(".default", "").replace("lora_magnitude_vector.weight", "lora_magnitude_vector")
                    if key in exp:
                        p.copy_(exp[key])
                want = pm(input_ids=ids, position_ids=pos).logits
        err = ((got - want).abs().max() / want.abs().max()).item()
        ok = err <= 1e-4
        bad += not ok
        print(f"{arch} {tag}: peft loaded ftk's adapter; logits vs peft after the same step rel err {err:.2e}"
              f"{'' if ok else '  FAIL'}")
sys.exit(1 if bad else 0)
