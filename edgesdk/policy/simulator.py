"""A frame-level simulator of split inference over a real bandwidth trace, with the
engine's own estimators, timeouts and fallbacks.

It is deliberately not the planner's model. The planner assumes one lognormal bandwidth
per request, known overheads, a fixed queue and no failures; here:

- the link's rate varies within each second of the trace (an AR(1) lognormal around the
  trace's value, per SLOT_S slot), a transfer integrates the rate over its duration, pays a
  per-message overhead, and pays TCP slow start after an idle spell; outages (the rate near
  zero for seconds) occur;
- the RTT jitters per message; the server's queue is a fluid queue fed by other devices'
  Poisson arrivals whose rate changes (load spikes);
- the device's compute time per frame is its profile times a slowdown times a jitter drawn
  from a measured distribution (a CPU-quota-throttled device stalls now and then);
- the engine's behaviour is reproduced: an offload gets the frame's remaining budget minus
  the time a local finish needs (when no exit answer is in hand); past it the frame
  finishes on the device (or answers with its best exit when a local finish would be
  late), and a reply that comes while the local finish runs answers instead; a frame no
  reply answered is a timeout: the link goes "checking", sends a hello, and offloading
  stops until a welcome arrives (every RETRY_S while the link is down); plans are drawn
  from device-only candidates meanwhile;
- the device's view comes from edgesdk.estimators.LinkEstimator fed exactly what the
  engine's link feeds it: replies (size, round trip, server and queue time), probes when
  the link has been idle, and heartbeats; with `explore`, the exploring frames of an
  adaptive strategy (policy.explore: a frame it would keep here offloads as in a plausible
  best case instead), with their rate limit, at that candidate's realized reward.

A frame's reward is the expectation over its exit (an exit fires with the candidate's
calibrated probability) of ``w_acc * accuracy - latency / SLO - penalty * [latency > SLO]``
with the realized latency, which the fallback caps: a frame never costs more than its
budget plus a local finish. Every candidate's realized reward is computed at every frame
(vectorized), so the oracle (the per-frame best in hindsight), every fixed candidate and
the regret of any choice come from the same draws.

    sc = random_scenario(rng, traces, profiles)
    ep = run_episode(sc, plan)                # EpisodeResult: per-frame arrays
    ep.reward.mean(), ep.latency_ms, ep.oracle_reward

The physical constants live in `Physics` (scenarios.py); edgesdk.bench.sim_calibration
fits them to recordings of the real loop (bench e2e) and checks the fit.

Not modelled: the engine's re-decision after an exit that does not fire (a candidate runs
the whole frame as planned), and a backlog of frames (each starts at its arrival time, even
if the previous one is still running).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from ..estimators import SMALL_MESSAGE_BYTES, LinkEstimator, probe_bytes
from .candidates import CandidateTable
from .explore import EXPLORE_MAX_S, EXPLORE_MIN_S, explore_pick
from .planner import FALLBACK_MARGIN_MS, MIN_BUDGET_MS, offload_budget
from .scenarios import (  # noqa: F401  (re-exported: the simulator's public names)
    DEFAULT_PHYSICS,
    FIXED_RATES,
    Physics,
    Scenario,
    default_traces_dir,
    load_traces,
    make_scenario,
    random_scenario,
    synthetic_profile,
)
from .state import TASKS, State

SLOT_S = 0.05  # resolution of the sub-second rate
OUTAGE_MBPS = 1e-3  # the rate of a link in an outage (> 0 keeps the capacity increasing)
# EdgeLink's defaults (tests/test_policy_eval.py checks that they agree)
RETRY_S = 0.5  # the hello interval while the link is down (retry_s)
HELLO_BUDGET_MS = 500.0  # hello_budget_s; a bandwidth probe gets twice that
PROBE_IDLE_S = 2.0  # EdgeLink probe_idle_s


# -- the world: exogenous draws of one episode ---------------------------------------------


def slot_rate(slot_mbps: np.ndarray, log_noise: np.ndarray, sigma: float,
              outage: np.ndarray) -> np.ndarray:
    """The link's rate per slot: the trace's times the mean-preserving lognormal noise,
    near zero in an outage."""
    rate = slot_mbps * np.exp(log_noise - sigma * sigma / 2)
    rate[outage] = OUTAGE_MBPS
    return np.maximum(rate, OUTAGE_MBPS)


def capacity(rate_mbps: np.ndarray, first_slot: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(times s, bytes the link has carried by then) at the slot boundaries from
    `first_slot` on, for rates per slot: what World.transfer_ms integrates."""
    times = (first_slot + np.arange(len(rate_mbps) + 1)) * SLOT_S
    return times, np.concatenate([[0.0], np.cumsum(rate_mbps * 1e6 / 8 * SLOT_S)])


