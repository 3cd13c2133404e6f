"""Policy-network inputs: one row per candidate, state features (broadcast) followed by
candidate features. Everything is scale-free (times over the SLO, bandwidth in logs), so
the same network scores candidates of any model.

The network sees what the planner sees, the planner's own verdicts (expected reward,
latency and violation probability at the estimate and at the pessimistic bandwidth), and
what the planner lacks: the bandwidth history, the estimator's spread and low forecast, the
age of the newest sample, the per-message overhead, recent timeouts and fallbacks, the
cost of a local finish after a failed offload (what a timeout costs this candidate), and
the SLO slack left at each bandwidth.
"""

from __future__ import annotations

import math

import numpy as np

from .candidates import CandidateTable
from .planner import branch_latency, expected_terms, rewards_from_terms
from .state import HISTORY, TASKS, State

TASK_NAMES = tuple(TASKS)
N_STATE = 11 + HISTORY + len(TASK_NAMES)
N_CAND = 16
N_FEATURES = N_STATE + N_CAND


def state_features(state: State) -> np.ndarray:
    bw = state.bw_mbps
    slo = state.slo_ms
    h = state.bw_history[-HISTORY:]
    hist = [0.0] * (HISTORY - len(h)) + [min(max(math.log(v / bw), -3.0), 3.0) for v in h]
    task = [1.0 if t == state.task else 0.0 for t in TASK_NAMES]
    return np.array([
        math.log(bw) / 5, min(state.bw_std / bw, 2.0),
        max(math.log(state.pessimistic_mbps / bw), -3.0),
        min(state.bw_overhead_ms / slo, 5.0), min(state.rtt_ms / slo, 5.0),
        min(state.queue_ms / slo, 5.0), math.log(state.device_slowdown) / 3,
        math.log(state.server_slowdown) / 3, math.log(slo) / 5, state.failures,
        min(state.bw_age_s, 60.0) / 60.0, *hist, *task])


_ROW_FIELDS = ("dev_ms", "enc_ms", "wire_bytes", "srv_ms", "p_exit", "exit_ms", "exit_acc",
               "rest_acc", "local_ms", "local_acc", "has_exit")


class _Rows:
    """Some rows of a table, with the array attributes the planner reads."""

    def __init__(self, table: CandidateTable, rows: np.ndarray) -> None:
        for f in _ROW_FIELDS:
            setattr(self, f, getattr(table, f)[rows])
        self.planner_matrix = np.ascontiguousarray(table.planner_matrix[:, rows])  # C planner


class _TableConstants:
    """Candidate features that depend on the table only (cached on it)."""

    def __init__(self, table: CandidateTable) -> None:
        offload = table.wire_bytes > 0
        self.local_rest = table.local_ms
        self.const = np.stack([table.p_exit, offload.astype(float), table.bits / 32,
                               np.log1p(table.wire_bytes) / 15,
                               table.has_exit.astype(float)], axis=1)


def _constants(table: CandidateTable) -> _TableConstants:
    c = getattr(table, "_policy_constants", None)
    if c is None:
        c = _TableConstants(table)
        object.__setattr__(table, "_policy_constants", c)  # frozen dataclass: a cache
    return c


def features(table: CandidateTable, state: State, rows: np.ndarray | None = None,
             terms: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """float32 array (len(rows) or len(table), N_FEATURES): the rows of `rows` (default
    all). `terms`: the planner's expected_terms of every candidate, if already computed.
    Rewards are relative to the planner's pick (its argmax), at the estimate and at the
    pessimistic bandwidth alike, so a row's features do not depend on which other rows are
    computed (training takes all rows, a decision only the planner's best few)."""
    slo = state.slo_ms
    const = _constants(table)
    acc, lat, viol = expected_terms(table, state) if terms is None else terms
    r = rewards_from_terms(state, acc, lat, viol)
    pick = int(np.argmax(r))
    if rows is None:
        rows = np.arange(len(table))
    both = np.append(rows, pick)
    sub = _Rows(table, both)
    base, transfer = branch_latency(sub, state)
    low = state.pessimistic_mbps
    terms_p = expected_terms(sub, state, low)
    rp = rewards_from_terms(state, *terms_p)
    k = len(rows)
    out = np.empty((k, N_FEATURES), dtype=np.float32)
    out[:, :N_STATE] = state_features(state)
    c = out[:, N_STATE:]
    c[:, 0] = np.minimum(lat[rows] / slo, 5.0)
    c[:, 1] = viol[rows]
    c[:, 2] = acc[rows]
    # (np.clip costs several µs per call on small arrays: minimum/maximum do not)
    c[:, 3] = np.maximum(r[rows] - r[pick], -10.0)
    c[:, 4] = np.minimum(np.maximum(rp[:k] - rp[k], -10.0), 10.0)
    c[:, 5] = terms_p[2][:k]
    c[:, 6] = np.minimum(transfer[:k] / slo, 5.0)
    c[:, 7] = np.minimum(transfer[:k] * (state.bw_mbps / low) / slo, 5.0)
    c[:, 8] = np.minimum(base[:k] / slo, 5.0)
    c[:, 9] = np.maximum((slo - base[:k] - transfer[:k]) / slo, -5.0)
    c[:, 10] = np.minimum(const.local_rest[rows] * state.device_slowdown / slo, 5.0)
    c[:, 11:16] = const.const[rows]
    return out
