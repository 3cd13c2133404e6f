"""What a cgroup CPU quota costs this process beyond its timed runs (QuotaStalls).

A CPU quota (a container's ``--cpus``, a Kubernetes CPU limit, the e2e testbed's throttled
device) lets a run go at full speed until its group has spent the period's quota, and the
kernel acts on it only at its next scheduler tick; the debt is then paid by stalling the
group for whole periods. So a 3.5 ms run under 1 ms per 4 ms often finishes unthrottled,
and the group stalls ~11 ms *after* it, outside every timer the engine has. Timed alone,
such a device looked 4x faster than it ran: the engine measured PP-LCNet's device slowdown
at 0.9-1.3 while its frames took 4.2-5.6x the profile, and the planner never offloaded it.

The kernel counts those stalls: cpu.stat's throttled time (cgroup v2 ``throttled_usec``,
v1 ``throttled_time`` in ns). `QuotaStalls.stretch` turns them into the wall time that one
millisecond of a thread's CPU costs lately: 1 + throttled time / the group's CPU time, over
the last STRETCH_WINDOW_S or so. The kernel sums both per CPU, so with D of the group's
threads running at once under a quota of q cores the stretch is D / q, what each of them
sees. (Where the group's own CPU time is not readable, v1 without cpuacct beside cpu, this
process's stands in for it.) A run is then charged its wall time plus the stall its
thread's CPU time caused, cpu x (stretch - 1), less the stall its timer saw (the time its
thread was off the CPU there) beyond what an earlier run was already charged for: a stall
counts once wherever it lands. Where no quota binds (no cgroup, no quota, a process that
stays under it) the stretch is exactly 1 and a run costs its wall time, as before: a
whole-frame wall clock would instead charge every run for the Python around it.

The quota may sit on the process's own group or on an ancestor (a Kubernetes pod's limit
above its container's group) as far as this process sees the hierarchy (a container sees
its own group as the root), and may be set after the engine starts (the testbed applies it
after setup): every group from the process's own up to the visible root is read, and the
one whose quota stretches most decides. The groups are found once: a process moved to
another group later keeps reading the first one's.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["QuotaStalls", "cpu_group_dirs"]

STRETCH_WINDOW_S = 1.0  # spans whole quota periods (Docker's default is 100 ms)
READ_GAP_S = 0.02  # how often the counters are read while a group has a quota
IDLE_READ_GAP_S = 0.5  # ... and while none has (the common case: a device without one)
MIN_CPU_S = 1e-3  # below this much CPU in the window, the stretch says nothing: 1
OWED_GRACE_S = 0.1  # a charged stall not seen by a timer within its length and this: gone
_FIELDS = {"throttled_usec": ("throttled", 1e-6), "throttled_time": ("throttled", 1e-9),
           "usage_usec": ("usage", 1e-6)}  # cpu.stat fields kept, in seconds
_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(path: str) -> str:
    """mountinfo escapes blanks and backslashes in paths as octal (\\040)."""
    return _OCTAL.sub(lambda m: chr(int(m[1], 8)), path)


def _under(group: str, root: str) -> str | None:
    """`group`'s path below a mount of `root` ("" for the root itself); None if outside."""
    if root == "/":
        return group
    if group == root or group.startswith(root.rstrip("/") + "/"):
        return group[len(root.rstrip("/")):]
    return None


def cpu_group_dirs(proc_cgroup: str, mountinfo: str) -> list[Path]:
    """The directories of this process's CPU cgroup and of its ancestors up to the root
    this process sees, nearest first; [] where no CPU hierarchy is mounted.

    proc_cgroup, mountinfo: the text of /proc/self/cgroup and /proc/self/mountinfo. The v1
    ``cpu`` controller is preferred where it is mounted (on a hybrid system, the quota is
    there); else the unified v2 hierarchy."""
    v1 = v2 = None
    for line in proc_cgroup.splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hid == "0" and controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    for fstype, group in (("cgroup", v1), ("cgroup2", v2)):
        if group is None:
            continue
        for line in mountinfo.splitlines():
            fields, _, tail = line.partition(" - ")
            f, t = fields.split(), tail.split()
            if len(f) < 5 or len(t) < 3 or t[0] != fstype:
                continue
            if fstype == "cgroup" and "cpu" not in t[2].split(","):
                continue
            rel = _under(group, _unescape(f[3]))
            if rel is None:
                continue
            mount = Path(_unescape(f[4]))
            parts = [p for p in rel.split("/") if p]
            return [mount.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]
    return []


