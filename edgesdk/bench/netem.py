"""The emulated testbed of the end-to-end benchmark: two Linux network namespaces joined by
a veth pair, the device->edge link shaped with tc, and a cgroup CPU quota for the device.

    with open_testbed(log=print) as tb:
        server = ServerProcess(tb.edge_command([...serve..., "--bind",
                                                f"tcp://{tb.edge_address}:5555"]))
        tb.set_rate(10.0)                                   # Mbit/s, device -> edge
        tb.replay_rates([12.0, 3.5, ...], start_at=t)       # one rate per second, or
        proc = tb.popen_device([...], cpu_quota=0.15)       # 15 % of one core

Shaping is a token bucket filter (tc tbf) on the device's veth: a rate (of TCP goodput), a
bucket of 1 ms at that rate (at least two full frames), and a queue of up to 2 s, so TCP
sees a slow link rather than losses. Changing the rate is one `tc qdisc change` (about
2 ms), then one UDP datagram from the device's namespace: tbf does not restart a dequeue
that its watchdog scheduled at the old rate, so after an outage the packets queued at
1 kbit/s stayed queued until the device's TCP sent something new, a retransmission timer
away (0.2-2.7 s, at random: the edge came back at 5.2-7.7 s of a 5 s outage in the
benchmark, whatever the strategy). Delay, jitter and loss are not emulated (they need
sch_netem, which this machine's kernel lacks): the RTT is the veth's, well under a
millisecond.

The device's CPU quota is a cgroup-v1 `cpu` group: 1 ms of CPU (the kernel's smallest
cfs_quota_us) per period of 1 ms / fraction, so the throttling stalls are as short as CFS
allows next to frame and network times (fraction 0.25: 3 ms a period; a run that overruns
the quota between two scheduler ticks pays the debt over several periods, ~11 ms after a
3.5 ms run, which the device's engine counts: edgesdk.engine.cpu_quota). Longer periods make
the device's own RTT and bandwidth samples wrong by the stall (a 10 ms period turned a
100 Mbit/s link into ~2 Mbit/s samples). The child joins the group before exec (a shell
writes its own pid to cgroup.procs, then execs into the namespace), so no instruction of
the device runs unthrottled. It enters the namespace with `nsenter --net`, not `ip netns
exec`, which remounts /sys: the device's engine reads its cgroup's throttled time there,
as it would in a container with a CPU limit (edgesdk.engine.cpu_quota).

Weights. The machine may be running other work (a shared CI box, other benchmarks). The
device's group and the server's (`edge_command` joins it; `popen_edge`, for other devices'
load, does not) get cpu.shares CPU_SHARES, 8x an ordinary process's weight, so that under
contention the quota sets the device's speed and the server keeps about a core, as on a
dedicated edge box, instead of whatever is left over.

Without root, `ip netns`, tc or the cgroup, `open_testbed` returns a LoopbackTestbed: both
sides on 127.0.0.1, no CPU quota, and the rate enforced by the engine's in-process token
bucket (EdgeLink's `shaper`) in the device process, which it is told through the
EDGESDK_SHAPE environment variable. Its description says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
NETNS_DIR = Path("/run/netns")  # where `ip netns add` names its namespaces
MIN_QUOTA_US = 1_000  # the kernel's smallest cfs_quota_us
CPU_SHARES = 8192  # the device's and the server's cgroups: 8x a process's default weight
MIN_RATE_MBIT = 0.001  # tbf cannot be 0: an outage is 1 kbit/s (125 bytes/s)
TCP_OVERHEAD = 1514 / 1448  # link bytes per TCP payload byte (Ethernet + IP + TCP headers)
SHAPE_ENV = "EDGESDK_SHAPE"  # loopback fallback: "rate_mbit" or "@file" of rates per second


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def _tbf(rate_mbit: float) -> list[str]:
    # The rate is TCP goodput: tbf counts whole Ethernet frames (1514 B per 1448 B of TCP
    # payload). The bucket holds 1 ms of tokens, at least two full frames: a bigger one
    # lets small uploads through at line rate and hides the rate (a 16 KiB bucket passed a
    # 16 KB tensor at 5x the rate at 0.1 Mbit/s); a one-frame bucket slowed bulk transfers
    # by 2-4 % at 5-10 Mbit/s.
    rate = max(rate_mbit, MIN_RATE_MBIT) * TCP_OVERHEAD
    burst = max(int(rate * 1e6 / 8 * 0.001), 3028)
    return ["tbf", "rate", f"{rate:.4f}mbit", "burst", str(burst), "latency", "2s"]


def _socket_in(netns: str) -> socket.socket:
    """A UDP socket in network namespace `netns` (NETNS_DIR/NAME): made on a thread that
    joins the namespace, since setns moves only the calling thread (os.setns is 3.12+)."""
    made: dict[str, object] = {}

    def make() -> None:
        try:
            fd = os.open(NETNS_DIR / netns, os.O_RDONLY)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:  # NEWNET
                    raise OSError(ctypes.get_errno(), f"setns into {netns} failed")
                made["socket"] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            finally:
                os.close(fd)
        except OSError as exc:
            made["error"] = exc

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    if "error" in made:
        raise made["error"]  # type: ignore[misc]
    return made["socket"]  # type: ignore[return-value]


def unavailable_reason() -> str | None:
    """Why the namespace testbed cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "not root"
    for tool, package in (("ip", "iproute2"), ("tc", "iproute2"), ("nsenter", "util-linux")):
        if shutil.which(tool) is None:
            return f"no `{tool}` ({package})"
    if not (CGROUP_CPU / "cgroup.procs").is_file():
        return f"no cgroup-v1 cpu controller at {CGROUP_CPU}"
    probe = subprocess.run(["ip", "netns", "add", f"edgesdk-probe-{os.getpid()}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"ip netns add failed: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", f"edgesdk-probe-{os.getpid()}"],
                   capture_output=True)
    return None


def _remove_stale() -> None:
    """Namespaces and cgroups of earlier runs whose process is gone (a crash, SIGKILL):
    their tags are the owner's pid, optionally followed by "x" and a suffix."""
    def dead(tag: str) -> bool:
        pid = tag.split("x", 1)[0]
        return pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists()

    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        name = line.split(" ", 1)[0]
        prefix, _, tag = name.rpartition("-")
        if prefix in ("edgesdk-dev", "edgesdk-edge", "edgesdk-mesh") and dead(tag):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
    for d in CGROUP_CPU.glob("edgesdk-*"):
        if dead(d.name.rpartition("-")[2]):
            with contextlib.suppress(OSError):
                d.rmdir()


def _cpu_group(group: Path, cpu_quota: float | None = None) -> None:
    """Make cgroup `group` (cpu.shares CPU_SHARES) and set its quota (see set_quota)."""
    group.mkdir(exist_ok=True)
    (group / "cpu.shares").write_text(str(CPU_SHARES))
    _set_quota(group, cpu_quota)


def _set_quota(group: Path, cpu_quota: float | None) -> None:
    """1 ms of CPU (the kernel's smallest quota) per period of 1 ms / fraction, so the
    throttling stalls are as short as CFS allows (0.25: at most 3 ms); None, 0 or 1:
    unthrottled."""
    check_quota(cpu_quota)
    (group / "cpu.cfs_quota_us").write_text("-1")
    if cpu_quota and cpu_quota < 1:
        (group / "cpu.cfs_period_us").write_text(str(round(MIN_QUOTA_US / cpu_quota)))
        (group / "cpu.cfs_quota_us").write_text(str(MIN_QUOTA_US))


def _in_netns(netns: str, argv: Sequence[str]) -> list[str]:
    """argv run in network namespace `netns`. `nsenter --net` leaves /sys as it is (`ip
    netns exec` remounts it, hiding the cgroup tree from the process)."""
    return ["nsenter", f"--net={NETNS_DIR / netns}", "--", *argv]


def _in_group(group: Path, netns: str, argv: Sequence[str]) -> list[str]:
    """argv run in network namespace `netns` by a shell that first joins cgroup `group`."""
    join = f'echo $$ > {group / "cgroup.procs"} && exec "$@"'
    return ["sh", "-c", join, "sh", *_in_netns(netns, argv)]


def _delete(namespaces: Sequence[str], groups: Sequence[Path]) -> None:
    """Kill what runs in the namespaces (a process left in one keeps it, and its cgroup,
    alive unnamed), delete them, then remove the cgroups once their processes are gone."""
    for ns in namespaces:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                              text=True).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    deadline = time.monotonic() + 5
    for group in groups:
        while group.is_dir() and time.monotonic() < deadline:
            try:
                group.rmdir()
            except OSError:  # EBUSY until the killed processes are reaped
                time.sleep(0.05)


