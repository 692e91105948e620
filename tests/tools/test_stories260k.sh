#!/usr/bin/env bash
# tests/tools/test_stories260k.sh: the embedded model models/stories260K (converted from llama2.c
# by pipelines/convert_llama2c.py) and its parity fixtures (tests/oracle/stories260k_parity.py),
# checked with jq and coreutils only: no Python, no network.
. "$(dirname "$0")/lib.sh"

M=$ROOT/models/stories260K
FX=$ROOT/tests/fixtures/stories260k
SRC=$ROOT/../shared/fixtures/models/stories260K   # the llama2.c originals, when the checkout has them

for f in config.json generation_config.json model.safetensors tokenizer.json tokenizer_config.json LICENSE README.md; do
    check "model dir has $f" test -s "$M/$f"
done
for f in llama2c.jsonl greedy.jsonl encode.jsonl README.md; do
    check "fixture $f exists" test -s "$FX/$f"
done

for f in config.json generation_config.json model.safetensors tokenizer.json tokenizer_config.json LICENSE; do
    check "model README records the sha256 of $f" grep -qF "$(sha256sum "$M/$f" | cut -d' ' -f1)" "$M/README.md"
done

# config.json
check_eq "config fields" "$(jq -c '[.architectures, .model_type, .hidden_size, .intermediate_size,
    .num_hidden_layers, .num_attention_heads, .num_key_value_heads, .head_dim, .vocab_size,
    .max_position_embeddings, .rms_norm_eps, .rope_theta, .tie_word_embeddings, .torch_dtype,
    .bos_token_id, .eos_token_id, .hidden_act, .attention_bias, .mlp_bias]' "$M/config.json")" \
    '[["LlamaForCausalLM"],"llama",64,172,5,8,4,8,512,512,1e-05,10000,true,"float32",1,2,"silu",false,false]'
check_eq "generation_config" "$(jq -c '[.bos_token_id, .eos_token_id]' "$M/generation_config.json")" '[1,2]'

# model.safetensors: u64 LE header length, JSON header, data
st=$M/model.safetensors
n=$(od -An -t u8 -N 8 "$st" | tr -d ' ')
tail -c +9 "$st" | head -c "$n" > "$T/header.json"
check "header is JSON" jq -e 'type == "object"' "$T/header.json"
check_eq "header length is 8-aligned" "$((n % 8))" 0
check_eq "47 tensors, all F32, no lm_head (tied)" \
    "$(jq -c '[to_entries[] | select(.key != "__metadata__")] | [length, ([.[].value.dtype] | unique), any(.key == "lm_head.weight")]' "$T/header.json")" \
    '[47,["F32"],false]'
# the expected names and shapes, derived from config.json
jq -S '. as $c | ($c.hidden_size) as $d | ($c.intermediate_size) as $h | ($c.head_dim * $c.num_key_value_heads) as $kv
    | {"model.embed_tokens.weight": [$c.vocab_size, $d], "model.norm.weight": [$d]}
    + ([range($c.num_hidden_layers) as $i | "model.layers.\($i)." as $p
        | {($p + "input_layernorm.weight"): [$d], ($p + "post_attention_layernorm.weight"): [$d],
           ($p + "self_attn.q_proj.weight"): [$d, $d], ($p + "self_attn.k_proj.weight"): [$kv, $d],
           ($p + "self_attn.v_proj.weight"): [$kv, $d], ($p + "self_attn.o_proj.weight"): [$d, $d],
           ($p + "mlp.gate_proj.weight"): [$h, $d], ($p + "mlp.up_proj.weight"): [$h, $d],
           ($p + "mlp.down_proj.weight"): [$d, $h]}] | add)' "$M/config.json" > "$T/want.json"
jq -S 'del(.__metadata__) | map_values(.shape)' "$T/header.json" > "$T/got.json"
check "tensor names and shapes" diff "$T/want.json" "$T/got.json"
size=$(stat -c %s "$st")
check_eq "data offsets are contiguous and fill the file" \
    "$(jq -c '[del(.__metadata__)[] | .data_offsets] | sort | . as $o
        | [(.[0][0]), (all(range(1; length); $o[.][0] == $o[. - 1][1])),
           (all(.[]; .[1] - .[0] >= 0)), (.[-1][1])]' "$T/header.json")" \
    "[0,true,true,$((size - 8 - n))]"
