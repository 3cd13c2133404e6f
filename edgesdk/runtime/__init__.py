"""Segment backends: run one segment of a bundle on the device or the server.

Every backend implements the same small protocol::

    seg = open_segment(bundle, 0, threads=1)
    outputs = seg.run({"data_0": image})      # dict name -> np.ndarray, in and out

`onnx` uses onnxruntime (a core dependency); `tflite` uses ai_edge_litert, or
tflite_runtime, from the `tflite` extra.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np

from ..bundle import Bundle
from ..errors import BundleError


@runtime_checkable
class Segment(Protocol):
    """One runnable segment: named float/int tensors in, named tensors out."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def open_file(bundle: Bundle, path: str | os.PathLike, threads: int = 1,
              **options) -> Segment:
    """Open one model file of `bundle` (a segment, or a model-provided exit branch) with
    the bundle's backend runtime. The backend module is imported here, on first use."""
    if bundle.backend == "onnx":
        from .onnx import OnnxSegment

        return OnnxSegment(path, threads=threads, **options)
    from .tflite import TfliteSegment

    return TfliteSegment(path, threads=threads, **options)


def open_segment(bundle: Bundle, index: int, threads: int = 1, **options) -> Segment:
    """Open segment `index` of `bundle` with its backend's runtime."""
    if not 0 <= index < len(bundle.segments):
        raise BundleError(f"{bundle.path}: no segment {index}; it has {len(bundle.segments)}")
    return open_file(bundle, bundle.segment_path(index), threads, **options)


def open_segments(bundle: Bundle, threads: int = 1, **options) -> list[Segment]:
    """All segments of `bundle`, in order."""
    return [open_segment(bundle, i, threads, **options) for i in range(len(bundle.segments))]


def run_chain(segments: list[Segment], inputs: Mapping[str, np.ndarray],
              start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
    """Run segments[start:stop] in order; returns every tensor available at the end."""
    env = dict(inputs)
    for seg in segments[start:stop]:
        env.update(seg.run({name: env[name] for name in seg.inputs}))
    return env


__all__ = ["Segment", "open_file", "open_segment", "open_segments", "run_chain"]
