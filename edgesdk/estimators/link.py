"""The link's RTT, the server's load and speed, and LinkEstimator, which holds every
estimator of one device-edge link and the probing rule."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

from ._common import Estimate, _check_finite
from .bandwidth import BandwidthEstimator, LinkModel


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


class ServerLoadEstimator:
    """Server queueing delay and speed from replies (`queue_ms`, `server_ms`), timeouts,
    and the `load` map of welcome and heartbeat messages (queue, workers, workers_busy).

    `queue_ms` is an EWMA of reply queue times; `slowdown` the EWMA of server_ms over the
    server's profiled time for the same work (1.0 when unknown); `utilization` the busy
    fraction of workers from the last load report. A reply after a silence weighs more
    (the gain grows towards 1 with a half-life of FRESH_S since the previous reply): a
    queue seen during a load spike seconds ago says little about the queue now, and with
    no offloads meanwhile nothing else would correct it.

    A timed-out offload is a censored sample: the server took at least what the budget
    left after the network (`observe_timeout`); it can only raise the slowdown. Without
    replies, the slowdown relaxes back towards 1 with a half-life of RELAX_S, so a server
    that was slow (or looked slow through timeouts) is tried again instead of being ruled
    out for good: with every offload timing out, no reply would ever correct it. The first
    reply after such a bound replaces it: a measurement, where the bound was a guess from
    what did not arrive (the engine explores to get one, policy.explore).
    """

    RELAX_S = 20.0
    FRESH_S = 1.0  # a reply this long after the previous one counts half (gain 0.5)
    CENSORED_STEP = 1.2  # past a bound that a timeout already set (observe_timeout)

    def __init__(self, gain: float = 0.2) -> None:
        self._gain = gain
        self.queue_ms = 0.0
        self._slowdown = 1.0
        self._since = 0.0  # when _slowdown was last updated
        self._censored = False  # _slowdown is a timeout's bound, not a measurement
        self.utilization = 0.0
        self.queue_length = 0
        self.n = 0
        self._last_reply = -math.inf

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
        if now is not None:  # after a silence, the gain nears 1
            silence = max(float(now) - self._last_reply, 0.0)
            g = max(g, 1.0 - 0.5 ** (silence / self.FRESH_S))
            self._last_reply = max(self._last_reply, float(now))
        self.queue_ms += g * (q - self.queue_ms)
        if profiled_ms:
            current = self._slowdown if now is None else self.slowdown_at(now)
            g = 1.0 if self._censored else g
            self._slowdown = current + g * (max(s, 1e-6) / profiled_ms - current)
            self._since = self._since if now is None else float(now)
            self._censored = False
        self.n += 1

    def observe_timeout(self, at_least_ms: float, profiled_ms: float | None,
                        now: float) -> None:
        """An offload whose reply did not come although the server had `at_least_ms` for
        its queue and compute: raises the slowdown towards at_least_ms / profiled_ms.

        A bound says only "more than this". When the slowdown already is one, and the new
        bound comes within CENSORED_STEP of it (the belief put the reply at about the
        budget, and again it did not come), the target is CENSORED_STEP past both. Moved
        only towards the bound, the slowdown settled at it, where the planner sees even
        odds of a reply: on a 0.25-core device whose round trip (~29 ms) outgrew the
        budget (21-25 ms), that kept PP-OCRv4 offloading with 29 of 31 frames timing out
        (bench e2e), each then finishing here after its budget."""
        if not profiled_ms or at_least_ms <= 0:
            return
        bound = _check_finite("at_least_ms", at_least_ms) / profiled_ms
        current = self.slowdown_at(now)
        if self._censored and bound * self.CENSORED_STEP >= current:
            bound = max(bound, current) * self.CENSORED_STEP
        if bound > current:
            self._slowdown = current + max(self._gain, 0.5) * (bound - current)
            self._since = float(now)
            self._censored = True

    def observe_load(self, load: Mapping[str, Any]) -> None:
        workers = max(int(load.get("workers_alive", load.get("workers", 1)) or 1), 1)
        busy = int(load.get("workers_busy", 0) or 0)
        self.utilization = min(busy / workers, 1.0)
        self.queue_length = int(load.get("queue", 0) or 0)


# What the device's own scheduling adds to a small message's round trip, at most: idle, and
# computing starved of CPU (a quarter core: 64 KiB probes at 50 Mbit/s came back 1-50 ms
# late). A check that took longer waited behind an upload (LinkEstimator.slow_check).
CHECK_STALL_MS = 10.0
BUSY_STALL_MS = 50.0
PROBE_BYTES = (64 * 1024, 1024 * 1024)  # bandwidth probe size bounds (above a tbf burst)
PROBE_MAX_S = 0.25  # ...but a probe that would take longer at the estimate is cut to this
SMALL_MESSAGE_BYTES = 300  # a hello's or a heartbeat's envelope on the wire


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
                 queue_ms: float, now: float, profiled_ms: float | None = None, *,
                 computed: bool = True, busy: bool = False) -> float | None:
        """One reply; profiled_ms: the server's profiled time for the same work (tracks
        the server's slowdown); computed: False for a heartbeat, which the broker answers
        without queue or worker, so it says nothing of either; busy: the device computed
        while it was under way (BandwidthEstimator.observe_transfer). Returns the
        bandwidth sample, if the payload was large and it counts."""
        if computed:
            self.server.observe_reply(server_ms, queue_ms, profiled_ms, now)
        self._last_traffic = float(now)
        if payload_bytes <= self.small_bytes:  # small: it measures latency, not bandwidth
            self.rtt.observe(max(round_trip_ms - server_ms - queue_ms, 0.0), now)
            return None
        return self.bandwidth.observe_transfer(payload_bytes, round_trip_ms, server_ms,
                                               queue_ms, self.rtt.floor_ms, now, busy=busy)

    def on_timeout(self, payload_bytes: int, elapsed_ms: float, now: float) -> float | None:
        """An upload that got no reply within `elapsed_ms`: a censored bandwidth sample
        (see BandwidthEstimator.observe_timeout). For uploads whose time is all network
        (probes); an infer's also holds server compute and queueing (on_offload_timeout).
        Not traffic for the probing rule (as before): while nothing comes back, probing
        goes on."""
        return self.bandwidth.observe_timeout(payload_bytes, elapsed_ms, self.rtt.floor_ms,
                                              now)

    def on_uploads_ended(self, payload_bytes: int, ended_ms: float, now: float) -> bool:
        """Timed-out uploads of `payload_bytes` in all, one after the other on an idle
        link, had ended `ended_ms` after the first was queued: the hello that checked,
        queued behind them on the same connection, answered then (the broker answers a
        hello at once). So the link took about that long for them, less the hello's own
        round trip: a bound at about the rate itself, where the budget only bounds it from
        above, often far (after a link fell from 40 to 3 Mbit/s, a 46 KB upload's 60 ms
        budget said below 6, and the next offloads, priced at that, timed out too).
        Whether it was taken (BandwidthEstimator.observe_timeout, ended); if not, blame
        each upload as on_offload_timeout does."""
        if payload_bytes <= self.small_bytes:
            return False
        return self.bandwidth.observe_timeout(payload_bytes, ended_ms, self.rtt.floor_ms,
                                              now, ended=True) is not None

    def on_offload_timeout(self, payload_bytes: int, budget_ms: float,
                           profiled_ms: float | None, now: float, *,
                           link_slow: bool = False) -> None:
        """An offload that got no reply within `budget_ms`: a censored sample of the side
        to blame. `link_slow`: the hello sent to check the server after it came back late
        (`slow_check`), so it waited behind the rest of the upload on the link.
        - The link, when it was slow and the upload had the budget after the server's
          expected queue and compute: a bound on the rate (BandwidthEstimator.
          observe_timeout), if that is below the current rate (on_uploads_ended does
          better when the check's answer dates the upload's end).
        - The server otherwise: it had the budget after the network's expected share (RTT
          floor + overhead + bytes at the rate), a bound on its slowdown
          (ServerLoadEstimator).
        Blaming the server alone, a link that fell from 40 to 3 Mbit/s was offloaded to and
        timed out on for as long as it stayed slow (each hello found the server well).
        Blaming both, a server bound that relaxes over RELAX_S kept frames here long after
        the link was fast again. The rate's bound is on the terms the offload was decided
        on, so the same offload no longer looks worth it (an allowance for the device's own
        CPU stalls left it above the rate where the planner stops offloading, and every
        later timeout said nothing). The first reply corrects a wrong blame."""
        server = self.server
        wire_ms = budget_ms - server.queue_ms - server.slowdown_at(now) * (profiled_ms or 0.0)
        if (link_slow and payload_bytes > self.small_bytes and wire_ms > 0
                and self.bandwidth.observe_timeout(payload_bytes, wire_ms, self.rtt.floor_ms,
                                                   now) is not None):
            return
        m = self.bandwidth.model(now)  # its overhead is over the RTT its samples came with
        network = m.rtt_ms + m.transfer_ms(max(payload_bytes, 1))
        server.observe_timeout(budget_ms - network - server.queue_ms, profiled_ms, now)

    def slow_check(self, rtt_ms: float | None, busy: bool = False) -> bool:
        """Whether the hello that checks the server after a timed-out offload says the link
        was slow: it got no answer (None), or its round trip exceeded the RTT floor by
        more than the device's own CPU stalls explain (CHECK_STALL_MS; BUSY_STALL_MS when
        the device computed, starved, meanwhile). The broker answers a hello itself, ahead
        of any queue, but the hello leaves the device only after the rest of the upload
        that timed out."""
        if rtt_ms is None:
            return True
        return rtt_ms > self.rtt.floor_ms + (BUSY_STALL_MS if busy else CHECK_STALL_MS)

    def on_offload(self, failed: bool) -> None:
        """One offload's outcome (a timeout, an unreachable server or a fallback: failed)."""
        self.failures = 0.8 * self.failures + (0.2 if failed else 0.0)

    def model(self, now: float) -> LinkModel:
        return self.bandwidth.model(now)

    def should_probe(self, now: float) -> bool:
        """True before `warm_samples` bandwidth samples (a cold start would plan on the
        prior, or on one sample of unknown spread, and plans that keep the work on the
        device bring no new samples; held ones do not count) or after `idle_s` without
        traffic."""
        return (self.bandwidth.counted < self.warm_samples
                or now - self._last_traffic >= self.idle_s)
