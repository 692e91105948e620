#!/usr/bin/env python3
"""Greedy generation fixtures for `ftk generate` (issue 8) on every architecture of
tests/fixtures/hf_tiny (llama with llama3 rope scaling, mistral, qwen2 with q/k/v biases, qwen3
with q/k norms), by transformers' `generate`, with and without each model's peft LoRA adapter
(unmerged, PeftModel.from_pretrained).

Three prompts of random ids (lengths 3, 7, 12), 40 new tokens each with the EOS switched off, so
the KV cache is used up to position 51 of the models' 64. Greedy on random tiny models can meet
near-ties, so each case records the smallest gap between the best and the second-best logit over
its steps: ftk must agree token for token, and a gap under 1e-4 would make a difference
meaningless (none is; the script fails if one is).

Writes tests/fixtures/hf_tiny/greedy.json. Run from the repo root:
    .venv/bin/python tests/oracle/greedy_hf_tiny.py
"""
import json
import random

import torch
import transformers
import peft
from peft import PeftModel
from transformers import AutoModelForCausalLM

FIX = "tests/fixtures/hf_tiny"
NEW = 40
MIN_GAP = 1e-4


def main():
    rnd = random.Random(1234)
    prompts = [[rnd.randrange(3, 64) for _ in range(n)] for n in (3, 7, 12)]
    out = {"transformers": transformers.__version__, "peft": peft.__version__, "torch": torch.__version__,
           "script": "tests/oracle/greedy_hf_tiny.py", "max_new_tokens": NEW, "prompts": prompts, "cases": {}}
    for arch in ("llama", "mistral", "qwen2", "qwen3"):
        for mode in ("base", "adapter"):
            m = AutoModelForCausalLM.from_pretrained(f"{FIX}/{arch}", dtype=torch.float32, attn_implementation="eager")
            if mode == "adapter":
                m = PeftModel.from_pretrained(m, f"{FIX}/{arch}/adapter")
            m.eval()
            rows = []
            with torch.no_grad():
                for p in prompts:
                    g = m.generate(input_ids=torch.tensor([p]), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                                   eos_token_id=None, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
                    ids = g.sequences[0, len(p):].tolist()
                    gap = min(float(t.topk(2).values[0, 0] - t.topk(2).values[0, 1]) for t in g.logits)
                    if gap < MIN_GAP:
                        raise SystemExit(f"{arch} {mode} prompt {p}: a near-tie (gap {gap:.2e}); pick other prompts")
                    rows.append({"ids": ids, "min_gap": gap})
            out["cases"][f"{arch}/{mode}"] = rows
            print(f"{arch:8s} {mode:8s} min gap {min(r['min_gap'] for r in rows):.2e}")
    with open(f"{FIX}/greedy.json", "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
