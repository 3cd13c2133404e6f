"""A bundle run across a chain of stages, pipelined: the origin device's side.

    nodes = [Node("cam0", slowdown=4.0),                                  # this device
             Node("cam1", "tcp://10.0.0.2:5555", slowdown=4.0),           # a peer camera
             Node("edge", "tcp://10.0.0.9:5555", workers=2)]              # the edge box
    links = Links(default_mbps=100.0, mbps={("cam1", "edge"): 8.0})
    with ChainRunner("model.edge", nodes, links) as chain:
        for result in chain.run(frames):           # in frame order, `window` frames in flight
            result.outputs, result.where, result.latency_ms, result.plan  # the chain it took
        chain.plan.describe(), chain.plan.shares, chain.replans

Every node but this one runs `edgesdk serve` with the bundle, each allowed to forward to
the next (`--next-hop`). edgesdk.policy.chain picks the stages; this device runs the first
one (its head segments), sends the cut's tensors to the second with the route of the rest,
and the reply comes back along the chain (edgesdk.transport.route). While stage k works
on frame t, stage k-1 already works on frame t+1: up to `window` frames are in flight, so
the chain's rate is its slowest stage's, not the sum of the stages. By Little's law a
chain delivers at most window / latency frames per second, so by default the window
follows the plan: twice its latency over its bottleneck (at least 2, at most MAX_WINDOW).

Side by side. For a stream (objective "throughput") the plan is a ChainMix: several
chains, each taking a share of the frames (edgesdk.policy.mix: e.g. this camera sends
some frames whole to a peer camera, some from a cut to the edge box, and computes a few
itself), so that no node idles while another is the bottleneck. Frames are dealt by
smooth weighted round robin over the planned rates; each chain holds at most its own cap
of frames in flight (twice its planned rate times its latency), and one that holds its
cap is passed over, so a node slower than measured takes fewer frames rather than a
queue. Results still come back in frame order.

Faults. A frame whose chain fails (a stage down, late, busy or refusing it) is finished
here from the tensors this device kept, so no frame is lost (`where="device"`, `error`
says why). When the failure names a stage that is gone (`hop_down` or `hop_timeout` from
the stage before it; for the first stage, its connection dropping, or SILENT_TIMEOUTS
frames in a row timing out), the plan is made again without it at once (`replans`);
a stage left out takes part again once it answers a hello, asked every `revive_s`.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import Bundle
from ..codec import decode_tensors, encode_tensors
from ..errors import (
    CodecError,
    ConfigError,
    EdgeError,
    RemoteError,
    Timeout,
    TransportError,
    Unreachable,
)
from ..policy.candidates import model_profile
from ..policy.chain import ChainPlan, Links, Node, best_chain, partition
from ..policy.mix import ChainMix, best_mix
from ..transport.client import Client, poll_clients
from ..transport.route import HOP_DOWN, HOP_TIMEOUT, Hop, route_fields
from .device import LocalRunner

SILENT_TIMEOUTS = 3  # frames in a row a first stage lets time out before it is left out
MAX_WINDOW = 16  # frames in flight at most (each holds its head's tensors here)


@dataclass(frozen=True)
class ChainResult:
    """One frame's answer. where: "chain" (the stages computed it) or "device" (this
    device finished it, see `error`); plan: the chain it was sent along; hops: each remote
    stage's timings as the reply reports them (server_ms, queue_ms), nearest first."""

    index: int
    outputs: dict[str, np.ndarray]
    where: str
    plan: str
    latency_ms: float
    hops: tuple = ()
    error: str | None = None


@dataclass(frozen=True)
class Replan:
    """The chain planned again: at which frame (-1: at start) and when (time.monotonic()),
    without which node, why, and the plan."""

    frame: int
    dropped: str
    reason: str
    plan: str
    at: float = 0.0


@dataclass
class _Flight:
    index: int
    started: float
    env: dict  # the tensors this device holds after its stage: a local finish starts here
    plan: ChainPlan
    client: Client | None = None
    rid: int | None = None
    drops: int = 0  # the client's connection drops when it was sent
    result: ChainResult | None = None
    future: Future | None = None  # this device computing for it (its head, a local finish)
    then: Callable[[_Flight, Future], None] | None = None  # what follows, on the loop


