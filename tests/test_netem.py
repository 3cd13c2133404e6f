"""The end-to-end benchmark's testbed: real network namespaces, a veth pair shaped by tc,
a cgroup CPU quota, and the loopback fallback's token bucket inside the engine."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from edgesdk.bench.netem import NamespaceTestbed, TokenBucket, unavailable_reason

pytestmark = pytest.mark.timeout(120)
NETNS = unavailable_reason()
needs_netns = pytest.mark.skipif(NETNS is not None, reason=f"no testbed here: {NETNS}")

RECEIVER = """
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.213.0.2", 5001)); s.listen(); c, _ = s.accept()
n, t0 = 0, None
while True:
    d = c.recv(1 << 20)
    if t0 is None: t0 = time.perf_counter()
    if not d: break
    n += len(d)
print(n, time.perf_counter() - t0)
"""
SENDER = """
import socket, time, sys
for _ in range(100):
    try: s = socket.create_connection(("10.213.0.2", 5001)); break
    except OSError: time.sleep(0.05)
s.sendall(b"x" * int(sys.argv[1])); s.close()
"""
SPIN = "import time; t = time.perf_counter(); sum(range(4_000_000)); print(time.perf_counter() - t)"


def _throughput_mbit(tb: NamespaceTestbed, nbytes: int) -> float:
    rx = subprocess.Popen(tb.edge_command([sys.executable, "-c", RECEIVER]),
                          stdout=subprocess.PIPE, text=True)
    tx = tb.popen_device([sys.executable, "-c", SENDER, str(nbytes)])
    assert tx.wait(60) == 0
    n, seconds = rx.communicate(timeout=60)[0].split()
    assert int(n) == nbytes
    return nbytes * 8 / float(seconds) / 1e6


def _tag(name: str) -> str:
    # the pid first: a later run removes what a killed one left (netem._remove_stale)
    return f"{os.getpid()}x{name}"


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@needs_netns
def test_shaped_link_rate_changes_and_cleanup():
    with NamespaceTestbed(tag=_tag("t1")) as tb:
        assert tb.device_ns in _namespaces() and tb.cgroup.is_dir()
        tb.set_rate(5.0)
        slow = _throughput_mbit(tb, 1_000_000)
        tb.set_rate(40.0)
        fast = _throughput_mbit(tb, 2_000_000)
    assert 5.0 * 0.75 < slow < 5.0 * 1.25, slow
    assert 40.0 * 0.7 < fast < 40.0 * 1.25, fast
    assert "edgesdk-dev-t1" not in _namespaces() and not tb.cgroup.exists()


@needs_netns
def test_namespaces_are_removed_after_an_exception():
    with pytest.raises(RuntimeError), NamespaceTestbed(tag=_tag("t2")) as tb:
        assert tb.edge_ns in _namespaces()
        raise RuntimeError("boom")
    assert "edgesdk-edge-t2" not in _namespaces()


@needs_netns
def test_cpu_quota_slows_the_device_process():
    with NamespaceTestbed(tag=_tag("t3")) as tb:
        def timed(quota):
            p = tb.popen_device([sys.executable, "-c", SPIN], cpu_quota=quota,
                                stdout=subprocess.PIPE, text=True)
            return float(p.communicate(timeout=60)[0])
        full, throttled = timed(None), timed(0.25)
    assert throttled / full > 2.5, (full, throttled)


@needs_netns
def test_replay_changes_the_rate_on_schedule():
    with NamespaceTestbed(tag=_tag("t4")) as tb:
        tb.replay_rates([3.0, 7.0, 11.0], start_at=time.time(), speed=10.0)
        time.sleep(0.5)
        assert tb.rate_mbit == 11.0


def test_token_bucket_is_a_fifo_link():
    tb = TokenBucket(rate_mbit=8.0)  # 1 byte per microsecond
    assert tb.release_time(1000, now=10.0) == pytest.approx(10.001)
    assert tb.release_time(1000, now=10.0) == pytest.approx(10.002)  # queued behind it
    assert tb.release_time(500, now=20.0) == pytest.approx(20.0005)  # the link was idle
    trace = TokenBucket(rates=[1.0, 100.0], start_at=time.time() - 1.5, speed=1.0)
    assert trace.rate_mbit() == 100.0
    assert TokenBucket.from_env("2.5").rate_mbit() == 2.5
    assert TokenBucket.from_env("trace:0:1:4,5").rate_mbit() == 5.0  # long past: the last
    assert TokenBucket.from_env("") is None


def test_token_bucket_sends_each_byte_at_the_rate_of_its_second():
    # half a second left at 0.1 Mbit/s (6,250 B), then 100 Mbit/s: 50 kB cross in
    # 0.5 s + 43,750 B / 12.5 MB/s = 0.5035 s (at the first second's rate: 4 s)
    now = time.monotonic()
    link = TokenBucket(rates=[0.1, 100.0], start_at=time.time() - 0.5)
    assert link.release_time(50_000, now) - now == pytest.approx(0.5035, abs=2e-3)


def test_the_engine_link_holds_uploads_for_the_shaper():
    from edgesdk import Engine
    from edgesdk.models import DIGITS_BUNDLE, load_digits_test
    from edgesdk.server_process import ServerProcess

    x, _ = load_digits_test()
    with ServerProcess.serve([DIGITS_BUNDLE]) as server, Engine(
            DIGITS_BUNDLE, server=server.endpoint, slo_ms=2000, strategy="c0@32/0") as e:
        fast = np.median([e.infer(x[i]).timings.total for i in range(5)])
        e.link.shaper = TokenBucket(rate_mbit=0.25)
        shaped = [e.infer(x[0]) for _ in range(3)]  # x[0]: its upload size is measured below
    from edgesdk.serving import encode_tensors

    # what crosses: c0 (16x14x14 float32, zstd-compressed) at 0.25 Mbit/s
    with Engine(DIGITS_BUNDLE, strategy="device") as local:
        env = local.device.feed(x[0])
        local.device.run_segment(0, env)
    size = sum(memoryview(f).nbytes for f in encode_tensors([env["pool1"]], bits=32))
    expected_ms = size * 8 / 0.25e3
    assert all(r.where == "edge" for r in shaped)
    assert min(r.timings.total for r in shaped) > 0.8 * expected_ms > fast


@needs_netns
def test_the_benchmark_runs_a_throttled_device_against_a_server_in_the_edge_namespace(
        tmp_path):
    from edgesdk.bench.e2e import Runner
    from edgesdk.models import DIGITS_BUNDLE, load_digits_test
    from edgesdk.server_process import ServerProcess, module_command

    x, y = load_digits_test()
    np.savez(tmp_path / "frames.npz", x=x[:10], y=y[:10])
    with NamespaceTestbed(tag=_tag("t5")) as tb:
        serve = module_command("edgesdk.serving", "serve", str(DIGITS_BUNDLE), "--bind",
                               f"tcp://{tb.edge_address}:*")
        with ServerProcess(tb.edge_command(serve)) as server:
            assert server.endpoint.startswith(f"tcp://{tb.edge_address}:")
            runner = Runner(tb, server.endpoint, cpu_quota=0.5)
            records = runner.run(DIGITS_BUNDLE, tmp_path / "frames.npz", "edge", 1000.0,
                                 "latency", seconds=1.0, replay=[20.0, 50.0])
    assert len(records) >= 5 and all(r[2] == "edge" for r in records)
    assert np.mean([r[6] for r in records]) >= 0.8  # [t, ms, where, cut, bits, fallback, ok]
    assert tb.device_ns not in _namespaces() and not tb.cgroup.exists()
