# pipelines/demo.mk: the whole fine-tuning job on the embedded model, end to end (`make demo`).
#
#   make -f pipelines/demo.mk            # everything into demo-out/ (O=...), table on stdout
#   make -f pipelines/demo.mk QUICK=1    # a few steps of each stage (tests/tools/test_demo.sh)
#
# models/stories260K writes TinyStories. The demo teaches it an instruction, "Write a story about
# NAME.", with data it makes itself, and then a preference, "use the name you were asked for":
#  1. data: the base model continues story openers that introduce a character (names.txt); a
#     story that keeps to its character becomes an SFT record (seed.jq, stories.jq).
#  2. SFT: tokenize -> pack -> train-step LoRA (pipelines/sft.mk), merge-lora.
#  3. DPO: the SFT model answers the instruction 8 times per name; answers that use the name are
#     chosen, the others rejected (pairs.jq); ref-logps under the SFT model, once; train-step
#     --loss dpo (pipelines/dpo.mk), merge-lora.
#  4. eval on names no stage trained on: held-out SFT loss, the fraction of answers that use the
#     asked name, and the pair and reward accuracy on held-out preference pairs (metrics.jq),
#     for base, SFT and DPO; demo-out/report.md with the table and the loss curves (ftk plot).
# Names are split by position in names.txt: SFT, DPO and held-out names never overlap.
# Every stage is a file: a second run does nothing, a changed stage redoes what follows it.

include $(dir $(lastword $(MAKEFILE_LIST)))common.mk
.SECONDEXPANSION:

O       ?= demo-out
MODEL   ?= $(FTK_ROOT)/models/stories260K
DEMO    := $(PIPELINES)/demo
TPL     := $(DEMO)/story.json
THREADS ?= 2
GEN     := --template $(TPL) --eos 1 --do-sample --temperature 0.8 --batch-size 64 --threads $(THREADS)

# QUICK=1: small data and a few steps, for the test; the same stages.
ifeq ($(QUICK),1)
  SEED_K := 1
  DPO_K  := 2
  TEST_K := 2
  SFT_EPOCHS := 1
  SFT_STEPS := 3
  DPO_STEPS := 2
else
  SEED_K := 6
  DPO_K  := 16
  TEST_K := 8
  SFT_EPOCHS := 2
  SFT_STEPS :=
  DPO_STEPS :=
endif
DPO_EPOCHS := $(SFT_EPOCHS)
# The sizes above are part of the data: a change remakes it.
DEMO_FLAGS := $(call ftk_flags,$(O)/.demo.flags,$(SEED_K) $(DPO_K) $(TEST_K))
SFT_VARS := BATCH=16 LR=3e-3 LORA_RANK=8 SCHEDULER=cosine EPOCHS=$(SFT_EPOCHS) STEPS=$(SFT_STEPS) CUTOFF=256
DPO_VARS := BATCH=8 EPOCHS=$(DPO_EPOCHS) LR=2e-3 LORA_RANK=8 SCHEDULER=cosine BETA=0.3 STEPS=$(DPO_STEPS) CUTOFF=256
STAGE_TARGETS ?= all merged
SUB := $(MAKE) --no-print-directory -f $(PIPELINES)
SUBVARS = FTK=$(FTK) TEMPLATE=$(TPL) THREADS=$(THREADS)

SFT_MODEL := $(O)/sft/run/merged
DPO_MODEL := $(O)/dpo/run/merged
MODELS    := base sft dpo
model_dir  = $(if $(filter base,$1),$(MODEL),$(if $(filter sft,$1),$(SFT_MODEL),$(DPO_MODEL)))

.PHONY: all data sft dpo eval report FORCE
all: report
	@cat $(O)/table.md
data: $(O)/data/sft.jsonl $(O)/data/test.jsonl
sft: $(SFT_MODEL)/config.json
dpo: $(DPO_MODEL)/config.json
eval: $(foreach m,$(MODELS),$(O)/eval/$m.json)
report: $(O)/report.md

# ---- 1. data: the base model's stories -----------------------------------------------------
$(O)/data/%-seed.jsonl: $(DEMO)/names.txt $(DEMO)/seed.jq $(DEMO_FLAGS)
	@mkdir -p $(@D)
	$(JQ) -nc --rawfile names $< --arg group $* --argjson k $(SEED_K) -f $(DEMO)/seed.jq > $@

$(O)/data/%-base.jsonl: $(O)/data/%-seed.jsonl $(call ftk_model_deps,$(MODEL))
	$(FTK) generate --model $(MODEL) --eos 1 --do-sample --temperature 0.8 --seed 1 --max-new-tokens 80 \
	    --batch-size 64 --threads $(THREADS) $< > $@.tmp && mv $@.tmp $@

$(O)/data/sft.jsonl $(O)/data/test.jsonl: $(O)/data/%.jsonl: $(O)/data/%-base.jsonl $(DEMO)/stories.jq
	$(JQ) -nc --slurpfile seed $(O)/data/$*-seed.jsonl --slurpfile gen $< -f $(DEMO)/stories.jq > $@

# ---- 2. SFT (pipelines/sft.mk decides what is up to date) ----------------------------------
$(SFT_MODEL)/config.json: $(O)/data/sft.jsonl FORCE
	@$(SUB)/sft.mk $(SUBVARS) MODEL=$(MODEL) DATA=$(O)/data/sft.jsonl OUT=$(O)/sft $(SFT_VARS) $(STAGE_TARGETS)

