"""The stream-control benchmark: `edgesdk bench stream` and benchmarks/bench_stream.py.

In the namespace testbed of `bench e2e` (bench.netem; loopback where namespaces are
unavailable): a device process under a CPU quota (a quarter of one core by default: a
Pi-class device) and an edge server (`edgesdk serve`, one worker) in their own network
namespaces, the device's uplink shaped by tc following RATES (Mbit/s, one value per
RATE_S seconds: a link that swings between fast and slow). The device runs PP-OCRv4 rec
(the e2e benchmark's bundle, built once into --workdir); a camera makes frames at --fps for
SECONDS and drops the ones the device is not ready for (a camera keeps its latest frame).
Every frame's energy is the Engine's estimate under the Pi 4 preset (estimators.energy).

Strategies, each a fresh device process through the same schedule, in alternating order
over the rounds:
- stream control (`Engine.stream(fps=, v=)`, policy.stream) at every V of VS: its actions
  are the bundle's candidates x onnxruntime thread counts (1 and all CPUs; under a CPU
  quota more threads do not run faster, which the measured speedups say);
- fixed plans (`_fixed_plans`: device-only, and the input and each cut at its fewest bits
  within a point of the best fidelity).

Per strategy: throughput (frames answered / s), the camera's dropped frames, latency from
capture to result (mean, p95), estimated energy per frame and power, and energy per frame
by the link's rate when the frame was captured. The claim (issue 17): at equal
throughput, stream control's energy per frame <= TARGET x the best fixed plan's, "the best
fixed plan" being the lowest-energy fixed plan whose throughput is at least that V's
(x THROUGHPUT_SLACK, the runs' noise). Medians over the rounds. Beside it, the fixed plans
switched at each rate change in hindsight (`phase_oracle`): what the target is worth.

    sudo edgesdk bench stream [--json] [--quick] [--rounds N] [--fps F] [--png PATH]
                              [--cpu-quota Q] [--workdir DIR]
"""

from __future__ import annotations

import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import as_json, format_table

FPS = 10.0
SLO_MS = 200.0  # about 2x the model on the throttled device, as bench e2e sets it
CPU_QUOTA = 0.25
SECONDS = 12.0
RATES = (40.0, 3.0, 20.0, 2.0)  # Mbit/s, each for RATE_S
RATE_S = 3.0
VS = (0.0, 1.0, 3.0, 10.0, 30.0, 100.0)
POWER = "pi4"
TARGET = 0.8  # stream control's energy per frame / the best fixed plan's at its throughput
THROUGHPUT_SLACK = 0.97
FULL = {"rounds": 2, "seconds": SECONDS}
QUICK = {"rounds": 1, "seconds": 4.0}
READY_S = 120.0  # a throttled device process loads its sessions and measures its speeds


class Camera:
    """Frames at `fps` for `seconds` from `x` (cycled): `frames()` yields a frame when it is
    due and drops the ones the consumer was too busy to take; `captured` holds each
    yielded frame's capture time (monotonic)."""

    def __init__(self, x: np.ndarray, fps: float, seconds: float) -> None:
        self.x, self.fps, self.seconds = x, fps, seconds
        self.captured: deque[float] = deque()
        self.dropped = 0

    def frames(self) -> Iterator[np.ndarray]:
        start = time.monotonic()
        last = -1
        while True:
            k = int((time.monotonic() - start) * self.fps)
            if k <= last:  # early: wait for the next frame
                time.sleep(max(start + (last + 1) / self.fps - time.monotonic(), 0.0))
                continue
            if k / self.fps >= self.seconds:
                return
            self.dropped += k - last - 1
            last = k
            self.captured.append(start + k / self.fps)
            yield self.x[k % len(self.x)]


