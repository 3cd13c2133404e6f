"""The server's worker processes: each builds a handler and runs the jobs the broker sends.

    pool = WorkerPool(2, "ipc:///tmp/x/backend", factory, log_level="info")
    pool.start(pool.slots[0], describe=True)   # spawns worker_main(WorkerSpec(...))

A worker connects a DEALER socket to the broker's ROUTER backend, announces READY (with
the handler's description when asked), and answers every JOB with DONE: a result or an
error reply, whatever the handler does short of killing the process. It dies with the
broker (PR_SET_PDEATHSIG, and a parent check every second). The pool starts, watches and
restarts the processes; the broker (broker.py) decides when.

Signals. A worker ignores SIGTERM and SIGINT: it is stopped by the broker's drain (STOP
once the queue is empty), or killed. A stop signal sent to the whole process group
(systemd's default KillMode=control-group, Ctrl-C in a terminal) reaches the workers at
the same moment as the broker; if it killed them, the running requests would end
`worker_crashed` and the queued ones would never be computed. The pool spawns each worker
with both signals blocked until it ignores them, so a group signal during its start-up
(imports, loading models) cannot kill it either.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack
import zmq

from ..errors import HandlerError
from . import protocol
from .logs import configure_logging, log_event
from .protocol import Envelope

# Backend (broker <-> worker) commands: the first frame of every internal message.
READY, DONE, FAIL, JOB, STOP = b"READY", b"DONE", b"FAIL", b"JOB", b"STOP"


class Handler(Protocol):
    """What a worker runs. A handler may also have handle_batch(requests, payloads): one
    (frames, fields) or exception per request, computed together (see _compute)."""

    def handle(self, request: Envelope, frames: Sequence[memoryview]) -> tuple[list, dict]: ...


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs; pickled to it by the spawn start method."""

    backend: str
    identity: bytes
    factory: Callable[[], Any]
    parent_pid: int
    describe: bool
    log_level: str


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when the broker dies (kill -9 included)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _ignore_stop_signals() -> None:
    """Ignore SIGTERM and SIGINT, then unblock them (the pool spawns workers with them
    blocked; a pending one is discarded once ignored)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def _stop_signals_blocked():
    """Spawn a child with SIGTERM and SIGINT blocked from its first instruction.

    A child inherits the signal mask of the thread that starts it (across fork and exec),
    and worker_main ignores both signals before unblocking them, so a group signal that
    arrives while the worker is still starting (imports, loading models) stays pending and
    is then discarded instead of killing it. In this process only the calling thread
    blocks them, for the few milliseconds of the spawn: a stop signal arriving meanwhile
    is handled by another thread or stays pending until the mask is restored, never lost.
    The resource tracker is started first, because starting it unblocks both signals."""
    from multiprocessing import resource_tracker

    with contextlib.suppress(Exception):  # spawn starts it anyway; this only orders it
        resource_tracker.ensure_running()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _pack_meta(meta: dict) -> bytes:
    return msgpack.packb(meta, use_bin_type=True)


def _reply_frames(env: Envelope, frames: Sequence = ()) -> list:
    return [protocol.pack(env), *frames]


def _payload_frame(frame: Any) -> Any:
    """A frame a handler returned, as something ZeroMQ can send (TypeError otherwise)."""
    if isinstance(frame, (bytes, memoryview, zmq.Frame)):
        return frame
    return memoryview(frame)  # bytearray, numpy arrays: anything with the buffer protocol


def _job_frames(meta: dict, frames: list) -> list[tuple[dict, list]]:
    """A JOB message's jobs: [(their meta, [envelope frame, payload frames...])]."""
    jobs, at = [], 0
    for job in meta["jobs"]:
        n = int(job["frames"])
        jobs.append((job, frames[at:at + n]))
        at += n
    return jobs


def _result(env: Envelope, out_frames: Sequence, fields: dict | None, server_ms: float,
            queue_ms: float) -> list:
    reply = Envelope(protocol.RESULT, env.id, extra={
        **dict(fields or {}), "server_ms": server_ms, "queue_ms": queue_ms})
    return _reply_frames(reply, [_payload_frame(f) for f in out_frames])


