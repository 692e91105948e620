#!/usr/bin/env python3
"""Training speed and peak memory of every PEFT method (issue 11) on the same model and data:
ftk train-step with each plugin, and, where HuggingFace peft has the method, PyTorch +
transformers + peft with the same configuration, side by side in one run.

Usage: .venv/bin/python tests/bench/peft_methods.py [--threads 2] [--steps 6] [--shape 10m]
       [--only lora,ia3] [--ftk build/bin/ftk]
Writes a markdown table to stdout (docs/PERF.md keeps it). Random weights (Llama shape, see
SHAPES), batch 4 x 256 tokens without packing (the embed methods prepend virtual tokens to each
row), every token labelled, SFT loss, AdamW lr 1e-4, constant schedule. tokens/s is the median
over the steps after the first (warm-up) of (batch tokens / step time); peak memory is the max
RSS of each process (/usr/bin/time). A method whose plugin is not built is listed as such."""
import argparse, json, os, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_cpu import SHAPES, B, T, make_model, run_child, median  # noqa: E402
import re  # noqa: E402


def run_ftk(cmd):
    """Runs ftk under /usr/bin/time: (stdout, stderr, peak RSS in MiB)."""
    with tempfile.NamedTemporaryFile("r") as tf:
        p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", tf.name] + cmd, capture_output=True)
        if p.returncode != 0:
            sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr.decode()[-2000:]}")
        return p.stdout.decode(), p.stderr.decode(), int(tf.read().split()[-1]) / 1024.0

LIN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# name, ftk plugin, ftk options, peft config (class, kwargs) or None, extra peer setup
METHODS = [
    ("LoRA r8", "lora", {"r": "8", "lora_alpha": "16"}, ("LoraConfig", {"r": 8, "lora_alpha": 16, "target_modules": LIN})),
    ("rsLoRA r8", "lora", {"r": "8", "lora_alpha": "16", "use_rslora": "true"},
     ("LoraConfig", {"r": 8, "lora_alpha": 16, "target_modules": LIN, "use_rslora": True})),
    ("DoRA r8", "lora", {"r": "8", "lora_alpha": "16", "use_dora": "true"},
     ("LoraConfig", {"r": 8, "lora_alpha": 16, "target_modules": LIN, "use_dora": True})),
    ("PiSSA r8", "lora", {"r": "8", "lora_alpha": "8", "init_lora_weights": "pissa"},
     ("LoraConfig", {"r": 8, "lora_alpha": 8, "target_modules": LIN, "init_lora_weights": "pissa"})),
    ("OLoRA r8", "lora", {"r": "8", "lora_alpha": "16", "init_lora_weights": "olora"},
     ("LoraConfig", {"r": 8, "lora_alpha": 16, "target_modules": LIN, "init_lora_weights": "olora"})),
    ("LoRA+ r8 ratio 16", "lora", {"r": "8", "lora_alpha": "16", "loraplus_lr_ratio": "16"},
     ("LoraConfig", {"r": 8, "lora_alpha": 16, "target_modules": LIN, "loraplus_lr_ratio": 16})),
    ("AdaLoRA r12->8", "adalora", {"init_r": "12", "target_r": "8", "lora_alpha": "16", "total_step": "STEPS",
                                   "tinit": "1", "tfinal": "1", "deltaT": "1", "target_modules": ",".join(LIN)},
     ("AdaLoraConfig", {"init_r": 12, "target_r": 8, "lora_alpha": 16, "total_step": "STEPS", "tinit": 1, "tfinal": 1,
                        "deltaT": 1, "target_modules": LIN})),
    ("(IA)3", "ia3", {}, ("IA3Config", {"target_modules": ["k_proj", "v_proj", "down_proj"],
                                         "feedforward_modules": ["down_proj"]})),
    ("BitFit", "bitfit", {}, None),
    ("Diff pruning", "diffprune", {}, None),
    ("Adapter (Houlsby)", "bottleneck", {"config": "houlsby"}, None),
    ("Adapter (Pfeiffer)", "bottleneck", {"config": "pfeiffer"}, None),
    ("Parallel adapter", "bottleneck", {"config": "parallel"}, None),
    ("PALs", "pals", {}, None),
    ("Prefix tuning 20 (MLP)", "prefix_tuning", {"num_virtual_tokens": "20", "prefix_projection": "true",
                                                 "encoder_hidden_size": "HIDDEN"},
     ("PrefixTuningConfig", {"num_virtual_tokens": 20, "prefix_projection": True, "encoder_hidden_size": "HIDDEN"})),
    ("P-tuning v2 20", "prefix_tuning", {"num_virtual_tokens": "20"},
     ("PrefixTuningConfig", {"num_virtual_tokens": 20})),
    ("Prompt tuning 20", "prompt_tuning", {"num_virtual_tokens": "20"},
     ("PromptTuningConfig", {"num_virtual_tokens": 20})),
    ("P-tuning 20 (MLP)", "p_tuning", {"num_virtual_tokens": "20", "encoder_hidden_size": "HIDDEN"},
     ("PromptEncoderConfig", {"num_virtual_tokens": 20, "encoder_hidden_size": "HIDDEN"})),
    ("WARP 20 + 2 classes (full vocabulary)", "warp", {"num_virtual_tokens": "20", "verbalizer_ids": "3,4",
                                                       "mode": "full"}, None),
    ("MAM adapter", "mam", {}, None),
    ("UniPELT", "unipelt", {}, None),
    ("full fine-tuning", "full", {}, ("full", {})),
]

