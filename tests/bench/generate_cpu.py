#!/usr/bin/env python3
"""Generation speed on the CPU: ftk generate against transformers' generate and, when a llama.cpp
build is there, llama.cpp's llama-bench, side by side, same model, prompt and thread count.
Greedy, batch 1 (one sequence), F32 weights; prefill tokens/s from the prompt's prefill, decode
tokens/s from the N decode steps after the first new token (positions P .. P+N-1).
- ftk generate reports both times (prefill_s, decode_s) for a fresh process (no warm-up).
- torch: a child process warms up (generate of 2 tokens), then times generate of 1 and of 1+N
  tokens; decode = the difference.
- llama.cpp: the HF directory converted with its convert_hf_to_gguf.py (--outtype f32; the
  tokenizer comes from tests/fixtures/tokenizers/sp-bpe-32k, only for the conversion); then
  `llama-bench -p P -n 0` (pp: the P-token prompt in one batch) and `llama-bench -p 0 -n N -d P`
  (tg: N single-token decodes after a P-token context), each -r 1 after llama-bench's own warm-up,
  llama-bench's default settings otherwise: its KV cache is F16 (it offers no F32 cache).
Repeats are interleaved (ftk, llama.cpp, torch, ftk, ...) and the table shows medians, and in brackets
the best run (the least disturbed one on a shared machine).

llama.cpp is optional: --llamacpp DIR (default $LLAMACPP_DIR) is a llama.cpp source tree with
DIR/build/bin/llama-bench built (docs/PERF.md says how); without it, or without the `gguf` and
`sentencepiece` packages for the conversion, the script says so on stderr and leaves it out.

Usage: .venv/bin/python tests/bench/generate_cpu.py [--threads 2[,1]] [--prompt 128] [--new 64] [--shapes 100m]
       [--repeats 3] [--llamacpp DIR] [--raw FILE]
Prints a markdown table (docs/PERF.md keeps it)."""
import argparse, json, os, random, shutil, statistics, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(__file__))
from train_cpu import SHAPES, make_model  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
SP_TOKENIZER = os.path.join(ROOT, "tests", "fixtures", "tokenizers", "sp-bpe-32k")


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
    m.generate(x, max_new_tokens=2, min_new_tokens=2, do_sample=False)  # warm-up, untimed
    for _ in range(reps):
        t0 = time.perf_counter(); m.generate(x, max_new_tokens=1, do_sample=False, min_new_tokens=1); t1 = time.perf_counter()
        m.generate(x, max_new_tokens=new + 1, min_new_tokens=new + 1, do_sample=False); t2 = time.perf_counter()
        out.append((t1 - t0, (t2 - t1) - (t1 - t0)))
print(json.dumps(out))
'''


def torch_run(d, ids, new, threads):
    p = subprocess.run([sys.executable, "-c", TORCH, d, json.dumps(ids), str(new), str(threads), "1"],
                       capture_output=True, check=True)
    return json.loads(p.stdout.decode().splitlines()[-1])[0]


def llamacpp_find(d):
    """llama-bench and convert_hf_to_gguf.py under the llama.cpp tree d, or None (with the reason on stderr)."""
    if not d:
        print("generate_cpu: llama.cpp left out: no build given (--llamacpp DIR or LLAMACPP_DIR; docs/PERF.md says how to "
              "build one)", file=sys.stderr)
        return None
    bench = os.path.join(d, "build", "bin", "llama-bench")
    conv = os.path.join(d, "convert_hf_to_gguf.py")
    if not (os.access(bench, os.X_OK) and os.path.isfile(conv)):
        print(f"generate_cpu: llama.cpp left out: {bench} or {conv} is missing", file=sys.stderr)
        return None
    try:
        import gguf, sentencepiece  # noqa: F401  (convert_hf_to_gguf.py imports them)
    except ImportError as e:
        print(f"generate_cpu: llama.cpp left out: the conversion needs {e.name} (.venv/bin/pip install gguf sentencepiece)",
              file=sys.stderr)
        return None
    return bench, conv


def llamacpp_convert(conv, d, out):
    """The HF directory d as an F32 GGUF file at out; the tokenizer (needed by the converter, not by the benchmark)
    is the 32000-token SentencePiece BPE fixture, matching the shapes' vocabulary."""
    shutil.copy(os.path.join(SP_TOKENIZER, "tokenizer_config.json"), d)
    with open(os.path.join(d, "tokenizer.json"), "wb") as f:
        subprocess.run(["zstd", "-dc", os.path.join(SP_TOKENIZER, "tokenizer.json.zst")], stdout=f, check=True)
    subprocess.run([sys.executable, conv, d, "--outtype", "f32", "--outfile", out], check=True, capture_output=True)


def llamacpp_bench(bench, gguf, args):
    """The first sample's seconds and the settings llama-bench reports, for one llama-bench run (-r 1)."""
    p = subprocess.run([bench, "-m", gguf, "-r", "1", "-o", "jsonl"] + args,
                       capture_output=True, check=True)
    r = json.loads(p.stdout.decode().splitlines()[-1])
    return r["samples_ns"][0] / 1e9, r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=lambda v: [int(x) for x in v.split(",")], default=[2],
                    help="thread count(s), comma-separated; every peer gets the same")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--shapes", default="100m")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ftk", default="build/bin/ftk")
    ap.add_argument("--llamacpp", default=os.environ.get("LLAMACPP_DIR", ""),
                    help="llama.cpp source tree with build/bin/llama-bench (default $LLAMACPP_DIR)")
    ap.add_argument("--raw", help="also write every run's seconds to this JSON file")
    a = ap.parse_args()
    lc = llamacpp_find(a.llamacpp)
    peers = ["ftk", "llama.cpp", "torch"] if lc else ["ftk", "torch"]
    cols = ["shape", "prompt", "new", "threads"]
    for what in ("prefill", "decode"):
        cols += [f"{p} {what} tok/s" for p in peers] + [f"ftk / {p}" for p in peers[1:]]
    print("Each tok/s cell: median of the repeats (best run in brackets); ratios of the medians (of the best runs).")
    print("| " + " | ".join(cols) + " |")
    print("| --- | " + " | ".join(["---:"] * (len(cols) - 1)) + " |")
    print(f"load average at the start: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    settings, raw = None, []
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
            gg = None
            if lc:   # a directory beside the model's, so that ftk and torch read the model exactly as before
                conv_dir = os.path.join(tmp, "model-for-gguf")
                os.mkdir(conv_dir)
                for f in os.listdir(d):
                    os.symlink(os.path.join(d, f), os.path.join(conv_dir, f))
                gg = os.path.join(tmp, "model-f32.gguf")
                llamacpp_convert(lc[1], conv_dir, gg)
            for threads in a.threads:
                runs = {p: [] for p in peers}   # (prefill s, decode s) per repeat
                for _ in range(a.repeats):   # interleaved, so that a change in the machine's load hits every peer alike
                    runs["ftk"].append(ftk_run(a.ftk, d, fts, a.new + 1, threads))
                    if lc:
                        pp, settings = llamacpp_bench(lc[0], gg, ["-p", str(a.prompt), "-n", "0", "-t", str(threads)])
                        tg, _ = llamacpp_bench(lc[0], gg, ["-p", "0", "-n", str(a.new), "-d", str(a.prompt), "-t", str(threads)])
                        runs["llama.cpp"].append((pp, tg))
                    runs["torch"].append(torch_run(d, ids, a.new, threads))
                raw.append({"shape": name, "threads": threads, "seconds": runs})
                cells = [name, str(a.prompt), str(a.new), str(threads)]
                for i, n, fmt in ((0, a.prompt, ".0f"), (1, a.new, ".1f")):
                    med = {p: n / statistics.median([x[i] for x in runs[p]]) for p in peers}
                    best = {p: n / min(x[i] for x in runs[p]) for p in peers}
                    cells += [f"{med[p]:{fmt}} ({best[p]:{fmt}})" for p in peers]
                    cells += [f"{med['ftk'] / med[p]:.2f}x ({best['ftk'] / best[p]:.2f}x)" for p in peers[1:]]
                print("| " + " | ".join(cells) + " |", flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    if a.raw:
        with open(a.raw, "w") as f:
            json.dump(raw, f, indent=1)
    if settings:
        keep = ("build_commit", "cpu_info", "backends", "n_threads", "type_k", "type_v", "flash_attn", "n_batch",
                "n_ubatch", "use_mmap", "poll", "model_type")
        print("llama-bench settings: " + json.dumps({k: settings[k] for k in keep if k in settings}))


if __name__ == "__main__":
    main()
