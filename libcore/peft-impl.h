/* libcore/peft-impl.h: peft's choice of modules (check_target_module_exists), shared by adapter
 * loading (adapter.c) and merge-lora (merge_adapter.c). Internal to libcore. */
#ifndef FTK_PEFT_IMPL_H
#define FTK_PEFT_IMPL_H

#include <cjson/cJSON.h>
#include "ftk/error.h"

/* *hit = whether adapter_config.json `cfg` adapts `module`: not excluded by exclude_modules (a
 * regex string: re.fullmatch; a list: as targets) nor by modules_to_save (peft never adapts a
 * saved module), and picked by target_modules (a regex string: re.fullmatch; "all-linear":
 * every linear but the output layer; a list: equal or ending with "." + entry; absent: yes, the
 * method's defaults or the adapter's tensors decide). `output_layer`: module is lm_head. */
ftk_status peft_module_targeted(const cJSON *cfg, const char *module, int output_layer, int *hit);

#endif
