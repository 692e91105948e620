# pipelines/kto.mk: KTO (Ethayarajh et al. 2024) of your own model on unpaired feedback: each
# example one reply marked desirable or undesirable (LLaMA-Factory's stage kto).
#
#   make -f pipelines/kto.mk MODEL=sft-merged/ DATA=feedback.json TEMPLATE=llama3 OUT=runs/kto
#   make -f pipelines/kto.mk MODEL=m/ DATA=kto_en_demo DATASET_INFO=data/dataset_info.json \
#        TEMPLATE=qwen3 BETA=0.1 KTO_DESIRABLE=1 KTO_UNDESIRABLE=1 LR=5e-6 OUT=runs/kto
#
# The stages of pipelines/sft.mk (every variable of it applies), with KTO data (`ftk tokenize
# --kto`: a boolean kto_tag per example; ftk pack adds the KL rows, each row's prompt with the
# previous row's reply, as TRL's KL dataset) and one more file:
#   $(OUT)/ref.fts   ftk ref-logps: the batches with the reference model's log-probs of the rows
#                    and of the KL rows (REF_MODEL, default MODEL; REF_ADAPTER), computed once.
# The kto loss: BETA (pref_beta), KTO_DESIRABLE / KTO_UNDESIRABLE (kto_chosen_weight /
# kto_rejected_weight), PREF_FTX (pref_ftx). docs/losses.md has the formula.
STAGE := kto
BATCH ?= 2
LR    ?= 5e-6
OUT   ?= runs/kto
include $(dir $(lastword $(MAKEFILE_LIST)))sft.mk
