"""decode on hostile frames: only CodecError, never a crash, a hang or a huge allocation."""

from __future__ import annotations

import contextlib
import tracemalloc

import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

import edgesdk.codec as codec
from edgesdk.errors import CodecError

GIB = 1 << 30


def valid_header(**changes) -> dict:
    h = {
        "v": 1, "dtype": "float32", "shape": [2, 3], "bits": 8, "scheme": "symmetric",
        "axis": None, "scales": np.float32(0.5).tobytes(), "zero_points": bytes([128]),
        "codec": "none", "raw_len": 6,
    }
    h.update(changes)
    return h


def frames_with(payload=b"\x80" * 6, **changes) -> list:
    return [msgpack.packb(valid_header(**changes), use_bin_type=True), payload]


def assert_rejected(frames, match=None, max_bytes=codec.DEFAULT_MAX_BYTES):
    with pytest.raises(CodecError, match=match):
        codec.decode(frames, max_bytes=max_bytes)


def test_the_valid_baseline_decodes():
    assert np.array_equal(codec.decode(frames_with()), np.zeros((2, 3), np.float32))


def test_header_keys_of_mixed_types_are_a_codec_error():
    # found by the mutation test below: a flipped byte turned a str key into bytes, and
    # listing the unexpected keys compared str with bytes (TypeError, not CodecError)
    h = valid_header()
    h[b"raw_len"] = h.pop("raw_len")
    h["extra"] = 1  # the unexpected keys: one str, one bytes
    assert_rejected([msgpack.packb(h, use_bin_type=True), b"\x80" * 6], "missing")


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"v": 2}, "'v' is 2"),
        ({"v": True}, "'v'"),
        ({"dtype": "int64"}, "'dtype' is 'int64'"),
        ({"dtype": 5}, "'dtype' is 5"),
        ({"shape": [2, -3]}, "'shape'"),
        ({"shape": "2x3"}, "'shape'"),
        ({"shape": [2.0, 3]}, "'shape'"),
        ({"shape": [True, 6]}, "'shape'"),
        ({"bits": 7}, "'bits' is 7"),
        ({"bits": 8.0}, "'bits'"),
        ({"scheme": "float"}, "'scheme' is 'float'"),
        ({"axis": 2}, "'axis' is 2"),
        ({"axis": -1}, "'axis' is -1"),
        ({"codec": "lz4"}, "'codec' is 'lz4'"),
        ({"raw_len": 7}, "'raw_len' is 7"),
        ({"raw_len": -1}, "'raw_len' is -1"),
        ({"scales": b"\x00" * 8}, "'scales' is 8 bytes"),
        ({"scales": [0.5]}, "'scales' is list"),
        ({"scales": np.float32(0).tobytes()}, "'scales' has 0.0"),
        ({"scales": np.float32(-1).tobytes()}, "'scales' has -1.0"),
        ({"scales": np.float32(np.nan).tobytes()}, "'scales' has nan"),
        ({"scales": np.float32(np.inf).tobytes()}, "'scales' has inf"),
        ({"scales": np.float32(3e38).tobytes()}, "grid stays finite"),
        ({"zero_points": bytes([7])}, "symmetric 8-bit uses 128"),
        ({"zero_points": b""}, "'zero_points' is 0 bytes"),
        ({"extra": 1}, "unexpected \\['extra'\\]"),
    ],
)
def test_each_header_field_is_validated(changes, match):
    assert_rejected(frames_with(**changes), match)


def test_missing_key():
    h = valid_header()
    del h["raw_len"]
    assert_rejected([msgpack.packb(h), b"\x80" * 6], "missing \\['raw_len'\\]")


def test_affine_zero_point_beyond_codes():
    frames = frames_with(b"\x00", shape=[2], bits=4, scheme="affine", raw_len=1,
                         zero_points=bytes([16]))
    assert_rejected(frames, "'zero_points' has 16, limit 15")


@pytest.mark.parametrize("claim", [[1 << 32], [65536, 65536], [1 << 62, 1 << 62]])
def test_huge_shape_claims_are_rejected_before_allocation(claim):
    n = 1
    for d in claim:
        n *= d
    # built first: msgpack < 1.0.4 packs through a 1 MiB buffer
    frames = frames_with(shape=claim, raw_len=min(n, 1 << 63))
    tracemalloc.start()
    try:
        assert_rejected(frames, "limit")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_four_gib_length_claim_in_zstd_frame():
    """A zstd frame header claiming 4 GiB is refused before decompression."""
    data = b"\x00" * 1024
    c = zstandard.ZstdCompressor(level=1)
    small = c.compress(data)
    # Same frame, but a header whose shape is consistent with 4 GiB at 8 bits.
    frames = frames_with(small, shape=[4 * GIB], raw_len=4 * GIB, codec="zstd")
    assert_rejected(frames, "limit")
    # With a permissive max_bytes the zstd content size (1 KiB) still contradicts raw_len.
    assert_rejected(frames, "content size is 1024", max_bytes=1 << 40)


