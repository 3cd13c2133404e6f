"""Compare decision strategies on bandwidth traces (the TEST split) in the simulator.

Strategies: device-only (all exits on), edge-only (input at 8 bits), best fixed split in
hindsight (Neurosurgeon: the planner fed the episode's mean bandwidth, one choice per
episode), the planner fed the estimates, the policy network, the hindsight oracle (the
planner fed the true state at every step) and uniform random (the reference of the
normalized score (R - R_random) / (R_oracle - R_random)).

Episodes: every trace at each scale in SCALES plus the fixed rates, each with a model; the
true state does not depend on the choices (the simulator draws its noise unconditionally),
so every strategy sees the same requests. Models: the given bundles' real profiles (device
slowdown 1x..100x, for Pi-class devices) and held-out synthetic models, seeded apart from
training (seed offset HELD_OUT).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .._plot import pyplot
from .candidates import CandidateTable, ModelProfile, build_candidates
from .net import PolicyNet
from .planner import expected_rewards, expected_terms, plan
from .simulator import (
    FIXED_RATES,
    Scenario,
    load_traces,
    make_scenario,
    run_episode,
    synthetic_profile,
)
from .state import State

SCALES = (0.5, 1.0, 10.0)
HELD_OUT = 1_000_003
STRATEGIES = ("device-only", "edge-only", "best-fixed-split", "planner-estimates", "policy",
              "oracle", "random")


def _episodes(traces, models: Sequence[ModelProfile], slowdown: tuple[float, float],
              steps: int, seed: int) -> list[Scenario]:
    out = []
    links = [(f"{n} x{s:g}", tr * s) for n, tr in traces for s in SCALES]
    links += [(f"fixed {r:g} Mbit/s", np.full(steps, r)) for r in FIXED_RATES]
    for i, (label, mbps) in enumerate(links):
        rng = np.random.default_rng([seed, i])
        model = models[i % len(models)]
        sd = math.exp(rng.uniform(math.log(slowdown[0]), math.log(slowdown[1])))
        out.append(make_scenario(rng, build_candidates(model), np.resize(mbps[:steps], steps),
                                 sd, f"{model.name}: {label}"))
    return out


def _fixed(table: CandidateTable, cut: str, bits: int, n_exits: int | None = None) -> int:
    rows = [i for i, c in enumerate(table.candidates) if c.cut == cut and c.bits == bits]
    return max(rows, key=lambda i: table.candidates[i].n_exits) if n_exits is None else \
        next(i for i in rows if table.candidates[i].n_exits == n_exits)


def _run(sc: Scenario, choose: Callable, seed: int, ep: int):
    """Per step: (choice, true rewards, true state, decision seconds)."""
    out = []

    def timed(table, est):
        t0 = time.perf_counter()
        a = choose(table, est)
        timed.dt = time.perf_counter() - t0
        return a

    for st in run_episode(sc, timed, np.random.default_rng([seed, ep, 7])):
        out.append((st.choice, st.rewards_true, st.true, timed.dt))
    return out


def evaluate_group(scenarios: Sequence[Scenario], net: PolicyNet, seed: int) -> dict:
    acc: dict[str, dict[str, list]] = {s: {"reward": [], "acc": [], "lat": [], "viol": [],
                                           "dt": []} for s in STRATEGIES}
    for ep, sc in enumerate(scenarios):
        runs = {"planner-estimates": _run(sc, plan, seed, ep),
                "policy": _run(sc, net.decide, seed, ep)}
        t = sc.table
        mean_state = State(bw_mbps=float(np.mean(sc.mbps)), slo_ms=sc.slo_ms, rtt_ms=sc.rtt_ms,
                           queue_ms=sc.queue_ms, device_slowdown=sc.device_slowdown,
                           server_slowdown=sc.server_slowdown, task=sc.task)
        fixed = {"device-only": _fixed(t, "device", 32),
                 "edge-only": _fixed(t, "input", 8, 0),
                 "best-fixed-split": int(np.argmax(expected_rewards(t, mean_state)))}
        base = runs["planner-estimates"]
        lat_rng = np.random.default_rng([seed, ep, 11])
        for k, (_, rewards, true, _) in enumerate(base):
            a_, lat, viol = expected_terms(t, true)
            choices = {name: (i, 0.0) for name, i in fixed.items()}
            choices["oracle"] = (int(np.argmax(rewards)), 0.0)
            for name in ("planner-estimates", "policy"):
                choices[name] = (runs[name][k][0], runs[name][k][3])
            u = lat_rng.random()  # one exit draw per request, shared by the strategies
            for name, (i, dt) in choices.items():
                rec = acc[name]
                rec["reward"].append(rewards[i])
                rec["acc"].append(a_[i])
                rec["viol"].append(viol[i])
                rec["dt"].append(dt)
                rec["lat"].append(_latency_draw(t, true, i, lat[i], u))
            r = acc["random"]
            r["reward"].append(float(rewards.mean()))
            r["acc"].append(float(a_.mean()))
            r["viol"].append(float(viol.mean()))
            r["dt"].append(0.0)
            j = int(lat_rng.integers(len(t)))
            r["lat"].append(_latency_draw(t, true, j, lat[j], u))
    return _summarize(acc, len(scenarios))


def _latency_draw(t: CandidateTable, true: State, i: int, mean_lat: float, u: float) -> float:
    exit_ms = t.exit_ms[i] * true.device_slowdown
    if u < t.p_exit[i]:
        return float(exit_ms)
    return float((mean_lat - t.p_exit[i] * exit_ms) / max(1 - t.p_exit[i], 1e-9))


def _summarize(acc: dict, episodes: int) -> dict:
    out = {}
    for name, rec in acc.items():
        lat = np.asarray(rec["lat"])
        out[name] = {"reward": float(np.mean(rec["reward"])),
                     "accuracy": float(np.mean(rec["acc"])),
                     "p50_ms": float(np.percentile(lat, 50)),
                     "p95_ms": float(np.percentile(lat, 95)),
                     "slo_violation": float(np.mean(rec["viol"])),
                     "decision_us": float(np.mean(rec["dt"]) * 1e6)}
    r_rand, r_or = out["random"]["reward"], out["oracle"]["reward"]
    for m in out.values():
        m["score"] = (m["reward"] - r_rand) / (r_or - r_rand) if r_or > r_rand else float("nan")
        m["ratio_to_oracle"] = m["reward"] / r_or if r_or > 0 else float("nan")
    out["_meta"] = {"episodes": episodes, "requests": len(acc["oracle"]["reward"])}
    return out


def targets(group: dict) -> dict:
    p, o = group["policy"], group["oracle"]
    fixed = ("device-only", "edge-only", "best-fixed-split")
    return {
        "score>=0.95": p["score"] >= 0.95,
        "reward>=0.95*oracle": bool(p["ratio_to_oracle"] >= 0.95),
        "policy>=planner-estimates": p["reward"] >= group["planner-estimates"]["reward"],
        "policy>every fixed": all(p["reward"] > group[f]["reward"] for f in fixed),
        "violations<=oracle+2pt": p["slo_violation"] <= o["slo_violation"] + 0.02,
    }


def evaluate(traces_dir: str | Path, profiles: Sequence[ModelProfile], net: PolicyNet,
             seed: int = 1, synthetic: int = 20, steps: int = 120) -> dict:
    traces = load_traces(traces_dir)
    groups = {}
    if profiles:
        groups["bundles"] = evaluate_group(
            _episodes(traces, profiles, (1.0, 100.0), steps, seed), net, seed)
    if synthetic:
        rng = np.random.default_rng(HELD_OUT + seed)
        models = [synthetic_profile(rng, f"synthetic{i}") for i in range(synthetic)]
        groups["synthetic"] = evaluate_group(
            _episodes(traces, models, (0.5, 5.0), steps, seed + 1), net, seed)
    return {"traces": str(traces_dir), "n_traces": len(traces), "scales": list(SCALES),
            "fixed_rates": list(FIXED_RATES), "steps": steps, "seed": seed,
            "groups": groups, "targets": {g: targets(v) for g, v in groups.items()}}


def format_table(report: dict) -> str:
    lines = [f"{report['n_traces']} traces x scales {report['scales']} + fixed rates "
             f"{report['fixed_rates']} Mbit/s, {report['steps']} requests per episode"]
    head = (f"{'strategy':<18} {'reward':>8} {'score':>7} {'/oracle':>8} {'acc':>7} "
            f"{'p50 ms':>9} {'p95 ms':>9} {'SLO viol':>9} {'decide us':>10}")
    for g, res in report["groups"].items():
        meta = res["_meta"]
        lines += ["", f"[{g}] {meta['episodes']} episodes, {meta['requests']} requests", head]
        for name in STRATEGIES:
            m = res[name]
            lines.append(f"{name:<18} {m['reward']:8.4f} {m['score']:7.3f} "
                         f"{m['ratio_to_oracle']:8.4f} {m['accuracy']:7.4f} {m['p50_ms']:9.2f} "
                         f"{m['p95_ms']:9.2f} {100 * m['slo_violation']:8.2f}% "
                         f"{m['decision_us']:10.1f}")
        lines.append("targets: " + ", ".join(f"{k} {'OK' if v else 'MISSED'}"
                                             for k, v in report["targets"][g].items()))
    return "\n".join(lines)


def save_png(report: dict, path: str | Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    groups = report["groups"]
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 3.5), squeeze=False)
    for ax, (g, res) in zip(axes[0], groups.items()):
        names = [s for s in STRATEGIES if s != "random"]
        ax.bar(names, [res[s]["score"] for s in names])
        ax.set_title(f"{g}: normalized score")
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
