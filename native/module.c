/*
 * edgesdk._native: the CPython binding of the codec kernels and of the planner's terms.
 *
 * It takes and fills caller-allocated buffers through the buffer protocol, so the build
 * needs no numpy; edgesdk/codec/_native_kernels.py wraps it into the same signatures as the
 * numpy fallback, and edgesdk/policy/planner.py calls plan_terms. The GIL is released around
 * every codec kernel call (not around plan_terms: a few microseconds, less than a switch).
 *
 * Grouped (per-channel) calls view x as [outer][groups][inner]: the run of `inner` elements
 * at (o, g) uses the parameters of group g. A per-tensor call is groups = 1, inner = n.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "planner.h"

static const es_kernels *K; /* selected at import, changeable with set_isa() */

/* ------------------------------------------------------------ buffer helpers */

typedef struct {
    Py_buffer view;
    int held;
} buf_t;

static void buf_release(buf_t *b) {
    if (b->held) PyBuffer_Release(&b->view);
    b->held = 0;
}

/* A C-contiguous buffer of items of struct format `fmt` ("f", "d", "B" or "i"). "i" means a
 * 4-byte signed integer, whatever its format letter: numpy reports int32 as 'l' where C's
 * long is 4 bytes (32-bit ARM, Windows), and the buffer protocol as '<i' or '=l' when the
 * exporter states a byte order. */
static int buf_get(PyObject *obj, buf_t *b, char fmt, int writable, const char *what) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, &b->view, flags) < 0) return -1;
    b->held = 1;
    const char *f = b->view.format ? b->view.format : "B";
    if (f[0] == '<' || f[0] == '=' || f[0] == '@') f++;
    Py_ssize_t want = fmt == 'f' ? 4 : fmt == 'i' ? 4 : fmt == 'd' ? 8 : 1;
    int ok = f[0] == fmt && f[1] == '\0' && b->view.itemsize == want;
    if (fmt == 'B' && (f[0] == 'b' || f[0] == 'c') && f[1] == '\0') ok = 1;
    if (fmt == 'i' && f[0] == 'l' && f[1] == '\0' && b->view.itemsize == 4) ok = 1;
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "%s must be a contiguous buffer of format '%c'%s, "
                     "got '%s' (%zd-byte items)", what, fmt,
                     fmt == 'i' ? " (any 4-byte signed integer)" : "",
                     b->view.format ? b->view.format : "B", b->view.itemsize);
        buf_release(b);
        return -1;
    }
    return 0;
}

static size_t buf_len(const buf_t *b) { return (size_t)(b->view.len / b->view.itemsize); }

static int check_bits(int bits) {
    if (bits == 8 || bits == 4 || bits == 2) return 0;
    PyErr_Format(PyExc_ValueError, "bits must be 8, 4 or 2, got %d", bits);
    return -1;
}

/* Check n == outer * groups * inner and return outer.
 *
 * groups * inner is never formed before it is known to be at most n: inner comes straight
 * from Python, and a product that wrapped around could be 0 (a division by zero) or divide n
 * (the loops would then index far past the buffers). An empty tensor has no runs (outer 0). */
static int group_layout(size_t n, size_t groups, Py_ssize_t inner, size_t *outer) {
    if (groups == 0 || inner <= 0) {
        PyErr_Format(PyExc_ValueError, "need at least 1 group and inner >= 1, got %zu groups "
                     "and inner %zd", groups, inner);
        return -1;
    }
    size_t run = (size_t)inner;
    if (n == 0) {
        *outer = 0;
        return 0;
    }
    if (run > n || groups > n / run || n % (groups * run) != 0) {
        PyErr_Format(PyExc_ValueError,
                     "%zu elements do not split into %zu groups of runs of %zd", n, groups,
                     inner);
        return -1;
    }
    *outer = n / (groups * run);
    return 0;
}

/* How the packing kernels walk a grouped call of n = outer * groups * inner elements.
 *
 * With one group every element shares the same parameters, so the tensor is one run of n
 * elements (outer 1, run n), whatever `inner` was; otherwise there are outer * groups runs
 * of `inner`. Returns 1 if the runs can be packed one by one, i.e. there is a single run
 * or every run starts on a byte boundary of the packed output; 0 if the codes of all runs
 * must go through one scratch buffer and be packed (or unpacked) together. */
