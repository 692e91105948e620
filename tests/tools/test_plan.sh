#!/usr/bin/env bash
# tests/tools/test_plan.sh: ftk plan turns LLaMA-Factory's example LoRA SFT and DPO configs
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
