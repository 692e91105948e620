#!/usr/bin/env bash
# tests/tools/test_generate.sh: ftk generate on the embedded stories260K model: greedy output
# equals transformers' (tests/fixtures/stories260k/greedy.jsonl), batching changes nothing,
# stop strings, streaming, example-stream input, seeded sampling, and the errors.
. "$(dirname "$0")/lib.sh"
M="$ROOT/models/stories260K"
G="$ROOT/tests/fixtures/stories260k/greedy.jsonl"

jq -c '{prompt}' "$G" > "$T/prompts.jsonl"
steps=$(( $(jq -s "map(.ids | length) | max" "$G") + 1 ))   # one more: room for the stopping BOS
check "greedy, batched" bash -c "ftk generate --model '$M' --max-new-tokens $steps --eos 1 --batch-size 8 '$T/prompts.jsonl' > '$T/out8.jsonl'"
check "greedy, one at a time" bash -c "ftk generate --model '$M' --max-new-tokens $steps --eos 1 --batch-size 1 '$T/prompts.jsonl' > '$T/out1.jsonl'"
# transformers stops each prompt after its own length; compare that prefix
check_eq "greedy ids equal transformers' for every prompt" \
    "$(jq -sc '[.[] | .ids]' "$G")" \
    "$(jq -sc --slurpfile g "$G" '[to_entries[] | .value.ids[0:($g[.key].ids | length)]]' "$T/out8.jsonl")"
check_eq "batch size does not change the output (timings aside)" "$(jq -c 'del(.prefill_s, .decode_s)' "$T/out1.jsonl")" \
    "$(jq -c 'del(.prefill_s, .decode_s)' "$T/out8.jsonl")"
check_eq "finish reason on BOS" "$(jq -r 'select(.prompt=="Zoo") | .finish_reason' "$T/out8.jsonl")" "stop"
check_eq "token counts" "$(jq -r 'select(.index==0) | "\(.prompt_tokens) \(.completion_tokens)"' "$T/out8.jsonl")" "5 $steps"
check_eq "text is the decoded ids" "$(jq -r 'select(.index==0) | .text[0:24]' "$T/out8.jsonl")" ", there was a little gir"

echo '{"prompt": "The little dog"}' > "$T/one.jsonl"
check_eq "stop string cuts the text" "$(ftk generate --model "$M" --max-new-tokens 50 --stop . "$T/one.jsonl" | jq -r '"\(.finish_reason): \(.text)"')" \
    "stop: was a little girl named Lily"
# an eos id that is a plain token (338 is " She") is decoded into the text, --stop given or not
check_eq "a plain-token eos is in the text with --stop too" \
    "$(ftk generate --model "$M" --max-new-tokens 12 --eos 338 --stop zzz "$T/one.jsonl" | jq -c '[.finish_reason, .text]')" \
    '["stop","was a little girl named Lily. She"]'
check "--stream prints the text" bash -c "ftk generate --model '$M' --max-new-tokens 20 --stream '$T/one.jsonl' > '$T/stream.txt'"
check_eq "streamed text equals the JSON text" "$(cat "$T/stream.txt")" \
    "$(ftk generate --model "$M" --max-new-tokens 20 "$T/one.jsonl" | jq -r .text)"
check_eq "--stream cuts at a stop string as the JSON text does" \
    "$(ftk generate --model "$M" --max-new-tokens 50 --stop . --stop "d L" --stream "$T/one.jsonl")" "was a little girl name"
# at temperature 50 about half the tokens are byte-fallback ones (<0x..>), decoded as U+FFFD until
# their group is valid UTF-8: what is streamed must still be the final text
hot() { ftk generate --model "$M" --max-new-tokens 30 --do-sample --temperature 50 --seed "$1" "${@:2}" "$T/one.jsonl"; }
check_eq "--stream of byte-fallback tokens equals the JSON text" \
    "$(for s in 1 3 4; do hot $s --stream | od -c; done)" "$(for s in 1 3 4; do hot $s | jq -r .text | od -c; done)"
check_eq "--stream with --batch-size 1" "$(ftk generate --model "$M" --max-new-tokens 20 --stream --batch-size 1 "$T/one.jsonl")" "$(cat "$T/stream.txt")"
check_eq "--stream with more prompts than a batch: JSON for all" \
    "$(head -3 "$T/prompts.jsonl" | ftk generate --model "$M" --max-new-tokens 5 --stream --batch-size 2 | jq -c .index | tr '\n' ' ')" "0 1 2 "
