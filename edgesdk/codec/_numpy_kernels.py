"""The codec kernels in pure numpy: the fallback for edgesdk._native.

Same signatures as :mod:`edgesdk.codec._native_kernels` and bit-identical results; the
test-suite checks both on random and adversarial inputs. See native/kernels.h for the code
model and the packed layout.
"""

from __future__ import annotations

import numpy as np

from ._layout import (
    _MAGIC,
    bitmap_size,
    code_range,
    layout,
    packed_size,
    params_affine,
    params_symmetric,
)

NAME = "numpy"


def absmax(x: np.ndarray) -> float:
    """max |x| of a float32 array; non-finite iff some element is non-finite."""
    return float(np.max(np.abs(x), initial=np.float32(0.0)))


def minmax(x: np.ndarray) -> tuple[float, float]:
    """(min, max) of a non-empty float32 array; non-finite iff some element is."""
    if x.size == 0:
        raise ValueError("minmax of an empty buffer")
    return float(np.min(x)), float(np.max(x))


def quantize(
    x: np.ndarray, scales: np.ndarray, zero_points: np.ndarray, bits: int, scheme: str,
    axis: int | None = None,
) -> np.ndarray:
    """uint8 codes of finite float32 `x` with per-group (scales, zero_points)."""
    outer, groups, inner = layout(x.shape, axis)
    x3 = x.reshape(outer, groups, inner)
    scales = np.asarray(scales, dtype=np.float32).reshape(1, groups, 1)
    zps = np.asarray(zero_points, dtype=np.int32).reshape(1, groups, 1)
    cmin, cmax = code_range(bits, scheme)
    v = x3 * (np.float32(1.0) / scales)
    v = np.clip(v, (cmin - zps).astype(np.float32), (cmax - zps).astype(np.float32))
    v = (v + _MAGIC) - _MAGIC  # rint, ties to even; the same two operations as the C code
    return (v.astype(np.int32) + zps).astype(np.uint8).reshape(-1)


def dequantize(
    codes: np.ndarray, scales: np.ndarray, zero_points: np.ndarray, shape: tuple[int, ...],
    axis: int | None = None,
) -> np.ndarray:
    """float32 array of `shape`: (code - zero_point) * scale per group."""
    outer, groups, inner = layout(shape, axis)
    c3 = codes.reshape(outer, groups, inner).astype(np.int32)
    zps = np.asarray(zero_points, dtype=np.int32).reshape(1, groups, 1)
    scales = np.asarray(scales, dtype=np.float32).reshape(1, groups, 1)
    return ((c3 - zps).astype(np.float32) * scales).reshape(shape)


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack uint8 codes at 8, 4 or 2 bits (layout in native/kernels.h)."""
    if bits == 8:
        return codes.copy()
    per_byte = 8 // bits
    n = codes.size
    padded = np.zeros(packed_size(n, bits) * per_byte, dtype=np.uint8)
    padded[:n] = codes
    lanes = padded.reshape(-1, per_byte) & np.uint8((1 << bits) - 1)
    out = lanes[:, 0].copy()
    for k in range(1, per_byte):
        out |= lanes[:, k] << np.uint8(bits * k)
    return out


def unpack(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """n uint8 codes from bytes packed at 8, 4 or 2 bits."""
    if bits == 8:
        return packed[:n].copy()
    per_byte = 8 // bits
    shifts = (np.arange(per_byte, dtype=np.uint8) * np.uint8(bits)).reshape(1, -1)
    lanes = (packed.reshape(-1, 1) >> shifts) & np.uint8((1 << bits) - 1)
    return lanes.reshape(-1)[:n]


def _find_params(
    x: np.ndarray, bits: int, scheme: str, axis: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-group (scales, zero_points) of float32 `x`.

    Raises ValueError if `x` has a non-finite value, OverflowError if a range exceeds float32.
    """
    outer, groups, inner = layout(x.shape, axis)
    x3 = x.reshape(outer, groups, inner)
    if scheme == "symmetric":
        amax = np.max(np.abs(x3), axis=(0, 2), initial=np.float32(0.0))
        if not np.all(np.isfinite(amax)):
            raise ValueError("x contains a non-finite value")
        return params_symmetric(amax, bits)
    lo = np.min(x3, axis=(0, 2), initial=np.float32(0.0))
    hi = np.max(x3, axis=(0, 2), initial=np.float32(0.0))
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise ValueError("x contains a non-finite value")
    return params_affine(lo, hi, bits)


