#!/usr/bin/env bash
# tests/bench/llamacpp_build.sh DIR: build llama.cpp's CPU benchmark (llama-bench) in DIR/build for
# tests/bench/generate_cpu.py (LLAMACPP_DIR=DIR). Not part of the build or of CI: llama.cpp is an
# optional peer and is never vendored here.
#
# DIR is a llama.cpp source tree. Without one, `--source` puts the tree that docs/PERF.md measured
# there first: llama.cpp ggml-org/llama.cpp@0c1e57098, as vendored in the PyPI sdist of
# llama-cpp-python 0.3.36 (vendor/llama.cpp; its CHANGELOG names that commit). A git checkout of
# the same commit builds the same way.
#
# CPU only (no CUDA), Release, -march=native for ggml's CPU backend (llama.cpp's default), no BLAS
# (llama.cpp's default: its own F32 kernels), 2 jobs. Also installs, into .venv, what its
# convert_hf_to_gguf.py needs beside torch and transformers: gguf and sentencepiece.
set -euo pipefail
src=0
if [ "${1:-}" = --source ]; then src=1; shift; fi
dir=${1:?usage: tests/bench/llamacpp_build.sh [--source] DIR}
root=$(cd "$(dirname "$0")/../.." && pwd)
if [ $src = 1 ]; then
    [ -e "$dir" ] && { echo "llamacpp_build: $dir exists; give a new directory with --source" >&2; exit 2; }
    tmp=$(mktemp -d)
    "$root/.venv/bin/pip" download --no-deps --no-binary :all: -d "$tmp" llama-cpp-python==0.3.36
    tar -xzf "$tmp"/llama_cpp_python-0.3.36.tar.gz -C "$tmp"
    grep -m1 'llama.cpp@' "$tmp"/llama_cpp_python-0.3.36/CHANGELOG.md
    mv "$tmp"/llama_cpp_python-0.3.36/vendor/llama.cpp "$dir"
    rm -f "$dir/.git"   # a submodule link into the llama-cpp-python repo, absent here
    rm -rf "$tmp"
fi
[ -f "$dir/CMakeLists.txt" ] && [ -f "$dir/convert_hf_to_gguf.py" ] || { echo "llamacpp_build: $dir is no llama.cpp tree" >&2; exit 2; }
command -v cmake >/dev/null || { echo "llamacpp_build: needs cmake (apt-get install cmake)" >&2; exit 1; }
cmake -S "$dir" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=OFF -DGGML_NATIVE=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_OPENSSL=OFF
cmake --build "$dir/build" --target llama-bench -j2
"$root/.venv/bin/pip" install gguf sentencepiece
echo "llamacpp_build: built $dir/build/bin/llama-bench; run: LLAMACPP_DIR=$dir .venv/bin/python tests/bench/generate_cpu.py"
