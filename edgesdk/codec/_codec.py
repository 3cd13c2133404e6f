"""encode/decode: an activation tensor to two wire frames and back.

    frames = encode(x, bits=4)          # [msgpack header, payload]
    y = decode(frames)                  # float array of x's shape and dtype

The payload is its own frame so that a transport can send it without copying. decode treats
frames as hostile: every field is validated before anything is allocated, and every failure
is a CodecError.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import CodecError
from . import _zstd
from ._backend import load_kernels
from ._header import (
    DTYPES,
    FLOAT_BITS,
    MAX_GROUPS,
    MAX_NDIM,
    Header,
    pack_header,
    unpack_header,
)
from ._layout import PACK_BITS, SCHEMES

kernels = load_kernels()
backend: str = kernels.NAME

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
_F16_MAX = float(np.finfo(np.float16).max)
_COMPRESS = ("zstd", "none")


def _check_args(x: np.ndarray, bits, scheme, compress, level, axis) -> int | None:
    if bits not in PACK_BITS + FLOAT_BITS:
        raise CodecError(f"bits is {bits!r}, expected one of {list(PACK_BITS + FLOAT_BITS)}")
    if scheme not in SCHEMES:
        raise CodecError(f"scheme is {scheme!r}, expected one of {list(SCHEMES)}")
    if compress not in _COMPRESS:
        raise CodecError(f"compress is {compress!r}, expected one of {list(_COMPRESS)}")
    if compress == "zstd" and level not in _zstd.LEVELS:
        raise CodecError(f"level is {level!r}, expected an int in [-7, -1] or [1, 19]")
    if x.dtype.name not in DTYPES:
        raise CodecError(f"array dtype is {x.dtype}, expected one of {list(DTYPES)}")
    if x.ndim > MAX_NDIM:
        raise CodecError(f"array has {x.ndim} dimensions, limit {MAX_NDIM}")
    if axis is None:
        return None
    if bits in FLOAT_BITS:
        raise CodecError(f"axis is {axis!r}, but bits={bits} has no scales to give per channel")
    if type(axis) is not int or not -x.ndim <= axis < x.ndim:
        raise CodecError(f"axis is {axis!r}, array has {x.ndim} dimensions")
    axis %= x.ndim
    if x.shape[axis] > MAX_GROUPS:
        raise CodecError(f"axis {axis} has {x.shape[axis]} channels, limit {MAX_GROUPS}")
    return axis


def _non_finite_error(x: np.ndarray, what: str = "array",
                      why: str = "NaN and Inf cannot be encoded") -> CodecError:
    index = int(np.flatnonzero(~np.isfinite(x))[0])
    return CodecError(f"{what} has non-finite value {x.reshape(-1)[index]} at flat index "
                      f"{index}; {why}")


def finite_as(arr: np.ndarray, dtype: str, what: str) -> np.ndarray:
    """`arr` cast to `dtype`, refusing a value that does not fit it (float32 beyond
    float16's range becomes inf there, and the model would compute on it)."""
    with np.errstate(over="ignore"):  # an overflow is what the check below reports
        out = arr.astype(dtype, copy=False)
    if out.dtype != arr.dtype and out.dtype.kind == "f" and not np.all(np.isfinite(out)):
        raise _non_finite_error(out, f"{what} as {dtype}", "beyond that type's range")
    return out


def _float_payload(x32: np.ndarray, bits: int) -> np.ndarray:
    amax = kernels.absmax(x32)
    if not np.isfinite(amax):
        raise _non_finite_error(x32)
    if bits == 16:
        if amax > _F16_MAX:
            raise CodecError(f"array has |value| {amax:g}, float16 (bits=16) holds at most "
                             f"{_F16_MAX:g}")
        return x32.astype("<f2")
    return x32 if np.little_endian else x32.astype("<f4")  # zero-copy: shares `array`


def encode(
    array: np.ndarray,
    bits: int = 8,
    scheme: str = "symmetric",
    compress: str = "zstd",
    level: int = 1,
    axis: int | None = None,
) -> list:
    """Encode a float tensor as [header, payload] frames.

    bits: 8, 4 or 2 quantize (`scheme` "symmetric" or "affine", one scale per tensor or,
    with `axis`, per index along that axis); 16 sends float16; 32 sends float32 unchanged.
    compress="zstd" compresses the payload when that shrinks it at least 1.1 times.
    At bits=32 the payload frame may share memory with `array` (zero-copy).
    NaN or Inf raise CodecError, as do values beyond float16's range at bits=16.
    """
    x = np.asarray(array)
    axis = _check_args(x, bits, scheme, compress, level, axis)
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    if bits in FLOAT_BITS:
        payload = _float_payload(x32, bits)
        scales = np.zeros(0, np.float32)
        zps = np.zeros(0, np.int32)
        scheme = "float"
    else:
        try:
            payload, scales, zps = kernels.quantize_pack(x32, bits, scheme, axis)
        except ValueError:
            raise _non_finite_error(x32) from None
        except OverflowError:
            raise CodecError(
                f"array range [{float(x32.min()):g}, {float(x32.max()):g}] overflows float32 "
                "in scheme 'affine'; use scheme='symmetric'"
            ) from None
    raw = memoryview(payload.reshape(-1).view(np.uint8))
    codec, wire = _zstd.compress_if_pays(raw, level) if compress == "zstd" else ("none", raw)
    header = Header(x.dtype.name, x.shape, bits, scheme, axis, scales, zps, codec, len(raw))
    return [pack_header(header), wire]


def _as_buffer(frame, what: str) -> memoryview:
    try:
        view = memoryview(frame)
    except TypeError:
        raise CodecError(f"{what} frame is {type(frame).__name__}, expected bytes-like") from None
    if view.format == "B" and view.ndim == 1:
        return view
    try:
        return view.cast("B")
    except TypeError as exc:  # non-contiguous, or zeros in the shape
        raise CodecError(f"{what} frame cannot be read as bytes: {exc}") from None


def decode(frames: Sequence, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Decode [header, payload] frames into a new array; the inverse of encode.

    max_bytes bounds the decoded array and therefore every allocation decode makes.
    Malformed, truncated, oversized or inconsistent frames raise CodecError.
    """
    if isinstance(frames, (bytes, bytearray, memoryview, str)) or not isinstance(
        frames, Sequence
    ):
        raise CodecError(f"frames is {type(frames).__name__}, expected a [header, payload] list")
    if len(frames) != 2:
        raise CodecError(f"got {len(frames)} frames, expected 2 (header, payload)")
    header = unpack_header(_as_buffer(frames[0], "header"), max_bytes)
    payload = _as_buffer(frames[1], "payload")
    if header.codec == "zstd":
        raw = memoryview(_zstd.decompress_exact(payload, header.raw_len))
    elif len(payload) != header.raw_len:
        raise CodecError(f"payload is {len(payload)} bytes, header raw_len is {header.raw_len}")
    else:
        raw = payload
    arr = _dequantize(header, np.frombuffer(raw, dtype=np.uint8))
    if header.bits in FLOAT_BITS and not np.isfinite(kernels.absmax(arr)):
        # float16/32 payloads carry raw bit patterns: NaN and Inf would reach the model
        # (quantized ones cannot: the scale checks keep every code finite in float32)
        raise _non_finite_error(arr, f"payload (bits={header.bits})",
                                "NaN and Inf are not valid tensor values")
    return finite_as(arr, header.dtype, "payload")


def _dequantize(h: Header, raw: np.ndarray) -> np.ndarray:
    if h.bits == 32:
        return raw.view("<f4").astype(np.float32).reshape(h.shape)
    if h.bits == 16:
        return raw.view("<f2").astype(np.float32).reshape(h.shape)
    return kernels.unpack_dequantize(raw, h.shape, h.bits, h.scales, h.zero_points, h.axis)