def quantize_pack(
    x: np.ndarray, bits: int, scheme: str, axis: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fused find-parameters + quantize + pack: (packed bytes, scales, zero_points)."""
    scales, zps = _find_params(x, bits, scheme, axis)
    if x.size == 0:
        return np.zeros(0, dtype=np.uint8), scales, zps
    return pack(quantize(x, scales, zps, bits, scheme, axis), bits), scales, zps


def unpack_dequantize(
    packed: np.ndarray, shape: tuple[int, ...], bits: int, scales: np.ndarray,
    zero_points: np.ndarray, axis: int | None = None,
) -> np.ndarray:
    """Inverse of quantize_pack: float32 array of `shape`."""
    n = int(np.prod(shape, dtype=np.int64))
    return dequantize(unpack(packed, bits, n), scales, zero_points, shape, axis)


# 1 bits of every byte value
_POPCOUNT = np.array([bin(v).count("1") for v in range(256)], dtype=np.uint8)


def popcount(data: np.ndarray) -> int:
    """The number of 1 bits in uint8 `data`."""
    return int(_POPCOUNT[data.reshape(-1)].sum(dtype=np.int64))


def sparse_pack(codes: np.ndarray, zero: int, bits: int) -> np.ndarray:
    """The sparse stream of uint8 codes (layout in native/kernels.h): the bitmap of the codes
    that are not `zero` (little-endian bit order), then those codes packed at `bits`."""
    codes = codes.reshape(-1)
    keep = codes != np.uint8(zero)
    return np.concatenate([np.packbits(keep, bitorder="little"), pack(codes[keep], bits)])


def sparse_unpack(stream: np.ndarray, n: int, zero: int, bits: int) -> np.ndarray:
    """n uint8 codes from a sparse stream. ValueError unless the stream is whole: padding
    bits 0, exactly the bitmap and the codes it marks (the same checks as the C binding)."""
    stream = stream.reshape(-1)
    nb = bitmap_size(n)
    if stream.size < nb:
        raise ValueError(f"sparse stream of {n} codes is {stream.size} bytes, shorter than "
                         f"its {nb}-byte bitmap")
    if n % 8 and int(stream[nb - 1]) >> (n % 8):
        raise ValueError(f"sparse bitmap of {n} codes has padding bits set in its last byte "
                         f"(0x{int(stream[nb - 1]):02x})")
    keep = np.unpackbits(stream[:nb], count=n, bitorder="little").view(bool)
    k = int(np.count_nonzero(keep))
    if stream.size != nb + packed_size(k, bits):
        raise ValueError(f"sparse stream is {stream.size} bytes, its bitmap marks {k} of {n} "
                         f"codes non-zero: {nb} + {packed_size(k, bits)} bytes at {bits} bits")
    codes = np.full(n, zero, dtype=np.uint8)
    codes[keep] = unpack(stream[nb:], bits, k)
    return codes


def quantize_sparse(
    x: np.ndarray, bits: int, scheme: str, axis: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fused find-parameters + quantize + sparse pack: (stream, scales, zero_points).
    ValueError if the groups get different zero points (affine per channel)."""
    scales, zps = _find_params(x, bits, scheme, axis)
    if zps.size > 1 and np.any(zps != zps.flat[0]):
        raise ValueError("sparse packing needs one zero point for every group, the groups "
                         "got different ones")
    if x.size == 0:
        return np.zeros(0, dtype=np.uint8), scales, zps
    codes = quantize(x, scales, zps, bits, scheme, axis)
    return sparse_pack(codes, int(zps.flat[0]), bits), scales, zps
