#!/usr/bin/env python3
"""LoRA with modules_to_save (peft): a fixture for issue 6's "optional modules_to_save".
tests/fixtures/hf_tiny/llama/mts/: a peft adapter (LoRA r2 on q_proj,v_proj plus a trained copy of
lm_head, randomised so it differs from the base) and expected.safetensors with its logits, loss
and the gradients of lm_head and the LoRA weights on the fixture batch (labels from
tests/fixtures/hf_tiny/llama/expected.safetensors). Run: .venv/bin/python tests/oracle/lora_modules_to_save.py"""
import os
import torch, peft, transformers
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

base = "tests/fixtures/hf_tiny/llama"
out = os.path.join(base, "mts")
e = load_file(os.path.join(base, "expected.safetensors"))
gen = torch.Generator().manual_seed(99)
m = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager")
pm = peft.get_peft_model(m, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                            modules_to_save=["lm_head"], task_type="CAUSAL_LM"))
with torch.no_grad():
    for n, p in pm.named_parameters():
        if "lora_B" in n or "modules_to_save" in n:
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
pm.save_pretrained(out, safe_serialization=True)
pm.train()
ids, labels, pos = e["input_ids"].long(), e["labels"].long(), e["position_ids"].long()
o = pm(input_ids=ids, labels=labels, position_ids=pos)
o.loss.backward()
exp = {"logits": o.logits.detach(), "loss": o.loss.detach().reshape(1)}
for n, p in pm.named_parameters():
    if p.requires_grad:
        exp["grad." + n.replace(".modules_to_save.default", "").replace(".default", "")] = p.grad.detach().clone()
save_file({k: v.contiguous() for k, v in exp.items()}, os.path.join(out, "expected.safetensors"),
          metadata={"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__})
print(sorted(exp))
