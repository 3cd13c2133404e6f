"""Early exits in pure numpy: confidence measures, temperature scaling, exit heads and the
thresholds that decide when a sample may stop early.

This module is what a device needs to run and judge an exit, whatever the runtime backend
(onnxruntime, LiteRT) and with no training framework: it imports numpy and edgesdk.errors
only. The offline side (reading data, running a bundle, writing files) is
:mod:`edgesdk.exit_tools`.

    rule = ExitRule.from_calibration(bundle.exits[0].calibration)
    decision = rule.decide(exit_logits)          # ExitDecision(fires, label, confidence, ...)

    head = Head.load("model.edge/exit_c1.npz")  # a head trained by `edgesdk exits train`
    logits = head(cut_tensor)                    # GAP -> [hidden ReLU] -> linear

Confidence. Each measure maps class probabilities to [0, 1], higher meaning surer:
``max_prob`` (the top probability), ``margin`` (top-1 minus top-2 probability) and
``entropy`` (1 minus the entropy normalized by log(classes)). Probabilities are
``softmax(logits / T)`` with a temperature T fitted per exit on calibration data
(:func:`fit_temperature`: golden-section search on log T for the lowest NLL), reported with
its expected calibration error (:func:`ece`).

Heads. A head reads the tensors of a cut point, averages each over its spatial axes (global
average pooling; the channel axis is 1 for NCHW onnx tensors, -1 for NHWC tflite ones),
standardizes the pooled features, optionally applies one small hidden ReLU layer, then a
linear layer to class logits. :func:`train_head` fits it by L-BFGS (default) or Adam,
seeded, with weight decay and early stopping on a held-out slice of the training data.

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

import io
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ExitError

__all__ = [
    "MEASURES",
    "CascadeCalibration",
    "ExitDecision",
    "ExitRule",
    "ExitStats",
    "Head",
    "TrainResult",
    "as_logits",
    "calibrate_thresholds",
    "cascade_exits",
    "confidence",
    "ece",
    "evaluate_cascade",
    "fit_temperature",
    "log_softmax",
    "margin",
    "max_prob",
    "nll",
    "normalized_entropy",
    "pool_features",
    "softmax",
    "train_head",
]

MEASURES = ("max_prob", "margin", "entropy")
HEAD_FORMAT = "edgesdk-exit-head"
HEAD_VERSION = 1

# -- validation ----------------------------------------------------------------------------


def _matrix(values: Any, what: str) -> np.ndarray:
    """A finite, non-empty 2-D float64 array (samples x classes) or an ExitError."""
    arr = np.asarray(values)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise ExitError(f"{what} has shape {list(arr.shape)}, expected (samples, classes)")
    if arr.shape[0] == 0:
        raise ExitError(f"{what} is empty (0 samples)")
    if arr.shape[1] < 2:
        raise ExitError(f"{what} has {arr.shape[1]} class, expected >= 2")
    if arr.dtype.kind not in "fiu":
        raise ExitError(f"{what} has dtype {arr.dtype}, expected a float array")
    arr = arr.astype(np.float64, copy=False)
    _check_finite(arr, what)
    return arr


def _check_finite(arr: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        first = int(np.argwhere(bad.reshape(len(arr), -1).any(axis=1))[0, 0])
        raise ExitError(f"{what} has {int(bad.sum())} NaN/inf values (first in sample "
                        f"{first}); fix the data or the model before training exits")


def _targets(targets: Any, n: int, classes: int, what: str = "targets") -> np.ndarray:
    t = np.asarray(targets)
    if t.ndim != 1 or len(t) != n:
        raise ExitError(f"{what} has shape {list(t.shape)}, expected ({n},): one class "
                        "index per sample")
    if t.dtype.kind not in "iu":
        if t.dtype.kind == "f" and np.all(np.isfinite(t)) and np.all(t == np.round(t)):
            t = t.astype(np.int64)
        else:
            raise ExitError(f"{what} has dtype {t.dtype}, expected integer class indices")
    if n and (t.min() < 0 or t.max() >= classes):
        bad = int(t.min()) if t.min() < 0 else int(t.max())
        raise ExitError(f"{what} has class {bad}, expected 0..{classes - 1}")
    return t.astype(np.int64, copy=False)


def _measure(measure: str) -> str:
    if measure not in MEASURES:
        raise ExitError(f"confidence measure {measure!r} is unknown; expected one of "
                        f"{list(MEASURES)}")
    return measure


# -- probabilities and confidence ----------------------------------------------------------


def log_softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """log softmax(logits / temperature) over the last axis, in float64."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature) over the last axis, in float64."""
    return np.exp(log_softmax(logits, temperature))


