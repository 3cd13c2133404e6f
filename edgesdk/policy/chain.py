"""Chains of more than two tiers: which node runs which segments, and where the cuts go.

A *chain* is an ordered list of stages starting at the origin device (the one with the
camera): each stage runs a contiguous range of the bundle's segments, encodes the tensors
of its last cut at the bits chosen for that hop and sends them to the next stage; the
last stage's outputs travel back along the chain to the origin. Stages run concurrently
on different frames (a pipeline), so a chain's throughput is set by its slowest resource:
a node's CPU (its segments plus encoding the cut it sends, divided by the frames it
computes at once) or a link (the bytes it carries). Its latency is the sum of everything
a frame passes through, there and back.

Links are counted per sender, as on a node whose uplink is its bottleneck (a camera's
Wi-Fi, a site's upload): a stage's wire time is the cut it sends on plus the result it
relays back to the stage before it (`result_bytes`: the model's outputs as the servers
encode them; a 6625-class CTC output at 16 bits is 530 KB per frame, on every hop back).

    model = model_profile(bundle.manifest)
    nodes = [Node("cam0", slowdown=4.0), Node("cam1", "tcp://10.0.0.2:5555", slowdown=4.0),
             Node("edge", "tcp://10.0.0.9:5555", workers=2)]
    links = Links(default_mbps=100.0, mbps={("cam1", "edge"): 8.0})
    plan = best_chain(model, nodes, links, objective="throughput")
    plan.stages      # (Stage(node="cam0", first=0, last=3, send="c3", bits=8), ...)
    plan.fps, plan.latency_ms

Two searches, as in the pipeline-placement systems this follows:
- **partition** (given an order of nodes): dynamic programming over the cut points and
  each hop's bits. A chain's bottleneck is a maximum and its latency a sum, so every
  state keeps its Pareto front of the two: exact for either objective, the other cost
  breaking ties (throughput, then latency; or latency, then throughput).
- **placement** (which nodes, in which order): every ordered subset of the nodes after
  the origin while there are at most EXHAUSTIVE_LIMIT of them (6 other nodes: 1,957
  orders), else a seeded local search with restarts (insert, remove, swap and replace
  moves from the best two-tier plans), which stands in for the particle-swarm search of
  the literature: both trade optimality for evaluations, and the tests compare it with
  the exhaustive answer on chains small enough to enumerate.

Reference times are the profile's (`ModelProfile.seg_ms`, encode times of `wire`); a node's
`slowdown` scales them, as the live slowdown estimator does for the two-tier planner. A
chain of more than one stage also costs every stage STAGE_CPU_MS of CPU per frame (the
hand-offs), which is what keeps a light model from being spread thin over many devices.
Each hop's quantization compounds: a plan's `fidelity` is the product of its hops' (each
hop only takes bits whose own fidelity is at least `min_fidelity`).

One chain leaves every node but its bottleneck idle part of each frame; for a stream,
edgesdk.policy.mix runs several chains side by side (`cheapest` is its pricing step).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import PolicyError
from .candidates import ModelProfile

OBJECTIVES = ("throughput", "latency")
# The CPU a stage of a multi-stage chain spends per frame besides its segments and its
# encoding, at the profile's speed: the server's broker and worker hand-offs, decoding and
# the transport (the origin's runner likewise). Measured on the chain benchmark's cameras
# (bench.chain: /proc CPU time of each stage's processes over 40 frames): 6.5-8 ms.
STAGE_CPU_MS = 7.0
EXHAUSTIVE_LIMIT = 5000  # ordered node subsets evaluated one by one; beyond: local search
INPUT = "input"


@dataclass(frozen=True)
class Node:
    """A place that can run segments. endpoint: its `edgesdk serve` address (None for the
    origin, which runs in the calling process). slowdown: its segment times over the
    profile's. workers: frames it computes at once (a server's worker processes; a
    single-core device: 1). None for either: not known (the planner takes 1;
    edgesdk.engine.chain measures them)."""

    name: str
    endpoint: str | None = None
    slowdown: float | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.slowdown is not None and not (
                isinstance(self.slowdown, (int, float)) and self.slowdown > 0
                and math.isfinite(self.slowdown)):
            raise PolicyError(f"node {self.name!r}: slowdown is {self.slowdown!r}, expected a "
                              "finite number > 0")
        if self.workers is not None and not (
                isinstance(self.workers, int) and self.workers >= 1):
            raise PolicyError(f"node {self.name!r}: workers is {self.workers!r}, expected an "
                              "int >= 1")

    @property
    def speed_factor(self) -> float:
        return 1.0 if self.slowdown is None else float(self.slowdown)

    @property
    def parallel(self) -> int:
        return self.workers or 1


@dataclass(frozen=True)
class Links:
    """Bandwidth (Mbit/s) and round-trip time (ms) between nodes: `mbps`/`rtt_ms` by
    (sender, receiver) (also used for the other direction when only one is given), else
    the defaults. downlink_mbps: a node's total receiving rate, where everything sent to
    it shares one line (an edge box behind a site's upload): no transfer to it is faster,
    and edgesdk.policy.mix counts what chains side by side send it together. blocked:
    (sender, receiver) pairs a request cannot take, in that direction (a server that may
    not forward to that one: `edgesdk serve --next-hop`); the reply to a request still
    goes back the way it came."""

    default_mbps: float = 100.0
    default_rtt_ms: float = 1.0
    mbps: Mapping[tuple[str, str], float] = field(default_factory=dict)
    rtt_ms: Mapping[tuple[str, str], float] = field(default_factory=dict)
    blocked: frozenset[tuple[str, str]] = frozenset()
    downlink_mbps: Mapping[str, float] = field(default_factory=dict)

    def _get(self, table: Mapping[tuple[str, str], float], a: str, b: str,
             default: float) -> float:
        value = table.get((a, b), table.get((b, a), default))
        return float(value)

    def transfer_ms(self, a: str, b: str, nbytes: float, reply: bool = False,
                    shared: bool = True) -> float:
        """The time `nbytes` take on the wire from a to b (no RTT); inf for a request
        (reply=False) that may not go from a to b. shared=False: at the pair's rate alone,
        without b's shared downlink (what the bytes take of a's uplink)."""
        if not reply and (a, b) in self.blocked:
            return math.inf
        mbps = self._get(self.mbps, a, b, self.default_mbps)
        if shared:
            mbps = min(mbps, float(self.downlink_mbps.get(b, math.inf)))
        return math.inf if mbps <= 0 else nbytes * 8 / (mbps * 1e3)

    def rtt(self, a: str, b: str) -> float:
        return self._get(self.rtt_ms, a, b, self.default_rtt_ms)


@dataclass(frozen=True)
class Stage:
    """Segments first..last (inclusive; last < first: none, the origin sending the input)
    on `node`, then the tensors of point `send` at `bits` to the next stage (None on the
    last stage). cpu_ms: its CPU per frame (segments, encoding, and STAGE_CPU_MS of
    hand-offs in a multi-stage chain); link_ms: the wire time of what it sends: the cut on
    to the next stage, the result back to the one before."""

    node: str
    first: int
    last: int
    send: str | None
    bits: int | None
    cpu_ms: float
    link_ms: float
    fidelity: float = 1.0
    nbytes: float = 0.0  # what it sends on to the next stage
    up_ms: float = 0.0  # link_ms at the pairs' own rates: what it takes of its uplink


@dataclass(frozen=True)
class ChainPlan:
    """Stages in order (the first is the origin's). bottleneck_ms: the slowest resource's
    time per frame (1000 / bottleneck_ms frames/s when pipelined); latency_ms: one frame
    end to end, alone; fidelity: the product of the hops' codec fidelities."""

    stages: tuple[Stage, ...]
    latency_ms: float
    bottleneck_ms: float
    fidelity: float

    @property
    def fps(self) -> float:
        return 1e3 / self.bottleneck_ms if self.bottleneck_ms > 0 else math.inf

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(s.node for s in self.stages)

    def describe(self) -> str:
        parts = []
        for s in self.stages:
            segs = f"seg {s.first}-{s.last}" if s.last >= s.first else "no segments"
            hop = f" -> {s.send}@{s.bits}" if s.send is not None else ""
            parts.append(f"{s.node}[{segs}]{hop}")
        return " | ".join(parts)


@dataclass(frozen=True)
class _Point:
    """A place a chain may be cut: "input" (after segment -1) or a cut id."""

    name: str
    after: int


def _points(model: ModelProfile) -> list[_Point]:
    points = [_Point(INPUT, -1)] if INPUT in model.wire else []
    points += sorted((_Point(c, a) for c, a in zip(model.cut_ids, model.cut_after)
                      if c in model.wire), key=lambda p: p.after)
    return points


def _key(objective: str, bottleneck: float, latency: float) -> tuple[float, float]:
    return (bottleneck, latency) if objective == "throughput" else (latency, bottleneck)


class _Costs:
    """Per-stage costs of one model on given nodes and links (cached prefix sums)."""

    def __init__(self, model: ModelProfile, nodes: Mapping[str, Node], links: Links,
                 result_bytes: float, min_fidelity: float, stage_cpu_ms: float) -> None:
        self.model, self.nodes, self.links = model, nodes, links
        self.result_bytes = result_bytes
        self.stage_cpu_ms = stage_cpu_ms
        self.prefix = [0.0, *itertools.accumulate(model.seg_ms)]
        self.bits = {p: sorted(b for b, (_, _, fid) in model.wire[p].items()
                               if fid >= min_fidelity) for p in model.wire}

    def compute_ms(self, node: str, after_from: int, after_to: int) -> float:
        """Segments after_from+1 .. after_to on `node`."""
        return (self.prefix[after_to + 1] - self.prefix[after_from + 1]) * \
            self.nodes[node].speed_factor

    def stage_ms(self, node: str, after_from: int, after_to: int) -> float:
        """compute_ms, plus the hand-off CPU of a stage in a multi-stage chain."""
        return self.compute_ms(node, after_from, after_to) + \
            self.stage_cpu_ms * self.nodes[node].speed_factor

    def back_ms(self, sender: str, previous: str | None, shared: bool = True) -> float:
        """The result relayed from `sender` to the stage before it (none for the origin)."""
        return 0.0 if previous is None else self.links.transfer_ms(
            sender, previous, self.result_bytes, reply=True, shared=shared)

    def hops(self, sender: str, receiver: str, point: str, cpu_ms: float,
             previous: str | None) -> list[tuple[float, float, int, float, float, float,
                                                 float, float]]:
        """Each allowed bits for sending `point` from sender to receiver after `cpu_ms` of
        the sender's compute (`previous`: the stage before the sender, which it relays
        the result to): (this stage's bottleneck, its latency, bits, its CPU ms, its wire
        ms, fidelity, the bytes sent, its uplink ms)."""
        node = self.nodes[sender]
        rtt = self.links.rtt(sender, receiver)
        back = self.back_ms(sender, previous)
        back_up = self.back_ms(sender, previous, shared=False)
        out = []
        for b in self.bits.get(point, ()):
            nbytes, enc_ms, fid = self.model.wire[point][b]
            cpu = cpu_ms + enc_ms * node.speed_factor
            wire = self.links.transfer_ms(sender, receiver, nbytes) + back
            # its latency: the compute, the wire both ways and the hop's RTT
            up = self.links.transfer_ms(sender, receiver, nbytes, shared=False) + back_up
            out.append((max(cpu / node.parallel, wire), cpu + wire + rtt, b, cpu, wire, fid,
                        nbytes, up))
        return out

    def last(self, node: str, previous: str, cpu_ms: float
             ) -> tuple[float, float, float, float]:
        """The last stage: (bottleneck, latency, the wire ms of its result back to the
        stage before it, the same at the pair's own rate; the RTT was counted by the hop
        that reached it)."""
        back = self.back_ms(node, previous)
        return (max(cpu_ms / self.nodes[node].parallel, back), cpu_ms + back, back,
                self.back_ms(node, previous, shared=False))


def partition(model: ModelProfile, order: Sequence[Node], links: Links,
              objective: str = "throughput", result_bytes: float = 4096.0,
              min_fidelity: float = 0.99, points: Sequence[str] | None = None,
              stage_cpu_ms: float = STAGE_CPU_MS) -> ChainPlan | None:
    """The best cut points for the nodes in `order` (each one runs a non-empty range,
    except the first, the origin, which may send the model input): a ChainPlan, or None
    when no assignment exists (more nodes than points, no allowed bits). points: the
    points ("input" or cut ids) the stages may send (default: all), e.g. one, to cost a
    fixed two-tier split."""
    _check_objective(objective)
    nodes = {n.name: n for n in order}
    if len(nodes) != len(order):
        raise PolicyError(f"a node appears twice in the order {[n.name for n in order]}")
    known = set(model.wire)
    if points is not None and not set(points) <= known:
        raise PolicyError(f"points {sorted(set(points) - known)} are not in the model; it has "
                          f"{sorted(known)}")
    costs = _Costs(model, nodes, links, result_bytes, min_fidelity, stage_cpu_ms)
    return _partition(costs, [n.name for n in order], objective, points)


def _partition(costs: _Costs, names: Sequence[str], objective: str,
               only: Sequence[str] | None = None) -> ChainPlan | None:
    """Dynamic programming over the points each stage sends. The two costs do not
    combine into one (a chain's bottleneck is a maximum, its latency a sum), so each state
    keeps its Pareto front of (bottleneck, latency): a prefix worse on one cost and better
    on the other may be the one the optimum extends."""
    points = [p for p in _points(costs.model) if only is None or p.name in only]
    if len(names) == 1:
        return _alone(costs, names[0])
    # fronts[i]: the labels (bottleneck, latency, stages) of the chains of stages 0..j
    # whose stage j ends by sending points[i] (None: the last stage, which sends nothing)
    fronts: dict[int | None, list[tuple]] = {None: [(0.0, 0.0, ())]}
    for j in range(len(names)):
        nxt: dict[int | None, list[tuple]] = {}
        for came, labels in fronts.items():
            for i, stage, bn, lat in _stages(costs, names, points, j, came):
                for pbn, plat, stages in labels:
                    _add(nxt.setdefault(i, []), (max(pbn, bn), plat + lat, (*stages, stage)))
        fronts = nxt
    finals = fronts.get(None, [])
    if not finals:
        return None
    bottleneck, latency, stages = min(finals, key=lambda f: _key(objective, f[0], f[1]))
    return ChainPlan(stages, latency, bottleneck, math.prod(s.fidelity for s in stages))


def _alone(costs: _Costs, node: str) -> ChainPlan:
    """`node` runs every segment (no hand-offs)."""
    cpu = costs.compute_ms(node, -1, len(costs.model.seg_ms) - 1)
    return ChainPlan((Stage(node, 0, len(costs.model.seg_ms) - 1, None, None, cpu, 0.0),),
                     cpu, cpu / costs.nodes[node].parallel, 1.0)


def _stages(costs: _Costs, names: Sequence[str], points: Sequence[_Point], j: int,
            came: int | None) -> Iterator[tuple[int | None, Stage, float, float]]:
    """What stage j of a chain of two or more along `names` can be, having received
    points[came] (None: stage 0, the origin, which starts at the input): (the index of the
    point it sends, None for the last stage; the Stage; its bottleneck; its latency).
    Every stage but the origin runs at least one segment."""
    node, end = names[j], len(costs.model.seg_ms) - 1
    previous = names[j - 1] if j else None
    start = -1 if came is None else points[came].after
    if j == len(names) - 1:
        if j and start < end:
            cpu = costs.stage_ms(node, start, end)
            bn, lat, back, up = costs.last(node, previous, cpu)
            yield None, Stage(node, start + 1, end, None, None, cpu, back, up_ms=up), bn, lat
        return
    for i in range(0 if came is None else came + 1, len(points)):
        p = points[i]
        cpu = costs.stage_ms(node, start, p.after)
        for bn, lat, b, c, wire, fid, nbytes, up in costs.hops(node, names[j + 1], p.name,
                                                               cpu, previous):
            yield (i, Stage(node, start + 1, p.after, p.name, b, c, wire, fid, nbytes, up),
                   bn, lat)


def cheapest(costs: _Costs, names: Sequence[str],
             price: Callable[[Stage, str | None], float]) -> ChainPlan | None:
    """The chain along `names` whose stages cost the least in total at `price` (of a stage
    and the node it sends to, None for the last: an additive cost, e.g. what a frame takes
    of each resource at given prices, the pricing step of edgesdk.policy.mix); None if
    none exists."""
    if len(names) == 1:
        return _alone(costs, names[0])
    points = _points(costs.model)
    receivers = [*names[1:], None]
    best: dict[int | None, tuple[float, float, float, tuple[Stage, ...]]] = {
        None: (0.0, 0.0, 0.0, ())}
    for j in range(len(names)):
        nxt: dict[int | None, tuple[float, float, float, tuple[Stage, ...]]] = {}
        for came, (cost, pbn, plat, stages) in best.items():
            for i, stage, bn, lat in _stages(costs, names, points, j, came):
                c = cost + price(stage, receivers[j])
                if i not in nxt or c < nxt[i][0]:
                    nxt[i] = (c, max(pbn, bn), plat + lat, (*stages, stage))
        best = nxt
    if None not in best:
        return None
    _, bottleneck, latency, stages = best[None]
    return ChainPlan(stages, latency, bottleneck, math.prod(s.fidelity for s in stages))


def _add(front: list[tuple], label: tuple) -> None:
    """Insert a (bottleneck, latency, ...) label into a Pareto front, unless dominated."""
    bn, lat = label[0], label[1]
    if any(f[0] <= bn and f[1] <= lat for f in front):
        return
    front[:] = [f for f in front if not (bn <= f[0] and lat <= f[1])]
    front.append(label)


def _check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise PolicyError(f"objective is {objective!r}, expected one of {list(OBJECTIVES)}")


def best_chain(model: ModelProfile, nodes: Sequence[Node], links: Links,
               objective: str = "throughput", max_stages: int | None = None,
               result_bytes: float = 4096.0, min_fidelity: float = 0.99,
               seed: int = 0, budget: int = 4000,
               stage_cpu_ms: float = STAGE_CPU_MS) -> ChainPlan:
    """The best chain over the nodes (nodes[0] is the origin and always stage 0): which
    nodes take part, in which order, and their cuts. max_stages=2 gives the best two-tier
    plan (the origin alone or with one other node). The search is exhaustive up to
    EXHAUSTIVE_LIMIT orders, else a local search of about `budget` evaluations (seeded:
    the same inputs give the same plan)."""
    costs = costs_of(model, nodes, links, result_bytes, min_fidelity, stage_cpu_ms)
    plans = search_orders(costs, [n.name for n in nodes], objective, max_stages, seed, budget)
    return min(plans, key=lambda p: _key(objective, p.bottleneck_ms, p.latency_ms))


def costs_of(model: ModelProfile, nodes: Sequence[Node], links: Links, result_bytes: float,
             min_fidelity: float, stage_cpu_ms: float) -> _Costs:
    """The cost model of `model` on these nodes (nodes[0]: the origin) and links."""
    if not nodes:
        raise PolicyError("no nodes: the origin device is nodes[0]")
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        raise PolicyError(f"node names repeat: {names}")
    return _Costs(model, {n.name: n for n in nodes}, links, result_bytes, min_fidelity,
                  stage_cpu_ms)


def search_orders(costs: _Costs, names: Sequence[str], objective: str,
                  max_stages: int | None = None, seed: int = 0, budget: int = 4000
                  ) -> list[ChainPlan]:
    """The best plan of every order of nodes the placement search evaluated (names[0], the
    origin, first in each): all of them up to EXHAUSTIVE_LIMIT orders, else those a local
    search of about `budget` evaluations saw. PolicyError if no order has a plan."""
    _check_objective(objective)
    origin, others = names[0], names[1:]
    limit = len(names) if max_stages is None else max(1, min(max_stages, len(names)))
    cache: dict[tuple[str, ...], ChainPlan | None] = {}

    def evaluate(order: tuple[str, ...]) -> ChainPlan | None:
        if order not in cache:
            cache[order] = _partition(costs, order, objective)
        return cache[order]

    if _orders(len(others), limit - 1) <= EXHAUSTIVE_LIMIT:
        for r in range(limit):
            for rest in itertools.permutations(others, r):
                evaluate((origin, *rest))
    else:
        _local_search(evaluate, origin, others, limit, objective, random.Random(seed), budget)
    plans = [p for p in cache.values() if p is not None and math.isfinite(p.bottleneck_ms)]
    if not plans:
        raise PolicyError("no chain fits: every order lacks cut points, allowed bits or an "
                          "open link")
    return plans


def _orders(n: int, r_max: int) -> int:
    """Ordered subsets of n items of size 0..r_max."""
    return sum(math.perm(n, r) for r in range(min(n, r_max) + 1))


def _local_search(evaluate, origin: str, others: Sequence[str], limit: int, objective: str,
                  rng: random.Random, budget: int) -> None:
    """First-improvement hill climbing over orders (evaluate caches every plan it sees),
    from the best two-tier orders, with random restarts until `budget` evaluations."""
    def score(order: tuple[str, ...]) -> tuple[float, float]:
        plan = evaluate(order)
        return (math.inf, math.inf) if plan is None else \
            _key(objective, plan.bottleneck_ms, plan.latency_ms)

    def neighbours(order: tuple[str, ...]) -> list[tuple[str, ...]]:
        rest = list(order[1:])
        unused = [n for n in others if n not in rest]
        out = []
        if len(rest) < limit - 1:
            out += [tuple(rest[:i] + [u] + rest[i:]) for u in unused
                    for i in range(len(rest) + 1)]
        out += [tuple(rest[:i] + rest[i + 1:]) for i in range(len(rest))]
        out += [tuple(rest[:i] + [u] + rest[i + 1:]) for u in unused for i in range(len(rest))]
        for i, j in itertools.combinations(range(len(rest)), 2):
            swapped = rest[:]
            swapped[i], swapped[j] = swapped[j], swapped[i]
            out.append(tuple(swapped))
        rng.shuffle(out)
        return [(origin, *o) for o in out]

    starts = sorted(((origin,), *((origin, n) for n in others)), key=score)
    evaluations = 0
    while evaluations < budget:
        current = starts.pop(0) if starts else _random_order(rng, origin, others, limit)
        current_score = score(current)
        improved = True
        while improved and evaluations < budget:
            improved = False
            for candidate in neighbours(current):
                evaluations += 1
                s = score(candidate)
                if s < current_score:
                    current, current_score, improved = candidate, s, True
                    break


def _random_order(rng: random.Random, origin: str, others: Sequence[str], limit: int
                  ) -> tuple[str, ...]:
    r = rng.randint(1, min(len(others), limit - 1))
    return (origin, *rng.sample(list(others), r))


__all__ = ["EXHAUSTIVE_LIMIT", "OBJECTIVES", "STAGE_CPU_MS", "ChainPlan", "Links", "Node", "Stage",
           "best_chain", "partition"]
