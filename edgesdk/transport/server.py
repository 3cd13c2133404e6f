"""The edge server: a ROUTER frontend, a load-balancing broker and a pool of worker processes.

    server = Server(ServerConfig(bind="tcp://127.0.0.1:5555", workers=2), factory)
    server.run()          # until SIGTERM/SIGINT (or server.stop()); drains, then returns 0

The server is generic: it moves opaque frames. What a request computes is the job of a
*handler*, built in each worker process by calling the picklable `factory`::

    handler = factory()
    frames, fields = handler.handle(envelope, frames)   # fields go into the result envelope
    handler.describe()  # optional: the "bundles" map of the welcome (asked of one worker)

(edgesdk.serving builds the tail-segment handler from bundles.) A handler rejects a bad
request by raising protocol.HandlerError; any other exception becomes an `internal` error
reply and the worker keeps running.

Processes and sockets::

    devices ──DEALER──▶ ROUTER frontend ─┐  broker (main process):      ┌─ worker 0 (DEALER)
                                          │  validates envelopes,       ├─ worker 1
                                          │  answers hello/heartbeat/   │  ...
                                          │  busy itself, queues infer ─┘  ipc:// in a temp dir
                                          └─ ROUTER backend

Load balancing follows the ZeroMQ guide's LRU queue: a worker announces READY, the broker
hands a job only to an idle worker and a worker asks for more by returning its result;
no job ever waits behind a slow worker while another is idle. Requests wait in the
broker's queue, bounded by `max_queue`: beyond it the answer is `busy`, at once.

Faults. A worker's process sentinel is polled with the sockets, so a crash (even
kill -9) is seen at once: its in-flight request is answered `worker_crashed` and the slot
restarts (with a backoff if it keeps crashing). A worker that hangs `worker_timeout_s`
past its request's deadline is killed the same way. Workers die with the broker
(PR_SET_PDEATHSIG, and a parent check every second). Deadlines: the device sends the
budget it has left; the broker turns it into a local deadline at receipt, and a request
whose deadline passed is answered `expired` instead of computed. SIGTERM/SIGINT drain:
new infer requests get `shutting_down`, queued and running ones finish (up to
`drain_timeout_s`), then the workers stop and run() returns.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import math
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Protocol

import msgpack
import zmq

from ..errors import EdgeError
from . import protocol
from .auth import KeyPair, configure_server_socket, start_authenticator
from .metrics import Metrics, serve_metrics
from .protocol import Envelope, HandlerError, MalformedMessage

log = logging.getLogger("edgesdk.server")

# Backend (broker <-> worker) commands: the first frame of every internal message.
READY, DONE, FAIL, JOB, STOP = b"READY", b"DONE", b"FAIL", b"JOB", b"STOP"

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
HOUSEKEEPING_S = 0.02  # timers (queue expiry, restarts, hung workers) run this often
DRAIN_BATCH = 256  # messages read from one socket before looking at the other


class Handler(Protocol):
    def handle(self, request: Envelope, frames: Sequence[memoryview]) -> tuple[list, dict]: ...


class ServerStartError(EdgeError, RuntimeError):
    """The server could not start (a worker failed to load, the address is taken, ...)."""


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


# -- structured logs -----------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, event, then the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        body = {"ts": round(record.created, 6), "level": record.levelname.lower(),
                "event": record.getMessage()}
        body.update(getattr(record, "fields", {}))
        if record.exc_info:
            body["traceback"] = "".join(traceback.format_exception(*record.exc_info))[-4000:]
        return json.dumps(body, default=str)


def configure_logging(level: str = "info", stream=None) -> None:
    """JSON-lines logs on stderr for the edgesdk.server logger (workers inherit it)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    if log.isEnabledFor(level):
        log.log(level, event, extra={"fields": fields})


# -- the dispatcher: queue and idle workers, without I/O -----------------------------------


@dataclass
class Job:
    """An infer request inside the broker."""

    seq: int
    client: bytes  # the device's ROUTER identity
    request_id: int
    envelope: Any  # the original envelope frame, forwarded as is
    frames: list
    received: float  # broker monotonic time
    deadline: float


