"""A testbed of several machines: one network namespace per node on a shared switch, each
node's CPU in its own cgroup quota, each node's links shaped with tc.

    nodes = [MeshNode("cam0", cpu_quota=0.25, uplink_mbit=100),
             MeshNode("edge", uplink_mbit=5, downlink_mbit=5)]
    with MeshTestbed(nodes) as mesh:
        server = ServerProcess(mesh.command("edge", [...serve..., "--bind",
                                                     f"tcp://{mesh.address('edge')}:5555"]))
        proc = mesh.popen("cam0", [...])

The switch is a Linux bridge in a namespace of its own; each node's veth joins it. A
node's `uplink_mbit` shapes what it sends (tc tbf on its own veth), `downlink_mbit` what
it receives (tbf on the switch's port toward it), so "cameras on a 100 Mbit/s LAN, the
edge box behind a 5 Mbit/s line" is a downlink and an uplink on the edge node alone. The
shaping, the CPU quota and their limits (no delay, no loss: no sch_netem on this kernel)
are edgesdk.bench.netem's, which this reuses: see its docstring.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from .netem import (
    CGROUP_CPU,
    _cpu_group,
    _delete,
    _in_group,
    _remove_stale,
    _run,
    _tbf,
    check_quota,
)

PREFIX = "edgesdk-mesh"  # namespaces PREFIX-<pid>x<i> (see netem._remove_stale)


@dataclass(frozen=True)
class MeshNode:
    """One machine: its CPU (fraction of one core; None: unthrottled) and the rates of
    what it sends and receives (Mbit/s of TCP goodput; None: unshaped)."""

    name: str
    cpu_quota: float | None = None
    uplink_mbit: float | None = None
    downlink_mbit: float | None = None


class MeshTestbed:
    """Namespaces on a bridge, shaped links, CPU quotas (see the module docstring)."""

    def __init__(self, nodes: Sequence[MeshNode], tag: str | None = None) -> None:
        if len({n.name for n in nodes}) != len(nodes) or not nodes:
            raise ValueError(f"node names must be unique and given: {[n.name for n in nodes]}")
        if len(nodes) > 200:
            raise ValueError(f"{len(nodes)} nodes; the /24 holds 200")
        for n in nodes:
            check_quota(n.cpu_quota)
        tag = tag or str(os.getpid())
        self.nodes = {n.name: n for n in nodes}
        self._index = {n.name: i for i, n in enumerate(nodes)}
        self._switch = f"{PREFIX}-{tag}xsw"
        self._ns = {n.name: f"{PREFIX}-{tag}x{i}" for i, n in enumerate(nodes)}
        self._veth = {n.name: (f"em{tag}x{i}"[:15], f"es{tag}x{i}"[:15])
                      for i, n in enumerate(nodes)}
        self._cgroup = {n.name: CGROUP_CPU / f"edgesdk-{tag}x{i}" for i, n in enumerate(nodes)}

    def address(self, name: str) -> str:
        return f"10.214.0.{self._index[name] + 2}"

    def __enter__(self) -> MeshTestbed:
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def _setup(self) -> None:
        _remove_stale()
        _run("ip", "netns", "add", self._switch)
        _run("ip", "-n", self._switch, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self._switch, "link", "set", "br0", "up")
        for name, node in self.nodes.items():
            ns, (inner, port) = self._ns[name], self._veth[name]
            _run("ip", "netns", "add", ns)
            _run("ip", "link", "add", inner, "type", "veth", "peer", "name", port)
            _run("ip", "link", "set", inner, "netns", ns)
            _run("ip", "link", "set", port, "netns", self._switch)
            _run("ip", "-n", self._switch, "link", "set", port, "master", "br0")
            _run("ip", "-n", self._switch, "link", "set", port, "up")
            _run("ip", "-n", ns, "addr", "add", f"{self.address(name)}/24", "dev", inner)
            _run("ip", "-n", ns, "link", "set", inner, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            if node.uplink_mbit is not None:
                _run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", inner, "root",
                     *_tbf(node.uplink_mbit))
            if node.downlink_mbit is not None:
                _run("ip", "netns", "exec", self._switch, "tc", "qdisc", "add", "dev", port,
                     "root", *_tbf(node.downlink_mbit))
            _cpu_group(self._cgroup[name], node.cpu_quota)

    def command(self, name: str, argv: Sequence[str]) -> list[str]:
        """argv, to run on node `name`: in its namespace and its CPU cgroup."""
        return _in_group(self._cgroup[name], self._ns[name], argv)

    def popen(self, name: str, argv: Sequence[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(self.command(name, argv), **kw)

    def describe(self) -> dict:
        return {"kind": "mesh", "switch": self._switch,
                "nodes": {n: {"address": self.address(n), "cpu_quota": s.cpu_quota,
                              "uplink_mbit": s.uplink_mbit, "downlink_mbit": s.downlink_mbit}
                          for n, s in self.nodes.items()},
                "shaping": "tc tbf on each node's veth (uplink) and on the switch's port "
                           "toward it (downlink)",
                "delay_loss": "not emulated (no sch_netem)"}

    def close(self) -> None:
        for inner, _ in self._veth.values():  # a setup that failed before moving it
            subprocess.run(["ip", "link", "del", inner], capture_output=True)
        _delete([*self._ns.values(), self._switch], list(self._cgroup.values()))

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["MeshNode", "MeshTestbed"]
