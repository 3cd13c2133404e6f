"""The device side of the end-to-end benchmark: one Engine running frames back to back
through a timeline, one JSON line per frame on stdout. The driver (edgesdk.bench.e2e) runs
it in the device's network namespace and CPU cgroup; it also runs on its own against any
server (then it starts at once):

    edgesdk bench e2e-device --bundle B.edge --server tcp://10.0.0.2:5555 \\
        --strategy policy --slo-ms 100 --inputs frames.npz --answer argmax --seconds 10

Handshake (with --wait-go). Setup (imports, sessions, the Engine and its first hello) is
not what is measured, so the driver starts this process without a CPU quota; it prints
``{"type": "ready", ...}`` and waits for lines on stdin, sent once the driver has applied
the quota. Then, throttled:

1. on ``{"profile_runs": N, "profile_s": S}``: at least N runs and S seconds of the whole
   segment chain outside the engine, each segment timed (a ``device_profile`` record: the
   device's time distribution under the quota), then it waits for the next line;
2. on ``{"start_at": T, "shape": S, "offset": O, "seconds": D}`` (S: the loopback
   testbed's in-process shaper, or null; O, D: the chunk of the timeline, default 0 and
   --seconds): warm-up frames through the engine until just before T (time.time(), the
   clock the driver schedules the link with), so estimators are warm when the chunk
   starts; then frames from T for D seconds, each a ``frame`` record (edgesdk.bench.e2e
   documents the fields) with t = O + the time since T; then, once no request of the
   link is on the wire (the driver may SIGSTOP the process until its next chunk; at
   most 2 s, ``quiet`` says whether it was reached), an ``end`` record;
3. step 2 again for every further chunk, until ``{"quit": true}`` or the end of stdin.

inputs: an .npz with ``x`` (N, *input shape) float32 and ``ref`` (N, L), each frame's fp32
answer (edgesdk.bench.e2e_models); frames cycle through x.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from typing import Any

import numpy as np

# The energy model the device estimates its frames' energy with (a quota-throttled core of
# this CPU stands for a Pi), and the price the planner-energy strategy puts on it
POWER = "pi4"
ENERGY_WEIGHT = 1.0

MAX_PROFILE_RUNS = 1000
PLAN = re.compile(r"exits=(\d+) (?:device-only|([\w.]+)@(\d+)b(\+z)?)")


def parse_plan(plan: str) -> dict[str, Any]:
    """Result.plan ("exits=1 c1@8b+z", "exits=2 device-only") as fields."""
    m = PLAN.search(plan or "")
    if not m:
        return {"plan": plan, "n_exits": None, "cut": None, "bits": None, "zstd": None}
    cut = m.group(2) or "device"
    return {"plan": plan, "n_exits": int(m.group(1)), "cut": cut,
            "bits": int(m.group(3)) if m.group(3) else 32,
            "zstd": bool(m.group(4)) if cut != "device" else False}


def _state_dict(state: Any) -> dict[str, Any] | None:
    """The engine's State as JSON-ready numbers (every field it has; a non-finite number,
    e.g. the age of a sample never seen, is null)."""
    if state is None:
        return None
    from dataclasses import asdict, is_dataclass

    d = asdict(state) if is_dataclass(state) else dict(vars(state))
    def num(v: float) -> float | None:
        return round(v, 4) if math.isfinite(v) else None  # strict JSON has no inf

    out = {}
    for k, v in d.items():
        if isinstance(v, float):
            out[k] = num(v)
        elif isinstance(v, (tuple, list)):
            out[k] = [num(float(h)) if isinstance(h, (int, float)) else h for h in v]
        else:
            out[k] = v
    return out


def _resolve_strategy(strategy: str, bundle, device: str | None):
    """A strategy name, "CUT@BITS[/E]", or "plan:<str(Candidate)>" (a fixed candidate
    named exactly as the candidate table prints it)."""
    if not strategy.startswith("plan:"):
        return strategy
    from ..policy import build_candidates, model_profile

    want = strategy[5:]
    table = build_candidates(model_profile(bundle.manifest, device))
    for c in table.candidates:
        if str(c) == want:
            return c
    raise SystemExit(f"strategy {strategy!r}: no such candidate; the candidates are "
                     + ", ".join(str(c) for c in table.candidates))


class _Recorder:
    """Wraps the engine's `state` and its link's `offload` to see what a frame was planned
    with and what it sent (public methods of this engine instance only)."""

    def __init__(self, engine) -> None:
        self.state = None
        self.calls = 0  # the engine's own calls since the frame began
        self.sent: list[int] = []
        self.budget_s: float | None = None
        state_fn = engine.state

        def state(*a, **kw):
            self.state = state_fn(*a, **kw)
            self.calls += 1
            return self.state

        engine.state = state
        # each server's link (a ServerSet routes an offload to one of its links)
        for link in getattr(engine.link, "links", [engine.link] if engine.link else []):
            link.offload = self._recorded(link.offload)

    def _recorded(self, offload):
        def recorded(frames, cut, budget_s, **kw):
            self.sent.append(sum(memoryview(f).nbytes for f in frames))
            self.budget_s = budget_s
            return offload(frames, cut, budget_s, **kw)
        return recorded

    def reset(self) -> None:
        self.state, self.sent, self.budget_s = None, [], None


def _chain_profile(engine, x: np.ndarray, runs: int, seconds: float = 0.0
                   ) -> list[list[float]]:
    """At least `runs` runs (and `seconds`, up to MAX_PROFILE_RUNS runs) of every segment
    in order, each segment's ms: the throttled device's time distribution, jitter
    included."""
    device = engine.local
    out = []
    n = len(engine.bundle.segments)
    end = time.monotonic() + seconds
    i = 0
    while i < runs or (time.monotonic() < end and i < MAX_PROFILE_RUNS):
        env = device.feed(x[i % len(x)])
        out.append([round(float(device.run_segment(s, env)), 4) for s in range(n)])
        i += 1
    return out


def _jsonable(obj: Any) -> Any:
    """json.dumps' fallback: dataclasses (estimator models) as dicts, numpy scalars as
    numbers, anything else as its repr."""
    from dataclasses import asdict, is_dataclass

    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return repr(obj)


def _emit(record: dict) -> None:
    sys.stdout.write(json.dumps(record, separators=(",", ":"), default=_jsonable) + "\n")


def _next_go(stdin) -> dict[str, Any] | None:
    """The driver's next chunk ({"start_at": ...}), or None on {"quit": true} or EOF."""
    line = stdin.readline()
    go = json.loads(line) if line.strip() else None
    return None if go is None or go.get("quit") else go