class Dispatcher:
    """Which job runs on which worker; LRU load balancing and a bounded queue (no I/O).

    admit() places a new job; worker_ready() is called when a worker starts or finishes
    and returns its next job; worker_lost() takes a dead worker out and returns the job it
    held. Expired queued jobs are handed back so the broker can answer them.
    """

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self.idle: deque[bytes] = deque()
        self.queue: deque[Job] = deque()
        self.running: dict[bytes, Job] = {}

    def admit(self, job: Job) -> tuple[str, bytes | None]:
        """("run", worker) to send it now, ("queued", None), or ("busy", None)."""
        if self.idle:
            worker = self.idle.popleft()
            self.running[worker] = job
            return "run", worker
        if len(self.queue) >= self.max_queue:
            return "busy", None
        self.queue.append(job)
        return "queued", None

    def worker_ready(self, worker: bytes, now: float) -> tuple[Job | None, list[Job]]:
        """The worker is free: (the job it should run now or None, expired queued jobs)."""
        self.running.pop(worker, None)
        expired = []
        while self.queue:
            job = self.queue.popleft()
            if now >= job.deadline:
                expired.append(job)
                continue
            self.running[worker] = job
            return job, expired
        if worker not in self.idle:
            self.idle.append(worker)
        return None, expired

    def finished(self, worker: bytes, seq: int) -> Job | None:
        """The job the worker just finished, if it is the one we gave it."""
        job = self.running.get(worker)
        if job is None or job.seq != seq:
            return None
        del self.running[worker]
        return job

    def worker_lost(self, worker: bytes) -> Job | None:
        with contextlib.suppress(ValueError):
            self.idle.remove(worker)
        return self.running.pop(worker, None)

    def expire(self, now: float) -> list[Job]:
        """Queued jobs whose deadline passed (removed from the queue)."""
        if not self.queue or all(now < j.deadline for j in self.queue):
            return []
        expired = [j for j in self.queue if now >= j.deadline]
        self.queue = deque(j for j in self.queue if now < j.deadline)
        return expired

    def drain_queue(self) -> list[Job]:
        jobs = list(self.queue)
        self.queue.clear()
        return jobs


def _ready_messages(sock: zmq.Socket, limit: int = DRAIN_BATCH):
    """The messages waiting on a socket the poller reported readable, at most `limit` (so
    one busy socket cannot starve the other). The first read needs no check; for the
    rest ZMQ_EVENTS is cheaper than raising zmq.Again (~10 us)."""
    try:
        yield sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
    except zmq.Again:  # a spurious wake-up
        return
    for _ in range(limit - 1):
        if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            return
        yield sock.recv_multipart(copy=False)


# -- worker processes ----------------------------------------------------------------------


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


def _pack_meta(meta: dict) -> bytes:
    return msgpack.packb(meta, use_bin_type=True)


def _reply_frames(env: Envelope, frames: Sequence = ()) -> list:
    return [protocol.pack(env), *frames]


def _payload_frame(frame: Any) -> Any:
    """A frame a handler returned, as something ZeroMQ can send (TypeError otherwise)."""
    if isinstance(frame, (bytes, memoryview, zmq.Frame)):
        return frame
    return memoryview(frame)  # bytearray, numpy arrays: anything with the buffer protocol