def run_stream(engine: Any, x: np.ndarray, fps: float, seconds: float, v: float | None
               ) -> dict[str, Any]:
    """One strategy's run (in the device process): the camera, the stream, the results;
    `v` None: the engine's own strategy, else stream control at `v`."""
    cam = Camera(x, fps, seconds)
    kwargs = {} if v is None else {"fps": fps, "v": v}
    lat, energy, where, plans, phase = [], [], [], {}, []
    t0 = time.monotonic()
    for r in engine.stream(cam.frames(), **kwargs):
        captured = cam.captured.popleft()
        lat.append((time.monotonic() - captured) * 1e3)
        energy.append(r.energy_j)
        where.append(r.where)
        plans[r.plan] = plans.get(r.plan, 0) + 1
        phase.append(int((captured - t0) / RATE_S) % len(RATES))
    wall = max(time.monotonic() - t0, seconds)
    lat_a = np.asarray(lat)
    return {"frames": len(lat), "throughput": len(lat) / wall, "dropped": cam.dropped,
            "mean_ms": float(lat_a.mean()), "p95_ms": float(np.percentile(lat_a, 95)),
            "energy_mj": 1e3 * float(np.mean(energy)),
            "power_mw": 1e3 * float(np.sum(energy)) / wall,
            "edge": float(np.mean([w == "edge" for w in where])),
            "plans": dict(sorted(plans.items(), key=lambda kv: -kv[1])[:3]),
            "phases": _by_phase(phase, energy, where)}


def _by_phase(phase: list[int], energy: list[float], where: list[str]) -> list[dict]:
    """Per rate of RATES (the frames captured while the link ran at it): frames, mJ per
    frame, and the share finished at the edge. Where a strategy spends is where the link
    is slow: what it pays there, and at the changes, is what a fixed plan saves."""
    out = []
    for k, mbps in enumerate(RATES):
        mine = [i for i, p in enumerate(phase) if p == k]
        out.append({"mbps": mbps, "frames": len(mine),
                    "energy_mj": 1e3 * float(np.mean([energy[i] for i in mine]))
                    if mine else None,
                    "edge": float(np.mean([where[i] == "edge" for i in mine]))
                    if mine else None})
    return out


def _fixed_plans(bundle: Any) -> list[str]:
    """Device-only, and for the input and every cut the offload at its fewest bits within
    1 point of the best fidelity (the candidates a fixed split would pick)."""
    from ..policy import build_candidates, model_profile

    table = build_candidates(model_profile(bundle.manifest))
    best = float(table.rest_acc.max())
    out = ["device"]
    for cut in dict.fromkeys(c.cut for c in table.candidates if c.cut != "device"):
        rows = [i for i, c in enumerate(table.candidates)
                if c.cut == cut and c.n_exits == 0 and table.rest_acc[i] >= best - 0.01]
        if rows:
            i = min(rows, key=lambda i: (table.candidates[i].bits, table.wire_bytes[i]))
            c = table.candidates[i]
            out.append(f"{c.cut}@{c.bits}{'+z' if c.zstd else '-z'}/0")
    return out


