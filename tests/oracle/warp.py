#!/usr/bin/env python3
"""Reference for ftk's WARP plugin (plugins/peft/warp.c, the core's head hook in
libcore/model_head.c): the paper's formula (Hambardzumyan et al. 2021) written here in torch on
transformers' own models, autograd for the gradients. peft has no WARP, so this is the oracle.

On a causal LM: P prompt embeddings e (P,C) go in front of every row (positions 0..P-1, the real
tokens at P.., unlabelled, as peft's prompt tuning and ftk's embed hook), and the hidden state h_t
(after the final norm) that predicts a label scores class k with a verbalizer row v[k] (K,C) for
token ids[k]:
  class mode (the paper's)  log p(class k | h) = log_softmax_k(h v^T)
  full mode                 log p(token | h) = log_softmax(h W'^T), W' = lm_head with rows ids
                            replaced by v (the tied embedding of qwen3 itself is not changed)
Loss: SFT's token mean of -log p(label) over labelled positions (HF shift: h_t predicts
labels[t+1]). Then clip_grad_norm_(1.0) and one torch AdamW step (lr 1e-2, betas .9/.999, eps 1e-8,
weight decay 0.01 on e and v).

Base models: tests/fixtures/hf_tiny/{llama,qwen3} (F32; qwen3 ties lm_head to embed_tokens).
Batches (B=2, T=8): "full" is the models' expected.safetensors batch (labels on arbitrary tokens);
"class" the same input_ids with only answer positions labelled, each answer one of the classes
(the input token set to it too). K = 3 classes, ids 34 ("good" in the prompt tuning fixtures'
tokenizer), 38 ("bad"), 7. P = 3.
Inits (seed 1357): e = 0.5 N(0,1); v = embed_tokens[ids] + 0.1 N(0,1) (off the embedding rows, so
that the full mode differs from the base head even where lm_head is tied).

Writes tests/fixtures/peft_methods/warp/<arch>/expected.safetensors:
  ids I32[K]; input_ids, labels, position_ids (the full batch); class.input_ids, class.labels
  M.init.<name>, M.grad.<name>, M.step1.<name>   name: prompt_embeddings, verbalizer
  M.logits                 full: F32[B,T,V] logits of the real tokens; class: F32[B,T,K] scores
  M.logps F32[B]           per-row sums of label log-probs
  M.loss, M.grad_norm, M.loss1 F32[1]
  full.gen0 I32[6]         greedy continuation of input_ids[0,:5] by uncached argmax (full mode)
Run from the repo root:  .venv/bin/python tests/oracle/warp.py
"""
import json
import os

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

SRC = "tests/fixtures/hf_tiny"
OUT = "tests/fixtures/peft_methods/warp"
SEED = 1357
P = 3
IDS = [34, 38, 7]
CLASS_LABELS = {(0, 4): 34, (0, 7): 38, (1, 5): 7, (1, 7): 34}   # (row, position) -> class token


def hidden(model, e, input_ids):
    """Final-norm hidden states (B, P+T, C) of [prompt, embeddings] at positions 0..P+T-1."""
    B, T = input_ids.shape
    x = torch.cat([e[None].expand(B, -1, -1), model.get_input_embeddings()(input_ids)], 1)
    pos = torch.arange(P + T)[None].expand(B, -1)
    return model.model(inputs_embeds=x, position_ids=pos).last_hidden_state


def head(model, h, v, mode):
    """(B, X, V) log-probs over the vocabulary (full) or (B, X, K) over the classes."""
    ids = torch.tensor(IDS)
    if mode == "class":
        return torch.log_softmax(h @ v.T, -1), h @ v.T
    w = model.lm_head.weight.detach().index_copy(0, ids, v)   # lm_head itself untouched
    return torch.log_softmax(h @ w.T, -1), h @ w.T


def label_logps(logp, labels, mode):
    """Per-row sums of log p(label) with HF's shift over [virtual; real] and the label count."""
    B, T = labels.shape
    full = torch.cat([torch.full((B, P), -100, dtype=torch.long), labels], 1)
    tgt = full[:, 1:]
    lp = logp[:, :-1]
    mask = tgt != -100
    idx = tgt.clone()
    if mode == "class":
        for k, tok in enumerate(IDS):
            idx[tgt == tok] = k
        assert all(t in IDS for t in tgt[mask].tolist())
    idx[~mask] = 0
    g = lp.gather(-1, idx[..., None])[..., 0] * mask
    return g.sum(1), mask.sum()


