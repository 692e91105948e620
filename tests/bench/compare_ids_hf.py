#!/usr/bin/env python3
"""Compares ftk's ids on the benchmark corpus with HF tokenizers', document by document.

    BENCH_DUMP=/tmp/ids.NAME build/bench/bench_tokenizer tests/fixtures/tokenizers/NAME CORPUS 1
    .venv/bin/python tests/bench/compare_ids_hf.py NAME CORPUS /tmp/ids.NAME
(tests/bench/tokenize.sh builds bench_tokenizer and the corpus.) Exits 1 if any document differs."""
import json
import subprocess
import sys

from tokenizers import Tokenizer

name, corpus, dump = sys.argv[1:4]
raw = subprocess.run(["zstd", "-dc", f"tests/fixtures/tokenizers/{name}/tokenizer.json.zst"],
                     check=True, capture_output=True).stdout
tok = Tokenizer.from_str(raw.decode("utf-8"))
docs = [json.loads(l)["text"] for l in open(corpus, encoding="utf-8")]
enc = tok.encode_batch(docs, add_special_tokens=False)
mine = open(dump).read().split("\n")
bad = 0
for i, e in enumerate(enc):
    got = [int(x) for x in mine[i].split()] if i < len(mine) and mine[i] else []
    if got != e.ids:
        bad += 1
        if bad <= 3:
            j = next(k for k in range(len(got) + 1) if k >= len(got) or k >= len(e.ids) or got[k] != e.ids[k])
            print(f"{name} doc {i}: first difference at token {j}: ftk {got[j:j + 5]}, hf {e.ids[j:j + 5]}")
print(f"{name}: {len(docs)} documents, {bad} differ")
sys.exit(1 if bad else 0)
