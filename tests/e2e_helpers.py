"""The digits bundle as an end-to-end benchmark model (fast: for tests of the harness)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def digits_built(tmp_path: Path, frames: int = 16):
    """A Built for the bundled digits model: its first test digits, their fp32 answers."""
    from edgesdk.bench.e2e_models import Built, ModelSpec
    from edgesdk.bundle import Bundle
    from edgesdk.models import DIGITS_BUNDLE, load_digits_test
    from edgesdk.runtime import open_segments, run_chain

    bundle = Bundle.load(DIGITS_BUNDLE)
    x, y = load_digits_test()
    x = x[:frames].astype(np.float32)
    segs = open_segments(bundle)
    name, out = bundle.manifest.inputs[0].name, bundle.manifest.outputs[0].name
    ref = np.array([[int(np.argmax(run_chain(segs, {name: x[i][None]})[out]))]
                    for i in range(frames)], np.int64)
    path = tmp_path / "digits_frames.npz"
    np.savez(path, x=x, ref=ref, y=y[:frames])
    return Built(ModelSpec("digits", "argmax", "tests"), Path(DIGITS_BUNDLE), path, 0.0,
                 device=next(iter(bundle.manifest.profiles)))
