#!/usr/bin/env python3
"""peft LoRA adapters with per-module rank_pattern / alpha_pattern and modules_to_save, for
`ftk merge-lora` and adapter loading (issue 8: "LoRA adapter (ftk's or peft's)").

On the tiny llama fixture (tests/fixtures/hf_tiny/llama), with seeded non-zero lora_B and a
perturbed copy of lm_head:
  patterns/  LoRA r 2, alpha 4 on all seven linears; rank_pattern and alpha_pattern keys that
             are Python regexes as peft matches them (re.match(rf"(.*\\.)?({key})$", module)),
             among them \\d and (?:...); modules_to_save ["lm_head"]
  dora-mts/  DoRA r 2 on q_proj, v_proj with modules_to_save ["lm_head"] (merged by the plugin
             path of ftk merge-lora)
  regex-targets/  target_modules and exclude_modules as regex strings (re.fullmatch)
  ../qwen3/mts-embed/, ../qwen3/dora-mts-embed/  modules_to_save ["embed_tokens"] on qwen3, whose
             lm_head is tied to the embeddings (peft trains a copy; the head keeps the original)
Each directory holds peft's save_pretrained output and expected.safetensors: "logits" of base +
adapter (unmerged, float32) on the fixture batch, and "merged.<name>" for every tensor of peft's
merge_and_unload.
tests/fixtures/peft_pattern_cases.json: which key peft's get_pattern_key picks for module names
and pattern dicts, and whether match_target_against_key (target_modules as one regex) matches
(tests/unit/test_peft_pattern.c runs ftk_peft_pattern and ftk_peft_regex_fullmatch on them).
Run from the repo root: .venv/bin/python tests/oracle/lora_patterns.py
"""
import json
import os

import peft
import torch
from peft.utils.other import get_pattern_key, match_target_against_key
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

BASE = "tests/fixtures/hf_tiny/llama"
LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CASES = {
    "patterns": dict(r=2, lora_alpha=4, target_modules=LINEARS, modules_to_save=["lm_head"],
                     rank_pattern={"q_proj": 4, r"layers\.1\.mlp\.down_proj": 3, r"model\.layers\.\d\.self_attn\.o_proj": 1},
                     alpha_pattern={"v_proj": 16, r"(?:gate|up)_proj": 2}),
    "dora-mts": dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], use_dora=True, modules_to_save=["lm_head"]),
    "regex-targets": dict(r=2, lora_alpha=4, target_modules=r".*\.layers\.\d\.(self_attn\.(q|v)|mlp\.[a-z]+)_proj",
                          exclude_modules=r".*\.layers\.0\.mlp\.up_proj"),
    # qwen3's fixture ties lm_head to embed_tokens: peft trains a copy of embed_tokens, the head
    # keeps the original matrix
    "qwen3/mts-embed": dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], modules_to_save=["embed_tokens"]),
    "qwen3/dora-mts-embed": dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], use_dora=True,
                                 modules_to_save=["embed_tokens"]),
}


PATTERN_DICTS = [
    {"q_proj": 4},
    {"proj": 4},                                   # no match: a key must end at a "." boundary
    {"q_proj": 4, "self_attn.q_proj": 8},          # the first matching key wins, not the longest
    {r"layers\.1\.mlp\.down_proj": 3, "down_proj": 5},
    {r"model\.layers\.\d\.self_attn\.o_proj": 1},
    {r"layers\.[0-9]+\.self_attn\.(q|k)_proj": 6},
    {r"(?:gate|up)_proj": 2},
    {r".*\.mlp\..*": 7},
    {r"layers.1.mlp.up_proj": 9},                  # "." as any character
    {"layers\\.1": 3},                           # a module, not a parent: no match for its children
    {r"\w+_proj": 11},
    {"model.layers.10.self_attn.v_proj": 12},
    {r"layers\.[\d]\.mlp\.[a-z]+_proj": 5},          # \d inside brackets
    {r"[^.]*_proj": 3},                             # a negated class
    {r"layers\.\d+\.self_attn\.[qk]_proj$": 2},     # "$" inside the key too
    {r"layers\.1\d\.self_attn\..*": 4, r"\.": 1},    # "\." alone matches nothing whole
]
# target_modules / exclude_modules as one string: re.fullmatch (peft match_target_against_key)
TARGET_REGEXES = [r".*\.layers\.1\.(self_attn\.(q|v)|mlp\.down)_proj", r".*_proj", r"q_proj",
                  r"model\.layers\.\d+\.self_attn\.[^.]+", r"(?:.*\.)?(up|gate)_proj", r".*\.layers\.1[0-9]?\..*"]
