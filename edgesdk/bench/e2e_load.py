"""Other devices loading the edge server: a closed loop of offloads that keeps
--concurrency requests in flight from one process, from --start-at to --stop-at
(time.time()), then prints one JSON summary line. The end-to-end benchmark runs a few of
these in the edge namespace (so they load the server, not the device's link) for its
server-load spike.

    edgesdk bench e2e-load --server tcp://10.213.0.2:5555 --bundle B.edge \\
        --inputs frames.npz --bits 16 --concurrency 4 --start-at T0 --stop-at T1

Each request is the bundle's input (a benchmark frame) encoded once at --bits, sent as an
edge-only offload with a 2 s budget; busy replies and timeouts are counted, not retried.
The summary: requests, ok, busy, failed, and the replies' round_trip_ms, queue_ms and
server_ms (mean, p50, p95; the server's own queue and compute times), from which the
queueing a device meets under this load can be fitted even when every one of the device's
offloads times out and it never sees a reply.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def run(args: Any) -> dict:
    from ..bundle import Bundle
    from ..codec import encode_tensors
    from ..errors import ServerBusy, TransportError
    from ..transport.client import Client

    bundle = Bundle.load(args.bundle)
    with np.load(args.inputs, allow_pickle=False) as z:
        x = z["x"][: args.distinct].astype(np.float32)
    payloads = [encode_tensors([x[i][None]], bits=args.bits) for i in range(len(x))]
    stats = {"requests": 0, "ok": 0, "busy": 0, "failed": 0, "ms": []}
    queue_ms: list[float] = []
    server_ms: list[float] = []
    with Client(args.server, retries=0, window=max(args.concurrency, 1)) as client:
        client.hello(budget_s=5.0)
        time.sleep(max(args.start_at - time.time(), 0.0))
        pending: dict[int, float] = {}
        n = 0
        while True:
            now = time.time()
            if now < args.stop_at:
                while len(pending) < args.concurrency:
                    rid = client.submit(payloads[n % len(payloads)], budget_s=2.0,
                                        bundle=bundle.source_sha256, cut="input")
                    pending[rid] = time.perf_counter()
                    n += 1
            elif not pending:
                break
            client.poll(0.05)
            for rid in [r for r in pending if client.done(r)]:
                t0 = pending.pop(rid)
                stats["requests"] += 1
                try:
                    reply = client.wait(rid)
                except ServerBusy:
                    stats["busy"] += 1
                    continue
                except TransportError:
                    stats["failed"] += 1
                    continue
                stats["ok"] += 1
                stats["ms"].append((time.perf_counter() - t0) * 1e3)
                queue_ms.append(float(reply.queue_ms))
                server_ms.append(float(reply.server_ms))
            if time.time() > args.stop_at + 3.0:  # never outlive the spike by much
                break
    ms = stats.pop("ms")
    for name, v in (("round_trip", ms), ("queue", queue_ms), ("server", server_ms)):
        stats[f"{name}_ms"] = ({"mean": round(float(np.mean(v)), 2),
                                "p50": round(float(np.percentile(v, 50)), 2),
                                "p95": round(float(np.percentile(v, 95)), 2)} if v else None)
    stats["mean_ms"] = stats["round_trip_ms"]["mean"] if ms else None
    return stats
