"""The device side of a frame: input checks, the head segments, the exit cascade, and
finishing locally. Timed per segment, so the engine can track the device's slowdown.

Exits run in cascade order (by segment, then manifest order; calibration stored it as
"order"), the same order `edgesdk.policy.model_profile` counts them in: a plan with
`n_exits = m` evaluates the first m calibrated exits and no others.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..bundle import FP32, Bundle, ExitSpec
from ..errors import InputError
from ..exits import ExitRule, exit_runner, ordered_exits
from ..runtime import Cancel, Cancelled, Segment, open_file, open_segment, open_segments


def _timed_run(seg: Segment, feed: dict[str, np.ndarray], env: dict[str, np.ndarray],
               cancel: Cancel | None) -> float:
    """Run `seg` on `feed` into `env`; its milliseconds. A cancelled run raises
    Cancelled with the milliseconds it ran (`ms`), and leaves env as it was."""
    t0 = time.perf_counter()
    try:
        # a Segment of the user's may not take a token: one is passed only when there is one
        env.update(seg.run(feed) if cancel is None else seg.run(feed, cancel))
    except Cancelled as exc:
        exc.ms = (time.perf_counter() - t0) * 1e3
        raise
    return (time.perf_counter() - t0) * 1e3


@dataclass(frozen=True)
class ExitAnswer:
    """An exit's verdict on one frame (fired or not: an unfired one is still an answer)."""

    name: str
    order: int
    fires: bool
    confidence: float
    output: np.ndarray


class _Exit:
    def __init__(self, bundle: Bundle, spec: ExitSpec, order: int, threads: int) -> None:
        self.spec = spec
        self.order = order
        self.rule = ExitRule.from_calibration(spec.calibration, spec.name)
        self.run = exit_runner(bundle, spec, threads)

    def answer(self, env: Mapping[str, np.ndarray]) -> ExitAnswer:
        out = np.asarray(self.run(env))
        d = self.rule.decide(out)
        return ExitAnswer(self.spec.name, self.order, d.fires, d.confidence, out)


