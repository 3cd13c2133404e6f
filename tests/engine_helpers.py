"""A real edge server whose tail handler first sleeps: a slow or saturated server, for
the Engine's timeout and busy paths (a failure we can cause for real, with real sockets,
a real broker and real worker processes).

    ServerProcess([sys.executable, "tests/engine_helpers.py", BUNDLE, "--delay-ms", "200",
                   "--max-queue", "0"])

And a device slow enough that offloading digits pays (slow_device_bundle, as_profiled),
with a camera loop over it (stream_frames), for the tests of servers used or given up.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from edgesdk.server import TailHandler, TailHandlerFactory


class SlowTailHandler(TailHandler):
    def handle(self, request, frames):
        started = time.monotonic()
        time.sleep(self.factory.delay_ms / 1e3)
        out = super().handle(request, frames)
        self._hold(started)
        return out

    def handle_batch(self, requests, payloads):
        started = time.monotonic()
        time.sleep(self.factory.delay_ms / 1e3)  # a batch is as slow as one request
        out = super().handle_batch(requests, payloads)
        self._hold(started)
        return out

    def _hold(self, started: float) -> None:
        """Keep the reply until reply_at_ms after the request began, whatever the compute
        took (on a loaded machine, anything from 0.8 to 2x its usual time)."""
        wait = self.factory.reply_at_ms / 1e3 - (time.monotonic() - started)
        if wait > 0:
            time.sleep(wait)


@dataclass(frozen=True)
class SlowTailFactory(TailHandlerFactory):
    delay_ms: float = 0.0  # before the compute
    reply_at_ms: float = 0.0  # the earliest the reply leaves, from the request's start

    def __call__(self) -> TailHandler:
        return SlowTailHandler(self)


def slow_device_bundle(root: Path) -> Path:
    """Digits on a "device" whose profile says segments 1..3 take 30 ms each: offloading
    the input pays (its server is a real one, running the real digits tail)."""
    from edgesdk.models import DIGITS_BUNDLE

    from conftest import SLOWDOWN

    slow = root / "slowdevice.edge"
    shutil.copytree(DIGITS_BUNDLE, slow)
    manifest = json.loads((slow / "manifest.json").read_text())
    for seg in next(iter(manifest["profiles"].values()))["segments"][1:]:
        seg["median_ms"] = 30.0 * SLOWDOWN
    (slow / "manifest.json").write_text(json.dumps(manifest))
    return slow


def as_profiled(engine) -> None:
    """Keep the planner on the profile's device: forget what the warm-up measured of the
    real (fast) one, and learn nothing more of it."""
    from edgesdk.estimators import SlowdownEstimator

    engine._slowdown = SlowdownEstimator([{"median_ms": m} for m in engine._seg_ms])
    engine._slowdown.observe = lambda *a, **k: 1.0


def stream_frames(engine, x, seconds: float, until=None) -> list:
    """Frames every 10 ms for `seconds` (x SLOWDOWN; or until `until(result)`), their
    Results."""
    from conftest import SLOWDOWN

    out = []
    end = time.monotonic() + seconds * SLOWDOWN
    i = 0
    while time.monotonic() < end:
        r = engine.infer(x[i % len(x)])
        out.append(r)
        i += 1
        if until is not None and until(r):
            break
        time.sleep(0.01)
    return out


def main(argv: list[str] | None = None) -> int:
    from edgesdk.transport.broker import Server, ServerConfig
    from edgesdk.transport.logs import configure_logging

    p = argparse.ArgumentParser()
    p.add_argument("bundle")
    p.add_argument("--bind", default="tcp://127.0.0.1:*")
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--reply-at-ms", type=float, default=0.0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--max-queue", type=int, default=16)
    args = p.parse_args(argv)
    configure_logging("info")
    from engine_helpers import SlowTailFactory as Factory  # the importable name, for spawn

    factory = Factory((args.bundle,), profile_runs=2, delay_ms=args.delay_ms,
                      reply_at_ms=args.reply_at_ms)
    config = ServerConfig(bind=args.bind, workers=args.workers, max_queue=args.max_queue)
    return Server(config, factory, log_level="info").run()


if __name__ == "__main__":
    sys.exit(main())
