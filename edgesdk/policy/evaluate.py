"""Compare decision strategies in the simulator on bandwidth traces (the TEST split), with
metrics that separate a good strategy from a bad one.

Strategies:
- device-only (every exit on, the whole model here), edge-only (the input at 8 bits);
- best-fixed: the hindsight-best fixed candidate, chosen with every candidate's realized
  reward over the whole episode ("/episode": per episode, the strongest fixed baseline,
  chosen with the true device speed; "/dataset": one candidate per model and dataset, the
  Neurosurgeon-style choice a deployer would make after measuring that network);
- planner (the analytic planner on the device's estimates), pessimistic (the planner at the
  low bandwidth forecast), policy (the bundled network);
- ceiling (ceiling.py: per frame, the best expected reward given perfect knowledge of the
  present, which a decision that must estimate the present is not expected to beat),
  oracle (the per-frame best in hindsight, which also knows the frame's own future).

Per dataset and in aggregate: mean per-frame reward (latency capped by the engine's
fallback, see simulator.py), regret to the oracle, and the **gap closed**
``(R - R_best_fixed) / (R_oracle - R_best_fixed)`` against the per-episode best fixed
candidate, with a 95 % bootstrap confidence interval over episodes (the ratio of mean
differences, resampled); differences to each baseline with their CIs; latency in units of
the SLO (mean, p95), SLO violations, fallbacks, accuracy and decision time.

Episodes cover each trace over its full length: `windows` windows of `seconds` seconds,
evenly spaced from its start to its end, at each scale in SCALES, plus fixed rates. Each
episode draws a model from the group (real bundles' profiles with a device 1x..100x slower
than profiled, held-out synthetic models, or the digits bundle), an SLO, a task, the
server's load and, in some episodes, an outage (simulator.make_scenario).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .candidates import CandidateTable, ModelProfile, build_candidates
from .ceiling import CausalCeiling
from .planner import plan, plan_pessimistic
from .simulator import (
    FIXED_RATES,
    Chooser,
    EpisodeResult,
    Scenario,
    World,
    load_traces,
    make_scenario,
    run_episode,
    run_fixed,
    synthetic_profile,
)

SCALES = (0.5, 1.0, 10.0)
HELD_OUT = 1_000_003
BASELINES = ("device-only", "edge-only", "best-fixed/dataset", "best-fixed/episode")
ADAPTIVE = ("planner", "pessimistic", "policy")
STRATEGIES = (*BASELINES, *ADAPTIVE, "ceiling", "oracle")
BOOTSTRAP = 2000


def eval_scenarios(traces: Sequence[tuple[str, np.ndarray]], models: Sequence[ModelProfile],
                   slowdown: tuple[float, float], seed: int, windows: int = 3,
                   seconds: int = 60, scales: Sequence[float] = SCALES,
                   period_s: float = 0.25) -> list[Scenario]:
    """The evaluation episodes (see the module docstring), seeded: every strategy and every
    run with the same arguments sees the same episodes."""
    links = []
    for name, tr in traces:
        last = max(len(tr) - seconds, 0)
        starts = sorted({int(s) for s in np.linspace(0, last, windows)})
        for s in scales:
            for start in starts:
                mbps = np.resize(tr[start:start + seconds], seconds) * s
                links.append((f"{name}@{start}s x{s:g}", name.split("/")[0], mbps))
    for r in FIXED_RATES:
        for w in range(windows):
            links.append((f"fixed {r:g} Mbit/s #{w}", "fixed", np.full(seconds, r)))
    out = []
    tables: dict[int, CandidateTable] = {}
    for i, (label, dataset, mbps) in enumerate(links):
        rng = np.random.default_rng([seed, i])
        m = i % len(models)
        table = tables.setdefault(m, build_candidates(models[m]))
        sd = math.exp(rng.uniform(math.log(slowdown[0]), math.log(slowdown[1])))
        out.append(make_scenario(rng, table, mbps, sd, f"{models[m].name}: {label}", dataset,
                                 period_s=period_s))
    return out


@dataclass
class EpisodeRecord:
    dataset: str
    model: str
    slo_ms: float
    fixed_means: np.ndarray  # every candidate's mean reward as a fixed plan
    runs: dict[str, EpisodeResult]


def _fixed_run(sc: Scenario, world: World, i: int) -> EpisodeResult:
    """A fixed plan through the engine's loop: candidate i while the link is up, the
    device-only plan with the same exits while it is not."""
    t = sc.table
    c = t.candidates[i]
    device = [j for j, d in enumerate(t.candidates) if d.cut == "device"]
    fallback = device.index(t.index(type(c)(c.n_exits, "device", 32)))

    def choose(table: CandidateTable, state) -> int:
        return i if len(table) == len(t) else fallback
    return run_episode(sc, choose, world=world)


def _device_only(t: CandidateTable) -> int:
    return max((i for i, c in enumerate(t.candidates) if c.cut == "device"),
               key=lambda i: t.candidates[i].n_exits)


def _edge_only(t: CandidateTable) -> int | None:
    return next((i for i, c in enumerate(t.candidates)
                 if c.cut == "input" and c.bits == 8 and c.n_exits == 0), None)


def run_records(scenarios: Sequence[Scenario], choosers: Mapping[str, Chooser]
                ) -> list[EpisodeRecord]:
    """Every strategy on every episode; best-fixed/dataset is filled in by `best_per_dataset`."""
    records = []
    for sc in scenarios:
        world = World(sc)
        # the choosers are adaptive strategies: they explore as the engine does
        runs = {name: run_episode(sc, choose, world=world, explore=True)
                for name, choose in choosers.items()}
        runs["ceiling"] = run_episode(sc, CausalCeiling(world).choose, world=world)
        runs["oracle"] = run_episode(sc, None, world=world)
        means = run_fixed(sc, world).mean(axis=0)
        runs["device-only"] = _fixed_run(sc, world, _device_only(sc.table))
        edge = _edge_only(sc.table)
        runs["edge-only"] = _fixed_run(sc, world, edge if edge is not None
                                       else int(np.argmax(sc.table.wire_bytes)))
        runs["best-fixed/episode"] = _fixed_run(sc, world, int(np.argmax(means)))
        records.append(EpisodeRecord(sc.dataset, sc.table.model, sc.slo_ms, means, runs))
    return records


def best_per_dataset(scenarios: Sequence[Scenario], records: Sequence[EpisodeRecord]) -> None:
    """One fixed candidate per (dataset, model): the best summed over those episodes."""
    groups: dict[tuple[str, str], list[int]] = {}
    for j, r in enumerate(records):
        groups.setdefault((r.dataset, r.model), []).append(j)
    for idx in groups.values():
        best = int(np.argmax(np.sum([records[j].fixed_means for j in idx], axis=0)))
        for j in idx:
            sc = scenarios[j]
            records[j].runs["best-fixed/dataset"] = _fixed_run(sc, World(sc), best)


def _bootstrap(values: np.ndarray, stat: Callable[[np.ndarray], float], rng
               ) -> tuple[float, float]:
    n = len(values)
    if n < 2:
        return (math.nan, math.nan)
    draws = [stat(values[rng.integers(0, n, n)]) for _ in range(BOOTSTRAP)]
    lo, hi = np.nanpercentile(draws, [2.5, 97.5])
    return float(lo), float(hi)


def gap_closed(reward: np.ndarray, best: np.ndarray, oracle: np.ndarray, rng
               ) -> tuple[float, tuple[float, float]]:
    """(R - R_best) / (R_oracle - R_best) over episodes (the ratio of mean differences), and
    its 95 % bootstrap CI; per-episode arrays."""
    pairs = np.stack([reward - best, oracle - best], axis=1)

    def gap(p: np.ndarray) -> float:
        den = p[:, 1].mean()
        return float(p[:, 0].mean() / den) if den > 1e-12 else math.nan

    return gap(pairs), _bootstrap(pairs, gap, rng)


def summarize(records: Sequence[EpisodeRecord], seed: int = 0) -> dict:
    """Metrics of each strategy over these episodes (see the module docstring)."""
    rng = np.random.default_rng(seed)
    per_ep = {s: np.array([r.runs[s].reward.mean() for r in records]) for s in STRATEGIES}
    oracle, best = per_ep["oracle"], per_ep["best-fixed/episode"]
    out: dict = {"episodes": len(records), "frames": int(sum(len(r.runs["oracle"].reward)
                                                               for r in records))}
    for s in STRATEGIES:
        runs = [r.runs[s] for r in records]
        lat_slo = np.concatenate([x.latency_ms / r.slo_ms for x, r in zip(runs, records)])
        reward_ci = _bootstrap(per_ep[s], np.mean, rng)  # first: the draws' order as before
        gap, gap_ci = gap_closed(per_ep[s], best, oracle, rng)
        m = {"reward": float(per_ep[s].mean()),
             "reward_ci": reward_ci,
             "regret": float((oracle - per_ep[s]).mean()),
             "gap_closed": gap,
             "gap_closed_ci": gap_ci,
             "accuracy": float(np.mean(np.concatenate([x.accuracy for x in runs]))),
             "latency_slo_mean": float(lat_slo.mean()),
             "latency_slo_p95": float(np.percentile(lat_slo, 95)),
             "slo_violation": float(np.mean(np.concatenate([x.violated for x in runs]))),
             "fallbacks": float(np.mean(np.concatenate([x.fell_back for x in runs]))),
             "decision_us": float(np.mean(np.concatenate([x.decision_s for x in runs])) * 1e6)}
        for b in ("device-only", "best-fixed/dataset", "best-fixed/episode", "planner"):
            d = per_ep[s] - per_ep[b]
            m[f"vs_{b}"] = float(d.mean())
            m[f"vs_{b}_ci"] = _bootstrap(d, np.mean, rng)
        out[s] = m
    return out


def targets(summary: Mapping) -> dict[str, bool]:
    """The issue's targets for the shipped policy on one group of episodes."""
    p = summary["policy"]

    def not_below(b: str) -> bool:
        return p[f"vs_{b}_ci"][1] >= 0  # not worse beyond the CI

    return {"gap_closed>=0.5": p["gap_closed"] >= 0.5,
            "not below device-only": not_below("device-only"),
            "not below best-fixed/dataset": not_below("best-fixed/dataset"),
            "beats planner beyond CI": p["vs_planner_ci"][0] > 0}


