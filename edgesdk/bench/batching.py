"""The batching benchmark: tail throughput with dynamic batching on and off
(`edgesdk bench batching`).

DEVICES devices (threads in this process, each with its own DEALER socket, as separate
devices are) keep one request each in flight against a server with WORKERS workers, for
`seconds` per round. Two servers run side by side: `--max-batch MAX_BATCH` (the default)
and `--max-batch 1` (batching off); rounds alternate between them after a warm-up round
each (in which the batching server learns which batch sizes pay). Per round: results per
second, the tail throughput. Ratios on / off are per round, then the median.

Two tails of SqueezeNet-light (from the onnx wheel), each its 8-bit cut tensor:

    heavy   after c0: 93 % of the FLOPs, convolutions. On this CPU onnxruntime computes a
            batch of them no faster per image than one by one, so the server should learn
            to stop batching: the target there is no loss (>= 0.95x).
    light   after c2: the softmax and the pooling before it. The per-request cost is
            mostly the server's own (messages, decoding, one runtime call), which a
            batch shares: target >= 1.5x (issue 16).

    edgesdk bench batching [--json] [--quick] [--rounds N] [--seconds S]
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from . import format_table, pm, summarize
from .scheduling import jsonable  # the same report shape: results[name] without "_" keys
from .transport import BITS, _process, _serve_edgesdk, _squeezenet_bundle, cut_request

DEVICES = 16
WORKERS = 2
MAX_BATCH = 8
TAILS = {"heavy": 0, "light": 2}  # name: index of the cut in the bundle
TARGETS = {"heavy": 0.95, "light": 1.5}  # batching on / off, results per second
FULL = {"rounds": 6, "seconds": 3.0}
QUICK = {"rounds": 2, "seconds": 1.0}
WARMUP_S = 1.0
SETTINGS = {"on": MAX_BATCH, "off": 1}


def _device(endpoint: str, frames: list, where: dict, stop: float, ctx: zmq.Context,
            out: list) -> None:
    """One device: a request at a time until `stop`; appends its count of results."""
    from ..errors import TransportError
    from ..transport import Client

    done = failed = 0
    with Client(endpoint, retries=0, window=1, context=ctx) as client:
        while time.monotonic() < stop:
            try:
                client.request(frames, budget_s=10.0, **where)
                done += 1
            except TransportError:
                failed += 1
    out.append((done, failed))


def _round(endpoint: str, frames: list, where: dict, seconds: float) -> dict:
    """Every device against `endpoint` for `seconds`: results per second, failures."""
    ctx = zmq.Context()
    out: list = []
    start = time.monotonic()
    threads = [threading.Thread(target=_device, args=(endpoint, frames, where,
                                                      start + seconds, ctx, out), daemon=True)
               for _ in range(DEVICES)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    elapsed = time.monotonic() - start
    if any(t.is_alive() for t in threads):  # a device stuck: do not wait for its socket
        ctx.destroy(linger=0)
    else:
        ctx.term()
    return {"per_s": sum(d for d, _ in out) / elapsed, "failed": sum(f for _, f in out)}


def run(rounds: int | None = None, seconds: float | None = None, quick: bool = False) -> dict:
    from ..server import TailHandlerFactory

    cfg = QUICK if quick else FULL
    rounds = rounds or cfg["rounds"]
    seconds = seconds or cfg["seconds"]
    report: dict[str, Any] = {"devices": DEVICES, "workers": WORKERS, "max_batch": MAX_BATCH,
                              "rounds": rounds, "seconds": seconds, "bits": BITS,
                              "model": "squeezenet-light", "results": {}}
    with tempfile.TemporaryDirectory(prefix="edgesdk-bench-") as tmp, \
            contextlib.ExitStack() as stack:
        bundle = _squeezenet_bundle(Path(tmp))
        endpoints = {name: stack.enter_context(_process(
            _serve_edgesdk, None, TailHandlerFactory((str(bundle.path),), threads=1,
                                                     profile_runs=5, batching=size > 1),
            WORKERS, None, 4 * DEVICES, "edf", size))
            for name, size in SETTINGS.items()}
        for tail, index in TAILS.items():
            cut = bundle.cuts[index]
            frames, where = cut_request(bundle, cut)
            for name in SETTINGS:
                _round(endpoints[name], frames, where, WARMUP_S)
            per: dict[str, list] = {name: [] for name in SETTINGS}
            for r in range(rounds):
                for name in (SETTINGS if r % 2 == 0 else list(SETTINGS)[::-1]):
                    per[name].append(_round(endpoints[name], frames, where, seconds))
            report["results"][tail] = _compare(per, TARGETS[tail])
            report["results"][tail].update(cut=cut.id, request_bytes=sum(
                len(memoryview(f).cast("B")) for f in frames))
    return report


def _compare(per: dict[str, list], limit: float) -> dict:
    on, off = (np.array([r["per_s"] for r in per[name]]) for name in SETTINGS)
    ratio = summarize(on / np.maximum(off, 1e-9))
    return {"rounds": per, "ratio": ratio.as_dict(), "_ratio": ratio,
            "failed": {name: int(sum(r["failed"] for r in per[name])) for name in SETTINGS},
            "target": {"limit": limit, "value": round(ratio.median, 3),
                       "pass": ratio.median >= limit}}


def format_text(report: dict) -> str:
    lines = [f"{report['devices']} devices, one request each in flight, {report['workers']} "
             f"workers, {report['model']} tails at {report['bits']} bits; batching on "
             f"(--max-batch {report['max_batch']}) and off (--max-batch 1), "
             f"{report['rounds']} alternating rounds of {report['seconds']:g} s each", ""]
    rows = []
    for tail, res in report["results"].items():
        med = {name: float(np.median([r["per_s"] for r in res["rounds"][name]]))
               for name in SETTINGS}
        t = res["target"]
        rows.append([f"{tail} ({res['cut']}, {res['request_bytes']} B)", f"{med['on']:.0f}",
                     f"{med['off']:.0f}", pm(res["_ratio"], 2),
                     f">= {t['limit']:g} {'met' if t['pass'] else 'MISSED'}",
                     f"{res['failed']['on']}/{res['failed']['off']}"])
    lines.append(format_table(["tail", "on /s", "off /s", "on / off", "target",
                               "failed on/off"], rows, "lrrrll"))
    return "\n".join(lines)


__all__ = ["format_text", "jsonable", "run"]
