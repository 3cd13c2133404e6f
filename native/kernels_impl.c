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
#include "sparse_tables.h"

#if defined(__ARM_NEON) || defined(__ARM_NEON__)
#include <arm_neon.h>
#define ES_USE_NEON 1
#endif
/* The sparse packing's compaction is a byte shuffle: pshufb (SSSE3, so the avx2 and avx512
 * builds) or vpcompressb/vpexpandb (AVX-512 VBMI2); the sse2 build makes only the bitmap
 * with vectors. */
#if defined(__SSE2__) && !defined(ES_USE_NEON)
#include <immintrin.h>
#define ES_USE_SSE2 1
#if defined(__SSSE3__)
#define ES_USE_SSSE3 1
#endif
#if defined(__AVX512VBMI2__) && defined(__AVX512BW__)
#define ES_USE_VBMI2 1
#endif
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

/* ---------------------------------------------------------------- sparse packing */

static inline unsigned pop8(unsigned b) {
#if defined(__GNUC__) && defined(__POPCNT__)
    return (unsigned)__builtin_popcount(b);
#else
    return es_popcount_lut[b & 0xffu]; /* one load: ARM has no scalar popcount */
#endif
}

static inline unsigned pop64(uint64_t v) {
#if defined(__GNUC__)
    return (unsigned)__builtin_popcountll(v);
#else
    v = v - ((v >> 1) & 0x5555555555555555u);
    v = (v & 0x3333333333333333u) + ((v >> 2) & 0x3333333333333333u);
    v = (v + (v >> 4)) & 0x0f0f0f0f0f0f0f0fu;
    return (unsigned)((v * 0x0101010101010101u) >> 56);
#endif
}

static size_t popcount_impl(const uint8_t *ES_RESTRICT p, size_t nbytes) {
    size_t i = 0, c = 0;
    for (; i + 8 <= nbytes; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, sizeof w);
        c += pop64(w);
    }
    for (; i < nbytes; i++) c += pop8(p[i]);
    return c;
}

/* The bitmap of codes[0, n) (es_bitmap_size(n) bytes, padding bits 0) and the codes that
 * are not `zero`, in order, at out; returns their number k. out needs room for n bytes:
 * the vector loops store whole registers at out + k, which stays within out + n because
 * k never exceeds the number of codes read. */
