"""End-to-end benchmark: a device and an edge server in separate Linux network namespaces
joined by a veth pair, the link shaped with tc, the device's CPU throttled to a Pi-class
speed with a cgroup quota, bandwidth replayed from the TEST traces and held at fixed rates.

    sudo python benchmarks/bench_e2e.py [--json] [--png out.png] [--models pplcnet ...]

Per model, condition (a fixed rate, or a trace window) and strategy, the device runs real
frames back to back through an Engine (python -m edgesdk.bench.e2e_device in the device
namespace) against `edgesdk serve` in the edge namespace, and the benchmark reports p50/p95
latency, SLO violations, accuracy (PP-LCNet: labelled test images), and speedups against
device-only and edge-only.

Strategies: device-only (all exits on), edge-only (the input at 8 bits), the best fixed
split (the planner's choice at the condition's mean bandwidth, held for the whole run:
Neurosurgeon's static partition), the planner on live estimates, and the policy network.
The last three optimize the same reward (--task, default "latency", since the targets
compare latency).

Device speed. The device runs in a cgroup with a CPU quota of --cpu-quota of one core
(default 0.25: about 4x slower than this machine's core, roughly a Raspberry Pi 5's
Cortex-A76 against a desktop core on fp32 CNN inference; a Pi 4 is slower still). The
quota is 1 ms of CPU per 4 ms (CFS's finest setting for 25 %), so throttling stalls are
short next to frame and network times; the measured slowdown of each model is printed.
The server is not throttled, as on an edge box (it shares this machine's two cores with
the device).

Without root or netns/tc/cgroups, the benchmark says so and falls back to loopback with
the engine's in-process token-bucket shaper and no CPU throttle (see netem.py).
"""

from __future__ import annotations

import argparse
import csv
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .._plot import pyplot
from ..server_process import ServerProcess, module_command
from . import format_table
from .e2e_models import MODELS, build
from .netem import MIN_RATE_MBIT, check_quota, open_testbed

STRATEGIES = ("device-only", "edge-only", "best-fixed", "planner", "policy")
ADAPTIVE = ("planner", "policy")
FIXED = ("device-only", "edge-only", "best-fixed")
RATES = (1.0, 5.0, 10.0, 50.0, 100.0)
# Traces: the test split; 3G/broadband traces are scaled x10 (Wi-Fi-class uplinks, as the
# traces' README suggests), 5G traces as measured.
TRACE_SCALE = {"norway_hsdpa": 10.0, "fcc_broadband": 10.0, "ucc_5g": 1.0}
SLO_FACTOR = 1.25  # SLO = this x the device-only full-model latency on the throttled device
SEED_PAPERS = {"Neurosurgeon (avg. latency speedup)": 3.1, "Cogent (up to)": 8.89}


def _pick_traces(traces_dir: Path, count: int, seconds: float, seed: int = 0) -> list[dict]:
    """`count` test traces, spread over the datasets, each with a window of `seconds`."""
    with open(traces_dir / "index.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if float(r["duration_s"]) >= seconds]
    rng = np.random.default_rng(seed)
    by_set: dict[str, list[dict]] = {}
    for r in rows:
        by_set.setdefault(r["dataset"], []).append(r)
    order = sorted(by_set)
    picked = []
    for i in range(count):
        pool = by_set[order[i % len(order)]]
        r = pool[int(rng.integers(len(pool)))]
        with open(traces_dir / r["dataset"] / r["file"], newline="") as f:
            mbps = [float(row["mbps"]) for row in csv.DictReader(f)]
        start = int(rng.integers(0, max(len(mbps) - int(seconds), 1)))
        scale = TRACE_SCALE.get(r["dataset"], 1.0)
        window = [max(m * scale, MIN_RATE_MBIT) for m in mbps[start:start + int(seconds)]]
        picked.append({"name": f"{r['dataset']}/{r['file'][:40]}@{start}s x{scale:g}",
                       "mbps": window})
    return picked


def _stats(records: list, slo_ms: float) -> dict:
    lat = np.array([r[1] for r in records], dtype=np.float64)
    correct = [r[6] for r in records if r[6] is not None]
    where = {w: sum(r[2] == w for r in records) / len(records) for w in ("exit", "edge",
                                                                          "device")}
    plans: dict[str, int] = {}
    for r in records:
        key = f"{r[3]}@{r[4]}" if r[3] else r[2]
        plans[key] = plans.get(key, 0) + 1
    return {"frames": len(records), "mean_ms": float(lat.mean()),
            "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
            "slo_violations": float(np.mean(lat > slo_ms)),
            "accuracy": float(np.mean(correct)) if correct else None, "where": where,
            "plans": dict(sorted(plans.items(), key=lambda kv: -kv[1])[:4]),
            "fallbacks": sum(r[5] is not None for r in records)}


def _best_fixed(bundle_dir: Path, mbps: float, slowdown: float, slo_ms: float,
                rtt_ms: float, task: str) -> str:
    """The planner's choice with the condition's mean bandwidth: a static partition."""
    from ..bundle import Bundle
    from ..policy import State, build_candidates, model_profile, plan

    table = build_candidates(model_profile(Bundle.load(bundle_dir).manifest, "reference"))
    state = State(bw_mbps=mbps, slo_ms=slo_ms, rtt_ms=rtt_ms, device_slowdown=slowdown,
                  task=task)
    c = table.candidates[plan(table, state)]
    return f"{c.cut}@{c.bits}/{c.n_exits}"


class Runner:
    """Runs e2e_device in the device namespace against the server in the edge one."""

    def __init__(self, testbed, endpoint: str, cpu_quota: float | None) -> None:
        self.tb = testbed
        self.endpoint = endpoint
        self.cpu_quota = cpu_quota
        # The engine's setup (sessions, hello) and warm-up, before the timed frames; a
        # replayed trace starts then too, so a run whose device started late is redone
        # with twice the time.
        self.setup_s = 4.0

    def run(self, bundle: Path, frames_npz: Path, strategy: str, slo_ms: float, task: str, *,
            frames: int | None = None, seconds: float | None = None,
            replay: list[float] | None = None, speed: float = 1.0) -> list:
        argv = module_command(
            "edgesdk.bench.e2e_device", "--bundle", str(bundle), "--server", self.endpoint,
            "--strategy", strategy, "--slo-ms", f"{slo_ms:g}", "--inputs", str(frames_npz),
            "--device", "reference", "--task", task)
        argv += ["--frames", str(frames)] if frames else ["--seconds", f"{seconds:g}"]
        for _ in range(3):
            report = self._run_once(argv, strategy, frames, seconds, replay, speed)
            if not replay or report["late_s"] <= 0.25:
                return report["records"]
            self.setup_s *= 2
        raise RuntimeError(f"the device started {report['late_s']:.2f} s after the trace "
                           f"replay three times ({strategy})")

    def _run_once(self, argv: list[str], strategy: str, frames: int | None,
                  seconds: float | None, replay: list[float] | None, speed: float) -> dict:
        start_at = time.time() + self.setup_s
        argv = [*argv, "--start-at", f"{start_at:.3f}"]
        if replay:
            self.tb.replay_rates(replay, start_at=start_at, speed=speed)
        proc = self.tb.popen_device(argv, cpu_quota=self.cpu_quota, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        try:
            # generous: frames take well under a second each on the throttled device
            out, err = proc.communicate(timeout=self.setup_s + 60 + (seconds or 0) / speed
                                        + 5 * (frames or 0))
        except BaseException:  # a timeout, Ctrl-C, SIGTERM: the device must not outlive us
            proc.kill()
            proc.communicate()
            raise
        finally:
            self.tb.stop_replays()
        if proc.returncode != 0:
            raise RuntimeError(f"device run failed ({strategy}): {err[-2000:]}")
        return json.loads(out)


def run_model(name: str, runner: Runner, workdir: Path, traces: list[dict], args,
              log) -> dict:
    bundle, frames_npz = build(name, workdir, log=log)
    tb = runner.tb
    tb.set_rate(1000.0)
    calib = runner.run(bundle, frames_npz, "device@32/0", 1e6, args.task, frames=8)
    device_ms = float(np.median([r[1] for r in calib]))
    from ..bundle import Bundle

    ref_ms = Bundle.load(bundle).manifest.profiles["reference"]["total_median_ms"]
    slowdown = device_ms / ref_ms
    slo_ms = round(SLO_FACTOR * device_ms, 1)
    log(f"{name}: device-only {device_ms:.1f} ms on the throttled device ({slowdown:.1f}x the "
        f"reference {ref_ms:.1f} ms); SLO {slo_ms} ms")
    results = []
    conditions = [(f"{r:g} Mbit/s", r, None) for r in args.rates]
    conditions += [(t["name"], float(np.mean(t["mbps"])), t["mbps"]) for t in traces]
    for label, mean_mbps, replay in conditions:
        fixed = _best_fixed(bundle, mean_mbps, slowdown, slo_ms, args.rtt_ms, args.task)
        plans = {"device-only": "device", "edge-only": "edge", "best-fixed": fixed,
                 "planner": "planner", "policy": "policy"}
        row = {"condition": label, "mean_mbps": mean_mbps, "trace": replay is not None,
               "best_fixed": fixed, "strategies": {}}
        for strategy in args.strategies:
            if replay is None:
                tb.set_rate(mean_mbps)
                rec = runner.run(bundle, frames_npz, plans[strategy], slo_ms, args.task,
                                 frames=args.frames)
            else:
                tb.set_rate(replay[0])
                rec = runner.run(bundle, frames_npz, plans[strategy], slo_ms, args.task,
                                 seconds=len(replay) / args.speed, replay=replay,
                                 speed=args.speed)
            row["strategies"][strategy] = _stats(rec, slo_ms)
            s = row["strategies"][strategy]
            log(f"  {label:<28} {strategy:<12} p50 {s['p50_ms']:8.1f} ms  p95 "
                f"{s['p95_ms']:8.1f} ms  SLO viol {100 * s['slo_violations']:5.1f}%  "
                f"{s['plans']}")
        results.append(row)
    return {"model": name, "device_ms": device_ms, "reference_ms": ref_ms,
            "slowdown": slowdown, "slo_ms": slo_ms, "conditions": results}


def _speedups(row: dict) -> dict:
    s = row["strategies"]
    out = {}
    for k, v in s.items():
        out[k] = {"vs_device": (s["device-only"]["mean_ms"] / v["mean_ms"]
                                if "device-only" in s else None),
                  "vs_edge": (s["edge-only"]["mean_ms"] / v["mean_ms"]
                              if "edge-only" in s else None)}
    return out


def targets(report: dict) -> dict:
    """Adaptive within 5 % of the best fixed strategy (mean latency) at every fixed rate;
    better than every fixed strategy on the traces."""
    out = {}
    for m in report["models"]:
        for row in m["conditions"]:
            s = row["strategies"]
            fixed = [s[k]["mean_ms"] for k in FIXED if k in s]
            if not fixed:
                continue
            best = min(fixed)
            for k in ADAPTIVE:
                if k not in s:
                    continue
                ok = (s[k]["mean_ms"] <= 1.05 * best if not row["trace"]
                      else s[k]["mean_ms"] < best)
                out[f"{m['model']} | {row['condition']} | {k}"] = {
                    "mean_ms": s[k]["mean_ms"], "best_fixed_ms": best,
                    "ratio": s[k]["mean_ms"] / best, "met": bool(ok)}
    return out


def format_report(report: dict) -> str:
    lines = [f"{report['testbed']['description']}; codec backend {report['codec_backend']}", ""]
    for m in report["models"]:
        lines.append(f"{m['model']}: device-only {m['device_ms']:.1f} ms on the throttled "
                     f"device ({m['slowdown']:.1f}x slower than here), SLO {m['slo_ms']} ms")
        rows = []
        for row in m["conditions"]:
            sp = _speedups(row)
            for k, v in row["strategies"].items():
                acc = "-" if v["accuracy"] is None else f"{100 * v['accuracy']:.1f}%"
                rows.append([row["condition"][:34], k, f"{v['p50_ms']:.1f}", f"{v['p95_ms']:.1f}",
                             f"{100 * v['slo_violations']:.0f}%", acc,
                             f"{sp[k]['vs_device']:.2f}x" if sp[k]["vs_device"] else "-",
                             f"{sp[k]['vs_edge']:.2f}x" if sp[k]["vs_edge"] else "-",
                             ", ".join(f"{p} {n}" for p, n in v["plans"].items())])
        lines.append(format_table(["condition", "strategy", "p50 ms", "p95 ms", "SLO viol",
                                   "accuracy", "vs device", "vs edge", "plans (frames)"],
                                  rows, "llrrrrrrl"))
        lines.append("")
    met = sum(t["met"] for t in report["targets"].values())
    lines.append(f"targets met: {met} of {len(report['targets'])} (adaptive within 5% of the "
                 "best fixed strategy at fixed rates; better than every fixed one on traces)")
    for k, t in report["targets"].items():
        if not t["met"]:
            lines.append(f"  MISSED {k}: {t['mean_ms']:.1f} ms vs best fixed "
                         f"{t['best_fixed_ms']:.1f} ms ({t['ratio']:.2f}x)")
    lines.append("seed papers: " + ", ".join(f"{k} {v}x" for k, v in SEED_PAPERS.items()))
    return "\n".join(lines)


def save_png(report: dict, path: str) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    models = report["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, m in zip(axes[0], models, strict=True):
        rows = [r for r in m["conditions"] if not r["trace"]]
        for k in STRATEGIES:
            pts = [(r["mean_mbps"], r["strategies"][k]["p50_ms"]) for r in rows
                   if k in r["strategies"]]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=k)
        ax.axhline(m["slo_ms"], color="grey", ls="--", lw=1, label="SLO")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("uplink Mbit/s")
        ax.set_ylabel("p50 latency ms")
        ax.set_title(m["model"])
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench_e2e.py", description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--rates", nargs="*", type=float, default=list(RATES))
    p.add_argument("--traces", type=int, default=3, help="test traces to replay")
    p.add_argument("--trace-seconds", type=float, default=30.0)
    p.add_argument("--speed", type=float, default=1.0,
                   help="replay speed-up (2: each trace second lasts 0.5 s)")
    p.add_argument("--frames", type=int, default=30, help="frames per fixed-rate run")
    p.add_argument("--cpu-quota", type=float, default=0.25,
                   help="the device's share of one core, 0..1 (0 or 1: unthrottled)")
    p.add_argument("--task", default="latency", choices=("latency", "balanced", "accuracy"),
                   help="the reward of the planner, the policy and the best fixed split "
                        "(default latency: what this benchmark's targets measure)")
    p.add_argument("--rtt-ms", type=float, default=1.0,
                   help="RTT assumed by the best-fixed planner")
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "edgesdk-e2e"))
    p.add_argument("--traces-dir", help="the test traces (default ../shared/traces/test)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--json-file")
    p.add_argument("--png")
    return p


