"""The decision state: what the device currently believes about the link, itself, the
server and the request's task. Validated on construction (PolicyError names the field).

    state = State(bw_mbps=12.0, bw_std=3.0, rtt_ms=8.0, slo_ms=50.0, task="balanced")

Times of the candidate table are at the profiled (reference) speed; `device_slowdown` and
`server_slowdown` scale them. `bw_history`: the last few bandwidth samples, oldest first
(an empty history means "only the estimate is known").

What the size-aware link model adds (defaults: unknown): `bw_overhead_ms`, the fixed cost
of one message (framing, syscalls, the broker's hop) that does not shrink with the payload;
`bw_overhead_carried`, that overhead was fitted before the link's latest change (uploads
since were of one size, or too few) and carried over, and no upload since has shown it;
`bw_low_mbps`, a pessimistic forecast (a low quantile of the rate over the next seconds;
0: unknown, the planner then uses `bw_mbps`); `failures`, the recent fraction of offloads
that timed out or fell back (a decayed average, 0..1); `bw_age_s`, the age of the newest
bandwidth sample (inf: none yet). `energy`: the price of the device's energy in the reward
(EnergyPrice; None: energy is free, as it was before the energy model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import PolicyError
from ..estimators.energy import PowerModel

# Task types (as in MCIA): (accuracy weight, SLO-violation penalty). The reward of a
# request is w_acc * accuracy - latency / SLO - penalty * P(latency > SLO).
TASKS = {"latency": (1.0, 2.0), "balanced": (5.0, 1.0), "accuracy": (20.0, 0.5)}
HISTORY = 4


def _finite(name: str, value: float, low: float, low_ok: bool = True) -> float:
    v = float(value)
    if not math.isfinite(v) or v < low or (not low_ok and v == low):
        op = ">=" if low_ok else ">"
        raise PolicyError(f"state.{name} is {value!r}, expected a finite number {op} {low}")
    return v


@dataclass(frozen=True)
class EnergyPrice:
    """What energy costs in the reward: `weight` per `ref_j` joules, the energy of one frame
    run wholly on this device (fp32, no exits), so weight 1 makes a frame's whole device
    energy worth as much as one SLO of latency. `power`: the device's PowerModel;
    `threads`: the onnxruntime threads a segment keeps busy; `gap_s`: the time between
    frames (a stream's offloads share the radio's tail, PowerModel.radio_j)."""

    power: PowerModel
    weight: float
    ref_j: float
    threads: int = 1
    gap_s: float = math.inf

    def __post_init__(self) -> None:
        _finite("energy.weight", self.weight, 0.0)
        _finite("energy.ref_j", self.ref_j, 0.0, low_ok=False)
        if math.isnan(self.gap_s) or self.gap_s <= 0:
            raise PolicyError(f"state.energy.gap_s is {self.gap_s!r}, expected > 0")


@dataclass(frozen=True)
class State:
    bw_mbps: float
    slo_ms: float
    bw_std: float = 0.0
    bw_history: tuple[float, ...] = ()
    rtt_ms: float = 0.0
    queue_ms: float = 0.0
    device_slowdown: float = 1.0
    server_slowdown: float = 1.0
    task: str = "balanced"
    bw_overhead_ms: float = 0.0
    bw_overhead_carried: bool = False
    bw_low_mbps: float = 0.0
    failures: float = 0.0
    bw_age_s: float = math.inf
    energy: EnergyPrice | None = None

    def __post_init__(self) -> None:
        _finite("bw_mbps", self.bw_mbps, 0.0, low_ok=False)
        _finite("slo_ms", self.slo_ms, 0.0, low_ok=False)
        _finite("bw_std", self.bw_std, 0.0)
        _finite("rtt_ms", self.rtt_ms, 0.0)
        _finite("queue_ms", self.queue_ms, 0.0)
        _finite("device_slowdown", self.device_slowdown, 0.0, low_ok=False)
        _finite("server_slowdown", self.server_slowdown, 0.0, low_ok=False)
        _finite("bw_overhead_ms", self.bw_overhead_ms, 0.0)
        _finite("bw_low_mbps", self.bw_low_mbps, 0.0)
        if not 0.0 <= self.failures <= 1.0:
            raise PolicyError(f"state.failures is {self.failures!r}, expected 0..1")
        if math.isnan(self.bw_age_s) or self.bw_age_s < 0:
            raise PolicyError(f"state.bw_age_s is {self.bw_age_s!r}, expected >= 0")
        for i, h in enumerate(self.bw_history):
            _finite(f"bw_history[{i}]", h, 0.0, low_ok=False)
        if self.task not in TASKS:
            raise PolicyError(f"state.task is {self.task!r}, expected one of {sorted(TASKS)}")

    @property
    def weights(self) -> tuple[float, float]:
        return TASKS[self.task]

    @property
    def pessimistic_mbps(self) -> float:
        """The low forecast if the estimator gave one, else the lowest recent sample."""
        if self.bw_low_mbps > 0:
            return min(self.bw_low_mbps, self.bw_mbps)
        return min((*self.bw_history, self.bw_mbps))