static size_t compact_impl(const uint8_t *ES_RESTRICT codes, size_t n, uint8_t zero,
                           uint8_t *ES_RESTRICT bitmap, uint8_t *ES_RESTRICT out) {
    size_t i = 0, k = 0;
#ifdef ES_USE_VBMI2
    const __m512i vz64 = _mm512_set1_epi8((char)zero);
    for (; i + 64 <= n; i += 64) {
        __m512i c = _mm512_loadu_si512((const void *)(codes + i));
        __mmask64 m = _mm512_cmpneq_epu8_mask(c, vz64);
        uint64_t mb = (uint64_t)m; /* bit j = lane j: the bitmap's order on this LE host */
        memcpy(bitmap + i / 8, &mb, sizeof mb);
        _mm512_storeu_si512((void *)(out + k), _mm512_maskz_compress_epi8(m, c));
        k += pop64(mb);
    }
#endif
#if defined(ES_USE_SSSE3)
    const __m128i vz = _mm_set1_epi8((char)zero), eight = _mm_set1_epi8(8);
    for (; i + 16 <= n; i += 16) {
        __m128i c = _mm_loadu_si128((const __m128i *)(codes + i));
        unsigned m = ~(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(c, vz)) & 0xffffu;
        unsigned lo = m & 0xffu, hi = m >> 8;
        uint16_t m16 = (uint16_t)m; /* bit j = lane j: the bitmap's order on this LE host */
        memcpy(bitmap + i / 8, &m16, sizeof m16);
        /* both halves compacted in one shuffle: the high half's lanes are 8..15 */
        __m128i idx = _mm_unpacklo_epi64(
            _mm_loadl_epi64((const __m128i *)es_compact_lut[lo]),
            _mm_add_epi8(_mm_loadl_epi64((const __m128i *)es_compact_lut[hi]), eight));
        __m128i r = _mm_shuffle_epi8(c, idx);
        _mm_storel_epi64((__m128i *)(out + k), r);
        k += pop8(lo);
        _mm_storel_epi64((__m128i *)(out + k), _mm_unpackhi_epi64(r, r));
        k += pop8(hi);
    }
#elif defined(ES_USE_SSE2)
    const __m128i vz = _mm_set1_epi8((char)zero);
    for (; i + 16 <= n; i += 16) {
        __m128i c = _mm_loadu_si128((const __m128i *)(codes + i));
        unsigned m = ~(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(c, vz)) & 0xffffu;
        bitmap[i / 8] = (uint8_t)(m & 0xffu);
        bitmap[i / 8 + 1] = (uint8_t)(m >> 8);
        for (unsigned j = 0; j < 16; j++) { /* branch-free: store always, advance on 1 */
            out[k] = codes[i + j];
            k += (m >> j) & 1u;
        }
    }
#elif defined(ES_USE_NEON)
    static const uint8_t weights[16] = {1, 2, 4, 8, 16, 32, 64, 128,
                                        1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t vz = vdupq_n_u8(zero), vw = vld1q_u8(weights);
    for (; i + 16 <= n; i += 16) {
        uint8x16_t c = vld1q_u8(codes + i);
        /* lane j of each half contributes 2^j when non-zero; three pairwise adds sum them */
        uint8x16_t b = vbicq_u8(vw, vceqq_u8(c, vz));
        uint8x8_t s = vpadd_u8(vget_low_u8(b), vget_high_u8(b));
        s = vpadd_u8(s, s);
        s = vpadd_u8(s, s);
        unsigned lo = vget_lane_u8(s, 0), hi = vget_lane_u8(s, 1);
        bitmap[i / 8] = (uint8_t)lo;
        bitmap[i / 8 + 1] = (uint8_t)hi;
        vst1_u8(out + k, vtbl1_u8(vget_low_u8(c), vld1_u8(es_compact_lut[lo])));
        k += pop8(lo);
        vst1_u8(out + k, vtbl1_u8(vget_high_u8(c), vld1_u8(es_compact_lut[hi])));
        k += pop8(hi);
    }
#endif
    for (; i < n; i += 8) { /* i is a multiple of 8: one bitmap byte per step */
        size_t end = n - i < 8 ? n - i : 8;
        unsigned b = 0;
        for (size_t j = 0; j < end; j++) {
            uint8_t c = codes[i + j];
            unsigned nz = c != zero;
            b |= nz << j;
            out[k] = c;
            k += nz;
        }
        bitmap[i / 8] = (uint8_t)b;
    }
    return k;
}

/* The vector part of expand_impl: codes from *i on, reading src[*r, ...), while whole
 * registers of codes (i + W <= n) and of src (r + W <= avail) remain. */
static void expand_vec(const uint8_t *ES_RESTRICT bitmap, const uint8_t *ES_RESTRICT src,
                       size_t avail, size_t n, uint8_t zero, uint8_t *ES_RESTRICT codes,
                       size_t *pi, size_t *pr) {
    size_t i = *pi, r = *pr;
#ifdef ES_USE_VBMI2
    const __m512i vz64 = _mm512_set1_epi8((char)zero);
    for (; i + 64 <= n && r + 64 <= avail; i += 64) {
        uint64_t m;
        memcpy(&m, bitmap + i / 8, sizeof m);
        __m512i s = _mm512_loadu_si512((const void *)(src + r));
        _mm512_storeu_si512((void *)(codes + i),
                            _mm512_mask_expand_epi8(vz64, (__mmask64)m, s));
        r += pop64(m);
    }
#endif
#if defined(ES_USE_SSSE3)
    /* The shuffle writes 0 to the lanes of 0 bits; XOR with the zero code before and after
     * turns those into `zero` and leaves the others as they were. */
    const __m128i vz = _mm_set1_epi8((char)zero);
    for (; i + 16 <= n && r + 16 <= avail; i += 16) {
        unsigned lo = bitmap[i / 8], hi = bitmap[i / 8 + 1], plo = pop8(lo);
        __m128i s = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(src + r)), vz);
        __m128i idx = _mm_unpacklo_epi64(
            _mm_loadl_epi64((const __m128i *)es_expand_lut[lo]),
            _mm_add_epi8(_mm_loadl_epi64((const __m128i *)es_expand_lut[hi]),
                         _mm_set1_epi8((char)plo)));
        _mm_storeu_si128((__m128i *)(codes + i), _mm_xor_si128(_mm_shuffle_epi8(s, idx), vz));
        r += plo + pop8(hi);
    }
#elif defined(ES_USE_NEON)
    const uint8x8_t vz = vdup_n_u8(zero);
    for (; i + 8 <= n && r + 8 <= avail; i += 8) {
        unsigned m = bitmap[i / 8];
        uint8x8_t s = veor_u8(vld1_u8(src + r), vz);
        vst1_u8(codes + i, veor_u8(vtbl1_u8(s, vld1_u8(es_expand_lut[m])), vz));
        r += pop8(m);
    }
#else
    /* No byte shuffle: the same table, one lane at a time (independent loads, no branch) */
    for (; i + 8 <= n && r + 8 <= avail; i += 8) {
        unsigned m = bitmap[i / 8];
        const uint8_t *e = es_expand_lut[m];
        for (unsigned j = 0; j < 8; j++) {
            uint8_t c = src[r + (e[j] & 7u)];
            codes[i + j] = e[j] & 128u ? zero : c;
        }
        r += pop8(m);
    }
#endif
    *pi = i;
    *pr = r;
}

/* The inverse of compact_impl: codes[0, n) from the bitmap and the k codes at src. Reads at
 * most src[0, k): once k codes are used up, further 1 bits decode as `zero`. */
