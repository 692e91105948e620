#!/usr/bin/env bash
# tests/tools/test_merge_lora.sh: ftk merge-lora on the tiny HF fixtures: the HF layout it
# writes (config dtype, shards and index, copied files, archives), that the result loads and
# trains again, and the errors with their exit codes. Numerics: tests/unit/test_plugin_merge.c.
. "$(dirname "$0")/lib.sh"
FIX="$ROOT/tests/fixtures/hf_tiny"

check "merge llama + its peft adapter" ftk merge-lora --model "$FIX/llama" --adapter "$FIX/llama/adapter" --output "$T/m"
check "HF layout" test -f "$T/m/model.safetensors" -a -f "$T/m/config.json" -a -f "$T/m/generation_config.json"
check_eq "config keeps the base's dtype" "$(jq -r .dtype "$T/m/config.json")" "float32"
check_eq "config otherwise unchanged" "$(jq -S 'del(.dtype)' "$T/m/config.json")" "$(jq -S 'del(.dtype)' "$FIX/llama/config.json")"
check_eq "summary on stderr" "$(ftk merge-lora --model "$FIX/llama" --adapter "$FIX/llama/adapter" -o "$T/m2" 2>&1 >/dev/null | sed 's/.*: //')" \
    "21 tensors (14 with LoRA folded in), float32, 23872 bytes in 1 file"
mkdir -p "$T/nulldt" && cp "$FIX/llama/model.safetensors" "$T/nulldt/" && jq '.dtype = null' "$FIX/llama/config.json" > "$T/nulldt/config.json"
check "a base whose config says \"dtype\": null" ftk merge-lora -q --model "$T/nulldt" --adapter "$FIX/llama/adapter" -o "$T/mnull"
check_eq "  gets one dtype key, float32" "$(grep -c '"dtype"' "$T/mnull/config.json") $(jq -r .dtype "$T/mnull/config.json")" "1 float32"
check "bf16, sharded at 5KB" ftk merge-lora -q --model "$FIX/qwen3" --adapter "$FIX/qwen3/adapter" --dtype bf16 --shard-size 5KB -o "$T/s"
check_eq "config dtype bfloat16" "$(jq -r .dtype "$T/s/config.json")" "bfloat16"
n=$(ls "$T/s"/model-*-of-*.safetensors | wc -l)
check "several shards" test "$n" -gt 1
check_eq "index names every shard" "$(jq -r '.weight_map[]' "$T/s/model.safetensors.index.json" | sort -u | wc -l)" "$n"
check_eq "index total_size = bf16 bytes of all tensors" "$(jq .metadata.total_size "$T/s/model.safetensors.index.json")" "13024"
check_eq "no model.safetensors beside the index" "$(ls "$T/s" | grep -c '^model.safetensors$')" "0"
printf '{"kind":"stream","meta":{"producer":"t"}}\n{"kind":"batch","tensors":{"input_ids":[[1,2,3]],"labels":[[1,2,3]],"position_ids":[[0,1,2]]}}\n' \
    | ftk dump --from-json > "$T/b.fts"
check "the merged model trains again (ftk reads the index)" ftk train-step --model "$T/s" --max-steps 1 --metrics /dev/null "$T/b.fts"
# an adapter ftk trained (ftk's own layout): merged loss = base + adapter loss, through ftk eval
printf '{"kind":"stream","meta":{"producer":"t"}}\n{"kind":"batch","tensors":{"input_ids":[[5,9,14,3,22,40,7,1]],"labels":[[-100,-100,14,3,22,40,7,1]],"position_ids":[[0,1,2,3,4,5,6,7]]}}\n' \
    | ftk dump --from-json > "$T/b8.fts"
check "train a LoRA with ftk" ftk train-step --model "$FIX/llama" --lora-rank 4 --lr 5e-2 --lr-scheduler constant --max-steps 3 \
    --metrics /dev/null --output "$T/ad" "$T/b8.fts"
check "merge ftk's adapter" ftk merge-lora -q --model "$FIX/llama" --adapter "$T/ad" -o "$T/mt"
l_un=$(ftk eval --model "$FIX/llama" --adapter "$T/ad" "$T/b8.fts" | jq .loss)
l_me=$(ftk eval --model "$T/mt" "$T/b8.fts" | jq .loss)
l_base=$(ftk eval --model "$FIX/llama" "$T/b8.fts" | jq .loss)
check "merged loss = base + adapter loss (1e-5), != base loss" \
    jq -n --argjson a "$l_un" --argjson b "$l_me" --argjson c "$l_base" '(($a - $b) | fabs) < 1e-5 * $a and (($a - $c) | fabs) > 1e-3'
