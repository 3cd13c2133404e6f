"""The msgpack header frame: building it, and parsing it as hostile input.

Format version 1 is a msgpack map with exactly these keys (docs/wire-format.md):

    v            1
    dtype        "float16" | "float32" | "float64": dtype of the decoded array
    shape        [d0, d1, ...], at most MAX_NDIM non-negative ints
    bits         2 | 4 | 8 (quantized) | 16 (float16) | 32 (raw float32)
    scheme       "symmetric" | "affine" | "float" (bits 16 and 32)
    axis         nil (one scale) | int (one scale per index of that axis)
    scales       bin: little-endian float32, one per group (empty for "float")
    zero_points  bin: uint8, one per group (empty for "float")
    codec        "none" | "zstd" | "sparse" | "sparse+zstd": the payload's entropy stages
    raw_len      int: payload length before zstd (packed codes, or the sparse stream)

Every check raises CodecError naming the field, the value and the limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import msgpack
import numpy as np

from ..errors import CodecError
from ._layout import PACK_BITS, SCHEMES, bitmap_size, code_range, layout, packed_size

FORMAT_VERSION = 1
MAX_NDIM = 8
MAX_GROUPS = 65536
MAX_HEADER_BYTES = 16 + MAX_GROUPS * 5 + 512  # scales and zero points dominate
DTYPES = ("float16", "float32", "float64")
CODECS = ("zstd", "none", "sparse", "sparse+zstd")
SPARSE_CODECS = ("sparse", "sparse+zstd")
FLOAT_BITS = (16, 32)
_KEYS = frozenset(
    ("v", "dtype", "shape", "bits", "scheme", "axis", "scales", "zero_points", "codec", "raw_len")
)
_F32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Header:
    """A validated header. `scales` is float32[groups], `zero_points` int32[groups]."""

    dtype: str
    shape: tuple[int, ...]
    bits: int
    scheme: str
    axis: int | None
    scales: np.ndarray
    zero_points: np.ndarray
    codec: str
    raw_len: int


def payload_size(shape: tuple[int, ...], bits: int) -> int:
    """Uncompressed payload bytes of a tensor of `shape` at `bits`."""
    n = math.prod(shape)
    return packed_size(n, bits) if bits in PACK_BITS else n * bits // 8


def pack_header(h: Header) -> bytes:
    return msgpack.packb(
        {
            "v": FORMAT_VERSION,
            "dtype": h.dtype,
            "shape": list(h.shape),
            "bits": h.bits,
            "scheme": h.scheme,
            "axis": h.axis,
            "scales": h.scales.astype("<f4").tobytes(),
            "zero_points": h.zero_points.astype(np.uint8).tobytes(),
            "codec": h.codec,
            "raw_len": h.raw_len,
        },
        use_bin_type=True,
    )


def _no_ext(code: int, data: bytes) -> None:
    raise CodecError(f"header: msgpack ext type {code} is not allowed")


def _unpack_map(buf: memoryview) -> dict:
    if len(buf) > MAX_HEADER_BYTES:
        raise CodecError(f"header is {len(buf)} bytes, limit {MAX_HEADER_BYTES}")
    try:
        obj = msgpack.unpackb(
            buf,
            raw=False,
            use_list=True,
            strict_map_key=True,
            ext_hook=_no_ext,
            max_bin_len=MAX_HEADER_BYTES,
            max_str_len=64,
            max_array_len=MAX_NDIM,
            max_map_len=4 * len(_KEYS),  # room to name unexpected keys, still bounded
            max_ext_len=0,
        )
    except CodecError:
        raise
    except Exception as exc:  # msgpack raises many types (ExtraData, FormatError, ValueError...)
        kind = type(exc).__name__
        raise CodecError(f"header is not a valid msgpack map: {kind}: {exc}") from None
    if not isinstance(obj, dict):
        raise CodecError(f"header must be a msgpack map, got {type(obj).__name__}")
    return obj


def _int(obj: dict, key: str, lo: int, hi: int) -> int:
    v = obj[key]
    if type(v) is not int or not lo <= v <= hi:
        raise CodecError(f"header field {key!r} is {v!r}, expected an int in [{lo}, {hi}]")
    return v


def _choice(obj: dict, key: str, allowed: tuple) -> object:
    v = obj[key]
    if type(v) not in (int, str) or v not in allowed:
        raise CodecError(f"header field {key!r} is {v!r}, expected one of {list(allowed)}")
    return v


def unpack_header(buf: memoryview, max_bytes: int) -> Header:
    """Parse and validate a header frame; the decoded array may take at most `max_bytes`."""
    obj = _unpack_map(buf)
    if set(obj) != _KEYS:
        # keys of mixed types (str and bytes in a hostile header) do not sort together
        missing = sorted(_KEYS - set(obj), key=repr)
        extra = sorted(set(obj) - _KEYS, key=repr)
        raise CodecError(f"header keys: missing {missing}, unexpected {extra}")
    if obj["v"] != FORMAT_VERSION or type(obj["v"]) is not int:
        raise CodecError(f"header field 'v' is {obj['v']!r}, this build reads version "
                         f"{FORMAT_VERSION}")
    dtype = _choice(obj, "dtype", DTYPES)
    shape = obj["shape"]
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise CodecError(f"header field 'shape' is {shape!r}, expected a list of at most "
                         f"{MAX_NDIM} non-negative ints")
    shape = tuple(shape)
    decoded = math.prod(shape) * np.dtype(dtype).itemsize
    if decoded > max_bytes:
        raise CodecError(f"header shape {list(shape)} decodes to {decoded} bytes of {dtype}, "
                         f"limit {max_bytes}")
    bits = _choice(obj, "bits", PACK_BITS + FLOAT_BITS)
    scheme = _choice(obj, "scheme", ("float",) if bits in FLOAT_BITS else SCHEMES)
    axis = obj["axis"]
    if axis is not None:
        axis = _int(obj, "axis", 0, len(shape) - 1)
        if bits in FLOAT_BITS:
            raise CodecError(f"header field 'axis' is {axis}, but bits={bits} has no scales")
    codec = _choice(obj, "codec", CODECS)
    raw_len = _int(obj, "raw_len", 0, max_bytes)
    if codec in SPARSE_CODECS:
        _check_sparse(codec, raw_len, shape, bits, scheme, axis)
    elif raw_len != payload_size(shape, bits):
        raise CodecError(f"header field 'raw_len' is {raw_len}, but shape {list(shape)} at "
                         f"{bits} bits takes {payload_size(shape, bits)} bytes")
    scales, zero_points = _params(obj, shape, bits, scheme, axis)
    return Header(dtype, shape, bits, scheme, axis, scales, zero_points, codec, raw_len)


def _check_sparse(codec: str, raw_len: int, shape, bits, scheme, axis) -> None:
    """A sparse stream holds quantized codes with one zero code for the whole tensor, and
    is at least its bitmap and at most the bitmap and every code (the decoder checks the
    exact size against the bitmap)."""
    if bits not in PACK_BITS:
        raise CodecError(f"header field 'codec' is {codec!r}, but bits={bits} has no codes "
                         "to pack sparsely")
    if scheme == "affine" and axis is not None:
        raise CodecError(f"header field 'codec' is {codec!r}, but scheme 'affine' with axis "
                         f"{axis} has a zero point per channel; sparse needs one per tensor")
    n = math.prod(shape)
    lo, hi = bitmap_size(n), bitmap_size(n) + packed_size(n, bits)
    if not lo <= raw_len <= hi:
        raise CodecError(f"header field 'raw_len' is {raw_len}, but the sparse stream of shape "
                         f"{list(shape)} at {bits} bits takes {lo} to {hi} bytes")


def _params(obj: dict, shape, bits, scheme, axis) -> tuple[np.ndarray, np.ndarray]:
    groups = 0 if bits in FLOAT_BITS else layout(shape, axis)[1]
    raw_s, raw_z = obj["scales"], obj["zero_points"]
    for key, raw, width in (("scales", raw_s, 4), ("zero_points", raw_z, 1)):
        if not isinstance(raw, bytes) or len(raw) != groups * width:
            size = len(raw) if isinstance(raw, bytes) else type(raw).__name__
            raise CodecError(f"header field {key!r} is {size} bytes, expected {groups * width} "
                             f"({groups} groups)")
    scales = np.frombuffer(raw_s, dtype="<f4").astype(np.float32)
    zps = np.frombuffer(raw_z, dtype=np.uint8).astype(np.int32)
    if groups == 0:
        return scales, zps
    cmin, cmax = code_range(bits, scheme)
    if scheme == "symmetric" and np.any(zps != 1 << (bits - 1)):
        bad = int(zps[zps != 1 << (bits - 1)][0])
        raise CodecError(f"header field 'zero_points' has {bad}, symmetric {bits}-bit uses "
                         f"{1 << (bits - 1)}")
    if np.any(zps > cmax):
        raise CodecError(f"header field 'zero_points' has {int(zps.max())}, limit {cmax}")
    # Every decoded value must be finite: |code - zp| * scale <= float32 max.
    reach = np.maximum(zps - cmin, cmax - zps).astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        ok = np.isfinite(scales) & (scales > 0) & (reach * scales.astype(np.float64) <= _F32_MAX)
    if not np.all(ok):
        bad = float(scales[~ok][0])
        raise CodecError(f"header field 'scales' has {bad!r}, expected a positive float32 "
                         f"whose grid stays finite")
    return scales, zps
