"""A reply past the offload's budget but before the deadline: the frame has started its
local finish, and the reply stops it and answers (a run cancelled between two nodes), so
a reply a few ms late costs a few ms, not a whole local run. With real onnxruntime
sessions, a real ResNet-50 graph (the onnx wheel's light model) and a real server process
that sleeps before it answers."""

from __future__ import annotations

import statistics
import sys
import threading
import time

import numpy as np
import pytest

from edgesdk import Engine
from edgesdk.policy import FALLBACK_MARGIN_MS
from edgesdk.runtime import Cancel, Cancelled
from edgesdk.runtime.onnx import OnnxSegment

from models import onnx_light_model
from transport_helpers import TESTS, ServerProcess

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """(bundle, one input, its local run time in ms: the median of 5 one-thread runs)."""
    from edgesdk.split import split_model

    bundle = split_model(onnx_light_model("resnet50"),
                         tmp_path_factory.mktemp("late") / "resnet.edge", max_points=2)
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    whole = OnnxSegment(bundle.path / "whole.onnx", threads=1)
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        whole.run({whole.inputs[0]: x})
        runs.append((time.perf_counter() - t) * 1e3)
    return bundle, x, statistics.median(runs)


@pytest.mark.slow  # splits ResNet-50
def test_a_cancelled_run_stops_within_a_node_and_the_session_runs_again(resnet):
    bundle, x, local_ms = resnet
    seg = OnnxSegment(bundle.path / "whole.onnx", threads=1)
    feed = {seg.inputs[0]: x}
    cancel = Cancel()
    timer = threading.Timer(local_ms / 4e3, cancel.cancel)
    timer.start()
    t = time.perf_counter()
    with pytest.raises(Cancelled):
        seg.run(feed, cancel)
    assert (time.perf_counter() - t) * 1e3 < 0.8 * local_ms
    # a token cancelled before the run stops it at once; the session itself is unharmed
    with pytest.raises(Cancelled):
        seg.run(feed, cancel)
    expected = seg.run(feed)
    np.testing.assert_array_equal(seg.run(feed, Cancel())[seg.outputs[0]],
                                  expected[seg.outputs[0]])


@pytest.mark.slow
def test_a_reply_after_the_budget_stops_the_local_finish_and_answers(resnet):
    """SLO 3x the local run L: the edge-only offload gets ~2L (the SLO less the local
    finish it reserves, less the margin). The server holds its reply until 2.5L after the
    request came, so it comes past the budget, halfway through the local finish, whatever
    the server's own compute took (0.8-2x L in CI, beside the device's run: with a fixed
    sleep before it, the reply came before the budget in one run and after the local
    finish in another). Once the server has timed such a reply, it may refuse the next
    ones at once (they cannot make their budget): those frames finish here at once, also
    within the deadline."""
    bundle, x, local_ms = resnet
    slo_ms = 3 * local_ms
    server = ServerProcess([sys.executable, str(TESTS / "engine_helpers.py"), str(bundle.path),
                            "--reply-at-ms", f"{2.5 * local_ms - FALLBACK_MARGIN_MS:.1f}"])
    with server, Engine(bundle, server=server.endpoint, slo_ms=slo_ms,
                        strategy="input@32") as engine:
        reference = engine.local.whole.run({engine.local.whole.inputs[0]: x})
        results = [engine.infer(x) for _ in range(4)]
    first = results[0]
    assert first.where == "edge" and first.fallback_reason is None, (
        first.where, first.fallback_reason, first.timings, local_ms)
    # past the budget, before the local finish would end
    assert 2 * local_ms - FALLBACK_MARGIN_MS < first.timings.total < slo_ms, (
        first.timings.total, local_ms)
    for r in results:
        assert r.where == "edge" or r.fallback_reason == "timeout", (r.where, r.fallback_reason)
        assert r.timings.total < slo_ms, r.timings.total
        np.testing.assert_allclose(r.output, next(iter(reference.values())), rtol=1e-4,
                                   atol=1e-6)
