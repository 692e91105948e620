#!/usr/bin/env python3
"""Parity fixtures for the `embed`-hook PEFT methods of issue 11 (prompt tuning, P-tuning), made
by transformers + peft.

Base models: tests/fixtures/hf_tiny/<arch> (F32), batch from its expected.safetensors (B=2, T=8;
peft ignores position_ids for these methods, with a warning, so none are passed). A tiny BPE
tokenizer (vocabulary < 64, TemplateProcessing adds <s>) is built first into
tests/fixtures/peft_methods/prompt_tuning/tokenizer/ for the TEXT init. For each arch and
method M, peft's adapter as saved *before* training goes to .../prompt_tuning/<arch>/<M>/ and the
expected values to .../prompt_tuning/<arch>/expected.safetensors:
  M.init.<name>                 the trainable tensors at init (ftk names: prompt_embeddings;
                                prompt_encoder.<module>.<param> for P-tuning, peft's names without
                                ".default")
  M.logits F32[B,T,V]           logits of the real tokens (the virtual tokens' rows dropped)
  M.loss F32[1]                 train-mode forward (no dropout anywhere)
  M.grad.<name>, M.grad_norm    gradients, total norm before clipping (clip 1.0)
  M.step1.<name>, M.loss1       after one AdamW step (lr 1e-2, betas .9/.999, eps 1e-8, weight
                                decay 0.01 on tensors whose name lacks "bias": HF Trainer's rule)
  M.step1.prompt_embeddings_out (P-tuning) the encoder's output after the step
  M.gen0, M.gen1 I32            greedy generate (10 new tokens, no eos) by PeftModel.from_pretrained
                                of the saved adapter, prompts input_ids[0,:5] and input_ids[1,:3]
  M.text_ids I32                (pt_text) tokenizer(prompt_tuning_init_text)["input_ids"]
  positions.err F32[1]          max |peft logits - base model on [prompts, embeds] with
                                position_ids 0..P+T-1| (the core's positions)
Methods (num_virtual_tokens 4):
  pt_random   PromptTuningConfig RANDOM (nn.Embedding's N(0,1))
  pt_text     PromptTuningConfig TEXT, text below (llama: 3 ids, repeated to 4; qwen3: truncated)
  ptune_mlp   PromptEncoderConfig MLP, encoder_hidden_size 8
  ptune_lstm  PromptEncoderConfig LSTM, encoder_hidden_size 6, encoder_num_layers 2, dropout 0
Run from the repo root:  .venv/bin/python tests/oracle/prompt_tuning.py
"""
import json
import os
import sys
import warnings

import torch
import transformers
import peft
import tokenizers
from safetensors.torch import save_file, load_file
from transformers import AutoModelForCausalLM, GenerationConfig

SRC = "tests/fixtures/hf_tiny"
OUT = "tests/fixtures/peft_methods/prompt_tuning"
TOK = os.path.join(OUT, "tokenizer")
SEED = 2468
ARCHS = ["llama", "qwen3"]
P = 4
TEXTS = {"llama": "the cat", "qwen3": "classify the review as good or bad"}


