#!/usr/bin/env bash
# tests/tools/test_prompt_tuning.sh: prompt tuning (peft PROMPT_TUNING) and P-tuning (P_TUNING)
# through the tools on the tiny llama: train-step trains and saves peft-layout adapters (plus
# ftk's prompt encoder for P-tuning), resume is bit-identical, eval and ref-logps read the
# adapter, generate --adapter equals peft's greedy generate, training goes on from peft's
# adapter, and the errors. The numbers against peft are in tests/unit/test_plugin_prompt_tuning.c.
. "$(dirname "$0")/lib.sh"
FIX="$ROOT/tests/fixtures/hf_tiny"
PT="$ROOT/tests/fixtures/peft_methods/prompt_tuning"

M="$FIX/llama"
fixture_stream "$M/expected.safetensors" 4 > "$T/b4.fts"
fixture_stream "$M/expected.safetensors" 1 > "$T/b1.fts"

text=(--finetuning-type prompt_tuning --peft-opt num_virtual_tokens=4 --peft-opt prompt_tuning_init=TEXT
      --peft-opt "prompt_tuning_init_text=the cat" --peft-opt "tokenizer_name_or_path=$PT/tokenizer"
      --lr 1e-2 --lr-scheduler constant --weight-decay 0.01 --seed 3)
check "prompt tuning (TEXT init), 4 steps, checkpoint at 3" ftk train-step --model "$M" "${text[@]}" --save-steps 3 \
    --output "$T/pt" --metrics "$T/m.jsonl" "$T/b4.fts"
check_eq "peft's files: adapter_config.json, prompt_embeddings (P, C)" \
    "$(jq -c '[.peft_type, .num_virtual_tokens, .token_dim, .prompt_tuning_init, .inference_mode]' "$T/pt/adapter_config.json") $(st_header "$T/pt/adapter_model.safetensors" | jq -c 'del(.__metadata__) | to_entries | map("\(.key)\(.value.shape)")')" \
    '["PROMPT_TUNING",4,16,"TEXT",true] ["prompt_embeddings[4,16]"]'
check_trained "$M" "$T/pt" "$T/b1.fts" "$T/m.jsonl"
check "resume from checkpoint-3" ftk train-step --model "$M" "${text[@]}" --resume "$T/pt/checkpoint-3" --output "$T/res" \
    --metrics /dev/null "$T/b4.fts"
check "resumed prompt is bit-identical" cmp "$T/pt/adapter_model.safetensors" "$T/res/adapter_model.safetensors"
check "and the optimizer moments" cmp "$T/pt/trainer_state.safetensors" "$T/res/trainer_state.safetensors"

lstm=(--finetuning-type p_tuning --peft-opt num_virtual_tokens=3 --peft-opt encoder_reparameterization_type=LSTM
      --peft-opt encoder_hidden_size=6 --peft-opt encoder_num_layers=2 --peft-opt encoder_dropout=0.2
      --lr 1e-2 --lr-scheduler constant --seed 5)
check "P-tuning (LSTM encoder, dropout 0.2), 4 steps, checkpoint at 3" ftk train-step --model "$M" "${lstm[@]}" \
    --save-steps 3 --output "$T/pl" --metrics "$T/ml.jsonl" "$T/b4.fts"
check_eq "peft's prompt_embeddings (the encoder's output) and ftk's encoder" \
    "$(st_header "$T/pl/adapter_model.safetensors" | jq -c '.prompt_embeddings.shape') $(st_header "$T/pl/ftk_prompt_encoder.safetensors" | jq -c 'del(.__metadata__) | keys | length')" \
    '[3,16] 21'
check "the loss falls" jq -se '.[0].loss > .[-1].loss' "$T/ml.jsonl"
check "resume from checkpoint-3" ftk train-step --model "$M" "${lstm[@]}" --resume "$T/pl/checkpoint-3" --output "$T/plr" \
    --metrics /dev/null "$T/b4.fts"
check "resumed encoder, output and moments are bit-identical" cmp "$T/pl/ftk_prompt_encoder.safetensors" "$T/plr/ftk_prompt_encoder.safetensors"
check "and the saved output" cmp "$T/pl/adapter_model.safetensors" "$T/plr/adapter_model.safetensors"
check "and the optimizer moments" cmp "$T/pl/trainer_state.safetensors" "$T/plr/trainer_state.safetensors"
check "train on from peft's P-tuning adapter (its prompt_embeddings train directly)" ftk train-step --model "$M" \
    --adapter "$PT/llama/ptune_mlp" --lr 1e-2 --max-steps 1 --output "$T/pd" --metrics /dev/null "$T/b4.fts"
