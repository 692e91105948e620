#!/usr/bin/env bash
# tests/tools/test_plan.sh: ftk plan turns LLaMA-Factory's example LoRA SFT, DPO and KTO configs
# (tests/fixtures/llamafactory-yaml, from hiyouga/LLaMA-Factory examples/train_lora) into
# pipelines that run, here on the bundled stories260K model with a few steps; unsupported keys
# are errors naming their line.
. "$(dirname "$0")/lib.sh"
Y="$ROOT/tests/fixtures/llamafactory-yaml"
D="$ROOT/tests/fixtures/data/llamafactory"
small=(--set model_name_or_path="$ROOT/models/stories260K" --set dataset_dir="$D" --set template=empty
       --set cutoff_len=96 --set max_samples=8 --set num_train_epochs=1 --set max_steps=2 --set save_steps=1000
       --set gradient_accumulation_steps=2)

check "plan the SFT example" bash -c "ftk plan '$Y/llama3_lora_sft.yaml' ${small[*]} --set output_dir='$T/sft' -o '$T/sft.mk'"
check_eq "its mapping" "$(grep -E '^(LORA_RANK|GRAD_ACCUM|LR|SCHEDULER|WARMUP_RATIO|FORMAT) :=' "$T/sft.mk" | tr '\n' ' ')" \
    "LORA_RANK := 8 GRAD_ACCUM := 2 LR := 1.0e-4 SCHEDULER := cosine WARMUP_RATIO := 0.1 FORMAT := alpaca "
check "the SFT pipeline runs" make -s -f "$T/sft.mk" FTK="$ROOT/${FTK_BUILD:-build}/bin/ftk" THREADS=1
check "adapter written" test -f "$T/sft/run/adapter/adapter_model.safetensors"
check_eq "2 optimizer steps logged" "$(wc -l < "$T/sft/run/metrics.jsonl")" "2"
check "max_samples kept 8 examples" bash -c "[ \$(ftk dump --shapes '$T/sft/examples.fts' | jq -s 'map(select(.kind==\"example\")) | length') = 8 ]"

check "plan the DPO example" bash -c "ftk plan '$Y/llama3_lora_dpo.yaml' ${small[*]} --set output_dir='$T/dpo' -o '$T/dpo.mk'"
check_eq "DPO options mapped" "$(grep -E '^(BETA|PREF_LOSS|DATA) :=' "$T/dpo.mk" | tr '\n' ' ')" "BETA := 0.1 PREF_LOSS := sigmoid DATA := dpo_en_demo "
check "the DPO pipeline runs (reference log-probs, then DPO)" make -s -f "$T/dpo.mk" FTK="$ROOT/${FTK_BUILD:-build}/bin/ftk" THREADS=1
check "DPO adapter written" test -f "$T/dpo/run/adapter/adapter_model.safetensors"
check "DPO metrics carry rewards" jq -e 'has("rewards/margins")' "$T/dpo/run/metrics.jsonl"

check "plan the KTO example" bash -c "ftk plan '$Y/llama3_lora_kto.yaml' ${small[*]} --set output_dir='$T/kto' -o '$T/kto.mk'"
check_eq "KTO: pipelines/kto.mk with the kto_en_demo data" "$(grep -E '^(BETA :=|DATA :=|include)' "$T/kto.mk" | sed 's|include .*/|include |' | tr '\n' ' ')" \
    "BETA := 0.1 DATA := kto_en_demo include kto.mk "
check "the KTO pipeline runs (reference log-probs with the KL rows, then KTO)" \
    make -s -f "$T/kto.mk" FTK="$ROOT/${FTK_BUILD:-build}/bin/ftk" THREADS=1
check "KTO adapter written" test -f "$T/kto/run/adapter/adapter_model.safetensors"
check_eq "KTO's first step: policy = reference, loss 1 - sigmoid(0)" "$(head -1 "$T/kto/run/metrics.jsonl" | jq -c '[.loss, .kl]')" "[0.5,0]"
dry=(MODEL="$ROOT/models/stories260K" DATA="$ROOT/tests/fixtures/data/llamafactory/kto_en_demo.json" OUT="$T/dry")   # make -n: commands only
printf 'stage: kto\nmodel_name_or_path: m\ndataset: x\nkto_chosen_weight: 1.5\nkto_rejected_weight: 0.5\npref_ftx: 0.1\n' > "$T/k.yaml"
check_eq "KTO weights" "$(ftk plan "$T/k.yaml" | grep -E '^(KTO_|PREF_FTX)' | tr '\n' ' ')" \
    "PREF_FTX := 0.1 KTO_DESIRABLE := 1.5 KTO_UNDESIRABLE := 0.5 "
check_eq "  reach the kto loss" "$(make -n -f "$ROOT/pipelines/kto.mk" "${dry[@]}" KTO_DESIRABLE=1.5 KTO_UNDESIRABLE=0.5 train 2>/dev/null \
    | grep -o -- '--loss kto.*pref_ftx=[0-9.]*' | head -1)" \
    "--loss kto --loss-opt beta=0.1 --loss-opt desirable_weight=1.5 --loss-opt undesirable_weight=0.5 --loss-opt pref_ftx=0"
