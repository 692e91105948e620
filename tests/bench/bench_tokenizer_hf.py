#!/usr/bin/env python3
"""Single-thread speed of HuggingFace tokenizers' encode_batch on the benchmark corpus.
    RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false python bench_tokenizer_hf.py DIR CORPUS [REPEATS]
DIR holds tokenizer.json or tokenizer.json.zst. Only encode_batch (no special tokens) is timed;
prints the median MB/s (MB = 10^6 bytes of UTF-8 text) by wall and by process CPU time (all
threads: with one rayon thread that is the single-thread cost) and the token count."""
import json
import os
import statistics
import subprocess
import sys
import time

import tokenizers
from tokenizers import Tokenizer

d, corpus = sys.argv[1], sys.argv[2]
reps = int(sys.argv[3]) if len(sys.argv) > 3 else 3
p = os.path.join(d, "tokenizer.json")
if os.path.exists(p):
    raw = open(p, "rb").read()
else:
    raw = subprocess.run(["zstd", "-dc", p + ".zst"], check=True, capture_output=True).stdout
t0 = time.perf_counter()
tok = Tokenizer.from_str(raw.decode("utf-8"))
load = time.perf_counter() - t0
docs = [json.loads(l)["text"] for l in open(corpus, encoding="utf-8")]
nbytes = sum(len(x.encode("utf-8")) for x in docs)
speeds, cspeeds = [], []
for r in range(reps):
    t0, c0 = time.perf_counter(), time.process_time()
    enc = tok.encode_batch(docs, add_special_tokens=False)
    s, c = time.perf_counter() - t0, time.process_time() - c0
    ntok = sum(len(e.ids) for e in enc)
    del enc
    speeds.append(nbytes / 1e6 / s)
    cspeeds.append(nbytes / 1e6 / c)
    print(f"run {r + 1}: {s:.2f} s wall, {c:.2f} s cpu: {speeds[-1]:.2f} MB/s wall, "
          f"{cspeeds[-1]:.2f} MB/s cpu", file=sys.stderr)
print(f"hf-tokenizers {tokenizers.__version__} {d}: {nbytes / 1e6:.1f} MB in {len(docs)} docs, "
      f"{ntok} tokens, load {load:.2f} s, median {statistics.median(speeds):.2f} MB/s wall, "
      f"{statistics.median(cspeeds):.2f} MB/s cpu")
