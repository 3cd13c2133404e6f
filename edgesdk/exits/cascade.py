"""The exit cascade: how an exit's outputs become a decision, and the thresholds that let
a sample stop early without costing more than a given drop in accuracy.

    rule = ExitRule.from_calibration(bundle.exits[0].calibration)
    decision = rule.decide(exit_logits)          # ExitDecision(fires, label, confidence, ...)

Thresholds. Exits are evaluated in order (earliest first); a sample leaves at the first exit
whose confidence reaches its threshold, else it runs the whole model (:func:`cascade_exits`).
:func:`calibrate_thresholds` picks the thresholds greedily from the earliest exit: with the
earlier thresholds fixed and the later exits off, exit k gets the lowest threshold (the
largest coverage) for which the cascade's drop in accuracy stays within ``max_drop``. The
drop is measured against the targets given: true labels, or the full model's own
predictions (then accuracy is agreement, and the baseline is 1). To hold on new data and
not only on the calibration set, the constraint is on an upper confidence bound of the
drop, ``drop + z * SE`` (SE: the standard error of the mean per-sample difference in
correctness); ``z=0`` gives the plain empirical rule. Earliest-first spends the budget where
leaving saves the most compute; a later exit still takes the samples it gets right.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ExitError
from .measures import _check_finite, _measure, as_logits, confidence, softmax

# -- the decision on the device ------------------------------------------------------------


@dataclass(frozen=True)
class ExitDecision:
    """What one exit says about one sample: whether it fires, its class and confidence."""

    fires: bool
    label: int
    confidence: float
    threshold: float | None  # None: the exit never fires (not calibrated, or no budget)
    probs: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class ExitRule:
    """How an exit's outputs become a decision: measure, temperature and threshold.

        rule = ExitRule.from_calibration(spec.calibration)
        if rule.decide(logits).fires: ...
    """

    measure: str = "max_prob"
    temperature: float = 1.0
    threshold: float | None = None
    output: str = "logits"  # what the exit produces: "logits" or "probs"

    def __post_init__(self) -> None:
        _measure(self.measure)
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0
                and math.isfinite(self.temperature)):
            raise ExitError(f"temperature is {self.temperature!r}, expected a finite number > 0")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ExitError(f"threshold is {self.threshold!r}, expected a finite number or None")
        if self.output not in ("logits", "probs"):
            raise ExitError(f"output kind {self.output!r} is unknown; expected 'logits' or "
                            "'probs'")

    @classmethod
    def from_calibration(cls, calibration: Mapping[str, Any], name: str = "exit") -> ExitRule:
        """The rule stored by `edgesdk exits calibrate` in an ExitSpec's calibration."""
        if not calibration or "measure" not in calibration:
            raise ExitError(f"exit {name!r} is not calibrated; run `edgesdk exits calibrate`")
        threshold = calibration.get("threshold")
        return cls(str(calibration["measure"]), float(calibration.get("temperature", 1.0)),
                   None if threshold is None else float(threshold),
                   str(calibration.get("output", "logits")))

    def probabilities(self, outputs: Any) -> np.ndarray:
        """Temperature-scaled class probabilities, (samples, classes)."""
        logits, _ = as_logits(outputs, self.output)
        return softmax(logits, self.temperature)

    def scores(self, outputs: Any) -> tuple[np.ndarray, np.ndarray]:
        """Confidence and predicted class of each sample."""
        p = self.probabilities(outputs)
        return confidence(p, self.measure), p.argmax(axis=1)

    def decide(self, outputs: Any) -> ExitDecision:
        """The decision for one sample (outputs of shape (classes,) or (1, classes))."""
        p = self.probabilities(outputs)
        if len(p) != 1:
            raise ExitError(f"decide() takes one sample, got {len(p)}; use scores()")
        conf = float(confidence(p, self.measure)[0])
        fires = self.threshold is not None and conf >= self.threshold
        return ExitDecision(bool(fires), int(p[0].argmax()), conf, self.threshold, p[0])


def cascade_exits(confidences: Sequence[Any], thresholds: Sequence[float | None]) -> np.ndarray:
    """For each sample, the index of the first exit whose confidence reaches its threshold;
    len(thresholds) for a sample that runs the whole model. A None threshold never fires."""
    if len(confidences) != len(thresholds):
        raise ExitError(f"{len(confidences)} confidence arrays for {len(thresholds)} thresholds")
    if not confidences:
        raise ExitError("no exits to evaluate")
    n = len(np.asarray(confidences[0]))
    where = np.full(n, len(thresholds), dtype=np.int64)
    for k in range(len(thresholds) - 1, -1, -1):  # earliest exit written last wins
        c = np.asarray(confidences[k], dtype=np.float64)
        if c.shape != (n,):
            raise ExitError(f"confidences[{k}] has shape {list(c.shape)}, expected ({n},)")
        if thresholds[k] is not None:
            where[c >= thresholds[k]] = k
    return where


