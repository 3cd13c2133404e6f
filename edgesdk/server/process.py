"""`edgesdk serve` as a child process: start it, learn its endpoint, always end it.

The demo, the end-to-end benchmark and the tests run the edge server the way a user
does, as its own process. `ServerProcess` reads the server's JSON log lines (stderr) on a
thread, so the pipe never fills, waits for the "ready" event to learn the bound endpoint
(bind to port * and let the OS pick), and in `__exit__` always ends it (SIGTERM to drain,
SIGKILL if that hangs); the workers die with it (PR_SET_PDEATHSIG). With
`new_group=True` the server leads its own process group, as under systemd or as a
terminal's foreground job, and `terminate(group=True)` signals the whole group at once
(what systemd's default KillMode and Ctrl-C do): the server still drains, because its
workers ignore SIGTERM and SIGINT and are stopped by the broker.

    with ServerProcess.serve([bundle_dir], "--workers", "2") as server:
        engine = Engine(bundle_dir, server=server.endpoint)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..errors import ServerStartError


def module_command(module: str, *args: str) -> list[str]:
    """`python -m MODULE ARGS...` that runs the edgesdk this process imported.

    `python -m` puts the child's working directory first on sys.path, so a child started
    in a source checkout would import the checkout's edgesdk, which has no compiled
    extension, instead of the installed one. The child drops the working directory and,
    unless it is already on the path (an installed package), puts this package's root
    where it was.
    """
    root = str(Path(__file__).resolve().parents[2])
    boot = ("import runpy, sys\n"
            "if sys.path[:1] == ['']: del sys.path[0]\n"
            f"if {root!r} not in sys.path: sys.path.insert(0, {root!r})\n"
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")
    return [sys.executable, "-c", boot, *args]


class ServerProcess:
    """A server subprocess with its parsed log; a context manager that always ends it.

    cmd: the command line; it must log JSON lines with a "ready" event carrying
    "endpoint" (edgesdk.transport.broker does). env/cwd: for the child. new_group: start
    it in a new session, so it leads its own process group (pgid == pid) and a signal to
    the group reaches it and its workers together.
    """

    def __init__(self, cmd: Sequence[str], ready_timeout: float = 60.0,
                 env: Mapping[str, str] | None = None, cwd: str | None = None,
                 new_group: bool = False) -> None:
        self.cmd = list(cmd)
        self.events: list[dict] = []
        self.lines: list[str] = []
        self.new_group = new_group
        # how long leaving a `with` block waits for the drain (in-flight requests finish)
        self.exit_timeout_s = 5.0
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, env=dict(env) if env is not None else None,
                                     cwd=cwd, start_new_session=new_group)
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
    def serve(cls, bundles: Sequence[str | os.PathLike], *args: str,
              bind: str = "tcp://127.0.0.1:*", **kw) -> ServerProcess:
        """`python -m edgesdk serve BUNDLE... --bind BIND ARGS...`."""
        return cls(module_command("edgesdk", "serve", *(str(Path(b)) for b in bundles),
                                  "--bind", bind, *args), **kw)

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
        """The `count`-th log event called `name` matching `where`; ServerStartError (with
        the log's tail) after `timeout` or when the server exits first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [e for e in self.events if e.get("event") == name and where(e)]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    tail = "\n".join(self.lines[-20:])
                    raise ServerStartError(f"no {name!r} event (x{count}) within {timeout} s; "
                                       f"exit code {self.proc.poll()}; log tail:\n{tail}")
                self._cond.wait(min(left, 0.1))

    def worker_pids(self) -> dict[int, int]:
        """slot -> pid of the latest ready worker of each slot."""
        return {e["slot"]: e["pid"] for e in self.find("worker_ready")}

    def signal_group(self, sig: int = signal.SIGTERM) -> None:
        """Send `sig` to the server's whole process group (needs new_group=True): what
        systemd's default KillMode=control-group does on stop, and Ctrl-C in a terminal."""
        if not self.new_group:
            raise RuntimeError("the server shares this process's group; start it with "
                               "new_group=True to signal its group")
        if self.proc.poll() is None:  # the leader not yet reaped: its pgid is still its own
            os.killpg(self.proc.pid, sig)

    def terminate(self, timeout: float = 20.0, group: bool = False) -> int:
        """SIGTERM (the server drains) and wait; returns the exit code. group: to the
        whole process group (new_group=True), not only the broker."""
        if self.proc.poll() is None:
            if group:
                self.signal_group(signal.SIGTERM)
            else:
                self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            if self.new_group:  # the broker and whatever it started, in one go
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stderr:
            self.proc.stderr.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        # SIGTERM first: a drained server removes its ipc:// directory; SIGKILL cannot.
        # When the block already failed, a server slow to drain is killed without a second
        # error hiding the first.
        with contextlib.suppress(*((subprocess.TimeoutExpired,) if exc[0] else ())):
            self.terminate(timeout=self.exit_timeout_s)


__all__ = ["ServerProcess", "ServerStartError", "module_command"]