static int runs_of(size_t n, size_t groups, size_t inner, int bits, size_t *outer,
                   size_t *run) {
    if (groups == 1) {
        *outer = 1;
        *run = n;
    } else {
        *outer = n / (groups * inner); /* exact and without overflow: see group_layout */
        *run = inner;
    }
    return groups == 1 || (inner * (size_t)bits) % 8 == 0;
}

static es_qparams params_for(float scale, int32_t zp, int bits, int symmetric) {
    es_qparams p = {scale, zp, symmetric ? 1 : 0, (1 << bits) - 1};
    return p;
}

/* es_packed_size, or OverflowError naming the count and the limit. The count comes from a
 * caller's buffer: on 32-bit targets 512 Mi codes at 8 bits already wrap n * bits. */
static int packed_size(size_t n, int bits, size_t *size) {
    if (es_packed_size(n, bits, size) == 0) return 0;
    PyErr_Format(PyExc_OverflowError, "%zu codes at %d bits exceed the limit of %zu codes "
                 "(their packed size would not fit in size_t)", n, bits, es_max_codes(bits));
    return -1;
}

/* One data argument of a grouped call: the object, its struct format and its name. */
typedef struct {
    PyObject *obj;
    char fmt;
    const char *what;
} arg_t;

/* The four buffers of a grouped call (quantize, dequantize and their fused forms): the
 * data read, the data written, and the per-group scales and zero points. */
typedef struct {
    buf_t in, out, scales, zps;
    size_t n, groups; /* elements of the float side; len(scales) */
} grouped_t;

static void grouped_release(grouped_t *g) {
    buf_release(&g->in), buf_release(&g->out), buf_release(&g->scales), buf_release(&g->zps);
}

/* es_sparse_bound, or OverflowError naming the count. */
static int sparse_bound(size_t n, int bits, size_t *size) {
    if (es_sparse_bound(n, bits, size) == 0) return 0;
    PyErr_Format(PyExc_OverflowError, "%zu codes at %d bits: their sparse stream's size "
                 "would not fit in size_t", n, bits);
    return -1;
}

/* Gets the buffers of a grouped call and checks their lengths against each other: the
 * float side (whichever of in/out has format 'f') holds n elements, the code side n codes
 * one per byte (bits 0), packed at `bits`, or, with `sparse`, room for their sparse stream
 * (es_sparse_bound), and there is one zero point per scale.
 * `params_out`: the call writes the scales and zero points. Returns 0, or -1 with an
 * exception set; grouped_release() is needed either way. */
static int grouped_get(grouped_t *g, arg_t in, arg_t out, PyObject *scales, PyObject *zps,
                       int bits, int params_out, int sparse) {
    if (buf_get(in.obj, &g->in, in.fmt, 0, in.what) < 0 ||
        buf_get(out.obj, &g->out, out.fmt, 1, out.what) < 0 ||
        buf_get(scales, &g->scales, 'f', params_out, "scales") < 0 ||
        buf_get(zps, &g->zps, 'i', params_out, "zero_points") < 0)
        return -1;
    int float_in = in.fmt == 'f';
    const buf_t *code = float_in ? &g->out : &g->in;
    g->n = buf_len(float_in ? &g->in : &g->out);
    g->groups = buf_len(&g->scales);
    size_t want = g->n;
    if (sparse ? sparse_bound(g->n, bits, &want) < 0
               : bits && packed_size(g->n, bits, &want) < 0)
        return -1;
    if (buf_len(code) != want || buf_len(&g->zps) != g->groups) {
        PyErr_Format(PyExc_ValueError, "%s has %zu bytes and zero_points %zu items, expected "
                     "%zu and %zu", float_in ? out.what : in.what, buf_len(code),
                     buf_len(&g->zps), want, g->groups);
        return -1;
    }
    return 0;
}

/* -------------------------------------------------------------- functions */