def as_logits(outputs: Any, kind: str = "auto") -> tuple[np.ndarray, str]:
    """Logits from an exit's outputs, and what they were: "logits" or "probs".

    Some models end in a softmax. Their probabilities become log-probabilities, which are
    logits up to a constant per row, so temperature scaling and the measures apply alike.
    kind="auto" calls outputs probabilities when every row is non-negative and sums to 1.
    """
    arr = _matrix(outputs, "exit outputs")
    if kind == "auto":
        sums = arr.sum(axis=1)
        kind = "probs" if arr.min() >= 0 and np.allclose(sums, 1.0, atol=1e-3) else "logits"
    if kind == "probs":
        return np.log(np.clip(arr, 1e-12, None)), kind
    if kind != "logits":
        raise ExitError(f"output kind {kind!r} is unknown; expected 'logits' or 'probs'")
    return arr, kind


def max_prob(probs: Any) -> np.ndarray:
    """The top probability of each row."""
    return np.asarray(probs, dtype=np.float64).max(axis=-1)


def margin(probs: Any) -> np.ndarray:
    """Top-1 minus top-2 probability of each row."""
    p = np.asarray(probs, dtype=np.float64)
    top2 = np.partition(p, p.shape[-1] - 2, axis=-1)[..., -2:]
    return top2[..., 1] - top2[..., 0]


def normalized_entropy(probs: Any) -> np.ndarray:
    """Entropy of each row divided by log(classes): 0 for one-hot, 1 for uniform."""
    p = np.asarray(probs, dtype=np.float64)
    h = -np.sum(p * np.log(np.clip(p, 1e-300, None)), axis=-1)
    return np.clip(h / math.log(p.shape[-1]), 0.0, 1.0)


def confidence(probs: Any, measure: str = "max_prob") -> np.ndarray:
    """Per-row confidence in [0, 1], higher meaning surer (see the module docstring)."""
    measure = _measure(measure)
    if measure == "max_prob":
        return max_prob(probs)
    if measure == "margin":
        return margin(probs)
    return 1.0 - normalized_entropy(probs)


# -- temperature and calibration error -----------------------------------------------------


