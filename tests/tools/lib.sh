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
