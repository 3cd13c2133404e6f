"""How an edge server runs: its ServerConfig, checked before anything starts.

    config = ServerConfig(bind="tcp://0.0.0.0:5555", workers=2, max_queue=8)
    config.validate()                     # ValueError naming the field and its limit
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .auth import KeyPair
from .dispatch import SCHEDULERS
from .protocol import MAX_ENVELOPE_BYTES, MAX_PROBE_BYTES

# {bundle id: {cut id: the largest legal size of each payload frame}}: what a handler
# factory's payload_limits() returns (edgesdk.server.TailHandlerFactory derives it from
# the bundles) and what the broker checks every infer request against.
PayloadLimits = Mapping[str, Mapping[str, Sequence[int]]]
DEFAULT_MAX_FRAME_BYTES = 32 * 1024 * 1024  # for handlers that state no payload limits
FRAME_SLACK = 4096  # above the largest legal frame, for the automatic ZMQ_MAXMSGSIZE

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
MAX_BATCH = 64  # requests in one batch: beyond it a batch holds a worker too long


@dataclass(frozen=True)
class ServerConfig:
    """How a server runs. Sizes in bytes, times in seconds.

    bind: the frontend endpoint. max_queue: requests that may wait for a worker before the
    server answers busy. max_frame_bytes: ZMQ_MAXMSGSIZE on the frontend (a larger frame
    disconnects its sender); None: the largest legal frame of what the handler serves
    (see `frame_limit`), or DEFAULT_MAX_FRAME_BYTES for a handler that does not say.
    max_frames: frames per message, envelope included.
    curve: the server's key pair; with it, allow_dir must name the directory of accepted
    device public keys. metrics_port: serve Prometheus text on it (None: off).
    scheduler: "edf" (earliest deadline first, late requests refused at once, a fair share
    of the queue per device) or "fifo" (arrival order); see transport.dispatch.
    max_batch: the most requests for one bundle and cut that a worker computes together,
    where the handler can (1: one at a time); transport.dispatch sizes each batch.
    next_hops: the endpoints this server may forward a chained request to (route.py);
    empty: it serves only as the last stage of a chain. next_hop_keys: the z85 public keys
    of the next hops reached over CURVE, by endpoint (this server's `curve` pair is its
    identity there).
    """

    bind: str = "tcp://127.0.0.1:5555"
    workers: int = 1
    max_queue: int = 16
    max_frame_bytes: int | None = None
    max_frames: int = 64
    curve: KeyPair | None = None
    allow_dir: str | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    drain_timeout_s: float = 10.0
    worker_timeout_s: float = 30.0
    startup_timeout_s: float = 120.0
    name: str = "edgesdk"
    scheduler: str = "edf"
    max_batch: int = 8
    next_hops: tuple[str, ...] = ()
    next_hop_keys: Mapping[str, bytes] = field(default_factory=dict)

    def validate(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler is {self.scheduler!r}, expected one of "
                             f"{list(SCHEDULERS)}")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"workers is {self.workers!r}, expected an int >= 1")
        if not isinstance(self.max_queue, int) or self.max_queue < 0:
            raise ValueError(f"max_queue is {self.max_queue!r}, expected an int >= 0")
        if not isinstance(self.max_batch, int) or not 1 <= self.max_batch <= MAX_BATCH:
            raise ValueError(f"max_batch is {self.max_batch!r}, expected an int in "
                             f"[1, {MAX_BATCH}]")
        for hop in self.next_hops:
            if not isinstance(hop, str) or not hop.startswith(("tcp://", "ipc://")):
                raise ValueError(f"next hop {hop!r} is not an endpoint (tcp://host:port)")
        for hop, key in self.next_hop_keys.items():
            if hop not in self.next_hops:
                raise ValueError(f"a CURVE key is given for {hop!r}, which is not a next hop "
                                 f"({list(self.next_hops)})")
            if not (isinstance(key, bytes) and len(key) == 40):
                raise ValueError(f"the CURVE key for next hop {hop!r} is {key!r}, expected a "
                                 "z85 public key (40 bytes; edgesdk.transport.auth."
                                 "load_public_key reads one)")
        if self.max_frames < 2:
            raise ValueError(f"max_frames is {self.max_frames}, expected >= 2")
        if self.max_frame_bytes is not None and self.max_frame_bytes < 1024:
            raise ValueError(f"max_frame_bytes is {self.max_frame_bytes}, expected >= 1024")
        if self.curve is not None and not self.allow_dir:
            raise ValueError("a CURVE server needs an allow directory of device public keys "
                             "(--allow DIR)")
        if self.allow_dir and self.curve is None:
            raise ValueError("an allow directory needs the server's CURVE secret key "
                             "(--curve-secret FILE)")


def frame_limit(config: ServerConfig, payload_limits: PayloadLimits | None) -> int:
    """The frontend's ZMQ_MAXMSGSIZE: config.max_frame_bytes when given; else the largest
    legal frame of the served payloads, an envelope (16 KiB) or a heartbeat's bandwidth
    probe (MAX_PROBE_BYTES, 1 MiB), plus FRAME_SLACK; else, when the handler states no
    limits, DEFAULT_MAX_FRAME_BYTES. (A frame above it drops the sender's connection, and
    every request pending on it with it: a probe must always fit.)"""
    if config.max_frame_bytes is not None:
        return config.max_frame_bytes
    if not payload_limits:
        return DEFAULT_MAX_FRAME_BYTES
    return max(MAX_ENVELOPE_BYTES, MAX_PROBE_BYTES, largest_frame(payload_limits)) + FRAME_SLACK


def largest_frame(payload_limits: PayloadLimits) -> int:
    """The largest legal payload frame over every bundle and cut (0 if none)."""
    return max((max(frames, default=0) for cuts in payload_limits.values()
                for frames in cuts.values()), default=0)


def largest_request(payload_limits: PayloadLimits | None, max_frames: int,
                    max_frame_bytes: int) -> int:
    """The largest legal infer request in bytes: the envelope plus every payload frame of
    the largest cut. Without payload limits, what the frame limits allow."""
    if not payload_limits:
        return MAX_ENVELOPE_BYTES + (max_frames - 1) * max_frame_bytes
    return MAX_ENVELOPE_BYTES + max((sum(frames) for cuts in payload_limits.values()
                                     for frames in cuts.values()), default=0)


def memory_bound(max_queue: int, workers: int, request_bytes: int, max_batch: int = 1) -> int:
    """Memory a server may hold for requests beyond its idle size (bytes), apart from
    ZeroMQ's receive buffers (examples/edge_server.md), in units of the largest legal
    request: every queued request in the broker (max_queue), and per worker its running
    batch of up to max_batch requests three times (the broker's copy, the worker's, the
    tensors decoded from it), and once more stacked into one batch when max_batch > 1."""
    per_worker = (4 if max_batch > 1 else 3) * max_batch
    return (max_queue + per_worker * workers) * request_bytes


def is_loopback(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// endpoints on a loopback address."""
    if not endpoint.startswith("tcp://"):
        return True
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0]
    return host in LOOPBACK_HOSTS or host.startswith("127.")


__all__ = ["DEFAULT_MAX_FRAME_BYTES", "FRAME_SLACK", "LOOPBACK_HOSTS", "MAX_BATCH", "PayloadLimits",
           "ServerConfig", "frame_limit", "is_loopback", "largest_frame", "largest_request",
           "memory_bound"]
