#!/usr/bin/env bash
# tests/tools/test_pack.sh: ftk pack from the command line (docs/tools/pack.md).
# Example streams come from tests/tools/pack_gen.c (built here against libftk); batches are read
# back with ftk dump and jq. Example i: tokens [10+i, marker, 102, 103, ...], marker 1 for
# chosen/plain and 2 for rejected, first third prompt (label -100).
source "$(dirname "$0")/lib.sh"

GEN=$T/pack_gen
LIBDIR=$(cd "$FTK/../lib" && pwd)
if ! ${CC:-cc} -std=c11 -D_GNU_SOURCE -O2 -I"$ROOT/libcore/include" "$ROOT/tests/tools/pack_gen.c" \
        -L"$LIBDIR" -lftk -Wl,-rpath,"$LIBDIR" -o "$GEN" 2>"$T/cc.err"; then
    fail "build pack_gen" "$(head -c 600 "$T/cc.err")"; summary; exit 1
fi
gen() { "$GEN" gen "$@"; }
batches() { ftk dump "$1" | jq -c 'select(.kind == "batch") | .tensors'; }

# ---- usage -------------------------------------------------------------------------------------
check "--help exits 0" ftk-pack --help
check_eq "--version" "$(ftk-pack --version)" "ftk-pack 0.1.0"
check_eq "ftk pack dispatches" "$(ftk pack --version)" "ftk-pack 0.1.0"
check_fail "unknown option is usage" 2 "ftk-pack: error: unknown" ftk-pack --frobnicate
check_fail "packing needs --seq-len" 2 "--seq-len" ftk-pack --packing
check_fail "--truncate and --drop exclude each other" 2 "exclude" ftk-pack --truncate --drop --seq-len 8
check_fail "bad number" 2 "--batch-size wants an integer" ftk-pack --batch-size 0
check_fail "missing input file" 1 "ftk-pack: error: $T/nope.fts" ftk-pack "$T/nope.fts"

# ---- padded batches: alignment, padding --------------------------------------------------------
gen --kind sft --count 50 --min-len 2 --max-len 40 > "$T/sft.fts"
ftk-pack --batch-size 4 "$T/sft.fts" > "$T/b.fts"
batches "$T/b.fts" > "$T/b.jsonl"
check_eq "13 batches of <= 4 rows" "$(jq -s '[length, (map(.input_ids | length) | max)] | tostring' -r "$T/b.jsonl")" "[13,4]"
check_eq "T is a multiple of 8" "$(jq '.input_ids[0] | length % 8' "$T/b.jsonl" | sort -u)" "0"
# HF convention: labels sit under the token they label (the model shifts), so a labelled
# position always equals input_ids at the same position.
check_eq "labels align with input_ids" "$(jq '[. as $t | range(0; .input_ids | length) as $r
    | range(0; .input_ids[0] | length) as $c | select($t.labels[$r][$c] != -100
    and $t.labels[$r][$c] != $t.input_ids[$r][$c])] | length' "$T/b.jsonl" | sort -u)" "0"
check_eq "last token of every row is labelled (not shifted away)" "$(jq '[. as $t | range(0; .input_ids | length) as $r
    | ([$t.segment_ids[$r][] | select(. == 1)] | length) as $n
    | select($t.labels[$r][$n - 1] != $t.input_ids[$r][$n - 1])] | length' "$T/b.jsonl" | sort -u)" "0"
check_eq "no label, id pad, segment 0 on padding" "$(jq '[. as $t | range(0; .input_ids | length) as $r
    | range(0; .input_ids[0] | length) as $c | select($t.segment_ids[$r][$c] == 0)
    | select($t.labels[$r][$c] != -100 or $t.input_ids[$r][$c] != 0)] | length' "$T/b.jsonl" | sort -u)" "0"
check_eq "positions 0..n-1 on real tokens" "$(jq '[. as $t | range(0; .input_ids | length) as $r
    | range(0; .input_ids[0] | length) as $c | select($t.segment_ids[$r][$c] == 1 and $t.position_ids[$r][$c] != $c)]
    | length' "$T/b.jsonl" | sort -u)" "0"
