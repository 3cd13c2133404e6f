"""Live estimators of the device-edge link, the device and the server: what the engine and
the policy read. They are passive (fed from real traffic) and tell the caller when an active
probe is worth sending.

    link = LinkEstimator()
    link.on_reply(payload_bytes, round_trip_ms, server_ms, queue_ms, now)   # each reply
    link.on_small_message(rtt_ms, now)                                      # heartbeats
    m = link.model(now)       # LinkModel: rate_mbps, log_spread, overhead_ms, low_mbps, ...
    m.transfer_ms(50_000)     # overhead + wire time of a 50 kB upload (add the RTT floor)

The link model is size-aware: a request's network time is ``rtt + overhead + bytes / rate``.
Dividing bytes by the whole time (or by the time less the RTT alone) makes a small upload
look slow (the fixed cost dominates it) or absurdly fast (the cost was over-subtracted):
samples swung between 4 and 340 Mbit/s on a 50 Mbit/s link. So the fixed cost and the
rate are fitted together, robustly, over a recent window (BandwidthEstimator), with an
honest spread and a low-quantile forecast (LinkModel). The device's slowdown against its
profile is a median of recent ratios, not a mean, so that scheduler stalls on a CPU-quota
throttled device do not inflate every plan (SlowdownEstimator, DeviceModel).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from .errors import PolicyError

__all__ = [
    "BandwidthEstimator",
    "DeviceModel",
    "Estimate",
    "LinkEstimator",
    "LinkModel",
    "RttEstimator",
    "ServerLoadEstimator",
    "SlowdownEstimator",
]

_NORMAL = NormalDist()


@dataclass(frozen=True)
class Estimate:
    """A live estimate: `value` with its standard deviation `std`, from `n` samples, the
    newest `age_s` seconds old (inf: never observed; `value` is then the prior)."""

    value: float
    std: float
    n: int
    age_s: float


def _check_finite(name: str, value: float, minimum: float = 0.0) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PolicyError(f"{name} is {value!r}, expected a finite number >= {minimum}"
                          ) from None
    if not math.isfinite(v) or v < minimum:
        raise PolicyError(f"{name} is {value!r}, expected a finite number >= {minimum}")
    return v


def _check_positive(name: str, value: float) -> float:
    v = _check_finite(name, value)
    if v <= 0.0:
        raise PolicyError(f"{name} is {value!r}, expected a finite number > 0")
    return v


def _wquantiles(v: np.ndarray, w: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """Weighted quantiles of v: for each q, the smallest value whose cumulative weight
    reaches q of the total (the weighted median at q = 0.5)."""
    o = v.argsort()
    cw = w[o].cumsum()
    return v[o[cw.searchsorted(qs * cw[-1])]]  # q <= 0.5: never past the end


def _theil_sen(x: np.ndarray, t: np.ndarray, w: np.ndarray) -> tuple[float, float] | None:
    """(intercept, slope) of t against x, or None if the sizes do not differ enough or the
    slope is not positive. Theil's incomplete method: sorted by x, the i-th smallest is
    paired with the i-th of the larger half; the slope is the weighted median of those
    pairs' slopes (weights: both samples' recency, and the pair's relative size gap: alike
    sizes say little about the slope; pairs under 20% apart are left out), the intercept
    the weighted median of t - slope * x. A stall spoils one pair of n / 2; all n^2 / 2
    pairs cost several times more for little gain on 32 samples."""
    o = x.argsort()
    h = (len(o) + 1) // 2
    i, j = o[: len(o) - h], o[h:]  # the middle one sits out when n is odd
    xi, xj = x[i], x[j]
    gap = 1.0 - xi / xj
    ok = gap >= 0.2
    if not ok.any():
        return None
    i, j, gap = i[ok], j[ok], gap[ok]
    b = float(_wquantiles((t[j] - t[i]) / (x[j] - x[i]), w[i] * w[j] * gap, _HALF)[0])
    if b <= 0.0:
        return None
    return float(_wquantiles(t - b * x, w, _HALF)[0]), b


_HALF = np.array([0.5])
_LOG2 = math.log(2.0)
_LOG_1_2 = math.log(1.2)


class RttEstimator:
    """Round-trip time of the link from small messages (heartbeats, hello, tiny replies).

    `floor_ms` is the minimum over the last `window` samples (propagation plus fixed
    overhead: what a transfer's time is corrected by); `value` is a TCP-style smoothed RTT
    (EWMA, gain 1/8) and `std` its mean deviation (gain 1/4).

        rtt = RttEstimator(); rtt.observe(2.1, now=0.0); rtt.estimate(now=1.0).value
    """

    def __init__(self, window: int = 32, prior_ms: float = 20.0) -> None:
        self._recent: deque[float] = deque(maxlen=window)
        self._srtt: float | None = None
        self._rttvar = prior_ms / 2
        self._prior = prior_ms
        self._last: float | None = None

    def observe(self, rtt_ms: float, now: float) -> None:
        r = _check_finite("rtt_ms", rtt_ms)
        self._recent.append(r)
        if self._srtt is None:
            self._srtt, self._rttvar = r, r / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - r)
            self._srtt = 0.875 * self._srtt + 0.125 * r
        self._last = float(now)

    @property
    def floor_ms(self) -> float:
        return min(self._recent) if self._recent else 0.0

    def estimate(self, now: float) -> Estimate:
        if self._srtt is None:
            return Estimate(self._prior, self._prior, 0, math.inf)
        return Estimate(self._srtt, self._rttvar, len(self._recent), now - self._last)


@dataclass(frozen=True)
class LinkModel:
    """The uplink as a decision needs it: a request of `nbytes` spends ``rtt_ms +
    overhead_ms + nbytes * 8 / (rate_mbps * 1e3)`` ms on the network, and the rate is
    lognormal around `rate_mbps` with `log_spread`.

    - `rate_mbps`: the median rate at which bytes beyond the fixed cost flow.
    - `log_spread`: the predictive spread of log(rate) for the next transfer: the robust
      spread of recent samples, widened when they are few (a prior of 0.5 worth one sample)
      or old (a random walk of 0.1 per square-root second since the newest).
    - `rate_std`: ``rate_mbps * log_spread`` (what the planner's `bw_std` means).
    - `overhead_ms`: the fixed cost of one message beyond the RTT floor (framing, syscalls,
      the broker's hop); `rtt_ms`: that floor. Their sum is the fitted intercept.
    - `low_mbps`: a pessimistic forecast, the `low_quantile` (10th percentile) of the rate
      over the next seconds: the recent samples' quantile, blended toward the lognormal's
      as they get fewer or older; never above `rate_mbps`.
    - `n`: samples in the current regime (since the last detected change); `n_eff`: their
      effective number (recency-weighted, and discounted for uploads dominated by the
      fixed cost, which say little about the rate); `age_s`: age of the newest (inf: none,
      the model is then the prior).
    - `fitted`: True if the overhead comes from uploads of different sizes in this regime;
      False if it is carried over from an earlier fit (up to a minute) or is zero.

        m = bw.model(now); m.transfer_ms(50_000, quantile=0.9)   # a pessimistic upload
    """

    rate_mbps: float
    log_spread: float
    rate_std: float
    overhead_ms: float
    rtt_ms: float
    low_mbps: float
    n: int
    n_eff: float
    age_s: float
    fitted: bool

    def transfer_ms(self, nbytes: float, quantile: float = 0.5) -> float:
        """Overhead plus wire time of an upload of `nbytes`, at the `quantile` of its
        lognormal time (0.9: slower than 9 in 10 transfers). Add `rtt_ms` for the whole
        network time of a request."""
        b = _check_finite("nbytes", nbytes)
        q = float(quantile)
        if not 0.0 < q < 1.0:
            raise PolicyError(f"quantile is {quantile!r}, expected 0 < q < 1")
        z = 0.0 if q == 0.5 else _NORMAL.inv_cdf(q)
        rate = self.rate_mbps * math.exp(-z * self.log_spread)
        return self.overhead_ms + b * 8.0 / (rate * 1e3)


@dataclass(frozen=True)
class _Fit:
    """The cached fit of one window (see BandwidthEstimator._refit)."""

    count: int  # samples observed when it was made
    intercept_ms: float  # rtt + overhead, the whole fixed time
    overhead_ms: float
    rtt_ms: float
    log_rate: float
    mad: float  # raw robust spread of the samples' log rates (no prior, no age)
    spread: float  # predictive spread before ageing
    emp_low: float  # log of the samples' low quantile
    n: int
    n_eff: float
    newest: float
    fitted: bool


class BandwidthEstimator:
    """Uplink rate and per-message overhead from real transfers, passively.

    A transfer of `payload_bytes` whose reply came `round_trip_ms` after the send spent
    ``round_trip_ms - server_ms - queue_ms`` on the network: ``rtt + overhead + bits /
    rate``. Over the current regime's samples (at most `window`, each weighted by
    recency with `half_life_s`):

    - the intercept (rtt + overhead) and slope (1 / rate) come from a robust line
      (`_overhead_line`: Theil's pairwise-slope median, refitted without the samples it
      finds stalled, the intercept kept between the RTT floor and the fastest upload): a
      stalled sample, even inflated 5x, moves a median little where it drags a mean or a
      least-squares line. It is refitted every 4th sample (the overhead changes slowly).
      When the sizes do not differ (a fixed plan sends one size), or the link is so slow
      that even the smallest upload is mostly wire time (the intercept would be an
      extrapolation of noise), the overhead is the last fitted one (up to a minute old)
      over the current RTT floor, or zero: the floor alone.
    - the rate is then the weighted median of each sample's implied rate ``bits / (time -
      intercept)``, weighted also by the share of its time spent on the wire: a 2 kB
      upload is mostly overhead, and its implied rate mostly noise.
    - the spread of log(rate) is 1.4826 x the weighted median absolute deviation; see
      LinkModel for how few or old samples widen it and for the low quantile.
    - a change: when `change_samples` consecutive samples deviate from the model beyond
      max(1.5x, 2.5 spreads) in one direction and agree on a new rate, the older samples
      are dropped, so a step (50 -> 2 Mbit/s) is followed after `change_samples` samples,
      not after half a window; isolated stalls are not a change (see `_detect_change`).

    A timed-out upload is a censored sample (the rate was below bits / elapsed): it counts
    at that bound when the bound is below the current rate, and is uninformative otherwise.
    Rate samples measured some other way (`observe`) join the median as they are. The fit
    is cached and redone on the first read after an observation (an observation costs a
    few microseconds, the read after it ~15-30, a cached read well under one).

        bw = BandwidthEstimator()
        bw.observe_transfer(125_000, round_trip_ms=110, server_ms=5, queue_ms=0,
                            rtt_floor_ms=5, now=0.0)     # 1 Mbit in 100 ms: 10 Mbit/s
        bw.model(now=0.5).rate_mbps                     # 10.0
        bw.estimate(now=0.5).value                      # the same, as an Estimate
    """

    PRIOR_SPREAD = 0.5  # log-rate spread assumed before any sample, worth PRIOR_N samples
    PRIOR_N = 1.0
    DRIFT = 0.1  # log-rate random walk per sqrt(second) since the newest sample
    LOW_PRIOR_N = 4.0  # samples before the empirical low quantile outweighs the lognormal's
    OVERHEAD_TTL_S = 60.0  # how long a fitted overhead is carried over to a same-size window

    def __init__(self, k: int = 5, prior_mbps: float = 5.0, min_wire_ms: float = 0.05, *,
                 window: int = 32, half_life_s: float = 5.0, change_samples: int = 3,
                 low_quantile: float = 0.1) -> None:
        if not isinstance(k, int) or k < 1:
            raise PolicyError(f"k is {k!r}, expected an int >= 1")
        if not isinstance(window, int) or window < 2:
            raise PolicyError(f"window is {window!r}, expected an int >= 2")
        if not isinstance(change_samples, int) or change_samples < 2:
            raise PolicyError(f"change_samples is {change_samples!r}, expected an int >= 2")
        if not 0.0 < low_quantile < 0.5:
            raise PolicyError(f"low_quantile is {low_quantile!r}, expected 0 < q < 0.5")
        self._k = k
        self._prior = _check_positive("prior_mbps", prior_mbps)
        self._min_wire = _check_finite("min_wire_ms", min_wire_ms)
        self._half_life = _check_positive("half_life_s", half_life_s)
        self._change = change_samples
        self._q_low = float(low_quantile)
        self._z_low = -_NORMAL.inv_cdf(low_quantile)
        self._qs = np.array([self._q_low, 0.5])
        w = max(window, k)
        self._w = w
        # one column per sample: seq, kbit of a transfer (0: a rate sample), its network
        # ms, Mbit/s of a rate sample (0: a transfer), when, the least wire time its rate
        # is computed with, 1 for a rate sample
        self._buf = np.zeros((7, w))
        self._line: tuple[int, int, float, float] | None = None  # regime, count, a, b
        self._count = 0
        self._regime = 0  # the first sequence number of the current regime
        self._newest = -math.inf
        self._floor = 0.0  # the RTT floor given with the newest transfer
        self._last_overhead: tuple[float, float] | None = None  # (ms over the floor, when)
        self._run: list[tuple[int, float]] = []  # consecutive deviating samples: seq, log rate
        self._run_up = False  # ...and their direction (True: slower than the model)
        self._fit: _Fit | None = None
        self._hist: tuple[int, tuple[float, ...]] | None = None  # (count, history())
        self._model: tuple[int, float, LinkModel] | None = None  # (count, now, model)

    # -- observing ------------------------------------------------------------------------
    def observe(self, mbps: float, now: float) -> None:
        """A rate sample measured some other way (an active probe, a trace)."""
        v = _check_positive("mbps", mbps)
        self._add(0.0, 0.0, v, _check_finite("now", now, -math.inf))

    def observe_transfer(self, payload_bytes: int, round_trip_ms: float, server_ms: float,
                         queue_ms: float, rtt_floor_ms: float, now: float) -> float | None:
        """One sample from a reply. `rtt_floor_ms`: the RTT floor now (small messages),
        which the overhead is reported over. Returns the sample's implied rate in Mbit/s
        under the current overhead (None: under `min_wire_ms` on the network, or the
        server's times exceed the round trip: timer noise, not a measurement)."""
        b = _check_positive("payload_bytes", payload_bytes)
        rt = _check_finite("round_trip_ms", round_trip_ms)
        net = rt - _check_finite("server_ms", server_ms) - _check_finite("queue_ms", queue_ms)
        floor = _check_finite("rtt_floor_ms", rtt_floor_ms)
        t = _check_finite("now", now, -math.inf)
        if net < self._min_wire:
            return None
        self._floor = floor
        x = b * 8e-3
        rate = x / self._wire_ms(net, self._intercept_now())
        self._add(x, net, 0.0, t)
        return rate

    def observe_timeout(self, payload_bytes: int, elapsed_ms: float, rtt_floor_ms: float,
                        now: float) -> float | None:
        """An upload of `payload_bytes` with no reply after `elapsed_ms`: the rate was below
        the returned bound. Counted at the bound if that is below the current rate (None:
        the bound says nothing the model does not already believe)."""
        b = _check_positive("payload_bytes", payload_bytes)
        el = _check_finite("elapsed_ms", elapsed_ms)
        _check_finite("rtt_floor_ms", rtt_floor_ms)
        t = _check_finite("now", now, -math.inf)
        bound = b * 8e-3 / self._wire_ms(el, self._intercept_now())
        fit = self._reference()
        current = math.exp(fit.log_rate) if fit is not None else self._prior
        if bound >= current:
            return None
        self._add(0.0, 0.0, bound, t)
        return bound

    def _wire_ms(self, net_ms: float, intercept_ms: float) -> float:
        """A sample's time on the wire: at least 5% of its network time, so one that beat
        the fitted overhead claims a high rate rather than an infinite one."""
        return max(net_ms - intercept_ms, 0.05 * net_ms, self._min_wire, 1e-6)

    def _intercept_now(self) -> float:
        if self._fit is not None and self._fit.fitted:
            return self._fit.intercept_ms
        return self._floor + self._carried_overhead(self._newest)

    def _carried_overhead(self, now: float) -> float:
        last = self._last_overhead
        if last is None or now - last[1] > self.OVERHEAD_TTL_S:
            return 0.0
        return last[0]

    def _reference(self) -> _Fit | None:
        """The fit a new sample is compared with: the cached one, redone first if more than
        one sample arrived since (a caller that observes many samples between reads)."""
        if self._count == 0:
            return None
        if self._fit is None or self._count - self._fit.count > 1:
            self._fit = self._refit()
        return self._fit

    def _add(self, x: float, net: float, rate: float, now: float) -> None:
        fit = self._reference() if self._count >= 2 else None
        if fit is not None and fit.n >= 2:
            self._detect_change(fit, x, net, rate)
        lb = max(0.05 * net, self._min_wire, 1e-6) if x > 0 else 1.0
        self._buf[:, self._count % self._w] = (self._count, x, net, rate, now, lb, x <= 0)
        self._count += 1
        self._newest = max(self._newest, now)

    def _detect_change(self, fit: _Fit, x: float, net: float, rate: float) -> None:
        """Track consecutive samples that deviate from `fit` in one direction (beyond
        max(1.5x, 2.5 spreads); positive: slower). When the last `change_samples` of them
        also agree with each other (each within 0.3 of their distance from the model, and
        within 2x, in log rate), the regime starts at the first of them. Scheduler stalls
        inflate samples by amounts unrelated to the link: three in a row rarely agree on
        one rate, a step does. An upload that spent less than half the fixed cost on the
        wire and does not deviate leaves the count as it is."""
        r = math.exp(fit.log_rate)
        if x > 0:
            d = math.log(net / (fit.intercept_ms + x / r))
            lr = math.log(x / max(net - fit.intercept_ms, 0.05 * net, self._min_wire, 1e-6))
        else:
            d, lr = math.log(r / rate), math.log(rate)
        if abs(d) <= max(math.log(1.5), 2.5 * fit.mad):
            # an upload mostly overhead hides a change of rate: it neither ends nor extends
            if x <= 0 or x / r >= 0.5 * fit.intercept_ms:
                self._run = []
            return
        up = d > 0
        if not (self._run and up == self._run_up):
            self._run, self._run_up = [], up
        self._run.append((self._count, lr))
        if len(self._run) >= self._change:
            last = self._run[-self._change:]
            c = sorted(v for _, v in last)[len(last) // 2]
            if max(abs(v - c) for _, v in last) <= min(0.3 * abs(c - fit.log_rate), _LOG2):
                self._regime, self._run = last[0][0], []

    # -- reading --------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Samples kept (all regimes, at most `window`)."""
        return min(self._count, self._w)

    def _refit(self) -> _Fit:
        """Fit the current regime (see the class docstring): numpy, a few dozen calls on at
        most `window` samples (pure Python was slower, all n^2 / 2 pairs slower still)."""
        n_kept = min(self._count, self._w)
        buf = self._buf[:, :n_kept]
        oldest = self._count - n_kept
        act = buf if self._regime <= oldest else buf[:, buf[0] >= self._regime]
        x, t = act[1], act[2]
        newest = self._newest
        w = np.exp2((act[4] - newest) * (1.0 / self._half_life))
        line = self._line
        # Refit the overhead every 4th sample (it changes slowly; the fit is the costly
        # part), at once in a new regime, and not while samples deviate: a change would
        # otherwise bend the line before it is detected.
        if line is None or line[0] != self._regime or (self._count - line[1] >= 4
                                                        and not self._run):
            line = self._line = (self._regime, self._count, *self._overhead_line(x, t, w))
        intercept, slope = line[2], line[3]
        fitted = slope > 0.0
        if fitted:
            self._last_overhead = (max(intercept - self._floor, 0.0), newest)
        else:
            intercept = self._floor + self._carried_overhead(newest)
        rates = x / np.maximum(t - intercept, act[5]) + act[3]  # one of the terms is 0
        lr = np.log(rates)
        prev = self._fit
        r0 = 1.0 / slope if fitted else (math.exp(prev.log_rate) if prev else float(
            np.median(rates)))
        # each sample weighs by recency and by the share of its time on the wire: a 2 kB
        # upload is mostly overhead, and its implied rate mostly noise
        wf = w * np.maximum(x / (x + (intercept * r0 + 1e-12)), act[6])
        emp_low, m = _wquantiles(lr, wf, self._qs).tolist()
        total = float(wf.sum())
        dev = np.abs(lr - m)
        mad = 1.4826 * float(_wquantiles(dev, wf, _HALF)[0])  # (an IQR breaks at 25%)
        if mad == 0.0:  # half the samples tie: the mean deviation still sees the rest
            mad = 1.2533 * float(wf @ dev) / total
        sw = float(w.sum())
        n_eff = sw * total / float(w @ w)
        s2 = (n_eff * mad * mad + self.PRIOR_N * self.PRIOR_SPREAD ** 2) / (n_eff + self.PRIOR_N)
        spread = math.sqrt(s2 * (1.0 + 1.0 / max(n_eff, 1e-3)))
        return _Fit(self._count, intercept, max(intercept - self._floor, 0.0), self._floor, m,
                    mad, spread, min(emp_low, m), act.shape[1], n_eff, newest, fitted)

    def _overhead_line(self, x: np.ndarray, t: np.ndarray, w: np.ndarray
                       ) -> tuple[float, float]:
        """(intercept ms, slope ms per kbit) of the transfers, or (0, 0) if there are too
        few or their sizes do not differ enough. A Theil-Sen fit, then again without the
        samples it finds stalled (a stall only ever adds time: more than 3 spreads of the
        fast side, and 30%, above the line), so that a stretch of stalls does not outvote
        the pairs. The intercept lies between the RTT floor and the fastest upload. (0, 0)
        too when the smallest upload spent over 3x the carried fixed cost on the wire: the
        extrapolation would be mostly noise."""
        tr = x > 0.0
        # after a change, a few samples fit the overhead badly: carry the last one for now
        if np.count_nonzero(tr) < (6 if self._carried_overhead(self._newest) else 3):
            return 0.0, 0.0
        xt, tt, wt = x[tr], t[tr], w[tr]
        line = _theil_sen(xt, tt, wt)
        if line is None:
            return 0.0, 0.0
        a, b = line
        e = np.log(tt / np.maximum(a + b * xt, 1e-9))
        es = np.sort(e)
        h = len(es) // 2
        med = float(es[h])
        cut = med + max(3.0 * 1.4826 * (med - float(es[h // 2])), 0.26)  # lower-half MAD
        keep = e <= cut
        if not keep.all() and np.count_nonzero(keep) >= 3:
            line = _theil_sen(xt[keep], tt[keep], wt[keep]) or line
            a, b = line
        a = min(max(a, self._floor), float(tt.min()))
        # On a slow link even the smallest upload is mostly wire time, and its noise swamps
        # the intercept extrapolated under it: keep the overhead fitted when it was visible.
        carried = self._carried_overhead(self._newest)
        if carried and b * float(xt.min()) > 3.0 * (self._floor + carried):
            return 0.0, 0.0
        return a, b

    def _history(self, intercept: float) -> tuple[float, ...]:
        """The last k samples' implied rates, oldest first (across regimes)."""
        cols = self._buf[:, [s % self._w for s in range(max(self._count - self._k, 0),
                                                         self._count)]].T.tolist()
        return tuple(x / max(t - intercept, lb) if x > 0.0 else r
                     for _, x, t, r, _, lb, _ in cols)

    def model(self, now: float) -> LinkModel:
        """The link model as of `now` (see LinkModel). Cheap: the fit is cached until the
        next observation; only the ageing is recomputed."""
        cached = self._model
        if cached is not None and cached[0] == self._count and cached[1] == now:
            return cached[2]
        _check_finite("now", now, -math.inf)
        if self._count == 0:
            s = 1.0
            low = self._prior * math.exp(-self._z_low * s)
            model = LinkModel(self._prior, s, self._prior * s, 0.0, self._floor, low, 0, 0.0,
                              math.inf, False)
        else:
            if self._fit is None or self._fit.count != self._count:
                self._fit = self._refit()
            fit = self._fit
            age = max(float(now) - fit.newest, 0.0)
            s = math.sqrt(fit.spread * fit.spread + self.DRIFT * self.DRIFT * age)
            lam = fit.n_eff / (fit.n_eff + self.LOW_PRIOR_N) * 2.0 ** (-age / self._half_life)
            low = min(lam * fit.emp_low + (1.0 - lam) * (fit.log_rate - self._z_low * s),
                      fit.log_rate)
            rate = math.exp(fit.log_rate)
            model = LinkModel(rate, s, rate * s, fit.overhead_ms, fit.rtt_ms, math.exp(low),
                              fit.n, fit.n_eff, age, fit.fitted)
        self._model = (self._count, now, model)
        return model

    def transfer_ms(self, nbytes: float, now: float, quantile: float = 0.5) -> float:
        """``model(now).transfer_ms(nbytes, quantile)``: overhead plus wire time."""
        return self.model(now).transfer_ms(nbytes, quantile)

    def estimate(self, now: float) -> Estimate:
        """The rate as an Estimate: (rate_mbps, rate_std, n, age_s) of `model(now)`; the
        prior with std = prior before any sample."""
        m = self.model(now)
        return Estimate(m.rate_mbps, m.rate_std, m.n, m.age_s)

    def history(self) -> list[float]:
        """The last k samples' implied rates (Mbit/s) under the current overhead, oldest
        first, across regimes."""
        if self._count == 0:
            return []
        if self._fit is None or self._fit.count != self._count:
            self._fit = self._refit()
        if self._hist is None or self._hist[0] != self._count:
            self._hist = (self._count, self._history(self._fit.intercept_ms))
        return list(self._hist[1])


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
        self._model: DeviceModel | None = None
        self._last: float | None = None

    def observe(self, segment: int, measured_ms: float, now: float | None = None) -> float:
        """One run of `segment` that took `measured_ms`; returns its ratio to the profile."""
        m = _check_finite("measured_ms", measured_ms)
        if not isinstance(segment, (int, np.integer)) or not 0 <= segment < len(self._ms):
            raise PolicyError(f"segment is {segment!r}, the profile has {len(self._ms)}")
        ref = self._ms[segment]
        ratio = max(m, 1e-6) / max(ref, 1e-6)
        if ref >= 1e-3:
            self._runs.append((math.log(ratio), m, ref))
            self._model = None
            if now is not None:
                self._last = _check_finite("now", now, -math.inf)
        return ratio

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


class ServerLoadEstimator:
    """Server queueing delay and speed from replies (`queue_ms`, `server_ms`), timeouts,
    and the `load` map of welcome and heartbeat messages (queue, workers, workers_busy).

    `queue_ms` is an EWMA of reply queue times; `slowdown` the EWMA of server_ms over the
    server's profiled time for the same work (1.0 when unknown); `utilization` the busy
    fraction of workers from the last load report.

    A timed-out offload is a censored sample: the server took at least what the budget
    left after the network (`observe_timeout`); it can only raise the slowdown. Without
    replies, the slowdown relaxes back towards 1 with a half-life of RELAX_S, so a server
    that was slow (or looked slow through timeouts) is tried again instead of being ruled
    out for good: with every offload timing out, no reply would ever correct it.
    """

    RELAX_S = 20.0

    def __init__(self, gain: float = 0.2) -> None:
        self._gain = gain
        self.queue_ms = 0.0
        self._slowdown = 1.0
        self._since = 0.0  # when _slowdown was last updated
        self.utilization = 0.0
        self.queue_length = 0
        self.n = 0

    def slowdown_at(self, now: float) -> float:
        """The slowdown, relaxed towards 1 for the time since the last sample."""
        age = max(now - self._since, 0.0)
        return 1.0 + (self._slowdown - 1.0) * 0.5 ** (age / self.RELAX_S)

    @property
    def slowdown(self) -> float:
        return self._slowdown

    def observe_reply(self, server_ms: float, queue_ms: float,
                      profiled_ms: float | None = None, now: float | None = None) -> None:
        s = _check_finite("server_ms", server_ms)
        q = _check_finite("queue_ms", queue_ms)
        g = self._gain if self.n else 1.0
        self.queue_ms += g * (q - self.queue_ms)
        if profiled_ms:
            current = self._slowdown if now is None else self.slowdown_at(now)
            self._slowdown = current + g * (max(s, 1e-6) / profiled_ms - current)
            self._since = self._since if now is None else float(now)
        self.n += 1

    def observe_timeout(self, at_least_ms: float, profiled_ms: float | None,
                        now: float) -> None:
        """An offload whose reply did not come although the server had `at_least_ms` for
        its queue and compute: raises the slowdown towards at_least_ms / profiled_ms."""
        if not profiled_ms or at_least_ms <= 0:
            return
        bound = _check_finite("at_least_ms", at_least_ms) / profiled_ms
        current = self.slowdown_at(now)
        if bound > current:
            self._slowdown = current + max(self._gain, 0.5) * (bound - current)
            self._since = float(now)

    def observe_load(self, load: Mapping[str, Any]) -> None:
        workers = max(int(load.get("workers_alive", load.get("workers", 1)) or 1), 1)
        busy = int(load.get("workers_busy", 0) or 0)
        self.utilization = min(busy / workers, 1.0)
        self.queue_length = int(load.get("queue", 0) or 0)


PROBE_BYTES = (64 * 1024, 1024 * 1024)  # bandwidth probe size bounds (above a tbf burst)
PROBE_MAX_S = 0.25  # ...but a probe that would take longer at the estimate is cut to this


def probe_bytes(mbps: float, turn: int) -> int:
    """The size of the `turn`-th bandwidth probe at an estimate of `mbps`: ~50 ms and ~20 ms
    worth in turn (uploads of two sizes let the estimator tell the per-message overhead
    from the rate; one size cannot), at least 64 KiB so that a token bucket's burst does not
    hide the rate, at most PROBE_MAX_S at the estimate."""
    target_s = 0.050 if turn % 2 == 0 else 0.020
    size = min(max(mbps * 1e6 / 8 * target_s, PROBE_BYTES[0]), PROBE_BYTES[1])
    return int(max(min(size, mbps * 1e6 / 8 * PROBE_MAX_S), 4096))


class LinkEstimator:
    """The estimators of one device-edge link together, plus the probing rule: probe
    actively only when no traffic has flowed for `idle_s` seconds.

        link = LinkEstimator()
        link.on_reply(payload_bytes=50_000, round_trip_ms=45, server_ms=3, queue_ms=1,
                      now=t)
        link.on_small_message(rtt_ms=4, now=t)         # heartbeats, hello/welcome
        link.on_timeout(payload_bytes=300_000, elapsed_ms=1000, now=t)  # a probe lost
        link.on_offload(failed=False)                  # each offload's outcome
        if link.should_probe(now): ...                 # send a probe, feed it back
        link.model(now)                                # the LinkModel

    `failures`: a decayed fraction of offloads that failed (each outcome multiplies it by
    0.8, a failure then adds 0.2), in 0..1.
    """

    def __init__(self, k: int = 5, idle_s: float = 5.0, small_bytes: int = 2048,
                 warm_samples: int = 3) -> None:
        self.bandwidth = BandwidthEstimator(k=k)
        self.warm_samples = min(warm_samples, k)
        self.rtt = RttEstimator()
        self.server = ServerLoadEstimator()
        self.idle_s = idle_s
        self.small_bytes = small_bytes
        self.failures = 0.0
        self._last_traffic = -math.inf

    def on_small_message(self, rtt_ms: float, now: float) -> None:
        self.rtt.observe(rtt_ms, now)
        self._last_traffic = float(now)

    def on_reply(self, payload_bytes: int, round_trip_ms: float, server_ms: float,
                 queue_ms: float, now: float, profiled_ms: float | None = None
                 ) -> float | None:
        """One reply; profiled_ms: the server's profiled time for the same work (tracks
        the server's slowdown). Returns the bandwidth sample, if the payload was large."""
        self.server.observe_reply(server_ms, queue_ms, profiled_ms, now)
        self._last_traffic = float(now)
        if payload_bytes <= self.small_bytes:  # small: it measures latency, not bandwidth
            self.rtt.observe(max(round_trip_ms - server_ms - queue_ms, 0.0), now)
            return None
        return self.bandwidth.observe_transfer(payload_bytes, round_trip_ms, server_ms,
                                               queue_ms, self.rtt.floor_ms, now)

    def on_timeout(self, payload_bytes: int, elapsed_ms: float, now: float) -> float | None:
        """An upload that got no reply within `elapsed_ms`: a censored bandwidth sample
        (see BandwidthEstimator.observe_timeout). Only for uploads whose time is all
        network (probes): an infer's also holds server compute and queueing. Not traffic
        for the probing rule (as before): while nothing comes back, probing goes on."""
        return self.bandwidth.observe_timeout(payload_bytes, elapsed_ms, self.rtt.floor_ms,
                                              now)

    def on_offload_timeout(self, payload_bytes: int, budget_ms: float,
                           profiled_ms: float | None, now: float) -> None:
        """An offload that got no reply within `budget_ms`: after the network's expected
        share (RTT floor + overhead + bytes at the rate), the server had the rest and did
        not answer; a censored sample of its slowdown (ServerLoadEstimator)."""
        network = self.rtt.floor_ms + self.bandwidth.transfer_ms(max(payload_bytes, 1), now)
        self.server.observe_timeout(budget_ms - network - self.server.queue_ms, profiled_ms,
                                    now)

    def on_offload(self, failed: bool) -> None:
        """One offload's outcome (a timeout, an unreachable server or a fallback: failed)."""
        self.failures = 0.8 * self.failures + (0.2 if failed else 0.0)

    def model(self, now: float) -> LinkModel:
        return self.bandwidth.model(now)

    def should_probe(self, now: float) -> bool:
        """True before `warm_samples` bandwidth samples (a cold start would plan on the
        prior, or on one sample of unknown spread, and plans that keep the work on the
        device bring no new samples) or after `idle_s` without traffic."""
        return (self.bandwidth.count < self.warm_samples
                or now - self._last_traffic >= self.idle_s)