class World:
    """Everything in an episode that no decision changes, drawn once: the rate per slot
    and its running capacity, per-frame RTT, device jitter, queue wait and exit draw."""

    def __init__(self, sc: Scenario) -> None:
        ph = sc.physics
        rng = np.random.default_rng([sc.seed, 17])
        self.sc = sc
        per = max(int(round(sc.rate_dt_s / SLOT_S)), 1)
        steps = len(sc.mbps) + int(30 / sc.rate_dt_s)  # room for transfers after the end
        base = np.resize(sc.mbps, steps)
        base[len(sc.mbps):] = sc.mbps[-1]
        n = steps * per
        eps = rng.normal(0, 1, n)
        ar = np.empty(n)
        a, s = ph.subsecond_rho, ph.subsecond_sigma
        acc = eps[0] * s
        ar[0] = acc
        for i in range(1, n):  # AR(1) with stationary spread s
            acc = a * acc + math.sqrt(1 - a * a) * s * eps[i]
            ar[i] = acc
        # per slot: the trace's rate, the sub-second log-noise around it, the outages
        self.slot_mbps = np.repeat(base, per)
        self.log_noise = ar
        self.outage = np.zeros(n, dtype=bool)
        for start, dur in sc.outages:
            self.outage[int(start / SLOT_S):int((start + dur) / SLOT_S)] = True
        self.rate_mbps = slot_rate(self.slot_mbps, ar, s, self.outage)
        self.times, self.cum = capacity(self.rate_mbps)
        frames = sc.frames
        self.t = (np.asarray(sc.times, float) if sc.times is not None
                  else np.arange(frames) * sc.period_s)
        self.rtt = sc.rtt_ms * np.exp(rng.normal(0, ph.rtt_sigma, frames))
        if ph.device_samples:  # a measured distribution: resample it
            jitter = rng.choice(np.asarray(ph.device_samples, float), frames)
        else:
            jitter = np.exp(rng.normal(0, ph.device_sigma, frames))
            stalled = rng.random(frames) < ph.stall_p
            lo, hi = np.log(ph.stall_factor)
            jitter[stalled] *= np.exp(rng.uniform(lo, hi, int(stalled.sum())))
        self.device = sc.device_slowdown * jitter
        self.exit_u = rng.random(frames)
        self.queue = self._queue(rng, frames)

    def _queue(self, rng: np.random.Generator, frames: int) -> np.ndarray:
        """Queue wait (ms) at each frame's arrival: a fluid queue per slot fed by other
        devices' Poisson arrivals (utilization sc.load) of typical tail jobs."""
        sc, ph = self.sc, self.sc.physics
        offload = sc.table.wire_bytes > 0
        svc = (float(np.median(sc.table.srv_ms[offload])) * sc.server_slowdown * sc.server_drift
               if offload.any() else 1.0)
        svc = max(svc, 0.2)
        per = max(int(round(sc.rate_dt_s / SLOT_S)), 1)
        util = np.repeat(np.asarray(sc.load, float), per)
        slot_ms = SLOT_S * 1e3
        arrivals = rng.poisson(util * ph.server_workers * slot_ms / svc)
        backlog = np.empty(len(util) + 1)
        b = 0.0
        backlog[0] = 0.0
        cap = ph.server_workers * slot_ms
        for i, k in enumerate(arrivals):
            b = max(b + k * svc - cap, 0.0)
            backlog[i + 1] = b
        slot = np.minimum((self.t / SLOT_S).astype(int), len(backlog) - 1)
        return backlog[slot] / ph.server_workers

    def transfer_ms(self, t_send: float | np.ndarray, nbytes: np.ndarray) -> np.ndarray:
        """Time to push nbytes through the link starting at t_send (s), rate integrated."""
        start = np.interp(t_send, self.times, self.cum)
        end_t = np.interp(start + nbytes, self.cum, self.times)
        return (end_t - t_send) * 1e3

    def small_message_ms(self, t: float) -> float:
        """Round trip of a hello or heartbeat sent at t (overhead, its bytes, the RTT)."""
        k = min(int(np.searchsorted(self.t, t)), len(self.rtt) - 1)
        wire = float(self.transfer_ms(t, np.array([SMALL_MESSAGE_BYTES]))[0])
        return self.sc.physics.overhead_ms + wire + float(self.rtt[k])

    def hello_wait_s(self, t: float) -> float:
        """How long after t a hello first gets its welcome within the hello budget, sending
        one every RETRY_S while none does (the link's "down" state)."""
        waited = 0.0
        while self.small_message_ms(t + waited) > HELLO_BUDGET_MS and waited < 60:
            waited += RETRY_S
        return waited


