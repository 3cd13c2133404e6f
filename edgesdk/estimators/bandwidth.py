"""Uplink bandwidth: a size-aware model (a per-message overhead plus bytes / rate) fitted
robustly over a recent window, with its spread and a low-quantile forecast (LinkModel)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ..errors import PolicyError
from ._common import _NORMAL, Estimate, _check_finite, _check_positive


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
_LOG1_5 = math.log(1.5)
BOUND_DECREASE = 0.5  # a further timeout under a regime of bounds (observe_timeout)


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
    - `overhead_carried`: the overhead is carried over and no upload of this regime has
      shown it (one mostly overhead at the carried value, see observe_transfer): an
      estimate of the past, which exploring may doubt (policy.explore).

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
    overhead_carried: bool = False

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
      extrapolation of noise), the overhead is the last fitted one (up to a minute old;
      lowered by an upload that takes under half of it) over the current RTT floor, or
      zero: the floor alone.
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
        # is computed with, 1 for a rate sample, 1 while held (observe_transfer, busy)
        self._buf = np.zeros((8, w))
        self._line: tuple[int, int, float, float] | None = None  # regime, count, a, b
        self._count = 0
        self._regime = 0  # the first sequence number of the current regime
        self._newest = -math.inf
        self._floor = 0.0  # the RTT floor given with the newest transfer
        self._last_overhead: tuple[float, float] | None = None  # (ms over the floor, when)
        self._overhead_shown = -1  # the last upload that showed the carried overhead
        self._run: list[tuple[int, float]] = []  # consecutive deviating samples: seq, log rate
        self._run_up = False  # ...and their direction (True: slower than the model)
        self._bounded = False  # the current regime holds timeouts' bounds only
        self._fit: _Fit | None = None
        self._hist: tuple[int, tuple[float, ...]] | None = None  # (count, history())
        self._model: tuple[int, float, LinkModel] | None = None  # (count, now, model)

    # -- observing ------------------------------------------------------------------------
    def observe(self, mbps: float, now: float) -> None:
        """A rate sample measured some other way (an active probe, a trace)."""
        v = _check_positive("mbps", mbps)
        self._add(0.0, 0.0, v, _check_finite("now", now, -math.inf))

    def observe_transfer(self, payload_bytes: int, round_trip_ms: float, server_ms: float,
                         queue_ms: float, rtt_floor_ms: float, now: float, *,
                         busy: bool = False) -> float | None:
        """One sample from a reply. `rtt_floor_ms`: the RTT floor now (small messages),
        which the overhead is reported over. Returns the sample's implied rate in Mbit/s
        under the current overhead (None: under `min_wire_ms` on the network, or the
        server's times exceed the round trip: timer noise, not a measurement).

        busy: the device computed while the transfer was under way, so its own threads
        (the one that sends, ZeroMQ's, the one that reads the reply) waited for the CPU:
        the time is an upper bound on what the transfer takes with the device waiting for
        it, as an offload's does. On a device throttled to a quarter core, 64 KiB probes
        at 50 Mbit/s (10.5 ms on the wire) came back 1-50 ms late that way. Such a sample
        counts at once if it is faster than the model predicts. A slower one is held: it
        counts toward a change (stalls rarely agree on a rate, a step does), and in the fit
        only once a change starts at or before it (None until then). Not held, a device
        that computes while it probes reads its stalls as a slow link (held only beyond a
        change's margin, the stalls within it pulled the fit 1.2-1.7x slow). The price: the
        fit of busy samples leans to the link's fast side, so the caller says busy only
        when its CPU is starved (DeviceActivity), not whenever it computes."""
        b = _check_positive("payload_bytes", payload_bytes)
        rt = _check_finite("round_trip_ms", round_trip_ms)
        net = rt - _check_finite("server_ms", server_ms) - _check_finite("queue_ms", queue_ms)
        floor = _check_finite("rtt_floor_ms", rtt_floor_ms)
        t = _check_finite("now", now, -math.inf)
        if net < self._min_wire:
            return None
        x = b * 8e-3
        fit = self._reference() if busy else None
        held = fit is not None and net >= fit.intercept_ms + x / math.exp(fit.log_rate)
        self._floor = floor
        carried = self._carried_overhead(self._newest)
        if carried and self._fit is not None and not self._fit.fitted:
            beyond = net - floor
            if beyond < 0.5 * carried:
                # An upload done in under half the carried overhead: that overhead is
                # stale (fitted in another regime: a server under a load spike answered
                # every probe 10 ms late), and an overestimate never corrects itself (no
                # offload then pays, so none measures it). It is lowered to what this
                # upload left for it at the current rate. (Half: the fit's intercept
                # includes the usual RTT jitter above the floor, which a lucky small
                # upload beats.)
                wire = x / math.exp(self._fit.log_rate)
                self._last_overhead = (max(beyond - wire, 0.0), t)
                self._overhead_shown = self._count
            elif beyond <= 2.0 * carried:
                self._overhead_shown = self._count  # mostly overhead, and about as carried
        rate = x / self._wire_ms(net, self._intercept_now())
        return None if self._add(x, net, 0.0, t, held) else rate

    def observe_timeout(self, payload_bytes: int, elapsed_ms: float, rtt_floor_ms: float,
                        now: float, *, ended: bool = False) -> float | None:
        """An upload of `payload_bytes` with no reply after `elapsed_ms`: the rate was below
        the returned bound. Counted at the bound if that is below the current rate (None:
        the bound says nothing the model does not already believe).

        A bound beyond a change's margin below the model, or below every rate its samples
        showed, starts a new regime at once.
        Bounds never agree on a rate the way measurements do (each says only "below"), so
        the usual `change_samples` in a row would keep the model at the old rate through
        as many lost uploads: on a stream whose link fell from 40 to 3 Mbit/s, offloads
        timed out for the whole 3 s of the slow phase while the model stayed at 43.
        - Under such a regime, a timeout whose bound is no lower halves the rate
          (BOUND_DECREASE): the model let an upload go that did not make it.
        - The first measurement replaces the regime (as the first reply replaces a server's
          timeout bound): the bounds were guesses from what did not arrive, and the usual
          change rule would keep them against a few measurements.

        ended: the upload is known to have ended by about `elapsed_ms` (a message queued
        behind it came back then), so the bound is close to the rate itself, not only
        above it. One above a regime of bounds replaces it (they guessed too low); one no
        lower than a measured model is no news (None); neither is a reason to decrease."""
        b = _check_positive("payload_bytes", payload_bytes)
        el = _check_finite("elapsed_ms", elapsed_ms)
        _check_finite("rtt_floor_ms", rtt_floor_ms)
        t = _check_finite("now", now, -math.inf)
        bound = b * 8e-3 / self._wire_ms(el, self._intercept_now())
        # compared with the model as it is now: bounds come in bursts (the offloads one
        # check blames), and the cached fit may predate the one before
        fit = self._fit = self._refit() if self._count else None
        current = math.exp(fit.log_rate) if fit is not None else self._prior
        if bound >= current * (1.0 - 1e-9):  # (the same upload again: equal but for rounding)
            if ended and self._bounded and bound > current * (1.0 + 1e-9):
                # it ended by then: the rate is about the bound, above the guesses before
                self._regime, self._run = self._count, []
                self._add(0.0, 0.0, bound, t, bound=True)
                return bound
            if ended or not self._bounded:
                return None
            # the model is a timeout's bound, and an upload it said would make it did not
            # (the planner offloads at a rate where a timeout is unlikely, not impossible):
            # the rate is lower still, by a multiplicative decrease as TCP's
            bound = current * BOUND_DECREASE
        # A change: beyond a change's margin below the model, or 1.5x below its samples'
        # low quantile. The second is for noisy samples, whose margin of 2.5 spreads is
        # none: three 3 kB uploads on loopback implied 3-470 Mbit/s (a spread of 2.6); a
        # check then dated two uploads at 0.09 Mbit/s, the bound joined their median, and
        # the rate stayed at 3.4 (CI, test_netem).
        if fit is not None and (math.log(current / bound) > max(_LOG1_5, 2.5 * fit.mad)
                                or math.log(bound) < fit.emp_low - _LOG1_5):
            self._regime, self._run, self._bounded = self._count, [], True
        self._add(0.0, 0.0, bound, t, bound=True)
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

    def _add(self, x: float, net: float, rate: float, now: float,
             held: bool = False, bound: bool = False) -> bool:
        """Keep a sample; `held`: out of the fit unless a change starts at or before it
        (see observe_transfer); `bound`: a timeout's (observe_timeout). Returns whether it
        stays held."""
        fit = self._reference() if self._count >= 2 else None
        # a measurement replaces the bounds, unless it is mostly the fixed cost (its rate
        # then is noise; it joins them)
        if self._bounded and not (held or bound) and (
                x <= 0 or net >= 1.5 * self._intercept_now()):
            self._regime, self._run, self._bounded, fit = self._count, [], False, None
        # (a held sample is judged against a fit of one, or none could ever leave it)
        if fit is not None and (fit.n >= 2 or held) and self._detect_change(fit, x, net, rate,
                                                                            held):
            held = False
            self._bounded = self._bounded and bound  # measurements started this regime
            buf = self._buf
            buf[7, buf[0] >= self._regime] = 0.0  # the change's held samples count now
        lb = max(0.05 * net, self._min_wire, 1e-6) if x > 0 else 1.0
        self._buf[:, self._count % self._w] = (self._count, x, net, rate, now, lb, x <= 0,
                                               held)
        self._count += 1
        if not held:  # a held sample does not refresh the model's age: it may be a stall
            self._newest = max(self._newest, now)
        return held

    def _detect_change(self, fit: _Fit, x: float, net: float, rate: float,
                       held: bool = False) -> bool:
        """Track consecutive samples that deviate from `fit` in one direction (beyond
        max(1.5x, 2.5 spreads); positive: slower). When the last `change_samples` of them
        also agree with each other (each within 0.3 of their distance from the model, and
        within 2x, in log rate), the regime starts at the first of them. Scheduler stalls
        inflate samples by amounts unrelated to the link: three in a row rarely agree on
        one rate, a step does. An upload that spent less than half the fixed cost on the
        wire and does not deviate leaves the count as it is. A held sample (a busy one,
        slower than the model) ends a change only as the last of twice as many: on a
        throttled device three stalled probes in a row agree on a rate often enough.
        True if a change starts."""
        r = math.exp(fit.log_rate)
        if x > 0:
            d = math.log(net / (fit.intercept_ms + x / r))
            lr = math.log(x / max(net - fit.intercept_ms, 0.05 * net, self._min_wire, 1e-6))
        else:
            d, lr = math.log(r / rate), math.log(rate)
        if abs(d) <= max(_LOG1_5, 2.5 * fit.mad):
            # an upload mostly overhead hides a change of rate: it neither ends nor extends
            if x <= 0 or x / r >= 0.5 * fit.intercept_ms:
                self._run = []
            return False
        up = d > 0
        if not (self._run and up == self._run_up):
            self._run, self._run_up = [], up
        self._run.append((self._count, lr))
        need = 2 * self._change if held else self._change
        if len(self._run) >= need:
            last = self._run[-need:]
            c = sorted(v for _, v in last)[len(last) // 2]
            if max(abs(v - c) for _, v in last) <= min(0.3 * abs(c - fit.log_rate), _LOG2):
                self._regime, self._run = last[0][0], []
                return True
        return False

    # -- reading --------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Samples kept (all regimes, held or not, at most `window`)."""
        return min(self._count, self._w)

    @property
    def counted(self) -> int:
        """Samples kept that are not held (see observe_transfer)."""
        n = min(self._count, self._w)
        return n - int(np.count_nonzero(self._buf[7, :n]))

    def _refit(self) -> _Fit:
        """Fit the current regime (see the class docstring): numpy, a few dozen calls on at
        most `window` samples (pure Python was slower, all n^2 / 2 pairs slower still)."""
        n_kept = min(self._count, self._w)
        buf = self._buf[:, :n_kept]
        act = buf[:, (buf[0] >= self._regime) & (buf[7] == 0)]
        if act.shape[1] == 0:
            # Held samples only since the regime's counted ones left the window: they say
            # nothing the last fit does not; it stands, ageing (the first sample is never
            # held, so there is one)
            return replace(self._fit, count=self._count)
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
        """The last k counted (not held) samples' implied rates, oldest first (across
        regimes)."""
        cols = self._buf[:, [s % self._w for s in range(max(self._count - self._w, 0),
                                                         self._count)]].T.tolist()
        return tuple(x / max(t - intercept, lb) if x > 0.0 else r
                     for _, x, t, r, _, lb, _, held in cols if not held)[-self._k:]

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
            carried = (not fit.fitted and fit.overhead_ms > 0
                       and self._overhead_shown < self._regime)
            model = LinkModel(rate, s, rate * s, fit.overhead_ms, fit.rtt_ms, math.exp(low),
                              fit.n, fit.n_eff, age, fit.fitted, carried)
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
        """The last k counted samples' implied rates (Mbit/s) under the current overhead,
        oldest first, across regimes (held ones are left out: see observe_transfer)."""
        if self._count == 0:
            return []
        if self._fit is None or self._fit.count != self._count:
            self._fit = self._refit()
        if self._hist is None or self._hist[0] != self._count:
            self._hist = (self._count, self._history(self._fit.intercept_ms))
        return list(self._hist[1])
