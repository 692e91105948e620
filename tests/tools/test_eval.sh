#!/usr/bin/env bash
# tests/tools/test_eval.sh: ftk eval, every mode against an outside oracle:
#   loss        the tiny HF llama fixture batch: transformers' loss, without and with the peft
#               adapter (tests/oracle/hf_tiny_models.py)
#   preference  the DPO batch of tests/fixtures/pref: TRL 1.16's rewards and log-probs
#               (tests/oracle/pref_losses.py), reference = the base (adapter off), ref-logps, --ref-model
#   choice      stories260K on hand-made questions: LLaMA-Factory 0.9.5's evaluator prompts and
#               transformers' logits (tests/oracle/eval_choice.py)
#   generation  stories260K greedy continuations equal transformers' generate (checked when the
#               answers in tests/fixtures/eval/qa.jsonl were written)
# and the errors.
. "$(dirname "$0")/lib.sh"
FIX="$ROOT/tests/fixtures"
HF="$FIX/hf_tiny"
M="$ROOT/models/stories260K"
EV="$FIX/eval"

# loss: the fixture batch of hf_tiny/llama twice, as a stream
{ echo '{"kind":"stream","meta":{"producer":"test"}}'; fixture_batch "$HF/llama/expected.safetensors"
  fixture_batch "$HF/llama/expected.safetensors"; } | ftk dump --from-json > "$T/b.fts"
check "loss: base model" ftk eval --model "$HF/llama" --per-example "$T/rows.jsonl" "$T/b.fts"
cp "$T/out" "$T/loss.json"
# transformers: loss 4.582889 (base), 4.790599 (peft adapter) on this batch
check_eq "loss = transformers' token-mean CE" "$(jq '.loss * 1e5 | round' "$T/loss.json")" "458289"
check_eq "perplexity = exp(loss)" "$(jq '(.perplexity - (.loss | exp)) | fabs < 1e-9' "$T/loss.json")" "true"
check_eq "counts" "$(jq -c '[.mode, .tokens, .rows, .batches]' "$T/loss.json")" '["loss",16,4,2]'
check_eq "per-example rows" "$(jq -s 'length' "$T/rows.jsonl") $(jq -s 'map(.nll) | add / 2 * 1e4 | round' "$T/rows.jsonl")" \
    "4 $(jq '.loss * 8 * 1e4 | round' "$T/loss.json")"
check_eq "loss: with the peft adapter" "$(ftk eval --model "$HF/llama" --adapter "$HF/llama/adapter" "$T/b.fts" | jq '.loss * 1e5 | round')" "479060"
check_eq "loss from stdin" "$(ftk eval --model "$HF/llama" < "$T/b.fts" | jq '.loss * 1e5 | round')" "458289"
# tie_word_embeddings with a stored lm_head.weight that differs: transformers 5 keeps that head
mkdir -p "$T/tied" && cp "$HF/llama/model.safetensors" "$T/tied/" && jq '.tie_word_embeddings = true' "$HF/llama/config.json" > "$T/tied/config.json"
check_eq "a tied config with its own stored lm_head uses that head (as transformers 5)" \
    "$(ftk eval --model "$T/tied" "$T/b.fts" | jq '.loss * 1e5 | round')" "458289"
stream_first_byte 32 "$(fixture_batch "$HF/llama/expected.safetensors")" > "$T/b32.fts"   # 288-byte header: ' ' first
check_eq "an uncompressed stream starting with ' ' is a stream (--mode auto, a pipe)" \
    "$(cat "$T/b32.fts" | ftk eval --model "$HF/llama" | jq '.loss * 1e5 | round')" "458289"

# preference: TRL's DPO metrics of this batch with the llama adapter, reference = base
ftk dump --from-json < "$FIX/pref/dpo_batch.jsonl" > "$T/dpo.fts"
trl='[0.03933, -0.11693, 0.15626, -18.52419, -17.97752, 0]'
metrics='[."rewards/chosen", ."rewards/margins", ."rewards/rejected", ."logps/chosen", ."logps/rejected",
          ."rewards/accuracies"] | map(. * 1e5 | round / 1e5)'
check "preference: reference = the base (adapter off)" ftk eval --model "$HF/llama" --adapter "$HF/llama/adapter" \
    --per-example "$T/pairs.jsonl" "$T/dpo.fts"
