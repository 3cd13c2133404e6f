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
live estimators of the device-edge link (bandwidth, RTT, device slowdown, server load) are
at the end of the module; they are passive (fed from real traffic) and tell the caller when
an active probe is worth sending.

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
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Protocol

import numpy as np

from .bundle import TensorSpec
from .errors import BundleError, PolicyError

__all__ = [
    "BandwidthEstimator",
    "Estimate",
    "LinkEstimator",
    "RttEstimator",
    "ServerLoadEstimator",
    "SlowdownEstimator",
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
) -> dict[str, Any]:
    """Compressed size, encode time and accuracy cost of every (cut, bits), measured on
    calibration samples; the dict is meant for ``bundle.with_profile(device, {...,
    "codec": result})`` or a manifest ``profiles["codec"]`` entry, which
    `edgesdk.policy.build_candidates` reads.

    For each cut and bits the cut's tensors are encoded with `edgesdk.codec` (or the given
    `encode`/`decode`), decoded, and the tail segments are run on the decoded tensors: the
    agreement is the fraction of samples whose final argmax matches the fp32 run.

    Returns ``{"bits": [...], "samples": n, "cuts": {cut_id: {str(bits): {"bytes",
    "encode_ms", "agreement"}}}, "input": {...same for the model input...}}``. A bit width
    the codec refuses for some sample (e.g. values beyond float16's range) is stored as
    ``{"error": message}``, and the planner leaves it out.
    """
    if encode is None or decode is None:
        from . import codec  # lateral import, only when measuring

        encode, decode = codec.encode, codec.decode
    if not samples:
        raise ValueError("no calibration samples to measure the codec on")
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
            for b in bits:
                if str(b) in unusable[name]:
                    continue
                t0 = time.perf_counter_ns()
                try:
                    frames = [encode(np.asarray(envs[start][n], np.float32), bits=b)
                              for n in names]
                except ValueError as exc:  # CodecError, e.g. values beyond float16's range
                    unusable[name][str(b)] = str(exc)
                    continue
                t1 = time.perf_counter_ns()
                size = sum(len(memoryview(f).cast("B")) for fr in frames for f in fr)
                tail = dict(envs[start])
                tail.update({n: decode(fr) for n, fr in zip(names, frames)})
                for seg in segments[start:]:
                    tail.update(seg.run({n: tail[n] for n in seg.inputs}))
                agree = int(np.argmax(tail[final_output])) == ref
                acc[name][str(b)].append((size, (t1 - t0) / 1e6, agree))
    out: dict[str, Any] = {"bits": list(bits), "samples": len(samples), "cuts": {}}
    for name, per_bits in acc.items():
        entry: dict[str, Any] = {
            b: {"bytes": round(float(np.mean([r[0] for r in rows])), 1),
                "encode_ms": round(float(np.median([r[1] for r in rows])), 4),
                "agreement": round(float(np.mean([r[2] for r in rows])), 4)}
            for b, rows in per_bits.items() if b not in unusable[name]}
        entry.update({b: {"error": why} for b, why in unusable[name].items()})
        if name == "input":
            out["input"] = entry
        else:
            out["cuts"][name] = entry
    return out


# -- live estimators of the link, the device and the server ---------------------------------


@dataclass(frozen=True)
class Estimate:
    """A live estimate: `value` with its standard deviation `std`, from `n` samples, the
    newest `age_s` seconds old (inf: never observed; `value` is then the prior)."""

    value: float
    std: float
    n: int
    age_s: float


def _check_finite(name: str, value: float, minimum: float = 0.0) -> float:
    v = float(value)
    if not math.isfinite(v) or v < minimum:
        raise PolicyError(f"{name} is {value!r}, expected a finite number >= {minimum}")
    return v


class RttEstimator:
    """Round-trip time of the link from small messages (heartbeats, hello, tiny replies).

    `floor_ms` is the minimum over the last `window` samples (propagation plus fixed
    overhead: what a transfer's time is corrected by); `value` is a TCP-style smoothed RTT
    (EWMA, gain 1/8) and `std` its mean deviation (gain 1/4).

        rtt = RttEstimator(); rtt.observe(2.1, now=0.0); rtt.estimate(now=1.0).value
    """

    def __init__(self, window: int = 32, prior_ms: float = 20.0) -> None:
        self._recent: deque[float] = deque(maxlen=window)
        self._srtt: float | None = None
        self._rttvar = prior_ms / 2
        self._prior = prior_ms
        self._last: float | None = None

    def observe(self, rtt_ms: float, now: float) -> None:
        r = _check_finite("rtt_ms", rtt_ms)
        self._recent.append(r)
        if self._srtt is None:
            self._srtt, self._rttvar = r, r / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - r)
            self._srtt = 0.875 * self._srtt + 0.125 * r
        self._last = float(now)

    @property
    def floor_ms(self) -> float:
        return min(self._recent) if self._recent else 0.0

    def estimate(self, now: float) -> Estimate:
        if self._srtt is None:
            return Estimate(self._prior, self._prior, 0, math.inf)
        return Estimate(self._srtt, self._rttvar, len(self._recent), now - self._last)


