"""Check the policy simulator against the real loop: replay every recorded (model,
strategy) run of `edgesdk bench e2e --record` through the simulator and compare mean and
p95 latency per scenario.

    edgesdk policy calibrate /tmp/e2e/e2e-....jsonl [--json]

For each model of the recording, the simulator gets what the testbed had: the model's
profile (the candidates the engine planned with), the shaped rate over time (rate_events,
outages included), the server-load windows, the SLO and task, each run's own frame times,
and the device's measured time distribution (device_profile: chain times under the CPU
quota, resampled as the simulator's device jitter). Fitted from the recording, and named as
such in the report: the device slowdown (model.slowdown), the engine's own time per frame
(from the device-only run: the median frame time beyond the profiled chain), the
per-message overhead (from offloaded frames: network time beyond bytes / rate), the
server's speed (from server_ms) and the queueing under load (from queue_ms). The strategies
are then replayed with the simulator's estimators and the engine's fallback rules: the
check is whether each strategy's mean and p95 come out within 10 % of the real ones.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PolicyError
from ..policy.candidates import Candidate, CandidateTable, build_candidates
from ..policy.net import PolicyNet
from ..policy.planner import plan
from ..policy.profiles import profile_from_json
from ..policy.scenarios import Physics, Scenario
from ..policy.simulator import run_episode

TOLERANCE = 0.10
RATE_DT_S = 0.5  # the timeline's rate changes fall on half seconds


def load_recording(path: str | Path) -> dict[str, Any]:
    """{"meta", "models": {name: model}, "device": {name: segment_ms (runs x segments)},
    "frames": {(model, strategy): [frame, ...]}} from a recording's JSON lines."""
    rec: dict[str, Any] = {"meta": None, "models": {}, "device": {}, "frames": defaultdict(list)}
    try:
        with open(path) as f:
            for line in f:
                d = json.loads(line)
                kind = d.get("type")
                if kind == "meta":
                    rec["meta"] = d
                elif kind == "model":
                    rec["models"][d["model"]] = d
                elif kind == "device_profile":
                    rec["device"][d["model"]] = np.asarray(d["segment_ms"], float)
                elif kind == "frame":
                    rec["frames"][(d["model"], d["strategy"])].append(d)
    except (OSError, ValueError, KeyError) as exc:
        raise PolicyError(f"{path}: not a bench e2e recording ({exc})") from None
    if rec["meta"] is None or not rec["models"]:
        raise PolicyError(f"{path}: no meta or model lines; record with `edgesdk bench e2e "
                          "--record FILE`")
    return rec


def fit_physics(rec: Mapping, model: str) -> tuple[Physics, dict[str, float]]:
    """The simulator's constants for this model's runs, and the fitted numbers."""
    m = rec["models"][model]
    seg = rec["device"].get(model)
    fitted: dict[str, float] = {}
    samples: tuple[float, ...] = ()
    if seg is not None and len(seg):  # the profiler's chain runs, if the loop has too few
        chain = seg.sum(axis=1)
        samples = tuple(float(v) for v in chain / np.median(chain))
    frames = rec["frames"]
    dev = [f["ms"]["total"] for f in frames.get((model, "device-only"), [])
           if f["where"] == "device"]
    if len(dev) >= 10:  # the device's whole-frame times, as measured in the loop
        samples = tuple(float(v) for v in np.asarray(dev) / np.median(dev))
    chain_ms = float(m["device_ms"])  # the whole chain under the quota, as profiled
    engine = max(float(np.median(dev)) - chain_ms, 0.0) if dev else 0.0
    fitted["engine_ms_on_device"] = engine
    fitted["device_p95_over_median"] = float(np.percentile(samples, 95)) if samples else 1.0
    resid = [f["ms"]["network"] - f["bytes_sent"] * 8 / (max(f["link_mbps"], 1e-3) * 1e3)
             for fl in frames.values() for f in fl
             if f["model"] == model and f["where"] == "edge" and f["bytes_sent"]
             and f["link_mbps"] > 0.01]
    overhead = float(np.median(np.maximum(resid, 0.0))) if resid else 0.3
    fitted["overhead_ms"] = overhead
    # past the budget: a timed-out frame's total beyond encode + budget + the local finish
    late = [f["ms"]["total"] - f["ms"]["encode"] - f["budget_ms"] - f["ms"]["device"]
            for fl in frames.values() for f in fl
            if f["model"] == model and f["fallback"] == "timeout" and f["budget_ms"]
            and f["where"] == "device" and f["n_exits"] == 0]
    grace = float(np.median(late)) if late else 0.0
    fitted["timeout_grace_ms"] = grace
    physics = Physics(overhead_ms=overhead, subsecond_sigma=0.02, rtt_sigma=0.1,
                      device_samples=samples, engine_ms=engine / _slowdown(m),
                      timeout_grace_ms=max(grace, 0.0))
    return physics, fitted


