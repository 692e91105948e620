# pipelines/common.mk: what sft.mk, dpo.mk and demo.mk share (included, not run alone).
#
# FTK: the ftk dispatcher. From a checkout with a build, the repository's build/bin/ftk;
# otherwise `ftk` on the PATH (make install).
PIPELINES := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
FTK_ROOT  := $(patsubst %/,%,$(dir $(PIPELINES)))
FTK ?= $(if $(wildcard $(FTK_ROOT)/build/bin/ftk),$(FTK_ROOT)/build/bin/ftk,ftk)
JQ  ?= jq

# $(call ftk_flags,FILE,TEXT): FILE holds TEXT, rewritten only when TEXT changed, so a target
# that depends on FILE is remade when its flags change and left alone when they do not.
define ftk_flags
$(if $(and $(findstring x$2x,x$(file <$1)x),$(findstring x$(file <$1)x,x$2x)),,$(shell mkdir -p $(dir $1))$(file >$1,$2))$1
endef

# $(call ftk_model_deps,PATH): the files a model or adapter PATH (directory or archive) stands
# for, so that a retrained or re-merged model remakes what was made from it.
ftk_model_deps = $(if $1,$(if $(wildcard $1/*.json),$(wildcard $1/*.json $1/*.safetensors),$(wildcard $1)))

# Atomic outputs: each recipe writes $@.tmp and renames it, so an interrupted run leaves no
# half file that a second `make` would take for up to date.
.DELETE_ON_ERROR:
