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
live estimators of the link, the device and the server are in edgesdk.estimators.

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
import math
import os
import platform
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from .bundle import TensorSpec
from .errors import BundleError

__all__ = [
    "default_device",
    "host_info",
    "measure_cut_codec",
    "profile_segments",
    "seeded_inputs",
]


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
    from importlib import metadata  # ~10 ms to import: only when a profile is measured

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


# -- what crossing a cut costs at each bit width ---------------------------------------------


def measure_cut_codec(
    segments: Sequence[_Runnable],
    cuts: Sequence[Any],
    samples: Sequence[Mapping[str, np.ndarray]],
    final_output: str,
    bits: Sequence[int] = (32, 16, 8, 4, 2),
    encode: Any = None,
    decode: Any = None,
    repeats: int = 3,
) -> dict[str, Any]:
    """Wire size, encode time and accuracy cost of every (cut, bits), with the zstd stage
    tried and without it, measured on calibration samples; the dict is meant for
    ``bundle.with_profile(device, {..., "codec": result})`` or a manifest
    ``profiles["codec"]`` entry, which `edgesdk.policy.build_candidates` reads.

    For each cut and bits the cut's tensors are encoded with `edgesdk.codec` (or the given
    `encode(array, bits=, compress=)` / `decode(frames)`) twice, with ``compress="zstd"``
    (the codec keeps the zstd payload only when it is >= 1.1x smaller) and with
    ``compress="none"`` (quantize and pack only), decoded, and the tail segments are run on
    the decoded tensors: the agreement is the fraction of samples whose final argmax
    matches the fp32 run (the entropy stage is lossless, so it is one number for both).
    Encode times are the fastest of `repeats` encodes of each sample, alternating the two
    modes (the first encode of a tensor pays for cold caches), then the median over
    samples. Compression is a decision (policy.candidates), because zstd level 1 costs
    about 10x the quantize-and-pack pass for a ~2x smaller payload on a ReLU map.

    Returns ``{"bits": [...], "samples": n, "cuts": {cut_id: {str(bits): {"bytes",
    "encode_ms", "agreement", "raw_bytes", "raw_encode_ms", "compressed"}}}, "input":
    {...same for the model input...}}``: "bytes"/"encode_ms" with zstd tried (the meaning
    they had before the raw ones were measured, so older readers see the same numbers),
    "raw_*" without, "compressed" the fraction of samples the codec sent compressed. A bit
    width the codec refuses for some sample (e.g. values beyond float16's range) is stored
    as ``{"error": message}``, and the planner leaves it out.
    """
    if encode is None or decode is None:
        from . import codec  # lateral import, only when measuring

        encode, decode = codec.encode, codec.decode
    if not samples:
        raise ValueError("no calibration samples to measure the codec on")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats is {repeats!r}, expected an int >= 1")
    # (name, first segment after the cut, tensor names); the model input is "cut" -1
    points = [("input", 0, tuple(samples[0].keys()))]
    points += [(c.id, c.after_segment + 1, tuple(c.names)) for c in cuts]
    acc: dict[str, dict[str, list]] = {p[0]: {str(b): [] for b in bits} for p in points}
    unusable: dict[str, dict[str, str]] = {p[0]: {} for p in points}  # bits the codec refused
    for feed in samples:
        env = dict(feed)
        envs = [dict(env)]  # envs[i]: tensors available before segment i
        for seg in segments:
            env.update(seg.run({n: env[n] for n in seg.inputs}))
            envs.append(dict(env))
        ref = int(np.argmax(env[final_output]))
        for name, start, names in points:
            arrays = [np.asarray(envs[start][n], np.float32) for n in names]
            for b in bits:
                if str(b) in unusable[name]:
                    continue
                best = {"zstd": math.inf, "none": math.inf}
                sizes = {}
                try:
                    for r in range(repeats):
                        for mode in (("zstd", "none") if r % 2 == 0 else ("none", "zstd")):
                            t0 = time.perf_counter_ns()
                            frames = [encode(a, bits=b, compress=mode) for a in arrays]
                            t1 = time.perf_counter_ns()
                            best[mode] = min(best[mode], (t1 - t0) / 1e6)
                            sizes[mode] = (frames, sum(len(memoryview(f).cast("B"))
                                                       for fr in frames for f in fr))
                except ValueError as exc:  # CodecError, e.g. values beyond float16's range
                    unusable[name][str(b)] = str(exc)
                    continue
                raw_frames = sizes["none"][0]
                tail = dict(envs[start])
                tail.update({n: decode(fr) for n, fr in zip(names, raw_frames)})
                for seg in segments[start:]:
                    tail.update(seg.run({n: tail[n] for n in seg.inputs}))
                agree = int(np.argmax(tail[final_output])) == ref
                acc[name][str(b)].append((sizes["zstd"][1], best["zstd"], agree,
                                          sizes["none"][1], best["none"]))
    out: dict[str, Any] = {"bits": list(bits), "samples": len(samples), "cuts": {}}
    for name, per_bits in acc.items():
        entry: dict[str, Any] = {}
        for b, rows in per_bits.items():
            if b in unusable[name]:
                continue
            col = np.asarray(rows, dtype=np.float64)  # zstd bytes, ms, agree, raw bytes, ms
            entry[b] = {"bytes": round(float(col[:, 0].mean()), 1),
                        "encode_ms": round(float(np.median(col[:, 1])), 4),
                        "agreement": round(float(col[:, 2].mean()), 4),
                        "raw_bytes": round(float(col[:, 3].mean()), 1),
                        "raw_encode_ms": round(float(np.median(col[:, 4])), 4),
                        "compressed": round(float(np.mean(col[:, 0] < col[:, 3])), 4)}
        entry.update({b: {"error": why} for b, why in unusable[name].items()})
        if name == "input":
            out["input"] = entry
        else:
            out["cuts"][name] = entry
    return out