def _slowdown(m: Mapping) -> float:
    """The device's time over the profile the candidates are built from: the measured
    whole chain under the quota over the profile's segment times (model.slowdown divides
    by a separately measured reference, which need not be the profile's)."""
    return float(m["device_ms"]) / sum(m["profile"]["seg_ms"])


def _server(rec: Mapping, model: str, table: CandidateTable) -> tuple[float, float]:
    """(server slowdown, extra wait under load) from the offloaded frames: the server's
    time over the profile's outside the load windows, and how much longer server + queue
    took inside them (other devices' work competes for the server's queue and CPU; the
    simulator models both as queueing)."""
    quiet, loaded = [], []
    srv = {c.cut: table.srv_ms[i] for i, c in enumerate(table.candidates) if c.cut != "device"}
    for (mdl, _), fl in rec["frames"].items():
        if mdl != model:
            continue
        for f in fl:
            if f["where"] == "edge" and srv.get(f["sent_cut"], 0) > 0:
                ratio = (f["ms"]["server"] + f["ms"]["queue"]) / srv[f["sent_cut"]]
                (loaded if f["load"] else quiet).append((ratio, srv[f["sent_cut"]]))
    slow = float(np.median([r for r, _ in quiet])) if quiet else 1.0
    extra = (float(np.median([(r - slow) * ms for r, ms in loaded])) if loaded else 0.0)
    return slow, max(extra, 0.0)


def _rates(rec: Mapping, seconds: float) -> np.ndarray:
    events = sorted(rec["meta"].get("rate_events") or [])
    if not events:
        raise PolicyError("the recording's meta has no rate_events (the shaped rate over "
                          "time); record with a current `edgesdk bench e2e --record`")
    t = np.arange(0, seconds, RATE_DT_S)
    idx = np.searchsorted([e[0] for e in events], t, side="right") - 1
    return np.array([events[max(i, 0)][1] for i in idx], float)


def scenario(rec: Mapping, model: str, frames: Sequence[Mapping], physics: Physics
             ) -> Scenario:
    m = rec["models"][model]
    table = build_candidates(profile_from_json(m["profile"]))
    times = np.array([f["t"] for f in frames], float)
    seconds = float(times.max()) + 5.0
    mbps = _rates(rec, seconds)
    server_slowdown, queue_ms = _server(rec, model, table)
    load = np.zeros(len(mbps))
    svc = float(np.median(table.srv_ms[table.wire_bytes > 0])) * server_slowdown
    if queue_ms > 0 and svc > 0:  # the M/D/1 utilization that waits queue_ms on average
        u = min(2 * queue_ms / (svc + 2 * queue_ms), 0.97)
        for a, b in rec["meta"].get("load_windows", []):
            load[int(a / RATE_DT_S):int(b / RATE_DT_S)] = u
    # the server advertised its tail times at the reference speed (the same machine); its
    # real speed under the benchmark's load is what the replies showed
    return Scenario(table, mbps, rtt_ms=0.1, device_slowdown=_slowdown(m),
                    server_slowdown=1.0, server_drift=server_slowdown, load=load,
                    slo_ms=float(m["slo_ms"]),
                    task=rec["meta"].get("task", "balanced"), label=model, dataset="recorded",
                    physics=physics, rate_dt_s=RATE_DT_S, times=times)


def _chooser(strategy: str, frames: Sequence[Mapping], table: CandidateTable):
    if strategy in ("planner", "planner-static"):  # with and without exploring
        return plan
    if strategy == "policy":
        return PolicyNet.load().decide
    # a fixed strategy: the plan its frames ran (most common), device-only when offline
    n, cut, bits, zstd = Counter((f["n_exits"], f["cut"], f["bits"], bool(f["zstd"]))
                                 for f in frames).most_common(1)[0][0]
    if Candidate(n, cut, bits, zstd) not in table.candidates:
        raise PolicyError(f"strategy {strategy!r} ran plan {n} exits, {cut}@{bits} "
                          f"(zstd {zstd}), which is not a candidate of the recorded profile")
    i = table.index(Candidate(n, cut, bits, zstd))
    fallback = [j for j, c in enumerate(table.candidates) if c.cut == "device"]
    local = fallback.index(table.index(Candidate(n, "device", 32)))

    def choose(t: CandidateTable, state) -> int:
        return i if len(t) == len(table) else local
    return choose


