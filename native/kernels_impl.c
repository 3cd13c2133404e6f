/*
 * The kernels, written once. On x86 this file is compiled several times with different
 * -m flags (see CMakeLists.txt) and the dispatcher picks the best build the CPU runs: a
 * generic wheel still gets AVX2/AVX-512 code. The loops are written so that GCC and Clang
 * vectorize them (integer reductions, branch-free selects, no libm calls); on ARM the hot
 * loops use NEON intrinsics.
 *
 * Build defines: ES_TABLE (symbol of the table) and ES_NAME (its name string).
 */
#include <string.h>

#include "kernels.h"

#if defined(__ARM_NEON) || defined(__ARM_NEON__)
#include <arm_neon.h>
#define ES_USE_NEON 1
#endif

#ifndef ES_TABLE
#error "define ES_TABLE and ES_NAME"
#endif

#define ES_RESTRICT restrict
/* For |v| < 2^22, v + 1.5*2^23 rounds v to an integer, ties to even (the default rounding
 * mode), exactly as np.rint; the sum's bit pattern is 0x4B400000 + rint(v). */
#define ES_ROUND_MAGIC 12582912.0f
/* Codes per chunk in the fused kernels: small enough to stay in L1, a multiple of 8 so
 * every chunk starts on a byte boundary at 2 and 4 bits. */
#define ES_CHUNK 2048

static inline uint32_t bits_of(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float float_of(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Monotone map from float bit patterns to int32: a < b as floats iff key(a) < key(b) (with
 * -0 < +0). It is its own inverse. Integer min/max vectorize everywhere, and a NaN maps
 * beyond +-inf, so a non-finite input shows up in the result. */
static inline int32_t order_key(uint32_t u) {
    int32_t s = (int32_t)u;
    return s ^ (int32_t)((uint32_t)(s >> 31) >> 1);
}

/* ---------------------------------------------------------------- statistics */

static float absmax_impl(const float *ES_RESTRICT x, size_t n) {
    /* The largest |x| is the largest bit pattern with the sign cleared; inf and NaN patterns
     * are larger than every finite one, so the result is non-finite iff the input is. */
    size_t i = 0;
    uint32_t m = 0;
#ifdef ES_USE_NEON
    uint32x4_t vm = vdupq_n_u32(0);
    const uint32x4_t mask = vdupq_n_u32(0x7fffffffu);
    for (; i + 4 <= n; i += 4)
        vm = vmaxq_u32(vm, vandq_u32(vreinterpretq_u32_f32(vld1q_f32(x + i)), mask));
    uint32_t lanes[4];
    vst1q_u32(lanes, vm);
    for (int k = 0; k < 4; k++) m = lanes[k] > m ? lanes[k] : m;
#endif
    for (; i < n; i++) {
        uint32_t u = bits_of(x[i]) & 0x7fffffffu;
        m = u > m ? u : m;
    }
    return float_of(m);
}

static void minmax_impl(const float *ES_RESTRICT x, size_t n, float *min, float *max) {
    int32_t lo = INT32_MAX, hi = INT32_MIN;
    for (size_t i = 0; i < n; i++) {
        int32_t k = order_key(bits_of(x[i]));
        lo = k < lo ? k : lo;
        hi = k > hi ? k : hi;
    }
    *min = float_of((uint32_t)order_key((uint32_t)lo));
    *max = float_of((uint32_t)order_key((uint32_t)hi));
}

/* ---------------------------------------------------------------- quantize */

static void quantize_impl(const float *ES_RESTRICT x, size_t n, const es_qparams *p,
                          uint8_t *ES_RESTRICT codes) {
    const float inv = 1.0f / p->scale;
    const float lo = (float)(p->code_min - p->zero_point);
    const float hi = (float)(p->code_max - p->zero_point);
    const int32_t zp = p->zero_point;
    size_t i = 0;
#ifdef ES_USE_NEON
    const float32x4_t vinv = vdupq_n_f32(inv), vlo = vdupq_n_f32(lo), vhi = vdupq_n_f32(hi);
    const float32x4_t magic = vdupq_n_f32(ES_ROUND_MAGIC);
    const uint32x4_t vzp = vdupq_n_u32((uint32_t)zp);
#if defined(__arm__)
    /* armv7 NEON flushes subnormals to zero: a subnormal 1/scale (scale > 2^126, reachable
     * only at 2 bits) goes through the IEEE scalar loop below to match every other host. */
    if (inv >= 0x1p-126f)
#endif
    for (; i + 16 <= n; i += 16) {
        uint16x4_t h[4];
        for (int k = 0; k < 4; k++) {
            float32x4_t v = vmulq_f32(vld1q_f32(x + i + 4 * k), vinv);
            v = vminq_f32(vmaxq_f32(v, vlo), vhi);
            /* see the scalar loop below: the code is the low byte of bits(v + magic) + zp */
            h[k] = vmovn_u32(vaddq_u32(vreinterpretq_u32_f32(vaddq_f32(v, magic)), vzp));
        }
        uint8x8_t lo8 = vmovn_u16(vcombine_u16(h[0], h[1]));
        uint8x8_t hi8 = vmovn_u16(vcombine_u16(h[2], h[3]));
        vst1q_u8(codes + i, vcombine_u8(lo8, hi8));
    }
#endif
    /* After clamping, v + 1.5*2^23 has the bit pattern 0x4B400000 + rint(v): its low byte
     * plus the zero point is the code, with no float-to-int conversion. */
    const uint32_t uzp = (uint32_t)zp;
    for (; i < n; i++) {
        float v = x[i] * inv;
        v = v < lo ? lo : v;
        v = v > hi ? hi : v;
        codes[i] = (uint8_t)(bits_of(v + ES_ROUND_MAGIC) + uzp);
    }
}

static void dequantize_impl(const uint8_t *ES_RESTRICT codes, size_t n, const es_qparams *p,
                            float *ES_RESTRICT out) {
    const float scale = p->scale;
    const int32_t zp = p->zero_point;
    size_t i = 0;
#ifdef ES_USE_NEON
    const float32x4_t vs = vdupq_n_f32(scale);
    const int16x8_t vzp = vdupq_n_s16((int16_t)zp);
    for (; i + 16 <= n; i += 16) {
        uint8x16_t c = vld1q_u8(codes + i);
        int16x8_t a = vsubq_s16(vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(c))), vzp);
        int16x8_t b = vsubq_s16(vreinterpretq_s16_u16(vmovl_u8(vget_high_u8(c))), vzp);
        vst1q_f32(out + i, vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(a))), vs));
        vst1q_f32(out + i + 4, vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_high_s16(a))), vs));
        vst1q_f32(out + i + 8, vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(b))), vs));
        vst1q_f32(out + i + 12, vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_high_s16(b))), vs));
    }
