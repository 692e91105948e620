#!/usr/bin/env bash
# tests/tools/test_peft_losses.sh: every PEFT method trains with every preference loss (DESIGN.md
# section 6: a loss sees only per-row log-probs, so any method composes with any loss). One step
# of DPO, KTO (with its KL rows), ORPO and SimPO per method on the tiny Llama, from the preference
# fixtures: the step runs, its loss and metrics are finite, and the adapter it saves loads again
# (ftk eval --adapter). DPO/KTO's online reference is the base with the adapter off, which for
# the embed, attn_kv and sublayer hooks must switch those off too: at a fresh zero-delta adapter
# (bottleneck adapters start at zero) DPO's first loss is exactly log 2.
. "$(dirname "$0")/lib.sh"
FIX="$ROOT/tests/fixtures/hf_tiny/llama"
PREF="$ROOT/tests/fixtures/pref"
ftk dump --from-json < "$PREF/dpo_batch.jsonl" > "$T/dpo.fts"
ftk dump --from-json < "$PREF/kto_batch.jsonl" > "$T/kto.fts"
methods=(
    "lora"
    "ia3"
    "adalora --peft-opt total_step=1 --peft-opt tinit=0 --peft-opt tfinal=0 --peft-opt init_r=4 --peft-opt target_r=2"
    "diffprune"
    "bitfit"
    "bottleneck --peft-opt config=houlsby"
    "pals"
    "prefix_tuning --peft-opt num_virtual_tokens=3"
    "prompt_tuning --peft-opt num_virtual_tokens=3"
    "p_tuning --peft-opt num_virtual_tokens=3"
    "warp --peft-opt num_virtual_tokens=3 --peft-opt verbalizer_ids=5,9 --peft-opt mode=full"
    "mam --peft-opt num_virtual_tokens=3"
    "unipelt --peft-opt num_virtual_tokens=3"
)
for m in "${methods[@]}"; do
    name=${m%% *}
    for loss in dpo kto orpo simpo; do
        data="$T/dpo.fts"; [ "$loss" = kto ] && data="$T/kto.fts"
        check "$name + $loss: one step" ftk train-step --model "$FIX" --finetuning-type $m --loss "$loss" --lr 1e-3 \
            --lr-scheduler constant --max-steps 1 --output "$T/$name-$loss" --metrics "$T/$name-$loss.jsonl" "$data"
        check "$name + $loss: loss and metrics finite" jq -e \
            '[.loss, .grad_norm] + [to_entries[] | select(.key | test("rewards|logps")) | .value] | all(type == "number" and isfinite and (isnan | not))' \
            "$T/$name-$loss.jsonl"
    done
    check "$name: the adapter it saved loads (eval)" ftk eval --model "$FIX" --adapter "$T/$name-dpo" "$T/dpo.fts"
done
check "a fresh houlsby adapter is the base: DPO's first loss is log 2" \
    jq -e '(.loss - 0.6931472 | fabs) < 1e-6' "$T/bottleneck-dpo.jsonl"
check "a prefix is not the base: DPO's first loss differs from log 2" \
    jq -e '(.loss - 0.6931472 | fabs) > 1e-6' "$T/prefix_tuning-dpo.jsonl"
summary