# other mergeable methods go through their plugin's merge slot: merged loss = base + adapter loss
# (PiSSA/OLoRA: the plugin recomputes the residual base on loading, and merges into it)
for m in "dora:lora --peft-opt use_dora=true" "pissa:lora --peft-opt init_lora_weights=pissa --lora-rank 2" \
         "olora:lora --peft-opt init_lora_weights=olora --lora-rank 2" "ia3:ia3" \
         "adalora:adalora --peft-opt total_step=3 --peft-opt tinit=0 --peft-opt tfinal=0 --peft-opt init_r=4 --peft-opt target_r=2" \
         "diffprune:diffprune" "bitfit:bitfit" "bitfit-some:bitfit --peft-opt target_modules=q_proj,down_proj" \
         "patterns:lora --lora-rank 2 --peft-opt rank_pattern={\"q_proj\":3} --peft-opt alpha_pattern={\"layers[.]1[.]self_attn[.]v_proj\":32} --peft-opt modules_to_save=lm_head"; do
    name=${m%%:*}; m=${m#*:}
    check "train $name with ftk" ftk train-step --model "$FIX/llama" --finetuning-type $m --lr 5e-2 --lr-scheduler constant \
        --max-steps 3 --metrics /dev/null --output "$T/ad-$name" "$T/b8.fts"
    check "merge the $name adapter" ftk merge-lora -q --model "$FIX/llama" --adapter "$T/ad-$name" -o "$T/mt-$name"
    l_un=$(ftk eval --model "$FIX/llama" --adapter "$T/ad-$name" "$T/b8.fts" | jq .loss)
    l_me=$(ftk eval --model "$T/mt-$name" "$T/b8.fts" | jq .loss)
    check "$name: merged loss = base + adapter loss (1e-5), != base loss" \
        jq -n --argjson a "$l_un" --argjson b "$l_me" --argjson c "$l_base" '(($a - $b) | fabs) < 1e-5 * $a and (($a - $c) | fabs) > 1e-4'
done
# peft's per-module rank_pattern / alpha_pattern and modules_to_save, as ftk trains and saves them
check_eq "patterns: saved in adapter_config.json" "$(jq -c '[.r, .rank_pattern, .alpha_pattern, .modules_to_save]' "$T/ad-patterns/adapter_config.json")" \
    '[2,{"q_proj":3},{"layers[.]1[.]self_attn[.]v_proj":32},["lm_head"]]'
check_eq "patterns: k_proj has rank 2, q_proj 3" \
    "$(st_header "$T/ad-patterns/adapter_model.safetensors" | jq -r '[to_entries[] | select(.key | test("layers.0.self_attn.[qk]_proj.lora_A"))] | sort_by(.key) | map(.value.shape[0]) | @text')" "[2,3]"
# BitFit merges into biases: new ones need Llama's attention_bias / mlp_bias (the group's other
# linears get zero biases); Qwen2's own q/k/v biases are replaced; no place for them: refused
check_eq "bitfit: config switches set" "$(jq -c '[.attention_bias, .mlp_bias]' "$T/mt-bitfit-some/config.json")" "[true,true]"
check_eq "bitfit: a bias for every linear (zero where untrained)" \
    "$(st_header "$T/mt-bitfit-some/model.safetensors" | jq '[keys[] | select(endswith("_proj.bias"))] | length')" "14"
check "train BitFit on qwen2's q/k/v" ftk train-step --model "$FIX/qwen2" --finetuning-type bitfit --peft-opt target_modules=q_proj,k_proj,v_proj \
    --lr 5e-2 --max-steps 2 --metrics /dev/null --output "$T/ad-bq" "$T/b8.fts"
check "merge it" ftk merge-lora -q --model "$FIX/qwen2" --adapter "$T/ad-bq" -o "$T/mt-bq"
check "qwen2: merged loss = base + adapter loss" jq -n --argjson a "$(ftk eval --model "$FIX/qwen2" --adapter "$T/ad-bq" "$T/b8.fts" | jq .loss)" \
    --argjson b "$(ftk eval --model "$T/mt-bq" "$T/b8.fts" | jq .loss)" '(($a - $b) | fabs) < 1e-5 * $a'
check_eq "qwen2: its own biases replaced, no switch" "$(jq -c '[.attention_bias, .mlp_bias]' "$T/mt-bq/config.json")" "[null,null]"
# (IA)^3 scales Qwen2's v_proj output, bias included (peft's merge: b *= l)
check "train (IA)3 on qwen2" ftk train-step --model "$FIX/qwen2" --finetuning-type ia3 --lr 5e-2 --max-steps 2 --metrics /dev/null \
    --output "$T/ad-iq" "$T/b8.fts"
check "merge it (v_proj's bias scaled)" ftk merge-lora -q --model "$FIX/qwen2" --adapter "$T/ad-iq" -o "$T/mt-iq"
check "qwen2 (IA)3: merged loss = base + adapter loss" jq -n --argjson a "$(ftk eval --model "$FIX/qwen2" --adapter "$T/ad-iq" "$T/b8.fts" | jq .loss)" \
    --argjson b "$(ftk eval --model "$T/mt-iq" "$T/b8.fts" | jq .loss)" '(($a - $b) | fabs) < 1e-5 * $a'
check "train BitFit on mistral" ftk train-step --model "$FIX/mistral" --finetuning-type bitfit --max-steps 1 --metrics /dev/null \
    --output "$T/ad-bm" "$T/b8.fts"
check_fail "mistral has no place for biases" 1 "cannot be stored in" ftk merge-lora --model "$FIX/mistral" --adapter "$T/ad-bm" -o "$T/xbm"
# modules_to_save on a tied model (stories260K): as peft, each named module trains its own copy and
# the other keeps the shared matrix; merged, lm_head.weight is stored beside the embeddings
S="$ROOT/models/stories260K"
for mts in embed_tokens lm_head embed_tokens,lm_head; do
    check "tied model, modules_to_save=$mts: trains" ftk train-step --model "$S" --lora-rank 2 --peft-opt modules_to_save=$mts \
        --lr 5e-2 --max-steps 2 --metrics /dev/null --output "$T/ad-t-$mts" "$T/b8.fts"
    check "  merges" ftk merge-lora -q --model "$S" --adapter "$T/ad-t-$mts" -o "$T/mt-t-$mts"
    check "  merged loss = base + adapter loss" jq -n --argjson a "$(ftk eval --model "$S" --adapter "$T/ad-t-$mts" "$T/b8.fts" | jq .loss)" \
        --argjson b "$(ftk eval --model "$T/mt-t-$mts" "$T/b8.fts" | jq .loss)" '(($a - $b) | fabs) < 1e-5 * $a'
    check_eq "  the merged checkpoint stores lm_head.weight" "$(st_header "$T/mt-t-$mts/model.safetensors" | jq 'has("lm_head.weight")')" "true"
done
check "train a prefix with ftk" ftk train-step --model "$FIX/llama" --finetuning-type prefix_tuning --peft-opt num_virtual_tokens=2 \
    --max-steps 1 --metrics /dev/null --output "$T/ad-prefix" "$T/b8.fts"
check_fail "prefix tuning cannot be merged" 1 "cannot be folded into the weights" \
    ftk merge-lora --model "$FIX/llama" --adapter "$T/ad-prefix" -o "$T/xprefix"
check "archive output" ftk merge-lora -q --model "$FIX/mistral" --adapter "$FIX/mistral/adapter" -o "$T/m.tar.zst"
check_eq "archive holds one folder" "$(tar --zstd -tf "$T/m.tar.zst" | sort | tr '\n' ' ')" \
    "m/config.json m/generation_config.json m/model.safetensors "
check "archive as the base of another merge" ftk merge-lora -q --model "$T/m.tar.zst" --adapter "$FIX/mistral/adapter" -o "$T/m2.zip"

check "output named with a trailing slash" ftk merge-lora -q --model "$FIX/llama" --adapter "$FIX/llama/adapter" -o "$T/slash/"
check "  is the directory itself" test -f "$T/slash/model.safetensors"
check "one tensor per shard, in a zip" ftk merge-lora -q --model "$FIX/qwen3" --adapter "$FIX/qwen3/adapter" --shard-size 1 -o "$T/many.zip"
check_eq "  every shard in the archive" "$(unzip -Z1 "$T/many.zip" | grep -c 'model-.*-of-00024.safetensors')" "24"

# errors
check_fail "no --adapter" 2 "--model, --adapter and --output are required" ftk merge-lora --model "$FIX/llama" -o "$T/x"
check_fail "bad --dtype" 2 "unknown dtype \"int4\"" ftk merge-lora --model "$FIX/llama" --adapter "$FIX/llama/adapter" -o "$T/x" --dtype int4
check_fail "bad --shard-size" 2 "unknown unit" ftk merge-lora --model "$FIX/llama" --adapter "$FIX/llama/adapter" -o "$T/x" --shard-size 5PQ
check_fail "unknown option" 2 "unknown option --nope" ftk merge-lora --nope
check_fail "adapter for another base" 1 "adapter for another base" ftk merge-lora --model "$FIX/llama" --adapter "$FIX/qwen3/adapter" -o "$T/x"
check_fail "missing adapter" 1 "$T/none" ftk merge-lora --model "$FIX/llama" --adapter "$T/none" -o "$T/x"
check_fail "output not empty" 1 "exists and is not empty" ftk merge-lora --model "$FIX/llama" --adapter "$FIX/llama/adapter" -o "$T/m"
check "no partial output after the failures" bash -c "! ls -d '$T'/x* 2>/dev/null"
check "--help has examples" bash -c "ftk merge-lora --help | grep -q 'Examples:'"
check_eq "--version" "$(ftk merge-lora --version)" "ftk-merge-lora 0.1.0"
summary
