"""The native kernels (every ISA build this CPU runs) are bit-identical to the numpy ones."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgesdk.codec._layout import params_affine, params_symmetric

from conftest import needs_native

BITS = (8, 4, 2)
SCHEMES = ("symmetric", "affine")


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal as bit patterns (distinguishes -0.0 from 0.0)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == "f":
        return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))
    return a.shape == b.shape and np.array_equal(a, b)


def assert_same_roundtrip(native, ref, x, bits, scheme, axis=None):
    got = native.quantize_pack(x, bits, scheme, axis)
    want = ref.quantize_pack(x, bits, scheme, axis)
    for name, g, w in zip(("packed", "scales", "zero_points"), got, want):
        assert same_bits(g, w), f"{name} differs at bits={bits} {scheme} axis={axis}"
    back_n = native.unpack_dequantize(got[0], x.shape, bits, got[1], got[2], axis)
    back_r = ref.unpack_dequantize(want[0], x.shape, bits, want[1], want[2], axis)
    assert same_bits(back_n, back_r)


def adversarial(bits: int, scheme: str) -> np.ndarray:
    """Values that land exactly on rounding ties and clamp edges after scaling."""
    rng = np.random.default_rng(bits)
    top = (1 << (bits - 1)) - 1 if scheme == "symmetric" else (1 << bits) - 1
    scale = np.float32(0.25)  # a power of two: x * (1 / scale) is exact, ties stay ties
    k = np.arange(-top - 2, top + 2, dtype=np.float32)
    ties = (k + np.float32(0.5)) * scale
    edges = np.array([top * scale, -top * scale, np.nextafter(top * scale, np.float32(9)),
                      0.0, -0.0, 1e-45, -1e-45, 1.2e-38], dtype=np.float32)
    noise = rng.standard_normal(997).astype(np.float32)
    # absmax pins the grid so that `scale` above is the one chosen for the symmetric scheme
    anchor = np.array([top * scale], dtype=np.float32)
    return np.concatenate([ties, edges, noise * scale, anchor]).astype(np.float32)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_adversarial_values(native, ref, bits, scheme):
    x = adversarial(bits, scheme)
    assert_same_roundtrip(native, ref, x, bits, scheme)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_exact_ties_round_half_to_even(native, bits, scheme):
    """With a power-of-two scale every (k + 0.5) * scale is an exact tie: np.rint semantics."""
    half = 1 << (bits - 1)
    top = half - 1
    scale = np.float32(0.5)
    k = np.arange(-top, top, dtype=np.float32)
    x = np.concatenate([(k + np.float32(0.5)) * scale, [top * scale]]).astype(np.float32)
    scales = np.array([scale], np.float32)
    zps = np.array([half], np.int32)
    codes = native.quantize(x, scales, zps, bits, "symmetric")
    want = np.clip(np.rint(x / scale), -top, top).astype(np.int32) + half
    assert np.array_equal(codes, want.astype(np.uint8))


@pytest.mark.parametrize("n", [1, 15, 16, 17, 2047, 2048, 2049, 4099])
@pytest.mark.parametrize("bits", BITS)
def test_lengths_across_vector_and_chunk_edges(native, ref, n, bits):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    for scheme in SCHEMES:
        assert_same_roundtrip(native, ref, x, bits, scheme)


@pytest.mark.parametrize("bits", BITS)
def test_per_channel_unaligned_runs(native, ref, bits):
    """Runs of 7 elements do not start on byte boundaries at 2 and 4 bits."""
    x = np.random.default_rng(7).standard_normal((3, 5, 7)).astype(np.float32)
    for axis in (0, 1, 2):
        for scheme in SCHEMES:
            assert_same_roundtrip(native, ref, x, bits, scheme, axis)


@pytest.mark.parametrize("bits", BITS)
def test_one_group_with_several_unaligned_runs(native, ref, bits):
    """axis of size 1 with outer > 1: a single scale, but runs of 5 elements (regression)."""
    x = np.random.default_rng(5).standard_normal((3, 1, 5)).astype(np.float32)
    for scheme in SCHEMES:
        assert_same_roundtrip(native, ref, x, bits, scheme, axis=1)


def test_tiny_and_huge_ranges(native, ref):
    tiny = np.array([1e-40, -3e-41, 0.0, 5e-39], dtype=np.float32)  # scale falls back to 1
    huge = np.array([3.4e38, -3.4e38, 1.0], dtype=np.float32)
    for bits in BITS:
        assert_same_roundtrip(native, ref, tiny, bits, "symmetric")
        assert_same_roundtrip(native, ref, tiny, bits, "affine")
        assert_same_roundtrip(native, ref, huge, bits, "symmetric")
    for k in (native, ref):
        with pytest.raises(OverflowError):
            k.quantize_pack(huge, 8, "affine")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_statistics_report_non_finite(native, ref, bad):
    x = np.ones(100, dtype=np.float32)
    x[37] = bad
    for k in (native, ref):
        assert not np.isfinite(k.absmax(x))
        assert not all(np.isfinite(k.minmax(x)))
        for scheme in SCHEMES:
            with pytest.raises(ValueError):
                k.quantize_pack(x, 8, scheme)


def test_params_match_c_rules(native):
    """The parameter rules in _layout mirror native/dispatch.c exactly."""
    from edgesdk import _native

    rng = np.random.default_rng(3)
    values = np.concatenate([rng.standard_normal(200) * 10.0 ** rng.integers(-30, 30, 200),
                             [0.0, -0.0, 1e-31, 2.0**-100 * 127, 3e38]]).astype(np.float32)
    for bits in BITS:
        for a in values:
            s, z = params_symmetric(np.abs(a), bits)
            assert (np.float32(s[()]), int(z[()])) == _native.params(True, abs(a), 0.0, bits)
        for lo, hi in zip(values[:-1], values[1:]):
            lo, hi = min(lo, hi), max(lo, hi)
            if np.isinf(np.float32(hi) - np.float32(lo)):
                continue
            s, z = params_affine(lo, hi, bits)
            assert (np.float32(s[()]), int(z[()])) == _native.params(False, lo, hi, bits)


@needs_native
@given(
    x=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=9),
        elements=st.floats(-1e6, 1e6, width=32),
    ),
    bits=st.sampled_from(BITS),
    scheme=st.sampled_from(SCHEMES),
    data=st.data(),
)
def test_random_tensors(x, bits, scheme, data):
    from edgesdk.codec import _native_kernels as native
    from edgesdk.codec import _numpy_kernels as ref

    axis = data.draw(st.none() | st.integers(0, x.ndim - 1))
    for isa in native.available_isas():
        native.set_isa(isa)
        assert_same_roundtrip(native, ref, x, bits, scheme, axis)
    native.set_isa(native.available_isas()[0])


@pytest.mark.parametrize("bits", BITS)
def test_pack_unpack_layout(native, ref, bits):
    """The documented layout: element 0 in the lowest bits of byte 0."""
    codes = (np.arange(11) % (1 << bits)).astype(np.uint8)
    for k in (native, ref):
        packed = k.pack(codes, bits)
        assert packed.size == (11 * bits + 7) // 8
        if bits == 4:
            assert packed[0] == codes[0] | (codes[1] << 4)
        if bits == 2:
            assert packed[0] == codes[0] | codes[1] << 2 | codes[2] << 4 | codes[3] << 6
        assert np.array_equal(k.unpack(packed, bits, 11), codes)
    assert same_bits(native.pack(codes, bits), ref.pack(codes, bits))


# Bad `inner` values for the private binding. groups * inner used to wrap around size_t:
# on 64-bit, 4 * 2**62 is 0 (SIGFPE in `n % 0`), 4 * (2**62 + 1) is 4, which "divides"
# n = 4 and sent the loops 2**62 floats past the buffers (SIGSEGV); on 32-bit the same
# with 2**30. They run in a child interpreter so that a crash fails this test instead of
# killing the whole run.
_BAD_INNER_SCRIPT = """
import sys