check_eq "preference = TRL's DPO metrics" "$(jq -c "$metrics" "$T/out")" "$(jq -c . <<<"$trl")"
check_eq "mode chosen from the pairwise batch" "$(jq -r '.mode + " " + (.pairs|tostring)' "$T/out")" "preference 2"
check_eq "per-pair rewards" "$(jq -s -c 'map(."rewards/margin" * 1e2 | round)' "$T/pairs.jsonl")" "[-18,-5]"
check "ref-logps in the stream" ftk ref-logps --model "$HF/llama" -o "$T/dpo_ref.fts" "$T/dpo.fts"
check_eq "preference from ref_logps" "$(ftk eval --model "$HF/llama" --adapter "$HF/llama/adapter" "$T/dpo_ref.fts" | jq -c "$metrics")" "$(jq -c . <<<"$trl")"
check_eq "preference with --ref-model" "$(ftk eval --model "$HF/llama" --adapter "$HF/llama/adapter" --ref-model "$HF/llama" "$T/dpo.fts" | jq -c "$metrics")" "$(jq -c . <<<"$trl")"
check_eq "--beta scales the rewards" "$(ftk eval --model "$HF/llama" --adapter "$HF/llama/adapter" --beta 0.5 "$T/dpo.fts" | jq '."rewards/margins" * 1e5 | round')" "-58467"
check_eq "--mode loss on a pairwise stream" "$(ftk eval --mode loss --model "$HF/llama" "$T/dpo.fts" | jq -r .mode)" "loss"
check_fail "preference without a reference" 1 "has no ref_logps" ftk eval --model "$HF/llama" "$T/dpo.fts"

# multiple choice: LLaMA-Factory's evaluator (prompt lengths, predictions, probabilities)
i=1
for run in "empty 0 en" "alpaca 2 en" "vicuna 1 zh"; do
    set -- $run
    i=$((i + 1))
    check "choice: $1, $2-shot, $3" ftk eval --model "$M" --template "$1" --dev "$EV/mc_dev.csv" --n-shot "$2" --lang "$3" \
        --subject "mc test" --per-example "$T/mc.jsonl" "$EV/mc_test.jsonl"
    want=$(sed -n "${i}p" "$EV/choice_expected.jsonl" | jq -c '[.rows[] | [.prompt_tokens, .pred, (.probs[] * 1e5 | round)]]')
    check_eq "choice: $1 $2-shot $3 = LLaMA-Factory" "$(jq -s -c 'map([.prompt_tokens, .pred, (.probs[] * 1e5 | round)])' "$T/mc.jsonl")" "$want"
    check_eq "choice: $1 accuracy" "$(jq .accuracy "$T/out")" "$(sed -n "${i}p" "$EV/choice_expected.jsonl" | jq '[.rows[] | .pred == .answer] | map(select(.)) | length / 3')"
done
check_eq "choice: subject from the file name" "$(ftk eval --model "$M" --template empty "$EV/mc_test.jsonl" | jq -c '.subjects | keys')" '["mc"]'
check_eq "choice: csv input (MMLU layout without header)" \
    "$(tail -n +2 "$EV/mc_dev.csv" > "$T/x_test.csv"; ftk eval --model "$M" --template empty "$T/x_test.csv" | jq -c '[.mode, .total, (.subjects|keys)]')" \
    '["choice",2,["x"]]'
check_eq "choice: csv with a UTF-8 BOM, CRLF, quotes and commas = the same record as JSON" \
    "$(printf '\xef\xbb\xbfQuestion,A,B,C,D,Answer\r\n"Say ""hi"", then",x,"y,z","two\r\nlines",d,C\r\n' > "$T/bom.csv"
       ftk eval --model "$M" --template empty --per-example "$T/bom.jsonl" "$T/bom.csv" | jq -c '.subjects | keys'; jq -c .probs "$T/bom.jsonl")" \
    "$(echo '{"question":"Say \"hi\", then","A":"x","B":"y,z","C":"two\r\nlines","D":"d","answer":"C"}' > "$T/bom_q.jsonl"
       echo '["bom"]'; ftk eval --model "$M" --template empty --subject bom --per-example "$T/bom_q.out" "$T/bom_q.jsonl" > /dev/null; jq -c .probs "$T/bom_q.out")"
ftk eval --model "$M" --template empty --subject x --per-example "$T/num_s.jsonl" \
    <(echo '{"question":"q","A":"0.1","B":"2.5","C":"-3","D":"4","answer":"A"}') > /dev/null
check_eq "choice: numeric options are written as Python writes them (0.1, not 0.10000000000000001)" \
    "$(ftk eval --model "$M" --template empty --subject x --per-example /dev/stdout \
       <(echo '{"question":"q","A":0.1,"B":2.5,"C":-3,"D":"4","answer":"A"}') | head -1 | jq -c '[.prompt_tokens, .probs]')" \
    "$(jq -c '[.prompt_tokens, .probs]' "$T/num_s.jsonl")"
ftk eval --model "$M" --mode choice --template empty --subject x --per-example "$T/q7_s.jsonl" \
    <(echo '{"question":"7","choices":["a","b","c","d"],"answer":1}') > /dev/null
