"""The bundled policy network: a small MLP that scores each candidate from its feature row
(features.py); the decision is the argmax. numpy only, float32.

    net = PolicyNet.load()                  # edgesdk/policy/weights/policy.npz
    i = net.decide(table, state)            # index into table.candidates

The weights file holds w0, b0, w1, b1, ... (w_k of shape (in, out)), applied as
relu(x @ w + b) for every layer but the last, plus `skip` (in,): a linear term x @ skip
added to the score, fixed to the planner's reward-gap feature, so the score is the
planner's expected reward plus a learned correction. The decision re-ranks the planner's
TOP_K candidates. train.py writes the file (see weights/README.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import PolicyError
from .candidates import CandidateTable
from .features import N_FEATURES, N_STATE, features
from .planner import expected_terms, rewards_from_terms
from .state import State

WEIGHTS = Path(__file__).resolve().parent / "weights" / "policy.npz"
# The network re-ranks the planner's best TOP_K candidates: it learns where the planner's
# model is wrong among plausible plans, and cannot pick one the planner finds absurd.
TOP_K = 8
PLANNER_GAP = N_STATE + 3  # the feature column: planner reward - best planner reward


class PolicyNet:
    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray]],
                 skip: np.ndarray | None = None, margin: float = 0.0) -> None:
        if not layers or layers[0][0].shape[0] != N_FEATURES or layers[-1][0].shape[1] != 1:
            raise PolicyError(f"policy weights do not fit: expected {N_FEATURES} inputs and "
                              "1 output")
        self.layers = [(np.ascontiguousarray(w, np.float32), np.asarray(b, np.float32))
                       for w, b in layers]
        self.skip = (np.zeros(N_FEATURES, np.float32) if skip is None
                     else np.asarray(skip, np.float32).reshape(N_FEATURES))
        # Leave the planner's pick only for a predicted gain above `margin`: the argmax of
        # noisy predictions favours the overestimated (a winner's curse); the margin is
        # chosen on validation episodes (train.choose_margin).
        self.margin = float(margin)

    @classmethod
    def load(cls, path: str | os.PathLike = WEIGHTS) -> PolicyNet:
        try:
            with np.load(path, allow_pickle=False) as z:
                n = sum(1 for k in z.files if k.startswith("w"))
                skip = z["skip"] if "skip" in z.files else None
                margin = float(z["margin"]) if "margin" in z.files else 0.0
                return cls([(z[f"w{i}"], z[f"b{i}"]) for i in range(n)], skip, margin)
        except (OSError, KeyError, ValueError) as exc:
            raise PolicyError(f"{path}: cannot load policy weights: {exc}") from None

    def save(self, path: str | os.PathLike, **meta: np.ndarray) -> None:
        arrays = {}
        for i, (w, b) in enumerate(self.layers):
            arrays[f"w{i}"], arrays[f"b{i}"] = w, b
        np.savez_compressed(path, **arrays, skip=self.skip, margin=np.float32(self.margin),
                            **meta)

    @property
    def n_params(self) -> int:
        return sum(w.size + b.size for w, b in self.layers) + self.skip.size

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Score of each row of the feature matrix x (n, N_FEATURES)."""
        x = np.asarray(x, np.float32)
        h = x
        last = len(self.layers) - 1
        for i, (w, b) in enumerate(self.layers):
            h = h @ w
            h += b
            if i < last:
                np.maximum(h, 0, out=h)
        return h[:, 0] + x @ self.skip

    def decide(self, table: CandidateTable, state: State) -> int:
        terms = expected_terms(table, state)
        r = rewards_from_terms(state, *terms)
        top = np.argpartition(-r, TOP_K)[:TOP_K] if len(r) > TOP_K else np.arange(len(r))
        x = features(table, state, rows=top, terms=terms)
        score = self.scores(x)
        best = int(np.argmax(score))
        pick = int(np.argmax(x[:, PLANNER_GAP]))  # the planner's own choice (gap 0)
        return int(top[best if score[best] - score[pick] > self.margin else pick])