def nll(logits: Any, targets: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the targets under softmax(logits / T)."""
    z = _matrix(logits, "logits")
    t = _targets(targets, len(z), z.shape[1])
    return float(-log_softmax(z, temperature)[np.arange(len(t)), t].mean())


def fit_temperature(logits: Any, targets: Any, bounds: tuple[float, float] = (0.05, 20.0),
                    tol: float = 1e-4) -> float:
    """The temperature T in `bounds` that minimizes the NLL of the targets.

    Golden-section search on log T: the NLL as a function of 1/T is convex, and on log T it
    is unimodal, so the search converges to the minimum without derivatives.
    """
    z = _matrix(logits, "logits")
    t = _targets(targets, len(z), z.shape[1])
    rows = np.arange(len(t))

    def loss(log_t: float) -> float:
        return float(-log_softmax(z, math.exp(log_t))[rows, t].mean())

    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = loss(a), loss(b)
    while hi - lo > tol:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = loss(b)
    return float(math.exp((lo + hi) / 2))


def ece(probs: Any, targets: Any, bins: int = 15) -> float:
    """Expected calibration error: the sample-weighted mean, over `bins` equal-width bins of
    the top probability, of |accuracy - mean top probability| in the bin."""
    p = _matrix(probs, "probabilities")
    t = _targets(targets, len(p), p.shape[1])
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == t).astype(np.float64)
    which = np.minimum((conf * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.sum() * abs(correct[sel].mean() - conf[sel].mean())
    return float(total / len(p))


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


# -- exit heads ----------------------------------------------------------------------------


def pool_features(tensors: Sequence[Any], channel_axis: int = 1) -> np.ndarray:
    """Global average pooling: each (batch, ...) tensor becomes (batch, channels), averaged
    over every axis but the batch and channel axes; several tensors are concatenated."""
    if not tensors:
        raise ExitError("no tensors to pool")
    pooled = []
    batch = None
    for i, t in enumerate(tensors):
        a = np.asarray(t)
        if a.dtype.kind != "f":
            raise ExitError(f"cut tensor {i} has dtype {a.dtype}, expected floats")
        if a.ndim < 2:
            raise ExitError(f"cut tensor {i} has shape {list(a.shape)}, expected (batch, ...)"
                            " with at least 2 axes")
        if batch is None:
            batch = a.shape[0]
        elif a.shape[0] != batch:
            raise ExitError(f"cut tensor {i} has batch {a.shape[0]}, tensor 0 has {batch}")
        if a.ndim > 2:
            axis = channel_axis % a.ndim
            if axis == 0:
                raise ExitError("channel_axis points at the batch axis")
            a = np.moveaxis(a, axis, 1)
            a = a.reshape(a.shape[0], a.shape[1], -1).mean(axis=2, dtype=np.float64)
        pooled.append(a.astype(np.float64, copy=False))
    return np.concatenate(pooled, axis=1)


@dataclass(frozen=True, eq=False)
class Head:
    """A light exit head: GAP -> standardize -> [Linear -> ReLU] -> Linear -> logits.

        head = Head.load("model.edge/exit_c1.npz")
        logits = head(cut_tensor)             # (batch, classes) float32

    layers: (weight (in, out), bias (out,)) pairs, a ReLU between consecutive ones.
    """

    layers: tuple[tuple[np.ndarray, np.ndarray], ...]
    mean: np.ndarray
    scale: np.ndarray
    channel_axis: int = 1

    def __post_init__(self) -> None:
        if not self.layers:
            raise ExitError("a head needs at least one layer")
        width = len(self.mean)
        if self.scale.shape != (width,):
            raise ExitError(f"head scale has shape {list(self.scale.shape)}, expected "
                            f"({width},)")
        for i, (w, b) in enumerate(self.layers):
            if w.ndim != 2 or w.shape[0] != width or b.shape != (w.shape[1],):
                raise ExitError(f"head layer {i}: weight {list(w.shape)} and bias "
                                f"{list(b.shape)} do not chain from width {width}")
            width = w.shape[1]
        for name, arr in [("mean", self.mean), ("scale", self.scale)] + [
                (f"layer {i}", a) for i, wb in enumerate(self.layers) for a in wb]:
            if not np.all(np.isfinite(arr)):
                raise ExitError(f"head {name} has NaN/inf values")

    @property
    def features(self) -> int:
        return len(self.mean)

    @property
    def classes(self) -> int:
        return self.layers[-1][0].shape[1]

    @property
    def hidden(self) -> int:
        return self.layers[0][0].shape[1] if len(self.layers) > 1 else 0

    def logits_from_pooled(self, pooled: Any) -> np.ndarray:
        """Logits from already pooled features (samples, features)."""
        h = (np.asarray(pooled, dtype=np.float64) - self.mean) / self.scale
        if h.ndim != 2 or h.shape[1] != self.features:
            raise ExitError(f"pooled features have shape {list(h.shape)}, expected "
                            f"(samples, {self.features})")
        for i, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0.0)
        return h.astype(np.float32)

    def __call__(self, *tensors: Any) -> np.ndarray:
        """Logits (batch, classes) from the cut tensors, in the order of the exit's inputs."""
        return self.logits_from_pooled(pool_features(tensors, self.channel_axis))

    # -- file format: an .npz of arrays, no pickles --------------------------------------
    def to_bytes(self) -> bytes:
        arrays = {"format": np.array(HEAD_FORMAT), "version": np.array(HEAD_VERSION),
                  "channel_axis": np.array(self.channel_axis), "mean": self.mean,
                  "scale": self.scale, "n_layers": np.array(len(self.layers))}
        for i, (w, b) in enumerate(self.layers):
            arrays[f"w{i}"] = w.astype(np.float32)
            arrays[f"b{i}"] = b.astype(np.float32)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    def save(self, path: str | os.PathLike) -> Path:
        """Write the head as an .npz (atomically)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.part")
        tmp.write_bytes(self.to_bytes())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Head:
        """Read a head written by :meth:`save`; ExitError names what is wrong."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError) as exc:
            raise ExitError(f"{path}: not a readable exit head (.npz): {exc}") from None
        where = str(path)
        fmt = str(arrays.get("format", ""))
        if fmt != HEAD_FORMAT:
            raise ExitError(f"{where}: format is {fmt!r}, expected {HEAD_FORMAT!r}")
        version = int(arrays.get("version", -1))
        if version != HEAD_VERSION:
            raise ExitError(f"{where}: head version is {version}, this edgesdk reads "
                            f"{HEAD_VERSION}; retrain with `edgesdk exits train`")
        try:
            n = int(arrays["n_layers"])
            layers = tuple((arrays[f"w{i}"].astype(np.float64),
                            arrays[f"b{i}"].astype(np.float64)) for i in range(n))
            head = cls(layers, arrays["mean"].astype(np.float64),
                       arrays["scale"].astype(np.float64), int(arrays["channel_axis"]))
        except KeyError as exc:
            raise ExitError(f"{where}: missing array {exc}") from None
        except ExitError as exc:
            raise ExitError(f"{where}: {exc}") from None
        return head


# -- training ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainResult:
    """A trained head and how it did on its own training and held-out samples."""

    head: Head
    optimizer: str
    iterations: int
    train_accuracy: float
    val_accuracy: float
    val_loss: float
    majority_accuracy: float  # on the held-out slice, of always predicting the top class
    n_train: int
    n_val: int
    seconds: float


def _init(sizes: Sequence[int], rng: np.random.Generator) -> list[np.ndarray]:
    params = []
    for i in range(len(sizes) - 1):
        fan_in = sizes[i]
        std = math.sqrt(2.0 / fan_in) if i < len(sizes) - 2 else 0.01
        params.append(rng.standard_normal((sizes[i], sizes[i + 1])) * std)
        params.append(np.zeros(sizes[i + 1]))
    return params


def _loss_grad(params: list[np.ndarray], x: np.ndarray, y: np.ndarray, wd: float,
               need_grad: bool = True) -> tuple[float, list[np.ndarray] | None]:
    """Mean cross-entropy + wd/2 * sum of squared weights, and its gradient."""
    acts = [x]
    h = x
    n_layers = len(params) // 2
    for i in range(n_layers):
        h = h @ params[2 * i] + params[2 * i + 1]
        if i < n_layers - 1:
            h = np.maximum(h, 0.0)
            acts.append(h)
    logp = log_softmax(h)
    n = len(y)
    loss = -logp[np.arange(n), y].mean()
    loss += 0.5 * wd * sum(float(np.sum(params[2 * i] ** 2)) for i in range(n_layers))
    if not need_grad:
        return float(loss), None
    delta = np.exp(logp)
    delta[np.arange(n), y] -= 1.0
    delta /= n
    grads: list[np.ndarray] = [np.empty(0)] * len(params)
    for i in range(n_layers - 1, -1, -1):
        grads[2 * i] = acts[i].T @ delta + wd * params[2 * i]
        grads[2 * i + 1] = delta.sum(axis=0)
        if i:
            delta = (delta @ params[2 * i].T) * (acts[i] > 0)
    return float(loss), grads


def _predict(params: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    h = x
    n_layers = len(params) // 2
    for i in range(n_layers):
        h = h @ params[2 * i] + params[2 * i + 1]
        if i < n_layers - 1:
            h = np.maximum(h, 0.0)
    return h


def _flat(params: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([p.ravel() for p in params])


def _unflat(theta: np.ndarray, like: list[np.ndarray]) -> list[np.ndarray]:
    out, i = [], 0
    for p in like:
        out.append(theta[i:i + p.size].reshape(p.shape))
        i += p.size
    return out


def _lbfgs(params, x, y, xv, yv, wd, max_iter, patience, memory=10):
    """Full-batch L-BFGS (two-loop recursion, backtracking Armijo line search), keeping the
    parameters with the lowest held-out loss; stops after `patience` iterations without
    improvement."""
    theta = _flat(params)

    def fg(th):
        loss, grads = _loss_grad(_unflat(th, params), x, y, wd)
        return loss, _flat(grads)

    def val(th):
        return _loss_grad(_unflat(th, params), xv, yv, 0.0, need_grad=False)[0]

    f, g = fg(theta)
    best, best_val, since, iters = theta.copy(), val(theta), 0, 0
    s_hist: list[np.ndarray] = []
    y_hist: list[np.ndarray] = []
    for iters in range(1, max_iter + 1):  # noqa: B007 (the count is returned)
        q = g.copy()
        alphas = []
        for s, yk in zip(reversed(s_hist), reversed(y_hist), strict=True):
            a = s @ q / (yk @ s)
            alphas.append(a)
            q -= a * yk
        if s_hist:
            q *= (s_hist[-1] @ y_hist[-1]) / (y_hist[-1] @ y_hist[-1])
        else:
            q /= max(np.linalg.norm(g), 1e-12)
        for (s, yk), a in zip(zip(s_hist, y_hist, strict=True), reversed(alphas),
                                  strict=True):
            q += s * (a - yk @ q / (yk @ s))
        direction = -q
        slope = g @ direction
        if slope >= 0:  # not a descent direction: restart from steepest descent
            s_hist.clear()
            y_hist.clear()
            direction = -g / max(np.linalg.norm(g), 1e-12)
            slope = g @ direction
        step = 1.0
        while True:
            new = theta + step * direction
            f_new, g_new = fg(new)
            if f_new <= f + 1e-4 * step * slope or step < 1e-10:
                break
            step *= 0.5
        s_vec, y_vec = new - theta, g_new - g
        if s_vec @ y_vec > 1e-12:
            s_hist.append(s_vec)
            y_hist.append(y_vec)
            if len(s_hist) > memory:
                s_hist.pop(0)
                y_hist.pop(0)
        converged = abs(f - f_new) <= 1e-10 * max(1.0, abs(f)) or step < 1e-10
        theta, f, g = new, f_new, g_new
        v = val(theta)
        if v < best_val - 1e-9:
            best, best_val, since = theta.copy(), v, 0
        else:
            since += 1
        if since >= patience or converged or np.linalg.norm(g) < 1e-7:
            break
    return _unflat(best, params), iters


def _adam(params, x, y, xv, yv, wd, max_epochs, patience, rng, lr=1e-2, batch=128):
    """Mini-batch Adam, seeded shuffles, keeping the parameters with the lowest held-out
    loss; stops after `patience` epochs without improvement."""
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    b1, b2, eps, t = 0.9, 0.999, 1e-8, 0
    best = [p.copy() for p in params]
    best_val = _loss_grad(params, xv, yv, 0.0, need_grad=False)[0]
    since, epoch = 0, 0
    for epoch in range(1, max_epochs + 1):  # noqa: B007 (the count is returned)
        perm = rng.permutation(len(y))
        for start in range(0, len(y), batch):
            sel = perm[start:start + batch]
            _, grads = _loss_grad(params, x[sel], y[sel], wd)
            t += 1
            for i, gr in enumerate(grads):
                m[i] = b1 * m[i] + (1 - b1) * gr
                v[i] = b2 * v[i] + (1 - b2) * gr * gr
                params[i] = params[i] - lr * (m[i] / (1 - b1 ** t)) / (
                    np.sqrt(v[i] / (1 - b2 ** t)) + eps)
        val = _loss_grad(params, xv, yv, 0.0, need_grad=False)[0]
        if val < best_val - 1e-9:
            best, best_val, since = [p.copy() for p in params], val, 0
        else:
            since += 1
            if since >= patience:
                break
    return best, epoch


def train_head(pooled: Any, targets: Any, classes: int, *, hidden: int = 0,
               optimizer: str = "lbfgs", weight_decay: float = 1e-3, seed: int = 0,
               val_fraction: float = 0.2, max_iter: int = 500, patience: int = 20,
               channel_axis: int = 1, min_samples: int = 10) -> TrainResult:
    """Fit a head on pooled features (samples, features) to integer `targets`.

    A seeded `val_fraction` of the samples is held out for early stopping; the parameters
    with the lowest held-out loss are kept. Raises ExitError for data that would give a
    useless head: too few samples, one class only, NaN/inf features.
    """
    t0 = time.perf_counter()
    x = np.asarray(pooled)
    if x.ndim != 2:
        raise ExitError(f"pooled features have shape {list(x.shape)}, expected "
                        "(samples, features)")
    if x.dtype.kind not in "fiu":
        raise ExitError(f"pooled features have dtype {x.dtype}, expected floats")
    x = x.astype(np.float64)
    n = len(x)
    if n < min_samples:
        raise ExitError(f"{n} training samples, a head needs at least {min_samples} "
                        "(a train and a held-out slice)")
    if x.shape[1] == 0:
        raise ExitError("pooled features have 0 columns")
    _check_finite(x, "pooled features")
    if not isinstance(classes, int) or classes < 2:
        raise ExitError(f"classes is {classes!r}, expected an int >= 2")
    y = _targets(targets, n, classes)
    present = np.unique(y)
    if len(present) < 2:
        raise ExitError(f"every one of the {n} targets is class {int(present[0])}; a head "
                        "needs examples of at least two classes")
    if optimizer not in ("lbfgs", "adam"):
        raise ExitError(f"optimizer {optimizer!r} is unknown; expected 'lbfgs' or 'adam'")
    if not isinstance(hidden, int) or hidden < 0:
        raise ExitError(f"hidden is {hidden!r}, expected an int >= 0 (0: no hidden layer)")
    if not 0 < val_fraction < 1:
        raise ExitError(f"val_fraction is {val_fraction!r}, expected in (0, 1)")
    if not weight_decay >= 0:
        raise ExitError(f"weight_decay is {weight_decay!r}, expected >= 0")

    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_val = max(1, int(round(val_fraction * n)))
    val_idx, tr_idx = perm[:n_val], perm[n_val:]
    mean = x[tr_idx].mean(axis=0)
    scale = x[tr_idx].std(axis=0)
    scale = np.where(scale > 1e-6 * max(float(np.abs(mean).max()), 1.0), scale, 1.0)
    xs = (x - mean) / scale
    sizes = [x.shape[1]] + ([hidden] if hidden else []) + [classes]
    params = _init(sizes, rng)
    xt, yt, xv, yv = xs[tr_idx], y[tr_idx], xs[val_idx], y[val_idx]
    if optimizer == "lbfgs":
        params, iters = _lbfgs(params, xt, yt, xv, yv, weight_decay, max_iter, patience)
    else:
        params, iters = _adam(params, xt, yt, xv, yv, weight_decay, max_iter, patience, rng)
    layers = tuple((params[2 * i], params[2 * i + 1]) for i in range(len(params) // 2))
    head = Head(layers, mean, scale, channel_axis)
    train_acc = float((_predict(params, xt).argmax(1) == yt).mean())
    val_acc = float((_predict(params, xv).argmax(1) == yv).mean())
    val_loss = _loss_grad(params, xv, yv, 0.0, need_grad=False)[0]
    majority = float((yv == np.bincount(yt, minlength=classes).argmax()).mean())
    return TrainResult(head, optimizer, iters, train_acc, val_acc, val_loss, majority,
                       len(tr_idx), len(val_idx), time.perf_counter() - t0)
