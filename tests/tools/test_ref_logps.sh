#!/usr/bin/env bash
# tests/tools/test_ref_logps.sh: ftk ref-logps on the tiny Llama: reference log-probs equal
# transformers' (tests/oracle/pref_losses.py), KL rows of KTO batches, pass-through of everything
# else, an adapter applied, -o, bounded memory, and the errors.
. "$(dirname "$0")/lib.sh"
FIX="$ROOT/tests/fixtures/hf_tiny/llama"
PREF="$ROOT/tests/fixtures/pref"

ftk dump --from-json < "$PREF/dpo_batch.jsonl" > "$T/dpo.fts"
ftk dump --from-json < "$PREF/kto_batch.jsonl" > "$T/kto.fts"
check "DPO batch" ftk ref-logps --model "$FIX" -q -o "$T/dpo_ref.fts" "$T/dpo.fts"
# transformers, base model (peft disable_adapter()): tests/fixtures/pref/steps.safetensors dpo.ref_logps
close() {   # close GOT WANT: every |got - want| < 1e-4 (ftk and torch differ by ~1e-7 relative)
    jq -en --argjson a "$1" --argjson b "$2" '[$a, $b] | transpose | map(.[0] - .[1] | length) | max < 1e-4' >/dev/null
}
check "ref_logps = transformers (1e-4)" close \
    "$(ftk dump "$T/dpo_ref.fts" | jq -c 'select(.kind=="batch") | .tensors.ref_logps')" \
    "[-26.1466885,-11.6882315,-31.1009331,-7.97933722]"
check_eq "everything else passes through" \
    "$(ftk dump "$T/dpo_ref.fts" | jq -c 'del(.tensors.ref_logps, .meta.ref_model, .meta.messages)')" \
    "$(ftk dump "$T/dpo.fts" | jq -c 'del(.meta.messages)')"
check_eq "the header names the reference" "$(ftk dump "$T/dpo_ref.fts" | jq -r 'select(.kind=="stream") | .meta.ref_model')" "$FIX"
check "KTO batch" ftk ref-logps --model "$FIX" -q -o "$T/kto_ref.fts" "$T/kto.fts"
# transformers: steps.safetensors kto.ref_logps, kto.kl_ref_logps
check "ref_logps and kl_ref_logps = transformers (1e-4)" close \
    "$(ftk dump "$T/kto_ref.fts" | jq -c 'select(.kind=="batch") | .tensors.ref_logps + .tensors.kl_ref_logps')" \
    "[-21.9656, -24.45707, -18.5278, -23.95146, -22.98168, -24.59225, -24.59118, -14.87531]"
# with the adapter the reference is the LoRA model: its chosen mean is TRL's logps/chosen of the step (-18.524193)
check "with --adapter" ftk ref-logps --model "$FIX" --adapter "$FIX/adapter" -q -o "$T/dpo_ad.fts" "$T/dpo.fts"
check "adapter applied: chosen mean = peft's logps/chosen" close \
    "$(ftk dump "$T/dpo_ad.fts" | jq -c 'select(.kind=="batch") | [.tensors.ref_logps[0:2] | add / 2]')" "[-18.5241926]"
check "re-run without --adapter on that output" ftk ref-logps --model "$FIX" -q -o "$T/dpo_re.fts" "$T/dpo_ad.fts"
check_eq "the header no longer names the old adapter" "$(ftk dump "$T/dpo_re.fts" | jq -c 'select(.kind=="stream") | [.meta.ref_model, .meta.ref_adapter]')" "[\"$FIX\",null]"
check_eq "stdout = -o, and threads do not change it" \
    "$(ftk ref-logps --model "$FIX" -q --threads 3 < "$T/dpo.fts" | ftk dump | md5sum)" "$(ftk dump "$T/dpo_ref.fts" | md5sum)"