@dataclass
class _Group:
    """One cgroup's open files: cpu.stat, its quota (v2 cpu.max; v1 cpu.cfs_quota_us and
    cpu.cfs_period_us) and, on v1 where cpuacct shares the mount, cpuacct.usage."""

    stat: int
    quota: int
    period: int | None = None
    usage: int | None = None


def _open(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None


def _open_group(d: Path) -> _Group | None:
    """The group's files, or None if it has no quota files (the v1 and v2 roots)."""
    stat = _open(d / "cpu.stat")
    if stat is None:
        return None
    v2 = _open(d / "cpu.max")
    if v2 is not None:
        return _Group(stat, v2)
    quota, period = _open(d / "cpu.cfs_quota_us"), _open(d / "cpu.cfs_period_us")
    if quota is None or period is None:
        for fd in (stat, quota, period):
            if fd is not None:
                os.close(fd)
        return None
    return _Group(stat, quota, period, _open(d / "cpuacct.usage"))


def _close_all(groups: list[_Group]) -> None:
    for g in groups:
        for fd in (g.stat, g.quota, g.period, g.usage):
            if fd is not None:
                with contextlib.suppress(OSError):  # closed under us (closerange, say)
                    os.close(fd)
    groups.clear()


def _read(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode()


def _sample(g: _Group) -> tuple[float, float | None, float | None]:
    """(throttled s, the group's CPU s or None, the quota in cores or None without one).
    Raises OSError or ValueError if the group went away or reads oddly."""
    got: dict[str, float] = {}
    for line in _read(g.stat).splitlines():
        key, _, value = line.partition(" ")
        if key in _FIELDS:
            name, scale = _FIELDS[key]
            got[name] = int(value) * scale
    if g.period is None:  # v2: "max 100000" or "25000 100000"
        quota, period = _read(g.quota).split()[:2]
    else:
        quota, period = _read(g.quota).strip(), _read(g.period).strip()
    cores = None if quota in ("max", "-1") else int(quota) / max(int(period), 1)
    usage = got.get("usage")
    if g.usage is not None:
        usage = int(_read(g.usage)) * 1e-9
    return got.get("throttled", 0.0), usage, cores


class QuotaStalls:
    """The stalls a CPU quota puts on this process's runs (see the module docs).

        stalls = QuotaStalls.of_this_process()
        started = stalls.start()
        ms = run()                                  # its wall time
        ms + stalls.beyond(started, ms)             # with the stalls it caused, wherever
        stalls.close()
    """

    def __init__(self, dirs: Sequence[Path], *, clock=time.monotonic,
                 cpu_clock=time.process_time, thread_clock=time.thread_time,
                 cpus: int | None = None) -> None:
        """dirs: cgroup directories (see cpu_group_dirs); none readable: no run is ever
        charged more. clock, cpu_clock, thread_clock: wall, this process's and this
        thread's CPU time. cpus: the CPUs this process may run on (default: its affinity),
        which bound how many of its threads a quota can stall at once."""
        if cpus is None:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
                os.cpu_count() or 1)
        self._cpus = max(int(cpus), 1)
        self._owed_ms, self._owed_until = 0.0, -float("inf")  # see beyond()
        self._groups = [g for g in map(_open_group, dirs) if g is not None]
        # closed by close(), or when the engine is dropped without it
        self._close = weakref.finalize(self, _close_all, self._groups)
        self._clock, self._cpu, self._thread = clock, cpu_clock, thread_clock
        # (wall, process CPU, each group's sample) READ_GAP_S or more apart, over about
        # STRETCH_WINDOW_S (at most twice that: after an idle spell, the first read of the
        # new one spans no CPU and says 1)
        self._samples: deque[tuple[float, float, list]] = deque()
        self._stretch = 1.0
        self._gap = IDLE_READ_GAP_S
        self._read_at = -float("inf")
        self.stretch()

    @classmethod
    def of_this_process(cls) -> QuotaStalls:
        """Stalls of the groups this process is in (Linux); elsewhere, none."""
        try:  # paths are bytes to the kernel (a mount point may not be UTF-8)
            dirs = cpu_group_dirs(os.fsdecode(Path("/proc/self/cgroup").read_bytes()),
                                  os.fsdecode(Path("/proc/self/mountinfo").read_bytes()))
        except (OSError, ValueError):
            dirs = []
        return cls(dirs)

    def close(self) -> None:
        """Close the group files (no run is charged more from now on)."""
        self._close()
        self._stretch = 1.0

    def _measure(self, now: float) -> float:
        """Read the counters now; the stretch since the window's oldest sample."""
        try:
            groups = [_sample(g) for g in self._groups]
        except (OSError, ValueError):
            self.close()  # the group went away, or is not what it seemed: charge nothing
            return 1.0
        cpu = self._cpu()
        samples = self._samples
        samples.append((now, cpu, groups))
        while len(samples) > 1 and (now - samples[1][0] >= STRETCH_WINDOW_S
                                    or now - samples[0][0] > 2 * STRETCH_WINDOW_S):
            samples.popleft()
        self._gap = READ_GAP_S if any(cores for _, _, cores in groups) else IDLE_READ_GAP_S
        _, cpu0, groups0 = samples[0]
        stretch = 1.0
        for (thr, use, cores), (thr0, use0, _) in zip(groups, groups0):
            if cores is None:  # no quota (now): this group throttles nothing
                continue
            used = use - use0 if use is not None and use0 is not None else cpu - cpu0
            if used >= MIN_CPU_S:
                # at most all of this process's CPUs stalled at once, beyond the quota
                most = self._cpus / max(cores, 1e-6) - 1.0
                stretch = max(stretch, 1.0 + min(max(thr - thr0, 0.0) / used, most))
        return stretch

    def stretch(self) -> float:
        """Wall time per unit of CPU time over the last window (>= 1)."""
        if self._groups:
            now = self._clock()
            if now - self._read_at >= self._gap:
                self._read_at = now
                self._stretch = self._measure(now)
        return self._stretch

    @property
    def last(self) -> float:
        """The stretch as last read: no file read, so another thread may ask (the link's)."""
        return self._stretch

    def start(self) -> float | None:
        """Before a run on this thread: its CPU clock, or None where no quota stalled this
        process lately (the run is then charged its wall time, and costs no more)."""
        if self.stretch() <= 1.0:
            return None
        return self._thread()

    def beyond(self, started: float | None, wall_ms: float) -> float:
        """What to add to the wall time (`wall_ms`) of a run begun at `started`, so that it
        carries the stall its CPU caused, once.

        The run's stall: its thread's CPU x (stretch - 1). Its timer saw the time the
        thread was off the CPU; of that, up to what the previous run was charged beyond
        its own timer (and within that stall's time since) was that run's stall, landing
        here: it is taken off this run. The rest was this run's own, and the charge is
        what remains of its stall beyond it (>= 0). Intra-op threads of the same run are
        stalled alongside this one, so the calling thread's CPU is the run's measure."""
        if started is None:
            return 0.0
        # the CPU clock was read before the run's timer started and after it stopped: on
        # a run of a few microseconds (a digits segment) those reads are much of what it
        # shows, and each one charged (stretch - 1) times over; no more than the wall
        cpu_ms = min((self._thread() - started) * 1e3, wall_ms)
        off_ms = wall_ms - cpu_ms
        now = self._clock()
        paid = min(off_ms, self._owed_ms) if now <= self._owed_until else 0.0
        own = max(cpu_ms * (self._stretch - 1.0) - (off_ms - paid), 0.0)
        self._owed_ms, self._owed_until = own, now + own / 1e3 + OWED_GRACE_S
        return own - paid
