/* plugins/peft/hard_concrete.h: the hard-concrete gate of Louizos, Welling, Kingma 2018
 * ("Learning Sparse Neural Networks through L0 Regularization", section 4.2, eq. 10-13), as
 * diff pruning (plugins/peft/diffprune.c) uses it; tests/unit/test_plugin_diffprune.c checks
 * these formulas by hand and the plugin against them.
 *
 * With log alpha = a (the gate's logit), temperature beta, stretch (gamma < 0, zeta > 1):
 *   u ~ U(0,1),  s = sigmoid((log u - log(1 - u) + a) / beta),  s_bar = s (zeta - gamma) + gamma,
 *   z = min(1, max(0, s_bar))                                   (training: a sample)
 *   z_hat = min(1, max(0, sigmoid(a) (zeta - gamma) + gamma))    (evaluation: deterministic)
 *   P(z != 0) = sigmoid(a - beta log(-gamma / zeta))             (the expected L0 per gate)
 * dz/da = (zeta - gamma) s (1 - s) / beta where 0 < s_bar < 1 and 0 where the clamp is active
 * (the derivative of the expression above; no straight-through estimator).
 *
 * u is a function of (seed, step, site, index) only (splitmix64, as lora.c's dropout), so a
 * step's forward, recomputed forward and backward see the same gates and runs are
 * reproducible. Header-only, static inline: no symbols leave the plugin. */
#ifndef FTK_HARD_CONCRETE_H
#define FTK_HARD_CONCRETE_H

#include <math.h>
#include <stdint.h>

struct hc_params {
    double beta;    /* temperature */
    double gamma;   /* lower stretch limit, < 0 */
    double zeta;    /* upper stretch limit, > 1 */
};

static inline uint64_t hc_mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* The key of the gates of one linear (layer, kind) at optimizer step `step`; lm_head's layer
 * is -1. */
static inline uint64_t hc_key(uint64_t seed, int64_t step, int layer, int kind)
{
    return hc_mix(seed ^ hc_mix((uint64_t)step + 0xD1FFull) ^ hc_mix((uint64_t)(layer + 1) * 16 + (uint64_t)kind + 77));
}

/* u of gate j under `key`, strictly inside (0,1): (k + 1/2) / 2^53. */
static inline double hc_u(uint64_t key, uint64_t j)
{
    return ((double)(hc_mix(key ^ hc_mix(j)) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static inline double hc_sigmoid(double x) { return x >= 0 ? 1.0 / (1.0 + exp(-x)) : exp(x) / (1.0 + exp(x)); }

/* A training sample z for logit a and uniform u; *dz = dz/da. */
static inline double hc_z(double a, double u, const struct hc_params *p, double *dz)
{
    double s = hc_sigmoid((log(u) - log1p(-u) + a) / p->beta);
    double sb = s * (p->zeta - p->gamma) + p->gamma;
    if (sb <= 0) {
        *dz = 0;
        return 0;
    }
    if (sb >= 1) {
        *dz = 0;
        return 1;
    }
    *dz = (p->zeta - p->gamma) * s * (1 - s) / p->beta;
    return sb;
}

/* The deterministic (evaluation) gate. */
static inline double hc_z_hat(double a, const struct hc_params *p)
{
    double sb = hc_sigmoid(a) * (p->zeta - p->gamma) + p->gamma;
    return sb <= 0 ? 0 : sb >= 1 ? 1 : sb;
}

/* beta log(-gamma / zeta): P(z != 0) = sigmoid(a - hc_shift(p)). */
static inline double hc_shift(const struct hc_params *p) { return p->beta * log(-p->gamma / p->zeta); }

/* The expected L0 of one gate, P(z != 0). */
static inline double hc_l0(double a, const struct hc_params *p) { return hc_sigmoid(a - hc_shift(p)); }

#endif
