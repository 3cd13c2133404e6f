"""A small timing harness for microbenchmarks on shared, noisy machines.

    timings = time_interleaved({"memcpy": copy, "qpack": qpack}, rounds=31)
    timings["qpack"].stats().median          # seconds per call
    ratio(timings["qpack"], timings["memcpy"])  # Stats of the per-round ratio

Method. Each callable is first calibrated: it is called in batches of 1, 2, 4, ... calls
until one batch lasts at least `min_time` (this also warms caches and allocators). Then, in
each of `rounds` rounds, every callable runs one batch, round-robin, with the starting
callable rotated from round to round so that none always follows the same neighbour. A round
gives one per-call time per callable (batch time / batch size). Because all callables are
timed within each round, a ratio between two of them is computed per round and then
summarised: a burst of load from another process inflates both sides of the same round and
largely cancels, which comparing two separately measured medians would not do.

Summaries quote the median and a distribution-free confidence interval of the median from
order statistics (exact binomial ranks; no resampling, so results are reproducible), plus
the interquartile range as a measure of spread. With fewer than 6 rounds no pair of ranks
reaches 95 % coverage; the interval is then the full range and `level` says what it covers.

Timings include the Python call overhead (about 0.1 us per call with functools.partial),
which is the same for every callable and matters only for the smallest tensors. Garbage
collection is disabled while a batch runs, as timeit does.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._table import format_table  # the one table of edgesdk, re-exported for the benchmarks

__all__ = [
    "Stats",
    "as_json",
    "Timing",
    "calibrate",
    "format_table",
    "pm",
    "ratio",
    "summarize",
    "time_interleaved",
]


@dataclass(frozen=True)
class Stats:
    """Summary of repeated measurements: median, confidence interval of the median, IQR."""

    median: float
    low: float  # confidence interval of the median
    high: float
    q1: float  # interquartile range
    q3: float
    n: int  # number of samples (rounds)
    level: float  # actual coverage of [low, high]

    @property
    def half_width(self) -> float:
        """Half the width of the confidence interval, for `median ± half_width`."""
        return (self.high - self.low) / 2

    def scaled(self, factor: float) -> Stats:
        """The same summary in other units, e.g. scaled(1e6) for microseconds."""
        f = factor
        return Stats(self.median * f, self.low * f, self.high * f, self.q1 * f, self.q3 * f,
                     self.n, self.level)

    def as_dict(self, digits: int = 4) -> dict:
        """JSON-ready: values rounded to `digits` significant digits."""

        def r(v: float) -> float:
            return float(f"{v:.{digits}g}")

        return {"median": r(self.median), "ci_low": r(self.low), "ci_high": r(self.high),
                "ci_level": round(self.level, 3), "q1": r(self.q1), "q3": r(self.q3),
                "n": self.n}


def _median_ci_rank(n: int, level: float) -> tuple[int, float]:
    """The rank j (1-based) such that [x_(j), x_(n+1-j)] covers the median with probability
    at least `level` (largest such j; 1 if none), and that coverage. The number of samples
    below the median is Binomial(n, 1/2), so the coverage is 1 - 2 P(B <= j - 1)."""
    j, tail = 1, 1 / 2.0**n  # tail = P(B <= j - 1)
    while j + 1 <= (n + 1) / 2:
        next_tail = tail + math.comb(n, j) / 2.0**n
        if 1 - 2 * next_tail < level:
            break
        j, tail = j + 1, next_tail
    return j, 1 - 2 * tail


def summarize(samples: Sequence[float] | np.ndarray, level: float = 0.95) -> Stats:
    """Median, `level` confidence interval of the median and quartiles of `samples`."""
    x = np.sort(np.asarray(samples, dtype=np.float64))
    n = x.size
    if n == 0:
        raise ValueError("no samples to summarize")
    j, coverage = _median_ci_rank(n, level)
    q1, med, q3 = np.percentile(x, [25, 50, 75])
    return Stats(float(med), float(x[j - 1]), float(x[n - j]), float(q1), float(q3), n,
                 coverage)


@dataclass
class Timing:
    """Per-call times (seconds) of one callable, one value per round."""

    name: str
    per_call: np.ndarray
    batch: int  # calls per timed batch

    def stats(self, level: float = 0.95) -> Stats:
        return summarize(self.per_call, level)


def ratio(a: Timing, b: Timing, level: float = 0.95) -> Stats:
    """Summary of a / b computed round by round (both must come from one time_interleaved
    run). Use it for "x times memcpy" and "speedup" figures."""
    if a.per_call.shape != b.per_call.shape:
        raise ValueError(f"{a.name} and {b.name} were not timed in the same rounds")
    return summarize(a.per_call / b.per_call, level)


def _run_batch(fn: Callable[[], object], calls: int) -> float:
    """Seconds that `calls` consecutive calls of fn take, with gc off."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        t1 = time.perf_counter_ns()
    finally:
        if gc_was_enabled:
            gc.enable()
    return (t1 - t0) * 1e-9


def calibrate(fn: Callable[[], object], min_time: float = 2e-3) -> int:
    """Smallest power of two of calls that lasts at least min_time seconds."""
    fn()  # warm-up: first-call costs (allocation, lazy imports) are not what we measure
    calls = 1
    while _run_batch(fn, calls) < min_time and calls < 1 << 30:
        calls *= 2
    return calls


def time_interleaved(
    cases: Mapping[str, Callable[[], object]],
    rounds: int = 31,
    min_time: float = 2e-3,
    setups: Mapping[str, Callable[[], object]] | None = None,
) -> dict[str, Timing]:
    """Time each callable of `cases` in `rounds` interleaved rounds (see the module doc).

    setups: optional callables run (untimed) before each batch of the case with the same
    name, e.g. to switch a global setting such as the kernel ISA.
    """
    if rounds < 1:
        raise ValueError(f"rounds is {rounds}, expected >= 1")
    setups = setups or {}
    names = list(cases)
    batch = {}
    for name in names:
        if name in setups:
            setups[name]()
        batch[name] = calibrate(cases[name], min_time)
    per_call = {name: np.empty(rounds) for name in names}
    for r in range(rounds):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            if name in setups:
                setups[name]()
            per_call[name][r] = _run_batch(cases[name], batch[name]) / batch[name]
    return {name: Timing(name, per_call[name], batch[name]) for name in names}


def pm(s: Stats | None, digits: int = 1) -> str:
    """`median ±half-width` with `digits` decimals; "n/a" for None."""
    if s is None:
        return "n/a"
    return f"{s.median:.{digits}f} ±{s.half_width:.{digits}f}"


def as_json(obj: Any) -> Any:
    """A report made JSON-ready: Stats as their dicts (Stats.as_dict), numpy scalars as
    numbers, floats to 6 significant digits, through dicts, lists and tuples."""
    if isinstance(obj, Stats):
        return obj.as_dict()
    if isinstance(obj, dict):
        return {k: as_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [as_json(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return float(f"{obj:.6g}")
    return obj
