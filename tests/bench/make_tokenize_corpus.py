#!/usr/bin/env python3
"""Writes the tokenizer benchmark corpus: JSONL, one {"text": ...} document per line, at least
20 MB of mixed English, Chinese and code, the same bytes on every run (no randomness: a fixed
order over LLaMA-Factory's demo data and the C headers under /usr/include).

    python3 tests/bench/make_tokenize_corpus.py OUT.jsonl [MIN_MB]
"""
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "..", "shared", "fixtures", "data", "llamafactory")


def english():
    for fn in ["alpaca_en_demo.json", "dpo_en_demo.json", "kto_en_demo.json"]:
        for r in json.load(open(os.path.join(DATA, fn), encoding="utf-8")):
            yield json.dumps(r, ensure_ascii=False) if "output" not in r else \
                "\n".join(str(r.get(k, "")) for k in ("instruction", "input", "output"))
    for line in open(os.path.join(DATA, "wiki_demo.txt"), encoding="utf-8"):
        if line.strip():
            yield line.rstrip("\n")
    for line in open(os.path.join(DATA, "c4_demo.jsonl"), encoding="utf-8"):
        yield json.loads(line)["text"]


def chinese():
    for fn in ["alpaca_zh_demo.json", "dpo_zh_demo.json"]:
        for r in json.load(open(os.path.join(DATA, fn), encoding="utf-8")):
            if "output" in r:
                yield "\n".join(str(r.get(k, "")) for k in ("instruction", "input", "output"))
            else:
                yield json.dumps(r, ensure_ascii=False)


def code():
    files = sorted(glob.glob("/usr/include/**/*.h", recursive=True))
    for f in files:
        try:
            text = open(f, encoding="utf-8").read()
        except (UnicodeDecodeError, OSError):
            continue
        for i in range(0, len(text), 8000):  # documents of at most 8,000 characters
            yield text[i:i + 8000]


def main():
    out, min_mb = sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 20.0
    target = int(min_mb * 1e6)
    en, zh, co = list(english()), list(chinese()), list(code())
    size = 0
    with open(out, "w", encoding="utf-8") as f:
        i = 0
        # interleaved by bytes: about 40% English, 30% Chinese, 30% code; each source in order,
        # starting over when used up
        quota = [(en, 0.4), (zh, 0.3), (co, 0.3)]
        done = [0, 0, 0]
        count = [0, 0, 0]
        while size < target:
            k = min(range(3), key=lambda j: done[j] / quota[j][1])
            src = quota[k][0]
            doc = src[count[k] % len(src)]
            count[k] += 1
            line = json.dumps({"text": doc}, ensure_ascii=False) + "\n"
            f.write(line)
            n = len(doc.encode("utf-8"))
            size += n
            done[k] += n
            i += 1
    print(f"{out}: {size / 1e6:.1f} MB of text in {i} documents "
          f"(en {done[0] / 1e6:.1f}, zh {done[1] / 1e6:.1f}, code {done[2] / 1e6:.1f} MB)", file=sys.stderr)


if __name__ == "__main__":
    main()
