"""The Engine: one call per frame that runs the head of a split model here, stops at a
confident exit, offloads the rest when that is faster, and never blocks past its deadline.

Per frame (`infer`, or the two halves `_front` and `_back` that `stream` interleaves):

1. decide: the strategy (the bundled policy network by default) picks a candidate
   (exits, cut, bits) from live estimates: bandwidth, RTT, server queue and speed (the
   EdgeLink's), this device's slowdown against its profile, the SLO and the task. When
   the link cannot offload now, only device-only candidates are considered.
2. front: run segments up to the cut, evaluating the plan's exits after each segment;
   a confident exit ends the frame. With an adaptive strategy, an exit that does not
   fire re-decides the rest of this frame (SPINN/EDDI style): continue here, offload from
   here, or go on to the next exit, chosen from the candidates consistent with what ran
   (policy.build_candidates(after_exits=k): exit probabilities conditioned on the misses,
   times from now) against the budget that is left. Result.plans lists every plan the
   frame followed. Encode the cut's tensors (with the zstd stage if the plan says so) and
   hand them to the link. Deciding is cached, so that frames that look alike pay for it
   once: the decision by the rounded state (state_key), the state until the link has new
   estimates, each re-decision by exit position, state key and rounded budget left, all
   re-evaluated every DECISION_TTL_S.
3. back: wait for the reply until the frame's budget runs out; decode the outputs.
   On Timeout (or a reply overdue), ServerBusy, ServerError or Unreachable, finish here if
   that fits the SLO (the bundle has every segment), else answer with the most confident
   exit already computed, else finish here anyway (late, but never lost). The reason is
   in Result.fallback_reason.

The frame's wait for the reply keeps back the time a local finish would take, when that
still fits the SLO: if the server has not answered by then, finishing here is the faster
way to an answer within the deadline. The request itself stays open to the deadline: a
reply that comes while the local finish runs stops it (runtime.Cancel: onnxruntime stops
between two nodes) and answers, so a reply a few ms late costs those ms, not a local run.

A frame that an adaptive strategy keeps here brings no news of the link or the server, so
after one of them looked bad the decision could stay local long after it recovered. Now and
then such a frame explores instead (policy.explore): it follows the plan that would win in a
plausible best case, an offload, with the budget and fallback of any offload, and its reply
corrects the estimates. The frame itself, not a copy sent in the background while the
device goes on: a transfer timed while the device computes waits for the CPU too, and on a
throttled device that read a fast link as a slow one (see DeviceActivity).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..bundle import FP32, Bundle, input_cut
from ..codec import decode_tensors, encode_tensors
from ..errors import (
    BundleError,
    CodecError,
    ConfigError,
    PolicyError,
    ServerBusy,
    ServerError,
    Timeout,
    TransportError,
    Unreachable,
)
from ..estimators import (
    PowerModel,
    SlowdownEstimator,
    detected_preset,
    power_model,
    usable_cpus,
)
from ..policy import (
    EXPLORE_MAX_S,
    EXPLORE_MIN_S,
    FALLBACK_MARGIN_MS,
    MIN_BUDGET_MS,
    TASKS,
    Candidate,
    EnergyPrice,
    State,
    build_candidates,
    expected_rewards,
    explore_pick,
    model_profile,
    offload_budget,
    plan,
)
from ..policy.stream import Speed, StreamController
from ..runtime import Cancel, Cancelled
from .cpu_quota import QuotaStalls
from .device import ExitAnswer, LocalRunner
from .link import DeviceActivity, EdgeLink
from .plan import Plan, Strategy, Task
from .result import Result, Timings
from .servers import ServerSet
from .strategy import log_step, make_chooser, plan_rest, state_key, with_slo

DECISION_TTL_S = 0.25  # a cached decision is re-evaluated at least this often
# The decision state is rebuilt when the link reports new estimates (EdgeLink.version),
# when the cached decision is due for re-evaluation, and at least this often for other
# callers of state(). What changes without new samples (the device slowdown, frame by
# frame; the link model's ageing; the server slowdown's relaxation) then reaches the
# decisions within DECISION_TTL_S, as the exact state did through a cached decision
# before: a rebuild (snapshot, validated State, key) costs ~0.1 ms (~0.5 ms on a
# throttled device), and every frame paid it; a new state also tends to start new cache
# keys (its rounded estimates cross a step), each a planner call per exit position.
STATE_TTL_S = DECISION_TTL_S
# The exits' own cost, measured in frames (see _reprice_exits): how often it is checked,
# the runs it needs per exit, how far from the table's it may drift before the tables are
# rebuilt (each rebuild empties the decision caches, so not for noise), and how long an
# exit priced out may go unrun before it gets the profile's price back, to be measured anew
REPRICE_EVERY_S = 2.0
REPRICE_MIN_RUNS = 8
REPRICE_TOLERANCE = 1.25
REPRICE_MAX_AGE_S = 60.0
# at most one frame per this many seconds times its exits: a CPU clock read costs ~0.7 us,
# several per frame, against digits' 100-us frames
EXIT_TIMING_GAP_S = 0.05
REST_CACHE_MAX = 1024  # re-decisions kept: a jittery budget and a drifting state make keys
_REASONS = {Timeout: "timeout", ServerBusy: "busy", ServerError: "server_error",
            Unreachable: "unreachable"}


@dataclass
class _Frame:
    """A frame between its front (device) half and its back (network) half."""

    id: int
    t0: float
    deadline: float
    env: dict[str, np.ndarray]
    plan: Candidate
    reason: str | None = None
    state: State | None = None  # what the frame's decision saw (None: a fixed strategy)
    key: tuple = ()  # state_key(state): the re-decisions' cache key
    offline: bool = False  # only device-only plans were possible at the frame's start
    exits_run: int = 0  # the first exits_run exits of the cascade have answered
    # the decision, then each re-decision (or, exploring, the plan explored)
    plans: list[Candidate] = field(default_factory=list)
    device_ms: float = 0.0
    encode_ms: float = 0.0
    next_segment: int = 0
    best_exit: ExitAnswer | None = None
    result: Result | None = None  # set when the front already finished the frame
    future: Future | None = None
    server: str | None = None  # the endpoint the offload went to
    offload_until: float = 0.0  # monotonic time the offload's budget runs out
    sent_bytes: int = 0  # what the offload put on the wire
    sent_at: float = 0.0  # monotonic time it was sent
    radio_gap_s: float = math.inf  # since the engine's previous offload (the radio's tail)
    radio_ms: float = 0.0  # how long a failed offload kept the radio up
    done_at: float = math.inf  # monotonic time the offload's outcome arrived
    runner: Any = None  # the LocalRunner its segments run on (stream control's speed)
    exploring: bool = False  # it follows policy.explore's pick, not the decision (kept)
    speed: Speed = Speed(1)  # its threads, and their speedup over the engine's own
    timed: bool = False  # its exit steps are timed (see Engine._reprice_exits)

    def stamp(self, _future: Future) -> None:
        """The offload's done-callback (on the link thread): when its outcome came."""
        self.done_at = time.monotonic()


