"""Offline model partitioning: cut a model into consecutive segments and write a bundle.

    from edgesdk.split import split_model
    bundle = split_model("resnet50.onnx", "resnet50.edge", max_points=8)

`split_model` dispatches on the file type to :mod:`edgesdk.split.onnx` (needs the `split`
extra: onnx) or :mod:`edgesdk.split.tflite` (needs the `tflite` extra). Both find every
candidate cut, keep the useful ones (:func:`choose_cuts`), write the segment files and
verify that chaining them reproduces the whole model before the bundle is saved.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..bundle import Bundle, TensorSpec
from ..errors import SplitError  # defined in the one error tree, re-exported here


@dataclass(frozen=True)
class CutCandidate:
    """A place where the model can be cut: after op `position` in execution order, exactly
    `tensors` are live (produced so far and still needed later)."""

    position: int
    tensors: tuple[TensorSpec, ...]
    flops_before: int
    flops_after: int

    @property
    def bytes(self) -> int:
        return sum(t.fp32_bytes for t in self.tensors)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors)

    @property
    def flops_fraction(self) -> float:
        total = self.flops_before + self.flops_after
        return self.flops_before / total if total else 0.0


def choose_cuts(candidates: list[CutCandidate], max_points: int | None) -> list[CutCandidate]:
    """The cut points worth keeping, in execution order.

    Useful cuts are where the activation shrinks, the Pareto front of (flops_before, bytes):
    no other cut is smaller on the wire without costing more compute before it (up to 1 %
    of the total). Useful too are cuts
    that balance compute between device and edge, so the remaining budget goes to the
    smallest cut near each evenly spaced fraction of the compute. With more front cuts
    than `max_points`, the front itself is thinned to evenly spaced fractions.
    """
    if max_points is not None and max_points < 1:
        raise SplitError(f"max_points is {max_points}, expected >= 1")
    ordered = sorted(candidates, key=lambda c: c.position)
    if max_points is None or len(ordered) <= max_points:
        return ordered
    front = _pareto_front(ordered)
    if len(front) >= max_points:
        chosen = _spread(front, max_points, [])
    else:
        chosen = _spread([c for c in ordered if c not in front], max_points - len(front), front)
    return sorted(chosen, key=lambda c: c.position)


def _pareto_front(cuts: list[CutCandidate], slack: float = 0.01) -> list[CutCandidate]:
    """Cuts that no other cut beats on bytes without costing more than `slack` of the total
    compute before it: a pooling layer right after a conv makes the conv's output useless."""
    total = max((c.flops_before + c.flops_after for c in cuts), default=0)

    def beats(d: CutCandidate, c: CutCandidate) -> bool:
        return ((d.bytes <= c.bytes and d.flops_before < c.flops_before)
                or (d.bytes < c.bytes and d.flops_before <= c.flops_before + slack * total))

    return [c for c in cuts if not any(beats(d, c) for d in cuts)]


def _spread(pool: list[CutCandidate], count: int, chosen: list[CutCandidate]
            ) -> list[CutCandidate]:
    """Add `count` cuts from `pool` to `chosen`: for each of `count` evenly spaced compute
    fractions, the smallest cut within a quarter spacing of it, else the nearest one."""
    chosen = list(chosen)
    for k in range(count):
        target, window = (k + 0.5) / count, 0.25 / count
        # not a cut already chosen, nor one as large at (almost) the same compute
        left = [c for c in pool if not any(
            d.bytes <= c.bytes and abs(d.flops_fraction - c.flops_fraction) < 0.01
            for d in chosen)]
        if not left:
            break
        near = [c for c in left if abs(c.flops_fraction - target) <= window]
        chosen.append(min(near, key=lambda c: (c.bytes, abs(c.flops_fraction - target)))
                      if near else min(left, key=lambda c: abs(c.flops_fraction - target)))
    return chosen


def split_model(model: str | os.PathLike, out: str | os.PathLike, **options) -> Bundle:
    """Split an .onnx or .tflite file into a verified bundle at `out` (see the backends)."""
    path = Path(model)
    if not path.is_file():
        raise SplitError(f"{path}: model file not found")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from .onnx import split_onnx

        return split_onnx(path, out, **options)
    if suffix == ".tflite":
        from .tflite import split_tflite

        return split_tflite(path, out, **options)
    raise SplitError(f"{path}: unknown model type {suffix!r}; expected .onnx or .tflite")


__all__ = ["CutCandidate", "SplitError", "choose_cuts", "split_model"]
