"""decode is strict about what the wire format allows beyond a parseable header:
exactly one zstd frame (nothing after it), and only finite values in float payloads.
Both run with each kernel backend this install has (native, numpy)."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
import zstandard

import edgesdk.codec as codec
from edgesdk.bundle import TensorSpec
from edgesdk.codec import _codec
from edgesdk.errors import CodecError

from conftest import _native_kernels, _numpy_kernels


@pytest.fixture(params=["native", "numpy"])
def backend(request, monkeypatch):
    """decode with the native kernels, then with the numpy ones."""
    if request.param == "native":
        if _native_kernels is None:
            pytest.skip("this install has no C extension (EDGESDK_NATIVE=0 build)")
        monkeypatch.setattr(_codec, "kernels", _native_kernels)
    else:
        monkeypatch.setattr(_codec, "kernels", _numpy_kernels)
    return request.param


def zstd_frames(x: np.ndarray, bits: int, tail: bytes = b"") -> list:
    """encode(x) with a zstd payload (compressible data), plus `tail` after the frame."""
    header, payload = codec.encode(x, bits=bits)
    assert msgpack.unpackb(bytes(header))["codec"] == "zstd"
    return [header, bytes(payload) + tail]


COMPRESSIBLE = np.zeros((4, 64, 8, 8), np.float32)
COMPRESSIBLE[:, :, 0, 0] = 1.5


@pytest.mark.parametrize("bits", [4, 8, 16, 32])
def test_one_zstd_frame_decodes(backend, bits):
    np.testing.assert_allclose(codec.decode(zstd_frames(COMPRESSIBLE, bits)), COMPRESSIBLE,
                               atol=0.01)


@pytest.mark.parametrize("bits", [4, 8, 16, 32])
@pytest.mark.parametrize("tail", [b"\x00", b"junk after the frame", b"\xff" * 4096])
def test_trailing_bytes_after_the_zstd_frame_are_rejected(backend, bits, tail):
    with pytest.raises(CodecError, match=f"{len(tail)} trailing bytes after the zstd frame"):
        codec.decode(zstd_frames(COMPRESSIBLE, bits, tail))


@pytest.mark.parametrize("bits", [8, 32])
def test_a_second_zstd_frame_is_rejected(backend, bits):
    first = zstd_frames(COMPRESSIBLE, bits)
    second = zstandard.ZstdCompressor(write_content_size=True).compress(b"\x01" * 100)
    with pytest.raises(CodecError, match=f"a second zstd frame \\({len(second)} bytes\\)"):
        codec.decode([first[0], first[1] + second])
    # the same frame twice (content size and window both legal) is no exception
    with pytest.raises(CodecError, match="a second zstd frame"):
        codec.decode([first[0], first[1] + first[1]])


def test_a_skippable_frame_after_the_zstd_frame_is_rejected(backend):
    header, payload = zstd_frames(COMPRESSIBLE, 8)
    skippable = (0x184D2A50).to_bytes(4, "little") + (4).to_bytes(4, "little") + b"abcd"
    with pytest.raises(CodecError, match="a second zstd skippable frame \\(12 bytes\\)"):
        codec.decode([header, payload + skippable])


def float_frames(x: np.ndarray, bits: int, bad: float, at: int) -> list:
    """Valid frames of x at `bits` (16 or 32, uncompressed) with element `at` set to bad."""
    header, payload = codec.encode(x, bits=bits, compress="none")
    raw = bytearray(bytes(payload))
    width = bits // 8
    raw[at * width:(at + 1) * width] = np.array([bad], f"<f{width}").tobytes()
    return [header, bytes(raw)]


@pytest.mark.parametrize("bits", [16, 32])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_float_payloads_are_rejected(backend, bits, bad):
    x = np.linspace(-2, 2, 6 * 7, dtype=np.float32).reshape(6, 7)
    with pytest.raises(CodecError, match=f"non-finite value {bad} at flat index 17"):
        codec.decode(float_frames(x, bits, bad, 17))
    # the same through zstd
    header, payload = float_frames(np.zeros((64, 64), np.float32), bits, bad, 4000)
    packed = zstandard.ZstdCompressor(write_content_size=True).compress(payload)
    h = msgpack.unpackb(bytes(header))
    h["codec"] = "zstd"
    with pytest.raises(CodecError, match="non-finite value .* at flat index 4000"):
        codec.decode([msgpack.packb(h, use_bin_type=True), packed])


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_decode_tensors_names_the_tensor_with_a_non_finite_value(backend, dtype):
    specs = (TensorSpec("a", (2, 3), "float32"), TensorSpec("feat", (1, 8), dtype))
    good = np.ones((2, 3), np.float32)
    bad = np.zeros((1, 8), dtype)
    frames = codec.encode_tensors([good, bad], bits=32, compress="none")
    raw = bytearray(bytes(frames[3]))
    raw[12:16] = np.array([np.nan], "<f4").tobytes()
    frames[3] = bytes(raw)
    with pytest.raises(CodecError, match="tensor 'feat'.*non-finite value nan at flat index 3"):
        codec.decode_tensors(frames, specs)


def test_finite_extremes_still_decode(backend):
    x = np.array([np.finfo(np.float32).max, -np.finfo(np.float32).max, 0.0], np.float32)
    np.testing.assert_array_equal(codec.decode(codec.encode(x, bits=32)), x)
    h = np.array([65504.0, -65504.0, 0.0], np.float32)
    np.testing.assert_array_equal(codec.decode(codec.encode(h, bits=16)), h)


def test_a_value_beyond_float16_is_refused_not_decoded_to_inf():
    # a 32-bit payload of 1e6 for a float16 tensor would become inf in the model
    from edgesdk.bundle import TensorSpec
    from edgesdk.codec import decode, decode_tensors, encode, encode_tensors

    big = np.full((1, 4), 1e6, np.float32)
    with pytest.raises(CodecError, match=r"tensor 'h' as float16 has non-finite value"):
        decode_tensors(encode_tensors([big], bits=32), [TensorSpec("h", (1, 4), "float16")])
    frames = encode(big, bits=32)
    assert np.isfinite(decode(frames)).all()  # float32 as sent: fine


# ------------------------------------------------------------------ sparse payloads

SPARSE_X = np.maximum(np.random.default_rng(3).standard_normal((5, 7, 9)), 0).astype(np.float32)
N_SPARSE = SPARSE_X.size  # 315 codes: the bitmap's last byte uses 3 bits


def sparse_frames(width: int, raw: bytes | None = None, **changes) -> list:
    """encode(SPARSE_X, bits=width, compress="sparse") with its stream replaced by `raw`
    (raw_len too) and header fields changed."""
    header, payload = codec.encode(SPARSE_X, bits=width, compress="sparse")
    h = msgpack.unpackb(bytes(header))
    assert h["codec"] == "sparse"
    if raw is not None:
        h["raw_len"] = len(raw)
        payload = raw
    h.update(changes)
    return [msgpack.packb(h, use_bin_type=True), bytes(payload)]


def stream_of(bits: int) -> bytes:
    return bytes(sparse_frames(bits)[1])


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_sparse_payload_decodes_like_the_packed_one(backend, bits):
    plain = codec.decode(codec.encode(SPARSE_X, bits=bits, compress="none"))
    assert codec.decode(sparse_frames(bits)).tobytes() == plain.tobytes()


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_sparse_stream_longer_or_shorter_than_its_bitmap_says(backend, bits):
    raw = stream_of(bits)
    nb = (N_SPARSE + 7) // 8
    k = sum(bin(b).count("1") for b in raw[:nb])
    codes = (k * bits + 7) // 8
    for bad in (raw + b"\x00", raw + b"junk", raw[:-1]):
        with pytest.raises(CodecError, match=rf"sparse payload is {len(bad)} bytes, but its "
                           rf"bitmap marks {k} of {N_SPARSE} codes non-zero: {nb} bitmap \+ "
                           rf"{codes} code bytes at {bits} bits = {len(raw)}"):
            codec.decode(sparse_frames(bits, bad))
    # one more 1 bit in the bitmap: its popcount disagrees with the codes that follow,
    # unless k + 1 codes fit in the same bytes (at 4 and 2 bits the padding bits of the last
    # byte then decode as one more code: a valid stream, if not the encoder's)
    i = next(i for i in range(nb) if raw[i] != 0xFF)
    more = bytearray(raw)
    more[i] |= (~raw[i] & 0xFF) & -(~raw[i] & 0xFF)  # set its lowest 0 bit
    if ((k + 1) * bits + 7) // 8 == codes:
        assert bits < 8
        codec.decode(sparse_frames(bits, bytes(more)))
    else:
        with pytest.raises(CodecError, match=f"its bitmap marks {k + 1} of {N_SPARSE} codes"):
            codec.decode(sparse_frames(bits, bytes(more)))


def test_sparse_bitmap_padding_bits_must_be_zero(backend):
    raw = bytearray(stream_of(8))
    nb = (N_SPARSE + 7) // 8
    raw[nb - 1] |= 0x80  # 315 codes use bits 0-2 of the last bitmap byte
    with pytest.raises(CodecError, match=r"the last byte is 0x[89a-f][0-9a-f], but 315 codes use "
                       r"only its low 3 bits"):
        codec.decode(sparse_frames(8, bytes(raw)))


@pytest.mark.parametrize("raw_len, match", [(39, "takes 40 to 355 bytes"),
                                            (356, "takes 40 to 355 bytes")])
def test_sparse_raw_len_bounds(backend, raw_len, match):
    frames = sparse_frames(8, raw_len=raw_len)
    with pytest.raises(CodecError, match=match):
        codec.decode(frames)


@pytest.mark.parametrize("changes, match", [
    ({"bits": 32, "scheme": "float", "scales": b"", "zero_points": b""},
     "bits=32 has no codes to pack sparsely"),
    ({"scheme": "affine", "axis": 0, "scales": np.ones(5, "<f4").tobytes(),
      "zero_points": bytes(5)}, "has a zero point per channel"),
])
def test_sparse_header_needs_codes_and_one_zero_point(backend, changes, match):
    with pytest.raises(CodecError, match=match):
        codec.decode(sparse_frames(8, **changes))


def test_sparse_plus_zstd_is_checked_after_decompression(backend):
    raw = stream_of(4)
    good = zstandard.ZstdCompressor(write_content_size=True).compress(raw)
    frames = sparse_frames(4, raw, codec="sparse+zstd")
    frames[1] = good
    plain = codec.decode(codec.encode(SPARSE_X, bits=4, compress="none"))
    assert codec.decode(frames).tobytes() == plain.tobytes()
    # a stream one byte short inside a valid zstd frame whose size the header states
    short = zstandard.ZstdCompressor(write_content_size=True).compress(raw[:-1])
    frames = sparse_frames(4, raw[:-1], codec="sparse+zstd")
    frames[1] = short
    with pytest.raises(CodecError, match="its bitmap marks"):
        codec.decode(frames)
    # the zstd frame's content size must be the header's raw_len
    frames = sparse_frames(4, raw, codec="sparse+zstd")
    frames[1] = short
    with pytest.raises(CodecError, match="content size"):
        codec.decode(frames)


def test_sparse_of_an_empty_tensor_from_a_hostile_header(backend):
    h = {"v": 1, "dtype": "float32", "shape": [3, 0], "bits": 8, "scheme": "symmetric",
         "axis": 1, "scales": b"", "zero_points": b"", "codec": "sparse", "raw_len": 0}
    assert codec.decode([msgpack.packb(h, use_bin_type=True), b""]).shape == (3, 0)


@pytest.mark.parametrize("scale", [1.0, 1e-2, 1e-3, 3e-4, 1e-5, 1e-7, 1e-9])
def test_float16_encoding_is_numpys_bit_for_bit_at_every_magnitude(scale):
    """bits=16 writes subnormal float16 codes itself when many values need them (numpy's
    astype is ~25x slower there): the bits must be exactly numpy's, ties and signs too."""
    from edgesdk.codec._codec import to_float16

    x = (np.random.default_rng(1).standard_normal((3, 40, 661)) * scale).astype(np.float32)
    specials = [0.0, -0.0, 2.0**-14, -(2.0**-14), 2.0**-25, -(2.0**-25), 3 * 2.0**-25,
                5 * 2.0**-25, 2.0**-24 * 1023.5, 6.0e-8, 1e-30, -1e-30]
    x.reshape(-1)[:len(specials)] = specials
    got = to_float16(x)
    assert got.shape == x.shape and got.dtype == np.dtype("<f2")
    np.testing.assert_array_equal(got.view(np.uint16), x.astype("<f2").view(np.uint16))
    back = _codec.from_float16(got)
    assert back.shape == x.shape and back.dtype == np.float32
    np.testing.assert_array_equal(back.view(np.uint32), got.astype(np.float32).view(np.uint32))