check_eq "offsets match shapes (4 bytes per F32)" \
    "$(jq '[del(.__metadata__)[] | select((.data_offsets[1] - .data_offsets[0]) != 4 * (.shape | reduce .[] as $x (1; . * $x)))] | length' "$T/header.json")" 0
check_eq "260032 parameters" "$(jq '[del(.__metadata__)[] | .shape | reduce .[] as $x (1; . * $x)] | add' "$T/header.json")" 260032

# tensor bytes against the llama2.c original, when it is there: the embedding and layer 0's wv are
# copied as they are; wq is permuted (rotate_half order), so its bytes must differ
tbytes() { local o; o=$(jq -r --arg k "$1" '.[$k].data_offsets | "\(.[0]) \(.[1] - .[0])"' "$T/header.json")
           set -- $o; tail -c +$((8 + n + $1 + 1)) "$st" | head -c "$2"; }
if [ -f "$SRC/stories260K.bin" ]; then
    check "embed_tokens = llama2.c token_embedding_table" cmp <(tbytes model.embed_tokens.weight) \
        <(tail -c +29 "$SRC/stories260K.bin" | head -c $((512 * 64 * 4)))
    check "layers.0.v_proj = llama2.c wv[0]" cmp <(tbytes model.layers.0.self_attn.v_proj.weight) \
        <(tail -c +$((28 + 4 * (512 * 64 + 5 * 64 + 5 * 64 * 64 + 5 * 32 * 64) + 1)) "$SRC/stories260K.bin" | head -c $((32 * 64 * 4)))
    tbytes model.layers.0.self_attn.q_proj.weight > "$T/q0"
    tail -c +$((28 + 4 * (512 * 64 + 5 * 64) + 1)) "$SRC/stories260K.bin" | head -c $((64 * 64 * 4)) > "$T/wq0"
    check "layers.0.q_proj is wq[0] permuted, not copied" bash -c "! cmp -s '$T/q0' '$T/wq0'"
    check_eq "... with the same bytes, reordered" "$(od -An -v -t x4 -w4 "$T/q0" | sort | md5sum)" "$(od -An -v -t x4 -w4 "$T/wq0" | sort | md5sum)"
    for f in stories260K.bin tok512.bin; do
        check "model README records $f's sha256" grep -qF "$(sha256sum "$SRC/$f" | cut -d' ' -f1)" "$M/README.md"
    done
    check "LICENSE is llama2.c's" cmp "$SRC/LICENSE" "$M/LICENSE"
fi

# tokenizer.json: SentencePiece-style BPE with byte fallback
tj=$M/tokenizer.json
check_eq "BPE model kind" "$(jq -c '.model | [.type, .byte_fallback, .fuse_unk, .unk_token, .dropout, .continuing_subword_prefix, .end_of_word_suffix]' "$tj")" \
    '["BPE",true,true,"<unk>",null,null,null]'
check_eq "vocab: 512, specials, byte pieces, U+2581 space" \
    "$(jq -c '.model.vocab | [length, .["<unk>"], .["<s>"], .["</s>"], .["<0x00>"], .["<0x0A>"], .["<0xFF>"], .["▁"], .["▁t"], .["he"], .["▁the"]]' "$tj")" \
    '[512,0,1,2,3,13,258,410,259,260,265]'
check_eq "vocab ids are 0..511" "$(jq -c '[.model.vocab[]] | sort == [range(512)]' "$tj")" true
check_eq "no raw space in pieces" "$(jq '[.model.vocab | keys[] | select(test(" "))] | length' "$tj")" 0
check_eq "165 merges, each of two pieces into a piece" \
    "$(jq -c '.model.vocab as $v | .model.merges | [length, all(.[]; split(" ") | length == 2 and ($v[.[0]] != null) and ($v[.[1]] != null) and ($v[.[0] + .[1]] != null))]' "$tj")" \
    '[165,true]'
