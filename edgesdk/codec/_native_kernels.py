"""The codec kernels through the C extension edgesdk._native.

Same signatures as :mod:`edgesdk.codec._numpy_kernels`. The extension fills buffers that
this module allocates with numpy, so the C build needs no numpy headers. Importing this
module raises ImportError when the extension is missing.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _native  # type: ignore[attr-defined]
from . import _numpy_kernels
from ._layout import layout, packed_size, sparse_bound

NAME = "native"


def isa() -> str:
    """The instruction set of the kernel build in use, e.g. "avx512vbmi2", "avx2", "neon"."""
    return _native.get_isa()


def available_isas() -> tuple[str, ...]:
    """Kernel builds in this extension that this CPU runs, best first."""
    return tuple(_native.available_isas())


def set_isa(name: str) -> None:
    """Use another kernel build (benchmarks, tests). Raises ValueError if unavailable."""
    _native.set_isa(name)


def absmax(x: np.ndarray) -> float:
    return _native.absmax(x.reshape(-1))


def minmax(x: np.ndarray) -> tuple[float, float]:
    return _native.minmax(x.reshape(-1))


def _params_arrays(scales, zero_points) -> tuple[np.ndarray, np.ndarray]:
    s = np.ascontiguousarray(scales, dtype=np.float32).reshape(-1)
    z = np.ascontiguousarray(zero_points, dtype=np.int32).reshape(-1)
    return s, z


def quantize(
    x: np.ndarray, scales: np.ndarray, zero_points: np.ndarray, bits: int, scheme: str,
    axis: int | None = None,
) -> np.ndarray:
    _, _, inner = layout(x.shape, axis)
    s, z = _params_arrays(scales, zero_points)
    codes = np.empty(x.size, dtype=np.uint8)
    if x.size:
        _native.quantize(x.reshape(-1), codes, s, z, bits, scheme == "symmetric", inner)
    return codes


def dequantize(
    codes: np.ndarray, scales: np.ndarray, zero_points: np.ndarray, shape: tuple[int, ...],
    axis: int | None = None,
) -> np.ndarray:
    _, _, inner = layout(shape, axis)
    s, z = _params_arrays(scales, zero_points)
    out = np.empty(shape, dtype=np.float32)
    if out.size:
        _native.dequantize(codes.reshape(-1), out.reshape(-1), s, z, inner)
    return out


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    out = np.empty(packed_size(codes.size, bits), dtype=np.uint8)
    _native.pack(codes.reshape(-1), out, bits)
    return out


def unpack(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    codes = np.empty(n, dtype=np.uint8)
    _native.unpack(packed.reshape(-1)[: packed_size(n, bits)], codes, bits)
    return codes


def quantize_pack(
    x: np.ndarray, bits: int, scheme: str, axis: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # The hot path of encode: kept lean, since on a 512x7x7 tensor the whole kernel takes
    # ~2 us and every numpy call here costs ~0.1-0.2 us. The binding reads N-d buffers.
    n = x.size
    if n == 0:
        return _numpy_kernels.quantize_pack(x, bits, scheme, axis)
    groups, inner = (1, n) if axis is None else layout(x.shape, axis)[1:]
    out = np.empty((n * bits + 7) >> 3, dtype=np.uint8)
    scales = np.empty(groups, dtype=np.float32)
    zps = np.empty(groups, dtype=np.int32)
    _native.quantize_pack(x, out, scales, zps, bits, scheme == "symmetric", inner)
    return out, scales, zps


def unpack_dequantize(
    packed: np.ndarray, shape: tuple[int, ...], bits: int, scales: np.ndarray,
    zero_points: np.ndarray, axis: int | None = None,
) -> np.ndarray:
    out = np.empty(shape, dtype=np.float32)
    if out.size == 0:
        return out
    _, _, inner = layout(shape, axis)
    s, z = _params_arrays(scales, zero_points)
    n = math.prod(shape)
    _native.unpack_dequantize(packed.reshape(-1)[: packed_size(n, bits)], out.reshape(-1), s, z,
                              bits, inner)
    return out


def quantize_sparse(
    x: np.ndarray, bits: int, scheme: str, axis: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fused find-parameters + quantize + sparse pack: (stream, scales, zero_points).
    ValueError if the groups get different zero points (affine per channel)."""
    n = x.size
    if n == 0:
        return _numpy_kernels.quantize_sparse(x, bits, scheme, axis)
    groups, inner = (1, n) if axis is None else layout(x.shape, axis)[1:]
    out = np.empty(sparse_bound(n, bits), dtype=np.uint8)
    scales = np.empty(groups, dtype=np.float32)
    zps = np.empty(groups, dtype=np.int32)
    used = _native.quantize_sparse(x, out, scales, zps, bits, scheme == "symmetric", inner)
    return out[:used], scales, zps


def sparse_pack(codes: np.ndarray, zero: int, bits: int) -> np.ndarray:
    codes = codes.reshape(-1)
    out = np.empty(sparse_bound(codes.size, bits), dtype=np.uint8)
    return out[: _native.sparse_pack(codes, out, int(zero), bits)]


def sparse_unpack(stream: np.ndarray, n: int, zero: int, bits: int) -> np.ndarray:
    codes = np.empty(n, dtype=np.uint8)
    _native.sparse_unpack(stream.reshape(-1), codes, int(zero), bits)
    return codes


def popcount(data: np.ndarray) -> int:
    return _native.popcount(data.reshape(-1))
