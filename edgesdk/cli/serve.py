"""`edgesdk serve`: the edge server (`edgesdk keys` is edgesdk.cli.keys).

    edgesdk serve BUNDLE... [--bind tcp://127.0.0.1:5555] [--workers N] [--max-queue N]
                  [--curve-secret FILE --allow DIR] [--metrics-port PORT]
                  [--bundle-key PUBLIC]

The server is edgesdk.transport.broker.Server with edgesdk.server.TailHandlerFactory; the
workers it spawns unpickle that factory from edgesdk.server, never from a __main__ module.
"""

from __future__ import annotations

import argparse
import logging
import socket
from collections.abc import Sequence
from typing import Any

from ..server.tail import OUTPUT_BITS
from ..transport.config import MAX_BATCH
from ..transport.dispatch import SCHEDULERS
from ._args import non_negative_int, port, positive_int


def batch_size(text: str) -> int:
    value = positive_int(text)
    if value > MAX_BATCH:
        raise argparse.ArgumentTypeError(f"{value} is above the limit of {MAX_BATCH}")
    return value


def next_hop(text: str) -> tuple[str, bytes | None]:
    """--next-hop ENDPOINT[=KEY]: the endpoint, and the next stage's CURVE public key (its
    .key file or the z85 key itself, which may contain "=": endpoints do not) if given."""
    from ..transport.auth import load_public_key

    endpoint, given, key = text.partition("=")
    if not given:
        return text, None
    try:
        return endpoint, load_public_key(key)
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"{text}: {exc}") from None


class _StartupProgress(logging.Handler):
    """Start-up stages on a Progress, followed from the broker's own log events (the
    Server takes no callback): the first worker opens the tails and measures them
    (warming up), the others start after it, then "ready". Ignores everything after."""

    def __init__(self, progress: Any, workers: int, profile_runs: int) -> None:
        super().__init__(logging.INFO)
        self.progress = progress
        self.workers = workers
        self.ready = 0
        self.finished = False
        warm = f", measuring the tails ({profile_runs} runs)" if profile_runs else ""
        self.stage = progress.stage(f"warming up: the first worker opens the bundles{warm}")

    def emit(self, record: logging.LogRecord) -> None:
        event = record.getMessage()
        if self.finished:
            return
        if event == "worker_ready":
            self.ready += 1
            if self.ready == 1:
                self.stage.end()
                more = self.workers - 1
                self.stage = (self.progress.stage(
                    f"starting {more} more worker{'s' if more > 1 else ''}", total=more)
                    if more else None)
            elif self.stage is not None:
                self.stage.advance()
        elif event == "ready":
            if self.stage is not None:
                self.stage.end()
            self.stage, self.finished = None, True  # ignore what follows (restarts...)
            self.progress.note(f"ready on {getattr(record, 'fields', {}).get('endpoint')}")

    def close(self) -> None:
        if self.stage is not None:  # start-up stopped or failed: the log says why
            self.stage.end(failed=True)
            self.stage = None
        super().close()


