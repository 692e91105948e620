/* libcore/schedule.c: learning-rate multipliers (ftk/schedule.h), formulas of transformers'
 * get_constant_schedule(_with_warmup), get_linear_schedule_with_warmup and
 * get_cosine_schedule_with_warmup (num_cycles 0.5). */
#include <math.h>
#include <string.h>
#include "ftk/schedule.h"

static const char *names[] = {"constant", "constant_with_warmup", "linear", "cosine"};

ftk_status ftk_schedule_parse(const char *name, enum ftk_schedule *out)
{
    for (int i = 0; i < 4; i++)
        if (!strcmp(name, names[i])) {
            *out = (enum ftk_schedule)i;
            return FTK_OK;
        }
    FTK_FAIL(FTK_E_INVALID, "unknown lr scheduler \"%s\" (constant, constant_with_warmup, linear, cosine)", name);
}

const char *ftk_schedule_name(enum ftk_schedule s) { return (unsigned)s < 4 ? names[s] : "?"; }

double ftk_schedule_factor(enum ftk_schedule s, int64_t step, int64_t warmup, int64_t total)
{
    if (s == FTK_SCHED_CONSTANT)
        return 1.0;
    if (step < warmup)
        return (double)step / (double)(warmup > 1 ? warmup : 1);
    if (s == FTK_SCHED_CONSTANT_WARMUP)
        return 1.0;
    double rest = (double)(total - warmup > 1 ? total - warmup : 1);
    if (s == FTK_SCHED_LINEAR) {
        double f = (double)(total - step) / rest;
        return f > 0 ? f : 0.0;
    }
    double progress = (double)(step - warmup) / rest;
    double f = 0.5 * (1.0 + cos(M_PI * 0.5 * 2.0 * progress));
    return f > 0 ? f : 0.0;
}

int64_t ftk_schedule_warmup_steps(double ratio, int64_t total)
{
    return (int64_t)ceil(ratio * (double)total);
}