def _failure(env: Envelope, exc: BaseException) -> tuple[list, str]:
    """The error reply for a handler's exception (HandlerError: its code; any other: a
    bug, `internal`, logged) and its code."""
    if isinstance(exc, HandlerError):
        code, text = exc.code, str(exc)
    else:
        log_event("handler_exception", logging.ERROR, request=env.id,
                  error=f"{type(exc).__name__}: {exc}",
                  traceback="".join(traceback.format_exception(exc))[-3000:])
        code, text = protocol.INTERNAL, f"{type(exc).__name__}: {exc}"
    return _reply_frames(protocol.error_envelope(env.id, code, text)), code


def _compute(handler: Handler, envs: list[Envelope], payloads: list[list]) -> list:
    """Each request's (frames, fields) or the exception it raised. Several requests go
    to the handler's handle_batch when it has one (the broker batches only keys the
    handler said it batches), else one by one."""
    batched = getattr(handler, "handle_batch", None)
    if len(envs) > 1 and batched is not None:
        try:
            return list(batched(envs, payloads))
        except Exception as exc:  # a bug in the batch path: every member answers it
            return [exc] * len(envs)
    answers: list = []
    for env, frames in zip(envs, payloads):
        try:
            answers.append(handler.handle(env, frames))
        except Exception as exc:
            answers.append(exc)
    return answers


def _run_batch(handler: Handler, message: list) -> tuple[list, dict]:
    """Run one JOB message (one or more requests computed together); returns (every
    reply's frames, back to back; stats). Whatever the handler does short of killing the
    process, each request gets a result or an error reply. stats: {"batch": the first
    job's number, "batch_ms": the compute, "replies": [{"job", "status", "code",
    "queue_ms", "server_ms", "frames": how many of the frames}]}."""
    meta = msgpack.unpackb(message[1].bytes, raw=False)
    started = time.monotonic()
    replies: list[tuple[dict, list]] = []
    live = []  # (stats, envelope, payload buffers) of the requests still in time
    for job, frames in _job_frames(meta, message[2:]):
        env = protocol.unpack(frames[0].bytes)  # validated by the broker
        stats = {"job": job["job"], "queue_ms": (started - job["received"]) * 1e3}
        if started >= job["deadline"]:
            over = (started - job["deadline"]) * 1e3
            stats.update(status="error", code=protocol.EXPIRED)
            replies.append((stats, _reply_frames(protocol.error_envelope(
                env.id, protocol.EXPIRED, f"budget of {env.budget_ms:.1f} ms ran out "
                f"{over:.1f} ms before compute started"))))
        else:
            live.append((stats, env, [f.buffer for f in frames[1:]]))
    answers = _compute(handler, [e for _, e, _ in live], [p for _, _, p in live])
    server_ms = (time.monotonic() - started) * 1e3
    for (stats, env, _), answer in zip(live, answers):
        try:
            if isinstance(answer, BaseException):
                raise answer
            out_frames, fields = answer
            frames = _result(env, out_frames, fields, server_ms, stats["queue_ms"])
            stats.update(status="result", server_ms=server_ms)
        except Exception as exc:  # the handler's error, or frames it returned unsendable
            frames, code = _failure(env, exc)
            stats.update(status="error", code=code)
        replies.append((stats, frames))
    for stats, frames in replies:
        stats["frames"] = len(frames)
    out = [f for _, frames in replies for f in frames]
    return out, {"batch": meta["jobs"][0]["job"], "batch_ms": server_ms,
                 "replies": [stats for stats, _ in replies]}


def worker_main(spec: WorkerSpec) -> None:
    """A worker process: build the handler, announce READY, run jobs until STOP."""
    _die_with_parent(spec.parent_pid)
    _ignore_stop_signals()  # the broker drains on SIGTERM/SIGINT and stops us (see above)
    configure_logging(spec.log_level)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.setsockopt(zmq.ROUTING_ID, spec.identity)
    sock.connect(spec.backend)
    try:
        handler = spec.factory()
        # again: a handler may have installed its own (ray.init exits on SIGTERM), and a
        # group stop must leave the broker's drain to finish the running requests
        _ignore_stop_signals()
        description = None
        if spec.describe and hasattr(handler, "describe"):
            description = handler.describe()
    except BaseException as exc:
        sock.send_multipart([FAIL, _pack_meta({"error": f"{type(exc).__name__}: {exc}"})])
        sock.close()
        ctx.term()
        raise SystemExit(1) from None
    sock.send_multipart([READY, _pack_meta({"pid": os.getpid(), "describe": description})])
    sock.setsockopt(zmq.RCVTIMEO, 1000)
    while True:
        try:
            message = sock.recv_multipart(copy=False)
        except zmq.Again:  # idle for a second: check that the broker is still there
            if os.getppid() != spec.parent_pid:
                break
            continue
        command = message[0].bytes
        if command == STOP:
            break
        if command != JOB or len(message) < 3:
            continue
        try:
            frames, stats = _run_batch(handler, message)
        except Exception as exc:  # a broken JOB message: a bug, but never a dead worker
            log_event("job_failed", logging.ERROR, error=f"{type(exc).__name__}: {exc}")
            continue  # the broker answers the job when it times out the worker
        sock.send_multipart([DONE, _pack_meta(stats), *frames], copy=False)
    sock.close()
    ctx.term()


