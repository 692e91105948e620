# tests/tools/lib.sh: sourced by tool tests. Provides $FTK (the built bin dir), a scratch dir
# $T removed at exit, and `check NAME CMD...` / `check_fail NAME EXIT SUBSTR CMD...` that count
# results; end every test file with `summary`.
set -u
FTK=${FTK_BUILD:-build}/bin
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
PATH="$FTK:$PATH"
_passed=0; _failed=0
ok()   { _passed=$((_passed + 1)); echo "ok   $1"; }
fail() { _failed=$((_failed + 1)); echo "FAIL $1"; shift; [ $# -gt 0 ] && printf '  %s\n' "$@"; }
# check NAME CMD... : passes when CMD exits 0
check() { local n=$1; shift; if "$@" >"$T/out" 2>"$T/err"; then ok "$n"; else fail "$n" "exit $?: $(head -c 600 "$T/err")"; fi; }
# check_fail NAME EXIT SUBSTR CMD... : passes when CMD exits EXIT and stderr contains SUBSTR
check_fail() {
    local n=$1 want=$2 sub=$3; shift 3
    "$@" >"$T/out" 2>"$T/err"; local rc=$?
    if [ "$rc" -ne "$want" ]; then fail "$n" "exit $rc, expected $want; stderr: $(head -c 600 "$T/err")"
    elif ! grep -qF -- "$sub" "$T/err"; then fail "$n" "stderr lacks '$sub': $(head -c 600 "$T/err")"
    else ok "$n"; fi
}
# check_eq NAME GOT WANT
check_eq() { if [ "$2" == "$3" ]; then ok "$1"; else fail "$1" "got:  $(head -c 400 <<<"$2")" "want: $(head -c 400 <<<"$3")"; fi; }
summary() { echo "#summary passed=$_passed failed=$_failed"; [ "$_failed" -eq 0 ]; }

# fixture_batch FILE: the input_ids, labels, position_ids of an expected.safetensors (the tiny
# models' fixture batch) as a batch message (JSON); fixture_stream FILE N: a stream of N copies.
fixture_batch() {
    local f="$1" hl hdr out='{"kind":"batch","tensors":{' sep=''
    hl=$(od -An -t u8 -N 8 "$f" | tr -d ' ')
    hdr=$(dd if="$f" bs=1 skip=8 count="$hl" 2>/dev/null)
    for t in input_ids labels position_ids; do
        local b e shape vals
        b=$(jq -r ".${t}.data_offsets[0]" <<<"$hdr"); e=$(jq -r ".${t}.data_offsets[1]" <<<"$hdr")
        shape=$(jq -c ".${t}.shape" <<<"$hdr")
        vals=$(od -An -t d4 -v -j $((8 + hl + b)) -N $((e - b)) "$f" | tr -s ' \n' ' ' | sed 's/^ //; s/ $//; s/ /,/g')
        out+="$sep\"$t\":{\"dtype\":\"I32\",\"shape\":$shape,\"data\":$(jq -c --argjson s "$shape" \
            '[range(0; $s[0]) as $r | .[$r*$s[1]:($r+1)*$s[1]]]' <<<"[$vals]")}"
        sep=','
    done
    echo "$out}}"
}
fixture_stream() {
    local b; b=$(fixture_batch "$1")
    { printf '{"kind":"stream","meta":{"producer":"test","batches":"%s"}}\n' "$2"
      for _ in $(seq "$2"); do echo "$b"; done; } | ftk dump --from-json
}
# check_trained MODEL DIR B1 METRICS [PREFIX]: a train-step run that wrote DIR (--save-steps 3)
# and METRICS: the loss falls, and eval --adapter DIR/checkpoint-3 on the batch B1 gives the 4th
# step's loss (the model after 3 steps); PREFIX starts the checks' names.
check_trained() {
    local m=$1 d=$2 b1=$3 metrics=$4 pre=${5:-}
    check "${pre}the loss falls" jq -se '.[0].loss > .[-1].loss' "$metrics"
    check_eq "${pre}eval --adapter checkpoint-3 = the 4th step's loss" \
        "$(ftk eval --model "$m" --adapter "$d/checkpoint-3" -q "$b1" | jq '.loss * 1e5 | round')" \
        "$(jq -s '.[3].loss * 1e5 | round' "$metrics")"
}
# example_stream IDS: a stream of one example with input_ids IDS (a JSON list), for generate.
example_stream() {
    printf '{"kind":"stream","meta":{"producer":"t"}}\n{"kind":"example","tensors":{"input_ids":%s}}\n' "$1" | ftk dump --from-json
}
# st_header FILE: the JSON header of a safetensors file.
st_header() { local hl; hl=$(od -An -t u8 -N 8 "$1" | tr -d ' '); dd if="$1" bs=1 skip=8 count="$hl" 2>/dev/null; }

# stream_first_byte BYTE MSG_JSON: an uncompressed stream (ftk dump --level 0) of a stream header
# and the message MSG_JSON whose first byte, the low byte of the header's length, is BYTE (32:
# ' ', as a header of 288 bytes has; headers are padded to 8 bytes, so '{' cannot happen), made
# by lengthening the producer name: an input that looks like text at byte 0.
stream_first_byte() {
    local want=$1 msg=$2 pad=x n
    for n in $(seq 1 300); do
        printf '{"kind":"stream","meta":{"producer":"%s"}}\n%s\n' "$pad" "$msg" | ftk dump --from-json --level 0 > "$T/sfb.fts"
        [ "$(od -An -tu1 -N1 "$T/sfb.fts" | tr -d ' ')" = "$want" ] && { cat "$T/sfb.fts"; return 0; }
        pad="${pad}x"
    done
    return 1
}