static void expand_impl(const uint8_t *ES_RESTRICT bitmap, const uint8_t *ES_RESTRICT src,
                        size_t k, size_t n, uint8_t zero, uint8_t *ES_RESTRICT codes) {
    size_t i = 0, r = 0; /* r: codes of src used */
    expand_vec(bitmap, src, k, n, zero, codes, &i, &r);
    if (i + 8 <= n && r <= k) {
        /* Either fewer than a register of codes is left (r + W > k), often with many
         * elements to go (a run of zeros), or fewer than a register of elements: continue
         * from a padded copy of the codes left, at most 64 (the widest register) of which
         * can be needed either way. The padding holds the zero code, which is what a 1 bit
         * past the k-th decodes as. */
        uint8_t tail[128];
        size_t left = k - r < 64 ? k - r : 64, used = 0;
        memset(tail, zero, sizeof tail);
        memcpy(tail, src + r, left);
        expand_vec(bitmap, tail, sizeof tail, n, zero, codes, &i, &used);
        r += used;
    }
    for (; i < n; i++) {
        unsigned bit = (bitmap[i / 8] >> (i % 8)) & 1u;
        if (bit && r < k)
            codes[i] = src[r];
        else
            codes[i] = zero;
        r += bit;
    }
}

/* The sparse stream of n codes: from `codes`, or, when codes is NULL, from quantizing x
 * with p chunk by chunk. At 4 and 2 bits each chunk's non-zero codes are compacted into
 * `stage` after the (< 8 / bits) left over from the chunk before, and packed up to a
 * whole byte. */
static size_t sparse_stream(const float *ES_RESTRICT x, const uint8_t *ES_RESTRICT codes,
                            size_t n, const es_qparams *p, uint8_t zero, int bits,
                            uint8_t *ES_RESTRICT out) {
    size_t nb = es_bitmap_size(n);
    uint8_t *dst = out + nb;
    if (codes && bits == 8) return nb + compact_impl(codes, n, zero, out, dst);
    uint8_t chunk[ES_CHUNK], stage[ES_CHUNK + 8];
    size_t per_byte = 8 / (size_t)bits, written = 0, carry = 0;
    for (size_t i = 0; i < n; i += ES_CHUNK) {
        size_t m = n - i < ES_CHUNK ? n - i : ES_CHUNK;
        const uint8_t *c = codes ? codes + i : chunk;
        if (!codes) quantize_impl(x + i, m, p, chunk);
        if (bits == 8) { /* written <= i: the register stores stay within dst + n */
            written += compact_impl(c, m, zero, out + i / 8, dst + written);
            continue;
        }
        size_t total = carry + compact_impl(c, m, zero, out + i / 8, stage + carry);
        size_t full = total - total % per_byte;
        pack_impl(stage, full, bits, dst + written);
        written += full / per_byte;
        carry = total - full;
        for (size_t j = 0; j < carry; j++) stage[j] = stage[full + j];
    }
    if (carry) {
        pack_impl(stage, carry, bits, dst + written);
        written++;
    }
    return nb + written;
}

static size_t sparse_pack_impl(const uint8_t *ES_RESTRICT codes, size_t n, uint8_t zero,
                               int bits, uint8_t *ES_RESTRICT out) {
    return sparse_stream(NULL, codes, n, NULL, zero, bits, out);
}

static size_t quantize_sparse_impl(const float *ES_RESTRICT x, size_t n, const es_qparams *p,
                                   int bits, uint8_t *ES_RESTRICT out) {
    return sparse_stream(x, NULL, n, p, (uint8_t)p->zero_point, bits, out);
}

static void sparse_unpack_impl(const uint8_t *ES_RESTRICT in, size_t n, size_t k, uint8_t zero,
                               int bits, uint8_t *ES_RESTRICT codes) {
    const uint8_t *src = in + es_bitmap_size(n);
    if (bits == 8) {
        expand_impl(in, src, k, n, zero, codes);
        return;
    }
    /* Per chunk: unpack its kc codes (from the middle of a byte: `skip` codes of the first
     * one belong to the chunk before), then expand them. */
    uint8_t stage[ES_CHUNK + 8];
    size_t per_byte = 8 / (size_t)bits, used = 0;
    for (size_t i = 0; i < n; i += ES_CHUNK) {
        size_t m = n - i < ES_CHUNK ? n - i : ES_CHUNK;
        size_t kc = popcount_impl(in + i / 8, es_bitmap_size(m));
        if (kc > k - used) kc = k - used; /* a lying bitmap reads no further than k */
        size_t skip = used % per_byte;
        unpack_impl(src + used / per_byte, skip + kc, bits, stage);
        expand_impl(in + i / 8, stage + skip, kc, m, zero, codes + i);
        used += kc;
    }
}

const es_kernels ES_TABLE = {
    ES_NAME,         absmax_impl,        minmax_impl,           quantize_impl,
    dequantize_impl, pack_impl,          unpack_impl,           quantize_pack_impl,
    unpack_dequantize_impl, sparse_pack_impl, quantize_sparse_impl, popcount_impl,
    sparse_unpack_impl,
};