def _quiesce(engine, timeout_s: float = 2.0) -> bool:
    """Wait until no request of the engine's link is on the wire: the driver may stop this
    process (SIGSTOP) until its next chunk, and a probe caught in flight would come back
    with the pause in its round trip. False if one still was after `timeout_s`."""
    links = getattr(engine.link, "links", [engine.link] if engine.link else [])
    end = time.monotonic() + timeout_s
    while any(link.in_flight for link in links):
        if time.monotonic() >= end:
            return False
        time.sleep(0.002)
    return True


def _run_chunk(engine, rec: _Recorder, go: dict[str, Any], x: np.ndarray, ref: list,
               y: np.ndarray | None, args: Any, warmup: int, first: int) -> dict[str, Any]:
    """Warm-up frames until go["start_at"], then frames for go["seconds"] (default
    --seconds), each a ``frame`` record with t = go["offset"] (default 0) + the time since
    the start, numbered (and given inputs) from `first` on; returns the chunk's ``end``
    record."""
    from dataclasses import asdict

    from .e2e_data import answer
    from .netem import TokenBucket

    if go.get("shape") and engine.link is not None:  # the loopback testbed's link
        engine.link.shaper = TokenBucket.from_env(go["shape"])
    start_at = float(go["start_at"])
    offset, seconds = float(go.get("offset", 0.0)), float(go.get("seconds", args.seconds))
    warm, last_ms = 0, 0.0
    while warm < warmup or time.time() + 1.5 * last_ms / 1e3 < start_at:
        last_ms = engine.infer(x[warm % len(x)]).timings.total
        warm += 1
    late_s = max(time.time() - start_at, 0.0)
    time.sleep(max(start_at - time.time(), 0.0))
    i = first
    while True:
        t = time.time() - start_at
        if t >= seconds:
            break
        k = i % len(x)
        rec.reset()
        engine.state()  # fixed plans never ask for it: record what it was all the same
        rec.calls = 0
        r = engine.infer(x[k])
        ms = r.timings
        got = answer(r.output, "argmax" if r.where == "exit" else args.answer)
        _emit({"type": "frame", "i": i, "t": round(offset + t, 4), "input": k,
               **parse_plan(r.plan), "sent_cut": r.cut, "sent_bits": r.bits,
               "where": r.where, "exit": r.exit_name, "fallback": r.fallback_reason,
               "energy_j": r.energy_j, "bytes_sent": sum(rec.sent),
               "explored_bytes": sum(rec.sent) if r.explored else 0,
               "budget_ms": round(rec.budget_s * 1e3, 3) if rec.budget_s else None,
               "ms": {k: round(float(v), 3) for k, v in asdict(ms).items()
                      if isinstance(v, (int, float))},  # every Timings field
               "agree": got == ref[k],
               "correct": None if y is None else bool(got[0] == int(y[k])),
               "state": _state_dict(rec.state),
               "state_source": "engine" if rec.calls else "snapshot"})
        i += 1
    snap = None
    if engine.link is not None:
        snap = {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in engine.link.snapshot(time.monotonic()).items()}
    return {"type": "end", "frames": i - first, "warmup_frames": warm,
            "late_s": round(late_s, 3), "offset": offset, "link": snap}