def _serve(args: argparse.Namespace) -> int:
    from .._progress import Progress
    from ..server import TailHandlerFactory
    from ..transport.auth import allowed_keys, load_key_pair
    from ..transport.broker import Server, ServerConfig
    from ..transport.logs import configure_logging, log, log_event

    configure_logging(args.log_level)
    if args.backend == "ray":
        from ..server.ray_backend import require_ray

        require_ray()  # before the bundles load: a missing extra is the first thing said
    # Stage lines for a person at a terminal (or EDGESDK_PROGRESS=1): stderr is the JSON
    # log too, so whole lines only (no live bar); only while info events are logged
    progress = Progress(args.log_level in ("debug", "info"), bars=False)
    with progress.stage(f"loading {', '.join(args.bundles)}"):
        factory = TailHandlerFactory(tuple(args.bundles), threads=args.threads,
                                     output_bits=args.output_bits,
                                     profile_runs=args.profile_runs, device=args.device,
                                     bundle_key=args.bundle_key,
                                     batching=args.max_batch > 1)
        factory.check()
    workers = args.workers or 1
    tails = factory
    if args.backend == "ray":
        from ..server.ray_backend import RayTailFactory

        # the gateway's workers are bridges: each waits on one request (or batch) at a
        # time, so two per replica keep every replica busy
        workers = args.workers or 2 * (args.max_replicas or args.replicas)
        factory = RayTailFactory(tails, address=args.ray_address, app=args.ray_app)
    curve = load_key_pair(args.curve_secret) if args.curve_secret else None
    next_hops = args.next_hop or []  # (endpoint, public key or None): next_hop()
    if curve is None and any(key is not None for _, key in next_hops):
        log_event("ephemeral_forward_identity", logging.WARNING,
                  hint="--next-hop ENDPOINT=KEY without --curve-secret: this server reaches "
                       "the next stage with a throwaway key pair, which its --allow list "
                       "cannot hold")
    if args.allow and not allowed_keys(args.allow):
        log_event("empty_allow_list", logging.WARNING, allow=args.allow,
                  hint="no *.key files: no device can connect")
    config = ServerConfig(
        bind=args.bind, workers=workers,
        max_queue=args.max_queue if args.max_queue is not None else 4 * workers,
        max_frame_bytes=args.max_frame_bytes, curve=curve, allow_dir=args.allow,
        metrics_host=args.metrics_host, metrics_port=args.metrics_port,
        drain_timeout_s=args.drain_timeout, name=args.name or socket.gethostname(),
        scheduler=args.scheduler, max_batch=args.max_batch,
        next_hops=tuple(hop for hop, _ in next_hops),
        next_hop_keys={hop: key for hop, key in next_hops if key is not None})
    server = Server(config, factory, log_level=args.log_level)
    try:
        if args.backend == "ray":  # last, after everything that can refuse to start
            from ..server.ray_backend import deploy

            with progress.stage(f"deploying {args.replicas} replicas on the Ray cluster "
                                f"at {args.ray_address}"):
                deploy(tails, address=args.ray_address, replicas=args.replicas,
                       max_replicas=args.max_replicas, cpus_per_replica=args.threads,
                       app=args.ray_app)
        if not progress.lines:
            return server.run()
        watcher = _StartupProgress(progress, workers, args.profile_runs)
        log.addHandler(watcher)
        try:
            return server.run()
        finally:
            log.removeHandler(watcher)
            watcher.close()
    finally:
        if args.backend == "ray":
            from ..server.ray_backend import undeploy

            undeploy(args.ray_app)  # its replicas would hold the cluster's CPUs for nobody


