/* ftk/schedule.h: learning-rate schedules as transformers' get_scheduler builds them
 * (optimization.py): the multiplier of the base learning rate for optimizer step `step`
 * (0-based: the first update uses step 0, as LambdaLR does before its first .step()). */
#ifndef FTK_SCHEDULE_H
#define FTK_SCHEDULE_H

#include <stdint.h>
#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Values fixed, appended only. */
enum ftk_schedule {
    FTK_SCHED_CONSTANT = 0,              /* "constant": 1 (warmup ignored, as HF) */
    FTK_SCHED_CONSTANT_WARMUP = 1,       /* "constant_with_warmup" */
    FTK_SCHED_LINEAR = 2,                /* "linear": warmup, then linear decay to 0 at total */
    FTK_SCHED_COSINE = 3,                /* "cosine": warmup, then half a cosine to 0 */
};

/* Parses "constant", "constant_with_warmup", "linear", "cosine" (FTK_E_INVALID otherwise). */
FTK_API ftk_status ftk_schedule_parse(const char *name, enum ftk_schedule *out);
FTK_API const char *ftk_schedule_name(enum ftk_schedule s);
/* The multiplier at `step` of `total` steps with `warmup` warmup steps. */
FTK_API double ftk_schedule_factor(enum ftk_schedule s, int64_t step, int64_t warmup, int64_t total);
/* HF's warmup_ratio: ceil(ratio * total). */
FTK_API int64_t ftk_schedule_warmup_steps(double ratio, int64_t total);

#ifdef __cplusplus
}
#endif
#endif