def main(argv: list[str] | None = None) -> int:
    from .. import codec
    from ..policy.simulator import default_traces_dir

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_quota(args.cpu_quota)  # now, not after minutes of building bundles
    except ValueError as exc:
        parser.error(str(exc))
    # SIGTERM unwinds like Ctrl-C, so the namespaces, the cgroup and the server go away.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else print
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    bundles = [build(m, workdir, log=log)[0] for m in args.models]
    traces_dir = Path(args.traces_dir) if args.traces_dir else default_traces_dir() / "test"
    traces = _pick_traces(traces_dir, args.traces, args.trace_seconds) if args.traces else []
    report: dict = {"models": [], "args": {k: v for k, v in vars(args).items()},
                    "codec_backend": codec.backend}  # the children import this same edgesdk
    with open_testbed(log=log) as tb:
        report["testbed"] = tb.describe()
        log(f"{report['testbed']['description']}; codec backend {codec.backend}")
        cmd = tb.edge_command(module_command(
            "edgesdk.serving", "serve", *map(str, bundles), "--bind",
            f"tcp://{tb.edge_address}:*", "--workers", "1", "--log-level", "info"))
        with ServerProcess(cmd, ready_timeout=120) as server:
            runner = Runner(tb, server.endpoint, args.cpu_quota)
            for m in args.models:
                report["models"].append(run_model(m, runner, workdir, traces, args, log))
            server.terminate()
    report["targets"] = targets(report)
    text = format_report(report)
    if args.json:
        print(json.dumps(report, indent=1, default=float))
    else:
        print(text)
    if args.json_file:
        Path(args.json_file).write_text(json.dumps(report, indent=1, default=float))
    if args.png:
        done = save_png(report, args.png)
        log(f"PNG written to {args.png}" if done else "PNG skipped: pip install edgesdk[plot]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
