/*
 * Bit-exact test of every codec kernel against reference vectors from the numpy
 * implementation (native/tests/gen_vectors.py documents the file format).
 *
 *     test_kernels VECTORS.bin
 *
 * Every kernel table compiled into this binary (es_available_kernels()) that the CPU runs
 * (es_select_kernels(name) accepts it) is tested, so one x86 binary checks the sse2, avx2
 * and avx512 builds. Each kernel gets the numpy *inputs* of its stage and must reproduce
 * the numpy *outputs* bit for bit, so a failure points at one kernel. Every check runs
 * twice, with 64-byte-aligned buffers and with odd offsets, to exercise the vector
 * prologues and tails, and guard bytes after each output catch writes past the end.
 * es_packed_size and es_sparse_bound are checked at and past their overflow limits for this
 * target's size_t (the armv7 build is the 32-bit case). The sparse kernels also get a lying
 * bitmap (more 1 bits than codes) and must not read past the codes.
 *
 * Output: one FAIL line per failed check (case, kernel, ISA, first differing index,
 * expected, got), then exactly "N passed, M failed". Exit status 0 iff M == 0; 2 if the
 * vector file is unreadable.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

/* Under AddressSanitizer (run.sh sanitize) the arena bytes around each buffer are
 * poisoned, so a kernel that reads or writes outside its buffers is reported at once: the
 * arenas are reused at their largest size, and an access past a buffer would otherwise land
 * in memory ASan considers valid. */
#if defined(__SANITIZE_ADDRESS__)
#define ES_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ES_ASAN 1
#endif
#endif
#ifdef ES_ASAN
#include <sanitizer/asan_interface.h>
#else
#define ASAN_POISON_MEMORY_REGION(addr, size) ((void)(addr), (void)(size))
#define ASAN_UNPOISON_MEMORY_REGION(addr, size) ((void)(addr), (void)(size))
#endif

/* ------------------------------------------------------------------ vector file */

enum { KIND_FULL = 0, KIND_NONFINITE = 1 };
enum { FLAG_HAS_MINMAX = 1 };

typedef struct {
    char *name;
    uint32_t kind, bits, scheme, flags; /* scheme: 0 symmetric, 1 affine */
    size_t n, packed_size;
    float *x;
    /* KIND_FULL only; see gen_vectors.py for the meaning of each field. */
    float absmax, min, max, param_a, param_b;
    es_qparams params;
    uint8_t *codes, *packed, *unpacked, *quantize_pack;
    float *dequantized, *unpack_dequantize;
    size_t sparse_size, sparse_k; /* the sparse stream: its size and non-zero codes */
    uint8_t *sparse;
} test_case;

typedef struct {
    const uint8_t *p, *end;
} reader;

static void die(const char *what) {
    fprintf(stderr, "test_kernels: bad vector file: %s\n", what);
    exit(2);
}

static const uint8_t *take(reader *r, size_t size) {
    if ((size_t)(r->end - r->p) < size) die("truncated");
    const uint8_t *at = r->p;
    r->p += size;
    return at;
}

