#!/bin/sh
# pipelines/demo/report.sh: demo-out/report.md on stdout (run by pipelines/demo.mk with O set).
set -eu
cat <<EOT
# ftk demo report

models/stories260K (a 260K-parameter Llama that writes TinyStories) learns an instruction and a
preference from data it made itself (pipelines/demo.mk):

1. **SFT** (LoRA): "Write a story about NAME." answered by the base model's own stories about
   NAME ($(wc -l < "$O/data/sft.jsonl") records, $(jq -r .name "$O/data/sft.jsonl" | sort -u | wc -l) names).
2. **DPO** (LoRA on the merged SFT model): $(wc -l < "$O/data/dpo-pairs.jsonl") pairs of the SFT model's own
   answers; chosen uses the asked name, rejected does not. Reference log-probs computed once
   with \`ftk ref-logps\`.
3. **Eval** on $(jq -r .name "$O/data/test-prompts.jsonl" | sort -u | wc -l) names that neither stage trained on: held-out SFT loss
   (per token, $(wc -l < "$O/data/test.jsonl") stories), the fraction of sampled answers that use the
   asked name, and on $(wc -l < "$O/data/test-pairs.jsonl") held-out pairs the pair accuracy (log p(chosen) >
   log p(rejected)) and DPO's reward accuracy (implicit rewards against the SFT model).

## Results

EOT
cat "$O/table.md"
cat <<EOT

SFT targets the loss; DPO targets the use of the asked name (and the reward accuracy).

## Training curves

![SFT](sft/run/loss.svg)

![DPO](dpo/run/loss.svg)

## Answers to held-out prompts

EOT
for i in 0 8 16; do
    p=$(jq -r "select(.index == $i) | .prompt" "$O/eval/base-gen.jsonl")
    echo "**$p**"
    echo
    for m in base sft dpo; do
        printf -- '- %s: %s\n' "$m" "$(jq -r "select(.index == $i) | .text | gsub(\"\\n\"; \" \")" "$O/eval/$m-gen.jsonl")"
    done
    echo
done