check_eq "P_TUNING config kept, no encoder file" \
    "$(jq -c '[.peft_type, .encoder_reparameterization_type]' "$T/pd/adapter_config.json") $(test -e "$T/pd/ftk_prompt_encoder.safetensors" && echo encoder)" \
    '["P_TUNING","MLP"] '

# generate: peft's saved adapters (fixtures) and peft's greedy generate for the prompt
# input_ids[0,:5] of the fixture batch (tests/oracle/prompt_tuning.py's M.gen0)
example_stream '[50,57,34,34,61]' > "$T/ex.fts"
for want in "pt_random [1,21,15,8,21,15,8,21,46,42]" "pt_text [16,15,1,21,5,2,16,16,15,6]" \
            "ptune_mlp [47,54,38,47,4,55,38,47,4,28]" "ptune_lstm [21,5,21,17,1,1,1,1,50,21]"; do
    set -- $want
    check_eq "generate --adapter ($1) = peft's greedy generate" \
        "$(ftk generate --model "$M" --adapter "$PT/llama/$1" --max-new-tokens 10 --ignore-eos -q "$T/ex.fts" | jq -c .ids)" "$2"
done
check "generate with ftk's trained adapter" bash -c "ftk generate --model '$M' --adapter '$T/pl' --max-new-tokens 4 --ignore-eos '$T/ex.fts' | jq -e '.ids | length == 4'"

# ref-logps: the virtual tokens change the reference log-probs; the DPO batch's rows are padded
# (segment_ids 1, padding 0) as ftk pack writes them. Rows packing several documents (neat
# packing) are refused by the core: the virtual tokens would go before each document.
ftk dump --from-json < "$ROOT/tests/fixtures/pref/dpo_batch.jsonl" > "$T/dpo.fts"
check "ref-logps --adapter (padded rows)" ftk ref-logps --model "$M" --adapter "$PT/llama/pt_random" -q -o "$T/dpo_pt.fts" "$T/dpo.fts"
check "ref-logps base" ftk ref-logps --model "$M" -q -o "$T/dpo_base.fts" "$T/dpo.fts"
check "the adapter is applied" test "$(ftk dump "$T/dpo_pt.fts" | jq -c 'select(.kind=="batch") | .tensors.ref_logps')" \
    != "$(ftk dump "$T/dpo_base.fts" | jq -c 'select(.kind=="batch") | .tensors.ref_logps')"
check "eval --adapter of P-tuning (padded rows)" ftk eval --model "$M" --adapter "$PT/llama/ptune_lstm" -q "$T/dpo.fts"
echo '{"kind":"stream","meta":{"producer":"t","batches":"1"}}
{"kind":"batch","tensors":{"input_ids":[[5,6,7,8,9,10]],"labels":[[-100,6,7,-100,9,10]],"position_ids":[[0,1,2,0,1,2]],"segment_ids":[[1,1,1,2,2,2]]}}' \
    | ftk dump --from-json > "$T/neat.fts"
check_fail "neat-packed rows are refused" 1 "packs several documents" ftk eval --model "$M" --adapter "$PT/llama/pt_random" \
    -q "$T/neat.fts"

check_fail "bad option" 1 "num_virtual_tokens 0 outside" ftk train-step --model "$M" --finetuning-type prompt_tuning \
    --peft-opt num_virtual_tokens=0 --max-steps 1 "$T/b4.fts"
check_fail "unknown option" 1 "unknown option \"r\"" ftk train-step --model "$M" --finetuning-type p_tuning \
    --peft-opt num_virtual_tokens=2 --lora-rank 4 --max-steps 1 "$T/b4.fts"
check_fail "TEXT init with a hub name" 1 "tokenizer_name_or_path \"meta-llama/Llama-2-7b-hf\"" ftk train-step --model "$M" \
    --finetuning-type prompt_tuning --peft-opt num_virtual_tokens=2 --peft-opt prompt_tuning_init=TEXT \
    --peft-opt prompt_tuning_init_text=hi --peft-opt tokenizer_name_or_path=meta-llama/Llama-2-7b-hf --max-steps 1 "$T/b4.fts"
summary
