"""How the engine turns a strategy into decisions: the chooser of each strategy (the
planner, the policy network, fixed plans and their string forms), the rounded state that
keys the decision cache, and the planner over the rest of a frame after a missed exit.

    choose = make_chooser("planner", table, "digits")
    i = choose(table, state)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from ..bundle import FP32
from ..errors import PolicyError
from ..policy import (
    Candidate,
    CandidateTable,
    PolicyNet,
    State,
    energy_cost,
    expected_terms,
    plan,
)
from .plan import Plan, Strategy

STRATEGIES = ("planner", "policy", "device", "edge")


def make_chooser(strategy: Strategy | Plan | Candidate | str, table: CandidateTable,
                 bundle_name: str) -> Callable[[CandidateTable, State | None], int]:
    """A function (table, state) -> index into table for `strategy` (see Engine); `table`
    is the bundle's full candidate table, which fixed plans are looked up in."""
    if strategy == "policy":
        net = PolicyNet.load()
        return net.decide
    if strategy == "planner":
        return plan
    if isinstance(strategy, Candidate):
        fixed = (strategy if strategy in table.candidates else
                 table.find(strategy.n_exits, strategy.cut, strategy.bits) or strategy)
    elif strategy == "device":
        fixed = max((c for c in table.candidates if c.cut == "device" and c.version == FP32),
                    key=lambda c: c.n_exits)
    elif strategy == "edge":
        fixed = table.find(0, "input", 8)
        if fixed is None:
            cuts = sorted({c.cut for c in table.candidates} - {"device"})
            why = ("cannot send its input (the codec carries float tensors only)"
                   if "input" not in cuts else "has no candidate sending its input at 8 bits")
            raise PolicyError(f"strategy 'edge': {bundle_name!r} {why}; offload at a cut, "
                              f"cuts are {cuts}")
    elif isinstance(strategy, Plan) or (isinstance(strategy, str) and "@" in strategy):
        fixed = parse_fixed(strategy, table)
    else:
        raise PolicyError(f"strategy is {strategy!r}, expected one of {list(STRATEGIES)}, "
                          "'CUT@BITS' or a Candidate")
    if fixed not in table.candidates:
        raise PolicyError(f"strategy {fixed} is not a candidate of {bundle_name!r}")

    # The index per table, found once: a search compares candidates field by field
    # (~0.5 us each), tens of microseconds per frame on a table of fifty
    found: dict[int, tuple[CandidateTable, int]] = {}

    def choose(t: CandidateTable, state: State | None) -> int:
        hit = found.get(id(t))
        if hit is not None and hit[0] is t:
            return hit[1]
        if fixed in t.candidates:
            i = t.index(fixed)
        else:  # offline: the device-only plan with the same exits (and version)
            local = Candidate(fixed.n_exits, "device", 32, version=fixed.version)
            i = t.index(local) if local in t.candidates else 0
        found[id(t)] = (t, i)
        return i
    return choose


def log_step(v: float, steps: float = 20.0) -> int:
    """`v` on a log scale in steps of 1/steps (20: ~5 %)."""
    return round(math.log(max(v, 1e-6)) * steps)


def with_slo(state: State, slo_ms: float) -> State:
    """`state` with another SLO, unvalidated: `state` was validated when it was built and
    slo_ms is positive (dataclasses.replace checks every field again: ~5 us, ~10x that on
    a throttled device, for every re-decision the cache misses)."""
    out = object.__new__(type(state))
    fields = getattr(out, "__dict__", None)
    if fields is None:  # a State with __slots__: the validated copy
        return replace(state, slo_ms=slo_ms)
    fields.update(state.__dict__)
    fields["slo_ms"] = slo_ms
    return out


def state_key(state: State) -> tuple:
    """The state rounded to what can change a decision: ~5 % steps of bandwidth and
    times, ~20 % steps of the slowdowns (which jitter with every frame's timing), on a log
    scale, bandwidth history included. Frames whose state rounds the same within
    DECISION_TTL_S reuse the decision: the policy's ~0.1 ms would otherwise dominate small
    models at high frame rates."""
    q = log_step
    return (q(state.bw_mbps), q(state.bw_std + 1e-3), q(state.rtt_ms + 0.01),
            q(state.queue_ms + 0.01), q(state.device_slowdown, 5.0),
            q(state.server_slowdown, 5.0), tuple(q(h) for h in state.bw_history),
            q(state.bw_low_mbps + 1e-3), q(state.bw_overhead_ms + 0.01),
            state.bw_overhead_carried,
            round(state.failures * 10),
            None if state.energy is None else (state.energy.weight,
                                               q(min(state.energy.gap_s, 1e6), 10)))


def parse_fixed(strategy: str | Plan, table: CandidateTable) -> Candidate:
    """The candidate of a fixed plan: a Plan, or its string form "CUT@BITS[+z|-z][/E]"
    (Plan.parse); without a zstd mark, zstd if that is a candidate, else raw."""
    fixed = strategy if isinstance(strategy, Plan) else Plan.parse(strategy)
    strategy = str(strategy)  # as given, for the messages below
    cut, bits, version = fixed.cut, str(fixed.bits), fixed.version
    exits = "" if fixed.exits is None else str(fixed.exits)
    zstd = fixed.zstd
    versions = sorted({c.version for c in table.candidates})
    if version not in versions:
        raise PolicyError(f"strategy {strategy!r}: model version {version!r} is not a "
                          f"candidate; candidates run in {versions} (a version is one once "
                          "the bundle has it and `edgesdk profile --data` measured it)")
    options = [c for c in table.candidates if c.cut == cut and str(c.bits) == bits
               and c.version == version and (not exits or str(c.n_exits) == exits)
               and (zstd is None or c.zstd == zstd or c.cut == "device")]
    if not options:
        mode = {None: "", True: " with zstd", False: " raw-packed"}[zstd]
        raise PolicyError(f"strategy {strategy!r}: no candidate cut {cut!r} at {bits} bits"
                          + mode + (f" with {exits} exits" if exits else "")
                          + (f" in {version}" if version != FP32 else "")
                          + f"; cuts are {sorted({c.cut for c in table.candidates})}")
    # the most exits; then, with no mark, zstd first (what the plan meant before
    # compression was a decision)
    return max(options, key=lambda c: (c.n_exits, c.zstd))


def plan_rest(table: CandidateTable, state: State, slo_ms: float) -> int:
    """The planner over the rest of a frame: state.slo_ms is the budget left, which a
    violation is measured against; latency is weighed against the frame's whole SLO as at
    the frame's start (the time already spent is sunk: it shifts every candidate's reward
    alike), so a re-decision trades accuracy for time the same way the first one did."""
    w_acc, penalty = state.weights
    acc, lat, viol = expected_terms(table, state)
    return int(np.argmax(w_acc * acc - lat / slo_ms - penalty * viol
                         - energy_cost(table, state)))