def run(rounds: int | None = None, quick: bool = False, workdir: str | None = None,
        fps: float = FPS, cpu_quota: float = CPU_QUOTA,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    from ..bundle import Bundle
    from ..server.process import ServerProcess, module_command
    from .e2e_models import build
    from .netem import open_testbed

    cfg = QUICK if quick else FULL
    rounds = rounds or cfg["rounds"]
    seconds = cfg["seconds"]
    work = Path(workdir or Path(tempfile.gettempdir()) / "edgesdk-e2e")
    built = build("ocr_rec", work, log=log)
    fixed = _fixed_plans(Bundle.load(built.bundle))
    names = [f"V={v:g}" for v in VS] + [f"fixed {p}" for p in fixed]
    samples: dict[str, list[dict]] = {n: [] for n in names}
    with open_testbed(log=log) as tb:
        serve = module_command("edgesdk", "serve", str(built.bundle), "--bind",
                               f"tcp://{tb.edge_address}:*", "--workers", "1",
                               "--log-level", "info")  # ServerProcess waits for its "ready"
        with ServerProcess(tb.edge_command(serve), ready_timeout=120) as server:
            for k in range(rounds):
                for n in (names if k % 2 == 0 else names[::-1]):
                    log(f"  round {k + 1}/{rounds}: {n}")
                    samples[n].append(_run_device(tb, server.endpoint, built, n, fps,
                                                  seconds, cpu_quota))
        testbed = tb.describe()["description"]
    rows = {n: _median(s) for n, s in samples.items()}
    return {"model": "ocr_rec", "fps": fps, "seconds": seconds, "rates_mbit": RATES,
            "rate_s": RATE_S, "power": POWER, "rounds": rounds, "cpu_quota": cpu_quota,
            "testbed": testbed, "rows": rows, "comparisons": _compare(rows),
            "phase_oracle": phase_oracle(rows)}


def _run_device(tb: Any, endpoint: str, built: Any, name: str, fps: float, seconds: float,
                cpu_quota: float) -> dict[str, Any]:
    """One strategy in a fresh device process (see stream_device): started, ready, then
    sent the schedule's start, which the link's rates follow from then on."""
    import json
    import subprocess

    from ..server.process import module_command

    strategy = f"control:{name[2:]}" if name.startswith("V=") else name.split(" ", 1)[1]
    argv = module_command("edgesdk.bench.stream_device", json.dumps(
        {"bundle": str(built.bundle), "server": endpoint, "frames": str(built.frames),
         "strategy": strategy, "fps": fps, "seconds": seconds}))
    # the schedule's first rate while the device starts: its first bandwidth probes must
    # not measure where the previous run's schedule ended
    tb.set_rate(RATES[0])
    proc = tb.popen_device(argv, cpu_quota, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           text=True)
    try:
        line = _readline(proc, READY_S)
        if json.loads(line).get("ready") is not True:
            raise RuntimeError(f"device process for {name}: {line!r}")
        start_at = time.time() + 0.5
        tb.replay_rates(RATES, start_at, 1.0 / RATE_S)
        proc.stdin.write(json.dumps({"start_at": start_at, "shape": tb.shape_spec(
            RATES, start_at, 1.0 / RATE_S)}) + "\n")
        proc.stdin.flush()
        result = json.loads(_readline(proc, seconds + 60.0))
        proc.wait(30)
        return result
    finally:
        tb.stop_replays()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _readline(proc: Any, timeout_s: float) -> str:
    """A line of the device process's stdout within `timeout_s`, else RuntimeError."""
    import select

    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline() if ready else ""
    if not line:
        raise RuntimeError(f"the device process said nothing within {timeout_s:.0f} s "
                           f"(exit code {proc.poll()})")
    return line


def _median(runs: list[dict]) -> dict[str, Any]:
    keys = ("frames", "throughput", "dropped", "mean_ms", "p95_ms", "energy_mj", "power_mw",
            "edge")
    out: dict[str, Any] = {k: float(np.median([r[k] for r in runs])) for k in keys}
    out["plans"] = runs[-1]["plans"]
    out["phases"] = [{"mbps": p["mbps"], **{k: _median_of([r["phases"][i][k] for r in runs])
                                            for k in ("frames", "energy_mj", "edge")}}
                     for i, p in enumerate(runs[0]["phases"])]
    return out


def _median_of(values: list) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.median(kept)) if kept else None


def phase_oracle(rows: dict[str, dict]) -> dict[str, Any] | None:
    """The energy of switching among the fixed plans at each rate change, in hindsight:
    per phase the fixed plan that spent least there, weighted by the phases' frames. Not a
    strict bound (a controller may mix plans within a phase, and this ignores throughput),
    but what a controller that learns the link from its replies would have to do without
    any learning cost; beside the best fixed plan's energy, it says how much a target
    below that plan is worth chasing."""
    fixed = [r for n, r in rows.items() if n.startswith("fixed")]
    if not fixed:
        return None
    per_phase, weights = [], []
    for i in range(len(fixed[0]["phases"])):
        spent = [r["phases"][i]["energy_mj"] for r in fixed
                 if r["phases"][i]["energy_mj"] is not None]
        if spent:
            per_phase.append(min(spent))
            weights.append(float(np.median([r["phases"][i]["frames"] for r in fixed])))
    if not per_phase or sum(weights) == 0:
        return None
    best = min(r["energy_mj"] for r in fixed)
    mj = float(np.average(per_phase, weights=weights))
    return {"energy_mj": mj, "per_phase_mj": per_phase, "best_fixed_mj": best,
            "ratio_to_best_fixed": mj / best}


