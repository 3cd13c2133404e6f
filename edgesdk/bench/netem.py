"""The emulated testbed of the end-to-end benchmark: two Linux network namespaces joined by
a veth pair, the device->edge link shaped with tc, and a cgroup CPU quota for the device.

    with open_testbed(log=print) as tb:
        server = ServerProcess(tb.edge_command([...serve..., "--bind",
                                                f"tcp://{tb.edge_address}:5555"]))
        tb.set_rate(10.0)                                   # Mbit/s, device -> edge
        proc = tb.popen_device([...], cpu_quota=0.15)       # 15 % of one core
        tb.replay_rates([12.0, 3.5, ...], start_at=t)       # one rate per second

Shaping is a token bucket filter (tc tbf) on the device's veth: a rate (of TCP goodput), a
bucket of 1 ms at that rate (at least two full frames), and a queue of up to 2 s, so TCP
sees a slow link rather than losses. Changing
the rate is one `tc qdisc change` (about 2 ms). Delay, jitter and loss need sch_netem, which
this kernel may lack; `describe()` says what is emulated.

The device's CPU quota is a cgroup-v1 `cpu` group: 1 ms of CPU (the kernel's smallest
cfs_quota_us) per period of 1 ms / fraction, so the throttling stalls are as short as CFS
allows (fraction 0.25: at most 3 ms) next to frame and network times. Longer periods make
the device's own RTT and bandwidth samples wrong by the stall (a 10 ms period turned a
100 Mbit/s link into ~2 Mbit/s samples). The child joins the group before exec (a shell
writes its own pid to cgroup.procs, then execs `ip netns exec`, which remounts /sys and
would hide the cgroup tree), so no instruction of the device runs unthrottled.

Without root, `ip netns`, tc or the cgroup, `open_testbed` returns a LoopbackTestbed: both
sides on 127.0.0.1, no CPU quota, and the rate enforced by the engine's in-process token
bucket (EdgeLink's `shaper`) in the device process, which it is told through the
EDGESDK_SHAPE environment variable. Its description says so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
MIN_QUOTA_US = 1_000  # the kernel's smallest cfs_quota_us
MIN_RATE_MBIT = 0.05  # tbf cannot be 0; traces have seconds of (almost) nothing
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


def _netem_available() -> bool:
    probe = subprocess.run(["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay",
                            "0ms"], capture_output=True, text=True)
    if probe.returncode == 0:
        subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], capture_output=True)
        return True
    return False


def unavailable_reason() -> str | None:
    """Why the namespace testbed cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"no `{tool}` (iproute2)"
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
    their names end in the owner's pid."""
    def dead(tag: str) -> bool:
        return tag.isdigit() and int(tag) != os.getpid() and not Path(f"/proc/{tag}").exists()

    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        name = line.split(" ", 1)[0]
        prefix, _, tag = name.rpartition("-")
        if prefix in ("edgesdk-dev", "edgesdk-edge") and dead(tag):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
    for d in CGROUP_CPU.glob("edgesdk-*"):
        if dead(d.name.rpartition("-")[2]):
            with contextlib.suppress(OSError):
                d.rmdir()