def run(args: Any) -> int:
    from .. import codec
    from ..bundle import Bundle
    from ..engine import Engine
    from .e2e_models import reference_answer

    with np.load(args.inputs, allow_pickle=False) as z:
        x = z["x"].astype(np.float32)
        ref = [reference_answer(r) for r in z["ref"]]
        y = z["y"] if "y" in z.files else None
    bundle = Bundle.load(args.bundle)
    strategy = _resolve_strategy(args.strategy, bundle, args.device)
    explore = strategy != "planner-static"  # the planner without exploring frames
    priced = strategy == "planner-energy"  # the planner with an energy price
    with Engine(bundle, server=args.server, slo_ms=args.slo_ms, task=args.task,
                strategy="planner" if priced or not explore else strategy, threads=1,
                device=args.device, connect_timeout_s=10, explore=explore, power=POWER,
                energy_weight=ENERGY_WEIGHT if priced else 0.0) as engine:
        rec = _Recorder(engine)
        _emit({"type": "ready", "codec_backend": codec.backend,
               "link": engine.link.status if engine.link is not None else None})
        sys.stdout.flush()
        go: dict[str, Any] | None = {"start_at": time.time() + 1.0}
        while args.wait_go:  # {"profile_runs": N} (answered at once), then {"start_at": T}
            go = _next_go(sys.stdin)
            if go is None or "start_at" in go:
                break
            _emit({"type": "device_profile",
                   "segment_ms": _chain_profile(engine, x, int(go["profile_runs"]),
                                                 float(go.get("profile_s", 0.0)))})
            sys.stdout.flush()
        warmup, frames = args.warmup, 0
        while go is not None:  # a chunk of the timeline per go line (one without --wait-go)
            end = _run_chunk(engine, rec, go, x, ref, y, args, warmup, frames)
            warmup = 0  # the first chunk's minimum; later ones warm up until their start
            frames += end["frames"]
            _emit({**end, "quiet": _quiesce(engine)})
            sys.stdout.flush()
            go = _next_go(sys.stdin) if args.wait_go else None
    sys.stdout.flush()
    return 0
