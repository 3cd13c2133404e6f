"""The exhaustive analytic planner: the expected reward of every candidate under the
current estimates, and the argmax.

    table = build_candidates(model_profile(bundle.manifest))
    i = plan(table, state); table.candidates[i]

Model. With probability p_exit a sample leaves at an exit after exit_ms of device time.
Otherwise a device-only candidate finishes after dev_ms; an offloading one computes and
encodes (dev_ms + enc_ms, x device_slowdown), then gives the offload the engine's budget:
the SLO left, minus the time a local finish needs when no exit answer is in hand. The
reply takes a per-message overhead + rtt + queue + server compute (x server_slowdown) +
wire_bytes at the bandwidth, which is lognormal around `bw_mbps` with relative spread
bw_std / bw_mbps (the transfer's mean grows by exp(s^2 / 2); P(transfer > t) =
Phi((log(bw needed) - log(bw)) / s), Phi approximated by a logistic, max error 0.01). A
reply later than the budget is overdue, and the engine falls back as it does: after the
budget it finishes on the device (local_ms, fp32 accuracy local_acc) or, when that would be
late and an exit ran, answers with the best exit (accuracy FALLBACK_EXIT_ACC x local_acc).
A reply that comes while the local finish runs still answers (the finish stops), at its
own time (the lognormal transfer's partial mean over that window). So a frame's latency is
capped by its budget plus a local finish, as in the engine.
Reward: w_acc * accuracy - E[latency] / SLO - penalty * P(latency > SLO), weights from the
task (state.TASKS); with an energy price (state.energy, EnergyPrice) also - weight x
E[energy] / the energy of a frame run wholly on the device (expected_energy: the
estimators.energy model over the same outcomes).

The terms are computed in C (native/planner.c, a twin of numpy_expected_terms that the
tests hold to it) when the extension is built: numpy's ~1 us per array operation made a
decision take 70-200 us on an x86 server.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np

from ..estimators.energy import PowerModel
from .candidates import CandidateTable
from .state import State

MAX_SPREAD = 2.0  # cap on the log-bandwidth spread
# An exit's answer for a frame it was not confident about, relative to the full model's
# accuracy (the engine's fallback when a local finish would be late); an assumption, as
# calibration measures exits only on the frames they take.
FALLBACK_EXIT_ACC = 0.7


# The engine gives up on an offload this long before it must start its fallback: after a
# budget runs out, the link thread's answer and the waiting frame's wake-up take time of
# their own, up to the GIL's 5 ms switch interval when other threads compute. (With 3 ms,
# 1 run in 4 of tests/test_chaos.py had a frame past its deadline + 5 ms, on 2 cores
# shared with a server, its workers and three other devices.)
FALLBACK_MARGIN_MS = 5.0
MIN_BUDGET_MS = 0.5  # an offload left less than this is not sent: the frame finishes here


def offload_budget(left_ms, local_ms, has_exit):
    """What the engine gives an offload (ms, arrays or scalars): the time `left_ms` to the
    deadline once the tensor is ready, less the local finish's `local_ms` when there is no
    exit answer to fall back on and the finish fits (the reserve), less the margin."""
    reserve = np.where(~np.asarray(has_exit) & (left_ms - local_ms > 1.0), local_ms, 0.0)
    return left_ms - reserve - FALLBACK_MARGIN_MS


def branch_latency(table: CandidateTable, state: State, bw_mbps: float | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(latency of the no-exit branch excluding transfer, transfer ms at state.bw_mbps, or
    at `bw_mbps` when given)."""
    offload = table.wire_bytes > 0
    remote = table.srv_ms * state.server_slowdown
    remote += state.rtt_ms + state.queue_ms + state.bw_overhead_ms
    base = (table.dev_ms + table.enc_ms) * state.device_slowdown
    base += np.where(offload, remote, 0.0)
    transfer = table.wire_bytes * (8.0 / ((bw_mbps or state.bw_mbps) * 1e3))
    return base, transfer


class _Offload(NamedTuple):
    """How an offload plays out for every candidate (device-only rows included, where the
    offload fields are meaningless): see expected_terms."""

    dev: np.ndarray  # device compute and encoding before the send (ms)
    local: np.ndarray  # a local finish after a timeout (ms)
    budget: np.ndarray  # what the offload is given (ms)
    transfer: np.ndarray  # the upload at the estimated rate (ms)
    lat_ok: np.ndarray  # latency of a reply within the budget (ms)
    p_late: np.ndarray  # P(no reply within the budget)
    exit_answer: np.ndarray  # a timeout answers with the best exit, not a local finish
    p_rescued: np.ndarray  # P(the reply comes while the local finish runs): it answers
    lat_rescued: np.ndarray  # E[latency; rescued]: the latency's partial mean there (ms)


