"""The conditions of the end-to-end benchmark, laid end to end on one timeline that every
strategy runs through (one device process per strategy and model, so setup is paid once;
the strategies take turns scenario by scenario, see Timeline.spans):

- stationary links at fixed rates;
- a bandwidth step (50 -> 2 -> 50 Mbit/s): the best split changes twice;
- a 3 s outage (the link's rate near zero; TCP stalls and recovers by itself);
- a server-load spike: other devices' processes hammer the server for a few seconds;
- trace replay: a window of a real uplink trace from the test split (scaled), chosen
  where the rate swings most.

A Scenario is a list of Phases; a phase holds the link at a rate (or replays per-second
rates) with or without the load spike. Each scenario may begin with an uncounted
`settle_s` at its first phase's rate (so a stationary rate is measured after the estimators
have seen it, not through the change from the previous scenario). Frames are attributed to
the scenario and phase in which they started.

    tl = Timeline.build(default_scenarios(trace))
    tl.seconds, tl.rate_events(), tl.load_windows(), tl.locate(t) -> (scenario, phase)
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NOMINAL_MBIT = 50.0  # where every non-stationary scenario starts and ends
OUTAGE_MBIT = 0.001  # an outage: 125 bytes/s (tbf cannot be 0; the simulator uses the same)
TRACE_FLOOR_MBIT = 0.05  # traces have seconds of (almost) nothing; an outage is separate
# 3G and broadband traces are scaled x10 (Wi-Fi-class uplinks, as the traces' README
# suggests), 5G traces as measured.
TRACE_SCALE = {"norway_hsdpa": 10.0, "fcc_broadband": 10.0, "ucc_5g": 1.0}


@dataclass(frozen=True)
class Phase:
    """`seconds` at `mbps`, or per-second `rates` (a trace; `seconds` = their count); with
    the other devices' load on the server when `load`."""

    label: str
    seconds: float
    mbps: float = NOMINAL_MBIT
    rates: tuple[float, ...] = ()
    load: bool = False

    def rate_at(self, t: float) -> float:
        if self.rates:
            return self.rates[min(int(t), len(self.rates) - 1)]
        return self.mbps


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # "stationary" or "non-stationary"
    phases: tuple[Phase, ...]
    settle_s: float = 0.0
    note: str = ""

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.phases)


@dataclass(frozen=True)
class Timeline:
    """Scenarios laid end to end; `starts[i]` is when scenario i's counted part begins."""

    scenarios: tuple[Scenario, ...]
    starts: tuple[float, ...]
    seconds: float
    _segments: tuple[tuple[float, float, int, int], ...] = field(default=(), repr=False)

    @classmethod
    def build(cls, scenarios: Sequence[Scenario]) -> Timeline:
        t, starts, segs = 0.0, [], []
        for i, s in enumerate(scenarios):
            if s.settle_s:
                segs.append((t, t + s.settle_s, i, -1))
                t += s.settle_s
            starts.append(t)
            for j, p in enumerate(s.phases):
                segs.append((t, t + p.seconds, i, j))
                t += p.seconds
        return cls(tuple(scenarios), tuple(starts), t, tuple(segs))

    def spans(self) -> list[tuple[float, float]]:
        """(start, end) of each scenario, its settling included: the timeline's chunks."""
        spans: dict[int, tuple[float, float]] = {}
        for a, b, i, _ in self._segments:
            spans[i] = (spans.get(i, (a, b))[0], b)
        return list(spans.values())

    def locate(self, t: float) -> tuple[Scenario | None, Phase | None, float]:
        """(scenario, phase, seconds since the scenario's counted start) of time t; the
        phase is None while the scenario settles, both None outside the timeline."""
        for a, b, i, j in self._segments:
            if a <= t < b:
                s = self.scenarios[i]
                return s, (s.phases[j] if j >= 0 else None), t - self.starts[i]
        return None, None, 0.0

    def rate_at(self, t: float) -> float:
        for a, b, i, j in self._segments:
            if a <= t < b:
                s = self.scenarios[i]
                p = s.phases[j] if j >= 0 else s.phases[0]
                return p.rate_at(t - a if j >= 0 else 0.0)
        return self.scenarios[-1].phases[-1].rate_at(1e9) if t >= self.seconds else (
            self.scenarios[0].phases[0].rate_at(0.0))

    def rate_events(self) -> list[tuple[float, float]]:
        """(t, Mbit/s) whenever the link's rate changes, from t = 0."""
        events: list[tuple[float, float]] = []
        for a, b, i, j in self._segments:
            s = self.scenarios[i]
            p = s.phases[j] if j >= 0 else s.phases[0]
            if p.rates and j >= 0:
                events += [(a + k, r) for k, r in enumerate(p.rates) if a + k < b]
            else:
                events.append((a, p.mbps if not p.rates else p.rates[0]))
        out: list[tuple[float, float]] = []
        for t, r in events:
            if not out or out[-1][1] != r:
                out.append((t, r))
        return out

    def load_windows(self) -> list[tuple[float, float]]:
        """(start, end) of every phase with the load spike on."""
        return [(a, b) for a, b, i, j in self._segments
                if j >= 0 and self.scenarios[i].phases[j].load]

    def describe(self) -> list[dict]:
        return [{"name": s.name, "kind": s.kind, "start_s": self.starts[i],
                 "settle_s": s.settle_s, "note": s.note,
                 "phases": [{"label": p.label, "seconds": p.seconds, "mbps": p.mbps,
                             "rates": list(p.rates), "load": p.load} for p in s.phases]}
                for i, s in enumerate(self.scenarios)]


