"""Write reference vectors for native/tests/test_kernels.c from the numpy kernels.

    EDGESDK_NATIVE=0 PYTHONPATH=<repo> python native/tests/gen_vectors.py OUT.bin

The numpy implementation (edgesdk/codec/_numpy_kernels.py and _layout.py) is the reference:
the C kernels of every ISA build must reproduce each recorded array bit for bit. Each case
records every intermediate so that the C test can feed each kernel the numpy *input* and
compare with the numpy *output*, i.e. every kernel is tested on its own, not only chained.

File format (all integers and floats little-endian; floats are IEEE-754 binary32):

    magic      8 bytes  b"ESKVEC2\\0"
    count      u32      number of cases
    count times:
      name_len u32, name  name_len bytes of ASCII (no terminator)
      kind     u32      0 = full pipeline (finite x), 1 = statistics of non-finite x only
      bits     u32      8, 4 or 2
      scheme   u32      0 = symmetric, 1 = affine
      n        u32      number of elements
      flags    u32      bit 0: minmax is defined (n > 0)
      x        f32[n]   input
      kind 0 only:
        absmax            f32      statistics of x (min/max are 0 when n == 0)
        min, max          f32, f32
        param_a, param_b  f32, f32 inputs to es_params_*: (absmax, 0) for symmetric,
                                   (min, max) for affine; usually the statistics of x, a
                                   narrower range in the "clamp" cases so x crosses the edges
        scale             f32      es_qparams from those inputs
        zero_point, code_min, code_max   i32
        codes             u8[n]    quantize(x)
        packed            u8[P]    pack(codes), P = ceil(n * bits / 8)
        unpacked          u8[n]    unpack(packed)
        dequantized       f32[n]   dequantize(codes)
        quantize_pack     u8[P]    quantize_pack(x)
        unpack_dequantize f32[n]   unpack_dequantize(packed)
        sparse_size       u32      S, the size of the sparse stream below
        sparse_k          u32      k, the codes that are not the zero point
        sparse            u8[S]    sparse_pack(codes, zero_point): bitmap, then the k
                                   non-zero codes packed (quantize_sparse(x) gives the same)
    trailer    4 bytes  b"END!"

Inputs respect the kernels' preconditions (kernels.h): quantize gets finite x only, minmax
gets n > 0, affine ranges do not overflow float32. Non-finite x (kind 1) exercises only the
documented promise that absmax and minmax then report a non-finite result.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass

import numpy as np

from edgesdk.codec import _layout
from edgesdk.codec import _numpy_kernels as nk

F32 = np.float32
FLT_MAX = np.finfo(F32).max
BITS = (8, 4, 2)
SCHEMES = ("symmetric", "affine")
# Lengths around the 16-wide NEON loop, the 2/4-code packing groups and the 2048-code
# chunk of the fused kernels (4095 and 5000 span three chunks).
LENGTHS = (0, 1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 31, 33, 2047, 2048, 2049, 4095, 5000)

KIND_FULL, KIND_NONFINITE = 0, 1
FLAG_HAS_MINMAX = 1
MAGIC, TRAILER = b"ESKVEC2\0", b"END!"


@dataclass
class Case:
    name: str
    x: np.ndarray  # float32
    bits: int = 8
    scheme: str = "symmetric"
    # None: params come from the statistics of x. Otherwise (absmax,) or (min, max) of a
    # narrower range, so that x reaches beyond the clamp edges.
    param_range: tuple[float, ...] | None = None
    kind: int = KIND_FULL
    # (scale, zero_point) the construction relies on, e.g. exact ties need that exact scale.
    expect: tuple[float, int] | None = None


def f32(values) -> np.ndarray:
    return np.asarray(values, dtype=F32)


def half_and_top(bits: int) -> tuple[int, int]:
    """(zero point of symmetric, largest code): 2^(b-1), 2^b - 1."""
    return 1 << (bits - 1), (1 << bits) - 1


def next_up(v) -> F32:
    return np.nextafter(F32(v), F32(np.inf))


def next_down(v) -> F32:
    return np.nextafter(F32(v), F32(-np.inf))


def every_config(name: str, x: np.ndarray, schemes=SCHEMES) -> list[Case]:
    return [Case(f"{name} b={b} {s}", x, b, s) for b in BITS for s in schemes]


# ------------------------------------------------------------------ case families


def random_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    for n in LENGTHS:
        cases += every_config(f"normal n={n}", f32(rng.standard_normal(n)))
    # Off-centre data moves the affine zero point to (or against) the code range edges.
    for label, x in (
        ("normal+4", rng.standard_normal(257) + 4),
        ("normal-4", rng.standard_normal(257) - 4),
        ("uniform[1000,1001]", rng.uniform(1000, 1001, 100)),
        ("uniform[-3,-2]", rng.uniform(-3, -2, 100)),
        ("normal*1e-20", rng.standard_normal(300) * 1e-20),
        ("normal*1e20", rng.standard_normal(300) * 1e20),
    ):
        cases += every_config(f"{label} n={len(x)}", f32(x))
    return cases


def relu_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    for n in (100, 2049):
        cases += every_config(f"relu n={n}", f32(np.maximum(rng.standard_normal(n), 0)))
        keep = rng.random(n) < 0.1  # 90 % exact zeros
        cases += every_config(
            f"relu-sparse90 n={n}", f32(np.maximum(rng.standard_normal(n), 0) * keep)
        )
    return cases


def sparse_cases(rng: np.random.Generator) -> list[Case]:
    """The sparse packing at every density, around the 8/16/64-code register widths of its
    kernels and the 2048-code chunk: no zero codes, about half, 90 %, and all of them."""
    cases = []
    for n in (1, 7, 8, 9, 63, 64, 65, 127, 129, 1000, 2048, 2053, 4103):
        relu = np.maximum(rng.standard_normal(n), 0)
        for label, x in (
            ("none-zero", np.abs(rng.standard_normal(n)) + 1.0),
            ("half-zero", relu),
            ("90%-zero", relu * (rng.random(n) < 0.1)),
            ("all-zero", np.zeros(n)),
        ):
            cases += every_config(f"sparse {label} n={n}", f32(x))
    # runs of zeros longer than the chunk between dense stretches
    x = np.maximum(rng.standard_normal(6000), 0)
    x[100:2900] = 0
    x[3000:5990] = 0
    cases += every_config("sparse long-zero-runs n=6000", f32(x))
    return cases


def signed_zero_cases() -> list[Case]:
    alternating = f32([0.0, -0.0] * 8 + [0.0])
    mixed = f32(([-0.0, 0.0, 1.0, -1.0, 0.5, -0.0, -0.25, 0.0] * 5)[:37])
    cases = every_config("zeros +0/-0 n=17", alternating)
    cases += every_config("zeros all -0 n=16", f32([-0.0] * 16))
    cases += every_config("zeros mixed n=37", mixed)
    return cases


def tie_values(lo_k: int, hi_k: int, s: F32) -> np.ndarray:
    """(k + 0.5) * s for k in [lo_k, hi_k), and their neighbours one ulp either side."""
    ties = (np.arange(lo_k, hi_k, dtype=F32) + F32(0.5)) * s
    return np.concatenate([ties, next_up(ties), next_down(ties)]).astype(F32)


def tie_cases() -> list[Case]:
    """x * (1/scale) lands exactly on k + 0.5 (even and odd k): rint must round to even.

    A power-of-two scale makes 1/scale, (k + 0.5) * scale and their product exact.
    """
    cases = []
    for s in (F32(2.0**-3), F32(2.0**5)):
        for bits in BITS:
            half, top = half_and_top(bits)
            q = half - 1
            x = np.concatenate([f32([-q * s, q * s]), tie_values(-q, q, s)])
            cases.append(Case(f"ties s={s} b={bits} symmetric", f32(x), bits, "symmetric",
                              expect=(s, half)))
            zp0 = top // 3
            lo, hi = F32(-zp0 * s), F32((top - zp0) * s)
            x = np.concatenate([f32([lo, hi]), tie_values(-zp0, top - zp0, s)])
            cases.append(Case(f"ties s={s} b={bits} affine", f32(x), bits, "affine",
                              expect=(s, zp0)))
            # The affine zero point itself is a tie: -lo / scale = z + 0.5, z even and odd.
            for z in (0, 1, 2) if bits == 2 else (2, 3):
                lo, hi = F32(-(z + 0.5) * s), F32((top - z - 0.5) * s)
                x = f32([lo, hi, 0.0, -0.0, lo / 2, hi / 2])
                zp = int(np.rint(z + 0.5))  # Python float rint: ties to even
                cases.append(Case(f"zp tie z={z}.5 s={s} b={bits} affine", x, bits, "affine",
                                  expect=(s, zp)))
    # A scale that is not a power of two: the products are near, not on, the ties.
    for bits in BITS:
        q = half_and_top(bits)[0] - 1
        s = F32(0.1)
        x = np.concatenate([f32([-q * s, q * s]), tie_values(-q, q, s)])
        for scheme in SCHEMES:
            cases.append(Case(f"near-ties s=0.1 b={bits} {scheme}", f32(x), bits, scheme))
    return cases


def clamp_symmetric(bits: int, a: F32) -> np.ndarray:
    """Values at, just inside and beyond +-a, where `a` maps to the largest code."""
    q = half_and_top(bits)[0] - 1
    s = F32(a / F32(q))
    edge = [a, next_down(a), next_up(a), a - s / 2, a + s / 2, a + s, 2 * a, F32(1e30), FLT_MAX]
    pos = f32(edge)
    return np.concatenate([pos, -pos, f32([0.0, -0.0])]).astype(F32)


def clamp_affine(lo: F32, hi: F32) -> np.ndarray:
    s = F32((hi - lo) / 255)  # only for step sizes; exactness is not needed here
    below = [lo, next_down(lo), next_up(lo), lo - s / 2, lo - s, 2 * lo - 1, F32(-1e30), -FLT_MAX]
    above = [hi, next_up(hi), next_down(hi), hi + s / 2, hi + s, 2 * hi + 1, F32(1e30), FLT_MAX]
    return f32(below + above + [0.0, -0.0])


def clamp_cases() -> list[Case]:
    """Parameters from a narrower range than x: codes must clamp to [code_min, code_max].

    Symmetric must never emit code 0 although -q - 1 is representable; huge x * (1/scale)
    overflows to inf and must clamp too.
    """
    cases = []
    for bits in BITS:
        q = half_and_top(bits)[0] - 1
        for a in (F32(q * 0.25), F32(1.0)):  # power-of-two scale, then 1/q
            cases.append(
                Case(f"clamp a={a} b={bits} symmetric", clamp_symmetric(bits, a), bits,
                     "symmetric", (float(a),))
            )
        top = half_and_top(bits)[1]
        for lo, hi in ((-(top // 3) * 0.25, (top - top // 3) * 0.25), (0.0, 3.0), (-3.0, 0.0),
                       (-1.0, 2.0)):
            lo, hi = F32(lo), F32(hi)
            cases.append(
                Case(f"clamp [{lo},{hi}] b={bits} affine", clamp_affine(lo, hi), bits,
                     "affine", (float(lo), float(hi)))
            )
    return cases


def tiny_cases() -> list[Case]:
    """Ranges around ES_MIN_SCALE = 2^-100 * (largest step count), and subnormals.

    Below it the scale falls back to 1 (everything encodes as zero), which also keeps armv7
    NEON, which flushes subnormals, in step with IEEE hosts.
    """
    sub = f32([1e-45, -1e-45, 1e-40, -3e-39, 5e-39, 0.0, -0.0])
    cases = every_config("subnormals n=7", sub)
    for bits in BITS:
        half, top = half_and_top(bits)
        for scheme, steps in (("symmetric", half - 1), ("affine", top)):
            edge = F32(steps * 2.0**-100)  # exact: steps < 2^24
            for label, a in (("at", edge), ("below", next_down(edge)), ("above", next_up(edge))):
                x = np.concatenate([f32([a, -a if scheme == "symmetric" else 0.0]),
                                    f32([a / 3, a / 2, -a / 7, 2.0**-110]), sub])
                cases.append(Case(f"tiny {label} min scale b={bits} {scheme}", f32(x), bits,
                                  scheme))
            # Subnormal inputs with a scale just above the minimum: x * 2^100 stays < 2^-26.
            x = np.concatenate([f32([F32(steps * 2.0**-99)]), sub])
            cases.append(Case(f"tiny subnormals near 2^-99 b={bits} {scheme}", x, bits, scheme))
        lo, hi = F32(-(2.0**-105)), F32(2.0**-104)
        cases.append(Case(f"tiny affine [-2^-105,2^-104] b={bits}", f32([lo, hi, 0.0, hi / 2]),
                          bits, "affine"))
    return cases


def huge_cases(rng: np.random.Generator) -> list[Case]:
    """Magnitudes up to FLT_MAX.

    At 2 bits the symmetric scale is absmax itself (and the affine one (hi - lo) / 3), so
    beyond 2^126 the reciprocal 1/scale is subnormal: IEEE hosts keep it, a flush-to-zero
    unit (armv7 NEON) would turn every x * (1/scale) into 0.
    """
    cases = []
    spread = f32(np.concatenate([rng.standard_normal(61) * 1e37, [FLT_MAX, -FLT_MAX, 3e38]]))
    cases += every_config("huge normal*1e37 + FLT_MAX n=64", spread, schemes=("symmetric",))
    for label, a in (("2^126", F32(2.0**126)), ("next_up(2^126)", next_up(2.0**126)),
                     ("1e38", F32(1e38)), ("FLT_MAX", FLT_MAX)):
        edges = [a, -a, a / 2, -a / 3, a / 4, 0.0]
        x = f32(np.concatenate([edges, rng.standard_normal(26) * (a / 8)]))
        cases += every_config(f"huge absmax={label} n=32", x, schemes=("symmetric",))
    # Affine only where hi - lo fits in float32 (a wider range is an OverflowError).
    for lo, hi in ((-1e38, 2e38), (0.0, FLT_MAX), (-FLT_MAX, 0.0), (-1.5e38, 1.5e38)):
        lo, hi = F32(lo), F32(hi)
        x = f32(np.concatenate([[lo, hi], rng.uniform(lo, hi, 30)]))
        for bits in BITS:
            cases.append(Case(f"huge affine [{lo:.3g},{hi:.3g}] b={bits}", x, bits, "affine"))
    return cases


def nonfinite_cases(rng: np.random.Generator) -> list[Case]:
    """absmax and minmax must report a non-finite result; x is never quantized."""
    bad = {
        "nan": 0x7FC00000,
        "-nan": 0xFFC00000,
        "snan": 0x7F800001,
        "inf": 0x7F800000,
        "-inf": 0xFF800000,
    }
    cases = []
    for label, pattern in bad.items():
        for n in (1, 17, 2049):
            for at in sorted({0, n // 2, n - 1}):
                x = f32(rng.standard_normal(n))
                x.view(np.uint32)[at] = pattern
                cases.append(Case(f"nonfinite {label} n={n} at={at}", x, kind=KIND_NONFINITE))
    x = f32(rng.standard_normal(40))
    x[3], x[35] = np.inf, -np.inf
    cases.append(Case("nonfinite +inf and -inf n=40", x, kind=KIND_NONFINITE))
    return cases


def all_cases() -> list[Case]:
    rng = np.random.default_rng(20240611)
    return (random_cases(rng) + relu_cases(rng) + sparse_cases(rng) + signed_zero_cases()
            + tie_cases()
            + clamp_cases() + tiny_cases() + huge_cases(rng) + nonfinite_cases(rng))


# ------------------------------------------------------------------ reference outputs


def params(scheme: str, bits: int, ins: tuple[F32, ...]) -> tuple[F32, int]:
    if scheme == "symmetric":
        s, z = _layout.params_symmetric(ins[0], bits)
    else:
        s, z = _layout.params_affine(ins[0], ins[1], bits)
    return F32(s[()]), int(z[()])


def check_expect(case: Case, scale: F32, zp: int) -> None:
    """Constructed cases (ties) only test what they claim with the intended parameters."""
    if case.expect is None:
        return
    assert (scale, zp) == (F32(case.expect[0]), case.expect[1]), (case.name, scale, zp)
    if case.name.startswith("ties"):
        v = case.x * (F32(1.0) / scale)
        assert np.any(v - np.floor(v) == F32(0.5)), case.name


def encode_full(case: Case) -> bytes:
    x, bits, scheme, n = case.x, case.bits, case.scheme, case.x.size
    amax = F32(nk.absmax(x))
    lo, hi = (F32(v) for v in nk.minmax(x)) if n else (F32(0), F32(0))
    stats = (amax, F32(0)) if scheme == "symmetric" else (lo, hi)
    ins = stats if case.param_range is None else tuple(F32(v) for v in case.param_range)
    if len(ins) == 1:
        ins = (ins[0], F32(0))
    scale, zp = params(scheme, bits, ins)
    check_expect(case, scale, zp)
    cmin, cmax = _layout.code_range(bits, scheme)
    sc, zps = np.array([scale], F32), np.array([zp], np.int32)

    with np.errstate(over="ignore"):  # (code - zp) * scale may round to inf near FLT_MAX
        codes = nk.quantize(x, sc, zps, bits, scheme)
        packed = nk.pack(codes, bits)
        unpacked = nk.unpack(packed, bits, n)
        deq = nk.dequantize(codes, sc, zps, (n,))
        if case.param_range is None:
            qp, qs, qz = nk.quantize_pack(x, bits, scheme)
            assert (F32(qs.flat[0]), int(qz.flat[0])) == (scale, zp), case.name
        else:  # the fused entry point derives its own params; use the same two steps
            qp = nk.pack(nk.quantize(x, sc, zps, bits, scheme), bits)
        ud = nk.unpack_dequantize(packed, (n,), bits, sc, zps)
        sparse = nk.sparse_pack(codes, zp, bits)
        k = int(np.count_nonzero(codes != zp))
        assert np.array_equal(nk.sparse_unpack(sparse, n, zp, bits), codes), case.name
        if case.param_range is None:
            qs = nk.quantize_sparse(x, bits, scheme)[0]
            assert np.array_equal(qs, sparse), case.name

    assert codes.min(initial=cmin) >= cmin and codes.max(initial=cmax) <= cmax, case.name
    assert packed.size == _layout.packed_size(n, bits) == qp.size, case.name
    return b"".join([
        struct.pack("<5f", amax, lo, hi, *ins),
        struct.pack("<f3i", scale, zp, cmin, cmax),
        u8(codes), u8(packed), u8(unpacked), le_f32(deq), u8(qp), le_f32(ud),
        struct.pack("<2I", sparse.size, k), u8(sparse),
    ])


def u8(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype=np.uint8).tobytes()


def le_f32(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype="<f4").tobytes()


def encode_case(case: Case) -> bytes:
    x = case.x
    assert x.dtype == F32 and x.ndim == 1, case.name
    if case.kind == KIND_FULL:
        assert np.all(np.isfinite(x)), f"{case.name}: quantize requires finite x"
    else:
        assert not np.isfinite(nk.absmax(x)), case.name
        assert not all(np.isfinite(nk.minmax(x))), case.name
    name = case.name.encode("ascii")
    flags = FLAG_HAS_MINMAX if x.size else 0
    head = struct.pack("<I", len(name)) + name + struct.pack(
        "<5I", case.kind, case.bits, SCHEMES.index(case.scheme), x.size, flags
    )
    body = encode_full(case) if case.kind == KIND_FULL else b""
    return head + le_f32(x) + body


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    cases = all_cases()
    names = [c.name for c in cases]
    assert len(set(names)) == len(names), "case names must be unique"
    blob = MAGIC + struct.pack("<I", len(cases)) + b"".join(map(encode_case, cases)) + TRAILER
    with open(argv[1], "wb") as f:
        f.write(blob)
    print(f"gen_vectors: {len(cases)} cases, {len(blob)} bytes -> {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
