"""The device's slowdown against its profile: a median of recent ratios, robust to
scheduler stalls on a CPU-quota throttled device (SlowdownEstimator, DeviceModel)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import PolicyError
from ._common import Estimate, _check_finite

_LOG_1_2 = math.log(1.2)  # ratios within 1.2x of the typical one are never stalls
_SEGMENT_WINDOW = 8  # recent runs kept per segment (their median: stall-robust)


@dataclass(frozen=True)
class DeviceModel:
    """How this device runs against its stored profile, over the recent window.

    - `slowdown`: the typical measured / profiled ratio (the `quantile`, default the median,
      of recent ratios): what a run costs when no scheduler stall hits it. A CPU-quota
      throttled device stalls 1 ms in 4 at random; a mean of ratios would charge every
      frame for the few a stall hit.
    - `mean`: sum(measured) / sum(profiled) over the window: the long-run cost, stalls
      included (what a long local computation averages).
    - `high`: the 90th percentile of the ratio.
    - `stall_fraction`: the share of runs slower than the typical by more than 3 robust
      spreads of the stall-free side (and at least 20%); `stall_ms`: their mean extra time
      beyond ``slowdown * profiled``.
    - `log_spread`: 1.4826 x the median absolute deviation of log ratios; `n`: runs kept.
    """

    slowdown: float
    mean: float
    high: float
    stall_fraction: float
    stall_ms: float
    log_spread: float
    n: int


def _sorted_quantile(s: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of an ascending sequence (pure Python: for the 32 values
    of a window, faster than a numpy call)."""
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class SlowdownEstimator:
    """How much slower this device runs than its stored profile: measured segment time over
    profiled time, per run, summarised robustly over the last `window` runs (see
    DeviceModel). Segments profiled at under a microsecond are timer noise and not counted.

        slow = SlowdownEstimator(profile["segments"])
        slow.observe(segment=0, measured_ms=0.5)       # profiled 0.25 ms -> 2.0
        slow.estimate().value                          # the typical ratio (stall-free)
        slow.model().stall_fraction                    # how often a stall hit
    """

    def __init__(self, profile_segments: Sequence[Mapping[str, Any]], *, window: int = 32,
                 quantile: float = 0.5) -> None:
        self._ms = [_check_finite(f"profile_segments[{i}].median_ms", s["median_ms"])
                    for i, s in enumerate(profile_segments)]
        if not isinstance(window, int) or window < 1:
            raise PolicyError(f"window is {window!r}, expected an int >= 1")
        if not 0.0 < quantile < 1.0:
            raise PolicyError(f"quantile is {quantile!r}, expected 0 < q < 1")
        self._q = float(quantile)
        self._runs: deque[tuple[float, float, float]] = deque(maxlen=window)  # log, ms, ref
        # each segment's own recent times: where segments slow down unequally (a GEMM more
        # than a convolution, say), slowdown x profile misjudges a run of several of them
        self._seg_runs: list[deque[float]] = [deque(maxlen=_SEGMENT_WINDOW) for _ in self._ms]
        self._seg_median: list[float | None] = [None] * len(self._ms)  # of each window
        self._model: DeviceModel | None = None
        self._last: float | None = None

    def observe(self, segment: int, measured_ms: float, now: float | None = None, *,
                through: int | None = None, profiled_ms: float | None = None) -> float:
        """One run of `segment` (of segments `segment..through` run as one file, the whole
        model, whose own profiled time `profiled_ms` is the reference where known: it runs
        faster than the chain's sum) that took `measured_ms`; returns its ratio to the
        profile."""
        m = _check_finite("measured_ms", measured_ms)
        last = segment if through is None else through
        if not all(isinstance(i, (int, np.integer)) and 0 <= i < len(self._ms)
                   for i in (segment, last)) or last < segment:
            raise PolicyError(f"segments {segment!r}..{last!r}, the profile has "
                              f"{len(self._ms)}")
        ref = (_check_finite("profiled_ms", profiled_ms) if profiled_ms is not None
               else math.fsum(self._ms[segment:last + 1]))
        ratio = max(m, 1e-6) / max(ref, 1e-6)
        if through is None:
            recent = self._seg_runs[segment]
            recent.append(m)
            self._seg_median[segment] = _sorted_quantile(sorted(recent), 0.5)
        if ref >= 1e-3:
            self._runs.append((math.log(ratio), m, ref))
            self._model = None
            if now is not None:
                self._last = _check_finite("now", now, -math.inf)
        return ratio

    def segments_ms(self, first: int, last: int) -> float:
        """The expected time of segments first..last run one after another: per segment,
        the larger of its profile x the slowdown and the median of its own recent runs.
        The larger: a segment that last ran alone long ago (a tail runs only on a
        fallback) keeps old times, while the slowdown follows every run."""
        slowdown = self.model().slowdown
        total = 0.0
        for i in range(first, last + 1):
            scaled = self._ms[i] * slowdown
            own = self._seg_median[i]
            total += scaled if own is None or own < scaled else own
        return total

    def model(self) -> DeviceModel:
        """The summary of the window (cached until the next observation)."""
        if self._model is not None:
            return self._model
        runs = self._runs
        if not runs:
            self._model = DeviceModel(1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0)
            return self._model
        logs = sorted(r[0] for r in runs)
        n = len(logs)
        mid = _sorted_quantile(logs, 0.5)
        typ = _sorted_quantile(logs, self._q)
        spread = 1.4826 * _sorted_quantile(sorted(abs(v - mid) for v in logs), 0.5)
        below = [typ - v for v in logs if v <= typ][::-1]  # the stall-free side, ascending
        lo_spread = 1.4826 * _sorted_quantile(below, 0.5) if below else spread
        cut = typ + max(3.0 * lo_spread, _LOG_1_2)
        slowdown = math.exp(typ)
        extra = [ms - slowdown * ref for lg, ms, ref in runs if lg > cut]
        _, ms, ref = zip(*runs)
        self._model = DeviceModel(
            slowdown=slowdown, mean=sum(ms) / sum(ref), high=math.exp(
                _sorted_quantile(logs, 0.9)), stall_fraction=len(extra) / n,
            stall_ms=sum(extra) / len(extra) if extra else 0.0, log_spread=spread, n=n)
        return self._model

    def estimate(self, now: float | None = None) -> Estimate:
        """(slowdown, slowdown x log_spread, n, age): age 0 unless times were given."""
        m = self.model()
        if m.n == 0:
            return Estimate(1.0, 0.0, 0, math.inf)
        age = 0.0 if now is None or self._last is None else max(float(now) - self._last, 0.0)
        return Estimate(m.slowdown, m.slowdown * m.log_spread, m.n, age)
