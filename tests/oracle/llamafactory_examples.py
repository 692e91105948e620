#!/usr/bin/env python3
"""Examples made by LLaMA-Factory itself, for ftk tokenize's labels and truncation.

Runs LLaMA-Factory's own converters (converter.py) and processors (processor/supervised.py,
pairwise.py, feedback.py) on the demo datasets in tests/fixtures/data/llamafactory with the
fixture tokenizers, for several templates and options, and writes one JSON line per run to
tests/fixtures/llamafactory/examples.jsonl.zst:
  {"tokenizer", "template", "dataset", "cutoff_len", "train_on_prompt", "mask_history",
   "examples": [{"input_ids", "labels"} | {"chosen_input_ids", ...} | {"input_ids", "labels", "kto_tag"}]}
cutoff_len 0 means ftk's "no --cutoff-len" (LLaMA-Factory is given 10**6).
The first line records the package versions.

Needs: pip install --no-deps llamafactory==0.9.5 into the venv (its multimodal imports, torchaudio
and friends, are stubbed below: no multimodal data is used). Run from the repository root:
  DISABLE_VERSION_CHECK=1 .venv/bin/python tests/oracle/llamafactory_examples.py
"""
import importlib
import importlib.machinery
import json
import os
import sys
import types

for name in ["torchaudio", "av", "librosa", "torchvision", "jieba", "nltk", "rouge_chinese", "omegaconf"]:
    try:
        importlib.import_module(name)
    except Exception:
        m = types.ModuleType(name)
        m.__spec__ = importlib.machinery.ModuleSpec(name, None)
        m.OmegaConf = object  # omegaconf: imported by hparams, used only for yaml configs
        sys.modules[name] = m

import tokenizers  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

import llamafactory  # noqa: E402
from llamafactory.data.converter import get_dataset_converter  # noqa: E402
from llamafactory.data.parser import get_dataset_list  # noqa: E402
from llamafactory.data.processor.feedback import FeedbackDatasetProcessor  # noqa: E402
from llamafactory.data.processor.pairwise import PairwiseDatasetProcessor  # noqa: E402
from llamafactory.data.processor.supervised import SupervisedDatasetProcessor  # noqa: E402
from llamafactory.data.template import get_template_and_fix_tokenizer  # noqa: E402
from llamafactory.hparams import DataArguments  # noqa: E402

TK = "../shared/fixtures/tokenizers"   # tokenizer.json uncompressed
DATA = "tests/fixtures/data/llamafactory"

# (tokenizer, template, dataset, cutoff_len, train_on_prompt, mask_history)
# Not here: mistral on sp-bpe-32k. Its assistant slot " {{content}}" starts with a space, and
# transformers 5's LlamaTokenizer rebuilds that tokenizer's backend (Metaspace pre-tokenizer, no
# normalizer) so " Hello" loses the lone "▁" token that tokenizer.json's normalizer (Prepend +
# Replace) gives, and that HuggingFace `tokenizers` (ftk's reference) gives.
RUNS = []
for tok, tpl in [("llama3-128k", "llama3"), ("qwen3-151k", "qwen"), ("qwen3-151k", "chatml"),
                 ("sp-bpe-32k", "llama2"), ("sp-bpe-32k", "alpaca"),
                 ("sp-bpe-32k", "vicuna"), ("sp-bpe-32k", "empty")]:
    RUNS.append((tok, tpl, "identity", 0, False, False))
RUNS += [
    ("llama3-128k", "llama3", "alpaca_en_demo", 0, False, False),
    ("llama3-128k", "llama3", "alpaca_en_demo", 48, False, False),
    ("llama3-128k", "llama3", "alpaca_en_demo", 48, True, False),
    ("qwen3-151k", "qwen", "multiturn", 0, False, False),
    ("qwen3-151k", "qwen", "multiturn", 0, False, True),
    ("qwen3-151k", "qwen", "multiturn", 40, False, False),
    ("qwen3-151k", "qwen", "multiturn", 40, False, True),
    ("qwen3-151k", "qwen", "multiturn", 0, True, False),
    ("llama3-128k", "llama3", "dpo_en_demo", 0, False, False),
    ("llama3-128k", "llama3", "dpo_en_demo", 64, False, False),
    ("qwen3-151k", "qwen3", "dpo_en_demo", 64, False, False),
    ("llama3-128k", "llama3", "kto_en_demo", 0, False, False),
    ("qwen3-151k", "qwen3", "kto_en_demo", 48, False, False),
    ("qwen3-151k", "qwen3", "identity", 0, False, False),
]


def main():
    out = [json.dumps({"oracle": "tests/oracle/llamafactory_examples.py", "versions": {
        "llamafactory": llamafactory.__version__, "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__}})]
    for tok_name, tpl, ds, cutoff, top, mh in RUNS:
        args = DataArguments(template=tpl, cutoff_len=cutoff or 10**6, train_on_prompt=top, mask_history=mh,
                             dataset_dir=DATA)
        tok = AutoTokenizer.from_pretrained(f"{TK}/{tok_name}")
        template = get_template_and_fix_tokenizer(tok, args)
        if ds == "multiturn":  # sharegpt conversations of 2 and 3 turns (from the template fixtures)
            attr = get_dataset_list(["dpo_en_demo"], DATA)[0]
            attr.ranking = False
            records = [json.loads(l) for l in open("tests/fixtures/llamafactory/multiturn.jsonl")]
        else:
            attr = get_dataset_list([ds], DATA)[0]
            records = json.load(open(os.path.join(DATA, attr.dataset_name)))
        conv = get_dataset_converter(attr.formatting, attr, args)
        rows = [conv(r) for r in records]
        batch = {k: [r[k] for r in rows] for k in rows[0]}
        if attr.ranking:
            proc, kind = PairwiseDatasetProcessor, "pairwise"
        elif attr.kto_tag:
            proc, kind = FeedbackDatasetProcessor, "kto"
        else:
            proc, kind = SupervisedDatasetProcessor, "sft"
        res = proc(template=template, tokenizer=tok, processor=None, data_args=args).preprocess_dataset(batch)
        n = len(res["chosen_input_ids"] if kind == "pairwise" else res["input_ids"])
        examples = []
        for i in range(n):
            if kind == "pairwise":
                examples.append({k: res[k][i] for k in ("chosen_input_ids", "chosen_labels",
                                                        "rejected_input_ids", "rejected_labels")})
            elif kind == "kto":
                examples.append({"input_ids": res["input_ids"][i], "labels": res["labels"][i],
                                 "kto_tag": [1 if res["kto_tags"][i] else 0]})
            else:
                examples.append({"input_ids": res["input_ids"][i], "labels": res["labels"][i]})
        out.append(json.dumps({"tokenizer": tok_name, "template": tpl, "dataset": ds, "cutoff_len": cutoff,
                               "train_on_prompt": top, "mask_history": mh, "examples": examples}))
        print(tok_name, tpl, ds, cutoff, top, mh, kind, n, file=sys.stderr)
    with open("tests/fixtures/llamafactory/examples.jsonl", "w") as f:
        f.write("\n".join(out) + "\n")
    os.system("zstd -q -19 -f --rm tests/fixtures/llamafactory/examples.jsonl")


if __name__ == "__main__":
    main()
