"""The Engine end to end, with the bundled digits model, real onnxruntime sessions and real
server processes on 127.0.0.1 that are started, slowed down, saturated, killed and
restarted. Every path ends in exactly one Result per frame, within its deadline."""

from __future__ import annotations

import math
import sys
import time

import numpy as np
import pytest

from edgesdk import ConfigError, Engine, InputError, PolicyError, Result
from edgesdk.bundle import Bundle
from edgesdk.estimators import SlowdownEstimator
from edgesdk.models import digits_bundle, load_digits_test
from edgesdk.runtime import open_segments, run_chain

from conftest import SLOWDOWN
from transport_helpers import TESTS, ServerProcess, free_port

# the ONNX bundle, or its TFLite form where onnxruntime has no build (32-bit Pi OS)
DIGITS_BUNDLE = digits_bundle()

pytestmark = pytest.mark.timeout(120)
# On a slower CPU (an emulated Pi) the budgets scale with it: conftest.SLOWDOWN
SLO_MS = 100.0 * SLOWDOWN
LATE_MS = 5.0 * SLOWDOWN  # the promise: every answer by the deadline + this, faults or not


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits_test()
    return x[:60], y[:60]


@pytest.fixture(scope="module")
def full_model(digits):
    """The whole model run locally: logits per digit."""
    segs = open_segments(Bundle.load(DIGITS_BUNDLE))
    return np.stack([run_chain(segs, {"x": x[None]})["logits"][0] for x in digits[0]])


@pytest.fixture(scope="module")
def server():
    with ServerProcess.serving([DIGITS_BUNDLE], "--workers", "1") as s:
        yield s


def _slow_server(delay_ms: float, *args: str) -> ServerProcess:
    server = ServerProcess([sys.executable, str(TESTS / "engine_helpers.py"),
                            str(DIGITS_BUNDLE), "--delay-ms", str(delay_ms), *args])
    server.exit_timeout_s = 5.0 + delay_ms / 1e3  # its drain waits out a request's sleep
    return server


def _check_shape(r: Result) -> None:
    assert r.where in ("exit", "edge", "device")
    t = r.timings
    for name in ("device", "encode", "network", "server", "queue", "decode", "total"):
        value = getattr(t, name)
        assert math.isfinite(value) and value >= 0, (name, value)
    assert (r.exit_name is not None) == (r.where == "exit")
    if r.where == "edge":
        assert r.cut is not None and r.bits in (32, 16, 8, 4, 2)


# -- on the device alone -------------------------------------------------------------------


def test_device_only_equals_the_whole_model(digits, full_model):
    x, _ = digits
    with Engine(DIGITS_BUNDLE, strategy="device") as engine:
        results = [engine.infer(xi) for xi in x]
    for r, ref in zip(results, full_model, strict=True):
        _check_shape(r)
        assert r.fallback_reason is None and r.cut is None
        if r.where == "device":
            np.testing.assert_array_equal(r.output[0], ref)
    exits = [r for r in results if r.where == "exit"]
    assert len(exits) > len(x) // 2  # the calibrated first exit takes most digits
    for r in exits:
        assert r.exit_name in ("exit1", "exit2") and r.confidence >= 0.6
        assert r.timings.network == 0 and r.timings.server == 0


def test_exits_keep_accuracy(digits):
    x, y = digits
    with Engine(DIGITS_BUNDLE, strategy="device") as engine:
        acc = np.mean([engine.infer(xi).label == yi for xi, yi in zip(x, y, strict=True)])
    assert acc >= 0.93


def test_stream_and_async_return_one_result_per_frame_in_order(digits):
    x, _ = digits
    # strategy "device": the same plan for every frame, so the same output for the same input
    with Engine(DIGITS_BUNDLE, strategy="device", max_in_flight=3) as engine:
        streamed = list(engine.stream(iter(x)))
        futures = [engine.infer_async(xi) for xi in x[:10]]
        async_results = [f.result(timeout=30) for f in futures]
    assert [r.frame for r in streamed] == list(range(len(x)))
    assert [r.frame for r in async_results] == list(range(len(x), len(x) + 10))
    for a, b in zip(streamed[:10], async_results, strict=True):
        np.testing.assert_array_equal(a.output, b.output)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((1, 1, 27, 28), np.float32), r"shape \[1, 1, 27, 28\]"),
    (np.full((1, 1, 28, 28), np.nan, np.float32), "NaN"),
    (np.full((1, 1, 28, 28), "a"), "dtype"),
    ({"y": np.zeros((1, 1, 28, 28), np.float32)}, r"\['y'\]"),
    (None, r"is None, expected an array of shape \[1, 1, 28, 28\]"),
])
def test_bad_frames_are_typed_errors_and_the_engine_keeps_working(bad, match, digits):
    with Engine(DIGITS_BUNDLE) as engine:
        with pytest.raises(InputError, match=match):
            engine.infer(bad)
        assert engine.infer(digits[0][0]).where in ("exit", "device")


