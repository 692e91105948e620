# pipelines/dpo.mk: preference tuning (DPO and its relatives) of your own model on pairwise data.
#
#   make -f pipelines/dpo.mk MODEL=sft-merged/ DATA=pairs.jsonl TEMPLATE=llama3 OUT=runs/dpo
#   make -f pipelines/dpo.mk MODEL=m/ DATA=dpo_en_demo DATASET_INFO=data/dataset_info.json \
#        TEMPLATE=qwen3 BETA=0.1 PREF_LOSS=sigmoid LR=5e-6 OUT=runs/dpo RUN=beta0.1
#
# The stages of pipelines/sft.mk (every variable of it applies), with preference data
# (`ftk tokenize --ranking`: alpaca chosen/rejected or sharegpt/openai pairs) and one more file:
#   $(OUT)/ref.fts   ftk ref-logps: the batches with the reference model's log-probs (REF_MODEL,
#                    default MODEL; REF_ADAPTER), computed once and reused by every RUN.
# DPO losses (PREF_LOSS=sigmoid, hinge, ipo, kto_pair) read it; orpo and simpo need no reference.
STAGE := dpo
BATCH ?= 2
LR    ?= 5e-6
OUT   ?= runs/dpo
include $(dir $(lastword $(MAKEFILE_LIST)))sft.mk
