#!/usr/bin/env bash
# tests/bench/run.sh BUILD: `make bench`. Runs each CPU benchmark against its peer, side by side,
# and prints the tables that docs/PERF.md keeps. llama.cpp is an optional peer of the generation
# benchmark: LLAMACPP_DIR=DIR (a llama.cpp tree built as docs/PERF.md says), else it is left out.
# Needs the Python peers in .venv
# (python3 -m venv .venv && .venv/bin/pip install torch transformers peft trl tokenizers);
# without them it says so and stops. Medians over runs; the machine is shared, so compare
# ratios measured in the same run, not absolute numbers across runs.
set -euo pipefail
build=${1:-build}
cd "$(dirname "$0")/../.."
py=.venv/bin/python
if ! [ -x "$py" ] || ! "$py" -c 'import torch, transformers, peft, tokenizers' 2>/dev/null; then
    echo "bench: the peers (torch, transformers, peft, tokenizers) are not installed in .venv; see docs/PERF.md" >&2
    exit 1
fi
echo "== tokenizer: ftk vs HF tokenizers (single thread)"
tests/bench/tokenize.sh "$build"
echo "== LoRA SFT training on the CPU: ftk train-step vs PyTorch + transformers + peft"
"$py" tests/bench/train_cpu.py --ftk "$build/bin/ftk"
echo "== every PEFT method: ftk train-step vs peft where peft has the method"
"$py" tests/bench/peft_methods.py --ftk "$build/bin/ftk" --steps 8
echo "== generation on the CPU: ftk generate vs transformers (and llama.cpp when LLAMACPP_DIR names a build)"
"$py" tests/bench/generate_cpu.py --ftk "$build/bin/ftk" --shapes 10m,100m --repeats 5
echo "== merge-lora: a base larger than the memory it is given, ftk vs peft merge_and_unload"
"$py" tests/bench/merge_memory.py --ftk "$build/bin/ftk" --shape 1b --repeats 3
if [ -f tests/bench/dpo_offline.py ]; then
    echo "== DPO with offline vs online reference log-probs"
    "$py" tests/bench/dpo_offline.py --build "$build"
fi