class ChainRunner:
    """Runs frames along a chain of stages (see the module docstring).

    nodes[0] is this device (no endpoint); the others are `edgesdk serve` endpoints.
    links: bandwidths and RTTs between them (default: 100 Mbit/s, 1 ms everywhere).
    objective: "throughput" (default: a stream of frames, spread over the chains side by
    side that give the most frames per second, edgesdk.policy.mix) or "latency" (the
    chain that answers a frame soonest). budget_ms: how long a frame may take along the
    chain before this device finishes it itself. window: frames in flight at most (None:
    each chain's cap, see _caps; a number replaces the caps, every chain may then hold up
    to it). plan: a ChainPlan or ChainMix to start with (`self.plan` is always a
    ChainMix; one chain is a mix of one). replan: plan again without a stage that failed
    (False: keep the plan whatever happens, e.g. to measure it; failed frames still finish
    here).
    server_keys: the CURVE public keys (a .key file or the z85 key) of the stages that
    want one, by node name; client_keys: this device's key pair file (what their --allow
    directories hold; without it an ephemeral pair, which only an open server takes).
    """

    def __init__(self, bundle: Bundle | str | Path, nodes: Sequence[Node],
                 links: Links | None = None, *, objective: str = "throughput",
                 budget_ms: float = 1000.0, window: int | None = None, threads: int = 1,
                 revive_s: float = 30.0, plan: ChainPlan | ChainMix | None = None,
                 replan: bool = True, server_keys: Mapping[str, Any] | None = None,
                 client_keys: Any = None) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        if not nodes or nodes[0].endpoint is not None:
            raise ConfigError("nodes[0] is this device: a Node without an endpoint")
        missing = [n.name for n in nodes[1:] if not n.endpoint]
        if missing:
            raise ConfigError(f"nodes {missing} have no endpoint; every node but this "
                              "device runs `edgesdk serve`")
        if window is not None and not (isinstance(window, int) and 1 <= window <= MAX_WINDOW):
            raise ConfigError(f"window is {window!r}, expected an int in [1, {MAX_WINDOW}] "
                              "(or None: from the plan)")
        if not budget_ms > 0:
            raise ConfigError(f"budget_ms is {budget_ms!r}, expected a number > 0")
        self.nodes = {n.name: n for n in nodes}
        unknown = sorted(set(server_keys or {}) - {n.name for n in nodes[1:]})
        if unknown:
            raise ConfigError(f"server_keys names {unknown}, which are not stages: "
                              f"{[n.name for n in nodes[1:]]}")
        self._server_keys = {self.nodes[n].endpoint: k for n, k in (server_keys or {}).items()}
        self._client_keys = client_keys
        self.order = [n.name for n in nodes]
        self.links = links or Links()
        self.objective = objective
        self.budget_s = budget_ms / 1e3
        self.window = window
        self.revive_s = revive_s
        self.replan = replan
        self.model = model_profile(self.bundle.manifest)
        self.local = LocalRunner(self.bundle, threads=threads)
        self.down: dict[str, float] = {}  # node -> when it was left out
        self._silent: dict[str, int] = {}  # first stage -> frames in a row it let time out
        self.replans: list[Replan] = []
        self._clients: dict[str, Client] = {}
        self._outputs = self.bundle.manifest.outputs
        # what a result weighs on the way back (at 32 bits until a stage says otherwise)
        self.result_bytes = float(sum(t.fp32_bytes for t in self._outputs))
        try:
            self.links = self._discover(self.links)
            self.plan = plan or self._best()
        except BaseException:
            self._close_clients()  # a context with open sockets never ends
            raise
        # this device's segments run here, one frame at a time, beside the loop; each one
        # done wakes the loop through a pipe, which it polls with the stages' sockets
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgesdk-chain")
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)

    def _discover(self, links: Links) -> Links:
        """Measure this device and ask every stage what it serves (_hello); the blocked
        links of every stage that answered."""
        origin = self.nodes[self.order[0]]
        if origin.slowdown is None:
            self.nodes[origin.name] = replace(origin, slowdown=self._own_slowdown())
        blocked = set(links.blocked)
        for name in self.order[1:]:
            answer = self._hello(name)
            if isinstance(answer, str):
                now = self.down[name] = time.monotonic()
                self.replans.append(Replan(-1, name, answer, "", now))
            else:
                blocked |= answer
        return replace(links, blocked=frozenset(blocked))

    def _hello(self, name: str) -> set[tuple[str, str]] | str:
        """Ask stage `name` what it serves and where it may forward: its node gets its
        measured slowdown and workers, and the pairs (name, other) it may not forward to
        come back; or why it cannot take part (no answer, not this bundle)."""
        node = self.nodes[name]
        try:
            welcome = self._client(node.endpoint).hello(budget_s=min(self.budget_s, 2.0))
        except TransportError as exc:
            return f"hello: {type(exc).__name__}: {exc}"
        served = welcome.bundles.get(self.bundle.source_sha256)
        if not isinstance(served, dict):
            return f"{node.endpoint} does not serve bundle {self.bundle.name!r}"
        bits = served.get("output_bits")
        if bits in (16, 32):  # the servers' result encoding (edgesdk serve --output-bits)
            self.result_bytes = float(sum(t.fp32_bytes for t in self._outputs)) * bits / 32
        workers = welcome.load.get("workers")
        self.nodes[name] = replace(
            node, slowdown=node.slowdown or self._their_slowdown(served.get("profile")),
            workers=node.workers or (workers if isinstance(workers, int) and workers > 0
                                     else None))
        return {(name, other) for other in self.order[1:]
                if other != name and self.nodes[other].endpoint not in welcome.next_hops}

    def _own_slowdown(self, runs: int = 3) -> float:
        """This device's segment times over the profile's: the median of `runs` timed
        passes (after LocalRunner's warm-up), all segments together."""
        env = {t.name: np.zeros(t.shape, t.dtype) for t in self.bundle.manifest.inputs}
        passes = []
        for _ in range(runs):
            passes.append(sum(self.local.run_segment(i, env)
                              for i in range(len(self.local.segments))))
        return max(float(np.median(passes)) / max(sum(self.model.seg_ms), 1e-9), 1e-3)

    def _their_slowdown(self, profile: Any) -> float | None:
        """A stage's segment times (its welcome's profile, measured by its first worker)
        over this bundle's profile, on the segments it measured; None if it measured
        none."""
        try:
            theirs = {int(s["index"]): float(s["median_ms"]) for s in profile["segments"]}
        except (KeyError, TypeError, ValueError):
            return None
        ours = sum(self.model.seg_ms[i] for i in theirs if 0 <= i < len(self.model.seg_ms))
        total = sum(ms for i, ms in theirs.items() if 0 <= i < len(self.model.seg_ms))
        return total / ours if ours > 0 and total > 0 else None

    # -- planning --------------------------------------------------------------------------
    @property
    def plan(self) -> ChainMix:
        """The chains frames go along (one, or several side by side with their shares)."""
        return self._plan

    @plan.setter
    def plan(self, plan: ChainPlan | ChainMix) -> None:
        self._plan = plan if isinstance(plan, ChainMix) else ChainMix.of(plan)
        self._credits = [0.0] * len(self._plan.chains)

    def _best(self) -> ChainMix:
        up = [self.nodes[n] for n in self.order if n not in self.down]
        if self.objective == "throughput":
            return best_mix(self.model, up, self.links, result_bytes=self.result_bytes)
        return ChainMix.of(best_chain(self.model, up, self.links, objective=self.objective,
                                      result_bytes=self.result_bytes))

    def _deal(self, flights: Sequence[_Flight]) -> ChainPlan | None:
        """The chain the next frame goes along, or None while none may take one (wait for
        a frame to finish). Smooth weighted round robin over the plan's rates: each
        chain's credit grows by its rate, the richest takes the frame and pays the total,
        so shares hold over every few frames, interleaved. A chain holding its cap of
        frames in flight is passed over: a chain slower than planned takes fewer frames
        instead of queueing them (its credit stops growing at the total), and the richest
        chain that leaves this device takes the frame. Never this device alone: it is the
        dearest use of the CPU every chain starts on, so it takes only its own share."""
        mix, credits = self._plan, self._credits
        waiting = [f for f in flights if f.result is None]
        if len(waiting) >= self.in_flight():
            return None
        held = Counter(id(f.plan) for f in waiting)
        caps = self._caps() if self.window is None else [math.inf] * len(mix.chains)
        ready = [k for k, c in enumerate(mix.chains) if held[id(c)] < caps[k]]
        if not ready:
            return None
        grown = [min(c + rate, mix.fps) for c, rate in zip(credits, mix.rates)]
        k = max(range(len(grown)), key=grown.__getitem__)
        if k not in ready:
            remote = [j for j in ready if len(mix.chains[j].stages) > 1]
            if not remote:
                return None  # no frame dealt: no credit either
            k = max(remote, key=grown.__getitem__)
        credits[:] = grown
        credits[k] -= mix.fps
        return mix.chains[k]

    def _caps(self) -> list[float]:
        """Frames each chain of the plan may hold in flight: twice what it holds at its
        planned rate by Little's law (rate x latency), at least 2; this device alone,
        one (the one it computes)."""
        return [1 if len(c.stages) == 1 else max(2, math.ceil(2 * rate * c.latency_ms / 1e3))
                for rate, c in zip(self._plan.rates, self._plan.chains)]

    def plan_for(self, order: Sequence[str], points: Sequence[str] | None = None
                 ) -> ChainPlan:
        """The best plan along exactly these nodes, in this order (and only these cut
        points, if given), costed with the speeds and links this runner measured: e.g. a
        fixed two-tier split to compare a chain with. ConfigError when none fits."""
        plan = partition(self.model, [self.nodes[n] for n in order], self.links,
                         objective=self.objective, result_bytes=self.result_bytes,
                         points=points)
        if plan is None or not math.isfinite(plan.bottleneck_ms):
            raise ConfigError(f"no plan along {list(order)} at points {points}: too few cut "
                              "points, or a stage that may not forward to the next "
                              f"(blocked: {sorted(self.links.blocked)})")
        return plan

    def in_flight(self) -> int:
        """Frames kept in flight at most: `window`, or by default what the plan needs to
        run at its rate, the sum of its chains' caps (_caps; one chain: twice its latency
        over its bottleneck, see the module doc), at most MAX_WINDOW."""
        if self.window is not None:
            return self.window
        return min(MAX_WINDOW, sum(self._caps()))

    def _drop(self, node: str, frame: int, reason: str) -> None:
        if not self.replan or node in self.down or node == self.order[0]:
            return
        now = self.down[node] = time.monotonic()
        self.plan = self._best()
        self.replans.append(Replan(frame, node, reason, self.plan.describe(), now))

    def _revive(self, frame: int) -> None:
        """Stages left out revive_s ago that answer a hello again (with what they serve and
        where they forward now) take part again."""
        now = time.monotonic()
        due = [n for n, t in self.down.items() if now - t >= self.revive_s]
        if not self.replan or not due:
            return
        back = []
        for name in due:
            answer = self._hello(name)
            if isinstance(answer, str):
                self.down[name] = now  # still out: asked again revive_s from now
                continue
            del self.down[name]
            self.links = replace(self.links, blocked=frozenset(
                {b for b in self.links.blocked if b[0] != name} | answer))
            back.append(name)
        if back:
            self.plan = self._best()
            self.replans.append(Replan(frame, "", f"{back} answer again", self.plan.describe(),
                                       now))

    # -- running ---------------------------------------------------------------------------
    def infer(self, x: Any) -> ChainResult:
        """One frame along the chain (run() pipelines many)."""
        return next(iter(self.run([x])))

    def run(self, frames: Iterable[Any]) -> Iterator[ChainResult]:
        """Results of `frames` in order, keeping up to `window` of them in flight. A
        caller that stops early (break, an exception) leaves nothing in flight."""
        flights: deque[_Flight] = deque()
        try:
            for i, x in enumerate(frames):
                feed = self.local.feed(x)  # a bad frame raises here, before any work
                self._revive(i)
                while (chain := self._deal(flights)) is None:
                    self._pump(flights, wait_s=0.05)
                    yield from self._finished(flights)
                flights.append(self._start(i, feed, chain))
                self._pump(flights, wait_s=0.0)
                yield from self._finished(flights)
            while flights:
                self._pump(flights, wait_s=0.05)
                yield from self._finished(flights)
        finally:
            for f in flights:
                if f.result is None and f.rid is not None:
                    f.client.cancel(f.rid)  # its reply, if any, is dropped as late
                if f.future is not None:
                    f.future.cancel()  # unless it is computing already

    def _start(self, index: int, env: dict, plan: ChainPlan) -> _Flight:
        """A frame dealt to `plan`: its head segments (all of them for this device alone)
        and encoding run on the compute thread; _send takes it from there."""
        flight = _Flight(index, time.perf_counter(), env, plan)
        self._compute_then(flight, self._head, self._send)
        return flight

    def _compute_then(self, flight: _Flight, work: Callable[[_Flight], Any],
                      then: Callable[[_Flight, Future], None]) -> None:
        """Run work(flight) on this device's compute thread; _pump calls then(flight,
        future) once it is done. The loop that deals frames and reads replies goes on
        meanwhile: a head or a local finish that takes a whole frame's compute does not
        leave the other chains without frames or their replies unread."""
        flight.future, flight.then = self._compute.submit(work, flight), then
        flight.future.add_done_callback(self._wake)

    def _wake(self, _: Future) -> None:
        with contextlib.suppress(OSError):  # full: the loop is awake already; closed: done
            os.write(self._wake_w, b"\0")

    def _head(self, flight: _Flight) -> list | None:
        """Compute thread: the plan's first stage on this device, and the encoded cut it
        sends (None when this device runs every segment)."""
        head = flight.plan.stages[0]
        for i in range(head.first, head.last + 1):
            self.local.run_segment(i, flight.env)
        if len(flight.plan.stages) == 1:
            return None
        tensors = self.bundle.manifest.inputs if head.send == "input" else \
            self.bundle.cut(head.send).tensors
        return encode_tensors([flight.env[t.name] for t in tensors], bits=head.bits)

    def _send(self, flight: _Flight, computed: Future) -> None:
        """The head is computed: send its cut to the second stage with the route of the
        rest (or, for this device alone, the answer is there)."""
        try:
            frames = computed.result()
        except CodecError as exc:
            self._local_finish(flight, f"{type(exc).__name__}: {exc}")
            return
        plan = flight.plan
        if frames is None:
            self._finish(flight, [flight.env[t.name] for t in self._outputs], "device")
            return
        gone = [n for n in plan.nodes if n in self.down]
        if gone:  # left out while this head was computed: it would wait out its deadline
            self._local_finish(flight, f"{gone} left the plan before this frame was sent")
            return
        second = plan.stages[1]
        fields: dict[str, Any] = {}
        if second.send is not None:
            rest = [Hop(self.nodes[s.node].endpoint, s.send, s.bits) for s in plan.stages[2:]]
            fields = {"stop": second.send, "bits": second.bits}
            if rest:
                fields["route"] = route_fields(rest)
        try:
            flight.client = self._client(self.nodes[second.node].endpoint)
            flight.drops = flight.client.drops()
            flight.rid = flight.client.submit(
                frames, budget_s=self.budget_s, bundle=self.bundle.source_sha256,
                cut=plan.stages[0].send, fields=fields)
        except TransportError as exc:
            self._local_finish(flight, f"{type(exc).__name__}: {exc}")

    def _client(self, endpoint: str) -> Client:
        if endpoint not in self._clients:
            # no retries: a resend would arrive after the stages gave up on the first one
            key = self._server_keys.get(endpoint)
            self._clients[endpoint] = Client(
                endpoint, retries=0, window=MAX_WINDOW, server_public_key=key,
                client_keys=self._client_keys if key is not None else None)
        return self._clients[endpoint]

    def _pump(self, flights: deque[_Flight], wait_s: float) -> None:
        """Drive the sockets of the frames in flight and this device's computing for them;
        take each that has an outcome a step further. Waits up to wait_s for one."""
        computing = [f for f in flights if f.future is not None]
        waiting = [f for f in flights if f.result is None and f.rid is not None]
        clients = list(dict.fromkeys(f.client for f in waiting))
        if clients or computing:
            poll_clients(clients, wait_s, self._wake_r)
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
        for f in computing:
            if f.future.done():
                future, then = f.future, f.then
                f.future = f.then = None
                then(f, future)
        drops = {id(c): c.drops() for c in clients}
        for f in waiting:
            if f.client.done(f.rid):
                self._outcome(f)
            elif drops[id(f.client)] > f.drops:
                # its connection to the first stage dropped: no reply will come (ZeroMQ
                # does not resend across connections), so do not wait for the deadline
                f.client.cancel(f.rid)
                self._failed(f, Unreachable(f"the connection to {f.client.endpoint} dropped "
                                            "with this frame on it"))

    def _outcome(self, flight: _Flight) -> None:
        try:
            reply = flight.client.wait(flight.rid)
            arrays = decode_tensors(reply.frames, self._outputs)
        except (TransportError, CodecError) as exc:
            self._failed(flight, exc)
            return
        self._silent.pop(flight.plan.stages[1].node, None)  # it answers
        hops = reply.envelope.get("hops")
        if not isinstance(hops, list):  # the stage answered itself: it relayed nothing
            hops = [{"endpoint": flight.client.endpoint, "server_ms": reply.server_ms,
                     "queue_ms": reply.queue_ms}]
        self._finish(flight, [arrays[t.name] for t in self._outputs], "chain", tuple(hops))

    def _failed(self, flight: _Flight, exc: EdgeError) -> None:
        node = self._culprit(flight.plan, exc)
        if node is not None:
            self._drop(node, flight.index, f"{type(exc).__name__}: {exc}"[:300])
        self._local_finish(flight, f"{type(exc).__name__}: {exc}")

    def _culprit(self, plan: ChainPlan, exc: EdgeError) -> str | None:
        """The node a failure shows is gone: the one a stage names as its next hop that is
        down or silent; the first remote stage when its connection is gone, or when it
        let SILENT_TIMEOUTS frames in a row time out without a word (a plain timeout
        alone may be a slow stage further down whose error did not make it back in
        time). None for the failures of a live chain (busy, expired, a bad request)."""
        first = plan.stages[1].node
        if isinstance(exc, RemoteError) and exc.code in (HOP_DOWN, HOP_TIMEOUT):
            hop = exc.fields.get("hop")
            return next((n for n in plan.nodes if self.nodes[n].endpoint == hop), None)
        if isinstance(exc, Unreachable):
            return first
        if isinstance(exc, Timeout) and not exc.refused:
            self._silent[first] = self._silent.get(first, 0) + 1
            return first if self._silent[first] >= SILENT_TIMEOUTS else None
        return None

    def _local_finish(self, flight: _Flight, error: str) -> None:
        """The frame's chain failed: this device computes the rest from what it kept."""
        flight.rid = None

        def rest(f: _Flight) -> None:
            for i in range(f.plan.stages[0].last + 1, len(self.local.segments)):
                self.local.run_segment(i, f.env)

        def done(f: _Flight, computed: Future) -> None:
            computed.result()
            self._finish(f, [f.env[t.name] for t in self._outputs], "device", error=error)

        self._compute_then(flight, rest, done)

    def _finish(self, flight: _Flight, outputs: list, where: str, hops: tuple = (),
                error: str | None = None) -> None:
        flight.result = ChainResult(
            flight.index, {t.name: o for t, o in zip(self._outputs, outputs)}, where,
            flight.plan.describe(), (time.perf_counter() - flight.started) * 1e3, hops, error)
        flight.env = {}

    @staticmethod
    def _finished(flights: deque[_Flight]) -> Iterator[ChainResult]:
        while flights and flights[0].result is not None:
            yield flights.popleft().result

    def close(self) -> None:
        self._compute.shutdown(wait=True, cancel_futures=True)
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:  # once: a closed fd's number may belong to another file by now
                os.close(fd)
        self._wake_r = self._wake_w = -1
        self._close_clients()

    def _close_clients(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def __enter__(self) -> ChainRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["ChainResult", "ChainRunner", "Replan"]
