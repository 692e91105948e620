#!/usr/bin/env bash
# tests/tools/test_plot.sh: ftk plot draws metrics JSONL as SVG: the panels it should have, valid
# XML (xmllint when installed, else a structural grep), several runs, and the errors.
. "$(dirname "$0")/lib.sh"

printf '{"step":1,"loss":2.5,"lr":0.001,"grad_norm":1.5}\n{"step":2,"loss":2.0,"lr":0.0005,"grad_norm":1.2}\n\n{"step":3,"loss":1.25,"lr":0.0,"grad_norm":0.9}\n' > "$T/sft.jsonl"
printf '{"step":1,"loss":0.69,"lr":1e-5,"rewards/chosen":0.1,"rewards/rejected":-0.1,"rewards/margins":0.2,"rewards/accuracies":0.5}\n{"step":2,"loss":0.5,"lr":5e-6,"rewards/chosen":0.3,"rewards/rejected":-0.4,"rewards/margins":0.7,"rewards/accuracies":1}\n' > "$T/dpo.jsonl"

valid_svg() {   # FILE: well-formed SVG
    if command -v xmllint >/dev/null; then xmllint --noout "$1" || return 1; fi
    head -n 2 "$1" | grep -q '^<svg xmlns="http://www.w3.org/2000/svg"' && tail -n 1 "$1" | grep -qx '</svg>' \
        && [ "$(grep -c '<g class="panel">' "$1")" -eq "$(grep -c '</g>' "$1")" ]
}
panels() { grep -o '<text x="[0-9]*" y="[0-9]*" class="ptitle">[^<]*' "$1" | sed 's/.*>//' | paste -sd '|'; }

check "sft metrics" bash -c "ftk plot '$T/sft.jsonl' > '$T/sft.svg'"
check "valid SVG" valid_svg "$T/sft.svg"
check_eq "loss, grad norm and lr panels" "$(panels "$T/sft.svg")" "loss|gradient norm (before clipping)|learning rate"
check_eq "one line per panel" "$(grep -c '<polyline' "$T/sft.svg")" "3"
check_eq "the step axis is labelled" "$(grep -c 'class="xlabel">step<' "$T/sft.svg")" "1"
check "dpo metrics, title with markup" bash -c "ftk plot --title 'DPO <beta> & co' '$T/dpo.jsonl' -o '$T/dpo.svg'"
check "valid SVG (dpo)" valid_svg "$T/dpo.svg"
check_eq "reward panels" "$(panels "$T/dpo.svg")" \
    "loss|reward margin (chosen - rejected)|rewards (rewards/chosen solid, rewards/rejected dashed)|reward accuracy|learning rate"
check_eq "title escaped" "$(grep -c 'DPO &lt;beta&gt; &amp; co' "$T/dpo.svg")" "1"
check "two runs and stdin" bash -c "ftk plot '$T/sft.jsonl' - < '$T/dpo.jsonl' > '$T/two.svg'"
check "valid SVG (two runs)" valid_svg "$T/two.svg"
check_eq "a legend entry per run" "$(grep -c 'class="legend"' "$T/two.svg")" "2"
check_eq "--metrics picks panels" "$(ftk plot --metrics lr,loss "$T/sft.jsonl" | grep -c 'class="ptitle"')" "2"
echo '{"step":1,"loss":3}' > "$T/one.jsonl"
check "a single step" bash -c "ftk plot '$T/one.jsonl' | grep -q '<circle'"

printf '{"step":1,"loss":2}\nnot json\n' > "$T/bad1.jsonl"
check_fail "not JSON names the line" 1 "bad1.jsonl:2: not a JSON line" ftk plot "$T/bad1.jsonl"
printf '{"step":1,"loss":2}\n{"loss":2}\n' > "$T/bad2.jsonl"
check_fail "no step names the line" 1 'bad2.jsonl:2: no numeric "step"' ftk plot "$T/bad2.jsonl"
printf '{"step":1}\n' > "$T/bad3.jsonl"
check_fail "no loss names the line" 1 'bad3.jsonl:1: no numeric "loss"' ftk plot "$T/bad3.jsonl"
printf '[1,2]\n' > "$T/bad4.jsonl"
check_fail "an array is not an object" 1 "bad4.jsonl:1: expected a JSON object" ftk plot "$T/bad4.jsonl"
: > "$T/empty.jsonl"
check_fail "empty file" 1 "no metrics lines" ftk plot "$T/empty.jsonl"
check_fail "missing file" 1 "nosuch.jsonl" ftk plot "$T/nosuch.jsonl"
check_fail "unknown metric" 1 'no metrics line has a numeric "kl"' ftk plot --metrics kl "$T/sft.jsonl"
check_fail "failed run leaves no output" 1 "not a JSON line" ftk plot -o "$T/x.svg" "$T/bad1.jsonl"
check "no output left behind" test ! -e "$T/x.svg" -a ! -e "$T/x.svg.tmp"
check_fail "unknown option" 2 "unknown option --nope" ftk plot --nope
check_fail "bad width" 2 "--width needs a positive number" ftk plot --width x "$T/sft.jsonl"
check "--help" bash -c "ftk plot --help | grep -q 'usage: ftk plot'"
check "--version" bash -c "ftk plot --version | grep -q '^ftk-plot '"
summary
