#!/usr/bin/env python3
"""Oracle: the converted stories260K model directory behaves like llama2.c's run.c on the original.

    .venv/bin/python tests/oracle/stories260k_parity.py --llama2c GIT_DIR_OR_RUN_C [options]

--llama2c is a git directory of karpathy/llama2.c (run.c is taken with `git show COMMIT:run.c`)
or a path to run.c. Needs gcc, and torch + transformers + tokenizers; nothing from llama2.c is
written into the repository.

What it does, all on CPU, single thread:
 1. builds run.c (gcc -O2 -lm) and a small harness that #includes run.c (TESTING defined) and
    calls its own encode/forward/sample_argmax, in a temporary directory;
 2. for each prompt runs `run CKPT -z TOK -t 0 -n STEPS -i PROMPT` and the harness on the same
    arguments; the harness prints the token ids run.c generates, and the script checks that the
    harness's decoded text equals run's stdout byte for byte;
 3. loads the converted directory with transformers (AutoTokenizer, AutoModelForCausalLM), checks
    the tokenizer's encoding of each prompt equals llama2.c's encode, greedy-generates with
    model.generate (do_sample=False, same total length: run.c's -n counts positions including
    BOS and the prompt, so max_new_tokens = STEPS - len(prompt_ids) + 1; stopping on id 1 as run.c
    does) and checks the ids are identical; compares the logits at every position with run.c's;
 4. compares AutoTokenizer and llama2.c encode on a text corpus (edge cases, the shared fixture
    data sets, the generated stories);
 5. writes OUT/llama2c.jsonl (run.c), OUT/greedy.jsonl (transformers), OUT/encode.jsonl
    (llama2.c encode of the edge cases, for tokenizer tests) and OUT/README.md (versions,
    commit, results). Exits non-zero on any mismatch.

Schema of llama2c.jsonl / greedy.jsonl, one object per prompt:
  {"prompt", "steps", "prompt_ids" (with BOS 1), "ids" (the greedy continuation after the prompt,
   without a final BOS), "stop" ("length" or "bos"), "text" (run.c's stdout without its final
   newline / transformers' decode of prompt_ids + ids with skip_special_tokens)}
"""
import argparse
import gzip
import hashlib
import json
import os
import platform
import re
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "fixtures")

PROMPTS = ["Once upon a time", "Lily and Tom", "The little dog", "One day, a", "Tim was sad because", ""]
# plus one long run that ends the way run.c ends a story: on a generated BOS (id 1)
LONG = ("Zoo", 512)
SPECIALS = ("<s>", "</s>", "<unk>")

