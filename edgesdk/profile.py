"""Measure what the policy needs to know about a device: how long each segment takes.

    segments = open_segments(bundle, threads=1)          # edgesdk.runtime
    inputs = seeded_inputs(bundle.manifest.inputs)
    profile = profile_segments(segments, inputs, runs=50, warmup=5, threads=1)
    profile["segments"][2]["median_ms"], profile["total_median_ms"]
    bundle = bundle.with_profile(default_device(), profile)   # what `edgesdk profile` does

Method. The chain runs `warmup` times untimed (first runs pay for allocation and lazy
initialisation), then `runs` times timed. In each run every segment is fed the outputs of
the earlier ones, as on the device, and timed on its own with `time.perf_counter_ns`;
garbage collection is off while a run is timed, so a collection does not land in one
segment's time. A segment's latency is summarised by the median over runs (robust to a
burst of load from another process) and the 90th percentile (what a deadline must allow).
The prefix latencies (segments 0..i) are summarised per run too, because the median of a
sum is not the sum of the medians.

This module takes segments duck-typed (anything with `inputs` and `run(dict) -> dict`) and
never imports edgesdk.runtime, so it sits below the runtime in the dependency order. The
live bandwidth and RTT estimators of the device-edge link will live here too.

A profile is a JSON-ready dict stored in the manifest under a device name::

    {"segments": [{"index", "file", "median_ms", "p90_ms", "mean_ms", "min_ms", "max_ms",
                   "prefix_median_ms"}, ...],
     "total_median_ms", "total_p90_ms", "runs", "warmup", "threads", "seed",
     "host": {"machine", "platform", "cpu", "cpu_count", "python", "onnxruntime",
              "ai_edge_litert", "tflite_runtime"},
     "time": "2025-01-31T12:00:00Z"}
"""

from __future__ import annotations

import gc
import os
import platform
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from typing import Any, Protocol

import numpy as np

from .bundle import TensorSpec
from .errors import BundleError

__all__ = ["default_device", "host_info", "profile_segments", "seeded_inputs"]


class _Runnable(Protocol):
    inputs: tuple[str, ...]

    def run(self, inputs: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]: ...


# -- inputs and host -----------------------------------------------------------------------


def default_device() -> str:
    """The device name profiles are stored under unless one is given: the host name."""
    try:
        name = socket.gethostname().strip()
    except OSError:
        name = ""
    return name or "default"


def seeded_inputs(specs: Iterable[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Reproducible inputs for the tensor specs of a bundle (`bundle.manifest.inputs`):
    standard normal floats, small non-negative ints (safe as indices), random bools."""
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            feed[spec.name] = rng.standard_normal(spec.shape).astype(dtype)
        elif dtype.kind == "b":
            feed[spec.name] = rng.integers(0, 2, spec.shape).astype(dtype)
        else:
            feed[spec.name] = rng.integers(0, 4, spec.shape).astype(dtype)
    return feed


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("model name", "Hardware", "Processor")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def host_info() -> dict[str, Any]:
    """What a latency number depends on besides the model: CPU, OS, runtime versions."""
    return {
        "machine": platform.machine(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": _version("onnxruntime"),
        "ai_edge_litert": _version("ai-edge-litert"),  # the tflite backends; None: absent
        "tflite_runtime": _version("tflite-runtime"),
    }


# -- latency profiler ----------------------------------------------------------------------


def _summary_ms(ns: np.ndarray) -> dict[str, float]:
    ms = ns.astype(np.float64) / 1e6

    def r(v: float) -> float:
        return round(float(v), 4)

    return {"median_ms": r(np.median(ms)), "p90_ms": r(np.percentile(ms, 90)),
            "mean_ms": r(ms.mean()), "min_ms": r(ms.min()), "max_ms": r(ms.max())}


def _run_chain_timed(segments: Sequence[_Runnable], inputs: Mapping[str, np.ndarray],
                     out: np.ndarray | None) -> None:
    """One pass over the chain; per-segment nanoseconds into `out` (None: warm-up)."""
    env = dict(inputs)
    for i, seg in enumerate(segments):
        missing = [n for n in seg.inputs if n not in env]
        if missing:
            raise BundleError(f"segment {i} reads {missing}, which no earlier segment "
                              f"produced and is not an input; have {sorted(env)}")
        feed = {n: env[n] for n in seg.inputs}
        t0 = time.perf_counter_ns()
        result = seg.run(feed)
        t1 = time.perf_counter_ns()
        env.update(result)
        if out is not None:
            out[i] = t1 - t0


def profile_segments(
    segments: Sequence[_Runnable],
    inputs: Mapping[str, np.ndarray],
    runs: int = 50,
    warmup: int = 5,
    threads: int | None = None,
    files: Sequence[str] | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Latency of each segment of a chain, run as on the device (see the module docstring).

    threads, files, seed: recorded in the profile (this function cannot know them from
    duck-typed segments). Returns the JSON-ready profile dict.
    """
    if not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs is {runs!r}, expected an int >= 1")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup is {warmup!r}, expected an int >= 0")
    if not segments:
        raise ValueError("no segments to profile")
    if files is not None and len(files) != len(segments):
        raise ValueError(f"{len(files)} file names for {len(segments)} segments")

    for _ in range(warmup):
        _run_chain_timed(segments, inputs, None)
    ns = np.zeros((runs, len(segments)), dtype=np.int64)
    gc_was_enabled = gc.isenabled()
    try:
        for r in range(runs):
            gc.disable()
            _run_chain_timed(segments, inputs, ns[r])
            if gc_was_enabled:  # collect between runs, never inside one
                gc.enable()
    finally:
        if gc_was_enabled:
            gc.enable()

    prefix = np.cumsum(ns, axis=1)
    per_segment = []
    for i in range(len(segments)):
        entry: dict[str, Any] = {"index": i}
        if files is not None:
            entry["file"] = str(files[i])
        entry.update(_summary_ms(ns[:, i]))
        entry["prefix_median_ms"] = _summary_ms(prefix[:, i])["median_ms"]
        per_segment.append(entry)
    total = _summary_ms(prefix[:, -1])
    return {
        "segments": per_segment,
        "total_median_ms": total["median_ms"],
        "total_p90_ms": total["p90_ms"],
        "runs": runs,
        "warmup": warmup,
        "threads": threads,
        "seed": seed,
        "host": host_info(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
