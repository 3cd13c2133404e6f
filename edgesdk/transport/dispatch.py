"""The broker's scheduling state without I/O: the queue of infer jobs and the idle workers.

    d = Dispatcher(max_queue=8)            # scheduler="edf" (default) or "fifo"
    admission = d.admit(job, now)          # .verdict: "run" (on .worker) | "queued" |
                                           #   "busy" | "late"; .displaced: jobs pushed out
    batch, dropped = d.worker_ready(worker, now)   # the jobs it runs next, together

Like the client's protocol.ClientProtocol, it decides and never touches a socket, so the
scheduling is unit-tested without processes; the broker (broker.py) drives it from its
poll loop.

Schedulers. Many devices share few workers, and each request carries a deadline (its
budget) and, from the broker, the compute it is expected to take (`Job.service_s`, see
ServiceTimes).

- "edf" (the default): earliest deadline first, over jobs that can still make it. A job
  that cannot finish by its deadline even if started now, or behind the queued work with
  earlier deadlines spread over the workers, is refused at admission ("late": the broker
  answers `expired` at once, so its device falls back now instead of at its deadline);
  one that can no longer make it when a worker frees is dropped unstarted. Under
  overload each device gets a fair share: when the queue is full, a newcomer from a
  device that holds less of the server than another (its jobs started recently and
  queued, over its weight, Job.weight: latency-sensitive tasks weigh more) takes the
  place of that device's latest-deadline job, which is answered busy. Likewise a
  newcomer that would be late behind the queued work due before it takes the place of
  such work from devices that hold more than its own.
- "fifo": arrival order; a job is dropped only once its deadline has passed, and a full
  queue answers busy. The scheduler before "edf", kept to measure it against.

Free workers are used least recently used first (the ZeroMQ guide's LRU queue).

Batches. When a worker frees and the job chosen for it is for a (bundle, cut) the handler
runs in batches (`batchable`), queued jobs for the same key join it, earliest deadline
first, up to the size ServiceTimes.batch_size allows, while every member still ends by its
deadline at the batch's expected compute and the most urgent job of another key, when it
is due before the one joining, still fits after the batch. Batches form only from what
waits when a worker frees (Triton's default of no added delay): a lone request never
waits for company.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

SCHEDULERS = ("edf", "fifo")
# A job is taken to fit when its expected compute, times this, ends by its deadline: the
# compute of a loaded server varies around its average, and a result that misses its
# deadline by a little was computed for nothing.
SAFETY = 1.25
SERVED_HALF_LIFE_S = 1.0  # how long a device's recent service counts against its next job
MAX_SERVED = 1024  # devices whose recent service is tracked before the idle ones are forgotten
MAX_SERVICE_KEYS = 4096  # (bundle, cut, batch size) times learned; a handler serves fewer
BATCH_GAIN = 0.05  # a batch twice the size must cut the time per member by this to grow
PROBE_EVERY = 64  # batches of a key between two tries of the next size up
MAX_GIVE_WAY = 2  # queued jobs one late newcomer may displace to get its device's share
UNTRIED = 1.5  # a batch size not measured yet: priced this much slower per member (measured
# here: convolution tails in batches of 8 ran at 0.7x the throughput of one at a time)


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
    service_s: float = 0.0  # the compute it is expected to take (ServiceTimes)
    weight: float = 1.0  # its device's share of a full queue
    key: tuple = ()  # (bundle, cut): what ServiceTimes learns its compute under
    device: str = ""  # who sent it, for the per-device metrics (broker._device_name)
    chain: Any = None  # its chain fields (route.Chained), for a stage of a chain


@dataclass
class Batch:
    """The jobs one worker computes together (one, unless the key is batchable)."""

    jobs: list[Job]
    started: float
    service_s: float  # its expected compute

    @property
    def id(self) -> int:  # what the worker's answer names it by
        return self.jobs[0].seq

    @property
    def deadline(self) -> float:  # the earliest of its members': it was sized to end by it
        return min(j.deadline for j in self.jobs)


class Admission(NamedTuple):
    verdict: str  # "run" | "queued" | "busy" | "late"
    worker: bytes | None = None  # for "run"
    displaced: tuple[Job, ...] = ()  # queued jobs pushed out for this one (answer busy)


class Dispatcher:
    """Which job runs on which worker (see the module docstring; no I/O).

    admit() places a new job; worker_ready() is called when a worker starts or finishes
    and returns its next jobs; worker_lost() takes a dead worker out and returns the jobs
    it held. Jobs dropped from the queue (expired, or unable to finish in time) are handed
    back so the broker can answer them. max_batch: the most jobs one batch may hold (1:
    no batching); times: the ServiceTimes that size batches; batchable: the keys the
    handler runs in batches (the broker fills it from the handler's description).
    """

    def __init__(self, max_queue: int, scheduler: str = "edf", max_batch: int = 1,
                 times: ServiceTimes | None = None) -> None:
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler is {scheduler!r}, expected one of {SCHEDULERS}")
        self.max_queue = max_queue
        self.scheduler = scheduler
        self.max_batch = max_batch
        self.times = times if times is not None else ServiceTimes()
        self.batchable: set[tuple] = set()
        self.idle: deque[bytes] = deque()
        self.running: dict[bytes, Batch] = {}
        # (deadline (edf) or arrival (fifo), admission number, job): a heap
        self._queue: list[tuple[float, int, Job]] = []
        self._admitted = itertools.count()
        self._per_client: dict[bytes, int] = {}  # queued jobs per device
        self._served: dict[bytes, tuple[float, float]] = {}  # device: (decayed jobs, when)

    # -- the queue ---------------------------------------------------------------------------
    @property
    def queue(self) -> list[Job]:
        """The queued jobs, in no particular order."""
        return [entry[2] for entry in self._queue]

    def __len__(self) -> int:
        return len(self._queue)

    def _push(self, job: Job) -> None:
        order = job.deadline if self.scheduler == "edf" else job.received
        heapq.heappush(self._queue, (order, next(self._admitted), job))
        self._per_client[job.client] = self._per_client.get(job.client, 0) + 1

    def _forget(self, job: Job) -> None:
        left = self._per_client[job.client] - 1
        if left:
            self._per_client[job.client] = left
        else:
            del self._per_client[job.client]

    def _pop(self) -> Job:
        job = heapq.heappop(self._queue)[2]
        self._forget(job)
        return job

    def _remove(self, jobs: Iterable[Job]) -> None:
        gone = {id(j) for j in jobs}
        for j in jobs:
            self._forget(j)
        self._queue = [e for e in self._queue if id(e[2]) not in gone]
        heapq.heapify(self._queue)

    @staticmethod
    def _fits(job: Job, start: float) -> bool:
        """Whether `job`, started at `start`, ends by its deadline (with SAFETY)."""
        return start + job.service_s * SAFETY <= job.deadline

    def _feasible(self, job: Job, now: float) -> bool:
        """Whether `job` can still finish by its deadline (edf), or its deadline has not
        passed (fifo)."""
        return self._fits(job, now) if self.scheduler == "edf" else now < job.deadline

    # -- admission ---------------------------------------------------------------------------
    def admit(self, job: Job, now: float | None = None) -> Admission:
        """Run it now, queue it, or refuse it (busy; late: it cannot make its deadline)."""
        now = job.received if now is None else now
        edf = self.scheduler == "edf"
        if edf and not self._fits(job, now):
            return Admission("late")
        if self.idle:
            worker = self.idle.popleft()
            self._start(worker, [job], now)
            return Admission("run", worker)
        displaced: tuple[Job, ...] = ()
        if edf:
            late_by = now + self._wait_s(job, now) + job.service_s * SAFETY - job.deadline
            if late_by > 0:
                room = self._make_room(job, late_by, now)
                if room is None:
                    return Admission("late")
                self._remove(room)
                displaced = room
        if len(self._queue) >= self.max_queue:  # (never after making room: it freed some)
            victim = self._victim(job, now) if edf else None
            if victim is None:
                return Admission("busy")
            self._remove([victim])
            displaced = (victim,)
        self._push(job)
        return Admission("queued", None, displaced)

    def _make_room(self, job: Job, late_by: float, now: float) -> tuple[Job, ...] | None:
        """The queued jobs that give way to `job` (edf), which would end `late_by` seconds
        past its deadline: jobs due before it from devices that hold more than its own
        would with it (see _load), the one holding most first, each its latest-deadline
        job, at most MAX_GIVE_WAY of them. None if that cannot make it fit: then no job
        gives way and `job` is refused.

        Without this, overload is shed by deadline alone: a device whose budgets are
        tight finds the queue ahead of it full more often and is refused more (measured:
        a 60 ms device got half the frames of a 90 ms one), where it should get its
        share."""
        workers = len(self.running) + len(self.idle)
        if not workers:
            return None
        need = late_by * workers  # the compute due before it to take out of its way
        mine = self._load(job.client, now, job.weight) + 1.0 / job.weight
        ahead: dict[bytes, list[Job]] = {}
        for _, _, j in sorted(self._queue):  # deadline order: the latest ends up last
            if j.deadline <= job.deadline and j.client != job.client:
                ahead.setdefault(j.client, []).append(j)
        weights = {c: self._weight(c) for c in ahead}
        loads = {c: self._load(c, now, weights[c]) for c in ahead}
        room: list[Job] = []
        while need > 0:
            top = max(loads, key=loads.__getitem__, default=None)
            if top is None or loads[top] <= mine or len(room) == MAX_GIVE_WAY:
                return None
            victim = ahead[top].pop()
            room.append(victim)
            need -= victim.service_s
            loads[top] -= 1.0 / weights[top]
            if not ahead[top]:
                del loads[top]
        return tuple(room)

    def drain_s(self, now: float, due_by: float = math.inf) -> float:
        """Seconds until the workers are through the running jobs' expected remaining
        compute and the queued jobs due by `due_by`, spread over every worker (inf: no
        worker)."""
        workers = len(self.running) + len(self.idle)
        if not workers:
            return math.inf
        ahead = sum(max(b.started + b.service_s - now, 0.0) for b in self.running.values())
        ahead += sum(e[2].service_s for e in self._queue if e[2].deadline <= due_by)
        return ahead / workers

    def _wait_s(self, job: Job, now: float) -> float:
        """When a worker would start `job` (edf: after the queued work due before it)."""
        return self.drain_s(now, job.deadline)

    def _victim(self, newcomer: Job, now: float) -> Job | None:
        """The queued job a full queue gives up for `newcomer` (edf): the latest-deadline
        job of the device holding most (see _load), if it holds more than the newcomer's
        device would with it."""
        if not self._per_client:
            return None
        loads = {c: self._load(c, now) for c in self._per_client}
        top = max(loads, key=loads.__getitem__)
        mine = self._load(newcomer.client, now, newcomer.weight) + 1.0 / newcomer.weight
        if top == newcomer.client or loads[top] <= mine:
            return None
        return max((e[2] for e in self._queue if e[2].client == top),
                   key=lambda j: (j.deadline, j.seq))

    def _load(self, client: bytes, now: float, weight: float | None = None) -> float:
        """How much of the server a device holds: its jobs started recently (see
        _served_at) and its jobs queued, over its weight (default: its queued jobs'). The
        one measure for both ways a job gives way (_victim, _make_room): with two, two
        devices could each be "the one holding more" and push each other's jobs out in
        turn."""
        w = self._weight(client) if weight is None else weight
        return (self._served_at(client, now) + self._per_client.get(client, 0)) / w

    def _weight(self, client: bytes) -> float:
        return next((e[2].weight for e in self._queue if e[2].client == client), 1.0)

    # -- workers -----------------------------------------------------------------------------
    def worker_ready(self, worker: bytes, now: float) -> tuple[list[Job], list[Job]]:
        """The worker is free: (the jobs it should run now, together: none if the queue is
        empty; jobs dropped from the queue on the way because they can no longer make
        their deadline)."""
        self.running.pop(worker, None)
        dropped = self.expire(now)
        if self._queue:
            jobs = self._companions(self._next(now), now)
            self._start(worker, jobs, now)
            return jobs, dropped
        if worker not in self.idle:
            self.idle.append(worker)
        return [], dropped

    def _companions(self, first: Job, now: float) -> list[Job]:
        """`first` and the queued jobs that run with it (see the module docstring): while
        every member still ends by its deadline, and a job of another cut due before the
        one joining still fits after the batch (it would have run before it, alone)."""
        if first.key not in self.batchable or self.max_batch < 2:
            return [first]
        size = self.times.batch_size(first.key, self.max_batch)
        same = sorted((e[2] for e in self._queue if e[2].key == first.key),
                      key=lambda j: (j.deadline, j.seq))
        other = min((e[2] for e in self._queue if e[2].key != first.key),
                    key=lambda j: (j.deadline, j.seq), default=None)
        batch, due = [first], first.deadline
        for job in same[:size - 1]:
            ends = now + self.times.expected(first.key, len(batch) + 1) * SAFETY
            if ends > min(due, job.deadline) or (
                    other is not None and other.deadline < job.deadline
                    and not self._fits(other, ends)):
                break
            batch.append(job)
            due = min(due, job.deadline)
        if len(batch) > 1:
            self._remove(batch[1:])
        return batch

    def _next(self, now: float) -> Job:
        """Take the next job off the (feasible, non-empty) queue. fifo: the first to arrive.
        edf: the earliest deadline, unless the device with the least recent service (jobs
        started, each counting half after SERVED_HALF_LIFE_S) has a job waiting and
        running it first still leaves the earliest-deadline job time to finish: then
        that device's earliest job (deadline-aware fair sharing: a device whose jobs
        always have later deadlines is not starved while others keep coming)."""
        urgent = self._queue[0][2]
        if self.scheduler == "edf" and len(self._per_client) > 1:
            served = {c: self._served_at(c, now) for c in self._per_client}
            least = min(served, key=served.__getitem__)
            if least != urgent.client and served[least] < served[urgent.client]:
                fair = min(e for e in self._queue if e[2].client == least)[2]
                if self._fits(urgent, now + fair.service_s * SAFETY):
                    self._remove([fair])
                    return fair
        return self._pop()

    def _start(self, worker: bytes, jobs: list[Job], now: float) -> None:
        key = jobs[0].key
        service = jobs[0].service_s if len(jobs) == 1 else self.times.expected(key, len(jobs))
        self.running[worker] = Batch(jobs, now, service)
        for job in jobs:
            self._served[job.client] = (self._served_at(job.client, now) + 1.0, now)

    def _served_at(self, client: bytes, now: float) -> float:
        """The device's jobs started recently, each counting less with age."""
        count, when = self._served.get(client, (0.0, now))
        return count * 0.5 ** ((now - when) / SERVED_HALF_LIFE_S)

    def finished(self, worker: bytes, batch_id: int) -> Batch | None:
        """The batch the worker just finished, if it is the one we gave it."""
        batch = self.running.get(worker)
        if batch is None or batch.id != batch_id:
            return None
        del self.running[worker]
        return batch

    def worker_lost(self, worker: bytes) -> list[Job]:
        """Take a dead worker out; the jobs it was computing."""
        with contextlib.suppress(ValueError):
            self.idle.remove(worker)
        batch = self.running.pop(worker, None)
        return batch.jobs if batch is not None else []

    def expire(self, now: float) -> list[Job]:
        """Queued jobs that can no longer make their deadline (removed from the queue)."""
        dropped = [e[2] for e in self._queue if not self._feasible(e[2], now)]
        if dropped:
            self._remove(dropped)
        if len(self._served) > MAX_SERVED:  # devices long gone: their counts are ~0
            self._served = {c: v for c, v in self._served.items()
                            if self._served_at(c, now) > 0.01}
        return dropped

    def next_expiry(self, n: int = 8) -> list[float]:
        """When the next few queued jobs stop being feasible (for the broker's timer)."""
        edf = self.scheduler == "edf"
        return heapq.nsmallest(n, (e[2].deadline - (e[2].service_s * SAFETY if edf else 0.0)
                                   for e in self._queue))

    def drain_queue(self) -> list[Job]:
        jobs = [e[2] for e in self._queue]
        self._queue.clear()
        self._per_client.clear()
        return jobs


class ServiceTimes:
    """The compute an infer request is expected to take, per (bundle, cut): an EWMA of
    the workers' measured times (gain `gain`), starting from the tail times the handler
    describes (its welcome's bundles map: cuts[].tail_ms), else 0 (unknown: never late).
    Batches of n are learned per n, as the time of each member (the batch's over n).

        times = ServiceTimes(); times.prime(server.description)
        times.expected(("abc...", "c1")); times.observe(("abc...", "c1"), 0.004)
        times.batch_size(("abc...", "c1"), max_batch=8)   # how many to run together

    Whether batching pays depends on the tail and the machine: on a CPU, convolutions of
    a batch are often no faster per image than one by one (measured here: 0.7-1.0x the
    throughput for SqueezeNet's and PP-OCR's conv tails), while a light tail gains from
    sharing one call's overhead. So batch_size grows a key's batches by doubling only
    while the time per member keeps falling by BATCH_GAIN, and tries the next size up
    once every PROBE_EVERY batches in case that changed.
    """

    def __init__(self, gain: float = 0.1) -> None:
        self._gain = gain
        self._s: dict[tuple, float] = {}  # (key, batch size): seconds per member
        self._since_probe: dict[tuple, int] = {}

    def prime(self, description: Mapping[str, Any]) -> None:
        """Start from the handler's own description (ignored where it says nothing)."""
        for bundle, entry in (description or {}).items():
            cuts = entry.get("cuts") if isinstance(entry, Mapping) else None
            for cut in cuts or ():
                ms = cut.get("tail_ms") if isinstance(cut, Mapping) else None
                if isinstance(ms, (int, float)) and math.isfinite(ms) and ms >= 0:
                    self._s.setdefault(((bundle, str(cut.get("id"))), 1), ms / 1e3)

    def expected(self, key: tuple, n: int = 1) -> float:
        """Seconds to compute n requests for `key` together. A batch size not measured
        yet is priced at the nearest smaller measured size's time per member, times
        UNTRIED: a batch may well be slower per member (convolutions on a CPU)."""
        size = _bucket(n)
        per = self._s.get((key, size))
        if per is not None:
            return per * n
        while size > 1:
            size //= 2
            per = self._s.get((key, size))
            if per is not None:
                return per * n * UNTRIED
        return 0.0

    def observe(self, key: tuple, seconds: float, n: int = 1) -> None:
        """A batch of n for `key` took `seconds` in a worker (learned per power of two:
        a batch of 5 teaches the size 4)."""
        n = max(int(n), 1)
        entry = (key, _bucket(n))
        if not (math.isfinite(seconds) and seconds >= 0) or (
                entry not in self._s and len(self._s) >= MAX_SERVICE_KEYS):
            return
        per, old = seconds / n, self._s.get(entry)
        self._s[entry] = per if old is None else old + self._gain * (per - old)

    def batch_size(self, key: tuple, max_batch: int) -> int:
        """How many requests for `key` to run together, at most max_batch (see above)."""
        size = 1
        while size * 2 <= max_batch:
            per, bigger = self._s.get((key, size)), self._s.get((key, size * 2))
            if per is None or bigger is None:
                return size * 2  # not measured yet: try it
            if bigger > per * (1 - BATCH_GAIN):
                break
            size *= 2
        probe = self._since_probe.get(key, 0) + 1
        self._since_probe[key] = probe % PROBE_EVERY
        return min(size * 2, max_batch) if probe >= PROBE_EVERY else size


def _bucket(n: int) -> int:
    """The power of two at or below n >= 1: the size a batch of n is learned under."""
    return 1 << (n.bit_length() - 1)


__all__ = ["SCHEDULERS", "Admission", "Batch", "Dispatcher", "Job", "ServiceTimes"]
