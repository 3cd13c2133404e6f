"""How an edge server runs: its ServerConfig, checked before anything starts.

    config = ServerConfig(bind="tcp://0.0.0.0:5555", workers=2, max_queue=8)
    config.validate()                     # ValueError naming the field and its limit
"""

from __future__ import annotations

from dataclasses import dataclass

from .auth import KeyPair

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")


@dataclass(frozen=True)
class ServerConfig:
    """How a server runs. Sizes in bytes, times in seconds.

    bind: the frontend endpoint. max_queue: requests that may wait for a worker before the
    server answers busy. max_frame_bytes: ZMQ_MAXMSGSIZE on the frontend (a larger frame
    disconnects its sender). max_frames: frames per message, envelope included.
    curve: the server's key pair; with it, allow_dir must name the directory of accepted
    device public keys. metrics_port: serve Prometheus text on it (None: off).
    """

    bind: str = "tcp://127.0.0.1:5555"
    workers: int = 1
    max_queue: int = 16
    max_frame_bytes: int = 32 * 1024 * 1024
    max_frames: int = 64
    curve: KeyPair | None = None
    allow_dir: str | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    drain_timeout_s: float = 10.0
    worker_timeout_s: float = 30.0
    startup_timeout_s: float = 120.0
    name: str = "edgesdk"

    def validate(self) -> None:
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"workers is {self.workers!r}, expected an int >= 1")
        if not isinstance(self.max_queue, int) or self.max_queue < 0:
            raise ValueError(f"max_queue is {self.max_queue!r}, expected an int >= 0")
        if self.max_frames < 2:
            raise ValueError(f"max_frames is {self.max_frames}, expected >= 2")
        if self.max_frame_bytes < 1024:
            raise ValueError(f"max_frame_bytes is {self.max_frame_bytes}, expected >= 1024")
        if self.curve is not None and not self.allow_dir:
            raise ValueError("a CURVE server needs an allow directory of device public keys "
                             "(--allow DIR)")
        if self.allow_dir and self.curve is None:
            raise ValueError("an allow directory needs the server's CURVE secret key "
                             "(--curve-secret FILE)")


def is_loopback(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// endpoints on a loopback address."""
    if not endpoint.startswith("tcp://"):
        return True
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0]
    return host in LOOPBACK_HOSTS or host.startswith("127.")


__all__ = ["LOOPBACK_HOSTS", "ServerConfig", "is_loopback"]
