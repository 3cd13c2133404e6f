"""encode/decode: an activation tensor to two wire frames and back.

    frames = encode(x, bits=4)          # [msgpack header, payload]
    y = decode(frames)                  # float array of x's shape and dtype
    encode(x, bits=8, compress="sparse")  # zero codes as a bitmap: ~memcpy speed, no zstd

The payload is its own frame so that a transport can send it without copying. decode treats
frames as hostile: every field is validated before anything is allocated, and every failure
is a CodecError.
"""

from __future__ import annotations

import functools
import math
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
    SPARSE_CODECS,
    Header,
    pack_header,
    unpack_header,
)
from ._layout import PACK_BITS, SCHEMES, bitmap_size, packed_size

kernels = load_kernels()
backend: str = kernels.NAME

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
_F16_MAX = float(np.finfo(np.float16).max)
# encode's entropy stages, cheapest first: sparse packing of the zero codes (a bitmap and the
# other codes, about memcpy speed), zstd (about 10x the quantize-and-pack pass), or both.
COMPRESS = ("none", "sparse", "zstd", "sparse+zstd")


def _check_args(x: np.ndarray, bits, scheme, compress, level, axis) -> int | None:
    if bits not in PACK_BITS + FLOAT_BITS:
        raise CodecError(f"bits is {bits!r}, expected one of {list(PACK_BITS + FLOAT_BITS)}")
    if scheme not in SCHEMES:
        raise CodecError(f"scheme is {scheme!r}, expected one of {list(SCHEMES)}")
    if compress not in COMPRESS:
        raise CodecError(f"compress is {compress!r}, expected one of {list(COMPRESS)}")
    if compress.endswith("zstd") and level not in _zstd.LEVELS:
        raise CodecError(f"level is {level!r}, expected an int in [-7, -1] or [1, 19]")
    if compress in SPARSE_CODECS and bits in FLOAT_BITS:
        raise CodecError(f"compress is {compress!r}, but bits={bits} has no codes to pack "
                         "sparsely; use bits 8, 4 or 2, or compress 'none' or 'zstd'")
    if compress in SPARSE_CODECS and scheme == "affine" and axis is not None:
        raise CodecError(f"compress is {compress!r}, but scheme 'affine' with axis={axis} "
                         "gives each channel its own zero point, and sparse packing needs one "
                         "per tensor; use scheme='symmetric' or axis=None")
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
        return to_float16(x32)
    return x32 if np.little_endian else x32.astype("<f4")  # zero-copy: shares `array`


_F16_MIN_NORMAL = np.float32(2.0 ** -14)
_F16_SUBNORMAL_STEP = np.float32(2.0 ** 24)  # 1 / the spacing of float16's subnormals
# Numpy converts float16 subnormals (values below 2^-14, as in a softmax over thousands
# of classes) one by one in software: to_float16 and from_float16 avoid that path.


def to_float16(x32: np.ndarray) -> np.ndarray:
    """x32 as little-endian float16, bit-exact with numpy's astype, and as fast when many
    values fall below float16's normal range: numpy converts each such value in software,
    ~25x slower (a 40x6625 softmax, ~all of it below 6.1e-5: 17 ms instead of 0.7). Those
    values are written directly as subnormal codes, round(|x| * 2^24) with x's sign (half
    to even, as the hardware rounds). That pass costs ~3 numpy passes: a strided sample
    decides whether it pays (above ~10 % subnormal results, measured on x86-64)."""
    flat = x32.reshape(-1)
    sample = flat[::61]
    if np.count_nonzero((np.abs(sample) < _F16_MIN_NORMAL) & (sample != 0)) * 10 <= sample.size:
        return x32.astype("<f2")  # few subnormal results: numpy's own pass
    magnitude = np.abs(flat)
    small = magnitude < _F16_MIN_NORMAL
    out = np.where(small, np.float32(0), flat).astype("<f2")
    codes = np.rint(magnitude[small] * _F16_SUBNORMAL_STEP).astype(np.uint16)  # <= 0x0400
    codes |= np.signbit(flat[small]).astype(np.uint16) << 15
    out.view("<u2")[small] = codes
    return out.reshape(x32.shape)


def from_float16(h: np.ndarray) -> np.ndarray:
    """float16 codes as float32, bit-exact with numpy's astype: a lookup in the table of
    all 65,536 codes (256 KB, made once), one gather pass whatever the values. Numpy's own
    conversion takes each subnormal through software, 5x slower (2.3 ms instead of 0.2 for
    the 40x6625 softmax), and is slower than the gather on normal values too."""
    return np.take(_float16_table(), h.view("<u2"))


