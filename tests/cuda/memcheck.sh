#!/bin/sh
# tests/cuda/memcheck.sh [BUILD]: the CUDA op tests under compute-sanitizer (issue 10's
# "compute-sanitizer memcheck clean on the op tests"), for a machine with a GPU.
#
#   memcheck   out-of-bounds and misaligned device accesses, leaks (--leak-check full)
#   racecheck  shared-memory hazards (the attention tiles, the block reductions)
#   synccheck  barriers reached by only part of a block
#   initcheck  reads of device memory never written (alloc zeroes; scratch must be written first)
#
# Each tool runs BUILD/tests/test_cuda_ops (build it with `make CUDA=1 tests`) with
# --error-exitcode 1; the script exits 1 if any tool reports an error or a test fails.
# Without a GPU (or without compute-sanitizer) it says so and exits 0: there is nothing to check.
# TOOLS="memcheck" tests/cuda/memcheck.sh runs a subset; the op tests take ~10x longer under
# memcheck and ~50x under racecheck.
set -u
BUILD=${1:-build}
TEST=$BUILD/tests/test_cuda_ops
TOOLS=${TOOLS:-memcheck racecheck synccheck initcheck}

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "memcheck: skipped: no GPU (nvidia-smi finds no device)"
    exit 0
fi
SAN=$(command -v compute-sanitizer || true)
[ -z "$SAN" ] && [ -x /usr/local/cuda/bin/compute-sanitizer ] && SAN=/usr/local/cuda/bin/compute-sanitizer
if [ -z "$SAN" ]; then
    echo "memcheck: skipped: compute-sanitizer not found (it ships with the CUDA toolkit)"
    exit 0
fi
if [ ! -x "$TEST" ]; then
    echo "memcheck: $TEST not built (make CUDA=1 tests)" >&2
    exit 1
fi

fail=0
for tool in $TOOLS; do
    case $tool in
        memcheck) extra="--leak-check full" ;;
        *) extra="" ;;
    esac
    echo "== compute-sanitizer --tool $tool $extra $TEST"
    # shellcheck disable=SC2086
    if "$SAN" --tool "$tool" $extra --error-exitcode 1 "$TEST"; then
        echo "== $tool: clean"
    else
        echo "== $tool: FAILED"
        fail=1
    fi
done
exit $fail