def test_zstd_bomb_is_bounded():
    """64 MiB of zeros compresses to a few KB; the header must claim it, and the limit stops
    it before decompression."""
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\x00" * (64 << 20))
    assert len(bomb) < 64 * 1024
    frames = frames_with(bomb, shape=[64 << 20], raw_len=64 << 20, codec="zstd")
    assert_rejected(frames, "limit", max_bytes=16 << 20)
    # A header that understates the size is caught by the frame's content size.
    frames = frames_with(bomb, shape=[1024], raw_len=1024, codec="zstd")
    assert_rejected(frames, "content size")


def test_zstd_frame_without_content_size_is_rejected():
    c = zstandard.ZstdCompressor(write_content_size=False)
    payload = c.compress(b"\x80" * 6)
    assert_rejected(frames_with(payload, codec="zstd"), "content size is unknown")


def test_zstd_window_bound():
    params = zstandard.ZstdCompressionParameters.from_level(1, window_log=27)
    payload = zstandard.ZstdCompressor(compression_params=params).compress(b"\x80" * 6)
    frames = frames_with(payload, codec="zstd")
    try:
        codec.decode(frames)  # small content: zstd may shrink the declared window
    except CodecError as exc:
        assert "window" in str(exc)


def test_corrupt_zstd_payload():
    good = zstandard.ZstdCompressor().compress(b"\x80" * 6000)
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    for payload in (bytes(bad), good[:-3], b"not zstd at all", b""):
        assert_rejected(frames_with(payload, shape=[6000], raw_len=6000, codec="zstd"))


@pytest.mark.parametrize(
    "frames",
    [
        None, 5, b"abc", "ab", [], [b""], [b"", b"", b""], [None, b""], [b"\xc1", b""],
        [msgpack.packb([1, 2]), b""], [msgpack.packb(5), b""], [b"\x92\x01", b""],
        [msgpack.packb(valid_header()) + b"junk", b"\x80" * 6],
        [msgpack.packb(msgpack.ExtType(1, b"x")), b""],
        [msgpack.packb(valid_header(dtype=msgpack.ExtType(1, b"x"))), b"\x80" * 6],
        [msgpack.packb({1: 2}), b""],
        [b"\xdf\xff\xff\xff\xff", b""],  # map claiming 4 billion entries
        [b"\xc6\xff\xff\xff\xff", b""],  # bin claiming 4 GiB
        [b"\x91" * 100000, b""],  # deep nesting
        [b"\x00" * (codec.MAX_HEADER_BYTES + 1), b""],
    ],
)
def test_malformed_frame_lists(frames):
    assert_rejected(frames)


def test_truncated_frames_of_every_length():
    x = np.maximum(np.random.default_rng(0).standard_normal((8, 9, 10)), 0).astype(np.float32)
    for bits, compress in ((2, "zstd"), (4, "zstd"), (8, "zstd"), (16, "zstd"), (32, "zstd"),
                           (8, "sparse"), (4, "sparse"), (2, "sparse+zstd")):
        header, payload = codec.encode(x, bits=bits, compress=compress)
        header, payload = bytes(header), bytes(payload)
        for cut in range(len(header)):
            assert_rejected([header[:cut], payload])
        for cut in range(0, len(payload), max(1, len(payload) // 50)):
            assert_rejected([header, payload[:cut]])


def test_non_contiguous_frame():
    strided = np.zeros((4, 4), np.uint8)[:, ::2]
    assert_rejected([strided, b""], "cannot be read as bytes")


@given(data=st.data())
def test_mutated_frames_only_raise_codec_error(data):
    """Random byte flips, insertions and deletions: a clean array or a CodecError."""
    x = np.maximum(np.random.default_rng(1).standard_normal((4, 6, 7)), 0).astype(np.float32)
    bits = data.draw(st.sampled_from([2, 4, 8, 16, 32]))
    axis = data.draw(st.sampled_from([None, 0, 2])) if bits <= 8 else None
    modes = ["zstd", "none"] + (["sparse", "sparse+zstd"] if bits <= 8 else [])
    compress = data.draw(st.sampled_from(modes))
    frames = [bytearray(f) for f in codec.encode(x, bits=bits, axis=axis, compress=compress)]
    for _ in range(data.draw(st.integers(1, 4))):
        which = data.draw(st.integers(0, 1))
        buf = frames[which]
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        at = data.draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[at] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            buf[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif buf:
            del buf[at : at + data.draw(st.integers(1, 8))]
    try:
        y = codec.decode(frames, max_bytes=1 << 20)
    except CodecError:
        return
    assert isinstance(y, np.ndarray) and y.nbytes <= 1 << 20


@given(header=st.binary(max_size=300), payload=st.binary(max_size=300))
def test_random_bytes_only_raise_codec_error(header, payload):
    with contextlib.suppress(CodecError):
        codec.decode([header, payload], max_bytes=1 << 20)