def evaluate(traces_dir: str | Path, profiles: Sequence[ModelProfile], policy: Chooser,
             seed: int = 1, synthetic: int = 20, windows: int = 3, seconds: int = 60,
             digits: ModelProfile | None = None, max_traces: int | None = None) -> dict:
    """The report: per model group ("real", "synthetic", "digits") and per dataset (trace
    family, or "fixed"), the metrics of `summarize`, and the targets."""
    traces = load_traces(traces_dir)[:max_traces]
    choosers = {"planner": plan, "pessimistic": plan_pessimistic, "policy": policy}
    groups: dict[str, tuple[list[Scenario], list[EpisodeRecord]]] = {}
    model_sets = []
    if profiles:
        model_sets.append(("real", list(profiles), (1.0, 100.0), seed))
    if synthetic:
        rng = np.random.default_rng(HELD_OUT + seed)
        model_sets.append(("synthetic", [synthetic_profile(rng, f"synthetic{i}")
                                         for i in range(synthetic)], (0.5, 5.0), seed + 1))
    if digits is not None:
        model_sets.append(("digits", [digits], (1.0, 100.0), seed + 2))
    for name, models, slowdown, s in model_sets:
        scs = eval_scenarios(traces, models, slowdown, s, windows=windows, seconds=seconds)
        recs = run_records(scs, choosers)
        best_per_dataset(scs, recs)
        groups[name] = (scs, recs)
    report: dict = {"traces": str(traces_dir), "n_traces": len(traces), "scales": list(SCALES),
                    "fixed_rates": list(FIXED_RATES), "windows": windows, "seconds": seconds,
                    "seed": seed, "groups": {}}
    for name, (_, recs) in groups.items():
        datasets = sorted({r.dataset for r in recs})
        g = {"all": summarize(recs, seed)}
        for d in datasets:
            g[d] = summarize([r for r in recs if r.dataset == d], seed)
        g["targets"] = {d: targets(g[d]) for d in ("all", *datasets)}
        report["groups"][name] = g
    return report


