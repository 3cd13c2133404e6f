"""Several edge servers for one engine: each its own EdgeLink, one of them active.

    servers = ServerSet([EdgeLink(a, sha), EdgeLink(b, sha)])
    servers.choose(now, score)      # the engine, when its decision is due

The engine reads a ServerSet through EdgeLink's interface (usable, snapshot, route,
version, welcomes, server_tail_ms, status, endpoint): all of it is the active server's,
but `route` may give another server's link, which the engine then offloads through.
Each link keeps its own hello, probes and estimates, so a server that is not active stays
measured: its heartbeats give RTT and bandwidth, and the engine's exploring frames (sent
while its decisions keep frames on the device) go to the servers that are not active, in
turn, for their speed and queue (policy.explore).

Choosing. When the engine re-evaluates its decision, it calls `choose` with a score: for
each usable server, the expected reward of the plan its strategy takes with that server's
estimates (the planner's model; the policy network's choice is scored by the same model).
The active server changes for a score higher by SWITCH_MARGIN (a tie, say every server's
best plan is device-only, keeps it), or when the active one cannot be used: then the best
usable one. Fixed strategies pass no score: the first usable server in the order given,
which is failover.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from .link import UP, EdgeLink

# How much better (in reward: the planner's units, where 0.01 is 1 % of the SLO in
# latency) another server's score must be for the engine to move to it: estimates jitter,
# and each move restarts what the engine caches per server
SWITCH_MARGIN = 0.01


class ServerSet:
    """See the module docstring. `links`: one EdgeLink per server, in order of preference
    (the first is active until a decision says otherwise)."""

    def __init__(self, links: Sequence[EdgeLink]) -> None:
        if not links:
            raise ValueError("a ServerSet needs at least one link")
        self.links = list(links)
        self.active = self.links[0]
        self.switches = 0  # how often the active server changed
        self._explore_turn = 0

    # -- what the engine reads: the active server's --------------------------------------
    @property
    def endpoint(self) -> str:
        return self.active.endpoint

    @property
    def status(self) -> str:
        return self.active.status

    @property
    def version(self) -> tuple[int, int]:
        return self.switches, self.active.version

    @property
    def welcomes(self) -> tuple[int, int]:
        return self.switches, self.active.welcomes

    @property
    def server_tail_ms(self) -> dict[str, float]:
        return self.active.server_tail_ms

    def usable(self, now: float) -> str | None:
        return self.active.usable(now)

    def snapshot(self, now: float) -> dict[str, Any]:
        return self.active.snapshot(now)

    def route(self, exploring: bool = False) -> EdgeLink:
        """The link an offload goes to: the active server's; an exploring one's, the next
        usable server that is not active, in turn (the active one when there is none)."""
        if exploring:
            now = time.monotonic()
            others = [x for x in self.links if x is not self.active and x.usable(now) is None]
            if others:
                self._explore_turn += 1
                return others[self._explore_turn % len(others)]
        return self.active

    def statuses(self) -> dict[str, str]:
        """Each server's status, by endpoint."""
        return {x.endpoint: x.status for x in self.links}

    # -- choosing --------------------------------------------------------------------------
    def choose(self, now: float, score: Callable[[EdgeLink], float] | None) -> EdgeLink:
        """Make the best usable server active (see the module docstring); returns it."""
        usable = [x for x in self.links if x.usable(now) is None]
        if not usable:
            return self.active
        if score is None:
            best = usable[0]
        else:
            scores = {id(x): score(x) for x in usable}
            best = max(usable, key=lambda x: scores[id(x)])
            if self.active in usable and (
                    scores[id(best)] < scores[id(self.active)] + SWITCH_MARGIN):
                best = self.active
        if best is not self.active:
            self.active = best
            self.switches += 1
        return best

    # -- lifetime --------------------------------------------------------------------------
    def wait_connected(self, timeout_s: float) -> bool:
        """Wait for every server's first hello (within timeout_s in all); True if one is
        up, and then the first such is active."""
        deadline = time.monotonic() + timeout_s
        for link in self.links:
            link.wait_connected(max(deadline - time.monotonic(), 0.0))
        up = [x for x in self.links if x.status == UP]
        if up and self.active not in up:
            self.active = up[0]
            self.switches += 1
        return bool(up)

    def close(self, timeout_s: float = 2.0) -> None:
        for link in self.links:
            link.close(timeout_s)


__all__ = ["SWITCH_MARGIN", "ServerSet"]
