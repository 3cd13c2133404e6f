"""Stream control: a camera's frames at a target rate, each frame's (version, cut, bits)
and processing speed chosen by drift-plus-penalty (Lyapunov) optimisation, trading the
device's energy against the backlog of frames.

    ctl = StreamController(fps=15, v=20, speeds=[Speed(1, 1.0), Speed(2, 1.7)])
    ctl.arrive(now)                                  # frames the camera made since last time
    row, speed = ctl.choose(table, state, power, ref_j)
    ...                                              # run the frame
    ctl.served()                                     # one frame out of the queue

Model (Neely's drift-plus-penalty). A virtual queue Q counts frames produced and not yet
processed: the camera adds fps x the time since the previous decision, each processed
frame removes one. Each frame takes the action a = (candidate, speed) minimising

    V x E(a) / ref_j  +  Q x fps x T(a) / 1000

E(a): its expected energy (planner.expected_energy, at the speed's thread count, the radio
tail shared at the frame rate); T(a): the time it holds the stream up, its device compute
(planner.expected_device_ms, scaled by the speed's measured speedup) or, for an offload,
the longest of that, its round trip spread over the frames in flight and its upload (the
link carries one frame at a time: offloads faster than it drains only queue). The second term is
the queue's drift: Q grows by fps x T - 1 per frame. A small V keeps the backlog near zero
(the fastest actions); a large V spends only what keeps Q bounded, on the cheapest
actions, with a backlog of O(V). Between them, the controller alternates a cheap slow
action with a fast costly one just often enough to keep up: a mix no fixed plan reaches.

E(a) and T(a) are priced at the link's pessimistic rate (State.pessimistic_mbps), not its
mean: a wrong offload costs far more than a wrong local frame (_at_pessimistic_rate).

Accuracy is a constraint rather than a price: only actions whose expected accuracy is
within `accuracy_slack` of the best are eligible (at the frame rate, latency is the
backlog's business, so SLO violations are not weighed here).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..errors import PolicyError
from ..estimators.energy import PowerModel
from .candidates import CandidateTable
from .planner import branch_latency, expected_device_ms, expected_energy, expected_terms
from .state import State


@dataclass(frozen=True)
class Speed:
    """A processing speed: `threads` onnxruntime intra-op threads, which run the device's
    segments `speedup` times as fast as the engine's own thread count (measured on this
    device, Engine.stream_speeds)."""

    threads: int
    speedup: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.threads, int) or isinstance(self.threads, bool) or not (
                1 <= self.threads <= 256):
            raise PolicyError(f"speed.threads is {self.threads!r}, expected an int in 1..256")
        if not (isinstance(self.speedup, (int, float)) and math.isfinite(self.speedup)
                and 0 < self.speedup <= self.threads * 1.5):
            raise PolicyError(f"speed.speedup is {self.speedup!r}, expected a number in "
                              f"(0, {self.threads * 1.5}] for {self.threads} threads")


class StreamController:
    """Drift-plus-penalty control of a stream at `fps` (see the module docstring).
    `v`: the energy-backlog trade-off (>= 0); `in_flight`: frames an offload overlaps
    with (Engine.max_in_flight); `accuracy_slack`: how much expected accuracy an action
    may give up against the best one (0.01: one point)."""

    def __init__(self, fps: float, v: float, speeds: Sequence[Speed] = (Speed(1),),
                 in_flight: int = 2, accuracy_slack: float = 0.01) -> None:
        for name, x, zero_ok in (("fps", fps, False), ("v", v, True),
                                 ("accuracy_slack", accuracy_slack, True)):
            number = isinstance(x, (int, float)) and not isinstance(x, bool)
            if not (number and math.isfinite(x) and 0 <= x <= 1e9 and (zero_ok or x > 0)):
                raise PolicyError(f"stream {name} is {x!r}, expected a number "
                                  f"{'>=' if zero_ok else '>'} 0 and <= 1e9")
        if not speeds:
            raise PolicyError("stream speeds is empty, expected at least one Speed")
        self.fps, self.v = float(fps), float(v)
        self.speeds = tuple(speeds)
        self.in_flight = max(int(in_flight), 1)
        self.accuracy_slack = float(accuracy_slack)
        self.q = 0.0  # the virtual queue, frames
        self._last: float | None = None

    def arrive(self, now: float) -> None:
        """The camera's frames since the previous call (fps x the time between)."""
        if self._last is not None:
            self.q += self.fps * max(now - self._last, 0.0)
        self._last = now

    def served(self) -> None:
        """One frame processed."""
        self.q = max(self.q - 1.0, 0.0)

    def choose(self, table: CandidateTable, state: State, power: PowerModel,
               ref_j: float) -> tuple[int, Speed]:
        """(candidate row, speed) for the next frame. `ref_j`: the energy unit (a frame
        run wholly on the device at one thread)."""
        best: tuple[float, int, Speed] | None = None
        accs, scores = [], []
        cautious = _at_pessimistic_rate(state)
        for speed in self.speeds:
            at = replace(cautious, device_slowdown=state.device_slowdown / speed.speedup)
            acc, lat, _ = expected_terms(table, at)
            busy = expected_device_ms(table, at)
            _, upload = branch_latency(table, at)
            # an offload holds the stream for its device work, its share of the frames in
            # flight, or its upload (one at a time on the link), whichever is longest
            hold = np.where(table.wire_bytes > 0,
                            np.maximum(busy, np.maximum(lat / self.in_flight, upload)), busy)
            energy = expected_energy(table, at, power, speed.threads, gap_s=1.0 / self.fps)
            accs.append(acc)
            scores.append(self.v * energy / ref_j + self.q * self.fps * hold / 1e3)
        floor = max(float(a.max()) for a in accs) - self.accuracy_slack
        for speed, acc, score in zip(self.speeds, accs, scores):
            masked = np.where(acc >= floor, score, np.inf)
            i = int(np.argmin(masked))
            if best is None or masked[i] < best[0]:
                best = (float(masked[i]), i, speed)
        assert best is not None
        return best[1], best[2]


def _at_pessimistic_rate(state: State) -> State:
    """`state` with the link at its pessimistic rate (State.pessimistic_mbps: the low
    forecast, else the lowest recent sample), its spread scaled along as plan_pessimistic
    does. A stream prices its offloads there: a wrong offload costs the radio, the
    budget's wait and then the device's work anyway (100-220 mJ against about 72 for a
    local frame, traced in `bench stream`), a wrong local frame only the difference; and the
    rate is most often wrong just after it fell."""
    low = state.pessimistic_mbps
    if low >= state.bw_mbps:
        return state
    return replace(state, bw_mbps=low, bw_std=state.bw_std * low / state.bw_mbps)
