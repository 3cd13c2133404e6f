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

/* Sparse packing (codec "sparse", docs/wire-format.md): of n codes whose zero code (the code
 * of 0.0, the zero point) is z, one after the other
 *   bitmap  es_bitmap_size(n) = ceil(n / 8) bytes; bit i of the stream (bit i % 8 of byte
 *           i / 8, the packed codes' little-endian bit order) is 1 iff code i != z; the
 *           padding bits of the last byte are 0
 *   codes   the k codes whose bit is 1, in order, packed at `bits` as above:
 *           ceil(k * bits / 8) bytes
 * It pays when more than 1 / bits of the codes are zero: on the pooled ReLU maps of the
 * bundled digits model (about half zero codes at 8 bits, over 90 % at 2 bits) the stream is
 * ~0.6 of the packed codes at 8 bits and ~0.55 at 2 bits; the bitmap's bit per code bounds
 * the gain at `bits` times. */
static inline size_t es_bitmap_size(size_t n) { return n / 8 + (n % 8 != 0); }

/* The largest sparse stream of n codes at `bits` (k = n), es_bitmap_size(n) +
 * es_packed_size(n, bits), into *size: the room the sparse kernels need in `out`. Returns 0,
 * or -1 (*size untouched) if it does not fit in size_t. */
static inline int es_sparse_bound(size_t n, int bits, size_t *size) {
    size_t packed, nb = es_bitmap_size(n);
    if (es_packed_size(n, bits, &packed) != 0 || packed > SIZE_MAX - nb) return -1;
    *size = nb + packed;
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
    /* The sparse stream of n codes (one per byte) with zero code `zero`, at `bits`, into
     * out, which must hold es_sparse_bound(n, bits) bytes. Returns the stream's size; the
     * bytes of out after it are scratch (the vector loops store whole registers there). */
    size_t (*sparse_pack)(const uint8_t *codes, size_t n, uint8_t zero, int bits,
                          uint8_t *out);
    /* quantize + sparse_pack in one pass over x (zero code p->zero_point). */
    size_t (*quantize_sparse)(const float *x, size_t n, const es_qparams *p, int bits,
                              uint8_t *out);
    /* The number of 1 bits in `nbytes` bytes. */
    size_t (*popcount)(const uint8_t *bytes, size_t nbytes);
    /* The inverse of sparse_pack: n codes from a stream whose bitmap has k 1 bits (the
     * caller checked k and that `in` holds the whole stream). Never reads more than k codes:
     * a bitmap with more 1 bits decodes its extra ones as `zero`. */
    void (*sparse_unpack)(const uint8_t *in, size_t n, size_t k, uint8_t zero, int bits,
                          uint8_t *codes);
} es_kernels;

/* Implementations compiled into this build, best first; NULL-terminated. */
const es_kernels *const *es_available_kernels(void);
/* The best implementation this CPU runs, or the one named by `force` ("sse2", "avx2",
 * "avx512", "avx512vbmi2", "neon", "scalar"); NULL if `force` names none that this CPU
 * runs. */
const es_kernels *es_select_kernels(const char *force);

#ifdef __cplusplus
}
#endif
#endif
