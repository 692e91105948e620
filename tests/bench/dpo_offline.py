#!/usr/bin/env python3
"""DPO training speed with offline reference log-probs (`ftk ref-logps` once) against the online
reference (the base model run inside every training step, adapter switched off), on the same
batches, and the number of training runs after which the precomputation has paid for itself.

Usage: .venv/bin/python tests/bench/dpo_offline.py [--threads 2] [--batches 6] [--shape 10m] [--repeats 3]
Writes a markdown section to stdout (docs/PERF.md keeps it). Random weights (transformers
LlamaForCausalLM); LoRA rank 16 on all linear layers; batches of 2 pairs (4 rows) x 256 tokens,
the first 64 tokens of each row a prompt (label -100); dpo sigmoid, beta 0.1; AdamW lr 1e-4.
tokens/s = batch tokens / step time, median over the steps after the first of each run, median
over --repeats runs; CPU s (user + system) and wall s of each whole process (model load included),
medians over the repeats. Break-even runs N: the smallest N with
ref-logps + N * offline <= N * online, by CPU time (steady on a shared machine) and by wall time.
"""
import argparse, json, os, random, resource, statistics, subprocess, sys, tempfile, time

SHAPES = {  # name: (hidden, layers, heads, kv_heads, intermediate, vocab), as tests/bench/train_cpu.py
    "10m": (256, 4, 4, 4, 688, 32000),
    "100m": (768, 12, 12, 12, 2048, 32000),
}
P, T, PROMPT = 2, 256, 64


def make_model(d, shape):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    C, L, H, KV, F, V = shape
    cfg = LlamaConfig(hidden_size=C, num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=KV,
                      intermediate_size=F, vocab_size=V, max_position_embeddings=2048, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(d, safe_serialization=True)


def make_batches(path, vocab, n, ftk):
    rnd = random.Random(0)
    lines = [json.dumps({"kind": "stream", "meta": {"producer": "bench", "batches": str(n)}})]
    for _ in range(n):
        prompts = [[rnd.randrange(3, vocab) for _ in range(PROMPT)] for _ in range(P)]
        rows = [p + [rnd.randrange(3, vocab) for _ in range(T - PROMPT)] for p in prompts + prompts]
        labels = [[-100] * PROMPT + r[PROMPT:] for r in rows]
        lines.append(json.dumps({"kind": "batch", "meta": {"pairwise": "1"}, "tensors": {
            "input_ids": rows, "labels": labels, "position_ids": [list(range(T))] * (2 * P),
            "segment_ids": [[1] * T] * (2 * P)}}))
    subprocess.run([ftk, "dump", "--from-json"], input="\n".join(lines).encode(), stdout=open(path, "wb"), check=True)


def timed(cmd, **kw):
    """(wall s, CPU s = user + system of the child): on a shared machine CPU time is the steadier."""
    r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    p = subprocess.run(cmd, capture_output=True, **kw)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr.decode()[-2000:]}")
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.monotonic() - t0, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--shape", default="10m", choices=sorted(SHAPES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--build", default=os.environ.get("FTK_BUILD", "build"))
    a = ap.parse_args()
    ftk = os.path.join(a.build, "bin", "ftk")
    with tempfile.TemporaryDirectory() as td:
        model = os.path.join(td, "model")
        make_model(model, SHAPES[a.shape])
        data, ref = os.path.join(td, "b.fts"), os.path.join(td, "b_ref.fts")
        make_batches(data, SHAPES[a.shape][5], a.batches, ftk)
        th = ["--threads", str(a.threads)]
        train = [ftk, "train-step", "--model", model, "--lora-rank", "16", "--lr", "1e-4", "--loss", "dpo",
                 "--loss-opt", "beta=0.1"] + th
        res = {"online": [], "offline": [], "pre": []}
        tps = {"online": [], "offline": []}
        for _ in range(a.repeats):
            res["pre"].append(timed([ftk, "ref-logps", "--model", model, "-q", "-o", ref, data] + th))
            for kind, inp in (("online", data), ("offline", ref)):
                mf = os.path.join(td, kind + ".jsonl")
                res[kind].append(timed(train + ["--output", os.path.join(td, kind), "--metrics", mf, inp]))
                steps = [json.loads(l) for l in open(mf)]
                tps[kind].append(statistics.median(s["tokens_per_s"] for s in steps[1:]))
        same = open(os.path.join(td, "online", "adapter_model.safetensors"), "rb").read() == \
            open(os.path.join(td, "offline", "adapter_model.safetensors"), "rb").read()
    wall = {k: statistics.median(w for w, _ in v) for k, v in res.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in res.items()}
    tp = {k: statistics.median(v) for k, v in tps.items()}

    def even(t):   # smallest N with pre + N * offline <= N * online
        return next((n for n in range(1, 100000) if t["pre"] + n * t["offline"] <= n * t["online"]), None)

    toks = a.batches * 2 * P * T
    C, L, H, KV, F, V = SHAPES[a.shape]
    print("## DPO: offline reference log-probs\n")
    print(f"DPO (sigmoid, beta 0.1) with LoRA r16 on a random Llama ({a.shape}: hidden {C}, {L} layers, vocab {V}), "
          f"{a.batches} batches of {P} pairs x {T} tokens ({toks} tokens, prompts of {PROMPT} unlabelled), "
          f"{a.threads} threads, CPU backend, medians of {a.repeats} runs. `online`: train-step runs the base "
          "model (adapter off) inside every step; `offline`: the same batches after one `ftk ref-logps` pass. "
          f"Both train to the same adapter, byte for byte ({'checked on this run too' if same else 'NOT on this run'}; "
          "tests/tools/test_train_pref.sh checks it with cmp).\n")
    print("| reference | tokens/s (train steps) | train-step CPU s | train-step wall s | ref-logps CPU s | ref-logps wall s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(f"| online | {tp['online']:.0f} | {cpu['online']:.2f} | {wall['online']:.2f} | - | - |")
    print(f"| offline | {tp['offline']:.0f} | {cpu['offline']:.2f} | {wall['offline']:.2f} | {cpu['pre']:.2f} | {wall['pre']:.2f} |")
    saved = cpu["online"] - cpu["offline"]
    print(f"\nOffline training takes {cpu['offline'] / cpu['online']:.2f}x the CPU time of online training "
          f"(steps {tp['offline'] / tp['online']:.2f}x as fast by wall clock). Each run saves {saved:.2f} CPU s; the "
          f"precomputation costs {cpu['pre']:.2f} CPU s, so it pays for itself after **{even(cpu)} run(s)** reusing it "
          f"(break-even N = ref-logps / saving per run = {cpu['pre'] / saved:.2f}; by wall clock {even(wall)}). "
          "Every later run costs only the offline time.\n")
    load = os.getloadavg()[0]
    print(f"Re-run: `.venv/bin/python tests/bench/dpo_offline.py --threads {a.threads} --batches {a.batches} "
          f"--shape {a.shape} --repeats {a.repeats}` (measured {time.strftime('%Y-%m-%d')} on "
          f"{os.cpu_count()} cores of a shared machine, load average {load:.1f} at the end: wall times are noisy, "
          "CPU times and their ratio are the steadier numbers).")


if __name__ == "__main__":
    main()
