"""Decision-time benchmark: the policy network's numpy forward, its feature computation,
and the planner (in C when the extension is built, and its numpy reference in the same
rounds), for candidate tables of growing size (digits, real and synthetic models).

Targets (issue 12): an uncached decision of the default decider (the planner) <= 100 us,
a cached one <= 10 us, on this machine.

    edgesdk bench policy [--json] [--rounds N]     (or benchmarks/bench_policy.py)
"""

from __future__ import annotations

from functools import partial

import numpy as np

from . import format_table, time_interleaved

__all__ = ["format_text", "run"]

UNCACHED_US = 100.0  # the planner's decision
CACHED_US = 10.0  # the engine's decision-cache lookup


def _tables():
    from ..bundle import Bundle
    from ..models import DIGITS_BUNDLE
    from ..policy import build_candidates, model_profile
    from ..policy.profiles import bundled_profiles
    from ..policy.simulator import synthetic_profile

    out = {"digits": build_candidates(model_profile(Bundle.load(DIGITS_BUNDLE).manifest))}
    out.update({p.name: build_candidates(p) for p in bundled_profiles()[:2]})
    rng = np.random.default_rng(0)
    sizes = {"small": (0, 30), "medium": (30, 100), "large": (100, 10_000)}
    found: dict = {}
    for _ in range(500):
        t = build_candidates(synthetic_profile(rng))
        for k, (lo, hi) in sizes.items():
            if lo <= len(t) < hi:
                found.setdefault(k, t)
        if len(found) == len(sizes):
            break
    for k in sizes:
        if k in found:
            out[f"synthetic-{k}"] = found[k]
    # the largest a device would see: 200 candidates (tables concatenated row-wise)
    big = max(out.values(), key=len)
    reps = -(-200 // len(big))
    out["200-candidates"] = type(big)(big.model, (big.candidates * reps)[:200],
                                      *(np.resize(getattr(big, f), 200) for f in (
                                          "dev_ms", "enc_ms", "wire_bytes", "srv_ms",
                                          "p_exit", "exit_ms", "exit_acc", "rest_acc",
                                          "bits")))
    return out


def run(rounds: int = 21, min_time: float = 0.02) -> list[dict]:
    from ..engine.strategy import state_key
    from ..policy import PolicyNet, State, features, plan
    from ..policy.net import TOP_K

    net = PolicyNet.load()
    state = State(bw_mbps=8.0, bw_std=2.0, bw_history=(6.0, 9.0, 8.0, 7.0), slo_ms=50.0,
                  rtt_ms=10.0, device_slowdown=3.0, bw_low_mbps=5.0, bw_overhead_ms=0.4)
    rows = []
    for name, table in _tables().items():
        top = np.arange(min(TOP_K, len(table)))
        x = features(table, state, rows=top)
        key = (id(table), state_key(state))

        def cached(table=table, key=key) -> bool:
            # what a cached decision costs the engine: the rounded state, compared
            return (id(table), state_key(state)) == key

        t = time_interleaved({"forward": partial(net.scores, x),
                              "features": partial(features, table, state, rows=top),
                              "decide": partial(net.decide, table, state),
                              "planner": partial(plan, table, state),
                              "planner_numpy": partial(_numpy_plan, table, state),
                              "cached": cached},
                             rounds=rounds, min_time=min_time)
        row = {"table": name, "candidates": len(table)}
        for k, v in t.items():
            s = v.stats()
            row[f"{k}_us"] = round(s.median * 1e6, 2)
            row[f"{k}_us_ci"] = [round(s.low * 1e6, 2), round(s.high * 1e6, 2)]
        rows.append(row)
    return rows


def _numpy_plan(table, state) -> int:
    """plan() with the numpy terms (the reference of the C planner; no energy price)."""
    from ..policy.planner import numpy_expected_terms, rewards_from_terms

    return int(np.argmax(rewards_from_terms(state, *numpy_expected_terms(table, state))))


def targets(rows: list[dict]) -> dict:
    """The issue's decision-time targets on the slowest table: {name: {"value", "limit",
    "met"}}."""
    planner = max(r["planner_us"] for r in rows)
    cached = max(r["cached_us"] for r in rows)
    return {"planner_us": {"value": planner, "limit": UNCACHED_US,
                           "met": planner <= UNCACHED_US},
            "cached_us": {"value": cached, "limit": CACHED_US, "met": cached <= CACHED_US}}


def format_text(rows: list[dict]) -> str:
    """The text report of :func:`run` (what `edgesdk bench policy` prints)."""
    from ..policy.planner import _native_terms

    cols = ["table", "candidates", "forward_us", "features_us", "decide_us", "planner_us",
            "planner_numpy_us", "cached_us"]
    lines = [format_table(cols, [[r[c] for c in cols] for r in rows]),
             "us per decision, median over rounds; decide = the planner's terms, features of "
             "its best few, the MLP forward (on precomputed features) and the argmax; planner "
             f"= the default decider ({'C' if _native_terms() else 'numpy'} terms), "
             "planner_numpy = the same with its numpy reference; cached = the engine's "
             "decision-cache lookup (the rounded state)"]
    for name, t in targets(rows).items():
        lines.append(f"target {name} <= {t['limit']:g} (slowest table): {t['value']:g}: "
                     f"{'met' if t['met'] else 'MISSED'}")
    return "\n".join(lines)