@functools.cache
def _float16_table() -> np.ndarray:
    return np.arange(1 << 16, dtype="<u2").view("<f2").astype(np.float32)


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
    compress: the entropy stages, each used only when it pays:
      "zstd"         zstd (`level`) when that shrinks the payload at least 1.1 times
      "none"         the packed codes (or floats) as they are
      "sparse"       a bitmap of the zero codes (the code of 0.0) and the other codes, when
                     smaller than the packed codes: near memcpy speed, where zstd costs
                     ~10x the quantize-and-pack pass. Quantized bits only, and one zero
                     point per tensor (not scheme "affine" with an axis)
      "sparse+zstd"  sparse, then zstd on the result when that pays
    At bits=32 the payload frame may share memory with `array` (zero-copy).
    NaN or Inf raise CodecError, as do values beyond float16's range at bits=16.
    """
    x = np.asarray(array)
    axis = _check_args(x, bits, scheme, compress, level, axis)
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    stage = "none"
    if bits in FLOAT_BITS:
        payload = _float_payload(x32, bits)
        scales = np.zeros(0, np.float32)
        zps = np.zeros(0, np.int32)
        scheme = "float"
    else:
        try:
            if compress in SPARSE_CODECS:
                payload, scales, zps, stage = _sparse_or_packed(x32, bits, scheme, axis)
            else:
                payload, scales, zps = kernels.quantize_pack(x32, bits, scheme, axis)
        except ValueError:
            raise _non_finite_error(x32) from None
        except OverflowError:
            raise CodecError(
                f"array range [{float(x32.min()):g}, {float(x32.max()):g}] overflows float32 "
                "in scheme 'affine'; use scheme='symmetric'"
            ) from None
    raw = memoryview(payload.reshape(-1).view(np.uint8))
    codec, wire = stage, raw
    if compress.endswith("zstd"):
        zcodec, wire = _zstd.compress_if_pays(raw, level)
        if zcodec == "zstd":
            codec = "zstd" if stage == "none" else "sparse+zstd"
    header = Header(x.dtype.name, x.shape, bits, scheme, axis, scales, zps, codec, len(raw))
    return [pack_header(header), wire]


def _sparse_or_packed(x32: np.ndarray, bits: int, scheme: str, axis: int | None):
    """(payload, scales, zero_points, "sparse") with the sparse stream when it is smaller
    than the packed codes, else (..., "none") with the packed codes, made from the stream
    (cheaper than quantizing again)."""
    stream, scales, zps = kernels.quantize_sparse(x32, bits, scheme, axis)
    n = x32.size
    if stream.size < packed_size(n, bits):
        return stream, scales, zps, "sparse"
    codes = kernels.sparse_unpack(stream, n, int(zps.flat[0]) if zps.size else 0, bits)
    return kernels.pack(codes, bits), scales, zps, "none"


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
    if header.codec.endswith("zstd"):
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
        return from_float16(raw.view("<f2")).reshape(h.shape)
    if h.codec in SPARSE_CODECS:
        codes = _sparse_codes(h, raw)
        return kernels.dequantize(codes, h.scales, h.zero_points, h.shape, h.axis)
    return kernels.unpack_dequantize(raw, h.shape, h.bits, h.scales, h.zero_points, h.axis)


def _sparse_codes(h: Header, raw: np.ndarray) -> np.ndarray:
    """The codes of a sparse stream, after checking that it is exactly a bitmap with zero
    padding bits and the codes it marks (unpack_header checked raw_len >= the bitmap)."""
    n = math.prod(h.shape)
    nb = bitmap_size(n)
    if n == 0:  # raw_len is 0 (unpack_header); there may be no zero point at all
        return np.zeros(0, np.uint8)
    if n % 8 and int(raw[nb - 1]) >> (n % 8):
        raise CodecError(f"sparse bitmap: the last byte is 0x{int(raw[nb - 1]):02x}, but "
                         f"{n} codes use only its low {n % 8} bits (the padding must be 0)")
    k = kernels.popcount(raw[:nb])
    want = nb + packed_size(k, h.bits)
    if raw.size != want:
        raise CodecError(f"sparse payload is {raw.size} bytes, but its bitmap marks {k} of {n} "
                         f"codes non-zero: {nb} bitmap + {want - nb} code bytes at {h.bits} "
                         f"bits = {want}")
    zero = int(h.zero_points[0])  # one zero point for the tensor (unpack_header checked)
    return kernels.sparse_unpack(raw, n, zero, h.bits)

