"""The broker's scheduling state without I/O: the queue of infer jobs and the idle workers.

    d = Dispatcher(max_queue=8)
    action, worker = d.admit(job)          # ("run", worker) | ("queued", None) | ("busy", None)
    next_job, expired = d.worker_ready(worker, now)

Like the client's protocol.ClientProtocol, it decides and never touches a socket, so the
load balancing (the ZeroMQ guide's LRU queue) is unit-tested without processes; the broker
(broker.py) drives it from its poll loop.
"""

from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass
from typing import Any


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


__all__ = ["Dispatcher", "Job"]
