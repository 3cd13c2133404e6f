"""Policy-network inputs: one row per candidate, state features (broadcast) followed by
candidate features. Everything is scale-free (times over the SLO, bandwidth in logs), so
the same network scores candidates of any model, and the planner's own analytic estimates
are features: the network learns corrections to them (e.g. distrust a falling link).
"""

from __future__ import annotations

import numpy as np

from .candidates import CandidateTable
from .planner import branch_latency, expected_terms
from .state import HISTORY, TASKS, State

TASK_NAMES = tuple(TASKS)
N_STATE = 6 + HISTORY + len(TASK_NAMES)
N_CAND = 11
N_FEATURES = N_STATE + N_CAND


def state_features(state: State) -> np.ndarray:
    bw = state.bw_mbps
    hist = np.zeros(HISTORY)
    h = state.bw_history[-HISTORY:]
    if h:
        hist[HISTORY - len(h):] = np.clip(np.log(np.asarray(h) / bw), -3, 3)
    task = np.zeros(len(TASK_NAMES))
    task[TASK_NAMES.index(state.task)] = 1.0
    return np.concatenate([[
        np.log(bw) / 5, min(state.bw_std / bw, 2.0), min(state.rtt_ms / state.slo_ms, 5.0),
        min(state.queue_ms / state.slo_ms, 5.0), np.log(state.device_slowdown) / 3,
        np.log(state.slo_ms) / 5], hist, task])


def _rewards(state: State, acc, lat, viol) -> np.ndarray:
    w_acc, penalty = state.weights
    return w_acc * acc - lat / state.slo_ms - penalty * viol


def features(table: CandidateTable, state: State) -> np.ndarray:
    """float32 array (len(table), N_FEATURES)."""
    slo = state.slo_ms
    acc, lat, viol = expected_terms(table, state)
    r = _rewards(state, acc, lat, viol)
    base, transfer = branch_latency(table, state)
    low = min((*state.bw_history, state.bw_mbps))  # a pessimistic bandwidth
    pess = State(bw_mbps=low, slo_ms=slo, bw_std=state.bw_std * low / state.bw_mbps,
                 rtt_ms=state.rtt_ms, queue_ms=state.queue_ms,
                 device_slowdown=state.device_slowdown, server_slowdown=state.server_slowdown,
                 task=state.task)
    rp = _rewards(pess, *expected_terms(table, pess))
    cand = np.stack([
        np.minimum(lat / slo, 5.0), viol, acc, np.minimum(transfer / slo, 5.0),
        np.minimum(base / slo, 5.0), table.p_exit, (table.wire_bytes > 0).astype(float),
        table.bits / 32, np.maximum(r - r.max(), -10.0), np.maximum(rp - rp.max(), -10.0),
        np.log1p(table.wire_bytes) / 15], axis=1)
    out = np.empty((len(table), N_FEATURES), dtype=np.float32)
    out[:, :N_STATE] = state_features(state)
    out[:, N_STATE:] = cand
    return out