EDGE = [
    "", " ", "  ", "a", "Hello", " Hello", "  Hello", "Hello ", "Hello  world", "Hello\nworld",
    "\n", "\n\n", "\t tab", "Once upon a time, there was a little girl named Lily.",
    "The quick brown fox jumps over the lazy dog.", "I'm sure you'll see they've done it; we'd rather not.",
    "DON'T SHOUT!!!", "1234567890 3.14159 -42", "https://example.com/a?b=c&d=e#f",
    "café naïve résumé", "“smart quotes” — dashes – and … ellipsis", "日本語のテキスト",
    "Привет, мир", "emoji 🙂👍🏽 end", "mixed 中文 and English", "<s> literal specials </s> <unk>",
    "<0x41> byte-like text", "tab\tseparated\tvalues", "trailing newline\n", "   leading spaces",
    "a  b   c    d", "the the the the", "herheherher", "ververververver", " the", "the",
    "Tom said, \"Let's go to the park!\"", "She was happy. He was sad. They played.",
    "\u00a0non-breaking\u00a0space", "zero\u200bwidth", "\u200a hair space", "™ € â ñ é",
    "~[]|<>%\\&*+`$/", "x" * 50, "ab" * 40,
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


HARNESS = r"""
#define TESTING
#include "run.c"
/* harness encode CKPT TOK < NUL-terminated strings      -> one line of ids per string
   harness greedy CKPT TOK STEPS PROMPT LOGITS            -> "P id..." / "G id..." / "S stop"
   greedy mirrors generate() in run.c with temperature 0 (sample_argmax), and writes the logits
   of every forwarded position (float32 [pos][vocab]) to LOGITS. */
int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage\n"); return 2; }
    Transformer tr; build_transformer(&tr, argv[2]);
    Tokenizer tok; build_tokenizer(&tok, argv[3], tr.config.vocab_size);
    int V = tr.config.vocab_size;
    if (!strcmp(argv[1], "encode")) {
        size_t cap = 1 << 20, n = 0; char *buf = malloc(cap); int c;
        while ((c = getchar()) != EOF) {
            if (n + 1 >= cap) { cap *= 2; buf = realloc(buf, cap); }
            buf[n++] = (char)c;
            if (c == 0) {
                int *ids = malloc((strlen(buf) + 3) * sizeof(int)), k = 0;
                encode(&tok, buf, 1, 0, ids, &k);
                for (int i = 0; i < k; i++) printf(i ? " %d" : "%d", ids[i]);
                printf("\n"); free(ids); n = 0;
            }
        }
        return 0;
    }
    if (strcmp(argv[1], "greedy") || argc != 7) { fprintf(stderr, "usage\n"); return 2; }
    int steps = atoi(argv[4]); char *prompt = argv[5];
    if (steps <= 0 || steps > tr.config.seq_len) steps = tr.config.seq_len;
    FILE *lf = fopen(argv[6], "wb");
    int np = 0, *pt = malloc((strlen(prompt) + 3) * sizeof(int));
    encode(&tok, prompt, 1, 0, pt, &np);
    printf("P"); for (int i = 0; i < np; i++) printf(" %d", pt[i]); printf("\nG");
    int token = pt[0], pos = 0, next; const char *stop = "length";
    while (pos < steps) {
        float *logits = forward(&tr, token, pos);
        fwrite(logits, sizeof(float), V, lf);
        next = pos < np - 1 ? pt[pos + 1] : sample_argmax(logits, V);
        pos++;
        if (next == 1) { stop = "bos"; break; }
        if (pos >= np) printf(" %d", next);
        token = next;
    }
    printf("\nS %s\n", stop); fclose(lf);
    return 0;
}
"""


def build_llama2c(src, commit, work):
    if os.path.isdir(src):
        run_c = subprocess.run(["git", "--git-dir", src, "show", f"{commit}:run.c"], check=True,
                               capture_output=True).stdout
        commit_id = subprocess.run(["git", "--git-dir", src, "rev-parse", f"{commit}^{{commit}}"], check=True,
                                   capture_output=True, text=True).stdout.strip()
    else:
        run_c, commit_id = open(src, "rb").read(), "(run.c given by path: " + src + ")"
    with open(os.path.join(work, "run.c"), "wb") as f:
        f.write(run_c)
    with open(os.path.join(work, "harness.c"), "w") as f:
        f.write(HARNESS)
    gcc = ["gcc", "-O2"]
    subprocess.run(gcc + ["-o", os.path.join(work, "run"), os.path.join(work, "run.c"), "-lm"], check=True)
    subprocess.run(gcc + ["-I", work, "-o", os.path.join(work, "harness"), os.path.join(work, "harness.c"), "-lm"],
                   check=True)
    cc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    return commit_id, hashlib.sha256(run_c).hexdigest(), cc


def llama2c_encode(work, ckpt, tok, texts):
    data = b"".join(t.encode("utf-8") + b"\0" for t in texts)
    out = subprocess.run([os.path.join(work, "harness"), "encode", ckpt, tok], input=data, check=True,
                         capture_output=True).stdout.decode().splitlines()
    assert len(out) == len(texts)
    return [[int(x) for x in line.split()] for line in out]


def read_pieces(path):
    raw, off, out = open(path, "rb").read(), 4, []
    while off < len(raw):
        n = struct.unpack_from("<i", raw, off + 4)[0]
        out.append(raw[off + 8:off + 8 + n])
        off += 8 + n
    return out


def llama2c_print(pieces, seq):
    """What run.c's generate() prints for the token sequence seq: decode() (drop the space after
    BOS, "<0xXX>" pieces are raw bytes) then safe_printf() (skip a lone non-printable byte)."""
    out = bytearray()
    for prev, tok in zip(seq, seq[1:]):
        piece = pieces[tok]
        if prev == 1 and piece[:1] == b" ":
            piece = piece[1:]
        m = re.match(rb"<0x([0-9A-Fa-f]{1,2})", piece)
        if m:
            piece = bytes([int(m.group(1), 16)])
        if not piece or (len(piece) == 1 and not (0x20 <= piece[0] <= 0x7E or 0x09 <= piece[0] <= 0x0D)):
            continue
        out += piece
    return bytes(out)


def llama2c_greedy(work, ckpt, tok, steps, prompt):
    import numpy as np
    lf = os.path.join(work, "logits.bin")
    out = subprocess.run([os.path.join(work, "harness"), "greedy", ckpt, tok, str(steps), prompt, lf],
                         check=True, capture_output=True, text=True).stdout.splitlines()
    pids = [int(x) for x in out[0].split()[1:]]
    ids = [int(x) for x in out[1].split()[1:]]
    stop = out[2].split()[1]
    run = subprocess.run([os.path.join(work, "run"), ckpt, "-z", tok, "-t", "0", "-n", str(steps), "-i", prompt],
                         check=True, capture_output=True).stdout
    logits = np.fromfile(lf, dtype=np.float32)
    return pids, ids, stop, run, logits


def corpus():
    texts = list(EDGE)
    for name in ("sp-bpe-32k", "llama3-128k", "qwen3-151k"):
        p = os.path.join(SHARED, "tokenizers", name, "golden.jsonl")
        if os.path.exists(p):
            texts += [json.loads(l)["text"] for l in open(p, encoding="utf-8")]
    d = os.path.join(SHARED, "data", "llamafactory")
    for name in ("alpaca_en_demo.json", "alpaca_zh_demo.json"):
        p = os.path.join(d, name)
        if os.path.exists(p):
            recs = json.load(open(p, encoding="utf-8"))
            n = 400 if "en" in name else 60
            for r in recs[:n]:
                texts += [r[k] for k in ("instruction", "input", "output") if r.get(k)]
    p = os.path.join(d, "wiki_demo.txt")
    if os.path.exists(p):
        texts += [l.rstrip("\n")[:2000] for l in open(p, encoding="utf-8")][:200]
    p = os.path.join(d, "c4_demo.jsonl")
    if os.path.exists(p):
        texts += [json.loads(l)["text"][:2000] for l in list(open(p, encoding="utf-8"))[:200]]
    p = os.path.join(SHARED, "data", "hh-rlhf", "harmless-base-test.jsonl.gz")
    if os.path.exists(p):
        with gzip.open(p, "rt", encoding="utf-8") as f:
            for i, l in enumerate(f):
                if i >= 200:
                    break
                texts.append(json.loads(l)["chosen"][:2000])
    return texts


def main():
    ap = argparse.ArgumentParser(description="stories260K conversion parity: transformers vs llama2.c run.c")
    ap.add_argument("--llama2c", required=True, help="karpathy/llama2.c git directory, or a path to run.c")
    ap.add_argument("--commit", default="HEAD", help="commit of run.c in --llama2c (default HEAD)")
    ap.add_argument("--src", default=os.path.join(SHARED, "models", "stories260K"),
                    help="directory with stories260K.bin and tok512.bin")
    ap.add_argument("--checkpoint", default="stories260K.bin", help="checkpoint file name in --src")
    ap.add_argument("--tokenizer", default="tok512.bin", help="tokenizer file name in --src")
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "stories260K"), help="converted HF directory")
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "stories260k"))
    ap.add_argument("--steps", type=int, default=80, help="run.c -n (positions, BOS and prompt included)")
    a = ap.parse_args()

    import numpy as np
    import tokenizers
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    ckpt, tokbin = os.path.join(a.src, a.checkpoint), os.path.join(a.src, a.tokenizer)
    failures = []
    with tempfile.TemporaryDirectory() as work:
        commit, run_c_sha, cc = build_llama2c(a.llama2c, a.commit, work)
        tok = AutoTokenizer.from_pretrained(a.model)
        pieces = read_pieces(tokbin)
        model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()

        l2c_rows, hf_rows, n_gen, n_pos, max_diff, min_margin = [], [], 0, 0, 0.0, float("inf")
        seq_len = model.config.max_position_embeddings
        for prompt, steps in [(p, a.steps) for p in PROMPTS] + [LONG]:
            if steps <= 0 or steps > seq_len:
                steps = seq_len  # run.c's clamp
            pids, ids, stop, run_out, logits = llama2c_greedy(work, ckpt, tokbin, steps, prompt)
            # the harness must generate exactly what run prints
            # the harness must generate exactly what run prints
            want = llama2c_print(pieces, pids + ids) + b"\n"
            if run_out != want:
                failures.append(f"{prompt!r}: run.c stdout {run_out!r} != run.c's decode of the harness ids {want!r}")
            run_text = run_out[:-1].decode("utf-8", "replace")
            l2c_rows.append({"prompt": prompt, "steps": steps, "prompt_ids": pids, "ids": ids, "stop": stop,
                             "text": run_text})

            enc = tok(prompt)["input_ids"]
            if enc != pids:
                failures.append(f"{prompt!r}: AutoTokenizer {enc} != llama2.c encode {pids}")
            x = torch.tensor([pids])
            with torch.no_grad():
                g = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, num_beams=1,
                                   max_new_tokens=steps - len(pids) + 1, eos_token_id=1, pad_token_id=0)
            hf_ids = g[0, len(pids):].tolist()
            hf_stop = "length"
            if hf_ids and hf_ids[-1] == 1:
                hf_ids, hf_stop = hf_ids[:-1], "bos"
            if hf_ids != ids or hf_stop != stop:
                failures.append(f"{prompt!r}: transformers ids {hf_ids} ({hf_stop}) != run.c {ids} ({stop})")
            hf_rows.append({"prompt": prompt, "steps": steps, "prompt_ids": enc, "ids": hf_ids, "stop": hf_stop,
                            "text": tok.decode(enc + hf_ids, skip_special_tokens=True)})
            # logits at every position run.c forwarded
            fed = (pids + ids)[: len(logits) // model.config.vocab_size]
            with torch.no_grad():
                hl = model(torch.tensor([fed])).logits[0].numpy()
            cl = logits.reshape(-1, hl.shape[1])[: len(fed)]
            diff = float(np.abs(hl - cl).max())
            if diff > 1e-4:
                failures.append(f"{prompt!r}: logits differ from run.c's by {diff:.3g} (> 1e-4)")
            max_diff = max(max_diff, diff)
            top2 = np.sort(cl[len(pids) - 1:], axis=1)[:, -2:]
            if len(top2):
                min_margin = min(min_margin, float((top2[:, 1] - top2[:, 0]).min()))
            n_gen += len(ids)
            n_pos += len(fed)
            print(f"{prompt!r} -n {steps}: prompt {len(pids)} ids, {len(ids)} generated, stop {stop}, "
                  f"{'equal' if hf_ids == ids and enc == pids else 'DIFFERENT'}", file=sys.stderr)

        texts = corpus() + [r["text"] for r in l2c_rows]
        l2c_enc = llama2c_encode(work, ckpt, tokbin, texts)
        # llama2.c never treats "<s>" in text as a special token; HF does unless told
        # split_special_tokens=True. Compare both ways; only strings holding a literal special may
        # differ in the default way.
        hf_enc = tok(texts, split_special_tokens=True)["input_ids"]
        hf_def = tok(texts)["input_ids"]
        enc_bad = [(t, h, l) for t, h, l in zip(texts, hf_enc, l2c_enc) if h != l]
        def_bad = [(t, h, l) for t, h, l in zip(texts, hf_def, l2c_enc) if h != l]
        n_special = sum(1 for t in texts if any(s in t for s in SPECIALS))
        for t, h, l in enc_bad[:10]:
            failures.append(f"encode {t[:80]!r}: AutoTokenizer(split_special_tokens=True) {h[:40]} != llama2.c {l[:40]}")
        for t, h, l in [r for r in def_bad if not any(s in r[0] for s in SPECIALS)][:10]:
            failures.append(f"encode {t[:80]!r}: AutoTokenizer {h[:40]} != llama2.c {l[:40]}")
        n_tok = sum(len(l) for l in l2c_enc)
        edge_rows = [{"text": t, "ids": l} for t, l in zip(EDGE, l2c_enc[: len(EDGE)])]

    os.makedirs(a.out, exist_ok=True)

    def dump(name, rows):
        with open(os.path.join(a.out, name), "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")

    dump("llama2c.jsonl", l2c_rows)
    dump("greedy.jsonl", hf_rows)
    dump("encode.jsonl", edge_rows)
    rel = lambda p: os.path.relpath(p, ROOT)
    readme = f"""# stories260K parity fixtures

Written by `tests/oracle/stories260k_parity.py` (do not edit by hand; rerun it, see docs/models.md).

- llama2.c: karpathy/llama2.c `run.c` at commit `{commit}` (run.c sha256 `{run_c_sha}`), built with
  `gcc -O2 -lm` ({cc}), run as `run {a.checkpoint} -z {a.tokenizer} -t 0 -n STEPS -i PROMPT`.
- originals: `{a.checkpoint}` sha256 `{sha256(ckpt)}`, `{a.tokenizer}` sha256 `{sha256(tokbin)}`.
- converted model: `{rel(a.model)}` (`model.safetensors` sha256 `{sha256(os.path.join(a.model, "model.safetensors"))}`,
  `tokenizer.json` sha256 `{sha256(os.path.join(a.model, "tokenizer.json"))}`).
- transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, torch {torch.__version__},
  numpy {np.__version__}, Python {platform.python_version()}; CPU, float32, 1 thread.

## Files

- `llama2c.jsonl`: run.c on the originals, one line per prompt: `prompt`, `steps` (run.c `-n`),
  `prompt_ids` (llama2.c encode, BOS included), `ids` (the greedy continuation, as run.c
  generates it, taken from a harness that includes run.c and calls its encode/forward/
  sample_argmax; run.c's own decode of these ids was checked equal to run's stdout, byte for byte), `stop` (`length`, or
  `bos` when run.c stopped on id 1), `text` (run's stdout without the final newline).
- `greedy.jsonl`: transformers on the converted directory, same schema: `prompt_ids` from
  AutoTokenizer, `ids` from `model.generate(do_sample=False, max_new_tokens=steps -
  len(prompt_ids) + 1, eos_token_id=1)`, `text` = `tokenizer.decode(prompt_ids + ids,
  skip_special_tokens=True)`.
- `encode.jsonl`: llama2.c encode (BOS included) of {len(EDGE)} edge-case strings, for tokenizer tests.

## Result of the last run

- prompts: {len(l2c_rows)}: {", ".join(json.dumps(r["prompt"]) + " -n " + str(r["steps"]) + " (" + r["stop"] + ")" for r in l2c_rows)}.
- generated tokens compared: {n_gen} ({sum(1 for h, l in zip(hf_rows, l2c_rows) if h["ids"] == l["ids"])} of {len(l2c_rows)} prompts identical);
  prompt encodings identical: {sum(1 for h, l in zip(hf_rows, l2c_rows) if h["prompt_ids"] == l["prompt_ids"])} of {len(l2c_rows)}.
- logits at {n_pos} positions: max |transformers - run.c| = {max_diff:.3g}; smallest top-1/top-2
  margin of run.c's logits at a greedy step = {min_margin:.3g}.
- encode: {len(texts)} strings ({n_tok} tokens) from the edge cases, the shared fixture data
  (tokenizer goldens, LLaMA-Factory alpaca en/zh, wiki, c4 demo, hh-rlhf) and the generated stories;
  AutoTokenizer(split_special_tokens=True) == llama2.c encode for {len(texts) - len(enc_bad)} of {len(texts)};
  with the default (special tokens recognised in text) for {len(texts) - len(def_bad)} of {len(texts)}
  ({n_special} strings hold a literal `<s>`, `</s>` or `<unk>`, which HF turns into the special token and
  llama2.c spells out; that is the only difference allowed).
- decoded text: transformers' decode equals run.c's stdout for {sum(1 for h, l in zip(hf_rows, l2c_rows) if h["text"] == l["text"])} of {len(l2c_rows)} prompts.
- failures: {len(failures)}.
"""
    with open(os.path.join(a.out, "README.md"), "w", encoding="utf-8") as f:
        f.write(readme)
    print(readme, file=sys.stderr)
    for msg in failures:
        print("FAIL " + msg, file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