check_eq "choice: a numeric question beside a numeric answer" \
    "$(ftk eval --model "$M" --mode choice --template empty --subject x --per-example /dev/stdout \
       <(echo '{"question":7,"choices":["a","b","c","d"],"answer":1}') | head -1 | jq -c '[.prompt_tokens, .probs]')" \
    "$(jq -c '[.prompt_tokens, .probs]' "$T/q7_s.jsonl")"
check_eq "choice: the HF datasets layout (choices list) is told from its first record" \
    "$(ftk eval --model "$M" --template empty <(echo '{"question":"q","choices":["a","b","c","d"],"answer":1}') | jq -c '[.mode, .total]')" \
    '["choice",1]'

# generation: greedy continuations of stories260K (= transformers' generate)
check "generation" ftk eval --model "$M" --max-new-tokens 12 --per-example "$T/gen.jsonl" "$EV/qa.jsonl"
check_eq "generation: exact match and contains" "$(jq -c '[.mode, .exact_match, .contains, .total]' "$T/out")" '["generation",0.25,0.5,4]'
check_eq "generation: outputs" "$(jq -r .output "$T/gen.jsonl" | head -2 | tr '\n' '|')" ", there was a little girl named Lily. She|were playing in the park. They li|"
check_eq "generation: --ignore-case" "$(ftk eval --model "$M" --max-new-tokens 12 --ignore-case "$EV/qa.jsonl" | jq .contains)" "0.75"

# errors
check_fail "no --model" 2 "--model is required" ftk eval "$T/b.fts"
check_fail "bad --mode" 2 "unknown mode" ftk eval --model "$M" --mode nope "$T/b.fts"
check_fail "unknown template" 1 "no template \"nosuch\"" ftk eval --model "$M" --template nosuch "$EV/mc_test.jsonl"
check_fail "choice without a template" 1 "needs --template" ftk eval --model "$M" "$EV/mc_test.jsonl"
check_fail "prompt longer than the context" 1 "longer than the context (40)" \
    ftk eval --model "$M" --template empty --dev "$EV/mc_dev.csv" --n-shot 2 --context 40 "$EV/mc_test.jsonl"
check_fail "generation prompt without room" 1 "no room in the context (5)" ftk eval --model "$M" --context 5 "$EV/qa.jsonl"
check_fail "adapter for another base" 1 "adapter for another base" ftk eval --model "$HF/llama" --adapter "$HF/qwen3/adapter" "$T/b.fts"
printf '{"kind":"stream","meta":{"producer":"t","vocab_size":"100000"}}\n' | ftk dump --from-json > "$T/vocab.fts"
check_fail "a stream tokenized for a larger vocabulary" 1 "100000 tokens" ftk eval --model "$HF/llama" "$T/vocab.fts"
printf '{"kind":"stream","meta":{"producer":"t"}}\n{"kind":"example","tensors":{"input_ids":[1,2]}}\n' | ftk dump --from-json > "$T/ex.fts"
check_fail "an example stream" 1 "batch the stream with \`ftk pack\` first" ftk eval --model "$HF/llama" "$T/ex.fts"
check_fail "records for --mode loss" 1 "mc_test.jsonl" ftk eval --model "$M" --mode loss "$EV/mc_test.jsonl"
check_fail "a bad answer letter" 1 "\"answer\" must be one of A, B, C, D" \
    ftk eval --model "$M" --template empty <(echo '{"question":"q","A":"a","B":"b","answer":"E"}')
printf 'question,A,B,C,D,answer\n"open,a,b,c,d,A\n' > "$T/bad.csv"
check_fail "csv: a quote that never closes" 1 "bad.csv: row 2: a quoted field is not closed" ftk eval --model "$M" --template empty "$T/bad.csv"
# --per-example is written crash-safely: a failed run leaves the old file, the input may be it
echo old > "$T/keep.jsonl"
check_fail "a failed run" 1 "must be one of A, B, C, D" ftk eval --model "$M" --template empty --per-example "$T/keep.jsonl" \
    <(echo '{"question":"q","A":"a","B":"b","answer":"E"}')
check_eq "  leaves the old --per-example file" "$(cat "$T/keep.jsonl"; ls "$T" | grep -c 'keep.jsonl.tmp')" "old
0"
cp "$EV/qa.jsonl" "$T/qa_in.jsonl"
check_eq "--per-example may replace the input" \
    "$(ftk eval --model "$M" --max-new-tokens 12 --per-example "$T/qa_in.jsonl" "$T/qa_in.jsonl" | jq .total) $(jq -s length "$T/qa_in.jsonl")" "4 4"
check_eq "--version" "$(ftk eval --version)" "ftk-eval 0.1.0"
check "--help has examples" bash -c "ftk eval --help | grep -q 'Examples:'"
summary
