# pipelines/sft.mk: supervised fine-tuning (LoRA by default) of your own model on your own data.
#
#   make -f pipelines/sft.mk MODEL=path/to/hf-model DATA=data.json TEMPLATE=llama3 OUT=runs/sft
#   make -f pipelines/sft.mk MODEL=m/ DATA=alpaca_en_demo DATASET_INFO=data/dataset_info.json \
#        TEMPLATE=qwen3 LORA_RANK=16 LR=1e-4 STEPS=200 OUT=runs/sft
#
# Stages (each a file, remade only when what it depends on changed, flags included):
#   $(OUT)/examples.fts         ftk tokenize   DATA with TEMPLATE, CUTOFF
#   $(OUT)/batches.fts          ftk pack       BATCH, PACKING, SEED (EPOCHS copies of the data)
#   $(OUT)/$(RUN)/adapter/      ftk train-step LoRA/full/freeze, LR, STEPS, ...; metrics.jsonl
#   $(OUT)/$(RUN)/loss.svg      ftk plot       the loss curve
#   $(OUT)/$(RUN)/merged/       ftk merge-lora (target `merged`, LoRA only)
# Several training runs on the same data share the first two: RUN=lr1e-4 LR=1e-4, RUN=lr3e-4 ...
# docs/pipelines.md lists every variable.

include $(dir $(lastword $(MAKEFILE_LIST)))common.mk

# STAGE: sft here; pipelines/dpo.mk sets dpo (preference data, reference log-probs, DPO loss),
# pipelines/kto.mk kto (desirable/undesirable replies, reference log-probs with the KL rows).
STAGE        ?= sft
MODEL        ?=
DATA         ?=
DATASET_INFO ?=
TEMPLATE     ?=
FORMAT       ?=
OUT          ?= runs/sft
RUN          ?= run
# tokenize
CUTOFF       ?= 1024
# MAX_SAMPLES: keep the first N examples (LLaMA-Factory max_samples, counted over all data)
MAX_SAMPLES  ?=
TOKENIZE_FLAGS ?=
# pack
BATCH        ?= 4
PACKING      ?=
# PACKING=packing or neat-packing: rows of SEQ_LEN tokens
SEQ_LEN      ?= $(CUTOFF)
EPOCHS       ?= 1
SEED         ?= 42
PACK_FLAGS   ?=
# train-step
FINETUNING   ?= lora
LORA_RANK    ?= 8
LORA_ALPHA   ?=
LORA_DROPOUT ?= 0
LORA_TARGET  ?= all
ADAPTER      ?=
LR           ?= 1e-4
STEPS        ?=
GRAD_ACCUM   ?= 1
SCHEDULER    ?= cosine
WARMUP_RATIO ?= 0
WEIGHT_DECAY ?= 0
MAX_GRAD_NORM ?= 1.0
SAVE_STEPS   ?=
THREADS      ?=
TRAIN_FLAGS  ?=
# dpo (pipelines/dpo.mk): LLaMA-Factory pref_beta, pref_loss (sigmoid, hinge, ipo, kto_pair; or
# orpo, simpo: their own losses, no reference), pref_ftx; the reference model (default MODEL,
# with REF_ADAPTER if given)
BETA         ?= 0.1
PREF_LOSS    ?= sigmoid
PREF_FTX     ?= 0
SIMPO_GAMMA  ?= 0.5
LABEL_SMOOTHING ?= 0
KTO_DESIRABLE   ?= 1
KTO_UNDESIRABLE ?= 1
REF_MODEL    ?= $(MODEL)
REF_ADAPTER  ?=

ifeq ($(MODEL),)
  $(error MODEL= is required: a HuggingFace model directory or archive)
endif
ifeq ($(DATA),)
  $(error DATA= is required: a dataset file, or a dataset_info.json entry with DATASET_INFO=)
endif