def _run_job(handler: Handler, message: list) -> tuple[list, dict]:
    """Run one JOB message; returns (reply frames, stats meta). Whatever the handler does
    short of killing the process, the answer is a result or an error reply."""
    meta = msgpack.unpackb(message[1].bytes, raw=False)
    env = protocol.unpack(message[2].bytes)  # validated by the broker
    started = time.monotonic()
    stats = {"job": meta["job"], "queue_ms": (started - meta["received"]) * 1e3}
    if started >= meta["deadline"]:
        over = (started - meta["deadline"]) * 1e3
        stats.update(status="error", code=protocol.EXPIRED)
        reply = protocol.error_envelope(env.id, protocol.EXPIRED, f"budget of "
                                        f"{env.budget_ms:.1f} ms ran out {over:.1f} ms before "
                                        "compute started")
        return _reply_frames(reply), stats
    try:
        out_frames, fields = handler.handle(env, [f.buffer for f in message[3:]])
        server_ms = (time.monotonic() - started) * 1e3
        reply = Envelope(protocol.RESULT, env.id, extra={
            **dict(fields or {}), "server_ms": server_ms, "queue_ms": stats["queue_ms"]})
        frames = _reply_frames(reply, [_payload_frame(f) for f in out_frames])
        stats.update(status="result", server_ms=server_ms)
        return frames, stats
    except HandlerError as exc:
        code, text = exc.code, str(exc)
    except Exception as exc:  # a handler bug must not take the worker down
        log_event("handler_exception", logging.ERROR, request=env.id,
                  error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-3000:])
        code, text = protocol.INTERNAL, f"{type(exc).__name__}: {exc}"
    stats.update(status="error", code=code)
    return _reply_frames(protocol.error_envelope(env.id, code, text)), stats