def make_tokenizer():
    """A BPE of lowercase words; ids 0..2 are <unk> <s> </s> like the tiny models' config."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = ["the cat sat on the mat", "classify the review as good or bad", "the answer is good",
              "a bad cat and a good dog", "review the text"] * 4
    tr = trainers.BpeTrainer(vocab_size=56, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
                             initial_alphabet=list("abcdefghijklmnopqrstuvwxyz"))
    tok.train_from_iterator(corpus, tr)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    os.makedirs(TOK, exist_ok=True)
    tok.save(os.path.join(TOK, "tokenizer.json"))
    with open(os.path.join(TOK, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
                   "unk_token": "<unk>", "model_max_length": 64, "clean_up_tokenization_spaces": False}, f, indent=1)
        f.write("\n")
    assert tok.get_vocab_size() <= 64


def ftk_name(n):
    n = n.replace(".default", "")
    return "prompt_embeddings" if n == "prompt_encoder.embedding.weight" and PROMPT_TUNING else n


PROMPT_TUNING = True


def load_base(arch):
    return AutoModelForCausalLM.from_pretrained(os.path.join(SRC, arch), dtype=torch.float32,
                                                attn_implementation="eager")


def real_logits(out):
    return out.logits[:, P:].detach().float()


def generate(pm, ids):
    for m in (pm, pm.get_base_model()):   # no eos: the model's generation_config would fill it in
        m.generation_config = GenerationConfig(do_sample=False, eos_token_id=None, pad_token_id=0, bos_token_id=1)
    with torch.no_grad():
        g = pm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False)
    new = g[0, ids.shape[1]:].int()
    assert new.numel() == 10, new
    return new


def method(arch, tag, cfg, exp, batch):
    global PROMPT_TUNING
    PROMPT_TUNING = tag.startswith("pt_")
    ids, labels = batch
    pm = peft.get_peft_model(load_base(arch), cfg)
    named = [(ftk_name(n), p) for n, p in pm.named_parameters() if p.requires_grad]
    for n, p in named:
        exp[f"{tag}.init.{n}"] = p.detach().clone()
    adir = os.path.join(OUT, arch, tag)
    pm.save_pretrained(adir, safe_serialization=True)
    os.remove(os.path.join(adir, "README.md"))   # peft's model card

    if tag == "pt_random":   # the core's positions: 0..P+T-1 with no position_ids (transformers 5)
        pm.eval()
        with torch.no_grad():
            want = pm(input_ids=ids).logits
            x = torch.cat([pm.get_prompt(ids.shape[0]), pm.get_base_model().get_input_embeddings()(ids)], 1)
            pos = torch.arange(x.shape[1])[None].expand(ids.shape[0], -1)
            got = pm.get_base_model()(inputs_embeds=x, position_ids=pos).logits
        exp["positions.err"] = (got - want).abs().max().reshape(1)
        assert exp["positions.err"].item() == 0.0

    pm.train()
    out = pm(input_ids=ids, labels=labels)
    out.loss.backward()
    exp[tag + ".logits"] = real_logits(out)
    exp[tag + ".loss"] = out.loss.detach().reshape(1)
    for n, p in named:
        exp[f"{tag}.grad.{n}"] = p.grad.detach().clone()
    gn = torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
    exp[tag + ".grad_norm"] = gn.detach().reshape(1).float()
    groups = [{"params": [p for n, p in named if "bias" not in n], "weight_decay": 0.01},
              {"params": [p for n, p in named if "bias" in n], "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
    opt.step()
    opt.zero_grad(set_to_none=True)
    for n, p in named:
        exp[f"{tag}.step1.{n}"] = p.detach().clone()
    with torch.no_grad():
        exp[tag + ".loss1"] = pm(input_ids=ids, labels=labels).loss.reshape(1)
        if not PROMPT_TUNING:
            exp[tag + ".step1.prompt_embeddings_out"] = pm.get_prompt_embedding_to_save("default")

    # greedy generation by peft's loading of the saved adapter (inference mode)
    lm = peft.PeftModel.from_pretrained(load_base(arch), adir)
    lm.eval()
    exp[tag + ".gen0"] = generate(lm, ids[:1, :5])
    exp[tag + ".gen1"] = generate(lm, ids[1:, :3])


def make(arch):
    torch.manual_seed(SEED)
    e = load_file(os.path.join(SRC, arch, "expected.safetensors"))
    batch = (e["input_ids"].long(), e["labels"].long())
    exp = {"input_ids": e["input_ids"], "labels": e["labels"], "position_ids": e["position_ids"]}
    os.makedirs(os.path.join(OUT, arch), exist_ok=True)
    common = dict(task_type="CAUSAL_LM", num_virtual_tokens=P)
    method(arch, "pt_random", peft.PromptTuningConfig(prompt_tuning_init="RANDOM", **common), exp, batch)
    text = TEXTS[arch]
    tk = transformers.AutoTokenizer.from_pretrained(TOK)
    exp["pt_text.text_ids"] = torch.tensor(tk(text)["input_ids"], dtype=torch.int32)
    method(arch, "pt_text", peft.PromptTuningConfig(prompt_tuning_init="TEXT", prompt_tuning_init_text=text,
                                                    tokenizer_name_or_path=TOK, **common), exp, batch)
    method(arch, "ptune_mlp", peft.PromptEncoderConfig(encoder_reparameterization_type="MLP", encoder_hidden_size=8,
                                                       **common), exp, batch)
    method(arch, "ptune_lstm", peft.PromptEncoderConfig(encoder_reparameterization_type="LSTM", encoder_hidden_size=6,
                                                        encoder_num_layers=2, encoder_dropout=0.0, **common), exp, batch)
    save_file({k: v.contiguous() for k, v in exp.items()}, os.path.join(OUT, arch, "expected.safetensors"),
              metadata={"seed": str(SEED), "torch": torch.__version__,
                        "transformers": transformers.__version__, "peft": peft.__version__})
    print(arch, {t: round(exp[t + ".loss"].item(), 6) for t in ("pt_random", "pt_text", "ptune_mlp", "ptune_lstm")},
          "text ids", exp["pt_text.text_ids"].tolist(), file=sys.stderr)


def main():
    torch.use_deterministic_algorithms(True)
    warnings.filterwarnings("ignore", message=".*Position ids are not supported.*")
    make_tokenizer()
    for arch in ARCHS:
        make(arch)
    with open(os.path.join(OUT, "VERSIONS.json"), "w") as f:
        json.dump({"torch": torch.__version__, "transformers": transformers.__version__,
                   "peft": peft.__version__, "tokenizers": tokenizers.__version__, "seed": SEED,
                   "script": "tests/oracle/prompt_tuning.py"}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