a=$(ftk generate --model "$M" --max-new-tokens 20 --do-sample --temperature 0.9 --top-k 40 --seed 5 "$T/one.jsonl" | jq -c .ids)
b=$(ftk generate --model "$M" --max-new-tokens 20 --do-sample --temperature 0.9 --top-k 40 --seed 5 "$T/one.jsonl" | jq -c .ids)
check_eq "a seed repeats its sample" "$a" "$b"
sample() { ftk generate --model "$M" --max-new-tokens 10 --do-sample --seed 3 --batch-size "$1" "$T/prompts.jsonl" | jq -c .ids; }
check_eq "sampling: the batch size does not change the output" "$(sample 1)" "$(sample 3)"
# an example stream: the prompt is the unlabelled prefix
printf '{"kind":"stream","meta":{"producer":"t"}}\n{"kind":"example","tensors":{"input_ids":[1,403,407,261,378,432,383],"labels":[-100,-100,-100,-100,-100,432,383]}}\n' \
    | ftk dump --from-json > "$T/ex.fts"
check_eq "example stream input" "$(ftk generate --model "$M" --max-new-tokens 5 "$T/ex.fts" | jq -c '.ids')" \
    "$(jq -c 'select(.index == null) // . | select(.prompt == "Once upon a time") | .ids[0:5]' "$G")"

# a row that fills the context stops ("length") while a shorter one goes on, in one batch
printf '{"prompt": "Once upon a time there was a little girl named Lily"}\n{"prompt": "Once"}\n' > "$T/two.jsonl"
check "batched rows reaching the context at different steps" bash -c \
    "ftk generate --model '$M' --context 24 --max-new-tokens 40 --ignore-eos --batch-size 2 '$T/two.jsonl' > '$T/ctx2.jsonl'"
check_eq "  each row fills the context" "$(jq -c '[.finish_reason, .prompt_tokens + .completion_tokens]' "$T/ctx2.jsonl" | tr '\n' ' ')" \
    '["length",24] ["length",24] '
check_eq "  the same as one at a time" "$(jq -c .ids "$T/ctx2.jsonl")" \
    "$(ftk generate --model "$M" --context 24 --max-new-tokens 40 --ignore-eos --batch-size 1 "$T/two.jsonl" | jq -c .ids)"

printf '\r\n{"prompt": "The little dog"}\r\n' > "$T/crlf.jsonl"
check_eq "JSON lines with CRLF and a blank first line" "$(ftk generate --model "$M" --max-new-tokens 20 "$T/crlf.jsonl" | jq -r .text)" "$(cat "$T/stream.txt")"

# an uncompressed stream whose header length is 288 starts with ' ', as JSON lines may
stream_first_byte 32 '{"kind":"example","tensors":{"input_ids":[1,403,407,261,378,432,383],"labels":[-100,-100,-100,-100,-100,432,383]}}' \
    > "$T/ex32.fts"
check_eq "an uncompressed stream starting with ' ' is read as a stream (from a pipe)" \
    "$(cat "$T/ex32.fts" | ftk generate --model "$M" --max-new-tokens 5 | jq -c '.ids')" \
    "$(ftk generate --model "$M" --max-new-tokens 5 "$T/ex.fts" | jq -c '.ids')"

# prompts from a pipe are answered as they arrive (not when 4 KiB of input have come)
mkfifo "$T/fifo"
ftk generate --model "$M" --batch-size 1 --max-new-tokens 4 < "$T/fifo" > "$T/piped.jsonl" &
gen=$!
exec 3>"$T/fifo"
echo '{"prompt": "Once upon a time"}' >&3
for i in $(seq 1 200); do [ -s "$T/piped.jsonl" ] && break; sleep 0.1; done
first=$(wc -l < "$T/piped.jsonl")
echo '{"prompt": "The dog"}' >&3
exec 3>&-
wait $gen
check_eq "a piped prompt is answered before the next one arrives" "$first $(wc -l < "$T/piped.jsonl")" "1 2"

# OpenBLAS's fallback to generic kernels on a CPU it does not recognise (libcore/blas_core.c):
# with AVX2 the tool runs on kernels of that generation, unless the user chose some
if grep -q ' avx2 ' /proc/cpuinfo && [ -z "${OPENBLAS_CORETYPE:-}" ]; then
    core=$(OPENBLAS_VERBOSE=2 ftk generate --model "$M" --max-new-tokens 1 "$T/one.jsonl" 2>&1 >/dev/null | grep '^Core:' | tail -1)
    check "OpenBLAS kernels of the CPU's generation ($core)" bash -c "! grep -qE 'Prescott|Core2|Penryn|Dunnington|Nehalem|Atom|Sandybridge' <<<'$core'"
fi
check_eq "OPENBLAS_CORETYPE given is kept" \
    "$(OPENBLAS_CORETYPE=Prescott OPENBLAS_VERBOSE=2 ftk generate --model "$M" --max-new-tokens 1 "$T/one.jsonl" 2>&1 >/dev/null | grep '^Core:' | sort -u)" "Core: Prescott"