def _add_serve(sub: Any, name: str, text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name, help=text,
        description="Run an edge server: a ZeroMQ ROUTER frontend, a load-balancing broker "
                    "and N worker processes that run the tail segments of every cut point of "
                    "the given bundles. Logs are JSON lines on stderr. SIGTERM or Ctrl-C "
                    "drains in-flight work and exits. Memory: an infer request whose frames "
                    "are more or larger than its cut takes is refused before it is queued, "
                    "so beyond its idle size the server holds at most (max-queue + 4 x "
                    "max-batch x workers) x R (3 x workers with --max-batch 1) for requests, "
                    "R being the largest legal request (all "
                    "frames of the largest cut at 32 bits, plus a 16 KiB envelope; the "
                    "'ready' log line gives R and the product), plus ZeroMQ's receive "
                    "buffers: a message is held whole while it arrives, each frame at most "
                    "--max-frame-bytes (see examples/edge_server.md).")
    p.add_argument("bundles", nargs="+", metavar="BUNDLE", help="bundle directories to serve")
    p.add_argument("--bind", default="tcp://127.0.0.1:5555", metavar="ENDPOINT",
                   help="frontend endpoint (default tcp://127.0.0.1:5555; binding a public "
                        "address without --curve-secret logs a warning)")
    p.add_argument("--workers", type=positive_int, metavar="N",
                   help="worker processes (default 1; with --backend ray, the bridges to the "
                        "replicas: default 2 per replica)")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local (default): the tails run in the worker processes; ray: in a "
                        "Ray Serve deployment on the Ray cluster at --ray-address, behind "
                        "this gateway (the `ray` extra)")
    p.add_argument("--ray-address", default="auto", metavar="ADDRESS",
                   help="with --backend ray: the cluster to join (default auto: the one "
                        "running on this machine, `ray start`)")
    p.add_argument("--ray-app", default="edgesdk", metavar="NAME",
                   help="with --backend ray: the Serve application's name (default edgesdk); "
                        "one per gateway: stopping a gateway deletes its application")
    p.add_argument("--replicas", type=positive_int, default=1, metavar="N",
                   help="with --backend ray: tail replicas (default 1), each with --threads "
                        "CPUs; with --max-replicas, the fewest the autoscaler keeps")
    p.add_argument("--max-replicas", type=positive_int, metavar="N",
                   help="with --backend ray: autoscale up to N replicas (two requests in "
                        "flight per replica as the target)")
    p.add_argument("--threads", type=positive_int, default=1, metavar="N",
                   help="runtime threads per worker: onnxruntime intra-op threads, LiteRT "
                        "num_threads for .tflite bundles (default 1)")
    p.add_argument("--max-queue", type=non_negative_int, metavar="N",
                   help="requests that may wait for a worker before the server answers busy "
                        "(default 4 x workers)")
    p.add_argument("--scheduler", choices=SCHEDULERS, default="edf",
                   help="edf (default): earliest deadline first, requests that cannot finish "
                        "within their budget answered expired at once, a fair share of the "
                        "queue per device; fifo: arrival order")
    p.add_argument("--max-batch", type=batch_size, default=8, metavar="N",
                   help="the most requests for one bundle and cut a worker computes together, "
                        "where the tail's graph takes a batch dimension (default 8; 1: one "
                        "at a time). Batches form from what waits when a worker frees, and "
                        "grow only while they cut the compute per request")
    p.add_argument("--next-hop", action="append", type=next_hop, metavar="ENDPOINT[=KEY]",
                   help="a server this one may forward chained requests to (one stage of a "
                        "device -> edge -> cloud chain, edgesdk.policy.chain); repeatable. "
                        "With =KEY (its public key file, NAME.key, or the z85 key) the hop "
                        "is CURVE-encrypted, this server's --curve-secret its identity "
                        "there. Without any, a request that names a next stage is refused")
    p.add_argument("--curve-secret", metavar="FILE",
                   help="the server's CURVE key pair (NAME.key_secret from `edgesdk keys gen`)")
    p.add_argument("--allow", metavar="DIR",
                   help="directory of device public keys (*.key) allowed to connect")
    p.add_argument("--metrics-port", type=port, metavar="PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics")
    p.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                   help="address of the metrics endpoint (default 127.0.0.1)")
    p.add_argument("--output-bits", type=int, choices=OUTPUT_BITS, default=32,
                   help="precision of the returned outputs (default 32)")
    p.add_argument("--profile-runs", type=non_negative_int, default=10, metavar="N",
                   help="timed runs of the tail segments at startup for the welcome profile; "
                        "0 uses the profile stored in the manifest (default 10)")
    p.add_argument("--device", metavar="NAME",
                   help="with --profile-runs 0: the manifest profile to use (default: host "
                        "name)")
    p.add_argument("--max-frame-bytes", type=positive_int, default=None,
                   metavar="BYTES", help="largest frame accepted (ZMQ_MAXMSGSIZE; a larger "
                                         "one disconnects its device). Default: the largest "
                                         "legal frame of the served cuts (a cut's tensor at "
                                         "32 bits with codec framing) plus 4 KiB")
    p.add_argument("--drain-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="longest wait for in-flight work on SIGTERM (default 10)")
    p.add_argument("--name", help="server name sent in the welcome (default: host name)")
    p.add_argument("--bundle-key", metavar="PUBLIC",
                   help="serve only bundles signed with this Ed25519 key (DIR/public from "
                        "`edgesdk keys new DIR`; needs the sign extra)")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"], help="default info")
    p.set_defaults(func=_serve)
    return p


def add_parser(sub: Any, name: str, text: str, argv: Sequence[str] | None = None
               ) -> argparse.ArgumentParser:
    """Register `serve` on the `edgesdk` subparsers."""
    return _add_serve(sub, name, text)
