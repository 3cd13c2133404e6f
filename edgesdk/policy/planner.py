"""The exhaustive analytic planner: the expected reward of every candidate under the
current estimates, and the argmax. Fed the true bandwidth (bw_std 0), it is the hindsight
oracle.

    table = build_candidates(model_profile(bundle.manifest))
    i = plan(table, state); table.candidates[i]

Model. With probability p_exit a sample leaves at an exit after exit_ms of device time;
otherwise its latency is device compute + encoding (both x device_slowdown) + transfer
(wire_bytes at the bandwidth) + rtt + queue + server compute (x server_slowdown); device-
only candidates send nothing. The bandwidth is lognormal around `bw_mbps` with relative
spread bw_std / bw_mbps, so the transfer time's mean grows by exp(s^2 / 2) and
P(latency > SLO) = Phi((log(bw needed) - log(bw)) / s), Phi approximated by a logistic
(max error 0.01; numpy has no erf). Reward: w_acc * accuracy - E[latency] / SLO -
penalty * P(latency > SLO), weights from the task (state.TASKS).
"""

from __future__ import annotations

import numpy as np

from .candidates import CandidateTable
from .state import State

MAX_SPREAD = 2.0  # cap on the log-bandwidth spread


def branch_latency(table: CandidateTable, state: State) -> tuple[np.ndarray, np.ndarray]:
    """(latency of the no-exit branch excluding transfer, transfer ms at state.bw_mbps)."""
    offload = table.wire_bytes > 0
    remote = table.srv_ms * state.server_slowdown
    remote += state.rtt_ms + state.queue_ms
    base = (table.dev_ms + table.enc_ms) * state.device_slowdown
    base += np.where(offload, remote, 0.0)
    transfer = table.wire_bytes * (8.0 / (state.bw_mbps * 1e3))
    return base, transfer


def expected_terms(table: CandidateTable, state: State
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(E[accuracy], E[latency] ms, P(latency > SLO)) of every candidate."""
    base, transfer = branch_latency(table, state)
    s = min(state.bw_std / state.bw_mbps, MAX_SPREAD)
    slo = state.slo_ms
    slack = slo - base
    late_anyway = slack <= 0
    if s > 0:
        # P(transfer > slack) = P(log bw < log(bw * transfer / slack)), logistic for Phi
        ratio = transfer / np.maximum(slack, 1e-12)
        np.maximum(ratio, 1e-300, out=ratio)
        z = np.log(ratio)
        z *= -1.702 / s
        np.clip(z, -50.0, 50.0, out=z)
        p_rest = 1.0 / (1.0 + np.exp(z))
        p_rest[late_anyway] = 1.0
        rest_lat = base + transfer * np.exp(s * s / 2)
    else:
        rest_lat = base + transfer
        p_rest = (rest_lat > slo).astype(np.float64)
    p_rest = np.where(table.wire_bytes > 0, p_rest, base > slo)
    exit_lat = table.exit_ms * state.device_slowdown
    p = table.p_exit
    q = 1.0 - p
    acc = p * table.exit_acc + q * table.rest_acc
    lat = p * exit_lat + q * rest_lat
    viol = p * (exit_lat > slo) + q * p_rest
    return acc, lat, viol


def expected_rewards(table: CandidateTable, state: State) -> np.ndarray:
    """Expected reward of every candidate (see the module docstring)."""
    w_acc, penalty = state.weights
    acc, lat, viol = expected_terms(table, state)
    return w_acc * acc - lat / state.slo_ms - penalty * viol


def plan(table: CandidateTable, state: State) -> int:
    """Index of the candidate with the highest expected reward."""
    return int(np.argmax(expected_rewards(table, state)))