class _Schedule:
    """Runs each action at its time.time() in the background, in order; `stop()` re-raises
    a failed action, so a run never goes on at a stale rate."""

    def __init__(self, actions: Sequence[tuple[float, Callable[[], object]]]) -> None:
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(sorted(actions, key=lambda
                                        a: a[0]),), daemon=True)
        self._thread.start()

    def _run(self, actions) -> None:
        try:
            for at, action in actions:
                if self._stop.wait(max(at - time.time(), 0.0)):
                    return
                action()
        except BaseException as exc:  # noqa: BLE001 - handed to stop()
            self._error = exc

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        if self._error is not None:
            raise RuntimeError(f"replaying the trace failed: {self._error}") from self._error


class NamespaceTestbed:
    """Device and edge namespaces, a shaped veth, a CPU cgroup (see the module docs)."""

    def __init__(self, tag: str | None = None) -> None:
        """tag: names the namespaces, veth and cgroup; the owner's pid (default), then
        optionally "x" and a suffix, so a later run can remove them if this one dies."""
        tag = tag or str(os.getpid())
        self.device_ns, self.edge_ns = f"edgesdk-dev-{tag}", f"edgesdk-edge-{tag}"
        self.device_address, self.edge_address = "10.213.0.1", "10.213.0.2"
        self._veth = (f"esd{tag}"[:15], f"ese{tag}"[:15])
        self.cgroup = CGROUP_CPU / f"edgesdk-{tag}"
        self.edge_cgroup = CGROUP_CPU / f"edgesdk-srv-{tag}"
        self.rate_mbit: float | None = None
        self._replays: list[_Schedule] = []
        self._kick: socket.socket | None = None  # see set_rate

    def __enter__(self) -> NamespaceTestbed:
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def _setup(self) -> None:
        _remove_stale()
        dev, edge = self.device_ns, self.edge_ns
        vd, ve = self._veth
        _run("ip", "netns", "add", dev)
        _run("ip", "netns", "add", edge)
        _run("ip", "link", "add", vd, "type", "veth", "peer", "name", ve)
        _run("ip", "link", "set", vd, "netns", dev)
        _run("ip", "link", "set", ve, "netns", edge)
        for ns, link, addr in ((dev, vd, self.device_address), (edge, ve, self.edge_address)):
            _run("ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", link)
            _run("ip", "-n", ns, "link", "set", link, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "netns", "exec", dev, "tc", "qdisc", "add", "dev", vd, "root", *_tbf(1000))
        self.rate_mbit = 1000.0
        self._kick = _socket_in(dev)
        for group in (self.cgroup, self.edge_cgroup):
            _cpu_group(group)

    def set_rate(self, mbit: float) -> None:
        """The device -> edge rate in Mbit/s, from now on."""
        _run("ip", "netns", "exec", self.device_ns, "tc", "qdisc", "change", "dev",
             self._veth[0], "root", *_tbf(mbit))
        self.rate_mbit = float(mbit)
        # one enqueue makes tbf dequeue at the new rate now (see the module docstring); the
        # discard port: nothing listens, nothing answers
        with contextlib.suppress(OSError):  # a kick lost is a slower recovery, not a failure
            self._kick.sendto(b"k", (self.edge_address, 9))

    def set_link(self, up: bool) -> None:
        """The device's interface up or down: down is an outage harder than a rate near
        0, with nothing queued and every send failing at once."""
        _run("ip", "-n", self.device_ns, "link", "set", self._veth[0], "up" if up else "down")

    def replay_rates(self, rates: Sequence[float], start_at: float, speed: float = 1.0) -> None:
        """Apply rates[i] at start_at + i / speed (time.time() clock), in the background."""
        self.schedule([(start_at + i / speed, functools.partial(self.set_rate, r))
                       for i, r in enumerate(rates)])

    def schedule(self, actions: Sequence[tuple[float, Callable[[], object]]]) -> None:
        """Run each (time.time(), action) in the background; stop_replays() ends them."""
        self._replays.append(_Schedule(actions))

    def shape_spec(self, rates: Sequence[float], start_at: float, speed: float) -> None:
        """The device's in-process shaper (loopback only): tc shapes this link."""
        return None

    def stop_replays(self) -> None:
        replays, self._replays = self._replays, []
        for r in replays:
            r.stop()

    def popen_device(self, argv: Sequence[str], cpu_quota: float | None = None,
                     **kw) -> subprocess.Popen:
        """Run argv in the device namespace, inside the CPU quota (fraction of one core;
        None, 0 or 1: unthrottled)."""
        self.set_quota(cpu_quota)
        return subprocess.Popen(_in_group(self.cgroup, self.device_ns, argv), **kw)

    def set_quota(self, cpu_quota: float | None) -> None:
        """The device cgroup's CPU quota from now on, also for processes already in it
        (None, 0 or 1: unthrottled)."""
        _set_quota(self.cgroup, cpu_quota)

    def edge_command(self, argv: Sequence[str]) -> list[str]:
        """argv, to run in the edge namespace and its cgroup (no quota, a high weight: the
        edge server's CPU, whatever else the machine runs)."""
        return _in_group(self.edge_cgroup, self.edge_ns, argv)

    def popen_edge(self, argv: Sequence[str], **kw) -> subprocess.Popen:
        """Run argv in the edge namespace, outside the server's cgroup (e.g. other devices'
        load on the server: clients, not the server's CPU)."""
        return subprocess.Popen(_in_netns(self.edge_ns, argv), **kw)

    def describe(self) -> dict:
        delay = "not emulated (no sch_netem)"
        return {"kind": "netns", "device_ns": self.device_ns, "edge_ns": self.edge_ns,
                "shaping": "tc tbf on the device's veth (device -> edge)",
                "delay_loss": delay,
                "cpu": f"cgroup-v1 cpu: {MIN_QUOTA_US} us of CPU per period of 1 ms / quota; "
                       f"device and server groups at cpu.shares {CPU_SHARES}",
                "description": (
                    f"testbed: namespaces {self.device_ns} / {self.edge_ns}, veth "
                    f"{self.device_address} -> {self.edge_address} shaped by tc tbf; "
                    f"device CPU by cgroup quota; delay/loss {delay}")}

    def close(self) -> None:
        try:
            self.stop_replays()
        finally:
            if self._kick is not None:
                self._kick.close()
            self._remove()

    def _remove(self) -> None:
        # a setup that failed before moving the veth into its namespace leaves it here
        subprocess.run(["ip", "link", "del", self._veth[0]], capture_output=True)
        _delete((self.device_ns, self.edge_ns), (self.cgroup, self.edge_cgroup))

    def __exit__(self, *exc: object) -> None:
        self.close()