# -- evaluating and calibrating a cascade --------------------------------------------------


@dataclass(frozen=True)
class ExitStats:
    """One exit inside a cascade, on a data set.

    reach: fraction of samples that get to evaluate it; coverage: fraction that leave there.
    accuracy_exited / agreement_exited: on the samples that leave there (None if none do),
    against the targets and against the full model's prediction. accuracy_upto: the
    cascade's overall accuracy with this exit and the earlier ones on, the later ones off.
    """

    threshold: float | None
    reach: float
    coverage: float
    accuracy_exited: float | None
    agreement_exited: float | None
    accuracy_upto: float


@dataclass(frozen=True)
class CascadeCalibration:
    """The result of :func:`evaluate_cascade` or :func:`calibrate_thresholds`.

    accuracy: of the cascade against the targets; baseline: of the full model alone
    (1.0 when the targets are the full model's predictions); drop = baseline - accuracy;
    drop_bound = drop + z * SE, what calibration kept <= max_drop. curves: per exit, points
    (threshold, coverage, accuracy_exited, accuracy) as its threshold sweeps, with the
    earlier exits at their thresholds and the later ones off: the trade-off to plot.
    """

    thresholds: tuple[float | None, ...]
    exits: tuple[ExitStats, ...]
    final_coverage: float
    accuracy: float
    agreement: float
    baseline: float
    drop: float
    drop_bound: float
    n_samples: int
    max_drop: float | None = None
    z: float = 0.0
    curves: tuple[tuple[tuple[float, float, float | None, float], ...], ...] = ()


def _cascade_inputs(confidences, predictions, final_predictions, targets):
    if len(confidences) != len(predictions):
        raise ExitError(f"{len(confidences)} confidence arrays for {len(predictions)} "
                        "prediction arrays")
    if not confidences:
        raise ExitError("no exits to calibrate")
    final = np.asarray(final_predictions)
    n = len(final)
    if final.ndim != 1 or n == 0:
        raise ExitError(f"final predictions have shape {list(final.shape)}, expected a "
                        "non-empty (samples,) array")
    target = final if targets is None else np.asarray(targets)
    if target.shape != (n,):
        raise ExitError(f"targets have shape {list(target.shape)}, expected ({n},)")
    conf, pred = [], []
    for k, (c, p) in enumerate(zip(confidences, predictions, strict=True)):
        c, p = np.asarray(c, dtype=np.float64), np.asarray(p)
        if c.shape != (n,) or p.shape != (n,):
            raise ExitError(f"exit {k}: confidences {list(c.shape)} and predictions "
                            f"{list(p.shape)}, expected ({n},) each")
        _check_finite(c[:, None], f"exit {k} confidences")
        conf.append(c)
        pred.append(p)
    return conf, pred, final, target, n


def _bound(diff_sum: float, diff_abs: float, n: int, z: float) -> float:
    """drop + z * SE from sums of the per-sample differences d_i in {-1, 0, 1}."""
    mean = diff_sum / n
    var = max(diff_abs / n - mean * mean, 0.0)  # d_i^2 = |d_i|
    return mean + z * math.sqrt(var / n)


def evaluate_cascade(confidences: Sequence[Any], predictions: Sequence[Any],
                     final_predictions: Any, thresholds: Sequence[float | None],
                     targets: Any = None, z: float = 0.0) -> CascadeCalibration:
    """How a cascade with `thresholds` does on a data set (targets: labels, or None for
    agreement with the full model)."""
    conf, pred, final, target, n = _cascade_inputs(confidences, predictions,
                                                   final_predictions, targets)
    where = cascade_exits(conf, thresholds)
    out = final.copy()
    for k in range(len(conf)):
        out[where == k] = pred[k][where == k]
    stats, reach = [], np.ones(n, dtype=bool)
    for k in range(len(conf)):
        here = where == k
        upto = np.where(where <= k, out, final)
        stats.append(ExitStats(
            thresholds[k], float(reach.mean()), float(here.mean()),
            float((pred[k][here] == target[here]).mean()) if here.any() else None,
            float((pred[k][here] == final[here]).mean()) if here.any() else None,
            float((upto == target).mean())))
        reach &= ~here
    base_ok = final == target
    diff = base_ok.astype(np.int64) - (out == target)
    baseline, accuracy = float(base_ok.mean()), float((out == target).mean())
    return CascadeCalibration(tuple(thresholds), tuple(stats), float(reach.mean()), accuracy,
                              float((out == final).mean()), baseline, baseline - accuracy,
                              _bound(float(diff.sum()), float(np.abs(diff).sum()), n, z),
                              n, None, z)