# -- one frame, every candidate --------------------------------------------------------------


@dataclass(frozen=True)
class Outcomes:
    """Per candidate, for one frame: realized expected reward, the rest branch's latency
    and accuracy, whether the offload timed out, and the wire time it took."""

    reward: np.ndarray
    latency: np.ndarray  # the no-exit branch
    accuracy: np.ndarray  # expected over the exit
    timed_out: np.ndarray  # no reply within the budget, or never sent (no budget left)
    wire_ms: np.ndarray
    exit_latency: np.ndarray
    budget_ms: np.ndarray
    upload_left_ms: np.ndarray  # an overdue offload's upload still to go past its budget
    sent: np.ndarray  # an offload the engine sent: not one whose budget was already gone
    rescued: np.ndarray  # its reply came past the budget, while the local finish ran


class TableFacts:
    """Per-candidate constants the frame loop needs, computed once per table."""

    def __init__(self, table: CandidateTable) -> None:
        self.offload = table.wire_bytes > 0
        self.local_rest_ms = table.local_ms
        self.local_acc = table.local_acc
        self.has_exit = table.has_exit
        self.device_only = ~self.offload
        # what a candidate becomes when the link is not up: device-only, same exits
        index = {(c.n_exits, c.cut): i for i, c in enumerate(table.candidates)}
        self.fallback_index = np.array([index[(c.n_exits, "device")]
                                        for c in table.candidates])


def slow_start_ms(nbytes: float | np.ndarray, rtt_ms: float, ph: Physics) -> np.ndarray:
    """What TCP slow start after an idle spell adds to an upload of `nbytes`: ~one RTT per
    doubling of the window, at most 8."""
    return np.minimum(np.log2(1 + np.asarray(nbytes) / ph.init_window_bytes), 8) * rtt_ms


