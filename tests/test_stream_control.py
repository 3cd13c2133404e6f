"""Stream control: the drift-plus-penalty controller on hand-made tables, and
Engine.stream(fps=, v=) on the digits model (real sessions, a real server)."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np
import pytest
from test_policy_planner import HAND, _table

from edgesdk import ConfigError, Engine, PolicyError
from edgesdk.estimators import PRESETS
from edgesdk.models import digits_bundle, load_digits_test
from edgesdk.policy import Speed, State, StreamController

PI4 = PRESETS["pi4"]
# HAND with a 100 ms device-only run: the offload holds the device 1 ms, and its reply
# comes after ~5 ms; its radio at 10 fps costs ~0.383 W x (5 ms + 0.25 s tail, cut to the
# 0.1 s between frames) = 38 mJ against the device's 85 mJ at one thread
TABLE = _table(**{**HAND, "dev_ms": [100, 1]})
STATE = State(bw_mbps=8.0, slo_ms=500.0, rtt_ms=2.0)
REF_J = PI4.compute_j(100.0)
SPEEDS = (Speed(1), Speed(2, 1.8))


def test_speeds_and_controllers_refuse_bad_values():
    for bad in [dict(threads=0), dict(threads=True), dict(threads=2, speedup=0.0),
                dict(threads=1, speedup=5.0), dict(threads=1, speedup=math.nan)]:
        with pytest.raises(PolicyError, match="speed"):
            Speed(**bad)
    for kwargs, word in [(dict(fps=0.0, v=1.0), "fps"), (dict(fps=10.0, v=-1.0), "v"),
                         (dict(fps=10.0, v=math.inf), "v"), (dict(fps=10.0, v=True), "v"),
                         (dict(fps=10.0, v=1.0, speeds=()), "speeds")]:
        with pytest.raises(PolicyError, match=word):
            StreamController(**kwargs)


def test_the_virtual_queue_counts_frames_made_and_not_yet_served():
    ctl = StreamController(fps=10.0, v=1.0)
    ctl.arrive(100.0)  # the first call starts the clock
    assert ctl.q == 0.0
    ctl.arrive(100.5)  # half a second: 5 frames
    assert ctl.q == pytest.approx(5.0)
    for _ in range(7):
        ctl.served()
    assert ctl.q == 0.0  # never negative


def test_an_empty_queue_takes_the_cheapest_action():
    # Q = 0: only energy counts: the offload (38 mJ) over the device (85 mJ at one thread)
    ctl = StreamController(fps=10.0, v=1.0, speeds=SPEEDS)
    row, speed = ctl.choose(TABLE, STATE, PI4, REF_J)
    assert (row, speed.threads) == (1, 1)


def test_v_trades_the_backlog_against_energy():
    # the device alone, at one thread (100 ms, 85 mJ) or two (56 ms, 2 x 0.85 W x 56 ms =
    # 94 mJ): with a backlog, V = 0 takes the faster, V = 100 the cheaper
    device = TABLE.subset([True, False])
    fast = StreamController(fps=10.0, v=0.0, speeds=SPEEDS)
    cheap = StreamController(fps=10.0, v=100.0, speeds=SPEEDS)
    fast.q = cheap.q = 5.0
    assert fast.choose(device, STATE, PI4, REF_J)[1].threads == 2
    assert cheap.choose(device, STATE, PI4, REF_J)[1].threads == 1
    # a long enough backlog outweighs even V = 100: scores 150 (one thread) against 139
    cheap.q = 50.0
    assert cheap.choose(device, STATE, PI4, REF_J)[1].threads == 2


def test_actions_that_lose_accuracy_are_not_eligible():
    # the offload now loses 5 points: never chosen, however cheap
    lossy = _table(**{**HAND, "dev_ms": [100, 1], "rest_acc": [0.95, 0.90]})
    ctl = StreamController(fps=10.0, v=100.0, speeds=SPEEDS)
    row, _ = ctl.choose(lossy, STATE, PI4, REF_J)
    assert row == 0
    ctl = StreamController(fps=10.0, v=100.0, speeds=SPEEDS, accuracy_slack=0.1)
    row, _ = ctl.choose(lossy, STATE, PI4, REF_J)
    assert row == 1


def test_a_stream_prices_its_offloads_at_the_low_forecast():
    # a 50 KB upload: 20 ms at the mean rate, 800 ms (past the budget, then a 99 ms local
    # finish) at the low forecast; a falling link's frames stay here
    table = _table(**{**HAND, "dev_ms": [100, 1], "wire_bytes": [0, 50_000],
                      "local_ms": [0, 99]})
    state = State(bw_mbps=20.0, slo_ms=500.0, rtt_ms=2.0)
    ctl = StreamController(fps=10.0, v=1.0)
    assert ctl.choose(table, state, PI4, REF_J)[0] == 1
    for falling in (replace(state, bw_low_mbps=0.5), replace(state, bw_history=(0.5, 20.0))):
        assert ctl.choose(table, falling, PI4, REF_J)[0] == 0


@pytest.fixture(scope="module")
def digits():
    return load_digits_test()[0][:40]


def test_a_controlled_stream_answers_every_frame_and_restores_the_engine(digits):
    bundle = digits_bundle()
    with Engine(bundle, power="pi4", threads=1) as e:
        base = e.local
        speeds = e.stream_speeds((1, 2))
        assert [s.threads for s in speeds] == [1, 2] and speeds[0].speedup == 1.0
        assert e.stream_speeds((1, 2)) is speeds  # measured once
        rs = list(e.stream((x[None] for x in digits), fps=200.0, v=1.0, threads=(1, 2)))
        assert len(rs) == len(digits)
        assert all(np.isfinite(r.energy_j) and r.energy_j > 0 for r in rs)
        assert e.local is base and e._controller is None
        # the same answers as the whole model: a speed changes threads, not results
        ref = [int(np.argmax(e.infer(x[None]).output)) for x in digits]
    assert [r.label for r in rs if r.where != "exit"] == [
        ref[i] for i, r in enumerate(rs) if r.where != "exit"]


def test_a_local_finish_is_priced_at_the_speed_its_frame_runs_at(digits):
    """The slowdown is of the engine's own thread count: a frame that stream control runs
    on more threads finishes here faster, and its offload may wait that much longer."""
    with Engine(digits_bundle(), threads=1) as e:
        for x in digits[:20]:
            e.infer(x[None])
        f = e._front(digits[0][None], time.monotonic())
        for at in (0, 2):  # the whole chain (this bundle has no one-file model), its rest
            own = replace(f, next_segment=at)
            fast = replace(own, speed=Speed(2, 1.6))
            assert e._local_rest_ms(own) > 0
            assert e._local_rest_ms(fast) == pytest.approx(e._local_rest_ms(own) / 1.6)


def test_stream_control_needs_its_rate_its_trade_off_and_a_power_model(digits):
    bundle = digits_bundle()
    frames = [x[None] for x in digits[:2]]
    with Engine(bundle, power="pi4") as e:
        with pytest.raises(ConfigError, match="fps"):
            list(e.stream(frames, v=1.0))
        with pytest.raises(ConfigError, match="needs v"):
            list(e.stream(frames, fps=10.0))
        with pytest.raises(ConfigError, match="threads"):
            list(e.stream(frames, fps=10.0, v=1.0, threads=(0,)))
    with Engine(bundle, power=None) as e:
        if e.power is None:  # not on a Raspberry Pi, whose preset would be the default
            with pytest.raises(PolicyError, match="power model"):
                list(e.stream(frames, fps=10.0, v=1.0))