def _exit_clock(speed: Speed) -> Callable[[], float]:
    """The clock that prices exits (see Engine._reprice_exits): this thread's CPU time when
    the frame runs on this thread alone. On a CPU-quota throttled device a 0.1-ms exit step
    mostly runs between stalls, at full speed, while its share of the quota costs the
    frames ~4x that on average: its wall time over the segment's wall ratio priced it at a
    fraction of its cost. With intra-op threads the segment's CPU is spread over them: wall
    time then."""
    return time.thread_time if speed.threads == 1 else time.perf_counter


def _chain_ms(runner: LocalRunner, runs: int = 5) -> float:
    """The median time of the whole chain on `runner` (zeros in; its one-file model
    where the bundle has one)."""
    env = {t.name: np.zeros(t.shape, t.dtype) for t in runner.inputs}
    times = []
    for _ in range(runs):
        if runner.whole is not None:
            times.append(runner.run_whole(dict(env)))
        else:
            e = dict(env)
            times.append(math.fsum(runner.run_segment(i, e) for i in range(len(runner.segments))))
    return float(np.median(times))


def _stored_power(manifest: Any, device: str | None) -> dict | None:
    """The power model `edgesdk profile --watts` stored in the device's profile, if any."""
    profiles = manifest.profiles
    name = device or next(iter(profiles), None)
    prof = profiles.get(name) if name is not None else None
    return prof.get("power") if isinstance(prof, Mapping) else None


