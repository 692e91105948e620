#!/usr/bin/env bash
# tests/tools/test_train_pref.sh: ftk train-step with the preference losses on the tiny Llama:
# one DPO and one KTO step equal TRL + peft (tests/oracle/pref_losses.py), offline ref_logps
# (ftk ref-logps) give byte-identical adapters to the online reference, --ref-model, orpo and
# simpo from a packed pipeline, and the errors.
. "$(dirname "$0")/lib.sh"
FIX="$ROOT/tests/fixtures/hf_tiny/llama"
PREF="$ROOT/tests/fixtures/pref"
close() {   # close GOT WANT: every |got - want| <= 1e-4 * max(1, |want|)
    jq -en --argjson a "$1" --argjson b "$2" \
        '[$a, $b] | transpose | map((.[0] - .[1] | length) <= 1e-4 * ([1, (.[1] | length)] | max)) | all' >/dev/null
}
ftk dump --from-json < "$PREF/dpo_batch.jsonl" > "$T/dpo.fts"
ftk dump --from-json < "$PREF/kto_batch.jsonl" > "$T/kto.fts"
L=(--model "$FIX" --adapter "$FIX/adapter" --lr 1e-2 --weight-decay 0.01 --lr-scheduler constant --threads 2)
m() { jq -c "[$1]" "$2"; }

# one step each = TRL + peft (steps.safetensors: dpo.loss, dpo.grad_norm, dpo.m.*; kto.*)
check "DPO step (online reference: adapter off)" ftk train-step "${L[@]}" --loss dpo --output "$T/dpo_on" --metrics "$T/dpo_on.jsonl" "$T/dpo.fts"
check "DPO: loss, grad_norm, rewards, logps = TRL" close \
    "$(m '.loss, .grad_norm, ."rewards/chosen", ."rewards/rejected", ."rewards/margins", ."logps/chosen", ."logps/rejected"' "$T/dpo_on.jsonl")" \
    "[0.75380817, 0.961223, 0.0393267, 0.156262, -0.116935, -18.524193, -17.977518]"
check "KTO step (online reference and KL rows)" ftk train-step "${L[@]}" --loss kto --output "$T/kto_on" --metrics "$T/kto_on.jsonl" "$T/kto.fts"
check "KTO: loss, grad_norm, kl, rewards, logps = TRL" close \
    "$(m '.loss, .grad_norm, .kl, ."rewards/chosen", ."rewards/rejected", ."rewards/margins", ."logps/chosen", ."logps/rejected"' "$T/kto_on.jsonl")" \
    "[0.51464771, 0.163554, 0.5375308, -0.0199244, 0.0974094, -0.1173338, -20.445946, -23.230168]"

# offline == online, byte for byte: 4 steps, grad-accum 2, DPO and KTO
b=$(ftk dump --typed "$T/dpo.fts" | jq -c 'select(.kind=="batch")')
{ echo '{"kind":"stream","meta":{"producer":"t","batches":"8"}}'; for _ in $(seq 8); do echo "$b"; done; } | ftk dump --from-json > "$T/dpo8.fts"
check "ref-logps (DPO, 8 batches)" bash -c "ftk ref-logps --model '$FIX' -q < '$T/dpo8.fts' > '$T/dpo8_ref.fts'"
S=(--grad-accum 2 --lr-scheduler linear --warmup-steps 1)
check "DPO online, 4 steps" ftk train-step "${L[@]}" "${S[@]}" --loss dpo --loss-opt beta=0.3 --output "$T/on8" --metrics "$T/on8.jsonl" "$T/dpo8.fts"
check "DPO offline, 4 steps" ftk train-step "${L[@]}" "${S[@]}" --loss dpo --loss-opt beta=0.3 --output "$T/off8" --metrics "$T/off8.jsonl" "$T/dpo8_ref.fts"
check "DPO: offline adapter byte-identical to online" cmp "$T/on8/adapter_model.safetensors" "$T/off8/adapter_model.safetensors"
check "DPO: and the optimizer state" cmp "$T/on8/trainer_state.safetensors" "$T/off8/trainer_state.safetensors"
check_eq "DPO: the same losses and metrics" "$(jq -c 'del(.tokens_per_s, .elapsed_s)' "$T/on8.jsonl")" "$(jq -c 'del(.tokens_per_s, .elapsed_s)' "$T/off8.jsonl")"
check "--ref-model (the base as a second model)" ftk train-step "${L[@]}" "${S[@]}" --loss dpo --loss-opt beta=0.3 --ref-model "$FIX" --output "$T/rm8" --metrics /dev/null "$T/dpo8.fts"
check "--ref-model: byte-identical too" cmp "$T/on8/adapter_model.safetensors" "$T/rm8/adapter_model.safetensors"
b=$(ftk dump --typed "$T/kto.fts" | jq -c 'select(.kind=="batch")')
{ echo '{"kind":"stream","meta":{"producer":"t","batches":"4"}}'; for _ in $(seq 4); do echo "$b"; done; } | ftk dump --from-json > "$T/kto4.fts"
check "ref-logps (KTO, with KL rows)" bash -c "ftk ref-logps --model '$FIX' -q < '$T/kto4.fts' > '$T/kto4_ref.fts'"
check "KTO online" ftk train-step "${L[@]}" "${S[@]}" --loss kto --output "$T/kon" --metrics "$T/kon.jsonl" "$T/kto4.fts"
check "KTO offline" ftk train-step "${L[@]}" "${S[@]}" --loss kto --output "$T/koff" --metrics "$T/koff.jsonl" "$T/kto4_ref.fts"
check "KTO: offline adapter byte-identical to online" cmp "$T/kon/adapter_model.safetensors" "$T/koff/adapter_model.safetensors"
check_eq "KTO: the same losses and metrics" "$(jq -c 'del(.tokens_per_s, .elapsed_s)' "$T/kon.jsonl")" "$(jq -c 'del(.tokens_per_s, .elapsed_s)' "$T/koff.jsonl")"

