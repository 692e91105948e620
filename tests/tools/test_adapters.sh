#!/usr/bin/env bash
# tests/tools/test_adapters.sh: the sublayer_out-hook methods (plugins bottleneck, pals,
# adapter_fusion) through the tools on the tiny llama: train-step trains and saves each (ftk's
# adapter format), resume is bit-identical, eval, ref-logps and generate read the adapters
# (--adapter), AdapterFusion trains over two trained bottleneck adapters, PALs generate by
# recomputing the sequence (no KV-cache decode).
# The numbers against torch are in tests/unit/test_plugin_adapters.c.
. "$(dirname "$0")/lib.sh"
FIX="$ROOT/tests/fixtures/hf_tiny"
AD="$ROOT/tests/fixtures/peft_methods/adapters"
M="$FIX/llama"

fixture_stream "$M/expected.safetensors" 4 > "$T/b4.fts"
fixture_stream "$M/expected.safetensors" 1 > "$T/b1.fts"
common=(--lr 1e-2 --lr-scheduler constant --weight-decay 0.01 --seed 3)

hou=(--finetuning-type bottleneck --peft-opt config=houlsby --peft-opt reduction_factor=4 --peft-opt init_weights=bert)
check "Houlsby adapters, 4 steps, checkpoint at 3" ftk train-step --model "$M" "${hou[@]}" "${common[@]}" --save-steps 3 \
    --output "$T/hou" --metrics "$T/m.jsonl" "$T/b4.fts"
check_eq "adapter config" "$(jq -c '[.peft_type, .config, .mh_adapter, .output_adapter, .bottleneck_size, .non_linearity]' "$T/hou/adapter_config.json")" \
    '["BOTTLENECK","houlsby",true,true,4,"swish"]'
check_eq "adapters' Llama tensor names" "$(st_header "$T/hou/adapter_model.safetensors" | jq -c 'del(.__metadata__) | keys | length, .[0]')" \
    "$(printf '16\n"model.layers.0.attention_adapters.adapters.default.adapter_down.0.bias"')"
check_trained "$M" "$T/hou" "$T/b1.fts" "$T/m.jsonl"
check "resume from checkpoint-3" ftk train-step --model "$M" "${hou[@]}" "${common[@]}" --resume "$T/hou/checkpoint-3" \
    --output "$T/res" --metrics /dev/null "$T/b4.fts"
check "resumed adapter is bit-identical" cmp "$T/hou/adapter_model.safetensors" "$T/res/adapter_model.safetensors"
check "and the optimizer moments" cmp "$T/hou/trainer_state.safetensors" "$T/res/trainer_state.safetensors"

example_stream '[50,57,34,34,61]' > "$T/ex.fts"
check "generate --adapter (Houlsby)" bash -c "ftk generate --model '$M' --adapter '$T/hou' --max-new-tokens 6 '$T/ex.fts' | jq -e '.ids | length > 0'"
check "generate --adapter (the parallel fixture)" bash -c "ftk generate --model '$M' --adapter '$AD/parallel' --max-new-tokens 6 '$T/ex.fts' | jq -e '.ids | length > 0'"
check_eq "generate --adapter (PALs: the sequence recomputed per token)" \
    "$(ftk generate --model "$M" --adapter "$AD/pals" --max-new-tokens 4 --ignore-eos "$T/ex.fts" | jq -c '[.finish_reason, (.ids | length)]')" \
    '["length",4]'

ftk dump --from-json < "$ROOT/tests/fixtures/pref/dpo_batch.jsonl" > "$T/dpo.fts"
check "ref-logps --adapter (Pfeiffer)" ftk ref-logps --model "$M" --adapter "$AD/pfeiffer" -q -o "$T/dpo_ad.fts" "$T/dpo.fts"
check "ref-logps base" ftk ref-logps --model "$M" -q -o "$T/dpo_base.fts" "$T/dpo.fts"
check "the adapter is applied" test "$(ftk dump "$T/dpo_ad.fts" | jq -c 'select(.kind=="batch") | .tensors.ref_logps')" \
    != "$(ftk dump "$T/dpo_base.fts" | jq -c 'select(.kind=="batch") | .tensors.ref_logps')"

check "Pfeiffer with robust AdapterDrop and dropout, 2 steps" ftk train-step --model "$M" --finetuning-type bottleneck \
    --peft-opt config=pfeiffer --peft-opt reduction_factor=4 --peft-opt adapter_drop_robust=true --peft-opt dropout=0.1 \
    --peft-opt adapter_name=task2 "${common[@]}" --max-steps 2 --output "$T/pf" --metrics /dev/null "$T/b4.fts"
check "PALs, 2 steps, with recompute" ftk train-step --model "$M" --finetuning-type pals --peft-opt d_s=8 --peft-opt num_heads=2 \
    --recompute "${common[@]}" --max-steps 2 --output "$T/pals" --metrics /dev/null "$T/b4.fts"
check "eval --adapter (PALs)" ftk eval --model "$M" --adapter "$T/pals" -q "$T/b1.fts"
check "AdapterFusion over two trained adapters, 2 steps" ftk train-step --model "$M" --finetuning-type adapter_fusion \
    --peft-opt "adapters=$AD/fusion_a,$AD/fusion_b" "${common[@]}" --max-steps 2 --output "$T/fu" --metrics "$T/fu.jsonl" "$T/b4.fts"
check_eq "fusion config: the adapters by name, their options kept" \
    "$(jq -c '[.peft_type, .adapter_names, (.adapter_configs | keys), .regularization]' "$T/fu/adapter_config.json")" \
    '["ADAPTER_FUSION",["fusion_a","fusion_b"],["fusion_a","fusion_b"],true]'
check "eval --adapter (AdapterFusion, self-contained)" ftk eval --model "$M" --adapter "$T/fu" -q "$T/b1.fts"
check "generate --adapter (AdapterFusion)" bash -c "ftk generate --model '$M' --adapter '$T/fu' --max-new-tokens 4 '$T/ex.fts' | jq -e '.ids | length > 0'"

check_fail "unknown option" 1 "unknown option \"r\"" ftk train-step --model "$M" --finetuning-type bottleneck \
    --lora-rank 4 --max-steps 1 "$T/b4.fts"
check_fail "bad option" 1 "non_linearity=softplus" ftk train-step --model "$M" --finetuning-type bottleneck \
    --peft-opt non_linearity=softplus --max-steps 1 "$T/b4.fts"
mkdir -p "$T/other" && cp "$AD/houlsby/adapter_model.safetensors" "$T/other/" &&
    jq '.reduction_factor = 2' "$AD/houlsby/adapter_config.json" > "$T/other/adapter_config.json"
check_fail "adapter of other options" 1 "other options?" ftk eval --model "$M" --adapter "$T/other" "$T/b1.fts"
summary
