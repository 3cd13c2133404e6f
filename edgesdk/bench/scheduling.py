"""The scheduling benchmark: many devices, few workers (`edgesdk bench scheduling`).

DEVICES devices share one server with WORKERS workers serving a SqueezeNet-light tail (the
cut c0, 93 % of the FLOPs, its tensor at 8 bits: the "SqueezeNet-class tail" of issue 16).
Each device is a thread with its own DEALER socket (its own identity, as separate devices
are), a camera at FPS frames per second and one frame in flight: at each frame it sends
the tensor with the budget it has left of a SLO_MS deadline after its own compute, which
differs per device (spread evenly over DEVICE_MS: budgets of 60-90 ms), and waits for the
answer until that budget runs out; a frame whose camera tick passed meanwhile is skipped,
as a camera drops frames. Offered load: DEVICES x FPS requests per second, about twice what
two workers compute.

The same load runs against two servers, one per scheduler ("fifo": arrival order, a
request dropped only once its deadline has passed; "edf": earliest deadline first,
requests that cannot finish in time refused at once, a fair share of the queue per
device; transport.dispatch), alternating in rounds of `seconds`, with each server's
default queue bound (4 x workers) and with a long queue (LONG_QUEUE), where a FIFO's
waiting time exceeds the budgets. Per scheduler and round: the frames answered at the
edge within their deadline, refused (busy or expired, answered early) and timed out at
the device; per device over the whole run, its frames within deadline over the mean of
all devices (the fairness of the share). Ratios edf / fifo are per round, then the
median.

Targets (issue 16): >= 2x the frames within their deadline of fifo, each device's share
within 20 % of the mean.

    edgesdk bench scheduling [--json] [--quick] [--rounds N] [--seconds S]
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from . import format_table, pm, summarize
from .transport import BITS, _process, _serve_edgesdk, _squeezenet_tail

DEVICES = 32
WORKERS = 2
SLO_MS = 100.0
DEVICE_MS = (10.0, 40.0)  # the devices' own compute before the offload, spread evenly
FPS = 12.0  # per device
LONG_QUEUE = 64
MIN_RATIO = 2.0  # edf / fifo, frames within deadline
MAX_SHARE_SPREAD = 0.2  # each device's frames within deadline vs the mean
FULL = {"rounds": 4, "seconds": 6.0}
QUICK = {"rounds": 2, "seconds": 2.0}
SCHEDULERS = ("fifo", "edf")


def _device(endpoint: str, frames: list, where: dict, budget_s: float, phase_s: float,
            start: float, stop: float, out: dict) -> None:
    """One device: a frame every 1 / FPS s from `start` (offset by `phase_s`), each sent
    with `budget_s` and waited for until it runs out; counts what became of them."""
    from ..errors import ServerBusy, Timeout, TransportError
    from ..transport import Client

    counts = {"frames": 0, "ok": 0, "late_reply": 0, "busy": 0, "refused": 0, "timeout": 0,
              "error": 0}
    period = 1.0 / FPS
    with Client(endpoint, retries=0, window=1) as client:
        tick = start + phase_s
        while True:
            now = time.time()
            if now < tick:
                time.sleep(tick - now)
            if time.time() >= stop:
                break
            sent = time.monotonic()
            counts["frames"] += 1
            try:
                client.request(frames, budget_s=budget_s, **where)
            except ServerBusy:
                counts["busy"] += 1
            except Timeout:
                # an `expired` reply before the budget ran out: refused early; else the
                # device waited it out
                early = time.monotonic() - sent < 0.9 * budget_s
                counts["refused" if early else "timeout"] += 1
            except TransportError:
                counts["error"] += 1
            else:
                within = time.monotonic() - sent <= budget_s
                counts["ok" if within else "late_reply"] += 1
            # the next camera tick after now: frames whose tick passed are dropped
            tick += period * max(1, int((time.time() - tick) / period) + 1)
    out.update(counts)


def _round(endpoint: str, frames: list, where: dict, seconds: float) -> list[dict]:
    """Every device through one round against `endpoint`; their counts."""
    lo, hi = DEVICE_MS
    device_ms = np.linspace(lo, hi, DEVICES)
    start = time.time() + 0.5
    results: list[dict] = [{} for _ in range(DEVICES)]
    threads = [threading.Thread(target=_device, args=(
        endpoint, frames, where, (SLO_MS - device_ms[i]) / 1e3, i / (DEVICES * FPS), start,
        start + seconds, results[i]), daemon=True) for i in range(DEVICES)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    return results


def _summary(rounds: list[list[dict]]) -> dict:
    """Per round: totals. Over the whole run: each device's frames within deadline over the
    mean of all devices (its share; pooled over rounds, where a device's 30-70 frames
    within deadline in one round would make the spread mostly counting noise)."""
    rows = [{k: int(sum(d.get(k, 0) for d in devices)) for k in devices[0]}
            for devices in rounds]
    ok = np.array([[d.get("ok", 0) for d in devices] for devices in rounds], float).sum(0)
    share = ok / ok.mean() if ok.mean() > 0 else np.zeros_like(ok)
    spread = float(np.max(np.abs(share - 1.0))) if ok.mean() > 0 else float("inf")
    return {"rounds": rows, "share": [round(float(x), 3) for x in share],
            "share_spread": spread}


def run(rounds: int | None = None, seconds: float | None = None, quick: bool = False) -> dict:
    cfg = QUICK if quick else FULL
    rounds = rounds or cfg["rounds"]
    seconds = seconds or cfg["seconds"]
    queues = {"default": 4 * WORKERS, "long": LONG_QUEUE}
    report: dict[str, Any] = {
        "devices": DEVICES, "workers": WORKERS, "slo_ms": SLO_MS, "device_ms": DEVICE_MS,
        "fps": FPS, "rounds": rounds, "seconds": seconds, "queues": queues, "results": {}}
    with tempfile.TemporaryDirectory(prefix="edgesdk-bench-") as tmp, \
            contextlib.ExitStack() as stack:
        _, cut, frames, where, factory = _squeezenet_tail(Path(tmp))
        # batching off: the schedulers alone (a batch of this conv tail is no faster per
        # request here, and bench batching measures it)
        endpoints = {(q, s): stack.enter_context(_process(
            _serve_edgesdk, None, replace(factory, batching=False), WORKERS, None, size, s,
            1))
            for q, size in queues.items() for s in SCHEDULERS}
        report.update(model="squeezenet-light", cut=cut.id, bits=BITS,
                      request_bytes=sum(len(memoryview(f).cast("B")) for f in frames))
        for q in queues:
            per: dict[str, list] = {s: [] for s in SCHEDULERS}
            for r in range(rounds):
                for s in (SCHEDULERS if r % 2 == 0 else SCHEDULERS[::-1]):
                    per[s].append(_round(endpoints[(q, s)], frames, where, seconds))
            report["results"][q] = _compare({s: _summary(v) for s, v in per.items()})
    return report


def _compare(by_scheduler: dict[str, dict]) -> dict:
    fifo, edf = (np.array([r["ok"] for r in by_scheduler[s]["rounds"]], float)
                 for s in SCHEDULERS)
    ratio = summarize(edf / np.maximum(fifo, 1.0))
    spread = by_scheduler["edf"]["share_spread"]
    return {**by_scheduler, "ratio_ok": ratio.as_dict(), "_ratio": ratio,
            "targets": {"edf / fifo within deadline": {
                "limit": MIN_RATIO, "value": round(ratio.median, 3),
                "pass": ratio.median >= MIN_RATIO},
                "edf share within 20 % of the mean": {
                "limit": MAX_SHARE_SPREAD, "value": round(spread, 3),
                "pass": spread <= MAX_SHARE_SPREAD}}}


def jsonable(report: dict) -> dict:
    out = dict(report)
    out["results"] = {q: {k: v for k, v in r.items() if not k.startswith("_")}
                      for q, r in report["results"].items()}
    return out


def format_text(report: dict) -> str:
    lines = [f"{report['devices']} devices x {report['fps']:g} fps, SLO {report['slo_ms']:g} ms "
             f"(budgets after {report['device_ms'][0]:g}-{report['device_ms'][1]:g} ms of "
             f"device compute), {report['workers']} workers, {report['model']} tail from "
             f"{report['cut']} at {report['bits']} bits ({report['request_bytes']} B); "
             f"{report['rounds']} rounds of {report['seconds']:g} s per scheduler, "
             "alternating", ""]
    for q, res in report["results"].items():
        rows = []
        for s in SCHEDULERS:
            rs = res[s]["rounds"]
            med = {k: float(np.median([r[k] for r in rs])) for k in rs[0]}
            f = max(med["frames"], 1.0)
            share = res[s]["share"]
            rows.append([s, f"{med['frames']:.0f}", f"{med['ok']:.0f}",
                         f"{100 * med['ok'] / f:.0f}%", f"{100 * med['refused'] / f:.0f}%",
                         f"{100 * med['busy'] / f:.0f}%", f"{100 * med['timeout'] / f:.0f}%",
                         f"{min(share):.2f}-{max(share):.2f}"])
        lines.append(f"queue bound {report['queues'][q]} ({q}), medians over rounds "
                     "(device share: over the whole run):")
        lines.append(format_table(
            ["scheduler", "frames", "within deadline", "%", "refused early", "busy",
             "timed out", "device share / mean"], rows, "lrrrrrrl"))
        lines.append(f"edf / fifo frames within deadline: {pm(res['_ratio'], 2)} per round")
        for name, t in res["targets"].items():
            lines.append(f"  target {name}: {t['value']} (limit {t['limit']}) "
                         f"{'met' if t['pass'] else 'MISSED'}")
        lines.append("")
    return "\n".join(lines)
