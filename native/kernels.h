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

/* The most codes that es_packed_size accepts at `bits`: n * bits must fit in size_t. On
 * 32-bit targets that is 512 Mi codes at 8 bits, fewer than a Python buffer may hold, so
 * every size computed from a caller's buffer goes through the check below. */
static inline size_t es_max_codes(int bits) { return SIZE_MAX / (size_t)bits; }

/* Size in bytes of n codes packed at `bits` (8, 4 or 2), ceil(n * bits / 8), into *size.
 * Returns 0, or -1 (*size untouched) if n > es_max_codes(bits): n * bits would wrap around,
 * and a wrapped size (e.g. 2^29 codes at 8 bits -> 0 bytes on armv7) would pass a
 * buffer-size check and let the kernels run past the buffer. Within the limit, neither
 * n * bits nor the offsets `i * bits / 8` (i < n) that the kernels form can overflow. */
static inline int es_packed_size(size_t n, int bits, size_t *size) {
    if (n > es_max_codes(bits)) return -1;
    size_t nbits = n * (size_t)bits;
    *size = nbits / 8 + (nbits % 8 != 0); /* not (nbits + 7) / 8: that can wrap too */
    return 0;
}

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