printf 'stage: dpo\nmodel_name_or_path: m\ndataset: x\npref_loss: simpo\nsimpo_gamma: 0.8\ndpo_label_smoothing: 0.1\n' > "$T/s.yaml"
check_eq "simpo_gamma, dpo_label_smoothing" "$(ftk plan "$T/s.yaml" | grep -E '^(SIMPO_GAMMA|LABEL_SMOOTHING)' | tr '\n' ' ')" \
    "SIMPO_GAMMA := 0.8 LABEL_SMOOTHING := 0.1 "
check_eq "  simpo's gamma reaches the loss" "$(make -n -f "$ROOT/pipelines/dpo.mk" "${dry[@]}" PREF_LOSS=simpo SIMPO_GAMMA=0.8 train 2>/dev/null \
    | grep -o -- '--loss simpo[^<]*pref_ftx=0' | head -1)" "--loss simpo --loss-opt beta=0.1 --loss-opt gamma=0.8 --loss-opt pref_ftx=0"
check_eq "  label smoothing reaches the dpo loss" "$(make -n -f "$ROOT/pipelines/dpo.mk" "${dry[@]}" LABEL_SMOOTHING=0.1 train 2>/dev/null \
    | grep -o -- '--loss-opt label_smoothing=[0-9.]*' | head -1)" "--loss-opt label_smoothing=0.1"
printf 'stage: sft\nmodel_name_or_path: m\ndataset: x\nadditional_target: embed_tokens,lm_head\nloraplus_lr_ratio: 1\nloraplus_lr_embedding: 1e-6\n' > "$T/a.yaml"
check_eq "additional_target, loraplus_lr_embedding; a ratio of 1 keeps its value" "$(ftk plan "$T/a.yaml" | grep -E '^TRAIN_FLAGS')" \
    "TRAIN_FLAGS := --peft-opt modules_to_save=embed_tokens,lm_head --peft-opt loraplus_lr_ratio=1 --peft-opt loraplus_lr_embedding=1e-6"

printf 'stage: sft\nmodel_name_or_path: m\ndataset: x\nuse_dora: true\nloraplus_lr_ratio: 16\npissa_init: true\npissa_iter: 16\n' > "$T/v.yaml"
check "plan LoRA variants (DoRA, LoRA+, PiSSA)" ftk plan "$T/v.yaml" -o "$T/v.mk"
check_eq "they become plugin options" "$(grep -E '^TRAIN_FLAGS' "$T/v.mk")" \
    "TRAIN_FLAGS := --peft-opt use_dora=true --peft-opt loraplus_lr_ratio=16 --peft-opt init_lora_weights=pissa_niter_16"
# LLaMA-Factory's pissa_iter: default 16 (peft's fast SVD, pissa_niter_16), -1 the exact SVD
printf 'stage: sft\nmodel_name_or_path: m\ndataset: x\npissa_init: true\n' > "$T/p.yaml"
check_eq "pissa_init alone: pissa_iter's default 16" "$(ftk plan "$T/p.yaml" | grep -E '^TRAIN_FLAGS')" \
    "TRAIN_FLAGS := --peft-opt init_lora_weights=pissa_niter_16"
check_eq "pissa_iter: -1 is the exact SVD" "$(ftk plan "$T/p.yaml" --set pissa_iter=-1 | grep -E '^TRAIN_FLAGS')" \
    "TRAIN_FLAGS := --peft-opt init_lora_weights=pissa"
check_eq "pissa_iter: 4" "$(ftk plan "$T/p.yaml" --set pissa_iter=4 | grep -E '^TRAIN_FLAGS')" \
    "TRAIN_FLAGS := --peft-opt init_lora_weights=pissa_niter_4"
check_eq "pissa_iter without pissa_init: no effect" \
    "$(ftk plan "$T/p.yaml" --set pissa_init=false --set pissa_iter=4 | grep -E '^TRAIN_FLAGS|^# No effect')" \
    "# No effect on ftk's result: pissa_iter (ftk computes in F32 on the CPU)."
printf 'stage: sft\nmodel_name_or_path: m\ndataset: x\npissa_init: true\npissa_iter: -2\n' > "$T/pbad.yaml"
check_fail "a bad pissa_iter names its line" 1 'pbad.yaml:5: pissa_iter -2' ftk plan "$T/pbad.yaml"

printf 'stage: sft\nmodel_name_or_path: m\ndataset: x\nquantization_bit: 4\n' > "$T/q.yaml"
check_fail "an unsupported key names its line" 1 'q.yaml:4: key "quantization_bit" is not supported yet' ftk plan "$T/q.yaml"
printf 'stage: ppo\nmodel_name_or_path: m\n' > "$T/ppo.yaml"
check_fail "an unsupported stage" 1 'stage "ppo" is not supported yet' ftk plan "$T/ppo.yaml"
printf 'stage: sft\nnum_train_epochs: 2.5\ndataset: x\n' > "$T/ep.yaml"
check_fail "fractional epochs" 1 "only whole epochs" ftk plan "$T/ep.yaml"
printf 'stage: sft\nlora_target: [q_proj, v_proj]\n' > "$T/list.yaml"
check_fail "YAML lists" 1 "lists are not supported" ftk plan "$T/list.yaml"
check_fail "no output on error" 1 "not supported" bash -c "ftk plan '$T/q.yaml' -o '$T/never.mk'; test ! -e '$T/never.mk' && exit 1"
check_fail "no config" 2 "CONFIG.yaml is required" ftk plan
summary
