#!/usr/bin/env bash
# tests/tools/test_train_diffprune.sh: ftk train-step --finetuning-type diffprune end to end on
# the tiny llama: the L0 penalty in the logged loss, the magnitude projection at
# projection_step, the adapter_config.json that names DIFF_PRUNING, resume bit-identical across
# the projection, the saved adapter loading through --adapter, and option errors.
. "$(dirname "$0")/lib.sh"
FIX="$ROOT/tests/fixtures/hf_tiny"
fixture_stream "$FIX/llama/expected.safetensors" 6 > "$T/b6.fts"

opts=(--model "$FIX/llama" --finetuning-type diffprune --peft-opt sparsity_pen=1e-3 --peft-opt alpha_lr_ratio=100
      --peft-opt target_sparsity=0.1 --peft-opt projection_step=3 --lr 1e-3 --lr-scheduler constant --seed 5)
check "straight run: 6 steps, projection after step 4" ftk train-step "${opts[@]}" --output "$T/straight" --metrics "$T/ms.jsonl" "$T/b6.fts"
check_eq "adapter config" "$(jq -c '[.peft_type, .projected, .target_sparsity, .projection_step, (.target_modules | length)]' \
    "$T/straight/adapter_config.json")" '["DIFF_PRUNING",true,0.1,3,7]'
# 14 sites x (indices, values); 384 = 10% of the 3840 weights of the tiny model's linears
check_eq "the sparse diff: 384 entries" "$(st_header "$T/straight/adapter_model.safetensors" \
    | jq '[to_entries[] | select(.key | endswith(".diff_values")) | .value.shape[0]] | add')" "384"
# the penalty (lambda * sum sigmoid(alpha)) is in the loss of steps 1-4, not after the projection
check "loss includes the penalty before the projection only" jq -se \
    '(.[0].loss > 4.5 + 3.7) and (.[3].loss > 4 + 3.7) and (.[4].loss < 5) and (.[5].loss < 5)' "$T/ms.jsonl"

check "interrupted run (checkpoints at 2 and 4)" ftk train-step "${opts[@]}" --max-steps 6 --save-steps 2 --output "$T/part" \
    --metrics /dev/null "$T/b6.fts"
check_eq "checkpoint-2 is dense, checkpoint-4 projected" \
    "$(jq -c .projected "$T/part/checkpoint-2/adapter_config.json" "$T/part/checkpoint-4/adapter_config.json" | tr '\n' ' ')" "false true "
for c in 2 4; do
    check "resume from checkpoint-$c" ftk train-step "${opts[@]}" --resume "$T/part/checkpoint-$c" --output "$T/resumed$c" \
        --metrics "$T/mr$c.jsonl" "$T/b6.fts"
    check "resumed from checkpoint-$c: adapter bit-identical" cmp "$T/straight/adapter_model.safetensors" "$T/resumed$c/adapter_model.safetensors"
    check "resumed from checkpoint-$c: optimizer moments bit-identical" cmp "$T/straight/trainer_state.safetensors" \
        "$T/resumed$c/trainer_state.safetensors"
done
check_eq "resumed run logs the same losses" "$(jq -c .loss "$T/mr2.jsonl" | tr '\n' ' ')" "$(jq -c .loss "$T/ms.jsonl" | tail -n 4 | tr '\n' ' ')"

check "the projected adapter trains further through --adapter" ftk train-step --model "$FIX/llama" --adapter "$T/straight" \
    --lr 1e-3 --max-steps 2 --output "$T/more" --metrics /dev/null "$T/b6.fts"
check_eq "and stays projected" "$(jq -c .projected "$T/more/adapter_config.json")" "true"

check_fail "unknown option" 1 "unknown option \"sparsity\"" ftk train-step --model "$FIX/llama" --finetuning-type diffprune \
    --peft-opt sparsity=0.1 "$T/b6.fts"
check_fail "target_sparsity without projection_step" 1 "target_sparsity needs projection_step" ftk train-step --model "$FIX/llama" \
    --finetuning-type diffprune --peft-opt target_sparsity=0.1 "$T/b6.fts"
summary
