"""Running a bundle's exits on the device: each exit as a function of the tensors so far,
in cascade order. What the engine and the offline tools share (no data files, no plots).

    for index, spec in ordered_exits(bundle):
        run = exit_runner(bundle, spec, threads=1)
        logits = run(env)              # env: every tensor computed so far, by name

An exit is either a head trained by `edgesdk exits train` (kind "head": a numpy Head) or a
branch of the source model cut out by `edgesdk split --exit` (kind "model": a file run by
the bundle's runtime, opened with edgesdk.runtime.open_file).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from ..bundle import Bundle, ExitSpec
from .heads import Head


def exit_runner(bundle: Bundle, spec: ExitSpec, threads: int = 1
                ) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    """A function env -> exit outputs (1, classes) for one exit of the bundle."""
    path = bundle.path / spec.file
    if spec.kind == "head":
        head = Head.load(path)
        return lambda env: head(*(env[n] for n in spec.inputs))
    from ..runtime import open_file  # onnxruntime/LiteRT: only for model-provided exits

    seg = open_file(bundle, path, threads)
    return lambda env: seg.run({n: env[n] for n in spec.inputs})[spec.output.name]


def ordered_exits(bundle: Bundle) -> list[tuple[int, ExitSpec]]:
    """Exits in cascade order: by segment, then as listed in the manifest."""
    return sorted(enumerate(bundle.exits), key=lambda ie: (ie[1].after_segment, ie[0]))


__all__ = ["exit_runner", "ordered_exits"]