/* Byte-wise little-endian decoding: the file reads the same on any host. */
static uint32_t read_u32(reader *r) {
    const uint8_t *b = take(r, 4);
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static float float_of_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t bits_of_float(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float read_f32(reader *r) { return float_of_bits(read_u32(r)); }

/* malloc that never returns NULL for size 0, so empty arrays are valid pointers. */
static void *xmalloc(size_t size) {
    void *p = malloc(size ? size : 1);
    if (!p) die("out of memory");
    return p;
}

static float *read_f32s(reader *r, size_t n) {
    float *a = xmalloc(n * sizeof *a);
    for (size_t i = 0; i < n; i++) a[i] = read_f32(r);
    return a;
}

static uint8_t *read_bytes(reader *r, size_t n) {
    uint8_t *a = xmalloc(n);
    memcpy(a, take(r, n), n);
    return a;
}

static void read_full_case(reader *r, test_case *c) {
    c->absmax = read_f32(r);
    c->min = read_f32(r);
    c->max = read_f32(r);
    c->param_a = read_f32(r);
    c->param_b = read_f32(r);
    c->params.scale = read_f32(r);
    c->params.zero_point = (int32_t)read_u32(r);
    c->params.code_min = (int32_t)read_u32(r);
    c->params.code_max = (int32_t)read_u32(r);
    c->codes = read_bytes(r, c->n);
    c->packed = read_bytes(r, c->packed_size);
    c->unpacked = read_bytes(r, c->n);
    c->dequantized = read_f32s(r, c->n);
    c->quantize_pack = read_bytes(r, c->packed_size);
    c->unpack_dequantize = read_f32s(r, c->n);
    c->sparse_size = read_u32(r);
    c->sparse_k = read_u32(r);
    size_t bound;
    if (es_sparse_bound(c->n, (int)c->bits, &bound) != 0 || c->sparse_size > bound ||
        c->sparse_k > c->n)
        die("sparse stream larger than its bound");
    c->sparse = read_bytes(r, c->sparse_size);
}

static void read_case(reader *r, test_case *c) {
    memset(c, 0, sizeof *c);
    uint32_t len = read_u32(r);
    c->name = xmalloc(len + 1);
    memcpy(c->name, take(r, len), len);
    c->name[len] = '\0';
    c->kind = read_u32(r);
    c->bits = read_u32(r);
    c->scheme = read_u32(r);
    c->n = read_u32(r);
    c->flags = read_u32(r);
    if (c->kind > KIND_NONFINITE || (c->bits != 8 && c->bits != 4 && c->bits != 2))
        die("unknown case kind or bit width");
    if (es_packed_size(c->n, (int)c->bits, &c->packed_size) != 0) die("case too large");
    c->x = read_f32s(r, c->n);
    if (c->kind == KIND_FULL) read_full_case(r, c);
}

static uint8_t *slurp(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(2);
    }
    size_t cap = 1 << 20, len = 0, got;
    uint8_t *buf = xmalloc(cap);
    while ((got = fread(buf + len, 1, cap - len, f)) > 0) {
        len += got;
        if (len == cap && !(buf = realloc(buf, cap *= 2))) die("out of memory");
    }
    fclose(f);
    *size = len;
    return buf;
}

static test_case *load_cases(const char *path, size_t *count) {
    size_t size;
    uint8_t *blob = slurp(path, &size);
    reader r = {blob, blob + size};
    if (memcmp(take(&r, 8), "ESKVEC2", 8) != 0) die("wrong magic (not from gen_vectors.py)");
    *count = read_u32(&r);
    test_case *cases = xmalloc(*count * sizeof *cases);
    for (size_t i = 0; i < *count; i++) read_case(&r, &cases[i]);
    if (memcmp(take(&r, 4), "END!", 4) != 0 || r.p != r.end) die("bad trailer");
    free(blob);
    return cases;
}

/* Freed only so that leak checkers (ASan) stay quiet when the test runs under them. */
static void free_cases(test_case *cases, size_t count) {
    for (size_t i = 0; i < count; i++) {
        test_case *c = &cases[i];
        free(c->name);
        free(c->x);
        free(c->codes);
        free(c->packed);
        free(c->unpacked);
        free(c->dequantized);
        free(c->quantize_pack);
        free(c->unpack_dequantize);
        free(c->sparse);
    }
    free(cases);
}

/* ------------------------------------------------------------------ checks and reporting */

static unsigned long n_passed, n_failed;

/* What one check is about; printed on failure. */
typedef struct {
    const char *case_name, *kernel, *isa;
    int align;
} check;

static void count(int ok) {
    if (ok)
        n_passed++;
    else
        n_failed++;
}

static void fail_line(const check *c, size_t index, const char *want, const char *got,
                      const char *note) {
    printf("FAIL case=\"%s\" kernel=%s isa=%s align=%d index=%zu expected=%s got=%s%s\n",
           c->case_name, c->kernel, c->isa, c->align, index, want, got, note);
}

static void format_float(char *out, size_t size, float f) {
    snprintf(out, size, "0x%08lx(%.9g)", (unsigned long)bits_of_float(f), (double)f);
}

/* Elements of `size` bytes compared bit for bit; floats are shown as bits and value. */
static int compare(const check *c, const void *want, const void *got, size_t n, size_t size) {
    size_t first = n, differ = 0;
    for (size_t i = 0; i < n; i++) {
        if (memcmp((const char *)want + i * size, (const char *)got + i * size, size) != 0) {
            if (!differ++) first = i;
        }
    }
    if (!differ) return 1;
    char w[64], g[64], note[64];
    if (size == sizeof(float)) {
        float fw, fg;
        memcpy(&fw, (const char *)want + first * size, size);
        memcpy(&fg, (const char *)got + first * size, size);
        format_float(w, sizeof w, fw);
        format_float(g, sizeof g, fg);
    } else {
        snprintf(w, sizeof w, "%u", ((const uint8_t *)want)[first]);
        snprintf(g, sizeof g, "%u", ((const uint8_t *)got)[first]);
    }
    snprintf(note, sizeof note, " (%zu of %zu differ)", differ, n);
    fail_line(c, first, w, g, note);
    return 0;
}

/* ------------------------------------------------------------------ guarded buffers */

/* Bytes after every output that no kernel may touch, and the value they hold. */
#define GUARD 64
#define FILL 0xA5

typedef struct {
    uint8_t *mem;
    size_t cap;
} arena;

/* `size` bytes starting `offset` bytes past a 64-byte boundary, followed by GUARD bytes;
 * everything is filled with FILL so that unwritten outputs are visible too. */
static void *place(arena *a, size_t size, size_t offset) {
    size_t need = size + offset + GUARD + 64;
    if (need > a->cap) {
        free(a->mem);
        a->mem = xmalloc(need);
        a->cap = need;
    }
    uint8_t *p = a->mem + (64 - (uintptr_t)a->mem % 64) % 64 + offset;
    ASAN_UNPOISON_MEMORY_REGION(a->mem, a->cap);
    memset(p, FILL, size + GUARD);
    ASAN_POISON_MEMORY_REGION(a->mem, (size_t)(p - a->mem));
    ASAN_POISON_MEMORY_REGION(p + size, a->cap - (size_t)(p - a->mem) - size);
    return p;
}

static void *place_copy(arena *a, const void *src, size_t size, size_t offset) {
    void *p = place(a, size, offset);
    memcpy(p, src, size);
    return p;
}

/* The guard after `size` bytes of output is intact; otherwise one FAIL line. */
static int guard_intact(const check *c, const void *out, size_t size, size_t elem_size) {
    const uint8_t *g = (const uint8_t *)out + size;
    ASAN_UNPOISON_MEMORY_REGION(g, GUARD); /* under ASan a write there was already fatal */
    for (size_t i = 0; i < GUARD; i++) {
        if (g[i] != FILL) {
            char got[16], note[64];
            snprintf(got, sizeof got, "0x%02x", g[i]);
            snprintf(note, sizeof note, " (write %zu bytes past the end)", i);
            fail_line(c, size / elem_size, "untouched(0xa5)", got, note);
            return 0;
        }
    }
    return 1;
}

/* Offsets of inputs and outputs: aligned, or deliberately misaligned against each other
 * (floats stay 4-byte aligned as C requires). */
typedef struct {
    size_t in_f32, in_u8, out_f32, out_u8;
} offsets;

static const offsets ALIGNMENTS[2] = {{0, 0, 0, 0}, {4, 1, 12, 3}};

static arena in_arena, out_arena;

/* ------------------------------------------------------------------ kernel checks */

typedef struct {
    const es_kernels *k;
    const test_case *c;
    offsets off;
    check ck;
} run;

static check named(const run *r, const char *kernel) {
    check c = r->ck;
    c.kernel = kernel;
    return c;
}

static int is_finite(float f) { return isfinite(f) != 0; }

static void check_absmax(const run *r) {
    const test_case *c = r->c;
    check ck = named(r, "absmax");
    const float *x = place_copy(&in_arena, c->x, c->n * sizeof(float), r->off.in_f32);
    float got = r->k->absmax(x, c->n);
    if (c->kind == KIND_NONFINITE) {
        char g[64];
        format_float(g, sizeof g, got);
        if (is_finite(got)) fail_line(&ck, 0, "non-finite", g, "");
        count(!is_finite(got));
        return;
    }
    count(compare(&ck, &c->absmax, &got, 1, sizeof got));
}

/* minmax is compared with == (so -0.0 == +0.0): numpy may return either sign of zero,
 * while the C code orders -0.0 below +0.0. */
static void check_minmax(const run *r) {
    const test_case *c = r->c;
    if (!(c->flags & FLAG_HAS_MINMAX)) return; /* minmax requires n > 0 */
    check ck = named(r, "minmax");
    const float *x = place_copy(&in_arena, c->x, c->n * sizeof(float), r->off.in_f32);
    float got[2], want[2] = {c->min, c->max};
    r->k->minmax(x, c->n, &got[0], &got[1]);
    char w[64], g[64];
    if (c->kind == KIND_NONFINITE) {
        int ok = !is_finite(got[0]) || !is_finite(got[1]);
        format_float(g, sizeof g, is_finite(got[0]) ? got[1] : got[0]);
        if (!ok) fail_line(&ck, 0, "a non-finite min or max", g, "");
        count(ok);
        return;
    }
    for (int i = 0; i < 2; i++) {
        if (got[i] == want[i]) continue;
        format_float(w, sizeof w, want[i]);
        format_float(g, sizeof g, got[i]);
        fail_line(&ck, (size_t)i, w, g, i ? " (max)" : " (min)");
        count(0);
        return;
    }
    count(1);
}

static void check_quantize(const run *r) {
    const test_case *c = r->c;
    check ck = named(r, "quantize");
    const float *x = place_copy(&in_arena, c->x, c->n * sizeof(float), r->off.in_f32);
    uint8_t *out = place(&out_arena, c->n, r->off.out_u8);
    r->k->quantize(x, c->n, &c->params, out);
    count(compare(&ck, c->codes, out, c->n, 1) && guard_intact(&ck, out, c->n, 1));
}

static void check_dequantize(const run *r) {
    const test_case *c = r->c;
    check ck = named(r, "dequantize");
    const uint8_t *codes = place_copy(&in_arena, c->codes, c->n, r->off.in_u8);
    float *out = place(&out_arena, c->n * sizeof(float), r->off.out_f32);
    r->k->dequantize(codes, c->n, &c->params, out);
    count(compare(&ck, c->dequantized, out, c->n, sizeof(float)) &&
          guard_intact(&ck, out, c->n * sizeof(float), sizeof(float)));
}

static void check_pack(const run *r) {
    const test_case *c = r->c;
    check ck = named(r, "pack");
    const uint8_t *codes = place_copy(&in_arena, c->codes, c->n, r->off.in_u8);
    uint8_t *out = place(&out_arena, c->packed_size, r->off.out_u8);
    r->k->pack(codes, c->n, (int)c->bits, out);
    count(compare(&ck, c->packed, out, c->packed_size, 1) &&
          guard_intact(&ck, out, c->packed_size, 1));
}

static void check_quantize_pack(const run *r) {
    const test_case *c = r->c;
    check ck = named(r, "quantize_pack");
    const float *x = place_copy(&in_arena, c->x, c->n * sizeof(float), r->off.in_f32);
    uint8_t *out = place(&out_arena, c->packed_size, r->off.out_u8);
    r->k->quantize_pack(x, c->n, &c->params, (int)c->bits, out);
    count(compare(&ck, c->quantize_pack, out, c->packed_size, 1) &&
          guard_intact(&ck, out, c->packed_size, 1));
}

/* Packed input for the unpack kernels. With `dirty`, the padding bits of a partial last
 * byte are set: readers must ignore them (a sender may not zero them). Returns NULL when
 * there are no padding bits to dirty. */
static const uint8_t *packed_input(const run *r, int dirty) {
    const test_case *c = r->c;
    unsigned used = (unsigned)(c->n * c->bits % 8); /* bits used in the last byte */
    if (dirty && used == 0) return NULL;
    uint8_t *p = place_copy(&in_arena, c->packed, c->packed_size, r->off.in_u8);
    if (dirty) p[c->packed_size - 1] |= (uint8_t)(0xffu << used);
    return p;
}

static void check_unpack(const run *r, int dirty) {
    const test_case *c = r->c;
    check ck = named(r, dirty ? "unpack(dirty-padding)" : "unpack");
    const uint8_t *packed = packed_input(r, dirty);
    if (!packed) return;
    uint8_t *out = place(&out_arena, c->n, r->off.out_u8);
    r->k->unpack(packed, c->n, (int)c->bits, out);
    count(compare(&ck, c->unpacked, out, c->n, 1) && guard_intact(&ck, out, c->n, 1));
}

static void check_unpack_dequantize(const run *r, int dirty) {
    const test_case *c = r->c;
    check ck = named(r, dirty ? "unpack_dequantize(dirty-padding)" : "unpack_dequantize");
    const uint8_t *packed = packed_input(r, dirty);
    if (!packed) return;
    float *out = place(&out_arena, c->n * sizeof(float), r->off.out_f32);
    r->k->unpack_dequantize(packed, c->n, (int)c->bits, &c->params, out);
    count(compare(&ck, c->unpack_dequantize, out, c->n, sizeof(float)) &&
          guard_intact(&ck, out, c->n * sizeof(float), sizeof(float)));
}

/* A count compared with its expected value; one FAIL line if they differ. */
static int same_size(const check *ck, size_t want, size_t got, const char *what) {
    if (want == got) return 1;
    char w[32], g[32];
    snprintf(w, sizeof w, "%zu", want);
    snprintf(g, sizeof g, "%zu", got);
    fail_line(ck, 0, w, g, what);
    return 0;
}

/* sparse_pack (from the codes) or quantize_sparse (from x): the stream's size and bytes;
 * out is es_sparse_bound(n, bits) bytes (the room the kernels may use) plus the guard. */
static void check_sparse_pack(const run *r, int fused) {
    const test_case *c = r->c;
    check ck = named(r, fused ? "quantize_sparse" : "sparse_pack");
    size_t bound = 0, got;
    es_sparse_bound(c->n, (int)c->bits, &bound); /* checked when the case was read */
    if (fused) {
        const float *x = place_copy(&in_arena, c->x, c->n * sizeof(float), r->off.in_f32);
        uint8_t *out = place(&out_arena, bound, r->off.out_u8);
        got = r->k->quantize_sparse(x, c->n, &c->params, (int)c->bits, out);
        count(same_size(&ck, c->sparse_size, got, " (stream size)") &&
              compare(&ck, c->sparse, out, got, 1) && guard_intact(&ck, out, bound, 1));
        return;
    }
    const uint8_t *codes = place_copy(&in_arena, c->codes, c->n, r->off.in_u8);
    uint8_t *out = place(&out_arena, bound, r->off.out_u8);
    got = r->k->sparse_pack(codes, c->n, (uint8_t)c->params.zero_point, (int)c->bits, out);
    count(same_size(&ck, c->sparse_size, got, " (stream size)") &&
          compare(&ck, c->sparse, out, got, 1) && guard_intact(&ck, out, bound, 1));
}

static void check_popcount(const run *r) {
    const test_case *c = r->c;
    check ck = named(r, "popcount(bitmap)");
    size_t nb = es_bitmap_size(c->n);
    const uint8_t *bitmap = place_copy(&in_arena, c->sparse, nb, r->off.in_u8);
    count(same_size(&ck, c->sparse_k, r->k->popcount(bitmap, nb), " (1 bits)"));
}

/* sparse_unpack of the exact stream (under ASan, a read past it is fatal). With `lying`,
 * every bitmap bit is set while k stays the true count: the kernel must still read no more
 * than k codes, and decode the 1 bits past the k-th as the zero code. */
static void check_sparse_unpack(const run *r, int lying) {
    const test_case *c = r->c;
    check ck = named(r, lying ? "sparse_unpack(lying-bitmap)" : "sparse_unpack");
    uint8_t zero = (uint8_t)c->params.zero_point;
    size_t nb = es_bitmap_size(c->n);
    if (lying && c->sparse_k == c->n) return; /* every bit is set already */
    uint8_t *in = place_copy(&in_arena, c->sparse, c->sparse_size, r->off.in_u8);
    uint8_t *want = xmalloc(c->n);
    if (lying) {
        memset(in, 0xff, nb);
        if (c->n % 8) in[nb - 1] = (uint8_t)((1u << (c->n % 8)) - 1);
        size_t j = 0;
        for (size_t i = 0; i < c->n; i++)
            if (c->codes[i] != zero) want[j++] = c->codes[i];
        for (; j < c->n; j++) want[j] = zero;
    } else {
        memcpy(want, c->codes, c->n);
    }
    uint8_t *out = place(&out_arena, c->n, r->off.out_u8);
    r->k->sparse_unpack(in, c->n, c->sparse_k, zero, (int)c->bits, out);
    count(compare(&ck, want, out, c->n, 1) && guard_intact(&ck, out, c->n, 1));
    free(want);
}

static void run_case(const es_kernels *k, const test_case *c, int align) {
    run r = {k, c, ALIGNMENTS[align], {c->name, "", k->name, align}};
    check_absmax(&r);
    check_minmax(&r);
    if (c->kind != KIND_FULL) return; /* non-finite x is outside quantize's contract */
    check_quantize(&r);
    check_dequantize(&r);
    check_pack(&r);
    check_unpack(&r, 0);
    check_unpack(&r, 1);
    check_quantize_pack(&r);
    check_unpack_dequantize(&r, 0);
    check_unpack_dequantize(&r, 1);
    check_sparse_pack(&r, 0);
    check_sparse_pack(&r, 1);
    check_popcount(&r);
    check_sparse_unpack(&r, 0);
    check_sparse_unpack(&r, 1);
}

/* es_params_symmetric / es_params_affine (dispatch.c, one build for all ISAs). */
static void check_params(const test_case *c) {
    if (c->kind != KIND_FULL) return;
    check ck = {c->name, c->scheme ? "es_params_affine" : "es_params_symmetric", "dispatch",
                0};
    es_qparams got = c->scheme ? es_params_affine(c->param_a, c->param_b, (int)c->bits)
                               : es_params_symmetric(c->param_a, (int)c->bits);
    const es_qparams *want = &c->params;
    char w[64], g[64];
    if (bits_of_float(got.scale) != bits_of_float(want->scale)) {
        format_float(w, sizeof w, want->scale);
        format_float(g, sizeof g, got.scale);
        fail_line(&ck, 0, w, g, " (scale)");
        count(0);
        return;
    }
    const int32_t gi[3] = {got.zero_point, got.code_min, got.code_max};
    const int32_t wi[3] = {want->zero_point, want->code_min, want->code_max};
    static const char *const field[3] = {" (zero_point)", " (code_min)", " (code_max)"};
    for (int i = 0; i < 3; i++) {
        if (gi[i] == wi[i]) continue;
        snprintf(w, sizeof w, "%ld", (long)wi[i]);
        snprintf(g, sizeof g, "%ld", (long)gi[i]);
        fail_line(&ck, (size_t)i + 1, w, g, field[i]);
        count(0);
        return;
    }
    count(1);
}

/* One es_packed_size call: want_status 0 with size `want`, or -1 with *size untouched. */
static void check_packed_size(const char *case_name, size_t n, int bits, int want_status,
                              size_t want) {
    const size_t untouched = 12345;
    size_t got = untouched;
    int status = es_packed_size(n, bits, &got);
    int ok = status == want_status && got == (want_status == 0 ? want : untouched);
    if (!ok) {
        check ck = {case_name, "es_packed_size", "-", 0};
        char w[64], g[64], note[32];
        if (want_status == 0)
            snprintf(w, sizeof w, "%zu", want);
        else
            snprintf(w, sizeof w, "rejected(-1)");
        snprintf(g, sizeof g, "%zu(status %d)", got, status);
        snprintf(note, sizeof note, " (n, at %d bits)", bits);
        fail_line(&ck, n, w, g, note);
    }
    count(ok);
}

/* One es_sparse_bound call, as check_packed_size. */
static void check_sparse_bound(size_t n, int bits, int want_status, size_t want) {
    const size_t untouched = 12345;
    size_t got = untouched;
    int status = es_sparse_bound(n, bits, &got);
    int ok = status == want_status && got == (want_status == 0 ? want : untouched);
    if (!ok) {
        check ck = {"sparse-bound", "es_sparse_bound", "-", 0};
        char w[64], g[64], note[32];
        if (want_status == 0)
            snprintf(w, sizeof w, "%zu", want);
        else
            snprintf(w, sizeof w, "rejected(-1)");
        snprintf(g, sizeof g, "%zu(status %d)", got, status);
        snprintf(note, sizeof note, " (n, at %d bits)", bits);
        fail_line(&ck, n, w, g, note);
    }
    count(ok);
}

/* es_packed_size at and past its limit, es_max_codes(bits) = SIZE_MAX / bits. The counts
 * derive from SIZE_MAX, so under qemu-arm (32-bit size_t) they are the ones that wrapped
 * the old unchecked (n * bits + 7) / 8 through a Python buffer: 2^29 codes at 8 bits (512
 * MiB) gave 0 bytes, so an empty output buffer passed the size check. The expected sizes
 * come from n / 8 * bits + ceil(n % 8 * bits / 8), which cannot overflow. */
static void check_packed_size_limits(void) {
    printf("size_t: %u bits\n", (unsigned)(sizeof(size_t) * 8));
    static const int widths[3] = {8, 4, 2};
    for (int i = 0; i < 3; i++) {
        int bits = widths[i];
        size_t limit = SIZE_MAX / (size_t)bits;
        const size_t within[4] = {0, 1, 9, limit}; /* exact, up to the largest accepted */
        for (int k = 0; k < 4; k++) {
            size_t n = within[k];
            check_packed_size("packed-size", n, bits, 0,
                              n / 8 * (size_t)bits + (n % 8 * (size_t)bits + 7) / 8);
        }
        const size_t past[3] = {limit + 1, limit + 2, SIZE_MAX}; /* n * bits wraps */
        for (int k = 0; k < 3; k++) check_packed_size("packed-size-limit", past[k], bits, -1, 0);
        /* the sparse bound: ceil(n / 8) more, up to the same limit */
        for (int k = 0; k < 4; k++) {
            size_t n = within[k];
            check_sparse_bound(n, bits, 0, n / 8 + (n % 8 != 0) + n / 8 * (size_t)bits +
                                               (n % 8 * (size_t)bits + 7) / 8);
        }
        for (int k = 0; k < 3; k++) check_sparse_bound(past[k], bits, -1, 0);
    }
#if SIZE_MAX == 0xffffffffu
    /* The bug report's case by name: 512 MiB of codes at 8 bits on a 32-bit target. */
    check_packed_size("packed-size-512MiB", (size_t)1 << 29, 8, -1, 0);
    check_packed_size("packed-size-512MiB-1", ((size_t)1 << 29) - 1, 8, 0,
                      ((size_t)1 << 29) - 1);
    printf("packed-size limit checks ran with a 32-bit size_t\n");
#endif
}

/* ------------------------------------------------------------------ main */

static void print_target(void) {
    printf("target:");
#if defined(__x86_64__)
    printf(" x86_64");
#elif defined(__i386__)
    printf(" i386");
#elif defined(__aarch64__)
    printf(" aarch64");
#elif defined(__arm__)
    printf(" arm");
#endif
#if defined(__ARM_NEON) || defined(__ARM_NEON__)
    printf(", __ARM_NEON defined");
#endif
#if defined(__ARM_PCS_VFP)
    printf(", hard-float ABI");
#endif
    printf("\n");
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s VECTORS.bin (from native/tests/gen_vectors.py)\n", argv[0]);
        return 2;
    }
    size_t n_cases;
    test_case *cases = load_cases(argv[1], &n_cases);
    print_target();
    printf("vectors: %s, %zu cases\n", argv[1], n_cases);

    const es_kernels *best = es_select_kernels(NULL);
    printf("kernel tables compiled in:");
    for (const es_kernels *const *k = es_available_kernels(); *k; k++) printf(" %s", (*k)->name);
    printf("\ndefault selection: %s\n", best ? best->name : "(none)");
    if (!best) {
        printf("FAIL case=\"-\" kernel=es_select_kernels isa=- align=0 index=0 "
               "expected=a table got=NULL\n");
        n_failed++;
    }

    check_packed_size_limits();
    for (size_t i = 0; i < n_cases; i++) check_params(&cases[i]);

    char tested[256] = "", skipped[256] = "";
    for (const es_kernels *const *k = es_available_kernels(); *k; k++) {
        /* Only tables the CPU runs: es_select_kernels(name) returns NULL otherwise. */
        char *list = es_select_kernels((*k)->name) == *k ? tested : skipped;
        strncat(list, " ", sizeof tested - strlen(list) - 1);
        strncat(list, (*k)->name, sizeof tested - strlen(list) - 1);
        if (list == skipped) continue;
        for (int align = 0; align < 2; align++)
            for (size_t i = 0; i < n_cases; i++) run_case(*k, &cases[i], align);
    }
    printf("tested ISA tables:%s\n", tested);
    if (*skipped) printf("skipped ISA tables (this CPU lacks them):%s\n", skipped);
    free_cases(cases, n_cases);
    free(in_arena.mem);
    free(out_arena.mem);
    printf("%lu passed, %lu failed\n", n_passed, n_failed);
    return n_failed == 0 && n_passed > 0 ? 0 : 1;
}
