#!/usr/bin/env bash
# tests/tools/test_dump.sh: ftk (dispatcher) and ftk dump, round trips and bad input at the
# tool level: exit codes, messages on stderr, nothing on stdout for a bad stream's header.
. "$(dirname "$0")/lib.sh"

cat > "$T/in.jsonl" <<'J'
{"kind":"stream","meta":{"producer":"test","tokenizer_hash":"h1"}}
{"kind":"example","meta":{"index":"0"},"tensors":{"input_ids":[1,2,3],"labels":[-100,2,3]}}
{"kind":"batch","meta":{},"tensors":{"w":{"dtype":"BF16","shape":[2,2],"data":[[1.5,-2],[3,"Infinity"]]},"f":{"dtype":"F32","shape":[3],"data":[0.1,1e-30,"NaN"]},"i":{"dtype":"I64","shape":[2,1,1],"data":[[[-9007199254740992]],[[7]]]},"u":{"dtype":"U8","shape":[0],"data":[]}}}
J
check "from-json writes a stream" bash -c "ftk dump --from-json '$T/in.jsonl' > '$T/a.fts'"
check "dispatcher runs ftk-dump" bash -c "ftk dump '$T/a.fts' > '$T/a.json'"
check_eq "three messages" "$(jq -r .kind "$T/a.json" | tr '\n' ' ')" "stream example batch end "
check_eq "values" "$(jq -c '.tensors.input_ids' "$T/a.json" | sed -n 2p)" "[1,2,3]"
check_eq "bf16 and special floats" "$(jq -c '.tensors.w' "$T/a.json" | sed -n 3p)" '[[1.5,-2],[3,"Infinity"]]'
check "f32 printed with 9 digits" grep -qF '"f":[0.100000001,1e-30,"NaN"]' "$T/a.json"
check_eq "metadata kept" "$(jq -r '.meta.tokenizer_hash // empty' "$T/a.json")" "h1"
check_eq "end counts messages" "$(jq -r 'select(.kind=="end").meta.messages' "$T/a.json")" "4"
check_eq "shapes" "$(ftk dump --shapes "$T/a.fts" | jq -c '.tensors.i' | sed -n 3p)" '{"dtype":"I64","shape":[2,1,1]}'
check "typed round trip is byte-identical" bash -c "ftk dump --typed '$T/a.fts' | ftk dump --from-json | cmp - '$T/a.fts'"
check "raw (level 0) streams read too" bash -c "ftk dump --typed '$T/a.fts' | ftk dump --from-json --level 0 | ftk dump --typed | diff - <(ftk dump --typed '$T/a.fts')"
check "stdin and -" bash -c "ftk dump - < '$T/a.fts' | cmp - '$T/a.json'"
check "zstd CLI reads our stream (standard frames)" bash -c "zstd -dc '$T/a.fts' > /dev/null"

# Bad input: exit 1, a message naming the message index, and a usage error is exit 2.
head -c 50 "$T/a.fts" > "$T/trunc.fts"
check_fail "truncated zstd" 1 "truncated" ftk dump "$T/trunc.fts"
cp "$T/a.fts" "$T/badsum.fts"; sz=$(stat -c %s "$T/badsum.fts")
printf '\x00\x00\x00\x00' | dd of="$T/badsum.fts" bs=1 seek=$((sz - 4)) conv=notrunc 2>/dev/null
check_fail "corrupted checksum" 1 "checksum" ftk dump "$T/badsum.fts"
printf 'hello, this is not a stream' > "$T/garbage"
check_fail "garbage" 1 "message 0: header length" ftk dump "$T/garbage"
# A raw stream of a header and one example, its end message cut off.
ftk dump --from-json --level 0 < <(head -n 2 "$T/in.jsonl") > "$T/full.fts"
e='{"__metadata__":{"kind":"end","messages":"3"}}'; elen=$(( (8 + ${#e} + 7) / 8 * 8 ))
head -c $(( $(stat -c %s "$T/full.fts") - elen )) "$T/full.fts" > "$T/noend.fts"
check_eq "the cut stream still has 2 messages" "$(ftk dump "$T/noend.fts" 2>/dev/null | wc -l)" "2"
check_fail "missing end message" 1 "without an \`end\` message" ftk dump "$T/noend.fts"
check_fail "unknown option is a usage error" 2 "unknown option" ftk dump --bogus
check_fail "unknown tool" 2 "no tool \"nosuch\"" ftk nosuch
check_fail "missing file" 1 "nonexistent.fts" ftk dump "$T/nonexistent.fts"
check_fail "bad JSON line names the line" 1 "<stdin>:2" bash -c "printf '{\"kind\":\"stream\"}\n{bad\n' | ftk dump --from-json > /dev/null"
check_fail "first message must be a stream header" 1 "starts with" bash -c "printf '{\"kind\":\"example\"}\n' | ftk dump --from-json > /dev/null"
check "--help" ftk dump --help
check "--version" ftk dump --version
check_eq "ftk --version" "$(ftk --version | cut -d' ' -f1)" "ftk"
summary
