"""Models shipped with edgesdk (package data); see README.md here for their provenance.

    from edgesdk.models import DIGITS_BUNDLE, load_digits_test
    bundle = Bundle.load(DIGITS_BUNDLE)     # a multi-exit CNN, calibrated exits, 4 segments
    x, y = load_digits_test()               # 750 test digits, float32 (N, 1, 28, 28) in [0, 1]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DIGITS_BUNDLE = HERE / "digits.edge"
DIGITS_TEST = HERE / "digits_test.npz"


def load_digits_test() -> tuple[np.ndarray, np.ndarray]:
    """The digits test split: x float32 (N, 1, 28, 28) = uint8 pixels / 255, y int64 (N,)."""
    with np.load(DIGITS_TEST, allow_pickle=False) as z:
        x = z["x"].astype(np.float32) * np.float32(z["x_scale"])
        return x, z["y"].astype(np.int64)


__all__ = ["DIGITS_BUNDLE", "DIGITS_TEST", "load_digits_test"]