def calibrate_thresholds(confidences: Sequence[Any], predictions: Sequence[Any],
                         final_predictions: Any, targets: Any = None,
                         max_drop: float = 0.01, z: float = 1.0,
                         curve_points: int = 21) -> CascadeCalibration:
    """Per-exit thresholds, earliest exit first, keeping drop + z * SE <= max_drop.

    confidences, predictions: per exit (in evaluation order), arrays of shape (samples,).
    targets: true labels, or None to use the full model's predictions (agreement).
    A threshold lies midway between the lowest confidence admitted and the next one below
    (or on the lowest admitted one, when the two are too close to have a midpoint), never
    between tied values; None means the exit never fires.
    """
    if not (isinstance(max_drop, (int, float)) and 0 <= max_drop < 1):
        raise ExitError(f"max_drop is {max_drop!r}, expected a fraction in [0, 1), "
                        "e.g. 0.01 for one point")
    if not (isinstance(z, (int, float)) and z >= 0 and math.isfinite(z)):
        raise ExitError(f"z is {z!r}, expected a finite number >= 0")
    conf, pred, final, target, n = _cascade_inputs(confidences, predictions,
                                                   final_predictions, targets)
    base_ok = (final == target).astype(np.int64)
    cur_ok = base_ok.copy()  # correctness of the cascade so far, per sample
    remaining = np.ones(n, dtype=bool)
    thresholds: list[float | None] = []
    curves = []
    for k in range(len(conf)):
        idx = np.flatnonzero(remaining)
        order = idx[np.argsort(-conf[k][idx], kind="stable")]
        s = conf[k][order]
        # Samples still here are, so far, as right as the full model (d_i = 0); leaving
        # the first m of `order` here sets their d_i = base_ok - (prediction == target).
        d_now = base_ok - cur_ok
        d_exit = base_ok[order] - (pred[k][order] == target[order])
        cum_sum = float(d_now.sum()) + np.concatenate([[0], np.cumsum(d_exit)])
        cum_abs = float(np.abs(d_now).sum()) + np.concatenate([[0], np.cumsum(np.abs(d_exit))])
        # admissible cut sizes m: 0, or the end of a group of tied confidences
        ends = np.concatenate([[0], np.flatnonzero(np.diff(s) != 0) + 1, [len(s)]])
        ends = np.unique(ends)
        mean = cum_sum[ends] / n
        var = np.maximum(cum_abs[ends] / n - mean * mean, 0.0)
        ok = mean + z * np.sqrt(var / n) <= max_drop + 1e-12
        m = int(ends[ok].max()) if ok.any() else 0
        if m == 0:
            thresholds.append(None)
        elif m == len(s):
            thresholds.append(float(s[-1]))
        else:
            thresholds.append(_separating_threshold(float(s[m]), float(s[m - 1])))
        curves.append(_curve(s, cum_sum, ends, n, float(base_ok.mean()), curve_points,
                             pred[k][order] == target[order]))
        leaving = order[:m]
        cur_ok[leaving] = (pred[k][leaving] == target[leaving])
        remaining[leaving] = False
    result = evaluate_cascade(conf, pred, final, thresholds, targets, z)
    return CascadeCalibration(**{**result.__dict__, "max_drop": float(max_drop),
                                 "curves": tuple(curves)})


def _separating_threshold(below: float, lowest_admitted: float) -> float:
    """A threshold t with below < t <= lowest_admitted (an exit fires at conf >= t).

    Midway, for a margin on unseen data; but the midpoint of two adjacent doubles rounds
    onto one of them, and onto `below` it would admit one more group than calibrated, so
    then the lowest admitted confidence itself.
    """
    mid = (below + lowest_admitted) / 2
    if not math.isfinite(mid):  # the sum overflowed
        mid = below / 2 + lowest_admitted / 2
    return mid if below < mid <= lowest_admitted else lowest_admitted


def _curve(s, cum_sum, ends, n, baseline, points, correct_here):
    """(threshold, coverage, accuracy_exited, cascade accuracy) at ~`points` coverages."""
    out = []
    if len(s) == 0:
        return ()
    cum_correct = np.concatenate([[0], np.cumsum(correct_here)])
    for q in np.linspace(0, 1, points):
        m = int(ends[np.argmin(np.abs(ends - q * len(s)))])
        thr = float(s[m - 1]) if m else float("nan")
        acc_exited = float(cum_correct[m] / m) if m else None
        out.append((thr, m / n, acc_exited, float(baseline - cum_sum[m] / n)))
    # the same m can be the nearest admissible end of several q: keep each once
    seen, unique = set(), []
    for p in out:
        if p[1] not in seen:
            seen.add(p[1])
            unique.append(p)
    return tuple(unique)


__all__ = ["CascadeCalibration", "ExitDecision", "ExitRule", "ExitStats",
           "calibrate_thresholds", "cascade_exits", "evaluate_cascade"]
