"""Shared by both kernel backends: the grouped view of a tensor and the parameter rules.

A tensor quantized per channel along `axis` is viewed as [outer][groups][inner]; per-tensor
quantization is groups = 1. The parameter rules here are float32 arithmetic that mirrors
native/dispatch.c operation by operation, so both backends produce identical scales.
"""

from __future__ import annotations

import math

import numpy as np

SCHEMES = ("symmetric", "affine")
PACK_BITS = (8, 4, 2)
# Mirrors ES_MIN_SCALE in native/kernels.h: smaller ranges encode as zeros with scale 1.
MIN_SCALE = np.float32(2.0**-100)
_MAGIC = np.float32(12582912.0)  # 1.5 * 2**23, see kernels_impl.c


def layout(shape: tuple[int, ...], axis: int | None) -> tuple[int, int, int]:
    """(outer, groups, inner) of a C-contiguous tensor quantized along `axis` (None: whole)."""
    n = math.prod(shape)
    if axis is None:
        return 1, 1, n
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1 :])


def packed_size(n: int, bits: int) -> int:
    """Bytes that n codes occupy at `bits` per code (8, 4 or 2)."""
    return (n * bits + 7) // 8


def bitmap_size(n: int) -> int:
    """Bytes of the bitmap of a sparse stream of n codes: one bit per code."""
    return (n + 7) // 8


def sparse_bound(n: int, bits: int) -> int:
    """The largest sparse stream of n codes at `bits`: the bitmap and every code."""
    return bitmap_size(n) + packed_size(n, bits)


def code_range(bits: int, scheme: str) -> tuple[int, int]:
    """Smallest and largest code of a scheme: symmetric leaves code 0 unused."""
    return (1 if scheme == "symmetric" else 0), (1 << bits) - 1


def _fit_scale(scale: np.ndarray, reach: int) -> np.ndarray:
    """Mirrors fit_scale in native/dispatch.c: tiny scales become 1; a scale whose widest code
    would decode beyond float32 max steps one ulp down."""
    scale = np.where(scale >= MIN_SCALE, scale, np.float32(1.0)).astype(np.float32)
    f32_max = float(np.finfo(np.float32).max)
    too_wide = (scale <= f32_max) & (reach * scale.astype(np.float64) > f32_max)
    return np.where(too_wide, np.nextafter(scale, np.float32(0.0)), scale).astype(np.float32)


def params_symmetric(absmax: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(scales, zero_points) of symmetric grids covering [-absmax, absmax], per element."""
    half = 1 << (bits - 1)
    scale = _fit_scale(np.asarray(absmax, dtype=np.float32) / np.float32(half - 1), half - 1)
    return scale, np.full(scale.shape, half, dtype=np.int32)


def params_affine(lo: np.ndarray, hi: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(scales, zero_points) of affine grids covering [min(lo, 0), max(hi, 0)], per element.

    Raises OverflowError if a range does not fit in float32 (e.g. [-3e38, 3e38]).
    """
    top = (1 << bits) - 1
    lo32 = np.minimum(np.asarray(lo, dtype=np.float32), np.float32(0.0))
    hi32 = np.maximum(np.asarray(hi, dtype=np.float32), np.float32(0.0))
    with np.errstate(over="ignore"):
        scale = (hi32 - lo32) / np.float32(top)
    if not np.all(scale <= np.finfo(np.float32).max):
        raise OverflowError("value range exceeds float32")
    scale = _fit_scale(scale, top)
    zp = ((-lo32 * (np.float32(1.0) / scale)) + _MAGIC) - _MAGIC
    return scale, np.clip(zp, 0, top).astype(np.int32)
