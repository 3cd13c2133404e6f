/*
 * Quantization parameters and run-time selection of the kernel build.
 *
 * A wheel is built for the baseline of its architecture (SSE2 on x86-64), so vector code
 * beyond it must be chosen at run time: CMake compiles kernels_impl.c once per ISA level
 * and this file asks the CPU (and, through libgcc, the OS's XSAVE state) which it runs.
 */
#include <float.h>
#include <string.h>

#include "kernels.h"

/* -------------------------------------------------------------- parameters */

static inline float round_half_even(float v) {
    /* |v| <= 2^bits here; see ES_ROUND_MAGIC in kernels_impl.c. volatile keeps a compiler
     * on x87 or with -ffast-math from folding the two operations. */
    volatile float t = v + 12582912.0f;
    return t - 12582912.0f;
}

/* Scales too small to invert become 1 (the tensor encodes as zeros). A scale whose widest
 * code (`reach` steps from the zero point) would decode beyond FLT_MAX, because
 * absmax / qmax rounded up, steps one ulp down so every code decodes to a finite value. */
static float fit_scale(float scale, int32_t reach) {
    if (!(scale >= ES_MIN_SCALE)) return 1.0f;
    if (scale <= FLT_MAX && (double)reach * (double)scale > (double)FLT_MAX) {
        uint32_t u; /* the next float toward zero (scale is positive and finite) */
        memcpy(&u, &scale, sizeof u);
        u -= 1;
        memcpy(&scale, &u, sizeof u);
    }
    return scale;
}

es_qparams es_params_symmetric(float absmax, int bits) {
    int32_t half = 1 << (bits - 1);
    es_qparams p;
    p.scale = fit_scale(absmax / (float)(half - 1), half - 1);
    p.zero_point = half;
    p.code_min = 1;
    p.code_max = 2 * half - 1;
    return p;
}

es_qparams es_params_affine(float min, float max, int bits) {
    /* The range always contains 0, so 0.0 (ReLU's most common value) decodes exactly. */
    int32_t top = (1 << bits) - 1;
    float lo = min < 0.0f ? min : 0.0f;
    float hi = max > 0.0f ? max : 0.0f;
    es_qparams p;
    p.scale = fit_scale((hi - lo) / (float)top, top);
    float zp = round_half_even(-lo * (1.0f / p.scale));
    p.zero_point = zp < 0.0f ? 0 : zp > (float)top ? top : (int32_t)zp;
    p.code_min = 0;
    p.code_max = top;
    return p;
}

/* -------------------------------------------------------------- dispatch */

extern const es_kernels es_kernels_baseline;
#ifdef ES_HAVE_AVX2
extern const es_kernels es_kernels_avx2;
#endif
#ifdef ES_HAVE_AVX512
extern const es_kernels es_kernels_avx512;
#endif
#ifdef ES_HAVE_AVX512VBMI2
extern const es_kernels es_kernels_avx512vbmi2;
#endif

static const es_kernels *const all_kernels[] = {
#ifdef ES_HAVE_AVX512VBMI2
    &es_kernels_avx512vbmi2,
#endif
#ifdef ES_HAVE_AVX512
    &es_kernels_avx512,
#endif
#ifdef ES_HAVE_AVX2
    &es_kernels_avx2,
#endif
    &es_kernels_baseline,
    NULL,
};

const es_kernels *const *es_available_kernels(void) { return all_kernels; }

static int cpu_runs(const es_kernels *k) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
#ifdef ES_HAVE_AVX512
    if (k == &es_kernels_avx512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#endif
#ifdef ES_HAVE_AVX512VBMI2
    /* the avx512 build plus vpcompressb/vpexpandb for the sparse packing (Ice Lake, Zen 4) */
    if (k == &es_kernels_avx512vbmi2)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512vbmi2");
#endif
#ifdef ES_HAVE_AVX2
    if (k == &es_kernels_avx2) return __builtin_cpu_supports("avx2");
#endif
#endif
    (void)k;
    return 1; /* the baseline build runs on every CPU of its architecture */
}

const es_kernels *es_select_kernels(const char *force) {
    for (const es_kernels *const *k = all_kernels; *k; k++) {
        if (!cpu_runs(*k)) continue;
        if (!force || !*force || strcmp(force, (*k)->name) == 0) return *k;
    }
    return NULL;
}
