#!/usr/bin/env bash
# tests/tools/test_prefix_tuning.sh: prefix tuning (peft PREFIX_TUNING, prefix_projection=true)
# and P-tuning v2 (prefix_projection=false) through the tools on the tiny qwen3: train-step
# trains and saves a peft-layout adapter (plus the MLP), resume is bit-identical, eval and
# ref-logps read the adapter, generate --adapter equals peft's greedy generate, and the errors.
# The numbers against peft itself are in tests/unit/test_plugin_prefix_tuning.c.
. "$(dirname "$0")/lib.sh"
FIX="$ROOT/tests/fixtures/hf_tiny"
PT="$ROOT/tests/fixtures/peft_methods/prefix_tuning"

M="$FIX/qwen3"
fixture_stream "$M/expected.safetensors" 4 > "$T/b4.fts"
fixture_stream "$M/expected.safetensors" 1 > "$T/b1.fts"
proj=(--finetuning-type prefix_tuning --peft-opt num_virtual_tokens=4 --peft-opt prefix_projection=true
      --peft-opt encoder_hidden_size=12 --lr 1e-2 --lr-scheduler constant --weight-decay 0.01 --seed 3)

check "prefix tuning (MLP), 4 steps, checkpoint at 3" ftk train-step --model "$M" "${proj[@]}" --save-steps 3 \
    --output "$T/pt" --metrics "$T/m.jsonl" "$T/b4.fts"
check "peft's files and the MLP" test -f "$T/pt/adapter_config.json" -a -f "$T/pt/adapter_model.safetensors" \
    -a -f "$T/pt/prefix_encoder.safetensors" -a -f "$T/pt/checkpoint-3/prefix_encoder.safetensors"
check_eq "adapter config" "$(jq -c '[.peft_type, .num_virtual_tokens, .prefix_projection, .inference_mode, .token_dim, .num_attention_heads]' "$T/pt/adapter_config.json")" \
    '["PREFIX_TUNING",4,true,false,16,2]'
check_eq "prompt_embeddings (P, 2 layers x k,v x 2 kv heads x 8), the MLP as peft's PrefixEncoder" \
    "$(st_header "$T/pt/adapter_model.safetensors" | jq -c '.prompt_embeddings.shape') $(st_header "$T/pt/prefix_encoder.safetensors" | jq -c 'del(.__metadata__) | to_entries | map("\(.key)\(.value.shape)") | sort')" \
    '[4,64] ["embedding.weight[4,16]","transform.0.bias[12]","transform.0.weight[12,16]","transform.2.bias[64]","transform.2.weight[64,12]"]'
check_trained "$M" "$T/pt" "$T/b1.fts" "$T/m.jsonl"
check "resume from checkpoint-3" ftk train-step --model "$M" "${proj[@]}" --resume "$T/pt/checkpoint-3" --output "$T/res" \
    --metrics /dev/null "$T/b4.fts"
check "resumed prefix and MLP are bit-identical" cmp "$T/pt/adapter_model.safetensors" "$T/res/adapter_model.safetensors"
check "and the MLP" cmp "$T/pt/prefix_encoder.safetensors" "$T/res/prefix_encoder.safetensors"
check "and the optimizer moments" cmp "$T/pt/trainer_state.safetensors" "$T/res/trainer_state.safetensors"

check "P-tuning v2 (no MLP), 2 steps" ftk train-step --model "$M" --finetuning-type prefix_tuning --peft-opt num_virtual_tokens=2 \
    --lr 1e-2 --max-steps 2 --output "$T/p2" --metrics /dev/null "$T/b4.fts"
check_eq "P-tuning v2: config, no MLP file" "$(jq -c '[.prefix_projection, .inference_mode]' "$T/p2/adapter_config.json") $(test -e "$T/p2/prefix_encoder.safetensors" && echo mlp)" \
    "[false,true] "
check "train on from an adapter" ftk train-step --model "$M" --adapter "$T/p2" --lr 1e-2 --max-steps 1 --output "$T/p3" \
    --metrics /dev/null "$T/b4.fts"

# generate: peft's saved adapters (fixtures); peft's greedy generate (no eos within 8 tokens) gave
# qwen3 noproj [9,34,59,51,51,52,26,21], proj [31 x 8] for the prompt [19,52,57,9]
example_stream '[19,52,57,9]' > "$T/ex.fts"
check_eq "generate --adapter (P-tuning v2) = peft's greedy generate" \
    "$(ftk generate --model "$M" --adapter "$PT/qwen3/noproj" --max-new-tokens 8 "$T/ex.fts" | jq -c .ids)" "[9,34,59,51,51,52,26,21]"
check_eq "generate --adapter (projection) = peft's greedy generate" \
    "$(ftk generate --model "$M" --adapter "$PT/qwen3/proj" --max-new-tokens 8 "$T/ex.fts" | jq -c .ids)" "[31,31,31,31,31,31,31,31]"
# the prefix's positions count against --context: 12 positions - 3 prefix - 4 prompt = 5 new tokens
check_eq "generate stops where the prefix and prompt fill the context" \
    "$(ftk generate --model "$M" --adapter "$PT/qwen3/noproj" --max-new-tokens 20 --ignore-eos --context 12 "$T/ex.fts" | jq -c '[.finish_reason, (.ids | length)]')" \
    "[\"length\",5]"
check "generate with ftk's trained adapter" bash -c "ftk generate --model '$M' --adapter '$T/pt' --max-new-tokens 4 '$T/ex.fts' | jq -e '.ids | length == 4'"

# ref-logps: the prefix changes the reference log-probs
ftk dump --from-json < "$ROOT/tests/fixtures/pref/dpo_batch.jsonl" > "$T/dpo.fts"
check "ref-logps --adapter" ftk ref-logps --model "$FIX/llama" --adapter "$PT/llama/proj" -q -o "$T/dpo_pt.fts" "$T/dpo.fts"
check "ref-logps base" ftk ref-logps --model "$FIX/llama" -q -o "$T/dpo_base.fts" "$T/dpo.fts"
check "the adapter is applied" test "$(ftk dump "$T/dpo_pt.fts" | jq -c 'select(.kind=="batch") | .tensors.ref_logps')" \
    != "$(ftk dump "$T/dpo_base.fts" | jq -c 'select(.kind=="batch") | .tensors.ref_logps')"

check_fail "bad option" 1 "num_virtual_tokens = 0" ftk train-step --model "$M" --finetuning-type prefix_tuning \
    --peft-opt num_virtual_tokens=0 --max-steps 1 "$T/b4.fts"
check_fail "unknown option" 1 "unknown option \"r\"" ftk train-step --model "$M" --finetuning-type prefix_tuning \
    --lora-rank 4 --max-steps 1 "$T/b4.fts"
check_fail "adapter for another base" 1 "adapter for another base" ftk eval --model "$M" --adapter "$PT/llama/proj" "$T/b1.fts"
summary
