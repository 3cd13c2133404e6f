"""Exploration: the offload worth trying while the decision keeps frames on the device.

A plan that keeps the frame here brings no samples, so the estimates that ruled offloading
out are never corrected by one: after a server timed out (its slowdown is then a censored
lower bound that only relaxes with time) or after a slow spell of the link (a wide
spread, a low rate), the planner keeps frames here long after the cause has gone. In the
real loop (`edgesdk bench e2e`, PP-OCRv4), the planner without exploring kept 44 % of its
frames on the device through a 50 -> 2 -> 50 Mbit/s step where the one with it kept 24 %,
at 1.16x its mean latency (the same run; 1.13-1.69x after other disturbances).

The rule is optimism in the face of uncertainty, as in a UCB bandit: price the table in a
plausible best case, with the bandwidth at the upper 90 % quantile of its lognormal
(OPTIMISTIC_Z), or at its fastest recent sample, and a narrow spread, no per-message
overhead where the one known is only carried over, the server at its advertised speed with
an empty queue, and no recent failures. If an offload then beats the plan the frame was to
follow, the frame follows the best candidate in that case instead, as a bandit takes its
optimistic arm: it offloads with the budget and fallback of any offload (a wrong guess
costs that frame at most its local finish within the deadline), and the reply updates the
estimates as any offload's does (the server's speed and queue, the link's rate at that
size), timed with the device waiting for it, as a decision to offload would be. A link too
slow even in that case, or a model that never pays to offload, is never explored.

    pick = explore_pick(table, state, planned)   # a Candidate or None
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from .candidates import Candidate, CandidateTable
from .planner import MAX_SPREAD, expected_rewards
from .state import State

# How often (the engine and the simulator): an exploring frame no sooner than EXPLORE_MIN_S
# after the last one that sent its offload (one whose exit fired sent nothing), the gap
# doubling with each one while the decisions stay local (up to EXPLORE_MAX_S: a server
# that is still slow is asked every 2 s, not per frame; a busy one answers them busy), back
# to EXPLORE_MIN_S once a decision offloads or an exploring offload comes back (it paid).
EXPLORE_MIN_S = 0.25
EXPLORE_MAX_S = 2.0
OPTIMISTIC_Z = 1.2816  # the bandwidth's upper 90 % quantile, in log-spreads
OPTIMISTIC_SPREAD = 0.1  # the relative spread the optimistic bandwidth is priced with


def optimistic(state: State) -> State:
    """`state` in a plausible best case: the bandwidth at its upper quantile, or at the fastest
    of its last samples (State.bw_history, across changes) if that is faster, with a narrow
    spread, and no per-message overhead beyond the RTT if the one known was carried over
    from before the link's latest change and no upload has shown it since (in `bench e2e`,
    one fitted from probes while a load spike slowed every answer, 10.5 ms, ruled out
    offloading PP-LCNet through the trace's 180 Mbit/s spells: probes are too large to
    refit it, and only an offload could); the server at its profiled speed (or faster,
    as measured) with no queue, no failures. A timed-out offload can put the link's model at
    a bound (LinkEstimator.on_offload_timeout) that a smaller upload would have beaten, or
    that a server's stall caused: the rate measured just before stays plausible until newer
    measurements replace it. (In `bench e2e`, PP-OCRv4 through the 50 -> 2 -> 50 Mbit/s
    step: 0.91x the best fixed split with it, 1.06x without, one run each.)"""
    s = min(state.bw_std / state.bw_mbps, MAX_SPREAD)
    bw = max([state.bw_mbps * math.exp(OPTIMISTIC_Z * s), *state.bw_history])
    return replace(state, bw_mbps=bw, bw_std=OPTIMISTIC_SPREAD * bw, bw_low_mbps=0.0,
                   bw_overhead_ms=0.0 if state.bw_overhead_carried else state.bw_overhead_ms,
                   server_slowdown=min(state.server_slowdown, 1.0),
                   queue_ms=0.0, failures=0.0)


def explore_pick(table: CandidateTable, state: State, planned: Candidate
                 ) -> Candidate | None:
    """The best candidate under `optimistic(state)` if it is an offload that beats
    `planned` (the frame's plan, a row of `table`) there; else None."""
    if planned not in table.candidates:
        return None
    rewards = expected_rewards(table, optimistic(state))
    best = int(np.argmax(rewards))
    if table.wire_bytes[best] == 0 or rewards[best] <= rewards[table.index(planned)]:
        return None
    return table.candidates[best]
