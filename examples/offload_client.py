"""Offload the tail of a model to a running `edgesdk serve` and print where the time went.

Terminal 1 (the edge server; see examples/edge_server.md):

    edgesdk split squeezenet.onnx -o squeezenet.edge --max-points 3
    edgesdk serve squeezenet.edge --bind tcp://127.0.0.1:5555 --workers 2

Terminal 2 (the device):

    python examples/offload_client.py squeezenet.edge --server tcp://127.0.0.1:5555

The device holds the same bundle. It asks the server what it serves (hello), runs the
head segments up to a cut point on a seeded input, encodes the cut tensors with the codec
(8 bits by default), sends them, and decodes the server's output. Per request it prints
the round trip and its parts: the server's compute (server_ms), the wait for a worker
(queue_ms), and the rest (network and transport). Finally it compares the edge's answer
with the whole model run locally. With CURVE: --server-key keys/server.key
--client-key keys/camera.key_secret.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np

from edgesdk.bundle import Bundle
from edgesdk.codec import decode_tensors, encode_tensors
from edgesdk.errors import EdgeError, TransportError
from edgesdk.profile import seeded_inputs
from edgesdk.runtime import open_segments, run_chain
from edgesdk.transport import Client


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("bundle", help="the bundle directory (the same model the server serves)")
    p.add_argument("--server", default="tcp://127.0.0.1:5555", help="server endpoint")
    p.add_argument("--cut", help="cut id to offload at (default: the middle cut)")
    p.add_argument("--bits", type=int, default=8, choices=[2, 4, 8, 16, 32],
                   help="codec bits for the cut tensors (default 8)")
    p.add_argument("--requests", type=int, default=10, help="how many requests (default 10)")
    p.add_argument("--budget-ms", type=float, default=500.0, help="deadline per request")
    p.add_argument("--server-key", help="the server's public key file (CURVE)")
    p.add_argument("--client-key", help="this device's .key_secret file (CURVE)")
    args = p.parse_args(argv)

    bundle = Bundle.load(args.bundle)
    if not bundle.cuts:
        print(f"{bundle.path} has no cut points: nothing to offload", file=sys.stderr)
        return 1
    cut = bundle.cut(args.cut) if args.cut else bundle.cuts[len(bundle.cuts) // 2]
    segments = open_segments(bundle)
    feed = seeded_inputs(bundle.manifest.inputs, seed=0)
    whole = run_chain(segments, feed)
    env = run_chain(segments, feed, 0, cut.after_segment + 1)
    frames = encode_tensors([env[n] for n in cut.names], bits=args.bits)
    sent = sum(len(memoryview(f).cast("B")) for f in frames)

    try:
        with Client(args.server, server_public_key=args.server_key,
                    client_keys=args.client_key) as client:
            welcome = client.hello(budget_s=5.0)
            served = welcome.bundles.get(bundle.source_sha256)
            print(f"server {welcome.server!r} (protocol {welcome.server_version}), load "
                  f"{dict(welcome.load)}, hello rtt {welcome.rtt * 1e3:.2f} ms")
            if served is None:
                print(f"the server does not serve {bundle.name} (sha256 "
                      f"{bundle.source_sha256[:12]}...)", file=sys.stderr)
                return 1
            tail = next((c.get("tail_ms") for c in served["cuts"] if c["id"] == cut.id), None)
            print(f"offloading {bundle.name} at cut {cut.id} ({' + '.join(cut.names)}): "
                  f"{sent} bytes at {args.bits} bits instead of {cut.bytes} at float32; "
                  f"server profile says the tail takes {tail} ms\n")
            print(f"{'#':>3} {'rtt ms':>8} {'server ms':>9} {'queue ms':>8} {'network ms':>10}")
            rtts, reply = [], None
            for i in range(args.requests):
                reply = client.request(frames, budget_s=args.budget_ms / 1e3,
                                       bundle=bundle.source_sha256, cut=cut.id)
                rtt = reply.rtt * 1e3
                rtts.append(rtt)
                print(f"{i:>3} {rtt:8.2f} {reply.server_ms:9.2f} {reply.queue_ms:8.2f} "
                      f"{rtt - reply.server_ms - reply.queue_ms:10.2f}")
    except TransportError as exc:
        print(f"offload failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except EdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    outputs = decode_tensors(reply.frames, bundle.manifest.outputs)
    name = bundle.manifest.outputs[0].name
    error = float(np.max(np.abs(outputs[name] - whole[name])))
    same = int(np.argmax(outputs[name])) == int(np.argmax(whole[name]))
    print(f"\nmedian rtt {statistics.median(rtts):.2f} ms over {len(rtts)} requests")
    print(f"max |edge - local| = {error:.3g} on {name}; top-1 {'agrees' if same else 'differs'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