ftk dump "$T/b.fts" | head -n 1 > "$T/h.json"
check_eq "header: producer, tokenizer hash, pad id, unknown key kept" \
    "$(jq -r '.meta | [.producer, .tokenizer_hash, .pad_token_id, .vocab_size, .custom_key, .example_kind] | join(" ")' "$T/h.json")" \
    "ftk-pack abc123 0 32000 kept sft"
ftk dump "$T/b.fts" | tail -n 1 > "$T/e.json"
check_eq "end: counts" "$(jq -r '.meta | [.kind, .examples, .batches, .truncated, .dropped] | join(" ")' "$T/e.json")" "end 50 13 0 0"
check_eq "end: padding fraction in [0,1)" "$(jq '.meta.padding_fraction | tonumber | . >= 0 and . < 1' "$T/e.json")" "true"
ftk-pack --batch-size 4 < "$T/sft.fts" > "$T/b2.fts"
check "stdin and a file argument give the same stream" cmp "$T/b.fts" "$T/b2.fts"
ftk-pack --batch-size 4 --seq-len 48 "$T/sft.fts" | ftk dump > "$T/s.jsonl"
check_eq "--seq-len fixes T and goes in the header" \
    "$(jq -r 'if .kind == "stream" then .meta.seq_len elif .kind == "batch" then (.tensors.input_ids[0] | length | tostring) else empty end' "$T/s.jsonl" | sort -u | tr '\n' ' ')" "48 "
ftk-pack --max-tokens 96 "$T/sft.fts" > "$T/m.fts"
check_eq "--max-tokens bounds B*T" "$(batches "$T/m.fts" | jq '(.input_ids | length) * (.input_ids[0] | length) <= 96' | sort -u)" "true"

# ---- neat packing --------------------------------------------------------------------------------
ftk-pack --neat-packing --seq-len 64 --batch-size 4 "$T/sft.fts" > "$T/n.fts"
batches "$T/n.fts" > "$T/n.jsonl"
# Within a row a token may attend to earlier tokens of its own segment only. So a segment must
# be one example: it starts at position 0 with a new segment id, continues position +1 with the
# same id, and its tokens are the example's (token 1 is 1, token t >= 2 is 100 + t).
check_eq "neat packing: segments and positions restart exactly at example starts" "$(jq '[. as $t
    | range(0; .input_ids | length) as $r | range(0; .input_ids[0] | length) as $c
    | {s: $t.segment_ids[$r][$c], p: $t.position_ids[$r][$c], id: $t.input_ids[$r][$c],
       ps: (if $c > 0 then $t.segment_ids[$r][$c - 1] else 0 end),
       pp: (if $c > 0 then $t.position_ids[$r][$c - 1] else -1 end)}
    | select(.s != 0) | select((((.s == .ps and .p == .pp + 1) or (.s == .ps + 1 and .p == 0)) | not)
        or (.p == 1 and .id != 1) or (.p >= 2 and .id != 100 + .p))] | length' "$T/n.jsonl" | sort -u)" "0"
check_eq "neat packing: every example once" "$(jq '. as $t | range(0; .input_ids | length) as $r
    | range(0; .input_ids[0] | length) as $c | select($t.segment_ids[$r][$c] != 0 and $t.position_ids[$r][$c] == 0)
    | $t.input_ids[$r][$c]' "$T/n.jsonl" | sort -n | uniq | wc -l | tr -d ' ')" "50"
check_eq "neat packing: padding has segment 0 and no label" "$(jq '[. as $t | range(0; .input_ids | length) as $r
    | range(0; .input_ids[0] | length) as $c | select($t.segment_ids[$r][$c] == 0 and $t.labels[$r][$c] != -100)]
    | length' "$T/n.jsonl" | sort -u)" "0"
check_eq "neat packing: no label at a segment start (the shifted loss stays inside examples)" "$(jq '[. as $t
    | range(0; .input_ids | length) as $r | range(0; .input_ids[0] | length) as $c
    | select($t.segment_ids[$r][$c] != 0 and $t.position_ids[$r][$c] == 0 and $t.labels[$r][$c] != -100)]
    | length' "$T/n.jsonl" | sort -u)" "0"
check_eq "neat packing: header records the mode" "$(ftk dump "$T/n.fts" | head -n 1 | jq -r '.meta.pack_mode + " " + .meta.seq_len')" "neat_packing 64"

