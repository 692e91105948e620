#!/usr/bin/env python3
"""Replays the hand-written tokenizer.json snippets of tests/unit/test_tokenizer.c through
HuggingFace `tokenizers` and reports any expectation that differs.

    FTK_TOK_DUMP=/tmp/snip.jsonl build/tests/test_tokenizer >/dev/null
    .venv/bin/python tests/oracle/check_snippets.py /tmp/snip.jsonl
"""
import json
import sys

from tokenizers import Tokenizer

bad = 0
n = 0
for line in open(sys.argv[1], encoding="utf-8"):
    c = json.loads(line)
    j = json.loads(c["json"])
    # HF wants every field of an added token; the snippets leave defaults out
    for a in j.get("added_tokens", []):
        a.setdefault("special", False)
        for k in ("single_word", "lstrip", "rstrip"):
            a.setdefault(k, False)
        a.setdefault("normalized", not a["special"])
    def fill(o):
        if isinstance(o, dict):
            if o.get("type") == "ByteLevel":
                o.setdefault("trim_offsets", True)
                o.setdefault("add_prefix_space", True)
                o.setdefault("use_regex", True)
            if o.get("type") == "Metaspace":
                o.setdefault("split", True)
            for v in o.values():
                fill(v)
        elif isinstance(o, list):
            for v in o:
                fill(v)
    fill(j)
    tok = Tokenizer.from_str(json.dumps(j))
    if "text" in c:
        want = " ".join(str(i) for i in tok.encode(c["text"], add_special_tokens=bool(c["flag"])).ids)
    else:
        ids = [int(x) for x in c["ids"].split()] if c["ids"] else []
        want = tok.decode(ids, skip_special_tokens=bool(c["flag"]))
    n += 1
    if want != c["got"]:
        bad += 1
        print("DIFF", json.dumps({k: c[k] for k in c if k != "json"}, ensure_ascii=False), "HF:", repr(want))
        print("   ", c["json"][:600])
print(f"{n} snippet checks, {bad} differ from HF tokenizers")
sys.exit(1 if bad else 0)
