#!/usr/bin/env python3
"""Convert a llama2.c checkpoint (legacy version-0 .bin) and its tokenizer (.bin) into a
HuggingFace Llama model directory.

    python3 pipelines/convert_llama2c.py CHECKPOINT.bin TOKENIZER.bin OUT_DIR [--license FILE]

Needs Python 3 and numpy only. Writes OUT_DIR/{config.json, generation_config.json,
model.safetensors, tokenizer.json, tokenizer_config.json} (and LICENSE with --license).

Input formats (karpathy/llama2.c, run.c and export.py "legacy_export"):
  checkpoint: 7 x int32 LE header  dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
              (vocab_size < 0 means the classifier is not shared with the embedding), then float32:
              token_embedding[vocab,dim], rms_att[L,dim], wq[L,dim,dim], wk[L,kv_dim,dim],
              wv[L,kv_dim,dim], wo[L,dim,dim], rms_ffn[L,dim], w1[L,hidden,dim], w2[L,dim,hidden],
              w3[L,hidden,dim], rms_final[dim], freq_cis_real[seq_len,head_size/2],
              freq_cis_imag[seq_len,head_size/2], (wcls[vocab,dim] when not shared).
              Each matrix is stored [out, in], the layout of a torch Linear weight.
  tokenizer:  int32 max_token_length, then per token: float32 score, int32 len, len bytes.

Decisions (docs/models.md has the reasoning):
  * RoPE: run.c rotates interleaved pairs (q[2j], q[2j+1]) of each head; HF Llama rotates
    (q[j], q[j+hs/2]) (rotate_half). Both use frequency theta^(-2j/hs), so the HF rows of one head
    are the llama2.c rows reordered [0,2,4,...,hs-2, 1,3,5,...,hs-1] -- the permutation of HF's
    convert_llama_weights_to_hf.py, applied per head to wq (n_heads) and wk (n_kv_heads).
    The script checks this numerically (attention scores equal under both conventions) and checks
    the stored freq_cis tables against theta = 10000.
  * Tokenizer: SentencePiece-style BPE (byte_fallback, fuse_unk), spaces written as U+2581.
    llama2.c merges, at each step, the adjacent pair whose concatenation is in the vocabulary with
    the highest score (leftmost on ties). The merges list is every pair (a, b) of pieces with a+b a
    piece, ordered by the score of a+b (highest first), then by the ids of a and b -- the order
    HF's SentencePieceExtractor uses.
"""
import argparse
import json
import os
import shutil
import struct
import sys

import numpy as np

SPACE = "\u2581"  # SentencePiece's visible space


def die(msg):
    sys.exit(f"convert_llama2c: error: {msg}")


# ---------------------------------------------------------------- checkpoint

HEADER = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")