# ---- preference batches --------------------------------------------------------------------------
gen --kind pairwise --count 21 --min-len 3 --max-len 30 > "$T/pw.fts"
ftk-pack --batch-size 4 --shuffle --seed 3 --shuffle-buffer 8 "$T/pw.fts" > "$T/p.fts"
batches "$T/p.fts" > "$T/p.jsonl"
check_eq "pairwise: chosen at row i, rejected at i+B/2, same pair" "$(jq '(.input_ids | length) as $B
    | [range(0; $B / 2) as $i | select(.input_ids[$i][0] != .input_ids[$i + $B / 2][0]
        or .input_ids[$i][1] != 1 or .input_ids[$i + $B / 2][1] != 2)] | length' "$T/p.jsonl" | sort -u)" "0"
check_eq "pairwise: every pair once" "$(jq '(.input_ids | length) as $B | .input_ids[0:$B / 2][][0]' "$T/p.jsonl" | sort -n | uniq | wc -l | tr -d ' ')" "21"
check_eq "pairwise: batches marked pairwise" "$(ftk dump "$T/p.fts" | jq -r 'select(.kind == "batch") | .meta.pairwise' | sort -u)" "1"

gen --kind kto --count 10 --min-len 3 --max-len 20 > "$T/kto.fts"
ftk-pack --batch-size 4 "$T/kto.fts" | ftk dump | jq -c 'select(.kind == "batch") | .tensors' > "$T/k.jsonl"
check_eq "kto: tags and KL rows beside the rows" "$(jq -c '[(.kto_tag | length) == (.input_ids | length),
    (.kl_input_ids | length) == (.input_ids | length), (.kl_labels | length) == (.input_ids | length)]' "$T/k.jsonl" | sort -u)" "[true,true,true]"
check_fail "kto cannot be neat-packed, naming that flag" 1 "--neat-packing works on text and sft streams, not kto" \
    ftk-pack --neat-packing --seq-len 64 --batch-size 4 "$T/kto.fts"

# ---- determinism ------------------------------------------------------------------------------
gen --kind sft --count 500 --min-len 1 --max-len 64 > "$T/big.fts"
for s in 1 2; do ftk-pack --shuffle --seed 42 --sort-by-length --sort-buffer 64 "$T/big.fts" > "$T/d$s.fts"; done
ftk-pack --shuffle --seed 43 --sort-by-length --sort-buffer 64 "$T/big.fts" > "$T/d3.fts"
check "same seed: byte-identical stream" cmp "$T/d1.fts" "$T/d2.fts"
check "another seed: another stream" bash -c "! cmp -s '$T/d1.fts' '$T/d3.fts'"

# ---- bad input --------------------------------------------------------------------------------
check_fail "a batch stream is refused" 1 "batch stream" ftk-pack "$T/b.fts"
gen --kind sft --count 5 --min-len 30 --max-len 30 > "$T/long.fts"
check_fail "too long without a policy names the example" 1 "example 0 (message 1) has 30 tokens" \
    ftk-pack --seq-len 16 "$T/long.fts"
check_eq "--truncate counts" "$(ftk-pack --seq-len 16 --truncate "$T/long.fts" | ftk dump | tail -n 1 | jq -r .meta.truncated)" "5"
check_eq "--drop counts" "$(ftk-pack --seq-len 16 --drop "$T/long.fts" | ftk dump | tail -n 1 | jq -r '.meta.dropped + " " + .meta.batches')" "5 0"
check_fail "tokenizer hash mismatch" 1 "tokenizer hash mismatch" ftk-pack --expect-tokenizer fff "$T/sft.fts"
check "tokenizer hash match" ftk-pack --expect-tokenizer abc123 "$T/sft.fts"
head -c 300 "$T/sft.fts" > "$T/cut.fts"
check_fail "truncated input" 1 "ftk-pack: error:" ftk-pack "$T/cut.fts"
ftk-pack --seq-len 16 -o "$T/o.fts" "$T/long.fts" 2>/dev/null
check "a failed run leaves no -o file" test ! -e "$T/o.fts" -a -z "$(ls "$T" | grep 'o.fts.tmp')"
ftk-pack --batch-size 4 -o "$T/o.fts" "$T/sft.fts"
check "-o writes the stream" cmp "$T/o.fts" "$T/b.fts"