# ---- 3. DPO: pairs from the SFT model's own answers ----------------------------------------
$(O)/data/dpo-prompts.jsonl: $(DEMO)/names.txt $(DEMO)/prompts.jq $(DEMO_FLAGS)
	@mkdir -p $(@D)
	$(JQ) -nc --rawfile names $< --arg groups sft,dpo --argjson k $(DPO_K) -f $(DEMO)/prompts.jq > $@
$(O)/data/test-prompts.jsonl: $(DEMO)/names.txt $(DEMO)/prompts.jq $(DEMO_FLAGS)
	@mkdir -p $(@D)
	$(JQ) -nc --rawfile names $< --arg groups test --argjson k $(TEST_K) -f $(DEMO)/prompts.jq > $@

$(O)/data/dpo-answers.jsonl: $(O)/data/dpo-prompts.jsonl $(SFT_MODEL)/config.json
	$(FTK) generate --model $(SFT_MODEL) $(GEN) --seed 2 --max-new-tokens 60 $< > $@.tmp && mv $@.tmp $@

$(O)/data/%-pairs.jsonl: $(O)/data/%-answers.jsonl $(O)/data/%-prompts.jsonl $(DEMO)/pairs.jq
	$(JQ) -nc --slurpfile prompts $(O)/data/$*-prompts.jsonl --slurpfile gen $< -f $(DEMO)/pairs.jq > $@

$(DPO_MODEL)/config.json: $(O)/data/dpo-pairs.jsonl $(SFT_MODEL)/config.json FORCE
	@$(SUB)/dpo.mk $(SUBVARS) MODEL=$(SFT_MODEL) DATA=$(O)/data/dpo-pairs.jsonl OUT=$(O)/dpo $(DPO_VARS) $(STAGE_TARGETS)

# ---- 4. eval on held-out names ---------------------------------------------------------------
# Held-out preference pairs come from the SFT model's answers to the held-out prompts.
$(O)/data/test-answers.jsonl: $(O)/eval/sft-gen.jsonl
	cp $< $@

$(O)/eval/%-gen.jsonl: $(O)/data/test-prompts.jsonl $$(call model_dir,$$*)/config.json
	@mkdir -p $(@D)
	$(FTK) generate --model $(call model_dir,$*) $(GEN) --seed 3 --max-new-tokens 60 $< > $@.tmp && mv $@.tmp $@

$(O)/eval/test.fts: $(O)/data/test.jsonl
	@mkdir -p $(@D)
	$(FTK) tokenize --tokenizer $(MODEL) --template $(TPL) $< | $(FTK) pack --batch-size 32 -o $@
$(O)/eval/pairs.fts: $(O)/data/test-pairs.jsonl
	$(FTK) tokenize --tokenizer $(MODEL) --template $(TPL) --ranking $< | $(FTK) pack --batch-size 32 -o $@

# Log-probs of each model: `ftk ref-logps` is a scorer too (sums of label log-probs per row).
$(O)/eval/%-test.json: $(O)/eval/test.fts $$(call model_dir,$$*)/config.json
	$(FTK) ref-logps --model $(call model_dir,$*) --threads $(THREADS) -q $< | $(FTK) dump \
	    | $(JQ) -c 'select(.kind == "batch") | {kind, tensors: {ref_logps: .tensors.ref_logps, labels: .tensors.labels}}' > $@.tmp && mv $@.tmp $@
$(O)/eval/%-pairs.json: $(O)/eval/pairs.fts $$(call model_dir,$$*)/config.json
	$(FTK) ref-logps --model $(call model_dir,$*) --threads $(THREADS) -q $< | $(FTK) dump \
	    | $(JQ) -c 'select(.kind == "batch") | {kind, tensors: {ref_logps: .tensors.ref_logps}}' > $@.tmp && mv $@.tmp $@

$(O)/eval/%.json: $(O)/eval/%-gen.jsonl $(O)/eval/%-test.json $(O)/eval/%-pairs.json $(O)/eval/sft-pairs.json \
                  $(O)/data/test-prompts.jsonl $(DEMO)/metrics.jq
	$(JQ) -nc --arg model $* --slurpfile gen $< --slurpfile prompts $(O)/data/test-prompts.jsonl \
	    --slurpfile test $(O)/eval/$*-test.json --slurpfile pairs $(O)/eval/$*-pairs.json \
	    --slurpfile ref $(O)/eval/sft-pairs.json -f $(DEMO)/metrics.jq > $@

# ---- report ----------------------------------------------------------------------------------
$(O)/table.md: $(foreach m,$(MODELS),$(O)/eval/$m.json) $(DEMO)/table.jq
	$(JQ) -rs -f $(DEMO)/table.jq $(foreach m,$(MODELS),$(O)/eval/$m.json) > $@

$(O)/report.md: $(O)/table.md $(DEMO)/report.sh $(O)/eval/base-gen.jsonl $(O)/eval/sft-gen.jsonl \
                $(O)/eval/dpo-gen.jsonl $(SFT_MODEL)/config.json $(DPO_MODEL)/config.json
	FTK=$(FTK) O=$(O) sh $(DEMO)/report.sh > $@.tmp && mv $@.tmp $@

.SECONDARY:
FORCE:
