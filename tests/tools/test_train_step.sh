#!/usr/bin/env bash
# tests/tools/test_train_step.sh: ftk train-step end to end on the tiny HF fixtures:
# the loss curve of transformers+peft reproduced, resume bit-identical, full and freeze
# checkpoints in HF layout, a fresh LoRA that learns, and the errors.
. "$(dirname "$0")/lib.sh"
FIX="$ROOT/tests/fixtures/hf_tiny"

# ARCH N: a stream of N copies of the fixture batch of ARCH's expected.safetensors
# (tests/oracle/hf_tiny_models.py)
batches() { fixture_stream "$FIX/$1/expected.safetensors" "$2"; }

batches llama 3 > "$T/b3.fts"
check "3 steps from the peft adapter" ftk train-step --model "$FIX/llama" --adapter "$FIX/llama/adapter" --lr 1e-2 \
    --weight-decay 0.01 --warmup-steps 1 --output "$T/a3" --metrics "$T/m3.jsonl" "$T/b3.fts"
# transformers+peft: lora.loss1..3 = 4.790599, 4.790599, 4.380144 (tests/fixtures/hf_tiny/llama)
check_eq "loss curve equals transformers+peft" "$(jq -r '.loss * 1e5 | round' "$T/m3.jsonl" | tr '\n' ' ')" "479060 479060 438014 "
check_eq "lr follows the linear schedule with 1 warmup step" "$(jq -c '.lr' "$T/m3.jsonl" | tr '\n' ' ')" "0 0.01 0.005 "
# HF: warmup_steps > 0 wins over warmup_ratio, whatever the order of the flags (4 steps, 2 warmup)
batches llama 4 > "$T/b4l.fts"
for w in "--warmup-steps 2 --warmup-ratio 0.25" "--warmup-ratio 0.5 --warmup-steps 0"; do
    check_eq "lr with $w" "$(ftk train-step --model "$FIX/llama" --lora-rank 4 --lr 1e-2 $w -q "$T/b4l.fts" | jq -c .lr | tr '\n' ' ')" \
        "0 0.005 0.01 0.005 "
done
# gradient accumulation draws fresh dropout masks per micro-batch, as torch does: one step over
# two copies of a batch (grad-accum 2) is not the step over one copy with one mask
batches llama 1 > "$T/b1l.fts"; batches llama 2 > "$T/b2l.fts"
dopts=(--model "$FIX/llama" --lora-rank 4 --lora-dropout 0.5 --lr 1e-2 --lr-scheduler constant --seed 3 --max-steps 1 --metrics /dev/null)
check "dropout 0.5, one batch" ftk train-step "${dopts[@]}" --output "$T/d1" "$T/b1l.fts"
check "dropout 0.5, the batch twice, grad-accum 2" ftk train-step "${dopts[@]}" --grad-accum 2 --output "$T/d2" "$T/b2l.fts"
check "  the two micro-batches had different masks" bash -c "! cmp -s '$T/d1/adapter_model.safetensors' '$T/d2/adapter_model.safetensors'"
check "adapter in peft layout" test -f "$T/a3/adapter_config.json" -a -f "$T/a3/adapter_model.safetensors" -a -f "$T/a3/trainer_state.safetensors"
check_eq "adapter config says LORA" "$(jq -r '.peft_type + " r=" + (.r|tostring)' "$T/a3/adapter_config.json")" "LORA r=4"

