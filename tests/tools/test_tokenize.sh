#!/usr/bin/env bash
# tests/tools/test_tokenize.sh: ftk tokenize end to end (docs/tools/tokenize.md): the fixture
# tokenizers' golden ids through --format text, --decode, transformers' chat-template renderings,
# LLaMA-Factory's demo datasets in every format, labels, truncation, compressed and archived
# inputs, threads, and every bad-input case; and LLaMA-Factory's own input_ids/labels on its demos.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
TK=tests/fixtures/tokenizers
[ -e $TK/llama3-128k ] || TK=../shared/fixtures/tokenizers
L3=$TK/llama3-128k Q3=$TK/qwen3-151k SP=$TK/sp-bpe-32k
LF=tests/fixtures/data/llamafactory
INFO=$LF/dataset_info.json
GOLD=../shared/fixtures/tokenizers   # golden.jsonl (also copied beside the tokenizers)
gold() { if [ -f "$TK/$1/golden.jsonl" ]; then echo "$TK/$1/golden.jsonl"; else echo "$GOLD/$1/golden.jsonl"; fi; }

# examples of a stream as compact JSON lines of their tensors
tensors() { ftk-dump | jq -c 'select(.kind=="example") | .tensors'; }
meta() { local e=$2; case $e in .*|\[*) ;; *) e=.$e ;; esac; ftk-dump | jq -r "select(.kind==\"$1\") | .meta | $e"; }

# ---- --format text: golden ids, in order, on all three tokenizers --------------------------
for t in llama3-128k qwen3-151k sp-bpe-32k; do
    g=$(gold $t)
    got=$(ftk-tokenize --tokenizer $TK/$t --format text < "$g" | tensors | jq -c .input_ids)
    check_eq "text $t: input_ids == golden ids" "$got" "$(jq -c .ids "$g")"
    got=$(ftk-tokenize --tokenizer $TK/$t --format text --add-special-tokens < "$g" | tensors | jq -c .input_ids)
    check_eq "text $t --add-special-tokens: == ids_with_special" "$got" "$(jq -c .ids_with_special "$g")"
    got=$(ftk-tokenize --tokenizer $TK/$t --format text < "$g" | tensors | jq -c 'select(.input_ids != .labels)')
    check_eq "text $t: labels == input_ids" "$got" ""
    got=$(jq -c '{ids}' "$g" | ftk-tokenize --tokenizer $TK/$t --decode | jq -c .text)
    check_eq "decode $t: JSONL ids == golden decoded" "$got" "$(jq -c .decoded "$g")"
    got=$(ftk-tokenize --tokenizer $TK/$t --format text < "$g" | ftk-tokenize --tokenizer $TK/$t --decode | jq -c .text)
    check_eq "decode $t: example stream == golden decoded" "$got" "$(jq -c .decoded "$g")"
    if [ "$t" = llama3-128k ]; then   # once: an uncompressed stream whose first byte is ' '
        ex=$(ftk-tokenize --tokenizer $TK/$t --format text < "$g" | ftk dump | jq -c 'select(.kind == "example")' | head -1)
        stream_first_byte 32 "$ex" > "$T/ex32.fts"
        check_eq "decode $t: an uncompressed stream starting with ' ' (a pipe)" \
            "$(cat "$T/ex32.fts" | ftk-tokenize --tokenizer $TK/$t --decode | jq -c .text)" "$(jq -c .decoded "$g" | head -1)"
    fi
done
check_fail "decode: an id beyond int32 is an error" 1 "ids must be non-negative integers" \
    bash -c "echo '{\"ids\":[3000000000]}' | ftk-tokenize --tokenizer $L3 --decode"
got=$(echo '{"ids":[128000,9906,128009]}' | ftk-tokenize --tokenizer $L3 --decode --skip-special-tokens | jq -r .text)
check_eq "decode --skip-special-tokens" "$got" "Hello"

