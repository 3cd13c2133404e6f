"""The device's connection to its edge server, run on one I/O thread.

A ZeroMQ socket belongs to one thread, and an offload must not stop the device from
computing the next frame, so `EdgeLink` owns the transport Client on a thread of its own.
`offload(frames, cut, budget_s)` returns a Future at once; the thread submits it, drives
the socket (`Client.poll`, woken through a pipe when work arrives) and resolves the
Future with the Reply or the typed error (Timeout, ServerBusy, ServerError, Unreachable).
The client enforces the budget, so a Future never outlives its deadline by more than a
poll turn.

It also keeps the live estimates (edgesdk.estimators.LinkEstimator) from real traffic, and
decides whether offloading is possible at all:

    status "connecting" -> hello -> "up" (the welcome lists this bundle) | "not_served"
         | "bundle_mismatch" (the server has another copy of it: the hello carries the
           bundle's digest, and the server answers an error when its own differs)
    "up" -> an infer is overdue (past its budget, its reply still awaited), times out
         or is unreachable -> "checking" (a hello at once) -> "up" | "down"
    "down" -> hello every `retry_s` -> "up" when the server is back (an infer that
         times out meanwhile leaves it down); a hello lost while down, sent on a
         connection that was up, resets it (_reconnect_if_stuck)

Only "up" offloads. Busy replies pause offloading for their `retry_after_ms` (within
busy_backoff_s / 4 and MAX_BUSY_WAIT_S), or `busy_backoff_s` when they do not say. A user hears of
the status on the "edgesdk.engine" logger, once per change and never once per frame: a
warning when the server cannot be used (no answer to the first hello, lost later, or not
serving this bundle), with what happens meanwhile, and an info line when it is back. Until the
estimator has a few bandwidth samples, and whenever the link has been idle for
`probe_idle_s`, it probes: a heartbeat (RTT) and a heartbeat carrying a payload sized to
take ~50 ms (alternately ~20 ms: two sizes separate the overhead from the rate) at the
current estimate, at least 64 KiB so that a token bucket's burst does not hide the rate,
but no more than PROBE_MAX_S at the estimate (bandwidth; one that times out is a censored
sample: the rate was below size / budget), which the broker answers without touching a
worker. `snapshot(now)` reads the estimates for the planner; `version` changes whenever an
outcome changed them. Between events the thread sleeps (no poll timer): an idle link
costs a device a wake-up per probe, not four a second.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..errors import ServerBusy, Timeout, TransportError, Unreachable
from ..estimators import SMALL_MESSAGE_BYTES, LinkEstimator, probe_bytes
from ..transport import protocol
from .cpu_quota import QuotaStalls

UP, CONNECTING, CHECKING, DOWN, NOT_SERVED = "up", "connecting", "checking", "down", "not_served"
MISMATCH = "bundle_mismatch"
# The I/O thread sleeps until its next event (a job through the wake pipe, a reply, a
# request's deadline, which Client.poll wakes for itself, a held job's release, the next
# probe); this cap only bounds a sleep whose wake-up was miscomputed. A device idles here
# most of the time: every needless wake-up is CPU taken from a throttled device's quota
# (and a GIL hand-off), and a 0.25 s poll timer woke it four times a second for nothing.
MAX_SLEEP_S = 5.0
MAX_BUSY_WAIT_S = 1.0  # the longest a busy reply's retry_after_ms pauses offloading
log = logging.getLogger("edgesdk.engine")


class DeviceActivity:
    """Whether the device's CPU was starved during a transfer, for the link's bandwidth
    samples.

    The engine enters it around what it computes (segments, exit heads, encoding); the link
    marks each job when it is made and asks, on its reply, whether the device computed
    since while starved. Starved: its computations got less than STARVED_SHARE of the CPU
    they ask for (`threads` cores; process CPU time over wall time, recent sections
    weighing most), as on a device under a CPU quota, which stops every thread of the
    process, or one shared with other work. A transfer timed then waited for the CPU too
    (the link's thread, ZeroMQ's, the one that reads the reply), so it bounds the link's
    speed from below instead of measuring it (BandwidthEstimator.observe_transfer, busy).
    With CPU to spare (a Pi's other cores) the transfer is timed true, busy or not.
    A quota's stalls often land after a section, not in it (a run that overruns the quota
    between two scheduler ticks is stalled after it): `stalls`, the engine's QuotaStalls,
    counts those, and a stretch over 1 / STARVED_SHARE is starved too. Without it, a
    throttled device running PP-LCNet (sections at full speed, ~11 ms of stall after each)
    counted its probes, stalls included, as clean: a 230 Mbit/s link read as 64 Mbit/s
    with 6.5 ms per message. (Held as busy, a stalled sample still counts when it beats
    the model, as small probes did early on: in one run after, 71 Mbit/s and 7.5 ms.)
    Entered by one thread at a time (the engine's device lock), read by the link's."""

    STARVED_SHARE = 0.7
    DECAY = 0.8  # per section: the share follows the last few frames

    __slots__ = ("_depth", "_started", "_threads", "_cpu", "_wall", "_t", "_stalls")

    def __init__(self, threads: int = 1, stalls: QuotaStalls | None = None) -> None:
        self._depth = 0
        self._started = 0
        self._stalls = stalls
        self._threads = max(int(threads), 1)
        self._cpu = self._wall = 0.0  # decayed sums over the sections
        self._t = (0.0, 0.0)

    def __enter__(self) -> DeviceActivity:
        if self._stalls is not None:
            self._stalls.stretch()  # kept current where no segment runs (an input cut)
        self._depth += 1
        self._started += 1
        self._t = (time.perf_counter(), time.process_time())
        return self

    def __exit__(self, *exc: object) -> None:
        wall, cpu = time.perf_counter() - self._t[0], time.process_time() - self._t[1]
        self._wall = self.DECAY * self._wall + wall
        self._cpu = self.DECAY * self._cpu + cpu
        self._depth -= 1

    @property
    def starved(self) -> bool:
        if self._stalls is not None and self._stalls.last * self.STARVED_SHARE > 1.0:
            return True
        return self._cpu < self.STARVED_SHARE * self._threads * self._wall

    def mark(self) -> int:
        """A mark for `since`: how many computations have started (-1 during one)."""
        started = self._started  # read before the depth: an enter between them is seen
        return -1 if self._depth else started

    def since(self, mark: int) -> bool:
        """True if the device computed, starved, at any time since `mark` was taken."""
        return self.starved and (mark < 0 or self._depth > 0 or self._started != mark)


@dataclass
class _Job:
    kind: str
    frames: Sequence = ()
    cut: str | None = None
    budget_s: float = 0.5
    future: Future = field(default_factory=Future)
    payload_bytes: int = 0
    queued_at: float = field(default_factory=time.monotonic)
    held_s: float = 0.0  # time the loopback shaper held it: an emulated transfer
    exploring: bool = False  # an exploring frame's (policy.explore): its reply counts only
    # How long past its budget a reply is still awaited (its frame's local finish, which
    # the reply may still beat); and when the budget ends, while that is still to come:
    # then the link checks the server as after a timeout (_overdue), once: its timeout, if
    # it comes later, counts as a failure but is not blamed again
    extra_wait_s: float = 0.0
    overdue_at: float = math.inf
    checked: bool = False
    live: bool = False  # submitted with a server connection up (Client.connected)
    activity: int = 0  # DeviceActivity.mark() when it was made
    # On the wire, in send order (the I/O thread's): an upload's number, and whether it went
    # with no other upload ahead of it; a hello's, the last upload sent before it
    upload: int = 0
    alone: bool = False


class _TimedOut(NamedTuple):
    """An offload that timed out, until the hello that checks blames a side (_blame)."""

    payload_bytes: int
    budget_ms: float
    tail_ms: float | None  # the server's profiled time for its cut
    at: float  # when it timed out (time.monotonic)
    queued_at: float  # when its frame handed it to the link
    upload: int  # its number on the wire (_Job.upload)
    alone: bool  # no other upload was ahead of it


class EdgeLink:
    """See the module docstring. `bundle_id`: the bundle's source sha256; `name`: the
    bundle's name, for the log lines; `digest`: the bundle's digest (Bundle.digest), sent
    in the hello so that a server with another copy of the bundle refuses it; `task`: the
    device's task type, sent with every infer (the server's scheduler weighs it);
    `activity`: when the device computes (the engine's; none: a device that never does)."""

    def __init__(self, endpoint: str, bundle_id: str, *,
                 server_public_key: Any = None, client_keys: Any = None,
                 retry_s: float = 0.5, hello_budget_s: float = 0.5,
                 probe_idle_s: float = 2.0, busy_backoff_s: float = 0.25,
                 name: str = "", digest: str | None = None, task: str | None = None,
                 activity: DeviceActivity | None = None) -> None:
        self.endpoint = endpoint
        self.activity = activity if activity is not None else DeviceActivity()
        self._infer_fields = {"task": task} if task else {}
        self.bundle_id = bundle_id
        self.name = name
        self.digest = digest
        self.mismatch = ""  # the server's bundle_mismatch message, while it lasts
        self._warned: str | None = None  # the status last warned about (see _log_change)
        self.estimator = LinkEstimator(idle_s=probe_idle_s)
        self.status = CONNECTING
        self._down_reason = "unreachable"  # why frames stay here while down or connecting
        self._lost_behind = 0  # timed-out uploads the last lost hello was queued behind
        # A bandwidth probe timed out and nothing has answered since: its bytes (sized for
        # the link as it was, up to 1 MiB) may still be queued on the connection, ahead of
        # every hello. A hello lost then resets the connection (_reconnect_if_stuck).
        self._probe_stuck = False
        self._reconnect = False
        self._reset_since_reply = False  # the link dropped its connection since a reply
        self.welcome: Any = None
        self.server_tail_ms: dict[str, float] = {}  # cut id -> server compute, from welcome
        self.welcomes = 0  # how many welcomes arrived (the engine re-plans on a change)
        # Bumped whenever an outcome updated the estimates or the status: the engine keeps
        # its decision state until this changes (or ages), instead of re-reading snapshot
        self.version = 0
        self._retry_s = retry_s
        self._hello_budget_s = hello_budget_s
        self._busy_backoff_s = busy_backoff_s
        self._busy_until = 0.0
        # offloads that timed out, to be blamed when the hello that checks answers (_blame)
        self._unblamed: list[_TimedOut] = []
        self._uploads = 0  # uploads put in line for the wire (_queue)
        self._next_probe = 0.0  # when the I/O thread may probe (or hello) again
        self._probe_turn = 0  # alternates the bandwidth probe's size
        self._last_reply = -math.inf  # traffic, as LinkEstimator.should_probe counts it
        self._lock = threading.Lock()  # guards estimator and status against the caller
        self._jobs: deque[_Job] = deque()
        # Requests the I/O thread holds, has sent and awaits, as of its last pass (it
        # writes, anyone reads): 0 once the link is quiet
        self.in_flight = 0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._closing = False
        self._first_answer = threading.Event()
        # Emulation hook (benchmarks): an object with release_time(nbytes, now) -> when
        # an upload of nbytes sent at `now` has crossed a slower link; every request is
        # held until then, in order. See edgesdk.bench.netem.TokenBucket.
        self.shaper: Any = None
        # Created here, so a bad key fails in the caller; used only by the thread after.
        # Imported here: an engine without a server never loads ZeroMQ.
        from ..transport.client import Client

        self._client = Client(endpoint, server_public_key=server_public_key,
                              client_keys=client_keys, retries=0)
        self._thread = threading.Thread(target=self._run, name="edgesdk-link", daemon=True)
        self._thread.start()

    # -- caller side -----------------------------------------------------------------------
    def wait_connected(self, timeout_s: float) -> bool:
        """Wait for the first hello's outcome; True if the link is up."""
        self._first_answer.wait(timeout_s)
        return self.status == UP

    def usable(self, now: float) -> str | None:
        """None if an offload may be sent now, else the reason it may not."""
        status = self.status
        if status == UP:
            return "busy" if now < self._busy_until else None
        if status == NOT_SERVED:
            return "bundle_not_served"
        if status == MISMATCH:
            return "bundle_mismatch"
        if status == CHECKING:
            return "checking"  # an offload failed: a hello is out, frames stay here till then
        return self._down_reason

    def route(self, exploring: bool = False) -> EdgeLink:
        """The link an offload goes to (ServerSet's interface): this one."""
        return self

    def offload(self, frames: Sequence, cut: str, budget_s: float, *,
                wait_s: float | None = None, exploring: bool = False) -> Future:
        """Send an infer request for `cut` with `budget_s`; the Future resolves to a
        transport Reply or raises a TransportError. wait_s (default budget_s): how long a
        reply is awaited. Past the budget the offload is overdue (its frame finishes
        here meanwhile, and a reply may still beat that): the link checks the server as
        after a timeout, and the reply, if it comes, is a sample like any other.
        exploring: an exploring frame's (policy.explore); its reply updates the estimates
        as any offload's, its failure changes nothing (it says little: the frame tried a
        plausible best case)."""
        size = sum(memoryview(f).nbytes for f in frames)
        job = _Job(protocol.INFER, frames, cut, budget_s, payload_bytes=size,
                   exploring=exploring)
        if wait_s is not None and wait_s > budget_s:
            job.extra_wait_s = wait_s - budget_s
            job.overdue_at = job.queued_at + budget_s
        return self._push(job)

    def snapshot(self, now: float) -> dict[str, Any]:
        """The estimates the planner needs, read consistently. A request of n bytes is
        expected to spend ``rtt_ms + bw_overhead_ms + n * 8 / (bw_mbps * 1e3)`` ms on the
        network (``bw_model.transfer_ms(n, quantile)`` for a quantile of the last two
        terms). Keys: bw_mbps (median rate), bw_std (bw_mbps x bw_spread), bw_spread
        (predictive log-rate spread), bw_low_mbps (10th-percentile forecast),
        bw_overhead_ms (fixed cost per message beyond rtt_ms), bw_overhead_carried (that
        cost was fitted before the link's latest change, and no upload since has shown
        it), bw_age_s (newest sample's age, inf: none), bw_history (last samples' implied
        rates, oldest first), bw_model (the LinkModel), rtt_ms (RTT floor), queue_ms,
        server_slowdown, failures (decayed fraction of offloads that failed, 0..1)."""
        with self._lock:
            e = self.estimator
            m = e.bandwidth.model(now)
            rtt = e.rtt.estimate(now)
            # The RTT floor, not the smoothed RTT: heartbeats are timed while the device
            # computes, so their replies wait for this process's CPU, which an offload
            # (the device idle, waiting for the reply) does not. Smoothed until seen.
            rtt_ms = e.rtt.floor_ms if rtt.n else rtt.value
            # the model's overhead is over the floor its transfers came with; re-anchor it
            # on the floor reported here, so rtt_ms + bw_overhead_ms is its intercept
            overhead = max(m.overhead_ms + m.rtt_ms - rtt_ms, 0.0) if m.n else 0.0
            return {"bw_mbps": m.rate_mbps, "bw_std": m.rate_std, "bw_spread": m.log_spread,
                    "bw_low_mbps": m.low_mbps, "bw_overhead_ms": overhead,
                    "bw_overhead_carried": m.overhead_carried,
                    "bw_age_s": m.age_s, "bw_history": tuple(e.bandwidth.history()),
                    "bw_model": m, "rtt_ms": rtt_ms, "queue_ms": e.server.queue_ms,
                    "server_slowdown": e.server.slowdown_at(now), "failures": e.failures}

    def close(self, timeout_s: float = 2.0) -> None:
        if self._closing:
            return
        self._closing = True
        self._wake()
        self._thread.join(timeout_s)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _push(self, job: _Job) -> Future:
        job.activity = self.activity.mark()
        if self._closing:
            job.future.set_exception(Unreachable("the engine is closed"))
            return job.future
        self._jobs.append(job)
        self._wake()
        return job.future

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    # -- the I/O thread --------------------------------------------------------------------
    def _run(self) -> None:
        client = self._client
        pending: dict[int, tuple[_Job, float]] = {}
        held: list[tuple[float, _Job]] = []  # (release time, job): see `shaper`
        try:
            while not self._closing:
                now = time.monotonic()
                ready, expired = self._release(held, now, pending)
                for job in expired:
                    self._account(job, Timeout("the link held it past its budget"), now)
                while ready:
                    job = ready.popleft()
                    job.live = client.connected
                    try:
                        if job.kind == protocol.INFER:
                            fields = self._infer_fields
                            if job.exploring:  # the server answers it only when idle
                                fields = {**fields, "explore": True}
                            rid = client.submit(job.frames, budget_s=job.budget_s,
                                                wait_s=job.budget_s + job.extra_wait_s,
                                                bundle=self.bundle_id, cut=job.cut,
                                                fields=fields or None)
                        elif job.kind == protocol.HELLO and self.digest:
                            rid = client.submit(job.frames, budget_s=job.budget_s,
                                                kind=job.kind, bundle=self.bundle_id,
                                                fields={"digest": self.digest})
                        else:
                            rid = client.submit(job.frames, budget_s=job.budget_s,
                                                kind=job.kind)
                    except (TransportError, ValueError, TypeError) as exc:
                        job.future.set_exception(exc)
                        continue
                    pending[rid] = (job, now)
                probing = any(j.kind != protocol.INFER for j, _ in pending.values()) or any(
                    j.kind != protocol.INFER for _, j in held)
                if not probing and now >= self._next_probe:
                    for job in self._probes(now):
                        self._queue(job, held, pending, now)
                    self.in_flight = len(pending) + len(held)
                    self._next_probe = now + self._retry_s
                    continue  # probes go at once, or when the shaper releases them
                # a held job wakes the loop when it may go or when its wait runs out
                wake = min([now + MAX_SLEEP_S]
                           + [min(t, j.queued_at + j.budget_s + j.extra_wait_s)
                              for t, j in held])
                if not probing:
                    wake = min(wake, self._probe_due())
                wake = min([wake] + [j.overdue_at for j in self._awaited(pending, held)])
                self.in_flight = len(pending) + len(held) + len(self._jobs)
                client.poll(max(wake - now, 0.0), wake_fd=self._wake_r)
                with contextlib.suppress(BlockingIOError, OSError):
                    os.read(self._wake_r, 4096)
                for rid in [r for r in pending if client.done(r)]:
                    job, _ = pending.pop(rid)
                    try:
                        outcome: Any = client.wait(rid)
                    except TransportError as exc:
                        outcome = exc
                    self._account(job, outcome, time.monotonic())
                self._overdue(self._awaited(pending, held), time.monotonic())
                if self._reconnect:
                    # a fresh connection carries neither stale bytes nor TCP's backed-off
                    # resends: the next hello goes out on it at once
                    self._reconnect, self._reset_since_reply = False, True
                    client.reconnect()
                    if self.shaper is not None:  # the emulated link drops them too
                        self.shaper.drop_backlog(time.monotonic())
        finally:
            for job, _ in pending.values():
                if not job.future.done():
                    job.future.set_exception(Unreachable("the engine is closed"))
            while self._jobs:
                self._jobs.popleft().future.set_exception(Unreachable("the engine is closed"))
            client.close()

    @staticmethod
    def _awaited(pending: Mapping[int, tuple[_Job, float]], held: list[tuple[float, _Job]]
                 ) -> list[_Job]:
        return [j for j, _ in pending.values()] + [j for _, j in held]

    def _overdue(self, jobs: Sequence[_Job], now: float) -> None:
        """Offloads past their budget, whose frames finish here meanwhile: as after a
        timeout, the link checks the server at once (frames stay here until a hello
        answers), and the hello blames the link or the server for the budget missed
        (_blame); but the reply is still awaited, and is a sample like any other if it
        comes. An exploring one's changes nothing, as its timeout would not."""
        late = [j for j in jobs if j.overdue_at <= now]
        if not late:
            return
        with self._lock:
            for job in late:
                job.overdue_at = math.inf
                if job.exploring:
                    continue
                job.checked = True
                bound = self._timed_out(job, job.budget_s + job.held_s, now)
                self._unblamed.append(bound)
                log.debug("an offload is past its budget (%.1f ms): checking the server, "
                          "its reply still awaited", bound.budget_ms)
                if self.status == UP:
                    self.status = CHECKING
                    self._next_probe = now
            self.version += 1

    def _timed_out(self, job: _Job, bound_s: float, now: float) -> _TimedOut:
        """An offload with no reply within `bound_s` of its queueing, to be blamed."""
        return _TimedOut(job.payload_bytes, bound_s * 1e3, self.server_tail_ms.get(job.cut or ""),
                         now, job.queued_at, job.upload, job.alone)

    def _release_at(self, job: _Job, now: float) -> float:
        """When a job may go: now, or when the loopback shaper has carried it (a hello or a
        heartbeat too, behind the uploads before it, as on a real link: _blame reads that)."""
        if self.shaper is not None:
            return self.shaper.release_time(job.payload_bytes or SMALL_MESSAGE_BYTES, now)
        return now

    def _release(self, held: list[tuple[float, _Job]], now: float,
                 pending: Mapping[int, tuple[_Job, float]]
                 ) -> tuple[deque[_Job], list[_Job]]:
        """(the jobs to submit now, the jobs to fail now): new ones go unless the shaper
        holds them; held ones go when their time comes, with the wait taken off their
        budget, or fail when their wait for a reply runs out first. On a real link a request whose
        bytes are still queued times out at its deadline too; failing it only on release
        would keep the estimates blind to a congested link for as long as its queue."""
        while self._jobs:
            self._queue(self._jobs.popleft(), held, pending, now)
        ready: deque[_Job] = deque()
        expired: list[_Job] = []
        for t, job in sorted(held, key=lambda tj: tj[0]):
            waited = now - job.queued_at
            wait_s = job.budget_s + job.extra_wait_s
            if t > now and waited < wait_s:
                continue
            if self.shaper is not None:
                job.held_s = waited  # the emulated transfer belongs to the round trip
            if t <= now:
                job.budget_s = max(job.budget_s - waited, 0.001)
                ready.append(job)
            else:
                job.budget_s = max(job.budget_s - waited, 0.0)
                expired.append(job)
            job.extra_wait_s = max(wait_s - waited - job.budget_s, 0.0)
        gone = {id(j) for j in expired}
        held[:] = [(t, j) for t, j in held if t > now and id(j) not in gone]
        return ready, expired

    def _queue(self, job: _Job, held: list[tuple[float, _Job]],
               pending: Mapping[int, tuple[_Job, float]], now: float) -> None:
        """Put `job` in line for the wire (held until the shaper, if any, releases it).
        An upload gets its number, and whether any other was still ahead of it (sent and
        awaiting its answer, or held; or timed out and not yet blamed: its bytes may
        still be on the wire); a hello gets the number of the last upload before it."""
        if job.payload_bytes > SMALL_MESSAGE_BYTES:
            self._uploads += 1
            job.upload = self._uploads
            ahead = [j for j, _ in pending.values()] + [j for _, j in held]
            job.alone = not self._unblamed and not any(
                j.payload_bytes > SMALL_MESSAGE_BYTES for j in ahead)
        elif job.kind == protocol.HELLO:
            job.upload = self._uploads
        held.append((self._release_at(job, now), job))

    def _probe_due(self) -> float:
        """When `_probes` may next have something to send: hellos every retry_s until the
        server answers; once up, when the link will have been idle for the estimator's
        idle_s (at once while it lacks its first samples), not before retry_s."""
        if self.status != UP:
            return self._next_probe
        with self._lock:
            e = self.estimator
            if e.bandwidth.count < e.warm_samples:
                return self._next_probe
            return max(self._next_probe, self._last_reply + e.idle_s)

    def _probes(self, now: float) -> list[_Job]:
        """What to send when nothing else is: a hello until the server answers, then
        RTT and bandwidth heartbeats when the link has been idle."""
        if self.status != UP:
            return [_Job(protocol.HELLO, budget_s=self._hello_budget_s,
                         activity=self.activity.mark())]
        with self._lock:
            if not self.estimator.should_probe(now):
                return []
            mbps = self.estimator.bandwidth.estimate(now).value
        self._probe_turn += 1
        size = probe_bytes(mbps, self._probe_turn)
        mark = self.activity.mark()
        return [_Job(protocol.HEARTBEAT, budget_s=self._hello_budget_s, activity=mark),
                _Job(protocol.HEARTBEAT, [bytes(size)], budget_s=2 * self._hello_budget_s,
                     payload_bytes=size, activity=mark)]

    def _account(self, job: _Job, outcome: Any, now: float) -> None:
        """Update status and estimates from one outcome, then resolve the job's Future."""
        with self._lock:
            before = self.status
            if isinstance(outcome, TransportError):
                self._on_failure(job, outcome, now)
            else:
                self._on_reply(job, outcome, now)
            self.version += 1
        if self.status != before:
            self._log_change(outcome)
        if not job.future.done():
            if isinstance(outcome, TransportError):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)
        if job.kind == protocol.HELLO:
            self._first_answer.set()

    def _log_change(self, outcome: Any) -> None:
        """Tell the user when offloading stops or resumes: one line per change of what
        they would want to know (a warning per outage, not per frame or per hello)."""
        status = self.status
        if status in (DOWN, NOT_SERVED, MISMATCH) and self._warned != status:
            self._warned = status
            if status == MISMATCH:
                log.warning("edge server %s runs another copy of bundle %s: %s; frames finish "
                            "on the device until both run the same bundle", self.endpoint,
                            self.name or "?", self.mismatch)
            elif status == DOWN:
                what = (f"is {self._down_reason} (no connection)"
                        if self._down_reason == "unreachable" else
                        f"is {self._down_reason} (connected, no answer to a hello within "
                        f"{self._hello_budget_s * 1e3:.0f} ms)")
                if self._lost_behind and self._down_reason == "unresponsive":
                    what += (f"; the hello was queued behind {self._lost_behind} upload(s) "
                             "that timed out, so the uplink is likely slower than it was")
                log.warning("edge server %s %s: frames finish on the device until it "
                            "answers (retrying every %.1f s)", self.endpoint, what,
                            self._retry_s)
            else:
                log.warning("edge server %s does not serve bundle %s (source sha256 %s...): "
                            "frames finish on the device; serve this bundle there "
                            "(`edgesdk serve BUNDLE`)", self.endpoint, self.name or "?",
                            self.bundle_id[:12])
        elif status == UP and self._warned is not None:
            self._warned = None
            log.info("edge server %s is up: offloading resumes", self.endpoint)

    def _on_failure(self, job: _Job, exc: TransportError, now: float) -> None:
        if job.kind == protocol.HELLO and getattr(exc, "code", None) == protocol.BUNDLE_MISMATCH:
            self.status = MISMATCH
            # "request 7: bundle ... digest X..., the device's has digest Y...: ..."
            self.mismatch = str(getattr(exc, "remote_message", exc)).split(": ", 1)[-1]
            self._unblamed.clear()  # another server: what timed out says nothing of it
            return
        if job.exploring:
            return
        if isinstance(exc, ServerBusy):
            # the server's own hint of when its queue has drained, within reason
            hint = exc.retry_after_s
            self._busy_until = now + (self._busy_backoff_s if hint is None else min(
                max(hint, self._busy_backoff_s / 4), MAX_BUSY_WAIT_S))
            return
        if job.kind == protocol.HEARTBEAT and job.payload_bytes:
            # A bandwidth probe that timed out: the link is slower than size / budget, and
            # that bound is the sample (the small heartbeat beside it tests liveness). An
            # infer's bound is what its budget left after the server's expected share
            # (LinkEstimator.on_offload_timeout).
            if isinstance(exc, Timeout):
                self.estimator.on_timeout(job.payload_bytes,
                                          (job.budget_s + job.held_s) * 1e3, now)
                self._probe_stuck = True
            return
        if isinstance(exc, (Timeout, Unreachable)):
            if job.kind == protocol.INFER:
                self.estimator.on_offload(failed=True)
            if job.checked:
                # checked when it became overdue, and blamed for its budget then: blamed
                # twice, a slow answer to the second hello (sent while the device computes
                # the next frames) could pin on the link what the first pinned on the server
                return
            if job.kind == protocol.INFER and isinstance(exc, Timeout):
                # the server did not answer in what the budget left it: it or the link is
                # slower than believed (or queued), which the hello that checks tells
                # (_blame); without this, a server slower than its welcome said, or a link
                # that fell, would be offloaded to, and timed out on, forever
                timed_out = self._timed_out(
                    job, job.budget_s + job.extra_wait_s + job.held_s, now)
                if getattr(exc, "refused", False):  # it answered: not the link
                    self._blame_one(timed_out, False, now)
                else:
                    self._unblamed.append(timed_out)
            if job.kind == protocol.HELLO and isinstance(exc, Timeout):
                self._reconnect_if_stuck(job)
            if job.kind == protocol.HELLO:
                # no answer within its budget: it waited behind an upload, or the server is
                # so loaded it cannot answer a hello (down either way); unreachable: gone
                self._lost_behind = sum(t.queued_at <= job.queued_at for t in self._unblamed
                                        ) if isinstance(exc, Timeout) else 0
                self._blame(None if isinstance(exc, Timeout) else 0.0, False, job, now)
            if getattr(exc, "refused", False):
                return  # the server answered it could not make it in time: it is up
            if job.kind == protocol.INFER and self.status == DOWN:
                return  # a hello failed while it was overdue: the server stays down
            # Hello failing means down; an infer failing means "check before trusting it",
            # with a hello at once: frames go to the device until it answers.
            self.status = DOWN if job.kind == protocol.HELLO else CHECKING
            if self.status == DOWN:
                # no connection at all, or connected and silent (stopped, or so loaded it
                # cannot answer a hello in time): a user acts differently on each. A
                # connection the link dropped itself, and a fresh one not yet up, says
                # nothing new (a stopped server accepts its TCP connect, never its
                # handshake)
                unreachable = isinstance(exc, Unreachable) and not (
                    self._reset_since_reply and self._down_reason == "unresponsive")
                self._down_reason = "unreachable" if unreachable else "unresponsive"
            if self.status == CHECKING:
                self._next_probe = now

    def _reconnect_if_stuck(self, hello: _Job) -> None:
        """After `hello` got no answer, reset the connection (in _run) when a stale probe
        may be queued ahead of the next hello, or when the link was down already and the
        hello went out on a connection that was up: it carried nothing but hellos, and
        the next goes out at once on a fresh one. An outage can leave TCP waiting out its
        retransmission backoff: in the e2e testbed (3 s at 125 bytes/s, a 0.25-core
        device), the link stayed unresponsive 1.6 s, and all 3 s after the outage, in 2 of
        16 turns, until the server's ZMTP heartbeat dropped the connection 6 s after its
        last bytes. Not a hello sent on a connection still being made: on a link whose
        round trips take a quarter of the hello's budget, the handshake and the hello
        would not fit it, and each reset would start the next one over. (An offload still
        awaited past its budget is sent again on the fresh connection, and refused.)"""
        if self._probe_stuck or (self.status == DOWN and hello.live):
            self._reconnect, self._probe_stuck = True, False

    def _on_reply(self, job: _Job, reply: Any, now: float) -> None:
        e = self.estimator
        extra: Mapping[str, Any] = reply.envelope.extra
        if isinstance(extra.get("load"), Mapping):
            e.server.observe_load(extra["load"])
        rtt_ms = (reply.rtt + job.held_s) * 1e3
        self._last_reply = now  # every reply below is traffic to the estimator
        self._probe_stuck = False  # what was queued ahead of this request has gone
        self._reset_since_reply = False
        if job.kind == protocol.HELLO:
            self._blame(rtt_ms, self.activity.since(job.activity), job, now)
            self._on_welcome(extra)
            e.on_small_message(rtt_ms, now)
        elif job.kind == protocol.HEARTBEAT:
            e.on_reply(job.payload_bytes, rtt_ms, 0.0, 0.0, now, computed=False,
                       busy=self.activity.since(job.activity))
        else:
            e.on_reply(job.payload_bytes, rtt_ms, reply.server_ms, reply.queue_ms, now,
                       self.server_tail_ms.get(job.cut or ""),
                       busy=self.activity.since(job.activity))
            e.on_offload(failed=False)
            self.status = UP

    def _blame(self, check_ms: float | None, busy: bool, hello: _Job, now: float) -> None:
        """The offloads that timed out, blamed by the hello that checked: those queued
        before it (it waited behind them) on the link or the server by its round trip
        (LinkEstimator.slow_check: None, it got no answer); those queued after it on the
        server, as no check follows them once the link is up.

        A late answer also dates the end of the uploads ahead of the hello (the same
        connection): when they are the timed-out ones just before it, the first with
        nothing ahead of it and each next one queued behind the one before (an engine
        with two frames in flight sends two), the link took from the first's queueing to
        now for all their bytes (LinkEstimator.on_uploads_ended)."""
        link_slow = self.estimator.slow_check(check_ms, busy)
        unblamed, self._unblamed = self._unblamed, []
        dated = self._ahead_of(hello, unblamed) if link_slow and check_ms is not None else []
        if dated and self.estimator.on_uploads_ended(
                sum(t.payload_bytes for t in dated), (now - dated[0].queued_at) * 1e3, now):
            unblamed = [t for t in unblamed if t not in dated]
        for timed_out in unblamed:
            self._blame_one(timed_out, link_slow and timed_out.queued_at <= hello.queued_at,
                            now)

    @staticmethod
    def _ahead_of(hello: _Job, timed_out: list[_TimedOut]) -> list[_TimedOut]:
        """The uploads the hello was queued right behind, if all of them timed out and the
        first had nothing ahead of it (numbers first..hello.upload, every one here); else
        none (an upload that was answered, or one of unknown size, was on the wire too)."""
        by_number = {t.upload: t for t in timed_out if t.upload}
        last = by_number.get(hello.upload)
        if last is None:
            return []
        first = last.upload
        while not by_number[first].alone:
            if first - 1 not in by_number:
                return []
            first -= 1
        return [by_number[n] for n in range(first, last.upload + 1)]

    def _blame_one(self, timed_out: _TimedOut, link_slow: bool, now: float) -> None:
        self.estimator.on_offload_timeout(timed_out.payload_bytes, timed_out.budget_ms,
                                          timed_out.tail_ms, now, link_slow=link_slow)

    def _on_welcome(self, extra: Mapping[str, Any]) -> None:
        bundles = extra.get("bundles")
        served = bundles.get(self.bundle_id) if isinstance(bundles, Mapping) else None
        if not isinstance(served, Mapping):
            self.status = NOT_SERVED
            return
        tails = {}
        for cut in served.get("cuts") or ():
            if isinstance(cut, Mapping) and isinstance(cut.get("tail_ms"), (int, float)):
                tails[str(cut.get("id"))] = float(cut["tail_ms"])
        self.server_tail_ms = tails
        self.welcome = served
        self.welcomes += 1
        self.status = UP
