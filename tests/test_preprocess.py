"""Camera frames to model inputs: layout, channels, resizing, normalization, bad frames."""

from __future__ import annotations

import numpy as np
import pytest

from edgesdk import InputError, Preprocessor, prepare
from edgesdk.bundle import TensorSpec

GRAY28 = TensorSpec("x", (1, 1, 28, 28), "float32")
RGB_NCHW = TensorSpec("x", (1, 3, 8, 6), "float32")
RGB_NHWC = TensorSpec("x", (1, 8, 6, 3), "float32")


def test_same_size_rgb_is_scaled_normalized_and_transposed():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = Preprocessor(RGB_NCHW, mean=mean, std=std)(frame)
    expected = (frame.astype(np.float32) / 255 - np.float32(mean)) / np.float32(std)
    assert x.shape == (1, 3, 8, 6) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(x[0].transpose(1, 2, 0), expected, rtol=1e-6, atol=1e-6)
    nhwc = Preprocessor(RGB_NHWC, mean=mean, std=std)(frame)
    np.testing.assert_allclose(nhwc[0], expected, rtol=1e-6, atol=1e-6)


def test_bgr_frames_are_swapped_to_rgb():
    frame = np.zeros((8, 6, 3), np.uint8)
    frame[..., 0] = 255  # blue in BGR
    x = Preprocessor(RGB_NCHW, bgr=True)(frame)
    assert x[0, 2].min() == 1.0 and x[0, :2].max() == 0.0


def test_bilinear_resize_matches_half_pixel_centres():
    # A 2x2 image upscaled to 4x4: half-pixel centres give weights 0.25/0.75 inside and
    # clamp at the borders (cv2.INTER_LINEAR's convention), separably along each axis.
    img = np.array([[0, 100], [200, 40]], np.uint8)
    spec = TensorSpec("x", (1, 1, 4, 4), "float32")
    x = prepare(img, spec, scale=1.0)[0, 0]
    w = np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])  # 4 outputs from 2 inputs
    np.testing.assert_allclose(x, w @ img.astype(np.float64) @ w.T, rtol=1e-6, atol=1e-4)


def test_downscale_of_a_constant_frame_is_constant_and_gray_conversion_uses_luma():
    frame = np.full((480, 640, 3), (10, 200, 30), np.uint8)  # RGB
    x = prepare(frame, GRAY28)
    assert x.shape == (1, 1, 28, 28)
    luma = (0.299 * 10 + 0.587 * 200 + 0.114 * 30) / 255
    np.testing.assert_allclose(x, luma, rtol=1e-5)
    gray = np.full((480, 640), 128, np.uint8)
    np.testing.assert_allclose(prepare(gray, RGB_NCHW), 128 / 255, rtol=1e-6)
    rgba = np.full((16, 12, 4), 50, np.uint8)
    np.testing.assert_allclose(prepare(rgba, RGB_NCHW), 50 / 255, rtol=1e-6)


def test_a_camera_frame_of_a_real_digit_is_still_that_digit():
    from edgesdk import Engine
    from edgesdk.models import DIGITS_BUNDLE, load_digits_test

    x, y = load_digits_test()
    with Engine(DIGITS_BUNDLE, strategy="device") as engine:
        prep = Preprocessor(engine.bundle.manifest.inputs[0], bgr=True)
        hits = 0
        for i in range(20):
            digit = (x[i, 0] * 255).astype(np.uint8)
            frame = np.repeat(np.repeat(digit, 10, axis=0), 10, axis=1)  # 280x280
            frame = np.repeat(frame[:, :, None], 3, axis=2)  # BGR gray
            hits += engine.infer(prep(frame)).label == y[i]
    assert hits >= 18


@pytest.mark.parametrize("frame, match", [
    (np.zeros((8, 6, 2), np.uint8), r"shape \[8, 6, 2\]"),
    (np.zeros((0, 6, 3), np.uint8), r"shape \[0, 6, 3\]"),
    (np.zeros((8, 6, 3), np.int64), "dtype int64"),
    (np.full((8, 6, 3), np.nan, np.float32), "NaN"),
    (np.zeros((2, 8, 6, 3), np.uint8), "shape"),
])
def test_bad_frames_are_input_errors(frame, match):
    with pytest.raises(InputError, match=match):
        Preprocessor(RGB_NCHW)(frame)


def test_bad_specs_and_options_are_input_errors():
    with pytest.raises(InputError, match="4-d"):
        Preprocessor(TensorSpec("t", (1, 10), "float32"))
    with pytest.raises(InputError, match="channels"):
        Preprocessor(TensorSpec("t", (1, 5, 8, 8), "float32"))
    with pytest.raises(InputError, match="std"):
        Preprocessor(RGB_NCHW, std=(0.0,))
    with pytest.raises(InputError, match="mean has 2"):
        Preprocessor(RGB_NCHW, mean=(0.1, 0.2))
