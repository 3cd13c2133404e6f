"""The device process of `edgesdk bench stream` (bench.stream): one strategy through one
run, in the testbed's device namespace and CPU quota.

    python -m edgesdk.bench.stream_device '{"bundle": B, "server": "tcp://...",
        "frames": "F.npz", "strategy": "control:V" or PLAN, "fps": F, "seconds": S}'

(one JSON argument: the driver's, not a user's command line)

Prints {"ready": true} once its Engine is open (and, under stream control, its speeds are
measured), reads {"start_at": T, "shape": SPEC or null} (the loopback shaper's spec where
there is no tc), starts the camera at T and prints the run's result as one JSON line.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from ..engine import Engine
    from .netem import TokenBucket
    from .stream import POWER, SLO_MS, run_stream

    args = json.loads((sys.argv[1:] if argv is None else argv)[0])
    with np.load(args["frames"]) as z:
        x = z["x"].astype(np.float32)
    strategy = args["strategy"]
    control = strategy.startswith("control:")
    v = float(strategy.split(":", 1)[1]) if control else None
    with Engine(args["bundle"], server=args["server"], power=POWER, slo_ms=SLO_MS,
                strategy="planner" if control else strategy, threads=1,
                connect_timeout_s=10) as engine:
        if control:
            engine.stream_speeds()  # measured now, not in the run's first frame
        print(json.dumps({"ready": True}), flush=True)
        go = json.loads(sys.stdin.readline())
        if go.get("shape"):
            engine.link.shaper = TokenBucket.from_env(go["shape"])
        time.sleep(max(go["start_at"] - time.time(), 0.0))
        result = run_stream(engine, x, float(args["fps"]), float(args["seconds"]), v)
        if control:
            result["speeds"] = [[s.threads, round(s.speedup, 3)] for s in engine.stream_speeds()]
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