class LoopbackTestbed:
    """The fallback: loopback, no CPU quota, rates enforced inside the device process."""

    device_address = edge_address = "127.0.0.1"

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.rate_mbit: float | None = None
        self._rates: list[float] | None = None
        self._start_at = 0.0
        self._speed = 1.0
        self._schedules: list[_Schedule] = []

    def __enter__(self) -> LoopbackTestbed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_replays()

    def set_rate(self, mbit: float) -> None:
        self.rate_mbit, self._rates = float(mbit), None

    def replay_rates(self, rates: Sequence[float], start_at: float, speed: float = 1.0) -> None:
        """Handed to the next device process (call before popen_device)."""
        self._rates, self._start_at, self._speed = list(rates), start_at, speed

    def stop_replays(self) -> None:
        self._rates = None
        schedules, self._schedules = self._schedules, []
        for s in schedules:
            s.stop()

    def schedule(self, actions: Sequence[tuple[float, Callable[[], object]]]) -> None:
        """Run each (time.time(), action) in the background (rates are the device's
        shaper's business here: see shape_spec)."""
        self._schedules.append(_Schedule(actions))

    def shape_spec(self, rates: Sequence[float], start_at: float, speed: float) -> str:
        """The device's in-process shaper: rates[i] from start_at + i / speed."""
        return f"trace:{start_at}:{speed}:" + ",".join(f"{r:g}" for r in rates)

    def set_quota(self, cpu_quota: float | None) -> None:
        check_quota(cpu_quota)  # accepted, not applied: loopback has no CPU quota

    def popen_edge(self, argv: Sequence[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(list(argv), **kw)

    def popen_device(self, argv: Sequence[str], cpu_quota: float | None = None,
                     **kw) -> subprocess.Popen:
        check_quota(cpu_quota)  # accepted, not applied: loopback has no CPU quota
        env = dict(kw.pop("env", None) or os.environ)
        if self._rates is not None:
            env[SHAPE_ENV] = (f"trace:{self._start_at}:{self._speed}:"
                              + ",".join(f"{r:g}" for r in self._rates))
            self._rates = None
        elif self.rate_mbit is not None:
            env[SHAPE_ENV] = f"{self.rate_mbit:g}"
        return subprocess.Popen(list(argv), env=env, **kw)

    def edge_command(self, argv: Sequence[str]) -> list[str]:
        return list(argv)

    def describe(self) -> dict:
        return {"kind": "loopback", "reason": self.reason,
                "description": f"testbed: LOOPBACK FALLBACK ({self.reason}): 127.0.0.1, the "
                               "rate enforced by an in-process token bucket in the device, "
                               "no CPU quota (the device runs at this machine's speed)"}


@contextlib.contextmanager
def open_testbed(log=print) -> Iterator[NamespaceTestbed | LoopbackTestbed]:
    reason = unavailable_reason()
    if reason is None:
        with NamespaceTestbed() as tb:
            yield tb
    else:
        log(f"network namespaces unavailable ({reason}): falling back to loopback")
        with LoopbackTestbed(reason) as tb:
            yield tb


def check_quota(fraction: float | None) -> None:
    if fraction is not None and not 0 <= fraction <= 1:
        raise ValueError(f"cpu_quota must be a fraction of one core in [0, 1], got {fraction}")


class TokenBucket:
    """The loopback fallback's link: uploads cross it one after another (a FIFO link, as
    tbf with a deep queue is), each byte at the rate of the second it crosses in;
    `release_time` says when an upload of nbytes, sent at `now` (time.monotonic), has
    crossed. The rate is fixed, or follows `rates` (Mbit/s per second) from `start_at`
    (time.time()) at `speed`; before the first second and after the last, their rates."""

    def __init__(self, rate_mbit: float = 0.0, rates: Sequence[float] = (),
                 start_at: float = 0.0, speed: float = 1.0) -> None:
        self._fixed = rate_mbit
        self._rates = list(rates)
        self._start_at, self._speed = start_at, speed
        self._free_at = 0.0

    def _index(self, wall: float) -> int:
        """The second of the schedule that time.time() `wall` falls in."""
        return math.floor((wall - self._start_at) * self._speed)

    def _rate_of(self, i: int) -> tuple[float, float]:
        """(bits/s, time.time() at which it ends) of second `i` of the schedule."""
        if not self._rates:
            return max(self._fixed, MIN_RATE_MBIT) * 1e6, float("inf")
        k = min(max(i, 0), len(self._rates) - 1)
        ends = float("inf") if i >= len(self._rates) - 1 else self._start_at + (i + 1) / self._speed
        return max(self._rates[k], MIN_RATE_MBIT) * 1e6, ends

    def rate_mbit(self) -> float:
        return self._rate_of(self._index(time.time()))[0] / 1e6

    def drop_backlog(self, now: float) -> None:
        """What is still queued at `now` will never cross: the connection it was on was
        dropped (EdgeLink's reconnect)."""
        self._free_at = min(self._free_at, now)

    def release_time(self, nbytes: int, now: float) -> float:
        start = max(now, self._free_at)
        to_wall = time.time() - time.monotonic()  # the schedule runs on time.time()
        wall = start + to_wall
        bits = nbytes * 8.0
        i = self._index(wall)
        while True:
            rate, ends = self._rate_of(i)
            if bits <= rate * (ends - wall):
                wall += bits / rate
                break
            bits -= rate * max(ends - wall, 0.0)
            wall = ends
            # the next second by count: recomputing it from `wall` can land on the same
            # one again when (ends - start) x speed rounds down, and loop forever
            i += 1
        self._free_at = wall - to_wall
        return self._free_at

    @classmethod
    def from_env(cls, value: str | None = None) -> TokenBucket | None:
        """The shaper described by $EDGESDK_SHAPE (set by LoopbackTestbed), if any."""
        value = os.environ.get(SHAPE_ENV) if value is None else value
        if not value:
            return None
        if value.startswith("trace:"):
            _, start, speed, rates = value.split(":", 3)
            return cls(rates=[float(r) for r in rates.split(",")], start_at=float(start),
                       speed=float(speed))
        return cls(rate_mbit=float(value))