# DATA is a file, or with DATASET_INFO a name in it (its file_name is what the examples depend on).
ifneq ($(DATASET_INFO),)
  DATA_FILES := $(dir $(DATASET_INFO))$(shell $(JQ) -r --arg d '$(DATA)' '.[$$d].file_name // empty' '$(DATASET_INFO)')
  DATA_ARGS  := --dataset-info $(DATASET_INFO) --dataset $(DATA)
  ifeq ($(DATA_FILES),$(dir $(DATASET_INFO)))
    $(error DATA=$(DATA): no such entry with a file_name in $(DATASET_INFO))
  endif
else
  DATA_FILES := $(DATA)
  DATA_ARGS  := $(DATA)
endif

TOK_ARGS   := --tokenizer $(MODEL) $(if $(filter dpo,$(STAGE)),--ranking) $(if $(filter kto,$(STAGE)),--kto) $(if $(TEMPLATE),--template $(TEMPLATE)) $(if $(FORMAT),--format $(FORMAT)) \
              $(if $(filter-out 0,$(CUTOFF)),--cutoff-len $(CUTOFF)) $(TOKENIZE_FLAGS)
PACK_ARGS  := --batch-size $(BATCH) --shuffle --seed $(SEED) --tokenizer $(MODEL) \
              $(if $(PACKING),--$(PACKING) --seq-len $(SEQ_LEN) --truncate) \
              $(PACK_FLAGS)
TRAIN_ARGS := --model $(MODEL) --finetuning-type $(FINETUNING) \
              $(if $(filter lora,$(FINETUNING)),--lora-rank $(LORA_RANK) $(if $(LORA_ALPHA),--lora-alpha $(LORA_ALPHA)) \
                  --lora-dropout $(LORA_DROPOUT) --lora-target $(LORA_TARGET)) \
              $(if $(ADAPTER),--adapter $(ADAPTER)) \
              --lr $(LR) --grad-accum $(GRAD_ACCUM) --lr-scheduler $(SCHEDULER) \
              --warmup-ratio $(WARMUP_RATIO) --weight-decay $(WEIGHT_DECAY) --max-grad-norm $(MAX_GRAD_NORM) \
              $(if $(SAVE_STEPS),--save-steps $(SAVE_STEPS)) --seed $(SEED) $(if $(THREADS),--threads $(THREADS)) \
              $(TRAIN_FLAGS)
ifeq ($(STAGE),dpo)
  ifeq ($(PREF_LOSS),simpo)
    TRAIN_ARGS += --loss simpo --loss-opt beta=$(BETA) --loss-opt gamma=$(SIMPO_GAMMA) --loss-opt pref_ftx=$(PREF_FTX)
    TRAIN_DATA := $(OUT)/batches.fts
  else ifeq ($(PREF_LOSS),orpo)
    TRAIN_ARGS += --loss orpo --loss-opt beta=$(BETA) --loss-opt pref_ftx=$(PREF_FTX)
    TRAIN_DATA := $(OUT)/batches.fts
  else
    TRAIN_ARGS += --loss dpo --loss-opt beta=$(BETA) --loss-opt loss_type=$(PREF_LOSS) --loss-opt pref_ftx=$(PREF_FTX) \
                  $(if $(filter-out 0,$(LABEL_SMOOTHING)),--loss-opt label_smoothing=$(LABEL_SMOOTHING))
    TRAIN_DATA := $(OUT)/ref.fts
  endif
else ifeq ($(STAGE),kto)
  TRAIN_ARGS += --loss kto --loss-opt beta=$(BETA) --loss-opt desirable_weight=$(KTO_DESIRABLE) \
                --loss-opt undesirable_weight=$(KTO_UNDESIRABLE) --loss-opt pref_ftx=$(PREF_FTX)
  TRAIN_DATA := $(OUT)/ref.fts
else
  TRAIN_DATA := $(OUT)/batches.fts
endif
REF_ARGS := --model $(REF_MODEL) $(if $(REF_ADAPTER),--adapter $(REF_ADAPTER)) $(if $(THREADS),--threads $(THREADS))

