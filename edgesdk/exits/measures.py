"""Confidence measures, temperature scaling and calibration error, in pure numpy.

    probs = softmax(logits, temperature=1.7)
    confidence(probs, "margin")                  # per row, in [0, 1], higher is surer

Confidence. Each measure maps class probabilities to [0, 1], higher meaning surer:
``max_prob`` (the top probability), ``margin`` (top-1 minus top-2 probability) and
``entropy`` (1 minus the entropy normalized by log(classes)). Probabilities are
``softmax(logits / T)`` with a temperature T fitted per exit on calibration data
(:func:`fit_temperature`: golden-section search on log T for the lowest NLL), reported with
its expected calibration error (:func:`ece`).

The validation helpers here (`_matrix`, `_targets`, ...) are shared by the cascade and the
heads: every bad array is an ExitError naming its shape, dtype or first bad sample.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import ExitError

MEASURES = ("max_prob", "margin", "entropy")

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


__all__ = ["MEASURES", "as_logits", "confidence", "ece", "fit_temperature", "log_softmax",
           "margin", "max_prob", "nll", "normalized_entropy", "softmax"]
