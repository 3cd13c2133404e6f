"""A request-level simulator of split inference over a real bandwidth trace.

One request per second of trace. The true state at step t is the trace's bandwidth at t,
the episode's RTT, server speed and queue (with per-step jitter); the device sees only
what its estimators (edgesdk.estimators) learned from earlier traffic: a bandwidth sample
after each offloaded request, an active probe when nothing was sent for PROBE_IDLE steps,
an RTT sample per step (heartbeats), noisy slowdown and queue. The reward of a choice is
its expected reward under the true state (expectation over exits only), so the oracle is
the planner fed the true state.

    sc = random_scenario(rng, traces, profiles)
    for step in run_episode(sc, choose, rng): step.reward, step.rewards_true

`choose(table, est_state) -> index` is any strategy.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import PolicyError
from ..estimators import BandwidthEstimator, RttEstimator
from .candidates import BITS, CandidateTable, ExitProfile, ModelProfile, build_candidates
from .planner import expected_rewards, expected_terms
from .state import HISTORY, TASKS, State

PROBE_IDLE = 3
FIXED_RATES = (1.0, 5.0, 10.0, 50.0, 100.0)


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
    0..2 calibrated exits, codec sizes and agreement per bit width."""
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
    wire = {nm: {b: (fp * b / 32 * squeeze[b] + 64, fp / 1e6 * enc_per_mb * (b < 32) +
                     0.01, agree[b]) for b in BITS} for nm, fp in zip(names, sizes)}
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
                        tuple(float(u) for u in upto), wire)


@dataclass
class Scenario:
    table: CandidateTable
    mbps: np.ndarray  # true uplink bandwidth per step
    rtt_ms: float
    device_slowdown: float
    server_slowdown: float
    queue_ms: float
    slo_ms: float
    task: str
    label: str = ""


def random_scenario(rng: np.random.Generator, traces: Sequence[tuple[str, np.ndarray]],
                    profiles: Sequence[ModelProfile] = (), steps: int = 120,
                    p_real: float = 0.3, scales: Sequence[float] | None = None,
                    fixed_rate_prob: float = 0.2) -> Scenario:
    """A random episode: a model (a real profile with probability p_real, else synthetic),
    a window of a trace (scaled by a log-uniform factor in [0.3, 30] unless `scales` is
    given) or a fixed rate, RTT, device and server speed, queue, task, and an SLO between
    0.3x and 3x of the device-only latency (at least RTT + 2 ms)."""
    if profiles and rng.random() < p_real:
        model = profiles[int(rng.integers(len(profiles)))]
        slowdown = math.exp(rng.uniform(0, math.log(100)))
    else:
        model = synthetic_profile(rng)
        slowdown = math.exp(rng.uniform(math.log(0.5), math.log(5)))
    if rng.random() < fixed_rate_prob:
        rate = FIXED_RATES[int(rng.integers(len(FIXED_RATES)))]
        mbps, label = np.full(steps, rate), f"fixed {rate:g}"
    else:
        name, tr = traces[int(rng.integers(len(traces)))]
        start = int(rng.integers(0, max(len(tr) - steps, 1)))
        scale = (scales[int(rng.integers(len(scales)))] if scales
                 else math.exp(rng.uniform(math.log(0.3), math.log(30))))
        mbps, label = np.resize(tr[start:start + steps], steps) * scale, f"{name} x{scale:.2g}"
    table = build_candidates(model)
    return make_scenario(rng, table, mbps, slowdown, label)


def make_scenario(rng: np.random.Generator, table: CandidateTable, mbps: np.ndarray,
                  slowdown: float, label: str = "") -> Scenario:
    rtt = math.exp(rng.uniform(math.log(2), math.log(80)))
    device_only = float(np.max(table.dev_ms[table.wire_bytes == 0])) * slowdown
    slo = max(device_only * math.exp(rng.uniform(math.log(0.3), math.log(3))), rtt + 2)
    task = list(TASKS)[int(rng.integers(len(TASKS)))]
    return Scenario(table, np.asarray(mbps, float), rtt, slowdown,
                    server_slowdown=math.exp(rng.uniform(math.log(0.05), math.log(0.5))),
                    queue_ms=float(rng.exponential(3.0)), slo_ms=slo, task=task, label=label)


@dataclass
class Step:
    t: int
    choice: int
    reward: float
    rewards_true: np.ndarray  # every candidate's reward under the true state
    est: State
    true: State


def run_episode(sc: Scenario, choose: Callable[[CandidateTable, State], int],
                rng: np.random.Generator) -> Iterator[Step]:
    bw_est = BandwidthEstimator(k=HISTORY)
    rtt_est = RttEstimator()
    bw_est.observe(sc.mbps[0] * math.exp(rng.normal(0, 0.15)), 0.0)  # the hello's probe
    idle = 0
    for t in range(len(sc.mbps)):
        rtt = sc.rtt_ms * math.exp(rng.normal(0, 0.2))
        queue = sc.queue_ms * math.exp(rng.normal(0, 0.5))
        true = State(bw_mbps=float(sc.mbps[t]), slo_ms=sc.slo_ms, rtt_ms=rtt, queue_ms=queue,
                     device_slowdown=sc.device_slowdown, server_slowdown=sc.server_slowdown,
                     task=sc.task)
        e = bw_est.estimate(float(t))
        r = rtt_est.estimate(float(t))
        est = State(bw_mbps=e.value, bw_std=e.std, bw_history=tuple(bw_est.history()),
                    slo_ms=sc.slo_ms, rtt_ms=r.value if r.n else sc.rtt_ms,
                    queue_ms=sc.queue_ms * math.exp(rng.normal(0, 0.3)),
                    device_slowdown=sc.device_slowdown * math.exp(rng.normal(0, 0.05)),
                    server_slowdown=sc.server_slowdown, task=sc.task)
        choice = choose(sc.table, est)
        rewards = expected_rewards(sc.table, true)
        yield Step(t, choice, float(rewards[choice]), rewards, est, true)
        rtt_est.observe(rtt, float(t))
        noise = math.exp(rng.normal(0, 0.15))  # drawn always: runs stay aligned across choices
        idle = 0 if sc.table.wire_bytes[choice] > 0 else idle + 1
        if idle == 0 or idle >= PROBE_IDLE:
            bw_est.observe(sc.mbps[t] * noise, float(t))
            idle = 0


def latency_samples(sc: Scenario, choice: int, true: State, rng: np.random.Generator
                    ) -> tuple[float, float, bool]:
    """(expected accuracy, one latency draw, violated?) of a choice under the true state."""
    acc, lat, viol = expected_terms(sc.table, true)
    t = sc.table
    exited = rng.random() < t.p_exit[choice]
    if exited:
        ms = float(t.exit_ms[choice] * true.device_slowdown)
    else:
        ms = float((lat[choice] - t.p_exit[choice] * t.exit_ms[choice] * true.device_slowdown)
                   / max(1 - t.p_exit[choice], 1e-9))
    return float(acc[choice]), ms, ms > true.slo_ms
