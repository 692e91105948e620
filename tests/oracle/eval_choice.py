#!/usr/bin/env python3
"""Multiple-choice parity fixture for `ftk eval` (issue 8), made by LLaMA-Factory 0.9.5 itself.

For the stories260K model (models/stories260K) and the hand-made questions in
tests/fixtures/eval/mc_test.jsonl (few-shot examples from mc_dev.csv), LLaMA-Factory's
evaluator pieces are run as its Evaluator.eval does: eval/template.py's get_eval_template(lang)
.format_example(target, support_set, subject), the chat template's encode_oneturn (prompt ids),
and batch_inference (logits at the last prompt position, softmax over the choice letters'
token ids = tokenizer.encode(letter, add_special_tokens=False)[-1]). One difference, on
purpose: LLaMA-Factory draws the support set with dataset["train"].shuffle() (unseeded); here,
as in ftk, it is the first n_shot dev records. Logits come from transformers (F32, eager).

Writes tests/fixtures/eval/choice_expected.jsonl: one line per (template, n_shot, lang) run with
per question the prompt length, the prompt ids' sum (a cheap fingerprint), the prediction and
the four probabilities. Run from the repo root:
  DISABLE_VERSION_CHECK=1 .venv/bin/python tests/oracle/eval_choice.py
"""
import csv
import importlib
import importlib.machinery
import json
import sys
import types

for name in ["torchaudio", "av", "librosa", "torchvision", "jieba", "nltk", "rouge_chinese", "omegaconf"]:
    try:
        importlib.import_module(name)
    except Exception:
        m = types.ModuleType(name)
        m.__spec__ = importlib.machinery.ModuleSpec(name, None)
        m.OmegaConf = object
        sys.modules[name] = m

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import llamafactory  # noqa: E402
from llamafactory.data.template import get_template_and_fix_tokenizer  # noqa: E402
from llamafactory.eval.template import get_eval_template  # noqa: E402
from llamafactory.extras.constants import CHOICES  # noqa: E402
from llamafactory.hparams import DataArguments  # noqa: E402

MODEL = "models/stories260K"
FIX = "tests/fixtures/eval"
RUNS = [("empty", 0, "en"), ("alpaca", 2, "en"), ("vicuna", 1, "zh")]


def main():
    test = [json.loads(l) for l in open(f"{FIX}/mc_test.jsonl")]
    dev = list(csv.DictReader(open(f"{FIX}/mc_dev.csv")))
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32, attn_implementation="eager").eval()
    out = [json.dumps({"oracle": "tests/oracle/eval_choice.py", "versions": {
        "llamafactory": llamafactory.__version__, "transformers": transformers.__version__, "torch": torch.__version__}})]
    for tpl, n_shot, lang in RUNS:
        tok = AutoTokenizer.from_pretrained(MODEL)
        template = get_template_and_fix_tokenizer(tok, DataArguments(template=tpl))
        ev = get_eval_template(lang)
        choice_ids = [tok.encode(ch, add_special_tokens=False)[-1] for ch in CHOICES]
        rows = []
        for rec in test:
            msgs = ev.format_example(target_data=rec, support_set=dev[:n_shot], subject_name="mc test")
            ids, _ = template.encode_oneturn(tokenizer=tok, messages=msgs)
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            probs = torch.softmax(logits[choice_ids].double(), -1)
            rows.append({"prompt_tokens": len(ids), "ids_sum": sum(ids), "answer": msgs[-1]["content"],
                         "pred": CHOICES[int(torch.argmax(probs))], "probs": [float(p) for p in probs]})
        out.append(json.dumps({"template": tpl, "n_shot": n_shot, "lang": lang, "subject": "mc test", "rows": rows}))
        print(tpl, n_shot, lang, [(r["pred"], r["prompt_tokens"]) for r in rows], file=sys.stderr)
    with open(f"{FIX}/choice_expected.jsonl", "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
