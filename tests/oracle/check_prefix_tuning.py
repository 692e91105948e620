#!/usr/bin/env python3
"""peft loads what ftk trains: the prefix-tuning adapters test_plugin_prefix_tuning writes after
its AdamW step (FTK_PREFIX_TUNING_OUT=DIR) are loaded with PeftModel.from_pretrained on the
original tiny base and must give peft's own logits after the same step (T.logits1 of
tests/fixtures/peft_methods/prefix_tuning/<arch>/expected.safetensors). With the projection,
peft reads only prompt_embeddings (the MLP's output) and ignores ftk's prefix_encoder.safetensors;
that file is also checked to be the PrefixEncoder state dict: loaded into a trainable peft model
it gives the same logits.
Usage:
  FTK_PREFIX_TUNING_OUT=/tmp/pt build/tests/test_plugin_prefix_tuning
  .venv/bin/python tests/oracle/check_prefix_tuning.py /tmp/pt"""
import json
import sys

import torch
import peft
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

out = sys.argv[1]
bad = 0
for arch in ["llama", "qwen2", "qwen3"]:
    base = f"tests/fixtures/hf_tiny/{arch}"
    exp = load_file(f"tests/fixtures/peft_methods/prefix_tuning/{arch}/expected.safetensors")
    ids = exp["input_ids"].long()

    def fresh():
        return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager")

    for tag in ["proj", "noproj"]:
        adir = f"{out}/{arch}/{tag}"
        want = exp[f"{tag}.logits1"]
        with torch.no_grad():
            got = PeftModel.from_pretrained(fresh(), adir)(input_ids=ids).logits
        errs = [((got - want).abs().max() / want.abs().max()).item()]
        what = "peft loaded ftk's adapter"
        if tag == "proj":
            cfg = json.load(open(f"{adir}/adapter_config.json"))
            keep = {k: cfg[k] for k in ("num_virtual_tokens", "prefix_projection", "encoder_hidden_size")}
            pm = peft.get_peft_model(fresh(), peft.PrefixTuningConfig(task_type="CAUSAL_LM", **keep))
            pm.prompt_encoder["default"].load_state_dict(load_file(f"{adir}/prefix_encoder.safetensors"))
            with torch.no_grad():
                got2 = pm(input_ids=ids).logits
            errs.append(((got2 - want).abs().max() / want.abs().max()).item())
            what += " (and its prefix_encoder.safetensors into a trainable PrefixEncoder)"
        ok = max(errs) <= 1e-4
        bad += not ok
        print(f"{arch} {tag}: {what}; logits vs peft after the same step rel err "
              f"{', '.join(f'{e:.2e}' for e in errs)}{'' if ok else '  FAIL'}")
sys.exit(1 if bad else 0)