RUN_DIR := $(OUT)/$(RUN)
MODEL_DEPS := $(call ftk_model_deps,$(MODEL))
ADAPTER_OUT := $(RUN_DIR)/adapter/ftk_train_args.json

.PHONY: all examples batches ref train plot merged clean
all: train plot
examples: $(OUT)/examples.fts
batches: $(OUT)/batches.fts
ref: $(OUT)/ref.fts
train: $(ADAPTER_OUT)
plot: $(RUN_DIR)/loss.svg
merged: $(RUN_DIR)/merged/config.json

$(OUT)/examples.fts: $(DATA_FILES) $(MODEL_DEPS) $(call ftk_flags,$(OUT)/.tokenize.flags,$(TOK_ARGS) $(DATA_ARGS) $(MAX_SAMPLES))
ifeq ($(MAX_SAMPLES),)
	$(FTK) tokenize $(TOK_ARGS) $(DATA_ARGS) > $@.tmp && mv $@.tmp $@
else
	$(FTK) tokenize $(TOK_ARGS) $(DATA_ARGS) > $@.all
	$(FTK) dump --typed $@.all | $(JQ) -c 'select(.kind != "end")' | head -n $$(( $(MAX_SAMPLES) + 1 )) \
	  | $(FTK) dump --from-json > $@.tmp && mv $@.tmp $@ && rm -f $@.all
endif

# EPOCHS > 1: the examples repeated through ftk dump (pack reads one stream).
$(OUT)/batches.fts: $(OUT)/examples.fts $(call ftk_flags,$(OUT)/.pack.flags,$(PACK_ARGS) epochs=$(EPOCHS))
ifeq ($(EPOCHS),1)
	$(FTK) pack $(PACK_ARGS) -o $@ $<
else
	{ $(FTK) dump --typed $< | $(JQ) -c 'select(.kind == "stream")'; \
	  for e in $$(seq $(EPOCHS)); do $(FTK) dump --typed $< | $(JQ) -c 'select(.kind == "example")'; done; } \
	  | $(FTK) dump --from-json --level 0 | $(FTK) pack $(PACK_ARGS) -o $@ -
endif

# The reference log-probs: computed once per data and reference model, shared by every RUN.
$(OUT)/ref.fts: $(OUT)/batches.fts $(call ftk_model_deps,$(REF_MODEL)) $(call ftk_model_deps,$(REF_ADAPTER)) \
                $(call ftk_flags,$(OUT)/.ref.flags,$(REF_ARGS))
	$(FTK) ref-logps $(REF_ARGS) -o $@ $<

$(ADAPTER_OUT): $(TRAIN_DATA) $(MODEL_DEPS) $(call ftk_model_deps,$(ADAPTER)) $(call ftk_flags,$(RUN_DIR)/.train.flags,$(TRAIN_ARGS))
	rm -rf $(RUN_DIR)/adapter $(RUN_DIR)/metrics.jsonl
	steps='$(STEPS)'; [ -n "$$steps" ] || steps=$$($(FTK) dump --shapes $(TRAIN_DATA) | $(JQ) -r \
	    'select(.kind == "end") | .meta.batches | tonumber | (. + $(GRAD_ACCUM) - 1) / $(GRAD_ACCUM) | floor'); \
	$(FTK) train-step $(TRAIN_ARGS) --max-steps $$steps --output $(RUN_DIR)/adapter --metrics $(RUN_DIR)/metrics.jsonl $(TRAIN_DATA) < /dev/null

$(RUN_DIR)/loss.svg: $(ADAPTER_OUT)
	$(FTK) plot --title '$(STAGE) $(notdir $(MODEL)) $(RUN)' $(RUN_DIR)/metrics.jsonl > $@.tmp && mv $@.tmp $@

$(RUN_DIR)/merged/config.json: $(ADAPTER_OUT) $(MODEL_DEPS)
	rm -rf $(RUN_DIR)/merged
	$(FTK) merge-lora --model $(MODEL) --adapter $(RUN_DIR)/adapter --output $(RUN_DIR)/merged

clean:
	rm -rf $(OUT)