def read_checkpoint(path):
    raw = open(path, "rb").read()
    if len(raw) < 28:
        die(f"{path}: too short for a llama2.c header")
    magic, version = struct.unpack_from("<Ii", raw, 0)
    if magic == 0x616B3432:  # "ak42": llama2.c export.py version 1 or 2
        die(f"{path}: llama2.c format version {version}; only the legacy version 0 is read "
            "(llama2.c: python export.py OUT.bin --version 0 --checkpoint ckpt.pt)")
    p = dict(zip(HEADER, struct.unpack_from("<7i", raw, 0)))
    shared = p["vocab_size"] > 0
    p["vocab_size"] = abs(p["vocab_size"])
    for k in HEADER:
        if p[k] <= 0:
            die(f"{path}: header field {k} = {p[k]} is not positive (is this a legacy v0 checkpoint?)")
    dim, hid, L, nh, nkv, V, S = (p[k] for k in HEADER)
    if dim % nh or nh % nkv or (dim // nh) % 2:
        die(f"{path}: dim {dim}, n_heads {nh}, n_kv_heads {nkv} do not fit together")
    hs = dim // nh
    kv = nkv * hs
    shapes = [
        ("tok_embeddings", (V, dim)),
        ("rms_att", (L, dim)),
        ("wq", (L, dim, dim)),
        ("wk", (L, kv, dim)),
        ("wv", (L, kv, dim)),
        ("wo", (L, dim, dim)),
        ("rms_ffn", (L, dim)),
        ("w1", (L, hid, dim)),
        ("w2", (L, dim, hid)),
        ("w3", (L, hid, dim)),
        ("rms_final", (dim,)),
        ("freq_cis_real", (S, hs // 2)),
        ("freq_cis_imag", (S, hs // 2)),
    ]
    if not shared:
        shapes.append(("wcls", (V, dim)))
    n = sum(int(np.prod(s)) for _, s in shapes)
    if len(raw) != 28 + 4 * n:
        die(f"{path}: {len(raw)} bytes, expected {28 + 4 * n} for this header "
            f"(28 + 4 x {n} floats, legacy v0 layout incl. freq_cis)")
    flat = np.frombuffer(raw, dtype="<f4", offset=28)
    w, off = {}, 0
    for name, shape in shapes:
        k = int(np.prod(shape))
        w[name] = flat[off:off + k].reshape(shape).astype(np.float32)
        off += k
    if not np.all(np.isfinite(flat)):
        die(f"{path}: non-finite weights")
    return p, shared, w


def check_freq_cis(p, w, theta=10000.0):
    """The legacy tables hold cos/sin(pos * theta^(-2j/hs)); check them to pin rope_theta."""
    hs = p["dim"] // p["n_heads"]
    inv = theta ** (-np.arange(0, hs, 2, dtype=np.float64) / hs)
    ang = np.outer(np.arange(p["seq_len"], dtype=np.float64), inv)
    err = max(np.abs(w["freq_cis_real"] - np.cos(ang)).max(), np.abs(w["freq_cis_imag"] - np.sin(ang)).max())
    if err > 1e-4:
        die(f"freq_cis tables differ from rope_theta={theta} by {err:.3g}")
    return err


def hf_permute(wt, n_heads):
    """llama2.c (interleaved) -> HF (rotate_half) row order, per head: [0,2,..,hs-2,1,3,..,hs-1]."""
    out_dim, in_dim = wt.shape
    hs = out_dim // n_heads
    return wt.reshape(n_heads, hs // 2, 2, in_dim).transpose(0, 2, 1, 3).reshape(out_dim, in_dim)


def rope_interleaved(x, pos, hs, theta=10000.0):
    """run.c: rotate (x[2j], x[2j+1]) of each head by pos * theta^(-2j/hs)."""
    x = x.reshape(-1, hs).astype(np.float64)
    f = pos * theta ** (-np.arange(0, hs, 2) / hs)
    c, s = np.cos(f), np.sin(f)
    a, b = x[:, 0::2], x[:, 1::2]
    y = np.empty_like(x)
    y[:, 0::2], y[:, 1::2] = a * c - b * s, a * s + b * c
    return y


def rope_half(x, pos, hs, theta=10000.0):
    """HF modeling_llama: x*cos + rotate_half(x)*sin with cos/sin = cat(freqs, freqs)."""
    x = x.reshape(-1, hs).astype(np.float64)
    f = pos * theta ** (-np.arange(0, hs, 2) / hs)
    c, s = np.cos(np.concatenate([f, f])), np.sin(np.concatenate([f, f]))
    rot = np.concatenate([-x[:, hs // 2:], x[:, : hs // 2]], axis=1)
    return x * c + rot * s


def check_permutation(p, w, seed=0):
    """Attention scores q.k (per query head, GQA-mapped kv head) must be equal under run.c's rope
    on the original weights and HF's rope on the permuted weights, for all layers."""
    rng = np.random.default_rng(seed)
    nh, nkv, dim = p["n_heads"], p["n_kv_heads"], p["dim"]
    hs = dim // nh
    worst = 0.0
    for layer in range(p["n_layers"]):
        wq, wk = w["wq"][layer].astype(np.float64), w["wk"][layer].astype(np.float64)
        wq_hf, wk_hf = hf_permute(wq, nh), hf_permute(wk, nkv)
        for _ in range(4):
            xq, xk = rng.standard_normal(dim), rng.standard_normal(dim)
            pq, pk = int(rng.integers(0, p["seq_len"])), int(rng.integers(0, p["seq_len"]))
            q0, k0 = rope_interleaved(wq @ xq, pq, hs), rope_interleaved(wk @ xk, pk, hs)
            q1, k1 = rope_half(wq_hf @ xq, pq, hs), rope_half(wk_hf @ xk, pk, hs)
            g = nh // nkv
            s0 = np.array([q0[h] @ k0[h // g] for h in range(nh)])
            s1 = np.array([q1[h] @ k1[h // g] for h in range(nh)])
            worst = max(worst, float(np.abs(s0 - s1).max() / (np.abs(s0).max() + 1e-12)))
    if worst > 1e-9:
        die(f"RoPE permutation check failed (relative score difference {worst:.3g})")
    return worst


def hf_state_dict(p, shared, w):
    nh, nkv = p["n_heads"], p["n_kv_heads"]
    sd = {"model.embed_tokens.weight": w["tok_embeddings"], "model.norm.weight": w["rms_final"]}
    for i in range(p["n_layers"]):
        pre = f"model.layers.{i}."
        sd[pre + "input_layernorm.weight"] = w["rms_att"][i]
        sd[pre + "post_attention_layernorm.weight"] = w["rms_ffn"][i]
        sd[pre + "self_attn.q_proj.weight"] = hf_permute(w["wq"][i], nh)
        sd[pre + "self_attn.k_proj.weight"] = hf_permute(w["wk"][i], nkv)
        sd[pre + "self_attn.v_proj.weight"] = w["wv"][i]
        sd[pre + "self_attn.o_proj.weight"] = w["wo"][i]
        sd[pre + "mlp.gate_proj.weight"] = w["w1"][i]
        sd[pre + "mlp.down_proj.weight"] = w["w2"][i]
        sd[pre + "mlp.up_proj.weight"] = w["w3"][i]
    if not shared:
        sd["lm_head.weight"] = w["wcls"]
    return sd


def write_safetensors(path, tensors):
    """F32 safetensors, tensors in name order, header space-padded to 8 bytes."""
    header, off, names = {}, 0, sorted(tensors)
    for n in names:
        t = np.ascontiguousarray(tensors[n], dtype="<f4")
        header[n] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + t.nbytes]}
        off += t.nbytes
    header = {"__metadata__": {"format": "pt"}, **header}
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for n in names:
            f.write(np.ascontiguousarray(tensors[n], dtype="<f4").tobytes())
    os.replace(tmp, path)


# ---------------------------------------------------------------- tokenizer

def read_tokenizer(path, vocab_size):
    raw = open(path, "rb").read()
    (max_len,), off, toks = struct.unpack_from("<i", raw, 0), 4, []
    while off < len(raw):
        if off + 8 > len(raw):
            die(f"{path}: truncated at byte {off}")
        score, n = struct.unpack_from("<fi", raw, off)
        off += 8
        if n < 0 or off + n > len(raw):
            die(f"{path}: bad length {n} for token {len(toks)}")
        toks.append((raw[off:off + n], score))
        off += n
    if len(toks) != vocab_size:
        die(f"{path}: {len(toks)} tokens, checkpoint says vocab_size {vocab_size}")
    if max(len(t) for t, _ in toks) > max_len:
        die(f"{path}: a token is longer than max_token_length {max_len}")
    return max_len, toks


SPECIAL = {0: (b"<unk>", "<unk>"), 1: (b"\n<s>\n", "<s>"), 2: (b"\n</s>\n", "</s>")}


def hf_pieces(toks):
    """llama2.c piece bytes -> HF vocab strings: specials renamed, bytes kept as <0xXX>,
    spaces written as U+2581."""
    out = []
    for i, (b, _) in enumerate(toks):
        if i in SPECIAL:
            if b != SPECIAL[i][0]:
                die(f"token {i} is {b!r}, expected {SPECIAL[i][0]!r}")
            out.append(SPECIAL[i][1])
        elif 3 <= i < 259:
            want = f"<0x{i - 3:02X}>"
            if b.decode("ascii", "replace") != want:
                die(f"token {i} is {b!r}, expected byte piece {want}")
            out.append(want)
        else:
            s = b.decode("utf-8")
            if SPACE in s:
                die(f"token {i} {s!r} already contains U+2581")
            out.append(s.replace(" ", SPACE))
    if len(set(out)) != len(out):
        die("duplicate pieces after renaming")
    return out


def derive_merges(toks, pieces):
    """Every pair of tokens whose byte concatenation is a token, exactly llama2.c's merge rule,
    ordered by (score of the merged token descending, merged id, left id, right id)."""
    ids = {b: i for i, (b, _) in enumerate(toks)}
    found = []
    for k, (c, score) in enumerate(toks):  # every byte split of every piece: O(vocab x length)
        for cut in range(1, len(c)):
            i, j = ids.get(c[:cut]), ids.get(c[cut:])
            if i is not None and j is not None:
                found.append((-score, k, i, j))
    found.sort()
    odd = [f for f in found if min(f[1:]) < 259]
    for _, k, i, j in odd:
        print(f"convert_llama2c: warning: {toks[i][0]!r} + {toks[j][0]!r} -> {toks[k][0]!r} involves a special or "
              "byte token; left out of the merges", file=sys.stderr)
    found = [f for f in found if min(f[1:]) >= 259]
    by_score = {}
    for s, k, _, _ in found:
        by_score.setdefault(s, set()).add(k)
    tied = sum(1 for v in by_score.values() if len(v) > 1)
    if tied:
        print(f"convert_llama2c: warning: {tied} scores are shared by different merged pieces; llama2.c breaks "
              "such ties by position, HF BPE by rank, so some texts may encode differently", file=sys.stderr)
    return [f"{pieces[i]} {pieces[j]}" for _, _, i, j in found], len({k for _, k, _, _ in found})


def added(i, name):
    return {"id": i, "content": name, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True}


def tokenizer_json(pieces, merges):
    spec = lambda name, t: {"SpecialToken": {"id": name, "type_id": t}}
    seq = lambda name, t: {"Sequence": {"id": name, "type_id": t}}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": SPACE},
            {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [spec("<s>", 0), seq("A", 0)],
            "pair": [spec("<s>", 0), seq("A", 0), spec("<s>", 1), seq("B", 1)],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": "<unk>",
            "continuing_subword_prefix": None, "end_of_word_suffix": None,
            "fuse_unk": True, "byte_fallback": True,
            "vocab": {s: i for i, s in enumerate(pieces)},
            "merges": merges},
    }


def tokenizer_config(seq_len):
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {str(i): {k: v for k, v in added(i, n).items() if k != "id"}
                                 for i, n in ((0, "<unk>"), (1, "<s>"), (2, "</s>"))},
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "model_max_length": seq_len,
        "pad_token": None,
        # PreTrainedTokenizerFast, not LlamaTokenizerFast: transformers 5 rebuilds a
        # LlamaTokenizer's pipeline from vocab and merges (Metaspace pre-tokenizer, which adds no
        # dummy prefix before a leading space, whatever `legacy` says) and drops the tokenizer.json
        # normalizer; llama2.c always adds the dummy prefix. PreTrainedTokenizerFast uses
        # tokenizer.json as written, in transformers 4 and 5. No `legacy` key: it means nothing here.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "<unk>",
    }


# ---------------------------------------------------------------- main

def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="llama2.c legacy (version 0) checkpoint, e.g. stories260K.bin")
    ap.add_argument("tokenizer", help="llama2.c tokenizer, e.g. tok512.bin")
    ap.add_argument("out", help="output directory (created)")
    ap.add_argument("--license", help="licence file to copy into the output directory as LICENSE")
    a = ap.parse_args(argv)

    p, shared, w = read_checkpoint(a.checkpoint)
    ferr = check_freq_cis(p, w)
    perr = check_permutation(p, w)
    _, toks = read_tokenizer(a.tokenizer, p["vocab_size"])
    pieces = hf_pieces(toks)
    merges, n_merged = derive_merges(toks, pieces)
    if SPACE not in pieces:
        die("the tokenizer has no ' ' piece; llama2.c's dummy prefix needs one")

    hs = p["dim"] // p["n_heads"]
    config = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "head_dim": hs,
        "hidden_act": "silu",
        "hidden_size": p["dim"],
        "initializer_range": 0.02,
        "intermediate_size": p["hidden_dim"],
        "max_position_embeddings": p["seq_len"],
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": p["n_heads"],
        "num_hidden_layers": p["n_layers"],
        "num_key_value_heads": p["n_kv_heads"],
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": shared,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": p["vocab_size"],
    }
    os.makedirs(a.out, exist_ok=True)
    write_json(os.path.join(a.out, "config.json"), config)
    write_json(os.path.join(a.out, "generation_config.json"),
               {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2})
    sd = hf_state_dict(p, shared, w)
    write_safetensors(os.path.join(a.out, "model.safetensors"), sd)
    write_json(os.path.join(a.out, "tokenizer.json"), tokenizer_json(pieces, merges))
    write_json(os.path.join(a.out, "tokenizer_config.json"), tokenizer_config(p["seq_len"]))
    if a.license:
        shutil.copyfile(a.license, os.path.join(a.out, "LICENSE"))
    n_params = sum(int(t.size) for t in sd.values())
    print(f"convert_llama2c: {a.checkpoint}: " + ", ".join(f"{k}={p[k]}" for k in HEADER)
          + f", classifier {'shared' if shared else 'separate'}; {len(sd)} tensors, {n_params} parameters",
          file=sys.stderr)
    print(f"convert_llama2c: freq_cis matches rope_theta 10000 (max err {ferr:.2g}); "
          f"rope permutation check ok (max rel err {perr:.2g})", file=sys.stderr)
    print(f"convert_llama2c: {a.tokenizer}: {len(pieces)} pieces, {len(merges)} merges "
          f"for {n_merged} merged pieces; wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
