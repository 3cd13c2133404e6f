"""Segment backends: run one segment of a bundle on the device or the server.

Every backend implements the same small protocol::

    seg = open_segment(bundle, 0, threads=1)
    outputs = seg.run({"data_0": image})      # dict name -> np.ndarray, in and out
    seg.run(inputs, cancel=token)             # Cancelled once another thread cancels

`onnx` uses onnxruntime (a core dependency); `tflite` uses ai_edge_litert, or
tflite_runtime, from the `tflite` extra. The device and the edge server run a bundle with
the same backend (`backend_runtime` says which, and which version is installed here;
`require_runtime` fails early, naming the extra, when it is missing).

Every file of a bundle opened here is checked against the manifest (`check_io`): the
tensors it reads and writes, with their shapes and dtypes as the runtime reports them, are
the ones the manifest declares for it, so a manifest edited to disagree with its files (a
cut or output shape, segments swapped) is a BundleError naming the file and the tensor at
open time, not a wrong answer or a KeyError at the first frame. `check_files` opens every
file once for that (what `edgesdk info` and `edgesdk serve` do before anything runs).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..bundle import FP32, MANIFEST, Bundle, Manifest
from ..errors import BundleError

# backend -> (runtime name, [(import name, distribution name)] in order of preference)
RUNTIMES: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "onnx": ("onnxruntime", (("onnxruntime", "onnxruntime"),)),
    "tflite": ("LiteRT", (("ai_edge_litert", "ai-edge-litert"),
                          ("tflite_runtime", "tflite-runtime"))),
}


class Cancelled(Exception):
    """A run stopped because its Cancel token was cancelled; `ms`: how long it had run
    (set by the caller that timed it, else 0)."""

    ms: float = 0.0


class Cancel:
    """Stops a run from another thread: `cancel()` makes the run it was given to raise
    Cancelled. onnxruntime stops between two nodes of the graph (RunOptions.terminate,
    checked by its executor before each node); a backend that cannot be interrupted
    (LiteRT's invoke) finishes the segment it is in and stops before the next."""

    def __init__(self) -> None:
        self.cancelled = False
        self._options: Any = None

    def cancel(self) -> None:
        # set first, read second: with ort_options' order, one of the two sees the other
        self.cancelled = True
        options = self._options
        if options is not None:
            options.terminate = True

    def ort_options(self) -> Any:
        """The onnxruntime RunOptions that carry this token into a run."""
        if self._options is None:
            import onnxruntime

            options = onnxruntime.RunOptions()
            self._options = options
            if self.cancelled:
                options.terminate = True
        return self._options

    def check(self) -> None:
        """Cancelled if it has been cancelled (where a backend cannot stop a run)."""
        if self.cancelled:
            raise Cancelled


@runtime_checkable
class Segment(Protocol):
    """One runnable segment: named float/int tensors in, named tensors out; a run given a
    Cancel token raises Cancelled once it is cancelled."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def run(self, inputs: Mapping[str, np.ndarray], cancel: Cancel | None = None
            ) -> dict[str, np.ndarray]: ...


def open_file(bundle: Bundle, path: str | os.PathLike, threads: int = 1,
              **options) -> Segment:
    """Open one model file of `bundle` (a segment, or a model-provided exit branch) with
    the bundle's backend runtime. The backend module is imported here, on first use.
    A file the manifest lists is checked against it (`check_io`)."""
    if bundle.backend == "onnx":
        from .onnx import OnnxSegment

        seg: Segment = OnnxSegment(path, threads=threads, **options)
    else:
        from .tflite import TfliteSegment

        seg = TfliteSegment(path, threads=threads, **options)
    check_io(bundle, path, seg)
    return seg


def _roles(manifest: Manifest, file: str) -> list[tuple[str, tuple, tuple, bool]]:
    """What the manifest says the file `file` is: [(field, inputs, outputs, exact)], where
    exact means it writes exactly `outputs` (an exit branch may write more)."""
    roles = [(f"segments[{i}]", s.inputs, s.outputs, True)
             for i, s in enumerate(manifest.segments) if s.file == file]
    roles += [(f"versions[{j}] ({v.name}).segments[{i}]", s.inputs, s.outputs, True)
              for j, v in enumerate(manifest.versions)
              for i, s in enumerate(v.segments) if s is not None and s.file == file]
    if manifest.whole is not None and manifest.whole.file == file:
        roles.append(("whole", manifest.whole.inputs, manifest.whole.outputs, False))
    roles += [(f"exits[{j}]", e.inputs, (e.output.name,), False)
              for j, e in enumerate(manifest.exits) if e.file == file and e.kind == "model"]
    return roles


def _specs(manifest: Manifest) -> dict[str, list]:
    """{tensor name: [(where in the manifest, TensorSpec)]} of every tensor the manifest
    gives a shape: model inputs and outputs, cut tensors, exit outputs."""
    found: dict[str, list] = {}
    named = [(f"inputs[{j}]", t) for j, t in enumerate(manifest.inputs)]
    named += [(f"outputs[{j}]", t) for j, t in enumerate(manifest.outputs)]
    named += [(f"cuts[{i}] ({c.id}).tensors[{j}]", t) for i, c in enumerate(manifest.cuts)
              for j, t in enumerate(c.tensors)]
    named += [(f"exits[{j}] ({e.name}).output", e.output) for j, e in enumerate(manifest.exits)]
    for where, t in named:
        found.setdefault(t.name, []).append((where, t))
    return found


def _shape_text(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def check_io(bundle: Bundle, path: str | os.PathLike, seg: Segment) -> None:
    """BundleError unless the opened file `path` of `bundle` reads and writes the tensors
    the manifest lists for it, with the manifest's shapes and dtypes (model inputs and
    outputs, cut tensors, exit outputs) as the runtime declares them. The error names the
    file, the tensor, the manifest's value and the file's. A file the manifest does not
    list, or a segment object that cannot say what it declares, is not checked."""
    declared = getattr(seg, "declared", None)
    roles = _roles(bundle.manifest, Path(path).name)
    if declared is None or not roles:
        return
    ins, outs = declared()
    where = bundle.path / MANIFEST
    specs = _specs(bundle.manifest)
    for field, inputs, outputs, exact in roles:
        if set(ins) != set(inputs):
            raise BundleError(f"{path}: the file reads {sorted(ins)}, but {field}.inputs in "
                              f"{where} is {list(inputs)}: it is not the file of {field} "
                              "(swapped or replaced?)")
        missing = [n for n in outputs if n not in outs]
        extra = sorted(set(outs) - set(outputs)) if exact else []
        if missing or extra:
            raise BundleError(f"{path}: the file writes {sorted(outs)}, but {field}.outputs "
                              f"in {where} is {list(outputs)}: it is not the file of {field} "
                              "(swapped or replaced?)")
        for name in (*inputs, *outputs):
            shape, dtype = ins[name] if name in ins else outs[name]
            for spec_where, spec in specs.get(name, ()):
                same = len(shape) == len(spec.shape) and all(
                    d is None or d == s for d, s in zip(shape, spec.shape))
                if not same:
                    raise BundleError(f"{path}: tensor {name!r} has shape {_shape_text(shape)} "
                                      f"in the file, but {spec_where}.shape in {where} is "
                                      f"{list(spec.shape)}")
                if dtype != spec.dtype:
                    raise BundleError(f"{path}: tensor {name!r} is {dtype} in the file, but "
                                      f"{spec_where}.dtype in {where} is {spec.dtype}")


def check_files(bundle: Bundle, segments: bool = True, whole: bool = True,
                exits: bool = True, versions: bool = True) -> list[str]:
    """Open every segment file (and its model versions', the whole-model file and
    model-provided exit branches) once, unoptimized, to check each against the manifest
    (`check_io`); returns the files checked. The sessions are dropped. MissingDependency
    when the runtime is missing."""
    m = bundle.manifest
    files = [s.file for s in m.segments] if segments else []
    if versions:
        files += [s.file for v in m.versions for s in v.segments if s is not None]
    if whole and m.whole is not None:
        files.append(m.whole.file)
    if exits:
        files += [e.file for e in m.exits if e.kind == "model"]
    # onnxruntime opens faster without graph optimizations; LiteRT has no such cost
    options = {"optimize": False} if bundle.backend == "onnx" else {}
    for file in files:
        open_file(bundle, bundle.path / file, threads=1, **options)
    return files


def open_segment(bundle: Bundle, index: int, threads: int = 1, version: str = FP32,
                 **options) -> Segment:
    """Open segment `index` of `bundle` (in model `version`) with its backend's runtime."""
    if not 0 <= index < len(bundle.segments):
        raise BundleError(f"{bundle.path}: no segment {index}; it has {len(bundle.segments)}")
    return open_file(bundle, bundle.segment_path(index, version), threads, **options)


def open_segments(bundle: Bundle, threads: int = 1, version: str = FP32, **options
                  ) -> list[Segment]:
    """All segments of `bundle` (in model `version`), in order."""
    return [open_segment(bundle, i, threads, version, **options)
            for i in range(len(bundle.segments))]


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


__all__ = ["RUNTIMES", "Cancel", "Cancelled", "Segment", "backend_runtime", "check_files",
           "check_io", "open_file", "open_segment", "open_segments", "require_runtime", "run_chain"]
