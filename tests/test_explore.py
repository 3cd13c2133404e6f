"""Exploration: while an adaptive strategy keeps frames on the device, the offload worth
trying in a plausible best case (policy.explore), and the engine's frames that follow it
now and then, so that a server whose timeouts ruled it out is used again once it recovers
(a real server process on 127.0.0.1 whose worker is frozen with SIGSTOP, then thawed)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import replace

import numpy as np
import pytest

from edgesdk import Engine
from edgesdk.bundle import Bundle
from edgesdk.estimators import ServerLoadEstimator
from edgesdk.models import DIGITS_BUNDLE, load_digits_test
from edgesdk.policy import State, build_candidates, explore_pick, model_profile, optimistic, plan

from conftest import SLOWDOWN
from engine_helpers import as_profiled, slow_device_bundle, stream_frames
from transport_helpers import ServerProcess

pytestmark = pytest.mark.timeout(120)
SLO_MS = 200.0 * SLOWDOWN


@pytest.fixture(scope="module")
def table():
    return build_candidates(model_profile(Bundle.load(DIGITS_BUNDLE).manifest))


# A device 500x slower than the profile (digits then takes ~35 ms here), a 50 Mbit/s link:
# sending the input (3 KB) pays
GOOD = State(bw_mbps=50.0, bw_std=5.0, slo_ms=100.0, rtt_ms=0.5, device_slowdown=500.0)


def _followed(table, state):
    return table.candidates[plan(table, state)]


def test_a_server_ruled_out_by_its_timeouts_is_explored(table):
    # a timeout's bound: the server looks 3000x slower than profiled
    state = replace(GOOD, server_slowdown=3000.0)
    followed = _followed(table, state)
    assert followed.cut == "device"
    pick = explore_pick(table, state, followed)
    assert pick is not None and pick.cut != "device"
    assert optimistic(state).server_slowdown == 1.0


def test_a_wide_bandwidth_spread_is_explored(table):
    state = replace(GOOD, bw_mbps=1.0, bw_std=2.2)  # after a volatile spell
    followed = _followed(table, state)
    assert followed.cut == "device"
    assert explore_pick(table, state, followed) is not None


def test_a_link_too_slow_even_at_its_upper_quantile_is_not_explored(table):
    state = replace(GOOD, bw_mbps=0.05, bw_std=0.005)
    followed = _followed(table, state)
    assert followed.cut == "device"
    assert explore_pick(table, state, followed) is None


def test_a_link_at_a_timeouts_bound_is_explored_at_its_last_measured_rate(table):
    """The bound may have blamed the link for a server's stall, or a smaller upload would
    have made it: the rate measured just before stays plausible."""
    state = replace(GOOD, bw_mbps=0.05, bw_std=0.005)
    assert explore_pick(table, state, _followed(table, state)) is None
    state = replace(state, bw_history=(40.0, 42.0, 0.05))
    followed = _followed(table, state)
    assert followed.cut == "device"
    pick = explore_pick(table, state, followed)
    assert pick is not None and pick.cut != "device"
    assert optimistic(state).bw_mbps == 42.0


def test_an_overhead_that_rules_offloading_out_is_explored_without_it(table):
    """A per-message overhead fitted while a load spike slowed every answer is carried
    across the link's changes while probes alone cannot refit it: the best case then has
    none beyond the RTT. One fitted in the present is believed."""
    measured = replace(GOOD, bw_overhead_ms=100.0)
    followed = _followed(table, measured)
    assert followed.cut == "device"
    assert explore_pick(table, measured, followed) is None  # fitted now: it stands
    carried = replace(measured, bw_overhead_carried=True)
    pick = explore_pick(table, carried, followed)
    assert pick is not None and pick.cut != "device"
    assert optimistic(carried).bw_overhead_ms == 0.0


def test_a_model_that_never_pays_to_offload_is_not_explored(table):
    state = replace(GOOD, device_slowdown=1.0)  # digits here: 0.07 ms
    followed = _followed(table, state)
    assert followed.cut == "device"
    assert explore_pick(table, state, followed) is None


def test_the_first_reply_after_a_timeout_replaces_its_bound():
    server = ServerLoadEstimator()
    server.observe_reply(server_ms=10.0, queue_ms=0.0, profiled_ms=10.0, now=0.0)
    server.observe_timeout(at_least_ms=400.0, profiled_ms=10.0, now=1.0)
    assert server.slowdown_at(1.0) > 10.0
    server.observe_reply(server_ms=12.0, queue_ms=0.0, profiled_ms=10.0, now=2.0)
    assert server.slowdown_at(2.0) == pytest.approx(1.2)
    # later replies average as before
    server.observe_reply(server_ms=22.0, queue_ms=0.0, profiled_ms=10.0, now=3.0)
    assert 1.2 < server.slowdown_at(3.0) < 2.2


def test_in_the_simulator_exploring_brings_offloads_back_after_a_load_spike():
    """A 50 Mbit/s link, the server saturated by other devices from 5 to 12 s: offloads
    time out and the planner keeps frames here. Without exploring it is still doing so 15 s
    later (the timeouts' bound relaxes with a 20 s half-life); with it, it offloads again."""
    from test_policy_eval import _scenarios

    from edgesdk.policy import simulator as sim

    sc = _scenarios(seed=10, n=1)[0]
    load = np.zeros(60)
    load[5:12] = 0.999
    sc = replace(sc, mbps=np.full(60, 50.0), load=load, outages=(), server_drift=1.0,
                 slo_ms=sc.slo_ms * 2)
    t = np.arange(sc.frames) * sc.period_s
    offloaded = {}
    for explore in (False, True):
        ep = sim.run_episode(sc, plan, world=sim.World(sc), explore=explore)
        offloaded[explore] = sc.table.wire_bytes[ep.choice] > 0
    before, after = t < 5.0, (t >= 14.0) & (t < 30.0)
    assert offloaded[False][before].mean() > 0.9 and offloaded[True][before].mean() > 0.9
    assert offloaded[False][after].mean() < 0.1
    assert offloaded[True][after].mean() > 0.9


# -- against a real server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_device(tmp_path_factory):
    return slow_device_bundle(tmp_path_factory.mktemp("explore"))


@pytest.mark.slow
def test_after_its_worker_recovers_the_server_is_used_again_only_through_exploring(
        slow_device):
    """The worker freezes: offloads time out and the planner keeps frames here (the
    server's slowdown is now a timeout's bound). The worker thaws. Without exploring, the
    decision stays local (the bound would take minutes to relax); with it, frames go to
    the edge again within a second or so."""
    x, _ = load_digits_test()
    x = x[:40]
    with ServerProcess.serving([DIGITS_BUNDLE], "--workers", "1") as server, Engine(
            slow_device, server=server.endpoint, slo_ms=SLO_MS, strategy="planner") as engine:
        as_profiled(engine)  # this "device" is the profile's
        assert engine.link.wait_connected(10)
        first = stream_frames(engine, x, 5.0, until=lambda r: r.where == "edge")
        assert first[-1].where == "edge", [r.plan for r in first]

        (worker,) = server.worker_pids().values()
        os.kill(worker, signal.SIGSTOP)
        try:
            frozen = stream_frames(engine, x, 5.0, until=lambda r: r.fallback_reason == "timeout")
            assert frozen[-1].fallback_reason == "timeout"
            assert frozen[-1].timings.total < SLO_MS + 5.0 * SLOWDOWN
            engine._exploration = lambda chosen, now: None  # exploring off
            after = stream_frames(engine, x, 0.5)
            assert all(r.where in ("device", "exit") for r in after[-10:]), \
                [(r.plan, r.where, r.fallback_reason) for r in after]
            # an offload still awaited (until its frame's deadline) would be answered once
            # the worker thaws, and that reply rightly brings the server back
            assert _quiet(engine.link, SLO_MS / 1e3 + 1.0)
        finally:
            os.kill(worker, signal.SIGCONT)
        time.sleep(0.2)

        without = stream_frames(engine, x, 1.5)
        assert all(r.where != "edge" and "device-only" in r.plan for r in without), \
            [(r.plan, r.where, r.fallback_reason) for r in without if r.where == "edge"]

        del engine._exploration  # exploring on (the class's method again)
        t0 = time.monotonic()
        # an exploring frame at the edge, then the decision itself offloading again
        back = stream_frames(engine, x, 5.0, until=lambda r: r.where == "edge" and not r.explored)
        took = time.monotonic() - t0
    assert back[-1].where == "edge", [(r.plan, r.fallback_reason) for r in back[-5:]]
    assert any(r.explored and r.where == "edge" for r in back), [r.plans for r in back]
    explored = next(r for r in back if r.explored)
    assert "device-only" in explored.plans[0] and explored.plan == explored.plans[1]
    assert took < 1.5 * SLOWDOWN, took
    assert all(r.timings.total < SLO_MS + 5.0 * SLOWDOWN for r in first + frozen + back)


def test_an_engine_without_a_server_never_explores(slow_device):
    """Offloading pays on this slow device, in a plausible best case too: without a server
    the planner still keeps every frame here, exploring none."""
    x, _ = load_digits_test()
    with Engine(slow_device, slo_ms=SLO_MS, strategy="planner") as engine:
        as_profiled(engine)
        out = [engine.infer(xi) for xi in x[:10]]
    assert all(r.where in ("device", "exit") and not r.explored for r in out), \
        [r.plans for r in out]


def _quiet(link, timeout_s: float) -> bool:
    """Wait until `link` awaits no reply; True if it did within timeout_s."""
    end = time.monotonic() + timeout_s
    while link.in_flight and time.monotonic() < end:
        time.sleep(0.01)
    return not link.in_flight


def _counted_looks(monkeypatch) -> list:
    """The plans of every look for an exploring frame the engine takes from now on."""
    import edgesdk.engine.core as core

    looks = []

    def counted(table, state, followed):
        looks.append(followed)
        return explore_pick(table, state, followed)

    monkeypatch.setattr(core, "explore_pick", counted)
    return looks


@pytest.mark.slow
def test_a_state_with_nothing_to_explore_is_looked_at_once(monkeypatch):
    """Frames kept here by a decision whose optimistic case offloads nothing (the digits at
    a 5 ms latency SLO, as bench overhead runs them): the look prices every candidate, so
    it runs once per rounded state and plan, not per frame (it made the planner 2x the
    device strategy's time per digits frame). A controlled stream's frames have no
    decision state key: each is looked at, none skipped on the adaptive frames' stale
    key."""
    looks = _counted_looks(monkeypatch)
    x, _ = load_digits_test()
    with ServerProcess.serving([DIGITS_BUNDLE], "--workers", "1") as server, Engine(
            DIGITS_BUNDLE, server=server.endpoint, slo_ms=5.0 * SLOWDOWN, task="latency",
            strategy="planner", power="pi4") as engine:
        assert engine.link.wait_connected(10)
        out = [engine.infer(xi) for xi in x[:200]]
        decided = len(looks)
        streamed = list(engine.stream((xi for xi in x[:40]), fps=200.0, v=1.0))
    assert all(r.where != "edge" for r in out), [r.plan for r in out]
    assert 1 <= decided <= len(out) // 10, (decided, len(out))
    here = [r for r in streamed if "device-only" in r.plans[0]]
    assert len(looks) - decided > len(here) // 2, (len(looks) - decided, len(here))


@pytest.mark.slow
@contextlib.contextmanager
def _link_to_a_slow_server():
    """(an EdgeLink to a real server whose worker takes 300 ms a request, the digits
    input's frames)."""
    import sys

    from edgesdk.codec import encode_tensors
    from edgesdk.engine.link import EdgeLink

    from transport_helpers import TESTS

    bundle = Bundle.load(DIGITS_BUNDLE)
    frames = encode_tensors([np.zeros(t.shape, t.dtype) for t in bundle.manifest.inputs],
                            bits=32)
    slow = ServerProcess([sys.executable, str(TESTS / "engine_helpers.py"), str(DIGITS_BUNDLE),
                          "--delay-ms", str(300 * SLOWDOWN)])
    slow.exit_timeout_s = 5.0 + 0.3 * SLOWDOWN
    with slow:
        link = EdgeLink(slow.endpoint, bundle.source_sha256, retry_s=30.0)
        try:
            assert link.wait_connected(10)
            yield link, frames
        finally:
            link.close()


@pytest.mark.slow  # deliberate timeouts on a 300 ms worker
def test_an_exploring_offload_that_times_out_changes_nothing():
    """Its failure says little (the frame tried a plausible best case, and a slow transfer
    would be blamed on the server): the link stays up and the server's slowdown as it was;
    a plain offload's timeout does change both."""
    from edgesdk.engine.link import CHECKING, UP
    from edgesdk.errors import ServerBusy, Timeout

    with _link_to_a_slow_server() as (link, frames):
        server = link.estimator.server
        before = server.slowdown_at(time.monotonic())
        with pytest.raises(Timeout):
            link.offload(frames, "input", 0.05 * SLOWDOWN, exploring=True).result(
                5 * SLOWDOWN)
        assert link.status == UP and link.estimator.failures == 0.0
        assert server.slowdown_at(time.monotonic()) == pytest.approx(before, rel=1e-3)
        # the worker is still on it: the broker answers the next exploring one busy,
        # at once, and that changes nothing either
        t0 = time.monotonic()
        with pytest.raises(ServerBusy):
            link.offload(frames, "input", 1.0, exploring=True).result(5 * SLOWDOWN)
        assert time.monotonic() - t0 < 0.1 * SLOWDOWN
        assert link.status == UP and link.usable(time.monotonic()) is None
        rate = link.estimator.model(time.monotonic()).rate_mbps
        with pytest.raises(Timeout):
            link.offload(frames, "input", 0.05 * SLOWDOWN).result(5 * SLOWDOWN)
        assert link.status in (CHECKING, UP) and link.estimator.failures > 0.0
        # once the hello that checks has answered, one side took the timeout's bound
        # (the server, unless this machine delayed the hello past the link's margin)
        deadline = time.monotonic() + 5 * SLOWDOWN
        while link.status != UP and time.monotonic() < deadline:
            time.sleep(0.01)
        assert link.status == UP
        now = time.monotonic()
        assert (server.slowdown_at(now) > before
                or link.estimator.model(now).rate_mbps < rate / 1.5)


@pytest.mark.slow
def test_an_offload_the_server_refuses_as_late_is_blamed_on_it_without_a_check():
    """The broker answers `expired` at once when a request's budget cannot cover its
    compute there (learnt from the first requests): the server answered, so the link is
    not suspect. The timeout is blamed on the server at once: no hello, no pending blame,
    and the link's rate as it was."""
    from edgesdk.engine.link import UP
    from edgesdk.errors import Timeout

    with _link_to_a_slow_server() as (link, frames):
        for _ in range(2):  # the broker's expected compute: an EWMA from ~1 ms
            link.offload(frames, "input", 2.0 * SLOWDOWN).result(5 * SLOWDOWN)
        server = link.estimator.server
        now = time.monotonic()
        rate, before = link.estimator.model(now).rate_mbps, server.slowdown_at(now)
        with pytest.raises(Timeout) as refused:  # ~55 ms expected > 20 ms of budget
            link.offload(frames, "input", 0.02).result(5 * SLOWDOWN)
        assert getattr(refused.value, "refused", False), refused.value
        now = time.monotonic()
        assert link.status == UP and not link._unblamed
        assert link.estimator.model(now).rate_mbps == pytest.approx(rate)
        # a censored sample: the server is at least as slow as its measured reply said
        assert server.slowdown_at(now) >= before * (1 - 1e-3)
