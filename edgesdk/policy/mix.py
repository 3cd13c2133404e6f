"""Frames spread over several chains side by side: the most frames per second a set of
nodes can give a stream.

One chain's rate is its slowest resource's, and every other resource on it idles for part
of each frame. A camera's frames are independent, so chains can also run side by side,
each taking a share of the frames: camera 0 computes some frames itself, sends some whole
to camera 1, and some from a cut to the edge box. Which chains, at which rates, is a
linear program:

    maximise  sum_c x_c          (frames/s: x_c along chain c)
    such that sum_c x_c u_cr <= 1000   for every resource r (ms of it per second)

where u_cr is what one frame along chain c takes of resource r, as edgesdk.policy.chain
costs a stage: a node's CPU (the stage's cpu_ms over the node's workers), a node's
uplink (its up_ms: the cut it sends on and the result it relays back, at the pairs' own
rates), or a shared downlink (Links.downlink_mbps: everything sent to that node, cuts in
and results relayed back). A basic optimum uses at most as many chains as there are
resources.

The chains (the LP's columns) come by column generation: it starts from the best chain of
every order of nodes the placement search evaluates (so the LP's mix is never slower than
any of them alone, in its own model); the LP's dual prices say what a millisecond of each resource
is worth, and for each order the chain that costs least at those prices (a dynamic
program over the cut points: chain.cheapest) joins when a frame along it is worth more
(1) than it costs. It stops when none does: the optimum over every chain of those orders.

    mix = best_mix(model, nodes, links)
    mix.chains, mix.rates          # the chains, and the frames/s each takes
    mix.fps, mix.describe()
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import PolicyError
from .candidates import ModelProfile
from .chain import (
    STAGE_CPU_MS,
    ChainPlan,
    Links,
    Node,
    Stage,
    cheapest,
    costs_of,
    search_orders,
)

MS_PER_S = 1000.0  # what one resource has to give per second
MIN_SHARE = 0.02  # chains planned below this share of the frames are left out
# A mix runs only where it promises this much more than the best single chain. Its plan
# loads every resource it uses to the full, so it is more fragile than a chain's, and
# further from what it measures (bench chain, 2 rounds each: 1.36x over on PP-OCR rec, where
# the mix promised 1.9x its best chain and delivered 1.7x; 1.45x over on ResNet50-light,
# where it promised 1.22x and lost to the chain by a quarter).
MIX_GAIN = 1.25
PRICING_ORDERS = 64  # the best orders whose cheapest chains are priced each round
MAX_ROUNDS = 50  # column-generation rounds at most (each adds at least one chain)
_EPS = 1e-9


@dataclass(frozen=True)
class ChainMix:
    """Chains that run side by side, `rates[k]` frames/s along chains[k] (as planned).
    fps: their sum; latency_ms: a frame's, averaged over the frames; fidelity: the lowest
    chain's."""

    chains: tuple[ChainPlan, ...]
    rates: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.chains or len(self.chains) != len(self.rates) or not all(
                r > 0 and math.isfinite(r) for r in self.rates):
            raise PolicyError(f"a mix needs chains with finite rates > 0: {len(self.chains)} "
                              f"chains, rates {list(self.rates)}")

    @classmethod
    def of(cls, plan: ChainPlan) -> ChainMix:
        """One chain alone, at its own rate."""
        return cls((plan,), (plan.fps if math.isfinite(plan.fps) else 1.0,))

    @property
    def fps(self) -> float:
        return float(sum(self.rates))

    @property
    def shares(self) -> tuple[float, ...]:
        return tuple(r / self.fps for r in self.rates)

    @property
    def latency_ms(self) -> float:
        return float(sum(s * c.latency_ms for s, c in zip(self.shares, self.chains)))

    @property
    def fidelity(self) -> float:
        return min(c.fidelity for c in self.chains)

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n for c in self.chains for n in c.nodes))

    def describe(self) -> str:
        if len(self.chains) == 1:
            return self.chains[0].describe()
        return " || ".join(f"{100 * s:.0f}%: {c.describe()}"
                           for s, c in zip(self.shares, self.chains))