def frame_outcomes(world: World, k: int, facts: TableFacts, slowdown_est: float,
                   idle_s: float | np.ndarray) -> Outcomes:
    """Every candidate's outcome at frame k if the link is up (see the module docstring)."""
    sc, ph, t = world.sc, world.sc.physics, world.sc.table
    slo = sc.slo_ms
    w_acc, penalty = TASKS[sc.task]
    jit = world.device[k]
    eng = ph.engine_ms * jit  # the engine's own work on the device, on every path
    d = (t.dev_ms + t.enc_ms) * jit + eng
    # the engine reserves a local finish when it has no exit answer to fall back on
    local_est = facts.local_rest_ms * slowdown_est
    budget = offload_budget(slo - d, local_est, facts.has_exit)
    t_send = world.t[k] + d / 1e3
    wire = ph.overhead_ms + world.transfer_ms(t_send, t.wire_bytes)
    cold = np.asarray(idle_s) >= ph.idle_restart_s
    rtt = world.rtt[k]
    if np.any(cold):
        wire = wire + np.where(cold, slow_start_ms(t.wire_bytes, rtt, ph), 0.0)
    edge = wire + rtt + world.queue[k] + t.srv_ms * (sc.server_slowdown * sc.server_drift)
    sent = facts.offload & (budget > MIN_BUDGET_MS)  # else it finishes here at once
    ok = sent & (edge <= budget)
    overdue = facts.offload & ~ok
    # an overdue offload costs its budget plus however late the engine notices
    waited = np.where(sent, budget + ph.timeout_grace_ms, np.maximum(budget, 0.0))
    local_ms = facts.local_rest_ms * jit
    late_local = d + waited + local_est > slo
    exit_answer = overdue & facts.has_exit & late_local
    # a reply while the local finish runs answers: the engine waits to the deadline's margin
    rescued = sent & overdue & ~exit_answer & (
        edge <= np.minimum(waited + local_ms, slo - FALLBACK_MARGIN_MS - d))
    ok |= rescued
    timed_out = overdue & ~rescued
    latency = np.where(ok, d + edge, np.where(exit_answer, d + waited, d + waited + local_ms))
    latency = np.where(facts.device_only, t.dev_ms * jit + eng, latency)
    acc = np.where(ok, t.rest_acc, np.where(exit_answer, ph.fallback_exit_acc * facts.local_acc,
                                            facts.local_acc))
    acc = np.where(facts.device_only, t.rest_acc, acc)
    exit_lat = t.exit_ms * jit + eng
    p = t.p_exit
    r_rest = w_acc * acc - latency / slo - penalty * (latency > slo)
    r_exit = w_acc * t.exit_acc - exit_lat / slo - penalty * (exit_lat > slo)
    reward = p * r_exit + (1 - p) * r_rest
    # what an overdue offload still had to upload when its budget ran out: the hello that
    # checks the server leaves after it
    upload_left = np.where(overdue & sent, np.maximum(wire - budget, 0.0), 0.0)
    return Outcomes(reward, latency, p * t.exit_acc + (1 - p) * acc, timed_out,
                    np.where(ok, wire, 0.0), exit_lat, budget, upload_left, sent, rescued)


# -- the device's view ---------------------------------------------------------------------