# ---- with the real ftk tokenize -----------------------------------------------------------------
TOK=/work/shared/fixtures/tokenizers/qwen3-151k
DATA=/work/shared/fixtures/data/llamafactory
[ -d "$ROOT/../shared" ] && TOK=$ROOT/../shared/fixtures/tokenizers/qwen3-151k DATA=$ROOT/../shared/fixtures/data/llamafactory
if [ -x "$FTK/ftk-tokenize" ] && [ -f "$TOK/tokenizer.json" ] && [ -f "$DATA/dpo_en_demo.json" ]; then
    hash=$(sha256sum "$TOK/tokenizer.json" | cut -c1-64)
    check "ftk tokenize alpaca_en_demo (input of the next checks)" \
        sh -c "ftk tokenize --tokenizer '$TOK' --template qwen3 '$DATA/alpaca_en_demo.json' > '$T/alpaca.fts'"
    ftk-pack --expect-tokenizer "$hash" --neat-packing --seq-len 1024 --batch-size 8 --truncate \
        --sort-by-length "$T/alpaca.fts" > "$T/ap.fts"
    check_eq "tokenize | pack: every example packed, little padding" \
        "$(ftk dump "$T/ap.fts" | tail -n 1 | jq -r '[.meta.examples, (.meta.padding_fraction | tonumber < 0.02)] | map(tostring) | join(" ")')" "999 true"
    check_eq "tokenize | pack: pad id and tokenizer from the header" \
        "$(ftk dump "$T/ap.fts" | head -n 1 | jq -r '.meta.pad_token_id + " " + .meta.tokenizer_hash')" "151643 $hash"
    check "ftk tokenize dpo_en_demo (input of the next checks)" \
        sh -c "ftk tokenize --tokenizer '$TOK' --template qwen3 --dataset-info '$DATA/dataset_info.json' \
               --dataset dpo_en_demo > '$T/dpo.fts'"
    ftk-pack --batch-size 4 "$T/dpo.fts" | ftk dump | jq -c 'select(.kind == "batch") | .tensors' > "$T/dpo.jsonl"
    # chosen and rejected of a pair share their prompt: rows i and i+B/2 agree up to the first label
    check_eq "tokenize | pack: pairwise rows i and i+B/2 share the prompt" "$(jq '(.input_ids | length) as $B
        | [range(0; $B / 2) as $i | (.labels[$i] | map(. == -100) | index(false)) as $p
           | select(.input_ids[$i][0:$p] != .input_ids[$i + $B / 2][0:$p])] | length' "$T/dpo.jsonl" | sort -u)" "0"
    check_fail "tokenize | pack: another tokenizer's stream is refused" 1 "tokenizer hash mismatch" \
        ftk-pack --expect-tokenizer "$(printf '0%.0s' $(seq 64))" "$T/dpo.fts"
    check "tokenize | pack: --tokenizer accepts its own stream" ftk-pack --tokenizer "$TOK" "$T/dpo.fts"
    check_fail "tokenize | pack: --tokenizer refuses another's" 1 "tokenizer hash mismatch" \
        ftk-pack --tokenizer "$TOK/../llama3-128k" "$T/dpo.fts"
else
    echo "skip: ftk tokenize or the fixtures are missing (tokenize | pack checks)"
fi

# ---- bounded memory on 1 million examples ----------------------------------------------------
# The input is ~250 MB uncompressed; pack holds the shuffle buffer (10000 examples), a sort
# window and one batch, so its peak RSS must stay far below the stream's size.
if [ -x /usr/bin/time ]; then
    gen --kind sft --count 1000000 --min-len 1 --max-len 32 --level 1 \
        | /usr/bin/time -v -o "$T/time" ftk-pack --batch-size 8 --shuffle --shuffle-buffer 10000 \
            --sort-by-length --level 1 | ftk dump --shapes | tail -n 1 > "$T/end1m.json"
    rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$T/time")
    check_eq "1M examples: all packed" "$(jq -r '.meta.examples + " " + .meta.batches' "$T/end1m.json")" "1000000 125000"
    check_eq "1M examples: max RSS ${rss:-?} kB below 48 MB" "$([ -n "$rss" ] && [ "$rss" -lt 49152 ] && echo yes)" "yes"
else
    fail "1M examples: /usr/bin/time missing"
fi

summary