check_fail "no --model" 2 "--model is required" ftk generate "$T/one.jsonl"
check_fail "bad --top-p" 2 "--top-p 2 is not in [0, 1]" ftk generate --model "$M" --top-p 2
check_eq "  said once" "$(ftk generate --model "$M" --top-p 2 2>&1 | grep -c error)" "1"
check_fail "a seed is a whole number" 2 "--seed wants a whole number >= 0, got '1.5'" ftk generate --model "$M" --seed 1.5
a=$(ftk generate --model "$M" --max-new-tokens 8 --do-sample --seed 18446744073709551615 "$T/one.jsonl" | jq -c .ids)
b=$(ftk generate --model "$M" --max-new-tokens 8 --do-sample --seed 18446744073709551614 "$T/one.jsonl" | jq -c .ids)
check "seeds above 2^53 are exact (2^64-1 and 2^64-2 differ)" test "$a" != "$b"
check_fail "too many --eos" 2 "too many --eos" ftk generate --model "$M" $(printf -- '--eos %d ' $(seq 1 17)) "$T/one.jsonl"
check_fail "prompt longer than the context" 1 "prompt 0 has 5 tokens, the context is 4" ftk generate --model "$M" --context 4 "$T/one.jsonl"
printf '{"prompt": "a"}\n\n{"prompt": "Once"}\n{"prompt": "Once upon a time there was"}\n' > "$T/long.jsonl"
check_fail "a long prompt in a later batch names its line and index" 1 "long.jsonl:4: prompt 2 has 7 tokens, the context is 5" \
    ftk generate --model "$M" --context 5 --batch-size 2 "$T/long.jsonl"
printf '{"prompt": "a"}\n{"prompt": 3}\n' > "$T/bad.jsonl"
check_fail "a record without a prompt names its line" 1 "bad.jsonl:2" ftk generate --model "$M" "$T/bad.jsonl"
echo '{"messages": [{"role": "user", "content": "hi"}]}' > "$T/msgs.jsonl"
check_fail "messages without a template" 1 "give --template" ftk generate --model "$M" "$T/msgs.jsonl"
check_fail "unknown template" 1 "nosuchtemplate" ftk generate --model "$M" --template nosuchtemplate "$T/msgs.jsonl"
check_fail "adapter for another base" 1 "adapter for another base" ftk generate --model "$M" --adapter "$ROOT/tests/fixtures/hf_tiny/llama/adapter" "$T/one.jsonl"
# greedy = transformers' on every tiny architecture (llama3 rope, mistral, qwen2 biases, qwen3 q/k
# norms), with and without the LoRA adapter applied unmerged (tests/oracle/greedy_hf_tiny.py)
GT="$ROOT/tests/fixtures/hf_tiny/greedy.json"
jq -c '{kind: "stream", meta: {producer: "t"}}, (.prompts[] | {kind: "example", tensors: {input_ids: .}})' "$GT" |
    ftk dump --from-json > "$T/tiny_prompts.fts"
for arch in llama mistral qwen2 qwen3; do
    for mode in base adapter; do
        ad=(); [ $mode = adapter ] && ad=(--adapter "$ROOT/tests/fixtures/hf_tiny/$arch/adapter")
        for bs in 1 3; do
            check_eq "greedy = transformers: $arch, $mode, batch $bs" \
                "$(ftk generate --model "$ROOT/tests/fixtures/hf_tiny/$arch" "${ad[@]}" --greedy --ignore-eos --max-new-tokens 40 \
                    --batch-size $bs "$T/tiny_prompts.fts" | jq -sc 'map(.ids)')" \
                "$(jq -c --arg k "$arch/$mode" '.cases[$k] | map(.ids)' "$GT")"
        done
    done
done

# the chat: a terminal on stdin (tests/tools/pty_run.c gives one)
PTY=$T/pty_run
if ! ${CC:-cc} -std=c11 -D_GNU_SOURCE -O2 "$ROOT/tests/tools/pty_run.c" -o "$PTY" -lutil 2>"$T/cc.err"; then
    fail "build pty_run" "$(head -c 600 "$T/cc.err")"
