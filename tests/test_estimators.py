"""edgesdk.estimators: synthetic timelines replayed with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgesdk.errors import PolicyError
from edgesdk.estimators import (
    BandwidthEstimator,
    LinkEstimator,
    RttEstimator,
    ServerLoadEstimator,
    SlowdownEstimator,
)
from edgesdk.profile import measure_cut_codec


def test_bandwidth_from_transfers_subtracts_server_queue_and_rtt_floor():
    bw = BandwidthEstimator(k=3)
    # 125 kB = 1 Mbit; 100 ms on the wire after removing 5 + 3 + 2 ms -> 10 Mbit/s
    got = bw.observe_transfer(125_000, round_trip_ms=110, server_ms=5, queue_ms=3,
                              rtt_floor_ms=2, now=0.0)
    assert got == pytest.approx(10.0)
    e = bw.estimate(now=2.0)
    assert e.value == pytest.approx(10.0) and e.n == 1 and e.age_s == 2.0


def test_bandwidth_harmonic_mean_and_uncertainty_of_last_k():
    bw = BandwidthEstimator(k=3)
    for t, mbps in enumerate([100.0, 2.0, 4.0, 4.0]):  # the first falls out of the window
        bw.observe(mbps, now=float(t))
    e = bw.estimate(now=3.0)
    assert e.value == pytest.approx(3 / (1 / 2 + 1 / 4 + 1 / 4))
    # median log 4; deviations 0, 0, log 2: the MAD is 0, so the mean deviation counts
    assert e.std == pytest.approx(e.value * 1.2533 * np.log(2.0) / 3) and e.std > 0
    bw.observe(8.0, now=4.0)  # 4, 4, 8: still tied; 2, 4, 8 below: the MAD
    bw.observe(2.0, now=5.0)
    logs = np.log([4.0, 8.0, 2.0])
    e = bw.estimate(now=5.0)
    assert e.std == pytest.approx(e.value * 1.4826 * np.median(np.abs(logs - np.log(4.0))))
    assert bw.history() == [4.0, 8.0, 2.0]


def test_one_burst_sample_does_not_make_a_steady_link_look_volatile():
    bw = BandwidthEstimator(k=5)
    for t, mbps in enumerate([35.0, 290.0, 29.0, 30.0, 60.0]):
        bw.observe(mbps, now=float(t))
    e = bw.estimate(now=5.0)
    assert 30 < e.value < 50
    assert e.std / e.value < 0.5  # a plain standard deviation would say 2.5


def test_bandwidth_step_change_is_tracked_within_k_samples():
    bw = BandwidthEstimator(k=4)
    for t in range(10):
        bw.observe(20.0, float(t))
    for t in range(10, 14):
        bw.observe(2.0, float(t))
    assert bw.estimate(14.0).value == pytest.approx(2.0)


def test_bandwidth_without_samples_is_the_prior_with_infinite_age():
    e = BandwidthEstimator(prior_mbps=5.0).estimate(now=1.0)
    assert e.value == 5.0 and e.n == 0 and math.isinf(e.age_s)


def test_too_short_transfers_are_ignored_and_bad_values_raise():
    bw = BandwidthEstimator()
    assert bw.observe_transfer(1000, 5.0, 3.0, 2.0, 0.0, now=0.0) is None  # no wire time
    for bad in (math.nan, -1.0, math.inf):
        with pytest.raises(PolicyError, match="round_trip_ms"):
            bw.observe_transfer(1000, bad, 0.0, 0.0, 0.0, now=0.0)


def test_rtt_floor_and_smoothing():
    rtt = RttEstimator(window=4)
    for t, r in enumerate([10.0, 12.0, 8.0, 10.0]):
        rtt.observe(r, float(t))
    assert rtt.floor_ms == 8.0
    e = rtt.estimate(4.0)
    srtt = 10.0
    for r in (12.0, 8.0, 10.0):
        srtt = 0.875 * srtt + 0.125 * r
    assert e.value == pytest.approx(srtt) and e.n == 4 and e.age_s == 1.0


def test_slowdown_is_measured_over_profiled_in_log_space():
    slow = SlowdownEstimator([{"median_ms": 2.0}, {"median_ms": 4.0}])
    assert slow.estimate().value == 1.0
    for _ in range(30):
        slow.observe(0, 6.0)
    assert slow.estimate().value == pytest.approx(3.0)
    with pytest.raises(PolicyError, match="segment"):
        slow.observe(5, 1.0)


def test_server_load_from_replies_and_welcome():
    s = ServerLoadEstimator(gain=0.5)
    s.observe_reply(server_ms=4.0, queue_ms=10.0, profiled_ms=2.0)
    s.observe_reply(server_ms=4.0, queue_ms=0.0, profiled_ms=2.0)
    assert s.queue_ms == pytest.approx(5.0) and s.slowdown == pytest.approx(2.0 - 0.5 * 0)
    s.observe_load({"queue": 3, "workers_alive": 4, "workers_busy": 3})
    assert s.utilization == 0.75 and s.queue_length == 3


def test_link_timeline_probe_until_warm_then_only_when_idle():
    link = LinkEstimator(idle_s=5.0)
    assert link.should_probe(0.0)  # nothing flowed yet
    link.on_small_message(rtt_ms=4.0, now=0.0)  # a heartbeat
    assert link.should_probe(1.0)  # ...but no bandwidth sample yet: the prior is a guess
    # 500 kB = 4 Mbit; wire time 405 - 1 (server) - 0 (queue) - 4 (RTT floor) = 400 ms
    got = link.on_reply(payload_bytes=500_000, round_trip_ms=405.0, server_ms=1.0,
                        queue_ms=0.0, now=1.0)
    assert got == pytest.approx(4e6 / 400e3)  # 4 Mbit in 400 ms = 10 Mbit/s
    assert link.should_probe(1.5)  # one sample: its spread is unknown
    for t in (1.5, 1.6):
        link.bandwidth.observe(10.0, now=t)
    assert not link.should_probe(1.7)  # three: warm
    assert link.on_reply(payload_bytes=100, round_trip_ms=6.0, server_ms=1.0, queue_ms=1.0,
                         now=2.0) is None  # small: an RTT sample instead
    assert link.rtt.floor_ms == 4.0
    assert not link.should_probe(6.9) and link.should_probe(7.0)


class _Seg:
    def __init__(self, i, o, fn):
        self.inputs, self._o, self._fn = (i,), o, fn

    def run(self, feed):
        return {self._o: self._fn(next(iter(feed.values())))}


class _Cut:
    id, after_segment, names = "c0", 0, ("h",)


def test_measure_cut_codec_sizes_shrink_with_bits_and_fp32_agrees():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 10)).astype(np.float32)
    segs = [_Seg("x", "h", lambda x: np.maximum(x, 0)), _Seg("h", "y", lambda h: h @ w)]
    samples = [{"x": rng.normal(size=(1, 64)).astype(np.float32)} for _ in range(8)]
    out = measure_cut_codec(segs, [_Cut()], samples, "y", bits=(32, 8, 2))
    c = out["cuts"]["c0"]
    assert c["32"]["agreement"] == 1.0 and out["input"]["32"]["agreement"] == 1.0
    assert c["32"]["bytes"] > c["8"]["bytes"] > c["2"]["bytes"]
    assert out["samples"] == 8


def test_bits_the_codec_refuses_are_recorded_and_left_out_of_the_candidates():
    from edgesdk.bundle import Bundle
    from edgesdk.models import DIGITS_BUNDLE
    from edgesdk.policy import build_candidates, model_profile

    w = np.ones((64, 10), np.float32)
    segs = [_Seg("x", "h", lambda x: x * 1e5), _Seg("h", "y", lambda h: h @ w)]  # > fp16 max
    samples = [{"x": np.full((1, 64), 2.0, np.float32)}]
    out = measure_cut_codec(segs, [_Cut()], samples, "y", bits=(32, 16, 8))
    assert "65504" in out["cuts"]["c0"]["16"]["error"]
    assert out["cuts"]["c0"]["8"]["agreement"] == 1.0
    manifest = Bundle.load(DIGITS_BUNDLE).manifest
    prof = dict(manifest.profiles)
    name = next(iter(prof))
    prof[name] = {**prof[name], "codec": {"cuts": {"c1": {"16": {"error": "too large"}}}}}
    from dataclasses import replace

    table = build_candidates(model_profile(replace(manifest, profiles=prof)))
    bits_at_c1 = {c.bits for c in table.candidates if c.cut == "c1"}
    assert 16 not in bits_at_c1 and {32, 8, 4, 2} <= bits_at_c1
