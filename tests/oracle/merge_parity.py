#!/usr/bin/env python3
"""Parity of `ftk merge-lora` with transformers + peft (issue 8), on the tiny HF fixtures.

For every architecture in tests/fixtures/hf_tiny (llama, mistral, qwen2, qwen3) and its peft
LoRA adapter, an rsLoRA variant of the llama adapter (same tensors, use_rslora = true), and the
real (trained) stories260K model with a peft adapter made here (r 8, alpha 16, all linear
layers, seeded, B = 0.05 * N(0,1) so the delta is not zero; saved in
tests/fixtures/merge/stories260K-adapter):

  1. `ftk merge-lora` writes the merged model in float32 and in bfloat16;
  2. transformers loads each merged directory (AutoModelForCausalLM.from_pretrained);
  3. its logits on the fixture batch are compared with peft's unmerged model (base + adapter,
     PeftModel.from_pretrained): relative error max|got - want| / max|want|.
     float32: the F32 base merged to F32; limit 1e-5 (issue 8).
     bfloat16: the base saved in bf16 by transformers, merged to bf16 (ftk's default, the base's
     dtype). Scored in float32 compute on both sides (merged bf16 weights upcast; peft unmerged
     on the bf16 base with its f32 adapter), so it measures the merge, not bf16 arithmetic. The
     merged weights must equal the f32 merge rounded once to bf16 within 1 ulp. The issue's 1e-3
     logits limit cannot be met by ANY bf16 merge of these random tiny models: rounding the
     merged weights to bf16 alone moves their logits by ~5e-3, and peft's own merge_and_unload
     (scored the same way and recorded as peft_merged_vs_peft) lands there too; so the check is
     max(1e-3, 2 x peft's own error). bf16-compute numbers, and the norm-wise error
     ||got - want|| / ||want|| of ftk's merge, are recorded as well.
  4. peft's float32 merge_and_unload weights are saved to tests/fixtures/merge/<case>.safetensors
     so that `make test` (tests/unit/test_plugin_merge.c) checks ftk's merged tensors (F32, and
     BF16 against their once-rounded values) without Python.

The numbers go to tests/fixtures/merge/parity.json with the package versions.
Run from the repo root after `make`:  .venv/bin/python tests/oracle/merge_parity.py [BUILD]
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
import transformers
import peft
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

FIX = "tests/fixtures/hf_tiny"
OUT = "tests/fixtures/merge"
BUILD = sys.argv[1] if len(sys.argv) > 1 else "build"
FTK = os.path.join(BUILD, "bin", "ftk")
SEED = 1234
LIMIT = {"float32": 1e-5, "bfloat16": 1e-3}
DT = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def rel(got, want):
    got, want = got.double(), want.double()
    return float((got - want).abs().max() / want.abs().max())


def load(path, dtype):
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager").eval()


def peft_model(base, adapter, dtype, compute=None):
    m = load(base, dtype)
    if compute is not None:
        m = m.to(compute)
    return PeftModel.from_pretrained(m, adapter).eval()


def dtype_of(path):
    c = json.load(open(f"{path}/config.json"))
    return c.get("dtype", c.get("torch_dtype"))


def bf16_ulps(a, b):
    """Largest distance in bf16 units in the last place, and how many elements differ."""
    ia = a.view(torch.int16).int()
    ib = b.view(torch.int16).int()
    # map sign-magnitude to a monotonic integer line
    ia = torch.where(ia < 0, -32768 - ia, ia)
    ib = torch.where(ib < 0, -32768 - ib, ib)
    d = (ia - ib).abs()
    return int(d.max()), int((d > 0).sum())


def main():
    os.makedirs(OUT, exist_ok=True)
    tmp = tempfile.mkdtemp()
    cases = [(a, f"{FIX}/{a}", f"{FIX}/{a}/adapter") for a in ("llama", "mistral", "qwen2", "qwen3")]
    rs = os.path.join(tmp, "llama-rslora-adapter")
    shutil.copytree(f"{FIX}/llama/adapter", rs)
    cfg = json.load(open(f"{rs}/adapter_config.json"))
    cfg["use_rslora"] = True
    json.dump(cfg, open(f"{rs}/adapter_config.json", "w"), indent=2)
    cases.append(("llama-rslora", f"{FIX}/llama", rs))
    st_ad = f"{OUT}/stories260K-adapter"
    torch.manual_seed(SEED)
    sm = PeftModel(load("models/stories260K", torch.float32),
                   peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                   target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"]))
    with torch.no_grad():
        for n, p in sm.named_parameters():
            if "lora_B" in n:
                p.copy_(0.05 * torch.randn(p.shape))
    sm.save_pretrained(st_ad)
    if os.path.exists(f"{st_ad}/README.md"):   # peft's model card: not a fixture
        os.remove(f"{st_ad}/README.md")
    cases.append(("stories260K", "models/stories260K", st_ad))

    report = {"transformers": transformers.__version__, "peft": peft.__version__, "torch": torch.__version__,
              "script": "tests/oracle/merge_parity.py", "seed": SEED,
              "metric": "max|got-want| / max|want| over the logits of the fixture batch",
              "limits": LIMIT, "cases": {}}
    ok = True
    for name, base, adapter in cases:
        if os.path.exists(f"{base}/expected.safetensors"):
            ids = load_file(f"{base}/expected.safetensors")["input_ids"].long()
        else:
            ids = torch.randint(3, 512, (2, 16), generator=torch.Generator().manual_seed(SEED))
        rows = {}
        with torch.no_grad():
            # float32: the F32 base merged to an F32 model (ftk's default: the base's dtype)
            out = os.path.join(tmp, f"{name}-f32")
            subprocess.run([FTK, "merge-lora", "-q", "--model", base, "--adapter", adapter, "--output", out], check=True)
            assert dtype_of(out) == "float32"
            ref = peft_model(base, adapter, torch.float32)(input_ids=ids).logits
            pm = peft_model(base, adapter, torch.float32).merge_and_unload()
            ftk_w = load_file(f"{out}/model.safetensors")
            r = {"ftk_merged_vs_peft": rel(load(out, torch.float32)(input_ids=ids).logits, ref),
                 "peft_merged_vs_peft": rel(pm(input_ids=ids).logits, ref),
                 "weights_vs_peft_merge": max(rel(ftk_w[k], v) for k, v in pm.state_dict().items() if k in ftk_w)}
            r["pass"] = r["ftk_merged_vs_peft"] <= LIMIT["float32"]
            rows["float32"] = r
            if name != "stories260K":   # 1.7 MB: the C test checks that one against ftk's own forward
                save_file({k: v.clone().contiguous() for k, v in pm.state_dict().items() if "_proj" in k}, f"{OUT}/{name}.safetensors",
                          metadata={"source": "peft merge_and_unload, float32", "script": "tests/oracle/merge_parity.py"})

            # bfloat16: a bf16 base (the fixture saved by transformers in bf16) merged to bf16
            b16 = os.path.join(tmp, f"{name}-base-bf16")
            load(base, torch.bfloat16).save_pretrained(b16)
            out = os.path.join(tmp, f"{name}-bf16")
            subprocess.run([FTK, "merge-lora", "-q", "--model", b16, "--adapter", adapter, "--output", out], check=True)
            assert dtype_of(out) == "bfloat16"
            ftk_w = load_file(f"{out}/model.safetensors")
            ref = peft_model(b16, adapter, torch.float32)(input_ids=ids).logits       # exact: unmerged, f32 compute
            once = peft_model(b16, adapter, torch.float32).merge_and_unload()         # W + delta in f32 ...
            once = {k: v.bfloat16() for k, v in once.state_dict().items()}           # ... rounded once to bf16
            pm = peft_model(b16, adapter, torch.bfloat16).merge_and_unload()          # peft's bf16 merge
            ref16 = peft_model(b16, adapter, torch.bfloat16)(input_ids=ids).logits
            ulp, ndiff = 0, 0
            for k, v in once.items():
                if k not in ftk_w:   # tied lm_head
                    continue
                u, n = bf16_ulps(ftk_w[k], v)
                ulp, ndiff = max(ulp, u), ndiff + n
            got = load(out, torch.float32)(input_ids=ids).logits
            r = {"ftk_merged_vs_peft": rel(got, ref),
                 "ftk_merged_vs_peft_normwise": float((got.double() - ref.double()).norm() / ref.double().norm()),
                 "peft_merged_vs_peft": rel(pm.float()(input_ids=ids).logits, ref),
                 "weights_max_ulp_vs_f32_merge_rounded_once": ulp,
                 "weights_differing_vs_f32_merge_rounded_once": ndiff,
                 "weights_vs_peft_merge": max(rel(ftk_w[k].float(), v.float()) for k, v in
                                              peft_model(b16, adapter, torch.bfloat16).merge_and_unload()
                                              .state_dict().items() if k in ftk_w),
                 "bf16_compute": {"ftk_merged_vs_peft": rel(load(out, torch.bfloat16)(input_ids=ids).logits, ref16),
                                  "peft_merged_vs_peft": rel(pm.bfloat16()(input_ids=ids).logits, ref16)}}
            r["pass"] = ulp <= 1 and r["ftk_merged_vs_peft"] <= max(LIMIT["bfloat16"], 2 * r["peft_merged_vs_peft"])
            rows["bfloat16"] = r
        for dname, r in rows.items():
            ok = ok and r["pass"]
            print(f"{name:13s} {dname:9s} logits rel err ftk {r['ftk_merged_vs_peft']:.2e} "
                  f"(peft merge_and_unload {r['peft_merged_vs_peft']:.2e})"
                  + (f", weights: {r['weights_max_ulp_vs_f32_merge_rounded_once']} ulp max"
                     f" ({r['weights_differing_vs_f32_merge_rounded_once']} differ)" if dname == "bfloat16" else "")
                  + f" {'ok' if r['pass'] else 'FAIL'}")
        report["cases"][name] = rows
    with open(f"{OUT}/parity.json", "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    shutil.rmtree(tmp)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