# a packed pipeline: pairwise examples -> pack -> ref-logps -> train-step, every loss
ftk dump --from-json < "$PREF/pairwise_examples.jsonl" | ftk pack --batch-size 2 > "$T/pairs.fts"
ftk ref-logps --model "$FIX" -q < "$T/pairs.fts" > "$T/pairs_ref.fts"
for spec in "dpo loss_type=sigmoid" "dpo loss_type=hinge" "dpo loss_type=ipo" "dpo loss_type=kto_pair" \
            "dpo label_smoothing=0.1" "dpo pref_ftx=1.0" "orpo beta=0.1" "simpo beta=2.0" "simpo gamma=1.0"; do
    set -- $spec
    check "pack | ref-logps | train-step --loss $1 $2" ftk train-step --model "$FIX" --lora-rank 4 --lr 1e-3 --loss "$1" --loss-opt "$2" \
        --metrics "$T/p.jsonl" "$T/pairs_ref.fts"
done
check_eq "orpo logs sft_loss and odds_ratio_loss" "$(ftk train-step --model "$FIX" --loss orpo "$T/pairs.fts" | jq -c '[has("sft_loss"), has("odds_ratio_loss")]' | sort -u)" "[true,true]"
ftk dump --from-json < "$PREF/kto_examples.jsonl" | ftk pack --batch-size 4 > "$T/kb.fts"
check "pack | train-step --loss kto (KTO weights)" ftk train-step --model "$FIX" --lora-rank 4 --loss kto \
    --loss-opt undesirable_weight=1.33 --metrics "$T/k.jsonl" "$T/kb.fts"
check_eq "kto: 2 steps, kl logged" "$(jq -c 'has("kl")' "$T/k.jsonl" | tr '\n' ' ')" "true true "

# errors
check_fail "full fine-tuning, no ref_logps, no --ref-model" 1 "the batch has no ref_logps: run the stream through \`ftk ref-logps\`, or give --ref-model" \
    ftk train-step --model "$FIX" --finetuning-type full --loss dpo "$T/dpo.fts"
check "full fine-tuning with ref_logps from the stream" ftk train-step --model "$FIX" --finetuning-type full --loss dpo --metrics /dev/null "$T/dpo8_ref.fts"
check "full fine-tuning with --ref-model" ftk train-step --model "$FIX" --finetuning-type full --loss dpo --ref-model "$FIX" --max-steps 1 --metrics /dev/null "$T/dpo.fts"
check_fail "KTO full fine-tuning: the KL rows need a reference too" 1 "no ref_logps" \
    ftk train-step --model "$FIX" --finetuning-type freeze --loss kto "$T/kto.fts"
fb=$(jq -c '.' "$ROOT/tests/fixtures/pref/dpo_batch.jsonl" | sed -n 2p | jq -c '.meta = {}')
printf '{"kind":"stream","meta":{"producer":"t","batches":"1"}}\n%s\n' "$fb" | ftk dump --from-json > "$T/notpair.fts"
check_fail "dpo on a batch that is not pairwise" 1 "dpo needs pairwise batches" ftk train-step --model "$FIX" --loss dpo "$T/notpair.fts"
check_fail "kto on a pairwise batch" 1 "kto needs KTO batches" ftk train-step --model "$FIX" --loss kto "$T/dpo.fts"
check_fail "unknown loss option" 1 "dpo: unknown option bta" ftk train-step --model "$FIX" --loss dpo --loss-opt bta=1 "$T/dpo.fts"
check_fail "bad loss_type" 1 "loss_type=sigmod" ftk train-step --model "$FIX" --loss dpo --loss-opt loss_type=sigmod "$T/dpo.fts"
check_fail "--ref-model with another vocabulary" 1 "has a vocabulary of" \
    ftk train-step --model "$FIX" --loss dpo --ref-model "$ROOT/models/stories260K" "$T/dpo.fts"
summary