MODULES = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.k_proj", "model.layers.1.mlp.down_proj",
           "model.layers.0.mlp.down_proj", "model.layers.0.self_attn.o_proj", "model.layers.10.self_attn.o_proj",
           "model.layers.1.mlp.up_proj", "model.layers.1.mlp.gate_proj", "model.layers.10.self_attn.v_proj",
           "model.layers.0.self_attn.v_proj", "lm_head"]


def pattern_cases():
    cases = []
    for d in PATTERN_DICTS:
        for m in MODULES:
            k = get_pattern_key(d.keys(), m)
            cases.append({"pattern": d, "module": m, "value": d.get(k, -1)})
    full = [{"regex": r, "module": m, "match": bool(match_target_against_key(r, m))} for r in TARGET_REGEXES for m in MODULES]
    with open("tests/fixtures/peft_pattern_cases.json", "w") as f:
        json.dump({"source": f"peft {peft.__version__} get_pattern_key, match_target_against_key",
                   "script": "tests/oracle/lora_patterns.py", "default": -1, "cases": cases, "fullmatch": full}, f, indent=0)
        f.write("\n")
    print(len(cases), "pattern cases,", sum(c["value"] != -1 for c in cases), "matching;", len(full), "fullmatch cases,",
          sum(c["match"] for c in full), "matching")


def main():
    pattern_cases()
    for name, kw in CASES.items():
        base = BASE if "/" not in name else os.path.join(os.path.dirname(BASE), name.split("/")[0])
        e = load_file(os.path.join(base, "expected.safetensors"))
        ids, pos = e["input_ids"].long(), e["position_ids"].long()
        torch.manual_seed(7)   # lora_A's init
        gen = torch.Generator().manual_seed(7)
        m = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager")
        pm = peft.get_peft_model(m, peft.LoraConfig(lora_dropout=0.0, task_type="CAUSAL_LM", **kw))
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_B" in n or "modules_to_save" in n or "lora_magnitude" in n:
                    p.add_(0.1 * torch.randn(p.shape, generator=gen))
        out = os.path.join(BASE, name) if "/" not in name else os.path.join(os.path.dirname(BASE), name)
        pm.save_pretrained(out, safe_serialization=True)
        cfg = os.path.join(out, "adapter_config.json")   # peft writes target_modules from a set: sort it
        c = json.load(open(cfg))
        if isinstance(c.get("target_modules"), list):
            c["target_modules"] = sorted(c["target_modules"])
        with open(cfg, "w") as f:
            json.dump(c, f, indent=2, sort_keys=True)
            f.write("\n")
        if os.path.exists(os.path.join(out, "README.md")):   # peft's model card: not a fixture
            os.remove(os.path.join(out, "README.md"))
        pm.eval()
        with torch.no_grad():
            logits = pm(input_ids=ids, position_ids=pos).logits
            ranks = {k: v.shape[0] for k, v in pm.state_dict().items() if "lora_A" in k}
            merged = pm.merge_and_unload().state_dict()
        exp = {"logits": logits.contiguous()}
        exp.update({f"merged.{k}": v.contiguous() for k, v in merged.items()})
        save_file(exp, os.path.join(out, "expected.safetensors"),
                  metadata={"source": f"peft {peft.__version__}", "script": "tests/oracle/lora_patterns.py"})
        print(name, "ranks", sorted(set(ranks.values())), "logits", tuple(logits.shape))


if __name__ == "__main__":
    main()