def _compare(rows: dict[str, dict]) -> list[dict]:
    """Per V: the best fixed plan at its throughput (see the module docstring)."""
    out = []
    fixed = {n: r for n, r in rows.items() if n.startswith("fixed")}
    for n, r in rows.items():
        if not n.startswith("V="):
            continue
        keeping_up = {f: fr for f, fr in fixed.items()
                      if fr["throughput"] >= THROUGHPUT_SLACK * r["throughput"]}
        if not keeping_up:
            out.append({"v": n, "best_fixed": None, "ratio": None, "met": False})
            continue
        best = min(keeping_up, key=lambda f: keeping_up[f]["energy_mj"])
        ratio = r["energy_mj"] / keeping_up[best]["energy_mj"]
        out.append({"v": n, "best_fixed": best, "ratio": ratio, "met": ratio <= TARGET})
    return out


def format_text(report: dict) -> str:
    lines = [f"edgesdk stream-control benchmark: {report['model']}, camera {report['fps']:g} "
             f"fps for {report['seconds']:g} s, uplink {list(report['rates_mbit'])} Mbit/s "
             f"({report['rate_s']:g} s each), device CPU quota {report['cpu_quota']:g}, "
             f"energy under the {report['power']} preset; medians of {report['rounds']} "
             f"round(s)", report["testbed"], ""]
    rows = [[n, f"{r['throughput']:.1f}", f"{r['dropped']:.0f}", f"{r['mean_ms']:.1f}",
             f"{r['p95_ms']:.1f}", f"{r['energy_mj']:.1f}", f"{r['power_mw']:.0f}",
             f"{100 * r['edge']:.0f}%", ", ".join(f"{k} {c}" for k, c in r["plans"].items())]
            for n, r in report["rows"].items()]
    lines.append(format_table(["strategy", "frames/s", "dropped", "mean ms", "p95 ms",
                               "mJ/frame", "mW", "edge", "plans (last round, top 3)"],
                              rows, "lrrrrrrrl"))
    lines.append("")
    header = ["strategy"] + [f"{p['mbps']:g} Mbit/s" for p in
                             next(iter(report["rows"].values()))["phases"]]
    lines.append("mJ/frame (edge share) by the link's rate when the frame was captured:")
    lines.append(format_table(header, [
        [n] + ["-" if p["energy_mj"] is None else f"{p['energy_mj']:.1f} ({100 * p['edge']:.0f}%)"
               for p in r["phases"]] for n, r in report["rows"].items()],
        "l" + "r" * (len(header) - 1)))
    oracle = report.get("phase_oracle")
    if oracle:
        lines.append(f"the fixed plans switched at each rate change, in hindsight: "
                     f"{oracle['energy_mj']:.1f} mJ/frame, {oracle['ratio_to_best_fixed']:.2f}x "
                     f"the lowest-energy fixed plan's {oracle['best_fixed_mj']:.1f}")
    lines.append("")
    for c in report["comparisons"]:
        if c["best_fixed"] is None:
            lines.append(f"{c['v']}: no fixed plan keeps up with its throughput")
            continue
        lines.append(f"{c['v']}: energy per frame {c['ratio']:.2f}x {c['best_fixed']} "
                     f"(the lowest-energy fixed plan at >= its throughput): "
                     f"{'met' if c['met'] else 'MISSED'} (target <= {TARGET}x)")
    return "\n".join(lines)


def jsonable(report: dict) -> Any:
    return as_json(report)


def plot(report: dict, path: str) -> bool:
    """Energy per frame, throughput and latency against V, the fixed plans as lines;
    False without matplotlib."""
    from .._plot import pyplot

    plt = pyplot()
    if plt is None:
        return False
    rows = report["rows"]
    vs = [n for n in rows if n.startswith("V=")]
    xs = [max(float(n[2:]), 0.1) for n in vs]  # V=0 drawn at 0.1 on the log axis
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key, label in zip(axes, ("energy_mj", "throughput", "mean_ms"),
                              ("energy per frame, mJ", "throughput, frames/s",
                               "latency capture to result, mean ms")):
        ax.plot(xs, [rows[n][key] for n in vs], "o-", color="black", label="stream control")
        for k, n in enumerate(n for n in rows if n.startswith("fixed")):
            ax.axhline(rows[n][key], ls="--", color=f"C{k}", label=n[6:])
        ax.set_xscale("log")
        ax.set_xlabel("V (V=0 at 0.1)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{report['model']}: stream control at {report['fps']:g} fps, "
                 f"{report['power']} energy model")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