@dataclass
class _Slot:
    """One place in the pool; its process is replaced on every restart."""

    index: int
    generation: int = 0
    process: Any = None
    identity: bytes = b""
    ready: bool = False
    pid: int | None = None
    crashes: deque = field(default_factory=deque)  # times of recent crashes
    restart_at: float | None = None
    kill_reason: str | None = None  # set when the broker killed it (hung worker)


class WorkerPool:
    """Starts, watches and restarts the worker processes (spawn start method)."""

    def __init__(self, size: int, backend: str, factory: Callable[[], Any],
                 log_level: str) -> None:
        self.backend = backend
        self.factory = factory
        self.log_level = log_level
        self.slots = [_Slot(i) for i in range(size)]
        self._mp = multiprocessing.get_context("spawn")

    def start(self, slot: _Slot, describe: bool = False) -> None:
        slot.generation += 1
        slot.identity = f"w{slot.index}.{slot.generation}".encode()
        slot.ready = False
        slot.restart_at = None
        slot.kill_reason = None
        spec = WorkerSpec(self.backend, slot.identity, self.factory, os.getpid(), describe,
                          self.log_level)
        slot.process = self._mp.Process(target=worker_main, args=(spec,), daemon=True,
                                        name=f"edgesdk-worker-{slot.index}")
        with _stop_signals_blocked():
            slot.process.start()
        slot.pid = slot.process.pid

    def by_identity(self, identity: bytes) -> _Slot | None:
        for slot in self.slots:
            if slot.identity == identity and slot.process is not None:
                return slot
        return None

    def by_sentinel(self, fd: int) -> _Slot | None:
        for slot in self.slots:
            if slot.process is not None and slot.process.sentinel == fd:
                return slot
        return None

    def sentinels(self) -> list[int]:
        return [s.process.sentinel for s in self.slots if s.process is not None]

    def reap(self, slot: _Slot) -> int | None:
        """Collect a dead slot's process; returns its exit code."""
        proc = slot.process
        proc.join(0.5)
        code = proc.exitcode
        with contextlib.suppress(Exception):
            proc.close()
        slot.process = None
        slot.ready = False
        return code

    def schedule_restart(self, slot: _Slot, now: float) -> float:
        """Back off a slot that keeps crashing: 0.05 s doubling per crash in the last
        30 s, at most 5 s. Returns the delay."""
        slot.crashes.append(now)
        while slot.crashes and now - slot.crashes[0] > 30.0:
            slot.crashes.popleft()
        delay = min(5.0, 0.05 * 2 ** (len(slot.crashes) - 1))
        slot.restart_at = now + delay
        return delay

    def alive(self) -> int:
        return sum(1 for s in self.slots if s.ready)

    def stop_all(self, timeout: float = 3.0) -> None:
        """Wait up to `timeout` for the ready workers (sent STOP) to exit, then kill what
        is left: workers ignore SIGTERM, and one still starting has nothing to finish."""
        deadline = time.monotonic() + timeout
        for slot in self.slots:
            if slot.process is not None and slot.ready:
                slot.process.join(max(0.0, deadline - time.monotonic()))
        for slot in self.slots:
            if slot.process is not None and slot.process.is_alive():
                slot.process.kill()
                slot.process.join(1.0)
            if slot.process is not None:
                with contextlib.suppress(Exception):
                    slot.process.close()
                slot.process = None


__all__ = ["DONE", "FAIL", "JOB", "READY", "STOP", "Handler", "WorkerPool", "WorkerSpec",
           "worker_main"]
