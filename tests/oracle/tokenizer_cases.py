#!/usr/bin/env python3
"""Oracle cases for ftk's tokenizer, made by HuggingFace `tokenizers` (the final authority).

For each fixture tokenizer in tests/fixtures/tokenizers/NAME/ this writes oracle.jsonl.zst, one
JSON object per line with the fields of golden.jsonl:
  {"text": ..., "ids": encode(text, add_special_tokens=False).ids,
   "ids_with_special": encode(text).ids,
   "decoded": decode(ids, skip_special_tokens=False), then transformers' clean_up_tokenization
              when tokenizer_config.json sets clean_up_tokenization_spaces}
Cases: multilingual prose (English, Chinese, Japanese, Korean, Arabic, Hebrew, Hindi, Thai,
Russian, Greek, ...), emoji and ZWJ sequences, code, whitespace runs, digits, special tokens inside
text (and near misses), paragraphs of LLaMA-Factory's demo data, and seeded random Unicode strings.

Made with: tokenizers 0.23.3, transformers 5.23.0 (for the decode cross-check), Python 3, seed
20261123. Re-run (needs ../shared/fixtures for the demo data and the .venv):
    .venv/bin/python tests/oracle/tokenizer_cases.py
"""
import io
import json
import os
import random
import subprocess
import sys

from tokenizers import Tokenizer

SEED = 20261123
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "tests", "fixtures", "tokenizers")
DATA = os.path.join(ROOT, "..", "shared", "fixtures", "data", "llamafactory")
NAMES = ["sp-bpe-32k", "llama3-128k", "qwen3-151k"]
SPECIALS = {
    "sp-bpe-32k": ["<s>", "</s>", "<unk>"],
    "llama3-128k": ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
                    "<|end_header_id|>", "<|reserved_special_token_5|>"],
    "qwen3-151k": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>",
                   "<tool_call>", "<|vision_pad|>"],
}

FIXED = [
    "Hello, world!", "The quick brown fox jumps over the lazy dog.", "  leading spaces",
    "trailing spaces   ", "tabs\tand\nnewlines\r\nand\r\rcarriage returns", "\n\n\n", "   ", " ",
    "a", "I'm sure they'll've done it, won't they? She's here; we're not. I'd go. You'll see.",
    "I'M SURE THEY'LL HAVE DONE IT; SHE'S HERE", "don't DON'T Don'T", "Hello . , ! ? ' s",
    "我爱北京天安门，天安门上太阳升。", "人工智能（AI）正在改变世界：机器学习、深度学习和自然语言处理。",
    "日本語のテキストをトークン化します。ひらがな、カタカナ、漢字。", "ｶﾀｶﾅ ＡＢＣ １２３ ﬁ ﬀ ㌔ ①②③",
    "한국어 문장도 토큰화합니다. 안녕하세요!", "مرحبا بالعالم! هذا نص عربي مع أرقام ١٢٣٤٥.",
    "שלום עולם, זה טקסט בעברית.", "नमस्ते दुनिया। यह हिंदी में एक वाक्य है।", "สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่าง",
    "Привет, мир! Съешь же ещё этих мягких французских булок.", "Γειά σου Κόσμε! ΣΊΣΥΦΟΣ σίσυφος",
    "Ünïcödé çåsès: naïve café, résumé, Zürich, İstanbul, straße, ǅemal",
    "e\u0301 vs \u00e9, A\u030a vs \u00c5, \u1e9b\u0323", "Tiếng Việt có dấu: Xin chào thế giới",
    "😀😃😄 emoji 🎉🎊", "👨‍👩‍👧‍👦 family, 👩🏽‍💻 coder, 🏳️‍🌈 flag, ❤️‍🔥", "🇺🇸🇯🇵🇨🇳 flags",
    "1234567890 12 345 6789 3.14159 -42 1,000,000 2026-11-23 10:25:00", "٠١٢٣٤٥٦٧٨٩ ０１２３ ½ ² ³ Ⅻ",
    "def f(x):\n    return x ** 2  # square\n\nprint(f(3))\n",
    "int main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
    "for (let i = 0; i < n; ++i) { sum += a[i] * b[i]; } // dot",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;",
    "<html><body><p class=\"x\">Hi &amp; bye</p></body></html>", "{\"key\": [1, 2, {\"n\": null}]}",
    "$ ls -la | grep '^d' > out.txt && echo done", "https://example.com/path?q=1&r=two#frag",
    "user@example.com, @handle, #hashtag", "a\u00a0b\u2009c\u3000d\u2028e\u2029f\u0085g\u200bh",
    "zero\u200dwidth\u200cjoiners\ufeffbom", "    indented\n        more\n\t\ttabs\n",
    "word\n\n\nword  \n  word", "x" * 300, " " * 100 + "end", "ab" * 150, "😀" * 40,
    "The year 2024 had 366 days; 1e10 is 10000000000.", "C++ C# F# .NET node.js", "--- *** ___ ===",
    "¿Qué? ¡Sí! «Bonjour» „Hallo“ “quotes” ‘single’ — en–dash … ellipsis",
    "mixed 中文 English 日本語 한국어 العربية mixed", "ﬁnancial oﬃce", "ℌ𝔢𝔩𝔩𝔬 𝕎𝕠𝕣𝕝𝕕 𝟙𝟚𝟛",
    "𠀀𠀁𪚥 rare CJK ext B", "Ꭰ Ꭱ Ꭲ Cherokee, ᚠᚢᚦ runes, 𓀀 hieroglyph",
]


def special_cases(name):
    sp = SPECIALS[name]
    out = []
    for s in sp:
        out += [s, f"Hello{s}world", f"Hello {s} world", f" {s} ", f"{s}{s}", f"x{s}\n{s}y",
                s[:-1], s[1:], s.lower(), s.upper()]
    out.append("".join(sp))
    out.append(f"{sp[0]}system\nYou are helpful.{sp[-1]}\n{sp[0]}user\n你好{sp[-1]}\n")
    return out


def data_cases(rng):
    out = []
    for fn in ["alpaca_en_demo.json", "alpaca_zh_demo.json", "glaive_toolcall_en_demo.json"]:
        recs = json.load(open(os.path.join(DATA, fn), encoding="utf-8"))
        for r in rng.sample(recs, 10):
            txt = r.get("output") or json.dumps(r, ensure_ascii=False)
            out.append(txt[:2000])
    wiki = open(os.path.join(DATA, "wiki_demo.txt"), encoding="utf-8").read().splitlines()
    out += [w[:2000] for w in rng.sample([w for w in wiki if w.strip()], 10)]
    return out


# code point ranges for random strings: (lo, hi, weight)
RANGES = [
    (0x20, 0x7E, 30), (0x09, 0x0D, 4), (0xA0, 0x24F, 8), (0x300, 0x36F, 3), (0x370, 0x52F, 4),
    (0x590, 0x6FF, 4), (0x900, 0x97F, 3), (0xE00, 0xE7F, 2), (0x1100, 0x11FF, 1), (0x1E00, 0x1FFF, 2),
    (0x2000, 0x206F, 4), (0x2070, 0x2BFF, 3), (0x3000, 0x30FF, 5), (0x3400, 0x4DBF, 1),
    (0x4E00, 0x9FFF, 10), (0xAC00, 0xD7A3, 3), (0xF900, 0xFAFF, 1), (0xFB00, 0xFDFF, 1),
    (0xFE00, 0xFE0F, 1), (0xFF00, 0xFFEF, 3), (0x1F300, 0x1FAFF, 6), (0x1D400, 0x1D7FF, 1),
    (0x20000, 0x2A6DF, 1), (0x1, 0x1F, 1), (0x80, 0x9F, 1), (0xE000, 0xE0FF, 1), (0xE0000, 0xE007F, 1),
]


def random_text(rng):
    total = sum(w for _, _, w in RANGES)
    n = rng.randint(1, 60)
    chars = []
    for _ in range(n):
        r = rng.uniform(0, total)
        for lo, hi, w in RANGES:
            r -= w
            if r <= 0:
                break
        c = rng.randint(lo, hi)
        if 0xD800 <= c <= 0xDFFF or c == 0:
            c = 0x20
        chars.append(chr(c))
        if rng.random() < 0.15:
            chars.append(" " * rng.randint(1, 4))
        if rng.random() < 0.05:
            chars.append("\u200d")
    return "".join(chars)


def word_salad(rng, pool):
    """Shuffled fragments of the fixed cases: mixes scripts, digits and punctuation at joins."""
    parts = [rng.choice(pool)[: rng.randint(1, 30)] for _ in range(rng.randint(2, 6))]
    seps = ["", " ", "  ", "\n", "\t", "'s ", "123", "。", " \n "]
    return "".join(p + rng.choice(seps) for p in parts)


def clean_up_tokenization(s):
    # transformers PreTrainedTokenizerBase.clean_up_tokenization
    return (s.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",")
            .replace(" ' ", "'").replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s")
            .replace(" 've", "'ve").replace(" 're", "'re"))


# Variants: a fixture tokenizer.json with parts replaced, to check components the three
# tokenizers do not use (Metaspace, NFKC/NFKD, Lowercase, Strip, Whitespace, Digits,
# Punctuation, Split behaviours, GPT-2 ByteLevel regex, Roberta/Template post-processors,
# lstrip/rstrip/single_word/normalized added tokens). Stored as variants/NAME.jsonl.zst: the
# first line {"base": ..., "set": {key: value}, "added": [{content, flags...}]}, then cases.
MS = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}
VARIANTS = {
    "sp-metaspace-first": ("sp-bpe-32k", {
        "normalizer": None, "pre_tokenizer": MS,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "ByteFallback"}, {"type": "Fuse"}, dict(MS)]}}, []),
    "sp-metaspace-always-split-nfkd": ("sp-bpe-32k", {
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKD"}, {"type": "Strip", "strip_left": True, "strip_right": False}]},
        "pre_tokenizer": dict(MS, prepend_scheme="always", split=True),
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "ByteFallback"}, {"type": "Fuse"}, dict(MS, prepend_scheme="always", split=True)]},
        "post_processor": {"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 1],
                           "trim_offsets": True, "add_prefix_space": False}},
        [{"content": "</s>", "lstrip": True, "rstrip": True}]),
    "llama3-nfkc-lower-digits-punct": ("llama3-128k", {
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"},
                                                           {"type": "Replace", "pattern": {"Regex": "\\s{2,}"}, "content": " "}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "Punctuation", "behavior": "MergedWithNext"},
            {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": False}]}},
        [{"content": "<|eot_id|>", "single_word": True}]),
    "llama3-whitespace-contiguous": ("llama3-128k", {
        "normalizer": {"type": "NFD"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Whitespace"},
            {"type": "Split", "pattern": {"Regex": "[aeiou]+"}, "behavior": "Contiguous", "invert": True},
            {"type": "Digits", "individual_digits": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}},
                                      {"SpecialToken": {"id": "<|eot_id|>", "type_id": 0}}],
                           "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000], "tokens": ["<|begin_of_text|>"]},
                                              "<|eot_id|>": {"id": "<|eot_id|>", "ids": [128009], "tokens": ["<|eot_id|>"]}}}},
        []),
    "qwen3-gpt2-bytelevel": ("qwen3-151k", {
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Strip", "strip_left": False, "strip_right": True}]},
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "decoder": {"type": "Sequence", "decoders": [{"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
                                                     {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}},
        [{"content": "<think>", "lstrip": True, "rstrip": False, "special": False, "normalized": True},
         {"content": "</think>", "rstrip": True}]),
    "qwen3-split-removed-invert": ("qwen3-151k", {
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "\\p{Han}+|\\d"}, "behavior": "Removed", "invert": True},
            {"type": "Split", "pattern": {"Regex": "(?=\\p{Lu})"}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}},
        []),
}


def patched(base_json, spec):
    _, sets, added = spec
    j = json.loads(base_json)
    for k, v in sets.items():
        j[k] = v
    for a in added:
        for t in j["added_tokens"]:
            if t["content"] == a["content"]:
                t.update(a)
    return j


def main():
    rng = random.Random(SEED)
    for name in NAMES:
        d = os.path.join(FIX, name)
        raw = subprocess.run(["zstd", "-dc", os.path.join(d, "tokenizer.json.zst")], check=True,
                             capture_output=True).stdout
        tok = Tokenizer.from_str(raw.decode("utf-8"))
        cfg = json.load(open(os.path.join(d, "tokenizer_config.json"), encoding="utf-8"))
        clean = bool(cfg.get("clean_up_tokenization_spaces", False))
        texts = FIXED + special_cases(name) + data_cases(rng)
        texts += [random_text(rng) for _ in range(150)]
        texts += [word_salad(rng, FIXED) for _ in range(60)]
        buf = io.StringIO()
        for t in texts:
            ids = tok.encode(t, add_special_tokens=False).ids
            ids2 = tok.encode(t, add_special_tokens=True).ids
            dec = tok.decode(ids, skip_special_tokens=False)
            if clean:
                dec = clean_up_tokenization(dec)
            buf.write(json.dumps({"text": t, "ids": ids, "ids_with_special": ids2, "decoded": dec},
                                 ensure_ascii=False) + "\n")
        out = os.path.join(d, "oracle.jsonl.zst")
        subprocess.run(["zstd", "-q", "-19", "-f", "-o", out], input=buf.getvalue().encode("utf-8"),
                       check=True)
        print(f"{name}: {len(texts)} cases -> {out}", file=sys.stderr)
    vdir = os.path.join(FIX, "variants")
    os.makedirs(vdir, exist_ok=True)
    for vname, spec in VARIANTS.items():
        base = spec[0]
        raw = subprocess.run(["zstd", "-dc", os.path.join(FIX, base, "tokenizer.json.zst")], check=True,
                             capture_output=True).stdout
        tok = Tokenizer.from_str(json.dumps(patched(raw.decode("utf-8"), spec)))
        texts = FIXED + special_cases(base) + [random_text(rng) for _ in range(80)]
        texts += [word_salad(rng, FIXED) for _ in range(30)]
        buf = io.StringIO()
        buf.write(json.dumps({"base": base, "set": spec[1], "added": spec[2]}, ensure_ascii=False) + "\n")
        for t in texts:
            ids = tok.encode(t, add_special_tokens=False).ids
            ids2 = tok.encode(t, add_special_tokens=True).ids
            dec = tok.decode(ids, skip_special_tokens=False)
            buf.write(json.dumps({"text": t, "ids": ids, "ids_with_special": ids2, "decoded": dec},
                                 ensure_ascii=False) + "\n")
        out = os.path.join(vdir, vname + ".jsonl.zst")
        subprocess.run(["zstd", "-q", "-19", "-f", "-o", out], input=buf.getvalue().encode("utf-8"),
                       check=True)
        print(f"variant {vname}: {len(texts)} cases -> {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