def pick_trace(traces_dir: Path, seconds: int, seed: int = 0, candidates: int = 40,
               low: float = 2.0, high: float = 60.0) -> dict:
    """A window of `seconds` from the test traces, scaled (TRACE_SCALE), whose rate swings
    the most in log terms while its median stays within [low, high] Mbit/s: where the best
    split changes. Deterministic for a seed. Read-only: nothing is copied."""
    with open(traces_dir / "index.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if float(r["duration_s"]) >= seconds + 1]
    if not rows:
        raise FileNotFoundError(f"{traces_dir}: no trace of at least {seconds + 1} s")
    rng = np.random.default_rng(seed)
    best, best_score = None, -1.0
    for r in (rows[k] for k in rng.permutation(len(rows))[:candidates]):
        with open(traces_dir / r["dataset"] / r["file"], newline="") as f:
            mbps = np.array([float(row["mbps"]) for row in csv.DictReader(f)])
        scale = TRACE_SCALE.get(r["dataset"], 1.0)
        mbps = np.maximum(mbps * scale, TRACE_FLOOR_MBIT)
        for start in range(0, len(mbps) - seconds, max(seconds // 2, 1)):
            w = mbps[start:start + seconds]
            med = float(np.median(w))
            if not low <= med <= high:
                continue
            score = float(np.std(np.log(w)))
            if score > best_score:
                best_score = score
                best = {"name": f"{r['dataset']}/{r['file']}@{start}s x{scale:g}",
                        "rates": tuple(round(float(v), 3) for v in w),
                        "log_std": round(score, 3)}
    if best is None:
        raise FileNotFoundError(f"{traces_dir}: no {seconds}-s window with a median rate in "
                                f"[{low}, {high}] Mbit/s among {candidates} traces")
    return best


def default_scenarios(trace: dict | None, *, scale: float = 1.0,
                      rates: Sequence[float] = (50.0, 10.0)) -> list[Scenario]:
    """The full benchmark's timeline; `scale` stretches every duration (the smoke uses a
    subset, see smoke_scenarios)."""
    def s(x: float) -> float:
        return round(x * scale, 3)

    out = [Scenario(f"{rates[0]:g} Mbit/s", "stationary", (Phase("steady", s(3), rates[0]),))]
    out.append(Scenario("step 50-2-50", "non-stationary", (
        Phase("before", s(2.5)), Phase("low", s(3), 2.0), Phase("after", s(2.5))),
        note="50 -> 2 -> 50 Mbit/s"))
    out.append(Scenario("outage 3 s", "non-stationary", (
        Phase("before", s(2)), Phase("outage", 3.0, OUTAGE_MBIT), Phase("after", s(3))),
        note=f"the rate at {OUTAGE_MBIT} Mbit/s for 3 s"))
    out.append(Scenario("load spike", "non-stationary", (
        Phase("before", s(2)), Phase("spike", s(3.5), load=True), Phase("after", s(2))),
        note="other devices' offloads keep the server's queue full"))
    if trace is not None:
        out.append(Scenario("trace", "non-stationary",
                            (Phase("replay", float(len(trace["rates"])),
                                   rates=tuple(trace["rates"])),), note=trace["name"]))
    # no settling: every scenario's turn starts with warm-up frames at its first rate
    # (edgesdk.bench.e2e), which the estimators see as a settling would let them
    out += [Scenario(f"{r:g} Mbit/s", "stationary", (Phase("steady", s(3), r),))
            for r in rates[1:]]
    return out


def smoke_scenarios() -> list[Scenario]:
    """The CI smoke's timeline: a short stationary rate and the step."""
    return [Scenario("50 Mbit/s", "stationary", (Phase("steady", 2.0),)),
            Scenario("step 50-2-50", "non-stationary", (
                Phase("before", 2.0), Phase("low", 2.5, 2.0), Phase("after", 2.0)),
                note="50 -> 2 -> 50 Mbit/s")]