class _Replay:
    """Changes the rate once per (trace second / speed), from `start_at` (time.time())."""

    def __init__(self, set_rate, rates: Sequence[float], start_at: float, speed: float):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(set_rate, list(rates),
                                                                start_at, speed), daemon=True)
        self._thread.start()

    def _run(self, set_rate, rates, start_at, speed) -> None:
        for i, r in enumerate(rates):
            if self._stop.wait(max(start_at + i / speed - time.time(), 0.0)):
                return
            set_rate(r)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class NamespaceTestbed:
    """Device and edge namespaces, a shaped veth, a CPU cgroup (see the module docs)."""

    def __init__(self, tag: str | None = None) -> None:
        tag = tag or str(os.getpid())
        self.device_ns, self.edge_ns = f"edgesdk-dev-{tag}", f"edgesdk-edge-{tag}"
        self.device_address, self.edge_address = "10.213.0.1", "10.213.0.2"
        self._veth = (f"esd{tag}"[:15], f"ese{tag}"[:15])
        self.cgroup = CGROUP_CPU / f"edgesdk-{tag}"
        self.netem = False
        self.rate_mbit: float | None = None
        self._replays: list[_Replay] = []

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
        self.netem = _netem_available()
        self.cgroup.mkdir(exist_ok=True)

    def set_rate(self, mbit: float) -> None:
        """The device -> edge rate in Mbit/s, from now on."""
        _run("ip", "netns", "exec", self.device_ns, "tc", "qdisc", "change", "dev",
             self._veth[0], "root", *_tbf(mbit))
        self.rate_mbit = float(mbit)

    def replay_rates(self, rates: Sequence[float], start_at: float, speed: float = 1.0) -> None:
        """Apply rates[i] at start_at + i / speed (time.time() clock), in the background."""
        self._replays.append(_Replay(self.set_rate, rates, start_at, speed))

    def stop_replays(self) -> None:
        for r in self._replays:
            r.stop()
        self._replays.clear()

    def popen_device(self, argv: Sequence[str], cpu_quota: float | None = None,
                     **kw) -> subprocess.Popen:
        """Run argv in the device namespace, inside the CPU quota (fraction of one core)."""
        # The kernel's smallest quota is 1 ms; the shortest stalls come from a 1 ms quota
        # in a period of 1 ms / fraction (0.25: 1 ms of CPU, then at most 3 ms of waiting).
        if cpu_quota:
            (self.cgroup / "cpu.cfs_quota_us").write_text("-1")
            (self.cgroup / "cpu.cfs_period_us").write_text(str(round(MIN_QUOTA_US / cpu_quota)))
            (self.cgroup / "cpu.cfs_quota_us").write_text(str(MIN_QUOTA_US))
        else:
            (self.cgroup / "cpu.cfs_quota_us").write_text("-1")
        # Join the cgroup first: `ip netns exec` remounts /sys, hiding the cgroup tree.
        join = f'echo $$ > {self.cgroup / "cgroup.procs"} && exec "$@"'
        return subprocess.Popen(["sh", "-c", join, "sh", "ip", "netns", "exec",
                                 self.device_ns, *argv], **kw)

    def edge_command(self, argv: Sequence[str]) -> list[str]:
        """argv, to run in the edge namespace (with the full CPU)."""
        return ["ip", "netns", "exec", self.edge_ns, *argv]

    def describe(self) -> dict:
        delay = "netem" if self.netem else "not emulated (this kernel has no sch_netem)"
        return {"kind": "netns", "device_ns": self.device_ns, "edge_ns": self.edge_ns,
                "shaping": "tc tbf on the device's veth (device -> edge)",
                "delay_loss": delay,
                "cpu": f"cgroup-v1 cpu: {MIN_QUOTA_US} us of CPU per period of 1 ms / quota",
                "description": (
                    f"testbed: namespaces {self.device_ns} / {self.edge_ns}, veth "
                    f"{self.device_address} -> {self.edge_address} shaped by tc tbf; "
                    f"device CPU by cgroup quota; delay/loss {delay}")}

    def close(self) -> None:
        self.stop_replays()
        for ns in (self.device_ns, self.edge_ns):
            subprocess.run(["ip", "netns", "pids", ns], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        if self.cgroup.is_dir():
            with contextlib.suppress(OSError):
                self.cgroup.rmdir()

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

    def __enter__(self) -> LoopbackTestbed:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def set_rate(self, mbit: float) -> None:
        self.rate_mbit, self._rates = float(mbit), None

    def replay_rates(self, rates: Sequence[float], start_at: float, speed: float = 1.0) -> None:
        """Handed to the next device process (call before popen_device)."""
        self._rates, self._start_at, self._speed = list(rates), start_at, speed

    def stop_replays(self) -> None:
        self._rates = None

    def popen_device(self, argv: Sequence[str], cpu_quota: float | None = None,
                     **kw) -> subprocess.Popen:
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


class TokenBucket:
    """The loopback fallback's link: uploads cross it one after another at the current
    rate (a FIFO link, as tbf with a deep queue is); `release_time` says when an upload of
    nbytes, sent at `now` (time.monotonic), has crossed. The rate is fixed, or follows
    `rates` (Mbit/s per second) from `start_at` (time.time()) at `speed`."""

    def __init__(self, rate_mbit: float = 0.0, rates: Sequence[float] = (),
                 start_at: float = 0.0, speed: float = 1.0) -> None:
        self._fixed = rate_mbit
        self._rates = list(rates)
        self._start_at, self._speed = start_at, speed
        self._free_at = 0.0

    def rate_mbit(self) -> float:
        if not self._rates:
            return max(self._fixed, MIN_RATE_MBIT)
        i = int((time.time() - self._start_at) * self._speed)
        return max(self._rates[min(max(i, 0), len(self._rates) - 1)], MIN_RATE_MBIT)

    def release_time(self, nbytes: int, now: float) -> float:
        start = max(now, self._free_at)
        self._free_at = start + nbytes * 8 / (self.rate_mbit() * 1e6)
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