# ---- chat templates: transformers' apply_chat_template ids (tests/oracle/chat_templates.py) --
for p in llama3:llama3-128k qwen3:qwen3-151k; do
    tpl=${p%%:*} t=${p#*:} fx=tests/fixtures/templates/$tpl.jsonl
    tail -n +2 $fx | jq -c '{messages}' > "$T/conv.jsonl"
    ftk-tokenize --tokenizer $TK/$t --template $tpl --format openai "$T/conv.jsonl" | tensors > "$T/got.jsonl"
    check_eq "template $tpl: input_ids == transformers ids ($(($(wc -l < $fx) - 1)) conversations)" \
        "$(jq -c .input_ids "$T/got.jsonl")" "$(tail -n +2 $fx | jq -c .ids)"
    # the prompt is what add_generation_prompt=True renders; the last reply is labelled from there
    got=$(paste -d ' ' <(jq -c . "$T/got.jsonl") <(tail -n +2 $fx | jq -c '.prompt_ids | length') |
          while read -r ex n; do jq -c --argjson n "$n" '[.input_ids[:$n], .labels[$n - 1] == -100, .labels[$n] != -100]' <<<"$ex"; done)
    want=$(tail -n +2 $fx | jq -c '[.prompt_ids, true, true]')
    check_eq "template $tpl: prompt == generation-prompt ids, labelled from the reply on" "$got" "$want"
done

# ---- every installed template runs on a real tokenizer --------------------------------------
echo '{"instruction":"Hi","input":"","output":"Hello there","system":"Be brief."}' > "$T/one.json"
for p in llama3:$L3 qwen:$Q3 qwen3:$Q3 chatml:$Q3 llama2:$SP mistral:$SP alpaca:$SP vicuna:$SP empty:$SP; do
    tpl=${p%%:*} t=${p#*:}
    check "template $tpl on $(basename $t)" bash -c "ftk-tokenize --tokenizer $t --template $tpl '$T/one.json' > '$T/one.fts'"
    got=$(ftk-tokenize --tokenizer $t --template $tpl "$T/one.json" | ftk-dump |
          jq -r 'select(.kind=="example") | .tensors | [.labels[0] == -100, .labels[-1] != -100, (.input_ids|length) == (.labels|length)] | all')
    check_eq "template $tpl: prompt masked, end of turn labelled" "$got" "true"
done
got=$(ftk-tokenize --tokenizer $SP --template llama2 "$T/one.json" | ftk-tokenize --tokenizer $SP --decode | jq -r .text)
check_eq "llama2 renders [INST] <<SYS>>" "$got" "<s> [INST] <<SYS>>
Be brief.
<</SYS>>

Hi [/INST] Hello there</s>"
cp tools/templates/chatml.json "$T/mine.json"
check "--template FILE" bash -c "ftk-tokenize --tokenizer $Q3 --template '$T/mine.json' '$T/one.json' | ftk-dump | grep -q '\"template\":\"chatml\"'"

# ---- header ----------------------------------------------------------------------------------
ftk-tokenize --tokenizer $L3 --template llama3 --cutoff-len 64 "$T/one.json" > "$T/h.fts"
got=$(ftk-dump < "$T/h.fts" | jq -c 'select(.kind=="stream") | .meta | [.producer, .template, .example_kind, .eos_token_id, .pad_token_id, .bos_token_id, .vocab_size, .cutoff_len, (.tokenizer_hash|length)]')
check_eq "header: llama3 replaces eos with <|eot_id|>, pad falls back to it" "$got" '["ftk-tokenize","llama3","sft","128009","128009","128000","128256","64",64]'
got=$(ftk-tokenize --tokenizer $Q3 --template qwen3 "$T/one.json" | meta stream '[.eos_token_id, .pad_token_id, .bos_token_id] | join(",")')
check_eq "header: qwen3 eos <|im_end|>, pad <|endoftext|>, no bos" "$got" "151645,151643,-1"
got=$(ftk-tokenize --tokenizer $SP --format text < "$(gold sp-bpe-32k)" | meta stream '[.template, .example_kind, .pad_token_id] | join(",")')
check_eq "header: text without template, pad falls back to eos" "$got" "none,text,2"

# ---- LLaMA-Factory's demo datasets through dataset_info.json ---------------------------------
tokinfo() { ftk-tokenize --tokenizer $L3 --template llama3 --dataset-info $INFO "$@"; }
got=$(tokinfo --dataset alpaca_en_demo | ftk-dump | jq -c 'select(.kind=="end") | .meta | [.records, .examples, .skipped]')
check_eq "alpaca_en_demo: 12 records, 12 examples" "$got" '["12","12","0"]'
got=$(tokinfo --dataset identity | ftk-dump | jq -c 'select(.kind=="example") | .meta | [.index, .source]' | head -2 | jq -s -c .)
check_eq "identity: index and source metadata" "$got" "[[\"0\",\"$LF/identity.json\"],[\"1\",\"$LF/identity.json\"]]"
got=$(tokinfo --dataset identity | tensors | head -1 | jq -c '[(.labels[:11] | all(. == -100)), .labels[11:] == .input_ids[11:], .input_ids[-1]]')
check_eq "identity: prompt -100, reply and <|eot_id|> labelled" "$got" '[true,true,128009]'
got=$(tokinfo --dataset dpo_en_demo | ftk-dump | jq -c 'select(.kind=="example") | .tensors | keys' | sort -u)
check_eq "dpo_en_demo: pairwise tensors" "$got" '["chosen_input_ids","chosen_labels","rejected_input_ids","rejected_labels"]'
got=$(tokinfo --dataset dpo_en_demo | meta stream example_kind)
check_eq "dpo_en_demo: example_kind pairwise" "$got" "pairwise"
got=$(tokinfo --dataset dpo_en_demo | tensors | jq -c '(.chosen_labels | map(. == -100) | index(false)) as $c | (.rejected_labels | map(. == -100) | index(false)) as $r | [$c == $r, .chosen_input_ids[:$c] == .rejected_input_ids[:$r]]' | sort -u)
check_eq "dpo_en_demo: chosen and rejected share the prompt" "$got" '[true,true]'
got=$(tokinfo --dataset kto_en_demo | tensors | jq -c '[.kto_tag[0], (.labels | map(. == -100) | index(false)) == .prompt_len[0]]' | sort -u | jq -s -c 'map(.[0]) | sort')
check_eq "kto_en_demo: kto_tag 1 and 0, prompt_len where labels start" "$got" '[0,1]'
check_fail "glaive_toolcall_en_demo: tools refused, not dropped" 1 "tool descriptions" tokinfo --dataset glaive_toolcall_en_demo
jq --arg f "$ROOT/$LF/identity.json" '.identity.num_samples = 5 | .identity.file_name = $f' "$INFO" > "$T/ns_info.json"
check_fail "num_samples (a random subsample) is refused, not ignored" 1 "num_samples" \
    ftk-tokenize --tokenizer $L3 --template llama3 --dataset-info "$T/ns_info.json" --dataset identity
got=$(ftk-tokenize --tokenizer $L3 --format text --dataset-info $INFO --dataset c4_demo | meta end examples)
check_eq "c4_demo (--format text, text column)" "$got" "12"
got=$(ftk-tokenize --tokenizer $L3 --format text --dataset-info $INFO --dataset wiki_demo | meta end examples)
check_eq "wiki_demo.txt (plain lines)" "$got" "4"
got=$(ftk-tokenize --tokenizer $L3 --format text --append-eos --dataset-info $INFO --dataset c4_demo | tensors | jq -c '.input_ids[-1]' | sort -u)
check_eq "--append-eos" "$got" "128001"

# ---- LLaMA-Factory's own processors (tests/oracle/llamafactory_examples.py) ---------------------
# input_ids and labels of LLaMA-Factory 0.9.5's converters and processors on its demo data, for
# several templates, --cutoff-len, --train-on-prompt and --mask-history: ftk must give the same.
zstd -dc tests/fixtures/llamafactory/examples.jsonl.zst | tail -n +2 > "$T/lf.jsonl"
while read -r line; do
    read -r tok tpl ds cut top mh < <(jq -r '[.tokenizer, .template, .dataset, .cutoff_len, .train_on_prompt, .mask_history] | @tsv' <<<"$line")
    opts=()
    [ "$cut" != 0 ] && opts+=(--cutoff-len "$cut")
    [ "$top" = true ] && opts+=(--train-on-prompt)
    [ "$mh" = true ] && opts+=(--mask-history)
    if [ "$ds" = multiturn ]; then src=(--format sharegpt tests/fixtures/llamafactory/multiturn.jsonl)
    else src=(--dataset-info $INFO --dataset "$ds"); fi
    got=$(ftk-tokenize --tokenizer $TK/$tok --template "$tpl" "${opts[@]}" "${src[@]}" | tensors | jq -c 'del(.prompt_len)')
    check_eq "LLaMA-Factory: $tpl on $tok, $ds, cutoff $cut, train_on_prompt $top, mask_history $mh ($(jq '.examples | length' <<<"$line") examples)" \
        "$got" "$(jq -c '.examples[]' <<<"$line")"
done < "$T/lf.jsonl"

# ---- formats by flags ---------------------------------------------------------------------------
cat > "$T/sg.jsonl" <<'EOF'
{"conversations":[{"from":"system","value":"S"},{"from":"human","value":"q1"},{"from":"gpt","value":"a1"},{"from":"human","value":"q2"},{"from":"gpt","value":"a2"}]}
EOF
cat > "$T/oa.jsonl" <<'EOF'
{"messages":[{"role":"system","content":"S"},{"role":"user","content":"q1"},{"role":"assistant","content":"a1"},{"role":"user","content":"q2"},{"role":"assistant","content":"a2"}]}
EOF
jq -c '{dialog: [.conversations[] | {speaker: .from, text: .value}]}' "$T/sg.jsonl" > "$T/mapped.jsonl"
a=$(ftk-tokenize --tokenizer $Q3 --template qwen --format sharegpt "$T/sg.jsonl" | tensors)
b=$(ftk-tokenize --tokenizer $Q3 --template qwen --format openai "$T/oa.jsonl" | tensors)
c=$(ftk-tokenize --tokenizer $Q3 --template qwen --format sharegpt --columns messages=dialog,role_tag=speaker --columns content_tag=text "$T/mapped.jsonl" | tensors)
check_eq "sharegpt == openai" "$a" "$b"
check_eq "--columns maps columns and tags" "$c" "$a"
text=$(ftk-tokenize --tokenizer $Q3 --template qwen --format sharegpt "$T/sg.jsonl" | ftk-tokenize --tokenizer $Q3 --decode | jq -r .text)
check_eq "qwen: multi-turn with system renders as ChatML" "$text" "<|im_start|>system
S<|im_end|>
<|im_start|>user
q1<|im_end|>
<|im_start|>assistant
a1<|im_end|>
<|im_start|>user
q2<|im_end|>
<|im_start|>assistant
a2<|im_end|>"
# labels: 2 replies labelled; --mask-history: only the last; --train-on-prompt: all
n_lab() { tensors | jq '[.labels[] | select(. != -100)] | length'; }
full=$(ftk-tokenize --tokenizer $Q3 --template qwen --format sharegpt "$T/sg.jsonl" | n_lab)
last=$(ftk-tokenize --tokenizer $Q3 --template qwen --format sharegpt --mask-history "$T/sg.jsonl" | n_lab)
all=$(ftk-tokenize --tokenizer $Q3 --template qwen --format sharegpt --train-on-prompt "$T/sg.jsonl" | n_lab)
len=$(ftk-tokenize --tokenizer $Q3 --template qwen --format sharegpt "$T/sg.jsonl" | tensors | jq '.input_ids | length')
check_eq "labels: both replies with <|im_end|>\\n (2 x 4 tokens)" "$full" "8"
check_eq "--mask-history: the last reply only" "$last" "4"
check_eq "--train-on-prompt: every token" "$all" "$len"
echo '{"instruction":"q","chosen":"good","rejected":"bad answer"}' > "$T/pw.json"
got=$(ftk-tokenize --tokenizer $Q3 --template qwen --ranking "$T/pw.json" | meta stream example_kind)
check_eq "--ranking: alpaca pairwise" "$got" "pairwise"
echo '{"instruction":"q","output":"a","kto_tag":false}' > "$T/kto.json"
got=$(ftk-tokenize --tokenizer $Q3 --template qwen --kto "$T/kto.json" | tensors | jq -c .kto_tag)
check_eq "--kto: alpaca kto, tag 0" "$got" "[0]"

# ---- truncation -------------------------------------------------------------------------------
ftk-tokenize --tokenizer $L3 --template llama3 --cutoff-len 40 --dataset-info $INFO --dataset alpaca_en_demo > "$T/cut.fts"
got=$(tensors < "$T/cut.fts" | jq '.input_ids | length' | sort -n | tail -1)
check_eq "--cutoff-len 40: no example longer" "$got" "40"
got=$(meta end truncated < "$T/cut.fts")
check "--cutoff-len: truncated counted ($got)" test "$got" -gt 0
got=$(tensors < "$T/cut.fts" | jq -c '[(.labels | map(select(. != -100)) | length) > 0]' | sort -u)
check_eq "--cutoff-len keeps some response in every example (infer_seqlen)" "$got" "[true]"
got=$(ftk-tokenize --tokenizer $L3 --format text --cutoff-len 5 < "$(gold llama3-128k)" | tensors | jq '.input_ids | length' | sort -n | tail -1)
check_eq "text --cutoff-len 5" "$got" "5"

# ---- inputs: stdin, several files, compressed, archives ---------------------------------------
jq -c '.[]' $LF/alpaca_en_demo.json > "$T/al.jsonl"
ref=$(ftk-tokenize --tokenizer $L3 --template llama3 $LF/alpaca_en_demo.json | tensors)
check_eq "JSON array == JSON lines" "$(ftk-tokenize --tokenizer $L3 --template llama3 "$T/al.jsonl" | tensors)" "$ref"
check_eq "stdin" "$(ftk-tokenize --tokenizer $L3 --template llama3 < "$T/al.jsonl" | tensors)" "$ref"
check_eq "stdin as -" "$(ftk-tokenize --tokenizer $L3 --template llama3 - < "$T/al.jsonl" | tensors)" "$ref"
gzip -c "$T/al.jsonl" > "$T/al.jsonl.gz"
zstd -q -c "$T/al.jsonl" > "$T/al.jsonl.zst"
xz -c "$T/al.jsonl" > "$T/al.jsonl.xz"
for z in gz zst xz; do
    check_eq "compressed .$z" "$(ftk-tokenize --tokenizer $L3 --template llama3 "$T/al.jsonl.$z" | tensors)" "$ref"
done
check_eq "compressed on stdin" "$(ftk-tokenize --tokenizer $L3 --template llama3 < "$T/al.jsonl.zst" | tensors)" "$ref"
mkdir -p "$T/arc/d"
head -n 5 "$T/al.jsonl" > "$T/arc/d/a.jsonl"; tail -n +6 "$T/al.jsonl" > "$T/arc/d/b.jsonl"; echo "notes" > "$T/arc/d/README.md"
M="d/a.jsonl d/README.md d/b.jsonl"
tar -C "$T/arc" -cf "$T/al.tar" $M; tar -C "$T/arc" -czf "$T/al.tar.gz" $M
(cd "$T/arc" && python3 -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED); [z.write(m) for m in sys.argv[2:]]" "$T/al.zip" $M)
for z in tar tar.gz zip; do
    check_eq "archive .$z (members in order)" "$(ftk-tokenize --tokenizer $L3 --template llama3 "$T/al.$z" | tensors)" "$ref"
done
got=$(ftk-tokenize --tokenizer $L3 --template llama3 "$T/al.tar" | ftk-dump | jq -r 'select(.kind=="example") | .meta.source' | sort -u | tr '\n' ' ')
check_eq "archive members named in source" "$got" "$T/al.tar:d/a.jsonl $T/al.tar:d/b.jsonl "
check_eq "several files in order" "$(ftk-tokenize --tokenizer $L3 --template llama3 "$T/arc/d/a.jsonl" "$T/arc/d/b.jsonl" | tensors)" "$ref"
: > "$T/empty.jsonl"
check_eq "empty input: no examples" "$(ftk-tokenize --tokenizer $L3 --template llama3 "$T/empty.jsonl" | meta end examples)" "0"
if [ -e $TK/llama3-128k/tokenizer.json.zst ]; then
    check "tokenizer dir with tokenizer.json.zst" test -n "$ref"
fi

# ---- threads: same output -----------------------------------------------------------------------
a=$(ftk-tokenize --tokenizer $L3 --template llama3 --level 0 --dataset-info $INFO --dataset kto_en_demo | md5sum)
b=$(ftk-tokenize --tokenizer $L3 --template llama3 --level 0 --threads 4 --dataset-info $INFO --dataset kto_en_demo | md5sum)
check_eq "--threads 4: byte-identical stream" "$b" "$a"
for i in $(seq 1 3000); do echo "line $i: the quick brown fox"; done > "$T/many.txt"
a=$(ftk-tokenize --tokenizer $Q3 --format text --level 0 "$T/many.txt" | md5sum)
b=$(ftk-tokenize --tokenizer $Q3 --format text --level 0 --threads 3 "$T/many.txt" | md5sum)
check_eq "--threads 3 over several batches: byte-identical" "$b" "$a"

# ---- bad input: clear errors naming file and line, or --skip-bad with reasons ----------------
tok() { ftk-tokenize --tokenizer $Q3 --template qwen "$@"; }
printf '{"instruction":"a","output":"b"}\n{"instruction":"a",\n' > "$T/bad.jsonl"
check_fail "malformed JSON line: file and line" 1 "bad.jsonl: line 2: malformed JSON" tok "$T/bad.jsonl"
printf '[{"instruction":"a","output":"b"},\n{"instruction": }]' > "$T/bad.json"
check_fail "malformed JSON array: file and line" 1 "bad.json: line 2: malformed JSON" tok "$T/bad.json"
printf '{"instruction":"a"}\n' > "$T/b1.jsonl"
check_fail "missing mapped field" 1 "b1.jsonl: line 1: missing field \"output\"" tok "$T/b1.jsonl"
printf '{"instruction":"a","output":"b"}\n{"instruction":"a","output":""}\n' > "$T/b2.jsonl"
check_fail "empty response" 1 "b2.jsonl: line 2: empty response" tok "$T/b2.jsonl"
printf '{"instruction":"a\xff","output":"b"}\n' > "$T/b3.jsonl"
check_fail "invalid UTF-8" 1 "line 1: invalid UTF-8 in message 0 at byte 1" tok "$T/b3.jsonl"
printf '{"conversations":[{"from":"gpt","value":"a"},{"from":"human","value":"b"}]}\n' > "$T/b4.jsonl"
check_fail "role sequence the template cannot render" 1 "message 0: role \"gpt\"" tok --format sharegpt "$T/b4.jsonl"
printf '{"messages":[{"role":"user","content":"a"},{"role":"user","content":"b"},{"role":"assistant","content":"c"}]}\n' > "$T/b5.jsonl"
check_fail "two user turns in a row" 1 "message 1: role \"user\"" tok --format openai "$T/b5.jsonl"
printf 'just text\n' > "$T/b6.json"
check_fail "plain text given as a chat format" 1 "plain text needs --format text" tok "$T/b6.json"
printf '{"text":""}\n' > "$T/b7.jsonl"
check_fail "empty text" 1 "empty text" ftk-tokenize --tokenizer $Q3 --format text "$T/b7.jsonl"
check_fail "missing input file" 1 "nope.json" tok "$T/nope.json"
check_fail "unknown template" 1 "no template \"gemma9\"" ftk-tokenize --tokenizer $Q3 --template gemma9 "$T/one.json"
check_fail "template token missing from the vocabulary" 1 "<|eot_id|>" ftk-tokenize --tokenizer $SP --template llama3 "$T/one.json"
check_fail "missing tokenizer" 1 "error:" ftk-tokenize --tokenizer "$T/none" --format text "$T/many.txt"
cat "$T/al.jsonl" "$T/b2.jsonl" "$T/bad.jsonl" "$T/b3.jsonl" > "$T/mixed.jsonl"
tok --skip-bad "$T/mixed.jsonl" > "$T/skip.fts" 2> "$T/skip.err"; rc=$?
check_eq "--skip-bad: exit 0" "$rc" "0"
check_eq "--skip-bad: counts in the end message" "$(meta end '[.records, .examples, .skipped] | join(",")' < "$T/skip.fts")" "17,14,3"
check_eq "--skip-bad: each skip and why on stderr, then the count" "$(sed "s|$T/||" "$T/skip.err")" \
"ftk-tokenize: skipped mixed.jsonl: line 14: empty response
ftk-tokenize: skipped mixed.jsonl: line 16: malformed JSON
ftk-tokenize: skipped mixed.jsonl: line 17: invalid UTF-8 in message 0 at byte 1 (0xff)
ftk-tokenize: 3 of 17 records skipped (14 examples written)"

# ---- usage --------------------------------------------------------------------------------------
check "--help" bash -c "ftk-tokenize --help | grep -q 'examples:'"
check "--version" bash -c "ftk-tokenize --version | grep -q '^ftk-tokenize '"
check "ftk tokenize dispatch" bash -c "ftk tokenize --help > /dev/null"
check_fail "no --tokenizer" 2 "ftk-tokenize: error: --tokenizer is required" ftk-tokenize --format text
check_fail "unknown option" 2 "ftk-tokenize: error: unknown option --frobnicate" ftk-tokenize --tokenizer $Q3 --frobnicate
check_fail "chat format without template" 2 "needs --template" ftk-tokenize --tokenizer $Q3 "$T/one.json"
check_fail "text with a template" 2 "takes no --template" ftk-tokenize --tokenizer $Q3 --format text --template qwen
check_fail "bad --cutoff-len" 2 "--cutoff-len" ftk-tokenize --tokenizer $Q3 --format text --cutoff-len 0
check_fail "bad --format" 2 "unknown format" ftk-tokenize --tokenizer $Q3 --format parquet
check_fail "bad --columns" 2 "unknown column or tag" ftk-tokenize --tokenizer $Q3 --template qwen --columns answer=x
check_fail "--mask-history with --train-on-prompt" 2 "exclude each other" tok --mask-history --train-on-prompt
check_fail "--dataset without --dataset-info" 2 "go together" tok --dataset identity
check_fail "unknown dataset" 1 "no dataset \"nope\"" tok --dataset-info $INFO --dataset nope
summary
