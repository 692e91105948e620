#!/usr/bin/env python3
"""LoRA SFT training speed and peak memory on the CPU: ftk train-step against PyTorch +
transformers + peft, side by side, same model shape, batch, sequence length and threads.

Usage: .venv/bin/python tests/bench/train_cpu.py [--threads 2] [--steps 6] [--shapes 10m,100m]
Writes a markdown table to stdout (docs/PERF.md keeps it). Random weights; LoRA rank 16 on all
linear layers, alpha 32, no dropout; batch 4 x 256 tokens, every token labelled; AdamW lr 1e-4.
tokens/s is the median over steps after the first (warm-up) of (batch tokens / step time);
peak memory is the max RSS of each process (/usr/bin/time)."""
import argparse, json, os, subprocess, sys, tempfile

SHAPES = {
    # name: (hidden, layers, heads, kv_heads, intermediate, vocab)
    "10m": (256, 4, 4, 4, 688, 32000),
    "100m": (768, 12, 12, 12, 2048, 32000),
}
B, T = 4, 256


def make_model(d, shape):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    C, L, H, KV, F, V = shape
    cfg = LlamaConfig(hidden_size=C, num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=KV,
                      intermediate_size=F, vocab_size=V, max_position_embeddings=2048, tie_word_embeddings=True)
    torch.manual_seed(0)
    m = LlamaForCausalLM(cfg)
    m.save_pretrained(d, safe_serialization=True)
    return sum(p.numel() for p in m.parameters())


def make_batches(path, vocab, steps, ftk):
    import random
    rnd = random.Random(0)
    lines = [json.dumps({"kind": "stream", "meta": {"producer": "bench", "batches": str(steps)}})]
    for _ in range(steps):
        ids = [[rnd.randrange(3, vocab) for _ in range(T)] for _ in range(B)]
        lines.append(json.dumps({"kind": "batch", "tensors": {
            "input_ids": ids, "labels": ids, "position_ids": [list(range(T))] * B,
            "segment_ids": [[1] * T] * B}}))
    subprocess.run([ftk, "dump", "--from-json"], input="\n".join(lines).encode(), stdout=open(path, "wb"), check=True)
    return [json.loads(l) for l in lines[1:]]


def run_child(cmd, env=None):
    """Runs cmd under /usr/bin/time, returns (stdout, its peak RSS in MiB). (getrusage of
    children would count the Python parent's pages a fork shares before exec.)"""
    with tempfile.NamedTemporaryFile("r") as tf:
        p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", tf.name] + cmd, capture_output=True, env=env)
        if p.returncode != 0:
            sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr.decode()[-2000:]}")
        return p.stdout.decode(), int(tf.read().split()[-1]) / 1024.0


TORCH_CHILD = r'''
import json, sys, time, torch
from transformers import AutoModelForCausalLM
from peft import LoraConfig, get_peft_model
d, batches, threads = sys.argv[1], json.load(open(sys.argv[2])), int(sys.argv[3])
torch.set_num_threads(threads)
m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="sdpa")
m = get_peft_model(m, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"))
m.train()
opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
times = []
for b in batches:
    ids = torch.tensor(b["tensors"]["input_ids"])
    t0 = time.perf_counter()
    loss = m(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in m.parameters() if p.requires_grad], 1.0)
    opt.step(); opt.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - t0)
print(json.dumps(times))
'''


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--shapes", default="10m,100m")
    ap.add_argument("--ftk", default="build/bin/ftk")
    a = ap.parse_args()
    print(f"| shape | params | ftk tokens/s | PyTorch tokens/s | ratio | ftk peak RSS MiB | PyTorch peak RSS MiB | RSS ratio |")
    print(f"| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in a.shapes.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            d = os.path.join(tmp, "model")
            nparams = make_model(d, SHAPES[name])
            fts = os.path.join(tmp, "b.fts")
            batches = make_batches(fts, SHAPES[name][5], a.steps, a.ftk)
            bj = os.path.join(tmp, "b.json")
            json.dump(batches, open(bj, "w"))
            out, ftk_rss = run_child([a.ftk, "train-step", "--model", d, "--lora-rank", "16", "--lora-alpha", "32",
                                      "--lr", "1e-4", "--lr-scheduler", "constant", "--threads", str(a.threads), fts])
            steps = [json.loads(l) for l in out.splitlines() if l.strip()]
            el = [s["elapsed_s"] for s in steps]
            ftk_times = [el[0]] + [el[i] - el[i - 1] for i in range(1, len(el))]
            out, pt_rss = run_child([sys.executable, "-c", TORCH_CHILD, d, bj, str(a.threads)])
            pt_times = json.loads(out.splitlines()[-1])
            ftk_tps = B * T / median(ftk_times[1:])
            pt_tps = B * T / median(pt_times[1:])
            print(f"| {name} | {nparams / 1e6:.1f}M | {ftk_tps:.0f} | {pt_tps:.0f} | {ftk_tps / pt_tps:.2f}x | "
                  f"{ftk_rss:.0f} | {pt_rss:.0f} | {ftk_rss / pt_rss:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