def _ci(ci: Sequence[float]) -> str:
    return f"[{ci[0]:+.3f},{ci[1]:+.3f}]"


def format_table(report: Mapping) -> str:
    lines = [f"{report['n_traces']} traces x scales {report['scales']} ({report['windows']} "
             f"windows of {report['seconds']} s over each trace's length) + fixed rates "
             f"{report['fixed_rates']} Mbit/s"]
    head = (f"{'strategy':<19} {'reward':>8} {'regret':>7} {'gap closed':>10} "
            f"{'95% CI':>17} {'vs best-fixed/ds':>17} {'lat/SLO':>7} {'p95':>6} "
            f"{'viol':>6} {'fallb':>6} {'acc':>6} {'us':>6}")
    for g, res in report["groups"].items():
        for d, m in res.items():
            if d == "targets":
                continue
            lines += ["", f"[{g} / {d}] {m['episodes']} episodes, {m['frames']} frames", head]
            for s in STRATEGIES:
                x = m[s]
                lines.append(
                    f"{s:<19} {x['reward']:8.4f} {x['regret']:7.4f} {x['gap_closed']:10.3f} "
                    f"{_ci(x['gap_closed_ci']):>17} {_ci(x['vs_best-fixed/dataset_ci']):>17} "
                    f"{x['latency_slo_mean']:7.3f} {x['latency_slo_p95']:6.2f} "
                    f"{100 * x['slo_violation']:5.1f}% {100 * x['fallbacks']:5.1f}% "
                    f"{x['accuracy']:6.3f} {x['decision_us']:6.1f}")
            lines.append("targets: " + ", ".join(
                f"{k} {'OK' if v else 'MISSED'}" for k, v in res["targets"][d].items()))
    return "\n".join(lines)


def save_png(report: Mapping, path: str | Path) -> bool:
    """Gap closed per strategy, dataset and group, with the CIs."""
    from .._plot import pyplot

    plt = pyplot()
    if plt is None:
        return False
    groups = report["groups"]
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 3.8), squeeze=False)
    names = [s for s in STRATEGIES if s not in ("oracle", "best-fixed/episode")]
    for ax, (g, res) in zip(axes[0], groups.items()):
        datasets = [d for d in res if d != "targets"]
        width = 0.8 / len(datasets)
        for j, d in enumerate(datasets):
            vals = [res[d][s]["gap_closed"] for s in names]
            err = np.array([[v - res[d][s]["gap_closed_ci"][0],
                             res[d][s]["gap_closed_ci"][1] - v] for s, v in zip(names, vals)]).T
            x = np.arange(len(names)) + j * width
            ax.bar(x, vals, width, yerr=np.nan_to_num(err), label=d, capsize=2)
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=40, ha="right")
        ax.set_ylim(-1.5, 1.05)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(f"{g}: gap closed (best fixed = 0, oracle = 1)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
