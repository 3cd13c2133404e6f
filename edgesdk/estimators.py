"""Live estimators of the device-edge link, the device and the server: what the engine and
the policy read. They are passive (fed from real traffic) and tell the caller when an active
probe is worth sending.

    link = LinkEstimator()
    link.bandwidth.observe(mbps, now); link.rtt.observe(ms, now)
    link.bandwidth.estimate(now)      # Estimate(value, std, n, age_s)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import PolicyError

__all__ = [
    "BandwidthEstimator",
    "Estimate",
    "LinkEstimator",
    "RttEstimator",
    "ServerLoadEstimator",
    "SlowdownEstimator",
]


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
