"""Chaos: several Engines stream through a real edge server that is stopped, overloaded,
killed and restarted under them. Every frame gets exactly one answer, within its deadline
+ 5 ms, and the answer is right (the model's own label)."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from edgesdk import Engine
from edgesdk.bundle import Bundle
from edgesdk.models import DIGITS_BUNDLE, load_digits_test
from edgesdk.runtime import open_segments, run_chain

from transport_helpers import ServerProcess, child_env, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
SLO_MS = 60.0
LATE_MS = 5.0  # the promise: no answer later than the deadline + this
ENGINES = 3
# The edge server and the flooding devices stand for other machines, but here they share
# this one's 2 CPUs with the engines under test. Their starts (a broker and 2 workers
# importing onnxruntime and profiling the tail, at the restart) could take the engines'
# CPU for tens of ms: frames of 2-3 engines past their deadline together, once in several
# CI runs. The engine's deadline promise covers a slow or absent server, not a device
# whose CPU is taken, so they run at a lower priority.
OTHER_MACHINES = ["nice", "-n", "10"]


@dataclass(frozen=True)
class Frame:
    """What a frame's answer was: kept small, since a run makes tens of thousands and a
    list of whole Results (arrays and all) makes the garbage collector's pauses long
    enough to push every engine thread past its deadline at once."""

    i: int
    start: float
    ms: float
    where: str
    reason: str | None
    label: int | None


def _stream(endpoint: str, x: np.ndarray, stop: threading.Event, out: list) -> None:
    """Frames one after another until `stop`."""
    with Engine(DIGITS_BUNDLE, server=endpoint, slo_ms=SLO_MS, strategy="c1@16/0") as engine:
        k = 0
        while not stop.is_set():
            i = k % len(x)
            start, t0 = time.monotonic(), time.perf_counter()
            r = engine.infer(x[i])
            out.append(Frame(i, start, (time.perf_counter() - t0) * 1e3, r.where,
                             r.fallback_reason, r.label))
            k += 1


FLOOD = """
import sys, threading
from edgesdk import Engine
from edgesdk.models import DIGITS_BUNDLE, load_digits_test
x = load_digits_test()[0][:32]
def flood():
    with Engine(DIGITS_BUNDLE, server=sys.argv[1], slo_ms=60, strategy="c1@32/0",
                max_in_flight=8) as engine:
        while True:
            for _ in engine.stream(x):
                pass
for _ in range(3):
    threading.Thread(target=flood, daemon=True).start()
threading.Event().wait(float(sys.argv[2]))
"""


def _flood(endpoint: str, seconds: float) -> subprocess.Popen:
    """Other devices pushing frames as fast as their pipelines allow, from their own
    process (as other devices would: not contending for this one's interpreter)."""
    return subprocess.Popen([*OTHER_MACHINES, sys.executable, "-c", FLOOD, endpoint,
                             str(seconds)],
                            env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _serve(args: tuple) -> ServerProcess:
    return ServerProcess([*OTHER_MACHINES, sys.executable, "-m", "edgesdk", "serve",
                          str(DIGITS_BUNDLE), "--log-level", "debug", *args])


def test_engines_through_stop_overload_kill_and_restart():
    x, _ = load_digits_test()
    x = x[:100]
    segs = open_segments(Bundle.load(DIGITS_BUNDLE))
    labels = np.array([int(np.argmax(run_chain(segs, {"x": xi[None]})["logits"]))
                       for xi in x])
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    args = ("--bind", endpoint, "--workers", "2", "--max-queue", "4")
    server = _serve(args)
    stop = threading.Event()
    results: list[list] = [[] for _ in range(ENGINES)]
    threads = [threading.Thread(target=_stream, args=(endpoint, x, stop, out))
               for out in results]
    phases = {}
    try:
        # The tests before this one leave the process a large heap; a full garbage
        # collection of it pauses every thread (3 engines' frames past the deadline together,
        # by 60 ms, only in the whole suite). Frozen, it is no longer scanned: what is timed
        # is the engines, not the heap this test inherits. (An app's own heap can pause its
        # frames the same way: the engine's promise does not cover the host's GC.)
        gc.collect()
        gc.freeze()
        for t in threads:
            t.start()
        time.sleep(1.5)  # settle: the link is up, frames offload
        phases["stopped"] = time.monotonic()
        os.kill(server.proc.pid, signal.SIGSTOP)  # the broker freezes: no replies at all
        time.sleep(1.0)
        os.kill(server.proc.pid, signal.SIGCONT)
        time.sleep(1.0)
        phases["overloaded"] = time.monotonic()
        flood = _flood(endpoint, 1.5)
        flood.wait(30)
        phases["killed"] = time.monotonic()
        server.proc.kill()  # no goodbye
        server.proc.wait(10)
        server.kill()
        time.sleep(1.0)
        phases["restarted"] = time.monotonic()
        server = _serve(args)
        time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        server.kill()
        gc.unfreeze()
    frames = [row for out in results for row in out]
    assert len(frames) > 300
    late = [f for f in frames if f.ms > SLO_MS + LATE_MS]
    when = {name: round(t - phases["stopped"], 3) for name, t in phases.items()}
    assert not late, (f"{len(late)} of {len(frames)} frames past the deadline + 5 ms: "
                      f"{late[:5]}; phases from the stop, s: {when}, the late frames' starts: "
                      f"{[round(f.start - phases['stopped'], 3) for f in late[:5]]}")
    wrong = [f for f in frames if f.label != labels[f.i]]
    assert not wrong, f"{len(wrong)} wrong answers: {wrong[:5]}"
    wheres = {f.where for f in frames}
    assert "edge" in wheres and "device" in wheres, wheres

    def reasons(start: float, end: float) -> set:
        return {f.reason for f in frames if start <= f.start < end}

    # a frozen server is up: frames say it does not answer; an overloaded one is up and
    # answering: frames never say "unreachable" there (a freeze may: ZeroMQ's heartbeat
    # drops a connection that stays silent)
    assert "unresponsive" in reasons(phases["stopped"], phases["overloaded"])
    # A frame counts only if it ended before the kill: one that started just before it
    # makes its request after the connection dropped, and rightly finds it unreachable.
    overloaded = [round(f.start - phases["overloaded"], 3) for f in frames
                  if phases["overloaded"] + 0.5 <= f.start
                  and f.start + f.ms / 1e3 < phases["killed"] and f.reason == "unreachable"]
    assert not overloaded, f"unreachable while overloaded, at +s: {overloaded[:10]}"
    assert "unreachable" in reasons(phases["killed"], phases["restarted"])  # gone: it is
    for out in results:  # each engine reconnected after the restart
        assert any(f.where == "edge" for f in out[-20:]), [f.where for f in out[-20:]]