static PyObject *py_absmax(PyObject *self, PyObject *arg) {
    buf_t x = {0};
    if (buf_get(arg, &x, 'f', 0, "x") < 0) return NULL;
    float m;
    Py_BEGIN_ALLOW_THREADS m = K->absmax((const float *)x.view.buf, buf_len(&x));
    Py_END_ALLOW_THREADS buf_release(&x);
    return PyFloat_FromDouble(m);
}

static PyObject *py_minmax(PyObject *self, PyObject *arg) {
    buf_t x = {0};
    if (buf_get(arg, &x, 'f', 0, "x") < 0) return NULL;
    size_t n = buf_len(&x);
    if (n == 0) {
        buf_release(&x);
        PyErr_SetString(PyExc_ValueError, "minmax of an empty buffer");
        return NULL;
    }
    float lo, hi;
    Py_BEGIN_ALLOW_THREADS K->minmax((const float *)x.view.buf, n, &lo, &hi);
    Py_END_ALLOW_THREADS buf_release(&x);
    return Py_BuildValue("(dd)", (double)lo, (double)hi);
}

static PyObject *py_params(PyObject *self, PyObject *args) {
    int symmetric, bits;
    float a, b;
    if (!PyArg_ParseTuple(args, "pffi", &symmetric, &a, &b, &bits)) return NULL;
    if (check_bits(bits) < 0) return NULL;
    es_qparams p = symmetric ? es_params_symmetric(a, bits) : es_params_affine(a, b, bits);
    return Py_BuildValue("(di)", (double)p.scale, (int)p.zero_point);
}

/* quantize(x, codes, scales, zero_points, bits, symmetric, inner) */
static PyObject *py_quantize(PyObject *self, PyObject *args) {
    PyObject *ox, *oc, *os, *oz;
    int bits, symmetric;
    Py_ssize_t inner;
    if (!PyArg_ParseTuple(args, "OOOOipn", &ox, &oc, &os, &oz, &bits, &symmetric, &inner))
        return NULL;
    if (check_bits(bits) < 0) return NULL;
    grouped_t b = {0};
    PyObject *ret = NULL;
    size_t outer;
    if (grouped_get(&b, (arg_t){ox, 'f', "x"}, (arg_t){oc, 'B', "codes"}, os, oz, 0, 0, 0) < 0 ||
        group_layout(b.n, b.groups, inner, &outer) < 0)
        goto done;
    const float *xp = b.in.view.buf;
    const float *sp = b.scales.view.buf;
    const int32_t *zpp = b.zps.view.buf;
    uint8_t *cp = b.out.view.buf;
    size_t groups = b.groups;
    Py_BEGIN_ALLOW_THREADS for (size_t o = 0; o < outer; o++) {
        for (size_t g = 0; g < groups; g++) {
            size_t at = (o * groups + g) * (size_t)inner;
            es_qparams p = params_for(sp[g], zpp[g], bits, symmetric);
            K->quantize(xp + at, (size_t)inner, &p, cp + at);
        }
    }
    Py_END_ALLOW_THREADS ret = Py_NewRef(Py_None);
done:
    grouped_release(&b);
    return ret;
}

/* dequantize(codes, out, scales, zero_points, inner) */
static PyObject *py_dequantize(PyObject *self, PyObject *args) {
    PyObject *oc, *oo, *os, *oz;
    Py_ssize_t inner;
    if (!PyArg_ParseTuple(args, "OOOOn", &oc, &oo, &os, &oz, &inner)) return NULL;
    grouped_t b = {0};
    PyObject *ret = NULL;
    size_t outer;
    if (grouped_get(&b, (arg_t){oc, 'B', "codes"}, (arg_t){oo, 'f', "out"}, os, oz, 0, 0, 0) < 0 ||
        group_layout(b.n, b.groups, inner, &outer) < 0)
        goto done;
    const uint8_t *cp = b.in.view.buf;
    const float *sp = b.scales.view.buf;
    const int32_t *zpp = b.zps.view.buf;
    float *op = b.out.view.buf;
    size_t groups = b.groups;
    Py_BEGIN_ALLOW_THREADS for (size_t o = 0; o < outer; o++) {
        for (size_t g = 0; g < groups; g++) {
            size_t at = (o * groups + g) * (size_t)inner;
            es_qparams p = params_for(sp[g], zpp[g], 8, 0);
            K->dequantize(cp + at, (size_t)inner, &p, op + at);
        }
    }
    Py_END_ALLOW_THREADS ret = Py_NewRef(Py_None);
done:
    grouped_release(&b);
    return ret;
}