class BandwidthEstimator:
    """Uplink bandwidth in Mbit/s from real transfers, passively.

    A transfer of `payload_bytes` whose reply came `round_trip_ms` after the send spent
    ``round_trip_ms - server_ms - queue_ms - rtt_floor_ms`` on the wire; its throughput is
    one sample. The estimate is the harmonic mean of the last `k` samples (robust to one
    lucky fast sample, as in MPC-style ABR; an EWMA would lag a step change), and `std` is
    the estimate times the robust spread of the samples' logarithms (1.4826 x their median
    absolute deviation): the planner models bandwidth as lognormal, and one burst sample
    (a small upload through a token bucket's burst) must not make a steady link look
    volatile, as a plain standard deviation did. Transfers whose wire
    time is under `min_wire_ms` say more about timer noise than bandwidth and are ignored.

        bw = BandwidthEstimator()
        bw.observe_transfer(125_000, round_trip_ms=110, server_ms=5, queue_ms=0,
                            rtt_floor_ms=5, now=0.0)     # 1 Mbit in 100 ms: 10 Mbit/s
        bw.estimate(now=0.5).value                      # 10.0
    """

    def __init__(self, k: int = 5, prior_mbps: float = 5.0, min_wire_ms: float = 0.05) -> None:
        if k < 1:
            raise PolicyError(f"k is {k}, expected >= 1")
        self._samples: deque[float] = deque(maxlen=k)
        self._prior = prior_mbps
        self._min_wire = min_wire_ms
        self._last: float | None = None

    def observe(self, mbps: float, now: float) -> None:
        """A throughput sample measured some other way (an active probe, a trace)."""
        v = _check_finite("mbps", mbps)
        if v > 0:
            self._samples.append(v)
            self._last = float(now)

    def observe_transfer(self, payload_bytes: int, round_trip_ms: float, server_ms: float,
                         queue_ms: float, rtt_floor_ms: float, now: float) -> float | None:
        """One sample from a request; returns the sample in Mbit/s (None: too short)."""
        b = _check_finite("payload_bytes", payload_bytes)
        wire = (_check_finite("round_trip_ms", round_trip_ms) - _check_finite("server_ms",
                server_ms) - _check_finite("queue_ms", queue_ms)
                - _check_finite("rtt_floor_ms", rtt_floor_ms))
        if wire < self._min_wire or b <= 0:
            return None
        mbps = b * 8 / (wire * 1e3)
        self.observe(mbps, now)
        return mbps

    def history(self) -> list[float]:
        """The last k samples, oldest first."""
        return list(self._samples)

    def estimate(self, now: float) -> Estimate:
        if not self._samples:
            return Estimate(self._prior, self._prior, 0, math.inf)
        s = np.asarray(self._samples)
        value = len(s) / float(np.sum(1.0 / s))
        if len(s) > 1:  # robust spread of log-bandwidth (MAD, normal-consistent) x value
            dev = np.abs(np.log(s) - np.median(np.log(s)))
            spread = 1.4826 * float(np.median(dev))
            if spread == 0.0:  # half the samples tie: the mean deviation still sees the rest
                spread = 1.2533 * float(np.mean(dev))
            std = value * spread
        else:
            std = value / 2
        return Estimate(value, std, len(s), now - self._last)


