"""The edge server: a ROUTER frontend, a load-balancing broker and a pool of worker processes.

    server = Server(ServerConfig(bind="tcp://127.0.0.1:5555", workers=2), factory)
    server.run()          # until SIGTERM/SIGINT (or server.stop()); drains, then returns 0

The server is generic: it moves opaque frames. What a request computes is the job of a
*handler*, built in each worker process by calling the picklable `factory`::

    handler = factory()
    frames, fields = handler.handle(envelope, frames)   # fields go into the result envelope
    handler.describe()  # optional: the "bundles" map of the welcome (asked of one worker)
    factory.payload_limits()  # optional, in the broker: {bundle: {cut: frame size limits}}

(edgesdk.server builds the tail-segment handler from bundles.) With payload limits the
broker refuses an infer request whose bundle or cut is unknown, or whose payload frames
are more or larger than its cut takes (protocol.check_payload), before it is queued: such
a request never reaches a worker, and the frontend's ZMQ_MAXMSGSIZE defaults to the
largest legal frame (config.frame_limit). A handler rejects a bad
request by raising edgesdk.errors.HandlerError; any other exception becomes an `internal`
error reply and the worker keeps running. This module is the broker; the workers are in
worker.py, the queue in dispatch.py, the configuration in config.py, the logs in logs.py.

Processes and sockets::

    devices ──DEALER──▶ ROUTER frontend ─┐  broker (main process):      ┌─ worker 0 (DEALER)
                                          │  validates envelopes,       ├─ worker 1
                                          │  answers hello/heartbeat/   │  ...
                                          │  busy itself, queues infer ─┘  ipc:// in a temp dir
                                          └─ ROUTER backend

Load balancing follows the ZeroMQ guide's LRU queue: a worker announces READY, the broker
hands a job only to an idle worker and a worker asks for more by returning its result;
no job ever waits behind a slow worker while another is idle. Requests wait in the
broker's queue, bounded by `max_queue`: beyond it the answer is `busy`, at once, with
when a worker should be free. The order is the scheduler's (dispatch.py): by default
earliest deadline first, a request that cannot finish within its budget refused at once,
and a fair share of the queue per device.

Faults. A worker's process sentinel is polled with the sockets, so a crash (even
kill -9) is seen at once: its in-flight request is answered `worker_crashed` and the slot
restarts (with a backoff if it keeps crashing). A worker that hangs `worker_timeout_s`
past its request's deadline is killed the same way. Workers die with the broker
(PR_SET_PDEATHSIG, and a parent check every second). Deadlines: the device sends the
budget it has left; the broker turns it into a local deadline at receipt, and a request
that cannot make it (its deadline passed, or under "edf" its expected compute no longer
fits) is answered `expired` instead of computed. SIGTERM/SIGINT drain:
new infer requests get `shutting_down`, queued and running ones finish (up to
`drain_timeout_s`), then the workers stop and run() returns.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import zmq

from ..errors import MalformedMessage, ServerStartError
from . import protocol, route
from .auth import configure_server_socket, start_authenticator
from .config import (
    ServerConfig,
    frame_limit,
    is_loopback,
    largest_frame,
    largest_request,
    memory_bound,
)
from .dispatch import Dispatcher, Job, ServiceTimes
from .forward import Forward, Forwarder, Outcome
from .logs import log_event
from .metrics import Metrics, serve_metrics
from .protocol import Envelope
from .worker import DONE, FAIL, JOB, READY, STOP, WorkerPool, _pack_meta, _reply_frames, _Slot

# A device's share of a full queue by its request's "task" (the Engine sends its own):
# latency-sensitive requests weigh double (transport.dispatch)
TASK_WEIGHTS = {"latency": 2.0, "balanced": 1.0, "accuracy": 1.0}
HOUSEKEEPING_S = 0.02  # timers (queue expiry, restarts, hung workers) run this often
# A chained request's next stage gets the budget left minus a reserve (RELAY_MARGIN_S and
# RELAY_MARGIN_SHARE of what is left), and this stage gives up on it half the reserve
# before its own deadline: a failure further down reaches the requester, which started its
# clock a transit earlier, before it stops waiting (on a link of up to ~half the reserve)
RELAY_MARGIN_S = 0.002
RELAY_MARGIN_SHARE = 0.05
DRAIN_BATCH = 256  # messages read from one socket before looking at the other


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


def _batchable(description: dict) -> set[tuple]:
    """The (bundle, cut) keys the handler runs in batches: its description's cuts with
    "batch": true (edgesdk.server's tail handler says so of every cut whose tail takes a
    batch dimension)."""
    keys = set()
    for bundle, entry in (description or {}).items():
        for cut in (entry.get("cuts") or ()) if isinstance(entry, dict) else ():
            if isinstance(cut, dict) and cut.get("batch") is True:
                keys.add((bundle, str(cut.get("id"))))
    return keys


def _task_weight(task: Any) -> float:
    return TASK_WEIGHTS.get(task, 1.0) if isinstance(task, str) else 1.0


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
        self.service = ServiceTimes()  # each (bundle, cut)'s expected compute, per batch size
        self.dispatcher = Dispatcher(config.max_queue, config.scheduler, config.max_batch,
                                     self.service)
        self.description: dict = {}
        # What each bundle's cuts carry, from the factory (None: a generic handler)
        limits = getattr(factory, "payload_limits", None)
        self.payload_limits = limits() if callable(limits) else None
        self.max_frame_bytes = frame_limit(config, self.payload_limits)
        self.max_request_bytes = largest_request(self.payload_limits, config.max_frames,
                                                 self.max_frame_bytes)
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
            self.forwarder = Forwarder(ctx, cfg.next_hops, limit=max(2 * cfg.max_queue, 1),
                                       keys=cfg.next_hop_keys, identity=cfg.curve)
            self.backend = ctx.socket(zmq.ROUTER)
            self.backend.setsockopt(zmq.LINGER, 0)
            self.backend.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a dead worker is an error
            self.backend.bind(self.pool.backend)
            if cfg.curve is not None:
                auth = start_authenticator(ctx, cfg.allow_dir, self.metrics)
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
                      max_frame_bytes=self.max_frame_bytes,
                      max_request_bytes=self.max_request_bytes,
                      memory_bound_bytes=memory_bound(cfg.max_queue, cfg.workers,
                                                      self.max_request_bytes,
                                                      max_batch=cfg.max_batch),
                      metrics=(f"http://{self.metrics_address[0]}:{self.metrics_address[1]}"
                               "/metrics" if self.metrics_address else None),
                      pid=os.getpid())
            self.metrics.queue_length.track(lambda: len(self.dispatcher))
            self.metrics.workers_alive.track(self.pool.alive)
            self.metrics.workers_busy.track(lambda: len(self.dispatcher.running))
            self._ready.set()
            self._loop()
            log_event("stopped", served=int(self.metrics.replies.value(kind="result")))
            return 0
        finally:
            self._shutdown_workers()
            if getattr(self, "forwarder", None) is not None:
                self.forwarder.close()
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
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes)
        legal = largest_frame(self.payload_limits) if self.payload_limits else 0
        if legal > self.max_frame_bytes:
            log_event("max_frame_bytes_too_small", logging.WARNING,
                      max_frame_bytes=self.max_frame_bytes, largest_legal_frame=legal,
                      hint="requests with larger frames disconnect their device; raise "
                           "--max-frame-bytes or leave it unset")
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
                log_event("draining", queued=len(self.dispatcher),
                          running=len(self.dispatcher.running), timeout_s=cfg.drain_timeout_s)
            if self._draining:
                if not (len(self.dispatcher) or self.dispatcher.running
                        or self.forwarder.pending):
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
            for sock in self.forwarder.sockets():
                if sock in events:
                    self._guard(self._drain_forwards, sock)

    def _poller(self) -> zmq.Poller:
        """The poller over both sockets, the forward links and every worker's sentinel,
        rebuilt only when the set of worker processes or of link sockets changes (it is on
        the hot path)."""
        sentinels = tuple(self.pool.sentinels())
        key = (sentinels, self.forwarder.generation)  # a refused next hop's fresh socket
        if getattr(self, "_poller_key", None) != key:
            poller = zmq.Poller()
            poller.register(self.frontend, zmq.POLLIN)
            poller.register(self.backend, zmq.POLLIN)
            for sock in self.forwarder.sockets():
                poller.register(sock, zmq.POLLIN)
            for fd in sentinels:
                poller.register(fd, zmq.POLLIN)
            self._poller_key, self._cached_poller = key, poller
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
        for forward, outcome in self.forwarder.expire(now):
            self._guard(self._relay, forward, outcome)
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
        for worker, batch in list(self.dispatcher.running.items()):
            if now > batch.deadline + self.config.worker_timeout_s:
                slot = self.pool.by_identity(worker)
                if slot is not None and slot.process is not None and slot.kill_reason is None:
                    slot.kill_reason = protocol.WORKER_TIMEOUT
                    log_event("worker_hung", logging.WARNING, slot=slot.index, pid=slot.pid,
                              requests=[j.request_id for j in batch.jobs])
                    slot.process.kill()
        forwards = self.forwarder.next_deadline()
        return min([s.restart_at for s in self.pool.slots if s.restart_at is not None]
                   + self.dispatcher.next_expiry(8)
                   + ([forwards] if forwards is not None else [])
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
        return {"queue": len(self.dispatcher), "max_queue": self.config.max_queue,
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
        mismatch = (protocol.hello_mismatch(env, self.description)
                    if env.kind == protocol.HELLO else None)
        if mismatch is not None:  # the device runs another copy of a bundle served here
            self._reply(client, protocol.error_envelope(env.id, protocol.BUNDLE_MISMATCH,
                                                        mismatch))
        elif env.kind == protocol.HELLO:
            self._reply(client, Envelope(protocol.WELCOME, env.id, extra={
                "server_version": protocol.VERSION, "server": self.config.name,
                "bundles": self.description, "load": self._load(),
                "next_hops": [h for h in self.config.next_hops
                              if h not in self.forwarder.refused()]}))
        elif env.kind == protocol.HEARTBEAT:
            self._reply(client, Envelope(protocol.HEARTBEAT, env.id, extra={"load": self._load()}))
        elif self._draining:
            self._reply(client, protocol.error_envelope(
                env.id, protocol.SHUTTING_DOWN, "the server is shutting down"))
        else:
            try:
                chain = route.chained(env)
            except MalformedMessage as exc:
                self._malformed(client, message[1], str(exc))
                return
            if chain is not None and chain.route and not self.forwarder.allowed(
                    chain.route[0].endpoint):
                self._reply(client, protocol.error_envelope(
                    env.id, protocol.BAD_REQUEST, f"this server does not forward to "
                    f"{chain.route[0].endpoint[:80]}; it forwards to "
                    f"{list(self.config.next_hops) or 'no stage'} (edgesdk serve --next-hop)"))
                return
            if self.payload_limits is not None:
                refused = protocol.check_payload(env, [len(f) for f in message[2:]],
                                                 self.payload_limits)
                if refused is not None:  # never queued, never sent to a worker
                    log_event("refused", logging.DEBUG, request=env.id, code=refused[0],
                              error=refused[1][:200])
                    self._reply(client, protocol.error_envelope(env.id, *refused))
                    return
            self._admit(client, env, message, now, chain)

    def _admit(self, client: bytes, env: Envelope, message: list, now: float,
               chain: route.Chained | None = None) -> None:
        """Queue or run an infer request, or answer it at once: busy (the queue is full;
        an exploring request, whenever no worker is idle), expired (it cannot finish
        within its budget: its device falls back now)."""
        self._seq += 1
        # a stage of a chain computes up to its stop: another time than the whole tail (and
        # a key the handler never described as batchable)
        key = (env.bundle, env.cut) if chain is None else (env.bundle, env.cut, chain.stop)
        job = Job(self._seq, client, env.id, message[1], list(message[2:]), now,
                  now + env.budget_ms / 1e3, service_s=self.service.expected(key),
                  weight=_task_weight(env.get("task")), key=key,
                  device=self._device_name(client, message[1]), chain=chain)
        if chain is not None and chain.route and self.forwarder.full():
            self._reply_busy(job, "forwards")  # as many in flight to next stages as queued
            return
        if env.get("explore") is True and not self.dispatcher.idle:
            # a device's exploring frame (it tries the server in a plausible best case): only
            # spare capacity answers it, never ahead of a device that offloads as decided;
            # the busy reply comes at once, and the device finishes the frame itself
            self._reply_busy(job, "explore")
            return
        admission = self.dispatcher.admit(job, now)
        if admission.verdict == "run":
            self._dispatch(admission.worker, [job])
        elif admission.verdict == "busy":
            self._reply_busy(job, "busy")
        elif admission.verdict == "late":
            self.metrics.refused.inc(reason="late")
            why = (f"its compute takes ~{job.service_s * 1e3:.1f} ms here, and the queue is "
                   f"{len(self.dispatcher)} deep" if self.pool.alive() else "no worker is up")
            self._reply(client, protocol.error_envelope(
                env.id, protocol.EXPIRED, f"it cannot finish within its budget of "
                f"{env.budget_ms:.1f} ms: {why}", reason="late"))
        for old in admission.displaced:
            self._reply_busy(old, "displaced")

    def _device_name(self, client: bytes, frame: Any) -> str:
        """Who sent a request: the name of its CURVE key in the allow directory (the ZAP
        handler's user id), else its IP address (a connection's identity changes with
        every reconnect; its address does not), else the identity in hex."""
        prop = "User-Id" if self.config.curve is not None else "Peer-Address"
        with contextlib.suppress(Exception):
            return str(frame.get(prop))
        return client.hex()

    def _reply_busy(self, job: Job, reason: str) -> None:
        """Busy, with when the queue is expected to have drained (retry_after_ms)."""
        self.metrics.refused.inc(reason=reason)
        drain = self.dispatcher.drain_s(time.monotonic())
        self._reply(job.client, Envelope(protocol.BUSY, job.request_id, extra={
            "queue": len(self.dispatcher), "max_queue": self.config.max_queue,
            "retry_after_ms": round(min(max(drain, 0.001), 60.0) * 1e3, 3)}))

    # -- backend ---------------------------------------------------------------------------
    def _dispatch(self, worker: bytes, jobs: list[Job]) -> None:
        """Send a worker the jobs it computes together (their frames as received)."""
        meta = _pack_meta({"jobs": [{"job": j.seq, "received": j.received,
                                     "deadline": j.deadline, "frames": 1 + len(j.frames)}
                                    for j in jobs]})
        frames = [f for j in jobs for f in (j.envelope, *j.frames)]
        self.metrics.batch_size.observe(len(jobs))
        try:
            self.backend.send_multipart([worker, JOB, meta, *frames], copy=False)
        except zmq.ZMQError:
            # The worker vanished between READY and now; its sentinel will fire. Answer the
            # jobs as a crash so nothing is lost silently.
            batch = self.dispatcher.finished(worker, jobs[0].seq)
            for job in batch.jobs if batch is not None else ():
                self._reply_error(job, protocol.WORKER_CRASHED, "its worker disappeared")

    def _drain_backend(self) -> None:
        for message in _ready_messages(self.backend):
            self._on_worker_message(message, time.monotonic())

    def _on_ready(self, slot: _Slot, meta: dict, now: float) -> None:
        slot.ready = True
        slot.pid = meta.get("pid", slot.pid)
        if meta.get("describe") is not None:
            self.description = meta["describe"]
            self.service.prime(self.description)
            self.dispatcher.batchable = _batchable(self.description)
        log_event("worker_ready", slot=slot.index, pid=slot.pid, generation=slot.generation)
        self._worker_free(slot.identity, now)

    def _worker_free(self, worker: bytes, now: float) -> None:
        jobs, dropped = self.dispatcher.worker_ready(worker, now)
        for old in dropped:
            self._reply_expired(old, now)
        if jobs:
            self._dispatch(worker, jobs)

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
        batch = self.dispatcher.finished(identity, stats.get("batch"))
        if batch is not None:
            jobs = {j.seq: j for j in batch.jobs}
            at = 3
            for reply in stats.get("replies", ()):
                n = int(reply.get("frames", 0))
                job = jobs.pop(reply.get("job"), None)
                if job is not None:
                    if job.chain is not None and job.chain.route and \
                            reply.get("status") == "result":
                        # answered when the next stage answers (_relay counts the reply)
                        self._count_stage(job, reply)
                        self._forward(job, list(message[at:at + n]), reply, now)
                    else:
                        self._send(job.client, list(message[at:at + n]))
                        self._count_done(job, reply, now)
                at += n
            for job in jobs.values():  # never: a worker answers every job it was given
                self._reply_error(job, protocol.INTERNAL, "its worker sent no reply for it")
            replies = stats.get("replies", ())
            if replies and all(r.get("status") == "result" for r in replies):
                # only computed results teach the expected compute: an error (a payload
                # that does not decode, a replica that timed out) took another time
                self.service.observe(batch.jobs[0].key, stats.get("batch_ms", 0.0) / 1e3,
                                     len(replies))
        self._worker_free(identity, now)

    def _count_done(self, job: Job, stats: dict, now: float) -> None:
        status = stats.get("status")
        self.metrics.replies.inc(kind=protocol.RESULT if status == "result" else protocol.ERROR)
        if status == "result":
            if now > job.deadline:
                self.metrics.deadline_misses.inc()
        else:
            self.metrics.errors.inc(code=str(stats.get("code")))
        self._count_stage(job, stats)
        self.metrics.request_seconds.observe(now - job.received)

    def _count_stage(self, job: Job, stats: dict) -> None:
        """This server's part of a job: its compute and its queueing."""
        if stats.get("status") == "result":
            self.metrics.server_seconds.observe(stats.get("server_ms", 0.0) / 1e3)
        queued = stats.get("queue_ms", 0.0) / 1e3
        self.metrics.queue_seconds.observe(queued)
        self.metrics.device_queue_seconds.observe(queued, job.device)

    # -- chains ----------------------------------------------------------------------------
    def _forward(self, job: Job, frames: list, stats: dict, now: float) -> None:
        """Send a stage's result (frames: its result envelope, then the stop cut's tensors)
        on to the next stage with what is left of the budget (route.py)."""
        stage = {"server": self.config.name, "endpoint": self.endpoint,
                 "server_ms": round(float(stats.get("server_ms", 0.0)), 4),
                 "queue_ms": round(float(stats.get("queue_ms", 0.0)), 4)}
        left_s = job.deadline - now
        reserve_s = RELAY_MARGIN_S + RELAY_MARGIN_SHARE * max(left_s, 0.0)
        hop = job.chain.route[0]
        if left_s <= reserve_s:
            self._relay(Forward(job, hop.endpoint, b"", [], job.deadline, stage), Outcome(
                code=protocol.EXPIRED, hop=self.endpoint, message=(
                    f"its budget ran out at this stage, before it could go on to "
                    f"{hop.endpoint}")))
            return
        request = protocol.unpack(job.envelope.bytes)
        env = route.forward_envelope(request, job.chain, 0, (left_s - reserve_s) * 1e3)
        failure = self.forwarder.send(job, env, frames[1:], hop.endpoint,
                                      job.deadline - reserve_s / 2, stage)
        if failure is not None:
            self._relay(Forward(job, hop.endpoint, b"", [], job.deadline, stage), failure)

    def _drain_forwards(self, sock: zmq.Socket) -> None:
        for forward, outcome in self.forwarder.on_readable(sock):
            self._guard(self._relay, forward, outcome)  # one bad reply costs only itself

    def _relay(self, forward: Forward, outcome: Outcome) -> None:
        """Answer a forwarded job: the next stage's reply, or this stage's failure to get
        one (naming the stage in `hop`: the next one, or this one when it ran out)."""
        job = forward.job
        self.metrics.request_seconds.observe(time.monotonic() - job.received)
        if outcome.reply is not None:
            env = route.relayed(outcome.reply, job.request_id, forward.stage, forward.endpoint)
            self.metrics.forwards.inc(outcome=outcome.reply.kind)
            self.metrics.replies.inc(kind=env.kind)
            self._send(job.client, _reply_frames(env, outcome.frames))
            return
        self.metrics.forwards.inc(outcome=outcome.code)
        log_event("forward_failed", logging.DEBUG, request=job.request_id, code=outcome.code,
                  hop=outcome.hop or forward.endpoint)
        self._reply(job.client, protocol.error_envelope(
            job.request_id, outcome.code, outcome.message, hop=outcome.hop or forward.endpoint,
            hops=[forward.stage]))

    def _on_worker_exit(self, slot: _Slot | None) -> None:
        if slot is None or slot.process is None:
            return
        self._drain_backend()  # a result sent just before the exit is still delivered
        reason = slot.kill_reason or protocol.WORKER_CRASHED
        code = self.pool.reap(slot)
        lost = self.dispatcher.worker_lost(slot.identity)
        what = ("hung past its deadline and was killed" if reason == protocol.WORKER_TIMEOUT
                else f"crashed (exit code {code})")
        for job in lost:
            self._reply_error(job, reason, f"the worker computing it {what}; it was restarted")
        if self._draining:
            log_event("worker_exited", slot=slot.index, exit_code=code, during="drain")
            return
        delay = self.pool.schedule_restart(slot, time.monotonic())
        self._wake = min(self._wake, slot.restart_at)
        log_event("worker_crashed", logging.WARNING, slot=slot.index, exit_code=code,
                  reason=reason, lost_requests=[j.request_id for j in lost],
                  restart_in_s=round(delay, 3))

    # -- replies to jobs -------------------------------------------------------------------
    def _reply_error(self, job: Job, code: str, text: str) -> None:
        self._reply(job.client, protocol.error_envelope(job.request_id, code, text))

    def _reply_expired(self, job: Job, now: float) -> None:
        self.metrics.refused.inc(reason="expired")
        waited = (now - job.received) * 1e3
        left = (job.deadline - now) * 1e3
        why = (f"its budget ran out after {waited:.1f} ms in the queue" if left <= 0 else
               f"after {waited:.1f} ms in the queue, its {left:.1f} ms left could not fit "
               f"its compute (~{job.service_s * 1e3:.1f} ms)")
        self._reply_error(job, protocol.EXPIRED, why + ", before compute")

    def _abandon_all(self, text: str) -> None:
        for job in self.dispatcher.drain_queue():
            self._reply_error(job, protocol.SHUTTING_DOWN, text)
        for worker in list(self.dispatcher.running):
            for job in self.dispatcher.worker_lost(worker):
                self._reply_error(job, protocol.SHUTTING_DOWN, text)
        for forward in self.forwarder.pending.values():
            self._reply_error(forward.job, protocol.SHUTTING_DOWN, text)
        self.forwarder.pending.clear()

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


__all__ = ["Server", "ServerConfig", "is_loopback"]
