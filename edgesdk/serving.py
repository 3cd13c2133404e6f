"""Serving bundles: the tail handler behind `edgesdk serve`, and the serve/keys commands.

The transport moves opaque frames; this module is the composition above it that gives
them meaning. A device that ran a bundle's segments up to cut `c` sends the cut's tensors,
each encoded with edgesdk.codec (one [header, payload] pair per tensor, in the order of
the cut's tensors in the manifest). A worker decodes them, runs the remaining segments
with edgesdk.runtime and answers with the model outputs, each encoded the same way and
named in the result envelope's `outputs` field.

    factory = TailHandlerFactory(("squeezenet.edge",), threads=1)
    Server(ServerConfig(bind="tcp://0.0.0.0:5555", workers=2), factory).run()

Bundles are keyed by their source model's sha256 (`bundle.source_sha256`), so a device
and a server that split the same model file agree on the id whatever the directory is
called. The welcome describes, per bundle, the cut points (id and tensors) and the
server's own per-segment latency profile (measured by the first worker at startup, or read
from the manifest with --profile-runs 0), so the device's planner knows the server side.

    edgesdk serve BUNDLE... [--bind tcp://127.0.0.1:5555] [--workers N] [--max-queue N]
                  [--curve-secret FILE --allow DIR] [--metrics-port PORT]
    edgesdk keys gen DIR [--name NAME]

(`python -m edgesdk.serving serve|keys ...` runs the same commands.)
"""

from __future__ import annotations

import argparse
import logging
import math
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import codec
from .bundle import Bundle, CutSpec, TensorSpec
from .errors import BundleError, CodecError
from .transport.protocol import BAD_REQUEST, Envelope, HandlerError

UNKNOWN_BUNDLE = "unknown_bundle"
INPUT_CUT = "input"
FLOAT_DTYPES = ("float16", "float32", "float64")
OUTPUT_BITS = (16, 32)


def _spec_json(t: TensorSpec) -> dict:
    return {"name": t.name, "shape": list(t.shape), "dtype": t.dtype}


def encode_tensors(arrays: Sequence[np.ndarray], bits: int = 32, **options: Any) -> list:
    """Frames for several tensors: one codec [header, payload] pair each, in order."""
    frames: list = []
    for array in arrays:
        frames.extend(codec.encode(array, bits=bits, **options))
    return frames