def _p_slower(transfer: np.ndarray, slack: np.ndarray, s: float) -> np.ndarray:
    """P(the transfer takes longer than `slack`), lognormal with log-spread s."""
    if s <= 0:
        p = (transfer > slack).astype(np.float64)
    else:
        # P(transfer > slack) = P(log bw < log(bw * transfer / slack)), logistic for Phi
        ratio = transfer / np.maximum(slack, 1e-12)
        np.maximum(ratio, 1e-300, out=ratio)
        z = np.log(ratio)
        z *= -1.702 / s
        np.minimum(z, 50.0, out=z)  # exp(50) is large enough; np.clip is slow on small arrays
        p = 1.0 / (1.0 + np.exp(z))
    p[slack <= 0] = 1.0
    return p


def _spread(state: State) -> float:
    """The log-bandwidth spread: the estimate's relative spread, capped."""
    return min(state.bw_std / state.bw_mbps, MAX_SPREAD)


def _offload(table: CandidateTable, state: State, bw_mbps: float | None) -> _Offload:
    base, transfer = branch_latency(table, state, bw_mbps)
    s = _spread(state)
    dev = (table.dev_ms + table.enc_ms) * state.device_slowdown
    local = table.local_ms * state.device_slowdown
    budget = np.maximum(offload_budget(state.slo_ms - dev, local, table.has_exit), 0.0)
    slack = budget - (base - dev)  # what the transfer may take
    p_late = _p_slower(transfer, slack, s)
    lat_ok = base + transfer * np.exp(s * s / 2)
    lat_ok = np.minimum(lat_ok, dev + budget)  # a reply that comes is within the budget
    # a timeout: the budget is spent, then a local finish or the best exit's answer
    exit_answer = table.has_exit & (dev + budget + local > state.slo_ms)
    # a reply during the local finish (the engine waits for one to the deadline's margin),
    # if the offload was sent at all
    hedge = np.where(exit_answer | (budget <= MIN_BUDGET_MS), 0.0, np.minimum(
        local, np.maximum(state.slo_ms - FALLBACK_MARGIN_MS - dev - budget, 0.0)))
    p_rescued = np.zeros_like(p_late)
    lat_rescued = np.zeros_like(p_late)
    # only where a reply can be late and still rescue (the planner is on the hot path)
    i = np.flatnonzero((hedge > 0) & (p_late > 1e-9))
    if i.size:
        t, a, h = transfer[i], slack[i], hedge[i]
        p = p_late[i] - _p_slower(t, a + h, s)
        # E[T; a < T <= a + h] of a lognormal T with median t: t e^(s^2/2) (P(T' > a)
        # - P(T' > a + h)), T' with median t e^(s^2); kept within the window, which the
        # logistic's tails may leave
        tilted = t * math.exp(s * s)
        partial = t * math.exp(s * s / 2) * (_p_slower(tilted, a, s)
                                              - _p_slower(tilted, a + h, s))
        p_rescued[i] = p
        lat_rescued[i] = p * base[i] + np.clip(partial, p * a, p * (a + h))
    return _Offload(dev, local, budget, transfer, lat_ok, p_late, exit_answer, p_rescued,
                    lat_rescued)


@functools.cache
def _native_terms():
    """The C planner (edgesdk._native.plan_terms, native/planner.c) when the C extension is
    in use, under the codec's EDGESDK_NATIVE switch; else None: numpy."""
    from ..codec._backend import native_mode

    if native_mode() == "0":
        return None
    try:
        from .. import _native
    except ImportError:
        return None  # the codec says so (and refuses EDGESDK_NATIVE=1) when it loads
    return getattr(_native, "plan_terms", None)  # None: an extension built before it