#endif
    for (; i < n; i++) out[i] = (float)((int32_t)codes[i] - zp) * scale;
}

/* ---------------------------------------------------------------- pack / unpack */

/* Groups of 2 (4-bit) or 4 (2-bit) codes are read as one little-endian word and folded into
 * a byte with shifts and masks, which vectorizes as plain lane arithmetic. */
static inline uint16_t load_u16le(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static inline uint32_t load_u32le(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static void pack_impl(const uint8_t *ES_RESTRICT codes, size_t n, int bits,
                      uint8_t *ES_RESTRICT out) {
    if (bits == 8) {
        memcpy(out, codes, n);
        return;
    }
    size_t full, i;
    if (bits == 4) {
        full = n / 2;
        for (i = 0; i < full; i++) {
            uint16_t w = load_u16le(codes + 2 * i);
            out[i] = (uint8_t)((w & 0x0fu) | ((w >> 4) & 0xf0u));
        }
    } else {
        full = n / 4;
        for (i = 0; i < full; i++) {
            uint32_t w = load_u32le(codes + 4 * i);
            out[i] = (uint8_t)((w & 0x3u) | ((w >> 6) & 0xcu) | ((w >> 12) & 0x30u) |
                               ((w >> 18) & 0xc0u));
        }
    }
    size_t per_byte = 8 / (size_t)bits, done = full * per_byte;
    if (done < n) { /* ragged tail: pad the last byte with zero bits */
        unsigned mask = (1u << bits) - 1, b = 0;
        for (size_t k = 0; done + k < n; k++) b |= (codes[done + k] & mask) << (bits * k);
        out[full] = (uint8_t)b;
    }
}

static void unpack_impl(const uint8_t *ES_RESTRICT packed, size_t n, int bits,
                        uint8_t *ES_RESTRICT codes) {
    if (bits == 8) {
        memcpy(codes, packed, n);
        return;
    }
    size_t full, i;
    if (bits == 4) {
        full = n / 2;
        for (i = 0; i < full; i++) {
            uint8_t b = packed[i];
            codes[2 * i] = b & 0x0f;
            codes[2 * i + 1] = b >> 4;
        }
    } else {
        full = n / 4;
        for (i = 0; i < full; i++) {
            uint8_t b = packed[i];
            codes[4 * i] = b & 0x3;
            codes[4 * i + 1] = (b >> 2) & 0x3;
            codes[4 * i + 2] = (b >> 4) & 0x3;
            codes[4 * i + 3] = b >> 6;
        }
    }
    size_t per_byte = 8 / (size_t)bits, done = full * per_byte;
    unsigned mask = (1u << bits) - 1;
    for (size_t k = 0; done + k < n; k++)
        codes[done + k] = (uint8_t)((packed[full] >> (bits * k)) & mask);
}

/* ---------------------------------------------------------------- fused passes */

static void quantize_pack_impl(const float *ES_RESTRICT x, size_t n, const es_qparams *p,
                               int bits, uint8_t *ES_RESTRICT out) {
    if (bits == 8) {
        quantize_impl(x, n, p, out);
        return;
    }
    uint8_t codes[ES_CHUNK];
    for (size_t i = 0; i < n; i += ES_CHUNK) {
        size_t m = n - i < ES_CHUNK ? n - i : ES_CHUNK;
        quantize_impl(x + i, m, p, codes);
        pack_impl(codes, m, bits, out + i * (size_t)bits / 8);
    }
}

static void unpack_dequantize_impl(const uint8_t *ES_RESTRICT packed, size_t n, int bits,
                                   const es_qparams *p, float *ES_RESTRICT out) {
    if (bits == 8) {
        dequantize_impl(packed, n, p, out);
        return;
    }
    uint8_t codes[ES_CHUNK];
    for (size_t i = 0; i < n; i += ES_CHUNK) {
        size_t m = n - i < ES_CHUNK ? n - i : ES_CHUNK;
        unpack_impl(packed + i * (size_t)bits / 8, m, bits, codes);
        dequantize_impl(codes, m, p, out + i);
    }
}

const es_kernels ES_TABLE = {
    ES_NAME,         absmax_impl,        minmax_impl,           quantize_impl,
    dequantize_impl, pack_impl,          unpack_impl,           quantize_pack_impl,
    unpack_dequantize_impl,
};
