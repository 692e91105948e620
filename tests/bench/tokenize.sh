#!/bin/sh
# tests/bench/tokenize.sh: single-thread tokenizer speed, ftk against HuggingFace tokenizers,
# side by side in one run, medians of 3, for each fixture tokenizer.
#
#   tests/bench/tokenize.sh [--write] [BUILD]      (from the repository root; BUILD=build)
#
# The corpus (>= 20 MB of mixed English, Chinese and code, JSONL {"text": ...}) is made
# deterministically by tests/bench/make_tokenize_corpus.py from ../shared/fixtures LLaMA-Factory
# demo data and /usr/include headers, into tests/bench/out/. Timed:
#   ftk-lib   tests/bench/bench_tokenizer.c: ftk_tokenizer_encode per document, parsing excluded
#   ftk-tool  `ftk tokenize --format text --threads 1 < corpus > /dev/null`, whole process
#             (tokenizer load, JSON reading, stream writing included)
#   hf        tests/bench/bench_tokenizer_hf.py: Tokenizer.encode_batch over all documents with
#             RAYON_NUM_THREADS=1 (one thread), tokenizers from .venv
# MB/s are 10^6 bytes of UTF-8 text per second, by wall time and by process CPU time (the
# machine may be shared: CPU time is the steadier of the two).
# --write replaces the "## Tokenizer" section of docs/PERF.md with the table.
set -eu
WRITE=0
if [ "${1:-}" = "--write" ]; then WRITE=1; shift; fi
BUILD=${1:-build}
PY=${PYTHON:-.venv/bin/python}
OUT=tests/bench/out
CORPUS=$OUT/tokenize-corpus.jsonl
REPS=3
mkdir -p "$OUT" "$BUILD/bench"

make --no-print-directory -j2 lib tools >/dev/null
# shellcheck disable=SC2046
cc -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Ilibcore/include -o "$BUILD/bench/bench_tokenizer" \
    tests/bench/bench_tokenizer.c "$BUILD/lib/libftk.a" \
    $(pkg-config --libs libzstd libarchive libcjson libpcre2-8 libutf8proc) -lopenblas -lm -ldl -pthread
[ -s "$CORPUS" ] || python3 tests/bench/make_tokenize_corpus.py "$CORPUS" 20

field() { sed -n "s/.*median \([0-9.]*\) MB\/s wall, \([0-9.]*\) MB\/s cpu.*/\\$1/p"; }
ROWS=$OUT/tokenize-rows.md
: > "$ROWS"
for name in sp-bpe-32k llama3-128k qwen3-151k; do
    dir=tests/fixtures/tokenizers/$name
    lib=$("$BUILD/bench/bench_tokenizer" "$dir" "$CORPUS" $REPS 2>/dev/null)
    echo "$lib"
    hf=$(RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false "$PY" tests/bench/bench_tokenizer_hf.py "$dir" "$CORPUS" $REPS 2>/dev/null)
    echo "$hf"
    # the tool: whole process, 3 runs, median of wall and of user+sys
    tool=$("$PY" - "$BUILD/bin/ftk" "$dir" "$CORPUS" $REPS <<'PYEOF'
import os, resource, statistics, subprocess, sys, time
ftk, d, corpus, reps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
mb = sum(len(l) for l in open(corpus, "rb")) / 1e6  # JSONL bytes read by the tool
walls, cpus = [], []
for _ in range(reps):
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(corpus, "rb") as fin, open(os.devnull, "wb") as fout:
        subprocess.run([ftk, "tokenize", "--tokenizer", d, "--format", "text", "--threads", "1"],
                       stdin=fin, stdout=fout, check=True)
    w = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    walls.append(w)
    cpus.append((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime))
print(f"ftk tokenize {d}: {mb:.1f} MB of JSONL, median {mb / statistics.median(walls):.2f} MB/s wall, "
      f"{mb / statistics.median(cpus):.2f} MB/s cpu")
PYEOF
)
    echo "$tool"
    lw=$(echo "$lib" | field 1); lc=$(echo "$lib" | field 2)
    hw=$(echo "$hf" | field 1); hc=$(echo "$hf" | field 2)
    tw=$(echo "$tool" | field 1); tc=$(echo "$tool" | field 2)
    ntok=$(echo "$lib" | sed -n 's/.* \([0-9]*\) tokens.*/\1/p')
    htok=$(echo "$hf" | sed -n 's/.* \([0-9]*\) tokens.*/\1/p')
    [ "$ntok" = "$htok" ] || echo "WARNING: token counts differ: ftk $ntok, hf $htok" >&2
    ratio=$(python3 -c "print(f'{$lc / $hc:.1f}x cpu, {$lw / $hw:.1f}x wall')")
    echo "| $name | $ntok | $lc ($lw) | $tc ($tw) | $hc ($hw) | $ratio |" >> "$ROWS"
done

HFV=$("$PY" -c 'import tokenizers; print(tokenizers.__version__)')
TABLE=$OUT/tokenize-table.md
{
    echo "## Tokenizer"
    echo
    echo "Single-thread encode speed on $(python3 -c "import json;print(round(sum(len(json.loads(l)['text'].encode()) for l in open('$CORPUS'))/1e6,1))") MB of mixed English, Chinese and code"
    echo "(tests/bench/make_tokenize_corpus.py: LLaMA-Factory demo data + /usr/include headers, 40/30/30 %),"
    echo "no special tokens, medians of $REPS runs; MB/s by process CPU time (wall time in brackets;"
    echo "the machine is shared, so CPU time is the steadier). Measured $(date -u +%Y-%m-%d) on $(nproc) cores of"
    echo "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1); HF tokenizers $HFV with RAYON_NUM_THREADS=1."
    echo "ftk-tool is the whole \`ftk tokenize --format text --threads 1\` process (load, JSON, stream"
    echo "output; MB of JSONL input). Token counts are identical to HF's, and every document's ids"
    echo "match (BENCH_DUMP=FILE bench_tokenizer, then tests/bench/compare_ids_hf.py)."
    echo
    echo "| tokenizer | tokens | ftk-lib MB/s | ftk-tool MB/s | HF tokenizers MB/s | ftk-lib / HF |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: |"
    cat "$ROWS"
    echo
    echo "Re-run: \`tests/bench/tokenize.sh --write\` (needs .venv with tokenizers and ../shared/fixtures)."
} > "$TABLE"
cat "$TABLE"
if [ $WRITE = 1 ]; then
    python3 - "$TABLE" <<'PYEOF'
import os, re, sys
table = open(sys.argv[1]).read().rstrip("\n") + "\n"
path = "docs/PERF.md"
old = open(path).read() if os.path.exists(path) else "# Performance\n\n"
m = re.search(r"^## Tokenizer\n.*?(?=^## |\Z)", old, flags=re.S | re.M)
new = old[:m.start()] + table + ("\n" + old[m.end():] if old[m.end():] else "") if m else old.rstrip("\n") + "\n\n" + table
open(path, "w").write(new)
print("wrote the Tokenizer section of", path)
PYEOF
fi
