#!/usr/bin/env bash
# tests/tools/test_demo.sh: the demo pipeline (pipelines/demo.mk) end to end with QUICK=1 (small
# data, a few steps per stage) so CI keeps every stage working: data prep, SFT, DPO with
# reference log-probs, merge, eval, report; and a second run does nothing.
. "$(dirname "$0")/lib.sh"
command -v make >/dev/null || { echo "#summary passed=0 failed=0 skipped=1"; exit 0; }
O="$T/demo"
run() { make --no-print-directory -C "$ROOT" -f pipelines/demo.mk QUICK=1 O="$O" FTK="$FTK/ftk" THREADS=2 "$@"; }

check "make -f pipelines/demo.mk QUICK=1" bash -c "$(declare -f run); O='$O' FTK='$FTK' ROOT='$ROOT' run > '$T/run1.log' 2>&1" \
    || tail -n 30 "$T/run1.log"
check_eq "the table has base, SFT and DPO rows" "$(grep -oE '^\| (base|sft|dpo) ' "$O/table.md" | tr -d '| ' | paste -sd ,)" "base,sft,dpo"
check "every row has numbers" bash -c "jq -e 'all(.loss, .uses_name, .pair_acc, .reward_acc; type == \"number\")' '$O'/eval/{base,sft,dpo}.json"
check "report.md with the table" grep -q '^| model | held-out loss' "$O/report.md"
check "loss curves drawn" bash -c "grep -q '</svg>' '$O/sft/run/loss.svg' && grep -q '</svg>' '$O/dpo/run/loss.svg'"
check "reference log-probs are a file of their own" test -s "$O/dpo/ref.fts"
check "SFT and DPO models merged" test -s "$O/dpo/run/merged/model.safetensors"
check_eq "SFT ran 3 steps" "$(wc -l < "$O/sft/run/metrics.jsonl")" "3"
touch "$T/stamp"; sleep 1
check "a second run" bash -c "$(declare -f run); O='$O' FTK='$FTK' ROOT='$ROOT' run > '$T/run2.log' 2>&1"
check_eq "a second run remakes nothing" "$(find "$O" -newer "$T/stamp" -type f | head -n 5)" ""
check_eq "a second run runs no tool" "$(grep -c '/ftk ' "$T/run2.log")" "0"
summary
