"""`edgesdk demo`: the whole product on one machine, in under a minute.

It starts an edge server (`edgesdk serve`, a real subprocess on 127.0.0.1) with the
bundled digits model, then sends real test digits through Engines with different
strategies, printing a live progress line and a summary: where frames finished, accuracy,
p50/p95 latency, and the cuts and bit widths chosen. Last, it stops the server in the
middle of a run to show the fallback: frames finish on the device, none is lost. Then it
shuts everything down.

The model is the ONNX digits bundle where onnxruntime imports, else its TFLite form (32-bit
Raspberry Pi OS has no onnxruntime, only tflite-runtime): `edgesdk.models.digits_bundle`.
--backend picks one; the device and the server run the same bundle.

    edgesdk demo [--frames 300] [--slo-ms 50] [--strategy policy --strategy edge ...]
                 [--backend auto|onnx|tflite]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._table import format_table

# NAME[:TASK] (see --strategy)
DEFAULT_STRATEGIES = ("planner", "policy", "device", "edge", "c1@4")
DESCRIPTIONS = {"policy": "the bundled policy network decides per frame",
                "planner": "the analytic planner decides per frame",
                "device": "exits on, everything else on the device",
                "edge": "every frame's input sent to the server at 8 bits"}


def _describe(strategy: str, task: str) -> str:
    if strategy in DESCRIPTIONS:
        return DESCRIPTIONS[strategy] + (f" (task: {task})" if strategy in ("policy",
                                                                            "planner") else "")
    cut, _, bits = strategy.partition("@")
    return f"fixed split: device to cut {cut}, {bits}-bit tensor to the server"


def _progress(name: str, done: int, total: int, where: Counter, lat: list[float]) -> None:
    shares = "  ".join(f"{k} {100 * where[k] / max(done, 1):3.0f}%"
                       for k in ("exit", "edge", "device"))
    p50 = float(np.median(lat)) if lat else 0.0
    sys.stdout.write(f"\r  {name:<16} {done:4d}/{total} frames  {shares}  p50 {p50:6.2f} ms")
    sys.stdout.flush()


def _run(engine, x: np.ndarray, y: np.ndarray, name: str, quiet: bool) -> dict:
    where: Counter = Counter()
    lat: list[float] = []
    correct = 0
    plans: Counter = Counter()
    reasons: Counter = Counter()
    for i, r in enumerate(engine.stream(x)):
        where[r.where] += 1
        lat.append(r.timings.total)
        correct += int(r.label == y[i])
        plans[f"{r.cut}@{r.bits}" if r.cut else r.where] += 1
        if r.fallback_reason:
            reasons[r.fallback_reason] += 1
        live = not quiet and sys.stdout.isatty() and i % 10 == 9
        if live or (not quiet and i + 1 == len(x)):
            _progress(name, i + 1, len(x), where, lat)
    if not quiet:
        sys.stdout.write("\n")
    n = len(x)
    return {"name": name, "frames": n, "exit": where["exit"] / n, "edge": where["edge"] / n,
            "device": where["device"] / n, "accuracy": correct / n,
            "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
            "plans": dict(plans.most_common()), "fallbacks": dict(reasons)}


def _table(rows: Sequence[dict]) -> str:
    head = ["run", "frames", "exit", "edge", "device", "accuracy", "p50 ms", "p95 ms",
            "sent (cut@bits) / finished", "fallbacks"]
    body = []
    for r in rows:
        plans = ", ".join(f"{k} {v}" for k, v in list(r["plans"].items())[:3])
        falls = ", ".join(f"{k} {v}" for k, v in r["fallbacks"].items()) or "-"
        body.append([r["name"], str(r["frames"]), f"{100 * r['exit']:.0f}%",
                     f"{100 * r['edge']:.0f}%", f"{100 * r['device']:.0f}%",
                     f"{100 * r['accuracy']:.1f}%", f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}",
                     plans, falls])
    return format_table(head, body, "lrrrrrrrll")


def _choose_bundle(backend: str | None) -> tuple[Path, str, str]:
    """(bundle, backend, why) for --backend (None or "auto": what this machine runs)."""
    from ..errors import MissingDependency
    from ..models import digits_bundle, onnxruntime_available
    from ..runtime import backend_runtime, require_runtime

    if backend in (None, "auto"):
        backend = "onnx" if onnxruntime_available() else "tflite"
        why = ("onnxruntime imports here" if backend == "onnx"
               else "onnxruntime does not import here")
    else:
        why = "as --backend asks"
    # fail here, before a server starts, when the runtime is missing
    if backend == "onnx" and not onnxruntime_available():
        raise MissingDependency("onnxruntime", None, "the demo runs without it on the "
                                "TFLite digits bundle: edgesdk demo --backend tflite (or auto)")
    require_runtime(backend)  # tflite: MissingDependency naming the extra
    found = backend_runtime(backend)
    version = found["version"] or "?"
    runtime = (f"{found['runtime']}, not installed" if found["module"] is None
               else f"onnxruntime {version}" if backend == "onnx"
               else f"{found['runtime']} ({found['module']} {version})")
    return digits_bundle(backend), backend, f"{why}; runs with {runtime}"


def run_demo(frames: int = 300, slo_ms: float = 50.0, strategies: Sequence[str] = (),
             workers: int = 1, quiet: bool = False, backend: str | None = None) -> dict:
    """Run the demo; backend: "onnx", "tflite", or None / "auto" (see _choose_bundle)."""
    from ..engine import Engine
    from ..models import load_digits_test
    from ..server import ServerProcess

    x, y = load_digits_test()
    n = min(frames, len(x))
    x, y = x[:n], y[:n]
    strategies = list(strategies) or list(DEFAULT_STRATEGIES)
    say = (lambda *a: None) if quiet else print
    t_start = time.monotonic()
    bundle, backend, why = _choose_bundle(backend)
    say(f"edgesdk demo: {n} real test digits, SLO {slo_ms:g} ms, bundle {bundle.name} "
        f"({backend}, {why})")
    say("starting an edge server on 127.0.0.1 (edgesdk serve, "
        f"{workers} worker{'s' if workers > 1 else ''}) ...")
    rows = []
    with ServerProcess.serve([bundle], "--workers", str(workers),
                             "--log-level", "info") as server:
        say(f"server ready at {server.endpoint} (pid {server.pid})\n")
        for name in strategies:
            strategy, _, task = name.partition(":")
            task = task or "balanced"
            say(f"- {name}: {_describe(strategy, task)}")
            with Engine(bundle, server=server.endpoint, slo_ms=slo_ms,
                        strategy=strategy, task=task) as engine:
                rows.append(_run(engine, x, y, name, quiet))
        say("- fallback: offloading every frame, and the server is stopped halfway")
        half = n // 2
        with Engine(bundle, server=server.endpoint, slo_ms=slo_ms,
                    strategy="edge") as engine:
            rows.append(_run(engine, x[:half], y[:half], "edge, server up", quiet))
            code = server.terminate()
            rows.append(_run(engine, x[half:], y[half:], "edge, server gone", quiet))
        say(f"server stopped (exit code {code})\n")
    report = {"frames": n, "slo_ms": slo_ms, "bundle": bundle.name, "backend": backend,
              "runs": rows,
              "seconds": round(time.monotonic() - t_start, 2), "server_exit_code": code}
    say(_table(rows))
    say(f"\nexit: answered by an early exit on the device; edge: finished by the server; "
        f"device: finished on the device.\ndone in {report['seconds']:.1f} s")
    return report


def add_parser(sub: Any, name: str, text: str, argv: Sequence[str] | None = None
               ) -> argparse.ArgumentParser:
    """Register `demo` on the `edgesdk` subparsers."""
    p = sub.add_parser(name, help=text)
    p.add_argument("--frames", type=int, default=300, help="test digits to run (max 750)")
    p.add_argument("--slo-ms", type=float, default=50.0, help="latency budget per frame")
    p.add_argument("--strategy", action="append", metavar="S",
                   help="policy, planner, device, edge or CUT@BITS, optionally with :TASK "
                        "(balanced, accuracy, latency); repeatable (default: "
                        + ", ".join(DEFAULT_STRATEGIES) + ")")
    p.add_argument("--workers", type=int, default=1, help="server worker processes")
    p.add_argument("--backend", choices=("auto", "onnx", "tflite"), default="auto",
                   help="the digits bundle to run: onnx (onnxruntime) or tflite (LiteRT or "
                        "tflite-runtime); auto: onnx where onnxruntime imports, else tflite "
                        "(default)")
    p.add_argument("--json", action="store_true", help="print the report as JSON at the end")
    p.set_defaults(func=_demo_cmd)
    return p


def _demo_cmd(args: argparse.Namespace) -> int:
    if args.frames < 2:
        raise ValueError(f"--frames is {args.frames}, expected >= 2")
    report = run_demo(args.frames, args.slo_ms, args.strategy or (), args.workers,
                      quiet=args.json, backend=args.backend)
    if args.json:
        print(json.dumps(report, indent=1))
    return 0 if report["server_exit_code"] == 0 else 1
