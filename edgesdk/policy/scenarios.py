"""Simulation scenarios: the bandwidth traces, synthetic and real model profiles, and the
conditions of an episode (RTT, SLO, task, server speed and load, outages), plus the
simulator's physical constants (`Physics`).

    traces = load_traces(default_traces_dir() / "train")
    sc = random_scenario(rng, traces, profiles)        # a training episode
    sc = make_scenario(rng, table, mbps, slowdown)     # conditions around a given link
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import PolicyError
from .candidates import BITS, CandidateTable, ExitProfile, ModelProfile, build_candidates
from .planner import FALLBACK_EXIT_ACC
from .state import TASKS

FIXED_RATES = (1.0, 5.0, 10.0, 50.0, 100.0)


@dataclass(frozen=True)
class Physics:
    """The simulator's physical constants. The defaults describe the cellular and Wi-Fi
    links of the training traces (sub-second variation, RTT jitter, slow start) and a
    Pi-class device (jitter, scheduler stalls); `edgesdk.bench.sim_calibration.fit_physics` fits
    them to a recording of the real loop (bench e2e --record) to check the simulator
    against it."""

    overhead_ms: float = 0.6  # per message: framing, syscalls, the broker's hop
    subsecond_sigma: float = 0.35  # log-rate spread around the trace's value within a second
    subsecond_rho: float = 0.8  # slot-to-slot correlation of that spread
    rtt_sigma: float = 0.25  # log-RTT jitter per message
    device_sigma: float = 0.08  # log-jitter of a frame's device time
    stall_p: float = 0.05  # probability that a frame hits a scheduler stall
    stall_factor: tuple[float, float] = (1.5, 4.0)  # a stalled frame's time multiplier range
    idle_restart_s: float = 1.0  # TCP slow start after this much idle
    init_window_bytes: int = 14_600  # ten segments
    fallback_exit_acc: float = FALLBACK_EXIT_ACC  # an unconfident exit answer's, relative
    server_workers: int = 2
    # measured device-time ratios (a frame's time / the median), resampled instead of the
    # lognormal + stall model when given (calibration fills it from a device profile)
    device_samples: tuple[float, ...] = ()
    engine_ms: float = 0.0  # the engine's own time per frame on the device (reference speed)
    timeout_grace_ms: float = 2.0  # how late past an offload's budget the engine falls back


DEFAULT_PHYSICS = Physics()


def default_traces_dir() -> Path:
    """$EDGESDK_TRACES, else the first ``shared/traces`` found beside the current directory
    or beside the source checkout (the traces are data for the project, never copied into
    it). Commands take --traces to point elsewhere."""
    env = os.environ.get("EDGESDK_TRACES")
    if env:
        return Path(env)
    here = Path.cwd().resolve()
    checkout = Path(__file__).resolve().parents[3]
    for root in (here, here.parent, checkout):
        if (root / "shared" / "traces").is_dir():
            return root / "shared" / "traces"
    return checkout / "shared" / "traces"


def load_traces(split_dir: str | Path) -> list[tuple[str, np.ndarray]]:
    """Every trace listed in split_dir/index.csv as (dataset/file, mbps per second)."""
    root = Path(split_dir)
    index = root / "index.csv"
    if not index.is_file():
        raise PolicyError(f"{index}: not found; pass --traces DIR or set "
                          "EDGESDK_TRACES to the traces root (with train/ and test/)")
    out = []
    with open(index, newline="") as f:
        for row in csv.DictReader(f):
            path = root / row["dataset"] / row["file"]
            mbps = np.loadtxt(path, delimiter=",", skiprows=1, usecols=1, ndmin=1)
            out.append((f"{row['dataset']}/{row['file']}", np.maximum(mbps, 0.01)))
    return out


def synthetic_profile(rng: np.random.Generator, name: str = "synthetic") -> ModelProfile:
    """A random but plausible model: 3..8 segments, activations that grow then shrink,
    0..2 calibrated exits, codec sizes (raw-packed and with zstd) and agreement per bit
    width."""
    n_seg = int(rng.integers(3, 9))
    total = math.exp(rng.uniform(math.log(0.5), math.log(300)))
    seg_ms = tuple(float(v) for v in rng.dirichlet(np.ones(n_seg) * 2) * total)
    size = math.exp(rng.uniform(math.log(3e3), math.log(6e5)))
    sizes = [size]
    for _ in range(n_seg - 1):
        size *= math.exp(rng.uniform(-1.6, 0.9 if len(sizes) == 1 else 0.2))
        sizes.append(max(size, 40.0))
    enc_per_mb = rng.uniform(1, 10)
    squeeze = {32: 1.0, 16: 1.0, 8: rng.uniform(0.5, 1), 4: rng.uniform(0.5, 1),
               2: rng.uniform(0.4, 1)}
    agree = {32: 1.0, 16: 1.0, 8: 1 - rng.uniform(0, 0.01), 4: 1 - rng.uniform(0.005, 0.06),
             2: 1 - rng.uniform(0.03, 0.35)}
    names = ["input"] + [f"c{i}" for i in range(n_seg - 1)]
    # zstd (wire) costs about 10x the quantize-and-pack pass (wire_raw) for its squeeze
    wire = {nm: {b: (fp * b / 32 * squeeze[b] + 64, fp / 1e6 * enc_per_mb + 0.01, agree[b])
                 for b in BITS} for nm, fp in zip(names, sizes)}
    wire_raw = {nm: {b: (fp * b / 32 + 64, fp / 1e6 * enc_per_mb * 0.1 * (b < 32) + 0.005)
                     for b in BITS} for nm, fp in zip(names, sizes)}
    baseline = rng.uniform(0.6, 0.99)
    n_exits = int(rng.integers(0, 3))
    after = sorted(rng.choice(max(n_seg - 1, 1), size=min(n_exits, n_seg - 1), replace=False))
    exits, upto, left = [], [baseline], 1.0
    for a in after:
        cov = left * rng.uniform(0.1, 0.8)
        left -= cov
        exits.append(ExitProfile(int(a), float(cov), float(min(baseline + rng.uniform(-0.03,
                                 0.08), 1.0)), float(total * rng.uniform(0.005, 0.05))))
        upto.append(upto[-1] - rng.uniform(0, 0.03))
    return ModelProfile(name, seg_ms, tuple(names[1:]), tuple(range(n_seg - 1)), tuple(exits),
                        tuple(float(u) for u in upto), wire, wire_raw)


# -- scenarios ------------------------------------------------------------------------------


@dataclass
class Scenario:
    """One episode: a model's candidates, the link's rate per `rate_dt_s` seconds (a
    trace's second by default), and the conditions around it. `outages`: (start_s,
    seconds) with the rate near zero; `load`: per `rate_dt_s`, the server's utilization by
    other devices (0..0.97); frames arrive every `period_s`, or at `times` (s) if given
    (a recorded run's)."""

    table: CandidateTable
    mbps: np.ndarray
    rtt_ms: float
    device_slowdown: float
    server_slowdown: float
    load: np.ndarray
    slo_ms: float
    task: str
    period_s: float = 0.25
    outages: tuple[tuple[float, float], ...] = ()
    label: str = ""
    dataset: str = ""
    physics: Physics = DEFAULT_PHYSICS
    seed: int = 0
    rate_dt_s: float = 1.0
    times: np.ndarray | None = None
    # the server's real speed over what its welcome advertised (server_slowdown): > 1 when
    # it is busier or slower than it said (a shared box), which only timeouts reveal
    server_drift: float = 1.0

    @property
    def seconds(self) -> float:
        return len(self.mbps) * self.rate_dt_s

    @property
    def frames(self) -> int:
        if self.times is not None:
            return len(self.times)
        return max(int(self.seconds / self.period_s), 1)


def make_scenario(rng: np.random.Generator, table: CandidateTable, mbps: np.ndarray,
                  slowdown: float, label: str = "", dataset: str = "",
                  period_s: float = 0.25, outage_p: float = 0.3, spike_p: float = 0.3,
                  physics: Physics = DEFAULT_PHYSICS) -> Scenario:
    """Conditions drawn around a link: RTT 2..80 ms, an SLO 0.3..3x device-only (at least
    RTT + 2 ms), a task, server speed (and, one time in five, a server 1.5..4x slower than
    it advertises), the other devices' load (a base utilization and, with probability
    spike_p, a spike to 0.9+ for 3..10 s) and, with probability outage_p, one outage of
    2..5 s."""
    mbps = np.asarray(mbps, float)
    seconds = len(mbps)
    rtt = math.exp(rng.uniform(math.log(2), math.log(80)))
    device_only = float(np.max(table.dev_ms[table.wire_bytes == 0])) * slowdown
    slo = max(device_only * math.exp(rng.uniform(math.log(0.3), math.log(3))), rtt + 2)
    task = list(TASKS)[int(rng.integers(len(TASKS)))]
    load = np.full(seconds, rng.uniform(0.0, 0.6))
    if rng.random() < spike_p and seconds > 10:
        start = int(rng.integers(0, seconds - 3))
        load[start:start + int(rng.integers(3, 11))] = rng.uniform(0.9, 0.97)
    outages: tuple[tuple[float, float], ...] = ()
    if rng.random() < outage_p and seconds > 6:
        outages = ((float(rng.uniform(0, seconds - 5)), float(rng.uniform(2, 5))),)
    drift = math.exp(rng.uniform(math.log(1.5), math.log(4))) if rng.random() < 0.2 else 1.0
    return Scenario(table, mbps, rtt, slowdown,
                    server_slowdown=math.exp(rng.uniform(math.log(0.05), math.log(0.5))),
                    load=load, slo_ms=slo, task=task, period_s=period_s, outages=outages,
                    label=label, dataset=dataset, physics=physics,
                    seed=int(rng.integers(2**31)), server_drift=drift)


def random_scenario(rng: np.random.Generator, traces: Sequence[tuple[str, np.ndarray]],
                    profiles: Sequence[ModelProfile] = (), seconds: int = 60,
                    p_real: float = 0.5, fixed_rate_prob: float = 0.15,
                    physics: Physics = DEFAULT_PHYSICS) -> Scenario:
    """A random training episode: a model (a real profile with probability p_real, device
    1x..100x slower than profiled; else a synthetic one, 0.5x..5x), a window anywhere in a
    trace scaled by 0.3x..30x (or a fixed rate), and random conditions (make_scenario)."""
    if profiles and rng.random() < p_real:
        model = profiles[int(rng.integers(len(profiles)))]
        slowdown = math.exp(rng.uniform(0, math.log(100)))
    else:
        model = synthetic_profile(rng)
        slowdown = math.exp(rng.uniform(math.log(0.5), math.log(5)))
    if rng.random() < fixed_rate_prob:
        rate = FIXED_RATES[int(rng.integers(len(FIXED_RATES)))]
        mbps, label, dataset = np.full(seconds, rate), f"fixed {rate:g}", "fixed"
    else:
        name, tr = traces[int(rng.integers(len(traces)))]
        start = int(rng.integers(0, max(len(tr) - seconds, 1)))
        scale = math.exp(rng.uniform(math.log(0.3), math.log(30)))
        mbps = np.resize(tr[start:start + seconds], seconds) * scale
        label, dataset = f"{name}@{start}s x{scale:.2g}", name.split("/")[0]
    return make_scenario(rng, build_candidates(model), mbps, slowdown, label, dataset,
                         period_s=float(rng.choice([0.1, 0.25, 0.5])), physics=physics)
