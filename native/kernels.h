/*
 * edgesdk activation-codec kernels: C99, contiguous float32 buffers in, bytes out.
 *
 * Code model. Every quantized element is an unsigned code in [0, 2^bits) and decodes as
 *     x_hat = (code - zero_point) * scale
 * "symmetric" fixes zero_point = 2^(bits-1) and uses codes [1, 2^bits - 1], so the grid is
 * symmetric around zero (int8 values -127..127 stored offset-binary); "affine" picks the
 * zero point from the tensor's range and uses every code. One decode formula serves both.
 *
 * Rounding is round-half-to-even (np.rint) of x * (1/scale) after clamping, computed with
 * the 1.5*2^23 "magic number" so that SSE2, AVX2, AVX-512 and NEON (armv7 has no vrndn)
 * produce bit-identical codes. Build with -ffp-contract=off: a fused multiply-add would
 * round differently from the numpy fallback.
 *
 * Packed layout (little-endian bit order, the same as ONNX int4 and GGML):
 *   8 bits: one code per byte.
 *   4 bits: element 2i in bits 0-3 of byte i, element 2i+1 in bits 4-7.
 *   2 bits: element 4i+k in bits 2k..2k+1 of byte i.
 *   The last byte is padded with zero bits. Packed size: ceil(n * bits / 8).
 */
#ifndef EDGESDK_KERNELS_H
#define EDGESDK_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Quantization parameters of one tensor or one channel. */
typedef struct {
    float scale;         /* > 0 and normal */
    int32_t zero_point;  /* code of 0.0 */
    int32_t code_min;    /* clamp range of codes */
    int32_t code_max;
} es_qparams;

/* Scales below this encode the tensor as all zeros (scale 1). It keeps 1/scale finite, and
 * keeps x * (1/scale) of subnormal x far below 0.5, so that armv7 NEON (which flushes
 * subnormals) agrees with IEEE hosts. */
#define ES_MIN_SCALE 0x1p-100f

/* Parameters from statistics; pure scalar float32 arithmetic, mirrored by the numpy code.
 * es_params_affine returns scale = +inf when max - min overflows float32: check it. */
es_qparams es_params_symmetric(float absmax, int bits);
es_qparams es_params_affine(float min, float max, int bits);

/* Size in bytes of n codes packed at `bits` (8, 4 or 2). */
static inline size_t es_packed_size(size_t n, int bits) { return (n * (size_t)bits + 7) / 8; }

/* One implementation per instruction set; the dispatcher picks one at import time. */
typedef struct {
    const char *name;
    /* max |x|; the result is non-finite iff some x is non-finite. */
    float (*absmax)(const float *x, size_t n);
    /* min and max of x (n > 0); a result is non-finite iff some x is non-finite. */
    void (*minmax)(const float *x, size_t n, float *min, float *max);
    /* codes[i] = clamp(rint(x[i] / scale)) + zero_point. x must be finite. */
    void (*quantize)(const float *x, size_t n, const es_qparams *p, uint8_t *codes);
    void (*dequantize)(const uint8_t *codes, size_t n, const es_qparams *p, float *out);
    void (*pack)(const uint8_t *codes, size_t n, int bits, uint8_t *out);
    void (*unpack)(const uint8_t *packed, size_t n, int bits, uint8_t *codes);
    /* quantize + pack in one pass over x (cache-sized chunks). */
    void (*quantize_pack)(const float *x, size_t n, const es_qparams *p, int bits,
                          uint8_t *out);
    /* unpack + dequantize in one pass. */
    void (*unpack_dequantize)(const uint8_t *packed, size_t n, int bits,
                              const es_qparams *p, float *out);
} es_kernels;

/* Implementations compiled into this build, best first; NULL-terminated. */
const es_kernels *const *es_available_kernels(void);
/* The best implementation this CPU runs, or the one named by `force` ("sse2", "avx2",
 * "avx512", "neon", "scalar"); NULL if `force` names none that this CPU runs. */
const es_kernels *es_select_kernels(const char *force);

#ifdef __cplusplus
}
#endif
#endif
