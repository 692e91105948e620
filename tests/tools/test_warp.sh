#!/usr/bin/env bash
# tests/tools/test_warp.sh: WARP (plugins/peft/warp.c) through the tools on the tiny llama:
# train-step in both modes (class: a batch labelling only class tokens), the adapter files, the
# loss falls, resume bit-identical, eval --adapter = the step's loss, generate --adapter (class
# mode generates classes only), and the errors (a label outside the classes, bad options). The
# numbers against the torch reference are in tests/unit/test_plugin_warp.c.
. "$(dirname "$0")/lib.sh"
FIX="$ROOT/tests/fixtures/hf_tiny"
M="$FIX/llama"

# Batch messages: the fixture batch (labels on arbitrary tokens) and a class batch (its answers
# are the classes 34, 38, 7; tests/oracle/warp.py's class batch).
ids='[[50,57,34,34,61,26,42,10],[23,43,49,44,58,62,32,7]]'
pos='[[0,1,2,3,4,5,6,7],[0,1,2,3,4,5,6,7]]'
stream() {   # N INPUT_IDS LABELS
    { printf '{"kind":"stream","meta":{"producer":"test","batches":"%s"}}\n' "$1"
      for _ in $(seq "$1"); do
          printf '{"kind":"batch","tensors":{"input_ids":%s,"labels":%s,"position_ids":%s}}\n' "$2" "$3" "$pos"
      done; } | ftk dump --from-json
}
stream 4 "$ids" '[[-100,-100,-100,34,61,26,42,10],[-100,-100,-100,-100,-100,62,32,7]]' > "$T/full4.fts"
stream 1 "$ids" '[[-100,-100,-100,34,61,26,42,10],[-100,-100,-100,-100,-100,62,32,7]]' > "$T/full1.fts"
cids='[[50,57,34,34,34,26,42,38],[23,43,49,44,58,7,32,34]]'
clab='[[-100,-100,-100,-100,34,-100,-100,38],[-100,-100,-100,-100,-100,7,-100,34]]'
stream 4 "$cids" "$clab" > "$T/class4.fts"
stream 1 "$cids" "$clab" > "$T/class1.fts"

for mode in class full; do
    args=(--finetuning-type warp --peft-opt num_virtual_tokens=3 --peft-opt verbalizer_ids=34,38,7 --peft-opt "mode=$mode"
          --lr 1e-2 --lr-scheduler constant --weight-decay 0.01 --seed 3)
    check "$mode mode: 4 steps, checkpoint at 3" ftk train-step --model "$M" "${args[@]}" --save-steps 3 \
        --output "$T/$mode" --metrics "$T/m_$mode.jsonl" "$T/${mode}4.fts"
    check_eq "$mode mode: adapter_config.json and adapter_model.safetensors" \
        "$(jq -c '[.peft_type, .num_virtual_tokens, .verbalizer_ids, .mode]' "$T/$mode/adapter_config.json") $(st_header "$T/$mode/adapter_model.safetensors" | jq -c 'del(.__metadata__) | to_entries | map("\(.key)\(.value.shape)")')" \
        "[\"WARP\",3,[34,38,7],\"$mode\"] [\"prompt_embeddings[3,16]\",\"verbalizer[3,16]\"]"
    check_trained "$M" "$T/$mode" "$T/${mode}1.fts" "$T/m_$mode.jsonl" "$mode mode: "
    check "$mode mode: resume from checkpoint-3" ftk train-step --model "$M" "${args[@]}" --resume "$T/$mode/checkpoint-3" \
        --output "$T/r_$mode" --metrics /dev/null "$T/${mode}4.fts"
    check "$mode mode: resumed prompt and verbalizer bit-identical" cmp "$T/$mode/adapter_model.safetensors" \
        "$T/r_$mode/adapter_model.safetensors"
    check "$mode mode: and the optimizer moments" cmp "$T/$mode/trainer_state.safetensors" "$T/r_$mode/trainer_state.safetensors"
done

example_stream '[50,57,34,34,61]' > "$T/ex.fts"
check "generate --adapter (full mode)" bash -c "ftk generate --model '$M' --adapter '$T/full' --max-new-tokens 4 --ignore-eos -q '$T/ex.fts' | jq -e '.ids | length == 4'"
check_eq "generate --adapter (class mode): classes only" \
    "$(ftk generate --model "$M" --adapter "$T/class" --max-new-tokens 4 --ignore-eos -q "$T/ex.fts" | jq -c '[.ids[] | IN(34, 38, 7)] | all')" \
    "true"

check_fail "class mode: a label outside the classes" 1 "row 0, position 4: label 61 is not one of the 3 classes" \
    ftk eval --model "$M" --adapter "$T/class" -q "$T/full1.fts"
check_fail "no classes" 1 "WARP needs its classes" ftk train-step --model "$M" --finetuning-type warp \
    --peft-opt num_virtual_tokens=2 --max-steps 1 "$T/full4.fts"
check_fail "bad mode" 1 "mode=softmax" ftk train-step --model "$M" --finetuning-type warp --peft-opt num_virtual_tokens=2 \
    --peft-opt verbalizer_ids=3 --peft-opt mode=softmax --max-steps 1 "$T/full4.fts"
summary