def compare(rec: Mapping, seeds: int = 3) -> dict[str, Any]:
    """Per model, strategy and scenario: real and simulated mean and p95 latency (ms) and
    their ratios; the simulated numbers are medians over `seeds` seeds."""
    rows = []
    fits = {}
    for model in rec["models"]:
        physics, fitted = fit_physics(rec, model)
        table = build_candidates(profile_from_json(rec["models"][model]["profile"]))
        fitted["server_over_profile"], fitted["queue_ms_under_load"] = _server(rec, model, table)
        fitted["device_slowdown"] = _slowdown(rec["models"][model])
        fits[model] = fitted
        for (mdl, strategy), frames in sorted(rec["frames"].items()):
            if mdl != model:
                continue
            sc = scenario(rec, model, frames, physics)
            choose = _chooser(strategy, frames, sc.table)
            adaptive = strategy in ("planner", "policy")  # these explore; planner-static not
            sims = [run_episode(replace(sc, seed=s), choose, explore=adaptive).latency_ms
                    for s in range(seeds)]
            names = [f["scenario"] for f in frames]
            counted = np.array([f.get("phase") != "settle" for f in frames])
            real = np.array([f["ms"]["total"] for f in frames])
            for name in dict.fromkeys(names):
                sel = counted & (np.array(names) == name)
                if sel.sum() < 5:
                    continue
                sim_mean = float(np.median([s[sel].mean() for s in sims]))
                sim_p95 = float(np.median([np.percentile(s[sel], 95) for s in sims]))
                r_mean, r_p95 = float(real[sel].mean()), float(np.percentile(real[sel], 95))
                rows.append({"model": model, "strategy": strategy, "scenario": name,
                             "frames": int(sel.sum()), "real_mean_ms": r_mean,
                             "sim_mean_ms": sim_mean, "real_p95_ms": r_p95,
                             "sim_p95_ms": sim_p95, "mean_ratio": sim_mean / r_mean,
                             "p95_ratio": sim_p95 / r_p95})
    within = [r for r in rows if abs(r["mean_ratio"] - 1) <= TOLERANCE
              and abs(r["p95_ratio"] - 1) <= TOLERANCE]
    per_strategy = {}
    for model, strategy in {(r["model"], r["strategy"]) for r in rows}:
        rs = [r for r in rows if r["model"] == model and r["strategy"] == strategy]
        w = np.array([r["frames"] for r in rs], float)
        per_strategy[f"{model}/{strategy}"] = {
            "real_mean_ms": float(np.average([r["real_mean_ms"] for r in rs], weights=w)),
            "sim_mean_ms": float(np.average([r["sim_mean_ms"] for r in rs], weights=w))}
    for v in per_strategy.values():
        v["mean_ratio"] = v["sim_mean_ms"] / v["real_mean_ms"]
    return {"testbed": rec["meta"].get("testbed", {}).get("kind"), "fitted": fits,
            "rows": rows, "per_strategy": per_strategy, "within_10pct": len(within),
            "total": len(rows)}


def format_text(report: Mapping) -> str:
    from .._table import format_table

    head = ["model", "strategy", "scenario", "frames", "real mean", "sim mean", "ratio",
            "real p95", "sim p95", "ratio"]
    body = [[r["model"], r["strategy"], r["scenario"], r["frames"],
             f"{r['real_mean_ms']:.1f}", f"{r['sim_mean_ms']:.1f}", f"{r['mean_ratio']:.2f}",
             f"{r['real_p95_ms']:.1f}", f"{r['sim_p95_ms']:.1f}", f"{r['p95_ratio']:.2f}"]
            for r in report["rows"]]
    lines = [format_table(head, body), "",
             f"within {100 * TOLERANCE:.0f} % on both mean and p95: {report['within_10pct']} "
             f"of {report['total']} (model, strategy, scenario) rows", "",
             "per strategy (frame-weighted mean): " + ", ".join(
                 f"{k} {v['mean_ratio']:.2f}x" for k, v in sorted(report["per_strategy"].items())),
             "fitted from the recording: " + "; ".join(
                 f"{m}: " + ", ".join(f"{k} {v:.3g}" for k, v in f.items())
                 for m, f in report["fitted"].items())]
    return "\n".join(lines)


def run(path: str | Path, seeds: int = 3) -> dict[str, Any]:
    report = compare(load_recording(path), seeds)
    report["recording"] = str(path)
    if report["total"] == 0:
        raise PolicyError(f"{path}: no (model, strategy, scenario) with 5 or more counted "
                          "frames to compare")
    return report