def test_bad_options_are_typed_errors():
    with pytest.raises(PolicyError, match="slo_ms"):
        Engine(DIGITS_BUNDLE, slo_ms=0)
    with pytest.raises(PolicyError, match="task"):
        Engine(DIGITS_BUNDLE, task="fast")
    with pytest.raises(PolicyError, match="strategy"):
        Engine(DIGITS_BUNDLE, strategy="c9@8")
    with pytest.raises(ConfigError, match="sparse"):
        Engine(DIGITS_BUNDLE, sparse="yes")


def test_a_bundle_without_profile_gets_one_measured(tmp_path, digits):
    import json
    import shutil

    copy = tmp_path / "digits.edge"
    shutil.copytree(DIGITS_BUNDLE, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["profiles"] = {}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with Engine(copy) as engine:
        assert engine.infer(digits[0][0]).where in ("exit", "device")


# -- with a server -------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["edge", "c0@32", "c1@32", "c2@16", "c1@4"])
def test_offloaded_frames_match_the_whole_model(server, digits, full_model, strategy):
    x, _ = digits
    with Engine(DIGITS_BUNDLE, server=server.endpoint, slo_ms=SLO_MS, strategy=strategy) as e:
        assert e.link.status == "up"
        results = list(e.stream(x[:20]))
    edge = [(r, ref) for r, ref in zip(results, full_model, strict=False) if r.where == "edge"]
    assert edge, [r.where for r in results]
    for r, ref in edge:
        _check_shape(r)
        assert r.fallback_reason is None
        assert r.cut == strategy.replace("edge", "input@8").split("@")[0]
        if r.bits == 32:
            np.testing.assert_allclose(r.output[0], ref, rtol=1e-5, atol=1e-5)
        else:  # quantized: same answer
            assert int(np.argmax(r.output)) == int(np.argmax(ref))
        assert r.timings.server > 0 and r.timings.total >= r.timings.network


@pytest.fixture(scope="module")
def measured_digits(tmp_path_factory):
    """A copy of the digits bundle whose profile has the codec measured (raw and sparse
    sizes too), so that raw-packed plans ("-z") are candidates."""
    from models import digits_with_codec_profile

    return digits_with_codec_profile(tmp_path_factory.mktemp("sparse") / "digits.edge", 4)[1]


@pytest.mark.parametrize("strategy", ["c0@8-z", "c1@4-z", "c2@16-z"])
def test_sparse_offloads_are_read_by_the_server(server, measured_digits, digits, full_model,
                                                strategy, monkeypatch):
    """sparse=True: raw offloads send the zero codes as a bitmap (compress="sparse"); the
    server decodes them to the same tensors (16 bits has no codes: sent as before)."""
    import msgpack

    from edgesdk.codec import encode_tensors
    from edgesdk.engine import core

    sent = []  # the codec field of every header the engine put on the wire

    def recording(*args, **kwargs):
        frames = encode_tensors(*args, **kwargs)
        sent.extend(msgpack.unpackb(h)["codec"] for h in frames[0::2])
        return frames
    monkeypatch.setattr(core, "encode_tensors", recording)
    x, _ = digits
    with Engine(measured_digits, server=server.endpoint, slo_ms=SLO_MS, strategy=strategy,
                sparse=True) as e:
        plan = e._base_table.candidates[e._choose(e._base_table, None)]
        assert not plan.zstd
        assert e._compress(plan) == ("none" if plan.bits == 16 else "sparse")
        results = list(e.stream(x[:10]))
    edge = [(r, ref) for r, ref in zip(results, full_model, strict=False) if r.where == "edge"]
    assert edge, [r.where for r in results]
    for r, ref in edge:
        assert r.fallback_reason is None and r.zstd is False
        assert int(np.argmax(r.output)) == int(np.argmax(ref))
    # ReLU maps at 8 and 4 bits: the bitmap pays, so sparse payloads reached the server
    assert sent and set(sent) == ({"none"} if strategy.startswith("c2@16") else {"sparse"})


def test_unreachable_server_finishes_on_the_device(digits, full_model):
    endpoint = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    with Engine(DIGITS_BUNDLE, server=endpoint, slo_ms=SLO_MS, strategy="edge",
                connect_timeout_s=0.5) as engine:
        results = [engine.infer(xi) for xi in digits[0][:10]]
    for r, ref in zip(results, full_model, strict=False):
        assert r.where == "device" and r.fallback_reason == "unreachable"
        np.testing.assert_array_equal(r.output[0], ref)
        assert r.timings.total < SLO_MS


def _engine_records(caplog) -> list:
    return [r for r in caplog.records if r.name == "edgesdk.engine"]


@pytest.mark.slow
def test_an_unreachable_server_is_warned_about_once_then_its_return_logged(digits, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="edgesdk")
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"  # a closed port: nothing listens there yet
    with Engine(DIGITS_BUNDLE, server=endpoint, strategy="edge",
                connect_timeout_s=2.0) as engine:
        # the warning is out when the constructor returns (its first hello failed)
        warned = [r for r in _engine_records(caplog) if r.levelno == logging.WARNING]
        assert len(warned) == 1, [r.getMessage() for r in warned]
        text = warned[0].getMessage()
        assert endpoint in text and "unreachable" in text and "on the device" in text
        results = [engine.infer(xi) for xi in digits[0][:10]]
        time.sleep(1.2)  # a few more failed hellos (every 0.5 s)
        results += [engine.infer(xi) for xi in digits[0][10:20]]
        assert {r.fallback_reason for r in results} == {"unreachable"}
        assert len(_engine_records(caplog)) == 1  # not per frame, not per hello
        with ServerProcess.serving([DIGITS_BUNDLE], "--bind", endpoint, "--workers", "1"):
            assert _wait_for(lambda: engine.link.status == "up", 15.0)
            assert _wait_for(lambda: len(_engine_records(caplog)) == 2, 2.0)
    back = _engine_records(caplog)[1]
    assert back.levelno == logging.INFO and endpoint in back.getMessage()
    assert "resumes" in back.getMessage()


@pytest.mark.slow
def test_server_killed_and_restarted_same_engine(digits):
    x, y = digits
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    first = ServerProcess.serving([DIGITS_BUNDLE], "--bind", endpoint)
    try:
        engine = Engine(DIGITS_BUNDLE, server=endpoint, slo_ms=SLO_MS, strategy="c1@8")
        before = list(engine.stream(x[:20]))
        first.proc.kill()  # SIGKILL: no goodbye
        first.proc.wait(10)
    finally:
        first.kill()
    during = list(engine.stream(x[20:40]))
    with ServerProcess.serving([DIGITS_BUNDLE], "--bind", endpoint):
        deadline = time.monotonic() + 15
        after: list[Result] = []
        while time.monotonic() < deadline and not any(r.where == "edge" for r in after):
            after = list(engine.stream(x[40:60]))
            time.sleep(0.1)
        engine.close()
    for rs in (before, during, after):
        assert len(rs) == 20  # one result per frame: none lost, none duplicated
        for r in rs:
            _check_shape(r)
            assert r.timings.total < SLO_MS + LATE_MS, r.timings.total
    assert any(r.where == "edge" for r in before)
    assert not any(r.where == "edge" for r in during)
    assert {r.fallback_reason for r in during if r.where != "exit"} <= {
        "unreachable", "timeout", "checking"}
    assert any(r.where == "edge" for r in after), "the engine did not reconnect"
    acc = np.mean([r.label == yi for r, yi in zip(before + during + after, y, strict=True)])
    assert acc >= 0.9


@pytest.mark.slow
def test_slow_server_times_out_and_the_frame_finishes_within_the_deadline(digits, full_model):
    with _slow_server(3 * SLO_MS) as slow, Engine(DIGITS_BUNDLE, server=slow.endpoint,
                                                  slo_ms=SLO_MS, strategy="edge") as engine:
        results = [engine.infer(xi) for xi in digits[0][:4]]
    for r, ref in zip(results, full_model, strict=False):
        assert r.where == "device" and r.fallback_reason in ("timeout", "checking",
                                                             "unresponsive")
        np.testing.assert_array_equal(r.output[0], ref)
        assert r.timings.total < SLO_MS + LATE_MS, r.timings.total
    assert results[0].fallback_reason == "timeout"


def _wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_the_link_measures_bandwidth_right_after_connecting(server):
    from edgesdk.engine.link import EdgeLink

    # idle probing would wait probe_idle_s (here 30 s): three samples come from the
    # warm-up probes alone, with no offload
    link = EdgeLink(server.endpoint, Bundle.load(DIGITS_BUNDLE).source_sha256, retry_s=0.05,
                    probe_idle_s=30.0)
    try:
        assert link.wait_connected(10)
        assert _wait_for(lambda: len(link.estimator.bandwidth.history()) >= 3, 5.0)
        assert all(s > 0 for s in link.estimator.bandwidth.history())
    finally:
        link.close()


@pytest.mark.slow
def test_an_idle_link_sleeps_until_its_next_probe(server):
    """No polling on a short timer: once warm, an idle link's I/O thread wakes for its
    next probe (probe_idle_s away), so over a second it polls at most once or twice."""
    from edgesdk.engine.link import EdgeLink

    link = EdgeLink(server.endpoint, Bundle.load(DIGITS_BUNDLE).source_sha256,
                    probe_idle_s=30.0)
    try:
        assert link.wait_connected(10)
        assert _wait_for(lambda: len(link.estimator.bandwidth.history()) >= 3, 5.0)
        time.sleep(0.1)  # the last probe's reply
        polls = []
        poll = link._client.poll

        def counting(*args, **kw):
            polls.append(time.monotonic())
            return poll(*args, **kw)
        link._client.poll = counting  # looked up on every turn of the I/O loop
        time.sleep(1.0)
        assert len(polls) <= 2, len(polls)
    finally:
        link.close()


def _computing(activity, seconds: float, starved: bool) -> None:
    """A section of device work: waiting for the CPU (starved: a sleep gets none of it, as a
    throttled process between its quota's periods) or using it."""
    with activity:
        if starved:
            time.sleep(seconds)
        else:
            end = time.process_time() + seconds
            while time.process_time() < end:
                pass


def test_transfers_timed_while_the_device_is_starved_are_marked_busy(server):
    """An offload the device waits for is timed clean; one sent while the device computes
    starved of CPU, or during which it starts to, reaches the estimator as busy (its time
    includes waits for this process's CPU: BandwidthEstimator holds such samples); one
    during which it computes with CPU to spare is clean again."""
    from edgesdk.engine.link import DeviceActivity

    activity = DeviceActivity(threads=1)
    link = _link(server, activity=activity)
    seen = []
    on_reply = link.estimator.on_reply

    def spy(*args, busy=False, **kw):
        seen.append(busy)
        return on_reply(*args, busy=busy, **kw)
    link.estimator.on_reply = spy
    try:
        assert link.wait_connected(10)
        frames = _c1_frames()
        link.offload(frames, "c1", 5.0).result(10)
        assert seen[-1] is False
        _computing(activity, 0.05, starved=True)
        assert activity.starved
        with activity:  # sent while the device computes
            link.offload(frames, "c1", 5.0).result(10)
        assert seen[-1] is True
        pending = link.offload(frames, "c1", 5.0)
        with activity:  # the device starts computing while it is under way
            pass
        pending.result(10)
        assert seen[-1] is True
        link.offload(frames, "c1", 5.0).result(10)
        assert seen[-1] is False
        # the device gets its CPU back: 20 sections recover it here; an emulated Pi (qemu,
        # its own threads sharing the cores) measured a lower share and needed more
        give_up = time.monotonic() + 5.0
        while activity.starved and time.monotonic() < give_up:
            _computing(activity, 0.005, starved=False)
        assert not activity.starved
        with activity:
            link.offload(frames, "c1", 5.0).result(10)
        assert seen[-1] is False
    finally:
        link.close()


def _c1_frames() -> list:
    """An 8-bit payload of the digits bundle's cut c1 (zeros)."""
    from edgesdk.codec import encode_tensors

    cut = Bundle.load(DIGITS_BUNDLE).cut("c1")
    return encode_tensors([np.zeros(t.shape, t.dtype) for t in cut.tensors], bits=8)


def _link(server: ServerProcess, **kw):
    """A link to `server` that hellos again only after 30 s on its own."""
    from edgesdk.engine.link import EdgeLink

    return EdgeLink(server.endpoint, Bundle.load(DIGITS_BUNDLE).source_sha256, retry_s=30.0,
                    **kw)


@pytest.mark.slow
def test_after_a_timed_out_offload_the_link_checks_the_server_at_once():
    from edgesdk.engine.link import UP
    from edgesdk.errors import Timeout

    # retry_s 30: the periodic hello cannot be what brings the link back up
    frames = _c1_frames()
    with _slow_server(3 * SLO_MS) as slow:
        link = _link(slow)
        try:
            assert link.wait_connected(10)
            with pytest.raises(Timeout):
                link.offload(frames, "c1", budget_s=0.05 * SLOWDOWN).result(5 * SLOWDOWN)
            assert _wait_for(lambda: link.status == UP, SLOWDOWN), link.status
        finally:
            link.close()


@pytest.mark.slow
def test_an_overdue_offload_checks_the_server_and_its_late_reply_still_comes(caplog):
    """Past its budget (its frame finishes here meanwhile), the link checks the server at
    once, as after a timeout, but the request stays open for `wait_s`, and its reply
    resolves the Future and counts as any reply (the failure rate stays 0)."""
    from edgesdk.engine.link import UP

    frames = _c1_frames()
    with _slow_server(0.3 * SLO_MS) as slow:
        link = _link(slow)
        try:
            assert link.wait_connected(10)
            with caplog.at_level("DEBUG", logger="edgesdk.engine"):
                reply = link.offload(frames, "c1", 0.05 * SLO_MS / 1e3,
                                     wait_s=3 * SLO_MS / 1e3).result(5 * SLOWDOWN)
            assert reply.server_ms >= 0.3 * SLO_MS * 0.9
            assert any("past its budget" in r.getMessage() for r in caplog.records)
            assert link.status == UP and link.estimator.failures == 0.0
        finally:
            link.close()


@pytest.mark.slow
def test_an_overdue_offload_that_then_times_out_is_blamed_once():
    """Checked and blamed when it became overdue; its timeout later counts as a failure,
    not as a second missed budget (a second hello, sent while the device computes, could
    pin on the link what the first pinned on the server)."""
    from edgesdk.errors import Timeout

    frames = _c1_frames()
    with _slow_server(3 * SLO_MS) as slow:
        link = _link(slow)
        try:
            assert link.wait_connected(10)
            # every blame starts as a _TimedOut (on the server, on the link's rate, or
            # dated with the uploads ahead of the check), made by _timed_out
            blamed = []
            timed_out = link._timed_out

            def counted(job, bound_s, now):
                blamed.append(bound_s * 1e3)
                return timed_out(job, bound_s, now)

            link._timed_out = counted
            with pytest.raises(Timeout):
                link.offload(frames, "c1", 0.05 * SLO_MS / 1e3,
                             wait_s=0.5 * SLO_MS / 1e3).result(5 * SLOWDOWN)
            assert _wait_for(lambda: link.in_flight == 0, SLOWDOWN)
            assert len(blamed) == 1 and blamed[0] < 0.5 * SLO_MS, blamed
            assert link.estimator.failures > 0.0
        finally:
            link.close()


@pytest.mark.slow
def test_a_stopped_server_stays_unresponsive_through_the_link_s_resets():
    """The broker stops (SIGSTOP): hellos go unanswered, the link is down "unresponsive",
    and it resets its connection (a connection stuck after an outage would otherwise wait
    out TCP's backoff). The fresh connection is never handshaken (the stopped server's
    kernel accepts it), so its hellos fail as never sent; that says nothing new, and the
    reason stays "unresponsive". Once the broker runs again, the link is back up."""
    import os
    import signal

    from edgesdk.engine.link import DOWN, UP, EdgeLink

    with ServerProcess.serving([DIGITS_BUNDLE]) as server:
        link = EdgeLink(server.endpoint, Bundle.load(DIGITS_BUNDLE).source_sha256,
                        retry_s=0.1, hello_budget_s=0.1, probe_idle_s=60.0)
        try:
            assert link.wait_connected(10)
            os.kill(server.proc.pid, signal.SIGSTOP)
            try:
                assert _wait_for(lambda: link.status == DOWN, 5 * SLOWDOWN)
                reasons = set()
                end = time.monotonic() + 1.5 * SLOWDOWN  # several resets
                while time.monotonic() < end:
                    reasons.add(link.usable(time.monotonic()))
                    time.sleep(0.01)
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            assert reasons == {"unresponsive"}, reasons
            assert _wait_for(lambda: link.status == UP, 5 * SLOWDOWN), link.status
        finally:
            link.close()


@pytest.mark.slow
def test_a_request_that_cannot_finish_in_time_is_refused_at_once_and_the_link_stays_up():
    """The server learns from a result that a request takes far longer than profiled
    (300 ms; with one sample its estimate is ~30 ms); one with 20 ms of budget is answered
    `expired` (reason late) at once, the device hears a Timeout that says so, and the link
    is not put to checking: the server answered."""
    from edgesdk.engine.link import UP
    from edgesdk.errors import Timeout

    frames = _c1_frames()
    with _slow_server(300 * SLOWDOWN) as slow:
        link = _link(slow)
        try:
            assert link.wait_connected(10)
            link.offload(frames, "c1", budget_s=3.0 * SLOWDOWN).result(10 * SLOWDOWN)
            t0 = time.monotonic()
            with pytest.raises(Timeout) as refused:
                link.offload(frames, "c1", budget_s=0.02).result(5 * SLOWDOWN)
            assert time.monotonic() - t0 < 0.015 * SLOWDOWN
            assert refused.value.refused and "cannot finish" in str(refused.value)
            assert link.status == UP
        finally:
            link.close()


@pytest.mark.slow
def test_busy_server_answers_busy_and_the_frame_finishes_here(digits):
    x, _ = digits
    with _slow_server(4 * SLO_MS, "--max-queue", "0") as slow, Engine(
            DIGITS_BUNDLE, server=slow.endpoint, slo_ms=10 * SLO_MS, strategy="edge",
            max_in_flight=3) as engine:
        results = list(engine.stream(x[:3]))  # one takes the worker, the next are busy
    reasons = [r.fallback_reason for r in results]
    assert "busy" in reasons, reasons
    assert all(r.where in ("edge", "device") for r in results)


def test_bundle_not_served(tmp_path, digits, server, caplog):
    import json
    import shutil

    copy = tmp_path / "other.edge"
    shutil.copytree(DIGITS_BUNDLE, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["source"]["sha256"] = "0" * 64  # a model the server does not know
    from edgesdk.bundle import parse_manifest

    Bundle.save(copy, parse_manifest(manifest))  # sealed again: the edit is intended
    with Engine(copy, server=server.endpoint, strategy="edge") as engine:
        r = engine.infer(digits[0][0])
        assert engine.link.status == "not_served"
    assert r.where == "device" and r.fallback_reason == "bundle_not_served"
    warned = [x.getMessage() for x in _engine_records(caplog)]
    assert len(warned) == 1 and "does not serve bundle" in warned[0], warned


@pytest.mark.slow
def test_when_finishing_here_would_miss_the_deadline_the_best_exit_answers(tmp_path, digits):
    """A slow server and a device whose profile says the rest takes 10 s: the frame ends
    with the most confident exit already computed, not a late local finish."""
    import json
    import shutil

    copy = tmp_path / "slowdevice.edge"
    shutil.copytree(DIGITS_BUNDLE, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    prof = next(iter(manifest["profiles"].values()))
    prof["segments"][-1]["median_ms"] = 10_000.0  # the last segment, as this device sees it
    (copy / "manifest.json").write_text(json.dumps(manifest))
    x, _ = digits
    with Engine(DIGITS_BUNDLE, strategy="device") as plain:
        hard = [xi for xi in x if plain.infer(xi).where == "device"]  # no exit fires
    assert hard, "every digit exits early; no frame for this test"
    with _slow_server(4 * SLO_MS) as slow, Engine(copy, server=slow.endpoint, slo_ms=SLO_MS,
                                                  strategy="c2@8") as engine:
        # this "device" is the profile's: forget what the warm-up measured of the real one
        engine._slowdown = SlowdownEstimator([{"median_ms": m} for m in engine._seg_ms])
        r = engine.infer(hard[0])
    assert r.where == "exit" and r.fallback_reason == "timeout"
    assert r.exit_name in ("exit1", "exit2") and r.confidence is not None
    assert r.timings.total < SLO_MS + LATE_MS, r.timings.total