def run(model, e, v, ids, labels, mode):
    h = hidden(model, e, ids)
    logp, scores = head(model, h, v, mode)
    rows, n = label_logps(logp, labels, mode)
    return rows, n, scores[:, P:]


def make(arch):
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(os.path.join(SRC, arch), dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()   # no dropout in these models; eval only fixes the mode
    for p in model.parameters():
        p.requires_grad_(False)
    tied = model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert tied == (arch == "qwen3"), arch
    emb0 = model.get_input_embeddings().weight.detach().clone()
    base = load_file(os.path.join(SRC, arch, "expected.safetensors"))
    ids, labels = base["input_ids"].long(), base["labels"].long()
    cids, clab = ids.clone(), torch.full_like(labels, -100)
    for (r, t), tok in CLASS_LABELS.items():
        cids[r, t] = tok
        clab[r, t] = tok
    C = model.config.hidden_size
    e0 = 0.5 * torch.randn(P, C)
    v0 = emb0[torch.tensor(IDS)] + 0.1 * torch.randn(len(IDS), C)
    exp = {"ids": torch.tensor(IDS, dtype=torch.int32), "input_ids": base["input_ids"], "labels": base["labels"],
           "position_ids": base["position_ids"], "class.input_ids": cids.int(), "class.labels": clab.int()}
    for mode, (bi, bl) in (("class", (cids, clab)), ("full", (ids, labels))):
        e = e0.clone().requires_grad_(True)
        v = v0.clone().requires_grad_(True)
        exp[mode + ".init.prompt_embeddings"] = e0.clone()
        exp[mode + ".init.verbalizer"] = v0.clone()
        rows, n, scores = run(model, e, v, bi, bl, mode)
        loss = -rows.sum() / n
        loss.backward()
        exp[mode + ".logits"] = scores.detach().clone()
        exp[mode + ".logps"] = rows.detach().clone()
        exp[mode + ".loss"] = loss.detach().reshape(1)
        exp[mode + ".grad.prompt_embeddings"] = e.grad.clone()
        exp[mode + ".grad.verbalizer"] = v.grad.clone()
        gn = torch.nn.utils.clip_grad_norm_([e, v], 1.0)
        exp[mode + ".grad_norm"] = gn.detach().reshape(1)
        opt = torch.optim.AdamW([e, v], lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
        opt.step()
        exp[mode + ".step1.prompt_embeddings"] = e.detach().clone()
        exp[mode + ".step1.verbalizer"] = v.detach().clone()
        with torch.no_grad():
            rows, n, _ = run(model, e, v, bi, bl, mode)
            exp[mode + ".loss1"] = (-rows.sum() / n).reshape(1)
    with torch.no_grad():   # greedy continuation in full mode, from the init, by uncached forwards
        seq = ids[:1, :5]
        out = []
        for _ in range(6):
            h = hidden(model, e0, seq)
            _, logits = head(model, h, v0, "full")
            nxt = int(logits[0, -1].argmax())
            out.append(nxt)
            seq = torch.cat([seq, torch.tensor([[nxt]])], 1)
        exp["full.gen0"] = torch.tensor(out, dtype=torch.int32)
    assert torch.equal(model.get_input_embeddings().weight, emb0)
    os.makedirs(os.path.join(OUT, arch), exist_ok=True)
    save_file({k: x.contiguous() for k, x in exp.items()}, os.path.join(OUT, arch, "expected.safetensors"),
              metadata={"seed": str(SEED), "torch": torch.__version__, "transformers": transformers.__version__})
    print(arch, {m: round(exp[m + ".loss"].item(), 6) for m in ("class", "full")}, "gen", out)


def main():
    torch.use_deterministic_algorithms(True)
    for arch in ("llama", "qwen3"):
        make(arch)
    with open(os.path.join(OUT, "VERSIONS.json"), "w") as f:
        json.dump({"torch": torch.__version__, "transformers": transformers.__version__, "seed": SEED,
                   "script": "tests/oracle/warp.py"}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