else
    # pty_run itself: more input than the terminal holds (about 4 KB) for a command that does not
    # read it ends with the command, and the timeout covers the typing too
    head -c 20000 /dev/zero | tr '\0' a | fold -w 100 > "$T/big.txt"
    check "pty_run: unread input does not keep it waiting" timeout 60 "$PTY" "$T/big.txt" true
    check_fail "pty_run: the timeout covers the typing" 124 "still running after 1 s" env PTY_RUN_TIMEOUT=1 timeout 60 "$PTY" "$T/big.txt" sleep 30
    CH=(--model "$M" --template alpaca --max-new-tokens 10)
    printf 'Once upon a time\nThe dog\n/clear\nThe dog\n\nnever read\n' > "$T/typed.txt"
    check "chat: three turns, /clear, an empty line ends" bash -c "'$PTY' '$T/typed.txt' ftk generate ${CH[*]} > '$T/chat.out' 2> '$T/chat.err'"
    # what the chat answers is what the same conversations as "messages" records give
    a1=$(jq -nc '{messages: [{role: "user", content: "Once upon a time"}]}' | ftk generate "${CH[@]}" | jq -r .text)
    a2=$(jq -nc --arg a "$a1" '{messages: [{role: "user", content: "Once upon a time"}, {role: "assistant", content: $a},
                                          {role: "user", content: "The dog"}]}' | ftk generate "${CH[@]}" | jq -r .text)
    a3=$(jq -nc '{messages: [{role: "user", content: "The dog"}]}' | ftk generate "${CH[@]}" | jq -r .text)
    check_eq "chat answers = the conversation's messages records, /clear forgets" "$(cat "$T/chat.out")" "$(printf '%s\n' "$a1" "$a2" "$a3")"
    check "the second turn saw the first" test "$a2" != "$a3"
    check_eq "a prompt on stderr for each line read" "$(grep -o '> ' "$T/chat.err" | wc -l)" 5
    printf 'Once upon a time\n\004' > "$T/typed.txt"
    check "chat: Ctrl-D ends" bash -c "'$PTY' '$T/typed.txt' ftk generate ${CH[*]} > '$T/chat.out' 2> '$T/chat.err'"
    check_eq "chat: the turn before Ctrl-D is answered" "$(cat "$T/chat.out")" "$a1"
    # a turn that would overflow the context is taken back and the chat goes on
    # (alpaca's preamble is 100 tokens of stories260K's vocabulary)
    printf '%s\nThe dog\n\n' "$(printf 'Once upon a time there was a little girl named Lily. %.0s' 1 2 3)" > "$T/typed.txt"
    check "chat: a turn longer than the context does not end the chat" \
        bash -c "'$PTY' '$T/typed.txt' ftk generate ${CH[*]} --context 120 > '$T/chat.out' 2> '$T/chat.err'"
    check "chat: the long turn is named" grep -q "the conversation is [0-9]* tokens with this turn, the context 120: /clear" "$T/chat.err"
    check_eq "chat: the next turn is answered as a first turn" "$(cat "$T/chat.out")" \
        "$(jq -nc '{messages: [{role: "user", content: "The dog"}]}' | ftk generate "${CH[@]}" --context 120 | jq -r .text)"
    # the adapter's own positions (4 virtual tokens, 3 prefix positions) count: "the cat the cat" is
    # 5 tokens, inside the context alone, not with them
    for pa in "prompt_tuning/llama/pt_random 8 4" "prefix_tuning/llama/noproj 7 3"; do
        set -- $pa
        PA=(--model "$ROOT/tests/fixtures/hf_tiny/llama" --tokenizer "$ROOT/tests/fixtures/peft_methods/prompt_tuning/tokenizer"
            --adapter "$ROOT/tests/fixtures/peft_methods/$1" --max-new-tokens 3 --context $2)
        printf 'the cat the cat\nthe\n\n' > "$T/typed.txt"
        check "chat, ${1%%/*}: a turn that overflows with the adapter's positions does not end the chat" \
            bash -c "'$PTY' '$T/typed.txt' ftk generate ${PA[*]} > '$T/chat.out' 2> '$T/chat.err'"
        check "  the long turn is named with the adapter's positions" \
            grep -q "the conversation is 5 tokens with this turn, $((5 + $3)) positions with the adapter's $3, the context $2: /clear" "$T/chat.err"
        check_eq "  the next turn is answered" "$(cat "$T/chat.out")" \
            "$(echo '{"prompt": "the"}' | ftk generate "${PA[@]}" | jq -r .text)"
    done
    printf 'Once upon a time\nThe dog\n\n' > "$T/typed.txt"
    check "chat without a template" bash -c "'$PTY' '$T/typed.txt' ftk generate --model '$M' --max-new-tokens 10 > '$T/chat.out' 2> '$T/chat.err'"
    check_eq "without a template each line is a prompt record of its own" "$(cat "$T/chat.out")" \
        "$(printf '{"prompt": "Once upon a time"}\n{"prompt": "The dog"}\n' | ftk generate --model "$M" --max-new-tokens 10 | jq -r .text)"
    mkdir "$T/notok" && cp "$M/config.json" "$M/model.safetensors" "$T/notok/"
    printf 'hi\n' > "$T/typed.txt"
    check_fail "chat without a tokenizer" 1 "chat needs a tokenizer" "$PTY" "$T/typed.txt" ftk generate --model "$T/notok"
fi
summary
