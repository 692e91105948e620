#!/bin/sh
# tests/cuda/emu.sh [BUILD] [-- ARGS]: runs the CUDA backend's own source on the CPU, against the
# CPU backend, with test_cuda_ops: no GPU needed. kernels/cuda/*.cu are compiled by g++ against
# the host emulation of the CUDA runtime, built-ins and cuBLAS in tests/cuda/emu/ (blocks run one
# after another, each block's threads as cooperative fibers: barriers, warp shuffles and votes
# behave as on the GPU; device memory starts as NaN; cuBLAS is OpenBLAS in column-major).
# The only rewrite of the sources is the launch syntax (k<<<grid, block, smem, stream>>>(args)
# becomes emu_launch([&]{ k(args); }, grid, block, smem, stream)) and the dynamic shared-memory
# declaration. SAN=address adds AddressSanitizer (out-of-bounds device accesses);
# FTK_EMU_ORDER picks the order in which the threads of a block are resumed: forward (default),
# reverse, random, or warp-ahead / warp-ahead-reverse (one warp runs until it waits at a block
# barrier before the next starts: the largest skew between warps the barriers allow, which turns
# a missing __syncthreads into NaN or a wrong result; a removed end-of-tile barrier in the
# attention forward fails there with NMSE ~0.1 while passing in the other orders).
# What it cannot check: see tests/cuda/emu/emu.cpp; a pass here is not a pass on a GPU.
# Needs BUILD/lib/libftk.a (make CUDA=1 lib) for libcore. Builds into BUILD/cuda-emu/.
set -eu
BUILD=${1:-build}
OUT=$BUILD/cuda-emu
EMU=tests/cuda/emu
mkdir -p "$OUT"
SANF=""
[ -n "${SAN:-}" ] && SANF="-fsanitize=$SAN -fno-omit-frame-pointer"
CXXF="-std=c++20 -O1 -g -fPIC -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas -I$EMU/include -Ilibcore/include -Ilibcore -Ikernels/cuda -DFTK_BUILDING_LIB -DFTK_HAVE_CUDA $SANF"
objs=""
for f in kernels/cuda/*.cu; do
    b=$(basename "$f" .cu)
    case $b in device|cxxabi) continue;; esac
    python3 - "$f" "$OUT/$b.cpp" <<'PY'
import re, sys
src = open(sys.argv[1]).read()
src = src.replace('extern __shared__ float smem[];', 'float *smem = (float *)emu_dyn_smem();')
launch = re.compile(r'(\b[A-Za-z_]\w*(?:<[^<>;]*>)?)<<<(.*?)>>>\((.*?)\);', re.S)
src, n = launch.subn(lambda m: 'emu_launch([&]() { %s(%s); }, %s);' % (m.group(1), m.group(3), m.group(2)), src)
if '<<<' in src:
    sys.exit('emu: a launch left unrewritten in ' + sys.argv[1])
open(sys.argv[2], 'w').write('#line 1 "%s"\n' % sys.argv[1] + src)
PY
    # shellcheck disable=SC2086
    g++ $CXXF -c "$OUT/$b.cpp" -o "$OUT/$b.o"
    objs="$objs $OUT/$b.o"
done
# shellcheck disable=SC2086
g++ $CXXF -c $EMU/emu.cpp -o "$OUT/emu.o"
# shellcheck disable=SC2086
gcc -std=c11 -O1 -g -Itests/unit -Ilibcore/include $(pkg-config --cflags libcjson) $SANF -c tests/unit/test_cuda_ops.c -o "$OUT/test_cuda_ops.o"
# The emulated backend is a libftk-cuda.so beside the test: libcore opens the CUDA library from
# the directory of the object that holds libcore (here the statically linked test), and the test
# exports libcore's symbols to it (-rdynamic). It is also linked directly, for a libcore that
# names ftk_backend_cuda itself.
# shellcheck disable=SC2086
g++ $SANF -shared -Wl,-soname,libftk-cuda.so -o "$OUT/libftk-cuda.so" $objs "$OUT/emu.o" -lopenblas -lm
# shellcheck disable=SC2086
g++ $SANF -rdynamic -o "$OUT/test_cuda_ops" "$OUT/test_cuda_ops.o" -L"$OUT" -lftk-cuda -Wl,-rpath,"$(cd "$OUT" && pwd)" \
    -lstdc++ "$BUILD/lib/libftk.a" $(pkg-config --libs libzstd libarchive libcjson 2>/dev/null) -lopenblas -lm -ldl -pthread
shift 2>/dev/null || true
[ "${1:-}" = "--" ] && shift
echo "== $OUT/test_cuda_ops (the CUDA backend's source on the host emulation)"
"$OUT/test_cuda_ops" cuda "$@"