check_eq "merges ordered by merged id (score order)" \
    "$(jq '.model.vocab as $v | [.model.merges[] | split(" ") | $v[.[0] + .[1]]] | . == sort' "$tj")" true
check_eq "first merges" "$(jq -c '.model.merges[:3]' "$tj")" '["▁ t","h e","▁ a"]'
check_eq "normalizer Prepend + Replace, no pre-tokenizer" \
    "$(jq -c '[.normalizer.type, [.normalizer.normalizers[] | .type], .normalizer.normalizers[0].prepend, .normalizer.normalizers[1].pattern.String, .normalizer.normalizers[1].content, .pre_tokenizer]' "$tj")" \
    '["Sequence",["Prepend","Replace"],"▁"," ","▁",null]'
check_eq "post-processor adds <s> (1)" \
    "$(jq -c '.post_processor | [.type, .single, .special_tokens["<s>"].ids]' "$tj")" \
    '["TemplateProcessing",[{"SpecialToken":{"id":"<s>","type_id":0}},{"Sequence":{"id":"A","type_id":0}}],[1]]'
check_eq "decoder" "$(jq -c '[.decoder.decoders[] | .type]' "$tj")" '["Replace","ByteFallback","Fuse","Strip"]'
check_eq "added tokens" "$(jq -c '[.added_tokens[] | [.id, .content, .special, .normalized]]' "$tj")" \
    '[[0,"<unk>",true,false],[1,"<s>",true,false],[2,"</s>",true,false]]'
check_eq "tokenizer_config" "$(jq -c '[.tokenizer_class, .add_bos_token, .add_eos_token, .bos_token, .eos_token, .unk_token, .model_max_length, .clean_up_tokenization_spaces]' "$M/tokenizer_config.json")" \
    '["PreTrainedTokenizerFast",true,false,"<s>","</s>","<unk>",512,false]'

# parity fixtures: transformers on the converted directory == run.c on the original
key='[.prompt, .steps, .prompt_ids, .ids, .stop]'
check_eq "7 prompts in each fixture" "$(jq -s 'length' "$FX/llama2c.jsonl") $(jq -s 'length' "$FX/greedy.jsonl")" "7 7"
check "greedy.jsonl ids == llama2c.jsonl ids" diff <(jq -c "$key" "$FX/llama2c.jsonl") <(jq -c "$key" "$FX/greedy.jsonl")
check "decoded text == run.c stdout" diff <(jq -c .text "$FX/llama2c.jsonl") <(jq -c .text "$FX/greedy.jsonl")
check_eq "lengths follow run.c's -n (BOS + prompt + continuation = steps + 1 unless stopped on BOS)" \
    "$(jq -s -c '[.[] | (.prompt_ids[0] == 1) and (if .stop == "length" then (.prompt_ids + .ids | length) == .steps + 1 else (.prompt_ids + .ids | length) < .steps + 1 end)] | all' "$FX/llama2c.jsonl")" true
check_eq "one run ends on BOS" "$(jq -s '[.[] | select(.stop == "bos")] | length' "$FX/llama2c.jsonl")" 1
check_eq "tokens compared" "$(jq -s '[.[] | .ids | length] | add' "$FX/greedy.jsonl")" 685
check_eq "all ids in the vocabulary" "$(jq -s '[.[] | .prompt_ids[], .ids[] | select(. < 0 or . >= 512)] | length' "$FX/greedy.jsonl")" 0
check_eq "encode.jsonl: BOS first" "$(jq -s '[.[] | .ids[0] == 1] | all' "$FX/encode.jsonl")" true
for f in model.safetensors tokenizer.json; do
    check "fixtures were made from the committed $f" grep -qF "$(sha256sum "$M/$f" | cut -d' ' -f1)" "$FX/README.md"
done
check "fixture README reports no failures" grep -q '^- failures: 0\.$' "$FX/README.md"

summary