/* pack(codes, out, bits) and unpack(packed, codes, bits): n is len(codes). */
static PyObject *pack_or_unpack(PyObject *args, int packing) {
    PyObject *oa, *ob;
    int bits;
    if (!PyArg_ParseTuple(args, "OOi", &oa, &ob, &bits)) return NULL;
    if (check_bits(bits) < 0) return NULL;
    buf_t a = {0}, b = {0};
    PyObject *ret = NULL;
    if (buf_get(oa, &a, 'B', 0, "input") < 0 || buf_get(ob, &b, 'B', 1, "output") < 0)
        goto done;
    size_t n = packing ? buf_len(&a) : buf_len(&b);
    size_t packed = packing ? buf_len(&b) : buf_len(&a), want;
    if (packed_size(n, bits, &want) < 0) goto done;
    if (packed != want) {
        PyErr_Format(PyExc_ValueError, "%zu codes at %d bits pack into %zu bytes, got %zu", n,
                     bits, want, packed);
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS if (packing) K->pack(a.view.buf, n, bits, b.view.buf);
    else K->unpack(a.view.buf, n, bits, b.view.buf);
    Py_END_ALLOW_THREADS ret = Py_NewRef(Py_None);
done:
    buf_release(&a), buf_release(&b);
    return ret;
}

static PyObject *py_pack(PyObject *self, PyObject *args) { return pack_or_unpack(args, 1); }
static PyObject *py_unpack(PyObject *self, PyObject *args) { return pack_or_unpack(args, 0); }

/* Per-group statistics, then parameters. Returns 0, -1 if some x is non-finite, or -2 if a
 * group's range does not fit in float32 (affine over [-3e38, 3e38]). */
static int find_params(const float *x, size_t outer, size_t groups, size_t inner, int bits,
                       int symmetric, float *scales, int32_t *zps) {
    for (size_t g = 0; g < groups; g++) {
        float a = 0.0f, lo = 0.0f, hi = 0.0f;
        for (size_t o = 0; o < outer; o++) {
            const float *run = x + (o * groups + g) * inner;
            if (symmetric) {
                float m = K->absmax(run, inner);
                if (!(m <= 3.402823466e38f)) return -1;
                a = m > a ? m : a;
            } else {
                float mn, mx;
                K->minmax(run, inner, &mn, &mx);
                if (!(mn >= -3.402823466e38f && mx <= 3.402823466e38f)) return -1;
                lo = mn < lo ? mn : lo;
                hi = mx > hi ? mx : hi;
            }
        }
        es_qparams p = symmetric ? es_params_symmetric(a, bits) : es_params_affine(lo, hi, bits);
        if (!(p.scale <= 3.402823466e38f)) return -2;
        scales[g] = p.scale;
        zps[g] = p.zero_point;
    }
    return 0;
}

/* quantize_pack(x, out, scales_out, zero_points_out, bits, symmetric, inner): the fused
 * "find scale + quantize + pack". Raises ValueError if x has a non-finite value. */
static PyObject *py_quantize_pack(PyObject *self, PyObject *args) {
    PyObject *ox, *oo, *os, *oz;
    int bits, symmetric;
    Py_ssize_t inner;
    if (!PyArg_ParseTuple(args, "OOOOipn", &ox, &oo, &os, &oz, &bits, &symmetric, &inner))
        return NULL;
    if (check_bits(bits) < 0) return NULL;
    grouped_t b = {0};
    PyObject *ret = NULL;
    if (grouped_get(&b, (arg_t){ox, 'f', "x"}, (arg_t){oo, 'B', "out"}, os, oz, bits, 1, 0) < 0)
        goto done;
    size_t n = b.n, groups = b.groups, outer;
    if (n == 0) {
        ret = Py_NewRef(Py_None);
        goto done;
    }
    if (group_layout(n, groups, inner, &outer) < 0) goto done;
    const float *xp = b.in.view.buf;
    float *sp = b.scales.view.buf;
    int32_t *zpp = b.zps.view.buf;
    uint8_t *op = b.out.view.buf;
    size_t run;
    int aligned = runs_of(n, groups, (size_t)inner, bits, &outer, &run);
    uint8_t *scratch = aligned ? NULL : malloc(n);
    if (!aligned && !scratch) {
        PyErr_NoMemory();
        goto done;
    }
    int status;
    Py_BEGIN_ALLOW_THREADS status = find_params(xp, outer, groups, run, bits, symmetric, sp, zpp);
    if (status == 0) {
        for (size_t o = 0; o < outer; o++) {
            for (size_t g = 0; g < groups; g++) {
                size_t at = (o * groups + g) * run;
                es_qparams p = params_for(sp[g], zpp[g], bits, symmetric);
                if (aligned) K->quantize_pack(xp + at, run, &p, bits, op + at * bits / 8);
                else K->quantize(xp + at, run, &p, scratch + at);
            }
        }
        if (!aligned) K->pack(scratch, n, bits, op);
    }
    Py_END_ALLOW_THREADS free(scratch);
    if (status == -1) {
        PyErr_SetString(PyExc_ValueError, "x contains a non-finite value");
        goto done;
    }
    if (status == -2) {
        PyErr_SetString(PyExc_OverflowError, "value range exceeds float32");
        goto done;
    }
    ret = Py_NewRef(Py_None);
done:
    grouped_release(&b);
    return ret;
}

/* unpack_dequantize(packed, out, scales, zero_points, bits, inner) */
static PyObject *py_unpack_dequantize(PyObject *self, PyObject *args) {
    PyObject *op_, *oo, *os, *oz;
    int bits;
    Py_ssize_t inner;
    if (!PyArg_ParseTuple(args, "OOOOin", &op_, &oo, &os, &oz, &bits, &inner)) return NULL;
    if (check_bits(bits) < 0) return NULL;
    grouped_t b = {0};
    PyObject *ret = NULL;
    if (grouped_get(&b, (arg_t){op_, 'B', "packed"}, (arg_t){oo, 'f', "out"}, os, oz, bits,
                    0, 0) < 0)
        goto done;
    size_t n = b.n, groups = b.groups, outer;
    if (n == 0) {
        ret = Py_NewRef(Py_None);
        goto done;
    }
    if (group_layout(n, groups, inner, &outer) < 0) goto done;
    const uint8_t *pp = b.in.view.buf;
    const float *sp = b.scales.view.buf;
    const int32_t *zpp = b.zps.view.buf;
    float *dst = b.out.view.buf;
    size_t run;
    int aligned = runs_of(n, groups, (size_t)inner, bits, &outer, &run);
    uint8_t *scratch = aligned ? NULL : malloc(n);
    if (!aligned && !scratch) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS if (!aligned) K->unpack(pp, n, bits, scratch);
    for (size_t o = 0; o < outer; o++) {
        for (size_t g = 0; g < groups; g++) {
            size_t at = (o * groups + g) * run;
            es_qparams p = params_for(sp[g], zpp[g], bits, 0);
            if (aligned) K->unpack_dequantize(pp + at * bits / 8, run, bits, &p, dst + at);
            else K->dequantize(scratch + at, run, &p, dst + at);
        }
    }
    Py_END_ALLOW_THREADS free(scratch);
    ret = Py_NewRef(Py_None);
done:
    grouped_release(&b);
    return ret;
}

/* ------------------------------------------------------------ sparse packing */

static int check_zero(int zero) {
    if (zero >= 0 && zero <= 255) return 0;
    PyErr_Format(PyExc_ValueError, "zero code must be in [0, 255], got %d", zero);
    return -1;
}

/* quantize_sparse(x, out, scales_out, zero_points_out, bits, symmetric, inner) -> size: the
 * fused "find scale + quantize + sparse pack"; out holds es_sparse_bound(n, bits) bytes and
 * the stream is its first `size`. Every group must get the same zero point (symmetric, or
 * one group): ValueError otherwise, and for a non-finite x, as quantize_pack. */
static PyObject *py_quantize_sparse(PyObject *self, PyObject *args) {
    PyObject *ox, *oo, *os, *oz;
    int bits, symmetric;
    Py_ssize_t inner;
    if (!PyArg_ParseTuple(args, "OOOOipn", &ox, &oo, &os, &oz, &bits, &symmetric, &inner))
        return NULL;
    if (check_bits(bits) < 0) return NULL;
    grouped_t b = {0};
    PyObject *ret = NULL;
    if (grouped_get(&b, (arg_t){ox, 'f', "x"}, (arg_t){oo, 'B', "out"}, os, oz, bits, 1, 1) < 0)
        goto done;
    size_t n = b.n, groups = b.groups, outer, run, used = 0;
    if (n == 0) {
        ret = PyLong_FromSize_t(0);
        goto done;
    }
    if (group_layout(n, groups, inner, &outer) < 0) goto done;
    const float *xp = b.in.view.buf;
    float *sp = b.scales.view.buf;
    int32_t *zpp = b.zps.view.buf;
    uint8_t *op = b.out.view.buf;
    runs_of(n, groups, (size_t)inner, bits, &outer, &run);
    uint8_t *scratch = groups == 1 ? NULL : malloc(n);
    if (groups != 1 && !scratch) {
        PyErr_NoMemory();
        goto done;
    }
    int status;
    Py_BEGIN_ALLOW_THREADS status = find_params(xp, outer, groups, run, bits, symmetric, sp, zpp);
    for (size_t g = 1; status == 0 && g < groups; g++)
        if (zpp[g] != zpp[0]) status = -3;
    if (status == 0 && groups == 1) {
        es_qparams p = params_for(sp[0], zpp[0], bits, symmetric);
        used = K->quantize_sparse(xp, n, &p, bits, op);
    } else if (status == 0) {
        for (size_t o = 0; o < outer; o++) {
            for (size_t g = 0; g < groups; g++) {
                size_t at = (o * groups + g) * run;
                es_qparams p = params_for(sp[g], zpp[g], bits, symmetric);
                K->quantize(xp + at, run, &p, scratch + at);
            }
        }
        used = K->sparse_pack(scratch, n, (uint8_t)zpp[0], bits, op);
    }
    Py_END_ALLOW_THREADS free(scratch);
    if (status == -1) {
        PyErr_SetString(PyExc_ValueError, "x contains a non-finite value");
        goto done;
    }
    if (status == -2) {
        PyErr_SetString(PyExc_OverflowError, "value range exceeds float32");
        goto done;
    }
    if (status == -3) {
        PyErr_SetString(PyExc_ValueError, "sparse packing needs one zero point for every "
                        "group, the groups got different ones");
        goto done;
    }
    ret = PyLong_FromSize_t(used);
done:
    grouped_release(&b);
    return ret;
}

/* sparse_pack(codes, out, zero, bits) -> size; out holds es_sparse_bound(n, bits) bytes. */
static PyObject *py_sparse_pack(PyObject *self, PyObject *args) {
    PyObject *oc, *oo;
    int zero, bits;
    if (!PyArg_ParseTuple(args, "OOii", &oc, &oo, &zero, &bits)) return NULL;
    if (check_bits(bits) < 0 || check_zero(zero) < 0) return NULL;
    buf_t c = {0}, o = {0};
    PyObject *ret = NULL;
    size_t n, want, used;
    if (buf_get(oc, &c, 'B', 0, "codes") < 0 || buf_get(oo, &o, 'B', 1, "out") < 0) goto done;
    n = buf_len(&c);
    if (sparse_bound(n, bits, &want) < 0) goto done;
    if (buf_len(&o) != want) {
        PyErr_Format(PyExc_ValueError, "out has %zu bytes, the sparse stream of %zu codes at "
                     "%d bits needs %zu", buf_len(&o), n, bits, want);
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS used = K->sparse_pack(c.view.buf, n, (uint8_t)zero, bits, o.view.buf);
    Py_END_ALLOW_THREADS ret = PyLong_FromSize_t(used);
done:
    buf_release(&c), buf_release(&o);
    return ret;
}

/* The number of codes marked non-zero by the bitmap of a sparse stream of n codes at the
 * start of `in` (len bytes), after checking that the stream is whole: its padding bits are 0
 * and it is exactly bitmap + packed codes. Returns 0, or -1 with ValueError naming the
 * values. The codec checks the same before (with CodecError); this keeps the kernel from
 * reading past `in` whatever the caller did. */
static int sparse_check(const uint8_t *in, size_t len, size_t n, int bits, size_t *k) {
    size_t nb = es_bitmap_size(n), packed = 0;
    if (len < nb) {
        PyErr_Format(PyExc_ValueError, "sparse stream of %zu codes is %zu bytes, shorter than "
                     "its %zu-byte bitmap", n, len, nb);
        return -1;
    }
    if (n % 8 && in[nb - 1] >> (n % 8)) {
        PyErr_Format(PyExc_ValueError, "sparse bitmap of %zu codes has padding bits set in its "
                     "last byte (0x%02x)", n, in[nb - 1]);
        return -1;
    }
    *k = K->popcount(in, nb);
    if (es_packed_size(*k, bits, &packed) != 0 || len != nb + packed) {
        PyErr_Format(PyExc_ValueError, "sparse stream is %zu bytes, its bitmap marks %zu of %zu "
                     "codes non-zero: %zu + %zu bytes at %d bits", len, *k, n, nb, packed,
                     bits);
        return -1;
    }
    return 0;
}

/* sparse_unpack(stream, codes_out, zero, bits): n = len(codes_out). */
static PyObject *py_sparse_unpack(PyObject *self, PyObject *args) {
    PyObject *oi, *oc;
    int zero, bits;
    if (!PyArg_ParseTuple(args, "OOii", &oi, &oc, &zero, &bits)) return NULL;
    if (check_bits(bits) < 0 || check_zero(zero) < 0) return NULL;
    buf_t in = {0}, c = {0};
    PyObject *ret = NULL;
    size_t k;
    if (buf_get(oi, &in, 'B', 0, "stream") < 0 || buf_get(oc, &c, 'B', 1, "codes") < 0 ||
        sparse_check(in.view.buf, buf_len(&in), buf_len(&c), bits, &k) < 0)
        goto done;
    Py_BEGIN_ALLOW_THREADS K->sparse_unpack(in.view.buf, buf_len(&c), k, (uint8_t)zero, bits,
                                            c.view.buf);
    Py_END_ALLOW_THREADS ret = Py_NewRef(Py_None);
done:
    buf_release(&in), buf_release(&c);
    return ret;
}

/* popcount(bytes) -> the number of 1 bits */
static PyObject *py_popcount(PyObject *self, PyObject *arg) {
    buf_t b = {0};
    if (buf_get(arg, &b, 'B', 0, "bytes") < 0) return NULL;
    size_t c;
    Py_BEGIN_ALLOW_THREADS c = K->popcount(b.view.buf, buf_len(&b));
    Py_END_ALLOW_THREADS buf_release(&b);
    return PyLong_FromSize_t(c);
}

/* ------------------------------------------------------------ ISA selection */

static PyObject *py_available_isas(PyObject *self, PyObject *unused) {
    PyObject *names = PyList_New(0);
    if (!names) return NULL;
    for (const es_kernels *const *k = es_available_kernels(); *k; k++) {
        if (es_select_kernels((*k)->name) != *k) continue; /* compiled in, CPU lacks it */
        PyObject *s = PyUnicode_FromString((*k)->name);
        if (!s || PyList_Append(names, s) < 0) {
            Py_XDECREF(s);
            Py_DECREF(names);
            return NULL;
        }
        Py_DECREF(s);
    }
    PyObject *t = PyList_AsTuple(names);
    Py_DECREF(names);
    return t;
}

static PyObject *py_get_isa(PyObject *self, PyObject *unused) {
    return PyUnicode_FromString(K->name);
}

/* For tests and benchmarks: run every build this CPU supports. Not thread-safe. */
static PyObject *py_set_isa(PyObject *self, PyObject *arg) {
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    const es_kernels *k = es_select_kernels(name);
    if (!k) return PyErr_Format(PyExc_ValueError, "ISA %R is not available on this CPU", arg);
    K = k;
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------ planner */

static PyObject *py_plan_terms(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *table_obj, *out_obj;
    es_plan_state st;
    if (!PyArg_ParseTuple(args, "OO(ddddddddddd)", &table_obj, &out_obj, &st.device_slowdown,
                          &st.server_slowdown, &st.rtt_ms, &st.queue_ms, &st.overhead_ms,
                          &st.bw_mbps, &st.spread, &st.slo_ms, &st.margin_ms,
                          &st.min_budget_ms, &st.fallback_exit_acc))
        return NULL;
    buf_t table = {0}, out = {0};
    if (buf_get(table_obj, &table, 'd', 0, "table") < 0) return NULL;
    if (buf_get(out_obj, &out, 'd', 1, "out") < 0) {
        buf_release(&table);
        return NULL;
    }
    /* shapes, not only sizes: a transposed (n, 11) table would be read wrongly */
    size_t n = table.view.ndim == 2 ? (size_t)table.view.shape[1] : 0;
    if (table.view.ndim != 2 || table.view.shape[0] != ES_PLAN_FIELDS || out.view.ndim != 2 ||
        out.view.shape[0] != 3 || (size_t)out.view.shape[1] != n) {
        PyErr_Format(PyExc_ValueError, "table must be (%d, n) and out (3, n), got %zd and %zd "
                     "dimensions, %zd and %zd rows", ES_PLAN_FIELDS, (Py_ssize_t)table.view.ndim,
                     (Py_ssize_t)out.view.ndim,
                     table.view.ndim ? table.view.shape[0] : (Py_ssize_t)0,
                     out.view.ndim ? out.view.shape[0] : (Py_ssize_t)0);
        buf_release(&table);
        buf_release(&out);
        return NULL;
    }
    es_plan_terms((const double *)table.view.buf, n, &st, (double *)out.view.buf);
    buf_release(&table);
    buf_release(&out);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"absmax", py_absmax, METH_O, "absmax(x) -> float"},
    {"minmax", py_minmax, METH_O, "minmax(x) -> (min, max)"},
    {"params", py_params, METH_VARARGS, "params(symmetric, a, b, bits) -> (scale, zp)"},
    {"quantize", py_quantize, METH_VARARGS,
     "quantize(x, codes, scales, zero_points, bits, symmetric, inner)"},
    {"dequantize", py_dequantize, METH_VARARGS,
     "dequantize(codes, out, scales, zero_points, inner)"},
    {"pack", py_pack, METH_VARARGS, "pack(codes, out, bits)"},
    {"unpack", py_unpack, METH_VARARGS, "unpack(packed, codes, bits)"},
    {"quantize_pack", py_quantize_pack, METH_VARARGS,
     "quantize_pack(x, out, scales_out, zero_points_out, bits, symmetric, inner)"},
    {"unpack_dequantize", py_unpack_dequantize, METH_VARARGS,
     "unpack_dequantize(packed, out, scales, zero_points, bits, inner)"},
    {"quantize_sparse", py_quantize_sparse, METH_VARARGS,
     "quantize_sparse(x, out, scales_out, zero_points_out, bits, symmetric, inner) -> size"},
    {"sparse_pack", py_sparse_pack, METH_VARARGS, "sparse_pack(codes, out, zero, bits) -> size"},
    {"sparse_unpack", py_sparse_unpack, METH_VARARGS,
     "sparse_unpack(stream, codes_out, zero, bits)"},
    {"popcount", py_popcount, METH_O, "popcount(bytes) -> number of 1 bits"},
    {"plan_terms", py_plan_terms, METH_VARARGS,
     "plan_terms(table, out, state): the planner's expected terms (native/planner.c)"},
    {"available_isas", py_available_isas, METH_NOARGS, "ISAs this build and CPU run"},
    {"get_isa", py_get_isa, METH_NOARGS, "the ISA in use"},
    {"set_isa", py_set_isa, METH_O, "set_isa(name): use another build (tests, benchmarks)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_native", "edgesdk codec and planner kernels (C99).", -1, methods,
};

PyMODINIT_FUNC PyInit__native(void) {
    K = es_select_kernels(NULL); /* the best this CPU runs; never NULL (baseline) */
    return PyModule_Create(&moduledef);
}