def worker_main(spec: WorkerSpec) -> None:
    """A worker process: build the handler, announce READY, run jobs until STOP."""
    _die_with_parent(spec.parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the broker, which drains
    configure_logging(spec.log_level)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.setsockopt(zmq.ROUTING_ID, spec.identity)
    sock.connect(spec.backend)
    try:
        handler = spec.factory()
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
            frames, stats = _run_job(handler, message)
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
        deadline = time.monotonic() + timeout
        for slot in self.slots:
            if slot.process is not None:
                slot.process.join(max(0.0, deadline - time.monotonic()))
        for slot in self.slots:
            if slot.process is not None and slot.process.is_alive():
                slot.process.terminate()
                slot.process.join(1.0)
                if slot.process.is_alive():
                    slot.process.kill()
                    slot.process.join(1.0)
            if slot.process is not None:
                with contextlib.suppress(Exception):
                    slot.process.close()
                slot.process = None


# -- the broker ----------------------------------------------------------------------------


class Server:
    """The broker process. See the module docstring; `run()` blocks until stopped."""

    def __init__(self, config: ServerConfig, factory: Callable[[], Any],
                 log_level: str = "info") -> None:
        config.validate()
        self.config = config
        self.factory = factory
        self.log_level = log_level
        self.metrics = Metrics()
        self.dispatcher = Dispatcher(config.max_queue)
        self.description: dict = {}
        self.endpoint: str | None = None  # the bound frontend endpoint (port resolved)
        self.metrics_address: tuple[str, int] | None = None
        self._stop = threading.Event()
        self._draining = False
        self._seq = 0
        self._ready = threading.Event()
        self._wake = 0.0  # when housekeeping is next due (monotonic)

    # -- lifecycle -------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask run() to drain and return (thread-safe; what SIGTERM does)."""
        self._stop.set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    def run(self) -> int:
        """Serve until stopped; returns 0 after a clean drain."""
        cfg = self.config
        if not is_loopback(cfg.bind) and cfg.curve is None:
            log_event("insecure_bind", logging.WARNING, bind=cfg.bind,
                      hint="no CURVE keys: anyone who reaches this address can use the "
                           "server and read the traffic; use --curve-secret and --allow")
        restore = self._install_signals()
        tmpdir = tempfile.mkdtemp(prefix="edgesdk-serve-")
        ctx = zmq.Context()
        auth = None
        metrics_server = None
        self.pool = WorkerPool(cfg.workers, f"ipc://{tmpdir}/backend", self.factory,
                               self.log_level)
        try:
            self.backend = ctx.socket(zmq.ROUTER)
            self.backend.setsockopt(zmq.LINGER, 0)
            self.backend.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a dead worker is an error
            self.backend.bind(self.pool.backend)
            if cfg.curve is not None:
                auth = start_authenticator(ctx, cfg.allow_dir)
            self.frontend = self._bind_frontend(ctx)
            try:
                self._start_pool()
            except ServerStartError:
                if not self._stop.is_set():
                    raise
                log_event("stopped", during="startup")  # SIGTERM while starting: not a failure
                return 0
            if cfg.metrics_port is not None:
                metrics_server = serve_metrics(self.metrics, cfg.metrics_host, cfg.metrics_port)
                self.metrics_address = metrics_server.server_address[:2]
            log_event("ready", endpoint=self.endpoint, workers=cfg.workers,
                      max_queue=cfg.max_queue, curve=cfg.curve is not None,
                      metrics=(f"http://{self.metrics_address[0]}:{self.metrics_address[1]}"
                               "/metrics" if self.metrics_address else None),
                      pid=os.getpid())
            self.metrics.queue_length.track(lambda: len(self.dispatcher.queue))
            self.metrics.workers_alive.track(self.pool.alive)
            self.metrics.workers_busy.track(lambda: len(self.dispatcher.running))
            self._ready.set()
            self._loop()
            log_event("stopped", served=int(self.metrics.replies.value(kind="result")))
            return 0
        finally:
            self._shutdown_workers()
            for sock in (getattr(self, "frontend", None), getattr(self, "backend", None)):
                if sock is not None:
                    sock.close(linger=0)
            if auth is not None:
                auth.stop()
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            ctx.term()
            shutil.rmtree(tmpdir, ignore_errors=True)
            restore()

    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

        def on_signal(signum: int, _frame: object) -> None:
            log_event("signal", signal=signal.Signals(signum).name, action="drain")
            self._stop.set()

        for sig in previous:
            signal.signal(sig, on_signal)

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    def _bind_frontend(self, ctx: zmq.Context) -> zmq.Socket:
        cfg = self.config
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, cfg.max_frame_bytes)
        sock.setsockopt(zmq.RCVHWM, 1000)
        sock.setsockopt(zmq.SNDHWM, 1000)
        sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
        if cfg.curve is not None:
            configure_server_socket(sock, cfg.curve)
        try:
            sock.bind(cfg.bind)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise ServerStartError(f"cannot bind {cfg.bind}: {exc}") from None
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return sock

    def _start_pool(self) -> None:
        """Start the workers and wait until every one is READY. The first worker starts
        alone and describes the handler (e.g. measures the tail profiles) on an idle
        machine; the others start together after it."""
        first, rest = self.pool.slots[0], self.pool.slots[1:]
        self.pool.start(first, describe=True)
        self._await_ready([first])
        for slot in rest:
            self.pool.start(slot)
        self._await_ready(rest)

    def _await_ready(self, slots: list[_Slot]) -> None:
        deadline = time.monotonic() + self.config.startup_timeout_s
        waiting = {s.identity: s for s in slots}
        poller = zmq.Poller()
        poller.register(self.backend, zmq.POLLIN)
        for s in slots:
            poller.register(s.process.sentinel, zmq.POLLIN)
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServerStartError(f"{len(waiting)} workers not ready after "
                                       f"{self.config.startup_timeout_s:.0f} s")
            if self._stop.is_set():
                raise ServerStartError("stopped while starting")
            events = dict(poller.poll(min(200, math.ceil(left * 1e3))))
            if self.backend in events:
                message = self.backend.recv_multipart()
                identity, command = message[0], message[1]
                meta = msgpack.unpackb(message[2], raw=False) if len(message) > 2 else {}
                if command == FAIL:
                    raise ServerStartError(f"worker {identity.decode()} failed to start: "
                                           f"{meta.get('error')}")
                slot = waiting.pop(identity, None)
                if command == READY and slot is not None:
                    self._on_ready(slot, meta, time.monotonic())
            for s in slots:
                if s.process is not None and s.process.sentinel in events:
                    code = self.pool.reap(s)
                    raise ServerStartError(f"worker {s.index} exited with code {code} while "
                                           "starting")

    # -- the loop --------------------------------------------------------------------------
    def _loop(self) -> None:
        cfg = self.config
        drain_deadline = math.inf
        while True:
            now = time.monotonic()
            if self._stop.is_set() and not self._draining:
                self._draining = True
                drain_deadline = now + cfg.drain_timeout_s
                log_event("draining", queued=len(self.dispatcher.queue),
                          running=len(self.dispatcher.running), timeout_s=cfg.drain_timeout_s)
            if self._draining:
                if not self.dispatcher.queue and not self.dispatcher.running:
                    return
                if now >= drain_deadline:
                    self._abandon_all("drain timeout: the server stopped before computing it")
                    return
            if now >= self._wake:
                self._wake = self._housekeeping(now)
            timeout_ms = max(0, math.ceil((self._wake - now) * 1e3))
            events = dict(self._poller().poll(timeout_ms))
            # Backend first: a result that arrived just before its worker died still counts.
            if self.backend in events:
                self._guard(self._drain_backend)
            for fd in self.pool.sentinels():
                if fd in events:
                    self._guard(self._on_worker_exit, self.pool.by_sentinel(fd))
            if self.frontend in events:
                self._guard(self._drain_frontend)

    def _poller(self) -> zmq.Poller:
        """The poller over both sockets and every worker's sentinel, rebuilt only when the
        set of worker processes changes (it is on the hot path)."""
        sentinels = tuple(self.pool.sentinels())
        if getattr(self, "_poller_key", None) != sentinels:
            poller = zmq.Poller()
            poller.register(self.frontend, zmq.POLLIN)
            poller.register(self.backend, zmq.POLLIN)
            for fd in sentinels:
                poller.register(fd, zmq.POLLIN)
            self._poller_key, self._cached_poller = sentinels, poller
        return self._cached_poller

    def _guard(self, fn: Callable, *args: Any) -> None:
        """The broker never dies of one bad event: log it and carry on."""
        try:
            fn(*args)
        except Exception as exc:
            log_event("broker_error", logging.ERROR, error=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc()[-3000:])

    def _housekeeping(self, now: float) -> float:
        """Expire queued jobs, restart workers that are due, kill hung ones; returns when
        it is next due (at most HOUSEKEEPING_S away: it is off the per-request path)."""
        for job in self.dispatcher.expire(now):
            self._reply_expired(job, now)
        for slot in self.pool.slots:
            if slot.process is None and slot.restart_at is not None and now >= slot.restart_at:
                if self._draining:
                    slot.restart_at = None
                    continue
                self.pool.start(slot)
                self.metrics.worker_restarts.inc()
                log_event("worker_restarting", slot=slot.index, pid=slot.pid,
                          generation=slot.generation)
        # A worker still computing long past its job's deadline is hung: kill it; its
        # sentinel then reports the exit and the job gets an error reply.
        for worker, job in list(self.dispatcher.running.items()):
            if now > job.deadline + self.config.worker_timeout_s:
                slot = self.pool.by_identity(worker)
                if slot is not None and slot.process is not None and slot.kill_reason is None:
                    slot.kill_reason = protocol.WORKER_TIMEOUT
                    log_event("worker_hung", logging.WARNING, slot=slot.index, pid=slot.pid,
                              request=job.request_id)
                    slot.process.kill()
        return min([s.restart_at for s in self.pool.slots if s.restart_at is not None]
                   + [j.deadline for j in islice(self.dispatcher.queue, 8)]
                   + [now + HOUSEKEEPING_S])

    # -- frontend --------------------------------------------------------------------------
    def _drain_frontend(self) -> None:
        for message in _ready_messages(self.frontend):
            self._on_request(message, time.monotonic())

    def _send(self, client: bytes, frames: list) -> None:
        with contextlib.suppress(zmq.ZMQError):  # a device that went away
            self.frontend.send_multipart([client, *frames], copy=False)

    def _reply(self, client: bytes, env: Envelope, frames: Sequence = ()) -> None:
        self.metrics.replies.inc(kind=env.kind)
        if env.kind == protocol.ERROR:
            self.metrics.errors.inc(code=env.extra["error"])
        self._send(client, _reply_frames(env, frames))

    def _malformed(self, client: bytes, frame: Any, text: str,
                   code: str = protocol.MALFORMED) -> None:
        self.metrics.malformed.inc()
        request_id = protocol.peek_id(frame) if frame is not None else 0
        log_event("malformed", logging.DEBUG, code=code, request=request_id, error=text[:200])
        self._reply(client, protocol.error_envelope(request_id, code, text))

    def _load(self) -> dict:
        return {"queue": len(self.dispatcher.queue), "max_queue": self.config.max_queue,
                "workers": self.config.workers, "workers_alive": self.pool.alive(),
                "workers_busy": len(self.dispatcher.running), "draining": self._draining}

    def _on_request(self, message: list, now: float) -> None:
        client = message[0].bytes
        if len(message) < 2:
            self._malformed(client, None, "message has no envelope frame")
            return
        if len(message) - 1 > self.config.max_frames:
            self._malformed(client, message[1], f"message has {len(message) - 1} frames, "
                            f"limit {self.config.max_frames}", protocol.TOO_LARGE)
            return
        try:
            env = protocol.unpack(message[1].bytes)
            if env.version != protocol.VERSION:
                self._malformed(client, message[1], f"protocol version {env.version}; this "
                                f"server speaks {protocol.VERSION}", protocol.VERSION_MISMATCH)
                return
            protocol.check_request(env)
        except MalformedMessage as exc:
            self._malformed(client, message[1], str(exc))
            return
        self.metrics.requests.inc(kind=env.kind)
        if env.kind == protocol.HELLO:
            self._reply(client, Envelope(protocol.WELCOME, env.id, extra={
                "server_version": protocol.VERSION, "server": self.config.name,
                "bundles": self.description, "load": self._load()}))
        elif env.kind == protocol.HEARTBEAT:
            self._reply(client, Envelope(protocol.HEARTBEAT, env.id, extra={"load": self._load()}))
        elif self._draining:
            self._reply(client, protocol.error_envelope(
                env.id, protocol.SHUTTING_DOWN, "the server is shutting down"))
        else:
            self._seq += 1
            job = Job(self._seq, client, env.id, message[1], list(message[2:]), now,
                      now + env.budget_ms / 1e3)
            verdict, worker = self.dispatcher.admit(job)
            if verdict == "run":
                self._dispatch(worker, job)
            elif verdict == "busy":
                self._reply(client, Envelope(protocol.BUSY, env.id, extra={
                    "queue": len(self.dispatcher.queue), "max_queue": self.config.max_queue}))

    # -- backend ---------------------------------------------------------------------------
    def _dispatch(self, worker: bytes, job: Job) -> None:
        meta = _pack_meta({"job": job.seq, "received": job.received, "deadline": job.deadline})
        try:
            self.backend.send_multipart([worker, JOB, meta, job.envelope, *job.frames],
                                        copy=False)
        except zmq.ZMQError:
            # The worker vanished between READY and now; its sentinel will fire. Answer the
            # job as a crash so nothing is lost silently.
            if self.dispatcher.finished(worker, job.seq) is job:
                self._reply_error(job, protocol.WORKER_CRASHED, "its worker disappeared")

    def _drain_backend(self) -> None:
        for message in _ready_messages(self.backend):
            self._on_worker_message(message, time.monotonic())

    def _on_ready(self, slot: _Slot, meta: dict, now: float) -> None:
        slot.ready = True
        slot.pid = meta.get("pid", slot.pid)
        if meta.get("describe") is not None:
            self.description = meta["describe"]
        log_event("worker_ready", slot=slot.index, pid=slot.pid, generation=slot.generation)
        self._worker_free(slot.identity, now)

    def _worker_free(self, worker: bytes, now: float) -> None:
        job, expired = self.dispatcher.worker_ready(worker, now)
        for old in expired:
            self._reply_expired(old, now)
        if job is not None:
            self._dispatch(worker, job)

    def _on_worker_message(self, message: list, now: float) -> None:
        identity, command = message[0].bytes, message[1].bytes
        slot = self.pool.by_identity(identity)
        if slot is None:
            return  # from a previous generation of a restarted worker
        if command == READY:
            meta = msgpack.unpackb(message[2].bytes, raw=False)
            self._on_ready(slot, meta, now)
            return
        if command == FAIL:
            meta = msgpack.unpackb(message[2].bytes, raw=False)
            log_event("worker_failed", logging.ERROR, slot=slot.index, error=meta.get("error"))
            return  # its exit follows; the sentinel path restarts it with backoff
        if command != DONE:
            return
        stats = msgpack.unpackb(message[2].bytes, raw=False)
        job = self.dispatcher.finished(identity, stats.get("job"))
        if job is not None:
            self._send(job.client, list(message[3:]))
            self._count_done(job, stats, now)
        self._worker_free(identity, now)

    def _count_done(self, job: Job, stats: dict, now: float) -> None:
        status = stats.get("status")
        self.metrics.replies.inc(kind=protocol.RESULT if status == "result" else protocol.ERROR)
        if status == "result":
            self.metrics.server_seconds.observe(stats.get("server_ms", 0.0) / 1e3)
        else:
            self.metrics.errors.inc(code=str(stats.get("code")))
        self.metrics.queue_seconds.observe(stats.get("queue_ms", 0.0) / 1e3)
        self.metrics.request_seconds.observe(now - job.received)

    def _on_worker_exit(self, slot: _Slot | None) -> None:
        if slot is None or slot.process is None:
            return
        self._drain_backend()  # a result sent just before the exit is still delivered
        reason = slot.kill_reason or protocol.WORKER_CRASHED
        code = self.pool.reap(slot)
        job = self.dispatcher.worker_lost(slot.identity)
        if job is not None:
            what = ("hung past its deadline and was killed" if reason == protocol.WORKER_TIMEOUT
                    else f"crashed (exit code {code})")
            self._reply_error(job, reason, f"the worker computing it {what}; it was restarted")
        if self._draining:
            log_event("worker_exited", slot=slot.index, exit_code=code, during="drain")
            return
        delay = self.pool.schedule_restart(slot, time.monotonic())
        self._wake = min(self._wake, slot.restart_at)
        log_event("worker_crashed", logging.WARNING, slot=slot.index, exit_code=code,
                  reason=reason, lost_request=job.request_id if job else None,
                  restart_in_s=round(delay, 3))

    # -- replies to jobs -------------------------------------------------------------------
    def _reply_error(self, job: Job, code: str, text: str) -> None:
        self._reply(job.client, protocol.error_envelope(job.request_id, code, text))

    def _reply_expired(self, job: Job, now: float) -> None:
        waited = (now - job.received) * 1e3
        self._reply_error(job, protocol.EXPIRED, f"its budget ran out after {waited:.1f} ms "
                          "in the queue, before compute")

    def _abandon_all(self, text: str) -> None:
        for job in self.dispatcher.drain_queue():
            self._reply_error(job, protocol.SHUTTING_DOWN, text)
        for worker in list(self.dispatcher.running):
            job = self.dispatcher.worker_lost(worker)
            if job is not None:
                self._reply_error(job, protocol.SHUTTING_DOWN, text)

    def _shutdown_workers(self) -> None:
        pool = getattr(self, "pool", None)
        if pool is None:
            return
        for slot in pool.slots:
            slot.restart_at = None
            if slot.process is not None and slot.ready:
                with contextlib.suppress(zmq.ZMQError, AttributeError):
                    self.backend.send_multipart([slot.identity, STOP], flags=zmq.NOBLOCK)
        pool.stop_all()


__all__ = ["Dispatcher", "Handler", "Job", "Server", "ServerConfig", "ServerStartError",
           "WorkerSpec", "configure_logging", "is_loopback", "log_event", "worker_main"]
