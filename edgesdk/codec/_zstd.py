"""zstd for payload frames: compress only when it pays, decompress with hard bounds.

Compressor objects are reused (creating one costs 10-20 us per call, measured on the
development machine) and kept per thread, since they are not thread-safe.
"""

from __future__ import annotations

import re
import threading

import zstandard

from ..errors import CodecError

MIN_RATIO = 1.1  # below this, the receiver's decompression time is not worth the bytes
MAX_WINDOW = 1 << 23  # levels <= 19 never need more; a hostile frame may claim far more
# zstd's fast negative levels trade ratio for speed on slow devices; 0 would mean "default".
LEVELS = tuple(range(-7, 0)) + tuple(range(1, 20))
_WHOLE_LIMIT = 64 * 1024  # payloads up to this size are compressed whole to decide
_SAMPLE_BLOCKS = 4
_SAMPLE_BLOCK = 4096

_local = threading.local()
# zstandard's error for data after the frame (allow_extra_data=False)
_UNUSED = re.compile(r"contains (\d+) bytes of unused data")
_FRAME_MAGIC = b"\x28\xb5\x2f\xfd"


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    c = cache.get(level)
    if c is None:
        c = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
    return d


def _sample(payload: memoryview) -> bytes:
    """A few blocks spread over the payload: activations vary along channels."""
    stride = (len(payload) - _SAMPLE_BLOCK) // (_SAMPLE_BLOCKS - 1)
    return b"".join(payload[i * stride : i * stride + _SAMPLE_BLOCK] for i in range(_SAMPLE_BLOCKS))


def compress_if_pays(payload: memoryview, level: int) -> tuple[str, bytes | memoryview]:
    """("zstd", compressed) if zstd shrinks the payload at least MIN_RATIO times, else
    ("none", payload). Large payloads are judged on a sample before paying for the whole."""
    if len(payload) == 0:
        return "none", payload
    comp = _compressor(level)
    if len(payload) > _WHOLE_LIMIT:
        sample = _sample(payload)
        if len(sample) < MIN_RATIO * len(comp.compress(sample)):
            return "none", payload
    packed = comp.compress(payload)
    if len(payload) < MIN_RATIO * len(packed):
        return "none", payload
    return "zstd", packed


def decompress_exact(payload: memoryview, raw_len: int) -> bytes:
    """Decompress one zstd frame that must hold exactly raw_len bytes.

    The frame header is checked before any allocation: zstd's one-shot API trusts the
    content size the frame claims.
    """
    try:
        params = zstandard.get_frame_parameters(payload)
    except zstandard.ZstdError as exc:
        raise CodecError(f"payload is not a zstd frame: {exc}") from None
    if params.content_size != raw_len:
        claimed = "unknown" if params.content_size == zstandard.CONTENTSIZE_UNKNOWN else (
            params.content_size)
        raise CodecError(f"zstd frame content size is {claimed}, header raw_len is {raw_len}")
    if params.window_size > MAX_WINDOW:
        raise CodecError(f"zstd window is {params.window_size} bytes, limit {MAX_WINDOW}")
    try:
        # allow_extra_data=False: the wire format carries exactly one frame, and zstd's
        # default would silently ignore whatever follows it
        out = _decompressor().decompress(payload, max_output_size=raw_len,
                                         allow_extra_data=False)
    except zstandard.ZstdError as exc:
        extra = _UNUSED.search(str(exc))
        if extra:
            raise CodecError(_after_frame(payload, int(extra.group(1)))) from None
        raise CodecError(f"zstd payload is corrupt: {exc}") from None
    if len(out) != raw_len:
        raise CodecError(f"zstd payload decompressed to {len(out)} bytes, expected {raw_len}")
    return out


def _after_frame(payload: memoryview, extra: int) -> str:
    """What follows the one zstd frame of a payload: another frame, or trailing bytes."""
    tail = bytes(payload[len(payload) - extra:len(payload) - extra + 4]) if extra else b""
    skippable = len(tail) == 4 and int.from_bytes(tail, "little") & 0xFFFFFFF0 == 0x184D2A50
    if tail == _FRAME_MAGIC or skippable:
        kind = "skippable " if skippable else ""
        return (f"zstd payload holds a second zstd {kind}frame ({extra} bytes) after the "
                "first; the wire format allows one frame")
    return (f"zstd payload has {extra} trailing bytes after the zstd frame; the wire format "
            "allows one frame and nothing after it")


def compress_bound(size: int) -> int:
    """The largest zstd frame a conforming encoder makes of `size` bytes: libzstd's
    ZSTD_COMPRESSBOUND (frame and block headers included), plus room for a checksum."""
    small = ((128 << 10) - size) >> 11 if size < 128 << 10 else 0
    return size + (size >> 8) + small + 64