class DeviceView:
    """What the engine knows: the real LinkEstimator fed as EdgeLink feeds it, the link's
    status, the device's slowdown estimate, and the recent failure rate."""

    def __init__(self, world: World, facts: TableFacts) -> None:
        self.world = world
        self.facts = facts
        self.link = LinkEstimator(idle_s=PROBE_IDLE_S)
        self.up = True
        self.next_hello = 0.0
        self.last_send = -math.inf
        self.probes = 0
        # exploring frames: as the engine's rate limit, and priced as the engine prices
        # them, on the server's advertised times (its welcome) with the slowdown over those
        sc = world.sc
        self.advertised = replace(sc.table, srv_ms=sc.table.srv_ms * sc.server_slowdown)
        self.explore_at = 0.0
        self.explore_every = EXPLORE_MIN_S
        self.slowdowns: deque[float] = deque(maxlen=16)
        self._hello(0.0)  # the welcome

    def _hello(self, t: float, behind_ms: float = 0.0) -> float | None:
        """A hello at t, after `behind_ms` of upload still on the link: its round trip, or
        None (down) if nothing came back within the hello budget."""
        ms = self.world.small_message_ms(t) + behind_ms
        if ms > HELLO_BUDGET_MS:
            self.up = False
            self.next_hello = t + RETRY_S
            return None
        self.up = True
        self.link.on_small_message(ms, t)
        return ms

    def before_frame(self, t: float) -> None:
        """Probes and hellos the I/O thread would have sent by time t."""
        if not self.up and t >= self.next_hello:
            self._hello(t)
        if self.up and self.link.should_probe(t):
            self.probes += 1
            size = probe_bytes(self.link.bandwidth.estimate(t).value, self.probes)
            self.link.on_small_message(self.world.small_message_ms(t), t)
            w = self.world
            ms = w.sc.physics.overhead_ms + float(w.transfer_ms(t, np.array([size]))[0])
            if ms > 2 * HELLO_BUDGET_MS:  # a probe that timed out: a censored sample only
                self.link.on_timeout(size, 2 * HELLO_BUDGET_MS, t)
            else:
                self.link.on_reply(size, ms + self.link.rtt.floor_ms, 0.0, 0.0, t,
                                   computed=False)

    def state(self, t: float) -> State:
        """The State the engine would build at time t (as EdgeLink.snapshot does)."""
        sc = self.world.sc
        e = self.link
        m = e.bandwidth.model(t)
        rtt = e.rtt.estimate(t)
        rtt_ms = e.rtt.floor_ms if rtt.n else rtt.value
        overhead = max(m.overhead_ms + m.rtt_ms - rtt_ms, 0.0) if m.n else 0.0
        # the engine's SlowdownEstimator: the profile is believed (1.0) until segments
        # have run here; an edge-only stream never learns it from its own frames
        slow = float(np.median(self.slowdowns)) if self.slowdowns else 1.0
        return State(bw_mbps=max(m.rate_mbps, 1e-3), bw_std=m.rate_std,
                     bw_history=tuple(h for h in e.bandwidth.history() if h > 0),
                     rtt_ms=rtt_ms, queue_ms=e.server.queue_ms, device_slowdown=slow,
                     server_slowdown=max(sc.server_slowdown * e.server.slowdown_at(t), 1e-3),
                     slo_ms=sc.slo_ms, task=sc.task, bw_overhead_ms=overhead,
                     bw_overhead_carried=m.overhead_carried,
                     bw_low_mbps=max(m.low_mbps, 0.0), failures=min(e.failures, 1.0),
                     bw_age_s=m.age_s)

    def after_frame(self, k: int, i: int, out: Outcomes, exploring: bool = False) -> None:
        """What frame k under plan i tells the estimators; `exploring`: an exploring
        frame's failure changes nothing (EdgeLink), its reply ends the backoff."""
        w, t = self.world, self.world.sc.table
        now = w.t[k] + out.latency[i] / 1e3
        exited = w.exit_u[k] < t.p_exit[i]
        if t.dev_ms[i] > 0 or exited or out.timed_out[i] or not self.facts.offload[i]:
            self.slowdowns.append(float(w.device[k]))  # segments ran here: timed

        if exited or not out.sent[i]:  # nothing went out: the link learns nothing
            return
        self.last_send = w.t[k]
        if exploring and out.timed_out[i]:
            return
        self.explore_every = EXPLORE_MIN_S  # offloading again, or an exploring one paid
        if exploring:  # (Engine._explore_paid)
            self.explore_at = min(self.explore_at, now + EXPLORE_MIN_S)
        self.link.on_offload(bool(out.timed_out[i]))
        advertised = float(t.srv_ms[i] * w.sc.server_slowdown)  # the welcome's tail time
        if out.timed_out[i] or out.rescued[i]:
            # past the budget, "checking": a hello at once, which tells the link from the
            # server (EdgeLink); a reply that still comes is then a sample as any other
            ms = self._hello(now, float(out.upload_left_ms[i]))
            slow = self.link.slow_check(ms)
            if not (slow and ms is not None and self.link.on_uploads_ended(
                    int(t.wire_bytes[i]), float(out.budget_ms[i]) + ms, now)):
                self.link.on_offload_timeout(int(t.wire_bytes[i]), float(out.budget_ms[i]),
                                             advertised, now, link_slow=slow)
            if out.timed_out[i]:
                return
        srv = advertised * w.sc.server_drift
        q = float(w.queue[k])
        self.link.on_reply(int(t.wire_bytes[i]), float(out.wire_ms[i] + w.rtt[k]) + srv + q,
                           srv, q, now, profiled_ms=advertised)

    def exploration(self, now: float, st: State, i: int) -> int | None:
        """The candidate a frame at `now` explores with instead of plan i (a device-only
        one), as the engine's exploring frames: if one is due and policy.explore finds
        one."""
        if now < self.explore_at:
            return None
        relative = replace(st, server_slowdown=st.server_slowdown / self.world.sc.server_slowdown)
        pick = explore_pick(self.advertised, relative, self.world.sc.table.candidates[i])
        return None if pick is None else self.world.sc.table.index(pick)

    def explored(self, now: float) -> None:
        """An exploring frame sent its offload: the next one after the backoff."""
        self.explore_at = now + self.explore_every
        self.explore_every = min(2 * self.explore_every, EXPLORE_MAX_S)


# -- episodes --------------------------------------------------------------------------------

Chooser = Callable[[CandidateTable, State], int]


@dataclass
class EpisodeResult:
    """Per frame: the choice, its realized reward, the oracle's reward, a latency draw
    (exit or not, the same draw for every strategy), accuracy, SLO violation, and whether
    the frame fell back after a timeout. `states`, `rewards_all`: what a learner needs
    (the device's view and every candidate's realized reward), when recorded."""

    choice: np.ndarray
    reward: np.ndarray
    oracle_reward: np.ndarray
    latency_ms: np.ndarray
    accuracy: np.ndarray
    violated: np.ndarray
    fell_back: np.ndarray
    decision_s: np.ndarray
    states: list = field(default_factory=list)
    rewards_all: list = field(default_factory=list)


