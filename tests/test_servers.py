"""Several edge servers for one engine (engine.servers): real server processes on
127.0.0.1, one frozen (SIGSTOP on its worker) or killed while frames flow; the engine
offloads to the server whose estimates promise the best plan, and a server that fails is
replaced without a frame lost or late."""

from __future__ import annotations

import os
import signal

import pytest

from edgesdk import ConfigError, Engine
from edgesdk.engine.servers import ServerSet
from edgesdk.models import DIGITS_BUNDLE, load_digits_test

from conftest import SLOWDOWN
from engine_helpers import as_profiled, slow_device_bundle, stream_frames
from transport_helpers import ServerProcess, free_port

pytestmark = pytest.mark.timeout(120)
SLO_MS = 200.0 * SLOWDOWN
LATE_MS = 5.0 * SLOWDOWN


@pytest.fixture(scope="module")
def slow_device(tmp_path_factory):
    return slow_device_bundle(tmp_path_factory.mktemp("servers"))


def _free_endpoint() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


@pytest.mark.slow
def test_frames_move_to_the_other_server_when_one_freezes_and_when_one_dies(slow_device):
    x, _ = load_digits_test()
    x = x[:40]
    with ServerProcess.serving([DIGITS_BUNDLE], "--workers", "1") as a, \
            ServerProcess.serving([DIGITS_BUNDLE], "--workers", "1") as b, \
            Engine(slow_device, server=[a.endpoint, b.endpoint], slo_ms=SLO_MS,
                   strategy="planner") as engine:
        as_profiled(engine)
        assert isinstance(engine.link, ServerSet)
        assert engine.link.statuses() == {a.endpoint: "up", b.endpoint: "up"}
        first = stream_frames(engine, x, 5.0, until=lambda r: r.where == "edge")
        assert first[-1].where == "edge" and first[-1].server == a.endpoint  # the first listed

        (worker,) = a.worker_pids().values()
        os.kill(worker, signal.SIGSTOP)  # a frozen box: offloads to it time out
        try:
            moved = stream_frames(engine, x, 5.0, until=lambda r: r.server == b.endpoint
                            and r.where == "edge")
        finally:
            os.kill(worker, signal.SIGCONT)
        assert moved[-1].where == "edge" and moved[-1].server == b.endpoint, \
            [(r.server, r.where, r.fallback_reason) for r in moved]
        timeouts = [r for r in moved if r.fallback_reason == "timeout"]
        assert len(timeouts) <= 2, [(r.server, r.where, r.fallback_reason) for r in moved]
        # the frames that left the device went to b (a plan with an exit answers some here)
        on_b = [r for r in stream_frames(engine, x, 1.0) if r.where != "exit"]
        assert on_b and sum(r.server == b.endpoint and r.where == "edge" for r in on_b) >= \
            0.8 * len(on_b), [(r.server, r.where, r.fallback_reason) for r in on_b]

        b.kill()  # a dead box: its connection drops
        back = stream_frames(engine, x, 5.0, until=lambda r: r.server == a.endpoint
                       and r.where == "edge")
        assert back[-1].where == "edge" and back[-1].server == a.endpoint, \
            [(r.server, r.where, r.fallback_reason) for r in back]
        every = first + moved + on_b + back
    assert all(r.timings.total < SLO_MS + LATE_MS for r in every), \
        max(r.timings.total for r in every)


@pytest.mark.slow
def test_a_fixed_split_fails_over_to_the_next_server_in_order():
    x, _ = load_digits_test()
    dead = _free_endpoint()  # nothing listens there
    with ServerProcess.serving([DIGITS_BUNDLE], "--workers", "1") as live, \
            Engine(DIGITS_BUNDLE, server=[dead, live.endpoint], slo_ms=SLO_MS,
                   strategy="c0@8", connect_timeout_s=5.0) as engine:
        results = [engine.infer(xi) for xi in x[:20]]
    edge = [r for r in results if r.where == "edge"]
    assert edge and all(r.server == live.endpoint for r in edge)
    assert all(r.fallback_reason is None for r in results), [r.fallback_reason
                                                            for r in results]


@pytest.mark.parametrize("server", [["tcp://127.0.0.1:1", "tcp://127.0.0.1:1"], [""], [3]])
def test_a_bad_server_list_is_a_config_error_naming_it(server):
    with pytest.raises(ConfigError, match="server is"):
        Engine(DIGITS_BUNDLE, server=server)