class Engine:
    """Device-edge inference for one bundle.

        with Engine("digits.edge", server="tcp://edge:5555", slo_ms=50) as engine:
            result = engine.infer(x)        # Result: output, where, exit_name, cut, bits...

    bundle: a Bundle or its directory. server: "tcp://host:port" of `edgesdk serve`, a
    list of them (several edge boxes: each frame offloads to the one whose estimates
    promise the best plan, and a box that fails is replaced by the next; engine.servers),
    or None (device only). slo_ms: each frame's latency budget. task: "balanced", "accuracy"
    or "latency" (how the reward trades accuracy against time, edgesdk.policy.TASKS).
    threads: onnxruntime intra-op threads per segment. curve_server_key: the server's
    CURVE public key (z85 or a .key file); client_keys: this device's key pair file.
    strategy: "planner" (the default: the analytic planner, which models the engine's own
    timeouts and fallbacks), "policy" (the bundled network: it re-ranks the planner's best
    few, and did not beat the planner on held-out traces, see `edgesdk policy eval`), "device"
    (all exits, then the whole model here), "edge" (send the input at 8 bits), a
    Candidate, a Plan (edgesdk.engine.Plan(cut, bits, exits, zstd): a fixed split) or its
    string form "CUT@BITS" (with every exit before the cut; "CUT@BITS/E" with the first E
    exits). The entropy stage: "CUT@BITS+z" tries zstd on the payload,
    "CUT@BITS-z" sends it raw-packed, plain "CUT@BITS" (and "edge", and a Candidate that
    is not in the table) keeps its old meaning: zstd tried, unless the profile measured
    that zstd does not shrink this cut's payload (then raw, which the codec would have
    sent anyway). "policy" and "planner" choose compression per frame, and re-decide the
    rest of a frame after each exit that does not fire (both with the planner, see
    engine.strategy.plan_rest); fixed strategies never do.
    device: which stored profile describes this device (default: the first; if the
    bundle has none, one is measured now). max_in_flight: frames `stream` overlaps
    (ConfigError below 1). connect_timeout_s: how long the constructor waits for the
    server's welcome. The segments and exits that run here are `self.local` (LocalRunner).
    bundle_public_key: an Ed25519 public key (the PEM file `edgesdk keys new` wrote, PEM
    bytes or a key object): the bundle must carry a valid signature by it (`edgesdk keys
    sign`), else BundleError naming its signature.json (MissingDependency without the
    `sign` extra). The bundle's digest is checked at load either way, and sent in the
    hello: a server with another copy of the bundle gives fallback_reason
    "bundle_mismatch".
    sparse: offloads without zstd send the quantized tensors sparse-packed (the zero codes
    as a bitmap, codec compress="sparse": ~0.6x the bytes of ReLU maps at 8 bits, at about
    the cost of packing), and the planner prices them with the profile's measured sparse
    sizes (`edgesdk profile` stores them). Off by default: the server must run an edgesdk
    whose codec reads sparse payloads (this version or later).
    explore: while an adaptive strategy keeps frames here, offload a frame now and then
    as the plan that would win in a plausible best case (policy.explore; 4 a second at
    most, fewer while frames stay here), whose reply corrects the estimates. False: never,
    e.g. on a metered link; then a server that timed out is tried again only as its
    timeouts' bound relaxes (a half-life of 20 s).
    power: this device's energy model (estimators.PowerModel, a preset name "pi4"/"pi5", or
    measured values "idle=W,load=W"); default: what `edgesdk profile --watts` stored in the
    profile, else the preset of the Raspberry Pi this runs on, else none (Result.energy_j
    is then nan). energy_weight: the price of energy in the planner's reward, per frame
    run wholly on the device (policy.EnergyPrice: 1 makes that frame's device energy worth
    one SLO of latency; 0, the default: energy is free). Needs a power model and the
    planner (the bundled network was trained without energy); PolicyError otherwise.
    """

    def __init__(self, bundle: Bundle | str, server: str | None = None, *,
                 slo_ms: float = 100.0, task: Task = "balanced", threads: int = 1,
                 curve_server_key: Any = None, client_keys: Any = None,
                 strategy: Strategy | Plan | Candidate | str = "planner",
                 device: str | None = None,
                 max_in_flight: int = 2, connect_timeout_s: float = 2.0,
                 bundle_public_key: Any = None, sparse: bool = False,
                 explore: bool = True, power: PowerModel | str | None = None,
                 energy_weight: float = 0.0) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        if bundle_public_key is not None:
            self.bundle.check_signature(bundle_public_key)
        if not (isinstance(slo_ms, (int, float)) and math.isfinite(slo_ms) and slo_ms > 0):
            raise PolicyError(f"slo_ms is {slo_ms!r}, expected a finite number > 0")
        if task not in TASKS:
            raise PolicyError(f"task is {task!r}, expected one of {sorted(TASKS)}")
        if not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise ConfigError(f"max_in_flight is {max_in_flight!r}, expected an int >= 1")
        for name, flag in (("sparse", sparse), ("explore", explore)):
            if not isinstance(flag, bool):
                raise ConfigError(f"{name} is {flag!r}, expected True or False")
        self.slo_ms = float(slo_ms)
        self.task = task
        self.max_in_flight = max_in_flight
        self.local = LocalRunner(self.bundle, threads)  # the segments and exits run here
        self._kind = self.bundle.manifest.output_kind()  # what Result.output is
        manifest = self._with_profile(device, threads)
        self._sparse = sparse
        self._profile = model_profile(manifest, device, sparse=sparse)
        self._threads = threads
        self.power = self._power_model(power, manifest, device)
        self._energy = self._energy_price(energy_weight, strategy)
        self._speed = Speed(threads)  # the speed frames run at (stream control changes it)
        self._runners: dict[int, LocalRunner] = {}  # stream control's other thread counts
        self._speeds: dict[tuple[int, ...], tuple[Speed, ...]] = {}  # see stream_speeds
        self._controller: StreamController | None = None  # during a controlled stream
        self._control_state: State | None = None  # what its last action was chosen with
        self._stream_ref_j = 0.0  # its energy unit: a frame wholly here at self._threads
        self._last_sent_at = -math.inf  # the previous offload (its radio tail)
        self._frame_gap_s = math.inf  # time between frames, recent average
        self._last_frame_at = -math.inf
        self._seg_ms = self._profile.seg_ms
        self._build_tables()
        self._choose = make_chooser(strategy, self._base_table, self.bundle.name)
        self._adaptive = strategy in ("policy", "planner")
        # The model versions this strategy may run (an adaptive one: every version the
        # profile measured; a fixed plan: its own), opened now as the fp32 sessions were
        # (see LocalRunner's warm-up)
        self.local.add_versions(
            self._profile.versions if self._adaptive else
            {self._base_table.candidates[self._choose(self._base_table, None)].version} -
            {FP32}, threads)
        self._explores = explore and self._adaptive
        # The per-frame re-decision after a missed exit (adaptive strategies only) chooses
        # from the rest tables (_build_tables). The planner scores it for "policy" too: what
        # changed since the frame's decision (position, conditioned exit odds, budget left)
        # is what its model is exact about, and it takes ~30 us on a 50-row table where the
        # network takes ~130 us.
        self._choose_rest = plan_rest
        # Each exit's recent cost on this device, head and re-decision, and when it last
        # ran (see _reprice_exits)
        self._profiled_exits = self._profile.exits
        self._exit_runs = [deque(maxlen=2 * REPRICE_MIN_RUNS) for _ in self._profile.exits]
        self._exit_ran_at = [-math.inf] * len(self._profile.exits)
        self._reprice_at = time.monotonic() + REPRICE_EVERY_S
        self._exit_timing_at = -math.inf
        self._last_key: tuple | None = None  # the decision cache (see state_key)
        self._last_until = 0.0
        self._last_choice: Candidate | None = None
        self._last_state: State | None = None
        self._last_state_key: tuple = ()
        # The decision state, kept between frames (see state()): the link version it
        # was built at, when, the State and its key
        self._state: tuple[int, float, State, tuple] | None = None
        # Re-decisions, by (exits run, offline, state key, rounded budget left): frames
        # that look alike miss their exits alike and re-plan alike. Cleared when the
        # tables change (a welcome) and at REST_CACHE_MAX entries
        self._rest_cache: dict[tuple, int] = {}
        self._slowdown = SlowdownEstimator([{"median_ms": m} for m in self._seg_ms])
        self._stalls = QuotaStalls.of_this_process()
        # The warm-up's timed runs: the first frame's plan (its local-finish reserve above
        # all) already knows this device's speed, not only the profile's
        for i, ms in self.local.warm_ms:
            self._slowdown.observe(i, ms)
        if self.local.warm_whole_ms is not None:
            self._slowdown.observe(0, self.local.warm_whole_ms, through=len(self._seg_ms) - 1,
                                   profiled_ms=self._profile.whole_ms)
        self._cuts = {c.id: c for c in self.bundle.cuts}
        sent_input = input_cut(self.bundle)  # None: the input cannot be sent
        if sent_input is not None:
            self._cuts[sent_input.id] = sent_input
        self._explore_at = 0.0  # exploring frames: see EXPLORE_MIN_S
        self._explore_every = EXPLORE_MIN_S
        # what the last look found nothing worth exploring in: (table, state key, plan).
        # The look prices every candidate (~0.1 ms, 0.5 ms on a throttled device), so a
        # frame pays it only when the rounded state or the plan has changed since
        self._explore_nothing_in: tuple | None = None
        self._ids = itertools.count()
        self._device_lock = threading.RLock()
        # what this device computes, entered under the lock: its links' bandwidth samples
        # taken meanwhile, if it was starved, waited for the CPU too (see DeviceActivity)
        self._activity = DeviceActivity(threads, self._stalls)
        self._async: ThreadPoolExecutor | None = None
        self._welcomes_seen: Any = 0
        self._closed = False
        self._server_tables: dict[int, tuple[Any, Any]] = {}  # link id: (welcomes, table)
        self._pick_at = 0.0  # when the choice among several servers is next due
        self.link: EdgeLink | ServerSet | None = None
        endpoints = _endpoints(server)
        if endpoints:
            if not self.bundle.source_sha256:
                raise BundleError(f"{self.bundle.path}: no source sha256; the server cannot "
                                  "tell which model it is")
            # each link logs (edgesdk.engine) once if its server cannot be used, and again
            # when it can: the first hello's outcome lands within connect_timeout_s
            links: list[EdgeLink] = []
            try:
                for e in endpoints:
                    links.append(EdgeLink(e, self.bundle.source_sha256,
                                          server_public_key=curve_server_key,
                                          client_keys=client_keys, name=self.bundle.name,
                                          digest=self.bundle.digest, task=self.task,
                                          activity=self._activity))
            except BaseException:
                for link in links:  # their threads would retry forever, unreachable
                    link.close()
                raise
            self.link = links[0] if len(links) == 1 else ServerSet(links)
            self.link.wait_connected(connect_timeout_s)

    # -- setup -----------------------------------------------------------------------------
    def _power_model(self, power: Any, manifest: Any, device: str | None
                     ) -> PowerModel | None:
        """The given power model, else the profile's (`profile --watts`), else the
        detected Pi's preset, else None."""
        if power is not None:
            return power_model(power)
        stored = _stored_power(manifest, device)
        if stored is None:
            return detected_preset()
        try:
            return power_model(stored)
        except PolicyError as exc:
            raise PolicyError(f"{self.bundle.path}: the profile's power model: {exc}; store "
                              "a new one with `edgesdk profile --watts`") from None

    def _energy_price(self, weight: float, strategy: Any) -> EnergyPrice | None:
        """The planner's price of energy (None: energy is free)."""
        if not (isinstance(weight, (int, float)) and not isinstance(weight, bool)
                and math.isfinite(weight) and 0 <= weight <= 1e6):
            raise PolicyError(f"energy_weight is {weight!r}, expected a number in 0..1e6")
        if weight == 0:
            return None
        if self.power is None:
            raise PolicyError(f"energy_weight is {weight} but this device has no power model: "
                              "pass power='pi4' or 'pi5', or store measured watts with "
                              "`edgesdk profile BUNDLE --watts idle=W,load=W`")
        if strategy != "planner":
            raise PolicyError(f"energy_weight is {weight} with strategy {str(strategy)!r}: "
                              "only the planner prices energy (the bundled network was "
                              "trained without it; a fixed plan has nothing to choose)")
        ref_j = self.power.compute_j(math.fsum(self._profile.seg_ms), self._threads)
        return EnergyPrice(self.power, float(weight), ref_j, self._threads)

    def _energy_now(self) -> EnergyPrice | None:
        """The energy price with the current time between frames (~10 % steps, so the
        decision cache is not defeated by jitter)."""
        if self._energy is None or not math.isfinite(self._frame_gap_s):
            return self._energy
        return replace(self._energy, gap_s=math.exp(log_step(self._frame_gap_s, 10) / 10))

    def _with_profile(self, device: str | None, threads: int):
        """The manifest, with a profile measured now if the bundle stores none."""
        manifest = self.bundle.manifest
        if manifest.profiles and (device is None or device in manifest.profiles):
            return manifest
        from ..profile import profile_segments, seeded_inputs  # the offline profiler

        name = device or "this-device"
        env = seeded_inputs(manifest.inputs, seed=0)
        prof = profile_segments(self.local.segments, env, runs=10, warmup=2,
                                threads=threads, files=[s.file for s in manifest.segments],
                                whole=self.local.whole)
        return replace(manifest, profiles={**manifest.profiles, name: prof})

    # -- deciding --------------------------------------------------------------------------
    def state(self, now: float | None = None) -> State:
        """What the engine currently believes (the planner's input): the State of the
        last decision while the link has no new estimates and it is younger than
        STATE_TTL_S (the same object, so it costs ~1 us), else a new one built from the
        link's snapshot and this device's slowdown."""
        now = time.monotonic() if now is None else now
        version = 0 if self.link is None else self.link.version  # read before the snapshot
        kept = self._state
        if kept is not None and kept[0] == version and kept[1] <= now < kept[1] + STATE_TTL_S:
            return kept[2]
        state = self._build_state(now)
        self._state = (version, now, state, state_key(state))
        return state

    def _state_and_key(self, now: float) -> tuple[State, tuple]:
        state = self.state(now)  # through the attribute: benchmarks wrap it to record it
        kept = self._state
        return state, kept[3] if kept is not None and kept[2] is state else state_key(state)

    def _build_state(self, now: float, link: EdgeLink | ServerSet | None = None) -> State:
        """The State from `link`'s estimates (default: the engine's link)."""
        slow = self._slowdown.estimate().value
        link = self.link if link is None else link
        if link is None:
            return State(bw_mbps=1.0, slo_ms=self.slo_ms, device_slowdown=slow, task=self.task,
                         energy=self._energy_now())
        s = link.snapshot(now)
        return State(bw_mbps=max(s["bw_mbps"], 1e-3), bw_std=s["bw_std"],
                     bw_history=tuple(h for h in s["bw_history"] if h > 0),
                     rtt_ms=s["rtt_ms"], queue_ms=s["queue_ms"], device_slowdown=slow,
                     server_slowdown=max(s["server_slowdown"], 1e-3), slo_ms=self.slo_ms,
                     task=self.task, bw_overhead_ms=s["bw_overhead_ms"],
                     bw_overhead_carried=s["bw_overhead_carried"],
                     bw_low_mbps=max(s["bw_low_mbps"], 0.0), failures=s["failures"],
                     bw_age_s=s["bw_age_s"], energy=self._energy_now())

    def _decide(self, now: float) -> tuple[Candidate, str | None]:
        """(plan, why offloading was ruled out, if it was)."""
        link = self.link
        if isinstance(link, ServerSet) and (now >= self._pick_at or link.usable(now)):
            self._pick_server(link, now)
        reason = "no_server" if link is None else link.usable(now)
        if self._adaptive and now >= self._reprice_at:
            self._reprice_exits(now)
        if link is not None and link.welcomes != self._welcomes_seen:
            self._welcomes_seen = link.welcomes
            self._table = self._base_table.with_server_times(link.server_tail_ms)
            self._rest = [t.with_server_times(link.server_tail_ms) for t in self._rest_base]
            # the caches index tables just replaced (whose ids a new table may reuse)
            self._last_key = self._explore_nothing_in = None
            self._rest_cache.clear()
        table = self._device_only if reason else self._table
        if self._controller is not None:  # a controlled stream: its action, not the plan's
            return self._controlled(table, now), (None if link is None else reason)
        if len(table) == 1:
            return table.candidates[0], (None if link is None else reason)
        # Fixed plans ignore the state: skip estimating it (it costs tens of microseconds)
        if not self._adaptive:
            return table.candidates[self._choose(table, None)], (None if link is None else
                                                                  reason)
        if now >= self._last_until:
            # Due for re-evaluation: on a fresh state. The re-decisions are cached by the
            # rounded state (and the budget left), as this decision is between
            # re-evaluations: a fresh state with the same key keeps them. (Cleared here,
            # they were priced again every DECISION_TTL_S, and on a throttled device the
            # budget left at an exit jitters over several ~5 % steps: several planner
            # calls each time.)
            self._state = None
        state, skey = self._state_and_key(now)
        self._last_state, self._last_state_key = state, skey  # the frame's re-decisions'
        key = (id(table), skey)
        if key != self._last_key or now >= self._last_until:
            self._last_choice = table.candidates[self._choose(table, state)]
            self._last_key, self._last_until = key, now + DECISION_TTL_S
        return self._last_choice, (None if link is None else reason)

    def _build_tables(self) -> None:
        """The candidate tables of self._profile: the frame's (all candidates, and
        device-only ones for when the server cannot be used) and, for the re-decision after
        k missed exits, one per k, built once so that a re-decision is one scoring pass.
        Server times are applied to them at the next decision."""
        self._base_table = build_candidates(self._profile)
        self._table = self._base_table
        self._device_only = self._base_table.subset(
            [c.cut == "device" for c in self._base_table.candidates])
        self._rest_base = [build_candidates(self._profile, after_exits=k)
                           for k in range(1, len(self._profile.exits) + 1)]
        self._rest = list(self._rest_base)
        self._rest_device = [t.subset([c.cut == "device" for c in t.candidates])
                             for t in self._rest_base]

    def _reprice_exits(self, now: float) -> None:
        """Price each exit at what it costs here, when that is far from the profile's.

        Calibration times a head and its rule after its segment, as in a frame. But an
        exit that misses also re-decides the plan: 1.2-2x the calibrated time on PP-LCNet,
        where that decides whether the exits pay for themselves against the one-file
        model. So the engine times the exit steps of one frame per EXIT_TIMING_GAP_S and,
        when the median of an exit's recent runs is off from the table's by more than
        REPRICE_TOLERANCE, rebuilds the tables with it (which empties the caches that
        index them).

        A run is brought to reference speed by the ratio of the segment just before it,
        in the same frame, on the same clock (`_exit_clock`: CPU time on one thread, else
        wall time), not by the slowdown: on a CPU-quota throttled device a long one-file
        run stalls more than a short segment, so the slowdown rises while the one-file
        model runs, and exits scaled by it would look cheaper and cheaper until the plan
        went back to them (it did, every 4 s, on PP-LCNet under a 0.25 quota).

        An exit priced out is no longer run, so its price would never change again, even
        one a passing stall set: after REPRICE_MAX_AGE_S unrun it gets the profile's price
        back, and if the plans take it up again, a fresh measurement."""
        self._reprice_at = now + REPRICE_EVERY_S
        exits = list(self._profile.exits)
        changed = False
        for k, runs in enumerate(self._exit_runs):
            if runs and now - self._exit_ran_at[k] > REPRICE_MAX_AGE_S:
                runs.clear()
                changed |= exits[k] != self._profiled_exits[k]
                exits[k] = self._profiled_exits[k]
            if len(runs) < REPRICE_MIN_RUNS:
                continue
            ms = float(np.median(runs))
            if abs(math.log(max(ms, 1e-6) / max(exits[k].head_ms, 1e-6))) > math.log(
                    REPRICE_TOLERANCE):
                exits[k] = replace(exits[k], head_ms=ms)
                changed = True
        if not changed:
            return
        self._profile = replace(self._profile, exits=tuple(exits))
        self._build_tables()
        self._welcomes_seen = None  # the server times go on the new tables at once
        self._server_tables.clear()
        self._last_key = self._explore_nothing_in = None
        self._rest_cache.clear()

    def _pick_server(self, servers: ServerSet, now: float) -> None:
        """Make the server whose estimates promise the best plan active (ServerSet.choose):
        for each usable one, the expected reward (the planner's model) of the plan this
        strategy picks with its estimates and its tail times; fixed strategies use the
        first usable one in the order given. Due every DECISION_TTL_S, and at once when the
        active server cannot be used."""
        self._pick_at = now + DECISION_TTL_S
        if not self._adaptive:
            servers.choose(now, None)
            return

        def score(link: EdgeLink) -> float:
            table = self._server_table(link)
            state = self._build_state(now, link)
            rewards = expected_rewards(table, state)
            i = int(np.argmax(rewards)) if self._choose is plan else self._choose(table, state)
            return float(rewards[i])
        servers.choose(now, score)

    def _server_table(self, link: EdgeLink):
        """The candidate table priced with `link`'s server times (kept per welcome)."""
        kept = self._server_tables.get(id(link))
        if kept is None or kept[0] != link.welcomes:
            kept = (link.welcomes, self._base_table.with_server_times(link.server_tail_ms))
            self._server_tables[id(link)] = kept
        return kept[1]

    # -- the frame -------------------------------------------------------------------------
    def infer(self, x: Any) -> Result:
        """Run one frame (an array, or a dict of input arrays) and return its Result."""
        return self._back(self._front(x, time.monotonic()))

    def infer_async(self, x: Any) -> Future:
        """`infer` on the engine's worker thread; frames run one after another there."""
        self._check_open()
        if self._async is None:
            self._async = ThreadPoolExecutor(1, thread_name_prefix="edgesdk-engine")
        return self._async.submit(self.infer, x)

    def stream(self, frames: Iterable[Any], fps: float | None = None, v: float | None = None,
               threads: Sequence[int] | None = None) -> Iterator[Result]:
        """Results of `frames` in order, pipelined: the device half of frame t+1 runs
        while frame t is on the network, with at most `max_in_flight` frames open.

        Stream control (`fps` and `v`, policy.stream): each frame's (version, cut, bits)
        and speed (`threads`: the onnxruntime thread counts to choose among, default this
        engine's and all of this machine's CPUs) are chosen by drift-plus-penalty against
        a virtual queue of the frames a camera makes at `fps`: energy (the engine's power
        model, needed) weighed by `v` against that backlog; `v` 0 keeps up at any energy
        cost. The extra thread counts' sessions open, and their speedups are measured,
        when the stream starts."""
        if fps is None:
            if v is not None or threads is not None:
                raise ConfigError("stream: v and threads control a stream at a frame rate; "
                                  "give fps too")
            yield from self._pipelined(frames)
            return
        if self._controller is not None:
            raise ConfigError("stream: another controlled stream of this engine is running; "
                              "one camera per engine")
        self._controller = self._stream_controller(fps, v, threads)
        try:
            yield from self._pipelined(frames)
        finally:
            with self._device_lock:
                self._controller = None
                self._speed = Speed(self._threads)
                self.local = self._runners.get(self._threads, self.local)

    def _pipelined(self, frames: Iterable[Any]) -> Iterator[Result]:
        open_frames: deque[_Frame] = deque()
        for x in frames:
            open_frames.append(self._front(x, time.monotonic()))
            if len(open_frames) >= self.max_in_flight:
                yield self._served(self._back(open_frames.popleft()))
        while open_frames:
            yield self._served(self._back(open_frames.popleft()))

    def _served(self, result: Result) -> Result:
        if self._controller is not None:
            self._controller.served()
        return result

    def stream_speeds(self, threads: Sequence[int] | None = None) -> tuple[Speed, ...]:
        """The processing speeds stream control chooses among: a runner per onnxruntime
        thread count in `threads` (default: this engine's and all of this machine's CPUs),
        each one's speedup over this engine's measured now (the median of 5 runs of the
        whole chain). Opened and measured once per set of counts; `stream(fps=...)` calls
        it, and a caller may call it first to keep that out of the stream's first frame."""
        counts = tuple(sorted({self._threads, *(threads or (self._threads, usable_cpus()))}))
        if any(not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 256
               for k in counts):
            raise ConfigError(f"stream threads are {threads!r}, expected ints in 1..256")
        kept = self._speeds.get(counts)
        if kept is not None:
            return kept
        self._runners.setdefault(self._threads, self.local)
        speeds = []
        with self._device_lock, self._activity:  # frames would skew the timings
            base_ms = _chain_ms(self._runners[self._threads])
            for k in counts:
                if k not in self._runners:
                    runner = LocalRunner(self.bundle, k)
                    runner.add_versions(self.local.versions, k)
                    self._runners[k] = runner
                speedup = 1.0 if k == self._threads else base_ms / _chain_ms(self._runners[k])
                speeds.append(Speed(k, min(max(speedup, 1e-3), 1.5 * k)))
        self._speeds[counts] = tuple(speeds)
        return self._speeds[counts]

    def _stream_controller(self, fps: Any, v: Any, threads: Sequence[int] | None
                           ) -> StreamController:
        """The controller of a stream at `fps` over stream_speeds(threads)."""
        if self.power is None:
            raise PolicyError("stream control needs this device's power model: pass "
                              "power='pi4' or 'pi5', or store measured watts with "
                              "`edgesdk profile BUNDLE --watts idle=W,load=W`")
        if v is None:
            raise ConfigError("stream: fps needs v, the energy-backlog trade-off (>= 0)")
        ctl = StreamController(fps, v, self.stream_speeds(threads),
                               in_flight=self.max_in_flight)
        self._stream_ref_j = self.power.compute_j(math.fsum(self._profile.seg_ms),
                                                  self._threads)
        return ctl

    def _controlled(self, table: Any, now: float) -> Candidate:
        """A controlled stream's action for the next frame: its plan, and the speed (the
        runner) the frame's segments run at."""
        ctl = self._controller
        ctl.arrive(now)
        # kept for exploring frames, not for re-decisions: the action holds for the frame
        self._control_state = state = self.state(now)
        row, speed = ctl.choose(table, state, self.power, self._stream_ref_j)
        self._speed = speed
        self.local = self._runners[speed.threads]
        return table.candidates[row]

    def _front(self, x: Any, t0: float) -> _Frame:
        self._check_open()
        with self._device_lock:
            self._note_frame(t0)
            env = self.local.feed(x)
            self._last_state = None
            chosen, reason = self._decide(t0)
            pick = self._exploration(chosen, t0) if reason is None else None
            # exit steps are timed with their re-decision, which an exploring frame skips
            timed = self._adaptive and pick is None and t0 >= self._exit_timing_at
            if timed:
                self._exit_timing_at = t0 + EXIT_TIMING_GAP_S
            f = _Frame(next(self._ids), t0, t0 + self.slo_ms / 1e3, env, pick or chosen,
                       reason, timed=timed, runner=self.local, speed=self._speed,
                       exploring=pick is not None, state=self._last_state,
                       key=self._last_state_key,
                       plans=[chosen] if pick is None else [chosen, pick],
                       offline=self.link is None or reason is not None)
            with self._activity:
                fired = self._run_segments(f, None)
            if fired:
                return f
            if f.plan.cut == "device":  # the plan, or what a re-decision made of it
                f.result = self._local_result(f)
                return f
            self._send(f)
            return f

    def _note_frame(self, t0: float) -> None:
        """The time between frames (an EWMA; an idle spell of over 10 s restarts it)."""
        last, self._last_frame_at = self._last_frame_at, max(t0, self._last_frame_at)
        gap = max(t0 - last, 0.0)  # infer_async callers may take their t0 out of order
        if gap > 10.0 or not math.isfinite(self._frame_gap_s):
            self._frame_gap_s = gap if gap <= 10.0 else math.inf
        else:
            self._frame_gap_s += 0.2 * (gap - self._frame_gap_s)

    def _exploration(self, chosen: Candidate, now: float) -> Candidate | None:
        """The plan a frame explores with instead of `chosen`, an adaptive strategy's (or
        stream control's) decision to keep it here, if one is due (see EXPLORE_MIN_S) and
        policy.explore finds an offload that would beat it in a plausible best case."""
        controlled = self._controller is not None
        state = self._control_state if controlled else self._last_state
        if (not self._explores or self.link is None or state is None
                or chosen.cut != "device" or now < self._explore_at):
            return None
        # only a decided frame's key is its state's (a controlled stream's frames have none)
        seen = None if controlled else (id(self._table), self._last_state_key, chosen)
        if seen is not None and seen == self._explore_nothing_in:
            return None
        pick = explore_pick(self._table, state, chosen)
        if pick is None:
            self._explore_nothing_in = seen
        return pick

    def _run_segments(self, f: _Frame, stop: int | None, cancel: Cancel | None = None
                      ) -> bool:
        """Run segments from f.next_segment to `stop` (None: to the plan's cut, re-deciding
        the plan after every exit that does not fire) with the plan's exits; True if one
        fired. Cancelled once `cancel` is, with f at the segment it was in."""
        while True:
            last = stop if stop is not None else self._stop(f.plan)
            i = f.next_segment
            if i > last:
                return False
            local = f.runner  # the speed the frame runs at (its segments' threads)
            version = f.plan.version
            if last == len(self._seg_ms) - 1 and self._runs_whole_file(f):
                started = self._stalls.start()
                ms = local.run_whole(f.env, cancel)
                # with the quota's stalls it caused beyond its timer (see engine.cpu_quota)
                charged = ms + self._stalls.beyond(started, ms)
                self._slowdown.observe(0, charged * f.speed.speedup, through=last,
                                       profiled_ms=self._profile.whole_ms)
                f.device_ms += ms
                f.next_segment = last + 1
                return False
            profiled_ms = (self._seg_ms[i] if version == FP32
                           else self._profile.versions[version].seg_ms[i])
            # the exits after it are timed at reference speed over this segment's ratio (see
            # _reprice_exits), unless the segment is too short for one (timer noise)
            timed = f.timed and profiled_ms >= 1e-3 and bool(local.exits_after(i, f.plan.n_exits))
            clock = _exit_clock(f.speed)
            started = self._stalls.start()  # outside the exits' clock: it may read files
            c = clock() if timed else 0.0
            ms = local.run_segment(i, f.env, version, cancel)
            if timed:  # this segment's clock time -> its profiled time: the exits' scale
                to_reference = profiled_ms / max((clock() - c) * 1e3, 1e-3 * profiled_ms)
            charged = ms + self._stalls.beyond(started, ms)
            if version == FP32:
                self._slowdown.observe(i, charged * f.speed.speedup)
            else:  # against the version's own profiled time (not the fp32 segment's)
                self._slowdown.observe(i, charged * f.speed.speedup, through=i,
                                       profiled_ms=profiled_ms)
            f.device_ms += ms
            f.next_segment = i + 1
            # The exits after segment i that the (possibly re-decided) plan still runs
            while (ex := next((e for e in local.exits_after(i, f.plan.n_exits)
                               if e.order >= f.exits_run), None)) is not None:
                t, c = time.perf_counter(), clock() if timed else 0.0
                ans = ex.answer(f.env)
                f.device_ms += (time.perf_counter() - t) * 1e3
                f.exits_run = ex.order + 1
                if not ans.fires:
                    if f.best_exit is None or ans.confidence > f.best_exit.confidence:
                        f.best_exit = ans
                    if stop is None and f.state is not None and not f.exploring:
                        self._redecide(f)
                if timed:  # the exit step: its head, and its re-decision if it missed
                    self._exit_runs[ex.order].append((clock() - c) * 1e3 * to_reference)
                self._exit_ran_at[ex.order] = f.t0
                if ans.fires:
                    f.result = self._exit_result(f, ans, None)
                    return True

    def _stop(self, plan: Candidate) -> int:
        """The last segment the device runs under `plan`."""
        return (len(self._seg_ms) - 1 if plan.cut == "device"
                else self._cuts[plan.cut].after_segment)

    def _redecide(self, f: _Frame) -> None:
        """Re-plan the rest of frame `f` after its exits so far did not fire: the
        candidates consistent with what ran (at least f.exits_run exits, cuts from here
        on, exit probabilities conditioned on the misses), against the budget left (the
        state the frame's decision saw, its SLO the time to the deadline). Appends the
        plan to f.plans, changed or not, so a Result shows each re-decision.

        Cached by the exits run, the frame's state key and the budget left rounded as
        state_key rounds times (~5 %), until the tables change (REST_CACHE_MAX entries at
        most); a table of one plan (offline, after the last exit) needs no planner at
        all."""
        k = f.exits_run
        if not 1 <= k <= len(self._rest):
            return
        table = self._rest_device[k - 1] if f.offline else self._rest[k - 1]
        if len(table) > 1:
            now = time.monotonic()
            # Past the deadline every plan is late: a budget of 1 us prices that in (the
            # state needs a positive SLO), and the choice falls to the quickest finish
            left_ms = max((f.deadline - now) * 1e3, 1e-3)
            if len(self._rest_cache) >= REST_CACHE_MAX:
                self._rest_cache.clear()
            key = (k, f.offline, f.key, log_step(left_ms))
            i = self._rest_cache.get(key)
            if i is None:
                i = self._choose_rest(table, with_slo(f.state, left_ms), self.slo_ms)
                self._rest_cache[key] = i
            f.plan = table.candidates[i]
        else:
            f.plan = table.candidates[0]
        f.plans.append(f.plan)

    def _compress(self, plan: Candidate) -> str:
        """The codec's entropy stage for an offload of `plan`: zstd when the plan says so;
        else, with sparse=True, the zero codes as a bitmap (quantized bits only)."""
        if plan.zstd:
            return "zstd"
        return "sparse" if self._sparse and plan.bits <= 8 else "none"

    def _send(self, f: _Frame) -> None:
        cut = self._cuts[f.plan.cut]
        t = time.perf_counter()
        try:
            with self._activity:
                frames = encode_tensors([f.env[n] for n in cut.names], bits=f.plan.bits,
                                        compress=self._compress(f.plan))
        except CodecError:  # e.g. this frame's values exceed float16: finish here
            f.reason = "encode_error"
            return
        f.encode_ms = (time.perf_counter() - t) * 1e3
        now = time.monotonic()
        # Without an exit answer to fall back on, keep the time a local finish needs, so
        # a late server still leaves a result within the deadline.
        left_ms = (f.deadline - now) * 1e3
        budget = float(offload_budget(left_ms, self._local_rest_ms(f),
                                      f.best_exit is not None)) / 1e3
        if budget <= MIN_BUDGET_MS / 1e3:
            f.reason = "timeout"  # the deadline passed during the device half
            return
        # The frame waits `budget` for the reply, then starts its local finish; a reply that
        # comes while that runs still answers (_fallback), so the link waits for it until
        # the deadline (less the margin).
        wait_s = max((left_ms - FALLBACK_MARGIN_MS) / 1e3, budget)
        link = self.link.route(f.exploring)
        f.server = link.endpoint
        f.sent_bytes = sum(memoryview(b).nbytes for b in frames)
        f.sent_at = now
        f.radio_gap_s = now - self._last_sent_at
        self._last_sent_at = now
        f.future = link.offload(frames, cut.id, budget, wait_s=wait_s, exploring=f.exploring)
        f.future.add_done_callback(f.stamp)
        f.offload_until = now + budget
        if f.exploring:  # the next one after the backoff (one that sent nothing: at once)
            self._explore_at = now + self._explore_every
            self._explore_every = min(2 * self._explore_every, EXPLORE_MAX_S)
        else:
            self._explore_every = EXPLORE_MIN_S  # offloading again: explore promptly next time

    def _back(self, f: _Frame) -> Result:
        if f.result is not None:
            return f.result
        if f.future is not None:
            try:
                # Not a moment past the budget: the time after it is the local finish's
                # (the reserve), and a reply the link thread has not delivered by then is
                # too late to use, however close.
                reply = f.future.result(timeout=max(f.offload_until - time.monotonic(), 0.0))
            except FutureTimeout:
                f.reason = "timeout"
            except TransportError as exc:
                f.reason = next((r for k, r in _REASONS.items() if isinstance(exc, k)),
                                "server_error")
            else:
                result = self._edge_result(f, reply)
                if result is not None:
                    return result
            # the radio was up from the send until the failure (nothing left unreachable)
            if f.reason != "unreachable":
                ended = min(time.monotonic(), f.done_at, f.offload_until)
                f.radio_ms = max(ended - f.sent_at, 0.0) * 1e3
        return self._fallback(f)

    def _explore_paid(self, now: float) -> None:
        """An exploring offload came back: its optimistic plan paid, so the next look is
        EXPLORE_MIN_S away, not at the backoff reached while frames stayed here. A link
        back at its speed takes a few agreeing samples to be believed (a change) when its
        slow rate was measured: in bench e2e, after the 2 -> 50 Mbit/s step, one exploring
        reply at 50 joined a regime measured at 2, the next look was 2 s away, and the
        planner kept PP-OCRv4 frames here for the 2.5 s left of the scenario."""
        with self._device_lock:
            self._explore_every = EXPLORE_MIN_S
            self._explore_at = min(self._explore_at, now + EXPLORE_MIN_S)

    # -- results ---------------------------------------------------------------------------
    def _edge_result(self, f: _Frame, reply: Any) -> Result | None:
        """The frame's answer from the server's reply; None (f.reason "server_error") when
        the reply cannot be read."""
        if f.exploring:
            self._explore_paid(time.monotonic())
        t = time.perf_counter()
        try:
            outputs = decode_tensors(reply.frames, self.bundle.manifest.outputs)
        except (ValueError, TypeError):
            f.reason = "server_error"  # a reply we cannot read: finish here instead
            return None
        decode_ms = (time.perf_counter() - t) * 1e3
        network = max(reply.rtt * 1e3 - reply.server_ms - reply.queue_ms, 0.0)
        return self._make(f, "edge", outputs, None, device=f.device_ms, encode=f.encode_ms,
                          network=network, server=reply.server_ms, queue=reply.queue_ms,
                          decode=decode_ms)

    def _fallback(self, f: _Frame) -> Result:
        """The offload failed (f.reason): finish here, or answer with the best exit when
        finishing here would miss the deadline. A reply that was only overdue may still
        come while the finish runs: it stops the finish and answers (a reply a few ms past
        the budget costs a few ms, not a whole local run)."""
        with self._device_lock:
            late = time.monotonic() + self._local_rest_ms(f) / 1e3 > f.deadline
            if late and f.best_exit is not None:
                return self._exit_result(f, f.best_exit, f.reason)
            last = len(self._seg_ms) - 1
            with self._activity:
                try:
                    self._run_segments(f, last, self._hedge(f))
                except Cancelled as stopped:  # the reply came: it answers, if it can be read
                    f.device_ms += stopped.ms
                    f.reason = None
                    result = self._edge_result(f, f.future.result())
                    if result is not None:
                        return result
                    self._run_segments(f, last)  # rare: the segment stopped runs again
            if f.result is not None:  # an exit after the cut fired (fixed plans only)
                return f.result
            return self._local_result(f)

    @staticmethod
    def _hedge(f: _Frame) -> Cancel | None:
        """A token that stops f's local finish when its overdue offload answers after all;
        None when no answer can come (nothing was sent, or the offload failed)."""
        future = f.future
        if future is None or f.reason != "timeout":
            return None
        cancel = Cancel()

        def on_done(done: Future) -> None:  # on the link thread, or here if already done
            if done.exception() is None:
                cancel.cancel()

        future.add_done_callback(on_done)
        return cancel

    def _runs_whole_file(self, f: _Frame) -> bool:
        """Whether running the rest of `f` here runs the one-file model: all of the fp32
        frame is still to run and no exit is left to look at (one session, where a chain
        loses fused kernels at every cut)."""
        return (f.next_segment == 0 and f.plan.version == FP32 and f.runner.whole is not None
                and not any(e.order >= f.exits_run for e in f.runner.exits[:f.plan.n_exits]))

    def _local_rest_ms(self, f: _Frame) -> float:
        """What finishing `f` here would take: the one-file model's or its remaining
        segments' recent times (in the model version its segments run in: the profiled
        times x the slowdown), at the speed the frame runs at (the slowdown is of the
        engine's own thread count; stream control may run a frame on more)."""
        whole_ms = self._profile.whole_ms
        if whole_ms is not None and self._runs_whole_file(f):
            ms = self._slowdown.model().slowdown * whole_ms
        elif f.plan.version == FP32:
            ms = self._slowdown.segments_ms(f.next_segment, len(self._seg_ms) - 1)
        else:
            rest = self._profile.versions[f.plan.version].seg_ms[f.next_segment:]
            ms = self._slowdown.model().slowdown * math.fsum(rest)
        return ms / f.speed.speedup

    def _local_result(self, f: _Frame) -> Result:
        outputs = {n: f.env[n] for n in self.local.outputs}
        return self._make(f, "device", outputs, None, device=f.device_ms, encode=f.encode_ms)

    def _exit_result(self, f: _Frame, ans: ExitAnswer, reason: str | None) -> Result:
        f.reason = reason
        return self._make(f, "exit", {ans.name: ans.output}, ans, device=f.device_ms,
                          encode=f.encode_ms)

    def _make(self, f: _Frame, where: str, outputs: Mapping[str, np.ndarray],
              ans: ExitAnswer | None, **ms: float) -> Result:
        output = next(iter(outputs.values()))
        kind = "classes" if ans is not None else self._kind
        if ans is not None:
            conf: float | None = ans.confidence
        else:
            conf = _confidence(output) if kind == "classes" else None
        sent = where == "edge" or f.future is not None
        timings = Timings(**ms, total=(time.monotonic() - f.t0) * 1e3)
        return Result(output=output, where=where,
                      exit_name=ans.name if ans is not None else None,
                      cut=f.plan.cut if sent else None,
                      bits=f.plan.bits if sent else None, confidence=conf,
                      timings=timings, fallback_reason=f.reason, plan=str(f.plan), frame=f.id,
                      outputs=dict(outputs), zstd=f.plan.zstd if sent else None,
                      plans=tuple(str(p) for p in f.plans), explored=f.exploring, kind=kind,
                      server=f.server if sent else None, version=f.plan.version,
                      energy_j=self._energy_j(f, where, timings))

    def _energy_j(self, f: _Frame, where: str, t: Timings) -> float:
        """What frame `f` cost this device's battery (estimators.energy; nan without a power
        model): its compute here, and its offload's radio time: the upload and the wait for
        the reply when one came, else from the send until the failure (none when the server
        was unreachable). An exploring frame's offload is its own, charged as any."""
        if self.power is None:
            return math.nan
        joules = self.power.compute_j(t.device + t.encode + t.decode, f.speed.threads)
        if where == "edge":
            joules += self.power.radio_j(f.sent_bytes, t.network, t.server + t.queue,
                                         f.radio_gap_s)
        elif f.radio_ms > 0:  # a failed offload
            joules += self.power.radio_j(f.sent_bytes, 0.0, f.radio_ms, f.radio_gap_s)
        return joules

    # -- lifetime --------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the engine is closed")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._async is not None:
            self._async.shutdown(wait=True)
        with self._device_lock:  # not while a frame reads the group's files
            self._stalls.close()
        if self.link is not None:
            self.link.close()  # resolves what is in flight

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _endpoints(server: str | Iterable[str] | None) -> list[str]:
    """The server endpoints the engine was given (ConfigError on anything else)."""
    if server is None:
        return []
    endpoints = [server] if isinstance(server, str) else list(server)
    bad = [e for e in endpoints if not isinstance(e, str) or not e]
    if bad or len(set(endpoints)) != len(endpoints):
        raise ConfigError(f"server is {server!r}, expected an endpoint ('tcp://host:port'), "
                          "or a list of distinct ones")
    return endpoints


def _confidence(output: np.ndarray) -> float | None:
    """Max softmax probability of a (1, classes) score vector; None for other outputs."""
    arr = np.asarray(output)
    if arr.ndim == 0 or arr.size < 2 or arr.size != arr.shape[-1] or arr.dtype.kind != "f":
        return None
    v = arr.reshape(-1).astype(np.float64)
    return float(1.0 / np.exp(v - v.max()).sum())  # max softmax probability
