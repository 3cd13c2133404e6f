"""encode/decode round trips with the backend this run loaded (CI runs native, then numpy)."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import edgesdk.codec as codec
from edgesdk.errors import CodecError


def header_of(frames) -> dict:
    return msgpack.unpackb(frames[0])


def scales_of(frames) -> np.ndarray:
    return np.frombuffer(header_of(frames)["scales"], dtype="<f4")


def relu_activation(shape, seed=0) -> np.ndarray:
    return np.maximum(np.random.default_rng(seed).standard_normal(shape), 0).astype(np.float32)


@given(
    x=hnp.arrays(
        st.sampled_from([np.float32, np.float64, np.float16]),
        hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=12),
        elements=st.floats(-1000, 1000, width=16),
    ),
    bits=st.sampled_from([8, 4, 2]),
    scheme=st.sampled_from(["symmetric", "affine"]),
    compress=st.sampled_from(["zstd", "none", "sparse", "sparse+zstd"]),
    data=st.data(),
)
def test_quantized_roundtrip_error_bound(x, bits, scheme, compress, data):
    axis = data.draw(st.none() | st.integers(0, x.ndim - 1)) if x.ndim else None
    if compress.startswith("sparse") and scheme == "affine":
        axis = None  # one zero point per tensor (refused otherwise, see below)
    frames = codec.encode(x, bits=bits, scheme=scheme, compress=compress, axis=axis)
    y = codec.decode(frames)
    if compress != "none":  # every entropy stage is lossless
        plain = codec.encode(x, bits=bits, scheme=scheme, compress="none", axis=axis)
        assert y.tobytes() == codec.decode(plain).tobytes()
    assert y.shape == x.shape and y.dtype == x.dtype
    scales = scales_of(frames)
    if axis is None:
        bound = np.full(x.shape, scales[0] / 2)
    else:
        shape = [1] * x.ndim
        shape[axis] = -1
        bound = np.broadcast_to(scales.reshape(shape) / 2, x.shape)
    x32 = x.astype(np.float32)
    err = np.abs(x32.astype(np.float64) - y.astype(np.float32).astype(np.float64))
    # + relative float32 slack for 1/scale rounding, + float16 output rounding (relative,
    # and absolute for float16 subnormals, spaced 2**-24)
    slack = 1e-6 * np.abs(x32) + 1e-30
    if x.dtype == np.float16:
        slack = slack + np.abs(x32) * 2**-10 + 2**-24
    assert np.all(err <= bound * (1 + 1e-5) + slack)


@given(
    x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=20),
                 elements=st.floats(-65000, 65000, width=32)),
    compress=st.sampled_from(["zstd", "none"]),
)
def test_float_modes(x, compress):
    assert np.array_equal(codec.decode(codec.encode(x, bits=32, compress=compress)), x)
    y = codec.decode(codec.encode(x, bits=16, compress=compress))
    assert np.array_equal(y, x.astype(np.float16).astype(np.float32))


def test_wire_sizes_and_header_fields():
    x = relu_activation((64, 56, 56))
    for bits in (8, 4, 2):
        frames = codec.encode(x, bits=bits, compress="none")
        h = header_of(frames)
        assert len(frames[1]) == x.size * bits // 8 == h["raw_len"]
        assert (h["v"], h["shape"], h["bits"], h["dtype"]) == (1, [64, 56, 56], bits, "float32")
        assert (h["scheme"], h["codec"], h["axis"]) == ("symmetric", "none", None)
        assert h["zero_points"] == bytes([1 << (bits - 1)])
    frames = codec.encode(x, bits=4)  # ReLU zeros compress
    assert header_of(frames)["codec"] == "zstd" and len(frames[1]) < x.size // 2 / 1.1


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("axis", [None, 0])
def test_sparse_packing_of_relu_activations(bits, axis):
    """Half the values are exact zeros: the bitmap and the other codes beat the packed codes,
    and decode to exactly the same array."""
    x = relu_activation((16, 14, 14), seed=bits)
    plain = codec.encode(x, bits=bits, compress="none", axis=axis)
    for compress in ("sparse", "sparse+zstd"):
        frames = codec.encode(x, bits=bits, compress=compress, axis=axis)
        h = header_of(frames)
        assert h["codec"] in (("sparse",) if compress == "sparse" else ("sparse", "sparse+zstd"))
        n = x.size
        if h["codec"] == "sparse":
            assert len(frames[1]) == h["raw_len"]
        assert (n + 7) // 8 <= h["raw_len"] < header_of(plain)["raw_len"]
        assert np.array_equal(codec.decode(frames), codec.decode(plain))
    sparse = codec.encode(x, bits=bits, compress="sparse", axis=axis)
    # about half zeros: the stream is ~ n/8 + n/2 codes of `bits`
    assert len(sparse[1]) < 0.75 * len(plain[1])


def test_sparse_falls_back_to_packed_codes_when_it_does_not_pay():
    # uniform codes: few zero codes (the bitmap costs more than they save), incompressible
    dense = np.random.default_rng(2).uniform(-1, 1, (8, 1000)).astype(np.float32)
    for compress in ("sparse", "sparse+zstd"):
        frames = codec.encode(dense, bits=8, compress=compress)
        assert header_of(frames)["codec"] == "none"
        assert bytes(frames[1]) == bytes(codec.encode(dense, bits=8, compress="none")[1])
    compressible = np.zeros((4, 64, 8, 8), np.float32)
    compressible[:, :, 0, 0] = 1.5
    h = header_of(codec.encode(compressible, bits=8, compress="sparse+zstd"))
    assert h["codec"] == "sparse+zstd"


def test_sparse_of_all_zeros_and_tiny_tensors():
    for shape in [(1,), (7,), (8,), (9,), (3, 0), (1000,)]:
        for fill in (0.0, 1.0):
            x = np.full(shape, fill, np.float32)
            for bits in (8, 4, 2):
                frames = codec.encode(x, bits=bits, compress="sparse")
                assert np.array_equal(codec.decode(frames), x)
    h = header_of(codec.encode(np.zeros(1000, np.float32), bits=8, compress="sparse"))
    assert (h["codec"], h["raw_len"]) == ("sparse", 125)  # the bitmap alone


def test_sparse_needs_codes_and_one_zero_point():
    x = np.ones((2, 3, 4), np.float32)
    for bits in (16, 32):
        with pytest.raises(CodecError, match="no codes to pack sparsely"):
            codec.encode(x, bits=bits, compress="sparse")
    with pytest.raises(CodecError, match="zero point"):
        codec.encode(x, bits=8, scheme="affine", axis=1, compress="sparse+zstd")
    relu = np.maximum(np.random.default_rng(0).normal(size=(2, 3, 40)), 0).astype(np.float32)
    for scheme, axis in (("symmetric", 1), ("affine", None)):  # one zero point: fine
        frames = codec.encode(relu, bits=8, scheme=scheme, axis=axis, compress="sparse")
        assert header_of(frames)["codec"] == "sparse"
        assert np.array_equal(codec.decode(frames), codec.decode(codec.encode(
            relu, bits=8, scheme=scheme, axis=axis)))


def test_zstd_skipped_when_it_does_not_pay():
    noise = np.random.default_rng(1).uniform(-1, 1, 200_000).astype(np.float32)
    frames = codec.encode(noise, bits=8)  # uniform codes: incompressible
    assert header_of(frames)["codec"] == "none"
    assert len(frames[1]) == noise.size


def test_per_channel_beats_per_tensor_on_uneven_channels():
    x = relu_activation((16, 32, 32)) * np.logspace(-3, 1, 16, dtype=np.float32)[:, None, None]
    per_tensor = np.abs(codec.decode(codec.encode(x, bits=4)) - x).mean()
    per_channel = np.abs(codec.decode(codec.encode(x, bits=4, axis=0)) - x).mean()
    assert per_channel < per_tensor / 2
    assert len(scales_of(codec.encode(x, bits=4, axis=-3))) == 16


def test_payload_is_a_separate_zero_copy_frame_at_32_bits():
    x = relu_activation((8, 8))
    frames = codec.encode(x, bits=32, compress="none")
    assert isinstance(frames[1], memoryview)
    assert np.shares_memory(np.frombuffer(frames[1], dtype=np.float32), x)


def test_decode_accepts_any_bytes_like_frames():
    x = relu_activation((4, 5, 6))
    frames = codec.encode(x, bits=8)
    for wrap in (bytes, bytearray, memoryview):
        y = codec.decode([wrap(frames[0]), wrap(frames[1])])
        assert np.array_equal(y, codec.decode(frames))
    assert y.flags.writeable


def test_empty_and_scalar_tensors():
    for shape in [(0,), (3, 0, 2), ()]:
        x = np.ones(shape, dtype=np.float32)
        for bits in (2, 4, 8, 16, 32):
            y = codec.decode(codec.encode(x, bits=bits))
            assert y.shape == shape


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("bits", [2, 4, 8, 16, 32])
def test_non_finite_input_is_rejected_with_its_index(bad, bits):
    x = np.zeros((4, 4), dtype=np.float32)
    x[2, 3] = bad
    with pytest.raises(CodecError, match=r"non-finite value .* flat index 11"):
        codec.encode(x, bits=bits)


def test_float16_overflow_is_rejected():
    with pytest.raises(CodecError, match="float16"):
        codec.encode(np.array([1e5], np.float32), bits=16)


def test_affine_range_overflow_suggests_symmetric():
    x = np.array([3e38, -3e38], np.float32)
    with pytest.raises(CodecError, match="symmetric"):
        codec.encode(x, scheme="affine")
    assert np.allclose(codec.decode(codec.encode(x, scheme="symmetric")), x)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"bits": 3}, "bits is 3"),
        ({"scheme": "log"}, "scheme is 'log'"),
        ({"compress": "lz4"}, "compress is 'lz4'"),
        ({"level": 0}, "level is 0"),
        ({"level": -8}, "level is -8"),
        ({"level": 23}, "level is 23"),
        ({"axis": 3}, "axis is 3"),
        ({"axis": 0, "bits": 16}, "no scales"),
    ],
)
def test_bad_encode_arguments(kwargs, match):
    with pytest.raises(CodecError, match=match):
        codec.encode(np.ones((2, 3, 4), np.float32), **kwargs)


@pytest.mark.parametrize("x", [np.arange(4), np.array(["a"]), np.ones(3, np.complex64),
                               np.ones((1,) * 9, np.float32)])
def test_unsupported_arrays(x):
    with pytest.raises(CodecError):
        codec.encode(x)


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_float32_extremes_decode_finite_within_bound(bits):
    """absmax / qmax can round up so that qmax * scale overflows; the scale steps down."""
    big = np.finfo(np.float32).max
    x = np.array([big, -big, 1.0, np.nextafter(big, 0)], np.float32)
    frames = codec.encode(x, bits=bits)
    y = codec.decode(frames)
    assert np.all(np.isfinite(y))
    assert np.all(np.abs(x.astype(np.float64) - y) <= scales_of(frames)[0] / 2 * (1 + 1e-6))
