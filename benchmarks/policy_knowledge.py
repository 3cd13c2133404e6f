"""What knowing the link buys the planner, in the simulator on the TEST traces (the real
models' group of `edgesdk policy eval`, the same episodes): the planner on the device's
estimates, the planner told the trace's rate exactly (as of now, or seconds late), the
planner with idle links probed more often, the causal ceiling and the oracle. Gap closed
against the hindsight-best fixed candidate's mean reward (simulator.run_fixed), with 95 %
bootstrap CIs over episodes. About 5 minutes.

    python benchmarks/policy_knowledge.py [--traces DIR] [--max-traces N] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace

import numpy as np

from edgesdk.policy import evaluate as ev
from edgesdk.policy import simulator as sim
from edgesdk.policy.ceiling import CausalCeiling
from edgesdk.policy.planner import plan
from edgesdk.policy.profiles import bundled_profiles

LAGS_S = (0.0, 1.0, 2.0, 4.0)
PROBE_IDLE_S = (1.0, 0.5)


def told_the_rate(world: sim.World, lag_s: float):
    """The planner, its bandwidth replaced by the trace's rate `lag_s` seconds ago (spread:
    the simulator's sub-second noise; overhead: the simulator's)."""
    sc, frame = world.sc, [0]
    spread = math.sqrt(math.exp(sc.physics.subsecond_sigma ** 2) - 1)

    def choose(table, state):
        k = min(frame[0], sc.frames - 1)
        frame[0] += 1
        slot = max(int((world.t[k] - lag_s) / sim.SLOT_S), 0)
        bw = sim.OUTAGE_MBPS if world.outage[slot] else float(world.slot_mbps[slot])
        return plan(table, replace(state, bw_mbps=bw, bw_std=bw * spread, bw_low_mbps=0.0,
                                   bw_history=(), bw_overhead_ms=sc.physics.overhead_ms))
    return choose


def run(traces: str, max_traces: int | None, seed: int = 1) -> dict:
    scenarios = ev.eval_scenarios(sim.load_traces(traces)[:max_traces], bundled_profiles(),
                                  (1.0, 100.0), seed, windows=2)
    rewards: dict[str, list[float]] = {}

    def add(name: str, ep: sim.EpisodeResult) -> None:
        rewards.setdefault(name, []).append(float(ep.reward.mean()))

    for sc in scenarios:
        world = sim.World(sc)
        rewards.setdefault("best fixed (episode)", []).append(
            float(sim.run_fixed(sc, world).mean(axis=0).max()))
        add("planner", sim.run_episode(sc, plan, world=world, explore=True))
        for lag in LAGS_S:
            add(f"planner told the rate, {lag:g} s late",
                sim.run_episode(sc, told_the_rate(world, lag), world=world, explore=True))
        default = sim.PROBE_IDLE_S
        try:
            for idle in PROBE_IDLE_S:
                sim.PROBE_IDLE_S = idle
                add(f"planner, idle link probed every {idle:g} s",
                    sim.run_episode(sc, plan, world=world, explore=True))
        finally:
            sim.PROBE_IDLE_S = default
        add("ceiling", sim.run_episode(sc, CausalCeiling(world).choose, world=world))
        add("oracle", sim.run_episode(sc, None, world=world))
    r = {k: np.array(v) for k, v in rewards.items()}
    base, oracle = r["best fixed (episode)"], r["oracle"]
    rng = np.random.default_rng(seed)
    out = {"episodes": len(scenarios), "strategies": {}}
    for name, v in r.items():
        gap, ci = ev.gap_closed(v, base, oracle, rng)
        out["strategies"][name] = {"reward": float(v.mean()), "gap_closed": gap,
                                   "gap_closed_ci": list(ci)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--traces", default=str(sim.default_traces_dir() / "test"))
    ap.add_argument("--max-traces", type=int)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    report = run(args.traces, args.max_traces)
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"real models, {report['episodes']} episodes: gap closed (best fixed per episode = 0, "
          "oracle = 1)")
    for name, m in report["strategies"].items():
        lo, hi = m["gap_closed_ci"]
        print(f"  {name:<42} reward {m['reward']:.4f}  gap closed {m['gap_closed']:+.2f} "
              f"[{lo:+.2f}, {hi:+.2f}]")


if __name__ == "__main__":
    main()
