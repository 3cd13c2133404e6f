"""Energy: the power model and its presets, what the planner expects a candidate to cost,
the energy price moving its choice, and the estimate every Result carries (a real Engine
and a real server)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from test_policy_planner import HAND, _table

from edgesdk import Engine, PolicyError
from edgesdk.estimators import PRESETS, PowerModel, power_model
from edgesdk.models import digits_bundle, load_digits_test
from edgesdk.policy import EnergyPrice, State, expected_energy, expected_rewards, plan

from transport_helpers import ServerProcess, child_env, free_port

PI4 = PRESETS["pi4"]


def test_presets_come_from_the_cited_measurements():
    # geerlingguy/sbc-reviews: Pi 4 idle 1.6 W, stress-ng 5.0 W; Pi 5 2.8 W, 9.7 W; 4 cores
    assert PI4.core_w == pytest.approx((5.0 - 1.6) / 4)
    assert PRESETS["pi5"].core_w == pytest.approx((9.7 - 2.8) / 4)
    for p in PRESETS.values():
        assert "sbc-reviews" in p.source and "ARO" in p.source
        assert p.tx_w == pytest.approx(0.383) and p.tail_s == 0.25


def test_compute_and_radio_energy():
    assert PI4.compute_j(100.0) == pytest.approx(0.085)
    assert PI4.compute_j(100.0, threads=2) == pytest.approx(0.17)
    assert PI4.compute_j(100.0, threads=16) == pytest.approx(0.34)  # 4 cores at most
    assert PI4.radio_j(0, 10.0) == 0.0
    # 10 ms sending, 5 ms waiting, then the whole 0.25 s tail at 0.383 W
    assert PI4.radio_j(1000, 10.0, 5.0) == pytest.approx(0.383 * (0.015 + 0.25))
    # 50 ms after the previous transfer the radio was still up: this one keeps it up for
    # the 50 ms since (its own send, wait and tail overlap the next frame's)
    assert PI4.radio_j(1000, 10.0, 5.0, gap_s=0.05) == pytest.approx(0.383 * 0.05)
    both = PI4.radio_j(np.array([0.0, 1000.0]), np.array([10.0, 10.0]), 5.0)
    assert both[0] == 0.0 and both[1] == pytest.approx(0.383 * 0.265)
    per_mbit = PowerModel("x", 0.0, 1, 0.0, 0.5, 0.0, 0.0)
    assert per_mbit.radio_j(125_000, 0.0) == pytest.approx(0.5)  # 1 Mbit at 0.5 W/Mbit/s


def test_measured_watts_and_their_errors():
    m = PowerModel.parse("idle=2.5,load=6.5,cores=4,tx=0.6")
    assert (m.name, m.core_w, m.cores, m.tx_w) == ("measured", 1.0, 4, 0.6)
    assert m.tail_w == PI4.tail_w  # unmeasured terms from the base preset
    assert power_model("pi5") is PRESETS["pi5"]
    assert power_model(m.to_json()) == m
    for bad, word in [("idle=3", "together"), ("idle=3,load=2", "exceed"),
                      ("pi9", "pi9"), ("idle=x,load=3", "'x'"), ("idle=1,load=3,cores=2.5",
                                                                    "whole"),
                      ("idle=1,load=nan", "nan")]:
        with pytest.raises(PolicyError, match=word):
            PowerModel.parse(bad)
    ok = m.to_json()
    for hostile, word in [({**ok, "volts": 5}, "unknown"), ({**ok, 1: 2}, "unknown"),
                          ({**ok, "core_w": 10**400}, "core_w"), ({**ok, "core_w": True},
                                                                   "True"),
                          ({**ok, "tail_s": math.inf}, "tail_s"), ({**ok, "cores": 0}, "cores"),
                          ({**ok, "cores": 10**300}, "cores"), ({**ok, "name": 5}, "name"),
                          ([1], "mapping")]:
        with pytest.raises(PolicyError, match=word):
            power_model(hostile)
    for bad, word in [(None, "None"), ("", "empty"), ("idle=-5,load=-1", "idle=-5"),
                      ("idle=1e308,load=1.7e308", "outside"), ("cores=0", "cores")]:
        with pytest.raises(PolicyError, match=word):
            PowerModel.parse(bad)


def test_expected_energy_of_device_and_offload_candidates():
    # HAND: device-only 10 ms here; the offload 1 ms here, 1000 B, a 2 ms round trip
    s = State(bw_mbps=8.0, slo_ms=10.0, rtt_ms=2.0)
    e = expected_energy(_table(**HAND), s, PI4)
    assert e[0] == pytest.approx(PI4.compute_j(10.0))
    # 1 ms compute, 1 ms upload, then 2 ms rtt + 1 ms server awaited, then the tail
    radio = 0.383 * (0.001 + 0.003 + 0.25)
    assert e[1] == pytest.approx(PI4.compute_j(1.0) + radio)
    # frames 20 ms apart keep the radio up all along: each adds those 20 ms
    e_stream = expected_energy(_table(**HAND), s, PI4, gap_s=0.02)
    assert e_stream[1] == pytest.approx(PI4.compute_j(1.0) + 0.383 * 0.02)


def test_the_energy_price_moves_the_plan():
    # HAND with a 100 ms device-only run and a 200 ms SLO: offloading is 95 ms faster
    table = _table(**{**HAND, "dev_ms": [100, 1]})
    s = State(bw_mbps=8.0, slo_ms=200.0, rtt_ms=2.0)
    assert plan(table, s) == 1

    def priced(weight, gap_s=math.inf):
        return State(**{**s.__dict__, "energy": EnergyPrice(
            PI4, weight, ref_j=PI4.compute_j(100.0), gap_s=gap_s)})

    # one frame now and then: the radio's 0.25 s tail makes the offload cost 1.15x the
    # device's 100 ms (0.098 J against 0.085 J); a high price keeps the frame here
    assert plan(table, priced(1.0)) == 1
    assert plan(table, priced(10.0)) == 0
    # a 30 fps stream keeps the radio up: each offload adds 33 ms of it, 0.013 J
    assert plan(table, priced(10.0, gap_s=1 / 30)) == 1
    free = expected_rewards(table, priced(0.0))
    assert np.array_equal(free, expected_rewards(table, s))  # weight 0: as before


@pytest.fixture(scope="module")
def digits():
    return load_digits_test()[0][:20]


@pytest.fixture
def not_a_pi(monkeypatch):
    """The tests that expect no default power model, also on a Raspberry Pi."""
    from edgesdk.estimators import energy

    monkeypatch.setattr(energy, "_MODEL_FILES", ())


@pytest.mark.slow
def test_results_carry_the_energy_estimate_on_every_path(digits, not_a_pi):
    bundle = digits_bundle()
    with Engine(bundle, power="pi4") as e:
        rs = [e.infer(x[None]) for x in digits]
    for r in rs:
        t = r.timings
        assert r.energy_j == pytest.approx(PI4.compute_j(t.device + t.encode + t.decode))
    with Engine(bundle) as e:  # no power model here (not a Pi): unknown, not a guess
        assert math.isnan(e.infer(digits[0][None]).energy_j)
    with ServerProcess.serving([bundle], "--workers", "1") as server, \
            Engine(bundle, server=server.endpoint, strategy="edge", power="pi5") as e:
        rs = [e.infer(x[None]) for x in digits]
    edge = [r for r in rs if r.where == "edge"]
    assert len(edge) >= len(rs) // 2
    pi5 = PRESETS["pi5"]
    for r in edge[1:]:  # back to back: each keeps the radio up since the previous send
        t = r.timings
        compute = pi5.compute_j(t.device + t.encode + t.decode)
        radio = r.energy_j - compute
        # the upload and the wait at 0.383 W at least, and at most the time since the
        # previous send (its own round trip and the test's loop), never a whole tail
        assert 0.383 * 0.5 * t.network / 1e3 < radio < 0.383 * 0.05


def test_a_failed_offload_pays_the_radio_until_it_failed(digits):
    bundle = digits_bundle()
    endpoint = f"tcp://127.0.0.1:{free_port()}"  # nothing listens: unreachable, nothing sent
    with Engine(bundle, server=endpoint, strategy="edge", power="pi4",
                connect_timeout_s=0.2) as e:
        r = e.infer(digits[0][None])
    t = r.timings
    assert r.where == "device" and r.energy_j == pytest.approx(
        PI4.compute_j(t.device + t.encode + t.decode))


def test_an_energy_price_needs_a_power_model_and_the_planner(not_a_pi):
    bundle = digits_bundle()
    with pytest.raises(PolicyError, match="no power model"):
        Engine(bundle, energy_weight=1.0)
    with pytest.raises(PolicyError, match="only the planner"):
        Engine(bundle, power="pi4", energy_weight=1.0, strategy="device")
    for bad in (-1.0, math.nan, True, "1"):
        with pytest.raises(PolicyError, match="energy_weight"):
            Engine(bundle, power="pi4", energy_weight=bad)
    with Engine(bundle, power="pi4", energy_weight=2.0) as e:
        assert e.state().energy.weight == 2.0 and e.infer(
            load_digits_test()[0][:1]).energy_j > 0


@pytest.mark.slow  # >= 1 s on this VM
def test_profile_watts_are_stored_kept_and_used(tmp_path):
    bundle = shutil.copytree(digits_bundle(), tmp_path / "d.edge")
    cmd = [sys.executable, "-m", "edgesdk", "profile", str(bundle), "--runs", "3",
           "--device", "pi"]
    run = dict(cwd=tempfile.gettempdir(), env=child_env(), capture_output=True, text=True,
               timeout=120)
    out = subprocess.run([*cmd, "--watts", "idle=2,load=6,cores=4"], **run)
    assert out.returncode == 0, out.stderr
    assert "1.000 W per busy core" in out.stdout
    assert subprocess.run(cmd, **run).returncode == 0  # re-profiled without --watts: kept
    stored = json.loads((bundle / "manifest.json").read_text())["profiles"]["pi"]["power"]
    assert stored["core_w"] == 1.0
    with Engine(bundle, device="pi") as e:
        assert e.power.core_w == 1.0 and e.infer(load_digits_test()[0][:1]).energy_j > 0
    bad = subprocess.run([*cmd, "--watts", "idle=3"], **run)
    assert bad.returncode == 2 and "idle and load together" in bad.stderr
