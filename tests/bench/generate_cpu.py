#!/usr/bin/env python3
"""Generation speed on the CPU: ftk generate against transformers' generate, side by side, same
model, prompt and thread count. Greedy, batch 1; prefill tokens/s from the prompt's prefill, decode
tokens/s from the N decode steps after the first new token. ftk generate reports both times
(prefill_s, decode_s); torch is timed inside its process (generate of 1 and of 1+N tokens).

Usage: .venv/bin/python tests/bench/generate_cpu.py [--threads 2] [--prompt 128] [--new 64] [--shapes 100m]
Prints a markdown table (docs/PERF.md keeps it); medians of --repeats runs."""
import argparse, json, os, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(__file__))
from train_cpu import SHAPES, make_model  # noqa: E402


def ftk_run(ftk, model, fts, new, threads):
    """(prefill seconds, decode seconds) as ftk generate reports them for the prompt."""
    p = subprocess.run([ftk, "generate", "--model", model, "--greedy", "--quiet", "--ignore-eos", "--max-new-tokens", str(new),
                        "--threads", str(threads), fts], check=True, capture_output=True)
    r = json.loads(p.stdout.decode().splitlines()[0])
    return r["prefill_s"], r["decode_s"]


TORCH = r'''
import json, sys, time, torch
from transformers import AutoModelForCausalLM
d, ids, new, threads, reps = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="sdpa").eval()
x = torch.tensor([ids])
out = []
with torch.no_grad():
    for _ in range(reps):
        t0 = time.perf_counter(); m.generate(x, max_new_tokens=1, do_sample=False, min_new_tokens=1); t1 = time.perf_counter()
        m.generate(x, max_new_tokens=new + 1, min_new_tokens=new + 1, do_sample=False); t2 = time.perf_counter()
        out.append((t1 - t0, (t2 - t1) - (t1 - t0)))
print(json.dumps(out))
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--shapes", default="100m")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ftk", default="build/bin/ftk")
    a = ap.parse_args()
    print("| shape | prompt | new | ftk prefill tok/s | torch prefill tok/s | ratio | ftk decode tok/s | torch decode tok/s | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    import random
    for name in a.shapes.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            d = os.path.join(tmp, "model")
            make_model(d, SHAPES[name])
            rnd = random.Random(0)
            ids = [rnd.randrange(3, SHAPES[name][5]) for _ in range(a.prompt)]
            fts = os.path.join(tmp, "p.fts")
            lines = [json.dumps({"kind": "stream", "meta": {"producer": "bench"}}),
                     json.dumps({"kind": "example", "tensors": {"input_ids": ids}})]
            subprocess.run([a.ftk, "dump", "--from-json"], input="\n".join(lines).encode(), stdout=open(fts, "wb"), check=True)
            runs = [ftk_run(a.ftk, d, fts, a.new + 1, a.threads) for _ in range(a.repeats)]
            p = subprocess.run([sys.executable, "-c", TORCH, d, json.dumps(ids), str(a.new), str(a.threads), str(a.repeats)],
                               capture_output=True, check=True)
            tt = json.loads(p.stdout.decode().splitlines()[-1])
            fp = a.prompt / statistics.median([x[0] for x in runs])
            fd = a.new / statistics.median([x[1] for x in runs])
            tp = a.prompt / statistics.median([x[0] for x in tt])
            td = a.new / statistics.median([x[1] for x in tt])
            print(f"| {name} | {a.prompt} | {a.new} | {fp:.0f} | {tp:.0f} | {fp / tp:.2f}x | {fd:.1f} | {td:.1f} | {fd / td:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
