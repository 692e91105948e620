/* ftk/plan.h: a LLaMA-Factory training YAML (llamafactory-cli train CONFIG.yaml) as the
 * equivalent ftk pipeline: a Makefile that sets pipelines/sft.mk or dpo.mk's variables and
 * includes it (docs/tools/plan.md). */
#ifndef FTK_PLAN_H
#define FTK_PLAN_H

#include <stdio.h>
#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Writes the Makefile for `yaml_path` to `out`. `sets` are "key=value" overrides of the YAML's
 * keys. A key ftk does not support is FTK_E_UNSUPPORTED naming the key and its line. */
FTK_API ftk_status ftk_plan_run(const char *yaml_path, const char *const *sets, int n_sets, FILE *out);

#ifdef __cplusplus
}
#endif
#endif