class LocalRunner:
    """Segments and calibrated exits of a bundle, opened in this process: what the Engine
    runs locally (its head segments, the exit cascade, a local finish)."""

    def __init__(self, bundle: Bundle, threads: int = 1) -> None:
        self.bundle = bundle
        self.segments = open_segments(bundle, threads=threads)
        self._versions: dict[str, list[Segment]] = {}  # other model versions: add_versions
        calibrated = []
        for _, e in ordered_exits(bundle):
            if "coverage" not in e.calibration or "measure" not in e.calibration:
                break  # uncalibrated: the cascade stops here (as model_profile counts it)
            calibrated.append(e)
        self.exits = [_Exit(bundle, e, k, threads) for k, e in enumerate(calibrated)]
        self.inputs = bundle.manifest.inputs
        self.outputs = tuple(t.name for t in bundle.manifest.outputs)
        # The whole model in one file (Manifest.whole), opened now: opening it on the first
        # frame that stays here would put a session's load time (~100 ms) into that
        # frame, which is typically the first one after the server failed.
        whole = bundle.manifest.whole
        self._whole: Segment | None = (open_file(bundle, bundle.path / whole.file, threads)
                                       if whole is not None else None)
        self._warm_up()

    def _warm_up(self) -> None:
        """Run every session once, now: a runtime's first run allocates its buffers and
        packs its weights (tens to hundreds of ms), and the first frame to need a session
        that offloading had never used (the tail, after the server failed) would pay it
        past its deadline. Then run the segments and the whole model once more, timed:
        `warm_ms` (segment index, ms) and `warm_whole_ms` are this device's first speed
        samples, before any frame (a profile made on another machine can be 100x off)."""
        env = {t.name: np.zeros(t.shape, t.dtype) for t in self.inputs}
        for i in range(len(self.segments)):
            self.run_segment(i, env)
            for e in self.exits:
                if e.spec.after_segment == i:
                    e.answer(env)
        if self._whole is not None:
            self.run_whole(env)
        self.warm_ms = [(i, self.run_segment(i, env)) for i in range(len(self.segments))]
        self.warm_whole_ms = self.run_whole(env) if self._whole is not None else None

    def feed(self, x: Any) -> dict[str, np.ndarray]:
        """The model inputs from `x`: an array for a single-input model, or a mapping of
        input name to array. Shapes must match the bundle exactly (a missing batch dim of
        1 is added); for a float input, any real numbers (floats, ints, bools: a uint8
        image too, unscaled) are cast to its dtype, and NaN/inf are rejected; other inputs
        take their own dtype only."""
        if isinstance(x, Mapping):
            given = dict(x)
        elif len(self.inputs) == 1:
            given = {self.inputs[0].name: x}
        else:
            raise InputError(f"the model has {len(self.inputs)} inputs "
                             f"{[t.name for t in self.inputs]}; pass a dict of arrays")
        names = [t.name for t in self.inputs]
        extra = sorted(set(given) - set(names))
        missing = [n for n in names if n not in given]
        if extra or missing:
            raise InputError(f"inputs {sorted(given)} do not match the model's {names}")
        feed = {}
        for spec in self.inputs:
            if given[spec.name] is None:
                raise InputError(f"input {spec.name!r} is None, expected an array of shape "
                                 f"{list(spec.shape)}")
            arr = np.asarray(given[spec.name])
            if arr.shape != spec.shape and (1,) + arr.shape == spec.shape:
                arr = arr[None]
            if arr.shape != spec.shape:
                raise InputError(f"input {spec.name!r} has shape {list(arr.shape)}, expected "
                                 f"{list(spec.shape)}")
            if arr.dtype.kind == "f" or spec.dtype.startswith("float"):
                if arr.dtype.kind not in "fiub":
                    raise InputError(f"input {spec.name!r} has dtype {arr.dtype}, expected "
                                     f"{spec.dtype}")
                arr = arr.astype(spec.dtype, copy=False)
                if not np.all(np.isfinite(arr)):
                    raise InputError(f"input {spec.name!r} has NaN or infinite values")
            elif str(arr.dtype) != spec.dtype:
                raise InputError(f"input {spec.name!r} has dtype {arr.dtype}, expected "
                                 f"{spec.dtype}")
            feed[spec.name] = np.require(arr, requirements="C")  # keeps a scalar 0-d
        return feed

    def add_versions(self, names: Iterable[str], threads: int = 1) -> None:
        """Open (and warm up) the segments of model versions `names` (the bundle's, such
        as "int8"), which run_segment then runs when asked for them."""
        env = {t.name: np.zeros(t.shape, t.dtype) for t in self.inputs}
        for name in names:
            if name in self._versions:
                continue
            spec = self.bundle.manifest.version(name)
            # a segment the version kept in fp32 is the fp32 session, not a second copy
            self._versions[name] = [
                fp32 if own is None else open_segment(self.bundle, i, threads, name)
                for i, (fp32, own) in enumerate(zip(self.segments, spec.segments))]
            for i in range(len(self.segments)):
                self.run_segment(i, env, name)

    @property
    def versions(self) -> tuple[str, ...]:
        """The model versions opened here besides fp32 (add_versions)."""
        return tuple(self._versions)

    def run_segment(self, index: int, env: dict[str, np.ndarray], version: str = FP32,
                    cancel: Cancel | None = None) -> float:
        """Run segment `index` (of model `version`) on `env` (updated in place); returns its
        milliseconds. Cancelled (env unchanged) once `cancel` is cancelled."""
        seg = self.segments[index] if version == FP32 else self._versions[version][index]
        return _timed_run(seg, {n: env[n] for n in seg.inputs}, env, cancel)

    @property
    def whole(self) -> Segment | None:
        """The whole-model file's session (None when the bundle has none)."""
        return self._whole

    def run_whole(self, env: dict[str, np.ndarray], cancel: Cancel | None = None) -> float:
        """Run the whole model file on `env` (updated in place with the model outputs);
        returns its milliseconds. One session runs at the unsplit model's speed, where a
        chain of segments loses fused kernels and layout at every cut."""
        assert self._whole is not None, "the bundle has no whole-model file"
        return _timed_run(self._whole, {t.name: env[t.name] for t in self.inputs}, env, cancel)

    def exits_after(self, index: int, n_exits: int) -> list[_Exit]:
        """The first-n_exits exits that read the tensors of segment `index`."""
        return [e for e in self.exits[:n_exits] if e.spec.after_segment == index]