# resume: 4 steps straight == 2 steps, checkpoint, then resume for the rest (bit-identical)
batches qwen3 4 > "$T/b4.fts"
opts=(--model "$FIX/qwen3" --lora-rank 4 --lora-dropout 0.1 --lr 5e-3 --lr-scheduler cosine --warmup-ratio 0.25 --seed 7)
check "straight run" ftk train-step "${opts[@]}" --output "$T/straight" --metrics "$T/ms.jsonl" "$T/b4.fts"
check_eq "ftk_train_args.json: the warmup steps the ratio gave" "$(jq -c '[.warmup_steps, .max_steps]' "$T/straight/ftk_train_args.json")" "[1,4]"
check "interrupted run (checkpoint at step 2)" ftk train-step "${opts[@]}" --max-steps 4 --save-steps 2 --output "$T/part" --metrics /dev/null "$T/b4.fts"
check "checkpoint-2 written" test -f "$T/part/checkpoint-2/trainer_state.safetensors"
check "resume from checkpoint-2" ftk train-step "${opts[@]}" --resume "$T/part/checkpoint-2" --output "$T/resumed" --metrics "$T/mr.jsonl" "$T/b4.fts"
check "resumed adapter is bit-identical" cmp "$T/straight/adapter_model.safetensors" "$T/resumed/adapter_model.safetensors"
check "and so are the optimizer moments" cmp "$T/straight/trainer_state.safetensors" "$T/resumed/trainer_state.safetensors"
check_eq "resumed run logs steps 3 and 4" "$(jq -c .step "$T/mr.jsonl" | tr '\n' ' ')" "3 4 "
check_fail "resume with another --grad-accum" 1 "made with --grad-accum 1" ftk train-step "${opts[@]}" --grad-accum 2 \
    --resume "$T/part/checkpoint-2" --output "$T/resumed2" --metrics /dev/null "$T/b4.fts"

# a fresh LoRA (random init, B = 0) learns the batch
batches mistral 30 > "$T/b30.fts"
check "fresh LoRA, 30 steps" ftk train-step --model "$FIX/mistral" --lora-rank 8 --lr 2e-2 --lr-scheduler constant \
    --output "$T/fresh" --metrics "$T/mf.jsonl" "$T/b30.fts"
check "loss falls by more than half" jq -se '(.[0].loss) > 2 * (.[-1].loss)' "$T/mf.jsonl"

# full and freeze write HF model directories that load again
check "full fine-tuning" ftk train-step --model "$FIX/qwen2" --finetuning-type full --lr 1e-3 --output "$T/full" --metrics /dev/null "$T/b3.fts"
check "full: HF layout" test -f "$T/full/model.safetensors" -a -f "$T/full/config.json"
check "full: the result loads and trains" ftk train-step --model "$T/full" --lr 1e-3 --max-steps 1 --metrics /dev/null "$T/b3.fts"
# full fine-tuning of a bfloat16 base: checkpoints keep the F32 weights, so resume is exact
mkdir -p "$T/bf16" && cp "$FIX/qwen2/"*.json "$FIX/qwen2/model.safetensors" "$T/bf16/"
jq '.dtype = "bfloat16"' "$FIX/qwen2/config.json" > "$T/bf16/config.json"
batches qwen2 4 > "$T/b4q.fts"
fo=(--model "$T/bf16" --finetuning-type full --lr 1e-3 --metrics /dev/null)
check "full, bf16 base: straight" ftk train-step "${fo[@]}" --output "$T/fs" "$T/b4q.fts"
check "full, bf16 base: checkpoint at 2" ftk train-step "${fo[@]}" --save-steps 2 --output "$T/fp" "$T/b4q.fts"
check "full, bf16 base: resume" ftk train-step "${fo[@]}" --resume "$T/fp/checkpoint-2" --output "$T/fr" "$T/b4q.fts"
check "full, bf16 base: resumed model bit-identical" cmp "$T/fs/model.safetensors" "$T/fr/model.safetensors"
check "full, bf16 base: and the moments" cmp "$T/fs/trainer_state.safetensors" "$T/fr/trainer_state.safetensors"
check_eq "full, bf16 base: the result in bfloat16" "$(st_header "$T/fs/model.safetensors" | jq -r '[.[] | .dtype? // empty] | unique | join(",")')" "BF16"
check "freeze (last layer)" ftk train-step --model "$FIX/llama" --finetuning-type freeze --freeze-trainable-layers 1 \
    --lr 1e-3 --output "$T/frz" --metrics "$T/mz.jsonl" "$T/b3.fts"
check_eq "freeze: 3 steps" "$(wc -l < "$T/mz.jsonl")" "3"

