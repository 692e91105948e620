#!/usr/bin/env bash
# tests/tools/test_train_diffprune.sh: ftk train-step --finetuning-type diffprune end to end on
# the tiny llama: the L0 penalty in the logged loss, the magnitude projection at
# projection_step, the adapter_config.json that names DIFF_PRUNING, resume bit-identical across
# the projection, the saved adapter loading through --adapter, and option errors.
. "$(dirname "$0")/lib.sh"
FIX="$ROOT/tests/fixtures/hf_tiny"

# The fixture batch of expected.safetensors as a batch message (as test_train_step.sh does).
fixture_batch() {
    local f="$FIX/$1/expected.safetensors" hl hdr out='{"kind":"batch","tensors":{' sep=''
    hl=$(od -An -t u8 -N 8 "$f" | tr -d ' ')
    hdr=$(dd if="$f" bs=1 skip=8 count="$hl" 2>/dev/null)
    for t in input_ids labels position_ids; do
        local b e shape vals
        b=$(jq -r ".${t}.data_offsets[0]" <<<"$hdr"); e=$(jq -r ".${t}.data_offsets[1]" <<<"$hdr")
        shape=$(jq -c ".${t}.shape" <<<"$hdr")
        vals=$(od -An -t d4 -v -j $((8 + hl + b)) -N $((e - b)) "$f" | tr -s ' \n' ' ' | sed 's/^ //; s/ $//; s/ /,/g')
        out+="$sep\"$t\":{\"dtype\":\"I32\",\"shape\":$shape,\"data\":$(jq -c --argjson s "$shape" \
            '[range(0; $s[0]) as $r | .[$r*$s[1]:($r+1)*$s[1]]]' <<<"[$vals]")}"
        sep=','
    done
    echo "$out}}"
}
b=$(fixture_batch llama)
{ printf '{"kind":"stream","meta":{"producer":"test","batches":"6"}}\n'; for _ in 1 2 3 4 5 6; do echo "$b"; done; } \
    | ftk dump --from-json > "$T/b6.fts"

opts=(--model "$FIX/llama" --finetuning-type diffprune --peft-opt sparsity_pen=1e-3 --peft-opt alpha_lr_ratio=100
      --peft-opt target_sparsity=0.1 --peft-opt projection_step=3 --lr 1e-3 --lr-scheduler constant --seed 5)
check "straight run: 6 steps, projection after step 4" ftk train-step "${opts[@]}" --output "$T/straight" --metrics "$T/ms.jsonl" "$T/b6.fts"
check_eq "adapter config" "$(jq -c '[.peft_type, .projected, .target_sparsity, .projection_step, (.target_modules | length)]' \
    "$T/straight/adapter_config.json")" '["DIFF_PRUNING",true,0.1,3,7]'
# 14 sites x (indices, values); 384 = 10% of the 3840 weights of the tiny model's linears
check_eq "the sparse diff: 384 entries" "$(od -An -t u8 -N 8 "$T/straight/adapter_model.safetensors" | tr -d ' ' | {
    read -r hl; dd if="$T/straight/adapter_model.safetensors" bs=1 skip=8 count="$hl" 2>/dev/null; } \
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