class SlowdownEstimator:
    """How much slower this device runs than its stored profile: measured head-segment time
    over profiled time, smoothed in log space (a 2x slowdown and a 2x speedup weigh alike).

        slow = SlowdownEstimator(profile["segments"])
        slow.observe(segment=0, measured_ms=0.5)       # profiled 0.25 ms -> 2.0
    """

    def __init__(self, profile_segments: Sequence[Mapping[str, Any]], gain: float = 0.2) -> None:
        self._ms = [float(s["median_ms"]) for s in profile_segments]
        self._gain = gain
        self._log: float | None = None
        self._var = 0.0
        self._n = 0

    def observe(self, segment: int, measured_ms: float) -> float:
        m = _check_finite("measured_ms", measured_ms)
        if not 0 <= segment < len(self._ms):
            raise PolicyError(f"segment is {segment}, the profile has {len(self._ms)}")
        ratio = max(m, 1e-6) / max(self._ms[segment], 1e-6)
        x = math.log(ratio)
        if self._log is None:
            self._log = x
        else:
            d = x - self._log
            self._log += self._gain * d
            self._var = (1 - self._gain) * (self._var + self._gain * d * d)
        self._n += 1
        return ratio

    def estimate(self) -> Estimate:
        if self._log is None:
            return Estimate(1.0, 0.0, 0, math.inf)
        v = math.exp(self._log)
        return Estimate(v, v * math.sqrt(self._var), self._n, 0.0)


class ServerLoadEstimator:
    """Server queueing delay and speed from replies (`queue_ms`, `server_ms`) and the
    `load` map of welcome and heartbeat messages (queue, workers, workers_busy).

    `queue_ms` is an EWMA of reply queue times; `slowdown` the EWMA of server_ms over the
    server's profiled time for the same work (1.0 when unknown); `utilization` the busy
    fraction of workers from the last load report.
    """

    def __init__(self, gain: float = 0.2) -> None:
        self._gain = gain
        self.queue_ms = 0.0
        self.slowdown = 1.0
        self.utilization = 0.0
        self.queue_length = 0
        self.n = 0

    def observe_reply(self, server_ms: float, queue_ms: float,
                      profiled_ms: float | None = None) -> None:
        s = _check_finite("server_ms", server_ms)
        q = _check_finite("queue_ms", queue_ms)
        g = self._gain if self.n else 1.0
        self.queue_ms += g * (q - self.queue_ms)
        if profiled_ms:
            self.slowdown += g * (max(s, 1e-6) / profiled_ms - self.slowdown)
        self.n += 1

    def observe_load(self, load: Mapping[str, Any]) -> None:
        workers = max(int(load.get("workers_alive", load.get("workers", 1)) or 1), 1)
        busy = int(load.get("workers_busy", 0) or 0)
        self.utilization = min(busy / workers, 1.0)
        self.queue_length = int(load.get("queue", 0) or 0)


class LinkEstimator:
    """The estimators of one device-edge link together, plus the probing rule: probe
    actively only when no traffic has flowed for `idle_s` seconds.

        link = LinkEstimator()
        link.on_reply(payload_bytes=50_000, round_trip_ms=45, server_ms=3, queue_ms=1,
                      now=t)
        link.on_small_message(rtt_ms=4, now=t)         # heartbeats, hello/welcome
        if link.should_probe(now): ...                 # send a probe, feed it back
    """

    def __init__(self, k: int = 5, idle_s: float = 5.0, small_bytes: int = 2048,
                 warm_samples: int = 3) -> None:
        self.bandwidth = BandwidthEstimator(k=k)
        self.warm_samples = min(warm_samples, k)
        self.rtt = RttEstimator()
        self.server = ServerLoadEstimator()
        self.idle_s = idle_s
        self.small_bytes = small_bytes
        self._last_traffic = -math.inf

    def on_small_message(self, rtt_ms: float, now: float) -> None:
        self.rtt.observe(rtt_ms, now)
        self._last_traffic = float(now)

    def on_reply(self, payload_bytes: int, round_trip_ms: float, server_ms: float,
                 queue_ms: float, now: float, profiled_ms: float | None = None
                 ) -> float | None:
        """One reply; profiled_ms: the server's profiled time for the same work (tracks
        the server's slowdown). Returns the bandwidth sample, if the payload was large."""
        self.server.observe_reply(server_ms, queue_ms, profiled_ms)
        self._last_traffic = float(now)
        if payload_bytes <= self.small_bytes:  # small: it measures latency, not bandwidth
            self.rtt.observe(max(round_trip_ms - server_ms - queue_ms, 0.0), now)
            return None
        return self.bandwidth.observe_transfer(payload_bytes, round_trip_ms, server_ms,
                                               queue_ms, self.rtt.floor_ms, now)

    def should_probe(self, now: float) -> bool:
        """True before `warm_samples` bandwidth samples (a cold start would plan on the
        prior, or on one sample of unknown spread, and plans that keep the work on the
        device bring no new samples) or after `idle_s` without traffic."""
        return (len(self.bandwidth.history()) < self.warm_samples
                or now - self._last_traffic >= self.idle_s)