import numpy as np
from edgesdk import _native

H = (sys.maxsize + 1) // 2  # 2**62 on 64-bit, 2**30 on 32-bit: 4 * H wraps size_t to 0

n, groups = 4, 4
x = np.zeros(n, np.float32)
codes = np.zeros(n, np.uint8)
packed = np.zeros(n, np.uint8)  # 8 bits: one byte per code
s = np.ones(groups, np.float32)
z = np.zeros(groups, np.int32)
calls = {
    "quantize": lambda i: _native.quantize(x, codes, s, z, 8, False, i),
    "dequantize": lambda i: _native.dequantize(codes, x, s, z, i),
    "quantize_pack": lambda i: _native.quantize_pack(x, packed, s.copy(), z.copy(), 8, False, i),
    "unpack_dequantize": lambda i: _native.unpack_dequantize(packed, x, s, z, 8, i),
}
for name, call in calls.items():
    for inner in (H, H + 1, H // 2 + 1, 5, 0, -1):
        try:
            call(inner)
        except ValueError as e:
            assert str(inner) in str(e), (name, inner, str(e))
            print(name, inner, "ValueError")
        else:
            print(name, inner, "accepted")
"""


@needs_native
def test_native_rejects_inner_that_overflows_the_group_layout(tmp_path):
    import subprocess
    import sys

    # cwd away from the checkout: `python -c` puts cwd first on sys.path
    proc = subprocess.run([sys.executable, "-c", _BAD_INNER_SCRIPT], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{proc.stdout}{proc.stderr}"
    lines = proc.stdout.splitlines()
    assert len(lines) == 4 * 6, proc.stdout
    assert all(line.endswith("ValueError") for line in lines), proc.stdout


# Code counts whose packed size n * bits wraps around size_t. On 32-bit ARM that is any
# buffer of >= 512 MiB of codes; here the same wrap needs 2**61 codes, which a ctypes array
# laid over 16 real bytes claims to have without allocating them (the binding must reject
# the call before touching the memory). (2**61 + 1) * 8 wrapped to 8, i.e. "1 packed byte",
# so pack read and unpack wrote 2**61 bytes through a 1-byte buffer. Child interpreter: a
# crash fails this test instead of killing the run.
_PACKED_SIZE_WRAP_SCRIPT = """
import ctypes
import sys

import numpy as np
from edgesdk import _native

M = 2 * (sys.maxsize + 1)  # 2**64, or 2**32 on 32-bit: SIZE_MAX + 1
backing = np.zeros(64, np.uint8)
one = np.zeros(1, np.uint8)
for bits in (8, 4):
    n = M // bits + 1  # 2**61 + 1 and 2**62 + 1; on 32-bit 2**29 + 1 and 2**30 + 1
    huge = (ctypes.c_uint8 * n).from_address(backing.ctypes.data)
    for name, call in (("pack", lambda: _native.pack(huge, one, bits)),
                       ("unpack", lambda: _native.unpack(one, huge, bits))):
        try:
            call()
        except OverflowError as e:
            limit = (M - 1) // bits
            assert str(n) in str(e) and str(limit) in str(e), (name, bits, str(e))
            print(name, bits, "OverflowError")
        else:
            print(name, bits, "accepted")
"""


@needs_native
def test_native_rejects_code_counts_whose_packed_size_wraps(tmp_path):
    import subprocess

    proc = subprocess.run([sys.executable, "-c", _PACKED_SIZE_WRAP_SCRIPT], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{proc.stdout}{proc.stderr}"
    lines = proc.stdout.splitlines()
    assert len(lines) == 4 and all(line.endswith("OverflowError") for line in lines), proc.stdout


@needs_native
def test_native_group_layout_still_accepts_valid_calls():
    from edgesdk import _native

    x = np.arange(12, dtype=np.float32)
    s, z = np.full(3, 0.5, np.float32), np.zeros(3, np.int32)
    codes = np.zeros(12, np.uint8)
    _native.quantize(x, codes, s, z, 8, False, 2)  # [2][3][2]
    empty = np.zeros(0, np.float32)
    _native.quantize(empty, np.zeros(0, np.uint8), s, z, 8, False, 7)  # no runs at all


@needs_native
def test_zero_points_take_any_4_byte_signed_integer_buffer():
    # numpy reports int32 as 'l' where C's long is 4 bytes (32-bit Pi OS): the binding
    # checks the item size and signedness, not the letter. Here: '<i' from ctypes (a byte
    # order stated), 'i' from numpy; an 8-byte integer is refused with both facts named.
    import ctypes

    from edgesdk import _native

    x = np.linspace(-1, 1, 8, dtype=np.float32)
    codes = np.zeros(8, np.uint8)
    s = np.ones(1, np.float32)
    for z in (np.zeros(1, np.int32), (ctypes.c_int32 * 1)()):
        assert memoryview(z).format in ("i", "<i", "l", "<l")
        _native.quantize(x, codes, s, z, 8, False, 8)
    with pytest.raises(TypeError, match=r"any 4-byte signed integer.*got '.'.*8-byte items"):
        _native.quantize(x, codes, s, np.zeros(1, np.int64), 8, False, 8)


# ------------------------------------------------------------------ sparse packing

DENSITIES = (0.0, 0.5, 0.9, 1.0)  # fraction of zero codes


def codes_with_zeros(n: int, bits: int, zero_fraction: float, seed: int) -> tuple[np.ndarray, int]:
    """Random codes at `bits`, about `zero_fraction` of them the zero code (returned)."""
    rng = np.random.default_rng(seed)
    zero = int(rng.integers(0, 1 << bits))
    codes = rng.integers(0, 1 << bits, n).astype(np.uint8)
    codes[codes == zero] = (zero + 1) % (1 << bits)  # 0.0: no zero codes at all
    codes[rng.random(n) < zero_fraction] = zero
    return codes, zero


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 129, 2047, 2048, 2049,
                               4099, 10007])
@pytest.mark.parametrize("bits", BITS)
def test_sparse_pack_unpack_parity(native, ref, n, bits):
    for density in DENSITIES:
        codes, zero = codes_with_zeros(n, bits, density, seed=n * 7 + bits)
        got, want = native.sparse_pack(codes, zero, bits), ref.sparse_pack(codes, zero, bits)
        assert same_bits(got, want), f"n={n} bits={bits} zeros={density}"
        nb, k = (n + 7) // 8, int(np.count_nonzero(codes != zero))
        assert want.size == nb + (k * bits + 7) // 8
        if density == 1.0:
            assert k == 0 and not want.any()
        assert native.popcount(want[:nb]) == ref.popcount(want[:nb]) == k
        for kernels in (native, ref):
            assert same_bits(kernels.sparse_unpack(want, n, zero, bits), codes)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantize_sparse_parity(native, ref, bits, scheme):
    rng = np.random.default_rng(bits)
    for density in DENSITIES:
        for shape in [(5, 7, 3), (16, 14, 14), (3, 1, 2049)]:
            x = np.maximum(rng.standard_normal(shape), 0) * (rng.random(shape) >= density)
            if density == 0.0:
                x = np.abs(rng.standard_normal(shape)) + 1.0
            x = x.astype(np.float32)
            axes = [None, 0, 1, 2] if scheme == "symmetric" else [None]
            for axis in axes:
                got = native.quantize_sparse(x, bits, scheme, axis)
                want = ref.quantize_sparse(x, bits, scheme, axis)
                for name, g, w in zip(("stream", "scales", "zero_points"), got, want):
                    assert same_bits(g, w), f"{name}: {shape} axis={axis} zeros={density}"
                packed = ref.quantize_pack(x, bits, scheme, axis)[0]
                codes = ref.unpack(packed, bits, x.size)
                assert same_bits(ref.sparse_pack(codes, int(want[2][0]), bits), want[0])


def test_quantize_sparse_refuses_zero_points_per_channel(native, ref):
    x = np.stack([np.linspace(-1, 1, 8), np.linspace(0, 3, 8)]).astype(np.float32)
    for kernels in (native, ref):
        with pytest.raises(ValueError, match="one zero point"):
            kernels.quantize_sparse(x, 8, "affine", 0)
        kernels.quantize_sparse(x, 8, "affine", None)  # one group: fine


@pytest.mark.parametrize("bits", BITS)
def test_sparse_unpack_refuses_inconsistent_streams(native, ref, bits):
    """Both backends check the stream before expanding it (the codec does so first, with
    CodecError): the C kernel must never read past the buffer."""
    codes, zero = codes_with_zeros(1001, bits, 0.5, seed=bits)
    good = ref.sparse_pack(codes, zero, bits)
    nb = (1001 + 7) // 8
    padded = good.copy()
    padded[nb - 1] |= 0x80  # 1001 codes use 1 bit of the last byte
    for kernels in (native, ref):
        with pytest.raises(ValueError, match="bytes, its bitmap marks"):
            kernels.sparse_unpack(good[:-1], 1001, zero, bits)
        with pytest.raises(ValueError, match="bytes, its bitmap marks"):
            kernels.sparse_unpack(np.concatenate([good, [0]]).astype(np.uint8), 1001, zero, bits)
        with pytest.raises(ValueError, match="shorter than its 126-byte bitmap"):
            kernels.sparse_unpack(good[:100], 1001, zero, bits)
        with pytest.raises(ValueError, match="padding bits"):
            kernels.sparse_unpack(padded, 1001, zero, bits)


@needs_native
@given(
    codes=hnp.arrays(np.uint8, st.integers(0, 300), elements=st.integers(0, 3)),
    bits=st.sampled_from(BITS),
)
def test_sparse_random_codes(codes, bits):
    from edgesdk.codec import _native_kernels as native
    from edgesdk.codec import _numpy_kernels as ref

    zero = 1  # codes 0..3 are valid at every width; many equal the zero code
    want = ref.sparse_pack(codes, zero, bits)
    for isa in native.available_isas():
        native.set_isa(isa)
        assert same_bits(native.sparse_pack(codes, zero, bits), want)
        assert same_bits(native.sparse_unpack(want, codes.size, zero, bits), codes)
    native.set_isa(native.available_isas()[0])


def test_sparse_tables_header_is_generated():
    """native/sparse_tables.h is what native/gen_sparse_tables.py writes."""
    import subprocess
    from pathlib import Path

    gen = Path(__file__).resolve().parents[1] / "native" / "gen_sparse_tables.py"
    if not gen.is_file():
        pytest.skip("no native/ sources in this install")
    proc = subprocess.run([sys.executable, str(gen), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