def decode_tensors(frames: Sequence, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """The inverse of encode_tensors for tensors of known specs (hostile frames welcome):
    every tensor must decode within its spec's size and have exactly its shape."""
    if len(frames) != 2 * len(specs):
        raise CodecError(f"got {len(frames)} frames for {len(specs)} tensors, expected "
                         f"{2 * len(specs)} (a header and a payload each)")
    out = {}
    for i, spec in enumerate(specs):
        limit = 8 * math.prod(spec.shape)  # the spec's size even at float64
        array = codec.decode(frames[2 * i: 2 * i + 2], max_bytes=max(limit, 1))
        if tuple(array.shape) != tuple(spec.shape):
            raise CodecError(f"tensor {spec.name!r} has shape {list(array.shape)}, expected "
                             f"{list(spec.shape)}")
        out[spec.name] = array.astype(spec.dtype, copy=False)
    return out


def input_cut(bundle: Bundle) -> CutSpec | None:
    """The pseudo-cut "input" before segment 0 (edge-only: the device sends the model
    input and the server runs everything), when the inputs are float tensors."""
    inputs = bundle.manifest.inputs
    if any(t.dtype not in FLOAT_DTYPES for t in inputs):
        return None
    total = sum(s.flops for s in bundle.segments)
    return CutSpec(INPUT_CUT, -1, inputs, 0, total)


def servable_cuts(bundle: Bundle) -> tuple[CutSpec, ...]:
    """Where a request may enter the server: "input" (if float) and every cut point."""
    first = input_cut(bundle)
    return ((first,) if first else ()) + tuple(bundle.cuts)


def _check_servable(bundle: Bundle) -> None:
    """Every cut's tail can run from the cut's tensors alone, and everything on the wire
    is a float tensor (what the codec carries)."""
    for out in bundle.manifest.outputs:
        if out.dtype not in FLOAT_DTYPES:
            raise BundleError(f"{bundle.path}: model output {out.name!r} is {out.dtype}; the "
                              f"codec carries only {', '.join(FLOAT_DTYPES)} tensors")
    for cut in bundle.cuts:
        bad = [t.name for t in cut.tensors if t.dtype not in FLOAT_DTYPES]
        if bad:
            raise BundleError(f"{bundle.path}: cut {cut.id!r} sends non-float tensors {bad}")
        available = set(cut.names)
        for index in range(cut.after_segment + 1, len(bundle.segments)):
            seg = bundle.segments[index]
            missing = [n for n in seg.inputs if n not in available]
            if missing:
                raise BundleError(f"{bundle.path}: after cut {cut.id!r}, segment {index} reads "
                                  f"{missing}, which the cut does not send")
            available.update(seg.outputs)


def load_bundles(paths: Sequence[str]) -> dict[str, Bundle]:
    """Bundles keyed by source sha256, checked for serving; BundleError on duplicates."""
    bundles: dict[str, Bundle] = {}
    for path in paths:
        bundle = Bundle.load(path)
        key = bundle.source_sha256
        if not key:
            raise BundleError(f"{bundle.path}: manifest has no source sha256 to serve it by")
        if key in bundles:
            raise BundleError(f"{bundle.path} and {bundles[key].path} were cut from the same "
                              f"model (sha256 {key[:12]}...); serve one of them")
        if bundle.backend != "onnx":
            raise BundleError(f"{bundle.path}: backend {bundle.backend!r}; the server runs "
                              "onnx bundles")
        _check_servable(bundle)
        bundles[key] = bundle
    if not bundles:
        raise BundleError("no bundles to serve")
    return bundles


@dataclass(frozen=True)
class TailHandlerFactory:
    """Picklable recipe for a TailHandler, built inside each worker process.

    threads: onnxruntime intra-op threads per session. output_bits: 32 (exact) or 16 for
    the result tensors. profile_runs: timed runs of the tail segments for the welcome's
    profile (0: use the manifest's profile stored under `device`, if any).
    """

    bundles: tuple[str, ...]
    threads: int = 1
    output_bits: int = 32
    profile_runs: int = 10
    device: str | None = None

    def __post_init__(self) -> None:
        if self.output_bits not in OUTPUT_BITS:
            raise ValueError(f"output_bits is {self.output_bits!r}, expected one of "
                             f"{list(OUTPUT_BITS)}")
        if not isinstance(self.profile_runs, int) or self.profile_runs < 0:
            raise ValueError(f"profile_runs is {self.profile_runs!r}, expected an int >= 0")

    def check(self) -> None:
        """Load and check the bundles in the calling process (fail before spawning)."""
        load_bundles(self.bundles)

    def __call__(self) -> TailHandler:
        return TailHandler(self)


class _Served:
    """One bundle in a worker: its tail sessions, indexed like the bundle's segments."""

    def __init__(self, bundle: Bundle, threads: int) -> None:
        from .runtime import open_segment

        self.bundle = bundle
        self.cuts = {c.id: c for c in servable_cuts(bundle)}
        self.first_tail = min((c.after_segment + 1 for c in self.cuts.values()), default=None)
        n = len(bundle.segments)
        self.segments: list = [None] * n
        if self.first_tail is not None:
            for i in range(self.first_tail, n):
                self.segments[i] = open_segment(bundle, i, threads=threads)
        self.outputs = tuple(t.name for t in bundle.manifest.outputs)


class TailHandler:
    """Runs the tail of a served bundle for each infer request (see the module doc)."""

    def __init__(self, factory: TailHandlerFactory) -> None:
        self.factory = factory
        self.served = {key: _Served(b, factory.threads)
                       for key, b in load_bundles(factory.bundles).items()}

    def handle(self, request: Envelope, frames: Sequence) -> tuple[list, dict]:
        from .runtime import run_chain

        served = self.served.get(request.bundle or "")
        if served is None:
            known = ", ".join(f"{k[:12]}... ({s.bundle.name})" for k, s in self.served.items())
            raise HandlerError(f"bundle {str(request.bundle)[:64]!r} is not served here; "
                               f"served: {known}", UNKNOWN_BUNDLE)
        cut = served.cuts.get(request.cut or "")
        if cut is None:
            raise HandlerError(f"bundle {served.bundle.name!r} has no cut "
                               f"{str(request.cut)[:64]!r}; cuts are {sorted(served.cuts)}",
                               BAD_REQUEST)
        try:
            inputs = decode_tensors(frames, cut.tensors)
        except CodecError as exc:
            raise HandlerError(f"cut {cut.id!r} tensors: {exc}", BAD_REQUEST) from None
        env = run_chain(served.segments, inputs, start=cut.after_segment + 1)
        outputs = [env[name] for name in served.outputs]
        return encode_tensors(outputs, bits=self.factory.output_bits, compress="none"), {
            "outputs": list(served.outputs)}

    # -- the welcome -----------------------------------------------------------------------
    def describe(self) -> dict:
        return {key: self._describe_one(s) for key, s in self.served.items()}

    def _describe_one(self, served: _Served) -> dict:
        bundle = served.bundle
        profile = self._profile(served)
        cuts = []
        for c in served.cuts.values():
            entry: dict[str, Any] = {
                "id": c.id, "after_segment": c.after_segment,
                "tensors": [_spec_json(t) for t in c.tensors], "bytes_fp32": c.bytes,
                "flops_before": c.flops_before, "flops_after": c.flops_after}
            if profile is not None:
                entry["tail_ms"] = _tail_ms(profile, c)
            cuts.append(entry)
        return {"name": bundle.name, "backend": bundle.backend,
                "inputs": [_spec_json(t) for t in bundle.manifest.inputs],
                "outputs": [_spec_json(t) for t in bundle.manifest.outputs],
                "output_bits": self.factory.output_bits, "cuts": cuts, "profile": profile}

    def _profile(self, served: _Served) -> dict | None:
        """Per-segment latency of the tail segments on this server, as edgesdk.profile
        reports it; segment entries keep the bundle's segment index."""
        from .profile import default_device, profile_segments, seeded_inputs
        from .runtime import open_segment, run_chain

        bundle = served.bundle
        if served.first_tail is None:
            return None
        if self.factory.profile_runs == 0:
            stored = bundle.manifest.profiles.get(self.factory.device or default_device())
            return dict(stored) if isinstance(stored, dict) else None
        # The tail's inputs: run the head once on seeded inputs (its sessions are dropped).
        env = seeded_inputs(bundle.manifest.inputs, seed=0)
        head = [open_segment(bundle, i, threads=self.factory.threads)
                for i in range(served.first_tail)]
        env = run_chain(head, env)
        del head
        tail = served.segments[served.first_tail:]
        files = [s.file for s in bundle.segments[served.first_tail:]]
        profile = profile_segments(tail, env, runs=self.factory.profile_runs, warmup=2,
                                   threads=self.factory.threads, files=files, seed=0)
        for entry in profile["segments"]:
            entry["index"] += served.first_tail
        profile["first_segment"] = served.first_tail
        return profile


def _tail_ms(profile: dict, cut: CutSpec) -> float | None:
    """Server time of the tail after `cut`: the sum of its segments' median latencies."""
    try:
        by_index = {int(s["index"]): float(s["median_ms"]) for s in profile["segments"]}
    except (KeyError, TypeError, ValueError):
        return None
    wanted = range(cut.after_segment + 1, 1 + max(by_index, default=-1))
    if not wanted or any(i not in by_index for i in wanted):
        return None
    return round(sum(by_index[i] for i in wanted), 4)


# -- commands ------------------------------------------------------------------------------


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is not >= 0")
    return value


def _port(text: str) -> int:
    value = _non_negative(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port")
    return value


def _serve(args: argparse.Namespace) -> int:
    from .transport.auth import allowed_keys, load_key_pair
    from .transport.server import Server, ServerConfig, configure_logging, log_event

    configure_logging(args.log_level)
    factory = TailHandlerFactory(tuple(args.bundles), threads=args.threads,
                                 output_bits=args.output_bits, profile_runs=args.profile_runs,
                                 device=args.device)
    factory.check()
    curve = load_key_pair(args.curve_secret) if args.curve_secret else None
    if args.allow and not allowed_keys(args.allow):
        log_event("empty_allow_list", logging.WARNING, allow=args.allow,
                  hint="no *.key files: no device can connect")
    config = ServerConfig(
        bind=args.bind, workers=args.workers,
        max_queue=args.max_queue if args.max_queue is not None else 4 * args.workers,
        max_frame_bytes=args.max_frame_bytes, curve=curve, allow_dir=args.allow,
        metrics_host=args.metrics_host, metrics_port=args.metrics_port,
        drain_timeout_s=args.drain_timeout, name=args.name or socket.gethostname())
    return Server(config, factory, log_level=args.log_level).run()


def add_serve_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `serve` on an argparse subparsers object (what edgesdk.cli wires in)."""
    p = subparsers.add_parser(
        "serve", help="serve bundles' tail segments to devices over ZeroMQ",
        description="Run an edge server: a ZeroMQ ROUTER frontend, a load-balancing broker "
                    "and N worker processes that run the tail segments of every cut point of "
                    "the given bundles. Logs are JSON lines on stderr. SIGTERM or Ctrl-C "
                    "drains in-flight work and exits.")
    p.add_argument("bundles", nargs="+", metavar="BUNDLE", help="bundle directories to serve")
    p.add_argument("--bind", default="tcp://127.0.0.1:5555", metavar="ENDPOINT",
                   help="frontend endpoint (default tcp://127.0.0.1:5555; binding a public "
                        "address without --curve-secret logs a warning)")
    p.add_argument("--workers", type=_positive, default=1, metavar="N",
                   help="worker processes (default 1)")
    p.add_argument("--threads", type=_positive, default=1, metavar="N",
                   help="onnxruntime intra-op threads per worker (default 1)")
    p.add_argument("--max-queue", type=_non_negative, metavar="N",
                   help="requests that may wait for a worker before the server answers busy "
                        "(default 4 x workers)")
    p.add_argument("--curve-secret", metavar="FILE",
                   help="the server's CURVE key pair (NAME.key_secret from `edgesdk keys gen`)")
    p.add_argument("--allow", metavar="DIR",
                   help="directory of device public keys (*.key) allowed to connect")
    p.add_argument("--metrics-port", type=_port, metavar="PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics")
    p.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                   help="address of the metrics endpoint (default 127.0.0.1)")
    p.add_argument("--output-bits", type=int, choices=OUTPUT_BITS, default=32,
                   help="precision of the returned outputs (default 32)")
    p.add_argument("--profile-runs", type=_non_negative, default=10, metavar="N",
                   help="timed runs of the tail segments at startup for the welcome profile; "
                        "0 uses the profile stored in the manifest (default 10)")
    p.add_argument("--device", metavar="NAME",
                   help="with --profile-runs 0: the manifest profile to use (default: host "
                        "name)")
    p.add_argument("--max-frame-bytes", type=_positive, default=32 * 1024 * 1024,
                   metavar="BYTES", help="largest frame accepted (ZMQ_MAXMSGSIZE; default "
                                         "32 MiB)")
    p.add_argument("--drain-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="longest wait for in-flight work on SIGTERM (default 10)")
    p.add_argument("--name", help="server name sent in the welcome (default: host name)")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"], help="default info")
    p.set_defaults(func=_serve)
    return p


def _keys(args: argparse.Namespace) -> int:
    from .transport.auth import generate_keys, load_key_pair

    public, secret = generate_keys(args.dir, args.name, force=args.force)
    pair = load_key_pair(secret)
    print(f"public key  {public}   (give this file to the other side)")
    print(f"secret key  {secret}   (keep it here, mode 0600)")
    print(f"z85 public  {pair.public.decode()}")
    return 0


def add_keys_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `keys gen` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "keys", help="make CURVE key pairs for the server and devices",
        description="Make a CURVE key pair: NAME.key (public: give it to the other side) and "
                    "NAME.key_secret (keep it). Run it once for the server and once per "
                    "device; put device .key files in the server's --allow directory and "
                    "give the server's .key to the devices.")
    keys_sub = p.add_subparsers(dest="keys_command", required=True)
    g = keys_sub.add_parser("gen", help="write NAME.key and NAME.key_secret into DIR")
    g.add_argument("dir", metavar="DIR", help="directory for the key files")
    g.add_argument("--name", default=socket.gethostname() or "edgesdk",
                   help="key file name (default: the host name)")
    g.add_argument("--force", action="store_true", help="replace an existing pair")
    g.set_defaults(func=_keys)
    return p


def main(argv: list[str] | None = None) -> int:
    """`python -m edgesdk.serving serve|keys ...` (the same as `edgesdk serve|keys`)."""
    from .errors import EdgeError

    parser = argparse.ArgumentParser(prog="edgesdk", description="edge serving commands")
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve_parser(sub)
    add_keys_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (EdgeError, OSError, ValueError) as exc:
        print(f"edgesdk: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1


__all__ = ["TailHandler", "TailHandlerFactory", "add_keys_parser", "add_serve_parser",
           "decode_tensors", "encode_tensors", "load_bundles", "main"]

if __name__ == "__main__":
    # Run main from the imported module, not from this __main__ copy, so that the factory
    # pickled to the workers is edgesdk.serving.TailHandlerFactory.
    from edgesdk.serving import main as _main

    sys.exit(_main())
