#!/usr/bin/env bash
# tests/tools/test_mam_unipelt.sh: the MAM adapter (plugin mam) and UniPELT (plugin unipelt)
# through the tools on the tiny llama: train-step trains and saves them (ftk's MAM / UNIPELT
# adapter format), resume is bit-identical, eval and ref-logps read them (--adapter), MAM
# generates, UniPELT generates by recomputing the sequence. The numbers against torch are in
# tests/unit/test_plugin_mam_unipelt.c.
. "$(dirname "$0")/lib.sh"
M="$ROOT/tests/fixtures/hf_tiny/llama"
FX="$ROOT/tests/fixtures/peft_methods/mam_unipelt"
fixture_stream "$M/expected.safetensors" 4 > "$T/b4.fts"
fixture_stream "$M/expected.safetensors" 1 > "$T/b1.fts"
common=(--lr 1e-2 --lr-scheduler constant --weight-decay 0.01 --seed 5)

mam=(--finetuning-type mam --peft-opt num_virtual_tokens=4 --peft-opt encoder_hidden_size=8 --peft-opt bottleneck_size=4)
check "MAM adapter, 4 steps, checkpoint at 3" ftk train-step --model "$M" "${mam[@]}" "${common[@]}" --save-steps 3 \
    --output "$T/mam" --metrics "$T/m.jsonl" "$T/b4.fts"
check_eq "adapter config" "$(jq -c '[.peft_type, .num_virtual_tokens, .encoder_hidden_size, .bottleneck_size, .scaling, .parallel_input]' \
    "$T/mam/adapter_config.json")" '["MAM",4,8,4,4,"residual"]'
check_eq "tensors: the prefix MLP (5) and 4 per layer" \
    "$(st_header "$T/mam/adapter_model.safetensors" | jq -c 'del(.__metadata__) | keys | length')" 13
check_trained "$M" "$T/mam" "$T/b1.fts" "$T/m.jsonl"
check "resume from checkpoint-3" ftk train-step --model "$M" "${mam[@]}" "${common[@]}" --resume "$T/mam/checkpoint-3" \
    --output "$T/res" --metrics /dev/null "$T/b4.fts"
check "resumed adapter is bit-identical" cmp "$T/mam/adapter_model.safetensors" "$T/res/adapter_model.safetensors"
check "and the optimizer moments" cmp "$T/mam/trainer_state.safetensors" "$T/res/trainer_state.safetensors"
example_stream '[50,57,34,34,61]' > "$T/ex.fts"
check "generate --adapter (MAM)" bash -c "ftk generate --model '$M' --adapter '$T/mam' --max-new-tokens 6 '$T/ex.fts' | jq -e '.ids | length == 6'"

up=(--finetuning-type unipelt --peft-opt num_virtual_tokens=2 --peft-opt encoder_hidden_size=8 --peft-opt r=2
    --peft-opt reduction_factor=4)
check "UniPELT, 4 steps, with recompute" ftk train-step --model "$M" "${up[@]}" --recompute "${common[@]}" \
    --output "$T/up" --metrics "$T/u.jsonl" "$T/b4.fts"
check "the loss falls" jq -se '.[0].loss > .[-1].loss' "$T/u.jsonl"
check_eq "adapter config" "$(jq -c '[.peft_type, .num_virtual_tokens, .r, .bottleneck_size, .non_linearity]' "$T/up/adapter_config.json")" \
    '["UNIPELT",2,2,4,"relu"]'
check "eval --adapter (UniPELT)" ftk eval --model "$M" --adapter "$T/up" -q "$T/b1.fts"
ftk dump --from-json < "$ROOT/tests/fixtures/pref/dpo_batch.jsonl" > "$T/dpo.fts"
check "ref-logps --adapter (the UniPELT fixture)" ftk ref-logps --model "$M" --adapter "$FX/unipelt" -q -o "$T/dpo_ad.fts" "$T/dpo.fts"
check_eq "generate --adapter (UniPELT: the sequence recomputed per token)" \
    "$(ftk generate --model "$M" --adapter "$T/up" --max-new-tokens 4 --ignore-eos "$T/ex.fts" | jq -c '[.finish_reason, (.ids | length)]')" \
    '["length",4]'

check_fail "unknown option" 1 "unknown option \"lora_alpha\"" ftk train-step --model "$M" --finetuning-type unipelt \
    --peft-opt lora_alpha=16 --max-steps 1 "$T/b4.fts"
check_fail "bad option" 1 "parallel_input=side" ftk train-step --model "$M" --finetuning-type mam \
    --peft-opt parallel_input=side --max-steps 1 "$T/b4.fts"
summary
