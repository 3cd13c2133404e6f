"""Models shipped with edgesdk (package data); see README.md here for their provenance.

    from edgesdk.models import DIGITS_BUNDLE, digits_bundle, load_digits_test
    bundle = Bundle.load(DIGITS_BUNDLE)     # a multi-exit CNN, calibrated exits, 4 segments
    bundle = Bundle.load(digits_bundle())   # the form this machine runs (ONNX or TFLite)
    x, y = load_digits_test()               # 750 test digits, float32 (N, 1, 28, 28) in [0, 1]

The digits model comes in two forms with the same interface (input, outputs, cut tensors
and exits, NCHW): DIGITS_BUNDLE for onnxruntime and DIGITS_TFLITE_BUNDLE for LiteRT /
tflite-runtime, converted from it by examples/digits_to_tflite.py, for machines without
onnxruntime (32-bit Raspberry Pi OS).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DIGITS_BUNDLE = HERE / "digits.edge"
DIGITS_TFLITE_BUNDLE = HERE / "digits-tflite.edge"
DIGITS_TEST = HERE / "digits_test.npz"
DIGITS_BUNDLES = {"onnx": DIGITS_BUNDLE, "tflite": DIGITS_TFLITE_BUNDLE}


def onnxruntime_available() -> bool:
    """Whether onnxruntime imports here (it has no build for 32-bit ARM, among others).
    Imports it: ~0.2 s the first time."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def digits_bundle(backend: str | None = None) -> Path:
    """The digits bundle for `backend` ("onnx" or "tflite"), or for this machine when None:
    the ONNX one if onnxruntime imports, else the TFLite one."""
    if backend is None:
        backend = "onnx" if onnxruntime_available() else "tflite"
    if backend not in DIGITS_BUNDLES:
        raise ValueError(f"backend is {backend!r}, expected one of {sorted(DIGITS_BUNDLES)}")
    return DIGITS_BUNDLES[backend]


def load_digits_test() -> tuple[np.ndarray, np.ndarray]:
    """The digits test split: x float32 (N, 1, 28, 28) = uint8 pixels / 255, y int64 (N,)."""
    with np.load(DIGITS_TEST, allow_pickle=False) as z:
        x = z["x"].astype(np.float32) * np.float32(z["x_scale"])
        return x, z["y"].astype(np.int64)


__all__ = ["DIGITS_BUNDLE", "DIGITS_BUNDLES", "DIGITS_TEST", "DIGITS_TFLITE_BUNDLE",
           "digits_bundle", "load_digits_test", "onnxruntime_available"]