# errors
check_fail "no --model" 2 "--model is required" ftk train-step "$T/b3.fts"
check_fail "bad --lr" 2 "--lr wants a number" ftk train-step --model "$FIX/llama" --lr abc
check_fail "--threads beyond an int (it wrapped to 1)" 2 "--threads" ftk train-step --model "$FIX/llama" --threads 4294967297 --max-steps 1 "$T/b3.fts"
check_fail "unknown plugin" 1 "peft plugin \"nosuch\" not found" ftk train-step --model "$FIX/llama" --finetuning-type nosuch "$T/b3.fts"
check_fail "unknown loss" 1 "loss plugin \"nope\" not found" ftk train-step --model "$FIX/llama" --loss nope "$T/b3.fts"
check_fail "bad LoRA option" 1 "lora_dropout=2" ftk train-step --model "$FIX/llama" --lora-dropout 2 "$T/b3.fts"
printf '{"kind":"stream","meta":{"producer":"t"}}\n{"kind":"batch","tensors":{"input_ids":[[1,2,999]],"labels":[[1,2,3]],"position_ids":[[0,1,2]]}}\n' \
    | ftk dump --from-json > "$T/badid.fts"
check_fail "token id outside the vocab" 1 "token id 999 outside the vocabulary" ftk train-step --model "$FIX/llama" --max-steps 1 "$T/badid.fts"
check_fail "no batch count and no --max-steps" 1 "give --max-steps" ftk train-step --model "$FIX/llama" "$T/badid.fts"
printf '{"kind":"stream","meta":{"producer":"t","batches":"0"}}\n' | ftk dump --from-json > "$T/zero.fts"
check_fail "a stream of 0 batches" 1 "no batch to train on" ftk train-step --model "$FIX/llama" "$T/zero.fts"
check_fail "negative weight decay (torch refuses it)" 1 "weight_decay -0.1" ftk train-step --model "$FIX/llama" --weight-decay -0.1 "$T/b3.fts"
printf '{"kind":"stream","meta":{"producer":"t","vocab_size":"100000"}}\n' | ftk dump --from-json > "$T/vocab.fts"
check_fail "tokenizer larger than the model's vocab" 1 "100000 tokens" ftk train-step --model "$FIX/llama" --max-steps 1 "$T/vocab.fts"
mkdir -p "$T/withtok" && cp "$FIX/llama/"*.json "$FIX/llama/model.safetensors" "$T/withtok/" && echo '{"model":{}}' > "$T/withtok/tokenizer.json"
printf '{"kind":"stream","meta":{"producer":"t","tokenizer_hash":"abcdef0123456789"}}\n' | ftk dump --from-json > "$T/hash.fts"
check_fail "tokenizer hash mismatch" 1 "tokenized with tokenizer abcdef012345" ftk train-step --model "$T/withtok" --max-steps 1 "$T/hash.fts"
printf '{"kind":"stream","meta":{"producer":"t"}}\n{"kind":"example","tensors":{"input_ids":[1,2]}}\n' | ftk dump --from-json > "$T/ex.fts"
check_fail "an example stream" 1 "batch the stream with \`ftk pack\` first" ftk train-step --model "$FIX/llama" --max-steps 1 "$T/ex.fts"
check_fail "adapter for another model" 1 "adapter for another base" ftk train-step --model "$FIX/llama" --adapter "$FIX/qwen3/adapter" --max-steps 1 "$T/b3.fts"
check "more --max-steps than the data has" ftk train-step --model "$FIX/llama" --max-steps 5 --metrics "$T/short.jsonl" "$T/b3.fts"
check_eq "  stops when the data ends, and says so" "$(wc -l < "$T/short.jsonl") $(grep -c 'the data ended after 3 of 5 steps' "$T/err")" "3 1"
check_fail "a LoRA rank out of range says the range" 1 "r=100000 must be from 1 to 65536" \
    ftk train-step --model "$FIX/llama" --lora-rank 100000 --max-steps 1 "$T/b3.fts"
many=(); for i in $(seq 64); do many+=(--peft-opt "k$i=1"); done; for i in $(seq 65); do many+=(--loss-opt "l$i=1"); done
check_fail "64 peft and 65 loss options: too many (the 129th overran its array)" 2 "too many options" \
    ftk train-step --model "$FIX/llama" "${many[@]}" "$T/b3.fts"
check "no partial output after a failed run" test ! -e "$T/failed"
ftk train-step --model "$FIX/llama" --max-steps 1 --output "$T/failed" "$T/badid.fts" 2>/dev/null
check "still none" bash -c "! ls -d '$T'/failed* 2>/dev/null"
summary