def best_mix(model: ModelProfile, nodes: Sequence[Node], links: Links,
             result_bytes: float = 4096.0, min_fidelity: float = 0.99,
             max_stages: int | None = None, seed: int = 0, budget: int = 4000,
             stage_cpu_ms: float = STAGE_CPU_MS) -> ChainMix:
    """The mix of chains over `nodes` (nodes[0]: the origin, which starts every chain) with
    the most frames per second, or the best single chain when the mix does not promise
    MIX_GAIN times its rate; the arguments are best_chain's."""
    costs = costs_of(model, nodes, links, result_bytes, min_fidelity, stage_cpu_ms)
    names = [n.name for n in nodes]
    plans = sorted(search_orders(costs, names, "throughput", max_stages, seed, budget),
                   key=lambda p: (p.bottleneck_ms, p.latency_ms))
    shared = {n: float(links.downlink_mbps[n]) for n in names if n in links.downlink_mbps}
    resources = [(kind, n) for n in names for kind in ("cpu", "up")] + \
        [("down", n) for n in shared]
    row = {r: i for i, r in enumerate(resources)}

    def load(stage: Stage, receiver: str | None) -> np.ndarray:
        """What one frame of `stage` (sending to `receiver`) takes of each resource: its
        node's CPU and uplink; on a shared downlink, the cut it sends (the receiver's)
        and the result that comes back to it (its own)."""
        u = np.zeros(len(resources))
        u[row["cpu", stage.node]] = stage.cpu_ms / costs.nodes[stage.node].parallel
        u[row["up", stage.node]] = stage.up_ms  # a shared downlink is its own row
        if receiver in shared:
            u[row["down", receiver]] += _wire_ms(stage.nbytes, shared[receiver])
        if receiver is not None and stage.node in shared:
            u[row["down", stage.node]] += _wire_ms(result_bytes, shared[stage.node])
        return u

    def usage(plan: ChainPlan) -> np.ndarray:
        return sum((load(s, nxt.node if nxt else None) for s, nxt in
                    zip(plan.stages, (*plan.stages[1:], None))), np.zeros(len(resources)))

    columns = {p.describe(): (p, usage(p)) for p in plans}
    orders = [p.nodes for p in plans[:PRICING_ORDERS]]
    for _ in range(MAX_ROUNDS):
        x, prices = _max_frames(np.array([u for _, u in columns.values()]).T)
        joined = 0

        def price(stage: Stage, receiver: str | None, prices: np.ndarray = prices) -> float:
            return _cost(prices, load(stage, receiver))

        for order in orders:
            plan = cheapest(costs, order, price)
            if plan is not None and plan.describe() not in columns:
                u = usage(plan)
                if np.all(np.isfinite(u)) and float(prices @ u) < 1.0 - 1e-6:
                    columns[plan.describe()] = (plan, u)
                    joined += 1
        if not joined:
            break
    # x is the last LP's: over the columns it had, the first len(x) (insertion order)
    chosen = [(p, rate) for (p, _), rate in zip(columns.values(), x)
              if rate > MIN_SHARE * x.sum()]
    mix = ChainMix(tuple(p for p, _ in chosen), tuple(float(r) for _, r in chosen))
    # the best single chain in the same model (a chain's own bottleneck does not add up
    # what it sends a shared downlink there and back)
    single, u = max(columns.values(), key=lambda c: MS_PER_S / c[1].max())
    return mix if mix.fps >= MIX_GAIN * MS_PER_S / u.max() else ChainMix.of(single)


def _wire_ms(nbytes: float, mbps: float) -> float:
    return math.inf if mbps <= 0 else nbytes * 8 / (mbps * 1e3)


def _cost(prices: np.ndarray, load: np.ndarray) -> float:
    """A load at the resources' prices (inf for a load that cannot be carried)."""
    return float(prices @ load) if np.all(np.isfinite(load)) else math.inf


def _max_frames(usage: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """max sum(x) s.t. usage @ x <= MS_PER_S (each row), x >= 0: (x, the rows' dual prices),
    by the simplex method on a dense tableau with Bland's rule (no cycling). usage: one
    column per chain; a column with an infinite entry (a blocked link) never enters."""
    m, n = usage.shape
    ok = np.all(np.isfinite(usage), axis=0) & (usage.max(axis=0) > _EPS)
    tableau = np.zeros((m + 1, n + m + 1))
    tableau[:m, :n] = np.where(ok, usage, 0.0)
    tableau[:m, n:n + m] = np.eye(m)
    tableau[:m, -1] = MS_PER_S
    tableau[m, :n] = np.where(ok, -1.0, 0.0)  # reduced costs of max sum(x)
    basis = list(range(n, n + m))
    for _ in range(100 * (n + m)):
        entering = np.flatnonzero(tableau[m, :-1] < -_EPS)
        if entering.size == 0:
            break
        col = int(entering[0])
        rows = np.flatnonzero(tableau[:m, col] > _EPS)
        if rows.size == 0:  # free frames along it: cannot be, every chain uses a resource
            tableau[m, col] = 0.0
            continue
        ratios = tableau[rows, -1] / tableau[rows, col]
        best = rows[ratios <= ratios.min() * (1 + 1e-9) + 1e-12]
        r = int(min(best, key=lambda i: basis[i]))
        tableau[r] /= tableau[r, col]
        for i in range(m + 1):
            if i != r and tableau[i, col] != 0.0:
                tableau[i] -= tableau[i, col] * tableau[r]
        np.maximum(tableau[:m, -1], 0.0, out=tableau[:m, -1])  # rounding below zero
        basis[r] = col
    x = np.zeros(n)
    for i, b in enumerate(basis):
        if b < n:
            x[b] = tableau[i, -1]
    return x, tableau[m, n:n + m].copy()


__all__ = ["MIX_GAIN", "ChainMix", "best_mix"]