def run_episode(sc: Scenario, choose: Chooser | None = None, *, record: bool = False,
                world: World | None = None, clock: Callable[[], float] | None = None,
                explore: bool = False) -> EpisodeResult:
    """Run `choose(table, state) -> index` over the episode (None: the hindsight oracle,
    the per-frame best realized reward). While the link is not up, `choose` sees only the
    device-only candidates, as in the engine. explore: exploring frames, as the engine's
    adaptive strategies have (fixed plans never explore)."""
    clock = clock or time.perf_counter
    world = world or World(sc)
    facts = TableFacts(sc.table)
    view = DeviceView(world, facts)
    table = sc.table
    device_idx = np.flatnonzero(facts.device_only)
    device_table = table.subset(facts.device_only)
    n = sc.frames
    res = EpisodeResult(*(np.zeros(n, dtype) for dtype in (int, float, float, float, float,
                                                           bool, bool, float)))
    for k in range(n):
        now = float(world.t[k])
        view.before_frame(now)
        idle = now - view.last_send
        st = view.state(now)
        out = frame_outcomes(world, k, facts, st.device_slowdown, idle)
        rewards = out.reward
        if not view.up:  # offloading is ruled out: only device-only candidates
            rewards = rewards.copy()
            rewards[facts.offload] = -np.inf
        t0 = clock()
        if choose is None:
            i = int(np.argmax(rewards))
        elif view.up:
            i = int(choose(table, st))
        else:
            i = int(device_idx[choose(device_table, st)])
        res.decision_s[k] = clock() - t0
        j = view.exploration(now, st, i) if explore and view.up and facts.device_only[i] else None
        if j is not None and world.exit_u[k] >= table.p_exit[j] and out.sent[j]:
            view.explored(now)  # it sent (no exit fired, the budget was not gone)
        if j is not None and world.queue[k] > 0:
            j = None  # the broker answers an exploring frame busy unless a worker is idle:
            # it finishes here as decided, and the refusal changes nothing (EdgeLink)
        i = i if j is None else j
        if record and view.up:
            res.states.append(st)
            res.rewards_all.append(out.reward)
        res.choice[k] = i
        res.reward[k] = out.reward[i]
        res.oracle_reward[k] = float(np.max(rewards))
        exited = world.exit_u[k] < table.p_exit[i]
        res.latency_ms[k] = out.exit_latency[i] if exited else out.latency[i]
        res.accuracy[k] = out.accuracy[i]
        res.violated[k] = res.latency_ms[k] > sc.slo_ms
        res.fell_back[k] = bool(out.timed_out[i]) and not exited
        view.after_frame(k, i, out, exploring=j is not None)
    return res


def run_fixed(sc: Scenario, world: World | None = None) -> np.ndarray:
    """Per-frame realized reward of every candidate used as a fixed plan for the whole
    episode (frames, candidates), each with its own link state: after a timeout the link
    checks with a hello and a fixed plan falls back to device-only until it is up again.
    The hindsight-best fixed candidate is the column with the highest mean."""
    world = world or World(sc)
    facts = TableFacts(sc.table)
    n, m = sc.frames, len(sc.table)
    out = np.zeros((n, m))
    down_until = np.zeros(m)
    last_send = np.full(m, -np.inf)
    slow = sc.device_slowdown
    for k in range(n):
        now = float(world.t[k])
        o = frame_outcomes(world, k, facts, slow, now - last_send)
        up = down_until <= now
        r = np.where(up, o.reward, o.reward[facts.fallback_index])
        out[k] = r
        sent = up & o.sent & (world.exit_u[k] >= sc.table.p_exit)
        last_send[sent] = now
        failed = sent & o.timed_out
        if failed.any():
            t_fail = now + o.latency[failed] / 1e3
            # the hello at once, then every RETRY_S while the link is down (as DeviceView)
            down_until[failed] = t_fail + np.array([world.hello_wait_s(tf) for tf in t_fail])
    return out
