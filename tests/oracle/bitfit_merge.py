#!/usr/bin/env python3
"""BitFit merged by `ftk merge-lora` and loaded by transformers (issue 11: "merges into the base
weights where the method allows it").

For each case, ftk trains BitFit 3 steps on the tiny fixture model, `ftk merge-lora` writes the
merged model (new biases with config.json's attention_bias / mlp_bias where the base had none;
Qwen2's own q/k/v biases replaced), transformers loads it, and its summed label log-probs on the
batch are compared with `ftk ref-logps --adapter` on the unmerged base + adapter.
Results: tests/fixtures/merge/bitfit.json.
Run from the repo root after `make`:  .venv/bin/python tests/oracle/bitfit_merge.py [BUILD]
"""
import json
import os
import subprocess
import sys
import tempfile

import torch
import transformers
from transformers import AutoModelForCausalLM

BUILD = sys.argv[1] if len(sys.argv) > 1 else "build"
FTK = os.path.join(BUILD, "bin", "ftk")
FIX = "tests/fixtures/hf_tiny"
CASES = [("llama", None), ("llama", "q_proj,down_proj"), ("qwen2", "q_proj,k_proj,v_proj"),
         ("qwen3", "q_proj,k_proj,v_proj,o_proj")]
IDS = [[5, 9, 14, 3, 22, 40, 7, 1], [8, 2, 33, 17, 4, 12, 50, 6]]
LABELS = [[-100, -100, 14, 3, 22, 40, 7, 1], [-100, -100, -100, 17, 4, 12, 50, 6]]


def ftk(*args, **kw):
    return subprocess.run([FTK, *args], check=True, capture_output=True, **kw).stdout


def main():
    tmp = tempfile.mkdtemp()
    batch = {"kind": "batch", "tensors": {"input_ids": IDS, "labels": LABELS, "position_ids": [list(range(8))] * 2}}
    stream = json.dumps({"kind": "stream", "meta": {"producer": "bitfit_merge.py"}}) + "\n" + json.dumps(batch) + "\n"
    b = os.path.join(tmp, "b.fts")
    with open(b, "wb") as f:
        f.write(ftk("dump", "--from-json", input=stream.encode()))
    report = {"transformers": transformers.__version__, "torch": torch.__version__, "script": "tests/oracle/bitfit_merge.py",
              "metric": "max |transformers(merged) - ftk(base + adapter)| / max |ftk| over the rows' summed label log-probs",
              "cases": {}}
    ok = True
    for arch, targets in CASES:
        name = arch + ("" if targets is None else "-" + targets.replace(",", "-"))
        ad, out = os.path.join(tmp, "ad-" + name), os.path.join(tmp, "m-" + name)
        extra = [] if targets is None else ["--peft-opt", f"target_modules={targets}"]
        ftk("train-step", "--model", f"{FIX}/{arch}", "--finetuning-type", "bitfit", *extra, "--lr", "5e-2",
            "--lr-scheduler", "constant", "--max-steps", "3", "--metrics", "/dev/null", "--output", ad, "-q", b)
        ftk("merge-lora", "-q", "--model", f"{FIX}/{arch}", "--adapter", ad, "--output", out)
        ref = ftk("ref-logps", "--model", f"{FIX}/{arch}", "--adapter", ad, "-q", b)
        rows = [json.loads(l) for l in ftk("dump", input=ref).decode().splitlines()]
        want = torch.tensor([r for m in rows if m["kind"] == "batch" for r in m["tensors"]["ref_logps"]], dtype=torch.float64)
        model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=torch.tensor(IDS)).logits[:, :-1].double(), -1)
        lab = torch.tensor(LABELS)[:, 1:]
        got = (lp.gather(-1, lab.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (lab != -100)).sum(-1)
        cfg = json.load(open(f"{out}/config.json"))
        err = float((got - want).abs().max() / want.abs().max())
        r = {"rel_err": err, "attention_bias": cfg.get("attention_bias"), "mlp_bias": cfg.get("mlp_bias"), "pass": err <= 1e-5}
        ok = ok and r["pass"]
        report["cases"][name] = r
        print(f"{name:34s} transformers(merged) vs ftk(base + adapter) {err:.2e}  attention_bias={r['attention_bias']} "
              f"mlp_bias={r['mlp_bias']} {'ok' if r['pass'] else 'FAIL'}")
    with open("tests/fixtures/merge/bitfit.json", "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
