"""Helpers for the transport tests: real server processes on 127.0.0.1, always cleaned up.

`ServerProcess` runs a server as a subprocess, as a user would, reads its JSON log lines
on a thread, and in `__exit__` always ends it (SIGTERM, then SIGKILL); its workers die
with it (PR_SET_PDEATHSIG). Two kinds of server:

    ServerProcess.serving([bundle_dir], "--workers", "2")     # python -m edgesdk.serving serve
    ServerProcess.ops("--workers", "1")                        # python tests/transport_helpers.py

The "ops" server runs OpsHandler, whose behaviour each request picks with the `op` field
of its envelope: echo (default), sleep (`ms`), crash (os._exit), raise, reject, hang.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

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
    from edgesdk.transport.server import Server, ServerConfig, configure_logging

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


class ServerProcess:
    """A server subprocess with its log; a context manager that always ends it."""

    def __init__(self, cmd: list[str], ready_timeout: float = 60.0) -> None:
        self.cmd = cmd
        self.events: list[dict] = []
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, env=child_env(), cwd=str(TESTS))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            ready = self.wait_event("ready", timeout=ready_timeout)
        except BaseException:
            self.kill()
            raise
        self.endpoint: str = ready["endpoint"]
        self.pid = self.proc.pid
        self.metrics_url = ready.get("metrics")

    @classmethod
    def serving(cls, bundles: list, *args: str) -> ServerProcess:
        return cls([sys.executable, "-m", "edgesdk.serving", "serve", *map(str, bundles),
                    "--bind", "tcp://127.0.0.1:*", "--log-level", "debug", *args])

    @classmethod
    def ops(cls, *args: str) -> ServerProcess:
        return cls([sys.executable, str(TESTS / "transport_helpers.py"), *args])

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip())
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if isinstance(event, dict):
                        self.events.append(event)
                self._cond.notify_all()

    def find(self, name: str, where: Callable[[dict], bool] = lambda e: True) -> list[dict]:
        with self._cond:
            return [e for e in self.events if e.get("event") == name and where(e)]

    def wait_event(self, name: str, where: Callable[[dict], bool] = lambda e: True,
                   timeout: float = 30.0, count: int = 1) -> dict:
        """The `count`-th log event called `name` matching `where`; fails after timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [e for e in self.events if e.get("event") == name and where(e)]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    tail = "\n".join(self.lines[-20:])
                    raise AssertionError(f"no {name!r} event (x{count}) within {timeout} s; "
                                         f"exit code {self.proc.poll()}; log tail:\n{tail}")
                self._cond.wait(min(left, 0.1))

    def worker_pids(self) -> dict[int, int]:
        """slot -> pid of the latest ready worker of each slot."""
        pids: dict[int, int] = {}
        for e in self.find("worker_ready"):
            pids[e["slot"]] = e["pid"]
        return pids

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stderr:
            self.proc.stderr.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


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
