"""The Ray backend benchmark: `edgesdk bench ray` (needs the `ray` extra).

A local Ray cluster of two nodes (a head and a worker node, each its own `ray start`
process with one CPU, as two machines would be: server.ray_backend.local_cluster) runs the
tails of ResNet50-light (from the onnx wheel; the `input` cut: the whole model, ~60 ms
here, a 4 KB answer) as a Serve deployment of 1 or 2 replicas behind `edgesdk serve
--backend ray`. One client keeps WINDOW requests in flight for `seconds`: results per
second. The same through `edgesdk serve --workers 1 | 2` (in-process workers, the same
machine) is the reference: how much of the scaling the machine itself allows. Settings
alternate by round (each round starts its gateway, and redeploys the replicas); ratios
are per round, then the median. Also: the p50 of one request at a time through Ray with
one replica, against one local worker (what the extra hops cost).

Target (issue 16): Ray throughput with 2 replicas >= 1.7x with 1.

    edgesdk bench ray [--json] [--quick] [--rounds N] [--seconds S]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import format_table, pm, summarize
from .transport import WINDOW, _throughput, cut_request, light_bundle

MODEL = "resnet50"
MIN_SCALING = 1.7
FULL = {"rounds": 3, "seconds": 5.0}
QUICK = {"rounds": 1, "seconds": 2.0}
LATENCY_REQUESTS = 20
SETTINGS = {"ray": ("--backend", "ray", "--replicas"), "local": ("--workers",)}


def _measure(bundle: Any, frames: list, where: dict, args: list[str], seconds: float
             ) -> dict:
    """One gateway with `args`: results per second with WINDOW in flight, and the p50 of
    one request at a time (ms)."""
    from ..server import ServerProcess
    from ..transport import Client

    server = ServerProcess.serve([bundle.path], "--profile-runs", "2", "--max-queue",
                                 str(2 * WINDOW), *args,
                                 ready_timeout=300.0)
    server.exit_timeout_s = 60.0  # the Ray gateway deletes its deployment on the way out
    with server, Client(server.endpoint) as client:
        client.request(frames, budget_s=30.0, **where)  # warm: sessions, routes
        ts = []
        for _ in range(LATENCY_REQUESTS):
            t = time.perf_counter()
            client.request(frames, budget_s=30.0, **where)
            ts.append(time.perf_counter() - t)
        per_s = _throughput(client, frames, where, seconds)
    return {"per_s": per_s, "p50_ms": float(np.median(ts)) * 1e3}


def run(rounds: int | None = None, seconds: float | None = None, quick: bool = False) -> dict:
    from ..bundle import input_cut
    from ..server.ray_backend import local_cluster

    cfg = QUICK if quick else FULL
    rounds = rounds or cfg["rounds"]
    seconds = seconds or cfg["seconds"]
    report: dict[str, Any] = {"model": f"{MODEL}-light", "window": WINDOW, "rounds": rounds,
                              "seconds": seconds, "nodes": 2, "cpus_per_node": 1,
                              "results": {name: {1: [], 2: []} for name in SETTINGS}}
    with tempfile.TemporaryDirectory(prefix="edgesdk-bench-") as tmp, \
            local_cluster(nodes=2, cpus_per_node=1) as address:
        bundle = light_bundle(Path(tmp), MODEL, points=2)
        cut = input_cut(bundle)
        frames, where = cut_request(bundle, cut)
        report.update(cut=cut.id, request_bytes=sum(len(memoryview(f).cast("B"))
                                                    for f in frames))
        for r in range(rounds):
            for n in ((1, 2) if r % 2 == 0 else (2, 1)):
                for name, flags in SETTINGS.items():
                    args = [*flags, str(n)]
                    if name == "ray":
                        args += ["--ray-address", address]
                    report["results"][name][n].append(
                        _measure(bundle, frames, where, args, seconds))
    return _summary(report)


def _summary(report: dict) -> dict:
    res = report["results"]
    scaling = {name: summarize(np.array([b["per_s"] for b in res[name][2]])
                               / np.array([a["per_s"] for a in res[name][1]]))
               for name in SETTINGS}
    added = summarize(np.array([r["p50_ms"] for r in res["ray"][1]])
                      - np.array([r["p50_ms"] for r in res["local"][1]]))
    report.update(_scaling=scaling, _added=added,
                  scaling={k: v.as_dict() for k, v in scaling.items()},
                  added_p50_ms=added.as_dict(),
                  target={"limit": MIN_SCALING, "value": round(scaling["ray"].median, 3),
                          "pass": scaling["ray"].median >= MIN_SCALING})
    return report


def jsonable(report: dict) -> dict:
    return {k: v for k, v in report.items() if not k.startswith("_")}


def format_text(report: dict) -> str:
    res = report["results"]
    lines = [f"{report['model']}, cut {report['cut']} ({report['request_bytes']} B), "
             f"{report['window']} requests in flight, a local Ray cluster of "
             f"{report['nodes']} nodes x {report['cpus_per_node']} CPU; {report['rounds']} "
             f"alternating rounds of {report['seconds']:g} s", ""]
    rows = []
    for name in SETTINGS:
        med = {n: float(np.median([r["per_s"] for r in res[name][n]])) for n in (1, 2)}
        p50 = float(np.median([r["p50_ms"] for r in res[name][1]]))
        what = "Ray Serve replicas" if name == "ray" else "local worker processes"
        rows.append([what, f"{med[1]:.1f}", f"{med[2]:.1f}", pm(report["_scaling"][name], 2),
                     f"{p50:.1f}"])
    lines.append(format_table(["backend", "1 /s", "2 /s", "2 / 1", "p50 ms (1)"], rows,
                              "lrrrr"))
    t = report["target"]
    lines.append(f"Ray's added p50 (one replica against one local worker): "
                 f"{pm(report['_added'], 1)} ms")
    lines.append(f"target Ray 2 / 1 replicas >= {t['limit']:g}: {t['value']} "
                 f"{'met' if t['pass'] else 'MISSED'}")
    return "\n".join(lines)
