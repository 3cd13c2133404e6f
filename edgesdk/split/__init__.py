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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bundle import Bundle, TensorSpec, check_output_kinds
from ..errors import BundleError, SplitError  # SplitError: re-exported here


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


DEFAULT_MAX_POINTS = 16  # keeps the policy's candidate table small on any model


def choose_cuts(candidates: list[CutCandidate], max_points: int | None = None,
                input_bytes: int | None = None, stages: int = 0) -> list[CutCandidate]:
    """The cut points worth keeping, in execution order: at most `max_points` (default
    DEFAULT_MAX_POINTS).

    Only useful cuts survive: the Pareto front of (flops_before, bytes). A cut is dropped
    when another one is no larger on the wire and costs no more compute before it (up to
    1 % of the total): offloading there is never worse for the device. Dense and inception
    blocks make hundreds of such candidates (a cut after each BatchNorm carries the same
    bytes as the one after its conv). Sending the model input (`input_bytes` at fp32, no
    compute at all) dominates every cut larger than it. With more front cuts than
    `max_points`, the front is thinned to the smallest cut near each of evenly spaced
    fractions of the compute.

    stages=N >= 2 also keeps, for each k < N, the smallest cut near k/N of the compute,
    whatever its size: where a chain of N devices hands a frame on (edgesdk.policy.chain).
    Such a cut may carry more than the input and never pay for a two-tier offload, but on
    a LAN between cameras it balances a pipeline the front alone cannot (PP-OCRv4's
    recognizer: 92 % of its compute before the first front cut). They count against
    `max_points`.
    """
    if max_points is None:
        max_points = DEFAULT_MAX_POINTS
    if max_points < 1:
        raise SplitError(f"max_points is {max_points}, expected >= 1")
    if not (isinstance(stages, int) and stages >= 0):
        raise SplitError(f"stages is {stages!r}, expected an int >= 0")
    balancing = _balancing(candidates, stages)[:max_points]
    if input_bytes is not None:
        candidates = [c for c in candidates if c.bytes <= input_bytes]
    front = [c for c in _pareto_front(sorted(candidates, key=lambda c: c.position))
             if c not in balancing]
    room = max_points - len(balancing)
    chosen = _spread(front, room) if len(front) > room else front
    return sorted(set(chosen) | set(balancing), key=lambda c: c.position)


def _balancing(candidates: list[CutCandidate], stages: int) -> list[CutCandidate]:
    """For each k in 1..stages-1, the smallest cut within a quarter of a stage's compute
    of k/stages (the nearest one where none is that close)."""
    chosen: list[CutCandidate] = []
    for k in range(1, stages):
        target, window = k / stages, 0.25 / stages
        left = [c for c in candidates if c not in chosen]
        if not left:
            break
        chosen.append(_smallest_near(left, target, window))
    return chosen


def _smallest_near(cuts: list[CutCandidate], target: float, window: float) -> CutCandidate:
    """The smallest of `cuts` within `window` of compute fraction `target`, else the
    nearest to it."""
    near = [c for c in cuts if abs(c.flops_fraction - target) <= window]
    return (min(near, key=lambda c: (c.bytes, abs(c.flops_fraction - target))) if near
            else min(cuts, key=lambda c: abs(c.flops_fraction - target)))


def sendable_input_bytes(inputs: Sequence[TensorSpec]) -> int | None:
    """The model input's size at fp32 when the device can send it instead of a cut (every
    input a float tensor, as bundle.input_cut requires), else None: token ids or a uint8
    image cannot be offloaded as they are, so no cut is dominated by sending them."""
    if all(t.dtype in ("float32", "float16") for t in inputs):
        return sum(t.fp32_bytes for t in inputs)
    return None


def check_split_options(verify: bool, data: Any, tolerance: float) -> None:
    """Options that contradict each other, refused before any work."""
    if data is not None and not verify:
        raise SplitError("--data verifies the split on your samples; it cannot go with "
                         "--no-verify")
    if not tolerance > 0:
        raise SplitError(f"tolerance is {tolerance!r}, expected a number > 0")


def declared_kinds(kinds: Mapping[str, str] | None, outputs: Sequence[TensorSpec],
                   where: Path) -> dict[str, str]:
    """The declared output kinds checked against the model's outputs, before any file is
    written (a typo must not cost a whole split)."""
    try:
        return check_output_kinds(kinds or {}, tuple(outputs), str(where))
    except BundleError as exc:
        raise SplitError(str(exc)) from None


def no_cut_note(candidates: list[CutCandidate], chosen: list[CutCandidate]) -> list[str]:
    """What to tell a user whose model kept no cut point at all."""
    if chosen or not candidates:
        return []
    return [f"none of the {len(candidates)} candidate cuts is smaller than the model input: "
            "the device runs the whole model or sends its input (--cut T forces a cut)"]


def _pareto_front(cuts: list[CutCandidate], slack: float = 0.01) -> list[CutCandidate]:
    """Cuts that no other cut beats on bytes without costing more than `slack` of the total
    compute before it: a pooling layer right after a conv makes the conv's output useless."""
    total = max((c.flops_before + c.flops_after for c in cuts), default=0)

    def beats(d: CutCandidate, c: CutCandidate) -> bool:
        return ((d.bytes <= c.bytes and d.flops_before < c.flops_before)
                or (d.bytes < c.bytes and d.flops_before <= c.flops_before + slack * total))

    return [c for c in cuts if not any(beats(d, c) for d in cuts)]


def _spread(pool: list[CutCandidate], count: int) -> list[CutCandidate]:
    """`count` cuts from `pool`: for each of `count` evenly spaced compute fractions, the
    smallest cut within a quarter spacing of it, else the nearest one."""
    chosen: list[CutCandidate] = []
    for k in range(count):
        target, window = (k + 0.5) / count, 0.25 / count
        # not a cut already chosen, nor one as large at (almost) the same compute
        left = [c for c in pool if not any(
            d.bytes <= c.bytes and abs(d.flops_fraction - c.flops_fraction) < 0.01
            for d in chosen)]
        if not left:
            break
        chosen.append(_smallest_near(left, target, window))
    return chosen


def split_model(model: str | os.PathLike, out: str | os.PathLike, *,
                output_kinds: Mapping[str, str] | None = None, **options) -> Bundle:
    """Split an .onnx or .tflite file into a verified bundle at `out` (see the backends).
    output_kinds: {output name: kind} for outputs whose kind their shape does not tell
    (see edgesdk.bundle.OUTPUT_KINDS), stored in the manifest."""
    path = Path(model)
    if not path.is_file():
        raise SplitError(f"{path}: model file not found")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from .onnx import split_onnx as split
    elif suffix == ".tflite":
        from .tflite import split_tflite as split
    else:
        raise SplitError(f"{path}: unknown model type {suffix!r}; expected .onnx or .tflite")
    return split(path, out, output_kinds=output_kinds, **options)


__all__ = ["DEFAULT_MAX_POINTS", "CutCandidate", "SplitError", "check_split_options",
           "choose_cuts", "declared_kinds", "no_cut_note", "sendable_input_bytes",
           "split_model"]
