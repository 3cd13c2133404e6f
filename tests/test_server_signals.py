"""Stopping `edgesdk serve` the ways it is stopped for real: a signal to its whole process
group (systemd's default KillMode=control-group, Ctrl-C in a terminal), not only to the
broker. Running and queued requests still get their real answers and the exit code is 0.

The server is the real `edgesdk serve` command line; only its tail is slowed down
(tests/engine_helpers.py SlowTailFactory), so that requests are still running and queued
when the signal arrives.
"""

from __future__ import annotations

import signal
import sys

import numpy as np
import pytest

from edgesdk.errors import ServerStartError
from edgesdk.models import DIGITS_BUNDLE
from edgesdk.server import ServerProcess
from edgesdk.transport import Client

from transport_helpers import TESTS, child_env, pid_alive, wait_until

pytestmark = pytest.mark.timeout(120)

DELAY_MS = 300

# `edgesdk serve ARGS...` with the tail handler factory swapped for the slow one (workers
# unpickle it from engine_helpers, which is on the child's PYTHONPATH).
_SLOW_SERVE = (
    "import functools, sys\n"
    "import edgesdk.server, engine_helpers\n"
    "edgesdk.server.TailHandlerFactory = functools.partial(engine_helpers.SlowTailFactory, "
    "delay_ms=float(sys.argv[1]))\n"
    "from edgesdk.cli import main\n"
    "sys.exit(main(sys.argv[2:]))\n")


def slow_serve(*args: str) -> ServerProcess:
    cmd = [sys.executable, "-c", _SLOW_SERVE, str(DELAY_MS), "serve", str(DIGITS_BUNDLE),
           "--bind", "tcp://127.0.0.1:*", "--profile-runs", "0", *args]
    try:
        return ServerProcess(cmd, env=child_env(), cwd=str(TESTS), new_group=True)
    except ServerStartError as exc:
        raise AssertionError(str(exc)) from None


@pytest.fixture(scope="module")
def digits():
    from edgesdk.bundle import Bundle
    from edgesdk.runtime import open_segments

    bundle = Bundle.load(DIGITS_BUNDLE)
    return bundle, open_segments(bundle)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_whole_process_group_still_drains(sig, digits):
    from edgesdk.codec import decode_tensors, encode_tensors
    from edgesdk.runtime import run_chain

    bundle, local = digits
    cut = bundle.cuts[1]
    rng = np.random.default_rng(7)
    feeds = [{"x": rng.random((1, 1, 28, 28), dtype=np.float32)} for _ in range(4)]
    with slow_serve("--workers", "1", "--max-queue", "8", "--drain-timeout", "5") as server:
        workers = list(server.worker_pids().values())
        with Client(server.endpoint, window=8, retries=0) as client:
            ids = []
            for feed in feeds:
                env = run_chain(local, feed, 0, cut.after_segment + 1)
                ids.append(client.submit(encode_tensors([env[n] for n in cut.names]),
                                         budget_s=30.0, bundle=bundle.source_sha256,
                                         cut=cut.id))
            # One connection delivers in order: once the ping is answered, all four are
            # in the server, one running and three queued.
            load = client.ping().envelope.get("load")
            assert (load["workers_busy"], load["queue"]) == (1, 3)
            server.signal_group(sig)  # the broker and its worker, at once
            replies = [client.wait(rid) for rid in ids]  # RemoteError if any is lost
        for feed, reply in zip(feeds, replies, strict=True):
            got = decode_tensors(reply.frames, bundle.manifest.outputs)["logits"]
            np.testing.assert_array_equal(got, run_chain(local, feed)["logits"])
        assert server.proc.wait(20) == 0
        stopped = server.wait_event("stopped")
        assert stopped["served"] == len(feeds)
        assert not server.find("worker_crashed")
        assert wait_until(lambda: not any(pid_alive(p) for p in workers), 5)


def test_the_example_systemd_unit_signals_the_broker_and_outwaits_its_drain():
    """examples/edge_server.md: SIGTERM to the main process only (KillMode=mixed) and a
    stop timeout longer than the drain timeout plus the workers' exit (up to 5 s)."""
    import re

    from transport_helpers import ROOT

    text = (ROOT / "examples" / "edge_server.md").read_text()
    unit = re.search(r"```ini\n(.*?)```", text, re.S).group(1)
    settings = dict(re.findall(r"^(\w+)=(.*)$", unit, re.M))
    assert settings.get("KillMode") == "mixed", settings
    assert settings.get("KillSignal", "SIGTERM") == "SIGTERM"
    drain = re.search(r"--drain-timeout\s+([\d.]+)", unit)
    drain_s = float(drain.group(1)) if drain else 10.0  # `edgesdk serve`'s default
    assert float(settings["TimeoutStopSec"]) >= drain_s + 5, (settings, drain_s)