PEFT_CHILD = r'''
import json, sys, time, torch
from transformers import AutoModelForCausalLM
import peft
d, batches, threads, spec = sys.argv[1], json.load(open(sys.argv[2])), int(sys.argv[3]), json.loads(sys.argv[4])
torch.set_num_threads(threads)
torch.manual_seed(0)
m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="sdpa")
cls, kw = spec
ratio = kw.pop("loraplus_lr_ratio", None)
if cls != "full":
    m = peft.get_peft_model(m, getattr(peft, cls)(task_type="CAUSAL_LM", **kw))
m.train()
params = [p for p in m.parameters() if p.requires_grad]
if ratio:
    from peft.optimizers import create_loraplus_optimizer
    opt = create_loraplus_optimizer(m, torch.optim.AdamW, lr=1e-4, loraplus_lr_ratio=ratio)
else:
    opt = torch.optim.AdamW(params, lr=1e-4)
times = []
for i, b in enumerate(batches):
    ids = torch.tensor(b["tensors"]["input_ids"])
    t0 = time.perf_counter()
    loss = m(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    if cls == "AdaLoraConfig":
        m.base_model.update_and_allocate(i)
    opt.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - t0)
print(json.dumps(times))
'''


def make_batches(path, vocab, steps, ftk):
    import random
    rnd = random.Random(0)
    lines = [json.dumps({"kind": "stream", "meta": {"producer": "bench", "batches": str(steps)}})]
    for _ in range(steps):
        ids = [[rnd.randrange(3, vocab) for _ in range(T)] for _ in range(B)]
        lines.append(json.dumps({"kind": "batch", "tensors": {
            "input_ids": ids, "labels": ids, "position_ids": [list(range(T))] * B}}))
    subprocess.run([ftk, "dump", "--from-json"], input="\n".join(lines).encode(), stdout=open(path, "wb"), check=True)
    return [json.loads(l) for l in lines[1:]]


def fill(v, steps, hidden):
    """The placeholders of METHODS: STEPS (AdaLoRA's total_step), HIDDEN (encoder width)."""
    return steps if v == "STEPS" else hidden if v == "HIDDEN" else v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--shape", default="10m")
    ap.add_argument("--only", default="")
    ap.add_argument("--ftk", default="build/bin/ftk")
    a = ap.parse_args()
    plugdir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(a.ftk))), "plugins", "peft")
    shape = SHAPES[a.shape]
    only = set(a.only.split(",")) if a.only else None
    print(f"Shape {a.shape} (hidden {shape[0]}, {shape[1]} layers), batch {B} x {T}, {a.threads} threads, "
          f"{a.steps} steps.\n")
    print("| method | ftk plugin | trainable params | ftk tokens/s | peft tokens/s | ratio | ftk peak RSS MiB | "
          "peft peak RSS MiB |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        d = os.path.join(tmp, "model")
        make_model(d, shape)
        fts = os.path.join(tmp, "b.fts")
        batches = make_batches(fts, shape[5], a.steps, a.ftk)
        bj = os.path.join(tmp, "b.json")
        json.dump(batches, open(bj, "w"))
        for name, plugin, opts, peer in METHODS:
            if only and plugin not in only and name not in only:
                continue
            if not os.path.exists(os.path.join(plugdir, plugin + ".so")):
                print(f"| {name} | `{plugin}` | — | not built | | | | |", flush=True)
                continue
            cmd = [a.ftk, "train-step", "--model", d, "--finetuning-type", plugin, "--lr", "1e-4",
                   "--lr-scheduler", "constant", "--threads", str(a.threads),
                   "--output", os.path.join(tmp, "out-" + plugin)]
            for k, v in opts.items():
                cmd += ["--peft-opt", f"{k}={fill(v, a.steps, shape[0])}"]
            cmd.append(fts)
            out, err, ftk_rss = run_ftk(cmd)
            steps = [json.loads(l) for l in out.splitlines() if l.strip()]
            el = [s["elapsed_s"] for s in steps]
            times = [el[0]] + [el[i] - el[i - 1] for i in range(1, len(el))]
            ftk_tps = B * T / median(times[1:])
            mt = re.search(r"(\d+) trainable parameters", err)
            ntrain = f"{int(mt.group(1)):,}" if mt else "?"
            row = f"| {name} | `{plugin}` | {ntrain} | {ftk_tps:.0f} |"
            if peer:
                cls, kw = peer
                kw = {k: fill(v, a.steps, shape[0]) for k, v in kw.items()}
                out, pt_rss = run_child([sys.executable, "-c", PEFT_CHILD, d, bj, str(a.threads), json.dumps([cls, kw])])
                pt_tps = B * T / median(json.loads(out.splitlines()[-1])[1:])
                row += f" {pt_tps:.0f} | {ftk_tps / pt_tps:.2f}x | {ftk_rss:.0f} | {pt_rss:.0f} |"
            else:
                row += f" — | — | {ftk_rss:.0f} | — |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