def expected_terms(table: CandidateTable, state: State, bw_mbps: float | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(E[accuracy], E[latency] ms, P(latency > SLO)) of every candidate; at `bw_mbps`
    instead of state.bw_mbps when given (the same relative spread). In C when the
    extension is built (a few microseconds), else in numpy (numpy_expected_terms, the
    reference: ~130 array operations, 70-200 us on an x86 server)."""
    native = _native_terms()
    matrix = getattr(table, "planner_matrix", None)  # CandidateTable's (and some rows')
    if native is None or matrix is None:
        return numpy_expected_terms(table, state, bw_mbps)
    return c_expected_terms(native, matrix, state, bw_mbps)


def c_expected_terms(plan_terms, matrix: np.ndarray, state: State,
                     bw_mbps: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """expected_terms through `plan_terms` (edgesdk._native's) on a table's planner_matrix."""
    out = np.empty((3, matrix.shape[1]))
    plan_terms(matrix, out, (
        state.device_slowdown, state.server_slowdown, state.rtt_ms, state.queue_ms,
        state.bw_overhead_ms, bw_mbps or state.bw_mbps, _spread(state), state.slo_ms,
        FALLBACK_MARGIN_MS, MIN_BUDGET_MS, FALLBACK_EXIT_ACC))
    return out[0], out[1], out[2]


def numpy_expected_terms(table: CandidateTable, state: State, bw_mbps: float | None = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """expected_terms in numpy: the reference that native/planner.c follows."""
    o = _offload(table, state, bw_mbps)
    slo = state.slo_ms
    offload = table.wire_bytes > 0
    lat_to = o.dev + o.budget + np.where(o.exit_answer, 0.0, o.local)
    acc_to = table.local_acc * np.where(o.exit_answer, FALLBACK_EXIT_ACC, 1.0)
    q_ok = 1.0 - o.p_late
    p_rescued, p_lost = o.p_rescued, o.p_late - o.p_rescued
    rest_lat = np.where(offload, q_ok * o.lat_ok + o.lat_rescued + p_lost * lat_to, o.dev)
    rest_acc = np.where(offload, (q_ok + p_rescued) * table.rest_acc + p_lost * acc_to,
                        table.rest_acc)
    # a fallback that lands at the SLO to the last bit is on time, not late by rounding
    rest_viol = np.where(offload, p_lost * (lat_to > slo * (1 + 1e-9)), o.dev > slo)
    exit_lat = table.exit_ms * state.device_slowdown
    p = table.p_exit
    q = 1.0 - p
    acc = p * table.exit_acc + q * rest_acc
    lat = p * exit_lat + q * rest_lat
    viol = p * (exit_lat > slo) + q * rest_viol
    return acc, lat, viol


def _device_ms(table: CandidateTable, state: State, o: _Offload) -> np.ndarray:
    """E[device compute] per frame (ms): exit heads, segments to the cut, encoding, and the
    local finish of an offload that times out into one."""
    late_finish = np.where(o.exit_answer, 0.0, o.local)
    # a rescued reply stops the local finish when it comes: E[its time past the budget]
    rescued_finish = o.lat_rescued - o.p_rescued * (o.dev + o.budget)
    lost = (o.p_late - o.p_rescued) * late_finish
    rest = o.dev + np.where(table.wire_bytes > 0, lost + rescued_finish, 0.0)
    p = table.p_exit
    return p * table.exit_ms * state.device_slowdown + (1.0 - p) * rest


def expected_device_ms(table: CandidateTable, state: State) -> np.ndarray:
    """E[device compute] of every candidate in ms: what keeps this device busy per frame
    (a stream's throughput bound)."""
    return _device_ms(table, state, _offload(table, state, None))


def expected_energy(table: CandidateTable, state: State, power: PowerModel,
                    threads: int = 1, gap_s: float = math.inf) -> np.ndarray:
    """E[energy] of every candidate in joules, above the device's idle power
    (estimators.energy): its device compute (expected_device_ms) and, for an offload, the
    upload, the wait for the reply (the whole budget when no reply comes) and the radio's
    tail; frames `gap_s` apart share a radio-on spell (PowerModel.radio_j)."""
    o = _offload(table, state, None)
    upload_ms = np.minimum(o.transfer, o.budget)
    wait_ok = np.maximum(o.lat_ok - o.dev - upload_ms, 0.0)
    wait_late = np.maximum(o.budget - upload_ms, 0.0)
    wait_ms = (1 - o.p_late) * wait_ok + o.p_late * wait_late
    radio = power.radio_j(table.wire_bytes, upload_ms, wait_ms, gap_s)
    compute = power.compute_j(_device_ms(table, state, o), threads)
    return compute + (1.0 - table.p_exit) * radio


def energy_cost(table: CandidateTable, state: State) -> np.ndarray | float:
    """The energy term of the reward: state.energy's weight x E[energy] in units of its
    reference frame (0 without an energy price)."""
    e = state.energy
    if e is None or e.weight == 0:
        return 0.0
    return e.weight / e.ref_j * expected_energy(table, state, e.power, e.threads, e.gap_s)


def expected_rewards(table: CandidateTable, state: State) -> np.ndarray:
    """Expected reward of every candidate (see the module docstring)."""
    return rewards_from_terms(state, *expected_terms(table, state)) - energy_cost(table, state)


def plan(table: CandidateTable, state: State) -> int:
    """Index of the candidate with the highest expected reward."""
    return int(np.argmax(expected_rewards(table, state)))


def rewards_from_terms(state: State, acc: np.ndarray, lat: np.ndarray, viol: np.ndarray
                       ) -> np.ndarray:
    w_acc, penalty = state.weights
    return w_acc * acc - lat / state.slo_ms - penalty * viol


def plan_pessimistic(table: CandidateTable, state: State) -> int:
    """The planner at the pessimistic bandwidth (State.pessimistic_mbps, the same relative
    spread): a simple hedge against a falling link."""
    terms = expected_terms(table, state, state.pessimistic_mbps)
    return int(np.argmax(rewards_from_terms(state, *terms) - energy_cost(table, state)))
