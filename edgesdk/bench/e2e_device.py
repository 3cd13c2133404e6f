"""The device side of the end-to-end benchmark: one Engine, frames back to back, one JSON
record per frame. The benchmark driver (edgesdk.bench.e2e) runs it inside the device's
network namespace and CPU quota; it is also usable on its own against any server.

    python -m edgesdk.bench.e2e_device --bundle B.edge --server tcp://10.0.0.2:5555 \\
        --strategy policy --slo-ms 100 --inputs frames.npz [--frames N | --seconds S]

inputs: an .npz with `x` (N, *input shape without batch) float32 and optionally `y`
(labels). Frames cycle through x. Prints {"records": [[t, total_ms, where, cut, bits,
fallback, correct], ...], "warmup": W, "late_s": L} on stdout; t is seconds since the
first timed frame, correct is null without labels, and late_s is how far past --start-at
the timed frames began (setup and warm-up overran it: a replayed trace is then shifted).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgesdk.bench.e2e_device")
    p.add_argument("--bundle", required=True)
    p.add_argument("--server")
    p.add_argument("--strategy", default="policy")
    p.add_argument("--task", default="balanced")
    p.add_argument("--slo-ms", type=float, required=True)
    p.add_argument("--inputs", required=True)
    p.add_argument("--frames", type=int)
    p.add_argument("--seconds", type=float)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", help="the bundle profile that describes this device")
    p.add_argument("--start-at", type=float,
                   help="time.time() at which to start the timed frames (a shared clock)")
    args = p.parse_args(argv)
    if (args.frames is None) == (args.seconds is None):
        p.error("give exactly one of --frames and --seconds")
    from ..engine import Engine

    with np.load(args.inputs, allow_pickle=False) as z:
        x = z["x"].astype(np.float32)
        y = z["y"] if "y" in z.files else None
    records = []
    with Engine(args.bundle, server=args.server, slo_ms=args.slo_ms, task=args.task,
                strategy=args.strategy, threads=args.threads, device=args.device,
                connect_timeout_s=10) as engine:
        from .netem import TokenBucket

        if engine.link is not None:  # the loopback testbed shapes the link in-process
            engine.link.shaper = TokenBucket.from_env()
        for i in range(args.warmup):
            engine.infer(x[i % len(x)])
        late_s = 0.0
        if args.start_at:
            late_s = max(time.time() - args.start_at, 0.0)
            time.sleep(max(args.start_at - time.time(), 0.0))
        t0 = time.monotonic()
        i = 0
        while True:
            now = time.monotonic() - t0
            if (args.frames is not None and i >= args.frames) or (
                    args.seconds is not None and now >= args.seconds):
                break
            k = i % len(x)
            r = engine.infer(x[k])
            correct = None if y is None else bool(r.label == int(y[k]))
            records.append([round(now, 4), round(r.timings.total, 3), r.where, r.cut, r.bits,
                            r.fallback_reason, correct])
            i += 1
    json.dump({"records": records, "warmup": args.warmup, "late_s": round(late_s, 3)},
              sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
