#!/usr/bin/env bash
# tests/run.sh [--only-unit|--only-tools|--cuda] BUILD [SAN_BUILD]
# Runs the unit tests (BUILD/tests/test_*), the same under the sanitizer build if given, the
# tool tests (tests/tools/*.sh) and the fuzz corpora replay; each prints "#summary passed=N
# failed=M". A test program that crashes or prints no summary counts as one failure.
# Ends with "N passed, N failed" and exits 1 if anything failed.
set -u
mode=all
case "${1:-}" in --only-unit|--only-tools|--cuda) mode=${1#--}; shift;; esac
build=${1:-build}; san=${2:-}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
passed=0; failed=0; skipped=0
logdir=$build/test-logs; mkdir -p "$logdir"

run_one() {   # label, command...
    local label=$1; shift
    local log="$logdir/$(echo "$label" | tr '/ ' '__').log"
    "$@" >"$log" 2>&1; local rc=$?
    local line; line=$(grep '^#summary ' "$log" | tail -n 1)
    if [ -z "$line" ]; then
        failed=$((failed + 1)); echo "FAIL $label (exit $rc, no summary; see $log)"; tail -n 20 "$log" | sed 's/^/    /'
        return
    fi
    local p f s
    p=$(sed -n 's/.*passed=\([0-9]*\).*/\1/p' <<<"$line")
    f=$(sed -n 's/.*failed=\([0-9]*\).*/\1/p' <<<"$line")
    s=$(sed -n 's/.*skipped=\([0-9]*\).*/\1/p' <<<"$line"); s=${s:-0}
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; echo "FAIL $label: exit $rc after a clean summary"; fi
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
    printf '%-6s %s: %d passed, %d failed%s\n' "$([ "$f" -eq 0 ] && echo ok || echo FAIL)" "$label" "$p" "$f" \
        "$([ "$s" -gt 0 ] && echo ", $s skipped")"
    [ "$f" -eq 0 ] || grep -E '^(FAIL|  )' "$log" | head -n 40 | sed 's/^/    /'
}

if [ "$mode" = all ] || [ "$mode" = only-unit ] || [ "$mode" = cuda ]; then
    for t in "$build"/tests/test_*; do
        [ -x "$t" ] || continue
        # GPU tests run everywhere and report "skipped: no GPU" without one; --cuda runs only them.
        case "$(basename "$t")" in test_cuda_*) ;; *) [ "$mode" = cuda ] && continue;; esac
        run_one "unit/$(basename "$t")" "$t"
    done
fi
if [ -n "$san" ] && [ "$mode" = all ]; then
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    for t in "$san"/tests/test_*; do
        [ -x "$t" ] || continue
        case "$(basename "$t")" in test_cuda_*) continue;; esac
        run_one "san/$(basename "$t")" "$t"
    done
    unset ASAN_OPTIONS UBSAN_OPTIONS
fi
if [ "$mode" = all ] || [ "$mode" = only-tools ]; then
    for t in tests/tools/test_*.sh; do
        [ -f "$t" ] || continue
        FTK_BUILD=$build run_one "tools/$(basename "$t" .sh)" bash "$t"
    done
    if [ -n "$san" ]; then  # the parser-facing tools once more under the sanitizers
        for t in tests/tools/test_dump.sh; do
            [ -f "$t" ] && FTK_BUILD=$san run_one "san-tools/$(basename "$t" .sh)" bash "$t"
        done
    fi
fi
if [ "$mode" = all ]; then   # fuzz corpora replayed, under the sanitizers when built
    for r in "${san:-$build}"/tests/replay_*; do
        [ -x "$r" ] || continue
        n=$(basename "$r"); n=${n#replay_}
        [ -d "tests/fuzz/corpus/fuzz_$n" ] && run_one "fuzz-corpus/$n" "$r" "tests/fuzz/corpus/fuzz_$n"
    done
fi
echo "$passed passed, $failed failed$([ "$skipped" -gt 0 ] && echo ", $skipped skipped")"
[ "$failed" -eq 0 ]
