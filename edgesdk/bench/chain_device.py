"""The origin device of `edgesdk bench chain` (bench.chain): every strategy, then a stage
killed mid-stream, in the mesh testbed's first camera (its namespace and CPU quota).

    python -m edgesdk.bench.chain_device '{"bundle": B, "frames": "F.npz", "nodes": [...],
        "links": {...}, "strategies": [...], "frames_per_run": N, "rounds": R, ...}'

(one JSON argument: the driver's, not a user's command line)

One ChainRunner measures every node once (its own speed, each stage's welcome), then runs
each strategy's plan in turn, in alternating order over the rounds. Prints one JSON line:
per run, the frames per second over `frames_per_run` frames after `warmup`, the latency
(p50, p95), where frames finished, and agreement with the fp32 answers; then the kill run.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

import numpy as np


def _plan(runner: Any, strategy: dict) -> Any:
    """A strategy's plan, costed with the measured speeds: the planner's (order null: the
    plan the runner made, chains side by side), the best single chain ("pipeline"), or the
    given order and cut points."""
    from ..policy.chain import best_chain
    from ..policy.mix import ChainMix

    if strategy.get("order") is None:
        return runner.plan
    if strategy["order"] == "pipeline":
        return ChainMix.of(best_chain(runner.model, [runner.nodes[n] for n in runner.order],
                                      runner.links, result_bytes=runner.result_bytes))
    return ChainMix.of(runner.plan_for(strategy["order"], strategy.get("points")))


def _chains(plan: Any, results: list) -> list[dict[str, Any]]:
    """Per chain of the plan: its share, and each remote stage's median compute and
    queueing as the replies of its frames say, beside the planner's CPU per frame there."""
    out = []
    for share, chain in zip(plan.shares, plan.chains):
        mine = [r for r in results if r.plan == chain.describe()]
        stages = {}
        for k, s in enumerate(chain.stages[1:]):
            hops = [r.hops[k] for r in mine if len(r.hops) > k]
            stages[s.node] = {key: round(float(np.median([h.get(key, 0.0) for h in hops])), 1)
                              for key in ("server_ms", "queue_ms")} if hops else {}
            stages[s.node]["predicted_cpu_ms"] = round(s.cpu_ms, 1)
        out.append({"plan": chain.describe(), "share": round(share, 3),
                    "frames": len(mine), "origin_predicted_ms": round(chain.stages[0].cpu_ms, 1),
                    "stages": stages})
    return out


def _measure(runner: Any, plan: Any, x: np.ndarray, ref: np.ndarray, n: int, warmup: int,
             kind: str) -> dict[str, Any]:
    from .e2e_data import answer
    from .e2e_models import reference_answer

    runner.down, runner.replan = {}, False  # measure the plan as it is
    for chain in plan.chains:  # every chain's first frames (its stages' first runs) first
        runner.plan = chain
        list(runner.run(x[:warmup]))
    runner.plan = plan
    frames = [x[i % len(x)] for i in range(n)]
    t0, cpu0 = time.perf_counter(), time.process_time()
    results = list(runner.run(frames))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    out = runner.bundle.manifest.outputs[0].name
    agree = [answer(r.outputs[out], kind) == reference_answer(ref[i % len(ref)])
             for i, r in enumerate(results)]
    lat = [r.latency_ms for r in results]
    return {"plan": plan.describe(), "fps": len(results) / seconds,
            "origin_cpu_ms": 1e3 * cpu / len(results),  # this process, every thread
            "chains": _chains(plan, results), "window": runner.in_flight(),
            "predicted_fps": plan.fps, "p50_ms": float(np.median(lat)),
            "p95_ms": float(np.percentile(lat, 95)), "agreement": float(np.mean(agree)),
            "device": sum(r.where == "device" and r.error is not None for r in results),
            "replans": len(runner.replans)}


def _kill_run(runner: Any, plan: Any, x: np.ndarray, kill: dict) -> dict[str, Any]:
    """The plan streaming; the middle remote stage of its longest chain killed (SIGKILL)
    after `at` results."""
    stages = max(plan.chains, key=lambda c: len(c.stages)).stages
    if len(stages) < 3:
        return {"skipped": f"the plan {plan.describe()} has no middle stage"}
    victim = stages[len(stages) // 2].node if len(stages) > 3 else stages[1].node
    runner.plan, runner.down, runner.replans, runner.replan = plan, {}, [], True
    n = int(kill["frames"])
    results, killed_at = [], None
    for r in runner.run(x[i % len(x)] for i in range(n)):
        results.append(r)
        if len(results) == int(kill["at"]):
            os.kill(int(kill["pids"][victim]), signal.SIGKILL)
            killed_at = time.monotonic()
    replan = next((p for p in runner.replans if p.dropped == victim), None)
    after = results[int(kill["at"]):]
    return {"plan": plan.describe(), "killed": victim, "at": int(kill["at"]), "frames": n,
            "answered": len(results),
            "in_order": [r.index for r in results] == list(range(n)),
            "finished_on_device": sum(r.where == "device" for r in after),
            "replan_after_ms": None if replan is None or killed_at is None
            else (replan.at - killed_at) * 1e3,
            "replan_reason": None if replan is None else replan.reason[:200],
            "new_plan": runner.plan.describe(),
            "max_latency_after_ms": max((r.latency_ms for r in after), default=0.0)}


def main(argv: list[str] | None = None) -> int:
    from ..engine.chain import ChainRunner
    from ..policy.chain import Links, Node

    args = json.loads((sys.argv[1:] if argv is None else argv)[0])
    with np.load(args["frames"]) as z:
        x, ref = z["x"].astype(np.float32), z["ref"]
    nodes = [Node(n["name"], n.get("endpoint")) for n in args["nodes"]]
    spec = args["links"]
    links = Links(spec["default_mbps"], spec["default_rtt_ms"],
                  {(a, b): v for a, b, v in spec["mbps"]},
                  downlink_mbps=spec.get("downlink_mbps", {}))
    with ChainRunner(args["bundle"], nodes, links, budget_ms=args["budget_ms"],
                     window=args["window"]) as runner:
        measured = {n: {"slowdown": runner.nodes[n].slowdown,
                        "workers": runner.nodes[n].workers} for n in runner.order}
        plans = {s["name"]: _plan(runner, s) for s in args["strategies"]}
        runs: dict[str, list] = {name: [] for name in plans}
        for k in range(args["rounds"]):
            for name in (list(plans) if k % 2 == 0 else list(plans)[::-1]):
                runs[name].append(_measure(runner, plans[name], x, ref,
                                           args["frames_per_run"], args["warmup"],
                                           args["answer"]))
        # a middle stage to kill: the planner's chain, or the chain through every node
        chain = plans["chain"]
        victim_plan = chain if max(len(c.stages) for c in chain.chains) >= 3 \
            else plans["chain all"]
        kill = _kill_run(runner, victim_plan, x, args["kill"]) if args.get("kill") else None
    print(json.dumps({"nodes": measured, "runs": runs, "kill": kill}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