# a packed pipeline: examples -> pack -> ref-logps, 500 batches in bounded memory
ftk dump --from-json < "$PREF/kto_examples.jsonl" | ftk pack --batch-size 4 > "$T/kb.fts"
check "pack | ref-logps (KTO)" bash -c "ftk ref-logps --model '$FIX' -q < '$T/kb.fts' > '$T/kb_ref.fts'"
check_eq "every KTO batch gets both" "$(ftk dump "$T/kb_ref.fts" | jq -c 'select(.kind=="batch") | [(.tensors.ref_logps|length), (.tensors.kl_ref_logps|length)]' | tr '\n' ' ')" "[4,4] [4,4] "
check_eq "end counts kept" "$(ftk dump "$T/kb_ref.fts" | jq -c 'select(.kind=="end") | [.meta.batches, .meta.examples]')" \
    "$(ftk dump "$T/kb.fts" | jq -c 'select(.kind=="end") | [.meta.batches, .meta.examples]')"
b=$(ftk dump --typed "$T/dpo.fts" | jq -c 'select(.kind=="batch")')
{ echo '{"kind":"stream","meta":{"producer":"t"}}'; for _ in $(seq 500); do echo "$b"; done; } | ftk dump --from-json > "$T/many.fts"
# the growth from 1 to 500 batches, not the absolute RSS (a CUDA build maps cuBLAS); not under
# AddressSanitizer, whose quarantine keeps freed memory
if [ -x /usr/bin/time ] && ! ldd "$FTK/ftk-ref-logps" 2>/dev/null | grep -q libasan; then
    /usr/bin/time -f %M -o "$T/rss1" ftk ref-logps --model "$FIX" -q --threads 1 "$T/dpo.fts" > /dev/null
    /usr/bin/time -f %M -o "$T/rss" ftk ref-logps --model "$FIX" -q --threads 1 "$T/many.fts" > "$T/many_ref.fts"
    check "500 batches: RSS within 8 MB of 1 batch's (streaming)" test $(($(cat "$T/rss") - $(cat "$T/rss1"))) -lt 8192
else
    ftk ref-logps --model "$FIX" -q --threads 1 "$T/many.fts" > "$T/many_ref.fts"
fi
check_eq "500 batches out" "$(ftk dump --shapes "$T/many_ref.fts" | jq -c 'select(.kind=="batch")' | wc -l)" "500"

# errors
check_fail "no --model" 2 "--model is required" ftk ref-logps "$T/dpo.fts"
check_fail "bad --threads" 2 "--threads wants an integer" ftk ref-logps --model "$FIX" --threads x "$T/dpo.fts"
check_fail "no such model" 1 "nosuch" ftk ref-logps --model "$T/nosuch" "$T/dpo.fts"
printf '{"kind":"stream","meta":{"producer":"t"}}\n{"kind":"example","tensors":{"input_ids":[1,2]}}\n' | ftk dump --from-json > "$T/ex.fts"
check_fail "an example stream" 1 "batch the stream with \`ftk pack\` first" ftk ref-logps --model "$FIX" "$T/ex.fts"
printf '{"kind":"stream","meta":{"producer":"t","vocab_size":"100000"}}\n' | ftk dump --from-json > "$T/vocab.fts"
check_fail "tokenizer larger than the vocab" 1 "100000 tokens" ftk ref-logps --model "$FIX" "$T/vocab.fts"
mkdir -p "$T/withtok" && cp "$FIX/"*.json "$FIX/model.safetensors" "$T/withtok/" && echo '{"model":{}}' > "$T/withtok/tokenizer.json"
printf '{"kind":"stream","meta":{"producer":"t","tokenizer_hash":"abcdef0123456789"}}\n' | ftk dump --from-json > "$T/hash.fts"
check_fail "tokenizer hash mismatch" 1 "tokenized with tokenizer abcdef012345" ftk ref-logps --model "$T/withtok" "$T/hash.fts"
printf '{"kind":"stream","meta":{"producer":"t"}}\n{"kind":"batch","tensors":{"input_ids":[[1,2,999]],"labels":[[1,2,3]],"position_ids":[[0,1,2]]}}\n' \
    | ftk dump --from-json > "$T/badid.fts"
check_fail "token id outside the vocab" 1 "999" ftk ref-logps --model "$FIX" "$T/badid.fts"
head -c 300 "$T/dpo.fts" > "$T/trunc.fts"
check_fail "a truncated stream" 1 "" ftk ref-logps --model "$FIX" "$T/trunc.fts"
ftk ref-logps --model "$FIX" -o "$T/failed.fts" "$T/badid.fts" 2>/dev/null
check "-o leaves nothing after a failure" bash -c "! ls '$T'/failed.fts* 2>/dev/null"
summary
