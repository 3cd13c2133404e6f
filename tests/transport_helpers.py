"""Helpers for the transport tests: real server processes on 127.0.0.1, always cleaned up.

`ServerProcess` runs a server as a subprocess, as a user would, reads its JSON log lines
on a thread, and in `__exit__` always ends it (SIGTERM, then SIGKILL); its workers die
with it (PR_SET_PDEATHSIG). Two kinds of server:

    ServerProcess.serving([bundle_dir], "--workers", "2")     # python -m edgesdk serve
    ServerProcess.ops("--workers", "1")                        # python tests/transport_helpers.py

The "ops" server runs OpsHandler, whose behaviour each request picks with the `op` field
of its envelope: echo (default), sleep (`ms`), crash (os._exit), raise, reject, hang.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from edgesdk.errors import ServerStartError
from edgesdk.server import ServerProcess as _ServerProcess

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


class OpsHandler:
    """A handler whose behaviour the request chooses (see the module docstring)."""

    def handle(self, request, frames):
        from edgesdk.transport.protocol import HandlerError

        op = request.get("op", "echo")
        if op == "sleep":
            time.sleep(float(request.get("ms", 10)) / 1e3)
        elif op == "crash":
            os._exit(3)
        elif op == "raise":
            raise RuntimeError("the handler failed on purpose")
        elif op == "reject":
            raise HandlerError("rejected on purpose")
        elif op == "hang":
            time.sleep(3600)
        return [bytes(f) for f in frames], {"echo_id": request.id, "pid": os.getpid()}

    def describe(self):
        return {"ops": {"name": "ops", "cuts": [], "profile": None}}


class OpsFactory:
    def __call__(self):
        return OpsHandler()


def _ops_main(argv: list[str] | None = None) -> int:
    from edgesdk.transport.auth import load_key_pair
    from edgesdk.transport.broker import Server, ServerConfig
    from edgesdk.transport.logs import configure_logging

    p = argparse.ArgumentParser()
    p.add_argument("--bind", default="tcp://127.0.0.1:*")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--max-queue", type=int, default=16)
    p.add_argument("--worker-timeout", type=float, default=30.0)
    p.add_argument("--drain-timeout", type=float, default=10.0)
    p.add_argument("--max-frame-bytes", type=int, default=32 * 1024 * 1024)
    p.add_argument("--max-frames", type=int, default=64)
    p.add_argument("--curve-secret")
    p.add_argument("--allow")
    p.add_argument("--metrics-port", type=int)
    args = p.parse_args(argv)
    configure_logging("debug")
    config = ServerConfig(
        bind=args.bind, workers=args.workers, max_queue=args.max_queue,
        worker_timeout_s=args.worker_timeout, drain_timeout_s=args.drain_timeout,
        max_frame_bytes=args.max_frame_bytes, max_frames=args.max_frames,
        curve=load_key_pair(args.curve_secret) if args.curve_secret else None,
        allow_dir=args.allow, metrics_port=args.metrics_port)
    from transport_helpers import OpsFactory as Factory  # the importable name, for spawn

    return Server(config, Factory(), log_level="debug").run()


def child_env() -> dict[str, str]:
    """The environment of server subprocesses: the edgesdk these tests imported (the
    installed package in CI, a checkout on PYTHONPATH in development) and tests/."""
    import edgesdk

    package_root = str(Path(edgesdk.__file__).resolve().parent.parent)
    paths = [package_root, str(TESTS)] + [p for p in os.environ.get("PYTHONPATH", "").split(
        os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "EDGESDK_NATIVE":
            os.environ.get("EDGESDK_NATIVE", "auto"), "PYTHONWARNINGS": "ignore"}


def without_onnxruntime(tmp_path: Path) -> dict[str, str]:
    """child_env() in which `import onnxruntime` raises ImportError, as on armv7l, in the
    process and every Python process it starts (server, spawned workers): a stand-in
    package first on PYTHONPATH. (sys.modules["onnxruntime"] = None blocks one process.)"""
    stub = tmp_path / "no-onnxruntime" / "onnxruntime"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(
        'raise ImportError("onnxruntime is blocked for this test (as on 32-bit Pi OS)")\n')
    env = child_env()
    env["PYTHONPATH"] = str(stub.parent) + os.pathsep + env["PYTHONPATH"]
    return env


class ServerProcess(_ServerProcess):
    """edgesdk.server.ServerProcess with this suite's environment and the two
    kinds of test server (see the module docstring)."""

    def __init__(self, cmd: list[str], ready_timeout: float = 60.0) -> None:
        try:
            super().__init__(cmd, ready_timeout, env=child_env(), cwd=str(TESTS))
        except ServerStartError as exc:
            raise AssertionError(str(exc)) from None

    @classmethod
    def serving(cls, bundles: list, *args: str) -> ServerProcess:
        return cls([sys.executable, "-m", "edgesdk", "serve", *map(str, bundles),
                    "--bind", "tcp://127.0.0.1:*", "--log-level", "debug", *args])

    @classmethod
    def ops(cls, *args: str) -> ServerProcess:
        return cls([sys.executable, str(TESTS / "transport_helpers.py"), *args])

    def wait_event(self, *args, **kw) -> dict:
        try:
            return super().wait_event(*args, **kw)
        except ServerStartError as exc:
            raise AssertionError(str(exc)) from None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


if __name__ == "__main__":
    sys.exit(_ops_main())
