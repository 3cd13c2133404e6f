"""Segment backends: run one segment of a bundle on the device or the server.

Every backend implements the same small protocol::

    seg = open_segment(bundle, 0, threads=1)
    outputs = seg.run({"data_0": image})      # dict name -> np.ndarray, in and out

`onnx` uses onnxruntime (a core dependency); `tflite` uses ai_edge_litert, or
tflite_runtime, from the `tflite` extra. The device and the edge server run a bundle with
the same backend (`backend_runtime` says which, and which version is installed here;
`require_runtime` fails early, naming the extra, when it is missing).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np

from ..bundle import Bundle
from ..errors import BundleError

# backend -> (runtime name, [(import name, distribution name)] in order of preference)
RUNTIMES: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "onnx": ("onnxruntime", (("onnxruntime", "onnxruntime"),)),
    "tflite": ("LiteRT", (("ai_edge_litert", "ai-edge-litert"),
                          ("tflite_runtime", "tflite-runtime"))),
}


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


def backend_runtime(backend: str) -> dict[str, str | None]:
    """What runs `backend` bundles and what is installed here, without importing it:
    {"runtime": "LiteRT", "module": "ai_edge_litert", "version": "2.3.0"}; module and
    version are None when no runtime for it is installed."""
    import importlib.util
    from importlib import metadata

    if backend not in RUNTIMES:
        raise BundleError(f"backend is {backend!r}, expected one of {sorted(RUNTIMES)}")
    name, modules = RUNTIMES[backend]
    for module, dist in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package or sys.modules[module] = None
            found = False
        if found:
            try:
                version: str | None = metadata.version(dist)
            except metadata.PackageNotFoundError:  # e.g. onnxruntime-gpu, or a source tree
                version = None
            return {"runtime": name, "module": module, "version": version}
    return {"runtime": name, "module": None, "version": None}


def require_runtime(backend: str) -> None:
    """Import the runtime of `backend` bundles; edgesdk.errors.MissingDependency, naming
    the extra, if it cannot be imported. The server calls this before it spawns workers,
    so a missing `tflite` extra fails `edgesdk serve` at start, not at the first request."""
    if backend not in RUNTIMES:
        raise BundleError(f"backend is {backend!r}, expected one of {sorted(RUNTIMES)}")
    if backend == "tflite":  # onnxruntime is a core dependency
        from .tflite import runtime

        runtime()


def run_chain(segments: list[Segment], inputs: Mapping[str, np.ndarray],
              start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
    """Run segments[start:stop] in order; returns every tensor available at the end."""
    env = dict(inputs)
    for seg in segments[start:stop]:
        env.update(seg.run({name: env[name] for name in seg.inputs}))
    return env


__all__ = ["RUNTIMES", "Segment", "backend_runtime", "open_file", "open_segment",
           "open_segments", "require_runtime", "run_chain"]
